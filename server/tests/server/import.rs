//! `kuvasto import` as an operator runs it: a legacy export (pydicom's samples, DICOMDIR media,
//! files without extension, nested folders, broken files, a directory symlink loop) imported
//! offline and then served; an import killed with SIGKILL and resumed from its journal; the
//! progress lines when stderr is not a terminal; and the national profile's rules on import,
//! with the operator override audited per instance.

use crate::dicomweb::{
    curl, ecg, image, listed_sops, part10, parts_of, pydicom_samples, text, ui, us, Server, CT,
};
use kuvasto_engine::dicom::explicit_le::encode_element as el;
use kuvasto_engine::dicom::Tag;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `kuvasto import` with a data directory in `dir` and `args`; waits.
fn import(dir: &Path, args: &[&str]) -> Output {
    let out = import_command(dir, args)
        .output()
        .expect("run kuvasto import");
    eprintln!(
        "kuvasto import {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn import_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kuvasto"));
    cmd.arg("import")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--segment-size-mib", "64"])
        .args(if args.contains(&"--profile") {
            &[][..]
        } else {
            &["--profile", "standalone"][..]
        })
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// The summary's `name: value` lines.
fn summary(out: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn count(summary: &BTreeMap<String, String>, key: &str) -> u64 {
    summary
        .get(key)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count {key:?} in the summary {summary:?}"))
}

/// One report line.
#[derive(Debug, Clone)]
struct Line {
    path: PathBuf,
    outcome: String,
    reason: String,
    message: String,
}

fn report(path: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).expect("the report");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path\toutcome\treason\tmessage"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '\t').collect();
            assert_eq!(f.len(), 4, "{l}");
            Line {
                path: PathBuf::from(f[0]),
                outcome: f[1].into(),
                reason: f[2].into(),
                message: f[3].into(),
            }
        })
        .collect()
}

fn by_path<'a>(lines: &'a [Line], path: &Path) -> &'a Line {
    let path = path.canonicalize().expect("canonical");
    lines
        .iter()
        .find(|l| l.path == path)
        .unwrap_or_else(|| panic!("{} is not in the report", path.display()))
}

/// `study=… series=… sop_instance=…` of a stored file's report line.
fn uids(line: &Line) -> (String, String, String) {
    let get = |key: &str| {
        line.message
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .to_string()
    };
    (get("study="), get("series="), get("sop_instance="))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Regular files under `dir` (directory symlinks not followed).
fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let t = entry.file_type().expect("type");
        if t.is_dir() {
            out.extend(regular_files(&entry.path()));
        } else if t.is_file() {
            out.push(entry.path());
        }
    }
    out
}

/// The stored instance, retrieved over WADO-RS.
fn retrieved(server: &Server, (study, series, sop): &(String, String, String)) -> Vec<u8> {
    let url = server.url(&format!("/studies/{study}/series/{series}/instances/{sop}"));
    let got = curl(&[&url], None);
    assert_eq!(got.status, 200, "{url}");
    let mut parts = parts_of(&got);
    assert_eq!(parts.len(), 1, "{url}");
    parts.remove(0)
}

/// A CT instance the national rules accept: a valid personal identity code (or `patient`)
/// and an examination code of the nomenclature.
pub(crate) fn national_ct(sop: &str, study: &str, patient: &str) -> Vec<u8> {
    let data_set = [
        el(Tag::new(0x0008, 0x0005), b"CS", &text("ISO_IR 192")),
        el(Tag::new(0x0008, 0x0016), b"UI", &ui(CT)),
        el(Tag::new(0x0008, 0x0018), b"UI", &ui(sop)),
        el(Tag::new(0x0008, 0x0020), b"DA", b"20261120"),
        el(Tag::new(0x0008, 0x0050), b"SH", &text("LEGACY-1")),
        el(Tag::new(0x0008, 0x0060), b"CS", &text("CT")),
        el(
            Tag::new(0x0008, 0x1030),
            b"LO",
            &text("AA1AA Kallon röntgentutkimus"),
        ),
        el(Tag::new(0x0010, 0x0010), b"PN", &text("Testinen^Potilas")),
        el(Tag::new(0x0010, 0x0020), b"LO", &text(patient)),
        el(Tag::new(0x0020, 0x000D), b"UI", &ui(study)),
        el(Tag::new(0x0020, 0x000E), b"UI", &ui(&format!("{study}.1"))),
        el(Tag::new(0x0020, 0x0011), b"IS", b"1 "),
        el(Tag::new(0x0020, 0x0013), b"IS", b"1 "),
        el(Tag::new(0x0028, 0x0002), b"US", &us(1)),
        el(Tag::new(0x0028, 0x0004), b"CS", b"MONOCHROME2 "),
        el(Tag::new(0x0028, 0x0010), b"US", &us(8)),
        el(Tag::new(0x0028, 0x0011), b"US", &us(8)),
        el(Tag::new(0x0028, 0x0100), b"US", &us(8)),
        el(Tag::new(0x0028, 0x0101), b"US", &us(8)),
        el(Tag::new(0x0028, 0x0102), b"US", &us(7)),
        el(Tag::new(0x0028, 0x0103), b"US", &us(0)),
        el(Tag::PIXEL_DATA, b"OB", &[7u8; 64]),
    ]
    .concat();
    part10(CT, sop, data_set)
}

#[test]
fn a_legacy_export_is_imported_reported_and_then_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let export = dir.path().join("export");
    // pydicom's samples, and its DICOMDIR media (DICOMDIRs by name and by content, files
    // without extension in nested folders, a README).
    let samples = pydicom_samples();
    for sample in &samples {
        let name = sample.file_name().expect("name");
        write(
            &export.join("samples").join(name),
            &std::fs::read(sample).expect("sample"),
        );
    }
    if let Some(first) = samples.first() {
        let media = first.with_file_name("dicomdirtests");
        if media.is_dir() {
            copy_tree(&media, &export.join("media"));
        }
    }
    // Generated instances without extension, deep down, and a copy with one (a duplicate).
    let ct = image(CT, "2.25.9001.1", "2.25.9001", 64, 64, 1);
    let ct_path = export.join("nested/a/b/c/CT0001");
    write(&ct_path, &ct);
    let ecg_path = export.join("nested/a/ECG");
    write(&ecg_path, &ecg("2.25.9001.2", "2.25.9001"));
    let copy_path = export.join("nested/a/b/copy-of-ct.dcm");
    write(&copy_path, &ct);
    // Broken files.
    let broken = export.join("broken");
    let full = image(CT, "2.25.9002.1", "2.25.9002", 64, 64, 1);
    write(&broken.join("truncated.dcm"), &full[..full.len() - 1000]);
    write(
        &broken.join("notes.txt"),
        b"Exported from the old PACS on 2019-03-01.\nNothing to see here.\n",
    );
    write(&broken.join("empty"), b"");
    // A value claiming far more bytes than the file has.
    let lying = part10(
        CT,
        "2.25.9002.2",
        [
            el(Tag::new(0x0008, 0x0016), b"UI", &ui(CT)),
            el(Tag::new(0x0008, 0x0018), b"UI", &ui("2.25.9002.2")),
            {
                let mut e = el(Tag::new(0x0009, 0x1010), b"OB", &[1, 2, 3, 4]);
                let at = e.len() - 8;
                e[at..at + 4].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
                e
            },
        ]
        .concat(),
    );
    write(&broken.join("lying-length"), &lying);
    // A loop: not followed.
    std::os::unix::fs::symlink(&export, export.join("nested/a/loop")).expect("symlink");

    let files = regular_files(&export);
    let report_path = dir.path().join("report.tsv");
    let report_arg = report_path.to_string_lossy().into_owned();
    let export_arg = export.to_string_lossy().into_owned();
    let out = import(
        dir.path(),
        &["--jobs", "2", "--report", &report_arg, &export_arg],
    );
    assert_eq!(out.status.code(), Some(1), "some files are rejected");
    let s = summary(&out);
    let seen = count(&s, "files seen");
    assert_eq!(seen, files.len() as u64);
    let stored = count(&s, "accepted (stored new)");
    let duplicates = count(&s, "duplicates (identical, already stored)");
    let rejected = count(&s, "rejected");
    let dicomdirs = count(&s, "DICOMDIR (not instances)");
    assert_eq!(stored + duplicates + rejected + dicomdirs, seen, "{s:?}");
    assert_eq!(count(&s, "skipped (done earlier)"), 0);
    assert_eq!(count(&s, "unreadable"), 0);
    assert_eq!(count(&s, "replaced"), 0);
    assert_eq!(count(&s, "ignored (directory symlinks, special files)"), 1);
    assert!(duplicates >= 1, "{s:?}");
    // The per-reason counts add up.
    let by_reason: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("  ") && !l.contains("earlier"))
        .filter_map(|l| l.rsplit(": ").next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(by_reason, rejected);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("  C000 cannot understand: "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let lines = report(&report_path);
    assert_eq!(
        lines.len() as u64,
        seen + 1,
        "one line per file, and the loop"
    );
    for name in ["truncated.dcm", "notes.txt", "empty", "lying-length"] {
        let line = by_path(&lines, &broken.join(name));
        assert_eq!(
            (line.outcome.as_str(), line.reason.as_str()),
            ("rejected", "C000"),
            "{line:?}"
        );
        assert!(!line.message.is_empty(), "{line:?}");
    }
    let loop_line = lines
        .iter()
        .find(|l| l.path.ends_with("loop"))
        .expect("the loop is reported");
    assert_eq!(loop_line.outcome, "ignored");
    assert!(loop_line.message.contains("not followed"), "{loop_line:?}");
    let ct_line = by_path(&lines, &ct_path).clone();
    let copy_line = by_path(&lines, &copy_path).clone();
    let mut outcomes = [ct_line.outcome.as_str(), copy_line.outcome.as_str()];
    outcomes.sort();
    assert_eq!(outcomes, ["duplicate", "stored"]);
    assert_eq!(by_path(&lines, &ecg_path).outcome, "stored");
    for sample in &samples {
        let line = by_path(
            &lines,
            &export.join("samples").join(sample.file_name().unwrap()),
        );
        match line.outcome.as_str() {
            "stored" | "duplicate" => {}
            // Cannot understand, file meta and data set disagree, or another variant of the
            // same instance was stored first (pydicom ships several encodings of one).
            "rejected" => assert!(
                ["C000", "A900", "0111"].contains(&line.reason.as_str()),
                "{line:?}"
            ),
            other => panic!("{line:?}: {other}"),
        }
    }
    let media = export.join("media");
    if media.is_dir() {
        for dicomdir in [media.join("DICOMDIR"), media.join("TINY_ALPHA/DICOMDIR")] {
            let line = by_path(&lines, &dicomdir);
            assert_eq!(line.outcome, "dicomdir", "{line:?}");
            assert!(line.message.contains("0 of them outside"), "{line:?}");
        }
        // DICOMDIRs under other names are recognised by content.
        let line = by_path(&lines, &media.join("DICOMDIR-reordered"));
        assert_eq!(line.outcome, "dicomdir", "{line:?}");
        // Files without extension that the DICOMDIR references were found by the walk.
        let tiny: Vec<&Line> = lines
            .iter()
            .filter(|l| l.path.to_string_lossy().contains("TINY_ALPHA/PT000000"))
            .collect();
        assert!(!tiny.is_empty());
        assert!(tiny.iter().all(|l| l.outcome == "stored"), "{tiny:?}");
        assert!(stored >= 50, "only {stored} stored: {s:?}");

        // The DICOMDIR alone: the files it references are outside the given path, read
        // from its Referenced File IDs; all are stored already.
        let report2 = dir.path().join("report2.tsv");
        let report2_arg = report2.to_string_lossy().into_owned();
        let dicomdir_arg = media.join("DICOMDIR").to_string_lossy().into_owned();
        let out = import(dir.path(), &["--report", &report2_arg, &dicomdir_arg]);
        let s2 = summary(&out);
        let lines2 = report(&report2);
        let note = &by_path(&lines2, &media.join("DICOMDIR")).message;
        // Every line but the DICOMDIR's is a referenced file.
        let referenced = lines2.len() - 1;
        assert!(referenced > 10, "{lines2:?}");
        assert!(
            note.contains(&format!(
                "{referenced} referenced files, {referenced} of them outside"
            )),
            "{note}"
        );
        assert_eq!(count(&s2, "accepted (stored new)"), 0, "{s2:?}");
        for line in lines2.iter().filter(|l| l.outcome != "dicomdir") {
            let first = by_path(&lines, &line.path);
            let expected = if first.outcome == "stored" {
                "duplicate"
            } else {
                first.outcome.as_str()
            };
            assert_eq!(line.outcome, expected, "{line:?} after {first:?}");
        }
    }

    // A server on the same data lists what was stored and returns it byte for byte.
    let server = Server::start_in(dir, &[]);
    let listed: BTreeSet<String> = listed_sops(&server).into_iter().collect();
    let stored_sops: BTreeSet<String> = lines
        .iter()
        .filter(|l| l.outcome == "stored")
        .map(|l| uids(l).2)
        .collect();
    assert_eq!(stored_sops.len() as u64, stored);
    assert_eq!(listed, stored_sops);
    assert_eq!(retrieved(&server, &uids(&ct_line)), ct);
    let sample = lines
        .iter()
        .find(|l| l.outcome == "stored" && l.path.to_string_lossy().contains("/samples/"));
    if let Some(sample) = sample {
        let bytes = std::fs::read(&sample.path).expect("sample");
        assert!(retrieved(&server, &uids(sample)) == bytes, "{sample:?}");
    }
}

#[test]
fn a_killed_import_resumes_from_its_journal_and_stores_nothing_twice() {
    const FILES: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let export = dir.path().join("export");
    let mut sops = BTreeSet::new();
    for i in 0..FILES {
        let sop = format!("2.25.5000.{i}");
        write(
            &export.join(format!("s{}/IM{i:04}", i % 4)),
            &image(CT, &sop, &format!("2.25.5000.{}", i % 4), 128, 256, 1),
        );
        sops.insert(sop);
    }
    let journal = dir.path().join("journal.log");
    let journal_arg = journal.to_string_lossy().into_owned();
    let export_arg = export.to_string_lossy().into_owned();
    let report1 = dir.path().join("r1.tsv").to_string_lossy().into_owned();
    let journaled = |path: &Path| -> Vec<String> {
        // Whole lines only (a line being written when polled is not counted).
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n') && !l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    let mut child = import_command(
        dir.path(),
        &[
            "--jobs",
            "2",
            "--journal",
            &journal_arg,
            "--report",
            &report1,
            &export_arg,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn kuvasto import");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if journaled(&journal).len() >= 20 {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the import ended ({status}) before it could be killed: make the input larger");
        }
        assert!(Instant::now() < deadline, "the import made no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "killed: {status}");
    let before = journaled(&journal);
    assert!(before.len() < FILES, "killed before the end");
    assert!(
        before.iter().all(|l| l.starts_with("stored\t")),
        "{before:?}"
    );

    let report2 = dir.path().join("r2.tsv");
    let report2_arg = report2.to_string_lossy().into_owned();
    let out = import(
        dir.path(),
        &[
            "--jobs",
            "2",
            "--journal",
            &journal_arg,
            "--report",
            &report2_arg,
            &export_arg,
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(count(&s, "files seen"), FILES as u64);
    assert_eq!(count(&s, "skipped (done earlier)"), before.len() as u64);
    assert_eq!(count(&s, "rejected"), 0);
    let stored = count(&s, "accepted (stored new)");
    // Stored before the kill but not yet journaled: sent again, identical.
    let duplicates = count(&s, "duplicates (identical, already stored)");
    assert_eq!(
        before.len() as u64 + stored + duplicates,
        FILES as u64,
        "{s:?}"
    );
    let after = journaled(&journal);
    assert_eq!(after.len(), FILES);
    let lines = report(&report2);
    assert_eq!(
        lines.iter().filter(|l| l.outcome == "skipped").count(),
        before.len()
    );

    let server = Server::start_in(dir, &[]);
    let listed = listed_sops(&server);
    assert_eq!(listed.len(), FILES, "each instance once");
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), sops);
}

#[test]
fn progress_lines_are_printed_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let export = dir.path().join("export");
    for i in 0..40 {
        write(
            &export.join(format!("IM{i:04}.dcm")),
            &image(CT, &format!("2.25.6000.{i}"), "2.25.6000", 64, 64, 1),
        );
    }
    let export_arg = export.to_string_lossy().into_owned();
    let report = dir.path().join("r.tsv").to_string_lossy().into_owned();
    let out = import(
        dir.path(),
        &[
            "--progress-interval",
            "0.01",
            "--report",
            &report,
            &export_arg,
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let format = regex::Regex::new(
        r"^import: \d+/\d+\+? files, \d+\.\d/\d+\.\d\+? MB, \d+\.\d files/s, \d+\.\d MB/s, elapsed \d+:\d\d:\d\d, ETA (\d+:\d\d:\d\d|\?)$",
    )
    .expect("regex");
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("import: "))
        .collect();
    assert!(!progress.is_empty(), "{stderr}");
    for line in &progress {
        assert!(format.is_match(line), "{line:?}");
    }
    let last = progress.last().expect("a final line");
    assert!(last.starts_with("import: 40/40 files, "), "{last}");
    assert!(last.ends_with("ETA 0:00:00"), "{last}");
    // No bar, no terminal escapes.
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

fn national_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/national.toml")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn national_rules_apply_on_import_and_the_operator_override_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let export = dir.path().join("export");
    let valid: Vec<String> = (0..5).map(|i| format!("2.25.7000.{}.{i}", i % 2)).collect();
    for (i, sop) in valid.iter().enumerate() {
        let study = format!("2.25.7000.{}", i % 2);
        write(
            &export.join(format!("IM{i}")),
            &national_ct(sop, &study, "131052-308T"),
        );
    }
    let bad_id = export.join("bad-patient-id");
    write(
        &bad_id,
        &national_ct("2.25.7000.9.1", "2.25.7000.9", "131052-308X"),
    );
    let config = national_config();
    let export_arg = export.to_string_lossy().into_owned();
    let national = [
        "--profile",
        "national",
        "--config",
        &config,
        "--documents-first",
        "reject",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        national
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let run = |extra: &[&str]| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        import(dir.path(), &args)
    };

    // The county's PACS: no documents yet, so every study is refused (C010); the bad
    // PatientID fails validation first (C011).
    let report1 = dir.path().join("r1.tsv");
    let report1_arg = report1.to_string_lossy().into_owned();
    let out = run(&["--as", "county-pacs", "--report", &report1_arg, &export_arg]);
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&out);
    assert_eq!(count(&s, "rejected"), 6, "{s:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("  C010 documents missing: 5\n"), "{stdout}");
    assert!(stdout.contains("  C011 invalid PatientID: 1\n"), "{stdout}");
    let lines = report(&report1);
    for i in 0..5 {
        let line = by_path(&lines, &export.join(format!("IM{i}")));
        assert_eq!(
            (line.outcome.as_str(), line.reason.as_str()),
            ("rejected", "C010")
        );
        assert!(line.message.starts_with("documents first"), "{line:?}");
    }
    assert_eq!(by_path(&lines, &bad_id).reason, "C011");

    // Usage errors: no identity, an unknown one, an override by a system, an unknown register.
    for (extra, expected) in [
        (&[][..], "--as"),
        (&["--as", "nobody"][..], "nobody"),
        (
            &[
                "--as",
                "county-pacs",
                "--operator-override",
                "--register",
                "1.2.246.10.1001",
            ][..],
            "operator",
        ),
        (
            &[
                "--as",
                "operator",
                "--operator-override",
                "--register",
                "1.2.246.10.4242",
            ][..],
            "1.2.246.10.4242",
        ),
    ] {
        let mut args = extra.to_vec();
        args.push(&export_arg);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }

    // The operator's override: documents first and the register right are skipped, the
    // studies are placed in the county's register; validation still refuses the bad id.
    // The journal of the first run lists every file: --restart offers them again.
    let report2 = dir.path().join("r2.tsv");
    let report2_arg = report2.to_string_lossy().into_owned();
    let out = run(&[
        "--as",
        "operator",
        "--operator-override",
        "--register",
        "1.2.246.10.1001",
        "--restart",
        "--report",
        &report2_arg,
        &export_arg,
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the bad PatientID is still rejected"
    );
    let s = summary(&out);
    assert_eq!(count(&s, "accepted (stored new)"), 5, "{s:?}");
    assert_eq!(count(&s, "rejected"), 1, "{s:?}");
    assert_eq!(count(&s, "skipped (done earlier)"), 0, "{s:?}");
    assert_eq!(by_path(&report(&report2), &bad_id).reason, "C011");

    // Served: the audit log has one import-override record per instance, and the county's
    // PACS reads the studies in its register.
    let args = with(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_in(dir, &args);
    let audit = curl(
        &[
            "-H",
            "Authorization: Bearer operator-example-token-01",
            &format!("http://{}/api/audit?action=import-override", server.addr),
        ],
        None,
    );
    assert_eq!(
        audit.status,
        200,
        "{}",
        String::from_utf8_lossy(&audit.body)
    );
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&audit.body)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(records.len(), 5, "{records:?}");
    let mut audited = BTreeSet::new();
    for r in &records {
        assert_eq!(r["action"], "import-override", "{r}");
        assert_eq!(r["system"], "operator", "{r}");
        assert_eq!(r["protocol"], "cli", "{r}");
        assert_eq!(r["peer"], "import", "{r}");
        assert_eq!(r["register"], "1.2.246.10.1001", "{r}");
        assert_eq!(r["patient"], "131052-308T", "{r}");
        let detail = r["detail"].as_str().expect("detail");
        let sop = detail
            .split_whitespace()
            .find_map(|w| w.strip_prefix("sop_instance="))
            .expect("sop_instance in the detail");
        audited.insert(sop.to_string());
    }
    assert_eq!(audited, valid.iter().cloned().collect::<BTreeSet<_>>());
    let listed = curl(
        &[
            "-H",
            "Authorization: Bearer county-pacs-example-token",
            &server.url("/instances"),
        ],
        None,
    );
    assert_eq!(listed.status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&listed.body).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(5), "{listed}");
}
