//! C-GET and C-MOVE SCP (PS3.4 C.4.2, C.4.3): the instances an identifier selects are sent
//! with C-STORE sub-operations — back over the requesting association (C-GET, the requester
//! having taken the SCP role for the storage classes) or over a new association to a
//! configured destination (C-MOVE) — with a pending response and the sub-operation counts
//! after each, cancel honoured between sub-operations, and a final status.
//!
//! Instances go out as stored: the data set bytes of the Part 10 object, read from the
//! segments with their checksums verified, in the stored transfer syntax (there is no
//! transcoding, so a peer that accepts none of a stored syntax gets a failed sub-operation).

use super::find::{identifier_query, query_level, QUERY_RETRIEVE_LEVEL};
use super::link::{Incoming, Link, LinkError, Wire};
use super::session::Session;
use crate::archive::{Archive, Caller};
use dicom_ul::pdu::PDataValueType;
use kuvasto_dimse::command::{field, status, Command, DATA_SET_PRESENT};
use kuvasto_dimse::dataset::DataSet;
use kuvasto_engine::index::attrs::{tags, Level};
use kuvasto_engine::index::catalog::InstanceHit;

pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
/// FailedSOPInstanceUIDList (0008,0058).
const FAILED_SOP_INSTANCE_UID_LIST: kuvasto_engine::dicom::Tag =
    kuvasto_engine::dicom::Tag::new(0x0008, 0x0058);
/// Most presentation contexts one association can propose (odd ids 1..=255).
const PROPOSED_CONTEXTS_MAX: usize = 128;

/// Sub-operation counts.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    remaining: u16,
    completed: u16,
    failed: u16,
    warning: u16,
}

fn clamp(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The result of one C-STORE sub-operation.
enum SubOutcome {
    Completed,
    Warning,
    Failed(String),
}

/// The instances an identifier selects, or the failure status and comment.
fn selected(
    session: &Session,
    abstract_syntax: &str,
    identifier: &DataSet,
) -> Result<Vec<InstanceHit>, (u16, String)> {
    let level = query_level(abstract_syntax, identifier)
        .map_err(|e| (status::IDENTIFIER_DOES_NOT_MATCH, e))?;
    // The unique key of the level asked for must be given (no "move everything").
    let unique = match level {
        Level::Patient => tags::PATIENT_ID,
        Level::Study => tags::STUDY_INSTANCE_UID,
        Level::Series => tags::SERIES_INSTANCE_UID,
        Level::Instance => tags::SOP_INSTANCE_UID,
    };
    let unique_value = identifier.text(unique).unwrap_or_default();
    // Unique keys are single values or lists (PS3.4 C.4.2.2.1): no wild cards, no ranges.
    if unique_value.is_empty() || unique_value.contains(['*', '?']) {
        return Err((
            status::IDENTIFIER_DOES_NOT_MATCH,
            format!(
                "a {} retrieval needs {} as a value or a list of values, not {unique_value:?}",
                identifier.text(QUERY_RETRIEVE_LEVEL).unwrap_or_default(),
                super::find::keyword(unique)
            ),
        ));
    }
    let services = session.services;
    let (keys, _) = identifier_query(Level::Instance, identifier, &services.extra_tags)
        .map_err(|e| (status::UNABLE_TO_PROCESS, e))?;
    services
        .archive
        .search_instances(&session.caller, keys.query)
        .map_err(|e| (status::UNABLE_TO_PROCESS, e.to_string()))
}

/// Sends one stored instance with C-STORE over `link` and waits for the response. A C-CANCEL
/// for `cancel_for` read meanwhile sets `cancelled`.
#[allow(clippy::too_many_arguments)]
fn send_instance<W: Wire>(
    link: &mut Link<W>,
    archive: &Archive,
    caller: &Caller,
    hit: &InstanceHit,
    message_id: u16,
    originator: Option<(&str, Option<u16>)>,
    cancel_for: Option<Option<u16>>,
    cancelled: &mut bool,
) -> Result<SubOutcome, LinkError> {
    let attrs = &hit.attrs;
    let Some(context) = link
        .accepted()
        .iter()
        .find(|c| {
            c.abstract_syntax == attrs.sop_class_uid
                && c.transfer_syntax == attrs.transfer_syntax_uid
        })
        .map(|c| c.id)
    else {
        return Ok(SubOutcome::Failed(format!(
            "the peer accepted no presentation context for {} in {}",
            attrs.sop_class_uid, attrs.transfer_syntax_uid
        )));
    };
    let (object, metadata) =
        match archive.open_instance(caller, &attrs.sop_instance_uid, "retrieve") {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(SubOutcome::Failed("deleted meanwhile".into())),
            Err(e) => return Ok(SubOutcome::Failed(e.to_string())),
        };
    let mut request = Command {
        field: field::C_STORE_RQ,
        affected_sop_class_uid: Some(attrs.sop_class_uid.clone()),
        affected_sop_instance_uid: Some(attrs.sop_instance_uid.clone()),
        message_id: Some(message_id),
        priority: Some(0),
        data_set_type: DATA_SET_PRESENT,
        ..Command::default()
    };
    if let Some((ae, id)) = originator {
        request.move_originator_ae_title = Some(ae.to_string());
        request.move_originator_message_id = id;
    }
    link.send_command(context, &request)?;
    // Stream the data set: PDVs of the peer's size; the last one is sent once the object's end
    // is known, so it can carry the last flag.
    let max = link.pdv_bytes_max();
    let mut buffer = Vec::with_capacity(max);
    let mut sent_error = None;
    let read = object.visit_range(metadata.data_set_offset..object.len(), &mut |mut bytes| {
        while !bytes.is_empty() {
            if buffer.len() == max {
                let full = std::mem::replace(&mut buffer, Vec::with_capacity(max));
                if let Err(e) = link.send_pdv(context, PDataValueType::Data, full, false) {
                    sent_error = Some(e);
                    return Err(kuvasto_engine::Error::InvalidArgument("send failed".into()));
                }
            }
            let take = (max - buffer.len()).min(bytes.len());
            buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        Ok(())
    });
    if let Some(e) = sent_error {
        return Err(e);
    }
    if let Err(e) = read {
        // The object could not be read whole (a checksum failed): the data set is cut short,
        // so the association cannot continue cleanly.
        return Err(LinkError::Protocol(format!(
            "stored instance {} unreadable while sending: {e}",
            attrs.sop_instance_uid
        )));
    }
    link.send_pdv(context, PDataValueType::Data, buffer, true)?;
    loop {
        match link.next_command()? {
            Incoming::Command { command, .. }
                if command.field == field::C_STORE_RSP
                    && command.message_id_being_responded_to == Some(message_id) =>
            {
                let code = command.status.unwrap_or(status::PROCESSING_FAILURE);
                return Ok(match code {
                    status::SUCCESS => SubOutcome::Completed,
                    0xB000..=0xBFFF => SubOutcome::Warning,
                    other => SubOutcome::Failed(format!(
                        "the peer answered {other:04X}{}",
                        command
                            .error_comment
                            .map(|c| format!(" ({c})"))
                            .unwrap_or_default()
                    )),
                });
            }
            Incoming::Command { command, .. }
                if command.field == field::C_CANCEL_RQ
                    && cancel_for == Some(command.message_id_being_responded_to) =>
            {
                *cancelled = true;
            }
            Incoming::Command { command, .. } => {
                return Err(LinkError::Protocol(format!(
                    "command {:04X} while a C-STORE response was awaited",
                    command.field
                )))
            }
            Incoming::Released => return Err(LinkError::Released),
            Incoming::Aborted => return Err(LinkError::Aborted),
        }
    }
}

/// The response with the counts (and the failed instances on the final one).
fn send_progress(
    session: &mut Session,
    context: u8,
    request: &Command,
    code: u16,
    counts: Counts,
    failed: &[String],
) -> Result<(), LinkError> {
    let mut response = Command::response_to(request, code);
    response.affected_sop_instance_uid = None;
    if code == status::PENDING || code == status::CANCEL {
        response.remaining = Some(counts.remaining);
    }
    response.completed = Some(counts.completed);
    response.failed = Some(counts.failed);
    response.warning = Some(counts.warning);
    if code != status::PENDING && !failed.is_empty() {
        let mut identifier = DataSet::new();
        identifier.put_text(FAILED_SOP_INSTANCE_UID_LIST, *b"UI", &failed.join("\\"));
        let encoding = session
            .link
            .encoding(context)
            .map_err(LinkError::Protocol)?;
        response.data_set_type = DATA_SET_PRESENT;
        return session
            .link
            .send_with_data(context, &response, &identifier.encode(encoding));
    }
    session.link.send_command(context, &response)
}

fn final_status(cancelled: bool, counts: Counts) -> u16 {
    if cancelled {
        status::CANCEL
    } else if counts.failed == 0 && counts.warning == 0 {
        status::SUCCESS
    } else if counts.completed == 0 && counts.warning == 0 {
        status::UNABLE_TO_PROCESS
    } else {
        status::SUB_OPERATIONS_FAILED
    }
}

/// Reads the identifier and selects the instances; `Ok(None)` when a refusal was sent.
fn begin(
    session: &mut Session,
    context: u8,
    request: &Command,
    models: [&str; 2],
) -> Result<Option<Vec<InstanceHit>>, LinkError> {
    let refuse = |session: &mut Session, code: u16, comment: String| {
        let mut response = Command::response_to(request, code);
        response.error_comment = Some(super::store::error_comment(&comment));
        session.link.send_command(context, &response)
    };
    if !request.has_data_set() {
        refuse(session, status::MISSING_ATTRIBUTE, "no identifier".into())?;
        return Ok(None);
    }
    let identifier = session.link.read_data_set(context)?;
    let abstract_syntax = session.abstract_syntax(context).to_string();
    if !models.contains(&abstract_syntax.as_str()) {
        refuse(
            session,
            status::SOP_CLASS_NOT_SUPPORTED,
            format!("not served on {abstract_syntax}"),
        )?;
        return Ok(None);
    }
    let identifier = match identifier {
        Ok(identifier) => identifier,
        Err(e) => {
            refuse(
                session,
                status::UNABLE_TO_PROCESS,
                format!("unreadable identifier: {e}"),
            )?;
            return Ok(None);
        }
    };
    match selected(session, &abstract_syntax, &identifier) {
        Ok(hits) => Ok(Some(hits)),
        Err((code, comment)) => {
            refuse(session, code, comment)?;
            Ok(None)
        }
    }
}

pub fn c_get(session: &mut Session, context: u8, request: Command) -> Result<(), LinkError> {
    let Some(hits) = begin(
        session,
        context,
        &request,
        [PATIENT_ROOT_GET, STUDY_ROOT_GET],
    )?
    else {
        return Ok(());
    };
    let archive = session.services.archive.clone();
    let caller = session.caller.clone();
    let mut counts = Counts {
        remaining: clamp(hits.len()),
        ..Counts::default()
    };
    let mut failed = Vec::new();
    let mut cancelled = false;
    for (i, hit) in hits.iter().enumerate() {
        if cancelled || session.link.cancel_requested(request.message_id)? {
            cancelled = true;
            break;
        }
        let message_id = clamp(i + 1);
        let outcome = send_instance(
            &mut session.link,
            &archive,
            &caller,
            hit,
            message_id,
            None,
            Some(request.message_id),
            &mut cancelled,
        )?;
        tally(&mut counts, &mut failed, hit, outcome);
        if counts.remaining > 0 {
            send_progress(session, context, &request, status::PENDING, counts, &[])?;
        }
    }
    let code = final_status(cancelled, counts);
    send_progress(session, context, &request, code, counts, &failed)
}

fn tally(counts: &mut Counts, failed: &mut Vec<String>, hit: &InstanceHit, outcome: SubOutcome) {
    counts.remaining = counts.remaining.saturating_sub(1);
    match outcome {
        SubOutcome::Completed => counts.completed = counts.completed.saturating_add(1),
        SubOutcome::Warning => counts.warning = counts.warning.saturating_add(1),
        SubOutcome::Failed(why) => {
            tracing::info!(sop_instance = %hit.attrs.sop_instance_uid, reason = %why, "retrieve sub-operation failed");
            counts.failed = counts.failed.saturating_add(1);
            failed.push(hit.attrs.sop_instance_uid.clone());
        }
    }
}

pub fn c_move(session: &mut Session, context: u8, request: Command) -> Result<(), LinkError> {
    let Some(hits) = begin(
        session,
        context,
        &request,
        [PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE],
    )?
    else {
        return Ok(());
    };
    let services = session.services;
    let destination = request
        .move_destination
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    let Some(peer) = services
        .config
        .peers
        .iter()
        .find(|p| p.ae_title == destination)
        .cloned()
    else {
        let mut response = Command::response_to(&request, status::MOVE_DESTINATION_UNKNOWN);
        response.error_comment = Some(super::store::error_comment(&format!(
            "move destination {destination:?} is not configured"
        )));
        return session.link.send_command(context, &response);
    };
    let mut counts = Counts {
        remaining: clamp(hits.len()),
        ..Counts::default()
    };
    if hits.is_empty() {
        return send_progress(session, context, &request, status::SUCCESS, counts, &[]);
    }
    // One context per stored (SOP class, transfer syntax) pair.
    let mut pairs: Vec<(String, String)> = hits
        .iter()
        .map(|h| {
            (
                h.attrs.sop_class_uid.clone(),
                h.attrs.transfer_syntax_uid.clone(),
            )
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs.truncate(PROPOSED_CONTEXTS_MAX);
    let proposals = pairs
        .iter()
        .map(|(class, ts)| super::client::Proposal {
            abstract_syntax: class.clone(),
            transfer_syntaxes: vec![ts.clone()],
            roles: None,
        })
        .collect();
    let mut out = match super::client::connect(&services.config, &peer, proposals) {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(destination = %peer.ae_title, address = %peer.address, error = %e, "C-MOVE destination unreachable");
            let mut response =
                Command::response_to(&request, status::OUT_OF_RESOURCES_SUB_OPERATIONS);
            response.error_comment = Some(super::store::error_comment(&format!(
                "cannot associate with {}: {e}",
                peer.ae_title
            )));
            return session.link.send_command(context, &response);
        }
    };
    let archive = services.archive.clone();
    let caller = session.caller.clone();
    let originator = session.peer_ae_title.clone();
    let mut failed = Vec::new();
    let mut cancelled = false;
    let mut result = Ok(());
    for (i, hit) in hits.iter().enumerate() {
        if session.link.cancel_requested(request.message_id)? {
            cancelled = true;
            break;
        }
        let outcome = match send_instance(
            &mut out,
            &archive,
            &caller,
            hit,
            clamp(i + 1),
            Some((&originator, request.message_id)),
            None,
            &mut cancelled,
        ) {
            Ok(outcome) => outcome,
            Err(e) => {
                // The destination failed: the rest cannot be sent.
                tracing::warn!(destination = %peer.ae_title, error = %e, "C-MOVE destination association failed");
                result = Err(e);
                SubOutcome::Failed("destination association failed".into())
            }
        };
        tally(&mut counts, &mut failed, hit, outcome);
        if result.is_err() {
            for rest in &hits[i + 1..] {
                tally(
                    &mut counts,
                    &mut failed,
                    rest,
                    SubOutcome::Failed("not sent".into()),
                );
            }
            break;
        }
        if counts.remaining > 0 {
            send_progress(session, context, &request, status::PENDING, counts, &[])?;
        }
    }
    if result.is_ok() {
        let _ = out.wire.release();
    }
    let code = final_status(cancelled, counts);
    send_progress(session, context, &request, code, counts, &failed)
}
