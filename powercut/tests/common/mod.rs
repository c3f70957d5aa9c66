//! Helpers shared by the test binaries: the file system server as a process of its own.

#![allow(dead_code)] // each test binary uses part of it

use kuvasto_powercut::Client;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running `powercut` server, mounted on `mount`; unmounted and stopped when dropped.
pub struct FsProcess {
    child: Child,
    mount: PathBuf,
    socket: PathBuf,
    pub client: Client,
}

impl FsProcess {
    /// Mounts an empty power-cut file system on `root/mnt`, controlled through
    /// `root/control.sock`.
    pub fn start(root: &Path) -> FsProcess {
        let mount = root.join("mnt");
        let socket = root.join("control.sock");
        std::fs::create_dir_all(&mount).expect("create mount point");
        let mut child = Command::new(env!("CARGO_BIN_EXE_powercut"))
            .arg("--mount")
            .arg(&mount)
            .arg("--control")
            .arg(&socket)
            .arg("--exit-with-parent")
            .spawn()
            .expect("start the powercut server");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the powercut server exited at start: {status}");
            }
            match Client::connect(&socket) {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => panic!("no powercut server: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        FsProcess {
            child,
            mount,
            socket,
            client,
        }
    }

    /// The mounted directory.
    pub fn mount(&self) -> &Path {
        &self.mount
    }
}

impl Drop for FsProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.client.quit();
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Whatever happened, leave no mount behind.
        if let Ok(path) = std::ffi::CString::new(self.mount.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path; failing (nothing mounted) is fine.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
