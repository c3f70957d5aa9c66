//! The archive rules of the national profile against a real `kuvasto serve` running
//! `docs/examples/national.toml`, driven over both protocols by clients nobody here wrote
//! (`requests` and `pynetdicom`, in `tests/python/rules_suite.py`): the authorization matrix
//! with the audit record of every cell, the patient view, IOCM and invalidation; documents
//! first in reject mode and validation; quarantine, release on document arrival, expiry and a
//! restart while a study waits in quarantine.

use crate::dicomweb::Server;
use crate::dimse_python::{dimse_address, free_ports, python, run_suite};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One scenario's run may take this long before it is stopped and the test fails.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(600);

fn national_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/national.toml")
        .to_string_lossy()
        .into_owned()
}

/// Runs one scenario of the suite against `server`; panics unless every check passed.
fn scenario(python: &Path, server: &Server, name: &str, move_port: u16, state: &Path) {
    let started = Instant::now();
    let args: Vec<String> = vec![
        "--scenario".into(),
        name.into(),
        "--http".into(),
        server.addr.clone(),
        "--dimse".into(),
        dimse_address(server),
        "--move-port".into(),
        move_port.to_string(),
        "--state".into(),
        state.to_string_lossy().into_owned(),
    ];
    let stdout = run_suite(python, "rules_suite.py", &args, SCENARIO_TIMEOUT);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("summary");
    eprintln!(
        "rules {name}: {summary} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(summary["failed"].as_u64(), Some(0), "{summary}");
    assert!(summary["passed"].as_u64().unwrap_or(0) > 0, "{summary}");
}

/// A national server on `dir` (fresh when `None`) whose C-MOVE destination is `MOVESCP`.
fn start(dir: Option<tempfile::TempDir>, documents_first: &str, move_port: u16) -> Server {
    let peers = format!("MOVESCP=127.0.0.1:{move_port}");
    let config = national_config();
    let args = [
        "--profile",
        "national",
        "--config",
        &config,
        "--documents-first",
        documents_first,
        "--dimse-peers",
        &peers,
    ];
    match dir {
        Some(dir) => Server::start_in(dir, &args),
        None => Server::start(&args),
    }
}

/// Runs scenario `name` on a fresh national server in `documents_first` mode.
fn on_a_fresh_server(name: &str, documents_first: &str) {
    let Some(python) = python() else {
        eprintln!("skipped: no .venv with pynetdicom (scripts/test.sh installs it)");
        return;
    };
    let [move_port] = free_ports::<1>();
    let server = start(None, documents_first, move_port);
    let state = server.dir.path().join("state.json");
    scenario(&python, &server, name, move_port, &state);
}

#[test]
fn authorization_matrix_over_both_protocols_with_audit_records() {
    on_a_fresh_server("matrix", "reject");
}

#[test]
fn documents_first_rejects_and_ingest_validates() {
    on_a_fresh_server("reject", "reject");
}

#[test]
fn quarantine_releases_on_document_arrival_and_survives_a_restart() {
    let Some(python) = python() else {
        eprintln!("skipped: no .venv with pynetdicom (scripts/test.sh installs it)");
        return;
    };
    let [move_port] = free_ports::<1>();
    let server = start(None, "quarantine", move_port);
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("state.json");
    scenario(&python, &server, "quarantine-1", move_port, &state);
    let (status, dir) = server.stop();
    assert!(status.success(), "the server stopped badly: {status}");
    let server = start(Some(dir), "quarantine", move_port);
    scenario(&python, &server, "quarantine-2", move_port, &state);
}

#[test]
fn the_national_profile_refuses_to_start_without_identities() {
    let stderr = crate::dicomweb::serve_refused(&[]);
    assert!(
        stderr.contains("[[identities]]") && stderr.contains("standalone"),
        "{stderr}"
    );
}

#[test]
fn the_walkthrough_in_docs_runs_as_written() {
    let tools = ["curl", "jq", "/usr/bin/dump2dcm", "/usr/bin/storescu"];
    let missing: Vec<&str> = tools
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        if std::env::var_os("KUVASTO_REQUIRE_SAMPLES").is_some() {
            panic!("KUVASTO_REQUIRE_SAMPLES is set but {missing:?} are missing");
        }
        eprintln!("skipped: {missing:?} not installed (scripts/test.sh installs them)");
        return;
    }
    let server = Server::start(&["--profile", "national", "--config", &national_config()]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/walkthrough.sh");
    for run in 1..=2 {
        let out = Command::new("bash")
            .arg(&script)
            .env("KUVASTO_HTTP", &server.addr)
            .env("KUVASTO_DIMSE", dimse_address(&server))
            .output()
            .expect("run the walkthrough");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("walkthrough finished: OK"),
            "run {run}: {}\n{stdout}\n{stderr}",
            out.status
        );
    }
}
