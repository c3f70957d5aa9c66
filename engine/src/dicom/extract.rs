//! Extraction from a Part-10 stream: file meta group, then the data set up to Pixel Data,
//! through the fast path when the transfer syntax is Explicit VR Little Endian.
//!
//! Feed the stream's bytes as they arrive ([`Extractor::feed`]); once it reports Pixel Data
//! (or the stream ends), [`Extractor::finish`] gives the indexed attributes. Memory: the file
//! meta group (bounded) plus what the fast path holds (bounded), never pixel data.

use super::charset::CharacterSets;
use super::explicit_le::{
    has_long_length, ExplicitLeScanner, PixelDataAt, Progress, ScanError, ScanLimits, Scanned,
    SortedTags,
};
use super::general::{
    extract_general_resume, looks_like_part10_without_meta, GeneralOutcome, GeneralPartial,
};
use super::meta::{read_file_meta, ts, FileMeta, MetaError, MetaLimits};
use super::Tag;
use crate::index::attrs::{tags, InstanceAttrs};
use std::sync::Arc;

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
    Tag::new(0x0028, 0x0004), // PhotometricInterpretation
    Tag::new(0x0028, 0x0008), // NumberOfFrames
    Tag::new(0x0028, 0x0010), // Rows
    Tag::new(0x0028, 0x0011), // Columns
    Tag::new(0x0028, 0x0100), // BitsAllocated
    Tag::new(0x0040, 0x0244), // PerformedProcedureStepStartDate
    Tag::new(0x7FE0, 0x0001), // ExtendedOffsetTable
    Tag::new(0x7FE0, 0x0002), // ExtendedOffsetTableLengths
];

/// Why extraction stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Scan(#[from] ScanError),
}

/// What extraction found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub meta: FileMeta,
    /// Which path read the data set.
    pub path: ExtractPath,
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

    /// The data set's character sets ((0008,0005); the default repertoire when absent or
    /// not understood — an unknown term must not make the object unreadable).
    pub fn character_sets(&self) -> CharacterSets {
        self.raw(tags::SPECIFIC_CHARACTER_SET)
            .and_then(|raw| CharacterSets::parse(raw).ok())
            .unwrap_or_default()
    }

    /// A text value decoded per Specific Character Set, without its padding (trailing spaces
    /// and NULs, leading spaces).
    pub fn text(&self, tag: Tag) -> Option<String> {
        self.text_with(&self.character_sets(), tag)
    }

    fn text_with(&self, charsets: &CharacterSets, tag: Tag) -> Option<String> {
        let data_set = &self.data_set;
        let element = data_set.elements.iter().find(|e| e.tag == tag)?;
        let decoded = charsets.decode(element.vr, data_set.value(element));
        Some(
            decoded
                .trim_end_matches([' ', '\0'])
                .trim_start()
                .to_string(),
        )
    }

    /// The indexed attributes, decoded; `extra` are the configured extra attributes.
    pub fn attrs(&self, extra: &[Tag]) -> InstanceAttrs {
        let cs = self.character_sets();
        let t = |tag| self.text_with(&cs, tag).unwrap_or_default();
        let int = |tag| self.text_with(&cs, tag).and_then(|v| v.parse::<i32>().ok());
        let mut extras: Vec<(Tag, String)> = extra
            .iter()
            .filter_map(|&tag| Some((tag, self.text_with(&cs, tag)?)))
            .collect();
        extras.sort_by_key(|(tag, _)| *tag);
        InstanceAttrs {
            patient_id: t(tags::PATIENT_ID),
            issuer_of_patient_id: t(tags::ISSUER_OF_PATIENT_ID),
            patient_name: t(tags::PATIENT_NAME),
            patient_birth_date: t(tags::PATIENT_BIRTH_DATE),
            patient_sex: t(tags::PATIENT_SEX),
            study_instance_uid: t(tags::STUDY_INSTANCE_UID),
            study_date: t(tags::STUDY_DATE),
            study_time: t(tags::STUDY_TIME),
            accession_number: t(tags::ACCESSION_NUMBER),
            study_id: t(tags::STUDY_ID),
            study_description: t(tags::STUDY_DESCRIPTION),
            referring_physician_name: t(tags::REFERRING_PHYSICIAN_NAME),
            modality: t(tags::MODALITY),
            series_instance_uid: t(tags::SERIES_INSTANCE_UID),
            series_number: int(tags::SERIES_NUMBER),
            series_description: t(tags::SERIES_DESCRIPTION),
            body_part_examined: t(tags::BODY_PART_EXAMINED),
            performed_procedure_step_start_date: t(tags::PERFORMED_PROCEDURE_STEP_START_DATE),
            sop_class_uid: t(tags::SOP_CLASS_UID),
            sop_instance_uid: t(tags::SOP_INSTANCE_UID),
            instance_number: int(tags::INSTANCE_NUMBER),
            number_of_frames: self
                .text_with(&cs, tags::NUMBER_OF_FRAMES)
                .and_then(|v| v.parse().ok()),
            rows: self.u16(tags::ROWS),
            columns: self.u16(tags::COLUMNS),
            transfer_syntax_uid: self.meta.transfer_syntax_uid.clone(),
            extra: extras,
        }
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

fn wanted_tags(extra: &[Tag]) -> Arc<[Tag]> {
    static STANDARD: std::sync::OnceLock<Arc<[Tag]>> = std::sync::OnceLock::new();
    if extra.is_empty() {
        // INDEXED is sorted (a unit test checks): share one copy across extractors.
        return STANDARD.get_or_init(|| INDEXED.into()).clone();
    }
    let mut tags: Vec<Tag> = INDEXED.iter().chain(extra).copied().collect();
    tags.sort_unstable();
    tags.dedup();
    tags.into()
}

/// Where the first element of a data set without file meta ends, for the guessed transfer
/// syntax (`None` for an undefined length or too few bytes to tell).
fn first_element_end(bytes: &[u8], transfer_syntax_uid: &str) -> Option<usize> {
    let b = bytes.get(..12)?;
    let u16_at = |at: usize, big: bool| {
        let v = [b[at], b[at + 1]];
        usize::from(if big {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        })
    };
    let u32_at = |at: usize, big: bool| {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        let n = if big {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        };
        (n != u32::MAX).then_some(n as usize)
    };
    match transfer_syntax_uid {
        ts::IMPLICIT_VR_LE => Some(8 + u32_at(4, false)?),
        uid => {
            let big = uid == ts::EXPLICIT_VR_BE;
            let long = has_long_length([b[4], b[5]]);
            if long {
                Some(12 + u32_at(8, big)?)
            } else {
                Some(8 + u16_at(6, big))
            }
        }
    }
}

/// Which path read the data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractPath {
    /// The zero-copy Explicit VR Little Endian scanner.
    Fast,
    /// dicom-parser (other transfer syntaxes, or a data set the fast path declined).
    General {
        /// Offsets refer to the inflated data set (deflated transfer syntaxes).
        inflated: bool,
        /// Declared explicit VR but encoded implicit; read as implicit.
        encoding_mismatch: bool,
    },
}

/// Transfer syntaxes whose data set is Explicit VR Little Endian (the native one and every
/// encapsulated one), which the fast path reads; the rest go to dicom-parser.
fn data_set_is_explicit_le(transfer_syntax_uid: &str) -> bool {
    !matches!(
        transfer_syntax_uid,
        ts::IMPLICIT_VR_LE | ts::EXPLICIT_VR_BE | ts::DEFLATED_EXPLICIT_VR_LE | ts::JPIP_DEFLATE
    )
}

enum State {
    /// Collecting the preamble and file meta group.
    Meta(Vec<u8>),
    /// Scanning the data set with the fast path, retaining a bounded copy of the bytes seen
    /// so far so a decline can hand them to the general path.
    Fast(Box<FastState>),
    /// Buffering the data set for dicom-parser, which runs each time the buffer has doubled.
    General(Box<GeneralState>),
    /// The general path has found everything; further bytes are ignored. The last field
    /// holds the buffered bytes from Pixel Data's value on (the general path reads ahead).
    Done(Box<(FileMeta, Scanned, ExtractPath, Vec<u8>)>),
}

struct FastState {
    meta: FileMeta,
    scanner: ExplicitLeScanner<SortedTags>,
}

struct GeneralState {
    meta: FileMeta,
    /// Data set bytes not yet taken by complete top-level elements.
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    buf_offset: u64,
    /// The complete top-level elements read so far.
    partial: Option<GeneralPartial>,
    next_attempt_bytes: usize,
}

/// First general-path attempt after this many data-set bytes; then after every doubling.
const GENERAL_FIRST_ATTEMPT_BYTES: usize = 64 * 1024;

/// See the module documentation.
pub struct Extractor {
    state: State,
    meta_limits: MetaLimits,
    scan_limits: ScanLimits,
    tags: Arc<[Tag]>,
}

impl Extractor {
    /// An extractor for the indexed attributes.
    pub fn new(meta_limits: MetaLimits, scan_limits: ScanLimits) -> Self {
        Self::with_extra(meta_limits, scan_limits, &[])
    }

    /// An extractor for the indexed attributes plus `extra` top-level attributes.
    pub fn with_extra(meta_limits: MetaLimits, scan_limits: ScanLimits, extra: &[Tag]) -> Self {
        Extractor {
            state: State::Meta(Vec::new()),
            meta_limits,
            scan_limits,
            tags: wanted_tags(extra),
        }
    }

    fn wanted(&self) -> SortedTags {
        SortedTags::new(self.tags.clone())
    }

    /// Feeds the next bytes; `Progress::PixelData` means nothing more is needed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Progress, ExtractError> {
        match &mut self.state {
            State::Done(done) => Ok(match done.1.pixel_data {
                Some(at) => Progress::PixelData(at),
                None => Progress::NeedMore,
            }),
            State::Fast(fast) => match fast.scanner.feed(chunk) {
                Err(ScanError::Decline { offset, reason }) => self.decline(offset, reason, chunk),
                other => Ok(other?),
            },
            State::General(general) => {
                if general.buf.is_empty() && !chunk.is_empty() {
                    // Zero-copy when the first piece holds the whole header (the usual case).
                    if let Some(progress) = self.attempt_general(false, Some(chunk))? {
                        return Ok(progress);
                    }
                    return Ok(Progress::NeedMore);
                }
                let room = self
                    .scan_limits
                    .buffered_bytes_max
                    .saturating_sub(general.buf.len());
                general
                    .buf
                    .extend_from_slice(&chunk[..chunk.len().min(room)]);
                if general.buf.len() < general.next_attempt_bytes && chunk.len() <= room {
                    return Ok(Progress::NeedMore);
                }
                Ok(self
                    .attempt_general(false, None)?
                    .unwrap_or(Progress::NeedMore))
            }
            State::Meta(buf) if buf.is_empty() => {
                // Zero-copy when the first chunk holds the whole file meta group.
                match self.read_meta(chunk, false)? {
                    Some(meta) => self.start_data_set(meta, chunk),
                    None => {
                        if let State::Meta(buf) = &mut self.state {
                            buf.extend_from_slice(chunk);
                        }
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
                let already = std::mem::take(buf);
                let Some(meta) = self.read_meta(&already, false)? else {
                    if already.len() >= meta_bytes_max {
                        return Err(MetaError::Limit {
                            what: "bytes before the data set",
                            value: already.len() as u64,
                            max: meta_bytes_max as u64,
                        }
                        .into());
                    }
                    self.state = State::Meta(already);
                    return match rest.is_empty() {
                        true => Ok(Progress::NeedMore),
                        false => self.feed(rest),
                    };
                };
                let progress = self.start_data_set(meta, &already[..])?;
                match (progress, rest.is_empty()) {
                    (Progress::NeedMore, false) => self.feed(rest),
                    _ => Ok(progress),
                }
            }
        }
    }

    /// The file meta group, once read.
    pub fn meta(&self) -> Option<&FileMeta> {
        match &self.state {
            State::Meta(_) => None,
            State::Fast(f) => Some(&f.meta),
            State::General(g) => Some(&g.meta),
            State::Done(d) => Some(&d.0),
        }
    }

    /// The raw value of a wanted top-level attribute found so far (before [`Self::finish`]).
    pub fn value_so_far(&self, tag: Tag) -> Option<&[u8]> {
        match &self.state {
            State::Fast(f) => f.scanner.value_so_far(tag),
            State::Done(d) => {
                let e = d.1.elements.iter().find(|e| e.tag == tag)?;
                Some(d.1.value(e))
            }
            _ => None,
        }
    }

    /// After the general path reported Pixel Data: the bytes it had already buffered from
    /// Pixel Data's value on (the fast path reports Pixel Data in the chunk that reaches it,
    /// so it has none). Taken once.
    pub fn take_pixel_tail(&mut self) -> Option<Vec<u8>> {
        match &mut self.state {
            State::Done(d) => Some(std::mem::take(&mut d.3)),
            _ => None,
        }
    }

    /// Reads the file meta group; a stream with neither preamble nor meta group whose first
    /// element header looks like a data set is taken as one (old tools write such files).
    ///
    /// The guess looks at the second element header too, so it waits for it (unless the
    /// stream has ended): the answer must not depend on how the stream was cut.
    fn read_meta(&self, bytes: &[u8], at_end: bool) -> Result<Option<FileMeta>, ExtractError> {
        match read_file_meta(bytes, self.meta_limits) {
            Ok(meta) => Ok(meta),
            Err(MetaError::NotDicom(reason)) => {
                // Only what fits in the bytes the meta state may hold is looked at, so that a
                // whole stream and the same stream in pieces get the same answer.
                let window = &bytes[..bytes.len().min(self.meta_bytes_max())];
                match looks_like_part10_without_meta(window) {
                    Some(uid) if bytes.len() >= 8 => {
                        let second_header_end = first_element_end(bytes, uid)
                            .map(|at| (at + 8).min(self.meta_bytes_max()));
                        if !at_end && second_header_end.is_some_and(|end| bytes.len() < end) {
                            return Ok(None);
                        }
                        Ok(Some(FileMeta {
                            has_preamble: false,
                            media_storage_sop_class_uid: String::new(),
                            media_storage_sop_instance_uid: String::new(),
                            transfer_syntax_uid: uid.to_string(),
                            implementation_class_uid: None,
                            implementation_version_name: None,
                            source_application_entity_title: None,
                            data_set_offset: 0,
                        }))
                    }
                    _ => Err(MetaError::NotDicom(reason).into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Most bytes held before the data set starts (preamble, file meta group, or the first
    /// elements of a data set without one).
    fn meta_bytes_max(&self) -> usize {
        132 + self.meta_limits.group_bytes_max as usize + 12
    }

    /// Starts on the data set; `stream` holds the stream from its first byte.
    fn start_data_set(&mut self, meta: FileMeta, stream: &[u8]) -> Result<Progress, ExtractError> {
        let start = meta.data_set_offset;
        let body = &stream[start as usize..];
        if !data_set_is_explicit_le(&meta.transfer_syntax_uid) {
            self.state = State::General(Box::new(GeneralState {
                buf_offset: meta.data_set_offset,
                meta,
                buf: Vec::new(),
                partial: None,
                next_attempt_bytes: GENERAL_FIRST_ATTEMPT_BYTES,
            }));
            return self.feed(body);
        }
        let scanner = ExplicitLeScanner::new(start, self.wanted(), self.scan_limits);
        self.state = State::Fast(Box::new(FastState { meta, scanner }));
        self.feed(body)
    }

    /// The fast path declined. It declines only on VR bytes that are not a VR: at the first
    /// element that means an implicit VR data set under an explicit transfer syntax, and the
    /// bytes seen so far (the scanner's unfinished ones, or `chunk`) are handed to the general
    /// path; later, the data set is malformed for both paths.
    fn decline(
        &mut self,
        offset: u64,
        reason: String,
        chunk: &[u8],
    ) -> Result<Progress, ExtractError> {
        let State::Fast(fast) = std::mem::replace(&mut self.state, State::Meta(Vec::new())) else {
            unreachable!("decline comes from the fast path");
        };
        let (from, held) = fast.scanner.unconsumed();
        if from != fast.meta.data_set_offset {
            // Elements before it were explicit VR: no path reads this data set.
            return Err(ScanError::Malformed { offset, reason }.into());
        }
        let buf = if held.is_empty() {
            chunk.to_vec()
        } else {
            held.to_vec()
        };
        self.state = State::General(Box::new(GeneralState {
            buf_offset: fast.meta.data_set_offset,
            meta: fast.meta,
            next_attempt_bytes: buf.len(),
            buf,
            partial: None,
        }));
        Ok(self
            .attempt_general(false, None)?
            .unwrap_or(Progress::NeedMore))
    }

    /// Runs the general path over the buffered data set, or over `first` (the first piece,
    /// not yet buffered: it is buffered if the header does not end in it). `None`: more bytes
    /// are needed.
    fn attempt_general(
        &mut self,
        at_end: bool,
        first: Option<&[u8]>,
    ) -> Result<Option<Progress>, ExtractError> {
        let State::General(general) = &mut self.state else {
            unreachable!("only called in the general state");
        };
        let wanted = {
            let keep = self.tags.clone();
            move |t: Tag| keep.binary_search(&t).is_ok()
        };
        let data = first.unwrap_or(&general.buf);
        let outcome = extract_general_resume(
            &general.meta.transfer_syntax_uid,
            data,
            general.buf_offset,
            at_end,
            &wanted,
            &self.scan_limits,
            general.partial.take(),
        )?;
        let found = match outcome {
            GeneralOutcome::Done(found) => found,
            GeneralOutcome::More(partial) => {
                // Keep only the bytes not yet taken by complete elements.
                let consumed = partial.as_ref().map_or(0, GeneralPartial::consumed);
                match first {
                    Some(first) => general.buf.extend_from_slice(&first[consumed..]),
                    None => drop(general.buf.drain(..consumed)),
                }
                general.buf_offset += consumed as u64;
                general.partial = partial;
                general.next_attempt_bytes = general
                    .buf
                    .len()
                    .saturating_mul(2)
                    .max(GENERAL_FIRST_ATTEMPT_BYTES);
                return Ok(None);
            }
        };
        let path = ExtractPath::General {
            inflated: found.inflated,
            encoding_mismatch: found.encoding_mismatch,
        };
        let meta = std::mem::take(&mut general.meta);
        let (progress, tail) = match found.scanned.pixel_data {
            // Encapsulated: the fragment walker needs what was read past its start.
            Some(at) if !found.inflated && at.length.is_none() => {
                let from = (at.value_offset - general.buf_offset) as usize;
                let tail = data.get(from..).unwrap_or_default().to_vec();
                (Progress::PixelData(at), tail)
            }
            Some(at) => (Progress::PixelData(at), Vec::new()),
            None => (Progress::NeedMore, Vec::new()),
        };
        self.state = State::Done(Box::new((meta, found.scanned, path, tail)));
        Ok(Some(progress))
    }

    /// Ends the stream (or stops after Pixel Data) and returns what was found.
    pub fn finish(mut self) -> Result<Extracted, ExtractError> {
        if let State::Meta(buf) = &self.state {
            let buf = buf.clone();
            match self.read_meta(&buf, true)? {
                Some(meta) => {
                    // The stream ended in or right after the meta group.
                    self.start_data_set(meta, &buf)?;
                }
                None => {
                    return Err(MetaError::NotDicom(format!(
                        "stream ended after {} bytes, inside the file meta information",
                        buf.len()
                    ))
                    .into())
                }
            }
        }
        if let State::General(_) = self.state {
            self.attempt_general(true, None)?;
        }
        if let State::Fast(fast) = self.state {
            let FastState { meta, scanner } = *fast;
            return Ok(Extracted {
                meta,
                data_set: scanner.finish()?,
                path: ExtractPath::Fast,
            });
        }
        match self.state {
            State::Done(done) => {
                let (meta, data_set, path, _) = *done;
                Ok(Extracted {
                    meta,
                    data_set,
                    path,
                })
            }
            _ => unreachable!("every other state was handled above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::dicom::explicit_le::encode_element as el;

    fn part10(transfer_syntax: &[u8], data_set: &[u8]) -> Vec<u8> {
        let ts = std::str::from_utf8(transfer_syntax)
            .expect("ASCII")
            .trim_end_matches('\0');
        let meta =
            crate::dicom::meta::encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", ts);
        [meta, data_set.to_vec()].concat()
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

    /// Re-encodes an explicit VR LE data set of defined-length elements as implicit VR LE.
    fn to_implicit(explicit: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < explicit.len() {
            let vr = [explicit[at + 4], explicit[at + 5]];
            let long = matches!(&vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT" | b"UC" | b"UR");
            let (len, header) = if long {
                let l = &explicit[at + 8..at + 12];
                (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12)
            } else {
                (
                    usize::from(u16::from_le_bytes([explicit[at + 6], explicit[at + 7]])),
                    8,
                )
            };
            out.extend_from_slice(&explicit[at..at + 4]);
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(&explicit[at + header..at + header + len]);
            at += header + len;
        }
        out
    }

    fn values(found: &Extracted) -> Vec<(Tag, Vec<u8>)> {
        found
            .data_set
            .elements
            .iter()
            .map(|e| (e.tag, found.data_set.value(e).to_vec()))
            .collect()
    }

    #[test]
    fn implicit_vr_goes_through_the_general_path_and_agrees_with_the_fast_path() {
        let explicit = part10(b"1.2.840.10008.1.2.1\0", &ct_data_set());
        let implicit = part10(b"1.2.840.10008.1.2\0", &to_implicit(&ct_data_set()));
        let run = |stream: &[u8], chunk: usize| {
            let mut extractor = Extractor::new(MetaLimits::default(), ScanLimits::default());
            for piece in stream.chunks(chunk) {
                if let Progress::PixelData(_) = extractor.feed(piece).expect("feed") {
                    break;
                }
            }
            extractor.finish().expect("finish")
        };
        let fast = run(&explicit, 1 << 20);
        assert_eq!(fast.path, ExtractPath::Fast);
        for chunk in [1, 7, 100, 1 << 20] {
            let general = run(&implicit, chunk);
            assert!(matches!(general.path, ExtractPath::General { .. }));
            assert_eq!(values(&general), values(&fast), "chunk {chunk}");
            let pixel = general.pixel_data().expect("pixel data");
            assert_eq!(pixel.length, Some(2048));
            assert_eq!(pixel.value_offset as usize, implicit.len() - 2048);
        }
        // Declared explicit but encoded implicit: the fast path declines, the general path
        // reads it and says so.
        let lying = part10(b"1.2.840.10008.1.2.1\0", &to_implicit(&ct_data_set()));
        let found = run(&lying, 64);
        assert_eq!(
            found.path,
            ExtractPath::General {
                inflated: false,
                encoding_mismatch: true
            }
        );
        assert_eq!(values(&found), values(&fast));
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
