//! `kuvasto stats`: what the archive holds and how its disk space is used.
//!
//! Contents come from one walk over the engine's catalog, study by study
//! ([`Catalog::for_each_study`]: every live instance once, the newest copy, with its series,
//! modality and object size), so memory is one study's instances plus the totals per register
//! and modality. Each study's register is the rules' record of it (national profile; empty
//! while it waits for its documents, or when it was stored before the profile was switched
//! on) or the one organisation's register (standalone profile). Studies by state, hidden
//! instances and documents come from the rules' records. Storage is the engine's
//! [`SpaceReport`]: the same live bytes per segment compaction picks segments by.
//!
//! [`Catalog::for_each_study`]: kuvasto_engine::index::catalog::Catalog::for_each_study
//! [`SpaceReport`]: kuvasto_engine::segment::space::SpaceReport

use super::{Progress, ProgressFn};
use crate::archive::audit::Outcome;
use crate::archive::directory::Role;
use crate::archive::state::StudyState;
use crate::archive::{Archive, Caller};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The command line's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// List every segment, not only the totals.
    #[arg(long)]
    pub segments: bool,
    /// Print the report as JSON (every segment listed, exact byte counts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatsRequest {
    /// Render every segment (JSON always lists them).
    #[serde(default)]
    pub list_segments: bool,
}

impl StatsArgs {
    pub fn request(&self) -> anyhow::Result<StatsRequest> {
        Ok(StatsRequest {
            list_segments: self.segments,
        })
    }
}

/// Instances the walk reports progress after, each time.
const PROGRESS_EVERY_INSTANCES: u64 = 50_000;

/// Counts of one slice of the archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub studies: u64,
    pub series: u64,
    pub instances: u64,
    /// Bytes of the instances as stored (Part-10 files as received).
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.studies += other.studies;
        self.series += other.series;
        self.instances += other.instances;
        self.bytes += other.bytes;
    }
}

/// One modality's share (of the archive or of a register). A study counts once for each
/// modality it has; a series has one modality (empty when the instances name none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModalityStats {
    pub modality: String,
    #[serde(flatten)]
    pub counts: Counts,
}

/// One register's share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterStats {
    /// The register's OID; empty for studies in no register (waiting for their documents,
    /// or stored before the national profile).
    pub register: String,
    /// The organisation controlling it, and its name (empty when the directory does not
    /// know the register).
    pub controller: String,
    pub controller_name: String,
    #[serde(flatten)]
    pub counts: Counts,
    pub modalities: Vec<ModalityStats>,
}

/// Studies by the rules' state (national profile: the rules' records).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyStates {
    pub linked: u64,
    pub quarantined: u64,
    pub invalidated: u64,
    pub expired: u64,
}

/// What the national profile's rules hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NationalStats {
    /// Study records by state (an expired study's instances are deleted; its record stays).
    pub studies_by_state: StudyStates,
    /// Studies with instances the rules have no record of (stored before the profile).
    pub studies_without_record: u64,
    /// Announced documents (requests, visit notes, reports).
    pub documents: u64,
}

/// One segment's space.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentStats {
    pub id: u64,
    pub sealed: bool,
    pub file_bytes: u64,
    /// Bytes after the header records could use: the rest of the file once sealed, the
    /// durable records so far while unsealed.
    pub used_bytes: u64,
    pub live_bytes: u64,
    pub garbage_bytes: u64,
    pub garbage_ratio: f64,
}

/// Disk space: segments and index runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageStats {
    pub segment_count: u64,
    pub sealed_segments: u64,
    pub file_bytes: u64,
    pub used_bytes: u64,
    pub live_bytes: u64,
    pub garbage_bytes: u64,
    /// Garbage over used bytes, all segments together.
    pub garbage_ratio: f64,
    pub index_runs: u64,
    pub index_bytes: u64,
    pub segments: Vec<SegmentStats>,
}

/// What `kuvasto stats` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// `national` or `standalone`.
    pub profile: String,
    #[serde(flatten)]
    pub totals: Counts,
    /// Instances rejection notes hid (IHE IOCM), included in the counts above; bytes theirs.
    pub hidden_instances: u64,
    pub hidden_bytes: u64,
    pub registers: Vec<RegisterStats>,
    pub modalities: Vec<ModalityStats>,
    /// The national profile's rules; `None` in the standalone profile.
    pub national: Option<NationalStats>,
    /// Boxed: reports travel in enums beside small messages (the admin socket's lines).
    pub storage: Box<StorageStats>,
    /// The text report lists every segment (`--segments`; travels with the report when a
    /// running server made it).
    #[serde(default)]
    pub list_segments: bool,
}

/// `1.2 GiB`: bytes in binary units, one decimal above bytes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A plain-text table: columns after the first right-aligned, each as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::from(" ");
        for (i, cell) in cells.enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            if i == 0 {
                out.push_str(&format!(" {cell:<width$}"));
            } else {
                out.push_str(&format!("  {cell:>width$}"));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

fn counts_row(name: String, c: &Counts) -> Vec<String> {
    vec![
        name,
        c.studies.to_string(),
        c.series.to_string(),
        c.instances.to_string(),
        human_bytes(c.bytes),
    ]
}

const COUNT_COLUMNS: [&str; 5] = ["", "studies", "series", "instances", "bytes"];

fn modality_name(modality: &str) -> String {
    if modality.is_empty() {
        "(none)".into()
    } else {
        modality.to_string()
    }
}

fn percent(ratio: f64) -> String {
    format!("{:.1} %", ratio * 100.0)
}

impl StatsReport {
    pub fn render(&self) -> String {
        let mut out = format!("archive ({} profile)\n", self.profile);
        out.push_str(&table(
            &COUNT_COLUMNS,
            &[counts_row("total".into(), &self.totals)],
        ));
        if self.hidden_instances > 0 {
            out.push_str(&format!(
                "  of which hidden by rejection notes: {} instances, {}\n",
                self.hidden_instances,
                human_bytes(self.hidden_bytes)
            ));
        }
        out.push_str("\nby register\n");
        let mut header = COUNT_COLUMNS;
        header[0] = "register";
        let rows: Vec<Vec<String>> = self
            .registers
            .iter()
            .map(|r| {
                let name = if r.register.is_empty() {
                    "(no register)".to_string()
                } else if r.controller_name.is_empty() || r.controller_name == r.register {
                    r.register.clone()
                } else {
                    format!("{} ({})", r.register, r.controller_name)
                };
                counts_row(name, &r.counts)
            })
            .collect();
        out.push_str(&table(&header, &rows));
        out.push_str("\nby modality\n");
        header[0] = "modality";
        let rows: Vec<Vec<String>> = self
            .modalities
            .iter()
            .map(|m| counts_row(modality_name(&m.modality), &m.counts))
            .collect();
        out.push_str(&table(&header, &rows));
        out.push_str("\nby register and modality\n");
        header[0] = "register / modality";
        let rows: Vec<Vec<String>> = self
            .registers
            .iter()
            .flat_map(|r| {
                let register = if r.register.is_empty() {
                    "(no register)"
                } else {
                    r.register.as_str()
                };
                r.modalities.iter().map(move |m| {
                    counts_row(
                        format!("{register} / {}", modality_name(&m.modality)),
                        &m.counts,
                    )
                })
            })
            .collect();
        out.push_str(&table(&header, &rows));
        if let Some(n) = &self.national {
            let s = &n.studies_by_state;
            out.push_str(&format!(
                "\nstudies by state: {} linked, {} quarantined, {} invalidated, {} expired; {} without a record\ndocuments: {}\n",
                s.linked, s.quarantined, s.invalidated, s.expired, n.studies_without_record, n.documents
            ));
        }
        let st = &self.storage;
        out.push_str("\nstorage\n");
        let mut rows = vec![
            vec![
                "segments".to_string(),
                format!("{} ({} sealed)", st.segment_count, st.sealed_segments),
            ],
            vec!["file bytes".into(), human_bytes(st.file_bytes)],
            vec!["live bytes".into(), human_bytes(st.live_bytes)],
            vec![
                "garbage".into(),
                format!(
                    "{} ({} of used)",
                    human_bytes(st.garbage_bytes),
                    percent(st.garbage_ratio)
                ),
            ],
            vec![
                "index runs".into(),
                format!("{} ({})", st.index_runs, human_bytes(st.index_bytes)),
            ],
        ];
        for row in &mut rows {
            row[0].push(':');
        }
        for row in &rows {
            out.push_str(&format!("  {:<12} {}\n", row[0], row[1]));
        }
        if self.list_segments {
            let rows: Vec<Vec<String>> = st
                .segments
                .iter()
                .map(|s| {
                    vec![
                        s.id.to_string(),
                        if s.sealed { "sealed" } else { "open" }.to_string(),
                        human_bytes(s.file_bytes),
                        human_bytes(s.live_bytes),
                        percent(s.garbage_ratio),
                    ]
                })
                .collect();
            out.push('\n');
            out.push_str(&table(
                &["segment", "state", "file", "live", "garbage"],
                &rows,
            ));
        }
        out
    }
}

/// Counts of one study, per modality.
#[derive(Default)]
struct StudyCounts {
    total: Counts,
    by_modality: BTreeMap<String, Counts>,
}

/// Totals per register (and per modality within it).
#[derive(Default)]
struct Totals {
    total: Counts,
    by_register: BTreeMap<String, StudyCounts>,
    by_modality: BTreeMap<String, Counts>,
}

impl Totals {
    fn add_study(&mut self, register: &str, study: &StudyCounts) {
        self.total.add(&study.total);
        let r = self.by_register.entry(register.to_string()).or_default();
        r.total.add(&study.total);
        for (modality, c) in &study.by_modality {
            r.by_modality.entry(modality.clone()).or_default().add(c);
            self.by_modality.entry(modality.clone()).or_default().add(c);
        }
    }
}

fn modalities(map: &BTreeMap<String, Counts>) -> Vec<ModalityStats> {
    map.iter()
        .map(|(modality, counts)| ModalityStats {
            modality: modality.clone(),
            counts: *counts,
        })
        .collect()
}

/// The register every study is in when the directory is standalone: the one organisation's.
fn standalone_register(archive: &Archive) -> String {
    archive
        .directory()
        .organisations()
        .next()
        .map(|o| {
            o.registers
                .first()
                .cloned()
                .unwrap_or_else(|| o.oid.clone())
        })
        .unwrap_or_default()
}

/// The register a study is in: the rules' record of it (national), or the one register
/// (standalone). Empty when it is in none.
pub fn register_of(archive: &Archive, study: &str) -> String {
    if archive.directory().is_standalone() {
        return standalone_register(archive);
    }
    archive
        .rules_state()
        .studies
        .get(study)
        .map(|s| s.register.clone())
        .unwrap_or_default()
}

/// Walks the catalog and the rules' records; one audit record (`stats`).
pub fn run(
    archive: &Archive,
    caller: &Caller,
    request: &StatsRequest,
    progress: ProgressFn,
) -> anyhow::Result<StatsReport> {
    anyhow::ensure!(
        caller.role() == Role::Operator,
        "only an operator reads the archive's statistics"
    );
    let directory = archive.directory();
    let standalone = directory.is_standalone();
    let the_register = standalone_register(archive);
    let catalog = archive
        .store()
        .catalog()
        .ok_or_else(|| anyhow::anyhow!("this store has no catalog"))?;

    let mut totals = Totals::default();
    let (mut hidden_instances, mut hidden_bytes) = (0u64, 0u64);
    let mut without_record = 0u64;
    let mut instances_seen = 0u64;
    let mut bytes_seen = 0u64;
    let mut next_progress = PROGRESS_EVERY_INSTANCES;
    catalog.for_each_study(&mut |study| {
        // The rules' guard only for this study's lookups: rule changes go on meanwhile.
        let register = {
            let maps = archive.rules_state();
            for m in &study.instances {
                if maps.hidden.contains_key(&m.sop_instance_uid) {
                    hidden_instances += 1;
                    hidden_bytes += m.location.object_len;
                }
            }
            if standalone {
                the_register.clone()
            } else {
                match maps.studies.get(&study.study_instance_uid) {
                    Some(record) => record.register.clone(),
                    None => {
                        without_record += 1;
                        String::new()
                    }
                }
            }
        };
        let mut counts = StudyCounts::default();
        let mut series: BTreeMap<&str, &str> = BTreeMap::new();
        for m in &study.instances {
            let bytes = m.location.object_len;
            counts.total.instances += 1;
            counts.total.bytes += bytes;
            let c = counts.by_modality.entry(m.modality.clone()).or_default();
            c.instances += 1;
            c.bytes += bytes;
            series
                .entry(m.series_instance_uid.as_str())
                .or_insert(m.modality.as_str());
            instances_seen += 1;
            bytes_seen += bytes;
        }
        counts.total.studies = 1;
        counts.total.series = series.len() as u64;
        let study_modalities: BTreeSet<&str> = series.values().copied().collect();
        for modality in study_modalities {
            if let Some(c) = counts.by_modality.get_mut(modality) {
                c.studies = 1;
            }
        }
        for modality in series.values() {
            if let Some(c) = counts.by_modality.get_mut(*modality) {
                c.series += 1;
            }
        }
        totals.add_study(&register, &counts);
        if instances_seen >= next_progress {
            next_progress = instances_seen + PROGRESS_EVERY_INSTANCES;
            progress(&Progress {
                what: "counting instances".into(),
                done: instances_seen,
                total: 0,
                bytes: bytes_seen,
            });
        }
    })?;

    let national = (!standalone).then(|| {
        let maps = archive.rules_state();
        let mut states = StudyStates::default();
        for record in maps.studies.values() {
            match record.state {
                StudyState::Linked => states.linked += 1,
                StudyState::Quarantined { .. } => states.quarantined += 1,
                StudyState::Invalidated { .. } => states.invalidated += 1,
                StudyState::Expired { .. } => states.expired += 1,
            }
        }
        NationalStats {
            studies_by_state: states,
            studies_without_record: without_record,
            documents: maps.documents.len() as u64,
        }
    });

    let registers = totals
        .by_register
        .iter()
        .map(|(register, c)| {
            let controller = directory.controller_of(register).unwrap_or("").to_string();
            let controller_name = directory
                .organisation(&controller)
                .map(|o| o.name.clone())
                .unwrap_or_default();
            RegisterStats {
                register: register.clone(),
                controller,
                controller_name,
                counts: c.total,
                modalities: modalities(&c.by_modality),
            }
        })
        .collect();

    let space = archive.store().space_report();
    let storage = Box::new(StorageStats {
        segment_count: space.segments.len() as u64,
        sealed_segments: space.segments.iter().filter(|s| s.sealed).count() as u64,
        file_bytes: space.file_bytes(),
        used_bytes: space.used_bytes(),
        live_bytes: space.live_bytes(),
        garbage_bytes: space.garbage_bytes(),
        garbage_ratio: space.garbage_ratio(),
        index_runs: space.index_runs as u64,
        index_bytes: space.index_bytes,
        segments: space
            .segments
            .iter()
            .map(|s| SegmentStats {
                id: s.id,
                sealed: s.sealed,
                file_bytes: s.file_bytes,
                used_bytes: s.used_bytes,
                live_bytes: s.live_bytes,
                garbage_bytes: s.garbage_bytes(),
                garbage_ratio: s.garbage_ratio(),
            })
            .collect(),
    });

    let report = StatsReport {
        profile: if standalone { "standalone" } else { "national" }.into(),
        totals: totals.total,
        hidden_instances,
        hidden_bytes,
        registers,
        modalities: modalities(&totals.by_modality),
        national,
        storage,
        list_segments: request.list_segments,
    };
    archive.audit(
        caller,
        "stats",
        Outcome::Success,
        "",
        "",
        "",
        format!(
            "studies={} instances={} bytes={} segments={} garbage_ratio={:.3}",
            report.totals.studies,
            report.totals.instances,
            report.totals.bytes,
            report.storage.segment_count,
            report.storage.garbage_ratio
        ),
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(1_288_490_189), "1.2 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    fn counts(studies: u64, series: u64, instances: u64, bytes: u64) -> Counts {
        Counts {
            studies,
            series,
            instances,
            bytes,
        }
    }

    fn report() -> StatsReport {
        StatsReport {
            profile: "national".into(),
            totals: counts(3, 4, 10, 3 << 20),
            hidden_instances: 1,
            hidden_bytes: 2048,
            registers: vec![
                RegisterStats {
                    register: String::new(),
                    controller: String::new(),
                    controller_name: String::new(),
                    counts: counts(1, 1, 2, 1000),
                    modalities: vec![ModalityStats {
                        modality: "MR".into(),
                        counts: counts(1, 1, 2, 1000),
                    }],
                },
                RegisterStats {
                    register: "1.2.246.10".into(),
                    controller: "1.2.246.10".into(),
                    controller_name: "Keski-Suomen hyvinvointialue".into(),
                    counts: counts(2, 3, 8, (3 << 20) - 1000),
                    modalities: vec![
                        ModalityStats {
                            modality: "CT".into(),
                            counts: counts(2, 2, 7, (3 << 20) - 2000),
                        },
                        ModalityStats {
                            modality: String::new(),
                            counts: counts(1, 1, 1, 1000),
                        },
                    ],
                },
            ],
            modalities: vec![
                ModalityStats {
                    modality: "CT".into(),
                    counts: counts(2, 2, 7, (3 << 20) - 2000),
                },
                ModalityStats {
                    modality: "MR".into(),
                    counts: counts(1, 1, 2, 1000),
                },
            ],
            national: Some(NationalStats {
                studies_by_state: StudyStates {
                    linked: 2,
                    quarantined: 1,
                    invalidated: 0,
                    expired: 4,
                },
                studies_without_record: 0,
                documents: 9,
            }),
            storage: Box::new(StorageStats {
                segment_count: 2,
                sealed_segments: 1,
                file_bytes: 2 << 30,
                used_bytes: 1 << 30,
                live_bytes: 3 << 28,
                garbage_bytes: 1 << 28,
                garbage_ratio: 0.25,
                index_runs: 1,
                index_bytes: 40960,
                segments: vec![SegmentStats {
                    id: 7,
                    sealed: true,
                    file_bytes: 1 << 30,
                    used_bytes: 1 << 30,
                    live_bytes: 3 << 28,
                    garbage_bytes: 1 << 28,
                    garbage_ratio: 0.25,
                }],
            }),
            list_segments: true,
        }
    }

    #[test]
    fn the_rendered_report_has_aligned_tables_and_readable_bytes() {
        let text = report().render();
        let lines: Vec<&str> = text.lines().collect();
        let at = |prefix: &str| {
            lines
                .iter()
                .position(|l| l.trim_start().starts_with(prefix))
                .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
        };
        // The register table: header and rows end at the same column (right-aligned).
        let header = at("register ");
        let rows = [lines[header + 1], lines[header + 2]];
        assert!(rows[0].contains("(no register)"), "{text}");
        assert!(
            rows[1].starts_with("  1.2.246.10 (Keski-Suomen hyvinvointialue)"),
            "{text}"
        );
        assert!(rows[1].ends_with("3.0 MiB"), "{text}");
        let end = lines[header].len();
        assert!(rows.iter().all(|r| r.len() == end), "{text}");
        // Columns line up: "instances" ends where each count ends.
        let column_end = lines[header].find("instances").expect("column") + "instances".len();
        assert_eq!(&rows[1][column_end - 1..column_end], "8", "{text}");
        assert!(text.contains("1.2.246.10 / (none)"), "{text}");
        assert!(text.contains("(no register) / MR"), "{text}");
        assert!(
            text.contains("of which hidden by rejection notes: 1 instances, 2.0 KiB"),
            "{text}"
        );
        assert!(
            text.contains(
                "studies by state: 2 linked, 1 quarantined, 0 invalidated, 4 expired; 0 without a record"
            ),
            "{text}"
        );
        assert!(text.contains("documents: 9"), "{text}");
        assert!(
            text.contains("garbage:     256.0 MiB (25.0 % of used)"),
            "{text}"
        );
        assert!(text.contains("segments:    2 (1 sealed)"), "{text}");
        let segment = lines[at("7 ")];
        assert!(
            segment.contains("sealed") && segment.ends_with("25.0 %"),
            "{text}"
        );
        assert!(lines[at("segment ")].ends_with("garbage"), "{text}");
        let mut quiet = report();
        quiet.list_segments = false;
        let quiet = quiet.render();
        assert!(
            !quiet
                .lines()
                .any(|l| l.trim_start().starts_with("segment ")),
            "{quiet}"
        );
    }

    #[test]
    fn the_json_report_has_exact_numbers_and_reads_back() {
        let r = report();
        let json = serde_json::to_value(&r).expect("JSON");
        assert_eq!(json["instances"], 10);
        assert_eq!(json["bytes"], 3 << 20);
        assert_eq!(
            json["registers"][1]["controller_name"],
            "Keski-Suomen hyvinvointialue"
        );
        assert_eq!(json["registers"][1]["modalities"][0]["instances"], 7);
        assert_eq!(json["storage"]["segments"][0]["live_bytes"], 3u64 << 28);
        assert_eq!(json["national"]["studies_by_state"]["expired"], 4);
        let back: StatsReport = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, r);
        // As the admin socket carries it: inside the tagged report.
        let line = serde_json::to_string(&super::super::Report::Stats(r.clone())).expect("JSON");
        let back: super::super::Report = serde_json::from_str(&line).expect("reads back");
        assert_eq!(back.render(), r.render());
        assert!(
            back.render().contains("segment "),
            "--segments survives the trip"
        );
    }
}
