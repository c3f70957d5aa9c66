//! The general path: extraction of top-level attributes from a data set in any transfer syntax
//! DICOM-rs knows, over `dicom-parser`'s stateful decoder.
//!
//! Overview. The fast path ([`super::explicit_le`]) reads only Explicit VR Little Endian, as the
//! bytes stream in. Everything else comes here: Implicit VR Little Endian, Explicit VR Big
//! Endian, the deflated syntaxes (inflated first, with a bounded output), and the encapsulated
//! pixel data syntaxes (whose data set is Explicit VR Little Endian; the fast path may decline
//! one, e.g. for UN of undefined length). The caller holds the data set's bytes received so far
//! and calls [`extract_general`] again with more when it answers `Ok(None)`.
//!
//! The result has the fast path's shape ([`Scanned`]), and values are normalised to what the
//! fast path would give for the same data in Explicit VR Little Endian, so later steps never
//! care which path ran: binary numbers from a big endian source are byte-swapped; implicit VR
//! elements get the dictionary's VR (UN for unknown tags); a UN element of a known tag in an
//! explicit syntax is reported with the dictionary's VR (its bytes are implicit VR little
//! endian, PS3.5 6.2.2, so they are kept unswapped). A wanted *sequence* is kept (raw) only
//! when its bytes are already Explicit VR Little Endian, as the fast path keeps it; elsewhere it
//! cannot be normalised without re-encoding, and it is left out.
//!
//! Why the stateful decoder and not `LazyDataSetReader`: the lazy reader descends into every
//! sequence (no depth bound, and it cannot skip a defined-length sequence whole), reads the
//! contents of an undefined-length UN with the explicit decoder although they are implicit VR,
//! and takes the end of the bytes inside a sequence for a clean end of the data set. Walking
//! with `decode_header` / `decode_item_header` / `read_to` / `skip_bytes` keeps those decisions
//! here. The decoders read from `SliceReader`, which counts bytes in a shared cell: it is the
//! source of every offset (the decoder's own `position()` counts declared lengths even when
//! fewer bytes were there, and is not shared between the decoders used for one data set).
//!
//! Bounds: every declared length is checked against [`ScanLimits::wanted_value_bytes_max`]
//! before a wanted value is read, and against the bytes present before anything is read or
//! allocated, so a lying length costs nothing; nesting is bounded by
//! [`ScanLimits::depth_max`]; the data set held before Pixel Data (inflated or not) by
//! [`ScanLimits::buffered_bytes_max`].

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::header::{Length, SequenceItemHeader, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_encoding::decode::basic::BasicDecoder;
use dicom_encoding::decode::explicit_be::ExplicitVRBigEndianDecoder;
use dicom_encoding::decode::explicit_le::ExplicitVRLittleEndianDecoder;
use dicom_encoding::decode::implicit_le::ImplicitVRLittleEndianDecoder;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_encoding::transfer_syntax::DynDecoder;
use dicom_encoding::Endianness;
use dicom_parser::stateful::decode::{StatefulDecode, StatefulDecoder};

use super::explicit_le::{Element, PixelDataAt, ScanError, ScanLimits, Scanned};
use super::meta::ts;
use super::Tag;

/// What [`extract_general`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneralScanned {
    /// Same shape as the fast path's result: wanted top-level elements with values in the
    /// arena, and where Pixel Data starts (stream offsets).
    pub scanned: Scanned,
    /// True for the deflated transfer syntaxes: offsets then refer to the inflated data set
    /// (as if the object had been stored inflated: the data set still starts at
    /// `start_offset`), not to the stream.
    pub inflated: bool,
    /// True when the transfer syntax says explicit VR little endian but the data set is encoded
    /// in implicit VR (a known non-conformance); it was read as implicit VR.
    pub encoding_mismatch: bool,
}

/// JPIP Referenced Deflate: the data set is deflated like in Deflated Explicit VR LE.
const JPIP_REFERENCED_DEFLATE: &str = "1.2.840.10008.1.2.4.95";
/// Every standard transfer syntax UID starts with this; those not named in [`syntax_of`]
/// encapsulate pixel data and encode the data set in explicit VR little endian.
const STANDARD_SYNTAX_PREFIX: &str = "1.2.840.10008.1.2.";
/// How much to inflate before the first attempt; doubled until Pixel Data is reached.
const INFLATE_FIRST_BYTES: usize = 64 * 1024;

/// How the elements of a data set are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    ImplicitLe = 0,
    ExplicitLe = 1,
    ExplicitBe = 2,
}

impl Encoding {
    fn explicit(self) -> bool {
        self != Encoding::ImplicitLe
    }
}

enum Syntax {
    Plain(Encoding),
    Deflated,
}

fn syntax_of(uid: &str) -> Option<Syntax> {
    Some(match uid {
        ts::IMPLICIT_VR_LE => Syntax::Plain(Encoding::ImplicitLe),
        ts::EXPLICIT_VR_BE => Syntax::Plain(Encoding::ExplicitBe),
        ts::DEFLATED_EXPLICIT_VR_LE | JPIP_REFERENCED_DEFLATE => Syntax::Deflated,
        ts::EXPLICIT_VR_LE => Syntax::Plain(Encoding::ExplicitLe),
        other if other.starts_with(STANDARD_SYNTAX_PREFIX) => Syntax::Plain(Encoding::ExplicitLe),
        _ => return None,
    })
}

/// Extracts the wanted top-level attributes from a data set in any transfer syntax DICOM-rs
/// knows (implicit VR LE, explicit VR LE, explicit VR BE, deflated explicit VR LE, and the
/// encapsulated pixel data syntaxes, which encode the data set as explicit VR LE), stopping at
/// top-level Pixel Data.
///
/// `data_set` holds the bytes of the data set as received so far, starting at stream offset
/// `start_offset` (right after the file meta group); `at_end` says whether the stream has
/// ended. Returns `Ok(None)` when the bytes end before Pixel Data and `at_end` is false (the
/// caller retries with more bytes; it doubles the buffer between attempts, so the cost stays
/// linear). Asking for more once `data_set` holds [`ScanLimits::buffered_bytes_max`] bytes is
/// [`ScanError::Limit`] instead.
pub fn extract_general(
    transfer_syntax_uid: &str,
    data_set: &[u8],
    start_offset: u64,
    at_end: bool,
    wanted: &dyn Fn(Tag) -> bool,
    limits: &ScanLimits,
) -> Result<Option<GeneralScanned>, ScanError> {
    match extract_general_resume(
        transfer_syntax_uid,
        data_set,
        start_offset,
        at_end,
        wanted,
        limits,
        None,
    )? {
        GeneralOutcome::Done(found) => Ok(Some(found)),
        GeneralOutcome::More(_) => Ok(None),
    }
}

/// [`extract_general`] continuing from an earlier partial scan: `data_set` then holds the
/// bytes from `partial.consumed()` on, and `start_offset` is their stream offset. Plain
/// syntaxes return their progress with `More`, so each byte is parsed once; deflated ones
/// start over (their bytes must be inflated from the start anyway).
pub fn extract_general_resume(
    transfer_syntax_uid: &str,
    data_set: &[u8],
    start_offset: u64,
    at_end: bool,
    wanted: &dyn Fn(Tag) -> bool,
    limits: &ScanLimits,
    partial: Option<GeneralPartial>,
) -> Result<GeneralOutcome, ScanError> {
    let uid = transfer_syntax_uid.trim_end_matches(['\0', ' ']);
    let Some(syntax) = syntax_of(uid) else {
        return Err(ScanError::Malformed {
            offset: start_offset,
            reason: format!("transfer syntax {uid:?} is not one the general path knows"),
        });
    };
    let input = Input {
        start_offset,
        wanted,
        limits,
    };
    match syntax {
        Syntax::Deflated => Ok(match scan_deflated(data_set, at_end, &input)? {
            Some(found) => GeneralOutcome::Done(found),
            None => GeneralOutcome::More(None),
        }),
        Syntax::Plain(encoding) => match scan_plain(encoding, data_set, at_end, &input, partial)? {
            Plain::Done(scanned, encoding_mismatch) => Ok(GeneralOutcome::Done(GeneralScanned {
                scanned,
                inflated: false,
                encoding_mismatch,
            })),
            Plain::More(partial) => {
                if data_set.len() - partial.consumed >= limits.buffered_bytes_max {
                    return Err(ScanError::Limit {
                        offset: start_offset + partial.consumed as u64,
                        what: "bytes of one top-level element held before Pixel Data",
                        value: (data_set.len() - partial.consumed) as u64,
                        max: limits.buffered_bytes_max as u64,
                    });
                }
                Ok(GeneralOutcome::More(Some(partial)))
            }
        },
    }
}

/// Guesses the transfer syntax of a raw data set that has neither preamble nor file meta group
/// (pydicom and some old tools write such files) from its first element header: explicit VR
/// little or big endian when a valid VR follows a plausible tag, implicit VR little endian
/// otherwise. A plausible first tag is in an even group from 0004 to 00FF (a data set opens
/// with SOP Class UID (0008,0016) or earlier; group 0002 means a file meta group). When the
/// second header is in `bytes` too, its tag must come after the first (and, in explicit VR,
/// it must have a valid VR). `None`: no guess.
pub fn looks_like_part10_without_meta(bytes: &[u8]) -> Option<&'static str> {
    let header = bytes.get(..8)?;
    let plausible = |group: u16| (0x0004..=0x00FF).contains(&group) && group % 2 == 0;
    let vr = VR::from_binary([header[4], header[5]]);
    let le_group = u16::from_le_bytes([header[0], header[1]]);
    let be_group = u16::from_be_bytes([header[0], header[1]]);
    let (encoding, uid) = if plausible(le_group) {
        match vr {
            Some(_) => (Encoding::ExplicitLe, ts::EXPLICIT_VR_LE),
            None => (Encoding::ImplicitLe, ts::IMPLICIT_VR_LE),
        }
    } else if plausible(be_group) && vr.is_some() {
        (Encoding::ExplicitBe, ts::EXPLICIT_VR_BE)
    } else {
        return None;
    };
    if let Some(vr) = vr.filter(|_| encoding.explicit()) {
        if has_long_length(vr) && header[6..8] != [0, 0] {
            return None; // the reserved bytes of a long-length VR are zero
        }
    }
    // When the second header is there too, it must follow the first (and, in explicit VR,
    // have a VR too): one plausible header alone is a weak sign.
    if let Some(RawHeader {
        tag: first,
        length: Some(length),
        header_len,
    }) = raw_header(encoding, bytes, 0)
    {
        let next_at = header_len + length as usize;
        if let Some(next) = raw_tag(encoding, bytes, next_at) {
            if next <= first {
                return None;
            }
            if encoding.explicit() && next.group() != 0xFFFE {
                if let Some(vr) = bytes.get(next_at + 4..next_at + 6) {
                    VR::from_binary([vr[0], vr[1]])?;
                }
            }
        }
    }
    Some(uid)
}

/// An element header read straight from the bytes (for guesses and error messages).
struct RawHeader {
    tag: Tag,
    /// `None`: undefined.
    length: Option<u32>,
    header_len: usize,
}

fn raw_u16(encoding: Encoding, bytes: &[u8], at: usize) -> Option<u16> {
    let b: [u8; 2] = bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(match encoding {
        Encoding::ExplicitBe => u16::from_be_bytes(b),
        _ => u16::from_le_bytes(b),
    })
}

fn raw_u32(encoding: Encoding, bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(match encoding {
        Encoding::ExplicitBe => u32::from_be_bytes(b),
        _ => u32::from_le_bytes(b),
    })
}

fn raw_tag(encoding: Encoding, bytes: &[u8], at: usize) -> Option<Tag> {
    Some(Tag::new(
        raw_u16(encoding, bytes, at)?,
        raw_u16(encoding, bytes, at.checked_add(2)?)?,
    ))
}

fn raw_header(encoding: Encoding, bytes: &[u8], at: usize) -> Option<RawHeader> {
    let tag = raw_tag(encoding, bytes, at)?;
    let (length, header_len) = if !encoding.explicit() || tag.group() == 0xFFFE {
        (raw_u32(encoding, bytes, at + 4)?, 8)
    } else {
        let vr = VR::from_binary([*bytes.get(at + 4)?, *bytes.get(at + 5)?])?;
        if has_long_length(vr) {
            (raw_u32(encoding, bytes, at + 8)?, 12)
        } else {
            (u32::from(raw_u16(encoding, bytes, at + 6)?), 8)
        }
    };
    Some(RawHeader {
        tag,
        length: (length != u32::MAX).then_some(length),
        header_len,
    })
}

/// VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2).
fn has_long_length(vr: VR) -> bool {
    super::explicit_le::has_long_length(vr.to_bytes())
}

/// Size of one number of a binary VR, for byte-swapping big endian values; `None` for VRs whose
/// values are bytes or text.
fn swap_unit(vr: VR) -> Option<usize> {
    match vr {
        // AT is a pair of 16-bit numbers (group, element), swapped each.
        VR::US | VR::SS | VR::OW | VR::AT => Some(2),
        VR::UL | VR::SL | VR::FL | VR::OF | VR::OL => Some(4),
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => Some(8),
        _ => None,
    }
}

/// What every scan needs from the caller.
struct Input<'w> {
    start_offset: u64,
    wanted: &'w dyn Fn(Tag) -> bool,
    limits: &'w ScanLimits,
}

/// Reads a plain (not deflated) data set. `Ok(None)`: more bytes are needed. The flag: the
/// data set was read as implicit VR although explicit was declared.
/// What a plain scan found.
enum Plain {
    Done(Scanned, bool),
    /// The bytes end before Pixel Data (and the stream goes on).
    More(GeneralPartial),
}

/// Where a general-path scan of a plain (not deflated) data set stopped for want of bytes:
/// the complete top-level elements so far, and the data set bytes they took. Handed back to
/// [`extract_general_resume`] with the bytes from `consumed` on, so no byte is parsed twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneralPartial {
    scanned: Scanned,
    consumed: usize,
    encoding: Encoding,
    mismatch: bool,
}

impl GeneralPartial {
    /// Data set bytes the complete elements took (the caller may drop them).
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

/// The outcome of [`extract_general_resume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeneralOutcome {
    Done(GeneralScanned),
    /// More bytes are needed; `Some` carries the progress to resume from (plain syntaxes).
    More(Option<GeneralPartial>),
}

fn scan_plain(
    declared: Encoding,
    data: &[u8],
    at_end: bool,
    input: &Input<'_>,
    resume: Option<GeneralPartial>,
) -> Result<Plain, ScanError> {
    let (encoding, mismatch) = match (&resume, declared) {
        (Some(r), _) => (r.encoding, r.mismatch),
        (None, Encoding::ExplicitLe) => match data.get(..6) {
            // The first element decides: an explicit VR is two letters naming a VR where an
            // implicit VR element has the low bytes of its length.
            Some(head) if head[0..2] != [0xFE, 0xFF] => {
                if VR::from_binary([head[4], head[5]]).is_some() {
                    (Encoding::ExplicitLe, false)
                } else {
                    (Encoding::ImplicitLe, true)
                }
            }
            None if !at_end => {
                return Ok(Plain::More(GeneralPartial {
                    scanned: empty_scanned(),
                    consumed: 0,
                    encoding: Encoding::ExplicitLe,
                    mismatch: false,
                }))
            }
            _ => (Encoding::ExplicitLe, false),
        },
        (None, other) => (other, false),
    };
    let mut walker = Walker::new(encoding, data, input);
    let end = walker.scan_top();
    let boundary = walker.top_boundary;
    // Earlier elements first: the resumed scan's values follow theirs in one arena.
    let scanned = |walker: Walker<'_, '_>, pixel_data| {
        let mut out = resume
            .as_ref()
            .map_or_else(empty_scanned, |r| r.scanned.clone());
        let shift = out.arena.len() as u32;
        out.arena.extend_from_slice(&walker.arena);
        out.elements.extend(walker.elements.iter().map(|e| Element {
            arena_start: e.arena_start + shift,
            ..*e
        }));
        out.pixel_data = pixel_data;
        out
    };
    let more = |walker: Walker<'_, '_>| {
        let consumed = boundary;
        Ok(Plain::More(GeneralPartial {
            scanned: scanned(walker, None),
            consumed,
            encoding,
            mismatch,
        }))
    };
    match end {
        Ok(TopEnd::PixelData(at)) => Ok(Plain::Done(scanned(walker, Some(at)), mismatch)),
        Ok(TopEnd::EndOfBytes) if at_end => Ok(Plain::Done(scanned(walker, None), mismatch)),
        Ok(TopEnd::EndOfBytes) => more(walker),
        Err(Stop::Fail(error)) => Err(error),
        Err(Stop::Truncated { .. }) if !at_end => more(walker),
        Err(Stop::Truncated { top, inner }) => {
            let (offset, reason) = match (top, inner) {
                (Some((tag, at)), Some(inner)) if inner != tag => (
                    at,
                    format!("stream ends inside {tag}, in its nested element {inner}"),
                ),
                (Some((tag, at)), _) => (at, format!("stream ends inside {tag}")),
                (None, _) => (data.len(), "stream ends inside an element header".into()),
            };
            Err(ScanError::Malformed {
                offset: input.start_offset + offset as u64,
                reason,
            })
        }
    }
}

fn empty_scanned() -> Scanned {
    Scanned {
        elements: Vec::new(),
        arena: Vec::new(),
        pixel_data: None,
        // Bulk values are the fast path's: the general path keeps its (rare) headers whole.
        bulk: Vec::new(),
    }
}

/// Inflates a deflated data set step by step (doubling, within
/// [`ScanLimits::buffered_bytes_max`]) and reads it as explicit VR little endian, until Pixel
/// Data or the end of the deflate stream.
fn scan_deflated(
    deflated: &[u8],
    at_end: bool,
    input: &Input<'_>,
) -> Result<Option<GeneralScanned>, ScanError> {
    let max = input.limits.buffered_bytes_max;
    let mut inflater = Inflater::new(deflated, input.start_offset);
    let mut target = INFLATE_FIRST_BYTES.min(max);
    loop {
        let state = inflater.inflate_to(target)?;
        let complete = match state {
            Inflated::StreamEnd => true,
            Inflated::InputUsedUp => at_end,
            Inflated::OutputFull => false,
        };
        match scan_plain(Encoding::ExplicitLe, &inflater.out, complete, input, None)? {
            Plain::Done(scanned, encoding_mismatch) => {
                if state == Inflated::InputUsedUp && scanned.pixel_data.is_none() {
                    // The inflated bytes end on an element boundary, but the deflate stream
                    // does not end there: the stream was cut.
                    return Err(ScanError::Malformed {
                        offset: input.start_offset + deflated.len() as u64,
                        reason: "stream ends inside the deflated data set".into(),
                    });
                }
                return Ok(Some(GeneralScanned {
                    scanned,
                    inflated: true,
                    encoding_mismatch,
                }));
            }
            Plain::More(_) => match state {
                Inflated::OutputFull if inflater.out.len() >= max => {
                    return Err(ScanError::Limit {
                        offset: input.start_offset + inflater.consumed(),
                        what: "inflated bytes of the data set before Pixel Data",
                        value: inflater.out.len() as u64,
                        max: max as u64,
                    })
                }
                Inflated::OutputFull => target = target.saturating_mul(2).min(max),
                // Not complete means not at the end: more deflated bytes are needed.
                Inflated::InputUsedUp | Inflated::StreamEnd => return Ok(None),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inflated {
    /// The deflate stream ended.
    StreamEnd,
    /// All the deflated bytes given were inflated; the stream goes on.
    InputUsedUp,
    /// The output reached the size asked for.
    OutputFull,
}

/// Raw deflate (PS3.5 A.5: RFC 1951 without a zlib header). Some writers add a zlib header;
/// when raw inflation fails at once and the bytes start with one, they are read as zlib.
struct Inflater<'a> {
    input: &'a [u8],
    start_offset: u64,
    inflate: flate2::Decompress,
    out: Vec<u8>,
    zlib_tried: bool,
}

impl<'a> Inflater<'a> {
    fn new(input: &'a [u8], start_offset: u64) -> Self {
        Inflater {
            input,
            start_offset,
            inflate: flate2::Decompress::new(false),
            out: Vec::new(),
            zlib_tried: false,
        }
    }

    fn consumed(&self) -> u64 {
        self.inflate.total_in()
    }

    fn inflate_to(&mut self, target: usize) -> Result<Inflated, ScanError> {
        if self.out.len() < target {
            self.out.reserve_exact(target - self.out.len());
        }
        loop {
            if self.out.len() >= target {
                return Ok(Inflated::OutputFull);
            }
            let in_at = (self.inflate.total_in() as usize).min(self.input.len());
            let (in_before, out_before) = (self.inflate.total_in(), self.out.len());
            // decompress_vec writes into the spare capacity only, so `out` stays within
            // `target`.
            let status = self.inflate.decompress_vec(
                &self.input[in_at..],
                &mut self.out,
                flate2::FlushDecompress::None,
            );
            match status {
                Ok(flate2::Status::StreamEnd) => return Ok(Inflated::StreamEnd),
                Ok(_) => {
                    if self.inflate.total_in() == in_before && self.out.len() == out_before {
                        return Ok(Inflated::InputUsedUp);
                    }
                }
                Err(error) => {
                    let zlib_header = self.input.len() >= 2
                        && self.input[0] & 0x0F == 8
                        && u16::from_be_bytes([self.input[0], self.input[1]]) % 31 == 0;
                    if !self.zlib_tried && self.out.is_empty() && zlib_header {
                        self.zlib_tried = true;
                        self.inflate = flate2::Decompress::new(true);
                        continue;
                    }
                    return Err(ScanError::Malformed {
                        offset: self.start_offset + self.inflate.total_in(),
                        reason: format!(
                            "the deflated data set is invalid after {} inflated bytes: {error}",
                            self.out.len()
                        ),
                    });
                }
            }
        }
    }
}

/// The data set's bytes as a [`Read`] for the decoders, counting what they consume in a cell
/// shared by all the decoders of one walk (the one position every offset comes from).
struct SliceReader<'a> {
    data: &'a [u8],
    pos: Rc<Cell<usize>>,
}

impl Read for SliceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.pos.get().min(self.data.len());
        let n = buf.len().min(self.data.len() - at);
        buf[..n].copy_from_slice(&self.data[at..at + n]);
        self.pos.set(at + n);
        Ok(n)
    }
}

/// A dictionary that knows no attribute: implicit VR headers decode as UN (see
/// `new_decoder`).
struct NoVrDictionary;

impl dicom_core::dictionary::DataDictionary for NoVrDictionary {
    type Entry = dicom_core::dictionary::DataDictionaryEntryRef<'static>;

    fn by_tag(&self, _tag: dicom_core::Tag) -> Option<&Self::Entry> {
        None
    }

    fn by_name(&self, _name: &str) -> Option<&Self::Entry> {
        None
    }
}

type Decoder<'a> = StatefulDecoder<DynDecoder<SliceReader<'a>>, SliceReader<'a>>;

fn new_decoder(encoding: Encoding, reader: SliceReader<'_>) -> Decoder<'_> {
    let (decoder, endianness): (DynDecoder<SliceReader<'_>>, Endianness) = match encoding {
        Encoding::ImplicitLe => (
            // No dictionary while walking: the headers' VRs are not needed to skip values
            // (undefined length means a sequence in implicit VR), and a lookup per element
            // was a quarter of this path's time. Wanted values get the dictionary's VR in
            // `top_element`.
            Box::new(ImplicitVRLittleEndianDecoder::with_dict(NoVrDictionary)),
            Endianness::Little,
        ),
        Encoding::ExplicitLe => (
            Box::new(ExplicitVRLittleEndianDecoder::default()),
            Endianness::Little,
        ),
        Encoding::ExplicitBe => (
            Box::new(ExplicitVRBigEndianDecoder::default()),
            Endianness::Big,
        ),
    };
    // The decoder's own position is not used (see `SliceReader`); text is never decoded here.
    StatefulDecoder::new_with_position(
        reader,
        decoder,
        BasicDecoder::new(endianness),
        SpecificCharacterSet::default(),
        0,
    )
}

/// Why a walk stopped before its end.
enum Stop {
    /// The bytes end inside an element: `top` is the top-level element (tag, data set offset),
    /// `inner` the innermost element or sequence known.
    Truncated {
        top: Option<(Tag, usize)>,
        inner: Option<Tag>,
    },
    Fail(ScanError),
}

impl From<ScanError> for Stop {
    fn from(error: ScanError) -> Self {
        Stop::Fail(error)
    }
}

/// How the top level ended.
enum TopEnd {
    PixelData(PixelDataAt),
    /// At an element boundary, without Pixel Data.
    EndOfBytes,
}

/// A decoded element header, with where it is in the data set.
struct Header {
    tag: Tag,
    vr: VR,
    length: Length,
    at: usize,
    value_at: usize,
}

/// One walk over a data set's bytes.
struct Walker<'a, 'w> {
    data: &'a [u8],
    pos: Rc<Cell<usize>>,
    encoding: Encoding,
    input: &'w Input<'w>,
    /// One decoder per encoding, made on first use: the data set's own, and implicit VR little
    /// endian for the contents of UN elements of undefined length.
    decoders: [Option<Decoder<'a>>; 3],
    elements: Vec<Element>,
    arena: Vec<u8>,
    /// Where the last complete top-level element ends (a resume point).
    top_boundary: usize,
}

impl<'a, 'w> Walker<'a, 'w> {
    fn new(encoding: Encoding, data: &'a [u8], input: &'w Input<'w>) -> Self {
        Walker {
            data,
            pos: Rc::new(Cell::new(0)),
            encoding,
            input,
            decoders: [None, None, None],
            elements: Vec::with_capacity(32),
            arena: Vec::with_capacity(1024),
            top_boundary: 0,
        }
    }

    fn offset(&self, at: usize) -> u64 {
        self.input.start_offset + at as u64
    }

    fn malformed(&self, at: usize, reason: String) -> Stop {
        Stop::Fail(ScanError::Malformed {
            offset: self.offset(at),
            reason,
        })
    }

    fn decoder(&mut self, encoding: Encoding) -> &mut Decoder<'a> {
        let reader = SliceReader {
            data: self.data,
            pos: Rc::clone(&self.pos),
        };
        self.decoders[encoding as usize].get_or_insert_with(|| new_decoder(encoding, reader))
    }

    /// Checks that the last decoder call consumed exactly up to `end` (the reader never gives
    /// fewer bytes than were checked present, so anything else is a bug worth a clear error).
    fn check_consumed(&self, end: usize, tag: Tag) -> Result<(), Stop> {
        let pos = self.pos.get();
        if pos != end {
            return Err(self.malformed(
                pos,
                format!("reading {tag} consumed up to {pos}, expected {end}"),
            ));
        }
        Ok(())
    }

    /// Reads an element header at the current position.
    fn read_header(&mut self, encoding: Encoding) -> Result<Header, Stop> {
        let at = self.pos.get();
        let data = self.data;
        if encoding.explicit() {
            // The decoder reads an unknown VR as UN with a 4-byte length and goes on; here
            // that means the bytes are not what the transfer syntax says.
            if let (Some(tag), Some(vr)) = (raw_tag(encoding, data, at), data.get(at + 4..at + 6)) {
                if tag.group() != 0xFFFE && VR::from_binary([vr[0], vr[1]]).is_none() {
                    return Err(self.malformed(
                        at,
                        format!(
                            "{tag} has no valid explicit VR (bytes {:02X} {:02X})",
                            vr[0], vr[1]
                        ),
                    ));
                }
            }
        }
        match self.decoder(encoding).decode_header() {
            Ok(header) => Ok(Header {
                tag: Tag::new(header.tag.group(), header.tag.element()),
                vr: header.vr,
                length: header.len,
                at,
                value_at: self.pos.get(),
            }),
            // The reader fails only at the end of the bytes, and no header is longer than 12.
            Err(_) if data.len() < at + 12 => Err(Stop::Truncated {
                top: None,
                inner: raw_tag(encoding, data, at),
            }),
            Err(error) => Err(self.malformed(at, format!("element header unreadable: {error}"))),
        }
    }

    /// Ensures `length` bytes are present at the current position.
    fn ensure_present(&self, length: u32, inner: Tag) -> Result<(), Stop> {
        let available = self.data.len() - self.pos.get().min(self.data.len());
        if (length as usize) > available {
            return Err(Stop::Truncated {
                top: None,
                inner: Some(inner),
            });
        }
        Ok(())
    }

    /// Skips a value of `length` bytes of `tag`, after checking they are present.
    fn skip(&mut self, encoding: Encoding, length: u32, tag: Tag) -> Result<(), Stop> {
        self.ensure_present(length, tag)?;
        // The decoders read straight from the shared slice reader (no read-ahead), so moving
        // its position skips the value without copying it through `io::copy` as
        // `skip_bytes` does (a 134 kB waveform cost a copy per attempt).
        let _ = encoding;
        let end = self.pos.get() + length as usize;
        self.pos.set(end);
        self.check_consumed(end, tag)
    }

    fn check_depth(&self, depth: usize) -> Result<(), Stop> {
        let max = self.input.limits.depth_max;
        if depth > max {
            return Err(Stop::Fail(ScanError::Limit {
                offset: self.offset(self.pos.get()),
                what: "sequence nesting depth",
                value: depth as u64,
                max: max as u64,
            }));
        }
        Ok(())
    }

    /// Reads top-level elements up to Pixel Data or the end of the bytes.
    fn scan_top(&mut self) -> Result<TopEnd, Stop> {
        let encoding = self.encoding;
        loop {
            let at = self.pos.get();
            self.top_boundary = at;
            if at >= self.data.len() {
                return Ok(TopEnd::EndOfBytes);
            }
            let header = self.read_header(encoding).map_err(|stop| match stop {
                // A header cut short: the element it starts is the one the stream ends in.
                Stop::Truncated { inner, .. } => Stop::Truncated {
                    top: inner.map(|tag| (tag, at)),
                    inner,
                },
                fail => fail,
            })?;
            if header.tag == Tag::PIXEL_DATA {
                let vr = match (encoding.explicit(), header.length.is_undefined()) {
                    // Implicit VR: OW for native data (PS3.5 A.1); encapsulated is OB.
                    (false, true) => VR::OB,
                    (false, false) => VR::OW,
                    (true, _) => header.vr,
                };
                return Ok(TopEnd::PixelData(PixelDataAt {
                    element_offset: self.offset(header.at),
                    value_offset: self.offset(header.value_at),
                    vr: vr.to_bytes(),
                    length: header.length.get(),
                }));
            }
            let (tag, at) = (header.tag, header.at);
            self.top_element(encoding, header)
                .map_err(|stop| match stop {
                    Stop::Truncated { inner, .. } => Stop::Truncated {
                        top: Some((tag, at)),
                        inner,
                    },
                    fail => fail,
                })?;
        }
    }

    /// Keeps or skips one top-level element (not Pixel Data) whose header was read.
    fn top_element(&mut self, encoding: Encoding, header: Header) -> Result<(), Stop> {
        let tag = header.tag;
        if tag.group() == 0xFFFE {
            return Err(self.malformed(header.at, format!("{tag} outside a sequence")));
        }
        if tag.group() == 0x0002 {
            // PS3.10 7.1: group 0002 belongs to the file meta group; as in the fast path.
            return Err(self.malformed(
                header.at,
                format!("file meta element {tag} inside the data set (the file meta group length is wrong)"),
            ));
        }
        // An explicit UN, or any implicit VR header (read without a dictionary: UN).
        let un = header.vr == VR::UN;
        let Some(length) = header.length.get() else {
            return match (encoding.explicit(), header.vr) {
                (true, VR::SQ) => self.walk_sequence(encoding, 1, tag),
                // UN of undefined length holds a sequence in implicit VR (PS3.5 6.2.2); in
                // implicit VR itself, undefined length means a sequence whatever the tag.
                (true, VR::UN) | (false, _) => self.walk_sequence(Encoding::ImplicitLe, 1, tag),
                (true, other) => Err(self.malformed(
                    header.at,
                    format!("{tag} has undefined length with VR {other}"),
                )),
            };
        };
        if !(self.input.wanted)(tag) {
            return self.skip(encoding, length, tag);
        }
        // An explicit UN of a known tag: its bytes are implicit VR little endian, so the
        // dictionary's VR describes them, and they need no swapping. Implicit VR headers
        // take the dictionary's VR the same way (looked up for wanted elements only).
        let vr = if un {
            StandardDataDictionary
                .by_tag(header.tag_dicom())
                .map_or(VR::UN, |entry| entry.vr().relaxed())
        } else {
            header.vr
        };
        // A sequence is kept (raw) only where its bytes are already explicit VR LE.
        let keepable = vr != VR::SQ || (encoding == Encoding::ExplicitLe && !un);
        if !keepable {
            return self.skip(encoding, length, tag);
        }
        let max = self.input.limits.wanted_value_bytes_max;
        if length > max {
            return Err(Stop::Fail(ScanError::Limit {
                offset: self.offset(header.at),
                what: "length of a wanted value",
                value: u64::from(length),
                max: u64::from(max),
            }));
        }
        self.ensure_present(length, tag)?;
        let arena_start = self.arena.len();
        let Ok(arena_start_u32) = u32::try_from(arena_start) else {
            return Err(Stop::Fail(ScanError::Limit {
                offset: self.offset(header.at),
                what: "bytes of wanted values",
                value: arena_start as u64,
                max: u64::from(u32::MAX),
            }));
        };
        // Bounded: the length was checked against the limit and the bytes present.
        self.arena.reserve(length as usize);
        let reader = SliceReader {
            data: self.data,
            pos: Rc::clone(&self.pos),
        };
        let decoder =
            self.decoders[encoding as usize].get_or_insert_with(|| new_decoder(encoding, reader));
        if let Err(error) = decoder.read_to(length, &mut self.arena) {
            return Err(self.malformed(
                header.value_at,
                format!("cannot read the value of {tag}: {error}"),
            ));
        }
        self.check_consumed(header.value_at + length as usize, tag)?;
        if encoding == Encoding::ExplicitBe && !un {
            if let Some(unit) = swap_unit(vr) {
                for number in self.arena[arena_start..].chunks_exact_mut(unit) {
                    number.reverse();
                }
            }
        }
        self.elements.push(Element {
            tag,
            vr: vr.to_bytes(),
            value_offset: self.offset(header.value_at),
            arena_start: arena_start_u32,
            value_len: length,
        });
        Ok(())
    }

    /// Walks a sequence of undefined length (or encapsulated data) whose first item header is
    /// at the current position, up to and including its delimiter. Items of defined length
    /// are skipped whole, like defined-length sequences: nothing inside them is needed.
    fn walk_sequence(&mut self, encoding: Encoding, depth: usize, of: Tag) -> Result<(), Stop> {
        self.check_depth(depth)?;
        loop {
            let at = self.pos.get();
            if self.data.len() < at + 8 {
                return Err(Stop::Truncated {
                    top: None,
                    inner: Some(of),
                });
            }
            let item = self.decoder(encoding).decode_item_header();
            match item {
                Ok(SequenceItemHeader::SequenceDelimiter) => return Ok(()),
                Ok(SequenceItemHeader::ItemDelimiter) => {
                    return Err(self.malformed(
                        at,
                        format!("item delimitation item in {of} outside an item"),
                    ))
                }
                Ok(SequenceItemHeader::Item { len }) => match len.get() {
                    None => self.walk_item(encoding, depth + 1, of)?,
                    Some(length) => self.skip(encoding, length, of)?,
                },
                Err(_) => {
                    let tag = raw_tag(encoding, self.data, at).unwrap_or(Tag(0));
                    let length = raw_u32(encoding, self.data, at + 4).unwrap_or(0);
                    let reason = if tag == Tag::ITEM_DELIMITER {
                        format!("item delimitation item in {of} has length {length}, not 0")
                    } else {
                        format!("{tag} inside {of} where an item belongs")
                    };
                    return Err(self.malformed(at, reason));
                }
            }
        }
    }

    /// Walks the elements of an item of undefined length, up to and including its delimiter.
    fn walk_item(&mut self, encoding: Encoding, depth: usize, of: Tag) -> Result<(), Stop> {
        self.check_depth(depth)?;
        loop {
            let header = self.read_header(encoding).map_err(|stop| match stop {
                Stop::Truncated { inner: None, .. } => Stop::Truncated {
                    top: None,
                    inner: Some(of),
                },
                other => other,
            })?;
            let tag = header.tag;
            if tag == Tag::ITEM_DELIMITER {
                return Ok(());
            }
            if tag.group() == 0xFFFE {
                return Err(self.malformed(header.at, format!("{tag} inside an item of {of}")));
            }
            match header.length.get() {
                Some(length) => self.skip(encoding, length, tag)?,
                None => match (encoding.explicit(), header.vr) {
                    // Nested sequences, and encapsulated pixel data of an icon: items up to a
                    // sequence delimiter either way.
                    (true, VR::SQ | VR::OB | VR::OW) => {
                        self.walk_sequence(encoding, depth + 1, tag)?
                    }
                    (true, VR::UN) | (false, _) => {
                        self.walk_sequence(Encoding::ImplicitLe, depth + 1, tag)?
                    }
                    (true, other) => {
                        return Err(self.malformed(
                            header.at,
                            format!("{tag} has undefined length with VR {other}"),
                        ))
                    }
                },
            }
        }
    }
}

impl Header {
    fn tag_dicom(&self) -> dicom_core::Tag {
        dicom_core::Tag(self.tag.group(), self.tag.element())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::dicom::explicit_le::{ExplicitLeScanner, Progress};
    use dicom_dictionary_std::tags;
    use std::time::{Duration, Instant};

    const UNDEFINED: u32 = u32::MAX;

    fn t(tag: dicom_core::Tag) -> Tag {
        Tag::new(tag.group(), tag.element())
    }

    const PRIVATE_CREATOR: Tag = Tag::new(0x0009, 0x0010);
    const PRIVATE_BLOB: Tag = Tag::new(0x0009, 0x1010);
    const PRIVATE_WANTED: Tag = Tag::new(0x0009, 0x1020);

    /// Builds a data set in one encoding, and what the general path must report for it.
    struct Builder {
        encoding: Encoding,
        bytes: Vec<u8>,
        /// Wanted elements: tag, reported VR, value as explicit VR LE, data set offset of the
        /// value.
        expected: Vec<(Tag, [u8; 2], Vec<u8>, usize)>,
        /// Where each top-level element ends (a valid shorter data set).
        boundaries: Vec<usize>,
        /// Data set offsets of the Pixel Data element and its value.
        pixel: Option<(usize, usize)>,
    }

    impl Builder {
        fn new(encoding: Encoding) -> Self {
            Builder {
                encoding,
                bytes: Vec::new(),
                expected: Vec::new(),
                boundaries: vec![0],
                pixel: None,
            }
        }

        fn u16(&mut self, v: u16) {
            match self.encoding {
                Encoding::ExplicitBe => self.bytes.extend_from_slice(&v.to_be_bytes()),
                _ => self.bytes.extend_from_slice(&v.to_le_bytes()),
            }
        }

        fn u32(&mut self, v: u32) {
            match self.encoding {
                Encoding::ExplicitBe => self.bytes.extend_from_slice(&v.to_be_bytes()),
                _ => self.bytes.extend_from_slice(&v.to_le_bytes()),
            }
        }

        fn tag(&mut self, tag: Tag) {
            self.u16(tag.group());
            self.u16(tag.element());
        }

        /// An element header; returns the offset of its value.
        fn header(&mut self, tag: Tag, vr: &[u8; 2], length: u32) -> usize {
            self.tag(tag);
            if self.encoding.explicit() {
                self.bytes.extend_from_slice(vr);
                let long = VR::from_binary(*vr).is_none_or(has_long_length);
                if long {
                    self.bytes.extend_from_slice(&[0, 0]);
                    self.u32(length);
                } else {
                    self.u16(length as u16);
                }
            } else {
                self.u32(length);
            }
            self.bytes.len()
        }

        /// An element with a defined length whose value is given in this encoding.
        fn el(&mut self, tag: Tag, vr: &[u8; 2], value: &[u8]) -> usize {
            let at = self.header(tag, vr, value.len() as u32);
            self.bytes.extend_from_slice(value);
            at
        }

        /// A wanted element: `value_le` is what the general path reports; the bytes written
        /// are swapped when the encoding is big endian and `unit` is given.
        fn wanted(&mut self, tag: Tag, vr: &[u8; 2], value_le: &[u8], unit: Option<usize>) {
            let mut written = value_le.to_vec();
            if let (Encoding::ExplicitBe, Some(unit)) = (self.encoding, unit) {
                for n in written.chunks_exact_mut(unit) {
                    n.reverse();
                }
            }
            let at = self.el(tag, vr, &written);
            self.expected.push((tag, *vr, value_le.to_vec(), at));
            self.end_top();
        }

        fn marker(&mut self, tag: Tag, length: u32) {
            self.tag(tag);
            self.u32(length);
        }

        fn end_top(&mut self) {
            self.boundaries.push(self.bytes.len());
        }
    }

    /// A data set with every feature the general path handles, in `encoding`: wanted values of
    /// text and binary VRs (some odd lengths), sequences of defined and undefined length with
    /// nested items, private tags, a large private blob, then native or encapsulated Pixel
    /// Data.
    fn sample(encoding: Encoding, encapsulated: bool) -> Builder {
        let mut b = Builder::new(encoding);
        b.wanted(t(tags::SPECIFIC_CHARACTER_SET), b"CS", b"ISO_IR 100", None);
        b.wanted(t(tags::MODALITY), b"CS", b"CT", None);
        // Undefined-length sequence: an undefined-length item holding a nested
        // undefined-length sequence with a defined-length item, then a defined-length item.
        b.header(t(tags::REFERENCED_SERIES_SEQUENCE), b"SQ", UNDEFINED);
        b.marker(Tag::ITEM, UNDEFINED);
        b.el(t(tags::REFERENCED_SOP_INSTANCE_UID), b"UI", b"1.2.3\0");
        b.header(t(tags::REFERENCED_IMAGE_SEQUENCE), b"SQ", UNDEFINED);
        let mut inner = Builder::new(encoding);
        inner.el(t(tags::REFERENCED_SOP_INSTANCE_UID), b"UI", b"1.2.4\0");
        b.marker(Tag::ITEM, inner.bytes.len() as u32);
        b.bytes.extend_from_slice(&inner.bytes);
        b.marker(Tag::SEQUENCE_DELIMITER, 0);
        b.el(t(tags::MODALITY), b"CS", b"MR"); // nested: not reported
        b.marker(Tag::ITEM_DELIMITER, 0);
        b.marker(Tag::ITEM, inner.bytes.len() as u32);
        b.bytes.extend_from_slice(&inner.bytes);
        b.marker(Tag::SEQUENCE_DELIMITER, 0);
        b.end_top();
        // Defined-length sequence with a defined-length item.
        let mut item = Builder::new(encoding);
        item.marker(Tag::ITEM, inner.bytes.len() as u32);
        item.bytes.extend_from_slice(&inner.bytes);
        b.el(
            t(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE),
            b"SQ",
            &item.bytes,
        );
        b.end_top();
        b.wanted(PRIVATE_CREATOR, b"LO", b"KUVASTO TEST", None);
        b.el(PRIVATE_BLOB, b"OB", &vec![7u8; 5000]);
        b.end_top();
        // A private value: UN in implicit VR (no dictionary entry), OB as written otherwise.
        let private_vr = if encoding.explicit() { b"OB" } else { b"UN" };
        let at = b.el(PRIVATE_WANTED, b"OB", &[1, 2, 3]);
        b.expected
            .push((PRIVATE_WANTED, *private_vr, vec![1, 2, 3], at));
        b.end_top();
        b.wanted(t(tags::PATIENT_NAME), b"PN", b"Virtanen^Aino", None); // odd length
        b.wanted(t(tags::PATIENT_ID), b"LO", b"010203-123A ", None);
        b.wanted(
            t(tags::DIFFUSION_B_VALUE),
            b"FD",
            &1000.5f64.to_le_bytes(),
            Some(8),
        );
        b.wanted(t(tags::INSTANCE_NUMBER), b"IS", b" 42 ", None);
        b.wanted(
            t(tags::FRAME_INCREMENT_POINTER),
            b"AT",
            &[0x18, 0x00, 0x63, 0x10],
            Some(2),
        );
        b.wanted(t(tags::ROWS), b"US", &512u16.to_le_bytes(), Some(2));
        b.wanted(t(tags::COLUMNS), b"US", &256u16.to_le_bytes(), Some(2));
        b.wanted(
            t(tags::DATA_POINT_ROWS),
            b"UL",
            &70000u32.to_le_bytes(),
            Some(4),
        );
        b.wanted(
            t(tags::TAG_ANGLE_SECOND_AXIS),
            b"SS",
            &(-3i16).to_le_bytes(),
            Some(2),
        );
        b.wanted(
            t(tags::RECOMMENDED_DISPLAY_FRAME_RATE_IN_FLOAT),
            b"FL",
            &2.5f32.to_le_bytes(),
            Some(4),
        );
        b.wanted(
            t(tags::SELECTOR_SV_VALUE),
            b"SV",
            &(-5i64).to_le_bytes(),
            Some(8),
        );
        let pixel_at = b.bytes.len();
        if encapsulated {
            let value_at = b.header(Tag::PIXEL_DATA, b"OB", UNDEFINED);
            b.marker(Tag::ITEM, 0);
            b.marker(Tag::ITEM, 4);
            b.bytes.extend_from_slice(&[1, 2, 3, 4]);
            b.marker(Tag::SEQUENCE_DELIMITER, 0);
            b.pixel = Some((pixel_at, value_at));
        } else {
            let value_at = b.el(Tag::PIXEL_DATA, b"OW", &[0u8; 64]);
            b.pixel = Some((pixel_at, value_at));
        }
        b
    }

    const START: u64 = 300;

    fn wanted_of(b: &Builder) -> impl Fn(Tag) -> bool + '_ {
        move |tag| b.expected.iter().any(|e| e.0 == tag)
    }

    fn uid(encoding: Encoding) -> &'static str {
        match encoding {
            Encoding::ImplicitLe => ts::IMPLICIT_VR_LE,
            Encoding::ExplicitLe => ts::EXPLICIT_VR_LE,
            Encoding::ExplicitBe => ts::EXPLICIT_VR_BE,
        }
    }

    fn run(
        uid: &str,
        bytes: &[u8],
        at_end: bool,
        wanted: &dyn Fn(Tag) -> bool,
    ) -> Result<Option<GeneralScanned>, ScanError> {
        extract_general(uid, bytes, START, at_end, wanted, &ScanLimits::default())
    }

    fn check_against_builder(b: &Builder, found: &GeneralScanned) {
        let scanned = &found.scanned;
        let got: Vec<_> = scanned
            .elements
            .iter()
            .map(|e| {
                (
                    e.tag,
                    e.vr,
                    scanned.value(e).to_vec(),
                    (e.value_offset - START) as usize,
                )
            })
            .collect();
        assert_eq!(got, b.expected, "{:?}", b.encoding);
        let (element_at, value_at) = b.pixel.expect("sample has pixel data");
        let pixel = scanned.pixel_data.expect("pixel data found");
        assert_eq!(pixel.element_offset, START + element_at as u64);
        assert_eq!(pixel.value_offset, START + value_at as u64);
    }

    #[test]
    fn values_vrs_and_offsets_in_every_encoding() {
        for encoding in [
            Encoding::ImplicitLe,
            Encoding::ExplicitLe,
            Encoding::ExplicitBe,
        ] {
            for encapsulated in [false, true] {
                if encapsulated && encoding == Encoding::ExplicitBe {
                    continue; // encapsulated syntaxes are all little endian
                }
                let b = sample(encoding, encapsulated);
                let wanted = wanted_of(&b);
                let found = run(uid(encoding), &b.bytes, true, &wanted)
                    .expect("valid")
                    .expect("complete");
                check_against_builder(&b, &found);
                assert!(!found.inflated && !found.encoding_mismatch);
                let pixel = found.scanned.pixel_data.expect("pixel data");
                match (encapsulated, encoding) {
                    (true, Encoding::ImplicitLe) => {
                        assert_eq!((pixel.vr, pixel.length), (*b"OB", None))
                    }
                    (true, _) => assert_eq!((pixel.vr, pixel.length), (*b"OB", None)),
                    (false, _) => assert_eq!((pixel.vr, pixel.length), (*b"OW", Some(64))),
                }
            }
        }
    }

    /// Runs the fast path over `bytes` fed in `chunk`-byte pieces.
    fn fast_path(
        bytes: &[u8],
        chunk: usize,
        wanted: &dyn Fn(Tag) -> bool,
    ) -> Result<Scanned, ScanError> {
        let mut scanner = ExplicitLeScanner::new(START, wanted, ScanLimits::default());
        for piece in bytes.chunks(chunk.max(1)) {
            if let Progress::PixelData(_) = scanner.feed(piece)? {
                break;
            }
        }
        scanner.finish()
    }

    #[test]
    fn agrees_with_the_fast_path_on_explicit_le() {
        for encapsulated in [false, true] {
            let b = sample(Encoding::ExplicitLe, encapsulated);
            let wanted = wanted_of(&b);
            let ours = run(ts::EXPLICIT_VR_LE, &b.bytes, true, &wanted)
                .expect("valid")
                .expect("complete");
            for chunk in [1, 2, 7, 100, b.bytes.len()] {
                let fast = fast_path(&b.bytes, chunk, &wanted).expect("fast path reads it");
                assert_eq!(ours.scanned, fast, "chunk {chunk}");
            }
        }
    }

    /// A tiny deterministic generator of explicit VR LE data sets (the fast path's grammar):
    /// random wanted and unwanted elements, sequences of both kinds nested a few levels.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }

        fn items(&mut self, b: &mut Builder, depth: usize) {
            for _ in 0..self.next(3) {
                let mut item = Builder::new(Encoding::ExplicitLe);
                self.elements(&mut item, depth + 1, false);
                if self.next(2) == 0 {
                    b.marker(Tag::ITEM, item.bytes.len() as u32);
                    b.bytes.extend_from_slice(&item.bytes);
                } else {
                    b.marker(Tag::ITEM, UNDEFINED);
                    b.bytes.extend_from_slice(&item.bytes);
                    b.marker(Tag::ITEM_DELIMITER, 0);
                }
            }
        }

        fn elements(&mut self, b: &mut Builder, depth: usize, top: bool) {
            let mut group = 0x0008u16;
            for _ in 0..self.next(6) + 1 {
                group += 2 * (self.next(3) as u16 + 1);
                let tag = Tag::new(group, 0x0010 + self.next(4) as u16);
                match self.next(if depth < 3 { 5 } else { 3 }) {
                    0 | 1 => {
                        let len = self.next(9) as usize;
                        let value: Vec<u8> = (0..len).map(|i| b'A' + i as u8).collect();
                        let at = b.el(tag, b"LO", &value);
                        if top && self.next(2) == 0 {
                            b.expected.push((tag, *b"LO", value, at));
                        }
                    }
                    2 => {
                        b.el(tag, b"OB", &vec![9u8; self.next(300) as usize]);
                    }
                    3 => {
                        b.header(tag, b"SQ", UNDEFINED);
                        self.items(b, depth + 1);
                        b.marker(Tag::SEQUENCE_DELIMITER, 0);
                    }
                    _ => {
                        let mut seq = Builder::new(Encoding::ExplicitLe);
                        self.items(&mut seq, depth + 1);
                        b.el(tag, b"SQ", &seq.bytes);
                    }
                }
                if top {
                    b.end_top();
                }
            }
        }
    }

    #[test]
    fn agrees_with_the_fast_path_on_generated_explicit_le_data_sets() {
        for seed in 0..300u64 {
            let mut g = Gen(seed);
            let mut b = Builder::new(Encoding::ExplicitLe);
            g.elements(&mut b, 0, true);
            if g.next(2) == 0 {
                b.el(Tag::PIXEL_DATA, b"OW", &[0u8; 8]);
            }
            let wanted_tags: Vec<Tag> = b.expected.iter().map(|e| e.0).collect();
            let wanted = |tag: Tag| wanted_tags.contains(&tag);
            let ours = run(ts::EXPLICIT_VR_LE, &b.bytes, true, &wanted)
                .expect("valid")
                .expect("complete");
            for chunk in [1, 5, b.bytes.len()] {
                let fast = fast_path(&b.bytes, chunk, &wanted).expect("fast path");
                assert_eq!(ours.scanned, fast, "seed {seed} chunk {chunk}");
            }
        }
    }

    #[test]
    fn every_prefix_asks_for_more_or_is_reported_as_cut() {
        for encoding in [
            Encoding::ImplicitLe,
            Encoding::ExplicitLe,
            Encoding::ExplicitBe,
        ] {
            let b = sample(encoding, false);
            let wanted = wanted_of(&b);
            let full = run(uid(encoding), &b.bytes, true, &wanted)
                .expect("valid")
                .expect("complete");
            let (_, pixel_value_at) = b.pixel.expect("pixel data");
            for cut in 0..b.bytes.len() {
                let prefix = &b.bytes[..cut];
                let more = run(uid(encoding), prefix, false, &wanted);
                let ended = run(uid(encoding), prefix, true, &wanted);
                if cut >= pixel_value_at {
                    // The Pixel Data header is complete: nothing more is needed.
                    assert_eq!(more, Ok(Some(full.clone())), "{encoding:?} cut {cut}");
                    assert_eq!(ended, Ok(Some(full.clone())), "{encoding:?} cut {cut}");
                    continue;
                }
                assert_eq!(more, Ok(None), "{encoding:?} cut {cut}");
                if b.boundaries.contains(&cut) {
                    let shorter = ended.expect("valid").expect("complete");
                    assert_eq!(shorter.scanned.pixel_data, None);
                } else {
                    match ended {
                        Err(ScanError::Malformed { reason, .. }) => {
                            assert!(reason.starts_with("stream ends inside"), "{reason}")
                        }
                        other => panic!("{encoding:?} cut {cut}: {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn a_cut_reports_the_top_level_element_it_is_in() {
        let b = sample(Encoding::ImplicitLe, false);
        let wanted = wanted_of(&b);
        // Inside the nested sequence of (0008,1115).
        let cut = b.boundaries[2] + 30;
        match run(ts::IMPLICIT_VR_LE, &b.bytes[..cut], true, &wanted) {
            Err(ScanError::Malformed { offset, reason }) => {
                assert_eq!(offset, START + b.boundaries[2] as u64);
                assert!(
                    reason.starts_with("stream ends inside (0008,1115)"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    fn quickly<T>(f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "took {:?}",
            started.elapsed()
        );
        out
    }

    #[test]
    fn huge_declared_lengths_fail_fast_without_allocating() {
        for encoding in [
            Encoding::ImplicitLe,
            Encoding::ExplicitLe,
            Encoding::ExplicitBe,
        ] {
            let wanted = |tag: Tag| tag == t(tags::PATIENT_ID) || tag == t(tags::STUDY_DESCRIPTION);
            // A wanted value: over the limit, whatever follows.
            let mut b = Builder::new(encoding);
            b.header(t(tags::STUDY_DESCRIPTION), b"UT", 0xFFFF_FFF0);
            b.bytes.extend_from_slice(b"short");
            for at_end in [false, true] {
                let err = quickly(|| run(uid(encoding), &b.bytes, at_end, &wanted));
                assert!(
                    matches!(
                        err,
                        Err(ScanError::Limit {
                            what: "length of a wanted value",
                            ..
                        })
                    ),
                    "{encoding:?}: {err:?}"
                );
            }
            // An unwanted value and an item that claim more than there is.
            let mut blob = Builder::new(encoding);
            blob.header(PRIVATE_BLOB, b"OB", 0xFFFF_FFF0);
            blob.bytes.extend_from_slice(&[1, 2, 3, 4]);
            let mut item = Builder::new(encoding);
            item.header(t(tags::REFERENCED_SERIES_SEQUENCE), b"SQ", UNDEFINED);
            item.marker(Tag::ITEM, 0xFFFF_FFF0);
            item.bytes.extend_from_slice(&[0; 16]);
            for bytes in [&blob.bytes, &item.bytes] {
                assert_eq!(
                    quickly(|| run(uid(encoding), bytes, false, &wanted)),
                    Ok(None)
                );
                let err = quickly(|| run(uid(encoding), bytes, true, &wanted));
                assert!(
                    matches!(&err, Err(ScanError::Malformed { reason, .. }) if reason.starts_with("stream ends inside")),
                    "{encoding:?}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn an_unfinished_element_larger_than_the_buffer_limit_is_refused() {
        let mut b = Builder::new(Encoding::ImplicitLe);
        b.el(PRIVATE_BLOB, b"OB", &vec![0u8; 10_000]);
        let limits = ScanLimits {
            buffered_bytes_max: 4096,
            ..ScanLimits::default()
        };
        // Complete elements are taken (and their bytes released by the caller): only an
        // element still arriving is held, and that is what the limit bounds.
        let whole = extract_general(ts::IMPLICIT_VR_LE, &b.bytes, 0, false, &|_| true, &limits);
        assert_eq!(whole, Ok(None));
        let cut = &b.bytes[..5000];
        let err = extract_general(ts::IMPLICIT_VR_LE, cut, 0, false, &|_| true, &limits);
        assert!(matches!(err, Err(ScanError::Limit { .. })), "{err:?}");
    }

    #[test]
    fn deflated_round_trip() {
        use flate2::write::DeflateEncoder;
        use std::io::Write;
        for encapsulated in [false, true] {
            let b = sample(Encoding::ExplicitLe, encapsulated);
            // Pixel data that compresses well but inflates beyond the first step.
            let mut plain = b.bytes.clone();
            if !encapsulated {
                plain.truncate(b.pixel.expect("pixel").0);
                plain.extend(crate::dicom::explicit_le::encode_element(
                    Tag::PIXEL_DATA,
                    b"OW",
                    &vec![0u8; 300_000],
                ));
            }
            let mut encoder = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(&plain).expect("deflate");
            let deflated = encoder.finish().expect("deflate");
            let wanted = wanted_of(&b);
            let found = run(ts::DEFLATED_EXPLICIT_VR_LE, &deflated, true, &wanted)
                .expect("valid")
                .expect("complete");
            assert!(found.inflated);
            check_against_builder(&b, &found);
            // Every prefix: more needed, or the same answer once Pixel Data is inflated.
            let mut answered_early = false;
            for cut in (0..deflated.len()).step_by(7) {
                match run(
                    ts::DEFLATED_EXPLICIT_VR_LE,
                    &deflated[..cut],
                    false,
                    &wanted,
                ) {
                    Ok(None) => assert!(!answered_early, "cut {cut}"),
                    Ok(Some(early)) => {
                        answered_early = true;
                        assert_eq!(early, found, "cut {cut}")
                    }
                    Err(error) => panic!("cut {cut}: {error}"),
                }
                if !answered_early {
                    let err = run(ts::DEFLATED_EXPLICIT_VR_LE, &deflated[..cut], true, &wanted);
                    assert!(
                        matches!(err, Err(ScanError::Malformed { .. })),
                        "cut {cut}: {err:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_zlib_wrapped_deflated_data_set_is_read_too() {
        use flate2::write::ZlibEncoder;
        use std::io::Write;
        let b = sample(Encoding::ExplicitLe, true);
        let mut encoder = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&b.bytes).expect("deflate");
        let zlib = encoder.finish().expect("deflate");
        let wanted = wanted_of(&b);
        let found = run(ts::DEFLATED_EXPLICIT_VR_LE, &zlib, true, &wanted)
            .expect("valid")
            .expect("complete");
        check_against_builder(&b, &found);
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_buffer_limit() {
        use flate2::write::DeflateEncoder;
        use std::io::Write;
        let mut b = Builder::new(Encoding::ExplicitLe);
        b.el(PRIVATE_BLOB, b"OB", &vec![0u8; 8 << 20]);
        let mut encoder = DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&b.bytes).expect("deflate");
        let deflated = encoder.finish().expect("deflate");
        assert!(deflated.len() < 1 << 20);
        let limits = ScanLimits {
            buffered_bytes_max: 1 << 20,
            ..ScanLimits::default()
        };
        let err = extract_general(
            ts::DEFLATED_EXPLICIT_VR_LE,
            &deflated,
            0,
            true,
            &|_| false,
            &limits,
        );
        assert!(
            matches!(
                err,
                Err(ScanError::Limit {
                    what: "inflated bytes of the data set before Pixel Data",
                    ..
                })
            ),
            "{err:?}"
        );
        let garbage = [0xFFu8; 64];
        let err = extract_general(
            ts::DEFLATED_EXPLICIT_VR_LE,
            &garbage,
            0,
            true,
            &|_| true,
            &limits,
        );
        assert!(matches!(err, Err(ScanError::Malformed { .. })), "{err:?}");
    }

    #[test]
    fn implicit_bytes_under_an_explicit_syntax_are_read_as_implicit() {
        let b = sample(Encoding::ImplicitLe, false);
        let wanted = wanted_of(&b);
        for uid in [ts::EXPLICIT_VR_LE, "1.2.840.10008.1.2.4.50"] {
            let found = run(uid, &b.bytes, true, &wanted)
                .expect("valid")
                .expect("complete");
            assert!(found.encoding_mismatch);
            check_against_builder(&b, &found);
        }
    }

    #[test]
    fn un_is_read_with_the_dictionary_vr() {
        for encoding in [Encoding::ExplicitLe, Encoding::ExplicitBe] {
            let mut b = Builder::new(encoding);
            // A known tag as UN of defined length: LO, bytes as they are.
            let at = b.el(t(tags::PATIENT_ID), b"UN", b"AB12");
            b.expected
                .push((t(tags::PATIENT_ID), *b"LO", b"AB12".to_vec(), at));
            b.end_top();
            // A known binary tag as UN: its bytes are implicit VR LE, never swapped.
            let at = b.el(t(tags::ROWS), b"UN", &[0x00, 0x02]);
            b.expected
                .push((t(tags::ROWS), *b"US", vec![0x00, 0x02], at));
            b.end_top();
            // An unknown private tag as UN stays UN.
            let at = b.el(PRIVATE_WANTED, b"UN", &[5, 6]);
            b.expected.push((PRIVATE_WANTED, *b"UN", vec![5, 6], at));
            b.end_top();
            // UN of undefined length: a sequence in implicit VR LE, whatever the syntax.
            b.header(Tag::new(0x0009, 0x1030), b"UN", UNDEFINED);
            let mut implicit = Builder::new(Encoding::ImplicitLe);
            implicit.marker(Tag::ITEM, UNDEFINED);
            implicit.el(t(tags::MODALITY), b"CS", b"MR");
            implicit.header(t(tags::REFERENCED_IMAGE_SEQUENCE), b"SQ", UNDEFINED);
            implicit.marker(Tag::ITEM, 0);
            implicit.marker(Tag::SEQUENCE_DELIMITER, 0);
            implicit.marker(Tag::ITEM_DELIMITER, 0);
            implicit.marker(Tag::SEQUENCE_DELIMITER, 0);
            b.bytes.extend_from_slice(&implicit.bytes);
            b.end_top();
            b.wanted(t(tags::COLUMNS), b"US", &300u16.to_le_bytes(), Some(2));
            let pixel_at = b.bytes.len();
            let value_at = b.el(Tag::PIXEL_DATA, b"OW", &[0; 4]);
            b.pixel = Some((pixel_at, value_at));
            let wanted = wanted_of(&b);
            let found = run(uid(encoding), &b.bytes, true, &wanted)
                .expect("valid")
                .expect("complete");
            check_against_builder(&b, &found);
            if encoding == Encoding::ExplicitLe {
                // The fast path walks the undefined-length UN as implicit VR too, and agrees.
                let fast = fast_path(&b.bytes, 64, &wanted).expect("fast path reads it");
                assert_eq!(fast.elements.len(), found.scanned.elements.len());
                for (ours, theirs) in fast.elements.iter().zip(&found.scanned.elements) {
                    assert_eq!((ours.tag, ours.vr), (theirs.tag, theirs.vr));
                    assert_eq!(fast.value(ours), found.scanned.value(theirs));
                }
                assert_eq!(fast.pixel_data, found.scanned.pixel_data);
            }
        }
    }

    #[test]
    fn sequences_are_kept_only_as_explicit_le_bytes() {
        let seq = t(tags::REFERENCED_IMAGE_SEQUENCE);
        for encoding in [
            Encoding::ImplicitLe,
            Encoding::ExplicitLe,
            Encoding::ExplicitBe,
        ] {
            let mut b = Builder::new(encoding);
            let mut item = Builder::new(encoding);
            item.marker(Tag::ITEM, 0);
            b.el(seq, b"SQ", &item.bytes);
            let found = run(uid(encoding), &b.bytes, true, &|tag| tag == seq)
                .expect("valid")
                .expect("complete");
            let kept = found.scanned.elements.len();
            assert_eq!(
                kept,
                usize::from(encoding == Encoding::ExplicitLe),
                "{encoding:?}"
            );
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        for encoding in [
            Encoding::ImplicitLe,
            Encoding::ExplicitLe,
            Encoding::ExplicitBe,
        ] {
            let mut b = Builder::new(encoding);
            for _ in 0..20 {
                b.header(t(tags::REFERENCED_SERIES_SEQUENCE), b"SQ", UNDEFINED);
                b.marker(Tag::ITEM, UNDEFINED);
            }
            let err = run(uid(encoding), &b.bytes, true, &|_| true);
            assert!(
                matches!(
                    err,
                    Err(ScanError::Limit {
                        what: "sequence nesting depth",
                        ..
                    })
                ),
                "{encoding:?}: {err:?}"
            );
        }
    }

    #[test]
    fn malformed_structure_gets_specific_reasons() {
        let reason = |uid: &str, bytes: &[u8]| match run(uid, bytes, true, &|_| true) {
            Err(ScanError::Malformed { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        // An item at the top level.
        let mut b = Builder::new(Encoding::ImplicitLe);
        b.marker(Tag::ITEM, 0);
        assert_eq!(
            reason(ts::IMPLICIT_VR_LE, &b.bytes),
            "(FFFE,E000) outside a sequence"
        );
        // A data element where an item belongs.
        let mut b = Builder::new(Encoding::ExplicitBe);
        b.header(t(tags::REFERENCED_SERIES_SEQUENCE), b"SQ", UNDEFINED);
        b.el(t(tags::MODALITY), b"CS", b"CT");
        assert_eq!(
            reason(ts::EXPLICIT_VR_BE, &b.bytes),
            "(0008,0060) inside (0008,1115) where an item belongs"
        );
        // A VR that is no VR, after a valid first element.
        let mut b = Builder::new(Encoding::ExplicitLe);
        b.el(t(tags::MODALITY), b"CS", b"CT");
        b.el(t(tags::PATIENT_ID), b"LO", b"X ");
        b.bytes[14] = b'x';
        assert_eq!(
            reason(ts::EXPLICIT_VR_LE, &b.bytes),
            "(0010,0020) has no valid explicit VR (bytes 78 4F)"
        );
        // Undefined length on a VR that cannot have it.
        let mut b2 = Builder::new(Encoding::ExplicitLe);
        b2.header(t(tags::PATIENT_COMMENTS), b"UT", UNDEFINED);
        assert_eq!(
            reason(ts::EXPLICIT_VR_LE, &b2.bytes),
            "(0010,4000) has undefined length with VR UT"
        );
        // An unknown transfer syntax.
        assert!(reason("1.2.3.4", &[]).contains("not one the general path knows"));
    }

    #[test]
    fn an_empty_data_set_is_fine_at_the_end_and_needs_more_before() {
        for uid in [ts::IMPLICIT_VR_LE, ts::EXPLICIT_VR_LE, ts::EXPLICIT_VR_BE] {
            assert_eq!(run(uid, &[], false, &|_| true), Ok(None));
            let empty = run(uid, &[], true, &|_| true)
                .expect("valid")
                .expect("complete");
            assert!(empty.scanned.elements.is_empty() && empty.scanned.pixel_data.is_none());
        }
    }

    #[test]
    fn guesses_the_syntax_of_a_data_set_without_meta() {
        for encoding in [
            Encoding::ImplicitLe,
            Encoding::ExplicitLe,
            Encoding::ExplicitBe,
        ] {
            let b = sample(encoding, false);
            assert_eq!(
                looks_like_part10_without_meta(&b.bytes),
                Some(uid(encoding))
            );
            assert_eq!(
                looks_like_part10_without_meta(&b.bytes[..8]),
                Some(uid(encoding))
            );
        }
        // A file meta group, a preamble, text, too short: no guess.
        let meta = crate::dicom::explicit_le::encode_element(
            Tag::new(0x0002, 0x0010),
            b"UI",
            b"1.2.840.10008.1.2\0",
        );
        assert_eq!(looks_like_part10_without_meta(&meta), None);
        assert_eq!(looks_like_part10_without_meta(&[0u8; 200]), None);
        assert_eq!(
            looks_like_part10_without_meta(b"hello, world, not DICOM"),
            None
        );
        assert_eq!(looks_like_part10_without_meta(&[0x08, 0x00]), None);
        // Tags going backwards: not a data set.
        let mut b = Builder::new(Encoding::ImplicitLe);
        b.el(t(tags::MODALITY), b"CS", b"CT");
        b.el(t(tags::SOP_CLASS_UID), b"UI", b"1.2\0");
        assert_eq!(looks_like_part10_without_meta(&b.bytes), None);
    }
}
