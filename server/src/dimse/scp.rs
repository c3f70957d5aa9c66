//! The DIMSE listener: associations over `dicom-ul` (sync), one thread each, at most
//! `associations_max` at once, calling AE titles checked against the configured list, and
//! each accepted association served by a [`Session`].
//!
//! With TLS (`dimse.tls`, or a second listener at `dimse.tls_listen`), dicom-ul's
//! `establish_tls` runs the handshake and then the negotiation. Under mutual TLS the
//! association's access control maps the verified client certificate to an identity
//! (`crate::tls::identity`) and rejects (A-ASSOCIATE-RJ, calling AE title not recognized) a
//! certificate that maps to none, or whose identity does not own the calling AE title.
//!
//! Limits: association negotiation (and the TLS handshake before it) must finish within
//! `artim_timeout_seconds`; an
//! association idle for `idle_timeout_seconds` is closed (an instance half received is then
//! dropped, never committed); PDUs over `max_pdu_bytes` get an A-ABORT. On stop, associations
//! get `grace` to finish, then their sockets are shut down.

use super::link::{ServerWire, Wire};
use super::session::{Services, Session};
use crate::archive::directory::Identity;
use crate::archive::{Archive, Caller};
use crate::tls::identity::CertificateFacts;
use crate::tls::{CapturedCertificate, OidSource};
use anyhow::Context;
use dicom_ul::association::server::{AccessControl, Negotiation};
use dicom_ul::pdu::{AssociationRJServiceUserReason, RequestorRoles};
use dicom_ul::ServerAssociationOptions;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Verification SOP class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Calling AE titles allowed to associate: any (standalone with no list), or exactly these
/// (the national profile's identities, or the standalone list); under mutual TLS, a client
/// certificate decides first.
#[derive(Clone)]
struct CallingAeTitles {
    any: bool,
    titles: Vec<String>,
    /// TLS associations with client certificates: the certificate's identity.
    certificate: Option<CertificateCheck>,
}

/// The access control's view of one TLS association's client certificate.
#[derive(Clone)]
struct CertificateCheck {
    /// Filled by the handshake's verifier (before the A-ASSOCIATE-RQ is read).
    captured: CapturedCertificate,
    archive: Arc<Archive>,
    from: OidSource,
    /// The certificate's identity, once accepted (the session acts as it).
    decided: Arc<Mutex<Option<Arc<Identity>>>>,
}

impl CertificateCheck {
    /// `Ok(None)`: no certificate was presented (optional client certificates): the AE title
    /// decides as without TLS.
    fn decide(&self, calling_ae_title: &str) -> Result<Option<Arc<Identity>>, String> {
        let der = match self.captured.lock() {
            Ok(slot) => slot.clone(),
            Err(_) => return Err("the certificate slot is poisoned".into()),
        };
        // Standalone: the certificate only opened the connection; the AE title rules apply
        // as without TLS.
        let Some(der) = der.filter(|_| !self.archive.directory().is_standalone()) else {
            return Ok(None);
        };
        let facts = CertificateFacts::read(der.as_ref(), self.from);
        let identity = crate::tls::identity::identify_association(
            self.archive.directory(),
            &facts,
            calling_ae_title,
        )?;
        if let Ok(mut decided) = self.decided.lock() {
            *decided = Some(identity.clone());
        }
        Ok(Some(identity))
    }
}

impl AccessControl for CallingAeTitles {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        _called_ae_title: &str,
        _user_identity: Option<&dicom_ul::pdu::UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if let Some(check) = &self.certificate {
            match check.decide(calling_ae_title) {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(calling = %calling_ae_title.trim(), %reason, "DIMSE association rejected: client certificate");
                    return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
                }
            }
        }
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
    /// `dimse.listen` (plain, or TLS with `dimse.tls`).
    pub address: SocketAddr,
    /// `dimse.tls_listen`, when configured.
    pub tls_address: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    active: Arc<Active>,
    services: Arc<Services>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Listener {
    /// Binds and starts accepting associations (on `dimse.listen`, and on `dimse.tls_listen`
    /// when set).
    pub fn start(services: Services) -> anyhow::Result<Listener> {
        let config = services.config.clone();
        if (config.tls || config.tls_listen.is_some()) && services.tls.is_none() {
            anyhow::bail!("DIMSE over TLS needs the [tls] section loaded");
        }
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
        let mut endpoints = vec![(config.listen, config.tls)];
        if let Some(address) = config.tls_listen {
            endpoints.push((address, true));
        }
        let mut listener = Listener {
            address: config.listen,
            tls_address: None,
            stop,
            active,
            services: services.clone(),
            threads: Vec::new(),
        };
        // Every socket bound before any thread starts, so a failed bind leaves nothing behind.
        let mut sockets = Vec::with_capacity(endpoints.len());
        for (bind, tls) in endpoints {
            let socket = TcpListener::bind(bind).with_context(|| {
                format!("binding DIMSE{} to {bind}", if tls { " (TLS)" } else { "" })
            })?;
            // Polled, so that stop() is noticed within a tick.
            socket.set_nonblocking(true)?;
            sockets.push((socket, tls));
        }
        for (n, (socket, tls)) in sockets.into_iter().enumerate() {
            let address = socket.local_addr()?;
            if n == 0 {
                listener.address = address;
            } else {
                listener.tls_address = Some(address);
            }
            let options = options.clone();
            let services = services.clone();
            let stopping = listener.stop.clone();
            let registry = listener.active.clone();
            let thread = std::thread::Builder::new()
                .name("kuvasto-dimse".into())
                .spawn(move || {
                    while !stopping.load(Ordering::Relaxed) {
                        match socket.accept() {
                            Ok((stream, peer)) => {
                                accept(&options, &services, &registry, stream, peer, tls);
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
                });
            match thread {
                Ok(thread) => listener.threads.push(thread),
                Err(e) => {
                    listener.stop(Duration::ZERO);
                    return Err(e).context("starting the DIMSE accept thread");
                }
            }
            tracing::info!(%address, ae_title = %config.ae_title, tls, "DIMSE listening");
        }
        Ok(listener)
    }

    /// Stops accepting, gives the associations being served `grace` to end, then shuts their
    /// sockets down (an instance half received is dropped, never committed).
    pub fn stop(mut self, grace: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
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
    tls: bool,
) {
    let associations_max = services.config.associations_max;
    if active.count() >= associations_max {
        tracing::warn!(%peer, associations_max, tls, "DIMSE association refused: too many at once");
        if tls {
            // An A-ASSOCIATE-RJ needs a handshake first; a full listener does not do one.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        } else {
            refuse_busy(stream);
        }
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
            if let Err(e) = serve_association(&options, &services, stream, peer, tls) {
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
            certificate: None,
        }
    } else {
        CallingAeTitles {
            any: false,
            titles: directory.ae_titles(),
            certificate: None,
        }
    }
}

/// An error and its sources, `: `-separated (dicom-ul's TLS errors say what failed only in
/// their source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
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
    tls: bool,
) -> anyhow::Result<()> {
    let config = &services.config;
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let (mut wire, certificate_identity) = if tls {
        let Some(setup) = &services.tls else {
            anyhow::bail!("DIMSE over TLS without the [tls] section");
        };
        let handshake = setup.dimse_handshake()?;
        let decided: Arc<Mutex<Option<Arc<Identity>>>> = Arc::default();
        let mut access = calling_ae_titles(services);
        access.certificate = handshake.captured.map(|captured| CertificateCheck {
            captured,
            archive: services.archive.clone(),
            from: setup.organisation_oid_from,
            decided: decided.clone(),
        });
        let options = options
            .clone()
            .ae_access_control(access)
            .tls_config(handshake.config);
        let association = match options.establish_tls(stream) {
            Ok(association) => association,
            // Rejected (unknown AE title; a certificate's refusal is logged with its reason by
            // the access control): as on a plain listener.
            Err(e @ dicom_ul::association::Error::Rejected { .. }) => return Err(e.into()),
            Err(e) => {
                // A failed handshake (no, an untrusted or an expired certificate; not TLS at
                // all): the peer's problem, logged with the reason.
                tracing::info!(%peer, error = %error_chain(&e), "DIMSE over TLS: handshake failed");
                return Ok(());
            }
        };
        let identity = decided.lock().ok().and_then(|d| d.clone());
        (ServerWire::Tls(Box::new(association)), identity)
    } else {
        (ServerWire::Plain(options.establish(stream)?), None)
    };
    let idle = Duration::from_secs(config.idle_timeout_seconds);
    wire.inner_stream().set_read_timeout(Some(idle))?;
    wire.inner_stream().set_write_timeout(Some(idle))?;
    let peer_ae_title = wire.peer_ae_title().trim().to_string();
    tracing::info!(%peer, calling = %peer_ae_title, tls, certificate = certificate_identity.is_some(), contexts = wire.contexts().len(), "DIMSE association accepted");
    // The access control let only known callers in (a client certificate's identity, or a
    // known AE title); the identity is looked up again here.
    let identity = match certificate_identity {
        Some(identity) => identity,
        None => services
            .archive
            .directory()
            .by_ae_title(&peer_ae_title)
            .ok_or_else(|| anyhow::anyhow!("calling AE title {peer_ae_title} has no identity"))?,
    };
    let metrics = services.archive.metrics();
    metrics.association_opened();
    let _closed = scopeguard(|| metrics.association_closed());
    let session = Session {
        link: super::link::Link::new(wire),
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
