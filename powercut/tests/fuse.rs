//! The power-cut file system through the kernel: what the engine relies on works, what was
//! not synced is gone after a cut, and no stale page survives one (read through a fresh
//! open and through a fresh mapping).

mod common;

use common::FsProcess;
use kuvasto_engine::{Namespace, Store};
use kuvasto_powercut::workload::{object_bytes, store_config};
use kuvasto_powercut::CutPolicy;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn read_via_mmap(path: &Path) -> Vec<u8> {
    let file = File::open(path).unwrap();
    if file.metadata().unwrap().len() == 0 {
        return Vec::new();
    }
    // SAFETY: nobody writes the file while this read-only mapping lives (dropped below).
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    map.to_vec()
}

/// A page-aligned buffer for O_DIRECT.
fn aligned(len: usize, fill: u8) -> memmap2::MmapMut {
    let mut map = memmap2::MmapMut::map_anon(len).unwrap();
    map.fill(fill);
    map
}

#[test]
fn unsynced_writes_vanish_and_no_stale_page_survives_a_cut() {
    let root = tempfile::tempdir().unwrap();
    let mut fs = FsProcess::start(root.path());
    let buffered = fs.mount().join("buffered");
    let direct = fs.mount().join("direct");
    for path in [&buffered, &direct] {
        let file = File::create(path).unwrap();
        file.write_all_at(&[1u8; 8192], 0).unwrap();
        file.sync_all().unwrap();
    }
    sync_dir(fs.mount());

    // Unsynced writes: buffered (through the page cache) and O_DIRECT.
    let file = OpenOptions::new().write(true).open(&buffered).unwrap();
    file.write_all_at(&[2u8; 4096], 0).unwrap();
    drop(file);
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&direct)
        .unwrap();
    file.write_all_at(&aligned(4096, 2), 4096).unwrap();
    drop(file);
    // Before the cut every reader sees them, from the page cache too.
    for path in [&buffered, &direct] {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.iter().filter(|&&b| b == 2).count(), 4096);
        assert_eq!(read_via_mmap(path), bytes);
    }
    let before = fs.client.stats().unwrap();
    assert_eq!(before.pending_bytes, 8192);

    let report = fs.client.cut(1, CutPolicy::LoseAll).unwrap();
    assert_eq!((report.writes_lost, report.writes_kept), (2, 0));
    for path in [&buffered, &direct] {
        assert_eq!(
            std::fs::read(path).unwrap(),
            vec![1u8; 8192],
            "{path:?} by read"
        );
        assert_eq!(read_via_mmap(path), vec![1u8; 8192], "{path:?} by mmap");
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap();
        let mut buf = aligned(8192, 0);
        file.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 1), "{path:?} by O_DIRECT read");
    }
    assert_eq!(fs.client.stats().unwrap().pending_bytes, 0);

    // A cut that keeps everything loses nothing.
    let file = OpenOptions::new().write(true).open(&buffered).unwrap();
    file.write_all_at(b"kept", 0).unwrap();
    drop(file);
    fs.client.cut(2, CutPolicy::KeepAll).unwrap();
    assert_eq!(&std::fs::read(&buffered).unwrap()[..4], b"kept");
}

#[test]
fn names_renames_and_removals_need_a_directory_sync() {
    let root = tempfile::tempdir().unwrap();
    let mut fs = FsProcess::start(root.path());
    let mnt = fs.mount().to_path_buf();
    std::fs::create_dir(mnt.join("data")).unwrap();
    sync_dir(&mnt);
    let data = mnt.join("data");
    let mut tmp = File::create(data.join("run.tmp")).unwrap();
    tmp.write_all(b"new").unwrap();
    tmp.sync_all().unwrap();
    drop(tmp);
    std::fs::write(data.join("victim"), b"v").unwrap();
    File::open(data.join("victim")).unwrap().sync_all().unwrap();
    sync_dir(&data);
    std::fs::rename(data.join("run.tmp"), data.join("run")).unwrap();
    std::fs::remove_file(data.join("victim")).unwrap();
    std::fs::create_dir(data.join("index")).unwrap();
    std::fs::write(data.join("unsynced-name"), b"x").unwrap();
    File::open(data.join("unsynced-name"))
        .unwrap()
        .sync_all()
        .unwrap();

    fs.client.cut(3, CutPolicy::LoseAll).unwrap();
    let names = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&data), vec!["run.tmp", "victim"]);
    assert_eq!(std::fs::read(data.join("run.tmp")).unwrap(), b"new");

    std::fs::rename(data.join("run.tmp"), data.join("run")).unwrap();
    std::fs::remove_file(data.join("victim")).unwrap();
    std::fs::create_dir(data.join("index")).unwrap();
    sync_dir(&data);
    fs.client.cut(4, CutPolicy::LoseAll).unwrap();
    assert_eq!(names(&data), vec!["index", "run"]);
    assert_eq!(std::fs::read(data.join("run")).unwrap(), b"new");
    assert!(data.join("index").is_dir());
}

#[test]
fn an_rwf_dsync_write_reaches_the_file_system_as_a_whole_file_sync() {
    let root = tempfile::tempdir().unwrap();
    let mut fs = FsProcess::start(root.path());
    let path = fs.mount().join("f");
    let file = File::create(&path).unwrap();
    sync_dir(fs.mount());
    file.write_all_at(b"plain", 0).unwrap();
    let fsyncs = fs.client.stats().unwrap().fsyncs;
    let bytes = *b"dsync";
    let iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: `iov` points at `bytes`, which outlives the call; the descriptor is open.
    let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, 4096, libc::RWF_DSYNC) };
    assert_eq!(n, 5, "{}", std::io::Error::last_os_error());
    assert!(fs.client.stats().unwrap().fsyncs > fsyncs);
    drop(file);
    fs.client.cut(5, CutPolicy::LoseAll).unwrap();
    // The limit the crate documents: the earlier plain write became durable too.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        (&bytes[..5], &bytes[4096..]),
        (&b"plain"[..], &b"dsync"[..])
    );
}

#[test]
fn fallocate_truncate_statfs_and_large_directories_work() {
    let root = tempfile::tempdir().unwrap();
    let mut fs = FsProcess::start(root.path());
    let path = fs.mount().join("seg");
    let file = File::create(&path).unwrap();
    sync_dir(fs.mount());
    file.sync_all().unwrap();
    let fd = file.as_raw_fd();
    // SAFETY: fallocate on an open descriptor; no pointers.
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 1 << 20) }, 0);
    assert_eq!(file.metadata().unwrap().len(), 1 << 20);
    for mode in [
        libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_ZERO_RANGE,
    ] {
        // SAFETY: as above.
        let rc = unsafe { libc::fallocate(fd, mode, 0, 4096) };
        let err = std::io::Error::last_os_error();
        assert_eq!(
            (rc, err.raw_os_error()),
            (-1, Some(libc::EOPNOTSUPP)),
            "mode {mode}"
        );
    }
    file.set_len(100).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 100);
    drop(file);
    fs.client.cut(6, CutPolicy::LoseAll).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);

    // SAFETY: statvfs is plain old data; all zeros is a valid value of it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let c_path = std::ffi::CString::new(fs.mount().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path and a valid out-pointer.
    assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) }, 0);
    assert!(stat.f_blocks > 0 && stat.f_bfree > 0);

    let dir = fs.mount().join("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..600 {
        File::create(dir.join(format!("file-with-a-longish-name-{i:04}"))).unwrap();
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 600);
}

#[test]
fn the_engine_works_on_the_mount_in_both_io_modes() {
    let root = tempfile::tempdir().unwrap();
    let mut fs = FsProcess::start(root.path());
    for direct_io in [true, false] {
        let data = fs.mount().join(format!("data-{direct_io}"));
        std::fs::create_dir(&data).unwrap();
        sync_dir(fs.mount());
        let keys = ["c0-p0-1", "c0-p0-7", "c0-p1-3", "c0-s0-1"];
        {
            let store = Store::open(&data, store_config(direct_io)).unwrap();
            // A second store on the same directory is refused: flock works on the mount.
            assert!(matches!(
                Store::open(&data, store_config(direct_io)),
                Err(kuvasto_engine::Error::Locked(_))
            ));
            for key in &keys[..3] {
                store
                    .put(Namespace::OBJECT, key.as_bytes(), &object_bytes(key))
                    .unwrap();
            }
            let bytes = object_bytes(keys[3]);
            let mut stream = store
                .put_stream(Namespace::OBJECT, keys[3].as_bytes())
                .unwrap();
            for piece in bytes.chunks(100_000) {
                stream.write(piece).unwrap();
            }
            stream.finish().unwrap();
            for key in keys {
                let object = store
                    .get(Namespace::OBJECT, key.as_bytes())
                    .unwrap()
                    .unwrap();
                assert!(object.read_all().unwrap() == object_bytes(key), "{key}");
            }
        }
        // Everything acknowledged was synced: a strict cut keeps it.
        fs.client.cut(7, CutPolicy::LoseAll).unwrap();
        let store = Store::open(&data, store_config(direct_io)).unwrap();
        assert!(store.recovery_report().corruption.is_empty());
        for key in keys {
            let object = store.get(Namespace::OBJECT, key.as_bytes()).unwrap();
            let object = object.unwrap_or_else(|| panic!("direct_io={direct_io}: {key} lost"));
            assert!(object.read_all().unwrap() == object_bytes(key), "{key}");
        }
    }
}
