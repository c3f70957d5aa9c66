//! Storage Commitment Push Model SCP (PS3.4 Annex J): the moment the duty to keep the data
//! passes to the archive.
//!
//! N-ACTION-RQ (action 1, "request storage commitment") names a transaction and the instances;
//! it is answered at once. Then every instance is checked: it must be stored, of the SOP class
//! named, and its whole object must read back with every block checksum verifying. The result
//! goes out as N-EVENT-REPORT-RQ (event 1: all committed, 2: some failed, with a reason each)
//! on the same association, or on a new association to the requester's configured address
//! when its peer entry says `new-association` (or the same association is gone).

use super::link::{Incoming, Link, LinkError, Wire};
use super::session::Session;
use crate::archive::{Archive, Caller};
use crate::config::Peer;
use kuvasto_dimse::command::{field, status, Command, DATA_SET_PRESENT};
use kuvasto_dimse::dataset::DataSet;
use kuvasto_engine::dicom::json::Encoding;
use kuvasto_engine::dicom::Tag;

pub const STORAGE_COMMITMENT_PUSH_MODEL: &str = "1.2.840.10008.1.20.1";
/// The well-known SOP instance of the Push Model.
pub const STORAGE_COMMITMENT_INSTANCE: &str = "1.2.840.10008.1.20.1.1";
const TRANSACTION_UID: Tag = Tag::new(0x0008, 0x1195);
const REFERENCED_SOP_SEQUENCE: Tag = Tag::new(0x0008, 0x1199);
const FAILED_SOP_SEQUENCE: Tag = Tag::new(0x0008, 0x1198);
const REFERENCED_SOP_CLASS_UID: Tag = Tag::new(0x0008, 0x1150);
const REFERENCED_SOP_INSTANCE_UID: Tag = Tag::new(0x0008, 0x1155);
const FAILURE_REASON: Tag = Tag::new(0x0008, 0x1197);
const RETRIEVE_AE_TITLE: Tag = Tag::new(0x0008, 0x0054);
/// Most instances one request may name.
pub const REFERENCES_MAX: usize = 10_000;

/// Failure reasons of PS3.4 J.3.2.1.1.1 (and C.4.2.1.4's general ones).
pub mod reason {
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    pub const NO_SUCH_OBJECT_INSTANCE: u16 = 0x0112;
    pub const CLASS_INSTANCE_CONFLICT: u16 = 0x0119;
}

/// Checks one referenced instance: `Ok(())` when committed, else the failure reason.
pub fn verify(
    archive: &Archive,
    caller: &Caller,
    sop_class: &str,
    sop_instance: &str,
) -> Result<(), u16> {
    let (object, metadata) = match archive.open_instance(
        caller,
        sop_instance,
        crate::archive::COMMIT_VERIFY,
    ) {
        Ok(Some(found)) => found,
        Ok(None) => return Err(reason::NO_SUCH_OBJECT_INSTANCE),
        Err(e) => {
            tracing::error!(sop_instance, error = %e, "storage commitment: instance unreadable");
            return Err(reason::PROCESSING_FAILURE);
        }
    };
    if metadata.attrs.sop_class_uid != sop_class {
        return Err(reason::CLASS_INSTANCE_CONFLICT);
    }
    // Every block of the object is read and its checksum verified.
    if let Err(e) = object.visit_range(0..object.len(), &mut |_| Ok(())) {
        tracing::error!(sop_instance, error = %e, "storage commitment: checksum verification failed");
        return Err(reason::PROCESSING_FAILURE);
    }
    Ok(())
}

/// The event information of a transaction's result, and its event type.
fn event_information(
    archive: &Archive,
    caller: &Caller,
    ae_title: &str,
    request: &DataSet,
) -> (DataSet, u16) {
    let mut committed = Vec::new();
    let mut failed = Vec::new();
    for item in request.items(REFERENCED_SOP_SEQUENCE) {
        let class = item.text(REFERENCED_SOP_CLASS_UID).unwrap_or_default();
        let instance = item.text(REFERENCED_SOP_INSTANCE_UID).unwrap_or_default();
        let mut out = DataSet::new();
        out.put_text(REFERENCED_SOP_CLASS_UID, *b"UI", &class);
        out.put_text(REFERENCED_SOP_INSTANCE_UID, *b"UI", &instance);
        match verify(archive, caller, &class, &instance) {
            Ok(()) => committed.push(out),
            Err(code) => {
                out.put_u16(FAILURE_REASON, code);
                failed.push(out);
            }
        }
    }
    let detail = format!(
        "transaction={} committed={} failed={}",
        request.text(TRANSACTION_UID).unwrap_or_default(),
        committed.len(),
        failed.len()
    );
    // Each instance's verification was audited as it was read; this records the answer.
    let outcome = if failed.is_empty() {
        crate::archive::audit::Outcome::Success
    } else {
        crate::archive::audit::Outcome::Refused
    };
    if let Err(e) = archive.audit(caller, "storage-commitment", outcome, "", "", "", detail) {
        tracing::error!(error = %e, "a storage commitment could not be audited");
    }
    let mut info = DataSet::new();
    info.put_text(
        TRANSACTION_UID,
        *b"UI",
        &request.text(TRANSACTION_UID).unwrap_or_default(),
    );
    info.put_text(RETRIEVE_AE_TITLE, *b"AE", ae_title);
    let event_type = if failed.is_empty() { 1 } else { 2 };
    if !committed.is_empty() {
        info.put_items(REFERENCED_SOP_SEQUENCE, committed);
    }
    if !failed.is_empty() {
        info.put_items(FAILED_SOP_SEQUENCE, failed);
    }
    (info, event_type)
}

fn event_report(message_id: u16, event_type: u16) -> Command {
    Command {
        field: field::N_EVENT_REPORT_RQ,
        affected_sop_class_uid: Some(STORAGE_COMMITMENT_PUSH_MODEL.into()),
        affected_sop_instance_uid: Some(STORAGE_COMMITMENT_INSTANCE.into()),
        message_id: Some(message_id),
        event_type_id: Some(event_type),
        data_set_type: DATA_SET_PRESENT,
        ..Command::default()
    }
}

/// Sends the report over `link` on `context` and waits for its response.
fn report<W: Wire>(
    link: &mut Link<W>,
    context: u8,
    info: &DataSet,
    event_type: u16,
) -> Result<u16, LinkError> {
    let encoding = link.encoding(context).unwrap_or(Encoding::ImplicitLittle);
    let message_id = 1;
    link.send_with_data(
        context,
        &event_report(message_id, event_type),
        &info.encode(encoding),
    )?;
    match link.next_command()? {
        Incoming::Command { command, .. }
            if command.field == field::N_EVENT_REPORT_RSP
                && command.message_id_being_responded_to == Some(message_id) =>
        {
            Ok(command.status.unwrap_or(status::PROCESSING_FAILURE))
        }
        Incoming::Command { command, .. } => Err(LinkError::Protocol(format!(
            "command {:04X} while an N-EVENT-REPORT response was awaited",
            command.field
        ))),
        Incoming::Released => Err(LinkError::Released),
        Incoming::Aborted => Err(LinkError::Aborted),
    }
}

/// Sends the report on a new association to `peer`.
fn report_on_new_association(
    session: &Session,
    peer: &Peer,
    info: &DataSet,
    event_type: u16,
) -> anyhow::Result<u16> {
    let mut link = super::client::connect(
        &session.services.config,
        peer,
        vec![super::client::Proposal {
            abstract_syntax: STORAGE_COMMITMENT_PUSH_MODEL.into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2.1".into(), "1.2.840.10008.1.2".into()],
            // The archive acts as the SCP of the Push Model on this association (PS3.4 J.3.3).
            roles: Some((false, true)),
        }],
    )?;
    let context = link.accepted().first().map(|c| c.id).ok_or_else(|| {
        anyhow::anyhow!("{} accepted no Storage Commitment context", peer.ae_title)
    })?;
    let code = report(&mut link, context, info, event_type)?;
    let _ = link.wire.release();
    Ok(code)
}

pub fn n_action(session: &mut Session, context: u8, request: Command) -> Result<(), LinkError> {
    let respond = |session: &mut Session, code: u16, comment: Option<String>| {
        let mut response = Command::response_to(&request, code);
        response.action_type_id = request.action_type_id;
        response.error_comment = comment.map(|c| super::store::error_comment(&c));
        session.link.send_command(context, &response)
    };
    let action_information = if request.has_data_set() {
        Some(session.link.read_data_set(context)?)
    } else {
        None
    };
    if session.abstract_syntax(context) != STORAGE_COMMITMENT_PUSH_MODEL
        || request.requested_sop_class_uid.as_deref() != Some(STORAGE_COMMITMENT_PUSH_MODEL)
    {
        return respond(
            session,
            status::NO_SUCH_SOP_CLASS,
            Some("N-ACTION is served for Storage Commitment Push Model only".into()),
        );
    }
    if request.requested_sop_instance_uid.as_deref() != Some(STORAGE_COMMITMENT_INSTANCE) {
        return respond(
            session,
            0x0117, // invalid object instance
            Some("the Push Model's SOP instance is 1.2.840.10008.1.20.1.1".into()),
        );
    }
    if request.action_type_id != Some(1) {
        return respond(session, status::NO_SUCH_ACTION_TYPE, None);
    }
    let info = match action_information {
        None => {
            return respond(
                session,
                status::MISSING_ATTRIBUTE,
                Some("no action information".into()),
            )
        }
        Some(Err(e)) => {
            return respond(
                session,
                status::PROCESSING_FAILURE,
                Some(format!("unreadable action information: {e}")),
            )
        }
        Some(Ok(info)) => info,
    };
    let references = info.items(REFERENCED_SOP_SEQUENCE).len();
    if info.text(TRANSACTION_UID).unwrap_or_default().is_empty() || references == 0 {
        return respond(
            session,
            status::MISSING_ATTRIBUTE,
            Some("TransactionUID and a non-empty ReferencedSOPSequence are required".into()),
        );
    }
    if references > REFERENCES_MAX {
        return respond(
            session,
            status::PROCESSING_FAILURE,
            Some(format!(
                "more than {REFERENCES_MAX} instances in one request"
            )),
        );
    }
    respond(session, status::SUCCESS, None)?;
    let services = session.services;
    let (event, event_type) = event_information(
        &services.archive,
        &session.caller,
        &services.config.ae_title,
        &info,
    );
    let peer = services
        .config
        .peers
        .iter()
        .find(|p| p.ae_title == session.peer_ae_title)
        .cloned();
    if let Some(peer) = peer
        .as_ref()
        .filter(|p| p.commitment_reply == "new-association")
    {
        match report_on_new_association(session, peer, &event, event_type) {
            Ok(code) => {
                tracing::info!(peer = %peer.ae_title, status = format!("{code:04X}"), "storage commitment result sent on a new association")
            }
            Err(e) => {
                tracing::warn!(peer = %peer.ae_title, error = %e, "storage commitment result could not be sent")
            }
        }
        return Ok(());
    }
    match report(&mut session.link, context, &event, event_type) {
        Ok(code) => {
            tracing::info!(peer = %session.caller.peer, status = format!("{code:04X}"), "storage commitment result sent");
            Ok(())
        }
        Err(LinkError::Released) => {
            // The requester released before the result: it expects it on a new association.
            session.link.wire.send(&dicom_ul::pdu::Pdu::ReleaseRP)?;
            match peer {
                Some(peer) => match report_on_new_association(session, &peer, &event, event_type) {
                    Ok(code) => {
                        tracing::info!(peer = %peer.ae_title, status = format!("{code:04X}"), "storage commitment result sent on a new association")
                    }
                    Err(e) => {
                        tracing::warn!(peer = %peer.ae_title, error = %e, "storage commitment result could not be sent")
                    }
                },
                None => {
                    tracing::warn!(peer = %session.peer_ae_title, "storage commitment result not sent: the association was released and no address is configured for this AE title")
                }
            }
            Err(LinkError::Closed)
        }
        Err(e) => Err(e),
    }
}
