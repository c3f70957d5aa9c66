//! DICOM JSON (PS3.18 Annex F, the "DICOM JSON Model") for WADO-RS metadata responses.
//!
//! [`write_data_set_json`] reads one data set's raw bytes in any of the three uncompressed
//! encodings ([`Encoding`]) and appends one JSON object to a `String`, without building a tree:
//! the members come out in the data set's (ascending) tag order, with the caller's extra
//! bulk-data elements merged in. Every length is checked against the bytes present (and against
//! the enclosing item or sequence) before it is used, nothing is allocated by a declared length,
//! sequences are nested at most [`JsonLimits::depth_max`] deep and the output is bounded by
//! [`JsonLimits::output_bytes_max`], so hostile input costs bounded time and memory. On error
//! `out` may hold a partial object and must be discarded.
//!
//! Mapping (PS3.18 F.2):
//!
//! - group lengths (gggg,0000), the file meta group (0002) and stray (FFFE,xxxx) items or
//!   delimiters outside a sequence are left out, and so is an element whose tag is not above
//!   the previous one's (a data set out of order), so that the members stay unique and
//!   ascending (F.2.2);
//! - text VRs are decoded with the data set's Specific Character Set (0008,0005) (an item may
//!   redefine it for itself); values are split on `\` except in LT, ST, UT and UR; trailing
//!   spaces and NULs are dropped, and leading spaces in AE, CS, DS, IS, LO and SH (the VRs whose
//!   leading spaces PS3.5 6.2 calls insignificant). An element with no (non-empty) value has only
//!   `"vr"`; an empty value among several is `null` (F.2.5);
//! - PN values become `{"Alphabetic", "Ideographic", "Phonetic"}` objects, empty groups left out;
//! - IS and DS values are JSON numbers when they are decimal numbers (normalised to JSON's
//!   grammar: no `+`, no leading zeros, `0.5` for `.5`), else strings — the standard allows
//!   either (Table F.2.3-1 note). An IS beyond ±(2^53 − 1) and a DS that overflows a double stay
//!   strings, so no digit is lost by a JSON reader using doubles;
//! - US, SS, UL, SL, FL, FD are numbers; UV and SV are numbers within ±(2^53 − 1) and decimal
//!   strings beyond (Table F.2.3-1 allows "Number or String"), so no 64-bit digit is lost;
//!   FL and FD are written in their shortest round-trip form, and since JSON has no NaN or
//!   infinity those values are the strings `"NaN"`, `"Infinity"` and `"-Infinity"`;
//! - AT values are `"GGGGEEEE"` strings;
//! - OB, OD, OF, OL, OV, OW and UN become `"InlineBinary"` (base64) up to
//!   [`JsonLimits::inline_binary_bytes_max`] bytes, and have only `"vr"` beyond. In Explicit VR
//!   Big Endian the bytes are kept as stored (not swapped to little endian);
//! - SQ becomes an array of objects, items of defined or undefined length, an empty item `{}`.
//!   An undefined-length UN (any encoding), and in Implicit VR an undefined-length element whose
//!   dictionary VR is not OB or OW, is read as a sequence of Implicit VR Little Endian items
//!   (PS3.5 6.2.2) and written with `"vr": "SQ"`;
//! - an undefined-length OB or OW (encapsulated fragments) is skipped and written with only
//!   `"vr"`, or with the caller's bulk-data URI at top level;
//! - in Implicit VR the VR comes from the standard dictionary; private creators (odd group,
//!   element 0010–00FF) are LO, unknown tags UN. A value whose length does not fit the
//!   dictionary VR's value size is written as UN instead (the dictionary guessed wrong); in
//!   the explicit encodings such a length is an error ([`JsonError::BadLength`]).

use std::borrow::Cow;
use std::fmt::Write as _;

use base64::Engine as _;

use super::charset::CharacterSets;
use super::explicit_le::has_long_length;
use super::meta::ts;
use super::{dictionary_vr, Tag};

/// Bounds on [`write_data_set_json`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Deepest sequence nesting (the items of a top-level sequence are at depth 1).
    pub depth_max: usize,
    /// Most bytes appended to `out`.
    pub output_bytes_max: usize,
    /// Longest binary value written as `"InlineBinary"`; longer ones get only `"vr"`.
    pub inline_binary_bytes_max: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits {
            depth_max: 16,
            output_bytes_max: 256 << 20,
            inline_binary_bytes_max: 64 << 10,
        }
    }
}

/// Why a data set could not be written as JSON. Offsets are byte offsets into the data set, of
/// the element (or item) header concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The data set ends inside the element (or item) starting at `offset`.
    #[error("DICOM data set truncated in the element at offset {offset}")]
    Truncated { offset: usize },
    /// The element at `offset` has a length that does not fit: beyond its enclosing item or
    /// sequence, undefined where that is not allowed, or not a multiple of its VR's value size.
    #[error("DICOM element at offset {offset} has an invalid length")]
    BadLength { offset: usize },
    /// Explicit VR with two bytes that name no VR.
    #[error("DICOM element at offset {offset} has an unknown VR {vr:?}")]
    UnknownVr { offset: usize, vr: [u8; 2] },
    /// Something other than an item or a delimiter inside a sequence or encapsulated value.
    #[error("unexpected tag {tag} at offset {offset} inside a sequence")]
    UnexpectedTag { offset: usize, tag: Tag },
    #[error("DICOM sequences nested deeper than {max}")]
    Depth { max: usize },
    #[error("DICOM JSON output exceeds {max} bytes")]
    OutputLimit { max: usize },
    /// For callers: [`Encoding::of_transfer_syntax`] gave `None` for this transfer syntax.
    #[error("unsupported transfer syntax {0} for DICOM JSON")]
    UnsupportedTransferSyntax(String),
}

/// How a data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    ExplicitLittle,
    ImplicitLittle,
    ExplicitBig,
}

impl Encoding {
    /// The data set encoding of a transfer syntax. `inflated` says the bytes were already
    /// inflated from a deflated transfer syntax (so they are Explicit VR Little Endian); a
    /// deflated transfer syntax whose bytes were not inflated gives `None`. Every transfer
    /// syntax other than Implicit VR LE, Explicit VR BE and the deflated ones encodes its data
    /// set as Explicit VR Little Endian.
    pub fn of_transfer_syntax(uid: &str, inflated: bool) -> Option<Encoding> {
        if inflated {
            return Some(Encoding::ExplicitLittle);
        }
        match uid.trim_end_matches(['\0', ' ']) {
            ts::IMPLICIT_VR_LE => Some(Encoding::ImplicitLittle),
            ts::EXPLICIT_VR_BE => Some(Encoding::ExplicitBig),
            ts::DEFLATED_EXPLICIT_VR_LE | ts::JPIP_DEFLATE => None,
            _ => Some(Encoding::ExplicitLittle),
        }
    }

    fn big(self) -> bool {
        self == Encoding::ExplicitBig
    }
}

/// Appends one JSON object `{ "GGGGEEEE": {"vr": ..., "Value"/"InlineBinary"/"BulkDataURI":
/// ...}, ... }` for `data_set` to `out` (see the module documentation for the mapping).
///
/// - `bulk`: for top-level elements whose value was removed from `data_set`; `Some(uri)` writes
///   `"BulkDataURI": uri` instead of the (empty) value (ignored for sequences).
/// - `extra_top_level`: further top-level elements written as `{"vr": vr, "BulkDataURI": uri}`
///   (such as Pixel Data, which `data_set` does not hold), merged in tag order; one whose tag
///   is also in `data_set` replaces that element. Need not be sorted; of duplicates the first
///   counts.
///
/// On error `out` may hold a partial object and must be discarded.
pub fn write_data_set_json(
    data_set: &[u8],
    encoding: Encoding,
    bulk: &dyn Fn(Tag) -> Option<String>,
    extra_top_level: &[(Tag, [u8; 2], String)],
    limits: &JsonLimits,
    out: &mut String,
) -> Result<(), JsonError> {
    let mut extras: Vec<&(Tag, [u8; 2], String)> = extra_top_level.iter().collect();
    extras.sort_by_key(|extra| extra.0);
    extras.dedup_by_key(|extra| extra.0);
    let mut top = Top {
        bulk,
        extras,
        next: 0,
    };
    let start = out.len();
    let mut writer = Writer {
        buf: data_set,
        limits,
        out,
        start,
    };
    let charset = CharacterSets::default();
    writer.data_set(
        0,
        data_set.len(),
        false,
        encoding,
        &charset,
        0,
        Some(&mut top),
    )?;
    Ok(())
}

/// Appends `s` to `out` as a JSON string: quoted, with `"`, `\` and the control characters
/// escaped (RFC 8259 section 7).
pub fn write_json_string(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0C => "\\f",
            0..=0x1F => "",
            _ => continue,
        };
        // Only ASCII bytes are escaped, so `i` is a character boundary.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// The length of `s` as written by [`write_json_string`].
fn json_string_len(s: &str) -> usize {
    s.bytes().fold(s.len() + 2, |len, b| match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0C => len + 1,
        0..=0x1F => len + 5,
        _ => len,
    })
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
/// The largest integer a JSON reader using doubles holds exactly (JavaScript's
/// `Number.MAX_SAFE_INTEGER`).
const SAFE_INTEGER_MAX: u64 = (1 << 53) - 1;
const SPECIFIC_CHARACTER_SET: Tag = Tag::new(0x0008, 0x0005);
/// An upper bound on the bytes one number (with its separator) takes.
const NUMBER_BYTES_MAX: usize = 40;

/// VRs with a 2-byte length in the explicit encodings.
fn has_short_length(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FD"
            | b"FL"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// The size of one value of a fixed-size VR.
fn value_size(vr: [u8; 2]) -> Option<usize> {
    match &vr {
        b"US" | b"SS" => Some(2),
        b"UL" | b"SL" | b"FL" | b"AT" => Some(4),
        b"FD" | b"UV" | b"SV" => Some(8),
        _ => None,
    }
}

fn is_binary(vr: [u8; 2]) -> bool {
    matches!(&vr, b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"UN")
}

/// The VR of an element read in Implicit VR (PS3.5 7.8.1 for private creators).
fn implicit_vr(tag: Tag) -> [u8; 2] {
    if tag.group() % 2 == 1 {
        return if (0x0010..=0x00FF).contains(&tag.element()) {
            *b"LO"
        } else {
            *b"UN"
        };
    }
    dictionary_vr(tag).unwrap_or(*b"UN")
}

fn u16_at(buf: &[u8], pos: usize, big: bool) -> Option<u16> {
    let bytes: [u8; 2] = buf.get(pos..pos.checked_add(2)?)?.try_into().ok()?;
    Some(if big {
        u16::from_be_bytes(bytes)
    } else {
        u16::from_le_bytes(bytes)
    })
}

fn u32_at(buf: &[u8], pos: usize, big: bool) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(pos..pos.checked_add(4)?)?.try_into().ok()?;
    Some(if big {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    })
}

fn u64_at(buf: &[u8], pos: usize, big: bool) -> Option<u64> {
    let bytes: [u8; 8] = buf.get(pos..pos.checked_add(8)?)?.try_into().ok()?;
    Some(if big {
        u64::from_be_bytes(bytes)
    } else {
        u64::from_le_bytes(bytes)
    })
}

/// One element (or item) header.
struct Header {
    offset: usize,
    tag: Tag,
    /// `None` in Implicit VR and for (FFFE,xxxx).
    vr: Option<[u8; 2]>,
    length: u32,
    /// Offset of the value's first byte.
    value: usize,
}

/// The top-level extras.
struct Top<'a> {
    bulk: &'a dyn Fn(Tag) -> Option<String>,
    extras: Vec<&'a (Tag, [u8; 2], String)>,
    next: usize,
}

/// How an element's value is read.
enum Kind {
    /// A sequence whose items are in this encoding; `end` is its end for a defined length.
    Sequence { items: Encoding, end: Option<usize> },
    /// Undefined-length OB or OW: fragments, skipped.
    Fragments,
    /// A plain value ending at `end`.
    Value { end: usize },
}

struct Writer<'a> {
    buf: &'a [u8],
    limits: &'a JsonLimits,
    out: &'a mut String,
    /// `out`'s length before this call.
    start: usize,
}

impl Writer<'_> {
    /// Fails unless `n` more bytes fit in the output limit.
    fn room(&self, n: usize) -> Result<(), JsonError> {
        let used = self.out.len() - self.start;
        if used.saturating_add(n) > self.limits.output_bytes_max {
            return Err(JsonError::OutputLimit {
                max: self.limits.output_bytes_max,
            });
        }
        Ok(())
    }

    fn push(&mut self, s: &str) -> Result<(), JsonError> {
        self.room(s.len())?;
        self.out.push_str(s);
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<(), JsonError> {
        self.room(json_string_len(s))?;
        write_json_string(s, self.out);
        Ok(())
    }

    /// The error for something at `offset` that needs bytes beyond `end`: the data set is
    /// truncated when `end` is its end, else the enclosing length is wrong.
    fn short(&self, offset: usize, end: usize) -> JsonError {
        if end >= self.buf.len() {
            JsonError::Truncated { offset }
        } else {
            JsonError::BadLength { offset }
        }
    }

    fn header(&self, pos: usize, end: usize, encoding: Encoding) -> Result<Header, JsonError> {
        let big = encoding.big();
        let fits = |n: usize| pos.checked_add(n).is_some_and(|e| e <= end);
        if !fits(8) {
            return Err(self.short(pos, end));
        }
        let truncated = || JsonError::Truncated { offset: pos };
        let group = u16_at(self.buf, pos, big).ok_or_else(truncated)?;
        let element = u16_at(self.buf, pos + 2, big).ok_or_else(truncated)?;
        let tag = Tag::new(group, element);
        if group == 0xFFFE || encoding == Encoding::ImplicitLittle {
            return Ok(Header {
                offset: pos,
                tag,
                vr: None,
                length: u32_at(self.buf, pos + 4, big).ok_or_else(truncated)?,
                value: pos + 8,
            });
        }
        let vr = [self.buf[pos + 4], self.buf[pos + 5]];
        if has_long_length(vr) {
            if !fits(12) {
                return Err(self.short(pos, end));
            }
            Ok(Header {
                offset: pos,
                tag,
                vr: Some(vr),
                length: u32_at(self.buf, pos + 8, big).ok_or_else(truncated)?,
                value: pos + 12,
            })
        } else if has_short_length(vr) {
            Ok(Header {
                offset: pos,
                tag,
                vr: Some(vr),
                length: u32::from(u16_at(self.buf, pos + 6, big).ok_or_else(truncated)?),
                value: pos + 8,
            })
        } else {
            Err(JsonError::UnknownVr { offset: pos, vr })
        }
    }

    /// The end of a defined-length value, checked against `end`.
    fn value_end(&self, header: &Header, end: usize) -> Result<usize, JsonError> {
        if header.length == UNDEFINED {
            return Err(JsonError::BadLength {
                offset: header.offset,
            });
        }
        match header.value.checked_add(header.length as usize) {
            Some(value_end) if value_end <= end => Ok(value_end),
            _ => Err(self.short(header.offset, end)),
        }
    }

    /// Skips a file meta group at the start of a data set that is not Explicit VR LE (the
    /// group is always Explicit VR LE; in Explicit VR LE the element loop skips it).
    fn skip_meta(
        &self,
        mut pos: usize,
        end: usize,
        encoding: Encoding,
    ) -> Result<usize, JsonError> {
        if encoding == Encoding::ExplicitLittle {
            return Ok(pos);
        }
        while pos.checked_add(8).is_some_and(|e| e <= end)
            && u16_at(self.buf, pos, false) == Some(0x0002)
        {
            let header = self.header(pos, end, Encoding::ExplicitLittle)?;
            pos = self.value_end(&header, end)?;
        }
        Ok(pos)
    }

    /// Writes the data set in `[pos, end)` as an object. With `delimited` it ends at an item
    /// delimiter (an undefined-length item), which must come before `end`; returns the offset
    /// after what was read.
    #[allow(clippy::too_many_arguments)]
    fn data_set(
        &mut self,
        mut pos: usize,
        end: usize,
        delimited: bool,
        encoding: Encoding,
        charset: &CharacterSets,
        level: usize,
        mut top: Option<&mut Top<'_>>,
    ) -> Result<usize, JsonError> {
        self.push("{")?;
        let mut first = true;
        let mut last: Option<Tag> = None;
        let mut charset: Cow<'_, CharacterSets> = Cow::Borrowed(charset);
        if level == 0 {
            pos = self.skip_meta(pos, end, encoding)?;
        }
        loop {
            if pos >= end {
                if delimited {
                    return Err(self.short(pos, end));
                }
                break;
            }
            let header = self.header(pos, end, encoding)?;
            if header.tag.group() == 0xFFFE {
                if header.tag == Tag::ITEM_DELIMITER && delimited {
                    pos = header.value;
                    break;
                }
                // A stray item or delimiter: skipped.
                pos = self.value_end(&header, end)?;
                continue;
            }
            if header.tag.element() == 0 || header.tag.group() == 0x0002 {
                pos = self.value_end(&header, end)?;
                continue;
            }
            if let Some(top) = top.as_deref_mut() {
                while let Some(extra) = top.extras.get(top.next).copied() {
                    if extra.0 > header.tag {
                        break;
                    }
                    self.extra(extra, &mut first)?;
                    top.next += 1;
                    last = Some(extra.0);
                }
            }
            // An element whose tag is not above the previous member's (an extra that takes its
            // place, or a data set out of order) is read past but not written: the members
            // must be unique and ascending.
            let skip = last.is_some_and(|last| header.tag <= last);
            let mut bulk_uri = None;
            if !skip {
                last = Some(header.tag);
                if let Some(top) = top.as_deref_mut() {
                    bulk_uri = (top.bulk)(header.tag);
                }
                if header.tag == SPECIFIC_CHARACTER_SET {
                    if let Ok(value_end) = self.value_end(&header, end) {
                        let raw = &self.buf[header.value..value_end];
                        if let Ok(parsed) = CharacterSets::parse(raw) {
                            charset = Cow::Owned(parsed);
                        }
                    }
                }
            }
            let mark = self.out.len();
            pos = self.element(
                &header, end, encoding, &charset, level, bulk_uri, &mut first,
            )?;
            if skip {
                self.out.truncate(mark);
            }
        }
        if let Some(top) = top {
            while let Some(extra) = top.extras.get(top.next).copied() {
                self.extra(extra, &mut first)?;
                top.next += 1;
            }
        }
        self.push("}")?;
        Ok(pos)
    }

    fn key(&mut self, tag: Tag, vr: [u8; 2], first: &mut bool) -> Result<(), JsonError> {
        if !*first {
            self.push(",")?;
        }
        *first = false;
        self.room(24)?;
        let _ = write!(
            self.out,
            "\"{:04X}{:04X}\":{{\"vr\":",
            tag.group(),
            tag.element()
        );
        self.string(&String::from_utf8_lossy(&vr))
    }

    fn extra(&mut self, extra: &(Tag, [u8; 2], String), first: &mut bool) -> Result<(), JsonError> {
        let (tag, vr, uri) = extra;
        self.key(*tag, *vr, first)?;
        self.push(",\"BulkDataURI\":")?;
        self.string(uri)?;
        self.push("}")
    }

    /// Writes one element; returns the offset after it.
    #[allow(clippy::too_many_arguments)]
    fn element(
        &mut self,
        header: &Header,
        end: usize,
        encoding: Encoding,
        charset: &CharacterSets,
        level: usize,
        bulk_uri: Option<String>,
        first: &mut bool,
    ) -> Result<usize, JsonError> {
        let implicit = header.vr.is_none();
        let mut vr = header.vr.unwrap_or_else(|| implicit_vr(header.tag));
        let kind = if header.length == UNDEFINED {
            match (&vr, implicit) {
                (b"OB" | b"OW", _) => Kind::Fragments,
                (b"SQ", false) => Kind::Sequence {
                    items: encoding,
                    end: None,
                },
                (b"UN", false) | (_, true) => {
                    vr = *b"SQ";
                    Kind::Sequence {
                        items: Encoding::ImplicitLittle,
                        end: None,
                    }
                }
                _ => {
                    return Err(JsonError::BadLength {
                        offset: header.offset,
                    })
                }
            }
        } else {
            let value_end = self.value_end(header, end)?;
            if let Some(size) = value_size(vr) {
                if header.length as usize % size != 0 {
                    if !implicit {
                        return Err(JsonError::BadLength {
                            offset: header.offset,
                        });
                    }
                    vr = *b"UN";
                }
            }
            if &vr == b"SQ" {
                Kind::Sequence {
                    items: encoding,
                    end: Some(value_end),
                }
            } else {
                Kind::Value { end: value_end }
            }
        };
        self.key(header.tag, vr, first)?;
        let pos = match kind {
            Kind::Sequence { items, end: None } => {
                self.sequence(header.value, end, true, items, charset, level)?
            }
            Kind::Sequence {
                items,
                end: Some(value_end),
            } => {
                self.sequence(header.value, value_end, false, items, charset, level)?;
                value_end
            }
            Kind::Fragments => {
                let pos = self.skip_fragments(header.value, end, encoding)?;
                if let Some(uri) = bulk_uri {
                    self.push(",\"BulkDataURI\":")?;
                    self.string(&uri)?;
                }
                pos
            }
            Kind::Value { end: value_end } => {
                if let Some(uri) = bulk_uri {
                    self.push(",\"BulkDataURI\":")?;
                    self.string(&uri)?;
                } else {
                    let raw = &self.buf[header.value..value_end];
                    self.value(vr, raw, encoding, charset)?;
                }
                value_end
            }
        };
        self.push("}")?;
        Ok(pos)
    }

    /// Writes the items in `[pos, end)` as `,"Value":[...]` (nothing when there are none).
    /// With `delimited` the sequence ends at a sequence delimiter before `end`.
    fn sequence(
        &mut self,
        mut pos: usize,
        end: usize,
        delimited: bool,
        encoding: Encoding,
        charset: &CharacterSets,
        level: usize,
    ) -> Result<usize, JsonError> {
        let big = encoding.big();
        let mut any = false;
        loop {
            if !delimited && pos >= end {
                break;
            }
            if pos.checked_add(8).is_none_or(|e| e > end) {
                return Err(self.short(pos, end));
            }
            let truncated = || JsonError::Truncated { offset: pos };
            let group = u16_at(self.buf, pos, big).ok_or_else(truncated)?;
            let element = u16_at(self.buf, pos + 2, big).ok_or_else(truncated)?;
            let length = u32_at(self.buf, pos + 4, big).ok_or_else(truncated)?;
            let tag = Tag::new(group, element);
            match tag {
                Tag::ITEM => {
                    if level >= self.limits.depth_max {
                        return Err(JsonError::Depth {
                            max: self.limits.depth_max,
                        });
                    }
                    self.push(if any { "," } else { ",\"Value\":[" })?;
                    any = true;
                    if length == UNDEFINED {
                        pos =
                            self.data_set(pos + 8, end, true, encoding, charset, level + 1, None)?;
                    } else {
                        let item_end = match (pos + 8).checked_add(length as usize) {
                            Some(item_end) if item_end <= end => item_end,
                            _ => return Err(self.short(pos, end)),
                        };
                        self.data_set(
                            pos + 8,
                            item_end,
                            false,
                            encoding,
                            charset,
                            level + 1,
                            None,
                        )?;
                        pos = item_end;
                    }
                }
                Tag::SEQUENCE_DELIMITER if delimited => {
                    pos += 8;
                    break;
                }
                Tag::ITEM_DELIMITER | Tag::SEQUENCE_DELIMITER => {
                    // Stray: skipped (its length should be 0).
                    let header = Header {
                        offset: pos,
                        tag,
                        vr: None,
                        length,
                        value: pos + 8,
                    };
                    pos = self.value_end(&header, end)?;
                }
                _ => return Err(JsonError::UnexpectedTag { offset: pos, tag }),
            }
        }
        if any {
            self.push("]")?;
        }
        Ok(pos)
    }

    /// Skips the items of an undefined-length OB or OW up to and including the sequence
    /// delimiter; returns the offset after it.
    fn skip_fragments(
        &self,
        mut pos: usize,
        end: usize,
        encoding: Encoding,
    ) -> Result<usize, JsonError> {
        let big = encoding.big();
        loop {
            if pos.checked_add(8).is_none_or(|e| e > end) {
                return Err(self.short(pos, end));
            }
            let truncated = || JsonError::Truncated { offset: pos };
            let group = u16_at(self.buf, pos, big).ok_or_else(truncated)?;
            let element = u16_at(self.buf, pos + 2, big).ok_or_else(truncated)?;
            let length = u32_at(self.buf, pos + 4, big).ok_or_else(truncated)?;
            let tag = Tag::new(group, element);
            let header = Header {
                offset: pos,
                tag,
                vr: None,
                length,
                value: pos + 8,
            };
            match tag {
                Tag::ITEM => pos = self.value_end(&header, end)?,
                Tag::SEQUENCE_DELIMITER => return Ok(pos + 8),
                _ => return Err(JsonError::UnexpectedTag { offset: pos, tag }),
            }
        }
    }

    /// Writes `,"Value":[...]` or `,"InlineBinary":...` for a defined-length value (nothing
    /// when it is empty). Fixed-size VRs have a length that is a multiple of their size.
    fn value(
        &mut self,
        vr: [u8; 2],
        raw: &[u8],
        encoding: Encoding,
        charset: &CharacterSets,
    ) -> Result<(), JsonError> {
        if raw.is_empty() {
            return Ok(());
        }
        let big = encoding.big();
        match &vr {
            b"PN" => self.person_names(&charset.decode(vr, raw)),
            b"IS" | b"DS" => {
                let text = charset.decode(vr, raw);
                let integer = &vr == b"IS";
                self.values(
                    text.split('\\').map(|v| v.trim_matches([' ', '\0'])),
                    |w, v| {
                        w.room(json_string_len(v).max(NUMBER_BYTES_MAX))?;
                        let mark = w.out.len();
                        let ok = if integer {
                            write_integer_string(v, w.out)
                        } else {
                            write_decimal_string(v, w.out)
                        };
                        if !ok {
                            w.out.truncate(mark);
                            write_json_string(v, w.out);
                        }
                        Ok(())
                    },
                )
            }
            b"US" => self.numbers(raw, 2, |raw, pos, out| {
                u16_at(raw, pos, big).map(|v| write!(out, "{v}"))
            }),
            b"SS" => self.numbers(raw, 2, |raw, pos, out| {
                u16_at(raw, pos, big).map(|v| write!(out, "{}", v as i16))
            }),
            b"UL" => self.numbers(raw, 4, |raw, pos, out| {
                u32_at(raw, pos, big).map(|v| write!(out, "{v}"))
            }),
            b"SL" => self.numbers(raw, 4, |raw, pos, out| {
                u32_at(raw, pos, big).map(|v| write!(out, "{}", v as i32))
            }),
            b"UV" => self.numbers(raw, 8, |raw, pos, out| {
                u64_at(raw, pos, big).map(|v| {
                    if v <= SAFE_INTEGER_MAX {
                        write!(out, "{v}")
                    } else {
                        write!(out, "\"{v}\"")
                    }
                })
            }),
            b"SV" => self.numbers(raw, 8, |raw, pos, out| {
                u64_at(raw, pos, big).map(|v| {
                    let v = v as i64;
                    if v.unsigned_abs() <= SAFE_INTEGER_MAX {
                        write!(out, "{v}")
                    } else {
                        write!(out, "\"{v}\"")
                    }
                })
            }),
            b"FL" => self.numbers(raw, 4, |raw, pos, out| {
                u32_at(raw, pos, big).map(|v| {
                    let v = f32::from_bits(v);
                    write_float(out, v.is_finite(), f64::from(v), || format!("{v:?}"));
                    Ok(())
                })
            }),
            b"FD" => self.numbers(raw, 8, |raw, pos, out| {
                u64_at(raw, pos, big).map(|v| {
                    let v = f64::from_bits(v);
                    write_float(out, v.is_finite(), v, || format!("{v:?}"));
                    Ok(())
                })
            }),
            b"AT" => self.numbers(raw, 4, |raw, pos, out| {
                let group = u16_at(raw, pos, big)?;
                let element = u16_at(raw, pos + 2, big)?;
                Some(write!(out, "\"{group:04X}{element:04X}\""))
            }),
            _ if is_binary(vr) => {
                if raw.len() > self.limits.inline_binary_bytes_max {
                    return Ok(());
                }
                self.room(raw.len().div_ceil(3) * 4 + 20)?;
                self.out.push_str(",\"InlineBinary\":\"");
                base64::engine::general_purpose::STANDARD.encode_string(raw, self.out);
                self.out.push('"');
                Ok(())
            }
            _ => {
                let text = charset.decode(vr, raw);
                let leading = matches!(&vr, b"AE" | b"CS" | b"DS" | b"IS" | b"LO" | b"SH");
                if matches!(&vr, b"LT" | b"ST" | b"UT" | b"UR") {
                    let value = trim_value(&text, leading);
                    self.values(std::iter::once(value), |w, v| w.string(v))
                } else {
                    let values = text.split('\\').map(|v| trim_value(v, leading));
                    self.values(values, |w, v| w.string(v))
                }
            }
        }
    }

    /// Writes `,"Value":[...]` with `one` for each non-empty value and `null` for each empty
    /// one; nothing when all are empty.
    fn values<'s, I>(
        &mut self,
        values: I,
        mut one: impl FnMut(&mut Self, &'s str) -> Result<(), JsonError>,
    ) -> Result<(), JsonError>
    where
        I: Iterator<Item = &'s str> + Clone,
    {
        if values.clone().all(str::is_empty) {
            return Ok(());
        }
        self.push(",\"Value\":[")?;
        for (i, value) in values.enumerate() {
            if i > 0 {
                self.push(",")?;
            }
            if value.is_empty() {
                self.push("null")?;
            } else {
                one(self, value)?;
            }
        }
        self.push("]")
    }

    /// Writes `,"Value":[...]` for a fixed-size binary VR, one number (or string) per `size`
    /// bytes by `one`, which returns `None` only if the bytes are missing.
    fn numbers(
        &mut self,
        raw: &[u8],
        size: usize,
        one: impl Fn(&[u8], usize, &mut String) -> Option<std::fmt::Result>,
    ) -> Result<(), JsonError> {
        self.push(",\"Value\":[")?;
        let mut pos = 0;
        while pos + size <= raw.len() {
            self.room(NUMBER_BYTES_MAX)?;
            if pos > 0 {
                self.out.push(',');
            }
            if one(raw, pos, self.out).is_none() {
                // Unreachable: the loop bound keeps `pos + size` within `raw`.
                self.out.push_str("null");
            }
            pos += size;
        }
        self.push("]")
    }

    fn person_names(&mut self, text: &str) -> Result<(), JsonError> {
        let names = text.split('\\').map(|v| v.trim_end_matches([' ', '\0']));
        let all_empty = |name: &str| name.split('=').all(str::is_empty);
        if names.clone().all(all_empty) {
            return Ok(());
        }
        self.push(",\"Value\":[")?;
        for (i, name) in names.enumerate() {
            if i > 0 {
                self.push(",")?;
            }
            if all_empty(name) {
                self.push("null")?;
                continue;
            }
            self.push("{")?;
            let mut first = true;
            for (group, label) in
                name.splitn(3, '=')
                    .zip(["\"Alphabetic\":", "\"Ideographic\":", "\"Phonetic\":"])
            {
                if group.is_empty() {
                    continue;
                }
                if !first {
                    self.push(",")?;
                }
                first = false;
                self.push(label)?;
                self.string(group)?;
            }
            self.push("}")?;
        }
        self.push("]")
    }
}

/// Drops trailing spaces and NULs, and with `leading` leading spaces.
fn trim_value(value: &str, leading: bool) -> &str {
    let value = value.trim_end_matches([' ', '\0']);
    if leading {
        value.trim_start_matches(' ')
    } else {
        value
    }
}

/// Writes a finite float as a JSON number (shortest round-trip form, `1` rather than `1.0`),
/// and NaN and the infinities as the strings `"NaN"`, `"Infinity"` and `"-Infinity"`.
fn write_float(out: &mut String, finite: bool, value: f64, debug: impl FnOnce() -> String) {
    if !finite {
        out.push_str(if value.is_nan() {
            "\"NaN\""
        } else if value > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        });
        return;
    }
    // Debug gives the shortest form that reads back to the same value, in JSON's grammar:
    // `0.1`, `1.0`, `1e-7`, `1.5e300`.
    let text = debug();
    out.push_str(text.strip_suffix(".0").unwrap_or(&text));
}

/// Writes an IS value as a JSON number if it is an integer within ±(2^53 − 1); returns
/// whether it did.
fn write_integer_string(value: &str, out: &mut String) -> bool {
    let (negative, digits) = match value.as_bytes().first() {
        Some(b'-') => (true, &value[1..]),
        Some(b'+') => (false, &value[1..]),
        _ => (false, value),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let digits = digits.trim_start_matches('0');
    if digits.len() > 16 {
        return false;
    }
    let magnitude = if digits.is_empty() {
        0
    } else {
        match digits.parse::<u64>() {
            Ok(magnitude) => magnitude,
            Err(_) => return false,
        }
    };
    if magnitude > SAFE_INTEGER_MAX {
        return false;
    }
    if negative && magnitude != 0 {
        out.push('-');
    }
    let _ = write!(out, "{magnitude}");
    true
}

/// Writes a DS value as a JSON number if it is a decimal number (PS3.5 Table 6.2-1) that a
/// double holds without overflow, normalised to JSON's grammar (no `+`, no leading zeros, a
/// digit on both sides of the point); returns whether it did.
fn write_decimal_string(value: &str, out: &mut String) -> bool {
    let bytes = value.as_bytes();
    let mut i = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits_from = |i: usize| {
        bytes[i..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(bytes.len(), |n| i + n)
    };
    let integer_end = digits_from(i);
    let integer = &value[i..integer_end];
    i = integer_end;
    let mut fraction = "";
    if bytes.get(i) == Some(&b'.') {
        let fraction_end = digits_from(i + 1);
        fraction = &value[i + 1..fraction_end];
        i = fraction_end;
    }
    if integer.is_empty() && fraction.is_empty() {
        return false;
    }
    let mut exponent = None;
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let sign_end = if matches!(bytes.get(i + 1), Some(b'+' | b'-')) {
            i + 2
        } else {
            i + 1
        };
        let exponent_end = digits_from(sign_end);
        if exponent_end == sign_end {
            return false;
        }
        exponent = Some(&value[i + 1..exponent_end]);
        i = exponent_end;
    }
    if i != bytes.len() {
        return false;
    }
    let mut number = String::with_capacity(value.len() + 2);
    if negative {
        number.push('-');
    }
    let integer = integer.trim_start_matches('0');
    number.push_str(if integer.is_empty() { "0" } else { integer });
    if !fraction.is_empty() {
        number.push('.');
        number.push_str(fraction);
    }
    if let Some(exponent) = exponent {
        number.push('e');
        number.push_str(exponent);
    }
    if !number.parse::<f64>().is_ok_and(f64::is_finite) {
        return false;
    }
    out.push_str(&number);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EL: Encoding = Encoding::ExplicitLittle;
    const IL: Encoding = Encoding::ImplicitLittle;
    const EB: Encoding = Encoding::ExplicitBig;

    fn tag_bytes(encoding: Encoding, group: u16, element: u16) -> Vec<u8> {
        if encoding.big() {
            [group.to_be_bytes(), element.to_be_bytes()].concat()
        } else {
            [group.to_le_bytes(), element.to_le_bytes()].concat()
        }
    }

    fn u32_bytes(encoding: Encoding, v: u32) -> [u8; 4] {
        if encoding.big() {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    /// One element header with an explicit length (`UNDEFINED` for undefined).
    fn header(encoding: Encoding, group: u16, element: u16, vr: &[u8; 2], length: u32) -> Vec<u8> {
        let mut out = tag_bytes(encoding, group, element);
        match encoding {
            Encoding::ImplicitLittle => out.extend_from_slice(&length.to_le_bytes()),
            _ if has_long_length(*vr) => {
                out.extend_from_slice(vr);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&u32_bytes(encoding, length));
            }
            _ => {
                out.extend_from_slice(vr);
                let short = length as u16;
                out.extend_from_slice(&if encoding.big() {
                    short.to_be_bytes()
                } else {
                    short.to_le_bytes()
                });
            }
        }
        out
    }

    /// One element with its value.
    fn el(encoding: Encoding, group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = header(encoding, group, element, vr, value.len() as u32);
        out.extend_from_slice(value);
        out
    }

    /// An item (or delimiter) header: tag and 4-byte length.
    fn item_header(encoding: Encoding, element: u16, length: u32) -> Vec<u8> {
        let mut out = tag_bytes(encoding, 0xFFFE, element);
        out.extend_from_slice(&u32_bytes(encoding, length));
        out
    }

    fn item(encoding: Encoding, content: &[u8]) -> Vec<u8> {
        [
            item_header(encoding, 0xE000, content.len() as u32),
            content.to_vec(),
        ]
        .concat()
    }

    fn item_undefined(encoding: Encoding, content: &[u8]) -> Vec<u8> {
        [
            item_header(encoding, 0xE000, UNDEFINED),
            content.to_vec(),
            item_header(encoding, 0xE00D, 0),
        ]
        .concat()
    }

    fn no_bulk(_: Tag) -> Option<String> {
        None
    }

    fn run(data: &[u8], encoding: Encoding) -> Result<String, JsonError> {
        run_with(data, encoding, &no_bulk, &[], &JsonLimits::default())
    }

    fn run_with(
        data: &[u8],
        encoding: Encoding,
        bulk: &dyn Fn(Tag) -> Option<String>,
        extra: &[(Tag, [u8; 2], String)],
        limits: &JsonLimits,
    ) -> Result<String, JsonError> {
        let mut out = String::new();
        write_data_set_json(data, encoding, bulk, extra, limits, &mut out)?;
        assert!(valid_json(&out), "invalid JSON: {out}");
        Ok(out)
    }

    fn json(data: &[u8], encoding: Encoding) -> String {
        match run(data, encoding) {
            Ok(out) => out,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn strings_with_multiple_values_and_padding() {
        let data = [
            el(EL, 0x0008, 0x0000, b"UL", &4u32.to_le_bytes()),
            el(EL, 0x0008, 0x0008, b"CS", b"ORIGINAL\\PRIMARY\\\\AXIAL "),
            el(EL, 0x0008, 0x0018, b"UI", b"1.2.3\0"),
            el(EL, 0x0008, 0x1030, b"LO", b" Head \\ Neck"),
            el(EL, 0x0010, 0x4000, b"LT", b" a\\b \"q\"\n  "),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"00080008":{"vr":"CS","Value":["ORIGINAL","PRIMARY",null,"AXIAL"]},"00080018":{"vr":"UI","Value":["1.2.3"]},"00081030":{"vr":"LO","Value":["Head","Neck"]},"00104000":{"vr":"LT","Value":[" a\\b \"q\"\n"]}}"#
        );
    }

    #[test]
    fn empty_values_have_only_the_vr() {
        let data = [
            el(EL, 0x0008, 0x0020, b"DA", b""),
            el(EL, 0x0008, 0x0050, b"SH", b"  "),
            el(EL, 0x0010, 0x0010, b"PN", b""),
            el(EL, 0x0018, 0x0050, b"DS", b""),
            el(EL, 0x0028, 0x0010, b"US", b""),
            el(EL, 0x0040, 0x0275, b"SQ", b""),
            el(EL, 0x0042, 0x0011, b"OB", b""),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"00080020":{"vr":"DA"},"00080050":{"vr":"SH"},"00100010":{"vr":"PN"},"00180050":{"vr":"DS"},"00280010":{"vr":"US"},"00400275":{"vr":"SQ"},"00420011":{"vr":"OB"}}"#
        );
    }

    #[test]
    fn person_name_groups() {
        let data = [
            el(EL, 0x0008, 0x0090, b"PN", b"^Bob^^Dr.\\\\A=B=C "),
            el(EL, 0x0010, 0x0010, b"PN", b"Yamada^Tarou=YT=yt"),
            el(EL, 0x0010, 0x1001, b"PN", b"=Only^Ideo"),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"00080090":{"vr":"PN","Value":[{"Alphabetic":"^Bob^^Dr."},null,{"Alphabetic":"A","Ideographic":"B","Phonetic":"C"}]},"00100010":{"vr":"PN","Value":[{"Alphabetic":"Yamada^Tarou","Ideographic":"YT","Phonetic":"yt"}]},"00101001":{"vr":"PN","Value":[{"Ideographic":"Only^Ideo"}]}}"#
        );
    }

    #[test]
    fn integer_and_decimal_strings_are_numbers() {
        let data = [
            el(
                EL,
                0x0018,
                0x0050,
                b"DS",
                b" +1.50\\-.5\\2.\\1E+05\\007\\-0 ",
            ),
            el(EL, 0x0018, 0x0088, b"DS", b"abc\\1e999\\NaN\\1.5e-3"),
            el(EL, 0x0020, 0x0013, b"IS", b" +0042\\-7\\\\1.0 "),
            el(
                EL,
                0x0020,
                0x0015,
                b"IS",
                b"99999999999999999999\\-9007199254740991",
            ),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"00180050":{"vr":"DS","Value":[1.50,-0.5,2,1e+05,7,-0]},"00180088":{"vr":"DS","Value":["abc","1e999","NaN",1.5e-3]},"00200013":{"vr":"IS","Value":[42,-7,null,"1.0"]},"00200015":{"vr":"IS","Value":["99999999999999999999",-9007199254740991]}}"#
        );
    }

    #[test]
    fn binary_numbers_and_attribute_tags() {
        let floats: Vec<u8> = [1.5f32, 0.1, f32::NAN, f32::NEG_INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let doubles: Vec<u8> = [-2.0f64, 1e300, f64::INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let very_long: Vec<u8> = [(1u64 << 53) - 1, 1 << 53, u64::MAX]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let signed_very_long: Vec<u8> = [-1i64, i64::MIN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let data = [
            el(EL, 0x0018, 0x1310, b"US", &[0, 2, 0xFF, 0xFF]),
            el(
                EL,
                0x0020,
                0x5000,
                b"AT",
                &[0x10, 0, 0x10, 0, 0xE0, 0x7F, 0x10, 0],
            ),
            el(EL, 0x0028, 0x0106, b"SS", &[0xFE, 0xFF]),
            el(EL, 0x0028, 0x1052, b"UL", &u32::MAX.to_le_bytes()),
            el(EL, 0x0028, 0x1053, b"SL", &(-5i32).to_le_bytes()),
            el(EL, 0x0040, 0x9224, b"FL", &floats),
            el(EL, 0x0040, 0x9225, b"FD", &doubles),
            el(EL, 0x0072, 0x0082, b"UV", &very_long),
            el(EL, 0x0072, 0x0083, b"SV", &signed_very_long),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"00181310":{"vr":"US","Value":[512,65535]},"00205000":{"vr":"AT","Value":["00100010","7FE00010"]},"00280106":{"vr":"SS","Value":[-2]},"00281052":{"vr":"UL","Value":[4294967295]},"00281053":{"vr":"SL","Value":[-5]},"00409224":{"vr":"FL","Value":[1.5,0.1,"NaN","-Infinity"]},"00409225":{"vr":"FD","Value":[-2,1e300,"Infinity"]},"00720082":{"vr":"UV","Value":[9007199254740991,"9007199254740992","18446744073709551615"]},"00720083":{"vr":"SV","Value":[-1,"-9223372036854775808"]}}"#
        );
    }

    #[test]
    fn bad_binary_lengths() {
        let data = el(EL, 0x0028, 0x0010, b"US", &[1, 2, 3]);
        assert_eq!(run(&data, EL), Err(JsonError::BadLength { offset: 0 }));
        let data = el(EL, 0x0040, 0x9225, b"FD", &[0; 4]);
        assert_eq!(run(&data, EL), Err(JsonError::BadLength { offset: 0 }));
    }

    #[test]
    fn inline_binary_up_to_the_limit() {
        let data = [
            el(EL, 0x0009, 0x1001, b"UN", b"abc\xff"),
            el(EL, 0x0042, 0x0011, b"OB", &[0; 6]),
            el(EL, 0x5400, 0x1010, b"OW", &[1, 2, 3, 4, 5, 6, 7, 8]),
        ]
        .concat();
        let limits = JsonLimits {
            inline_binary_bytes_max: 6,
            ..JsonLimits::default()
        };
        assert_eq!(
            run_with(&data, EL, &no_bulk, &[], &limits),
            Ok(r#"{"00091001":{"vr":"UN","InlineBinary":"YWJj/w=="},"00420011":{"vr":"OB","InlineBinary":"AAAAAAAA"},"54001010":{"vr":"OW"}}"#.to_string())
        );
    }

    #[test]
    fn bulk_data_uris_and_extra_elements_merge_in_tag_order() {
        let data = [
            el(EL, 0x0008, 0x0016, b"UI", b"1.2\0"),
            el(EL, 0x0042, 0x0011, b"OB", b""),
            el(EL, 0x5400, 0x1010, b"OW", b""),
            el(EL, 0x6000, 0x3000, b"OW", &[1, 2]),
        ]
        .concat();
        let bulk = |tag: Tag| -> Option<String> {
            (tag == Tag::new(0x0042, 0x0011) || tag == Tag::new(0x6000, 0x3000))
                .then(|| format!("bulk/{:08X}", tag.0))
        };
        let extra = vec![
            (Tag::PIXEL_DATA, *b"OW", "frames/1".to_string()),
            (Tag::new(0x0040, 0x0000), *b"UL", "x\"y".to_string()),
            (Tag::new(0x5400, 0x1010), *b"OB", "replaced".to_string()),
            (Tag::PIXEL_DATA, *b"OB", "duplicate".to_string()),
            (Tag::new(0x0002, 0x0001), *b"OB", "first".to_string()),
        ];
        assert_eq!(
            run_with(&data, EL, &bulk, &extra, &JsonLimits::default()),
            Ok(r#"{"00020001":{"vr":"OB","BulkDataURI":"first"},"00080016":{"vr":"UI","Value":["1.2"]},"00400000":{"vr":"UL","BulkDataURI":"x\"y"},"00420011":{"vr":"OB","BulkDataURI":"bulk/00420011"},"54001010":{"vr":"OB","BulkDataURI":"replaced"},"60003000":{"vr":"OW","BulkDataURI":"bulk/60003000"},"7FE00010":{"vr":"OW","BulkDataURI":"frames/1"}}"#.to_string())
        );
        // With an empty data set, the extras alone.
        assert_eq!(
            run_with(&[], EL, &bulk, &extra[..1], &JsonLimits::default()),
            Ok(r#"{"7FE00010":{"vr":"OW","BulkDataURI":"frames/1"}}"#.to_string())
        );
    }

    #[test]
    fn nested_sequences_defined_and_undefined() {
        let inner_item = el(EL, 0x0008, 0x0100, b"SH", b"T-1234");
        let inner = [
            header(EL, 0x0040, 0xA730, b"SQ", UNDEFINED),
            item_undefined(EL, &inner_item),
            item(EL, b""),
            item_header(EL, 0xE0DD, 0),
        ]
        .concat();
        let outer_item = [el(EL, 0x0008, 0x0104, b"LO", b"Meaning"), inner].concat();
        let outer_value = [item(EL, &outer_item), item_undefined(EL, b"")].concat();
        let data = [
            el(EL, 0x0008, 0x0005, b"CS", b"ISO_IR 100"),
            el(EL, 0x0040, 0xA043, b"SQ", &outer_value),
            el(EL, 0x0040, 0xA050, b"CS", b"YES "),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"00080005":{"vr":"CS","Value":["ISO_IR 100"]},"0040A043":{"vr":"SQ","Value":[{"00080104":{"vr":"LO","Value":["Meaning"]},"0040A730":{"vr":"SQ","Value":[{"00080100":{"vr":"SH","Value":["T-1234"]}},{}]}},{}]},"0040A050":{"vr":"CS","Value":["YES"]}}"#
        );
    }

    #[test]
    fn sequence_item_beyond_its_sequence() {
        // The item claims 16 bytes inside a sequence of 8 + 4.
        let value = [item_header(EL, 0xE000, 16), vec![0; 4]].concat();
        let data = [el(EL, 0x0040, 0xA043, b"SQ", &value), vec![0; 16]].concat();
        assert_eq!(run(&data, EL), Err(JsonError::BadLength { offset: 12 }));
    }

    #[test]
    fn implicit_vr_uses_the_dictionary() {
        let item_content = el(IL, 0x0008, 0x1155, b"UI", b"1.2.3\0");
        let data = [
            el(IL, 0x0008, 0x0000, b"UL", &8u32.to_le_bytes()),
            el(IL, 0x0008, 0x0060, b"CS", b"CT"),
            el(IL, 0x0008, 0x1140, b"SQ", &item(IL, &item_content)),
            el(IL, 0x0009, 0x0010, b"LO", b"ACME"),
            el(IL, 0x0009, 0x1001, b"UN", b"\x01\x02"),
            el(IL, 0x0010, 0x0010, b"PN", b"Doe^John"),
            el(IL, 0x0018, 0x0050, b"DS", b"2.5 "),
            el(IL, 0x0028, 0x0010, b"US", &512u16.to_le_bytes()),
            // US with an odd length: the dictionary guessed wrong, UN instead.
            el(IL, 0x0028, 0x0011, b"US", &[1, 2, 3]),
            el(IL, 0x0028, 0x1050, b"DS", b"40\\400"),
        ]
        .concat();
        assert_eq!(
            json(&data, IL),
            r#"{"00080060":{"vr":"CS","Value":["CT"]},"00081140":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3"]}}]},"00090010":{"vr":"LO","Value":["ACME"]},"00091001":{"vr":"UN","InlineBinary":"AQI="},"00100010":{"vr":"PN","Value":[{"Alphabetic":"Doe^John"}]},"00180050":{"vr":"DS","Value":[2.5]},"00280010":{"vr":"US","Value":[512]},"00280011":{"vr":"UN","InlineBinary":"AQID"},"00281050":{"vr":"DS","Value":[40,400]}}"#
        );
    }

    #[test]
    fn implicit_undefined_length_is_a_sequence() {
        // A private element of undefined length in Implicit VR: a sequence of implicit items.
        let content = el(IL, 0x0008, 0x0100, b"SH", b"X1");
        let data = [
            header(IL, 0x0009, 0x1002, b"UN", UNDEFINED),
            item_undefined(IL, &content),
            item_header(IL, 0xE0DD, 0),
            el(IL, 0x0010, 0x0020, b"LO", b"ID"),
        ]
        .concat();
        assert_eq!(
            json(&data, IL),
            r#"{"00091002":{"vr":"SQ","Value":[{"00080100":{"vr":"SH","Value":["X1"]}}]},"00100020":{"vr":"LO","Value":["ID"]}}"#
        );
    }

    #[test]
    fn explicit_undefined_length_un_holds_implicit_items() {
        // PS3.5 6.2.2: in Explicit VR Big Endian too, the items are Implicit VR LE.
        let content = el(IL, 0x0008, 0x0100, b"SH", b"X1");
        let data = [
            header(EB, 0x0008, 0x1140, b"UN", UNDEFINED),
            item_undefined(IL, &content),
            item_header(IL, 0xE0DD, 0),
            el(EB, 0x0028, 0x0010, b"US", &512u16.to_be_bytes()),
        ]
        .concat();
        assert_eq!(
            json(&data, EB),
            r#"{"00081140":{"vr":"SQ","Value":[{"00080100":{"vr":"SH","Value":["X1"]}}]},"00280010":{"vr":"US","Value":[512]}}"#
        );
    }

    #[test]
    fn big_endian_numbers() {
        let item_content = el(EB, 0x0018, 0x9219, b"SS", &(-3i16).to_be_bytes());
        let data = [
            el(EB, 0x0018, 0x9346, b"SQ", &item(EB, &item_content)),
            el(EB, 0x0020, 0x5000, b"AT", &[0x00, 0x10, 0x00, 0x20]),
            el(EB, 0x0028, 0x0010, b"US", &[0x02, 0x00, 0x00, 0x01]),
            el(EB, 0x0028, 0x1052, b"FD", &(-1024.5f64).to_be_bytes()),
            el(EB, 0x0028, 0x1053, b"FL", &0.25f32.to_be_bytes()),
            el(EB, 0x0028, 0x1054, b"UL", &70000u32.to_be_bytes()),
            el(EB, 0x0028, 0x1101, b"OW", &[0x12, 0x34]),
        ]
        .concat();
        assert_eq!(
            json(&data, EB),
            r#"{"00189346":{"vr":"SQ","Value":[{"00189219":{"vr":"SS","Value":[-3]}}]},"00205000":{"vr":"AT","Value":["00100020"]},"00280010":{"vr":"US","Value":[512,1]},"00281052":{"vr":"FD","Value":[-1024.5]},"00281053":{"vr":"FL","Value":[0.25]},"00281054":{"vr":"UL","Value":[70000]},"00281101":{"vr":"OW","InlineBinary":"EjQ="}}"#
        );
    }

    #[test]
    fn file_meta_group_is_skipped() {
        let meta = [
            el(EL, 0x0002, 0x0000, b"UL", &10u32.to_le_bytes()),
            el(EL, 0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2\0"),
        ]
        .concat();
        let data = [meta.clone(), el(IL, 0x0008, 0x0060, b"CS", b"MR")].concat();
        assert_eq!(
            json(&data, IL),
            r#"{"00080060":{"vr":"CS","Value":["MR"]}}"#
        );
        let data = [meta, el(EB, 0x0008, 0x0060, b"CS", b"MR")].concat();
        assert_eq!(
            json(&data, EB),
            r#"{"00080060":{"vr":"CS","Value":["MR"]}}"#
        );
    }

    #[test]
    fn latin1_name() {
        let data = [
            el(EL, 0x0008, 0x0005, b"CS", b"ISO_IR 100"),
            el(EL, 0x0010, 0x0010, b"PN", b"Buc^J\xe9r\xf4me"),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"00080005":{"vr":"CS","Value":["ISO_IR 100"]},"00100010":{"vr":"PN","Value":[{"Alphabetic":"Buc^Jérôme"}]}}"#
        );
    }

    // PS3.5 Example H.3-1: value 1 empty (ISO-IR 6), value 2 ISO 2022 IR 87.
    const H3_1: &[u8] =
        b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";

    #[test]
    fn japanese_iso_2022_ir_87_name() {
        let data = [
            el(EL, 0x0008, 0x0005, b"CS", b"\\ISO 2022 IR 87 "),
            el(EL, 0x0010, 0x0010, b"PN", &[H3_1, b" "].concat()),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"00080005":{"vr":"CS","Value":[null,"ISO 2022 IR 87"]},"00100010":{"vr":"PN","Value":[{"Alphabetic":"Yamada^Tarou","Ideographic":"山田^太郎","Phonetic":"やまだ^たろう"}]}}"#
        );
    }

    #[test]
    fn item_redefines_the_character_set() {
        let item_content = [
            el(EL, 0x0008, 0x0005, b"CS", b"ISO_IR 192"),
            el(
                EL,
                0x0010,
                0x0010,
                b"PN",
                "Wang^XiaoDong=王^小东".as_bytes(),
            ),
        ]
        .concat();
        let data = [
            el(EL, 0x0008, 0x0005, b"CS", b"ISO_IR 100"),
            el(EL, 0x0008, 0x1110, b"SQ", &item(EL, &item_content)),
            el(EL, 0x0010, 0x0010, b"PN", b"J\xe9"),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"00080005":{"vr":"CS","Value":["ISO_IR 100"]},"00081110":{"vr":"SQ","Value":[{"00080005":{"vr":"CS","Value":["ISO_IR 192"]},"00100010":{"vr":"PN","Value":[{"Alphabetic":"Wang^XiaoDong","Ideographic":"王^小东"}]}}]},"00100010":{"vr":"PN","Value":[{"Alphabetic":"Jé"}]}}"#
        );
    }

    #[test]
    fn default_repertoire_without_specific_character_set() {
        // Bytes >= 0x80 without (0008,0005) still decode (as ISO 8859-1) to valid JSON.
        let data = el(EL, 0x0010, 0x0010, b"PN", b"A\xe9\x01");
        assert_eq!(
            json(&data, EL),
            r#"{"00100010":{"vr":"PN","Value":[{"Alphabetic":"Aé\u0001"}]}}"#
        );
    }

    #[test]
    fn truncated_data_sets() {
        let whole = [
            el(EL, 0x0008, 0x0060, b"CS", b"CT"),
            el(EL, 0x0010, 0x0010, b"PN", b"Doe^John"),
        ]
        .concat();
        // Ending after a complete element is fine.
        assert_eq!(
            json(&whole[..10], EL),
            r#"{"00080060":{"vr":"CS","Value":["CT"]}}"#
        );
        for cut in [11, 17, 18, 25] {
            assert_eq!(
                run(&whole[..cut], EL),
                Err(JsonError::Truncated { offset: 10 }),
                "cut at {cut}"
            );
        }
        // An undefined-length sequence without its delimiter.
        let data = [
            header(EL, 0x0040, 0xA043, b"SQ", UNDEFINED),
            item(EL, &el(EL, 0x0008, 0x0100, b"SH", b"X1")),
        ]
        .concat();
        assert_eq!(run(&data, EL), Err(JsonError::Truncated { offset: 30 }));
        // An undefined-length item without its delimiter.
        let data = [
            header(EL, 0x0040, 0xA043, b"SQ", UNDEFINED),
            item_header(EL, 0xE000, UNDEFINED),
        ]
        .concat();
        assert_eq!(run(&data, EL), Err(JsonError::Truncated { offset: 20 }));
    }

    #[test]
    fn huge_declared_lengths() {
        let data = [
            header(EL, 0x0010, 0x4000, b"UT", 0xFFFF_FFF0),
            b"abcd".to_vec(),
        ]
        .concat();
        assert_eq!(run(&data, EL), Err(JsonError::Truncated { offset: 0 }));
        let data = [
            header(IL, 0x0010, 0x0010, b"PN", 0x7FFF_FFFF),
            b"ab".to_vec(),
        ]
        .concat();
        assert_eq!(run(&data, IL), Err(JsonError::Truncated { offset: 0 }));
        // Undefined length where it is not allowed.
        let data = [header(EL, 0x0010, 0x4000, b"UT", UNDEFINED), vec![0; 8]].concat();
        assert_eq!(run(&data, EL), Err(JsonError::BadLength { offset: 0 }));
        // An item of huge length.
        let data = [
            header(EL, 0x0040, 0xA043, b"SQ", UNDEFINED),
            item_header(EL, 0xE000, 0xFFFF_FFF0),
            vec![0; 8],
        ]
        .concat();
        assert_eq!(run(&data, EL), Err(JsonError::Truncated { offset: 12 }));
    }

    #[test]
    fn unknown_vr_and_unexpected_tags() {
        let data = el(EL, 0x0010, 0x0010, b"ZZ", b"ab");
        assert_eq!(
            run(&data, EL),
            Err(JsonError::UnknownVr {
                offset: 0,
                vr: *b"ZZ"
            })
        );
        let data = el(
            EL,
            0x0040,
            0xA043,
            b"SQ",
            &el(EL, 0x0008, 0x0100, b"SH", b"X1"),
        );
        assert_eq!(
            run(&data, EL),
            Err(JsonError::UnexpectedTag {
                offset: 12,
                tag: Tag::new(0x0008, 0x0100)
            })
        );
    }

    #[test]
    fn depth_limit() {
        // Three nested sequences: items at depths 1, 2 and 3.
        let mut data = el(EL, 0x0008, 0x0100, b"SH", b"X1");
        for _ in 0..3 {
            data = el(EL, 0x0040, 0xA730, b"SQ", &item(EL, &data));
        }
        let limits = |depth_max| JsonLimits {
            depth_max,
            ..JsonLimits::default()
        };
        assert!(run_with(&data, EL, &no_bulk, &[], &limits(3)).is_ok());
        assert_eq!(
            run_with(&data, EL, &no_bulk, &[], &limits(2)),
            Err(JsonError::Depth { max: 2 })
        );
    }

    #[test]
    fn output_limit() {
        let data = el(EL, 0x0010, 0x4000, b"LT", &[b'a'; 100]);
        let out = json(&data, EL);
        let limits = |output_bytes_max| JsonLimits {
            output_bytes_max,
            ..JsonLimits::default()
        };
        assert!(run_with(&data, EL, &no_bulk, &[], &limits(out.len())).is_ok());
        assert_eq!(
            run_with(&data, EL, &no_bulk, &[], &limits(out.len() - 1)),
            Err(JsonError::OutputLimit { max: out.len() - 1 })
        );
        // The limit counts only what is appended.
        let mut prefix = "x".repeat(1000);
        write_data_set_json(&data, EL, &no_bulk, &[], &limits(out.len()), &mut prefix).unwrap();
    }

    #[test]
    fn encapsulated_fragments_are_skipped() {
        let data = [
            header(EL, 0x7FE0, 0x0010, b"OB", UNDEFINED),
            item(EL, b""),
            item(EL, &[1, 2, 3, 4]),
            item_header(EL, 0xE0DD, 0),
            el(EL, 0xFFFA, 0xFFFA, b"SQ", b""),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"7FE00010":{"vr":"OB"},"FFFAFFFA":{"vr":"SQ"}}"#
        );
        let bulk = |_: Tag| Some("px".to_string());
        assert_eq!(
            run_with(&data, EL, &bulk, &[], &JsonLimits::default()),
            Ok(r#"{"7FE00010":{"vr":"OB","BulkDataURI":"px"},"FFFAFFFA":{"vr":"SQ"}}"#.to_string())
        );
    }

    #[test]
    fn out_of_order_and_repeated_elements_are_left_out() {
        let data = [
            el(EL, 0x0010, 0x0020, b"LO", b"ID"),
            el(EL, 0x0010, 0x0010, b"PN", b"Doe"),
            el(EL, 0x0010, 0x0020, b"LO", b"ID2"),
            el(EL, 0x0010, 0x0030, b"DA", b"19700101"),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"00100020":{"vr":"LO","Value":["ID"]},"00100030":{"vr":"DA","Value":["19700101"]}}"#
        );
    }

    #[test]
    fn stray_delimiters_are_skipped() {
        let data = [
            item_header(EL, 0xE00D, 0),
            el(EL, 0x0008, 0x0060, b"CS", b"CT"),
            item_header(EL, 0xE0DD, 0),
        ]
        .concat();
        assert_eq!(
            json(&data, EL),
            r#"{"00080060":{"vr":"CS","Value":["CT"]}}"#
        );
    }

    #[test]
    fn transfer_syntaxes() {
        use Encoding::*;
        assert_eq!(
            Encoding::of_transfer_syntax(ts::IMPLICIT_VR_LE, false),
            Some(ImplicitLittle)
        );
        assert_eq!(
            Encoding::of_transfer_syntax("1.2.840.10008.1.2\0", false),
            Some(ImplicitLittle)
        );
        assert_eq!(
            Encoding::of_transfer_syntax(ts::EXPLICIT_VR_BE, false),
            Some(ExplicitBig)
        );
        assert_eq!(
            Encoding::of_transfer_syntax(ts::EXPLICIT_VR_LE, false),
            Some(ExplicitLittle)
        );
        assert_eq!(
            Encoding::of_transfer_syntax("1.2.840.10008.1.2.4.50", false),
            Some(ExplicitLittle)
        );
        assert_eq!(
            Encoding::of_transfer_syntax(ts::DEFLATED_EXPLICIT_VR_LE, false),
            None
        );
        assert_eq!(Encoding::of_transfer_syntax(ts::JPIP_DEFLATE, false), None);
        assert_eq!(
            Encoding::of_transfer_syntax(ts::DEFLATED_EXPLICIT_VR_LE, true),
            Some(ExplicitLittle)
        );
    }

    #[test]
    fn json_string_escapes() {
        let mut out = String::new();
        write_json_string("a\"b\\c\n\t\u{1}\u{1f}é\u{7f}", &mut out);
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\t\\u0001\\u001fé\u{7f}\"");
        assert_eq!(json_string_len("a\"b\\c\n\t\u{1}\u{1f}é\u{7f}"), out.len());
        assert!(valid_json(&out));
    }

    /// A strict RFC 8259 checker (objects must not repeat a key).
    fn valid_json(text: &str) -> bool {
        struct Parser<'a> {
            bytes: &'a [u8],
            pos: usize,
        }
        impl Parser<'_> {
            fn peek(&self) -> Option<u8> {
                self.bytes.get(self.pos).copied()
            }
            fn ws(&mut self) {
                while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                    self.pos += 1;
                }
            }
            fn eat(&mut self, b: u8) -> bool {
                let ok = self.peek() == Some(b);
                if ok {
                    self.pos += 1;
                }
                ok
            }
            fn literal(&mut self, word: &str) -> bool {
                let ok = self.bytes[self.pos..].starts_with(word.as_bytes());
                if ok {
                    self.pos += word.len();
                }
                ok
            }
            fn digits(&mut self) -> usize {
                let from = self.pos;
                while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    self.pos += 1;
                }
                self.pos - from
            }
            fn number(&mut self) -> bool {
                self.eat(b'-');
                if !self.eat(b'0') && self.digits() == 0 {
                    return false;
                }
                if self.eat(b'.') && self.digits() == 0 {
                    return false;
                }
                if matches!(self.peek(), Some(b'e' | b'E')) {
                    self.pos += 1;
                    if !self.eat(b'+') {
                        self.eat(b'-');
                    }
                    if self.digits() == 0 {
                        return false;
                    }
                }
                true
            }
            fn string(&mut self) -> Option<String> {
                let from = self.pos;
                if !self.eat(b'"') {
                    return None;
                }
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.pos += 1;
                            return Some(
                                String::from_utf8_lossy(&self.bytes[from..self.pos]).into_owned(),
                            );
                        }
                        b'\\' => {
                            self.pos += 1;
                            match self.peek()? {
                                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                                    self.pos += 1
                                }
                                b'u' => {
                                    let hex = self.bytes.get(self.pos + 1..self.pos + 5)?;
                                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                                        return None;
                                    }
                                    self.pos += 5;
                                }
                                _ => return None,
                            }
                        }
                        0..=0x1F => return None,
                        _ => self.pos += 1,
                    }
                }
            }
            fn value(&mut self) -> bool {
                self.ws();
                let ok = match self.peek() {
                    Some(b'{') => {
                        self.pos += 1;
                        self.ws();
                        if self.eat(b'}') {
                            true
                        } else {
                            let mut keys = std::collections::HashSet::new();
                            loop {
                                self.ws();
                                let Some(key) = self.string() else {
                                    return false;
                                };
                                if !keys.insert(key) {
                                    return false;
                                }
                                self.ws();
                                if !self.eat(b':') || !self.value() {
                                    return false;
                                }
                                self.ws();
                                if self.eat(b'}') {
                                    break true;
                                }
                                if !self.eat(b',') {
                                    return false;
                                }
                            }
                        }
                    }
                    Some(b'[') => {
                        self.pos += 1;
                        self.ws();
                        if self.eat(b']') {
                            true
                        } else {
                            loop {
                                if !self.value() {
                                    return false;
                                }
                                self.ws();
                                if self.eat(b']') {
                                    break true;
                                }
                                if !self.eat(b',') {
                                    return false;
                                }
                            }
                        }
                    }
                    Some(b'"') => self.string().is_some(),
                    Some(b't') => self.literal("true"),
                    Some(b'f') => self.literal("false"),
                    Some(b'n') => self.literal("null"),
                    Some(b'-' | b'0'..=b'9') => self.number(),
                    _ => false,
                };
                self.ws();
                ok
            }
        }
        let mut parser = Parser {
            bytes: text.as_bytes(),
            pos: 0,
        };
        parser.value() && parser.pos == parser.bytes.len()
    }

    #[test]
    fn validity_checker_rejects_invalid_json() {
        for bad in [
            "",
            "{",
            "{\"a\":1,}",
            "[1,]",
            "01",
            "1.",
            "-",
            "\"\u{1}\"",
            "{\"a\":1,\"a\":2}",
            "NaN",
            "[1 2]",
            "\"\\x\"",
        ] {
            assert!(!valid_json(bad), "{bad:?}");
        }
        for good in [
            "{}",
            "[]",
            "-0.5e+3",
            "{\"a\":[null,true,false,\"\\u00e9\"]}",
        ] {
            assert!(valid_json(good), "{good:?}");
        }
    }

    const VRS: [&[u8; 2]; 33] = [
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US", b"OB", b"OD", b"OF", b"OL", b"OV",
        b"OW", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
    ];

    /// A structurally valid data set element, for the fuzzing to reach sequences, character
    /// sets and every VR rather than failing at the first header.
    #[derive(Debug, Clone)]
    enum Node {
        Leaf {
            tag: (u16, u16),
            vr: usize,
            value: Vec<u8>,
        },
        /// `kind` 0: defined-length SQ, 1: undefined-length SQ, 2: undefined-length UN.
        Sequence {
            tag: (u16, u16),
            kind: u8,
            items: Vec<(bool, Vec<Node>)>,
        },
    }

    /// Also sets `implicit` when Implicit VR content (whose VRs the dictionary decides) is written.
    fn encode(nodes: &[Node], encoding: Encoding, implicit: &mut bool) -> Vec<u8> {
        *implicit |= encoding == IL;
        let mut out = Vec::new();
        for node in nodes {
            match node {
                Node::Leaf { tag, vr, value } => {
                    let vr = VRS[*vr];
                    let mut value = value.clone();
                    if encoding != IL {
                        let size = value_size(*vr).unwrap_or(1);
                        value.truncate(value.len() / size * size);
                    }
                    out.extend(el(encoding, tag.0, tag.1, vr, &value));
                }
                Node::Sequence { tag, kind, items } => {
                    let (vr, items_encoding) = match kind {
                        0 | 1 => (b"SQ", encoding),
                        _ => (b"UN", IL),
                    };
                    let mut value = Vec::new();
                    for (undefined, content) in items {
                        let content = encode(content, items_encoding, implicit);
                        value.extend(if *undefined {
                            item_undefined(items_encoding, &content)
                        } else {
                            item(items_encoding, &content)
                        });
                    }
                    if *kind == 0 {
                        out.extend(el(encoding, tag.0, tag.1, vr, &value));
                    } else {
                        out.extend(header(encoding, tag.0, tag.1, vr, UNDEFINED));
                        out.extend(value);
                        out.extend(item_header(items_encoding, 0xE0DD, 0));
                    }
                }
            }
        }
        out
    }

    fn nodes() -> impl Strategy<Value = Vec<Node>> {
        let tag = prop_oneof![
            Just((0x0008u16, 0x0005u16)),
            Just((0x0010, 0x0010)),
            Just((0x0028, 0x0010)),
            Just((0x0009, 0x0010)),
            Just((0x7FE0, 0x0010)),
            (0u16..0xFFFE, any::<u16>()),
        ];
        let charset = prop_oneof![
            Just(b"ISO_IR 100".to_vec()),
            Just(b"\\ISO 2022 IR 87".to_vec()),
            Just(b"ISO_IR 192".to_vec()),
            Just(b"ISO 2022 IR 13\\ISO 2022 IR 87".to_vec()),
        ];
        let leaf = prop_oneof![
            (
                tag.clone(),
                0..VRS.len(),
                proptest::collection::vec(any::<u8>(), 0..24)
            )
                .prop_map(|(tag, vr, value)| Node::Leaf { tag, vr, value }),
            charset.prop_map(|value| Node::Leaf {
                tag: (0x0008, 0x0005),
                vr: 3,
                value
            }),
            (
                prop_oneof![
                    Just((0x0008u16, 0x0090u16)),
                    Just((0x0010, 0x0010)),
                    Just((0x0010, 0x1001)),
                ],
                proptest::collection::vec(any::<u8>(), 0..24)
            )
                .prop_map(|(tag, value)| Node::Leaf { tag, vr: 12, value }),
        ];
        let node = leaf.prop_recursive(4, 48, 4, move |inner| {
            (
                prop_oneof![Just((0x0008u16, 0x1140u16)), tag.clone()],
                0u8..3,
                proptest::collection::vec(
                    (any::<bool>(), proptest::collection::vec(inner, 0..4)),
                    0..3,
                ),
            )
                .prop_map(|(tag, kind, items)| Node::Sequence { tag, kind, items })
        });
        proptest::collection::vec(node, 0..8)
    }

    /// Encoded nodes, then maybe one byte changed and maybe cut short.
    fn data_set_strategy(encoding: Encoding) -> impl Strategy<Value = (Vec<u8>, bool)> {
        (
            nodes(),
            proptest::option::of((any::<proptest::sample::Index>(), any::<u8>())),
            proptest::option::of(any::<proptest::sample::Index>()),
        )
            .prop_map(move |(nodes, flip, cut)| {
                let mut implicit = false;
                let mut data = encode(&nodes, encoding, &mut implicit);
                let intact = flip.is_none() && cut.is_none() && !implicit;
                if let (Some((at, byte)), false) = (flip, data.is_empty()) {
                    let at = at.index(data.len());
                    data[at] = byte;
                }
                if let Some(cut) = cut {
                    let cut = cut.index(data.len() + 1);
                    data.truncate(cut);
                }
                (data, intact)
            })
    }

    /// Writes `data`; when that succeeds, checks the output is valid JSON. Returns whether it
    /// succeeded.
    fn check(data: &[u8], encoding: Encoding) -> bool {
        let limits = JsonLimits {
            depth_max: 8,
            output_bytes_max: 1 << 20,
            inline_binary_bytes_max: 16,
        };
        let extra = [(Tag::PIXEL_DATA, *b"OW", "p".to_string())];
        let bulk = |tag: Tag| (tag.element() % 7 == 0).then(|| "b".to_string());
        let mut out = String::new();
        let ok = write_data_set_json(data, encoding, &bulk, &extra, &limits, &mut out).is_ok();
        if ok {
            assert!(valid_json(&out), "invalid JSON: {out}");
        }
        ok
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            which in 0..3usize,
        ) {
            check(&data, [EL, IL, EB][which]);
        }

        #[test]
        fn explicit_little_data_sets((data, intact) in data_set_strategy(EL)) {
            // Well-formed explicit data sets always convert.
            prop_assert!(check(&data, EL) || !intact);
        }

        #[test]
        fn explicit_big_data_sets((data, intact) in data_set_strategy(EB)) {
            prop_assert!(check(&data, EB) || !intact);
        }

        #[test]
        fn implicit_data_sets((data, _intact) in data_set_strategy(IL)) {
            // Not necessarily convertible: a random tag may have SQ as its dictionary VR.
            check(&data, IL);
        }
    }
}
