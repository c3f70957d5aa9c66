//! Arbitrary bytes as a Part-10 stream through `Extractor`: the file meta reader, the fast
//! path, declines handed to the general path, and the general path on its own (implicit VR,
//! big endian, deflated, a data set without file meta). The stream (the whole input, so
//! pydicom's sample files serve as seeds as they are) is fed in pieces chosen by its first
//! byte (two pieces split where it says, or many pieces of its size), then `finish` and
//! `attrs`. Checked:
//!
//! - no panic, whatever the bytes (also `finish` after `feed` failed);
//! - the answer does not depend on how the stream was cut into pieces: accepted or refused,
//!   the same attributes, the same kind of error;
//! - every value reported is the bytes at its offset (little endian, not inflated);
//! - memory: with the limits below, the bytes the extraction holds at any moment stay within a
//!   bound derived from those limits and the input's length ([`ceiling`]). A counting global
//!   allocator aborts at the allocation that crosses it, so the report shows who allocated.
//!   libFuzzer's `-malloc_limit_mb=64 -rss_limit_mb=256` (what `scripts/test.sh` passes for
//!   this target) back that up for allocations outside Rust.
#![no_main]

use kuvasto_engine::dicom::explicit_le::{Progress, ScanError, ScanLimits};
use kuvasto_engine::dicom::extract::{ExtractError, ExtractPath, Extracted, Extractor, INDEXED};
use kuvasto_engine::dicom::meta::{ts, MetaError, MetaLimits};
use kuvasto_engine::dicom::Tag;
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

const LIMITS: ScanLimits = ScanLimits {
    buffered_bytes_max: 1 << 20,
    wanted_value_bytes_max: 64 << 10,
    depth_max: 16,
};

/// The most bytes one run may hold live, above what was live before it. What the extractor
/// holds is either proportional to the bytes it was given (the file meta group; the retained
/// copy of the data set for a decline and the scanner's unfinished tail, or the general
/// path's buffer; the wanted values — with up to twice each in `Vec` capacity, and this
/// target keeps the first run's answer during the second) or capped by `buffered_bytes_max`
/// whatever the input (a deflated data set inflates to at most that). Measured over the
/// seeds and 60 s of fuzzing: at most 1.08 MiB above four times the input, all of it the
/// inflated data set of a deflate bomb.
fn ceiling(input_len: usize) -> usize {
    2 * LIMITS.buffered_bytes_max + 8 * input_len + (256 << 10)
}

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static CEILING: AtomicUsize = AtomicUsize::new(usize::MAX);

fn charge(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    let ceiling = CEILING.load(Relaxed);
    if live > ceiling {
        // Lift the ceiling first: printing may allocate.
        CEILING.store(usize::MAX, Relaxed);
        eprintln!("memory bound crossed: {live} bytes live, the ceiling is {ceiling}");
        std::process::abort();
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counted here.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            charge(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            charge(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                charge(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// AddressSanitizer keeps freed memory in quarantine (256 MB by default) to catch uses after
/// free; under `-rss_limit_mb=256` that bookkeeping alone would be reported as this target's
/// out-of-memory. A smaller quarantine keeps the limit about the extractor's memory (which
/// [`Counting`] bounds far more tightly anyway).
#[no_mangle]
pub extern "C" fn __asan_default_options() -> *const std::ffi::c_char {
    c"quarantine_size_mb=16".as_ptr()
}

/// Feeds `pieces` until Pixel Data or an error, then finishes (after an error too: it must
/// not panic, and its answer is the first error).
fn extract<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Result<Extracted, ExtractError> {
    let mut extractor = Extractor::new(MetaLimits::default(), LIMITS);
    for piece in pieces {
        match extractor.feed(piece) {
            Ok(Progress::NeedMore) => {}
            Ok(Progress::PixelData(_)) => break,
            Err(error) => {
                let _ = extractor.finish();
                return Err(error);
            }
        }
    }
    extractor.finish()
}

/// The kind of an error; where exactly the stream was found wrong may depend on the pieces
/// (the message names what the path that ran saw first).
fn kind(error: &ExtractError) -> &'static str {
    match error {
        ExtractError::Meta(MetaError::NotDicom(_)) => "not DICOM",
        ExtractError::Meta(MetaError::Malformed { .. }) => "file meta malformed",
        ExtractError::Meta(MetaError::Limit { .. }) => "file meta limit",
        ExtractError::Scan(ScanError::Decline { .. }) => "decline",
        ExtractError::Scan(ScanError::Malformed { .. }) => "malformed",
        ExtractError::Scan(ScanError::Limit { .. }) => "limit",
    }
}

fn check(stream: &[u8], found: &Extracted) {
    let data_set = &found.data_set;
    let uid = found.meta.transfer_syntax_uid.trim_end_matches(['\0', ' ']);
    let inflated = matches!(found.path, ExtractPath::General { inflated: true, .. });
    assert!(found.meta.data_set_offset as usize <= stream.len());
    for element in &data_set.elements {
        assert!(INDEXED.contains(&element.tag), "{} not wanted", element.tag);
        let value = data_set.value(element);
        assert!(value.len() <= LIMITS.wanted_value_bytes_max as usize);
        if !inflated && uid != ts::EXPLICIT_VR_BE {
            let start = element.value_offset as usize;
            assert_eq!(stream.get(start..start + value.len()), Some(value));
        }
    }
    if let Some(pixel) = data_set.pixel_data {
        assert!(pixel.element_offset < pixel.value_offset);
        assert!(inflated || pixel.value_offset as usize <= stream.len());
    }
    // Decoding never panics, whatever the character set and values.
    let _ = found.attrs(&[]);
    let _ = found.attrs(&[Tag::new(0x0008, 0x0008), Tag::new(0x0010, 0x0010)]);
    let _ = found.character_sets();
}

fuzz_target!(|input: &[u8]| {
    // The first byte is part of the stream too (a preamble byte, in a Part-10 file).
    let stream = input;
    let Some(&how) = stream.first() else {
        return;
    };
    let baseline = LIVE.load(Relaxed);
    CEILING.store(baseline.saturating_add(ceiling(stream.len())), Relaxed);
    let streamed = if how < 0x80 {
        let split = usize::from(how) * stream.len() / 0x7F;
        let (a, b) = stream.split_at(split.min(stream.len()));
        extract([a, b].into_iter())
    } else {
        extract(stream.chunks(usize::from(how) - 0x7F))
    };
    if let Ok(found) = &streamed {
        check(stream, found);
    }
    let whole = extract(std::iter::once(stream));
    CEILING.store(usize::MAX, Relaxed);
    match (&streamed, &whole) {
        (Ok(streamed), Ok(whole)) => assert_eq!(streamed, whole, "pieces ({how}) and whole"),
        (Err(a), Err(b)) => assert_eq!(kind(a), kind(b), "pieces ({how}): {a}; whole: {b}"),
        _ => panic!("pieces ({how}) and whole stream disagree: {streamed:?}; {whole:?}"),
    }
});
