//! The real storage: files in one directory, written through io_uring.
//!
//! Each thread that writes gets its own ring (created on first use), so the group-commit
//! writer, compaction and tests never contend for a lock. A batch is submitted as a few write
//! SQEs (2 MiB each); a durable batch carries `RWF_DSYNC` on each, so the kernel completes it
//! only once the data (and the metadata needed to read it) is durable: write and sync are one
//! operation, and several batches can be in flight at once, each durable on its own. Reads of
//! sealed segments go through `mmap`; other reads use `pread`.

use super::{AlignedBuf, Mapping, PendingState, PendingWrite, Storage, StorageFile};
use io_uring::{opcode, squeue, types, IoUring};
use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Entries of each per-thread submission queue.
const RING_ENTRIES: u32 = 64;
/// Largest single write SQE; larger batches are split so the device works on several at once.
const WRITE_SQE_BYTES_MIN: usize = 2 << 20;
/// At most this many write SQEs per batch.
const WRITE_SQES_PER_BATCH_MAX: usize = 32;

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
    /// The next operation tag of this thread's ring (see [`user_data`]).
    static NEXT_TAG: Cell<u64> = const { Cell::new(1) };
    /// Completions reaped that belonged to no operation being waited for (never expected;
    /// counted so a test can see that none was taken for another's).
    static STALE_COMPLETIONS: Cell<u64> = const { Cell::new(0) };
    /// Set while a `begin_write` of this thread is in flight: its completions must not be
    /// reaped by anyone else, so other calls fall back to plain system calls meanwhile.
    static OUTSTANDING: Cell<bool> = const { Cell::new(false) };
}

fn with_ring<R>(f: impl FnOnce(&mut IoUring) -> io::Result<R>) -> io::Result<R> {
    RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(IoUring::new(RING_ENTRIES)?);
        }
        match slot.as_mut() {
            Some(ring) => f(ring),
            None => Err(io::Error::other("io_uring unavailable")),
        }
    })
}

/// Piece indexes an operation's `user_data` has room for (a batch has fewer SQEs).
const PIECE_BITS: u32 = 8;
const _: () = assert!(WRITE_SQES_PER_BATCH_MAX < 1 << PIECE_BITS);

/// A fresh tag for one operation (a batch, or a single SQE) of this thread's ring.
fn new_tag() -> u64 {
    NEXT_TAG.with(|next| {
        let tag = next.get();
        next.set(tag.wrapping_add(1) & (u64::MAX >> PIECE_BITS));
        tag
    })
}

/// The `user_data` of piece `index` of the operation tagged `tag`.
fn user_data(tag: u64, index: usize) -> u64 {
    (tag << PIECE_BITS) | index as u64
}

/// Completions reaped on this thread that belonged to no operation waited for.
pub fn stale_completions() -> u64 {
    STALE_COMPLETIONS.with(Cell::get)
}

/// Submits what is queued and reaps completions until `want` completions of the operation
/// tagged `tag` were seen, handing each (piece index, result) to `seen`. A completion of any
/// other operation is stale (counted, never taken for one of ours).
///
/// Returns only once every one of our SQEs has completed, so the caller's buffers outlive the
/// kernel's use of them. A ring that fails in any other way than an interrupted or busy wait
/// leaves the kernel possibly still using those buffers: the process is aborted rather than
/// let them be freed under it.
fn reap_tagged(
    ring: &mut IoUring,
    tag: u64,
    mut want: usize,
    seen: &mut dyn FnMut(usize, io::Result<usize>),
) {
    while want > 0 {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                ) => {}
            Err(e) => {
                eprintln!("kuvasto: io_uring failed with operations in flight ({e}); aborting");
                std::process::abort();
            }
        }
        for cqe in ring.completion() {
            let data = cqe.user_data();
            if data >> PIECE_BITS == tag {
                want -= 1;
                seen(
                    (data & ((1 << PIECE_BITS) - 1)) as usize,
                    cqe_result(cqe.result()),
                );
            } else {
                STALE_COMPLETIONS.with(|c| c.set(c.get() + 1));
            }
        }
    }
}

fn cqe_result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

/// Pushes one SQE and waits for its own completion (by tag: a stale completion is never taken
/// for it). Only used when no batch is outstanding.
fn run_one(entry: squeue::Entry) -> io::Result<usize> {
    with_ring(|ring| {
        let tag = new_tag();
        let entry = entry.user_data(user_data(tag, 0));
        // SAFETY: the buffers referenced by `entry` belong to the caller, who blocks here
        // until the kernel reports its completion (reap_tagged returns only then), so they
        // outlive the operation.
        unsafe { ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        let mut result = Err(io::Error::other("io_uring completion missing"));
        reap_tagged(ring, tag, 1, &mut |_, r| result = r);
        result
    })
}

/// Creates `dir` and any missing ancestors, and makes each new name durable (an fsync of the
/// parent that holds it): without that, a power cut on a new node can take the data directory
/// away with every put acknowledged in it.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || path.exists() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// A directory on a local file system, locked against a second process.
pub struct UringStorage {
    dir: PathBuf,
    dir_file: File,
    direct_io: bool,
    _lock: File,
}

impl UringStorage {
    /// Opens (creating if needed) `dir`. With `direct_io`, segment writes bypass the page cache
    /// (`O_DIRECT`) and must be 4096-aligned; see `docs/format.md` for why that is the default.
    pub fn open(dir: &Path, direct_io: bool) -> io::Result<Self> {
        create_dir_durably(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("LOCK"))?;
        // SAFETY: flock on a valid, owned descriptor has no memory-safety requirements.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process ({err})", dir.display()),
            ));
        }
        let dir_file = File::open(dir)?;
        Ok(UringStorage {
            dir: dir.to_path_buf(),
            dir_file,
            direct_io,
            _lock: lock,
        })
    }

    fn open_file(&self, name: &str, create: bool) -> io::Result<Box<dyn StorageFile>> {
        let path = self.dir.join(name);
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if create {
            options.create_new(true);
        }
        if self.direct_io {
            options.custom_flags(libc::O_DIRECT);
        }
        let write_fd = options.open(&path)?;
        let read_fd = File::open(&path)?;
        // Point reads (`pread`, the unsealed segment) get their own descriptor without
        // readahead: with O_DIRECT writes, readahead would fill the page cache with the
        // preallocated, not yet written part of the segment (zeroed pages, then thrown away
        // by the next direct write). The mapping keeps `read_fd` and its readahead.
        let pread_fd = File::open(&path)?;
        // SAFETY: a valid open descriptor; offset 0 and length 0 mean the whole file.
        let advised =
            unsafe { libc::posix_fadvise(pread_fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        if advised != 0 {
            return Err(io::Error::from_raw_os_error(advised));
        }
        Ok(Box::new(UringFile {
            name: name.to_string(),
            write_fd,
            read_fd,
            pread_fd,
        }))
    }
}

impl Storage for UringStorage {
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.open_file(name, true)
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.open_file(name, false)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.dir_file.sync_all()
    }

    fn write_alignment_bytes(&self) -> usize {
        if self.direct_io {
            super::aligned::BUFFER_ALIGNMENT_BYTES
        } else {
            1
        }
    }
}

/// A file mapping registered for media-error handling ([`super::media`]): a page the
/// device cannot deliver becomes an error of the guarded read, not a crash.
pub(crate) struct RegisteredMap {
    // Declared first: unregistered before the mapping goes away.
    _registration: super::media::Registration,
    map: memmap2::Mmap,
}

impl RegisteredMap {
    pub(crate) fn new(map: memmap2::Mmap) -> Self {
        RegisteredMap {
            _registration: super::media::register(&map),
            map,
        }
    }
}

impl std::ops::Deref for RegisteredMap {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

struct UringFile {
    name: String,
    /// Opened with `O_DIRECT` when the storage uses direct I/O.
    write_fd: File,
    /// Always buffered: mmap never needs alignment.
    read_fd: File,
    /// Buffered, without readahead: `pread` of small ranges.
    pread_fd: File,
}

impl StorageFile for UringFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.read_fd.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.pread_fd.read_exact_at(buf, offset)
    }

    fn map(&self) -> io::Result<Mapping> {
        if self.len()? == 0 {
            return Ok(Mapping::new(Arc::new(Vec::<u8>::new())));
        }
        // SAFETY: the engine maps only files it no longer writes (sealed segments) or files
        // no writer has open yet (recovery); nobody truncates a mapped file while it is mapped
        // (segments are removed by unlink, which keeps the pages alive).
        let map = unsafe { memmap2::Mmap::map(&self.read_fd)? };
        // No readahead on faults: most reads of a sealed segment are small records (metadata
        // records, directories) between large objects, and readahead around each would read
        // the whole segment. Large reads ask for their range ([`Mapping::will_need`]).
        map.advise(memmap2::Advice::Random)?;
        Ok(Mapping::new(Arc::new(RegisteredMap::new(map))))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        if OUTSTANDING.with(Cell::get) {
            return self.write_fd.write_at(buf, offset);
        }
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let entry = opcode::Write::new(types::Fd(self.write_fd.as_raw_fd()), buf.as_ptr(), len)
            .offset(offset)
            .build();
        run_one(entry)
    }

    fn sync_data(&self) -> io::Result<()> {
        if OUTSTANDING.with(Cell::get) {
            return self.write_fd.sync_data();
        }
        let entry = opcode::Fsync::new(types::Fd(self.write_fd.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        run_one(entry).map(|_| ())
    }

    fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        let len = i64::try_from(len_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        // SAFETY: fallocate on an owned descriptor; no pointers involved.
        let rc = unsafe { libc::fallocate(self.write_fd.as_raw_fd(), 0, 0, len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.write_fd.set_len(len_bytes)
    }

    fn begin_write(&self, buf: AlignedBuf, offset: u64, sync: bool) -> PendingWrite {
        if OUTSTANDING.with(Cell::get) {
            // A second batch on the same thread: do it synchronously rather than mix
            // completions.
            let result = self.write_fd.write_all_at(&buf, offset).and_then(|()| {
                if sync {
                    self.write_fd.sync_data()
                } else {
                    Ok(())
                }
            });
            return PendingWrite::ready(buf, result);
        }
        let fd = self.write_fd.as_raw_fd();
        let piece_bytes = buf
            .len()
            .div_ceil(WRITE_SQES_PER_BATCH_MAX)
            .max(WRITE_SQE_BYTES_MIN)
            .next_multiple_of(super::aligned::BUFFER_ALIGNMENT_BYTES);
        let pieces: Vec<(usize, usize)> = (0..buf.len())
            .step_by(piece_bytes.max(1))
            .map(|start| (start, piece_bytes.min(buf.len() - start)))
            .collect();
        let tag = new_tag();
        let submitted = with_ring(|ring| {
            let mut queued = 0usize;
            for (index, &(start, len)) in pieces.iter().enumerate() {
                let entry = opcode::Write::new(
                    types::Fd(fd),
                    // SAFETY: start < buf.len(), so the pointer stays inside the allocation.
                    unsafe { buf.as_ptr().add(start) },
                    len as u32,
                )
                .offset(offset + start as u64)
                .rw_flags(if sync { libc::RWF_DSYNC } else { 0 })
                .build()
                .user_data(user_data(tag, index));
                // SAFETY: `buf` moves into UringPending, whose wait (or Drop) blocks until
                // every SQE pushed here has completed, so the memory outlives the kernel's use.
                if unsafe { ring.submission().push(&entry) }.is_err() {
                    break;
                }
                queued += 1;
            }
            loop {
                match ring.submit() {
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => {
                        // The SQEs stay queued; `reap` submits them again and waits, so the
                        // buffer is never freed while the kernel may still use it.
                        return Ok(Err((e, queued)));
                    }
                }
            }
            Ok(Ok(queued))
        });
        let (queued, error) = match submitted {
            Ok(Ok(queued)) => (queued, None),
            Ok(Err((e, queued))) => (queued, Some(e)),
            Err(e) => (0, Some(e)),
        };
        OUTSTANDING.with(|c| c.set(queued > 0));
        PendingWrite {
            state: PendingState::Uring(UringPending {
                buf: Some(buf),
                tag,
                fd,
                offset,
                pieces,
                sync,
                queued,
                submit_error: error,
            }),
        }
    }
}

/// An io_uring batch in flight on the current thread.
pub(crate) struct UringPending {
    buf: Option<AlignedBuf>,
    /// The tag of this batch's SQEs (their `user_data` carries it and the piece index).
    tag: u64,
    /// The file's write descriptor (borrowed: the file outlives the wait).
    fd: i32,
    offset: u64,
    pieces: Vec<(usize, usize)>,
    sync: bool,
    queued: usize,
    submit_error: Option<io::Error>,
}

impl UringPending {
    /// Reaps every completion of this batch, finishes short writes synchronously, and returns.
    fn reap(&mut self) -> io::Result<()> {
        let mut written = vec![0usize; self.pieces.len()];
        let mut first_error: Option<io::Error> = self.submit_error.take();
        if self.queued > 0 {
            let reaped = with_ring(|ring| {
                reap_tagged(ring, self.tag, self.queued, &mut |index, result| match (
                    written.get_mut(index),
                    result,
                ) {
                    (Some(slot), Ok(n)) => *slot = n,
                    (Some(_), Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    (None, _) => {
                        first_error.get_or_insert(io::Error::other(format!(
                            "io_uring completion for piece {index}, which this batch does not have"
                        )));
                    }
                });
                Ok(())
            });
            if let Err(e) = reaped {
                first_error.get_or_insert(e);
            }
        }
        self.queued = 0;
        OUTSTANDING.with(|c| c.set(false));
        if let Some(e) = first_error {
            return Err(e);
        }
        let Some(buf) = self.buf.as_ref() else {
            return Err(io::Error::other("batch buffer missing"));
        };
        // Short writes (and pieces the full queue did not take): finish them synchronously.
        let mut finished_late = false;
        for (&(start, len), &done) in self.pieces.iter().zip(&written) {
            if done < len {
                finished_late = true;
                // SAFETY: `fd` belongs to the file this batch was submitted on, which stays
                // open until the batch is waited for; ManuallyDrop keeps it from being closed.
                let file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(self.fd) });
                file.write_all_at(
                    &buf[start + done..start + len],
                    self.offset + (start + done) as u64,
                )?;
            }
        }
        // Parts finished by plain pwrite were not written with RWF_DSYNC.
        if self.sync && finished_late {
            let rc = {
                // SAFETY: fdatasync on a descriptor owned by the file this batch belongs to.
                unsafe { libc::fdatasync(self.fd) }
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    pub(super) fn wait(mut self) -> (AlignedBuf, io::Result<()>) {
        let result = self.reap();
        let buf = self
            .buf
            .take()
            .unwrap_or_else(|| AlignedBuf::with_capacity(0));
        (buf, result)
    }
}

impl Drop for UringPending {
    fn drop(&mut self) {
        if self.queued > 0 {
            // The kernel may still be reading `buf`: never free it before completion.
            let _ = self.reap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A completion left on the ring by another operation is never taken for the next one's:
    /// a write waits for its own (the first completion used to be taken, whatever it was).
    #[test]
    fn a_stale_completion_is_not_taken_for_a_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = UringStorage::open(dir.path(), false).expect("open");
        let file = storage.create("f").expect("create");
        let stale_before = stale_completions();
        with_ring(|ring| {
            let nop = opcode::Nop::new().build().user_data(u64::MAX);
            // SAFETY: a NOP references no memory.
            unsafe { ring.submission().push(&nop) }.map_err(|_| io::Error::other("queue full"))?;
            ring.submit_and_wait(1)?;
            Ok(())
        })
        .expect("leave a completion on the ring");
        let written = file.write_at(b"hello", 0).expect("write");
        assert_eq!(written, 5, "the write's own completion, not the NOP's (0)");
        assert_eq!(stale_completions(), stale_before + 1);
        let mut back = [0u8; 5];
        file.read_exact_at(&mut back, 0).expect("read");
        assert_eq!(&back, b"hello");
    }
}
