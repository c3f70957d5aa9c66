//! Helpers shared by Kuvasto's integration tests and the crash-test child process.

use kuvasto_engine::StoreConfig;

/// Deterministic pseudo-random bytes: object `seed` of `len` bytes is always the same, so a
/// test (or a process restarted after kill -9) can check content without keeping it.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A configuration with tiny segments and buffers, so that tests cross every boundary
/// (chunks, batches, segments) with little data.
pub fn small_config() -> StoreConfig {
    StoreConfig {
        segment_size_bytes_max: 512 * 1024,
        put_buffer_bytes: 16 * 1024,
        batch_bytes_max: 64 * 1024,
        requests_queued_max: 16,
        flushers: 2,
        direct_io: true,
        ..StoreConfig::default()
    }
}

/// Configuration shared by the kill -9 child and the test that checks its work: small enough
/// that a few seconds of ingest seal several segments.
pub fn crash_config() -> StoreConfig {
    StoreConfig {
        segment_size_bytes_max: 4 * 1024 * 1024,
        put_buffer_bytes: 64 * 1024,
        batch_bytes_max: 512 * 1024,
        requests_queued_max: 64,
        flushers: 4,
        direct_io: true,
        ..StoreConfig::default()
    }
}

/// Seed and length of the object stored under `key` by the crash child: derived from the key
/// alone, so any object found later can be checked.
pub fn crash_object(key: &str) -> (u64, usize) {
    let seed = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let len = match seed % 10 {
        0..=5 => 200 + (seed >> 8) as usize % 4_000,
        6..=8 => 20_000 + (seed >> 8) as usize % 180_000,
        _ => 300_000 + (seed >> 8) as usize % 500_000,
    };
    (seed, len)
}
