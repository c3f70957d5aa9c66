//! The FUSE side: every request the kernel sends is answered from the [`Model`].
//!
//! Entry and attribute TTLs are 0, so the kernel asks again for every name and size and
//! nothing stale is cached across a cut. Files are opened without `FOPEN_DIRECT_IO` (so
//! buffered I/O and shared read-only mappings go through the page cache, and `O_DIRECT`
//! opens still send their writes straight through) and without `FOPEN_KEEP_CACHE` (so every
//! open drops the page cache of the file). The writeback cache is not negotiated, so every
//! `write(2)` reaches the model before it returns. `flock` and POSIX locks are left to the
//! kernel (neither `FUSE_FLOCK_LOCKS` nor `FUSE_POSIX_LOCKS` is asked for).
//!
//! A session belongs to one generation of the model: after a cut (which bumps the
//! generation) a session that somehow outlived its unmount answers `EIO` and changes nothing.

use crate::model::{self, Attr, Kind, Model};
use fuser::{
    AccessFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Nothing is cached by the kernel for longer than this.
const TTL: Duration = Duration::ZERO;
/// Block size reported by `stat` and `statfs`.
const BLOCK_BYTES: u32 = 4096;
/// Inodes `statfs` reports as the total.
const INODES_MAX: u64 = 1 << 20;

/// Locks the model; a panic elsewhere does not make it unusable (its state is always
/// consistent between operations).
pub fn lock(model: &Mutex<Model>) -> MutexGuard<'_, Model> {
    model
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The FUSE file system of one mount. See the module documentation.
pub struct PowerCutFs {
    model: Arc<Mutex<Model>>,
    generation: u64,
}

impl PowerCutFs {
    /// A file system serving `model` in its current generation.
    pub fn new(model: Arc<Mutex<Model>>) -> Self {
        let generation = lock(&model).generation();
        PowerCutFs { model, generation }
    }

    /// Runs `f` on the model if this session is still current.
    fn with<T>(&self, f: impl FnOnce(&mut Model) -> model::FsResult<T>) -> Result<T, fuser::Errno> {
        let mut model = lock(&self.model);
        if model.generation() != self.generation {
            return Err(fuser::Errno::EIO);
        }
        f(&mut model).map_err(|e| fuser::Errno::from_i32(e.0))
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.ctime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: BLOCK_BYTES,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    ((mode & !umask) & 0o7777) as u16
}

fn reply_entry(reply: ReplyEntry, result: Result<Attr, fuser::Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), fuser::Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.with(|m| m.lookup(parent.0, name.as_bytes())));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _ = self.with(|m| {
            m.forget(ino.0, nlookup);
            Ok(())
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|m| m.getattr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.with(|m| {
            if let Some(size) = size {
                m.set_len(ino.0, size)?;
            }
            m.set_meta(ino.0, mode.map(|mode| (mode & 0o7777) as u16), uid, gid)?;
            m.getattr(ino.0)
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let owner = (req.uid(), req.gid());
        reply_entry(
            reply,
            self.with(|m| m.mkdir(parent.0, name.as_bytes(), perm(mode, umask), owner)),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.with(|m| m.unlink(parent.0, name.as_bytes())));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.with(|m| m.rmdir(parent.0, name.as_bytes())));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            reply.error(fuser::Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        reply_empty(
            reply,
            self.with(|m| {
                m.rename(
                    parent.0,
                    name.as_bytes(),
                    newparent.0,
                    newname.as_bytes(),
                    no_replace,
                )
            }),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Neither FOPEN_DIRECT_IO nor FOPEN_KEEP_CACHE: see the module documentation.
        match self.with(|m| m.open(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|m| m.read(ino.0, offset, size).map(<[u8]>::to_vec)) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|m| m.write(ino.0, offset, data)) {
            // A FUSE write is at most max_write (well below u32::MAX) bytes.
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.with(|m| m.release(fh.0)));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // FUSE cannot tell an RWF_DSYNC write's range sync from a whole-file fdatasync:
        // everything of the file becomes durable (see the crate documentation).
        reply_empty(reply, self.with(|m| m.fsync(ino.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|m| m.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.with(|m| {
            let entries = m.readdir(fh.0, offset)?;
            for (i, entry) in entries.iter().enumerate() {
                let next = offset + i as u64 + 1;
                if reply.add(
                    INodeNo(entry.ino),
                    next,
                    file_type(entry.kind),
                    OsStr::from_bytes(&entry.name),
                ) {
                    break;
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.with(|m| m.releasedir(fh.0)));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.with(|m| m.fsyncdir(ino.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.with(|m| Ok(m.statfs())) {
            Ok(s) => {
                let block = u64::from(BLOCK_BYTES);
                let free = s.capacity_bytes.saturating_sub(s.used_bytes) / block;
                reply.statfs(
                    s.capacity_bytes / block,
                    free,
                    free,
                    INODES_MAX,
                    INODES_MAX.saturating_sub(s.inodes),
                    BLOCK_BYTES,
                    255,
                    BLOCK_BYTES,
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let owner = (req.uid(), req.gid());
        let exclusive = flags & libc::O_EXCL != 0;
        let result = self.with(|m| {
            let (attr, fh) = m.create(
                parent.0,
                name.as_bytes(),
                perm(mode, umask),
                exclusive,
                owner,
            )?;
            if flags & libc::O_TRUNC != 0 && attr.size > 0 {
                return Ok((m.set_len(attr.ino, 0)?, fh));
            }
            Ok((attr, fh))
        });
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &file_attr(&attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.with(|m| m.fallocate(ino.0, offset, length, mode)),
        );
    }
}
