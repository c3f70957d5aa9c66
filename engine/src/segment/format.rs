//! The on-disk format, byte by byte (see `docs/format.md`, which this module implements).
//!
//! All integers are little endian. A segment file is a 4096-byte header, then records, then,
//! once sealed, a directory record and a 64-byte trailer at the very end. Every record starts
//! 8-byte aligned; every batch the writer submits starts 4096-byte aligned (padding records fill
//! the gaps), so `O_DIRECT` writes never touch bytes already acknowledged.

use crc32fast::Hasher;

/// Version of the segment format written by this build. Readers refuse newer versions.
pub const FORMAT_VERSION: u32 = 1;
/// Unit of alignment for batches, the segment header and sealed files.
pub const PAGE_BYTES: u64 = 4096;
/// Bytes reserved for the segment header at the start of every segment.
pub const SEGMENT_HEADER_BYTES: u64 = PAGE_BYTES;
/// Bytes of the fixed part of every record header.
pub const RECORD_HEADER_BYTES: u64 = 64;
/// Records start at multiples of this.
pub const RECORD_ALIGN_BYTES: u64 = 8;
/// A record body is checksummed in blocks of this many bytes, so a range read verifies only
/// the blocks it touches.
pub const BLOCK_BYTES: u64 = 64 * 1024;
/// Longest key.
pub const KEY_BYTES_MAX: usize = 1024;
/// Largest record body of any kind (a directory of a full segment of tiny objects fits).
pub const RECORD_BODY_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// Largest batch a writer may submit at once (configurations are checked against it).
pub const BATCH_BYTES_LIMIT: u64 = 32 * 1024 * 1024;
/// Bytes at the end of a sealed segment.
pub const TRAILER_BYTES: u64 = 64;
/// Most batches a writer has in flight at once (its flusher threads).
pub const BATCHES_IN_FLIGHT_MAX: u64 = 8;
/// The writer makes a segment durable at least once per this many bytes written, even when
/// no acknowledgement waits (a long streamed put), so little is ever unsynced.
pub const UNSYNCED_BYTES_MAX: u64 = BATCH_BYTES_LIMIT;
/// Largest directory body: a segment is sealed before its directory would grow past it.
pub const DIRECTORY_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// What a crash can damage: bytes no completed durable write or `fdatasync` covered — at most
/// [`UNSYNCED_BYTES_MAX`] written plainly plus the batches in flight (at most
/// [`BATCHES_IN_FLIGHT_MAX`], each a full batch plus one record). Valid records further than
/// this beyond the first damaged byte of an unsealed segment mean damage, not a torn tail.
pub const TORN_WINDOW_BYTES: u64 =
    UNSYNCED_BYTES_MAX + BATCHES_IN_FLIGHT_MAX * (2 * BATCH_BYTES_LIMIT) + 4 * PAGE_BYTES;

pub const SEGMENT_MAGIC: [u8; 8] = *b"KUVASEG1";
pub const TRAILER_MAGIC: [u8; 8] = *b"KUVASEAL";
pub const RECORD_MAGIC: [u8; 4] = *b"KvRc";

/// Segment flag: this segment was written by compaction.
pub const SEGMENT_FLAG_COMPACTED: u32 = 1;

/// Rounds `n` up to a multiple of `to` (a power of two).
pub const fn align_up(n: u64, to: u64) -> u64 {
    (n + to - 1) & !(to - 1)
}

/// File name of segment `id`.
pub fn segment_file_name(id: u64) -> String {
    format!("seg-{id:016x}.kvs")
}

/// File name of a segment that compaction is still writing.
pub fn segment_temp_file_name(id: u64) -> String {
    format!("seg-{id:016x}.kvs.tmp")
}

/// Parses a segment file name back into its id.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".kvs")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn crc_seeded(seed: u32, parts: &[&[u8]]) -> u32 {
    let mut hasher = Hasher::new_with_initial(seed);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

/// Seed of a record's header checksum: binds the record to its segment and offset, so a
/// record copied anywhere else fails its check.
pub fn record_seed(segment_id: u64, offset: u64) -> u32 {
    crc_seeded(
        0,
        &[
            &RECORD_MAGIC,
            &segment_id.to_le_bytes(),
            &offset.to_le_bytes(),
        ],
    )
}

fn trailer_seed(segment_id: u64) -> u32 {
    crc_seeded(0, &[&TRAILER_MAGIC, &segment_id.to_le_bytes()])
}

fn segment_header_seed() -> u32 {
    crc_seeded(0, &[&SEGMENT_MAGIC])
}

/// Kinds of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// Fills a gap up to the next page; body is zeros and unchecked.
    Padding = 1,
    /// A whole object in one record.
    Blob = 2,
    /// A piece of a streamed object; findable only through a manifest.
    Chunk = 3,
    /// The record that makes a streamed object findable: lists its chunks.
    Manifest = 4,
    /// Marks a key deleted.
    Tombstone = 5,
    /// A sealed segment's directory of findable records.
    Directory = 6,
}

impl RecordKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => RecordKind::Padding,
            2 => RecordKind::Blob,
            3 => RecordKind::Chunk,
            4 => RecordKind::Manifest,
            5 => RecordKind::Tombstone,
            6 => RecordKind::Directory,
            _ => return None,
        })
    }

    /// Whether the record decides what a key holds (and so is listed in the directory).
    pub fn is_findable(self) -> bool {
        matches!(
            self,
            RecordKind::Blob | RecordKind::Manifest | RecordKind::Tombstone
        )
    }
}

/// What a key belongs to: the archive's content classes. The engine stores them alike; the
/// byte lets operators and tools tell them apart in any segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(pub u8);

impl Namespace {
    /// Padding and directory records only.
    pub const NONE: Namespace = Namespace(0);
    /// DICOM object bytes (a Part-10 instance).
    pub const OBJECT: Namespace = Namespace(1);
    /// Extracted metadata of an object.
    pub const METADATA: Namespace = Namespace(2);
    /// An audit log entry.
    pub const AUDIT: Namespace = Namespace(3);
    /// A clinical document (request, note, report).
    pub const DOCUMENT: Namespace = Namespace(4);
    /// Engine-internal state (indices, checkpoints).
    pub const INTERNAL: Namespace = Namespace(5);
    /// The archive rules' records: documents' registrations, studies' registers and links,
    /// authorizations, disclosure prohibitions, quarantine and IOCM state.
    pub const ARCHIVE: Namespace = Namespace(6);
}

/// The fixed 64 bytes at the start of every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub namespace: Namespace,
    pub key_len: u16,
    pub body_len: u64,
    pub segment_id: u64,
    pub offset: u64,
    /// Store-wide sequence number: orders writes of the same key.
    pub seq: u64,
    /// 0 when first written; +1 each time compaction copies the record.
    pub generation: u32,
    pub flags: u32,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Not enough bytes for what the header declares.
    Truncated { needed: u64, available: u64 },
    /// No record magic: unwritten space or garbage.
    NoMagic,
    /// A header field is impossible.
    Invalid(String),
    /// The header checksum does not match.
    HeaderChecksum,
    /// A body block's checksum does not match.
    BodyChecksum { block: u64 },
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Truncated { needed, available } => {
                write!(
                    f,
                    "record truncated: needs {needed} bytes, {available} present"
                )
            }
            RecordError::NoMagic => write!(f, "no record magic"),
            RecordError::Invalid(why) => write!(f, "invalid record header: {why}"),
            RecordError::HeaderChecksum => write!(f, "record header checksum mismatch"),
            RecordError::BodyChecksum { block } => {
                write!(f, "record body checksum mismatch in block {block}")
            }
        }
    }
}

/// Number of checksum blocks of a body.
pub fn block_count(body_len: u64) -> u64 {
    body_len.div_ceil(BLOCK_BYTES)
}

/// Unseeded CRC-32 of every block of `body`. The header checksum (seeded) covers this table,
/// so blocks need no seed of their own.
pub fn block_crcs(body: &[u8]) -> Vec<u32> {
    body.chunks(BLOCK_BYTES as usize)
        .map(crc32fast::hash)
        .collect()
}

impl RecordHeader {
    /// Bytes from the record start to its body: header, key, checksum table, padding to 8.
    pub fn body_offset(&self) -> u64 {
        let table = if self.kind == RecordKind::Padding {
            0
        } else {
            4 * block_count(self.body_len)
        };
        align_up(
            RECORD_HEADER_BYTES + u64::from(self.key_len) + table,
            RECORD_ALIGN_BYTES,
        )
    }

    /// Length of the prefix the header checksum covers: header, key and checksum table.
    pub fn checked_prefix_len(&self) -> u64 {
        let table = if self.kind == RecordKind::Padding {
            0
        } else {
            4 * block_count(self.body_len)
        };
        RECORD_HEADER_BYTES + u64::from(self.key_len) + table
    }

    /// Total bytes the record occupies, padding included.
    pub fn record_len(&self) -> u64 {
        self.body_offset() + align_up(self.body_len, RECORD_ALIGN_BYTES)
    }

    fn encode_fixed(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&RECORD_MAGIC);
        out[4] = self.kind as u8;
        out[5] = self.namespace.0;
        out[6..8].copy_from_slice(&self.key_len.to_le_bytes());
        out[8..16].copy_from_slice(&self.body_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.offset.to_le_bytes());
        out[32..40].copy_from_slice(&self.seq.to_le_bytes());
        out[40..44].copy_from_slice(&self.generation.to_le_bytes());
        out[44..48].copy_from_slice(&self.flags.to_le_bytes());
        out[48..60].fill(0);
    }

    /// Parses and sanity-checks the fixed 64 bytes, and that the record sits where it says.
    /// The checksum is checked by [`verify_prefix`] once the key and table are at hand.
    pub fn parse(
        bytes: &[u8],
        expect_segment_id: u64,
        expect_offset: u64,
    ) -> Result<Self, RecordError> {
        if bytes.len() < RECORD_HEADER_BYTES as usize {
            return Err(RecordError::Truncated {
                needed: RECORD_HEADER_BYTES,
                available: bytes.len() as u64,
            });
        }
        if bytes[0..4] != RECORD_MAGIC {
            return Err(RecordError::NoMagic);
        }
        let kind = RecordKind::from_u8(bytes[4])
            .ok_or_else(|| RecordError::Invalid(format!("unknown kind {}", bytes[4])))?;
        let header = RecordHeader {
            kind,
            namespace: Namespace(bytes[5]),
            key_len: le_u16(bytes, 6),
            body_len: le_u64(bytes, 8),
            segment_id: le_u64(bytes, 16),
            offset: le_u64(bytes, 24),
            seq: le_u64(bytes, 32),
            generation: le_u32(bytes, 40),
            flags: le_u32(bytes, 44),
        };
        if usize::from(header.key_len) > KEY_BYTES_MAX {
            return Err(RecordError::Invalid(format!(
                "key length {} over {KEY_BYTES_MAX}",
                header.key_len
            )));
        }
        if header.body_len > RECORD_BODY_BYTES_MAX {
            return Err(RecordError::Invalid(format!(
                "body length {} over {RECORD_BODY_BYTES_MAX}",
                header.body_len
            )));
        }
        if header.segment_id != expect_segment_id || header.offset != expect_offset {
            return Err(RecordError::Invalid(format!(
                "record claims segment {} offset {}",
                header.segment_id, header.offset
            )));
        }
        if kind == RecordKind::Padding && (header.key_len != 0 || header.body_len > 2 * PAGE_BYTES)
        {
            return Err(RecordError::Invalid("padding record too long".into()));
        }
        Ok(header)
    }
}

/// Checks the header checksum over `prefix` (the first [`RecordHeader::checked_prefix_len`]
/// bytes of the record) and returns the key and the block checksum table.
pub fn verify_prefix<'a>(
    header: &RecordHeader,
    prefix: &'a [u8],
) -> Result<(&'a [u8], Vec<u32>), RecordError> {
    let need = header.checked_prefix_len();
    if (prefix.len() as u64) < need {
        return Err(RecordError::Truncated {
            needed: need,
            available: prefix.len() as u64,
        });
    }
    let stored = le_u32(prefix, 60);
    let seed = record_seed(header.segment_id, header.offset);
    let computed = crc_seeded(seed, &[&prefix[0..60], &prefix[64..need as usize]]);
    if stored != computed {
        return Err(RecordError::HeaderChecksum);
    }
    let key_end = 64 + usize::from(header.key_len);
    let key = &prefix[64..key_end];
    let crcs = prefix[key_end..need as usize]
        .chunks_exact(4)
        .map(|c| le_u32(c, 0))
        .collect();
    Ok((key, crcs))
}

/// Verifies the body blocks `first_block..first_block + n` given their bytes (`blocks` starts
/// at the first block's start and covers whole blocks, the last possibly short).
pub fn verify_blocks(crcs: &[u32], first_block: u64, blocks: &[u8]) -> Result<(), RecordError> {
    for (i, block) in blocks.chunks(BLOCK_BYTES as usize).enumerate() {
        let index = first_block + i as u64;
        let expected = crcs
            .get(index as usize)
            .copied()
            .ok_or(RecordError::BodyChecksum { block: index })?;
        if crc32fast::hash(block) != expected {
            return Err(RecordError::BodyChecksum { block: index });
        }
    }
    Ok(())
}

/// Writes a complete record into `out` (exactly `header.record_len()` long), every byte.
/// Block checksums are computed right after each block is copied, while it is still in cache
/// (one pass over memory, not two).
pub fn encode_record(out: &mut [u8], header: &RecordHeader, key: &[u8], body: &[u8]) {
    debug_assert_eq!(out.len() as u64, header.record_len());
    debug_assert_eq!(key.len(), usize::from(header.key_len));
    debug_assert_eq!(body.len() as u64, header.body_len);
    header.encode_fixed(&mut out[0..64]);
    let key_end = 64 + key.len();
    out[64..key_end].copy_from_slice(key);
    let body_at = header.body_offset() as usize;
    let table_end = if header.kind == RecordKind::Padding {
        key_end
    } else {
        key_end + 4 * block_count(header.body_len) as usize
    };
    // Alignment gaps are zeroed here, so callers may reuse buffers without clearing them.
    out[table_end..body_at].fill(0);
    out[body_at + body.len()..].fill(0);
    let block = BLOCK_BYTES as usize;
    for (i, src) in body.chunks(block).enumerate() {
        let dst = &mut out[body_at + i * block..body_at + i * block + src.len()];
        dst.copy_from_slice(src);
        if header.kind != RecordKind::Padding {
            let crc = crc32fast::hash(dst);
            let at = key_end + 4 * i;
            out[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let seed = record_seed(header.segment_id, header.offset);
    let crc = crc_seeded(seed, &[&out[0..60], &out[64..table_end]]);
    out[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes of padding to put after `end` so that the next batch starts page-aligned (0, or at
/// least one record header).
pub fn padding_bytes(end: u64) -> u64 {
    let gap = align_up(end, PAGE_BYTES) - end;
    if gap == 0 || gap >= RECORD_HEADER_BYTES {
        gap
    } else {
        gap + PAGE_BYTES
    }
}

/// Writes a padding record filling all of `out` (at least 64 bytes, a multiple of 8).
pub fn encode_padding(out: &mut [u8], segment_id: u64, offset: u64) {
    debug_assert!(out.len() as u64 >= RECORD_HEADER_BYTES && out.len() % 8 == 0);
    let header = RecordHeader {
        kind: RecordKind::Padding,
        namespace: Namespace::NONE,
        key_len: 0,
        body_len: out.len() as u64 - RECORD_HEADER_BYTES,
        segment_id,
        offset,
        seq: 0,
        generation: 0,
        flags: 0,
    };
    header.encode_fixed(&mut out[0..64]);
    out[64..].fill(0);
    let crc = crc_seeded(record_seed(segment_id, offset), &[&out[0..60]]);
    out[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// The first 64 bytes of the 4096-byte segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub format_version: u32,
    pub segment_id: u64,
    pub created_unix_ms: u64,
    pub segment_size_bytes_max: u64,
    pub flags: u32,
}

impl SegmentHeader {
    pub fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        out[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        out[32..40].copy_from_slice(&self.segment_size_bytes_max.to_le_bytes());
        out[40..44].copy_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        out[44..48].copy_from_slice(&self.flags.to_le_bytes());
        out[48..60].fill(0);
        let crc = crc_seeded(segment_header_seed(), &[&out[0..60]]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
    }

    /// The format version of a header whose magic and checksum are intact, whatever it is.
    pub fn peek_version(bytes: &[u8]) -> Option<u32> {
        if bytes.len() < 64 || bytes[0..8] != SEGMENT_MAGIC {
            return None;
        }
        let crc = crc_seeded(segment_header_seed(), &[&bytes[0..60]]);
        (crc == le_u32(bytes, 60)).then(|| le_u32(bytes, 8))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 64 {
            return Err(format!("segment header truncated ({} bytes)", bytes.len()));
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err("not a Kuvasto segment (bad magic)".into());
        }
        let crc = crc_seeded(segment_header_seed(), &[&bytes[0..60]]);
        if crc != le_u32(bytes, 60) {
            return Err("segment header checksum mismatch".into());
        }
        let format_version = le_u32(bytes, 8);
        if format_version != FORMAT_VERSION {
            return Err(format!(
                "segment format version {format_version}; this build reads {FORMAT_VERSION}"
            ));
        }
        if u64::from(le_u32(bytes, 12)) != SEGMENT_HEADER_BYTES
            || u64::from(le_u32(bytes, 40)) != BLOCK_BYTES
        {
            return Err("segment header declares unsupported sizes".into());
        }
        Ok(SegmentHeader {
            format_version,
            segment_id: le_u64(bytes, 16),
            created_unix_ms: le_u64(bytes, 24),
            segment_size_bytes_max: le_u64(bytes, 32),
            flags: le_u32(bytes, 44),
        })
    }
}

/// The last 64 bytes of a sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub segment_id: u64,
    /// End of the data records (where the directory record starts).
    pub records_end: u64,
    pub directory_offset: u64,
    pub directory_len: u64,
    pub entry_count: u32,
}

impl Trailer {
    pub fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&TRAILER_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].fill(0);
        out[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.records_end.to_le_bytes());
        out[32..40].copy_from_slice(&self.directory_offset.to_le_bytes());
        out[40..48].copy_from_slice(&self.directory_len.to_le_bytes());
        out[48..52].copy_from_slice(&self.entry_count.to_le_bytes());
        out[52..60].fill(0);
        let crc = crc_seeded(trailer_seed(self.segment_id), &[&out[0..60]]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
    }

    /// `Ok(None)`: no trailer magic (the segment is not sealed). `Err`: a trailer that is
    /// damaged or does not fit the file.
    pub fn decode(bytes: &[u8], segment_id: u64, file_len: u64) -> Result<Option<Self>, String> {
        if bytes.len() < 64 || bytes[0..8] != TRAILER_MAGIC {
            return Ok(None);
        }
        let crc = crc_seeded(trailer_seed(segment_id), &[&bytes[0..60]]);
        if crc != le_u32(bytes, 60) {
            return Err("segment trailer checksum mismatch".into());
        }
        let version = le_u32(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(format!("trailer format version {version} unsupported"));
        }
        let trailer = Trailer {
            segment_id: le_u64(bytes, 16),
            records_end: le_u64(bytes, 24),
            directory_offset: le_u64(bytes, 32),
            directory_len: le_u64(bytes, 40),
            entry_count: le_u32(bytes, 48),
        };
        let directory_end = trailer.directory_offset.checked_add(trailer.directory_len);
        if trailer.segment_id != segment_id
            || trailer.records_end < SEGMENT_HEADER_BYTES
            || trailer.directory_offset < trailer.records_end
            || directory_end.is_none_or(|end| end > file_len.saturating_sub(TRAILER_BYTES))
        {
            return Err("segment trailer fields do not fit the file".into());
        }
        Ok(Some(trailer))
    }
}

/// One findable record of a sealed segment, as listed in its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub namespace: Namespace,
    pub kind: RecordKind,
    pub generation: u32,
    pub seq: u64,
    pub offset: u64,
    /// Bytes of the object (0 for tombstones).
    pub object_len: u64,
    pub key: Vec<u8>,
}

/// Bytes of a directory entry before its key.
pub const DIR_ENTRY_FIXED_BYTES: usize = 32;

/// Bytes one entry takes in a directory body.
pub fn dir_entry_bytes(key_len: usize) -> u64 {
    (DIR_ENTRY_FIXED_BYTES + key_len) as u64
}

pub fn encode_directory(entries: &[DirEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * (DIR_ENTRY_FIXED_BYTES + 64));
    for e in entries {
        out.push(e.namespace.0);
        out.push(e.kind as u8);
        out.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
        out.extend_from_slice(&e.generation.to_le_bytes());
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.object_len.to_le_bytes());
        out.extend_from_slice(&e.key);
    }
    out
}

/// Decodes the directory entry at the start of `body` (a directory body from some entry's
/// start on); returns it and the bytes it takes.
pub fn decode_directory_entry(body: &[u8]) -> Result<(DirEntry, usize), String> {
    if body.len() < DIR_ENTRY_FIXED_BYTES {
        return Err("directory entry truncated".into());
    }
    let kind = RecordKind::from_u8(body[1])
        .filter(|k| k.is_findable())
        .ok_or_else(|| format!("directory entry of kind {}", body[1]))?;
    let key_len = usize::from(le_u16(body, 2));
    if key_len > KEY_BYTES_MAX || body.len() < DIR_ENTRY_FIXED_BYTES + key_len {
        return Err("directory entry key truncated or too long".into());
    }
    let entry = DirEntry {
        namespace: Namespace(body[0]),
        kind,
        generation: le_u32(body, 4),
        seq: le_u64(body, 8),
        offset: le_u64(body, 16),
        object_len: le_u64(body, 24),
        key: body[DIR_ENTRY_FIXED_BYTES..DIR_ENTRY_FIXED_BYTES + key_len].to_vec(),
    };
    Ok((entry, DIR_ENTRY_FIXED_BYTES + key_len))
}

pub fn decode_directory(mut body: &[u8], expected_entries: u32) -> Result<Vec<DirEntry>, String> {
    let mut entries = Vec::with_capacity((expected_entries as usize).min(1 << 20));
    while !body.is_empty() {
        let (entry, used) = decode_directory_entry(body)?;
        entries.push(entry);
        body = &body[used..];
    }
    if entries.len() != expected_entries as usize {
        return Err(format!(
            "directory lists {} entries, trailer says {expected_entries}",
            entries.len()
        ));
    }
    Ok(entries)
}

/// Where one chunk of a streamed object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub segment_id: u64,
    pub offset: u64,
    pub len: u64,
}

/// Bytes of the manifest body before the chunk list.
pub const MANIFEST_FIXED_BYTES: usize = 16;

pub fn encode_manifest(total_len: u64, chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MANIFEST_FIXED_BYTES + chunks.len() * 24);
    out.extend_from_slice(&total_len.to_le_bytes());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for c in chunks {
        out.extend_from_slice(&c.segment_id.to_le_bytes());
        out.extend_from_slice(&c.offset.to_le_bytes());
        out.extend_from_slice(&c.len.to_le_bytes());
    }
    out
}

pub fn decode_manifest(body: &[u8]) -> Result<(u64, Vec<ChunkRef>), String> {
    if body.len() < MANIFEST_FIXED_BYTES {
        return Err("manifest truncated".into());
    }
    let total_len = le_u64(body, 0);
    let count = le_u32(body, 8) as usize;
    let list = &body[MANIFEST_FIXED_BYTES..];
    if list.len() != count * 24 {
        return Err(format!(
            "manifest declares {count} chunks in {} bytes",
            list.len()
        ));
    }
    let chunks: Vec<ChunkRef> = list
        .chunks_exact(24)
        .map(|c| ChunkRef {
            segment_id: le_u64(c, 0),
            offset: le_u64(c, 8),
            len: le_u64(c, 16),
        })
        .collect();
    let sum = chunks
        .iter()
        .try_fold(0u64, |acc, c| acc.checked_add(c.len))
        .ok_or("manifest chunk lengths overflow")?;
    if sum != total_len {
        return Err(format!("manifest chunks sum to {sum}, not {total_len}"));
    }
    Ok((total_len, chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: RecordKind, key: &[u8], body_len: u64) -> RecordHeader {
        RecordHeader {
            kind,
            namespace: Namespace::OBJECT,
            key_len: key.len() as u16,
            body_len,
            segment_id: 7,
            offset: 4096,
            seq: 42,
            generation: 0,
            flags: 0,
        }
    }

    #[test]
    fn record_round_trips_and_binds_to_its_place() {
        let key = b"1.2.3.4";
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let h = header(RecordKind::Blob, key, body.len() as u64);
        let mut out = vec![0u8; h.record_len() as usize];
        encode_record(&mut out, &h, key, &body);
        let parsed = RecordHeader::parse(&out, 7, 4096).expect("parses");
        assert_eq!(parsed, h);
        let (k, crcs) =
            verify_prefix(&parsed, &out[..parsed.checked_prefix_len() as usize]).expect("crc");
        assert_eq!(k, key);
        assert_eq!(crcs.len(), 4);
        let body_at = parsed.body_offset() as usize;
        verify_blocks(&crcs, 0, &out[body_at..body_at + body.len()]).expect("blocks");
        // The same bytes claimed at another offset or segment fail.
        assert!(RecordHeader::parse(&out, 7, 8192).is_err());
        assert!(RecordHeader::parse(&out, 8, 4096).is_err());
        // Rewriting the place fields without re-sealing fails the seeded checksum.
        let mut moved = out.clone();
        moved[24..32].copy_from_slice(&8192u64.to_le_bytes());
        let moved_h = RecordHeader::parse(&moved, 7, 8192).expect("structure ok");
        assert_eq!(
            verify_prefix(&moved_h, &moved[..moved_h.checked_prefix_len() as usize]),
            Err(RecordError::HeaderChecksum)
        );
        // A flipped body byte fails its block only.
        let mut flipped = out.clone();
        flipped[body_at + 70_000] ^= 1;
        assert_eq!(
            verify_blocks(&crcs, 0, &flipped[body_at..body_at + body.len()]),
            Err(RecordError::BodyChecksum { block: 1 })
        );
    }

    #[test]
    fn trailer_and_segment_header_round_trip() {
        let t = Trailer {
            segment_id: 3,
            records_end: 8192,
            directory_offset: 8192,
            directory_len: 128,
            entry_count: 2,
        };
        let mut out = [0u8; 64];
        t.encode(&mut out);
        assert_eq!(Trailer::decode(&out, 3, 16384), Ok(Some(t)));
        assert!(Trailer::decode(&out, 4, 16384).is_err());
        assert!(Trailer::decode(&out, 3, 8192).is_err());
        let s = SegmentHeader {
            format_version: FORMAT_VERSION,
            segment_id: 9,
            created_unix_ms: 1,
            segment_size_bytes_max: 1 << 30,
            flags: 0,
        };
        let mut out = [0u8; 64];
        s.encode(&mut out);
        assert_eq!(SegmentHeader::decode(&out), Ok(s));
        out[20] ^= 1;
        assert!(SegmentHeader::decode(&out).is_err());
    }

    #[test]
    fn manifest_and_directory_round_trip() {
        let chunks = [
            ChunkRef {
                segment_id: 1,
                offset: 4096,
                len: 10,
            },
            ChunkRef {
                segment_id: 2,
                offset: 8192,
                len: 5,
            },
        ];
        let body = encode_manifest(15, &chunks);
        assert_eq!(decode_manifest(&body), Ok((15, chunks.to_vec())));
        assert!(decode_manifest(&encode_manifest(16, &chunks)).is_err());
        let entries = vec![DirEntry {
            namespace: Namespace::AUDIT,
            kind: RecordKind::Tombstone,
            generation: 1,
            seq: 99,
            offset: 4096,
            object_len: 0,
            key: b"k".to_vec(),
        }];
        let body = encode_directory(&entries);
        assert_eq!(decode_directory(&body, 1), Ok(entries));
        assert!(decode_directory(&body, 2).is_err());
        assert!(decode_directory(&body[..10], 1).is_err());
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(
            parse_segment_file_name(&segment_file_name(0xabc)),
            Some(0xabc)
        );
        assert_eq!(parse_segment_file_name(&segment_temp_file_name(1)), None);
        assert_eq!(parse_segment_file_name("seg-zz.kvs"), None);
    }
}
