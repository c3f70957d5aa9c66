//! DICOM instances in the store: the streaming put that extracts as the bytes pass, the
//! metadata record, and the catalog kept in step with the segments.
//!
//! An instance put ([`InstancePut`]) streams the Part-10 bytes into the object namespace under
//! the SOP Instance UID while the [`Extractor`] reads the header (stopping at Pixel Data) and,
//! for encapsulated pixel data, a [`FragmentWalker`] reads only item headers. Nothing of the
//! object is buffered beyond the extractor's bounds. Every check that can refuse the instance
//! (malformed header, missing UIDs, file meta disagreeing with the data set, broken pixel data)
//! runs *before* the object is committed, so a refused instance leaves nothing visible.
//!
//! After the object is durable, the metadata record ([`InstanceMetadata`]) is written under the
//! same key in the metadata namespace (header read back from the stored object with bulk
//! values left out), then the catalog learns the instance. A crash between the two commits
//! leaves an object without a current metadata record; opening the store re-derives it.
//!
//! The catalog indexes whole sealed segments as runs: when the writer seals a segment, the
//! indexer thread reads the metadata records and tombstones in its directory and adds one run
//! ([`Catalog::add_segment_run`]); until then the segment's instances live in the catalog's
//! in-memory part. Opening the store maps the runs, indexes sealed segments no run covers (all
//! of them if the index directory was lost or its files failed their checks), drops runs
//! covering segments that no longer exist (compaction), and refills the in-memory part from the
//! unsealed segments.

use crate::dicom::explicit_le::{PixelDataAt, Progress, ScanLimits};
use crate::dicom::extract::{ExtractError, ExtractPath, Extracted, Extractor};
use crate::dicom::frames::{
    native_frame_map, FragmentWalker, FrameError, FrameLimits, FrameMap, ImageGeometry,
    WalkProgress,
};
use crate::dicom::meta::MetaLimits;
use crate::dicom::metadata::{BulkRef, InstanceMetadata, MetadataError};
use crate::dicom::Tag;
use crate::error::{Error, Result};
use crate::index::attrs::{tags, InstanceAttrs, InstanceLocation};
use crate::index::catalog::{Catalog, CatalogLimits, CatalogOpenReport, SegmentRecord};
use crate::segment::format::{Namespace, RecordKind};
use crate::segment::reader::Object;
use crate::segment::recovery::sealed_entries;
use crate::store::{Committed, PutStream, Shared, Store};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How instances are read and indexed.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// Where the catalog's runs live; `None` disables the catalog (instances are still stored
    /// with their metadata). [`Store::open`] defaults it to `<data dir>/index`.
    pub index_dir: Option<PathBuf>,
    /// Extra top-level attributes to index beyond the standard ones.
    pub extra_tags: Vec<Tag>,
    pub meta_limits: MetaLimits,
    pub scan_limits: ScanLimits,
    pub frame_limits: FrameLimits,
    /// Largest header (data set before Pixel Data, bulk values left out) a metadata record keeps.
    pub header_bytes_max: u64,
    pub catalog_limits: CatalogLimits,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            index_dir: None,
            extra_tags: Vec::new(),
            meta_limits: MetaLimits::default(),
            scan_limits: ScanLimits::default(),
            frame_limits: FrameLimits::default(),
            header_bytes_max: 64 << 20,
            catalog_limits: CatalogLimits::default(),
        }
    }
}

/// Why an instance was refused. Protocol layers map these to their status codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DicomError {
    /// The bytes are not a readable DICOM object (or exceed a limit while being read).
    #[error(transparent)]
    Extract(#[from] ExtractError),
    /// A required attribute is missing or empty.
    #[error("required attribute {0} is missing or empty")]
    MissingAttribute(&'static str),
    /// The file meta group and the data set disagree.
    #[error("{what}: file meta information says {file_meta:?}, the data set says {data_set:?}")]
    Mismatch {
        what: &'static str,
        file_meta: String,
        data_set: String,
    },
    /// Pixel Data is malformed (frames cannot be located).
    #[error("pixel data: {0}")]
    Frames(#[from] FrameError),
    /// Native Pixel Data declares more bytes than the object has.
    #[error("Pixel Data declares {declared_bytes} bytes from offset {value_offset}, but the object ends at {object_len}")]
    PixelDataTruncated {
        value_offset: u64,
        declared_bytes: u64,
        object_len: u64,
    },
    /// A stored metadata record cannot be read.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// An instance with this SOP Instance UID is stored with different bytes, and the put's
    /// [`DuplicatePolicy`] is to refuse.
    #[error("instance {sop_instance_uid} is already stored with different content")]
    Duplicate { sop_instance_uid: String },
    /// Another put of this SOP Instance UID was committed while this one arrived, and the
    /// policy is to refuse (the two were not compared: send it again to have it compared).
    #[error("instance {sop_instance_uid} was stored by another request while this one arrived; send it again to have it compared")]
    StoredMeanwhile { sop_instance_uid: String },
    /// The object has no file meta group and its SOP Instance UID was not found early enough
    /// to name it.
    #[error("no file meta information, and no SOP Instance UID in the first {0} bytes")]
    NoKey(usize),
}

/// What a stored instance looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStored {
    pub committed: Committed,
    pub attrs: InstanceAttrs,
    pub path: ExtractPath,
    pub frames: usize,
    pub bulk_values: usize,
    pub outcome: PutOutcome,
}

/// The catalog and its indexer thread.
pub(crate) struct Instances {
    pub config: InstanceConfig,
    pub catalog: Option<Arc<Catalog>>,
    pub open_report: CatalogOpenReport,
    /// Damaged records opening could not index (also found by `Store::verify`).
    pub unreadable_at_open: Vec<UnreadableRecord>,
    indexer: Option<std::thread::JoinHandle<()>>,
    /// Serialises indexing of sealed segments (the indexer thread and repairs), so that no
    /// segment gets two runs.
    indexing: Arc<Mutex<()>>,
    /// SOP Instance UIDs whose puts are between their duplicate check and their commit.
    claims: KeyClaims,
}

/// Per-key exclusion for the duplicate check: a put holds its SOP Instance UID from the
/// moment it looks for a stored instance of that UID until its own commit is visible, so two
/// concurrent puts of one UID cannot both find "nothing stored" and the second silently
/// replace the first. At most one key per put in progress.
#[derive(Debug, Default)]
pub(crate) struct KeyClaims {
    held: Mutex<std::collections::HashSet<String>>,
    released: std::sync::Condvar,
}

/// Holds a claimed key; released when dropped (also when the put fails or is abandoned).
pub(crate) struct KeyClaim<'a> {
    claims: &'a KeyClaims,
    key: String,
}

impl KeyClaims {
    /// Waits until no other put holds `key`, then holds it.
    fn claim(&self, key: &str) -> KeyClaim<'_> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while held.contains(key) {
            held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.insert(key.to_string());
        KeyClaim {
            claims: self,
            key: key.to_string(),
        }
    }
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        let mut held = self.claims.held.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.key);
        self.claims.released.notify_all();
    }
}

impl Instances {
    /// Opens the catalog and brings it in step with the segments (see the module docs).
    pub fn open(store: &Store, config: InstanceConfig) -> Result<Instances> {
        let shared = store.shared_arc();
        let Some(dir) = config.index_dir.clone() else {
            return Ok(Instances {
                config,
                catalog: None,
                open_report: CatalogOpenReport::default(),
                unreadable_at_open: Vec::new(),
                indexer: None,
                indexing: Arc::default(),
                claims: KeyClaims::default(),
            });
        };
        let (catalog, open_report) = Catalog::open(&dir, config.catalog_limits)?;
        let catalog = Arc::new(catalog);
        // Runs over segments that are gone (compacted) are dropped; what they covered and
        // still exists is indexed again below.
        catalog.drop_runs_covering(|id| shared.segment(id).is_none())?;
        let mut unreadable = Vec::new();
        index_sealed_segments(&shared, &catalog, &mut unreadable)?;
        refill_memory_part(store, &catalog, &config, &mut unreadable)?;
        catalog.maybe_merge()?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(SEAL_NOTICES_QUEUED_MAX);
        shared.set_seal_listener(tx);
        let indexer_shared = shared.clone();
        let indexer_catalog = catalog.clone();
        let indexing: Arc<Mutex<()>> = Arc::default();
        let indexer_indexing = indexing.clone();
        let indexer = std::thread::Builder::new()
            .name("kuvasto-indexer".into())
            .spawn(move || {
                // Each notice means "a segment was sealed"; indexing every uncovered sealed
                // segment makes a dropped notice harmless.
                while rx.recv().is_ok() {
                    let _indexing = indexer_indexing.lock().unwrap_or_else(|p| p.into_inner());
                    let mut unreadable = Vec::new();
                    let indexed =
                        index_sealed_segments(&indexer_shared, &indexer_catalog, &mut unreadable)
                            .and_then(|_| indexer_catalog.maybe_merge());
                    for record in &unreadable {
                        eprintln!(
                            "kuvasto: segment {} offset {}: metadata record of {} unreadable, not indexed: {}",
                            record.segment_id, record.offset, record.key, record.reason
                        );
                    }
                    if let Err(e) = indexed {
                        // The runs are derived data: the next open retries. Queries keep
                        // answering from the in-memory part meanwhile.
                        eprintln!("kuvasto: indexing a sealed segment failed: {e}");
                    }
                }
            })
            .map_err(|e| Error::io("spawn indexer", "kuvasto-indexer", e))?;
        Ok(Instances {
            config,
            catalog: Some(catalog),
            open_report,
            unreadable_at_open: unreadable,
            indexer: Some(indexer),
            indexing,
            claims: KeyClaims::default(),
        })
    }

    /// Indexes every sealed segment no run covers, now (after damaged runs were set aside),
    /// then merges as usual; returns the segments indexed.
    pub fn index_now(&self, shared: &Shared) -> Result<Vec<u64>> {
        let Some(catalog) = &self.catalog else {
            return Ok(Vec::new());
        };
        let _indexing = self.indexing.lock().unwrap_or_else(|p| p.into_inner());
        let mut unreadable = Vec::new();
        let indexed = index_sealed_segments(shared, catalog, &mut unreadable)?;
        catalog.maybe_merge()?;
        Ok(indexed)
    }

    /// Stops the indexer (the writer has stopped; its seal listener was dropped).
    pub fn shutdown(&mut self, shared: &Shared) {
        shared.clear_seal_listener();
        if let Some(indexer) = self.indexer.take() {
            let _ = indexer.join();
        }
    }
}

/// Seal notices waiting for the indexer, at most (more are dropped: see the indexer loop).
const SEAL_NOTICES_QUEUED_MAX: usize = 64;

/// A record the indexer could not read (damage in a sealed segment): left out of the catalog,
/// reported, and found again by `kuvasto verify`; every other record is indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableRecord {
    pub segment_id: u64,
    pub offset: u64,
    pub key: String,
    pub reason: String,
}

/// Adds a run for every sealed segment no run covers yet, oldest first; returns their ids.
/// A damaged metadata record is skipped and listed in `unreadable`, never a reason to stop.
fn index_sealed_segments(
    shared: &Shared,
    catalog: &Catalog,
    unreadable: &mut Vec<UnreadableRecord>,
) -> Result<Vec<u64>> {
    let covered = catalog.covered_segments();
    let sealed: Vec<_> = shared
        .read_segments()
        .values()
        .filter(|s| s.is_sealed() && !covered.contains(&s.id))
        .cloned()
        .collect();
    let mut indexed = Vec::with_capacity(sealed.len());
    for segment in sealed {
        let mut records = Vec::new();
        for entry in sealed_entries(&segment)? {
            if entry.namespace != Namespace::METADATA {
                continue;
            }
            let Ok(uid) = String::from_utf8(entry.key.clone()) else {
                continue; // not an instance key: nothing to index
            };
            match entry.kind {
                RecordKind::Tombstone => records.push(SegmentRecord::Removed {
                    sop_instance_uid: uid,
                    seq: entry.seq,
                }),
                RecordKind::Blob | RecordKind::Manifest => {
                    let lookup = |id: u64| shared.segment(id);
                    let bytes = Object::open(
                        &lookup,
                        segment.id,
                        entry.offset,
                        Namespace::METADATA,
                        &entry.key,
                        entry.seq,
                    )
                    .and_then(|opened| opened.ok().map(|o| o.read_all()).transpose());
                    let bytes = match bytes {
                        Ok(Some(bytes)) => bytes,
                        Ok(None) => continue, // a chunk's segment is gone: superseded
                        Err(Error::Corruption { reason, .. }) => {
                            unreadable.push(UnreadableRecord {
                                segment_id: segment.id,
                                offset: entry.offset,
                                key: uid,
                                reason,
                            });
                            continue;
                        }
                        Err(other) => return Err(other),
                    };
                    // A record that is not a metadata record (the raw byte API accepts any
                    // bytes in any namespace) is not indexed; its checksums passed, so it is
                    // not damage.
                    let Ok(metadata) = InstanceMetadata::decode(&bytes) else {
                        continue;
                    };
                    records.push(SegmentRecord::Instance {
                        location: object_location(shared, &metadata),
                        seq: metadata.object_seq,
                        attrs: Box::new(metadata.attrs),
                    });
                }
                _ => {}
            }
        }
        catalog.add_segment_run(segment.id, records)?;
        indexed.push(segment.id);
    }
    Ok(indexed)
}

/// Where the object a metadata record describes is now (the locator knows; compaction may
/// have moved it since the record was written). Zeroes when that version is gone: the row is
/// then dead anyway (a newer copy or a tombstone exists).
fn object_location(shared: &Shared, m: &InstanceMetadata) -> InstanceLocation {
    let key = m.attrs.sop_instance_uid.as_bytes();
    match shared.read_index().get(Namespace::OBJECT, key) {
        Some(e) if e.seq == m.object_seq && e.kind != RecordKind::Tombstone => InstanceLocation {
            segment_id: e.segment_id,
            offset: e.offset,
            object_len: e.object_len,
        },
        _ => InstanceLocation {
            object_len: m.object_len,
            ..InstanceLocation::default()
        },
    }
}

/// Puts the instances of unsealed segments into the catalog's in-memory part, re-deriving
/// metadata that a crash left missing or stale, and finishing deletes a crash cut in half.
/// A damaged record is skipped and listed in `unreadable`.
fn refill_memory_part(
    store: &Store,
    catalog: &Catalog,
    config: &InstanceConfig,
    unreadable: &mut Vec<UnreadableRecord>,
) -> Result<()> {
    let shared = store.shared();
    let unsealed: Vec<u64> = shared
        .read_segments()
        .values()
        .filter(|s| !s.is_sealed())
        .map(|s| s.id)
        .collect();
    let newest_two: Vec<u64> = shared
        .read_segments()
        .keys()
        .rev()
        .take(2)
        .copied()
        .collect();
    let entries: Vec<_> = shared
        .read_index()
        .iter()
        .filter(|((ns, _), e)| {
            (*ns == Namespace::METADATA && unsealed.contains(&e.segment_id))
                || (*ns == Namespace::OBJECT && newest_two.contains(&e.segment_id))
        })
        .map(|((ns, key), e)| (*ns, key.to_vec(), *e))
        .collect();
    for (ns, key, entry) in entries {
        let Ok(uid) = String::from_utf8(key.clone()) else {
            continue;
        };
        match refill_one(store, catalog, config, ns, &uid, entry) {
            Ok(()) => {}
            Err(Error::Corruption {
                segment_id,
                offset,
                reason,
            }) => {
                // One damaged record can be met through two entries (an object's and its
                // metadata's): listed once, at its own place.
                if !unreadable
                    .iter()
                    .any(|u| (u.segment_id, u.offset) == (segment_id, offset))
                {
                    unreadable.push(UnreadableRecord {
                        segment_id,
                        offset,
                        key: uid,
                        reason,
                    });
                }
            }
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// [`refill_memory_part`] for one index entry.
fn refill_one(
    store: &Store,
    catalog: &Catalog,
    config: &InstanceConfig,
    ns: Namespace,
    uid: &str,
    entry: crate::index::Entry,
) -> Result<()> {
    let shared = store.shared();
    let key = uid.as_bytes();
    if ns == Namespace::METADATA {
        if entry.kind == RecordKind::Tombstone {
            catalog.remove(uid, entry.seq, entry.segment_id)?;
            return Ok(());
        }
        let Some(object) = shared.get(Namespace::METADATA, key)? else {
            return Ok(());
        };
        let Ok(metadata) = InstanceMetadata::decode(&object.read_all()?) else {
            return Ok(()); // not a metadata record: see index_sealed_segments
        };
        return catalog.insert(
            metadata.attrs.clone(),
            object_location(shared, &metadata),
            metadata.object_seq,
            entry.segment_id,
        );
    }
    // An object in the newest segments: is its metadata current?
    if entry.kind == RecordKind::Tombstone {
        // Half a delete (a crash between the object's tombstone and the metadata's): finish
        // it, so the catalog does not list an instance that has no object.
        if let Some(md) = store.delete(Namespace::METADATA, key)? {
            catalog.remove(uid, md.seq, md.segment_id)?;
        }
        return Ok(());
    }
    let current = match shared.get(Namespace::METADATA, key)? {
        Some(m) => InstanceMetadata::decode(&m.read_all()?)
            .map(|m| m.object_seq == entry.seq)
            .unwrap_or(false),
        None => false,
    };
    if current {
        return Ok(());
    }
    let Some(object) = shared.get(Namespace::OBJECT, key)? else {
        return Ok(());
    };
    // Re-derive. Objects put through the raw byte API (not `put_instance`) need not be
    // DICOM: those are left unindexed, never a reason to refuse opening.
    let derived = match derive_from_object(config, &object) {
        Ok(derived) => derived,
        Err(Error::Dicom(_) | Error::Limit { .. }) => return Ok(()),
        Err(other) => return Err(other),
    };
    let store_put = store.put(Namespace::METADATA, key, &derived.encode())?;
    catalog.insert(
        derived.attrs.clone(),
        object_location(shared, &derived),
        derived.object_seq,
        store_put.segment_id,
    )
}

/// Reads a stored object again to build its metadata record (repair path).
fn derive_from_object(config: &InstanceConfig, object: &Object) -> Result<InstanceMetadata> {
    let mut reader = Reader::new(config);
    object.visit_range(0..object.len(), &mut |piece| reader.feed(piece))?;
    let read = reader.finish(object.len())?;
    build_metadata(config, &mut ObjectSource::Ready(object), read, object.seq)
}

/// The extraction side of a put: header, frames, and the checks that refuse an instance.
struct Reader {
    extractor: Extractor,
    extracting: bool,
    pixel: Option<PixelDataAt>,
    walker: Option<FragmentWalker>,
    walker_done: bool,
    frame_limits: FrameLimits,
    extra_tags: Vec<Tag>,
    /// Stream offset of the next byte.
    len: u64,
    /// The object's first bytes, kept while they may still be header (up to Pixel Data and
    /// at most [`PREFIX_BYTES_MAX`]), so the metadata record is built without reading the
    /// object back.
    prefix: Vec<u8>,
    prefix_open: bool,
    header_bytes_max: u64,
}

/// Most bytes of an object's start a put keeps for its metadata record; a longer header is
/// read back from the stored object instead.
const PREFIX_BYTES_MAX: usize = 1 << 20;

/// What the reader found, checked.
struct Read {
    extracted: Extracted,
    attrs: InstanceAttrs,
    frames: Option<FrameMap>,
    /// The object's bytes from 0 (all of the header, or empty).
    prefix: Vec<u8>,
}

impl Reader {
    fn new(config: &InstanceConfig) -> Reader {
        Reader {
            extractor: Extractor::with_extra(
                config.meta_limits,
                config.scan_limits,
                &config.extra_tags,
            ),
            extracting: true,
            pixel: None,
            walker: None,
            walker_done: false,
            frame_limits: config.frame_limits,
            extra_tags: config.extra_tags.clone(),
            len: 0,
            prefix: Vec::new(),
            prefix_open: true,
            header_bytes_max: config.header_bytes_max,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        let start = self.len;
        self.len += bytes.len() as u64;
        if self.prefix_open {
            if self.prefix.len() + bytes.len() > PREFIX_BYTES_MAX {
                self.prefix = Vec::new();
                self.prefix_open = false;
            } else {
                self.prefix.extend_from_slice(bytes);
            }
        }
        let result = self.feed_extraction(start, bytes);
        if let (Some(at), true) = (self.pixel, self.prefix_open) {
            // The header ends at Pixel Data's element.
            self.prefix.truncate(at.element_offset as usize);
            self.prefix.shrink_to_fit();
            self.prefix_open = false;
        }
        result
    }

    fn feed_extraction(&mut self, start: u64, bytes: &[u8]) -> Result<()> {
        if self.extracting {
            match self.extractor.feed(bytes).map_err(DicomError::from)? {
                Progress::NeedMore => {}
                Progress::PixelData(at) => {
                    self.extracting = false;
                    self.pixel = Some(at);
                    self.start_walker(at, start, bytes)?;
                }
            }
        } else if let (Some(walker), false) = (&mut self.walker, self.walker_done) {
            if walker.feed(bytes).map_err(DicomError::from)? == WalkProgress::Done {
                self.walker_done = true;
            }
        }
        Ok(())
    }

    fn start_walker(&mut self, at: PixelDataAt, start: u64, bytes: &[u8]) -> Result<()> {
        if at.length.is_some() {
            return Ok(()); // native: the map is computed at the end
        }
        if matches!(
            self.extractor_path(),
            Some(ExtractPath::General { inflated: true, .. })
        ) {
            return Ok(()); // offsets are in the inflated data set: no frame map
        }
        let frames = self
            .extractor
            .value_so_far(tags::NUMBER_OF_FRAMES)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim_matches([' ', '\0']).parse::<u32>().ok())
            .unwrap_or(1);
        let eot = self.extractor.value_so_far(Tag::new(0x7FE0, 0x0001));
        let eot_lengths = self.extractor.value_so_far(Tag::new(0x7FE0, 0x0002));
        let extended = eot.zip(eot_lengths);
        let mut walker = FragmentWalker::new(&at, frames, extended, self.frame_limits)
            .map_err(DicomError::from)?;
        let first = match self.extractor.take_pixel_tail() {
            Some(tail) => tail,
            None => {
                let from = at.value_offset.saturating_sub(start) as usize;
                bytes.get(from..).unwrap_or_default().to_vec()
            }
        };
        if walker.feed(&first).map_err(DicomError::from)? == WalkProgress::Done {
            self.walker_done = true;
        }
        self.walker = Some(walker);
        Ok(())
    }

    fn extractor_path(&self) -> Option<ExtractPath> {
        // The path is only final after finish; a deflated syntax always takes the general
        // path, which is what matters here.
        let ts = self.extractor.meta()?.transfer_syntax_uid.as_str();
        matches!(
            ts,
            crate::dicom::meta::ts::DEFLATED_EXPLICIT_VR_LE | crate::dicom::meta::ts::JPIP_DEFLATE
        )
        .then_some(ExtractPath::General {
            inflated: true,
            encoding_mismatch: false,
        })
    }

    /// The SOP Instance UID to store the object under, once known.
    fn key(&self) -> Option<String> {
        let meta = self.extractor.meta()?;
        let from_meta = meta
            .media_storage_sop_instance_uid
            .trim_end_matches(['\0', ' ']);
        if !from_meta.is_empty() {
            return Some(from_meta.to_string());
        }
        let raw = self.extractor.value_so_far(tags::SOP_INSTANCE_UID)?;
        let uid = std::str::from_utf8(raw).ok()?.trim_end_matches(['\0', ' ']);
        (!uid.is_empty()).then(|| uid.to_string())
    }

    fn finish(self, object_len: u64) -> Result<Read> {
        let mut extracted = self.extractor.finish().map_err(DicomError::from)?;
        // A streamed extraction reports Pixel Data as it passes (`self.pixel`); the
        // extractor's own result may not repeat it. Everything after uses `extracted`.
        if extracted.data_set.pixel_data.is_none() {
            extracted.data_set.pixel_data = self.pixel;
        }
        let attrs = extracted.attrs(&self.extra_tags);
        for (value, name) in [
            (&attrs.sop_instance_uid, "SOPInstanceUID (0008,0018)"),
            (&attrs.sop_class_uid, "SOPClassUID (0008,0016)"),
            (&attrs.study_instance_uid, "StudyInstanceUID (0020,000D)"),
            (&attrs.series_instance_uid, "SeriesInstanceUID (0020,000E)"),
        ] {
            if value.is_empty() {
                return Err(DicomError::MissingAttribute(name).into());
            }
        }
        let meta = &extracted.meta;
        for (what, in_meta, in_data_set) in [
            (
                "SOP Instance UID",
                &meta.media_storage_sop_instance_uid,
                &attrs.sop_instance_uid,
            ),
            (
                "SOP Class UID",
                &meta.media_storage_sop_class_uid,
                &attrs.sop_class_uid,
            ),
        ] {
            let in_meta = in_meta.trim_end_matches(['\0', ' ']);
            if !in_meta.is_empty() && in_meta != in_data_set {
                return Err(DicomError::Mismatch {
                    what,
                    file_meta: in_meta.to_string(),
                    data_set: in_data_set.clone(),
                }
                .into());
            }
        }
        // The metadata record keeps the header without its bulk values: refuse one that
        // would exceed its limit now, before anything is committed.
        if !extracted_inflated(&extracted) {
            let end = extracted
                .pixel_data()
                .map_or(object_len, |p| p.element_offset)
                .min(object_len);
            let bulk: u64 = extracted
                .data_set
                .bulk
                .iter()
                .filter(|b| b.value_offset + u64::from(b.length) <= end)
                .map(|b| u64::from(b.length))
                .sum();
            let header = end
                .saturating_sub(extracted.meta.data_set_offset)
                .saturating_sub(bulk);
            if header > self.header_bytes_max {
                return Err(Error::Limit {
                    what: "bytes of an instance's header kept in its metadata record",
                    value: header,
                    max: self.header_bytes_max,
                });
            }
        }
        let frames = match (extracted.pixel_data(), self.walker) {
            (Some(_), Some(walker)) => Some(walker.finish().map_err(DicomError::from)?),
            (Some(at), None) if at.length.is_some() && !extracted_inflated(&extracted) => {
                let length = u64::from(at.length.unwrap_or(0));
                if at.value_offset + length > object_len {
                    return Err(DicomError::PixelDataTruncated {
                        value_offset: at.value_offset,
                        declared_bytes: length,
                        object_len,
                    }
                    .into());
                }
                match geometry(&extracted, &attrs) {
                    Some(g) => Some(
                        native_frame_map(&at, &g, &FrameLimits::default())
                            .map_err(DicomError::from)?,
                    ),
                    None => None,
                }
            }
            _ => None,
        };
        Ok(Read {
            extracted,
            attrs,
            frames,
            prefix: self.prefix,
        })
    }
}

fn extracted_inflated(e: &Extracted) -> bool {
    matches!(e.path, ExtractPath::General { inflated: true, .. })
}

/// Image geometry for a native frame map, when the header has it.
fn geometry(e: &Extracted, attrs: &InstanceAttrs) -> Option<ImageGeometry> {
    let photometric = e.text(Tag::new(0x0028, 0x0004)).unwrap_or_default();
    Some(ImageGeometry {
        rows: attrs.rows?,
        columns: attrs.columns?,
        samples_per_pixel: e.u16(tags::SAMPLES_PER_PIXEL).unwrap_or(1),
        bits_allocated: e.u16(tags::BITS_ALLOCATED)?,
        number_of_frames: attrs.number_of_frames.unwrap_or(1).max(1),
        ybr_422: photometric.starts_with("YBR_FULL_422")
            || photometric.starts_with("YBR_PARTIAL_422"),
    })
}

/// A committed object for [`build_metadata`]: at hand, or opened only if the header needs bytes
/// the put did not keep (opening reads the record headers back from the segment, which the
/// common case, a header within the kept prefix, never needs).
enum ObjectSource<'a> {
    Ready(&'a Object),
    Lazy {
        store: &'a Store,
        key: &'a [u8],
        /// Where the object's findable record went (its version: `seq`).
        placed: Committed,
        /// The object's commit when it may not be durable yet (opening waits for it).
        pending: Option<crate::PendingPut>,
        opened: Option<Object>,
    },
}

impl ObjectSource<'_> {
    /// Returns once the object is durable and visible.
    fn durable(&mut self) -> Result<()> {
        if let ObjectSource::Lazy { pending, .. } = self {
            if let Some(pending) = pending.take() {
                pending.wait()?;
            }
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        match self {
            ObjectSource::Ready(object) => object.len(),
            ObjectSource::Lazy { placed, .. } => placed.len,
        }
    }

    /// The object of exactly this put's version: opening waits until it is durable (until
    /// then the index still names the previous version of the key, if any).
    fn object(&mut self) -> Result<&Object> {
        self.durable()?;
        match self {
            ObjectSource::Ready(object) => Ok(object),
            ObjectSource::Lazy {
                store,
                key,
                placed,
                opened,
                ..
            } => {
                if opened.is_none() {
                    *opened = Some(open_version(store, key, placed)?);
                }
                opened
                    .as_ref()
                    .ok_or_else(|| Error::InvalidArgument("object not opened".into()))
            }
        }
    }
}

/// Opens the version of object `key` committed at `placed`: at its place, or where the index
/// says if compaction moved it since; an error if the key holds another version by now.
fn open_version(store: &Store, key: &[u8], placed: &Committed) -> Result<Object> {
    let shared = store.shared();
    let lookup = |id: u64| shared.segment(id);
    if let Ok(object) = Object::open(
        &lookup,
        placed.segment_id,
        placed.offset,
        Namespace::OBJECT,
        key,
        placed.seq,
    )? {
        return Ok(object);
    }
    match store.get(Namespace::OBJECT, key)? {
        Some(object) if object.seq == placed.seq => Ok(object),
        _ => Err(Error::InvalidArgument(format!(
            "instance {} was replaced or deleted concurrently, right after its commit",
            String::from_utf8_lossy(key)
        ))),
    }
}

/// Builds the metadata record of a committed object: the header comes from the bytes kept as
/// they arrived (or is read back from the stored bytes), bulk values left out.
fn build_metadata(
    config: &InstanceConfig,
    object: &mut ObjectSource<'_>,
    read: Read,
    object_seq: u64,
) -> Result<InstanceMetadata> {
    let Read {
        extracted,
        attrs,
        frames,
        prefix,
    } = read;
    let inflated = extracted_inflated(&extracted);
    let data_set_offset = extracted.meta.data_set_offset;
    let pixel = extracted.pixel_data();
    let mut header = Vec::new();
    let mut bulk = Vec::new();
    if !inflated {
        let end = pixel
            .map_or(object.len(), |p| p.element_offset)
            .min(object.len());
        let mut cursor = data_set_offset.min(end);
        for b in &extracted.data_set.bulk {
            if b.value_offset + u64::from(b.length) > end || b.element_offset < cursor {
                continue;
            }
            // The element's header with its length set to 0, then skip the value.
            let header_start = header.len();
            read_into(
                object,
                &prefix,
                cursor..b.value_offset,
                &mut header,
                config.header_bytes_max,
            )?;
            let element = header_start + (b.element_offset - cursor) as usize;
            let header_len = (b.value_offset - b.element_offset) as usize;
            let length_at = element + if header_len == 12 { 8 } else { 6 };
            header[length_at..element + header_len].fill(0);
            bulk.push(BulkRef {
                tag: b.tag,
                vr: b.vr,
                object_offset: b.value_offset,
                length: u64::from(b.length),
            });
            cursor = b.value_offset + u64::from(b.length);
        }
        read_into(
            object,
            &prefix,
            cursor..end,
            &mut header,
            config.header_bytes_max,
        )?;
    }
    let (frames_encapsulated, frames) = match frames {
        Some(map) => (map.encapsulated, map.frames),
        None => (false, Vec::new()),
    };
    Ok(InstanceMetadata {
        object_seq,
        object_len: object.len(),
        attrs,
        data_set_offset,
        inflated,
        pixel_data: pixel,
        frames_encapsulated,
        frames,
        header,
        bulk,
    })
}

/// Appends the object's bytes of `range`, from `prefix` (the object's first bytes, as they
/// arrived) when it holds them.
fn read_into(
    object: &mut ObjectSource<'_>,
    prefix: &[u8],
    range: std::ops::Range<u64>,
    out: &mut Vec<u8>,
    bytes_max: u64,
) -> Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let total = out.len() as u64 + (range.end - range.start);
    if total > bytes_max {
        return Err(Error::Limit {
            what: "bytes of an instance's header kept in its metadata record",
            value: total,
            max: bytes_max,
        });
    }
    if let Some(held) = prefix.get(range.start as usize..range.end as usize) {
        out.extend_from_slice(held);
        return Ok(());
    }
    object.object()?.visit_range(range, &mut |piece| {
        out.extend_from_slice(piece);
        Ok(())
    })
}

/// What a put does when an instance with the same SOP Instance UID is already stored.
///
/// Either way a put whose bytes equal the stored instance's is idempotent: nothing is written
/// (the bytes are compared as they arrive, against the stored object, and the new object is
/// only written from the first byte that differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DuplicatePolicy {
    /// Different bytes replace the stored instance (a new version; the old one is reclaimed
    /// by compaction).
    #[default]
    Replace,
    /// Different bytes are refused with [`DicomError::Duplicate`], as soon as they differ.
    Reject,
}

/// How a put ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new instance.
    Stored,
    /// The same bytes were already stored: nothing was written.
    Identical,
    /// A different instance with the same SOP Instance UID was replaced.
    Replaced,
}

/// An instance put in progress (see the module documentation). Dropping it without
/// [`InstancePut::finish`] abandons it: nothing becomes visible.
pub struct InstancePut<'s> {
    store: &'s Store,
    reader: Reader,
    stream: Option<PutStream>,
    /// Bytes received before the key was known (the file meta group, normally).
    held: Vec<u8>,
    held_bytes_max: usize,
    duplicates: DuplicatePolicy,
    /// The stored instance with this key, while every byte received so far equals its bytes
    /// (nothing is written meanwhile).
    same_as: Option<Object>,
    /// An instance with this key existed and differed.
    replacing: bool,
}

impl<'s> InstancePut<'s> {
    pub(crate) fn new(store: &'s Store) -> InstancePut<'s> {
        let config = &store.instances().config;
        InstancePut {
            store,
            reader: Reader::new(config),
            stream: None,
            held: Vec::new(),
            held_bytes_max: config.scan_limits.buffered_bytes_max,
            duplicates: DuplicatePolicy::default(),
            same_as: None,
            replacing: false,
        }
    }

    /// The SOP Class and SOP Instance UIDs the file meta group declares, once read (for
    /// reporting a refused instance by name).
    pub fn declared_sop(&self) -> Option<(String, String)> {
        let meta = self.reader.extractor.meta()?;
        let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
        let instance = trim(&meta.media_storage_sop_instance_uid);
        (!instance.is_empty()).then(|| (trim(&meta.media_storage_sop_class_uid), instance))
    }

    /// Sets what happens when the SOP Instance UID is already stored (default: replace).
    pub fn on_duplicate(mut self, policy: DuplicatePolicy) -> Self {
        self.duplicates = policy;
        self
    }

    /// Appends the next bytes of the Part-10 stream.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let at = self.reader.len;
        self.reader.feed(bytes)?;
        if let Some(stream) = &mut self.stream {
            return stream.write(bytes);
        }
        if let Some(existing) = self.same_as.take() {
            if same_bytes(&existing, at, bytes)? {
                self.same_as = Some(existing);
                return Ok(());
            }
            // Bytes 0..at equal the stored instance's: it supplies them.
            self.replacing = true;
            let mut stream = diverge(
                self.store,
                self.duplicates,
                &existing.key,
                Some(&existing),
                at,
            )?;
            stream.write(bytes)?;
            self.stream = Some(stream);
            return Ok(());
        }
        if let Some(key) = self.reader.key() {
            let held = std::mem::take(&mut self.held);
            let mut stream = match self.store.get(Namespace::OBJECT, key.as_bytes())? {
                Some(existing) => {
                    if same_bytes(&existing, 0, &held)? && same_bytes(&existing, at, bytes)? {
                        self.same_as = Some(existing);
                        return Ok(());
                    }
                    self.replacing = true;
                    diverge(self.store, self.duplicates, key.as_bytes(), None, 0)?
                }
                None => self.store.put_stream(Namespace::OBJECT, key.as_bytes())?,
            };
            stream.write(&held)?;
            stream.write(bytes)?;
            self.stream = Some(stream);
            return Ok(());
        }
        if self.held.len() + bytes.len() > self.held_bytes_max {
            return Err(DicomError::NoKey(self.held_bytes_max).into());
        }
        self.held.extend_from_slice(bytes);
        Ok(())
    }

    /// Checks the instance, commits the object, writes its metadata record and indexes it;
    /// returns once all of that is durable.
    pub fn finish(self) -> Result<InstanceStored> {
        match self.finish_checked(|_| Ok::<(), std::convert::Infallible>(()))? {
            Ok(stored) => Ok(stored),
            Err(never) => match never {},
        }
    }

    /// As [`InstancePut::finish`], but first hands the instance's attributes to `check`
    /// (the caller's rules); an `Err` from it abandons the put (nothing becomes visible) and
    /// is returned as the inner error.
    pub fn finish_checked<E>(
        mut self,
        check: impl FnOnce(&InstanceAttrs) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<InstanceStored, E>> {
        let object_len = self.reader.len;
        let read = self.reader.finish(object_len)?;
        if let Err(refused) = check(&read.attrs) {
            return Ok(Err(refused));
        }
        let key = read.attrs.sop_instance_uid.clone();
        // From here to the end the key is ours: a concurrent put of the same UID waits, and
        // then finds this one stored.
        let _claim = self.store.instances().claims.claim(&key);
        if self.stream.is_some() && !self.replacing {
            // This put streamed as a new instance; one of the same UID may have been committed
            // meanwhile.
            if let Some(existing) = self.store.get(Namespace::OBJECT, key.as_bytes())? {
                if self.duplicates == DuplicatePolicy::Reject {
                    return Err(DicomError::StoredMeanwhile {
                        sop_instance_uid: key.clone(),
                    }
                    .into());
                }
                drop(existing);
                self.replacing = true;
            }
        }
        let mut outcome = PutOutcome::Stored;
        let stream = match (self.stream.take(), self.same_as.take()) {
            (Some(stream), _) => Some(stream),
            (None, Some(existing)) if existing.len == object_len => {
                return identical(self.store, existing, read).map(Ok);
            }
            // A prefix of the stored instance: different bytes.
            (None, Some(existing)) => {
                self.replacing = true;
                Some(diverge(
                    self.store,
                    self.duplicates,
                    key.as_bytes(),
                    Some(&existing),
                    object_len,
                )?)
            }
            // The key became known only now (no file meta group): check for a stored one.
            (None, None) => match self.store.get(Namespace::OBJECT, key.as_bytes())? {
                Some(existing) if existing.len == object_len => {
                    if same_bytes(&existing, 0, &self.held)? {
                        return identical(self.store, existing, read).map(Ok);
                    }
                    self.replacing = true;
                    Some(diverge(
                        self.store,
                        self.duplicates,
                        key.as_bytes(),
                        None,
                        0,
                    )?)
                }
                Some(_) => {
                    self.replacing = true;
                    Some(diverge(
                        self.store,
                        self.duplicates,
                        key.as_bytes(),
                        None,
                        0,
                    )?)
                }
                None => None,
            },
        };
        let stream = match stream {
            Some(mut stream) if !self.held.is_empty() => {
                stream.write(&std::mem::take(&mut self.held))?;
                Some(stream)
            }
            other => other,
        };
        let stream = match stream {
            Some(stream) => stream,
            None => {
                let mut stream = self.store.put_stream(Namespace::OBJECT, key.as_bytes())?;
                stream.write(&std::mem::take(&mut self.held))?;
                stream
            }
        };
        if self.replacing {
            outcome = PutOutcome::Replaced;
        }
        // The metadata record is prepared and submitted while the object becomes durable:
        // acknowledgements come in submission order, so it is durable after the object, and
        // the catalog learns of the instance only once both are.
        let pending = stream.finish_placed()?;
        let committed = pending.placed()?;
        let object = ObjectSource::Lazy {
            store: self.store,
            key: key.as_bytes(),
            placed: committed,
            pending: Some(pending),
            opened: None,
        };
        describe(self.store, object, read, committed, outcome).map(Ok)
    }
}

/// The received bytes equal the stored instance's: nothing to write, unless its metadata
/// record is missing (a crash between the two commits), which is written now.
fn identical(store: &Store, existing: Object, read: Read) -> Result<InstanceStored> {
    let committed = Committed {
        seq: existing.seq,
        segment_id: existing.segment_id,
        offset: existing.offset,
        len: existing.len,
    };
    match metadata_of(store, &read.attrs.sop_instance_uid)? {
        Some(metadata) => Ok(InstanceStored {
            committed,
            attrs: metadata.attrs,
            path: read.extracted.path,
            frames: metadata.frames.len(),
            bulk_values: metadata.bulk.len(),
            outcome: PutOutcome::Identical,
        }),
        None => describe(
            store,
            ObjectSource::Ready(&existing),
            read,
            committed,
            PutOutcome::Identical,
        ),
    }
}

/// Writes the metadata record of the committed `object` and indexes it.
fn describe(
    store: &Store,
    object: ObjectSource<'_>,
    read: Read,
    committed: Committed,
    outcome: PutOutcome,
) -> Result<InstanceStored> {
    let key = read.attrs.sop_instance_uid.clone();
    let config = &store.instances().config;
    let path = read.extracted.path;
    let mut object = object;
    let metadata = build_metadata(config, &mut object, read, committed.seq)?;
    let frames = metadata.frames.len();
    let bulk_values = metadata.bulk.len();
    let md_committed = store.put(Namespace::METADATA, key.as_bytes(), &metadata.encode())?;
    object.durable()?;
    if let Some(catalog) = &store.instances().catalog {
        catalog.insert(
            metadata.attrs.clone(),
            InstanceLocation {
                segment_id: committed.segment_id,
                offset: committed.offset,
                object_len: committed.len,
            },
            committed.seq,
            md_committed.segment_id,
        )?;
    }
    Ok(InstanceStored {
        committed,
        attrs: metadata.attrs,
        path,
        frames,
        bulk_values,
        outcome,
    })
}

/// The received bytes differ from the stored instance's: refuse, or start the new object
/// with the first `equal_bytes` of `existing` (the received bytes that matched).
fn diverge(
    store: &Store,
    policy: DuplicatePolicy,
    key: &[u8],
    existing: Option<&Object>,
    equal_bytes: u64,
) -> Result<PutStream> {
    if policy == DuplicatePolicy::Reject {
        return Err(DicomError::Duplicate {
            sop_instance_uid: String::from_utf8_lossy(key).into_owned(),
        }
        .into());
    }
    let mut stream = store.put_stream(Namespace::OBJECT, key)?;
    if let Some(existing) = existing {
        existing.visit_range(0..equal_bytes, &mut |b| stream.write(b))?;
    }
    Ok(stream)
}

/// Whether `bytes` equal the stored object's bytes at `at` (read and verified from it).
fn same_bytes(object: &Object, at: u64, bytes: &[u8]) -> Result<bool> {
    let end = at + bytes.len() as u64;
    if end > object.len {
        return Ok(false);
    }
    let mut rest = bytes;
    let mut same = true;
    object.visit_range(at..end, &mut |stored| {
        let (mine, after) = rest.split_at(stored.len());
        same &= mine == stored;
        rest = after;
        Ok(())
    })?;
    Ok(same)
}

/// The current metadata record of an instance (`None` if there is no such instance or its
/// record is not current: the object was replaced and the record not yet rewritten).
pub(crate) fn metadata_of(
    store: &Store,
    sop_instance_uid: &str,
) -> Result<Option<InstanceMetadata>> {
    let key = sop_instance_uid.as_bytes();
    let Some(object) = store.get(Namespace::OBJECT, key)? else {
        return Ok(None);
    };
    let Some(record) = store.get(Namespace::METADATA, key)? else {
        return Ok(None);
    };
    let metadata = InstanceMetadata::decode(&record.read_all()?).map_err(DicomError::from)?;
    Ok((metadata.object_seq == object.seq).then_some(metadata))
}
