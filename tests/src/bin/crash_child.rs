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
use kuvasto_engine::{CompactOptions, Store};
use kuvasto_tests::workers::{run, AckLog, Role, Workload};
use kuvasto_tests::{crash_bytes, crash_config};
use std::sync::Arc;
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 7,
        "usage: crash_child DATA_DIR ACK_FILE CYCLE PUTTERS STREAMERS INSTANCERS"
    );
    let store = Arc::new(Store::open(std::path::Path::new(&args[1]), crash_config())?);
    let acks = Arc::new(AckLog::open(std::path::Path::new(&args[2]))?);
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
    let workload = Workload {
        cycle,
        putter_letter: 'w',
        bytes: crash_bytes,
        instance_uid: |cycle, thread, i| format!("1.2.15.9.{cycle}.{thread}.{i}"),
        stream_seed: |cycle, thread| cycle.wrapping_mul(0x100_0000_01b3) ^ (thread + 1),
        // As fast as it goes: the kill comes at an event, not after a time.
        pause: Duration::ZERO,
        compact: CompactOptions {
            garbage_ratio_min: 0.3,
            ..CompactOptions::default()
        },
        compact_idle: Duration::from_millis(10),
    };
    // The threads run until the test kills this process; the first to stop ends it.
    run(store, acks, Arc::new(workload), roles)
}
