//! Small DICOM data sets that travel with DIMSE commands (PS3.7 6.3.1): C-FIND identifiers,
//! C-MOVE and C-GET keys, Storage Commitment N-ACTION action information and N-EVENT-REPORT
//! event information, in Implicit VR Little Endian, Explicit VR Little Endian or Explicit VR
//! Big Endian (PS3.5 7).
//!
//! [`DataSet::decode`] reads the bytes of a peer into a tree of [`Element`]s, sequences
//! ([`Value::Items`]) holding nested [`DataSet`]s; [`DataSet::encode`] writes a tree back. The
//! tree is small and wholly in memory, so decoding is bounded before anything is allocated:
//! at most [`DATA_SET_BYTES_MAX`] bytes, every declared length checked against the bytes left
//! in its container, sequences nested at most [`DEPTH_MAX`] deep and at most [`ELEMENTS_MAX`]
//! elements and items in the whole tree. Decoding never panics, and holds at most the input
//! size times a small constant: each value is copied once, and the tree adds a few dozen bytes
//! (twice that while its vectors grow) for each element or item, which takes at least 8 bytes
//! of input.
//!
//! What decoding accepts and how it stores it:
//!
//! - **Order**: elements of one data set (the top level, or one item) in strictly ascending
//!   tag order ([`DataSetError::OutOfOrder`], [`DataSetError::Duplicate`]); the tree keeps them
//!   sorted, so encoding writes them in order too.
//! - **VRs**: Explicit VR data sets give theirs (one of the 34 standard VRs, else
//!   [`DataSetError::BadVr`]); Implicit VR ones take the standard dictionary's (the first of an
//!   ambiguous entry: US for US or SS, OW for OB or OW), `UN` for tags it does not know
//!   (private ones included). Every sequence is stored with VR `SQ`.
//! - **Sequences**: an element of VR SQ (of the dictionary's VR SQ in Implicit VR), or of
//!   undefined length (0xFFFFFFFF) in Implicit VR, or of VR UN and undefined length in Explicit
//!   VR, whose value is then Implicit VR Little Endian (PS3.5 6.2.2). Items (FFFE,E000) of
//!   defined or undefined length, the latter closed by (FFFE,E00D); sequences of undefined
//!   length closed by (FFFE,E0DD). Tags and lengths of items and delimiters follow the byte
//!   order of the encoding. Undefined length on any other element is
//!   [`DataSetError::BadLength`].
//! - **Values** are stored as they are on the wire, except that multi-byte binary values (US,
//!   SS, UL, SL, FL, FD, AT, OW, OF, OD, OL, SV, UV, OV) of Explicit VR Big Endian data sets are
//!   turned to little endian: a [`Value::Bytes`] always holds little-endian binary data
//!   (trailing bytes that do not fill a whole number are left as they are). Padding is kept.
//! - **Long values**: an Explicit VR element of VR UN and a defined length over 0xFFFF whose tag
//!   the dictionary gives a VR with a 2-byte length (such as LO) takes that VR: that is how
//!   [`DataSet::encode`] writes values too long for their VR's length field (PS3.5 6.2.2).
//! - **Character sets**: Specific Character Set (0008,0005) is parsed once per data set that
//!   has it (an unknown term is [`DataSetError::BadCharset`]); items without their own use their
//!   parent's, and the top level without one the default repertoire. The element itself stays in
//!   the tree, as do group length elements (gggg,0000), which are neither checked nor
//!   recomputed.
//!
//! Encoding writes sequences and items with defined lengths, except in Implicit VR a sequence
//! whose tag the dictionary does not give VR SQ (a private one): it has undefined length and a
//! sequence delimiter, so that it is read back as a sequence. Values are written as stored (the
//! setters pad text to even length). In Explicit VR a value longer than 0xFFFF bytes whose VR
//! has a 2-byte length field is written with VR UN (see above; the setters are meant for short
//! values, and decoding gives such a value back with the dictionary's VR, or UN for a tag the
//! dictionary does not know). Decoding the encoding of a decoded data set in the same encoding
//! gives the same tree (unless the encoding grew past [`DATA_SET_BYTES_MAX`]: an Explicit VR UN
//! value of undefined length, Implicit VR inside, is written as an Explicit VR sequence, with 4
//! more bytes for each element of a VR with a 4-byte length).

use std::fmt;
use std::sync::Arc;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use kuvasto_engine::dicom::charset::CharacterSets;
use kuvasto_engine::dicom::explicit_le::has_long_length;
use kuvasto_engine::dicom::json::Encoding;
use kuvasto_engine::dicom::Tag;

/// Largest encoded data set accepted from a peer. Identifiers and event information are a
/// few kilobytes at most.
pub const DATA_SET_BYTES_MAX: usize = 1 << 20;
/// Deepest sequence nesting accepted: the items of a top-level sequence are at depth 1.
pub const DEPTH_MAX: usize = 8;
/// Most elements and items, together, in the whole tree.
pub const ELEMENTS_MAX: usize = 20_000;

/// Specific Character Set (0008,0005).
const SPECIFIC_CHARACTER_SET: Tag = Tag::new(0x0008, 0x0005);
/// A length of 0xFFFFFFFF: undefined, up to a delimiter.
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;
const SQ: [u8; 2] = *b"SQ";
const UN: [u8; 2] = *b"UN";
const US: [u8; 2] = *b"US";

/// The standard VRs (PS3.5 6.2), the only ones Explicit VR decoding accepts.
const STANDARD_VRS: [[u8; 2]; 34] = [
    *b"AE", *b"AS", *b"AT", *b"CS", *b"DA", *b"DS", *b"DT", *b"FD", *b"FL", *b"IS", *b"LO", *b"LT",
    *b"OB", *b"OD", *b"OF", *b"OL", *b"OV", *b"OW", *b"PN", *b"SH", *b"SL", *b"SQ", *b"SS", *b"ST",
    *b"SV", *b"TM", *b"UC", *b"UI", *b"UL", *b"UN", *b"UR", *b"US", *b"UT", *b"UV",
];

/// An element's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// The value bytes, padding included; binary values little endian (see the module
    /// documentation).
    Bytes(Vec<u8>),
    /// The items of a sequence.
    Items(Vec<DataSet>),
}

/// One data element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub tag: Tag,
    /// The VR, as two ASCII capitals (`SQ` for every sequence).
    pub vr: [u8; 2],
    pub value: Value,
}

/// A data set: elements sorted by tag, no two with the same tag, and the character sets in
/// force for its text values (its own (0008,0005), else its parent's for an item, else the
/// default repertoire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataSet {
    elements: Vec<Element>,
    charsets: Arc<CharacterSets>,
}

/// Why a data set could not be read. Offsets count bytes from the start of the data set and
/// point at the header of the element, item or delimiter at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSetError {
    /// More than [`DATA_SET_BYTES_MAX`] bytes.
    TooLong { len: usize },
    /// The bytes (or the enclosing item or sequence of defined length) end inside the header
    /// at `offset`, or at `offset` before the delimiter an item or sequence of undefined length
    /// needs.
    Truncated { offset: usize },
    /// The item at `offset` is nested deeper than [`DEPTH_MAX`].
    TooDeep { offset: usize },
    /// More than [`ELEMENTS_MAX`] elements and items.
    TooManyElements,
    /// The element, item or delimiter at `offset` declares a length `len` that does not fit:
    /// beyond the end of the bytes or of its container, undefined (0xFFFFFFFF) on an element
    /// that cannot be a sequence, or not 0 on a delimiter.
    BadLength { offset: usize, tag: Tag, len: u32 },
    /// Explicit VR: the element at `offset` has VR bytes that are not a standard VR.
    BadVr { offset: usize, vr: [u8; 2] },
    /// The element at `offset` has a tag below the one before it in the same data set.
    OutOfOrder { offset: usize, tag: Tag },
    /// The element at `offset` has the same tag as the one before it in the same data set.
    Duplicate { offset: usize, tag: Tag },
    /// Specific Character Set (0008,0005) is not a value this archive can read.
    BadCharset(String),
    /// An item or delimiter tag (group FFFE) at `offset` where a data element or, inside a
    /// sequence, an item belongs.
    UnexpectedDelimiter { offset: usize },
    /// Something other than an item or a sequence delimiter at `offset` inside a sequence.
    NotAnItem { offset: usize, tag: Tag },
}

impl fmt::Display for DataSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSetError::TooLong { len } => write!(
                f,
                "data set of {len} bytes; at most {DATA_SET_BYTES_MAX} are accepted"
            ),
            DataSetError::Truncated { offset } => write!(
                f,
                "data set ends inside the element or item at byte {offset} (or before its delimiter)"
            ),
            DataSetError::TooDeep { offset } => write!(
                f,
                "item at byte {offset} is nested deeper than {DEPTH_MAX} sequences"
            ),
            DataSetError::TooManyElements => write!(
                f,
                "data set has more than {ELEMENTS_MAX} elements and items"
            ),
            DataSetError::BadLength { offset, tag, len } => write!(
                f,
                "{tag} at byte {offset} declares a length of {len:#010X} that does not fit"
            ),
            DataSetError::BadVr { offset, vr } => write!(
                f,
                "element at byte {offset} has VR {:?}, not a standard VR",
                String::from_utf8_lossy(vr)
            ),
            DataSetError::OutOfOrder { offset, tag } => write!(
                f,
                "element {tag} at byte {offset} comes after a higher tag"
            ),
            DataSetError::Duplicate { offset, tag } => {
                write!(f, "element {tag} at byte {offset} repeats the one before it")
            }
            DataSetError::BadCharset(reason) => {
                write!(f, "Specific Character Set (0008,0005): {reason}")
            }
            DataSetError::UnexpectedDelimiter { offset } => write!(
                f,
                "item or delimiter tag at byte {offset} where a data element belongs"
            ),
            DataSetError::NotAnItem { offset, tag } => write!(
                f,
                "{tag} at byte {offset} inside a sequence, where only items belong"
            ),
        }
    }
}

impl std::error::Error for DataSetError {}

impl DataSet {
    /// An empty data set in the default repertoire.
    pub fn new() -> DataSet {
        DataSet::default()
    }

    /// Reads a data set (see the module documentation).
    pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<DataSet, DataSetError> {
        if bytes.len() > DATA_SET_BYTES_MAX {
            return Err(DataSetError::TooLong { len: bytes.len() });
        }
        let mut decoder = Decoder {
            bytes,
            at: 0,
            nodes: 0,
        };
        decoder.data_set(
            encoding,
            Extent::Defined(bytes.len()),
            0,
            &Arc::new(CharacterSets::default()),
        )
    }

    /// The bytes of the data set in `encoding` (see the module documentation).
    pub fn encode(&self, encoding: Encoding) -> Vec<u8> {
        let mut out = Vec::new();
        write_data_set(&mut out, self, encoding);
        out
    }

    /// The elements, in tag order.
    pub fn elements(&self) -> &[Element] {
        &self.elements
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// The character sets the text values are read with.
    pub fn character_sets(&self) -> &CharacterSets {
        &self.charsets
    }

    /// The element `tag`, if present.
    pub fn get(&self, tag: Tag) -> Option<&Element> {
        self.elements
            .binary_search_by_key(&tag, |e| e.tag)
            .ok()
            .and_then(|index| self.elements.get(index))
    }

    /// Whether the element `tag` is present.
    pub fn contains(&self, tag: Tag) -> bool {
        self.get(tag).is_some()
    }

    /// The value of `tag` as text, decoded with the data set's character sets (an element of
    /// VR UN as the dictionary's VR), without padding: trailing spaces and NULs, and leading
    /// spaces except for LT, ST and UT, whose leading spaces are text. `None` when absent or a
    /// sequence. Multiple values stay joined by `\`.
    pub fn text(&self, tag: Tag) -> Option<String> {
        let element = self.get(tag)?;
        let Value::Bytes(raw) = &element.value else {
            return None;
        };
        let vr = if element.vr == UN {
            dictionary_vr(tag).unwrap_or(UN)
        } else {
            element.vr
        };
        let text = self.charsets.decode(vr, raw);
        let text = text.trim_end_matches([' ', '\0']);
        let text = match &vr {
            b"LT" | b"ST" | b"UT" => text,
            _ => text.trim_start_matches(' '),
        };
        Some(text.to_string())
    }

    /// The items of the sequence `tag`; empty when absent or not a sequence.
    pub fn items(&self, tag: Tag) -> &[DataSet] {
        match self.get(tag).map(|e| &e.value) {
            Some(Value::Items(items)) => items,
            _ => &[],
        }
    }

    /// Value 1 of the US element `tag`, such as FailureReason (0008,1197). `None` when absent,
    /// not of VR US, or shorter than 2 bytes.
    pub fn u16(&self, tag: Tag) -> Option<u16> {
        let element = self.get(tag).filter(|e| e.vr == US)?;
        match &element.value {
            Value::Bytes(raw) => match raw.as_slice() {
                [a, b, ..] => Some(u16::from_le_bytes([*a, *b])),
                _ => None,
            },
            Value::Items(_) => None,
        }
    }

    /// Sets `tag` to `text` of VR `vr`, stored as UTF-8 bytes padded to even length (with a
    /// NUL for UI, a space otherwise). Meant for short values (see the module documentation on
    /// long ones). Setting (0008,0005) changes the character sets of this data set and of its
    /// items that have none of their own; a value with an unknown term leaves them as they
    /// were, and the data set then encodes but does not decode.
    pub fn put_text(&mut self, tag: Tag, vr: [u8; 2], text: &str) {
        let mut bytes = text.as_bytes().to_vec();
        if bytes.len() % 2 == 1 {
            bytes.push(if vr == *b"UI" { 0 } else { b' ' });
        }
        self.put(Element {
            tag,
            vr,
            value: Value::Bytes(bytes),
        });
    }

    /// Sets `tag` to the single US value `value`.
    pub fn put_u16(&mut self, tag: Tag, value: u16) {
        self.put(Element {
            tag,
            vr: US,
            value: Value::Bytes(value.to_le_bytes().to_vec()),
        });
    }

    /// Sets `tag` to a sequence of `items`. Items without their own (0008,0005) take this data
    /// set's character sets.
    pub fn put_items(&mut self, tag: Tag, items: Vec<DataSet>) {
        self.put(Element {
            tag,
            vr: SQ,
            value: Value::Items(items),
        });
    }

    /// Sets an element, replacing one of the same tag, keeping the tag order. The VR is made
    /// consistent with the value: `SQ` for items; `UN` for bytes given VR `SQ` or a VR that is
    /// not standard. Tags of group FFFE (items, delimiters) must not be put: such a data set
    /// encodes but does not decode. See [`DataSet::put_text`] and [`DataSet::put_items`] for
    /// the character sets.
    pub fn put(&mut self, mut element: Element) {
        match &mut element.value {
            Value::Items(items) => {
                element.vr = SQ;
                for item in items.iter_mut() {
                    item.inherit(&self.charsets);
                }
            }
            Value::Bytes(_) => {
                if element.vr == SQ || !STANDARD_VRS.contains(&element.vr) {
                    element.vr = UN;
                }
            }
        }
        let charsets = match (&element.value, element.tag == SPECIFIC_CHARACTER_SET) {
            (Value::Bytes(raw), true) => CharacterSets::parse(raw).ok(),
            _ => None,
        };
        match self.elements.binary_search_by_key(&element.tag, |e| e.tag) {
            Ok(index) => {
                if let Some(slot) = self.elements.get_mut(index) {
                    *slot = element;
                }
            }
            Err(index) => self.elements.insert(index, element),
        }
        if let Some(charsets) = charsets {
            self.charsets = Arc::new(charsets);
            self.pass_charsets_to_items(|_| true);
        }
    }

    /// Whether any text value (of a VR other than the binary ones, UN and SQ), in this data set
    /// or its items, has a byte ≥ 0x80: if so the caller sets (0008,0005) to `ISO_IR 192`.
    pub fn has_non_ascii(&self) -> bool {
        self.elements.iter().any(|e| match &e.value {
            Value::Bytes(raw) => is_text_vr(e.vr) && !raw.is_ascii(),
            Value::Items(items) => items.iter().any(DataSet::has_non_ascii),
        })
    }

    /// Takes `parent`'s character sets unless this data set has its own (0008,0005), and hands
    /// the result down to the items.
    fn inherit(&mut self, parent: &Arc<CharacterSets>) {
        if !self.contains(SPECIFIC_CHARACTER_SET) {
            self.charsets = Arc::clone(parent);
        }
        self.pass_charsets_to_items(|_| true);
    }

    /// [`DataSet::inherit`] for the items of the sequences whose tag passes `which`.
    fn pass_charsets_to_items(&mut self, which: impl Fn(Tag) -> bool) {
        let charsets = Arc::clone(&self.charsets);
        for element in self.elements.iter_mut().filter(|e| which(e.tag)) {
            if let Value::Items(items) = &mut element.value {
                for item in items.iter_mut() {
                    item.inherit(&charsets);
                }
            }
        }
    }
}

/// Where a data set or sequence ends.
#[derive(Clone, Copy)]
enum Extent {
    /// At this offset (a defined length).
    Defined(usize),
    /// At its delimiter, which must come before this offset (the end of the container).
    Undefined(usize),
}

struct Decoder<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Elements and items read so far.
    nodes: usize,
}

impl<'a> Decoder<'a> {
    /// The `len` bytes at the current offset, if they end by `limit`.
    fn take(&self, len: usize, limit: usize) -> Result<&'a [u8], DataSetError> {
        let truncated = DataSetError::Truncated { offset: self.at };
        if limit.saturating_sub(self.at) < len {
            return Err(truncated);
        }
        self.bytes.get(self.at..self.at + len).ok_or(truncated)
    }

    fn count_node(&mut self) -> Result<(), DataSetError> {
        self.nodes += 1;
        if self.nodes > ELEMENTS_MAX {
            return Err(DataSetError::TooManyElements);
        }
        Ok(())
    }

    /// Reads a data set: elements up to the end of `extent`, or up to an item delimiter for
    /// an undefined extent. `depth`: its sequence nesting (0 for the top level).
    fn data_set(
        &mut self,
        encoding: Encoding,
        extent: Extent,
        depth: usize,
        inherited: &Arc<CharacterSets>,
    ) -> Result<DataSet, DataSetError> {
        let big = encoding == Encoding::ExplicitBig;
        let (limit, delimited) = match extent {
            Extent::Defined(end) => (end, false),
            Extent::Undefined(limit) => (limit, true),
        };
        let mut data_set = DataSet {
            elements: Vec::new(),
            charsets: Arc::clone(inherited),
        };
        loop {
            if self.at >= limit {
                if delimited {
                    return Err(DataSetError::Truncated { offset: self.at });
                }
                break;
            }
            let offset = self.at;
            let tag = read_tag(self.take(4, limit)?, big);
            if tag.group() == 0xFFFE {
                if delimited && tag == Tag::ITEM_DELIMITER {
                    let len = read_u32(&self.take(8, limit)?[4..], big);
                    if len != 0 {
                        return Err(DataSetError::BadLength { offset, tag, len });
                    }
                    self.at += 8;
                    break;
                }
                return Err(DataSetError::UnexpectedDelimiter { offset });
            }
            if let Some(previous) = data_set.elements.last() {
                if tag == previous.tag {
                    return Err(DataSetError::Duplicate { offset, tag });
                }
                if tag < previous.tag {
                    return Err(DataSetError::OutOfOrder { offset, tag });
                }
            }
            self.count_node()?;
            let element = self.element(encoding, tag, limit, depth, &data_set.charsets)?;
            if tag == SPECIFIC_CHARACTER_SET {
                let Value::Bytes(raw) = &element.value else {
                    return Err(DataSetError::BadCharset("a sequence, not text".to_string()));
                };
                let charsets = CharacterSets::parse(raw)
                    .map_err(|e| DataSetError::BadCharset(e.to_string()))?;
                data_set.charsets = Arc::new(charsets);
            }
            data_set.elements.push(element);
        }
        if data_set.contains(SPECIFIC_CHARACTER_SET) {
            // Sequences before (0008,0005) were read with the parent's character sets.
            data_set.pass_charsets_to_items(|tag| tag < SPECIFIC_CHARACTER_SET);
        }
        Ok(data_set)
    }

    /// Reads the element whose tag `tag` is at the current offset.
    fn element(
        &mut self,
        encoding: Encoding,
        tag: Tag,
        limit: usize,
        depth: usize,
        charsets: &Arc<CharacterSets>,
    ) -> Result<Element, DataSetError> {
        let offset = self.at;
        let big = encoding == Encoding::ExplicitBig;
        let (mut vr, len, header_len) = if encoding == Encoding::ImplicitLittle {
            let header = self.take(8, limit)?;
            let vr = dictionary_vr(tag).unwrap_or(UN);
            (vr, read_u32(&header[4..], false), 8)
        } else {
            let header = self.take(6, limit)?;
            let vr = [header[4], header[5]];
            if !STANDARD_VRS.contains(&vr) {
                return Err(DataSetError::BadVr { offset, vr });
            }
            if has_long_length(vr) {
                let header = self.take(12, limit)?;
                (vr, read_u32(&header[8..], big), 12)
            } else {
                let header = self.take(8, limit)?;
                (vr, u32::from(read_u16(&header[6..], big)), 8)
            }
        };
        let value_start = offset + header_len;
        if len == UNDEFINED_LENGTH {
            let content = match (encoding, vr) {
                (Encoding::ImplicitLittle, _) | (_, UN) => Encoding::ImplicitLittle,
                (_, SQ) => encoding,
                _ => return Err(DataSetError::BadLength { offset, tag, len }),
            };
            self.at = value_start;
            let items = self.items(content, Extent::Undefined(limit), depth, charsets)?;
            return Ok(Element {
                tag,
                vr: SQ,
                value: Value::Items(items),
            });
        }
        let len_bytes = len as usize;
        if len_bytes > limit.saturating_sub(value_start) {
            return Err(DataSetError::BadLength { offset, tag, len });
        }
        self.at = value_start;
        if vr == SQ {
            let end = value_start + len_bytes;
            let items = self.items(encoding, Extent::Defined(end), depth, charsets)?;
            return Ok(Element {
                tag,
                vr: SQ,
                value: Value::Items(items),
            });
        }
        if vr == UN && encoding != Encoding::ImplicitLittle && len_bytes > 0xFFFF {
            if let Some(known) = dictionary_vr(tag).filter(|v| !has_long_length(*v)) {
                vr = known;
            }
        }
        let mut value = self.take(len_bytes, limit)?.to_vec();
        self.at += len_bytes;
        if big {
            swap_to_other_order(vr, &mut value);
        }
        Ok(Element {
            tag,
            vr,
            value: Value::Bytes(value),
        })
    }

    /// Reads the items of a sequence whose value starts at the current offset, whose items are
    /// at `depth + 1`.
    fn items(
        &mut self,
        encoding: Encoding,
        extent: Extent,
        depth: usize,
        charsets: &Arc<CharacterSets>,
    ) -> Result<Vec<DataSet>, DataSetError> {
        let big = encoding == Encoding::ExplicitBig;
        let (limit, delimited) = match extent {
            Extent::Defined(end) => (end, false),
            Extent::Undefined(limit) => (limit, true),
        };
        let mut items = Vec::new();
        loop {
            if self.at >= limit {
                if delimited {
                    return Err(DataSetError::Truncated { offset: self.at });
                }
                break;
            }
            let offset = self.at;
            let header = self.take(8, limit)?;
            let tag = read_tag(header, big);
            let len = read_u32(&header[4..], big);
            match tag {
                Tag::ITEM => {
                    if depth >= DEPTH_MAX {
                        return Err(DataSetError::TooDeep { offset });
                    }
                    self.count_node()?;
                    self.at += 8;
                    let item_extent = if len == UNDEFINED_LENGTH {
                        Extent::Undefined(limit)
                    } else if len as usize > limit - self.at {
                        return Err(DataSetError::BadLength { offset, tag, len });
                    } else {
                        Extent::Defined(self.at + len as usize)
                    };
                    items.push(self.data_set(encoding, item_extent, depth + 1, charsets)?);
                }
                Tag::SEQUENCE_DELIMITER if delimited => {
                    if len != 0 {
                        return Err(DataSetError::BadLength { offset, tag, len });
                    }
                    self.at += 8;
                    break;
                }
                Tag::SEQUENCE_DELIMITER | Tag::ITEM_DELIMITER => {
                    return Err(DataSetError::UnexpectedDelimiter { offset });
                }
                _ => return Err(DataSetError::NotAnItem { offset, tag }),
            }
        }
        Ok(items)
    }
}

fn read_u16(bytes: &[u8], big: bool) -> u16 {
    let pair = [bytes[0], bytes[1]];
    if big {
        u16::from_be_bytes(pair)
    } else {
        u16::from_le_bytes(pair)
    }
}

fn read_u32(bytes: &[u8], big: bool) -> u32 {
    let quad = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if big {
        u32::from_be_bytes(quad)
    } else {
        u32::from_le_bytes(quad)
    }
}

fn read_tag(bytes: &[u8], big: bool) -> Tag {
    Tag::new(read_u16(bytes, big), read_u16(&bytes[2..], big))
}

fn put_u16(out: &mut Vec<u8>, value: u16, big: bool) {
    out.extend_from_slice(&if big {
        value.to_be_bytes()
    } else {
        value.to_le_bytes()
    });
}

fn put_u32(out: &mut Vec<u8>, value: u32, big: bool) {
    out.extend_from_slice(&if big {
        value.to_be_bytes()
    } else {
        value.to_le_bytes()
    });
}

fn put_tag(out: &mut Vec<u8>, tag: Tag, big: bool) {
    put_u16(out, tag.group(), big);
    put_u16(out, tag.element(), big);
}

/// Overwrites the 4-byte length at `at` with the number of bytes written after it.
fn patch_length(out: &mut [u8], at: usize, big: bool) {
    let len = (out.len() - at - 4) as u32;
    let bytes = if big {
        len.to_be_bytes()
    } else {
        len.to_le_bytes()
    };
    out[at..at + 4].copy_from_slice(&bytes);
}

fn write_data_set(out: &mut Vec<u8>, data_set: &DataSet, encoding: Encoding) {
    for element in &data_set.elements {
        write_element(out, element, encoding);
    }
}

fn write_element(out: &mut Vec<u8>, element: &Element, encoding: Encoding) {
    let big = encoding == Encoding::ExplicitBig;
    let implicit = encoding == Encoding::ImplicitLittle;
    put_tag(out, element.tag, big);
    match &element.value {
        Value::Bytes(value) => {
            // Values are at most `DATA_SET_BYTES_MAX` when decoded; the setters' callers
            // write short ones.
            let len = value.len() as u32;
            if implicit {
                put_u32(out, len, false);
            } else {
                let vr = if !has_long_length(element.vr) && len > 0xFFFF {
                    UN
                } else {
                    element.vr
                };
                out.extend_from_slice(&vr);
                if has_long_length(vr) {
                    out.extend_from_slice(&[0, 0]);
                    put_u32(out, len, big);
                } else {
                    put_u16(out, len as u16, big);
                }
            }
            let start = out.len();
            out.extend_from_slice(value);
            if big {
                swap_to_other_order(element.vr, &mut out[start..]);
            }
        }
        Value::Items(items) => {
            if !implicit {
                out.extend_from_slice(&SQ);
                out.extend_from_slice(&[0, 0]);
            }
            let undefined = implicit && dictionary_vr(element.tag) != Some(SQ);
            let length_at = out.len();
            put_u32(out, UNDEFINED_LENGTH, big);
            for item in items {
                put_tag(out, Tag::ITEM, big);
                let item_length_at = out.len();
                put_u32(out, 0, big);
                write_data_set(out, item, encoding);
                patch_length(out, item_length_at, big);
            }
            if undefined {
                put_tag(out, Tag::SEQUENCE_DELIMITER, big);
                put_u32(out, 0, big);
            } else {
                patch_length(out, length_at, big);
            }
        }
    }
}

/// Whether values of `vr` are characters (not binary, not UN, not SQ).
fn is_text_vr(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"ST"
            | b"TM"
            | b"UC"
            | b"UI"
            | b"UR"
            | b"UT"
    )
}

/// Reverses the byte order of every whole number in a value of `vr` (2, 4 or 8 bytes wide for
/// the multi-byte binary VRs; nothing for the others).
fn swap_to_other_order(vr: [u8; 2], value: &mut [u8]) {
    let width = match &vr {
        b"US" | b"SS" | b"AT" | b"OW" => 2,
        b"UL" | b"SL" | b"FL" | b"OF" | b"OL" => 4,
        b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => 8,
        _ => return,
    };
    for number in value.chunks_exact_mut(width) {
        number.reverse();
    }
}

/// The standard dictionary's VR of `tag`: the first of an ambiguous entry (US for US or SS,
/// OW for OB or OW).
fn dictionary_vr(tag: Tag) -> Option<[u8; 2]> {
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(dicom_core::Tag(tag.group(), tag.element()))
        .map(|entry| entry.vr().relaxed().to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ENCODINGS: [Encoding; 3] = [
        Encoding::ImplicitLittle,
        Encoding::ExplicitLittle,
        Encoding::ExplicitBig,
    ];

    const CHARSET: Tag = SPECIFIC_CHARACTER_SET;
    const QUERY_LEVEL: Tag = Tag::new(0x0008, 0x0052);
    const REFERENCED_SOP_SEQUENCE: Tag = Tag::new(0x0008, 0x1199);
    const FAILED_SOP_SEQUENCE: Tag = Tag::new(0x0008, 0x1198);
    const REFERENCED_CLASS: Tag = Tag::new(0x0008, 0x1150);
    const REFERENCED_INSTANCE: Tag = Tag::new(0x0008, 0x1155);
    const FAILURE_REASON: Tag = Tag::new(0x0008, 0x1197);
    const CONTENT_SEQUENCE: Tag = Tag::new(0x0040, 0xA730);
    const TEXT_VALUE: Tag = Tag::new(0x0040, 0xA160);
    const PATIENT_NAME: Tag = Tag::new(0x0010, 0x0010);
    const PATIENT_ID: Tag = Tag::new(0x0010, 0x0020);
    const STUDY_UID: Tag = Tag::new(0x0020, 0x000D);
    const PRIVATE_SEQUENCE: Tag = Tag::new(0x0009, 0x1010);

    /// A Storage Commitment-like tree with sequences three deep, empty values and an empty
    /// sequence and item.
    fn sample() -> DataSet {
        let mut leaf = DataSet::new();
        leaf.put_text(TEXT_VALUE, *b"UT", "  leading spaces stay");
        let mut middle = DataSet::new();
        middle.put_items(CONTENT_SEQUENCE, vec![leaf, DataSet::new()]);
        let mut reference = DataSet::new();
        reference.put_text(REFERENCED_CLASS, *b"UI", "1.2.840.10008.5.1.4.1.1.2");
        reference.put_text(REFERENCED_INSTANCE, *b"UI", "1.2.3.4.5");
        reference.put_u16(FAILURE_REASON, 0x0110);
        reference.put_items(CONTENT_SEQUENCE, vec![middle]);
        let mut top = DataSet::new();
        top.put_text(STUDY_UID, *b"UI", "1.2.3");
        top.put_text(QUERY_LEVEL, *b"CS", "STUDY");
        top.put_text(PATIENT_ID, *b"LO", "");
        top.put_text(PATIENT_NAME, *b"PN", "Doe^John");
        top.put_items(REFERENCED_SOP_SEQUENCE, vec![reference.clone(), reference]);
        top.put_items(FAILED_SOP_SEQUENCE, Vec::new());
        top
    }

    fn implicit_header(out: &mut Vec<u8>, tag: Tag, len: u32) {
        put_tag(out, tag, false);
        put_u32(out, len, false);
    }

    fn explicit_header(out: &mut Vec<u8>, tag: Tag, vr: &[u8; 2], len: u32, big: bool) {
        put_tag(out, tag, big);
        out.extend_from_slice(vr);
        if has_long_length(*vr) {
            out.extend_from_slice(&[0, 0]);
            put_u32(out, len, big);
        } else {
            put_u16(out, len as u16, big);
        }
    }

    #[test]
    fn nested_sequences_round_trip_in_every_encoding() {
        let top = sample();
        for encoding in ENCODINGS {
            let bytes = top.encode(encoding);
            let back = DataSet::decode(&bytes, encoding).unwrap();
            assert_eq!(back, top, "{encoding:?}");
            assert_eq!(back.encode(encoding), bytes, "{encoding:?}");
            assert_eq!(back.text(QUERY_LEVEL).as_deref(), Some("STUDY"));
            assert_eq!(back.text(STUDY_UID).as_deref(), Some("1.2.3"));
            assert_eq!(back.text(PATIENT_ID).as_deref(), Some(""));
            let references = back.items(REFERENCED_SOP_SEQUENCE);
            assert_eq!(references.len(), 2);
            assert_eq!(references[0].u16(FAILURE_REASON), Some(0x0110));
            assert_eq!(
                references[0].text(REFERENCED_CLASS).as_deref(),
                Some("1.2.840.10008.5.1.4.1.1.2")
            );
            let leaf = &references[1].items(CONTENT_SEQUENCE)[0].items(CONTENT_SEQUENCE)[0];
            assert_eq!(
                leaf.text(TEXT_VALUE).as_deref(),
                Some("  leading spaces stay")
            );
            assert!(back.items(FAILED_SOP_SEQUENCE).is_empty());
            assert!(back.contains(FAILED_SOP_SEQUENCE));
            assert!(back.items(PATIENT_NAME).is_empty());
            assert_eq!(back.text(REFERENCED_SOP_SEQUENCE), None);
            assert_eq!(back.u16(PATIENT_NAME), None);
        }
        // The tags come out in order whatever order they were put in.
        let tags: Vec<Tag> = top.elements().iter().map(|e| e.tag).collect();
        let mut sorted = tags.clone();
        sorted.sort();
        assert_eq!(tags, sorted);
    }

    #[test]
    fn setters_pad_replace_and_normalise() {
        let mut data_set = DataSet::new();
        data_set.put_text(STUDY_UID, *b"UI", "1.2.3");
        data_set.put_text(PATIENT_NAME, *b"PN", "Doe");
        assert_eq!(
            data_set.get(STUDY_UID).map(|e| &e.value),
            Some(&Value::Bytes(b"1.2.3\0".to_vec()))
        );
        assert_eq!(
            data_set.get(PATIENT_NAME).map(|e| &e.value),
            Some(&Value::Bytes(b"Doe ".to_vec()))
        );
        data_set.put_text(PATIENT_NAME, *b"PN", "Roe^Jane");
        assert_eq!(data_set.elements().len(), 2);
        assert_eq!(data_set.text(PATIENT_NAME).as_deref(), Some("Roe^Jane"));
        data_set.put(Element {
            tag: PATIENT_ID,
            vr: *b"zz",
            value: Value::Bytes(b"AB".to_vec()),
        });
        data_set.put(Element {
            tag: PRIVATE_SEQUENCE,
            vr: *b"LO",
            value: Value::Items(Vec::new()),
        });
        assert_eq!(data_set.get(PATIENT_ID).map(|e| e.vr), Some(UN));
        assert_eq!(data_set.get(PRIVATE_SEQUENCE).map(|e| e.vr), Some(SQ));
        assert!(!data_set.has_non_ascii());
    }

    #[test]
    fn utf8_names_round_trip_and_items_inherit_the_character_set() {
        let mut item = DataSet::new();
        item.put_text(PATIENT_NAME, *b"PN", "Åström^Örjan");
        let mut top = DataSet::new();
        top.put_text(PATIENT_NAME, *b"PN", "Müller^Jörg");
        top.put_items(REFERENCED_SOP_SEQUENCE, vec![item]);
        assert!(top.has_non_ascii());
        // The character set put last still reaches the item, as decoding would have it.
        top.put_text(CHARSET, *b"CS", "ISO_IR 192");
        for encoding in ENCODINGS {
            let back = DataSet::decode(&top.encode(encoding), encoding).unwrap();
            assert_eq!(back, top);
            assert_eq!(back.text(PATIENT_NAME).as_deref(), Some("Müller^Jörg"));
            assert_eq!(
                back.items(REFERENCED_SOP_SEQUENCE)[0]
                    .text(PATIENT_NAME)
                    .as_deref(),
                Some("Åström^Örjan")
            );
        }
        // Without (0008,0005) the same bytes are read in the default repertoire.
        let mut plain = DataSet::new();
        plain.put_text(PATIENT_NAME, *b"PN", "Müller");
        assert_ne!(plain.text(PATIENT_NAME).as_deref(), Some("Müller"));
    }

    #[test]
    fn latin1_names_are_decoded() {
        let mut bytes = Vec::new();
        implicit_header(&mut bytes, CHARSET, 10);
        bytes.extend_from_slice(b"ISO_IR 100");
        implicit_header(&mut bytes, PATIENT_NAME, 12);
        bytes.extend_from_slice(b"M\xFCller^J\xF6rg ");
        let data_set = DataSet::decode(&bytes, Encoding::ImplicitLittle).unwrap();
        assert_eq!(data_set.text(PATIENT_NAME).as_deref(), Some("Müller^Jörg"));
        assert_eq!(data_set.get(PATIENT_NAME).map(|e| e.vr), Some(*b"PN"));
        assert!(data_set.has_non_ascii());
        assert_eq!(data_set.encode(Encoding::ImplicitLittle), bytes);
    }

    #[test]
    fn implicit_undefined_length_sequences_with_delimiters_are_read() {
        let mut bytes = Vec::new();
        implicit_header(&mut bytes, REFERENCED_SOP_SEQUENCE, UNDEFINED_LENGTH);
        implicit_header(&mut bytes, Tag::ITEM, UNDEFINED_LENGTH);
        implicit_header(&mut bytes, REFERENCED_CLASS, 4);
        bytes.extend_from_slice(b"1.2\0");
        implicit_header(&mut bytes, Tag::ITEM_DELIMITER, 0);
        implicit_header(&mut bytes, Tag::ITEM, 10);
        implicit_header(&mut bytes, FAILURE_REASON, 2);
        bytes.extend_from_slice(&0xA700u16.to_le_bytes());
        implicit_header(&mut bytes, Tag::ITEM, 0);
        implicit_header(&mut bytes, Tag::SEQUENCE_DELIMITER, 0);
        let private_at = bytes.len();
        implicit_header(&mut bytes, PRIVATE_SEQUENCE, UNDEFINED_LENGTH);
        implicit_header(&mut bytes, Tag::ITEM, UNDEFINED_LENGTH);
        implicit_header(&mut bytes, Tag::new(0x0009, 0x1011), 2);
        bytes.extend_from_slice(b"AB");
        implicit_header(&mut bytes, Tag::ITEM_DELIMITER, 0);
        implicit_header(&mut bytes, Tag::SEQUENCE_DELIMITER, 0);
        implicit_header(&mut bytes, PATIENT_ID, 2);
        bytes.extend_from_slice(b"42");
        let data_set = DataSet::decode(&bytes, Encoding::ImplicitLittle).unwrap();
        let tags: Vec<Tag> = data_set.elements().iter().map(|e| e.tag).collect();
        assert_eq!(
            tags,
            vec![REFERENCED_SOP_SEQUENCE, PRIVATE_SEQUENCE, PATIENT_ID]
        );
        let private = data_set.items(PRIVATE_SEQUENCE);
        assert_eq!(private.len(), 1);
        assert_eq!(private[0].elements()[0].vr, UN);
        let references = data_set.items(REFERENCED_SOP_SEQUENCE);
        assert_eq!(references.len(), 3);
        assert_eq!(
            references[0].get(REFERENCED_CLASS).map(|e| e.vr),
            Some(*b"UI")
        );
        assert_eq!(references[0].text(REFERENCED_CLASS).as_deref(), Some("1.2"));
        assert_eq!(references[1].u16(FAILURE_REASON), Some(0xA700));
        assert!(references[2].is_empty());
        assert_eq!(data_set.get(PATIENT_ID).map(|e| e.vr), Some(*b"LO"));
        // Written back with defined lengths, except the private sequence, which keeps its
        // undefined length so that it is read back as a sequence.
        for encoding in ENCODINGS {
            let again = DataSet::decode(&data_set.encode(encoding), encoding).unwrap();
            assert_eq!(again, data_set, "{encoding:?}");
        }
        let encoded = data_set.encode(Encoding::ImplicitLittle);
        assert_eq!(&encoded[4..8], &46u32.to_le_bytes());
        // Both delimiters of the first item and the sequence are gone before the private
        // sequence, whose header still says undefined length.
        let written_at = private_at - 16;
        assert_eq!(
            &encoded[written_at..written_at + 8],
            &bytes[private_at..private_at + 8]
        );
        assert!(encoded.len() < bytes.len());
    }

    #[test]
    fn explicit_big_endian_numbers_are_stored_little_endian() {
        let mut bytes = Vec::new();
        explicit_header(&mut bytes, FAILURE_REASON, b"US", 4, true);
        bytes.extend_from_slice(&[0x01, 0x10, 0xA7, 0x00]);
        explicit_header(
            &mut bytes,
            Tag::new(0x0008, 0x1198),
            b"SQ",
            UNDEFINED_LENGTH,
            true,
        );
        put_tag(&mut bytes, Tag::ITEM, true);
        put_u32(&mut bytes, 22, true);
        explicit_header(&mut bytes, Tag::new(0x0028, 0x0010), b"US", 2, true);
        bytes.extend_from_slice(&[0x02, 0x00]);
        explicit_header(&mut bytes, Tag::new(0x0028, 0x9001), b"UL", 4, true);
        bytes.extend_from_slice(&[0x00, 0x01, 0x02, 0x03]);
        put_tag(&mut bytes, Tag::SEQUENCE_DELIMITER, true);
        put_u32(&mut bytes, 0, true);
        let data_set = DataSet::decode(&bytes, Encoding::ExplicitBig).unwrap();
        assert_eq!(data_set.u16(FAILURE_REASON), Some(0x0110));
        assert_eq!(
            data_set.get(FAILURE_REASON).map(|e| &e.value),
            Some(&Value::Bytes(vec![0x10, 0x01, 0x00, 0xA7]))
        );
        let item = &data_set.items(Tag::new(0x0008, 0x1198))[0];
        assert_eq!(item.u16(Tag::new(0x0028, 0x0010)), Some(0x0200));
        assert_eq!(
            item.get(Tag::new(0x0028, 0x9001)).map(|e| &e.value),
            Some(&Value::Bytes(vec![0x03, 0x02, 0x01, 0x00]))
        );
        let little = data_set.encode(Encoding::ExplicitLittle);
        assert_eq!(&little[8..12], &[0x10, 0x01, 0x00, 0xA7]);
        let again = data_set.encode(Encoding::ExplicitBig);
        assert_eq!(DataSet::decode(&again, Encoding::ExplicitBig), Ok(data_set));
        // The US element is written back as it came; the sequence now has a defined length.
        assert_eq!(&again[..12], &bytes[..12]);
    }

    #[test]
    fn un_of_undefined_length_is_an_implicit_sequence() {
        for big in [false, true] {
            let encoding = if big {
                Encoding::ExplicitBig
            } else {
                Encoding::ExplicitLittle
            };
            let mut bytes = Vec::new();
            explicit_header(
                &mut bytes,
                REFERENCED_SOP_SEQUENCE,
                b"UN",
                UNDEFINED_LENGTH,
                big,
            );
            // The value is Implicit VR Little Endian whatever the data set's encoding.
            implicit_header(&mut bytes, Tag::ITEM, UNDEFINED_LENGTH);
            implicit_header(&mut bytes, REFERENCED_CLASS, 4);
            bytes.extend_from_slice(b"1.2\0");
            implicit_header(&mut bytes, FAILURE_REASON, 2);
            bytes.extend_from_slice(&0x0112u16.to_le_bytes());
            implicit_header(&mut bytes, Tag::ITEM_DELIMITER, 0);
            implicit_header(&mut bytes, Tag::SEQUENCE_DELIMITER, 0);
            explicit_header(&mut bytes, PATIENT_ID, b"LO", 2, big);
            bytes.extend_from_slice(b"42");
            let data_set = DataSet::decode(&bytes, encoding).unwrap();
            assert_eq!(
                data_set.get(REFERENCED_SOP_SEQUENCE).map(|e| e.vr),
                Some(SQ)
            );
            let item = &data_set.items(REFERENCED_SOP_SEQUENCE)[0];
            assert_eq!(item.get(REFERENCED_CLASS).map(|e| e.vr), Some(*b"UI"));
            assert_eq!(item.u16(FAILURE_REASON), Some(0x0112));
            assert_eq!(data_set.text(PATIENT_ID).as_deref(), Some("42"));
            let again = DataSet::decode(&data_set.encode(encoding), encoding);
            assert_eq!(again, Ok(data_set));
        }
    }

    #[test]
    fn values_too_long_for_their_length_field_travel_as_un() {
        let long = "x".repeat(0x1_0001);
        let mut data_set = DataSet::new();
        data_set.put_text(PATIENT_ID, *b"LO", &long);
        for encoding in ENCODINGS {
            let bytes = data_set.encode(encoding);
            if encoding != Encoding::ImplicitLittle {
                assert_eq!(&bytes[4..6], b"UN");
            }
            assert_eq!(DataSet::decode(&bytes, encoding).as_ref(), Ok(&data_set));
        }
    }

    /// The offsets at which a top-level element of `data_set` ends in `encoding`.
    fn element_ends(data_set: &DataSet, encoding: Encoding) -> Vec<usize> {
        let mut partial = DataSet::new();
        let mut ends = vec![0];
        for element in data_set.elements() {
            partial.put(element.clone());
            ends.push(partial.encode(encoding).len());
        }
        ends
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut top = sample();
        top.put_text(CHARSET, *b"CS", "ISO_IR 192");
        top.put_u16(Tag::new(0x0028, 0x0010), 512);
        let mut private = DataSet::new();
        private.put_text(Tag::new(0x0009, 0x1011), *b"UN", "abc");
        top.put_items(PRIVATE_SEQUENCE, vec![private]);
        for encoding in ENCODINGS {
            let bytes = top.encode(encoding);
            let ends = element_ends(&top, encoding);
            for len in 0..bytes.len() {
                let result = DataSet::decode(&bytes[..len], encoding);
                if ends.contains(&len) {
                    assert!(result.is_ok(), "{encoding:?} {len}: {result:?}");
                } else {
                    assert!(result.is_err(), "{encoding:?} {len}: {result:?}");
                }
            }
        }
    }

    #[test]
    fn lengths_that_do_not_fit_are_refused() {
        let mut beyond = Vec::new();
        explicit_header(&mut beyond, PATIENT_ID, b"LO", 100, false);
        beyond.extend_from_slice(b"1234");
        assert_eq!(
            DataSet::decode(&beyond, Encoding::ExplicitLittle),
            Err(DataSetError::BadLength {
                offset: 0,
                tag: PATIENT_ID,
                len: 100
            })
        );
        let mut implicit = Vec::new();
        implicit_header(&mut implicit, QUERY_LEVEL, 6);
        implicit.extend_from_slice(b"STUDY ");
        implicit_header(&mut implicit, PATIENT_ID, u32::MAX - 1);
        assert_eq!(
            DataSet::decode(&implicit, Encoding::ImplicitLittle),
            Err(DataSetError::BadLength {
                offset: 14,
                tag: PATIENT_ID,
                len: u32::MAX - 1
            })
        );
        for vr in [b"OB", b"UT", b"OW", b"UC"] {
            let mut undefined = Vec::new();
            explicit_header(&mut undefined, PATIENT_ID, vr, UNDEFINED_LENGTH, false);
            implicit_header(&mut undefined, Tag::SEQUENCE_DELIMITER, 0);
            assert!(
                matches!(
                    DataSet::decode(&undefined, Encoding::ExplicitLittle),
                    Err(DataSetError::BadLength {
                        offset: 0,
                        len: UNDEFINED_LENGTH,
                        ..
                    })
                ),
                "{vr:?}"
            );
        }
        // An item longer than its sequence.
        let mut item = Vec::new();
        explicit_header(&mut item, REFERENCED_SOP_SEQUENCE, b"SQ", 8, false);
        implicit_header(&mut item, Tag::ITEM, 2);
        item.extend_from_slice(b"xx");
        assert_eq!(
            DataSet::decode(&item, Encoding::ExplicitLittle),
            Err(DataSetError::BadLength {
                offset: 12,
                tag: Tag::ITEM,
                len: 2
            })
        );
        // A delimiter with a length.
        let mut delimiter = Vec::new();
        implicit_header(&mut delimiter, REFERENCED_SOP_SEQUENCE, UNDEFINED_LENGTH);
        implicit_header(&mut delimiter, Tag::SEQUENCE_DELIMITER, 4);
        delimiter.extend_from_slice(&[0; 4]);
        assert!(matches!(
            DataSet::decode(&delimiter, Encoding::ImplicitLittle),
            Err(DataSetError::BadLength { offset: 8, .. })
        ));
        assert_eq!(
            DataSet::decode(&vec![0; DATA_SET_BYTES_MAX + 1], Encoding::ImplicitLittle),
            Err(DataSetError::TooLong {
                len: DATA_SET_BYTES_MAX + 1
            })
        );
    }

    #[test]
    fn bad_vrs_order_delimiters_and_charsets_are_refused() {
        for vr in [b"ZZ", b"lo", b"\0\0"] {
            let mut bytes = Vec::new();
            explicit_header(&mut bytes, QUERY_LEVEL, b"CS", 2, false);
            bytes.extend_from_slice(b"  ");
            put_tag(&mut bytes, PATIENT_ID, false);
            bytes.extend_from_slice(vr);
            bytes.extend_from_slice(&[0, 0]);
            assert_eq!(
                DataSet::decode(&bytes, Encoding::ExplicitLittle),
                Err(DataSetError::BadVr {
                    offset: 10,
                    vr: *vr
                })
            );
        }
        let mut reversed = Vec::new();
        implicit_header(&mut reversed, PATIENT_ID, 0);
        implicit_header(&mut reversed, PATIENT_NAME, 0);
        assert_eq!(
            DataSet::decode(&reversed, Encoding::ImplicitLittle),
            Err(DataSetError::OutOfOrder {
                offset: 8,
                tag: PATIENT_NAME
            })
        );
        let mut twice = Vec::new();
        explicit_header(&mut twice, PATIENT_ID, b"LO", 0, true);
        explicit_header(&mut twice, PATIENT_ID, b"LO", 0, true);
        assert_eq!(
            DataSet::decode(&twice, Encoding::ExplicitBig),
            Err(DataSetError::Duplicate {
                offset: 8,
                tag: PATIENT_ID
            })
        );
        // Order is checked inside items too (the lengths are fixed up for the added element).
        let mut item = DataSet::new();
        item.put_text(PATIENT_ID, *b"LO", "B");
        let mut top = DataSet::new();
        top.put_items(CONTENT_SEQUENCE, vec![item]);
        let mut bytes = top.encode(Encoding::ImplicitLittle);
        implicit_header(&mut bytes, PATIENT_NAME, 0);
        let sequence_len = bytes.len() - 8;
        bytes[4..8].copy_from_slice(&(sequence_len as u32).to_le_bytes());
        bytes[12..16].copy_from_slice(&((sequence_len - 8) as u32).to_le_bytes());
        assert_eq!(
            DataSet::decode(&bytes, Encoding::ImplicitLittle),
            Err(DataSetError::OutOfOrder {
                offset: 26,
                tag: PATIENT_NAME
            })
        );
        let mut stray = Vec::new();
        implicit_header(&mut stray, PATIENT_ID, 0);
        implicit_header(&mut stray, Tag::ITEM_DELIMITER, 0);
        assert_eq!(
            DataSet::decode(&stray, Encoding::ImplicitLittle),
            Err(DataSetError::UnexpectedDelimiter { offset: 8 })
        );
        let mut not_item = Vec::new();
        implicit_header(&mut not_item, REFERENCED_SOP_SEQUENCE, UNDEFINED_LENGTH);
        implicit_header(&mut not_item, PATIENT_ID, 0);
        assert_eq!(
            DataSet::decode(&not_item, Encoding::ImplicitLittle),
            Err(DataSetError::NotAnItem {
                offset: 8,
                tag: PATIENT_ID
            })
        );
        let mut unclosed = Vec::new();
        implicit_header(&mut unclosed, REFERENCED_SOP_SEQUENCE, UNDEFINED_LENGTH);
        implicit_header(&mut unclosed, Tag::ITEM, 0);
        assert_eq!(
            DataSet::decode(&unclosed, Encoding::ImplicitLittle),
            Err(DataSetError::Truncated { offset: 16 })
        );
        let mut charset = DataSet::new();
        charset.put_text(CHARSET, *b"CS", "ISO_IR 999");
        assert_eq!(charset.character_sets(), &CharacterSets::default());
        assert!(matches!(
            DataSet::decode(
                &charset.encode(Encoding::ExplicitLittle),
                Encoding::ExplicitLittle
            ),
            Err(DataSetError::BadCharset(_))
        ));
        let mut sequence_charset = DataSet::new();
        sequence_charset.put_items(CHARSET, Vec::new());
        assert!(matches!(
            DataSet::decode(
                &sequence_charset.encode(Encoding::ExplicitLittle),
                Encoding::ExplicitLittle
            ),
            Err(DataSetError::BadCharset(_))
        ));
    }

    /// `levels` sequences, each in the only item of the one above.
    fn nested(levels: usize) -> DataSet {
        let mut data_set = DataSet::new();
        data_set.put_text(PATIENT_ID, *b"LO", "deep");
        for _ in 0..levels {
            let mut outer = DataSet::new();
            outer.put_items(CONTENT_SEQUENCE, vec![data_set]);
            data_set = outer;
        }
        data_set
    }

    #[test]
    fn sequences_nested_too_deep_are_refused() {
        for encoding in ENCODINGS {
            let deepest = nested(DEPTH_MAX);
            assert_eq!(
                DataSet::decode(&deepest.encode(encoding), encoding).as_ref(),
                Ok(&deepest)
            );
            let bytes = nested(DEPTH_MAX + 1).encode(encoding);
            let header = if encoding == Encoding::ImplicitLittle {
                8
            } else {
                12
            };
            assert_eq!(
                DataSet::decode(&bytes, encoding),
                Err(DataSetError::TooDeep {
                    offset: DEPTH_MAX * (header + 8) + header
                })
            );
        }
        // A bomb of undefined lengths: no item is ever closed.
        let mut bomb = Vec::new();
        for _ in 0..10_000 {
            implicit_header(&mut bomb, PRIVATE_SEQUENCE, UNDEFINED_LENGTH);
            implicit_header(&mut bomb, Tag::ITEM, UNDEFINED_LENGTH);
        }
        assert_eq!(
            DataSet::decode(&bomb, Encoding::ImplicitLittle),
            Err(DataSetError::TooDeep {
                offset: DEPTH_MAX * 16 + 8
            })
        );
    }

    #[test]
    fn too_many_elements_are_refused() {
        let many = |count: usize| {
            let mut bytes = Vec::new();
            for element in 0..count {
                implicit_header(&mut bytes, Tag::new(0x0011, 0x0100 + element as u16), 0);
            }
            bytes
        };
        assert_eq!(
            DataSet::decode(&many(ELEMENTS_MAX), Encoding::ImplicitLittle)
                .map(|d| d.elements().len()),
            Ok(ELEMENTS_MAX)
        );
        assert_eq!(
            DataSet::decode(&many(ELEMENTS_MAX + 1), Encoding::ImplicitLittle),
            Err(DataSetError::TooManyElements)
        );
        // Empty items count too.
        let mut items = Vec::new();
        implicit_header(&mut items, REFERENCED_SOP_SEQUENCE, UNDEFINED_LENGTH);
        for _ in 0..ELEMENTS_MAX {
            implicit_header(&mut items, Tag::ITEM, 0);
        }
        implicit_header(&mut items, Tag::SEQUENCE_DELIMITER, 0);
        assert_eq!(
            DataSet::decode(&items, Encoding::ImplicitLittle),
            Err(DataSetError::TooManyElements)
        );
    }

    #[test]
    fn errors_say_what_and_where() {
        let error = DataSetError::BadLength {
            offset: 12,
            tag: PATIENT_ID,
            len: 100,
        };
        assert_eq!(
            error.to_string(),
            "(0010,0020) at byte 12 declares a length of 0x00000064 that does not fit"
        );
        assert!(DataSetError::TooManyElements
            .to_string()
            .contains(&ELEMENTS_MAX.to_string()));
    }

    /// A generated element: text and US ones from tables of (tag, dictionary VR), sequences
    /// of generated items.
    #[derive(Debug, Clone)]
    enum Spec {
        Text(usize, String),
        Number(usize, u16),
        Sequence(usize, Vec<Vec<Spec>>),
    }

    const TEXT_TAGS: [(Tag, [u8; 2]); 12] = [
        (Tag::new(0x0008, 0x0020), *b"DA"),
        (Tag::new(0x0008, 0x0050), *b"SH"),
        (Tag::new(0x0008, 0x0052), *b"CS"),
        (Tag::new(0x0008, 0x1030), *b"LO"),
        (Tag::new(0x0008, 0x1150), *b"UI"),
        (Tag::new(0x0008, 0x1155), *b"UI"),
        (Tag::new(0x0009, 0x1011), *b"UN"),
        (Tag::new(0x0010, 0x0010), *b"PN"),
        (Tag::new(0x0010, 0x0020), *b"LO"),
        (Tag::new(0x0020, 0x000D), *b"UI"),
        (Tag::new(0x0040, 0xA160), *b"UT"),
        (Tag::new(0x0032, 0x4000), *b"LT"),
    ];
    const NUMBER_TAGS: [Tag; 3] = [
        Tag::new(0x0008, 0x1197),
        Tag::new(0x0028, 0x0010),
        Tag::new(0x0028, 0x0011),
    ];
    const SEQUENCE_TAGS: [Tag; 4] = [
        Tag::new(0x0008, 0x1198),
        Tag::new(0x0008, 0x1199),
        Tag::new(0x0009, 0x1010),
        Tag::new(0x0040, 0xA730),
    ];

    fn spec() -> impl Strategy<Value = Vec<Spec>> {
        let leaf = prop_oneof![
            (0..TEXT_TAGS.len(), "[ -~äöüÅ]{0,12}").prop_map(|(t, s)| Spec::Text(t, s)),
            (0..NUMBER_TAGS.len(), any::<u16>()).prop_map(|(t, n)| Spec::Number(t, n)),
        ];
        let element = leaf.prop_recursive(3, 24, 4, |inner| {
            (
                0..SEQUENCE_TAGS.len(),
                proptest::collection::vec(proptest::collection::vec(inner, 0..4), 0..3),
            )
                .prop_map(|(t, items)| Spec::Sequence(t, items))
        });
        proptest::collection::vec(element, 0..8)
    }

    fn build(specs: &[Spec]) -> DataSet {
        let mut data_set = DataSet::new();
        for spec in specs {
            match spec {
                Spec::Text(t, text) => data_set.put_text(TEXT_TAGS[*t].0, TEXT_TAGS[*t].1, text),
                Spec::Number(t, n) => data_set.put_u16(NUMBER_TAGS[*t], *n),
                Spec::Sequence(t, items) => {
                    data_set.put_items(SEQUENCE_TAGS[*t], items.iter().map(|i| build(i)).collect())
                }
            }
        }
        data_set
    }

    fn dicom_encoding() -> impl Strategy<Value = Encoding> {
        prop_oneof![
            Just(Encoding::ImplicitLittle),
            Just(Encoding::ExplicitLittle),
            Just(Encoding::ExplicitBig),
        ]
    }

    proptest! {
        #[test]
        fn generated_trees_round_trip(
            specs in spec(),
            charset in proptest::option::of(prop_oneof![Just("ISO_IR 192"), Just("ISO_IR 100")]),
            charset_first in any::<bool>(),
        ) {
            let mut data_set = DataSet::new();
            if charset_first {
                if let Some(term) = charset {
                    data_set.put_text(CHARSET, *b"CS", term);
                }
            }
            for element in build(&specs).elements() {
                data_set.put(element.clone());
            }
            if !charset_first {
                if let Some(term) = charset {
                    data_set.put_text(CHARSET, *b"CS", term);
                }
            }
            for encoding in ENCODINGS {
                let bytes = data_set.encode(encoding);
                let back = DataSet::decode(&bytes, encoding);
                prop_assert_eq!(back.as_ref(), Ok(&data_set));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for encoding in ENCODINGS {
                if let Ok(data_set) = DataSet::decode(&bytes, encoding) {
                    let again = DataSet::decode(&data_set.encode(encoding), encoding);
                    prop_assert_eq!(again, Ok(data_set));
                }
            }
        }

        #[test]
        fn damaged_encodings_never_panic(
            specs in spec(),
            encoding in dicom_encoding(),
            damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = build(&specs).encode(encoding);
            if bytes.is_empty() {
                return Ok(());
            }
            for (index, byte) in damage {
                let at = index.index(bytes.len());
                bytes[at] = byte;
            }
            if let Ok(data_set) = DataSet::decode(&bytes, encoding) {
                let again = DataSet::decode(&data_set.encode(encoding), encoding);
                prop_assert_eq!(again, Ok(data_set));
            }
        }
    }
}
