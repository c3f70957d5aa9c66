//! Put, get, ranges, deletes, streaming, compaction, corruption reports: on the real disk
//! (io_uring, O_DIRECT) and on the simulated one.

use kuvasto_engine::io::sim::SimStorage;
use kuvasto_engine::io::Storage;
use kuvasto_engine::{CompactOptions, Error, Namespace, Store, StoreConfig};
use kuvasto_tests::{content, small_config};
use std::sync::Arc;

const NS: Namespace = Namespace::OBJECT;

/// The bytes stored under `key`, which must be present and readable.
fn read_back(store: &Store, namespace: Namespace, key: &[u8]) -> Vec<u8> {
    store
        .get(namespace, key)
        .expect("get")
        .expect("present")
        .read_all()
        .expect("read")
}

fn sim() -> (SimStorage, Arc<dyn Storage>) {
    let sim = SimStorage::new(4096);
    (sim.clone(), Arc::new(sim))
}

fn exercise_round_trip(open: &dyn Fn() -> Store) {
    let store = open();
    let small = content(1, 1000);
    let big = content(2, 300_000); // ~19 chunks of 16 KiB
    store.put(NS, b"small", &small).expect("put small");
    let mut stream = store.put_stream(NS, b"big").expect("stream");
    for piece in big.chunks(7777) {
        stream.write(piece).expect("write");
    }
    let committed = stream.finish().expect("finish");
    assert_eq!(committed.len, big.len() as u64);
    store.put(NS, b"empty", b"").expect("put empty");
    store
        .put(Namespace::METADATA, b"small", b"other namespace")
        .expect("put metadata");

    let check = |store: &Store| {
        let got = store.get(NS, b"small").expect("get").expect("present");
        assert_eq!(got.read_all().expect("read"), small);
        let got = store.get(NS, b"big").expect("get").expect("present");
        assert_eq!(got.len(), big.len() as u64);
        assert_eq!(got.read_all().expect("read"), big);
        // Ranges inside one chunk, across chunk boundaries, and at the end.
        for (from, to) in [
            (0, 1),
            (16_380, 16_390),
            (5000, 120_000),
            (299_990, 300_000),
        ] {
            assert_eq!(
                got.read_range(from..to).expect("range"),
                &big[from as usize..to as usize]
            );
        }
        assert!(matches!(
            got.read_range(10..300_001),
            Err(Error::InvalidArgument(_))
        ));
        let empty = store.get(NS, b"empty").expect("get").expect("present");
        assert!(empty.is_empty());
        let meta = store
            .get(Namespace::METADATA, b"small")
            .expect("get")
            .expect("present");
        assert_eq!(meta.read_all().expect("read"), b"other namespace");
        assert!(store.get(NS, b"missing").expect("get").is_none());
    };
    check(&store);
    drop(store);
    let store = open();
    check(&store);

    // Overwrite and delete survive a reopen too.
    store.put(NS, b"small", b"replaced").expect("overwrite");
    assert!(store.delete(NS, b"big").expect("delete").is_some());
    assert!(store.delete(NS, b"big").expect("delete again").is_none());
    drop(store);
    let store = open();
    assert_eq!(read_back(&store, NS, b"small"), b"replaced");
    assert!(store.get(NS, b"big").expect("get").is_none());
}

#[test]
fn round_trip_on_real_disk_with_io_uring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    exercise_round_trip(&|| Store::open(&path, small_config()).expect("open"));
}

#[test]
fn round_trip_on_real_disk_buffered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let config = StoreConfig {
        direct_io: false,
        ..small_config()
    };
    exercise_round_trip(&|| Store::open(&path, config.clone()).expect("open"));
}

#[test]
fn round_trip_on_simulated_disk() {
    let (_sim, storage) = sim();
    exercise_round_trip(&|| Store::open_with(storage.clone(), small_config()).expect("open"));
}

#[test]
fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Store::open(dir.path(), small_config()).expect("open");
    match Store::open(dir.path(), small_config()) {
        Err(Error::Locked(_)) => {}
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn an_abandoned_stream_leaves_nothing_visible() {
    let (_sim, storage) = sim();
    let store = Store::open_with(storage.clone(), small_config()).expect("open");
    store.put(NS, b"k", b"old").expect("put");
    let mut stream = store.put_stream(NS, b"k").expect("stream");
    stream.write(&content(3, 100_000)).expect("write");
    drop(stream);
    assert_eq!(read_back(&store, NS, b"k"), b"old");
    drop(store);
    let store = Store::open_with(storage, small_config()).expect("reopen");
    assert_eq!(read_back(&store, NS, b"k"), b"old");
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let (_sim, storage) = sim();
    let store = Store::open_with(storage, small_config()).expect("open");
    let long_key = vec![b'k'; 2000];
    assert!(matches!(
        store.put(NS, &long_key, b"x"),
        Err(Error::Limit {
            what: "key length",
            ..
        })
    ));
    assert!(matches!(
        store.put(Namespace::NONE, b"k", b"x"),
        Err(Error::InvalidArgument(_))
    ));
    let max = small_config().object_bytes_max();
    let mut stream = store.put_stream(NS, b"huge").expect("stream");
    let err = stream
        .write(&vec![0u8; max as usize + 1])
        .expect_err("over the limit");
    assert!(
        matches!(
            err,
            Error::Limit {
                what: "object size",
                ..
            }
        ),
        "{err}"
    );
    let bad = StoreConfig {
        put_buffer_bytes: 1000,
        ..small_config()
    };
    assert!(matches!(
        Store::open_with(Arc::new(SimStorage::new(1)), bad),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn concurrent_writers_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), small_config()).expect("open"));
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let key = format!("w{w}-{i}");
                    store
                        .put(NS, key.as_bytes(), &content(w * 1000 + i, 3000))
                        .expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread");
    }
    let stats = store.engine_stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let syncs = stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(commits, 400);
    assert!(
        syncs < commits,
        "group commit: {syncs} syncs for {commits} commits"
    );
    for w in 0..8u64 {
        for i in 0..50u64 {
            let key = format!("w{w}-{i}");
            let got = store
                .get(NS, key.as_bytes())
                .expect("get")
                .expect("present");
            assert_eq!(got.read_all().expect("read"), content(w * 1000 + i, 3000));
        }
    }
}

#[test]
fn compaction_reclaims_space_while_reads_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), small_config()).expect("open"));
    // Fill several segments, then delete or overwrite most keys.
    for i in 0..200u64 {
        store
            .put(NS, format!("k{i}").as_bytes(), &content(i, 20_000))
            .expect("put");
    }
    // A streamed object whose chunks span segments survives compaction whole.
    let streamed = content(999, 200_000);
    store.put(NS, b"streamed", &streamed).expect("put streamed");
    for i in 0..200u64 {
        if i % 4 != 0 {
            store
                .delete(NS, format!("k{i}").as_bytes())
                .expect("delete");
        }
    }
    let before = store.stats();
    assert!(before.sealed_segments >= 5, "{before:?}");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop, streamed) = (store.clone(), stop.clone(), streamed.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads < 50 {
                for i in (0..200u64).step_by(4) {
                    let got = store
                        .get(NS, format!("k{i}").as_bytes())
                        .expect("get")
                        .expect("kept");
                    assert_eq!(
                        got.read_all().expect("read during compaction"),
                        content(i, 20_000)
                    );
                    reads += 1;
                }
                let got = store.get(NS, b"streamed").expect("get").expect("kept");
                assert_eq!(got.read_all().expect("read"), streamed);
            }
            reads
        })
    };
    let report = store.compact(&CompactOptions::default()).expect("compact");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().expect("reader") >= 50);
    assert!(!report.segments_removed.is_empty(), "{report:?}");
    assert!(report.bytes_after < report.bytes_before, "{report:?}");
    let after = store.stats();
    assert!(
        after.segment_bytes < before.segment_bytes,
        "{before:?} -> {after:?}"
    );
    for name in std::fs::read_dir(dir.path()).expect("ls") {
        let name = name
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf8");
        assert!(!name.ends_with(".tmp"), "temporary file left: {name}");
    }
    drop(store);
    let store = Store::open(dir.path(), small_config()).expect("reopen");
    assert!(store.recovery_report().corruption.is_empty());
    for i in 0..200u64 {
        let got = store.get(NS, format!("k{i}").as_bytes()).expect("get");
        if i % 4 == 0 {
            assert_eq!(
                got.expect("kept").read_all().expect("read"),
                content(i, 20_000)
            );
        } else {
            assert!(got.is_none(), "k{i} deleted before compaction is back");
        }
    }
    assert_eq!(read_back(&store, NS, b"streamed"), streamed);
}

/// `Store::space_report`: live and garbage bytes per segment follow deletes, compaction picks
/// exactly the segments it reports at or above the threshold, and the copies are live.
#[test]
fn space_report_follows_deletes_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_config()).expect("open");
    for i in 0..200u64 {
        store
            .put(NS, format!("k{i}").as_bytes(), &content(i, 20_000))
            .expect("put");
    }
    let full = store.space_report();
    let stats = store.stats();
    assert_eq!(full.segments.len(), stats.segments, "{full:?}");
    assert_eq!(full.file_bytes(), stats.segment_bytes);
    assert!(full.segments.windows(2).all(|w| w[0].id < w[1].id));
    let sealed: Vec<u64> = full
        .segments
        .iter()
        .filter(|s| s.sealed)
        .map(|s| s.id)
        .collect();
    assert!(sealed.len() >= 5, "{full:?}");
    assert!(full.segments.iter().filter(|s| !s.sealed).count() <= 1);
    // Nothing deleted: the records fill the segments but for the directory, the trailer and
    // the padding of each put's page-aligned batch (a 20 kB object takes 24 KiB).
    for s in full.segments.iter().filter(|s| s.sealed) {
        assert!(s.garbage_ratio() < 0.3, "{s:?}");
        assert!(
            s.live_bytes <= s.used_bytes && s.used_bytes < s.file_bytes,
            "{s:?}"
        );
    }
    assert!(full.live_bytes() >= 200 * 20_000, "{full:?}");
    assert!(full.garbage_ratio() < 0.3, "{full:?}");

    for i in (0..200u64).filter(|i| i % 4 != 0) {
        store
            .delete(NS, format!("k{i}").as_bytes())
            .expect("delete");
    }
    let deleted = store.space_report();
    let freed = full.live_bytes() - deleted.live_bytes();
    assert!(freed >= 150 * 19_000, "freed {freed}: {deleted:?}");
    for id in &sealed {
        let s = deleted.segment(*id).expect("still there");
        assert_eq!(s.file_bytes, full.segment(*id).expect("before").file_bytes);
        assert!(s.garbage_ratio() > 0.5, "{s:?}");
    }
    assert!(deleted.garbage_ratio() > 0.5, "{deleted:?}");

    // Compaction picks by the same numbers.
    let picked: Vec<u64> = deleted
        .segments
        .iter()
        .filter(|s| s.sealed && s.garbage_ratio() >= CompactOptions::default().garbage_ratio_min)
        .map(|s| s.id)
        .collect();
    let report = store.compact(&CompactOptions::default()).expect("compact");
    assert_eq!(report.segments_removed, picked);
    let compacted = store.space_report();
    for id in &picked {
        assert!(compacted.segment(*id).is_none(), "segment {id} is gone");
    }
    assert!(!report.segments_written.is_empty());
    // The copies are packed (no batch padding): garbage is their directories and trailers.
    let (mut used, mut live) = (0, 0);
    for id in &report.segments_written {
        let s = compacted.segment(*id).expect("the copy");
        assert!(s.sealed && s.live_bytes > 0, "{s:?}");
        used += s.used_bytes;
        live += s.live_bytes;
    }
    assert!(
        live as f64 / used as f64 > 0.85,
        "{live} of {used} bytes live"
    );
    assert_eq!(
        compacted.live_bytes(),
        deleted.live_bytes(),
        "copies are as live as what they replace"
    );
    assert!(compacted.file_bytes() < deleted.file_bytes());
    assert!(
        compacted.garbage_ratio() < deleted.garbage_ratio() / 2.0,
        "{} -> {}",
        deleted.garbage_ratio(),
        compacted.garbage_ratio()
    );
    drop(store);
    let store = Store::open(dir.path(), small_config()).expect("reopen");
    assert_eq!(store.space_report().live_bytes(), compacted.live_bytes());
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_reported_never_served() {
    let (sim, storage) = sim();
    let store = Store::open_with(storage.clone(), small_config()).expect("open");
    for i in 0..100u64 {
        store
            .put(NS, format!("k{i}").as_bytes(), &content(i, 10_000))
            .expect("put");
    }
    let victim = store.get(NS, b"k3").expect("get").expect("present");
    let part = &victim.parts[0];
    assert!(part.segment.is_sealed());
    let segment_id = part.segment.id;
    let body_at = part.record.body_start;
    drop(victim);
    drop(store);
    let name = format!("seg-{segment_id:016x}.kvs");
    sim.corrupt(&name, body_at + 5000, 0x40).expect("flip");
    let store = Store::open_with(storage, small_config()).expect("reopen");
    match store
        .get(NS, b"k3")
        .expect("get")
        .expect("indexed")
        .read_all()
    {
        Err(Error::Corruption { segment_id: s, .. }) => assert_eq!(s, segment_id),
        other => panic!("corrupt bytes served: {:?}", other.map(|b| b.len())),
    }
    // Its neighbours are unaffected.
    assert_eq!(read_back(&store, NS, b"k4"), content(4, 10_000));
}

#[test]
fn a_damaged_directory_is_reported_and_rebuilt_from_records() {
    let (sim, storage) = sim();
    let store = Store::open_with(storage.clone(), small_config()).expect("open");
    for i in 0..100u64 {
        store
            .put(NS, format!("k{i}").as_bytes(), &content(i, 10_000))
            .expect("put");
    }
    drop(store);
    let first = storage
        .list()
        .expect("list")
        .into_iter()
        .find(|n| n.ends_with(".kvs"))
        .expect("a segment");
    let file = storage.open(&first).expect("open");
    let len = file.len().expect("len");
    let map = file.map().expect("map");
    let directory_offset = u64::from_le_bytes(
        map[(len - 32) as usize..(len - 24) as usize]
            .try_into()
            .expect("8"),
    );
    drop(map);
    drop(file);
    sim.corrupt(&first, directory_offset + 100, 0xff)
        .expect("flip");
    let store = Store::open_with(storage, small_config()).expect("reopen");
    let report = store.recovery_report();
    assert_eq!(report.corruption.len(), 1, "{report:?}");
    assert!(
        report.corruption[0].reason.contains("directory"),
        "{report:?}"
    );
    for i in 0..100u64 {
        let got = store
            .get(NS, format!("k{i}").as_bytes())
            .expect("get")
            .expect("present");
        assert_eq!(got.read_all().expect("read"), content(i, 10_000));
    }
}

#[test]
fn a_segment_file_shorter_than_its_header_is_reported_not_fatal() {
    // Found by the recover_segment fuzzer: 3,380 bytes of garbage as the only segment.
    let (_sim, storage) = sim();
    let file = storage.create("seg-0000000000000001.kvs").expect("create");
    file.write_at(&[0xAB; 4096], 0).expect("write");
    file.set_len(3380).expect("truncate");
    file.sync_data().expect("sync");
    drop(file);
    storage.sync_dir().expect("sync dir");
    let store = Store::open_with(storage.clone(), small_config()).expect("open despite the damage");
    let report = store.recovery_report().clone();
    assert!(
        report
            .corruption
            .iter()
            .any(|c| c.segment_id == 1 && c.offset == 0),
        "{report:?}"
    );
    store.put(NS, b"k", b"still works").expect("put");
    drop(store);
    let store = Store::open_with(storage, small_config()).expect("reopen");
    assert_eq!(read_back(&store, NS, b"k"), b"still works");
}

#[test]
fn a_half_created_segment_is_removed_not_reported() {
    let (_sim, storage) = sim();
    let file = storage.create("seg-0000000000000007.kvs").expect("create");
    file.allocate(64 * 1024).expect("allocate");
    file.sync_data().expect("sync");
    drop(file);
    let store = Store::open_with(storage.clone(), small_config()).expect("open");
    let report = store.recovery_report();
    assert!(report.corruption.is_empty(), "{report:?}");
    assert_eq!(
        report.incomplete_removed,
        vec!["seg-0000000000000007.kvs".to_string()]
    );
    assert!(!storage
        .list()
        .expect("list")
        .contains(&"seg-0000000000000007.kvs".to_string()));
}
