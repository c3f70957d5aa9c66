//! Extraction from a Part-10 stream: file meta group, then the data set up to Pixel Data,
//! through the fast path when the transfer syntax is Explicit VR Little Endian.
//!
//! Feed the stream's bytes as they arrive ([`Extractor::feed`]); once it reports Pixel Data
//! (or the stream ends), [`Extractor::finish`] gives the indexed attributes. Memory: the file
//! meta group (bounded) plus what the fast path holds (bounded), never pixel data.

use super::explicit_le::{
    ExplicitLeScanner, PixelDataAt, Progress, ScanError, ScanLimits, Scanned,
};
use super::meta::{read_file_meta, ts, FileMeta, MetaError, MetaLimits};
use super::Tag;

/// Attributes the archive indexes (PS3.4 C.6 / PS3.18 required matching and return keys), and
/// those a frame map needs.
pub const INDEXED: &[Tag] = &[
    Tag::new(0x0008, 0x0005), // SpecificCharacterSet
    Tag::new(0x0008, 0x0016), // SOPClassUID
    Tag::new(0x0008, 0x0018), // SOPInstanceUID
    Tag::new(0x0008, 0x0020), // StudyDate
    Tag::new(0x0008, 0x0030), // StudyTime
    Tag::new(0x0008, 0x0050), // AccessionNumber
    Tag::new(0x0008, 0x0060), // Modality
    Tag::new(0x0008, 0x0090), // ReferringPhysicianName
    Tag::new(0x0008, 0x1030), // StudyDescription
    Tag::new(0x0008, 0x103E), // SeriesDescription
    Tag::new(0x0010, 0x0010), // PatientName
    Tag::new(0x0010, 0x0020), // PatientID
    Tag::new(0x0010, 0x0021), // IssuerOfPatientID
    Tag::new(0x0010, 0x0030), // PatientBirthDate
    Tag::new(0x0010, 0x0040), // PatientSex
    Tag::new(0x0018, 0x0015), // BodyPartExamined
    Tag::new(0x0020, 0x000D), // StudyInstanceUID
    Tag::new(0x0020, 0x000E), // SeriesInstanceUID
    Tag::new(0x0020, 0x0010), // StudyID
    Tag::new(0x0020, 0x0011), // SeriesNumber
    Tag::new(0x0020, 0x0013), // InstanceNumber
    Tag::new(0x0028, 0x0002), // SamplesPerPixel
    Tag::new(0x0028, 0x0008), // NumberOfFrames
    Tag::new(0x0028, 0x0010), // Rows
    Tag::new(0x0028, 0x0011), // Columns
    Tag::new(0x0028, 0x0100), // BitsAllocated
    Tag::new(0x0040, 0x0244), // PerformedProcedureStepStartDate
];

fn is_indexed(tag: Tag) -> bool {
    INDEXED.binary_search(&tag).is_ok()
}

/// Why extraction stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The transfer syntax needs the general (dicom-parser) path, which is not built yet.
    #[error("transfer syntax {0} is not handled by the fast path")]
    NeedsGeneralPath(String),
}

/// What extraction found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub meta: FileMeta,
    /// Indexed attributes found at the top level, in stream order, with their raw values.
    pub data_set: Scanned,
}

impl Extracted {
    /// The raw value of `tag`, if present.
    pub fn raw(&self, tag: Tag) -> Option<&[u8]> {
        let data_set = &self.data_set;
        data_set
            .elements
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| data_set.value(e))
    }

    /// Where top-level Pixel Data starts, if the object has it.
    pub fn pixel_data(&self) -> Option<PixelDataAt> {
        self.data_set.pixel_data
    }

    /// A text value without its padding (trailing spaces and NULs; leading spaces too for
    /// number strings). Character sets are not applied yet: bytes are read as UTF-8, lossily.
    pub fn text(&self, tag: Tag) -> Option<String> {
        let raw = self.raw(tag)?;
        let end = raw
            .iter()
            .rposition(|&b| b != 0 && b != b' ')
            .map_or(0, |i| i + 1);
        Some(
            String::from_utf8_lossy(&raw[..end])
                .trim_start()
                .to_string(),
        )
    }

    /// An unsigned short (US) value.
    pub fn u16(&self, tag: Tag) -> Option<u16> {
        let raw = self.raw(tag)?;
        (raw.len() >= 2).then(|| u16::from_le_bytes([raw[0], raw[1]]))
    }

    /// An integer string (IS) value.
    pub fn int(&self, tag: Tag) -> Option<i64> {
        self.text(tag)?.parse().ok()
    }
}

/// The fast path over the indexed attributes.
type IndexedScanner = ExplicitLeScanner<fn(Tag) -> bool>;

enum State {
    /// Collecting the preamble and file meta group.
    Meta(Vec<u8>),
    /// Scanning the data set.
    Body(Box<(FileMeta, IndexedScanner)>),
}

/// See the module documentation.
pub struct Extractor {
    state: State,
    meta_limits: MetaLimits,
    scan_limits: ScanLimits,
}

impl Extractor {
    pub fn new(meta_limits: MetaLimits, scan_limits: ScanLimits) -> Self {
        Extractor {
            state: State::Meta(Vec::new()),
            meta_limits,
            scan_limits,
        }
    }

    /// Feeds the next bytes; `Progress::PixelData` means nothing more is needed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Progress, ExtractError> {
        match &mut self.state {
            State::Body(body) => Ok(body.1.feed(chunk)?),
            State::Meta(buf) if buf.is_empty() => {
                // Zero-copy when the first chunk holds the whole file meta group.
                match read_file_meta(chunk, self.meta_limits)? {
                    Some(meta) => self.start_data_set(meta, chunk),
                    None => {
                        buf.extend_from_slice(chunk);
                        Ok(Progress::NeedMore)
                    }
                }
            }
            State::Meta(buf) => {
                let meta_bytes_max = 132 + self.meta_limits.group_bytes_max as usize + 12;
                let take = chunk
                    .len()
                    .min(meta_bytes_max.saturating_sub(buf.len()).max(1));
                buf.extend_from_slice(&chunk[..take.min(chunk.len())]);
                let rest = &chunk[take.min(chunk.len())..];
                let Some(meta) = read_file_meta(buf, self.meta_limits)? else {
                    if buf.len() >= meta_bytes_max {
                        return Err(MetaError::Limit {
                            what: "bytes before the data set",
                            value: buf.len() as u64,
                            max: meta_bytes_max as u64,
                        }
                        .into());
                    }
                    return match rest.is_empty() {
                        true => Ok(Progress::NeedMore),
                        false => self.feed(rest),
                    };
                };
                let already = std::mem::take(buf);
                let progress = self.start_data_set(meta, &already[..])?;
                match (progress, rest.is_empty()) {
                    (Progress::NeedMore, false) => self.feed(rest),
                    _ => Ok(progress),
                }
            }
        }
    }

    /// Starts the fast path on the data set; `stream` holds the stream from its first byte.
    fn start_data_set(&mut self, meta: FileMeta, stream: &[u8]) -> Result<Progress, ExtractError> {
        if meta.transfer_syntax_uid != ts::EXPLICIT_VR_LE {
            return Err(ExtractError::NeedsGeneralPath(meta.transfer_syntax_uid));
        }
        let start = meta.data_set_offset;
        let mut scanner =
            ExplicitLeScanner::new(start, is_indexed as fn(Tag) -> bool, self.scan_limits);
        let progress = scanner.feed(&stream[start as usize..])?;
        self.state = State::Body(Box::new((meta, scanner)));
        Ok(progress)
    }

    /// Ends the stream (or stops after Pixel Data) and returns what was found.
    pub fn finish(self) -> Result<Extracted, ExtractError> {
        match self.state {
            State::Meta(buf) => match read_file_meta(&buf, self.meta_limits)? {
                Some(meta) => {
                    // The stream ended right after the meta group: an empty data set.
                    if meta.transfer_syntax_uid != ts::EXPLICIT_VR_LE {
                        return Err(ExtractError::NeedsGeneralPath(meta.transfer_syntax_uid));
                    }
                    let start = meta.data_set_offset;
                    let mut scanner = ExplicitLeScanner::new(
                        start,
                        is_indexed as fn(Tag) -> bool,
                        self.scan_limits,
                    );
                    scanner.feed(&buf[start as usize..])?;
                    Ok(Extracted {
                        meta,
                        data_set: scanner.finish()?,
                    })
                }
                None => Err(MetaError::NotDicom(format!(
                    "stream ended after {} bytes, inside the file meta information",
                    buf.len()
                ))
                .into()),
            },
            State::Body(body) => {
                let (meta, scanner) = *body;
                Ok(Extracted {
                    meta,
                    data_set: scanner.finish()?,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::dicom::explicit_le::encode_element as el;

    fn part10(transfer_syntax: &[u8], data_set: &[u8]) -> Vec<u8> {
        let body = [
            el(Tag::new(0x0002, 0x0001), b"OB", &[0, 1]),
            el(
                Tag::new(0x0002, 0x0002),
                b"UI",
                b"1.2.840.10008.5.1.4.1.1.2\0",
            ),
            el(Tag::new(0x0002, 0x0003), b"UI", b"1.2.3.4.5\0"),
            el(Tag::new(0x0002, 0x0010), b"UI", transfer_syntax),
        ]
        .concat();
        [
            vec![0u8; 128],
            b"DICM".to_vec(),
            el(
                Tag::new(0x0002, 0x0000),
                b"UL",
                &(body.len() as u32).to_le_bytes(),
            ),
            body,
            data_set.to_vec(),
        ]
        .concat()
    }

    fn ct_data_set() -> Vec<u8> {
        [
            el(
                Tag::new(0x0008, 0x0016),
                b"UI",
                b"1.2.840.10008.5.1.4.1.1.2\0",
            ),
            el(Tag::new(0x0008, 0x0018), b"UI", b"1.2.3.4.5\0"),
            el(Tag::new(0x0008, 0x0060), b"CS", b"CT"),
            el(Tag::new(0x0009, 0x0010), b"LO", b"PRIVATE CREATOR "),
            el(Tag::new(0x0010, 0x0010), b"PN", b"Virtanen^Aino"),
            el(Tag::new(0x0010, 0x0020), b"LO", b"010203-123A "),
            el(Tag::new(0x0020, 0x0013), b"IS", b" 42 "),
            el(Tag::new(0x0028, 0x0010), b"US", &512u16.to_le_bytes()),
            el(Tag::new(0x0028, 0x0011), b"US", &512u16.to_le_bytes()),
            el(Tag::PIXEL_DATA, b"OW", &vec![0u8; 2048]),
        ]
        .concat()
    }

    #[test]
    fn indexed_tags_are_sorted_for_binary_search() {
        assert!(INDEXED.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn extracts_indexed_attributes_from_a_streamed_part10_object() {
        let stream = part10(b"1.2.840.10008.1.2.1\0", &ct_data_set());
        for chunk in [1, 5, 100, 131, 132, 200, stream.len()] {
            let mut extractor = Extractor::new(MetaLimits::default(), ScanLimits::default());
            let mut reached = false;
            for piece in stream.chunks(chunk) {
                if let Progress::PixelData(_) = extractor.feed(piece).expect("feed") {
                    reached = true;
                    break;
                }
            }
            assert!(reached, "chunk {chunk}");
            let found = extractor.finish().expect("finish");
            assert_eq!(found.meta.transfer_syntax_uid, ts::EXPLICIT_VR_LE);
            assert_eq!(found.text(Tag::new(0x0008, 0x0060)).as_deref(), Some("CT"));
            assert_eq!(
                found.text(Tag::new(0x0010, 0x0020)).as_deref(),
                Some("010203-123A")
            );
            assert_eq!(
                found.text(Tag::new(0x0010, 0x0010)).as_deref(),
                Some("Virtanen^Aino")
            );
            assert_eq!(found.int(Tag::new(0x0020, 0x0013)), Some(42));
            assert_eq!(found.u16(Tag::new(0x0028, 0x0010)), Some(512));
            assert_eq!(found.raw(Tag::new(0x0009, 0x0010)), None, "not indexed");
            let pixel = found.pixel_data().expect("pixel data");
            assert_eq!(pixel.length, Some(2048));
            assert_eq!(pixel.value_offset as usize, stream.len() - 2048);
        }
    }

    #[test]
    fn other_transfer_syntaxes_are_handed_to_the_general_path() {
        let stream = part10(b"1.2.840.10008.1.2\0", &ct_data_set());
        let mut extractor = Extractor::new(MetaLimits::default(), ScanLimits::default());
        assert_eq!(
            extractor.feed(&stream),
            Err(ExtractError::NeedsGeneralPath(
                ts::IMPLICIT_VR_LE.to_string()
            ))
        );
    }

    #[test]
    fn a_stream_that_ends_early_gets_a_specific_error() {
        let stream = part10(b"1.2.840.10008.1.2.1\0", &ct_data_set());
        for cut in [10, 140, 250, stream.len() - 2063] {
            let mut extractor = Extractor::new(MetaLimits::default(), ScanLimits::default());
            let _ = extractor.feed(&stream[..cut]);
            let err = extractor.finish().expect_err("truncated");
            assert!(
                matches!(
                    err,
                    ExtractError::Meta(MetaError::NotDicom(_))
                        | ExtractError::Scan(ScanError::Malformed { .. })
                ),
                "cut {cut}: {err}"
            );
        }
    }
}
