//! An in-memory disk that models durability, for property tests.
//!
//! Every file keeps two images: what readers see now, and what would survive a power cut.
//! `sync_data` makes a file's image durable; `sync_dir` makes creations, renames and removals
//! durable. [`SimStorage::crash`] then models a power cut: each write since the last sync
//! independently survives whole, vanishes, or survives torn at a random byte, and the
//! directory keeps or loses its unsynced changes. Handles opened before the crash stop working.

use super::{Mapping, Storage, StorageFile};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// A small deterministic generator (SplitMix64): tests replay exactly from a seed.
#[derive(Debug, Clone)]
pub struct DetRng(u64);

impl DetRng {
    pub fn new(seed: u64) -> Self {
        DetRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

enum PendingOp {
    /// `durable`: written with `RWF_DSYNC`: this write (and only this one) survives a cut.
    Write {
        offset: u64,
        bytes: Vec<u8>,
        durable: bool,
    },
    SetLen(u64),
}

#[derive(Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<PendingOp>,
}

fn apply_write(image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(bytes);
}

#[derive(Default)]
struct SimState {
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    inodes: HashMap<u64, Arc<Mutex<Inode>>>,
    next_inode: u64,
    /// Bumped by every crash; handles from an older epoch fail.
    epoch: u64,
}

/// See the module documentation.
#[derive(Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
    alignment_bytes: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn crashed() -> io::Error {
    io::Error::other("simulated machine crashed; handle is stale")
}

impl SimStorage {
    /// A new, empty disk; `alignment_bytes` mimics `O_DIRECT` (1 for none).
    pub fn new(alignment_bytes: usize) -> Self {
        SimStorage {
            state: Arc::default(),
            alignment_bytes: alignment_bytes.max(1),
        }
    }

    /// Models a power cut, choosing the fate of every unsynced change from `seed`.
    pub fn crash(&self, seed: u64) {
        let mut rng = DetRng::new(seed);
        let mut state = lock(&self.state);
        state.epoch += 1;
        if rng.below(2) == 0 {
            state.names = state.durable_names.clone();
        } else {
            state.durable_names = state.names.clone();
        }
        let live: Vec<u64> = state.names.values().copied().collect();
        state.inodes.retain(|id, _| live.contains(id));
        for inode in state.inodes.values() {
            let mut inode = lock(inode);
            let mut image = std::mem::take(&mut inode.durable);
            for op in std::mem::take(&mut inode.pending) {
                match op {
                    PendingOp::Write {
                        offset,
                        bytes,
                        durable: true,
                    } => apply_write(&mut image, offset, &bytes),
                    PendingOp::Write { offset, bytes, .. } => match rng.below(3) {
                        0 => {}
                        1 => apply_write(&mut image, offset, &bytes),
                        _ => {
                            let kept = rng.below(bytes.len() as u64 + 1) as usize;
                            apply_write(&mut image, offset, &bytes[..kept]);
                        }
                    },
                    PendingOp::SetLen(len) => {
                        if rng.below(2) == 0 {
                            image.resize(len as usize, 0);
                        }
                    }
                }
            }
            inode.current = image.clone();
            inode.durable = image;
        }
    }

    /// Bytes of all files, for tests that flip bits on "disk".
    pub fn corrupt(&self, name: &str, offset: u64, xor: u8) -> io::Result<()> {
        let state = lock(&self.state);
        let id = *state
            .names
            .get(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        let inode = state.inodes.get(&id).ok_or_else(crashed)?;
        let mut inode = lock(inode);
        let offset = offset as usize;
        if offset >= inode.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset past end",
            ));
        }
        inode.current[offset] ^= xor;
        if offset < inode.durable.len() {
            inode.durable[offset] ^= xor;
        }
        Ok(())
    }

    fn handle(&self, name: &str, id: u64, epoch: u64) -> io::Result<Box<dyn StorageFile>> {
        let state = lock(&self.state);
        let inode = state.inodes.get(&id).ok_or_else(crashed)?.clone();
        Ok(Box::new(SimFile {
            name: name.to_string(),
            inode,
            storage: self.clone(),
            epoch,
        }))
    }
}

impl Storage for SimStorage {
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let (id, epoch) = {
            let mut state = lock(&self.state);
            if state.names.contains_key(name) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    name.to_string(),
                ));
            }
            state.next_inode += 1;
            let id = state.next_inode;
            state.inodes.insert(id, Arc::default());
            state.names.insert(name.to_string(), id);
            (id, state.epoch)
        };
        self.handle(name, id, epoch)
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let (id, epoch) = {
            let state = lock(&self.state);
            let id = *state
                .names
                .get(name)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
            (id, state.epoch)
        };
        self.handle(name, id, epoch)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.state).names.keys().cloned().collect())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = lock(&self.state);
        let id = state
            .names
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_string()))?;
        state.names.insert(to.to_string(), id);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = lock(&self.state);
        state
            .names
            .remove(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.durable_names = state.names.clone();
        Ok(())
    }

    fn write_alignment_bytes(&self) -> usize {
        self.alignment_bytes
    }
}

struct SimFile {
    name: String,
    inode: Arc<Mutex<Inode>>,
    storage: SimStorage,
    epoch: u64,
}

impl SimFile {
    fn live(&self) -> io::Result<MutexGuard<'_, Inode>> {
        if lock(&self.storage.state).epoch != self.epoch {
            return Err(crashed());
        }
        Ok(lock(&self.inode))
    }

    fn check_alignment(&self, len: usize, offset: u64) -> io::Result<()> {
        let align = self.storage.alignment_bytes;
        if align > 1 && (len % align != 0 || offset % align as u64 != 0) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.live()?.current.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let inode = self.live()?;
        let start = offset as usize;
        let end = start.saturating_add(buf.len());
        if end > inode.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end",
            ));
        }
        buf.copy_from_slice(&inode.current[start..end]);
        Ok(())
    }

    fn map(&self) -> io::Result<Mapping> {
        let bytes = self.live()?.current.clone();
        Ok(Mapping::new(Arc::new(bytes)))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.check_alignment(buf.len(), offset)?;
        let mut inode = self.live()?;
        apply_write(&mut inode.current, offset, buf);
        inode.pending.push(PendingOp::Write {
            offset,
            bytes: buf.to_vec(),
            durable: false,
        });
        Ok(buf.len())
    }

    /// With `sync`, as `RWF_DSYNC`: this write alone becomes durable (earlier unsynced writes
    /// of the file stay as they were), which is what the kernel promises and no more.
    fn begin_write(&self, buf: super::AlignedBuf, offset: u64, sync: bool) -> super::PendingWrite {
        let result = (|| {
            self.check_alignment(buf.len(), offset)?;
            let mut inode = self.live()?;
            apply_write(&mut inode.current, offset, &buf);
            inode.pending.push(PendingOp::Write {
                offset,
                bytes: buf.to_vec(),
                durable: sync,
            });
            Ok(())
        })();
        super::PendingWrite::ready(buf, result)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut inode = self.live()?;
        inode.durable = inode.current.clone();
        inode.pending.clear();
        Ok(())
    }

    fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        let mut inode = self.live()?;
        if (inode.current.len() as u64) < len_bytes {
            inode.current.resize(len_bytes as usize, 0);
            inode.pending.push(PendingOp::SetLen(len_bytes));
        }
        Ok(())
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        let mut inode = self.live()?;
        inode.current.resize(len_bytes as usize, 0);
        inode.pending.push(PendingOp::SetLen(len_bytes));
        Ok(())
    }
}
