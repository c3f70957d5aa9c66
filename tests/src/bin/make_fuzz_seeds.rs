//! Writes real segment files (sealed and unsealed, with blobs, chunks, manifests, tombstones)
//! into a directory, as seeds for the fuzzers. Usage: make_fuzz_seeds DIR

use kuvasto_engine::io::sim::SimStorage;
use kuvasto_engine::io::Storage;
use kuvasto_engine::{Namespace, Store, StoreConfig};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: make_fuzz_seeds DIR"))?;
    std::fs::create_dir_all(&out)?;
    let sim = SimStorage::new(1);
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let config = StoreConfig {
        segment_size_bytes_max: 64 * 1024,
        put_buffer_bytes: 4096,
        batch_bytes_max: 8192,
        requests_queued_max: 4,
        flushers: 1,
        direct_io: false,
        ..StoreConfig::default()
    };
    let store = Store::open_with(storage.clone(), config)?;
    for i in 0..40u8 {
        let body = kuvasto_tests::content(u64::from(i), 100 + usize::from(i) * 300);
        store.put(Namespace::OBJECT, &[i], &body)?;
        if i % 5 == 0 {
            store.delete(Namespace::OBJECT, &[i / 2])?;
        }
        if i % 7 == 0 {
            store.put(Namespace::METADATA, &[i], b"metadata")?;
        }
    }
    drop(store);
    for name in storage.list()? {
        let bytes = storage.open(&name)?.map()?;
        std::fs::write(std::path::Path::new(&out).join(&name), &*bytes)?;
    }
    Ok(())
}
