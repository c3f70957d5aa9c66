//! Power cuts under the real engine (issue 15). For each cycle: a child process ingests
//! concurrently on the power-cut file system (puts of every size, streaming puts across
//! segments, deletes, DICOM instance puts and deletes, online compaction) until the ack log
//! reaches a random length (or, in every other cycle, until after that a compaction is
//! copying or has just removed its originals); it is killed with SIGKILL, power is cut (every
//! unsynced write kept, lost or torn, at random from the cycle's seed), and the store is
//! reopened on the file system's durable state. Every acknowledged put must read back byte
//! for byte, every acknowledged delete must stay deleted, no other object may read back
//! wrong; every acknowledged instance must have its object byte for byte, its current
//! metadata and its catalog row, every acknowledged instance delete must have left none of
//! them, and each test patient's catalog listing must be exactly the instances present
//! (`kuvasto_tests::check_instances`); recovery must report no corruption. Both `direct_io`
//! modes run.
//!
//! `KUVASTO_POWERCUT_CYCLES` sets the cycles per mode; `KUVASTO_POWERCUT_SEED` the seed base
//! (cycle `c` of mode `m` cuts with seed `base + 2c + m`, `m` = 1 for direct I/O, printed
//! with every cycle).

mod common;

use common::FsProcess;
use kuvasto_engine::{Namespace, Store};
use kuvasto_powercut::model::Rng;
use kuvasto_powercut::workload::{
    check, expectations, instance_expectations, object_bytes, store_config, Line,
};
use kuvasto_powercut::{CutPolicy, CutReport};
use kuvasto_tests::env_u64;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Cycles per mode unless `KUVASTO_POWERCUT_CYCLES` says otherwise: both modes together
/// take two to three minutes on 2 cores in a debug build (cycles get slower as the store
/// grows: 30 per mode took 62 s, 50 took 148 s; 45 with the instancer 166 s on a busy
/// machine).
const CYCLES_DEFAULT: u64 = 45;
const SEED_BASE_DEFAULT: u64 = 0x5EED_0000;
/// Longest a child may take to reach its cycle's line target: longer is a hang.
const EVENT_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait, once the line target is reached, for a compaction to start.
const COMPACTION_WAIT: Duration = Duration::from_secs(4);

/// The tests share the two cores: one power-cut run at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync {}: {e}", dir.display()));
}

/// Follows the ack log as the child appends to it, counting complete lines.
struct AckTail {
    file: File,
    partial: Vec<u8>,
    lines: usize,
    /// The line number of the latest `COMPACTING` marker (a compaction started copying).
    last_compacting_at: Option<usize>,
    /// The line number of the latest `COMPACTED` marker (a compaction removed segments).
    last_compacted_at: Option<usize>,
}

impl AckTail {
    fn open(path: &Path) -> AckTail {
        let file = File::options()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .expect("open the ack log");
        let mut tail = AckTail {
            file,
            partial: Vec::new(),
            lines: 0,
            last_compacting_at: None,
            last_compacted_at: None,
        };
        tail.poll();
        tail
    }

    fn poll(&mut self) {
        let mut fresh = Vec::new();
        self.file.read_to_end(&mut fresh).expect("read the ack log");
        self.partial.extend_from_slice(&fresh);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.lines += 1;
            match Line::parse(String::from_utf8_lossy(&line).trim_end()) {
                Line::Compacting => self.last_compacting_at = Some(self.lines),
                Line::Compacted => self.last_compacted_at = Some(self.lines),
                _ => {}
            }
        }
    }

    fn rewind(&mut self) {
        self.file.seek(SeekFrom::Start(0)).expect("seek");
        self.partial.clear();
        self.lines = 0;
        self.last_compacting_at = None;
        self.last_compacted_at = None;
        self.poll();
    }
}

/// What the child is killed at.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// The ack log reaching this many lines.
    Lines(usize),
    /// A compaction starting to copy, once the ack log has this many lines.
    CompactionStarted(usize),
    /// A compaction having removed its originals, once the ack log has this many lines.
    CompactionFinished(usize),
}

impl Event {
    /// Cycles alternate: a random point, mid-compaction, a random point, just after a
    /// compaction.
    fn for_cycle(cycle: u64, target: usize) -> Event {
        match cycle % 4 {
            1 => Event::CompactionStarted(target),
            3 => Event::CompactionFinished(target),
            _ => Event::Lines(target),
        }
    }
}

struct ModeTotals {
    cycles: u64,
    checked: usize,
    last_checked: usize,
    present_ok: usize,
    deleted_ok: usize,
    unacknowledged_present: usize,
    instances_checked: usize,
    last_instances_checked: usize,
    instances_present_ok: usize,
    instances_deleted_ok: usize,
    instances_in_doubt_present: usize,
    instances_in_doubt_absent: usize,
    listed: usize,
    lost: usize,
    resurrected: usize,
    corrupted: usize,
    catalog_mismatches: usize,
    torn_tails: usize,
    mid_compaction_kills: usize,
    after_compaction_kills: usize,
    pending_bytes_at_cuts: u64,
    cuts: CutReport,
}

fn add_cut(total: &mut CutReport, cut: &CutReport) {
    total.writes_kept += cut.writes_kept;
    total.writes_lost += cut.writes_lost;
    total.writes_torn += cut.writes_torn;
    total.sizes_kept += cut.sizes_kept;
    total.sizes_lost += cut.sizes_lost;
    total.dir_changes_kept += cut.dir_changes_kept;
    total.dir_changes_lost += cut.dir_changes_lost;
    total.files_dropped += cut.files_dropped;
}

fn spawn_child(data: &Path, acks: &Path, cycle: u64, direct_io: bool, stderr: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_powercut_child"))
        .arg(data)
        .arg(acks)
        .arg(cycle.to_string())
        .arg(if direct_io { "1" } else { "0" })
        .stdout(Stdio::null())
        .stderr(File::create(stderr).expect("child stderr file"))
        .spawn()
        .expect("spawn powercut_child")
}

/// Waits for `event`; returns what happened, or why the cycle failed.
fn wait_for(
    child: &mut Child,
    tail: &mut AckTail,
    event: Event,
    stderr: &Path,
) -> Result<String, String> {
    let started = Instant::now();
    let mut target_reached_at = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(stderr).unwrap_or_default();
            return Err(format!("the child exited by itself ({status}): {err}"));
        }
        tail.poll();
        let (target, marker, what) = match event {
            Event::Lines(target) => (target, None, ""),
            Event::CompactionStarted(target) => (
                target,
                Some(tail.last_compacting_at),
                "a compaction copying",
            ),
            Event::CompactionFinished(target) => (
                target,
                Some(tail.last_compacted_at),
                "a compaction just finished",
            ),
        };
        if tail.lines >= target {
            match marker {
                None => return Ok(format!("{} ack lines", tail.lines)),
                Some(at) if at.is_some_and(|at| at > target) => {
                    return Ok(format!("{what}, {} ack lines", tail.lines));
                }
                Some(_) => {
                    let since = *target_reached_at.get_or_insert_with(Instant::now);
                    if since.elapsed() > COMPACTION_WAIT {
                        return Ok(format!("{} ack lines (no compaction came)", tail.lines));
                    }
                }
            }
        }
        if tail.lines < target && started.elapsed() > EVENT_TIMEOUT {
            return Err(format!(
                "the child made no progress: {} ack lines after {EVENT_TIMEOUT:?}, target {target}",
                tail.lines
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run_mode(direct_io: bool) {
    let _one = one_at_a_time();
    let mode = if direct_io {
        "direct_io=true"
    } else {
        "direct_io=false"
    };
    let cycles = env_u64("KUVASTO_POWERCUT_CYCLES", CYCLES_DEFAULT);
    let seed_base = env_u64("KUVASTO_POWERCUT_SEED", SEED_BASE_DEFAULT);
    let root = tempfile::tempdir().expect("tempdir");
    let mut fs = FsProcess::start(root.path());
    // The data directory is made as an operator makes it: created, and its name synced.
    // (`a_new_store_directory_survives_a_power_cut` covers the engine creating it.)
    let data: PathBuf = fs.mount().join("data");
    std::fs::create_dir(&data).expect("create the data directory");
    sync_dir(fs.mount());
    // The ack log is on the real disk, outside the mount.
    let acks = root.path().join("acks.log");
    let mut tail = AckTail::open(&acks);
    let mut totals = ModeTotals {
        cycles: 0,
        checked: 0,
        last_checked: 0,
        present_ok: 0,
        deleted_ok: 0,
        unacknowledged_present: 0,
        instances_checked: 0,
        last_instances_checked: 0,
        instances_present_ok: 0,
        instances_deleted_ok: 0,
        instances_in_doubt_present: 0,
        instances_in_doubt_absent: 0,
        listed: 0,
        lost: 0,
        resurrected: 0,
        corrupted: 0,
        catalog_mismatches: 0,
        torn_tails: 0,
        mid_compaction_kills: 0,
        after_compaction_kills: 0,
        pending_bytes_at_cuts: 0,
        cuts: CutReport::default(),
    };
    let run_started = Instant::now();
    for cycle in 0..cycles {
        let cycle_started = Instant::now();
        let seed = seed_base + 2 * cycle + u64::from(direct_io);
        let mut rng = Rng::new(seed);
        let target = tail.lines + 40 + rng.below(360) as usize;
        let event = Event::for_cycle(cycle, target);
        let stderr = root.path().join(format!("child-{cycle}.err"));
        let mut child = spawn_child(&data, &acks, cycle, direct_io, &stderr);
        let waited = wait_for(&mut child, &mut tail, event, &stderr);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let happened =
            waited.unwrap_or_else(|why| panic!("{mode} cycle {cycle} (seed {seed}): {why}"));
        if happened.starts_with("a compaction copying") {
            totals.mid_compaction_kills += 1;
        }
        if happened.starts_with("a compaction just finished") {
            totals.after_compaction_kills += 1;
        }

        let pending = fs.client.stats().expect("stats").pending_bytes;
        let cut = fs.client.cut(seed, CutPolicy::Random).expect("cut");
        totals.pending_bytes_at_cuts += pending;
        add_cut(&mut totals.cuts, &cut);

        tail.rewind();
        let log = std::fs::read_to_string(&acks).expect("read the ack log");
        let expect = expectations(&log);
        let instances = instance_expectations(&log);
        let store = Store::open(&data, store_config(direct_io)).unwrap_or_else(|e| {
            panic!("{mode} cycle {cycle} (seed {seed}, killed at {happened}): reopening after the cut failed: {e}\ncut: {cut}")
        });
        let report = store.recovery_report().clone();
        let checked = check(&store, &expect, &instances);
        let ichecked = &checked.instances;
        let segments = store.stats();
        drop(store);

        totals.cycles += 1;
        totals.checked += checked.checked;
        totals.last_checked = checked.checked;
        totals.present_ok += checked.present_ok;
        totals.deleted_ok += checked.deleted_ok;
        totals.unacknowledged_present += checked.unacknowledged_present;
        totals.instances_checked += ichecked.checked;
        totals.last_instances_checked = ichecked.checked;
        totals.instances_present_ok += ichecked.present_ok;
        totals.instances_deleted_ok += ichecked.deleted_ok;
        totals.instances_in_doubt_present += ichecked.in_doubt_present;
        totals.instances_in_doubt_absent += ichecked.in_doubt_absent;
        totals.listed += ichecked.listed;
        totals.lost += checked.lost.len() + ichecked.lost.len();
        totals.resurrected += checked.resurrected.len() + ichecked.resurrected.len();
        totals.corrupted += checked.corrupted.len() + ichecked.corrupted.len();
        totals.catalog_mismatches += ichecked.catalog.len();
        totals.torn_tails += report.torn_tails.len();
        eprintln!(
            "powercut {mode} cycle {cycle} seed {seed}: killed at {happened}; {pending} bytes pending; \
             cut kept {} lost {} tore {} writes, kept {} lost {} dir changes; \
             {} torn tails cut, {} sealed at open; {} segments ({} sealed); \
             {} acknowledged checked ({} present, {} deleted); \
             {} instances checked ({} present, {} deleted, {} in doubt present, {} in doubt \
             absent), {} listed; \
             lost {}, resurrected {}, corrupted {}, catalog mismatches {}; {:.1} s",
            cut.writes_kept,
            cut.writes_lost,
            cut.writes_torn,
            cut.dir_changes_kept,
            cut.dir_changes_lost,
            report.torn_tails.len(),
            report.sealed_now.len(),
            segments.segments,
            segments.sealed_segments,
            checked.checked,
            checked.present_ok,
            checked.deleted_ok,
            ichecked.checked,
            ichecked.present_ok,
            ichecked.deleted_ok,
            ichecked.in_doubt_present,
            ichecked.in_doubt_absent,
            ichecked.listed,
            checked.lost.len() + ichecked.lost.len(),
            checked.resurrected.len() + ichecked.resurrected.len(),
            checked.corrupted.len() + ichecked.corrupted.len(),
            ichecked.catalog.len(),
            cycle_started.elapsed().as_secs_f64(),
        );
        if !checked.is_clean() || !report.corruption.is_empty() {
            let mut message = format!(
                "{mode} cycle {cycle} (seed {seed}, KUVASTO_POWERCUT_SEED={seed_base}), killed at \
                 {happened}; cut: {cut}\nrecovery: {report:?}\n"
            );
            for corruption in &report.corruption {
                let _ = writeln!(message, "  recovery reported corruption: {corruption:?}");
            }
            let findings: Vec<_> = checked.findings().collect();
            for (what, finding) in findings.iter().take(30) {
                let _ = writeln!(message, "  {what}: {finding}");
            }
            if findings.len() > 30 {
                let _ = writeln!(message, "  ... and {} more", findings.len() - 30);
            }
            panic!("{message}");
        }
    }
    let elapsed = run_started.elapsed().as_secs_f64();
    let held = fs.client.stats().expect("stats");
    eprintln!(
        "powercut {mode}: the last check covered {} keys and {} instances (every one the run \
         acknowledged); \
         the file system holds {} MB in {} files, saw {} writes ({} MB), {} fsyncs, {} directory fsyncs",
        totals.last_checked,
        totals.last_instances_checked,
        held.bytes >> 20,
        held.files,
        held.writes,
        held.write_bytes >> 20,
        held.fsyncs,
        held.fsyncdirs,
    );
    eprintln!(
        "powercut {mode}: {} cycles in {elapsed:.1} s ({:.1} s per cycle), kills: {} mid-compaction, \
         {} just after one; \
         {} acknowledged objects checked ({} present, {} deleted), {} unacknowledged found intact; \
         {} instances checked ({} present, {} deleted, {} in doubt present, {} in doubt absent), \
         {} catalog rows listed; \
         lost {}, resurrected {}, corrupted {}, catalog mismatches {}; {} torn tails cut; \
         {} bytes pending at the cuts; cuts kept {} lost {} tore {} writes, kept {} lost {} sizes, \
         kept {} lost {} directory changes, dropped {} files",
        totals.cycles,
        elapsed / totals.cycles.max(1) as f64,
        totals.mid_compaction_kills,
        totals.after_compaction_kills,
        totals.checked,
        totals.present_ok,
        totals.deleted_ok,
        totals.unacknowledged_present,
        totals.instances_checked,
        totals.instances_present_ok,
        totals.instances_deleted_ok,
        totals.instances_in_doubt_present,
        totals.instances_in_doubt_absent,
        totals.listed,
        totals.lost,
        totals.resurrected,
        totals.corrupted,
        totals.catalog_mismatches,
        totals.torn_tails,
        totals.pending_bytes_at_cuts,
        totals.cuts.writes_kept,
        totals.cuts.writes_lost,
        totals.cuts.writes_torn,
        totals.cuts.sizes_kept,
        totals.cuts.sizes_lost,
        totals.cuts.dir_changes_kept,
        totals.cuts.dir_changes_lost,
        totals.cuts.files_dropped,
    );
    assert_eq!(totals.cycles, cycles);
    assert_eq!(
        (
            totals.lost,
            totals.resurrected,
            totals.corrupted,
            totals.catalog_mismatches
        ),
        (0, 0, 0, 0)
    );
    assert!(totals.checked > 0, "nothing was acknowledged");
    assert!(
        totals.instances_present_ok > 0 && totals.instances_deleted_ok > 0,
        "the instancer acknowledged no instance put or no instance delete in {} cycles",
        totals.cycles
    );
}

#[test]
fn acknowledged_writes_survive_power_cuts_with_direct_io() {
    run_mode(true);
}

#[test]
fn acknowledged_writes_survive_power_cuts_with_buffered_io() {
    run_mode(false);
}

/// The engine creates its data directory when it is missing: that directory's name must be
/// durable too before a put in it is acknowledged.
#[test]
fn a_new_store_directory_survives_a_power_cut() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().expect("tempdir");
    let mut fs = FsProcess::start(root.path());
    let key = "c0-p0-1";
    let mut failures = Vec::new();
    for direct_io in [true, false] {
        let data = fs.mount().join(format!("fresh-{direct_io}"));
        {
            let store = Store::open(&data, store_config(direct_io)).expect("open a new store");
            store
                .put(Namespace::OBJECT, key.as_bytes(), &object_bytes(key))
                .expect("put");
        }
        fs.client.cut(1, CutPolicy::LoseAll).expect("cut");
        let names: Vec<String> = std::fs::read_dir(fs.mount())
            .expect("list the mount")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        let store = Store::open(&data, store_config(direct_io)).expect("reopen");
        let found = store
            .get(Namespace::OBJECT, key.as_bytes())
            .expect("get")
            .map(|object| object.read_all().expect("read"));
        if found.as_deref() != Some(&object_bytes(key)[..]) {
            failures.push(format!(
                "direct_io={direct_io}: the acknowledged put in a store whose directory the \
                 engine created is {} after a power cut (cut seed 1, policy lose); the mount \
                 root now holds {names:?}",
                if found.is_some() { "damaged" } else { "gone" }
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
