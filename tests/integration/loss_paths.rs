//! The loss paths of issue 15, one regression test each: every test here failed on the engine
//! before its fix.
//!
//! - 1: chunks of a put in flight vs compaction;
//! - 2: plain writes covered by seal and compaction in every I/O mode (the simulated disk
//!   models `RWF_DSYNC` as durable for its own range only);
//! - 3: a metadata record built from the object version it names;
//! - 4: damage in an unsealed segment that is not a torn tail;
//! - 5: the catalog rebuilt after a compaction;
//! - 6: a damaged record in a sealed segment;
//! - 7: half a delete;
//! - 9: segment ids never reused (the io_uring completion tags are unit tests in the engine).

use kuvasto_engine::index::attrs::{tags, Level};
use kuvasto_engine::index::catalog::{Hits, Query};
use kuvasto_engine::index::matching::{MatchOptions, MatchVr, Matcher};
use kuvasto_engine::io::sim::SimStorage;
use kuvasto_engine::io::Storage;
use kuvasto_engine::{CompactOptions, Namespace, Store, StoreConfig};
use kuvasto_tests::{content, small_config, CtInstance};
use std::path::Path;
use std::sync::Arc;

const NS: Namespace = Namespace::OBJECT;

fn put_instance(store: &Store, bytes: &[u8]) -> kuvasto_engine::instances::InstanceStored {
    let mut put = store.put_instance();
    for piece in bytes.chunks(64 << 10) {
        put.write(piece).expect("write instance");
    }
    put.finish().expect("finish instance")
}

/// The SOP Instance UIDs the catalog lists for the test patient, with their patient names.
fn listed(store: &Store) -> Vec<(String, String)> {
    let query = Query {
        level: Level::Instance,
        filters: vec![(
            tags::PATIENT_ID,
            Matcher::parse(MatchVr::Text, "LOSS", MatchOptions::default()).expect("matcher"),
        )],
        offset: 0,
        limit: None,
    };
    let Hits::Instances(hits) = store.query(&query).expect("query") else {
        panic!("instance level answers instances")
    };
    let mut out: Vec<_> = hits
        .into_iter()
        .map(|h| (h.attrs.sop_instance_uid, h.attrs.patient_name))
        .collect();
    out.sort();
    out
}

/// Small segments (as `small_config`) on the real disk, with or without `O_DIRECT`.
fn small(direct_io: bool) -> StoreConfig {
    StoreConfig {
        direct_io,
        ..small_config()
    }
}

fn sealed_segment_ids(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .expect("list data directory")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let hex = name.strip_prefix("seg-")?.strip_suffix(".kvs")?;
            u64::from_str_radix(hex, 16).ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Item 1: a put's chunks have no index entry until its manifest is published; compaction
/// must not take their sealed segment for garbage.
#[test]
fn compaction_keeps_the_segments_of_a_put_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small(true)).expect("open");
    // The stream's first chunks go into segment 1, which the filler then seals.
    let streamed = content(1, 100_000);
    let mut stream = store.put_stream(NS, b"in-flight").expect("stream");
    stream.write(&streamed[..60_000]).expect("write");
    for i in 0..40u64 {
        store
            .put(
                NS,
                format!("filler-{i}").as_bytes(),
                &content(100 + i, 15_000),
            )
            .expect("filler");
    }
    let before = sealed_segment_ids(dir.path());
    assert!(before.len() >= 2, "segment 1 was sealed: {before:?}");
    // Every sealed segment qualifies (a ratio of 0), the stream's included.
    let report = store
        .compact(&CompactOptions {
            garbage_ratio_min: 0.0,
            ..CompactOptions::default()
        })
        .expect("compact");
    assert_eq!(report.segments_in_use, vec![1], "{report:?}");
    assert!(!report.segments_removed.contains(&1), "{report:?}");
    stream.write(&streamed[60_000..]).expect("write rest");
    stream.finish().expect("finish");
    let object = store.get(NS, b"in-flight").expect("get").expect("present");
    assert_eq!(object.read_all().expect("read"), streamed);
    // Once committed, the chunks are live through the manifest: a later compaction may move
    // them, and they still read back.
    store
        .compact(&CompactOptions {
            garbage_ratio_min: 0.0,
            ..CompactOptions::default()
        })
        .expect("compact again");
    drop(store);
    let store = Store::open(dir.path(), small(true)).expect("reopen");
    let object = store.get(NS, b"in-flight").expect("get").expect("present");
    assert_eq!(object.read_all().expect("read"), streamed);
}

/// The simulated disk without `O_DIRECT` alignment, as `direct_io = false` writes.
fn sim_store(sim: &SimStorage) -> Store {
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    Store::open_with(storage, small(false)).expect("open on the simulated disk")
}

/// Item 2, sealing: a stream's chunks written plainly to a segment that is then sealed must be
/// durable when its manifest (in the next segment) is acknowledged.
#[test]
fn a_sealed_segment_is_durable_whole_not_only_its_footer() {
    for seed in 0..12u64 {
        let sim = SimStorage::new(1);
        let store = sim_store(&sim);
        // One stream fills segment 1 with chunks and ends in segment 2.
        let big = content(seed, 700_000);
        let mut stream = store.put_stream(NS, b"big").expect("stream");
        stream.write(&big).expect("write");
        stream.finish().expect("finish");
        sim.crash(seed);
        drop(store);
        let store = sim_store(&sim);
        let object = store.get(NS, b"big").expect("get").expect("acknowledged");
        assert_eq!(object.read_all().expect("read"), big, "seed {seed}");
    }
}

/// Item 2, compaction: its copies must be durable before the originals are unlinked.
#[test]
fn compaction_output_is_durable_before_the_originals_go() {
    for seed in 0..12u64 {
        let sim = SimStorage::new(1);
        let store = sim_store(&sim);
        let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
        for (i, key) in keys.iter().enumerate() {
            store
                .put(NS, key.as_bytes(), &content(i as u64, 12_000))
                .expect("put");
        }
        for key in keys.iter().step_by(2) {
            store.delete(NS, key.as_bytes()).expect("delete");
        }
        let report = store
            .compact(&CompactOptions {
                garbage_ratio_min: 0.0,
                ..CompactOptions::default()
            })
            .expect("compact");
        assert!(!report.segments_removed.is_empty(), "{report:?}");
        sim.crash(seed);
        drop(store);
        let store = sim_store(&sim);
        for (i, key) in keys.iter().enumerate() {
            let got = store.get(NS, key.as_bytes()).expect("get");
            if i % 2 == 0 {
                assert!(got.is_none(), "seed {seed}: deleted {key} is back");
            } else {
                let got = got.unwrap_or_else(|| panic!("seed {seed}: {key} lost"));
                assert_eq!(got.read_all().expect("read"), content(i as u64, 12_000));
            }
        }
    }
}

/// Item 3: the metadata record of a replaced instance whose header lies beyond the bytes a put
/// keeps (1 MiB) is built from the new version's bytes, not the previous version's.
#[test]
fn a_replaced_instance_gets_the_metadata_of_its_new_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let sop = "1.2.15.3.1";
    for round in 0..6 {
        let name = if round % 2 == 0 { "First^A" } else { "Other^B" };
        let name = format!("{name}{round}");
        let bytes = CtInstance::new(sop, "LOSS", &name, "1.2.15.1", "1.2.15.1.1")
            .with_private_bytes(1_500_000)
            .encode();
        let stored = put_instance(&store, &bytes);
        let metadata = store
            .instance_metadata(sop)
            .expect("metadata")
            .expect("current metadata");
        assert_eq!(metadata.object_seq, stored.committed.seq);
        let has = |s: &str| metadata.header.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(
            has(&name),
            "round {round}: the header holds the new name {name}"
        );
    }
}

/// Item 5: after a compaction that copied an instance's metadata while it was deleted (or
/// replaced), rebuilding the catalog from the segments must not bring the old version back.
#[test]
fn a_rebuilt_catalog_does_not_resurrect_what_compaction_copied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = crate::instances::small_segments();
    let store = Store::open(dir.path(), config.clone()).expect("open");
    put_instance(
        &store,
        &CtInstance::new("1.2.15.5.1", "LOSS", "Deleted^XY", "1.2.15.1", "1.2.15.1.1")
            .with_private_bytes(16)
            .encode(),
    );
    put_instance(
        &store,
        &CtInstance::new("1.2.15.5.2", "LOSS", "Before^X", "1.2.15.1", "1.2.15.1.1")
            .with_private_bytes(16)
            .encode(),
    );
    for i in 0..30u64 {
        store
            .put(NS, format!("filler-{i}").as_bytes(), &content(i, 12_000))
            .expect("filler");
    }
    // While compaction copies, one instance is deleted and the other replaced: the copies of
    // their old versions land in a segment newer than the delete and the new version.
    let during = |p: kuvasto_engine::CompactProgress| {
        if p.objects_done == 0 {
            store.delete_instance("1.2.15.5.1").expect("delete");
            put_instance(
                &store,
                &CtInstance::new("1.2.15.5.2", "LOSS", "After^XX", "1.2.15.1", "1.2.15.1.1")
                    .with_private_bytes(16)
                    .encode(),
            );
        }
    };
    store
        .compact_with_progress(
            &CompactOptions {
                garbage_ratio_min: 0.0,
                ..CompactOptions::default()
            },
            &during,
        )
        .expect("compact");
    // Seal the segment holding the delete and the new version.
    for i in 0..30u64 {
        store
            .put(NS, format!("more-{i}").as_bytes(), &content(i, 12_000))
            .expect("more");
    }
    let expected = vec![("1.2.15.5.2".to_string(), "After^XX".to_string())];
    assert_eq!(listed(&store), expected);
    drop(store);
    std::fs::remove_dir_all(dir.path().join("index")).expect("lose the index");
    let store = Store::open(dir.path(), config).expect("reopen");
    assert_eq!(listed(&store), expected);
}

/// Item 6: a damaged metadata record in a sealed segment no run covers must not stop the
/// store from opening; everything else is served and the damage reported.
#[test]
fn a_damaged_metadata_record_does_not_block_opening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = crate::instances::small_segments();
    let store = Store::open(dir.path(), config.clone()).expect("open");
    let sops: Vec<String> = (0..4).map(|i| format!("1.2.15.6.{i}")).collect();
    for sop in &sops {
        put_instance(
            &store,
            &CtInstance::new(sop, "LOSS", "Damage^Tests", "1.2.15.1", "1.2.15.1.1")
                .with_private_bytes(16)
                .encode(),
        );
    }
    let damaged = store
        .get(Namespace::METADATA, sops[1].as_bytes())
        .expect("get")
        .expect("metadata");
    let (segment, offset) = (damaged.segment_id, damaged.offset);
    drop(damaged);
    for i in 0..30u64 {
        store
            .put(NS, format!("filler-{i}").as_bytes(), &content(i, 12_000))
            .expect("filler");
    }
    drop(store);
    // Flip a byte in the record's body; lose the runs so the segment is indexed at open.
    let path = dir.path().join(format!("seg-{segment:016x}.kvs"));
    let mut bytes = std::fs::read(&path).expect("read segment");
    bytes[offset as usize + 100] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write segment");
    std::fs::remove_dir_all(dir.path().join("index")).expect("lose the index");
    let store = Store::open(dir.path(), config).expect("opens despite the damage");
    let unreadable = store.unreadable_at_open();
    assert_eq!(unreadable.len(), 1, "{unreadable:?}");
    assert_eq!(
        (unreadable[0].segment_id, unreadable[0].offset),
        (segment, offset)
    );
    let expect: Vec<(String, String)> = [&sops[0], &sops[2], &sops[3]]
        .iter()
        .map(|s| (s.to_string(), "Damage^Tests".to_string()))
        .collect();
    assert_eq!(listed(&store), expect);
    let report = store.verify(&mut |_| {}).expect("verify");
    assert!(
        report
            .segment_damage
            .iter()
            .any(|d| d.segment_id == segment),
        "verify names the damage: {report:?}"
    );
}

/// Item 7: a crash between the two tombstones of a delete leaves the object deleted and its
/// metadata (so its catalog row) live; opening, or a retry, finishes the delete.
#[test]
fn half_a_delete_is_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    put_instance(
        &store,
        &CtInstance::new("1.2.15.7.1", "LOSS", "Half^Del", "1.2.15.1", "1.2.15.1.1")
            .with_private_bytes(16)
            .encode(),
    );
    put_instance(
        &store,
        &CtInstance::new("1.2.15.7.2", "LOSS", "Half^Del", "1.2.15.1", "1.2.15.1.1")
            .with_private_bytes(16)
            .encode(),
    );
    // What the crash leaves: the object's tombstone only.
    store.delete(NS, b"1.2.15.7.1").expect("object tombstone");
    store.delete(NS, b"1.2.15.7.2").expect("object tombstone");
    // A retry cleans up.
    assert!(store
        .delete_instance("1.2.15.7.2")
        .expect("retry")
        .is_some());
    assert_eq!(
        listed(&store),
        vec![("1.2.15.7.1".to_string(), "Half^Del".to_string())]
    );
    drop(store);
    // Opening finishes the other one.
    let store = Store::open(dir.path(), StoreConfig::default()).expect("reopen");
    assert_eq!(listed(&store), Vec::<(String, String)>::new());
    assert!(store
        .get(Namespace::METADATA, b"1.2.15.7.1")
        .expect("get")
        .is_none());
}

/// Item 4: one flipped byte in the unsealed segment, far more acknowledged bytes after it than
/// the writer can have in flight: corruption (reported, the damaged record set aside, every
/// other record kept), not a torn tail that cuts acknowledged objects away.
#[test]
fn damage_before_acknowledged_records_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        segment_size_bytes_max: 256 << 20,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), config.clone()).expect("open");
    let object_bytes = 500_000;
    let mut places = Vec::new();
    for i in 0..200u64 {
        let c = store
            .put(NS, format!("ct-{i}").as_bytes(), &content(i, object_bytes))
            .expect("put");
        places.push(c);
    }
    // Deletes after the damage must stay deleted too.
    for i in 190..200u64 {
        store
            .delete(NS, format!("ct-{i}").as_bytes())
            .expect("delete");
    }
    let window = config.torn_window_bytes();
    // The figure docs/format.md gives for the defaults.
    assert_eq!(StoreConfig::default().torn_window_bytes(), 58_757_888);
    drop(store);
    assert!(
        places.iter().all(|c| c.segment_id == 1),
        "all in the active segment"
    );
    // A byte in the body of the record at about 20 MB.
    let victim = places
        .iter()
        .position(|c| c.offset > 20 << 20)
        .expect("a record past 20 MB");
    let at = places[victim].offset + 1000;
    assert!(
        places[199].offset > at + window,
        "records beyond the window"
    );
    let path = dir.path().join("seg-0000000000000001.kvs");
    let mut bytes = std::fs::read(&path).expect("read segment");
    bytes[at as usize] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write segment");

    let store = Store::open(dir.path(), config).expect("reopen");
    let report = store.recovery_report();
    assert_eq!(report.torn_tails, vec![], "{report:?}");
    assert_eq!(report.corruption.len(), 1, "{report:?}");
    assert_eq!(report.corruption[0].offset, places[victim].offset);
    for i in 0..200u64 {
        let got = store.get(NS, format!("ct-{i}").as_bytes()).expect("get");
        match i {
            190..=199 => assert!(got.is_none(), "ct-{i} was deleted"),
            _ if i as usize == victim => assert!(got.is_none(), "the damaged record is not served"),
            _ => {
                let got = got.unwrap_or_else(|| panic!("acknowledged ct-{i} lost"));
                assert_eq!(got.read_all().expect("read"), content(i, object_bytes));
            }
        }
    }
}

/// Item 9: a segment id is never handed out twice, even when the newest segment file was
/// removed by compaction (with nothing to copy) before a restart.
#[test]
fn segment_ids_are_never_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small(true)).expect("open");
    let fill = |store: &Store, tag: &str| {
        for i in 0..40u64 {
            store
                .put(NS, format!("{tag}-{i}").as_bytes(), &content(i, 15_000))
                .expect("fill");
        }
    };
    store.put(NS, b"a", &content(1, 4000)).expect("put a");
    fill(&store, "one"); // seals segment 1
    let all = CompactOptions {
        garbage_ratio_min: 0.0,
        ..CompactOptions::default()
    };
    let first = store
        .compact(&CompactOptions {
            segments: Some(vec![1]),
            ..all.clone()
        })
        .expect("compact segment 1");
    let copy = *first.segments_written.last().expect("a copy was written");
    // Everything in the copy is overwritten: compacting it writes nothing and removes the
    // newest segment file.
    store.put(NS, b"a", &content(2, 4000)).expect("overwrite a");
    for i in 0..40u64 {
        store
            .delete(NS, format!("one-{i}").as_bytes())
            .expect("delete");
    }
    let copies: Vec<u64> = first.segments_written.clone();
    drop(store);
    let store = Store::open(dir.path(), small(true)).expect("reopen");
    let second = store
        .compact(&CompactOptions {
            segments: Some(copies.clone()),
            ..all
        })
        .expect("compact the copies");
    assert!(second.segments_removed.contains(&copy), "{second:?}");
    let highest_used = second
        .segments_written
        .iter()
        .chain(&copies)
        .copied()
        .max()
        .unwrap_or(copy);
    drop(store);
    let store = Store::open(dir.path(), small(true)).expect("reopen again");
    fill(&store, "two"); // new segments
    let ids = sealed_segment_ids(dir.path());
    let new: Vec<u64> = ids.into_iter().filter(|id| *id > 2).collect();
    assert!(
        new.iter()
            .all(|id| *id > highest_used || second.segments_written.contains(id)),
        "ids {new:?} reuse one up to {highest_used}"
    );
}

/// Item 8: a page of a sealed segment the device cannot deliver (here: the file cut short
/// under the store's mapping, which faults like a media error) is an error for the read that
/// met it and a finding of `verify`, not a SIGBUS that kills the process.
#[test]
fn a_media_error_under_a_mapping_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small(true)).expect("open");
    for i in 0..40u64 {
        store
            .put(NS, format!("m-{i}").as_bytes(), &content(i, 15_000))
            .expect("put");
    }
    let victim = store.get(NS, b"m-30").expect("get").expect("present");
    let (segment, offset) = (victim.segment_id, victim.offset);
    drop(victim);
    let first = store.get(NS, b"m-0").expect("get").expect("present");
    assert_eq!(first.segment_id, 1);
    drop(first);
    // Segment 1 is sealed and mapped; cut its file short from outside, below m-30's record.
    let path = dir.path().join(format!("seg-{segment:016x}.kvs"));
    assert_eq!(segment, 1, "m-30 is in the first (sealed) segment");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open segment")
        .set_len(offset / 4096 * 4096)
        .expect("cut");
    let read = store
        .get(NS, b"m-30")
        .and_then(|o| o.expect("still indexed").read_all());
    match read {
        Err(kuvasto_engine::Error::Corruption { reason, .. }) => {
            assert!(reason.contains("media error"), "{reason}")
        }
        other => panic!("a media error was expected, got {other:?}"),
    }
    // Objects before the cut still read back.
    let early = store.get(NS, b"m-0").expect("get").expect("present");
    assert_eq!(early.read_all().expect("read"), content(0, 15_000));
    let report = store.verify(&mut |_| {}).expect("verify");
    assert!(
        report
            .segment_damage
            .iter()
            .any(|d| d.segment_id == 1 && d.what.contains("media error")),
        "{:?}",
        report.segment_damage
    );
}

/// Item 9: a store poisoned while a compaction copies (a failed fsync of the writer) is in an
/// unknown state: the compaction switches nothing and removes no original.
#[test]
fn compaction_stops_on_a_store_poisoned_meanwhile() {
    use kuvasto_engine::io::fault::{FaultPlan, FaultyStorage};
    let sim = SimStorage::new(4096);
    let faulty = FaultyStorage::new(Arc::new(sim.clone()), FaultPlan::default(), 1);
    let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
    let store = Store::open_with(storage, small_config()).expect("open");
    for i in 0..60u64 {
        store
            .put(NS, format!("k{i}").as_bytes(), &content(i, 12_000))
            .expect("put");
    }
    for i in (0..60u64).step_by(2) {
        store
            .delete(NS, format!("k{i}").as_bytes())
            .expect("delete");
    }
    let segments_before = sim.list().expect("list");
    let during = |p: kuvasto_engine::CompactProgress| {
        if p.objects_done == 0 {
            faulty.fail_next_sync();
            assert!(
                store.put(NS, b"poisoner", b"x").is_err(),
                "the fsync failed"
            );
            assert!(store.poisoned().is_some());
        }
    };
    let result = store.compact_with_progress(
        &CompactOptions {
            garbage_ratio_min: 0.0,
            ..CompactOptions::default()
        },
        &during,
    );
    assert!(
        matches!(result, Err(kuvasto_engine::Error::Poisoned { .. })),
        "{result:?}"
    );
    let segments_after = sim.list().expect("list");
    for name in segments_before.iter().filter(|n| n.ends_with(".kvs")) {
        assert!(segments_after.contains(name), "{name} was removed");
    }
    // Everything acknowledged still reads.
    for i in (1..60u64).step_by(2) {
        let got = store
            .get(NS, format!("k{i}").as_bytes())
            .expect("get")
            .expect("present");
        assert_eq!(got.read_all().expect("read"), content(i, 12_000));
    }
}
