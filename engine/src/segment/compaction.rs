//! Compaction: reclaim the space of deleted and overwritten objects in sealed segments.
//!
//! 1. Pick sealed segments whose garbage ratio reaches the threshold (or the ones asked for).
//! 2. Copy every live record they hold into new segments written under a temporary name:
//!    blobs and tombstones one by one; a streamed object as a whole (all its chunks and a new
//!    manifest) when its manifest or any of its chunks is in a picked segment. Copies keep
//!    their sequence number and get `generation + 1`, so after a crash the copy wins over the
//!    original but never over a newer write.
//! 3. Seal, fsync, rename to the final name, fsync the directory.
//! 4. Switch: under the index lock, point each key at its copy unless a newer write raced in;
//!    then drop the old segments from the registry and unlink them. Readers that already hold
//!    an old segment keep reading it (its mapping lives until they let go).

use super::format::{
    dir_entry_bytes, encode_manifest, encode_padding, encode_record, padding_bytes,
    segment_file_name, segment_temp_file_name, ChunkRef, DirEntry, Namespace, RecordHeader,
    RecordKind, DIRECTORY_BYTES_MAX, PAGE_BYTES, SEGMENT_FLAG_COMPACTED, SEGMENT_HEADER_BYTES,
};
use super::lifecycle::{create_segment, open_mapped, seal_segment};
use super::reader::{read_body, read_record, Object, SegmentHandle};
use super::space::{self, SegmentSpace};
use crate::error::{Error, Result};
use crate::index::{Entry, IndexKey};
use crate::io::{AlignedBuf, StorageFile};
use crate::store::Shared;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What to compact.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Exactly these sealed segments; `None` picks by garbage ratio.
    pub segments: Option<Vec<u64>>,
    /// Pick segments at least this fraction garbage (0.0–1.0).
    pub garbage_ratio_min: f64,
    /// Copy at most this many bytes per second (0: as fast as the disk goes), so that a
    /// compaction on a busy node leaves the disk to its clients.
    pub copy_bytes_per_second_max: u64,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            segments: None,
            garbage_ratio_min: 0.5,
            copy_bytes_per_second_max: 0,
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactionReport {
    pub segments_removed: Vec<u64>,
    pub segments_written: Vec<u64>,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub objects_moved: u64,
    pub tombstones_moved: u64,
    /// Segments that qualified (or were asked for) but hold chunks of puts still in flight;
    /// left for a later compaction.
    pub segments_in_use: Vec<u64>,
}

/// Bytes the writer buffers before writing (no fsync until the seal).
const OUTPUT_BUFFER_BYTES: usize = 4 << 20;

struct Output<'a> {
    shared: &'a Shared,
    file: Box<dyn StorageFile>,
    id: u64,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    buf: AlignedBuf,
    directory: Vec<DirEntry>,
    directory_bytes: u64,
    limit: u64,
}

impl<'a> Output<'a> {
    fn create(shared: &'a Shared) -> Result<Self> {
        let id = shared.allocate_segment_id()?;
        let size = shared.config.segment_size_bytes_max;
        let file = create_segment(
            shared.storage.as_ref(),
            &segment_temp_file_name(id),
            id,
            size,
            SEGMENT_FLAG_COMPACTED,
        )?;
        Ok(Output {
            shared,
            file,
            id,
            buf_offset: SEGMENT_HEADER_BYTES,
            buf: AlignedBuf::with_capacity(
                OUTPUT_BUFFER_BYTES
                    + shared.config.record_bytes_max() as usize
                    + 2 * PAGE_BYTES as usize,
            ),
            directory: Vec::new(),
            directory_bytes: 0,
            limit: size - PAGE_BYTES,
        })
    }

    fn offset(&self) -> u64 {
        self.buf_offset + self.buf.len() as u64
    }

    fn fits(&self, record_len: u64, key_len: usize) -> bool {
        self.offset() + record_len + 2 * PAGE_BYTES <= self.limit
            && self.directory_bytes + dir_entry_bytes(key_len) <= DIRECTORY_BYTES_MAX
    }

    /// Writes the whole-page part of the buffer, keeping the partial last page buffered.
    fn write_out(&mut self, all: bool) -> Result<()> {
        if all {
            let end = self.offset();
            let pad = padding_bytes(end) as usize;
            if pad > 0 {
                let at = self.buf.len();
                self.buf.set_len(at + pad);
                encode_padding(&mut self.buf[at..], self.id, end);
            }
        }
        let whole = self.buf.len() - self.buf.len() % PAGE_BYTES as usize;
        if whole == 0 {
            return Ok(());
        }
        let rest = self.buf[whole..].to_vec();
        let mut next = AlignedBuf::with_capacity(self.buf.capacity());
        next.extend_from_slice(&rest);
        self.buf.set_len(whole);
        let full = std::mem::replace(&mut self.buf, next);
        let (_, result) = self.file.begin_write(full, self.buf_offset, false).wait();
        result.map_err(|e| Error::io("write", self.file.name(), e))?;
        self.buf_offset += whole as u64;
        Ok(())
    }

    /// Appends one record; returns its offset.
    /// Appends one record; `object_len` is what the directory lists for a findable record.
    fn append(
        &mut self,
        header: &mut RecordHeader,
        key: &[u8],
        body: &[u8],
        object_len: u64,
    ) -> Result<u64> {
        header.segment_id = self.id;
        header.offset = self.offset();
        let len = header.record_len() as usize;
        let at = self.buf.len();
        self.buf.set_len(at + len);
        encode_record(&mut self.buf[at..at + len], header, key, body);
        if header.kind.is_findable() {
            self.directory_bytes += dir_entry_bytes(key.len());
            self.directory.push(DirEntry {
                namespace: header.namespace,
                kind: header.kind,
                generation: header.generation,
                seq: header.seq,
                offset: header.offset,
                object_len,
                key: key.to_vec(),
            });
        }
        if self.buf.len() >= OUTPUT_BUFFER_BYTES {
            self.write_out(false)?;
        }
        Ok(header.offset)
    }

    /// Seals, syncs and renames into place; returns the readable handle.
    fn finish(mut self) -> Result<Arc<SegmentHandle>> {
        self.write_out(true)?;
        debug_assert!(self.buf.is_empty());
        let records_end = self.buf_offset;
        seal_segment(self.file.as_ref(), self.id, records_end, &self.directory)?;
        let temp = segment_temp_file_name(self.id);
        let name = segment_file_name(self.id);
        let storage = &self.shared.storage;
        storage
            .rename(&temp, &name)
            .map_err(|e| Error::io("rename", temp.as_str(), e))?;
        storage
            .sync_dir()
            .map_err(|e| Error::io("fsync directory", name.as_str(), e))?;
        // Reopen under the final name so errors name the right file.
        let (file, map) = open_mapped(storage.as_ref(), &name)?;
        let handle = Arc::new(SegmentHandle::new(self.id, file));
        handle.set_sealed(map);
        Ok(handle)
    }
}

/// Writes into a series of output segments, starting a new one when full.
struct Outputs<'a> {
    shared: &'a Shared,
    current: Option<Output<'a>>,
    done: Vec<Arc<SegmentHandle>>,
}

impl<'a> Outputs<'a> {
    fn append(
        &mut self,
        mut header: RecordHeader,
        key: &[u8],
        body: &[u8],
        object_len: u64,
    ) -> Result<(u64, u64)> {
        let len = header.record_len();
        if !self
            .current
            .as_ref()
            .is_some_and(|o| o.fits(len, key.len()))
        {
            if let Some(full) = self.current.take() {
                self.done.push(full.finish()?);
            }
            self.current = Some(Output::create(self.shared)?);
        }
        let Some(out) = self.current.as_mut() else {
            return Err(Error::Closed);
        };
        let offset = out.append(&mut header, key, body, object_len)?;
        Ok((out.id, offset))
    }

    fn finish(mut self) -> Result<Vec<Arc<SegmentHandle>>> {
        if let Some(last) = self.current.take() {
            self.done.push(last.finish()?);
        }
        Ok(self.done)
    }
}

struct Move {
    namespace: Namespace,
    key: Vec<u8>,
    old: Entry,
}

/// A record header with no place yet (segment and offset are set when it is appended).
pub(crate) fn record_header(
    kind: RecordKind,
    namespace: Namespace,
    key: &[u8],
    body_len: u64,
    seq: u64,
    generation: u32,
) -> RecordHeader {
    RecordHeader {
        kind,
        namespace,
        key_len: key.len() as u16,
        body_len,
        segment_id: 0,
        offset: 0,
        seq,
        generation,
        flags: 0,
    }
}

/// How far a compaction is: objects moved of those to move, bytes copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactProgress {
    pub objects_done: u64,
    pub objects_total: u64,
    pub bytes_copied: u64,
}

/// Sleeps until copying `bytes_copied` since `started` keeps under `bytes_per_second_max`.
fn throttle(bytes_per_second_max: u64, started: std::time::Instant, bytes_copied: u64) {
    if bytes_per_second_max == 0 {
        return;
    }
    let due = std::time::Duration::from_secs_f64(bytes_copied as f64 / bytes_per_second_max as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
}

/// Objects moved between two progress reports.
const PROGRESS_EVERY_OBJECTS: u64 = 256;

pub(crate) fn compact(
    shared: &Arc<Shared>,
    options: &CompactOptions,
    progress: &dyn Fn(CompactProgress),
) -> Result<CompactionReport> {
    let _one_at_a_time = shared.compaction.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(cause) = shared.poisoned() {
        return Err(Error::Poisoned { cause });
    }
    let sealed: BTreeMap<u64, Arc<SegmentHandle>> = shared
        .read_segments()
        .iter()
        .filter(|(_, s)| s.is_sealed())
        .map(|(id, s)| (*id, s.clone()))
        .collect();
    // The index and the pins in one moment (under the index lock, which a manifest's publish
    // and the release of its chunks' pins share): every chunk of a put in flight is either
    // reachable from this snapshot or in a pinned segment, which is left alone.
    let (entries, pinned) = {
        let index = shared.read_index();
        let entries: Vec<(IndexKey, Entry)> = index.iter().map(|(k, e)| (k.clone(), *e)).collect();
        (entries, shared.pinned_segments())
    };

    // Live bytes per segment (the one computation `Store::space_report` shows), and which
    // segments each key's records lie in.
    let mut touches: Vec<BTreeSet<u64>> = Vec::with_capacity(entries.len());
    let live_bytes = space::live_bytes(shared, &entries, &mut |segs| touches.push(segs));

    let chosen: BTreeSet<u64> = match &options.segments {
        Some(ids) => {
            for id in ids {
                if !sealed.contains_key(id) {
                    return Err(Error::InvalidArgument(format!(
                        "segment {id} is not a sealed segment of this store"
                    )));
                }
            }
            ids.iter().copied().collect()
        }
        None => sealed
            .iter()
            .filter(|(id, s)| {
                let live = live_bytes.get(id).copied().unwrap_or(0);
                SegmentSpace::of(s, live).garbage_ratio() >= options.garbage_ratio_min
            })
            .map(|(id, _)| *id)
            .collect(),
    };
    let mut report = CompactionReport::default();
    // Segments holding chunks of puts still in flight: those chunks are live though no index
    // entry names them yet. They wait for the next compaction.
    let (chosen, in_use): (BTreeSet<u64>, BTreeSet<u64>) =
        chosen.into_iter().partition(|id| !pinned.contains(id));
    report.segments_in_use = in_use.into_iter().collect();
    if chosen.is_empty() {
        return Ok(report);
    }
    report.bytes_before = chosen
        .iter()
        .filter_map(|id| sealed.get(id))
        .map(|s| s.file.len().unwrap_or(0))
        .sum();

    let moves: Vec<Move> = entries
        .iter()
        .zip(&touches)
        .filter(|(_, segs)| segs.iter().any(|s| chosen.contains(s)))
        .map(|(((namespace, key), entry), _)| Move {
            namespace: *namespace,
            key: key.to_vec(),
            old: *entry,
        })
        .collect();

    let mut outputs = Outputs {
        shared,
        current: None,
        done: Vec::new(),
    };
    let mut switched: Vec<(Move, Entry)> = Vec::with_capacity(moves.len());
    let started = std::time::Instant::now();
    let mut done = CompactProgress {
        objects_total: moves.len() as u64,
        ..CompactProgress::default()
    };
    progress(done);
    for m in moves {
        if done.objects_done % PROGRESS_EVERY_OBJECTS == 0 && done.objects_done > 0 {
            progress(done);
        }
        done.objects_done += 1;
        done.bytes_copied += m.old.object_len;
        throttle(
            options.copy_bytes_per_second_max,
            started,
            done.bytes_copied,
        );
        let Some(segment) = shared.segment(m.old.segment_id) else {
            continue; // superseded and removed meanwhile
        };
        let record = read_record(&segment, m.old.offset)?;
        let generation = m.old.generation + 1;
        let new = match m.old.kind {
            RecordKind::Blob | RecordKind::Tombstone => {
                let body = read_body(&segment, &record)?;
                let header = record_header(
                    m.old.kind,
                    m.namespace,
                    &m.key,
                    body.len() as u64,
                    m.old.seq,
                    generation,
                );
                let (segment_id, offset) =
                    outputs.append(header, &m.key, &body, m.old.object_len)?;
                if m.old.kind == RecordKind::Blob {
                    report.objects_moved += 1;
                } else {
                    report.tombstones_moved += 1;
                }
                Entry {
                    generation,
                    segment_id,
                    offset,
                    ..m.old
                }
            }
            RecordKind::Manifest => {
                let lookup = |id: u64| shared.segment(id);
                let Ok(object) = Object::open(
                    &lookup,
                    m.old.segment_id,
                    m.old.offset,
                    m.namespace,
                    &m.key,
                    m.old.seq,
                )?
                else {
                    continue;
                };
                let mut chunks = Vec::with_capacity(object.parts.len());
                for part in &object.parts {
                    let body = read_body(&part.segment, &part.record)?;
                    let header = record_header(
                        RecordKind::Chunk,
                        m.namespace,
                        &m.key,
                        body.len() as u64,
                        part.record.header.seq,
                        0,
                    );
                    let (segment_id, offset) = outputs.append(header, &m.key, &body, 0)?;
                    chunks.push(ChunkRef {
                        segment_id,
                        offset,
                        len: body.len() as u64,
                    });
                }
                let manifest = encode_manifest(object.len, &chunks);
                let header = record_header(
                    RecordKind::Manifest,
                    m.namespace,
                    &m.key,
                    manifest.len() as u64,
                    m.old.seq,
                    generation,
                );
                let (segment_id, offset) = outputs.append(header, &m.key, &manifest, object.len)?;
                report.objects_moved += 1;
                Entry {
                    generation,
                    segment_id,
                    offset,
                    ..m.old
                }
            }
            other => {
                return Err(Error::corruption(
                    m.old.segment_id,
                    m.old.offset,
                    format!("index points at a {other:?} record"),
                ));
            }
        };
        switched.push((m, new));
    }
    progress(done);
    let written = outputs.finish()?;
    report.segments_written = written.iter().map(|s| s.id).collect();
    report.bytes_after = written.iter().map(|s| s.file.len().unwrap_or(0)).sum();

    // A store poisoned meanwhile (a failed write or sync) is in an unknown state: switch
    // nothing. The copies are sealed and named; the next open takes them or their originals
    // alike (a copy wins by generation).
    if let Some(cause) = shared.poisoned() {
        return Err(Error::Poisoned { cause });
    }
    // The switch: new segments readable first, then keys moved, then old segments dropped.
    for segment in &written {
        shared.register_segment(segment.clone());
    }
    {
        let mut index = shared.write_index();
        for (m, new) in &switched {
            index.replace_if(m.namespace, &m.key, &m.old, *new);
        }
    }
    {
        let mut segments = shared.write_segments();
        for id in &chosen {
            segments.remove(id);
        }
    }
    // From here a failure leaves the directory in an unknown state: poison the store, as the
    // writer does, so nothing more is acknowledged until it is reopened.
    for id in &chosen {
        let name = segment_file_name(*id);
        shared
            .storage
            .remove(&name)
            .map_err(|e| Error::io("remove", name.as_str(), e))
            .inspect_err(|e| shared.poison(e))?;
    }
    shared
        .storage
        .sync_dir()
        .map_err(|e| Error::io("fsync directory", "data directory", e))
        .inspect_err(|e| shared.poison(e))?;
    report.segments_removed = chosen.into_iter().collect();
    Ok(report)
}
