//! Scrubbing a store ([`Store::verify`](crate::Store::verify)): every record of every segment
//! and every block of every index run checked against its checksums now, with every damaged
//! place listed and, where it can be told, the keys it affects. For `kuvasto verify`.
//!
//! - **Sealed segments**, read through their mapping: the segment header, every record of
//!   `[4096, records_end)` (header checksum, seeded with the segment and offset; every body
//!   block; padding headers; manifests decoded and their chunks resolved), the directory record
//!   (and that its entries agree, field by field, with the findable records found), the zeros
//!   after it, and the trailer (`docs/format.md`, section 7 G).
//! - **The unsealed segment**, read with `pread` up to its durable end (what the store has
//!   acknowledged; bytes past it may be a batch in flight).
//! - **Index runs**: header, block-CRC table and every 4 KiB block
//!   ([`Run::scrub`](crate::index::run::Run::scrub)); they are derived data, and
//!   [`Store::repair_indices`](crate::Store::repair_indices) sets damaged ones aside and
//!   rebuilds them from the segments.
//!
//! Nothing is written and no lock is held for longer than a lookup, so a running store keeps
//! serving. Memory is bounded: records are read a piece at a time, directories entry by entry,
//! and the lists of damage are capped ([`DAMAGE_LISTED_MAX`], [`KEYS_LISTED_MAX`]).
//!
//! Keys are named from the damaged record itself when its header checksum holds (a damaged
//! body block), otherwise from the directory of its sealed segment, from manifests whose chunks
//! lie in the damaged range, and finally from the locator (the current version of every key).

use crate::error::{Error, Result};
use crate::index::run::RunProblem;
use crate::segment::format::{
    align_up, decode_directory_entry, verify_prefix, ChunkRef, DirEntry, Namespace, RecordError,
    RecordHeader, RecordKind, SegmentHeader, Trailer, BLOCK_BYTES, MANIFEST_FIXED_BYTES,
    PAGE_BYTES, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RECORD_MAGIC, SEGMENT_HEADER_BYTES,
    TRAILER_BYTES,
};
use crate::segment::reader::{read_record, SegmentHandle};
use crate::segment::recovery::CorruptionFound;
use crate::store::Shared;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most damaged places a report lists; more are counted in
/// [`VerifyReport::damage_unlisted`].
pub const DAMAGE_LISTED_MAX: usize = 10_000;
/// Most keys listed per damaged place; more are counted in [`SegmentDamage::keys_unlisted`].
pub const KEYS_LISTED_MAX: usize = 1_000;
/// Bytes of a record body read and checked at a time from an unsealed segment.
const PIECE_BYTES: u64 = 16 * BLOCK_BYTES;
/// Bytes of a sealed segment asked to be read ahead at a time (the mapping has no readahead).
const READ_AHEAD_BYTES: u64 = 8 << 20;
/// Progress is reported at least this often (in bytes checked).
const PROGRESS_STEP_BYTES: u64 = 4 << 20;
/// Bytes searched at a time for the next valid record after a damaged header.
const SEARCH_WINDOW_BYTES: u64 = 64 * 1024;
/// Block numbers named per damaged record body; the rest are counted.
const BLOCKS_NAMED_MAX: usize = 8;

/// How far a scrub has come, for a progress bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Bytes checked so far (segments, then index runs).
    pub bytes_done: u64,
    /// Bytes to check: sealed segments whole, the unsealed one to its durable end, and the
    /// index runs.
    pub bytes_total: u64,
    pub segments_done: usize,
    pub segments_total: usize,
    pub runs_done: usize,
    pub runs_total: usize,
}

/// A key that a damaged place affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffectedKey {
    pub namespace: Namespace,
    pub key: Vec<u8>,
    /// The kind of the damaged record, when known (a chunk belongs to a streamed object).
    pub kind: Option<RecordKind>,
    /// The sequence number of the damaged record (or of the manifest of a damaged chunk).
    pub seq: Option<u64>,
    /// Whether the damaged record is (part of) the key's current version: `Some(false)` for a
    /// version that was replaced or deleted since (garbage: nothing is lost), `None` when it
    /// cannot be told.
    pub current: Option<bool>,
}

impl AffectedKey {
    /// The key as text (keys of instances are SOP Instance UIDs); bytes that are not UTF-8
    /// are replaced.
    pub fn key_text(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

/// A damaged place in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDamage {
    pub segment_id: u64,
    /// The segment's file name (in the data directory).
    pub file: String,
    /// File offset where the damaged bytes start (the record, the block, the trailer...).
    pub offset: u64,
    /// Offset of the record the damage is in, when it is in a record.
    pub record_offset: Option<u64>,
    /// Bytes that could not be used from `offset` on (a record, or up to the next record
    /// found after damage), when known.
    pub len: Option<u64>,
    /// What failed: "record header checksum", "body block 3 checksum", "trailer: ...".
    pub what: String,
    /// The keys whose records lie in the damaged bytes, where they can be told.
    pub keys: Vec<AffectedKey>,
    pub keys_unlisted: u64,
}

/// A damaged place in an index run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDamage {
    /// The run file's path.
    pub file: String,
    pub offset: u64,
    /// The 4 KiB block, when a block failed.
    pub block: Option<u64>,
    pub what: String,
}

/// What [`Store::verify`](crate::Store::verify) found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub segments_checked: usize,
    pub sealed_segments_checked: usize,
    /// Segment bytes checked (sealed files whole, unsealed ones to their durable end).
    pub segment_bytes_checked: u64,
    /// Records whose checks passed (padding and directory records included).
    pub records_checked: u64,
    /// Damaged places in segments, in segment and offset order.
    pub segment_damage: Vec<SegmentDamage>,
    /// Damaged places beyond [`DAMAGE_LISTED_MAX`].
    pub damage_unlisted: u64,
    /// Damage that opening the store found and that the scrub did not find again (the store
    /// sealed such a segment anew, e.g. after its trailer was cut off), with its place.
    pub found_at_open: Vec<CorruptionFound>,
    /// Torn tails cut when the store was opened: bytes never acknowledged (a crash), not damage.
    pub torn_tails_cut_at_open: Vec<(u64, u64)>,
    pub runs_checked: usize,
    pub run_bytes_checked: u64,
    /// Paths of the runs with damage.
    pub damaged_runs: Vec<String>,
    pub run_damage: Vec<RunDamage>,
    /// Damaged run blocks beyond those listed.
    pub run_damage_unlisted: u64,
    /// Runs that failed their checks when the store was opened: set aside (`*.kvi.bad`) and
    /// rebuilt from the segments then. (path, reason)
    pub runs_set_aside_at_open: Vec<(String, String)>,
}

impl VerifyReport {
    /// No damage in any segment, now or found at open.
    pub fn segments_clean(&self) -> bool {
        self.segment_damage.is_empty() && self.damage_unlisted == 0 && self.found_at_open.is_empty()
    }

    /// No damage in any open index run.
    pub fn runs_clean(&self) -> bool {
        self.damaged_runs.is_empty()
    }

    pub fn is_clean(&self) -> bool {
        self.segments_clean() && self.runs_clean()
    }
}

/// What [`Store::repair_indices`](crate::Store::repair_indices) did.
#[derive(Debug, Clone, Default)]
pub struct RepairReport {
    pub runs_checked: usize,
    /// Damaged runs set aside: (path of the run, path it was renamed to).
    pub runs_set_aside: Vec<(String, String)>,
    /// Sealed segments indexed again into new runs.
    pub segments_reindexed: Vec<u64>,
    /// Runs open after the repair.
    pub runs_after: usize,
    /// Damage still found in the runs after the repair (none, unless the disk keeps failing).
    pub still_damaged: Vec<RunDamage>,
}

/// Scrubs every segment and index run of the store behind `shared`; see the module docs.
pub(crate) fn verify(
    shared: &Shared,
    catalog: Option<&crate::index::catalog::Catalog>,
    progress: &mut dyn FnMut(VerifyProgress),
) -> Result<VerifyReport> {
    let segments: BTreeMap<u64, Arc<SegmentHandle>> = shared.read_segments().clone();
    let runs = catalog.map(|c| c.runs()).unwrap_or_default();
    // The end to check each segment to, fixed now: sealed ones whole, the unsealed one to its
    // durable end (it may grow meanwhile; what comes later is checked next time).
    let ends: Vec<(Arc<SegmentHandle>, u64)> = segments
        .values()
        .map(|s| (s.clone(), s.durable_end()))
        .collect();
    let run_bytes: u64 = runs.iter().map(|r| r.counts().file_bytes).sum();
    let mut scrub = Scrub {
        shared,
        segments: &segments,
        report: VerifyReport::default(),
        ranges: BTreeMap::new(),
        progress: VerifyProgress {
            bytes_total: ends.iter().map(|(_, end)| end).sum::<u64>() + run_bytes,
            segments_total: ends.len(),
            runs_total: runs.len(),
            ..VerifyProgress::default()
        },
        reported_at: 0,
        callback: progress,
    };
    scrub.tell(true);
    for (segment, end) in &ends {
        let before = scrub.progress.bytes_done;
        scrub.segment(segment, *end);
        scrub.report.segments_checked += 1;
        let checked = if segment.is_sealed() {
            scrub.report.sealed_segments_checked += 1;
            segment.durable_end()
        } else {
            *end
        };
        scrub.report.segment_bytes_checked += checked;
        scrub.progress.segments_done += 1;
        scrub.progress.bytes_done = before + checked;
        scrub.progress.bytes_total = scrub.progress.bytes_total.max(scrub.progress.bytes_done);
        scrub.tell(true);
    }
    scrub.keys_from_locator();
    for run in &runs {
        let path = run.path().display().to_string();
        let mut done = 0u64;
        let result = {
            let scrub = &mut scrub;
            run.scrub(&mut |bytes| {
                done += bytes;
                scrub.progress.bytes_done += bytes;
                scrub.tell(false);
            })
        };
        scrub.report.runs_checked += 1;
        scrub.report.run_bytes_checked += done;
        scrub.progress.runs_done += 1;
        scrub.tell(true);
        if !result.is_clean() {
            scrub.report.damaged_runs.push(path.clone());
            scrub.report.run_damage_unlisted += result.blocks_unlisted;
            for RunProblem {
                offset,
                block,
                what,
            } in result.problems
            {
                scrub.report.run_damage.push(RunDamage {
                    file: path.clone(),
                    offset,
                    block,
                    what,
                });
            }
        }
    }
    Ok(scrub.report)
}

/// Damage of `segment` from `start` to `end` (exclusive), listed as entry `index`.
type Ranges = BTreeMap<(u64, u64), (u64, usize)>;

struct Scrub<'a> {
    shared: &'a Shared,
    segments: &'a BTreeMap<u64, Arc<SegmentHandle>>,
    report: VerifyReport,
    /// Damaged byte ranges of listed damage, to name the keys of records in them.
    ranges: Ranges,
    progress: VerifyProgress,
    reported_at: u64,
    callback: &'a mut dyn FnMut(VerifyProgress),
}

/// Why the record at an offset failed.
struct Failed {
    what: String,
    /// Where in the record the damage is (a body block), if not at its start.
    at: Option<u64>,
    /// The record's header, key and length, when its header checksum held.
    readable: Option<(RecordHeader, Vec<u8>)>,
}

/// A record that passed every check.
struct Passed {
    header: RecordHeader,
    key: Vec<u8>,
    object_len: u64,
}

/// Reads `len` bytes at `offset` of `segment` (borrowed from the mapping once sealed).
fn read(
    segment: &SegmentHandle,
    offset: u64,
    len: u64,
) -> std::result::Result<Cow<'_, [u8]>, String> {
    segment.bytes(offset, len).map_err(|e| match e {
        Error::Io { source, .. } => format!("read error: {source}"),
        Error::Corruption { reason, .. } => reason,
        other => other.to_string(),
    })
}

fn header_what(e: &RecordError) -> String {
    match e {
        RecordError::HeaderChecksum => "record header checksum".into(),
        RecordError::NoMagic => "record header: no record magic".into(),
        RecordError::Invalid(why) => format!("record header: {why}"),
        RecordError::Truncated { needed, available } => {
            format!("record header: needs {needed} bytes, {available} present")
        }
        RecordError::BodyChecksum { block } => format!("body block {block} checksum"),
    }
}

/// A directory body read entry by entry (bounded memory, whatever its size).
struct DirIter<'m> {
    body: &'m [u8],
    expected: u32,
    seen: u32,
    peeked: Option<DirEntry>,
    /// Where the body stops making sense, if it does.
    error: Option<String>,
}

impl<'m> DirIter<'m> {
    fn new(body: &'m [u8], expected: u32) -> Self {
        let mut it = DirIter {
            body,
            expected,
            seen: 0,
            peeked: None,
            error: None,
        };
        it.advance();
        it
    }

    fn advance(&mut self) {
        self.peeked = None;
        if self.body.is_empty() || self.error.is_some() {
            return;
        }
        match decode_directory_entry(self.body) {
            Ok((entry, used)) => {
                self.body = &self.body[used..];
                self.seen += 1;
                self.peeked = Some(entry);
            }
            Err(e) => self.error = Some(format!("entry {}: {e}", self.seen)),
        }
    }

    fn peek_offset(&self) -> Option<u64> {
        self.peeked.as_ref().map(|e| e.offset)
    }

    fn take(&mut self) -> Option<DirEntry> {
        let out = self.peeked.take();
        self.advance();
        out
    }
}

impl Scrub<'_> {
    fn tell(&mut self, force: bool) {
        if force || self.progress.bytes_done >= self.reported_at + PROGRESS_STEP_BYTES {
            self.reported_at = self.progress.bytes_done;
            (self.callback)(self.progress);
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.progress.bytes_done += bytes;
        self.tell(false);
    }

    /// Lists a damaged place; returns its index, or `None` past the cap.
    fn damage(
        &mut self,
        segment: &SegmentHandle,
        offset: u64,
        record_offset: Option<u64>,
        range: Option<(u64, u64)>,
        what: String,
        keys: Vec<AffectedKey>,
    ) -> Option<usize> {
        if self.report.segment_damage.len() >= DAMAGE_LISTED_MAX {
            self.report.damage_unlisted += 1;
            return None;
        }
        let index = self.report.segment_damage.len();
        self.report.segment_damage.push(SegmentDamage {
            segment_id: segment.id,
            file: segment.file.name().to_string(),
            offset,
            record_offset,
            len: range.map(|(start, end)| end - start),
            what,
            keys: Vec::new(),
            keys_unlisted: 0,
        });
        if let Some((start, end)) = range {
            if end > start {
                self.ranges.insert((segment.id, start), (end, index));
            }
        }
        for key in keys {
            self.add_key(index, key);
        }
        Some(index)
    }

    /// Adds `key` to damage `index`, once per (namespace, key): a damaged chunk is named both
    /// by its own header and by its manifest, and the key is current if any of its records
    /// there is.
    fn add_key(&mut self, index: usize, key: AffectedKey) {
        let damage = &mut self.report.segment_damage[index];
        if let Some(known) = damage
            .keys
            .iter_mut()
            .find(|k| k.namespace == key.namespace && k.key == key.key)
        {
            known.current = match (known.current, key.current) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (None, other) | (other, None) => other,
                (Some(false), Some(false)) => Some(false),
            };
            if known.kind == Some(RecordKind::Chunk) {
                // The manifest's kind and seq say which version of the object it is.
                known.kind = key.kind;
                known.seq = key.seq;
            }
            return;
        }
        if damage.keys.len() < KEYS_LISTED_MAX {
            damage.keys.push(key);
        } else {
            damage.keys_unlisted += 1;
        }
    }

    /// The listed damage whose range holds (`segment_id`, `offset`).
    fn damage_at(&self, segment_id: u64, offset: u64) -> Option<usize> {
        let (&(s, _), &(end, index)) = self.ranges.range(..=(segment_id, offset)).next_back()?;
        (s == segment_id && offset < end).then_some(index)
    }

    /// Whether (`namespace`, `key`)'s current version is the record at (`segment`, `offset`).
    fn is_current(&self, namespace: Namespace, key: &[u8], segment_id: u64, offset: u64) -> bool {
        self.shared
            .read_index()
            .get(namespace, key)
            .is_some_and(|e| e.segment_id == segment_id && e.offset == offset)
    }

    /// The affected key of a damaged record whose header is readable.
    fn key_of(&self, segment: &SegmentHandle, header: &RecordHeader, key: &[u8]) -> AffectedKey {
        let current = match header.kind {
            RecordKind::Chunk => {
                self.chunk_is_current(header.namespace, key, segment.id, header.offset)
            }
            _ => Some(self.is_current(header.namespace, key, segment.id, header.offset)),
        };
        AffectedKey {
            namespace: header.namespace,
            key: key.to_vec(),
            kind: Some(header.kind),
            seq: Some(header.seq),
            current,
        }
    }

    /// Whether the key's current version is a manifest listing the chunk at
    /// (`segment_id`, `offset`); `None` when the manifest cannot be read.
    fn chunk_is_current(
        &self,
        namespace: Namespace,
        key: &[u8],
        segment_id: u64,
        offset: u64,
    ) -> Option<bool> {
        let entry = self.shared.read_index().get(namespace, key)?;
        if entry.kind != RecordKind::Manifest {
            return Some(false);
        }
        let lookup = |id: u64| self.segments.get(&id).cloned();
        let object = crate::segment::reader::Object::open(
            &lookup,
            entry.segment_id,
            entry.offset,
            namespace,
            key,
            entry.seq,
        );
        match object {
            Ok(Ok(object)) => Some(
                object
                    .parts
                    .iter()
                    .any(|p| p.segment.id == segment_id && p.record.header.offset == offset),
            ),
            _ => None,
        }
    }

    fn segment(&mut self, segment: &SegmentHandle, end: u64) {
        match segment.sealed_bytes() {
            Some(map) => {
                // A page the device cannot deliver reads as zeros from then on (so its
                // records fail their checks) and is named here as what it is.
                if let Err(address) = crate::io::media::guarded(|| self.sealed(segment, map)) {
                    let offset = (address - map.as_ptr() as usize) as u64 / 4096 * 4096;
                    self.damage(
                        segment,
                        offset,
                        None,
                        None,
                        format!("media error: the device could not deliver the page at offset {offset} (SIGBUS)"),
                        Vec::new(),
                    );
                }
            }
            None => self.unsealed(segment, end),
        }
    }

    fn segment_header(&mut self, segment: &SegmentHandle) {
        let problem = match read(segment, 0, RECORD_HEADER_BYTES) {
            Ok(bytes) => match SegmentHeader::decode(&bytes) {
                Ok(h) if h.segment_id == segment.id => None,
                Ok(h) => Some(format!("segment header names segment {}", h.segment_id)),
                Err(reason) => Some(format!("segment header: {reason}")),
            },
            Err(reason) => Some(format!("segment header: {reason}")),
        };
        if let Some(what) = problem {
            self.damage(segment, 0, None, None, what, Vec::new());
        }
    }

    fn unsealed(&mut self, segment: &SegmentHandle, end: u64) {
        self.segment_header(segment);
        self.advance(SEGMENT_HEADER_BYTES.min(end));
        if end > SEGMENT_HEADER_BYTES {
            self.records(segment, SEGMENT_HEADER_BYTES, end, None, false);
        }
    }

    fn sealed(&mut self, segment: &SegmentHandle, map: &[u8]) {
        let len = map.len() as u64;
        self.segment_header(segment);
        if len < SEGMENT_HEADER_BYTES + TRAILER_BYTES {
            self.damage(
                segment,
                0,
                None,
                None,
                format!("file of {len} bytes is too short for a sealed segment"),
                Vec::new(),
            );
            return;
        }
        self.advance(SEGMENT_HEADER_BYTES);
        let trailer_at = len - TRAILER_BYTES;
        let trailer = match Trailer::decode(&map[trailer_at as usize..], segment.id, len) {
            Ok(Some(t)) => Some(t),
            Ok(None) => {
                self.damage(
                    segment,
                    trailer_at,
                    None,
                    Some((trailer_at, len)),
                    "trailer: no trailer magic".into(),
                    Vec::new(),
                );
                None
            }
            Err(reason) => {
                let what = format!("trailer: {}", reason.trim_start_matches("segment trailer "));
                self.damage(
                    segment,
                    trailer_at,
                    None,
                    Some((trailer_at, len)),
                    what,
                    Vec::new(),
                );
                None
            }
        };
        let Some(trailer) = trailer else {
            // Without a trailer, the records run until a directory record (or the end).
            self.records(segment, SEGMENT_HEADER_BYTES, trailer_at, None, true);
            return;
        };
        if len % PAGE_BYTES != 0 {
            self.damage(
                segment,
                len,
                None,
                None,
                format!("file length {len} is not a multiple of {PAGE_BYTES}"),
                Vec::new(),
            );
        }
        if trailer.records_end % PAGE_BYTES != 0 || trailer.directory_offset != trailer.records_end
        {
            self.damage(
                segment,
                trailer_at,
                None,
                None,
                format!(
                    "trailer: records end at {} and the directory at {} (both must be the same page boundary)",
                    trailer.records_end, trailer.directory_offset
                ),
                Vec::new(),
            );
        }
        // The directory first, so that records can be compared with its entries as they are
        // found.
        let directory = self.directory(segment, map, &trailer);
        let records_end = trailer.records_end.min(trailer_at);
        self.records(segment, SEGMENT_HEADER_BYTES, records_end, directory, false);
        // The directory record, then zeros up to the trailer.
        let footer_from = trailer
            .directory_offset
            .saturating_add(trailer.directory_len)
            .min(trailer_at);
        if let Some(nonzero) = map[footer_from as usize..trailer_at as usize]
            .iter()
            .position(|&b| b != 0)
        {
            self.damage(
                segment,
                footer_from + nonzero as u64,
                None,
                None,
                "bytes between the directory record and the trailer are not zero".into(),
                Vec::new(),
            );
        }
    }

    /// Checks the directory record of a sealed segment; its entries, if it is intact.
    fn directory<'m>(
        &mut self,
        segment: &SegmentHandle,
        map: &'m [u8],
        trailer: &Trailer,
    ) -> Option<DirIter<'m>> {
        let at = trailer.directory_offset;
        let problem = match self.check_record(segment, at, map.len() as u64 - TRAILER_BYTES) {
            Ok(r) if r.header.kind != RecordKind::Directory => Err(format!(
                "directory record: a {:?} record is where the trailer puts the directory",
                r.header.kind
            )),
            Ok(r) if r.header.record_len() != trailer.directory_len => Err(format!(
                "directory record: {} bytes long, the trailer says {}",
                r.header.record_len(),
                trailer.directory_len
            )),
            Ok(r) => Ok(r),
            Err(f) => Err(format!("directory record: {}", f.what)),
        };
        match problem {
            Ok(record) => {
                self.report.records_checked += 1;
                self.advance(trailer.directory_len);
                let start = (at + record.header.body_offset()) as usize;
                Some(DirIter::new(
                    &map[start..start + record.header.body_len as usize],
                    trailer.entry_count,
                ))
            }
            Err(what) => {
                self.damage(
                    segment,
                    at,
                    Some(at),
                    Some((at, at.saturating_add(trailer.directory_len))),
                    format!("{what} (the store lists this segment's records by scanning them; no object is lost by this)"),
                    Vec::new(),
                );
                None
            }
        }
    }

    /// Checks the records of `segment` in `[start, end)`, listing damage, going on at the
    /// next valid record after a damaged header. With `dir`, findable records
    /// are compared with the directory's entries (and entries name the keys of damaged
    /// records). With `stop_at_directory`, a directory record ends the records.
    fn records(
        &mut self,
        segment: &SegmentHandle,
        start: u64,
        end: u64,
        mut dir: Option<DirIter<'_>>,
        stop_at_directory: bool,
    ) {
        let mut offset = start;
        let mut ahead = start;
        while offset < end {
            if segment.is_sealed() && offset >= ahead {
                ahead = (offset + READ_AHEAD_BYTES).min(end);
                segment.will_need(offset, ahead - offset);
            }
            if offset + RECORD_HEADER_BYTES > end {
                self.damage(
                    segment,
                    offset,
                    None,
                    Some((offset, end)),
                    format!(
                        "{} bytes at the end of the records are not a record",
                        end - offset
                    ),
                    Vec::new(),
                );
                self.advance(end - offset);
                break;
            }
            match self.check_record(segment, offset, end) {
                Ok(record) => {
                    let len = record.header.record_len();
                    self.report.records_checked += 1;
                    if record.header.kind == RecordKind::Directory {
                        if stop_at_directory {
                            self.advance(end - offset);
                            break;
                        }
                        self.damage(
                            segment,
                            offset,
                            Some(offset),
                            None,
                            "a directory record among the data records".into(),
                            Vec::new(),
                        );
                    }
                    if let Some(dir) = dir.as_mut() {
                        self.compare_with_directory(segment, dir, Some(&record), offset);
                    }
                    offset += len;
                    self.advance(len);
                }
                Err(failed) => {
                    let record_offset = offset;
                    let (next, keys) = match &failed.readable {
                        // The header holds: the record's extent and key are known, the scan
                        // goes on right after it.
                        Some((header, key)) => (
                            Some(offset + header.record_len()),
                            vec![self.key_of(segment, header, key)],
                        ),
                        None => (self.next_record_start(segment, offset, end), Vec::new()),
                    };
                    let until = next.unwrap_or(end);
                    let index = self.damage(
                        segment,
                        failed.at.unwrap_or(offset),
                        Some(record_offset),
                        Some((offset, until)),
                        failed.what,
                        keys,
                    );
                    if let Some(dir) = dir.as_mut() {
                        // Entries of records in the damaged range name their keys.
                        while let Some(at) = dir.peek_offset() {
                            if at >= until {
                                break;
                            }
                            let Some(entry) = dir.take() else { break };
                            if at < offset {
                                self.entry_without_record(segment, &entry);
                                continue;
                            }
                            if let Some(index) = index {
                                let current = self.is_current(
                                    entry.namespace,
                                    &entry.key,
                                    segment.id,
                                    entry.offset,
                                );
                                self.add_key(
                                    index,
                                    AffectedKey {
                                        namespace: entry.namespace,
                                        key: entry.key,
                                        kind: Some(entry.kind),
                                        seq: Some(entry.seq),
                                        current: Some(current),
                                    },
                                );
                            }
                        }
                    }
                    self.advance(until - offset);
                    offset = until;
                }
            }
        }
        if let Some(mut dir) = dir {
            while let Some(entry) = dir.take() {
                self.entry_without_record(segment, &entry);
            }
            if let Some(error) = dir.error.take() {
                self.damage(
                    segment,
                    offset,
                    None,
                    None,
                    format!("directory: {error}"),
                    Vec::new(),
                );
            } else if dir.seen != dir.expected {
                self.damage(
                    segment,
                    offset,
                    None,
                    None,
                    format!(
                        "directory lists {} entries, the trailer says {}",
                        dir.seen, dir.expected
                    ),
                    Vec::new(),
                );
            }
        }
    }

    /// Compares the valid record at `offset` with the directory, consuming the entries up to
    /// and including it.
    fn compare_with_directory(
        &mut self,
        segment: &SegmentHandle,
        dir: &mut DirIter<'_>,
        record: Option<&Passed>,
        offset: u64,
    ) {
        while let Some(at) = dir.peek_offset() {
            if at >= offset {
                break;
            }
            if let Some(entry) = dir.take() {
                self.entry_without_record(segment, &entry);
            }
        }
        let Some(record) = record else { return };
        let findable = record.header.kind.is_findable();
        if dir.peek_offset() == Some(offset) {
            let Some(entry) = dir.take() else { return };
            let h = &record.header;
            let mut differ = Vec::new();
            if !findable {
                differ.push(format!("the record is a {:?}", h.kind));
            }
            if entry.namespace != h.namespace {
                differ.push(format!(
                    "namespace {} vs {}",
                    entry.namespace.0, h.namespace.0
                ));
            }
            if entry.kind != h.kind {
                differ.push(format!("kind {:?} vs {:?}", entry.kind, h.kind));
            }
            if entry.key != record.key {
                differ.push("key".into());
            }
            if entry.seq != h.seq {
                differ.push(format!("seq {} vs {}", entry.seq, h.seq));
            }
            if entry.generation != h.generation {
                differ.push(format!(
                    "generation {} vs {}",
                    entry.generation, h.generation
                ));
            }
            if entry.object_len != record.object_len {
                differ.push(format!(
                    "object length {} vs {}",
                    entry.object_len, record.object_len
                ));
            }
            if !differ.is_empty() {
                let keys = vec![self.key_of(segment, h, &record.key)];
                self.damage(
                    segment,
                    offset,
                    Some(offset),
                    None,
                    format!(
                        "directory entry disagrees with the record (directory vs record: {})",
                        differ.join(", ")
                    ),
                    keys,
                );
            }
        } else if findable {
            let keys = vec![self.key_of(segment, &record.header, &record.key)];
            self.damage(
                segment,
                offset,
                Some(offset),
                None,
                "findable record missing from the directory".into(),
                keys,
            );
        }
    }

    fn entry_without_record(&mut self, segment: &SegmentHandle, entry: &DirEntry) {
        if self.damage_at(segment.id, entry.offset).is_some() {
            return;
        }
        let current = self.is_current(entry.namespace, &entry.key, segment.id, entry.offset);
        self.damage(
            segment,
            entry.offset,
            None,
            None,
            "the directory lists a record where none starts".into(),
            vec![AffectedKey {
                namespace: entry.namespace,
                key: entry.key.clone(),
                kind: Some(entry.kind),
                seq: Some(entry.seq),
                current: Some(current),
            }],
        );
    }

    /// The first offset after `from` where a valid record starts: its header's magic, fields
    /// and checksum (seeded with this segment and offset, so bytes that merely look like a
    /// record never pass). Finer than recovery's page-aligned resynchronisation, so that only
    /// the damaged record itself is reported, not its neighbours in the same batch.
    fn next_record_start(&mut self, segment: &SegmentHandle, from: u64, end: u64) -> Option<u64> {
        let mut window = align_up(from + 1, RECORD_ALIGN_BYTES);
        while window + RECORD_HEADER_BYTES <= end {
            let len = SEARCH_WINDOW_BYTES.min(end - window);
            if let Ok(bytes) = read(segment, window, len) {
                for i in (0..bytes.len().saturating_sub(3)).step_by(RECORD_ALIGN_BYTES as usize) {
                    if bytes[i..i + 4] == RECORD_MAGIC {
                        let at = window + i as u64;
                        if at + RECORD_HEADER_BYTES <= end
                            && self.header_at(segment, at, end).is_ok()
                        {
                            return Some(at);
                        }
                    }
                }
            }
            window += len;
        }
        None
    }

    /// Parses and checks the header (and key and block table) of the record at `offset`.
    fn header_at(
        &self,
        segment: &SegmentHandle,
        offset: u64,
        end: u64,
    ) -> std::result::Result<(RecordHeader, Vec<u8>, Vec<u32>), String> {
        let fixed = read(segment, offset, RECORD_HEADER_BYTES)?;
        let header =
            RecordHeader::parse(&fixed, segment.id, offset).map_err(|e| header_what(&e))?;
        let prefix_len = header.checked_prefix_len();
        if offset + prefix_len > end {
            return Err(format!(
                "record header: its key and checksum table run past the end of the records ({end})"
            ));
        }
        let prefix = read(segment, offset, prefix_len)?;
        let (key, crcs) = verify_prefix(&header, &prefix).map_err(|e| header_what(&e))?;
        Ok((header, key.to_vec(), crcs))
    }

    /// Every check of the record at `offset` (which must end by `end`).
    fn check_record(
        &mut self,
        segment: &SegmentHandle,
        offset: u64,
        end: u64,
    ) -> std::result::Result<Passed, Failed> {
        let fail = |what: String| Failed {
            what,
            at: None,
            readable: None,
        };
        let (header, key, crcs) = self.header_at(segment, offset, end).map_err(fail)?;
        let record_len = header.record_len();
        if offset + record_len > end {
            return Err(Failed {
                what: format!(
                    "record of {record_len} bytes runs past the end of the records ({end})"
                ),
                at: None,
                readable: None,
            });
        }
        if header.kind == RecordKind::Padding {
            return Ok(Passed {
                header,
                key,
                object_len: 0,
            });
        }
        if header.kind.is_findable() && header.namespace == Namespace::NONE {
            return Err(Failed {
                what: "findable record without namespace".into(),
                at: None,
                readable: Some((header, key)),
            });
        }
        let body_start = offset + header.body_offset();
        let mut bad_blocks: Vec<u64> = Vec::new();
        let mut bad_count = 0u64;
        let mut read_error: Option<(u64, String)> = None;
        let mut manifest = (header.kind == RecordKind::Manifest).then(ManifestReader::default);
        // Only the current version of an object must resolve: chunks of a replaced or
        // deleted one may have been compacted away.
        let manifest_current = manifest.is_some()
            && self.is_current(header.namespace, &key, segment.id, header.offset);
        let mut chunk_refs = Vec::new();
        let mut at = 0u64;
        while at < header.body_len {
            let piece = PIECE_BYTES.min(header.body_len - at);
            let bytes = match read(segment, body_start + at, piece) {
                Ok(bytes) => bytes,
                Err(reason) => {
                    read_error = Some((body_start + at, reason));
                    break;
                }
            };
            for (i, block) in bytes.chunks(BLOCK_BYTES as usize).enumerate() {
                let index = at / BLOCK_BYTES + i as u64;
                let expected = crcs.get(index as usize).copied();
                if expected != Some(crc32fast::hash(block)) {
                    bad_count += 1;
                    if bad_blocks.len() < BLOCKS_NAMED_MAX {
                        bad_blocks.push(index);
                    }
                }
            }
            if bad_count == 0 {
                if let Some(m) = manifest.as_mut() {
                    m.feed(&bytes, &mut chunk_refs);
                    self.check_chunks(segment, &header, &key, manifest_current, &mut chunk_refs);
                }
            }
            at += piece;
        }
        if let Some((where_, reason)) = read_error {
            return Err(Failed {
                what: format!("body: {reason}"),
                at: Some(where_),
                readable: Some((header, key)),
            });
        }
        if let Some(&first) = bad_blocks.first() {
            let named: Vec<String> = bad_blocks.iter().map(u64::to_string).collect();
            let more = bad_count - bad_blocks.len() as u64;
            let what = if bad_count == 1 {
                format!("body block {first} checksum")
            } else if more == 0 {
                format!("body blocks {} checksum", named.join(", "))
            } else {
                format!("body blocks {} and {more} more checksum", named.join(", "))
            };
            return Err(Failed {
                what,
                at: Some(body_start + first * BLOCK_BYTES),
                readable: Some((header, key)),
            });
        }
        let object_len = match header.kind {
            RecordKind::Blob => header.body_len,
            RecordKind::Manifest => {
                let finished = match manifest {
                    Some(m) => m.finish(header.body_len),
                    None => Err("manifest not read".into()),
                };
                match finished {
                    Ok(total) => total,
                    Err(why) => {
                        return Err(Failed {
                            what: format!("manifest: {why}"),
                            at: Some(body_start),
                            readable: Some((header, key)),
                        })
                    }
                }
            }
            _ => 0,
        };
        Ok(Passed {
            header,
            key,
            object_len,
        })
    }

    /// Resolves chunks of a manifest whose body checksums hold (`docs/format.md`, section
    /// 7 E): each must be a valid chunk record of the length listed. A chunk in damage already
    /// listed gets the manifest's key. Drains `chunks` ((index in the manifest, chunk)).
    fn check_chunks(
        &mut self,
        segment: &SegmentHandle,
        manifest: &RecordHeader,
        key: &[u8],
        current: bool,
        chunks: &mut Vec<(u64, ChunkRef)>,
    ) {
        for (i, chunk) in chunks.drain(..) {
            let affected = AffectedKey {
                namespace: manifest.namespace,
                key: key.to_vec(),
                kind: Some(RecordKind::Manifest),
                seq: Some(manifest.seq),
                current: Some(current),
            };
            if let Some(index) = self.damage_at(chunk.segment_id, chunk.offset) {
                self.add_key(index, affected);
                continue;
            }
            if !current {
                continue;
            }
            let problem = match self.segments.get(&chunk.segment_id) {
                None => Some(format!("segment {} does not exist", chunk.segment_id)),
                Some(handle) => match read_record(handle, chunk.offset) {
                    Err(e) => Some(e.to_string()),
                    Ok(r)
                        if r.header.kind != RecordKind::Chunk || r.header.body_len != chunk.len =>
                    {
                        Some(format!(
                            "a {:?} record of {} bytes is there, not a chunk of {}",
                            r.header.kind, r.header.body_len, chunk.len
                        ))
                    }
                    Ok(_) => None,
                },
            };
            if let Some(problem) = problem {
                self.damage(
                    segment,
                    manifest.offset,
                    Some(manifest.offset),
                    None,
                    format!(
                        "manifest chunk {i} (segment {}, offset {}) does not resolve: {problem}",
                        chunk.segment_id, chunk.offset
                    ),
                    vec![affected],
                );
            }
        }
    }

    /// Names the current keys whose records lie in damage that has no key yet (a damaged
    /// header in a segment whose directory could not tell), from the locator.
    fn keys_from_locator(&mut self) {
        if self
            .report
            .segment_damage
            .iter()
            .all(|d| !d.keys.is_empty() || d.len.is_none())
        {
            return;
        }
        let mut found = Vec::new();
        for ((namespace, key), entry) in self.shared.read_index().iter() {
            if let Some(index) = self.damage_at(entry.segment_id, entry.offset) {
                if self.report.segment_damage[index].keys.is_empty() {
                    found.push((
                        index,
                        AffectedKey {
                            namespace: *namespace,
                            key: key.to_vec(),
                            kind: Some(entry.kind),
                            seq: Some(entry.seq),
                            current: Some(true),
                        },
                    ));
                }
            }
        }
        for (index, key) in found {
            self.add_key(index, key);
        }
    }
}

/// A manifest body decoded as it streams past (bounded memory: the chunks of one piece).
#[derive(Default)]
struct ManifestReader {
    fixed: Vec<u8>,
    total_len: u64,
    count: u64,
    partial: Vec<u8>,
    seen: u64,
    sum: u64,
    overflow: bool,
}

impl ManifestReader {
    /// Feeds the next bytes of the body; the chunk references they complete are pushed to
    /// `out` with their index.
    fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<(u64, ChunkRef)>) {
        if self.fixed.len() < MANIFEST_FIXED_BYTES {
            let take = (MANIFEST_FIXED_BYTES - self.fixed.len()).min(bytes.len());
            self.fixed.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.fixed.len() == MANIFEST_FIXED_BYTES {
                let mut total = [0u8; 8];
                total.copy_from_slice(&self.fixed[0..8]);
                self.total_len = u64::from_le_bytes(total);
                let mut count = [0u8; 4];
                count.copy_from_slice(&self.fixed[8..12]);
                self.count = u64::from(u32::from_le_bytes(count));
            }
        }
        for &b in bytes {
            self.partial.push(b);
            if self.partial.len() == 24 {
                let word = |at: usize| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&self.partial[at..at + 8]);
                    u64::from_le_bytes(w)
                };
                let chunk = ChunkRef {
                    segment_id: word(0),
                    offset: word(8),
                    len: word(16),
                };
                self.partial.clear();
                match self.sum.checked_add(chunk.len) {
                    Some(sum) => self.sum = sum,
                    None => self.overflow = true,
                }
                out.push((self.seen, chunk));
                self.seen += 1;
            }
        }
    }

    /// The object length, once the whole body was fed.
    fn finish(self, body_len: u64) -> std::result::Result<u64, String> {
        if self.fixed.len() < MANIFEST_FIXED_BYTES {
            return Err("manifest truncated".into());
        }
        let list = body_len - MANIFEST_FIXED_BYTES as u64;
        if list != self.count * 24 {
            return Err(format!(
                "manifest declares {} chunks in {list} bytes",
                self.count
            ));
        }
        if self.overflow {
            return Err("manifest chunk lengths overflow".into());
        }
        if self.sum != self.total_len {
            return Err(format!(
                "manifest chunks sum to {}, not {}",
                self.sum, self.total_len
            ));
        }
        Ok(self.total_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::format::encode_manifest;

    #[test]
    fn manifests_decode_in_any_pieces() {
        let chunks: Vec<ChunkRef> = (0..5)
            .map(|i| ChunkRef {
                segment_id: i + 1,
                offset: 4096 * (i + 1),
                len: 100 + i,
            })
            .collect();
        let total: u64 = chunks.iter().map(|c| c.len).sum();
        let body = encode_manifest(total, &chunks);
        for piece in [1, 7, 24, 1000] {
            let mut m = ManifestReader::default();
            let mut out = Vec::new();
            for p in body.chunks(piece) {
                m.feed(p, &mut out);
            }
            assert_eq!(m.finish(body.len() as u64), Ok(total));
            let got: Vec<ChunkRef> = out.into_iter().map(|(_, c)| c).collect();
            assert_eq!(got, chunks);
        }
        let mut m = ManifestReader::default();
        m.feed(&encode_manifest(total + 1, &chunks), &mut Vec::new());
        assert!(m.finish(body.len() as u64).is_err());
    }
}
