//! Index scale test: builds the catalog for N generated instances the way the store does (one
//! run per "segment" of instances, binary-counter merges), then, in a fresh process, reopens
//! it and measures query latency percentiles and resident memory.
//!
//! `cargo run --release -p kuvasto-benches --example index_scale -- 1000000 [DIR]`
//! (DIR defaults to a temporary directory; `COLD=1` drops the page cache before reopening,
//! which needs root; `QUERIES=n` per kind, default 10000; `SEGMENT=n` instances per run,
//! default 50000).
//!
//! The generated archive mixes study shapes like a national archive: 60 % radiographs (2
//! series of 1–2 instances), 30 % CT (3 series of 100), 10 % MR (8 series of 30); three
//! studies per patient; UIDs of realistic length.

use kuvasto_engine::index::attrs::{tags, InstanceAttrs, InstanceLocation, Level};
use kuvasto_engine::index::catalog::{Catalog, CatalogLimits, Hits, Query};
use kuvasto_engine::index::matching::{MatchOptions, MatchVr, Matcher};
use std::time::{Duration, Instant};

const UID_ROOT: &str = "1.2.246.562.99.20241125.1";

fn study_shape(study: u64) -> (&'static str, u32, u32) {
    match study % 10 {
        0..=5 => ("DX", 2, 1 + (study % 2) as u32),
        6..=8 => ("CT", 3, 100),
        _ => ("MR", 8, 30),
    }
}

fn study_uid(study: u64) -> String {
    format!(
        "{UID_ROOT}.{}.{}",
        1_000_000 + study,
        study * 7919 % 100_003
    )
}

fn series_uid(study: u64, series: u32) -> String {
    format!("{}.{series}", study_uid(study))
}

fn patient_id(study: u64) -> String {
    format!("{:09}", 100_000_000 + study / 3)
}

fn accession(study: u64) -> String {
    format!("ACC{:010}", study * 31 + 7)
}

/// Every instance of `study`, in arrival order.
fn study_instances(study: u64) -> Vec<InstanceAttrs> {
    let (modality, series_count, per_series) = study_shape(study);
    let mut out = Vec::new();
    for se in 0..series_count {
        for i in 0..per_series {
            out.push(InstanceAttrs {
                patient_id: patient_id(study),
                issuer_of_patient_id: "FI-HETU".into(),
                patient_name: format!("Virtanen^Aino^{}", study / 3),
                patient_birth_date: format!(
                    "19{:02}0{}1{}",
                    study % 100,
                    1 + study % 9,
                    study % 10
                ),
                patient_sex: if study.is_multiple_of(2) { "F" } else { "M" }.into(),
                study_instance_uid: study_uid(study),
                study_date: format!(
                    "20{:02}{:02}{:02}",
                    10 + study % 15,
                    1 + study % 12,
                    1 + study % 28
                ),
                study_time: "101530".into(),
                accession_number: accession(study),
                study_id: format!("{}", study % 10_000),
                study_description: format!("{modality} THORAX"),
                referring_physician_name: "Lahetin^Lauri".into(),
                modality: modality.into(),
                series_instance_uid: series_uid(study, se),
                series_number: Some(se as i32 + 1),
                series_description: format!("{modality} series {se}"),
                body_part_examined: "CHEST".into(),
                performed_procedure_step_start_date: String::new(),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance_uid: format!("{}.{se}.{i}", study_uid(study)),
                instance_number: Some(i as i32 + 1),
                number_of_frames: None,
                rows: Some(512),
                columns: Some(512),
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                extra: Vec::new(),
            });
        }
    }
    out
}

/// (anonymous, file-backed) resident bytes of this process: anonymous memory is what the
/// index needs; file-backed pages are the mapped runs in the page cache, which the kernel
/// drops under pressure and re-reads on demand.
fn rss_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("RssAnon:"), field("RssFile:"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tiny deterministic generator (splitmix64) so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn build(dir: &std::path::Path, instances: u64) -> u64 {
    let segment = env_u64("SEGMENT", 50_000);
    let (catalog, _) = Catalog::open(dir, CatalogLimits::default()).expect("open catalog");
    let started = Instant::now();
    let (mut seq, mut study, mut in_segment) = (0u64, 0u64, 0u64);
    let mut merges = 0;
    while seq < instances {
        for attrs in study_instances(study) {
            seq += 1;
            let location = InstanceLocation {
                segment_id: seq / segment,
                offset: seq * 4096,
                object_len: 524_288,
            };
            catalog
                .insert(attrs, location, seq, seq / segment)
                .expect("insert");
            in_segment += 1;
            if in_segment == segment {
                catalog.freeze().expect("freeze");
                merges += catalog.maybe_merge().expect("merge");
                in_segment = 0;
            }
        }
        study += 1;
    }
    catalog.freeze().expect("freeze");
    merges += catalog.maybe_merge().expect("merge");
    let elapsed = started.elapsed();
    let runs = catalog.run_counts();
    let file_bytes: u64 = runs.iter().map(|r| r.file_bytes).sum();
    println!(
        "build: {seq} instances, {study} studies in {:.1} s ({:.0} instances/s), {merges} merges, {} runs, {:.1} MB on disk ({:.0} B/instance)",
        elapsed.as_secs_f64(),
        seq as f64 / elapsed.as_secs_f64(),
        runs.len(),
        file_bytes as f64 / 1e6,
        file_bytes as f64 / seq as f64,
    );
    study
}

fn percentiles(name: &str, mut samples: Vec<Duration>, hits: usize) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<28} n={:<6} p50={:>8.1} µs  p99={:>8.1} µs  max={:>8.1} µs  (avg hits {:.1})",
        samples.len(),
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(1.0).as_secs_f64() * 1e6,
        hits as f64 / samples.len() as f64
    );
}

fn query_phase(dir: &std::path::Path, instances: u64, studies: u64) {
    let rss_before = rss_bytes();
    let started = Instant::now();
    let (catalog, report) = Catalog::open(dir, CatalogLimits::default()).expect("reopen");
    let reopen = started.elapsed();
    let rss_open = rss_bytes();
    println!(
        "reopen: {:.1} ms, {} runs mapped; resident +{:.1} MB anonymous, +{:.1} MB file-backed",
        reopen.as_secs_f64() * 1e3,
        report.runs_mapped,
        rss_open.0.saturating_sub(rss_before.0) as f64 / 1e6,
        rss_open.1.saturating_sub(rss_before.1) as f64 / 1e6
    );
    let queries = env_u64("QUERIES", 10_000);
    let mut rng = Rng(42);
    let exact = |vr, v: &str| Matcher::parse(vr, v, MatchOptions::default()).expect("key");
    let run = |level, filters: Vec<_>| -> (Duration, usize) {
        let q = Query {
            level,
            filters,
            offset: 0,
            limit: None,
        };
        let t = Instant::now();
        let hits = catalog.query(&q).expect("query");
        (t.elapsed(), hits.len())
    };
    let mut kinds: Vec<(&str, Vec<Duration>, usize)> = Vec::new();
    for kind in 0..3 {
        let mut samples = Vec::with_capacity(queries as usize);
        let mut hit_total = 0;
        for _ in 0..queries {
            let study = rng.next() % studies;
            let (d, hits) = match kind {
                0 => run(
                    Level::Study,
                    vec![(tags::PATIENT_ID, exact(MatchVr::Text, &patient_id(study)))],
                ),
                1 => run(
                    Level::Study,
                    vec![(
                        tags::ACCESSION_NUMBER,
                        exact(MatchVr::Text, &accession(study)),
                    )],
                ),
                _ => {
                    let (_, series_count, _) = study_shape(study);
                    let se = (rng.next() % u64::from(series_count)) as u32;
                    run(
                        Level::Instance,
                        vec![(
                            tags::SERIES_INSTANCE_UID,
                            exact(MatchVr::Uid, &series_uid(study, se)),
                        )],
                    )
                }
            };
            assert!(hits > 0, "every generated key is found");
            hit_total += hits;
            samples.push(d);
        }
        let name = [
            "study by PatientID",
            "study by AccessionNumber",
            "instances of series",
        ][kind];
        kinds.push((name, samples, hit_total));
    }
    for (name, samples, hits) in kinds {
        percentiles(name, samples, hits);
    }
    // A range query for scale (not one of the p99 goals).
    let t = Instant::now();
    let Hits::Studies(month) = catalog
        .query(&Query {
            level: Level::Study,
            filters: vec![(tags::STUDY_DATE, exact(MatchVr::Date, "20200101-20201231"))],
            offset: 0,
            limit: Some(100),
        })
        .expect("range")
    else {
        unreachable!()
    };
    println!(
        "study date range, limit 100: {} hits in {:.1} µs",
        month.len(),
        t.elapsed().as_secs_f64() * 1e6
    );
    let rss_after = rss_bytes();
    let anon = rss_after.0.saturating_sub(rss_before.0);
    let file = rss_after.1.saturating_sub(rss_before.1);
    println!(
        "resident after {} queries over the pre-open baseline: anonymous +{:.1} MB = {:.1} B/instance; file-backed (mapped runs in page cache) +{:.1} MB = {:.1} B/instance",
        queries * 3,
        anon as f64 / 1e6,
        anon as f64 / instances as f64,
        file as f64 / 1e6,
        file as f64 / instances as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--query") {
        let dir = std::path::PathBuf::from(&args[1]);
        let instances: u64 = args[2].parse().expect("instances");
        let studies: u64 = args[3].parse().expect("studies");
        query_phase(&dir, instances, studies);
        return;
    }
    let instances: u64 = args.first().map_or(1_000_000, |a| a.parse().expect("N"));
    let tmp;
    let dir = match args.get(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().expect("tempdir");
            tmp.path().to_path_buf()
        }
    };
    let studies = build(&dir, instances);
    if std::env::var("COLD").is_ok_and(|v| v == "1") {
        let _ = std::process::Command::new("sync").status();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--query",
            &dir.display().to_string(),
            &instances.to_string(),
            &studies.to_string(),
        ])
        .status()
        .expect("query phase");
    assert!(status.success());
}
