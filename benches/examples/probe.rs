//! Quick probe of put throughput and batching: `cargo run --release -p kuvasto-benches
//! --example probe -- SIZE_BYTES WRITERS PER_WRITER`. Prints MB/s and the writer's counters.
//! Environment: `FLUSHERS=n`, `BATCH=bytes`, `PUTBUF=bytes`, `DIRECT=0` (buffered writes
//! instead of O_DIRECT).

use kuvasto_benches::{concurrent_puts, mb_per_s, payload, raw_direct_write};
use kuvasto_engine::{Store, StoreConfig};
use std::sync::atomic::Ordering;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: SIZE_BYTES WRITERS PER_WRITER"))
        .collect();
    let (size, writers, per_writer) = match args.as_slice() {
        [s, w, p] => (*s, *w, *p),
        _ => (512 * 1024, 16, 64),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::default();
    if let Some(n) = std::env::var("FLUSHERS").ok().and_then(|v| v.parse().ok()) {
        config.flushers = n;
    }
    if std::env::var("DIRECT").is_ok_and(|v| v == "0") {
        config.direct_io = false;
    }
    if let Some(n) = std::env::var("PUTBUF").ok().and_then(|v| v.parse().ok()) {
        config.put_buffer_bytes = n;
    }
    if let Some(n) = std::env::var("BATCH").ok().and_then(|v| v.parse().ok()) {
        config.batch_bytes_max = n;
    }
    let store = Store::open(dir.path(), config).expect("open");
    let object = payload(size, 1);
    let elapsed = concurrent_puts(&store, &object, writers, per_writer, "probe");
    let bytes = (size * writers * per_writer) as u64;
    let stats = store.engine_stats();
    let batches = stats.batches.load(Ordering::Relaxed);
    let raw = raw_direct_write(dir.path(), bytes).expect("raw");
    println!(
        "kuvasto {:.0} MB/s ({:.0} objects/s); raw O_DIRECT {:.0} MB/s; ratio {:.0} %",
        mb_per_s(bytes, elapsed),
        (writers * per_writer) as f64 / elapsed.as_secs_f64(),
        mb_per_s(bytes, raw),
        100.0 * elapsed.as_secs_f64().recip() / raw.as_secs_f64().recip()
    );
    println!(
        "batches {batches}, syncs {}, commits {}, avg batch {:.0} KiB, max commits per sync {}",
        stats.syncs.load(Ordering::Relaxed),
        stats.commits.load(Ordering::Relaxed),
        stats.bytes_written.load(Ordering::Relaxed) as f64 / batches.max(1) as f64 / 1024.0,
        stats.commits_per_sync_max.load(Ordering::Relaxed)
    );
    let secs = elapsed.as_secs_f64();
    println!(
        "flushers waiting on durable writes {:.0} % of wall time (summed over flushers)",
        100.0 * stats.write_nanos.load(Ordering::Relaxed) as f64 / 1e9 / secs
    );
}
