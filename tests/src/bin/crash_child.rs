//! The child process of the kill -9 test: ingests concurrently until it is killed, appending
//! each acknowledged operation to a side file *after* the store acknowledged it.
//!
//! Threads: putters (`Store::put` of `c{cycle}-w{thread}-{i}`, deleting three in five again),
//! streamers (`Store::put_stream` of `c{cycle}-s{thread}-{i}` in uneven pieces, 2 to 20 chunks,
//! deleting every other one again), instancers (`Store::put_instance` of CT instances derived
//! from their SOP Instance UIDs `1.2.15.9.{cycle}.{thread}.{i}`, in uneven pieces, and
//! `Store::delete_instance` of one in three) and one compactor (`Store::compact` with a
//! garbage ratio of 0.3, in a loop).
//!
//! Lines: `PUT key` after a put or stream is acknowledged; `DELETING key` before a delete and
//! `DEL key` after it; `IPUTTING uid` before an instance put and `IPUT uid` after it;
//! `IDELETING uid` / `IDEL uid` around an instance delete; `COMPACTING` when a compaction
//! starts copying and `COMPACTED ...` when one removed segments (markers, not promises).
//!
//! Usage: crash_child DATA_DIR ACK_FILE CYCLE PUTTERS STREAMERS INSTANCERS

use anyhow::Context;
use kuvasto_engine::io::sim::DetRng;
use kuvasto_engine::{CompactOptions, Namespace, Store};
use kuvasto_tests::{crash_bytes, crash_config, put_instance_in_pieces, workload_instance};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// The ack log: one `write(2)` per line, under a lock, so lines never interleave.
struct AckLog(Mutex<File>);

impl AckLog {
    fn line(&self, line: &str) -> anyhow::Result<()> {
        let mut file = self
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("ack file lock poisoned"))?;
        file.write_all(format!("{line}\n").as_bytes())
            .context("append to the ack file")
    }
}

fn delete(store: &Store, acks: &AckLog, key: &str) -> anyhow::Result<()> {
    acks.line(&format!("DELETING {key}"))?;
    store
        .delete(Namespace::OBJECT, key.as_bytes())
        .with_context(|| format!("delete {key}"))?;
    acks.line(&format!("DEL {key}"))
}

fn putter(store: &Store, acks: &AckLog, cycle: u64, thread: u64) -> anyhow::Result<()> {
    for i in 0u64.. {
        let key = format!("c{cycle}-w{thread}-{i}");
        store
            .put(Namespace::OBJECT, key.as_bytes(), &crash_bytes(&key))
            .with_context(|| format!("put {key}"))?;
        acks.line(&format!("PUT {key}"))?;
        // Three in five are deleted again: garbage for the compactor.
        if matches!(i % 5, 1 | 3 | 4) {
            delete(store, acks, &format!("c{cycle}-w{thread}-{}", i - 1))?;
        }
    }
    Ok(())
}

fn streamer(store: &Store, acks: &AckLog, cycle: u64, thread: u64) -> anyhow::Result<()> {
    let mut rng = DetRng::new(cycle.wrapping_mul(0x100_0000_01b3) ^ (thread + 1));
    for i in 0u64.. {
        let key = format!("c{cycle}-s{thread}-{i}");
        let bytes = crash_bytes(&key);
        let mut stream = store
            .put_stream(Namespace::OBJECT, key.as_bytes())
            .with_context(|| format!("put_stream {key}"))?;
        let mut at = 0usize;
        while at < bytes.len() {
            let n = (1 + rng.below(100_000) as usize).min(bytes.len() - at);
            stream
                .write(&bytes[at..at + n])
                .with_context(|| format!("stream {key} at {at}"))?;
            at += n;
        }
        stream.finish().with_context(|| format!("finish {key}"))?;
        acks.line(&format!("PUT {key}"))?;
        if i % 2 == 1 {
            delete(store, acks, &format!("c{cycle}-s{thread}-{}", i - 1))?;
        }
    }
    Ok(())
}

fn instancer(store: &Store, acks: &AckLog, cycle: u64, thread: u64) -> anyhow::Result<()> {
    let uid = |i: u64| format!("1.2.15.9.{cycle}.{thread}.{i}");
    for i in 0u64.. {
        let sop = uid(i);
        let bytes = workload_instance(&sop).encode();
        acks.line(&format!("IPUTTING {sop}"))?;
        put_instance_in_pieces(store, &bytes, i ^ (cycle << 32) ^ (thread << 48))
            .with_context(|| format!("put_instance {sop}"))?;
        acks.line(&format!("IPUT {sop}"))?;
        // One in three is deleted again.
        if i % 3 == 2 {
            let victim = uid(i - 1);
            acks.line(&format!("IDELETING {victim}"))?;
            store
                .delete_instance(&victim)
                .with_context(|| format!("delete_instance {victim}"))?;
            acks.line(&format!("IDEL {victim}"))?;
        }
    }
    Ok(())
}

fn compactor(store: &Store, acks: &AckLog) -> anyhow::Result<()> {
    let options = CompactOptions {
        garbage_ratio_min: 0.3,
        ..CompactOptions::default()
    };
    loop {
        let announced = AtomicBool::new(false);
        let report = store
            .compact_with_progress(&options, &|_| {
                if !announced.swap(true, Ordering::Relaxed) {
                    // A marker (a kill in the middle of a compaction), not a promise.
                    let _ = acks.line("COMPACTING");
                }
            })
            .context("compact")?;
        if !report.segments_removed.is_empty() {
            acks.line(&format!(
                "COMPACTED removed={:?} written={:?}",
                report.segments_removed, report.segments_written
            ))?;
        }
        // Online compaction, not a busy loop: the writers need the cores.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Putter,
    Streamer,
    Instancer,
    Compactor,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 7,
        "usage: crash_child DATA_DIR ACK_FILE CYCLE PUTTERS STREAMERS INSTANCERS"
    );
    let store = Arc::new(Store::open(std::path::Path::new(&args[1]), crash_config())?);
    let acks = Arc::new(AckLog(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args[2])?,
    )));
    let cycle: u64 = args[3].parse().context("CYCLE")?;
    let count = |i: usize, what: &str| args[i].parse::<u64>().context(what.to_string());
    let mut roles = Vec::new();
    for (role, n) in [
        (Role::Putter, count(4, "PUTTERS")?),
        (Role::Streamer, count(5, "STREAMERS")?),
        (Role::Instancer, count(6, "INSTANCERS")?),
        (Role::Compactor, 1),
    ] {
        roles.extend((0..n).map(|thread| (role, thread)));
    }
    let (done_tx, done_rx) = mpsc::channel();
    for (role, thread) in roles {
        let (store, acks, done) = (store.clone(), acks.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let result = match role {
                Role::Putter => putter(&store, &acks, cycle, thread),
                Role::Streamer => streamer(&store, &acks, cycle, thread),
                Role::Instancer => instancer(&store, &acks, cycle, thread),
                Role::Compactor => compactor(&store, &acks),
            };
            let _ = done.send((role, thread, result));
        });
    }
    drop(done_tx);
    // The threads run until the test kills this process; the first to stop ends it.
    match done_rx.recv() {
        Ok((role, thread, Err(e))) => Err(e.context(format!("{role:?} {thread}"))),
        Ok((role, thread, Ok(()))) => anyhow::bail!("{role:?} {thread} stopped"),
        Err(_) => anyhow::bail!("no workload thread ran"),
    }
}
