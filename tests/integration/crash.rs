//! kill -9: a child process (`src/bin/crash_child.rs`) ingests with several threads — puts,
//! streaming puts across segments, deletes, DICOM instance puts and deletes, online
//! compaction in a loop — and is killed, many times, when its ack log reaches a random number
//! of lines (every other cycle: at the next compaction that starts copying after that). After
//! each kill the store is reopened and held to the ack log: every acknowledged put and stream
//! reads back byte for byte, every acknowledged delete stays deleted, every object the store
//! holds beyond those reads back intact; every acknowledged instance has its object byte for
//! byte, its current metadata and its catalog row, every acknowledged instance delete left
//! nothing, and each test patient's catalog listing is exactly the instances present (see
//! `kuvasto_tests::check_instances`). Recovery must report no corruption.
//!
//! `KUVASTO_CRASH_CYCLES` sets the cycles (default 15), `KUVASTO_CRASH_SEED` the seed of the
//! kill points (default 0xDEADBEEF; named in every failure and in the summary).

use kuvasto_engine::io::sim::DetRng;
use kuvasto_engine::{Namespace, Store};
use kuvasto_tests::{
    check_instances, crash_bytes, crash_config, describe_difference, instance_ack, is_instance_key,
    Finding, InstanceExpect,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Threads of the child besides its compactor.
const PUTTERS: usize = 3;
const STREAMERS: usize = 2;
const INSTANCERS: usize = 1;
/// Longest a child may take to reach its kill point: longer is a hang.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait, once the kill point's lines are reached, for a compaction to start copying.
const COMPACTION_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Present,
    Deleted,
    /// A delete was started but its outcome was not recorded.
    Either,
}

/// What the lines of one cycle acknowledged, by kind.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    lines: usize,
    puts: usize,
    streams: usize,
    deletes: usize,
    instance_puts: usize,
    instance_deletes: usize,
    compactions: usize,
    /// `COMPACTING` markers: compactions that started copying.
    compacting: usize,
}

impl Seen {
    fn add(&mut self, line: &str) {
        self.lines += 1;
        match line.split_once(' ') {
            Some(("PUT", key)) if key.split('-').nth(1).is_some_and(|t| t.starts_with('s')) => {
                self.streams += 1
            }
            Some(("PUT", _)) => self.puts += 1,
            Some(("DEL", _)) => self.deletes += 1,
            Some(("IPUT", _)) => self.instance_puts += 1,
            Some(("IDEL", _)) => self.instance_deletes += 1,
            Some(("COMPACTED", _)) => self.compactions += 1,
            None if line == "COMPACTING" => self.compacting += 1,
            _ => {}
        }
    }

    /// Every kind of operation acknowledged at least once (and one compaction finished).
    fn every_kind(&self) -> bool {
        [
            self.puts,
            self.streams,
            self.deletes,
            self.instance_puts,
            self.instance_deletes,
            self.compactions,
        ]
        .iter()
        .all(|&n| n > 0)
    }
}

/// Follows the ack log from where the cycle started, counting complete lines.
struct Tail {
    file: File,
    partial: Vec<u8>,
    seen: Seen,
}

impl Tail {
    fn from(path: &Path, offset: u64) -> Tail {
        let mut file = File::options()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .expect("open the ack log");
        file.seek(SeekFrom::Start(offset)).expect("seek");
        Tail {
            file,
            partial: Vec::new(),
            seen: Seen::default(),
        }
    }

    fn poll(&mut self) -> Seen {
        let mut fresh = Vec::new();
        self.file.read_to_end(&mut fresh).expect("read the ack log");
        self.partial.extend_from_slice(&fresh);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.seen
                .add(String::from_utf8_lossy(&line[..end]).as_ref());
        }
        self.seen
    }
}

/// Waits until the cycle's lines reach `target` with every kind of operation acknowledged
/// (and, if `mid_compaction`, until a compaction starts copying after that); returns what the
/// child was killed at.
fn wait_for_kill_point(
    child: &mut Child,
    tail: &mut Tail,
    target: usize,
    mid_compaction: bool,
    stderr: &Path,
) -> Result<String, String> {
    let started = Instant::now();
    let mut reached: Option<(Instant, usize)> = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(stderr).unwrap_or_default();
            return Err(format!("the child exited by itself ({status}): {err}"));
        }
        let seen = tail.poll();
        if seen.lines >= target && seen.every_kind() {
            if !mid_compaction {
                return Ok(format!("{} ack lines", seen.lines));
            }
            let (since, compacting) = *reached.get_or_insert((Instant::now(), seen.compacting));
            if seen.compacting > compacting {
                return Ok(format!("a compaction copying, {} ack lines", seen.lines));
            }
            if since.elapsed() > COMPACTION_WAIT {
                return Ok(format!("{} ack lines (no compaction came)", seen.lines));
            }
        } else if started.elapsed() > EVENT_TIMEOUT {
            return Err(format!(
                "no kill point after {EVENT_TIMEOUT:?}: {seen:?}, target {target} lines"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[derive(Debug, Default)]
struct Totals {
    objects_checked: usize,
    objects_present: usize,
    objects_deleted: usize,
    unacknowledged_intact: usize,
    instances_checked: usize,
    instances_present: usize,
    instances_deleted: usize,
    instances_in_doubt: usize,
    listed: usize,
    lost: usize,
    resurrected: usize,
    corrupted: usize,
    catalog_mismatches: usize,
    torn_tails: usize,
    mid_compaction_kills: usize,
}

#[test]
fn acknowledged_objects_and_instances_survive_kill_9() {
    let env = kuvasto_tests::env_u64;
    let cycles = env("KUVASTO_CRASH_CYCLES", 15);
    let seed = env("KUVASTO_CRASH_SEED", 0xDEAD_BEEF);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let acks = dir.path().join("acks.log");
    let mut rng = DetRng::new(seed);
    let mut totals = Totals::default();
    let run_started = Instant::now();
    for cycle in 0..cycles {
        let cycle_started = Instant::now();
        let start = std::fs::metadata(&acks).map(|m| m.len()).unwrap_or(0);
        let target = 40 + rng.below(400) as usize;
        let mid_compaction = cycle % 2 == 1;
        let stderr = dir.path().join(format!("child-{cycle}.err"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_child"))
            .arg(&data)
            .arg(&acks)
            .arg(cycle.to_string())
            .args([PUTTERS, STREAMERS, INSTANCERS].map(|n| n.to_string()))
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("child stderr file"))
            .spawn()
            .expect("spawn child");
        let mut tail = Tail::from(&acks, start);
        let waited = wait_for_kill_point(&mut child, &mut tail, target, mid_compaction, &stderr);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().expect("wait");
        let killed_at = waited
            .unwrap_or_else(|why| panic!("cycle {cycle} (KUVASTO_CRASH_SEED={seed:#x}): {why}"));
        assert!(!status.success());
        if killed_at.starts_with("a compaction copying") {
            totals.mid_compaction_kills += 1;
        }

        // A line the kill cut short was never acknowledged: cut it off, so that the next
        // cycle's lines start on a line of their own.
        let mut log = std::fs::read_to_string(&acks).expect("read the ack log");
        let complete = log.rfind('\n').map_or(0, |end| end + 1);
        if complete < log.len() {
            log.truncate(complete);
            File::options()
                .write(true)
                .open(&acks)
                .and_then(|f| f.set_len(complete as u64))
                .expect("cut the partial line off");
        }
        // The cycle did what it claims: each kind of operation acknowledged at least once,
        // online compaction finished at least once.
        let mut this_cycle = Seen::default();
        for line in log[start as usize..].lines() {
            this_cycle.add(line);
        }
        assert!(
            this_cycle.every_kind(),
            "cycle {cycle}: the child was killed before it acknowledged every kind of \
             operation: {this_cycle:?}"
        );

        let mut objects: BTreeMap<String, Expect> = BTreeMap::new();
        let mut instances: BTreeMap<String, InstanceExpect> = BTreeMap::new();
        for line in log.lines() {
            if let Some((uid, expect)) = instance_ack(line) {
                instances.insert(uid.to_string(), expect);
                continue;
            }
            match line.split_once(' ') {
                Some(("PUT", key)) => objects.insert(key.to_string(), Expect::Present),
                Some(("DELETING", key)) => objects.insert(key.to_string(), Expect::Either),
                Some(("DEL", key)) => objects.insert(key.to_string(), Expect::Deleted),
                _ => None, // markers
            };
        }

        let store = Store::open(&data, crash_config()).expect("reopen after kill -9");
        let report = store.recovery_report().clone();
        assert!(
            report.corruption.is_empty(),
            "cycle {cycle} (KUVASTO_CRASH_SEED={seed:#x}): {report:?}"
        );
        totals.torn_tails += report.torn_tails.len();
        let finding = |key: &str, expected: &str, found: String| Finding {
            key: key.to_string(),
            expected: expected.to_string(),
            found,
        };
        let read = |key: &str| -> Result<Option<()>, String> {
            let Some(object) = store
                .get(Namespace::OBJECT, key.as_bytes())
                .map_err(|e| format!("get failed: {e}"))?
            else {
                return Ok(None);
            };
            let bytes = object.read_all().map_err(|e| format!("read failed: {e}"))?;
            let want = crash_bytes(key);
            if bytes == want {
                Ok(Some(()))
            } else {
                Err(describe_difference(&bytes, &want))
            }
        };
        let mut findings: Vec<(&str, Finding)> = Vec::new();
        let (mut present, mut deleted, mut unacknowledged) = (0, 0, 0);
        for (key, expected) in &objects {
            let wanted = match expected {
                Expect::Present => "present (acknowledged put)",
                Expect::Deleted => "deleted (acknowledged delete)",
                Expect::Either => "intact if present (delete not acknowledged)",
            };
            match (expected, read(key)) {
                (_, Err(what)) => findings.push(("corrupted", finding(key, wanted, what))),
                (Expect::Present, Ok(Some(()))) => present += 1,
                (Expect::Present, Ok(None)) => {
                    findings.push(("lost", finding(key, wanted, "no object".into())))
                }
                (Expect::Deleted, Ok(None)) => deleted += 1,
                (Expect::Deleted, Ok(Some(()))) => findings.push((
                    "resurrected",
                    finding(key, wanted, "the object, intact".into()),
                )),
                (Expect::Either, Ok(_)) => {}
            }
        }
        // Objects beyond the acknowledged ones (puts whose line the kill prevented).
        for key in store.keys(Namespace::OBJECT) {
            let key = String::from_utf8_lossy(&key).into_owned();
            if is_instance_key(&key) || objects.contains_key(&key) {
                continue;
            }
            match read(&key) {
                Ok(Some(())) => unacknowledged += 1,
                Ok(None) => {}
                Err(what) => findings.push((
                    "corrupted",
                    finding(&key, "intact if present (put not acknowledged)", what),
                )),
            }
        }
        let checked = check_instances(&store, &instances);
        let recovered_segments = store.stats();
        drop(store);
        let count = |kind: &str| findings.iter().filter(|(k, _)| *k == kind).count();
        let (lost, resurrected, corrupted) = (
            count("lost") + checked.lost.len(),
            count("resurrected") + checked.resurrected.len(),
            count("corrupted") + checked.corrupted.len(),
        );
        eprintln!(
            "kill -9 cycle {cycle}: killed at {killed_at} ({} puts, {} streams, {} deletes, \
             {} instance puts, {} instance deletes, {} compactions acknowledged this cycle); \
             {} torn tails; {} segments; objects: {} acknowledged checked ({present} present, \
             {deleted} deleted), {unacknowledged} unacknowledged intact; instances: {} checked \
             ({} present, {} deleted, {} in doubt present, {} in doubt absent), {} listed; \
             lost {lost}, resurrected {resurrected}, corrupted {corrupted}, catalog mismatches \
             {}; {:.1} s",
            this_cycle.puts,
            this_cycle.streams,
            this_cycle.deletes,
            this_cycle.instance_puts,
            this_cycle.instance_deletes,
            this_cycle.compactions,
            report.torn_tails.len(),
            recovered_segments.segments,
            objects.len(),
            checked.checked,
            checked.present_ok,
            checked.deleted_ok,
            checked.in_doubt_present,
            checked.in_doubt_absent,
            checked.listed,
            checked.catalog.len(),
            cycle_started.elapsed().as_secs_f64(),
        );
        totals.objects_checked += objects.len();
        totals.objects_present += present;
        totals.objects_deleted += deleted;
        totals.unacknowledged_intact += unacknowledged;
        totals.instances_checked += checked.checked;
        totals.instances_present += checked.present_ok;
        totals.instances_deleted += checked.deleted_ok;
        totals.instances_in_doubt += checked.in_doubt_present + checked.in_doubt_absent;
        totals.listed += checked.listed;
        totals.lost += lost;
        totals.resurrected += resurrected;
        totals.corrupted += corrupted;
        totals.catalog_mismatches += checked.catalog.len();
        let all: Vec<(&str, &Finding)> = findings
            .iter()
            .map(|(kind, f)| (*kind, f))
            .chain(checked.findings())
            .collect();
        if !all.is_empty() {
            let mut message = format!(
                "cycle {cycle} (KUVASTO_CRASH_SEED={seed:#x}), killed at {killed_at}: {} \
                 broken promises\n",
                all.len()
            );
            for (kind, f) in all.iter().take(40) {
                let _ = writeln!(message, "  {kind}: {f}");
            }
            if all.len() > 40 {
                let _ = writeln!(message, "  ... and {} more", all.len() - 40);
            }
            panic!("{message}");
        }
    }
    eprintln!(
        "kill -9: {cycles} cycles (KUVASTO_CRASH_SEED={seed:#x}) in {:.1} s ({} killed \
         mid-compaction); over all cycles' \
         checks: {} acknowledged objects ({} present, {} deleted), {} unacknowledged intact; \
         {} instances ({} present, {} deleted, {} in doubt), {} catalog rows listed; lost {}, \
         resurrected {}, corrupted {}, catalog mismatches {}; {} torn tails cut",
        run_started.elapsed().as_secs_f64(),
        totals.mid_compaction_kills,
        totals.objects_checked,
        totals.objects_present,
        totals.objects_deleted,
        totals.unacknowledged_intact,
        totals.instances_checked,
        totals.instances_present,
        totals.instances_deleted,
        totals.instances_in_doubt,
        totals.listed,
        totals.lost,
        totals.resurrected,
        totals.corrupted,
        totals.catalog_mismatches,
        totals.torn_tails,
    );
}

/// The instance check is not vacuous: on a live store with known contents, each kind of
/// broken promise is reported as such, and the truth is reported clean.
#[test]
fn the_instance_check_reports_each_broken_promise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), crash_config()).expect("open");
    let uid = |i: u64| format!("1.2.15.8.{i}");
    for i in 0..12 {
        let bytes = kuvasto_tests::workload_instance(&uid(i)).encode();
        kuvasto_tests::put_instance_in_pieces(&store, &bytes, i).expect("put instance");
    }
    for i in [1, 4] {
        store.delete_instance(&uid(i)).expect("delete instance");
    }
    // Half a delete the store was not reopened after: the object's tombstone only.
    store
        .delete(Namespace::OBJECT, uid(7).as_bytes())
        .expect("object tombstone");
    let truth: BTreeMap<String, InstanceExpect> = (0..12)
        .map(|i| {
            let expect = match i {
                1 | 4 => InstanceExpect::Deleted,
                7 => InstanceExpect::InDoubt,
                _ => InstanceExpect::Present,
            };
            (uid(i), expect)
        })
        .collect();
    let mut told = truth.clone();
    told.remove(&uid(7));
    // Half a delete is never whole, whatever the log says.
    let untold = check_instances(&store, &told);
    assert!(
        untold.catalog.iter().any(|f| f.key == uid(7)),
        "{untold:#?}"
    );
    told.insert(uid(7), InstanceExpect::InDoubt);
    told.insert(uid(1), InstanceExpect::Present); // deleted, said present
    told.insert(uid(2), InstanceExpect::Deleted); // present, said deleted
    told.remove(&uid(3)); // present, never said
    let report = check_instances(&store, &told);
    let keys = |findings: &[Finding]| -> Vec<String> {
        let mut keys: Vec<String> = findings.iter().map(|f| f.key.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    };
    assert_eq!(keys(&report.lost), vec![uid(1)], "{report:#?}");
    assert_eq!(keys(&report.resurrected), vec![uid(2)], "{report:#?}");
    assert!(report.corrupted.is_empty(), "{report:#?}");
    // 3 is listed and has an object though never started; 7 has no object but its metadata
    // record and catalog row; their patients' study counts disagree.
    let mut catalog = vec![uid(3), uid(7)];
    catalog.extend([3, 7].map(|i| kuvasto_tests::workload_instance(&uid(i)).patient_id));
    catalog.sort();
    catalog.dedup();
    assert_eq!(keys(&report.catalog), catalog, "{report:#?}");
    assert!(!report.is_clean());
    // The truth, after the delete is finished: clean, with exact counts.
    store.delete_instance(&uid(7)).expect("finish the delete");
    let report = check_instances(&store, &truth);
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(
        (
            report.checked,
            report.present_ok,
            report.deleted_ok,
            report.in_doubt_absent,
            report.listed
        ),
        (12, 9, 2, 1, 9)
    );
}
