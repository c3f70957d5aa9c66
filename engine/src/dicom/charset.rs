//! Specific Character Set (0008,0005): decoding DICOM text values to UTF-8.
//!
//! Values of the VRs SH, LO, ST, LT, UC, UT and PN are encoded in the character sets that
//! Specific Character Set names (PS3.3 C.12.1.1.2, PS3.5 6.1). [`CharacterSets::parse`] reads
//! that attribute once per data set; [`CharacterSets::decode`] turns one element value into a
//! `String`. Three kinds of encoding occur (PS3.5 6.1.2.5.4):
//!
//! - no value, or one single-byte term (`ISO_IR 100`, `ISO_IR 13`, ...): an 8-bit code with
//!   ASCII (JIS X 0201 Romaji for `ISO_IR 13`) as G0 in the left half and the upper part of an
//!   ISO 8859 set (JIS X 0201 Katakana) as G1 in the right half;
//! - several values (`ISO 2022 ...` terms): ISO/IEC 2022 code extensions (PS3.5 6.1.2.4), where
//!   escape sequences inside a value designate other sets: JIS X 0208 and JIS X 0212 to G0
//!   (Japanese, Annex H), KS X 1001 and GB 2312 to G1 (Korean and Chinese, Annexes I and K), or
//!   another ISO 8859 part to G1. The designations revert to the initial ones at every control
//!   character other than ESC and at every value delimiter (`\`, and `^` and `=` in PN), because
//!   PS3.5 6.1.2.5.3 makes encoders switch back before those, so a value never depends on an
//!   escape sequence in an earlier value or line;
//! - `ISO_IR 192` (UTF-8), `GB18030` or `GBK`: variable-length codes without code extensions,
//!   decoded in one pass (their delimiters are plain ASCII, and multi-byte characters cannot be
//!   split by them even when a trail byte equals `\` or `^`).
//!
//! The tables come from `encoding_rs`. It has no decoder for raw 94×94 (row, cell) codes, so the
//! two-byte sets are rewritten to their EUC forms (both bytes | 0x80, and a 0x8F prefix for
//! JIS X 0212), which its EUC-JP, EUC-KR and GBK decoders read.
//!
//! Decoding never fails and never panics; bytes that cannot be decoded become U+FFFD. An archive
//! has to index what modalities send, so some departures from the standard are tolerated:
//!
//! - bytes 0xA0–0xFF while no G1 set is designated (the default repertoire, or an empty value 1)
//!   are read with the first G1 set a later value names (Korean and Chinese text often omits the
//!   escape sequence), or as ISO 8859-1 when there is none;
//! - bytes 0x80–0x9F are the C1 control characters U+0080–U+009F, as ISO 8859 defines them (for
//!   every set: ISO 2022 reserves that range for controls);
//! - escape sequences are honoured for any set this module knows, even one (0008,0005) does not
//!   name, and even when (0008,0005) has a single value;
//! - in a multi-valued (0008,0005), a single-byte term without the `ISO 2022` prefix counts as
//!   its `ISO 2022` form, a multi-byte term in value 1 counts as if value 1 were empty, and values
//!   after a value 1 of `ISO_IR 192`, `GB18030` or `GBK` are ignored; terms are matched ignoring
//!   ASCII case, and leading or trailing spaces and NULs.
//!
//! Not supported: JIS C 6226-1978 (`ESC $ @`) and other sets DICOM does not define, G2/G3 and
//! single shifts (PS3.5 6.1.2.5.1 excludes them), the Korean UHC (CP949) extension characters,
//! and encoding to DICOM.

use encoding_rs::Encoding;

/// Why a (0008,0005) value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CharsetError {
    #[error("unknown Specific Character Set term {0:?}")]
    Unknown(String),
    /// `ISO_IR 192`, `GB18030` and `GBK` cannot take part in code extensions, so they may only
    /// be value 1 (PS3.5 6.1.2.5.4 d).
    #[error("Specific Character Set term {0:?} cannot follow another value (no code extensions)")]
    NotExtensible(String),
}

/// A defined term of Specific Character Set. The forms with and without the `ISO 2022` prefix
/// map to the same term: they name the same set, and only the number of values decides whether
/// code extensions are in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Term {
    /// ISO-IR 6, US-ASCII: no value, `ISO_IR 6`, `ISO 2022 IR 6`.
    Default,
    /// ISO 8859-1, `ISO_IR 100`.
    Latin1,
    /// ISO 8859-2, `ISO_IR 101`.
    Latin2,
    /// ISO 8859-3, `ISO_IR 109`.
    Latin3,
    /// ISO 8859-4, `ISO_IR 110`.
    Latin4,
    /// ISO 8859-5, `ISO_IR 144`.
    Cyrillic,
    /// ISO 8859-6, `ISO_IR 127`.
    Arabic,
    /// ISO 8859-7, `ISO_IR 126`.
    Greek,
    /// ISO 8859-8, `ISO_IR 138`.
    Hebrew,
    /// ISO 8859-9, `ISO_IR 148`.
    Latin5,
    /// ISO 8859-15, `ISO_IR 203`.
    Latin9,
    /// TIS 620-2533, `ISO_IR 166`.
    Thai,
    /// JIS X 0201 Romaji and Katakana, `ISO_IR 13`.
    JisX0201,
    /// JIS X 0208 kanji, `ISO 2022 IR 87`.
    JisX0208,
    /// JIS X 0212 supplementary kanji, `ISO 2022 IR 159`.
    JisX0212,
    /// KS X 1001 Hangul and Hanja, `ISO 2022 IR 149`.
    KsX1001,
    /// GB 2312 simplified Chinese, `ISO 2022 IR 58`.
    Gb2312,
    /// UTF-8, `ISO_IR 192`.
    Utf8,
    /// GB 18030, `GB18030`.
    Gb18030,
    /// GBK, `GBK`.
    Gbk,
}

/// Defined terms (PS3.3 Tables C.12-2 to C.12-5), plus `ISO_IR 6`, which is not a defined term
/// but is common in practice.
const DEFINED_TERMS: &[(&str, Term)] = &[
    ("ISO_IR 6", Term::Default),
    ("ISO 2022 IR 6", Term::Default),
    ("ISO_IR 100", Term::Latin1),
    ("ISO 2022 IR 100", Term::Latin1),
    ("ISO_IR 101", Term::Latin2),
    ("ISO 2022 IR 101", Term::Latin2),
    ("ISO_IR 109", Term::Latin3),
    ("ISO 2022 IR 109", Term::Latin3),
    ("ISO_IR 110", Term::Latin4),
    ("ISO 2022 IR 110", Term::Latin4),
    ("ISO_IR 144", Term::Cyrillic),
    ("ISO 2022 IR 144", Term::Cyrillic),
    ("ISO_IR 127", Term::Arabic),
    ("ISO 2022 IR 127", Term::Arabic),
    ("ISO_IR 126", Term::Greek),
    ("ISO 2022 IR 126", Term::Greek),
    ("ISO_IR 138", Term::Hebrew),
    ("ISO 2022 IR 138", Term::Hebrew),
    ("ISO_IR 148", Term::Latin5),
    ("ISO 2022 IR 148", Term::Latin5),
    ("ISO_IR 203", Term::Latin9),
    ("ISO 2022 IR 203", Term::Latin9),
    ("ISO_IR 166", Term::Thai),
    ("ISO 2022 IR 166", Term::Thai),
    ("ISO_IR 13", Term::JisX0201),
    ("ISO 2022 IR 13", Term::JisX0201),
    ("ISO 2022 IR 87", Term::JisX0208),
    ("ISO 2022 IR 159", Term::JisX0212),
    ("ISO 2022 IR 149", Term::KsX1001),
    ("ISO 2022 IR 58", Term::Gb2312),
    ("ISO_IR 192", Term::Utf8),
    ("GB18030", Term::Gb18030),
    ("GBK", Term::Gbk),
];

impl Term {
    fn from_defined_term(value: &[u8]) -> Option<Term> {
        DEFINED_TERMS
            .iter()
            .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(value))
            .map(|&(_, term)| term)
    }

    /// The stateless variable-length codes, which take no part in ISO 2022.
    fn stateless_encoding(self) -> Option<&'static Encoding> {
        match self {
            Term::Utf8 => Some(encoding_rs::UTF_8),
            Term::Gb18030 => Some(encoding_rs::GB18030),
            Term::Gbk => Some(encoding_rs::GBK),
            _ => None,
        }
    }

    /// The encoding whose bytes 0xA0–0xFF are this single-byte set's upper half. ISO 8859-1, -9
    /// and TIS 620 are read through windows-1252, -1254 and -874 (WHATWG has no separate
    /// decoders for them); those agree with them on 0xA0–0xFF, the only bytes fed to them.
    fn upper_half(self) -> Option<&'static Encoding> {
        Some(match self {
            Term::Latin1 => encoding_rs::WINDOWS_1252,
            Term::Latin2 => encoding_rs::ISO_8859_2,
            Term::Latin3 => encoding_rs::ISO_8859_3,
            Term::Latin4 => encoding_rs::ISO_8859_4,
            Term::Cyrillic => encoding_rs::ISO_8859_5,
            Term::Arabic => encoding_rs::ISO_8859_6,
            Term::Greek => encoding_rs::ISO_8859_7,
            Term::Hebrew => encoding_rs::ISO_8859_8,
            Term::Latin5 => encoding_rs::WINDOWS_1254,
            Term::Latin9 => encoding_rs::ISO_8859_15,
            Term::Thai => encoding_rs::WINDOWS_874,
            _ => return None,
        })
    }

    /// The set this term contributes to G1, for the fallback when G1 is undefined.
    fn g1_set(self) -> Option<Graphic> {
        match self {
            Term::JisX0201 => Some(Graphic::Katakana),
            Term::KsX1001 => Some(Graphic::KsX1001),
            Term::Gb2312 => Some(Graphic::Gb2312),
            _ => self.upper_half().map(Graphic::Upper),
        }
    }

    /// The initial (G0, G1) designations when this term is value 1 (PS3.5 6.1.2.5.4). The
    /// multi-byte sets may not be value 1; one found there starts from ASCII like an empty value.
    fn initial(self) -> (Graphic, Option<Graphic>) {
        match self {
            Term::JisX0201 => (Graphic::Romaji, Some(Graphic::Katakana)),
            _ => (Graphic::Ascii, self.upper_half().map(Graphic::Upper)),
        }
    }
}

/// A graphic character set that can be designated to G0 or G1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Graphic {
    /// ISO-IR 6 (94 characters).
    Ascii,
    /// ISO-IR 14, JIS X 0201 Romaji: ASCII with YEN SIGN at 05/12 and OVERLINE at 07/14.
    Romaji,
    /// ISO-IR 13, JIS X 0201 Katakana (63 characters at 02/01–05/15).
    Katakana,
    /// The upper half of a single-byte code (96 characters), given as the encoding to read
    /// bytes 0xA0–0xFF with.
    Upper(&'static Encoding),
    /// ISO-IR 87, JIS X 0208 (94×94).
    JisX0208,
    /// ISO-IR 159, JIS X 0212 (94×94).
    JisX0212,
    /// ISO-IR 149, KS X 1001 (94×94).
    KsX1001,
    /// ISO-IR 58, GB 2312 (94×94).
    Gb2312,
}

impl Graphic {
    /// Sets whose 02/01–07/14 include the ASCII delimiters, so that a delimiter byte can be
    /// recognised while they are in G0. In any other G0 set the byte is part of a character
    /// (JIS X 0208 has 02/04 05/14 for ま).
    fn is_iso646(self) -> bool {
        matches!(self, Graphic::Ascii | Graphic::Romaji)
    }

    /// The set an escape sequence designates: `ESC ( F`, `ESC ) F`, `ESC - F`, `ESC $ F`,
    /// `ESC $ ( F`, `ESC $ ) F`. Returns the set and whether it goes to G1.
    fn from_escape(intermediates: &[u8], final_byte: u8) -> Option<(Graphic, bool)> {
        let set94 = || match final_byte {
            b'B' => Some(Graphic::Ascii),
            b'J' => Some(Graphic::Romaji),
            b'I' => Some(Graphic::Katakana),
            _ => None,
        };
        let set96 = || {
            let term = match final_byte {
                b'A' => Term::Latin1,
                b'B' => Term::Latin2,
                b'C' => Term::Latin3,
                b'D' => Term::Latin4,
                b'L' => Term::Cyrillic,
                b'G' => Term::Arabic,
                b'F' => Term::Greek,
                b'H' => Term::Hebrew,
                b'M' => Term::Latin5,
                b'b' => Term::Latin9,
                b'T' => Term::Thai,
                _ => return None,
            };
            term.upper_half().map(Graphic::Upper)
        };
        let set94x94 = || match final_byte {
            b'B' => Some(Graphic::JisX0208),
            b'D' => Some(Graphic::JisX0212),
            b'C' => Some(Graphic::KsX1001),
            b'A' => Some(Graphic::Gb2312),
            _ => None,
        };
        match intermediates {
            b"(" => set94().map(|set| (set, false)),
            b")" => set94().map(|set| (set, true)),
            b"-" => set96().map(|set| (set, true)),
            // The short form `ESC $ F` exists only for finals 04/00–04/02 (ISO 2022 13.2.2).
            b"$" if matches!(final_byte, b'A' | b'B') => set94x94().map(|set| (set, false)),
            b"$(" => set94x94().map(|set| (set, false)),
            b"$)" => set94x94().map(|set| (set, true)),
            _ => None,
        }
    }
}

/// The G0 and G1 designations in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Designations {
    g0: Graphic,
    g1: Option<Graphic>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    /// ISO 2022 structure: escape sequences, GL/GR, resets at delimiters.
    Iso2022 {
        initial: Designations,
        /// Read bytes 0xA0–0xFF with this while G1 is undefined.
        fallback_g1: Graphic,
    },
    /// UTF-8, GB 18030 or GBK, decoded whole.
    Stateless(&'static Encoding),
}

/// A parsed (0008,0005) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharacterSets {
    terms: Vec<Term>,
    code: Code,
}

impl Default for CharacterSets {
    /// The default repertoire (ISO-IR 6), for data sets without (0008,0005).
    fn default() -> Self {
        CharacterSets::from_terms(vec![Term::Default])
    }
}

impl CharacterSets {
    /// Parses the raw (0008,0005) value bytes: backslash-separated defined terms, padded with
    /// spaces; an empty value 1 means the default repertoire.
    pub fn parse(raw: &[u8]) -> Result<CharacterSets, CharsetError> {
        let mut terms = Vec::new();
        for (index, value) in raw.split(|&b| b == b'\\').enumerate() {
            let value = trim(value);
            if value.is_empty() {
                // Only value 1 has a meaning when empty; a stray empty value later (a trailing
                // backslash) names nothing.
                if index == 0 {
                    terms.push(Term::Default);
                }
                continue;
            }
            let term = Term::from_defined_term(value).ok_or_else(|| {
                CharsetError::Unknown(String::from_utf8_lossy(value).into_owned())
            })?;
            if index > 0 && term.stateless_encoding().is_some() {
                // UTF-8, GB 18030 and GBK have no code extensions, so nothing can switch to
                // them from value 1.
                return Err(CharsetError::NotExtensible(
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
            terms.push(term);
        }
        if terms.is_empty() {
            terms.push(Term::Default);
        }
        if terms
            .first()
            .is_some_and(|t| t.stateless_encoding().is_some())
        {
            // Value 1 decides how every byte is read; what follows cannot be honoured.
            terms.truncate(1);
        }
        Ok(CharacterSets::from_terms(terms))
    }

    /// `terms` must be non-empty, with a stateless term only alone.
    fn from_terms(terms: Vec<Term>) -> CharacterSets {
        let first = terms.first().copied().unwrap_or(Term::Default);
        let code = match first.stateless_encoding() {
            Some(encoding) => Code::Stateless(encoding),
            None => {
                let (g0, g1) = first.initial();
                let fallback_g1 = terms
                    .iter()
                    .find_map(|term| term.g1_set())
                    .unwrap_or(Graphic::Upper(encoding_rs::WINDOWS_1252));
                Code::Iso2022 {
                    initial: Designations { g0, g1 },
                    fallback_g1,
                }
            }
        };
        CharacterSets { terms, code }
    }

    /// The terms, in order (value 1 first; an empty value 1 is [`Term::Default`]).
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// Whether (0008,0005) had several values, so that values may contain escape sequences.
    pub fn uses_code_extensions(&self) -> bool {
        self.terms.len() > 1
    }

    /// Decodes one text value of VR `vr` (which may hold several values separated by `\` and,
    /// for PN, components and groups separated by `^` and `=`). The designations return to the
    /// initial ones at each control character other than ESC (CR, LF, FF, TAB, ...), at `\` in
    /// the multi-valued VRs (SH, LO, UC, PN) and at `^` and `=` in PN, as PS3.5 6.1.2.5.3
    /// requires. In ST, LT and UT `\` is text, not a delimiter.
    ///
    /// VRs that Specific Character Set does not affect (see [`vr_uses_charset`]) are read in the
    /// default repertoire, bytes ≥ 0x80 as ISO 8859-1. Padding is kept. Never panics; bytes that
    /// cannot be decoded become U+FFFD.
    pub fn decode(&self, vr: [u8; 2], raw: &[u8]) -> String {
        if !vr_uses_charset(vr) {
            return raw.iter().map(|&b| char::from(b)).collect();
        }
        match self.code {
            Code::Stateless(encoding) => encoding.decode_without_bom_handling(raw).0.into_owned(),
            Code::Iso2022 {
                initial,
                fallback_g1,
            } => {
                // Most values are plain ASCII: with ASCII in G0 and no ESC, every byte below 0x80
                // stands for itself whatever the delimiters, so skip the state machine.
                if initial.g0 == Graphic::Ascii && raw.iter().all(|&b| b < 0x80 && b != ESC) {
                    return raw.iter().map(|&b| char::from(b)).collect();
                }
                let delimiters: &[u8] = match &vr {
                    b"PN" => b"\\^=",
                    b"SH" | b"LO" | b"UC" => b"\\",
                    _ => b"",
                };
                Iso2022Decoder {
                    initial,
                    state: initial,
                    fallback_g1,
                    delimiters,
                    out: String::with_capacity(raw.len()),
                    pending: Vec::new(),
                    pending_encoding: None,
                }
                .run(raw)
            }
        }
    }
}

/// Whether values of this VR are affected by Specific Character Set (SH, LO, ST, LT, UC, UT,
/// PN; not AE, AS, CS, DA, DS, DT, IS, TM, UI, UR, ...), per PS3.5 6.1.2.3.
pub fn vr_uses_charset(vr: [u8; 2]) -> bool {
    matches!(&vr, b"SH" | b"LO" | b"ST" | b"LT" | b"UC" | b"UT" | b"PN")
}

const ESC: u8 = 0x1B;

/// Strips the padding and stray whitespace around one (0008,0005) value.
fn trim(value: &[u8]) -> &[u8] {
    let is_pad = |b: &u8| matches!(*b, b' ' | 0);
    let start = value.iter().position(|b| !is_pad(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_pad(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Decodes one ISO 2022 value. Characters of the table-driven sets are collected (in their
/// EUC or 8-bit form) in `pending` and decoded in runs, so that `encoding_rs` is called once per
/// run rather than once per character.
struct Iso2022Decoder {
    initial: Designations,
    state: Designations,
    fallback_g1: Graphic,
    delimiters: &'static [u8],
    out: String,
    pending: Vec<u8>,
    pending_encoding: Option<&'static Encoding>,
}

impl Iso2022Decoder {
    fn run(mut self, raw: &[u8]) -> String {
        let mut i = 0;
        while let Some(&b) = raw.get(i) {
            i += match b {
                ESC => self.escape(&raw[i..]),
                // Control characters: PS3.5 6.1.2.5.3 has the encoder back in the initial
                // designations before each of them.
                0x00..=0x1F | 0x80..=0x9F => {
                    self.state = self.initial;
                    self.push(char::from(b));
                    1
                }
                // SPACE and DELETE are outside every 94- and 94×94-set, whatever G0 holds.
                b' ' | 0x7F => {
                    self.push(char::from(b));
                    1
                }
                0x21..=0x7E => {
                    if self.state.g0.is_iso646() && self.delimiters.contains(&b) {
                        self.state = self.initial;
                        self.push(char::from(b));
                        1
                    } else {
                        self.graphic(self.state.g0, &raw[i..])
                    }
                }
                0xA0..=0xFF => {
                    let set = self.state.g1.unwrap_or(self.fallback_g1);
                    self.graphic(set, &raw[i..])
                }
            };
        }
        self.flush();
        self.out
    }

    /// Reads an escape sequence at the start of `rest` (ESC, intermediates 02/00–02/15, a final
    /// 03/00–07/14), applies it if it designates a known set and returns its length. Anything
    /// else becomes one U+FFFD.
    fn escape(&mut self, rest: &[u8]) -> usize {
        let intermediates = rest
            .iter()
            .skip(1)
            .take_while(|&&b| (0x20..=0x2F).contains(&b))
            .count();
        let final_at = 1 + intermediates;
        match rest.get(final_at) {
            Some(&final_byte) if (0x30..=0x7E).contains(&final_byte) => {
                match Graphic::from_escape(&rest[1..final_at], final_byte) {
                    Some((set, true)) => self.state.g1 = Some(set),
                    Some((set, false)) => self.state.g0 = set,
                    None => self.push(char::REPLACEMENT_CHARACTER),
                }
                final_at + 1
            }
            // Truncated or malformed: drop what was read and resume at the offending byte,
            // which may itself be a control character or another ESC.
            _ => {
                self.push(char::REPLACEMENT_CHARACTER);
                final_at
            }
        }
    }

    /// Decodes one character of `set` at the start of `rest` (a GL byte for G0, a GR byte for
    /// G1) and returns how many bytes it took.
    fn graphic(&mut self, set: Graphic, rest: &[u8]) -> usize {
        let Some(&first) = rest.first() else {
            return 1;
        };
        // The position in the 94/96 code table, the same for GL and GR.
        let code = first & 0x7F;
        let in94 = |c: u8| (0x21..=0x7E).contains(&c);
        match set {
            Graphic::Ascii | Graphic::Romaji if in94(code) => {
                let c = match (set, code) {
                    (Graphic::Romaji, 0x5C) => '\u{A5}',
                    (Graphic::Romaji, 0x7E) => '\u{203E}',
                    _ => char::from(code),
                };
                self.push(c);
            }
            Graphic::Katakana if (0x21..=0x5F).contains(&code) => {
                // JIS X 0201 02/01–05/15 are U+FF61–U+FF9F, in order.
                let c = char::from_u32(0xFF61 + u32::from(code - 0x21))
                    .unwrap_or(char::REPLACEMENT_CHARACTER);
                self.push(c);
            }
            // A 96-set has the whole of 02/00–07/15; the encoding holds its upper half.
            Graphic::Upper(encoding) => self.push_encoded(encoding, &[code | 0x80]),
            Graphic::JisX0208 | Graphic::JisX0212 | Graphic::KsX1001 | Graphic::Gb2312
                if in94(code) =>
            {
                // Both bytes must come from the same half (GL or GR) and be within 02/01–07/14;
                // otherwise the first is undecodable and the second is read on its own.
                let second = rest
                    .get(1)
                    .filter(|&&b| b & 0x80 == first & 0x80 && in94(b & 0x7F))
                    .map(|&b| b | 0x80);
                let Some(second) = second else {
                    self.push(char::REPLACEMENT_CHARACTER);
                    return 1;
                };
                let row = code | 0x80;
                match set {
                    Graphic::JisX0208 => self.push_encoded(encoding_rs::EUC_JP, &[row, second]),
                    Graphic::JisX0212 => {
                        self.push_encoded(encoding_rs::EUC_JP, &[0x8F, row, second])
                    }
                    Graphic::KsX1001 => self.push_encoded(encoding_rs::EUC_KR, &[row, second]),
                    _ => self.push_encoded(encoding_rs::GBK, &[row, second]),
                }
                return 2;
            }
            _ => self.push(char::REPLACEMENT_CHARACTER),
        }
        1
    }

    fn push(&mut self, c: char) {
        self.flush();
        self.out.push(c);
    }

    /// Queues one whole character in `encoding`'s byte form.
    fn push_encoded(&mut self, encoding: &'static Encoding, bytes: &[u8]) {
        if self.pending_encoding != Some(encoding) {
            self.flush();
            self.pending_encoding = Some(encoding);
        }
        self.pending.extend_from_slice(bytes);
    }

    fn flush(&mut self) {
        if let Some(encoding) = self.pending_encoding.take() {
            // Each queued sequence is a complete, well-formed character of `encoding`, so runs
            // decode exactly as the characters would one by one; unassigned codes give U+FFFD.
            let (text, _) = encoding.decode_without_bom_handling(&self.pending);
            self.out.push_str(&text);
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cs(raw: &str) -> CharacterSets {
        match CharacterSets::parse(raw.as_bytes()) {
            Ok(sets) => sets,
            Err(e) => panic!("{raw:?}: {e}"),
        }
    }

    fn pn(sets: &str, raw: &[u8]) -> String {
        cs(sets).decode(*b"PN", raw)
    }

    // PS3.5 Example H.3-1: value 1 empty (ISO-IR 6), value 2 ISO 2022 IR 87; JIS X 0208 in G0 by
    // ESC 02/04 04/02, back to ASCII by ESC 02/08 04/02 before each delimiter.
    const H3_1: &[u8] =
        b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";

    // PS3.5 Example H.3-2: ISO 2022 IR 13 (Romaji G0, Katakana G1) and ISO 2022 IR 87; back to
    // Romaji by ESC 02/08 04/10.
    const H3_2: &[u8] = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";

    // PS3.5 Example I.2-1: KS X 1001 in G1 by ESC 02/04 02/09 04/03, in each component.
    const I2_1: &[u8] = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";

    // PS3.5 Example I.3-1 (LT): the escape sequence at the head of each line.
    const I3_1: &[u8] = b"\x1b$)CThe first line includes \xc7\xd1\xb1\xdb.\r\n\x1b$)CThe second line includes \xc7\xd1\xb1\xdb, too.\r\nThe third line.";

    // PS3.5 Example J.1-1: UTF-8, traditional script.
    const J1_1: &[u8] = b"Wang^XiaoDong=\xe7\x8e\x8b^\xe5\xb0\x8f\xe6\x9d\xb1=";

    // PS3.5 Example J.3-1: GB18030, simplified script.
    const J3_1: &[u8] = b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab=";

    // PS3.5 Example J.4-1 (LT): GB18030 lines ending in CR LF.
    const J4_1: &[u8] = b"1.\xb5\xda\xd2\xbb\xd0\xd0\xce\xc4\xd7\xd6\xa1\xa3\r\n2.\xb5\xda\xb6\xfe\xd0\xd0\xce\xc4\xd7\xd6\xa1\xa3\r\n3.\xb5\xda\xc8\xfd\xd0\xd0\xce\xc4\xd7\xd6\xa1\xa3\r\n";

    // PS3.5 Example K.2-1: GB 2312 in G1 by ESC 02/04 02/09 04/01.
    const K2_1: &[u8] = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab=";

    // PS3.5 Example K.3-1 (LT): the escape sequence at the head of each line.
    const K3_1: &[u8] = b"1.\x1b$)A\xb5\xda\xd2\xbb\xd0\xd0\xce\xc4\xd7\xd6\xa1\xa3\r\n2.\x1b$)A\xb5\xda\xb6\xfe\xd0\xd0\xce\xc4\xd7\xd6\xa1\xa3\r\n3.\x1b$)A\xb5\xda\xc8\xfd\xd0\xd0\xce\xc4\xd7\xd6\xa1\xa3\r\n";

    #[test]
    fn annex_h_japanese_iso_ir_87() {
        assert_eq!(
            pn("\\ISO 2022 IR 87", H3_1),
            "Yamada^Tarou=山田^太郎=やまだ^たろう"
        );
    }

    #[test]
    fn annex_h_japanese_iso_ir_13_and_87() {
        assert_eq!(
            pn("ISO 2022 IR 13\\ISO 2022 IR 87", H3_2),
            "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"
        );
    }

    #[test]
    fn jis_x_0208_pairs_may_contain_delimiter_bytes() {
        // ま is 02/04 05/14 ('$^'): inside JIS X 0208 the '^' is half a character, not a
        // component delimiter.
        assert_eq!(pn("\\ISO 2022 IR 87", b"\x1b$B$^\x1b(B^A"), "ま^A");
    }

    #[test]
    fn jis_x_0212_via_g0() {
        // 丂 is row 16, cell 1 of JIS X 0212 (03/00 02/01).
        assert_eq!(
            pn(
                "\\ISO 2022 IR 87\\ISO 2022 IR 159",
                b"A\x1b$(D0!\x1b(B^\x1b$B;3\x1b(B"
            ),
            "A丂^山"
        );
    }

    #[test]
    fn jis_x_0201_romaji_and_katakana() {
        let sets = cs("ISO_IR 13");
        // In ST/LT/UT 05/12 is a character: the YEN SIGN of ISO-IR 14.
        assert_eq!(sets.decode(*b"LT", b"\\100 ~"), "¥100 ‾");
        // In LO it separates values (PS3.5 H.1.1 note 3).
        assert_eq!(sets.decode(*b"LO", b"A\\B"), "A\\B");
        assert_eq!(sets.decode(*b"SH", b"\xb1\xb2\xb3"), "ｱｲｳ");
        // 0xE0 is outside the 63 Katakana.
        assert_eq!(sets.decode(*b"SH", b"\xe0"), "\u{FFFD}");
    }

    #[test]
    fn annex_i_korean_person_name() {
        assert_eq!(
            pn("\\ISO 2022 IR 149", I2_1),
            "Hong^Gildong=洪^吉洞=홍^길동"
        );
    }

    #[test]
    fn annex_i_korean_long_text() {
        assert_eq!(
            cs("\\ISO 2022 IR 149").decode(*b"LT", I3_1),
            "The first line includes 한글.\r\nThe second line includes 한글, too.\r\nThe third line."
        );
    }

    #[test]
    fn korean_without_escape_sequence_falls_back_to_declared_g1() {
        // G1 is undefined after the reset at '^'; the only G1 set declared is KS X 1001.
        assert_eq!(
            pn("\\ISO 2022 IR 149", b"\xc8\xab^\xb1\xe6\xb5\xbf"),
            "홍^길동"
        );
    }

    #[test]
    fn annex_j_unicode_person_name() {
        assert_eq!(pn("ISO_IR 192", J1_1), "Wang^XiaoDong=王^小東=");
    }

    #[test]
    fn annex_j_gb18030_person_name_and_text() {
        assert_eq!(pn("GB18030", J3_1), "Wang^XiaoDong=王^小东=");
        assert_eq!(pn("GBK", J3_1), "Wang^XiaoDong=王^小东=");
        assert_eq!(
            cs("GB18030").decode(*b"LT", J4_1),
            "1.第一行文字。\r\n2.第二行文字。\r\n3.第三行文字。\r\n"
        );
    }

    #[test]
    fn gb18030_trail_bytes_equal_to_delimiters_stay_in_the_character() {
        // 東 is 0x96 0x7C in GB18030, and 乗 is 0x81 0x5C: trail bytes in the ASCII range.
        assert_eq!(pn("GB18030", b"\xd0\xa1\x96\x7c"), "小東");
        assert_eq!(cs("GB18030").decode(*b"LO", b"\x81\x5c\\A"), "乗\\A");
        // Four-byte sequences: U+00C0 À and U+1F600 😀.
        assert_eq!(pn("GB18030", b"\x81\x30\x86\x38^\x94\x39\xfc\x36"), "À^😀");
    }

    #[test]
    fn annex_k_gb2312_person_name_and_text() {
        assert_eq!(pn("\\ISO 2022 IR 58", K2_1), "Zhang^XiaoDong=张^小东=");
        let text = "1.第一行文字。\r\n2.第二行文字。\r\n3.第三行文字。\r\n";
        assert_eq!(cs("\\ISO 2022 IR 58").decode(*b"LT", K3_1), text);
        // The older form of the example, which also returns G0 to ASCII before each CR LF.
        let with_g0_escapes: Vec<u8> = K3_1
            .split_inclusive(|&b| b == b'\n')
            .flat_map(|line| {
                let body = &line[..line.len() - 2];
                [body, b"\x1b(B\r\n"].concat()
            })
            .collect();
        assert_eq!(
            cs("\\ISO 2022 IR 58").decode(*b"LT", &with_g0_escapes),
            text
        );
    }

    #[test]
    fn latin1() {
        assert_eq!(pn("ISO_IR 100", b"Buc^J\xe9r\xf4me"), "Buc^Jérôme");
        // Latin-1, not windows-1252: 0x80-0x9F are C1 controls.
        assert_eq!(pn("ISO_IR 100", b"\x80\x9f"), "\u{80}\u{9f}");
    }

    #[test]
    fn greek() {
        assert_eq!(
            pn("ISO_IR 126", b"\xc4\xe9\xef\xed\xf5\xf3\xe9\xef\xf2"),
            "Διονυσιος"
        );
    }

    #[test]
    fn cyrillic() {
        assert_eq!(
            pn("ISO_IR 144", b"\xbb\xee\xda\xe1\xd5\xdc\xd1\xe3\xe0\xd3"),
            "Люксембург"
        );
    }

    #[test]
    fn every_single_byte_set() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("ISO_IR 101", b"\xa3\xf3d\xbc", "Łódź"),
            ("ISO_IR 109", b"\xa6\xb6", "Ĥĥ"),
            ("ISO_IR 110", b"\xa2\xf2", "ĸō"),
            ("ISO_IR 127", b"\xd9\xd1\xc8\xea", "عربي"),
            ("ISO_IR 138", b"\xf9\xec\xe5\xed", "שלום"),
            ("ISO_IR 148", b"\xdd\xf0\xfe", "İğş"),
            ("ISO_IR 203", b"\xa4\xbd", "€œ"),
            ("ISO_IR 166", b"\xc0\xd2\xc9\xd2\xe4\xb7\xc2", "ภาษาไทย"),
        ];
        for &(term, raw, expected) in cases {
            assert_eq!(cs(term).decode(*b"LO", raw), expected, "{term}");
            // The ISO 2022 form, with the set designated by value 1 or by escape sequence.
            let extended = term.replace("ISO_IR", "ISO 2022 IR");
            assert_eq!(cs(&extended).decode(*b"LO", raw), expected, "{extended}");
        }
        // Unassigned positions (ISO 8859-3 0xA5, ISO 8859-8 0xA1) are undecodable.
        assert_eq!(cs("ISO_IR 109").decode(*b"LO", b"\xa5"), "\u{FFFD}");
        assert_eq!(cs("ISO_IR 138").decode(*b"LO", b"\xa1"), "\u{FFFD}");
    }

    #[test]
    fn utf8() {
        assert_eq!(
            pn("ISO_IR 192", "Ĳsselmeer^Ωmega".as_bytes()),
            "Ĳsselmeer^Ωmega"
        );
        assert_eq!(pn("ISO_IR 192", b"A\xffB"), "A\u{FFFD}B");
        // Extra values after a stateless value 1 are ignored.
        assert_eq!(pn("ISO_IR 192\\ISO 2022 IR 100", "Ω".as_bytes()), "Ω");
    }

    #[test]
    fn default_repertoire() {
        let default = CharacterSets::default();
        assert_eq!(cs(""), default);
        assert_eq!(cs("  "), default);
        assert_eq!(cs("ISO_IR 6"), default);
        assert_eq!(default.terms(), &[Term::Default]);
        assert!(!default.uses_code_extensions());
        assert_eq!(default.decode(*b"PN", b"Doe^John"), "Doe^John");
        // Lenient: bytes >= 0x80 are read as ISO 8859-1.
        assert_eq!(default.decode(*b"LO", b"J\xe9r\xf4me"), "Jérôme");
    }

    #[test]
    fn parse_terms() {
        let sets = cs("\\ISO 2022 IR 87 ");
        assert_eq!(sets.terms(), &[Term::Default, Term::JisX0208]);
        assert!(sets.uses_code_extensions());
        assert_eq!(
            cs("iso 2022 ir 100\\ISO 2022 IR 126\0").terms(),
            &[Term::Latin1, Term::Greek]
        );
        // A trailing empty value names nothing.
        assert_eq!(cs("ISO_IR 100\\").terms(), &[Term::Latin1]);
    }

    #[test]
    fn unknown_term() {
        assert_eq!(
            CharacterSets::parse(b"ISO_IR 999"),
            Err(CharsetError::Unknown("ISO_IR 999".into()))
        );
        // Multi-byte sets are defined only with the ISO 2022 prefix.
        assert_eq!(
            CharacterSets::parse(b"\\ISO_IR 87"),
            Err(CharsetError::Unknown("ISO_IR 87".into()))
        );
        assert_eq!(
            CharacterSets::parse(b"ISO 2022 IR 6\\ISO_IR 192"),
            Err(CharsetError::NotExtensible("ISO_IR 192".into()))
        );
        assert_eq!(
            CharsetError::Unknown("X".into()).to_string(),
            "unknown Specific Character Set term \"X\""
        );
    }

    #[test]
    fn multi_valued_reset_at_backslash() {
        // Greek designated to G1 in value 1 must not leak into value 2, which starts in Latin-1.
        let sets = cs("ISO 2022 IR 100\\ISO 2022 IR 126");
        assert_eq!(sets.decode(*b"LO", b"\x1b-F\xe1\\\xe1"), "α\\á");
        // Not in LT, where '\' is text: Greek stays designated.
        assert_eq!(sets.decode(*b"LT", b"\x1b-F\xe1\\\xe1"), "α\\α");
    }

    #[test]
    fn person_name_reset_at_caret_and_equals() {
        let sets = cs("ISO 2022 IR 100\\ISO 2022 IR 144");
        assert_eq!(sets.decode(*b"PN", b"\x1b-L\xbb^\xbb=\x1b-L\xbb"), "Л^»=Л");
        // '^' and '=' delimit only in PN.
        assert_eq!(sets.decode(*b"LO", b"\x1b-L\xbb^\xbb=\xbb"), "Л^Л=Л");
    }

    #[test]
    fn control_characters_reset() {
        let sets = cs("\\ISO 2022 IR 87");
        // No escape back before CR LF / TAB: the next line still starts in ASCII.
        assert_eq!(sets.decode(*b"LT", b"\x1b$B;3\r\n;3"), "山\r\n;3");
        assert_eq!(sets.decode(*b"ST", b"\x1b$B;3\t;3"), "山\t;3");
        assert_eq!(sets.decode(*b"UT", b"\x1b$B;3\x0c;3"), "山\x0c;3");
    }

    #[test]
    fn malformed_input_becomes_replacement_characters() {
        let sets = cs("\\ISO 2022 IR 87\\ISO 2022 IR 149");
        // Unknown escape sequence, then a truncated one.
        assert_eq!(sets.decode(*b"LO", b"A\x1b$)ZB\x1b$"), "A\u{FFFD}B\u{FFFD}");
        // Half a JIS X 0208 character at the end, and one cut by a control character.
        assert_eq!(sets.decode(*b"LO", b"\x1b$B;"), "\u{FFFD}");
        assert_eq!(sets.decode(*b"LT", b"\x1b$B;\nA"), "\u{FFFD}\nA");
        // A KS X 1001 lead byte followed by a GL byte.
        assert_eq!(sets.decode(*b"LO", b"\x1b$)C\xb1A"), "\u{FFFD}A");
    }

    #[test]
    fn vrs_affected_by_specific_character_set() {
        for vr in [b"SH", b"LO", b"ST", b"LT", b"UC", b"UT", b"PN"] {
            assert!(vr_uses_charset(*vr), "{vr:?}");
        }
        for vr in [
            b"AE", b"CS", b"DA", b"UI", b"UR", b"DS", b"IS", b"AS", b"TM", b"DT",
        ] {
            assert!(!vr_uses_charset(*vr), "{vr:?}");
        }
        // Those are read in the default repertoire whatever (0008,0005) says.
        assert_eq!(cs("ISO_IR 144").decode(*b"CS", b"A\xbb"), "A»");
    }

    /// The literals above were written from the standard's column/row notation; check the
    /// multi-byte parts against `encoding_rs`'s encoders.
    #[test]
    fn standard_literals_match_encoders() {
        let enc = |encoding: &'static Encoding, s: &str| encoding.encode(s).0.into_owned();
        assert_eq!(
            enc(encoding_rs::ISO_2022_JP, "山田^太郎=やまだ^たろう"),
            b"\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"
        );
        assert_eq!(
            enc(encoding_rs::EUC_KR, "洪吉洞홍길동한글"),
            b"\xfb\xf3\xd1\xce\xd4\xd7\xc8\xab\xb1\xe6\xb5\xbf\xc7\xd1\xb1\xdb"
        );
        assert_eq!(
            enc(encoding_rs::GB18030, "王小东张東乗À😀"),
            b"\xcd\xf5\xd0\xa1\xb6\xab\xd5\xc5\x96\x7c\x81\x5c\x81\x30\x86\x38\x94\x39\xfc\x36"
        );
        assert_eq!(
            enc(encoding_rs::GB18030, "第一行文字。第二三"),
            b"\xb5\xda\xd2\xbb\xd0\xd0\xce\xc4\xd7\xd6\xa1\xa3\xb5\xda\xb6\xfe\xc8\xfd"
        );
        assert_eq!(
            enc(encoding_rs::SHIFT_JIS, "ﾔﾏﾀﾞﾛｳ"),
            b"\xd4\xcf\xc0\xde\xdb\xb3"
        );
        assert_eq!(
            enc(encoding_rs::ISO_8859_7, "Διονυσιος"),
            b"\xc4\xe9\xef\xed\xf5\xf3\xe9\xef\xf2"
        );
        assert_eq!(
            enc(encoding_rs::ISO_8859_5, "Люксембург"),
            b"\xbb\xee\xda\xe1\xd5\xdc\xd1\xe3\xe0\xd3"
        );
    }

    /// Every term, in both forms where both exist, plus code-extension combinations.
    fn all_sets() -> Vec<CharacterSets> {
        let mut specs: Vec<String> = DEFINED_TERMS.iter().map(|(t, _)| t.to_string()).collect();
        specs.extend(
            [
                "",
                "\\ISO 2022 IR 87",
                "\\ISO 2022 IR 87\\ISO 2022 IR 159",
                "ISO 2022 IR 13\\ISO 2022 IR 87\\ISO 2022 IR 159",
                "\\ISO 2022 IR 149",
                "\\ISO 2022 IR 58",
                "ISO 2022 IR 100\\ISO 2022 IR 126\\ISO 2022 IR 144\\ISO 2022 IR 166",
            ]
            .map(String::from),
        );
        specs.iter().map(|s| cs(s)).collect()
    }

    const VRS: [[u8; 2]; 8] = [
        *b"PN", *b"LO", *b"SH", *b"ST", *b"LT", *b"UT", *b"UC", *b"CS",
    ];

    proptest! {
        #[test]
        fn decode_never_panics(
            raw in proptest::collection::vec(any::<u8>(), 0..64),
            // Bytes biased towards the ones with structure: ESC, intermediates, finals,
            // delimiters, controls and GR.
            structured in proptest::collection::vec(
                prop::sample::select(vec![0x1B, b'$', b'(', b')', b'-', b'A', b'B', b'C', b'D',
                    b'J', b'I', b'F', b'^', b'=', b'\\', b'\r', b'\n', 0x21, 0x7E, 0x81, 0xA1,
                    0xB0, 0xFE, 0xFF]),
                0..64,
            ),
        ) {
            for sets in all_sets() {
                for vr in VRS {
                    let _ = sets.decode(vr, &raw);
                    let _ = sets.decode(vr, &structured);
                }
            }
        }

        #[test]
        fn parse_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..48)) {
            let _ = CharacterSets::parse(&raw);
        }

        #[test]
        fn printable_ascii_is_unchanged_where_g0_is_ascii(raw in "[ -~]{0,48}") {
            for sets in all_sets() {
                if sets.terms()[0] == Term::JisX0201 {
                    continue; // Romaji differs at '\' and '~'
                }
                prop_assert_eq!(sets.decode(*b"PN", raw.as_bytes()), raw.clone());
            }
        }
    }
}
