//! `Store::verify`, the scrub behind `kuvasto verify`: a clean store verifies clean; a flipped
//! byte in a sealed record's body or header, in an index run, or in the unsealed segment's
//! tail is reported with its place and the keys it affects, while everything else still
//! verifies; a cut-off trailer is reported; damaged index runs are repaired from the segments.

use kuvasto_engine::dicom::explicit_le::encode_element as el;
use kuvasto_engine::dicom::meta::encode_file_meta;
use kuvasto_engine::dicom::Tag;
use kuvasto_engine::index::attrs::{tags, Level};
use kuvasto_engine::index::catalog::{Hits, Query};
use kuvasto_engine::verify::{AffectedKey, SegmentDamage};
use kuvasto_engine::{Namespace, Store, VerifyProgress, VerifyReport};
use kuvasto_tests::{content, small_config};
use std::os::unix::fs::FileExt;
use std::path::Path;

const NS: Namespace = Namespace::OBJECT;

fn verify(store: &Store) -> (VerifyReport, Vec<VerifyProgress>) {
    let mut seen = Vec::new();
    let report = store.verify(&mut |p| seen.push(p)).expect("verify");
    (report, seen)
}

/// Objects k0..k{n}: small blobs, and every tenth one streamed (a manifest and chunks).
fn fill(store: &Store, n: u64) {
    for i in 0..n {
        store
            .put(NS, format!("k{i}").as_bytes(), &content(i, object_len(i)))
            .expect("put");
    }
}

fn object_len(i: u64) -> usize {
    if i.is_multiple_of(10) {
        50_000
    } else {
        3_000 + (i as usize % 7) * 1000
    }
}

fn segment_path(dir: &Path, id: u64) -> std::path::PathBuf {
    dir.join(format!("seg-{id:016x}.kvs"))
}

fn flip(path: &Path, offset: u64, xor: u8) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for flipping");
    let mut b = [0u8];
    file.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= xor;
    file.write_all_at(&b, offset).expect("write byte");
    file.sync_all().expect("sync");
}

fn names(damage: &SegmentDamage) -> Vec<String> {
    damage.keys.iter().map(AffectedKey::key_text).collect()
}

/// Where the (blob or manifest) record of `key` is: (segment, record offset, body start,
/// sealed).
fn place(store: &Store, key: &str) -> (u64, u64, u64, bool) {
    let object = store
        .get(NS, key.as_bytes())
        .expect("get")
        .expect("present");
    let part = &object.parts[0];
    (
        object.segment_id,
        object.offset,
        part.record.body_start,
        part.segment.is_sealed(),
    )
}

fn all_readable_except(store: &Store, n: u64, broken: &[u64]) {
    for i in 0..n {
        let got = store
            .get(NS, format!("k{i}").as_bytes())
            .and_then(|o| o.expect("present").read_all());
        if broken.contains(&i) {
            assert!(got.is_err(), "k{i} is damaged and must not be served");
        } else {
            assert_eq!(got.expect("read"), content(i, object_len(i)), "k{i}");
        }
    }
}

#[test]
fn a_clean_store_verifies_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_config()).expect("open");
    fill(&store, 300);
    store.delete(NS, b"k5").expect("delete");
    store.put(NS, b"k6", b"replaced").expect("replace");
    let stats = store.stats();
    assert!(stats.sealed_segments >= 2, "{stats:?}");
    assert!(stats.segments > stats.sealed_segments, "one is unsealed");
    let (report, progress) = verify(&store);
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.segments_checked, stats.segments);
    assert_eq!(report.sealed_segments_checked, stats.sealed_segments);
    assert!(report.records_checked > 300, "{report:?}");
    assert!(report.segment_bytes_checked > 300 * 3000);
    let last = progress.last().expect("progress reported");
    assert_eq!(last.bytes_done, last.bytes_total);
    assert_eq!(last.segments_done, stats.segments);
    assert!(progress
        .windows(2)
        .all(|w| w[0].bytes_done <= w[1].bytes_done));
    store.close();
    // Again after reopening (the unsealed segment continues after a padding record).
    let store = Store::open(dir.path(), small_config()).expect("reopen");
    let (report, _) = verify(&store);
    assert!(report.is_clean(), "{report:#?}");
}

#[test]
fn a_flipped_body_byte_names_its_key_and_offset_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_config()).expect("open");
    fill(&store, 200);
    let (segment, record, body, sealed) = place(&store, "k3");
    assert!(sealed);
    // A chunk of a streamed object, too.
    let streamed = store.get(NS, b"k20").expect("get").expect("present");
    assert!(streamed.parts.len() > 1, "k20 is streamed in chunks");
    let chunk = &streamed.parts[1];
    assert!(chunk.segment.is_sealed());
    let (chunk_segment, chunk_record, chunk_body) = (
        chunk.segment.id,
        chunk.record.header.offset,
        chunk.record.body_start,
    );
    drop(streamed);
    store.close();
    flip(&segment_path(dir.path(), segment), body + 1000, 0x40);
    flip(
        &segment_path(dir.path(), chunk_segment),
        chunk_body + 7,
        0x01,
    );

    let store = Store::open(dir.path(), small_config()).expect("reopen");
    let (report, _) = verify(&store);
    assert_eq!(report.segment_damage.len(), 2, "{report:#?}");
    assert!(!report.segments_clean());
    let blob = report
        .segment_damage
        .iter()
        .find(|d| d.segment_id == segment && d.record_offset == Some(record))
        .expect("the blob's damage");
    assert_eq!(blob.what, "body block 0 checksum");
    assert_eq!(blob.offset, body, "block 0 starts at the body");
    assert_eq!(blob.file, format!("seg-{segment:016x}.kvs"));
    assert_eq!(names(blob), vec!["k3".to_string()]);
    assert_eq!(blob.keys[0].namespace, NS);
    assert_eq!(blob.keys[0].current, Some(true));
    let piece = report
        .segment_damage
        .iter()
        .find(|d| d.segment_id == chunk_segment && d.record_offset == Some(chunk_record))
        .expect("the chunk's damage");
    assert_eq!(piece.what, "body block 0 checksum");
    assert_eq!(names(piece), vec!["k20".to_string()]);
    assert_eq!(piece.keys[0].current, Some(true));
    all_readable_except(&store, 200, &[3, 20]);
}

#[test]
fn a_flipped_header_byte_is_reported_and_its_neighbours_still_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_config()).expect("open");
    fill(&store, 200);
    let (segment, record, _, sealed) = place(&store, "k7");
    assert!(sealed);
    let clean = verify(&store).0;
    assert!(clean.is_clean(), "{clean:#?}");
    store.close();
    // The seq field: the header checksum fails; the directory still names the key.
    flip(&segment_path(dir.path(), segment), record + 33, 0x10);

    let store = Store::open(dir.path(), small_config()).expect("reopen");
    let (report, _) = verify(&store);
    assert_eq!(report.segment_damage.len(), 1, "{report:#?}");
    let d = &report.segment_damage[0];
    assert_eq!((d.segment_id, d.offset), (segment, record));
    assert_eq!(d.what, "record header checksum");
    assert_eq!(names(d), vec!["k7".to_string()]);
    // Only that record was lost to the scan: the next one was found right after it.
    assert_eq!(report.records_checked, clean.records_checked - 1);
    all_readable_except(&store, 200, &[7]);
}

#[test]
fn a_damaged_record_at_the_tail_of_the_unsealed_segment_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_config()).expect("open");
    fill(&store, 120);
    let (segment, record, body, sealed) = place(&store, "k119");
    assert!(!sealed, "the newest object is in the unsealed segment");
    // The store is running: the damage appears under it (a bad sector, a stray write).
    flip(&segment_path(dir.path(), segment), body + 100, 0x08);
    let (report, _) = verify(&store);
    assert_eq!(report.segment_damage.len(), 1, "{report:#?}");
    let d = &report.segment_damage[0];
    assert_eq!((d.segment_id, d.record_offset), (segment, Some(record)));
    assert_eq!(d.what, "body block 0 checksum");
    assert_eq!(names(d), vec!["k119".to_string()]);
    // Its header too: the locator names the key.
    flip(&segment_path(dir.path(), segment), record + 36, 0x01);
    let (report, _) = verify(&store);
    assert_eq!(report.segment_damage.len(), 1, "{report:#?}");
    let d = &report.segment_damage[0];
    assert_eq!(d.what, "record header checksum");
    assert_eq!(names(d), vec!["k119".to_string()]);
    // Writes go on, and are verified up to their durable end.
    store.put(NS, b"after", b"more").expect("put");
    let (report, _) = verify(&store);
    assert_eq!(report.segment_damage.len(), 1, "{report:#?}");
}

#[test]
fn a_cut_off_trailer_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_config()).expect("open");
    fill(&store, 200);
    let (segment, _, _, sealed) = place(&store, "k1");
    assert!(sealed);
    store.close();
    let path = segment_path(dir.path(), segment);
    let len = std::fs::metadata(&path).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_len(len - 10).expect("truncate");
    drop(file);

    let store = Store::open(dir.path(), small_config()).expect("reopen");
    let (report, _) = verify(&store);
    assert!(report.segment_damage.is_empty(), "{report:#?}");
    assert!(!report.is_clean());
    assert_eq!(report.found_at_open.len(), 1, "{report:#?}");
    let found = &report.found_at_open[0];
    assert_eq!(found.segment_id, segment);
    assert!(found.reason.contains("trailer"), "{found}");
    all_readable_except(&store, 200, &[]);
}

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

/// A small CT instance in Explicit VR LE.
fn ct(study: &str, sop: &str) -> Vec<u8> {
    let ui = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        v
    };
    let pixels: Vec<u8> = (0..16 * 16 * 2).map(|i| (i % 251) as u8).collect();
    let data_set = [
        el(tags::SOP_CLASS_UID, b"UI", &ui(CT)),
        el(tags::SOP_INSTANCE_UID, b"UI", &ui(sop)),
        el(tags::STUDY_DATE, b"DA", b"20250101"),
        el(tags::MODALITY, b"CS", b"CT"),
        el(tags::PATIENT_ID, b"LO", b"PAT1"),
        el(tags::STUDY_INSTANCE_UID, b"UI", &ui(study)),
        el(tags::SERIES_INSTANCE_UID, b"UI", &ui(&format!("{study}.1"))),
        el(tags::SAMPLES_PER_PIXEL, b"US", &1u16.to_le_bytes()),
        el(tags::ROWS, b"US", &16u16.to_le_bytes()),
        el(tags::COLUMNS, b"US", &16u16.to_le_bytes()),
        el(tags::BITS_ALLOCATED, b"US", &16u16.to_le_bytes()),
        el(Tag::PIXEL_DATA, b"OW", &pixels),
    ]
    .concat();
    [encode_file_meta(CT, sop, "1.2.840.10008.1.2.1"), data_set].concat()
}

fn instance_count(store: &Store) -> usize {
    let everything = Query {
        level: Level::Instance,
        filters: vec![],
        offset: 0,
        limit: None,
    };
    match store.query(&everything).expect("query") {
        Hits::Instances(all) => all.len(),
        _ => panic!("instance level answers instances"),
    }
}

const INSTANCES: usize = 300;

#[test]
fn a_flipped_byte_in_an_index_run_is_reported_and_repaired_from_the_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), crate::instances::small_segments()).expect("open");
    for i in 0..INSTANCES {
        let mut put = store.put_instance();
        put.write(&ct("1.2.9.1", &format!("1.2.9.1.1.{i}")))
            .expect("write");
        put.finish().expect("put instance");
    }
    for _ in 0..500 {
        if !store.catalog().expect("catalog").runs().is_empty()
            && store.catalog().expect("catalog").mem_len() < 50
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (report, _) = verify(&store);
    assert!(report.is_clean(), "{report:#?}");
    assert!(report.runs_checked > 0);
    store.close();

    // A data block of the largest run, one that opening does not read (it checks the header
    // and the block table, and reads the removals and the covered segments).
    let mut runs: Vec<_> = std::fs::read_dir(dir.path().join("index"))
        .expect("index dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "kvi"))
        .collect();
    runs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let run = runs.pop().expect("a run");
    let bytes = std::fs::read(&run).expect("read run");
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let block_of = |offset: u64| (offset - 512) / 4096;
    let (instances_at, removed_at, segments_at) = (word(128), word(256), word(272));
    let at = instances_at + 5;
    let block = block_of(at);
    assert!(
        block < block_of(removed_at) && block < block_of(segments_at),
        "the run is too small for this test"
    );
    flip(&run, at, 0x5A);

    let store = Store::open(dir.path(), crate::instances::small_segments()).expect("reopen");
    let (report, _) = verify(&store);
    assert!(report.segments_clean(), "{report:#?}");
    assert!(!report.runs_clean());
    assert_eq!(report.damaged_runs, vec![run.display().to_string()]);
    assert_eq!(report.run_damage.len(), 1, "{report:#?}");
    assert_eq!(report.run_damage[0].block, Some(block));
    assert_eq!(report.run_damage[0].what, format!("block {block} checksum"));

    let repair = store.repair_indices().expect("repair");
    assert_eq!(repair.runs_set_aside.len(), 1, "{repair:#?}");
    assert_eq!(repair.runs_set_aside[0].0, run.display().to_string());
    assert!(!repair.segments_reindexed.is_empty(), "{repair:#?}");
    assert!(repair.still_damaged.is_empty(), "{repair:#?}");
    assert!(Path::new(&repair.runs_set_aside[0].1).exists());
    let (report, _) = verify(&store);
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(instance_count(&store), INSTANCES);
    store.close();
    let store =
        Store::open(dir.path(), crate::instances::small_segments()).expect("reopen after repair");
    assert_eq!(instance_count(&store), INSTANCES);
    assert!(verify(&store).0.is_clean());
}
