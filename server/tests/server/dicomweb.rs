//! DICOMweb against a real `kuvasto serve` process, driven by clients nobody here wrote —
//! `curl` and Python's `dicomweb-client` — on pydicom's sample files and generated CT, XA
//! multi-frame (50 MB), ECG waveform and encapsulated PDF objects; plus bad input, memory
//! under concurrent large uploads, and shutdown with an upload in flight.

use kuvasto_engine::dicom::explicit_le::encode_element as el;
use kuvasto_engine::dicom::meta::encode_file_meta;
use kuvasto_engine::dicom::Tag;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
pub(crate) const XA: &str = "1.2.840.10008.5.1.4.1.1.12.1";
pub(crate) const ECG: &str = "1.2.840.10008.5.1.4.1.1.9.1.1";
pub(crate) const PDF: &str = "1.2.840.10008.5.1.4.1.1.104.1";
pub(crate) const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// A running server on a fresh data directory; stopped with SIGTERM when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        Server::start_in(dir, extra)
    }

    pub(crate) fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let addr_file = dir.path().join("addr");
        let _ = std::fs::remove_file(&addr_file);
        #[allow(clippy::zombie_processes)] // waited for in `stop` and `Drop`
        let mut child = Command::new(env!("CARGO_BIN_EXE_kuvasto"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(if extra.contains(&"--segment-size-mib") {
                &[][..]
            } else {
                &["--segment-size-mib", "256"][..]
            })
            .arg("--http-listen")
            .arg("127.0.0.1:0")
            .arg("--address-file")
            .arg(&addr_file)
            .arg("--dimse-listen")
            .arg("127.0.0.1:0")
            .arg("--dimse-address-file")
            .arg(dir.path().join("dimse-addr"))
            // The earlier suites test protocols, not the archive rules: the standalone
            // profile, unless a test names one.
            .args(if extra.contains(&"--profile") {
                &[][..]
            } else {
                &["--profile", "standalone"][..]
            })
            .args(extra)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kuvasto serve");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                if !addr.is_empty() {
                    return Server { child, addr, dir };
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/dicom-web{path}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then wait; the exit status.
    pub fn stop(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        // SAFETY: kill(2) on our child's pid with a valid signal.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let status = self.child.wait().expect("wait for the server");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (status, dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our child's pid with a valid signal.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn text(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(b' ');
    }
    v
}

pub(crate) fn ui(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

pub(crate) fn us(n: u16) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

/// Patient, study, series and instance attributes every generated object has.
pub(crate) fn common(class: &str, sop: &str, study: &str, series: &str, modality: &str) -> Vec<u8> {
    [
        el(Tag::new(0x0008, 0x0005), b"CS", b"ISO_IR 100"),
        el(Tag::new(0x0008, 0x0016), b"UI", &ui(class)),
        el(Tag::new(0x0008, 0x0018), b"UI", &ui(sop)),
        el(Tag::new(0x0008, 0x0020), b"DA", b"20261125"),
        el(Tag::new(0x0008, 0x0050), b"SH", &text("ACC-1")),
        el(Tag::new(0x0008, 0x0060), b"CS", &text(modality)),
        el(Tag::new(0x0010, 0x0010), b"PN", &text("Virtanen^Aino")),
        el(Tag::new(0x0010, 0x0020), b"LO", &text("FI-010203-123A")),
        el(Tag::new(0x0020, 0x000D), b"UI", &ui(study)),
        el(Tag::new(0x0020, 0x000E), b"UI", &ui(series)),
        el(Tag::new(0x0020, 0x0011), b"IS", b"1 "),
        el(Tag::new(0x0020, 0x0013), b"IS", b"1 "),
    ]
    .concat()
}

pub(crate) fn part10(class: &str, sop: &str, data_set: Vec<u8>) -> Vec<u8> {
    [encode_file_meta(class, sop, EXPLICIT_LE), data_set].concat()
}

/// A native 8-bit image's Part-10 bytes up to Pixel Data's value (whose length is declared).
fn image_head(class: &str, sop: &str, study: &str, rows: u16, cols: u16, frames: u32) -> Vec<u8> {
    let pixels_len = rows as u32 * cols as u32 * frames;
    let modality = if class == XA { "XA" } else { "CT" };
    let mut pixel_header = el(Tag::PIXEL_DATA, b"OB", &[]);
    let len_at = pixel_header.len() - 4;
    pixel_header[len_at..].copy_from_slice(&pixels_len.to_le_bytes());
    let data_set = [
        common(class, sop, study, &format!("{study}.8.1"), modality),
        el(Tag::new(0x0028, 0x0002), b"US", &us(1)),
        el(Tag::new(0x0028, 0x0004), b"CS", b"MONOCHROME2 "),
        el(Tag::new(0x0028, 0x0008), b"IS", &text(&frames.to_string())),
        el(Tag::new(0x0028, 0x0010), b"US", &us(rows)),
        el(Tag::new(0x0028, 0x0011), b"US", &us(cols)),
        el(Tag::new(0x0028, 0x0100), b"US", &us(8)),
        el(Tag::new(0x0028, 0x0101), b"US", &us(8)),
        el(Tag::new(0x0028, 0x0102), b"US", &us(7)),
        el(Tag::new(0x0028, 0x0103), b"US", &us(0)),
        pixel_header,
    ]
    .concat();
    part10(class, sop, data_set)
}

pub(crate) fn image(
    class: &str,
    sop: &str,
    study: &str,
    rows: u16,
    cols: u16,
    frames: u32,
) -> Vec<u8> {
    let pixels_len = rows as usize * cols as usize * frames as usize;
    let mut out = image_head(class, sop, study, rows, cols, frames);
    out.extend((0..pixels_len).map(|i| (i * 7 % 251) as u8));
    out
}

fn sequence(tag: Tag, items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&tag.group().to_le_bytes());
    out.extend_from_slice(&tag.element().to_le_bytes());
    out.extend_from_slice(b"SQ\0\0");
    out.extend_from_slice(&u32::MAX.to_le_bytes());
    for item in items {
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(item);
        out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
    }
    out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    out
}

/// A sequence of defined length with items of defined length.
fn sequence_defined(tag: Tag, items: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for item in items {
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        body.extend_from_slice(&(item.len() as u32).to_le_bytes());
        body.extend_from_slice(item);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&tag.group().to_le_bytes());
    out.extend_from_slice(&tag.element().to_le_bytes());
    out.extend_from_slice(b"SQ\0\0");
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

pub(crate) fn ecg(sop: &str, study: &str) -> Vec<u8> {
    let samples: Vec<u8> = (0..12 * 5000u32)
        .flat_map(|i| ((i % 400) as i16 - 200).to_le_bytes())
        .collect();
    let waveform = [
        el(Tag::new(0x003A, 0x0005), b"US", &us(12)),
        el(Tag::new(0x003A, 0x0010), b"UL", &5000u32.to_le_bytes()),
        el(Tag::new(0x003A, 0x001A), b"DS", b"500 "),
        el(Tag::new(0x5400, 0x1004), b"US", &us(16)),
        el(Tag::new(0x5400, 0x1006), b"CS", b"SS"),
        el(Tag::new(0x5400, 0x1010), b"OW", &samples),
    ]
    .concat();
    let data_set = [
        common(ECG, sop, study, &format!("{study}.8.2"), "ECG"),
        // Defined length (120 kB): a sequence this large is still not bulk data.
        sequence_defined(Tag::new(0x5400, 0x0100), &[waveform]),
    ]
    .concat();
    part10(ECG, sop, data_set)
}

pub(crate) fn pdf(sop: &str, study: &str) -> Vec<u8> {
    let mut document = b"%PDF-1.4\n% Kuvasto test document\n".to_vec();
    document.extend(std::iter::repeat_n(b'x', 70_000));
    document.extend_from_slice(b"\n%%EOF\n");
    if document.len() % 2 == 1 {
        document.push(0);
    }
    let data_set = [
        common(PDF, sop, study, &format!("{study}.8.3"), "DOC"),
        // Concept Name Code Sequence, undefined length.
        sequence(
            Tag::new(0x0040, 0xA043),
            &[[
                el(Tag::new(0x0008, 0x0100), b"SH", &text("18748-4")),
                el(Tag::new(0x0008, 0x0102), b"SH", &text("LN")),
                el(
                    Tag::new(0x0008, 0x0104),
                    b"LO",
                    &text("Diagnostic imaging report"),
                ),
            ]
            .concat()],
        ),
        el(Tag::new(0x0042, 0x0011), b"OB", &document),
        el(Tag::new(0x0042, 0x0012), b"LO", &text("application/pdf")),
    ]
    .concat();
    part10(PDF, sop, data_set)
}

/// The generated objects: (file name, bytes).
pub(crate) fn generated() -> Vec<(String, Vec<u8>)> {
    let study = "2.25.4711";
    vec![
        (
            "ct.dcm".into(),
            image(CT, "2.25.4711.9.1", study, 512, 512, 2),
        ),
        (
            "xa.dcm".into(),
            image(XA, "2.25.4711.9.2", study, 1024, 1024, 50),
        ),
        ("ecg.dcm".into(), ecg("2.25.4711.9.3", study)),
        ("pdf.dcm".into(), pdf("2.25.4711.9.4", study)),
    ]
}

/// pydicom's sample files, if the test environment has them (`scripts/test.sh` installs
/// them into `.venv`).
pub(crate) fn pydicom_samples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    let mut out = Vec::new();
    if let Ok(pythons) = std::fs::read_dir(&root) {
        for python in pythons.flatten() {
            let dir = python.path().join("site-packages/pydicom/data/test_files");
            if let Ok(files) = std::fs::read_dir(dir) {
                out.extend(
                    files
                        .flatten()
                        .map(|f| f.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "dcm")),
                );
            }
        }
    }
    out.sort();
    if out.is_empty() && std::env::var_os("KUVASTO_REQUIRE_SAMPLES").is_some() {
        panic!("KUVASTO_REQUIRE_SAMPLES is set but pydicom's sample files are not in .venv");
    }
    out
}

pub(crate) fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let ok = venv.exists()
        && Command::new(&venv)
            .args(["-c", "import dicomweb_client"])
            .status()
            .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("KUVASTO_REQUIRE_SAMPLES").is_some() {
        panic!("KUVASTO_REQUIRE_SAMPLES is set but .venv has no dicomweb-client");
    }
    ok.then_some(venv)
}

/// A multipart/related body of application/dicom parts.
fn multipart(parts: &[&[u8]], boundary: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(part);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

pub(crate) struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Runs curl; the body is streamed from a file (`-T`), as a client uploading large studies
/// would.
pub(crate) fn curl(args: &[&str], body: Option<&[u8]>) -> Reply {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = dir.path().join("head");
    let out = dir.path().join("out");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&out)
        .args(["-H", "Expect:"]);
    if let Some(body) = body {
        let path = dir.path().join("body");
        std::fs::write(&path, body).expect("write body");
        cmd.arg("-T").arg(&path);
    }
    let status = cmd.args(args).status().expect("run curl");
    assert!(status.success(), "curl {args:?} failed: {status}");
    let head = std::fs::read_to_string(head).expect("read head");
    let status_line = head.lines().last_status();
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .next_back()
        .unwrap_or_default();
    Reply {
        status: status_line,
        content_type,
        body: std::fs::read(out).unwrap_or_default(),
    }
}

/// The JSON lines of a `GET /api/audit` reply, which must be 200.
pub(crate) fn audit_records(reply: &Reply) -> Vec<serde_json::Value> {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    String::from_utf8_lossy(&reply.body)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("an audit JSON line"))
        .collect()
}

/// The audit records of `action` of a standalone server (every caller is its operator).
pub(crate) fn audit(server: &Server, action: &str) -> Vec<serde_json::Value> {
    audit_records(&curl(
        &[&format!("http://{}/api/audit?action={action}", server.addr)],
        None,
    ))
}

/// `kuvasto serve` with `args` on a fresh data directory, expected to refuse to start: its
/// stderr.
pub(crate) fn serve_refused(args: &[&std::ffi::OsStr]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_kuvasto"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--dimse-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .output()
        .expect("run kuvasto serve");
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

trait LastStatus {
    fn last_status(self) -> u16;
}

impl<'a, I: Iterator<Item = &'a str>> LastStatus for I {
    fn last_status(self) -> u16 {
        self.filter(|l| l.starts_with("HTTP/"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .last()
            .unwrap_or(0)
    }
}

pub(crate) fn stow(server: &Server, path: &str, parts: &[&[u8]]) -> Reply {
    stow_with(server, path, parts, &[])
}

/// [`stow`] with extra curl arguments (e.g. `--limit-rate 4M`, a slow client).
pub(crate) fn stow_with(server: &Server, path: &str, parts: &[&[u8]], extra: &[&str]) -> Reply {
    let body = multipart(parts, "KUVASTO-TEST-BOUNDARY");
    let url = server.url(path);
    let mut args = vec![
        "-X",
        "POST",
        "-H",
        "Content-Type: multipart/related; type=\"application/dicom\"; boundary=KUVASTO-TEST-BOUNDARY",
        "-H",
        "Accept: application/dicom+json",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args, Some(&body))
}

/// The parts of a multipart response.
pub(crate) fn parts_of(reply: &Reply) -> Vec<Vec<u8>> {
    let boundary = reply
        .content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .expect("multipart response has a boundary")
        .trim_matches('"')
        .to_string();
    let delimiter = format!("--{boundary}");
    let body = &reply.body;
    let mut out = Vec::new();
    let mut at = 0;
    let find = |from: usize, needle: &[u8]| {
        body[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    while let Some(start) = find(at, delimiter.as_bytes()) {
        let after = start + delimiter.len();
        if body[after..].starts_with(b"--") {
            break;
        }
        let head_end = find(after, b"\r\n\r\n").expect("part headers end") + 4;
        let next = find(head_end, format!("\r\n{delimiter}").as_bytes()).expect("next delimiter");
        out.push(body[head_end..next].to_vec());
        at = next + 2;
    }
    out
}

fn failure_reasons(reply: &Reply) -> Vec<u64> {
    let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON response");
    json["00081198"]["Value"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["00081197"]["Value"][0].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// The SOP Instance UIDs a QIDO-RS search over all instances lists.
pub(crate) fn listed_sops(server: &Server) -> Vec<String> {
    let all = curl(&[&server.url("/instances")], None);
    assert_eq!(all.status, 200);
    let all: serde_json::Value = serde_json::from_slice(&all.body).expect("JSON search result");
    all.as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|i| i["00080018"]["Value"][0].as_str().map(String::from))
        .collect()
}

/// The (study, series, instance) UIDs of a generated object.
fn instance_path(bytes: &[u8]) -> (String, String, String) {
    let objects = generated_uids();
    objects
        .into_iter()
        .find(|(_, _, sop)| {
            bytes
                .windows(sop.len())
                .take(4096)
                .any(|w| w == sop.as_bytes())
        })
        .expect("a generated object")
}

fn generated_uids() -> Vec<(String, String, String)> {
    let study = "2.25.4711";
    [("1", "1"), ("2", "1"), ("3", "2"), ("4", "3")]
        .iter()
        .map(|(n, s)| {
            (
                study.to_string(),
                format!("{study}.8.{s}"),
                format!("{study}.9.{n}"),
            )
        })
        .collect()
}

#[test]
fn curl_round_trips_generated_objects_and_samples_byte_for_byte() {
    let server = Server::start(&[]);
    let objects = generated();
    let parts: Vec<&[u8]> = objects.iter().map(|(_, b)| b.as_slice()).collect();
    let reply = stow(&server, "/studies", &parts);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(json["00081199"]["Value"].as_array().unwrap().len(), 4);

    for (name, bytes) in &objects {
        let (study, series, sop) = instance_path(bytes);
        let url = server.url(&format!("/studies/{study}/series/{series}/instances/{sop}"));
        let got = curl(&[&url], None);
        assert_eq!(got.status, 200, "{name}");
        assert!(
            got.content_type.starts_with("multipart/related"),
            "{name}: {}",
            got.content_type
        );
        let parts = parts_of(&got);
        assert_eq!(parts.len(), 1, "{name}");
        if parts[0] != *bytes {
            let first = parts[0].iter().zip(bytes.iter()).position(|(a, b)| a != b);
            panic!(
                "{name}: retrieved bytes differ from stored bytes: {} vs {} bytes, first difference at {first:?}",
                parts[0].len(),
                bytes.len()
            );
        }

        let md = curl(&[&format!("{url}/metadata")], None);
        assert_eq!(md.status, 200, "{name}");
        let md: serde_json::Value = serde_json::from_slice(&md.body).expect("metadata is JSON");
        assert_eq!(md[0]["00080018"]["Value"][0], sop.as_str(), "{name}");
    }

    // The ECG's waveform sequence is in its metadata, items and all.
    let (_, ecg) = &objects[2];
    let (study, series, sop) = instance_path(ecg);
    let url = server.url(&format!("/studies/{study}/series/{series}/instances/{sop}"));
    let md = curl(&[&format!("{url}/metadata")], None);
    let md: serde_json::Value = serde_json::from_slice(&md.body).unwrap();
    assert_eq!(md[0]["54000100"]["vr"], "SQ");
    assert_eq!(
        md[0]["54000100"]["Value"][0]["003A0005"]["Value"][0], 12,
        "{md}"
    );

    // Frames of the 50 MB XA: one range read each, equal to the pixel bytes.
    let (_, xa) = &objects[1];
    assert!(xa.len() >= 50 << 20);
    let (study, series, sop) = instance_path(xa);
    let url = server.url(&format!("/studies/{study}/series/{series}/instances/{sop}"));
    let frames = curl(&[&format!("{url}/frames/1,7,50")], None);
    assert_eq!(frames.status, 200);
    let frame_len = 1024 * 1024;
    let pixel_start = xa.len() - 50 * frame_len;
    for (got, n) in parts_of(&frames).iter().zip([1usize, 7, 50]) {
        let at = pixel_start + (n - 1) * frame_len;
        assert!(got[..] == xa[at..at + frame_len], "frame {n} differs");
    }
    let missing = curl(&[&format!("{url}/frames/51")], None);
    assert_eq!(missing.status, 404);
    // The PDF: its document is bulk data, and the metadata points at it.
    let (_, pdf) = &objects[3];
    let (study, series, sop) = instance_path(pdf);
    let url = server.url(&format!("/studies/{study}/series/{series}/instances/{sop}"));
    let md = curl(&[&format!("{url}/metadata")], None);
    let md: serde_json::Value = serde_json::from_slice(&md.body).unwrap();
    assert_eq!(
        md[0]["0040A043"]["Value"][0]["00080100"]["Value"][0],
        "18748-4"
    );
    let uri = md[0]["00420011"]["BulkDataURI"]
        .as_str()
        .expect("bulk data URI")
        .to_string();
    let document = curl(&[&uri], None);
    assert_eq!(document.status, 200);
    assert!(parts_of(&document)[0].starts_with(b"%PDF-1.4"));

    // pydicom's real files, each on its own: stored ones come back byte for byte; refused
    // ones get a DICOM failure reason. pydicom ships variants of one instance (same SOP
    // Instance UID, other encodings), so this server replaces duplicates.
    drop(server);
    let server = Server::start(&["--duplicates", "replace"]);
    let mut stored = 0;
    let mut refused = 0;
    for path in pydicom_samples() {
        let bytes = std::fs::read(&path).unwrap();
        let reply = stow(&server, "/studies", &[&bytes]);
        match reply.status {
            200 => {
                stored += 1;
                let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
                let url = json["00081199"]["Value"][0]["00081190"]["Value"][0]
                    .as_str()
                    .unwrap()
                    .to_string();
                let got = curl(&[&url], None);
                assert_eq!(got.status, 200, "{}", path.display());
                assert!(
                    parts_of(&got)[0] == bytes,
                    "{}: bytes differ",
                    path.display()
                );
            }
            409 => {
                refused += 1;
                let reasons = failure_reasons(&reply);
                assert!(!reasons.is_empty(), "{}", path.display());
                // Cannot understand, or file meta and data set disagree.
                assert!(
                    reasons.iter().all(|r| [0xC000, 0xA900].contains(r)),
                    "{}: {reasons:04X?}",
                    path.display()
                );
                eprintln!("refused {}: {reasons:04X?}", path.display());
            }
            other => panic!(
                "{}: unexpected status {other}: {}",
                path.display(),
                String::from_utf8_lossy(&reply.body)
            ),
        }
    }
    eprintln!("pydicom samples over curl: {stored} stored byte-exact, {refused} refused");
    if !pydicom_samples().is_empty() {
        assert!(stored >= 50, "only {stored} samples stored");
    }
}

#[test]
fn dicomweb_client_stores_searches_and_retrieves() {
    let Some(python) = python() else {
        eprintln!("skipped: no .venv with dicomweb-client (scripts/test.sh installs it)");
        return;
    };
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, bytes) in generated() {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        files.push(path);
    }
    files.extend(pydicom_samples());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/dicomweb_suite.py");
    let out = Command::new(python)
        .arg(script)
        .arg("--url")
        .arg(server.url(""))
        .args(&files)
        .output()
        .expect("run the dicomweb-client suite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dicomweb-client suite failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("summary");
    eprintln!("dicomweb-client: {summary}");
    let classes: Vec<&str> = summary["sop_classes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    for class in [CT, XA, ECG, PDF] {
        assert!(classes.contains(&class), "{class} not stored: {summary}");
    }
    assert!(summary["frames_checked"].as_u64().unwrap() >= 2);
    assert!(summary["native_frames_compared"].as_u64().unwrap() >= 2);
}

/// Sends a raw HTTP request (head and the first body bytes), then `rest` chunks of
/// `chunk` bytes, and returns the status line's code (0 if the server closed first).
fn raw_request(
    addr: &str,
    head: &str,
    body: &[u8],
    rest: usize,
    chunk: &[u8],
    half_close: bool,
) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut sent = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    for _ in 0..rest {
        if sent.is_err() {
            break;
        }
        sent = stream.write_all(chunk);
    }
    if half_close {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.lines().last_status()
}

#[test]
fn bad_input_gets_the_standard_errors_and_harms_nothing_stored() {
    let server = Server::start(&[]);
    let objects = generated();
    let ct = &objects[0].1;
    let good = stow(&server, "/studies", &[ct]);
    assert_eq!(good.status, 200);
    let (study, series, sop) = instance_path(ct);
    let ct_url = server.url(&format!("/studies/{study}/series/{series}/instances/{sop}"));
    let stow_with = |content_type: &str, body: &[u8]| {
        curl(
            &[
                "-X",
                "POST",
                "-H",
                &format!("Content-Type: {content_type}"),
                &server.url("/studies"),
            ],
            Some(body),
        )
    };
    let dicom_type = "multipart/related; type=\"application/dicom\"; boundary=B0UNDARY";
    let ecg = &objects[2].1;

    // Wrong content types: 415.
    assert_eq!(stow_with("application/json", b"{}").status, 415);
    assert_eq!(
        stow_with(
            "multipart/related; type=\"application/dicom+xml\"; boundary=B0UNDARY",
            b""
        )
        .status,
        415
    );
    // No boundary parameter; a body without the boundary: 400.
    assert_eq!(
        stow_with("multipart/related; type=\"application/dicom\"", ecg).status,
        400
    );
    let reply = stow_with(dicom_type, ecg);
    assert_eq!(
        reply.status,
        400,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // A truncated part (the body stops inside the instance, no closing boundary): 400,
    // nothing stored.
    let mut truncated = b"--B0UNDARY\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
    truncated.extend_from_slice(&ecg[..ecg.len() / 2]);
    let reply = stow_with(dicom_type, &truncated);
    assert_eq!(reply.status, 400);
    assert!(String::from_utf8_lossy(&reply.body).contains("incomplete"));
    // A part that is not DICOM, and a part of another type: 409 with C000.
    let reply = stow(&server, "/studies", &[b"hello, this is not DICOM"]);
    assert_eq!(reply.status, 409);
    assert_eq!(failure_reasons(&reply), vec![0xC000]);
    let text_part = b"--B0UNDARY\r\nContent-Type: text/plain\r\n\r\nhello\r\n--B0UNDARY--\r\n";
    let reply = stow_with(dicom_type, text_part);
    assert_eq!(reply.status, 409);
    // An unknown SOP class: 0122. A study other than the one named: A900.
    let unknown = image("1.2.3.4.5.6", "2.25.99.1", "2.25.99", 8, 8, 1);
    let reply = stow(&server, "/studies", &[&unknown]);
    assert_eq!((reply.status, failure_reasons(&reply)), (409, vec![0x0122]));
    let other_study = image(CT, "2.25.98.1", "2.25.98", 8, 8, 1);
    let reply = stow(&server, "/studies/2.25.97", &[&other_study]);
    assert_eq!((reply.status, failure_reasons(&reply)), (409, vec![0xA900]));
    // The same SOP Instance UID with other bytes: 0111; the same bytes again: 200.
    let mut changed = ct.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0xFF;
    let reply = stow(&server, "/studies", &[&changed]);
    assert_eq!((reply.status, failure_reasons(&reply)), (409, vec![0x0111]));
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        json["00081198"]["Value"][0]["00081155"]["Value"][0],
        sop.as_str()
    );
    assert_eq!(stow(&server, "/studies", &[ct]).status, 200);
    // One good and one bad part: 202, the good one stored.
    let reply = stow(&server, "/studies", &[ecg, b"junk"]);
    assert_eq!(reply.status, 202);
    // Not acceptable: an XML response, a transcoding request.
    let reply = curl(
        &[
            "-H",
            "Accept: application/dicom+xml",
            &format!("{ct_url}/metadata"),
        ],
        None,
    );
    assert_eq!(reply.status, 406);
    let reply = curl(
        &[
            "-H",
            "Accept: multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50",
            &ct_url,
        ],
        None,
    );
    assert_eq!(reply.status, 406);

    // A part declaring 10 GB on a short stream: the body ends early; the server answers
    // 400 (or closes), and stays up.
    let boundary = "B0UNDARY";
    let mut start = format!(
        "--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: 10737418240\r\n\r\n"
    )
    .into_bytes();
    let huge = image(CT, "2.25.96.1", "2.25.96", 8, 8, 1);
    start.extend_from_slice(&huge[..huge.len() - 64]);
    let head = format!(
        "POST /dicom-web/studies HTTP/1.1\r\nHost: {}\r\nContent-Type: {dicom_type}\r\nContent-Length: 10737418240\r\n\r\n",
        server.addr
    );
    let status = raw_request(&server.addr, &head, &start, 64, &[0u8; 65536], true);
    assert!(status == 400 || status == 0, "status {status}");

    // Nothing stored before was touched; only the valid instances are there.
    let got = curl(&[&ct_url], None);
    assert_eq!(got.status, 200);
    assert!(parts_of(&got)[0] == *ct);
    let sops = listed_sops(&server);
    assert_eq!(sops.len(), 2, "{sops:?}");
    assert!(sops.contains(&sop) && sops.contains(&"2.25.4711.9.3".to_string()));
}

/// The head of a generated CT with 128 MiB of pixel data (8192 × 16384 bytes), and how
/// many 1 MiB pieces of pixel data follow it.
fn streamed_ct(sop: &str) -> (Vec<u8>, usize) {
    (image_head(CT, sop, "2.25.5000", 8192, 16384, 1), 128)
}

#[test]
fn memory_stays_bounded_while_16_clients_upload_large_instances() {
    let server = Server::start(&[]);
    let piece_bytes = 1 << 20;
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let (instance_head, pieces) = streamed_ct(&format!("2.25.5000.{i}"));
                let boundary = "B0UNDARY";
                let mut start = format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n")
                    .into_bytes();
                start.extend_from_slice(&instance_head);
                let end = format!("\r\n--{boundary}--\r\n");
                let total = start.len() + pieces * piece_bytes + end.len();
                let head = format!(
                    "POST /dicom-web/studies HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary={boundary}\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
                );
                let piece: Vec<u8> = (0..piece_bytes).map(|b| (b % 253) as u8).collect();
                let mut stream = std::net::TcpStream::connect(&addr).unwrap();
                use std::io::{Read, Write};
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(&start).unwrap();
                for _ in 0..pieces {
                    stream.write_all(&piece).unwrap();
                }
                stream.write_all(end.as_bytes()).unwrap();
                let mut response = Vec::new();
                stream.read_to_end(&mut response).unwrap();
                String::from_utf8_lossy(&response).lines().last_status()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!(
        "server peak RSS after 16 concurrent 128 MiB uploads: {} MiB",
        peak_kib / 1024
    );
    // 16 uploads × (one 2 MiB put buffer + 16 queued network chunks) plus the writer's
    // batches: far below one instance's size.
    assert!(peak_kib < 400 * 1024, "peak RSS {peak_kib} KiB");
    assert_eq!(listed_sops(&server).len(), 16);
}

#[test]
fn shutdown_abandons_an_upload_in_flight_and_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kuvasto.toml");
    std::fs::write(&config, "[http]\nshutdown_grace_seconds = 1\n").unwrap();
    let server = Server::start_in(dir, &["--config", config.to_str().unwrap()]);
    let objects = generated();
    let ct = &objects[0].1;
    assert_eq!(stow(&server, "/studies", &[ct]).status, 200);
    // Half of the XA, then silence.
    let xa = &objects[1].1;
    let addr = server.addr.clone();
    let boundary = "B0UNDARY";
    let mut start = format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
    start.extend_from_slice(&xa[..xa.len() / 2]);
    let head = format!(
        "POST /dicom-web/studies HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        xa.len() + 200
    );
    let uploader = std::thread::spawn(move || {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&start).unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    std::thread::sleep(Duration::from_millis(500));
    let (status, dir) = server.stop();
    assert!(status.success(), "exit {status}");
    uploader.join().unwrap();
    // Reopen: the acknowledged CT is there, the half XA is not.
    let server = Server::start_in(dir, &[]);
    let sops = listed_sops(&server);
    assert_eq!(sops, vec!["2.25.4711.9.1"]);
}

fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".kvs"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn deleted_instances_are_gone_and_compaction_reclaims_their_space() {
    let server = Server::start(&["--segment-size-mib", "16"]);
    let study = "2.25.6000";
    let instances: Vec<Vec<u8>> = (0..40)
        .map(|i| image(CT, &format!("2.25.6000.9.{i}"), study, 512, 512, 2))
        .collect();
    for batch in instances.chunks(10) {
        let parts: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        assert_eq!(stow(&server, "/studies", &parts).status, 200);
    }
    let series = format!("{study}.8.1");
    for i in 0..30 {
        let url = server.url(&format!(
            "/studies/{study}/series/{series}/instances/2.25.6000.9.{i}"
        ));
        let reply = curl(&["-X", "DELETE", &url], None);
        assert_eq!(reply.status, 204, "delete {i}");
        assert_eq!(curl(&[&url], None).status, 404, "deleted {i} is gone");
    }
    let (status, dir) = server.stop();
    assert!(status.success());
    let data = dir.path().join("data");
    let before = segment_bytes(&data);
    let out = Command::new(env!("CARGO_BIN_EXE_kuvasto"))
        .args([
            "compact",
            "--profile",
            "standalone",
            "--segment-size-mib",
            "16",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("run kuvasto compact");
    assert!(out.status.success(), "{out:?}");
    let after = segment_bytes(&data);
    assert!(
        after < before,
        "compaction reclaimed nothing: {before} -> {after} bytes; {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The survivors are intact and the catalog, rebuilt over the new segments, counts them.
    let server = Server::start_in(dir, &["--segment-size-mib", "16"]);
    let found = curl(
        &[&server.url(&format!("/studies?StudyInstanceUID={study}"))],
        None,
    );
    let found: serde_json::Value = serde_json::from_slice(&found.body).unwrap();
    assert_eq!(found[0]["00201208"]["Value"][0], 10, "{found}");
    for (i, bytes) in instances.iter().enumerate().skip(30) {
        let url = server.url(&format!(
            "/studies/{study}/series/{series}/instances/2.25.6000.9.{i}"
        ));
        let got = curl(&[&url], None);
        assert_eq!(got.status, 200);
        assert!(parts_of(&got)[0] == *bytes, "instance {i} changed");
    }
}
