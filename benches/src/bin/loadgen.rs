//! `loadgen`: drives a running Kuvasto DICOMweb server with STOW-RS, QIDO-RS and WADO-RS
//! requests from N client threads and reports throughput and latency percentiles.
//!
//! ```sh
//! cargo build --release -p kuvasto-benches --bin loadgen
//! target/release/loadgen --address-file /tmp/lg-addr --clients 8 --duration-seconds 10 stow --size-bytes 524288
//! target/release/loadgen --url http://127.0.0.1:8080 --requests 100 stow --files /path/to/dicom
//! target/release/loadgen --address-file /tmp/lg-addr --duration-seconds 5 qido
//! target/release/loadgen --address-file /tmp/lg-addr --duration-seconds 5 --json wado
//! target/release/loadgen --address-file /tmp/lg-addr mixed --stow-percent 10 --qido-percent 60
//! target/release/loadgen write-files --dir /tmp/ct --count 1000 --size-bytes 524288
//! ```
//!
//! Each client is a thread with one keep-alive HTTP/1.1 connection (`TCP_NODELAY`), written and
//! parsed by hand: the request head and body go out with `write_all`, the answer is read with
//! its `Content-Length` or chunked framing (or up to the close), and the connection is opened
//! again when the server closes it.
//!
//! What is measured: a request is counted when it *starts* after the warmup; its latency runs
//! from the first byte written to the last byte of the response read. Building a request (the
//! generated DICOM header, UIDs, the HTTP head; reading a `--files` file) happens before that
//! clock starts but inside the wall time, which runs from the end of the warmup to the last
//! counted response. Payload bytes: the Part-10 bytes of stored instances (STOW), the response
//! bodies (QIDO, WADO: the whole multipart body); 1 MB = 10^6 bytes.

use clap::{Args, Parser, Subcommand};
use kuvasto_engine::dicom::explicit_le::encode_element;
use kuvasto_engine::dicom::meta::encode_file_meta;
use kuvasto_engine::dicom::Tag;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

macro_rules! boundary {
    () => {
        "kuvasto-loadgen-7d1c5e0b9a41"
    };
}
/// What opens the one part of a STOW body.
const PART_PREFIX: &str = concat!(
    "--",
    boundary!(),
    "\r\nContent-Type: application/dicom\r\n\r\n"
);
/// What closes a STOW body.
const BODY_SUFFIX: &str = concat!("\r\n--", boundary!(), "--\r\n");

/// A response head longer than this is refused.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// A head line or chunk-size line longer than this is refused.
const LINE_BYTES_MAX: usize = 8 * 1024;
/// Bytes of a response body kept in memory during the timed requests (error messages, an
/// empty QIDO answer); the rest is read and discarded.
const TIMED_BODY_KEEP: usize = 1024;
/// Error descriptions kept per client thread and shown in the report.
const ERRORS_KEPT: usize = 8;
/// Bytes of an error body shown.
const ERROR_BODY_SHOWN: usize = 300;
/// The read buffer of each connection.
const READ_BUFFER_BYTES: usize = 256 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for a Kuvasto DICOMweb server: STOW, QIDO, WADO or a mix"
)]
struct Cli {
    /// Server base URL, e.g. http://127.0.0.1:8080 (DICOMweb is under /dicom-web).
    #[arg(long, global = true)]
    url: Option<String>,
    /// A file holding `HOST:PORT` (what `kuvasto serve --address-file` writes).
    #[arg(long, global = true)]
    address_file: Option<PathBuf>,
    /// Client threads, one connection each.
    #[arg(long, global = true, default_value_t = 8)]
    clients: usize,
    /// How long to measure (default 10 s unless --requests is given).
    #[arg(long, global = true, conflicts_with = "requests")]
    duration_seconds: Option<f64>,
    /// Measure this many requests in total (over all clients) instead of a duration.
    #[arg(long, global = true)]
    requests: Option<u64>,
    /// Run the workload this long before measuring (its requests are not counted).
    #[arg(long, global = true, default_value_t = 0.0)]
    warmup_seconds: f64,
    /// Print one machine-readable JSON line after the text report.
    #[arg(long, global = true)]
    json: bool,
    /// Latencies kept in memory over all clients; later requests are still counted (and the
    /// maximum kept), their latencies are not.
    #[arg(long, global = true, default_value_t = 10_000_000)]
    latencies_max: usize,
    /// Largest response body kept in memory (the initial QIDO listing); timed requests keep
    /// only their first kilobyte and discard the rest as it arrives.
    #[arg(long, global = true, default_value_t = 64 << 20)]
    body_keep_bytes_max: usize,
    /// Connect, read and write timeout of each connection.
    #[arg(long, global = true, default_value_t = 300.0)]
    timeout_seconds: f64,
    /// Seed of the generated UIDs and pixel data (default: random). A fixed seed repeats the
    /// same instances, which the server then accepts as idempotent duplicates.
    #[arg(long, global = true)]
    seed: Option<u64>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Store instances: generated CT instances of --size-bytes, or the files under --files.
    Stow(StowArgs),
    /// Searches: studies by PatientID, by StudyDate range, by PatientName wildcard; series of a
    /// study; instances of a series. Keys come from an initial /instances listing.
    Qido(ListArgs),
    /// Retrieve the instances of an initial /instances listing, round robin, discarding bodies.
    Wado(ListArgs),
    /// STOW, QIDO and WADO requests mixed by percentages; keys from an initial listing and
    /// from what this run stores.
    Mixed(MixedArgs),
    /// Write generated instances as Part 10 files (for DIMSE senders such as dcmtk's
    /// storescu) instead of sending anything.
    WriteFiles(WriteFilesArgs),
}

#[derive(Args, Debug)]
struct WriteFilesArgs {
    #[command(flatten)]
    generated: GenArgs,
    /// Directory to write `NNNNNN.dcm` files into (created).
    #[arg(long)]
    dir: PathBuf,
    /// How many files.
    #[arg(long)]
    count: u64,
}

/// Writes `args.count` generated instances under `args.dir`.
fn write_files(args: &WriteFilesArgs, rng: &mut Rng) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let generator = Generator::new(&args.generated, rng);
    let mut bytes = Vec::new();
    for n in 0..args.count {
        bytes.clear();
        generator.next(rng, &mut bytes);
        bytes.extend_from_slice(&generator.pixels);
        std::fs::write(args.dir.join(format!("{n:06}.dcm")), &bytes)?;
    }
    println!(
        "wrote {} files of {} bytes to {}",
        args.count,
        bytes.len(),
        args.dir.display()
    );
    Ok(())
}

#[derive(Args, Debug, Clone)]
struct GenArgs {
    /// Size of each generated instance in bytes (native OW Pixel Data fills it up).
    #[arg(long, default_value_t = 524_288)]
    size_bytes: u64,
    /// Generated instances per study.
    #[arg(long, default_value_t = 100)]
    instances_per_study: u64,
    /// Series per generated study.
    #[arg(long, default_value_t = 2)]
    series_per_study: u64,
    /// Generated studies per patient.
    #[arg(long, default_value_t = 2)]
    studies_per_patient: u64,
}

#[derive(Args, Debug)]
struct StowArgs {
    #[command(flatten)]
    generated: GenArgs,
    /// Send the files under this directory (recursively, sorted) round robin instead of
    /// generated instances. Files sent again carry the same SOP Instance UID and bytes: the
    /// server accepts them idempotently (200) without storing anything new; they are counted
    /// as repeat sends.
    #[arg(long, conflicts_with = "size_bytes")]
    files: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Instances asked for by the initial listing (`/instances?limit=N`) the keys come from.
    #[arg(long, default_value_t = 1000)]
    listing_limit: usize,
}

#[derive(Args, Debug)]
struct MixedArgs {
    #[command(flatten)]
    generated: GenArgs,
    #[command(flatten)]
    listing: ListArgs,
    /// Share of STOW requests, percent.
    #[arg(long, default_value_t = 20)]
    stow_percent: u32,
    /// Share of QIDO requests, percent (WADO gets the rest).
    #[arg(long, default_value_t = 50)]
    qido_percent: u32,
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

/// What a response head says about the response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    /// The server closes the connection after this response.
    close: bool,
    /// The first `Warning` header (the server's reason for a refused STOW part).
    warning: Option<String>,
}

/// Parses a response head: the status line and header lines, each ending in CRLF (or LF),
/// and the empty line that ends the head.
fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_string())?;
    // The head ends with an empty line: drop it and the line end before it.
    let text = text
        .strip_suffix("\r\n\r\n")
        .or_else(|| text.strip_suffix("\n\r\n"))
        .or_else(|| text.strip_suffix("\r\n\n"))
        .or_else(|| text.strip_suffix("\n\n"))
        .ok_or("response head does not end with an empty line")?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.splitn(3, ' ');
    let version = words.next().unwrap_or_default();
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(format!("bad status line {status_line:?}")),
    };
    let code = words.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad status code in {status_line:?}"));
    }
    let status: u16 = code.parse().map_err(|_| format!("bad status {code:?}"))?;
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
        close: false,
        warning: None,
    };
    let mut keep_alive = false;
    for line in lines {
        if line.is_empty() {
            return Err("an empty line inside the response head".into());
        }
        if line.starts_with([' ', '\t']) {
            return Err("obsolete header line folding".into());
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without a colon: {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length headers".into());
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if last.eq_ignore_ascii_case("chunked") {
                head.chunked = true;
            } else {
                return Err(format!("unsupported Transfer-Encoding {value:?}"));
            }
        } else if name.eq_ignore_ascii_case("warning") && head.warning.is_none() {
            head.warning = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    if http10 && !keep_alive {
        head.close = true;
    }
    Ok(head)
}

/// `fill_buf`, retried when interrupted.
fn fill<R: BufRead>(r: &mut R) -> io::Result<&[u8]> {
    loop {
        match r.fill_buf() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            // Asked again to hand out the borrow (returns the buffered bytes, no read).
            Ok(_) => return r.fill_buf(),
        }
    }
}

/// Reads one line (up to and including `\n`) into `line`, at most `max` bytes. `Ok(false)`:
/// the stream ended before any byte of the line.
fn read_line<R: BufRead>(r: &mut R, max: usize, line: &mut Vec<u8>) -> io::Result<bool> {
    line.clear();
    loop {
        let buf = fill(r)?;
        if buf.is_empty() {
            if line.is_empty() {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a line",
            ));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line longer than {max} bytes"),
            ));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            return Ok(true);
        }
    }
}

fn is_blank_line(line: &[u8]) -> bool {
    line == b"\r\n" || line == b"\n"
}

/// Reads a response head up to and including its empty line. `Ok(None)`: the connection was
/// closed before any byte of it.
fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut line = Vec::new();
    loop {
        if !read_line(r, LINE_BYTES_MAX, &mut line)? {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the response head",
            ));
        }
        head.extend_from_slice(&line);
        if head.len() > HEAD_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response head longer than {HEAD_BYTES_MAX} bytes"),
            ));
        }
        if is_blank_line(&line) {
            return Ok(Some(head));
        }
    }
}

/// Appends what fits of `data` to `out` so that `out` holds at most `keep` bytes.
fn keep_prefix(out: &mut Vec<u8>, data: &[u8], keep: usize) {
    let room = keep.saturating_sub(out.len()).min(data.len());
    out.extend_from_slice(&data[..room]);
}

/// Reads exactly `n` body bytes, keeping the first ones (up to `keep` in `out`).
fn read_fixed<R: BufRead>(r: &mut R, n: u64, keep: usize, out: &mut Vec<u8>) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        let buf = fill(r)?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed with {left} of {n} body bytes unread"),
            ));
        }
        let take = (buf.len() as u64).min(left) as usize;
        keep_prefix(out, &buf[..take], keep);
        r.consume(take);
        left -= take as u64;
    }
    Ok(())
}

/// Reads a chunked body (RFC 9112 7.1) including its trailer section; returns the body's
/// length. Chunk extensions and trailers are skipped.
fn read_chunked<R: BufRead>(r: &mut R, keep: usize, out: &mut Vec<u8>) -> io::Result<u64> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let eof = |what: &str| io::Error::new(io::ErrorKind::UnexpectedEof, what.to_string());
    let mut total = 0u64;
    let mut line = Vec::new();
    loop {
        if !read_line(r, LINE_BYTES_MAX, &mut line)? {
            return Err(eof("connection closed before a chunk size"));
        }
        let text = std::str::from_utf8(&line).map_err(|_| bad("chunk size not ASCII".into()))?;
        let size_text = text
            .trim_end_matches(['\r', '\n'])
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("bad chunk size line {text:?}")));
        }
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| bad(format!("chunk size {size_text:?} too large")))?;
        if size == 0 {
            loop {
                if !read_line(r, LINE_BYTES_MAX, &mut line)? {
                    return Err(eof("connection closed inside the chunked trailer"));
                }
                if is_blank_line(&line) {
                    return Ok(total);
                }
            }
        }
        read_fixed(r, size, keep, out)?;
        total += size;
        if !read_line(r, LINE_BYTES_MAX, &mut line)? {
            return Err(eof("connection closed after chunk data"));
        }
        if !is_blank_line(&line) {
            return Err(bad("chunk data not followed by CRLF".into()));
        }
    }
}

/// Reads until the server closes the connection; returns the body's length.
fn read_to_close<R: BufRead>(r: &mut R, keep: usize, out: &mut Vec<u8>) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let buf = fill(r)?;
        if buf.is_empty() {
            return Ok(total);
        }
        let n = buf.len();
        keep_prefix(out, buf, keep);
        r.consume(n);
        total += n as u64;
    }
}

/// A complete response.
#[derive(Debug)]
struct Reply {
    status: u16,
    body_bytes: u64,
    warning: Option<String>,
}

/// How an exchange failed.
enum Failure {
    /// The connection was gone before any byte of a response (a kept-alive connection the
    /// server had closed): worth one retry on a new connection.
    Stale(String),
    /// Anything else: the request failed.
    Broken(String),
}

/// One keep-alive connection, opened again when the server closes it.
struct Client {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
    connects: u64,
}

impl Client {
    fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            timeout,
            conn: None,
            connects: 0,
        }
    }

    fn connect(&mut self) -> io::Result<()> {
        let stream = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        self.connects += 1;
        self.conn = Some(BufReader::with_capacity(READ_BUFFER_BYTES, stream));
        Ok(())
    }

    /// Sends a request (its head and body as `parts`, written in order) and reads the whole
    /// response; the first `keep` body bytes land in `body`. A request on a kept-alive
    /// connection the server had already closed is sent once more on a new one.
    fn exchange(
        &mut self,
        parts: &[&[u8]],
        keep: usize,
        body: &mut Vec<u8>,
    ) -> Result<Reply, String> {
        let mut retried = false;
        loop {
            let reused = self.conn.is_some();
            if !reused {
                self.connect()
                    .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
            }
            match self.exchange_once(parts, keep, body) {
                Ok(reply) => return Ok(reply),
                Err(Failure::Stale(_)) if reused && !retried => {
                    self.conn = None;
                    retried = true;
                }
                Err(Failure::Stale(e) | Failure::Broken(e)) => {
                    self.conn = None;
                    return Err(e);
                }
            }
        }
    }

    fn exchange_once(
        &mut self,
        parts: &[&[u8]],
        keep: usize,
        body: &mut Vec<u8>,
    ) -> Result<Reply, Failure> {
        let conn = self.conn.as_mut().expect("connected");
        body.clear();
        let mut write_error = None;
        for part in parts.iter().filter(|p| !p.is_empty()) {
            if let Err(e) = conn.get_mut().write_all(part) {
                write_error = Some(e);
                break;
            }
        }
        // Read the answer even after a failed write: a server may answer early (a refusal)
        // and close.
        // Closed or reset before the first byte of an answer: the server had dropped the
        // connection (a timeout is not that).
        if let Err(e) = fill(conn) {
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                return Err(Failure::Stale(format!("no response: {e}")));
            }
        }
        let head = loop {
            let bytes = match read_head(conn) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    return Err(Failure::Stale(match &write_error {
                        Some(e) => format!("writing the request: {e}"),
                        None => "connection closed before a response".into(),
                    }))
                }
                Err(e) => {
                    return Err(match &write_error {
                        Some(w) => Failure::Stale(format!("writing the request: {w}")),
                        None => Failure::Broken(format!("reading the response head: {e}")),
                    })
                }
            };
            let head = parse_head(&bytes).map_err(Failure::Broken)?;
            if (100..200).contains(&head.status) && head.status != 101 {
                continue; // an interim response: the final one follows
            }
            break head;
        };
        let no_body = head.status == 204 || head.status == 304;
        let read = if no_body {
            Ok((0, head.close))
        } else if head.chunked {
            read_chunked(conn, keep, body).map(|n| (n, head.close))
        } else if let Some(n) = head.content_length {
            read_fixed(conn, n, keep, body).map(|()| (n, head.close))
        } else {
            read_to_close(conn, keep, body).map(|n| (n, true))
        };
        let (body_bytes, close) =
            read.map_err(|e| Failure::Broken(format!("status {}: body: {e}", head.status)))?;
        if close || write_error.is_some() {
            self.conn = None;
        }
        if let Some(e) = write_error {
            if (200..300).contains(&head.status) {
                return Err(Failure::Broken(format!(
                    "writing the request: {e} (yet the server answered {})",
                    head.status
                )));
            }
        }
        Ok(Reply {
            status: head.status,
            body_bytes,
            warning: head.warning,
        })
    }
}

fn get_head(path: &str, host: &str, accept: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kuvasto-loadgen\r\nAccept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// The request head of a STOW with a one-part body of `dicom_len` bytes, followed by the
/// part's own head; the DICOM bytes and [`BODY_SUFFIX`] follow it.
fn stow_head(out: &mut Vec<u8>, path: &str, host: &str, dicom_len: u64) {
    let length = PART_PREFIX.len() as u64 + dicom_len + BODY_SUFFIX.len() as u64;
    out.clear();
    out.extend_from_slice(
        format!(
            concat!(
                "POST {}/studies HTTP/1.1\r\nHost: {}\r\nUser-Agent: kuvasto-loadgen\r\n",
                "Content-Type: multipart/related; type=\"application/dicom\"; boundary=",
                boundary!(),
                "\r\nAccept: application/dicom+json\r\nContent-Length: {}\r\n\r\n"
            ),
            path, host, length
        )
        .as_bytes(),
    );
    out.extend_from_slice(PART_PREFIX.as_bytes());
}

/// Percent-encodes a query component (all but unreserved characters).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Generated instances
// ---------------------------------------------------------------------------------------------

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A random UID root value with exactly 39 decimal digits (so generated UIDs have one
    /// length), leaving 2^64 of room above it.
    fn uid_value(&mut self) -> u128 {
        const LOW: u128 = 10u128.pow(38);
        loop {
            let v = (u128::from(self.next()) << 64) | u128::from(self.next());
            if (LOW..u128::MAX - u128::from(u64::MAX)).contains(&v) {
                return v;
            }
        }
    }
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    match from_os {
        Ok(()) => u64::from_le_bytes(bytes) ^ nanos,
        Err(_) => nanos ^ u64::from(std::process::id()).rotate_left(32),
    }
}

/// Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A civil date to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn da(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}")
}

/// `YYYYMMDD` to days since 1970-01-01.
fn parse_da(text: &str) -> Option<i64> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = text[0..4].parse().ok()?;
    let m: u32 = text[4..6].parse().ok()?;
    let d: u32 = text[6..8].parse().ok()?;
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then(|| days_from_civil(y, m, d))
}

/// Native pixel data layout: `frames` frames of `rows` × `columns` 16-bit samples.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    rows: u16,
    columns: u16,
    frames: u32,
}

impl Geometry {
    fn bytes(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.columns) * 2 * u64::from(self.frames)
    }

    /// The layout whose size comes closest to `pixel_bytes` from below (at least one pixel):
    /// rows of 512 columns, several frames when one would need more than 65,535 rows.
    fn for_bytes(pixel_bytes: u64) -> Geometry {
        if pixel_bytes < 1024 {
            let columns = (pixel_bytes / 2).max(1) as u16;
            return Geometry {
                rows: 1,
                columns,
                frames: 1,
            };
        }
        let total_rows = pixel_bytes / 1024;
        let frames = total_rows.div_ceil(u64::from(u16::MAX));
        Geometry {
            rows: (total_rows / frames) as u16,
            columns: 512,
            frames: frames as u32,
        }
    }
}

/// What identifies an instance (and the keys QIDO searches with).
#[derive(Debug, Clone, Default)]
struct InstanceKey {
    study: String,
    series: String,
    sop: String,
    patient_id: Option<String>,
    patient_name: Option<String>,
    study_date: Option<String>,
}

/// Generated Explicit VR Little Endian CT instances: a header with per-instance UIDs and
/// native OW Pixel Data shared by all (pseudo-random, incompressible bytes).
struct Generator {
    args: GenArgs,
    run: u32,
    study_base: u128,
    series_base: u128,
    date_offset: i64,
    geometry: Geometry,
    /// Bytes before the pixel values (sample instance; others differ by a byte or two).
    header_bytes: u64,
    pixels: Vec<u8>,
    /// Instances generated so far (places the next one in its patient, study and series).
    counter: AtomicU64,
}

impl Generator {
    fn new(args: &GenArgs, rng: &mut Rng) -> Generator {
        let mut args = args.clone();
        args.instances_per_study = args.instances_per_study.max(1);
        args.series_per_study = args.series_per_study.clamp(1, args.instances_per_study);
        args.studies_per_patient = args.studies_per_patient.max(1);
        let mut g = Generator {
            args,
            run: rng.next() as u32,
            study_base: rng.uid_value(),
            series_base: rng.uid_value(),
            date_offset: rng.below(7300) as i64,
            geometry: Geometry {
                rows: 1,
                columns: 1,
                frames: 1,
            },
            header_bytes: 0,
            pixels: Vec::new(),
            counter: AtomicU64::new(0),
        };
        // Size the pixel data from a sample header (UIDs are of one length; numbers vary by
        // a byte or two).
        let mut sample = Vec::new();
        g.header(0, "2.25.".to_string() + &u128::MAX.to_string(), &mut sample);
        g.header_bytes = sample.len() as u64 + 12;
        g.geometry = Geometry::for_bytes(g.args.size_bytes.saturating_sub(g.header_bytes));
        let mut x = rng.next() | 1;
        let len = g.geometry.bytes() as usize;
        g.pixels = Vec::with_capacity(len + 8);
        while g.pixels.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            g.pixels.extend_from_slice(&x.to_le_bytes());
        }
        g.pixels.truncate(len);
        g
    }

    fn key(&self, n: u64, sop: String) -> InstanceKey {
        let a = &self.args;
        let study = n / a.instances_per_study;
        let per_series = a.instances_per_study.div_ceil(a.series_per_study);
        let series = study * a.series_per_study + (n % a.instances_per_study) / per_series;
        let patient = study / a.studies_per_patient;
        let days =
            days_from_civil(2000, 1, 1) + (self.date_offset + study as i64 * 37).rem_euclid(7300);
        InstanceKey {
            study: format!("2.25.{}", self.study_base + u128::from(study)),
            series: format!("2.25.{}", self.series_base + u128::from(series)),
            sop,
            patient_id: Some(format!("LG{:08X}-{patient:06}", self.run)),
            patient_name: Some(format!("LOADGEN^R{:08X}^{patient:06}", self.run)),
            study_date: Some(da(days)),
        }
    }

    /// Writes the Part-10 bytes of instance `n` up to and including the Pixel Data element's
    /// header into `out`; [`Generator::pixels`] completes it. Returns its key.
    fn header(&self, n: u64, sop: String, out: &mut Vec<u8>) -> InstanceKey {
        let key = self.key(n, sop);
        let a = &self.args;
        let study = n / a.instances_per_study;
        let per_series = a.instances_per_study.div_ceil(a.series_per_study);
        let in_study = n % a.instances_per_study;
        let g = self.geometry;
        out.clear();
        out.extend_from_slice(&encode_file_meta(
            CT_IMAGE_STORAGE,
            &key.sop,
            EXPLICIT_VR_LE,
        ));
        let none = String::new();
        let el = |out: &mut Vec<u8>, group: u16, element: u16, vr: &[u8; 2], value: &str| {
            let mut v = value.as_bytes().to_vec();
            if v.len() % 2 == 1 {
                v.push(if vr == b"UI" { 0 } else { b' ' });
            }
            out.extend_from_slice(&encode_element(Tag::new(group, element), vr, &v));
        };
        let us = |out: &mut Vec<u8>, element: u16, value: u16| {
            out.extend_from_slice(&encode_element(
                Tag::new(0x0028, element),
                b"US",
                &value.to_le_bytes(),
            ));
        };
        let series_number = (in_study / per_series + 1).to_string();
        el(out, 0x0008, 0x0005, b"CS", "ISO_IR 100");
        el(out, 0x0008, 0x0008, b"CS", "ORIGINAL\\PRIMARY\\AXIAL");
        el(out, 0x0008, 0x0016, b"UI", CT_IMAGE_STORAGE);
        el(out, 0x0008, 0x0018, b"UI", &key.sop);
        el(
            out,
            0x0008,
            0x0020,
            b"DA",
            key.study_date.as_ref().unwrap_or(&none),
        );
        el(out, 0x0008, 0x0030, b"TM", "101500");
        let accession = format!("A{:08X}{:06}", self.run, study % 1_000_000);
        el(out, 0x0008, 0x0050, b"SH", &accession);
        el(out, 0x0008, 0x0060, b"CS", "CT");
        el(out, 0x0008, 0x0090, b"PN", "Referrer^Load");
        el(out, 0x0008, 0x1030, b"LO", "Loadgen CT study");
        let description = format!("Loadgen series {series_number}");
        el(out, 0x0008, 0x103E, b"LO", &description);
        el(
            out,
            0x0010,
            0x0010,
            b"PN",
            key.patient_name.as_ref().unwrap_or(&none),
        );
        el(
            out,
            0x0010,
            0x0020,
            b"LO",
            key.patient_id.as_ref().unwrap_or(&none),
        );
        el(out, 0x0010, 0x0030, b"DA", "19700101");
        el(out, 0x0010, 0x0040, b"CS", "O");
        el(out, 0x0018, 0x0015, b"CS", "CHEST");
        el(out, 0x0018, 0x0050, b"DS", "1.0");
        el(out, 0x0020, 0x000D, b"UI", &key.study);
        el(out, 0x0020, 0x000E, b"UI", &key.series);
        el(out, 0x0020, 0x0010, b"SH", &(study % 1_000_000).to_string());
        el(out, 0x0020, 0x0011, b"IS", &series_number);
        let instance_number = (in_study % per_series + 1).to_string();
        el(out, 0x0020, 0x0013, b"IS", &instance_number);
        let position = format!("-125.0\\-125.0\\{:.1}", in_study as f64);
        el(out, 0x0020, 0x0032, b"DS", &position);
        el(out, 0x0020, 0x0037, b"DS", "1\\0\\0\\0\\1\\0");
        us(out, 0x0002, 1);
        el(out, 0x0028, 0x0004, b"CS", "MONOCHROME2");
        if g.frames > 1 {
            el(out, 0x0028, 0x0008, b"IS", &g.frames.to_string());
        }
        us(out, 0x0010, g.rows);
        us(out, 0x0011, g.columns);
        us(out, 0x0100, 16);
        us(out, 0x0101, 12);
        us(out, 0x0102, 11);
        us(out, 0x0103, 0);
        // Pixel Data (7FE0,0010) OW: the header only; the value is `self.pixels`.
        out.extend_from_slice(&0x7FE0u16.to_le_bytes());
        out.extend_from_slice(&0x0010u16.to_le_bytes());
        out.extend_from_slice(b"OW\0\0");
        out.extend_from_slice(&(self.pixels.len() as u32).to_le_bytes());
        key
    }

    /// The header of the next instance; its size is `out.len() + pixels.len()`.
    fn next(&self, rng: &mut Rng, out: &mut Vec<u8>) -> InstanceKey {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let sop = format!("2.25.{}", rng.uid_value());
        self.header(n, sop, out)
    }
}

/// Files sent round robin.
struct FileSet {
    paths: Vec<PathBuf>,
    next: AtomicU64,
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stow,
    Qido,
    Wado,
}

const KINDS: [Kind; 3] = [Kind::Stow, Kind::Qido, Kind::Wado];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Stow => "stow",
            Kind::Qido => "qido",
            Kind::Wado => "wado",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Kind::Stow => "instances stored",
            Kind::Qido => "queries",
            Kind::Wado => "instances retrieved",
        }
    }
}

const QUERIES: [&str; 5] = [
    "studies?PatientID",
    "studies?StudyDate=range",
    "studies?PatientName=wildcard",
    "studies/{study}/series",
    "studies/{study}/series/{series}/instances",
];

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// What every client thread shares.
struct Shared {
    addr: SocketAddr,
    host: String,
    /// `<url path>/dicom-web`.
    base: String,
    timeout: Duration,
    mode: Kind,
    /// Mixed mode: percent of STOW and of QIDO requests.
    mix: Option<(u32, u32)>,
    generator: Option<Generator>,
    files: Option<FileSet>,
    keys: RwLock<Vec<InstanceKey>>,
    phase: AtomicU8,
    requests: Option<u64>,
    tickets: AtomicU64,
    latencies_per_client: usize,
    clients: usize,
    first_errors: Mutex<Vec<String>>,
}

#[derive(Default)]
struct KindStats {
    ok: u64,
    failed: u64,
    payload_bytes: u64,
    /// Request bytes written (heads and bodies) of counted requests.
    sent_bytes: u64,
    latencies_ns: Vec<u64>,
    latencies_dropped: u64,
    max_ns: u64,
}

impl KindStats {
    fn merge(&mut self, other: KindStats) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.payload_bytes += other.payload_bytes;
        self.sent_bytes += other.sent_bytes;
        self.latencies_ns.extend(other.latencies_ns);
        self.latencies_dropped += other.latencies_dropped;
        self.max_ns = self.max_ns.max(other.max_ns);
    }
}

#[derive(Default)]
struct ClientResult {
    kinds: [KindStats; 3],
    /// Per QIDO query kind: requests, and 200 answers with an empty result list.
    queries: [(u64, u64); 5],
    repeat_sends: u64,
    connects: u64,
    last_end: Option<Instant>,
}

fn record_error(shared: &Shared, text: String) {
    let mut errors = shared
        .first_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if errors.len() < ERRORS_KEPT {
        errors.push(text);
    }
}

fn body_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_SHOWN)]);
    text.trim().replace(['\r', '\n'], " ")
}

/// What to send in the middle of a request, between its head and its tail.
enum Middle {
    None,
    Pixels,
    File,
}

fn client(shared: &Shared, id: usize, seed: u64) -> ClientResult {
    let mut rng = Rng(seed);
    let mut client = Client::new(shared.addr, shared.timeout);
    let mut result = ClientResult::default();
    let mut head = Vec::new();
    let mut dicom = Vec::new();
    let mut file = Vec::new();
    let mut body = Vec::new();
    let mut query_next = id;
    // Clients start at spread-out places of the listing.
    let mut wado_next = {
        let n = shared.keys.read().map(|k| k.len()).unwrap_or(0);
        id * n / shared.clients
    };
    loop {
        let phase = shared.phase.load(Ordering::Acquire);
        if phase == STOP {
            break;
        }
        let measured = phase == MEASURE;
        if measured {
            if let Some(n) = shared.requests {
                if shared.tickets.fetch_add(1, Ordering::Relaxed) >= n {
                    break;
                }
            }
        }
        // Choose and build the request (outside the latency clock).
        let key_count = shared.keys.read().map(|k| k.len()).unwrap_or(0);
        let mut kind = match shared.mix {
            None => shared.mode,
            Some((stow, qido)) => {
                let r = rng.below(100) as u32;
                if r < stow {
                    Kind::Stow
                } else if r < stow + qido {
                    Kind::Qido
                } else {
                    Kind::Wado
                }
            }
        };
        if kind != Kind::Stow && key_count == 0 {
            if shared.generator.is_some() {
                kind = Kind::Stow; // mixed, nothing to look for yet
            } else {
                break;
            }
        }
        let mut middle = Middle::None;
        let mut tail: &[u8] = &[];
        let mut payload = 0u64;
        let mut stored_key = None;
        let mut query = None;
        let mut keep = TIMED_BODY_KEEP;
        match kind {
            Kind::Stow => {
                if let Some(generator) = &shared.generator {
                    let key = generator.next(&mut rng, &mut dicom);
                    payload = (dicom.len() + generator.pixels.len()) as u64;
                    stow_head(&mut head, &shared.base, &shared.host, payload);
                    head.extend_from_slice(&dicom);
                    middle = Middle::Pixels;
                    stored_key = Some(key);
                } else if let Some(files) = &shared.files {
                    let i = files.next.fetch_add(1, Ordering::Relaxed);
                    let path = &files.paths[(i % files.paths.len() as u64) as usize];
                    file.clear();
                    if let Err(e) =
                        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut file))
                    {
                        eprintln!("loadgen: reading {}: {e}", path.display());
                        break;
                    }
                    if measured && i >= files.paths.len() as u64 {
                        result.repeat_sends += 1;
                    }
                    payload = file.len() as u64;
                    stow_head(&mut head, &shared.base, &shared.host, payload);
                    middle = Middle::File;
                }
                tail = BODY_SUFFIX.as_bytes();
            }
            Kind::Qido => {
                let keys = shared.keys.read().unwrap_or_else(|e| e.into_inner());
                let key = &keys[rng.below(keys.len() as u64) as usize];
                let mut q = query_next % QUERIES.len();
                query_next += 1;
                let b = &shared.base;
                let mut path = None;
                for _ in 0..QUERIES.len() {
                    path = match q {
                        0 => key
                            .patient_id
                            .as_ref()
                            .map(|id| format!("{b}/studies?PatientID={}", percent_encode(id))),
                        1 => key.study_date.as_deref().and_then(parse_da).map(|d| {
                            format!("{b}/studies?StudyDate={}-{}&limit=100", da(d - 30), da(d))
                        }),
                        2 => key.patient_name.as_ref().filter(|n| n.len() > 1).map(|n| {
                            let mut prefix = n.clone();
                            prefix.pop();
                            format!(
                                "{b}/studies?PatientName={}&limit=100",
                                percent_encode(&(prefix + "*"))
                            )
                        }),
                        3 => Some(format!("{b}/studies/{}/series", key.study)),
                        _ => Some(format!(
                            "{b}/studies/{}/series/{}/instances",
                            key.study, key.series
                        )),
                    };
                    if path.is_some() {
                        break;
                    }
                    q = (q + 1) % QUERIES.len();
                }
                let path = path.unwrap_or_default();
                head = get_head(&path, &shared.host, "application/dicom+json");
                query = Some(q);
            }
            Kind::Wado => {
                let keys = shared.keys.read().unwrap_or_else(|e| e.into_inner());
                let key = &keys[wado_next % keys.len()];
                wado_next = wado_next.wrapping_add(1);
                let path = format!(
                    "{}/studies/{}/series/{}/instances/{}",
                    shared.base, key.study, key.series, key.sop
                );
                head = get_head(
                    &path,
                    &shared.host,
                    "multipart/related; type=\"application/dicom\"",
                );
                keep = TIMED_BODY_KEEP.min(64);
            }
        }
        let middle: &[u8] = match middle {
            Middle::None => &[],
            Middle::Pixels => shared.generator.as_ref().map_or(&[], |g| &g.pixels[..]),
            Middle::File => &file,
        };
        let sent = (head.len() + middle.len() + tail.len()) as u64;
        let start = Instant::now();
        let outcome = client.exchange(&[&head, middle, tail], keep, &mut body);
        let end = Instant::now();
        if !measured {
            continue;
        }
        result.last_end = Some(end);
        let stats = &mut result.kinds[kind as usize];
        let ns = (end - start).as_nanos() as u64;
        stats.max_ns = stats.max_ns.max(ns);
        if stats.latencies_ns.len() < shared.latencies_per_client {
            stats.latencies_ns.push(ns);
        } else {
            stats.latencies_dropped += 1;
        }
        stats.sent_bytes += sent;
        match outcome {
            Ok(reply) if reply.status == 200 => {
                stats.ok += 1;
                stats.payload_bytes += match kind {
                    Kind::Stow => payload,
                    Kind::Qido | Kind::Wado => reply.body_bytes,
                };
                if let Some(q) = query {
                    result.queries[q].0 += 1;
                    if body.trim_ascii() == b"[]" || reply.body_bytes == 0 {
                        result.queries[q].1 += 1;
                    }
                }
                if let Some(key) = stored_key {
                    if shared.mix.is_some() {
                        shared
                            .keys
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(key);
                    }
                }
            }
            Ok(reply) => {
                stats.failed += 1;
                if let Some(q) = query {
                    result.queries[q].0 += 1;
                }
                record_error(
                    shared,
                    format!(
                        "{} {}: status {}: {}{}",
                        kind.name(),
                        request_target(&head),
                        reply.status,
                        body_text(&body),
                        reply
                            .warning
                            .map(|w| format!(" (Warning: {w})"))
                            .unwrap_or_default()
                    ),
                );
            }
            Err(e) => {
                stats.failed += 1;
                if let Some(q) = query {
                    result.queries[q].0 += 1;
                }
                record_error(
                    shared,
                    format!("{} {}: {e}", kind.name(), request_target(&head)),
                );
            }
        }
    }
    result.connects = client.connects;
    result
}

/// `METHOD /path` of a request head, for error messages.
fn request_target(head: &[u8]) -> String {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    line.trim_end_matches(" HTTP/1.1")
        .chars()
        .take(200)
        .collect()
}

/// The first string value of `tag` in a DICOM JSON object (`Alphabetic` of a person name).
fn json_value(object: &serde_json::Value, tag: &str) -> Option<String> {
    let value = object.get(tag)?.get("Value")?.get(0)?;
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o.get("Alphabetic")?.as_str()?.to_string(),
        other => other.to_string(),
    };
    (!text.is_empty()).then_some(text)
}

/// The instances an `/instances?limit=N` search lists.
fn listing(shared: &Shared, limit: usize, keep: usize) -> Result<Vec<InstanceKey>, String> {
    let mut client = Client::new(shared.addr, shared.timeout);
    let path = format!("{}/instances?limit={limit}", shared.base);
    let mut body = Vec::new();
    let reply = client.exchange(
        &[&get_head(&path, &shared.host, "application/dicom+json")],
        keep,
        &mut body,
    )?;
    if reply.status != 200 {
        return Err(format!(
            "GET {path}: status {}: {}",
            reply.status,
            body_text(&body)
        ));
    }
    if reply.body_bytes > body.len() as u64 {
        return Err(format!(
            "GET {path}: the answer has {} bytes, more than --body-keep-bytes-max {keep}",
            reply.body_bytes
        ));
    }
    let parsed: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("GET {path}: not JSON: {e}"))?;
    let list = parsed
        .as_array()
        .ok_or_else(|| format!("GET {path}: not a JSON array"))?;
    let mut keys = Vec::new();
    for object in list {
        let (Some(study), Some(series), Some(sop)) = (
            json_value(object, "0020000D"),
            json_value(object, "0020000E"),
            json_value(object, "00080018"),
        ) else {
            continue;
        };
        keys.push(InstanceKey {
            study,
            series,
            sop,
            patient_id: json_value(object, "00100020"),
            patient_name: json_value(object, "00100010"),
            study_date: json_value(object, "00080020"),
        });
    }
    Ok(keys)
}

fn resolve(cli: &Cli) -> anyhow::Result<(SocketAddr, String, String)> {
    let url = match (&cli.url, &cli.address_file) {
        (Some(url), _) => url.clone(),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            format!("http://{}", text.trim())
        }
        (None, None) => anyhow::bail!("give --url http://HOST:PORT or --address-file FILE"),
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("resolving {with_port}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{with_port} resolves to nothing"))?;
    Ok((addr, authority.to_string(), format!("{path}/dicom-web")))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.clients > 0, "--clients must be at least 1");
    let seed = cli.seed.unwrap_or_else(random_seed);
    let mut rng = Rng(seed);
    if let Mode::WriteFiles(args) = &cli.mode {
        return write_files(args, &mut rng);
    }
    let (addr, host, base) = resolve(&cli)?;
    let duration = match (cli.duration_seconds, cli.requests) {
        (Some(s), _) => Some(s),
        (None, Some(_)) => None,
        (None, None) => Some(10.0),
    };
    let (mode, mix, generator, files, listing_limit) = match &cli.mode {
        Mode::Stow(a) => match &a.files {
            Some(dir) => {
                let mut paths = Vec::new();
                collect_files(dir, &mut paths)
                    .map_err(|e| anyhow::anyhow!("listing {}: {e}", dir.display()))?;
                paths.sort();
                anyhow::ensure!(!paths.is_empty(), "no files under {}", dir.display());
                let files = FileSet {
                    paths,
                    next: AtomicU64::new(0),
                };
                (Kind::Stow, None, None, Some(files), None)
            }
            None => {
                let generator = Generator::new(&a.generated, &mut rng);
                (Kind::Stow, None, Some(generator), None, None)
            }
        },
        Mode::Qido(a) => (Kind::Qido, None, None, None, Some(a.listing_limit)),
        Mode::Wado(a) => (Kind::Wado, None, None, None, Some(a.listing_limit)),
        Mode::Mixed(a) => {
            anyhow::ensure!(
                a.stow_percent + a.qido_percent <= 100,
                "--stow-percent plus --qido-percent exceeds 100"
            );
            let generator = Generator::new(&a.generated, &mut rng);
            (
                Kind::Stow,
                Some((a.stow_percent, a.qido_percent)),
                Some(generator),
                None,
                Some(a.listing.listing_limit),
            )
        }
        Mode::WriteFiles(_) => unreachable!("handled before connecting"),
    };
    let shared = Shared {
        addr,
        host,
        base,
        timeout: Duration::from_secs_f64(cli.timeout_seconds),
        mode,
        mix,
        generator,
        files,
        keys: RwLock::new(Vec::new()),
        phase: AtomicU8::new(WARMUP),
        requests: cli.requests,
        tickets: AtomicU64::new(0),
        latencies_per_client: (cli.latencies_max / cli.clients).max(1),
        clients: cli.clients,
        first_errors: Mutex::new(Vec::new()),
    };
    if let Some(limit) = listing_limit {
        let keys = listing(&shared, limit, cli.body_keep_bytes_max)
            .map_err(|e| anyhow::anyhow!("initial listing: {e}"))?;
        if mix.is_none() {
            anyhow::ensure!(
                !keys.is_empty(),
                "the server lists no instances; store some first (loadgen stow)"
            );
        }
        *shared.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }
    let listed = shared.keys.read().map(|k| k.len()).unwrap_or(0);

    let measure_start = Mutex::new(None::<Instant>);
    let results: Vec<ClientResult> = std::thread::scope(|scope| {
        if cli.warmup_seconds <= 0.0 {
            *measure_start.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            shared.phase.store(MEASURE, Ordering::Release);
        }
        let handles: Vec<_> = (0..cli.clients)
            .map(|id| {
                let shared = &shared;
                let seed = seed ^ (id as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
                std::thread::Builder::new()
                    .name(format!("loadgen-{id}"))
                    .spawn_scoped(scope, move || client(shared, id, seed))
                    .expect("spawning a client thread")
            })
            .collect();
        if cli.warmup_seconds > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(cli.warmup_seconds));
            *measure_start.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            shared.phase.store(MEASURE, Ordering::Release);
        }
        if let Some(seconds) = duration {
            let deadline = Instant::now() + Duration::from_secs_f64(seconds);
            while Instant::now() < deadline && !handles.iter().all(|h| h.is_finished()) {
                std::thread::sleep(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(50)),
                );
            }
            shared.phase.store(STOP, Ordering::Release);
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread panicked"))
            .collect()
    });
    let start = measure_start
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(Instant::now);

    // Merge.
    let mut kinds: [KindStats; 3] = Default::default();
    let mut queries = [(0u64, 0u64); 5];
    let mut repeat_sends = 0;
    let mut connects = 0;
    let mut last_end = start;
    for r in results {
        for (total, k) in kinds.iter_mut().zip(r.kinds) {
            total.merge(k);
        }
        for (total, q) in queries.iter_mut().zip(r.queries) {
            total.0 += q.0;
            total.1 += q.1;
        }
        repeat_sends += r.repeat_sends;
        connects += r.connects;
        if let Some(end) = r.last_end {
            last_end = last_end.max(end);
        }
    }
    let wall = (last_end - start).as_secs_f64();
    let errors = shared
        .first_errors
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());

    // Report.
    println!(
        "loadgen {} -> http://{}{}: {} clients, measured {:.2} s wall after {:.1} s warmup{}",
        cli_mode_name(&cli.mode),
        shared.host,
        shared.base,
        cli.clients,
        wall,
        cli.warmup_seconds,
        match (duration, cli.requests) {
            (Some(s), _) => format!(" (--duration-seconds {s})"),
            (None, Some(n)) => format!(" (--requests {n})"),
            _ => String::new(),
        }
    );
    if let Some(g) = &shared.generator {
        let total = g.header_bytes + g.pixels.len() as u64;
        println!(
            "instances: generated CT, Explicit VR LE, ~{} B each ({} B OW Pixel Data: {} frame(s) of {}x{} 16-bit); {} per study, {} series per study, {} studies per patient; UIDs 2.25.<random>",
            group_digits(kinds[0].payload_bytes.checked_div(kinds[0].ok).unwrap_or(total)),
            group_digits(g.pixels.len() as u64),
            g.geometry.frames,
            g.geometry.rows,
            g.geometry.columns,
            g.args.instances_per_study,
            g.args.series_per_study,
            g.args.studies_per_patient
        );
    }
    if let Some(f) = &shared.files {
        println!(
            "instances: {} files sent round robin; {} measured sends repeated a file already sent in this run (same SOP Instance UID and bytes: accepted idempotently, nothing new stored)",
            f.paths.len(),
            repeat_sends
        );
    }
    if listing_limit.is_some() {
        println!("keys: {listed} instances from GET /instances?limit=N at the start");
    }
    let mut json_kinds = serde_json::Map::new();
    for kind in KINDS {
        let stats = &mut kinds[kind as usize];
        if stats.ok + stats.failed == 0 && !(mix.is_none() && kind == mode) {
            continue;
        }
        stats.latencies_ns.sort_unstable();
        let l = &stats.latencies_ns;
        let (p50, p90, p99) = (
            percentile(l, 0.50),
            percentile(l, 0.90),
            percentile(l, 0.99),
        );
        let per_s = if wall > 0.0 {
            stats.ok as f64 / wall
        } else {
            0.0
        };
        let mb_s = if wall > 0.0 {
            stats.payload_bytes as f64 / 1e6 / wall
        } else {
            0.0
        };
        let payload_what = match kind {
            Kind::Stow => "Part-10 bytes stored",
            Kind::Qido => "JSON response bytes",
            Kind::Wado => "multipart response body bytes",
        };
        println!(
            "{}: {} ok, {} failed; {:.1} {}/s; {:.1} MB/s ({}, 1 MB = 10^6 B; {} B in total)",
            kind.name(),
            stats.ok,
            stats.failed,
            per_s,
            kind.unit(),
            mb_s,
            payload_what,
            group_digits(stats.payload_bytes)
        );
        println!(
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  ({} latencies{})",
            ms(p50),
            ms(p90),
            ms(p99),
            ms(stats.max_ns),
            l.len(),
            if stats.latencies_dropped > 0 {
                format!(
                    ", {} more not kept (--latencies-max)",
                    stats.latencies_dropped
                )
            } else {
                String::new()
            }
        );
        json_kinds.insert(
            kind.name().to_string(),
            serde_json::json!({
                "ok": stats.ok,
                "failed": stats.failed,
                "per_s": per_s,
                "mb_per_s": mb_s,
                "payload_bytes": stats.payload_bytes,
                "sent_bytes": stats.sent_bytes,
                "p50_ms": ms(p50),
                "p90_ms": ms(p90),
                "p99_ms": ms(p99),
                "max_ms": ms(stats.max_ns),
                "latencies_kept": l.len(),
                "latencies_dropped": stats.latencies_dropped,
            }),
        );
    }
    let mut json_queries = Vec::new();
    if queries.iter().any(|q| q.0 > 0) {
        let text: Vec<String> = QUERIES
            .iter()
            .zip(queries)
            .map(|(name, (n, empty))| {
                json_queries
                    .push(serde_json::json!({"query": name, "requests": n, "empty": empty}));
                format!("{name} {n} ({empty} empty)")
            })
            .collect();
        println!("  queries: {}", text.join(", "));
    }
    println!(
        "connections: {} opened for {} clients (reconnects when the server closed one)",
        connects, cli.clients
    );
    println!(
        "timing: latency = first request byte written -> last response byte read; building each request (header, UIDs, file read) is outside latency but inside wall time; wall = end of warmup -> last counted response"
    );
    if !errors.is_empty() {
        println!("first errors:");
        for e in &errors {
            println!("  {e}");
        }
    }
    if cli.json {
        let ok: u64 = kinds.iter().map(|k| k.ok).sum();
        let failed: u64 = kinds.iter().map(|k| k.failed).sum();
        let line = serde_json::json!({
            "mode": cli_mode_name(&cli.mode),
            "url": format!("http://{}{}", shared.host, shared.base),
            "clients": cli.clients,
            "warmup_s": cli.warmup_seconds,
            "wall_s": wall,
            "ok": ok,
            "failed": failed,
            "kinds": json_kinds,
            "queries": json_queries,
            "instance_bytes": shared.generator.as_ref().and_then(|_| kinds[0].payload_bytes.checked_div(kinds[0].ok)),
            "listed_keys": listed,
            "repeat_sends": repeat_sends,
            "connections": connects,
            "errors": errors,
        });
        println!("{line}");
    }
    Ok(())
}

fn cli_mode_name(mode: &Mode) -> &'static str {
    match mode {
        Mode::Stow(a) if a.files.is_some() => "stow-files",
        Mode::Stow(_) => "stow",
        Mode::Qido(_) => "qido",
        Mode::Wado(_) => "wado",
        Mode::Mixed(_) => "mixed",
        Mode::WriteFiles(_) => "write-files",
    }
}

/// `1234567` as `1,234,567`.
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let head = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        r => r,
    };
    let mut out = digits[..head].to_string();
    for group in digits.as_bytes()[head..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn response_heads_are_parsed() {
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\ncontent-length: 42\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                content_length: Some(42),
                chunked: false,
                close: false,
                warning: None,
            }
        );
        // Chunked wins over Content-Length; Connection tokens are case-insensitive lists.
        let head = parse_head(
            b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\nConnection: Upgrade, CLOSE\r\n\r\n",
        )
        .unwrap();
        assert!(head.chunked && head.close);
        assert_eq!(head.status, 409);
        // HTTP/1.0 closes unless kept alive; bare LF line ends are tolerated.
        assert!(parse_head(b"HTTP/1.0 200 OK\n\n").unwrap().close);
        assert!(
            !parse_head(b"HTTP/1.0 200 OK\nConnection: keep-alive\n\n")
                .unwrap()
                .close
        );
        for bad in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n",
        ] {
            assert!(
                parse_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn heads_are_read_up_to_the_blank_line() {
        let data = b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\nHTTP/1.1 200 OK\r\n";
        let mut r = BufReader::with_capacity(4, Cursor::new(&data[..]));
        let head = read_head(&mut r).unwrap().unwrap();
        assert_eq!(head, b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n");
        assert_eq!(parse_head(&head).unwrap().status, 204);
        // The next response's first line is still there; then a close inside a head.
        assert!(read_head(&mut r).is_err());
        let mut empty = Cursor::new(&b""[..]);
        assert!(read_head(&mut empty).unwrap().is_none());
    }

    #[test]
    fn chunked_bodies_are_read_across_buffer_boundaries() {
        let data = b"5\r\nhello\r\n6;name=value\r\n world\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for capacity in [1, 3, 7, 64] {
            let mut r = BufReader::with_capacity(capacity, Cursor::new(&data[..]));
            let mut out = Vec::new();
            assert_eq!(read_chunked(&mut r, usize::MAX, &mut out).unwrap(), 21);
            assert_eq!(out, b"hello world0123456789");
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, b"NEXT", "the next response is left unread");
        }
        // Only the first `keep` bytes are kept; all are counted.
        let mut out = Vec::new();
        let mut r = Cursor::new(&data[..]);
        assert_eq!(read_chunked(&mut r, 3, &mut out).unwrap(), 21);
        assert_eq!(out, b"hel");
        // A body cut short, a bad size, data without its CRLF.
        for bad in [
            &b"5\r\nhel"[..],
            b"5\r\nhello\r\n",
            b"zz\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"5\r\nhelloXY0\r\n\r\n",
            b"0\r\n",
        ] {
            let mut out = Vec::new();
            assert!(
                read_chunked(&mut Cursor::new(bad), usize::MAX, &mut out).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn dates_and_geometry() {
        for days in [-1000, 0, 10_957, 11_016, 20_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(da(days_from_civil(2000, 2, 29) + 1), "20000301");
        assert_eq!(parse_da("20000101"), Some(10_957));
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1_234_567), "1,234,567");
        let g = Geometry::for_bytes(524_288 - 1000);
        assert_eq!((g.rows, g.columns, g.frames), (511, 512, 1));
        let g = Geometry::for_bytes(100 << 20);
        assert!(g.frames == 2 && g.bytes() <= 100 << 20 && g.bytes() > (100 << 20) - 4096);
    }

    #[test]
    fn generated_instances_are_sized_and_spread() {
        let args = GenArgs {
            size_bytes: 200_000,
            instances_per_study: 10,
            series_per_study: 2,
            studies_per_patient: 3,
        };
        let mut rng = Rng(7);
        let g = Generator::new(&args, &mut rng);
        let mut header = Vec::new();
        let first = g.next(&mut rng, &mut header);
        let size = header.len() + g.pixels.len();
        assert!(size <= 200_000 && size > 200_000 - 1100, "{size}");
        assert_eq!(&header[128..132], b"DICM");
        let keys: Vec<InstanceKey> = (0..40).map(|_| g.next(&mut rng, &mut header)).collect();
        assert_eq!(keys[8].study, first.study);
        assert_ne!(keys[9].study, first.study);
        assert_ne!(keys[3].series, keys[4].series);
        assert_eq!(keys[28].patient_id, first.patient_id);
        assert_ne!(keys[29].patient_id, first.patient_id);
        assert!(keys.iter().all(|k| k.sop.len() == 44 && k.sop != first.sop));
    }
}
