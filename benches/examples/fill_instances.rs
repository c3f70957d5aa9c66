//! Fills a data directory with N small generated DICOM instances through the engine's
//! instance put (durable, indexed, with metadata records), fast, for server-level tests at
//! scale (QIDO latency with a million instances loaded).
//!
//! `cargo run --release -p kuvasto-benches --example fill_instances -- DIR N [THREADS]`
//! (`SEGMENT_MIB=n` sets the segment size, default 1024; serve the directory with the same
//! `--segment-size-mib`).
//!
//! Each instance is a header-only CT (about 1 KB: 8×8 pixels); 50 instances per series,
//! 4 series per study, 2 studies per patient, study dates over 20 years.

use kuvasto_engine::dicom::explicit_le::encode_element as el;
use kuvasto_engine::dicom::meta::encode_file_meta;
use kuvasto_engine::dicom::Tag;
use kuvasto_engine::{Store, StoreConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const ROOT: &str = "1.2.246.562.99.20261125";

fn padded(s: &str, pad: u8) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(pad);
    }
    v
}

fn instance(n: u64) -> Vec<u8> {
    let series = n / 50;
    let study = series / 4;
    let patient = study / 2;
    let sop = format!("{ROOT}.3.{n}");
    let day = study * 37 % 7300;
    let date = format!(
        "{:04}{:02}{:02}",
        2005 + day / 365,
        1 + day % 365 / 31 % 12,
        1 + day % 28
    );
    let data_set = [
        el(Tag::new(0x0008, 0x0005), b"CS", b"ISO_IR 192"),
        el(Tag::new(0x0008, 0x0016), b"UI", &padded(CT, 0)),
        el(Tag::new(0x0008, 0x0018), b"UI", &padded(&sop, 0)),
        el(Tag::new(0x0008, 0x0020), b"DA", date.as_bytes()),
        el(Tag::new(0x0008, 0x0030), b"TM", b"101500"),
        el(
            Tag::new(0x0008, 0x0050),
            b"SH",
            &padded(&format!("A{study}"), b' '),
        ),
        el(Tag::new(0x0008, 0x0060), b"CS", b"CT"),
        el(
            Tag::new(0x0010, 0x0010),
            b"PN",
            &padded(&format!("PATIENT^{patient}"), b' '),
        ),
        el(
            Tag::new(0x0010, 0x0020),
            b"LO",
            &padded(&format!("P{patient}"), b' '),
        ),
        el(
            Tag::new(0x0020, 0x000D),
            b"UI",
            &padded(&format!("{ROOT}.1.{study}"), 0),
        ),
        el(
            Tag::new(0x0020, 0x000E),
            b"UI",
            &padded(&format!("{ROOT}.2.{series}"), 0),
        ),
        el(
            Tag::new(0x0020, 0x0013),
            b"IS",
            &padded(&(n % 50).to_string(), b' '),
        ),
        el(Tag::new(0x0028, 0x0002), b"US", &1u16.to_le_bytes()),
        el(Tag::new(0x0028, 0x0004), b"CS", b"MONOCHROME2 "),
        el(Tag::new(0x0028, 0x0010), b"US", &8u16.to_le_bytes()),
        el(Tag::new(0x0028, 0x0011), b"US", &8u16.to_le_bytes()),
        el(Tag::new(0x0028, 0x0100), b"US", &8u16.to_le_bytes()),
        el(Tag::PIXEL_DATA, b"OB", &[0x55; 64]),
    ]
    .concat();
    [encode_file_meta(CT, &sop, "1.2.840.10008.1.2.1"), data_set].concat()
}

fn main() -> kuvasto_engine::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: fill_instances DIR N [THREADS]";
    let dir = args.get(1).expect(usage);
    let count: u64 = args.get(2).and_then(|n| n.parse().ok()).expect(usage);
    let threads: u64 = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(32);
    let segment_mib: u64 = std::env::var("SEGMENT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let config = StoreConfig {
        segment_size_bytes_max: segment_mib << 20,
        ..StoreConfig::default()
    };
    let store = Store::open(std::path::Path::new(dir), config)?;
    let next = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return;
                }
                let bytes = instance(n);
                let mut put = store.put_instance();
                put.write(&bytes).expect("write");
                put.finish().expect("finish");
                if n.is_multiple_of(100_000) {
                    eprintln!("{n} instances, {:.0} s", started.elapsed().as_secs_f64());
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{count} instances in {secs:.1} s ({:.0}/s)",
        count as f64 / secs
    );
    store.close();
    Ok(())
}
