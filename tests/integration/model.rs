//! Property test: random sequences of put / get / delete / abandon / compact / reopen /
//! crash-at-a-random-byte, streams that span a compaction, and rounds of concurrent puts and
//! streams racing a compaction, against an in-memory model, on the simulated disk.
//!
//! The model keeps, per key, every value the store may legitimately hold: exactly one after an
//! acknowledged write; after a write that failed (the disk "died" mid-way, so the outcome is
//! unknown) the old and the new value. After every reopen each key must hold one of its
//! allowed values, byte for byte: acknowledged writes are never lost, and nothing that was
//! never written (or was abandoned) ever appears.

use kuvasto_engine::io::fault::{FaultPlan, FaultyStorage};
use kuvasto_engine::io::sim::SimStorage;
use kuvasto_engine::io::Storage;
use kuvasto_engine::{CompactOptions, Namespace, Store};
use kuvasto_tests::{content, small_config};
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

const NS: Namespace = Namespace::OBJECT;
/// Bytes written only to fill segments; the model does not track them.
const FILLER: Namespace = Namespace::INTERNAL;
const KEYS: u8 = 6;

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: u8,
        len: usize,
        seed: u64,
    },
    Delete {
        key: u8,
    },
    Get {
        key: u8,
    },
    Abandon {
        key: u8,
        len: usize,
    },
    Compact,
    /// A streaming put that writes half, lets a compaction of every sealed segment run, then
    /// finishes: its chunks in sealed segments must survive the compaction.
    StreamAcrossCompaction {
        key: u8,
        len: usize,
        seed: u64,
    },
    /// Puts and streams to distinct keys on their own threads while another compacts.
    Concurrent {
        first_key: u8,
        writes: Vec<(usize, u64, bool)>,
    },
    /// Clean close and reopen; the next epoch dies after `crash_after_bytes` if set.
    Reopen {
        crash_after_bytes: Option<u64>,
    },
    /// Power cut: unsynced writes survive, vanish or tear at random; then reopen.
    Crash {
        seed: u64,
        crash_after_bytes: Option<u64>,
    },
}

fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..200, 200usize..20_000, 20_000usize..90_000]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let budget = prop_oneof![Just(None), (0u64..400_000).prop_map(Some)];
    prop_oneof![
        6 => (0..KEYS, len_strategy(), any::<u64>()).prop_map(|(key, len, seed)| Op::Put { key, len, seed }),
        2 => (0..KEYS).prop_map(|key| Op::Delete { key }),
        2 => (0..KEYS).prop_map(|key| Op::Get { key }),
        1 => (0..KEYS, len_strategy()).prop_map(|(key, len)| Op::Abandon { key, len }),
        1 => Just(Op::Compact),
        1 => (0..KEYS, 20_000usize..90_000, any::<u64>()).prop_map(|(key, len, seed)| Op::StreamAcrossCompaction { key, len, seed }),
        1 => (0..KEYS, proptest::collection::vec((len_strategy(), any::<u64>(), any::<bool>()), 2..=4))
            .prop_map(|(first_key, writes)| Op::Concurrent { first_key, writes }),
        1 => budget.clone().prop_map(|crash_after_bytes| Op::Reopen { crash_after_bytes }),
        1 => (any::<u64>(), budget).prop_map(|(seed, crash_after_bytes)| Op::Crash { seed, crash_after_bytes }),
    ]
}

type Value = Option<Vec<u8>>;

struct Harness {
    sim: SimStorage,
    /// The fault layer of the current epoch (None when opened without faults).
    faulty: Option<FaultyStorage>,
    store: Option<Store>,
    /// Allowed values per key.
    model: HashMap<u8, Vec<Value>>,
}

impl Harness {
    fn open(&mut self, crash_after_bytes: Option<u64>, seed: u64) {
        let plan = FaultPlan {
            crash_after_bytes,
            short_write_per_mille: 100,
            ..FaultPlan::default()
        };
        let faulty = FaultyStorage::new(Arc::new(self.sim.clone()), plan, seed);
        let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
        self.faulty = Some(faulty);
        let store = Store::open_with(storage, small_config());
        // Opening may itself hit the crash point; then power-cut and open without faults.
        let store = match store {
            Ok(store) => store,
            Err(_) => {
                self.faulty = None;
                self.sim.crash(seed);
                Store::open_with(Arc::new(self.sim.clone()), small_config())
                    .expect("open after crash")
            }
        };
        self.store = Some(store);
        self.check_all_and_collapse();
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("store open")
    }

    fn disk_dead(&self) -> bool {
        self.faulty.as_ref().is_some_and(FaultyStorage::is_dead)
    }

    /// What the store holds for `key`; `None` if the read failed because the simulated
    /// machine died meanwhile (a flusher may still be writing after a put returned an error).
    fn read(&self, key: u8) -> Option<Value> {
        let read = self
            .store()
            .get(NS, &[key])
            .and_then(|object| object.map(|o| o.read_all()).transpose());
        match read {
            Ok(value) => Some(value),
            Err(_) if self.disk_dead() => None,
            Err(e) => panic!("key {key}: read failed on a working disk: {e}"),
        }
    }

    fn allowed(&self, key: u8) -> &[Value] {
        self.model.get(&key).map(Vec::as_slice).unwrap_or(&[None])
    }

    fn check(&self, key: u8) -> Option<Value> {
        let got = self.read(key)?;
        let allowed = self.allowed(key);
        assert!(
            allowed.contains(&got),
            "key {key}: read {:?} bytes, allowed {:?}",
            got.as_ref().map(Vec::len),
            allowed
                .iter()
                .map(|v| v.as_ref().map(Vec::len))
                .collect::<Vec<_>>()
        );
        Some(got)
    }

    fn check_all_and_collapse(&mut self) {
        for key in 0..KEYS {
            if let Some(got) = self.check(key) {
                self.model.insert(key, vec![got]);
            }
        }
    }

    fn settle(&mut self, key: u8, value: Value, acknowledged: bool) {
        let allowed = self.model.entry(key).or_insert_with(|| vec![None]);
        if acknowledged {
            *allowed = vec![value];
        } else if !allowed.contains(&value) {
            allowed.push(value);
        }
    }

    /// Compacts every sealed segment at least `garbage_ratio_min` garbage.
    fn compact(&self, garbage_ratio_min: f64) {
        let result = self.store().compact(&CompactOptions {
            segments: None,
            garbage_ratio_min,
            ..CompactOptions::default()
        });
        self.compaction_outcome(result);
    }

    /// A compaction may fail only when the simulated disk died or an earlier failure
    /// poisoned the store; never on a working one.
    fn compaction_outcome(&self, result: kuvasto_engine::Result<kuvasto_engine::CompactionReport>) {
        if let Err(e) = result {
            assert!(
                self.disk_dead() || self.store().poisoned().is_some(),
                "compaction failed on a working disk: {e}"
            );
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Put { key, len, seed } => {
                let value = content(seed, len);
                let acked = self.store().put(NS, &[key], &value).is_ok();
                self.settle(key, Some(value), acked);
            }
            Op::Delete { key } => match self.store().delete(NS, &[key]) {
                Ok(_) => self.settle(key, None, true),
                Err(_) => self.settle(key, None, false),
            },
            Op::Get { key } => {
                // Reads never fail while the disk works, even after a failed write poisoned
                // the store; once the simulated machine died they cannot succeed.
                self.check(key);
            }
            Op::Abandon { key, len } => {
                if let Ok(mut stream) = self.store().put_stream(NS, &[key]) {
                    let _ = stream.write(&content(7, len));
                    drop(stream);
                }
            }
            Op::Compact => self.compact(0.2),
            Op::StreamAcrossCompaction { key, len, seed } => {
                let value = content(seed, len);
                let acked = match self.store().put_stream(NS, &[key]) {
                    Ok(mut stream) => {
                        let half = len / 2;
                        let first = stream.write(&value[..half]);
                        // Seal the segment holding the first chunks (filler in a namespace the
                        // model does not look at), so that compaction could pick it.
                        for i in 0..40u8 {
                            let _ = self
                                .store()
                                .put(FILLER, &[i], &content(u64::from(i), 15_000));
                        }
                        self.compact(0.0);
                        first
                            .and_then(|()| stream.write(&value[half..]))
                            .and_then(|()| stream.finish())
                            .is_ok()
                    }
                    Err(_) => false,
                };
                self.settle(key, Some(value), acked);
            }
            Op::Concurrent { first_key, writes } => {
                let store = self.store();
                let (outcomes, compacted): (Vec<(u8, Vec<u8>, bool)>, _) =
                    std::thread::scope(|scope| {
                        let compactor = scope.spawn(|| {
                            store.compact(&CompactOptions {
                                garbage_ratio_min: 0.0,
                                ..CompactOptions::default()
                            })
                        });
                        let writers: Vec<_> = writes
                            .iter()
                            .enumerate()
                            .map(|(i, &(len, seed, streamed))| {
                                let key = (first_key + i as u8) % KEYS;
                                scope.spawn(move || {
                                    let value = content(seed, len);
                                    let acked = if streamed {
                                        store.put_stream(NS, &[key]).is_ok_and(|mut stream| {
                                            value
                                                .chunks(7_000)
                                                .try_for_each(|piece| stream.write(piece))
                                                .and_then(|()| stream.finish())
                                                .is_ok()
                                        })
                                    } else {
                                        store.put(NS, &[key], &value).is_ok()
                                    };
                                    (key, value, acked)
                                })
                            })
                            .collect();
                        let outcomes = writers
                            .into_iter()
                            .map(|w| w.join().expect("writer thread"))
                            .collect();
                        let compacted = compactor.join().expect("compactor thread");
                        (outcomes, compacted)
                    });
                self.compaction_outcome(compacted);
                for (key, value, acked) in outcomes {
                    self.settle(key, Some(value), acked);
                }
            }
            Op::Reopen { crash_after_bytes } => {
                self.store = None;
                self.open(crash_after_bytes, 1);
            }
            Op::Crash {
                seed,
                crash_after_bytes,
            } => {
                self.store = None;
                self.sim.crash(seed);
                self.open(crash_after_bytes, seed);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("KUVASTO_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400),
        ..ProptestConfig::default()
    })]

    #[test]
    fn acknowledged_objects_survive_any_sequence_of_crashes(
        first_crash in prop_oneof![Just(None), (0u64..400_000).prop_map(Some)],
        ops in proptest::collection::vec(op_strategy(), 1..40),
    ) {
        let mut harness = Harness {
            sim: SimStorage::new(4096),
            faulty: None,
            store: None,
            model: HashMap::new(),
        };
        harness.open(first_crash, 0);
        for op in ops {
            harness.apply(op);
        }
        // Finally: a power cut with every unsynced write lost or torn, and one more check.
        harness.store = None;
        harness.sim.crash(0xC0FFEE);
        harness.open(None, 2);
        // And the store still takes writes.
        harness.store().put(NS, b"after", b"works").expect("put after recovery");
    }
}
