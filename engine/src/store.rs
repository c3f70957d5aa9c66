//! [`Store`]: the one facade over segments, the writer and the index.

use crate::dicom::metadata::InstanceMetadata;
use crate::error::{Error, Result};
use crate::index::catalog::{Catalog, Hits, Query};
use crate::index::Locator;
use crate::instances::{metadata_of, InstanceConfig, InstancePut, Instances};
use crate::io::uring::UringStorage;
use crate::io::Storage;
use crate::segment::compaction::{self, CompactOptions, CompactionReport};
use crate::segment::format::{
    encode_manifest, ChunkRef, Namespace, RecordKind, BATCH_BYTES_LIMIT, KEY_BYTES_MAX,
    MANIFEST_FIXED_BYTES, PAGE_BYTES, TORN_WINDOW_BYTES, UNSYNCED_BYTES_MAX,
};
use crate::segment::reader::{Object, SegmentHandle};
use crate::segment::recovery::{recover, RecoveryReport};
use crate::segment::space::{self, SpaceReport};
use crate::segment::store_file::StoreFile;
use crate::segment::writer::{Append, Body, LentBytes, Msg, Reply, Writer, FLUSHERS_MAX};
use crate::verify::{RepairReport, VerifyProgress, VerifyReport};
use std::collections::VecDeque;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

/// Tunables, with the defaults an archive node runs with. Every queue and buffer is bounded by
/// one of these.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// A segment is sealed when its records reach this size (it is preallocated to it).
    pub segment_size_bytes_max: u64,
    /// Memory one streaming put holds; also the largest record body (a chunk).
    pub put_buffer_bytes: usize,
    /// The writer submits a batch once it holds this many bytes (or when no put is waiting).
    pub batch_bytes_max: usize,
    /// Appends waiting for the writer, at most.
    pub requests_queued_max: usize,
    /// Flusher threads: batches in flight at once (each holds one batch buffer). Four keep
    /// this machine's disk busiest with 4 MiB batches (`benches/README.md`): concurrent
    /// durable writes let ext4 share journal commits.
    pub flushers: usize,
    /// Write segments with `O_DIRECT` (for [`Store::open`]; see `docs/format.md`).
    pub direct_io: bool,
    /// DICOM instances: extraction limits, extra indexed attributes, the catalog's place.
    pub instances: InstanceConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            segment_size_bytes_max: 1 << 30,
            put_buffer_bytes: 2 << 20,
            batch_bytes_max: 4 << 20,
            requests_queued_max: 256,
            flushers: 4,
            direct_io: true,
            instances: InstanceConfig::default(),
        }
    }
}

impl StoreConfig {
    /// The largest record any put can produce (a full chunk with the longest key).
    pub fn record_bytes_max(&self) -> u64 {
        crate::segment::compaction::record_header(
            RecordKind::Chunk,
            Namespace::OBJECT,
            &[0; KEY_BYTES_MAX],
            self.put_buffer_bytes as u64,
            0,
            0,
        )
        .record_len()
    }

    /// Bytes one batch buffer holds: the configured batch plus room for one record and
    /// padding.
    pub fn batch_capacity_bytes(&self) -> u64 {
        self.batch_bytes_max as u64 + self.record_bytes_max() + 2 * PAGE_BYTES
    }

    /// How far past a segment's durable end the writer may have bytes in flight: the plain
    /// bytes allowed before a durable point plus every flusher's batch. The writer waits
    /// rather than exceed it; recovery takes damage followed by valid records further than
    /// this for corruption, not a torn tail (`docs/format.md` section 8).
    pub fn torn_window_bytes(&self) -> u64 {
        UNSYNCED_BYTES_MAX + self.flushers as u64 * self.batch_capacity_bytes()
    }

    /// The largest object a streaming put accepts: its manifest must fit one record body.
    pub fn object_bytes_max(&self) -> u64 {
        let chunks_max = (self.put_buffer_bytes - MANIFEST_FIXED_BYTES) / 24;
        chunks_max as u64 * self.put_buffer_bytes as u64
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidArgument(why));
        if self.put_buffer_bytes < 4096 || self.put_buffer_bytes % 4096 != 0 {
            return bad(format!(
                "put_buffer_bytes {} must be a multiple of 4096",
                self.put_buffer_bytes
            ));
        }
        if self.batch_bytes_max < self.put_buffer_bytes
            || self.batch_bytes_max as u64 > BATCH_BYTES_LIMIT
        {
            return bad(format!(
                "batch_bytes_max {} must be between put_buffer_bytes and {BATCH_BYTES_LIMIT}",
                self.batch_bytes_max
            ));
        }
        if self.segment_size_bytes_max % PAGE_BYTES != 0
            || self.segment_size_bytes_max < 4 * self.record_bytes_max() + 4 * PAGE_BYTES
        {
            return bad(format!(
                "segment_size_bytes_max {} must be page-aligned and hold at least four of the largest records ({} bytes each)",
                self.segment_size_bytes_max,
                self.record_bytes_max()
            ));
        }
        if !(1..=FLUSHERS_MAX).contains(&self.flushers) {
            return bad(format!("flushers must be 1 to {FLUSHERS_MAX}"));
        }
        if self.requests_queued_max == 0 {
            return bad("requests_queued_max must be at least 1".into());
        }
        Ok(())
    }
}

/// Proof that a put or delete is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Store-wide sequence number of the write.
    pub seq: u64,
    pub segment_id: u64,
    pub offset: u64,
    /// Object bytes (0 for a delete).
    pub len: u64,
}

/// Bounds of the durable-write latency histogram, in microseconds.
pub const DURABLE_WRITE_MICROS_BOUNDS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
/// Bounds of the commits-per-batch histogram.
pub const BATCH_COMMITS_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Counters of the writer, for benches and metrics.
#[derive(Debug)]
pub struct EngineStats {
    pub batches: AtomicU64,
    pub syncs: AtomicU64,
    pub commits: AtomicU64,
    pub bytes_written: AtomicU64,
    pub commits_per_sync_max: AtomicU64,
    /// Time flushers spent waiting for their batch writes (durable ones included).
    pub write_nanos: AtomicU64,
    /// How long a durable batch took from submission to durable (its `RWF_DSYNC` write, or
    /// its write plus the `fdatasync` covering it), in microseconds.
    pub durable_write_micros: crate::histogram::Histogram,
    /// Commits (acknowledged puts, deletes) per batch written: the group commit at work.
    pub batch_commits: crate::histogram::Histogram,
}

impl Default for EngineStats {
    fn default() -> Self {
        EngineStats {
            batches: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            commits_per_sync_max: AtomicU64::new(0),
            write_nanos: AtomicU64::new(0),
            durable_write_micros: crate::histogram::Histogram::new(DURABLE_WRITE_MICROS_BOUNDS),
            batch_commits: crate::histogram::Histogram::new(BATCH_COMMITS_BOUNDS),
        }
    }
}

impl EngineStats {
    pub(crate) fn record_batch(&self, bytes: u64, durable: bool, commits: usize) {
        self.batch_commits.observe(commits as u64);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        if durable {
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.commits.fetch_add(commits as u64, Ordering::Relaxed);
        self.commits_per_sync_max
            .fetch_max(commits as u64, Ordering::Relaxed);
    }
}

/// State shared by the facade, the writer threads and compaction.
pub(crate) struct Shared {
    pub storage: Arc<dyn Storage>,
    pub config: StoreConfig,
    index: RwLock<Locator>,
    segments: RwLock<BTreeMap<u64, Arc<SegmentHandle>>>,
    poison: OnceLock<Arc<str>>,
    next_segment_id: AtomicU64,
    pub stats: EngineStats,
    pub compaction: Mutex<()>,
    /// Told the id of every segment the writer seals (the catalog's indexer).
    seal_listener: Mutex<Option<SyncSender<u64>>>,
    /// Segments holding chunks of puts not committed yet, with a count per chunk. Those
    /// chunks have no index entry until their manifest is published, so the index alone
    /// would call them garbage: compaction leaves pinned segments alone (see [`ChunkPins`]).
    stream_pins: Mutex<HashMap<u64, usize>>,
    /// Segment ids below this are reserved in `store.kvm` (see `allocate_segment_id`).
    segment_id_floor: Mutex<u64>,
}

/// Segment ids reserved in `store.kvm` at a time (one durable write per this many segments).
const SEGMENT_IDS_RESERVED: u64 = 64;

impl Shared {
    pub fn poison(&self, error: &Error) {
        let cause = match error {
            Error::Poisoned { cause } => cause.clone(),
            other => other.to_poison_cause(),
        };
        let _ = self.poison.set(cause);
    }

    pub fn poisoned(&self) -> Option<Arc<str>> {
        self.poison.get().cloned()
    }

    pub fn set_seal_listener(&self, tx: SyncSender<u64>) {
        *self.seal_listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    pub fn clear_seal_listener(&self) {
        self.seal_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// A segment was sealed. Never blocks the writer: a full queue drops the notice (the
    /// indexer indexes every uncovered sealed segment on the next one, or at open).
    pub fn notify_sealed(&self, segment_id: u64) {
        if let Some(tx) = &*self.seal_listener.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.try_send(segment_id);
        }
    }

    /// A chunk of an uncommitted put was placed in `segment_id` (called by the writer before
    /// it answers the chunk, so the pin exists before the segment can be sealed).
    pub fn pin_segment(&self, segment_id: u64) {
        *self
            .stream_pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(segment_id)
            .or_default() += 1;
    }

    /// Releases one pin per listed segment (a chunk each).
    pub fn unpin_segments(&self, segment_ids: &[u64]) {
        let mut pins = self.stream_pins.lock().unwrap_or_else(|p| p.into_inner());
        for id in segment_ids {
            if let Some(count) = pins.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    pins.remove(id);
                }
            } else {
                debug_assert!(false, "segment {id} unpinned more often than pinned");
            }
        }
    }

    /// Segments that hold chunks of uncommitted puts now. Taken together with a snapshot of
    /// the index (under its lock): a manifest is published and its pins released under the
    /// index's write lock, so every chunk is either pinned or reachable from the snapshot.
    pub fn pinned_segments(&self) -> BTreeSet<u64> {
        self.stream_pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// A segment id never handed out before, in this run or any earlier one: ids are reserved
    /// in blocks in `store.kvm` (durably) before they are used.
    pub fn allocate_segment_id(&self) -> Result<u64> {
        let id = self.next_segment_id.fetch_add(1, Ordering::Relaxed);
        let mut floor = self
            .segment_id_floor
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if id >= *floor {
            let reserved = id + 1 + SEGMENT_IDS_RESERVED;
            StoreFile {
                torn_window_bytes: self.config.torn_window_bytes(),
                segment_id_floor: reserved,
            }
            .write(self.storage.as_ref())
            .inspect_err(|e| self.poison(e))?;
            *floor = reserved;
        }
        Ok(id)
    }

    pub fn register_segment(&self, segment: Arc<SegmentHandle>) {
        self.write_segments().insert(segment.id, segment);
    }

    pub fn segment(&self, id: u64) -> Option<Arc<SegmentHandle>> {
        self.read_segments().get(&id).cloned()
    }

    pub fn read_index(&self) -> RwLockReadGuard<'_, Locator> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write_index(&self) -> RwLockWriteGuard<'_, Locator> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn read_segments(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Arc<SegmentHandle>>> {
        self.segments.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write_segments(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Arc<SegmentHandle>>> {
        self.segments.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves `key` to a readable object, retrying when compaction moved it meanwhile.
    pub fn get(&self, namespace: Namespace, key: &[u8]) -> Result<Option<Object>> {
        const ATTEMPTS_MAX: usize = 8;
        for _ in 0..ATTEMPTS_MAX {
            let Some(entry) = self.read_index().get(namespace, key) else {
                return Ok(None);
            };
            if entry.kind == RecordKind::Tombstone {
                return Ok(None);
            }
            let lookup = |id: u64| self.segment(id);
            match Object::open(
                &lookup,
                entry.segment_id,
                entry.offset,
                namespace,
                key,
                entry.seq,
            )? {
                Ok(object) => return Ok(Some(object)),
                Err(_gone) => continue,
            }
        }
        Err(Error::InvalidArgument(format!(
            "object kept moving during {ATTEMPTS_MAX} lookups"
        )))
    }
}

/// Sizes and counts, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    pub segments: usize,
    pub sealed_segments: usize,
    pub segment_bytes: u64,
    pub live_keys: usize,
}

/// The storage engine. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    shared: Arc<Shared>,
    tx: SyncSender<Msg>,
    writer: Option<JoinHandle<()>>,
    report: RecoveryReport,
    instances: Option<Instances>,
}

impl Store {
    /// Opens (or creates) the store in `dir` on the real disk, through io_uring.
    pub fn open(dir: &Path, mut config: StoreConfig) -> Result<Store> {
        if config.instances.index_dir.is_none() {
            config.instances.index_dir = Some(dir.join("index"));
        }
        let storage = UringStorage::open(dir, config.direct_io).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                Error::Locked(dir.display().to_string())
            } else {
                Error::io("open", dir.display().to_string(), e)
            }
        })?;
        Store::open_with(Arc::new(storage), config)
    }

    /// Opens the store on any [`Storage`] (tests pass simulated or faulty ones).
    pub fn open_with(storage: Arc<dyn Storage>, config: StoreConfig) -> Result<Store> {
        config.validate()?;
        // The previous run's torn window and id floor. Without the file (a store older than
        // it) or with a damaged one, the compile-time maximum window: a torn tail is then
        // never taken for corruption, as before the file existed.
        let previous = StoreFile::read(storage.as_ref())?;
        let (torn_window_bytes, segment_id_floor) = match &previous {
            Ok(Some(file)) => (
                file.torn_window_bytes.min(TORN_WINDOW_BYTES),
                file.segment_id_floor,
            ),
            Ok(None) | Err(_) => (TORN_WINDOW_BYTES, 0),
        };
        // Recovery reads mapped segments: a page the device cannot deliver reads as zeros
        // (its records then fail their checks and are reported), and is reported itself.
        let (recovered, media_fault) = crate::io::media::guarded_keeping(|| {
            recover(
                storage.as_ref(),
                config.segment_size_bytes_max,
                torn_window_bytes,
            )
        });
        let mut recovered = recovered?;
        if let Some(address) = media_fault {
            recovered.report.corruption.push(crate::segment::recovery::CorruptionFound {
                segment_id: 0,
                offset: 0,
                reason: format!(
                    "media error while opening: the device could not deliver the page at address {address:#x} (SIGBUS); the records on it fail their checks"
                ),
            });
        }
        recovered.report.store_file_problem = previous.err();
        recovered.report.torn_window_bytes = torn_window_bytes;
        let next_segment_id = recovered.next_segment_id.max(segment_id_floor);
        // This run's window, before anything is appended (recovery is done with the old one).
        let floor = next_segment_id + SEGMENT_IDS_RESERVED;
        StoreFile {
            torn_window_bytes: config.torn_window_bytes(),
            segment_id_floor: floor,
        }
        .write(storage.as_ref())?;
        let mut segments = BTreeMap::new();
        for s in recovered.segments {
            segments.insert(s.id, s);
        }
        let shared = Arc::new(Shared {
            storage,
            config,
            index: RwLock::new(recovered.index),
            segments: RwLock::new(segments),
            poison: OnceLock::new(),
            next_segment_id: AtomicU64::new(next_segment_id),
            stats: EngineStats::default(),
            compaction: Mutex::new(()),
            seal_listener: Mutex::new(None),
            stream_pins: Mutex::new(HashMap::new()),
            segment_id_floor: Mutex::new(floor),
        });
        let (tx, writer) = Writer::spawn(shared.clone(), recovered.active, recovered.seq_next)?;
        let mut store = Store {
            shared,
            tx,
            writer: Some(writer),
            report: recovered.report,
            instances: None,
        };
        let instance_config = store.shared.config.instances.clone();
        store.instances = Some(Instances::open(&store, instance_config)?);
        Ok(store)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn shared_arc(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    pub(crate) fn instances(&self) -> &Instances {
        self.instances
            .as_ref()
            .expect("instances are set up in open_with before the store is handed out")
    }

    /// Starts storing a DICOM instance (Part-10 bytes streamed in with
    /// [`InstancePut::write`]); see [`crate::instances`].
    pub fn put_instance(&self) -> InstancePut<'_> {
        InstancePut::new(self)
    }

    /// The current metadata record of an instance.
    pub fn instance_metadata(&self, sop_instance_uid: &str) -> Result<Option<InstanceMetadata>> {
        metadata_of(self, sop_instance_uid)
    }

    /// What opening the catalog found (runs mapped, runs set aside as damaged).
    pub fn catalog_open_report(&self) -> &crate::index::catalog::CatalogOpenReport {
        &self.instances().open_report
    }

    /// Damaged records opening could not put into the catalog (left out, every other record
    /// indexed; `Store::verify` finds the damage too).
    pub fn unreadable_at_open(&self) -> &[crate::instances::UnreadableRecord] {
        &self.instances().unreadable_at_open
    }

    /// The catalog, when configured (see [`InstanceConfig::index_dir`]).
    pub fn catalog(&self) -> Option<&Catalog> {
        self.instances().catalog.as_deref()
    }

    /// Answers a query over the catalog. A run that fails a block check is set aside and
    /// re-indexed from its segments in the background; the query reports the damage.
    pub fn query(&self, query: &Query) -> Result<Hits> {
        let catalog = self
            .catalog()
            .ok_or_else(|| Error::InvalidArgument("this store has no catalog configured".into()))?;
        let result = catalog.query(query);
        if let Err(Error::IndexCorruption { file, .. }) = &result {
            if catalog.quarantine(file)? {
                self.shared.notify_sealed(0);
            }
        }
        result
    }

    /// Deletes an instance: tombstones for its object and its metadata record, and its
    /// removal from the catalog. `None` if there was neither.
    ///
    /// Idempotent, so that a retry finishes half a delete: a crash between the two tombstones
    /// leaves the object deleted and its metadata record (and so its catalog row) live, and
    /// deleting again then removes what is left.
    pub fn delete_instance(&self, sop_instance_uid: &str) -> Result<Option<Committed>> {
        let key = sop_instance_uid.as_bytes();
        let object = self.delete(Namespace::OBJECT, key)?;
        let metadata = self.delete(Namespace::METADATA, key)?;
        if let (Some(catalog), Some(md)) = (self.catalog(), metadata) {
            catalog.remove(sop_instance_uid, md.seq, md.segment_id)?;
        }
        Ok(object.or(metadata))
    }

    /// What opening found: torn tails cut, seals finished, corruption (never served).
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Scrubs the store: every record of every segment and every block of every index run
    /// against its checksums, now, listing each damaged place with the keys it affects (see
    /// [`crate::verify`]). Damage opening found and the scrub did not find again is
    /// included. Reads only; the store keeps serving meanwhile. `progress` is called as the
    /// scrub goes.
    pub fn verify(&self, progress: &mut dyn FnMut(VerifyProgress)) -> Result<VerifyReport> {
        let mut report = crate::verify::verify(&self.shared, self.catalog(), progress)?;
        report.found_at_open = self
            .report
            .corruption
            .iter()
            .filter(|c| {
                !report.segment_damage.iter().any(|d| {
                    d.segment_id == c.segment_id
                        && (d.offset == c.offset || d.record_offset == Some(c.offset))
                })
            })
            .cloned()
            .collect();
        report.torn_tails_cut_at_open = self.report.torn_tails.clone();
        report.runs_set_aside_at_open = self.catalog_open_report().runs_rejected.clone();
        Ok(report)
    }

    /// Checks every index run now and sets aside (renames `*.kvi.bad`) each one with damage,
    /// then indexes the segments they covered again, as opening does for a damaged run, and
    /// checks the runs once more. Segments are never changed: damage there is for restoring
    /// from a backup.
    pub fn repair_indices(&self) -> Result<RepairReport> {
        let mut report = RepairReport::default();
        let Some(catalog) = self.catalog() else {
            return Ok(report);
        };
        for run in catalog.runs() {
            report.runs_checked += 1;
            if run.scrub(&mut |_| {}).is_clean() {
                continue;
            }
            let path = run.path().display().to_string();
            drop(run);
            if catalog.quarantine(&path)? {
                report
                    .runs_set_aside
                    .push((path.clone(), format!("{path}.bad")));
            }
        }
        if !report.runs_set_aside.is_empty() {
            report.segments_reindexed = self.instances().index_now(&self.shared)?;
        }
        let runs = catalog.runs();
        report.runs_after = runs.len();
        for run in runs {
            let path = run.path().display().to_string();
            for p in run.scrub(&mut |_| {}).problems {
                report.still_damaged.push(crate::verify::RunDamage {
                    file: path.clone(),
                    offset: p.offset,
                    block: p.block,
                    what: p.what,
                });
            }
        }
        Ok(report)
    }

    fn check_key(key: &[u8]) -> Result<()> {
        if key.len() > KEY_BYTES_MAX {
            return Err(Error::Limit {
                what: "key length",
                value: key.len() as u64,
                max: KEY_BYTES_MAX as u64,
            });
        }
        Ok(())
    }

    fn check_namespace(namespace: Namespace) -> Result<()> {
        if namespace == Namespace::NONE {
            return Err(Error::InvalidArgument("namespace 0 is reserved".into()));
        }
        Ok(())
    }

    /// Stores `bytes` under `key`, replacing what was there; returns once durable.
    ///
    /// The writer copies straight from `bytes` (no intermediate buffer) and checksums each
    /// block while it is in cache: one pass over the object's memory.
    pub fn put(&self, namespace: Namespace, key: &[u8], bytes: &[u8]) -> Result<Committed> {
        Self::check_key(key)?;
        Self::check_namespace(namespace)?;
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        let config = &self.shared.config;
        let len = bytes.len() as u64;
        if len > config.object_bytes_max() {
            return Err(Error::Limit {
                what: "object size",
                value: len,
                max: config.object_bytes_max(),
            });
        }
        if bytes.len() <= config.put_buffer_bytes {
            let (reply, rx) = mpsc::sync_channel(1);
            let append = Append {
                namespace,
                kind: RecordKind::Blob,
                key: key.to_vec(),
                // SAFETY: we wait for the reply below before returning.
                body: Body::Lent(unsafe { LentBytes::new(bytes) }),
                object_len: len,
                reply: Reply::Commit(reply),
                pins: None,
            };
            return send_and_wait_commit(&self.tx, append, rx);
        }
        let mut lent = LentChunks {
            outstanding: VecDeque::new(),
            chunks: Vec::new(),
            pins: ChunkPins::new(self.shared.clone()),
        };
        for piece in bytes.chunks(config.put_buffer_bytes) {
            let (reply, rx) = mpsc::sync_channel(1);
            let append = Append {
                namespace,
                kind: RecordKind::Chunk,
                key: key.to_vec(),
                // SAFETY: `lent` waits for every reply before this function returns, also on
                // an early return (its Drop drains what is outstanding).
                body: Body::Lent(unsafe { LentBytes::new(piece) }),
                object_len: 0,
                reply: Reply::Chunk(reply),
                pins: None,
            };
            self.tx
                .send(Msg::Append(append))
                .map_err(|_| Error::Closed)?;
            lent.outstanding.push_back(rx);
            if lent.outstanding.len() > LENT_CHUNKS_IN_FLIGHT_MAX {
                lent.wait_oldest()?;
            }
        }
        while !lent.outstanding.is_empty() {
            lent.wait_oldest()?;
        }
        let manifest = encode_manifest(len, &lent.chunks);
        let pins = lent.pins.take();
        let (reply, rx) = mpsc::sync_channel(1);
        let append = Append {
            namespace,
            kind: RecordKind::Manifest,
            key: key.to_vec(),
            body: Body::Owned(manifest),
            object_len: len,
            reply: Reply::Commit(reply),
            pins: Some(pins),
        };
        send_and_wait_commit(&self.tx, append, rx)
    }

    /// Starts a streaming put. Nothing is visible until [`PutStream::finish`] returns; a
    /// stream dropped before that leaves nothing visible.
    pub fn put_stream(&self, namespace: Namespace, key: &[u8]) -> Result<PutStream> {
        Self::check_key(key)?;
        Self::check_namespace(namespace)?;
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        Ok(PutStream {
            tx: self.tx.clone(),
            namespace,
            key: key.to_vec(),
            buf: Vec::new(),
            buf_capacity: self.shared.config.put_buffer_bytes,
            chunks: Vec::new(),
            pins: ChunkPins::new(self.shared.clone()),
            len: 0,
            object_bytes_max: self.shared.config.object_bytes_max(),
        })
    }

    /// The object stored under `key`, if any.
    pub fn get(&self, namespace: Namespace, key: &[u8]) -> Result<Option<Object>> {
        self.shared.get(namespace, key)
    }

    /// The keys of `namespace` that hold an object (not deleted), in byte order.
    ///
    /// For small namespaces whose holders keep their state in memory (the archive rules'
    /// records); it walks the whole locator.
    pub fn keys(&self, namespace: Namespace) -> Vec<Box<[u8]>> {
        let mut keys: Vec<Box<[u8]>> = self
            .shared
            .read_index()
            .iter()
            .filter(|((ns, _), entry)| *ns == namespace && entry.kind != RecordKind::Tombstone)
            .map(|((_, key), _)| key.clone())
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Deletes `key` with a durable tombstone. `None` if there was nothing to delete.
    pub fn delete(&self, namespace: Namespace, key: &[u8]) -> Result<Option<Committed>> {
        Self::check_key(key)?;
        Self::check_namespace(namespace)?;
        // A poisoned store may hold bytes of a put that failed (its outcome unknown, the key
        // not in the index): "nothing to delete" would be a promise the next open breaks.
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        match self.shared.read_index().get(namespace, key) {
            None => return Ok(None),
            Some(e) if e.kind == RecordKind::Tombstone => return Ok(None),
            Some(_) => {}
        }
        let (reply, rx) = mpsc::sync_channel(1);
        let append = Append {
            namespace,
            kind: RecordKind::Tombstone,
            key: key.to_vec(),
            body: Body::Owned(Vec::new()),
            object_len: 0,
            reply: Reply::Commit(reply),
            pins: None,
        };
        send_and_wait_commit(&self.tx, append, rx).map(Some)
    }

    /// Copies live records out of sealed segments with garbage, then removes those segments.
    /// Reads and writes continue meanwhile.
    pub fn compact(&self, options: &CompactOptions) -> Result<CompactionReport> {
        compaction::compact(&self.shared, options, &|_| {})
    }

    /// [`Store::compact`], telling `progress` how far it is as it goes.
    pub fn compact_with_progress(
        &self,
        options: &CompactOptions,
        progress: &dyn Fn(compaction::CompactProgress),
    ) -> Result<CompactionReport> {
        compaction::compact(&self.shared, options, progress)
    }

    /// How the segments' space is used: per segment its file bytes, live bytes (records the
    /// index points at) and garbage ratio, the same numbers compaction picks segments by; and
    /// the catalog's index runs. Takes a copy of the index, as compaction does; reads and
    /// writes continue meanwhile.
    pub fn space_report(&self) -> SpaceReport {
        let mut report = space::space_report(&self.shared);
        if let Some(catalog) = self.catalog() {
            let runs = catalog.run_counts();
            report.index_runs = runs.len();
            report.index_bytes = runs.iter().map(|r| r.file_bytes).sum();
        }
        report
    }

    /// Set once a write or sync failed; the store is then read-only.
    pub fn poisoned(&self) -> Option<Arc<str>> {
        self.shared.poisoned()
    }

    /// Writer counters.
    pub fn engine_stats(&self) -> &EngineStats {
        &self.shared.stats
    }

    pub fn stats(&self) -> StoreStats {
        let segments = self.shared.read_segments();
        let segment_bytes = segments.values().map(|s| s.file.len().unwrap_or(0)).sum();
        StoreStats {
            segments: segments.len(),
            sealed_segments: segments.values().filter(|s| s.is_sealed()).count(),
            segment_bytes,
            live_keys: self.shared.read_index().live_count(),
        }
    }

    /// Waits for in-flight writes and stops the writer. Dropping the store does the same.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Some(instances) = &mut self.instances {
            instances.shutdown(&self.shared);
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Chunks a caller's slice may have queued at the writer at once.
const LENT_CHUNKS_IN_FLIGHT_MAX: usize = 2;

/// The chunks an uncommitted put has placed, each pinning its segment against compaction.
/// The writer pins a chunk's segment before it answers the chunk; this guard takes the pin
/// over and releases it when dropped: by the flusher, under the index's write lock, right
/// after the put's manifest is published (from then on the index reaches the chunks), or
/// wherever an abandoned or refused put is dropped.
pub(crate) struct ChunkPins {
    shared: Arc<Shared>,
    segment_ids: Vec<u64>,
}

impl ChunkPins {
    fn new(shared: Arc<Shared>) -> Self {
        ChunkPins {
            shared,
            segment_ids: Vec::new(),
        }
    }

    /// Moves the pins out, leaving this guard empty.
    fn take(&mut self) -> ChunkPins {
        ChunkPins {
            shared: self.shared.clone(),
            segment_ids: std::mem::take(&mut self.segment_ids),
        }
    }

    /// Takes over the pin the writer made for a chunk placed in `segment_id`.
    fn hold(&mut self, segment_id: u64) {
        self.segment_ids.push(segment_id);
    }
}

impl Drop for ChunkPins {
    fn drop(&mut self) {
        if !self.segment_ids.is_empty() {
            self.shared.unpin_segments(&self.segment_ids);
        }
    }
}

/// Chunks of a lent slice not yet answered by the writer.
struct LentChunks {
    outstanding: VecDeque<mpsc::Receiver<(Result<ChunkRef>, Vec<u8>)>>,
    chunks: Vec<ChunkRef>,
    pins: ChunkPins,
}

impl LentChunks {
    fn wait_oldest(&mut self) -> Result<()> {
        let Some(rx) = self.outstanding.pop_front() else {
            return Ok(());
        };
        let (location, _) = rx.recv().map_err(|_| Error::Closed)?;
        let location = location?;
        self.pins.hold(location.segment_id);
        self.chunks.push(location);
        Ok(())
    }
}

impl Drop for LentChunks {
    fn drop(&mut self) {
        // The writer may still read the lent slice until it answers (or drops) each request.
        for rx in self.outstanding.drain(..) {
            if let Ok((Ok(location), _)) = rx.recv() {
                self.pins.hold(location.segment_id);
            }
        }
    }
}

fn send_and_wait_commit(
    tx: &SyncSender<Msg>,
    append: Append,
    rx: mpsc::Receiver<Result<Committed>>,
) -> Result<Committed> {
    tx.send(Msg::Append(append)).map_err(|_| Error::Closed)?;
    rx.recv().map_err(|_| Error::Closed)?
}

/// A put in progress. Memory held: at most `put_buffer_bytes`.
pub struct PutStream {
    tx: SyncSender<Msg>,
    namespace: Namespace,
    key: Vec<u8>,
    buf: Vec<u8>,
    buf_capacity: usize,
    chunks: Vec<ChunkRef>,
    /// Keeps the segments of `chunks` from being compacted away before the manifest is
    /// published (or this put is dropped).
    pins: ChunkPins,
    len: u64,
    object_bytes_max: u64,
}

impl PutStream {
    /// Appends bytes to the object.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        let new_len = self.len + bytes.len() as u64;
        if new_len > self.object_bytes_max {
            return Err(Error::Limit {
                what: "object size",
                value: new_len,
                max: self.object_bytes_max,
            });
        }
        if self.buf.capacity() < self.buf_capacity && !bytes.is_empty() {
            // The whole buffer at once: growing it by doubling would copy what it holds
            // again at every step.
            self.buf.reserve_exact(self.buf_capacity - self.buf.len());
        }
        while !bytes.is_empty() {
            let take = (self.buf_capacity - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            self.len += take as u64;
            if self.buf.len() == self.buf_capacity {
                self.send_chunk()?;
            }
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn send_chunk(&mut self) -> Result<()> {
        let body = std::mem::take(&mut self.buf);
        let (reply, rx) = mpsc::sync_channel(1);
        let append = Append {
            namespace: self.namespace,
            kind: RecordKind::Chunk,
            key: self.key.clone(),
            body: Body::Owned(body),
            object_len: 0,
            reply: Reply::Chunk(reply),
            pins: None,
        };
        self.tx
            .send(Msg::Append(append))
            .map_err(|_| Error::Closed)?;
        let (location, mut returned) = rx.recv().map_err(|_| Error::Closed)?;
        returned.clear();
        self.buf = returned;
        let location = location?;
        self.pins.hold(location.segment_id);
        self.chunks.push(location);
        Ok(())
    }

    /// Makes the object durable and visible; returns once both are true.
    pub fn finish(self) -> Result<Committed> {
        self.finish_placed()?.wait()
    }

    /// Submits the object's findable record and returns at once: [`PendingPut::placed`] says
    /// where it went (before it is durable), [`PendingPut::wait`] waits until it is durable and
    /// visible. Writes submitted after `placed` returns are acknowledged after this one.
    pub fn finish_placed(mut self) -> Result<PendingPut> {
        let (kind, body) = if self.chunks.is_empty() {
            (RecordKind::Blob, std::mem::take(&mut self.buf))
        } else {
            if !self.buf.is_empty() {
                self.send_chunk()?;
            }
            (
                RecordKind::Manifest,
                encode_manifest(self.len, &self.chunks),
            )
        };
        assert!(
            body.len() <= self.buf_capacity,
            "manifest over the checked object limit"
        );
        let (placed, placed_rx) = mpsc::sync_channel(1);
        let (commit, commit_rx) = mpsc::sync_channel(1);
        let append = Append {
            namespace: self.namespace,
            kind,
            key: std::mem::take(&mut self.key),
            body: Body::Owned(body),
            object_len: self.len,
            reply: Reply::CommitPlaced { placed, commit },
            pins: Some(self.pins.take()),
        };
        self.tx
            .send(Msg::Append(append))
            .map_err(|_| Error::Closed)?;
        Ok(PendingPut {
            placed: placed_rx,
            commit: commit_rx,
        })
    }
}

/// A findable record submitted by [`PutStream::finish_placed`].
pub struct PendingPut {
    placed: mpsc::Receiver<Committed>,
    commit: mpsc::Receiver<Result<Committed>>,
}

impl PendingPut {
    /// Where the record went (its seq, segment and offset), once it has a place in a batch;
    /// not yet durable. A record refused before it got a place gives that error.
    pub fn placed(&self) -> Result<Committed> {
        match self.placed.recv() {
            Ok(placed) => Ok(placed),
            // Refused without a place: the commit channel has the reason.
            Err(_) => match self.commit.recv() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(committed)) => Ok(committed),
                Err(_) => Err(Error::Closed),
            },
        }
    }

    /// Waits until the record is durable and visible.
    pub fn wait(self) -> Result<Committed> {
        self.commit.recv().map_err(|_| Error::Closed)?
    }
}

impl std::io::Write for PutStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        PutStream::write(self, buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
