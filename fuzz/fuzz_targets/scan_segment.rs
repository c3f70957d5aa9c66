//! Arbitrary bytes as a segment file, through every pure decoder: the scanner must not panic,
//! and every record it accepts must pass its checks again on its own.
#![no_main]

use kuvasto_engine::segment::format::{
    decode_directory, decode_manifest, SegmentHeader, Trailer, TRAILER_BYTES,
};
use kuvasto_engine::segment::scan::{check_record, scan_records};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let segment_id = SegmentHeader::decode(bytes)
        .map(|h| h.segment_id)
        .unwrap_or(1);
    let scan = scan_records(bytes, segment_id, bytes.len() as u64);
    for record in &scan.records {
        let again = check_record(bytes, segment_id, record.header.offset)
            .expect("a record the scan accepted fails its checks");
        assert_eq!(&again, record);
    }
    for damage in &scan.damage {
        assert!(
            check_record(bytes, segment_id, damage.offset).is_err()
                || damage.reason.contains("unwritten")
        );
    }
    let len = bytes.len() as u64;
    if len >= TRAILER_BYTES {
        let _ = Trailer::decode(&bytes[(len - TRAILER_BYTES) as usize..], segment_id, len);
    }
    let _ = decode_directory(bytes, 3);
    let _ = decode_manifest(bytes);
});
