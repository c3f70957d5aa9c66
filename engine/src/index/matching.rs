//! Attribute matching for C-FIND (PS3.4 C.2.2.2) and QIDO-RS (PS3.18 8.3.4, 10.6).
//!
//! A query key, already decoded to UTF-8, is parsed once by [`Matcher::parse`] into one of the
//! standard's matching kinds: universal, empty value, single value, list, wild card or range.
//! The matcher then tests stored values with [`Matcher::matches`]. Stored values are DICOM
//! text as the extractor keeps it (see [`super::attrs`]): values separated by `\`, PN component
//! groups by `=` and components by `^`, padding trimmed, absent and empty both `""`.
//! [`Matcher::exact_values`] and [`Matcher::date_range`] let the catalog turn a key into index
//! lookups instead of scans; [`CombinedDateTime`] is combined date-time range matching of a
//! date key with a time key (PS3.4 C.2.2.2.5.1).
//!
//! The standard leaves several things to the implementation; these are the choices made here
//! (the conformance statement should repeat them):
//!
//! - **Spaces.** Leading and trailing spaces (and NULs) around each key value and each stored
//!   value are not significant. PS3.5 keeps leading spaces significant only for the narrative
//!   VRs (ST, LT, UT, UC), which are not matching keys in practice, and the extractor already
//!   trims them from stored values, so a key that kept them could never match.
//! - **Universal matching** is a zero-length key, a key of only `*` (for every VR: clients send
//!   `*` to mean "any"), and a PN key of only delimiters (`^`, `=`). It matches empty values too.
//! - **Empty value matching** is a key of two quotation marks, `""`: it matches only values that
//!   are empty or absent.
//! - **Empty stored values** never match single value, list, wild card or range keys, and a
//!   stored value matches if any of its values (split at `\`) does.
//! - **Lists.** Values are separated by `\`; for UIDs also by `,` (QIDO-RS), and both may be
//!   mixed. Every VR accepts lists of single values, but not of wild cards or ranges.
//! - **Text** (every VR not named below) compares byte for byte, so case-sensitively; wild cards
//!   `*` (any run of characters, also none) and `?` (exactly one Unicode character) apply.
//! - **Person names** compare case-insensitively, character by character, through each
//!   character's lowercase form when that is a single character (so `É` matches `é`, but `ß`
//!   does not match `SS`). Trailing empty components (`^` at the end) are ignored on both sides.
//!   A key without `=` is tried against each component group of the stored name (alphabetic,
//!   ideographic, phonetic) and matches if any group does; a key with `=` matches group by
//!   group, where an empty or missing key group matches anything. A wild card key matches a
//!   whole group, `*` crossing component delimiters; if the key has more `^` than the stored
//!   group, the group is padded with empty components first, so `Smith^*` matches `Smith`.
//! - **Fuzzy PN matching** (`fuzzymatching=true`, [`MatchOptions::fuzzy`]) is component prefix
//!   matching: each non-empty component of a key group (family, given, middle, prefix, suffix)
//!   must be, case-insensitively, a prefix of the same component of the stored group (wild cards
//!   still apply inside a component, but never cross `^`); empty key components match anything.
//!   So `smi^jo` matches `Smith^John` and `Smithers^Joanna`, not `Smith^Mary` or `John^Smith`.
//! - **Numbers** (IS, DS and the binary numeric VRs) compare by value: `+007` equals `7` and
//!   `7.0`. Integers compare exactly; anything with a fraction or exponent as `f64`.
//! - **Dates, times and date-times** denote intervals by their precision: the key `0930` is
//!   09:30:00.000000 to 09:30:59.999999, the key `2024` (DT) the whole year, and a range end
//!   covers its whole interval, so `0800-17` reaches 17:59:59.999999. A stored value is the
//!   instant it starts at: a stored `09` is 09:00:00.000000. Stored values may also use the
//!   legacy forms `YYYY.MM.DD` and `HH:MM:SS`, and fractions longer than six digits (truncated);
//!   keys must be in the current forms. A TM range cannot cross midnight (the standard does
//!   not support it); combined date-time matching can.
//! - **Date-time offsets** (`&ZZXX`) are applied wherever present, comparing in UTC; a value
//!   without one is compared as written, that is as if it were UTC. Timezone Offset From UTC
//!   (0008,0201) is not consulted. A DT key is read as a range where it can be, and otherwise
//!   as one value with a negative offset: `1990-2000` is a range of years, `20240101-0500` is
//!   1 January 2024 at UTC-5.
//! - **Limits.** A key may be at most [`MAX_KEY_BYTES`] long and list at most
//!   [`MAX_LIST_VALUES`] values; longer keys are refused rather than slowly scanned.
//!
//! Matching never allocates, and wild card matching is the greedy two-pointer algorithm that
//! retries only the latest `*`: O(key × value) at worst, never exponential.

use std::iter;

/// Longest key accepted, in bytes: a list of [`MAX_LIST_VALUES`] UIDs of 64 characters and
/// their delimiters fits.
pub const MAX_KEY_BYTES: usize = 65_536;

/// Most values accepted in a list key.
pub const MAX_LIST_VALUES: usize = 1000;

const SECOND: i64 = 1_000_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The open upper end of [`Matcher::date_range`].
const LAST_DATE: u32 = 99_991_231;

/// How a value of this VR matches (only the distinctions matching needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchVr {
    /// AE, AS, CS, LO, LT, SH, ST, UC, UR, UT and anything else: exact, case-sensitive text.
    Text,
    /// PN: case-insensitive, by component group.
    PersonName,
    /// UI: exact, no wild cards.
    Uid,
    /// DA.
    Date,
    /// TM.
    Time,
    /// DT.
    DateTime,
    /// IS, DS, US, SS, UL, SL, UV, SV, FL, FD: compared by value.
    Number,
}

impl MatchVr {
    /// The matching behaviour of a two-letter VR.
    pub fn from_vr(vr: [u8; 2]) -> MatchVr {
        match &vr {
            b"PN" => MatchVr::PersonName,
            b"UI" => MatchVr::Uid,
            b"DA" => MatchVr::Date,
            b"TM" => MatchVr::Time,
            b"DT" => MatchVr::DateTime,
            b"IS" | b"DS" | b"US" | b"SS" | b"UL" | b"SL" | b"UV" | b"SV" | b"FL" | b"FD" => {
                MatchVr::Number
            }
            _ => MatchVr::Text,
        }
    }

    /// What error messages call a value of this VR.
    fn noun(self) -> &'static str {
        match self {
            MatchVr::Text => "text",
            MatchVr::PersonName => "person name",
            MatchVr::Uid => "UID",
            MatchVr::Date => "date",
            MatchVr::Time => "time",
            MatchVr::DateTime => "date-time",
            MatchVr::Number => "number",
        }
    }

    fn temporal(self) -> Option<Temporal> {
        match self {
            MatchVr::Date => Some(Temporal::Date),
            MatchVr::Time => Some(Temporal::Time),
            MatchVr::DateTime => Some(Temporal::DateTime),
            _ => None,
        }
    }
}

/// Options of a query that change how keys match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchOptions {
    /// QIDO-RS `fuzzymatching=true` (or C-FIND fuzzy semantic matching): person names match by
    /// case-insensitive component prefix, as the module documentation describes.
    pub fuzzy: bool,
}

/// Why a key could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error("the key is {len} bytes long; at most {max} are accepted")]
    KeyTooLong { len: usize, max: usize },
    #[error("the key lists {count} values; at most {max} are accepted")]
    TooManyValues { count: usize, max: usize },
    #[error("the list {key:?} has an empty value")]
    EmptyListValue { key: String },
    #[error("wild cards (`*`, `?`) cannot be used in {what} keys, as in {key:?}")]
    WildcardNotAllowed { what: &'static str, key: String },
    #[error("wild cards (`*`, `?`) cannot be combined with a list of values, as in {key:?}")]
    WildcardInList { key: String },
    #[error("ranges cannot be combined with a list of values, as in {key:?}")]
    RangeInList { key: String },
    #[error("invalid UID {0:?}: expected digits and dots, at most 64 characters")]
    BadUid(String),
    #[error("invalid date {0:?}: expected a calendar date as YYYYMMDD")]
    BadDate(String),
    #[error("invalid time {0:?}: expected HH, HHMM, HHMMSS or HHMMSS.F to HHMMSS.FFFFFF")]
    BadTime(String),
    #[error(
        "invalid date-time {0:?}: expected YYYY[MM[DD[HH[MM[SS[.F{{1,6}}]]]]]], optionally \
         followed by a UTC offset +HHMM or -HHMM between -1200 and +1400"
    )]
    BadDateTime(String),
    #[error("invalid number {0:?}")]
    BadNumber(String),
    #[error("the range from {lo:?} to {hi:?} ends before it starts")]
    ReversedRange { lo: String, hi: String },
    #[error("the range {0:?} has neither a start nor an end")]
    EmptyRange(String),
}

/// A parsed query key. See the module documentation for how each kind matches.
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    /// Zero-length key (or `*`): matches everything, empty values included.
    Universal,
    /// A key of two quotation marks: matches only empty or absent values (PS3.4 C.2.2.2.1).
    Empty,
    /// Single value matching. Single dates, times and date-times are a [`Value::Period`].
    Single(Value),
    /// List matching: a value matches if it matches any of these (List of UID Matching, and
    /// lists of single values for the other VRs).
    List(Vec<Value>),
    /// Wild card matching (text and person names only).
    Wildcard(Wildcard),
    /// Range matching of dates, times and date-times, both ends inclusive: `lo` is the first
    /// instant of the start key's precision, `hi` the last of the end key's; `None` is open.
    /// [`Matcher::parse`] never leaves both open.
    Range {
        lo: Option<Instant>,
        hi: Option<Instant>,
    },
}

/// One parsed key value of single value or list matching.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text or UID, equal byte for byte.
    Exact(String),
    /// A person name, without wild cards (but fuzzy if so parsed).
    PersonName(NameKey),
    /// A number, equal by value.
    Number(Number),
    /// A date, time or date-time: the instants its precision covers, both ends inclusive.
    Period { first: Instant, last: Instant },
}

/// A wild card key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wildcard {
    /// Case-sensitive text.
    Text(Pattern),
    /// A person name.
    PersonName(NameKey),
}

/// A point on the time line of one temporal VR. Only instants of the same kind are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Instant {
    /// A date as the integer YYYYMMDD, which orders like the dates themselves.
    Date(u32),
    /// A time as microseconds since midnight.
    Time(i64),
    /// A date-time as microseconds since 0000-01-01T00:00 (proleptic Gregorian), in UTC where
    /// the value had an offset.
    DateTime(i64),
}

/// A numeric key value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An integer, compared exactly (i128 holds every UV and SV).
    Int(i128),
    /// Anything with a fraction or an exponent.
    Float(f64),
}

/// Combined date-time range matching (PS3.4 C.2.2.2.5.1): a date range and a time range of the
/// same form read as one date-time range, so `20240101-20240105` with `0800-1700` is from
/// 2024-01-01 08:00 to 2024-01-05 17:00:59.999999, not a daily window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CombinedDateTime {
    /// First matching moment, in microseconds since 0000-01-01T00:00; `None` is open.
    lo: Option<i64>,
    /// Last matching moment, likewise.
    hi: Option<i64>,
}

impl Matcher {
    /// Parses a query key for an attribute of the given VR.
    pub fn parse(vr: MatchVr, key: &str, options: MatchOptions) -> Result<Matcher, MatchError> {
        let key = prepare(key)?;
        if key.bytes().all(|b| b == b'*') {
            return Ok(Matcher::Universal);
        }
        if key == "\"\"" {
            return Ok(Matcher::Empty);
        }
        let separators = list_separators(vr);
        if key.contains(separators) {
            return parse_list(vr, key, separators, options);
        }
        if let Some(kind) = vr.temporal() {
            forbid_wildcard(vr, key)?;
            return temporal_key(kind, key)?.into_matcher();
        }
        match vr {
            MatchVr::Text if has_wildcard(key) => {
                Ok(Matcher::Wildcard(Wildcard::Text(Pattern::new(key, false))))
            }
            MatchVr::PersonName => Ok(match NameKey::parse(key, options.fuzzy) {
                None => Matcher::Universal,
                Some(name) if has_wildcard(key) => Matcher::Wildcard(Wildcard::PersonName(name)),
                Some(name) => Matcher::Single(Value::PersonName(name)),
            }),
            _ => Value::parse(vr, key, options).map(Matcher::Single),
        }
    }

    /// Whether a stored value matches. Multi-valued stored values match if any value matches.
    /// Person names match case-insensitively, against each `=` component group; every other
    /// VR is case-sensitive (see the module documentation).
    pub fn matches(&self, stored: &str) -> bool {
        let mut values = stored.split('\\').map(trim_value);
        match self {
            Matcher::Universal => true,
            Matcher::Empty => values.all(str::is_empty),
            Matcher::Single(key) => values.any(|v| !v.is_empty() && key.matches(v)),
            Matcher::List(keys) => {
                values.any(|v| !v.is_empty() && keys.iter().any(|k| k.matches(v)))
            }
            Matcher::Wildcard(Wildcard::Text(pattern)) => {
                values.any(|v| !v.is_empty() && pattern.matches(v))
            }
            Matcher::Wildcard(Wildcard::PersonName(name)) => {
                values.any(|v| !v.is_empty() && name.matches(v))
            }
            Matcher::Range { lo, hi } => {
                let Some(kind) = lo.or(*hi).map(Instant::kind) else {
                    return false;
                };
                values.any(|v| {
                    stored_instant(kind, v).is_some_and(|at| {
                        lo.is_none_or(|lo| lo <= at) && hi.is_none_or(|hi| at <= hi)
                    })
                })
            }
        }
    }

    /// The exact values this matcher accepts, if it accepts only a finite set of values that
    /// are equal byte for byte (single text or UID values and lists of them), so the catalog
    /// can look them up instead of scanning. A stored value matches if any of its values
    /// equals one of these, so a multi-valued attribute must be indexed value by value.
    /// Person names (case-insensitive), numbers and temporal values (equal by value, not by
    /// spelling) give `None`.
    pub fn exact_values(&self) -> Option<Vec<&str>> {
        match self {
            Matcher::Single(Value::Exact(v)) => Some(vec![v.as_str()]),
            Matcher::List(values) => values
                .iter()
                .map(|v| match v {
                    Value::Exact(v) => Some(v.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// For a date key (single value or range), the inclusive range of dates it matches as
    /// YYYYMMDD integers, `0` and `99991231` standing for open ends.
    pub fn date_range(&self) -> Option<(u32, u32)> {
        match *self {
            Matcher::Single(Value::Period {
                first: Instant::Date(first),
                last: Instant::Date(last),
            }) => Some((first, last)),
            Matcher::Range { lo, hi } if lo.or(hi).is_some() => {
                let lo = match lo {
                    None => 0,
                    Some(Instant::Date(d)) => d,
                    Some(_) => return None,
                };
                let hi = match hi {
                    None => LAST_DATE,
                    Some(Instant::Date(d)) => d,
                    Some(_) => return None,
                };
                Some((lo, hi))
            }
            _ => None,
        }
    }
}

/// The combined date-time range of a parsed date key and time key: `Some` if both are ranges
/// of the same form (both closed, both open at the start, or both open at the end), `None`
/// otherwise, when the two keys simply match independently. Each key on its own has already
/// been checked to be in order; for a time range crossing midnight, parse the raw keys with
/// [`CombinedDateTime::parse`].
pub fn combined_date_time(date_key: &Matcher, time_key: &Matcher) -> Option<CombinedDateTime> {
    let (
        Matcher::Range {
            lo: date_lo,
            hi: date_hi,
        },
        Matcher::Range {
            lo: time_lo,
            hi: time_hi,
        },
    ) = (date_key, time_key)
    else {
        return None;
    };
    Some(CombinedDateTime {
        lo: join_moment(*date_lo, *time_lo)?,
        hi: join_moment(*date_hi, *time_hi)?,
    })
}

/// One end of a combined range from a date end and a time end: `Some(None)` if both are
/// open, `None` if only one is (the ranges are not of the same form).
fn join_moment(date: Option<Instant>, time: Option<Instant>) -> Option<Option<i64>> {
    match (date, time) {
        (None, None) => Some(None),
        (Some(Instant::Date(date)), Some(Instant::Time(time))) => {
            Some(Some(date_days(date) * DAY + time))
        }
        _ => None,
    }
}

impl CombinedDateTime {
    /// Parses a date key and a time key for combined matching. `Ok(None)` if they are not
    /// ranges of the same form (see [`combined_date_time`]). Unlike [`Matcher::parse`], the
    /// time range may cross midnight as long as the combined range is in order:
    /// `20240101-20240102` with `2200-0200` is the night from 1 to 2 January.
    pub fn parse(date_key: &str, time_key: &str) -> Result<Option<CombinedDateTime>, MatchError> {
        let (Some(date), Some(time)) = (
            range_parts(Temporal::Date, date_key)?,
            range_parts(Temporal::Time, time_key)?,
        ) else {
            return Ok(None);
        };
        let (
            TemporalKey::Range {
                lo: date_lo,
                hi: date_hi,
                lo_text: date_lo_text,
                hi_text: date_hi_text,
            },
            TemporalKey::Range {
                lo: time_lo,
                hi: time_hi,
                lo_text: time_lo_text,
                hi_text: time_hi_text,
            },
        ) = (date, time)
        else {
            return Ok(None);
        };
        let (Some(lo), Some(hi)) = (
            join_moment(date_lo.map(|p| p.first), time_lo.map(|p| p.first)),
            join_moment(date_hi.map(|p| p.last), time_hi.map(|p| p.last)),
        ) else {
            return Ok(None);
        };
        if let (Some(lo), Some(hi)) = (lo, hi) {
            if lo > hi {
                return Err(MatchError::ReversedRange {
                    lo: format!("{date_lo_text} {time_lo_text}"),
                    hi: format!("{date_hi_text} {time_hi_text}"),
                });
            }
        }
        Ok(Some(CombinedDateTime { lo, hi }))
    }

    /// Whether a stored (date, time) pair falls in the range. Each is one value; a pair with
    /// an empty or invalid date or time does not match, as range keys never match empty
    /// values. The stored time is the instant it starts at, as elsewhere.
    pub fn matches(&self, date: &str, time: &str) -> bool {
        let (Some(date), Some((time, _))) = (
            parse_date(trim_value(date), true),
            parse_time(trim_value(time), true),
        ) else {
            return false;
        };
        let at = date_days(date) * DAY + time;
        self.lo.is_none_or(|lo| lo <= at) && self.hi.is_none_or(|hi| at <= hi)
    }
}

impl Value {
    /// Parses one value of a single value or list key (no wild cards, no ranges).
    fn parse(vr: MatchVr, key: &str, options: MatchOptions) -> Result<Value, MatchError> {
        match vr {
            MatchVr::Text => Ok(Value::Exact(key.to_owned())),
            MatchVr::PersonName => NameKey::parse(key, options.fuzzy)
                .map(Value::PersonName)
                // Only reached for list values: a whole key of delimiters is universal.
                .ok_or_else(|| MatchError::EmptyListValue {
                    key: key.to_owned(),
                }),
            MatchVr::Uid => {
                forbid_wildcard(vr, key)?;
                let valid = key.len() <= 64
                    && !key.is_empty()
                    && key.bytes().all(|b| b.is_ascii_digit() || b == b'.');
                if valid {
                    Ok(Value::Exact(key.to_owned()))
                } else {
                    Err(MatchError::BadUid(key.to_owned()))
                }
            }
            MatchVr::Number => {
                forbid_wildcard(vr, key)?;
                Number::parse(key)
                    .map(Value::Number)
                    .ok_or_else(|| MatchError::BadNumber(key.to_owned()))
            }
            MatchVr::Date => temporal_value(Temporal::Date, key),
            MatchVr::Time => temporal_value(Temporal::Time, key),
            MatchVr::DateTime => temporal_value(Temporal::DateTime, key),
        }
    }

    /// Whether one stored value (trimmed, not empty) matches.
    fn matches(&self, stored: &str) -> bool {
        match self {
            Value::Exact(key) => key == stored,
            Value::PersonName(name) => name.matches(stored),
            Value::Number(key) => Number::parse(stored).is_some_and(|n| key.same(n)),
            Value::Period { first, last } => stored_instant(first.kind(), stored)
                .is_some_and(|at| (*first..=*last).contains(&at)),
        }
    }
}

fn parse_list(
    vr: MatchVr,
    key: &str,
    separators: &[char],
    options: MatchOptions,
) -> Result<Matcher, MatchError> {
    let count = key.split(separators).count();
    if count > MAX_LIST_VALUES {
        return Err(MatchError::TooManyValues {
            count,
            max: MAX_LIST_VALUES,
        });
    }
    let mut values = Vec::with_capacity(count);
    for value in key.split(separators).map(trim_value) {
        if value.is_empty() {
            return Err(MatchError::EmptyListValue {
                key: key.to_owned(),
            });
        }
        if matches!(vr, MatchVr::Text | MatchVr::PersonName) && has_wildcard(value) {
            return Err(MatchError::WildcardInList {
                key: key.to_owned(),
            });
        }
        match Value::parse(vr, value, options) {
            Ok(v) => values.push(v),
            // A DT value may hold a `-` as its offset, so only a value that failed to parse
            // is taken for a range.
            Err(_) if vr.temporal().is_some() && value.contains('-') => {
                return Err(MatchError::RangeInList {
                    key: key.to_owned(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Matcher::List(values))
}

/// Checks the length limit and trims the key.
fn prepare(key: &str) -> Result<&str, MatchError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(MatchError::KeyTooLong {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(trim_value(key))
}

fn trim_value(value: &str) -> &str {
    value.trim_matches(|c: char| c.is_whitespace() || c == '\0')
}

fn list_separators(vr: MatchVr) -> &'static [char] {
    if vr == MatchVr::Uid {
        &['\\', ',']
    } else {
        &['\\']
    }
}

fn has_wildcard(key: &str) -> bool {
    key.contains(['*', '?'])
}

fn forbid_wildcard(vr: MatchVr, key: &str) -> Result<(), MatchError> {
    if has_wildcard(key) {
        Err(MatchError::WildcardNotAllowed {
            what: vr.noun(),
            key: key.to_owned(),
        })
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Wild cards

/// A compiled wild card pattern (a pattern without wild cards is a literal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
    /// Compare through [`fold`]; the literals are stored folded.
    fold_case: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`
    AnyOne,
    /// `*`
    AnyRun,
}

impl Pattern {
    fn new(pattern: &str, fold_case: bool) -> Pattern {
        let mut tokens = Vec::with_capacity(pattern.len());
        for c in pattern.chars() {
            let token = match c {
                '*' => Token::AnyRun,
                '?' => Token::AnyOne,
                c if fold_case => Token::Char(fold(c)),
                c => Token::Char(c),
            };
            // `**` is `*`, and one star means one backtracking point fewer.
            if !(token == Token::AnyRun && tokens.last() == Some(&Token::AnyRun)) {
                tokens.push(token);
            }
        }
        Pattern { tokens, fold_case }
    }

    /// The pattern followed by `*`: matches whatever starts like it.
    fn prefix(mut self) -> Pattern {
        if self.tokens.last() != Some(&Token::AnyRun) {
            self.tokens.push(Token::AnyRun);
        }
        self
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        self.matches_chars(text.chars())
    }

    /// The greedy two-pointer algorithm: advance through pattern and text together; at a `*`,
    /// remember where it is and let it match nothing; on a mismatch, let the latest `*`
    /// swallow one more character and resume after it. Retrying only the latest star is
    /// enough, as anything an earlier star could swallow the later one can too. Works on a
    /// cloneable iterator so person names can be padded without allocating.
    fn matches_chars<I>(&self, text: I) -> bool
    where
        I: Iterator<Item = char> + Clone,
    {
        let tokens = &self.tokens[..];
        let mut p = 0;
        let mut rest = text;
        // The token after the latest `*`, and the text just after what that star swallows.
        let mut star: Option<(usize, I)> = None;
        loop {
            let mut after = rest.clone();
            let Some(c) = after.next() else {
                return tokens[p..].iter().all(|t| *t == Token::AnyRun);
            };
            let c = if self.fold_case { fold(c) } else { c };
            match tokens.get(p).copied() {
                Some(Token::AnyRun) => {
                    p += 1;
                    star = Some((p, rest.clone()));
                }
                Some(Token::AnyOne) => {
                    p += 1;
                    rest = after;
                }
                Some(Token::Char(want)) if want == c => {
                    p += 1;
                    rest = after;
                }
                _ => match &mut star {
                    Some((resume, swallowed)) => {
                        // `rest` is not exhausted and is at or past `swallowed`, so this
                        // always takes a character.
                        swallowed.next();
                        p = *resume;
                        rest = swallowed.clone();
                    }
                    None => return false,
                },
            }
        }
    }
}

/// Case folding for person names: a character's lowercase form when that is one character.
fn fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

// ---------------------------------------------------------------------------------------------
// Person names

/// A parsed person name key (single value, wild card or fuzzy), matched case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameKey {
    /// One entry per key component group; `None` is an empty group, which matches anything.
    groups: Vec<Option<NameGroup>>,
    /// The key had no `=`: its one group may match any group of the stored name.
    any_group: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NameGroup {
    /// The whole group, trailing `^` removed; `delimiters` counts the `^` left in it.
    Whole { pattern: Pattern, delimiters: usize },
    /// Fuzzy: one prefix pattern per component; `None` matches anything.
    Prefixes(Vec<Option<Pattern>>),
}

impl NameKey {
    /// `None` if the key constrains nothing (only delimiters).
    fn parse(key: &str, fuzzy: bool) -> Option<NameKey> {
        let groups: Vec<Option<NameGroup>> = key
            .split('=')
            .map(|group| {
                let group = trim_value(group).trim_end_matches('^');
                if group.is_empty() {
                    None
                } else if fuzzy {
                    let components = group
                        .split('^')
                        .map(|c| (!c.is_empty()).then(|| Pattern::new(c, true).prefix()))
                        .collect();
                    Some(NameGroup::Prefixes(components))
                } else {
                    Some(NameGroup::Whole {
                        pattern: Pattern::new(group, true),
                        delimiters: count_delimiters(group),
                    })
                }
            })
            .collect();
        if groups.iter().all(Option::is_none) {
            return None;
        }
        Some(NameKey {
            any_group: groups.len() == 1,
            groups,
        })
    }

    /// Whether one stored name (one value) matches.
    fn matches(&self, name: &str) -> bool {
        if self.any_group {
            return match self.groups.first() {
                Some(Some(key)) => name.split('=').any(|group| key.matches(group)),
                _ => true,
            };
        }
        let mut stored = name.split('=');
        self.groups.iter().all(|key| {
            let group = stored.next().unwrap_or("");
            key.as_ref().is_none_or(|key| key.matches(group))
        })
    }
}

impl NameGroup {
    fn matches(&self, group: &str) -> bool {
        match self {
            NameGroup::Whole {
                pattern,
                delimiters,
            } => {
                let group = trim_value(group).trim_end_matches('^');
                let padding = delimiters.saturating_sub(count_delimiters(group));
                pattern.matches_chars(group.chars().chain(iter::repeat_n('^', padding)))
            }
            NameGroup::Prefixes(components) => {
                let mut stored = trim_value(group).split('^');
                components.iter().all(|key| {
                    let component = stored.next().unwrap_or("");
                    key.as_ref().is_none_or(|key| key.matches(component))
                })
            }
        }
    }
}

fn count_delimiters(group: &str) -> usize {
    group.bytes().filter(|&b| b == b'^').count()
}

// ---------------------------------------------------------------------------------------------
// Numbers

impl Number {
    fn parse(text: &str) -> Option<Number> {
        // f64's parser also takes "inf" and "NaN", which are not DICOM numbers.
        let numeric = text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
        if text.is_empty() || !numeric {
            return None;
        }
        if let Ok(i) = text.parse::<i128>() {
            return Some(Number::Int(i));
        }
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Number::Float)
    }

    fn same(self, other: Number) -> bool {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a == b,
            (a, b) => a.as_f64() == b.as_f64(),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dates and times

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Temporal {
    Date,
    Time,
    DateTime,
}

impl Temporal {
    fn vr(self) -> MatchVr {
        match self {
            Temporal::Date => MatchVr::Date,
            Temporal::Time => MatchVr::Time,
            Temporal::DateTime => MatchVr::DateTime,
        }
    }

    fn bad(self, text: &str) -> MatchError {
        let text = text.to_owned();
        match self {
            Temporal::Date => MatchError::BadDate(text),
            Temporal::Time => MatchError::BadTime(text),
            Temporal::DateTime => MatchError::BadDateTime(text),
        }
    }
}

impl Instant {
    fn kind(self) -> Temporal {
        match self {
            Instant::Date(_) => Temporal::Date,
            Instant::Time(_) => Temporal::Time,
            Instant::DateTime(_) => Temporal::DateTime,
        }
    }
}

/// The instants a temporal key value covers, both ends inclusive.
#[derive(Debug, Clone, Copy)]
struct Period {
    first: Instant,
    last: Instant,
}

impl Period {
    fn value(self) -> Value {
        Value::Period {
            first: self.first,
            last: self.last,
        }
    }
}

/// A temporal key: one value, or a range (ends not yet checked for order).
enum TemporalKey<'a> {
    Single(Period),
    Range {
        lo: Option<Period>,
        hi: Option<Period>,
        lo_text: &'a str,
        hi_text: &'a str,
    },
}

impl TemporalKey<'_> {
    fn into_matcher(self) -> Result<Matcher, MatchError> {
        match self {
            TemporalKey::Single(period) => Ok(Matcher::Single(period.value())),
            TemporalKey::Range {
                lo,
                hi,
                lo_text,
                hi_text,
            } => {
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    if lo.first > hi.last {
                        return Err(MatchError::ReversedRange {
                            lo: lo_text.to_owned(),
                            hi: hi_text.to_owned(),
                        });
                    }
                }
                Ok(Matcher::Range {
                    lo: lo.map(|p| p.first),
                    hi: hi.map(|p| p.last),
                })
            }
        }
    }
}

/// Parses one temporal key value in its strict (current) form.
fn parse_period(kind: Temporal, text: &str) -> Result<Period, MatchError> {
    let period = match kind {
        Temporal::Date => parse_date(text, false).map(|d| (Instant::Date(d), Instant::Date(d))),
        Temporal::Time => parse_time(text, false)
            .map(|(first, len)| (Instant::Time(first), Instant::Time(first + len - 1))),
        Temporal::DateTime => parse_datetime(text, false)
            .map(|(first, len)| (Instant::DateTime(first), Instant::DateTime(first + len - 1))),
    };
    period
        .map(|(first, last)| Period { first, last })
        .ok_or_else(|| kind.bad(text))
}

/// One temporal value of a list (no range).
fn temporal_value(kind: Temporal, key: &str) -> Result<Value, MatchError> {
    forbid_wildcard(kind.vr(), key)?;
    Ok(parse_period(kind, key)?.value())
}

/// Reads a (trimmed, wild-card-free) temporal key as one value or a range.
fn temporal_key(kind: Temporal, key: &str) -> Result<TemporalKey<'_>, MatchError> {
    if !key.contains('-') {
        return parse_period(kind, key).map(TemporalKey::Single);
    }
    if key == "-" {
        return Err(MatchError::EmptyRange(key.to_owned()));
    }
    if kind != Temporal::DateTime {
        let Some((lo_text, hi_text)) = key.split_once('-') else {
            return Err(kind.bad(key));
        };
        if hi_text.contains('-') {
            // Most likely an ISO 8601 date or time such as 2024-01-01.
            return Err(kind.bad(key));
        }
        let (lo_text, hi_text) = (trim_value(lo_text), trim_value(hi_text));
        if lo_text.is_empty() && hi_text.is_empty() {
            return Err(MatchError::EmptyRange(key.to_owned()));
        }
        let side = |text: &str| {
            (!text.is_empty())
                .then(|| parse_period(kind, text))
                .transpose()
        };
        return Ok(TemporalKey::Range {
            lo: side(lo_text)?,
            hi: side(hi_text)?,
            lo_text,
            hi_text,
        });
    }
    // A DT value's offset may be negative, so any `-` may be the range's. Take the first
    // split whose two sides are date-times (or empty) and in order; failing that, the whole
    // key as one value; failing that, a split out of order, to report it as such.
    let mut reversed = None;
    for (at, _) in key.match_indices('-') {
        let (lo_text, hi_text) = (trim_value(&key[..at]), trim_value(&key[at + 1..]));
        if lo_text.is_empty() && hi_text.is_empty() {
            continue;
        }
        let side = |text: &str| {
            if text.is_empty() {
                Some(None)
            } else {
                parse_period(kind, text).ok().map(Some)
            }
        };
        let (Some(lo), Some(hi)) = (side(lo_text), side(hi_text)) else {
            continue;
        };
        let range = TemporalKey::Range {
            lo,
            hi,
            lo_text,
            hi_text,
        };
        match (lo, hi) {
            (Some(lo), Some(hi)) if lo.first > hi.last => {
                reversed = Some(range);
                break;
            }
            _ => return Ok(range),
        }
    }
    match parse_period(kind, key) {
        Ok(period) => Ok(TemporalKey::Single(period)),
        Err(e) => reversed.ok_or(e),
    }
}

/// A raw date or time key read for combined matching: `None` if it matches universally or
/// is empty value matching, which combined matching leaves to the keys alone.
fn range_parts(kind: Temporal, key: &str) -> Result<Option<TemporalKey<'_>>, MatchError> {
    let key = prepare(key)?;
    if key.bytes().all(|b| b == b'*') || key == "\"\"" {
        return Ok(None);
    }
    forbid_wildcard(kind.vr(), key)?;
    temporal_key(kind, key).map(Some)
}

/// The instant a stored value starts at, accepting legacy forms.
fn stored_instant(kind: Temporal, text: &str) -> Option<Instant> {
    match kind {
        Temporal::Date => parse_date(text, true).map(Instant::Date),
        Temporal::Time => parse_time(text, true).map(|(first, _)| Instant::Time(first)),
        Temporal::DateTime => parse_datetime(text, true).map(|(first, _)| Instant::DateTime(first)),
    }
}

/// The value of a run of ASCII digits (at most 9, so no overflow).
fn digits(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || bytes.len() > 9 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().fold(0, |n, &b| n * 10 + u32::from(b - b'0')))
}

fn is_leap(year: u32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn valid_date(year: u32, month: u32, day: u32) -> bool {
    (1..=12).contains(&month) && (1..=days_in_month(year, month)).contains(&day)
}

/// Days since 0000-01-01 in the proleptic Gregorian calendar.
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    // Count years from March so the leap day is the last day of its year; day 0 of that
    // count is 0000-03-01, 60 days after 0000-01-01 (year 0 is a leap year).
    let (year, month, day) = (i64::from(year), i64::from(month), i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era + 60
}

fn date_days(yyyymmdd: u32) -> i64 {
    days_from_civil(yyyymmdd / 10_000, yyyymmdd / 100 % 100, yyyymmdd % 100)
}

/// A DA value as YYYYMMDD; `legacy` also accepts `YYYY.MM.DD`.
fn parse_date(text: &str, legacy: bool) -> Option<u32> {
    let b = text.as_bytes();
    let (year, month, day) = match b.len() {
        8 => (&b[..4], &b[4..6], &b[6..]),
        10 if legacy && b[4] == b'.' && b[7] == b'.' => (&b[..4], &b[5..7], &b[8..]),
        _ => return None,
    };
    let (year, month, day) = (digits(year)?, digits(month)?, digits(day)?);
    valid_date(year, month, day).then_some(year * 10_000 + month * 100 + day)
}

/// A fraction of a second (`F` to `FFFFFF`) as (microseconds, length of its precision);
/// `lenient` truncates longer fractions instead of refusing them.
fn parse_fraction(text: &str, lenient: bool) -> Option<(i64, i64)> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if text.len() > 6 && !lenient {
        return None;
    }
    // All ASCII, so any byte index is a character boundary.
    let text = &text[..text.len().min(6)];
    let scale = 10_i64.pow(6 - text.len() as u32);
    Some((i64::from(digits(text.as_bytes())?) * scale, scale))
}

/// A TM value as (microseconds since midnight, length of the interval its precision covers).
/// `lenient` (stored values) also accepts `HH:MM[:SS]` and long fractions.
fn parse_time(text: &str, lenient: bool) -> Option<(i64, i64)> {
    let (clock, fraction) = match text.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (text, None),
    };
    let mut fields = [0_u32; 3];
    let mut count = 0;
    if lenient && clock.contains(':') {
        for field in clock.split(':') {
            if count == 3 || field.len() != 2 {
                return None;
            }
            fields[count] = digits(field.as_bytes())?;
            count += 1;
        }
    } else {
        let b = clock.as_bytes();
        if b.is_empty() || b.len() > 6 || b.len() % 2 != 0 {
            return None;
        }
        for field in b.chunks(2) {
            fields[count] = digits(field)?;
            count += 1;
        }
    }
    let [hour, minute, second] = fields;
    // 60 is a leap second.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut first =
        i64::from(hour) * HOUR + i64::from(minute) * MINUTE + i64::from(second) * SECOND;
    let mut len = [HOUR, MINUTE, SECOND][count - 1];
    if let Some(fraction) = fraction {
        if count != 3 {
            return None;
        }
        let (micros, scale) = parse_fraction(fraction, lenient)?;
        first += micros;
        len = scale;
    }
    Some((first, len))
}

/// A DT value as (microseconds since 0000-01-01 in UTC where it has an offset, length of the
/// interval its precision covers). `lenient` (stored values) accepts long fractions.
fn parse_datetime(text: &str, lenient: bool) -> Option<(i64, i64)> {
    let b = text.as_bytes();
    let (body, offset) = match b.len().checked_sub(5) {
        Some(at) if matches!(b[at], b'+' | b'-') => {
            let hours = i64::from(digits(&b[at + 1..at + 3])?);
            let minutes = i64::from(digits(&b[at + 3..])?);
            let offset = hours * HOUR + minutes * MINUTE;
            let offset = if b[at] == b'-' { -offset } else { offset };
            if minutes > 59 || !(-12 * HOUR..=14 * HOUR).contains(&offset) {
                return None;
            }
            // b[at] is ASCII, so `at` is a character boundary.
            (&text[..at], offset)
        }
        _ => (text, 0),
    };
    let (clock, fraction) = match body.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (body, None),
    };
    let c = clock.as_bytes();
    if !matches!(c.len(), 4 | 6 | 8 | 10 | 12 | 14) || !c.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let field = |at: usize, default: u32| {
        if c.len() > at {
            digits(&c[at..at + 2])
        } else {
            Some(default)
        }
    };
    let year = digits(&c[..4])?;
    let (month, day) = (field(4, 1)?, field(6, 1)?);
    let (hour, minute, second) = (field(8, 0)?, field(10, 0)?, field(12, 0)?);
    if !valid_date(year, month, day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut first = days_from_civil(year, month, day) * DAY
        + i64::from(hour) * HOUR
        + i64::from(minute) * MINUTE
        + i64::from(second) * SECOND
        - offset;
    let mut len = match c.len() {
        4 => (days_from_civil(year + 1, 1, 1) - days_from_civil(year, 1, 1)) * DAY,
        6 => i64::from(days_in_month(year, month)) * DAY,
        8 => DAY,
        10 => HOUR,
        12 => MINUTE,
        _ => SECOND,
    };
    if let Some(fraction) = fraction {
        if c.len() != 14 {
            return None;
        }
        let (micros, scale) = parse_fraction(fraction, lenient)?;
        first += micros;
        len = scale;
    }
    Some((first, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PLAIN: MatchOptions = MatchOptions { fuzzy: false };
    const FUZZY: MatchOptions = MatchOptions { fuzzy: true };

    fn parse(vr: MatchVr, key: &str) -> Matcher {
        match Matcher::parse(vr, key, PLAIN) {
            Ok(m) => m,
            Err(e) => panic!("{key:?} should parse: {e}"),
        }
    }

    fn parse_err(vr: MatchVr, key: &str) -> MatchError {
        match Matcher::parse(vr, key, PLAIN) {
            Ok(m) => panic!("{key:?} should not parse, got {m:?}"),
            Err(e) => e,
        }
    }

    fn fuzzy(key: &str) -> Matcher {
        match Matcher::parse(MatchVr::PersonName, key, FUZZY) {
            Ok(m) => m,
            Err(e) => panic!("{key:?} should parse: {e}"),
        }
    }

    fn combined(date: &str, time: &str) -> CombinedDateTime {
        match CombinedDateTime::parse(date, time) {
            Ok(Some(c)) => c,
            other => panic!("{date:?} {time:?} should combine, got {other:?}"),
        }
    }

    #[test]
    fn vrs_map_to_matching_behaviour() {
        let cases: [(&[u8; 2], MatchVr); 12] = [
            (b"PN", MatchVr::PersonName),
            (b"UI", MatchVr::Uid),
            (b"DA", MatchVr::Date),
            (b"TM", MatchVr::Time),
            (b"DT", MatchVr::DateTime),
            (b"IS", MatchVr::Number),
            (b"DS", MatchVr::Number),
            (b"US", MatchVr::Number),
            (b"FD", MatchVr::Number),
            (b"LO", MatchVr::Text),
            (b"CS", MatchVr::Text),
            (b"AE", MatchVr::Text),
        ];
        for (vr, expected) in cases {
            assert_eq!(MatchVr::from_vr(*vr), expected, "{vr:?}");
        }
    }

    #[test]
    fn universal_keys_match_everything() {
        for vr in [
            MatchVr::Text,
            MatchVr::PersonName,
            MatchVr::Uid,
            MatchVr::Date,
            MatchVr::Time,
            MatchVr::DateTime,
            MatchVr::Number,
        ] {
            for key in ["", "   ", "*", "**", " * "] {
                let m = parse(vr, key);
                assert_eq!(m, Matcher::Universal, "{vr:?} {key:?}");
                assert!(m.matches(""));
                assert!(m.matches("anything\\else"));
            }
        }
        // A person name of only delimiters constrains nothing.
        for key in ["^", "=", "^^=^"] {
            assert_eq!(
                parse(MatchVr::PersonName, key),
                Matcher::Universal,
                "{key:?}"
            );
        }
    }

    #[test]
    fn empty_value_matching_matches_only_empty_values() {
        for vr in [
            MatchVr::Text,
            MatchVr::PersonName,
            MatchVr::Date,
            MatchVr::Uid,
        ] {
            let m = parse(vr, "\"\"");
            assert_eq!(m, Matcher::Empty);
            assert!(m.matches(""));
            assert!(m.matches("  "));
            assert!(m.matches("\\"));
            assert!(!m.matches("x"));
            assert!(!m.matches("\\x"));
        }
    }

    #[test]
    fn text_single_value_is_exact_and_case_sensitive() {
        let m = parse(MatchVr::Text, "  CT ");
        assert_eq!(m, Matcher::Single(Value::Exact("CT".into())));
        assert!(m.matches("CT"));
        assert!(m.matches(" CT  "));
        assert!(!m.matches("ct"));
        assert!(!m.matches("CTX"));
        assert!(!m.matches(""));
        // Any value of a multi-valued attribute.
        assert!(m.matches("MR\\CT"));
        assert!(!m.matches("MR\\PT"));
        assert_eq!(m.exact_values(), Some(vec!["CT"]));
        // Other delimiters are plain text for text VRs.
        assert!(parse(MatchVr::Text, "a=b^c-d,e").matches("a=b^c-d,e"));
    }

    #[test]
    fn text_wildcards() {
        let m = parse(MatchVr::Text, "AB*");
        assert!(matches!(m, Matcher::Wildcard(Wildcard::Text(_))));
        assert!(m.matches("AB"));
        assert!(m.matches("ABC"));
        assert!(!m.matches("ab"));
        assert!(!m.matches("XAB"));
        let m = parse(MatchVr::Text, "*A*B*C");
        assert!(m.matches("ABC"));
        assert!(m.matches("xxAyyByyC"));
        assert!(!m.matches("xxAyyByyCx"));
        assert!(!m.matches("CBA"));
        let m = parse(MatchVr::Text, "A?C");
        assert!(m.matches("ABC"));
        assert!(!m.matches("AC"));
        assert!(!m.matches("ABBC"));
        assert_eq!(m.exact_values(), None);
        // A wild card never matches an empty value, even when it could match zero characters.
        assert!(!parse(MatchVr::Text, "*?*").matches(""));
        assert!(!parse(MatchVr::Text, "*=*").matches(""));
        assert!(parse(MatchVr::Text, "*=*").matches("="));
    }

    #[test]
    fn question_mark_is_one_unicode_character() {
        let m = parse(MatchVr::Text, "a?c");
        assert!(m.matches("aéc"));
        assert!(m.matches("a字c"));
        assert!(m.matches("a😀c"));
        assert!(!m.matches("aééc"));
        let m = parse(MatchVr::Text, "??");
        assert!(m.matches("字字"));
        assert!(!m.matches("字"));
        assert!(!m.matches("字字字"));
        let m = parse(MatchVr::Text, "*字?");
        assert!(m.matches("ab字é"));
        assert!(!m.matches("ab字"));
    }

    #[test]
    fn wildcard_matching_is_not_exponential() {
        let text = "a".repeat(20_000);
        let m = parse(MatchVr::Text, "*a*a*a*a*a*a*a*a*a*a*b");
        let started = std::time::Instant::now();
        assert!(!m.matches(&text));
        assert!(parse(MatchVr::Text, "*a*a*a*a*a*a*a*a*a*a*a").matches(&text));
        // Quadratic-ish at worst: milliseconds; exponential backtracking would never finish.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn uid_single_and_lists() {
        let m = parse(MatchVr::Uid, "1.2.3");
        assert!(m.matches("1.2.3"));
        assert!(m.matches("1.2.3\0"));
        assert!(!m.matches("1.2.30"));
        assert_eq!(m.exact_values(), Some(vec!["1.2.3"]));
        // C-FIND `\`, QIDO `,`, and a mix of both.
        let m = parse(MatchVr::Uid, "1.2.3\\1.2.4, 1.2.5");
        assert_eq!(
            m,
            Matcher::List(vec![
                Value::Exact("1.2.3".into()),
                Value::Exact("1.2.4".into()),
                Value::Exact("1.2.5".into()),
            ])
        );
        assert_eq!(m.exact_values(), Some(vec!["1.2.3", "1.2.4", "1.2.5"]));
        for stored in ["1.2.3", "1.2.4", "1.2.5", "9.9\\1.2.5"] {
            assert!(m.matches(stored), "{stored}");
        }
        assert!(!m.matches("1.2.6"));
        assert!(!m.matches(""));
    }

    #[test]
    fn uid_errors() {
        assert_eq!(
            parse_err(MatchVr::Uid, "1.2.*"),
            MatchError::WildcardNotAllowed {
                what: "UID",
                key: "1.2.*".into()
            }
        );
        assert!(matches!(
            parse_err(MatchVr::Uid, "1.2.?"),
            MatchError::WildcardNotAllowed { .. }
        ));
        assert_eq!(
            parse_err(MatchVr::Uid, "1.2.abc"),
            MatchError::BadUid("1.2.abc".into())
        );
        let long = format!("1.{}", "2".repeat(63));
        assert_eq!(parse_err(MatchVr::Uid, &long), MatchError::BadUid(long));
        assert_eq!(
            parse_err(MatchVr::Uid, "1.2,"),
            MatchError::EmptyListValue { key: "1.2,".into() }
        );
        assert!(matches!(
            parse_err(MatchVr::Uid, "1.2\\\\1.3"),
            MatchError::EmptyListValue { .. }
        ));
        assert!(matches!(
            parse_err(MatchVr::Uid, "1.2\\1.*"),
            MatchError::WildcardNotAllowed { .. }
        ));
    }

    #[test]
    fn limits() {
        let thousand = vec!["1.2.840.10008.5.1.4.1.1.2"; MAX_LIST_VALUES].join("\\");
        assert!(matches!(parse(MatchVr::Uid, &thousand), Matcher::List(v) if v.len() == 1000));
        let too_many = vec!["1.2"; MAX_LIST_VALUES + 1].join(",");
        assert_eq!(
            parse_err(MatchVr::Uid, &too_many),
            MatchError::TooManyValues {
                count: 1001,
                max: 1000
            }
        );
        let too_long = "A".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            parse_err(MatchVr::Text, &too_long),
            MatchError::KeyTooLong {
                len: MAX_KEY_BYTES + 1,
                max: MAX_KEY_BYTES
            }
        );
        assert!(matches!(
            CombinedDateTime::parse(&too_long, "0800-"),
            Err(MatchError::KeyTooLong { .. })
        ));
    }

    #[test]
    fn lists_of_other_vrs() {
        let m = parse(MatchVr::Text, "CT\\MR");
        assert!(m.matches("MR"));
        assert!(m.matches("PT\\CT"));
        assert!(!m.matches("PT"));
        assert_eq!(m.exact_values(), Some(vec!["CT", "MR"]));
        // Commas are text outside UIDs.
        assert_eq!(
            parse(MatchVr::Text, "CT, head"),
            Matcher::Single(Value::Exact("CT, head".into()))
        );
        let m = parse(MatchVr::PersonName, "smith^john\\DOE");
        assert!(m.matches("SMITH^JOHN"));
        assert!(m.matches("Doe"));
        assert!(!m.matches("Smith"));
        assert_eq!(m.exact_values(), None);
        let m = parse(MatchVr::Number, "1\\+2\\3.5");
        assert!(m.matches("2"));
        assert!(m.matches("3.50"));
        assert!(!m.matches("4"));
        let m = parse(MatchVr::Date, "20240101\\20240105");
        assert!(m.matches("20240105"));
        assert!(!m.matches("20240103"));
        assert_eq!(m.date_range(), None);
    }

    #[test]
    fn list_errors() {
        assert_eq!(
            parse_err(MatchVr::Text, "CT\\M*"),
            MatchError::WildcardInList {
                key: "CT\\M*".into()
            }
        );
        assert!(matches!(
            parse_err(MatchVr::PersonName, "smith\\jo?"),
            MatchError::WildcardInList { .. }
        ));
        assert!(matches!(
            parse_err(MatchVr::PersonName, "smith\\^"),
            MatchError::EmptyListValue { .. }
        ));
        assert!(matches!(
            parse_err(MatchVr::Text, "CT\\"),
            MatchError::EmptyListValue { .. }
        ));
        assert_eq!(
            parse_err(MatchVr::Date, "20240101-20240102\\20240105"),
            MatchError::RangeInList {
                key: "20240101-20240102\\20240105".into()
            }
        );
        assert!(matches!(
            parse_err(MatchVr::Time, "0800\\0900-1000"),
            MatchError::RangeInList { .. }
        ));
        assert!(matches!(
            parse_err(MatchVr::Date, "20240101\\2024131"),
            MatchError::BadDate(d) if d == "2024131"
        ));
        // A negative offset is not a range.
        let m = parse(MatchVr::DateTime, "20240101-0500\\20240102");
        assert!(m.matches("20240101000000-0500"));
    }

    #[test]
    fn person_names_are_case_insensitive() {
        let m = parse(MatchVr::PersonName, "smith^john");
        assert!(matches!(m, Matcher::Single(Value::PersonName(_))));
        assert!(m.matches("SMITH^JOHN"));
        assert!(m.matches("Smith^John"));
        assert!(!m.matches("Smith^Johnny"));
        assert!(!m.matches("Smith"));
        assert!(!m.matches(""));
        // Beyond ASCII, through single-character lowercase forms.
        let m = parse(MatchVr::PersonName, "ÉMILE^ÇA");
        assert!(m.matches("émile^ça"));
        assert!(parse(MatchVr::PersonName, "ΣΩΚΡΑΤΗΣ").matches("σωκρατησ"));
        // Only person names.
        assert!(!parse(MatchVr::Text, "smith").matches("SMITH"));
    }

    #[test]
    fn person_names_ignore_trailing_empty_components() {
        let m = parse(MatchVr::PersonName, "Smith^John^^^");
        assert!(m.matches("Smith^John"));
        assert!(m.matches("Smith^John^^"));
        let m = parse(MatchVr::PersonName, "Smith");
        assert!(m.matches("Smith^^^^"));
        assert!(!m.matches("Smith^John"));
    }

    #[test]
    fn person_names_match_by_component_group() {
        let stored = "Yamada^Tarou=山田^太郎=やまだ^たろう";
        // Without `=`, any group.
        for key in ["yamada^tarou", "山田^太郎", "やまだ^たろう", "山田*"] {
            assert!(parse(MatchVr::PersonName, key).matches(stored), "{key}");
        }
        assert!(!parse(MatchVr::PersonName, "山田").matches(stored));
        // With `=`, group by group; empty or missing groups match anything.
        assert!(parse(MatchVr::PersonName, "=山田^太郎").matches(stored));
        assert!(parse(MatchVr::PersonName, "Yamada^Tarou=山田^太郎").matches(stored));
        assert!(parse(MatchVr::PersonName, "Yamada*==やまだ^たろう").matches(stored));
        assert!(!parse(MatchVr::PersonName, "山田^太郎=").matches(stored));
        assert!(!parse(MatchVr::PersonName, "=Yamada^Tarou").matches(stored));
        assert!(!parse(MatchVr::PersonName, "=山田^太郎").matches("Yamada^Tarou"));
        // Multi-valued names.
        assert!(parse(MatchVr::PersonName, "doe^jane").matches("Smith^John\\Doe^Jane"));
    }

    #[test]
    fn person_name_wildcards() {
        let m = parse(MatchVr::PersonName, "smi*");
        assert!(matches!(m, Matcher::Wildcard(Wildcard::PersonName(_))));
        assert!(m.matches("Smith^John"));
        assert!(m.matches("SMITH"));
        assert!(!m.matches("Jones^Smith"));
        assert!(parse(MatchVr::PersonName, "*^JOHN").matches("Smith^John"));
        assert!(parse(MatchVr::PersonName, "?MITH^J*").matches("smith^john"));
        // Keys with more components than the stored name: padded with empty components.
        assert!(parse(MatchVr::PersonName, "Smith^*").matches("Smith"));
        assert!(parse(MatchVr::PersonName, "Smith^John^*").matches("Smith^John"));
        assert!(!parse(MatchVr::PersonName, "Smith^J*").matches("Smith"));
        assert!(!parse(MatchVr::PersonName, "Smith?").matches("Smith"));
    }

    #[test]
    fn fuzzy_person_names_match_component_prefixes() {
        let m = fuzzy("smi^jo");
        assert!(m.matches("Smith^John"));
        assert!(m.matches("SMITHERS^JOANNA^Q"));
        assert!(!m.matches("Smith^Mary"));
        assert!(!m.matches("John^Smith"));
        assert!(!m.matches("Smith"));
        assert!(!m.matches(""));
        assert_eq!(m.exact_values(), None);
        // Empty key components match anything; later components are unconstrained.
        let m = fuzzy("^jo");
        assert!(m.matches("Smith^John"));
        assert!(!m.matches("Jones^Mary"));
        let m = fuzzy("smith");
        assert!(m.matches("Smith^John"));
        assert!(m.matches("Smithson"));
        // Wild cards inside a component, never across `^`.
        let m = fuzzy("s?i^*n");
        assert!(m.matches("Smith^John"));
        assert!(!m.matches("Sm^ith^John"));
        // Groups.
        assert!(fuzzy("山").matches("Yamada^Tarou=山田^太郎"));
        assert!(fuzzy("=山").matches("Yamada^Tarou=山田^太郎"));
        assert!(!fuzzy("=yam").matches("Yamada^Tarou=山田^太郎"));
        // Fuzzy matching changes nothing but person names.
        let text = Matcher::parse(MatchVr::Text, "smi", FUZZY);
        assert_eq!(text, Ok(Matcher::Single(Value::Exact("smi".into()))));
    }

    #[test]
    fn numbers_compare_by_value() {
        let m = parse(MatchVr::Number, "+007");
        assert!(m.matches("7"));
        assert!(m.matches("007"));
        assert!(m.matches("7.0"));
        assert!(m.matches("  7 "));
        assert!(m.matches("3\\7"));
        assert!(!m.matches("70"));
        assert!(!m.matches("seven"));
        assert!(!m.matches(""));
        assert_eq!(m.exact_values(), None);
        assert!(parse(MatchVr::Number, "1e2").matches("100"));
        assert!(parse(MatchVr::Number, "-0.5").matches("-.5"));
        assert!(parse(MatchVr::Number, "0").matches("-0"));
        // Large integers compare exactly, not through f64.
        let m = parse(MatchVr::Number, "18446744073709551615");
        assert!(m.matches("18446744073709551615"));
        assert!(!m.matches("18446744073709551614"));
    }

    #[test]
    fn number_errors() {
        for key in ["abc", "1-5", "inf", "NaN", "1,5", "1e400", "--1"] {
            assert_eq!(
                parse_err(MatchVr::Number, key),
                MatchError::BadNumber(key.into()),
                "{key}"
            );
        }
        assert!(matches!(
            parse_err(MatchVr::Number, "1*"),
            MatchError::WildcardNotAllowed { what: "number", .. }
        ));
    }

    #[test]
    fn single_dates() {
        let m = parse(MatchVr::Date, "20240229");
        assert_eq!(
            m,
            Matcher::Single(Value::Period {
                first: Instant::Date(20240229),
                last: Instant::Date(20240229)
            })
        );
        assert!(m.matches("20240229"));
        assert!(m.matches("2024.02.29"));
        assert!(m.matches("19990101\\20240229"));
        assert!(!m.matches("20240228"));
        assert!(!m.matches("2024-02-29"));
        assert!(!m.matches("20240230"));
        assert!(!m.matches(""));
        assert_eq!(m.date_range(), Some((20240229, 20240229)));
        assert_eq!(m.exact_values(), None);
    }

    #[test]
    fn date_errors() {
        for key in [
            "2024131",
            "20241301",
            "20240001",
            "20230229",
            "20240431",
            "2024013x",
            "202401011",
            "2024-01-01",
            "24-01-01",
            "２０２４０１０１",
        ] {
            assert!(
                matches!(parse_err(MatchVr::Date, key), MatchError::BadDate(_)),
                "{key}"
            );
        }
        // Legacy forms are for stored values only.
        assert!(matches!(
            parse_err(MatchVr::Date, "2024.01.01"),
            MatchError::BadDate(_)
        ));
        // The error names the bad side of a range.
        assert_eq!(
            parse_err(MatchVr::Date, "20240101-2024131"),
            MatchError::BadDate("2024131".into())
        );
        assert_eq!(
            parse_err(MatchVr::Date, "2024*"),
            MatchError::WildcardNotAllowed {
                what: "date",
                key: "2024*".into()
            }
        );
    }

    #[test]
    fn date_ranges() {
        let m = parse(MatchVr::Date, "20240101 - 20240105");
        assert_eq!(
            m,
            Matcher::Range {
                lo: Some(Instant::Date(20240101)),
                hi: Some(Instant::Date(20240105))
            }
        );
        for stored in ["20240101", "20240103", "20240105", "2024.01.05"] {
            assert!(m.matches(stored), "{stored}");
        }
        for stored in ["20231231", "20240106", "", "garbage"] {
            assert!(!m.matches(stored), "{stored}");
        }
        assert_eq!(m.date_range(), Some((20240101, 20240105)));
        // One-day range.
        assert!(parse(MatchVr::Date, "20240101-20240101").matches("20240101"));
        // Open ends.
        let m = parse(MatchVr::Date, "20240101-");
        assert!(m.matches("20240101"));
        assert!(m.matches("99991231"));
        assert!(!m.matches("20231231"));
        assert!(!m.matches(""));
        assert_eq!(m.date_range(), Some((20240101, 99991231)));
        let m = parse(MatchVr::Date, "-20240101");
        assert!(m.matches("19000101"));
        assert!(m.matches("20240101"));
        assert!(!m.matches("20240102"));
        assert_eq!(m.date_range(), Some((0, 20240101)));
    }

    #[test]
    fn range_errors() {
        assert_eq!(
            parse_err(MatchVr::Date, "20240105-20240101"),
            MatchError::ReversedRange {
                lo: "20240105".into(),
                hi: "20240101".into()
            }
        );
        for vr in [MatchVr::Date, MatchVr::Time, MatchVr::DateTime] {
            assert_eq!(
                parse_err(vr, " - "),
                MatchError::EmptyRange("-".into()),
                "{vr:?}"
            );
        }
        assert!(matches!(
            parse_err(MatchVr::Date, "20240101-20240102-20240103"),
            MatchError::BadDate(_)
        ));
        // TM ranges cannot cross midnight.
        assert_eq!(
            parse_err(MatchVr::Time, "2200-0200"),
            MatchError::ReversedRange {
                lo: "2200".into(),
                hi: "0200".into()
            }
        );
        assert!(matches!(
            parse_err(MatchVr::DateTime, "2025-2024"),
            MatchError::ReversedRange { .. }
        ));
    }

    #[test]
    fn times_compare_by_precision() {
        // A key covers its precision; a stored value is the instant it starts at.
        let m = parse(MatchVr::Time, "0930");
        for stored in ["0930", "093000", "093059.999999", "09:30:15"] {
            assert!(m.matches(stored), "{stored}");
        }
        for stored in ["0931", "092959.999999", "09", ""] {
            assert!(!m.matches(stored), "{stored}");
        }
        let m = parse(MatchVr::Time, "09");
        assert!(m.matches("09"));
        assert!(m.matches("095959.9"));
        assert!(!m.matches("10"));
        // Stored "09" is 09:00:00.000000.
        assert!(parse(MatchVr::Time, "0900-0900").matches("09"));
        assert!(!parse(MatchVr::Time, "0901-").matches("09"));
        // Fractions.
        let m = parse(MatchVr::Time, "093000.5");
        assert!(m.matches("093000.5"));
        assert!(m.matches("093000.599999"));
        assert!(m.matches("093000.5999999")); // truncated
        assert!(!m.matches("093000.6"));
        assert!(!m.matches("093000.4"));
    }

    #[test]
    fn time_ranges() {
        let m = parse(MatchVr::Time, "0800-1700");
        assert_eq!(
            m,
            Matcher::Range {
                lo: Some(Instant::Time(8 * HOUR)),
                hi: Some(Instant::Time(17 * HOUR + MINUTE - 1))
            }
        );
        for stored in ["08", "0800", "120000", "1700", "170059.999999"] {
            assert!(m.matches(stored), "{stored}");
        }
        for stored in ["075959.999999", "1701", "23", ""] {
            assert!(!m.matches(stored), "{stored}");
        }
        assert_eq!(m.date_range(), None);
        let m = parse(MatchVr::Time, "-09");
        assert!(m.matches("000000"));
        assert!(m.matches("095959"));
        assert!(!m.matches("10"));
        let m = parse(MatchVr::Time, "2330-");
        assert!(m.matches("235959.999999"));
        assert!(!m.matches("2329"));
        // Within one precision interval, "0930-09" is 09:30 to 09:59:59.999999.
        let m = parse(MatchVr::Time, "0930-09");
        assert!(m.matches("0945"));
        assert!(!m.matches("0915"));
    }

    #[test]
    fn time_errors() {
        for key in [
            "24",
            "0960",
            "093",
            "096000",
            "093061",
            "093000.",
            "093000.1234567",
            "0930.5",
            "09:30",
            "9",
            "0a",
        ] {
            assert!(
                matches!(parse_err(MatchVr::Time, key), MatchError::BadTime(_)),
                "{key}"
            );
        }
        assert!(matches!(
            parse_err(MatchVr::Time, "09*"),
            MatchError::WildcardNotAllowed { what: "time", .. }
        ));
        // 60 is a leap second.
        assert!(parse(MatchVr::Time, "235960").matches("235960"));
    }

    #[test]
    fn date_times() {
        let m = parse(MatchVr::DateTime, "20240101");
        assert!(m.matches("20240101"));
        assert!(m.matches("20240101235959.999999"));
        assert!(!m.matches("20240102"));
        // The stored value is the instant it starts at.
        assert!(m.matches("2024"));
        assert!(!parse(MatchVr::DateTime, "20240102").matches("202401"));
        assert!(parse(MatchVr::DateTime, "2024").matches("20241231235959"));
        assert!(parse(MatchVr::DateTime, "202402").matches("20240229"));
        assert!(!parse(MatchVr::DateTime, "202402").matches("20240301"));
        let m = parse(MatchVr::DateTime, "20240101120000.25");
        assert!(m.matches("20240101120000.25"));
        assert!(!m.matches("20240101120000.26"));
        // Ranges, with years for precision.
        let m = parse(MatchVr::DateTime, "2023-2024");
        assert!(m.matches("20230101"));
        assert!(m.matches("20241231235959.999999"));
        assert!(!m.matches("20250101"));
        assert!(!m.matches("20221231235959"));
        let m = parse(MatchVr::DateTime, "202401011200-");
        assert!(m.matches("20240101120000"));
        assert!(!m.matches("20240101115959.999999"));
        let m = parse(MatchVr::DateTime, "-20240101");
        assert!(m.matches("20240101235959"));
        assert!(!m.matches("20240102"));
    }

    #[test]
    fn date_time_offsets() {
        // Offsets compare in UTC.
        let m = parse(MatchVr::DateTime, "20240101120000+0100");
        assert!(m.matches("20240101110000+0000"));
        assert!(m.matches("20240101060000-0500"));
        assert!(m.matches("20240101110000"));
        assert!(!m.matches("20240101120000"));
        // A negative offset is not a range when a range would be out of order ...
        let m = parse(MatchVr::DateTime, "20240101-0500");
        assert!(matches!(m, Matcher::Single(_)));
        assert!(m.matches("20240101050000"));
        assert!(m.matches("20240102045959"));
        assert!(!m.matches("20240101045959"));
        // ... and ranges may have offsets at both ends.
        let m = parse(MatchVr::DateTime, "20240101000000+0100-20240101000000-0500");
        assert!(matches!(m, Matcher::Range { .. }));
        assert!(m.matches("20231231230000"));
        assert!(m.matches("20240101050000"));
        assert!(!m.matches("20231231225959"));
        assert!(!m.matches("20240101050001"));
        let m = parse(MatchVr::DateTime, "20240101120000+0100-");
        assert!(m.matches("20240101110000"));
        assert!(!m.matches("20240101105959"));
    }

    #[test]
    fn date_time_errors() {
        for key in [
            "2024131",
            "20241301",
            "202401011",
            "20240101+1500",
            "20240101+0160",
            "20240101120000.1234567",
            "2024010112.5",
            "20240101T120000",
            "20240101-2024131",
        ] {
            assert!(
                matches!(
                    parse_err(MatchVr::DateTime, key),
                    MatchError::BadDateTime(_)
                ),
                "{key}"
            );
        }
        // Neither a range in order (year 1300) nor a valid offset (-13:00).
        assert!(matches!(
            parse_err(MatchVr::DateTime, "20240101-1300"),
            MatchError::ReversedRange { .. }
        ));
    }

    #[test]
    fn days_count_one_by_one() {
        assert_eq!(days_from_civil(0, 1, 1), 0);
        assert_eq!(days_from_civil(0, 3, 1), 60);
        assert_eq!(days_from_civil(1970, 1, 1), 719_528);
        let mut previous = days_from_civil(1599, 12, 31);
        for year in 1600..=2400 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    let days = days_from_civil(year, month, day);
                    assert_eq!(days, previous + 1, "{year}-{month}-{day}");
                    previous = days;
                }
            }
        }
    }

    #[test]
    fn date_range_is_for_dates_only() {
        assert_eq!(parse(MatchVr::Time, "0800").date_range(), None);
        assert_eq!(parse(MatchVr::DateTime, "2024-").date_range(), None);
        assert_eq!(parse(MatchVr::Text, "20240101").date_range(), None);
        assert_eq!(Matcher::Universal.date_range(), None);
    }

    #[test]
    fn combined_date_time_is_one_range_not_a_daily_window() {
        let date = parse(MatchVr::Date, "20240101-20240105");
        let time = parse(MatchVr::Time, "0800-1700");
        let Some(c) = combined_date_time(&date, &time) else {
            panic!("ranges of the same form combine");
        };
        assert_eq!(
            Ok(Some(c)),
            CombinedDateTime::parse("20240101-20240105", "0800-1700")
        );
        for (d, t) in [
            ("20240101", "0800"),
            ("20240101", "2300"),
            ("20240102", "00"),
            ("20240103", "0300"),
            ("20240105", "1700"),
            ("20240105", "170059.999999"),
            ("2024.01.03", "03:00:00"),
        ] {
            assert!(c.matches(d, t), "{d} {t}");
        }
        for (d, t) in [
            ("20240101", "075959.999999"),
            ("20231231", "1200"),
            ("20240105", "1701"),
            ("20240106", "0000"),
            ("20240103", ""),
            ("", "1200"),
        ] {
            assert!(!c.matches(d, t), "{d} {t}");
        }
        // Independently, 03:00 on the 3rd would not match.
        assert!(date.matches("20240103") && !time.matches("0300"));
    }

    #[test]
    fn combined_date_time_across_midnight() {
        let c = combined("20240101-20240102", "2200-0200");
        for (d, t) in [
            ("20240101", "22"),
            ("20240101", "235959.999999"),
            ("20240102", "000000"),
            ("20240102", "0200"),
            ("20240102", "020059"),
        ] {
            assert!(c.matches(d, t), "{d} {t}");
        }
        for (d, t) in [
            ("20240101", "2159"),
            ("20240102", "0201"),
            ("20240102", "2300"),
            ("20240101", "0100"),
        ] {
            assert!(!c.matches(d, t), "{d} {t}");
        }
        // Across a month and a year end, with open ends.
        let c = combined("20231231-", "2300-");
        assert!(c.matches("20240101", "0000"));
        assert!(!c.matches("20231231", "2259"));
        let c = combined("-20240301", "-0100");
        assert!(c.matches("20240229", "2359"));
        assert!(c.matches("20240301", "0100"));
        assert!(!c.matches("20240301", "0101"));
        // Reversed once combined.
        assert_eq!(
            CombinedDateTime::parse("20240101-20240101", "2200-0200"),
            Err(MatchError::ReversedRange {
                lo: "20240101 2200".into(),
                hi: "20240101 0200".into()
            })
        );
    }

    #[test]
    fn combined_date_time_needs_ranges_of_the_same_form() {
        let none = |d: &str, t: &str| {
            assert_eq!(CombinedDateTime::parse(d, t), Ok(None), "{d} {t}");
            let (d, t) = (parse(MatchVr::Date, d), parse(MatchVr::Time, t));
            assert_eq!(combined_date_time(&d, &t), None);
        };
        none("20240101-20240105", "0800-");
        none("20240101-", "-1700");
        none("20240101", "0800-1700");
        none("20240101-20240105", "");
        none("20240101-20240105", "*");
        none("", "0800-1700");
        none("20240101", "0800");
        assert!(matches!(
            CombinedDateTime::parse("2024131-", "0800-"),
            Err(MatchError::BadDate(_))
        ));
        assert!(matches!(
            CombinedDateTime::parse("20240101-", "08*-"),
            Err(MatchError::WildcardNotAllowed { .. })
        ));
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            MatchError::BadDate("2024131".into()).to_string(),
            "invalid date \"2024131\": expected a calendar date as YYYYMMDD"
        );
        assert!(parse_err(MatchVr::DateTime, "x")
            .to_string()
            .contains("YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]]"));
        assert_eq!(
            parse_err(MatchVr::Uid, "1.*").to_string(),
            "wild cards (`*`, `?`) cannot be used in UID keys, as in \"1.*\""
        );
    }

    // --- properties -------------------------------------------------------------------------

    /// Wild card matching by plain recursive backtracking: obviously right, exponentially slow.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some(('?', rest)) => !text.is_empty() && reference(rest, &text[1..]),
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    fn string_over(
        alphabet: &'static [char],
        len: std::ops::Range<usize>,
    ) -> BoxedStrategy<String> {
        proptest::collection::vec(proptest::sample::select(alphabet), len)
            .prop_map(|chars| chars.into_iter().collect())
            .boxed()
    }

    fn date() -> impl Strategy<Value = u32> {
        (1900_u32..2100, 1_u32..=12, 1_u32..=31)
            .prop_map(|(y, m, d)| y * 10_000 + m * 100 + d.min(days_in_month(y, m)))
    }

    const PATTERN_CHARS: &[char] = &['a', 'b', 'é', '字', '*', '?'];
    const TEXT_CHARS: &[char] = &['a', 'b', 'é', '字'];
    const CASED_PATTERN_CHARS: &[char] = &['a', 'A', 'é', 'É', '字', '*', '?'];
    const CASED_TEXT_CHARS: &[char] = &['a', 'A', 'é', 'É', '字'];
    const KEY_CHARS: &[char] = &[
        '0', '1', '2', '9', '.', '-', '+', '*', '?', '\\', ',', '=', '^', '"', ' ', 'é', '字', 'a',
    ];

    proptest! {
        #[test]
        fn wildcards_agree_with_reference(
            pattern in string_over(PATTERN_CHARS, 0..9),
            text in string_over(TEXT_CHARS, 0..11),
        ) {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(Pattern::new(&pattern, false).matches(&text), reference(&p, &t));
        }

        #[test]
        fn folded_wildcards_agree_with_reference_on_lowercase(
            pattern in string_over(CASED_PATTERN_CHARS, 0..9),
            text in string_over(CASED_TEXT_CHARS, 0..11),
        ) {
            let p: Vec<char> = pattern.chars().map(fold).collect();
            let t: Vec<char> = text.chars().map(fold).collect();
            prop_assert_eq!(Pattern::new(&pattern, true).matches(&text), reference(&p, &t));
        }

        #[test]
        fn text_wildcard_keys_agree_with_reference(
            pattern in string_over(PATTERN_CHARS, 1..9),
            text in string_over(TEXT_CHARS, 1..11),
        ) {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            let m = parse(MatchVr::Text, &pattern);
            prop_assert_eq!(m.matches(&text), reference(&p, &t));
        }

        #[test]
        fn single_value_matches_itself(value in "[A-Za-z0-9 .^=éß字-]{0,20}") {
            let value = trim_value(&value);
            prop_assume!(!value.is_empty());
            let m = parse(MatchVr::Text, value);
            prop_assert_eq!(&m, &Matcher::Single(Value::Exact(value.to_owned())));
            prop_assert!(m.matches(value));
            let name = parse(MatchVr::PersonName, value);
            prop_assume!(name != Matcher::Universal);
            prop_assert!(name.matches(value));
            prop_assert!(name.matches(&value.to_uppercase()) || value.contains('ß'));
        }

        #[test]
        fn date_range_matches_exactly_the_dates_between(a in date(), b in date(), x in date()) {
            let (lo, hi) = (a.min(b), a.max(b));
            let m = parse(MatchVr::Date, &format!("{lo}-{hi}"));
            prop_assert_eq!(m.matches(&x.to_string()), (lo..=hi).contains(&x));
            prop_assert_eq!(m.date_range(), Some((lo, hi)));
            prop_assert!(m.matches(&lo.to_string()) && m.matches(&hi.to_string()));
            let from = parse(MatchVr::Date, &format!("{lo}-"));
            prop_assert_eq!(from.matches(&x.to_string()), lo <= x);
            let until = parse(MatchVr::Date, &format!("-{hi}"));
            prop_assert_eq!(until.matches(&x.to_string()), x <= hi);
        }

        #[test]
        fn time_range_matches_exactly_the_times_between(
            a in 0_i64..DAY / SECOND,
            b in 0_i64..DAY / SECOND,
            x in 0_i64..DAY / SECOND,
        ) {
            let tm = |s: i64| format!("{:02}{:02}{:02}", s / 3600, s / 60 % 60, s % 60);
            let (lo, hi) = (a.min(b), a.max(b));
            let m = parse(MatchVr::Time, &format!("{}-{}", tm(lo), tm(hi)));
            prop_assert_eq!(m.matches(&tm(x)), (lo..=hi).contains(&x));
        }

        #[test]
        fn parse_never_panics(
            key in prop_oneof![".{0,40}", string_over(KEY_CHARS, 0..30)],
            stored in prop_oneof![".{0,20}", string_over(KEY_CHARS, 0..20)],
            vr in proptest::sample::select(vec![
                MatchVr::Text, MatchVr::PersonName, MatchVr::Uid, MatchVr::Date,
                MatchVr::Time, MatchVr::DateTime, MatchVr::Number,
            ]),
            fuzzy in any::<bool>(),
        ) {
            if let Ok(m) = Matcher::parse(vr, &key, MatchOptions { fuzzy }) {
                let _ = m.matches(&stored);
                let _ = m.matches(&key);
                let _ = m.exact_values();
                let _ = m.date_range();
                let _ = combined_date_time(&m, &m);
            }
            if let Ok(Some(c)) = CombinedDateTime::parse(&key, &stored) {
                let _ = c.matches(&key, &stored);
            }
        }
    }
}
