//! Deterministic fault injection over any [`Storage`].
//!
//! A [`FaultPlan`] says which faults to inject; a seed drives every random choice, so a failing
//! test replays exactly. Faults: short writes (the engine must continue them), ENOSPC on writes
//! and on preallocation, a failed `fdatasync`, and a crash point: the write that crosses a byte
//! budget is torn (only a prefix reaches the file) and every later call fails, as if the machine
//! had died there.

use super::sim::DetRng;
use super::{Mapping, Storage, StorageFile};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Which faults to inject. The default injects none.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// Writes fail with ENOSPC (writing nothing) once this many bytes have been written.
    pub enospc_after_bytes: Option<u64>,
    /// `allocate` fails with ENOSPC from this call on (0-based count).
    pub enospc_on_allocate_from: Option<u64>,
    /// This `sync_data` call (0-based count) fails with EIO.
    pub fail_sync_at: Option<u64>,
    /// Per mille of writes that are cut short at a random aligned length.
    pub short_write_per_mille: u32,
    /// The write that crosses this many written bytes is torn, and the storage then "dies":
    /// every later call fails with EIO.
    pub crash_after_bytes: Option<u64>,
}

struct FaultState {
    plan: FaultPlan,
    rng: DetRng,
    written_bytes: u64,
    syncs: u64,
    allocates: u64,
    dead: bool,
    injected: Vec<String>,
}

/// See the module documentation.
#[derive(Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    state: Arc<Mutex<FaultState>>,
}

fn lock(m: &Mutex<FaultState>) -> MutexGuard<'_, FaultState> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn dead() -> io::Error {
    io::Error::other("injected crash: storage is gone")
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn Storage>, plan: FaultPlan, seed: u64) -> Self {
        FaultyStorage {
            inner,
            state: Arc::new(Mutex::new(FaultState {
                plan,
                rng: DetRng::new(seed),
                written_bytes: 0,
                syncs: 0,
                allocates: 0,
                dead: false,
                injected: Vec::new(),
            })),
        }
    }

    /// Descriptions of the faults injected so far.
    pub fn injected(&self) -> Vec<String> {
        lock(&self.state).injected.clone()
    }

    /// Replaces the plan (counters keep running), e.g. to heal the disk after ENOSPC.
    pub fn set_plan(&self, plan: FaultPlan) {
        lock(&self.state).plan = plan;
    }

    /// Whether the crash point was reached.
    /// Makes the next `sync_data` call fail with EIO (and only that one).
    pub fn fail_next_sync(&self) {
        let mut state = lock(&self.state);
        state.plan.fail_sync_at = Some(state.syncs);
    }

    pub fn is_dead(&self) -> bool {
        lock(&self.state).dead
    }

    fn check_alive(&self) -> io::Result<()> {
        if lock(&self.state).dead {
            Err(dead())
        } else {
            Ok(())
        }
    }
}

impl Storage for FaultyStorage {
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.check_alive()?;
        let file = self.inner.create(name)?;
        Ok(Box::new(FaultyFile {
            inner: file,
            storage: self.clone(),
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.check_alive()?;
        let file = self.inner.open(name)?;
        Ok(Box::new(FaultyFile {
            inner: file,
            storage: self.clone(),
        }))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.check_alive()?;
        self.inner.list()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.check_alive()?;
        self.inner.rename(from, to)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.check_alive()?;
        self.inner.remove(name)
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.check_alive()?;
        self.inner.sync_dir()
    }

    fn write_alignment_bytes(&self) -> usize {
        self.inner.write_alignment_bytes()
    }
}

struct FaultyFile {
    inner: Box<dyn StorageFile>,
    storage: FaultyStorage,
}

impl StorageFile for FaultyFile {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn len(&self) -> io::Result<u64> {
        self.storage.check_alive()?;
        self.inner.len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.storage.check_alive()?;
        self.inner.read_exact_at(buf, offset)
    }

    fn map(&self) -> io::Result<Mapping> {
        self.storage.check_alive()?;
        self.inner.map()
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let align = self.storage.inner.write_alignment_bytes().max(1);
        let mut state = lock(&self.storage.state);
        if state.dead {
            return Err(dead());
        }
        let len = buf.len() as u64;
        if let Some(limit) = state.plan.crash_after_bytes {
            if state.written_bytes + len > limit {
                let torn = ((limit - state.written_bytes.min(limit)) as usize / align) * align;
                state.dead = true;
                state.injected.push(format!(
                    "crash: write of {len} bytes at {offset} of {} torn after {torn} bytes",
                    self.inner.name()
                ));
                drop(state);
                if torn > 0 {
                    let _ = self.inner.write_at(&buf[..torn], offset);
                }
                return Err(dead());
            }
        }
        if let Some(limit) = state.plan.enospc_after_bytes {
            if state.written_bytes + len > limit {
                state.injected.push(format!(
                    "ENOSPC: write of {len} bytes at {offset} of {}",
                    self.inner.name()
                ));
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        let mut count = buf.len();
        let per_mille = u64::from(state.plan.short_write_per_mille);
        if per_mille > 0 && state.rng.below(1000) < per_mille && buf.len() > align {
            let cut = (state.rng.below(buf.len() as u64) as usize / align) * align;
            if cut > 0 {
                count = cut;
                state.injected.push(format!(
                    "short write: {cut} of {len} bytes at {offset} of {}",
                    self.inner.name()
                ));
            }
        }
        state.written_bytes += count as u64;
        drop(state);
        self.inner.write_at(&buf[..count], offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = lock(&self.storage.state);
        if state.dead {
            return Err(dead());
        }
        let n = state.syncs;
        state.syncs += 1;
        if state.plan.fail_sync_at == Some(n) {
            state.injected.push(format!(
                "fsync #{n} of {} failed with EIO",
                self.inner.name()
            ));
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        drop(state);
        self.inner.sync_data()
    }

    fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        let mut state = lock(&self.storage.state);
        if state.dead {
            return Err(dead());
        }
        let n = state.allocates;
        state.allocates += 1;
        if state
            .plan
            .enospc_on_allocate_from
            .is_some_and(|from| n >= from)
        {
            state.injected.push(format!(
                "ENOSPC: allocate {len_bytes} bytes for {}",
                self.inner.name()
            ));
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        drop(state);
        self.inner.allocate(len_bytes)
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.storage.check_alive()?;
        self.inner.set_len(len_bytes)
    }
}
