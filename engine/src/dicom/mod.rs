//! DICOM: reading what the archive indexes from a Part-10 stream, with bounded memory.
//!
//! - [`meta`]: the preamble and file meta group, every length bounded;
//! - [`explicit_le`]: the zero-copy streaming fast path for Explicit VR Little Endian data sets
//!   (wanted values kept, the rest skipped as it streams past, stops at Pixel Data);
//! - [`general`]: dicom-parser for everything else (implicit VR, big endian, deflated, what the
//!   fast path declines);
//! - [`extract`]: the [`extract::Extractor`] choosing between them, and the decoded attributes;
//! - [`charset`]: Specific Character Set decoding;
//! - [`frames`]: frame maps (native, and a streaming walker over encapsulated fragments);
//! - [`metadata`]: the metadata record stored beside each instance;
//! - [`json`]: DICOM JSON (PS3.18 Annex F) of a data set, for WADO-RS metadata.

pub mod charset;
pub mod explicit_le;
pub mod extract;
pub mod frames;
pub mod general;
pub mod json;
pub mod meta;
pub mod metadata;

/// The standard dictionary's VR of `tag` (the first, for multi-VR entries such as US or SS),
/// used to read UN values of known attributes (PS3.5 6.2.2).
pub fn dictionary_vr(tag: Tag) -> Option<[u8; 2]> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    let entry = dicom_dictionary_std::StandardDataDictionary
        .by_tag(dicom_core::Tag(tag.group(), tag.element()))?;
    let vr = entry.vr().relaxed();
    let bytes = vr.to_string().as_bytes();
    (bytes.len() == 2).then(|| [bytes[0], bytes[1]])
}

/// A DICOM tag as `(group << 16) | element`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u32);

impl Tag {
    pub const fn new(group: u16, element: u16) -> Self {
        Tag(((group as u32) << 16) | element as u32)
    }

    pub const fn group(self) -> u16 {
        (self.0 >> 16) as u16
    }

    pub const fn element(self) -> u16 {
        self.0 as u16
    }

    /// (7FE0,0010) Pixel Data.
    pub const PIXEL_DATA: Tag = Tag::new(0x7FE0, 0x0010);
    /// (FFFE,E000) Item.
    pub const ITEM: Tag = Tag::new(0xFFFE, 0xE000);
    /// (FFFE,E00D) Item Delimitation Item.
    pub const ITEM_DELIMITER: Tag = Tag::new(0xFFFE, 0xE00D);
    /// (FFFE,E0DD) Sequence Delimitation Item.
    pub const SEQUENCE_DELIMITER: Tag = Tag::new(0xFFFE, 0xE0DD);
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({:04X},{:04X})", self.group(), self.element())
    }
}
