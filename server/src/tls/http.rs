//! The HTTPS listener: TCP connections are accepted on one task, each TLS handshake runs on a
//! task of its own (at most [`HANDSHAKES_MAX`] at once, each within
//! `tls.handshake_timeout_seconds`), and finished connections are handed to axum with a
//! [`TlsPeer`] (address and client certificate facts) as their connect info. A failed or
//! slow handshake is logged with the peer and the reason and costs nobody else anything.

use super::identity::CertificateFacts;
use super::Tls;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// TLS handshakes in progress at most; further connections wait in the kernel's backlog.
pub const HANDSHAKES_MAX: usize = 256;
/// Connections with a finished handshake waiting for the server to take them.
const READY_CONNECTIONS_MAX: usize = 64;
/// Pause after a failed `accept` (out of file descriptors, say) before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The other end of an HTTPS connection (axum's connect info on the TLS listener).
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub address: SocketAddr,
    /// The verified client certificate's facts, when the client presented one.
    pub certificate: Option<Arc<CertificateFacts>>,
}

/// See the module documentation. Dropping it stops accepting and closes the socket.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` (on the current tokio runtime).
    pub fn new(listener: TcpListener, tls: Arc<Tls>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_CONNECTIONS_MAX);
        let acceptor = tokio::spawn(accept_loop(listener, tls, tx));
        Ok(TlsListener {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<Tls>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, TlsPeer)>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let acceptor = TlsAcceptor::from(tls.http_config());
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "HTTPS accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        // Small responses must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        let timeout = tls.handshake_timeout;
        let from = tls.organisation_oid_from;
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::info!(peer = %address, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(
                        peer = %address,
                        timeout_seconds = timeout.as_secs(),
                        "TLS handshake did not finish in time; connection closed"
                    );
                    return;
                }
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|der| Arc::new(CertificateFacts::read(der.as_ref(), from)));
            if let Some(facts) = &certificate {
                tracing::debug!(peer = %address, subject = %facts.subject, "TLS client certificate verified");
            }
            let _ = ready
                .send((
                    stream,
                    TlsPeer {
                        address,
                        certificate,
                    },
                ))
                .await;
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            None => {
                // The accept task is gone (it only ends when this listener is dropped).
                tracing::error!("the HTTPS accept task ended; no new connections");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<TlsPeer> {
        Ok(TlsPeer {
            address: self.local,
            certificate: None,
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> TlsPeer {
        stream.remote_addr().clone()
    }
}
