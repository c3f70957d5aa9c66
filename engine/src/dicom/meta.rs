//! The Part-10 file preamble and file meta information (group 0002), which is always Explicit
//! VR Little Endian (PS3.10 7.1). Every length is checked against limits and against the bytes
//! present before anything is kept: a short lying input can make it allocate nothing.

use super::Tag;

/// Transfer syntax UIDs the archive must recognise.
pub mod ts {
    pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
    pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
    pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
    pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
    /// JPIP Referenced Deflate: a deflated data set, like Deflated Explicit VR LE.
    pub const JPIP_DEFLATE: &str = "1.2.840.10008.1.2.4.95";
}

/// Bounds on the file meta group.
#[derive(Debug, Clone, Copy)]
pub struct MetaLimits {
    /// Longest file meta group (all group 0002 elements).
    pub group_bytes_max: u32,
    /// Longest single value in it.
    pub value_bytes_max: u32,
}

impl Default for MetaLimits {
    fn default() -> Self {
        MetaLimits {
            group_bytes_max: 64 * 1024,
            value_bytes_max: 4096,
        }
    }
}

/// What the file meta group says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileMeta {
    /// Whether the 128-byte preamble and `DICM` were present.
    pub has_preamble: bool,
    pub media_storage_sop_class_uid: String,
    pub media_storage_sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub implementation_class_uid: Option<String>,
    pub implementation_version_name: Option<String>,
    pub source_application_entity_title: Option<String>,
    /// Stream offset where the data set starts.
    pub data_set_offset: u64,
}

/// Why the file meta group cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("not a DICOM Part-10 stream: {0}")]
    NotDicom(String),
    #[error("file meta information malformed at offset {offset}: {reason}")]
    Malformed { offset: u64, reason: String },
    #[error("file meta information: {what} is {value}, the limit is {max}")]
    Limit {
        what: &'static str,
        value: u64,
        max: u64,
    },
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A UID or short string value without its padding (trailing NUL or space).
fn text(value: &[u8]) -> String {
    let end = value
        .iter()
        .rposition(|&b| b != 0 && b != b' ')
        .map_or(0, |i| i + 1);
    let value = &value[..end];
    // UIDs and AE titles are ASCII: skip the lossy decoder's machinery for them.
    match std::str::from_utf8(value) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(value).into_owned(),
    }
}

/// Kuvasto's Implementation Class UID (a UUID-derived UID, PS3.5 B.2), written in the file meta
/// groups it creates.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.190383722851164455416829387526470181969";
/// Kuvasto's Implementation Version Name.
pub const IMPLEMENTATION_VERSION_NAME: &str = "KUVASTO_0_1";

/// A Part-10 preamble (zeros), `DICM` and a file meta group (PS3.10 7.1) for a data set: what
/// an instance received without one (over DIMSE, or a raw data set) is stored with. UIDs are
/// padded with NUL, the version name with a space, to even length.
pub fn encode_file_meta(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax_uid: &str,
) -> Vec<u8> {
    use super::explicit_le::encode_element as el;
    let padded = |s: &str, pad: u8| {
        let mut value = s.as_bytes().to_vec();
        if value.len() % 2 == 1 {
            value.push(pad);
        }
        value
    };
    let body = [
        el(Tag::new(0x0002, 0x0001), b"OB", &[0, 1]),
        el(Tag::new(0x0002, 0x0002), b"UI", &padded(sop_class_uid, 0)),
        el(
            Tag::new(0x0002, 0x0003),
            b"UI",
            &padded(sop_instance_uid, 0),
        ),
        el(
            Tag::new(0x0002, 0x0010),
            b"UI",
            &padded(transfer_syntax_uid, 0),
        ),
        el(
            Tag::new(0x0002, 0x0012),
            b"UI",
            &padded(IMPLEMENTATION_CLASS_UID, 0),
        ),
        el(
            Tag::new(0x0002, 0x0013),
            b"SH",
            &padded(IMPLEMENTATION_VERSION_NAME, b' '),
        ),
    ]
    .concat();
    let group_length = el(
        Tag::new(0x0002, 0x0000),
        b"UL",
        &(body.len() as u32).to_le_bytes(),
    );
    [&[0u8; 128][..], b"DICM", &group_length, &body].concat()
}

fn starts_group_2(b: &[u8]) -> bool {
    b.len() >= 4 && b[0] == 0x02 && b[1] == 0x00
}

/// Reads the preamble (optional) and the file meta group from the first bytes of a stream.
/// `Ok(None)`: more bytes are needed (at most 132 + `group_bytes_max` + 12 in all).
pub fn read_file_meta(bytes: &[u8], limits: MetaLimits) -> Result<Option<FileMeta>, MetaError> {
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        return read_group(bytes, 132, limits);
    }
    if starts_group_2(bytes) {
        // No preamble — unless this is the start of a preamble that happens to begin like a
        // group 0002 tag: below 132 bytes, only a complete, valid group decides.
        let read = read_group(bytes, 0, limits);
        if bytes.len() < 132 && !matches!(read, Ok(Some(_))) {
            return Ok(None);
        }
        return read;
    }
    if bytes.len() < 132 {
        // Too short to tell unless the marker's first bytes are already wrong.
        let seen = bytes.get(128..).unwrap_or(&[]);
        return if b"DICM".starts_with(seen) {
            Ok(None)
        } else {
            Err(MetaError::NotDicom(
                "no DICM marker after the preamble".into(),
            ))
        };
    }
    Err(MetaError::NotDicom(
        "neither a 128-byte preamble with DICM nor a file meta group at the start".into(),
    ))
}

/// Reads group 0002 starting at `start`.
fn read_group(
    bytes: &[u8],
    start: usize,
    limits: MetaLimits,
) -> Result<Option<FileMeta>, MetaError> {
    let mut meta = FileMeta {
        has_preamble: start == 132,
        media_storage_sop_class_uid: String::new(),
        media_storage_sop_instance_uid: String::new(),
        transfer_syntax_uid: String::new(),
        implementation_class_uid: None,
        implementation_version_name: None,
        source_application_entity_title: None,
        data_set_offset: 0,
    };
    let mut at = start;
    let mut group_end: Option<usize> = None;
    loop {
        if group_end == Some(at) {
            break;
        }
        if bytes.len() < at + 8 {
            return Ok(None);
        }
        if le_u16(bytes, at) != 0x0002 {
            if group_end.is_some() {
                return Err(MetaError::Malformed {
                    offset: at as u64,
                    reason: "group length does not end on an element boundary".into(),
                });
            }
            break; // no group length: the group ends where group 0002 does
        }
        let tag = Tag::new(0x0002, le_u16(bytes, at + 2));
        let vr = [bytes[at + 4], bytes[at + 5]];
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(MetaError::Malformed {
                offset: at as u64,
                reason: format!("{tag} has no explicit VR"),
            });
        }
        let (length, header) = if matches!(&vr, b"OB" | b"UN" | b"UT" | b"UC" | b"UR" | b"SQ") {
            if bytes.len() < at + 12 {
                return Ok(None);
            }
            (le_u32(bytes, at + 8), 12usize)
        } else {
            (u32::from(le_u16(bytes, at + 6)), 8usize)
        };
        if length > limits.value_bytes_max {
            return Err(MetaError::Limit {
                what: "a file meta value's length",
                value: u64::from(length),
                max: u64::from(limits.value_bytes_max),
            });
        }
        let value_at = at + header;
        let end = value_at + length as usize;
        if end - start > limits.group_bytes_max as usize {
            return Err(MetaError::Limit {
                what: "the file meta group's length",
                value: (end - start) as u64,
                max: u64::from(limits.group_bytes_max),
            });
        }
        if bytes.len() < end {
            return Ok(None);
        }
        let value = &bytes[value_at..end];
        match tag.element() {
            0x0000 => {
                if length != 4 {
                    return Err(MetaError::Malformed {
                        offset: at as u64,
                        reason: "(0002,0000) is not a 4-byte UL".into(),
                    });
                }
                let group_length = le_u32(value, 0);
                if group_length > limits.group_bytes_max {
                    return Err(MetaError::Limit {
                        what: "the declared file meta group length",
                        value: u64::from(group_length),
                        max: u64::from(limits.group_bytes_max),
                    });
                }
                group_end = Some(end + group_length as usize);
            }
            0x0002 => meta.media_storage_sop_class_uid = text(value),
            0x0003 => meta.media_storage_sop_instance_uid = text(value),
            0x0010 => meta.transfer_syntax_uid = text(value),
            0x0012 => meta.implementation_class_uid = Some(text(value)),
            0x0013 => meta.implementation_version_name = Some(text(value)),
            0x0016 => meta.source_application_entity_title = Some(text(value)),
            _ => {}
        }
        at = end;
    }
    if meta.transfer_syntax_uid.is_empty() {
        return Err(MetaError::Malformed {
            offset: start as u64,
            reason: "no (0002,0010) Transfer Syntax UID".into(),
        });
    }
    meta.data_set_offset = at as u64;
    Ok(Some(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::dicom::explicit_le::encode_element;

    /// A file meta element (group 0002).
    fn el(element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        encode_element(Tag::new(0x0002, element), vr, value)
    }

    fn group(with_length: bool) -> Vec<u8> {
        let body = [
            el(0x0001, b"OB", &[0, 1]),
            el(0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
            el(0x0003, b"UI", b"1.2.3.4.5\0"),
            el(0x0010, b"UI", b"1.2.840.10008.1.2.1\0"),
            el(0x0012, b"UI", b"1.2.826.0.1\0"),
        ]
        .concat();
        if with_length {
            [el(0x0000, b"UL", &(body.len() as u32).to_le_bytes()), body].concat()
        } else {
            body
        }
    }

    fn data_set() -> Vec<u8> {
        // (0008,0060) CS "CT"
        vec![0x08, 0x00, 0x60, 0x00, b'C', b'S', 2, 0, b'C', b'T']
    }

    #[test]
    fn an_encoded_file_meta_group_reads_back() {
        let bytes = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", ts::EXPLICIT_VR_LE);
        let meta = read_file_meta(&bytes, MetaLimits::default())
            .expect("valid")
            .expect("complete");
        assert_eq!(
            meta.media_storage_sop_class_uid,
            "1.2.840.10008.5.1.4.1.1.2"
        );
        assert_eq!(meta.media_storage_sop_instance_uid, "1.2.3");
        assert_eq!(meta.transfer_syntax_uid, ts::EXPLICIT_VR_LE);
        assert_eq!(
            meta.implementation_class_uid.as_deref(),
            Some(IMPLEMENTATION_CLASS_UID)
        );
        assert_eq!(meta.data_set_offset, bytes.len() as u64);
    }

    #[test]
    fn reads_with_and_without_preamble_and_group_length() {
        for (preamble, with_length) in [(true, true), (false, true), (true, false), (false, false)]
        {
            let mut bytes = Vec::new();
            if preamble {
                bytes.extend_from_slice(&[0u8; 128]);
                bytes.extend_from_slice(b"DICM");
            }
            bytes.extend(group(with_length));
            let data_set_at = bytes.len() as u64;
            bytes.extend(data_set());
            let meta = read_file_meta(&bytes, MetaLimits::default())
                .expect("valid")
                .expect("complete");
            assert_eq!(meta.has_preamble, preamble);
            assert_eq!(meta.transfer_syntax_uid, ts::EXPLICIT_VR_LE);
            assert_eq!(meta.media_storage_sop_instance_uid, "1.2.3.4.5");
            assert_eq!(
                meta.implementation_class_uid.as_deref(),
                Some("1.2.826.0.1")
            );
            assert_eq!(meta.data_set_offset, data_set_at);
            // Every shorter prefix asks for more bytes, never errs or guesses (a group without
            // a length ends only where the data set's first element shows it).
            for cut in 0..data_set_at as usize {
                match read_file_meta(&bytes[..cut], MetaLimits::default()) {
                    Ok(None) => {}
                    other => panic!("prefix {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_preamble_that_starts_like_group_0002_is_still_a_preamble() {
        let mut bytes = vec![0x02, 0x00, 0x10, 0x00];
        bytes.resize(128, 0xAA);
        bytes.extend_from_slice(b"DICM");
        bytes.extend(group(true));
        bytes.extend(data_set());
        for cut in [4, 64, 131] {
            assert_eq!(
                read_file_meta(&bytes[..cut], MetaLimits::default()),
                Ok(None)
            );
        }
        let meta = read_file_meta(&bytes, MetaLimits::default())
            .expect("valid")
            .expect("complete");
        assert!(meta.has_preamble);
        assert_eq!(meta.media_storage_sop_instance_uid, "1.2.3.4.5");
    }

    fn with_preamble(group: &[u8]) -> Vec<u8> {
        [&[0u8; 128][..], b"DICM", group].concat()
    }

    #[test]
    fn lying_lengths_and_non_dicom_get_specific_errors() {
        let mut huge = group(true);
        huge[8..12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let huge = with_preamble(&huge);
        assert!(matches!(
            read_file_meta(&huge, MetaLimits::default()),
            Err(MetaError::Limit {
                what: "the declared file meta group length",
                ..
            })
        ));
        let mut long_value = el(0x0001, b"OB", &[0, 1]);
        long_value[8..12].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        let long_value = with_preamble(&long_value);
        assert!(matches!(
            read_file_meta(&long_value, MetaLimits::default()),
            Err(MetaError::Limit {
                what: "a file meta value's length",
                ..
            })
        ));
        let not_dicom = vec![b'x'; 200];
        assert!(matches!(
            read_file_meta(&not_dicom, MetaLimits::default()),
            Err(MetaError::NotDicom(_))
        ));
        let without_ts = with_preamble(&[el(0x0002, b"UI", b"1.2\0"), data_set()].concat());
        assert!(matches!(
            read_file_meta(&without_ts, MetaLimits::default()),
            Err(MetaError::Malformed { .. })
        ));
    }
}
