//! Bad inputs: a corpus of broken Part-10 streams, built here, each with the specific error
//! the `Extractor` must give.
//!
//! Every case is fed in 1-byte chunks and in 64 KiB chunks; both must give the same error kind
//! (the `ExtractError` variant) with a message naming what matters (the tag, the offset, the
//! limit), or the documented reading for the few inputs that are read after all. Nothing may
//! panic. Lying lengths (0xFFFFFFF0, a 2 MiB wanted value) must end in `Limit` or `Malformed`
//! without the bytes being there: an extractor that allocated what they declare would fail
//! the test by running out of memory rather than by an assertion.

use kuvasto_engine::dicom::explicit_le::{
    encode_element, has_long_length, Progress, ScanError, ScanLimits,
};
use kuvasto_engine::dicom::extract::{ExtractError, ExtractPath, Extracted, Extractor};
use kuvasto_engine::dicom::meta::{ts, MetaError, MetaLimits};
use kuvasto_engine::dicom::Tag;

/// How the data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enc {
    ExplicitLe,
    ImplicitLe,
}

impl Enc {
    fn uid(self) -> &'static str {
        match self {
            Enc::ExplicitLe => ts::EXPLICIT_VR_LE,
            Enc::ImplicitLe => ts::IMPLICIT_VR_LE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Enc::ExplicitLe => "explicit LE",
            Enc::ImplicitLe => "implicit LE",
        }
    }
}

/// An element header declaring `len` (which may lie).
fn header(enc: Enc, tag: Tag, vr: &[u8; 2], len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(tag.group().to_le_bytes());
    out.extend(tag.element().to_le_bytes());
    match enc {
        Enc::ImplicitLe => out.extend(len.to_le_bytes()),
        Enc::ExplicitLe if has_long_length(*vr) => {
            out.extend(vr);
            out.extend([0, 0]);
            out.extend(len.to_le_bytes());
        }
        Enc::ExplicitLe => {
            out.extend(vr);
            out.extend((len as u16).to_le_bytes());
        }
    }
    out
}

fn el(enc: Enc, tag: Tag, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    [header(enc, tag, vr, value.len() as u32), value.to_vec()].concat()
}

const UNDEFINED: u32 = u32::MAX;

fn item_start(len: u32) -> Vec<u8> {
    [vec![0xFE, 0xFF, 0x00, 0xE0], len.to_le_bytes().to_vec()].concat()
}

fn item_end() -> Vec<u8> {
    vec![0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]
}

fn seq_end() -> Vec<u8> {
    vec![0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]
}

/// A file meta group (explicit VR LE, always) for `transfer_syntax`; `None` leaves
/// (0002,0010) out. `group_length_delta` makes (0002,0000) lie.
fn meta_group(transfer_syntax: Option<&str>, group_length_delta: i64) -> Vec<u8> {
    let uid = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        v
    };
    let mut body = [
        encode_element(Tag::new(0x0002, 0x0001), b"OB", &[0, 1]),
        encode_element(
            Tag::new(0x0002, 0x0002),
            b"UI",
            &uid("1.2.840.10008.5.1.4.1.1.7"),
        ),
        encode_element(Tag::new(0x0002, 0x0003), b"UI", &uid("1.2.3.4.5.6")),
    ]
    .concat();
    if let Some(ts) = transfer_syntax {
        body.extend(encode_element(Tag::new(0x0002, 0x0010), b"UI", &uid(ts)));
    }
    body.extend(encode_element(
        Tag::new(0x0002, 0x0012),
        b"UI",
        &uid("1.2.826.0.1.3680043.10.1234"),
    ));
    let length = (body.len() as i64 + group_length_delta) as u32;
    [
        encode_element(Tag::new(0x0002, 0x0000), b"UL", &length.to_le_bytes()),
        body,
    ]
    .concat()
}

fn part10_with(meta: Vec<u8>, data_set: &[u8]) -> Vec<u8> {
    [vec![0u8; 128], b"DICM".to_vec(), meta, data_set.to_vec()].concat()
}

fn part10(transfer_syntax: &str, data_set: &[u8]) -> Vec<u8> {
    part10_with(meta_group(Some(transfer_syntax), 0), data_set)
}

/// Where the data set starts in `part10(transfer_syntax, ..)`'s streams.
fn data_set_offset(transfer_syntax: &str) -> usize {
    132 + meta_group(Some(transfer_syntax), 0).len()
}

/// Length of an element header (`long`: a VR with a 4-byte length).
fn header_len(enc: Enc, long: bool) -> usize {
    match (enc, long) {
        (Enc::ExplicitLe, true) => 12,
        _ => 8,
    }
}

/// A small valid data set, in pieces so that cases can cut it at known places.
struct Pieces {
    /// SOP Class and Instance UIDs, Modality.
    head: Vec<u8>,
    /// A private creator and a 64-byte private OB value (not wanted).
    private: Vec<u8>,
    /// (0008,1115) ReferencedSeriesSequence, undefined length, one undefined-length item
    /// holding two UIDs: header, item start, first nested element, second, item end,
    /// sequence end.
    seq_header: Vec<u8>,
    item: Vec<u8>,
    nested1: Vec<u8>,
    nested2: Vec<u8>,
    /// Patient Name (wanted), 14 bytes.
    name: Vec<u8>,
    /// Study Instance UID, Rows, and native Pixel Data of 16 bytes.
    tail: Vec<u8>,
}

impl Pieces {
    fn new(enc: Enc) -> Pieces {
        Pieces {
            head: [
                el(
                    enc,
                    Tag::new(0x0008, 0x0016),
                    b"UI",
                    b"1.2.840.10008.5.1.4.1.1.7\0",
                ),
                el(enc, Tag::new(0x0008, 0x0018), b"UI", b"1.2.3.4.5.6\0"),
                el(enc, Tag::new(0x0008, 0x0060), b"CS", b"OT"),
            ]
            .concat(),
            private: [
                el(enc, Tag::new(0x0009, 0x0010), b"LO", b"KUVASTO TEST"),
                el(enc, Tag::new(0x0009, 0x1001), b"OB", &[0xA5; 64]),
            ]
            .concat(),
            seq_header: header(enc, Tag::new(0x0008, 0x1115), b"SQ", UNDEFINED),
            item: item_start(UNDEFINED),
            nested1: el(enc, Tag::new(0x0008, 0x1150), b"UI", b"1.2.3\0"),
            nested2: el(enc, Tag::new(0x0008, 0x1155), b"UI", b"1.2.3.4\0"),
            name: el(enc, Tag::new(0x0010, 0x0010), b"PN", b"Virtanen^Aino "),
            tail: [
                el(enc, Tag::new(0x0020, 0x000D), b"UI", b"1.2.3.4.5.7\0"),
                el(enc, Tag::new(0x0028, 0x0010), b"US", &4u16.to_le_bytes()),
                el(enc, Tag::PIXEL_DATA, b"OW", &[0x11; 16]),
            ]
            .concat(),
        }
    }

    /// The data set up to and including the sequence's item header.
    fn to_item(&self) -> Vec<u8> {
        [&self.head[..], &self.private, &self.seq_header, &self.item].concat()
    }

    /// The data set up to the end of the sequence's item (its delimiter included).
    fn to_item_end(&self) -> Vec<u8> {
        [
            self.to_item(),
            self.nested1.clone(),
            self.nested2.clone(),
            item_end(),
        ]
        .concat()
    }

    /// The data set up to Patient Name.
    fn to_name(&self) -> Vec<u8> {
        [self.to_item_end(), seq_end()].concat()
    }

    fn whole(&self) -> Vec<u8> {
        [self.to_name(), self.name.clone(), self.tail.clone()].concat()
    }
}

/// The error kinds (`ExtractError` variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NotDicom,
    MetaMalformed,
    MetaLimit,
    Malformed,
    Limit,
    Decline,
}

fn kind_of(error: &ExtractError) -> Kind {
    match error {
        ExtractError::Meta(MetaError::NotDicom(_)) => Kind::NotDicom,
        ExtractError::Meta(MetaError::Malformed { .. }) => Kind::MetaMalformed,
        ExtractError::Meta(MetaError::Limit { .. }) => Kind::MetaLimit,
        ExtractError::Scan(ScanError::Malformed { .. }) => Kind::Malformed,
        ExtractError::Scan(ScanError::Limit { .. }) => Kind::Limit,
        ExtractError::Scan(ScanError::Decline { .. }) => Kind::Decline,
    }
}

/// What a case must give.
enum Expect {
    /// This error kind, with a message containing each of these.
    Error(Kind, Vec<String>),
    /// A reading (documented in the case's comment), checked by the function.
    Read(fn(&Extracted) -> Result<(), String>),
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    expect: Expect,
}

fn error(kind: Kind, contains: &[&str]) -> Expect {
    Expect::Error(kind, contains.iter().map(|s| s.to_string()).collect())
}

fn at(offset: usize) -> String {
    format!("offset {offset}")
}

/// Feeds `bytes` in `chunk`-byte pieces, stopping at the first error or at Pixel Data.
fn run(bytes: &[u8], chunk: usize) -> Result<Extracted, ExtractError> {
    let mut extractor = Extractor::new(MetaLimits::default(), ScanLimits::default());
    for piece in bytes.chunks(chunk) {
        if let Progress::PixelData(_) = extractor.feed(piece)? {
            break;
        }
    }
    extractor.finish()
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>, expect: Expect| {
        cases.push(Case {
            name,
            bytes,
            expect,
        })
    };
    let start = data_set_offset(ts::EXPLICIT_VR_LE);
    let valid = part10(ts::EXPLICIT_VR_LE, &Pieces::new(Enc::ExplicitLe).whole());

    // --- Preamble and file meta group.
    add(
        "truncated in the preamble".into(),
        valid[..100].to_vec(),
        error(Kind::NotDicom, &["ended after 100 bytes"]),
    );
    add(
        "truncated in the file meta group".into(),
        valid[..start - 20].to_vec(),
        error(
            Kind::NotDicom,
            &[&format!(
                "stream ended after {} bytes, inside the file meta",
                start - 20
            )],
        ),
    );
    // A lying (0002,0000) whose end is not an element boundary: group 0002 is read on to its
    // last element, and the error is at the data set's first element (no value or declared
    // end in the message, but the offset).
    for enc in [Enc::ExplicitLe, Enc::ImplicitLe] {
        let data_set = Pieces::new(enc).whole();
        let boundary = [
            "group length does not end on an element boundary",
            &at(data_set_offset(enc.uid())),
        ];
        let long = part10_with(meta_group(Some(enc.uid()), 20), &data_set);
        add(
            format!("{}: file meta group length too long", enc.name()),
            long,
            error(Kind::MetaMalformed, &boundary),
        );
        let short = part10_with(meta_group(Some(enc.uid()), -10), &data_set);
        add(
            format!("{}: file meta group length too short", enc.name()),
            short,
            error(Kind::MetaMalformed, &boundary),
        );
    }
    // Short by exactly its last element: (0002,0012) then opens the data set. PS3.10 7.1 keeps
    // group 0002 out of the data set: both paths refuse it, naming the element.
    add(
        "file meta group length short by its last element".into(),
        part10_with(
            meta_group(Some(ts::EXPLICIT_VR_LE), -36),
            &Pieces::new(Enc::ExplicitLe).whole(),
        ),
        error(
            Kind::Malformed,
            &["file meta element (0002,0012) inside the data set"],
        ),
    );
    let huge = part10_with(
        meta_group(Some(ts::EXPLICIT_VR_LE), 0xFFFF_FFF0 - 200),
        &Pieces::new(Enc::ExplicitLe).whole(),
    );
    add(
        "file meta group length 0xFFFFFFxx".into(),
        huge,
        error(
            Kind::MetaLimit,
            &["declared file meta group length is 4294967212, the limit is 65536"],
        ),
    );
    add(
        "no transfer syntax in the file meta group".into(),
        part10_with(meta_group(None, 0), &Pieces::new(Enc::ExplicitLe).whole()),
        error(
            Kind::MetaMalformed,
            &[&at(132), "no (0002,0010) Transfer Syntax UID"],
        ),
    );
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend([0, 0, 0, 13]);
    png.extend(b"IHDR");
    png.extend([0, 0, 1, 0, 0, 0, 1, 0, 8, 2, 0, 0, 0]);
    png.extend([0x12, 0x34, 0x56, 0x78]);
    png.extend([0, 0, 1, 0]);
    png.extend(b"IDAT");
    png.extend([0x78; 256]);
    add("a PNG file".into(), png, error(Kind::NotDicom, &["DICM"]));

    for enc in [Enc::ExplicitLe, Enc::ImplicitLe] {
        let p = Pieces::new(enc);
        let whole = part10(enc.uid(), &p.whole());
        let e = enc.name();
        let start = data_set_offset(enc.uid());
        // --- Truncations in the data set. The general path (implicit VR) names the top-level
        // element the stream ends in (and the nested one) and gives its offset; the fast path
        // (explicit VR) gives the offset of the unfinished top-level element but no tag, or,
        // inside a value it was skipping, neither: only where the stream ended (reported).
        let explicit = enc == Enc::ExplicitLe;
        let name_at = start + p.to_name().len();
        let cut = name_at + 5;
        add(
            format!("{e}: truncated in an element header"),
            whole[..cut].to_vec(),
            match explicit {
                true => error(
                    Kind::Malformed,
                    &[
                        &at(name_at),
                        "stream ends inside (0010,0010) (5 bytes of it",
                    ],
                ),
                false => error(
                    Kind::Malformed,
                    &[&at(name_at), "stream ends inside (0010,0010)"],
                ),
            },
        );
        let cut = name_at + p.name.len() - 4;
        add(
            format!("{e}: truncated in a wanted value"),
            whole[..cut].to_vec(),
            match explicit {
                true => error(
                    Kind::Malformed,
                    &[
                        &at(name_at),
                        &format!(
                            "stream ends inside (0010,0010) ({} bytes of it",
                            cut - name_at
                        ),
                    ],
                ),
                false => error(
                    Kind::Malformed,
                    &[&at(name_at), "stream ends inside (0010,0010)"],
                ),
            },
        );
        let private_at = start + p.head.len() + p.private.len() - 64 - header_len(enc, true);
        let cut = private_at + header_len(enc, true) + 10;
        add(
            format!("{e}: truncated in a skipped value"),
            whole[..cut].to_vec(),
            match explicit {
                true => error(
                    Kind::Malformed,
                    &[
                        &at(private_at),
                        "stream ends 54 bytes before the end of (0009,1001)'s value",
                    ],
                ),
                false => error(
                    Kind::Malformed,
                    &[&at(private_at), "stream ends inside (0009,1001)"],
                ),
            },
        );
        let seq_at = start + p.head.len() + p.private.len();
        let cut = start + p.to_item_end().len();
        add(
            format!("{e}: truncated inside an undefined-length sequence"),
            whole[..cut].to_vec(),
            match explicit {
                true => error(
                    Kind::Malformed,
                    &[&at(seq_at), "stream ends inside (0008,1115)"],
                ),
                false => error(
                    Kind::Malformed,
                    &[&at(seq_at), "stream ends inside (0008,1115)"],
                ),
            },
        );
        let cut = start + p.to_item().len() + p.nested1.len() + 10;
        add(
            format!("{e}: truncated inside an item"),
            whole[..cut].to_vec(),
            match explicit {
                true => error(
                    Kind::Malformed,
                    &[
                        &at(seq_at),
                        "stream ends inside (0008,1115), 6 bytes before the end of its nested (0008,1155)'s value",
                    ],
                ),
                false => error(
                    Kind::Malformed,
                    &[
                        &at(seq_at),
                        "stream ends inside (0008,1115), in its nested element (0008,1155)",
                    ],
                ),
            },
        );

        // --- Lying lengths.
        let huge_unwanted = [
            p.head.clone(),
            el(enc, Tag::new(0x0009, 0x0010), b"LO", b"KUVASTO TEST"),
            header(enc, Tag::new(0x0009, 0x1001), b"OB", 0xFFFF_FFF0),
            vec![0xA5; 64],
        ]
        .concat();
        let huge_at = start + p.head.len();
        let stream = part10(enc.uid(), &huge_unwanted);
        let expect = match explicit {
            true => error(
                Kind::Malformed,
                &[
                    &at(huge_at + 20),
                    "stream ends 4294967216 bytes before the end of (0009,1001)'s value",
                ],
            ),
            false => error(
                Kind::Malformed,
                &[&at(huge_at + 20), "stream ends inside (0009,1001)"],
            ),
        };
        add(
            format!("{e}: length 0xFFFFFFF0 of a skipped value"),
            stream,
            expect,
        );
        let huge_wanted = [
            p.head.clone(),
            header(enc, Tag::new(0x0010, 0x0010), b"UN", 0xFFFF_FFF0),
            b"Virtanen^Aino ".to_vec(),
        ]
        .concat();
        add(
            format!("{e}: length 0xFFFFFFF0 of a wanted value"),
            part10(enc.uid(), &huge_wanted),
            error(
                Kind::Limit,
                &["length of a wanted value", &at(huge_at), "4294967280"],
            ),
        );
        let over_limit = [
            p.head.clone(),
            header(enc, Tag::new(0x0010, 0x0010), b"UN", 2 << 20),
            vec![b'A'; 4096],
        ]
        .concat();
        add(
            format!("{e}: wanted value of 2 MiB (limit 1 MiB)"),
            part10(enc.uid(), &over_limit),
            error(
                Kind::Limit,
                &[
                    "length of a wanted value",
                    &at(huge_at),
                    "2097152",
                    "1048576",
                ],
            ),
        );

        // --- Structure.
        let mut deep = p.head.clone();
        for _ in 0..20 {
            deep.extend(header(enc, Tag::new(0x0008, 0x1115), b"SQ", UNDEFINED));
            deep.extend(item_start(UNDEFINED));
        }
        for _ in 0..20 {
            deep.extend(item_end());
            deep.extend(seq_end());
        }
        deep.extend(&p.tail);
        add(
            format!("{e}: sequences nested 20 deep (limit 16)"),
            part10(enc.uid(), &deep),
            error(Kind::Limit, &["sequence nesting depth", "17", "16"]),
        );
        let delimiter_at = start + p.head.len();
        add(
            format!("{e}: sequence delimiter at the top level"),
            part10(
                enc.uid(),
                &[p.head.clone(), seq_end(), p.tail.clone()].concat(),
            ),
            error(Kind::Malformed, &["(FFFE,E0DD)", &at(delimiter_at)]),
        );
        add(
            format!("{e}: item outside a sequence"),
            part10(
                enc.uid(),
                &[
                    p.head.clone(),
                    item_start(8),
                    p.nested1.clone(),
                    p.tail.clone(),
                ]
                .concat(),
            ),
            error(Kind::Malformed, &["(FFFE,E000)", &at(delimiter_at)]),
        );
    }

    // Undefined length on a VR that is not SQ: explicit VR says which VR; in implicit VR,
    // undefined length means a sequence whatever the tag, so what follows must be items.
    let p = Pieces::new(Enc::ExplicitLe);
    let undefined_ut = [
        p.head.clone(),
        header(Enc::ExplicitLe, Tag::new(0x0008, 0x1030), b"UT", UNDEFINED),
        p.name.clone(),
        p.tail.clone(),
    ]
    .concat();
    add(
        "explicit LE: undefined length on UT".into(),
        part10(ts::EXPLICIT_VR_LE, &undefined_ut),
        error(
            Kind::Malformed,
            &[
                "(0008,1030)",
                "undefined length",
                "UT",
                &at(start + p.head.len()),
            ],
        ),
    );
    let in_item = [
        p.to_item(),
        header(Enc::ExplicitLe, Tag::new(0x0008, 0x1030), b"UT", UNDEFINED),
        p.nested1.clone(),
        item_end(),
        seq_end(),
        p.tail.clone(),
    ]
    .concat();
    add(
        "explicit LE: undefined length on UT inside an item".into(),
        part10(ts::EXPLICIT_VR_LE, &in_item),
        error(
            Kind::Malformed,
            &[
                "(0008,1030)",
                "undefined length",
                "UT",
                &at(start + p.to_item().len()),
            ],
        ),
    );
    let p = Pieces::new(Enc::ImplicitLe);
    let undefined_lo = [
        p.head.clone(),
        header(Enc::ImplicitLe, Tag::new(0x0008, 0x1030), b"LO", UNDEFINED),
        p.name.clone(),
        p.tail.clone(),
    ]
    .concat();
    add(
        "implicit LE: undefined length on a non-sequence attribute".into(),
        part10(ts::IMPLICIT_VR_LE, &undefined_lo),
        error(
            Kind::Malformed,
            &[
                "(0010,0010) inside (0008,1030) where an item belongs",
                &at(data_set_offset(ts::IMPLICIT_VR_LE) + p.head.len() + 8),
            ],
        ),
    );

    // Lying VRs under Explicit VR LE: the fast path declines, the general path reads the
    // data set as implicit VR when the first element has no VR (a known non-conformance),
    // else rejects the element.
    let p = Pieces::new(Enc::ExplicitLe);
    for (what, vr) in [("lowercase", *b"pn"), ("binary", [0x00, 0x9C])] {
        let mut lying = p.whole();
        let name_at = p.to_name().len();
        lying[name_at + 4..name_at + 6].copy_from_slice(&vr);
        add(
            format!("explicit LE: {what} VR bytes on Patient Name"),
            part10(ts::EXPLICIT_VR_LE, &lying),
            error(
                Kind::Malformed,
                &[
                    "(0010,0010)",
                    "no valid explicit VR",
                    &format!("{:02X} {:02X}", vr[0], vr[1]),
                    &at(start + name_at),
                ],
            ),
        );
    }
    // Garbage VR bytes on the first element: the data set is taken for implicit VR, where VR
    // and length bytes declare a length (0x001A9C00) over the limit for a wanted value. (The
    // message says neither which tag nor that the data set was read as implicit VR: reported.)
    let mut lying = p.whole();
    lying[4..6].copy_from_slice(&[0x00, 0x9C]);
    add(
        "explicit LE: binary VR bytes on the first element".into(),
        part10(ts::EXPLICIT_VR_LE, &lying),
        error(
            Kind::Limit,
            &[
                &at(start),
                "length of a wanted value is 1743872, the limit is 1048576",
            ],
        ),
    );
    // The whole data set in implicit VR under an explicit transfer syntax: read as implicit.
    add(
        "explicit LE declared, implicit VR encoded".into(),
        part10(ts::EXPLICIT_VR_LE, &Pieces::new(Enc::ImplicitLe).whole()),
        Expect::Read(|found| {
            let mismatch = ExtractPath::General {
                inflated: false,
                encoding_mismatch: true,
            };
            if found.path != mismatch {
                return Err(format!("path {:?}", found.path));
            }
            match found.text(Tag::new(0x0010, 0x0010)).as_deref() {
                Some("Virtanen^Aino") => Ok(()),
                other => Err(format!("Patient Name {other:?}")),
            }
        }),
    );

    // Transfer syntaxes: an unknown UID is taken for an encapsulated syntax (data set in
    // explicit VR LE) by the fast path; when the data set is not that, the general path
    // rejects the UID.
    add(
        "unknown transfer syntax, explicit VR LE data set".into(),
        part10("1.2.3.4.5.6.7", &Pieces::new(Enc::ExplicitLe).whole()),
        Expect::Read(|found| match found.path {
            ExtractPath::Fast if found.pixel_data().is_some() => Ok(()),
            other => Err(format!("path {other:?}")),
        }),
    );
    add(
        "unknown transfer syntax, implicit VR data set".into(),
        part10("1.2.3.4.5.6.7", &Pieces::new(Enc::ImplicitLe).whole()),
        error(
            Kind::Malformed,
            &["1.2.3.4.5.6.7", "not one the general path knows"],
        ),
    );
    cases
}

#[test]
fn bad_inputs_get_specific_errors() {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        for chunk in [1, 64 * 1024] {
            let result = run(&case.bytes, chunk);
            if std::env::var_os("KUVASTO_PRINT_BAD_INPUT").is_some() {
                eprintln!(
                    "{} [{chunk}]: {:?}",
                    case.name,
                    result.as_ref().map(|f| f.path).map_err(|e| e.to_string())
                );
            }
            let problem = match (&case.expect, &result) {
                (Expect::Error(kind, contains), Err(error)) => {
                    let message = error.to_string();
                    let missing: Vec<&String> = contains
                        .iter()
                        .filter(|s| !message.contains(s.as_str()))
                        .collect();
                    (kind_of(error) != *kind || !missing.is_empty()).then(|| {
                        format!(
                            "expected {kind:?} containing {contains:?}, got {:?}: {message}",
                            kind_of(error)
                        )
                    })
                }
                (Expect::Error(kind, _), Ok(found)) => Some(format!(
                    "expected {kind:?}, read it ({:?}, {} attributes)",
                    found.path,
                    found.data_set.elements.len()
                )),
                (Expect::Read(check), Ok(found)) => check(found).err(),
                (Expect::Read(_), Err(error)) => Some(format!("expected a reading, got {error}")),
            };
            if let Some(problem) = problem {
                failures.push(format!("{} (chunks of {chunk}): {problem}", case.name));
            }
        }
    }
    eprintln!(
        "bad inputs: {} cases, each in 1-byte and 64 KiB chunks",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
