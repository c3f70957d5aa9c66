//! Mounts the power-cut file system and serves its control channel until `quit`.
//!
//! Usage: powercut --mount DIR --control SOCKET [--threads N] [--capacity-mib N]
//!                 [--exit-with-parent]
//!
//! Needs root (the mount system call). With `--exit-with-parent` the file system is
//! detached and the process exits when its parent dies, so a crashed harness leaves no
//! mount behind.

use anyhow::{bail, Context};
use kuvasto_powercut::{Server, ServerOptions};
use std::path::PathBuf;
use std::time::Duration;

struct Args {
    mount: PathBuf,
    control: PathBuf,
    options: ServerOptions,
    exit_with_parent: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut mount = None;
    let mut control = None;
    let mut options = ServerOptions::default();
    let mut exit_with_parent = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--mount" => mount = Some(PathBuf::from(value("--mount")?)),
            "--control" => control = Some(PathBuf::from(value("--control")?)),
            "--threads" => options.threads = value("--threads")?.parse()?,
            "--capacity-mib" => {
                options.capacity_bytes = value("--capacity-mib")?.parse::<u64>()? << 20
            }
            "--exit-with-parent" => exit_with_parent = true,
            other => bail!(
                "unknown argument {other:?}\nusage: powercut --mount DIR --control SOCKET \
                 [--threads N] [--capacity-mib N] [--exit-with-parent]"
            ),
        }
    }
    Ok(Args {
        mount: mount.context("--mount DIR is required")?,
        control: control.context("--control SOCKET is required")?,
        options,
        exit_with_parent,
    })
}

/// Detaches the mount and exits once the parent process is gone.
fn watch_parent(mount: PathBuf) {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            eprintln!("powercut: parent exited; detaching {}", mount.display());
            if let Ok(path) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) {
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
            std::process::exit(1);
        }
    });
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.mount)
        .with_context(|| format!("create mount point {}", args.mount.display()))?;
    let server = Server::mount(&args.mount, args.options)?;
    if args.exit_with_parent {
        watch_parent(server.mountpoint().to_path_buf());
    }
    server.serve(&args.control)?;
    Ok(())
}
