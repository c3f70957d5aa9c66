//! `kuvasto export`: studies (by Study Instance UID, or every study of a patient) back to
//! Part-10 files, `OUT/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`.
//!
//! Each file holds the instance's stored object, the bytes WADO-RS returns for it (the
//! archive keeps instances as received): read through the engine's verified reader, written
//! to `<name>.tmp`, synced and renamed into place, so a name never holds a partial file. A
//! file already there with the same bytes is left alone (`already_there`: a re-run finishes
//! an interrupted export); one with other bytes is never overwritten (a problem).
//!
//! The rules apply as on every read path: the study's listing is [`Archive::instances`]
//! (access checked, a refusal audited, hidden instances left out unless `include_hidden`),
//! and each study is audited once as `export`, before its files are written, naming what
//! is written and where.

use super::stats::{human_bytes, register_of};
use super::{Progress, ProgressFn};
use crate::archive::audit::Outcome;
use crate::archive::directory::Role;
use crate::archive::{Archive, ArchiveError, Caller};
use kuvasto_engine::index::attrs::{tags, Level};
use kuvasto_engine::index::catalog::{Hits, Query};
use kuvasto_engine::index::matching::{MatchOptions, MatchVr, Matcher};
use kuvasto_engine::{Namespace, Object};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The command line's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// A study to export, by Study Instance UID (repeatable).
    #[arg(long = "study", value_name = "UID")]
    pub studies: Vec<String>,
    /// Every study of a patient, by PatientID (repeatable).
    #[arg(long = "patient", value_name = "ID")]
    pub patients: Vec<String>,
    /// The directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Also export instances rejection notes hid (IHE IOCM); left out by default.
    #[arg(long)]
    pub include_hidden: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportRequest {
    pub studies: Vec<String>,
    pub patients: Vec<String>,
    /// Absolute: a running server resolves nothing against its own working directory.
    pub out: PathBuf,
    pub include_hidden: bool,
}

impl ExportArgs {
    pub fn request(&self) -> anyhow::Result<ExportRequest> {
        anyhow::ensure!(
            !self.studies.is_empty() || !self.patients.is_empty(),
            "name what to export: --study UID or --patient ID (either repeatable)"
        );
        anyhow::ensure!(
            self.studies
                .iter()
                .chain(&self.patients)
                .all(|v| !v.trim().is_empty()),
            "--study and --patient need a value"
        );
        let out = std::path::absolute(&self.out)
            .map_err(|e| anyhow::anyhow!("--out {}: {e}", self.out.display()))?;
        Ok(ExportRequest {
            studies: self.studies.iter().map(|s| s.trim().to_string()).collect(),
            patients: self.patients.clone(),
            out,
            include_hidden: self.include_hidden,
        })
    }
}

/// One study exported (wholly or partly).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedStudy {
    pub study: String,
    pub patient: String,
    pub register: String,
    /// The study's directory.
    pub path: PathBuf,
    /// Instances now in place (written now or already there) and their bytes.
    pub instances: u64,
    pub bytes: u64,
    pub written: u64,
    pub already_there: u64,
    /// Hidden instances among them (`--include-hidden`).
    pub hidden: u64,
}

/// Something not exported, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportProblem {
    /// The patient asked for (`--patient`), when the problem is theirs.
    pub patient: String,
    pub study: String,
    /// Empty when the whole study (or patient) is concerned.
    pub instance: String,
    pub reason: String,
}

/// What `kuvasto export` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportReport {
    pub out: PathBuf,
    pub studies: Vec<ExportedStudy>,
    /// Files written now, and their bytes.
    pub instances: u64,
    pub bytes: u64,
    /// Files that were already there with the same bytes.
    pub already_there: u64,
    pub problems: Vec<ExportProblem>,
}

impl ExportReport {
    pub fn render(&self) -> String {
        let mut out = format!("export to {}\n", self.out.display());
        for s in &self.studies {
            out.push_str(&format!(
                "  study {} (patient {}): {} instances, {}; {} written, {} already there{}\n",
                s.study,
                if s.patient.is_empty() {
                    "unknown"
                } else {
                    &s.patient
                },
                s.instances,
                human_bytes(s.bytes),
                s.written,
                s.already_there,
                if s.hidden > 0 {
                    format!(", {} hidden by rejection notes", s.hidden)
                } else {
                    String::new()
                }
            ));
        }
        out.push_str(&format!("studies:        {}\n", self.studies.len()));
        out.push_str(&format!(
            "written:        {} instances, {} ({} bytes)\n",
            self.instances,
            human_bytes(self.bytes),
            self.bytes
        ));
        out.push_str(&format!("already there:  {}\n", self.already_there));
        out.push_str(&format!("problems:       {}\n", self.problems.len()));
        for p in &self.problems {
            let what = match (
                p.patient.is_empty(),
                p.study.is_empty(),
                p.instance.is_empty(),
            ) {
                (_, false, false) => format!("study {} instance {}", p.study, p.instance),
                (_, false, true) => format!("study {}", p.study),
                (false, true, _) => format!("patient {}", p.patient),
                _ => "export".to_string(),
            };
            out.push_str(&format!("  {what}: {}\n", p.reason));
        }
        out.push_str(if self.has_problems() {
            "result: done with problems (exit code 1)\n"
        } else {
            "result: done\n"
        });
        out
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }
}

/// A path component from a DICOM value: `/`, `\` and control characters become `_`, a name
/// of dots only (`.`, `..`) becomes underscores, long values are cut at 200 bytes; an empty
/// value is `empty`.
pub fn path_component(value: &str, empty: &str) -> String {
    let value = value.trim();
    if value.is_empty() {
        return empty.to_string();
    }
    let mut out: String = value
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if out.chars().all(|c| c == '.') {
        out = "_".repeat(out.len());
    }
    if out.len() > PATH_COMPONENT_BYTES_MAX {
        let mut end = PATH_COMPONENT_BYTES_MAX;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// Longest path component written (file systems allow 255 bytes; `.dcm.tmp` follows).
const PATH_COMPONENT_BYTES_MAX: usize = 200;

/// Bytes compared at a time when a file is already there.
const COMPARE_BYTES: u64 = 1 << 20;

/// One instance to write.
struct Item {
    sop: String,
    series: String,
    len: u64,
    hidden: bool,
}

/// One study to write.
struct Plan {
    study: String,
    patient: String,
    items: Vec<Item>,
}

/// The Study Instance UIDs of a patient's studies, from the catalog (exact PatientID).
fn studies_of_patient(archive: &Archive, patient: &str) -> Result<Vec<String>, String> {
    const PAGE: usize = 1000;
    let matcher = Matcher::parse(MatchVr::Text, patient, MatchOptions::default())
        .map_err(|e| format!("not a usable PatientID: {e}"))?;
    let mut query = Query {
        level: Level::Study,
        filters: vec![(tags::PATIENT_ID, matcher)],
        offset: 0,
        limit: Some(PAGE),
    };
    let mut out = Vec::new();
    loop {
        let hits = archive
            .store()
            .query(&query)
            .map_err(|e| format!("the catalog cannot be searched: {e}"))?;
        let Hits::Studies(page) = hits else {
            return Err("the catalog answered another level".into());
        };
        let n = page.len();
        // Wild cards in the ID match as wild cards: keep the exact ones.
        out.extend(
            page.into_iter()
                .filter(|h| h.attrs.patient_id == patient)
                .map(|h| h.attrs.study_instance_uid),
        );
        if n < PAGE {
            return Ok(out);
        }
        query.offset += n;
    }
}

/// A study's instances as the rules let `caller` read them, plus its hidden ones when
/// asked; `None` when the archive holds no instance of it.
fn plan(
    archive: &Archive,
    caller: &Caller,
    study: &str,
    hidden: &[String],
) -> Result<Option<Plan>, ArchiveError> {
    let hits = archive.instances(caller, "export", study, None, None)?;
    let mut plan = Plan {
        study: study.to_string(),
        patient: hits
            .first()
            .map(|h| h.attrs.patient_id.clone())
            .unwrap_or_default(),
        items: hits
            .into_iter()
            .map(|h| Item {
                sop: h.attrs.sop_instance_uid,
                series: h.attrs.series_instance_uid,
                len: h.location.object_len,
                hidden: false,
            })
            .collect(),
    };
    if !hidden.is_empty() {
        // A study with only hidden instances lists nothing above: the rules decide once more.
        if plan.items.is_empty() {
            archive
                .may_read_study(caller, study)
                .map_err(ArchiveError::Denied)?;
        }
        for sop in hidden {
            let Some(metadata) = archive.metadata(sop)? else {
                continue; // deleted since it was hidden
            };
            let a = metadata.attrs;
            if a.study_instance_uid != study {
                continue;
            }
            if plan.patient.is_empty() {
                plan.patient = a.patient_id.clone();
            }
            plan.items.push(Item {
                sop: a.sop_instance_uid,
                series: a.series_instance_uid,
                len: metadata.object_len,
                hidden: true,
            });
        }
    }
    Ok((!plan.items.is_empty()).then_some(plan))
}

/// What happened to one file.
enum Placed {
    Written(u64),
    AlreadyThere(u64),
}

/// Whether the file at `path` (`len` bytes long) holds exactly the object's bytes.
fn same_bytes(object: &Object, path: &Path, len: u64) -> Result<bool, String> {
    if len != object.len {
        return Ok(false);
    }
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut theirs = Vec::new();
    let mut at = 0;
    while at < object.len {
        let end = (at + COMPARE_BYTES).min(object.len);
        let ours = object
            .read_range(at..end)
            .map_err(|e| format!("the stored instance cannot be read: {e}"))?;
        theirs.resize(ours.len(), 0);
        file.read_exact(&mut theirs)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if theirs != ours {
            return Ok(false);
        }
        at = end;
    }
    Ok(true)
}

/// Writes the object to `path` through `<name>.tmp`, synced before the rename.
fn write_file(object: &Object, path: &Path) -> Result<(), String> {
    let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let result = (|| {
        let file = std::fs::File::create(&temp).map_err(|e| format!("cannot create: {e}"))?;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
        object
            .copy_to(&mut writer)
            .map_err(|e| format!("cannot be written: {e}"))?;
        let file = writer
            .into_inner()
            .map_err(|e| format!("cannot be written: {}", e.error()))?;
        file.sync_data()
            .map_err(|e| format!("cannot be synced: {e}"))?;
        std::fs::rename(&temp, path).map_err(|e| format!("cannot be renamed into place: {e}"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Puts one instance's file in place (or finds it there).
fn place(archive: &Archive, sop: &str, path: &Path) -> Result<Placed, String> {
    let object = match archive.store().get(Namespace::OBJECT, sop.as_bytes()) {
        Ok(Some(object)) => object,
        Ok(None) => return Err("deleted since the study was listed".into()),
        Err(e) => return Err(format!("the stored instance cannot be read: {e}")),
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            let same = meta.is_file() && same_bytes(&object, path, meta.len())?;
            if same {
                Ok(Placed::AlreadyThere(object.len))
            } else {
                Err(format!(
                    "{} is already there with other content; not overwritten",
                    path.display()
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            write_file(&object, path)?;
            Ok(Placed::Written(object.len))
        }
        Err(e) => Err(format!("cannot look at {}: {e}", path.display())),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Exports the requested studies; one audit record (`export`) per study.
pub fn run(
    archive: &Archive,
    caller: &Caller,
    request: &ExportRequest,
    progress: ProgressFn,
) -> anyhow::Result<ExportReport> {
    anyhow::ensure!(
        caller.role() == Role::Operator,
        "only an operator exports studies"
    );
    anyhow::ensure!(
        request.out.is_absolute(),
        "the output directory must be an absolute path, not {}",
        request.out.display()
    );
    anyhow::ensure!(
        !request.studies.is_empty() || !request.patients.is_empty(),
        "nothing to export: name studies or patients"
    );
    std::fs::create_dir_all(&request.out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", request.out.display()))?;
    let mut report = ExportReport {
        out: request.out.clone(),
        ..ExportReport::default()
    };

    // The studies, in the order asked, each once.
    let mut wanted: Vec<String> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for study in &request.studies {
        if seen.insert(study.clone()) {
            wanted.push(study.clone());
        }
    }
    for patient in &request.patients {
        match studies_of_patient(archive, patient) {
            Ok(studies) if studies.is_empty() => report.problems.push(ExportProblem {
                patient: patient.clone(),
                reason: "the archive holds no study of this patient".into(),
                ..ExportProblem::default()
            }),
            Ok(studies) => {
                for study in studies {
                    if seen.insert(study.clone()) {
                        wanted.push(study);
                    }
                }
            }
            Err(reason) => report.problems.push(ExportProblem {
                patient: patient.clone(),
                reason,
                ..ExportProblem::default()
            }),
        }
    }
    let mut hidden: HashMap<String, Vec<String>> = HashMap::new();
    if request.include_hidden {
        for h in archive.hidden_instances(caller)? {
            hidden.entry(h.study).or_default().push(h.sop_instance);
        }
    }

    // Every study's listing first: the total for progress.
    let mut plans = Vec::new();
    for study in &wanted {
        let hidden = hidden.get(study).map(Vec::as_slice).unwrap_or_default();
        match plan(archive, caller, study, hidden) {
            Ok(Some(plan)) => plans.push(plan),
            Ok(None) => report.problems.push(ExportProblem {
                study: study.clone(),
                reason: "the archive holds no instance of this study".into(),
                ..ExportProblem::default()
            }),
            Err(e) => report.problems.push(ExportProblem {
                study: study.clone(),
                reason: format!("not exported: {e}"),
                ..ExportProblem::default()
            }),
        }
    }
    let total: u64 = plans.iter().map(|p| p.items.len() as u64).sum();
    let mut done = 0u64;
    let mut bytes_done = 0u64;

    for plan in plans {
        let register = register_of(archive, &plan.study);
        let patient_dir = request
            .out
            .join(path_component(&plan.patient, "unknown-patient"));
        let study_dir = patient_dir.join(path_component(&plan.study, "unknown-study"));
        let planned_bytes: u64 = plan.items.iter().map(|i| i.len).sum();
        // Audited before anything is disclosed, as every read path is.
        if let Err(e) = archive.audit(
            caller,
            "export",
            Outcome::Success,
            &plan.patient,
            &plan.study,
            &register,
            format!(
                "instances={} bytes={planned_bytes} out={}",
                plan.items.len(),
                request.out.display()
            ),
        ) {
            report.problems.push(ExportProblem {
                study: plan.study.clone(),
                reason: format!("not exported: {e}"),
                ..ExportProblem::default()
            });
            done += plan.items.len() as u64;
            continue;
        }
        let mut exported = ExportedStudy {
            study: plan.study.clone(),
            patient: plan.patient.clone(),
            register,
            path: study_dir.clone(),
            ..ExportedStudy::default()
        };
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        for item in &plan.items {
            let series_dir = study_dir.join(path_component(&item.series, "unknown-series"));
            let path = series_dir.join(format!(
                "{}.dcm",
                path_component(&item.sop, "unknown-instance")
            ));
            match place(archive, &item.sop, &path) {
                Ok(placed) => {
                    let len = match placed {
                        Placed::Written(len) => {
                            exported.written += 1;
                            report.instances += 1;
                            report.bytes += len;
                            dirs.insert(series_dir);
                            len
                        }
                        Placed::AlreadyThere(len) => {
                            exported.already_there += 1;
                            report.already_there += 1;
                            len
                        }
                    };
                    exported.instances += 1;
                    exported.bytes += len;
                    if item.hidden {
                        exported.hidden += 1;
                    }
                    bytes_done += len;
                }
                Err(reason) => report.problems.push(ExportProblem {
                    study: plan.study.clone(),
                    instance: item.sop.clone(),
                    reason,
                    ..ExportProblem::default()
                }),
            }
            done += 1;
            progress(&Progress {
                what: plan.study.clone(),
                done,
                total,
                bytes: bytes_done,
            });
        }
        // The new names durable: each series directory written into, and its parents.
        if !dirs.is_empty() {
            dirs.insert(study_dir.clone());
            dirs.insert(patient_dir.clone());
            dirs.insert(request.out.clone());
        }
        for dir in &dirs {
            if let Err(e) = sync_dir(dir) {
                report.problems.push(ExportProblem {
                    study: plan.study.clone(),
                    reason: format!("{} cannot be synced: {e}", dir.display()),
                    ..ExportProblem::default()
                });
            }
        }
        if exported.instances > 0 {
            report.studies.push(exported);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components_cannot_leave_their_directory() {
        assert_eq!(path_component("1.2.840.1", "x"), "1.2.840.1");
        assert_eq!(path_component("../../etc", "x"), ".._.._etc");
        assert_eq!(path_component("..", "x"), "__");
        assert_eq!(path_component(".", "x"), "_");
        assert_eq!(path_component("a/b\\c", "x"), "a_b_c");
        assert_eq!(path_component("a\nb\u{0}c\u{7f}", "x"), "a_b_c_");
        assert_eq!(path_component("", "unknown-patient"), "unknown-patient");
        assert_eq!(path_component("   ", "unknown-patient"), "unknown-patient");
        assert_eq!(path_component(" 010203-123A ", "x"), "010203-123A");
        assert_eq!(path_component("Äijälä", "x"), "Äijälä");
        let long = "ä".repeat(150);
        let cut = path_component(&long, "x");
        assert!(cut.len() <= 200 && cut.len() >= 199, "{}", cut.len());
        assert!(long.starts_with(&cut));
        for hostile in ["..", "../x", "/abs", "a/../../b", "\u{0}"] {
            let c = path_component(hostile, "x");
            assert!(
                !c.contains('/') && c != ".." && c != "." && !c.is_empty(),
                "{c}"
            );
            let joined = Path::new("/out").join(&c);
            assert_eq!(joined.parent(), Some(Path::new("/out")), "{c}");
        }
    }

    #[test]
    fn the_rendered_report_names_every_problem() {
        let report = ExportReport {
            out: PathBuf::from("/srv/export"),
            studies: vec![ExportedStudy {
                study: "1.2.3".into(),
                patient: "P1".into(),
                register: "1.2.246".into(),
                path: PathBuf::from("/srv/export/P1/1.2.3"),
                instances: 3,
                bytes: 3 << 20,
                written: 2,
                already_there: 1,
                hidden: 1,
            }],
            instances: 2,
            bytes: 2 << 20,
            already_there: 1,
            problems: vec![
                ExportProblem {
                    study: "9.9.9".into(),
                    reason: "the archive holds no instance of this study".into(),
                    ..ExportProblem::default()
                },
                ExportProblem {
                    study: "1.2.3".into(),
                    instance: "1.2.3.4".into(),
                    reason: "already there with other content".into(),
                    ..ExportProblem::default()
                },
                ExportProblem {
                    patient: "P404".into(),
                    reason: "the archive holds no study of this patient".into(),
                    ..ExportProblem::default()
                },
            ],
        };
        let text = report.render();
        assert!(text.starts_with("export to /srv/export\n"), "{text}");
        assert!(
            text.contains("  study 1.2.3 (patient P1): 3 instances, 3.0 MiB; 2 written, 1 already there, 1 hidden by rejection notes\n"),
            "{text}"
        );
        assert!(
            text.contains("written:        2 instances, 2.0 MiB (2097152 bytes)\n"),
            "{text}"
        );
        assert!(text.contains("problems:       3\n"), "{text}");
        assert!(
            text.contains("  study 9.9.9: the archive holds no instance of this study\n"),
            "{text}"
        );
        assert!(
            text.contains("  study 1.2.3 instance 1.2.3.4: already there"),
            "{text}"
        );
        assert!(
            text.contains("  patient P404: the archive holds no study"),
            "{text}"
        );
        assert!(text.ends_with("result: done with problems (exit code 1)\n"));
        assert!(report.has_problems());
        // As the admin socket carries it: inside the tagged report.
        let line =
            serde_json::to_string(&super::super::Report::Export(report.clone())).expect("JSON");
        let back: super::super::Report = serde_json::from_str(&line).expect("reads back");
        assert_eq!(back.render(), text);
        assert!(back.has_problems());
        let clean = ExportReport {
            problems: Vec::new(),
            ..report
        };
        assert!(!clean.has_problems());
        assert!(clean.render().ends_with("result: done\n"));
    }

    #[test]
    fn a_relative_out_becomes_absolute_in_the_request() {
        let args = ExportArgs {
            studies: vec![" 1.2.3 ".into()],
            patients: Vec::new(),
            out: PathBuf::from("some/where"),
            include_hidden: false,
            json: false,
        };
        let request = args.request().expect("request");
        assert!(request.out.is_absolute(), "{}", request.out.display());
        assert!(request.out.ends_with("some/where"));
        assert_eq!(request.studies, vec!["1.2.3".to_string()]);
        let none = ExportArgs {
            studies: Vec::new(),
            ..args.clone()
        };
        assert!(none.request().is_err());
        let empty = ExportArgs {
            patients: vec![String::new()],
            ..args
        };
        assert!(empty.request().is_err());
    }
}
