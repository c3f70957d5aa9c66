//! `kuvasto compact`: the retention sweep, then the engine's compaction, online or offline.
//!
//! The sweep expires studies whose retention has run out (deleting their instances with
//! tombstones, each expiry audited); compaction then copies the live records of sealed
//! segments that are at least `garbage_ratio_min` garbage into new segments and removes the
//! old ones. Reads and writes go on meanwhile: a reader holding an old segment keeps it
//! until it lets go, and a key written during the copy keeps its newer record.

use super::{Progress, ProgressFn};
use crate::archive::audit::Outcome;
use crate::archive::retention::RetentionReport;
use crate::archive::{time, Archive, Caller};
use serde::{Deserialize, Serialize};

/// The command line's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct CompactArgs {
    /// Compact sealed segments at least this fraction garbage (0.0 to 1.0).
    #[arg(long, default_value_t = 0.5)]
    pub garbage_ratio_min: f64,
    /// Copy at most this many MiB per second (0: as fast as the disk goes), so that clients
    /// of a busy node keep most of the disk.
    #[arg(long, default_value_t = 0)]
    pub copy_mib_per_second: u64,
    /// Skip the retention sweep (compact only).
    #[arg(long)]
    pub no_retention: bool,
    /// List the studies whose retention has run out, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl CompactArgs {
    pub fn request(&self) -> anyhow::Result<CompactRequest> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.garbage_ratio_min),
            "--garbage-ratio-min must be between 0.0 and 1.0"
        );
        Ok(CompactRequest {
            garbage_ratio_min: self.garbage_ratio_min,
            copy_bytes_per_second_max: self.copy_mib_per_second.saturating_mul(1 << 20),
            retention: !self.no_retention,
            dry_run: self.dry_run,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompactRequest {
    pub garbage_ratio_min: f64,
    /// 0: no limit.
    #[serde(default)]
    pub copy_bytes_per_second_max: u64,
    /// Run the retention sweep first.
    pub retention: bool,
    pub dry_run: bool,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CompactReport {
    /// The sweep's report; `None` when skipped.
    pub retention: Option<RetentionReport>,
    pub segments_removed: Vec<u64>,
    pub segments_written: Vec<u64>,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub objects_moved: u64,
    pub tombstones_moved: u64,
    /// Segments that qualified but hold chunks of uploads still in flight: left for a later
    /// compaction.
    #[serde(default)]
    pub segments_in_use: Vec<u64>,
    pub seconds: f64,
    pub dry_run: bool,
}

impl CompactReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(r) = &self.retention {
            if r.rules == 0 {
                out.push_str("retention: no [[retention]] rules: every study is kept\n");
            } else {
                out.push_str(&format!(
                    "retention: {} rules, {} studies old enough to look at, {} {}, {} kept\n",
                    r.rules,
                    r.studies_examined,
                    r.expired.len(),
                    if r.dry_run { "would expire" } else { "expired" },
                    r.kept
                ));
                for e in &r.expired {
                    out.push_str(&format!(
                        "  {} patient {} register {} study date {}: rule {} (due {}), {} instances\n",
                        e.study,
                        e.patient,
                        e.register,
                        e.study_date,
                        e.rule,
                        e.expired_at,
                        e.instances_deleted
                    ));
                }
                for p in &r.problems {
                    out.push_str(&format!("  problem: {p}\n"));
                }
            }
        }
        if self.dry_run {
            out.push_str("dry run: nothing changed, nothing compacted\n");
        } else {
            out.push_str(&format!(
                "compacted {} segments into {}: {} -> {} bytes ({} objects, {} tombstones moved) in {:.1} s\n",
                self.segments_removed.len(),
                self.segments_written.len(),
                self.bytes_before,
                self.bytes_after,
                self.objects_moved,
                self.tombstones_moved,
                self.seconds
            ));
            if !self.segments_in_use.is_empty() {
                out.push_str(&format!(
                    "left for later: segments {:?} hold parts of uploads still in progress\n",
                    self.segments_in_use
                ));
            }
        }
        out
    }

    pub fn has_problems(&self) -> bool {
        self.retention
            .as_ref()
            .is_some_and(|r| !r.problems.is_empty())
    }
}

/// Runs the sweep and the compaction as `caller` (an operator); both are audited.
pub fn run(
    archive: &Archive,
    caller: &Caller,
    request: &CompactRequest,
    progress: ProgressFn,
) -> anyhow::Result<CompactReport> {
    let started = std::time::Instant::now();
    let mut report = CompactReport {
        dry_run: request.dry_run,
        ..CompactReport::default()
    };
    if request.retention {
        let sweep = archive.retention_sweep(
            caller,
            &archive.rules().retention,
            time::now_ms(),
            request.dry_run,
            &|done, total| {
                progress(&Progress {
                    what: "retention sweep".into(),
                    done,
                    total: total as u64,
                    bytes: 0,
                })
            },
        )?;
        report.retention = Some(sweep);
    }
    if request.dry_run {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let compacted = archive.store().compact_with_progress(
        &kuvasto_engine::CompactOptions {
            segments: None,
            garbage_ratio_min: request.garbage_ratio_min,
            copy_bytes_per_second_max: request.copy_bytes_per_second_max,
        },
        &|p| {
            progress(&Progress {
                what: "compaction".into(),
                done: p.objects_done,
                total: p.objects_total,
                bytes: p.bytes_copied,
            })
        },
    );
    let detail = match &compacted {
        Ok(c) => format!(
            "segments_removed={} segments_written={} bytes_before={} bytes_after={} objects_moved={} segments_in_use={}",
            c.segments_removed.len(),
            c.segments_written.len(),
            c.bytes_before,
            c.bytes_after,
            c.objects_moved,
            c.segments_in_use.len()
        ),
        Err(e) => format!("error={e}"),
    };
    let outcome = if compacted.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failed
    };
    archive.audit(caller, "compact", outcome, "", "", "", detail)?;
    let compacted = compacted?;
    report.segments_removed = compacted.segments_removed;
    report.segments_written = compacted.segments_written;
    report.bytes_before = compacted.bytes_before;
    report.bytes_after = compacted.bytes_after;
    report.objects_moved = compacted.objects_moved;
    report.tombstones_moved = compacted.tombstones_moved;
    report.segments_in_use = compacted.segments_in_use;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
