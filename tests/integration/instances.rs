//! DICOM instances through the store: streaming put with extraction, metadata records, frame
//! maps, the catalog across seals, reopen, a lost index directory and a crash between the
//! object's commit and its metadata's.

use kuvasto_engine::dicom::explicit_le::encode_element as el;
use kuvasto_engine::dicom::meta::encode_file_meta;
use kuvasto_engine::dicom::Tag;
use kuvasto_engine::index::attrs::{tags, Level};
use kuvasto_engine::index::catalog::{Hits, Query};
use kuvasto_engine::index::matching::{MatchOptions, MatchVr, Matcher};
use kuvasto_engine::instances::DicomError;
use kuvasto_engine::{Error, Namespace, Store, StoreConfig};
use std::path::Path;

fn meta_group(sop_class: &str, sop_instance: &str, transfer_syntax: &str) -> Vec<u8> {
    encode_file_meta(sop_class, sop_instance, transfer_syntax)
}

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

/// A multi-frame CT in Explicit VR LE: 3 frames of 16×16×16 bits, a 20,000-byte private
/// value (bulk), Latin-1 patient name.
fn ct(patient: &str, study: &str, series: &str, sop: &str, number: u32) -> Vec<u8> {
    let text = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(b' ');
        }
        v
    };
    let ui = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        v
    };
    let pixels: Vec<u8> = (0..3 * 16 * 16 * 2).map(|i| (i % 251) as u8).collect();
    let data_set = [
        el(tags::SPECIFIC_CHARACTER_SET, b"CS", b"ISO_IR 100"),
        el(tags::SOP_CLASS_UID, b"UI", &ui(CT)),
        el(tags::SOP_INSTANCE_UID, b"UI", &ui(sop)),
        el(tags::STUDY_DATE, b"DA", b"20241125"),
        el(
            tags::ACCESSION_NUMBER,
            b"SH",
            &text(&format!("ACC-{study}")),
        ),
        el(tags::MODALITY, b"CS", b"CT"),
        el(tags::PATIENT_NAME, b"PN", b"M\xFCller^J\xF6rg "),
        el(tags::PATIENT_ID, b"LO", &text(patient)),
        el(tags::STUDY_INSTANCE_UID, b"UI", &ui(study)),
        el(tags::SERIES_INSTANCE_UID, b"UI", &ui(series)),
        el(tags::SERIES_NUMBER, b"IS", b"1 "),
        el(tags::INSTANCE_NUMBER, b"IS", &text(&number.to_string())),
        el(tags::SAMPLES_PER_PIXEL, b"US", &1u16.to_le_bytes()),
        el(tags::NUMBER_OF_FRAMES, b"IS", b"3 "),
        el(tags::ROWS, b"US", &16u16.to_le_bytes()),
        el(tags::COLUMNS, b"US", &16u16.to_le_bytes()),
        el(tags::BITS_ALLOCATED, b"US", &16u16.to_le_bytes()),
        el(Tag::new(0x0029, 0x0010), b"LO", b"KUVASTO TEST"),
        el(Tag::new(0x0029, 0x1000), b"OB", &vec![0xAB; 20_000]),
        el(Tag::PIXEL_DATA, b"OW", &pixels),
    ]
    .concat();
    [meta_group(CT, sop, "1.2.840.10008.1.2.1"), data_set].concat()
}

fn put(
    store: &Store,
    bytes: &[u8],
    chunk: usize,
) -> kuvasto_engine::Result<kuvasto_engine::instances::InstanceStored> {
    let mut put = store.put_instance();
    for piece in bytes.chunks(chunk) {
        put.write(piece)?;
    }
    put.finish()
}

fn studies_of(store: &Store, patient: &str) -> Vec<(String, u32, u32)> {
    let q = Query {
        level: Level::Study,
        filters: vec![(
            tags::PATIENT_ID,
            Matcher::parse(MatchVr::Text, patient, MatchOptions::default()).unwrap(),
        )],
        offset: 0,
        limit: None,
    };
    let Hits::Studies(hits) = store.query(&q).unwrap() else {
        panic!("study level answers studies")
    };
    let mut out: Vec<_> = hits
        .into_iter()
        .map(|h| (h.attrs.study_instance_uid, h.series_count, h.instance_count))
        .collect();
    out.sort();
    out
}

pub(crate) fn small_segments() -> StoreConfig {
    StoreConfig {
        segment_size_bytes_max: 256 << 10,
        put_buffer_bytes: 32 << 10,
        batch_bytes_max: 128 << 10,
        ..StoreConfig::default()
    }
}

#[test]
fn an_instance_is_stored_with_its_metadata_frames_and_index_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let bytes = ct("P1", "1.2.9.1", "1.2.9.1.1", "1.2.9.1.1.1", 1);
    for chunk in [7, 4096, 1 << 20] {
        let stored = put(&store, &bytes, chunk).unwrap();
        assert_eq!(stored.attrs.patient_name, "Müller^Jörg", "Latin-1 decoded");
        assert_eq!(stored.frames, 3);
        assert_eq!(stored.bulk_values, 1);
        let object = store
            .get(Namespace::OBJECT, b"1.2.9.1.1.1")
            .unwrap()
            .unwrap();
        assert_eq!(object.read_all().unwrap(), bytes, "stored byte for byte");
        let md = store.instance_metadata("1.2.9.1.1.1").unwrap().unwrap();
        assert_eq!(md.object_seq, stored.committed.seq);
        assert_eq!(md.attrs.patient_id, "P1");
        // Frame i is one range read of 512 bytes, in order.
        let pixel = md.pixel_data.unwrap();
        for (i, f) in md.frames.iter().enumerate() {
            assert_eq!(f.offset, pixel.value_offset + 512 * i as u64);
            assert_eq!(f.length, 512);
            let frame = object.read_range(f.offset..f.offset + f.length).unwrap();
            assert_eq!(frame, bytes[f.offset as usize..(f.offset + 512) as usize]);
        }
        // The header is the data set up to Pixel Data with the bulk value emptied.
        let bulk = md.bulk[0];
        assert_eq!(bulk.tag, Tag::new(0x0029, 0x1000));
        assert_eq!(bulk.length, 20_000);
        assert!(bytes[bulk.object_offset as usize..][..20_000]
            .iter()
            .all(|&b| b == 0xAB));
        assert_eq!(
            md.header.len() as u64,
            pixel.element_offset - md.data_set_offset - 20_000
        );
        assert!(md.header.windows(12).any(|w| w[..4] == [0x29, 0, 0, 0x10]
            && &w[4..6] == b"OB"
            && w[8..12] == [0, 0, 0, 0]));
    }
    // Stored three times: one instance, the newest copy.
    assert_eq!(studies_of(&store, "P1"), vec![("1.2.9.1".into(), 1, 1)]);
}

#[test]
fn refused_instances_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let good = ct("P2", "1.2.8.1", "1.2.8.1.1", "1.2.8.1.1.1", 1);

    // Not DICOM at all.
    let err = put(&store, b"\x89PNG\r\n\x1a\n not a dicom file at all", 64).unwrap_err();
    assert!(matches!(err, Error::Dicom(DicomError::Extract(_))), "{err}");

    // Truncated inside Pixel Data.
    let err = put(&store, &good[..good.len() - 100], 4096).unwrap_err();
    assert!(
        matches!(err, Error::Dicom(DicomError::PixelDataTruncated { .. })),
        "{err}"
    );

    // File meta says another SOP Instance UID than the data set.
    let mut lying = meta_group(CT, "1.2.8.1.1.2", "1.2.840.10008.1.2.1");
    lying.extend_from_slice(&good[meta_group(CT, "1.2.8.1.1.1", "1.2.840.10008.1.2.1").len()..]);
    let err = put(&store, &lying, 4096).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Dicom(DicomError::Mismatch {
                what: "SOP Instance UID",
                ..
            })
        ),
        "{err}"
    );

    // No Study Instance UID.
    let without_study: Vec<u8> = {
        let marker = el(tags::STUDY_INSTANCE_UID, b"UI", b"1.2.8.1\0");
        let at = good
            .windows(marker.len())
            .position(|w| w == marker)
            .unwrap();
        [&good[..at], &good[at + marker.len()..]].concat()
    };
    let err = put(&store, &without_study, 4096).unwrap_err();
    assert!(
        matches!(err, Error::Dicom(DicomError::MissingAttribute(name)) if name.contains("StudyInstanceUID")),
        "{err}"
    );

    for key in [&b"1.2.8.1.1.1"[..], b"1.2.8.1.1.2"] {
        assert!(store.get(Namespace::OBJECT, key).unwrap().is_none());
        assert!(store.get(Namespace::METADATA, key).unwrap().is_none());
    }
    assert!(studies_of(&store, "P2").is_empty());
    // And the store still takes good instances.
    put(&store, &good, 4096).unwrap();
    assert_eq!(studies_of(&store, "P2").len(), 1);
}

fn fill(store: &Store, patients: u32) -> Vec<(String, u32, u32)> {
    for p in 0..patients {
        for st in 0..2 {
            for i in 0..6 {
                let study = format!("1.2.7.{p}.{st}");
                let series = format!("{study}.{}", i % 2);
                let sop = format!("{series}.{i}");
                put(
                    store,
                    &ct(&format!("PAT{p}"), &study, &series, &sop, i),
                    16 << 10,
                )
                .unwrap();
            }
        }
    }
    studies_of(store, "PAT1")
}

fn wait_for_runs(store: &Store) {
    // The indexer works in the background; give it a moment (bounded) to catch up.
    for _ in 0..200 {
        if store.catalog().unwrap().mem_len() < 6 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_catalog_follows_seals_and_survives_reopen_and_a_lost_index() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let store = Store::open(dir.path(), small_segments()).unwrap();
        let found = fill(&store, 4);
        let probe = put(
            &store,
            &ct("PROBE", "1.2.7.9", "1.2.7.9.1", "1.2.7.9.1.1", 1),
            4096,
        )
        .unwrap()
        .committed;
        assert_eq!(
            found,
            vec![("1.2.7.1.0".into(), 2, 6), ("1.2.7.1.1".into(), 2, 6)]
        );
        wait_for_runs(&store);
        assert!(
            !store.catalog().unwrap().run_counts().is_empty(),
            "sealed segments were indexed as runs"
        );
        // A deletion is reflected at once.
        store.delete_instance("1.2.7.1.0.1.1").unwrap().unwrap();
        assert!(store.delete_instance("1.2.7.1.0.1.1").unwrap().is_none());
        let after = studies_of(&store, "PAT1");
        assert_eq!(after[0], ("1.2.7.1.0".into(), 2, 5));
        store.close();
        (after, probe)
    };
    let (expected, probe) = expected;
    let probe_location = |store: &Store| {
        let hit = store
            .catalog()
            .unwrap()
            .instance("1.2.7.9.1.1")
            .unwrap()
            .unwrap();
        assert_eq!(hit.seq, probe.seq);
        (
            hit.location.segment_id,
            hit.location.offset,
            hit.location.object_len,
        )
    };
    // Reopen: runs are mapped, the unsealed tail refilled.
    let store = Store::open(dir.path(), small_segments()).unwrap();
    assert!(store.catalog_open_report().runs_mapped > 0);
    assert_eq!(studies_of(&store, "PAT1"), expected);
    assert!(store.instance_metadata("1.2.7.1.0.1.1").unwrap().is_none());
    store.close();

    // Lose the index directory: it is rebuilt from the segments.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = Store::open(dir.path(), small_segments()).unwrap();
    assert_eq!(store.catalog_open_report().runs_mapped, 0);
    assert_eq!(
        probe_location(&store),
        (probe.segment_id, probe.offset, probe.len),
        "a rebuilt run points at the object"
    );
    assert_eq!(studies_of(&store, "PAT1"), expected);
    assert_eq!(studies_of(&store, "PAT3").len(), 2);
    store.close();

    // Damage a run file: it is set aside and its segments indexed again.
    let run = first_run(&dir.path().join("index"));
    let mut bytes = std::fs::read(&run).unwrap();
    bytes[600] ^= 0xFF;
    bytes[10] ^= 0xFF;
    std::fs::write(&run, bytes).unwrap();
    let store = Store::open(dir.path(), small_segments()).unwrap();
    assert_eq!(store.catalog_open_report().runs_rejected.len(), 1);
    assert_eq!(studies_of(&store, "PAT1"), expected);
    store.close();

    // Damage a data block (not the header): opening maps the run (blocks are checked on first
    // read); the first query reading the block reports it, the run is set aside and re-indexed.
    let run = first_run(&dir.path().join("index"));
    let mut bytes = std::fs::read(&run).unwrap();
    let instances_section = u64::from_le_bytes(bytes[128..136].try_into().unwrap()) as usize;
    bytes[instances_section + 5] ^= 0x5A;
    std::fs::write(&run, bytes).unwrap();
    let store = Store::open(dir.path(), small_segments()).unwrap();
    assert!(store.catalog_open_report().runs_rejected.is_empty());
    let everything = Query {
        level: Level::Instance,
        filters: vec![],
        offset: 0,
        limit: None,
    };
    let err = store.query(&everything).unwrap_err();
    assert!(matches!(err, Error::IndexCorruption { .. }), "{err}");
    let mut healed = false;
    for _ in 0..200 {
        if let Ok(Hits::Instances(all)) = store.query(&everything) {
            if all.len() == 4 * 12 - 1 + 1 {
                healed = true;
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(healed, "the damaged run was rebuilt from its segments");
    assert_eq!(studies_of(&store, "PAT1"), expected);
    assert!(store.instance_metadata("1.2.7.1.0.1.1").unwrap().is_none());
    assert!(store
        .catalog()
        .unwrap()
        .instance("1.2.7.1.0.1.1")
        .unwrap()
        .is_none());
}

fn first_run(dir: &Path) -> std::path::PathBuf {
    let mut runs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "kvi"))
        .collect();
    runs.sort();
    runs.remove(0)
}

#[test]
fn an_object_whose_metadata_was_lost_in_a_crash_is_re_derived_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = ct("P9", "1.2.6.1", "1.2.6.1.1", "1.2.6.1.1.1", 1);
    {
        // What a crash between the two commits leaves: the object, no metadata record.
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        store
            .put(Namespace::OBJECT, b"1.2.6.1.1.1", &bytes)
            .unwrap();
        assert!(store.instance_metadata("1.2.6.1.1.1").unwrap().is_none());
        store.close();
    }
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let md = store.instance_metadata("1.2.6.1.1.1").unwrap().unwrap();
    assert_eq!(md.attrs.study_instance_uid, "1.2.6.1");
    assert_eq!(md.frames.len(), 3);
    assert_eq!(studies_of(&store, "P9"), vec![("1.2.6.1".into(), 1, 1)]);
}

#[test]
fn pydicom_samples_are_stored_and_found() {
    let Some(dir) = crate::dicom_samples::samples_dir() else {
        assert!(
            std::env::var("KUVASTO_REQUIRE_SAMPLES").is_err(),
            "pydicom's sample files are missing"
        );
        return;
    };
    let mut files = Vec::new();
    crate::dicom_samples::files_under(&dir, &mut files);
    files.sort();
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path(), StoreConfig::default()).unwrap();
    let (mut stored, mut refused, mut multi_frame_maps) = (0, 0, 0);
    let mut sops = Vec::new();
    for path in &files {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        match put(&store, &bytes, 8192) {
            Ok(s) => {
                stored += 1;
                if s.frames > 1 {
                    multi_frame_maps += 1;
                }
                sops.push(s.attrs.sop_instance_uid);
            }
            Err(Error::Dicom(why)) => {
                refused += 1;
                eprintln!("refused {}: {why}", path.display());
            }
            Err(other) => panic!("{}: not a DICOM refusal: {other}", path.display()),
        }
    }
    eprintln!(
        "pydicom samples: {stored} stored, {refused} refused (not Part-10, truncated, no UIDs), {multi_frame_maps} with multi-frame maps"
    );
    assert!(stored >= 100, "most samples are storable ({stored})");
    assert!(multi_frame_maps >= 3);
    // Every stored instance is found by its SOP Instance UID (the newest copy where pydicom
    // ships the same UID twice).
    for sop in &sops {
        let hit = store.catalog().unwrap().instance(sop).unwrap();
        assert!(hit.is_some(), "{sop} indexed");
        assert!(store.instance_metadata(sop).unwrap().is_some());
    }
}

#[test]
fn duplicates_are_idempotent_when_identical_and_follow_the_policy_when_not() {
    use kuvasto_engine::instances::{DuplicatePolicy, PutOutcome};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let first = ct("P1", "1.2.3", "1.2.3.1", "1.2.3.1.1", 1);
    let stored = put(&store, &first, 4096).unwrap();
    assert_eq!(stored.outcome, PutOutcome::Stored);
    let written = store
        .engine_stats()
        .bytes_written
        .load(std::sync::atomic::Ordering::Relaxed);

    // The same bytes again, in other pieces, under either policy: nothing is written.
    for policy in [DuplicatePolicy::Reject, DuplicatePolicy::Replace] {
        let mut again = store.put_instance().on_duplicate(policy);
        for piece in first.chunks(777) {
            again.write(piece).unwrap();
        }
        let again = again.finish().unwrap();
        assert_eq!(again.outcome, PutOutcome::Identical);
        assert_eq!(again.committed, stored.committed);
        assert_eq!(again.frames, 3);
    }
    let after = store
        .engine_stats()
        .bytes_written
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after, written, "an identical put writes nothing");

    // Different bytes (another instance number, and a prefix of the stored bytes): refused
    // under Reject, and the stored instance is untouched.
    let changed = ct("P1", "1.2.3", "1.2.3.1", "1.2.3.1.1", 2);
    let mut refused = store.put_instance().on_duplicate(DuplicatePolicy::Reject);
    let err = changed
        .chunks(1000)
        .try_for_each(|piece| refused.write(piece))
        .and_then(|()| refused.finish().map(|_| ()))
        .unwrap_err();
    assert!(
        matches!(err, Error::Dicom(DicomError::Duplicate { ref sop_instance_uid }) if sop_instance_uid == "1.2.3.1.1"),
        "{err}"
    );
    let mut prefix = store.put_instance().on_duplicate(DuplicatePolicy::Reject);
    prefix.write(&first[..first.len() - 2]).unwrap();
    assert!(
        prefix.finish().is_err(),
        "a prefix of the stored bytes is not the same instance"
    );
    let object = store.get(Namespace::OBJECT, b"1.2.3.1.1").unwrap().unwrap();
    assert_eq!(object.read_all().unwrap(), first);

    // Under Replace the new bytes win, including the part that equalled the stored bytes.
    let replaced = store.put_instance().on_duplicate(DuplicatePolicy::Replace);
    let mut replaced = replaced;
    for piece in changed.chunks(1000) {
        replaced.write(piece).unwrap();
    }
    let replaced = replaced.finish().unwrap();
    assert_eq!(replaced.outcome, PutOutcome::Replaced);
    let object = store.get(Namespace::OBJECT, b"1.2.3.1.1").unwrap().unwrap();
    assert_eq!(object.read_all().unwrap(), changed);
    let md = store.instance_metadata("1.2.3.1.1").unwrap().unwrap();
    assert_eq!(md.attrs.instance_number, Some(2));
    assert_eq!(md.object_seq, replaced.committed.seq);
}

#[test]
fn concurrent_puts_of_one_uid_never_both_store() {
    use kuvasto_engine::instances::{DuplicatePolicy, PutOutcome};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    // Deterministic: both puts stream before either commits, so both saw "nothing stored".
    for (round, policy) in [DuplicatePolicy::Reject, DuplicatePolicy::Replace]
        .into_iter()
        .enumerate()
    {
        let sop = format!("1.2.3.9.{round}");
        let (a, b) = (
            ct("P1", "1.2.3", "1.2.3.9", &sop, 1),
            ct("P1", "1.2.3", "1.2.3.9", &sop, 2),
        );
        let mut first = store.put_instance().on_duplicate(policy);
        let mut second = store.put_instance().on_duplicate(policy);
        first.write(&a).unwrap();
        second.write(&b).unwrap();
        assert_eq!(first.finish().unwrap().outcome, PutOutcome::Stored);
        match policy {
            DuplicatePolicy::Reject => {
                let err = second.finish().unwrap_err();
                assert!(
                    matches!(err, Error::Dicom(DicomError::StoredMeanwhile { ref sop_instance_uid }) if *sop_instance_uid == sop),
                    "{err}"
                );
                let stored = store
                    .get(Namespace::OBJECT, sop.as_bytes())
                    .unwrap()
                    .unwrap();
                assert_eq!(stored.read_all().unwrap(), a, "the first stays");
            }
            DuplicatePolicy::Replace => {
                assert_eq!(second.finish().unwrap().outcome, PutOutcome::Replaced);
                let stored = store
                    .get(Namespace::OBJECT, sop.as_bytes())
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    stored.read_all().unwrap(),
                    b,
                    "the later replaces, and says so"
                );
            }
        }
    }
    // Racing threads: exactly one of two different instances of one UID is stored.
    for round in 0..20 {
        let sop = format!("1.2.3.8.{round}");
        let outcomes: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..=2)
                .map(|n| {
                    let (store, sop) = (&store, sop.clone());
                    s.spawn(move || {
                        let bytes = ct("P1", "1.2.3", "1.2.3.8", &sop, n);
                        let mut put = store.put_instance().on_duplicate(DuplicatePolicy::Reject);
                        bytes
                            .chunks(8192)
                            .try_for_each(|piece| put.write(piece))
                            .and_then(|()| put.finish())
                            .is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            outcomes.iter().filter(|ok| **ok).count(),
            1,
            "round {round}: {outcomes:?}"
        );
    }
}

#[test]
fn a_caller_check_refuses_before_anything_is_visible() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let bytes = ct("P1", "1.2.3", "1.2.3.1", "1.2.3.1.1", 1);
    let mut put = store.put_instance();
    put.write(&bytes).unwrap();
    let outcome = put
        .finish_checked(|attrs| {
            if attrs.study_instance_uid == "9.9.9" {
                Ok(())
            } else {
                Err(format!("study {} is not 9.9.9", attrs.study_instance_uid))
            }
        })
        .unwrap();
    assert_eq!(outcome.unwrap_err(), "study 1.2.3 is not 9.9.9");
    assert!(store
        .get(Namespace::OBJECT, b"1.2.3.1.1")
        .unwrap()
        .is_none());
    assert!(store.instance_metadata("1.2.3.1.1").unwrap().is_none());
}

#[test]
fn a_header_over_the_metadata_limit_is_refused_before_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::default();
    // The CT's header without its 20,000-byte bulk value is a few hundred bytes.
    config.instances.header_bytes_max = 64;
    let store = Store::open(dir.path(), config).unwrap();
    let bytes = ct("P1", "1.2.3", "1.2.3.1", "1.2.3.1.1", 1);
    let err = put(&store, &bytes, 4096).unwrap_err();
    assert!(
        matches!(err, Error::Limit { max: 64, .. }),
        "refused with the limit: {err}"
    );
    assert!(store
        .get(Namespace::OBJECT, b"1.2.3.1.1")
        .unwrap()
        .is_none());
    assert!(store.instance_metadata("1.2.3.1.1").unwrap().is_none());
}
