//! TLS and mutual TLS against a real `kuvasto serve` in the national profile, with
//! certificates made here by `rcgen`: a CA; a server certificate for 127.0.0.1 and
//! localhost; client certificates naming the county, the imaging company, the clinic (whose
//! CN no identity lists), the patient data repository and the operator in their subject's
//! organizationIdentifier; and a certificate from a CA the server does not trust.
//!
//! The clients are ones nobody here wrote: dcmtk (`storescu`, `findscu`, `echoscu` with
//! `+tls`), curl, and `tests/python/tls_suite.py` (`requests`, pynetdicom with an
//! `ssl.SSLContext`). A right certificate acts as its organisation (the audit log says so);
//! a missing, untrusted or unmapped certificate, and a certificate used with another
//! organisation's AE title, are refused.

use crate::dicomweb::{curl, image, Reply, Server};
use crate::dimse::dcmtk;
use crate::dimse_python::{python, run_suite};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const COUNTY: &str = "1.2.246.10.1001";
const KUVANTAMO: &str = "1.2.246.10.2002";
const CLINIC: &str = "1.2.246.10.3003";
const ARCHIVE: &str = "1.2.246.10.9000";
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
/// The patient and accession number of `dicomweb::image`'s objects.
const PATIENT: &str = "FI-010203-123A";
const ACCESSION: &str = "ACC-1";
/// `tls.handshake_timeout_seconds` of the test servers.
const HANDSHAKE_TIMEOUT_SECONDS: u64 = 2;
/// The Python suite's whole run may take this long.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Client certificates: file stem, organisation OID, subject CN.
const CLIENTS: &[(&str, &str, &str)] = &[
    ("county", COUNTY, "pacs.county.example"),
    ("kuvantamo", KUVANTAMO, "ris.kuvantamo.example"),
    ("clinic", CLINIC, "other.clinic.example"),
    ("registry", ARCHIVE, "registry.example"),
    ("operator", ARCHIVE, "operator.example"),
];

/// The CA, server and client certificates of one test, as PEM files in a directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let trusted = Authority::new("Kuvasto test CA");
        trusted.write_ca(dir.path(), "ca");
        trusted.sign(
            dir.path(),
            "server",
            &["localhost", "127.0.0.1"],
            "kuvasto.test",
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        for (name, oid, cn) in CLIENTS {
            trusted.sign(
                dir.path(),
                name,
                &[],
                cn,
                Some(oid),
                ExtendedKeyUsagePurpose::ClientAuth,
            );
        }
        // The county's name and OID, from a CA the server does not trust.
        let stranger = Authority::new("Somebody else's CA");
        stranger.write_ca(dir.path(), "untrusted-ca");
        stranger.sign(
            dir.path(),
            "untrusted",
            &[],
            "pacs.county.example",
            Some(COUNTY),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_string_lossy().into_owned()
    }

    /// dcmtk's `+tls KEY CERT +cf CA` for client `name`.
    fn dcmtk_tls(&self, name: &str) -> Vec<String> {
        vec![
            "+tls".into(),
            self.path(&format!("{name}.key")),
            self.path(&format!("{name}.crt")),
            "+cf".into(),
            self.path("ca.crt"),
        ]
    }

    /// curl's options for an HTTPS call as client `name`.
    fn curl_tls(&self, name: &str) -> Vec<String> {
        vec![
            "--cacert".into(),
            self.path("ca.crt"),
            "--cert".into(),
            self.path(&format!("{name}.crt")),
            "--key".into(),
            self.path(&format!("{name}.key")),
        ]
    }
}

/// A certification authority made for the test.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("self-signed CA").pem();
        Authority {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn write_ca(&self, dir: &Path, stem: &str) {
        std::fs::write(dir.join(format!("{stem}.crt")), &self.pem).expect("write CA");
    }

    /// Writes `stem.crt` and `stem.key`: a certificate for `cn` (and `organisation` in the
    /// subject's organizationIdentifier, 2.5.4.97) signed by this authority.
    fn sign(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        cn: &str,
        organisation: Option<&str>,
        usage: ExtendedKeyUsagePurpose,
    ) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<String>>())
                .expect("names");
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(oid) = organisation {
            params
                .distinguished_name
                .push(DnType::CustomDnType(vec![2, 5, 4, 97]), oid);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let certificate = params.signed_by(&key, &self.issuer).expect("sign");
        std::fs::write(dir.join(format!("{stem}.crt")), certificate.pem()).expect("write cert");
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write key");
    }
}

/// The national test configuration: the organisations of `docs/examples/national.toml`,
/// identities answering to client certificates, HTTPS and DICOM over TLS with `mode` client
/// certificates. `dimse_tls` is `dimse.tls = true` or a `tls_listen` beside plain DICOM.
fn config(pki: &Pki, mode: &str, dimse_tls: &str) -> PathBuf {
    let text = format!(
        r#"[archive]
profile = "national"
organisation = "{ARCHIVE}"
documents_first = "quarantine"
validate = false

[http]
tls = true
authentication = "certificate"

[dimse]
{dimse_tls}

[tls]
certificate_file = "{server_crt}"
private_key_file = "{server_key}"
client_ca_file = "{ca}"
client_certificates = "{mode}"
organisation_oid_from = "subject:organizationIdentifier"
handshake_timeout_seconds = {HANDSHAKE_TIMEOUT_SECONDS}

[[organisations]]
oid = "{COUNTY}"
name = "Testimaan hyvinvointialue"
controller_type = "public"

[[organisations]]
oid = "{KUVANTAMO}"
name = "Kuvantamo Oy"
controller_type = "private"

[[organisations]]
oid = "{CLINIC}"
name = "Muu Klinikka Oy"
controller_type = "private"

[[organisations]]
oid = "{ARCHIVE}"
name = "Kansallinen kuva-arkisto"
controller_type = "public"

[[identities]]
id = "county-pacs"
organisation = "{COUNTY}"
role = "system"
ae_titles = ["COUNTYPACS"]
certificate_names = ["pacs.county.example"]

# Any certificate of the company is its RIS.
[[identities]]
id = "kuvantamo-ris"
organisation = "{KUVANTAMO}"
role = "system"
ae_titles = ["KUVANTAMO"]
certificate_names = ["*"]

# The clinic's certificate in the test names another CN: no identity.
[[identities]]
id = "clinic-pacs"
organisation = "{CLINIC}"
role = "system"
ae_titles = ["CLINICPACS"]
certificate_names = ["pacs.clinic.example"]

[[identities]]
id = "patient-data-repository"
organisation = "{ARCHIVE}"
role = "registry"
certificate_names = ["registry.example"]

[[identities]]
id = "operator"
organisation = "{ARCHIVE}"
role = "operator"
ae_titles = ["OPERATOR"]
tokens = ["operator-example-token-01"]
certificate_names = ["operator.example"]
"#,
        server_crt = pki.path("server.crt"),
        server_key = pki.path("server.key"),
        ca = pki.path("ca.crt"),
    );
    let path = pki.dir.path().join(format!("kuvasto-{mode}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// dcmtk's tools, if installed (`scripts/test.sh` installs Debian's dcmtk).
fn dcmtk_installed() -> bool {
    let found = ["storescu", "findscu", "echoscu"]
        .iter()
        .all(|t| Path::new(&format!("/usr/bin/{t}")).exists())
        && Command::new("curl").arg("--version").output().is_ok();
    if !found && std::env::var_os("KUVASTO_REQUIRE_SAMPLES").is_some() {
        panic!("KUVASTO_REQUIRE_SAMPLES is set but dcmtk or curl is not installed");
    }
    found
}

/// `host`, `port` of an address file's `host:port`.
fn host_port(address: &str) -> (String, String) {
    let (host, port) = address.trim().rsplit_once(':').expect("host:port");
    (host.to_string(), port.to_string())
}

fn read_address(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(address) = std::fs::read_to_string(path) {
            if !address.is_empty() {
                return address;
            }
        }
        assert!(Instant::now() < deadline, "no address file {path:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `[+tls …] -aet CALLING -aec KUVASTO` then `options`, then host and port, then `files`.
fn association_args(
    tls: Vec<String>,
    calling: &str,
    options: &[&str],
    address: &str,
    files: &[&str],
) -> Vec<String> {
    let (host, port) = host_port(address);
    let mut args = tls;
    args.extend(["-aet", calling, "-aec", "KUVASTO"].map(String::from));
    args.extend(options.iter().map(|s| s.to_string()));
    args.push(host);
    args.push(port);
    args.extend(files.iter().map(|s| s.to_string()));
    args
}

/// A request document for `study` of `PATIENT`, in the county's register, announced by the
/// patient data repository with its certificate.
fn announce(pki: &Pki, http: &str, doc: &str, study: &str) -> Reply {
    let body = serde_json::json!({
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": format!("urn:oid:{doc}")},
        "status": "current",
        "type": {"coding": [{"system": "urn:kuvasto:document-type", "code": "request"}]},
        "subject": {"identifier": {"system": "urn:oid:1.2.246.21", "value": PATIENT}},
        "date": "2026-11-20T09:00:00+02:00",
        "author": [{"identifier": {"value": format!("urn:oid:{COUNTY}")}}],
        "custodian": {"identifier": {"value": format!("urn:oid:{COUNTY}")}},
        "context": {"related": [
            {"identifier": {"system": "urn:kuvasto:accession-number", "value": ACCESSION}},
            {"identifier": {"system": "urn:dicom:uid", "value": format!("urn:oid:{study}")}},
        ]},
    });
    let mut args = pki.curl_tls("registry");
    args.extend(
        [
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            &format!("https://{http}/api/documents"),
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args, Some(body.to_string().as_bytes()))
}

/// The audit log's records of `action`, read by the operator with its certificate.
fn audit(pki: &Pki, http: &str, action: &str) -> Vec<serde_json::Value> {
    let mut args = pki.curl_tls("operator");
    args.push(format!("https://{http}/api/audit?action={action}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::dicomweb::audit_records(&curl(&args, None))
}

/// Runs the Python suite's `scenario` against a server; panics unless every check passed.
fn python_scenario(pki: &Pki, scenario: &str, http: &str, dimse: &str, extra: &[String]) {
    let python = python().expect("checked by the caller");
    let mut args: Vec<String> = vec![
        "--scenario".into(),
        scenario.into(),
        "--http".into(),
        http.into(),
        "--dimse".into(),
        dimse.into(),
        "--pki".into(),
        pki.dir.path().to_string_lossy().into_owned(),
    ];
    args.extend_from_slice(extra);
    let stdout = run_suite(&python, "tls_suite.py", &args, SUITE_TIMEOUT);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("summary");
    eprintln!("tls {scenario}: {summary}");
    assert_eq!(summary["failed"].as_u64(), Some(0), "{summary}");
    assert!(summary["passed"].as_u64().unwrap_or(0) >= 10, "{summary}");
}

/// dcmtk, curl and the test virtualenv's pynetdicom (`scripts/test.sh` installs them all).
fn prerequisites() -> bool {
    if !dcmtk_installed() {
        eprintln!("skipped: dcmtk or curl is not installed (scripts/test.sh installs them)");
        return false;
    }
    if python().is_none() {
        eprintln!("skipped: no .venv with pynetdicom (scripts/test.sh installs it)");
        return false;
    }
    true
}

#[test]
fn mutual_tls_maps_client_certificates_to_organisations_over_both_protocols() {
    if !prerequisites() {
        return;
    }
    let pki = Pki::generate();
    let config = config(&pki, "required", "tls = true");
    let server = Server::start(&[
        "--profile",
        "national",
        "--config",
        config.to_str().expect("UTF-8 path"),
    ]);
    let http = server.addr.clone();
    let dimse = read_address(&server.dir.path().join("dimse-addr"));

    // The study's request comes first (documents first), announced over HTTPS by the
    // patient data repository's certificate.
    let study = "2.25.731001";
    let reply = announce(&pki, &http, "1.2.246.10.1001.77.1", study);
    assert_eq!(
        reply.status,
        201,
        "announce: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let files = tempfile::tempdir().expect("tempdir");
    let file = files.path().join("ct.dcm");
    std::fs::write(&file, image(CT, "2.25.731001.1", study, 8, 8, 1)).expect("write CT");
    let file = file.to_string_lossy().into_owned();

    // storescu with the county's certificate and the county's AE title: stored.
    let (ok, out) = dcmtk(
        "storescu",
        &association_args(
            pki.dcmtk_tls("county"),
            "COUNTYPACS",
            &["-v"],
            &dimse,
            &[&file],
        ),
    );
    assert!(
        ok && out.contains("Received Store Response (Success)"),
        "storescu +tls county: {out}"
    );
    // findscu with the same certificate finds it.
    let (ok, out) = dcmtk(
        "findscu",
        &association_args(
            pki.dcmtk_tls("county"),
            "COUNTYPACS",
            &[
                "-S",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                &format!("StudyInstanceUID={study}"),
                "-k",
                "PatientID",
            ],
            &dimse,
            &[],
        ),
    );
    assert!(
        ok && out.contains(study) && out.contains(PATIENT),
        "findscu +tls county: {out}"
    );
    // The audit log names the certificate's organisation and identity for the store.
    let stores = audit(&pki, &http, "store");
    let record = stores
        .iter()
        .find(|r| r["study"] == study)
        .unwrap_or_else(|| panic!("no store record of {study}: {stores:?}"));
    assert_eq!(record["organisation"], COUNTY, "{record}");
    assert_eq!(record["system"], "county-pacs", "{record}");
    assert_eq!(record["protocol"], "dimse", "{record}");
    assert_eq!(record["outcome"], "success", "{record}");

    // Refused: no client certificate; a certificate from an untrusted CA; the county's
    // certificate with the company's AE title; a certificate whose CN no identity lists.
    let anonymous = vec!["+tla".to_string(), "+cf".to_string(), pki.path("ca.crt")];
    let (ok, out) = dcmtk(
        "echoscu",
        &association_args(anonymous, "COUNTYPACS", &[], &dimse, &[]),
    );
    assert!(!ok, "echoscu without a client certificate: {out}");
    let (ok, out) = dcmtk(
        "storescu",
        &association_args(
            pki.dcmtk_tls("untrusted"),
            "COUNTYPACS",
            &["-v"],
            &dimse,
            &[&file],
        ),
    );
    assert!(
        !ok && !out.contains("Received Store Response"),
        "storescu with an untrusted certificate: {out}"
    );
    let (ok, out) = dcmtk(
        "storescu",
        &association_args(
            pki.dcmtk_tls("county"),
            "KUVANTAMO",
            &["-v"],
            &dimse,
            &[&file],
        ),
    );
    assert!(
        !ok && out
            .to_lowercase()
            .contains("calling ae title not recognized"),
        "the county's certificate as the company's AE title: {out}"
    );
    let (ok, out) = dcmtk(
        "echoscu",
        &association_args(pki.dcmtk_tls("clinic"), "CLINICPACS", &[], &dimse, &[]),
    );
    assert!(
        !ok && out
            .to_lowercase()
            .contains("calling ae title not recognized"),
        "a certificate matching no identity: {out}"
    );
    // The company's wildcard identity takes its certificate, with its own AE title.
    let (ok, out) = dcmtk(
        "echoscu",
        &association_args(pki.dcmtk_tls("kuvantamo"), "KUVANTAMO", &[], &dimse, &[]),
    );
    assert!(ok, "echoscu +tls kuvantamo: {out}");
    // dcmtk's other BCP 195 profiles (PS3.15) connect too (the non-downgrading one, dcmtk's
    // default, was used above).
    for profile in ["+px", "+pz"] {
        let mut tls = pki.dcmtk_tls("county");
        tls.push(profile.to_string());
        let (ok, out) = dcmtk(
            "echoscu",
            &association_args(tls, "COUNTYPACS", &[], &dimse, &[]),
        );
        assert!(ok, "echoscu +tls {profile}: {out}");
    }
    // Nothing refused was stored: one store record of this study.
    let stores = audit(&pki, &http, "store");
    assert_eq!(
        stores.iter().filter(|r| r["study"] == study).count(),
        1,
        "{stores:?}"
    );

    python_scenario(&pki, "required", &http, &dimse, &[]);
}

#[test]
fn optional_client_certificates_fall_back_to_ae_titles_and_tls_listens_beside_plain_dicom() {
    if !prerequisites() {
        return;
    }
    let pki = Pki::generate();
    let config = config(&pki, "optional", "tls_listen = \"127.0.0.1:0\"");
    let tls_address_file = pki.dir.path().join("dimse-tls-addr");
    let server = Server::start(&[
        "--profile",
        "national",
        "--config",
        config.to_str().expect("UTF-8 path"),
        "--dimse-tls-address-file",
        tls_address_file.to_str().expect("UTF-8 path"),
    ]);
    let http = server.addr.clone();
    let plain = read_address(&server.dir.path().join("dimse-addr"));
    let tls = read_address(&tls_address_file);
    assert_ne!(plain, tls);

    // Plain DICOM on `listen`: the AE title decides, as without TLS.
    let (ok, out) = dcmtk(
        "echoscu",
        &association_args(vec![], "COUNTYPACS", &[], &plain, &[]),
    );
    assert!(ok, "plain echoscu: {out}");
    let (ok, out) = dcmtk(
        "echoscu",
        &association_args(vec![], "STRANGER", &[], &plain, &[]),
    );
    assert!(!ok, "plain echoscu, unknown AE title: {out}");
    // TLS without a client certificate: the AE title decides.
    let anonymous = || vec!["+tla".to_string(), "+cf".to_string(), pki.path("ca.crt")];
    let (ok, out) = dcmtk(
        "echoscu",
        &association_args(anonymous(), "COUNTYPACS", &[], &tls, &[]),
    );
    assert!(ok, "echoscu +tla: {out}");
    let (ok, out) = dcmtk(
        "echoscu",
        &association_args(anonymous(), "STRANGER", &[], &tls, &[]),
    );
    assert!(!ok, "echoscu +tla, unknown AE title: {out}");
    // A certificate presented still decides, and still binds the AE title.
    let (ok, out) = dcmtk(
        "echoscu",
        &association_args(pki.dcmtk_tls("county"), "KUVANTAMO", &[], &tls, &[]),
    );
    assert!(!ok, "the county's certificate as the company: {out}");
    // Plain DICOM to the TLS listener fails.
    let (ok, out) = dcmtk(
        "echoscu",
        &association_args(vec![], "COUNTYPACS", &[], &tls, &[]),
    );
    assert!(!ok, "plain DICOM to the TLS listener: {out}");

    // A client that connects to HTTPS and says nothing is cut off at the handshake timeout,
    // and nobody else waits for it (the Python suite runs while it hangs on).
    let started = Instant::now();
    let mut silent = std::net::TcpStream::connect(&http).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    python_scenario(
        &pki,
        "optional",
        &http,
        &tls,
        &["--plain-dimse".into(), plain],
    );
    let mut byte = [0u8; 1];
    let read = silent.read(&mut byte);
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the silent connection is closed: {read:?} after {waited:?}"
    );
    assert!(
        waited >= Duration::from_secs(HANDSHAKE_TIMEOUT_SECONDS)
            && waited < Duration::from_secs(HANDSHAKE_TIMEOUT_SECONDS + 10),
        "closed after {waited:?}"
    );
}
