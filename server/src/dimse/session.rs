//! One accepted association: reads commands one at a time and hands each to its service.
//! Operations are synchronous (no asynchronous operations window is negotiated), so a message
//! is answered completely before the next is read; a C-CANCEL is looked for while a C-FIND,
//! C-GET or C-MOVE is answering.

use super::link::{Incoming, Link, LinkError, ServerWire};
use super::{commitment, find, retrieve, store};
use crate::archive::{Archive, Caller};
use crate::config::DimseSection;
use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource, Pdu};
use kuvasto_dimse::command::{field, status, Command};
use kuvasto_engine::dicom::Tag;
use std::sync::Arc;

/// What every association of a listener shares.
pub struct Services {
    pub archive: Arc<Archive>,
    pub config: DimseSection,
    pub extra_tags: Vec<Tag>,
    pub notifier: Arc<super::notify::Notifier>,
    /// TLS for `dimse.tls` / `dimse.tls_listen` (loaded at start; `None` without TLS).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

pub struct Session<'s> {
    pub link: Link<ServerWire>,
    pub services: &'s Services,
    pub caller: Caller,
    /// The calling AE title.
    pub peer_ae_title: String,
    /// Instances this association stored, announced when it ends.
    pub stored: Vec<super::notify::StoredInstance>,
}

/// The metrics label of a command.
fn service_name(field: u16) -> &'static str {
    match field {
        field::C_ECHO_RQ => "C-ECHO",
        field::C_STORE_RQ => "C-STORE",
        field::C_FIND_RQ => "C-FIND",
        field::C_GET_RQ => "C-GET",
        field::C_MOVE_RQ => "C-MOVE",
        field::N_ACTION_RQ => "N-ACTION",
        field::C_CANCEL_RQ => "C-CANCEL",
        _ => "other",
    }
}

impl Session<'_> {
    /// Serves commands until the peer releases or aborts, or breaks the protocol (then the
    /// association is aborted); then announces the studies it stored into.
    pub fn run(mut self) -> anyhow::Result<()> {
        let result = self.serve();
        let stored = std::mem::take(&mut self.stored);
        self.services.notifier.notify(stored);
        result
    }

    fn serve(&mut self) -> anyhow::Result<()> {
        loop {
            let incoming = self.link.next_command();
            let result = match incoming {
                Ok(Incoming::Released) => {
                    self.link.wire.send(&Pdu::ReleaseRP)?;
                    return Ok(());
                }
                Ok(Incoming::Aborted) => {
                    tracing::info!(peer = %self.caller.peer, "DIMSE association aborted by the peer");
                    return Ok(());
                }
                Ok(Incoming::Command { context, command }) => {
                    let service = service_name(command.field);
                    let started = std::time::Instant::now();
                    let result = self.dispatch(context, *command);
                    let metrics = self.services.archive.metrics();
                    metrics.observe_seconds(
                        "kuvasto_dimse_operation_duration_seconds",
                        &[("service", service)],
                        started.elapsed().as_secs_f64(),
                    );
                    metrics.count("kuvasto_dimse_operations_total", &[("service", service)], 1);
                    result
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {}
                Err(LinkError::Aborted) => {
                    tracing::info!(peer = %self.caller.peer, "DIMSE association aborted by the peer");
                    return Ok(());
                }
                Err(LinkError::Closed) => return Ok(()),
                Err(LinkError::Released) => {
                    // A release in the middle of a message is a protocol error.
                    self.abort(AbortRQServiceProviderReason::UnexpectedPdu);
                    anyhow::bail!("the peer released the association in the middle of a message");
                }
                Err(LinkError::Protocol(message)) => {
                    self.abort(AbortRQServiceProviderReason::UnexpectedPdu);
                    anyhow::bail!("aborted: {message}");
                }
                Err(LinkError::Association(e)) => {
                    // dicom-ul could not send (or encode) a PDU: end the association.
                    self.abort(AbortRQServiceProviderReason::ReasonNotSpecified);
                    anyhow::bail!("aborted: {e}");
                }
                Err(LinkError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Idle (or stalled mid-message) past the idle timeout.
                    self.abort(AbortRQServiceProviderReason::ReasonNotSpecified);
                    anyhow::bail!(
                        "aborted after {} s without data",
                        self.services.config.idle_timeout_seconds
                    );
                }
                Err(LinkError::Io(e)) => anyhow::bail!("socket: {e}"),
            }
        }
    }

    fn abort(&mut self, reason: AbortRQServiceProviderReason) {
        let _ = self.link.wire.send(&Pdu::AbortRQ {
            source: AbortRQSource::ServiceProvider(reason),
        });
        let _ = self
            .link
            .wire
            .inner_stream()
            .shutdown(std::net::Shutdown::Both);
    }

    fn dispatch(&mut self, context: u8, command: Command) -> Result<(), LinkError> {
        match command.field {
            field::C_ECHO_RQ => {
                if command.has_data_set() {
                    store::drain(&mut self.link, context)?;
                }
                let response = Command::response_to(&command, status::SUCCESS);
                self.link.send_command(context, &response)
            }
            field::C_STORE_RQ => store::c_store(self, context, command),
            field::C_FIND_RQ => find::c_find(self, context, command),
            field::C_GET_RQ => retrieve::c_get(self, context, command),
            field::C_MOVE_RQ => retrieve::c_move(self, context, command),
            field::N_ACTION_RQ => commitment::n_action(self, context, command),
            // A cancel for an operation already answered: nothing to do (PS3.7 9.3.2.3).
            field::C_CANCEL_RQ => Ok(()),
            other => {
                if command.has_data_set() {
                    store::drain(&mut self.link, context)?;
                }
                tracing::info!(peer = %self.caller.peer, field = format!("{other:04X}"), "DIMSE command not supported");
                let mut response = Command::response_to(&command, status::UNRECOGNIZED_OPERATION);
                response.error_comment = Some(format!("command field {other:04X} is not served"));
                self.link.send_command(context, &response)
            }
        }
    }

    /// The abstract syntax of an accepted context.
    pub fn abstract_syntax(&self, context: u8) -> &str {
        self.link
            .context(context)
            .map(|c| c.abstract_syntax.as_str())
            .unwrap_or_default()
    }
}
