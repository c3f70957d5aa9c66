//! Mounting the file system, cutting power, and serving the control channel.
//!
//! A cut unmounts the file system first (waiting for the kernel to let go of it, so no
//! request can race the cut), applies [`Model::cut`], and mounts it again on the same
//! directory: a new superblock, so the kernel holds no page, dentry or attribute from before
//! the cut, and every read after it comes from the model's new durable state.

use crate::control::Command;
use crate::error::{Error, Result};
use crate::fs::{lock, PowerCutFs};
use crate::model::{CutPolicy, CutReport, Model, Stats};
use fuser::{BackgroundSession, MountOption};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an unmount waits for the kernel to let go (files of a killed process, io_uring
/// requests being torn down) before it detaches lazily.
const UNMOUNT_WAIT: Duration = Duration::from_secs(20);
/// How long to wait for a session's threads to stop after the unmount.
const SESSION_STOP_WAIT: Duration = Duration::from_secs(10);

/// How to mount.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// FUSE worker threads (the engine has several requests in flight).
    pub threads: usize,
    /// Most bytes of file contents the file system holds (`ENOSPC` beyond).
    pub capacity_bytes: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            threads: 4,
            capacity_bytes: 8 << 30,
        }
    }
}

/// A mounted power-cut file system. Dropping it unmounts.
pub struct Server {
    model: Arc<Mutex<Model>>,
    mountpoint: PathBuf,
    options: ServerOptions,
    session: Option<BackgroundSession>,
}

impl Server {
    /// Mounts an empty file system on `mountpoint` (an existing, empty directory).
    pub fn mount(mountpoint: &Path, options: ServerOptions) -> Result<Server> {
        let mountpoint = mountpoint
            .canonicalize()
            .map_err(Error::io(format!("mount point {}", mountpoint.display())))?;
        let mut server = Server {
            model: Arc::new(Mutex::new(Model::new(options.capacity_bytes))),
            mountpoint,
            options,
            session: None,
        };
        server.mount_session()?;
        Ok(server)
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The model behind the mount (for in-process inspection).
    pub fn model(&self) -> &Arc<Mutex<Model>> {
        &self.model
    }

    fn mount_session(&mut self) -> Result<()> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("powercut".to_string()),
            MountOption::Subtype("powercut".to_string()),
            MountOption::NoAtime,
        ];
        config.n_threads = Some(self.options.threads.max(1));
        config.clone_fd = true;
        let fs = PowerCutFs::new(self.model.clone());
        let session = fuser::Session::new(fs, &self.mountpoint, &config)
            .map_err(Error::io(format!("mount on {}", self.mountpoint.display())))?;
        self.session = Some(
            session
                .spawn()
                .map_err(Error::io("start the FUSE session"))?,
        );
        Ok(())
    }

    fn unmount_session(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let result = unmount(&self.mountpoint);
        let deadline = Instant::now() + SESSION_STOP_WAIT;
        while !session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if session.guard.is_finished() {
            // The session's own end (ENODEV once unmounted) is not an error of ours.
            let _ = session.join();
        } else {
            // A lazily detached mount still in use: its threads answer EIO from now on
            // (their generation is over) and end when the kernel lets go.
            drop(session);
        }
        lock(&self.model).reset_kernel_refs();
        result
    }

    /// Cuts power; see the module documentation. The caller must have stopped every user
    /// of the mount (the unmount waits up to 20 s for them, then detaches).
    pub fn cut(&mut self, seed: u64, policy: CutPolicy) -> Result<CutReport> {
        self.unmount_session()?;
        let report = lock(&self.model).cut(seed, policy);
        self.mount_session()?;
        Ok(report)
    }

    /// Counters, and what is pending now.
    pub fn stats(&self) -> Stats {
        lock(&self.model).stats()
    }

    /// Unmounts.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_session()
    }

    /// Serves the control channel on `socket` until a `quit` command, then unmounts.
    pub fn serve(mut self, socket: &Path) -> Result<()> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .map_err(Error::io(format!("listen on {}", socket.display())))?;
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    eprintln!("powercut: accept: {e}");
                    continue;
                }
            };
            match self.serve_connection(stream) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => eprintln!("powercut: control connection: {e}"),
            }
        }
        let _ = std::fs::remove_file(socket);
        self.unmount_session()
    }

    /// Answers one connection's commands; `true` once `quit` was answered.
    fn serve_connection(&mut self, stream: UnixStream) -> Result<bool> {
        let mut writer = stream
            .try_clone()
            .map_err(Error::io("clone control connection"))?;
        for line in BufReader::new(stream).lines() {
            let line = line.map_err(Error::io("read control command"))?;
            let (reply, quit) = match line.parse::<Command>() {
                Ok(Command::Cut { seed, policy }) => match self.cut(seed, policy) {
                    Ok(report) => (format!("ok {report}"), false),
                    Err(e) => (format!("err {e}"), false),
                },
                Ok(Command::Stats) => (format!("ok {}", self.stats()), false),
                Ok(Command::Quit) => ("ok".to_string(), true),
                Err(e) => (format!("err {e}"), false),
            };
            writeln!(writer, "{reply}").map_err(Error::io("send control reply"))?;
            if quit {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_session() {
            eprintln!("powercut: unmount: {e}");
        }
    }
}

/// Unmounts `mountpoint`: retries while busy for up to 20 s, then detaches lazily.
pub fn unmount(mountpoint: &Path) -> Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| Error::Protocol(format!("mount point {} has a NUL", mountpoint.display())))?;
    let deadline = Instant::now() + UNMOUNT_WAIT;
    loop {
        // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
        let rc = unsafe { libc::umount2(path.as_ptr(), 0) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOENT) => return Ok(()), // not mounted
            Some(libc::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(libc::EBUSY) => {
                eprintln!(
                    "powercut: {} still busy after {:?}; detaching lazily",
                    mountpoint.display(),
                    UNMOUNT_WAIT
                );
                // SAFETY: as above.
                let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
                if rc != 0 {
                    return Err(Error::io(format!("detach {}", mountpoint.display()))(
                        std::io::Error::last_os_error(),
                    ));
                }
                return Ok(());
            }
            _ => return Err(Error::io(format!("unmount {}", mountpoint.display()))(err)),
        }
    }
}
