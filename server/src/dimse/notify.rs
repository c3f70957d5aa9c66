//! Instance Availability Notification SCU (PS3.4 Annex R): when an association that stored
//! instances ends, or a STOW-RS request has stored some, each study they went into is
//! announced with an N-CREATE to every peer configured with `notify_availability`, on a new
//! association, by one background thread.
//!
//! The queue between associations and that thread is bounded
//! ([`NOTIFICATIONS_QUEUED_MAX`]); when it is full, or a subscriber cannot be reached, the
//! notification is logged as not delivered and dropped — the instances themselves are stored
//! and findable either way, and a subscriber can always ask with C-FIND.

use super::client::{connect, Proposal};
use super::link::Incoming;
use crate::config::{DimseSection, Peer};
use kuvasto_dimse::command::{field, status, Command, DATA_SET_PRESENT};
use kuvasto_dimse::dataset::DataSet;
use kuvasto_engine::dicom::json::Encoding;
use kuvasto_engine::dicom::Tag;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;

pub const INSTANCE_AVAILABILITY_NOTIFICATION: &str = "1.2.840.10008.5.1.4.33";
/// Associations' lists of stored instances waiting to be announced.
pub const NOTIFICATIONS_QUEUED_MAX: usize = 1024;
/// An association storing more instances than this announces them in parts.
pub const INSTANCES_PER_NOTIFICATION_MAX: usize = 10_000;

const REFERENCED_PPS_SEQUENCE: Tag = Tag::new(0x0008, 0x1111);
const REFERENCED_SERIES_SEQUENCE: Tag = Tag::new(0x0008, 0x1115);
const REFERENCED_SOP_SEQUENCE: Tag = Tag::new(0x0008, 0x1199);
const REFERENCED_SOP_CLASS_UID: Tag = Tag::new(0x0008, 0x1150);
const REFERENCED_SOP_INSTANCE_UID: Tag = Tag::new(0x0008, 0x1155);
const INSTANCE_AVAILABILITY: Tag = Tag::new(0x0008, 0x0056);
const RETRIEVE_AE_TITLE: Tag = Tag::new(0x0008, 0x0054);
const STUDY_INSTANCE_UID: Tag = Tag::new(0x0020, 0x000D);
const SERIES_INSTANCE_UID: Tag = Tag::new(0x0020, 0x000E);

/// One instance an association stored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredInstance {
    pub study: String,
    pub series: String,
    pub sop_class: String,
    pub sop_instance: String,
}

impl StoredInstance {
    pub fn of(attrs: &kuvasto_engine::index::attrs::InstanceAttrs) -> StoredInstance {
        StoredInstance {
            study: attrs.study_instance_uid.clone(),
            series: attrs.series_instance_uid.clone(),
            sop_class: attrs.sop_class_uid.clone(),
            sop_instance: attrs.sop_instance_uid.clone(),
        }
    }
}

/// See the module documentation.
pub struct Notifier {
    tx: Mutex<Option<SyncSender<Vec<StoredInstance>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Notifier {
    /// Starts the sending thread, if any peer subscribes.
    pub fn start(config: &DimseSection) -> std::io::Result<Notifier> {
        let subscribers: Vec<Peer> = config
            .peers
            .iter()
            .filter(|p| p.notify_availability)
            .cloned()
            .collect();
        if subscribers.is_empty() {
            return Ok(Notifier {
                tx: Mutex::new(None),
                thread: Mutex::new(None),
            });
        }
        let (tx, rx) = sync_channel::<Vec<StoredInstance>>(NOTIFICATIONS_QUEUED_MAX);
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("kuvasto-notify".into())
            .spawn(move || {
                for instances in rx {
                    for (study, notification) in notifications(&config.ae_title, instances) {
                        for peer in &subscribers {
                            match deliver(&config, peer, &notification) {
                                Ok(code) => tracing::info!(peer = %peer.ae_title, %study, status = format!("{code:04X}"), "instance availability notified"),
                                Err(e) => tracing::warn!(peer = %peer.ae_title, %study, error = %e, "instance availability notification not delivered"),
                            }
                        }
                    }
                }
            })?;
        Ok(Notifier {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Whether any peer subscribes (otherwise nothing needs collecting).
    pub fn enabled(&self) -> bool {
        self.tx.lock().map(|tx| tx.is_some()).unwrap_or(false)
    }

    /// Queues the studies of `instances` for announcement (never blocks).
    pub fn notify(&self, instances: Vec<StoredInstance>) {
        if instances.is_empty() {
            return;
        }
        let Ok(tx) = self.tx.lock() else {
            return;
        };
        let Some(tx) = tx.as_ref() else {
            return;
        };
        match tx.try_send(instances) {
            Ok(()) => {}
            Err(TrySendError::Full(dropped)) => tracing::warn!(
                instances = dropped.len(),
                queued_max = NOTIFICATIONS_QUEUED_MAX,
                "instance availability notification dropped: the queue is full"
            ),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Sends what is queued, then stops (later notifications are dropped).
    pub fn stop(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// A fresh UID under the 2.25 root (a random 128-bit number, PS3.5 B.2).
fn new_uid() -> String {
    let random = |salt: u64| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        hasher.finish()
    };
    let value = (u128::from(random(1)) << 64) | u128::from(random(2));
    format!("2.25.{value}")
}

/// The notification data set of each study (PS3.4 R.3), series and instances in UID order.
pub fn notifications(ae_title: &str, instances: Vec<StoredInstance>) -> Vec<(String, DataSet)> {
    let mut studies: BTreeMap<String, BTreeMap<String, Vec<StoredInstance>>> = BTreeMap::new();
    for instance in instances {
        studies
            .entry(instance.study.clone())
            .or_default()
            .entry(instance.series.clone())
            .or_default()
            .push(instance);
    }
    studies
        .into_iter()
        .map(|(study, series)| {
            let mut out = DataSet::new();
            out.put_items(REFERENCED_PPS_SEQUENCE, Vec::new());
            out.put_text(STUDY_INSTANCE_UID, *b"UI", &study);
            let series_items = series
                .into_iter()
                .map(|(series_uid, mut instances)| {
                    instances.sort();
                    instances.dedup();
                    let mut item = DataSet::new();
                    item.put_text(SERIES_INSTANCE_UID, *b"UI", &series_uid);
                    let sops = instances
                        .iter()
                        .map(|i| {
                            let mut sop = DataSet::new();
                            sop.put_text(RETRIEVE_AE_TITLE, *b"AE", ae_title);
                            sop.put_text(INSTANCE_AVAILABILITY, *b"CS", "ONLINE");
                            sop.put_text(REFERENCED_SOP_CLASS_UID, *b"UI", &i.sop_class);
                            sop.put_text(REFERENCED_SOP_INSTANCE_UID, *b"UI", &i.sop_instance);
                            sop
                        })
                        .collect();
                    item.put_items(REFERENCED_SOP_SEQUENCE, sops);
                    item
                })
                .collect();
            out.put_items(REFERENCED_SERIES_SEQUENCE, series_items);
            (study, out)
        })
        .collect()
}

/// Sends one notification to `peer`; its N-CREATE status.
fn deliver(config: &DimseSection, peer: &Peer, notification: &DataSet) -> anyhow::Result<u16> {
    let mut link = connect(
        config,
        peer,
        vec![Proposal {
            abstract_syntax: INSTANCE_AVAILABILITY_NOTIFICATION.into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2.1".into(), "1.2.840.10008.1.2".into()],
            roles: None,
        }],
    )?;
    let context = link.accepted().first().map(|c| c.id).ok_or_else(|| {
        anyhow::anyhow!(
            "{} accepted no Instance Availability Notification context",
            peer.ae_title
        )
    })?;
    let encoding = link.encoding(context).unwrap_or(Encoding::ImplicitLittle);
    let request = Command {
        field: field::N_CREATE_RQ,
        affected_sop_class_uid: Some(INSTANCE_AVAILABILITY_NOTIFICATION.into()),
        affected_sop_instance_uid: Some(new_uid()),
        message_id: Some(1),
        data_set_type: DATA_SET_PRESENT,
        ..Command::default()
    };
    link.send_with_data(context, &request, &notification.encode(encoding))?;
    let code = match link.next_command()? {
        Incoming::Command { command, context } if command.field == field::N_CREATE_RSP => {
            if command.has_data_set() {
                link.read_data_set_bytes(context)?;
            }
            command.status.unwrap_or(status::PROCESSING_FAILURE)
        }
        Incoming::Command { command, .. } => {
            anyhow::bail!("answered with command {:04X}", command.field)
        }
        Incoming::Released | Incoming::Aborted => anyhow::bail!("the peer ended the association"),
    };
    let _ = link.wire.release();
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_lists_each_study_by_series_and_uids_are_fresh() {
        let instance = |study: &str, series: &str, sop: &str| StoredInstance {
            study: study.into(),
            series: series.into(),
            sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance: sop.into(),
        };
        let out = notifications(
            "KUVASTO",
            vec![
                instance("1.1", "1.1.1", "1.1.1.2"),
                instance("1.2", "1.2.1", "1.2.1.1"),
                instance("1.1", "1.1.1", "1.1.1.1"),
                instance("1.1", "1.1.2", "1.1.2.1"),
                instance("1.1", "1.1.1", "1.1.1.1"),
            ],
        );
        assert_eq!(out.len(), 2);
        let (study, first) = &out[0];
        assert_eq!(study, "1.1");
        assert_eq!(first.text(STUDY_INSTANCE_UID).as_deref(), Some("1.1"));
        let series = first.items(REFERENCED_SERIES_SEQUENCE);
        assert_eq!(series.len(), 2);
        let sops = series[0].items(REFERENCED_SOP_SEQUENCE);
        assert_eq!(sops.len(), 2, "a repeated instance is listed once");
        assert_eq!(
            sops[0].text(REFERENCED_SOP_INSTANCE_UID).as_deref(),
            Some("1.1.1.1")
        );
        assert_eq!(
            sops[0].text(INSTANCE_AVAILABILITY).as_deref(),
            Some("ONLINE")
        );
        assert_eq!(sops[0].text(RETRIEVE_AE_TITLE).as_deref(), Some("KUVASTO"));
        assert!(first.contains(REFERENCED_PPS_SEQUENCE));
        let encoded = first.encode(Encoding::ImplicitLittle);
        assert_eq!(
            &DataSet::decode(&encoded, Encoding::ImplicitLittle).unwrap(),
            first
        );
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        assert!(a.starts_with("2.25.") && a.len() <= 64);
    }
}
