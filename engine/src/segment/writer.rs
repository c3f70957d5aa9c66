//! The group-commit writer: two threads that turn appends into durable, findable records.
//!
//! The **writer** thread receives appends from every put, serializes each record into the
//! current batch buffer (4096-aligned), seals full segments and opens new ones. The
//! **flusher** thread writes one batch at a time through [`StorageFile::begin_write`] — on
//! io_uring, the batch's write SQEs plus one drained `fdatasync`, in one system call — then
//! publishes the batch's findable records to the index and acknowledges their puts. While the
//! flusher waits on the device, the writer fills the next batch: every put that arrives in the
//! meantime shares the next `fdatasync` (group commit). Two batch buffers exist, so memory is
//! bounded by `2 × batch capacity` plus the bounded request queue.
//!
//! Invariants (asserted where cheap):
//! - a findable record is published and acknowledged only after the `fdatasync` that covers it;
//! - batches start page-aligned and never rewrite bytes of an earlier batch;
//! - after any write or sync error the store is poisoned: no later batch is written.

use super::format::{
    encode_padding, encode_record, padding_bytes, segment_file_name, ChunkRef, DirEntry,
    Namespace, RecordHeader, RecordKind, PAGE_BYTES, SEGMENT_HEADER_BYTES,
};
use super::lifecycle::{create_segment, seal_segment};
use super::reader::SegmentHandle;
use crate::error::{Error, Result};
use crate::index::Entry;
use crate::io::AlignedBuf;
use crate::store::{Committed, Shared};
use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How an append is answered.
pub(crate) enum Reply {
    /// Chunks are answered as soon as they have a place (their durability comes with the
    /// manifest's sync); the body buffer is handed back for reuse.
    Chunk(SyncSender<(Result<ChunkRef>, Vec<u8>)>),
    /// Findable records are answered after they are durable and published.
    Commit(SyncSender<Result<Committed>>),
}

/// One record to append.
pub(crate) struct Append {
    pub namespace: Namespace,
    pub kind: RecordKind,
    pub key: Vec<u8>,
    pub body: Vec<u8>,
    /// Block checksums computed by the caller (off the writer thread), if any.
    pub crcs: Option<Vec<u32>>,
    pub object_len: u64,
    pub reply: Reply,
}

pub(crate) enum Msg {
    Append(Append),
    /// The flusher finished a batch and returns its buffer.
    FlusherIdle(AlignedBuf),
    Shutdown,
}

struct PendingCommit {
    namespace: Namespace,
    key: Vec<u8>,
    entry: Entry,
    reply: SyncSender<Result<Committed>>,
}

struct Batch {
    segment: Arc<SegmentHandle>,
    buf: AlignedBuf,
    offset: u64,
    commits: Vec<PendingCommit>,
}

struct Active {
    segment: Arc<SegmentHandle>,
    /// Offset where the current batch starts (everything before was handed to the flusher).
    batch_offset: u64,
    /// Records must end at or before this offset (the last page stays free).
    records_limit: u64,
    directory: Vec<DirEntry>,
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
    flush_tx: Option<SyncSender<Batch>>,
    flusher: Option<JoinHandle<()>>,
    flusher_busy: bool,
    active: Option<Active>,
    batch: AlignedBuf,
    commits: Vec<PendingCommit>,
    free: Vec<AlignedBuf>,
    deferred: VecDeque<Msg>,
    seq_next: u64,
    shutting_down: bool,
}

/// Capacity of a batch buffer: the configured batch plus room for one record and padding.
fn batch_capacity(shared: &Shared) -> usize {
    shared.config.batch_bytes_max + shared.config.record_bytes_max() as usize + 2 * PAGE_BYTES as usize
}

impl Writer {
    /// Starts the writer and flusher threads.
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        start: Option<ActiveStart>,
        seq_next: u64,
    ) -> Result<(SyncSender<Msg>, JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel(shared.config.requests_queued_max);
        let (flush_tx, flush_rx) = mpsc::sync_channel::<Batch>(1);
        let flusher_shared = shared.clone();
        let flusher_reply = tx.clone();
        let flusher = std::thread::Builder::new()
            .name("kuvasto-flusher".into())
            .spawn(move || flusher_loop(flusher_shared, flush_rx, flusher_reply))
            .map_err(|e| Error::io("spawn", "flusher thread", e))?;
        let capacity = batch_capacity(&shared);
        let active = start.map(|s| Active {
            records_limit: records_limit(&shared),
            segment: s.segment,
            batch_offset: s.write_offset,
            directory: s.directory,
        });
        let writer = Writer {
            shared,
            rx,
            tx_self: tx.clone(),
            flush_tx: Some(flush_tx),
            flusher: Some(flusher),
            flusher_busy: false,
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
                        if !self.batch.is_empty() && !self.flusher_busy {
                            self.dispatch();
                            continue;
                        }
                        if self.shutting_down && !self.flusher_busy && self.batch.is_empty() {
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
            match msg {
                Msg::Append(append) => {
                    if self.shutting_down {
                        fail(append.reply, Error::Closed);
                    } else {
                        self.append(append);
                    }
                }
                Msg::FlusherIdle(buf) => {
                    self.flusher_busy = false;
                    self.free.push(buf);
                }
                Msg::Shutdown => self.shutting_down = true,
            }
        }
        self.wait_flusher_idle();
        self.dispatch();
        self.wait_flusher_idle();
        // Closing the flusher's channel ends it; it has nothing in flight now.
        self.flush_tx = None;
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        drop(self.tx_self);
    }

    /// Receives until the flusher reports idle, keeping other messages for later.
    fn wait_flusher_idle(&mut self) {
        while self.flusher_busy {
            match self.rx.recv() {
                Ok(Msg::FlusherIdle(buf)) => {
                    self.flusher_busy = false;
                    self.free.push(buf);
                }
                Ok(other) => self.deferred.push_back(other),
                Err(_) => {
                    self.flusher_busy = false;
                }
            }
        }
    }

    /// Hands the current batch to the flusher (which must be idle).
    fn dispatch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        assert!(!self.flusher_busy, "dispatch while the flusher is busy");
        let Some(active) = self.active.as_mut() else {
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
        let next = self
            .free
            .pop()
            .unwrap_or_else(|| AlignedBuf::with_capacity(batch_capacity(&self.shared)));
        let buf = std::mem::replace(&mut self.batch, next);
        let batch = Batch {
            segment: active.segment.clone(),
            offset: active.batch_offset,
            commits: std::mem::take(&mut self.commits),
            buf,
        };
        active.batch_offset += batch.buf.len() as u64;
        if let Some(flush_tx) = &self.flush_tx {
            if flush_tx.send(batch).is_ok() {
                self.flusher_busy = true;
                return;
            }
        }
        self.shared.poison(&Error::Closed);
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
            self.wait_flusher_idle();
            self.dispatch();
        }
        // Room in the segment (keeping a page for padding and the last page free)?
        let fits = self.active.as_ref().is_some_and(|a| {
            a.batch_offset + self.batch.len() as u64 + header_len + 2 * PAGE_BYTES
                <= a.records_limit
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
            &append.body,
            append.crcs.as_deref(),
        );
        match append.reply {
            Reply::Chunk(reply) => {
                let location = ChunkRef {
                    segment_id: active.segment.id,
                    offset,
                    len: append.body.len() as u64,
                };
                let _ = reply.send((Ok(location), append.body));
            }
            Reply::Commit(reply) => {
                let entry = Entry {
                    kind: append.kind,
                    seq,
                    generation: 0,
                    segment_id: active.segment.id,
                    offset,
                    object_len: append.object_len,
                };
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
                });
            }
        }
    }

    /// Seals the active segment (after all its batches are durable) and opens a new one.
    fn rotate(&mut self) -> Result<()> {
        self.wait_flusher_idle();
        self.dispatch();
        self.wait_flusher_idle();
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
        }
        let id = self.shared.allocate_segment_id();
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
        Reply::Commit(tx) => {
            let _ = tx.send(Err(error));
        }
    }
}

fn flusher_loop(shared: Arc<Shared>, rx: Receiver<Batch>, idle: SyncSender<Msg>) {
    while let Ok(batch) = rx.recv() {
        let Batch {
            segment,
            buf,
            offset,
            commits,
        } = batch;
        assert_eq!(offset % PAGE_BYTES, 0, "batches start page-aligned");
        assert!(offset >= SEGMENT_HEADER_BYTES, "batches never overwrite the segment header");
        let sync = !commits.is_empty();
        let bytes = buf.len() as u64;
        let (buf, result) = if let Some(cause) = shared.poisoned() {
            (buf, Err(Error::Poisoned { cause }))
        } else {
            let (buf, result) = segment.file.begin_write(buf, offset, sync).wait();
            let op = if sync { "write+fdatasync" } else { "write" };
            (
                buf,
                result.map_err(|e| Error::io(op, segment.file.name(), e)),
            )
        };
        match result {
            Ok(()) => {
                shared.stats.record_batch(bytes, sync, commits.len());
                {
                    let mut index = shared.write_index();
                    for c in &commits {
                        index.apply(c.namespace, &c.key, c.entry);
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
                let cause = shared
                    .poisoned()
                    .unwrap_or_else(|| e.to_poison_cause());
                for c in commits {
                    let _ = c.reply.send(Err(Error::Poisoned {
                        cause: cause.clone(),
                    }));
                }
            }
        }
        let mut buf = buf;
        buf.clear();
        if idle.send(Msg::FlusherIdle(buf)).is_err() {
            break;
        }
    }
}
