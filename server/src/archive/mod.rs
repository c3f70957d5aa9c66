//! The archive's rules: the one place both protocols (DICOMweb, DIMSE) call to store, find,
//! read and delete instances. A protocol adapter turns its requests into these calls and the
//! answers into its own terms (HTTP statuses, DIMSE status codes); nothing here knows a
//! protocol.
//!
//! Today the rules are: who is calling ([`Caller`]: organisation, protocol, peer), the SOP
//! classes accepted, the duplicate policy, that an instance sent to a study goes to that
//! study, and an audit line (tracing target `audit`) for every store, retrieval, search and
//! delete. Registers, purchased-service authorization and documents-first linking build on
//! this module.

pub mod identity;
pub mod search;

use kuvasto_engine::dicom::metadata::InstanceMetadata;
use kuvasto_engine::index::attrs::{tags, InstanceAttrs, Level};
use kuvasto_engine::index::catalog::{Hits, InstanceHit, Query};
use kuvasto_engine::index::matching::{MatchOptions, MatchVr, Matcher};
use kuvasto_engine::instances::{DicomError, DuplicatePolicy, InstancePut, PutOutcome};
use kuvasto_engine::{Error as EngineError, Namespace, Object, Store};

/// Who is asking, as the protocol adapter established it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub organisation: String,
    /// `dicomweb` or `dimse`.
    pub protocol: &'static str,
    /// Remote address (and AE title for DIMSE).
    pub peer: String,
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

/// Failure reason codes (PS3.4 Annex B.2.3 C-STORE statuses, PS3.18 10.5.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// 0110: the archive could not process the instance (I/O, internal error).
    ProcessingFailure,
    /// 0111: the SOP Instance UID is stored with different content.
    DuplicateSopInstance,
    /// 0122: the SOP class is not one this archive stores.
    SopClassNotSupported,
    /// A700: out of resources (disk full, store read-only).
    OutOfResources,
    /// A900: the data set does not match what it claims (file meta vs data set, or the
    /// study the request named).
    DataSetMismatch,
    /// C000: the bytes are not a readable DICOM instance.
    CannotUnderstand,
}

impl FailureReason {
    pub fn code(self) -> u16 {
        match self {
            FailureReason::ProcessingFailure => 0x0110,
            FailureReason::DuplicateSopInstance => 0x0111,
            FailureReason::SopClassNotSupported => 0x0122,
            FailureReason::OutOfResources => 0xA700,
            FailureReason::DataSetMismatch => 0xA900,
            FailureReason::CannotUnderstand => 0xC000,
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
            EngineError::Dicom(DicomError::Duplicate { .. }) => FailureReason::DuplicateSopInstance,
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

/// Errors of reads, searches and deletes (per-instance store failures are [`Failure`]s).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    BadQuery(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A stored (or already present) instance.
#[derive(Debug, Clone)]
pub struct Stored {
    pub attrs: InstanceAttrs,
    pub outcome: PutOutcome,
    pub bytes: u64,
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
}

/// See the module documentation.
pub struct Archive {
    store: Store,
    rules: Rules,
}

/// An instance being stored: bytes go straight to the engine as they arrive.
pub struct Upload<'a> {
    put: InstancePut<'a>,
    rules: &'a Rules,
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
            audit_refusal(self.caller, &failure);
            failure
        })
    }

    /// Checks the rules and commits; returns once durable.
    pub fn finish(self) -> Result<Stored, Failure> {
        let rules = self.rules;
        let expected_study = self.expected_study;
        let declared = self.put.declared_sop();
        let checked = self.put.finish_checked(|attrs| {
            check(rules, expected_study, attrs).map_err(|mut failure| {
                failure.sop = Some((attrs.sop_class_uid.clone(), attrs.sop_instance_uid.clone()));
                failure
            })
        });
        let result = match checked {
            Ok(Ok(stored)) => Ok(Stored {
                attrs: stored.attrs,
                outcome: stored.outcome,
                bytes: self.bytes,
            }),
            Ok(Err(failure)) => Err(failure),
            Err(e) => Err(Failure {
                sop: declared,
                ..Failure::from_engine(&e)
            }),
        };
        match &result {
            Ok(stored) => tracing::info!(
                target: "audit",
                action = "store",
                organisation = %self.caller.organisation,
                protocol = self.caller.protocol,
                peer = %self.caller.peer,
                study = %stored.attrs.study_instance_uid,
                sop_instance = %stored.attrs.sop_instance_uid,
                outcome = ?stored.outcome,
                bytes = stored.bytes,
            ),
            Err(failure) => audit_refusal(self.caller, failure),
        }
        result
    }
}

fn audit_refusal(caller: &Caller, failure: &Failure) {
    tracing::warn!(
        target: "audit",
        action = "store-refused",
        organisation = %caller.organisation,
        protocol = caller.protocol,
        peer = %caller.peer,
        sop_instance = failure.sop.as_ref().map_or("", |(_, i)| i.as_str()),
        reason = format!("{:04X}", failure.reason.code()),
        message = %failure.message,
    );
}

/// The rules an instance must pass before it is committed.
fn check(
    rules: &Rules,
    expected_study: Option<&str>,
    attrs: &InstanceAttrs,
) -> Result<(), Failure> {
    if let Some(study) = expected_study {
        if attrs.study_instance_uid != study {
            return Err(Failure::new(
                FailureReason::DataSetMismatch,
                format!(
                    "the instance belongs to study {}, not to study {study} named in the request",
                    attrs.study_instance_uid
                ),
            ));
        }
    }
    if !rules.accept_unknown_sop_classes && sop_class_name(&attrs.sop_class_uid).is_none() {
        return Err(Failure::new(
            FailureReason::SopClassNotSupported,
            format!(
                "SOP class {} is not a standard storage SOP class",
                attrs.sop_class_uid
            ),
        ));
    }
    Ok(())
}

/// The standard name of a storage SOP class, `None` if the registry does not list it as one.
pub fn sop_class_name(uid: &str) -> Option<&'static str> {
    use dicom_core::dictionary::UidDictionary;
    let entry = dicom_dictionary_std::StandardSopClassDictionary.by_uid(uid)?;
    // "Storage" names the storage SOP classes; Storage Commitment is a service, not a class
    // of stored objects.
    (entry.name.contains("Storage") && !entry.name.contains("Commitment")).then_some(entry.name)
}

fn uid_filter(
    tag: kuvasto_engine::dicom::Tag,
    uid: &str,
) -> Result<(kuvasto_engine::dicom::Tag, Matcher), ArchiveError> {
    let matcher = Matcher::parse(MatchVr::Uid, uid, MatchOptions::default())
        .map_err(|e| ArchiveError::BadQuery(e.to_string()))?;
    Ok((tag, matcher))
}

impl Archive {
    pub fn new(store: Store, rules: Rules) -> Archive {
        Archive { store, rules }
    }

    /// The engine, for operator commands and shutdown.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn into_store(self) -> Store {
        self.store
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
            rules: &self.rules,
            caller,
            expected_study,
            bytes: 0,
        }
    }

    /// Answers a query from the catalog.
    pub fn search(&self, caller: &Caller, query: &Query) -> Result<Hits, ArchiveError> {
        let hits = self.store.query(query)?;
        tracing::info!(
            target: "audit",
            action = "search",
            organisation = %caller.organisation,
            protocol = caller.protocol,
            peer = %caller.peer,
            level = ?query.level,
            filters = query.filters.len(),
            hits = hits.len(),
        );
        Ok(hits)
    }

    /// Every instance of a study, a series or one instance (all pages), in catalog order.
    pub fn instances(
        &self,
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
        self.all_instances(Query {
            level: Level::Instance,
            filters,
            offset: 0,
            limit: None,
        })
    }

    /// Every instance an instance-level query matches (all pages), audited once as a search.
    pub fn search_instances(
        &self,
        caller: &Caller,
        query: Query,
    ) -> Result<Vec<InstanceHit>, ArchiveError> {
        let filters = query.filters.len();
        let hits = self.all_instances(query)?;
        tracing::info!(
            target: "audit",
            action = "search",
            organisation = %caller.organisation,
            protocol = caller.protocol,
            peer = %caller.peer,
            level = ?Level::Instance,
            filters,
            hits = hits.len(),
        );
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

    /// The object and metadata record of an instance, for retrieval (audited).
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
        tracing::info!(
            target: "audit",
            action = what,
            organisation = %caller.organisation,
            protocol = caller.protocol,
            peer = %caller.peer,
            study = %metadata.attrs.study_instance_uid,
            sop_instance = sop_instance_uid,
        );
        Ok(Some((object, metadata)))
    }

    /// The metadata record of an instance (no audit line: callers audit the request).
    pub fn metadata(
        &self,
        sop_instance_uid: &str,
    ) -> Result<Option<InstanceMetadata>, ArchiveError> {
        Ok(self.store.instance_metadata(sop_instance_uid)?)
    }

    /// Deletes a study, series or instance; returns how many instances were deleted.
    pub fn delete(&self, caller: &Caller, scope: Scope) -> Result<usize, ArchiveError> {
        let hits = match &scope {
            Scope::Study(study) => self.instances(study, None, None)?,
            Scope::Series(study, series) => self.instances(study, Some(series), None)?,
            Scope::Instance(study, series, sop) => {
                self.instances(study, Some(series), Some(sop))?
            }
        };
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
        tracing::info!(
            target: "audit",
            action = "delete",
            organisation = %caller.organisation,
            protocol = caller.protocol,
            peer = %caller.peer,
            scope = ?scope,
            instances = deleted,
        );
        Ok(deleted)
    }
}
