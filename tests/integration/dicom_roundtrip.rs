//! Property test: random data sets written by dicom-object, read back by our `Extractor`.
//!
//! Each case is a data set with every VR (AE … UV), sequences nested up to four deep (defined
//! and undefined length, items that hold indexed tags, which must not be reported, and icon
//! pixel data), private elements with their private creators, odd-length values (dicom-object
//! pads them), an optional Specific Character Set (`ISO_IR 100` or `ISO_IR 192`, with non-ASCII
//! SH / LO / PN values), always the indexed UIDs and a random choice of the other indexed
//! attributes, optionally Pixel Data (native OW, or encapsulated OB with a basic offset table
//! and 1..4 fragments) and Data Set Trailing Padding after it. dicom-object writes it as a
//! Part-10 stream in Explicit VR Little Endian (an encapsulated transfer syntax when the pixel
//! data is encapsulated), Implicit VR Little Endian and Explicit VR Big Endian (these two keep
//! encapsulated pixel data as dicom-object writes it: not conformant, but it shows the general
//! path reports its header right). Deflated Explicit VR LE is not written: dicom-object needs
//! its `deflate` feature for that, which this workspace does not enable.
//!
//! dicom-object writes every sequence and item with undefined length (its writer's default,
//! and an `InMemDicomObject` item's length cannot be set). Defined-length sequences are made
//! by letting dicom-object encode each item's data set (`write_dataset`) and wrapping it in an
//! 8-byte item header; dicom-object then writes the items as the value of the SQ element, with
//! its defined length.
//!
//! The stream is fed to the `Extractor` in random chunk sizes (stopping at Pixel Data or
//! feeding on), and the result must give: exactly the indexed top-level attributes generated,
//! with their VR and values (text decoded per Specific Character Set and trimmed, US and OV
//! numerically), each at its stream offset; the fast path for Explicit VR LE and the general
//! path otherwise; Pixel Data where its tag is in the stream, with its VR, header and value
//! length; and `attrs(&[])` equal to the generated values.
//!
//! `KUVASTO_ROUNDTRIP_CASES` sets the number of cases (default 64); failing cases are replayed
//! from `proptest-regressions/dicom_roundtrip.txt`.

use dicom_core::value::{DataSetSequence, PixelFragmentSequence, C};
use dicom_core::{DataElement, Length, PrimitiveValue, Tag as DTag, VR};
use dicom_object::mem::InMemElement;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use kuvasto_engine::dicom::explicit_le::{Progress, ScanLimits};
use kuvasto_engine::dicom::extract::{ExtractPath, Extracted, Extractor, INDEXED};
use kuvasto_engine::dicom::meta::{ts, MetaLimits};
use kuvasto_engine::dicom::Tag;
use kuvasto_engine::index::attrs::{tags, InstanceAttrs};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

// ---------------------------------------------------------------------------------------------
// The model.

/// The character set a case declares in (0008,0005).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// No (0008,0005): ASCII values only.
    Default,
    /// `ISO_IR 100`.
    Latin1,
    /// `ISO_IR 192`.
    Utf8,
}

impl Charset {
    /// Characters that may appear in SH, LO and PN values besides ASCII.
    fn extra(self) -> &'static str {
        match self {
            Charset::Default => "",
            Charset::Latin1 => "ÄÖÅäöåÉéèÇçÑñßØøÆæÜü¿",
            Charset::Utf8 => "ÄöñДЖжΩαβ山田太郎한국어日本語",
        }
    }

    fn term(self) -> Option<&'static str> {
        match self {
            Charset::Default => None,
            Charset::Latin1 => Some("ISO_IR 100"),
            Charset::Utf8 => Some("ISO_IR 192"),
        }
    }
}

#[derive(Debug, Clone)]
enum Value {
    /// One text value (several values joined by `\`).
    Text(String),
    /// OB, UN.
    Bytes(Vec<u8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    Tags(Vec<(u16, u16)>),
    /// Items, each a list of elements.
    Seq {
        defined: bool,
        items: Vec<Vec<Elem>>,
    },
    /// Encapsulated pixel data.
    Fragments {
        offsets: Vec<u32>,
        fragments: Vec<Vec<u8>>,
    },
}

#[derive(Clone)]
struct Elem {
    tag: Tag,
    vr: VR,
    value: Value,
}

impl fmt::Debug for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} {:?}", self.tag, self.vr, self.value)
    }
}

/// Top-level Pixel Data.
#[derive(Debug, Clone)]
enum Pixel {
    Native(Vec<u16>),
    Encapsulated {
        offsets: Vec<u32>,
        fragments: Vec<Vec<u8>>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    charset: Charset,
    /// Top-level elements before Pixel Data, sorted, with private creators.
    top: Vec<Elem>,
    pixel: Option<Pixel>,
    /// Bytes of (FFFC,FFFC) Data Set Trailing Padding after Pixel Data.
    padding: Option<usize>,
    /// The transfer syntax for encapsulated pixel data (data set in Explicit VR LE).
    encapsulated_ts: &'static str,
    /// Chunk sizes, cycled.
    chunks: Vec<usize>,
    /// Whether to go on feeding once Pixel Data was reported.
    keep_feeding: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    ExplicitLe,
    ImplicitLe,
    ExplicitBe,
}

impl Syntax {
    const ALL: [Syntax; 3] = [Syntax::ExplicitLe, Syntax::ImplicitLe, Syntax::ExplicitBe];

    /// The syntax of the data set's elements (items are written with it).
    fn plain_uid(self) -> &'static str {
        match self {
            Syntax::ExplicitLe => ts::EXPLICIT_VR_LE,
            Syntax::ImplicitLe => ts::IMPLICIT_VR_LE,
            Syntax::ExplicitBe => ts::EXPLICIT_VR_BE,
        }
    }

    fn explicit(self) -> bool {
        self != Syntax::ImplicitLe
    }

    fn big_endian(self) -> bool {
        self == Syntax::ExplicitBe
    }

    fn u16_bytes(self, v: u16) -> [u8; 2] {
        if self.big_endian() {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn u32_bytes(self, v: u32) -> [u8; 4] {
        if self.big_endian() {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn tag_bytes(self, tag: Tag) -> Vec<u8> {
        [self.u16_bytes(tag.group()), self.u16_bytes(tag.element())].concat()
    }
}

impl Case {
    fn transfer_syntax(&self, syntax: Syntax) -> &'static str {
        match (syntax, &self.pixel) {
            (Syntax::ExplicitLe, Some(Pixel::Encapsulated { .. })) => self.encapsulated_ts,
            _ => syntax.plain_uid(),
        }
    }

    /// Encoded length of the trailing padding element.
    fn padding_bytes(&self, syntax: Syntax) -> usize {
        let header = if syntax.explicit() { 12 } else { 8 };
        self.padding.map_or(0, |n| header + n)
    }
}

fn is_indexed(tag: Tag) -> bool {
    INDEXED.binary_search(&tag).is_ok()
}

const SPECIFIC_CHARACTER_SET: Tag = Tag::new(0x0008, 0x0005);
const PADDING: Tag = Tag::new(0xFFFC, 0xFFFC);
const ITEM: Tag = Tag::ITEM;

fn even(n: usize) -> usize {
    n + n % 2
}

/// Sorts and de-duplicates elements (the last one of a tag wins, as in `InMemDicomObject`)
/// and adds a private creator for every private block used.
fn normalized(elems: &[Elem]) -> Vec<Elem> {
    let mut map: BTreeMap<Tag, Elem> = BTreeMap::new();
    for e in elems {
        map.insert(e.tag, e.clone());
    }
    let blocks: BTreeSet<(u16, u16)> = map
        .keys()
        .filter(|t| t.group() % 2 == 1 && t.element() >= 0x1000)
        .map(|t| (t.group(), t.element() >> 8))
        .collect();
    for (group, block) in blocks {
        map.entry(Tag::new(group, block)).or_insert_with(|| Elem {
            tag: Tag::new(group, block),
            vr: VR::LO,
            value: Value::Text(format!("KUVASTO TEST {block:02X}")),
        });
    }
    map.into_values().collect()
}

// ---------------------------------------------------------------------------------------------
// Strategies.

const ASCII: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .-_,()";
const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ";

fn string_of(alphabet: &'static str, len: std::ops::Range<usize>) -> BoxedStrategy<String> {
    let chars: Vec<char> = alphabet.chars().collect();
    proptest::collection::vec(proptest::sample::select(chars), len)
        .prop_map(String::from_iter)
        .boxed()
}

/// Text in `charset`: mostly ASCII, non-ASCII characters often when the set has them.
fn text_in(
    charset: Charset,
    len: std::ops::Range<usize>,
    no: &'static str,
) -> BoxedStrategy<String> {
    let ascii: Vec<char> = ASCII.chars().filter(|c| !no.contains(*c)).collect();
    let extra: Vec<char> = charset.extra().chars().collect();
    let one = if extra.is_empty() {
        proptest::sample::select(ascii).boxed()
    } else {
        prop_oneof![
            2 => proptest::sample::select(ascii),
            1 => proptest::sample::select(extra),
        ]
        .boxed()
    };
    proptest::collection::vec(one, len)
        .prop_map(String::from_iter)
        .boxed()
}

/// Optionally a leading and a trailing space (padding the value must lose).
fn spaced(s: BoxedStrategy<String>) -> BoxedStrategy<String> {
    (s, any::<bool>(), any::<bool>())
        .prop_map(|(s, lead, trail)| {
            format!(
                "{}{s}{}",
                if lead { " " } else { "" },
                if trail { " " } else { "" }
            )
        })
        .boxed()
}

fn uid() -> BoxedStrategy<String> {
    proptest::collection::vec(0u32..100_000, 1..6)
        .prop_map(|parts| {
            let tail: Vec<String> = parts.iter().map(u32::to_string).collect();
            format!("1.2.826.0.1.3680043.10.1234.{}", tail.join("."))
        })
        .boxed()
}

fn date() -> BoxedStrategy<String> {
    (1900u32..2100, 1u32..=12, 1u32..=28)
        .prop_map(|(y, m, d)| format!("{y:04}{m:02}{d:02}"))
        .boxed()
}

fn time() -> BoxedStrategy<String> {
    (
        0u32..24,
        0u32..60,
        0u32..60,
        proptest::option::of(string_of("0123456789", 1..7)),
    )
        .prop_map(|(h, m, s, frac)| match frac {
            Some(frac) => format!("{h:02}{m:02}{s:02}.{frac}"),
            None => format!("{h:02}{m:02}{s:02}"),
        })
        .boxed()
}

fn person_name(charset: Charset) -> BoxedStrategy<String> {
    proptest::collection::vec(text_in(charset, 0..12, "^=\\"), 1..5)
        .prop_map(|parts| parts.join("^"))
        .boxed()
}

/// A value of `vr` (not SQ). `charset` applies to SH, LO and PN; the other text is ASCII.
fn value_of(vr: VR, charset: Charset) -> BoxedStrategy<Value> {
    use proptest::collection::vec;
    let text = |s: BoxedStrategy<String>| s.prop_map(Value::Text).boxed();
    match vr {
        VR::AE => text(string_of(UPPER, 1..16)),
        VR::AS => (
            0u32..1000,
            proptest::sample::select(vec!['D', 'W', 'M', 'Y']),
        )
            .prop_map(|(n, unit)| Value::Text(format!("{n:03}{unit}")))
            .boxed(),
        VR::CS => text(spaced(string_of(UPPER, 0..15))),
        VR::DA => text(date()),
        VR::DS => vec((-100_000i32..100_000, 0u32..4), 1..3)
            .prop_map(|values| {
                let each: Vec<String> = values
                    .iter()
                    .map(|&(n, k)| {
                        format!("{:.*}", k as usize, f64::from(n) / 10f64.powi(k as i32))
                    })
                    .collect();
                Value::Text(each.join("\\"))
            })
            .boxed(),
        VR::DT => (
            date(),
            time(),
            proptest::option::of((0u32..14, any::<bool>())),
        )
            .prop_map(|(d, t, zone)| {
                let zone = zone.map_or(String::new(), |(h, west)| {
                    format!("{}{h:02}00", if west { '-' } else { '+' })
                });
                Value::Text(format!("{d}{t}{zone}"))
            })
            .boxed(),
        VR::IS => text(spaced(any::<i32>().prop_map(|n| n.to_string()).boxed())),
        VR::LO => text(spaced(text_in(charset, 0..63, "\\"))),
        VR::LT | VR::ST | VR::UT | VR::UC => text(string_of(ASCII, 0..200)),
        VR::PN => text(spaced(person_name(charset))),
        VR::SH => text(spaced(text_in(charset, 0..15, "\\"))),
        VR::TM => text(time()),
        VR::UI => text(uid()),
        VR::UR => string_of("abcdefghijklmnopqrstuvwxyz0123456789/", 0..20)
            .prop_map(|path| Value::Text(format!("https://kuvasto.example/{path}")))
            .boxed(),
        VR::OB | VR::UN => vec(any::<u8>(), 0..40).prop_map(Value::Bytes).boxed(),
        VR::US | VR::OW => vec(any::<u16>(), 1..4).prop_map(Value::U16).boxed(),
        VR::SS => vec(any::<i16>(), 1..4).prop_map(Value::I16).boxed(),
        VR::UL | VR::OL => vec(any::<u32>(), 1..4).prop_map(Value::U32).boxed(),
        VR::SL => vec(any::<i32>(), 1..4).prop_map(Value::I32).boxed(),
        VR::FL | VR::OF => vec(-1e6f32..1e6, 1..4).prop_map(Value::F32).boxed(),
        VR::FD | VR::OD => vec(-1e9f64..1e9, 1..4).prop_map(Value::F64).boxed(),
        VR::UV | VR::OV => vec(any::<u64>(), 1..4).prop_map(Value::U64).boxed(),
        VR::SV => vec(any::<i64>(), 1..4).prop_map(Value::I64).boxed(),
        VR::AT => vec((any::<u16>(), any::<u16>()), 1..3)
            .prop_map(Value::Tags)
            .boxed(),
        other => unreachable!("no values for {other:?}"),
    }
}

/// Non-indexed standard attributes, one of each VR but SQ (checked against the dictionary
/// by `filler_tags_have_their_dictionary_vr`).
const FILLERS: &[(u16, u16, VR)] = &[
    (0x0008, 0x0054, VR::AE), // RetrieveAETitle
    (0x0010, 0x1010, VR::AS), // PatientAge
    (0x0020, 0x9165, VR::AT), // DimensionIndexPointer
    (0x0008, 0x0008, VR::CS), // ImageType
    (0x0008, 0x0021, VR::DA), // SeriesDate
    (0x0010, 0x1020, VR::DS), // PatientSize
    (0x0008, 0x002A, VR::DT), // AcquisitionDateTime
    (0x0018, 0x0013, VR::FL), // ContrastBolusT1Relaxivity
    (0x0008, 0x2134, VR::FD), // EventTimeOffset
    (0x0008, 0x2122, VR::IS), // StageNumber
    (0x0008, 0x0070, VR::LO), // Manufacturer
    (0x0008, 0x0401, VR::LT), // InventoryPurpose
    (0x0042, 0x0011, VR::OB), // EncapsulatedDocument
    (0x0066, 0x0022, VR::OD), // DoublePointCoordinatesData
    (0x0066, 0x0016, VR::OF), // PointCoordinatesData
    (0x0066, 0x0040, VR::OL), // LongPrimitivePointIndexList
    (0x0072, 0x0081, VR::OV), // SelectorOVValue
    (0x0028, 0x1201, VR::OW), // RedPaletteColorLookupTableData
    (0x0010, 0x1005, VR::PN), // PatientBirthName
    (0x0008, 0x0102, VR::SH), // CodingSchemeDesignator
    (0x0018, 0x6020, VR::SL), // ReferencePixelX0
    (0x0018, 0x9219, VR::SS), // TagAngleSecondAxis
    (0x0008, 0x0081, VR::ST), // InstitutionAddress
    (0x0072, 0x0082, VR::SV), // SelectorSVValue
    (0x0008, 0x0031, VR::TM), // SeriesTime
    (0x0008, 0x0119, VR::UC), // LongCodeValue
    (0x0020, 0x0052, VR::UI), // FrameOfReferenceUID
    (0x0008, 0x0427, VR::UL), // NumberOfStudyRecordsInInstance
    (0x0072, 0x006D, VR::UN), // SelectorUNValue
    (0x0008, 0x010E, VR::UR), // CodingSchemeURL
    (0x0028, 0x0101, VR::US), // BitsStored
    (0x0008, 0x030E, VR::UT), // PrivateDataElementDescription
    (0x0008, 0x040C, VR::UV), // FileOffsetInContainer
];

/// Sequences: standard ones (IconImageSequence may hold pixel data) and private ones.
const SEQUENCES: &[(u16, u16)] = &[
    (0x0008, 0x1115), // ReferencedSeriesSequence
    (0x0008, 0x1140), // ReferencedImageSequence
    (0x0040, 0x0275), // RequestAttributesSequence
    (0x0088, 0x0200), // IconImageSequence
    (0x0019, 0x1008),
    (0x0029, 0x1120),
];

/// The indexed attributes with their VR (the dictionary's; checked by
/// `filler_tags_have_their_dictionary_vr`), (0008,0005) aside.
const INDEXED_VRS: &[(Tag, VR)] = &[
    (tags::SOP_CLASS_UID, VR::UI),
    (tags::SOP_INSTANCE_UID, VR::UI),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::ACCESSION_NUMBER, VR::SH),
    (tags::MODALITY, VR::CS),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_DESCRIPTION, VR::LO),
    (tags::SERIES_DESCRIPTION, VR::LO),
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::ISSUER_OF_PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::BODY_PART_EXAMINED, VR::CS),
    (tags::STUDY_INSTANCE_UID, VR::UI),
    (tags::SERIES_INSTANCE_UID, VR::UI),
    (tags::STUDY_ID, VR::SH),
    (tags::SERIES_NUMBER, VR::IS),
    (tags::INSTANCE_NUMBER, VR::IS),
    (tags::SAMPLES_PER_PIXEL, VR::US),
    (Tag::new(0x0028, 0x0004), VR::CS), // PhotometricInterpretation
    (tags::NUMBER_OF_FRAMES, VR::IS),
    (tags::ROWS, VR::US),
    (tags::COLUMNS, VR::US),
    (Tag::new(0x0028, 0x0100), VR::US), // BitsAllocated
    (tags::PERFORMED_PROCEDURE_STEP_START_DATE, VR::DA),
    (Tag::new(0x7FE0, 0x0001), VR::OV), // ExtendedOffsetTable
    (Tag::new(0x7FE0, 0x0002), VR::OV), // ExtendedOffsetTableLengths
];

/// The UIDs every case has.
const REQUIRED: &[Tag] = &[
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
];

/// Encapsulated transfer syntaxes dicom-object knows (it writes their data set as Explicit VR
/// LE without touching the fragments).
const ENCAPSULATED: &[&str] = &[
    "1.2.840.10008.1.2.4.50", // JPEG Baseline
    "1.2.840.10008.1.2.4.90", // JPEG 2000 Lossless
    "1.2.840.10008.1.2.5",    // RLE Lossless
];

fn elem_of(tag: Tag, vr: VR, charset: Charset) -> BoxedStrategy<Elem> {
    value_of(vr, charset)
        .prop_map(move |value| Elem { tag, vr, value })
        .boxed()
}

/// An element inside an item or a non-indexed top-level one: a standard filler, a private
/// element of any VR, or (inside items; dropped at the top level) an indexed attribute.
fn leaf() -> BoxedStrategy<Elem> {
    let standard = proptest::sample::select(FILLERS)
        .prop_flat_map(|(g, e, vr)| elem_of(Tag::new(g, e), vr, Charset::Default));
    let private_vrs: Vec<VR> = FILLERS.iter().map(|f| f.2).collect();
    let private = (
        proptest::sample::select(vec![0x0009u16, 0x0011, 0x0019, 0x0029, 0x0041]),
        0x10u16..0x13,
        0u16..0x100,
        proptest::sample::select(private_vrs),
    )
        .prop_flat_map(|(group, block, low, vr)| {
            elem_of(Tag::new(group, block << 8 | low), vr, Charset::Default)
        });
    let indexed = proptest::sample::select(INDEXED_VRS)
        .prop_flat_map(|(tag, vr)| elem_of(tag, vr, Charset::Default));
    prop_oneof![4 => standard, 3 => private, 1 => indexed].boxed()
}

fn fragments() -> BoxedStrategy<(Vec<u32>, Vec<Vec<u8>>)> {
    (
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..=4),
        any::<bool>(),
    )
        .prop_map(|(fragments, with_offsets)| {
            let mut offsets = Vec::new();
            let mut at = 0u32;
            for fragment in &fragments {
                offsets.push(at);
                at += 8 + even(fragment.len()) as u32;
            }
            if !with_offsets {
                offsets.clear();
            }
            (offsets, fragments)
        })
        .boxed()
}

/// Pixel data of an icon, inside an item.
fn icon_pixel_data() -> BoxedStrategy<Elem> {
    prop_oneof![
        proptest::collection::vec(any::<u16>(), 0..64).prop_map(|v| Elem {
            tag: Tag::PIXEL_DATA,
            vr: VR::OW,
            value: Value::U16(v),
        }),
        fragments().prop_map(|(offsets, fragments)| Elem {
            tag: Tag::PIXEL_DATA,
            vr: VR::OB,
            value: Value::Fragments { offsets, fragments },
        }),
    ]
    .boxed()
}

/// Non-indexed elements, with sequences nested up to four deep.
fn element() -> BoxedStrategy<Elem> {
    leaf()
        .prop_recursive(4, 48, 4, |inner| {
            let item = (
                proptest::collection::vec(inner, 0..4),
                proptest::option::weighted(0.2, icon_pixel_data()),
            )
                .prop_map(|(mut elems, pixel)| {
                    elems.extend(pixel);
                    elems
                });
            (
                proptest::sample::select(SEQUENCES),
                any::<bool>(),
                proptest::collection::vec(item, 0..3),
            )
                .prop_map(|((g, e), defined, items)| Elem {
                    tag: Tag::new(g, e),
                    vr: VR::SQ,
                    value: Value::Seq { defined, items },
                })
        })
        .boxed()
}

/// The indexed attributes of a case: the UIDs always, the others at random.
fn indexed(charset: Charset) -> BoxedStrategy<Vec<Elem>> {
    let each: Vec<BoxedStrategy<Option<Elem>>> = INDEXED_VRS
        .iter()
        .map(|&(tag, vr)| {
            let value = match tag {
                t if t == tags::SOP_CLASS_UID => proptest::sample::select(vec![
                    "1.2.840.10008.5.1.4.1.1.2",
                    "1.2.840.10008.5.1.4.1.1.4",
                    "1.2.840.10008.5.1.4.1.1.7",
                ])
                .prop_map(|uid| Value::Text(uid.to_string()))
                .boxed(),
                t if t == tags::MODALITY => {
                    proptest::sample::select(vec!["CT", "MR", "OT", "SEG", "SR", " US "])
                        .prop_map(|m| Value::Text(m.to_string()))
                        .boxed()
                }
                t if t == tags::PATIENT_SEX => proptest::sample::select(vec!["M", "F", "O", ""])
                    .prop_map(|s| Value::Text(s.to_string()))
                    .boxed(),
                _ => value_of(vr, charset),
            };
            let elem = value.prop_map(move |value| Elem { tag, vr, value });
            if REQUIRED.contains(&tag) {
                elem.prop_map(Some).boxed()
            } else {
                proptest::option::weighted(0.7, elem).boxed()
            }
        })
        .collect();
    each.prop_map(|all| all.into_iter().flatten().collect())
        .boxed()
}

fn pixel() -> BoxedStrategy<Pixel> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u16>(), 0..600).prop_map(Pixel::Native),
        // Now and then large enough to pass the general path's first 64 KiB.
        1 => (0usize..45_000).prop_map(|n| Pixel::Native((0..n).map(|i| i as u16).collect())),
        3 => fragments().prop_map(|(offsets, fragments)| Pixel::Encapsulated { offsets, fragments }),
    ]
    .boxed()
}

fn chunk() -> BoxedStrategy<usize> {
    prop_oneof![
        Just(1usize),
        1usize..=16,
        17usize..=512,
        513usize..=8192,
        Just(64 * 1024),
        Just(1 << 20),
    ]
    .boxed()
}

fn case() -> impl Strategy<Value = Case> {
    proptest::sample::select(vec![Charset::Default, Charset::Latin1, Charset::Utf8])
        .prop_flat_map(|charset| {
            (
                Just(charset),
                indexed(charset),
                proptest::collection::vec(element(), 0..8),
                // Now and then a large private value before Pixel Data (past 64 KiB).
                proptest::option::weighted(0.1, 0usize..100_000),
                proptest::option::weighted(0.6, pixel()),
                proptest::option::weighted(0.3, 0usize..64),
                proptest::sample::select(ENCAPSULATED),
                proptest::collection::vec(chunk(), 1..6),
                any::<bool>(),
            )
        })
        .prop_map(
            |(
                charset,
                indexed,
                fillers,
                blob,
                pixel,
                padding,
                encapsulated_ts,
                chunks,
                keep_feeding,
            )| {
                let mut top: Vec<Elem> = fillers
                    .into_iter()
                    .filter(|e| !is_indexed(e.tag) && e.tag != Tag::PIXEL_DATA)
                    .collect();
                if let Some(len) = blob {
                    top.push(Elem {
                        tag: Tag::new(0x0013, 0x1010),
                        vr: VR::OB,
                        value: Value::Bytes(vec![0xA5; len]),
                    });
                }
                if let Some(term) = charset.term() {
                    top.push(Elem {
                        tag: SPECIFIC_CHARACTER_SET,
                        vr: VR::CS,
                        value: Value::Text(term.to_string()),
                    });
                }
                top.extend(indexed);
                Case {
                    charset,
                    top: normalized(&top),
                    pixel,
                    padding: padding.map(even),
                    encapsulated_ts,
                    chunks,
                    keep_feeding,
                }
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Writing with dicom-object.

fn collect<T: Copy>(values: &[T]) -> C<T> {
    values.iter().copied().collect()
}

fn to_element(e: &Elem, syntax: Syntax) -> InMemElement {
    let tag = DTag(e.tag.group(), e.tag.element());
    let primitive = |value: PrimitiveValue| DataElement::new(tag, e.vr, value);
    match &e.value {
        Value::Text(s) => primitive(PrimitiveValue::Str(s.clone())),
        Value::Bytes(b) => primitive(PrimitiveValue::U8(collect(b))),
        Value::U16(v) => primitive(PrimitiveValue::U16(collect(v))),
        Value::I16(v) => primitive(PrimitiveValue::I16(collect(v))),
        Value::U32(v) => primitive(PrimitiveValue::U32(collect(v))),
        Value::I32(v) => primitive(PrimitiveValue::I32(collect(v))),
        Value::F32(v) => primitive(PrimitiveValue::F32(collect(v))),
        Value::F64(v) => primitive(PrimitiveValue::F64(collect(v))),
        Value::U64(v) => primitive(PrimitiveValue::U64(collect(v))),
        Value::I64(v) => primitive(PrimitiveValue::I64(collect(v))),
        Value::Tags(v) => primitive(PrimitiveValue::Tags(
            v.iter().map(|&(g, el)| DTag(g, el)).collect(),
        )),
        Value::Seq {
            defined: false,
            items,
        } => {
            let items: Vec<InMemDicomObject> =
                items.iter().map(|item| to_object(item, syntax)).collect();
            DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
        }
        Value::Seq {
            defined: true,
            items,
        } => {
            // dicom-object encodes each item's data set; the item headers are ours.
            let mut value = Vec::new();
            for item in items {
                let content = data_set_bytes(to_object(item, syntax), syntax);
                value.extend(syntax.tag_bytes(ITEM));
                value.extend(syntax.u32_bytes(content.len() as u32));
                value.extend(content);
            }
            DataElement::new_with_len(
                tag,
                VR::SQ,
                Length(value.len() as u32),
                PrimitiveValue::U8(value.into()),
            )
        }
        Value::Fragments { offsets, fragments } => DataElement::new(
            tag,
            VR::OB,
            PixelFragmentSequence::new(offsets.clone(), fragments.clone()),
        ),
    }
}

fn to_object(elems: &[Elem], syntax: Syntax) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(normalized(elems).iter().map(|e| to_element(e, syntax)))
}

fn meta(syntax_uid: &str) -> FileMetaTableBuilder {
    FileMetaTableBuilder::new()
        .transfer_syntax(syntax_uid)
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
        .media_storage_sop_instance_uid("1.2.3.4")
}

/// An item's data set, encoded by dicom-object.
fn data_set_bytes(item: InMemDicomObject, syntax: Syntax) -> Vec<u8> {
    let file = item.with_meta(meta(syntax.plain_uid())).expect("item meta");
    let mut out = Vec::new();
    file.write_dataset(&mut out)
        .expect("dicom-object writes the item");
    out
}

/// The whole Part-10 stream, written by dicom-object.
fn part10(case: &Case, syntax: Syntax) -> Vec<u8> {
    let mut elems = case.top.clone();
    match &case.pixel {
        None => {}
        Some(Pixel::Native(words)) => elems.push(Elem {
            tag: Tag::PIXEL_DATA,
            vr: VR::OW,
            value: Value::U16(words.clone()),
        }),
        Some(Pixel::Encapsulated { offsets, fragments }) => elems.push(Elem {
            tag: Tag::PIXEL_DATA,
            vr: VR::OB,
            value: Value::Fragments {
                offsets: offsets.clone(),
                fragments: fragments.clone(),
            },
        }),
    }
    if let Some(n) = case.padding {
        elems.push(Elem {
            tag: PADDING,
            vr: VR::OB,
            value: Value::Bytes(vec![0; n]),
        });
    }
    let object = to_object(&elems, syntax)
        .with_meta(meta(case.transfer_syntax(syntax)))
        .expect("meta");
    let mut out = Vec::new();
    object
        .write_all(&mut out)
        .expect("dicom-object writes the case");
    out
}

// ---------------------------------------------------------------------------------------------
// Reading and checking.

fn extract(stream: &[u8], chunks: &[usize], keep_feeding: bool) -> Result<Extracted, String> {
    let mut extractor = Extractor::new(MetaLimits::default(), ScanLimits::default());
    let (mut at, mut i) = (0, 0);
    while at < stream.len() {
        let n = chunks[i % chunks.len()].min(stream.len() - at);
        let progress = extractor
            .feed(&stream[at..at + n])
            .map_err(|e| format!("feed at {at}: {e}"))?;
        at += n;
        i += 1;
        if matches!(progress, Progress::PixelData(_)) && !keep_feeding {
            break;
        }
    }
    extractor.finish().map_err(|e| format!("finish: {e}"))
}

#[derive(Default, Debug)]
struct Stats {
    /// Cases with (0008,0005).
    with_charset: usize,
    streams: usize,
    values: usize,
    non_ascii: usize,
    native: usize,
    encapsulated: usize,
    defined_sequences: usize,
    undefined_sequences: usize,
    largest_stream: usize,
}

fn count_sequences(elems: &[Elem], stats: &mut Stats) {
    for e in elems {
        if let Value::Seq { defined, items } = &e.value {
            if *defined {
                stats.defined_sequences += 1;
            } else {
                stats.undefined_sequences += 1;
            }
            for item in items {
                count_sequences(item, stats);
            }
        }
    }
}

/// Size of one number of a binary VR, as written (byte-swapped in big endian).
fn unit(vr: VR) -> usize {
    match vr {
        VR::US => 2,
        VR::OV => 8,
        _ => 1,
    }
}

fn little_endian(value: &Value) -> Vec<u8> {
    match value {
        Value::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Value::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => unreachable!("no indexed attribute holds {other:?}"),
    }
}

/// The value's text as the extractor must give it: without its padding.
fn expected_text(s: &str) -> &str {
    s.trim_matches(' ')
}

fn expected_attrs(case: &Case, transfer_syntax: &str) -> InstanceAttrs {
    let text = |tag: Tag| -> String {
        match case.top.iter().find(|e| e.tag == tag).map(|e| &e.value) {
            Some(Value::Text(s)) => expected_text(s).to_string(),
            None => String::new(),
            Some(other) => unreachable!("{tag} holds {other:?}"),
        }
    };
    let us = |tag: Tag| match case.top.iter().find(|e| e.tag == tag).map(|e| &e.value) {
        Some(Value::U16(v)) => v.first().copied(),
        _ => None,
    };
    InstanceAttrs {
        patient_id: text(tags::PATIENT_ID),
        issuer_of_patient_id: text(tags::ISSUER_OF_PATIENT_ID),
        patient_name: text(tags::PATIENT_NAME),
        patient_birth_date: text(tags::PATIENT_BIRTH_DATE),
        patient_sex: text(tags::PATIENT_SEX),
        study_instance_uid: text(tags::STUDY_INSTANCE_UID),
        study_date: text(tags::STUDY_DATE),
        study_time: text(tags::STUDY_TIME),
        accession_number: text(tags::ACCESSION_NUMBER),
        study_id: text(tags::STUDY_ID),
        study_description: text(tags::STUDY_DESCRIPTION),
        referring_physician_name: text(tags::REFERRING_PHYSICIAN_NAME),
        modality: text(tags::MODALITY),
        series_instance_uid: text(tags::SERIES_INSTANCE_UID),
        series_number: text(tags::SERIES_NUMBER).parse().ok(),
        series_description: text(tags::SERIES_DESCRIPTION),
        body_part_examined: text(tags::BODY_PART_EXAMINED),
        performed_procedure_step_start_date: text(tags::PERFORMED_PROCEDURE_STEP_START_DATE),
        sop_class_uid: text(tags::SOP_CLASS_UID),
        sop_instance_uid: text(tags::SOP_INSTANCE_UID),
        instance_number: text(tags::INSTANCE_NUMBER).parse().ok(),
        number_of_frames: text(tags::NUMBER_OF_FRAMES).parse().ok(),
        rows: us(tags::ROWS),
        columns: us(tags::COLUMNS),
        transfer_syntax_uid: transfer_syntax.to_string(),
        extra: Vec::new(),
    }
}

/// Checks (1) the indexed values and (2) that nothing else is reported.
fn check_values(
    case: &Case,
    syntax: Syntax,
    stream: &[u8],
    found: &Extracted,
    stats: &mut Stats,
) -> Result<(), String> {
    let expected: Vec<&Elem> = case.top.iter().filter(|e| is_indexed(e.tag)).collect();
    let reported: Vec<Tag> = found.data_set.elements.iter().map(|e| e.tag).collect();
    let wanted: Vec<Tag> = expected.iter().map(|e| e.tag).collect();
    if reported != wanted {
        return Err(format!(
            "reported tags {reported:?}, generated {wanted:?} (Tag(n) = group << 16 | element)"
        ));
    }
    for (element, elem) in found.data_set.elements.iter().zip(&expected) {
        let tag = elem.tag;
        let raw = found.data_set.value(element);
        if element.vr != elem.vr.to_bytes() {
            return Err(format!(
                "{tag}: VR {} reported, {:?} written",
                String::from_utf8_lossy(&element.vr),
                elem.vr
            ));
        }
        stats.values += 1;
        match &elem.value {
            Value::Text(s) => {
                let ours = found.text(tag);
                if ours.as_deref() != Some(expected_text(s)) {
                    return Err(format!(
                        "{tag}: text {ours:?}, generated {s:?} (raw {:02X?})",
                        raw
                    ));
                }
                stats.non_ascii += usize::from(!s.is_ascii());
            }
            value => {
                if raw != little_endian(value) {
                    return Err(format!("{tag}: raw {raw:02X?}, generated {value:?}"));
                }
                if let Value::U16(v) = value {
                    if found.u16(tag) != v.first().copied() {
                        return Err(format!("{tag}: u16 {:?}, generated {v:?}", found.u16(tag)));
                    }
                }
            }
        }
        // The value is in the stream where the element says (byte-swapped in big endian).
        let at = element.value_offset as usize;
        let mut in_stream = stream.get(at..at + raw.len()).map(<[u8]>::to_vec);
        if syntax.big_endian() {
            if let Some(bytes) = &mut in_stream {
                bytes
                    .chunks_exact_mut(unit(elem.vr))
                    .for_each(<[u8]>::reverse);
            }
        }
        if in_stream.as_deref() != Some(raw) {
            return Err(format!(
                "{tag}: value reported at offset {at}, the stream holds {in_stream:02X?} there, not {raw:02X?}"
            ));
        }
    }
    Ok(())
}

/// Checks (4): Pixel Data is reported where its tag is, with its header and length.
fn check_pixel_data(
    case: &Case,
    syntax: Syntax,
    stream: &[u8],
    found: &Extracted,
    stats: &mut Stats,
) -> Result<(), String> {
    let (pixel, at) = match (&case.pixel, found.pixel_data()) {
        (None, None) => return Ok(()),
        (Some(pixel), Some(at)) => (pixel, at),
        (pixel, at) => {
            return Err(format!(
                "Pixel Data generated: {}, reported: {at:?}",
                pixel.is_some()
            ))
        }
    };
    let element = at.element_offset as usize;
    let tag = syntax.tag_bytes(Tag::PIXEL_DATA);
    if stream.get(element..element + 4) != Some(&tag[..]) {
        return Err(format!(
            "Pixel Data reported at {element}: the stream holds {:02X?} there",
            stream.get(element..element + 4)
        ));
    }
    let header = if syntax.explicit() { 12 } else { 8 };
    if at.value_offset != at.element_offset + header {
        return Err(format!(
            "Pixel Data header: {at:?}, expected {header} bytes"
        ));
    }
    let value = at.value_offset as usize;
    // Where Pixel Data's value ends: the trailing padding element follows it.
    let end = stream.len() - case.padding_bytes(syntax);
    match pixel {
        Pixel::Native(words) => {
            stats.native += 1;
            let len = 2 * words.len();
            if at.vr != *b"OW" || at.length != Some(len as u32) || value + len != end {
                return Err(format!(
                    "native Pixel Data of {len} bytes ending at {end}: reported {at:?}"
                ));
            }
        }
        Pixel::Encapsulated { offsets, fragments } => {
            stats.encapsulated += 1;
            let len = 8
                + 4 * offsets.len()
                + fragments.iter().map(|f| 8 + even(f.len())).sum::<usize>()
                + 8;
            let offset_table = [
                syntax.tag_bytes(ITEM),
                syntax.u32_bytes(4 * offsets.len() as u32).to_vec(),
            ]
            .concat();
            if at.vr != *b"OB"
                || at.length.is_some()
                || value + len != end
                || stream.get(value..value + 8) != Some(&offset_table[..])
            {
                return Err(format!(
                    "encapsulated Pixel Data of {len} bytes ending at {end}: reported {at:?}, the stream holds {:02X?} at its value",
                    stream.get(value..value + 8)
                ));
            }
        }
    }
    Ok(())
}

fn check(case: &Case, stats: &mut Stats) -> Result<(), String> {
    count_sequences(&case.top, stats);
    stats.with_charset += usize::from(case.charset != Charset::Default);
    for syntax in Syntax::ALL {
        let stream = part10(case, syntax);
        stats.streams += 1;
        stats.largest_stream = stats.largest_stream.max(stream.len());
        let in_syntax = |e: String| format!("{syntax:?} ({} bytes): {e}", stream.len());
        let found = extract(&stream, &case.chunks, case.keep_feeding).map_err(in_syntax)?;
        let transfer_syntax = case.transfer_syntax(syntax);
        if found.meta.transfer_syntax_uid != transfer_syntax {
            return Err(in_syntax(format!(
                "transfer syntax {:?} read, {transfer_syntax} written",
                found.meta.transfer_syntax_uid
            )));
        }
        // (3) Which path read it.
        let path = match syntax {
            Syntax::ExplicitLe => ExtractPath::Fast,
            _ => ExtractPath::General {
                inflated: false,
                encoding_mismatch: false,
            },
        };
        if found.path != path {
            return Err(in_syntax(format!(
                "path {:?}, expected {path:?}",
                found.path
            )));
        }
        check_values(case, syntax, &stream, &found, stats).map_err(in_syntax)?;
        check_pixel_data(case, syntax, &stream, &found, stats).map_err(in_syntax)?;
        // (5) The decoded attributes.
        let attrs = found.attrs(&[]);
        let expected = expected_attrs(case, transfer_syntax);
        if attrs != expected {
            return Err(in_syntax(format!(
                "attrs(&[]):\n  ours     {attrs:?}\n  expected {expected:?}"
            )));
        }
    }
    Ok(())
}

#[test]
fn extractor_reads_what_dicom_object_writes() {
    let cases = std::env::var("KUVASTO_ROUNDTRIP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        // As `proptest!` does: regressions go to proptest-regressions/dicom_roundtrip.txt.
        source_file: Some(file!()),
        ..Config::default()
    });
    let stats = RefCell::new(Stats::default());
    let result = runner.run(&case(), |case| {
        check(&case, &mut stats.borrow_mut()).map_err(TestCaseError::fail)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    let stats = stats.into_inner();
    eprintln!("dicom round trip: {cases} cases, {stats:?}");
    assert!(
        cases < 32
            || (stats.non_ascii > 0 && stats.encapsulated > 0 && stats.defined_sequences > 0),
        "too little variety: {stats:?}"
    );
}

/// The tables above use each tag's dictionary VR, and fillers are not indexed.
#[test]
fn filler_tags_have_their_dictionary_vr() {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    use dicom_object::StandardDataDictionary;
    let dictionary_vr = |tag: Tag| {
        StandardDataDictionary
            .by_tag(DTag(tag.group(), tag.element()))
            .map(|entry| entry.vr().relaxed())
    };
    for &(g, e, vr) in FILLERS {
        let tag = Tag::new(g, e);
        assert_eq!(dictionary_vr(tag), Some(vr), "{tag}");
        assert!(!is_indexed(tag), "{tag}");
    }
    for &(g, e) in SEQUENCES.iter().filter(|(g, _)| g % 2 == 0) {
        assert_eq!(dictionary_vr(Tag::new(g, e)), Some(VR::SQ));
    }
    for &(tag, vr) in INDEXED_VRS {
        assert_eq!(dictionary_vr(tag), Some(vr), "{tag}");
        assert!(is_indexed(tag), "{tag}");
    }
    assert_eq!(INDEXED_VRS.len() + 1, INDEXED.len(), "(0008,0005) aside");
}
