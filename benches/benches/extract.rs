//! Header extraction per object: the Explicit VR LE fast path against dicom-object's
//! `OpenFileOptions::read_until(PIXEL_DATA)` on the same bytes, in the same run. Inputs:
//! pydicom's CT and MR samples when `.venv` has them (`scripts/test.sh` installs pydicom), and
//! a generated CT header always.

use criterion::{black_box, Criterion};
use dicom_core::Tag as DTag;
use dicom_object::file::ReadPreamble;
use dicom_object::OpenFileOptions;
use kuvasto_engine::dicom::explicit_le::{encode_element, ScanLimits};
use kuvasto_engine::dicom::extract::Extractor;
use kuvasto_engine::dicom::meta::MetaLimits;
use kuvasto_engine::dicom::Tag;
use std::path::Path;
use std::time::{Duration, Instant};

fn el(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    encode_element(Tag::new(group, element), vr, value)
}

/// A CT-like Part-10 object: file meta, ~60 header attributes, 512×512×16-bit pixel data.
fn generated_ct() -> Vec<u8> {
    let meta_body = [
        el(2, 1, b"OB", &[0, 1]),
        el(2, 2, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
        el(2, 3, b"UI", b"1.2.246.562.10.99.1.2.3.4.5.6\0"),
        el(2, 0x10, b"UI", b"1.2.840.10008.1.2.1\0"),
        el(2, 0x12, b"UI", b"1.2.246.562.99\0"),
    ]
    .concat();
    let mut ds = Vec::new();
    let texts: &[(u16, u16, &[u8; 2], &[u8])] = &[
        (0x0008, 0x0005, b"CS", b"ISO_IR 100"),
        (0x0008, 0x0008, b"CS", b"ORIGINAL\\PRIMARY\\AXIAL "),
        (0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
        (0x0008, 0x0018, b"UI", b"1.2.246.562.10.99.1.2.3.4.5.6\0"),
        (0x0008, 0x0020, b"DA", b"20261125"),
        (0x0008, 0x0030, b"TM", b"101500"),
        (0x0008, 0x0050, b"SH", b"ACC12345"),
        (0x0008, 0x0060, b"CS", b"CT"),
        (0x0008, 0x0070, b"LO", b"Vendor Inc"),
        (0x0008, 0x0090, b"PN", b"Lahti^Matti"),
        (0x0008, 0x1030, b"LO", b"NA1AA Kaularanka"),
        (0x0008, 0x103E, b"LO", b"Axial 1.0 mm"),
        (0x0010, 0x0010, b"PN", b"Virtanen^Aino"),
        (0x0010, 0x0020, b"LO", b"010203-123A "),
        (0x0010, 0x0030, b"DA", b"19030201"),
        (0x0010, 0x0040, b"CS", b"F "),
        (0x0018, 0x0015, b"CS", b"CSPINE"),
        (0x0018, 0x0050, b"DS", b"1.0 "),
        (0x0018, 0x0060, b"DS", b"120 "),
        (0x0020, 0x000D, b"UI", b"1.2.246.562.10.99.1\0"),
        (0x0020, 0x000E, b"UI", b"1.2.246.562.10.99.1.2\0"),
        (0x0020, 0x0010, b"SH", b"42"),
        (0x0020, 0x0011, b"IS", b"3 "),
        (0x0020, 0x0013, b"IS", b"17"),
        (0x0020, 0x0032, b"DS", b"-125.0\\-125.0\\-50.5 "),
        (0x0020, 0x0037, b"DS", b"1\\0\\0\\0\\1\\0 "),
        (0x0020, 0x0052, b"UI", b"1.2.246.562.10.99.9\0"),
        (0x0028, 0x0004, b"CS", b"MONOCHROME2 "),
        (0x0028, 0x1050, b"DS", b"40"),
        (0x0028, 0x1051, b"DS", b"400 "),
    ];
    for (g, e, vr, v) in texts {
        ds.extend(el(*g, *e, vr, v));
    }
    for (e, v) in [
        (0x0002u16, 1u16),
        (0x0010, 512),
        (0x0011, 512),
        (0x0100, 16),
        (0x0101, 12),
    ] {
        ds.extend(el(0x0028, e, b"US", &v.to_le_bytes()));
    }
    ds.extend(el(0x0029, 0x0010, b"LO", b"SIEMENS CSA HEADER"));
    ds.extend(el(0x0029, 0x1010, b"OB", &vec![0x5Au8; 8000]));
    ds.extend(el(0x7FE0, 0x0010, b"OW", &vec![0u8; 512 * 512 * 2]));
    [
        vec![0u8; 128],
        b"DICM".to_vec(),
        el(2, 0, b"UL", &(meta_body.len() as u32).to_le_bytes()),
        meta_body,
        ds,
    ]
    .concat()
}

fn ours(bytes: &[u8]) -> usize {
    let mut extractor = Extractor::new(MetaLimits::default(), ScanLimits::default());
    extractor.feed(bytes).expect("feed");
    extractor.finish().expect("extract").data_set.elements.len()
}

fn theirs(bytes: &[u8]) -> usize {
    let object = OpenFileOptions::new()
        .read_until(DTag(0x7FE0, 0x0010))
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .expect("dicom-object");
    object.iter().count()
}

fn per_op(f: impl Fn() -> usize, iterations: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(f());
    }
    start.elapsed() / iterations
}

fn main() {
    let mut inputs: Vec<(String, Vec<u8>)> = vec![("generated CT".into(), generated_ct())];
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    if let Some(Ok(python)) = std::fs::read_dir(&samples).ok().and_then(|mut d| d.next()) {
        let dir = python.path().join("site-packages/pydicom/data/test_files");
        for name in ["CT_small.dcm", "MR_small.dcm"] {
            if let Ok(bytes) = std::fs::read(dir.join(name)) {
                inputs.push((format!("pydicom {name}"), bytes));
            }
        }
    }
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("extract");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(2));
    for (name, bytes) in &inputs {
        group.bench_function(format!("kuvasto fast path/{name}"), |b| {
            b.iter(|| ours(bytes))
        });
        group.bench_function(format!("dicom-object read_until/{name}"), |b| {
            b.iter(|| theirs(bytes))
        });
    }
    group.finish();
    c.final_summary();
    let test_mode = std::env::args().any(|a| a == "--test");
    let iterations = if test_mode { 10 } else { 2000 };
    println!("\n## Header extraction (mean per object, measured side by side)\n");
    println!("| input | kuvasto fast path | dicom-object read_until(PixelData) | speed-up |");
    println!("|---|---|---|---|");
    for (name, bytes) in &inputs {
        let fast = per_op(|| ours(bytes), iterations);
        let slow = per_op(|| theirs(bytes), iterations / 4 + 1);
        println!(
            "| {name} | {:.2} µs | {:.2} µs | {:.0}× |",
            fast.as_secs_f64() * 1e6,
            slow.as_secs_f64() * 1e6,
            slow.as_secs_f64() / fast.as_secs_f64()
        );
    }
}
