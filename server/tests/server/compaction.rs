//! `kuvasto compact` against a running server (through its admin socket) while curl reads
//! and writes, and retention: rules in the config, expiry by the sweep, each expiry audited,
//! nothing expired before its rule allows.

use crate::dicomweb::{
    audit, audit_records, curl, image, parts_of, serve_refused, stow, stow_with, Server, CT,
};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("data dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".kvs"))
        .map(|e| e.metadata().expect("metadata").len())
        .sum()
}

/// `kuvasto <args> --data-dir DATA --json`: the parsed report and the exit status.
fn kuvasto_json(args: &[&str], data: &Path) -> (serde_json::Value, std::process::Output) {
    let out = Command::new(env!("CARGO_BIN_EXE_kuvasto"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .arg("--json")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kuvasto");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kuvasto {args:?}: not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out)
}

#[test]
fn compaction_runs_online_while_clients_read_and_write() {
    let server = Server::start(&["--segment-size-mib", "16"]);
    let study = "2.25.7100";
    let series = format!("{study}.8.1");
    let instances: Vec<Vec<u8>> = (0..40)
        .map(|i| image(CT, &format!("2.25.7100.9.{i}"), study, 512, 512, 2))
        .collect();
    for batch in instances.chunks(10) {
        let parts: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        assert_eq!(stow(&server, "/studies", &parts).status, 200);
    }
    let url_of = |i: usize| format!("/studies/{study}/series/{series}/instances/2.25.7100.9.{i}");
    for i in 0..30 {
        let reply = curl(&["-X", "DELETE", &server.url(&url_of(i))], None);
        assert_eq!(reply.status, 204, "delete {i}");
    }
    let data = server.dir.path().join("data");
    let before = segment_bytes(&data);
    // `kuvasto stats` through the admin socket too: 10 instances left, the rest garbage.
    let stats_args = [
        "stats",
        "--profile",
        "standalone",
        "--segment-size-mib",
        "16",
    ];
    let (stats, out) = kuvasto_json(&stats_args, &data);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stats["instances"], 10, "{stats}");
    let garbage_before = stats["storage"]["garbage_bytes"].as_u64().expect("garbage");
    assert!(garbage_before > 30 * 512 * 512 * 2, "{stats}");

    // Readers and a writer keep going for the whole compaction.
    let stop = AtomicBool::new(false);
    let (reads, written, (report, out)) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) || reads < 20 {
                for (i, bytes) in instances.iter().enumerate().skip(30) {
                    let got = curl(&[&server.url(&url_of(i))], None);
                    assert_eq!(got.status, 200, "read {i} during compaction");
                    assert!(parts_of(&got)[0] == *bytes, "{i} changed");
                    reads += 1;
                }
            }
            reads
        });
        let writer = scope.spawn(|| {
            let mut written = Vec::new();
            while !stop.load(Ordering::Relaxed) || written.len() < 3 {
                let sop = format!("2.25.7101.9.{}", written.len());
                let bytes = image(CT, &sop, "2.25.7101", 64, 64, 1);
                let reply = stow(&server, "/studies", &[&bytes]);
                assert_eq!(reply.status, 200, "store during compaction");
                written.push((sop, bytes));
            }
            written
        });
        // The server holds the data directory: the command goes through its admin socket.
        assert!(data.join("admin.sock").exists(), "no admin socket");
        let result = kuvasto_json(
            &[
                "compact",
                "--profile",
                "standalone",
                "--segment-size-mib",
                "16",
                // Exercises the throttle; far above what this copy needs.
                "--copy-mib-per-second",
                "4096",
            ],
            &data,
        );
        stop.store(true, Ordering::Relaxed);
        (
            reader.join().expect("reads kept working during compaction"),
            writer
                .join()
                .expect("stores kept working during compaction"),
            result,
        )
    });
    assert!(out.status.success(), "{out:?}");
    assert!(reads >= 20, "{reads} reads");
    let removed = report["segments_removed"].as_array().expect("removed");
    assert!(!removed.is_empty(), "{report}");
    let (bytes_before, bytes_after) = (
        report["bytes_before"].as_u64().expect("before"),
        report["bytes_after"].as_u64().expect("after"),
    );
    assert!(bytes_after < bytes_before, "{report}");
    let after = segment_bytes(&data);
    assert!(
        after < before,
        "the running server reclaimed nothing: {before} -> {after} bytes; {report}"
    );
    let (stats, _) = kuvasto_json(&stats_args, &data);
    let garbage_after = stats["storage"]["garbage_bytes"].as_u64().expect("garbage");
    assert!(
        garbage_after < garbage_before,
        "{garbage_before} -> {stats}"
    );
    assert_eq!(
        stats["instances"].as_u64(),
        Some(10 + written.len() as u64),
        "{stats}"
    );
    // Progress went to stderr as the work went on.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("compaction:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Everything kept and everything written meanwhile is still served, byte for byte.
    for (i, bytes) in instances.iter().enumerate().skip(30) {
        let got = curl(&[&server.url(&url_of(i))], None);
        assert_eq!(got.status, 200);
        assert!(parts_of(&got)[0] == *bytes, "instance {i} changed");
    }
    for (sop, bytes) in &written {
        let got = curl(
            &[&server.url(&format!(
                "/studies/2.25.7101/series/2.25.7101.8.1/instances/{sop}"
            ))],
            None,
        );
        assert_eq!(got.status, 200, "{sop} written during compaction");
        assert!(parts_of(&got)[0] == *bytes, "{sop} changed");
    }
    let records = audit(&server, "compact");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["protocol"], "admin-socket");
    assert!(
        records[0]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("uid=")),
        "{records:?}"
    );
    // And after a restart over the new segments.
    let (status, dir) = server.stop();
    assert!(status.success());
    assert!(
        !dir.path().join("data/admin.sock").exists(),
        "socket left behind"
    );
    let server = Server::start_in(dir, &["--segment-size-mib", "16"]);
    for (i, bytes) in instances.iter().enumerate().skip(30) {
        let got = curl(&[&server.url(&url_of(i))], None);
        assert!(parts_of(&got)[0] == *bytes, "instance {i} after restart");
    }
}

/// The loss issue 15 opened with: a 40 MiB STOW-RS upload from a slow client (4 MB/s) fills a
/// 16 MiB segment with chunks that no index entry names yet, and `kuvasto compact` runs
/// against the server meanwhile. That segment is left alone (reported as in use), the upload
/// commits, and WADO-RS serves it byte for byte, also after a restart. (Before the fix the
/// segment was taken for garbage and removed: WADO-RS answered 200 with an empty body.)
#[test]
fn compaction_leaves_the_chunks_of_an_upload_in_flight() {
    let server = Server::start(&["--segment-size-mib", "16"]);
    let (study, sop) = ("2.25.7150", "2.25.7150.9.1");
    let big = image(CT, sop, study, 1024, 1024, 40);
    let data = server.dir.path().join("data");
    let (upload, report, in_flight_after) = std::thread::scope(|scope| {
        let upload =
            scope.spawn(|| stow_with(&server, "/studies", &[&big], &["--limit-rate", "4M"]));
        // The event: segment 1 sealed by the upload's own chunks (the writer created 2).
        let second = data.join("seg-0000000000000002.kvs");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !second.exists() {
            assert!(
                !upload.is_finished(),
                "the upload ended before filling a segment"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "segment 1 was never sealed"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (report, out) = kuvasto_json(
            &[
                "compact",
                "--profile",
                "standalone",
                "--segment-size-mib",
                "16",
            ],
            &data,
        );
        assert!(out.status.success(), "{out:?}");
        let in_flight_after = !upload.is_finished();
        (upload.join().expect("upload"), report, in_flight_after)
    });
    assert!(
        in_flight_after,
        "the upload was still in flight when compaction ended"
    );
    assert_eq!(
        upload.status,
        200,
        "{}",
        String::from_utf8_lossy(&upload.body)
    );
    let url = server.url(&format!(
        "/studies/{study}/series/{study}.8.1/instances/{sop}"
    ));
    let got = curl(&[&url], None);
    assert_eq!(got.status, 200);
    assert!(
        parts_of(&got).first() == Some(&big),
        "the upload is served whole: {} bytes in {} parts ({report})",
        got.body.len(),
        parts_of(&got).len()
    );
    assert_eq!(
        report["segments_in_use"],
        serde_json::json!([1]),
        "{report}"
    );
    let (status, dir) = server.stop();
    assert!(status.success());
    let server = Server::start_in(dir, &["--segment-size-mib", "16"]);
    let got = curl(
        &[&server.url(&format!(
            "/studies/{study}/series/{study}.8.1/instances/{sop}"
        ))],
        None,
    );
    assert!(parts_of(&got)[0] == big, "served whole after a restart");
}

/// `common()` dates every study 2026-11-25; these tests need other dates.
fn dated(bytes: Vec<u8>, date: &str) -> Vec<u8> {
    let from = b"20261125";
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("a study date to replace");
    let mut out = bytes;
    if date.is_empty() {
        out[at..at + 8].copy_from_slice(b"        ");
    } else {
        out[at..at + 8].copy_from_slice(date.as_bytes());
    }
    out
}

/// Today minus `years` years plus `days` days, as a DICOM date (UTC).
fn years_ago(years: i64, days: i64) -> String {
    use kuvasto_server::archive::time;
    let today = time::format_ms(time::now_ms());
    let year: i64 = today[..4].parse().expect("year");
    let day: u32 = today[8..10].parse().expect("day");
    let then = format!("{:04}-{}-{:02}", year - years, &today[5..7], day.min(28));
    let ms = time::parse_ms(&then).expect("date") + days * 86_400_000;
    time::format_ms(ms)[..10].replace('-', "")
}

#[test]
fn retention_expires_only_what_its_rule_allows_and_audits_each_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("kuvasto.toml");
    std::fs::write(
        &config,
        "[[retention]]\nname = \"images-12y\"\ncontent_type = \"any\"\nkeep_years = 12\nclock = \"study-date\"\n",
    )
    .expect("config");
    let config = config.to_string_lossy().to_string();
    let server = Server::start_in(dir, &["--config", &config]);
    // (study, date): 1990 is long due; 12 years ago less two days is not yet; 2020 is young;
    // no study date keeps a study (its clock cannot be read).
    let studies = [
        ("2.25.7200", "19900101".to_string()),
        ("2.25.7201", years_ago(12, 2)),
        ("2.25.7202", "20200101".to_string()),
        ("2.25.7203", String::new()),
    ];
    for (study, date) in &studies {
        let parts: Vec<Vec<u8>> = (0..3)
            .map(|i| dated(image(CT, &format!("{study}.9.{i}"), study, 64, 64, 1), date))
            .collect();
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        assert_eq!(stow(&server, "/studies", &parts).status, 200, "{study}");
    }
    let data = server.dir.path().join("data");
    let found = |study: &str| {
        let reply = curl(
            &[&server.url(&format!("/studies?StudyInstanceUID={study}"))],
            None,
        );
        !reply.body.is_empty()
            && serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v.as_array().map(|a| !a.is_empty()))
                .unwrap_or(false)
    };

    // A dry run names the one study due and changes nothing.
    let args = ["compact", "--config", &config, "--profile", "standalone"];
    let (report, out) = kuvasto_json(&[&args[..], &["--dry-run"]].concat(), &data);
    assert!(out.status.success(), "{out:?}");
    let expired = report["retention"]["expired"].as_array().expect("expired");
    assert_eq!(expired.len(), 1, "{report}");
    assert_eq!(expired[0]["study"], "2.25.7200");
    assert_eq!(expired[0]["rule"], "images-12y");
    assert_eq!(expired[0]["instances_deleted"], 3);
    assert!(found("2.25.7200"), "a dry run deleted");
    assert!(audit(&server, "retention-expire").is_empty());

    let (report, out) = kuvasto_json(&args, &data);
    assert!(out.status.success(), "{out:?}");
    let expired = report["retention"]["expired"].as_array().expect("expired");
    assert_eq!(expired.len(), 1, "{report}");
    assert_eq!(expired[0]["instances_deleted"], 3, "{report}");
    assert!(!found("2.25.7200"), "the due study is still served");
    for (study, _) in &studies[1..] {
        assert!(found(study), "{study} expired before its rule allows");
    }
    let records = audit(&server, "retention-expire");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["study"], "2.25.7200");
    assert_eq!(records[0]["outcome"], "success");
    let detail = records[0]["detail"].as_str().expect("detail");
    assert!(
        detail.contains("rule=images-12y") && detail.contains("instances=3"),
        "{detail}"
    );
    // Nothing more is due on a second run.
    let (report, _) = kuvasto_json(&args, &data);
    assert_eq!(
        report["retention"]["expired"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
}

#[test]
fn a_retention_rule_below_the_legal_minimum_stops_the_server_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("kuvasto.toml");
    std::fs::write(
        &config,
        "[[retention]]\nname = \"too-short\"\nkeep_years = 10\n",
    )
    .expect("config");
    let stderr = serve_refused(&[
        "--profile".as_ref(),
        "standalone".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(
        stderr.contains("too-short") && stderr.contains("legal minimum of 12 years"),
        "{stderr}"
    );
}

/// `national_ct` of a given study date and examination code.
fn national(sop: &str, study: &str, date: &str, code: &str) -> Vec<u8> {
    let mut bytes = crate::import::national_ct(sop, study, "131052-308T");
    for (from, to) in [
        (&b"20261120"[..], date.as_bytes()),
        (b"AA1AA", code.as_bytes()),
    ] {
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .expect("a value to replace");
        bytes[at..at + from.len()].copy_from_slice(to);
    }
    bytes
}

#[test]
fn national_retention_follows_content_types_and_an_expired_study_takes_nothing_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let national_toml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/national.toml"),
    )
    .expect("national.toml");
    let config = dir.path().join("national-retention.toml");
    std::fs::write(
        &config,
        format!(
            "{national_toml}\n[[retention]]\nname = \"radiology-12y\"\ncontent_type = \"radiology\"\nkeep_years = 12\nclock = \"study-date\"\n\n[[retention]]\nname = \"dental-forever\"\ncontent_type = \"dental\"\n"
        ),
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    // Radiology of 1990 is due; dental of 1990 is kept forever; radiology of 2020 is young.
    let export = dir.path().join("export");
    std::fs::create_dir_all(&export).expect("export dir");
    let studies = [
        ("2.25.7300", "19900101", "AA1AA"),
        ("2.25.7301", "19900101", "EB1AA"),
        ("2.25.7302", "20200101", "AA1AA"),
    ];
    for (study, date, code) in studies {
        for i in 0..2 {
            let sop = format!("{study}.9.{i}");
            std::fs::write(export.join(&sop), national(&sop, study, date, code)).expect("write");
        }
    }
    let data = dir.path().join("data");
    let import = |path: &Path| {
        let name = path.file_name().expect("name").to_string_lossy();
        Command::new(env!("CARGO_BIN_EXE_kuvasto"))
            .args(["import", "--config", &config, "--data-dir"])
            .arg(&data)
            .args([
                "--as",
                "operator",
                "--operator-override",
                "--register",
                "1.2.246.10.1001",
            ])
            .arg("--journal")
            .arg(dir.path().join(format!("journal-{name}")))
            .arg("--report")
            .arg(dir.path().join(format!("report-{name}.tsv")))
            .arg(path)
            .output()
            .expect("run kuvasto import")
    };
    let out = import(&export);
    assert!(out.status.success(), "{out:?}");

    // Offline: no server runs, the command opens the data directory itself.
    let (report, out) = kuvasto_json(&["compact", "--config", &config], &data);
    assert!(out.status.success(), "{out:?}");
    let expired = report["retention"]["expired"].as_array().expect("expired");
    assert_eq!(expired.len(), 1, "{report}");
    assert_eq!(expired[0]["study"], "2.25.7300");
    assert_eq!(expired[0]["rule"], "radiology-12y");
    assert_eq!(expired[0]["register"], "1.2.246.10.1001");
    assert_eq!(expired[0]["patient"], "131052-308T");
    assert_eq!(expired[0]["instances_deleted"], 2);

    // The expired study takes no new instance (C015).
    let late = dir.path().join("late");
    std::fs::create_dir_all(&late).expect("late dir");
    std::fs::write(
        late.join("late"),
        national("2.25.7300.9.7", "2.25.7300", "19900101", "AA1AA"),
    )
    .expect("write");
    let out = import(&late);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("C015"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Served: the two kept studies, not the expired one; the expiry is in the audit log.
    let server = Server::start_in(dir, &["--profile", "national", "--config", &config]);
    let qido = |study: &str| {
        curl(
            &[
                "-H",
                "Authorization: Bearer operator-example-token-01",
                &server.url(&format!("/studies/{study}/series/{study}.1/instances")),
            ],
            None,
        )
    };
    let hits = |study: &str| {
        let reply = qido(study);
        assert!(
            matches!(reply.status, 200 | 204),
            "{study}: {}",
            reply.status
        );
        if reply.body.is_empty() {
            return 0;
        }
        let hits: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
        hits.as_array().map_or(0, Vec::len)
    };
    assert_eq!(hits("2.25.7300"), 0, "the expired study is served");
    for study in ["2.25.7301", "2.25.7302"] {
        assert_eq!(hits(study), 2, "{study}");
    }
    let audit = curl(
        &[
            "-H",
            "Authorization: Bearer operator-example-token-01",
            &format!("http://{}/api/audit?action=retention-expire", server.addr),
        ],
        None,
    );
    let records = audit_records(&audit);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["study"], "2.25.7300");
    assert_eq!(records[0]["protocol"], "cli");
    assert_eq!(records[0]["register"], "1.2.246.10.1001");
}
