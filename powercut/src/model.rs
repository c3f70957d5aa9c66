//! The file system itself, in memory, and its durability model: no FUSE here, so every rule
//! is unit-tested directly.
//!
//! Every regular file holds its volatile image (what readers see now) and, in order, the
//! operations since its last `fsync`: writes and size changes, each with what it overwrote
//! (an undo record), so the durable image is the volatile one with the pending operations
//! undone in reverse, and no second copy of a file is kept while it is being written. Every
//! directory holds its volatile entries and, while it has unsynced changes (creations,
//! renames, removals), its durable entries and the changes since, in order.
//!
//! [`Model::cut`] models a power cut: from the durable images, each pending write survives
//! whole, vanishes, or survives torn (a prefix cut at a random byte, or a random subset of its
//! 512-byte sectors), each size change survives or not, independently of the operations
//! before it (so a later write may survive an earlier one that vanished); each directory
//! keeps all, none or a prefix of its unsynced changes. What is no longer reachable from the
//! root is gone. Afterwards the volatile state equals the new durable state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_INO: u64 = 1;
/// The sector size torn writes are sometimes cut at.
pub const SECTOR_BYTES: u64 = 512;
/// Largest file the model accepts (`EFBIG` beyond).
pub const FILE_BYTES_MAX: u64 = 4 << 30;

/// An `errno` value: what a file system operation answers instead of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("errno {0}")]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
}

/// What an operation returns.
pub type FsResult<T> = Result<T, Errno>;

/// SplitMix64, the engine's simulated disk's generator: a cut replays exactly from its seed
/// (given the same pending operations).
pub use kuvasto_engine::io::sim::DetRng as Rng;

/// How a cut treats what was not made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CutPolicy {
    /// Every pending change independently survives, vanishes or is torn (the default).
    #[default]
    Random,
    /// Nothing unsynced survives: the strictest cut.
    LoseAll,
    /// Everything written survives: a cut that only drops the kernel's caches.
    KeepAll,
}

impl FromStr for CutPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(CutPolicy::Random),
            "lose" => Ok(CutPolicy::LoseAll),
            "keep" => Ok(CutPolicy::KeepAll),
            other => Err(format!("unknown cut policy {other:?} (random, lose, keep)")),
        }
    }
}

impl fmt::Display for CutPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CutPolicy::Random => "random",
            CutPolicy::LoseAll => "lose",
            CutPolicy::KeepAll => "keep",
        })
    }
}

/// Regular file or directory (the only kinds the model has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// An inode's attributes, as `getattr` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: Vec<u8>,
}

/// `statfs` figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub inodes: u64,
}

/// Counters over the model's life, and what is pending now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Write operations seen (FUSE_WRITE).
    pub writes: u64,
    /// Bytes they carried.
    pub write_bytes: u64,
    /// File syncs (FUSE_FSYNC, with or without datasync).
    pub fsyncs: u64,
    /// Directory syncs (FUSE_FSYNCDIR).
    pub fsyncdirs: u64,
    /// Power cuts so far.
    pub cuts: u64,
    /// Pending (unsynced) file operations now.
    pub pending_ops: u64,
    /// Bytes of pending writes now.
    pub pending_bytes: u64,
    /// Unsynced directory changes now.
    pub pending_dir_changes: u64,
    /// Regular files now (including unlinked ones still open).
    pub files: u64,
    /// Bytes of all files' volatile images now.
    pub bytes: u64,
}

/// What one cut did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    pub seed: u64,
    pub writes_kept: u64,
    pub writes_lost: u64,
    pub writes_torn: u64,
    pub sizes_kept: u64,
    pub sizes_lost: u64,
    pub dir_changes_kept: u64,
    pub dir_changes_lost: u64,
    /// Files no longer reachable after the cut (never made durable by name, or unlinked).
    pub files_dropped: u64,
}

/// Writes `key=value` pairs separated by spaces (the control protocol's reply format).
fn write_pairs(f: &mut fmt::Formatter<'_>, pairs: &[(&str, u64)]) -> fmt::Result {
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            f.write_str(" ")?;
        }
        write!(f, "{key}={value}")?;
    }
    Ok(())
}

/// Parses `key=value` pairs; unknown keys are an error, missing keys stay 0.
fn parse_pairs(s: &str, mut set: impl FnMut(&str, u64) -> bool) -> Result<(), String> {
    for pair in s.split_whitespace() {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("not key=value: {pair:?}"))?;
        let value: u64 = value
            .parse()
            .map_err(|_| format!("not a number: {pair:?}"))?;
        if !set(key, value) {
            return Err(format!("unknown key {key:?}"));
        }
    }
    Ok(())
}

macro_rules! pairs_format {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_pairs(f, &[$((stringify!($field), self.$field)),*])
            }
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let mut out = $ty::default();
                parse_pairs(s, |key, value| match key {
                    $(stringify!($field) => {
                        out.$field = value;
                        true
                    })*
                    _ => false,
                })?;
                Ok(out)
            }
        }
    };
}

pairs_format!(Stats {
    writes,
    write_bytes,
    fsyncs,
    fsyncdirs,
    cuts,
    pending_ops,
    pending_bytes,
    pending_dir_changes,
    files,
    bytes,
});

pairs_format!(CutReport {
    seed,
    writes_kept,
    writes_lost,
    writes_torn,
    sizes_kept,
    sizes_lost,
    dir_changes_kept,
    dir_changes_lost,
    files_dropped,
});

/// A pending file operation with its undo record.
#[derive(Debug)]
enum FileOp {
    Write {
        offset: u64,
        bytes: Vec<u8>,
        /// The length before the write, and the bytes it overwrote inside that length.
        old_len: u64,
        old_bytes: Vec<u8>,
    },
    SetLen {
        len: u64,
        old_len: u64,
        /// Bytes a shrink cut off.
        cut_bytes: Vec<u8>,
    },
}

#[derive(Debug, Default)]
struct FileData {
    image: Vec<u8>,
    pending: Vec<FileOp>,
    pending_bytes: u64,
}

/// Writes `bytes` at `offset` into `image`, growing it with zeros as needed.
fn apply_write(image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(bytes);
}

impl FileData {
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let old_len = self.image.len() as u64;
        let overlap_end = (offset + bytes.len() as u64).min(old_len);
        let old_bytes = if offset < overlap_end {
            self.image[offset as usize..overlap_end as usize].to_vec()
        } else {
            Vec::new()
        };
        apply_write(&mut self.image, offset, bytes);
        self.pending_bytes += bytes.len() as u64;
        self.pending.push(FileOp::Write {
            offset,
            bytes: bytes.to_vec(),
            old_len,
            old_bytes,
        });
    }

    fn set_len(&mut self, len: u64) {
        let old_len = self.image.len() as u64;
        if len == old_len {
            return;
        }
        let cut_bytes = if len < old_len {
            self.image[len as usize..].to_vec()
        } else {
            Vec::new()
        };
        self.image.resize(len as usize, 0);
        self.pending.push(FileOp::SetLen {
            len,
            old_len,
            cut_bytes,
        });
    }

    fn sync(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// The durable image: the volatile one with every pending operation undone.
    fn durable_image(&self) -> Vec<u8> {
        let mut image = self.image.clone();
        undo_all(&mut image, &self.pending);
        image
    }

    fn cut(&mut self, rng: &mut Rng, policy: CutPolicy, report: &mut CutReport) {
        if self.pending.is_empty() {
            return;
        }
        let mut image = std::mem::take(&mut self.image);
        undo_all(&mut image, &self.pending);
        for op in std::mem::take(&mut self.pending) {
            match op {
                FileOp::Write { offset, bytes, .. } => {
                    let fate = match policy {
                        CutPolicy::Random => rng.below(4),
                        CutPolicy::LoseAll => 0,
                        CutPolicy::KeepAll => 1,
                    };
                    match fate {
                        0 => report.writes_lost += 1,
                        1 => {
                            apply_write(&mut image, offset, &bytes);
                            report.writes_kept += 1;
                        }
                        2 => {
                            // Torn at a byte: a prefix survives.
                            let kept = rng.below(bytes.len() as u64 + 1) as usize;
                            apply_write(&mut image, offset, &bytes[..kept]);
                            count_torn(report, kept, bytes.len());
                        }
                        _ => {
                            // Torn at sectors: each 512-byte sector of the write (aligned
                            // to the file) survives or not, in any order.
                            let mut kept_bytes = 0usize;
                            let mut at = offset;
                            let end = offset + bytes.len() as u64;
                            while at < end {
                                let sector_end = ((at / SECTOR_BYTES) + 1) * SECTOR_BYTES;
                                let piece_end = sector_end.min(end);
                                if rng.below(2) == 0 {
                                    let from = (at - offset) as usize;
                                    let to = (piece_end - offset) as usize;
                                    apply_write(&mut image, at, &bytes[from..to]);
                                    kept_bytes += to - from;
                                }
                                at = piece_end;
                            }
                            count_torn(report, kept_bytes, bytes.len());
                        }
                    }
                }
                FileOp::SetLen { len, .. } => {
                    let keep = match policy {
                        CutPolicy::Random => rng.below(2) == 0,
                        CutPolicy::LoseAll => false,
                        CutPolicy::KeepAll => true,
                    };
                    if keep {
                        image.resize(len as usize, 0);
                        report.sizes_kept += 1;
                    } else {
                        report.sizes_lost += 1;
                    }
                }
            }
        }
        self.image = image;
        self.pending_bytes = 0;
    }
}

fn count_torn(report: &mut CutReport, kept: usize, len: usize) {
    if kept == 0 {
        report.writes_lost += 1;
    } else if kept == len {
        report.writes_kept += 1;
    } else {
        report.writes_torn += 1;
    }
}

fn undo_all(image: &mut Vec<u8>, pending: &[FileOp]) {
    for op in pending.iter().rev() {
        match op {
            FileOp::Write {
                offset,
                old_len,
                old_bytes,
                ..
            } => {
                // Reverse order: `image` is exactly the state right after this write.
                image.resize(*old_len as usize, 0);
                if !old_bytes.is_empty() {
                    apply_write(image, *offset, old_bytes);
                }
            }
            FileOp::SetLen {
                len,
                old_len,
                cut_bytes,
            } => {
                image.resize(*old_len as usize, 0);
                if !cut_bytes.is_empty() {
                    apply_write(image, *len, cut_bytes);
                }
            }
        }
    }
}

/// A pending directory change.
#[derive(Debug, Clone)]
enum DirOp {
    /// A name now points at `ino` (creation, or the target side of a rename across
    /// directories), replacing what it pointed at.
    Insert { name: Vec<u8>, ino: u64 },
    /// A name is gone (unlink, rmdir, or the source side of a rename across directories).
    Remove { name: Vec<u8> },
    /// A rename within this directory, replacing the target: atomic, as on a journaling
    /// file system.
    Rename { from: Vec<u8>, to: Vec<u8> },
}

impl DirOp {
    fn apply(&self, entries: &mut BTreeMap<Vec<u8>, u64>) {
        match self {
            DirOp::Insert { name, ino } => {
                entries.insert(name.clone(), *ino);
            }
            DirOp::Remove { name } => {
                entries.remove(name);
            }
            DirOp::Rename { from, to } => {
                if let Some(ino) = entries.remove(from) {
                    entries.insert(to.clone(), ino);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct DirData {
    entries: BTreeMap<Vec<u8>, u64>,
    /// The entries as of the last fsyncdir; `None` while nothing is pending.
    durable: Option<BTreeMap<Vec<u8>, u64>>,
    pending: Vec<DirOp>,
    parent: u64,
}

impl DirData {
    fn change(&mut self, op: DirOp) {
        if self.durable.is_none() {
            self.durable = Some(self.entries.clone());
        }
        op.apply(&mut self.entries);
        self.pending.push(op);
    }

    fn sync(&mut self) {
        self.durable = None;
        self.pending.clear();
    }

    fn references_durably(&self, ino: u64) -> bool {
        self.durable
            .as_ref()
            .is_some_and(|d| d.values().any(|&i| i == ino))
    }

    fn cut(&mut self, rng: &mut Rng, policy: CutPolicy, report: &mut CutReport) {
        let Some(mut entries) = self.durable.take() else {
            return;
        };
        let n = self.pending.len() as u64;
        let kept = match policy {
            CutPolicy::LoseAll => 0,
            CutPolicy::KeepAll => n,
            CutPolicy::Random => match rng.below(3) {
                0 => 0,
                1 => n,
                _ => rng.below(n + 1),
            },
        };
        for op in self.pending.iter().take(kept as usize) {
            op.apply(&mut entries);
        }
        report.dir_changes_kept += kept;
        report.dir_changes_lost += n - kept;
        self.entries = entries;
        self.pending.clear();
    }
}

#[derive(Debug)]
enum Content {
    File(FileData),
    Dir(DirData),
}

#[derive(Debug)]
struct Inode {
    content: Content,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Volatile directory entries naming this inode.
    nlink: u32,
    /// The kernel's lookup count (FUSE `nlookup`).
    lookups: u64,
    /// Open file handles.
    opens: u64,
}

impl Inode {
    fn new(content: Content, perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Inode {
            content,
            perm,
            uid,
            gid,
            mtime: now,
            ctime: now,
            nlink: 0,
            lookups: 0,
            opens: 0,
        }
    }

    fn kind(&self) -> Kind {
        match self.content {
            Content::File(_) => Kind::File,
            Content::Dir(_) => Kind::Dir,
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

#[derive(Debug)]
enum Handle {
    File { ino: u64 },
    Dir { listing: Vec<DirEntry> },
}

/// The whole file system. See the module documentation.
#[derive(Debug)]
pub struct Model {
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Inodes no volatile entry names; freed once nothing else refers to them.
    orphans: BTreeSet<u64>,
    capacity_bytes: u64,
    bytes: u64,
    counters: Stats,
    /// Bumped by every cut: a FUSE session of an older generation is refused (EIO).
    generation: u64,
}

impl Model {
    /// An empty file system that holds at most `capacity_bytes` of file contents.
    pub fn new(capacity_bytes: u64) -> Self {
        let mut inodes = BTreeMap::new();
        let mut root = Inode::new(
            Content::Dir(DirData {
                parent: ROOT_INO,
                ..DirData::default()
            }),
            0o755,
            0,
            0,
        );
        root.nlink = 1;
        inodes.insert(ROOT_INO, root);
        Model {
            inodes,
            next_ino: ROOT_INO + 1,
            handles: HashMap::new(),
            next_fh: 1,
            orphans: BTreeSet::new(),
            capacity_bytes,
            bytes: 0,
            counters: Stats::default(),
            generation: 0,
        }
    }

    /// The generation: changes at every cut.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn inode(&self, ino: u64) -> FsResult<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> FsResult<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> FsResult<&DirData> {
        match &self.inode(ino)?.content {
            Content::Dir(d) => Ok(d),
            Content::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> FsResult<&mut DirData> {
        match &mut self.inode_mut(ino)?.content {
            Content::Dir(d) => Ok(d),
            Content::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> FsResult<&mut FileData> {
        match &mut self.inode_mut(ino)?.content {
            Content::File(f) => Ok(f),
            Content::Dir(_) => Err(Errno::EISDIR),
        }
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let inode = self.inode(ino)?;
        let (size, nlink) = match &inode.content {
            Content::File(f) => (f.image.len() as u64, inode.nlink),
            Content::Dir(d) => (d.entries.len() as u64, 2),
        };
        Ok(Attr {
            ino,
            kind: inode.kind(),
            size,
            perm: inode.perm,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            mtime: inode.mtime,
            ctime: inode.ctime,
        })
    }

    /// The inode `name` in `parent` names (no lookup counted: for tests and the harness).
    pub fn child(&self, parent: u64, name: &[u8]) -> FsResult<u64> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// Resolves a `/`-separated path from the root (no lookup counted).
    pub fn resolve(&self, path: &str) -> FsResult<u64> {
        let mut ino = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.child(ino, part.as_bytes())?;
        }
        Ok(ino)
    }

    /// FUSE `LOOKUP`: the kernel now holds one more reference.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let ino = self.child(parent, name)?;
        self.inode_mut(ino)?.lookups += 1;
        self.getattr(ino)
    }

    /// FUSE `FORGET`.
    pub fn forget(&mut self, ino: u64, count: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_sub(count);
        }
        self.collect_orphans();
    }

    /// A size change (truncate, ftruncate): pending until the file is synced.
    pub fn set_len(&mut self, ino: u64, len: u64) -> FsResult<Attr> {
        self.reserve(ino, len)?;
        let file = self.file_mut(ino)?;
        let old = file.image.len() as u64;
        file.set_len(len);
        self.bytes = self.bytes + len - old;
        self.inode_mut(ino)?.touch();
        self.getattr(ino)
    }

    /// Permission bits and owner (setattr); not modelled for durability.
    pub fn set_meta(
        &mut self,
        ino: u64,
        perm: Option<u16>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> FsResult<()> {
        let inode = self.inode_mut(ino)?;
        if let Some(perm) = perm {
            inode.perm = perm & 0o7777;
        }
        if let Some(uid) = uid {
            inode.uid = uid;
        }
        if let Some(gid) = gid {
            inode.gid = gid;
        }
        inode.ctime = SystemTime::now();
        Ok(())
    }

    /// Checks that `ino` may grow to `len` bytes.
    fn reserve(&self, ino: u64, len: u64) -> FsResult<()> {
        if len > FILE_BYTES_MAX {
            return Err(Errno::EFBIG);
        }
        let old = match &self.inode(ino)?.content {
            Content::File(f) => f.image.len() as u64,
            Content::Dir(_) => return Err(Errno::EISDIR),
        };
        if len > old && self.bytes + (len - old) > self.capacity_bytes {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    fn new_inode(&mut self, inode: Inode) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, inode);
        ino
    }

    fn new_fh(&mut self, handle: Handle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, handle);
        fh
    }

    /// Points `name` in `parent` at `ino` (a pending change), dropping what it named.
    fn link(&mut self, parent: u64, name: &[u8], ino: u64) -> FsResult<()> {
        let old = self.dir(parent)?.entries.get(name).copied();
        self.dir_mut(parent)?.change(DirOp::Insert {
            name: name.to_vec(),
            ino,
        });
        self.inode_mut(ino)?.nlink += 1;
        if let Some(old) = old {
            self.unref(old);
        }
        self.inode_mut(parent)?.touch();
        Ok(())
    }

    fn unref(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.nlink = inode.nlink.saturating_sub(1);
            if inode.nlink == 0 {
                self.orphans.insert(ino);
            }
        }
    }

    /// Frees orphans nothing refers to any more: no volatile or durable name, no kernel
    /// reference, no open handle.
    fn collect_orphans(&mut self) {
        let candidates: Vec<u64> = self.orphans.iter().copied().collect();
        for ino in candidates {
            let free = match self.inodes.get(&ino) {
                None => true,
                Some(inode) => {
                    inode.nlink == 0
                        && inode.lookups == 0
                        && inode.opens == 0
                        && !self.inodes.values().any(|other| match &other.content {
                            Content::Dir(d) => d.references_durably(ino),
                            Content::File(_) => false,
                        })
                }
            };
            if free {
                self.orphans.remove(&ino);
                if let Some(inode) = self.inodes.remove(&ino) {
                    if let Content::File(f) = inode.content {
                        self.bytes -= f.image.len() as u64;
                    }
                }
            } else if self.inodes.get(&ino).is_some_and(|i| i.nlink > 0) {
                self.orphans.remove(&ino);
            }
        }
    }

    /// FUSE `CREATE`: a new empty file (`EEXIST` if `exclusive` and the name exists; an
    /// existing file is opened otherwise). Returns its attributes and an open handle.
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        perm: u16,
        exclusive: bool,
        owner: (u32, u32),
    ) -> FsResult<(Attr, u64)> {
        check_name(name)?;
        if let Ok(existing) = self.child(parent, name) {
            if exclusive {
                return Err(Errno::EEXIST);
            }
            let fh = self.open(existing)?;
            self.inode_mut(existing)?.lookups += 1;
            return Ok((self.getattr(existing)?, fh));
        }
        self.dir(parent)?;
        let ino = self.new_inode(Inode::new(
            Content::File(FileData::default()),
            perm & 0o7777,
            owner.0,
            owner.1,
        ));
        self.link(parent, name, ino)?;
        let inode = self.inode_mut(ino)?;
        inode.lookups += 1;
        let fh = self.open(ino)?;
        Ok((self.getattr(ino)?, fh))
    }

    /// FUSE `MKDIR`.
    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &[u8],
        perm: u16,
        owner: (u32, u32),
    ) -> FsResult<Attr> {
        check_name(name)?;
        if self.child(parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        self.dir(parent)?;
        let ino = self.new_inode(Inode::new(
            Content::Dir(DirData {
                parent,
                ..DirData::default()
            }),
            perm & 0o7777,
            owner.0,
            owner.1,
        ));
        self.link(parent, name, ino)?;
        self.inode_mut(ino)?.lookups += 1;
        self.getattr(ino)
    }

    /// FUSE `OPEN` of a regular file: a new handle.
    pub fn open(&mut self, ino: u64) -> FsResult<u64> {
        let inode = self.inode_mut(ino)?;
        if inode.kind() != Kind::File {
            return Err(Errno::EISDIR);
        }
        inode.opens += 1;
        Ok(self.new_fh(Handle::File { ino }))
    }

    /// FUSE `RELEASE`.
    pub fn release(&mut self, fh: u64) -> FsResult<()> {
        match self.handles.remove(&fh) {
            Some(Handle::File { ino }) => {
                if let Some(inode) = self.inodes.get_mut(&ino) {
                    inode.opens = inode.opens.saturating_sub(1);
                }
                self.collect_orphans();
                Ok(())
            }
            Some(dir @ Handle::Dir { .. }) => {
                self.handles.insert(fh, dir);
                Err(Errno::EBADF)
            }
            None => Err(Errno::EBADF),
        }
    }

    /// FUSE `READ`: up to `size` bytes at `offset` (fewer at the end of the file).
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<&[u8]> {
        match &self.inode(ino)?.content {
            Content::File(f) => {
                let len = f.image.len() as u64;
                let start = offset.min(len) as usize;
                let end = offset.saturating_add(u64::from(size)).min(len) as usize;
                Ok(&f.image[start..end])
            }
            Content::Dir(_) => Err(Errno::EISDIR),
        }
    }

    /// FUSE `WRITE`: pending until the file is synced.
    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> FsResult<usize> {
        let end = offset.checked_add(bytes.len() as u64).ok_or(Errno::EFBIG)?;
        self.reserve(ino, end)?;
        let file = self.file_mut(ino)?;
        let old = file.image.len() as u64;
        file.write(offset, bytes);
        let new = file.image.len() as u64;
        self.bytes = self.bytes + new - old;
        self.inode_mut(ino)?.touch();
        self.counters.writes += 1;
        self.counters.write_bytes += bytes.len() as u64;
        Ok(bytes.len())
    }

    /// FUSE `FALLOCATE`: mode 0 only (grows the size to `offset + len`, a pending change).
    pub fn fallocate(&mut self, ino: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        if mode != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        let size = self.getattr(ino)?.size;
        if end > size {
            self.set_len(ino, end)?;
        }
        Ok(())
    }

    /// FUSE `FSYNC` (either kind): every completed write and the size become durable. A
    /// directory synced this way counts as `fsyncdir`.
    pub fn fsync(&mut self, ino: u64) -> FsResult<()> {
        match &mut self.inode_mut(ino)?.content {
            Content::File(f) => {
                f.sync();
                self.counters.fsyncs += 1;
                Ok(())
            }
            Content::Dir(_) => self.fsyncdir(ino),
        }
    }

    /// FUSE `FSYNCDIR`: the directory's names become durable, all of them.
    pub fn fsyncdir(&mut self, ino: u64) -> FsResult<()> {
        self.dir_mut(ino)?.sync();
        self.counters.fsyncdirs += 1;
        self.collect_orphans();
        Ok(())
    }

    /// FUSE `UNLINK`.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> FsResult<()> {
        let ino = self.child(parent, name)?;
        if self.inode(ino)?.kind() == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        self.dir_mut(parent)?.change(DirOp::Remove {
            name: name.to_vec(),
        });
        self.unref(ino);
        self.inode_mut(parent)?.touch();
        self.collect_orphans();
        Ok(())
    }

    /// FUSE `RMDIR` (empty directories only).
    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> FsResult<()> {
        let ino = self.child(parent, name)?;
        if !self.dir(ino)?.entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.dir_mut(parent)?.change(DirOp::Remove {
            name: name.to_vec(),
        });
        self.unref(ino);
        self.collect_orphans();
        Ok(())
    }

    /// FUSE `RENAME`, replacing the target (unless `no_replace`).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        no_replace: bool,
    ) -> FsResult<()> {
        check_name(new_name)?;
        let ino = self.child(parent, name)?;
        self.dir(new_parent)?;
        let kind = self.inode(ino)?.kind();
        let target = self.child(new_parent, new_name).ok();
        if let Some(target) = target {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(Errno::EEXIST);
            }
            match (kind, &self.inode(target)?.content) {
                (Kind::File, Content::Dir(_)) => return Err(Errno::EISDIR),
                (Kind::Dir, Content::File(_)) => return Err(Errno::ENOTDIR),
                (Kind::Dir, Content::Dir(d)) if !d.entries.is_empty() => {
                    return Err(Errno::ENOTEMPTY)
                }
                _ => {}
            }
        }
        if kind == Kind::Dir {
            // A directory may not move below itself.
            let mut at = new_parent;
            while at != ROOT_INO {
                if at == ino {
                    return Err(Errno::EINVAL);
                }
                at = self.dir(at)?.parent;
            }
        }
        if parent == new_parent {
            self.dir_mut(parent)?.change(DirOp::Rename {
                from: name.to_vec(),
                to: new_name.to_vec(),
            });
        } else {
            self.dir_mut(parent)?.change(DirOp::Remove {
                name: name.to_vec(),
            });
            self.dir_mut(new_parent)?.change(DirOp::Insert {
                name: new_name.to_vec(),
                ino,
            });
            if let Content::Dir(d) = &mut self.inode_mut(ino)?.content {
                d.parent = new_parent;
            }
        }
        if let Some(target) = target {
            self.unref(target);
        }
        self.inode_mut(parent)?.touch();
        self.inode_mut(new_parent)?.touch();
        self.collect_orphans();
        Ok(())
    }

    /// FUSE `OPENDIR`: a handle holding a snapshot of the listing (with `.` and `..`), so
    /// offsets stay stable while the directory changes.
    pub fn opendir(&mut self, ino: u64) -> FsResult<u64> {
        let dir = self.dir(ino)?;
        let mut listing = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: b".".to_vec(),
            },
            DirEntry {
                ino: dir.parent,
                kind: Kind::Dir,
                name: b"..".to_vec(),
            },
        ];
        for (name, &child) in &dir.entries {
            let kind = self.inode(child)?.kind();
            listing.push(DirEntry {
                ino: child,
                kind,
                name: name.clone(),
            });
        }
        Ok(self.new_fh(Handle::Dir { listing }))
    }

    /// FUSE `READDIR`: the snapshot's entries from `offset` on; entry `i` has offset `i + 1`.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<&[DirEntry]> {
        match self.handles.get(&fh) {
            Some(Handle::Dir { listing }) => {
                let start = (offset as usize).min(listing.len());
                Ok(&listing[start..])
            }
            _ => Err(Errno::EBADF),
        }
    }

    /// FUSE `RELEASEDIR`.
    pub fn releasedir(&mut self, fh: u64) -> FsResult<()> {
        match self.handles.remove(&fh) {
            Some(Handle::Dir { .. }) => Ok(()),
            Some(file) => {
                self.handles.insert(fh, file);
                Err(Errno::EBADF)
            }
            None => Err(Errno::EBADF),
        }
    }

    /// FUSE `STATFS`.
    pub fn statfs(&self) -> StatFs {
        StatFs {
            capacity_bytes: self.capacity_bytes,
            used_bytes: self.bytes,
            inodes: self.inodes.len() as u64,
        }
    }

    /// Counters, and what is pending now.
    pub fn stats(&self) -> Stats {
        let mut stats = self.counters;
        for inode in self.inodes.values() {
            match &inode.content {
                Content::File(f) => {
                    stats.files += 1;
                    stats.pending_ops += f.pending.len() as u64;
                    stats.pending_bytes += f.pending_bytes;
                }
                Content::Dir(d) => stats.pending_dir_changes += d.pending.len() as u64,
            }
        }
        stats.bytes = self.bytes;
        stats
    }

    /// The durable image of the file at `path` (what a cut that loses everything pending
    /// would leave), if the path exists now.
    pub fn durable_image(&self, path: &str) -> FsResult<Vec<u8>> {
        match &self.inode(self.resolve(path)?)?.content {
            Content::File(f) => Ok(f.durable_image()),
            Content::Dir(_) => Err(Errno::EISDIR),
        }
    }

    /// The volatile image of the file at `path`.
    pub fn image(&self, path: &str) -> FsResult<&[u8]> {
        match &self.inode(self.resolve(path)?)?.content {
            Content::File(f) => Ok(&f.image),
            Content::Dir(_) => Err(Errno::EISDIR),
        }
    }

    /// The names in the directory at `path`.
    pub fn list(&self, path: &str) -> FsResult<Vec<String>> {
        Ok(self
            .dir(self.resolve(path)?)?
            .entries
            .keys()
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect())
    }

    /// Forgets every reference the kernel held (a new mount starts with none).
    pub fn reset_kernel_refs(&mut self) {
        self.handles.clear();
        for inode in self.inodes.values_mut() {
            inode.lookups = 0;
            inode.opens = 0;
        }
        self.collect_orphans();
    }

    /// A power cut; see the module documentation. Afterwards the kernel holds no reference
    /// (the caller unmounts first and mounts again after).
    pub fn cut(&mut self, seed: u64, policy: CutPolicy) -> CutReport {
        let mut rng = Rng::new(seed);
        let mut report = CutReport {
            seed,
            ..CutReport::default()
        };
        // BTreeMap order: the same pending state and seed give the same outcome.
        for inode in self.inodes.values_mut() {
            match &mut inode.content {
                Content::Dir(d) => d.cut(&mut rng, policy, &mut report),
                Content::File(f) => f.cut(&mut rng, policy, &mut report),
            }
        }
        // What the durable tree no longer reaches is gone; names and parents are recounted.
        let mut reached = BTreeMap::new();
        reached.insert(ROOT_INO, ROOT_INO);
        let mut stack = vec![ROOT_INO];
        let mut nlinks: HashMap<u64, u32> = HashMap::new();
        while let Some(dir) = stack.pop() {
            let children: Vec<u64> = match self.inodes.get(&dir).map(|i| &i.content) {
                Some(Content::Dir(d)) => d.entries.values().copied().collect(),
                _ => Vec::new(),
            };
            for child in children {
                *nlinks.entry(child).or_default() += 1;
                if reached.contains_key(&child) {
                    continue;
                }
                reached.insert(child, dir);
                if matches!(
                    self.inodes.get(&child).map(|i| &i.content),
                    Some(Content::Dir(_))
                ) {
                    stack.push(child);
                }
            }
        }
        let before = self.inodes.len();
        let files_before = self
            .inodes
            .values()
            .filter(|i| i.kind() == Kind::File)
            .count();
        self.inodes.retain(|ino, _| reached.contains_key(ino));
        let files_after = self
            .inodes
            .values()
            .filter(|i| i.kind() == Kind::File)
            .count();
        report.files_dropped = (files_before - files_after) as u64;
        debug_assert!(self.inodes.len() <= before);
        // A name may point at an inode that did not survive (a dropped directory's child
        // cannot, but a name whose inode was never reachable elsewhere can't either): every
        // entry names a reached inode by construction, since reached = everything named.
        self.bytes = 0;
        for (ino, inode) in self.inodes.iter_mut() {
            inode.nlink = if *ino == ROOT_INO {
                1
            } else {
                nlinks.get(ino).copied().unwrap_or(0)
            };
            inode.lookups = 0;
            inode.opens = 0;
            match &mut inode.content {
                Content::Dir(d) => {
                    if let Some(&parent) = reached.get(ino) {
                        d.parent = parent;
                    }
                }
                Content::File(f) => self.bytes += f.image.len() as u64,
            }
        }
        self.handles.clear();
        self.orphans.clear();
        self.counters.cuts += 1;
        self.generation += 1;
        report
    }
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    if name.len() > 255 {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: (u32, u32) = (0, 0);

    fn model() -> Model {
        Model::new(1 << 30)
    }

    fn new_file(m: &mut Model, parent: u64, name: &str) -> (u64, u64) {
        let (attr, fh) = m
            .create(parent, name.as_bytes(), 0o644, true, OWNER)
            .unwrap();
        (attr.ino, fh)
    }

    fn bytes(n: usize, fill: u8) -> Vec<u8> {
        vec![fill; n]
    }

    #[test]
    fn synced_bytes_survive_every_cut_and_pending_ones_follow_the_policy() {
        let setup = || {
            let mut m = model();
            let (f, _) = new_file(&mut m, ROOT_INO, "f");
            m.fsyncdir(ROOT_INO).unwrap();
            m.write(f, 0, &bytes(4096, 1)).unwrap();
            m.fsync(f).unwrap();
            m.write(f, 4096, &bytes(4096, 2)).unwrap();
            m.write(f, 0, &bytes(100, 3)).unwrap();
            assert_eq!(m.durable_image("f").unwrap(), bytes(4096, 1));
            m
        };
        for seed in 0..50 {
            let mut m = setup();
            m.cut(seed, CutPolicy::Random);
            let image = m.image("f").unwrap();
            // The synced page is there, overwritten at most by (part of) the pending write
            // of 3s; past it only (part of) the pending write of 2s, or zeros between sectors.
            assert!(
                image.len() >= 4096 && image.len() <= 8192,
                "{}",
                image.len()
            );
            assert!(image[..100].iter().all(|&b| b == 1 || b == 3));
            assert!(image[100..4096].iter().all(|&b| b == 1));
            assert!(image[4096..].iter().all(|&b| b == 2 || b == 0));
        }
        let mut m = setup();
        m.cut(1, CutPolicy::LoseAll);
        assert_eq!(m.image("f").unwrap(), bytes(4096, 1));
        let mut m = setup();
        m.cut(1, CutPolicy::KeepAll);
        let mut want = bytes(100, 3);
        want.extend(bytes(3996, 1));
        want.extend(bytes(4096, 2));
        assert_eq!(m.image("f").unwrap(), want);
    }

    #[test]
    fn undo_records_rebuild_the_durable_image_exactly() {
        let mut m = model();
        let (f, _) = new_file(&mut m, ROOT_INO, "f");
        m.write(f, 0, &(0..=255).collect::<Vec<u8>>()).unwrap();
        m.fsync(f).unwrap();
        let durable = m.image("f").unwrap().to_vec();
        // Writes inside, across and past the end, shrinks, growth by fallocate.
        m.write(f, 10, &bytes(20, 0xAA)).unwrap();
        m.set_len(f, 100).unwrap();
        m.write(f, 90, &bytes(50, 0xBB)).unwrap();
        m.fallocate(f, 0, 4096, 0).unwrap();
        m.write(f, 5000, &bytes(7, 0xCC)).unwrap();
        m.set_len(f, 3).unwrap();
        m.set_len(f, 300).unwrap();
        assert_eq!(m.durable_image("f").unwrap(), durable);
        let volatile = m.image("f").unwrap().to_vec();
        m.cut(7, CutPolicy::KeepAll);
        assert_eq!(m.image("f").unwrap(), volatile);
    }

    #[test]
    fn a_cut_replays_exactly_from_its_seed() {
        let run = |seed: u64| {
            let mut m = model();
            let (f, _) = new_file(&mut m, ROOT_INO, "f");
            let (g, _) = new_file(&mut m, ROOT_INO, "g");
            m.fsyncdir(ROOT_INO).unwrap();
            for i in 0..40u64 {
                m.write(f, i * 700, &bytes(1300, i as u8 + 1)).unwrap();
                m.write(g, i * 4096, &bytes(4096, i as u8 + 1)).unwrap();
            }
            let (_, _) = new_file(&mut m, ROOT_INO, "h");
            let report = m.cut(seed, CutPolicy::Random);
            (
                report,
                m.image("f").unwrap().to_vec(),
                m.image("g").unwrap().to_vec(),
                m.list("/").unwrap(),
            )
        };
        assert_eq!(run(42), run(42));
        let outcomes: BTreeSet<Vec<u8>> = (0..20).map(|s| run(s).1).collect();
        assert!(outcomes.len() > 10, "seeds should give different outcomes");
        // Over many seeds every fate happens: kept, lost, torn.
        let (mut kept, mut lost, mut torn) = (0, 0, 0);
        for seed in 0..20 {
            let (report, ..) = run(seed);
            kept += report.writes_kept;
            lost += report.writes_lost;
            torn += report.writes_torn;
            assert_eq!(
                report.writes_kept + report.writes_lost + report.writes_torn,
                80
            );
        }
        assert!(kept > 0 && lost > 0 && torn > 0);
    }

    #[test]
    fn later_writes_can_survive_earlier_ones_that_vanished() {
        let mut seen = false;
        for seed in 0..200 {
            let mut m = model();
            let (f, _) = new_file(&mut m, ROOT_INO, "f");
            m.fsyncdir(ROOT_INO).unwrap();
            m.write(f, 0, &bytes(512, 1)).unwrap();
            m.write(f, 512, &bytes(512, 2)).unwrap();
            m.cut(seed, CutPolicy::Random);
            let image = m.image("f").unwrap();
            if image.len() == 1024 && image[0] == 0 && image[1023] == 2 {
                seen = true;
            }
        }
        assert!(seen, "no seed reordered the two writes");
    }

    #[test]
    fn torn_writes_tear_at_bytes_and_at_sectors() {
        let (mut odd, mut sector) = (false, false);
        for seed in 0..300 {
            let mut m = model();
            let (f, _) = new_file(&mut m, ROOT_INO, "f");
            m.fsyncdir(ROOT_INO).unwrap();
            m.write(f, 0, &bytes(8192, 0)).unwrap();
            m.fsync(f).unwrap();
            m.write(f, 0, &bytes(8192, 9)).unwrap();
            let report = m.cut(seed, CutPolicy::Random);
            if report.writes_torn == 1 {
                let image = m.image("f").unwrap();
                let nines: Vec<usize> = (0..8192).filter(|&i| image[i] == 9).collect();
                let contiguous_prefix = nines.iter().enumerate().all(|(i, &at)| i == at);
                if contiguous_prefix && !nines.len().is_multiple_of(512) {
                    odd = true;
                }
                if !contiguous_prefix {
                    assert!(nines.iter().all(|&at| image[at - at % 512] == 9));
                    sector = true;
                }
            }
        }
        assert!(
            odd && sector,
            "odd-byte tears: {odd}, sector tears: {sector}"
        );
    }

    #[test]
    fn names_need_fsyncdir_and_data_needs_fsync() {
        let mut m = model();
        let (f, fh) = new_file(&mut m, ROOT_INO, "unsynced-name");
        m.write(f, 0, b"data").unwrap();
        m.fsync(f).unwrap();
        m.release(fh).unwrap();
        m.cut(0, CutPolicy::LoseAll);
        assert_eq!(m.list("/").unwrap(), Vec::<String>::new());

        let (f, _) = new_file(&mut m, ROOT_INO, "synced-name");
        m.fsyncdir(ROOT_INO).unwrap();
        m.write(f, 0, b"data").unwrap();
        m.cut(0, CutPolicy::LoseAll);
        assert_eq!(m.list("/").unwrap(), vec!["synced-name"]);
        assert_eq!(m.image("synced-name").unwrap(), b"");
    }

    #[test]
    fn rename_and_unlink_are_durable_only_after_fsyncdir() {
        let setup = || {
            let mut m = model();
            let (a, _) = new_file(&mut m, ROOT_INO, "a.tmp");
            m.write(a, 0, b"new").unwrap();
            m.fsync(a).unwrap();
            let (b, _) = new_file(&mut m, ROOT_INO, "a");
            m.write(b, 0, b"old").unwrap();
            m.fsync(b).unwrap();
            let (c, _) = new_file(&mut m, ROOT_INO, "victim");
            m.write(c, 0, b"v").unwrap();
            m.fsync(c).unwrap();
            m.fsyncdir(ROOT_INO).unwrap();
            m.rename(ROOT_INO, b"a.tmp", ROOT_INO, b"a", false).unwrap();
            m.unlink(ROOT_INO, b"victim").unwrap();
            m
        };
        let mut m = setup();
        m.cut(0, CutPolicy::LoseAll);
        assert_eq!(m.list("/").unwrap(), vec!["a", "a.tmp", "victim"]);
        assert_eq!(m.image("a").unwrap(), b"old");
        assert_eq!(m.image("victim").unwrap(), b"v");

        let mut m = setup();
        m.fsyncdir(ROOT_INO).unwrap();
        m.cut(0, CutPolicy::LoseAll);
        assert_eq!(m.list("/").unwrap(), vec!["a"]);
        assert_eq!(m.image("a").unwrap(), b"new");

        // A random cut keeps a prefix of the changes: the rename is atomic, and the unlink
        // never survives without the rename before it.
        for seed in 0..100 {
            let mut m = setup();
            m.cut(seed, CutPolicy::Random);
            let names = m.list("/").unwrap();
            let image = m.image("a").unwrap().to_vec();
            match names.len() {
                3 => assert_eq!(image, b"old"),
                2 => assert_eq!(
                    (names, image),
                    (vec!["a".into(), "victim".into()], b"new".to_vec())
                ),
                1 => assert_eq!(image, b"new"),
                _ => panic!("seed {seed}: {names:?}"),
            }
        }
    }

    #[test]
    fn nested_directories_follow_their_own_fsyncdir() {
        let setup = |sync_data_dir: bool| {
            let mut m = model();
            let data = m.mkdir(ROOT_INO, b"data", 0o755, OWNER).unwrap().ino;
            m.fsyncdir(ROOT_INO).unwrap();
            let index = m.mkdir(data, b"index", 0o755, OWNER).unwrap().ino;
            let (run, _) = new_file(&mut m, index, "run-1");
            m.write(run, 0, b"run").unwrap();
            m.fsync(run).unwrap();
            m.fsyncdir(index).unwrap();
            if sync_data_dir {
                m.fsyncdir(data).unwrap();
            }
            m
        };
        // `index` is not yet named durably in `data`: it is gone, and its file with it.
        let mut m = setup(false);
        let report = m.cut(0, CutPolicy::LoseAll);
        assert_eq!(m.list("data").unwrap(), Vec::<String>::new());
        assert_eq!((m.stats().files, report.files_dropped), (0, 1));

        let mut m = setup(true);
        m.cut(0, CutPolicy::LoseAll);
        assert_eq!(m.image("data/index/run-1").unwrap(), b"run");
        let index = m.resolve("data/index").unwrap();
        assert_eq!(m.getattr(index).unwrap().kind, Kind::Dir);
    }

    #[test]
    fn unlinked_open_files_stay_readable_and_are_freed_when_closed() {
        let mut m = model();
        let (f, fh) = new_file(&mut m, ROOT_INO, "seg");
        m.write(f, 0, &bytes(1000, 5)).unwrap();
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT_INO).unwrap();
        m.unlink(ROOT_INO, b"seg").unwrap();
        m.fsyncdir(ROOT_INO).unwrap();
        m.forget(f, 1);
        assert_eq!(m.read(f, 990, 100).unwrap(), &bytes(10, 5)[..]);
        assert_eq!(m.stats().bytes, 1000);
        m.release(fh).unwrap();
        assert_eq!(m.read(f, 0, 1), Err(Errno::ENOENT));
        assert_eq!(m.stats().bytes, 0);
    }

    #[test]
    fn an_unlink_not_yet_durable_keeps_the_file_for_a_cut() {
        let mut m = model();
        let (f, fh) = new_file(&mut m, ROOT_INO, "seg");
        m.write(f, 0, b"kept").unwrap();
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT_INO).unwrap();
        m.release(fh).unwrap();
        m.forget(f, 1);
        m.unlink(ROOT_INO, b"seg").unwrap();
        m.cut(0, CutPolicy::LoseAll);
        assert_eq!(m.image("seg").unwrap(), b"kept");
    }

    #[test]
    fn operations_refuse_what_they_must() {
        let mut m = model();
        let (f, fh) = new_file(&mut m, ROOT_INO, "f");
        assert_eq!(
            m.create(ROOT_INO, b"f", 0o644, true, OWNER).map(|_| ()),
            Err(Errno::EEXIST)
        );
        assert!(m.create(ROOT_INO, b"f", 0o644, false, OWNER).is_ok());
        assert_eq!(m.fallocate(f, 0, 10, 1), Err(Errno::EOPNOTSUPP));
        assert_eq!(m.write(f, u64::MAX - 1, b"xx"), Err(Errno::EFBIG));
        assert_eq!(m.write(f, FILE_BYTES_MAX, b"x"), Err(Errno::EFBIG));
        let mut small = Model::new(100);
        let (g, _) = new_file(&mut small, ROOT_INO, "g");
        assert_eq!(small.write(g, 0, &bytes(101, 1)), Err(Errno::ENOSPC));
        assert_eq!(m.lookup(ROOT_INO, b"missing"), Err(Errno::ENOENT));
        assert_eq!(m.lookup(f, b"x"), Err(Errno::ENOTDIR));
        assert_eq!(m.read(ROOT_INO, 0, 1).map(|_| ()), Err(Errno::EISDIR));
        assert_eq!(m.readdir(fh, 0).map(|_| ()), Err(Errno::EBADF));
        assert_eq!(m.release(9999), Err(Errno::EBADF));
        let d = m.mkdir(ROOT_INO, b"d", 0o755, OWNER).unwrap().ino;
        new_file(&mut m, d, "inside");
        assert_eq!(m.rmdir(ROOT_INO, b"d"), Err(Errno::ENOTEMPTY));
        assert_eq!(m.unlink(ROOT_INO, b"d"), Err(Errno::EISDIR));
        assert_eq!(
            m.rename(ROOT_INO, b"d", d, b"loop", false),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            m.rename(ROOT_INO, b"f", ROOT_INO, b"d", false),
            Err(Errno::EISDIR)
        );
        let (_, _) = new_file(&mut m, ROOT_INO, "g");
        assert_eq!(
            m.rename(ROOT_INO, b"f", ROOT_INO, b"g", true),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            m.create(ROOT_INO, b"a/b", 0o644, true, OWNER).map(|_| ()),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn readdir_serves_a_stable_snapshot() {
        let mut m = model();
        for name in ["b", "a", "c"] {
            new_file(&mut m, ROOT_INO, name);
        }
        let fh = m.opendir(ROOT_INO).unwrap();
        m.unlink(ROOT_INO, b"a").unwrap();
        let names: Vec<&[u8]> = m
            .readdir(fh, 0)
            .unwrap()
            .iter()
            .map(|e| &e.name[..])
            .collect();
        assert_eq!(names, vec![&b"."[..], b"..", b"a", b"b", b"c"]);
        assert_eq!(m.readdir(fh, 3).unwrap()[0].name, b"b");
        assert_eq!(m.readdir(fh, 99).unwrap().len(), 0);
        m.releasedir(fh).unwrap();
    }

    #[test]
    fn stats_and_reports_round_trip_through_text() {
        let stats = Stats {
            writes: 3,
            write_bytes: 4096,
            pending_bytes: 7,
            ..Stats::default()
        };
        assert_eq!(stats.to_string().parse::<Stats>().unwrap(), stats);
        let report = CutReport {
            seed: 99,
            writes_torn: 2,
            ..CutReport::default()
        };
        assert_eq!(report.to_string().parse::<CutReport>().unwrap(), report);
        assert!("bogus=1".parse::<Stats>().is_err());
        assert!("writes=x".parse::<Stats>().is_err());
    }

    #[test]
    fn counters_count_writes_syncs_and_pending_bytes() {
        let mut m = model();
        let (f, _) = new_file(&mut m, ROOT_INO, "f");
        m.write(f, 0, &bytes(100, 1)).unwrap();
        m.write(f, 100, &bytes(50, 1)).unwrap();
        let s = m.stats();
        assert_eq!(
            (s.writes, s.write_bytes, s.pending_bytes, s.pending_ops),
            (2, 150, 150, 2)
        );
        assert_eq!(s.pending_dir_changes, 1);
        m.fsync(f).unwrap();
        m.fsyncdir(ROOT_INO).unwrap();
        let s = m.stats();
        assert_eq!(
            (s.fsyncs, s.fsyncdirs, s.pending_bytes, s.pending_ops),
            (1, 1, 0, 0)
        );
        assert_eq!(s.pending_dir_changes, 0);
    }
}
