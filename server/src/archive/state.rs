//! The archive rules' state: announced documents, each study's register and links, purchased-
//! service authorizations, disclosure prohibitions and hidden (rejected) instances.
//!
//! Every change is first written durably to the engine (namespace `archive`, one JSON record
//! per key, `docs/format.md` section 14), then applied to the in-memory maps the rules read.
//! Opening reads every record back. Writers are serialized by one lock so a change is never
//! lost to a concurrent one; readers see the maps as of the last durable change.

use super::documents::Document;
use kuvasto_engine::{Namespace, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

/// Key prefixes in the `archive` namespace.
pub mod keys {
    pub const DOCUMENT: &str = "doc/";
    pub const STUDY: &str = "study/";
    pub const AUTHORIZATION: &str = "authz/";
    pub const PROHIBITION: &str = "prohibition/";
    pub const HIDDEN: &str = "hidden/";
}

/// Version of the JSON records below; a reader refuses records of a version it does not know.
pub const RECORD_VERSION: u32 = 1;

/// Where a study stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum StudyState {
    /// Linked to its request or visit note, in its register: visible under the rules.
    Linked,
    /// Stored durably, waiting for its documents (or for an authorization to write into the
    /// documents' register): visible only to operators.
    Quarantined { reason: String, since_ms: i64 },
    /// Hidden by an operator (wrong patient, wrong study, ...); reversible until compaction.
    Invalidated {
        reason: String,
        by: String,
        at_ms: i64,
        previous: Box<StudyState>,
    },
    /// Expired: a quarantined study an operator expired (`by` names the operator), or a
    /// study whose retention ran out (`by` is `retention rule <name>`); its instances are
    /// deleted and it takes no new ones.
    Expired { by: String, at_ms: i64 },
}

/// What the rules know about a study.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyRecord {
    pub v: u32,
    pub study: String,
    pub patient: String,
    /// The register it is stored in (empty while quarantined without documents).
    pub register: String,
    /// The organisation that stored it, and the identity.
    pub producer: String,
    pub producer_system: String,
    pub service_event: String,
    pub accession: String,
    /// The examination code (first 5 characters of StudyDescription) and its content type.
    pub examination_code: String,
    pub content_type: String,
    /// Linked documents' ids.
    pub documents: Vec<String>,
    pub state: StudyState,
    pub created_ms: i64,
    pub changed_ms: i64,
}

impl StudyRecord {
    pub fn is_linked(&self) -> bool {
        self.state == StudyState::Linked
    }
}

/// A purchased-service authorization: the organiser lets the producer read and/or write its
/// register, for a period, optionally only for some patients or service events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub v: u32,
    pub id: String,
    pub organiser: String,
    pub register: String,
    pub producer: String,
    pub valid_from_ms: i64,
    pub valid_until_ms: i64,
    pub read: bool,
    pub write: bool,
    /// Empty: every patient.
    pub patients: Vec<String>,
    /// Empty: every service event.
    pub service_events: Vec<String>,
    pub created_by: String,
    pub created_ms: i64,
    pub revoked_by: String,
    pub revoked_ms: Option<i64>,
}

/// A disclosure prohibition in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prohibition {
    pub v: u32,
    pub patient: String,
    pub set_by: String,
    pub set_ms: i64,
}

/// An instance hidden by a rejection note (IHE IOCM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hidden {
    pub v: u32,
    pub sop_instance: String,
    pub study: String,
    /// The rejection's code (113001, 113037, 113038, 113039) and meaning.
    pub reason_code: String,
    pub reason: String,
    /// The rejection note (KOS) that hid it.
    pub rejection_note: String,
    pub by: String,
    pub at_ms: i64,
}

/// A stored document registration (the document's content, if any, is in the engine's
/// `document` namespace under the document id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub v: u32,
    pub document: Document,
    pub has_content: bool,
    pub announced_by: String,
    pub announced_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Engine(#[from] kuvasto_engine::Error),
    #[error("archive record {key:?} is damaged or of an unknown version: {reason}")]
    Record { key: String, reason: String },
}

/// The in-memory maps.
#[derive(Debug, Default)]
pub struct Maps {
    pub documents: HashMap<String, DocumentRecord>,
    /// Document ids by service event, by (patient, accession number), by study.
    pub documents_by_service_event: HashMap<String, Vec<String>>,
    pub documents_by_accession: HashMap<(String, String), Vec<String>>,
    pub documents_by_study: HashMap<String, Vec<String>>,
    pub studies: HashMap<String, StudyRecord>,
    pub studies_by_patient: HashMap<String, Vec<String>>,
    pub authorizations: BTreeMap<String, Authorization>,
    pub prohibitions: HashMap<String, Prohibition>,
    pub hidden: HashMap<String, Hidden>,
}

impl Maps {
    fn index_document(&mut self, record: DocumentRecord) {
        // A document announced again (corrected) may name other keys: drop the old ones.
        if let Some(old) = self.documents.get(&record.document.id) {
            let old = old.document.clone();
            let forget = |map: &mut HashMap<String, Vec<String>>, key: &str| {
                if let Some(ids) = map.get_mut(key) {
                    ids.retain(|i| i != &old.id);
                }
            };
            forget(&mut self.documents_by_service_event, &old.service_event_id);
            forget(&mut self.documents_by_study, &old.study_instance_uid);
            if let Some(ids) = self
                .documents_by_accession
                .get_mut(&(old.patient_id.clone(), old.accession_number.clone()))
            {
                ids.retain(|i| i != &old.id);
            }
        }
        let d = &record.document;
        let id = d.id.clone();
        let add = |ids: &mut Vec<String>| {
            if !ids.contains(&id) {
                ids.push(id.clone());
            }
        };
        if !d.service_event_id.is_empty() {
            add(self
                .documents_by_service_event
                .entry(d.service_event_id.clone())
                .or_default());
        }
        if !d.accession_number.is_empty() {
            add(self
                .documents_by_accession
                .entry((d.patient_id.clone(), d.accession_number.clone()))
                .or_default());
        }
        if !d.study_instance_uid.is_empty() {
            add(self
                .documents_by_study
                .entry(d.study_instance_uid.clone())
                .or_default());
        }
        self.documents.insert(id, record);
    }

    fn index_study(&mut self, record: StudyRecord) {
        let ids = self
            .studies_by_patient
            .entry(record.patient.clone())
            .or_default();
        if !ids.contains(&record.study) {
            ids.push(record.study.clone());
        }
        if let Some(old) = self.studies.get(&record.study) {
            if old.patient != record.patient {
                if let Some(ids) = self.studies_by_patient.get_mut(&old.patient) {
                    ids.retain(|s| s != &record.study);
                }
            }
        }
        self.studies.insert(record.study.clone(), record);
    }

    /// The documents that link a study (requests and visit notes; reports do not), requests
    /// first: the first names the study's register.
    pub fn linking_documents(
        &self,
        patient: &str,
        service_event: &str,
        accession: &str,
        study: &str,
    ) -> Vec<&DocumentRecord> {
        use super::documents::DocumentKind;
        let mut linking: Vec<&DocumentRecord> = self
            .documents_for(patient, service_event, accession, study)
            .into_iter()
            .filter(|d| {
                matches!(
                    d.document.kind,
                    DocumentKind::Request | DocumentKind::VisitNote
                )
            })
            .collect();
        // Stable: among requests (and among visit notes) the lookup order stays.
        linking.sort_by_key(|d| d.document.kind != DocumentKind::Request);
        linking
    }

    /// The documents a study of `patient` links to: by service event, by accession number of
    /// the same patient, or naming the study; only documents of that patient, not invalidated.
    pub fn documents_for(
        &self,
        patient: &str,
        service_event: &str,
        accession: &str,
        study: &str,
    ) -> Vec<&DocumentRecord> {
        let mut ids: Vec<&String> = Vec::new();
        if !service_event.is_empty() {
            ids.extend(
                self.documents_by_service_event
                    .get(service_event)
                    .into_iter()
                    .flatten(),
            );
        }
        if !accession.is_empty() {
            ids.extend(
                self.documents_by_accession
                    .get(&(patient.to_string(), accession.to_string()))
                    .into_iter()
                    .flatten(),
            );
        }
        ids.extend(self.documents_by_study.get(study).into_iter().flatten());
        let mut out: Vec<&DocumentRecord> = Vec::new();
        for id in ids {
            if let Some(record) = self.documents.get(id) {
                if record.document.patient_id == patient
                    && record.document.status != super::documents::DocumentStatus::Invalidated
                    && !out.iter().any(|r| r.document.id == record.document.id)
                {
                    out.push(record);
                }
            }
        }
        out
    }
}

/// See the module documentation.
pub struct State {
    maps: RwLock<Maps>,
    /// Serializes changes: persist, then apply.
    write: Mutex<()>,
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

impl State {
    /// Reads every archive record from the store.
    pub fn open(store: &Store) -> Result<State, StateError> {
        let mut maps = Maps::default();
        for key in store.keys(Namespace::ARCHIVE) {
            let key_text = String::from_utf8_lossy(&key).into_owned();
            let Some(object) = store.get(Namespace::ARCHIVE, &key)? else {
                continue;
            };
            let bytes = object.read_all()?;
            let damaged = |reason: String| StateError::Record {
                key: key_text.clone(),
                reason,
            };
            let version: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
            if version.get("v").and_then(|v| v.as_u64()) != Some(u64::from(RECORD_VERSION)) {
                return Err(damaged(format!("record version is not {RECORD_VERSION}")));
            }
            macro_rules! parse {
                () => {
                    serde_json::from_value(version).map_err(|e| damaged(e.to_string()))?
                };
            }
            if key_text.starts_with(keys::DOCUMENT) {
                maps.index_document(parse!());
            } else if key_text.starts_with(keys::STUDY) {
                maps.index_study(parse!());
            } else if key_text.starts_with(keys::AUTHORIZATION) {
                let a: Authorization = parse!();
                maps.authorizations.insert(a.id.clone(), a);
            } else if key_text.starts_with(keys::PROHIBITION) {
                let p: Prohibition = parse!();
                maps.prohibitions.insert(p.patient.clone(), p);
            } else if key_text.starts_with(keys::HIDDEN) {
                let h: Hidden = parse!();
                maps.hidden.insert(h.sop_instance.clone(), h);
            } else {
                return Err(damaged("unknown key prefix".into()));
            }
        }
        Ok(State {
            maps: RwLock::new(maps),
            write: Mutex::new(()),
        })
    }

    /// The maps, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `change` under the writers' lock: it sees the current maps and returns the
    /// records to persist (key, value) plus a result; each record is made durable, then
    /// applied. Nothing is applied when persisting fails.
    pub fn change<R>(
        &self,
        store: &Store,
        change: impl FnOnce(&Maps) -> (Vec<Change>, R),
    ) -> Result<R, StateError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let (changes, result) = change(&self.read());
        for c in &changes {
            let (key, body) = c.record();
            match body {
                Some(body) => store.put(Namespace::ARCHIVE, &key, &body).map(|_| ())?,
                None => store.delete(Namespace::ARCHIVE, &key).map(|_| ())?,
            }
        }
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        for c in changes {
            match c {
                Change::Document(r) => maps.index_document(r),
                Change::Study(r) => maps.index_study(r),
                Change::Authorization(a) => {
                    maps.authorizations.insert(a.id.clone(), a);
                }
                Change::Prohibition(p) => {
                    maps.prohibitions.insert(p.patient.clone(), p);
                }
                Change::ClearProhibition(patient) => {
                    maps.prohibitions.remove(&patient);
                }
                Change::Hidden(h) => {
                    maps.hidden.insert(h.sop_instance.clone(), h);
                }
                Change::Unhide(sop) => {
                    maps.hidden.remove(&sop);
                }
            }
        }
        Ok(result)
    }
}

fn key(prefix: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + id.len());
    k.extend_from_slice(prefix.as_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// One change to persist and apply.
#[derive(Debug, Clone)]
pub enum Change {
    Document(DocumentRecord),
    Study(StudyRecord),
    Authorization(Authorization),
    Prohibition(Prohibition),
    ClearProhibition(String),
    Hidden(Hidden),
    Unhide(String),
}

impl Change {
    /// The record's key in the `archive` namespace and its body; `None` deletes the key.
    fn record(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            Change::Document(r) => (key(keys::DOCUMENT, &r.document.id), Some(json(r))),
            Change::Study(r) => (key(keys::STUDY, &r.study), Some(json(r))),
            Change::Authorization(a) => (key(keys::AUTHORIZATION, &a.id), Some(json(a))),
            Change::Prohibition(p) => (key(keys::PROHIBITION, &p.patient), Some(json(p))),
            Change::ClearProhibition(patient) => (key(keys::PROHIBITION, patient), None),
            Change::Hidden(h) => (key(keys::HIDDEN, &h.sop_instance), Some(json(h))),
            Change::Unhide(sop) => (key(keys::HIDDEN, sop), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuvasto_engine::io::sim::SimStorage;
    use kuvasto_engine::StoreConfig;
    use std::sync::Arc;

    fn config() -> StoreConfig {
        StoreConfig {
            segment_size_bytes_max: 1 << 20,
            put_buffer_bytes: 64 << 10,
            batch_bytes_max: 128 << 10,
            ..StoreConfig::default()
        }
    }

    fn prohibition(patient: &str) -> Prohibition {
        Prohibition {
            v: RECORD_VERSION,
            patient: patient.into(),
            set_by: "operator".into(),
            set_ms: 7,
        }
    }

    #[test]
    fn changes_are_durable_and_read_back_at_open() {
        let storage = Arc::new(SimStorage::new(1));
        let store = Store::open_with(storage.clone(), config()).expect("open");
        let state = State::open(&store).expect("empty state");
        state
            .change(&store, |maps| {
                assert!(maps.prohibitions.is_empty());
                (
                    vec![
                        Change::Prohibition(prohibition("a")),
                        Change::Prohibition(prohibition("b")),
                    ],
                    (),
                )
            })
            .expect("change");
        state
            .change(&store, |_| (vec![Change::ClearProhibition("a".into())], ()))
            .expect("clear");
        assert_eq!(state.read().prohibitions.len(), 1);
        store.close();
        let store = Store::open_with(storage, config()).expect("reopen");
        let state = State::open(&store).expect("state");
        let maps = state.read();
        assert!(!maps.prohibitions.contains_key("a"), "the clear survived");
        assert_eq!(maps.prohibitions.get("b"), Some(&prohibition("b")));
    }

    #[test]
    fn a_record_of_an_unknown_version_stops_the_open() {
        let storage = Arc::new(SimStorage::new(1));
        let store = Store::open_with(storage, config()).expect("open");
        store
            .put(
                Namespace::ARCHIVE,
                b"prohibition/x",
                br#"{"v":2,"patient":"x"}"#,
            )
            .expect("put");
        let err = State::open(&store).err().expect("refused");
        assert!(err.to_string().contains("prohibition/x"), "{err}");
        store
            .put(Namespace::ARCHIVE, b"prohibition/x", b"not json")
            .expect("put");
        assert!(State::open(&store).is_err());
    }
}
