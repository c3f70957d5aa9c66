//! The child process of the kill -9 test: ingests concurrently until it is killed, appending
//! each acknowledged put or delete to a side file *after* the store acknowledged it.
//!
//! Usage: crash_child DATA_DIR ACK_FILE CYCLE WRITERS

use kuvasto_engine::{Namespace, Store};
use kuvasto_tests::{content, crash_config, crash_object};
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 5,
        "usage: crash_child DATA_DIR ACK_FILE CYCLE WRITERS"
    );
    let store = Arc::new(Store::open(std::path::Path::new(&args[1]), crash_config())?);
    let acks = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args[2])?,
    ));
    let cycle: u64 = args[3].parse()?;
    let writers: u64 = args[4].parse()?;
    let log = |acks: &Mutex<std::fs::File>, line: String| -> anyhow::Result<()> {
        let mut file = acks
            .lock()
            .map_err(|_| anyhow::anyhow!("ack file lock poisoned"))?;
        file.write_all(line.as_bytes())?;
        Ok(())
    };
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (store, acks) = (store.clone(), acks.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                for i in 0u64.. {
                    let key = format!("c{cycle}-w{w}-{i}");
                    let (seed, len) = crash_object(&key);
                    store.put(Namespace::OBJECT, key.as_bytes(), &content(seed, len))?;
                    log(&acks, format!("PUT {key}\n"))?;
                    if i % 7 == 3 {
                        let victim = format!("c{cycle}-w{w}-{}", i - 2);
                        log(&acks, format!("DELETING {victim}\n"))?;
                        store.delete(Namespace::OBJECT, victim.as_bytes())?;
                        log(&acks, format!("DEL {victim}\n"))?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    Ok(())
}
