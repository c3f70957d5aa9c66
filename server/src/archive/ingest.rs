//! The rules an instance passes before it is committed, and what a stored rejection note
//! (IHE IOCM) does afterwards.
//!
//! Order: the generic checks (the study a request named, storage SOP classes); then, in the
//! national profile, the caller's role, validation (PatientID, examination code, SOP class
//! per content type), and the study's place: an existing study keeps its patient and
//! register; a new one is linked to its request or visit note (documents first) and stored
//! in that document's register if the writer controls it or holds a write authorization, or
//! is refused or quarantined when no document is there yet. The study's record is durable
//! before the instance is committed, so a crash can never leave an instance visible without
//! the rules' decision.
//!
//! An operator's override for legacy imports (`Caller::override_register`, set by `kuvasto
//! import --operator-override`) keeps the generic checks, validation and an existing study's
//! patient, closed state and register, but skips documents first and the register's write
//! right: a new study is linked in the named register with no documents.

use super::access::{register_right, Right};
use super::audit::Outcome;
use super::state::{Change, Hidden, Maps, StudyRecord, StudyState, RECORD_VERSION};
use super::validation::{check_sop_class, examination_of, validate_patient_id};
use super::{time, Archive, Caller, Failure, FailureReason, Role};
use kuvasto_engine::index::attrs::InstanceAttrs;
use kuvasto_engine::Namespace;

/// Key Object Selection Document Storage: the SOP class of IOCM rejection notes.
pub const KEY_OBJECT_SELECTION: &str = "1.2.840.10008.5.1.4.1.1.88.59";

/// What happens to an instance of a study whose request or visit note is not announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentsFirst {
    /// Refused with C010 and a reason.
    Reject,
    /// Stored durably, visible to operators only, released when the document arrives.
    Quarantine,
}

impl DocumentsFirst {
    pub fn parse(text: &str) -> Result<DocumentsFirst, String> {
        match text.trim() {
            "reject" => Ok(DocumentsFirst::Reject),
            "quarantine" => Ok(DocumentsFirst::Quarantine),
            other => Err(format!("{other:?}: expected `reject` or `quarantine`")),
        }
    }
}

/// The rules' decision for an instance about to be committed.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// The register it goes to (empty while quarantined without documents).
    pub register: String,
    pub quarantined: bool,
    /// Placed under an operator's override (`Caller::override_register`): audited as
    /// `import-override`.
    pub overridden: bool,
}

/// IOCM rejection reasons (PS3.16 CID 7011): code → meaning.
pub const REJECTION_CODES: [(&str, &str); 4] = [
    ("113001", "Rejected for Quality Reasons"),
    ("113037", "Rejected for Patient Safety Reasons"),
    ("113038", "Incorrect Modality Worklist Entry"),
    ("113039", "Data Retention Policy Expired"),
];

fn refuse(reason: FailureReason, message: impl Into<String>) -> Failure {
    Failure::new(reason, message)
}

/// The record of a study its first instance starts: linked, no register or documents yet.
fn new_study_record(
    caller: &Caller,
    attrs: &InstanceAttrs,
    service_event: &str,
    examination: Option<&super::validation::Examination>,
    now: i64,
) -> StudyRecord {
    StudyRecord {
        v: RECORD_VERSION,
        study: attrs.study_instance_uid.clone(),
        patient: attrs.patient_id.clone(),
        register: String::new(),
        producer: caller.organisation().to_string(),
        producer_system: caller.identity.id.clone(),
        service_event: service_event.to_string(),
        accession: attrs.accession_number.clone(),
        examination_code: examination.map(|e| e.code.clone()).unwrap_or_default(),
        content_type: examination
            .map(|e| e.content_type.name().to_string())
            .unwrap_or_default(),
        documents: Vec::new(),
        state: StudyState::Linked,
        created_ms: now,
        changed_ms: now,
    }
}

impl Archive {
    /// Rules of every profile.
    pub(super) fn check_generic(
        &self,
        expected_study: Option<&str>,
        attrs: &InstanceAttrs,
    ) -> Result<(), Failure> {
        if let Some(study) = expected_study {
            if attrs.study_instance_uid != study {
                return Err(refuse(
                    FailureReason::DataSetMismatch,
                    format!(
                        "the instance belongs to study {}, not to study {study} named in the request",
                        attrs.study_instance_uid
                    ),
                ));
            }
        }
        if !self.rules.accept_unknown_sop_classes
            && super::sop_class_name(&attrs.sop_class_uid).is_none()
        {
            return Err(refuse(
                FailureReason::SopClassNotSupported,
                format!(
                    "SOP class {} is not a standard storage SOP class",
                    attrs.sop_class_uid
                ),
            ));
        }
        Ok(())
    }

    /// The national profile's rules; decides the study's register and whether the instance
    /// is quarantined, making the study's record durable first.
    pub(super) fn admit(
        &self,
        caller: &Caller,
        attrs: &InstanceAttrs,
    ) -> Result<Admission, Failure> {
        if self.directory.is_standalone() {
            return Ok(Admission {
                register: caller.organisation().to_string(),
                quarantined: false,
                overridden: false,
            });
        }
        if !matches!(caller.role(), Role::System | Role::Operator) {
            return Err(refuse(
                FailureReason::NotAuthorized,
                format!(
                    "a {} identity does not store instances",
                    caller.role().name()
                ),
            ));
        }
        if caller.override_register.is_some() && caller.role() != Role::Operator {
            // `kuvasto import` lets only operators override; anything else is a bug there,
            // refused here rather than trusted.
            debug_assert!(false, "an override by a {} identity", caller.role().name());
            return Err(refuse(
                FailureReason::NotAuthorized,
                format!(
                    "only an operator overrides the register rules, not a {} identity",
                    caller.role().name()
                ),
            ));
        }
        let mut examination = None;
        if self.rules.validate {
            let invalid_id = |e: super::validation::ValidationError| {
                refuse(FailureReason::InvalidPatientId, e.to_string())
            };
            validate_patient_id(&self.patient_ids, &attrs.patient_id).map_err(invalid_id)?;
            // A rejection note or key-image selection rides along with its study; it need
            // not carry the examination code itself.
            if attrs.sop_class_uid != KEY_OBJECT_SELECTION {
                let exam = examination_of(&self.nomenclature, &attrs.study_description)
                    .map_err(|e| refuse(FailureReason::InvalidExaminationCode, e.to_string()))?;
                check_sop_class(exam.content_type, &attrs.sop_class_uid)
                    .map_err(|e| refuse(FailureReason::SopClassNotAllowed, e.to_string()))?;
                examination = Some(exam);
            }
        }
        let service_event = attrs
            .text(self.rules.service_event_tag)
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        let now = time::now_ms();
        let decided = self
            .state
            .change(&self.store, |maps| match &caller.override_register {
                Some(register) => self.place_overridden(
                    caller,
                    register,
                    attrs,
                    &service_event,
                    examination,
                    maps,
                    now,
                ),
                None => self.place(caller, attrs, &service_event, examination, maps, now),
            });
        match decided {
            Ok(result) => result,
            Err(e) => Err(Failure {
                retryable: true,
                ..refuse(
                    FailureReason::ProcessingFailure,
                    format!("the study's record could not be written: {e}"),
                )
            }),
        }
    }

    /// Where an instance's study stands under an operator's override (legacy imports): an
    /// existing study keeps its patient check, its closed state and its register (a
    /// quarantined one stays quarantined and takes the instance), but neither documents first
    /// nor the register's write right apply; a new study is linked in `register` with no
    /// documents.
    #[allow(clippy::too_many_arguments)]
    fn place_overridden(
        &self,
        caller: &Caller,
        register: &str,
        attrs: &InstanceAttrs,
        service_event: &str,
        examination: Option<&super::validation::Examination>,
        maps: &Maps,
        now: i64,
    ) -> (Vec<Change>, Result<Admission, Failure>) {
        let study = &attrs.study_instance_uid;
        let patient = &attrs.patient_id;
        if self.directory.controller_of(register).is_none() {
            return (
                vec![],
                Err(refuse(
                    FailureReason::NotAuthorized,
                    format!("override: register {register} is not a register of this archive"),
                )),
            );
        }
        if let Some(record) = maps.studies.get(study) {
            let decision = if &record.patient != patient {
                Err(refuse(
                    FailureReason::WrongPatient,
                    format!(
                        "study {study} is stored for another patient than {patient:?}; correct the PatientID or the Study Instance UID"
                    ),
                ))
            } else {
                match &record.state {
                    StudyState::Linked => Ok(Admission {
                        register: record.register.clone(),
                        quarantined: false,
                        overridden: true,
                    }),
                    StudyState::Quarantined { .. } => Ok(Admission {
                        register: record.register.clone(),
                        quarantined: true,
                        overridden: true,
                    }),
                    StudyState::Invalidated { reason, .. } => Err(refuse(
                        FailureReason::StudyClosed,
                        format!(
                            "study {study} was invalidated ({reason}); it takes no new instances"
                        ),
                    )),
                    StudyState::Expired { .. } => Err(refuse(
                        FailureReason::StudyClosed,
                        format!("study {study} expired from quarantine; it takes no new instances"),
                    )),
                }
            };
            return (vec![], decision);
        }
        let mut record = new_study_record(caller, attrs, service_event, examination, now);
        record.register = register.to_string();
        (
            vec![Change::Study(record)],
            Ok(Admission {
                register: register.to_string(),
                quarantined: false,
                overridden: true,
            }),
        )
    }

    /// Where an instance's study stands: the changes to persist and the decision.
    fn place(
        &self,
        caller: &Caller,
        attrs: &InstanceAttrs,
        service_event: &str,
        examination: Option<&super::validation::Examination>,
        maps: &Maps,
        now: i64,
    ) -> (Vec<Change>, Result<Admission, Failure>) {
        let study = &attrs.study_instance_uid;
        let patient = &attrs.patient_id;
        let organisation = caller.organisation();
        if let Some(record) = maps.studies.get(study) {
            if &record.patient != patient {
                return (
                    vec![],
                    Err(refuse(
                        FailureReason::WrongPatient,
                        format!(
                            "study {study} is stored for another patient than {patient:?}; correct the PatientID or the Study Instance UID"
                        ),
                    )),
                );
            }
            let decision = match &record.state {
                StudyState::Linked => register_right(
                    &self.directory,
                    maps,
                    organisation,
                    &record.register,
                    Right::Write,
                    patient,
                    &record.service_event,
                    now,
                )
                .map(|_| Admission {
                    register: record.register.clone(),
                    quarantined: false,
                    overridden: false,
                })
                .map_err(|reason| refuse(FailureReason::NotAuthorized, reason)),
                StudyState::Quarantined { .. } if record.producer == organisation => {
                    Ok(Admission {
                        register: record.register.clone(),
                        quarantined: true,
                        overridden: false,
                    })
                }
                StudyState::Quarantined { .. } => Err(refuse(
                    FailureReason::NotAuthorized,
                    format!(
                        "study {study} is in quarantine for organisation {}; only it adds instances",
                        record.producer
                    ),
                )),
                StudyState::Invalidated { reason, .. } => Err(refuse(
                    FailureReason::StudyClosed,
                    format!("study {study} was invalidated ({reason}); it takes no new instances"),
                )),
                StudyState::Expired { .. } => Err(refuse(
                    FailureReason::StudyClosed,
                    format!("study {study} expired from quarantine; send it under a new Study Instance UID once its documents exist"),
                )),
            };
            return (vec![], decision);
        }
        let linking =
            maps.linking_documents(patient, service_event, &attrs.accession_number, study);
        let mut record = new_study_record(caller, attrs, service_event, examination, now);
        // A request names the register best; a visit note serves when it is alone.
        match linking.first() {
            Some(document) => {
                let register = document.document.register.clone();
                if let Err(reason) = register_right(
                    &self.directory,
                    maps,
                    organisation,
                    &register,
                    Right::Write,
                    patient,
                    service_event,
                    now,
                ) {
                    return (vec![], Err(refuse(FailureReason::NotAuthorized, reason)));
                }
                if record.service_event.is_empty() {
                    record.service_event = document.document.service_event_id.clone();
                }
                record.register = register.clone();
                record.documents = linking.iter().map(|d| d.document.id.clone()).collect();
                (
                    vec![Change::Study(record)],
                    Ok(Admission {
                        register,
                        quarantined: false,
                        overridden: false,
                    }),
                )
            }
            None => {
                let missing = format!(
                    "documents first: no request or visit note of patient {patient:?} for service event {service_event:?}, accession number {:?} or study {study} is in the patient data repository",
                    attrs.accession_number
                );
                match self.rules.documents_first {
                    DocumentsFirst::Reject => (
                        vec![],
                        Err(refuse(FailureReason::DocumentsMissing, missing)),
                    ),
                    DocumentsFirst::Quarantine => {
                        record.state = StudyState::Quarantined {
                            reason: missing,
                            since_ms: now,
                        };
                        (
                            vec![Change::Study(record)],
                            Ok(Admission {
                                register: String::new(),
                                quarantined: true,
                                overridden: false,
                            }),
                        )
                    }
                }
            }
        }
    }

    /// A stored Key Object Selection that is an IOCM rejection note (concept name 113001,
    /// 113037, 113038 or 113039) hides the instances it references in its own study, and
    /// itself. The note passed the write rules for that study, so its writer may reject there.
    pub(super) fn apply_rejection_note(&self, caller: &Caller, attrs: &InstanceAttrs) {
        let note = &attrs.sop_instance_uid;
        let parsed = match self.read_rejection_note(note) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return, // a key-object selection that rejects nothing
            Err(reason) => {
                tracing::warn!(%note, %reason, "a key object selection could not be read as a rejection note");
                return;
            }
        };
        let (code, meaning, referenced) = parsed;
        let now = time::now_ms();
        let mut hidden = Vec::new();
        let mut skipped = Vec::new();
        for sop in referenced.iter().chain(std::iter::once(note)) {
            let in_study = self
                .store
                .instance_metadata(sop)
                .ok()
                .flatten()
                .is_some_and(|m| m.attrs.study_instance_uid == attrs.study_instance_uid);
            if in_study || sop == note {
                hidden.push(Hidden {
                    v: RECORD_VERSION,
                    sop_instance: sop.clone(),
                    study: attrs.study_instance_uid.clone(),
                    reason_code: code.clone(),
                    reason: meaning.to_string(),
                    rejection_note: note.clone(),
                    by: format!("{}/{}", caller.organisation(), caller.identity.id),
                    at_ms: now,
                });
            } else {
                skipped.push(sop.clone());
            }
        }
        let count = hidden.len();
        let changed = self.state.change(&self.store, |_| {
            (hidden.into_iter().map(Change::Hidden).collect(), ())
        });
        let (outcome, detail) = match changed {
            Ok(()) => (
                Outcome::Success,
                format!(
                    "rejection_note={note} code={code} hidden={count} not_in_study={}",
                    skipped.join(",")
                ),
            ),
            Err(e) => (Outcome::Failed, format!("rejection_note={note} {e}")),
        };
        let register = self.register_of(&attrs.study_instance_uid);
        if let Err(e) = self.audit(
            caller,
            "reject",
            outcome,
            &attrs.patient_id,
            &attrs.study_instance_uid,
            &register,
            detail,
        ) {
            tracing::error!(error = %e, "a rejection could not be audited");
        }
    }

    /// Reads a stored KOS: `Some((code, meaning, referenced SOP instances))` when its concept
    /// name is a rejection reason.
    #[allow(clippy::type_complexity)]
    fn read_rejection_note(
        &self,
        sop: &str,
    ) -> Result<Option<(String, &'static str, Vec<String>)>, String> {
        use kuvasto_dimse::dataset::DataSet;
        use kuvasto_engine::dicom::json::Encoding;
        use kuvasto_engine::dicom::meta::{read_file_meta, MetaLimits};
        use kuvasto_engine::dicom::Tag;
        /// Rejection notes are small; a larger KOS is not read as one.
        const NOTE_BYTES_MAX: u64 = 1 << 20;
        let object = self
            .store
            .get(Namespace::OBJECT, sop.as_bytes())
            .map_err(|e| e.to_string())?
            .ok_or("the note is gone")?;
        if object.len > NOTE_BYTES_MAX {
            return Err(format!(
                "{} bytes is more than a rejection note",
                object.len
            ));
        }
        let bytes = object.read_all().map_err(|e| e.to_string())?;
        let meta = read_file_meta(&bytes, MetaLimits::default())
            .map_err(|e| e.to_string())?
            .ok_or("no file meta group")?;
        let encoding = Encoding::of_transfer_syntax(&meta.transfer_syntax_uid, false)
            .ok_or("a deflated rejection note is not read")?;
        let start = usize::try_from(meta.data_set_offset).map_err(|e| e.to_string())?;
        let data = DataSet::decode(bytes.get(start..).unwrap_or_default(), encoding)
            .map_err(|e| e.to_string())?;
        const CONCEPT_NAME_CODE_SEQUENCE: Tag = Tag::new(0x0040, 0xA043);
        const CODE_VALUE: Tag = Tag::new(0x0008, 0x0100);
        const EVIDENCE: Tag = Tag::new(0x0040, 0xA375);
        const REFERENCED_SERIES: Tag = Tag::new(0x0008, 0x1115);
        const REFERENCED_SOP: Tag = Tag::new(0x0008, 0x1199);
        const REFERENCED_SOP_INSTANCE_UID: Tag = Tag::new(0x0008, 0x1155);
        let Some(code) = data
            .items(CONCEPT_NAME_CODE_SEQUENCE)
            .first()
            .and_then(|item| item.text(CODE_VALUE))
        else {
            return Ok(None);
        };
        let code = code.trim().to_string();
        let Some((_, meaning)) = REJECTION_CODES.iter().find(|(c, _)| *c == code) else {
            return Ok(None);
        };
        let mut referenced = Vec::new();
        for study in data.items(EVIDENCE) {
            for series in study.items(REFERENCED_SERIES) {
                for instance in series.items(REFERENCED_SOP) {
                    if let Some(uid) = instance.text(REFERENCED_SOP_INSTANCE_UID) {
                        referenced.push(uid.trim_end_matches(['\0', ' ']).to_string());
                    }
                }
            }
        }
        Ok(Some((code, meaning, referenced)))
    }
}
