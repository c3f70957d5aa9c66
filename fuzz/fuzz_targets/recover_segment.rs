//! Arbitrary bytes as the only segment of a store: opening must not panic, and every object
//! it then serves must come back whole with its checksums verified (or a clear error).
#![no_main]

use kuvasto_engine::io::sim::SimStorage;
use kuvasto_engine::io::Storage;
use kuvasto_engine::segment::format::segment_file_name;
use kuvasto_engine::{Namespace, Store, StoreConfig};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|bytes: &[u8]| {
    let name = segment_file_name(1);
    // Alignment 1: the input may have any length.
    let unaligned = SimStorage::new(1);
    let file = unaligned.create(&name).expect("create");
    let _ = file.write_at(bytes, 0);
    file.sync_data().expect("sync");
    drop(file);
    unaligned.sync_dir().expect("sync dir");
    let config = StoreConfig {
        segment_size_bytes_max: 512 * 1024,
        put_buffer_bytes: 16 * 1024,
        batch_bytes_max: 64 * 1024,
        requests_queued_max: 4,
        flushers: 1,
        direct_io: false,
        ..StoreConfig::default()
    };
    let storage: Arc<dyn Storage> = Arc::new(unaligned);
    let Ok(store) = Store::open_with(storage, config) else {
        return;
    };
    // Keys are short in fuzz inputs; try the one-byte keys of every namespace.
    for ns in 1..=5u8 {
        for key in 0..=255u8 {
            if let Ok(Some(object)) = store.get(Namespace(ns), &[key]) {
                if let Ok(data) = object.read_all() {
                    assert_eq!(data.len() as u64, object.len());
                }
            }
        }
    }
    // The store still accepts writes after recovering whatever it was given.
    let _ = store.put(Namespace::OBJECT, b"after", b"bytes");
});
