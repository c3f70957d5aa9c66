//! Helpers shared by Kuvasto's integration tests, the crash-test child process and the
//! power-cut harness (`kuvasto-powercut`): deterministic contents, configurations, DICOM
//! instances and the check of a reopened store's instances and catalog.

use kuvasto_engine::dicom::explicit_le::encode_element;
use kuvasto_engine::dicom::meta::encode_file_meta;
use kuvasto_engine::dicom::Tag;
use kuvasto_engine::index::attrs::{tags, InstanceAttrs, Level};
use kuvasto_engine::index::catalog::{Hits, InstanceHit, Query};
use kuvasto_engine::index::matching::{MatchOptions, MatchVr, Matcher};
use kuvasto_engine::{Namespace, Store, StoreConfig};
use std::collections::{BTreeMap, BTreeSet};

/// Deterministic pseudo-random bytes: object `seed` of `len` bytes is always the same, so a
/// test (or a process restarted after kill -9) can check content without keeping it.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A configuration with tiny segments and buffers, so that tests cross every boundary
/// (chunks, batches, segments) with little data.
pub fn small_config() -> StoreConfig {
    StoreConfig {
        segment_size_bytes_max: 512 * 1024,
        put_buffer_bytes: 16 * 1024,
        batch_bytes_max: 64 * 1024,
        requests_queued_max: 16,
        flushers: 2,
        direct_io: true,
        ..StoreConfig::default()
    }
}

/// Configuration shared by the kill -9 child and the test that checks its work: small enough
/// that a few seconds of ingest seal several segments.
pub fn crash_config() -> StoreConfig {
    StoreConfig {
        segment_size_bytes_max: 4 * 1024 * 1024,
        put_buffer_bytes: 64 * 1024,
        batch_bytes_max: 512 * 1024,
        requests_queued_max: 64,
        flushers: 4,
        direct_io: true,
        ..StoreConfig::default()
    }
}

/// Seed and length of the object stored under `key` by the crash child: derived from the key
/// alone, so any object found later can be checked.
pub fn crash_object(key: &str) -> (u64, usize) {
    let seed = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let len = match seed % 10 {
        0..=5 => 200 + (seed >> 8) as usize % 4_000,
        6..=8 => 20_000 + (seed >> 8) as usize % 180_000,
        _ => 300_000 + (seed >> 8) as usize % 500_000,
    };
    (seed, len)
}

/// Seed and length of a streamed object of the kill -9 child (`c{cycle}-s{thread}-{i}`):
/// 70 KB to 1.27 MB, 2 to 20 chunks of [`crash_config`]'s put buffer, so that streams often
/// span a segment boundary.
pub fn crash_stream(key: &str) -> (u64, usize) {
    let (seed, _) = crash_object(key);
    (seed, 70_000 + (seed >> 12) as usize % 1_200_000)
}

/// The bytes the kill -9 child stores under `key`: [`crash_stream`] for streams
/// (`c{cycle}-s{thread}-{i}`), [`crash_object`] for the rest.
pub fn crash_bytes(key: &str) -> Vec<u8> {
    let streamed = key.split('-').nth(1).is_some_and(|t| t.starts_with('s'));
    let (seed, len) = if streamed {
        crash_stream(key)
    } else {
        crash_object(key)
    };
    content(seed, len)
}

// ---------------------------------------------------------------------------------------------
// DICOM instances: building small CT instances, deriving a workload's instances from their SOP
// Instance UIDs, and checking a reopened store's instances and catalog against what was
// acknowledged. The kill -9 test, the power-cut harness and `loss_paths` use this one copy.

/// CT Image Storage.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Explicit VR Little Endian, the transfer syntax [`CtInstance::encode`] writes.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A small single-frame CT instance (Part 10, Explicit VR Little Endian, 16-bit native
/// pixels), built element by element with the engine's own encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtInstance {
    pub sop_instance_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    /// (0020,0013), left out when `None`.
    pub instance_number: Option<i32>,
    pub rows: u16,
    pub columns: u16,
    /// Length of a private OB value (0029,1000) before Pixel Data (from 16 KiB on it is a
    /// bulk value the metadata record leaves out).
    pub private_bytes: usize,
    /// Pixels: `content(seed, rows × columns × 2)`, or all 7 when `None`.
    pub pixel_seed: Option<u64>,
}

impl CtInstance {
    /// A 32 × 32 CT of constant pixels, without instance number or private value.
    pub fn new(
        sop_instance_uid: &str,
        patient_id: &str,
        patient_name: &str,
        study_instance_uid: &str,
        series_instance_uid: &str,
    ) -> CtInstance {
        CtInstance {
            sop_instance_uid: sop_instance_uid.to_string(),
            patient_id: patient_id.to_string(),
            patient_name: patient_name.to_string(),
            study_instance_uid: study_instance_uid.to_string(),
            series_instance_uid: series_instance_uid.to_string(),
            instance_number: None,
            rows: 32,
            columns: 32,
            private_bytes: 0,
            pixel_seed: None,
        }
    }

    /// The same instance with a private OB value of `bytes` before Pixel Data.
    pub fn with_private_bytes(mut self, bytes: usize) -> CtInstance {
        self.private_bytes = bytes;
        self
    }

    /// The Part-10 bytes: preamble and file meta group, then the data set in tag order.
    pub fn encode(&self) -> Vec<u8> {
        // UIDs are padded with NUL, text with a space, to an even length.
        let ui = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            if v.len() % 2 == 1 {
                v.push(0);
            }
            v
        };
        let text = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            if v.len() % 2 == 1 {
                v.push(b' ');
            }
            v
        };
        let mut data_set = vec![
            encode_element(tags::SOP_CLASS_UID, b"UI", &ui(CT_IMAGE_STORAGE)),
            encode_element(tags::SOP_INSTANCE_UID, b"UI", &ui(&self.sop_instance_uid)),
            encode_element(tags::MODALITY, b"CS", b"CT"),
            encode_element(tags::PATIENT_NAME, b"PN", &text(&self.patient_name)),
            encode_element(tags::PATIENT_ID, b"LO", &text(&self.patient_id)),
            encode_element(
                tags::STUDY_INSTANCE_UID,
                b"UI",
                &ui(&self.study_instance_uid),
            ),
            encode_element(
                tags::SERIES_INSTANCE_UID,
                b"UI",
                &ui(&self.series_instance_uid),
            ),
        ];
        if let Some(number) = self.instance_number {
            data_set.push(encode_element(
                tags::INSTANCE_NUMBER,
                b"IS",
                &text(&number.to_string()),
            ));
        }
        data_set.extend([
            encode_element(tags::ROWS, b"US", &self.rows.to_le_bytes()),
            encode_element(tags::COLUMNS, b"US", &self.columns.to_le_bytes()),
            encode_element(tags::BITS_ALLOCATED, b"US", &16u16.to_le_bytes()),
        ]);
        if self.private_bytes > 0 {
            data_set.push(encode_element(
                Tag::new(0x0029, 0x0010),
                b"LO",
                b"KUVASTO TEST",
            ));
            data_set.push(encode_element(
                Tag::new(0x0029, 0x1000),
                b"OB",
                &vec![0x5A; self.private_bytes.next_multiple_of(2)],
            ));
        }
        let pixel_bytes = usize::from(self.rows) * usize::from(self.columns) * 2;
        let pixels = match self.pixel_seed {
            Some(seed) => content(seed, pixel_bytes),
            None => vec![7u8; pixel_bytes],
        };
        data_set.push(encode_element(Tag::PIXEL_DATA, b"OW", &pixels));
        [
            encode_file_meta(CT_IMAGE_STORAGE, &self.sop_instance_uid, EXPLICIT_VR_LE),
            data_set.concat(),
        ]
        .concat()
    }

    /// How `attrs` (from a metadata record or a catalog hit) differ from this instance's
    /// indexed attributes; `None` when they agree.
    pub fn attrs_differ(&self, attrs: &InstanceAttrs) -> Option<String> {
        let rows = Some(self.rows);
        let columns = Some(self.columns);
        let pairs: [(&str, String, String); 11] = [
            (
                "SOPInstanceUID",
                self.sop_instance_uid.clone(),
                attrs.sop_instance_uid.clone(),
            ),
            (
                "SOPClassUID",
                CT_IMAGE_STORAGE.into(),
                attrs.sop_class_uid.clone(),
            ),
            (
                "PatientID",
                self.patient_id.clone(),
                attrs.patient_id.clone(),
            ),
            (
                "PatientName",
                self.patient_name.clone(),
                attrs.patient_name.clone(),
            ),
            (
                "StudyInstanceUID",
                self.study_instance_uid.clone(),
                attrs.study_instance_uid.clone(),
            ),
            (
                "SeriesInstanceUID",
                self.series_instance_uid.clone(),
                attrs.series_instance_uid.clone(),
            ),
            ("Modality", "CT".into(), attrs.modality.clone()),
            (
                "TransferSyntaxUID",
                EXPLICIT_VR_LE.into(),
                attrs.transfer_syntax_uid.clone(),
            ),
            (
                "InstanceNumber",
                format!("{:?}", self.instance_number),
                format!("{:?}", attrs.instance_number),
            ),
            ("Rows", format!("{rows:?}"), format!("{:?}", attrs.rows)),
            (
                "Columns",
                format!("{columns:?}"),
                format!("{:?}", attrs.columns),
            ),
        ];
        let differing: Vec<String> = pairs
            .iter()
            .filter(|(_, want, got)| want != got)
            .map(|(name, want, got)| format!("{name} {got:?} instead of {want:?}"))
            .collect();
        (!differing.is_empty()).then(|| differing.join(", "))
    }
}

/// The patients of workload instances ([`workload_instance`]): every catalog listing of the
/// checks is over these.
pub const WORKLOAD_PATIENTS: [&str; 4] = ["KV-WL-0", "KV-WL-1", "KV-WL-2", "KV-WL-3"];

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A workload's instance, derived from its SOP Instance UID alone (as objects derive from
/// their keys), so that whatever a reopened store holds can be checked: one of the four
/// [`WORKLOAD_PATIENTS`], one of two studies of that patient (one series each), an instance
/// number, 16 × 16 (six in ten), 128 × 128 (three in ten: 32 KiB) or 384 × 384 (one in ten:
/// 288 KiB, several put buffers) pixels from the UID's seed, and in one of three a private
/// value, of 20 KB (a bulk value) every other time.
pub mod workers;

/// A number from the environment variable `name` (decimal, or hex with `0x`), `default` when
/// unset; a test setting (cycles, seeds), so anything else stops the test.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse(),
        }
        .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

pub fn workload_instance(sop_instance_uid: &str) -> CtInstance {
    let seed = fnv1a(sop_instance_uid);
    let patient = (seed % 4) as usize;
    let study = (seed >> 8) % 2;
    let study_instance_uid = format!("1.2.15.99.{patient}.{study}");
    let side = match (seed >> 16) % 10 {
        0..=5 => 16,
        6..=8 => 128,
        _ => 384,
    };
    let private_bytes = match (seed >> 24) % 6 {
        0 => 20_000,
        1 => 100,
        _ => 0,
    };
    CtInstance {
        sop_instance_uid: sop_instance_uid.to_string(),
        patient_id: WORKLOAD_PATIENTS[patient].to_string(),
        patient_name: format!("Workload^Patient{patient}"),
        series_instance_uid: format!("{study_instance_uid}.1"),
        study_instance_uid,
        instance_number: Some(((seed >> 32) % 10_000) as i32),
        rows: side,
        columns: side,
        private_bytes,
        pixel_seed: Some(seed),
    }
}

/// Stores `bytes` with `Store::put_instance`, written in uneven pieces (1 byte to 100 KB, from
/// `pieces_seed`) as a network client would.
pub fn put_instance_in_pieces(
    store: &Store,
    bytes: &[u8],
    pieces_seed: u64,
) -> kuvasto_engine::Result<kuvasto_engine::instances::InstanceStored> {
    let mut rng = kuvasto_engine::io::sim::DetRng::new(pieces_seed);
    let mut put = store.put_instance();
    let mut at = 0usize;
    while at < bytes.len() {
        let n = (1 + rng.below(100_000) as usize).min(bytes.len() - at);
        put.write(&bytes[at..at + n])?;
        at += n;
    }
    put.finish()
}

/// A query at instance level with one filter.
fn instance_query(tag: Tag, vr: MatchVr, key: &str) -> Result<Query, String> {
    let matcher = Matcher::parse(vr, key, MatchOptions::default())
        .map_err(|e| format!("matcher for {key:?}: {e}"))?;
    Ok(Query {
        level: Level::Instance,
        filters: vec![(tag, matcher)],
        offset: 0,
        limit: None,
    })
}

/// Every hit of an instance-level query, page by page (a page is at most 500 hits, so
/// `CatalogLimits::query_hits_max` never cuts the answer short).
pub fn query_all_instances(store: &Store, mut query: Query) -> Result<Vec<InstanceHit>, String> {
    const PAGE: usize = 500;
    let mut all = Vec::new();
    loop {
        query.offset = all.len();
        query.limit = Some(PAGE);
        let hits = match store.query(&query) {
            Ok(Hits::Instances(hits)) => hits,
            Ok(other) => {
                return Err(format!(
                    "an instance query answered {} other hits",
                    other.len()
                ))
            }
            Err(e) => return Err(format!("query failed: {e}")),
        };
        let n = hits.len();
        all.extend(hits);
        if n < PAGE {
            return Ok(all);
        }
    }
}

/// The instances of one patient (PatientID matching exactly).
pub fn patient_instances(store: &Store, patient_id: &str) -> Result<Vec<InstanceHit>, String> {
    query_all_instances(
        store,
        instance_query(tags::PATIENT_ID, MatchVr::Text, patient_id)?,
    )
}

/// The instances the catalog finds by SOP Instance UID.
pub fn instances_by_uid(store: &Store, sop_instance_uid: &str) -> Result<Vec<InstanceHit>, String> {
    query_all_instances(
        store,
        instance_query(tags::SOP_INSTANCE_UID, MatchVr::Uid, sop_instance_uid)?,
    )
}

/// What an instance must be after a crash or a cut, from the ack log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceExpect {
    /// Acknowledged put (`IPUT`): the object byte for byte, its current metadata, the catalog.
    Present,
    /// Acknowledged delete (`IDEL`): no object, no metadata record, not in the catalog.
    Deleted,
    /// A put (`IPUTTING`) or delete (`IDELETING`) started but not acknowledged: either of the
    /// two above, wholly.
    InDoubt,
}

/// One broken promise: the key (or SOP Instance UID), what it should have been, what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub key: String,
    pub expected: String,
    pub found: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {}, found {}",
            self.key, self.expected, self.found
        )
    }
}

/// What [`check_instances`] found.
#[derive(Debug, Clone, Default)]
pub struct InstanceCheck {
    /// Instances with an expectation that were checked.
    pub checked: usize,
    /// Acknowledged puts found whole (object, metadata, catalog).
    pub present_ok: usize,
    /// Acknowledged deletes found wholly deleted.
    pub deleted_ok: usize,
    /// In-doubt instances found present (whole) and absent (wholly).
    pub in_doubt_present: usize,
    pub in_doubt_absent: usize,
    /// Instances the catalog lists for [`WORKLOAD_PATIENTS`] (each patient's listing).
    pub listed: usize,
    /// Acknowledged puts with no object.
    pub lost: Vec<Finding>,
    /// Acknowledged deletes whose object is back.
    pub resurrected: Vec<Finding>,
    /// Objects that read back wrong or fail to read.
    pub corrupted: Vec<Finding>,
    /// Metadata records or catalog answers that disagree with the objects and the
    /// acknowledgements.
    pub catalog: Vec<Finding>,
}

impl InstanceCheck {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.resurrected.is_empty()
            && self.corrupted.is_empty()
            && self.catalog.is_empty()
    }

    /// Every finding with its kind, lost first.
    pub fn findings(&self) -> impl Iterator<Item = (&'static str, &Finding)> {
        self.lost
            .iter()
            .map(|f| ("lost instance", f))
            .chain(self.resurrected.iter().map(|f| ("resurrected instance", f)))
            .chain(self.corrupted.iter().map(|f| ("corrupted instance", f)))
            .chain(self.catalog.iter().map(|f| ("catalog mismatch", f)))
    }
}

/// Where a differing byte string first differs, for a finding.
pub fn describe_difference(got: &[u8], want: &[u8]) -> String {
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    format!(
        "{} bytes differing from byte {first} on (expected {} bytes)",
        got.len(),
        want.len()
    )
}

/// Holds a reopened store's workload instances ([`workload_instance`]) to `expect` (SOP
/// Instance UID → what the ack log promises). For each instance: an acknowledged put must have
/// its object byte for byte, `Store::instance_metadata` naming that object's seq with the
/// instance's attributes, and exactly one catalog hit by SOP Instance UID with those
/// attributes and the object's length; an acknowledged delete must have no object, no
/// metadata record and no catalog hit; an in-doubt one either, wholly. Then each of the
/// [`WORKLOAD_PATIENTS`]' instance listings must be exactly the instances found present of
/// that patient (so: every acknowledged put, no acknowledged delete, in-doubt ones only when
/// whole, nothing never started), each once, and the workload instances' objects in the store
/// must all be in `expect`.
pub fn check_instances(store: &Store, expect: &BTreeMap<String, InstanceExpect>) -> InstanceCheck {
    let mut report = InstanceCheck::default();
    let finding = |key: &str, expected: &str, found: String| Finding {
        key: key.to_string(),
        expected: expected.to_string(),
        found,
    };
    // Present instances by patient, as the objects say.
    let mut present: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (uid, &expected) in expect {
        report.checked += 1;
        let wanted = match expected {
            InstanceExpect::Present => "present (acknowledged instance put)",
            InstanceExpect::Deleted => "deleted (acknowledged instance delete)",
            InstanceExpect::InDoubt => "present or deleted, wholly (not acknowledged)",
        };
        let instance = workload_instance(uid);
        let object = match store.get(Namespace::OBJECT, uid.as_bytes()) {
            Ok(object) => object,
            Err(e) => {
                report
                    .corrupted
                    .push(finding(uid, wanted, format!("get failed: {e}")));
                continue;
            }
        };
        let by_uid = instances_by_uid(store, uid);
        match object {
            Some(object) => {
                match object.read_all() {
                    Ok(bytes) => {
                        let want = instance.encode();
                        if bytes != want {
                            report.corrupted.push(finding(
                                uid,
                                wanted,
                                describe_difference(&bytes, &want),
                            ));
                        }
                    }
                    Err(e) => {
                        report
                            .corrupted
                            .push(finding(uid, wanted, format!("read failed: {e}")))
                    }
                }
                let mut whole = true;
                let mut mismatch = |what: String| {
                    whole = false;
                    report.catalog.push(finding(uid, wanted, what));
                };
                match store.instance_metadata(uid) {
                    Ok(Some(metadata)) => {
                        if metadata.object_seq != object.seq {
                            mismatch(format!(
                                "metadata naming object seq {} while the object's is {}",
                                metadata.object_seq, object.seq
                            ));
                        }
                        if metadata.object_len != object.len {
                            mismatch(format!(
                                "metadata giving {} bytes for an object of {}",
                                metadata.object_len, object.len
                            ));
                        }
                        if let Some(what) = instance.attrs_differ(&metadata.attrs) {
                            mismatch(format!("metadata with {what}"));
                        }
                    }
                    Ok(None) => mismatch(format!(
                        "the object (seq {}) without current metadata",
                        object.seq
                    )),
                    Err(e) => mismatch(format!("instance_metadata failed: {e}")),
                }
                match &by_uid {
                    Ok(hits) if hits.len() == 1 => {
                        if let Some(what) = instance.attrs_differ(&hits[0].attrs) {
                            mismatch(format!("the catalog's hit by SOP Instance UID with {what}"));
                        }
                        if hits[0].location.object_len != object.len {
                            mismatch(format!(
                                "the catalog giving {} bytes for an object of {}",
                                hits[0].location.object_len, object.len
                            ));
                        }
                    }
                    Ok(hits) => mismatch(format!(
                        "the object, and {} catalog hits by SOP Instance UID instead of 1",
                        hits.len()
                    )),
                    Err(e) => mismatch(format!("the catalog query by SOP Instance UID: {e}")),
                }
                present
                    .entry(instance.patient_id.clone())
                    .or_default()
                    .insert(uid.clone());
                match expected {
                    InstanceExpect::Present if whole => report.present_ok += 1,
                    InstanceExpect::InDoubt if whole => report.in_doubt_present += 1,
                    InstanceExpect::Deleted => report.resurrected.push(finding(
                        uid,
                        wanted,
                        format!("the object (seq {})", object.seq),
                    )),
                    _ => {}
                }
            }
            None => {
                let mut whole = true;
                match store.get(Namespace::METADATA, uid.as_bytes()) {
                    Ok(None) => {}
                    Ok(Some(record)) => {
                        whole = false;
                        report.catalog.push(finding(
                            uid,
                            wanted,
                            format!("no object but a metadata record (seq {})", record.seq),
                        ));
                    }
                    Err(e) => {
                        whole = false;
                        report.catalog.push(finding(
                            uid,
                            wanted,
                            format!("no object; metadata get failed: {e}"),
                        ));
                    }
                }
                match &by_uid {
                    Ok(hits) if hits.is_empty() => {}
                    Ok(hits) => {
                        whole = false;
                        report.catalog.push(finding(
                            uid,
                            wanted,
                            format!(
                                "no object but {} catalog hits by SOP Instance UID (seq {:?})",
                                hits.len(),
                                hits.iter().map(|h| h.seq).collect::<Vec<_>>()
                            ),
                        ));
                    }
                    Err(e) => {
                        whole = false;
                        report.catalog.push(finding(
                            uid,
                            wanted,
                            format!("no object; the catalog query by SOP Instance UID: {e}"),
                        ));
                    }
                }
                match expected {
                    InstanceExpect::Present => {
                        report.lost.push(finding(uid, wanted, "no object".into()))
                    }
                    InstanceExpect::Deleted if whole => report.deleted_ok += 1,
                    InstanceExpect::InDoubt if whole => report.in_doubt_absent += 1,
                    _ => {}
                }
            }
        }
    }
    // Each patient's listing: exactly the instances present, each once.
    for patient in WORKLOAD_PATIENTS {
        let hits = match patient_instances(store, patient) {
            Ok(hits) => hits,
            Err(e) => {
                report
                    .catalog
                    .push(finding(patient, "the patient's instances listed", e));
                continue;
            }
        };
        report.listed += hits.len();
        let mut listed = BTreeSet::new();
        for hit in &hits {
            let uid = &hit.attrs.sop_instance_uid;
            if !listed.insert(uid.clone()) {
                report.catalog.push(finding(
                    uid,
                    &format!("listed once for patient {patient}"),
                    "listed twice".into(),
                ));
            }
            if let Some(what) = workload_instance(uid).attrs_differ(&hit.attrs) {
                report.catalog.push(finding(
                    uid,
                    &format!("listed for patient {patient} with its attributes"),
                    what,
                ));
            }
        }
        let want = present.remove(patient).unwrap_or_default();
        for uid in listed.difference(&want) {
            let expected = match expect.get(uid) {
                Some(InstanceExpect::Deleted) => "not listed (acknowledged delete)",
                Some(_) => "not listed (no object)",
                None => "not listed (never put)",
            };
            report.catalog.push(finding(
                uid,
                expected,
                format!("listed for patient {patient}"),
            ));
        }
        for uid in want.difference(&listed) {
            report.catalog.push(finding(
                uid,
                &format!("listed for patient {patient} (its object is present)"),
                "not listed".into(),
            ));
        }
        // The patient's studies: exactly those with a present instance, with their counts.
        let mut want_studies: BTreeMap<String, u32> = BTreeMap::new();
        for uid in &want {
            *want_studies
                .entry(workload_instance(uid).study_instance_uid)
                .or_default() += 1;
        }
        match patient_studies(store, patient) {
            Ok(got) if got == want_studies => {}
            Ok(got) => report.catalog.push(finding(
                patient,
                &format!("studies with their instance counts {want_studies:?}"),
                format!("{got:?}"),
            )),
            Err(e) => report
                .catalog
                .push(finding(patient, "the patient's studies listed", e)),
        }
    }
    // No workload instance object outside the ack log's promises.
    for key in store.keys(Namespace::OBJECT) {
        let Ok(uid) = std::str::from_utf8(&key) else {
            continue;
        };
        if is_instance_key(uid) && !expect.contains_key(uid) {
            report
                .catalog
                .push(finding(uid, "no object (never put)", "an object".into()));
        }
    }
    report
}

/// Whether an object key is a SOP Instance UID (workload keys of plain objects start with a
/// letter).
pub fn is_instance_key(key: &str) -> bool {
    key.as_bytes().first().is_some_and(u8::is_ascii_digit)
}

/// The instance verbs of an ack log line: `IPUTTING uid` (a put started) and `IDELETING uid`
/// (a delete started) leave the instance in doubt, `IPUT uid` promises it present and
/// `IDEL uid` deleted. `None` for any other line.
pub fn instance_ack(line: &str) -> Option<(&str, InstanceExpect)> {
    match line.split_once(' ')? {
        ("IPUTTING" | "IDELETING", uid) => Some((uid, InstanceExpect::InDoubt)),
        ("IPUT", uid) => Some((uid, InstanceExpect::Present)),
        ("IDEL", uid) => Some((uid, InstanceExpect::Deleted)),
        _ => None,
    }
}

/// A patient's studies (StudyInstanceUID → number of instances) at study level.
pub fn patient_studies(store: &Store, patient_id: &str) -> Result<BTreeMap<String, u32>, String> {
    let mut query = instance_query(tags::PATIENT_ID, MatchVr::Text, patient_id)?;
    query.level = Level::Study;
    query.limit = Some(10_000);
    match store.query(&query) {
        Ok(Hits::Studies(hits)) => {
            let mut studies = BTreeMap::new();
            for hit in hits {
                if studies
                    .insert(hit.attrs.study_instance_uid.clone(), hit.instance_count)
                    .is_some()
                {
                    return Err(format!(
                        "study {} listed twice",
                        hit.attrs.study_instance_uid
                    ));
                }
            }
            Ok(studies)
        }
        Ok(other) => Err(format!("a study query answered {} other hits", other.len())),
        Err(e) => Err(format!("study query failed: {e}")),
    }
}
