//! Scanning segment bytes: the heart of recovery, and of salvage when a sealed segment's
//! directory is damaged. Pure functions over a byte slice (a mapping of the file), so the
//! fuzzer can drive them with arbitrary input.

use super::format::{
    align_up, decode_manifest, verify_blocks, verify_prefix, DirEntry, Namespace, RecordError,
    RecordHeader, RecordKind, SegmentHeader, PAGE_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};

/// A record that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    pub header: RecordHeader,
    pub key: Vec<u8>,
    /// Bytes of the object for blobs and manifests; 0 otherwise.
    pub object_len: u64,
}

impl ScannedRecord {
    /// The directory entry of a findable record.
    pub fn dir_entry(&self) -> Option<DirEntry> {
        self.header.kind.is_findable().then(|| DirEntry {
            namespace: self.header.namespace,
            kind: self.header.kind,
            generation: self.header.generation,
            seq: self.header.seq,
            offset: self.header.offset,
            object_len: self.object_len,
            key: self.key.clone(),
        })
    }
}

/// A place where the bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub reason: String,
    /// Where the next valid record starts (scanning resumed there), if any.
    pub resumed_at: Option<u64>,
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<ScannedRecord>,
    pub damage: Vec<Damage>,
    /// End of the last valid record before the first damage (or of all records).
    pub valid_end: u64,
    /// Offset of a directory record, if one was found (the segment was sealed).
    pub directory_at: Option<u64>,
}

pub fn check_record(
    bytes: &[u8],
    segment_id: u64,
    offset: u64,
) -> Result<ScannedRecord, RecordError> {
    let at = offset as usize;
    let available = bytes.len().saturating_sub(at) as u64;
    let header = RecordHeader::parse(&bytes[at.min(bytes.len())..], segment_id, offset)?;
    let record_len = header.record_len();
    if record_len > available {
        return Err(RecordError::Truncated {
            needed: record_len,
            available,
        });
    }
    let record = &bytes[at..at + record_len as usize];
    let (key, crcs) = verify_prefix(&header, &record[..header.checked_prefix_len() as usize])?;
    if header.kind == RecordKind::Padding {
        return Ok(ScannedRecord {
            header,
            key: Vec::new(),
            object_len: 0,
        });
    }
    let body_at = header.body_offset() as usize;
    let body = &record[body_at..body_at + header.body_len as usize];
    verify_blocks(&crcs, 0, body)?;
    let object_len = match header.kind {
        RecordKind::Blob => header.body_len,
        RecordKind::Manifest => decode_manifest(body).map_err(RecordError::Invalid)?.0,
        RecordKind::Tombstone | RecordKind::Chunk | RecordKind::Directory => 0,
        RecordKind::Padding => 0,
    };
    if header.kind.is_findable() && header.namespace == Namespace::NONE {
        return Err(RecordError::Invalid(
            "findable record without namespace".into(),
        ));
    }
    Ok(ScannedRecord {
        header,
        key: key.to_vec(),
        object_len,
    })
}

/// Whether a valid record header (checksum included) starts at `offset`.
fn record_starts_at(bytes: &[u8], segment_id: u64, offset: u64) -> bool {
    let at = offset as usize;
    if at + RECORD_HEADER_BYTES as usize > bytes.len() {
        return false;
    }
    let Ok(header) = RecordHeader::parse(&bytes[at..], segment_id, offset) else {
        return false;
    };
    let prefix_end = at as u64 + header.checked_prefix_len();
    if prefix_end > bytes.len() as u64 {
        return false;
    }
    verify_prefix(&header, &bytes[at..prefix_end as usize]).is_ok()
}

/// The next page-aligned offset after `from` where a valid record header starts.
fn next_record_start(bytes: &[u8], segment_id: u64, from: u64, end: u64) -> Option<u64> {
    let mut offset = align_up(from + 1, PAGE_BYTES);
    while offset + RECORD_HEADER_BYTES <= end {
        if record_starts_at(bytes, segment_id, offset) {
            return Some(offset);
        }
        offset += PAGE_BYTES;
    }
    None
}

/// Reads and checks the segment header at the start of `bytes`.
pub fn read_segment_header(bytes: &[u8]) -> Result<SegmentHeader, String> {
    SegmentHeader::decode(bytes)
}

/// Scans records of segment `segment_id` in `bytes[SEGMENT_HEADER_BYTES..end]`. At damage it
/// resumes at the next page-aligned valid record (every batch starts on a page, so only the
/// rest of the damaged batch is skipped), and every damaged place is listed. Stops at a directory record (the end of a sealed segment's data).
pub fn scan_records(bytes: &[u8], segment_id: u64, end: u64) -> Scan {
    let end = end.min(bytes.len() as u64);
    let bytes = &bytes[..end as usize];
    let mut scan = Scan {
        valid_end: SEGMENT_HEADER_BYTES,
        ..Scan::default()
    };
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut damaged = false;
    while offset + RECORD_HEADER_BYTES <= end {
        match check_record(bytes, segment_id, offset) {
            Ok(record) => {
                let len = record.header.record_len();
                if record.header.kind == RecordKind::Directory {
                    scan.directory_at = Some(offset);
                    break;
                }
                if record.header.kind != RecordKind::Padding {
                    scan.records.push(record);
                }
                offset += len;
                if !damaged {
                    scan.valid_end = offset;
                }
            }
            Err(error) => {
                let at = offset as usize;
                let zeros = bytes[at..at + RECORD_HEADER_BYTES as usize]
                    .iter()
                    .all(|&b| b == 0);
                let resumed_at = next_record_start(bytes, segment_id, offset, end);
                if !(zeros && resumed_at.is_none()) {
                    scan.damage.push(Damage {
                        offset,
                        reason: if zeros {
                            "unwritten (zero) bytes before later records".to_string()
                        } else {
                            error.to_string()
                        },
                        resumed_at,
                    });
                }
                damaged = true;
                match resumed_at {
                    Some(next) => offset = next,
                    None => break,
                }
            }
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::format::{encode_padding, encode_record, padding_bytes, FORMAT_VERSION};

    fn segment_with(records: &[(&[u8], &[u8])]) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = vec![0u8; 64 * 1024];
        SegmentHeader {
            format_version: FORMAT_VERSION,
            segment_id: 1,
            created_unix_ms: 0,
            segment_size_bytes_max: 64 * 1024,
            flags: 0,
        }
        .encode(&mut bytes[..64]);
        let mut offset = SEGMENT_HEADER_BYTES;
        let mut offsets = Vec::new();
        for (i, (key, body)) in records.iter().enumerate() {
            let h = RecordHeader {
                kind: RecordKind::Blob,
                namespace: Namespace::OBJECT,
                key_len: key.len() as u16,
                body_len: body.len() as u64,
                segment_id: 1,
                offset,
                seq: i as u64 + 1,
                generation: 0,
                flags: 0,
            };
            let len = h.record_len() as usize;
            encode_record(
                &mut bytes[offset as usize..offset as usize + len],
                &h,
                key,
                body,
            );
            offsets.push(offset);
            offset += len as u64;
            let pad = padding_bytes(offset) as usize;
            if pad > 0 {
                encode_padding(
                    &mut bytes[offset as usize..offset as usize + pad],
                    1,
                    offset,
                );
                offset += pad as u64;
            }
        }
        (bytes, offsets)
    }

    #[test]
    fn clean_segment_scans_to_its_end() {
        let (bytes, offsets) = segment_with(&[(b"a", b"hello"), (b"b", b"world")]);
        let scan = scan_records(&bytes, 1, bytes.len() as u64);
        assert_eq!(scan.records.len(), 2);
        assert!(scan.damage.is_empty(), "{:?}", scan.damage);
        assert_eq!(scan.records[1].header.offset, offsets[1]);
    }

    #[test]
    fn damage_is_listed_and_later_records_still_found() {
        let (mut bytes, offsets) =
            segment_with(&[(b"a", b"hello"), (b"b", b"world"), (b"c", b"again")]);
        bytes[offsets[1] as usize + 73] ^= 0xff;
        let scan = scan_records(&bytes, 1, bytes.len() as u64);
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.damage.len(), 1);
        assert_eq!(scan.damage[0].offset, offsets[1]);
        assert_eq!(scan.damage[0].resumed_at, Some(offsets[2]));
        assert!(scan.valid_end <= offsets[1] + PAGE_BYTES);
    }
}
