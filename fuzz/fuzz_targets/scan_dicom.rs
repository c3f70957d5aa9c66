//! Arbitrary bytes through the file meta reader and through the Explicit VR Little Endian fast
//! path (fed in two pieces split where the input says): no panic, nothing held beyond the
//! limits, and every value reported is exactly the bytes at its offset.
#![no_main]

use kuvasto_engine::dicom::explicit_le::{ExplicitLeScanner, Progress, ScanLimits};
use kuvasto_engine::dicom::meta::{read_file_meta, MetaLimits};
use kuvasto_engine::dicom::Tag;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The file meta reader on the same bytes: no panic, no allocation beyond its limits.
    if let Ok(Some(meta)) = read_file_meta(input, MetaLimits::default()) {
        assert!(meta.data_set_offset as usize <= input.len());
    }
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let limits = ScanLimits {
        depth_max: 8,
        wanted_value_bytes_max: 4096,
        buffered_bytes_max: 64 * 1024,
    };
    // Want every attribute of a few groups, so values are checked often.
    let wanted = |tag: Tag| matches!(tag.group(), 0x0008 | 0x0010 | 0x0020 | 0x0028);
    let mut scanner = ExplicitLeScanner::new(0, wanted, limits);
    let split = (split as usize * data.len() / 255).min(data.len());
    let mut outcome = Ok(Progress::NeedMore);
    for piece in [&data[..split], &data[split..]] {
        outcome = scanner.feed(piece);
        assert!(scanner.buffered_bytes() <= limits.buffered_bytes_max);
        if !matches!(outcome, Ok(Progress::NeedMore)) {
            break;
        }
    }
    if outcome.is_err() {
        return;
    }
    if let Ok(scanned) = scanner.finish() {
        for element in &scanned.elements {
            let start = element.value_offset as usize;
            let value = scanned.value(element);
            assert!(value.len() <= limits.wanted_value_bytes_max as usize);
            assert_eq!(&data[start..start + value.len()], value);
        }
        if let Some(pixel) = scanned.pixel_data {
            assert!(pixel.value_offset as usize <= data.len());
        }
    }
});
