//! `kuvasto verify`: scrub the store offline — every record of every segment and every block of
//! every index run against its checksums ([`Store::verify`]) — and report each damaged place
//! with the objects it affects; with `--repair-indices`, set damaged index runs aside and
//! rebuild them from the segments ([`Store::repair_indices`]). Segments are never changed:
//! objects are immutable, and a damaged one is restored from a backup.
//!
//! Exit codes: 0 clean (or only index damage, repaired); 1 damage found (in segments, or in
//! index runs not repaired); 2 usage or open errors (the store is locked while the server
//! runs).

use crate::config::ConfigArgs;
use kuvasto_engine::segment::format::RecordKind;
use kuvasto_engine::verify::{AffectedKey, RunDamage, SegmentDamage};
use kuvasto_engine::{Namespace, RepairReport, Store, VerifyProgress, VerifyReport};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// Options of `kuvasto verify` (besides the configuration).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct VerifyArgs {
    /// Set damaged index runs aside (`*.kvi.bad`) and rebuild them from the segments; a store
    /// whose only damage was in index runs then exits 0 (the report says what was repaired).
    #[arg(long)]
    pub repair_indices: bool,
    /// Print the report as one JSON object on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
}

/// Exit code: nothing damaged, or only index runs that were repaired.
pub const EXIT_CLEAN: i32 = 0;
/// Exit code: damage found (segments, or index runs not repaired).
pub const EXIT_DAMAGE: i32 = 1;
/// Exit code: usage or open errors.
pub const EXIT_ERROR: i32 = 2;

/// Seconds between progress lines when stderr is not a terminal.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);

/// Runs `kuvasto verify`; returns the exit code (errors are for the caller to map to 2).
pub fn run(config: &ConfigArgs, args: &VerifyArgs) -> anyhow::Result<i32> {
    let config = config.resolve()?;
    let data_dir = config.storage.data_dir.clone();
    let store = crate::serve::open_store(&config)?;
    let report = scrub(&store)?;
    let repair = if args.repair_indices && !report.runs_clean() {
        Some(store.repair_indices()?)
    } else {
        None
    };
    store.close();
    let code = exit_code(&report, repair.as_ref());
    if args.json {
        println!("{}", to_json(&data_dir, &report, repair.as_ref(), code));
    } else {
        print!("{}", to_text(&data_dir, &report, repair.as_ref(), code));
    }
    Ok(code)
}

/// The exit code for a report (see the module documentation).
pub fn exit_code(report: &VerifyReport, repair: Option<&RepairReport>) -> i32 {
    if !report.segments_clean() {
        return EXIT_DAMAGE;
    }
    if report.runs_clean() {
        return EXIT_CLEAN;
    }
    match repair {
        Some(r) if runs_repaired(report, r) => EXIT_CLEAN,
        _ => EXIT_DAMAGE,
    }
}

/// Every damaged run was set aside, and the runs rebuilt check clean.
fn runs_repaired(report: &VerifyReport, repair: &RepairReport) -> bool {
    repair.still_damaged.is_empty()
        && report
            .damaged_runs
            .iter()
            .all(|run| repair.runs_set_aside.iter().any(|(path, _)| path == run))
}

/// Runs the scrub with progress on stderr: a bar on a terminal, a line every few seconds
/// otherwise.
fn scrub(store: &Store) -> anyhow::Result<VerifyReport> {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        let report = store.verify(&mut |p| {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            bar.set_message(counts(&p));
        });
        bar.finish_and_clear();
        Ok(report?)
    } else {
        let started = Instant::now();
        let mut last = started;
        let report = store.verify(&mut |p| {
            if last.elapsed() >= PROGRESS_LINE_EVERY {
                last = Instant::now();
                eprintln!("{}", progress_line(&p, started.elapsed()));
            }
        });
        Ok(report?)
    }
}

fn counts(p: &VerifyProgress) -> String {
    format!(
        "segments {}/{}, index runs {}/{}",
        p.segments_done, p.segments_total, p.runs_done, p.runs_total
    )
}

/// One progress line, for logs.
pub fn progress_line(p: &VerifyProgress, elapsed: Duration) -> String {
    let percent = if p.bytes_total == 0 {
        100.0
    } else {
        p.bytes_done as f64 * 100.0 / p.bytes_total as f64
    };
    format!(
        "verify: {} of {} bytes ({percent:.1} %), {}, {:.0} s",
        p.bytes_done,
        p.bytes_total,
        counts(p),
        elapsed.as_secs_f64()
    )
}

/// What a namespace holds, in words.
pub fn namespace_name(namespace: Namespace) -> String {
    match namespace {
        Namespace::OBJECT => "object".into(),
        Namespace::METADATA => "metadata".into(),
        Namespace::AUDIT => "audit".into(),
        Namespace::DOCUMENT => "document".into(),
        Namespace::INTERNAL => "internal".into(),
        Namespace::ARCHIVE => "archive".into(),
        Namespace(n) => format!("namespace {n}"),
    }
}

fn kind_name(kind: Option<RecordKind>) -> &'static str {
    match kind {
        Some(RecordKind::Blob) => "blob",
        Some(RecordKind::Manifest) => "manifest",
        Some(RecordKind::Chunk) => "chunk",
        Some(RecordKind::Tombstone) => "tombstone",
        Some(RecordKind::Padding) => "padding",
        Some(RecordKind::Directory) => "directory",
        None => "unknown",
    }
}

fn key_line(k: &AffectedKey) -> String {
    let version = match k.current {
        Some(true) => "current version: restore it from a backup",
        Some(false) => "an older version, replaced or deleted since: nothing is lost",
        None => "version unknown",
    };
    let seq = k.seq.map(|s| format!(", seq {s}")).unwrap_or_default();
    format!(
        "{} {} ({}{seq}; {version})",
        namespace_name(k.namespace),
        k.key_text(),
        kind_name(k.kind)
    )
}

/// The human report.
pub fn to_text(
    data_dir: &Path,
    report: &VerifyReport,
    repair: Option<&RepairReport>,
    code: i32,
) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "kuvasto verify: {}", data_dir.display());
    let _ = writeln!(
        w,
        "segments: {} checked ({} sealed), {} bytes, {} records",
        report.segments_checked,
        report.sealed_segments_checked,
        report.segment_bytes_checked,
        report.records_checked
    );
    let _ = writeln!(
        w,
        "index runs: {} checked, {} bytes, {} damaged",
        report.runs_checked,
        report.run_bytes_checked,
        report.damaged_runs.len()
    );
    let listed = report.segment_damage.len() as u64;
    if report.segment_damage.is_empty() && report.damage_unlisted == 0 {
        let _ = writeln!(w, "segment damage: none");
    } else {
        let places = listed + report.damage_unlisted;
        let _ = writeln!(w, "segment damage: {}", plural(places, "place"));
        for d in &report.segment_damage {
            damage_text(w, data_dir, d);
        }
        if report.damage_unlisted > 0 {
            let _ = writeln!(w, "  ... and {} more places", report.damage_unlisted);
        }
    }
    if !report.found_at_open.is_empty() {
        let _ = writeln!(
            w,
            "damage found when the store was opened: {}",
            plural(report.found_at_open.len() as u64, "place")
        );
        for c in &report.found_at_open {
            let _ = writeln!(w, "  {c}");
        }
    }
    for (segment, offset) in &report.torn_tails_cut_at_open {
        let _ = writeln!(
            w,
            "torn tail cut when the store was opened: segment {segment} at offset {offset} (a crash; never acknowledged, not damage)"
        );
    }
    for (run, reason) in &report.runs_set_aside_at_open {
        let _ = writeln!(
            w,
            "index run set aside and rebuilt when the store was opened: {run} ({reason})"
        );
    }
    for run in &report.damaged_runs {
        let _ = writeln!(w, "index run damaged: {run}");
        for d in report.run_damage.iter().filter(|d| &d.file == run) {
            let _ = writeln!(w, "  offset {}: {}", d.offset, d.what);
        }
    }
    if report.run_damage_unlisted > 0 {
        let _ = writeln!(
            w,
            "  ... and {} more damaged blocks",
            report.run_damage_unlisted
        );
    }
    if let Some(r) = repair {
        for (run, moved) in &r.runs_set_aside {
            let _ = writeln!(w, "repaired: {run} set aside as {moved}");
        }
        if !r.segments_reindexed.is_empty() {
            let ids: Vec<String> = r.segments_reindexed.iter().map(u64::to_string).collect();
            let segments = if ids.len() == 1 {
                "segment"
            } else {
                "segments"
            };
            let _ = writeln!(
                w,
                "repaired: {segments} {} indexed again; {} now",
                ids.join(", "),
                plural(r.runs_after as u64, "index run")
            );
        }
        for d in &r.still_damaged {
            let _ = writeln!(
                w,
                "still damaged after the repair: {} offset {}: {}",
                d.file, d.offset, d.what
            );
        }
    } else if !report.runs_clean() {
        let _ = writeln!(
            w,
            "index runs are derived data: `kuvasto verify --repair-indices` rebuilds them from the segments"
        );
    }
    let verdict = match code {
        EXIT_CLEAN if report.is_clean() => "result: clean".to_string(),
        EXIT_CLEAN => "result: clean after repairing the index".to_string(),
        _ if !report.segments_clean() => format!(
            "result: DAMAGED (exit {code}): segments are never repaired; restore the objects named above from a backup"
        ),
        _ => format!("result: DAMAGED (exit {code}): index runs"),
    };
    let _ = writeln!(w, "{verdict}");
    out
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn damage_text(w: &mut String, data_dir: &Path, d: &SegmentDamage) {
    let record = match d.record_offset {
        Some(r) if r != d.offset => format!(" (record at {r})"),
        _ => String::new(),
    };
    let len = d.len.map(|l| format!(", {l} bytes")).unwrap_or_default();
    let _ = writeln!(
        w,
        "  {} offset {}{record}{len}: {}",
        data_dir.join(&d.file).display(),
        d.offset,
        d.what
    );
    if d.keys.is_empty() {
        let _ = writeln!(w, "    affects no key that can be told");
    }
    for k in &d.keys {
        let _ = writeln!(w, "    {}", key_line(k));
    }
    if d.keys_unlisted > 0 {
        let _ = writeln!(w, "    ... and {} more keys", d.keys_unlisted);
    }
}

fn key_json(k: &AffectedKey) -> Value {
    let mut v = json!({
        "namespace": k.namespace.0,
        "namespace_name": namespace_name(k.namespace),
        "key": k.key_text(),
        "kind": kind_name(k.kind),
        "seq": k.seq,
        "current": k.current,
    });
    if std::str::from_utf8(&k.key).is_err() {
        let hex: String = k.key.iter().map(|b| format!("{b:02x}")).collect();
        v["key_hex"] = json!(hex);
    }
    v
}

fn run_damage_json(d: &RunDamage) -> Value {
    json!({"file": d.file, "offset": d.offset, "block": d.block, "what": d.what})
}

/// The JSON report.
pub fn to_json(
    data_dir: &Path,
    report: &VerifyReport,
    repair: Option<&RepairReport>,
    code: i32,
) -> Value {
    let damage: Vec<Value> = report
        .segment_damage
        .iter()
        .map(|d| {
            json!({
                "segment_id": d.segment_id,
                "file": d.file,
                "path": data_dir.join(&d.file).display().to_string(),
                "offset": d.offset,
                "record_offset": d.record_offset,
                "len": d.len,
                "what": d.what,
                "keys": d.keys.iter().map(key_json).collect::<Vec<_>>(),
                "keys_unlisted": d.keys_unlisted,
            })
        })
        .collect();
    json!({
        "data_dir": data_dir.display().to_string(),
        "clean": report.is_clean(),
        "exit_code": code,
        "segments": {
            "checked": report.segments_checked,
            "sealed": report.sealed_segments_checked,
            "bytes": report.segment_bytes_checked,
            "records": report.records_checked,
        },
        "segment_damage": damage,
        "segment_damage_unlisted": report.damage_unlisted,
        "found_at_open": report.found_at_open.iter().map(|c| json!({
            "segment_id": c.segment_id, "offset": c.offset, "reason": c.reason,
        })).collect::<Vec<_>>(),
        "torn_tails_cut_at_open": report.torn_tails_cut_at_open.iter().map(|(s, o)| json!({
            "segment_id": s, "offset": o,
        })).collect::<Vec<_>>(),
        "runs": {
            "checked": report.runs_checked,
            "bytes": report.run_bytes_checked,
            "damaged": report.damaged_runs,
            "set_aside_at_open": report.runs_set_aside_at_open.iter().map(|(f, r)| json!({
                "file": f, "reason": r,
            })).collect::<Vec<_>>(),
        },
        "run_damage": report.run_damage.iter().map(run_damage_json).collect::<Vec<_>>(),
        "run_damage_unlisted": report.run_damage_unlisted,
        "repair": repair.map(|r| json!({
            "runs_checked": r.runs_checked,
            "runs_set_aside": r.runs_set_aside.iter().map(|(f, m)| json!({
                "file": f, "moved_to": m,
            })).collect::<Vec<_>>(),
            "segments_reindexed": r.segments_reindexed,
            "runs_after": r.runs_after,
            "still_damaged": r.still_damaged.iter().map(run_damage_json).collect::<Vec<_>>(),
            "repaired": runs_repaired(report, r),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_damage() {
        let clean = VerifyReport::default();
        assert_eq!(exit_code(&clean, None), EXIT_CLEAN);
        let runs = VerifyReport {
            damaged_runs: vec!["/d/index/run-1.kvi".into()],
            ..VerifyReport::default()
        };
        assert_eq!(exit_code(&runs, None), EXIT_DAMAGE);
        let repaired = RepairReport {
            runs_set_aside: vec![("/d/index/run-1.kvi".into(), "/d/index/run-1.kvi.bad".into())],
            ..RepairReport::default()
        };
        assert_eq!(exit_code(&runs, Some(&repaired)), EXIT_CLEAN);
        let text = to_text(Path::new("/d"), &runs, Some(&repaired), EXIT_CLEAN);
        assert!(
            text.contains("repaired: /d/index/run-1.kvi set aside"),
            "{text}"
        );
        assert!(text.contains("result: clean after repairing"), "{text}");
        let segments = VerifyReport {
            segment_damage: vec![SegmentDamage {
                segment_id: 1,
                file: "seg-0000000000000001.kvs".into(),
                offset: 4160,
                record_offset: Some(4096),
                len: Some(200),
                what: "body block 0 checksum".into(),
                keys: vec![AffectedKey {
                    namespace: Namespace::OBJECT,
                    key: b"1.2.3".to_vec(),
                    kind: Some(RecordKind::Blob),
                    seq: Some(7),
                    current: Some(true),
                }],
                keys_unlisted: 0,
            }],
            ..VerifyReport::default()
        };
        assert_eq!(exit_code(&segments, Some(&repaired)), EXIT_DAMAGE);
        let text = to_text(Path::new("/d"), &segments, None, EXIT_DAMAGE);
        assert!(
            text.contains("/d/seg-0000000000000001.kvs offset 4160 (record at 4096), 200 bytes: body block 0 checksum"),
            "{text}"
        );
        assert!(
            text.contains("object 1.2.3 (blob, seq 7; current version"),
            "{text}"
        );
        let json = to_json(Path::new("/d"), &segments, None, EXIT_DAMAGE);
        assert_eq!(json["segment_damage"][0]["keys"][0]["key"], "1.2.3");
        assert_eq!(json["exit_code"], 1);
    }
}
