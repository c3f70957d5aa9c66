//! The DIMSE listener: associations over `dicom-ul` (sync), one thread each, at most
//! `associations_max` at once, calling AE titles checked against the configured list. Today it
//! answers C-ECHO (Verification); the storage and query services follow (issue 5).

use super::command::{field, status, Command};
use crate::config::DimseSection;
use anyhow::Context;
use dicom_ul::association::server::{AccessControl, DefaultNegotiation};
use dicom_ul::association::Association;
use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValue, PDataValueType, Pdu};
use dicom_ul::ServerAssociationOptions;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The Verification SOP class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Calling AE titles allowed to associate (all when the list is empty).
#[derive(Debug, Clone)]
struct CallingAeTitles(Vec<String>);

impl AccessControl for CallingAeTitles {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        _called_ae_title: &str,
        _user_identity: Option<&dicom_ul::pdu::UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if self.0.is_empty() || self.0.iter().any(|t| t == calling_ae_title.trim()) {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// A running listener; [`Listener::stop`] ends it.
pub struct Listener {
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Binds and starts accepting associations.
    pub fn start(config: &DimseSection) -> anyhow::Result<Listener> {
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("binding DIMSE to {}", config.listen))?;
        let address = listener.local_addr()?;
        // Polled, so that stop() is noticed within a tick.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let options = ServerAssociationOptions::new()
            .ae_access_control(CallingAeTitles(config.calling_ae_titles.clone()))
            .ae_title(config.ae_title.clone())
            .with_abstract_syntax(VERIFICATION)
            .max_pdu_length(config.max_pdu_bytes)
            .read_timeout(Duration::from_secs(config.idle_timeout_seconds))
            .write_timeout(Duration::from_secs(config.idle_timeout_seconds));
        let associations_max = config.associations_max;
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kuvasto-dimse".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            if active.load(Ordering::Relaxed) >= associations_max {
                                tracing::warn!(%peer, associations_max, "DIMSE association refused: too many at once");
                                continue; // dropping the stream closes it
                            }
                            active.fetch_add(1, Ordering::Relaxed);
                            let options = options.clone();
                            let active = active.clone();
                            let spawned = std::thread::Builder::new()
                                .name("kuvasto-assoc".into())
                                .spawn(move || {
                                    if let Err(e) = serve_association(&options, stream, peer) {
                                        tracing::warn!(%peer, error = %e, "DIMSE association ended with an error");
                                    }
                                    active.fetch_sub(1, Ordering::Relaxed);
                                });
                            if spawned.is_err() {
                                tracing::error!(%peer, "cannot start an association thread");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "DIMSE accept failed");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })?;
        tracing::info!(%address, ae_title = %config.ae_title, "DIMSE listening");
        Ok(Listener {
            address,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting (associations in progress end on their own or at their idle timeout).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_association(
    options: &ServerAssociationOptions<'static, CallingAeTitles, DefaultNegotiation>,
    stream: TcpStream,
    peer: SocketAddr,
) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let mut association = options.establish(stream)?;
    tracing::info!(%peer, calling = association.peer_ae_title(), "DIMSE association accepted");
    let mut command = Vec::new();
    loop {
        match association.receive()? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        continue; // no service here takes a data set yet
                    }
                    command.extend_from_slice(&pdv.data);
                    if command.len() > super::command::COMMAND_BYTES_MAX {
                        association.abort()?;
                        anyhow::bail!(
                            "command set over {} bytes",
                            super::command::COMMAND_BYTES_MAX
                        );
                    }
                    if !pdv.is_last {
                        continue;
                    }
                    let request = match Command::decode(&command) {
                        Ok(request) => request,
                        Err(e) => {
                            association.abort()?;
                            anyhow::bail!("unreadable command set: {e}");
                        }
                    };
                    command.clear();
                    let response = match request.field {
                        field::C_ECHO_RQ => Command::response_to(&request, status::SUCCESS),
                        _ => Command::response_to(&request, status::UNRECOGNIZED_OPERATION),
                    };
                    association.send(&Pdu::PData {
                        data: vec![PDataValue {
                            presentation_context_id: pdv.presentation_context_id,
                            value_type: PDataValueType::Command,
                            is_last: true,
                            data: response.encode(),
                        }],
                    })?;
                }
            }
            Pdu::ReleaseRQ => {
                association.send(&Pdu::ReleaseRP)?;
                return Ok(());
            }
            Pdu::AbortRQ { source } => {
                tracing::info!(%peer, ?source, "DIMSE association aborted by the peer");
                return Ok(());
            }
            other => {
                association.abort()?;
                anyhow::bail!("unexpected PDU {:?}", std::mem::discriminant(&other));
            }
        }
    }
}
