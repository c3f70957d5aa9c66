//! The catalog: every indexed instance, searchable at patient, study, series and instance
//! level.
//!
//! It is a small LSM: a mutable in-memory part ([`MemPart`]) for instances written since the
//! last run, and immutable, memory-mapped [`Run`]s (oldest first). [`Catalog::freeze`] writes
//! the in-memory part as a new run; [`Catalog::merge`] replaces runs by one. Newer sources win:
//! the newest source holding a study (series, instance) gives its attributes, and an instance
//! that was deleted or replaced is a *removal* — kept in memory as the `dead` map (loaded from
//! the runs at open, a few entries per delete) so liveness costs one hash lookup.
//!
//! Queries ([`Catalog::query`]) choose candidates per source through the best secondary key
//! (UID, PatientID, AccessionNumber, StudyDate range, Modality, or a scan), evaluate every
//! filter against the source's attributes with the PS3.4 matching rules ([`super::matching`]),
//! drop candidates a newer source shadows, and stop once `offset + limit` hits are found.

use super::attrs::{tags, InstanceAttrs, InstanceLocation, Level};
use super::matching::Matcher;
use super::run::{key_hash, Removal, Run, RunBuilder, RunCounts, Section, SeriesRow, StudyRow};
use crate::dicom::Tag;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// File name of run number `id`.
pub fn run_file_name(id: u64) -> String {
    format!("run-{id:016x}.kvi")
}

fn parse_run_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("run-")?.strip_suffix(".kvi")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

/// One instance in the in-memory part.
#[derive(Debug, Clone)]
pub struct MemInstance {
    pub attrs: InstanceAttrs,
    pub location: InstanceLocation,
    pub seq: u64,
    /// Segment holding the record this entry came from (its metadata record); the entry
    /// leaves the in-memory part when that segment's run is added.
    pub segment_id: u64,
}

/// Instances written since the last run, and removals not yet in a run.
#[derive(Debug, Default)]
pub struct MemPart {
    instances: BTreeMap<String, MemInstance>,
    /// (sequence number, SOP Instance UID) per study and per series, so that queries touch
    /// only the entries of the studies and series they look at, not the whole part, and find
    /// each one's newest entry (the last) without a scan.
    by_study: HashMap<String, BTreeSet<(u64, String)>>,
    by_series: HashMap<String, BTreeSet<(u64, String)>>,
    /// Removals not yet in a run, with the segment of the record that caused them.
    removals: Vec<(Removal, u64)>,
}

impl MemPart {
    fn put(&mut self, sop: String, instance: MemInstance) {
        self.take(&sop);
        let a = &instance.attrs;
        self.by_study
            .entry(a.study_instance_uid.clone())
            .or_default()
            .insert((instance.seq, sop.clone()));
        self.by_series
            .entry(a.series_instance_uid.clone())
            .or_default()
            .insert((instance.seq, sop.clone()));
        self.instances.insert(sop, instance);
    }

    fn take(&mut self, sop: &str) -> Option<MemInstance> {
        let instance = self.instances.remove(sop)?;
        let a = &instance.attrs;
        for (map, key) in [
            (&mut self.by_study, &a.study_instance_uid),
            (&mut self.by_series, &a.series_instance_uid),
        ] {
            if let Some(set) = map.get_mut(key) {
                set.remove(&(instance.seq, sop.to_string()));
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
        Some(instance)
    }

    /// Drops the entries (and removals) that came from `segments`.
    fn forget_segments(&mut self, segments: &[u64]) {
        let gone: Vec<String> = self
            .instances
            .iter()
            .filter(|(_, m)| segments.contains(&m.segment_id))
            .map(|(sop, _)| sop.clone())
            .collect();
        for sop in gone {
            self.take(&sop);
        }
        self.removals.retain(|(_, s)| !segments.contains(s));
    }

    /// The newest entry of every study (`Level::Study`) or series, in UID order.
    fn newest_per(&self, level: Level) -> Vec<&MemInstance> {
        let map = if level == Level::Study {
            &self.by_study
        } else {
            &self.by_series
        };
        let mut uids: Vec<&String> = map.keys().collect();
        uids.sort_unstable();
        uids.into_iter()
            .filter_map(|uid| {
                let (_, sop) = map.get(uid)?.last()?;
                self.instances.get(sop)
            })
            .collect()
    }

    /// The instances of study `uid`.
    fn in_study<'a>(&'a self, uid: &str) -> impl Iterator<Item = &'a MemInstance> + 'a {
        let sops = self.by_study.get(uid);
        sops.into_iter()
            .flatten()
            .filter_map(|(_, sop)| self.instances.get(sop))
    }

    /// The instances of series `uid`.
    fn in_series<'a>(&'a self, uid: &str) -> impl Iterator<Item = &'a MemInstance> + 'a {
        let sops = self.by_series.get(uid);
        sops.into_iter()
            .flatten()
            .filter_map(|(_, sop)| self.instances.get(sop))
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty() && self.removals.is_empty()
    }
}

/// What is dead: SOP Instance UID → (seq, study UID, series UID). Rows with a lower seq are
/// dead.
#[derive(Debug, Default, Clone)]
struct Dead {
    by_sop: HashMap<String, u64>,
    by_study: HashMap<String, u32>,
    by_series: HashMap<String, u32>,
}

impl Dead {
    fn add(&mut self, r: &Removal) {
        let seq = self.by_sop.entry(r.sop_instance_uid.clone()).or_insert(0);
        if *seq == 0 {
            *self
                .by_study
                .entry(r.study_instance_uid.clone())
                .or_insert(0) += 1;
            *self
                .by_series
                .entry(r.series_instance_uid.clone())
                .or_insert(0) += 1;
        }
        *seq = (*seq).max(r.seq);
    }

    fn is_dead(&self, sop: &str, seq: u64) -> bool {
        self.by_sop.get(sop).is_some_and(|&dead| seq < dead)
    }
}

/// A query (see the module documentation). Filters are ANDed.
#[derive(Debug, Clone)]
pub struct Query {
    pub level: Level,
    pub filters: Vec<(Tag, Matcher)>,
    pub offset: usize,
    /// At most this many hits (after `offset`); `None` is the catalog's `query_hits_max`.
    pub limit: Option<usize>,
}

/// A study hit: patient- and study-level attributes plus the derived ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyHit {
    pub attrs: InstanceAttrs,
    pub modalities_in_study: String,
    pub series_count: u32,
    pub instance_count: u32,
}

/// A series hit: patient-, study- and series-level attributes, plus the instance count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesHit {
    pub attrs: InstanceAttrs,
    pub instance_count: u32,
}

/// An instance hit: every indexed attribute and where the object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHit {
    pub attrs: InstanceAttrs,
    pub location: InstanceLocation,
    pub seq: u64,
}

/// A patient hit (patient root queries): patient-level attributes and related counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientHit {
    pub attrs: InstanceAttrs,
    pub study_count: u32,
    pub series_count: u32,
    pub instance_count: u32,
}

/// One live instance of a study, as [`Catalog::for_each_study`] hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyMember {
    pub series_instance_uid: String,
    pub modality: String,
    pub sop_instance_uid: String,
    pub location: InstanceLocation,
    pub seq: u64,
}

/// A study with every live instance of it (the newest copy of each), for whole-catalog walks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StudyMembers {
    pub study_instance_uid: String,
    /// PatientID as the study's newest source has it.
    pub patient_id: String,
    pub instances: Vec<StudyMember>,
}

/// Query results, at the query's level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hits {
    Patients(Vec<PatientHit>),
    Studies(Vec<StudyHit>),
    Series(Vec<SeriesHit>),
    Instances(Vec<InstanceHit>),
}

impl Hits {
    pub fn len(&self) -> usize {
        match self {
            Hits::Patients(h) => h.len(),
            Hits::Studies(h) => h.len(),
            Hits::Series(h) => h.len(),
            Hits::Instances(h) => h.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Limits of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct CatalogLimits {
    /// Most hits one query returns (a larger `limit` is capped; protocol layers page).
    pub query_hits_max: usize,
    /// Most runs before [`Catalog::maybe_merge`] merges them.
    pub runs_max: usize,
}

impl Default for CatalogLimits {
    fn default() -> Self {
        CatalogLimits {
            query_hits_max: 10_000,
            runs_max: 8,
        }
    }
}

/// A source of indexed instances, newest first in queries.
#[derive(Clone, Copy)]
enum Source<'a> {
    Mem(&'a MemPart),
    Run(&'a Run),
}

/// See the module documentation.
#[derive(Debug)]
pub struct Catalog {
    dir: PathBuf,
    limits: CatalogLimits,
    state: RwLock<State>,
    /// Serialises freezes and merges.
    maintenance: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// (run id, run), oldest first.
    runs: Vec<(u64, Arc<Run>)>,
    /// Segments the runs index.
    covered: std::collections::BTreeSet<u64>,
    mem: MemPart,
    dead: Dead,
    next_run_id: u64,
}

/// What opening found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CatalogOpenReport {
    pub runs_mapped: usize,
    /// Run files that failed their checks and were set aside (renamed `*.bad`) for a rebuild.
    pub runs_rejected: Vec<(String, String)>,
    pub temp_files_removed: usize,
}

impl Catalog {
    /// Maps the runs in `dir` (created if missing). Runs failing their header checks are
    /// renamed `*.bad` and reported: the caller rebuilds what they held from the segments.
    pub fn open(dir: &Path, limits: CatalogLimits) -> Result<(Catalog, CatalogOpenReport)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("create index directory", dir.display().to_string(), e))?;
        let mut report = CatalogOpenReport::default();
        let mut ids = Vec::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::io("list index directory", dir.display().to_string(), e))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| Error::io("list index directory", dir.display().to_string(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".kvi.tmp") {
                let _ = std::fs::remove_file(entry.path());
                report.temp_files_removed += 1;
            } else if let Some(id) = parse_run_file_name(&name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut state = State {
            next_run_id: ids.last().map_or(1, |id| id + 1),
            ..State::default()
        };
        for id in ids {
            let path = dir.join(run_file_name(id));
            match Run::open(&path).and_then(|run| Ok((run.removals()?, run.segments()?, run))) {
                Ok((removals, segments, run)) => {
                    for r in &removals {
                        state.dead.add(r);
                    }
                    state.covered.extend(segments);
                    state.runs.push((id, Arc::new(run)));
                }
                Err(e) => {
                    let bad = path.with_extension("kvi.bad");
                    let _ = std::fs::rename(&path, &bad);
                    report
                        .runs_rejected
                        .push((path.display().to_string(), e.to_string()));
                }
            }
        }
        report.runs_mapped = state.runs.len();
        Ok((
            Catalog {
                dir: dir.to_path_buf(),
                limits,
                state: RwLock::new(state),
                maintenance: Mutex::new(()),
            },
            report,
        ))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The highest seq any run covers: records above it must be re-added after a reopen.
    pub fn runs_seq_max(&self) -> u64 {
        self.read()
            .runs
            .iter()
            .map(|(_, r)| r.seq_max())
            .max()
            .unwrap_or(0)
    }

    /// Counts per run, oldest first.
    pub fn run_counts(&self) -> Vec<RunCounts> {
        self.read().runs.iter().map(|(_, r)| r.counts()).collect()
    }

    pub fn limits(&self) -> CatalogLimits {
        self.limits
    }

    pub fn mem_len(&self) -> usize {
        self.read().mem.len()
    }

    /// The runs open now, oldest first (each stays mapped while its `Arc` is held, even if
    /// a merge replaces it meanwhile).
    pub fn runs(&self) -> Vec<Arc<Run>> {
        self.read().runs.iter().map(|(_, r)| r.clone()).collect()
    }

    /// Verifies every byte of every run.
    pub fn verify(&self) -> Result<()> {
        let runs: Vec<_> = self.read().runs.iter().map(|(_, r)| r.clone()).collect();
        runs.iter().try_for_each(|r| r.verify_all())
    }

    /// Adds (or replaces) an instance whose record is in segment `segment_id`. A replaced
    /// instance in a run becomes a removal.
    pub fn insert(
        &self,
        attrs: InstanceAttrs,
        location: InstanceLocation,
        seq: u64,
        segment_id: u64,
    ) -> Result<()> {
        self.guarded(|| self.insert_unguarded(attrs, location, seq, segment_id))
    }

    fn insert_unguarded(
        &self,
        attrs: InstanceAttrs,
        location: InstanceLocation,
        seq: u64,
        segment_id: u64,
    ) -> Result<()> {
        let mut state = self.write();
        let state = &mut *state;
        let sop = attrs.sop_instance_uid.clone();
        if let Some(existing) = state.mem.instances.get(&sop) {
            if existing.seq >= seq {
                return Ok(());
            }
        }
        // An older copy in a run (of any study) is dead from now on. Recorded even if another
        // removal already hides it: that one may live in a run that gets rebuilt.
        for (_, run) in state.runs.iter().rev() {
            if let Some(row) = run.find_instance(&sop)? {
                if row.seq < seq {
                    let old = run.full_attrs(&row)?;
                    let removal = Removal {
                        sop_instance_uid: sop.clone(),
                        study_instance_uid: old.study_instance_uid,
                        series_instance_uid: old.series_instance_uid,
                        seq,
                    };
                    state.dead.add(&removal);
                    state.mem.removals.push((removal, segment_id));
                }
                break;
            }
        }
        state.mem.put(
            sop,
            MemInstance {
                attrs,
                location,
                seq,
                segment_id,
            },
        );
        Ok(())
    }

    /// Removes an instance (deleted at `seq` by a record in segment `segment_id`). Returns
    /// whether it was indexed.
    pub fn remove(&self, sop_instance_uid: &str, seq: u64, segment_id: u64) -> Result<bool> {
        self.guarded(|| self.remove_unguarded(sop_instance_uid, seq, segment_id))
    }

    fn remove_unguarded(&self, sop_instance_uid: &str, seq: u64, segment_id: u64) -> Result<bool> {
        let mut state = self.write();
        let state = &mut *state;
        let mut found: Option<(String, String)> = None;
        if let Some(m) = state.mem.instances.get(sop_instance_uid) {
            if m.seq < seq {
                found = Some((
                    m.attrs.study_instance_uid.clone(),
                    m.attrs.series_instance_uid.clone(),
                ));
                state.mem.take(sop_instance_uid);
            }
        }
        let mut live = found.is_some();
        for (_, run) in state.runs.iter().rev() {
            if let Some(row) = run.find_instance(sop_instance_uid)? {
                if row.seq < seq {
                    live |= !state.dead.is_dead(sop_instance_uid, row.seq);
                    let old = run.full_attrs(&row)?;
                    found.get_or_insert((old.study_instance_uid, old.series_instance_uid));
                }
                break;
            }
        }
        // Recorded even when no live copy is indexed: a run holding the instance may be
        // rebuilt later (from segments older than this tombstone), and the removal must then
        // still hide it. An unknown study/series is resolved when runs are added.
        let (study, series) = found.unwrap_or_default();
        let removal = Removal {
            sop_instance_uid: sop_instance_uid.to_string(),
            study_instance_uid: study,
            series_instance_uid: series,
            seq,
        };
        state.dead.add(&removal);
        state.mem.removals.push((removal, segment_id));
        Ok(live)
    }

    /// Writes the in-memory part as a new run covering the segments its entries came from
    /// (nothing when it is empty).
    pub fn freeze(&self) -> Result<Option<RunCounts>> {
        let segments: Vec<u64> = {
            let state = self.read();
            if state.mem.is_empty() {
                return Ok(None);
            }
            let mut ids: Vec<u64> = state
                .mem
                .instances
                .values()
                .map(|m| m.segment_id)
                .chain(state.mem.removals.iter().map(|(_, id)| *id))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let mut builder = RunBuilder::new();
        {
            let state = self.read();
            for m in state.mem.instances.values() {
                builder.add(&m.attrs, m.location, m.seq)?;
            }
            for (r, _) in &state.mem.removals {
                builder.remove(r)?;
            }
        }
        self.add_run(builder, &segments).map(Some)
    }

    /// Adds a run built from whole segments: writes it, maps it, and drops the in-memory
    /// entries those segments' records had put there.
    pub fn add_run(&self, mut builder: RunBuilder, segments: &[u64]) -> Result<RunCounts> {
        let _maintenance = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        for &id in segments {
            builder.cover(id);
        }
        let id = {
            let mut state = self.write();
            state.next_run_id += 1;
            state.next_run_id - 1
        };
        let path = self.dir.join(run_file_name(id));
        let counts = builder.write(&path)?;
        let run = Arc::new(Run::open(&path)?);
        let covered = run.segments()?;
        let mut state = self.write();
        state.runs.push((id, run));
        state.mem.forget_segments(segments);
        state.covered.extend(covered);
        resolve_removals(&mut state)?;
        state.dead = rebuild_dead(&state)?;
        Ok(counts)
    }

    /// Builds and adds the run of one sealed segment from its records: instances (metadata
    /// records) and removals (their tombstones). An instance that replaces an older indexed
    /// copy, and a tombstone of an indexed instance, become removals in the run.
    pub fn add_segment_run(
        &self,
        segment_id: u64,
        records: impl IntoIterator<Item = SegmentRecord>,
    ) -> Result<RunCounts> {
        self.guarded(|| self.add_segment_run_unguarded(segment_id, records))
    }

    fn add_segment_run_unguarded(
        &self,
        segment_id: u64,
        records: impl IntoIterator<Item = SegmentRecord>,
    ) -> Result<RunCounts> {
        let mut builder = RunBuilder::new();
        for record in records {
            match record {
                SegmentRecord::Instance {
                    attrs,
                    location,
                    seq,
                } => {
                    // Segments are indexed in id order, which is not write order after a
                    // compaction (a copy lands in a newer segment than a later write of the
                    // same instance): a version older than one indexed already, or than its
                    // removal, is never added.
                    if self.superseded(&attrs.sop_instance_uid, seq)? {
                        continue;
                    }
                    if let Some(old) = self.older_copy(&attrs.sop_instance_uid, seq, segment_id)? {
                        builder.remove(&Removal { seq, ..old })?;
                    }
                    builder.add(&attrs, location, seq)?;
                }
                SegmentRecord::Removed {
                    sop_instance_uid,
                    seq,
                } => {
                    // Recorded even when no copy is indexed yet: one may be in a segment
                    // indexed after this one (its study and series are then unknown here;
                    // the copy is not added, see above).
                    let removal = match self.older_copy(&sop_instance_uid, seq, segment_id)? {
                        Some(old) => Removal { seq, ..old },
                        None => Removal {
                            sop_instance_uid,
                            study_instance_uid: String::new(),
                            series_instance_uid: String::new(),
                            seq,
                        },
                    };
                    builder.remove(&removal)?;
                }
            }
        }
        self.add_run(builder, &[segment_id])
    }

    /// Whether version `seq` of an instance is older than a copy indexed already or than a
    /// removal of it.
    fn superseded(&self, sop: &str, seq: u64) -> Result<bool> {
        let state = self.read();
        if state.dead.is_dead(sop, seq) {
            return Ok(true);
        }
        if state.mem.instances.get(sop).is_some_and(|m| m.seq > seq) {
            return Ok(true);
        }
        for (_, run) in state.runs.iter().rev() {
            if let Some(row) = run.find_instance(sop)? {
                return Ok(row.seq > seq && !state.dead.is_dead(sop, row.seq));
            }
        }
        Ok(false)
    }

    /// The newest copy of an instance older than `seq` in runs or in the in-memory part
    /// (entries from segment `segment_id` excluded), as a removal template.
    fn older_copy(&self, sop: &str, seq: u64, segment_id: u64) -> Result<Option<Removal>> {
        let state = self.read();
        if let Some(m) = state.mem.instances.get(sop) {
            if m.seq < seq && m.segment_id != segment_id {
                return Ok(Some(Removal {
                    sop_instance_uid: sop.to_string(),
                    study_instance_uid: m.attrs.study_instance_uid.clone(),
                    series_instance_uid: m.attrs.series_instance_uid.clone(),
                    seq,
                }));
            }
        }
        for (_, run) in state.runs.iter().rev() {
            if let Some(row) = run.find_instance(sop)? {
                if row.seq < seq {
                    let old = run.full_attrs(&row)?;
                    return Ok(Some(Removal {
                        sop_instance_uid: sop.to_string(),
                        study_instance_uid: old.study_instance_uid,
                        series_instance_uid: old.series_instance_uid,
                        seq,
                    }));
                }
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Sets aside (renames `*.kvi.bad`) the run at `path` after a failed check, and forgets
    /// the segments it covered so they are indexed again. Returns whether such a run was open.
    pub fn quarantine(&self, path: &str) -> Result<bool> {
        let _maintenance = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.write();
        let Some(at) = state
            .runs
            .iter()
            .position(|(_, r)| r.path().display().to_string() == path)
        else {
            return Ok(false);
        };
        let (_, run) = state.runs.remove(at);
        let bad = run.path().with_extension("kvi.bad");
        std::fs::rename(run.path(), &bad)
            .map_err(|e| Error::io("set aside index run", path.to_string(), e))?;
        let mut covered = std::collections::BTreeSet::new();
        for (_, r) in &state.runs {
            // A second damaged run shows up on its own first read.
            covered.extend(r.segments().unwrap_or_default());
        }
        state.covered = covered;
        state.dead = rebuild_dead(&state)?;
        Ok(true)
    }

    /// Segments some run indexes.
    pub fn covered_segments(&self) -> std::collections::BTreeSet<u64> {
        self.read().covered.clone()
    }

    /// Drops (and deletes) every run that indexes a segment for which `gone` is true (the
    /// segment was compacted away or lost); returns the segments those runs covered, which
    /// the caller re-indexes where they still exist.
    pub fn drop_runs_covering(&self, gone: impl Fn(u64) -> bool) -> Result<Vec<u64>> {
        let _maintenance = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.write();
        let mut dropped_segments = Vec::new();
        let mut keep = Vec::new();
        for (id, run) in std::mem::take(&mut state.runs) {
            let segments = run.segments()?;
            if segments.iter().any(|&s| gone(s)) {
                dropped_segments.extend(segments);
                let _ = std::fs::remove_file(self.dir.join(run_file_name(id)));
            } else {
                keep.push((id, run));
            }
        }
        state.runs = keep;
        state.covered = std::collections::BTreeSet::new();
        let mut covered = Vec::new();
        for (_, run) in &state.runs {
            covered.extend(run.segments()?);
        }
        state.covered.extend(covered);
        state.dead = rebuild_dead(&state)?;
        Ok(dropped_segments)
    }

    /// Keeps the number of runs logarithmic: while the second-newest run is at most twice
    /// the size of the newest, merges the two (a binary counter, so every instance is
    /// rewritten O(log n) times), and merges everything when more than `runs_max` remain.
    pub fn maybe_merge(&self) -> Result<usize> {
        let mut merges = 0;
        loop {
            let (len, pair) = {
                let state = self.read();
                let n = state.runs.len();
                let pair = n >= 2 && {
                    let older = state.runs[n - 2].1.counts().instances;
                    let newer = state.runs[n - 1].1.counts().instances;
                    older <= newer.saturating_mul(2)
                };
                (n, pair)
            };
            if pair {
                self.merge_newest(2)?;
            } else if len > self.limits.runs_max {
                self.merge_newest(len)?;
            } else {
                return Ok(merges);
            }
            merges += 1;
        }
    }

    /// Merges every run into one.
    pub fn merge(&self) -> Result<RunCounts> {
        let n = self.read().runs.len();
        self.merge_newest(n)
    }

    /// Merges the newest `k` runs into one. Dead rows are dropped; removals are carried into
    /// the merged run unless it includes the oldest run (then no older row is left for them
    /// to hide). Queries keep using the old runs until the switch.
    pub fn merge_newest(&self, k: usize) -> Result<RunCounts> {
        self.guarded(|| self.merge_newest_unguarded(k))
    }

    fn merge_newest_unguarded(&self, k: usize) -> Result<RunCounts> {
        // No freeze in between: the merged runs stay the newest, so the merged run's id
        // (the next one) keeps the order of sources on disk.
        let _maintenance = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let (runs, dead, id, includes_oldest) = {
            let mut state = self.write();
            let id = state.next_run_id;
            state.next_run_id += 1;
            let n = state.runs.len();
            let k = k.min(n);
            (state.runs[n - k..].to_vec(), state.dead.clone(), id, k == n)
        };
        let mut builder = RunBuilder::new();
        for (_, run) in &runs {
            for row in 0..run.counts().instances {
                let instance = run.instance(row)?;
                let sop = run.sop_uid(&instance)?;
                if dead.is_dead(sop, instance.seq) {
                    continue;
                }
                let attrs = run.full_attrs(&instance)?;
                builder.add(&attrs, instance.location, instance.seq)?;
            }
            if !includes_oldest {
                for r in run.removals()? {
                    builder.remove(&r)?;
                }
            }
            for segment in run.segments()? {
                builder.cover(segment);
            }
        }
        let path = self.dir.join(run_file_name(id));
        let counts = builder.write(&path)?;
        let merged = Arc::new(Run::open(&path)?);
        let mut state = self.write();
        let merged_ids: HashSet<u64> = runs.iter().map(|(id, _)| *id).collect();
        state.runs.retain(|(id, _)| !merged_ids.contains(id));
        state.runs.push((id, merged));
        state.dead = rebuild_dead(&state)?;
        drop(state);
        for (old, _) in runs {
            let _ = std::fs::remove_file(self.dir.join(run_file_name(old)));
        }
        sync_dir(&self.dir)?;
        Ok(counts)
    }

    /// Answers a query (see the module documentation).
    pub fn query(&self, query: &Query) -> Result<Hits> {
        self.guarded(|| self.query_unguarded(query))
    }

    /// Runs a read of the runs guarded against media errors (`crate::io::media`): a page of
    /// a run the device cannot deliver is an `IndexCorruption` of that run (which the store
    /// sets aside and rebuilds from the segments), not a crash.
    fn guarded<R>(&self, read: impl FnOnce() -> Result<R>) -> Result<R> {
        match crate::io::media::guarded(read) {
            Ok(result) => result,
            Err(address) => {
                let state = self.read();
                let file = state
                    .runs
                    .iter()
                    .find(|(_, run)| run.contains_address(address))
                    .map(|(_, run)| run.path().display().to_string())
                    .unwrap_or_default();
                Err(Error::IndexCorruption {
                    file,
                    offset: 0,
                    reason: format!(
                        "media error: the device could not deliver the page at address {address:#x} (SIGBUS)"
                    ),
                })
            }
        }
    }

    fn query_unguarded(&self, query: &Query) -> Result<Hits> {
        let state = self.read();
        let sources: Vec<Source<'_>> = std::iter::once(Source::Mem(&state.mem))
            .chain(state.runs.iter().rev().map(|(_, r)| Source::Run(r)))
            .collect();
        let want = query.offset.saturating_add(
            query
                .limit
                .unwrap_or(self.limits.query_hits_max)
                .min(self.limits.query_hits_max),
        );
        let exec = Exec {
            sources: &sources,
            dead: &state.dead,
            query,
            want,
        };
        let mut hits = match query.level {
            Level::Study => Hits::Studies(exec.studies()?),
            Level::Series => Hits::Series(exec.series()?),
            Level::Instance => Hits::Instances(exec.instances()?),
            Level::Patient => Hits::Patients(exec.patients()?),
        };
        let skip = query.offset;
        match &mut hits {
            Hits::Patients(h) => drop(h.drain(..skip.min(h.len()))),
            Hits::Studies(h) => drop(h.drain(..skip.min(h.len()))),
            Hits::Series(h) => drop(h.drain(..skip.min(h.len()))),
            Hits::Instances(h) => drop(h.drain(..skip.min(h.len()))),
        }
        Ok(hits)
    }

    /// The newest live copy of an instance.
    pub fn instance(&self, sop_instance_uid: &str) -> Result<Option<InstanceHit>> {
        self.guarded(|| self.instance_unguarded(sop_instance_uid))
    }

    fn instance_unguarded(&self, sop_instance_uid: &str) -> Result<Option<InstanceHit>> {
        let state = self.read();
        if let Some(m) = state.mem.instances.get(sop_instance_uid) {
            return Ok(Some(InstanceHit {
                attrs: m.attrs.clone(),
                location: m.location,
                seq: m.seq,
            }));
        }
        for (_, run) in state.runs.iter().rev() {
            if let Some(row) = run.find_instance(sop_instance_uid)? {
                if state.dead.is_dead(sop_instance_uid, row.seq) {
                    return Ok(None);
                }
                return Ok(Some(InstanceHit {
                    attrs: run.full_attrs(&row)?,
                    location: row.location,
                    seq: row.seq,
                }));
            }
        }
        Ok(None)
    }
}

impl Catalog {
    /// Visits every study with a live instance once, with all its live instances (the newest
    /// copy of each, as study queries count them), study by study: studies the in-memory part
    /// holds first, then each run's studies no newer source holds.
    ///
    /// Works on a snapshot taken at the call (the runs, a copy of the removals and of the
    /// in-memory part's instances): the catalog's lock is not held while the runs are read,
    /// so stores and deletes go on meanwhile. Memory beyond that copy: one study's instances.
    pub fn for_each_study(&self, visit: &mut dyn FnMut(&StudyMembers)) -> Result<()> {
        self.guarded(|| self.for_each_study_unguarded(visit))
    }

    fn for_each_study_unguarded(&self, visit: &mut dyn FnMut(&StudyMembers)) -> Result<()> {
        let (runs, dead, mut mem) = {
            let state = self.read();
            let runs: Vec<Arc<Run>> = state.runs.iter().rev().map(|(_, r)| r.clone()).collect();
            let mut mem: BTreeMap<String, (u64, StudyMembers)> = BTreeMap::new();
            for m in state.mem.instances.values() {
                let a = &m.attrs;
                let (newest, study) = mem.entry(a.study_instance_uid.clone()).or_default();
                if study.instances.is_empty() || m.seq > *newest {
                    *newest = m.seq;
                    study.study_instance_uid = a.study_instance_uid.clone();
                    study.patient_id = a.patient_id.clone();
                }
                study.instances.push(StudyMember {
                    series_instance_uid: a.series_instance_uid.clone(),
                    modality: a.modality.clone(),
                    sop_instance_uid: a.sop_instance_uid.clone(),
                    location: m.location,
                    seq: m.seq,
                });
            }
            (runs, state.dead.clone(), mem)
        };
        // Studies in the in-memory part: it is their newest source.
        for (uid, (_, study)) in mem.iter_mut() {
            let mut seen: HashSet<String> = study
                .instances
                .iter()
                .map(|m| m.sop_instance_uid.clone())
                .collect();
            for run in &runs {
                if let Some(row) = run.find_study(uid)? {
                    run_members(run, &row, &dead, &mut seen, &mut study.instances)?;
                }
            }
            visit(study);
        }
        // Each run's studies that no newer source holds.
        let mut attrs = InstanceAttrs::default();
        for (j, run) in runs.iter().enumerate() {
            for row in 0..run.counts().studies {
                let study_row = run.study(row)?;
                let uid = run.study_uid(&study_row)?;
                if mem.contains_key(uid) {
                    continue;
                }
                let mut newer = false;
                for r in &runs[..j] {
                    if r.find_study(uid)?.is_some() {
                        newer = true;
                        break;
                    }
                }
                if newer {
                    continue;
                }
                run.study_attrs(&study_row, &mut attrs)?;
                let mut study = StudyMembers {
                    study_instance_uid: uid.to_string(),
                    patient_id: std::mem::take(&mut attrs.patient_id),
                    instances: Vec::new(),
                };
                let mut seen: HashSet<String> = HashSet::new();
                run_members(run, &study_row, &dead, &mut seen, &mut study.instances)?;
                for older in &runs[j + 1..] {
                    if let Some(row) = older.find_study(uid)? {
                        run_members(older, &row, &dead, &mut seen, &mut study.instances)?;
                    }
                }
                if !study.instances.is_empty() {
                    visit(&study);
                }
            }
        }
        Ok(())
    }
}

/// Adds a run's live instances of a study that `seen` does not hold yet (a newer copy of
/// each was added before).
fn run_members(
    run: &Run,
    study: &StudyRow,
    dead: &Dead,
    seen: &mut HashSet<String>,
    out: &mut Vec<StudyMember>,
) -> Result<()> {
    for srow in study.first_series..study.first_series + study.series_count {
        let series = run.series(srow)?;
        let series_uid = run.series_uid(&series)?;
        let modality = run.series_modality(&series)?;
        for irow in series.first_instance..series.first_instance + series.instance_count {
            let instance = run.instance(irow)?;
            let sop = run.sop_uid(&instance)?;
            if dead.is_dead(sop, instance.seq) || seen.contains(sop) {
                continue;
            }
            seen.insert(sop.to_string());
            out.push(StudyMember {
                series_instance_uid: series_uid.to_string(),
                modality: modality.to_string(),
                sop_instance_uid: sop.to_string(),
                location: instance.location,
                seq: instance.seq,
            });
        }
    }
    Ok(())
}

/// One query's execution over a snapshot of the sources.
struct Exec<'a> {
    sources: &'a [Source<'a>],
    dead: &'a Dead,
    query: &'a Query,
    want: usize,
}

/// Exact values a filter on `tag` accepts, if it is a finite set.
fn exact(query: &Query, tag: Tag) -> Option<Vec<&str>> {
    query
        .filters
        .iter()
        .find(|(t, _)| *t == tag)
        .and_then(|(_, m)| m.exact_values())
}

impl Exec<'_> {
    fn matcher_accepts(&self, tag: Tag, value: &str) -> bool {
        self.query
            .filters
            .iter()
            .filter(|(t, _)| *t == tag)
            .all(|(_, m)| m.matches(value))
    }

    /// Whether `attrs` satisfy every filter of the given levels (derived attributes excluded).
    fn accepts(&self, attrs: &InstanceAttrs, levels: &[Level]) -> bool {
        // StudyDate and StudyTime ranges of the same form match as one combined range
        // (PS3.4 C.2.2.2.5.1), checked by `combined_date_time_ok`, not one by one.
        let combined = self.combined_date_time().is_some();
        self.query.filters.iter().all(|(tag, m)| {
            if combined && (*tag == tags::STUDY_DATE || *tag == tags::STUDY_TIME) {
                return true;
            }
            match InstanceAttrs::level_of(*tag) {
                Some(level) if levels.contains(&level) => match attrs.text(*tag) {
                    Some(v) => m.matches(&v),
                    None => true, // derived (counts, ModalitiesInStudy): checked elsewhere
                },
                Some(_) => true,
                None => match attrs.text(*tag) {
                    Some(v) => m.matches(&v),
                    // Not indexed: only universal or empty matching can be honoured.
                    None => m.matches(""),
                },
            }
        })
    }

    fn combined_date_time_ok(&self, attrs: &InstanceAttrs) -> bool {
        match self.combined_date_time() {
            Some(c) => c.matches(&attrs.study_date, &attrs.study_time),
            None => true,
        }
    }

    fn combined_date_time(&self) -> Option<super::matching::CombinedDateTime> {
        let date = self
            .query
            .filters
            .iter()
            .find(|(t, _)| *t == tags::STUDY_DATE);
        let time = self
            .query
            .filters
            .iter()
            .find(|(t, _)| *t == tags::STUDY_TIME);
        match (date, time) {
            (Some((_, d)), Some((_, t))) => super::matching::combined_date_time(d, t),
            _ => None,
        }
    }

    /// Whether a source holds the study (`Level::Study`) or series (`Level::Series`) `uid`.
    fn holds(source: &Source<'_>, level: Level, uid: &str) -> Result<bool> {
        Ok(match (source, level) {
            (Source::Mem(m), Level::Study) => m.by_study.contains_key(uid),
            (Source::Mem(m), _) => m.by_series.contains_key(uid),
            (Source::Run(r), Level::Study) => r.find_study(uid)?.is_some(),
            (Source::Run(r), _) => r.find_series(uid)?.is_some(),
        })
    }

    /// The sources holding study or series `uid`, newest first.
    fn holders(&self, level: Level, uid: &str) -> Result<Vec<Source<'_>>> {
        let mut out = Vec::new();
        for s in self.sources {
            if Self::holds(s, level, uid)? {
                out.push(*s);
            }
        }
        Ok(out)
    }

    /// Whether source `i`'s candidate study or series `uid` is the one to evaluate: not seen
    /// yet in this query, and `i` is the newest source holding it (a newer source speaks for
    /// it otherwise). Marks it seen.
    fn first_sighting(
        &self,
        done: &mut HashSet<String>,
        level: Level,
        uid: &str,
        i: usize,
    ) -> Result<bool> {
        if done.contains(uid) || self.newest_holding(level, uid)? != Some(i) {
            return Ok(false);
        }
        done.insert(uid.to_string());
        Ok(true)
    }

    /// Index of the newest source (lower is newer) holding study or series `uid`.
    fn newest_holding(&self, level: Level, uid: &str) -> Result<Option<usize>> {
        for (i, s) in self.sources.iter().enumerate() {
            if Self::holds(s, level, uid)? {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Candidate study rows of a run for the query's study-level keys.
    fn study_candidates(&self, run: &Run) -> Result<Vec<u32>> {
        if let Some(uids) = exact(self.query, tags::STUDY_INSTANCE_UID) {
            return rows_of(&uids, |uid| Ok(run.find_study(uid)?.map(|s| s.row)));
        }
        let keyed = [
            (tags::ACCESSION_NUMBER, Section::KeyAccession),
            (tags::PATIENT_ID, Section::KeyPatientId),
            (tags::MODALITIES_IN_STUDY, Section::KeyModality),
        ];
        for (tag, section) in keyed {
            if let Some(values) = exact(self.query, tag) {
                let mut rows = Vec::new();
                for v in values {
                    rows.extend(run.rows_with(section, key_hash(v))?);
                }
                rows.sort_unstable();
                rows.dedup();
                return Ok(rows);
            }
        }
        if let Some((_, m)) = self
            .query
            .filters
            .iter()
            .find(|(t, _)| *t == tags::STUDY_DATE)
        {
            if let Some((lo, hi)) = m.date_range() {
                let mut rows =
                    run.rows_in_range(Section::KeyStudyDate, u64::from(lo), u64::from(hi))?;
                rows.sort_unstable();
                return Ok(rows);
            }
        }
        Ok((0..run.counts().studies).collect())
    }

    /// Aggregates of a study over every source: (modalities, series, instances).
    fn study_aggregate(&self, uid: &str) -> Result<(String, u32, u32)> {
        let holders = self.holders(Level::Study, uid)?;
        // Fast path: one run holds the whole study and nothing in it died.
        if let ([Source::Run(r)], false) = (&holders[..], self.dead.by_study.contains_key(uid)) {
            if let Some(study) = r.find_study(uid)? {
                return Ok((
                    r.study_modalities(&study)?.to_string(),
                    study.series_count,
                    study.instance_count,
                ));
            }
        }
        // General case: walk the members, newest copy of each instance wins, dead ones out.
        let mut seen: HashSet<String> = HashSet::new();
        let mut series: HashSet<String> = HashSet::new();
        let mut modalities: HashSet<String> = HashSet::new();
        for s in &holders {
            match s {
                Source::Mem(m) => {
                    for x in m.in_study(uid) {
                        if seen.insert(x.attrs.sop_instance_uid.clone()) {
                            series.insert(x.attrs.series_instance_uid.clone());
                            if !x.attrs.modality.is_empty() {
                                modalities.insert(x.attrs.modality.clone());
                            }
                        }
                    }
                }
                Source::Run(r) => {
                    let Some(study) = r.find_study(uid)? else {
                        continue;
                    };
                    for srow in study.first_series..study.first_series + study.series_count {
                        let se = r.series(srow)?;
                        for irow in se.first_instance..se.first_instance + se.instance_count {
                            let inst = r.instance(irow)?;
                            let sop = r.sop_uid(&inst)?;
                            if self.dead.is_dead(sop, inst.seq) || seen.contains(sop) {
                                continue;
                            }
                            seen.insert(sop.to_string());
                            series.insert(r.series_uid(&se)?.to_string());
                            let m = r.series_modality(&se)?;
                            if !m.is_empty() {
                                modalities.insert(m.to_string());
                            }
                        }
                    }
                }
            }
        }
        let mut modalities: Vec<String> = modalities.into_iter().collect();
        modalities.sort_unstable();
        Ok((
            modalities.join("\\"),
            series.len() as u32,
            seen.len() as u32,
        ))
    }

    fn study_hit(&self, attrs: InstanceAttrs) -> Result<Option<StudyHit>> {
        let (modalities, series_count, instance_count) =
            self.study_aggregate(&attrs.study_instance_uid)?;
        if instance_count == 0 {
            return Ok(None);
        }
        if !self.matcher_accepts(tags::MODALITIES_IN_STUDY, &modalities) {
            return Ok(None);
        }
        Ok(Some(StudyHit {
            attrs,
            modalities_in_study: modalities,
            series_count,
            instance_count,
        }))
    }

    fn studies(&self) -> Result<Vec<StudyHit>> {
        let levels = [Level::Patient, Level::Study];
        let mut out = Vec::new();
        let mut done: HashSet<String> = HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let mut candidates: Vec<InstanceAttrs> = Vec::new();
            match source {
                Source::Mem(m) => {
                    for x in m.newest_per(Level::Study) {
                        candidates.push(study_level(&x.attrs));
                    }
                }
                Source::Run(r) => {
                    // Person-name keys have no index: test the name alone before decoding
                    // the rest of the row (a row failing it is out whichever source is newer).
                    let name_key = self
                        .query
                        .filters
                        .iter()
                        .find(|(t, _)| *t == tags::PATIENT_NAME)
                        .map(|(_, m)| m);
                    for row in self.study_candidates(r)? {
                        let study = r.study(row)?;
                        if let Some(m) = name_key {
                            if !m.matches(r.study_patient_name(&study)?) {
                                continue;
                            }
                        }
                        let mut attrs = InstanceAttrs::default();
                        r.study_attrs(&study, &mut attrs)?;
                        candidates.push(attrs);
                    }
                }
            }
            for attrs in candidates {
                if out.len() >= self.want {
                    return Ok(out);
                }
                if !self.first_sighting(&mut done, Level::Study, &attrs.study_instance_uid, i)? {
                    continue;
                }
                if !self.accepts(&attrs, &levels) || !self.combined_date_time_ok(&attrs) {
                    continue;
                }
                if let Some(hit) = self.study_hit(attrs)? {
                    out.push(hit);
                }
            }
        }
        Ok(out)
    }

    fn patients(&self) -> Result<Vec<PatientHit>> {
        // Patients are derived from studies: group the matching studies by (ID, issuer).
        let inner = Exec {
            want: usize::MAX,
            ..*self
        };
        let studies = inner.studies()?;
        let mut groups: BTreeMap<(String, String), PatientHit> = BTreeMap::new();
        for s in studies {
            let key = (
                s.attrs.patient_id.clone(),
                s.attrs.issuer_of_patient_id.clone(),
            );
            let hit = groups.entry(key).or_insert_with(|| PatientHit {
                attrs: patient_level(&s.attrs),
                study_count: 0,
                series_count: 0,
                instance_count: 0,
            });
            hit.study_count += 1;
            hit.series_count += s.series_count;
            hit.instance_count += s.instance_count;
        }
        Ok(groups.into_values().take(self.want).collect())
    }

    /// Series rows of a run that may match.
    fn series_candidates(&self, run: &Run) -> Result<Vec<u32>> {
        if let Some(uids) = exact(self.query, tags::SERIES_INSTANCE_UID) {
            return rows_of(&uids, |uid| Ok(run.find_series(uid)?.map(|s| s.row)));
        }
        let study_keyed = [
            tags::STUDY_INSTANCE_UID,
            tags::ACCESSION_NUMBER,
            tags::PATIENT_ID,
            tags::STUDY_DATE,
        ];
        let has_study_key = study_keyed.iter().any(|t| {
            self.query
                .filters
                .iter()
                .any(|(f, m)| f == t && (m.exact_values().is_some() || m.date_range().is_some()))
        });
        if has_study_key {
            let mut rows = Vec::new();
            for st in self.study_candidates(run)? {
                let study = run.study(st)?;
                rows.extend(study.first_series..study.first_series + study.series_count);
            }
            return Ok(rows);
        }
        Ok((0..run.counts().series).collect())
    }

    /// Live instances of a series over every source.
    fn series_aggregate(&self, uid: &str) -> Result<u32> {
        let holders = self.holders(Level::Series, uid)?;
        if let ([Source::Run(r)], false) = (&holders[..], self.dead.by_series.contains_key(uid)) {
            if let Some(se) = r.find_series(uid)? {
                return Ok(se.instance_count);
            }
        }
        let mut seen: HashSet<String> = HashSet::new();
        for s in &holders {
            match s {
                Source::Mem(m) => {
                    for x in m.in_series(uid) {
                        seen.insert(x.attrs.sop_instance_uid.clone());
                    }
                }
                Source::Run(r) => {
                    let Some(se) = r.find_series(uid)? else {
                        continue;
                    };
                    for irow in se.first_instance..se.first_instance + se.instance_count {
                        let inst = r.instance(irow)?;
                        let sop = r.sop_uid(&inst)?;
                        if !self.dead.is_dead(sop, inst.seq) && !seen.contains(sop) {
                            seen.insert(sop.to_string());
                        }
                    }
                }
            }
        }
        Ok(seen.len() as u32)
    }

    fn series(&self) -> Result<Vec<SeriesHit>> {
        let levels = [Level::Patient, Level::Study, Level::Series];
        let mut out = Vec::new();
        let mut done: HashSet<String> = HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let mut candidates: Vec<InstanceAttrs> = Vec::new();
            match source {
                Source::Mem(m) => {
                    for x in m.newest_per(Level::Series) {
                        candidates.push(series_level(&x.attrs));
                    }
                }
                Source::Run(r) => {
                    let mut study_cache: Option<(u32, InstanceAttrs)> = None;
                    for row in self.series_candidates(r)? {
                        let se: SeriesRow = r.series(row)?;
                        let mut attrs = match &study_cache {
                            Some((s, a)) if *s == se.study => a.clone(),
                            _ => {
                                let study: StudyRow = r.study(se.study)?;
                                let mut a = InstanceAttrs::default();
                                r.study_attrs(&study, &mut a)?;
                                study_cache = Some((se.study, a.clone()));
                                a
                            }
                        };
                        r.series_attrs(&se, &mut attrs)?;
                        candidates.push(attrs);
                    }
                }
            }
            for attrs in candidates {
                if out.len() >= self.want {
                    return Ok(out);
                }
                if !self.first_sighting(&mut done, Level::Series, &attrs.series_instance_uid, i)? {
                    continue;
                }
                if !self.accepts(&attrs, &levels) || !self.combined_date_time_ok(&attrs) {
                    continue;
                }
                let instance_count = self.series_aggregate(&attrs.series_instance_uid)?;
                if instance_count > 0 {
                    out.push(SeriesHit {
                        attrs,
                        instance_count,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Instance rows of a run that may match.
    fn instance_candidates(&self, run: &Run) -> Result<Vec<u32>> {
        if let Some(uids) = exact(self.query, tags::SOP_INSTANCE_UID) {
            return rows_of(&uids, |uid| Ok(run.find_instance(uid)?.map(|x| x.row)));
        }
        let mut rows = Vec::new();
        for se in self.series_candidates(run)? {
            let series = run.series(se)?;
            rows.extend(series.first_instance..series.first_instance + series.instance_count);
        }
        Ok(rows)
    }

    /// The in-memory entries an instance query can match: those of the SOP Instance UIDs,
    /// series or studies it names, else all.
    fn mem_instance_candidates<'m>(&self, m: &'m MemPart) -> Vec<&'m MemInstance> {
        if let Some(uids) = exact(self.query, tags::SOP_INSTANCE_UID) {
            return uids.iter().filter_map(|u| m.instances.get(*u)).collect();
        }
        if let Some(uids) = exact(self.query, tags::SERIES_INSTANCE_UID) {
            return uids.iter().flat_map(|u| m.in_series(u)).collect();
        }
        if let Some(uids) = exact(self.query, tags::STUDY_INSTANCE_UID) {
            return uids.iter().flat_map(|u| m.in_study(u)).collect();
        }
        m.instances.values().collect()
    }

    fn instances(&self) -> Result<Vec<InstanceHit>> {
        let levels = [Level::Patient, Level::Study, Level::Series, Level::Instance];
        let mut out = Vec::new();
        let mut done: HashSet<String> = HashSet::new();
        for source in self.sources {
            match source {
                Source::Mem(m) => {
                    for x in self.mem_instance_candidates(m) {
                        if out.len() >= self.want {
                            return Ok(out);
                        }
                        done.insert(x.attrs.sop_instance_uid.clone());
                        if self.accepts(&x.attrs, &levels) && self.combined_date_time_ok(&x.attrs) {
                            out.push(InstanceHit {
                                attrs: x.attrs.clone(),
                                location: x.location,
                                seq: x.seq,
                            });
                        }
                    }
                }
                Source::Run(r) => {
                    let mut parent: Option<(u32, InstanceAttrs)> = None;
                    for row in self.instance_candidates(r)? {
                        if out.len() >= self.want {
                            return Ok(out);
                        }
                        let inst = r.instance(row)?;
                        let sop = r.sop_uid(&inst)?;
                        if self.dead.is_dead(sop, inst.seq) || done.contains(sop) {
                            continue;
                        }
                        done.insert(sop.to_string());
                        let mut attrs = match &parent {
                            Some((s, a)) if *s == inst.series => a.clone(),
                            _ => {
                                let se = r.series(inst.series)?;
                                let study = r.study(se.study)?;
                                let mut a = InstanceAttrs::default();
                                r.study_attrs(&study, &mut a)?;
                                r.series_attrs(&se, &mut a)?;
                                parent = Some((inst.series, a.clone()));
                                a
                            }
                        };
                        r.instance_attrs(&inst, &mut attrs)?;
                        if self.accepts(&attrs, &levels) && self.combined_date_time_ok(&attrs) {
                            out.push(InstanceHit {
                                attrs,
                                location: inst.location,
                                seq: inst.seq,
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Fills in the study and series of in-memory removals recorded before any copy of their
/// instance was indexed (see [`Catalog::remove`]).
fn resolve_removals(state: &mut State) -> Result<()> {
    let State { runs, mem, .. } = state;
    for (r, _) in mem.removals.iter_mut() {
        if !r.study_instance_uid.is_empty() {
            continue;
        }
        for (_, run) in runs.iter().rev() {
            if let Some(row) = run.find_instance(&r.sop_instance_uid)? {
                let old = run.full_attrs(&row)?;
                r.study_instance_uid = old.study_instance_uid;
                r.series_instance_uid = old.series_instance_uid;
                break;
            }
        }
    }
    Ok(())
}

/// The dead map from every run's removals and the in-memory part's.
fn rebuild_dead(state: &State) -> Result<Dead> {
    let mut dead = Dead::default();
    for (_, run) in &state.runs {
        for r in run.removals()? {
            dead.add(&r);
        }
    }
    for (r, _) in &state.mem.removals {
        dead.add(r);
    }
    Ok(dead)
}

/// A record of a sealed segment, as the catalog indexes it.
#[derive(Debug, Clone)]
pub enum SegmentRecord {
    /// A metadata record: the instance's attributes, where its object is, its version.
    Instance {
        attrs: Box<InstanceAttrs>,
        location: InstanceLocation,
        seq: u64,
    },
    /// A tombstone of an instance.
    Removed { sop_instance_uid: String, seq: u64 },
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync index directory", dir.display().to_string(), e))
}

/// The rows of the UIDs a list-of-UID key names (those the run holds).
fn rows_of(uids: &[&str], find: impl Fn(&str) -> Result<Option<u32>>) -> Result<Vec<u32>> {
    let mut rows = Vec::new();
    for uid in uids {
        rows.extend(find(uid)?);
    }
    Ok(rows)
}

/// The newest in-memory instance per study (or series): it gives their attributes.
fn patient_level(a: &InstanceAttrs) -> InstanceAttrs {
    InstanceAttrs {
        patient_id: a.patient_id.clone(),
        issuer_of_patient_id: a.issuer_of_patient_id.clone(),
        patient_name: a.patient_name.clone(),
        patient_birth_date: a.patient_birth_date.clone(),
        patient_sex: a.patient_sex.clone(),
        ..Default::default()
    }
}

fn study_level(a: &InstanceAttrs) -> InstanceAttrs {
    InstanceAttrs {
        study_instance_uid: a.study_instance_uid.clone(),
        study_date: a.study_date.clone(),
        study_time: a.study_time.clone(),
        accession_number: a.accession_number.clone(),
        study_id: a.study_id.clone(),
        study_description: a.study_description.clone(),
        referring_physician_name: a.referring_physician_name.clone(),
        ..patient_level(a)
    }
}

fn series_level(a: &InstanceAttrs) -> InstanceAttrs {
    InstanceAttrs {
        modality: a.modality.clone(),
        series_instance_uid: a.series_instance_uid.clone(),
        series_number: a.series_number,
        series_description: a.series_description.clone(),
        body_part_examined: a.body_part_examined.clone(),
        performed_procedure_step_start_date: a.performed_procedure_step_start_date.clone(),
        ..study_level(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::matching::{MatchOptions, MatchVr};

    fn attrs(patient: u32, study: u32, series: u32, instance: u32) -> InstanceAttrs {
        InstanceAttrs {
            patient_id: format!("P{patient}"),
            patient_name: format!("Virtanen^Aino{patient}"),
            study_instance_uid: format!("1.2.{study}"),
            study_date: format!("202401{:02}", 1 + study % 28),
            study_time: "120000".into(),
            accession_number: format!("A{study}"),
            modality: ["CT", "MR", "SR"][(series % 3) as usize].into(),
            series_instance_uid: format!("1.2.{study}.{series}"),
            series_number: Some(series as i32),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: format!("1.2.{study}.{series}.{instance}"),
            instance_number: Some(instance as i32),
            ..Default::default()
        }
    }

    fn filter(tag: Tag, vr: MatchVr, key: &str) -> (Tag, Matcher) {
        (
            tag,
            Matcher::parse(vr, key, MatchOptions::default()).expect("valid key"),
        )
    }

    fn query(level: Level, filters: Vec<(Tag, Matcher)>) -> Query {
        Query {
            level,
            filters,
            offset: 0,
            limit: None,
        }
    }

    fn studies(c: &Catalog, filters: Vec<(Tag, Matcher)>) -> Vec<StudyHit> {
        match c.query(&query(Level::Study, filters)).unwrap() {
            Hits::Studies(h) => h,
            other => panic!("wrong level {other:?}"),
        }
    }

    /// 3 patients × 2 studies × 3 series × 4 instances, seq in insertion order.
    fn fill(c: &Catalog, seq: &mut u64) {
        for p in 0..3 {
            for st in 0..2 {
                let study = p * 10 + st;
                for se in 0..3 {
                    for i in 0..4 {
                        *seq += 1;
                        c.insert(attrs(p, study, se, i), InstanceLocation::default(), *seq, 1)
                            .unwrap();
                    }
                }
            }
        }
    }

    fn check_contents(c: &Catalog) {
        let hits = studies(c, vec![filter(tags::PATIENT_ID, MatchVr::Text, "P1")]);
        let mut uids: Vec<_> = hits
            .iter()
            .map(|h| h.attrs.study_instance_uid.clone())
            .collect();
        uids.sort();
        assert_eq!(uids, vec!["1.2.10", "1.2.11"]);
        for h in &hits {
            assert_eq!((h.series_count, h.instance_count), (3, 12));
            assert_eq!(h.modalities_in_study, "CT\\MR\\SR");
        }
        let acc = studies(
            c,
            vec![filter(tags::ACCESSION_NUMBER, MatchVr::Text, "A21")],
        );
        assert_eq!(acc.len(), 1);
        assert_eq!(acc[0].attrs.patient_id, "P2");
        let wild = studies(
            c,
            vec![filter(
                tags::PATIENT_NAME,
                MatchVr::PersonName,
                "virtanen^aino2*",
            )],
        );
        assert_eq!(wild.len(), 2, "PN matching is case-insensitive");
        let range = studies(
            c,
            vec![filter(tags::STUDY_DATE, MatchVr::Date, "20240111-20240112")],
        );
        let mut got: Vec<_> = range.iter().map(|h| h.attrs.study_date.clone()).collect();
        got.sort();
        assert_eq!(got, vec!["20240111", "20240112"]);
        let mr = studies(
            c,
            vec![filter(tags::MODALITIES_IN_STUDY, MatchVr::Text, "MR")],
        );
        assert_eq!(mr.len(), 6);
        let Hits::Instances(inst) = c
            .query(&query(
                Level::Instance,
                vec![filter(tags::SERIES_INSTANCE_UID, MatchVr::Uid, "1.2.20.1")],
            ))
            .unwrap()
        else {
            panic!()
        };
        let numbers: Vec<_> = inst.iter().map(|h| h.attrs.instance_number).collect();
        assert_eq!(numbers.len(), 4);
        assert!(inst
            .iter()
            .all(|h| h.attrs.patient_id == "P2" && h.attrs.modality == "MR"));
        let Hits::Series(series) = c
            .query(&query(
                Level::Series,
                vec![
                    filter(tags::STUDY_INSTANCE_UID, MatchVr::Uid, "1.2.0"),
                    filter(tags::MODALITY, MatchVr::Text, "CT"),
                ],
            ))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].instance_count, 4);
        let Hits::Patients(patients) = c.query(&query(Level::Patient, vec![])).unwrap() else {
            panic!()
        };
        assert_eq!(patients.len(), 3);
        assert!(patients
            .iter()
            .all(|p| p.study_count == 2 && p.instance_count == 24));
    }

    #[test]
    fn queries_agree_before_and_after_freezing_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = Catalog::open(dir.path(), CatalogLimits::default()).unwrap();
        let mut seq = 0;
        fill(&c, &mut seq);
        check_contents(&c);
        c.freeze().unwrap().unwrap();
        assert_eq!(c.mem_len(), 0);
        check_contents(&c);
        drop(c);
        let (c, report) = Catalog::open(dir.path(), CatalogLimits::default()).unwrap();
        assert_eq!(report.runs_mapped, 1);
        check_contents(&c);
        c.verify().unwrap();
    }

    #[test]
    fn study_date_and_time_ranges_match_as_one_combined_range() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = Catalog::open(dir.path(), CatalogLimits::default()).unwrap();
        let mut seq = 0;
        fill(&c, &mut seq);
        // 11 January 13:00 to 12 January 14:00: the study of the 12th at 12:00 is inside,
        // the one of the 11th at 12:00 is not, although 12:00 is outside 13:00-14:00.
        let hits = studies(
            &c,
            vec![
                filter(tags::STUDY_DATE, MatchVr::Date, "20240111-20240112"),
                filter(tags::STUDY_TIME, MatchVr::Time, "1300-1400"),
            ],
        );
        let dates: Vec<_> = hits.iter().map(|h| h.attrs.study_date.clone()).collect();
        assert_eq!(dates, vec!["20240112"]);
        // A single date with a time range: both keys match on their own.
        let hits = studies(
            &c,
            vec![
                filter(tags::STUDY_DATE, MatchVr::Date, "20240112"),
                filter(tags::STUDY_TIME, MatchVr::Time, "1300-1400"),
            ],
        );
        assert!(hits.is_empty());
    }

    #[test]
    fn deletes_and_replacements_across_runs_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = Catalog::open(dir.path(), CatalogLimits::default()).unwrap();
        let mut seq = 0;
        fill(&c, &mut seq);
        c.freeze().unwrap();
        // Replace one instance (newer copy in memory), delete another, add one to a study.
        let mut replaced = attrs(1, 10, 0, 0);
        replaced.patient_name = "Virtanen^Aino1^Renamed".into();
        c.insert(attrs(1, 10, 5, 0), InstanceLocation::default(), 1000, 2)
            .unwrap();
        assert!(c.remove("1.2.10.1.0", 1001, 2).unwrap());
        assert!(!c.remove("1.2.404", 1002, 2).unwrap());
        // The newest instance of a study gives the study-level attributes.
        c.insert(replaced, InstanceLocation::default(), 1003, 2)
            .unwrap();
        let check = |c: &Catalog, stage: &str| {
            eprintln!("stage {stage}");
            let hit = studies(
                c,
                vec![filter(tags::STUDY_INSTANCE_UID, MatchVr::Uid, "1.2.10")],
            );
            assert_eq!(hit.len(), 1);
            // 12 - 1 deleted + 1 added; the replaced one counts once.
            assert_eq!((hit[0].series_count, hit[0].instance_count), (4, 12));
            assert_eq!(hit[0].attrs.patient_name, "Virtanen^Aino1^Renamed");
            assert!(c.instance("1.2.10.1.0").unwrap().is_none());
            assert_eq!(c.instance("1.2.10.0.0").unwrap().unwrap().seq, 1003);
            let Hits::Instances(all) = c.query(&query(Level::Instance, vec![])).unwrap() else {
                panic!()
            };
            assert_eq!(all.len(), 72);
        };
        check(&c, "mem");
        c.freeze().unwrap();
        check(&c, "frozen");
        drop(c);
        let (c, _) = Catalog::open(dir.path(), CatalogLimits::default()).unwrap();
        check(&c, "reopened");
        c.merge().unwrap();
        assert_eq!(c.run_counts().len(), 1);
        assert_eq!(c.run_counts()[0].removed, 0);
        check(&c, "merged");
    }

    #[test]
    fn binary_counter_merging_keeps_runs_few_and_contents_intact() {
        let dir = tempfile::tempdir().unwrap();
        let limits = CatalogLimits {
            runs_max: 4,
            ..CatalogLimits::default()
        };
        let (c, _) = Catalog::open(dir.path(), limits).unwrap();
        let mut seq = 0;
        for round in 0..9u32 {
            for i in 0..10 {
                seq += 1;
                c.insert(
                    attrs(7, 100 + round, 0, i),
                    InstanceLocation::default(),
                    seq,
                    u64::from(round),
                )
                .unwrap();
            }
            c.freeze().unwrap();
            c.maybe_merge().unwrap();
            assert!(c.run_counts().len() <= 4);
        }
        let hits = studies(&c, vec![filter(tags::PATIENT_ID, MatchVr::Text, "P7")]);
        assert_eq!(hits.len(), 9);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(
            files,
            c.run_counts().len(),
            "merged runs' files are removed"
        );
    }

    #[test]
    fn an_instance_moved_to_another_series_in_memory_counts_once_where_it_now_is() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = Catalog::open(dir.path(), CatalogLimits::default()).unwrap();
        c.insert(attrs(1, 1, 0, 0), InstanceLocation::default(), 1, 1)
            .unwrap();
        c.insert(attrs(1, 1, 0, 1), InstanceLocation::default(), 2, 1)
            .unwrap();
        let mut moved = attrs(1, 1, 0, 1);
        moved.series_instance_uid = "1.2.1.9".into();
        c.insert(moved, InstanceLocation::default(), 3, 1).unwrap();
        let series_count = |c: &Catalog, uid: &str| {
            let Hits::Series(h) = c
                .query(&query(
                    Level::Series,
                    vec![filter(tags::SERIES_INSTANCE_UID, MatchVr::Uid, uid)],
                ))
                .unwrap()
            else {
                panic!()
            };
            h.first().map_or(0, |h| h.instance_count)
        };
        assert_eq!(series_count(&c, "1.2.1.0"), 1);
        assert_eq!(series_count(&c, "1.2.1.9"), 1);
        let study = studies(
            &c,
            vec![filter(tags::STUDY_INSTANCE_UID, MatchVr::Uid, "1.2.1")],
        );
        assert_eq!((study[0].series_count, study[0].instance_count), (2, 2));
        assert!(c.remove("1.2.1.0.1", 4, 1).unwrap());
        assert_eq!(series_count(&c, "1.2.1.9"), 0);
        c.freeze().unwrap();
        assert_eq!(series_count(&c, "1.2.1.0"), 1);
        assert_eq!(c.mem_len(), 0);
    }

    #[test]
    fn limit_and_offset_page_through_results() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = Catalog::open(dir.path(), CatalogLimits::default()).unwrap();
        let mut seq = 0;
        fill(&c, &mut seq);
        c.freeze().unwrap();
        let mut seen = Vec::new();
        for page in 0..4 {
            let q = Query {
                level: Level::Study,
                filters: vec![],
                offset: page * 2,
                limit: Some(2),
            };
            let Hits::Studies(h) = c.query(&q).unwrap() else {
                panic!()
            };
            assert!(h.len() <= 2);
            seen.extend(h.into_iter().map(|h| h.attrs.study_instance_uid));
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 6);
    }

    #[test]
    fn a_damaged_run_is_set_aside_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = Catalog::open(dir.path(), CatalogLimits::default()).unwrap();
        let mut seq = 0;
        fill(&c, &mut seq);
        c.freeze().unwrap();
        drop(c);
        let path = dir.path().join(run_file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();
        let (c, report) = Catalog::open(dir.path(), CatalogLimits::default()).unwrap();
        assert_eq!(report.runs_mapped, 0);
        assert_eq!(report.runs_rejected.len(), 1);
        assert!(dir.path().join("run-0000000000000001.kvi.bad").exists());
        assert!(studies(&c, vec![]).is_empty());
    }

    /// (patient, series, instances, modalities) per study, as `for_each_study` walks them;
    /// each study once.
    fn walked(c: &Catalog) -> BTreeMap<String, (String, u32, u32, String)> {
        let mut out = BTreeMap::new();
        let mut instances = HashSet::new();
        c.for_each_study(&mut |study| {
            let series: HashSet<&str> = study
                .instances
                .iter()
                .map(|m| m.series_instance_uid.as_str())
                .collect();
            let modalities: BTreeSet<&str> = study
                .instances
                .iter()
                .map(|m| m.modality.as_str())
                .collect();
            for m in &study.instances {
                assert!(
                    instances.insert(m.sop_instance_uid.clone()),
                    "{} visited twice",
                    m.sop_instance_uid
                );
            }
            let row = (
                study.patient_id.clone(),
                series.len() as u32,
                study.instances.len() as u32,
                modalities.into_iter().collect::<Vec<_>>().join("\\"),
            );
            assert!(
                out.insert(study.study_instance_uid.clone(), row).is_none(),
                "study {} visited twice",
                study.study_instance_uid
            );
        })
        .unwrap();
        out
    }

    #[test]
    fn walking_every_study_agrees_with_study_queries_across_runs_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = Catalog::open(dir.path(), CatalogLimits::default()).unwrap();
        let mut seq = 0;
        fill(&c, &mut seq);
        c.freeze().unwrap();
        // A second run: study 1.2.10 grows, one of its instances moves to another series
        // (a newer copy), one is deleted.
        for i in 0..3 {
            seq += 1;
            c.insert(attrs(1, 10, 4, i), InstanceLocation::default(), seq, 2)
                .unwrap();
        }
        let mut moved = attrs(1, 10, 0, 0);
        moved.series_instance_uid = "1.2.10.7".into();
        seq += 1;
        c.insert(moved, InstanceLocation::default(), seq, 2)
            .unwrap();
        let moved_seq = seq;
        seq += 1;
        assert!(c.remove("1.2.10.1.1", seq, 2).unwrap());
        c.freeze().unwrap();
        // In memory: study 1.2.20 (in the first run) grows, a new study, a delete in 1.2.21.
        seq += 1;
        c.insert(attrs(2, 20, 5, 0), InstanceLocation::default(), seq, 3)
            .unwrap();
        seq += 1;
        c.insert(attrs(4, 99, 0, 0), InstanceLocation::default(), seq, 3)
            .unwrap();
        seq += 1;
        assert!(c.remove("1.2.21.2.3", seq, 3).unwrap());

        let check = |c: &Catalog, stage: &str| {
            let walk = walked(c);
            let queried: BTreeMap<String, (String, u32, u32, String)> = studies(c, vec![])
                .into_iter()
                .map(|h| {
                    (
                        h.attrs.study_instance_uid.clone(),
                        (
                            h.attrs.patient_id.clone(),
                            h.series_count,
                            h.instance_count,
                            h.modalities_in_study.clone(),
                        ),
                    )
                })
                .collect();
            assert_eq!(walk, queried, "{stage}");
            assert_eq!(walk.len(), 7, "{stage}");
            // 12 + 3 added - 1 deleted (the moved one counts once, in its new series).
            assert_eq!(walk["1.2.10"].1, 5, "{stage}");
            assert_eq!(walk["1.2.10"].2, 14, "{stage}");
            assert_eq!(walk["1.2.20"].2, 13, "{stage}");
            assert_eq!(walk["1.2.21"].2, 11, "{stage}");
            assert_eq!(walk["1.2.99"], ("P4".into(), 1, 1, "CT".into()), "{stage}");
            let mut moved = None;
            c.for_each_study(&mut |study| {
                for m in &study.instances {
                    if m.sop_instance_uid == "1.2.10.0.0" {
                        moved = Some((m.series_instance_uid.clone(), m.seq));
                    }
                }
            })
            .unwrap();
            assert_eq!(moved, Some(("1.2.10.7".into(), moved_seq)), "{stage}");
        };
        check(&c, "runs and memory");
        c.freeze().unwrap();
        check(&c, "three runs");
        drop(c);
        let (c, _) = Catalog::open(dir.path(), CatalogLimits::default()).unwrap();
        check(&c, "reopened");
        c.merge().unwrap();
        check(&c, "merged");
    }
}
