//! How segment space is used: per segment, the bytes its file holds and the bytes of the
//! records the index still points at (live); the rest is garbage that compaction reclaims.
//!
//! [`live_bytes`] is the one computation of live bytes: [`crate::Store::space_report`] shows
//! it to operators (`kuvasto stats`) and compaction picks its segments by it.
//!
//! A key's live bytes are those of its findable record (blob, tombstone or manifest), and for a
//! streamed object those of every chunk its manifest lists, counted in the segment holding
//! each chunk. A manifest record is counted as its header and key plus 16 bytes (not its chunk
//! list), as compaction always has.

use super::format::{RecordKind, SEGMENT_HEADER_BYTES};
use super::reader::{Object, SegmentHandle};
use crate::index::{Entry, IndexKey};
use crate::store::Shared;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The space of one segment.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSpace {
    pub id: u64,
    pub sealed: bool,
    /// The file's length on disk (an unsealed segment is preallocated to its full size).
    pub file_bytes: u64,
    /// Bytes after the segment header that records could have used: the whole rest of the
    /// file once sealed (directory and trailer included), the durable records so far while
    /// unsealed.
    pub used_bytes: u64,
    /// Bytes of records the index still points at.
    pub live_bytes: u64,
}

impl SegmentSpace {
    /// The space of `segment` holding `live_bytes` live bytes.
    pub(crate) fn of(segment: &SegmentHandle, live_bytes: u64) -> SegmentSpace {
        let file_bytes = segment.file.len().unwrap_or(0);
        let sealed = segment.is_sealed();
        let end = if sealed {
            file_bytes
        } else {
            segment.durable_end()
        };
        SegmentSpace {
            id: segment.id,
            sealed,
            file_bytes,
            used_bytes: end.saturating_sub(SEGMENT_HEADER_BYTES),
            live_bytes,
        }
    }

    /// Used bytes no live record occupies.
    pub fn garbage_bytes(&self) -> u64 {
        self.used_bytes.saturating_sub(self.live_bytes)
    }

    /// The fraction of the used bytes that is garbage (0.0 to 1.0 in practice; compaction
    /// compares it with its threshold unclamped).
    pub fn garbage_ratio(&self) -> f64 {
        1.0 - (self.live_bytes as f64 / self.used_bytes.max(1) as f64)
    }
}

/// Space per segment, and the catalog's index runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpaceReport {
    /// Every open segment, by id.
    pub segments: Vec<SegmentSpace>,
    /// The catalog's index runs and their bytes on disk.
    pub index_runs: usize,
    pub index_bytes: u64,
}

impl SpaceReport {
    pub fn file_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.file_bytes).sum()
    }

    pub fn used_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.used_bytes).sum()
    }

    pub fn live_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.live_bytes).sum()
    }

    pub fn garbage_bytes(&self) -> u64 {
        self.segments.iter().map(SegmentSpace::garbage_bytes).sum()
    }

    /// Garbage over used bytes, all segments together.
    pub fn garbage_ratio(&self) -> f64 {
        self.garbage_bytes() as f64 / self.used_bytes().max(1) as f64
    }

    pub fn segment(&self, id: u64) -> Option<&SegmentSpace> {
        self.segments
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .map(|i| &self.segments[i])
    }
}

/// Live bytes per segment id over a snapshot of the index (every key with its entry).
/// `touched` is told, once per entry and in order, the segments its records lie in (its
/// findable record's, and each chunk's for a streamed object); compaction moves the entries
/// touching a picked segment.
pub(crate) fn live_bytes(
    shared: &Shared,
    entries: &[(IndexKey, Entry)],
    touched: &mut dyn FnMut(BTreeSet<u64>),
) -> HashMap<u64, u64> {
    let mut live: HashMap<u64, u64> = HashMap::new();
    for ((namespace, key), entry) in entries {
        let mut segments = BTreeSet::from([entry.segment_id]);
        match entry.kind {
            RecordKind::Manifest => {
                let lookup = |id: u64| shared.segment(id);
                if let Ok(Ok(object)) = Object::open(
                    &lookup,
                    entry.segment_id,
                    entry.offset,
                    *namespace,
                    key,
                    entry.seq,
                ) {
                    for part in &object.parts {
                        segments.insert(part.segment.id);
                        *live.entry(part.segment.id).or_default() +=
                            part.record.header.record_len();
                    }
                }
                *live.entry(entry.segment_id).or_default() += 64 + key.len() as u64 + 16;
            }
            _ => {
                *live.entry(entry.segment_id).or_default() += super::compaction::record_header(
                    entry.kind,
                    *namespace,
                    key,
                    entry.object_len,
                    0,
                    0,
                )
                .record_len();
            }
        }
        touched(segments);
    }
    live
}

/// Every open segment's space, from one snapshot of the segments and one of the index.
/// Memory: a copy of the index (as compaction takes) while it runs.
pub(crate) fn space_report(shared: &Arc<Shared>) -> SpaceReport {
    let segments: BTreeMap<u64, Arc<SegmentHandle>> = shared.read_segments().clone();
    let entries: Vec<(IndexKey, Entry)> = shared
        .read_index()
        .iter()
        .map(|(k, e)| (k.clone(), *e))
        .collect();
    let live = live_bytes(shared, &entries, &mut |_| {});
    drop(entries);
    SpaceReport {
        segments: segments
            .values()
            .map(|s| SegmentSpace::of(s, live.get(&s.id).copied().unwrap_or(0)))
            .collect(),
        index_runs: 0,
        index_bytes: 0,
    }
}
