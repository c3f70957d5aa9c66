//! Operator commands that work the same on a stopped and on a running node: `kuvasto
//! compact` (with the retention sweep), `kuvasto stats` and `kuvasto export`.
//!
//! The command opens the data directory itself when no server holds it; when a server does
//! (its `LOCK`), the command sends its [`Request`] over the server's admin socket
//! (`admin.sock` in the data directory, owner-only) and the server runs the same function.
//! Either way the work is one call of [`run`] over the node's [`Archive`], so the two paths
//! cannot drift apart.

pub mod cli;
pub mod compact;
pub mod export;
pub mod schedule;
pub mod socket;
pub mod stats;

use crate::archive::{Archive, Caller};
use serde::{Deserialize, Serialize};

/// How far a long operation is; sent as it goes (a progress bar locally, JSON lines over the
/// admin socket).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// What is being done ("copying segment 12", "study 1.2.3").
    pub what: String,
    pub done: u64,
    /// 0 when unknown.
    pub total: u64,
    pub bytes: u64,
}

/// Where progress goes.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Sync);

/// One operator request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Compact(compact::CompactRequest),
    Stats(stats::StatsRequest),
    Export(export::ExportRequest),
}

/// What a request did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Report {
    Compact(compact::CompactReport),
    Stats(stats::StatsReport),
    Export(export::ExportReport),
}

impl Report {
    /// The report for a person at a terminal.
    pub fn render(&self) -> String {
        match self {
            Report::Compact(r) => r.render(),
            Report::Stats(r) => r.render(),
            Report::Export(r) => r.render(),
        }
    }

    /// Whether the work finished with problems the report names (exit code 1).
    pub fn has_problems(&self) -> bool {
        match self {
            Report::Compact(r) => r.has_problems(),
            Report::Stats(_) => false,
            Report::Export(r) => r.has_problems(),
        }
    }
}

/// Runs one request over an open node.
pub fn run(
    archive: &Archive,
    caller: &Caller,
    request: &Request,
    progress: ProgressFn,
) -> anyhow::Result<Report> {
    Ok(match request {
        Request::Compact(r) => Report::Compact(compact::run(archive, caller, r, progress)?),
        Request::Stats(r) => Report::Stats(stats::run(archive, caller, r, progress)?),
        Request::Export(r) => Report::Export(export::run(archive, caller, r, progress)?),
    })
}
