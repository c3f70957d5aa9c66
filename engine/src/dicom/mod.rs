//! DICOM: streaming extraction of the attributes the archive indexes.
//!
//! Work in progress for issue 3. Today:
//! - [`meta`]: the Part-10 preamble and file meta group, with every length bounded;
//! - [`explicit_le`]: the fast path for Explicit VR Little Endian, which reads elements as the
//!   bytes stream in, keeps the values of wanted attributes, skips everything else without
//!   buffering it, walks undefined-length sequences, and stops at Pixel Data.
//!
//! Not yet wired into the store; the `dicom-parser` path for other transfer syntaxes, character
//! sets, the indexed attribute set, frame maps and indices follow.

pub mod charset;
pub mod explicit_le;
pub mod extract;
pub mod frames;
pub mod general;
pub mod meta;
pub mod metadata;

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
