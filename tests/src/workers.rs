//! The workload threads of the crash children: `crash_child` (the kill -9 test) and
//! `powercut_child` (the power-cut harness) run the same roles, differing only in names,
//! bytes and pace ([`Workload`]). Every line goes to the ack log only *after* the store
//! acknowledged what it names (`PUT`, `DEL`, `IPUT`, `IDEL`), or before an operation starts
//! (`DELETING`, `IPUTTING`, `IDELETING`: in doubt until its second line); `COMPACTING` and
//! `COMPACTED ...` are markers for the harness, not promises.

use crate::put_instance_in_pieces;
use anyhow::Context;
use kuvasto_engine::io::sim::DetRng;
use kuvasto_engine::{CompactOptions, Namespace, Store};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// What a workload thread does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `Store::put` of whole objects; deletes three in five again.
    Putter,
    /// `Store::put_stream` in uneven pieces; deletes every other one again.
    Streamer,
    /// `Store::put_instance` of CT instances; `Store::delete_instance` of one in three.
    Instancer,
    /// `Store::compact` in a loop.
    Compactor,
}

/// The ack log: one `write(2)` per line, under a lock, so lines never interleave.
pub struct AckLog(Mutex<File>);

impl AckLog {
    /// Opens `path` for appending (created if missing).
    pub fn open(path: &Path) -> anyhow::Result<AckLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open the ack log {}", path.display()))?;
        Ok(AckLog(Mutex::new(file)))
    }

    pub fn line(&self, line: &str) -> anyhow::Result<()> {
        let mut file = self
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("ack log lock poisoned"))?;
        file.write_all(format!("{line}\n").as_bytes())
            .context("append to the ack log")
    }
}

/// How one child names, fills and paces what its threads write.
pub struct Workload {
    pub cycle: u64,
    /// The letter of a putter's keys: `c{cycle}-{letter}{thread}-{i}`.
    pub putter_letter: char,
    /// The bytes of the object stored under a key (derived from the key alone).
    pub bytes: fn(&str) -> Vec<u8>,
    /// The SOP Instance UID of instance `i` of instancer `thread` in `cycle`.
    pub instance_uid: fn(u64, u64, u64) -> String,
    /// The seed of streamer `thread`'s piece sizes.
    pub stream_seed: fn(u64, u64) -> u64,
    /// A putter and an instancer wait this long before each object, a streamer twice as long
    /// and 0 to 3 times as long after each piece (a slow client). Zero: no waiting at all.
    pub pause: Duration,
    pub compact: CompactOptions,
    /// The compactor's rest between two compactions.
    pub compact_idle: Duration,
}

impl Workload {
    fn pause(&self, times: u32) {
        if !self.pause.is_zero() {
            std::thread::sleep(self.pause * times);
        }
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

fn putter(store: &Store, acks: &AckLog, w: &Workload, thread: u64) -> anyhow::Result<()> {
    let key = |i: u64| format!("c{}-{}{thread}-{i}", w.cycle, w.putter_letter);
    for i in 0u64.. {
        w.pause(1);
        let k = key(i);
        store
            .put(Namespace::OBJECT, k.as_bytes(), &(w.bytes)(&k))
            .with_context(|| format!("put {k}"))?;
        acks.line(&format!("PUT {k}"))?;
        // Three in five are deleted again: garbage for the compactor, and live data that
        // grows slowly over many cycles.
        if matches!(i % 5, 1 | 3 | 4) {
            delete(store, acks, &key(i - 1))?;
        }
    }
    Ok(())
}

fn streamer(store: &Store, acks: &AckLog, w: &Workload, thread: u64) -> anyhow::Result<()> {
    let mut rng = DetRng::new((w.stream_seed)(w.cycle, thread));
    let key = |i: u64| format!("c{}-s{thread}-{i}", w.cycle);
    for i in 0u64.. {
        w.pause(2);
        let k = key(i);
        let bytes = (w.bytes)(&k);
        let mut stream = store
            .put_stream(Namespace::OBJECT, k.as_bytes())
            .with_context(|| format!("put_stream {k}"))?;
        let mut at = 0usize;
        while at < bytes.len() {
            let n = (1 + rng.below(100_000) as usize).min(bytes.len() - at);
            stream
                .write(&bytes[at..at + n])
                .with_context(|| format!("stream {k} at {at}"))?;
            at += n;
            // A slow client: the stream stays in flight across seals and compactions.
            if !w.pause.is_zero() {
                w.pause(rng.below(4) as u32);
            }
        }
        stream.finish().with_context(|| format!("finish {k}"))?;
        acks.line(&format!("PUT {k}"))?;
        if i % 2 == 1 {
            delete(store, acks, &key(i - 1))?;
        }
    }
    Ok(())
}

fn instancer(store: &Store, acks: &AckLog, w: &Workload, thread: u64) -> anyhow::Result<()> {
    for i in 0u64.. {
        w.pause(1);
        let sop = (w.instance_uid)(w.cycle, thread, i);
        let bytes = crate::workload_instance(&sop).encode();
        // Logged before the put starts: whatever the store holds of it after a crash is then
        // known to the check (in doubt until `IPUT`).
        acks.line(&format!("IPUTTING {sop}"))?;
        put_instance_in_pieces(store, &bytes, i ^ (w.cycle << 32) ^ (thread << 48))
            .with_context(|| format!("put_instance {sop}"))?;
        acks.line(&format!("IPUT {sop}"))?;
        // One in three is deleted again.
        if i % 3 == 2 {
            let victim = (w.instance_uid)(w.cycle, thread, i - 1);
            acks.line(&format!("IDELETING {victim}"))?;
            store
                .delete_instance(&victim)
                .with_context(|| format!("delete_instance {victim}"))?;
            acks.line(&format!("IDEL {victim}"))?;
        }
    }
    Ok(())
}

fn compactor(store: &Store, acks: &AckLog, w: &Workload) -> anyhow::Result<()> {
    loop {
        let announced = AtomicBool::new(false);
        let report = store
            .compact_with_progress(&w.compact, &|_| {
                if !announced.swap(true, Ordering::Relaxed) {
                    // A marker for the harness (a kill in the middle of a compaction), not a
                    // promise: a failed append shows up as a missing marker only.
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
        std::thread::sleep(w.compact_idle);
    }
}

/// Runs one thread per `(role, thread number)` until the process is killed; returns the
/// error of the first thread that stops (none stops on its own).
pub fn run(
    store: Arc<Store>,
    acks: Arc<AckLog>,
    workload: Arc<Workload>,
    roles: Vec<(Role, u64)>,
) -> anyhow::Result<()> {
    let (done_tx, done_rx) = mpsc::channel();
    for (role, thread) in roles {
        let (store, acks, w, done) = (
            store.clone(),
            acks.clone(),
            workload.clone(),
            done_tx.clone(),
        );
        std::thread::spawn(move || {
            let result = match role {
                Role::Putter => putter(&store, &acks, &w, thread),
                Role::Streamer => streamer(&store, &acks, &w, thread),
                Role::Instancer => instancer(&store, &acks, &w, thread),
                Role::Compactor => compactor(&store, &acks, &w),
            };
            let _ = done.send((role, thread, result));
        });
    }
    drop(done_tx);
    match done_rx.recv() {
        Ok((role, thread, Err(e))) => Err(e.context(format!("{role:?} {thread}"))),
        Ok((role, thread, Ok(()))) => anyhow::bail!("{role:?} {thread} stopped"),
        Err(_) => anyhow::bail!("no workload thread ran"),
    }
}
