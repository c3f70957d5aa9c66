//! Frame maps: the byte range of every frame of an image object, so that one frame of a
//! multi-gigabyte object is served with one range read of the segment store.
//!
//! Two kinds of Pixel Data (7FE0,0010), located by the fast path as a
//! [`PixelDataAt`]:
//!
//! - **Native** (defined length): frames lie back to back and their size follows from the
//!   header ([`ImageGeometry`]), so [`native_frame_map`] is arithmetic — no pixel byte is read.
//!   With BitsAllocated 1 frames are bit-packed and need not start on a byte boundary
//!   (PS3.5 8.1.1); [`FrameRange::bit_offset`] says where a frame starts in its first byte
//!   (bit 0 is the least significant bit, the first pixel's).
//! - **Encapsulated** (undefined length, PS3.5 A.4): a sequence of items — the Basic Offset
//!   Table, then fragments of compressed data, then the sequence delimiter. [`FragmentWalker`]
//!   is fed the bytes after the value offset as they arrive, reads only the 8-byte item
//!   headers, the offset table and the first bytes of each fragment (to recognise codec
//!   start markers), and skips every fragment value without keeping it. What it keeps is
//!   bounded by [`FrameLimits`]: a few bytes per fragment and per frame.
//!
//! An encapsulated [`FrameRange`] starts at the Item tag of the frame's first fragment and
//! ends after its last fragment's value, so a frame split over many fragments is still one
//! range read; [`fragments_of`] takes those bytes apart into the fragment values.
//!
//! How encapsulated fragments are assigned to frames (PS3.5 A.4, PS3.3 C.7.6.3.1.8), first
//! rule that applies:
//! 1. the Extended Offset Table (7FE0,0001) with its lengths (7FE0,0002);
//! 2. a non-empty Basic Offset Table;
//! 3. NumberOfFrames 1: every fragment belongs to the one frame;
//! 4. as many fragments as frames: one fragment per frame;
//! 5. codec start markers: a fragment that begins with a JPEG / JPEG-LS SOI (`FF D8`), a
//!    JPEG 2000 codestream SOC+SIZ (`FF 4F FF 51`) or a JP2 signature box starts a frame.
//!
//! Offset tables are checked (first offset 0, strictly increasing, each on a fragment's Item
//! tag), and every rule must produce exactly NumberOfFrames frames; anything else is a
//! [`FrameError`] naming the offset or entry at fault, since a wrong map would serve the wrong
//! pixels.
//!
//! Tolerated deviations, recorded in [`FrameMap::tolerated`] rather than refused (the object
//! is still readable, and an archive should not reject what it can serve):
//! - items of odd length (the standard wants even lengths) are walked by their declared
//!   length and counted;
//! - native Pixel Data longer than its frames plus the one padding byte, by less than one
//!   frame (an excess of a whole frame or more means NumberOfFrames or the geometry is wrong,
//!   and is an error);
//! - a sequence delimiter with a non-zero length; bytes after the delimiter are not read.

use super::explicit_le::PixelDataAt;
use super::Tag;

/// Bounds on what a frame map may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Most frames in one object (NumberOfFrames, offset table entries).
    pub frames_max: u32,
    /// Most fragments in one encapsulated Pixel Data element.
    pub fragments_max: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        // Whole-slide images reach some hundred thousand tiles per instance. A walk holds 8
        // bytes per fragment and up to 20 per frame; `finish` adds 8 per fragment and 32 per
        // frame: at most about 110 MiB at these bounds, and only for objects that large.
        FrameLimits {
            frames_max: 1 << 20,
            fragments_max: 1 << 21,
        }
    }
}

/// Image attributes a native frame map needs (from the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGeometry {
    /// (0028,0010) Rows.
    pub rows: u16,
    /// (0028,0011) Columns.
    pub columns: u16,
    /// (0028,0002) SamplesPerPixel.
    pub samples_per_pixel: u16,
    /// (0028,0100) BitsAllocated: 1 or a multiple of 8.
    pub bits_allocated: u16,
    /// (0028,0008) NumberOfFrames; 1 when absent.
    pub number_of_frames: u32,
    /// PhotometricInterpretation (0028,0004) is YBR_FULL_422 (or the retired
    /// YBR_PARTIAL_422): native data then holds two samples per pixel, not three (each pair
    /// of pixels is stored as Y Y Cb Cr, PS3.3 C.7.6.3.1.2).
    pub ybr_422: bool,
}

impl ImageGeometry {
    /// Bits in one native frame.
    fn frame_bits(&self) -> Result<u64, FrameError> {
        if self.rows == 0 || self.columns == 0 || self.samples_per_pixel == 0 {
            return Err(FrameError::Geometry(
                "Rows, Columns and SamplesPerPixel must not be 0",
            ));
        }
        if self.bits_allocated != 1 && (self.bits_allocated == 0 || self.bits_allocated % 8 != 0) {
            return Err(FrameError::Geometry(
                "BitsAllocated must be 1 or a multiple of 8",
            ));
        }
        let samples_per_pixel_pair = match (self.ybr_422, self.samples_per_pixel) {
            (false, samples) => 2 * u64::from(samples),
            (true, 3) => 4,
            (true, _) => return Err(FrameError::Geometry("YBR 4:2:2 needs SamplesPerPixel 3")),
        };
        // Rows and columns are u16 and samples per pixel pair at most 2^17, so only the last
        // product can overflow.
        let sample_pairs = u64::from(self.rows) * u64::from(self.columns) * samples_per_pixel_pair;
        sample_pairs
            .checked_mul(u64::from(self.bits_allocated))
            .map(|bits| bits / 2)
            .ok_or(FrameError::Geometry("frame size overflows"))
    }
}

/// One frame's bytes in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRange {
    /// Object offset of the first byte to read. For encapsulated frames: of the Item tag of
    /// the frame's first fragment.
    pub offset: u64,
    /// Bytes to read from `offset`. For encapsulated frames this spans all the frame's
    /// fragments with their 8-byte item headers, so it is still one range read (take it
    /// apart with [`fragments_of`]).
    pub length: u64,
    /// 0 for native pixel data; for encapsulated data the number of fragments in the range.
    pub fragments: u32,
    /// Native data with BitsAllocated 1: the bit (0 = least significant) of the first byte
    /// where the frame starts, as frames need not be byte aligned. 0 otherwise.
    pub bit_offset: u8,
}

/// Which rule assigned bytes to frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Native pixel data: frames back to back.
    Native,
    /// The Extended Offset Table.
    ExtendedOffsetTable,
    /// The Basic Offset Table.
    BasicOffsetTable,
    /// NumberOfFrames is 1: all fragments form the frame.
    SingleFrame,
    /// As many fragments as frames.
    FragmentPerFrame,
    /// Frames start at fragments that begin with a codec start marker.
    CodecMarkers,
}

/// Deviations from the standard that were tolerated (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tolerated {
    /// Encapsulated items (offset table and fragments) of odd length.
    pub odd_length_items: u32,
    /// Native data: bytes after the last frame beyond the one padding byte to even length.
    pub excess_bytes: u64,
}

/// The byte range of every frame of an image object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameMap {
    pub frames: Vec<FrameRange>,
    pub encapsulated: bool,
    pub assignment: Assignment,
    pub tolerated: Tolerated,
}

/// Why a frame map cannot be made. Offsets are object offsets unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("Pixel Data at offset {element_offset} is encapsulated, not native")]
    NotNative { element_offset: u64 },
    #[error(
        "Pixel Data at offset {element_offset} has a defined length: native, not encapsulated"
    )]
    NotEncapsulated { element_offset: u64 },
    #[error("image geometry: {0}")]
    Geometry(&'static str),
    #[error("{what} is {value}, the limit is {max}")]
    Limit {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error(
        "native Pixel Data at offset {value_offset} has {declared_bytes} bytes, \
         its frames need {needed_bytes}"
    )]
    NativeTooShort {
        value_offset: u64,
        declared_bytes: u64,
        needed_bytes: u64,
    },
    #[error(
        "native Pixel Data at offset {value_offset} has {declared_bytes} bytes, a whole frame \
         more than its frames need ({needed_bytes}): NumberOfFrames or the geometry is wrong"
    )]
    NativeExcess {
        value_offset: u64,
        declared_bytes: u64,
        needed_bytes: u64,
    },
    #[error("encapsulated Pixel Data: {tag} at offset {offset}, expected an Item or the sequence delimiter")]
    UnexpectedTag { offset: u64, tag: Tag },
    #[error("encapsulated Pixel Data: item of undefined length at offset {offset}")]
    UndefinedItemLength { offset: u64 },
    #[error("encapsulated Pixel Data: sequence delimiter at offset {offset} before the Basic Offset Table item")]
    MissingOffsetTable { offset: u64 },
    #[error("encapsulated Pixel Data: stream ends at offset {offset} inside {inside}")]
    Truncated { offset: u64, inside: &'static str },
    #[error("encapsulated Pixel Data at offset {element_offset} has no fragments")]
    NoFragments { element_offset: u64 },
    #[error("{table} offset table: {reason}")]
    OffsetTableSize { table: &'static str, reason: String },
    #[error("{table} offset table entry {index} ({value}): {reason}")]
    OffsetTableEntry {
        table: &'static str,
        index: usize,
        value: u64,
        reason: &'static str,
    },
    #[error("extended offset table: frame {index} is {declared_bytes} bytes by its length entry, {found_bytes} by its fragments")]
    ExtendedLength {
        index: usize,
        declared_bytes: u64,
        found_bytes: u64,
    },
    #[error("{found} frames by {rule}, NumberOfFrames is {expected}")]
    FrameCount {
        rule: &'static str,
        found: u64,
        expected: u32,
    },
    #[error("frame range byte {offset}: {reason}")]
    FragmentRange { offset: u64, reason: &'static str },
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Native (uncompressed) pixel data: frames back to back, each
/// rows × columns × samples × BitsAllocated / 8 bytes (bit-packed for BitsAllocated 1).
/// The element's declared length must hold all frames; one padding byte to even length is
/// expected, more than that is tolerated below one frame (see the module documentation).
pub fn native_frame_map(
    pixel: &PixelDataAt,
    geometry: &ImageGeometry,
    limits: &FrameLimits,
) -> Result<FrameMap, FrameError> {
    let Some(declared) = pixel.length else {
        return Err(FrameError::NotNative {
            element_offset: pixel.element_offset,
        });
    };
    let declared_bytes = u64::from(declared);
    let frames = check_frame_count(geometry.number_of_frames, limits)?;
    let frame_bits = geometry.frame_bits()?;
    let needed_bytes = frame_bits
        .checked_mul(u64::from(frames))
        .ok_or(FrameError::Geometry("pixel data size overflows"))?
        .div_ceil(8);
    if declared_bytes < needed_bytes {
        return Err(FrameError::NativeTooShort {
            value_offset: pixel.value_offset,
            declared_bytes,
            needed_bytes,
        });
    }
    let excess_bytes = declared_bytes - needed_bytes.next_multiple_of(2).min(declared_bytes);
    if excess_bytes > 0 && excess_bytes >= frame_bits.div_ceil(8) {
        return Err(FrameError::NativeExcess {
            value_offset: pixel.value_offset,
            declared_bytes,
            needed_bytes,
        });
    }
    let frames = (0..u64::from(frames))
        .map(|index| {
            let start_bit = index * frame_bits;
            // `start_bit % 8` is below 8 and only non-zero for BitsAllocated 1.
            let bit_offset = (start_bit % 8) as u8;
            FrameRange {
                offset: pixel.value_offset + start_bit / 8,
                length: (u64::from(bit_offset) + frame_bits).div_ceil(8),
                fragments: 0,
                bit_offset,
            }
        })
        .collect();
    Ok(FrameMap {
        frames,
        encapsulated: false,
        assignment: Assignment::Native,
        tolerated: Tolerated {
            odd_length_items: 0,
            excess_bytes,
        },
    })
}

fn check_frame_count(number_of_frames: u32, limits: &FrameLimits) -> Result<u32, FrameError> {
    if number_of_frames == 0 {
        return Err(FrameError::Geometry("NumberOfFrames must not be 0"));
    }
    if number_of_frames > limits.frames_max {
        return Err(FrameError::Limit {
            what: "NumberOfFrames",
            value: number_of_frames.into(),
            max: limits.frames_max.into(),
        });
    }
    Ok(number_of_frames)
}

/// Progress after a [`FragmentWalker::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkProgress {
    /// Feed more bytes.
    NeedMore,
    /// The sequence delimiter was reached; call [`FragmentWalker::finish`].
    Done,
}

/// Bytes of a fragment's value looked at for codec start markers (a JP2 signature box
/// needs 8 to be told from arbitrary data).
const PEEK_BYTES: usize = 8;

/// A fragment as the walker keeps it: its item offset follows from the lengths before it.
#[derive(Debug, Clone, Copy)]
struct Fragment {
    value_bytes: u32,
    /// Begins with a codec start marker.
    marker: bool,
}

#[derive(Debug)]
enum State {
    /// Reading an item header (tag and length).
    Header { bytes: [u8; 8], have: usize },
    /// Reading the Basic Offset Table's entries (`keep`: false when an Extended Offset
    /// Table overrides it, so it is skipped).
    OffsetTable {
        remaining_bytes: u32,
        entry: [u8; 4],
        have: usize,
        keep: bool,
    },
    /// Skipping a fragment's value, keeping its first bytes in `peek`.
    Fragment {
        remaining_bytes: u32,
        peek: [u8; PEEK_BYTES],
        have: usize,
        peek_bytes: usize,
    },
    /// The sequence delimiter was read.
    Done,
}

/// Streaming walker over encapsulated Pixel Data (PS3.5 A.4); see the module documentation.
///
/// Fed the object bytes that follow [`PixelDataAt::value_offset`] in chunks of any size, it
/// reads item headers and the Basic Offset Table and skips fragment values; it reports
/// [`WalkProgress::Done`] at the sequence delimiter and ignores whatever follows.
#[derive(Debug)]
pub struct FragmentWalker {
    element_offset: u64,
    value_offset: u64,
    number_of_frames: u32,
    limits: FrameLimits,
    /// (offset, length) of each frame from the Extended Offset Table.
    extended: Option<Vec<(u64, u64)>>,
    basic: Vec<u32>,
    /// Bytes after `value_offset` walked so far.
    walked_bytes: u64,
    /// Bytes after `value_offset` where the first fragment's item starts; `None` until the
    /// Basic Offset Table's header is read.
    fragments_start: Option<u64>,
    fragments: Vec<Fragment>,
    state: State,
    odd_length_items: u32,
    /// The first error; the walk stops there.
    failed: Option<FrameError>,
}

impl FragmentWalker {
    /// A walker for `pixel` (which must have undefined length). `extended_offsets` are the
    /// raw little-endian OV values of (7FE0,0001) Extended Offset Table and (7FE0,0002)
    /// Extended Offset Table Lengths, when the object has them.
    pub fn new(
        pixel: &PixelDataAt,
        number_of_frames: u32,
        extended_offsets: Option<(&[u8], &[u8])>,
        limits: FrameLimits,
    ) -> Result<Self, FrameError> {
        if pixel.length.is_some() {
            return Err(FrameError::NotEncapsulated {
                element_offset: pixel.element_offset,
            });
        }
        let number_of_frames = check_frame_count(number_of_frames, &limits)?;
        let extended = match extended_offsets {
            // Empty values say nothing; treat them as absent.
            Some((offsets, lengths)) if !(offsets.is_empty() && lengths.is_empty()) => {
                Some(read_extended(offsets, lengths, number_of_frames)?)
            }
            _ => None,
        };
        Ok(FragmentWalker {
            element_offset: pixel.element_offset,
            value_offset: pixel.value_offset,
            number_of_frames,
            limits,
            extended,
            basic: Vec::new(),
            walked_bytes: 0,
            fragments_start: None,
            fragments: Vec::new(),
            state: State::Header {
                bytes: [0; 8],
                have: 0,
            },
            odd_length_items: 0,
            failed: None,
        })
    }

    /// Feeds the next bytes. After an error every call returns that error.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<WalkProgress, FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let walked = self.walk(bytes);
        if let Err(error) = &walked {
            self.failed = Some(error.clone());
        }
        walked
    }

    fn walk(&mut self, mut bytes: &[u8]) -> Result<WalkProgress, FrameError> {
        while !bytes.is_empty() {
            let taken = match &mut self.state {
                State::Done => break,
                State::Header {
                    bytes: header,
                    have,
                } => {
                    let take = (8 - *have).min(bytes.len());
                    header[*have..*have + take].copy_from_slice(&bytes[..take]);
                    *have += take;
                    let header = (*have == 8).then_some(*header);
                    self.walked_bytes += take as u64;
                    if let Some(header) = header {
                        self.on_header(header)?;
                    }
                    take
                }
                State::OffsetTable {
                    remaining_bytes,
                    entry,
                    have,
                    keep,
                } => {
                    let take = (*remaining_bytes as usize).min(bytes.len());
                    *remaining_bytes -= take as u32;
                    if *keep {
                        for &byte in &bytes[..take] {
                            entry[*have] = byte;
                            *have += 1;
                            if *have == 4 {
                                self.basic.push(u32::from_le_bytes(*entry));
                                *have = 0;
                            }
                        }
                    }
                    if *remaining_bytes == 0 {
                        self.state = State::header();
                    }
                    self.walked_bytes += take as u64;
                    take
                }
                State::Fragment {
                    remaining_bytes,
                    peek,
                    have,
                    peek_bytes,
                } => {
                    let take = (*remaining_bytes as usize).min(bytes.len());
                    let peek_take = (*peek_bytes - *have).min(take);
                    peek[*have..*have + peek_take].copy_from_slice(&bytes[..peek_take]);
                    *have += peek_take;
                    *remaining_bytes -= take as u32;
                    if *have == *peek_bytes && peek_take > 0 {
                        let marker = starts_frame(&peek[..*have]);
                        if let Some(last) = self.fragments.last_mut() {
                            last.marker = marker;
                        }
                    }
                    if *remaining_bytes == 0 {
                        self.state = State::header();
                    }
                    self.walked_bytes += take as u64;
                    take
                }
            };
            bytes = &bytes[taken..];
        }
        Ok(match self.state {
            State::Done => WalkProgress::Done,
            _ => WalkProgress::NeedMore,
        })
    }

    /// Acts on a complete item header; `walked_bytes` is just past it.
    fn on_header(&mut self, header: [u8; 8]) -> Result<(), FrameError> {
        let header_offset = self.value_offset + self.walked_bytes - 8;
        let tag = Tag::new(
            u16::from_le_bytes([header[0], header[1]]),
            u16::from_le_bytes([header[2], header[3]]),
        );
        let length = le_u32(&header[4..]);
        if tag == Tag::SEQUENCE_DELIMITER {
            if self.fragments_start.is_none() {
                return Err(FrameError::MissingOffsetTable {
                    offset: header_offset,
                });
            }
            // Its length should be 0; whatever it says, nothing of the sequence follows.
            self.state = State::Done;
            return Ok(());
        }
        if tag != Tag::ITEM {
            return Err(FrameError::UnexpectedTag {
                offset: header_offset,
                tag,
            });
        }
        if length == u32::MAX {
            return Err(FrameError::UndefinedItemLength {
                offset: header_offset,
            });
        }
        if length % 2 == 1 {
            self.odd_length_items += 1;
        }
        if self.fragments_start.is_none() {
            self.fragments_start = Some(self.walked_bytes + u64::from(length));
            return self.on_basic_offset_table(length);
        }
        if self.fragments.len() >= self.limits.fragments_max as usize {
            return Err(FrameError::Limit {
                what: "fragments",
                value: self.fragments.len() as u64 + 1,
                max: self.limits.fragments_max.into(),
            });
        }
        self.fragments.push(Fragment {
            value_bytes: length,
            marker: false,
        });
        self.state = match length {
            0 => State::header(),
            _ => State::Fragment {
                remaining_bytes: length,
                peek: [0; PEEK_BYTES],
                have: 0,
                peek_bytes: PEEK_BYTES.min(length as usize),
            },
        };
        Ok(())
    }

    fn on_basic_offset_table(&mut self, length: u32) -> Result<(), FrameError> {
        let keep = self.extended.is_none();
        if keep && length > 0 {
            let size_error = |reason: String| FrameError::OffsetTableSize {
                table: "basic",
                reason,
            };
            if length % 4 != 0 {
                return Err(size_error(format!(
                    "{length} bytes is not a whole number of 4-byte entries"
                )));
            }
            let entries = length / 4;
            if entries > self.limits.frames_max {
                return Err(FrameError::Limit {
                    what: "Basic Offset Table entries",
                    value: entries.into(),
                    max: self.limits.frames_max.into(),
                });
            }
            if entries != self.number_of_frames {
                return Err(size_error(format!(
                    "{entries} entries, NumberOfFrames is {}",
                    self.number_of_frames
                )));
            }
            self.basic.reserve_exact(entries as usize);
        }
        self.state = match length {
            0 => State::header(),
            _ => State::OffsetTable {
                remaining_bytes: length,
                entry: [0; 4],
                have: 0,
                keep,
            },
        };
        Ok(())
    }

    /// Ends the walk (the stream must have reached the sequence delimiter) and assigns the
    /// fragments to frames.
    pub fn finish(self) -> Result<FrameMap, FrameError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let inside = match self.state {
            State::Done => None,
            State::Header { have: 0, .. } => Some("the item sequence, before its delimiter"),
            State::Header { .. } => Some("an item header"),
            State::OffsetTable { .. } => Some("the Basic Offset Table"),
            State::Fragment { .. } => Some("a fragment"),
        };
        if let Some(inside) = inside {
            return Err(FrameError::Truncated {
                offset: self.value_offset + self.walked_bytes,
                inside,
            });
        }
        if self.fragments.is_empty() {
            return Err(FrameError::NoFragments {
                element_offset: self.element_offset,
            });
        }
        // Offsets of each fragment's item relative to the first, and of the end.
        let mut item_offsets = Vec::with_capacity(self.fragments.len() + 1);
        let mut at = 0u64;
        for fragment in &self.fragments {
            item_offsets.push(at);
            at += 8 + u64::from(fragment.value_bytes);
        }
        item_offsets.push(at);
        let frames = self.number_of_frames as usize;

        let (assignment, starts) = if let Some(extended) = &self.extended {
            let offsets = extended.iter().map(|&(offset, _)| offset);
            let starts = starts_from_table("extended", offsets, &item_offsets)?;
            (Assignment::ExtendedOffsetTable, starts)
        } else if !self.basic.is_empty() {
            let offsets = self.basic.iter().map(|&offset| u64::from(offset));
            let starts = starts_from_table("basic", offsets, &item_offsets)?;
            (Assignment::BasicOffsetTable, starts)
        } else if frames == 1 {
            (Assignment::SingleFrame, vec![0])
        } else if self.fragments.len() == frames {
            (Assignment::FragmentPerFrame, (0..frames).collect())
        } else {
            let starts: Vec<usize> = self
                .fragments
                .iter()
                .enumerate()
                .filter(|(_, fragment)| fragment.marker)
                .map(|(index, _)| index)
                .collect();
            let count_error = |rule| FrameError::FrameCount {
                rule,
                found: starts.len() as u64,
                expected: self.number_of_frames,
            };
            // Data before the first marker would belong to no frame.
            if starts.first() != Some(&0) {
                return Err(count_error(
                    "codec start markers, but the first fragment has none",
                ));
            }
            if starts.len() != frames {
                return Err(count_error(
                    "codec start markers (empty offset table, fragment and frame counts differ)",
                ));
            }
            (Assignment::CodecMarkers, starts)
        };

        let fragments_start = self.value_offset + self.fragments_start.unwrap_or(8);
        let mut ranges = Vec::with_capacity(frames);
        for (index, &first) in starts.iter().enumerate() {
            let end = starts
                .get(index + 1)
                .copied()
                .unwrap_or(self.fragments.len());
            let count = end - first;
            let length = item_offsets[end] - item_offsets[first];
            if let Some(extended) = &self.extended {
                // The lengths count fragment values without item headers; a writer may give
                // an odd frame's length before padding.
                let declared_bytes = extended[index].1;
                let found_bytes = length - 8 * count as u64;
                if declared_bytes != found_bytes && declared_bytes + 1 != found_bytes {
                    return Err(FrameError::ExtendedLength {
                        index,
                        declared_bytes,
                        found_bytes,
                    });
                }
            }
            ranges.push(FrameRange {
                offset: fragments_start + item_offsets[first],
                length,
                // At most `fragments_max`, a u32.
                fragments: count as u32,
                bit_offset: 0,
            });
        }
        Ok(FrameMap {
            frames: ranges,
            encapsulated: true,
            assignment,
            tolerated: Tolerated {
                odd_length_items: self.odd_length_items,
                excess_bytes: 0,
            },
        })
    }
}

impl State {
    fn header() -> Self {
        State::Header {
            bytes: [0; 8],
            have: 0,
        }
    }
}

/// Decodes the Extended Offset Table and its lengths: one 8-byte entry per frame each.
fn read_extended(
    offsets: &[u8],
    lengths: &[u8],
    number_of_frames: u32,
) -> Result<Vec<(u64, u64)>, FrameError> {
    let size_error = |reason: String| FrameError::OffsetTableSize {
        table: "extended",
        reason,
    };
    if offsets.len() % 8 != 0 || lengths.len() % 8 != 0 {
        return Err(size_error(format!(
            "{} offset bytes and {} length bytes are not whole 8-byte entries",
            offsets.len(),
            lengths.len()
        )));
    }
    let entries = offsets.len() / 8;
    if lengths.len() / 8 != entries || entries != number_of_frames as usize {
        return Err(size_error(format!(
            "{entries} offsets and {} lengths, NumberOfFrames is {number_of_frames}",
            lengths.len() / 8
        )));
    }
    let entry = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    Ok(offsets
        .chunks_exact(8)
        .zip(lengths.chunks_exact(8))
        .map(|(offset, length)| (entry(offset), entry(length)))
        .collect())
}

/// Maps offset table entries (relative to the first fragment's item) to the indices of the
/// fragments where frames start: the first must be 0, each larger than the one before, and
/// each on a fragment's Item tag.
fn starts_from_table(
    table: &'static str,
    offsets: impl Iterator<Item = u64>,
    item_offsets: &[u64],
) -> Result<Vec<usize>, FrameError> {
    let fragments = item_offsets.len() - 1;
    let mut starts = Vec::with_capacity(offsets.size_hint().0);
    let mut fragment = 0;
    for (index, offset) in offsets.enumerate() {
        let entry_error = |reason| FrameError::OffsetTableEntry {
            table,
            index,
            value: offset,
            reason,
        };
        if index == 0 && offset != 0 {
            return Err(entry_error(
                "the first frame must start at the first fragment",
            ));
        }
        if index > 0 && offset <= item_offsets[fragment] {
            return Err(entry_error("not larger than the entry before"));
        }
        while fragment < fragments && item_offsets[fragment] < offset {
            fragment += 1;
        }
        if fragment == fragments {
            return Err(entry_error("beyond the last fragment"));
        }
        if item_offsets[fragment] != offset {
            return Err(entry_error("inside a fragment, not on an Item tag"));
        }
        starts.push(fragment);
    }
    Ok(starts)
}

/// Whether a fragment beginning with `first_bytes` starts a frame: JPEG and JPEG-LS start of
/// image, JPEG 2000 codestream (SOC then SIZ), or a JP2 file's signature box.
///
/// Inside entropy-coded data JPEG follows every `FF` with `00` or a restart marker, so a
/// continuation fragment starts with `FF D8` only when a writer split a frame inside a marker
/// segment (an embedded thumbnail, say); the 4- and 8-byte JPEG 2000 signatures start one
/// only by chance. The frame count check catches most such misreads.
fn starts_frame(first_bytes: &[u8]) -> bool {
    const JP2_SIGNATURE: [u8; 8] = [0, 0, 0, 0x0C, b'j', b'P', b' ', b' '];
    first_bytes.starts_with(&[0xFF, 0xD8])
        || first_bytes.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
        || first_bytes.starts_with(&JP2_SIGNATURE)
}

/// The fragment values of one encapsulated frame, from the bytes of its [`FrameRange`]
/// (read with one range read), without their item headers. Each header must be an Item tag
/// whose length fits in the range, and the range must hold exactly `fragments` items; an
/// error (offsets relative to the range) ends the iteration.
pub fn fragments_of(range_bytes: &[u8], fragments: u32) -> Fragments<'_> {
    Fragments {
        bytes: range_bytes,
        at: 0,
        remaining: fragments,
        done: false,
    }
}

/// Iterator returned by [`fragments_of`].
#[derive(Debug, Clone)]
pub struct Fragments<'a> {
    bytes: &'a [u8],
    at: usize,
    remaining: u32,
    done: bool,
}

impl<'a> Iterator for Fragments<'a> {
    type Item = Result<&'a [u8], FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let error = |offset: usize, reason| {
            Some(Err(FrameError::FragmentRange {
                offset: offset as u64,
                reason,
            }))
        };
        let rest = &self.bytes[self.at..];
        if self.remaining == 0 {
            self.done = true;
            return match rest.is_empty() {
                true => None,
                false => error(self.at, "bytes after the frame's last fragment"),
            };
        }
        self.done = true;
        if rest.len() < 8 {
            return error(self.at, "range ends inside an item header");
        }
        let tag = Tag::new(
            u16::from_le_bytes([rest[0], rest[1]]),
            u16::from_le_bytes([rest[2], rest[3]]),
        );
        if tag != Tag::ITEM {
            return error(self.at, "not an Item tag");
        }
        let length = le_u32(&rest[4..8]) as usize;
        let Some(value) = rest.get(8..).and_then(|value| value.get(..length)) else {
            return error(self.at, "item length beyond the range");
        };
        self.done = false;
        self.remaining -= 1;
        self.at += 8 + length;
        Some(Ok(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::dicom::explicit_le::{ExplicitLeScanner, Progress, ScanLimits, Scanned};
    use crate::dicom::meta::{read_file_meta, ts, MetaLimits};
    use proptest::prelude::*;

    /// Where Pixel Data's value starts in the test objects.
    const VALUE_OFFSET: u64 = 300;
    const DELIMITER: [u8; 8] = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];
    const JPEG: [u8; 4] = [0xFF, 0xD8, 0xFF, 0xE0];
    const J2K: [u8; 4] = [0xFF, 0x4F, 0xFF, 0x51];
    const JP2: [u8; 12] = [
        0, 0, 0, 0x0C, b'j', b'P', b' ', b' ', 0x0D, 0x0A, 0x87, 0x0A,
    ];

    type Frames = Vec<Vec<Vec<u8>>>;

    fn encapsulated() -> PixelDataAt {
        PixelDataAt {
            element_offset: VALUE_OFFSET - 12,
            value_offset: VALUE_OFFSET,
            vr: *b"OB",
            length: None,
        }
    }

    fn native(length: u32) -> PixelDataAt {
        PixelDataAt {
            element_offset: VALUE_OFFSET - 12,
            value_offset: VALUE_OFFSET,
            vr: *b"OW",
            length: Some(length),
        }
    }

    fn item(value: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFE, 0xFF, 0x00, 0xE0];
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    /// An encapsulated Pixel Data value: offset table item, fragments, delimiter.
    fn sequence(basic: &[u32], frames: &Frames) -> Vec<u8> {
        let table: Vec<u8> = basic.iter().flat_map(|o| o.to_le_bytes()).collect();
        let mut out = item(&table);
        for fragment in frames.iter().flatten() {
            out.extend(item(fragment));
        }
        out.extend_from_slice(&DELIMITER);
        out
    }

    /// Item offsets of the frames' first fragments, relative to the first fragment.
    fn frame_offsets(frames: &Frames) -> Vec<u64> {
        let mut at = 0;
        frames
            .iter()
            .map(|frame| {
                let start = at;
                at += frame.iter().map(|f| 8 + f.len() as u64).sum::<u64>();
                start
            })
            .collect()
    }

    fn basic_table(frames: &Frames) -> Vec<u32> {
        frame_offsets(frames).iter().map(|&o| o as u32).collect()
    }

    /// Extended Offset Table values for frames of one fragment each.
    fn extended_table(frames: &Frames) -> (Vec<u8>, Vec<u8>) {
        let offsets = frame_offsets(frames)
            .iter()
            .flat_map(|o| o.to_le_bytes())
            .collect();
        let lengths = frames
            .iter()
            .flat_map(|f| (f[0].len() as u64).to_le_bytes())
            .collect();
        (offsets, lengths)
    }

    fn walk_in_chunks(
        stream: &[u8],
        frames: u32,
        extended: Option<(&[u8], &[u8])>,
        chunk_sizes: impl IntoIterator<Item = usize>,
    ) -> Result<FrameMap, FrameError> {
        let mut walker =
            FragmentWalker::new(&encapsulated(), frames, extended, FrameLimits::default())?;
        let mut rest = stream;
        for size in chunk_sizes {
            if rest.is_empty() {
                break;
            }
            let (chunk, after) = rest.split_at(size.clamp(1, rest.len()));
            walker.feed(chunk)?;
            rest = after;
        }
        assert!(rest.is_empty(), "chunk sizes ran out");
        walker.finish()
    }

    fn walk(
        stream: &[u8],
        frames: u32,
        extended: Option<(&[u8], &[u8])>,
    ) -> Result<FrameMap, FrameError> {
        walk_in_chunks(stream, frames, extended, [stream.len()])
    }

    /// The fragments of every frame, read back through the map from the whole object.
    fn read_frames(stream: &[u8], map: &FrameMap) -> Frames {
        let object = [vec![0xAA; VALUE_OFFSET as usize], stream.to_vec()].concat();
        map.frames
            .iter()
            .map(|frame| {
                let range = &object[frame.offset as usize..(frame.offset + frame.length) as usize];
                fragments_of(range, frame.fragments)
                    .map(|fragment| fragment.expect("fragment").to_vec())
                    .collect()
            })
            .collect()
    }

    fn fragment(marker: &[u8], filler: u8, len: usize) -> Vec<u8> {
        let mut out = marker.to_vec();
        out.resize(len.max(marker.len()), filler);
        out
    }

    /// Three frames of JPEG: 3, 1 and 2 fragments.
    fn jpeg_frames() -> Frames {
        vec![
            vec![fragment(&JPEG, 1, 10), vec![0x12; 6], vec![0x34; 4]],
            vec![fragment(&JPEG, 2, 4)],
            vec![fragment(&JPEG, 3, 8), vec![]],
        ]
    }

    // ---- native ----

    fn geometry(rows: u16, columns: u16, samples: u16, bits: u16, frames: u32) -> ImageGeometry {
        ImageGeometry {
            rows,
            columns,
            samples_per_pixel: samples,
            bits_allocated: bits,
            number_of_frames: frames,
            ybr_422: false,
        }
    }

    fn native_map(length: u32, geometry: ImageGeometry) -> Result<FrameMap, FrameError> {
        native_frame_map(&native(length), &geometry, &FrameLimits::default())
    }

    fn ranges(map: &FrameMap) -> Vec<(u64, u64, u8)> {
        map.frames
            .iter()
            .map(|f| (f.offset - VALUE_OFFSET, f.length, f.bit_offset))
            .collect()
    }

    #[test]
    fn native_8_bit_single_frame() {
        let map = native_map(20, geometry(4, 5, 1, 8, 1)).expect("map");
        assert_eq!(ranges(&map), [(0, 20, 0)]);
        assert!(!map.encapsulated);
        assert_eq!(map.assignment, Assignment::Native);
        assert_eq!(map.frames[0].fragments, 0);
        assert_eq!(map.tolerated, Tolerated::default());
    }

    #[test]
    fn native_16_bit_frames_lie_back_to_back() {
        let map = native_map(48, geometry(2, 3, 1, 16, 4)).expect("map");
        assert_eq!(
            ranges(&map),
            [(0, 12, 0), (12, 12, 0), (24, 12, 0), (36, 12, 0)]
        );
    }

    #[test]
    fn native_rgb_with_odd_frames_and_the_padding_byte() {
        // 3×3 RGB: 27 bytes a frame.
        let map = native_map(54, geometry(3, 3, 3, 8, 2)).expect("map");
        assert_eq!(ranges(&map), [(0, 27, 0), (27, 27, 0)]);
        let single = geometry(3, 3, 3, 8, 1);
        for declared in [27, 28] {
            let map = native_map(declared, single).expect("padding");
            assert_eq!(ranges(&map), [(0, 27, 0)]);
            assert_eq!(map.tolerated.excess_bytes, 0, "{declared}");
        }
        // Excess below a frame is tolerated and recorded; a whole frame more is an error.
        assert_eq!(
            native_map(40, single)
                .expect("excess")
                .tolerated
                .excess_bytes,
            12
        );
        assert_eq!(
            native_map(55, single),
            Err(FrameError::NativeExcess {
                value_offset: VALUE_OFFSET,
                declared_bytes: 55,
                needed_bytes: 27
            })
        );
    }

    #[test]
    fn native_declared_length_too_short_is_an_error() {
        assert_eq!(
            native_map(53, geometry(3, 3, 3, 8, 2)),
            Err(FrameError::NativeTooShort {
                value_offset: VALUE_OFFSET,
                declared_bytes: 53,
                needed_bytes: 54
            })
        );
        assert!(matches!(
            native_map(5, geometry(3, 3, 1, 1, 5)),
            Err(FrameError::NativeTooShort {
                needed_bytes: 6,
                ..
            })
        ));
    }

    /// Packs bits least significant first, as PS3.5 8.1.1 does for BitsAllocated 1.
    fn pack_bits(bits: &[bool]) -> Vec<u8> {
        let mut out = vec![0u8; bits.len().div_ceil(8)];
        for (index, &bit) in bits.iter().enumerate() {
            out[index / 8] |= u8::from(bit) << (index % 8);
        }
        out
    }

    #[test]
    fn native_1_bit_frames_need_not_be_byte_aligned() {
        // 3×3 pixels: 9 bits a frame, so frame i starts at bit 9i.
        let map = native_map(6, geometry(3, 3, 1, 1, 5)).expect("map");
        assert_eq!(
            ranges(&map),
            [(0, 2, 0), (1, 2, 1), (2, 2, 2), (3, 2, 3), (4, 2, 4)]
        );

        // Read every frame's pixels back through its range and bit offset.
        for (rows, columns, frames) in [(3u16, 3u16, 5u32), (5, 5, 3), (4, 4, 3), (7, 1, 9)] {
            let frame_bits = usize::from(rows) * usize::from(columns);
            let pixels: Vec<bool> = (0..frame_bits * frames as usize)
                .map(|i| (i * 7 + i / 3) % 5 < 2)
                .collect();
            let packed = pack_bits(&pixels);
            let declared = packed.len().next_multiple_of(2) as u32;
            let object = [vec![0u8; VALUE_OFFSET as usize], packed].concat();
            let map = native_map(declared, geometry(rows, columns, 1, 1, frames)).expect("map");
            assert_eq!(map.frames.len(), frames as usize);
            for (index, frame) in map.frames.iter().enumerate() {
                let bytes = &object[frame.offset as usize..(frame.offset + frame.length) as usize];
                let read: Vec<bool> = (0..frame_bits)
                    .map(|bit| {
                        let at = bit + usize::from(frame.bit_offset);
                        bytes[at / 8] >> (at % 8) & 1 == 1
                    })
                    .collect();
                assert_eq!(
                    read,
                    pixels[index * frame_bits..][..frame_bits],
                    "frame {index}"
                );
            }
        }
    }

    #[test]
    fn native_ybr_full_422_holds_two_samples_per_pixel() {
        let mut ybr = geometry(2, 4, 3, 8, 2);
        ybr.ybr_422 = true;
        let map = native_map(32, ybr).expect("map");
        assert_eq!(ranges(&map), [(0, 16, 0), (16, 16, 0)]);
        ybr.samples_per_pixel = 1;
        assert!(matches!(native_map(32, ybr), Err(FrameError::Geometry(_))));
    }

    #[test]
    fn native_rejects_impossible_geometry_and_encapsulated_data() {
        for bad in [
            geometry(0, 3, 1, 8, 1),
            geometry(3, 3, 0, 8, 1),
            geometry(3, 3, 1, 12, 1),
            geometry(3, 3, 1, 0, 1),
            geometry(3, 3, 1, 8, 0),
            geometry(u16::MAX, u16::MAX, u16::MAX, 0xFFF8, 1),
        ] {
            assert!(
                matches!(native_map(u32::MAX - 1, bad), Err(FrameError::Geometry(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            native_frame_map(
                &encapsulated(),
                &geometry(3, 3, 1, 8, 1),
                &FrameLimits::default()
            ),
            Err(FrameError::NotNative {
                element_offset: VALUE_OFFSET - 12
            })
        );
    }

    // ---- encapsulated ----

    #[test]
    fn basic_offset_table_assigns_fragments_to_frames() {
        let frames = jpeg_frames();
        let stream = sequence(&basic_table(&frames), &frames);
        let map = walk(&stream, 3, None).expect("map");
        assert!(map.encapsulated);
        assert_eq!(map.assignment, Assignment::BasicOffsetTable);
        // Fragments start after the offset table item: 8 + 3 × 4 bytes.
        let first = VALUE_OFFSET + 20;
        assert_eq!(
            map.frames,
            [
                FrameRange {
                    offset: first,
                    length: 18 + 14 + 12,
                    fragments: 3,
                    bit_offset: 0
                },
                FrameRange {
                    offset: first + 44,
                    length: 12,
                    fragments: 1,
                    bit_offset: 0
                },
                FrameRange {
                    offset: first + 56,
                    length: 16 + 8,
                    fragments: 2,
                    bit_offset: 0
                },
            ]
        );
        assert_eq!(read_frames(&stream, &map), frames);
    }

    #[test]
    fn empty_offset_table_and_one_frame_takes_every_fragment() {
        // No codec markers: the single frame needs none.
        let frames = vec![vec![vec![1; 6], vec![2; 10], vec![3; 2]]];
        let stream = sequence(&[], &frames);
        let map = walk(&stream, 1, None).expect("map");
        assert_eq!(map.assignment, Assignment::SingleFrame);
        assert_eq!(map.frames.len(), 1);
        assert_eq!(map.frames[0].fragments, 3);
        assert_eq!(map.frames[0].offset, VALUE_OFFSET + 8);
        assert_eq!(read_frames(&stream, &map), frames);
    }

    #[test]
    fn empty_offset_table_with_as_many_fragments_as_frames() {
        // RLE-like fragments: no markers needed either.
        let frames: Frames = (1..=4u8)
            .map(|i| vec![vec![i; 64 + 2 * i as usize]])
            .collect();
        let stream = sequence(&[], &frames);
        let map = walk(&stream, 4, None).expect("map");
        assert_eq!(map.assignment, Assignment::FragmentPerFrame);
        assert!(map.frames.iter().all(|f| f.fragments == 1));
        assert_eq!(read_frames(&stream, &map), frames);
    }

    #[test]
    fn codec_markers_find_frames_split_over_fragments() {
        let jp2_frames = vec![
            vec![fragment(&JP2, 1, 20), vec![0; 4]],
            vec![fragment(&JP2, 2, 12)],
        ];
        let j2k_frames = vec![
            vec![fragment(&J2K, 1, 9)],
            vec![fragment(&J2K, 2, 9), vec![0xFF, 0x4F], vec![0xFF; 3]],
        ];
        for frames in [jpeg_frames(), jp2_frames, j2k_frames] {
            let stream = sequence(&[], &frames);
            let map = walk(&stream, frames.len() as u32, None).expect("map");
            assert_eq!(map.assignment, Assignment::CodecMarkers);
            assert_eq!(read_frames(&stream, &map), frames);
        }
    }

    #[test]
    fn codec_markers_that_do_not_match_the_frame_count_are_an_error() {
        let frames = jpeg_frames();
        let stream = sequence(&[], &frames);
        assert!(matches!(
            walk(&stream, 2, None),
            Err(FrameError::FrameCount {
                found: 3,
                expected: 2,
                ..
            })
        ));
        // A first fragment without a marker belongs to no frame.
        let unmarked = vec![
            vec![vec![0; 4], fragment(&JPEG, 1, 6)],
            vec![fragment(&JPEG, 2, 6)],
        ];
        assert!(matches!(
            walk(&sequence(&[], &unmarked), 2, None),
            Err(FrameError::FrameCount { found: 2, .. })
        ));
        // Too few fragments for one each, and no markers.
        let plain = vec![vec![vec![1; 4]], vec![vec![2; 4]]];
        assert!(matches!(
            walk(&sequence(&[], &plain), 3, None),
            Err(FrameError::FrameCount { found: 0, .. })
        ));
    }

    #[test]
    fn extended_offset_table_wins_over_the_basic_one() {
        // Odd frame lengths: items are padded, lengths may give the unpadded size.
        let frames: Frames = vec![
            vec![fragment(&J2K, 7, 30)],
            vec![fragment(&J2K, 8, 6)],
            vec![fragment(&J2K, 9, 12)],
        ];
        let (offsets, mut lengths) = extended_table(&frames);
        lengths[8] = 5;
        // A bogus Basic Offset Table is ignored (it should be empty).
        let stream = sequence(&[7, 7], &frames);
        let map = walk(&stream, 3, Some((&offsets, &lengths))).expect("map");
        assert_eq!(map.assignment, Assignment::ExtendedOffsetTable);
        assert_eq!(map.frames[0].offset, VALUE_OFFSET + 16);
        assert_eq!(read_frames(&stream, &map), frames);

        // Lengths that disagree with the fragments.
        lengths[0] = 31;
        assert_eq!(
            walk(&stream, 3, Some((&offsets, &lengths))),
            Err(FrameError::ExtendedLength {
                index: 0,
                declared_bytes: 31,
                found_bytes: 30
            })
        );
        // Sizes that do not fit NumberOfFrames or whole entries.
        for (offsets_len, lengths_len, frames) in [(24, 24, 2), (24, 16, 3), (23, 24, 3)] {
            let err = FragmentWalker::new(
                &encapsulated(),
                frames,
                Some((&offsets[..offsets_len], &lengths[..lengths_len])),
                FrameLimits::default(),
            )
            .expect_err("bad extended table");
            assert!(
                matches!(
                    err,
                    FrameError::OffsetTableSize {
                        table: "extended",
                        ..
                    }
                ),
                "{err}"
            );
        }
        // An offset inside a fragment.
        let mut shifted = offsets.clone();
        shifted[8] += 2;
        assert!(matches!(
            walk(&stream, 3, Some((&shifted, &lengths))),
            Err(FrameError::OffsetTableEntry {
                table: "extended",
                index: 1,
                ..
            })
        ));
        // Empty values count as absent.
        let stream = sequence(&[], &frames);
        let map = walk(&stream, 3, Some((&[][..], &[][..]))).expect("map");
        assert_eq!(map.assignment, Assignment::FragmentPerFrame);
    }

    #[test]
    fn bad_basic_offset_tables_are_errors() {
        let frames = jpeg_frames();
        // Good: [0, 44, 56].
        for (table, index, reason) in [
            ([0, 56, 44], 2, "not larger than the entry before"),
            ([0, 44, 44], 2, "not larger than the entry before"),
            ([0, 44, 4000], 2, "beyond the last fragment"),
            ([0, 44, 80], 2, "beyond the last fragment"),
            ([0, 20, 56], 1, "inside a fragment, not on an Item tag"),
            (
                [8, 44, 56],
                0,
                "the first frame must start at the first fragment",
            ),
        ] {
            let stream = sequence(&table, &frames);
            assert_eq!(
                walk(&stream, 3, None),
                Err(FrameError::OffsetTableEntry {
                    table: "basic",
                    index,
                    value: table[index].into(),
                    reason
                }),
                "{table:?}"
            );
        }
        // Wrong number of entries, or not whole entries: found at the table's header.
        let stream = sequence(&[0, 44], &frames);
        assert!(matches!(
            walk(&stream, 3, None),
            Err(FrameError::OffsetTableSize { table: "basic", .. })
        ));
        let mut stream = sequence(&[], &frames);
        stream.splice(4..8, 6u32.to_le_bytes());
        stream.splice(8..8, [0; 6]);
        assert!(matches!(
            walk(&stream, 3, None),
            Err(FrameError::OffsetTableSize { table: "basic", .. })
        ));
    }

    #[test]
    fn a_truncated_stream_is_an_error_at_finish() {
        let frames = jpeg_frames();
        let stream = sequence(&basic_table(&frames), &frames);
        for cut in 0..stream.len() {
            let mut walker = FragmentWalker::new(&encapsulated(), 3, None, FrameLimits::default())
                .expect("walker");
            assert_eq!(walker.feed(&stream[..cut]), Ok(WalkProgress::NeedMore));
            match walker.finish() {
                Err(FrameError::Truncated { offset, .. }) => {
                    assert_eq!(offset, VALUE_OFFSET + cut as u64)
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_walk_ends_at_the_delimiter_and_ignores_what_follows() {
        let frames = jpeg_frames();
        let stream = sequence(&basic_table(&frames), &frames);
        let expected = walk(&stream, 3, None).expect("map");
        let mut walker =
            FragmentWalker::new(&encapsulated(), 3, None, FrameLimits::default()).expect("new");
        let with_tail = [stream.clone(), vec![0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF]].concat();
        assert_eq!(walker.feed(&with_tail), Ok(WalkProgress::Done));
        assert_eq!(walker.feed(b"more"), Ok(WalkProgress::Done));
        assert_eq!(walker.finish(), Ok(expected.clone()));
        // A delimiter with a non-zero length is tolerated.
        let mut odd_delimiter = stream.clone();
        let at = odd_delimiter.len() - 4;
        odd_delimiter[at] = 4;
        assert_eq!(walk(&odd_delimiter, 3, None), Ok(expected));
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_map() {
        let frames = jpeg_frames();
        for (table, number_of_frames) in [(basic_table(&frames), 3), (vec![], 3), (vec![], 1)] {
            let stream = sequence(&table, &frames);
            let whole = walk(&stream, number_of_frames, None).expect("whole");
            let bytewise = walk_in_chunks(&stream, number_of_frames, None, std::iter::repeat(1));
            assert_eq!(bytewise, Ok(whole));
        }
        let frames: Frames = vec![vec![fragment(&J2K, 7, 30)], vec![fragment(&J2K, 8, 6)]];
        let (offsets, lengths) = extended_table(&frames);
        let stream = sequence(&[], &frames);
        let extended = Some((&offsets[..], &lengths[..]));
        assert_eq!(
            walk_in_chunks(&stream, 2, extended, std::iter::repeat(1)),
            walk(&stream, 2, extended)
        );
    }

    #[test]
    fn odd_item_lengths_are_walked_and_counted() {
        let frames = vec![
            vec![fragment(&JPEG, 1, 5), vec![3; 7]],
            vec![fragment(&JPEG, 2, 6)],
        ];
        let stream = sequence(&basic_table(&frames), &frames);
        let map = walk(&stream, 2, None).expect("map");
        assert_eq!(map.tolerated.odd_length_items, 2);
        assert_eq!(read_frames(&stream, &map), frames);
    }

    #[test]
    fn malformed_items_are_errors_with_their_offsets() {
        let frames = jpeg_frames();
        let good = sequence(&[], &frames);
        // The first fragment's item header is at value offset 8.
        let mut wrong_tag = good.clone();
        wrong_tag[8..12].copy_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0]);
        assert_eq!(
            walk(&wrong_tag, 3, None),
            Err(FrameError::UnexpectedTag {
                offset: VALUE_OFFSET + 8,
                tag: Tag::ITEM_DELIMITER
            })
        );
        let mut undefined = good.clone();
        undefined[12..16].copy_from_slice(&[0xFF; 4]);
        assert_eq!(
            walk(&undefined, 3, None),
            Err(FrameError::UndefinedItemLength {
                offset: VALUE_OFFSET + 8
            })
        );
        assert_eq!(
            walk(&DELIMITER, 1, None),
            Err(FrameError::MissingOffsetTable {
                offset: VALUE_OFFSET
            })
        );
        assert_eq!(
            walk(&[item(&[]), DELIMITER.to_vec()].concat(), 1, None),
            Err(FrameError::NoFragments {
                element_offset: VALUE_OFFSET - 12
            })
        );
        assert!(matches!(
            FragmentWalker::new(&native(10), 1, None, FrameLimits::default()),
            Err(FrameError::NotEncapsulated { .. })
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = FrameLimits {
            frames_max: 2,
            fragments_max: 4,
        };
        assert_eq!(
            FragmentWalker::new(&encapsulated(), 3, None, limits).map(|_| ()),
            Err(FrameError::Limit {
                what: "NumberOfFrames",
                value: 3,
                max: 2
            })
        );
        assert!(matches!(
            native_frame_map(&native(27), &geometry(3, 3, 1, 8, 3), &limits),
            Err(FrameError::Limit { value: 3, .. })
        ));
        // jpeg_frames has 6 fragments.
        let stream = sequence(&[], &jpeg_frames());
        let mut walker = FragmentWalker::new(&encapsulated(), 1, None, limits).expect("new");
        let expected = FrameError::Limit {
            what: "fragments",
            value: 5,
            max: 4,
        };
        assert_eq!(walker.feed(&stream), Err(expected.clone()));
        assert_eq!(
            walker.feed(&[]),
            Err(expected.clone()),
            "the walk stays failed"
        );
        assert_eq!(walker.finish(), Err(expected));
        // An offset table longer than frames_max entries.
        let stream = sequence(&[0, 1, 2], &jpeg_frames());
        let mut walker = FragmentWalker::new(&encapsulated(), 2, None, limits).expect("new");
        assert!(matches!(
            walker.feed(&stream),
            Err(FrameError::Limit {
                value: 3,
                max: 2,
                ..
            })
        ));
    }

    #[test]
    fn fragments_of_checks_every_header() {
        let range = [item(&[1, 2, 3]), item(&[]), item(&[4; 4])].concat();
        let values: Vec<_> = fragments_of(&range, 3).collect();
        assert_eq!(
            values,
            [Ok(&[1u8, 2, 3][..]), Ok(&[][..]), Ok(&[4u8; 4][..])]
        );

        let error = |offset, reason| Err(FrameError::FragmentRange { offset, reason });
        let last: Vec<_> = fragments_of(&range, 2).collect();
        assert_eq!(
            last[2],
            error(11 + 8, "bytes after the frame's last fragment")
        );
        let last: Vec<_> = fragments_of(&range, 4).collect();
        assert_eq!(last[3], error(31, "range ends inside an item header"));
        let mut wrong = range.clone();
        wrong[11] = 0;
        let last: Vec<_> = fragments_of(&wrong, 3).collect();
        assert_eq!(last, [Ok(&[1u8, 2, 3][..]), error(11, "not an Item tag")]);
        let last: Vec<_> = fragments_of(&range[..30], 3).collect();
        assert_eq!(last[2], error(19, "item length beyond the range"));
        assert_eq!(fragments_of(&[], 0).count(), 0);
    }

    fn frames_strategy() -> impl Strategy<Value = Frames> {
        let fragments = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..4);
        prop::collection::vec(fragments, 1..6).prop_map(|frames| {
            // Frames begin with a JPEG SOI; other fragments with a byte that cannot start one.
            frames
                .into_iter()
                .map(|frame| {
                    frame
                        .into_iter()
                        .enumerate()
                        .map(|(index, bytes)| match index {
                            0 => [&JPEG[..2], &bytes].concat(),
                            _ => [&[0x00][..], &bytes].concat(),
                        })
                        .collect()
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_map(
            frames in frames_strategy(),
            with_table in any::<bool>(),
            chunk_sizes in prop::collection::vec(1usize..40, 1..32),
            tail in prop::collection::vec(any::<u8>(), 0..12),
        ) {
            let table = if with_table { basic_table(&frames) } else { vec![] };
            let stream = [sequence(&table, &frames), tail].concat();
            let number_of_frames = frames.len() as u32;
            let whole = walk(&stream, number_of_frames, None);
            prop_assert!(whole.is_ok(), "{:?}", whole);
            let chunked = walk_in_chunks(
                &stream,
                number_of_frames,
                None,
                chunk_sizes.iter().copied().cycle(),
            );
            prop_assert_eq!(&chunked, &whole);
            let map = whole.expect("checked");
            prop_assert_eq!(read_frames(&stream, &map), frames);
        }
    }

    // ---- real files ----

    /// Attributes the real-file test reads from the header.
    const WANTED: [Tag; 8] = [
        Tag::new(0x0028, 0x0002),
        Tag::new(0x0028, 0x0004),
        Tag::new(0x0028, 0x0008),
        Tag::new(0x0028, 0x0010),
        Tag::new(0x0028, 0x0011),
        Tag::new(0x0028, 0x0100),
        Tag::new(0x7FE0, 0x0001),
        Tag::new(0x7FE0, 0x0002),
    ];

    fn raw(scanned: &Scanned, tag: Tag) -> Option<&[u8]> {
        let element = scanned.elements.iter().find(|e| e.tag == tag)?;
        Some(scanned.value(element))
    }

    fn text(scanned: &Scanned, tag: Tag) -> Option<String> {
        let raw = raw(scanned, tag)?;
        Some(
            String::from_utf8_lossy(raw)
                .trim_matches([' ', '\0'])
                .to_string(),
        )
    }

    fn us(scanned: &Scanned, tag: Tag) -> Option<u16> {
        raw(scanned, tag).and_then(|b| Some(u16::from_le_bytes([*b.first()?, *b.get(1)?])))
    }

    /// pydicom's test files, or `KUVASTO_SAMPLES_DIR`.
    fn samples_dir() -> Option<std::path::PathBuf> {
        if let Some(dir) = std::env::var_os("KUVASTO_SAMPLES_DIR") {
            return Some(dir.into());
        }
        let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
        std::fs::read_dir(lib)
            .ok()?
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("python3"))
            .map(|entry| entry.path().join("site-packages/pydicom/data/test_files"))
            .find(|dir| dir.is_dir())
    }

    fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for path in entries.flatten().map(|entry| entry.path()) {
            if path.is_dir() {
                files_under(&path, out);
            } else {
                out.push(path);
            }
        }
    }

    fn short_name(path: &std::path::Path) -> String {
        path.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }

    /// Transfer syntaxes whose data set is Explicit VR Little Endian (native or encapsulated).
    fn explicit_le_encoded(uid: &str) -> bool {
        uid.starts_with("1.2.840.10008.1.2.")
            && ![
                ts::EXPLICIT_VR_BE,
                ts::DEFLATED_EXPLICIT_VR_LE,
                "1.2.840.10008.1.2.4.95", // JPIP referenced, deflated
            ]
            .contains(&uid)
    }

    /// Checks the first fragment of a frame against the codec of the transfer syntax; `false`
    /// when the syntax is not one the test knows.
    fn check_codec_start(uid: &str, first: &[u8], what: &str) -> bool {
        let jpeg = ["50", "51", "57", "70", "80", "81"];
        let j2k = ["90", "91", "92", "93", "201", "202", "203"];
        match uid.strip_prefix("1.2.840.10008.1.2.4.") {
            Some(codec) if jpeg.contains(&codec) => {
                assert!(first.starts_with(&[0xFF, 0xD8]), "{what}: no JPEG SOI");
            }
            Some(codec) if j2k.contains(&codec) => {
                assert!(
                    first.starts_with(&J2K) || first.starts_with(&JP2[..8]),
                    "{what}: no JPEG 2000 start"
                );
            }
            _ if uid == "1.2.840.10008.1.2.5" => {
                // RLE header: 16 little-endian u32, the first the segment count.
                assert!(first.len() >= 64, "{what}: RLE header too short");
                let segments = le_u32(first);
                assert!(
                    (1..=15).contains(&segments),
                    "{what}: {segments} RLE segments"
                );
            }
            _ => return false,
        }
        true
    }

    #[derive(Debug, Default)]
    struct Counts {
        encapsulated: usize,
        encapsulated_frames: usize,
        /// Files by the rule that assigned their fragments.
        assignments: std::collections::BTreeMap<String, usize>,
        native: usize,
        native_refused: Vec<String>,
        other_transfer_syntax: usize,
        not_part10: usize,
        no_pixel_data: usize,
        declined: Vec<String>,
    }

    #[test]
    fn real_sample_files_get_frame_maps() {
        let require = std::env::var("KUVASTO_REQUIRE_SAMPLES").as_deref() == Ok("1");
        let mut files = Vec::new();
        if let Some(dir) = samples_dir() {
            files_under(&dir, &mut files);
        }
        files.sort();
        let mut counts = Counts::default();
        for path in &files {
            let name = path.display().to_string();
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            let Ok(Some(meta)) = read_file_meta(&bytes, MetaLimits::default()) else {
                counts.not_part10 += 1;
                continue;
            };
            let uid = meta.transfer_syntax_uid.as_str();
            if !explicit_le_encoded(uid) {
                counts.other_transfer_syntax += 1;
                continue;
            }
            // The scanner as `extract::Extractor` runs it, which today hands every transfer
            // syntax but plain Explicit VR LE to the general path; the compressed ones encode
            // their data set in Explicit VR LE too.
            let mut scanner = ExplicitLeScanner::new(
                meta.data_set_offset,
                |tag: Tag| WANTED.contains(&tag),
                ScanLimits::default(),
            );
            let start = meta.data_set_offset as usize;
            match scanner.feed(&bytes[start..]) {
                Ok(Progress::PixelData(_)) => {}
                Ok(Progress::NeedMore) => {
                    counts.no_pixel_data += 1;
                    continue;
                }
                Err(error) => {
                    let file = short_name(path);
                    counts.declined.push(format!("{file}: {error}"));
                    continue;
                }
            }
            let Ok(header) = scanner.finish() else {
                counts.declined.push(short_name(path));
                continue;
            };
            let Some(pixel) = header.pixel_data else {
                counts.no_pixel_data += 1;
                continue;
            };
            let frames_text = text(&header, Tag::new(0x0028, 0x0008));
            let Ok(number_of_frames) = frames_text.as_deref().unwrap_or("1").parse::<u32>() else {
                let file = short_name(path);
                counts
                    .declined
                    .push(format!("{file}: NumberOfFrames {frames_text:?}"));
                continue;
            };
            let value = &bytes[pixel.value_offset as usize..];

            if pixel.length.is_none() {
                let extended = raw(&header, Tag::new(0x7FE0, 0x0001))
                    .zip(raw(&header, Tag::new(0x7FE0, 0x0002)));
                let limits = FrameLimits::default();
                let mut walker = FragmentWalker::new(&pixel, number_of_frames, extended, limits)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(walker.feed(value), Ok(WalkProgress::Done), "{name}");
                let map = walker.finish().unwrap_or_else(|e| panic!("{name}: {e}"));
                let chunked = walk_file_in_chunks(&pixel, number_of_frames, extended, value);
                assert_eq!(chunked.as_ref(), Ok(&map), "{name}: chunked");
                assert_eq!(map.frames.len(), number_of_frames as usize, "{name}");
                let mut known_codec = true;
                for (index, frame) in map.frames.iter().enumerate() {
                    let end = (frame.offset + frame.length) as usize;
                    let range = &bytes[frame.offset as usize..end];
                    let fragments: Vec<&[u8]> = fragments_of(range, frame.fragments)
                        .collect::<Result<_, _>>()
                        .unwrap_or_else(|e| panic!("{name} frame {index}: {e}"));
                    assert_eq!(fragments.len(), frame.fragments as usize);
                    let what = format!("{name} frame {index}");
                    known_codec &= check_codec_start(uid, fragments[0], &what);
                }
                assert!(
                    known_codec,
                    "{name}: transfer syntax {uid} not known to the test"
                );
                counts.encapsulated += 1;
                counts.encapsulated_frames += map.frames.len();
                *(counts.assignments)
                    .entry(format!("{:?}", map.assignment))
                    .or_default() += 1;
            } else {
                let us_or =
                    |element, default| us(&header, Tag::new(0x0028, element)).unwrap_or(default);
                let photometric = text(&header, Tag::new(0x0028, 0x0004)).unwrap_or_default();
                let geometry = ImageGeometry {
                    rows: us_or(0x0010, 0),
                    columns: us_or(0x0011, 0),
                    samples_per_pixel: us_or(0x0002, 1),
                    bits_allocated: us_or(0x0100, 0),
                    number_of_frames,
                    ybr_422: photometric.starts_with("YBR_") && photometric.ends_with("_422"),
                };
                match native_frame_map(&pixel, &geometry, &FrameLimits::default()) {
                    Ok(map) => {
                        let end = pixel.value_offset + u64::from(pixel.length.unwrap_or(0));
                        assert_eq!(map.frames.len(), number_of_frames as usize, "{name}");
                        assert!(
                            map.frames.iter().all(|f| f.offset + f.length <= end),
                            "{name}: a frame beyond the element"
                        );
                        counts.native += 1;
                    }
                    Err(
                        error @ (FrameError::NativeTooShort { .. }
                        | FrameError::NativeExcess { .. }),
                    ) => {
                        let file = short_name(path);
                        counts.native_refused.push(format!("{file}: {error}"));
                    }
                    Err(error) => panic!("{name}: {error}"),
                }
            }
        }
        println!("frame maps over {} sample files: {counts:#?}", files.len());
        if require {
            assert!(
                counts.encapsulated > 0 && counts.native > 0,
                "KUVASTO_REQUIRE_SAMPLES=1 but no sample files were checked (looked in {:?})",
                samples_dir()
            );
        }
    }

    fn walk_file_in_chunks(
        pixel: &PixelDataAt,
        number_of_frames: u32,
        extended: Option<(&[u8], &[u8])>,
        value: &[u8],
    ) -> Result<FrameMap, FrameError> {
        let mut walker =
            FragmentWalker::new(pixel, number_of_frames, extended, FrameLimits::default())?;
        for chunk in value.chunks(7) {
            if walker.feed(chunk)? == WalkProgress::Done {
                break;
            }
        }
        walker.finish()
    }
}
