//! Fault injection on the real disk (io_uring, O_DIRECT): ENOSPC, a failed fsync, short and
//! torn writes. Each gives a clear error, loses nothing acknowledged, and the store reopens
//! cleanly.

use kuvasto_engine::io::fault::{FaultPlan, FaultyStorage};
use kuvasto_engine::io::uring::UringStorage;
use kuvasto_engine::io::Storage;
use kuvasto_engine::{Error, Namespace, Store};
use kuvasto_tests::{content, small_config};
use std::path::Path;
use std::sync::Arc;

const NS: Namespace = Namespace::OBJECT;

fn faulty(dir: &Path, plan: FaultPlan, seed: u64) -> (FaultyStorage, Store) {
    let disk: Arc<dyn Storage> = Arc::new(UringStorage::open(dir, true).expect("storage"));
    let faulty = FaultyStorage::new(disk, plan, seed);
    let store = Store::open_with(Arc::new(faulty.clone()), small_config()).expect("open");
    (faulty, store)
}

/// Puts objects until one fails; returns the acknowledged ones and the first error.
fn put_until_error(store: &Store, count: u64) -> (Vec<u64>, Option<Error>) {
    let mut acked = Vec::new();
    for i in 0..count {
        let len = 1000 + (i as usize * 7919) % 40_000;
        match store.put(NS, format!("k{i}").as_bytes(), &content(i, len)) {
            Ok(_) => acked.push(i),
            Err(e) => return (acked, Some(e)),
        }
    }
    (acked, None)
}

fn assert_all_back(dir: &Path, acked: &[u64]) -> Store {
    let store = Store::open(dir, small_config()).expect("reopen cleanly");
    let report = store.recovery_report();
    assert!(report.corruption.is_empty(), "{report:?}");
    for &i in acked {
        let len = 1000 + (i as usize * 7919) % 40_000;
        let got = store
            .get(NS, format!("k{i}").as_bytes())
            .expect("get")
            .unwrap_or_else(|| panic!("acknowledged k{i} lost"));
        assert_eq!(got.read_all().expect("read"), content(i, len), "k{i}");
    }
    store
        .put(NS, b"after", b"writable again")
        .expect("put after reopen");
    store
}

#[test]
fn enospc_on_write_gives_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = FaultPlan {
        enospc_after_bytes: Some(1_500_000),
        short_write_per_mille: 200,
        ..FaultPlan::default()
    };
    let (faulty, store) = faulty(dir.path(), plan, 11);
    let (acked, error) = put_until_error(&store, 500);
    let error = error.expect("the disk filled up");
    assert!(
        error.to_string().contains("no space left on device"),
        "unclear error: {error}"
    );
    assert!(acked.len() > 10, "only {} acknowledged", acked.len());
    assert!(faulty.injected().iter().any(|f| f.starts_with("ENOSPC")));
    // Poisoned: later writes are refused with the cause; reads still work.
    match store.put(NS, b"later", b"x") {
        Err(Error::Poisoned { cause }) => assert!(cause.contains("no space"), "{cause}"),
        other => panic!("expected Poisoned, got {other:?}"),
    }
    let first = store.get(NS, b"k0").expect("get").expect("present");
    assert_eq!(first.read_all().expect("read"), content(0, 1000));
    drop(first); // it holds segment files open, and through them the directory lock
    drop(store);
    drop(faulty);
    assert_all_back(dir.path(), &acked);
}

#[test]
fn enospc_when_preparing_a_segment_refuses_the_write_without_poisoning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = FaultPlan {
        enospc_on_allocate_from: Some(2),
        ..FaultPlan::default()
    };
    let (faulty, store) = faulty(dir.path(), plan, 12);
    let (acked, error) = put_until_error(&store, 500);
    match error {
        Some(Error::NoSpace {
            op: "fallocate", ..
        }) => {}
        other => panic!("expected NoSpace from fallocate, got {other:?}"),
    }
    assert!(store.poisoned().is_none());
    // Space comes back: the very next put succeeds without a restart.
    faulty.set_plan(FaultPlan::default());
    store
        .put(NS, b"k-after-space", b"ok")
        .expect("put once space is back");
    drop(store);
    drop(faulty);
    let store = assert_all_back(dir.path(), &acked);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    assert!(store.recovery_report().corruption.is_empty(), "{names:?}");
}

#[test]
fn a_failed_fsync_poisons_the_store_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = FaultPlan {
        fail_sync_at: Some(25),
        ..FaultPlan::default()
    };
    let (faulty, store) = faulty(dir.path(), plan, 13);
    let (acked, error) = put_until_error(&store, 500);
    match error {
        Some(Error::Poisoned { cause }) => {
            assert!(cause.contains("fdatasync"), "unclear cause: {cause}")
        }
        other => panic!("expected Poisoned after the failed fsync, got {other:?}"),
    }
    assert!(store.poisoned().is_some());
    assert!(matches!(
        store.delete(NS, b"k0"),
        Err(Error::Poisoned { .. })
    ));
    assert!(faulty
        .injected()
        .iter()
        .any(|f| f.contains("failed with EIO")));
    drop(store);
    drop(faulty);
    assert_all_back(dir.path(), &acked);
}

#[test]
fn a_torn_write_at_a_crash_point_is_cut_on_reopen() {
    for seed in 0..6u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = FaultPlan {
            crash_after_bytes: Some(300_000 + seed * 123_457),
            ..FaultPlan::default()
        };
        let (faulty, store) = faulty(dir.path(), plan, seed);
        let (acked, error) = put_until_error(&store, 500);
        assert!(error.is_some(), "crash point not reached");
        assert!(faulty.is_dead());
        drop(store);
        drop(faulty);
        assert_all_back(dir.path(), &acked);
    }
}
