//! The DIMSE listener: associations over `dicom-ul` (sync), one thread each, at most
//! `associations_max` at once, calling AE titles checked against the configured list, and
//! each accepted association served by a [`Session`].
//!
//! Limits: association negotiation must finish within `artim_timeout_seconds`; an
//! association idle for `idle_timeout_seconds` is closed (an instance half received is then
//! dropped, never committed); PDUs over `max_pdu_bytes` get an A-ABORT. On stop, associations
//! get `grace` to finish, then their sockets are shut down.

use super::session::{Services, Session};
use crate::archive::Caller;
use anyhow::Context;
use dicom_ul::association::server::{AccessControl, Negotiation};
use dicom_ul::association::Association;
use dicom_ul::pdu::{AssociationRJServiceUserReason, RequestorRoles};
use dicom_ul::ServerAssociationOptions;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Verification SOP class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Calling AE titles allowed to associate (all when the list is empty).
/// Calling AE titles allowed to associate: any (standalone with no list), or exactly these
/// (the national profile's identities, or the standalone list).
#[derive(Debug, Clone)]
struct CallingAeTitles {
    any: bool,
    titles: Vec<String>,
}

impl AccessControl for CallingAeTitles {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        _called_ae_title: &str,
        _user_identity: Option<&dicom_ul::pdu::UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if self.any || self.titles.iter().any(|t| t == calling_ae_title.trim()) {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// Accepts the roles a requester proposes: a C-GET requester takes the SCP role for the
/// storage classes it wants to receive.
#[derive(Debug, Clone, Copy)]
struct AcceptProposedRoles;

impl Negotiation for AcceptProposedRoles {
    fn negotiate_roles(
        &self,
        _sop_class_uid: &str,
        scu_role: bool,
        scp_role: bool,
    ) -> Option<RequestorRoles> {
        Some(RequestorRoles {
            scu: scu_role,
            scp: scp_role,
        })
    }
}

type Options = ServerAssociationOptions<'static, CallingAeTitles, AcceptProposedRoles>;

/// Sockets of the associations being served, to shut down at stop.
#[derive(Default)]
struct Active {
    next_id: AtomicU64,
    sockets: Mutex<HashMap<u64, TcpStream>>,
}

impl Active {
    fn count(&self) -> usize {
        self.sockets.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// A running listener; [`Listener::stop`] ends it.
pub struct Listener {
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
    active: Arc<Active>,
    services: Arc<Services>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Binds and starts accepting associations.
    pub fn start(services: Services) -> anyhow::Result<Listener> {
        let config = services.config.clone();
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("binding DIMSE to {}", config.listen))?;
        let address = listener.local_addr()?;
        // Polled, so that stop() is noticed within a tick.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(Active::default());
        // Every abstract syntax is accepted at negotiation (dicom-ul cannot list the standard's
        // storage classes); each service refuses what it does not serve with a status
        // (0122 for a storage class the archive does not keep). Transfer syntaxes: the first
        // one proposed that the transfer syntax registry knows.
        let options: Options = ServerAssociationOptions::new()
            .ae_access_control(calling_ae_titles(&services))
            .with_negotiation(AcceptProposedRoles)
            .ae_title(config.ae_title.clone())
            .promiscuous(true)
            .max_pdu_length(config.max_pdu_bytes)
            // ARTIM: the whole negotiation within this time (the idle timeout follows).
            .read_timeout(Duration::from_secs(config.artim_timeout_seconds))
            .write_timeout(Duration::from_secs(config.artim_timeout_seconds));
        let services = Arc::new(services);
        let shared = services.clone();
        let stopping = stop.clone();
        let registry = active.clone();
        let thread = std::thread::Builder::new()
            .name("kuvasto-dimse".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            accept(&options, &services, &registry, stream, peer);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
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
            active,
            services: shared,
            thread: Some(thread),
        })
    }

    /// Stops accepting, gives the associations being served `grace` to end, then shuts their
    /// sockets down (an instance half received is dropped, never committed).
    pub fn stop(mut self, grace: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let deadline = Instant::now() + grace;
        while self.active.count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(sockets) = self.active.sockets.lock() {
            for socket in sockets.values() {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
        }
        // The threads notice the shut sockets at once.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.active.count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.services.notifier.stop();
    }
}

fn accept(
    options: &Options,
    services: &Arc<Services>,
    active: &Arc<Active>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let associations_max = services.config.associations_max;
    if active.count() >= associations_max {
        tracing::warn!(%peer, associations_max, "DIMSE association refused: too many at once");
        refuse_busy(stream);
        return;
    }
    let Ok(registered) = stream.try_clone() else {
        return;
    };
    let id = active.next_id.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut sockets) = active.sockets.lock() {
        sockets.insert(id, registered);
    }
    let options = options.clone();
    let services = services.clone();
    let registry = active.clone();
    let spawned = std::thread::Builder::new()
        .name("kuvasto-assoc".into())
        .spawn(move || {
            if let Err(e) = serve_association(&options, &services, stream, peer) {
                tracing::warn!(%peer, error = %e, "DIMSE association ended with an error");
            }
            if let Ok(mut sockets) = registry.sockets.lock() {
                sockets.remove(&id);
            }
        });
    if spawned.is_err() {
        tracing::error!(%peer, "cannot start an association thread");
        if let Ok(mut sockets) = active.sockets.lock() {
            sockets.remove(&id);
        }
    }
}

fn calling_ae_titles(services: &Services) -> CallingAeTitles {
    let directory = services.archive.directory();
    if directory.is_standalone() {
        CallingAeTitles {
            any: services.config.calling_ae_titles.is_empty(),
            titles: services.config.calling_ae_titles.clone(),
        }
    } else {
        CallingAeTitles {
            any: false,
            titles: directory.ae_titles(),
        }
    }
}

/// Runs `f` when dropped (the association gauge goes down however a session ends).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// A-ASSOCIATE-RJ, transient, service provider (presentation): local limit exceeded — sent
/// without waiting for the request, so a full listener never blocks on a peer.
fn refuse_busy(mut stream: TcpStream) {
    use dicom_ul::pdu::{
        AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
        AssociationRJSource, Pdu,
    };
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut bytes = Vec::new();
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    if dicom_ul::pdu::write_pdu(&mut bytes, &rj).is_ok() {
        let _ = std::io::Write::write_all(&mut stream, &bytes);
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn serve_association(
    options: &Options,
    services: &Services,
    stream: TcpStream,
    peer: SocketAddr,
) -> anyhow::Result<()> {
    let config = &services.config;
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let mut association = options.establish(stream)?;
    let idle = Duration::from_secs(config.idle_timeout_seconds);
    association.inner_stream().set_read_timeout(Some(idle))?;
    association.inner_stream().set_write_timeout(Some(idle))?;
    let peer_ae_title = association.peer_ae_title().trim().to_string();
    tracing::info!(%peer, calling = %peer_ae_title, contexts = association.presentation_contexts().len(), "DIMSE association accepted");
    // The access control let only known callers in; the identity is looked up again here.
    let identity = services
        .archive
        .directory()
        .by_ae_title(&peer_ae_title)
        .ok_or_else(|| anyhow::anyhow!("calling AE title {peer_ae_title} has no identity"))?;
    let metrics = services.archive.metrics();
    metrics.association_opened();
    let _closed = scopeguard(|| metrics.association_closed());
    let session = Session {
        link: super::link::Link::new(association),
        services,
        caller: Caller {
            identity,
            on_behalf_of: None,
            protocol: "dimse",
            peer: format!("{peer_ae_title}@{peer}"),
            override_register: None,
        },
        peer_ae_title,
        stored: Vec::new(),
    };
    session.run()
}
