//! The fast path against the general path on the same Explicit VR Little Endian data set.
//!
//! The input is a data set (when it starts with a Part-10 preamble and file meta group, as
//! the pydicom samples used as seeds do, the data set after them). The fast path
//! (`ExplicitLeScanner`, fed in two pieces split where the input's first byte says) and the
//! general path (`extract_general` with Explicit VR Little Endian, all bytes, at the end) look
//! for the indexed attributes (`INDEXED`). They must agree: the same wanted elements (tag,
//! VR, offset, bytes) in the same order, the same Pixel Data location, and both accept or
//! both reject (with the same kind of error: malformed or over a limit). An element written
//! as UN is no exception: both paths report the dictionary's VR for it (UN for a tag the
//! dictionary does not know). Not compared: `Scanned::bulk`, which only the fast path fills
//! (by design, see its documentation).
//!
//! Accepted differences, all of them:
//!
//! 1. The fast path declines (`ScanError::Decline`: VR bytes that are not two capital
//!    letters, so not explicit VR). That is its contract: `Extractor` hands the data set to
//!    the general path then, or reports the data set malformed, so whatever the general path
//!    says is the answer (it must not panic, and must not ask for more bytes at the end).
//! 2. The general path reads the data set as implicit VR (`encoding_mismatch`) when its first
//!    element has no valid VR. Allowed only where the fast path declined (1), which is where
//!    `Extractor` would have reached the general path.
//!
//! Anything else is a bug in one of the paths.
#![no_main]

use kuvasto_engine::dicom::explicit_le::{
    ExplicitLeScanner, Progress, ScanError, ScanLimits, Scanned,
};
use kuvasto_engine::dicom::extract::INDEXED;
use kuvasto_engine::dicom::general::extract_general;
use kuvasto_engine::dicom::meta::{read_file_meta, ts, MetaLimits};
use kuvasto_engine::dicom::Tag;
use libfuzzer_sys::fuzz_target;

/// Small enough for the value and depth limits to be reached; the buffer limit is above any
/// input (the fast path holds at most the input, the general path checks it only before the
/// end of the stream), so it never decides.
const LIMITS: ScanLimits = ScanLimits {
    depth_max: 8,
    wanted_value_bytes_max: 4096,
    buffered_bytes_max: 1 << 30,
};

fn wanted(tag: Tag) -> bool {
    INDEXED.binary_search(&tag).is_ok()
}

fn fast_path(pieces: [&[u8]; 2]) -> Result<Scanned, ScanError> {
    let mut scanner = ExplicitLeScanner::new(0, wanted, LIMITS);
    for piece in pieces {
        if let Progress::PixelData(_) = scanner.feed(piece)? {
            break;
        }
    }
    scanner.finish()
}

/// Elements as (tag, VR, offset, bytes).
fn elements(scanned: &Scanned) -> Vec<(Tag, [u8; 2], u64, &[u8])> {
    scanned
        .elements
        .iter()
        .map(|e| (e.tag, e.vr, e.value_offset, scanned.value(e)))
        .collect()
}

fn kind(error: &ScanError) -> &'static str {
    match error {
        ScanError::Decline { .. } => "decline",
        ScanError::Malformed { .. } => "malformed",
        ScanError::Limit { .. } => "limit",
    }
}

fuzz_target!(|input: &[u8]| {
    let Some(&split) = input.first() else {
        return;
    };
    let mut data = input;
    if let Ok(Some(meta)) = read_file_meta(data, MetaLimits::default()) {
        data = &data[meta.data_set_offset as usize..];
    }
    let split = (usize::from(split) * data.len() / 255).min(data.len());
    let fast = fast_path([&data[..split], &data[split..]]);
    let general = extract_general(ts::EXPLICIT_VR_LE, data, 0, true, &wanted, &LIMITS);
    let general = match general {
        Ok(Some(found)) => Ok(found),
        Ok(None) => panic!("the general path asks for more bytes at the end of the stream"),
        Err(error) => Err(error),
    };
    if let Err(ScanError::Decline { .. }) = fast {
        return; // accepted difference 1 (and 2)
    }
    match (fast, general) {
        (Ok(fast), Ok(general)) => {
            assert!(
                !general.encoding_mismatch,
                "the general path read as implicit VR what the fast path read as explicit: \
                 {fast:?}"
            );
            assert!(!general.inflated);
            let general = &general.scanned;
            assert_eq!(elements(&fast), elements(general), "elements");
            assert_eq!(fast.pixel_data, general.pixel_data, "Pixel Data");
        }
        (Err(fast), Err(general)) => {
            assert_ne!(kind(&general), "decline", "{general}");
            assert_eq!(
                kind(&fast),
                kind(&general),
                "both reject, differently: fast path {fast}; general path {general}"
            );
        }
        (Ok(fast), Err(general)) => {
            panic!("the fast path accepts what the general path rejects ({general}): {fast:?}")
        }
        (Err(fast), Ok(general)) => {
            panic!("the general path accepts what the fast path rejects ({fast}): {general:?}")
        }
    }
});
