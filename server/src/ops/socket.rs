//! The admin socket: how `kuvasto compact|stats|export` reach a running server.
//!
//! A Unix socket `admin.sock` in the data directory, owner-only (0600): whoever may open
//! it may read the data directory anyway, so it is the same trust as running the command
//! offline. The peer's user and process ids (`SO_PEERCRED`) go into the audit records.
//!
//! Protocol, one JSON object per line: the client sends one [`Request`]; the server answers
//! with any number of `{"progress": Progress}` lines and then exactly one
//! `{"report": Report}` or `{"error": "..."}` line, and closes the connection.

use super::{Progress, Report, Request};
use crate::archive::Archive;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The socket's file name in the data directory.
pub const SOCKET_FILE_NAME: &str = "admin.sock";

/// Admin connections served at once; more are told to try again.
const CONNECTIONS_MAX: usize = 4;

/// Largest request line.
const REQUEST_BYTES_MAX: u64 = 64 * 1024;

/// A client must send its request within this long (a silent one would hold a slot).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// One line of the server's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Line {
    Progress(Progress),
    Report(Report),
    Error(String),
}

/// The path of the admin socket of a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE_NAME)
}

/// The running admin socket; stopped (and its file removed) on drop.
pub struct AdminSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminSocket {
    /// Listens on `data_dir/admin.sock`. The caller holds the store's lock, so a socket
    /// file already there is a crashed server's and is replaced.
    pub fn start(data_dir: &Path, archive: Arc<Archive>) -> anyhow::Result<AdminSocket> {
        let path = path(data_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing the stale {}", path.display()))
            }
        }
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("binding the admin socket {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} owner-only", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("admin socket: non-blocking accept")?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("kuvasto-admin".into())
                .spawn(move || accept_loop(listener, archive, stop))
                .context("starting the admin socket thread")?
        };
        tracing::info!(path = %path.display(), "admin socket listening");
        Ok(AdminSocket {
            path,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, archive: Arc<Archive>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= CONNECTIONS_MAX {
            active.fetch_sub(1, Ordering::AcqRel);
            let mut stream = stream;
            let _ = send(
                &mut stream,
                &Line::Error(format!(
                    "{CONNECTIONS_MAX} admin commands are already running; try again when one ends"
                )),
            );
            continue;
        }
        let (archive, active) = (archive.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("kuvasto-admin-op".into())
            .spawn(move || {
                if let Err(e) = serve_one(stream, &archive) {
                    tracing::warn!(error = %format!("{e:#}"), "admin command");
                }
                active.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "admin socket: cannot start a thread");
        }
    }
}

fn serve_one(stream: UnixStream, archive: &Archive) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let peer = peer_credentials(&stream);
    let mut line = String::new();
    BufReader::new((&stream).take(REQUEST_BYTES_MAX))
        .read_line(&mut line)
        .context("reading the request")?;
    let mut out = stream.try_clone()?;
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(e) => {
            send(&mut out, &Line::Error(format!("not a request: {e}")))?;
            return Ok(());
        }
    };
    tracing::info!(peer = %peer, request = ?request, "admin command");
    let caller = super::cli::local_operator(&archive.rules().audit_source_id, "admin-socket", peer);
    let progress_out = std::sync::Mutex::new(out.try_clone()?);
    let progress = |p: &Progress| {
        let mut out = progress_out.lock().unwrap_or_else(|e| e.into_inner());
        // A client that went away does not stop the work; it just sees no more lines.
        let _ = send(&mut out, &Line::Progress(p.clone()));
    };
    let line = match super::run(archive, &caller, &request, &progress) {
        Ok(report) => Line::Report(report),
        Err(e) => Line::Error(format!("{e:#}")),
    };
    send(&mut out, &line)
}

fn send(out: &mut UnixStream, line: &Line) -> anyhow::Result<()> {
    let mut text = serde_json::to_string(line)?;
    text.push('\n');
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// `uid=… pid=…` of the peer, for the audit record.
fn peer_credentials(stream: &UnixStream) -> String {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes passed; the descriptor is
    // an open Unix socket borrowed from `stream` for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        format!("uid={} pid={}", cred.uid, cred.pid)
    } else {
        "uid=? pid=?".into()
    }
}

/// The client side: sends `request` to the server on `socket`, hands progress lines to
/// `progress`, returns the report. `Ok(None)` when nobody listens there (no server runs).
pub fn call(
    socket: &Path,
    request: &Request,
    progress: &dyn Fn(&Progress),
) -> anyhow::Result<Option<Report>> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(e).with_context(|| format!("connecting to {}", socket.display()));
        }
    };
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line.context("reading the server's answer")?;
        match serde_json::from_str::<Line>(&line)
            .with_context(|| format!("the server answered {line:?}"))?
        {
            Line::Progress(p) => progress(&p),
            Line::Report(report) => return Ok(Some(report)),
            Line::Error(e) => anyhow::bail!("the server: {e}"),
        }
    }
    anyhow::bail!("the server closed the admin socket without a report (did it stop?)")
}
