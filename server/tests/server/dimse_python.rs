//! DIMSE against a real `kuvasto serve`, driven by Python's `pynetdicom` (a DICOM network
//! library nobody here wrote) through `tests/python/dimse_suite.py`: C-ECHO; C-STORE of
//! pydicom's sample files and of generated CT, XA multi-frame, ECG, PDF, intra-oral,
//! ophthalmic, SR and KOS objects, and the refusals; C-FIND in both root models at every level
//! and its C-CANCEL; C-GET and C-MOVE with the received bytes compared with the bytes sent and
//! with WADO-RS; Storage Commitment answered on the same and on a new association; Instance
//! Availability Notification to a subscriber.
//!
//! The suite listens as three peers the server must know: `PYSCP` (the C-MOVE destination),
//! `COMMITSCU` (a Storage Commitment requester whose results go to a new association) and
//! `IANSCP` (a notification subscriber). Their ports are picked here and given to both the
//! server (`--dimse-peers`) and the suite.

use crate::dicomweb::Server;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The suite's whole run may take this long before it is stopped and the test fails.
const SUITE_TIMEOUT: Duration = Duration::from_secs(900);

/// `.venv`'s python, if it has pynetdicom (`scripts/test.sh` installs it).
pub(crate) fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let ok = venv.exists()
        && Command::new(&venv)
            .args(["-c", "import pynetdicom, pydicom, numpy, requests"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("KUVASTO_REQUIRE_SAMPLES").is_some() {
        panic!("KUVASTO_REQUIRE_SAMPLES is set but .venv has no pynetdicom");
    }
    ok.then_some(venv)
}

/// Ports free at the time of asking, all different (the listeners are held until all are
/// known).
pub(crate) fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local address").port())
}

pub(crate) fn dimse_address(server: &Server) -> String {
    let path = server.dir.path().join("dimse-addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&path) {
            if !addr.is_empty() {
                return addr;
            }
        }
        assert!(Instant::now() < deadline, "no DIMSE address file");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `tests/python/<script>` with `args` under `python`, printing its output; panics when
/// it fails or outlives `timeout`. Returns its stdout (the suites print a JSON summary last).
pub(crate) fn run_suite(python: &Path, script: &str, args: &[String], timeout: Duration) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/python")
        .join(script);
    let output = tempfile::tempdir().expect("tempdir");
    let stdout_path = output.path().join("stdout");
    let stderr_path = output.path().join("stderr");
    let started = Instant::now();
    let mut child = Command::new(python)
        .arg(&script)
        .args(args)
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("run the Python suite");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the suite") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    println!("{stdout}");
    if !stderr.trim().is_empty() {
        println!("stderr:\n{stderr}");
    }
    let status = status.unwrap_or_else(|| panic!("{script:?} did not finish within {timeout:?}"));
    assert!(status.success(), "{script:?} failed ({status})");
    stdout
}

#[test]
fn pynetdicom_stores_finds_retrieves_moves_and_commits() {
    let Some(python) = python() else {
        eprintln!("skipped: no .venv with pynetdicom (scripts/test.sh installs it)");
        return;
    };
    let [scp_port, commit_port, ian_port] = free_ports::<3>();
    let peers = format!(
        "PYSCP=127.0.0.1:{scp_port},COMMITSCU=127.0.0.1:{commit_port}/new-association,\
         IANSCP=127.0.0.1:{ian_port}/notify"
    );
    let server = Server::start(&["--dimse-peers", &peers]);
    let dimse = dimse_address(&server);
    let started = Instant::now();
    let mut args: Vec<String> = vec![
        "--dimse".into(),
        dimse,
        "--http".into(),
        server.addr.clone(),
    ];
    for (flag, port) in [
        ("--scp-port", scp_port),
        ("--commit-port", commit_port),
        ("--ian-port", ian_port),
    ] {
        args.extend([flag.to_string(), port.to_string()]);
    }
    let stdout = run_suite(&python, "dimse_suite.py", &args, SUITE_TIMEOUT);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("summary");
    eprintln!(
        "pynetdicom: {summary} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(summary["failed"].as_u64(), Some(0), "{summary}");
    assert!(summary["passed"].as_u64().unwrap_or(0) > 0, "{summary}");
    assert!(
        summary["samples_stored"].as_u64().unwrap_or(0) >= 40,
        "{summary}"
    );
}
