//! The group-commit writer: one writer thread and `StoreConfig::flushers` flusher threads that
//! turn appends into durable, findable records.
//!
//! The **writer** thread receives appends from every put, serializes each record into the
//! current batch buffer (4096-aligned, block checksums computed as each block is copied),
//! seals full segments and opens new ones. A batch goes to an idle **flusher** when no append
//! is waiting or when it is full. Flushers submit batches to the device in batch order, so the
//! file grows as one sequential stream, and several batches are in flight at once. Each batch
//! is written in one of three ways, chosen by the writer:
//! - **plain**: only chunks of streams still in progress, nothing to acknowledge;
//! - **durable** (`RWF_DSYNC`: the write completes only once durable): it holds records to
//!   acknowledge and every earlier batch is already durable on its own;
//! - **write then fdatasync**: it holds records to acknowledge (or `UNSYNCED_BYTES_MAX` bytes
//!   were written plainly since the last durable point) and earlier plain batches must be
//!   covered: once its write and every earlier write completed, one `fdatasync` makes them all
//!   durable.
//!
//! A flusher then publishes its batch's findable records to the index and acknowledges their
//! puts, strictly in batch order. Every put that arrives while batches are in flight shares
//! the next batch (group commit). Memory is bounded: `flushers + 1` batch buffers plus the
//! bounded request queue.
//!
//! Invariants (asserted where cheap):
//! - a findable record is published and acknowledged only once it, and every byte written
//!   before it in its segment, is durable;
//! - acknowledgements go out in batch order;
//! - batches start page-aligned and never rewrite bytes of an earlier batch;
//! - at most `UNSYNCED_BYTES_MAX` bytes are written plainly before a durable point;
//! - after any write or sync error the store is poisoned: no later record is acknowledged.

use super::format::{
    dir_entry_bytes, encode_padding, encode_record, padding_bytes, segment_file_name, ChunkRef,
    DirEntry, Namespace, RecordHeader, RecordKind, BATCHES_IN_FLIGHT_MAX, DIRECTORY_BYTES_MAX,
    PAGE_BYTES, SEGMENT_HEADER_BYTES, UNSYNCED_BYTES_MAX,
};
use super::lifecycle::{create_segment, seal_segment};
use super::reader::SegmentHandle;
use crate::error::{Error, Result};
use crate::index::Entry;
use crate::io::AlignedBuf;
use crate::store::{ChunkPins, Committed, Shared};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Most flusher threads a configuration may ask for (each holds one batch in flight).
pub const FLUSHERS_MAX: usize = BATCHES_IN_FLIGHT_MAX as usize;

/// How an append is answered.
pub(crate) enum Reply {
    /// Chunks are answered as soon as they have a place (their durability comes with the
    /// manifest's sync); the body buffer is handed back for reuse.
    Chunk(SyncSender<(Result<ChunkRef>, Vec<u8>)>),
    /// Findable records are answered after they are durable and published.
    Commit(SyncSender<Result<Committed>>),
    /// As `Commit`, and also told where the record went as soon as it has its place in a
    /// batch (before it is durable), so the caller can prepare what follows it.
    CommitPlaced {
        placed: SyncSender<Committed>,
        commit: SyncSender<Result<Committed>>,
    },
}

/// Bytes of a record body, owned or lent by a caller that waits for the reply.
pub(crate) enum Body {
    Owned(Vec<u8>),
    Lent(LentBytes),
}

/// A caller's slice, copied by the writer without an intermediate copy.
pub(crate) struct LentBytes {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the lender (Store::put) does not return before the writer answered the request or
// dropped it, and the writer only reads the bytes while serializing (before it answers), so
// the slice is alive and unchanged whenever the writer thread reads it.
unsafe impl Send for LentBytes {}

impl LentBytes {
    /// # Safety
    /// `bytes` must stay alive and unmodified until the request carrying this value has been
    /// answered or dropped (the reply channel reports either).
    pub(crate) unsafe fn new(bytes: &[u8]) -> Self {
        LentBytes {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }
}

impl Body {
    fn as_slice(&self) -> &[u8] {
        match self {
            Body::Owned(v) => v,
            // SAFETY: see LentBytes: the lender keeps the slice alive until answered.
            Body::Lent(l) => unsafe { std::slice::from_raw_parts(l.ptr, l.len) },
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// The owned buffer back for reuse (empty for lent bytes).
    fn into_reusable(self) -> Vec<u8> {
        match self {
            Body::Owned(v) => v,
            Body::Lent(_) => Vec::new(),
        }
    }
}

/// One record to append.
pub(crate) struct Append {
    pub namespace: Namespace,
    pub kind: RecordKind,
    pub key: Vec<u8>,
    pub body: Body,
    pub object_len: u64,
    pub reply: Reply,
    /// A manifest's chunk pins, released once it is published (or refused).
    pub pins: Option<ChunkPins>,
}

pub(crate) enum Msg {
    Append(Append),
    /// Flusher `n` finished a batch and returns its buffer.
    FlusherIdle(usize, AlignedBuf),
    Shutdown,
}

struct PendingCommit {
    namespace: Namespace,
    key: Vec<u8>,
    entry: Entry,
    reply: SyncSender<Result<Committed>>,
    pins: Option<ChunkPins>,
}

struct Batch {
    /// Position in the writer's sequence of batches.
    number: u64,
    segment: Arc<SegmentHandle>,
    buf: AlignedBuf,
    offset: u64,
    commits: Vec<PendingCommit>,
    mode: WriteMode,
}

/// How a batch reaches the device (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    Plain,
    Durable,
    WriteThenSync,
}

struct Active {
    segment: Arc<SegmentHandle>,
    /// Offset where the current batch starts (everything before was handed to the flusher).
    batch_offset: u64,
    /// Records must end at or before this offset (the last page stays free).
    records_limit: u64,
    directory: Vec<DirEntry>,
    /// Encoded size of `directory`.
    directory_bytes: u64,
    /// Bytes written plainly since the last durable point (0: everything is durable).
    unsynced_bytes: u64,
}

/// What recovery hands the writer: the segment to continue and where.
pub(crate) struct ActiveStart {
    pub segment: Arc<SegmentHandle>,
    pub write_offset: u64,
    pub directory: Vec<DirEntry>,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    tx_self: SyncSender<Msg>,
    flush_txs: Vec<SyncSender<Batch>>,
    flushers: Vec<JoinHandle<()>>,
    /// Flushers waiting for a batch.
    idle: Vec<usize>,
    batch_number: u64,
    active: Option<Active>,
    batch: AlignedBuf,
    commits: Vec<PendingCommit>,
    free: Vec<AlignedBuf>,
    deferred: VecDeque<Msg>,
    seq_next: u64,
    shutting_down: bool,
}

/// Orders the flushers: which batches have been written, which acknowledged.
#[derive(Default)]
struct FlushOrder {
    state: Mutex<OrderState>,
    changed: Condvar,
}

#[derive(Default)]
struct OrderState {
    /// Every batch numbered below this has been submitted to the device.
    submitted_below: u64,
    /// Every batch numbered below this has completed its write.
    written_below: u64,
    /// Completed writes of batches at or above `written_below`.
    written_ahead: BTreeSet<u64>,
    /// Every batch numbered below this has been acknowledged (or failed).
    acked_below: u64,
}

impl FlushOrder {
    fn lock(&self) -> MutexGuard<'_, OrderState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_until(&self, done: impl Fn(&OrderState) -> bool) {
        let mut state = self.lock();
        while !done(&state) {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn mark_submitted(&self, number: u64) {
        let mut state = self.lock();
        assert_eq!(
            state.submitted_below, number,
            "batches are submitted in order"
        );
        state.submitted_below = number + 1;
        drop(state);
        self.changed.notify_all();
    }

    fn mark_written(&self, number: u64) {
        let mut state = self.lock();
        state.written_ahead.insert(number);
        loop {
            let next = state.written_below;
            if !state.written_ahead.remove(&next) {
                break;
            }
            state.written_below += 1;
        }
        drop(state);
        self.changed.notify_all();
    }

    fn mark_acked(&self, number: u64) {
        let mut state = self.lock();
        assert_eq!(
            state.acked_below, number,
            "acknowledgements go out in batch order"
        );
        state.acked_below = number + 1;
        drop(state);
        self.changed.notify_all();
    }
}

/// Capacity of a batch buffer: the configured batch plus room for one record and padding.
fn batch_capacity(shared: &Shared) -> usize {
    shared.config.batch_capacity_bytes() as usize
}

impl Writer {
    /// Starts the writer and flusher threads.
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        start: Option<ActiveStart>,
        seq_next: u64,
    ) -> Result<(SyncSender<Msg>, JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel(shared.config.requests_queued_max);
        let order = Arc::new(FlushOrder::default());
        let count = shared.config.flushers;
        let mut flush_txs = Vec::with_capacity(count);
        let mut flushers = Vec::with_capacity(count);
        for n in 0..count {
            let (flush_tx, flush_rx) = mpsc::sync_channel::<Batch>(1);
            let (flusher_shared, idle, order) = (shared.clone(), tx.clone(), order.clone());
            let flusher = std::thread::Builder::new()
                .name(format!("kuvasto-flusher-{n}"))
                .spawn(move || flusher_loop(n, flusher_shared, order, flush_rx, idle))
                .map_err(|e| Error::io("spawn", "flusher thread", e))?;
            flush_txs.push(flush_tx);
            flushers.push(flusher);
        }
        let capacity = batch_capacity(&shared);
        let active = start.map(|s| Active {
            records_limit: records_limit(&shared),
            segment: s.segment,
            batch_offset: s.write_offset,
            directory_bytes: s
                .directory
                .iter()
                .map(|e| dir_entry_bytes(e.key.len()))
                .sum(),
            directory: s.directory,
            unsynced_bytes: 0,
        });
        let writer = Writer {
            shared,
            rx,
            tx_self: tx.clone(),
            flush_txs,
            flushers,
            idle: (0..count).collect(),
            batch_number: 0,
            active,
            batch: AlignedBuf::with_capacity(capacity),
            commits: Vec::new(),
            free: Vec::new(),
            deferred: VecDeque::new(),
            seq_next,
            shutting_down: false,
        };
        let handle = std::thread::Builder::new()
            .name("kuvasto-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::io("spawn", "writer thread", e))?;
        Ok((tx, handle))
    }

    fn run(mut self) {
        loop {
            let msg = match self.deferred.pop_front() {
                Some(msg) => msg,
                None => match self.rx.try_recv() {
                    Ok(msg) => msg,
                    Err(TryRecvError::Empty) => {
                        if !self.batch.is_empty() && !self.idle.is_empty() {
                            self.dispatch();
                            continue;
                        }
                        if self.shutting_down && self.all_idle() && self.batch.is_empty() {
                            break;
                        }
                        match self.rx.recv() {
                            Ok(msg) => msg,
                            Err(_) => break,
                        }
                    }
                    Err(TryRecvError::Disconnected) => break,
                },
            };
            self.handle(msg);
        }
        self.wait_all_idle();
        self.wait_one_idle();
        self.dispatch();
        self.wait_all_idle();
        // Closing the flushers' channels ends them; none has anything in flight now.
        self.flush_txs.clear();
        for flusher in self.flushers.drain(..) {
            let _ = flusher.join();
        }
        drop(self.tx_self);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Append(append) => {
                if self.shutting_down {
                    fail(append.reply, Error::Closed);
                } else {
                    self.append(append);
                }
            }
            Msg::FlusherIdle(n, buf) => {
                self.idle.push(n);
                self.free.push(buf);
            }
            Msg::Shutdown => self.shutting_down = true,
        }
    }

    fn all_idle(&self) -> bool {
        self.idle.len() == self.flush_txs.len()
    }

    /// Receives until `done`, keeping appends for later.
    fn wait_flushers(&mut self, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            match self.rx.recv() {
                Ok(Msg::FlusherIdle(n, buf)) => {
                    self.idle.push(n);
                    self.free.push(buf);
                }
                Ok(other) => self.deferred.push_back(other),
                Err(_) => return,
            }
        }
    }

    fn wait_one_idle(&mut self) {
        self.wait_flushers(|w| !w.idle.is_empty());
    }

    fn wait_all_idle(&mut self) {
        self.wait_flushers(Self::all_idle);
    }

    /// Waits (taking idle notices, keeping appends for later) until a batch ending at
    /// `batch_end` lies within the torn window of the active segment's durable end, or every
    /// flusher is idle (then the window holds anyway: at most the unsynced plain bytes and
    /// this batch lie past the durable end). So at a crash no byte further than the window
    /// past the durable end was ever written, which is what recovery relies on.
    fn wait_within_torn_window(&mut self, batch_end: u64) {
        let window = self.shared.config.torn_window_bytes();
        self.wait_flushers(|w| {
            w.all_idle()
                || w.active.as_ref().is_none_or(|active| {
                    batch_end.saturating_sub(active.segment.durable_end()) <= window
                })
        });
    }

    /// Hands the current batch to an idle flusher (one must be idle).
    fn dispatch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if let Some(active) = &self.active {
            let batch_end = active.batch_offset + self.batch.len() as u64 + PAGE_BYTES;
            self.wait_within_torn_window(batch_end);
        }
        let Some(flusher) = self.idle.pop() else {
            panic!("dispatch without an idle flusher");
        };
        let Some(active) = self.active.as_mut() else {
            self.idle.push(flusher);
            return;
        };
        let end = active.batch_offset + self.batch.len() as u64;
        let pad = padding_bytes(end) as usize;
        if pad > 0 {
            let start = self.batch.len();
            self.batch.set_len(start + pad);
            encode_padding(&mut self.batch[start..], active.segment.id, end);
        }
        debug_assert_eq!(self.batch.len() as u64 % PAGE_BYTES, 0);
        let mut next = self
            .free
            .pop()
            .unwrap_or_else(|| AlignedBuf::with_capacity(batch_capacity(&self.shared)));
        next.set_len(0);
        let buf = std::mem::replace(&mut self.batch, next);
        let must_be_durable = !self.commits.is_empty()
            || active.unsynced_bytes + buf.len() as u64 >= UNSYNCED_BYTES_MAX;
        let mode = match (must_be_durable, active.unsynced_bytes) {
            (false, _) => WriteMode::Plain,
            (true, 0) => WriteMode::Durable,
            (true, _) => WriteMode::WriteThenSync,
        };
        active.unsynced_bytes = match mode {
            WriteMode::Plain => active.unsynced_bytes + buf.len() as u64,
            WriteMode::Durable | WriteMode::WriteThenSync => 0,
        };
        let batch = Batch {
            number: self.batch_number,
            segment: active.segment.clone(),
            offset: active.batch_offset,
            commits: std::mem::take(&mut self.commits),
            buf,
            mode,
        };
        self.batch_number += 1;
        active.batch_offset += batch.buf.len() as u64;
        if self.flush_txs[flusher].send(batch).is_err() {
            self.shared.poison(&Error::Closed);
        }
    }

    fn append(&mut self, append: Append) {
        if let Some(cause) = self.shared.poisoned() {
            fail(append.reply, Error::Poisoned { cause });
            return;
        }
        let header_len = RecordHeader {
            kind: append.kind,
            namespace: append.namespace,
            key_len: append.key.len() as u16,
            body_len: append.body.len() as u64,
            segment_id: 0,
            offset: 0,
            seq: 0,
            generation: 0,
            flags: 0,
        }
        .record_len();
        assert!(
            header_len <= self.shared.config.record_bytes_max(),
            "record of {header_len} bytes over the checked maximum"
        );
        // Room in the batch?
        if self.batch.len() as u64 + header_len > self.shared.config.batch_bytes_max as u64 {
            self.wait_one_idle();
            self.dispatch();
        }
        // Room in the segment (keeping a page for padding and the last page free)?
        let directory_grows = if append.kind.is_findable() {
            dir_entry_bytes(append.key.len())
        } else {
            0
        };
        let fits = self.active.as_ref().is_some_and(|a| {
            a.batch_offset + self.batch.len() as u64 + header_len + 2 * PAGE_BYTES
                <= a.records_limit
                && a.directory_bytes + directory_grows <= DIRECTORY_BYTES_MAX
        });
        if !fits {
            if let Err(e) = self.rotate() {
                // A full disk while preparing a new segment wrote nothing: refuse this append
                // and try again with the next one. Anything else leaves the state unknown.
                if !matches!(e, Error::NoSpace { .. }) {
                    self.shared.poison(&e);
                }
                fail(append.reply, e);
                return;
            }
        }
        let Some(active) = self.active.as_mut() else {
            fail(append.reply, Error::Closed);
            return;
        };
        let offset = active.batch_offset + self.batch.len() as u64;
        let seq = self.seq_next;
        self.seq_next += 1;
        let header = RecordHeader {
            kind: append.kind,
            namespace: append.namespace,
            key_len: append.key.len() as u16,
            body_len: append.body.len() as u64,
            segment_id: active.segment.id,
            offset,
            seq,
            generation: 0,
            flags: 0,
        };
        let start = self.batch.len();
        self.batch.set_len(start + header_len as usize);
        encode_record(
            &mut self.batch[start..],
            &header,
            &append.key,
            append.body.as_slice(),
        );
        let reply = match append.reply {
            Reply::Chunk(reply) => {
                let location = ChunkRef {
                    segment_id: active.segment.id,
                    offset,
                    len: append.body.len() as u64,
                };
                // Pinned before the put learns of it, and so before this segment can be
                // sealed and picked by compaction; the put's `ChunkPins` takes the pin over.
                self.shared.pin_segment(active.segment.id);
                if reply
                    .send((Ok(location), append.body.into_reusable()))
                    .is_err()
                {
                    self.shared.unpin_segments(&[active.segment.id]);
                }
                return;
            }
            Reply::Commit(reply) => reply,
            Reply::CommitPlaced { placed, commit } => {
                let _ = placed.send(Committed {
                    seq,
                    segment_id: active.segment.id,
                    offset,
                    len: append.object_len,
                });
                commit
            }
        };
        let entry = Entry {
            kind: append.kind,
            seq,
            generation: 0,
            segment_id: active.segment.id,
            offset,
            object_len: append.object_len,
        };
        active.directory_bytes += directory_grows;
        active.directory.push(DirEntry {
            namespace: append.namespace,
            kind: append.kind,
            generation: 0,
            seq,
            offset,
            object_len: append.object_len,
            key: append.key.clone(),
        });
        self.commits.push(PendingCommit {
            namespace: append.namespace,
            key: append.key,
            entry,
            reply,
            pins: append.pins,
        });
    }

    /// Seals the active segment (after all its batches are durable) and opens a new one.
    fn rotate(&mut self) -> Result<()> {
        self.wait_one_idle();
        self.dispatch();
        self.wait_all_idle();
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        if let Some(active) = self.active.take() {
            let final_len = seal_segment(
                active.segment.file.as_ref(),
                active.segment.id,
                active.batch_offset,
                &active.directory,
            )
            .inspect_err(|e| self.shared.poison(e))?;
            let map = active
                .segment
                .file
                .map()
                .map_err(|e| Error::io("mmap", active.segment.file.name(), e))?;
            assert_eq!(map.len() as u64, final_len, "sealed length");
            active.segment.set_sealed(map);
            self.shared.notify_sealed(active.segment.id);
        }
        let id = self.shared.allocate_segment_id()?;
        let size = self.shared.config.segment_size_bytes_max;
        let name = segment_file_name(id);
        let file = create_segment(self.shared.storage.as_ref(), &name, id, size, 0)?;
        self.shared
            .storage
            .sync_dir()
            .map_err(|e| Error::io("fsync directory", &name, e))?;
        let segment = Arc::new(SegmentHandle::new(id, file));
        self.shared.register_segment(segment.clone());
        self.active = Some(Active {
            segment,
            batch_offset: SEGMENT_HEADER_BYTES,
            records_limit: records_limit(&self.shared),
            directory: Vec::new(),
            directory_bytes: 0,
            unsynced_bytes: 0,
        });
        Ok(())
    }
}

fn records_limit(shared: &Shared) -> u64 {
    shared.config.segment_size_bytes_max - PAGE_BYTES
}

fn fail(reply: Reply, error: Error) {
    match reply {
        Reply::Chunk(tx) => {
            let _ = tx.send((Err(error), Vec::new()));
        }
        Reply::Commit(tx) | Reply::CommitPlaced { commit: tx, .. } => {
            let _ = tx.send(Err(error));
        }
    }
}

fn flusher_loop(
    me: usize,
    shared: Arc<Shared>,
    order: Arc<FlushOrder>,
    rx: Receiver<Batch>,
    idle: SyncSender<Msg>,
) {
    while let Ok(batch) = rx.recv() {
        let Batch {
            number,
            segment,
            buf,
            offset,
            mut commits,
            mode,
        } = batch;
        assert_eq!(offset % PAGE_BYTES, 0, "batches start page-aligned");
        assert!(
            offset >= SEGMENT_HEADER_BYTES,
            "batches never overwrite the segment header"
        );
        let bytes = buf.len() as u64;
        let file = segment.file.as_ref();
        // Submit in batch order, so the file grows as one sequential stream.
        order.wait_until(|s| s.submitted_below == number);
        let submitted = std::time::Instant::now();
        let (buf, mut result) = match shared.poisoned() {
            Some(cause) => {
                order.mark_submitted(number);
                (buf, Err(Error::Poisoned { cause }))
            }
            None => {
                let started = std::time::Instant::now();
                let pending = file.begin_write(buf, offset, mode == WriteMode::Durable);
                order.mark_submitted(number);
                let (buf, result) = pending.wait();
                shared
                    .stats
                    .write_nanos
                    .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                let op = match mode {
                    WriteMode::Durable => "write+fdatasync",
                    _ => "write",
                };
                (buf, result.map_err(|e| Error::io(op, file.name(), e)))
            }
        };
        order.mark_written(number);
        if mode == WriteMode::WriteThenSync && result.is_ok() {
            // One fdatasync covers this batch and the plain ones before it.
            order.wait_until(|s| s.written_below > number);
            result = file
                .sync_data()
                .map_err(|e| Error::io("fdatasync", file.name(), e));
        }
        if mode != WriteMode::Plain && result.is_ok() {
            shared
                .stats
                .durable_write_micros
                .observe(submitted.elapsed().as_micros() as u64);
        }
        order.wait_until(|s| s.acked_below == number);
        if result.is_ok() {
            if let Some(cause) = shared.poisoned() {
                result = Err(Error::Poisoned { cause });
            }
        }
        match result {
            Ok(()) => {
                if mode != WriteMode::Plain {
                    // This batch and every byte before it in its segment are durable.
                    segment.note_durable(offset + bytes);
                }
                shared
                    .stats
                    .record_batch(bytes, mode != WriteMode::Plain, commits.len());
                {
                    let mut index = shared.write_index();
                    for c in &mut commits {
                        index.apply(c.namespace, &c.key, c.entry);
                        // Under the index lock: compaction sees the manifest or the pins.
                        drop(c.pins.take());
                    }
                }
                for c in commits {
                    let _ = c.reply.send(Ok(Committed {
                        seq: c.entry.seq,
                        segment_id: c.entry.segment_id,
                        offset: c.entry.offset,
                        len: c.entry.object_len,
                    }));
                }
            }
            Err(e) => {
                // fsync errors are not retried: the kernel may have dropped the dirty pages.
                shared.poison(&e);
                let cause = shared.poisoned().unwrap_or_else(|| e.to_poison_cause());
                for c in commits {
                    let _ = c.reply.send(Err(Error::Poisoned {
                        cause: cause.clone(),
                    }));
                }
            }
        }
        order.mark_acked(number);
        if idle.send(Msg::FlusherIdle(me, buf)).is_err() {
            break;
        }
    }
}
