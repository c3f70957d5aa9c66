//! Creating, padding and sealing segment files. Used by the writer, by recovery (to finish a
//! seal a crash interrupted) and by compaction.

use super::format::{
    align_up, encode_directory, encode_padding, encode_record, padding_bytes, DirEntry, Namespace,
    RecordHeader, RecordKind, SegmentHeader, Trailer, FORMAT_VERSION, PAGE_BYTES,
    SEGMENT_HEADER_BYTES, TRAILER_BYTES,
};
use crate::error::{Error, Result};
use crate::io::{AlignedBuf, Mapping, Storage, StorageFile};
use std::time::{SystemTime, UNIX_EPOCH};

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Opens the file `name` and maps it.
pub fn open_mapped(storage: &dyn Storage, name: &str) -> Result<(Box<dyn StorageFile>, Mapping)> {
    let file = storage.open(name).map_err(|e| Error::io("open", name, e))?;
    let map = file.map().map_err(|e| Error::io("mmap", name, e))?;
    Ok((file, map))
}

/// Writes `buf` (page-aligned length) at `offset` and makes it durable.
pub fn write_durable(file: &dyn StorageFile, buf: AlignedBuf, offset: u64) -> Result<()> {
    let (_, result) = file.begin_write(buf, offset, true).wait();
    result.map_err(|e| Error::io("write+fdatasync", file.name(), e))
}

/// Creates segment file `name` with id `id`: header written, `size_bytes` preallocated, both
/// durable. The caller makes the directory entry durable (`sync_dir`) when the file should
/// survive a crash.
pub fn create_segment(
    storage: &dyn Storage,
    name: &str,
    id: u64,
    size_bytes: u64,
    flags: u32,
) -> Result<Box<dyn StorageFile>> {
    let file = storage
        .create(name)
        .map_err(|e| Error::io("create", name, e))?;
    match init_segment(file.as_ref(), name, id, size_bytes, flags) {
        Ok(()) => Ok(file),
        Err(e) => {
            // Leave no headerless file behind for recovery to trip over.
            drop(file);
            let _ = storage.remove(name);
            Err(e)
        }
    }
}

fn init_segment(
    file: &dyn StorageFile,
    name: &str,
    id: u64,
    size_bytes: u64,
    flags: u32,
) -> Result<()> {
    file.allocate(size_bytes)
        .map_err(|e| Error::io("fallocate", name, e))?;
    let mut header = AlignedBuf::with_capacity(SEGMENT_HEADER_BYTES as usize);
    header.set_len(SEGMENT_HEADER_BYTES as usize);
    SegmentHeader {
        format_version: FORMAT_VERSION,
        segment_id: id,
        created_unix_ms: now_unix_ms(),
        segment_size_bytes_max: size_bytes,
        flags,
    }
    .encode(&mut header[..64]);
    write_durable(file, header, 0)
}

/// Makes `valid_end` page-aligned by writing a padding record after it, rewriting the page it
/// falls in with its existing bytes (`page_prefix`: the bytes from the page start to
/// `valid_end`). Returns the aligned end. Not durable until the caller syncs.
pub fn pad_to_page(
    file: &dyn StorageFile,
    segment_id: u64,
    valid_end: u64,
    page_prefix: &[u8],
) -> Result<u64> {
    let pad = padding_bytes(valid_end);
    if pad == 0 {
        return Ok(valid_end);
    }
    let page_start = valid_end - valid_end % PAGE_BYTES;
    debug_assert_eq!(page_prefix.len() as u64, valid_end - page_start);
    let end = valid_end + pad;
    let mut buf = AlignedBuf::with_capacity((end - page_start) as usize);
    buf.set_len((end - page_start) as usize);
    buf[..page_prefix.len()].copy_from_slice(page_prefix);
    encode_padding(&mut buf[page_prefix.len()..], segment_id, valid_end);
    let (_, result) = file.begin_write(buf, page_start, false).wait();
    result.map_err(|e| Error::io("write", file.name(), e))?;
    Ok(end)
}

/// Seals a segment whose records end (page-aligned) at `records_end`: cuts the preallocated
/// tail, writes the directory record and the trailer, and makes the whole file durable (every
/// record before the footer too). After this the file never changes again.
pub fn seal_segment(
    file: &dyn StorageFile,
    segment_id: u64,
    records_end: u64,
    entries: &[DirEntry],
) -> Result<u64> {
    assert_eq!(
        records_end % PAGE_BYTES,
        0,
        "records end must be page-aligned to seal"
    );
    let body = encode_directory(entries);
    let header = RecordHeader {
        kind: RecordKind::Directory,
        namespace: Namespace::NONE,
        key_len: 0,
        body_len: body.len() as u64,
        segment_id,
        offset: records_end,
        seq: 0,
        generation: 0,
        flags: 0,
    };
    let directory_len = header.record_len();
    let footer_len = align_up(directory_len + TRAILER_BYTES, PAGE_BYTES);
    let final_len = records_end + footer_len;
    let mut buf = AlignedBuf::with_capacity(footer_len as usize);
    buf.set_len(footer_len as usize);
    encode_record(&mut buf[..directory_len as usize], &header, &[], &body);
    Trailer {
        segment_id,
        records_end,
        directory_offset: records_end,
        directory_len,
        entry_count: entries.len() as u32,
    }
    .encode(&mut buf[(footer_len - TRAILER_BYTES) as usize..]);
    // Cut first: a crash before the footer is durable leaves zeros at the end, which reads
    // as an unsealed segment and is sealed again on the next open.
    file.set_len(final_len)
        .map_err(|e| Error::io("truncate", file.name(), e))?;
    let (_, result) = file.begin_write(buf, records_end, false).wait();
    result.map_err(|e| Error::io("write", file.name(), e))?;
    // One fdatasync of the whole file, not an `RWF_DSYNC` write of the footer: records
    // written plainly before the seal (chunks of a stream that continues in the next segment,
    // every record of a compaction output) may still be in the page cache (`direct_io`
    // off) or the device's volatile cache, and a range-synced footer would not cover them.
    file.sync_data()
        .map_err(|e| Error::io("fdatasync", file.name(), e))?;
    Ok(final_len)
}
