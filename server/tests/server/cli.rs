//! The `kuvasto` binary as an operator runs it: `serve` opens the store, runs until SIGTERM
//! and closes cleanly; `check` reports the store and exits 0 when nothing is damaged.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kuvasto() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kuvasto"));
    cmd.env("RUST_LOG", "info");
    cmd
}

#[test]
fn serve_runs_until_sigterm_and_closes_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut child = kuvasto()
        .arg("serve")
        .args(["--profile", "standalone"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--http-listen")
        .arg("127.0.0.1:0")
        .arg("--dimse-listen")
        .arg("127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kuvasto serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = String::new();
    loop {
        assert!(Instant::now() < deadline, "serve never got ready:\n{log}");
        let line = lines.next().expect("serve exited early").expect("read log");
        log.push_str(&line);
        log.push('\n');
        if line.contains("DICOMweb listening") {
            break;
        }
    }
    assert!(log.contains("store open"), "{log}");
    // SAFETY: kill(2) on the child's pid with a valid signal number.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit {status}: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("store closed cleanly")),
        "{rest:?}"
    );
    assert!(data.join("LOCK").exists());

    let out = kuvasto()
        .arg("check")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run check");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("live keys"), "{stdout}");
}

#[test]
fn check_fails_loudly_on_a_damaged_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A segment with a damaged header: reported as corruption, so `check` exits non-zero.
    std::fs::write(
        dir.path().join("seg-0000000000000001.kvs"),
        vec![0xAB; 8192],
    )
    .expect("write damaged segment");
    let out = kuvasto()
        .arg("check")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run check");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corruption found"), "{stderr}");
    assert!(stderr.contains("damaged places found"), "{stderr}");
}
