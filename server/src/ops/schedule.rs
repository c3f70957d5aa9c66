//! The server's own compaction schedule (`[compaction] interval_minutes`): the retention
//! sweep and compaction run every interval on a thread of their own, audited as the archive
//! itself (`scheduler`), exactly as `kuvasto compact` would run them.

use super::compact::{self, CompactRequest};
use crate::archive::Archive;
use crate::config::CompactionSection;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The running schedule; stopped on drop (waiting for a run under way to finish).
pub struct Scheduler {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scheduler {
    pub fn start(config: &CompactionSection, archive: Arc<Archive>) -> anyhow::Result<Scheduler> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        if config.interval_minutes == 0 {
            return Ok(Scheduler { stop, thread: None });
        }
        let interval = Duration::from_secs(config.interval_minutes.saturating_mul(60));
        let request = CompactRequest {
            garbage_ratio_min: config.garbage_ratio_min,
            copy_bytes_per_second_max: config.copy_mib_per_second.saturating_mul(1 << 20),
            retention: true,
            dry_run: false,
        };
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("kuvasto-compaction".into())
                .spawn(move || run(&archive, &request, interval, &stop))?
        };
        tracing::info!(
            interval_minutes = config.interval_minutes,
            garbage_ratio_min = config.garbage_ratio_min,
            "scheduled compaction"
        );
        Ok(Scheduler {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    archive: &Archive,
    request: &CompactRequest,
    interval: Duration,
    stop: &(Mutex<bool>, Condvar),
) {
    let caller = super::cli::local_operator(
        &archive.rules().audit_source_id,
        "scheduler",
        "compaction schedule".into(),
    );
    let (flag, wake) = stop;
    loop {
        let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = wake
            .wait_timeout_while(guard, interval, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        if *guard {
            return;
        }
        drop(guard);
        match compact::run(archive, &caller, request, &|_| {}) {
            Ok(report) => tracing::info!(
                expired_studies = report.retention.as_ref().map_or(0, |r| r.expired.len()),
                segments_removed = report.segments_removed.len(),
                bytes_before = report.bytes_before,
                bytes_after = report.bytes_after,
                seconds = report.seconds,
                "scheduled compaction done"
            ),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "scheduled compaction failed"),
        }
    }
}
