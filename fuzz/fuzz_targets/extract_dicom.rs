//! Arbitrary bytes as a Part-10 stream through `Extractor`: the file meta reader, the fast
//! path, declines handed to the general path, and the general path on its own (implicit VR,
//! big endian, deflated, a data set without file meta). The stream is fed in pieces chosen by
//! the first input byte (two pieces split where it says, or many pieces of its size), then
//! `finish` and `attrs`. Checked:
//!
//! - no panic, whatever the bytes (also `finish` after `feed` failed);
//! - the answer does not depend on how the stream was cut into pieces;
//! - every value reported is the bytes at its offset (little endian, not inflated);
//! - memory: with the limits below, the bytes the extraction holds at any moment stay within a
//!   bound derived from those limits and the input's length ([`ceiling`]). A counting global
//!   allocator aborts at the allocation that crosses it, so the report shows who allocated.
//!   libFuzzer's `-malloc_limit_mb=64 -rss_limit_mb=256` (what `scripts/test.sh` passes for
//!   this target) back that up for allocations outside Rust.
#![no_main]

use kuvasto_engine::dicom::explicit_le::{Progress, ScanLimits};
use kuvasto_engine::dicom::extract::{ExtractError, ExtractPath, Extracted, Extractor, INDEXED};
use kuvasto_engine::dicom::meta::{ts, MetaLimits};
use kuvasto_engine::dicom::Tag;
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

const LIMITS: ScanLimits = ScanLimits {
    buffered_bytes_max: 1 << 20,
    wanted_value_bytes_max: 64 << 10,
    depth_max: 16,
};

/// The most bytes one run may hold live, above what was live before it. Everything the
/// extractor keeps is bounded by the limits: the file meta group (`MetaLimits`, 64 KiB), the
/// retained copy of the data set for a decline and the scanner's unfinished tail or the
/// general path's buffer, and the inflated data set (each at most `buffered_bytes_max`, with
/// up to twice that in `Vec` capacity while growing), plus what is proportional to the input
/// itself (wanted values copied out, once per run of this target and once for the
/// comparison run; a deflated data set is not proportional, it is the `buffered_bytes_max`
/// term).
fn ceiling(input_len: usize) -> usize {
    8 * LIMITS.buffered_bytes_max + 8 * input_len + (256 << 10)
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
    let attrs = found.attrs(&[Tag::new(0x0008, 0x0008), Tag::new(0x0010, 0x0010)]);
    let _ = found.attrs(&[]);
    let _ = (attrs, found.character_sets());
}

fuzz_target!(|input: &[u8]| {
    let Some((&how, stream)) = input.split_first() else {
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
    assert_eq!(streamed, whole, "pieces ({how}) and whole stream disagree");
});
