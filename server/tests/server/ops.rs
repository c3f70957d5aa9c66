//! `kuvasto stats` and `kuvasto export` on an archive `kuvasto import` filled (standalone
//! profile) with pydicom's samples and generated instances of two patients and several
//! modalities: the counts against what was imported, garbage after a delete, exported files
//! byte for byte equal to the imported ones and readable by dcmdump, a re-run finding them
//! there, a changed file never overwritten, unknown studies and patients reported, `--patient`
//! exporting every study of the patient, and the audit records.

use crate::dicomweb::{audit, curl, part10, pydicom_samples, text, ui, us, Server};
use crate::import::national_ct;
use kuvasto_engine::dicom::explicit_le::encode_element as el;
use kuvasto_engine::dicom::Tag;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const US: &str = "1.2.840.10008.5.1.4.1.1.6.1";

const PATIENT_A: &str = "OPS-A";
/// Sanitized to `B_.._42` in export paths.
const PATIENT_B: &str = "B/../42";
const STUDY_A1: &str = "2.25.7701";
const STUDY_A2: &str = "2.25.7702";
const STUDY_B1: &str = "2.25.7703";

/// A native 8-bit image of `patient` with `rows × cols × frames` pixels.
#[allow(clippy::too_many_arguments)]
fn instance(
    class: &str,
    modality: &str,
    patient: &str,
    study: &str,
    series: &str,
    sop: &str,
    rows: u16,
    cols: u16,
    frames: u32,
) -> Vec<u8> {
    let pixels = rows as usize * cols as usize * frames as usize;
    let pixel_data: Vec<u8> = (0..pixels).map(|i| (i * 13 % 251) as u8).collect();
    let data_set = [
        el(Tag::new(0x0008, 0x0005), b"CS", b"ISO_IR 100"),
        el(Tag::new(0x0008, 0x0016), b"UI", &ui(class)),
        el(Tag::new(0x0008, 0x0018), b"UI", &ui(sop)),
        el(Tag::new(0x0008, 0x0020), b"DA", b"20261126"),
        el(Tag::new(0x0008, 0x0060), b"CS", &text(modality)),
        el(Tag::new(0x0010, 0x0010), b"PN", &text("Operaattori^Olli")),
        el(Tag::new(0x0010, 0x0020), b"LO", &text(patient)),
        el(Tag::new(0x0020, 0x000D), b"UI", &ui(study)),
        el(Tag::new(0x0020, 0x000E), b"UI", &ui(series)),
        el(Tag::new(0x0020, 0x0011), b"IS", b"1 "),
        el(Tag::new(0x0020, 0x0013), b"IS", b"1 "),
        el(Tag::new(0x0028, 0x0002), b"US", &us(1)),
        el(Tag::new(0x0028, 0x0004), b"CS", b"MONOCHROME2 "),
        el(Tag::new(0x0028, 0x0008), b"IS", &text(&frames.to_string())),
        el(Tag::new(0x0028, 0x0010), b"US", &us(rows)),
        el(Tag::new(0x0028, 0x0011), b"US", &us(cols)),
        el(Tag::new(0x0028, 0x0100), b"US", &us(8)),
        el(Tag::new(0x0028, 0x0101), b"US", &us(8)),
        el(Tag::new(0x0028, 0x0102), b"US", &us(7)),
        el(Tag::new(0x0028, 0x0103), b"US", &us(0)),
        el(Tag::PIXEL_DATA, b"OB", &pixel_data),
    ]
    .concat();
    part10(class, sop, data_set)
}

/// A generated instance as imported: its file, and what the archive should file it under.
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    patient: String,
    study: String,
    series: String,
    modality: String,
    bytes: u64,
}

/// The generated instances: patient A's CT+MR study and US study, patient B's CT study with
/// instances of 3 and 5 MiB (stored in chunks). Written under `dir`; sop → what it is.
fn generated(dir: &Path) -> BTreeMap<String, Source> {
    let specs: Vec<(&str, &str, &str, &str, &str, u16, u32)> = vec![
        // (class, modality, patient, study, series suffix, side, frames)
        (CT, "CT", PATIENT_A, STUDY_A1, "1", 64, 1),
        (CT, "CT", PATIENT_A, STUDY_A1, "1", 64, 1),
        (CT, "CT", PATIENT_A, STUDY_A1, "1", 64, 1),
        (MR, "MR", PATIENT_A, STUDY_A1, "2", 64, 1),
        (MR, "MR", PATIENT_A, STUDY_A1, "2", 64, 1),
        (US, "US", PATIENT_A, STUDY_A2, "1", 128, 1),
        (US, "US", PATIENT_A, STUDY_A2, "1", 128, 1),
        (CT, "CT", PATIENT_B, STUDY_B1, "1", 1024, 3),
        (CT, "CT", PATIENT_B, STUDY_B1, "1", 32, 1),
        // Enough to seal the first 16 MiB segment (and index it).
        (CT, "CT", PATIENT_B, STUDY_B1, "2", 1024, 5),
        (CT, "CT", PATIENT_B, STUDY_B1, "2", 1024, 5),
        (CT, "CT", PATIENT_B, STUDY_B1, "2", 1024, 5),
    ];
    let mut out = BTreeMap::new();
    for (i, (class, modality, patient, study, series, side, frames)) in specs.iter().enumerate() {
        let series = format!("{study}.{series}");
        let sop = format!("{series}.{i}");
        let bytes = instance(
            class, modality, patient, study, &series, &sop, *side, *side, *frames,
        );
        let path = dir.join(format!("generated/{modality}{i}"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &bytes).expect("write");
        out.insert(
            sop,
            Source {
                path,
                patient: patient.to_string(),
                study: study.to_string(),
                series,
                modality: modality.to_string(),
                bytes: bytes.len() as u64,
            },
        );
    }
    out
}

const STANDALONE: &[&str] = &["--profile", "standalone"];

/// `kuvasto <args>` on the standalone profile's data directory `data`.
fn kuvasto(args: &[&str], data: &Path) -> Output {
    kuvasto_in(STANDALONE, args, data)
}

/// `kuvasto <args> <profile>` on the data directory `data`.
fn kuvasto_in(profile: &[&str], args: &[&str], data: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kuvasto"))
        .args(args)
        .args(profile)
        .args(["--segment-size-mib", "16"])
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run kuvasto");
    eprintln!(
        "kuvasto {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `kuvasto <args> --json`: the report and the exit code.
fn kuvasto_json(args: &[&str], data: &Path) -> (Value, i32) {
    kuvasto_json_in(STANDALONE, args, data)
}

fn kuvasto_json_in(profile: &[&str], args: &[&str], data: &Path) -> (Value, i32) {
    let mut args = args.to_vec();
    args.push("--json");
    let out = kuvasto_in(profile, &args, data);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kuvasto {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (report, out.status.code().expect("an exit code"))
}

fn stats(data: &Path) -> Value {
    let (report, code) = kuvasto_json(&["stats"], data);
    assert_eq!(code, 0, "{report}");
    report
}

fn export(data: &Path, out: &Path, what: &[&str]) -> (Value, i32) {
    let out = out.to_string_lossy().into_owned();
    let mut args = vec!["export", "--out", out.as_str()];
    args.extend_from_slice(what);
    kuvasto_json(&args, data)
}

/// The stored instances an import report lists: sop → (path, study, series).
fn stored(report: &Path) -> BTreeMap<String, (PathBuf, String, String)> {
    let text = std::fs::read_to_string(report).expect("the import report");
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        assert_eq!(f.len(), 4, "{line}");
        if f[1] != "stored" {
            continue;
        }
        let get = |key: &str| {
            f[3].split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line}"))
                .to_string()
        };
        let sop = get("sop_instance=");
        out.insert(sop, (PathBuf::from(f[0]), get("study="), get("series=")));
    }
    out
}

/// Modality and PatientID of sample files, read by pydicom (the samples' own reader).
fn sample_attributes(paths: &[PathBuf]) -> BTreeMap<PathBuf, (String, String)> {
    if paths.is_empty() {
        return BTreeMap::new();
    }
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let script = "import sys, pydicom\n\
        for p in sys.argv[1:]:\n\
        \x20   ds = pydicom.dcmread(p, force=True, stop_before_pixels=True)\n\
        \x20   print(p + '\\t' + str(ds.get('Modality', '') or '').strip() + '\\t' + str(ds.get('PatientID', '') or '').strip())\n";
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(paths)
        .output()
        .expect("run pydicom");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "{l}");
            (PathBuf::from(f[0]), (f[1].to_string(), f[2].to_string()))
        })
        .collect()
}

/// Regular files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let t = entry.file_type().expect("type");
        if t.is_dir() {
            out.extend(files_under(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out.sort();
    out
}

/// dcmdump's output for a file (`None` when it cannot read it).
fn dcmdump(path: &Path) -> Option<String> {
    let out = Command::new("dcmdump")
        .arg("-q")
        .arg(path)
        .output()
        .expect("run dcmdump");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Expected counts of a set of instances: (studies, series, instances, bytes).
fn counts<'a>(items: impl Iterator<Item = &'a Source>) -> (u64, u64, u64, u64) {
    let (mut studies, mut series) = (BTreeSet::new(), BTreeSet::new());
    let (mut instances, mut bytes) = (0, 0);
    for s in items {
        studies.insert(s.study.clone());
        series.insert(s.series.clone());
        instances += 1;
        bytes += s.bytes;
    }
    (studies.len() as u64, series.len() as u64, instances, bytes)
}

fn counts_of(v: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    (n("studies"), n("series"), n("instances"), n("bytes"))
}

fn modality_counts(report: &Value) -> BTreeMap<String, (u64, u64, u64, u64)> {
    report["modalities"]
        .as_array()
        .expect("modalities")
        .iter()
        .map(|m| {
            (
                m["modality"].as_str().expect("name").to_string(),
                counts_of(m),
            )
        })
        .collect()
}

/// Checks an export's files: exactly `sops` under `out`, each at
/// `<patient dir>/<study>/<series>/<sop>.dcm`, equal to its source, readable by dcmdump.
fn check_files(out: &Path, sops: &[&String], sources: &BTreeMap<String, Source>) {
    let files = files_under(out);
    assert_eq!(files.len(), sops.len(), "{files:?}");
    for sop in sops {
        let s = &sources[*sop];
        let patient_dir = s.patient.replace('/', "_");
        let path = out
            .join(patient_dir)
            .join(&s.study)
            .join(&s.series)
            .join(format!("{sop}.dcm"));
        let exported = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; files {files:?}", path.display()));
        assert!(
            exported == std::fs::read(&s.path).expect("source"),
            "{} differs from {}",
            path.display(),
            s.path.display()
        );
        let dump = dcmdump(&path).unwrap_or_else(|| panic!("dcmdump cannot read {path:?}"));
        assert!(dump.contains(sop.as_str()), "{dump}");
    }
}

#[test]
fn stats_count_what_was_imported_and_export_writes_it_back_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let import_dir = dir.path().join("legacy");
    let mut sources = generated(&import_dir);
    let samples = pydicom_samples();
    for sample in &samples {
        let target = import_dir
            .join("samples")
            .join(sample.file_name().expect("name"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(sample, &target).expect("copy sample");
    }

    // The store keeps instances as received: what import stores is what export gives back.
    let report_path = dir.path().join("import.tsv");
    let out = kuvasto(
        &[
            "import",
            "--report",
            &report_path.to_string_lossy(),
            &import_dir.to_string_lossy(),
        ],
        &data,
    );
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "some samples may be refused, nothing else: {out:?}"
    );
    let stored = stored(&report_path);
    // Every generated instance is stored; the samples stored are whatever import took.
    for (sop, s) in &sources {
        let (path, study, series) = stored.get(sop).unwrap_or_else(|| panic!("{sop} stored"));
        assert_eq!((path, study, series), (&s.path, &s.study, &s.series));
    }
    let sample_paths: Vec<PathBuf> = stored
        .iter()
        .filter(|(sop, _)| !sources.contains_key(*sop))
        .map(|(_, (path, _, _))| path.clone())
        .collect();
    let attributes = sample_attributes(&sample_paths);
    for (sop, (path, study, series)) in &stored {
        if sources.contains_key(sop) {
            continue;
        }
        let (modality, patient) = attributes[path].clone();
        sources.insert(
            sop.clone(),
            Source {
                path: path.clone(),
                patient,
                study: study.clone(),
                series: series.clone(),
                modality,
                bytes: std::fs::metadata(path).expect("sample").len(),
            },
        );
    }
    assert_eq!(sources.len(), stored.len());

    // Stats, offline: totals, per modality, the one register, storage.
    let before = stats(&data);
    assert_eq!(before["profile"], "standalone", "{before}");
    assert_eq!(counts_of(&before), counts(sources.values()), "{before}");
    let mut expected: BTreeMap<String, Vec<&Source>> = BTreeMap::new();
    for s in sources.values() {
        expected.entry(s.modality.clone()).or_default().push(s);
    }
    let expected: BTreeMap<String, (u64, u64, u64, u64)> = expected
        .into_iter()
        .map(|(m, v)| (m, counts(v.into_iter())))
        .collect();
    assert_eq!(modality_counts(&before), expected, "{before}");
    assert!(expected["US"].2 >= 2 && expected["MR"].2 >= 2 && expected["CT"].2 >= 8);
    let registers = before["registers"].as_array().expect("registers");
    assert_eq!(registers.len(), 1, "{before}");
    assert!(!registers[0]["register"].as_str().unwrap_or("").is_empty());
    assert_eq!(counts_of(&registers[0]), counts_of(&before));
    assert_eq!(registers[0]["modalities"], before["modalities"]);
    assert_eq!(before["hidden_instances"], 0);
    assert!(before["national"].is_null());
    let storage = &before["storage"];
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    assert!(n(storage, "sealed_segments") >= 1, "{storage}");
    assert!(n(storage, "index_runs") >= 1, "{storage}");
    assert!(n(storage, "index_bytes") > 0, "{storage}");
    let segments = storage["segments"].as_array().expect("segments");
    assert_eq!(segments.len() as u64, n(storage, "segment_count"));
    assert_eq!(
        segments.iter().map(|s| n(s, "file_bytes")).sum::<u64>(),
        n(storage, "file_bytes")
    );
    assert!(
        n(storage, "live_bytes") >= n(&before, "bytes"),
        "the instances (and their metadata) are live: {storage}"
    );
    // For a person: aligned tables, readable bytes.
    let out = kuvasto(&["stats", "--segments"], &data);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("archive (standalone profile)\n"), "{text}");
    let us_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("US "))
        .unwrap_or_else(|| panic!("no US line in {text}"));
    let (studies, series, instances, _) = expected["US"];
    assert!(
        us_line.split_whitespace().collect::<Vec<_>>()[1..4]
            == [
                studies.to_string(),
                series.to_string(),
                instances.to_string()
            ],
        "{us_line}"
    );
    assert!(text.contains("garbage:"), "{text}");
    assert!(text.contains(" sealed "), "{text}");

    // Export study A1: every file as imported, dcmdump reads each.
    let out1 = dir.path().join("out1");
    let (r, code) = export(&data, &out1, &["--study", STUDY_A1]);
    assert_eq!(code, 0, "{r}");
    let a1: Vec<&String> = sources
        .iter()
        .filter(|(_, s)| s.study == STUDY_A1)
        .map(|(sop, _)| sop)
        .collect();
    let a1_bytes: u64 = a1.iter().map(|sop| sources[*sop].bytes).sum();
    assert_eq!(r["instances"], 5, "{r}");
    assert_eq!(r["bytes"], a1_bytes, "{r}");
    assert_eq!(r["already_there"], 0, "{r}");
    assert_eq!(r["problems"], serde_json::json!([]), "{r}");
    assert_eq!(r["out"], out1.to_string_lossy().as_ref());
    assert_eq!(r["studies"][0]["patient"], PATIENT_A);
    assert_eq!(
        r["studies"][0]["path"],
        out1.join(PATIENT_A)
            .join(STUDY_A1)
            .to_string_lossy()
            .as_ref()
    );
    check_files(&out1, &a1, &sources);

    // Again: everything is already there.
    let (r, code) = export(&data, &out1, &["--study", STUDY_A1]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["instances"].as_u64(), r["already_there"].as_u64()),
        (Some(0), Some(5)),
        "{r}"
    );
    // A file changed since: never overwritten, named in the report, exit code 1.
    let victim = &sources[a1[0]];
    let victim_path = out1
        .join(PATIENT_A)
        .join(STUDY_A1)
        .join(&victim.series)
        .join(format!("{}.dcm", a1[0]));
    std::fs::write(&victim_path, b"not the instance").expect("change a file");
    let (r, code) = export(&data, &out1, &["--study", STUDY_A1]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["already_there"], 4, "{r}");
    let problems = r["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{r}");
    assert_eq!(problems[0]["study"], STUDY_A1);
    assert_eq!(problems[0]["instance"], a1[0].as_str());
    assert!(
        problems[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not overwritten"),
        "{r}"
    );
    assert_eq!(
        std::fs::read(&victim_path).expect("read"),
        b"not the instance"
    );
    assert!(files_under(&out1)
        .iter()
        .all(|p| !p.to_string_lossy().ends_with(".tmp")));

    // An unknown study is a problem naming it; the known one is still exported.
    let out2 = dir.path().join("out2");
    let (r, code) = export(&data, &out2, &["--study", "2.25.404", "--study", STUDY_A2]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["problems"][0]["study"], "2.25.404", "{r}");
    assert_eq!(r["instances"], 2, "{r}");
    let out = kuvasto(
        &[
            "export",
            "--study",
            "2.25.404",
            "--out",
            &out2.to_string_lossy(),
        ],
        &data,
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("study 2.25.404: the archive holds no instance of this study"),
        "{text}"
    );
    let (r, code) = export(&data, &out2, &["--patient", "NOBODY"]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["problems"][0]["patient"], "NOBODY", "{r}");
    let out = kuvasto(&["export", "--out", &out2.to_string_lossy()], &data);
    assert_eq!(out.status.code(), Some(2), "nothing named: a usage error");

    // By patient: every study of theirs; B's PatientID made a safe directory name; B's
    // large instances come back whole.
    let out3 = dir.path().join("out3");
    let (r, code) = export(&data, &out3, &["--patient", PATIENT_B]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["studies"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["studies"][0]["study"], STUDY_B1);
    let b: Vec<&String> = sources
        .iter()
        .filter(|(_, s)| s.patient == PATIENT_B)
        .map(|(sop, _)| sop)
        .collect();
    assert!(out3.join("B_.._42").is_dir());
    check_files(&out3, &b, &sources);
    let out4 = dir.path().join("out4");
    let (r, code) = export(&data, &out4, &["--patient", PATIENT_A]);
    assert_eq!(code, 0, "{r}");
    let exported: BTreeSet<&str> = r["studies"]
        .as_array()
        .expect("studies")
        .iter()
        .filter_map(|s| s["study"].as_str())
        .collect();
    let a_studies: BTreeSet<&str> = sources
        .values()
        .filter(|s| s.patient == PATIENT_A)
        .map(|s| s.study.as_str())
        .collect();
    assert_eq!(exported, a_studies);
    let a: Vec<&String> = sources
        .iter()
        .filter(|(_, s)| s.patient == PATIENT_A)
        .map(|(sop, _)| sop)
        .collect();
    check_files(&out4, &a, &sources);

    // pydicom's samples: every stored one comes back byte for byte (whatever its encoding),
    // and dcmdump reads the export whenever it reads the original.
    let sample_studies: BTreeSet<&str> = sources
        .values()
        .filter(|s| s.path.starts_with(import_dir.join("samples")))
        .map(|s| s.study.as_str())
        .collect();
    if !sample_studies.is_empty() {
        let out5 = dir.path().join("out5");
        let mut args = Vec::new();
        for study in &sample_studies {
            args.extend(["--study", study]);
        }
        let (r, code) = export(&data, &out5, &args);
        assert_eq!(code, 0, "{r}");
        let by_name: BTreeMap<String, PathBuf> = files_under(&out5)
            .into_iter()
            .map(|p| {
                (
                    p.file_name().expect("name").to_string_lossy().into_owned(),
                    p,
                )
            })
            .collect();
        let in_studies: Vec<(&String, &Source)> = sources
            .iter()
            .filter(|(_, s)| sample_studies.contains(s.study.as_str()))
            .collect();
        assert_eq!(by_name.len(), in_studies.len(), "{by_name:?}");
        let mut read_by_dcmdump = 0;
        for (sop, s) in in_studies {
            let path = &by_name[&format!("{sop}.dcm")];
            let source = std::fs::read(&s.path).expect("source");
            assert!(std::fs::read(path).expect("exported") == source, "{sop}");
            if let Some(original) = dcmdump(&s.path) {
                let exported = dcmdump(path).unwrap_or_else(|| panic!("dcmdump {path:?}"));
                assert_eq!(exported, original, "{sop}");
                read_by_dcmdump += 1;
            }
        }
        assert!(read_by_dcmdump > 0);
    }

    // A server on the same data: each export was audited once per study, before its files;
    // a study the archive does not hold left no export record. Then a delete over DICOMweb.
    let server = Server::start_in(dir, &["--segment-size-mib", "16"]);
    let exports = audit(&server, "export");
    let first = exports
        .iter()
        .find(|e| e["study"] == STUDY_A1)
        .expect("A1's export audited");
    assert_eq!(first["outcome"], "success");
    assert_eq!(first["patient"], PATIENT_A);
    assert_eq!(first["protocol"], "cli");
    assert!(
        !first["register"].as_str().unwrap_or("").is_empty(),
        "{first}"
    );
    assert_eq!(
        first["detail"],
        format!("instances=5 bytes={a1_bytes} out={}", out1.display())
    );
    assert_eq!(
        exports.iter().filter(|e| e["study"] == STUDY_A1).count(),
        4,
        "three --study runs and one --patient run: {exports:?}"
    );
    assert!(exports
        .iter()
        .any(|e| e["study"] == STUDY_B1 && e["patient"] == PATIENT_B));
    assert!(exports.iter().all(|e| e["study"] != "2.25.404"));
    assert!(!audit(&server, "stats").is_empty());
    let a2_bytes: u64 = sources
        .values()
        .filter(|s| s.study == STUDY_A2)
        .map(|s| s.bytes)
        .sum();
    let reply = curl(
        &["-X", "DELETE", &server.url(&format!("/studies/{STUDY_A2}"))],
        None,
    );
    assert_eq!(reply.status, 204);
    let (status, dir) = server.stop();
    assert!(status.success());

    // The deleted study is out of the counts, and its bytes are garbage now.
    let after = stats(&data);
    let (studies, series, instances, bytes) = counts_of(&before);
    assert_eq!(
        counts_of(&after),
        (studies - 1, series - 1, instances - 2, bytes - a2_bytes),
        "{after}"
    );
    let us_after = modality_counts(&after).get("US").map_or(0, |c| c.2);
    assert_eq!(us_after, expected["US"].2 - 2);
    let garbage = |v: &Value| n(&v["storage"], "garbage_bytes");
    let ratio = |v: &Value| v["storage"]["garbage_ratio"].as_f64().expect("ratio");
    assert!(
        garbage(&after) >= garbage(&before) + a2_bytes,
        "{} -> {} bytes of garbage",
        garbage(&before),
        garbage(&after)
    );
    assert!(ratio(&after) > ratio(&before) && ratio(&after) > 0.0);
    drop(dir);
}

/// The national profile: studies by register (with the controller's name) and by state.
#[test]
fn national_stats_count_registers_and_study_states() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/national.toml")
        .to_string_lossy()
        .into_owned();
    let national = ["--profile", "national", "--config", config.as_str()];
    let patient = "131052-308T";
    let write = |name: &str, bytes: Vec<u8>| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write");
        path.to_string_lossy().into_owned()
    };
    // Two studies (three instances) placed, linked, in the county's register by the
    // operator's override; one study the county's PACS stores without documents:
    // quarantined, in no register yet.
    let linked = dir.path().join("linked").to_string_lossy().into_owned();
    for (i, study) in ["2.25.7801", "2.25.7801", "2.25.7802"].iter().enumerate() {
        write(
            &format!("linked/IM{i}"),
            national_ct(&format!("{study}.1.{i}"), study, patient),
        );
    }
    let quarantined = write(
        "quarantined/IM0",
        national_ct("2.25.7803.1.0", "2.25.7803", patient),
    );
    let out = kuvasto_in(
        &national,
        &[
            "import",
            "--as",
            "operator",
            "--operator-override",
            "--register",
            "1.2.246.10.1001",
            "--report",
            &dir.path().join("linked.tsv").to_string_lossy(),
            &linked,
        ],
        &data,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = kuvasto_in(
        &national,
        &[
            "import",
            "--as",
            "county-pacs",
            "--documents-first",
            "quarantine",
            "--report",
            &dir.path().join("quarantined.tsv").to_string_lossy(),
            &quarantined,
        ],
        &data,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let (report, code) = kuvasto_json_in(&national, &["stats"], &data);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["profile"], "national");
    assert_eq!(counts_of(&report).0, 3, "{report}");
    assert_eq!(counts_of(&report).2, 4, "{report}");
    let states = &report["national"]["studies_by_state"];
    assert_eq!(
        (states["linked"].as_u64(), states["quarantined"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    assert_eq!(report["national"]["documents"], 0);
    assert_eq!(report["national"]["studies_without_record"], 0);
    let registers = report["registers"].as_array().expect("registers");
    let county = registers
        .iter()
        .find(|r| r["register"] == "1.2.246.10.1001")
        .unwrap_or_else(|| panic!("the county's register in {report}"));
    assert_eq!(county["controller"], "1.2.246.10.1001");
    assert_eq!(county["controller_name"], "Testimaan hyvinvointialue");
    assert_eq!(counts_of(county).0, 2);
    assert_eq!(counts_of(county).2, 3);
    assert_eq!(county["modalities"][0]["modality"], "CT");
    let none = registers
        .iter()
        .find(|r| r["register"] == "")
        .unwrap_or_else(|| panic!("the quarantined study in no register: {report}"));
    assert_eq!(counts_of(none).0, 1);
    let out = kuvasto_in(&national, &["stats"], &data);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1.2.246.10.1001 (Testimaan hyvinvointialue)"),
        "{text}"
    );
    assert!(
        text.contains("studies by state: 2 linked, 1 quarantined, 0 invalidated, 0 expired"),
        "{text}"
    );

    // An export of a linked study names its register in the audit record.
    let out_dir = dir.path().join("out");
    let (r, code) = kuvasto_json_in(
        &national,
        &[
            "export",
            "--study",
            "2.25.7801",
            "--out",
            &out_dir.to_string_lossy(),
        ],
        &data,
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["studies"][0]["register"], "1.2.246.10.1001", "{r}");
    assert_eq!(r["instances"], 2, "{r}");
}
