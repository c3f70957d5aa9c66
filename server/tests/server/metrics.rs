//! `/health`, `/ready` and `/metrics` against a real `kuvasto serve`: after stores over
//! DICOMweb and DIMSE (dcmtk's echoscu and storescu), a refusal and a retrieval, the
//! Prometheus text carries the counts, latency histograms and the engine's figures.

use crate::dicomweb::{curl, generated, stow, Server};
use std::process::Command;

/// The value of the series `name{labels}` (exactly as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn health_ready_and_metrics_count_what_happened() {
    let server = Server::start(&[]);
    let base = format!("http://{}", server.addr);
    let health = curl(&[&format!("{base}/health")], None);
    assert_eq!((health.status, health.body.as_slice()), (200, &b"ok\n"[..]));
    let ready = curl(&[&format!("{base}/ready")], None);
    assert_eq!(ready.status, 200);

    let objects = generated();
    let parts: Vec<&[u8]> = objects.iter().take(2).map(|(_, b)| b.as_slice()).collect();
    assert_eq!(stow(&server, "/studies", &parts).status, 200);
    assert_eq!(
        stow(&server, "/studies", &[b"not DICOM at all"]).status,
        409
    );
    let ct = &objects[0].1;
    let retrieved = curl(
        &[
            "-H",
            "Accept: multipart/related; type=\"application/dicom\"",
            &server.url("/studies/2.25.4711"),
        ],
        None,
    );
    assert_eq!(retrieved.status, 200);
    assert!(retrieved
        .body
        .windows(64)
        .any(|w| w == &ct[ct.len() - 64..]));

    // DIMSE, when dcmtk is installed (`scripts/test.sh` installs it).
    let dimse =
        std::fs::read_to_string(server.dir.path().join("dimse-addr")).expect("DIMSE address");
    let (host, port) = dimse.rsplit_once(':').expect("host:port");
    let dcmtk = std::path::Path::new("/usr/bin/storescu").exists();
    if dcmtk {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ecg.dcm");
        std::fs::write(&file, &objects[2].1).expect("write");
        for (tool, args) in [
            ("/usr/bin/echoscu", vec!["-aec", "KUVASTO", host, port]),
            (
                "/usr/bin/storescu",
                vec![
                    "-aec",
                    "KUVASTO",
                    host,
                    port,
                    file.to_str().expect("utf-8 path"),
                ],
            ),
        ] {
            let out = Command::new(tool)
                .args(&args)
                .env("TCP_NODELAY", "1")
                .output()
                .expect("run dcmtk");
            assert!(out.status.success(), "{tool}: {out:?}");
        }
    } else if std::env::var_os("KUVASTO_REQUIRE_SAMPLES").is_some() {
        panic!("KUVASTO_REQUIRE_SAMPLES is set but dcmtk is not installed");
    }

    let metrics = curl(&[&format!("{base}/metrics")], None);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        metrics.content_type
    );
    let text = String::from_utf8(metrics.body).expect("UTF-8");
    let expect = |series: &str, wanted: f64| {
        assert_eq!(value(&text, series), Some(wanted), "{series}\n{text}");
    };
    expect(
        "kuvasto_ingest_instances_total{protocol=\"dicomweb\",outcome=\"stored\"}",
        2.0,
    );
    expect(
        "kuvasto_ingest_refusals_total{protocol=\"dicomweb\",reason=\"C000\"}",
        1.0,
    );
    expect(
        "kuvasto_retrieve_instances_total{protocol=\"dicomweb\",action=\"retrieve\"}",
        2.0,
    );
    expect(
        "kuvasto_http_requests_total{route=\"/dicom-web/studies\",method=\"POST\",status=\"2xx\"}",
        1.0,
    );
    expect(
        "kuvasto_http_requests_total{route=\"/dicom-web/studies\",method=\"POST\",status=\"4xx\"}",
        1.0,
    );
    expect(
        "kuvasto_http_request_duration_seconds_count{route=\"/dicom-web/studies/{}\",method=\"GET\"}",
        1.0,
    );
    expect(
        "kuvasto_http_request_duration_seconds_bucket{route=\"/dicom-web/studies/{}\",method=\"GET\",le=\"+Inf\"}",
        1.0,
    );
    expect("kuvasto_store_segments{state=\"open\"}", 1.0);
    expect("kuvasto_store_poisoned", 0.0);
    expect("kuvasto_dimse_associations_open", 0.0);
    // Every acknowledged put went through a durable batch.
    let durable =
        value(&text, "kuvasto_engine_durable_write_seconds_count").expect("durable writes");
    let commits = value(&text, "kuvasto_engine_batch_commits_sum").expect("batch commits");
    assert!(durable >= 1.0 && commits >= 2.0, "{durable} {commits}");
    assert!(value(&text, "kuvasto_engine_bytes_written_total").unwrap_or(0.0) > ct.len() as f64);
    if dcmtk {
        expect(
            "kuvasto_ingest_instances_total{protocol=\"dimse\",outcome=\"stored\"}",
            1.0,
        );
        expect("kuvasto_dimse_operations_total{service=\"C-ECHO\"}", 1.0);
        expect("kuvasto_dimse_operations_total{service=\"C-STORE\"}", 1.0);
        expect(
            "kuvasto_dimse_operation_duration_seconds_count{service=\"C-STORE\"}",
            1.0,
        );
    }
    // The exposition's own shape: every series has its family's HELP and TYPE first.
    for family in [
        "kuvasto_ingest_instances_total",
        "kuvasto_engine_durable_write_seconds",
    ] {
        let help = text.find(&format!("# HELP {family} ")).expect("HELP");
        let kind = text.find(&format!("# TYPE {family} ")).expect("TYPE");
        let first = text.find(&format!("\n{family}")).expect("a series");
        assert!(help < kind && kind < first, "{family}");
    }
}
