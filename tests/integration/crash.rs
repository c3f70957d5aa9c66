//! kill -9: a child process ingests with several writers and is killed at random moments,
//! many times. After each kill every object it had acknowledged (listed in its side file)
//! must read back intact, deletes it had acknowledged must stay deleted, and the store must
//! open without reporting corruption.

use kuvasto_engine::io::sim::DetRng;
use kuvasto_engine::{Namespace, Store};
use kuvasto_tests::{content, crash_config, crash_object};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Present,
    Deleted,
    /// A delete was started but its outcome was not recorded.
    Either,
}

#[test]
fn acknowledged_objects_survive_kill_9() {
    let cycles: u64 = std::env::var("KUVASTO_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let acks = dir.path().join("acks.log");
    let mut rng = DetRng::new(0xDEAD_BEEF);
    let mut total_checked = 0usize;
    let mut torn_tails = 0usize;
    for cycle in 0..cycles {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_child"))
            .arg(&data)
            .arg(&acks)
            .arg(cycle.to_string())
            .arg("6")
            .spawn()
            .expect("spawn child");
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        if let Ok(Some(status)) = child.try_wait() {
            panic!("child exited early: {status}");
        }
        child.kill().expect("kill -9");
        let status = child.wait().expect("wait");
        assert!(!status.success());

        let mut expect: HashMap<String, Expect> = HashMap::new();
        let log = std::fs::read_to_string(&acks).unwrap_or_default();
        for line in log.lines() {
            match line.split_once(' ') {
                Some(("PUT", key)) => {
                    expect.insert(key.to_string(), Expect::Present);
                }
                Some(("DELETING", key)) => {
                    expect.insert(key.to_string(), Expect::Either);
                }
                Some(("DEL", key)) => {
                    expect.insert(key.to_string(), Expect::Deleted);
                }
                _ => {} // a line cut by the kill: its operation was not acknowledged yet
            }
        }
        let store = Store::open(&data, crash_config()).expect("reopen after kill -9");
        let report = store.recovery_report();
        assert!(report.corruption.is_empty(), "cycle {cycle}: {report:?}");
        torn_tails += report.torn_tails.len();
        for (key, expected) in &expect {
            let got = store.get(Namespace::OBJECT, key.as_bytes()).expect("get");
            match (expected, got) {
                (Expect::Present | Expect::Either, Some(object)) => {
                    let (seed, len) = crash_object(key);
                    let bytes = object.read_all().expect("read");
                    assert!(
                        bytes == content(seed, len),
                        "cycle {cycle}: {key} corrupted"
                    );
                }
                (Expect::Present, None) => panic!("cycle {cycle}: acknowledged {key} lost"),
                (Expect::Deleted | Expect::Either, None) => {}
                (Expect::Deleted, Some(_)) => panic!("cycle {cycle}: deleted {key} is back"),
            }
        }
        total_checked += expect.len();
        drop(store);
    }
    assert!(
        total_checked > 100,
        "only {total_checked} objects were acknowledged"
    );
    eprintln!("kill -9: {cycles} cycles, {total_checked} acknowledged objects checked, {torn_tails} torn tails cut");
}
