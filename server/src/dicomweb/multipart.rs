//! Streaming `multipart/related` parsing for DICOMweb STOW-RS.
//!
//! STOW-RS (PS3.18 §8.6, §10.5) carries instances as the parts of a `multipart/related` body
//! (RFC 2387, using RFC 2046 §5.1's syntax). This module holds two things:
//!
//! - [`MediaType`] parses a `Content-Type` value (RFC 7231 §3.1.1.1, with quoted-string
//!   parameters), and [`boundary_of`] takes out and checks its `boundary` parameter.
//! - [`MultipartParser`] is a sans-IO push parser. The caller feeds body chunks as they arrive
//!   and gets [`Event`]s back through a callback. Part data is handed out as slices of the
//!   caller's chunk (no copy). Between chunks the parser keeps only a possible partial
//!   delimiter (at most boundary length + 3 bytes; when it turns out not to be a delimiter it is
//!   handed out as a `Data` slice of its own) and an incomplete part-header block (at most
//!   `part_header_bytes_max` + 4 bytes). Nothing else is buffered, whatever the body's size.
//!
//! The grammar as accepted (strict, as RFC 2046 writes it):
//!
//! - A delimiter is CRLF `--` boundary. The first one may also stand at the very start of the
//!   body. Bytes before it (the preamble) are skipped, up to `preamble_bytes_max`.
//! - A delimiter is followed by optional spaces or tabs and CRLF (a part follows), or by `--`
//!   (the close delimiter; everything after it, the epilogue, is ignored). Anything else is
//!   [`MultipartError::BadDelimiterLine`]: RFC 2046 forbids the boundary at the start of any
//!   line inside a part, so this parser does not try to read such text as data.
//! - Part headers are `Name: value` lines, each ending in CRLF, then an empty line. Line ends
//!   are strictly CRLF (a bare LF is not a line end, and a bare CR or LF inside a line is
//!   refused); obs-fold continuation lines are refused. Names are lowercased, values trimmed of
//!   spaces and tabs; both must be UTF-8 without control characters. No headers at all is fine.
//! - The CRLF that ends the header block may also begin the next delimiter (RFC 2046's
//!   `body-part := MIME-part-headers [CRLF *OCTET]`), so a part whose data would start with
//!   `--boundary` is an empty part.
//! - A close delimiter straight after the opening one gives `End` with no parts; the caller
//!   decides whether an empty body is acceptable.
//!
//! Part numbers in errors count from 1.

use memchr::memmem::Finder;
use std::fmt;

/// Why a media type or a multipart body was refused. The `Display` text is meant to be sent
/// back as the reason of an HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultipartError {
    /// The `Content-Type` value is not a media type; the text says where it went wrong.
    InvalidMediaType(String),
    /// The media type has no `boundary` parameter.
    MissingBoundary,
    /// The `boundary` parameter breaks RFC 2046's rules (1 to 70 bchars, not ending in space).
    BadBoundary,
    /// The body ended before any boundary line.
    NoOpeningBoundary,
    /// More than `preamble_bytes_max` bytes came before the first boundary line.
    PreambleTooLong,
    /// Part `part`'s header block is longer than `part_header_bytes_max`.
    PartHeadersTooLong { part: usize },
    /// Part `part` has a header line that is not `Name: value`.
    BadPartHeader { part: usize, line: String },
    /// A boundary is followed by something other than padding and CRLF, or `--`.
    /// `after_part` is the number of the part before it (0: before the first part).
    BadDelimiterLine { after_part: usize },
    /// The body ended inside part `part`'s headers.
    TruncatedInHeaders { part: usize },
    /// The body ended inside part `part`'s data.
    TruncatedInData { part: usize },
    /// The body ended inside a boundary line, before the close delimiter was complete.
    NoClosingBoundary,
    /// The body has more than `parts_max` parts.
    TooManyParts,
    /// The parser already failed (or its caller stopped it); it reads nothing more.
    Aborted,
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidMediaType(why) => write!(f, "invalid media type: {why}"),
            Self::MissingBoundary => {
                f.write_str("the multipart Content-Type has no boundary parameter")
            }
            Self::BadBoundary => f.write_str(
                "the multipart boundary must be 1 to 70 characters among letters, digits, \
                 space and '()+_,-./:=?, and must not end in a space",
            ),
            Self::NoOpeningBoundary => f.write_str("the body has no opening boundary line"),
            Self::PreambleTooLong => f.write_str(
                "the body does not start with a boundary line (too much text comes before it)",
            ),
            Self::PartHeadersTooLong { part } => {
                write!(f, "the headers of part {part} are too long")
            }
            Self::BadPartHeader { part, line } => {
                write!(f, "part {part} has a malformed header line {line:?}")
            }
            Self::BadDelimiterLine { after_part: 0 } => f.write_str(
                "the opening boundary line is malformed (a boundary must be followed by CRLF \
                 or \"--\")",
            ),
            Self::BadDelimiterLine { after_part } => write!(
                f,
                "the boundary line after part {after_part} is malformed (a boundary must be \
                 followed by CRLF or \"--\")"
            ),
            Self::TruncatedInHeaders { part } => {
                write!(f, "the body ends inside the headers of part {part}")
            }
            Self::TruncatedInData { part } => write!(
                f,
                "the body ends inside the data of part {part}, before the next boundary line"
            ),
            Self::NoClosingBoundary => {
                f.write_str("the body ends without a complete closing boundary line")
            }
            Self::TooManyParts => f.write_str("the body has too many parts"),
            Self::Aborted => f.write_str("multipart parsing had already stopped"),
        }
    }
}

impl std::error::Error for MultipartError {}

/// A parsed media type (RFC 7231 §3.1.1.1), e.g. a `Content-Type` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    /// `type/subtype`, lowercased.
    pub essence: String,
    /// Parameters in their order: lowercased names, unquoted values (case kept).
    pub params: Vec<(String, String)>,
}

impl MediaType {
    /// Parses `type/subtype *(OWS ";" OWS name=value)`, values being quoted strings (with
    /// backslash escapes) or unquoted runs of visible ASCII other than `;`, `"` and `\` (a
    /// superset of RFC 7231's token, as clients send `type=application/dicom`). Empty
    /// parameters (`;;`, a trailing `;`) are skipped.
    pub fn parse(header_value: &str) -> Result<MediaType, MultipartError> {
        let bytes = header_value.as_bytes();
        let fail = |why: &str| {
            MultipartError::InvalidMediaType(format!("{:?}: {why}", snippet(header_value)))
        };
        let mut i = skip_ows(bytes, 0);
        let kind = token(bytes, &mut i).ok_or_else(|| fail("expected a type"))?;
        if bytes.get(i) != Some(&b'/') {
            return Err(fail("expected \"/\" after the type"));
        }
        i += 1;
        let subtype = token(bytes, &mut i).ok_or_else(|| fail("expected a subtype"))?;
        let essence = format!("{kind}/{subtype}").to_ascii_lowercase();
        let mut params = Vec::new();
        loop {
            i = skip_ows(bytes, i);
            match bytes.get(i) {
                None => break,
                Some(b';') => i += 1,
                Some(_) => return Err(fail("expected \";\" before a parameter")),
            }
            i = skip_ows(bytes, i);
            if matches!(bytes.get(i), None | Some(b';')) {
                continue;
            }
            let name = token(bytes, &mut i).ok_or_else(|| fail("expected a parameter name"))?;
            if bytes.get(i) != Some(&b'=') {
                return Err(fail("expected \"=\" after a parameter name"));
            }
            i += 1;
            let value = if bytes.get(i) == Some(&b'"') {
                quoted_string(bytes, &mut i).ok_or_else(|| fail("bad quoted string"))?
            } else {
                unquoted_value(bytes, &mut i)
                    .ok_or_else(|| fail("expected a parameter value"))?
                    .to_owned()
            };
            params.push((name.to_ascii_lowercase(), value));
        }
        Ok(MediaType { essence, params })
    }

    /// The value of the first parameter called `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The `boundary` parameter of a multipart media type, checked against RFC 2046: 1 to 70
/// characters from `bchars`, not ending in a space, and given only once.
pub fn boundary_of(content_type: &MediaType) -> Result<String, MultipartError> {
    let mut found = content_type
        .params
        .iter()
        .filter(|(n, _)| n == "boundary")
        .map(|(_, v)| v);
    let boundary = found.next().ok_or(MultipartError::MissingBoundary)?;
    let ok = found.next().is_none()
        && (1..=70).contains(&boundary.len())
        && boundary.bytes().all(is_bchar)
        && !boundary.ends_with(' ');
    if ok {
        Ok(boundary.clone())
    } else {
        Err(MultipartError::BadBoundary)
    }
}

fn is_bchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn skip_ows(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// A non-empty token at `*i`; advances past it.
fn token<'a>(bytes: &'a [u8], i: &mut usize) -> Option<&'a str> {
    let start = *i;
    while bytes.get(*i).is_some_and(|&b| is_tchar(b)) {
        *i += 1;
    }
    if *i == start {
        return None;
    }
    // Tokens are ASCII, so this cannot fail.
    std::str::from_utf8(&bytes[start..*i]).ok()
}

/// An unquoted parameter value at `*i`; advances past it. RFC 7231 wants a token here, but
/// clients send values such as `type=application/dicom` unquoted, so any visible ASCII but
/// `;`, `"` and `\` is taken.
fn unquoted_value<'a>(bytes: &'a [u8], i: &mut usize) -> Option<&'a str> {
    let start = *i;
    while bytes
        .get(*i)
        .is_some_and(|&b| b.is_ascii_graphic() && !matches!(b, b';' | b'"' | b'\\'))
    {
        *i += 1;
    }
    if *i == start {
        return None;
    }
    std::str::from_utf8(&bytes[start..*i]).ok()
}

/// A quoted string starting at the `"` at `*i`, unescaped; advances past the closing quote.
fn quoted_string(bytes: &[u8], i: &mut usize) -> Option<String> {
    let mut out = Vec::new();
    let mut j = *i + 1;
    loop {
        let b = *bytes.get(j)?;
        j += 1;
        match b {
            b'"' => break,
            b'\\' => {
                let escaped = *bytes.get(j)?;
                j += 1;
                if escaped != b'\t' && (escaped < 0x20 || escaped == 0x7f) {
                    return None;
                }
                out.push(escaped);
            }
            b'\t' | 0x20..=0x7e | 0x80..=0xff => out.push(b),
            _ => return None,
        }
    }
    *i = j;
    String::from_utf8(out).ok()
}

/// At most 100 characters of `text`, for error messages.
fn snippet(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Bounds on what a [`MultipartParser`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultipartLimits {
    /// Longest part-header block, in bytes (without the empty line that ends it).
    pub part_header_bytes_max: usize,
    /// Most parts in one body.
    pub parts_max: usize,
    /// Longest preamble (bytes before the first boundary line).
    pub preamble_bytes_max: usize,
}

impl Default for MultipartLimits {
    fn default() -> Self {
        MultipartLimits {
            part_header_bytes_max: 16 * 1024,
            parts_max: 100_000,
            preamble_bytes_max: 64 * 1024,
        }
    }
}

/// What the parser found, in body order: for each part `PartStart`, any number of non-empty
/// `Data` slices, `PartEnd`; then `End` once the close delimiter is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A part's header block was read: names lowercased, values trimmed, in their order.
    PartStart { headers: Vec<(String, String)> },
    /// The next bytes of the current part's data.
    Data(&'a [u8]),
    /// The current part's data is complete.
    PartEnd,
    /// The close delimiter was read; the rest of the body is ignored.
    End,
}

/// A failure of [`MultipartParser::feed`]: the body was malformed, or the event callback
/// refused an event (its error is handed back unchanged).
#[derive(Debug)]
pub enum ParseOrSink<E> {
    Parse(MultipartError),
    Sink(E),
}

impl<E> From<MultipartError> for ParseOrSink<E> {
    fn from(error: MultipartError) -> Self {
        ParseOrSink::Parse(error)
    }
}

impl<E: fmt::Display> fmt::Display for ParseOrSink<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseOrSink::Parse(error) => error.fmt(f),
            ParseOrSink::Sink(error) => error.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ParseOrSink<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ParseOrSink::Parse(error) => Some(error),
            ParseOrSink::Sink(error) => Some(error),
        }
    }
}

/// Where the parser is in the body.
#[derive(Debug)]
enum State {
    /// Before the first delimiter.
    Preamble,
    /// Just after a delimiter (CRLF "--" boundary), reading the rest of its line.
    Delimiter(DelimiterStep),
    /// Reading a part's header block.
    Headers,
    /// Reading a part's data.
    Data,
    /// After the close delimiter.
    Epilogue,
    /// A parse error, or the callback refused an event.
    Failed(MultipartError),
}

#[derive(Debug, Clone, Copy)]
enum DelimiterStep {
    /// Right after the boundary.
    Start,
    /// After one `-`; a second one closes.
    Dash,
    /// Inside spaces and tabs.
    Padding,
    /// After CR; LF must follow.
    Lf,
}

/// Sans-IO streaming parser of a `multipart/related` body; see the module documentation.
#[derive(Debug)]
pub struct MultipartParser {
    /// CRLF "--" boundary.
    delimiter: Vec<u8>,
    finder: Finder<'static>,
    limits: MultipartLimits,
    state: State,
    /// The end of the input seen so far when it is a proper prefix of `delimiter` (in the
    /// preamble and data states). Its first `carry_virtual` bytes are not body content: the
    /// CRLF assumed before the body's start, or the CRLF ending a header block.
    carry: Vec<u8>,
    carry_virtual: usize,
    /// An incomplete part-header block.
    header_buf: Vec<u8>,
    preamble_len: usize,
    parts_started: usize,
    /// `PartStart` was sent and `PartEnd` not yet.
    in_part: bool,
    #[cfg(test)]
    buffered_peak: usize,
}

impl MultipartParser {
    /// A parser for a body with `boundary` (normally the output of [`boundary_of`]).
    ///
    /// # Panics
    ///
    /// If `boundary` contains a CR, which [`boundary_of`] never returns.
    pub fn new(boundary: &str, limits: MultipartLimits) -> MultipartParser {
        // The delimiter search relies on CR appearing in the delimiter only at its start.
        assert!(
            !boundary.contains('\r'),
            "a multipart boundary cannot hold CR"
        );
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        let finder = Finder::new(&delimiter).into_owned();
        MultipartParser {
            delimiter,
            finder,
            limits,
            state: State::Preamble,
            // The first delimiter may stand at the very start of the body.
            carry: b"\r\n".to_vec(),
            carry_virtual: 2,
            header_buf: Vec::new(),
            preamble_len: 0,
            parts_started: 0,
            in_part: false,
            #[cfg(test)]
            buffered_peak: 2,
        }
    }

    /// How many parts have begun (their delimiter line was read), including one in progress.
    pub fn parts_started(&self) -> usize {
        self.parts_started
    }

    /// Feeds the next chunk of the body, calling `on_event` for each event it completes.
    /// `Data` events borrow from `chunk` except for held-back bytes that turned out not to be
    /// a delimiter. An error from `on_event` stops parsing at once and is returned as
    /// [`ParseOrSink::Sink`]. After any error the parser is spent: further calls return
    /// [`MultipartError::Aborted`] (or the same parse error). Bytes after the close delimiter
    /// are ignored.
    pub fn feed<E, F>(&mut self, chunk: &[u8], mut on_event: F) -> Result<(), ParseOrSink<E>>
    where
        F: FnMut(Event<'_>) -> Result<(), E>,
    {
        if let State::Failed(error) = &self.state {
            return Err(ParseOrSink::Parse(error.clone()));
        }
        let result = self.run(chunk, &mut on_event);
        if let Err(error) = &result {
            self.state = State::Failed(match error {
                ParseOrSink::Parse(error) => error.clone(),
                ParseOrSink::Sink(_) => MultipartError::Aborted,
            });
        }
        result
    }

    /// The body ended. `Ok` if the close delimiter was read; otherwise says what was missing.
    pub fn finish(&mut self) -> Result<(), MultipartError> {
        let part = self.parts_started;
        let error = match &self.state {
            State::Epilogue => return Ok(()),
            State::Failed(error) => return Err(error.clone()),
            State::Preamble => MultipartError::NoOpeningBoundary,
            State::Delimiter(_) => MultipartError::NoClosingBoundary,
            State::Headers => MultipartError::TruncatedInHeaders { part },
            State::Data => MultipartError::TruncatedInData { part },
        };
        self.state = State::Failed(error.clone());
        Err(error)
    }

    /// The most bytes held inside the parser at any one time.
    #[cfg(test)]
    fn buffered_bytes_peak(&self) -> usize {
        self.buffered_peak
    }

    fn note_buffered(&mut self) {
        #[cfg(test)]
        {
            self.buffered_peak = self
                .buffered_peak
                .max(self.carry.len() + self.header_buf.len());
        }
    }

    fn run<E, F>(&mut self, chunk: &[u8], on_event: &mut F) -> Result<(), ParseOrSink<E>>
    where
        F: FnMut(Event<'_>) -> Result<(), E>,
    {
        let mut rest = chunk;
        while !rest.is_empty() {
            rest = match self.state {
                State::Preamble | State::Data => self.scan(rest, on_event)?,
                State::Delimiter(step) => self.delimiter_line(rest, step, on_event)?,
                State::Headers => self.headers(rest, on_event)?,
                State::Epilogue => return Ok(()),
                State::Failed(_) => unreachable!("feed checks for failure first"),
            };
        }
        Ok(())
    }

    /// Preamble or data: finds the next delimiter, handing out (or skipping) what precedes it.
    fn scan<'c, E, F>(
        &mut self,
        rest: &'c [u8],
        on_event: &mut F,
    ) -> Result<&'c [u8], ParseOrSink<E>>
    where
        F: FnMut(Event<'_>) -> Result<(), E>,
    {
        let delimiter_len = self.delimiter.len();
        if !self.carry.is_empty() {
            // The carry is a proper prefix of the delimiter. CR appears in the delimiter only at
            // its start, so a delimiter can start inside the carry only at the carry's start.
            let held = self.carry.len();
            let n = (delimiter_len - held).min(rest.len());
            if rest[..n] == self.delimiter[held..held + n] {
                if held + n == delimiter_len {
                    self.carry.clear();
                    self.carry_virtual = 0;
                    self.state = State::Delimiter(DelimiterStep::Start);
                    return Ok(&rest[n..]);
                }
                self.carry.extend_from_slice(rest);
                self.note_buffered();
                return Ok(&[]);
            }
            let carry = std::mem::take(&mut self.carry);
            let result = self.content(&carry[self.carry_virtual..], on_event);
            self.carry = carry;
            self.carry.clear();
            self.carry_virtual = 0;
            result?;
        }
        if let Some(at) = self.finder.find(rest) {
            self.content(&rest[..at], on_event)?;
            self.state = State::Delimiter(DelimiterStep::Start);
            return Ok(&rest[at + delimiter_len..]);
        }
        // Hold back the longest end of `rest` that may begin a delimiter: it starts at a CR.
        let tail = rest.len().saturating_sub(delimiter_len - 1);
        let hold = memchr::memrchr(b'\r', &rest[tail..])
            .map(|i| tail + i)
            .filter(|&at| self.delimiter.starts_with(&rest[at..]))
            .unwrap_or(rest.len());
        self.content(&rest[..hold], on_event)?;
        self.carry.extend_from_slice(&rest[hold..]);
        self.note_buffered();
        Ok(&[])
    }

    /// Bytes known not to be part of a delimiter: part data, or skipped preamble.
    fn content<E, F>(&mut self, bytes: &[u8], on_event: &mut F) -> Result<(), ParseOrSink<E>>
    where
        F: FnMut(Event<'_>) -> Result<(), E>,
    {
        if bytes.is_empty() {
            return Ok(());
        }
        if let State::Preamble = self.state {
            self.preamble_len += bytes.len();
            if self.preamble_len > self.limits.preamble_bytes_max {
                return Err(MultipartError::PreambleTooLong.into());
            }
            return Ok(());
        }
        on_event(Event::Data(bytes)).map_err(ParseOrSink::Sink)
    }

    /// The rest of a delimiter line: padding and CRLF, or `--`.
    fn delimiter_line<'c, E, F>(
        &mut self,
        rest: &'c [u8],
        mut step: DelimiterStep,
        on_event: &mut F,
    ) -> Result<&'c [u8], ParseOrSink<E>>
    where
        F: FnMut(Event<'_>) -> Result<(), E>,
    {
        use DelimiterStep::*;
        for (i, &b) in rest.iter().enumerate() {
            step = match (step, b) {
                (Start, b'-') => Dash,
                (Start | Padding, b' ' | b'\t') => Padding,
                (Start | Padding, b'\r') => Lf,
                (Dash, b'-') => {
                    self.end_part(on_event)?;
                    on_event(Event::End).map_err(ParseOrSink::Sink)?;
                    self.state = State::Epilogue;
                    return Ok(&[]);
                }
                (Lf, b'\n') => {
                    self.end_part(on_event)?;
                    if self.parts_started >= self.limits.parts_max {
                        return Err(MultipartError::TooManyParts.into());
                    }
                    self.parts_started += 1;
                    self.header_buf.clear();
                    self.state = State::Headers;
                    return Ok(&rest[i + 1..]);
                }
                _ => {
                    let after_part = self.parts_started;
                    return Err(MultipartError::BadDelimiterLine { after_part }.into());
                }
            };
        }
        self.state = State::Delimiter(step);
        Ok(&[])
    }

    fn end_part<E, F>(&mut self, on_event: &mut F) -> Result<(), ParseOrSink<E>>
    where
        F: FnMut(Event<'_>) -> Result<(), E>,
    {
        if self.in_part {
            self.in_part = false;
            on_event(Event::PartEnd).map_err(ParseOrSink::Sink)?;
        }
        Ok(())
    }

    /// A part's header block, ended by an empty line.
    fn headers<'c, E, F>(
        &mut self,
        rest: &'c [u8],
        on_event: &mut F,
    ) -> Result<&'c [u8], ParseOrSink<E>>
    where
        F: FnMut(Event<'_>) -> Result<(), E>,
    {
        let max = self.limits.part_header_bytes_max;
        let part = self.parts_started;
        let too_long = || ParseOrSink::Parse(MultipartError::PartHeadersTooLong { part });
        if self.header_buf.is_empty() {
            // Usually the whole block is in this chunk: parse it from there.
            if let Some((block_len, end)) = header_block_end(rest, 0) {
                if block_len > max {
                    return Err(too_long());
                }
                let headers = parse_header_block(&rest[..block_len], part)?;
                self.start_part(headers, on_event)?;
                return Ok(&rest[end..]);
            }
        }
        // A terminator starting within `max` bytes ends within `max + 4`: buffer no more.
        let cap = max.saturating_add(4);
        let old = self.header_buf.len();
        let take = (cap - old).min(rest.len());
        self.header_buf.extend_from_slice(&rest[..take]);
        self.note_buffered();
        match header_block_end(&self.header_buf, old.saturating_sub(3)) {
            Some((block_len, end)) => {
                if block_len > max {
                    return Err(too_long());
                }
                let headers = parse_header_block(&self.header_buf[..block_len], part)?;
                self.header_buf.clear();
                self.start_part(headers, on_event)?;
                Ok(&rest[end - old..])
            }
            None if self.header_buf.len() >= cap => Err(too_long()),
            None => Ok(&rest[take..]),
        }
    }

    fn start_part<E, F>(
        &mut self,
        headers: Vec<(String, String)>,
        on_event: &mut F,
    ) -> Result<(), ParseOrSink<E>>
    where
        F: FnMut(Event<'_>) -> Result<(), E>,
    {
        self.in_part = true;
        self.state = State::Data;
        // The CRLF that ended the header block may also begin the next delimiter.
        self.carry.clear();
        self.carry.extend_from_slice(b"\r\n");
        self.carry_virtual = 2;
        self.note_buffered();
        on_event(Event::PartStart { headers }).map_err(ParseOrSink::Sink)
    }
}

/// Where a header block in `buf` ends: `(block length, length including the empty line)`.
/// The block starts at `buf[0]`; the search for its CRLF CRLF starts at `from`.
fn header_block_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    if buf.starts_with(b"\r\n") {
        return Some((0, 2));
    }
    memchr::memmem::find(&buf[from..], b"\r\n\r\n").map(|at| (from + at, from + at + 4))
}

/// Parses `Name: value` lines separated by CRLF.
fn parse_header_block(block: &[u8], part: usize) -> Result<Vec<(String, String)>, MultipartError> {
    if block.is_empty() {
        return Ok(Vec::new());
    }
    let mut headers = Vec::new();
    let mut rest = block;
    while !rest.is_empty() {
        let (line, tail) = match memchr::memmem::find(rest, b"\r\n") {
            Some(at) => (&rest[..at], &rest[at + 2..]),
            None => (rest, &[][..]),
        };
        rest = tail;
        let bad = || MultipartError::BadPartHeader {
            part,
            line: snippet(&String::from_utf8_lossy(line)),
        };
        let colon = memchr::memchr(b':', line).ok_or_else(bad)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(bad());
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(bad());
        }
        let value = std::str::from_utf8(value).map_err(|_| bad())?;
        let name = std::str::from_utf8(name).map_err(|_| bad())?;
        headers.push((
            name.to_ascii_lowercase(),
            value.trim_matches([' ', '\t']).to_owned(),
        ));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::convert::Infallible;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Part {
        headers: Vec<(String, String)>,
        data: Vec<u8>,
    }

    /// Collects events, checking that they come in a well-formed order.
    #[derive(Default)]
    struct Collector {
        parts: Vec<Part>,
        open: bool,
        ended: bool,
        data_events: usize,
    }

    impl Collector {
        fn on(&mut self, event: Event<'_>) -> Result<(), Infallible> {
            assert!(!self.ended, "event after End: {event:?}");
            match event {
                Event::PartStart { headers } => {
                    assert!(!self.open);
                    self.open = true;
                    self.parts.push(Part {
                        headers,
                        data: Vec::new(),
                    });
                }
                Event::Data(data) => {
                    assert!(self.open && !data.is_empty());
                    self.data_events += 1;
                    self.parts.last_mut().unwrap().data.extend_from_slice(data);
                }
                Event::PartEnd => {
                    assert!(self.open);
                    self.open = false;
                }
                Event::End => {
                    assert!(!self.open);
                    self.ended = true;
                }
            }
            Ok(())
        }
    }

    fn run_chunks(
        boundary: &str,
        limits: MultipartLimits,
        chunks: &[&[u8]],
    ) -> (Result<Vec<Part>, MultipartError>, MultipartParser) {
        let mut parser = MultipartParser::new(boundary, limits);
        let mut collector = Collector::default();
        for chunk in chunks {
            if let Err(error) = parser.feed(chunk, |e| collector.on(e)) {
                let error = match error {
                    ParseOrSink::Parse(error) => error,
                    ParseOrSink::Sink(never) => match never {},
                };
                return (Err(error), parser);
            }
        }
        let result = parser.finish().map(|()| {
            assert!(collector.ended);
            collector.parts
        });
        (result, parser)
    }

    fn parse_with(
        boundary: &str,
        limits: MultipartLimits,
        body: &[u8],
    ) -> Result<Vec<Part>, MultipartError> {
        let whole = run_chunks(boundary, limits, &[body]).0;
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(
            run_chunks(boundary, limits, &bytewise).0,
            whole,
            "1-byte chunks differ"
        );
        whole
    }

    fn parse(boundary: &str, body: &[u8]) -> Result<Vec<Part>, MultipartError> {
        parse_with(boundary, MultipartLimits::default(), body)
    }

    fn part(headers: &[(&str, &str)], data: &[u8]) -> Part {
        Part {
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn two_parts_are_read() {
        let body = b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--XyZ\r\n\
                     Content-Type: application/dicom\r\n\r\nsecond\r\n--XyZ--\r\n";
        let ct = [("content-type", "application/dicom")];
        assert_eq!(
            parse("XyZ", body),
            Ok(vec![part(&ct, b"first"), part(&ct, b"second")])
        );
    }

    #[test]
    fn the_first_boundary_may_follow_a_preamble() {
        let at_start = parse("b", b"--b\r\n\r\nx\r\n--b--");
        assert_eq!(at_start, Ok(vec![part(&[], b"x")]));
        assert_eq!(parse("b", b"\r\n--b\r\n\r\nx\r\n--b--"), at_start);
        assert_eq!(
            parse("b", b"preamble --b\r\n--b\r\n\r\nx\r\n--b--"),
            at_start
        );
        assert_eq!(parse("b", b"\r\r\n\r\n--b\r\n\r\nx\r\n--b--"), at_start);
    }

    #[test]
    fn padding_epilogue_and_text_after_the_close_are_ignored() {
        let body = b"--b \t\r\n\r\nx\r\n--b\t\r\n\r\ny\r\n--b--  epilogue\r\n--b\r\ngarbage";
        assert_eq!(parse("b", body), Ok(vec![part(&[], b"x"), part(&[], b"y")]));
    }

    #[test]
    fn data_may_hold_the_boundary_without_crlf_and_crlf_without_the_boundary() {
        let data = b"a--b\r\n-b\r\n--\r\n--c\r\n\r\n\r--b\n--b\r\n";
        let mut body = b"--b\r\n\r\n".to_vec();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n--b--");
        assert_eq!(parse("b", &body), Ok(vec![part(&[], data)]));
    }

    #[test]
    fn empty_parts_are_allowed() {
        let body = b"--b\r\n\r\n\r\n--b\r\nX: 1\r\n\r\n\r\n--b\r\nX: 2\r\n\r\n--b--";
        assert_eq!(
            parse("b", body),
            Ok(vec![
                part(&[], b""),
                part(&[("x", "1")], b""),
                part(&[("x", "2")], b"")
            ])
        );
        assert_eq!(parse("b", b"--b--"), Ok(vec![]));
    }

    #[test]
    fn header_names_are_lowercased_and_values_trimmed() {
        let body =
            b"--b\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n\
                     CONTENT-LOCATION:  /x y \t\r\nx-Empty:\r\n\r\nd\r\n--b--";
        let parts = parse("b", body).unwrap();
        let headers = &parts[0].headers;
        assert_eq!(
            headers,
            &part(
                &[
                    (
                        "content-type",
                        "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
                    ),
                    ("content-location", "/x y"),
                    ("x-empty", ""),
                ],
                b""
            )
            .headers
        );
        let ct = MediaType::parse(&headers[0].1).unwrap();
        assert_eq!(ct.essence, "application/dicom");
        assert_eq!(ct.param("Transfer-Syntax"), Some("1.2.840.10008.1.2.1"));
    }

    #[test]
    fn data_borrows_from_the_chunk() {
        let body = b"--b\r\n\r\nsome data here\r\n--b\r\n\r\nmore\r\n--b--";
        let mut parser = MultipartParser::new("b", MultipartLimits::default());
        let range = body.as_ptr_range();
        let mut slices = Vec::new();
        parser
            .feed(body, |e| {
                if let Event::Data(d) = e {
                    assert!(range.contains(&d.as_ptr()));
                    slices.push(d.to_vec());
                }
                Ok::<(), Infallible>(())
            })
            .unwrap();
        assert_eq!(slices, vec![b"some data here".to_vec(), b"more".to_vec()]);
        parser.finish().unwrap();
    }

    #[test]
    fn held_back_bytes_come_out_as_their_own_slice() {
        let mut parser = MultipartParser::new("bnd", MultipartLimits::default());
        let mut seen = Vec::new();
        let mut feed = |parser: &mut MultipartParser, chunk: &[u8]| {
            parser
                .feed(chunk, |e| {
                    if let Event::Data(d) = e {
                        seen.push(d.to_vec());
                    }
                    Ok::<(), Infallible>(())
                })
                .unwrap();
        };
        feed(&mut parser, b"--bnd\r\n\r\nabc\r\n--bn");
        feed(&mut parser, b"X tail\r\n--bnd--");
        parser.finish().unwrap();
        assert_eq!(
            seen,
            vec![b"abc".to_vec(), b"\r\n--bn".to_vec(), b"X tail".to_vec()]
        );
    }

    #[test]
    fn media_types_parse() {
        let ct = MediaType::parse(
            " MULTIPART/Related ; type=\"application/dicom\";Boundary=\"a'()+_,-./:=? b\" ;; ",
        )
        .unwrap();
        assert_eq!(ct.essence, "multipart/related");
        assert_eq!(ct.param("type"), Some("application/dicom"));
        assert_eq!(ct.param("BOUNDARY"), Some("a'()+_,-./:=? b"));
        assert_eq!(boundary_of(&ct).as_deref(), Ok("a'()+_,-./:=? b"));
        let unquoted =
            MediaType::parse("multipart/related; type=application/dicom; boundary=a:b=").unwrap();
        assert_eq!(unquoted.param("type"), Some("application/dicom"));
        assert_eq!(boundary_of(&unquoted).as_deref(), Ok("a:b="));
        let escaped = MediaType::parse(r#"a/b; x="q\"\\z"; y=Tok"#).unwrap();
        assert_eq!(
            escaped.params,
            vec![("x".into(), r#"q"\z"#.into()), ("y".into(), "Tok".into())]
        );
        let body = b"--a'()+_,-./:=? b\r\n\r\nx\r\n--a'()+_,-./:=? b--";
        assert_eq!(parse("a'()+_,-./:=? b", body), Ok(vec![part(&[], b"x")]));
    }

    #[test]
    fn bad_media_types_and_boundaries_are_refused() {
        for bad in [
            "",
            "multipart",
            "multipart/",
            "multipart/related; boundary",
            "multipart/related; boundary=",
            "multipart/related boundary=x",
            "multipart/related; boundary = x",
            "a/b; x=\"unterminated",
            "a/b; x=\"ctl\u{1}\"",
            "a/b; x=tok en",
            "a/b; x=a\\b",
            "a/b; x=a\"b\"",
        ] {
            let result = MediaType::parse(bad);
            assert!(
                matches!(result, Err(MultipartError::InvalidMediaType(_))),
                "{bad:?}: {result:?}"
            );
        }
        let boundary = |ct: &str| boundary_of(&MediaType::parse(ct).unwrap());
        assert_eq!(
            boundary("multipart/related; type=application/dicom"),
            Err(MultipartError::MissingBoundary)
        );
        let long = format!("multipart/related; boundary={}", "a".repeat(71));
        assert_eq!(boundary(&long), Err(MultipartError::BadBoundary));
        assert!(boundary(&long.replace(&"a".repeat(71), &"a".repeat(70))).is_ok());
        for bad in [
            "boundary=\"\"",
            "boundary=a@b",
            "boundary=\"ab \"",
            "boundary=\"a\\\"b\"",
            "boundary=a; boundary=b",
        ] {
            let ct = format!("multipart/related; {bad}");
            assert_eq!(boundary(&ct), Err(MultipartError::BadBoundary), "{ct}");
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        use MultipartError::*;
        let cases: &[(&[u8], MultipartError)] = &[
            (b"", NoOpeningBoundary),
            (b"no boundary here --b", NoOpeningBoundary),
            (
                b"--bX\r\n\r\nx\r\n--b--",
                BadDelimiterLine { after_part: 0 },
            ),
            (b"--b \r\n", TruncatedInHeaders { part: 1 }),
            (
                b"--b\r\nContent-Type: x\r\n",
                TruncatedInHeaders { part: 1 },
            ),
            (b"--b\r\n\r\ndata", TruncatedInData { part: 1 }),
            (b"--b\r\n\r\ndata\r\n--", TruncatedInData { part: 1 }),
            (
                b"--b\r\n\r\ndata\r\n--bz",
                BadDelimiterLine { after_part: 1 },
            ),
            (
                b"--b\r\n\r\ndata\r\n--b-x",
                BadDelimiterLine { after_part: 1 },
            ),
            (
                b"--b\r\n\r\ndata\r\n--b \rx",
                BadDelimiterLine { after_part: 1 },
            ),
            (b"--b\r\n\r\ndata\r\n--b", NoClosingBoundary),
            (b"--b\r\n\r\ndata\r\n--b-", NoClosingBoundary),
            (
                b"--b\r\n\r\ndata\r\n--b\r\n\r\nmore",
                TruncatedInData { part: 2 },
            ),
            (b"--b", NoClosingBoundary),
        ];
        for (body, expected) in cases {
            assert_eq!(
                parse("b", body).as_ref(),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn malformed_part_headers_are_refused() {
        for (line, shown) in [
            (&b"NoColonHere"[..], "NoColonHere"),
            (b" folded: x", " folded: x"),
            (b"Bad Name: x", "Bad Name: x"),
            (b": no name", ": no name"),
            (b"Ctl: a\x01b", "Ctl: a\u{1}b"),
            (b"Lf: a\nb: c", "Lf: a\nb: c"),
            (b"Cr: a\rb", "Cr: a\rb"),
            (b"Latin: \xe9", "Latin: \u{fffd}"),
        ] {
            let mut body = b"--b\r\n\r\nfirst\r\n--b\r\nA: 1\r\n".to_vec();
            body.extend_from_slice(line);
            body.extend_from_slice(b"\r\n\r\nx\r\n--b--");
            let expected = MultipartError::BadPartHeader {
                part: 2,
                line: shown.to_owned(),
            };
            assert_eq!(parse("b", &body), Err(expected));
        }
    }

    #[test]
    fn limits_are_enforced() {
        let limits = MultipartLimits {
            part_header_bytes_max: 16,
            parts_max: 2,
            preamble_bytes_max: 10,
        };
        assert_eq!(parse_with("b", limits, b"0123456789\r\n--b--"), Ok(vec![]));
        assert_eq!(
            parse_with("b", limits, b"0123456789A\r\n--b--"),
            Err(MultipartError::PreambleTooLong)
        );
        assert_eq!(
            parse_with("b", limits, &[b'x'; 1000]),
            Err(MultipartError::PreambleTooLong)
        );
        let ok = b"--b\r\nX: 0123456789abc\r\n\r\nd\r\n--b--"; // 16-byte header block
        assert_eq!(
            parse_with("b", limits, ok),
            Ok(vec![part(&[("x", "0123456789abc")], b"d")])
        );
        let long = b"--b\r\nX: 0123456789abcd\r\n\r\nd\r\n--b--";
        assert_eq!(
            parse_with("b", limits, long),
            Err(MultipartError::PartHeadersTooLong { part: 1 })
        );
        let endless = [&b"--b\r\n"[..], &[b'x'; 100]].concat();
        assert_eq!(
            parse_with("b", limits, &endless),
            Err(MultipartError::PartHeadersTooLong { part: 1 })
        );
        let two = b"--b\r\n\r\n1\r\n--b\r\n\r\n2\r\n--b--";
        assert_eq!(parse_with("b", limits, two).map(|p| p.len()), Ok(2));
        let three = b"--b\r\n\r\n1\r\n--b\r\n\r\n2\r\n--b\r\n\r\n3\r\n--b--";
        assert_eq!(
            parse_with("b", limits, three),
            Err(MultipartError::TooManyParts)
        );
    }

    #[test]
    fn a_refusing_callback_stops_the_parser() {
        let body = b"--b\r\n\r\none\r\n--b\r\n\r\ntwo\r\n--b--";
        let mut parser = MultipartParser::new("b", MultipartLimits::default());
        let mut events = 0;
        let result = parser.feed(body, |e| {
            events += 1;
            match e {
                Event::Data(_) => Err("refused"),
                _ => Ok(()),
            }
        });
        assert!(matches!(result, Err(ParseOrSink::Sink("refused"))));
        assert_eq!(events, 2);
        assert_eq!(parser.parts_started(), 1);
        let again = parser.feed(b"more", |_| Ok::<(), &str>(()));
        assert!(matches!(
            again,
            Err(ParseOrSink::Parse(MultipartError::Aborted))
        ));
        assert_eq!(parser.finish(), Err(MultipartError::Aborted));
    }

    #[test]
    fn errors_read_well() {
        let error = MultipartError::BadPartHeader {
            part: 2,
            line: "oops".into(),
        };
        assert_eq!(
            error.to_string(),
            "part 2 has a malformed header line \"oops\""
        );
        let error = MultipartError::TruncatedInData { part: 3 };
        assert!(error.to_string().contains("part 3"));
    }

    fn boundary_strategy() -> impl Strategy<Value = String> {
        const BCHARS: &[u8] = b"0123456789abcXYZ'()+_,-./:=? ";
        prop::collection::vec(prop::sample::select(BCHARS), 1..=70).prop_map(|mut b| {
            if b.last() == Some(&b' ') {
                *b.last_mut().unwrap() = b'z';
            }
            String::from_utf8(b).unwrap()
        })
    }

    /// Bytes rich in CR, LF, dashes and pieces of the boundary.
    fn bytes_strategy(boundary: String, len: usize) -> impl Strategy<Value = Vec<u8>> {
        let pieces = prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..8),
            1 => Just(b"\r\n".to_vec()),
            1 => Just(b"--".to_vec()),
            1 => Just(b"\r".to_vec()),
            1 => Just(b"\n".to_vec()),
            1 => Just(boundary.clone().into_bytes()),
            1 => (0..=boundary.len()).prop_map(move |n| boundary.as_bytes()[..n].to_vec()),
        ];
        prop::collection::vec(pieces, 0..len).prop_map(|p| p.concat())
    }

    fn split_by<'a>(body: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = body;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            chunks.push(chunk);
            rest = tail;
        }
        chunks
    }

    type Generated = (
        String,
        Vec<(Vec<(String, String)>, Vec<u8>)>,
        Vec<u8>,
        Vec<u8>,
        String,
    );

    fn body_strategy() -> impl Strategy<Value = Generated> {
        boundary_strategy().prop_flat_map(|boundary| {
            let header = (
                "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}",
                "[ \t]{0,2}[ -~]{0,20}[ \t]{0,2}",
            );
            let part = (
                prop::collection::vec(header, 0..4),
                bytes_strategy(boundary.clone(), 40),
            );
            (
                Just(boundary.clone()),
                prop::collection::vec(part, 0..5),
                bytes_strategy(boundary.clone(), 6),
                bytes_strategy(boundary, 6),
                "[ \t]{0,3}",
            )
        })
    }

    /// `bytes` with every delimiter that `CRLF bytes` would hold broken up: its first `-`
    /// becomes `x`, which no delimiter holds (CR starts one, and `x` is no test bchar).
    fn defuse(bytes: &[u8], delimiter: &[u8]) -> Vec<u8> {
        let mut v = [b"\r\n", bytes].concat();
        while let Some(at) = memchr::memmem::find(&v, delimiter) {
            v[at + 2] = b'x';
        }
        v.split_off(2)
    }

    fn assemble(generated: &Generated) -> (Vec<u8>, Vec<Part>) {
        let (boundary, parts, preamble, epilogue, padding) = generated;
        let delimiter = [b"\r\n--", boundary.as_bytes()].concat();
        let mut body = defuse(preamble, &delimiter);
        if !body.is_empty() {
            body.extend_from_slice(b"\r\n");
        }
        let mut expected = Vec::new();
        for (headers, data) in parts {
            // The CRLF ending the header block may begin a delimiter, so data must not start
            // with "--boundary" either.
            let data = defuse(data, &delimiter);
            body.extend_from_slice(b"--");
            body.extend_from_slice(boundary.as_bytes());
            body.extend_from_slice(padding.as_bytes());
            body.extend_from_slice(b"\r\n");
            for (name, value) in headers {
                body.extend_from_slice(format!("{name}:{value}\r\n").as_bytes());
            }
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(&data);
            body.extend_from_slice(b"\r\n");
            expected.push(Part {
                headers: headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.to_ascii_lowercase(),
                            v.trim_matches([' ', '\t']).to_owned(),
                        )
                    })
                    .collect(),
                data,
            });
        }
        body.extend_from_slice(b"--");
        body.extend_from_slice(boundary.as_bytes());
        body.extend_from_slice(b"--");
        body.extend_from_slice(epilogue);
        (body, expected)
    }

    proptest! {
        #[test]
        fn split_bodies_give_back_their_parts(
            generated in body_strategy(),
            sizes in prop::collection::vec(1usize..50, 1..8),
            bytewise in any::<bool>(),
        ) {
            let (body, expected) = assemble(&generated);
            let boundary = &generated.0;
            let limits = MultipartLimits { part_header_bytes_max: 200, ..MultipartLimits::default() };
            let sizes = if bytewise { vec![1] } else { sizes };
            let (result, parser) = run_chunks(boundary, limits, &split_by(&body, &sizes));
            prop_assert_eq!(result, Ok(expected.clone()));
            prop_assert_eq!(parser.parts_started(), expected.len());
            prop_assert!(parser.buffered_bytes_peak() <= boundary.len() + 4 + limits.part_header_bytes_max);
            prop_assert!(parser.carry.capacity() <= 2 * (boundary.len() + 4));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            (boundary, body) in boundary_strategy().prop_flat_map(|b| (Just(b.clone()), bytes_strategy(b, 60))),
            sizes in prop::collection::vec(1usize..30, 1..8),
            header_max in 0usize..40,
            parts_max in 0usize..4,
        ) {
            let limits = MultipartLimits { part_header_bytes_max: header_max, parts_max, preamble_bytes_max: 20 };
            let mut parser = MultipartParser::new(&boundary, limits);
            let mut collector = Collector::default();
            let mut failed = false;
            for chunk in split_by(&body, &sizes) {
                if parser.feed(chunk, |e| collector.on(e)).is_err() {
                    failed = true;
                    break;
                }
            }
            let finished = parser.finish();
            prop_assert!(!failed || finished.is_err());
            prop_assert_eq!(finished.is_ok(), collector.ended);
            prop_assert!(parser.buffered_bytes_peak() <= boundary.len() + 4 + header_max);
            prop_assert!(collector.parts.len() <= parts_max);
        }

        #[test]
        fn media_type_parsing_never_panics(text in "\\PC{0,40}", raw in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = MediaType::parse(&text);
            let _ = MediaType::parse(&String::from_utf8_lossy(&raw));
        }

        #[test]
        fn quoted_parameters_round_trip(values in prop::collection::vec("[\t -~]{0,12}", 0..4)) {
            let mut text = "Multipart/Related".to_owned();
            for (i, value) in values.iter().enumerate() {
                let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
                text.push_str(&format!(" ; P{i}=\"{quoted}\""));
            }
            let parsed = MediaType::parse(&text).unwrap();
            prop_assert_eq!(parsed.essence, "multipart/related");
            let expected: Vec<(String, String)> =
                values.iter().enumerate().map(|(i, v)| (format!("p{i}"), v.clone())).collect();
            prop_assert_eq!(parsed.params, expected);
        }
    }
}
