//! Operational metrics in the Prometheus text format (`GET /metrics`), plus the figures
//! behind `/health` and `/ready`.
//!
//! The archive and the protocol adapters count into one [`Metrics`]: instances and bytes
//! ingested and retrieved per protocol, refusals by failure reason, request latency per HTTP
//! route and per DIMSE service, open associations. At scrape time the engine adds its own:
//! durable-write latency, group-commit batch sizes, bytes written, segment and index sizes,
//! and whether the store is poisoned. A counter update takes one short lock; at this
//! archive's request rates (thousands per second) that is not measurable.

use kuvasto_engine::histogram::HistogramSnapshot;
use kuvasto_engine::Store;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Upper bounds of latency histograms, in seconds.
pub const SECONDS_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Distinct label sets per metric at most; more are folded into one `other` series, so a
/// client inventing URLs cannot grow memory.
const SERIES_PER_METRIC_MAX: usize = 256;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
struct Seconds {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Families {
    counters: BTreeMap<&'static str, BTreeMap<Labels, u64>>,
    histograms: BTreeMap<&'static str, BTreeMap<Labels, Seconds>>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<Families>,
    open_associations: AtomicI64,
}

/// HELP text and type of every metric this server exports.
const HELP: &[(&str, &str, &str)] = &[
    (
        "kuvasto_ingest_instances_total",
        "counter",
        "Instances stored, by protocol and outcome (stored, identical, replaced, quarantined).",
    ),
    (
        "kuvasto_ingest_bytes_total",
        "counter",
        "Bytes of instances received and stored, by protocol.",
    ),
    (
        "kuvasto_ingest_refusals_total",
        "counter",
        "Instances refused, by protocol and failure reason (hex status).",
    ),
    (
        "kuvasto_retrieve_instances_total",
        "counter",
        "Instances opened for reading, by protocol and action.",
    ),
    (
        "kuvasto_retrieve_bytes_total",
        "counter",
        "Bytes of instances opened for reading, by protocol.",
    ),
    (
        "kuvasto_http_requests_total",
        "counter",
        "HTTP requests answered, by route, method and status class.",
    ),
    (
        "kuvasto_http_request_duration_seconds",
        "histogram",
        "Time to answer an HTTP request (to its response head), by route and method.",
    ),
    (
        "kuvasto_dimse_operations_total",
        "counter",
        "DIMSE operations served, by service.",
    ),
    (
        "kuvasto_dimse_operation_duration_seconds",
        "histogram",
        "Time to serve a DIMSE operation, by service.",
    ),
    (
        "kuvasto_dimse_associations_open",
        "gauge",
        "DIMSE associations open now.",
    ),
    (
        "kuvasto_engine_durable_write_seconds",
        "histogram",
        "Time for a batch to become durable (write with RWF_DSYNC, or write plus fdatasync).",
    ),
    (
        "kuvasto_engine_batch_commits",
        "histogram",
        "Acknowledged writes per batch (group commit).",
    ),
    (
        "kuvasto_engine_bytes_written_total",
        "counter",
        "Bytes the engine wrote to segments.",
    ),
    (
        "kuvasto_engine_batches_total",
        "counter",
        "Batches the engine wrote.",
    ),
    (
        "kuvasto_engine_syncs_total",
        "counter",
        "Durable batch writes (each an RWF_DSYNC write or an fdatasync).",
    ),
    (
        "kuvasto_store_segments",
        "gauge",
        "Segment files, by state (sealed, open).",
    ),
    (
        "kuvasto_store_segment_bytes",
        "gauge",
        "Bytes of all segment files.",
    ),
    (
        "kuvasto_store_live_keys",
        "gauge",
        "Keys holding an object (instances, metadata, documents, rule records, audit batches).",
    ),
    ("kuvasto_index_runs", "gauge", "Index runs of the catalog."),
    (
        "kuvasto_index_instances",
        "gauge",
        "Instance rows in the catalog's index runs.",
    ),
    (
        "kuvasto_store_poisoned",
        "gauge",
        "1 when a failed write or fsync made the store read-only.",
    ),
];

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

fn folded<V>(series: &mut BTreeMap<Labels, V>, labels: Labels) -> Labels {
    if series.len() >= SERIES_PER_METRIC_MAX && !series.contains_key(&labels) {
        labels
            .into_iter()
            .map(|(k, _)| (k, "other".to_string()))
            .collect()
    } else {
        labels
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn families(&self) -> std::sync::MutexGuard<'_, Families> {
        self.families.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `by` to a counter.
    pub fn count(&self, name: &'static str, pairs: &[(&'static str, &str)], by: u64) {
        let mut families = self.families();
        let series = families.counters.entry(name).or_default();
        let key = folded(series, labels(pairs));
        *series.entry(key).or_default() += by;
    }

    /// Records one latency observation.
    pub fn observe_seconds(
        &self,
        name: &'static str,
        pairs: &[(&'static str, &str)],
        seconds: f64,
    ) {
        let mut families = self.families();
        let series = families.histograms.entry(name).or_default();
        let key = folded(series, labels(pairs));
        let h = series.entry(key).or_insert_with(|| Seconds {
            buckets: vec![0; SECONDS_BOUNDS.len() + 1],
            sum: 0.0,
            count: 0,
        });
        let i = SECONDS_BOUNDS.partition_point(|&b| b < seconds);
        h.buckets[i] += 1;
        h.sum += seconds;
        h.count += 1;
    }

    pub fn association_opened(&self) {
        self.open_associations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn association_closed(&self) {
        self.open_associations.fetch_sub(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of everything, the engine's figures read
    /// now.
    pub fn render(&self, store: &Store) -> String {
        let mut out = String::with_capacity(16 << 10);
        let families = self.families();
        let help = |out: &mut String, name: &str| {
            if let Some((_, kind, text)) = HELP.iter().find(|(n, _, _)| *n == name) {
                let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
            }
        };
        for (name, series) in &families.counters {
            help(&mut out, name);
            for (labels, value) in series {
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
            }
        }
        for (name, series) in &families.histograms {
            help(&mut out, name);
            for (labels, h) in series {
                let mut cumulative = 0;
                for (i, count) in h.buckets.iter().enumerate() {
                    cumulative += count;
                    let le = SECONDS_BOUNDS
                        .get(i)
                        .map_or("+Inf".to_string(), |b| b.to_string());
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {cumulative}",
                        render_labels(labels, Some(&le))
                    );
                }
                let _ = writeln!(out, "{name}_sum{} {}", render_labels(labels, None), h.sum);
                let _ = writeln!(
                    out,
                    "{name}_count{} {}",
                    render_labels(labels, None),
                    h.count
                );
            }
        }
        drop(families);
        let gauge = |out: &mut String, name: &str, labels: &str, value: f64| {
            let _ = writeln!(out, "{name}{labels} {value}");
        };
        help(&mut out, "kuvasto_dimse_associations_open");
        gauge(
            &mut out,
            "kuvasto_dimse_associations_open",
            "",
            self.open_associations.load(Ordering::Relaxed) as f64,
        );
        let engine = store.engine_stats();
        render_engine_histogram(
            &mut out,
            "kuvasto_engine_durable_write_seconds",
            &engine.durable_write_micros.snapshot(),
            1e-6,
        );
        render_engine_histogram(
            &mut out,
            "kuvasto_engine_batch_commits",
            &engine.batch_commits.snapshot(),
            1.0,
        );
        for (name, value) in [
            ("kuvasto_engine_bytes_written_total", &engine.bytes_written),
            ("kuvasto_engine_batches_total", &engine.batches),
            ("kuvasto_engine_syncs_total", &engine.syncs),
        ] {
            help(&mut out, name);
            gauge(&mut out, name, "", value.load(Ordering::Relaxed) as f64);
        }
        let stats = store.stats();
        help(&mut out, "kuvasto_store_segments");
        gauge(
            &mut out,
            "kuvasto_store_segments",
            "{state=\"sealed\"}",
            stats.sealed_segments as f64,
        );
        gauge(
            &mut out,
            "kuvasto_store_segments",
            "{state=\"open\"}",
            (stats.segments - stats.sealed_segments) as f64,
        );
        help(&mut out, "kuvasto_store_segment_bytes");
        gauge(
            &mut out,
            "kuvasto_store_segment_bytes",
            "",
            stats.segment_bytes as f64,
        );
        help(&mut out, "kuvasto_store_live_keys");
        gauge(
            &mut out,
            "kuvasto_store_live_keys",
            "",
            stats.live_keys as f64,
        );
        if let Some(catalog) = store.catalog() {
            let runs = catalog.run_counts();
            help(&mut out, "kuvasto_index_runs");
            gauge(&mut out, "kuvasto_index_runs", "", runs.len() as f64);
            help(&mut out, "kuvasto_index_instances");
            gauge(
                &mut out,
                "kuvasto_index_instances",
                "",
                runs.iter().map(|r| f64::from(r.instances)).sum(),
            );
        }
        help(&mut out, "kuvasto_store_poisoned");
        gauge(
            &mut out,
            "kuvasto_store_poisoned",
            "",
            if store.poisoned().is_some() { 1.0 } else { 0.0 },
        );
        out
    }
}

/// An engine histogram in Prometheus form, each bound and the sum scaled by `unit`.
fn render_engine_histogram(out: &mut String, name: &str, h: &HistogramSnapshot, unit: f64) {
    if let Some((_, kind, text)) = HELP.iter().find(|(n, _, _)| *n == name) {
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
    }
    let mut cumulative = 0;
    for (i, count) in h.buckets.iter().enumerate() {
        cumulative += count;
        let le = h
            .bounds
            .get(i)
            .map_or("+Inf".to_string(), |b| (*b as f64 * unit).to_string());
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {}", h.sum as f64 * unit);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// `{a="x",b="y"}` (with `le` last when given), values escaped as the format requires.
fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut out = String::from("{");
    let mut first = true;
    let pairs = labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(le.map(|le| ("le", le)));
    for (k, v) in pairs {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        let m = Metrics::new();
        m.count(
            "kuvasto_ingest_instances_total",
            &[("protocol", "dimse"), ("outcome", "stored")],
            2,
        );
        m.count(
            "kuvasto_ingest_instances_total",
            &[("protocol", "dimse"), ("outcome", "stored")],
            1,
        );
        m.observe_seconds(
            "kuvasto_http_request_duration_seconds",
            &[("route", "/a\"b")],
            0.003,
        );
        let mut families = m.families();
        let text = {
            let mut out = String::new();
            for (name, series) in &families.counters {
                for (labels, value) in series {
                    out.push_str(&format!("{name}{} {value}\n", render_labels(labels, None)));
                }
            }
            out
        };
        assert!(
            text.contains(
                "kuvasto_ingest_instances_total{protocol=\"dimse\",outcome=\"stored\"} 3"
            ),
            "{text}"
        );
        let h = &families.histograms["kuvasto_http_request_duration_seconds"];
        let (labels, seconds) = h.iter().next().expect("one series");
        assert_eq!(
            render_labels(labels, Some("0.005")),
            "{route=\"/a\\\"b\",le=\"0.005\"}"
        );
        assert_eq!(seconds.buckets[2], 1, "0.003 s falls in the 0.005 bucket");
        // Series beyond the bound fold into `other`.
        families.counters.clear();
        drop(families);
        for i in 0..(SERIES_PER_METRIC_MAX + 10) {
            m.count(
                "kuvasto_http_requests_total",
                &[("route", &format!("/r{i}"))],
                1,
            );
        }
        let families = m.families();
        let series = &families.counters["kuvasto_http_requests_total"];
        assert_eq!(series.len(), SERIES_PER_METRIC_MAX + 1);
        assert_eq!(series[&vec![("route", "other".to_string())]], 10);
    }
}
