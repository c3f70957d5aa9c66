//! The fast path: a streaming scanner for data sets encoded in Explicit VR Little Endian.
//!
//! Bytes are fed as they arrive ([`ExplicitLeScanner::feed`]). The scanner reads each
//! top-level element header (tag, VR, length), copies the value of a wanted attribute, and
//! skips every other value without keeping it — a large private blob before Pixel Data costs
//! no memory. Undefined-length sequences (and encapsulated data inside items) are walked to
//! find their end; they are the only thing held in memory whole, bounded by
//! [`ScanLimits::buffered_bytes_max`]. The scan stops at top-level (7FE0,0010) Pixel Data and
//! reports where it starts; what follows is never looked at.
//!
//! Every declared length is checked against the limits before anything is kept, and an
//! element the fast path cannot read correctly (a VR that is not two capital letters — the
//! bytes are not explicit VR — or UN of undefined length, which must be read as implicit VR)
//! is *declined* with [`ScanError::Decline`], so the caller uses the general (dicom-parser)
//! path instead.

use super::Tag;

/// Bounds on what the scanner keeps.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// Deepest nesting of sequences and items.
    pub depth_max: usize,
    /// Longest value of a wanted attribute.
    pub wanted_value_bytes_max: u32,
    /// Most bytes held at once (an undefined-length sequence being walked, a partial header).
    pub buffered_bytes_max: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            depth_max: 16,
            wanted_value_bytes_max: 1 << 20,
            buffered_bytes_max: 16 << 20,
        }
    }
}

/// A wanted attribute found at the top level of the data set. Its value lives in the scan's
/// value arena ([`Scanned::value`]): one allocation for all values, not one each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    pub tag: Tag,
    pub vr: [u8; 2],
    /// Stream offset of the value's first byte.
    pub value_offset: u64,
    /// Where the value is in the arena.
    pub arena_start: u32,
    pub value_len: u32,
}

/// Where top-level Pixel Data starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelDataAt {
    /// Stream offset of the element's tag.
    pub element_offset: u64,
    /// Stream offset of the value (for encapsulated data: of the first item, the offset table).
    pub value_offset: u64,
    pub vr: [u8; 2],
    /// `None` for undefined length (encapsulated).
    pub length: Option<u32>,
}

/// Why scanning stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The fast path cannot read this correctly; use the general path.
    #[error("fast path declines at offset {offset}: {reason}")]
    Decline { offset: u64, reason: String },
    /// The bytes are not a valid data set.
    #[error("malformed data set at offset {offset}: {reason}")]
    Malformed { offset: u64, reason: String },
    /// A limit was exceeded.
    #[error("at offset {offset}: {what} is {value}, the limit is {max}")]
    Limit {
        offset: u64,
        what: &'static str,
        value: u64,
        max: u64,
    },
}

/// Progress after a [`ExplicitLeScanner::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Feed more bytes (or call [`ExplicitLeScanner::finish`] at the end of the stream).
    NeedMore,
    /// Pixel Data reached; nothing more is needed.
    PixelData(PixelDataAt),
}

/// Top-level values at least this long are reported as bulk ([`Scanned::bulk`]): the metadata
/// record leaves them in the object and references them.
pub const BULK_VALUE_BYTES_MIN: u32 = 16 * 1024;

/// A large top-level value (not wanted, defined length ≥ [`BULK_VALUE_BYTES_MIN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkValue {
    pub tag: Tag,
    pub vr: [u8; 2],
    /// Stream offset of the element's tag.
    pub element_offset: u64,
    /// Stream offset of the value.
    pub value_offset: u64,
    pub length: u32,
}

/// What a finished scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub elements: Vec<Element>,
    /// The values of `elements`, back to back.
    pub arena: Vec<u8>,
    pub pixel_data: Option<PixelDataAt>,
    /// Large top-level values, in stream order (the fast path reports them; the general path
    /// leaves this empty).
    pub bulk: Vec<BulkValue>,
}

impl Scanned {
    /// The value bytes of `element`.
    pub fn value(&self, element: &Element) -> &[u8] {
        let start = element.arena_start as usize;
        &self.arena[start..start + element.value_len as usize]
    }
}

const UNDEFINED: u32 = u32::MAX;
/// Most bulk values recorded (each is at least 16 KiB, so this is over 64 GiB of them).
const BULK_VALUES_MAX: usize = 1 << 22;

#[inline]
fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline]
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn read_tag(b: &[u8], at: usize) -> Tag {
    Tag::new(le_u16(b, at), le_u16(b, at + 2))
}

/// The VRs of PS3.5 6.2 (two capital letters that name none of them are not a VR: the bytes
/// are then not explicit VR, or are damaged, and their length field cannot be trusted), and
/// which of them have a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
const SHORT_VRS: [&[u8; 2]; 21] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
];
const LONG_VRS: [&[u8; 2]; 13] = [
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
];

/// 0: not a VR, 1: a VR with a 2-byte length, 2: a VR with a 4-byte length; indexed by
/// `(first - b'A') * 26 + (second - b'A')`. A table rather than a `match`: the hot loops
/// classify every header, and a jump table there mispredicts.
const VR_CLASS: [u8; 26 * 26] = {
    let mut table = [0u8; 26 * 26];
    let mut i = 0;
    while i < SHORT_VRS.len() {
        let vr = SHORT_VRS[i];
        table[(vr[0] - b'A') as usize * 26 + (vr[1] - b'A') as usize] = 1;
        i += 1;
    }
    let mut i = 0;
    while i < LONG_VRS.len() {
        let vr = LONG_VRS[i];
        table[(vr[0] - b'A') as usize * 26 + (vr[1] - b'A') as usize] = 2;
        i += 1;
    }
    table
};

#[inline]
fn vr_class(vr: [u8; 2]) -> u8 {
    let (a, b) = (vr[0].wrapping_sub(b'A'), vr[1].wrapping_sub(b'A'));
    if a < 26 && b < 26 {
        VR_CLASS[a as usize * 26 + b as usize]
    } else {
        0
    }
}

#[inline]
fn is_known_vr(vr: [u8; 2]) -> bool {
    vr_class(vr) != 0
}

/// Whether a VR has a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5
/// 7.1.2): OB, OD, OF, OL, OV, OW, SQ, SV, UC, UN, UR, UT, UV.
#[inline]
pub fn has_long_length(vr: [u8; 2]) -> bool {
    vr_class(vr) == 2
}

/// Encodes one element in Explicit VR Little Endian with a defined length (the inverse of
/// what the scanner reads; used to build data sets in tests, benches and, later, records).
pub fn encode_element(tag: Tag, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + value.len());
    out.extend_from_slice(&tag.group().to_le_bytes());
    out.extend_from_slice(&tag.element().to_le_bytes());
    out.extend_from_slice(vr);
    if has_long_length(*vr) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
    out
}

/// An element header: tag, VR, value length, header size.
struct Header {
    tag: Tag,
    vr: [u8; 2],
    length: u32,
    header_len: usize,
}

/// Outcome of reading something that must be complete in the buffer.
enum Need<T> {
    Have(T),
    More,
}

#[inline]
fn read_header(b: &[u8], at: usize, offset: u64) -> Result<Need<Header>, ScanError> {
    if b.len() < at + 8 {
        return Ok(Need::More);
    }
    let tag = read_tag(b, at);
    if tag.group() == 0xFFFE {
        return Ok(Need::Have(Header {
            tag,
            vr: *b"  ",
            length: le_u32(b, at + 4),
            header_len: 8,
        }));
    }
    let vr = [b[at + 4], b[at + 5]];
    if !is_known_vr(vr) {
        return Err(ScanError::Decline {
            offset,
            reason: format!(
                "{tag} has no valid explicit VR (bytes {:02X} {:02X})",
                vr[0], vr[1]
            ),
        });
    }
    if has_long_length(vr) {
        if b.len() < at + 12 {
            return Ok(Need::More);
        }
        Ok(Need::Have(Header {
            tag,
            vr,
            length: le_u32(b, at + 8),
            header_len: 12,
        }))
    } else {
        Ok(Need::Have(Header {
            tag,
            vr,
            length: u32::from(le_u16(b, at + 6)),
            header_len: 8,
        }))
    }
}

/// Which top-level attributes a scan keeps: any `Fn(Tag) -> bool`, or a [`SortedTags`]
/// cursor (the extractor's, inlined and O(1) per element).
pub trait Wants {
    fn wants(&mut self, tag: Tag) -> bool;
}

impl<F: Fn(Tag) -> bool> Wants for F {
    #[inline]
    fn wants(&mut self, tag: Tag) -> bool {
        self(tag)
    }
}

/// A sorted tag list walked together with the data set's top-level tags, which come in
/// ascending order (PS3.5 7.1): O(1) per element; a tag out of order falls back to a binary
/// search.
#[derive(Debug, Clone)]
pub struct SortedTags {
    tags: std::sync::Arc<[Tag]>,
    cursor: usize,
}

impl SortedTags {
    /// `tags` must be sorted.
    pub fn new(tags: std::sync::Arc<[Tag]>) -> Self {
        debug_assert!(tags.windows(2).all(|w| w[0] <= w[1]), "sorted tags");
        SortedTags { tags, cursor: 0 }
    }
}

impl Wants for SortedTags {
    #[inline]
    fn wants(&mut self, tag: Tag) -> bool {
        let keep = &self.tags;
        let mut i = self.cursor;
        if i > 0 && keep[i - 1] >= tag {
            return keep.binary_search(&tag).is_ok();
        }
        while i < keep.len() && keep[i] < tag {
            i += 1;
        }
        self.cursor = i;
        i < keep.len() && keep[i] == tag
    }
}

/// Undefined length on a VR that cannot have it (only SQ, UN and encapsulated OB/OW can).
fn undefined_length_error(header: &Header, offset: u64) -> ScanError {
    ScanError::Malformed {
        offset,
        reason: format!(
            "{} has undefined length with VR {}",
            header.tag,
            String::from_utf8_lossy(&header.vr)
        ),
    }
}

/// An open undefined-length sequence or item.
#[derive(Debug, Clone, Copy)]
struct Nest {
    tag: Tag,
    /// Stream offset of its header.
    offset: u64,
    kind: NestKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NestKind {
    /// Items up to a sequence delimiter; `implicit`: their elements are implicit VR LE (a UN
    /// sequence).
    Sequence { implicit: bool },
    /// Elements up to an item delimiter.
    Item { implicit: bool },
}

/// What one step of the scan did.
enum Step {
    /// Consumed up to this position of the data.
    Next(usize),
    /// The next header or wanted value is not complete in the data.
    More,
    /// All the data was consumed into a value still streaming past (`skip` is set).
    Skipping,
    /// Top-level Pixel Data; the scan stops after its header.
    PixelData(usize, PixelDataAt),
}

/// The common case of [`read_header`], for the hot loops: a complete header with a valid
/// explicit VR (or an item/delimiter tag). `None` sends the caller to `read_header`, which
/// tells "need more bytes" from "not explicit VR".
#[inline(always)]
fn quick_header(b: &[u8], at: usize) -> Option<Header> {
    let h = b.get(at..at + 8)?;
    let tag = Tag::new(
        u16::from_le_bytes([h[0], h[1]]),
        u16::from_le_bytes([h[2], h[3]]),
    );
    if tag.group() == 0xFFFE {
        return Some(Header {
            tag,
            vr: *b"  ",
            length: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            header_len: 8,
        });
    }
    let vr = [h[4], h[5]];
    let class = vr_class(vr);
    if class == 0 {
        return None;
    }
    if class == 2 {
        let l = b.get(at + 8..at + 12)?;
        Some(Header {
            tag,
            vr,
            length: u32::from_le_bytes([l[0], l[1], l[2], l[3]]),
            header_len: 12,
        })
    } else {
        Some(Header {
            tag,
            vr,
            length: u32::from(u16::from_le_bytes([h[6], h[7]])),
            header_len: 8,
        })
    }
}

/// The streaming scanner (see the module documentation).
pub struct ExplicitLeScanner<W: Wants> {
    wanted: W,
    limits: ScanLimits,
    /// Bytes received but not yet consumed; `pending[0]` is at stream offset `pending_offset`.
    pending: Vec<u8>,
    pending_offset: u64,
    /// Bytes of an unwanted value still to be skipped before `pending` continues.
    skip: u64,
    /// The element being skipped (tag, stream offset), for errors.
    skipping: Option<(Tag, u64)>,
    /// Open undefined-length sequences and items, outermost first (at most `depth_max`).
    stack: Vec<Nest>,
    elements: Vec<Element>,
    arena: Vec<u8>,
    pixel_data: Option<PixelDataAt>,
    bulk: Vec<BulkValue>,
}

impl<W: Wants> ExplicitLeScanner<W> {
    /// A scanner for a data set starting at stream offset `start_offset` (after the file meta
    /// group), keeping the attributes for which `wanted` is true.
    pub fn new(start_offset: u64, wanted: W, limits: ScanLimits) -> Self {
        ExplicitLeScanner {
            wanted,
            limits,
            pending: Vec::new(),
            pending_offset: start_offset,
            skip: 0,
            skipping: None,
            stack: Vec::new(),
            elements: Vec::with_capacity(32),
            arena: Vec::with_capacity(1024),
            pixel_data: None,
            bulk: Vec::new(),
        }
    }

    /// The value of a wanted attribute found so far.
    pub fn value_so_far(&self, tag: Tag) -> Option<&[u8]> {
        let e = self.elements.iter().find(|e| e.tag == tag)?;
        let start = e.arena_start as usize;
        Some(&self.arena[start..start + e.value_len as usize])
    }

    /// Where the unconsumed bytes start, and those of them held (an unfinished header or
    /// wanted value). After a decline, what the failed feed left: see `Extractor`.
    pub fn unconsumed(&self) -> (u64, &[u8]) {
        (self.pending_offset, &self.pending)
    }

    /// Bytes currently held (for tests of the memory bound).
    pub fn buffered_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<Progress, ScanError> {
        if let Some(at) = self.pixel_data {
            return Ok(Progress::PixelData(at));
        }
        if self.skip > 0 {
            let n = (chunk.len() as u64).min(self.skip);
            self.skip -= n;
            self.pending_offset += n;
            chunk = &chunk[n as usize..];
            if self.skip > 0 || chunk.is_empty() {
                return Ok(Progress::NeedMore);
            }
        }
        if self.pending.is_empty() {
            // Zero-copy: scan the caller's bytes in place; keep only an unfinished tail.
            let (consumed, progress) = self.scan(chunk)?;
            self.pending_offset += consumed as u64;
            let rest = &chunk[consumed.min(chunk.len())..];
            if progress == Progress::NeedMore && self.skip == 0 && !rest.is_empty() {
                self.hold(rest)?;
            }
            return Ok(progress);
        }
        self.hold(chunk)?;
        let pending = std::mem::take(&mut self.pending);
        let scanned = self.scan(&pending);
        self.pending = pending;
        let (consumed, progress) = scanned?;
        self.pending.drain(..consumed.min(self.pending.len()));
        self.pending_offset += consumed as u64;
        Ok(progress)
    }

    /// Keeps bytes that cannot be scanned yet, within the limit.
    fn hold(&mut self, bytes: &[u8]) -> Result<(), ScanError> {
        if self.pending.len() + bytes.len() > self.limits.buffered_bytes_max {
            return Err(ScanError::Limit {
                offset: self.pending_offset,
                what: "bytes held while scanning",
                value: (self.pending.len() + bytes.len()) as u64,
                max: self.limits.buffered_bytes_max as u64,
            });
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// Scans what `data` (which starts at stream offset `pending_offset`) completes: top-level
    /// elements, and the items and elements inside open undefined-length sequences, whose
    /// state is kept on `stack` so that nothing but an unfinished header is ever held. Returns
    /// the bytes consumed; with `skip` set, all of `data` was consumed and the rest of a value
    /// is still to come.
    fn scan(&mut self, data: &[u8]) -> Result<(usize, Progress), ScanError> {
        let mut at = 0usize;
        loop {
            let offset = self.pending_offset + at as u64;
            let consumed = match self.stack.last().copied() {
                None => self.scan_top_level(data, at, offset)?,
                Some(Nest {
                    kind: NestKind::Sequence { implicit },
                    ..
                }) => self.scan_in_sequence(data, at, offset, implicit)?,
                Some(Nest {
                    kind: NestKind::Item { implicit },
                    ..
                }) => self.scan_in_item(data, at, offset, implicit)?,
            };
            match consumed {
                Step::Next(next) => at = next,
                Step::More => return Ok((at, Progress::NeedMore)),
                Step::Skipping => return Ok((data.len(), Progress::NeedMore)),
                Step::PixelData(next, found) => return Ok((next, Progress::PixelData(found))),
            }
        }
    }

    /// Skips `length` value bytes starting at `at`: within `data`, or by setting `skip`.
    fn skip_value(&mut self, data: &[u8], at: usize, length: u32, tag: Tag, offset: u64) -> Step {
        let available = data.len() - at.min(data.len());
        if available >= length as usize {
            return Step::Next(at + length as usize);
        }
        // The rest streams past later, holding nothing.
        self.skip = u64::from(length) - available as u64;
        self.skipping = Some((tag, offset));
        Step::Skipping
    }

    fn push(&mut self, tag: Tag, offset: u64, kind: NestKind) -> Result<(), ScanError> {
        let depth = self.stack.len() + 1;
        if depth > self.limits.depth_max {
            return Err(ScanError::Limit {
                offset,
                what: "sequence nesting depth",
                value: depth as u64,
                max: self.limits.depth_max as u64,
            });
        }
        self.stack.push(Nest { tag, offset, kind });
        Ok(())
    }

    fn scan_top_level(&mut self, data: &[u8], at: usize, offset: u64) -> Result<Step, ScanError> {
        let header = match quick_header(data, at) {
            Some(h) => h,
            None => match read_header(data, at, offset)? {
                Need::Have(h) => h,
                Need::More => return Ok(Step::More),
            },
        };
        if header.tag.group() == 0xFFFE {
            return Err(ScanError::Malformed {
                offset,
                reason: format!("{} outside a sequence", header.tag),
            });
        }
        if header.tag.group() == 0x0002 {
            // PS3.10 7.1: group 0002 is the file meta group's alone; met here, the group
            // length (0002,0000) lied.
            return Err(ScanError::Malformed {
                offset,
                reason: format!(
                    "file meta element {} inside the data set (the file meta group length is wrong)",
                    header.tag
                ),
            });
        }
        let value_at = at + header.header_len;
        if header.tag == Tag::PIXEL_DATA {
            let found = PixelDataAt {
                element_offset: offset,
                value_offset: offset + header.header_len as u64,
                vr: header.vr,
                length: (header.length != UNDEFINED).then_some(header.length),
            };
            self.pixel_data = Some(found);
            return Ok(Step::PixelData(value_at, found));
        }
        if header.length == UNDEFINED {
            let implicit = match &header.vr {
                b"SQ" => false,
                // UN of undefined length holds a sequence in implicit VR LE (PS3.5 6.2.2).
                b"UN" => true,
                _ => return Err(undefined_length_error(&header, offset)),
            };
            self.push(header.tag, offset, NestKind::Sequence { implicit })?;
            return Ok(Step::Next(value_at));
        }
        let length = header.length as usize;
        if self.wanted.wants(header.tag) {
            if header.length > self.limits.wanted_value_bytes_max {
                return Err(ScanError::Limit {
                    offset,
                    what: "length of a wanted value",
                    value: u64::from(header.length),
                    max: u64::from(self.limits.wanted_value_bytes_max),
                });
            }
            if data.len() < value_at + length {
                return Ok(Step::More);
            }
            let arena_start = self.arena.len() as u32;
            self.arena
                .extend_from_slice(&data[value_at..value_at + length]);
            // UN of a known attribute: its bytes are implicit VR LE, so the dictionary's
            // VR describes them (PS3.5 6.2.2); the general path reports the same.
            let vr = match &header.vr {
                b"UN" => super::dictionary_vr(header.tag).unwrap_or(header.vr),
                _ => header.vr,
            };
            self.elements.push(Element {
                tag: header.tag,
                vr,
                value_offset: offset + header.header_len as u64,
                arena_start,
                value_len: header.length,
            });
            return Ok(Step::Next(value_at + length));
        }
        // Sequences (and UN, which may hold one) stay in the header: their items are
        // attributes, not bulk data, and a metadata reader must see them.
        if header.length >= BULK_VALUE_BYTES_MIN
            && self.bulk.len() < BULK_VALUES_MAX
            && !matches!(&header.vr, b"SQ" | b"UN")
        {
            // Reached once per element: the header is consumed whatever follows.
            self.bulk.push(BulkValue {
                tag: header.tag,
                vr: header.vr,
                element_offset: offset,
                value_offset: offset + header.header_len as u64,
                length: header.length,
            });
        }
        Ok(self.skip_value(data, value_at, header.length, header.tag, offset))
    }

    /// Inside an undefined-length sequence (or encapsulated data): items up to the delimiter.
    fn scan_in_sequence(
        &mut self,
        data: &[u8],
        at: usize,
        offset: u64,
        implicit: bool,
    ) -> Result<Step, ScanError> {
        if data.len() < at + 8 {
            return Ok(Step::More);
        }
        let tag = read_tag(data, at);
        let length = le_u32(data, at + 4);
        match tag {
            Tag::SEQUENCE_DELIMITER => {
                self.stack.pop();
                Ok(Step::Next(at + 8))
            }
            Tag::ITEM if length == UNDEFINED => {
                self.push(tag, offset, NestKind::Item { implicit })?;
                Ok(Step::Next(at + 8))
            }
            Tag::ITEM => Ok(self.skip_value(data, at + 8, length, tag, offset)),
            other => Err(ScanError::Malformed {
                offset,
                reason: format!(
                    "{other} inside sequence {} where an item belongs",
                    self.stack.last().map_or(Tag(0), |n| n.tag)
                ),
            }),
        }
    }

    /// Inside an undefined-length item: elements up to the item delimiter. Defined-length
    /// elements complete in `data` are stepped over in a tight loop.
    fn scan_in_item(
        &mut self,
        data: &[u8],
        mut at: usize,
        _offset: u64,
        implicit: bool,
    ) -> Result<Step, ScanError> {
        loop {
            let offset = self.pending_offset + at as u64;
            let header = if implicit {
                if data.len() < at + 8 {
                    return Ok(Step::More);
                }
                Header {
                    tag: read_tag(data, at),
                    vr: *b"  ",
                    length: le_u32(data, at + 4),
                    header_len: 8,
                }
            } else {
                match quick_header(data, at) {
                    Some(h) => h,
                    None => match read_header(data, at, offset)? {
                        Need::Have(h) => h,
                        Need::More => return Ok(Step::More),
                    },
                }
            };
            let value_at = at + header.header_len;
            if header.length != UNDEFINED && header.tag.group() != 0xFFFE {
                let end = value_at + header.length as usize;
                if end <= data.len() {
                    at = end;
                    continue;
                }
                return Ok(self.skip_value(data, value_at, header.length, header.tag, offset));
            }
            if header.tag == Tag::ITEM_DELIMITER {
                self.stack.pop();
                return Ok(Step::Next(value_at));
            }
            if header.tag.group() == 0xFFFE {
                return Err(ScanError::Malformed {
                    offset,
                    reason: format!("{} inside an item", header.tag),
                });
            }
            let nested_implicit = match (implicit, &header.vr) {
                // In implicit VR, undefined length means a sequence, whatever the tag.
                (true, _) | (false, b"UN") => true,
                // Nested sequences, and encapsulated pixel data of an icon: items up to a
                // sequence delimiter either way.
                (false, b"SQ" | b"OB" | b"OW") => false,
                (false, _) => return Err(undefined_length_error(&header, offset)),
            };
            self.push(
                header.tag,
                offset,
                NestKind::Sequence {
                    implicit: nested_implicit,
                },
            )?;
            return Ok(Step::Next(value_at));
        }
    }

    /// Ends the stream: the data set had no Pixel Data, or it did and was scanned already.
    pub fn finish(self) -> Result<Scanned, ScanError> {
        if let (None, Some(open)) = (self.pixel_data, self.stack.first()) {
            let innermost = self.stack.last().map_or(open.tag, |n| n.tag);
            let mut reason = format!("stream ends inside {}", open.tag);
            match self.skipping {
                Some((tag, _)) if self.skip > 0 => reason.push_str(&format!(
                    ", {} bytes before the end of its nested {tag}'s value",
                    self.skip
                )),
                _ if innermost != open.tag => {
                    reason.push_str(&format!(", in its nested {innermost}"))
                }
                _ => {}
            }
            return Err(ScanError::Malformed {
                offset: open.offset,
                reason,
            });
        }
        if self.pixel_data.is_none() && self.skip > 0 {
            let (tag, element_offset) = self.skipping.unwrap_or((Tag(0), self.pending_offset));
            return Err(ScanError::Malformed {
                offset: element_offset,
                reason: format!(
                    "stream ends {} bytes before the end of {tag}'s value",
                    self.skip
                ),
            });
        }
        if self.pixel_data.is_none() && !self.pending.is_empty() {
            let reason = if self.pending.len() >= 4 {
                format!(
                    "stream ends inside {} ({} bytes of it received)",
                    read_tag(&self.pending, 0),
                    self.pending.len()
                )
            } else {
                format!(
                    "stream ends inside an element header ({} bytes of it received)",
                    self.pending.len()
                )
            };
            return Err(ScanError::Malformed {
                offset: self.pending_offset,
                reason,
            });
        }
        Ok(Scanned {
            elements: self.elements,
            arena: self.arena,
            pixel_data: self.pixel_data,
            bulk: self.bulk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::encode_element as el;

    fn undefined(tag: Tag, vr: &[u8; 2]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.group().to_le_bytes());
        out.extend_from_slice(&tag.element().to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&UNDEFINED.to_le_bytes());
        out
    }

    fn marker(tag: Tag, length: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.group().to_le_bytes());
        out.extend_from_slice(&tag.element().to_le_bytes());
        out.extend_from_slice(&length.to_le_bytes());
        out
    }

    const PATIENT_ID: Tag = Tag::new(0x0010, 0x0020);
    const MODALITY: Tag = Tag::new(0x0008, 0x0060);
    const PRIVATE_BLOB: Tag = Tag::new(0x0029, 0x1010);
    const SEQ: Tag = Tag::new(0x0008, 0x1115);

    /// A data set with a wanted value, an undefined-length sequence holding a nested sequence
    /// and an item of defined length, a large private blob, then encapsulated pixel data.
    fn sample() -> (Vec<u8>, usize) {
        let mut d = Vec::new();
        d.extend(el(MODALITY, b"CS", b"CT"));
        d.extend(undefined(SEQ, b"SQ"));
        d.extend(marker(Tag::ITEM, UNDEFINED));
        d.extend(el(Tag::new(0x0008, 0x1150), b"UI", b"1.2.3\0"));
        d.extend(undefined(Tag::new(0x0008, 0x1199), b"SQ"));
        let inner = el(Tag::new(0x0008, 0x1155), b"UI", b"1.2.4\0");
        d.extend(marker(Tag::ITEM, inner.len() as u32));
        d.extend(inner);
        d.extend(marker(Tag::SEQUENCE_DELIMITER, 0));
        d.extend(marker(Tag::ITEM_DELIMITER, 0));
        d.extend(marker(Tag::SEQUENCE_DELIMITER, 0));
        d.extend(el(PRIVATE_BLOB, b"OB", &vec![7u8; 100_000]));
        d.extend(el(PATIENT_ID, b"LO", b"010203-123A "));
        let pixel_at = d.len();
        d.extend(undefined(Tag::PIXEL_DATA, b"OB"));
        d.extend(marker(Tag::ITEM, 0));
        d.extend(marker(Tag::ITEM, 4));
        d.extend_from_slice(&[1, 2, 3, 4]);
        d.extend(marker(Tag::SEQUENCE_DELIMITER, 0));
        (d, pixel_at)
    }

    fn wanted(tag: Tag) -> bool {
        tag == PATIENT_ID || tag == MODALITY
    }

    fn scan_in_chunks(data: &[u8], chunk: usize) -> Result<(Scanned, usize), ScanError> {
        let mut scanner = ExplicitLeScanner::new(132, wanted, ScanLimits::default());
        let mut held_max = 0;
        for piece in data.chunks(chunk.max(1)) {
            let progress = scanner.feed(piece)?;
            held_max = held_max.max(scanner.buffered_bytes());
            if let Progress::PixelData(_) = progress {
                break;
            }
        }
        Ok((scanner.finish()?, held_max))
    }

    #[test]
    fn finds_wanted_values_and_pixel_data_at_any_chunking() {
        let (data, pixel_at) = sample();
        let (whole, _) = scan_in_chunks(&data, data.len()).expect("scan");
        assert_eq!(whole.elements.len(), 2);
        assert_eq!(whole.value(&whole.elements[0]), b"CT");
        assert_eq!(whole.elements[1].tag, PATIENT_ID);
        assert_eq!(whole.value(&whole.elements[1]), b"010203-123A ");
        let pixel = whole.pixel_data.expect("pixel data");
        assert_eq!(pixel.element_offset, 132 + pixel_at as u64);
        assert_eq!(pixel.length, None);
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let (chunked, held) = scan_in_chunks(&data, chunk).expect("scan");
            assert_eq!(chunked, whole, "chunk size {chunk}");
            // The 100 kB private blob streams past without being held.
            assert!(held < 1000, "held {held} bytes with {chunk}-byte chunks");
        }
    }

    #[test]
    fn a_data_set_without_pixel_data_ends_cleanly_and_a_cut_one_does_not() {
        let data = [el(MODALITY, b"CS", b"SR"), el(PATIENT_ID, b"LO", b"X")].concat();
        let (scanned, _) = scan_in_chunks(&data, 5).expect("scan");
        assert_eq!(scanned.pixel_data, None);
        assert_eq!(scanned.elements.len(), 2);
        for cut in 1..data.len() {
            if cut == 10 {
                continue; // a whole first element is a valid (shorter) data set
            }
            let err = scan_in_chunks(&data[..cut], 3).expect_err("truncated");
            assert!(
                matches!(err, ScanError::Malformed { .. }),
                "cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn capital_letters_that_name_no_vr_are_declined() {
        // Found by the differential fuzzer: "GR" is no VR; dicom-parser refuses it too.
        let bytes = [
            el(Tag::new(0x0008, 0x0060), b"CS", b"CT"),
            el(PATIENT_ID, b"GR", b"AB"),
        ]
        .concat();
        let err = scan_in_chunks(&bytes, 100).expect_err("declined");
        assert!(
            matches!(&err, ScanError::Decline { reason, .. } if reason.contains("(0010,0020) has no valid explicit VR")),
            "{err}"
        );
    }

    #[test]
    fn implicit_vr_bytes_are_declined_and_undefined_un_is_walked_as_implicit() {
        // Implicit VR: the 4 bytes after the tag are a length, not letters.
        let mut implicit = Vec::new();
        implicit.extend_from_slice(&[0x08, 0x00, 0x60, 0x00, 2, 0, 0, 0]);
        implicit.extend_from_slice(b"CT");
        let err = scan_in_chunks(&implicit, 100).expect_err("declined");
        assert!(
            matches!(err, ScanError::Decline { offset: 132, .. }),
            "{err}"
        );
        // UN of undefined length: a sequence whose items hold implicit VR LE elements, one of
        // them with undefined length too (a nested sequence).
        let mut un = undefined(Tag::new(0x0009, 0x1010), b"UN");
        un.extend(marker(Tag::ITEM, UNDEFINED));
        un.extend(marker(Tag::new(0x0009, 0x1011), 4));
        un.extend(b"ABCD");
        un.extend(marker(Tag::new(0x0009, 0x1012), UNDEFINED));
        un.extend(marker(Tag::ITEM, 2));
        un.extend(b"xy");
        un.extend(marker(Tag::SEQUENCE_DELIMITER, 0));
        un.extend(marker(Tag::ITEM_DELIMITER, 0));
        un.extend(marker(Tag::SEQUENCE_DELIMITER, 0));
        un.extend(el(PATIENT_ID, b"LO", b"ID42"));
        for chunk in [1, 3, 100] {
            let (found, held) = scan_in_chunks(&un, chunk).expect("walked");
            assert_eq!(found.elements.len(), 1);
            assert_eq!(found.value(&found.elements[0]), b"ID42");
            assert!(held < 16, "only partial headers are held ({held})");
        }
        let mut truncated = un.clone();
        truncated.truncate(40);
        let err = scan_in_chunks(&truncated, 7).expect_err("truncated");
        assert!(
            err.to_string().contains("stream ends inside (0009,1010)"),
            "{err}"
        );
    }

    #[test]
    fn lying_and_huge_lengths_get_specific_errors() {
        let huge = el(PATIENT_ID, b"UT", b"");
        let mut huge = huge;
        huge[8..12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let err = scan_in_chunks(&huge, 100).expect_err("limit");
        assert!(
            matches!(
                err,
                ScanError::Limit {
                    what: "length of a wanted value",
                    ..
                }
            ),
            "{err}"
        );
        // An unwanted value that claims more bytes than the stream has: truncated at the end,
        // and nothing was held meanwhile.
        let mut lying = el(PRIVATE_BLOB, b"OB", &[1, 2, 3]);
        lying[8..12].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        let err = scan_in_chunks(&lying, 100).expect_err("truncated");
        assert!(matches!(err, ScanError::Malformed { .. }), "{err}");
        // An item at the top level, and a sequence nested deeper than the limit.
        let err = scan_in_chunks(&marker(Tag::ITEM, 0), 100).expect_err("malformed");
        assert!(matches!(err, ScanError::Malformed { .. }), "{err}");
        let mut deep = Vec::new();
        for _ in 0..20 {
            deep.extend(undefined(SEQ, b"SQ"));
            deep.extend(marker(Tag::ITEM, UNDEFINED));
        }
        let err = scan_in_chunks(&deep, 4096).expect_err("too deep");
        assert!(
            matches!(
                err,
                ScanError::Limit {
                    what: "sequence nesting depth",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_sequence_larger_than_the_buffer_limit_streams_through() {
        let mut big = undefined(SEQ, b"SQ");
        big.extend(marker(Tag::ITEM, 200_000));
        big.extend(vec![0u8; 200_000]);
        big.extend(marker(Tag::ITEM, UNDEFINED));
        big.extend(el(Tag::new(0x0009, 0x1001), b"OB", &vec![1u8; 100_000]));
        big.extend(marker(Tag::ITEM_DELIMITER, 0));
        big.extend(marker(Tag::SEQUENCE_DELIMITER, 0));
        big.extend(el(PATIENT_ID, b"LO", b"ID42"));
        let mut scanner = ExplicitLeScanner::new(
            0,
            wanted,
            ScanLimits {
                buffered_bytes_max: 64 * 1024,
                ..ScanLimits::default()
            },
        );
        let mut held_max = 0;
        for c in big.chunks(4096) {
            scanner.feed(c).expect("streams through");
            held_max = held_max.max(scanner.buffered_bytes());
        }
        assert!(
            held_max < 16,
            "nothing but partial headers held ({held_max})"
        );
        let found = scanner.finish().expect("complete");
        assert_eq!(found.value(&found.elements[0]), b"ID42");
    }
}
