//! Server configuration: built-in defaults, then a TOML file, then environment variables, then
//! command-line flags (each overrides the one before).
//!
//! The file is `--config PATH` (`KUVASTO_CONFIG`), or `kuvasto.toml` in the working directory
//! when it exists. Every key is documented in `docs/configuration.md`; an unknown key is an
//! error, so a misspelt setting is never silently ignored.

use anyhow::Context;
use clap::Args;
use kuvasto_engine::dicom::Tag;
use kuvasto_engine::instances::DuplicatePolicy;
use kuvasto_engine::StoreConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The configuration file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "kuvasto.toml";

/// Flags (and their environment variables) that override the configuration file.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML; default: ./kuvasto.toml when present).
    #[arg(long, env = "KUVASTO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (created if missing; default ./kuvasto-data).
    #[arg(long, env = "KUVASTO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Seal segments at this size (MiB; default 1024).
    #[arg(long, env = "KUVASTO_SEGMENT_SIZE_MIB")]
    pub segment_size_mib: Option<u64>,
    /// Write segments with O_DIRECT (default true; `false` uses the page cache).
    #[arg(long, env = "KUVASTO_DIRECT_IO")]
    pub direct_io: Option<bool>,
    /// Extra top-level attributes to index, as `GGGGEEEE` hex tags, comma-separated
    /// (e.g. `00180050,00081090`).
    #[arg(long, env = "KUVASTO_INDEX_EXTRA_TAGS", value_delimiter = ',', value_parser = parse_tag)]
    pub index_extra_tags: Option<Vec<Tag>>,
    /// HTTP listen address (default 127.0.0.1:8080; port 0 picks a free port).
    #[arg(long, env = "KUVASTO_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Base URL clients reach the server at, for RetrieveURL and BulkDataURI values
    /// (default: from each request's Host header).
    #[arg(long, env = "KUVASTO_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The organisation local, unauthenticated requests act for (default "local").
    #[arg(long, env = "KUVASTO_ORGANISATION")]
    pub organisation: Option<String>,
    /// `national` (the archive rules: identities, registers, documents first, validation)
    /// or `standalone` (one organisation, no register rules; for a plain PACS-style archive
    /// and local trials). Default: national.
    #[arg(long, env = "KUVASTO_PROFILE")]
    pub profile: Option<String>,
    /// National profile: a study without its request or visit note is refused (`reject`,
    /// the default) or held in quarantine (`quarantine`).
    #[arg(long, env = "KUVASTO_DOCUMENTS_FIRST")]
    pub documents_first: Option<String>,
    /// A stored SOP Instance UID arriving with different bytes: `reject` (default) or
    /// `replace`. Identical bytes are always accepted without a second copy.
    #[arg(long, env = "KUVASTO_DUPLICATES", value_parser = parse_duplicates)]
    pub duplicates: Option<DuplicatePolicy>,
    /// DIMSE listen address (default 127.0.0.1:11112; port 0 picks a free port).
    #[arg(long, env = "KUVASTO_DIMSE_LISTEN")]
    pub dimse_listen: Option<SocketAddr>,
    /// Calling AE titles allowed to associate, comma-separated (default: any).
    #[arg(long, env = "KUVASTO_DIMSE_CALLING_AE_TITLES", value_delimiter = ',')]
    pub dimse_calling_ae_titles: Option<Vec<String>>,
    /// Known DIMSE peers (C-MOVE destinations, Storage Commitment reply addresses,
    /// notification subscribers), as `AE=HOST:PORT`, comma-separated; add `/new-association`
    /// to send that peer's Storage Commitment results on a new association and `/notify` to
    /// send it Instance Availability Notifications. Replaces the file's `[[dimse.peers]]`.
    #[arg(long, env = "KUVASTO_DIMSE_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    pub dimse_peers: Option<Vec<Peer>>,
    /// Write the bound HTTP address to this file once the server accepts connections.
    #[arg(long, env = "KUVASTO_ADDRESS_FILE")]
    pub address_file: Option<PathBuf>,
    /// Write the bound DIMSE address to this file once it accepts associations.
    #[arg(long, env = "KUVASTO_DIMSE_ADDRESS_FILE")]
    pub dimse_address_file: Option<PathBuf>,
    /// Write the bound address of the TLS DIMSE listener (`dimse.tls_listen`) to this file
    /// once it accepts associations.
    #[arg(long, env = "KUVASTO_DIMSE_TLS_ADDRESS_FILE")]
    pub dimse_tls_address_file: Option<PathBuf>,
}

/// The whole configuration, as the file spells it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub storage: StorageSection,
    pub http: HttpSection,
    pub dimse: DimseSection,
    /// TLS and mutual TLS for the listeners that set `tls` (`crate::tls`).
    pub tls: TlsSection,
    pub archive: ArchiveSection,
    /// Data controllers (national profile).
    pub organisations: Vec<OrganisationSection>,
    /// Callers and what they act for (national profile).
    pub identities: Vec<IdentitySection>,
    /// How long studies are kept; none: forever.
    pub retention: Vec<RetentionSection>,
    /// The server's own compaction (and retention sweep) schedule.
    pub compaction: CompactionSection,
    /// Not in the file: from `--address-file` only.
    #[serde(skip)]
    pub address_file: Option<PathBuf>,
    /// Not in the file: from `--dimse-address-file` only.
    #[serde(skip)]
    pub dimse_address_file: Option<PathBuf>,
    /// Not in the file: from `--dimse-tls-address-file` only.
    #[serde(skip)]
    pub dimse_tls_address_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    pub data_dir: PathBuf,
    pub segment_size_mib: u64,
    pub direct_io: bool,
    /// `GGGGEEEE` hex tags.
    pub index_extra_tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub listen: SocketAddr,
    /// Empty: derived from the request's Host header.
    pub public_url: String,
    /// STOW-RS and WADO-RS requests served at once; more wait for a slot (searches and
    /// deletes are short and not counted).
    pub requests_max: usize,
    /// After SIGTERM/SIGINT, in-flight requests get this long to finish; then they are
    /// abandoned (an upload's unfinished instance never becomes visible).
    pub shutdown_grace_seconds: u64,
    /// Body bytes a STOW request may have queued between the network and the engine.
    pub stow_queue_chunks_max: usize,
    /// Largest part header block of a multipart body.
    pub part_header_bytes_max: usize,
    /// Most parts in one STOW request.
    pub parts_max: usize,
    /// Serve HTTPS (`[tls]`) instead of plain HTTP.
    pub tls: bool,
    /// How callers are identified: bearer `token`, TLS client `certificate`, or `either`.
    pub authentication: crate::tls::HttpAuthentication,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DimseSection {
    /// DIMSE listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// This archive's AE title (the called AE title peers use).
    pub ae_title: String,
    /// Calling AE titles allowed to associate; empty allows any (local use only).
    pub calling_ae_titles: Vec<String>,
    /// Associations served at once; more are refused.
    pub associations_max: usize,
    /// Largest PDU accepted (and offered).
    pub max_pdu_bytes: u32,
    /// An association idle this long is closed.
    pub idle_timeout_seconds: u64,
    /// ARTIM: a connection must complete association negotiation within this time, and an
    /// association this archive opens (C-MOVE, Storage Commitment replies) must be accepted
    /// within it.
    pub artim_timeout_seconds: u64,
    /// Known peers: C-MOVE destinations and where Storage Commitment results go.
    pub peers: Vec<Peer>,
    /// `listen` speaks DICOM over TLS (`[tls]`) instead of plain DICOM.
    pub tls: bool,
    /// A second listener, speaking DICOM over TLS, beside a plain `listen`.
    pub tls_listen: Option<SocketAddr>,
}

/// `[tls]`: the server's certificate and key, and client certificates (mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM: the server certificate, then any intermediates.
    pub certificate_file: String,
    /// PEM: the server certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key_file: String,
    /// PEM bundle of the CAs client certificates are verified against.
    pub client_ca_file: String,
    /// `off`, `optional` or `required`.
    pub client_certificates: crate::tls::ClientCertificates,
    /// Where a client certificate names its organisation's OID.
    pub organisation_oid_from: crate::tls::OidSource,
    /// An HTTP client must finish its TLS handshake within this time.
    pub handshake_timeout_seconds: u64,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            certificate_file: String::new(),
            private_key_file: String::new(),
            client_ca_file: String::new(),
            client_certificates: crate::tls::ClientCertificates::Off,
            organisation_oid_from: crate::tls::OidSource::SubjectOrganizationIdentifier,
            handshake_timeout_seconds: crate::tls::HANDSHAKE_TIMEOUT_SECONDS_DEFAULT,
        }
    }
}

/// A DIMSE peer this archive may open associations to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub ae_title: String,
    /// `host:port`.
    pub address: String,
    /// Storage Commitment results go on the requesting association (`same-association`, the
    /// default, falling back to a new one when it has closed) or always on a new association
    /// to `address` (`new-association`).
    #[serde(default = "same_association")]
    pub commitment_reply: String,
    /// Send this peer an Instance Availability Notification (N-CREATE) for each study an
    /// association stored instances of.
    #[serde(default)]
    pub notify_availability: bool,
}

fn same_association() -> String {
    "same-association".into()
}

/// Parses `AE=HOST:PORT`, optionally followed by `/new-association` (Storage Commitment
/// results on a new association) and `/notify` (Instance Availability Notifications).
pub fn parse_peer(text: &str) -> Result<Peer, String> {
    let (ae_title, rest) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not a peer: expected AE=HOST:PORT"))?;
    let mut parts = rest.split('/');
    let address = parts.next().unwrap_or_default();
    let mut peer = Peer {
        ae_title: ae_title.trim().to_string(),
        address: address.trim().to_string(),
        commitment_reply: same_association(),
        notify_availability: false,
    };
    for option in parts {
        match option {
            "notify" => peer.notify_availability = true,
            reply => peer.commitment_reply = reply.to_string(),
        }
    }
    peer.validate()?;
    Ok(peer)
}

impl Peer {
    fn validate(&self) -> Result<(), String> {
        if self.ae_title.is_empty() || self.ae_title.len() > 16 {
            return Err(format!(
                "peer AE title {:?} must be 1 to 16 characters",
                self.ae_title
            ));
        }
        if !self.address.contains(':') {
            return Err(format!(
                "peer {} address {:?} is not HOST:PORT",
                self.ae_title, self.address
            ));
        }
        if !matches!(
            self.commitment_reply.as_str(),
            "same-association" | "new-association"
        ) {
            return Err(format!(
                "peer {} commitment_reply {:?}: expected same-association or new-association",
                self.ae_title, self.commitment_reply
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSection {
    /// `national` or `standalone`.
    pub profile: String,
    /// Standalone: the organisation every caller acts for. National: this archive's own
    /// id, the AuditSourceID of its audit messages.
    pub organisation: String,
    /// `reject` or `replace`.
    pub duplicates: String,
    /// Accept SOP classes the standard's registry does not list (private classes).
    pub accept_unknown_sop_classes: bool,
    /// National: `reject` or `quarantine` a study whose request or visit note is not there.
    pub documents_first: String,
    /// National: validate PatientID, the examination code and the SOP class per content type.
    pub validate: bool,
    /// The examination nomenclature (TSV, `server/data/examination-codes.tsv` is the
    /// format); empty: the built-in sample.
    pub examination_codes_file: String,
    /// Temporary patient id forms accepted besides personal identity codes (regular
    /// expressions, matched against the whole PatientID).
    pub temporary_id_patterns: Vec<String>,
    /// Accept personal identity codes with individual number 900-999 (temporary codes).
    pub accept_temporary_identity_codes: bool,
    /// The attribute carrying a study's service event id (`GGGGEEEE`).
    pub service_event_tag: String,
}

/// A data controller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganisationSection {
    pub oid: String,
    pub name: String,
    /// `public` (1) or `private` (2).
    pub controller_type: String,
    /// Registers (OIDs) it controls; default one register with the organisation's OID.
    #[serde(default)]
    pub registers: Vec<String>,
}

/// A caller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    pub id: String,
    pub organisation: String,
    /// `system`, `portal`, `operator` or `registry`.
    pub role: String,
    #[serde(default)]
    pub ae_titles: Vec<String>,
    /// Bearer tokens (at least 16 characters each).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Subject CNs of its organisation's client certificates that act as it (mutual TLS);
    /// `["*"]`: any CN no other identity of the organisation lists.
    #[serde(default)]
    pub certificate_names: Vec<String>,
}

/// One retention rule (see `archive::retention`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Named in the audit record of every expiry.
    pub name: String,
    /// `radiology`, `dental`, `ecg`, `ophthalmology` or `any` (default).
    #[serde(default)]
    pub content_type: String,
    /// A register OID; empty: any register.
    #[serde(default)]
    pub register: String,
    /// Years kept (at least 12); absent: forever.
    #[serde(default)]
    pub keep_years: Option<u32>,
    /// `study-date`, `stored` or `later` (default: the later of the two).
    #[serde(default)]
    pub clock: String,
}

/// The running server's compaction: every `interval_minutes` (0: never; `kuvasto compact`
/// still works), first the retention sweep, then sealed segments at least
/// `garbage_ratio_min` garbage are rewritten.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionSection {
    pub interval_minutes: u64,
    pub garbage_ratio_min: f64,
    /// The scheduled compaction copies at most this many MiB/s (0: no limit).
    pub copy_mib_per_second: u64,
}

impl Default for CompactionSection {
    fn default() -> Self {
        CompactionSection {
            interval_minutes: 0,
            garbage_ratio_min: 0.5,
            copy_mib_per_second: 0,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            data_dir: PathBuf::from("kuvasto-data"),
            segment_size_mib: 1024,
            direct_io: true,
            index_extra_tags: Vec::new(),
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: String::new(),
            requests_max: 256,
            shutdown_grace_seconds: 30,
            stow_queue_chunks_max: 16,
            part_header_bytes_max: 16 << 10,
            parts_max: 100_000,
            tls: false,
            authentication: crate::tls::HttpAuthentication::Token,
        }
    }
}

impl Default for DimseSection {
    fn default() -> Self {
        DimseSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 11112)),
            ae_title: "KUVASTO".into(),
            calling_ae_titles: Vec::new(),
            associations_max: 64,
            max_pdu_bytes: 65_536,
            idle_timeout_seconds: 60,
            artim_timeout_seconds: 30,
            peers: Vec::new(),
            tls: false,
            tls_listen: None,
        }
    }
}

impl Default for ArchiveSection {
    fn default() -> Self {
        ArchiveSection {
            profile: "national".into(),
            organisation: "local".into(),
            duplicates: "reject".into(),
            accept_unknown_sop_classes: false,
            documents_first: "reject".into(),
            validate: true,
            examination_codes_file: String::new(),
            temporary_id_patterns: Vec::new(),
            accept_temporary_identity_codes: true,
            service_event_tag: "00402016".into(),
        }
    }
}

/// Parses `GGGGEEEE` (optionally `(GGGG,EEEE)`) into a tag.
pub fn parse_tag(text: &str) -> Result<Tag, String> {
    let hex: String = text
        .chars()
        .filter(|c| !matches!(c, '(' | ')' | ',' | ' '))
        .collect();
    if hex.len() != 8 {
        return Err(format!(
            "{text:?} is not a tag: expected 8 hex digits, GGGGEEEE"
        ));
    }
    u32::from_str_radix(&hex, 16)
        .map(Tag)
        .map_err(|_| format!("{text:?} is not a tag: expected 8 hex digits, GGGGEEEE"))
}

/// Parses `reject` or `replace`.
pub fn parse_duplicates(text: &str) -> Result<DuplicatePolicy, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "reject" => Ok(DuplicatePolicy::Reject),
        "replace" => Ok(DuplicatePolicy::Replace),
        other => Err(format!(
            "{other:?} is not a duplicate policy: expected `reject` or `replace`"
        )),
    }
}

fn tag_text(tag: Tag) -> String {
    format!("{:08X}", tag.0)
}

impl ConfigArgs {
    /// Reads the file (if any) and applies the environment and flags over it.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Config::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Config::default(),
        };
        if let Some(v) = &self.data_dir {
            config.storage.data_dir = v.clone();
        }
        if let Some(v) = self.segment_size_mib {
            config.storage.segment_size_mib = v;
        }
        if let Some(v) = self.direct_io {
            config.storage.direct_io = v;
        }
        if let Some(v) = &self.index_extra_tags {
            config.storage.index_extra_tags = v.iter().map(|&t| tag_text(t)).collect();
        }
        if let Some(v) = self.http_listen {
            config.http.listen = v;
        }
        if let Some(v) = self.dimse_listen {
            config.dimse.listen = v;
        }
        if let Some(v) = &self.dimse_calling_ae_titles {
            config.dimse.calling_ae_titles = v.clone();
        }
        if let Some(v) = &self.dimse_peers {
            config.dimse.peers = v.clone();
        }
        if let Some(v) = &self.public_url {
            config.http.public_url = v.clone();
        }
        if let Some(v) = &self.organisation {
            config.archive.organisation = v.clone();
        }
        if let Some(v) = &self.profile {
            config.archive.profile = v.clone();
        }
        if let Some(v) = &self.documents_first {
            config.archive.documents_first = v.clone();
        }
        if let Some(v) = self.duplicates {
            config.archive.duplicates = match v {
                DuplicatePolicy::Reject => "reject".into(),
                DuplicatePolicy::Replace => "replace".into(),
            };
        }
        config.address_file = self.address_file.clone();
        config.dimse_address_file = self.dimse_address_file.clone();
        config.dimse_tls_address_file = self.dimse_tls_address_file.clone();
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Parses a TOML configuration file.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        Config::from_toml(&text)
            .with_context(|| format!("in the configuration file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.duplicate_policy()?;
        self.extra_tags()?;
        anyhow::ensure!(
            self.http.requests_max > 0,
            "http.requests_max must be at least 1"
        );
        anyhow::ensure!(
            self.http.stow_queue_chunks_max > 0,
            "http.stow_queue_chunks_max must be at least 1"
        );
        anyhow::ensure!(
            !self.dimse.ae_title.trim().is_empty() && self.dimse.ae_title.len() <= 16,
            "dimse.ae_title must be 1 to 16 characters"
        );
        anyhow::ensure!(
            self.dimse.associations_max > 0,
            "dimse.associations_max must be at least 1"
        );
        anyhow::ensure!(
            self.dimse.max_pdu_bytes >= 4096,
            "dimse.max_pdu_bytes must be at least 4096"
        );
        for peer in &self.dimse.peers {
            peer.validate()
                .map_err(|e| anyhow::anyhow!("dimse.peers: {e}"))?;
        }
        anyhow::ensure!(
            self.dimse.artim_timeout_seconds > 0 && self.dimse.idle_timeout_seconds > 0,
            "dimse.artim_timeout_seconds and dimse.idle_timeout_seconds must be at least 1"
        );
        anyhow::ensure!(
            !self.archive.organisation.trim().is_empty(),
            "archive.organisation must not be empty"
        );
        self.standalone()?;
        crate::tls::validate(self)?;
        crate::archive::DocumentsFirst::parse(&self.archive.documents_first)
            .map_err(|e| anyhow::anyhow!("archive.documents_first: {e}"))?;
        self.service_event_tag()?;
        Ok(())
    }

    /// Whether the standalone profile is chosen (`archive.profile`).
    pub fn standalone(&self) -> anyhow::Result<bool> {
        match self.archive.profile.trim() {
            "national" => Ok(false),
            "standalone" => Ok(true),
            other => {
                anyhow::bail!("archive.profile {other:?}: expected `national` or `standalone`")
            }
        }
    }

    pub fn service_event_tag(&self) -> anyhow::Result<Tag> {
        parse_tag(&self.archive.service_event_tag)
            .map_err(|e| anyhow::anyhow!("archive.service_event_tag: {e}"))
    }

    /// The identities directory of the chosen profile.
    pub fn directory(&self) -> anyhow::Result<crate::archive::directory::Directory> {
        use crate::archive::directory::{
            ControllerType, Directory, DirectoryConfig, Identity, Organisation, Role,
        };
        if self.standalone()? {
            return Ok(Directory::standalone(&self.archive.organisation));
        }
        let mut config = DirectoryConfig::default();
        for o in &self.organisations {
            config.organisations.push(Organisation {
                oid: o.oid.trim().to_string(),
                name: o.name.clone(),
                controller_type: ControllerType::parse(&o.controller_type)
                    .map_err(|e| anyhow::anyhow!("organisation {}: {e}", o.oid))?,
                registers: o.registers.clone(),
            });
        }
        for i in &self.identities {
            if !i.certificate_names.is_empty() {
                config
                    .certificate_names
                    .insert(i.id.clone(), i.certificate_names.clone());
            }
            config.identities.push(Identity {
                id: i.id.clone(),
                organisation: i.organisation.trim().to_string(),
                role: Role::parse(&i.role)
                    .map_err(|e| anyhow::anyhow!("identity {}: {e}", i.id))?,
                ae_titles: i.ae_titles.clone(),
                tokens: i.tokens.clone(),
            });
        }
        Directory::national(config).map_err(|e| anyhow::anyhow!("identities: {e}"))
    }

    /// The `[[retention]]` rules, checked (legal minimum, content types, clocks, names).
    pub fn retention(&self) -> anyhow::Result<crate::archive::retention::RetentionPolicy> {
        use crate::archive::retention::{Clock, Keep, RetentionPolicy, RetentionRule};
        let mut rules = Vec::with_capacity(self.retention.len());
        for (i, r) in self.retention.iter().enumerate() {
            let at = format!("[[retention]] #{} ({:?})", i + 1, r.name);
            anyhow::ensure!(!r.name.trim().is_empty(), "{at}: name is required");
            let clock = if r.clock.is_empty() {
                Clock::Later
            } else {
                Clock::parse(&r.clock).map_err(|e| anyhow::anyhow!("{at}: {e}"))?
            };
            let content_type = match r.content_type.as_str() {
                "" | "any" => None,
                other => Some(other.to_string()),
            };
            rules.push(RetentionRule {
                name: r.name.clone(),
                content_type,
                register: (!r.register.is_empty()).then(|| r.register.clone()),
                keep: r.keep_years.map_or(Keep::Forever, Keep::Years),
                clock,
            });
        }
        let policy = RetentionPolicy::new(rules).map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.compaction.garbage_ratio_min),
            "compaction.garbage_ratio_min must be between 0.0 and 1.0"
        );
        Ok(policy)
    }

    pub fn duplicate_policy(&self) -> anyhow::Result<DuplicatePolicy> {
        parse_duplicates(&self.archive.duplicates)
            .map_err(|e| anyhow::anyhow!("archive.duplicates: {e}"))
    }

    /// The extra indexed attributes: the configured ones, plus in the national profile the
    /// service event attribute (the rules link studies by it).
    pub fn extra_tags(&self) -> anyhow::Result<Vec<Tag>> {
        let mut tags = self
            .storage
            .index_extra_tags
            .iter()
            .map(|t| parse_tag(t).map_err(|e| anyhow::anyhow!("storage.index_extra_tags: {e}")))
            .collect::<anyhow::Result<Vec<Tag>>>()?;
        if !self.standalone()? {
            let tag = self.service_event_tag()?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok(tags)
    }

    /// The engine's configuration.
    pub fn store_config(&self) -> anyhow::Result<StoreConfig> {
        let mut config = StoreConfig {
            segment_size_bytes_max: self.storage.segment_size_mib * 1024 * 1024,
            direct_io: self.storage.direct_io,
            ..StoreConfig::default()
        };
        config.instances.extra_tags = self.extra_tags()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_in_both_spellings_and_bad_ones_are_refused() {
        assert_eq!(parse_tag("00180050"), Ok(Tag::new(0x0018, 0x0050)));
        assert_eq!(parse_tag("(0018,0050)"), Ok(Tag::new(0x0018, 0x0050)));
        assert!(parse_tag("0018005").is_err());
        assert!(parse_tag("0018005Z").is_err());
    }

    #[test]
    fn the_file_overrides_defaults_and_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(
            &path,
            "[storage]\ndata_dir = \"/srv/k\"\nindex_extra_tags = [\"00180050\"]\n\
             [http]\nlisten = \"0.0.0.0:9000\"\n[archive]\nduplicates = \"replace\"\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(path.clone()),
            http_listen: Some("127.0.0.1:9001".parse().unwrap()),
            ..ConfigArgs::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.storage.data_dir, PathBuf::from("/srv/k"));
        assert_eq!(config.storage.segment_size_mib, 1024, "default kept");
        assert_eq!(config.http.listen.port(), 9001, "flag wins over file");
        assert_eq!(config.duplicate_policy().unwrap(), DuplicatePolicy::Replace);
        // The national profile (the default) also indexes the service event attribute.
        assert_eq!(
            config.extra_tags().unwrap(),
            vec![Tag::new(0x0018, 0x0050), Tag::new(0x0040, 0x2016)]
        );
        let mut standalone = config.clone();
        standalone.archive.profile = "standalone".into();
        assert_eq!(
            standalone.extra_tags().unwrap(),
            vec![Tag::new(0x0018, 0x0050)]
        );
    }

    #[test]
    fn profiles_and_identities_are_checked() {
        let err = Config::from_toml("[archive]\nprofile = \"regional\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("archive.profile"), "{err:#}");
        let err = Config::from_toml("[archive]\ndocuments_first = \"later\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("archive.documents_first"),
            "{err:#}"
        );
        // The national profile needs identities; the standalone one does not.
        let err = Config::default().directory().unwrap_err();
        assert!(format!("{err:#}").contains("standalone"), "{err:#}");
        let config = Config::from_toml(
            "[archive]\nprofile = \"national\"\n\
             [[organisations]]\noid = \"1.2.246.10.1\"\nname = \"County\"\ncontroller_type = \"public\"\n\
             [[identities]]\nid = \"pacs\"\norganisation = \"1.2.246.10.1\"\nrole = \"system\"\nae_titles = [\"PACS\"]\n",
        )
        .unwrap();
        let directory = config.directory().unwrap();
        assert_eq!(directory.by_ae_title("PACS").unwrap().id, "pacs");
        assert!(directory.by_ae_title("OTHER").is_none());
        let err = Config::from_toml(
            "[[organisations]]\noid = \"1.2.246.10.1\"\nname = \"County\"\ncontroller_type = \"state\"\n",
        )
        .unwrap()
        .directory()
        .unwrap_err();
        assert!(format!("{err:#}").contains("controller type"), "{err:#}");
    }

    #[test]
    fn peers_come_from_the_file_or_the_flag() {
        let config = Config::from_toml(
            "[[dimse.peers]]\nae_title = \"PACS\"\naddress = \"pacs.example:104\"\n\
             commitment_reply = \"new-association\"\n",
        )
        .unwrap();
        assert_eq!(config.dimse.peers[0].ae_title, "PACS");
        assert_eq!(config.dimse.peers[0].commitment_reply, "new-association");
        let peer = parse_peer("SCP=127.0.0.1:11113").unwrap();
        assert_eq!(peer.address, "127.0.0.1:11113");
        assert_eq!(peer.commitment_reply, "same-association");
        assert!(!peer.notify_availability);
        let peer = parse_peer("RIS=10.0.0.1:104/new-association/notify").unwrap();
        assert_eq!(peer.commitment_reply, "new-association");
        assert!(peer.notify_availability);
        assert!(parse_peer("SCP").is_err());
        assert!(parse_peer("SCP=host").is_err());
        assert!(parse_peer("SCP=h:1/sometimes").is_err());
        assert!(
            Config::from_toml("[[dimse.peers]]\nae_title = \"\"\naddress = \"h:1\"\n").is_err()
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_name() {
        let err = Config::from_toml("[http]\nlisen = \"1.2.3.4:1\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
        let err = Config::from_toml("[archive]\nduplicates = \"keep\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("archive.duplicates"), "{err:#}");
    }
}
