//! C-STORE SCP (PS3.4 Annex B): each data set fragment goes to the engine as it arrives (no
//! buffer of the whole instance), behind a file meta group built from the command and the
//! presentation context, so the archive keeps a Part 10 object exactly as received. The
//! response is sent once the engine has the instance durable, or with the failure's status.

use super::link::{Link, LinkError, ServerWire};
use super::session::Session;
use crate::archive::{Failure, FailureReason};
use kuvasto_dimse::command::{status, Command};
use kuvasto_engine::dicom::meta::encode_file_meta;

/// ErrorComment (LO) holds at most 64 characters.
pub fn error_comment(message: &str) -> String {
    let mut out: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(64)
        .collect();
    out.truncate(out.trim_end().len());
    out
}

/// Reads and drops the rest of a data set (after a refusal), so the association stays usable.
pub fn drain(link: &mut Link<ServerWire>, context: u8) -> Result<(), LinkError> {
    link.stream_data(context, &mut |_| {})
}

pub fn c_store(session: &mut Session, context: u8, request: Command) -> Result<(), LinkError> {
    let respond = |session: &mut Session, code: u16, comment: Option<String>| {
        let mut response = Command::response_to(&request, code);
        response.error_comment = comment;
        session.link.send_command(context, &response)
    };
    if !request.has_data_set() {
        return respond(
            session,
            status::MISTYPED_ARGUMENT,
            Some("C-STORE-RQ without a data set".into()),
        );
    }
    let (Some(sop_class), Some(sop_instance)) = (
        request.affected_sop_class_uid.clone(),
        request.affected_sop_instance_uid.clone(),
    ) else {
        drain(&mut session.link, context)?;
        return respond(
            session,
            status::MISSING_ATTRIBUTE,
            Some("C-STORE-RQ without Affected SOP Class/Instance UID".into()),
        );
    };
    let pc = session
        .link
        .context(context)
        .cloned()
        .ok_or_else(|| LinkError::Protocol("no such presentation context".into()))?;
    if pc.abstract_syntax != sop_class {
        drain(&mut session.link, context)?;
        return respond(
            session,
            FailureReason::DataSetMismatch.code(),
            Some(error_comment(&format!(
                "SOP class {sop_class} sent on a context for {}",
                pc.abstract_syntax
            ))),
        );
    }
    let archive = session.services.archive.clone();
    let caller = session.caller.clone();
    let mut upload = archive.begin_store(&caller, None);
    let mut failure: Option<Failure> = upload
        .write(&encode_file_meta(
            &sop_class,
            &sop_instance,
            &pc.transfer_syntax,
        ))
        .err();
    // A stalled or vanished peer ends this with an error: `upload` is dropped and nothing of
    // this instance is committed. After a refusal the rest is read and dropped.
    session.link.stream_data(context, &mut |data| {
        if failure.is_none() {
            failure = upload.write(data).err();
        }
    })?;
    let outcome = match failure {
        Some(failure) => Err(failure),
        None => upload.finish(),
    };
    match outcome {
        Ok(stored) => {
            let notifier = &session.services.notifier;
            // A quarantined instance is not available, so it is not announced (nor later, on
            // release: `docs/rules.md` §3).
            if notifier.enabled() && !stored.quarantined {
                session
                    .stored
                    .push(super::notify::StoredInstance::of(&stored.attrs));
                // A long association is announced in parts rather than held in memory.
                if session.stored.len() >= super::notify::INSTANCES_PER_NOTIFICATION_MAX {
                    notifier.notify(std::mem::take(&mut session.stored));
                }
            }
            respond(session, status::SUCCESS, None)
        }
        // The archive's audit line (`store-refused`) has recorded it.
        Err(failure) => respond(
            session,
            failure.reason.code(),
            Some(error_comment(&failure.message)),
        ),
    }
}
