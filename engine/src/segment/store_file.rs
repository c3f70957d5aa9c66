//! `store.kvm`: one page of store-wide facts that opening needs from the run before it
//! (`docs/format.md` section 2):
//!
//! - the **torn window** of that run: how far past its durable end the writer could have had
//!   bytes in flight at a crash, so that recovery tells a torn tail (cut) from corruption
//!   (reported, every record after it kept) with the window that run really had, not a
//!   compile-time maximum;
//! - the **segment id floor**: ids below it may have been used. Ids are reserved in blocks
//!   before use, so an id is never handed out twice even when the newest segment file was
//!   removed (by compaction) before a restart.
//!
//! Written whole through a temporary file: write, fdatasync, rename, fsync the directory.

use crate::error::{Error, Result};
use crate::io::{AlignedBuf, Storage};
use crc32fast::Hasher;

/// The file's name in the data directory.
pub const STORE_FILE_NAME: &str = "store.kvm";
const TEMP_NAME: &str = "store.kvm.tmp";
const MAGIC: &[u8; 8] = b"KUVASTOR";
const VERSION: u32 = 1;
/// Bytes that carry fields; the rest of the page is zero.
const ENCODED_BYTES: usize = 64;
const PAGE_BYTES: usize = 4096;

/// What `store.kvm` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreFile {
    /// Bytes past its durable end that the run writing now may have in flight.
    pub torn_window_bytes: u64,
    /// No segment id below this is handed out again.
    pub segment_id_floor: u64,
}

fn checksum(bytes: &[u8]) -> u32 {
    let mut hasher = Hasher::new_with_initial(crc32fast::hash(MAGIC));
    hasher.update(bytes);
    hasher.finalize()
}

impl StoreFile {
    fn encode(&self, out: &mut [u8]) {
        out[..ENCODED_BYTES].fill(0);
        out[0..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.torn_window_bytes.to_le_bytes());
        out[24..32].copy_from_slice(&self.segment_id_floor.to_le_bytes());
        let crc = checksum(&out[..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> std::result::Result<StoreFile, String> {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if &bytes[0..8] != MAGIC {
            return Err("no store file magic".into());
        }
        let crc = u32::from_le_bytes([bytes[60], bytes[61], bytes[62], bytes[63]]);
        if crc != checksum(&bytes[..60]) {
            return Err("store file checksum mismatch".into());
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != VERSION {
            return Err(format!(
                "store file version {version}, this build reads {VERSION}"
            ));
        }
        Ok(StoreFile {
            torn_window_bytes: u64_at(16),
            segment_id_floor: u64_at(24),
        })
    }

    /// The file as the previous run left it: `Ok(None)` when there is none (a new store, or
    /// one written before the file existed), `Err(reason)` when it is damaged.
    pub fn read(storage: &dyn Storage) -> Result<std::result::Result<Option<StoreFile>, String>> {
        let names = storage
            .list()
            .map_err(|e| Error::io("list", "data directory", e))?;
        if names.iter().any(|n| n == TEMP_NAME) {
            storage
                .remove(TEMP_NAME)
                .map_err(|e| Error::io("remove", TEMP_NAME, e))?;
        }
        if !names.iter().any(|n| n == STORE_FILE_NAME) {
            return Ok(Ok(None));
        }
        let file = storage
            .open(STORE_FILE_NAME)
            .map_err(|e| Error::io("open", STORE_FILE_NAME, e))?;
        let mut bytes = [0u8; ENCODED_BYTES];
        if file.read_exact_at(&mut bytes, 0).is_err() {
            return Ok(Err("store file shorter than its fields".into()));
        }
        Ok(StoreFile::decode(&bytes).map(Some))
    }

    /// Replaces the file, durably (the new contents or the old, whatever the crash).
    pub fn write(&self, storage: &dyn Storage) -> Result<()> {
        let file = storage
            .create(TEMP_NAME)
            .map_err(|e| Error::io("create", TEMP_NAME, e))?;
        let mut page = AlignedBuf::with_capacity(PAGE_BYTES);
        page.set_len(PAGE_BYTES);
        page[..].fill(0);
        self.encode(&mut page[..]);
        let (_, written) = file.begin_write(page, 0, false).wait();
        written.map_err(|e| Error::io("write", TEMP_NAME, e))?;
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", TEMP_NAME, e))?;
        drop(file);
        storage
            .rename(TEMP_NAME, STORE_FILE_NAME)
            .map_err(|e| Error::io("rename", STORE_FILE_NAME, e))?;
        storage
            .sync_dir()
            .map_err(|e| Error::io("fsync directory", STORE_FILE_NAME, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sim::SimStorage;

    #[test]
    fn written_then_read_back_and_damage_is_told() {
        let sim = SimStorage::new(4096);
        assert_eq!(StoreFile::read(&sim).expect("read"), Ok(None));
        let file = StoreFile {
            torn_window_bytes: 58 << 20,
            segment_id_floor: 300,
        };
        file.write(&sim).expect("write");
        assert_eq!(StoreFile::read(&sim).expect("read"), Ok(Some(file)));
        sim.corrupt(STORE_FILE_NAME, 20, 1).expect("flip");
        assert!(StoreFile::read(&sim).expect("read").is_err());
    }
}
