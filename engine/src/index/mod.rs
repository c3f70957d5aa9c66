//! The locator: which record currently holds each key.
//!
//! For now an in-memory hash map, rebuilt at open from sealed segments' directories and a scan
//! of the unsealed tail. The memory-mapped, per-segment index files that replace it for
//! 10 M+ instances are the next engine issue; the interface stays the same.

pub mod attrs;
pub mod catalog;
pub mod matching;
pub mod run;

use crate::segment::format::{DirEntry, Namespace, RecordKind};
use std::collections::HashMap;

/// Where the newest record of a key is, and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: RecordKind,
    pub seq: u64,
    pub generation: u32,
    pub segment_id: u64,
    pub offset: u64,
    pub object_len: u64,
}

impl Entry {
    pub fn from_dir(segment_id: u64, e: &DirEntry) -> Self {
        Entry {
            kind: e.kind,
            seq: e.seq,
            generation: e.generation,
            segment_id,
            offset: e.offset,
            object_len: e.object_len,
        }
    }

    /// Which of two records of a key wins: the later write, then the later copy.
    pub fn version(&self) -> (u64, u32) {
        (self.seq, self.generation)
    }
}

/// A key in the store.
pub type IndexKey = (Namespace, Box<[u8]>);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Locator {
    entries: HashMap<IndexKey, Entry>,
}

impl Locator {
    /// Records `entry` for `key` unless a newer version is already known. Returns whether it
    /// was applied.
    pub fn apply(&mut self, namespace: Namespace, key: &[u8], entry: Entry) -> bool {
        assert!(
            entry.kind.is_findable(),
            "only findable records enter the locator"
        );
        match self.entries.get_mut(&(namespace, Box::from(key))) {
            Some(existing) if existing.version() >= entry.version() => false,
            Some(existing) => {
                *existing = entry;
                true
            }
            None => {
                self.entries.insert((namespace, Box::from(key)), entry);
                true
            }
        }
    }

    /// Replaces the entry of `key` only if it is still exactly `expected` (compaction's
    /// atomic switch: a newer write that raced with the copy wins).
    pub fn replace_if(
        &mut self,
        namespace: Namespace,
        key: &[u8],
        expected: &Entry,
        new: Entry,
    ) -> bool {
        match self.entries.get_mut(&(namespace, Box::from(key))) {
            Some(existing) if existing == expected => {
                *existing = new;
                true
            }
            _ => false,
        }
    }

    pub fn get(&self, namespace: Namespace, key: &[u8]) -> Option<Entry> {
        self.entries.get(&(namespace, Box::from(key))).copied()
    }

    /// Every key with its entry (tombstones included).
    pub fn iter(&self) -> impl Iterator<Item = (&IndexKey, &Entry)> {
        self.entries.iter()
    }

    /// Keys that currently hold an object (not deleted).
    pub fn live_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.kind != RecordKind::Tombstone)
            .count()
    }

    /// The highest sequence number known.
    pub fn seq_max(&self) -> u64 {
        self.entries.values().map(|e| e.seq).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, generation: u32, kind: RecordKind) -> Entry {
        Entry {
            kind,
            seq,
            generation,
            segment_id: 1,
            offset: 4096,
            object_len: 3,
        }
    }

    #[test]
    fn newer_versions_win_in_any_order() {
        let mut l = Locator::default();
        assert!(l.apply(Namespace::OBJECT, b"k", entry(5, 0, RecordKind::Blob)));
        assert!(!l.apply(Namespace::OBJECT, b"k", entry(4, 9, RecordKind::Tombstone)));
        assert!(l.apply(Namespace::OBJECT, b"k", entry(5, 1, RecordKind::Blob)));
        assert!(l.apply(Namespace::OBJECT, b"k", entry(6, 0, RecordKind::Tombstone)));
        assert_eq!(l.get(Namespace::OBJECT, b"k").map(|e| e.seq), Some(6));
        assert_eq!(l.get(Namespace::METADATA, b"k"), None);
        assert_eq!(l.live_count(), 0);
    }
}
