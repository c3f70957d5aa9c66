//! The workload child of the power-cut harness: runs [`Mix`] threads on one store until it
//! is killed, appending each acknowledged operation to the ack log (on the real disk)
//! *after* the store acknowledged it. See `kuvasto_powercut::workload`.
//!
//! Usage: powercut_child DATA_DIR ACK_FILE CYCLE DIRECT_IO(0|1) [--putters N] [--streamers N]
//!        [--instancers N] [--compactors N] [--pause-ms N]

use anyhow::{bail, Context};
use kuvasto_engine::Store;
use kuvasto_powercut::workload::{compact_options, instance_uid, object_bytes, store_config, Mix};
use kuvasto_tests::workers::{run, AckLog, Workload};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
    let acks = Arc::new(AckLog::open(Path::new(&args[2]))?);
    let mut per_role = std::collections::HashMap::new();
    let roles = mix
        .roles()
        .into_iter()
        .map(|role| {
            let index = per_role.entry(role).or_insert(0u64);
            *index += 1;
            (role, *index - 1)
        })
        .collect();
    let workload = Workload {
        cycle,
        putter_letter: 'p',
        bytes: object_bytes,
        instance_uid: |cycle, thread, i| instance_uid(cycle, thread as usize, i),
        stream_seed: |cycle, thread| cycle.wrapping_mul(0x100_0000_01b3) ^ thread,
        pause,
        compact: compact_options(),
        compact_idle: Duration::from_millis(20),
    };
    // The threads run until the harness kills this process; the first to stop ends it.
    run(store, acks, Arc::new(workload), roles)
}
