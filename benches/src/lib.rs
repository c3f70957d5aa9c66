//! Baselines that Kuvasto's benches measure in the same process as the engine, so results are
//! ratios on the same disk at the same moment rather than absolute numbers from another day.

use kuvasto_engine::{Namespace, Store};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Deterministic, incompressible-looking bytes.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `writers` threads each put `per_writer` copies of `object` (keys `{prefix}-{writer}-{i}`)
/// into `store`; returns the time until the last put was acknowledged.
pub fn concurrent_puts(
    store: &Store,
    object: &[u8],
    writers: usize,
    per_writer: usize,
    prefix: &str,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for w in 0..writers {
            scope.spawn(move || {
                for i in 0..per_writer {
                    let key = format!("{prefix}-{w}-{i}");
                    store
                        .put(Namespace::OBJECT, key.as_bytes(), object)
                        .expect("put");
                }
            });
        }
    });
    start.elapsed()
}

/// The naive durable loop: for each object, `write_all` then `sync_data` (one file per writer,
/// `writers` threads). Returns the elapsed time.
pub fn naive_write_fsync(
    dir: &Path,
    object: &[u8],
    per_writer: usize,
    writers: usize,
) -> io::Result<Duration> {
    let files: Vec<File> = (0..writers)
        .map(|w| File::create(dir.join(format!("naive-{w}"))))
        .collect::<io::Result<_>>()?;
    let start = Instant::now();
    std::thread::scope(|scope| -> io::Result<()> {
        let handles: Vec<_> = files
            .into_iter()
            .map(|mut file| {
                scope.spawn(move || -> io::Result<()> {
                    for _ in 0..per_writer {
                        file.write_all(object)?;
                        file.sync_data()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| io::Error::other("writer panicked"))??;
        }
        Ok(())
    })?;
    Ok(start.elapsed())
}

/// Raw sequential `O_DIRECT` writes of `total_bytes` in 8 MiB aligned writes into a
/// preallocated file, then one `fdatasync`: the disk's durable streaming bandwidth. The buffer
/// is the engine's own huge-page-backed kind, so this is the strictest baseline.
pub fn raw_direct_write(dir: &Path, total_bytes: u64) -> io::Result<Duration> {
    let mut buf = kuvasto_engine::io::AlignedBuf::with_capacity(RAW_WRITE_BYTES);
    buf.set_len(RAW_WRITE_BYTES);
    buf.copy_from_slice(&payload(RAW_WRITE_BYTES, 7));
    raw_direct_write_from(dir, total_bytes, &buf)
}

/// The same as [`raw_direct_write`] from an ordinary heap buffer (4 KiB pages), as `dd
/// oflag=direct` writes: the baseline `shared/NOTES.md` quotes.
pub fn raw_direct_write_small_pages(dir: &Path, total_bytes: u64) -> io::Result<Duration> {
    let mut heap = payload(RAW_WRITE_BYTES + 4096, 7);
    let skip = heap.as_ptr().align_offset(4096);
    let buf = &mut heap[skip..skip + RAW_WRITE_BYTES];
    raw_direct_write_from(dir, total_bytes, buf)
}

const RAW_WRITE_BYTES: usize = 8 << 20;

fn raw_direct_write_from(dir: &Path, total_bytes: u64, buf: &[u8]) -> io::Result<Duration> {
    let path = dir.join("raw-direct");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)?;
    let total = total_bytes.next_multiple_of(4096);
    // SAFETY: fallocate on an owned descriptor; no pointers.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, total as i64) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let start = Instant::now();
    let mut offset = 0u64;
    while offset < total {
        let n = (total - offset).min(buf.len() as u64) as usize;
        file.write_all_at(&buf[..n], offset)?;
        offset += n as u64;
    }
    file.sync_data()?;
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(elapsed)
}

/// Buffered `pread` of `total_bytes` from a file already in the page cache, in 1 MiB reads.
pub fn cached_read(path: &Path, total_bytes: u64) -> io::Result<Duration> {
    let file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut offset = 0u64;
    while offset < total_bytes {
        let n = (total_bytes - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        offset += n as u64;
    }
    Ok(start.elapsed())
}

/// MB/s (10^6 bytes per second).
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
}
