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

/// `kuvasto verify` on a store filled through STOW-RS: clean → 0; a flipped byte in a sealed
/// segment → 1, naming the instance; a flipped byte in an index run → 1, `--repair-indices`
/// → 0, then clean, and every instance still retrievable after a restart.
#[test]
fn verify_names_damaged_instances_and_repairs_index_runs() {
    use crate::dicomweb::{curl, generated, image, listed_sops, Server, CT};

    fn stow_all(server: &Server, objects: &[Vec<u8>]) {
        let boundary = "KUVASTO-VERIFY-BOUNDARY";
        let mut body = Vec::new();
        for object in objects {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(object);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let content_type = format!(
            "Content-Type: multipart/related; type=\"application/dicom\"; boundary={boundary}"
        );
        let reply = curl(
            &[
                "-X",
                "POST",
                "-H",
                &content_type,
                "-H",
                "Accept: application/dicom+json",
                &server.url("/studies"),
            ],
            Some(&body),
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }

    fn verify(data: &std::path::Path, extra: &[&str]) -> (i32, String) {
        let out = kuvasto()
            .args(["verify", "--segment-size-mib", "16", "--data-dir"])
            .arg(data)
            .args(extra)
            .output()
            .expect("run kuvasto verify");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = out.status.code().expect("an exit code");
        (
            code,
            format!(
                "{stdout}\n--- stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn flip(path: &std::path::Path, offset: usize) {
        let mut bytes = std::fs::read(path).expect("read");
        bytes[offset] ^= 0x5A;
        std::fs::write(path, bytes).expect("write");
    }

    /// The offset of a byte in the body of the object record (namespace 1, a blob) of `key`.
    fn body_byte_of(segment: &[u8], key: &str) -> Option<usize> {
        let key = key.as_bytes();
        (4096..segment.len().saturating_sub(64))
            .step_by(8)
            .find(|&o| {
                segment[o..o + 4] == *b"KvRc"
                    && segment[o + 4] == 2
                    && segment[o + 5] == 1
                    && u16::from_le_bytes([segment[o + 6], segment[o + 7]]) as usize == key.len()
                    && segment[o + 64..o + 64 + key.len()] == *key
            })
            .map(|o| {
                let body_len =
                    u64::from_le_bytes(segment[o + 8..o + 16].try_into().expect("8 bytes"));
                let table = 4 * body_len.div_ceil(65536) as usize;
                let body = (64 + key.len() + table).div_ceil(8) * 8;
                o + body + 1000
            })
    }

    // Small instances first (so the first segment's index run spans several 4 KiB blocks),
    // then the generated CT, 50 MB XA, ECG and PDF, which seal the first 16 MiB segments.
    let server = Server::start(&["--segment-size-mib", "16"]);
    let study = "2.25.7100";
    let small: Vec<Vec<u8>> = (0..80)
        .map(|i| image(CT, &format!("{study}.9.{i}"), study, 16, 16, 1))
        .collect();
    stow_all(&server, &small);
    let objects = generated();
    for (_, bytes) in &objects {
        stow_all(&server, std::slice::from_ref(bytes));
    }
    let (status, dir) = server.stop();
    assert!(status.success());
    let data = dir.path().join("data");

    let (code, out) = verify(&data, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("result: clean"), "{out}");
    assert!(out.contains("segment damage: none"), "{out}");

    // A byte of the generated CT's pixel data, in the first (sealed) segment.
    let victim = "2.25.4711.9.1";
    let first = data.join("seg-0000000000000001.kvs");
    let segment = std::fs::read(&first).expect("read segment");
    assert_eq!(
        &segment[segment.len() - 64..segment.len() - 56],
        b"KUVASEAL"
    );
    let at = body_byte_of(&segment, victim).expect("the CT's record in the first segment");
    drop(segment);
    flip(&first, at);
    let (code, out) = verify(&data, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("body block 0 checksum"), "{out}");
    assert!(out.contains(&format!("object {victim} (blob")), "{out}");
    assert!(out.contains("result: DAMAGED"), "{out}");
    let (code, out) = verify(&data, &["--json"]);
    assert_eq!(code, 1, "{out}");
    let json: serde_json::Value =
        serde_json::from_str(out.split("\n--- stderr:").next().unwrap_or("")).expect("JSON");
    assert_eq!(json["exit_code"], 1);
    let damage = json["segment_damage"].as_array().expect("damage list");
    assert_eq!(damage.len(), 1, "{json}");
    assert_eq!(damage[0]["keys"][0]["key"], victim, "{json}");
    assert_eq!(damage[0]["keys"][0]["namespace_name"], "object", "{json}");
    assert_eq!(damage[0]["keys"][0]["current"], true, "{json}");
    // Segments are never repaired: --repair-indices does not change that.
    let (code, out) = verify(&data, &["--repair-indices"]);
    assert_eq!(code, 1, "{out}");
    flip(&first, at);

    // A data block of the largest index run that opening does not read (it checks the
    // header and the block table, and reads the removals and the covered segments).
    let mut runs: Vec<_> = std::fs::read_dir(data.join("index"))
        .expect("index directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "kvi"))
        .collect();
    runs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let run = runs.pop().expect("an index run");
    let bytes = std::fs::read(&run).expect("read run");
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let block_of = |offset: u64| (offset - 512) / 4096;
    let instances_at = word(128);
    assert!(
        block_of(instances_at) < block_of(word(256))
            && block_of(instances_at) < block_of(word(272)),
        "the run is too small for this test ({} bytes)",
        bytes.len()
    );
    drop(bytes);
    flip(&run, instances_at as usize + 3);
    let (code, out) = verify(&data, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("index run damaged: {}", run.display())),
        "{out}"
    );
    assert!(out.contains("--repair-indices"), "{out}");
    let (code, out) = verify(&data, &["--repair-indices"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("repaired: "), "{out}");
    assert!(
        out.contains("result: clean after repairing the index"),
        "{out}"
    );
    let (code, out) = verify(&data, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("result: clean\n"), "{out}");

    // Everything is still there after a restart, found through the rebuilt index.
    let server = Server::start_in(dir, &["--segment-size-mib", "16"]);
    let listed = listed_sops(&server);
    assert_eq!(listed.len(), small.len() + objects.len(), "{listed:?}");
    for sop in [
        "2.25.4711.9.1",
        "2.25.4711.9.2",
        "2.25.4711.9.3",
        "2.25.4711.9.4",
    ] {
        assert!(listed.iter().any(|s| s == sop), "{sop} listed");
    }
    let series = format!("{study}.8.1");
    let got = curl(
        &[&server.url(&format!(
            "/studies/{study}/series/{series}/instances/{study}.9.7"
        ))],
        None,
    );
    assert_eq!(got.status, 200);
    let wanted = &small[7];
    assert!(
        got.body
            .windows(wanted.len())
            .any(|w| w == wanted.as_slice()),
        "instance 7 comes back byte for byte"
    );
    let got = curl(
        &[&server.url("/studies/2.25.4711/series/2.25.4711.8.1/instances/2.25.4711.9.1")],
        None,
    );
    assert_eq!(got.status, 200);
    let ct = &objects[0].1;
    assert!(
        got.body.windows(ct.len()).any(|w| w == ct.as_slice()),
        "the CT comes back byte for byte"
    );
}
