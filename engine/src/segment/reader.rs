//! Reading records: segment handles, verified record access, and [`Object`], the reader a
//! `get` returns.
//!
//! Sealed segments are memory-mapped and read without copying; the unsealed segment is read
//! with `pread` (its mapping would not follow later writes). Every byte handed out has passed
//! its checksum: the header checksum binds the record to its segment and offset, and each
//! 64 KiB body block touched by a read is verified before the read returns it.

use super::format::{
    decode_manifest, verify_blocks, verify_prefix, ChunkRef, Namespace, RecordHeader, RecordKind,
    BLOCK_BYTES, RECORD_HEADER_BYTES,
};
use crate::error::{Error, Result};
use crate::io::{Mapping, StorageFile};
use std::borrow::Cow;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Reads of a sealed segment at least this long ask the kernel to read ahead (mappings are
/// read without readahead otherwise).
const WILL_NEED_BYTES_MIN: u64 = 256 * 1024;

/// Bytes verified and handed to a reader at a time when reading the unsealed segment.
const READ_PIECE_BYTES: u64 = 16 * BLOCK_BYTES;

/// An open segment file.
pub struct SegmentHandle {
    pub id: u64,
    pub file: Box<dyn StorageFile>,
    sealed_map: OnceLock<Mapping>,
    /// Every byte before this offset is durable (for an unsealed segment: the end of its last
    /// durable batch; the header page at least).
    durable_end: AtomicU64,
}

impl SegmentHandle {
    pub fn new(id: u64, file: Box<dyn StorageFile>) -> Self {
        SegmentHandle {
            id,
            file,
            sealed_map: OnceLock::new(),
            durable_end: AtomicU64::new(super::format::SEGMENT_HEADER_BYTES),
        }
    }

    /// Notes that every byte before `end` is durable.
    pub(crate) fn note_durable(&self, end: u64) {
        self.durable_end.fetch_max(end, Ordering::Release);
    }

    /// Every byte before this offset is durable: the whole file once sealed; for an
    /// unsealed segment, the end of its last durable batch (records end exactly there).
    pub fn durable_end(&self) -> u64 {
        match self.sealed_map.get() {
            Some(map) => map.len() as u64,
            None => self.durable_end.load(Ordering::Acquire),
        }
    }

    /// Marks the segment sealed (immutable) and reads it through `map` from now on.
    pub fn set_sealed(&self, map: Mapping) {
        let _ = self.sealed_map.set(map);
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed_map.get().is_some()
    }

    /// The whole file, once sealed.
    pub fn sealed_bytes(&self) -> Option<&[u8]> {
        self.sealed_map.get().map(|m| &m[..])
    }

    /// Hints that `len` bytes at `offset` of a sealed segment are about to be read.
    pub fn will_need(&self, offset: u64, len: u64) {
        if let Some(map) = self.sealed_map.get() {
            map.will_need(offset as usize..(offset + len) as usize);
        }
    }

    /// `len` bytes at `offset`: borrowed from the mapping when sealed, read otherwise.
    pub fn bytes(&self, offset: u64, len: u64) -> Result<Cow<'_, [u8]>> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::corruption(self.id, offset, "read range overflows"))?;
        if let Some(map) = self.sealed_map.get() {
            if end > map.len() as u64 {
                return Err(Error::corruption(
                    self.id,
                    offset,
                    format!(
                        "read of {len} bytes past the end of the segment ({} bytes)",
                        map.len()
                    ),
                ));
            }
            return Ok(Cow::Borrowed(&map[offset as usize..end as usize]));
        }
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io("read", self.file.name(), e))?;
        Ok(Cow::Owned(buf))
    }
}

impl std::fmt::Debug for SegmentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Segment({}, sealed: {})", self.id, self.is_sealed())
    }
}

/// A record whose header checksum passed.
#[derive(Debug, Clone)]
pub struct RecordRef {
    pub header: RecordHeader,
    pub key: Vec<u8>,
    pub crcs: Vec<u32>,
    /// File offset of the body's first byte.
    pub body_start: u64,
}

/// Runs `read` of segment bytes guarded against media errors when the segment is mapped
/// ([`crate::io::media`]): a page the device cannot deliver is an error naming the record.
fn guarded<R>(segment: &SegmentHandle, offset: u64, read: impl FnOnce() -> Result<R>) -> Result<R> {
    if !segment.is_sealed() {
        return read();
    }
    match crate::io::media::guarded(read) {
        Ok(result) => result,
        Err(address) => Err(media_error(segment.id, offset, address)),
    }
}

/// The error of a read that met a media fault at `address` in segment `segment_id`.
pub(crate) fn media_error(segment_id: u64, offset: u64, address: usize) -> Error {
    Error::corruption(
        segment_id,
        offset,
        format!("media error: the device could not deliver the page at address {address:#x} (SIGBUS); the page now reads as zeros"),
    )
}

/// Reads and verifies the header, key and checksum table of the record at `offset`.
pub fn read_record(segment: &SegmentHandle, offset: u64) -> Result<RecordRef> {
    guarded(segment, offset, || read_record_unguarded(segment, offset))
}

fn read_record_unguarded(segment: &SegmentHandle, offset: u64) -> Result<RecordRef> {
    let fixed = segment.bytes(offset, RECORD_HEADER_BYTES)?;
    let header = RecordHeader::parse(&fixed, segment.id, offset)
        .map_err(|e| Error::corruption(segment.id, offset, e.to_string()))?;
    let prefix = segment.bytes(offset, header.checked_prefix_len())?;
    let (key, crcs) = verify_prefix(&header, &prefix)
        .map_err(|e| Error::corruption(segment.id, offset, e.to_string()))?;
    Ok(RecordRef {
        header,
        key: key.to_vec(),
        crcs,
        body_start: offset + header.body_offset(),
    })
}

/// Calls `f` with the verified bytes of `range` (relative to the body) of `record`, in
/// order, in pieces. Only the blocks the range touches are read and checked.
pub fn visit_body(
    segment: &SegmentHandle,
    record: &RecordRef,
    range: Range<u64>,
    f: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    guarded(segment, record.header.offset, || {
        visit_body_unguarded(segment, record, range, f)
    })
}

fn visit_body_unguarded(
    segment: &SegmentHandle,
    record: &RecordRef,
    range: Range<u64>,
    f: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let body_len = record.header.body_len;
    assert!(
        range.start <= range.end && range.end <= body_len,
        "range outside body"
    );
    if segment.is_sealed() && range.end - range.start >= WILL_NEED_BYTES_MIN {
        segment.will_need(record.body_start + range.start, range.end - range.start);
    }
    let mut at = range.start;
    while at < range.end {
        let first_block = at / BLOCK_BYTES;
        let piece_start = first_block * BLOCK_BYTES;
        let piece_end = if segment.is_sealed() {
            // Mapped: verify and hand out the whole rest of the range at once.
            range.end.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
        } else {
            // Only the blocks the range touches, at most a piece at a time.
            (piece_start + READ_PIECE_BYTES).min(range.end.div_ceil(BLOCK_BYTES) * BLOCK_BYTES)
        }
        .min(body_len);
        let bytes = segment.bytes(record.body_start + piece_start, piece_end - piece_start)?;
        verify_blocks(&record.crcs, first_block, &bytes)
            .map_err(|e| Error::corruption(segment.id, record.header.offset, e.to_string()))?;
        let to = range.end.min(piece_end);
        f(&bytes[(at - piece_start) as usize..(to - piece_start) as usize])?;
        at = to;
    }
    Ok(())
}

/// Reads a whole record body (verified).
pub fn read_body(segment: &SegmentHandle, record: &RecordRef) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(record.header.body_len as usize);
    visit_body(segment, record, 0..record.header.body_len, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })?;
    Ok(out)
}

/// One stretch of an object's bytes: a whole blob, or one chunk.
#[derive(Debug, Clone)]
pub struct Part {
    pub segment: Arc<SegmentHandle>,
    pub record: RecordRef,
    /// Where this part starts within the object.
    pub object_offset: u64,
}

/// A stored object, ready to read. It holds its segments open, so compaction running
/// meanwhile does not disturb a read in progress.
#[derive(Debug, Clone)]
pub struct Object {
    pub namespace: Namespace,
    pub key: Vec<u8>,
    pub len: u64,
    pub seq: u64,
    /// Where the object's blob or manifest record is.
    pub segment_id: u64,
    pub offset: u64,
    pub parts: Vec<Part>,
}

/// Verified object bytes that own their place (see [`Object::visit_range_shared`]).
#[derive(Debug)]
pub enum SharedBytes {
    /// A stretch of a sealed segment's mapping, kept alive by the handle.
    Mapped {
        segment: Arc<SegmentHandle>,
        start: usize,
        end: usize,
    },
    /// Bytes read from the unsealed segment.
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            SharedBytes::Mapped {
                segment,
                start,
                end,
            } => match segment.sealed_bytes() {
                Some(map) => &map[*start..*end],
                // A sealed handle never loses its mapping; constructed only when sealed.
                None => unreachable!("SharedBytes::Mapped of an unsealed segment"),
            },
            SharedBytes::Owned(bytes) => bytes,
        }
    }
}

/// How to find a segment by id (missing: compaction removed it; the caller retries).
pub type SegmentLookup<'a> = &'a dyn Fn(u64) -> Option<Arc<SegmentHandle>>;

/// Signals that a segment vanished under a read (compaction switched); retry the lookup.
#[derive(Debug)]
pub struct SegmentGone;

impl Object {
    /// Builds the reader for the blob or manifest record at (`segment`, `offset`), checking
    /// that it is the record the index promised.
    pub fn open(
        lookup: SegmentLookup<'_>,
        segment_id: u64,
        offset: u64,
        namespace: Namespace,
        key: &[u8],
        expect_seq: u64,
    ) -> Result<std::result::Result<Object, SegmentGone>> {
        let Some(segment) = lookup(segment_id) else {
            return Ok(Err(SegmentGone));
        };
        let record = read_record(&segment, offset)?;
        let h = record.header;
        if h.namespace != namespace || record.key != key || h.seq != expect_seq {
            return Err(Error::corruption(
                segment_id,
                offset,
                "record does not match the index entry that points at it",
            ));
        }
        match h.kind {
            RecordKind::Blob => Ok(Ok(Object {
                namespace,
                key: key.to_vec(),
                len: h.body_len,
                seq: h.seq,
                segment_id,
                offset,
                parts: vec![Part {
                    segment,
                    record,
                    object_offset: 0,
                }],
            })),
            RecordKind::Manifest => {
                let body = read_body(&segment, &record)?;
                let (len, chunks) =
                    decode_manifest(&body).map_err(|e| Error::corruption(segment_id, offset, e))?;
                let mut parts = Vec::with_capacity(chunks.len());
                let mut object_offset = 0u64;
                for ChunkRef {
                    segment_id: chunk_segment,
                    offset: chunk_offset,
                    len: chunk_len,
                } in chunks
                {
                    let Some(chunk_handle) = lookup(chunk_segment) else {
                        return Ok(Err(SegmentGone));
                    };
                    let chunk = read_record(&chunk_handle, chunk_offset)?;
                    if chunk.header.kind != RecordKind::Chunk || chunk.header.body_len != chunk_len
                    {
                        return Err(Error::corruption(
                            chunk_segment,
                            chunk_offset,
                            format!("manifest at {segment_id}:{offset} points at a record that is not its chunk"),
                        ));
                    }
                    parts.push(Part {
                        segment: chunk_handle,
                        record: chunk,
                        object_offset,
                    });
                    object_offset += chunk_len;
                }
                Ok(Ok(Object {
                    namespace,
                    key: key.to_vec(),
                    len,
                    seq: h.seq,
                    segment_id,
                    offset,
                    parts,
                }))
            }
            other => Err(Error::corruption(
                segment_id,
                offset,
                format!("index points at a {other:?} record"),
            )),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The stored parts `range` touches, each with the part of its body it covers.
    fn parts_in(&self, range: Range<u64>) -> Result<Vec<(&Part, Range<u64>)>> {
        if range.start > range.end || range.end > self.len {
            return Err(Error::InvalidArgument(format!(
                "range {}..{} outside object of {} bytes",
                range.start, range.end, self.len
            )));
        }
        let first = self
            .parts
            .partition_point(|p| p.object_offset + p.record.header.body_len <= range.start);
        Ok(self.parts[first..]
            .iter()
            .take_while(|part| part.object_offset < range.end)
            .map(|part| {
                let from = range.start.saturating_sub(part.object_offset);
                let to = (range.end - part.object_offset).min(part.record.header.body_len);
                (part, from..to)
            })
            .collect())
    }

    /// Calls `f` with the verified bytes of `range`, in order. Zero-copy for sealed segments.
    pub fn visit_range(
        &self,
        range: Range<u64>,
        f: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        for (part, body_range) in self.parts_in(range)? {
            visit_body(&part.segment, &part.record, body_range, f)?;
        }
        Ok(())
    }

    /// Calls `f` with the verified bytes of `range` as [`SharedBytes`] that own their place:
    /// pieces of sealed segments point into the mapping (no copy, at most one piece per
    /// stored part), pieces of the unsealed segment are read into buffers of at most
    /// 1 MiB. For handing object bytes to another thread or a network stack.
    pub fn visit_range_shared(
        &self,
        range: Range<u64>,
        f: &mut dyn FnMut(SharedBytes) -> Result<()>,
    ) -> Result<()> {
        for (part, body_range) in self.parts_in(range)? {
            if part.segment.is_sealed() {
                // Verify every block the range touches, then lend the mapping itself.
                visit_body(&part.segment, &part.record, body_range.clone(), &mut |_| {
                    Ok(())
                })?;
                let start = part.record.body_start + body_range.start;
                f(SharedBytes::Mapped {
                    segment: part.segment.clone(),
                    start: start as usize,
                    end: (start + (body_range.end - body_range.start)) as usize,
                })?;
            } else {
                visit_body(&part.segment, &part.record, body_range, &mut |b| {
                    f(SharedBytes::Owned(b.to_vec()))
                })?;
            }
        }
        Ok(())
    }

    /// The verified bytes of `range`.
    pub fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(range.end.saturating_sub(range.start) as usize);
        self.visit_range(range, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })?;
        Ok(out)
    }

    /// All bytes, verified.
    pub fn read_all(&self) -> Result<Vec<u8>> {
        self.read_range(0..self.len)
    }

    /// Streams all bytes into `out` with bounded memory.
    pub fn copy_to(&self, out: &mut dyn std::io::Write) -> Result<u64> {
        self.visit_range(0..self.len, &mut |b| {
            out.write_all(b)
                .map_err(|e| Error::io("write", "object reader output", e))
        })?;
        Ok(self.len)
    }
}
