//! Probe of the io layer alone: sequential batches through `begin_write`, one or two threads.
use kuvasto_engine::io::uring::UringStorage;
use kuvasto_engine::io::{AlignedBuf, Storage};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4 << 20);
    let threads: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let sync: bool = std::env::args().nth(3).is_some_and(|a| a == "sync");
    if std::env::args().nth(3).is_some_and(|a| a == "raw") {
        let dir = tempfile::tempdir().expect("dir");
        let e = kuvasto_benches::raw_direct_write(dir.path(), 1 << 30).expect("raw");
        println!(
            "raw pwrite 8 MiB: {:.0} MB/s",
            (1u64 << 30) as f64 / e.as_secs_f64() / 1e6
        );
        return;
    }
    let direct = std::env::var("BUFFERED").is_err();
    let dir = tempfile::tempdir().expect("dir");
    let storage = UringStorage::open(dir.path(), direct).expect("storage");
    let total: usize = 1 << 30;
    let file = Arc::new(storage.create("f").expect("create"));
    file.allocate(total as u64 + (1 << 20)).expect("alloc");
    let start = Instant::now();
    let per_thread = total / batch / threads;
    std::thread::scope(|s| {
        for t in 0..threads {
            let file = file.clone();
            s.spawn(move || {
                let rotate: usize = std::env::var("ROTATE")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let mut bufs: Vec<AlignedBuf> = (0..rotate)
                    .map(|_| {
                        let mut b = AlignedBuf::with_capacity(batch);
                        b.set_len(batch);
                        b.fill(7);
                        b
                    })
                    .collect();
                let mut buf = bufs.pop().expect("one buffer");
                let copy_from = if std::env::var("COPY").is_ok() {
                    Some(vec![5u8; batch])
                } else {
                    None
                };
                for i in 0..per_thread {
                    if let Some(src) = &copy_from {
                        buf.copy_from_slice(src);
                    }
                    let shift: u64 = std::env::var("SHIFT")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let offset = ((i * threads + t) * batch) as u64 + shift;
                    let (b, r) = file.begin_write(buf, offset, sync).wait();
                    r.expect("write");
                    bufs.insert(0, b);
                    buf = bufs.pop().expect("buffer");
                }
            });
        }
    });
    file.sync_data().expect("sync");
    let e = start.elapsed();
    println!(
        "batch {} KiB threads {threads} sync {sync} direct {direct}: {:.0} MB/s",
        batch >> 10,
        total as f64 / e.as_secs_f64() / 1e6
    );
}
