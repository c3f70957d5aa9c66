//! Opening a store directory: rebuild the index, finish interrupted seals, cut torn tails.
//!
//! - Sealed segments are trusted through their trailer and directory record (both
//!   checksummed); their records are not scanned. A damaged directory is rebuilt by a salvage
//!   scan, and every damaged place is reported.
//! - Unsealed segments are scanned record by record. Damage followed by valid records no
//!   further than the torn window of the run that wrote them is a torn tail (bytes no completed `fdatasync` covered
//!   at the crash, so never acknowledged): it is cut, and the segment continues after a padding record. Valid records
//!   further beyond damage mean the damage is not a torn write: it is reported as corruption
//!   and the segment is sealed with every valid record kept.
//! - Leftover compaction outputs (`*.kvs.tmp`) were never switched to and are removed.

use super::format::{
    decode_directory, parse_segment_file_name, DirEntry, RecordKind, SegmentHeader, Trailer,
    FORMAT_VERSION, PAGE_BYTES, SEGMENT_HEADER_BYTES, TRAILER_BYTES,
};
use super::lifecycle::{open_mapped, pad_to_page, seal_segment};
use super::reader::SegmentHandle;
use super::scan::{check_record, scan_records, ScannedRecord};
use super::writer::ActiveStart;
use crate::error::{Error, Result};
use crate::index::{Entry, Locator};
use crate::io::{Mapping, Storage};
use std::sync::Arc;

/// A damaged place found while opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptionFound {
    pub segment_id: u64,
    pub offset: u64,
    pub reason: String,
}

impl std::fmt::Display for CorruptionFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "segment {} offset {}: {}",
            self.segment_id, self.offset, self.reason
        )
    }
}

/// What opening the store found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Sealed segments loaded from their directories.
    pub sealed_loaded: usize,
    /// Unsealed segments scanned.
    pub scanned: usize,
    /// Records found by scanning.
    pub records_scanned: usize,
    /// Torn tails cut: (segment, offset where the damage started).
    pub torn_tails: Vec<(u64, u64)>,
    /// Segments sealed (or re-sealed) while opening.
    pub sealed_now: Vec<u64>,
    /// Unfinished compaction outputs removed.
    pub temp_files_removed: Vec<String>,
    /// Segment files whose creation a crash interrupted (all zeros), removed.
    pub incomplete_removed: Vec<String>,
    /// Damage that is not a torn tail. Never served; an operator must look.
    pub corruption: Vec<CorruptionFound>,
    /// The torn window recovery judged by: the one the previous run wrote with
    /// (`store.kvm`), or the compile-time maximum without that file.
    pub torn_window_bytes: u64,
    /// `store.kvm` was there but damaged (the compile-time window was used).
    pub store_file_problem: Option<String>,
}

pub(crate) struct Recovered {
    pub segments: Vec<Arc<SegmentHandle>>,
    pub index: Locator,
    pub active: Option<ActiveStart>,
    pub seq_next: u64,
    pub next_segment_id: u64,
    pub report: RecoveryReport,
}

struct Unsealed {
    handle: Arc<SegmentHandle>,
    map: Mapping,
    records: Vec<ScannedRecord>,
    valid_end: u64,
    /// Must be sealed now (damaged, or a directory was already written).
    must_seal: bool,
    /// Offset of an already written directory record (a seal whose trailer was lost).
    directory_at: Option<u64>,
}

fn entries_of(records: &[ScannedRecord]) -> Vec<DirEntry> {
    records
        .iter()
        .filter_map(ScannedRecord::dir_entry)
        .collect()
}

/// Loads a sealed segment's directory; `Err` says why it cannot be trusted.
fn load_directory(
    map: &[u8],
    id: u64,
    trailer: &Trailer,
) -> std::result::Result<Vec<DirEntry>, String> {
    let record = check_record(map, id, trailer.directory_offset).map_err(|e| e.to_string())?;
    if record.header.kind != RecordKind::Directory
        || record.header.record_len() != trailer.directory_len
    {
        return Err("directory record does not match the trailer".into());
    }
    let start = (trailer.directory_offset + record.header.body_offset()) as usize;
    let body = &map[start..start + record.header.body_len as usize];
    decode_directory(body, trailer.entry_count)
}

/// The directory of a sealed segment (the findable records it holds), checked.
pub fn sealed_directory(segment: &super::reader::SegmentHandle) -> Result<Vec<DirEntry>> {
    let map = segment
        .sealed_bytes()
        .ok_or_else(|| Error::InvalidArgument(format!("segment {} is not sealed", segment.id)))?;
    let len = map.len() as u64;
    if len < SEGMENT_HEADER_BYTES + TRAILER_BYTES {
        return Err(Error::corruption(segment.id, 0, "too short for a trailer"));
    }
    let trailer = Trailer::decode(&map[(len - TRAILER_BYTES) as usize..], segment.id, len)
        .map_err(|reason| Error::corruption(segment.id, len - TRAILER_BYTES, reason))?
        .ok_or_else(|| Error::corruption(segment.id, len - TRAILER_BYTES, "no trailer"))?;
    load_directory(map, segment.id, &trailer)
        .map_err(|reason| Error::corruption(segment.id, trailer.directory_offset, reason))
}

/// The findable records of a sealed segment: its directory, or, when the directory cannot be
/// trusted, a scan of its records (as opening does; the damage was reported then).
pub fn sealed_entries(segment: &super::reader::SegmentHandle) -> Result<Vec<DirEntry>> {
    // A page the device cannot deliver reads as zeros: the directory then fails its check
    // and the scan reports the records on that page as damage.
    crate::io::media::guarded_keeping(|| sealed_entries_unguarded(segment)).0
}

fn sealed_entries_unguarded(segment: &super::reader::SegmentHandle) -> Result<Vec<DirEntry>> {
    match sealed_directory(segment) {
        Ok(entries) => Ok(entries),
        Err(Error::Corruption { .. }) => {
            let map = segment.sealed_bytes().ok_or_else(|| {
                Error::InvalidArgument(format!("segment {} is not sealed", segment.id))
            })?;
            let len = map.len() as u64;
            let end = match len
                .checked_sub(TRAILER_BYTES)
                .map(|at| Trailer::decode(&map[at as usize..], segment.id, len))
            {
                Some(Ok(Some(trailer))) => trailer.records_end,
                _ => len,
            };
            Ok(entries_of(&scan_records(map, segment.id, end).records))
        }
        Err(other) => Err(other),
    }
}

/// Opens every segment in `storage`; `torn_window_bytes` is the window the run that wrote
/// the unsealed segments had (see [`crate::segment::store_file`]).
pub(crate) fn recover(
    storage: &dyn Storage,
    segment_size_bytes_max: u64,
    torn_window_bytes: u64,
) -> Result<Recovered> {
    let mut report = RecoveryReport::default();
    let names = storage
        .list()
        .map_err(|e| Error::io("list", "data directory", e))?;
    let mut ids = Vec::new();
    let mut max_id = 0u64;
    for name in &names {
        if let Some(id) = parse_segment_file_name(name) {
            ids.push((id, name.clone()));
            max_id = max_id.max(id);
        } else if let Some(id) = name.strip_suffix(".tmp").and_then(parse_segment_file_name) {
            max_id = max_id.max(id);
            storage
                .remove(name)
                .map_err(|e| Error::io("remove", name.as_str(), e))?;
            report.temp_files_removed.push(name.clone());
        }
    }
    if !report.temp_files_removed.is_empty() {
        storage
            .sync_dir()
            .map_err(|e| Error::io("fsync directory", "data directory", e))?;
    }
    ids.sort();

    let mut segments = Vec::new();
    let mut index = Locator::default();
    let mut seq_max = 0u64;
    let mut unsealed: Vec<Unsealed> = Vec::new();

    for (id, name) in ids {
        let (file, map) = open_mapped(storage, &name)?;
        let len = map.len() as u64;
        if let Some(version) = SegmentHeader::peek_version(&map) {
            if version > FORMAT_VERSION {
                // Written by a newer build: never touch it (no scan, no seal, no truncation).
                return Err(Error::InvalidArgument(format!(
                    "{name} has segment format version {version}; this build reads up to {FORMAT_VERSION}. Upgrade Kuvasto to open this store."
                )));
            }
        }
        let handle = Arc::new(SegmentHandle::new(id, file));
        let header_problem = match SegmentHeader::decode(&map) {
            Ok(h) if h.segment_id == id => None,
            Ok(h) => Some(format!("segment header names segment {}", h.segment_id)),
            Err(reason) => Some(reason),
        };
        // A page the device cannot deliver reads as zeros: never take that for a file no
        // one wrote (and remove it).
        let never_written = crate::io::media::guarded(|| map.iter().all(|&b| b == 0)) == Ok(true);
        if header_problem.is_some() && never_written {
            // A crash while the segment was being created: nothing was ever written to it.
            drop(handle);
            drop(map);
            storage
                .remove(&name)
                .map_err(|e| Error::io("remove", name.as_str(), e))?;
            report.incomplete_removed.push(name);
            continue;
        }
        if let Some(reason) = &header_problem {
            report.corruption.push(CorruptionFound {
                segment_id: id,
                offset: 0,
                reason: reason.clone(),
            });
        }
        let trailer = if len >= SEGMENT_HEADER_BYTES + TRAILER_BYTES {
            Trailer::decode(&map[(len - TRAILER_BYTES) as usize..], id, len)
        } else {
            Ok(None)
        };
        match trailer {
            Ok(Some(trailer)) => {
                let entries = match load_directory(&map, id, &trailer) {
                    Ok(entries) => entries,
                    Err(reason) => {
                        report.corruption.push(CorruptionFound {
                            segment_id: id,
                            offset: trailer.directory_offset,
                            reason: format!("directory unusable ({reason}); rebuilt by scanning"),
                        });
                        let scan = scan_records(&map, id, trailer.records_end);
                        report.records_scanned += scan.records.len();
                        for damage in scan.damage {
                            report.corruption.push(CorruptionFound {
                                segment_id: id,
                                offset: damage.offset,
                                reason: damage.reason,
                            });
                        }
                        entries_of(&scan.records)
                    }
                };
                for e in &entries {
                    seq_max = seq_max.max(e.seq);
                    index.apply(e.namespace, &e.key, Entry::from_dir(id, e));
                }
                handle.set_sealed(map);
                report.sealed_loaded += 1;
            }
            Ok(None) | Err(_) => {
                let trailer_damage = trailer.err();
                report.scanned += 1;
                let scan = scan_records(&map, id, len);
                report.records_scanned += scan.records.len();
                for r in &scan.records {
                    seq_max = seq_max.max(r.header.seq);
                }
                let mut records = scan.records;
                // Never append to a segment whose header is damaged.
                let mut must_seal = scan.directory_at.is_some() || header_problem.is_some();
                let mut valid_end = scan.valid_end;
                if let Some(first) = scan.damage.first() {
                    let damage_start = first.offset;
                    let beyond = damage_start + torn_window_bytes;
                    let far = records.iter().any(|r| r.header.offset >= beyond)
                        || scan.damage.iter().any(|d| d.offset >= beyond);
                    if far || scan.directory_at.is_some() {
                        for damage in &scan.damage {
                            report.corruption.push(CorruptionFound {
                                segment_id: id,
                                offset: damage.offset,
                                reason: damage.reason.clone(),
                            });
                        }
                        valid_end = records
                            .iter()
                            .map(|r| r.header.offset + r.header.record_len())
                            .max()
                            .unwrap_or(SEGMENT_HEADER_BYTES)
                            .max(valid_end);
                        must_seal = true;
                    } else {
                        records.retain(|r| r.header.offset < damage_start);
                        report.torn_tails.push((id, damage_start));
                    }
                }
                if scan.directory_at.is_some() && len % PAGE_BYTES != 0 {
                    // Sealing truncates to a page boundary before it writes the footer, and
                    // nothing else shortens a file, so no crash leaves a sealed segment this
                    // long: its end was cut off (or bytes were appended).
                    report.corruption.push(CorruptionFound {
                        segment_id: id,
                        offset: len - len % PAGE_BYTES,
                        reason: format!(
                            "trailer missing: the file is {len} bytes, not a multiple of {PAGE_BYTES} (truncated?); sealed again from its records"
                        ),
                    });
                }
                if let (Some(reason), None) = (trailer_damage, scan.directory_at) {
                    report.corruption.push(CorruptionFound {
                        segment_id: id,
                        offset: len - TRAILER_BYTES,
                        reason: format!("{reason}; segment treated as unsealed"),
                    });
                    must_seal = true;
                }
                unsealed.push(Unsealed {
                    handle: handle.clone(),
                    map,
                    records,
                    valid_end,
                    must_seal,
                    directory_at: scan.directory_at,
                });
            }
        }
        segments.push(handle);
    }

    // Whatever names exist now become durable before anything is appended to them: a file
    // created just before a crash may exist without its directory entry being durable yet.
    storage
        .sync_dir()
        .map_err(|e| Error::io("fsync directory", "data directory", e))?;

    // The newest unsealed segment continues as the active one; any other is sealed now.
    let active_id = unsealed
        .iter()
        .filter(|u| !u.must_seal)
        .map(|u| u.handle.id)
        .max();
    let mut active = None;
    for u in unsealed {
        let entries = entries_of(&u.records);
        for e in &entries {
            index.apply(e.namespace, &e.key, Entry::from_dir(u.handle.id, e));
        }
        let file = u.handle.file.as_ref();
        let name = file.name().to_string();
        let page_start = u.valid_end - u.valid_end % PAGE_BYTES;
        // Empty when the end is page-aligned (also for a file shorter than its header).
        let prefix = u
            .map
            .get(page_start as usize..u.valid_end as usize)
            .unwrap_or(&[]);
        if Some(u.handle.id) == active_id {
            let write_offset = pad_to_page(file, u.handle.id, u.valid_end, prefix)?;
            // Nothing stale may remain past the new end: a later scan must not resurrect it.
            file.set_len(write_offset)
                .map_err(|e| Error::io("truncate", name.as_str(), e))?;
            file.allocate(segment_size_bytes_max.max(write_offset + 2 * PAGE_BYTES))
                .map_err(|e| Error::io("fallocate", name.as_str(), e))?;
            file.sync_data()
                .map_err(|e| Error::io("fdatasync", name.as_str(), e))?;
            u.handle.note_durable(write_offset);
            active = Some(ActiveStart {
                segment: u.handle.clone(),
                write_offset,
                directory: entries,
            });
        } else {
            let records_end = match u.directory_at {
                // A directory is written page-aligned; one found elsewhere is damage.
                Some(at) if at % PAGE_BYTES == 0 => at,
                _ => pad_to_page(file, u.handle.id, u.valid_end, prefix)?,
            };
            seal_segment(file, u.handle.id, records_end, &entries)?;
            let map = file
                .map()
                .map_err(|e| Error::io("mmap", name.as_str(), e))?;
            u.handle.set_sealed(map);
            report.sealed_now.push(u.handle.id);
        }
    }

    Ok(Recovered {
        segments,
        index,
        active,
        seq_next: seq_max + 1,
        next_segment_id: max_id + 1,
        report,
    })
}
