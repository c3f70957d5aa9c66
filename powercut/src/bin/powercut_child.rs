//! The workload child of the power-cut harness: runs [`Mix`] threads on one store until it
//! is killed, appending each acknowledged operation to the ack log (on the real disk)
//! *after* the store acknowledged it. See `kuvasto_powercut::workload`.
//!
//! Usage: powercut_child DATA_DIR ACK_FILE CYCLE DIRECT_IO(0|1) [--putters N] [--streamers N]
//!        [--instancers N] [--compactors N] [--pause-ms N]

use anyhow::{bail, Context};
use kuvasto_engine::{Namespace, Store};
use kuvasto_powercut::model::Rng;
use kuvasto_powercut::workload::{
    compact_options, instance_uid, object_bytes, store_config, Mix, Role,
};
use kuvasto_tests::{put_instance_in_pieces, workload_instance};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The ack log: one `write(2)` per line, under a lock, so lines never interleave.
struct AckLog(Mutex<File>);

impl AckLog {
    fn line(&self, line: &str) -> anyhow::Result<()> {
        let mut file = self
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("ack log lock poisoned"))?;
        file.write_all(format!("{line}\n").as_bytes())
            .context("append to the ack log")
    }
}

/// Deletes `key` (an earlier, acknowledged object of the same thread), logging around it.
fn delete(store: &Store, acks: &AckLog, key: &str) -> anyhow::Result<()> {
    acks.line(&format!("DELETING {key}"))?;
    store
        .delete(Namespace::OBJECT, key.as_bytes())
        .with_context(|| format!("delete {key}"))?;
    acks.line(&format!("DEL {key}"))
}

fn putter(
    store: &Store,
    acks: &AckLog,
    cycle: u64,
    thread: usize,
    pause: Duration,
) -> anyhow::Result<()> {
    for i in 0u64.. {
        std::thread::sleep(pause);
        let key = format!("c{cycle}-p{thread}-{i}");
        store
            .put(Namespace::OBJECT, key.as_bytes(), &object_bytes(&key))
            .with_context(|| format!("put {key}"))?;
        acks.line(&format!("PUT {key}"))?;
        // Three in five objects are deleted again: garbage for the compactor, and live
        // data that grows slowly over many cycles.
        if matches!(i % 5, 1 | 3 | 4) {
            delete(store, acks, &format!("c{cycle}-p{thread}-{}", i - 1))?;
        }
    }
    Ok(())
}

fn streamer(
    store: &Store,
    acks: &AckLog,
    cycle: u64,
    thread: usize,
    pause: Duration,
) -> anyhow::Result<()> {
    let mut rng = Rng::new(cycle.wrapping_mul(0x100_0000_01b3) ^ thread as u64);
    for i in 0u64.. {
        std::thread::sleep(2 * pause);
        let key = format!("c{cycle}-s{thread}-{i}");
        let bytes = object_bytes(&key);
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
            // A slow client: the stream stays in flight across seals and compactions.
            std::thread::sleep(pause * rng.below(4) as u32);
        }
        stream.finish().with_context(|| format!("finish {key}"))?;
        acks.line(&format!("PUT {key}"))?;
        if i % 2 == 1 {
            delete(store, acks, &format!("c{cycle}-s{thread}-{}", i - 1))?;
        }
    }
    Ok(())
}

fn instancer(
    store: &Store,
    acks: &AckLog,
    cycle: u64,
    thread: usize,
    pause: Duration,
) -> anyhow::Result<()> {
    for i in 0u64.. {
        std::thread::sleep(pause);
        let sop = instance_uid(cycle, thread, i);
        let bytes = workload_instance(&sop).encode();
        // Logged before the put starts: whatever the store holds of it after the cut is
        // then known to the check (in doubt until `IPUT`).
        acks.line(&format!("IPUTTING {sop}"))?;
        put_instance_in_pieces(store, &bytes, i ^ (cycle << 32) ^ ((thread as u64) << 48))
            .with_context(|| format!("put_instance {sop}"))?;
        acks.line(&format!("IPUT {sop}"))?;
        // One in three is deleted again.
        if i % 3 == 2 {
            let victim = instance_uid(cycle, thread, i - 1);
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
    loop {
        let announced = AtomicBool::new(false);
        let report = store
            .compact_with_progress(&compact_options(), &|_| {
                if !announced.swap(true, Ordering::Relaxed) {
                    // A marker for the harness (a kill in the middle of a compaction), not
                    // a promise: a failed append shows up as a missing marker only.
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
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        bail!(
            "usage: powercut_child DATA_DIR ACK_FILE CYCLE DIRECT_IO(0|1) [--putters N] \
             [--streamers N] [--instancers N] [--compactors N] [--pause-ms N]"
        );
    }
    let cycle: u64 = args[3].parse().context("CYCLE")?;
    let direct_io = match args[4].as_str() {
        "1" => true,
        "0" => false,
        other => bail!("DIRECT_IO must be 0 or 1, not {other:?}"),
    };
    let mix: Mix = args[5..]
        .join(" ")
        .parse()
        .map_err(|e| anyhow::anyhow!("options: {e}"))?;
    let pause = Duration::from_millis(mix.pause_ms);
    let data = Path::new(&args[1]);
    let store = Arc::new(
        Store::open(data, store_config(direct_io))
            .with_context(|| format!("open the store in {}", data.display()))?,
    );
    let acks = Arc::new(AckLog(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args[2])
            .with_context(|| format!("open the ack log {}", args[2]))?,
    )));
    let (done_tx, done_rx) = mpsc::channel();
    let mut per_role = std::collections::HashMap::new();
    for role in mix.roles() {
        let index = per_role.entry(role).or_insert(0usize);
        let thread = *index;
        *index += 1;
        let (store, acks, done) = (store.clone(), acks.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let result = match role {
                Role::Putter => putter(&store, &acks, cycle, thread, pause),
                Role::Streamer => streamer(&store, &acks, cycle, thread, pause),
                Role::Instancer => instancer(&store, &acks, cycle, thread, pause),
                Role::Compactor => compactor(&store, &acks),
            };
            let _ = done.send((role, thread, result));
        });
    }
    drop(done_tx);
    // The threads run until the harness kills this process; the first to stop ends it.
    match done_rx.recv() {
        Ok((role, thread, Err(e))) => Err(e.context(format!("{role:?} {thread}"))),
        Ok((role, thread, Ok(()))) => bail!("{role:?} {thread} stopped"),
        Err(_) => bail!("no workload thread ran"),
    }
}
