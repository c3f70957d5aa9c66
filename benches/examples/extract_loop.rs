//! Profiling aid: extracts one file's header in a loop (`perf record` it).
//! `cargo run --release -p kuvasto-benches --example extract_loop -- FILE [ROUNDS]`
use kuvasto_engine::dicom::explicit_le::{Progress, ScanLimits};
use kuvasto_engine::dicom::extract::Extractor;
use kuvasto_engine::dicom::meta::MetaLimits;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bytes = std::fs::read(&args[0]).expect("file");
    let rounds: u32 = args
        .get(1)
        .map_or(1_000_000, |r| r.parse().expect("rounds"));
    let started = Instant::now();
    let mut elements = 0usize;
    for _ in 0..rounds {
        let mut extractor = Extractor::new(MetaLimits::default(), ScanLimits::default());
        for piece in bytes.chunks(64 * 1024) {
            if let Progress::PixelData(_) = extractor.feed(piece).expect("feed") {
                break;
            }
        }
        elements += extractor.finish().expect("finish").data_set.elements.len();
    }
    println!(
        "{:.3} µs per header ({elements} elements)",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );
}
