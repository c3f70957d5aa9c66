//! Header extraction per object, three ways on the same objects in the same run:
//!
//! - **fast path**: `Extractor` on the object in Explicit VR Little Endian (its native transfer
//!   syntax, or an encapsulated one), which it reads with the zero-copy scanner;
//! - **general path**: `Extractor` on the same data set re-encoded in Implicit VR Little
//!   Endian, which it hands to dicom-parser (`dicom::general`);
//! - **dicom-object**: `OpenFileOptions::read_until(PixelData)` on each of those two encodings.
//!
//! Both `Extractor` runs are fed the way a store request feeds them, in 64 KiB pieces until
//! Pixel Data (or the end of an object without it), then `finish`.
//!
//! Objects: generated CT (flat header), XA (60-frame JPEG with a Basic Offset Table, nested
//! and per-frame vendor sequences), 12-lead ECG (waveform sequence with 134 kB of WaveformData
//! inside it, no Pixel Data), Comprehensive SR (content tree five containers deep, no Pixel
//! Data); pydicom's `CT_small.dcm` and `MR_small.dcm` when `.venv` has them
//! (`scripts/test.sh` installs pydicom). Generated sequences and items have undefined length,
//! so the fast path walks them rather than skipping them whole.
//!
//! Output: criterion's per-case figures, then a paired summary — interleaved rounds of the
//! four measurements per object, medians, and the median per-round ratios against
//! dicom-object (the ratios are what the targets are about: fast path ≥ 50×, general path
//! ≥ 4×). `KUVASTO_BENCH_PAIRED_ONLY=1` runs only the paired summary; `-- --test` runs every
//! case once and one short round of the summary (what the test suite does).

use criterion::Criterion;
use dicom_dictionary_std::tags::PIXEL_DATA;
use dicom_object::file::ReadPreamble;
use dicom_object::OpenFileOptions;
use kuvasto_engine::dicom::explicit_le::{encode_element, has_long_length, Progress, ScanLimits};
use kuvasto_engine::dicom::extract::{ExtractPath, Extracted, Extractor};
use kuvasto_engine::dicom::meta::{read_file_meta, ts, MetaLimits};
use kuvasto_engine::dicom::Tag;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

/// Pieces in which the extractor is fed (a store request hands over bytes like this).
const FEED_CHUNK: usize = 64 * 1024;

// --- A small element tree, encoded in either VR encoding -------------------------------------

#[derive(Clone)]
enum Value {
    Bytes(Vec<u8>),
    /// Items, each a list of elements.
    Seq(Vec<Vec<Elem>>),
    /// Encapsulated pixel data: the Basic Offset Table item, then one fragment per frame.
    Encapsulated(Vec<Vec<u8>>),
}

#[derive(Clone)]
struct Elem {
    tag: Tag,
    vr: [u8; 2],
    value: Value,
}

/// Lengths of sequences and items.
#[derive(Clone, Copy, PartialEq)]
enum Lengths {
    Defined,
    Undefined,
}

const UNDEFINED: u32 = u32::MAX;

fn header(out: &mut Vec<u8>, tag: Tag, vr: [u8; 2], len: u32, implicit: bool) {
    out.extend_from_slice(&tag.group().to_le_bytes());
    out.extend_from_slice(&tag.element().to_le_bytes());
    if implicit {
        out.extend_from_slice(&len.to_le_bytes());
    } else if has_long_length(vr) {
        out.extend_from_slice(&vr);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        out.extend_from_slice(&vr);
        out.extend_from_slice(&(len as u16).to_le_bytes());
    }
}

fn marker(out: &mut Vec<u8>, tag: Tag, len: u32) {
    out.extend_from_slice(&tag.group().to_le_bytes());
    out.extend_from_slice(&tag.element().to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

/// Encodes elements (sorted by tag) in Explicit or Implicit VR Little Endian.
fn encode(elems: &[Elem], implicit: bool, lengths: Lengths) -> Vec<u8> {
    let mut sorted: Vec<&Elem> = elems.iter().collect();
    sorted.sort_by_key(|e| e.tag);
    let mut out = Vec::new();
    for e in sorted {
        match &e.value {
            Value::Bytes(v) => {
                header(&mut out, e.tag, e.vr, v.len() as u32, implicit);
                out.extend_from_slice(v);
            }
            Value::Seq(items) => {
                let mut body = Vec::new();
                for item in items {
                    let content = encode(item, implicit, lengths);
                    match lengths {
                        Lengths::Defined => {
                            marker(&mut body, Tag::ITEM, content.len() as u32);
                            body.extend_from_slice(&content);
                        }
                        Lengths::Undefined => {
                            marker(&mut body, Tag::ITEM, UNDEFINED);
                            body.extend_from_slice(&content);
                            marker(&mut body, Tag::ITEM_DELIMITER, 0);
                        }
                    }
                }
                match lengths {
                    Lengths::Defined => {
                        header(&mut out, e.tag, *b"SQ", body.len() as u32, implicit);
                        out.extend_from_slice(&body);
                    }
                    Lengths::Undefined => {
                        header(&mut out, e.tag, *b"SQ", UNDEFINED, implicit);
                        out.extend_from_slice(&body);
                        marker(&mut out, Tag::SEQUENCE_DELIMITER, 0);
                    }
                }
            }
            Value::Encapsulated(fragments) => {
                header(&mut out, e.tag, e.vr, UNDEFINED, implicit);
                for f in fragments {
                    marker(&mut out, Tag::ITEM, f.len() as u32);
                    out.extend_from_slice(f);
                }
                marker(&mut out, Tag::SEQUENCE_DELIMITER, 0);
            }
        }
    }
    out
}

/// Reads an Explicit VR Little Endian data set into the tree (to re-encode pydicom's samples
/// in Implicit VR). Handles defined and undefined lengths and encapsulated pixel data; the
/// lengths style of the first sequence found is returned for the re-encoding.
fn parse(b: &[u8], at: &mut usize, end: usize, lengths: &mut Option<Lengths>) -> Vec<Elem> {
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut elems = Vec::new();
    while *at < end {
        let tag = Tag::new(u16_at(*at), u16_at(*at + 2));
        if tag == Tag::ITEM_DELIMITER {
            *at += 8;
            break;
        }
        let vr = [b[*at + 4], b[*at + 5]];
        let (len, header_len) = if has_long_length(vr) {
            (u32_at(*at + 8), 12)
        } else {
            (u32::from(u16_at(*at + 6)), 8)
        };
        *at += header_len;
        let value = if len == UNDEFINED && tag == Tag::PIXEL_DATA {
            let mut fragments = Vec::new();
            loop {
                let (t, l) = (Tag::new(u16_at(*at), u16_at(*at + 2)), u32_at(*at + 4));
                *at += 8;
                if t == Tag::SEQUENCE_DELIMITER {
                    break;
                }
                fragments.push(b[*at..*at + l as usize].to_vec());
                *at += l as usize;
            }
            Value::Encapsulated(fragments)
        } else if &vr == b"SQ" {
            lengths.get_or_insert(if len == UNDEFINED {
                Lengths::Undefined
            } else {
                Lengths::Defined
            });
            let seq_end = if len == UNDEFINED {
                usize::MAX
            } else {
                *at + len as usize
            };
            let mut items = Vec::new();
            while *at < seq_end {
                let (t, l) = (Tag::new(u16_at(*at), u16_at(*at + 2)), u32_at(*at + 4));
                *at += 8;
                if t == Tag::SEQUENCE_DELIMITER {
                    break;
                }
                assert_eq!(t, Tag::ITEM, "item expected");
                let item_end = if l == UNDEFINED {
                    usize::MAX
                } else {
                    *at + l as usize
                };
                items.push(parse(b, at, item_end.min(b.len()), lengths));
            }
            Value::Seq(items)
        } else {
            assert_ne!(len, UNDEFINED, "{tag}: undefined length not supported here");
            let v = b[*at..*at + len as usize].to_vec();
            *at += len as usize;
            Value::Bytes(v)
        };
        elems.push(Elem { tag, vr, value });
    }
    elems
}

// --- Building objects --------------------------------------------------------------------------

fn t(group: u16, element: u16) -> Tag {
    Tag::new(group, element)
}

/// A text value, padded to even length (UIs with NUL, the rest with a space).
fn s(group: u16, element: u16, vr: &[u8; 2], text: &str) -> Elem {
    let mut v = text.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(if vr == b"UI" { 0 } else { b' ' });
    }
    Elem {
        tag: t(group, element),
        vr: *vr,
        value: Value::Bytes(v),
    }
}

fn bin(group: u16, element: u16, vr: &[u8; 2], bytes: Vec<u8>) -> Elem {
    Elem {
        tag: t(group, element),
        vr: *vr,
        value: Value::Bytes(bytes),
    }
}

fn us(group: u16, element: u16, v: u16) -> Elem {
    bin(group, element, b"US", v.to_le_bytes().to_vec())
}

fn seq(group: u16, element: u16, items: Vec<Vec<Elem>>) -> Elem {
    Elem {
        tag: t(group, element),
        vr: *b"SQ",
        value: Value::Seq(items),
    }
}

/// A code sequence item (Code Value, Coding Scheme Designator, Code Meaning).
fn code(value: &str, scheme: &str, meaning: &str) -> Vec<Elem> {
    vec![
        s(0x0008, 0x0100, b"SH", value),
        s(0x0008, 0x0102, b"SH", scheme),
        s(0x0008, 0x0104, b"LO", meaning),
    ]
}

/// Deterministic filler bytes.
fn filler(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Patient, study and series attributes every object carries.
fn common(sop_class: &str, modality: &str, n: u32) -> Vec<Elem> {
    vec![
        s(0x0008, 0x0005, b"CS", "ISO_IR 100"),
        s(0x0008, 0x0012, b"DA", "20261125"),
        s(0x0008, 0x0013, b"TM", "101512.123"),
        s(0x0008, 0x0016, b"UI", sop_class),
        s(0x0008, 0x0018, b"UI", &format!("1.2.246.562.10.99.7.{n}.1")),
        s(0x0008, 0x0020, b"DA", "20261125"),
        s(0x0008, 0x0023, b"DA", "20261125"),
        s(0x0008, 0x0030, b"TM", "101500"),
        s(0x0008, 0x0033, b"TM", "101512"),
        s(0x0008, 0x0050, b"SH", "ACC12345"),
        s(0x0008, 0x0060, b"CS", modality),
        s(0x0008, 0x0070, b"LO", "Vendor Medical Systems"),
        s(0x0008, 0x0080, b"LO", "Keskussairaala"),
        s(0x0008, 0x0090, b"PN", "Lahti^Matti^^Dr"),
        s(0x0008, 0x1010, b"SH", "ROOM2"),
        s(0x0008, 0x1030, b"LO", "Sepelvaltimoiden varjoainekuvaus"),
        s(0x0008, 0x103E, b"LO", "Series 1"),
        s(0x0008, 0x1090, b"LO", "Model X 2000"),
        seq(
            0x0008,
            0x1111,
            vec![vec![
                s(0x0008, 0x1150, b"UI", "1.2.840.10008.3.1.2.3.3"),
                s(0x0008, 0x1155, b"UI", "1.2.246.562.10.99.7.900"),
            ]],
        ),
        s(0x0010, 0x0010, b"PN", "Virtanen^Aino"),
        s(0x0010, 0x0020, b"LO", "010203-123A"),
        s(0x0010, 0x0021, b"LO", "KS"),
        s(0x0010, 0x0030, b"DA", "19030201"),
        s(0x0010, 0x0040, b"CS", "F"),
        s(0x0010, 0x1010, b"AS", "063Y"),
        s(0x0018, 0x1000, b"LO", "SN 000123"),
        s(0x0018, 0x1020, b"LO", "VB10A"),
        s(0x0020, 0x000D, b"UI", "1.2.246.562.10.99.7"),
        s(0x0020, 0x000E, b"UI", &format!("1.2.246.562.10.99.7.{n}")),
        s(0x0020, 0x0010, b"SH", "42"),
        s(0x0020, 0x0011, b"IS", "3"),
        s(0x0020, 0x0013, b"IS", "1"),
        s(0x0040, 0x0244, b"DA", "20261125"),
        s(0x0040, 0x0245, b"TM", "101400"),
        s(0x0040, 0x0253, b"SH", "PPS1"),
    ]
}

fn decimals(n: usize, f: impl Fn(usize) -> String) -> String {
    (0..n).map(f).collect::<Vec<_>>().join("\\")
}

/// CT: a flat header (~40 attributes), an 8 kB private blob, 512×512×16-bit pixel data.
fn ct() -> Vec<Elem> {
    let mut d = common("1.2.840.10008.5.1.4.1.1.2", "CT", 1);
    d.extend([
        s(0x0008, 0x0008, b"CS", "ORIGINAL\\PRIMARY\\AXIAL"),
        s(0x0018, 0x0015, b"CS", "CSPINE"),
        s(0x0018, 0x0050, b"DS", "1.0"),
        s(0x0018, 0x0060, b"DS", "120"),
        s(0x0020, 0x0032, b"DS", "-125.0\\-125.0\\-50.5"),
        s(0x0020, 0x0037, b"DS", "1\\0\\0\\0\\1\\0"),
        s(0x0020, 0x0052, b"UI", "1.2.246.562.10.99.9"),
        us(0x0028, 0x0002, 1),
        s(0x0028, 0x0004, b"CS", "MONOCHROME2"),
        us(0x0028, 0x0010, 512),
        us(0x0028, 0x0011, 512),
        us(0x0028, 0x0100, 16),
        us(0x0028, 0x0101, 12),
        s(0x0028, 0x1050, b"DS", "40"),
        s(0x0028, 0x1051, b"DS", "400"),
        s(0x0029, 0x0010, b"LO", "SIEMENS CSA HEADER"),
        bin(0x0029, 0x1010, b"OB", filler(8000, 1)),
        bin(0x7FE0, 0x0010, b"OW", vec![0; 512 * 512 * 2]),
    ]);
    d
}

/// XA: 60 frames of 512×512 JPEG baseline with a Basic Offset Table; code, request,
/// referenced-image and mask sequences as a real XA header has, and a vendor per-frame
/// private sequence (60 items, each with a nested sequence).
fn xa() -> Vec<Elem> {
    const FRAMES: usize = 60;
    let mut d = common("1.2.840.10008.5.1.4.1.1.12.1", "XA", 2);
    d.extend([
        s(0x0008, 0x0008, b"CS", "ORIGINAL\\PRIMARY\\SINGLE PLANE"),
        seq(
            0x0008,
            0x1032,
            vec![code("XA-COR", "L", "Coronary angiography")],
        ),
        seq(
            0x0008,
            0x1140,
            (0..2)
                .map(|i| {
                    vec![
                        s(0x0008, 0x1150, b"UI", "1.2.840.10008.5.1.4.1.1.12.1"),
                        s(0x0008, 0x1155, b"UI", &format!("1.2.246.562.10.99.7.2.{i}")),
                    ]
                })
                .collect(),
        ),
        seq(0x0008, 0x2218, vec![code("T-32000", "SRT", "Heart")]),
        s(0x0010, 0x1020, b"DS", "1.68"),
        s(0x0010, 0x1030, b"DS", "72"),
        s(0x0018, 0x0015, b"CS", "HEART"),
        s(0x0018, 0x0060, b"DS", "78"),
        s(0x0018, 0x1030, b"LO", "Coronary LCA 15 fps"),
        s(0x0018, 0x1063, b"DS", "66.667"),
        s(
            0x0018,
            0x1065,
            b"DS",
            &decimals(
                FRAMES,
                |i| if i == 0 { "0".into() } else { "66.667".into() },
            ),
        ),
        s(0x0018, 0x1110, b"DS", "1195"),
        s(0x0018, 0x1111, b"DS", "810"),
        s(0x0018, 0x1114, b"DS", "1.475"),
        s(0x0018, 0x1150, b"IS", "7"),
        s(0x0018, 0x1151, b"IS", "612"),
        s(0x0018, 0x1152, b"IS", "4"),
        s(0x0018, 0x1155, b"CS", "GR"),
        s(0x0018, 0x115A, b"CS", "PULSED"),
        s(0x0018, 0x1160, b"SH", "CU 0.2MM"),
        s(0x0018, 0x1164, b"DS", "0.154\\0.154"),
        s(0x0018, 0x1500, b"CS", "STATIC"),
        s(0x0018, 0x1508, b"CS", "CARM"),
        s(0x0018, 0x1510, b"DS", "-29.8"),
        s(0x0018, 0x1511, b"DS", "20.1"),
        s(
            0x0018,
            0x1520,
            b"DS",
            &decimals(FRAMES, |i| format!("{:.1}", i as f64 * 0.1)),
        ),
        s(0x0018, 0x1521, b"DS", &decimals(FRAMES, |_| "0".into())),
        s(0x0020, 0x0020, b"CS", "L\\F"),
        s(0x0020, 0x4000, b"LT", "LCA RAO 30 CAU 20"),
        us(0x0028, 0x0002, 1),
        s(0x0028, 0x0004, b"CS", "MONOCHROME2"),
        s(0x0028, 0x0008, b"IS", &FRAMES.to_string()),
        bin(0x0028, 0x0009, b"AT", vec![0x18, 0x00, 0x63, 0x10]),
        us(0x0028, 0x0010, 512),
        us(0x0028, 0x0011, 512),
        us(0x0028, 0x0100, 8),
        us(0x0028, 0x0101, 8),
        us(0x0028, 0x0102, 7),
        us(0x0028, 0x0103, 0),
        s(0x0028, 0x1040, b"CS", "LIN"),
        s(0x0028, 0x1050, b"DS", "128"),
        s(0x0028, 0x1051, b"DS", "256"),
        s(0x0028, 0x2110, b"CS", "01"),
        s(0x0028, 0x2112, b"DS", "8.2"),
        s(0x0028, 0x2114, b"CS", "ISO_10918_1"),
        seq(
            0x0028,
            0x6100,
            vec![vec![
                s(0x0028, 0x6101, b"CS", "AVG_SUB"),
                bin(
                    0x0028,
                    0x6110,
                    b"US",
                    [1u16, 2].map(u16::to_le_bytes).concat(),
                ),
                bin(
                    0x0028,
                    0x6114,
                    b"FL",
                    [0f32; 2].map(f32::to_le_bytes).concat(),
                ),
            ]],
        ),
        s(0x0032, 0x1060, b"LO", "Sepelvaltimoiden varjoainekuvaus"),
        s(0x0040, 0x0254, b"LO", "Coronary angiography"),
        seq(
            0x0040,
            0x0275,
            vec![vec![
                s(0x0040, 0x0007, b"LO", "Coronary angiography"),
                seq(
                    0x0040,
                    0x0008,
                    vec![code("XA-COR-LCA", "L", "Left coronary artery")],
                ),
                s(0x0040, 0x0009, b"SH", "SPS1"),
                s(0x0040, 0x1001, b"SH", "RP1"),
            ]],
        ),
        s(0x0019, 0x0010, b"LO", "VENDOR AX"),
        bin(0x0019, 0x1010, b"OB", filler(4096, 2)),
        s(0x0019, 0x1020, b"LO", "FLUORO PROGRAM 7"),
        s(0x0021, 0x0010, b"LO", "VENDOR FRAME DATA"),
        bin(0x0021, 0x1020, b"OB", filler(16 * 1024, 3)),
        seq(
            0x0021,
            0x1030,
            (0..FRAMES)
                .map(|i| {
                    vec![
                        s(0x0021, 0x1031, b"DS", &format!("{:.3}", i as f64 * 66.667)),
                        s(0x0021, 0x1032, b"IS", &i.to_string()),
                        seq(
                            0x0021,
                            0x1033,
                            vec![vec![
                                s(0x0021, 0x1034, b"DS", "-29.8\\20.1"),
                                s(0x0021, 0x1035, b"DS", "810\\1195"),
                            ]],
                        ),
                    ]
                })
                .collect(),
        ),
    ]);
    let fragments: Vec<Vec<u8>> = (0..FRAMES)
        .map(|i| {
            let mut f = vec![0xFF, 0xD8];
            f.extend(filler(20_000 + 8 * i, 100 + i as u32));
            f.extend([0xFF, 0xD9]);
            f
        })
        .collect();
    let mut offsets = Vec::new();
    let mut at = 0u32;
    for f in &fragments {
        offsets.extend_from_slice(&at.to_le_bytes());
        at += 8 + f.len() as u32;
    }
    let mut items = vec![offsets];
    items.extend(fragments);
    d.push(Elem {
        tag: Tag::PIXEL_DATA,
        vr: *b"OB",
        value: Value::Encapsulated(items),
    });
    d
}

/// 12-lead ECG: a rhythm group (12 × 5000 samples) and a median-beat group (12 × 600), each
/// with its channel definitions, inside the Waveform Sequence; measurements as waveform
/// annotations; no Pixel Data.
fn ecg() -> Vec<Elem> {
    let mut d = common("1.2.840.10008.5.1.4.1.1.9.1.1", "ECG", 3);
    d.extend([
        s(0x0008, 0x002A, b"DT", "20261125101500"),
        s(0x0018, 0x1030, b"LO", "Resting 12-lead"),
    ]);
    let leads = [
        "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
    ];
    let group = |label: &str, samples: usize, seed: u32| -> Vec<Elem> {
        let channels = leads
            .iter()
            .enumerate()
            .map(|(i, lead)| {
                vec![
                    s(0x003A, 0x0202, b"IS", &(i + 1).to_string()),
                    s(0x003A, 0x0203, b"SH", lead),
                    seq(
                        0x003A,
                        0x0208,
                        vec![code(
                            &format!("5.6.3-9-{}", i + 1),
                            "SCPECG",
                            &format!("Lead {lead}"),
                        )],
                    ),
                    s(0x003A, 0x0210, b"DS", "2.5"),
                    seq(0x003A, 0x0211, vec![code("uV", "UCUM", "microvolt")]),
                    s(0x003A, 0x0212, b"DS", "1"),
                    s(0x003A, 0x0213, b"DS", "0"),
                    s(0x003A, 0x0214, b"DS", "0"),
                    us(0x003A, 0x021A, 16),
                    s(0x003A, 0x0220, b"DS", "0.05"),
                    s(0x003A, 0x0221, b"DS", "150"),
                    s(0x003A, 0x0222, b"DS", "50"),
                ]
            })
            .collect();
        vec![
            s(0x0018, 0x1068, b"DS", "0"),
            s(0x003A, 0x0004, b"CS", "ORIGINAL"),
            us(0x003A, 0x0005, 12),
            bin(
                0x003A,
                0x0010,
                b"UL",
                (samples as u32).to_le_bytes().to_vec(),
            ),
            s(0x003A, 0x001A, b"DS", "500"),
            s(0x003A, 0x0020, b"SH", label),
            seq(0x003A, 0x0200, channels),
            us(0x5400, 0x1004, 16),
            s(0x5400, 0x1006, b"CS", "SS"),
            bin(0x5400, 0x1010, b"OW", filler(12 * samples * 2, seed)),
        ]
    };
    d.push(seq(
        0x5400,
        0x0100,
        vec![group("RHYTHM", 5000, 7), group("MEDIAN", 600, 8)],
    ));
    let measurements = [
        ("8867-4", "Heart rate", "72", "/min"),
        ("PR", "PR interval", "164", "ms"),
        ("QRS", "QRS duration", "92", "ms"),
        ("QT", "QT interval", "384", "ms"),
        ("QTc", "QTc interval", "421", "ms"),
        ("P-axis", "P axis", "54", "deg"),
        ("R-axis", "QRS axis", "12", "deg"),
        ("T-axis", "T axis", "38", "deg"),
    ];
    d.push(seq(
        0x0040,
        0xB020,
        measurements
            .iter()
            .map(|(c, meaning, value, unit)| {
                vec![
                    seq(0x0040, 0xA043, vec![code(c, "LN", meaning)]),
                    seq(0x0040, 0x08EA, vec![code(unit, "UCUM", unit)]),
                    us(0x0040, 0xA180, 1),
                    s(0x0040, 0xA30A, b"DS", value),
                ]
            })
            .collect(),
    ));
    d
}

/// One SR content item (relationship, value type, concept name) plus its value.
fn content_item(relationship: &str, kind: &str, concept: Vec<Elem>, value: Vec<Elem>) -> Vec<Elem> {
    let mut item = vec![
        s(0x0040, 0xA010, b"CS", relationship),
        s(0x0040, 0xA040, b"CS", kind),
        seq(0x0040, 0xA043, vec![concept]),
    ];
    item.extend(value);
    item
}

/// A container at `level` (1 = child of the root): two leaves (text, and a measurement or a
/// code), then two nested containers, down to level 5 whose containers hold three leaves.
fn sr_container(level: usize, n: &mut usize) -> Vec<Elem> {
    *n += 1;
    let id = *n;
    let mut children = vec![
        content_item(
            "CONTAINS",
            "TEXT",
            code("121071", "DCM", "Finding"),
            vec![s(
                0x0040,
                0xA160,
                b"UT",
                &format!("Finding {id}: no significant stenosis in the segment."),
            )],
        ),
        content_item(
            "CONTAINS",
            "NUM",
            code("G-A22A", "SRT", "Length"),
            vec![seq(
                0x0040,
                0xA300,
                vec![vec![
                    seq(0x0040, 0x08EA, vec![code("mm", "UCUM", "millimeter")]),
                    s(0x0040, 0xA30A, b"DS", &format!("{}.{}", 10 + id, id % 10)),
                ]],
            )],
        ),
    ];
    if level < 5 {
        children.push(sr_container(level + 1, n));
        children.push(sr_container(level + 1, n));
    } else {
        children.push(content_item(
            "CONTAINS",
            "CODE",
            code("121071", "DCM", "Finding"),
            vec![seq(0x0040, 0xA168, vec![code("F-01721", "SRT", "Normal")])],
        ));
    }
    let mut container = content_item(
        "CONTAINS",
        "CONTAINER",
        code("121070", "DCM", "Findings"),
        vec![s(0x0040, 0xA050, b"CS", "SEPARATE")],
    );
    container.push(seq(0x0040, 0xA730, children));
    container
}

/// Comprehensive SR: observer context, request and evidence sequences, and a content tree
/// of 93 containers five deep: sequences nested eight deep, sixteen levels counting items,
/// which is `ScanLimits`' default depth limit.
fn sr() -> Vec<Elem> {
    let mut d = common("1.2.840.10008.5.1.4.1.1.88.33", "SR", 4);
    let mut n = 0;
    let mut content = vec![
        content_item(
            "HAS CONCEPT MOD",
            "CODE",
            code("121049", "DCM", "Language of Content Item and Descendants"),
            vec![seq(0x0040, 0xA168, vec![code("fi", "RFC5646", "Finnish")])],
        ),
        content_item(
            "HAS OBS CONTEXT",
            "PNAME",
            code("121008", "DCM", "Person Observer Name"),
            vec![s(0x0040, 0xA123, b"PN", "Lahti^Matti")],
        ),
    ];
    for _ in 0..3 {
        content.push(sr_container(1, &mut n));
    }
    d.extend([
        s(0x0040, 0xA040, b"CS", "CONTAINER"),
        seq(
            0x0040,
            0xA043,
            vec![code("18745-0", "LN", "Cardiac catheterization report")],
        ),
        s(0x0040, 0xA050, b"CS", "SEPARATE"),
        seq(
            0x0040,
            0xA073,
            vec![vec![
                s(0x0040, 0xA027, b"LO", "Keskussairaala"),
                s(0x0040, 0xA030, b"DT", "20261125120000"),
                s(0x0040, 0xA075, b"PN", "Lahti^Matti"),
            ]],
        ),
        seq(
            0x0040,
            0xA370,
            vec![vec![
                s(0x0008, 0x0050, b"SH", "ACC12345"),
                seq(
                    0x0008,
                    0x1110,
                    vec![vec![
                        s(0x0008, 0x1150, b"UI", "1.2.840.10008.3.1.2.3.1"),
                        s(0x0008, 0x1155, b"UI", "1.2.246.562.10.99.7"),
                    ]],
                ),
                s(0x0020, 0x000D, b"UI", "1.2.246.562.10.99.7"),
                s(0x0032, 0x1060, b"LO", "Sepelvaltimoiden varjoainekuvaus"),
                seq(
                    0x0032,
                    0x1064,
                    vec![code("XA-COR", "L", "Coronary angiography")],
                ),
                s(0x0040, 0x1001, b"SH", "RP1"),
            ]],
        ),
        seq(
            0x0040,
            0xA372,
            vec![code("XA-COR", "L", "Coronary angiography")],
        ),
        seq(
            0x0040,
            0xA375,
            vec![vec![
                seq(
                    0x0008,
                    0x1115,
                    vec![vec![
                        seq(
                            0x0008,
                            0x1199,
                            (0..20)
                                .map(|i| {
                                    vec![
                                        s(0x0008, 0x1150, b"UI", "1.2.840.10008.5.1.4.1.1.12.1"),
                                        s(
                                            0x0008,
                                            0x1155,
                                            b"UI",
                                            &format!("1.2.246.562.10.99.7.2.{i}"),
                                        ),
                                    ]
                                })
                                .collect(),
                        ),
                        s(0x0020, 0x000E, b"UI", "1.2.246.562.10.99.7.2"),
                    ]],
                ),
                s(0x0020, 0x000D, b"UI", "1.2.246.562.10.99.7"),
            ]],
        ),
        s(0x0040, 0xA491, b"CS", "COMPLETE"),
        s(0x0040, 0xA493, b"CS", "VERIFIED"),
        seq(
            0x0040,
            0xA504,
            vec![vec![
                s(0x0008, 0x0105, b"CS", "DCMR"),
                s(0x0040, 0xDB00, b"CS", "3800"),
            ]],
        ),
        seq(0x0040, 0xA730, content),
    ]);
    d
}

/// A Part-10 object: preamble, file meta group, then the data set.
fn part10(ts_uid: &str, sop_class: &[u8], sop_instance: &[u8], data_set: &[u8]) -> Vec<u8> {
    let ui = |v: &[u8]| {
        let mut v = v.to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        v
    };
    let el = |e: u16, vr: &[u8; 2], v: &[u8]| encode_element(Tag::new(2, e), vr, v);
    let body = [
        el(1, b"OB", &[0, 1]),
        el(2, b"UI", &ui(sop_class)),
        el(3, b"UI", &ui(sop_instance)),
        el(0x10, b"UI", &ui(ts_uid.as_bytes())),
        el(0x12, b"UI", &ui(b"1.2.246.562.99")),
    ]
    .concat();
    [
        vec![0u8; 128],
        b"DICM".to_vec(),
        el(0, b"UL", &(body.len() as u32).to_le_bytes()),
        body,
        data_set.to_vec(),
    ]
    .concat()
}

/// One object in both encodings.
struct Case {
    name: String,
    /// Bytes up to Pixel Data (or all, without it) in the explicit encoding.
    header_bytes: usize,
    explicit: Vec<u8>,
    implicit: Vec<u8>,
}

fn value_of(elems: &[Elem], tag: Tag) -> &[u8] {
    elems
        .iter()
        .find_map(|e| match &e.value {
            Value::Bytes(v) if e.tag == tag => Some(&v[..]),
            _ => None,
        })
        .expect("SOP Class and Instance UIDs")
}

fn case(name: &str, explicit_ts: &str, elems: &[Elem], lengths: Lengths) -> Case {
    let sop_class = value_of(elems, t(0x0008, 0x0016));
    let sop_instance = value_of(elems, t(0x0008, 0x0018));
    let explicit_ds = encode(elems, false, lengths);
    let implicit_ds = encode(elems, true, lengths);
    let explicit = part10(explicit_ts, sop_class, sop_instance, &explicit_ds);
    let implicit = part10(ts::IMPLICIT_VR_LE, sop_class, sop_instance, &implicit_ds);
    let header_bytes = match extract(&explicit).pixel_data() {
        Some(at) => at.element_offset as usize,
        None => explicit.len(),
    };
    Case {
        name: name.into(),
        header_bytes,
        explicit,
        implicit,
    }
}

/// A pydicom sample (Explicit VR LE) and its data set re-encoded in Implicit VR LE.
fn sample_case(name: &str, bytes: Vec<u8>) -> Case {
    let meta = read_file_meta(&bytes, MetaLimits::default())
        .expect("sample meta")
        .expect("complete meta");
    assert_eq!(meta.transfer_syntax_uid, ts::EXPLICIT_VR_LE, "{name}");
    let start = meta.data_set_offset as usize;
    let mut lengths = None;
    let elems = parse(&bytes, &mut start.clone(), bytes.len(), &mut lengths);
    let mut c = case(
        name,
        ts::EXPLICIT_VR_LE,
        &elems,
        lengths.unwrap_or(Lengths::Defined),
    );
    // Measure the sample's own bytes on the explicit side, not the re-encoding.
    c.header_bytes = match extract(&bytes).pixel_data() {
        Some(at) => at.element_offset as usize,
        None => bytes.len(),
    };
    c.explicit = bytes;
    c
}

fn cases() -> Vec<Case> {
    let jpeg_baseline = "1.2.840.10008.1.2.4.50";
    let mut out = vec![
        case(
            "generated CT",
            ts::EXPLICIT_VR_LE,
            &ct(),
            Lengths::Undefined,
        ),
        case(
            "generated XA (60 JPEG frames)",
            jpeg_baseline,
            &xa(),
            Lengths::Undefined,
        ),
        case(
            "generated ECG (12-lead)",
            ts::EXPLICIT_VR_LE,
            &ecg(),
            Lengths::Undefined,
        ),
        case(
            "generated SR (5-deep tree)",
            ts::EXPLICIT_VR_LE,
            &sr(),
            Lengths::Undefined,
        ),
    ];
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    if let Some(Ok(python)) = std::fs::read_dir(&samples).ok().and_then(|mut d| d.next()) {
        let dir = python.path().join("site-packages/pydicom/data/test_files");
        for name in ["CT_small.dcm", "MR_small.dcm"] {
            if let Ok(bytes) = std::fs::read(dir.join(name)) {
                out.push(sample_case(&format!("pydicom {name}"), bytes));
            }
        }
    }
    out
}

// --- The measurements --------------------------------------------------------------------------

fn extract(bytes: &[u8]) -> Extracted {
    let mut extractor = Extractor::new(MetaLimits::default(), ScanLimits::default());
    for piece in bytes.chunks(FEED_CHUNK) {
        if let Progress::PixelData(_) = extractor.feed(piece).expect("feed") {
            break;
        }
    }
    extractor.finish().expect("extract")
}

fn ours(bytes: &[u8]) -> usize {
    extract(bytes).data_set.elements.len()
}

fn theirs(bytes: &[u8]) -> usize {
    let object = OpenFileOptions::new()
        .read_until(PIXEL_DATA)
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .expect("dicom-object");
    object.iter().count()
}

/// Checks that every way reads the object, that the two paths ran where they should, and
/// that they found the same attributes.
fn check(c: &Case) {
    let values = |e: &Extracted| -> Vec<(Tag, Vec<u8>)> {
        e.data_set
            .elements
            .iter()
            .map(|el| (el.tag, e.data_set.value(el).to_vec()))
            .collect()
    };
    let fast = extract(&c.explicit);
    let general = extract(&c.implicit);
    assert_eq!(fast.path, ExtractPath::Fast, "{}", c.name);
    assert!(
        matches!(general.path, ExtractPath::General { .. }),
        "{}",
        c.name
    );
    assert_eq!(values(&fast), values(&general), "{}", c.name);
    assert!(fast.data_set.elements.len() >= 15, "{}", c.name);
    assert!(
        theirs(&c.explicit) > 20 && theirs(&c.implicit) > 20,
        "{}",
        c.name
    );
}

/// Mean time of `f` over as many calls as fit in `budget` (at least `min_calls`).
fn per_call(f: &dyn Fn() -> usize, budget: Duration, min_calls: u32) -> Duration {
    let start = Instant::now();
    let mut calls = 0u32;
    while calls < min_calls || start.elapsed() < budget {
        black_box(f());
        calls += 1;
    }
    start.elapsed() / calls
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Interleaved rounds (the order rotates each round) of the four measurements; medians of the
/// times and of the per-round ratios dicom-object / ours.
fn paired_summary(cases: &[Case], rounds: usize, budget: Duration, min_calls: u32) {
    println!("\n## Header extraction, interleaved rounds (median of {rounds}; µs per header)\n");
    println!(
        "| input | header bytes | fast path µs | headers/s | general path µs | headers/s \
         | dicom-object µs (explicit) | dicom-object µs (implicit) | fast vs dicom-object \
         | general vs dicom-object |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for c in cases {
        let runs: [&dyn Fn() -> usize; 4] = [
            &|| ours(&c.explicit),
            &|| ours(&c.implicit),
            &|| theirs(&c.explicit),
            &|| theirs(&c.implicit),
        ];
        let mut times: [Vec<f64>; 4] = Default::default();
        let (mut fast_ratio, mut general_ratio) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut t = [0f64; 4];
            for step in 0..4 {
                let which = (step + round) % 4;
                t[which] = per_call(runs[which], budget, min_calls).as_secs_f64() * 1e6;
            }
            for (column, v) in times.iter_mut().zip(t) {
                column.push(v);
            }
            fast_ratio.push(t[2] / t[0]);
            general_ratio.push(t[3] / t[1]);
        }
        let [fast, general, theirs_explicit, theirs_implicit] = times.map(median);
        println!(
            "| {} | {} | {fast:.2} | {:.0} | {general:.2} | {:.0} | {theirs_explicit:.1} \
             | {theirs_implicit:.1} | {:.0}× | {:.1}× |",
            c.name,
            c.header_bytes,
            1e6 / fast,
            1e6 / general,
            median(fast_ratio),
            median(general_ratio),
        );
    }
}

fn main() {
    let cases = cases();
    for c in &cases {
        check(c);
    }
    let test_mode = std::env::args().any(|a| a == "--test");
    // `KUVASTO_BENCH_PAIRED_ONLY=1` runs only the interleaved comparison.
    let paired_only = std::env::var_os("KUVASTO_BENCH_PAIRED_ONLY").is_some();
    if !paired_only {
        let mut c = Criterion::default().configure_from_args();
        let mut group = c.benchmark_group("extract");
        group.sample_size(20);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(2));
        for case in &cases {
            let name = &case.name;
            group.bench_function(format!("kuvasto fast path/{name}"), |b| {
                b.iter(|| ours(&case.explicit))
            });
            group.bench_function(format!("kuvasto general path/{name}"), |b| {
                b.iter(|| ours(&case.implicit))
            });
            group.bench_function(format!("dicom-object explicit/{name}"), |b| {
                b.iter(|| theirs(&case.explicit))
            });
            group.bench_function(format!("dicom-object implicit/{name}"), |b| {
                b.iter(|| theirs(&case.implicit))
            });
        }
        group.finish();
        c.final_summary();
    }
    if test_mode {
        paired_summary(&cases, 1, Duration::ZERO, 1);
    } else {
        paired_summary(&cases, 7, Duration::from_millis(40), 3);
    }
}
