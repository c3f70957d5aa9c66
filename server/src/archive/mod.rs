//! The archive's rules: the one place both protocols (DICOMweb, DIMSE) call to store, find,
//! read and delete instances. A protocol adapter turns its requests into these calls and the
//! answers into its own terms (HTTP statuses, DIMSE status codes); nothing here knows a
//! protocol.
//!
//! The rules (`../shared/DOMAIN.md`, `docs/rules.md`):
//! - who is calling ([`Caller`]: an [`Identity`] of an organisation, from the
//!   [`Directory`]), and what its role allows;
//! - on ingest (`ingest.rs`): storage SOP classes, the duplicate policy, the study a request
//!   named, then in the national profile validation (PatientID, examination code, SOP class
//!   per content type), documents first (reject or quarantine a study whose request or visit
//!   note is not announced), and the register's write right (controller or purchased-service
//!   authorization); IOCM rejection notes hide what they reference;
//! - on every read path (`access.rs`): the study's register and read right, disclosure
//!   prohibitions, the portal's one patient, quarantine and hidden instances;
//! - documents, authorizations, prohibitions, quarantine, corrections, the patient view
//!   (`admin.rs`), kept durably in the engine (`state.rs`);
//! - an append-only audit record in the engine for every read, write, delete, refusal and
//!   rule change (`audit.rs`; `atna.rs` renders DICOM audit messages).
//!
//! The standalone profile keeps only the first group's generic rules and the audit log: every
//! caller is the one organisation's operator.

mod access;
mod admin;
pub mod atna;
pub mod audit;
pub mod directory;
pub mod documents;
pub mod identity;
mod ingest;
#[cfg(test)]
mod proptests;
pub mod retention;
pub mod search;
pub mod state;
pub mod time;
pub mod validation;

pub use access::Right;
pub use admin::*;
pub use ingest::DocumentsFirst;

use audit::{AuditError, AuditLog, AuditRecord, Outcome};
use directory::{Directory, Identity, Role};
use kuvasto_engine::dicom::metadata::InstanceMetadata;
use kuvasto_engine::dicom::Tag;
use kuvasto_engine::index::attrs::{tags, InstanceAttrs, Level};
use kuvasto_engine::index::catalog::{Hits, InstanceHit, Query};
use kuvasto_engine::index::matching::{MatchOptions, MatchVr, Matcher};
use kuvasto_engine::instances::{DicomError, DuplicatePolicy, InstancePut, PutOutcome};
use kuvasto_engine::{Error as EngineError, Namespace, Object, Store};
use state::State;
use std::sync::Arc;
use validation::{Nomenclature, PatientIdPolicy};

/// Who is asking, as the protocol adapter established it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Arc<Identity>,
    /// The patient a portal identity acts for.
    pub on_behalf_of: Option<String>,
    /// `dicomweb`, `dimse`, `api`, or `cli` (`kuvasto import`).
    pub protocol: &'static str,
    /// Remote address (and AE title for DIMSE, as `AE@address`).
    pub peer: String,
    /// An operator's explicit override for legacy imports (`kuvasto import
    /// --operator-override --register OID`): instances skip documents first and the register
    /// write right, and a new study is placed, linked, in this register (validation still
    /// applies). Only for an operator identity; every instance stored so is audited as
    /// `import-override`.
    pub override_register: Option<String>,
}

impl Caller {
    pub fn organisation(&self) -> &str {
        &self.identity.organisation
    }

    pub fn role(&self) -> Role {
        self.identity.role
    }
}

/// Why one instance was not stored, with the PS3.4 / PS3.18 failure reason code protocols
/// report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
    /// SOP Class and SOP Instance UIDs, when the instance got far enough to name them.
    pub sop: Option<(String, String)>,
    /// The archive itself cannot store now (disk full, store read-only): sending the same
    /// instance later may succeed.
    pub retryable: bool,
}

/// Failure reason codes (PS3.4 Annex B.2.3 C-STORE statuses, PS3.18 10.5.3.3, and the
/// archive rules' own codes in the C-STORE "cannot understand" range, `docs/rules.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// 0110: the archive could not process the instance (I/O, internal error).
    ProcessingFailure,
    /// 0111: the SOP Instance UID is stored with different content.
    DuplicateSopInstance,
    /// 0122: the SOP class is not one this archive stores.
    SopClassNotSupported,
    /// 0124: the caller may not write into the study's register (no control, no valid
    /// authorization) or its role stores nothing.
    NotAuthorized,
    /// A700: out of resources (disk full, store read-only).
    OutOfResources,
    /// A900: the data set does not match what it claims (file meta vs data set, or the
    /// study the request named).
    DataSetMismatch,
    /// C000: the bytes are not a readable DICOM instance.
    CannotUnderstand,
    /// C010: documents first: no request or visit note of this patient for the study.
    DocumentsMissing,
    /// C011: PatientID is neither a valid personal identity code nor an accepted temporary id.
    InvalidPatientId,
    /// C012: StudyDescription does not start with a known examination code.
    InvalidExaminationCode,
    /// C013: the SOP class is not allowed for the examination's content type.
    SopClassNotAllowed,
    /// C014: the study is stored for another patient.
    WrongPatient,
    /// C015: the study was invalidated or expired; it takes no new instances.
    StudyClosed,
}

impl FailureReason {
    /// Every reason, in code order.
    pub const ALL: [FailureReason; 13] = [
        FailureReason::ProcessingFailure,
        FailureReason::DuplicateSopInstance,
        FailureReason::SopClassNotSupported,
        FailureReason::NotAuthorized,
        FailureReason::OutOfResources,
        FailureReason::DataSetMismatch,
        FailureReason::CannotUnderstand,
        FailureReason::DocumentsMissing,
        FailureReason::InvalidPatientId,
        FailureReason::InvalidExaminationCode,
        FailureReason::SopClassNotAllowed,
        FailureReason::WrongPatient,
        FailureReason::StudyClosed,
    ];

    /// The reason of a status code, if it is one of ours.
    pub fn from_code(code: u16) -> Option<FailureReason> {
        FailureReason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// A short name for reports (`C011 invalid PatientID`).
    pub fn name(self) -> &'static str {
        match self {
            FailureReason::ProcessingFailure => "processing failure",
            FailureReason::DuplicateSopInstance => "stored with other content",
            FailureReason::SopClassNotSupported => "SOP class not supported",
            FailureReason::NotAuthorized => "not authorized",
            FailureReason::OutOfResources => "out of resources",
            FailureReason::DataSetMismatch => "data set mismatch",
            FailureReason::CannotUnderstand => "cannot understand",
            FailureReason::DocumentsMissing => "documents missing",
            FailureReason::InvalidPatientId => "invalid PatientID",
            FailureReason::InvalidExaminationCode => "invalid examination code",
            FailureReason::SopClassNotAllowed => "SOP class not allowed",
            FailureReason::WrongPatient => "study of another patient",
            FailureReason::StudyClosed => "study closed",
        }
    }

    pub fn code(self) -> u16 {
        match self {
            FailureReason::ProcessingFailure => 0x0110,
            FailureReason::DuplicateSopInstance => 0x0111,
            FailureReason::SopClassNotSupported => 0x0122,
            FailureReason::NotAuthorized => 0x0124,
            FailureReason::OutOfResources => 0xA700,
            FailureReason::DataSetMismatch => 0xA900,
            FailureReason::CannotUnderstand => 0xC000,
            FailureReason::DocumentsMissing => 0xC010,
            FailureReason::InvalidPatientId => 0xC011,
            FailureReason::InvalidExaminationCode => 0xC012,
            FailureReason::SopClassNotAllowed => 0xC013,
            FailureReason::WrongPatient => 0xC014,
            FailureReason::StudyClosed => 0xC015,
        }
    }
}

impl Failure {
    fn new(reason: FailureReason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
            sop: None,
            retryable: false,
        }
    }

    /// Classifies an engine error met while storing.
    pub fn from_engine(error: &EngineError) -> Failure {
        let reason = match error {
            EngineError::Dicom(
                DicomError::Duplicate { .. } | DicomError::StoredMeanwhile { .. },
            ) => FailureReason::DuplicateSopInstance,
            EngineError::Dicom(DicomError::Mismatch { .. }) => FailureReason::DataSetMismatch,
            EngineError::Dicom(_) => FailureReason::CannotUnderstand,
            EngineError::NoSpace { .. } | EngineError::Poisoned { .. } => {
                FailureReason::OutOfResources
            }
            // Too large for this archive's limits: resending will not help.
            EngineError::Limit { .. } => FailureReason::OutOfResources,
            _ => FailureReason::ProcessingFailure,
        };
        let mut failure = Failure::new(reason, error.to_string());
        failure.retryable = matches!(
            error,
            EngineError::NoSpace { .. } | EngineError::Poisoned { .. }
        );
        failure
    }
}

/// Errors of reads, searches, deletes and the rules' API (per-instance store failures are
/// [`Failure`]s).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    BadQuery(String),
    /// The caller may not do this (the reason names the rule).
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (e.g. releasing a linked study).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A stored (or already present) instance.
#[derive(Debug, Clone)]
pub struct Stored {
    pub attrs: InstanceAttrs,
    pub outcome: PutOutcome,
    pub bytes: u64,
    /// Held in quarantine (documents first): durable, visible to operators only.
    pub quarantined: bool,
}

/// What to delete.
#[derive(Debug, Clone)]
pub enum Scope {
    Study(String),
    Series(String, String),
    Instance(String, String, String),
}

/// Settings of the rules.
#[derive(Debug, Clone)]
pub struct Rules {
    pub duplicates: DuplicatePolicy,
    pub accept_unknown_sop_classes: bool,
    /// National profile: what happens to a study whose documents are not announced.
    pub documents_first: DocumentsFirst,
    /// National profile: validate PatientID, examination code and SOP class per content type.
    pub validate: bool,
    /// The attribute carrying the service event id (an OID) in studies.
    pub service_event_tag: Tag,
    /// AuditSourceID of DICOM audit messages.
    pub audit_source_id: String,
    /// How long studies are kept (`[[retention]]`); empty: forever.
    pub retention: retention::RetentionPolicy,
}

/// See the module documentation.
pub struct Archive {
    store: Arc<Store>,
    rules: Rules,
    directory: Directory,
    state: State,
    audit: AuditLog,
    nomenclature: Nomenclature,
    patient_ids: PatientIdPolicy,
    metrics: Arc<crate::metrics::Metrics>,
}

/// An instance being stored: bytes go straight to the engine as they arrive.
pub struct Upload<'a> {
    put: InstancePut<'a>,
    archive: &'a Archive,
    caller: &'a Caller,
    expected_study: Option<&'a str>,
    bytes: u64,
}

impl Upload<'_> {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.bytes += bytes.len() as u64;
        self.put.write(bytes).map_err(|e| {
            let mut failure = Failure::from_engine(&e);
            failure.sop = self.put.declared_sop();
            self.archive.audit_refusal(self.caller, &failure, "", "");
            failure
        })
    }

    /// Checks the rules and commits; returns once durable (and audited).
    pub fn finish(self) -> Result<Stored, Failure> {
        let archive = self.archive;
        let caller = self.caller;
        let expected_study = self.expected_study;
        let declared = self.put.declared_sop();
        let mut admitted = None;
        let checked = self.put.finish_checked(|attrs| {
            let sop = || Some((attrs.sop_class_uid.clone(), attrs.sop_instance_uid.clone()));
            let admission = archive
                .check_generic(expected_study, attrs)
                .and_then(|()| archive.admit(caller, attrs))
                .map_err(|mut failure| {
                    failure.sop = sop();
                    archive.audit_refusal(
                        caller,
                        &failure,
                        &attrs.patient_id,
                        &attrs.study_instance_uid,
                    );
                    failure
                })?;
            admitted = Some(admission);
            Ok::<(), Failure>(())
        });
        let stored = match checked {
            Ok(Ok(stored)) => stored,
            Ok(Err(failure)) => return Err(failure),
            Err(e) => {
                let failure = Failure {
                    sop: declared,
                    ..Failure::from_engine(&e)
                };
                archive.audit_refusal(caller, &failure, "", "");
                return Err(failure);
            }
        };
        let admission = admitted.unwrap_or_default();
        let attrs = stored.attrs;
        let mut detail = format!(
            "sop_instance={} outcome={:?} bytes={}",
            attrs.sop_instance_uid, stored.outcome, self.bytes
        );
        if admission.overridden && admission.quarantined {
            detail.push_str(" quarantined");
        }
        let action = if admission.overridden {
            "import-override"
        } else if admission.quarantined {
            "quarantine"
        } else {
            "store"
        };
        archive
            .audit(
                caller,
                action,
                Outcome::Success,
                &attrs.patient_id,
                &attrs.study_instance_uid,
                &admission.register,
                detail,
            )
            .map_err(|e| Failure {
                reason: FailureReason::OutOfResources,
                message: format!("the instance is stored but {e}; send it again"),
                sop: Some((attrs.sop_class_uid.clone(), attrs.sop_instance_uid.clone())),
                retryable: true,
            })?;
        let outcome_label = if admission.quarantined {
            "quarantined"
        } else {
            match stored.outcome {
                PutOutcome::Stored => "stored",
                PutOutcome::Identical => "identical",
                PutOutcome::Replaced => "replaced",
            }
        };
        let metrics = archive.metrics();
        metrics.count(
            "kuvasto_ingest_instances_total",
            &[("protocol", caller.protocol), ("outcome", outcome_label)],
            1,
        );
        metrics.count(
            "kuvasto_ingest_bytes_total",
            &[("protocol", caller.protocol)],
            self.bytes,
        );
        if attrs.sop_class_uid == ingest::KEY_OBJECT_SELECTION && !admission.quarantined {
            archive.apply_rejection_note(caller, &attrs);
        }
        Ok(Stored {
            attrs,
            outcome: stored.outcome,
            bytes: self.bytes,
            quarantined: admission.quarantined,
        })
    }
}

/// The standard name of a storage SOP class, `None` if the registry does not list it as one.
pub fn sop_class_name(uid: &str) -> Option<&'static str> {
    use dicom_core::dictionary::UidDictionary;
    let entry = dicom_dictionary_std::StandardSopClassDictionary.by_uid(uid)?;
    // "Storage" names the storage SOP classes; Storage Commitment is a service, not a class
    // of stored objects.
    (entry.name.contains("Storage") && !entry.name.contains("Commitment")).then_some(entry.name)
}

fn uid_filter(tag: Tag, uid: &str) -> Result<(Tag, Matcher), ArchiveError> {
    let matcher = Matcher::parse(MatchVr::Uid, uid, MatchOptions::default())
        .map_err(|e| ArchiveError::BadQuery(e.to_string()))?;
    Ok((tag, matcher))
}

/// The attributes of each hit, whatever the level.
fn hit_attrs(hits: &Hits) -> Box<dyn Iterator<Item = &InstanceAttrs> + '_> {
    match hits {
        Hits::Patients(v) => Box::new(v.iter().map(|h| &h.attrs)),
        Hits::Studies(v) => Box::new(v.iter().map(|h| &h.attrs)),
        Hits::Series(v) => Box::new(v.iter().map(|h| &h.attrs)),
        Hits::Instances(v) => Box::new(v.iter().map(|h| &h.attrs)),
    }
}

/// The `what` of [`Archive::open_instance`] for Storage Commitment's verification.
pub const COMMIT_VERIFY: &str = "commit-verify";

/// Hits the engine is asked for per page while the rules filter a search.
const FILTERED_PAGE_HITS: usize = 1000;
/// Hits a filtered search examines at most before it answers with what it found.
const FILTERED_SCAN_HITS_MAX: usize = 1_000_000;

/// The parts an archive is built from.
pub struct ArchiveParts {
    pub store: Store,
    pub rules: Rules,
    pub directory: Directory,
    pub nomenclature: Nomenclature,
    pub patient_ids: PatientIdPolicy,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Archive {
    /// Reads the rules' state and the audit log's end from the store.
    pub fn open(parts: ArchiveParts) -> Result<Archive, ArchiveError> {
        let store = Arc::new(parts.store);
        let state = State::open(&store)?;
        let audit = AuditLog::open(store.clone())?;
        Ok(Archive {
            store,
            rules: parts.rules,
            directory: parts.directory,
            state,
            audit,
            nomenclature: parts.nomenclature,
            patient_ids: parts.patient_ids,
            metrics: parts.metrics,
        })
    }

    /// The engine, for operator commands.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The rules' records as of the last durable change, for operator reports (`kuvasto
    /// stats`, `kuvasto export`). Rule changes wait while the guard is held: hold it briefly.
    pub fn rules_state(&self) -> std::sync::RwLockReadGuard<'_, state::Maps> {
        self.state.read()
    }

    /// What the archive and its adapters count (`/metrics`).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Stops the audit writer and hands back the store (`None` while other holders remain).
    pub fn into_store(mut self) -> Option<Store> {
        self.audit.close();
        Arc::try_unwrap(self.store).ok()
    }

    /// Writes one audit record (durable before this returns) and its log line.
    #[allow(clippy::too_many_arguments)]
    pub fn audit(
        &self,
        caller: &Caller,
        action: &str,
        outcome: Outcome,
        patient: &str,
        study: &str,
        register: &str,
        detail: String,
    ) -> Result<u64, AuditError> {
        tracing::info!(
            target: "audit",
            action,
            outcome = ?outcome,
            organisation = %caller.identity.organisation,
            system = %caller.identity.id,
            protocol = caller.protocol,
            peer = %caller.peer,
            patient,
            study,
            register,
            detail = %detail,
        );
        self.audit.record(AuditRecord {
            seq: 0,
            time_unix_ms: time::now_ms(),
            organisation: caller.identity.organisation.clone(),
            system: caller.identity.id.clone(),
            role: caller.identity.role.name().to_string(),
            on_behalf_of: caller.on_behalf_of.clone().unwrap_or_default(),
            protocol: caller.protocol.to_string(),
            peer: caller.peer.clone(),
            action: action.to_string(),
            outcome,
            patient: patient.to_string(),
            study: study.to_string(),
            register: register.to_string(),
            detail,
        })
    }

    fn audit_refusal(&self, caller: &Caller, failure: &Failure, patient: &str, study: &str) {
        self.metrics.count(
            "kuvasto_ingest_refusals_total",
            &[
                ("protocol", caller.protocol),
                ("reason", &format!("{:04X}", failure.reason.code())),
            ],
            1,
        );
        let detail = format!(
            "sop_instance={} reason={:04X} {}",
            failure.sop.as_ref().map_or("", |(_, i)| i.as_str()),
            failure.reason.code(),
            failure.message
        );
        // The refusal stands whether or not its record could be written.
        if let Err(e) = self.audit(
            caller,
            "store-refused",
            Outcome::Refused,
            patient,
            study,
            "",
            detail,
        ) {
            tracing::error!(error = %e, "a refusal could not be audited");
        }
    }

    /// Starts storing one instance; `expected_study` is the study a request named.
    pub fn begin_store<'a>(
        &'a self,
        caller: &'a Caller,
        expected_study: Option<&'a str>,
    ) -> Upload<'a> {
        Upload {
            put: self
                .store
                .put_instance()
                .on_duplicate(self.rules.duplicates),
            archive: self,
            caller,
            expected_study,
            bytes: 0,
        }
    }

    /// Whether the caller may read a study: the rules' decision, or the reason why not.
    /// Studies the rules do not know (stored before the national profile was switched on)
    /// are for operators only.
    pub fn may_read_study(&self, caller: &Caller, study: &str) -> Result<(), String> {
        if self.directory.is_standalone() {
            return Ok(());
        }
        let maps = self.state.read();
        match maps.studies.get(study) {
            Some(record) => access::may_read_study(
                &self.directory,
                &maps,
                &caller.identity,
                caller.on_behalf_of.as_deref(),
                record,
                time::now_ms(),
            ),
            None if caller.role() == Role::Operator => Ok(()),
            None => Err(format!(
                "study {study} has no register in this archive; only operators read it"
            )),
        }
    }

    /// The register a study is stored in (empty when the rules do not know it or it awaits
    /// its documents).
    fn register_of(&self, study: &str) -> String {
        self.state
            .read()
            .studies
            .get(study)
            .map(|s| s.register.clone())
            .unwrap_or_default()
    }

    /// Whether the rules filter what this caller finds (everything visible otherwise).
    fn filters_reads(&self, caller: &Caller) -> bool {
        !(self.directory.is_standalone() || caller.role() == Role::Operator)
            || !self.state.read().hidden.is_empty()
    }

    /// Whether one hit of a search is visible to the caller.
    fn hit_visible(&self, caller: &Caller, attrs: &InstanceAttrs, level: Level) -> bool {
        match level {
            Level::Patient => {
                if self.directory.is_standalone() || caller.role() == Role::Operator {
                    return true;
                }
                let studies: Vec<String> = self
                    .state
                    .read()
                    .studies_by_patient
                    .get(&attrs.patient_id)
                    .cloned()
                    .unwrap_or_default();
                studies
                    .iter()
                    .any(|s| self.may_read_study(caller, s).is_ok())
            }
            Level::Instance => {
                !self
                    .state
                    .read()
                    .hidden
                    .contains_key(&attrs.sop_instance_uid)
                    && self
                        .may_read_study(caller, &attrs.study_instance_uid)
                        .is_ok()
            }
            Level::Study | Level::Series => self
                .may_read_study(caller, &attrs.study_instance_uid)
                .is_ok(),
        }
    }

    /// The engine's answer to `query`, keeping only what the caller may see (offset and limit
    /// count visible hits).
    fn visible_hits(&self, caller: &Caller, query: &Query) -> Result<Hits, ArchiveError> {
        if !self.filters_reads(caller) {
            return Ok(self.store.query(query)?);
        }
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut page = query.clone();
        page.offset = 0;
        page.limit = Some(FILTERED_PAGE_HITS);
        let mut skipped = 0;
        let mut out: Option<Hits> = None;
        let mut kept = 0;
        let mut scanned = 0;
        loop {
            let hits = self.store.query(&page)?;
            let n = hits.len();
            scanned += n;
            macro_rules! keep {
                ($variant:ident, $v:expr) => {{
                    let mut kept_here = Vec::new();
                    for hit in $v {
                        if kept >= limit {
                            break;
                        }
                        if !self.hit_visible(caller, &hit.attrs, query.level) {
                            continue;
                        }
                        if skipped < query.offset {
                            skipped += 1;
                            continue;
                        }
                        kept += 1;
                        kept_here.push(hit);
                    }
                    match &mut out {
                        Some(Hits::$variant(all)) => all.extend(kept_here),
                        _ => out = Some(Hits::$variant(kept_here)),
                    }
                }};
            }
            match hits {
                Hits::Patients(v) => keep!(Patients, v),
                Hits::Studies(v) => keep!(Studies, v),
                Hits::Series(v) => keep!(Series, v),
                Hits::Instances(v) => keep!(Instances, v),
            }
            if n < FILTERED_PAGE_HITS || kept >= limit || scanned >= FILTERED_SCAN_HITS_MAX {
                break;
            }
            page.offset += n;
        }
        Ok(out.unwrap_or(Hits::Instances(Vec::new())))
    }

    /// Answers a query from the catalog, with only what the caller may see (audited).
    pub fn search(&self, caller: &Caller, query: &Query) -> Result<Hits, ArchiveError> {
        let hits = self.visible_hits(caller, query)?;
        self.audit_search(caller, query.level, query.filters.len(), hit_attrs(&hits))?;
        Ok(hits)
    }

    /// The search's audit record. Its patient (and study) are the hits' when they are all
    /// one patient's (one study's), so the search shows in that patient's access list; a
    /// search across patients names how many it touched.
    fn audit_search<'h>(
        &self,
        caller: &Caller,
        level: Level,
        filters: usize,
        hits: impl Iterator<Item = &'h InstanceAttrs>,
    ) -> Result<(), ArchiveError> {
        let (mut patients, mut studies) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        let mut count = 0;
        for attrs in hits {
            count += 1;
            patients.insert(attrs.patient_id.as_str());
            if level != Level::Patient {
                studies.insert(attrs.study_instance_uid.as_str());
            }
        }
        fn one<'a>(set: &std::collections::BTreeSet<&'a str>) -> Option<&'a str> {
            if set.len() == 1 {
                set.iter().next().copied()
            } else {
                None
            }
        }
        let patient = one(&patients)
            .or(caller.on_behalf_of.as_deref())
            .unwrap_or("");
        self.audit(
            caller,
            "search",
            Outcome::Success,
            patient,
            one(&studies).unwrap_or(""),
            "",
            format!(
                "level={level:?} filters={filters} hits={count} patients={}",
                patients.len()
            ),
        )?;
        Ok(())
    }

    /// Every instance of a study, a series or one instance (all pages), in catalog order,
    /// that the caller may see, for `what` (the audited action). A study the caller may not
    /// read is [`ArchiveError::Denied`] (audited); a study with nothing visible is an empty
    /// list.
    pub fn instances(
        &self,
        caller: &Caller,
        what: &'static str,
        study: &str,
        series: Option<&str>,
        instance: Option<&str>,
    ) -> Result<Vec<InstanceHit>, ArchiveError> {
        let mut filters = vec![uid_filter(tags::STUDY_INSTANCE_UID, study)?];
        if let Some(series) = series {
            filters.push(uid_filter(tags::SERIES_INSTANCE_UID, series)?);
        }
        if let Some(instance) = instance {
            filters.push(uid_filter(tags::SOP_INSTANCE_UID, instance)?);
        }
        let hits = self.all_instances(Query {
            level: Level::Instance,
            filters,
            offset: 0,
            limit: None,
        })?;
        if hits.is_empty() {
            return Ok(hits);
        }
        if let Err(reason) = self.may_read_study(caller, study) {
            let patient = hits[0].attrs.patient_id.clone();
            self.audit(
                caller,
                what,
                Outcome::Refused,
                &patient,
                study,
                "",
                reason.clone(),
            )?;
            return Err(ArchiveError::Denied(reason));
        }
        let hidden = &self.state.read().hidden;
        Ok(hits
            .into_iter()
            .filter(|h| !hidden.contains_key(&h.attrs.sop_instance_uid))
            .collect())
    }

    /// Every instance an instance-level query matches (all pages) that the caller may see,
    /// audited once as a search.
    pub fn search_instances(
        &self,
        caller: &Caller,
        query: Query,
    ) -> Result<Vec<InstanceHit>, ArchiveError> {
        let filters = query.filters.len();
        let filtered = self.filters_reads(caller);
        let hits: Vec<InstanceHit> = self
            .all_instances(query)?
            .into_iter()
            .filter(|h| !filtered || self.hit_visible(caller, &h.attrs, Level::Instance))
            .collect();
        self.audit_search(
            caller,
            Level::Instance,
            filters,
            hits.iter().map(|h| &h.attrs),
        )?;
        Ok(hits)
    }

    /// Pages through an instance-level query to its end.
    fn all_instances(&self, mut query: Query) -> Result<Vec<InstanceHit>, ArchiveError> {
        if query.level != Level::Instance {
            return Err(ArchiveError::BadQuery(
                "only instance queries list instances".into(),
            ));
        }
        let mut out = Vec::new();
        loop {
            query.offset = out.len();
            let Hits::Instances(page) = self.store.query(&query)? else {
                return Err(ArchiveError::BadQuery(
                    "instance query answered another level".into(),
                ));
            };
            let done = page.is_empty();
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// The object and metadata record of an instance, for retrieval, when the caller may
    /// read it (audited either way; `Denied` names the rule).
    pub fn open_instance(
        &self,
        caller: &Caller,
        sop_instance_uid: &str,
        what: &'static str,
    ) -> Result<Option<(Object, InstanceMetadata)>, ArchiveError> {
        let Some(object) = self
            .store
            .get(Namespace::OBJECT, sop_instance_uid.as_bytes())?
        else {
            return Ok(None);
        };
        let Some(metadata) = self.store.instance_metadata(sop_instance_uid)? else {
            return Ok(None);
        };
        if metadata.object_seq != object.seq {
            return Ok(None); // replaced meanwhile; the caller's listing is stale
        }
        if self.state.read().hidden.contains_key(sop_instance_uid) {
            return Ok(None);
        }
        let attrs = &metadata.attrs;
        let register = self.register_of(&attrs.study_instance_uid);
        let allowed = self
            .may_read_study(caller, &attrs.study_instance_uid)
            .or_else(|reason| {
                // Storage Commitment: the organisation that stored a study may have its
                // instances verified even while they wait in quarantine.
                let producer = self
                    .state
                    .read()
                    .studies
                    .get(&attrs.study_instance_uid)
                    .is_some_and(|s| s.producer == caller.organisation());
                if what == COMMIT_VERIFY && producer {
                    Ok(())
                } else {
                    Err(reason)
                }
            });
        if let Err(reason) = allowed {
            self.audit(
                caller,
                what,
                Outcome::Refused,
                &attrs.patient_id,
                &attrs.study_instance_uid,
                &register,
                format!("sop_instance={sop_instance_uid} {reason}"),
            )?;
            return Err(ArchiveError::Denied(reason));
        }
        self.audit(
            caller,
            what,
            Outcome::Success,
            &attrs.patient_id,
            &attrs.study_instance_uid,
            &register,
            format!("sop_instance={sop_instance_uid}"),
        )?;
        self.metrics.count(
            "kuvasto_retrieve_instances_total",
            &[("protocol", caller.protocol), ("action", what)],
            1,
        );
        self.metrics.count(
            "kuvasto_retrieve_bytes_total",
            &[("protocol", caller.protocol)],
            object.len,
        );
        Ok(Some((object, metadata)))
    }

    /// The metadata record of an instance (no audit record: callers audit the request, and
    /// check access through [`Archive::instances`] first).
    pub fn metadata(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<InstanceMetadata>, ArchiveError> {
        Ok(self.store.instance_metadata(sop_instance_uid)?)
    }

    /// Deletes a study, series or instance; returns how many instances were deleted. In the
    /// national profile only operators delete (deletion is by rule or by correction).
    pub fn delete(&self, caller: &Caller, scope: Scope) -> Result<usize, ArchiveError> {
        let (study, series, sop) = match &scope {
            Scope::Study(study) => (study, None, None),
            Scope::Series(study, series) => (study, Some(series.as_str()), None),
            Scope::Instance(study, series, sop) => {
                (study, Some(series.as_str()), Some(sop.as_str()))
            }
        };
        if caller.role() != Role::Operator {
            let reason = "only an operator deletes instances (deletion is by rule or correction)";
            self.audit(
                caller,
                "delete",
                Outcome::Refused,
                "",
                study,
                "",
                format!("scope={scope:?} {reason}"),
            )?;
            return Err(ArchiveError::Denied(reason.into()));
        }
        let hits = self.instances(caller, "delete", study, series, sop)?;
        let mut deleted = 0;
        for hit in &hits {
            if self
                .store
                .delete_instance(&hit.attrs.sop_instance_uid)?
                .is_some()
            {
                deleted += 1;
            }
        }
        let patient = hits.first().map(|h| h.attrs.patient_id.clone());
        self.audit(
            caller,
            "delete",
            Outcome::Success,
            patient.as_deref().unwrap_or(""),
            study,
            "",
            format!("scope={scope:?} instances={deleted}"),
        )?;
        Ok(deleted)
    }
}
