//! The audit log: every read, write, delete, refusal, quarantine change, authorization change
//! and disclosure-prohibition change is an [`AuditRecord`], kept append-only in the engine's
//! `audit` namespace (checksummed like every record) and exportable as JSON lines or as DICOM
//! audit messages (`atna.rs`).

use serde::{Deserialize, Serialize};

/// How an audited operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Done as asked.
    Success,
    /// Refused by a rule (authorization, validation, documents first, ...).
    Refused,
    /// Could not be done (I/O, internal error).
    Failed,
}

/// One audited event. Field names are the JSON-lines export's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1, assigned when written; strictly increasing.
    pub seq: u64,
    /// When, in milliseconds since 1970-01-01 UTC.
    pub time_unix_ms: i64,
    /// The organisation (OID) the caller acts for.
    pub organisation: String,
    /// The calling system's configured id.
    pub system: String,
    /// The identity's role: `system`, `portal`, `operator` or `registry`.
    pub role: String,
    /// The patient a portal identity acts for (empty otherwise).
    pub on_behalf_of: String,
    /// `dicomweb`, `dimse`, `api`, or `cli` (`kuvasto import`).
    pub protocol: String,
    /// Remote address, and AE title for DIMSE.
    pub peer: String,
    /// What was done: `store`, `retrieve`, `search`, `delete`, `quarantine`, `release`,
    /// `authorization-create`, ... (`docs/api.md` lists them).
    pub action: String,
    pub outcome: Outcome,
    /// The patient whose data it was (empty when not one patient's).
    pub patient: String,
    /// The study (empty when not one study's).
    pub study: String,
    /// The register written or read (empty when none).
    pub register: String,
    /// Free text: the SOP instance, the reason of a refusal, counts.
    pub detail: String,
}

use kuvasto_engine::{Namespace, Store};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Records waiting for the audit writer, at most (callers block beyond it).
pub const AUDIT_QUEUE_RECORDS_MAX: usize = 4096;
/// Records written in one engine record, at most.
pub const AUDIT_BATCH_RECORDS_MAX: usize = 1024;

/// Why an audit record could not be written (the audited operation is then refused).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log cannot be written: {0}")]
    Write(String),
    #[error("the audit log is closed")]
    Closed,
    #[error("audit record {key} is damaged: {reason}")]
    Damaged { key: String, reason: String },
}

struct Pending {
    record: AuditRecord,
    done: SyncSender<Result<u64, AuditError>>,
}

/// The append-only audit log: one writer thread gathers the records that arrive while it
/// writes and stores them as one engine record (key: the first record's `seq` as 16 hex
/// digits; body: JSON lines), so concurrent requests share one durable write. A record is
/// acknowledged to its caller only once durable.
pub struct AuditLog {
    tx: Option<SyncSender<Pending>>,
    thread: Option<JoinHandle<()>>,
}

fn batch_key(first_seq: u64) -> String {
    format!("{first_seq:016x}")
}

/// Parses one audit engine record's body.
fn parse_batch(key: &str, body: &[u8]) -> Result<Vec<AuditRecord>, AuditError> {
    body.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice(line).map_err(|e| AuditError::Damaged {
                key: key.to_string(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Which records a reader wants.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub patient: Option<String>,
    pub study: Option<String>,
    pub organisation: Option<String>,
    pub action: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Records after this `seq` only.
    pub after_seq: u64,
    pub limit: usize,
}

impl AuditFilter {
    fn wants(&self, r: &AuditRecord) -> bool {
        r.seq > self.after_seq
            && self.patient.as_ref().is_none_or(|p| &r.patient == p)
            && self.study.as_ref().is_none_or(|s| &r.study == s)
            && self
                .organisation
                .as_ref()
                .is_none_or(|o| &r.organisation == o)
            && self.action.as_ref().is_none_or(|a| &r.action == a)
            && self.since_ms.is_none_or(|t| r.time_unix_ms >= t)
            && self.until_ms.is_none_or(|t| r.time_unix_ms < t)
    }
}

impl AuditLog {
    /// Finds where the log ends and starts the writer.
    pub fn open(store: Arc<Store>) -> Result<AuditLog, AuditError> {
        let keys = store.keys(Namespace::AUDIT);
        let next_seq = match keys.last() {
            None => 1,
            Some(last) => {
                let key = String::from_utf8_lossy(last).into_owned();
                let records = read_batch(&store, &key)?;
                let first = u64::from_str_radix(&key, 16).map_err(|_| AuditError::Damaged {
                    key: key.clone(),
                    reason: "the key is not a sequence number".into(),
                })?;
                records.last().map_or(first, |r| r.seq + 1)
            }
        };
        let (tx, rx) = mpsc::sync_channel(AUDIT_QUEUE_RECORDS_MAX);
        let thread = std::thread::Builder::new()
            .name("kuvasto-audit".into())
            .spawn(move || write_loop(&store, rx, next_seq))
            .map_err(|e| AuditError::Write(e.to_string()))?;
        Ok(AuditLog {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Appends `record` (its `seq` is assigned here) and returns its `seq` once durable.
    pub fn record(&self, record: AuditRecord) -> Result<u64, AuditError> {
        let tx = self.tx.as_ref().ok_or(AuditError::Closed)?;
        let (done, rx) = mpsc::sync_channel(1);
        tx.send(Pending { record, done })
            .map_err(|_| AuditError::Closed)?;
        rx.recv().map_err(|_| AuditError::Closed)?
    }

    /// Stops the writer after the records already queued.
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_batch(store: &Store, key: &str) -> Result<Vec<AuditRecord>, AuditError> {
    let damaged = |reason: String| AuditError::Damaged {
        key: key.to_string(),
        reason,
    };
    let Some(object) = store
        .get(Namespace::AUDIT, key.as_bytes())
        .map_err(|e| damaged(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    let body = object.read_all().map_err(|e| damaged(e.to_string()))?;
    parse_batch(key, &body)
}

/// The records `filter` wants, oldest first, at most `filter.limit`.
pub fn read(store: &Store, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
    let mut out = Vec::new();
    if filter.limit == 0 {
        return Ok(out);
    }
    let keys = store.keys(Namespace::AUDIT);
    for (i, key) in keys.iter().enumerate() {
        // A batch holds seqs up to the next batch's first: skip whole batches before
        // `after_seq` without reading them.
        if let Some(next) = keys.get(i + 1) {
            let next_first = u64::from_str_radix(&String::from_utf8_lossy(next), 16).unwrap_or(0);
            if next_first <= filter.after_seq + 1 {
                continue;
            }
        }
        let key = String::from_utf8_lossy(key).into_owned();
        for record in read_batch(store, &key)? {
            if filter.wants(&record) {
                out.push(record);
                if out.len() >= filter.limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

fn write_loop(store: &Store, rx: Receiver<Pending>, mut next_seq: u64) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < AUDIT_BATCH_RECORDS_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let first_seq = next_seq;
        let mut body = Vec::with_capacity(batch.len() * 400);
        for (i, pending) in batch.iter_mut().enumerate() {
            pending.record.seq = first_seq + i as u64;
            // Plain structs of strings and numbers always serialize.
            if let Ok(line) = serde_json::to_vec(&pending.record) {
                body.extend_from_slice(&line);
            }
            body.push(b'\n');
        }
        let result = store
            .put(Namespace::AUDIT, batch_key(first_seq).as_bytes(), &body)
            .map_err(|e| AuditError::Write(e.to_string()));
        if result.is_ok() {
            next_seq += batch.len() as u64;
        }
        for pending in batch {
            let _ = pending.done.send(match &result {
                Ok(_) => Ok(pending.record.seq),
                Err(e) => Err(e.clone()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuvasto_engine::io::sim::SimStorage;
    use kuvasto_engine::StoreConfig;

    fn record(patient: &str, action: &str) -> AuditRecord {
        AuditRecord {
            seq: 0,
            time_unix_ms: 1000,
            organisation: "1.2.3".into(),
            system: "pacs".into(),
            role: "system".into(),
            on_behalf_of: String::new(),
            protocol: "dimse".into(),
            peer: "PACS@127.0.0.1:1".into(),
            action: action.into(),
            outcome: Outcome::Success,
            patient: patient.into(),
            study: String::new(),
            register: String::new(),
            detail: "a \"quoted\"\nline".into(),
        }
    }

    #[test]
    fn records_get_consecutive_seqs_across_batches_and_reopens() {
        let storage = Arc::new(SimStorage::new(1));
        let config = StoreConfig {
            segment_size_bytes_max: 1 << 20,
            put_buffer_bytes: 64 << 10,
            batch_bytes_max: 128 << 10,
            ..StoreConfig::default()
        };
        let store = Arc::new(Store::open_with(storage.clone(), config.clone()).expect("open"));
        let mut log = AuditLog::open(store.clone()).expect("log");
        // Concurrent writers share batches; every record gets its own seq.
        let seqs: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let log = &log;
                    s.spawn(move || {
                        (0..25)
                            .map(|_| {
                                log.record(record(&format!("p{i}"), "read"))
                                    .expect("record")
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("join"))
                .collect()
        });
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=200).collect::<Vec<u64>>());
        log.close();
        drop(log);
        let store = Arc::try_unwrap(store).ok().expect("sole owner");
        store.close();
        let store = Arc::new(Store::open_with(storage, config).expect("reopen"));
        let log = AuditLog::open(store.clone()).expect("log");
        assert_eq!(log.record(record("p0", "store")).expect("record"), 201);
        let all = read(
            &store,
            &AuditFilter {
                limit: 1000,
                ..AuditFilter::default()
            },
        )
        .expect("read");
        assert_eq!(all.len(), 201);
        assert!(all.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        assert_eq!(
            all[0].detail, "a \"quoted\"\nline",
            "text survives JSON lines"
        );
        let p3 = read(
            &store,
            &AuditFilter {
                patient: Some("p3".into()),
                limit: 1000,
                ..AuditFilter::default()
            },
        )
        .expect("read");
        assert_eq!(p3.len(), 25);
        let later = read(
            &store,
            &AuditFilter {
                after_seq: 195,
                limit: 1000,
                ..AuditFilter::default()
            },
        )
        .expect("read");
        assert_eq!(
            later.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (196..=201).collect::<Vec<_>>()
        );
        let stores = read(
            &store,
            &AuditFilter {
                action: Some("store".into()),
                limit: 1000,
                ..AuditFilter::default()
            },
        )
        .expect("read");
        assert_eq!(stores.len(), 1);
    }
}
