//! TLS for both listeners (rustls with the ring provider; TLS 1.3 and 1.2) and mutual TLS:
//! a verified client certificate names an organisation, and the directory maps it to one of
//! that organisation's identities ([`identity`]).
//!
//! - [`Tls`]: the server certificate and key, the client CA bundle and its verifier, loaded
//!   once at start from the `[tls]` section; errors name the file and the problem.
//! - HTTP ([`http`]): a listener that runs each handshake on its own task (bounded in number
//!   and in time) and hands axum finished connections, with the peer's certificate facts as
//!   connect info.
//! - DIMSE (`dimse::scp`): dicom-ul's `establish_tls` does the handshake and the association
//!   negotiation in one call, and its access control (which decides A-ASSOCIATE-AC or -RJ)
//!   sees only AE titles. So each TLS association gets its own rustls `ServerConfig` whose
//!   client verifier wraps the shared one and keeps the end-entity certificate it verified
//!   ([`Tls::dimse_handshake`]); the access control reads it from there and can refuse a
//!   calling AE title that is not the certificate's identity's with A-ASSOCIATE-RJ. Session
//!   resumption is off on DIMSE, so every handshake runs the verifier.
//!
//! Certificates are read at start only: rotating them means a restart.

pub mod http;
pub mod identity;

use crate::config::Config;
use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use serde::Deserialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default of `tls.handshake_timeout_seconds`.
pub const HANDSHAKE_TIMEOUT_SECONDS_DEFAULT: u64 = 10;

/// The protocol versions offered: TLS 1.3 and 1.2 (rustls has nothing older).
static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// `tls.client_certificates`: whether clients are asked for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificates {
    /// Not asked for: TLS only encrypts; callers are identified as without TLS.
    #[default]
    Off,
    /// Asked for; a certificate given must verify against `client_ca_file`, none is fine.
    Optional,
    /// A handshake without a certificate that verifies against `client_ca_file` fails.
    Required,
}

impl ClientCertificates {
    pub fn name(self) -> &'static str {
        match self {
            ClientCertificates::Off => "off",
            ClientCertificates::Optional => "optional",
            ClientCertificates::Required => "required",
        }
    }
}

/// `tls.organisation_oid_from`: where a client certificate carries its organisation's OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OidSource {
    /// The subject's organizationIdentifier attribute (2.5.4.97).
    #[default]
    #[serde(rename = "subject:organizationIdentifier")]
    SubjectOrganizationIdentifier,
    /// The subject's organizationName (O).
    #[serde(rename = "subject:O")]
    SubjectOrganization,
    /// The subject's organizationalUnitName (OU).
    #[serde(rename = "subject:OU")]
    SubjectOrganizationalUnit,
    /// The subject's commonName (CN).
    #[serde(rename = "subject:CN")]
    SubjectCommonName,
    /// A subjectAltName URI `urn:oid:<oid>`.
    #[serde(rename = "san:uri")]
    SanUri,
}

impl OidSource {
    /// The configuration's spelling.
    pub fn name(self) -> &'static str {
        match self {
            OidSource::SubjectOrganizationIdentifier => "subject:organizationIdentifier",
            OidSource::SubjectOrganization => "subject:O",
            OidSource::SubjectOrganizationalUnit => "subject:OU",
            OidSource::SubjectCommonName => "subject:CN",
            OidSource::SanUri => "san:uri",
        }
    }
}

/// `http.authentication`: how HTTP callers are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpAuthentication {
    /// `Authorization: Bearer <token>` (a client certificate, if any, only opens the
    /// connection).
    #[default]
    Token,
    /// The verified client certificate; bearer tokens are not accepted.
    Certificate,
    /// The client certificate when the connection has one, otherwise the bearer token.
    Either,
}

impl HttpAuthentication {
    pub fn name(self) -> &'static str {
        match self {
            HttpAuthentication::Token => "token",
            HttpAuthentication::Certificate => "certificate",
            HttpAuthentication::Either => "either",
        }
    }
}

/// Whether any listener runs TLS.
pub fn in_use(config: &Config) -> bool {
    config.http.tls || config.dimse.tls || config.dimse.tls_listen.is_some()
}

/// The checks on the TLS keys that need no file (the files are read by [`Tls::load`]).
pub fn validate(config: &Config) -> anyhow::Result<()> {
    let tls = &config.tls;
    if in_use(config) {
        anyhow::ensure!(
            !tls.certificate_file.trim().is_empty() && !tls.private_key_file.trim().is_empty(),
            "http.tls, dimse.tls and dimse.tls_listen need tls.certificate_file and tls.private_key_file"
        );
    }
    match tls.client_certificates {
        ClientCertificates::Off => anyhow::ensure!(
            tls.client_ca_file.trim().is_empty(),
            "tls.client_ca_file is set but tls.client_certificates is \"off\": client certificates would not be asked for (set \"optional\" or \"required\", or remove client_ca_file)"
        ),
        ClientCertificates::Optional | ClientCertificates::Required => anyhow::ensure!(
            !tls.client_ca_file.trim().is_empty(),
            "tls.client_certificates = {:?} needs tls.client_ca_file (the CAs client certificates are verified against)",
            tls.client_certificates.name()
        ),
    }
    if config.http.authentication != HttpAuthentication::Token {
        anyhow::ensure!(
            config.http.tls && tls.client_certificates != ClientCertificates::Off,
            "http.authentication = {:?} needs http.tls = true and tls.client_certificates \"optional\" or \"required\"",
            config.http.authentication.name()
        );
    }
    if let Some(address) = config.dimse.tls_listen {
        anyhow::ensure!(
            !config.dimse.tls,
            "dimse.tls makes dimse.listen a TLS listener; dimse.tls_listen adds one beside a plain dimse.listen: set one of them"
        );
        anyhow::ensure!(
            address != config.dimse.listen || address.port() == 0,
            "dimse.tls_listen must differ from dimse.listen"
        );
    }
    anyhow::ensure!(
        tls.handshake_timeout_seconds > 0,
        "tls.handshake_timeout_seconds must be at least 1"
    );
    Ok(())
}

/// The end-entity certificate a DIMSE association's handshake verified (set by the
/// verifier during the handshake, read by the access control).
pub type CapturedCertificate = Arc<Mutex<Option<CertificateDer<'static>>>>;

/// See the module documentation.
#[derive(Debug)]
pub struct Tls {
    provider: Arc<CryptoProvider>,
    server_certificate: Arc<dyn ResolvesServerCert>,
    /// `None` with `client_certificates = "off"`.
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    http: Arc<ServerConfig>,
    /// The DIMSE configuration when no client certificate is asked for (one for all).
    dimse_plain: Arc<ServerConfig>,
    pub client_certificates: ClientCertificates,
    pub organisation_oid_from: OidSource,
    /// A TLS handshake on the HTTP listener must finish within this.
    pub handshake_timeout: Duration,
}

/// A DIMSE association's TLS configuration and where its client certificate lands.
pub struct DimseHandshake {
    pub config: Arc<ServerConfig>,
    /// `None` when client certificates are off.
    pub captured: Option<CapturedCertificate>,
}

impl Tls {
    /// Loads the `[tls]` section's files when a listener uses TLS.
    pub fn load_for(config: &Config) -> anyhow::Result<Option<Arc<Tls>>> {
        if !in_use(config) {
            return Ok(None);
        }
        Tls::load(&config.tls).map(|tls| Some(Arc::new(tls)))
    }

    /// Reads the certificate chain, the private key and the client CAs; every error names
    /// the file and the problem.
    pub fn load(section: &crate::config::TlsSection) -> anyhow::Result<Tls> {
        // ring, explicitly: the only provider built in (no aws-lc-rs, no cmake). Installed as
        // the process default too, for any code path that asks rustls for one.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificate_file = Path::new(section.certificate_file.trim());
        let chain = read_certificates(certificate_file)
            .with_context(|| format!("tls.certificate_file {}", certificate_file.display()))?;
        describe_server_certificate(certificate_file, &chain[0]);
        let key_file = Path::new(section.private_key_file.trim());
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| pem_problem(e, "a PEM private key (PKCS#8, PKCS#1 or SEC1)"))
            .with_context(|| format!("tls.private_key_file {}", key_file.display()))?;
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| {
                format!(
                    "tls.private_key_file {} does not fit tls.certificate_file {} (or the key type is not supported)",
                    key_file.display(),
                    certificate_file.display()
                )
            })?;
        let server_certificate: Arc<dyn ResolvesServerCert> =
            Arc::new(SingleCertAndKey::from(certified));
        let client_verifier = match section.client_certificates {
            ClientCertificates::Off => None,
            mode => {
                let ca_file = Path::new(section.client_ca_file.trim());
                let roots = read_certificates(ca_file)
                    .with_context(|| format!("tls.client_ca_file {}", ca_file.display()))?;
                let mut store = RootCertStore::empty();
                for (n, root) in roots.into_iter().enumerate() {
                    store.add(root).map_err(|e| {
                        anyhow::anyhow!(
                            "tls.client_ca_file {}: certificate {} is not a usable CA certificate: {e}",
                            ca_file.display(),
                            n + 1
                        )
                    })?;
                }
                let builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone());
                let builder = match mode {
                    ClientCertificates::Optional => builder.allow_unauthenticated(),
                    _ => builder,
                };
                Some(builder.build().map_err(|e| {
                    anyhow::anyhow!("tls.client_ca_file {}: {e}", ca_file.display())
                })?)
            }
        };
        let mut http = server_config(&provider, &server_certificate, client_verifier.clone())?;
        // axum serves HTTP/1.1 only.
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        let dimse_plain = server_config(&provider, &server_certificate, None)?;
        let tls = Tls {
            http: Arc::new(http),
            dimse_plain: Arc::new(dimse_plain),
            provider,
            server_certificate,
            client_verifier,
            client_certificates: section.client_certificates,
            organisation_oid_from: section.organisation_oid_from,
            handshake_timeout: Duration::from_secs(section.handshake_timeout_seconds),
        };
        tracing::info!(
            client_certificates = tls.client_certificates.name(),
            organisation_oid_from = tls.organisation_oid_from.name(),
            "TLS configured (TLS 1.3 and 1.2, ring)"
        );
        Ok(tls)
    }

    /// The HTTP listener's configuration (shared by every connection).
    pub fn http_config(&self) -> Arc<ServerConfig> {
        self.http.clone()
    }

    /// A configuration for one DIMSE association: with client certificates, its own
    /// verifier that keeps the certificate it verified (see the module documentation).
    pub fn dimse_handshake(&self) -> anyhow::Result<DimseHandshake> {
        let Some(inner) = &self.client_verifier else {
            return Ok(DimseHandshake {
                config: self.dimse_plain.clone(),
                captured: None,
            });
        };
        let captured: CapturedCertificate = Arc::default();
        let verifier = Arc::new(CapturingVerifier {
            inner: inner.clone(),
            captured: captured.clone(),
        });
        let mut config = server_config(&self.provider, &self.server_certificate, Some(verifier))?;
        // Every handshake runs the verifier: no resumption (it would skip the verifier).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(DimseHandshake {
            config: Arc::new(config),
            captured: Some(captured),
        })
    }
}

/// A server configuration: TLS 1.3 and 1.2, the server certificate, the client verifier (none:
/// no client certificate is asked for); the server's cipher suite order wins.
fn server_config(
    provider: &Arc<CryptoProvider>,
    certificate: &Arc<dyn ResolvesServerCert>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> anyhow::Result<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .context("TLS protocol versions")?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certificate.clone());
    config.ignore_client_order = true;
    Ok(config)
}

/// The certificates of a PEM file, in order; at least one.
fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_problem(e, "PEM certificates"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem(e, "PEM certificates"))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "no certificate in it (expected PEM blocks `-----BEGIN CERTIFICATE-----`)"
    );
    for (n, der) in certificates.iter().enumerate() {
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| anyhow::anyhow!("certificate {} is not valid X.509: {e}", n + 1))?;
    }
    Ok(certificates)
}

fn pem_problem(error: rustls::pki_types::pem::Error, expected: &str) -> anyhow::Error {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(e) => anyhow::anyhow!("cannot read it: {e}"),
        Error::NoItemsFound => anyhow::anyhow!("no {expected} in it"),
        other => anyhow::anyhow!("not {expected}: {other}"),
    }
}

/// Logs the server certificate's subject and validity (and warns when it is not valid now).
fn describe_server_certificate(path: &Path, der: &CertificateDer<'_>) {
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return;
    };
    let validity = certificate.validity();
    let not_after = validity.not_after.to_string();
    if validity.is_valid() {
        tracing::info!(file = %path.display(), subject = %certificate.subject(), %not_after, "TLS server certificate");
    } else {
        tracing::warn!(file = %path.display(), subject = %certificate.subject(), not_before = %validity.not_before, %not_after, "the TLS server certificate is not valid now; clients will refuse it");
    }
}

/// A client verifier that keeps the end-entity certificate it verified (DIMSE: the
/// association's access control reads it).
#[derive(Debug)]
struct CapturingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    captured: CapturedCertificate,
}

impl ClientCertVerifier for CapturingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Ok(mut slot) = self.captured.lock() {
            *slot = Some(end_entity.clone().into_owned());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsSection;

    fn refused(toml: &str, expected: &str) {
        let err = Config::from_toml(toml).expect_err(expected);
        assert!(format!("{err:#}").contains(expected), "{err:#}");
    }

    #[test]
    fn inconsistent_tls_keys_are_refused_with_their_names() {
        refused("[http]\ntls = true\n", "tls.certificate_file");
        refused(
            "[dimse]\ntls_listen = \"127.0.0.1:2762\"\n",
            "tls.private_key_file",
        );
        let files = "[tls]\ncertificate_file = \"s.crt\"\nprivate_key_file = \"s.key\"\n";
        refused(
            &format!("{files}client_certificates = \"required\"\n[http]\ntls = true\n"),
            "needs tls.client_ca_file",
        );
        refused(
            &format!("{files}client_ca_file = \"ca.crt\"\n[http]\ntls = true\n"),
            "client_certificates is \"off\"",
        );
        refused(
            &format!("{files}[http]\ntls = true\nauthentication = \"certificate\"\n"),
            "http.authentication = \"certificate\" needs",
        );
        refused(
            &format!("{files}[dimse]\ntls = true\ntls_listen = \"127.0.0.1:2762\"\n"),
            "set one of them",
        );
        refused(
            &format!("{files}client_certificates = \"sometimes\"\n"),
            "sometimes",
        );
        refused(
            &format!("{files}organisation_oid_from = \"subject:L\"\n"),
            "subject:L",
        );
        let config = Config::from_toml(&format!(
            "{files}client_ca_file = \"ca.crt\"\nclient_certificates = \"optional\"\n\
             organisation_oid_from = \"san:uri\"\n\
             [http]\ntls = true\nauthentication = \"either\"\n[dimse]\ntls_listen = \"127.0.0.1:2762\"\n"
        ))
        .expect("consistent");
        assert_eq!(config.tls.organisation_oid_from, OidSource::SanUri);
        assert_eq!(config.http.authentication, HttpAuthentication::Either);
        assert_eq!(config.tls.handshake_timeout_seconds, 10);
        assert!(in_use(&config));
        assert!(!in_use(&Config::default()));
    }

    /// A CA-signed server certificate and key, a CA file and a file that is no PEM.
    fn files(dir: &Path) -> (String, String, String, String) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).expect("CA").pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("names")
            .signed_by(&key, &issuer)
            .expect("server");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path.to_string_lossy().into_owned()
        };
        (
            write("server.crt", &server.pem()),
            write("server.key", &key.serialize_pem()),
            write("ca.crt", &ca_pem),
            write("junk.txt", "not PEM at all\n"),
        )
    }

    #[test]
    fn files_load_and_their_problems_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (crt, key, ca, junk) = files(dir.path());
        let section = |crt: &str, key: &str, ca: &str| TlsSection {
            certificate_file: crt.into(),
            private_key_file: key.into(),
            client_ca_file: ca.into(),
            client_certificates: ClientCertificates::Required,
            ..TlsSection::default()
        };
        let tls = Tls::load(&section(&crt, &key, &ca)).expect("loads");
        assert_eq!(tls.http_config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        let handshake = tls.dimse_handshake().expect("DIMSE config");
        assert!(handshake.captured.is_some(), "client certificates are kept");
        assert_eq!(handshake.config.send_tls13_tickets, 0, "no resumption");
        let off = Tls::load(&TlsSection {
            client_certificates: ClientCertificates::Off,
            client_ca_file: String::new(),
            ..section(&crt, &key, "")
        })
        .expect("loads");
        assert!(off.dimse_handshake().expect("config").captured.is_none());

        let missing = dir
            .path()
            .join("missing.crt")
            .to_string_lossy()
            .into_owned();
        for (section, expected) in [
            (
                section(&missing, &key, &ca),
                format!("tls.certificate_file {missing}"),
            ),
            (
                section(&junk, &key, &ca),
                "no certificate in it".to_string(),
            ),
            (
                section(&crt, &crt, &ca),
                format!("tls.private_key_file {crt}"),
            ),
            (
                section(&crt, &key, &junk),
                format!("tls.client_ca_file {junk}"),
            ),
            // The CA's certificate with the server's key: they do not fit.
            (section(&ca, &key, &ca), "does not fit".to_string()),
        ] {
            let err = Tls::load(&section).expect_err(&expected);
            assert!(
                format!("{err:#}").contains(&expected),
                "{err:#} lacks {expected}"
            );
        }
    }
}
