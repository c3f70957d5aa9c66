//! The storage seam: every byte the engine reads or writes goes through [`Storage`] and
//! [`StorageFile`].
//!
//! Three implementations:
//! - [`uring::UringStorage`]: the real one. Writes (optionally `O_DIRECT`) and `fdatasync` go
//!   through a per-thread io_uring; sealed segments are memory-mapped.
//! - [`sim::SimStorage`]: an in-memory disk that knows which bytes are durable, and can "crash"
//!   (drop or tear every write not yet made durable), for property tests.
//! - [`fault::FaultyStorage`]: wraps either and injects short writes, ENOSPC, failed fsyncs and
//!   torn writes, deterministically from a seed.

mod aligned;
pub mod fault;
pub mod media;
pub mod sim;
pub mod uring;

pub use aligned::AlignedBuf;

use std::fmt;
use std::io;
use std::ops::Deref;
use std::sync::Arc;

/// A directory of files. Names are plain file names (no separators).
pub trait Storage: Send + Sync + 'static {
    /// Creates a new, empty file; fails if it exists.
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Lists the file names in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations, renames and removals durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;
    /// Alignment (bytes) that write buffers, offsets and lengths must have; 1 if none.
    fn write_alignment_bytes(&self) -> usize;
}

/// One open file.
pub trait StorageFile: Send + Sync {
    /// The file's name, for error messages.
    fn name(&self) -> &str;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file has no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// A read-only view of the whole file as it is now. Used for immutable (sealed) files and
    /// for recovery scans; the view does not follow later writes.
    fn map(&self) -> io::Result<Mapping>;
    /// Writes `buf` at `offset`; may write fewer bytes, like `pwrite(2)`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Makes every completed write of this file durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Reserves space for `len_bytes` (`fallocate`), growing the file if needed.
    fn allocate(&self, len_bytes: u64) -> io::Result<()>;
    /// Sets the file length (truncating or extending with zeros).
    fn set_len(&self, len_bytes: u64) -> io::Result<()>;
    /// Starts writing all of `buf` at `offset`. With `sync`, the write completes only once
    /// it is durable (`RWF_DSYNC`; the default implementation writes, then `fdatasync`s).
    /// The caller may do other work until [`PendingWrite::wait`]; several writes may be in
    /// flight at once. The default does everything at once; io_uring overrides it.
    fn begin_write(&self, buf: AlignedBuf, offset: u64, sync: bool) -> PendingWrite {
        let result =
            write_all_at(self, &buf, offset).and_then(
                |()| {
                    if sync {
                        self.sync_data()
                    } else {
                        Ok(())
                    }
                },
            );
        PendingWrite::ready(buf, result)
    }
}

/// Writes all of `buf` at `offset` through [`StorageFile::write_at`], continuing after short
/// writes.
pub fn write_all_at<F: StorageFile + ?Sized>(file: &F, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut written_bytes = 0usize;
    while written_bytes < buf.len() {
        let n = file.write_at(&buf[written_bytes..], offset + written_bytes as u64)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write returned 0 bytes",
            ));
        }
        written_bytes += n;
    }
    Ok(())
}

/// A write started with [`StorageFile::begin_write`].
pub struct PendingWrite {
    state: PendingState,
}

enum PendingState {
    Ready(AlignedBuf, io::Result<()>),
    Uring(uring::UringPending),
}

impl PendingWrite {
    /// A write that already completed.
    pub fn ready(buf: AlignedBuf, result: io::Result<()>) -> Self {
        PendingWrite {
            state: PendingState::Ready(buf, result),
        }
    }

    /// Waits for the write (and sync) to finish; gives the buffer back for reuse.
    pub fn wait(self) -> (AlignedBuf, io::Result<()>) {
        match self.state {
            PendingState::Ready(buf, result) => (buf, result),
            PendingState::Uring(pending) => pending.wait(),
        }
    }
}

/// A read-only view of a file's bytes (an mmap, or a copy for in-memory storage).
#[derive(Clone)]
pub struct Mapping(Arc<dyn Deref<Target = [u8]> + Send + Sync>);

impl Mapping {
    /// Wraps any owner of bytes.
    pub fn new(bytes: Arc<dyn Deref<Target = [u8]> + Send + Sync>) -> Self {
        Mapping(bytes)
    }

    /// Asks the kernel to read `range` ahead (an mmap is read without readahead otherwise);
    /// a hint: errors are ignored.
    pub fn will_need(&self, range: std::ops::Range<usize>) {
        const PAGE: usize = 4096;
        let bytes: &[u8] = &self.0;
        let end = range.end.min(bytes.len());
        if range.start >= end {
            return;
        }
        let base = bytes.as_ptr() as usize;
        let start = (base + range.start) & !(PAGE - 1);
        // SAFETY: the page-aligned range lies within (or at the page around) this mapping,
        // which stays mapped while `self` lives; MADV_WILLNEED only schedules reads and
        // never changes the contents.
        unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                base + end - start,
                libc::MADV_WILLNEED,
            );
        }
    }
}

impl Deref for Mapping {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapping({} bytes)", self.0.len())
    }
}
