//! The command-line side of the operator commands: run a [`Request`] through the admin
//! socket of the server that holds the data directory, or, when none runs, on the data
//! directory itself.

use super::{Progress, Report, Request};
use crate::archive::directory::{Identity, Role};
use crate::archive::Caller;
use crate::config::ConfigArgs;
use std::sync::Arc;

/// Exit codes: 0 done, 1 done with problems the report names, 2 usage or open errors.
pub const EXIT_OK: i32 = 0;
pub const EXIT_PROBLEMS: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

/// The operator at this machine's shell: they can read the data directory, so they are the
/// archive's operator; the audit log names their user id and process.
pub fn local_operator(organisation: &str, protocol: &'static str, peer: String) -> Caller {
    Caller {
        identity: Arc::new(Identity {
            id: "local-operator".into(),
            organisation: organisation.to_string(),
            role: Role::Operator,
            ae_titles: Vec::new(),
            tokens: Vec::new(),
        }),
        on_behalf_of: None,
        protocol,
        peer,
        override_register: None,
    }
}

/// This process's user, for the audit record.
pub fn this_user() -> String {
    // SAFETY: getuid and getpid cannot fail and touch no memory of ours.
    let (uid, pid) = unsafe { (libc::getuid(), libc::getpid()) };
    format!("uid={uid} pid={pid}")
}

/// Runs `request` and prints its report (JSON with `json`); returns the exit code.
pub fn run(config: &ConfigArgs, request: Request, json: bool) -> i32 {
    match run_inner(config, request) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        return EXIT_ERROR;
                    }
                }
            } else {
                print!("{}", report.render());
            }
            if report.has_problems() {
                EXIT_PROBLEMS
            } else {
                EXIT_OK
            }
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            EXIT_ERROR
        }
    }
}

fn run_inner(config: &ConfigArgs, request: Request) -> anyhow::Result<Report> {
    let config = config.resolve()?;
    // A running server holds the store: ask it. Nobody listening: open it here.
    let socket = super::socket::path(&config.storage.data_dir);
    if let Some(report) = super::socket::call(&socket, &request, &print_progress)? {
        return Ok(report);
    }
    let store = crate::serve::open_store(&config)?;
    let archive = crate::serve::open_archive(&config, store)?;
    let caller = local_operator(&config.archive.organisation, "cli", this_user());
    let report = super::run(&archive, &caller, &request, &print_progress);
    if let Some(store) = archive.into_store() {
        store.close();
    }
    report
}

fn print_progress(p: &Progress) {
    if p.total > 0 {
        eprintln!("{}: {}/{} ({} bytes)", p.what, p.done, p.total, p.bytes);
    } else {
        eprintln!("{}: {} ({} bytes)", p.what, p.done, p.bytes);
    }
}
