//! DIMSE against a real `kuvasto serve`, driven by dcmtk (peers nobody here wrote): C-ECHO and
//! the calling AE title check; `storescu` sending directories of pydicom's samples and
//! generated CT / XA / ECG / PDF / intra-oral / ophthalmic objects; `findscu` at every level of
//! both information models; `movescu` to a `storescp` the test starts and `getscu`, with the
//! retrieved data sets compared byte for byte with what the archive stored. Then bad peers:
//! garbage, malformed PDUs, an association stalling mid-instance, a data set lying about a
//! length — the server answers each in protocol terms and nothing stored is touched.

use crate::dicomweb::{curl, generated, image, listed_sops, pydicom_samples, Server};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use kuvasto_dimse::command::{field, Command as DimseCommand, DATA_SET_PRESENT};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INTRA_ORAL: &str = "1.2.840.10008.5.1.4.1.1.1.3";
const OPHTHALMIC_8BIT: &str = "1.2.840.10008.5.1.4.1.1.77.1.5.1";

/// dcmtk's echoscu, if installed (`scripts/test.sh` installs Debian's dcmtk).
fn echoscu() -> Option<&'static str> {
    let path = "/usr/bin/echoscu";
    let found = std::path::Path::new(path).exists();
    if !found && std::env::var_os("KUVASTO_REQUIRE_SAMPLES").is_some() {
        panic!("KUVASTO_REQUIRE_SAMPLES is set but dcmtk's echoscu is not installed");
    }
    found.then_some(path)
}

fn dimse_address(server: &Server) -> (String, String) {
    let addr =
        std::fs::read_to_string(server.dir.path().join("dimse-addr")).expect("DIMSE address");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    (host.to_string(), port.to_string())
}

fn echo(echoscu: &str, server: &Server, calling: &str) -> bool {
    let (host, port) = dimse_address(server);
    Command::new(echoscu)
        .args(["-aet", calling, "-aec", "KUVASTO", &host, &port])
        .env("TCP_NODELAY", "1")
        .output()
        .expect("run echoscu")
        .status
        .success()
}

#[test]
fn echoscu_verifies_and_unknown_callers_are_rejected() {
    let Some(echoscu) = echoscu() else {
        eprintln!("skipped: dcmtk's echoscu is not installed");
        return;
    };
    let open = Server::start(&[]);
    assert!(echo(echoscu, &open, "ANYONE"), "C-ECHO with no allow-list");
    let guarded = Server::start(&["--dimse-calling-ae-titles", "MODALITY1,PACS2"]);
    assert!(echo(echoscu, &guarded, "MODALITY1"), "a listed caller");
    assert!(
        !echo(echoscu, &guarded, "STRANGER"),
        "an unlisted caller is rejected"
    );
}

#[test]
fn a_peer_sending_garbage_does_not_disturb_others() {
    let Some(echoscu) = echoscu() else {
        eprintln!("skipped: dcmtk's echoscu is not installed");
        return;
    };
    let server = Server::start(&[]);
    let (host, port) = dimse_address(&server);
    // Not a PDU at all, then a PDU header announcing 4 GB.
    for garbage in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0x01, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 1],
    ] {
        let mut stream = std::net::TcpStream::connect(format!("{host}:{port}")).unwrap();
        let _ = stream.write_all(&garbage);
        drop(stream);
    }
    // A peer that connects and says nothing, held open while another verifies.
    let _silent = std::net::TcpStream::connect(format!("{host}:{port}")).unwrap();
    assert!(echo(echoscu, &server, "AFTER"), "the server still answers");
}

/// (study, series, instance) UIDs of every stored instance, through QIDO-RS.
fn listed_paths(server: &Server) -> Vec<(String, String, String)> {
    let reply = curl(&[&server.url("/instances")], None);
    assert_eq!(reply.status, 200);
    let all: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    let text = |i: &serde_json::Value, tag: &str| {
        i[tag]["Value"][0].as_str().unwrap_or_default().to_string()
    };
    all.as_array()
        .expect("an array")
        .iter()
        .map(|i| {
            (
                text(i, "0020000D"),
                text(i, "0020000E"),
                text(i, "00080018"),
            )
        })
        .collect()
}

/// The free port of a listener bound and dropped at once.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Runs a dcmtk tool; (success, stdout + stderr).
pub(crate) fn dcmtk<S: AsRef<std::ffi::OsStr>>(tool: &str, args: &[S]) -> (bool, String) {
    let out = Command::new(format!("/usr/bin/{tool}"))
        .args(args)
        .env("TCP_NODELAY", "1")
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The data set of a Part 10 file (after the file meta group).
fn data_set(file: &[u8]) -> &[u8] {
    assert_eq!(&file[128..132], b"DICM", "a Part 10 file");
    // (0002,0000) UL comes first: tag 4, VR 2, length 2, value 4.
    let group_len = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
    &file[144 + group_len..]
}

/// The stored bytes of an instance, through WADO-RS.
fn stored(server: &Server, study: &str, series: &str, sop: &str) -> Vec<u8> {
    let reply = curl(
        &[
            "-H",
            "Accept: application/dicom",
            &server.url(&format!("/studies/{study}/series/{series}/instances/{sop}")),
        ],
        None,
    );
    assert_eq!(reply.status, 200, "WADO-RS of {sop}");
    reply.body
}

/// Values of `tag` (as dcmtk prints `(gggg,eeee) VR [value]`) in a tool's output.
fn values(output: &str, tag: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.split_once(tag))
        .filter_map(|(_, rest)| {
            let start = rest.find('[')?;
            let end = rest[start..].find(']')?;
            Some(
                rest[start + 1..start + end]
                    .trim_end_matches(['\0', ' '])
                    .to_string(),
            )
        })
        .collect()
}

fn generated_for_dimse() -> Vec<(String, Vec<u8>)> {
    let mut objects = generated();
    objects.push((
        "io.dcm".into(),
        image(INTRA_ORAL, "2.25.4711.9.5", "2.25.4711", 256, 320, 1),
    ));
    objects.push((
        "op.dcm".into(),
        image(OPHTHALMIC_8BIT, "2.25.4711.9.6", "2.25.4711", 300, 400, 1),
    ));
    objects
}

/// A dcmtk `storescp` receiving into `dir` (every transfer syntax accepted).
struct StoreScp(Child);

impl StoreScp {
    fn start(port: u16, dir: &Path) -> StoreScp {
        let child = Command::new("/usr/bin/storescp")
            .args(["-aet", "STORESCP", "+xa", "+B", "-od"])
            .arg(dir)
            .arg(port.to_string())
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start storescp");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "storescp did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        StoreScp(child)
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every file under `dir` (dcmtk names them by class and UID).
fn received(dir: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|f| std::fs::read(f.path()).expect("read file"))
        .collect();
    out.sort();
    out
}

/// The SOP Instance UID in a file's meta group.
fn sop_of(file: &[u8]) -> String {
    meta_text(file, [2, 0, 3, 0])
}

/// A text element of the file meta group, by its tag bytes.
fn meta_text(file: &[u8], tag: [u8; 4]) -> String {
    let dump = file[132..]
        .windows(4)
        .position(|w| w == tag)
        .expect("the file meta element");
    let at = 132 + dump;
    let len = u16::from_le_bytes([file[at + 6], file[at + 7]]) as usize;
    String::from_utf8_lossy(&file[at + 8..at + 8 + len])
        .trim_end_matches(['\0', ' '])
        .to_string()
}

#[test]
fn dcmtk_stores_finds_moves_and_gets_with_bytes_unchanged() {
    let Some(_) = echoscu() else {
        eprintln!("skipped: dcmtk is not installed");
        return;
    };
    let scp_port = free_port();
    let peer = format!("STORESCP=127.0.0.1:{scp_port}");
    let server = Server::start(&["--dimse-peers", &peer]);
    let (host, port) = dimse_address(&server);

    // storescu +sd: a directory of generated objects, then one of pydicom's samples (many
    // transfer syntaxes; unreadable ones are refused and storescu goes on).
    let work = tempfile::tempdir().unwrap();
    let generated_dir = work.path().join("generated");
    std::fs::create_dir(&generated_dir).unwrap();
    let objects = generated_for_dimse();
    for (name, bytes) in &objects {
        std::fs::write(generated_dir.join(name), bytes).unwrap();
    }
    let (ok, out) = dcmtk(
        "storescu",
        &[
            "-aec",
            "KUVASTO",
            "+sd",
            "-nh",
            &host,
            &port,
            generated_dir.to_str().unwrap(),
        ],
    );
    assert!(ok, "storescu of generated objects: {out}");
    let samples = pydicom_samples();
    if !samples.is_empty() {
        let samples_dir = work.path().join("samples");
        std::fs::create_dir(&samples_dir).unwrap();
        for sample in &samples {
            std::fs::copy(sample, samples_dir.join(sample.file_name().unwrap())).unwrap();
        }
        // storescu sends a file in its own transfer syntax only when that is proposed (and
        // converts otherwise, preferring explicit VR among the uncompressed ones): one run per
        // family of syntaxes, each context separate, every file's SOP class proposed (-R).
        for proposal in [
            "-x=", "-xi", "-xb", "-xs", "-xy", "-xx", "-xv", "-xw", "-xr", "-xt", "-xu",
        ] {
            let _ = dcmtk(
                "storescu",
                &[
                    "-aec",
                    "KUVASTO",
                    "+sd",
                    "-nh",
                    "-R",
                    proposal,
                    &host,
                    &port,
                    samples_dir.to_str().unwrap(),
                ],
            );
        }
    }
    let listed: BTreeSet<String> = listed_sops(&server).into_iter().collect();
    for n in 1..=6 {
        assert!(
            listed.contains(&format!("2.25.4711.9.{n}")),
            "generated object {n} stored"
        );
    }
    if !samples.is_empty() {
        // Many samples share a SOP Instance UID across encodings (the duplicates get 0111);
        // 37 distinct instances is what storescu can send of them.
        assert!(
            listed.len() >= 6 + 35,
            "at least 35 distinct samples stored, got {}",
            listed.len() - 6
        );
        let mut syntaxes = BTreeSet::new();
        for (study, series, sop) in listed_paths(&server) {
            let file = stored(&server, &study, &series, &sop);
            syntaxes.insert(meta_text(&file, [2, 0, 0x10, 0]));
        }
        assert!(
            syntaxes.len() >= 7,
            "stored as received in many transfer syntaxes: {syntaxes:?}"
        );
    }

    // findscu: every level of both models.
    let find = |model: &str, keys: &[&str]| {
        let mut args = vec![model, "-aec", "KUVASTO"];
        for key in keys {
            args.push("-k");
            args.push(key);
        }
        args.push(&host);
        args.push(&port);
        let (ok, out) = dcmtk("findscu", &args);
        assert!(ok, "findscu {keys:?}: {out}");
        out
    };
    let out = find(
        "-P",
        &[
            "QueryRetrieveLevel=PATIENT",
            "PatientID=FI-010203-123A",
            "PatientName",
            "NumberOfPatientRelatedInstances",
        ],
    );
    assert_eq!(values(&out, "(0010,0010)"), vec!["Virtanen^Aino"]);
    assert_eq!(values(&out, "(0020,1204)"), vec!["6"]);
    let out = find(
        "-P",
        &[
            "QueryRetrieveLevel=STUDY",
            "PatientID=FI-010203-123A",
            "StudyInstanceUID",
            "ModalitiesInStudy",
        ],
    );
    assert_eq!(values(&out, "(0020,000d)"), vec!["2.25.4711"]);
    let out = find(
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID=2.25.4711",
            "StudyDate=20260101-20261231",
            "NumberOfStudyRelatedInstances",
            "NumberOfStudyRelatedSeries",
        ],
    );
    assert_eq!(values(&out, "(0020,1208)"), vec!["6"]);
    let out = find(
        "-S",
        &[
            "QueryRetrieveLevel=SERIES",
            "StudyInstanceUID=2.25.4711",
            "SeriesInstanceUID",
            "NumberOfSeriesRelatedInstances",
        ],
    );
    let series: BTreeSet<String> = values(&out, "(0020,000e)").into_iter().collect();
    assert_eq!(
        series.len(),
        3,
        "CT/XA/IO/OP share a series; ECG and PDF have their own: {out}"
    );
    let out = find(
        "-S",
        &[
            "QueryRetrieveLevel=IMAGE",
            "StudyInstanceUID=2.25.4711",
            "SeriesInstanceUID=2.25.4711.8.1",
            "SOPInstanceUID",
            "SOPClassUID",
        ],
    );
    let images: BTreeSet<String> = values(&out, "(0008,0018)").into_iter().collect();
    assert_eq!(images.len(), 4, "{out}");
    let out = find(
        "-P",
        &[
            "QueryRetrieveLevel=IMAGE",
            "PatientID=FI-010203-123A",
            "StudyInstanceUID=2.25.4711",
            "SeriesInstanceUID=2.25.4711.8.2",
            "SOPInstanceUID",
        ],
    );
    assert_eq!(values(&out, "(0008,0018)"), vec!["2.25.4711.9.3"]);
    let out = find(
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "PatientName=virtanen*",
            "StudyInstanceUID",
        ],
    );
    assert_eq!(
        values(&out, "(0020,000d)"),
        vec!["2.25.4711"],
        "PN matching is case-insensitive"
    );
    let out = find(
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "PatientID=NOBODY",
            "StudyInstanceUID",
        ],
    );
    assert!(values(&out, "(0020,000d)").is_empty());

    // movescu to a storescp the test runs, and getscu: the data sets are the stored ones.
    let moved = work.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    let scp = StoreScp::start(scp_port, &moved);
    let (ok, out) = dcmtk(
        "movescu",
        &[
            "-S",
            "-aec",
            "KUVASTO",
            "-aem",
            "STORESCP",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID=2.25.4711",
            &host,
            &port,
        ],
    );
    assert!(ok, "movescu: {out}");
    drop(scp);
    let got = work.path().join("got");
    std::fs::create_dir(&got).unwrap();
    let (ok, out) = dcmtk(
        "getscu",
        &[
            "+B",
            "-S",
            "-aec",
            "KUVASTO",
            "-od",
            got.to_str().unwrap(),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID=2.25.4711",
            &host,
            &port,
        ],
    );
    assert!(ok, "getscu: {out}");
    for dir in [&moved, &got] {
        let files = received(dir);
        assert_eq!(files.len(), 6, "all six instances in {}", dir.display());
        for file in &files {
            let sop = sop_of(file);
            let n: usize = sop.rsplit('.').next().unwrap().parse().unwrap();
            let series = match n {
                3 => "2.25.4711.8.2",
                4 => "2.25.4711.8.3",
                _ => "2.25.4711.8.1",
            };
            let archived = stored(&server, "2.25.4711", series, &sop);
            assert!(
                data_set(file) == data_set(&archived),
                "{sop} retrieved as stored"
            );
            let original = &objects[n - 1].1;
            // storescu rewrites undefined-length sequences with explicit lengths (the PDF's
            // concept name), so only the others can be compared with the generated bytes.
            if n != 4 {
                assert!(
                    data_set(file) == data_set(original),
                    "{sop} as the modality sent it"
                );
            }
        }
    }
    // An unknown move destination.
    let (_, out) = dcmtk(
        "movescu",
        &[
            "-S",
            "-aec",
            "KUVASTO",
            "-aem",
            "NOWHERE",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID=2.25.4711",
            &host,
            &port,
        ],
    );
    assert!(out.contains("MoveDestinationUnknown"), "{out}");
    // A unique key with a wild card would move everything: refused.
    let (_, out) = dcmtk(
        "movescu",
        &[
            "-P",
            "-aec",
            "KUVASTO",
            "-aem",
            "STORESCP",
            "-k",
            "QueryRetrieveLevel=PATIENT",
            "-k",
            "PatientID=*",
            &host,
            &port,
        ],
    );
    assert!(out.contains("DataSetDoesNotMatchSOPClass"), "A900: {out}");
}

/// An association from this test, through dicom-ul, with a CT storage context.
fn associate(
    host: &str,
    port: &str,
) -> dicom_ul::association::client::ClientAssociation<std::net::TcpStream> {
    dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("BADPEER")
        .called_ae_title("KUVASTO")
        .with_presentation_context(crate::dicomweb::CT, vec![crate::dicomweb::EXPLICIT_LE])
        .establish(format!("{host}:{port}").as_str())
        .expect("associate")
}

fn store_request(sop: &str) -> Vec<u8> {
    DimseCommand {
        field: field::C_STORE_RQ,
        affected_sop_class_uid: Some(crate::dicomweb::CT.into()),
        affected_sop_instance_uid: Some(sop.into()),
        message_id: Some(1),
        priority: Some(0),
        data_set_type: DATA_SET_PRESENT,
        ..DimseCommand::default()
    }
    .encode()
}

fn pdv(value_type: PDataValueType, data: Vec<u8>, is_last: bool) -> Pdu {
    Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: 1,
            value_type,
            is_last,
            data,
        }],
    }
}

#[test]
fn bad_peers_get_protocol_answers_and_stored_data_is_untouched() {
    let Some(echoscu) = echoscu() else {
        eprintln!("skipped: dcmtk's echoscu is not installed");
        return;
    };
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[dimse]\nidle_timeout_seconds = 2\n").unwrap();
    let server = Server::start(&[
        "--config",
        config.path().to_str().unwrap(),
        "--dimse-calling-ae-titles",
        "BADPEER,GOOD,AFTER",
    ]);
    let (host, port) = dimse_address(&server);
    // One good instance first.
    let good = image(crate::dicomweb::CT, "2.25.99.1", "2.25.99", 64, 64, 1);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("good.dcm"), &good).unwrap();
    let (ok, out) = dcmtk(
        "storescu",
        &[
            "-aet",
            "GOOD",
            "-aec",
            "KUVASTO",
            &host,
            &port,
            work.path().join("good.dcm").to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");

    // 1. A C-STORE whose data set lies about a length: Pixel Data declares more bytes than
    //    come. The answer is a failure status (C000), nothing is stored.
    let lying = image(crate::dicomweb::CT, "2.25.99.2", "2.25.99", 64, 64, 1);
    let lying_data_set = data_set(&lying[..lying.len() - 1000]).to_vec();
    let mut association = associate(&host, &port);
    association
        .send(&pdv(
            PDataValueType::Command,
            store_request("2.25.99.2"),
            true,
        ))
        .unwrap();
    association
        .send(&pdv(PDataValueType::Data, lying_data_set, true))
        .unwrap();
    let Pdu::PData { data } = association.receive().expect("a response") else {
        panic!("expected a C-STORE-RSP");
    };
    let response = DimseCommand::decode(&data[0].data).expect("a command");
    assert_eq!(response.field, field::C_STORE_RSP);
    assert_eq!(response.status, Some(0xC000), "{response:?}");
    assert!(response.error_comment.is_some());
    // The association is still usable: a good instance on it succeeds.
    let fine = image(crate::dicomweb::CT, "2.25.99.3", "2.25.99", 64, 64, 1);
    association
        .send(&pdv(
            PDataValueType::Command,
            store_request("2.25.99.3"),
            true,
        ))
        .unwrap();
    association
        .send(&pdv(PDataValueType::Data, data_set(&fine).to_vec(), true))
        .unwrap();
    let Pdu::PData { data } = association.receive().expect("a response") else {
        panic!("expected a C-STORE-RSP");
    };
    assert_eq!(DimseCommand::decode(&data[0].data).unwrap().status, Some(0));
    association.release().unwrap();

    // 2. An association stalling mid-instance: half the data set, then silence. Others go on
    //    meanwhile; when the peer goes away the half instance is dropped.
    let stalled = image(crate::dicomweb::CT, "2.25.99.4", "2.25.99", 256, 256, 1);
    let half = data_set(&stalled)[..60_000].to_vec();
    let mut association = associate(&host, &port);
    association
        .send(&pdv(
            PDataValueType::Command,
            store_request("2.25.99.4"),
            true,
        ))
        .unwrap();
    association
        .send(&pdv(PDataValueType::Data, half, false))
        .unwrap();
    assert!(
        echo(echoscu, &server, "AFTER"),
        "others are served during a stall"
    );
    // After the idle timeout the server gives up on it: A-ABORT, then the connection closes.
    let socket = association.inner_stream();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = socket.read_to_end(&mut rest);
    assert_eq!(rest.first(), Some(&0x07), "A-ABORT after the idle timeout");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "closed by the idle timeout"
    );
    drop(association);

    // 3. Wrong PDU lengths: a P-DATA-TF whose PDV item claims more than the PDU holds gets
    //    an A-ABORT.
    let mut association = associate(&host, &port);
    let socket = association.inner_stream();
    let mut pdu = vec![0x04, 0, 0, 0, 0, 10];
    pdu.extend_from_slice(&1000u32.to_be_bytes()); // item length beyond the PDU
    pdu.extend_from_slice(&[1, 0x03, 0, 0, 0, 0]);
    socket.write_all(&pdu).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut first = [0u8; 1];
    socket
        .read_exact(&mut first)
        .expect("an answer to a malformed PDU");
    assert_eq!(first[0], 0x07, "A-ABORT");
    // 4. A PDU type nobody defined.
    let mut association = associate(&host, &port);
    let socket = association.inner_stream();
    socket.write_all(&[0x55, 0, 0, 0, 0, 2, 0, 0]).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut first = [0u8; 1];
    socket
        .read_exact(&mut first)
        .expect("an answer to an unknown PDU");
    assert_eq!(first[0], 0x07, "A-ABORT");

    assert!(echo(echoscu, &server, "AFTER"), "the server still answers");
    let listed: BTreeSet<String> = listed_sops(&server).into_iter().collect();
    assert_eq!(
        listed,
        ["2.25.99.1", "2.25.99.3"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "only the good instances are stored"
    );
    let archived = stored(&server, "2.25.99", "2.25.99.8.1", "2.25.99.1");
    assert!(
        data_set(&archived) == data_set(&good),
        "the first instance is untouched"
    );
}

#[test]
fn associations_over_the_limit_get_a_transient_rejection() {
    let Some(echoscu) = echoscu() else {
        eprintln!("skipped: dcmtk's echoscu is not installed");
        return;
    };
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[dimse]\nassociations_max = 1\n").unwrap();
    let server = Server::start(&["--config", config.path().to_str().unwrap()]);
    let (host, port) = dimse_address(&server);
    let held = associate(&host, &port);
    let (ok, out) = dcmtk("echoscu", &["-aec", "KUVASTO", &host, &port]);
    assert!(!ok, "a second association is refused: {out}");
    assert!(
        out.contains("Local Limit Exceeded") || out.contains("local limit exceeded"),
        "refused as a transient local limit: {out}"
    );
    drop(held);
    // Once the first has gone, the slot is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !echo(echoscu, &server, "AFTER") {
        assert!(Instant::now() < deadline, "the slot was not freed");
        std::thread::sleep(Duration::from_millis(100));
    }
}
