//! The rules' own operations, which the HTTP API (`docs/api.md`) exposes: documents announced
//! by the patient data repository (and the release of studies waiting for them),
//! purchased-service authorizations, disclosure prohibitions, quarantine, study invalidation
//! and restoration, hidden instances, the audit log and the patient view. Each checks the
//! caller's role, changes the state durably and writes its audit record.

use super::access::{register_right, Right};
use super::audit::{self, AuditFilter, AuditRecord, Outcome};
use super::documents::{self, Document, DocumentKind};
use super::state::{
    Authorization, Change, DocumentRecord, Hidden, Maps, Prohibition, StudyRecord, StudyState,
    RECORD_VERSION,
};
use super::{time, Archive, ArchiveError, Caller, Role};
use kuvasto_engine::index::attrs::{tags, Level};
use kuvasto_engine::index::catalog::{Hits, Query};
use kuvasto_engine::Namespace;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// What announcing a document did.
#[derive(Debug, Clone, Serialize)]
pub struct DocumentOutcome {
    pub id: String,
    /// Quarantined studies now linked and visible.
    pub released: Vec<String>,
    /// Quarantined studies this document matches that stay held, with the reason.
    pub held: Vec<(String, String)>,
}

/// A new authorization, as the API takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRequest {
    pub register: String,
    pub producer: String,
    /// RFC 3339 instant or date; default now.
    #[serde(default)]
    pub valid_from: Option<String>,
    pub valid_until: String,
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub patients: Vec<String>,
    #[serde(default)]
    pub service_events: Vec<String>,
}

/// A study correction, as the API takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrectionRequest {
    /// The service event (OID) whose request or visit note the study belongs to.
    pub service_event: String,
    pub reason: String,
}

/// A study in quarantine, for operators.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantinedStudy {
    pub study: String,
    pub patient: String,
    pub producer: String,
    pub producer_system: String,
    pub service_event: String,
    pub accession: String,
    pub reason: String,
    pub since: String,
    pub instances: usize,
}

/// One study in the patient view.
#[derive(Debug, Clone, Serialize)]
pub struct PatientStudy {
    pub study: String,
    pub date: String,
    pub modalities: String,
    pub examination_code: String,
    pub examination_name: String,
    pub description: String,
    pub organisation: String,
    pub organisation_name: String,
    pub register: String,
    pub register_controller: String,
    pub documents: Vec<PatientDocument>,
}

/// A document linked to a study in the patient view.
#[derive(Debug, Clone, Serialize)]
pub struct PatientDocument {
    pub id: String,
    pub kind: DocumentKind,
    pub status: documents::DocumentStatus,
    pub time: String,
    pub author_organisation: String,
    pub has_content: bool,
}

/// One access to the patient's data.
#[derive(Debug, Clone, Serialize)]
pub struct PatientAccess {
    pub time: String,
    pub organisation: String,
    pub organisation_name: String,
    pub system: String,
    pub role: String,
    pub action: String,
    pub outcome: Outcome,
    pub study: String,
}

/// What the patient portal shows a patient.
#[derive(Debug, Clone, Serialize)]
pub struct PatientView {
    pub patient: String,
    pub disclosure_prohibited: bool,
    pub studies: Vec<PatientStudy>,
    pub accesses: Vec<PatientAccess>,
}

/// Audit records a patient view lists, at most.
const PATIENT_VIEW_ACCESSES_MAX: usize = 10_000;

fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{:x}-{:x}",
        time::now_ms(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub(super) fn require(caller: &Caller, roles: &[Role], what: &str) -> Result<(), ArchiveError> {
    if roles.contains(&caller.role()) {
        Ok(())
    } else {
        Err(ArchiveError::Denied(format!(
            "a {} identity may not {what}",
            caller.role().name()
        )))
    }
}

/// The quarantined studies of `patient` a document with these keys releases.
fn matches_document(record: &StudyRecord, document: &Document) -> bool {
    (!document.service_event_id.is_empty() && record.service_event == document.service_event_id)
        || (!document.accession_number.is_empty() && record.accession == document.accession_number)
        || (!document.study_instance_uid.is_empty() && record.study == document.study_instance_uid)
}

impl Archive {
    /// Writes an audit record for an API operation and turns a refusal into `Denied`.
    fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        patient: &str,
        study: &str,
        register: &str,
        result: Result<(T, String), ArchiveError>,
    ) -> Result<T, ArchiveError> {
        match result {
            Ok((value, detail)) => {
                self.audit(
                    caller,
                    action,
                    Outcome::Success,
                    patient,
                    study,
                    register,
                    detail,
                )?;
                Ok(value)
            }
            Err(e) => {
                let outcome = match e {
                    ArchiveError::Denied(_) => Outcome::Refused,
                    ArchiveError::BadQuery(_)
                    | ArchiveError::NotFound(_)
                    | ArchiveError::Conflict(_) => Outcome::Refused,
                    _ => Outcome::Failed,
                };
                self.audit(
                    caller,
                    action,
                    outcome,
                    patient,
                    study,
                    register,
                    e.to_string(),
                )?;
                Err(e)
            }
        }
    }

    /// Links a quarantined study to `document` if its producer may write the document's
    /// register: the changed record, or why it stays held.
    fn try_release(
        &self,
        maps: &Maps,
        record: &StudyRecord,
        document: &Document,
        now: i64,
    ) -> Result<StudyRecord, String> {
        let service_event = if record.service_event.is_empty() {
            &document.service_event_id
        } else {
            &record.service_event
        };
        register_right(
            &self.directory,
            maps,
            &record.producer,
            &document.register,
            Right::Write,
            &record.patient,
            service_event,
            now,
        )?;
        let mut released = record.clone();
        released.register = document.register.clone();
        if released.service_event.is_empty() {
            released.service_event = document.service_event_id.clone();
        }
        released.documents.push(document.id.clone());
        released.state = StudyState::Linked;
        released.changed_ms = now;
        Ok(released)
    }

    /// Announces a document (FHIR DocumentReference JSON, `docs/api.md`); releases the
    /// quarantined studies it links.
    pub fn register_document(
        &self,
        caller: &Caller,
        body: &[u8],
    ) -> Result<DocumentOutcome, ArchiveError> {
        let parsed = require(
            caller,
            &[Role::Registry, Role::Operator],
            "announce documents",
        )
        .and_then(|()| {
            documents::parse_document(body).map_err(|e| ArchiveError::BadQuery(e.to_string()))
        });
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => return self.audited(caller, "document-register", "", "", "", Err(e)),
        };
        let document = parsed.document;
        let (patient, register) = (document.patient_id.clone(), document.register.clone());
        let result = self.register_parsed(caller, document, parsed.content);
        let outcome = self.audited(caller, "document-register", &patient, "", &register, result)?;
        for study in &outcome.released {
            self.audit(
                caller,
                "release",
                Outcome::Success,
                &patient,
                study,
                &register,
                format!("document={}", outcome.id),
            )?;
        }
        Ok(outcome)
    }

    fn register_parsed(
        &self,
        caller: &Caller,
        document: Document,
        content: Option<Vec<u8>>,
    ) -> Result<(DocumentOutcome, String), ArchiveError> {
        if self.directory.controller_of(&document.register).is_none() {
            return Err(ArchiveError::BadQuery(format!(
                "custodian.identifier.value: register {} is not known to this archive",
                document.register
            )));
        }
        if self.rules.validate
            && document.patient_id_system == documents::PERSONAL_IDENTITY_CODE_SYSTEM
        {
            super::validation::validate_patient_id(&self.patient_ids, &document.patient_id)
                .map_err(|e| ArchiveError::BadQuery(format!("subject.identifier.value: {e}")))?;
        }
        if let Some(bytes) = &content {
            self.store
                .put(Namespace::DOCUMENT, document.id.as_bytes(), bytes)?;
        }
        let now = time::now_ms();
        let record = DocumentRecord {
            v: RECORD_VERSION,
            // Announced again without content: the content stored earlier stays.
            has_content: content.is_some()
                || self
                    .state
                    .read()
                    .documents
                    .get(&document.id)
                    .is_some_and(|d| d.has_content),
            document: document.clone(),
            announced_by: format!("{}/{}", caller.organisation(), caller.identity.id),
            announced_ms: now,
        };
        let links = matches!(
            document.kind,
            DocumentKind::Request | DocumentKind::VisitNote
        ) && document.status != documents::DocumentStatus::Invalidated;
        let outcome = self.state.change(&self.store, |maps| {
            let mut changes = vec![Change::Document(record)];
            let mut outcome = DocumentOutcome {
                id: document.id.clone(),
                released: Vec::new(),
                held: Vec::new(),
            };
            if links {
                for study in maps
                    .studies_by_patient
                    .get(&document.patient_id)
                    .into_iter()
                    .flatten()
                {
                    let Some(record) = maps.studies.get(study) else {
                        continue;
                    };
                    if !matches!(record.state, StudyState::Quarantined { .. })
                        || !matches_document(record, &document)
                    {
                        continue;
                    }
                    match self.try_release(maps, record, &document, now) {
                        Ok(released) => {
                            outcome.released.push(study.clone());
                            changes.push(Change::Study(released));
                        }
                        Err(reason) => {
                            let mut held = record.clone();
                            held.state = StudyState::Quarantined {
                                reason: format!("documents arrived, but {reason}"),
                                since_ms: match &record.state {
                                    StudyState::Quarantined { since_ms, .. } => *since_ms,
                                    _ => now,
                                },
                            };
                            outcome.held.push((study.clone(), reason));
                            changes.push(Change::Study(held));
                        }
                    }
                }
            }
            (changes, outcome)
        })?;
        let detail = format!(
            "document={} kind={:?} status={:?} released={} held={}",
            document.id,
            document.kind,
            document.status,
            outcome.released.len(),
            outcome.held.len()
        );
        Ok((outcome, detail))
    }

    /// Whether the caller may read what a register holds for a patient (documents): the
    /// same rules as for studies.
    fn may_read_register(
        &self,
        caller: &Caller,
        maps: &Maps,
        register: &str,
        patient: &str,
        service_event: &str,
    ) -> Result<(), String> {
        if self.directory.is_standalone() {
            return Ok(());
        }
        match caller.role() {
            Role::Operator | Role::Registry => Ok(()),
            Role::Portal => (caller.on_behalf_of.as_deref() == Some(patient))
                .then_some(())
                .ok_or_else(|| {
                    "the document is not the data of the patient the portal acts for".into()
                }),
            Role::System => {
                let controller = self.directory.controller_of(register).unwrap_or_default();
                if maps.prohibitions.contains_key(patient) && controller != caller.organisation() {
                    return Err(format!(
                        "the patient has prohibited disclosure: only the controller {controller} reads this"
                    ));
                }
                register_right(
                    &self.directory,
                    maps,
                    caller.organisation(),
                    register,
                    Right::Read,
                    patient,
                    service_event,
                    time::now_ms(),
                )
                .map(|_| ())
            }
        }
    }

    /// A document's registration and, when asked for, its content.
    pub fn document(
        &self,
        caller: &Caller,
        id: &str,
        with_content: bool,
    ) -> Result<(Document, Option<Vec<u8>>), ArchiveError> {
        let found = self.state.read().documents.get(id).cloned();
        let Some(record) = found else {
            return Err(ArchiveError::NotFound(format!("no document {id}")));
        };
        let d = &record.document;
        let result = self
            .may_read_register(
                caller,
                &self.state.read(),
                &d.register,
                &d.patient_id,
                &d.service_event_id,
            )
            .map_err(ArchiveError::Denied)
            .and_then(|()| {
                let content = match (with_content, record.has_content) {
                    (false, _) => None,
                    (true, false) => {
                        return Err(ArchiveError::NotFound(format!(
                            "document {id} has no content"
                        )))
                    }
                    (true, true) => Some(
                        self.store
                            .get(Namespace::DOCUMENT, id.as_bytes())?
                            .ok_or_else(|| {
                                ArchiveError::NotFound(format!("document {id}'s content is gone"))
                            })?
                            .read_all()?,
                    ),
                };
                Ok(((record.document.clone(), content), format!("document={id}")))
            });
        self.audited(
            caller,
            "document-read",
            &d.patient_id,
            &d.study_instance_uid,
            &d.register,
            result,
        )
    }

    /// Whether a document was announced with content (no access check: the caller has
    /// just read the registration through [`Archive::document`]).
    pub fn document_has_content(&self, id: &str) -> bool {
        self.state
            .read()
            .documents
            .get(id)
            .is_some_and(|d| d.has_content)
    }

    /// Creates an authorization: the caller's organisation must control the register
    /// (operators may create for any register, in its controller's name).
    pub fn create_authorization(
        &self,
        caller: &Caller,
        request: AuthorizationRequest,
    ) -> Result<Authorization, ArchiveError> {
        let register = request.register.clone();
        let result = (|| {
            require(
                caller,
                &[Role::System, Role::Operator],
                "manage authorizations",
            )?;
            let controller = self
                .directory
                .controller_of(&register)
                .ok_or_else(|| {
                    ArchiveError::BadQuery(format!(
                        "register {register} is not known to this archive"
                    ))
                })?
                .to_string();
            if caller.role() != Role::Operator && controller != caller.organisation() {
                return Err(ArchiveError::Denied(format!(
                    "organisation {} does not control register {register} (controller {controller})",
                    caller.organisation()
                )));
            }
            if self.directory.organisation(&request.producer).is_none() {
                return Err(ArchiveError::BadQuery(format!(
                    "producer {} is not an organisation known to this archive",
                    request.producer
                )));
            }
            if request.producer == controller {
                return Err(ArchiveError::BadQuery(
                    "the controller needs no authorization for its own register".into(),
                ));
            }
            if !request.read && !request.write {
                return Err(ArchiveError::BadQuery(
                    "an authorization grants read, write or both".into(),
                ));
            }
            let now = time::now_ms();
            let valid_from_ms = match &request.valid_from {
                Some(t) => time::parse_ms(t)
                    .map_err(|e| ArchiveError::BadQuery(format!("valid_from: {e}")))?,
                None => now,
            };
            let valid_until_ms = time::parse_ms(&request.valid_until)
                .map_err(|e| ArchiveError::BadQuery(format!("valid_until: {e}")))?;
            if valid_until_ms <= valid_from_ms {
                return Err(ArchiveError::BadQuery(
                    "valid_until must be after valid_from".into(),
                ));
            }
            let authorization = Authorization {
                v: RECORD_VERSION,
                id: new_id("authz"),
                organiser: controller,
                register: register.clone(),
                producer: request.producer.clone(),
                valid_from_ms,
                valid_until_ms,
                read: request.read,
                write: request.write,
                patients: request.patients.clone(),
                service_events: request.service_events.clone(),
                created_by: format!("{}/{}", caller.organisation(), caller.identity.id),
                created_ms: now,
                revoked_by: String::new(),
                revoked_ms: None,
            };
            let a = authorization.clone();
            self.state
                .change(&self.store, |_| (vec![Change::Authorization(a)], ()))?;
            let detail = format!(
                "authorization={} producer={} read={} write={} from={} until={}",
                authorization.id,
                authorization.producer,
                authorization.read,
                authorization.write,
                time::format_ms(valid_from_ms),
                time::format_ms(valid_until_ms)
            );
            Ok((authorization, detail))
        })();
        self.audited(caller, "authorization-create", "", "", &register, result)
    }

    /// The authorizations the caller's organisation granted or holds (operators: all).
    pub fn authorizations(&self, caller: &Caller) -> Result<Vec<Authorization>, ArchiveError> {
        require(
            caller,
            &[Role::System, Role::Operator],
            "list authorizations",
        )?;
        let org = caller.organisation();
        Ok(self
            .state
            .read()
            .authorizations
            .values()
            .filter(|a| caller.role() == Role::Operator || a.organiser == org || a.producer == org)
            .cloned()
            .collect())
    }

    /// Revokes an authorization at once (its organiser or an operator).
    pub fn revoke_authorization(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Authorization, ArchiveError> {
        let found = self.state.read().authorizations.get(id).cloned();
        let register = found
            .as_ref()
            .map(|a| a.register.clone())
            .unwrap_or_default();
        let result = (|| {
            require(
                caller,
                &[Role::System, Role::Operator],
                "manage authorizations",
            )?;
            let Some(mut a) = found else {
                return Err(ArchiveError::NotFound(format!("no authorization {id}")));
            };
            if caller.role() != Role::Operator && a.organiser != caller.organisation() {
                return Err(ArchiveError::Denied(format!(
                    "only the organiser {} revokes authorization {id}",
                    a.organiser
                )));
            }
            if a.revoked_ms.is_some() {
                return Err(ArchiveError::Conflict(format!(
                    "authorization {id} is already revoked"
                )));
            }
            a.revoked_ms = Some(time::now_ms());
            a.revoked_by = format!("{}/{}", caller.organisation(), caller.identity.id);
            let changed = a.clone();
            self.state
                .change(&self.store, |_| (vec![Change::Authorization(changed)], ()))?;
            Ok((a, format!("authorization={id}")))
        })();
        self.audited(caller, "authorization-revoke", "", "", &register, result)
    }

    /// Sets or clears a patient's disclosure prohibition (the portal for its patient, or an
    /// operator); the prohibition in force afterwards.
    pub fn set_prohibition(
        &self,
        caller: &Caller,
        patient: &str,
        prohibited: bool,
    ) -> Result<Option<Prohibition>, ArchiveError> {
        let action = if prohibited {
            "prohibition-set"
        } else {
            "prohibition-clear"
        };
        let result = (|| {
            match caller.role() {
                Role::Operator => {}
                Role::Portal if caller.on_behalf_of.as_deref() == Some(patient) => {}
                Role::Portal => {
                    return Err(ArchiveError::Denied(
                        "the portal sets prohibitions only for the patient it acts for".into(),
                    ))
                }
                _ => {
                    return Err(ArchiveError::Denied(format!(
                        "a {} identity may not change disclosure prohibitions",
                        caller.role().name()
                    )))
                }
            }
            let by = format!("{}/{}", caller.organisation(), caller.identity.id);
            let was = self.state.read().prohibitions.contains_key(patient);
            let change = if prohibited {
                Change::Prohibition(Prohibition {
                    v: RECORD_VERSION,
                    patient: patient.to_string(),
                    set_by: by,
                    set_ms: time::now_ms(),
                })
            } else {
                Change::ClearProhibition(patient.to_string())
            };
            if was != prohibited {
                self.state.change(&self.store, |_| (vec![change], ()))?;
            }
            let now = self.state.read().prohibitions.get(patient).cloned();
            Ok((now, format!("was={was}")))
        })();
        self.audited(caller, action, patient, "", "", result)
    }

    /// Whether a patient's disclosure is prohibited (the portal for its patient, operators).
    pub fn prohibition(
        &self,
        caller: &Caller,
        patient: &str,
    ) -> Result<Option<Prohibition>, ArchiveError> {
        let result = match caller.role() {
            Role::Operator => Ok(()),
            Role::Portal if caller.on_behalf_of.as_deref() == Some(patient) => Ok(()),
            _ => Err(ArchiveError::Denied(
                "only the patient's portal and operators read prohibitions".into(),
            )),
        }
        .map(|()| {
            let p = self.state.read().prohibitions.get(patient).cloned();
            let detail = format!("prohibited={}", p.is_some());
            (p, detail)
        });
        self.audited(caller, "prohibition-read", patient, "", "", result)
    }

    fn study_instance_count(&self, study: &str) -> Result<usize, ArchiveError> {
        let query = Query {
            level: Level::Instance,
            filters: vec![super::uid_filter(tags::STUDY_INSTANCE_UID, study)?],
            offset: 0,
            limit: None,
        };
        Ok(self.all_instances(query)?.len())
    }

    /// The studies in quarantine (operators).
    pub fn quarantine(&self, caller: &Caller) -> Result<Vec<QuarantinedStudy>, ArchiveError> {
        let result = require(caller, &[Role::Operator], "list the quarantine").and_then(|()| {
            let held: Vec<StudyRecord> = self
                .state
                .read()
                .studies
                .values()
                .filter(|s| matches!(s.state, StudyState::Quarantined { .. }))
                .cloned()
                .collect();
            let mut out = Vec::new();
            for s in held {
                let StudyState::Quarantined { reason, since_ms } = &s.state else {
                    continue;
                };
                out.push(QuarantinedStudy {
                    instances: self.study_instance_count(&s.study)?,
                    study: s.study.clone(),
                    patient: s.patient.clone(),
                    producer: s.producer.clone(),
                    producer_system: s.producer_system.clone(),
                    service_event: s.service_event.clone(),
                    accession: s.accession.clone(),
                    reason: reason.clone(),
                    since: time::format_ms(*since_ms),
                });
            }
            out.sort_by(|a, b| a.since.cmp(&b.since).then(a.study.cmp(&b.study)));
            let detail = format!("studies={}", out.len());
            Ok((out, detail))
        });
        self.audited(caller, "quarantine-list", "", "", "", result)
    }

    /// An operator's operation on one study the rules know: the role check, the operation
    /// (given the study's record; it returns its answer and the audit detail), and the audit
    /// record either way.
    fn study_operation<T>(
        &self,
        caller: &Caller,
        study: &str,
        action: &str,
        what: &str,
        operation: impl FnOnce(StudyRecord) -> Result<(T, String), ArchiveError>,
    ) -> Result<T, ArchiveError> {
        let record = self.study_record(study);
        let patient = record
            .as_ref()
            .map(|r| r.patient.clone())
            .unwrap_or_default();
        let result = require(caller, &[Role::Operator], what).and_then(|()| operation(record?));
        self.audited(caller, action, &patient, study, "", result)
    }

    fn study_record(&self, study: &str) -> Result<StudyRecord, ArchiveError> {
        self.state
            .read()
            .studies
            .get(study)
            .cloned()
            .ok_or_else(|| ArchiveError::NotFound(format!("the rules know no study {study}")))
    }

    /// Tries to link a quarantined study now (operators): to its announced documents, under
    /// its producer's write right.
    pub fn release(&self, caller: &Caller, study: &str) -> Result<StudyRecord, ArchiveError> {
        self.study_operation(caller, study, "release", "release studies", |record| {
            if !matches!(record.state, StudyState::Quarantined { .. }) {
                return Err(ArchiveError::Conflict(format!(
                    "study {study} is not in quarantine"
                )));
            }
            let now = time::now_ms();
            let released = self.state.change(&self.store, |maps| {
                let linking = maps.linking_documents(
                    &record.patient,
                    &record.service_event,
                    &record.accession,
                    study,
                );
                let mut reasons = Vec::new();
                for d in linking {
                    match self.try_release(maps, &record, &d.document, now) {
                        Ok(released) => {
                            return (vec![Change::Study(released.clone())], Ok(released))
                        }
                        Err(reason) => reasons.push(reason),
                    }
                }
                let why = if reasons.is_empty() {
                    "no request or visit note of the patient links to it yet".to_string()
                } else {
                    reasons.join("; ")
                };
                (
                    vec![],
                    Err(ArchiveError::Conflict(format!(
                        "study {study} stays in quarantine: {why}"
                    ))),
                )
            })??;
            let register = released.register.clone();
            Ok((released, format!("register={register}")))
        })
    }

    /// Deletes a quarantined study's instances (operators); the study is then `expired`.
    pub fn expire(&self, caller: &Caller, study: &str) -> Result<usize, ArchiveError> {
        self.study_operation(caller, study, "expire", "expire studies", |mut record| {
            if !matches!(record.state, StudyState::Quarantined { .. }) {
                return Err(ArchiveError::Conflict(format!(
                    "only a quarantined study expires; {study} is not in quarantine"
                )));
            }
            let now = time::now_ms();
            record.state = StudyState::Expired {
                by: format!("{}/{}", caller.organisation(), caller.identity.id),
                at_ms: now,
            };
            record.changed_ms = now;
            // The state first: a crash midway leaves an expired study with instances left
            // to delete again, never a visible half.
            self.state
                .change(&self.store, |_| (vec![Change::Study(record)], ()))?;
            let query = Query {
                level: Level::Instance,
                filters: vec![super::uid_filter(tags::STUDY_INSTANCE_UID, study)?],
                offset: 0,
                limit: None,
            };
            let mut deleted = 0;
            for hit in self.all_instances(query)? {
                if self
                    .store
                    .delete_instance(&hit.attrs.sop_instance_uid)?
                    .is_some()
                {
                    deleted += 1;
                }
            }
            Ok((deleted, format!("instances={deleted}")))
        })
    }

    /// Hides a study from every read path (operators): wrong patient, wrong study, ...
    pub fn invalidate_study(
        &self,
        caller: &Caller,
        study: &str,
        reason: &str,
    ) -> Result<StudyRecord, ArchiveError> {
        self.study_operation(
            caller,
            study,
            "invalidate",
            "invalidate studies",
            |mut record| {
                if matches!(
                    record.state,
                    StudyState::Invalidated { .. } | StudyState::Expired { .. }
                ) {
                    return Err(ArchiveError::Conflict(format!(
                        "study {study} is already invalidated or expired"
                    )));
                }
                let now = time::now_ms();
                record.state = StudyState::Invalidated {
                    reason: reason.to_string(),
                    by: format!("{}/{}", caller.organisation(), caller.identity.id),
                    at_ms: now,
                    previous: Box::new(record.state.clone()),
                };
                record.changed_ms = now;
                let changed = record.clone();
                self.state
                    .change(&self.store, |_| (vec![Change::Study(changed)], ()))?;
                Ok((record, format!("reason={reason}")))
            },
        )
    }

    /// Links a study to another service event of the same patient (operators): the study was
    /// tied to the wrong request, so it moves to that service event's register. Reversible
    /// by correcting it back; the audit record names the old and the new link.
    pub fn correct_study(
        &self,
        caller: &Caller,
        study: &str,
        request: CorrectionRequest,
    ) -> Result<StudyRecord, ArchiveError> {
        self.study_operation(caller, study, "correct", "correct studies", |record| {
            if matches!(record.state, StudyState::Expired { .. }) {
                return Err(ArchiveError::Conflict(format!("study {study} expired")));
            }
            let now = time::now_ms();
            let corrected = self.state.change(&self.store, |maps| {
                let linking =
                    maps.linking_documents(&record.patient, &request.service_event, "", "");
                let Some(first) = linking.first() else {
                    return (
                        vec![],
                        Err(ArchiveError::Conflict(format!(
                            "no request or visit note of patient {} for service event {}",
                            record.patient, request.service_event
                        ))),
                    );
                };
                let mut corrected = record.clone();
                corrected.service_event = request.service_event.clone();
                corrected.register = first.document.register.clone();
                corrected.documents = linking.iter().map(|d| d.document.id.clone()).collect();
                if matches!(corrected.state, StudyState::Quarantined { .. }) {
                    corrected.state = StudyState::Linked;
                }
                corrected.changed_ms = now;
                (vec![Change::Study(corrected.clone())], Ok(corrected))
            })??;
            let detail = format!(
                "service_event {} -> {} register {} -> {} reason={}",
                record.service_event,
                corrected.service_event,
                record.register,
                corrected.register,
                request.reason
            );
            Ok((corrected, detail))
        })
    }

    /// Undoes an invalidation (operators).
    pub fn restore_study(&self, caller: &Caller, study: &str) -> Result<StudyRecord, ArchiveError> {
        self.study_operation(caller, study, "restore", "restore studies", |mut record| {
            let StudyState::Invalidated { previous, .. } = &record.state else {
                return Err(ArchiveError::Conflict(format!(
                    "study {study} is not invalidated"
                )));
            };
            record.state = (**previous).clone();
            record.changed_ms = time::now_ms();
            let changed = record.clone();
            self.state
                .change(&self.store, |_| (vec![Change::Study(changed)], ()))?;
            Ok((record, String::new()))
        })
    }

    /// The instances rejection notes hid (operators).
    pub fn hidden_instances(&self, caller: &Caller) -> Result<Vec<Hidden>, ArchiveError> {
        require(caller, &[Role::Operator], "list rejected instances")?;
        let mut out: Vec<Hidden> = self.state.read().hidden.values().cloned().collect();
        out.sort_by(|a, b| {
            a.at_ms
                .cmp(&b.at_ms)
                .then(a.sop_instance.cmp(&b.sop_instance))
        });
        Ok(out)
    }

    /// Makes an instance a rejection note hid visible again (operators).
    pub fn restore_instance(&self, caller: &Caller, sop: &str) -> Result<Hidden, ArchiveError> {
        let found = self.state.read().hidden.get(sop).cloned();
        let study = found.as_ref().map(|h| h.study.clone()).unwrap_or_default();
        let result = (|| {
            require(caller, &[Role::Operator], "restore instances")?;
            let hidden = found
                .ok_or_else(|| ArchiveError::NotFound(format!("instance {sop} is not hidden")))?;
            self.state
                .change(&self.store, |_| (vec![Change::Unhide(sop.to_string())], ()))?;
            Ok((hidden, format!("sop_instance={sop}")))
        })();
        let patient = self
            .store
            .instance_metadata(sop)
            .ok()
            .flatten()
            .map(|m| m.attrs.patient_id)
            .unwrap_or_default();
        self.audited(caller, "restore-instance", &patient, &study, "", result)
    }

    /// Audit records (operators); the export is itself audited.
    pub fn audit_records(
        &self,
        caller: &Caller,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>, ArchiveError> {
        let result = require(caller, &[Role::Operator], "read the audit log").and_then(|()| {
            let records = audit::read(&self.store, filter)?;
            let detail = format!("records={}", records.len());
            Ok((records, detail))
        });
        self.audited(
            caller,
            "audit-export",
            filter.patient.as_deref().unwrap_or(""),
            filter.study.as_deref().unwrap_or(""),
            "",
            result,
        )
    }

    /// A patient's studies with their documents, and who accessed the patient's data: for the
    /// portal acting for the patient, or an operator.
    pub fn patient_view(
        &self,
        caller: &Caller,
        patient: &str,
    ) -> Result<PatientView, ArchiveError> {
        let result = (|| {
            match caller.role() {
                Role::Operator => {}
                Role::Portal if caller.on_behalf_of.as_deref() == Some(patient) => {}
                _ => {
                    return Err(ArchiveError::Denied(
                        "the patient view is for the patient's portal (and operators)".into(),
                    ))
                }
            }
            let (records, prohibited): (Vec<StudyRecord>, bool) = {
                let maps = self.state.read();
                let records = maps
                    .studies_by_patient
                    .get(patient)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| maps.studies.get(s))
                    .filter(|s| s.is_linked())
                    .cloned()
                    .collect();
                (records, maps.prohibitions.contains_key(patient))
            };
            let mut studies = Vec::new();
            for record in records {
                let hit = match self.store.query(&Query {
                    level: Level::Study,
                    filters: vec![super::uid_filter(tags::STUDY_INSTANCE_UID, &record.study)?],
                    offset: 0,
                    limit: Some(1),
                })? {
                    Hits::Studies(mut v) if !v.is_empty() => v.swap_remove(0),
                    _ => continue, // no instance left
                };
                let documents = {
                    let maps = self.state.read();
                    maps.documents_for(
                        patient,
                        &record.service_event,
                        &record.accession,
                        &record.study,
                    )
                    .into_iter()
                    .map(|d| PatientDocument {
                        id: d.document.id.clone(),
                        kind: d.document.kind,
                        status: d.document.status,
                        time: d.document.time.clone(),
                        author_organisation: d.document.author_organisation.clone(),
                        has_content: d.has_content,
                    })
                    .collect()
                };
                let examination_name = self
                    .nomenclature
                    .lookup(&record.examination_code)
                    .map(|e| e.name.clone())
                    .unwrap_or_default();
                let controller = self
                    .directory
                    .controller_of(&record.register)
                    .unwrap_or_default()
                    .to_string();
                studies.push(PatientStudy {
                    study: record.study.clone(),
                    date: hit.attrs.study_date.clone(),
                    modalities: hit.modalities_in_study.clone(),
                    examination_code: record.examination_code.clone(),
                    examination_name,
                    description: hit.attrs.study_description.clone(),
                    organisation_name: self
                        .directory
                        .organisation(&record.producer)
                        .map(|o| o.name.clone())
                        .unwrap_or_default(),
                    organisation: record.producer.clone(),
                    register: record.register.clone(),
                    register_controller: controller,
                    documents,
                });
            }
            studies.sort_by(|a, b| b.date.cmp(&a.date).then(a.study.cmp(&b.study)));
            let mut accesses = audit::read(
                &self.store,
                &AuditFilter {
                    patient: Some(patient.to_string()),
                    limit: usize::MAX,
                    ..AuditFilter::default()
                },
            )?;
            // The newest, newest first.
            let oldest_kept = accesses.len().saturating_sub(PATIENT_VIEW_ACCESSES_MAX);
            let accesses: Vec<PatientAccess> = accesses
                .drain(oldest_kept..)
                .rev()
                .map(|r| PatientAccess {
                    time: time::format_ms(r.time_unix_ms),
                    organisation_name: self
                        .directory
                        .organisation(&r.organisation)
                        .map(|o| o.name.clone())
                        .unwrap_or_default(),
                    organisation: r.organisation,
                    system: r.system,
                    role: r.role,
                    action: r.action,
                    outcome: r.outcome,
                    study: r.study,
                })
                .collect();
            let view = PatientView {
                patient: patient.to_string(),
                disclosure_prohibited: prohibited,
                studies,
                accesses,
            };
            let detail = format!("studies={}", view.studies.len());
            Ok((view, detail))
        })();
        self.audited(caller, "patient-view", patient, "", "", result)
    }
}
