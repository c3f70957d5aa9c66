//! Index runs: immutable, memory-mapped files holding the patient / study / series / instance
//! hierarchy and its secondary keys for a set of instances.
//!
//! A run is written once by [`RunBuilder`] (from the instances of a sealed segment, or by merging
//! older runs) and then only read, through a memory map ([`Run`]). Reopening the archive maps
//! its runs instead of scanning segments. The byte layout is in `docs/format.md` ("Index runs").
//!
//! Layout in short: a 512-byte header (magic, version, counts, a table of sections, CRC), then
//! the sections — a string heap, fixed-width rows for patients, studies, series and instances
//! (series grouped by study, instances grouped by series, so "the series of a study" and "the
//! instances of a series" are contiguous row ranges), sorted `(key, row)` arrays for the
//! secondary keys, the removals the run records — and finally a table with one CRC-32C per
//! 4096-byte block of everything between the header and the table.
//!
//! Checks: opening verifies the header and the block-CRC table (O(file size / 1000)), not the
//! data, so reopening is fast; every block is verified the first time any byte of it is read
//! (one bit per block remembers it), so no byte is served unchecked. A failed check is an
//! [`Error::IndexCorruption`]; runs are derived data and the catalog rebuilds them.

use super::attrs::{InstanceAttrs, InstanceLocation};
use crate::dicom::Tag;
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const RUN_MAGIC: [u8; 8] = *b"KVIDXRUN";
pub const RUN_FORMAT_VERSION: u32 = 1;
pub const RUN_HEADER_BYTES: u64 = 512;
pub const RUN_BLOCK_BYTES: u64 = 4096;
/// Longest string (or extras list) a run stores; longer extra values are not indexed.
pub const RUN_STRING_BYTES_MAX: usize = 1 << 20;
/// Most instances in one run (row numbers are `u32`, heap offsets `u32`).
pub const RUN_INSTANCES_MAX: u64 = 200_000_000;

const PATIENT_ROW_BYTES: u64 = 20;
const STUDY_ROW_BYTES: u64 = 48;
const SERIES_ROW_BYTES: u64 = 40;
const INSTANCE_ROW_BYTES: u64 = 72;
const KEY_ENTRY_BYTES: u64 = 12;
const REMOVED_ENTRY_BYTES: u64 = 32;
/// `instance_number` / `series_number` absent.
const NUMBER_ABSENT: i32 = i32::MIN;
/// `number_of_frames` / `rows` / `columns` absent.
const U32_ABSENT: u32 = u32::MAX;

/// The sections of a run, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Section {
    Heap = 0,
    Patients,
    Studies,
    Series,
    Instances,
    /// hash(StudyInstanceUID) → study row.
    KeyStudyUid,
    /// hash(SeriesInstanceUID) → series row.
    KeySeriesUid,
    /// hash(SOPInstanceUID) → instance row.
    KeySopUid,
    /// hash(PatientID) → study row.
    KeyPatientId,
    /// hash(AccessionNumber) → study row.
    KeyAccession,
    /// StudyDate as the integer yyyymmdd → study row (studies with a valid date only).
    KeyStudyDate,
    /// hash(one value of ModalitiesInStudy) → study row.
    KeyModality,
    /// Instances removed (deleted or replaced) as of this run: (hash, UID, seq).
    Removed,
    /// The segments whose metadata records the run indexes (sorted `u64` ids).
    Segments,
}
const SECTION_COUNT: usize = 14;
const HEADER_SECTIONS_AT: usize = 64;

/// FNV-1a, 64-bit: the run format's key hash (stable by definition, see `docs/format.md`).
pub fn key_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in s.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// yyyymmdd of a DA value, if it is a plain valid date.
pub fn date_key(da: &str) -> Option<u32> {
    let b = da.as_bytes();
    if b.len() != 8 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u32 = da.parse().ok()?;
    let (m, d) = ((n / 100) % 100, n % 100);
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some(n)
}

fn split_values(s: &str) -> impl Iterator<Item = &str> {
    s.split('\\').map(str::trim).filter(|v| !v.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Building.

#[derive(Clone)]
struct PatientTmp {
    strs: [u32; 5],
    seq: u64,
}

#[derive(Clone)]
struct StudyTmp {
    uid: u32,
    patient: u32,
    date: u32,
    strs: [u32; 5], // time, accession, study_id, description, referring
    seq: u64,
    modalities: Vec<u32>,
}

#[derive(Clone)]
struct SeriesTmp {
    uid: u32,
    study: u32,
    modality: u32,
    number: i32,
    strs: [u32; 3], // description, body part, pps start date
    seq: u64,
}

#[derive(Clone)]
struct InstanceTmp {
    sop: u32,
    class: u32,
    series: u32,
    number: i32,
    frames: u32,
    rows: u32,
    columns: u32,
    ts: u32,
    extras: u32,
    seq: u64,
    location: InstanceLocation,
}

/// Builds one run in memory (compactly: strings go straight into the heap, rows are fixed
/// width) and writes it with [`RunBuilder::write`].
pub struct RunBuilder {
    heap: Vec<u8>,
    /// Interned low-cardinality strings (SOP classes, transfer syntaxes, modalities, …).
    interned: HashMap<Box<str>, u32>,
    patients: Vec<PatientTmp>,
    patient_by_key: HashMap<u64, u32>,
    studies: Vec<StudyTmp>,
    study_by_uid: HashMap<u64, u32>,
    series: Vec<SeriesTmp>,
    series_by_uid: HashMap<u64, u32>,
    instances: Vec<InstanceTmp>,
    instance_by_uid: HashMap<u64, u32>,
    removed: Vec<RemovedTmp>,
    segments: std::collections::BTreeSet<u64>,
    seq_max: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RemovedTmp {
    hash: u64,
    sop: u32,
    study: u32,
    series: u32,
    seq: u64,
}

/// An instance removed (deleted, or replaced by a newer copy) as of `seq`: rows for it with a
/// lower seq are dead.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Removal {
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub seq: u64,
}

impl Default for RunBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// What a written run holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunCounts {
    pub patients: u32,
    pub studies: u32,
    pub series: u32,
    pub instances: u32,
    pub removed: u32,
    pub file_bytes: u64,
}

impl RunBuilder {
    pub fn new() -> Self {
        // Offset 0 of the heap is the empty string.
        RunBuilder {
            heap: vec![0],
            interned: HashMap::new(),
            patients: Vec::new(),
            patient_by_key: HashMap::new(),
            studies: Vec::new(),
            study_by_uid: HashMap::new(),
            series: Vec::new(),
            series_by_uid: HashMap::new(),
            instances: Vec::new(),
            instance_by_uid: HashMap::new(),
            removed: Vec::new(),
            segments: std::collections::BTreeSet::new(),
            seq_max: 0,
        }
    }

    /// Records that the run indexes segment `segment_id` (whole).
    pub fn cover(&mut self, segment_id: u64) {
        self.segments.insert(segment_id);
    }

    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.heap.len()
    }

    fn push_str(&mut self, s: &str) -> Result<u32> {
        if s.is_empty() {
            return Ok(0);
        }
        if s.len() > RUN_STRING_BYTES_MAX {
            return Err(Error::Limit {
                what: "bytes of one indexed string",
                value: s.len() as u64,
                max: RUN_STRING_BYTES_MAX as u64,
            });
        }
        let at = self.heap.len();
        if at as u64 + s.len() as u64 + 5 > u64::from(u32::MAX) {
            return Err(Error::Limit {
                what: "bytes in one index run's string heap",
                value: at as u64 + s.len() as u64,
                max: u64::from(u32::MAX),
            });
        }
        let mut n = s.len();
        loop {
            let byte = (n & 0x7F) as u8;
            n >>= 7;
            if n == 0 {
                self.heap.push(byte);
                break;
            }
            self.heap.push(byte | 0x80);
        }
        self.heap.extend_from_slice(s.as_bytes());
        Ok(at as u32)
    }

    fn intern(&mut self, s: &str) -> Result<u32> {
        if let Some(&at) = self.interned.get(s) {
            return Ok(at);
        }
        let at = self.push_str(s)?;
        if self.interned.len() < 65_536 {
            self.interned.insert(Box::from(s), at);
        }
        Ok(at)
    }

    fn heap_str(&self, at: u32) -> &str {
        decode_heap_str(&self.heap, at as usize).unwrap_or("")
    }

    /// Finds `uid`'s slot in `map` (open addressing over the 64-bit hash, so a collision of
    /// two different UIDs cannot merge them).
    fn slot<T>(
        &self,
        map: &HashMap<u64, u32>,
        rows: &[T],
        uid_of: impl Fn(&T) -> u32,
        uid: &str,
    ) -> (u64, Option<u32>) {
        let mut h = key_hash(uid);
        loop {
            match map.get(&h) {
                None => return (h, None),
                Some(&row) if self.heap_str(uid_of(&rows[row as usize])) == uid => {
                    return (h, Some(row))
                }
                Some(_) => h = h.wrapping_add(0x9E37_79B9_7F4A_7C15),
            }
        }
    }

    /// Adds an instance (a newer `seq` of the same SOP Instance UID replaces the older).
    pub fn add(
        &mut self,
        attrs: &InstanceAttrs,
        location: InstanceLocation,
        seq: u64,
    ) -> Result<()> {
        if self.instances.len() as u64 >= RUN_INSTANCES_MAX {
            return Err(Error::Limit {
                what: "instances in one index run",
                value: self.instances.len() as u64 + 1,
                max: RUN_INSTANCES_MAX,
            });
        }
        if attrs.sop_instance_uid.is_empty()
            || attrs.series_instance_uid.is_empty()
            || attrs.study_instance_uid.is_empty()
        {
            return Err(Error::InvalidArgument(format!(
                "an indexed instance needs study, series and SOP instance UIDs (got {:?}, {:?}, {:?})",
                attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid
            )));
        }
        self.seq_max = self.seq_max.max(seq);

        // Patient (PatientID + issuer).
        let patient_key = format!("{}\u{0}{}", attrs.patient_id, attrs.issuer_of_patient_id);
        let patient_hash = key_hash(&patient_key);
        let patient_strs = |b: &mut Self| -> Result<[u32; 5]> {
            Ok([
                b.push_str(&attrs.patient_id)?,
                b.push_str(&attrs.issuer_of_patient_id)?,
                b.push_str(&attrs.patient_name)?,
                b.push_str(&attrs.patient_birth_date)?,
                b.intern(&attrs.patient_sex)?,
            ])
        };
        let patient = match self.patient_by_key.get(&patient_hash) {
            Some(&p)
                if self.heap_str(self.patients[p as usize].strs[0]) == attrs.patient_id
                    && self.heap_str(self.patients[p as usize].strs[1])
                        == attrs.issuer_of_patient_id =>
            {
                if seq > self.patients[p as usize].seq {
                    // The newest instance's patient-level attributes win.
                    let strs = patient_strs(self)?;
                    self.patients[p as usize] = PatientTmp { strs, seq };
                }
                p
            }
            _ => {
                let strs = patient_strs(self)?;
                let p = self.patients.len() as u32;
                self.patients.push(PatientTmp { strs, seq });
                // On a (practically impossible) hash collision the later patient gets its own
                // row and the map keeps the first; both rows stay correct.
                self.patient_by_key.entry(patient_hash).or_insert(p);
                p
            }
        };

        // Study.
        let (study_hash, study) = self.slot(
            &self.study_by_uid,
            &self.studies,
            |s| s.uid,
            &attrs.study_instance_uid,
        );
        let study_strs = |b: &mut Self| -> Result<[u32; 5]> {
            Ok([
                b.push_str(&attrs.study_time)?,
                b.push_str(&attrs.accession_number)?,
                b.push_str(&attrs.study_id)?,
                b.push_str(&attrs.study_description)?,
                b.push_str(&attrs.referring_physician_name)?,
            ])
        };
        let study = match study {
            Some(s) => {
                if seq > self.studies[s as usize].seq {
                    // The newest instance's study-level attributes win.
                    let strs = study_strs(self)?;
                    let st = &mut self.studies[s as usize];
                    st.strs = strs;
                    st.patient = patient;
                    st.date = date_key(&attrs.study_date).unwrap_or(0);
                    st.seq = seq;
                }
                s
            }
            None => {
                let strs = study_strs(self)?;
                let uid = self.push_str(&attrs.study_instance_uid)?;
                let s = self.studies.len() as u32;
                self.studies.push(StudyTmp {
                    uid,
                    patient,
                    date: date_key(&attrs.study_date).unwrap_or(0),
                    strs,
                    seq,
                    modalities: Vec::new(),
                });
                self.study_by_uid.insert(study_hash, s);
                s
            }
        };

        // Series.
        let (series_hash, series) = self.slot(
            &self.series_by_uid,
            &self.series,
            |s| s.uid,
            &attrs.series_instance_uid,
        );
        let modality = self.intern(&attrs.modality)?;
        let series_strs = |b: &mut Self| -> Result<[u32; 3]> {
            Ok([
                b.push_str(&attrs.series_description)?,
                b.intern(&attrs.body_part_examined)?,
                b.push_str(&attrs.performed_procedure_step_start_date)?,
            ])
        };
        let series = match series {
            Some(s) => {
                if seq > self.series[s as usize].seq {
                    let strs = series_strs(self)?;
                    let se = &mut self.series[s as usize];
                    se.strs = strs;
                    se.modality = modality;
                    se.number = attrs.series_number.unwrap_or(NUMBER_ABSENT);
                    se.seq = seq;
                }
                s
            }
            None => {
                let strs = series_strs(self)?;
                let uid = self.push_str(&attrs.series_instance_uid)?;
                let s = self.series.len() as u32;
                self.series.push(SeriesTmp {
                    uid,
                    study,
                    modality,
                    number: attrs.series_number.unwrap_or(NUMBER_ABSENT),
                    strs,
                    seq,
                });
                self.series_by_uid.insert(series_hash, s);
                s
            }
        };
        if !attrs.modality.is_empty()
            && !self.studies[study as usize].modalities.contains(&modality)
        {
            self.studies[study as usize].modalities.push(modality);
        }

        // Instance.
        let extras = if attrs.extra.is_empty() {
            0
        } else {
            let mut text = String::new();
            for (tag, value) in &attrs.extra {
                if value.len() > 1024 {
                    continue; // documented: long extra values are not indexed
                }
                text.push_str(&format!("{:08X}", tag.0));
                text.push_str(value);
                text.push('\u{0}');
            }
            self.push_str(&text)?
        };
        let row = InstanceTmp {
            sop: 0,
            class: self.intern(&attrs.sop_class_uid)?,
            series,
            number: attrs.instance_number.unwrap_or(NUMBER_ABSENT),
            frames: attrs.number_of_frames.unwrap_or(U32_ABSENT),
            rows: attrs.rows.map_or(U32_ABSENT, u32::from),
            columns: attrs.columns.map_or(U32_ABSENT, u32::from),
            ts: self.intern(&attrs.transfer_syntax_uid)?,
            extras,
            seq,
            location,
        };
        let (sop_hash, existing) = self.slot(
            &self.instance_by_uid,
            &self.instances,
            |i| i.sop,
            &attrs.sop_instance_uid,
        );
        match existing {
            Some(i) if self.instances[i as usize].seq >= seq => {}
            Some(i) => {
                let sop = self.instances[i as usize].sop;
                self.instances[i as usize] = InstanceTmp { sop, ..row };
            }
            None => {
                let sop = self.push_str(&attrs.sop_instance_uid)?;
                let i = self.instances.len() as u32;
                self.instances.push(InstanceTmp { sop, ..row });
                self.instance_by_uid.insert(sop_hash, i);
            }
        }
        Ok(())
    }

    /// Records a removal: older runs' rows for the instance are dead once this run exists.
    pub fn remove(&mut self, removal: &Removal) -> Result<()> {
        self.seq_max = self.seq_max.max(removal.seq);
        let entry = RemovedTmp {
            hash: key_hash(&removal.sop_instance_uid),
            sop: self.push_str(&removal.sop_instance_uid)?,
            study: self.push_str(&removal.study_instance_uid)?,
            series: self.push_str(&removal.series_instance_uid)?,
            seq: removal.seq,
        };
        self.removed.push(entry);
        Ok(())
    }

    /// Writes the run to `path` (through a temporary file, fsynced, renamed) and returns what
    /// it holds.
    pub fn write(self, path: &Path) -> Result<RunCounts> {
        let tmp = path.with_extension("kvi.tmp");
        let name = tmp.display().to_string();
        let io = |op: &'static str| {
            let name = name.clone();
            move |e: std::io::Error| Error::io(op, name, e)
        };
        let file = File::create(&tmp).map_err(io("create index run"))?;
        let mut out = BlockWriter::new(BufWriter::with_capacity(1 << 20, file));
        out.write_all(&[0u8; RUN_HEADER_BYTES as usize])
            .map_err(io("write index run"))?;
        let counts = self
            .write_sections(&mut out)
            .map_err(io("write index run"))?;
        let Written {
            mut writer,
            sections,
            crcs,
            covered_bytes,
        } = out.finish().map_err(io("write index run"))?;
        let crc_at = RUN_HEADER_BYTES + covered_bytes;
        let mut crc_bytes = Vec::with_capacity(crcs.len() * 4);
        for c in &crcs {
            crc_bytes.extend_from_slice(&c.to_le_bytes());
        }
        writer
            .write_all(&crc_bytes)
            .map_err(io("write index run"))?;
        let file_bytes = crc_at + crc_bytes.len() as u64;

        let mut header = [0u8; RUN_HEADER_BYTES as usize];
        header[0..8].copy_from_slice(&RUN_MAGIC);
        header[8..12].copy_from_slice(&RUN_FORMAT_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(RUN_HEADER_BYTES as u32).to_le_bytes());
        header[16..24].copy_from_slice(&file_bytes.to_le_bytes());
        header[24..32].copy_from_slice(&self.seq_max.to_le_bytes());
        header[32..36].copy_from_slice(&counts.patients.to_le_bytes());
        header[36..40].copy_from_slice(&counts.studies.to_le_bytes());
        header[40..44].copy_from_slice(&counts.series.to_le_bytes());
        header[44..48].copy_from_slice(&counts.instances.to_le_bytes());
        header[48..52].copy_from_slice(&counts.removed.to_le_bytes());
        header[52..56].copy_from_slice(&(RUN_BLOCK_BYTES as u32).to_le_bytes());
        header[56..64].copy_from_slice(&crc_at.to_le_bytes());
        for (i, (off, len)) in sections.iter().enumerate() {
            let at = HEADER_SECTIONS_AT + i * 16;
            header[at..at + 8].copy_from_slice(&off.to_le_bytes());
            header[at + 8..at + 16].copy_from_slice(&len.to_le_bytes());
        }
        let crc_table_crc = crc32fast::hash(&crc_bytes);
        header[500..504].copy_from_slice(&crc_table_crc.to_le_bytes());
        let header_crc = crc32fast::hash(&header[..508]);
        header[508..512].copy_from_slice(&header_crc.to_le_bytes());
        writer.flush().map_err(io("write index run"))?;
        let mut file = writer
            .into_inner()
            .map_err(|e| Error::io("write index run", name.clone(), e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .map_err(io("write index run"))?;
        file.write_all(&header).map_err(io("write index run"))?;
        file.sync_data().map_err(io("fdatasync index run"))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io("rename index run"))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync index directory"))?;
        }
        Ok(RunCounts {
            file_bytes,
            ..counts
        })
    }

    fn write_sections(&self, out: &mut BlockWriter) -> std::io::Result<RunCounts> {
        // Row order: studies as added; series grouped by study (then series number, arrival);
        // instances grouped by series (then instance number, arrival).
        let mut series_order: Vec<u32> = (0..self.series.len() as u32).collect();
        series_order.sort_by_key(|&s| {
            let se = &self.series[s as usize];
            (se.study, se.number, s)
        });
        let mut series_row = vec![0u32; self.series.len()];
        for (row, &s) in series_order.iter().enumerate() {
            series_row[s as usize] = row as u32;
        }
        let mut instance_order: Vec<u32> = (0..self.instances.len() as u32).collect();
        instance_order.sort_by_key(|&i| {
            let inst = &self.instances[i as usize];
            (series_row[inst.series as usize], inst.number, i)
        });
        let mut series_first = vec![u32::MAX; self.series.len()];
        let mut series_count = vec![0u32; self.series.len()];
        for (row, &i) in instance_order.iter().enumerate() {
            let s = self.instances[i as usize].series as usize;
            series_first[s] = series_first[s].min(row as u32);
            series_count[s] += 1;
        }
        let mut study_first = vec![u32::MAX; self.studies.len()];
        let mut study_series = vec![0u32; self.studies.len()];
        let mut study_instances = vec![0u32; self.studies.len()];
        for (row, &s) in series_order.iter().enumerate() {
            let st = self.series[s as usize].study as usize;
            study_first[st] = study_first[st].min(row as u32);
            study_series[st] += 1;
            study_instances[st] += series_count[s as usize];
        }

        // Heap, plus the ModalitiesInStudy strings appended at its end.
        let mut heap_tail = Vec::new();
        let mut modalities_at = vec![0u32; self.studies.len()];
        for (s, study) in self.studies.iter().enumerate() {
            if study.modalities.is_empty() {
                continue;
            }
            let mut names: Vec<&str> = study.modalities.iter().map(|&m| self.heap_str(m)).collect();
            names.sort_unstable();
            let joined = names.join("\\");
            modalities_at[s] = (self.heap.len() + heap_tail.len()) as u32;
            let mut n = joined.len();
            loop {
                let byte = (n & 0x7F) as u8;
                n >>= 7;
                if n == 0 {
                    heap_tail.push(byte);
                    break;
                }
                heap_tail.push(byte | 0x80);
            }
            heap_tail.extend_from_slice(joined.as_bytes());
        }
        out.begin(Section::Heap);
        out.write_all(&self.heap)?;
        out.write_all(&heap_tail)?;

        out.begin(Section::Patients);
        for p in &self.patients {
            for v in p.strs {
                out.write_all(&v.to_le_bytes())?;
            }
        }

        out.begin(Section::Studies);
        for (s, st) in self.studies.iter().enumerate() {
            let mut row = [0u8; STUDY_ROW_BYTES as usize];
            let fields = [
                st.uid,
                st.patient,
                st.date,
                st.strs[0],
                st.strs[1],
                st.strs[2],
                st.strs[3],
                st.strs[4],
                if study_series[s] == 0 {
                    0
                } else {
                    study_first[s]
                },
                study_series[s],
                study_instances[s],
                modalities_at[s],
            ];
            for (k, v) in fields.iter().enumerate() {
                row[k * 4..k * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
            out.write_all(&row)?;
        }

        out.begin(Section::Series);
        for &s in &series_order {
            let se = &self.series[s as usize];
            let mut row = [0u8; SERIES_ROW_BYTES as usize];
            let fields = [
                se.uid,
                se.study,
                se.modality,
                se.number as u32,
                se.strs[0],
                se.strs[1],
                se.strs[2],
                if series_count[s as usize] == 0 {
                    0
                } else {
                    series_first[s as usize]
                },
                series_count[s as usize],
                0,
            ];
            for (k, v) in fields.iter().enumerate() {
                row[k * 4..k * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
            out.write_all(&row)?;
        }

        out.begin(Section::Instances);
        for &i in &instance_order {
            let inst = &self.instances[i as usize];
            let mut row = [0u8; INSTANCE_ROW_BYTES as usize];
            let fields = [
                inst.sop,
                inst.class,
                series_row[inst.series as usize],
                inst.number as u32,
                inst.frames,
                inst.rows,
                inst.columns,
                inst.ts,
                inst.extras,
                0,
            ];
            for (k, v) in fields.iter().enumerate() {
                row[k * 4..k * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
            let wide = [
                inst.seq,
                inst.location.segment_id,
                inst.location.offset,
                inst.location.object_len,
            ];
            for (k, v) in wide.iter().enumerate() {
                row[40 + k * 8..48 + k * 8].copy_from_slice(&v.to_le_bytes());
            }
            out.write_all(&row)?;
        }

        let mut keys: Vec<(u64, u32)> = Vec::new();
        let put_keys = |out: &mut BlockWriter,
                        section: Section,
                        keys: &mut Vec<(u64, u32)>|
         -> std::io::Result<()> {
            keys.sort_unstable();
            keys.dedup();
            out.begin(section);
            let mut buf = Vec::with_capacity(keys.len().min(1 << 16) * 12);
            for (k, row) in keys.drain(..) {
                buf.extend_from_slice(&k.to_le_bytes());
                buf.extend_from_slice(&row.to_le_bytes());
                if buf.len() >= 1 << 20 {
                    out.write_all(&buf)?;
                    buf.clear();
                }
            }
            out.write_all(&buf)
        };
        keys.extend(
            self.studies
                .iter()
                .enumerate()
                .map(|(s, st)| (key_hash(self.heap_str(st.uid)), s as u32)),
        );
        put_keys(out, Section::KeyStudyUid, &mut keys)?;
        keys.extend(series_order.iter().enumerate().map(|(row, &s)| {
            (
                key_hash(self.heap_str(self.series[s as usize].uid)),
                row as u32,
            )
        }));
        put_keys(out, Section::KeySeriesUid, &mut keys)?;
        keys.extend(instance_order.iter().enumerate().map(|(row, &i)| {
            (
                key_hash(self.heap_str(self.instances[i as usize].sop)),
                row as u32,
            )
        }));
        put_keys(out, Section::KeySopUid, &mut keys)?;
        for (s, st) in self.studies.iter().enumerate() {
            let id = self.heap_str(self.patients[st.patient as usize].strs[0]);
            for v in split_values(id) {
                keys.push((key_hash(v), s as u32));
            }
        }
        put_keys(out, Section::KeyPatientId, &mut keys)?;
        for (s, st) in self.studies.iter().enumerate() {
            for v in split_values(self.heap_str(st.strs[1])) {
                keys.push((key_hash(v), s as u32));
            }
        }
        put_keys(out, Section::KeyAccession, &mut keys)?;
        for (s, st) in self.studies.iter().enumerate() {
            if st.date != 0 {
                keys.push((u64::from(st.date), s as u32));
            }
        }
        put_keys(out, Section::KeyStudyDate, &mut keys)?;
        for (s, st) in self.studies.iter().enumerate() {
            for &m in &st.modalities {
                keys.push((key_hash(self.heap_str(m)), s as u32));
            }
        }
        put_keys(out, Section::KeyModality, &mut keys)?;

        out.begin(Section::Removed);
        let mut removed = self.removed.clone();
        removed.sort_unstable();
        for r in &removed {
            out.write_all(&r.hash.to_le_bytes())?;
            out.write_all(&r.sop.to_le_bytes())?;
            out.write_all(&r.study.to_le_bytes())?;
            out.write_all(&r.series.to_le_bytes())?;
            out.write_all(&0u32.to_le_bytes())?;
            out.write_all(&r.seq.to_le_bytes())?;
        }
        out.begin(Section::Segments);
        for id in &self.segments {
            out.write_all(&id.to_le_bytes())?;
        }
        out.end_section();
        Ok(RunCounts {
            patients: self.patients.len() as u32,
            studies: self.studies.len() as u32,
            series: self.series.len() as u32,
            instances: self.instances.len() as u32,
            removed: removed.len() as u32,
            file_bytes: 0,
        })
    }
}

/// A writer that records section boundaries and a CRC per 4096-byte block of what it writes
/// after the header.
struct BlockWriter {
    inner: BufWriter<File>,
    written: u64,
    block: crc32fast::Hasher,
    block_fill: u64,
    crcs: Vec<u32>,
    sections: [(u64, u64); SECTION_COUNT],
    current: Option<(Section, u64)>,
}

impl BlockWriter {
    fn new(inner: BufWriter<File>) -> Self {
        BlockWriter {
            inner,
            written: 0,
            block: crc32fast::Hasher::new(),
            block_fill: 0,
            crcs: Vec::new(),
            sections: [(0, 0); SECTION_COUNT],
            current: None,
        }
    }

    fn begin(&mut self, section: Section) {
        self.end_section();
        self.current = Some((section, self.written));
    }

    fn end_section(&mut self) {
        if let Some((section, start)) = self.current.take() {
            self.sections[section as usize] = (start, self.written - start);
        }
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes)?;
        // The header (the first RUN_HEADER_BYTES) is checked by its own CRC.
        let header_left = RUN_HEADER_BYTES.saturating_sub(self.written);
        let skip = header_left.min(bytes.len() as u64) as usize;
        self.written += skip as u64;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            let n = (RUN_BLOCK_BYTES - self.block_fill).min(bytes.len() as u64) as usize;
            self.block.update(&bytes[..n]);
            self.block_fill += n as u64;
            self.written += n as u64;
            bytes = &bytes[n..];
            if self.block_fill == RUN_BLOCK_BYTES {
                let done = std::mem::replace(&mut self.block, crc32fast::Hasher::new());
                self.crcs.push(done.finalize());
                self.block_fill = 0;
            }
        }
        Ok(())
    }

    /// Pads the last block with zeros and returns what was written.
    fn finish(mut self) -> std::io::Result<Written> {
        self.end_section();
        if self.block_fill > 0 {
            let pad = vec![0u8; (RUN_BLOCK_BYTES - self.block_fill) as usize];
            // Padding through the same path keeps the CRC and the bytes in step.
            self.write_all(&pad)?;
        }
        Ok(Written {
            covered_bytes: self.written - RUN_HEADER_BYTES,
            writer: self.inner,
            sections: self.sections,
            crcs: self.crcs,
        })
    }
}

/// A finished [`BlockWriter`].
struct Written {
    writer: BufWriter<File>,
    sections: [(u64, u64); SECTION_COUNT],
    /// One CRC per block after the header.
    crcs: Vec<u32>,
    covered_bytes: u64,
}

fn decode_heap_str(heap: &[u8], at: usize) -> Option<&str> {
    if at == 0 {
        return Some("");
    }
    let mut len: usize = 0;
    let mut shift = 0;
    let mut pos = at;
    loop {
        let b = *heap.get(pos)?;
        pos += 1;
        len |= usize::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return None;
        }
    }
    std::str::from_utf8(heap.get(pos..pos.checked_add(len)?)?).ok()
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// A study row as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StudyRow {
    pub row: u32,
    uid: u32,
    pub patient: u32,
    pub date: u32,
    strs: [u32; 5],
    pub first_series: u32,
    pub series_count: u32,
    pub instance_count: u32,
    modalities: u32,
}

/// A series row as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesRow {
    pub row: u32,
    uid: u32,
    pub study: u32,
    modality: u32,
    pub number: Option<i32>,
    strs: [u32; 3],
    pub first_instance: u32,
    pub instance_count: u32,
}

/// An instance row as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceRow {
    pub row: u32,
    sop: u32,
    class: u32,
    pub series: u32,
    pub number: Option<i32>,
    pub frames: Option<u32>,
    pub rows: Option<u16>,
    pub columns: Option<u16>,
    ts: u32,
    extras: u32,
    pub seq: u64,
    pub location: InstanceLocation,
}

/// Most damaged places [`Run::scrub`] lists per run.
pub const RUN_PROBLEMS_LISTED_MAX: usize = 1000;

/// A damaged place of a run file, found by [`Run::scrub`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunProblem {
    /// File offset of the damaged bytes (the block's start, or the checksum field).
    pub offset: u64,
    /// The damaged 4 KiB block, when a block failed.
    pub block: Option<u64>,
    /// What failed, e.g. "block 3 checksum".
    pub what: String,
}

/// What [`Run::scrub`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunScrub {
    pub problems: Vec<RunProblem>,
    /// Damaged blocks beyond those listed.
    pub blocks_unlisted: u64,
}

impl RunScrub {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.blocks_unlisted == 0
    }
}

/// An open run (see the module documentation).
pub struct Run {
    path: PathBuf,
    map: crate::io::uring::RegisteredMap,
    seq_max: u64,
    counts: RunCounts,
    sections: [(u64, u64); SECTION_COUNT],
    crc_at: u64,
    /// One bit per block: verified already.
    verified: Vec<AtomicU64>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("path", &self.path)
            .field("counts", &self.counts)
            .finish()
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl Run {
    /// Maps a run file, checking its header and block-CRC table.
    pub fn open(path: &Path) -> Result<Run> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io("open index run", name.clone(), e))?;
        // SAFETY: run files are immutable once renamed into place and only this process's
        // catalog deletes them (after dropping its maps); every byte read through the map is
        // checked against its block CRC before use, so a concurrent change is detected, not
        // trusted.
        let map =
            unsafe { Mmap::map(&file) }.map_err(|e| Error::io("map index run", name.clone(), e))?;
        // A page the device cannot deliver is an error of the guarded query, not a crash.
        let map = crate::io::uring::RegisteredMap::new(map);
        let bad = |offset: u64, reason: String| Error::IndexCorruption {
            file: name.clone(),
            offset,
            reason,
        };
        if (map.len() as u64) < RUN_HEADER_BYTES {
            return Err(bad(
                0,
                format!("file has {} bytes, shorter than a header", map.len()),
            ));
        }
        let h = &map[..RUN_HEADER_BYTES as usize];
        if h[0..8] != RUN_MAGIC {
            return Err(bad(0, "not an index run (bad magic)".into()));
        }
        if le32(h, 508) != crc32fast::hash(&h[..508]) {
            return Err(bad(508, "header checksum mismatch".into()));
        }
        let version = le32(h, 8);
        if version != RUN_FORMAT_VERSION {
            return Err(bad(
                8,
                format!("format version {version} is not {RUN_FORMAT_VERSION}"),
            ));
        }
        let file_bytes = le64(h, 16);
        if file_bytes != map.len() as u64 {
            return Err(bad(
                16,
                format!("header says {file_bytes} bytes, the file has {}", map.len()),
            ));
        }
        if u64::from(le32(h, 52)) != RUN_BLOCK_BYTES {
            return Err(bad(52, "unexpected block size".into()));
        }
        let crc_at = le64(h, 56);
        if crc_at < RUN_HEADER_BYTES
            || (crc_at - RUN_HEADER_BYTES) % RUN_BLOCK_BYTES != 0
            || crc_at > file_bytes
        {
            return Err(bad(56, format!("block table offset {crc_at} is invalid")));
        }
        let blocks = (crc_at - RUN_HEADER_BYTES) / RUN_BLOCK_BYTES;
        if file_bytes - crc_at != blocks * 4 {
            return Err(bad(
                56,
                "block table length does not match the covered bytes".into(),
            ));
        }
        if le32(h, 500) != crc32fast::hash(&map[crc_at as usize..]) {
            return Err(bad(crc_at, "block table checksum mismatch".into()));
        }
        let mut sections = [(0u64, 0u64); SECTION_COUNT];
        for (i, s) in sections.iter_mut().enumerate() {
            let at = HEADER_SECTIONS_AT + i * 16;
            let (off, len) = (le64(h, at), le64(h, at + 8));
            if off < RUN_HEADER_BYTES || off.checked_add(len).is_none_or(|end| end > crc_at) {
                return Err(bad(at as u64, format!("section {i} is out of bounds")));
            }
            *s = (off, len);
        }
        let counts = RunCounts {
            patients: le32(h, 32),
            studies: le32(h, 36),
            series: le32(h, 40),
            instances: le32(h, 44),
            removed: le32(h, 48),
            file_bytes,
        };
        let expect = [
            (
                Section::Patients,
                PATIENT_ROW_BYTES * u64::from(counts.patients),
            ),
            (
                Section::Studies,
                STUDY_ROW_BYTES * u64::from(counts.studies),
            ),
            (Section::Series, SERIES_ROW_BYTES * u64::from(counts.series)),
            (
                Section::Instances,
                INSTANCE_ROW_BYTES * u64::from(counts.instances),
            ),
            (
                Section::Removed,
                REMOVED_ENTRY_BYTES * u64::from(counts.removed),
            ),
        ];
        for (section, len) in expect {
            if sections[section as usize].1 != len {
                return Err(bad(
                    0,
                    format!("{section:?} section length does not match its count"),
                ));
            }
        }
        for section in [
            Section::KeyStudyUid,
            Section::KeySeriesUid,
            Section::KeySopUid,
            Section::KeyPatientId,
            Section::KeyAccession,
            Section::KeyStudyDate,
            Section::KeyModality,
        ] {
            if sections[section as usize].1 % KEY_ENTRY_BYTES != 0 {
                return Err(bad(
                    0,
                    format!("{section:?} section length is not whole entries"),
                ));
            }
        }
        let verified = (0..blocks.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Ok(Run {
            path: path.to_path_buf(),
            seq_max: le64(h, 24),
            map,
            counts,
            sections,
            crc_at,
            verified,
        })
    }

    /// Whether `address` lies in this run's mapping.
    pub fn contains_address(&self, address: usize) -> bool {
        let start = self.map.as_ptr() as usize;
        address >= start && address < start + self.map.len()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn counts(&self) -> RunCounts {
        self.counts
    }

    /// The highest record sequence number the run covers.
    pub fn seq_max(&self) -> u64 {
        self.seq_max
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::IndexCorruption {
            file: self.path.display().to_string(),
            offset,
            reason: reason.into(),
        }
    }

    /// `len` bytes at file offset `at`, after verifying every block they touch.
    fn bytes(&self, at: u64, len: u64) -> Result<&[u8]> {
        let end = at
            .checked_add(len)
            .filter(|&e| at >= RUN_HEADER_BYTES && e <= self.crc_at)
            .ok_or_else(|| self.corrupt(at, format!("reference to {len} bytes out of bounds")))?;
        if len > 0 {
            let first = (at - RUN_HEADER_BYTES) / RUN_BLOCK_BYTES;
            let last = (end - 1 - RUN_HEADER_BYTES) / RUN_BLOCK_BYTES;
            for block in first..=last {
                self.verify_block(block)?;
            }
        }
        Ok(&self.map[at as usize..end as usize])
    }

    fn verify_block(&self, block: u64) -> Result<()> {
        let word = &self.verified[(block / 64) as usize];
        let bit = 1u64 << (block % 64);
        if word.load(Ordering::Acquire) & bit != 0 {
            return Ok(());
        }
        let start = RUN_HEADER_BYTES + block * RUN_BLOCK_BYTES;
        let data = &self.map[start as usize..(start + RUN_BLOCK_BYTES) as usize];
        let expected = le32(&self.map, (self.crc_at + block * 4) as usize);
        if crc32fast::hash(data) != expected {
            return Err(self.corrupt(start, format!("block {block} checksum mismatch")));
        }
        word.fetch_or(bit, Ordering::AcqRel);
        Ok(())
    }

    /// Checks the header, the block-CRC table and every block again, now, whatever was
    /// verified before (a scrub for `kuvasto verify`), and lists every damaged place (at most
    /// [`RUN_PROBLEMS_LISTED_MAX`] blocks; [`RunScrub::blocks_unlisted`] counts the rest).
    /// `progress` is told the bytes checked as the scrub goes.
    pub fn scrub(&self, progress: &mut dyn FnMut(u64)) -> RunScrub {
        let mut out = RunScrub::default();
        let h = &self.map[..RUN_HEADER_BYTES as usize];
        if le32(h, 508) != crc32fast::hash(&h[..508]) {
            out.problems.push(RunProblem {
                offset: 508,
                block: None,
                what: "header checksum".into(),
            });
        }
        let table = &self.map[self.crc_at as usize..];
        if le32(h, 500) != crc32fast::hash(table) {
            out.problems.push(RunProblem {
                offset: self.crc_at,
                block: None,
                what: "block-CRC table checksum".into(),
            });
        }
        progress(RUN_HEADER_BYTES + table.len() as u64);
        let blocks = (self.crc_at - RUN_HEADER_BYTES) / RUN_BLOCK_BYTES;
        for block in 0..blocks {
            let start = RUN_HEADER_BYTES + block * RUN_BLOCK_BYTES;
            let data = &self.map[start as usize..(start + RUN_BLOCK_BYTES) as usize];
            let expected = le32(table, (block * 4) as usize);
            if crc32fast::hash(data) != expected {
                if out.problems.len() < RUN_PROBLEMS_LISTED_MAX {
                    out.problems.push(RunProblem {
                        offset: start,
                        block: Some(block),
                        what: format!("block {block} checksum"),
                    });
                } else {
                    out.blocks_unlisted += 1;
                }
            }
            progress(RUN_BLOCK_BYTES);
        }
        out
    }

    /// Verifies every block (for `kuvasto check` and tests).
    pub fn verify_all(&self) -> Result<()> {
        let blocks = (self.crc_at - RUN_HEADER_BYTES) / RUN_BLOCK_BYTES;
        (0..blocks).try_for_each(|b| self.verify_block(b))
    }

    fn row(&self, section: Section, row_bytes: u64, row: u32) -> Result<&[u8]> {
        let (off, len) = self.sections[section as usize];
        let at = u64::from(row) * row_bytes;
        if at + row_bytes > len {
            return Err(self.corrupt(off, format!("{section:?} row {row} out of range")));
        }
        self.bytes(off + at, row_bytes)
    }

    /// A string from the heap.
    pub fn str(&self, at: u32) -> Result<&str> {
        if at == 0 {
            return Ok("");
        }
        let (off, len) = self.sections[Section::Heap as usize];
        if u64::from(at) >= len {
            return Err(self.corrupt(off, format!("string reference {at} out of range")));
        }
        let prefix = self.bytes(off + u64::from(at), 4.min(len - u64::from(at)))?;
        let mut n: u64 = 0;
        let mut used = 0;
        for (i, &b) in prefix.iter().enumerate() {
            n |= u64::from(b & 0x7F) << (7 * i);
            used = i + 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if n > RUN_STRING_BYTES_MAX as u64 || u64::from(at) + used as u64 + n > len {
            return Err(self.corrupt(off + u64::from(at), "string length out of range"));
        }
        let bytes = self.bytes(off + u64::from(at) + used as u64, n)?;
        std::str::from_utf8(bytes)
            .map_err(|_| self.corrupt(off + u64::from(at), "string is not UTF-8"))
    }

    pub fn study(&self, row: u32) -> Result<StudyRow> {
        let b = self.row(Section::Studies, STUDY_ROW_BYTES, row)?;
        let f = |k: usize| le32(b, k * 4);
        let study = StudyRow {
            row,
            uid: f(0),
            patient: f(1),
            date: f(2),
            strs: [f(3), f(4), f(5), f(6), f(7)],
            first_series: f(8),
            series_count: f(9),
            instance_count: f(10),
            modalities: f(11),
        };
        if study.patient >= self.counts.patients
            || u64::from(study.first_series) + u64::from(study.series_count)
                > u64::from(self.counts.series)
        {
            return Err(self.corrupt(0, format!("study row {row} refers out of range")));
        }
        Ok(study)
    }

    pub fn series(&self, row: u32) -> Result<SeriesRow> {
        let b = self.row(Section::Series, SERIES_ROW_BYTES, row)?;
        let f = |k: usize| le32(b, k * 4);
        let number = f(3) as i32;
        let series = SeriesRow {
            row,
            uid: f(0),
            study: f(1),
            modality: f(2),
            number: (number != NUMBER_ABSENT).then_some(number),
            strs: [f(4), f(5), f(6)],
            first_instance: f(7),
            instance_count: f(8),
        };
        if series.study >= self.counts.studies
            || u64::from(series.first_instance) + u64::from(series.instance_count)
                > u64::from(self.counts.instances)
        {
            return Err(self.corrupt(0, format!("series row {row} refers out of range")));
        }
        Ok(series)
    }

    pub fn instance(&self, row: u32) -> Result<InstanceRow> {
        let b = self.row(Section::Instances, INSTANCE_ROW_BYTES, row)?;
        let f = |k: usize| le32(b, k * 4);
        let number = f(3) as i32;
        let opt = |v: u32| (v != U32_ABSENT).then_some(v);
        let instance = InstanceRow {
            row,
            sop: f(0),
            class: f(1),
            series: f(2),
            number: (number != NUMBER_ABSENT).then_some(number),
            frames: opt(f(4)),
            rows: opt(f(5)).map(|v| v as u16),
            columns: opt(f(6)).map(|v| v as u16),
            ts: f(7),
            extras: f(8),
            seq: le64(b, 40),
            location: InstanceLocation {
                segment_id: le64(b, 48),
                offset: le64(b, 56),
                object_len: le64(b, 64),
            },
        };
        if instance.series >= self.counts.series {
            return Err(self.corrupt(0, format!("instance row {row} refers out of range")));
        }
        Ok(instance)
    }

    fn key_entry(&self, section: Section, i: u64) -> Result<(u64, u32)> {
        let (off, _) = self.sections[section as usize];
        let b = self.bytes(off + i * KEY_ENTRY_BYTES, KEY_ENTRY_BYTES)?;
        Ok((le64(b, 0), le32(b, 8)))
    }

    /// Rows whose key lies in `lo..=hi`, in key order.
    pub fn rows_in_range(&self, section: Section, lo: u64, hi: u64) -> Result<Vec<u32>> {
        let n = self.sections[section as usize].1 / KEY_ENTRY_BYTES;
        // First entry with key >= lo.
        let (mut a, mut b) = (0u64, n);
        while a < b {
            let mid = a + (b - a) / 2;
            if self.key_entry(section, mid)?.0 < lo {
                a = mid + 1;
            } else {
                b = mid;
            }
        }
        let mut out = Vec::new();
        let mut i = a;
        while i < n {
            let (k, row) = self.key_entry(section, i)?;
            if k > hi {
                break;
            }
            out.push(row);
            i += 1;
        }
        Ok(out)
    }

    /// Rows whose key is `key`.
    pub fn rows_with(&self, section: Section, key: u64) -> Result<Vec<u32>> {
        self.rows_in_range(section, key, key)
    }

    /// The study row of StudyInstanceUID `uid`.
    pub fn find_study(&self, uid: &str) -> Result<Option<StudyRow>> {
        for row in self.rows_with(Section::KeyStudyUid, key_hash(uid))? {
            let study = self.study(row)?;
            if self.str(study.uid)? == uid {
                return Ok(Some(study));
            }
        }
        Ok(None)
    }

    /// The series row of SeriesInstanceUID `uid`.
    pub fn find_series(&self, uid: &str) -> Result<Option<SeriesRow>> {
        for row in self.rows_with(Section::KeySeriesUid, key_hash(uid))? {
            let series = self.series(row)?;
            if self.str(series.uid)? == uid {
                return Ok(Some(series));
            }
        }
        Ok(None)
    }

    /// The instance row of SOPInstanceUID `uid`.
    pub fn find_instance(&self, uid: &str) -> Result<Option<InstanceRow>> {
        for row in self.rows_with(Section::KeySopUid, key_hash(uid))? {
            let instance = self.instance(row)?;
            if self.str(instance.sop)? == uid {
                return Ok(Some(instance));
            }
        }
        Ok(None)
    }

    /// The seq at which this run records `uid` as removed, if it does.
    pub fn removed_at(&self, uid: &str) -> Result<Option<u64>> {
        if self.counts.removed == 0 {
            return Ok(None);
        }
        let (off, len) = self.sections[Section::Removed as usize];
        let n = len / REMOVED_ENTRY_BYTES;
        let h = key_hash(uid);
        let entry = |i: u64| -> Result<(u64, u32, u64)> {
            let b = self.bytes(off + i * REMOVED_ENTRY_BYTES, REMOVED_ENTRY_BYTES)?;
            Ok((le64(b, 0), le32(b, 8), le64(b, 24)))
        };
        let (mut a, mut b) = (0u64, n);
        while a < b {
            let mid = a + (b - a) / 2;
            if entry(mid)?.0 < h {
                a = mid + 1;
            } else {
                b = mid;
            }
        }
        let mut found = None;
        while a < n {
            let (k, at, seq) = entry(a)?;
            if k != h {
                break;
            }
            if self.str(at)? == uid {
                found = Some(found.map_or(seq, |s: u64| s.max(seq)));
            }
            a += 1;
        }
        Ok(found)
    }

    /// The segments the run indexes.
    pub fn segments(&self) -> Result<Vec<u64>> {
        let (off, len) = self.sections[Section::Segments as usize];
        if len % 8 != 0 {
            return Err(self.corrupt(off, "segment list is not whole entries"));
        }
        let b = self.bytes(off, len)?;
        Ok(b.chunks_exact(8).map(|c| le64(c, 0)).collect())
    }

    /// Every removal the run records.
    pub fn removals(&self) -> Result<Vec<Removal>> {
        let (off, len) = self.sections[Section::Removed as usize];
        let mut out = Vec::new();
        for i in 0..len / REMOVED_ENTRY_BYTES {
            let b = self.bytes(off + i * REMOVED_ENTRY_BYTES, REMOVED_ENTRY_BYTES)?;
            out.push(Removal {
                sop_instance_uid: self.str(le32(b, 8))?.to_string(),
                study_instance_uid: self.str(le32(b, 12))?.to_string(),
                series_instance_uid: self.str(le32(b, 16))?.to_string(),
                seq: le64(b, 24),
            });
        }
        Ok(out)
    }

    /// Fills the patient- and study-level fields of `out` from a study row.
    pub fn study_attrs(&self, study: &StudyRow, out: &mut InstanceAttrs) -> Result<()> {
        let p = self.row(Section::Patients, PATIENT_ROW_BYTES, study.patient)?;
        out.patient_id = self.str(le32(p, 0))?.to_string();
        out.issuer_of_patient_id = self.str(le32(p, 4))?.to_string();
        out.patient_name = self.str(le32(p, 8))?.to_string();
        out.patient_birth_date = self.str(le32(p, 12))?.to_string();
        out.patient_sex = self.str(le32(p, 16))?.to_string();
        out.study_instance_uid = self.str(study.uid)?.to_string();
        out.study_date = if study.date == 0 {
            String::new()
        } else {
            format!("{:08}", study.date)
        };
        out.study_time = self.str(study.strs[0])?.to_string();
        out.accession_number = self.str(study.strs[1])?.to_string();
        out.study_id = self.str(study.strs[2])?.to_string();
        out.study_description = self.str(study.strs[3])?.to_string();
        out.referring_physician_name = self.str(study.strs[4])?.to_string();
        Ok(())
    }

    /// The patient name of a study row's patient (for filtering before decoding the rest).
    pub fn study_patient_name(&self, study: &StudyRow) -> Result<&str> {
        let p = self.row(Section::Patients, PATIENT_ROW_BYTES, study.patient)?;
        self.str(le32(p, 8))
    }

    /// ModalitiesInStudy of a study row (sorted, `\`-separated).
    pub fn study_modalities(&self, study: &StudyRow) -> Result<&str> {
        self.str(study.modalities)
    }

    pub fn study_uid(&self, study: &StudyRow) -> Result<&str> {
        self.str(study.uid)
    }

    /// Fills the series-level fields of `out` from a series row.
    pub fn series_attrs(&self, series: &SeriesRow, out: &mut InstanceAttrs) -> Result<()> {
        out.series_instance_uid = self.str(series.uid)?.to_string();
        out.modality = self.str(series.modality)?.to_string();
        out.series_number = series.number;
        out.series_description = self.str(series.strs[0])?.to_string();
        out.body_part_examined = self.str(series.strs[1])?.to_string();
        out.performed_procedure_step_start_date = self.str(series.strs[2])?.to_string();
        Ok(())
    }

    pub fn series_uid(&self, series: &SeriesRow) -> Result<&str> {
        self.str(series.uid)
    }

    pub fn series_modality(&self, series: &SeriesRow) -> Result<&str> {
        self.str(series.modality)
    }

    pub fn sop_uid(&self, instance: &InstanceRow) -> Result<&str> {
        self.str(instance.sop)
    }

    /// Fills the instance-level fields of `out` from an instance row.
    pub fn instance_attrs(&self, instance: &InstanceRow, out: &mut InstanceAttrs) -> Result<()> {
        out.sop_instance_uid = self.str(instance.sop)?.to_string();
        out.sop_class_uid = self.str(instance.class)?.to_string();
        out.instance_number = instance.number;
        out.number_of_frames = instance.frames;
        out.rows = instance.rows;
        out.columns = instance.columns;
        out.transfer_syntax_uid = self.str(instance.ts)?.to_string();
        out.extra.clear();
        let extras = self.str(instance.extras)?;
        for item in extras.split('\u{0}').filter(|s| !s.is_empty()) {
            let tag = item
                .get(..8)
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .ok_or_else(|| self.corrupt(0, "malformed extra attribute"))?;
            out.extra.push((Tag(tag), item[8..].to_string()));
        }
        out.extra.sort_by_key(|(t, _)| *t);
        Ok(())
    }

    /// All attributes of an instance row (walking up to its series, study and patient).
    pub fn full_attrs(&self, instance: &InstanceRow) -> Result<InstanceAttrs> {
        let mut out = InstanceAttrs::default();
        let series = self.series(instance.series)?;
        let study = self.study(series.study)?;
        self.study_attrs(&study, &mut out)?;
        self.series_attrs(&series, &mut out)?;
        self.instance_attrs(instance, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn attrs(study: u32, series: u32, instance: u32) -> InstanceAttrs {
        InstanceAttrs {
            patient_id: format!("PAT{}", study % 7),
            patient_name: format!("Doe^Jane{}", study % 7),
            patient_birth_date: "19700101".into(),
            patient_sex: "F".into(),
            study_instance_uid: format!("1.2.3.{study}"),
            study_date: format!("2024{:02}{:02}", 1 + study % 12, 1 + study % 28),
            study_time: "101500".into(),
            accession_number: format!("ACC{study}"),
            study_id: format!("{study}"),
            study_description: "CHEST".into(),
            modality: if series % 2 == 0 { "CT" } else { "SR" }.into(),
            series_instance_uid: format!("1.2.3.{study}.{series}"),
            series_number: Some(series as i32),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: format!("1.2.3.{study}.{series}.{instance}"),
            instance_number: Some(instance as i32),
            rows: Some(512),
            columns: Some(512),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            extra: vec![(Tag::new(0x0018, 0x0050), "1.25".into())],
            ..Default::default()
        }
    }

    fn build(n_studies: u32) -> (tempfile::TempDir, Run) {
        let dir = tempfile::tempdir().unwrap();
        let mut b = RunBuilder::new();
        let mut seq = 0;
        for st in 0..n_studies {
            for se in 0..3 {
                for i in (0..4).rev() {
                    seq += 1;
                    let loc = InstanceLocation {
                        segment_id: 1,
                        offset: seq * 100,
                        object_len: 10,
                    };
                    b.add(&attrs(st, se, i), loc, seq).unwrap();
                }
            }
        }
        b.cover(7);
        b.cover(3);
        b.remove(&Removal {
            sop_instance_uid: "1.2.3.gone".into(),
            study_instance_uid: "1.2.3.0".into(),
            series_instance_uid: "1.2.3.0.0".into(),
            seq: 999,
        })
        .unwrap();
        let path = dir.path().join("r.kvi");
        let counts = b.write(&path).unwrap();
        assert_eq!(counts.instances, n_studies * 12);
        let run = Run::open(&path).unwrap();
        (dir, run)
    }

    #[test]
    fn a_run_round_trips_the_hierarchy_and_its_keys() {
        let (_dir, run) = build(20);
        let c = run.counts();
        assert_eq!(
            (c.studies, c.series, c.instances, c.patients),
            (20, 60, 240, 7)
        );
        run.verify_all().unwrap();
        let study = run.find_study("1.2.3.5").unwrap().unwrap();
        assert_eq!(study.series_count, 3);
        assert_eq!(study.instance_count, 12);
        assert_eq!(run.study_modalities(&study).unwrap(), "CT\\SR");
        let mut a = InstanceAttrs::default();
        run.study_attrs(&study, &mut a).unwrap();
        assert_eq!(a.patient_id, "PAT5");
        assert_eq!(a.accession_number, "ACC5");
        // Series of a study are contiguous and belong to it; instances sorted by number.
        for s in study.first_series..study.first_series + study.series_count {
            let series = run.series(s).unwrap();
            assert_eq!(series.study, study.row);
            let numbers: Vec<_> = (series.first_instance
                ..series.first_instance + series.instance_count)
                .map(|i| run.instance(i).unwrap().number.unwrap())
                .collect();
            assert_eq!(numbers, vec![0, 1, 2, 3]);
        }
        let inst = run.find_instance("1.2.3.5.2.3").unwrap().unwrap();
        let full = run.full_attrs(&inst).unwrap();
        assert_eq!(full, attrs(5, 2, 3));
        assert!(run.find_instance("1.2.3.5.2.9").unwrap().is_none());
        // Secondary keys.
        let by_pid = run
            .rows_with(Section::KeyPatientId, key_hash("PAT3"))
            .unwrap();
        assert_eq!(by_pid.len(), 3); // studies 3, 10, 17
        let by_acc = run
            .rows_with(Section::KeyAccession, key_hash("ACC7"))
            .unwrap();
        assert_eq!(
            by_acc,
            vec![run.find_study("1.2.3.7").unwrap().unwrap().row]
        );
        let feb = run
            .rows_in_range(Section::KeyStudyDate, 20240201, 20240229)
            .unwrap();
        assert_eq!(feb.len(), 2); // studies 1 and 13
        assert_eq!(run.removed_at("1.2.3.gone").unwrap(), Some(999));
        assert_eq!(run.removed_at("1.2.3.5.2.3").unwrap(), None);
        assert_eq!(run.removals().unwrap()[0].study_instance_uid, "1.2.3.0");
        assert_eq!(run.segments().unwrap(), vec![3, 7]);
    }

    #[test]
    fn a_newer_copy_of_an_instance_replaces_the_older_in_the_same_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = RunBuilder::new();
        let mut a = attrs(1, 1, 1);
        b.add(&a, InstanceLocation::default(), 5).unwrap();
        a.study_description = "NEWER".into();
        a.rows = Some(256);
        b.add(&a, InstanceLocation::default(), 9).unwrap();
        a.study_description = "OLDER".into();
        b.add(&a, InstanceLocation::default(), 2).unwrap();
        let path = dir.path().join("r.kvi");
        assert_eq!(b.write(&path).unwrap().instances, 1);
        let run = Run::open(&path).unwrap();
        let inst = run.find_instance(&a.sop_instance_uid).unwrap().unwrap();
        let full = run.full_attrs(&inst).unwrap();
        assert_eq!(full.study_description, "NEWER");
        assert_eq!(full.rows, Some(256));
        assert_eq!(inst.seq, 9);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let (dir, run) = build(3);
        let path = run.path().to_path_buf();
        drop(run);
        let clean = std::fs::read(&path).unwrap();
        let mut detected = 0;
        let step = (clean.len() / 97).max(1);
        for at in (0..clean.len()).step_by(step) {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x40;
            let p = dir.path().join("bad.kvi");
            std::fs::write(&p, &bytes).unwrap();
            let outcome = Run::open(&p).and_then(|r| r.verify_all());
            assert!(
                matches!(outcome, Err(Error::IndexCorruption { .. })),
                "flip at {at} went unnoticed"
            );
            detected += 1;
        }
        assert!(detected > 50);
        // Truncation too.
        let p = dir.path().join("short.kvi");
        std::fs::write(&p, &clean[..clean.len() - 4]).unwrap();
        assert!(matches!(Run::open(&p), Err(Error::IndexCorruption { .. })));
    }

    #[test]
    fn reads_through_a_corrupt_block_fail_instead_of_returning_garbage() {
        let (dir, run) = build(200);
        let path = run.path().to_path_buf();
        drop(run);
        let mut bytes = std::fs::read(&path).unwrap();
        // Corrupt a byte in the middle of the instance rows: open succeeds (lazy checks), the
        // first read touching that block fails.
        let at = RUN_HEADER_BYTES as usize + 3 * RUN_BLOCK_BYTES as usize + 17;
        bytes[at] ^= 1;
        let p = dir.path().join("lazy.kvi");
        std::fs::write(&p, &bytes).unwrap();
        let run = Run::open(&p).unwrap();
        let mut failed = false;
        for row in 0..run.counts().instances {
            if let Err(e) = run.instance(row).and_then(|i| run.full_attrs(&i)) {
                assert!(matches!(e, Error::IndexCorruption { .. }));
                failed = true;
            }
        }
        let _ = run.verify_all();
        assert!(failed || run.verify_all().is_err());
    }

    #[test]
    fn instances_without_uids_are_refused() {
        let mut b = RunBuilder::new();
        let mut a = attrs(1, 1, 1);
        a.series_instance_uid.clear();
        assert!(matches!(
            b.add(&a, InstanceLocation::default(), 1),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn date_keys_accept_only_valid_plain_dates() {
        assert_eq!(date_key("20240229"), Some(20240229));
        assert_eq!(date_key("20241301"), None);
        assert_eq!(date_key("2024.02.29"), None);
        assert_eq!(date_key(""), None);
    }
}
