//! `kuvasto import PATH…`: bulk-loads a legacy PACS export through the archive rules, offline
//! (the server stopped: the store is locked while it runs).
//!
//! Threads: a survey thread counts the files and bytes to do (the progress total, which grows
//! while it walks); one walker thread feeds a bounded queue of paths ([`QUEUE_PATHS_MAX`]) to
//! `--jobs` workers; each worker streams one file at a time in [`CHUNK_BYTES`] pieces into
//! [`Archive::begin_store`] → [`Upload::write`](crate::archive::Upload::write) →
//! [`Upload::finish`](crate::archive::Upload::finish), exactly as a network upload is stored,
//! so every rule applies and every instance is audited by the archive. The calling thread
//! collects each file's outcome into the summary, the report (one line per file) and the
//! journal.
//!
//! What is imported: every regular file under the given directories (recursively; directory
//! symlinks inside them are not followed, so links cannot loop) and every given file,
//! whatever its name: the engine decides by content and refuses what is not DICOM (C000). A
//! DICOMDIR is not an instance: a file named `DICOMDIR` is not sent, its Referenced File IDs
//! are read and the referenced files outside the walked paths are imported too (those inside
//! are found by the walk); a file whose file meta group names the Media Storage Directory SOP
//! class under another name is skipped as well.
//!
//! Resuming: the journal has one line `outcome\tsize\tmtime_ns\tpath` per finished file
//! (stored, duplicate, replaced, quarantined, rejected), each written with one `write(2)` as
//! the file finishes and `fdatasync`ed every [`JOURNAL_SYNC_LINES`] lines and at the end: a
//! killed import loses no line, a machine crash at most the unsynced ones, whose files are sent
//! again and come back as identical duplicates (the engine writes nothing for them). A file
//! whose path, size and mtime are in the journal is skipped. Refusals the archive calls
//! retryable (disk full, store read-only) are not journaled, and stop the import.
//!
//! The operator override (`--operator-override --register OID`, operators only) is the
//! archive's, not this command's: it sets [`Caller::override_register`].

use crate::archive::directory::Role;
use crate::archive::{Archive, Caller, Failure, FailureReason, Stored};
use crate::config::ConfigArgs;
use anyhow::Context;
use clap::Args;
use kuvasto_engine::instances::PutOutcome;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, Metadata, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, BufWriter, Read, Seek, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Paths the walker may have queued ahead of the workers.
pub const QUEUE_PATHS_MAX: usize = 1024;
/// Outcomes the workers may have queued ahead of the collector.
pub const RESULTS_QUEUED_MAX: usize = 1024;
/// Bytes read from a file and handed to the archive at a time (one buffer per worker).
pub const CHUNK_BYTES: usize = 1 << 20;
/// The journal is `fdatasync`ed at least this often (in lines), and at the end.
pub const JOURNAL_SYNC_LINES: usize = 256;
/// Most worker threads.
pub const JOBS_MAX: usize = 16;
/// The Media Storage Directory Storage SOP class: a DICOMDIR.
pub const DICOMDIR_SOP_CLASS: &str = "1.2.840.10008.1.3.10";
/// The first line of a journal.
const JOURNAL_HEADER: &str = "# kuvasto import journal v1: outcome\tsize\tmtime_ns\tpath";
/// The first line of a report.
pub const REPORT_HEADER: &str = "path\toutcome\treason\tmessage";

/// `kuvasto import`'s own flags (the configuration flags come beside them).
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Files and directories to import. Directories are walked recursively (directory
    /// symlinks inside them are not followed); every regular file is offered to the archive,
    /// whatever its name or extension, and the engine refuses what is not DICOM (C000). A
    /// DICOMDIR is not an instance and is not sent: the files it references are found by the
    /// walk, and those outside the given paths (e.g. when only the DICOMDIR itself is given)
    /// are read from its Referenced File IDs and imported too.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The identity (an `[[identities]]` id) the import acts as, under the same rules as a
    /// network store by it; required in the national profile (standalone: the one identity).
    #[arg(long = "as", value_name = "IDENTITY_ID")]
    pub as_identity: Option<String>,
    /// Operators only, for legacy imports: skip documents first and the register write
    /// right, and place new studies (linked, without documents) in `--register`; validation
    /// still applies. Every instance stored so is audited as `import-override`.
    #[arg(long, requires = "register")]
    pub operator_override: bool,
    /// The register (OID, one the configuration knows) of `--operator-override`.
    #[arg(long, value_name = "OID", requires = "operator_override")]
    pub register: Option<String>,
    /// Worker threads storing files at once (default: the number of CPUs; at most 16).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// The journal of finished files, for resuming (default:
    /// `<data_dir>/import-journal-<hash of the canonical input paths>.log`). Files whose path,
    /// size and mtime it lists are skipped. It is fdatasync'ed every 256 lines: after a crash
    /// of the machine the last few files are sent again and come back as identical
    /// duplicates, which the archive accepts without storing anything twice.
    #[arg(long, value_name = "PATH")]
    pub journal: Option<PathBuf>,
    /// Ignore and truncate the journal: offer every file again (stored ones come back as
    /// duplicates).
    #[arg(long)]
    pub restart: bool,
    /// Where the report goes: one line per file, `path<TAB>outcome<TAB>reason<TAB>message`
    /// (default: `import-report-<unix time>.tsv` in the working directory).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// When stderr is not a terminal, a progress line is printed this often (seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub progress_interval: f64,
}

/// What became of a file (the journal's `outcome` word for the first five).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Done {
    /// A new instance, stored.
    Stored,
    /// The identical instance was already stored: nothing written.
    Duplicate,
    /// A different instance with the same SOP Instance UID was replaced (`duplicates = "replace"`).
    Replaced,
    /// Stored into quarantine (documents first).
    Quarantined,
    /// Refused by the engine or the rules.
    Rejected,
}

impl Done {
    pub fn word(self) -> &'static str {
        match self {
            Done::Stored => "stored",
            Done::Duplicate => "duplicate",
            Done::Replaced => "replaced",
            Done::Quarantined => "quarantined",
            Done::Rejected => "rejected",
        }
    }

    pub fn parse(word: &str) -> Option<Done> {
        [
            Done::Stored,
            Done::Duplicate,
            Done::Replaced,
            Done::Quarantined,
            Done::Rejected,
        ]
        .into_iter()
        .find(|d| d.word() == word)
    }
}

/// One file's (or one walk entry's) outcome.
#[derive(Debug)]
enum Outcome {
    /// Stored, duplicate, replaced or quarantined; the detail names the instance.
    Accepted(Done, String),
    Rejected(Failure),
    /// In the journal already, with this outcome.
    Skipped(Done),
    /// A DICOMDIR: not an instance (the note says what was done with its references).
    Dicomdir(String),
    /// Not a file to import (a directory symlink, a device, a FIFO): the reason.
    Ignored(String),
    /// The file or directory could not be read.
    Unreadable(String),
}

/// A finished entry, from the walker or a worker to the collector.
#[derive(Debug)]
struct FileResult {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    /// Counted as a file (the survey counts the same ones): not for directories and
    /// ignored entries.
    is_file: bool,
    outcome: Outcome,
}

/// The import's counts, as the summary prints them.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub seen: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub replaced: u64,
    pub quarantined: u64,
    pub rejected: u64,
    /// Rejections by reason code.
    pub rejected_by_reason: BTreeMap<u16, u64>,
    /// Skipped because the journal lists them.
    pub skipped: u64,
    /// Of the skipped ones, those the journal lists as rejected.
    pub skipped_rejected: u64,
    pub dicomdirs: u64,
    pub ignored: u64,
    pub unreadable: u64,
    /// Bytes of the files offered to the archive in this run.
    pub bytes: u64,
    /// Files offered to the archive in this run.
    pub files_sent: u64,
    pub elapsed: Duration,
    /// Why the import stopped before the end, if it did.
    pub stopped: Option<String>,
}

fn reason_name_of_code(code: u16) -> &'static str {
    FailureReason::from_code(code).map_or("other", FailureReason::name)
}

impl Summary {
    /// Exit code: 0 when nothing was rejected (in this run or, per the journal, earlier), no
    /// file was unreadable and the import ran to its end; 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.rejected == 0
            && self.skipped_rejected == 0
            && self.unreadable == 0
            && self.stopped.is_none()
        {
            0
        } else {
            1
        }
    }

    pub fn files_per_second(&self) -> f64 {
        per_second(self.files_sent as f64, self.elapsed)
    }

    pub fn mb_per_second(&self) -> f64 {
        per_second(self.bytes as f64 / 1e6, self.elapsed)
    }

    /// The summary's lines (`name: value`; rejections by reason indented under `rejected`).
    pub fn render(&self, report: &Path, journal: &Path) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        if let Some(why) = &self.stopped {
            line(format!("stopped early: {why}"));
        }
        line(format!("files seen: {}", self.seen));
        line(format!("accepted (stored new): {}", self.stored));
        line(format!(
            "duplicates (identical, already stored): {}",
            self.duplicates
        ));
        line(format!("replaced: {}", self.replaced));
        line(format!(
            "quarantined (stored, awaiting documents): {}",
            self.quarantined
        ));
        line(format!("rejected: {}", self.rejected));
        for (code, count) in &self.rejected_by_reason {
            line(format!(
                "  {code:04X} {}: {count}",
                reason_name_of_code(*code)
            ));
        }
        line(format!("skipped (done earlier): {}", self.skipped));
        if self.skipped_rejected > 0 {
            line(format!(
                "  of which rejected earlier: {}",
                self.skipped_rejected
            ));
        }
        line(format!("DICOMDIR (not instances): {}", self.dicomdirs));
        line(format!(
            "ignored (directory symlinks, special files): {}",
            self.ignored
        ));
        line(format!("unreadable: {}", self.unreadable));
        line(format!(
            "bytes: {} ({:.1} MB)",
            self.bytes,
            self.bytes as f64 / 1e6
        ));
        line(format!("elapsed: {:.1} s", self.elapsed.as_secs_f64()));
        line(format!(
            "rate: {:.1} files/s, {:.1} MB/s",
            self.files_per_second(),
            self.mb_per_second()
        ));
        line(format!("report: {}", report.display()));
        line(format!("journal: {}", journal.display()));
        out
    }

    fn add(&mut self, result: &FileResult) {
        if result.is_file {
            self.seen += 1;
        }
        match &result.outcome {
            Outcome::Accepted(done, _) => {
                self.files_sent += 1;
                self.bytes += result.size;
                match done {
                    Done::Stored => self.stored += 1,
                    Done::Duplicate => self.duplicates += 1,
                    Done::Replaced => self.replaced += 1,
                    Done::Quarantined => self.quarantined += 1,
                    Done::Rejected => self.rejected += 1,
                }
            }
            Outcome::Rejected(failure) => {
                self.files_sent += 1;
                self.bytes += result.size;
                self.rejected += 1;
                *self
                    .rejected_by_reason
                    .entry(failure.reason.code())
                    .or_default() += 1;
            }
            Outcome::Skipped(done) => {
                self.skipped += 1;
                if *done == Done::Rejected {
                    self.skipped_rejected += 1;
                }
            }
            Outcome::Dicomdir(_) => self.dicomdirs += 1,
            Outcome::Ignored(_) => self.ignored += 1,
            Outcome::Unreadable(_) => self.unreadable += 1,
        }
    }
}

fn per_second(amount: f64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------
// Progress

/// Where the import stands, for the progress display.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Files finished (whatever the outcome, skipped ones included).
    pub files_done: u64,
    /// Files found so far.
    pub files_total: u64,
    /// The survey is still walking: the totals may grow.
    pub counting: bool,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Files and bytes offered to the archive in this run (the rates).
    pub files_sent: u64,
    pub bytes_sent: u64,
    pub elapsed: Duration,
}

impl Snapshot {
    pub fn files_per_second(&self) -> f64 {
        per_second(self.files_sent as f64, self.elapsed)
    }

    pub fn mb_per_second(&self) -> f64 {
        per_second(self.bytes_sent as f64 / 1e6, self.elapsed)
    }

    /// The time left at the current byte rate, once the total is known.
    pub fn eta(&self) -> Option<Duration> {
        if self.counting {
            return None;
        }
        let rate = self.bytes_sent as f64 / self.elapsed.as_secs_f64();
        let left = self.bytes_total.saturating_sub(self.bytes_done) as f64;
        if left == 0.0 {
            return Some(Duration::ZERO);
        }
        (rate.is_finite() && rate > 0.0).then(|| Duration::from_secs_f64(left / rate))
    }
}

/// `H:MM:SS`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The plain progress line (no terminal): `import: 120/300+ files, 61.2/153.0 MB, 40.1
/// files/s, 20.4 MB/s, elapsed 0:00:03, ETA ?` (`+` and `ETA ?` while the total still grows).
pub fn progress_line(s: &Snapshot) -> String {
    let plus = if s.counting { "+" } else { "" };
    format!(
        "import: {}/{}{plus} files, {:.1}/{:.1}{plus} MB, {:.1} files/s, {:.1} MB/s, elapsed {}, ETA {}",
        s.files_done,
        s.files_total.max(s.files_done),
        s.bytes_done as f64 / 1e6,
        s.bytes_total.max(s.bytes_done) as f64 / 1e6,
        s.files_per_second(),
        s.mb_per_second(),
        clock(s.elapsed),
        s.eta().map_or_else(|| "?".to_string(), clock),
    )
}

/// A progress display.
pub trait Progress {
    /// Called often (every finished file, and a few times a second).
    fn update(&mut self, snapshot: &Snapshot);
    /// Called once at the end.
    fn finish(&mut self, snapshot: &Snapshot);
}

/// When stderr is not a terminal: a [`progress_line`] every `interval` (by the snapshots'
/// `elapsed`), and one at the end.
pub struct LineProgress<W: Write> {
    out: W,
    interval: Duration,
    next_at: Duration,
}

impl<W: Write> LineProgress<W> {
    pub fn new(out: W, interval: Duration) -> Self {
        LineProgress {
            out,
            interval,
            next_at: interval,
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Progress for LineProgress<W> {
    fn update(&mut self, snapshot: &Snapshot) {
        if snapshot.elapsed >= self.next_at {
            // Progress output is best effort: a closed stderr must not stop the import.
            let _ = writeln!(self.out, "{}", progress_line(snapshot));
            let _ = self.out.flush();
            while self.next_at <= snapshot.elapsed {
                self.next_at += self.interval;
            }
        }
    }

    fn finish(&mut self, snapshot: &Snapshot) {
        let _ = writeln!(self.out, "{}", progress_line(snapshot));
        let _ = self.out.flush();
    }
}

/// On a terminal: an `indicatif` bar (files done/total, bytes, rates, ETA).
pub struct BarProgress {
    bar: indicatif::ProgressBar,
}

impl BarProgress {
    pub fn new() -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        let style = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} files {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        BarProgress { bar }
    }

    fn show(&self, s: &Snapshot) {
        self.bar.set_length(s.files_total.max(s.files_done));
        self.bar.set_position(s.files_done);
        let plus = if s.counting { "+" } else { "" };
        self.bar.set_message(format!(
            "{:.1}/{:.1}{plus} MB  {:.1} files/s  {:.1} MB/s  ETA {}",
            s.bytes_done as f64 / 1e6,
            s.bytes_total.max(s.bytes_done) as f64 / 1e6,
            s.files_per_second(),
            s.mb_per_second(),
            s.eta().map_or_else(|| "?".to_string(), clock),
        ));
    }
}

impl Default for BarProgress {
    fn default() -> Self {
        BarProgress::new()
    }
}

impl Progress for BarProgress {
    fn update(&mut self, snapshot: &Snapshot) {
        self.show(snapshot);
    }

    fn finish(&mut self, snapshot: &Snapshot) {
        self.show(snapshot);
        self.bar.finish();
    }
}

// ---------------------------------------------------------------------------------------
// Paths in text files

/// A path as one field of a tab-separated line: `\` `\t` `\n` `\r` escaped with a backslash,
/// other control bytes and bytes that are not UTF-8 as `\xHH`.
pub fn escape_path(path: &Path) -> String {
    let bytes = path.as_os_str().as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The inverse of [`escape_path`]; `None` for a malformed escape.
pub fn unescape_path(text: &str) -> Option<PathBuf> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1)? {
            b'\\' => out.push(b'\\'),
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let hex = std::str::from_utf8(bytes.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            _ => return None,
        }
        i += 2;
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// A message as one field: tabs and line breaks become spaces.
fn one_field(text: &str) -> String {
    text.replace(['\t', '\n', '\r'], " ")
}

// ---------------------------------------------------------------------------------------
// The journal

/// A file as the journal knows it: its path, size and mtime, hashed (128 bits).
fn journal_key(path: &Path, size: u64, mtime_ns: i128) -> u128 {
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        path.as_os_str().as_bytes().hash(&mut h);
        size.hash(&mut h);
        mtime_ns.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

fn mtime_ns(meta: &Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// FNV-1a, 64 bits: stable across builds (the default journal's name).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `import-journal-<16 hex>.log`: the hash of the canonical input paths, sorted (so the
/// same import finds its journal whatever the order or spelling of its arguments).
pub fn default_journal_name(canonical_paths: &[PathBuf]) -> String {
    let mut paths: Vec<&[u8]> = canonical_paths
        .iter()
        .map(|p| p.as_os_str().as_bytes())
        .collect();
    paths.sort();
    paths.dedup();
    let joined = paths.join(&0u8);
    format!("import-journal-{:016x}.log", fnv1a(&joined))
}

/// The journal being appended to.
struct Journal {
    file: File,
    unsynced: usize,
}

/// What a journal says was done: key → outcome.
type JournalDone = HashMap<u128, Done>;

impl Journal {
    /// Opens (creating) the journal and reads what it lists; `restart` truncates it first.
    /// A torn last line (a kill in the middle of a write) is cut off.
    fn open(
        path: &Path,
        restart: bool,
        inputs: &[PathBuf],
    ) -> anyhow::Result<(Journal, JournalDone)> {
        if restart {
            File::create(path)
                .with_context(|| format!("truncating the journal {}", path.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("opening the journal {}", path.display()))?;
        let mut done = JournalDone::new();
        let mut whole = 0u64;
        {
            let mut reader = io::BufReader::new(&file);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .with_context(|| format!("reading the journal {}", path.display()))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                whole += n as u64;
                if let Some((key, outcome)) = parse_journal_line(&line) {
                    done.insert(key, outcome);
                }
            }
        }
        let len = file.metadata()?.len();
        if len != whole {
            file.set_len(whole).with_context(|| {
                format!("cutting the torn end of the journal {}", path.display())
            })?;
        }
        file.seek(io::SeekFrom::End(0))?;
        let mut journal = Journal { file, unsynced: 0 };
        if whole == 0 {
            let inputs: Vec<String> = inputs.iter().map(|p| escape_path(p)).collect();
            journal.write_line(&format!(
                "{JOURNAL_HEADER}\n# inputs: {}\n",
                inputs.join(" ")
            ))?;
            journal.sync()?;
        }
        Ok((journal, done))
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        // One write per line: a kill never tears an earlier line; only the page cache holds
        // it until the next sync.
        self.file.write_all(line.as_bytes())
    }

    fn append(&mut self, done: Done, size: u64, mtime_ns: i128, path: &Path) -> io::Result<()> {
        self.write_line(&format!(
            "{}\t{size}\t{mtime_ns}\t{}\n",
            done.word(),
            escape_path(path)
        ))?;
        self.unsynced += 1;
        if self.unsynced >= JOURNAL_SYNC_LINES {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.unsynced = 0;
        Ok(())
    }
}

fn parse_journal_line(line: &[u8]) -> Option<(u128, Done)> {
    let line = std::str::from_utf8(line).ok()?.strip_suffix('\n')?;
    if line.starts_with('#') {
        return None;
    }
    let mut fields = line.splitn(4, '\t');
    let done = Done::parse(fields.next()?)?;
    let size: u64 = fields.next()?.parse().ok()?;
    let mtime_ns: i128 = fields.next()?.parse().ok()?;
    let path = unescape_path(fields.next()?)?;
    Some((journal_key(&path, size, mtime_ns), done))
}

// ---------------------------------------------------------------------------------------
// Walking

/// What the walk meets.
enum Found {
    File(PathBuf, Metadata),
    /// Not followed: a directory symlink, or not a regular file (device, FIFO, socket).
    Ignored(PathBuf, String),
    Unreadable(PathBuf, String, bool),
}

/// Walks `roots` (canonical; directories recursively, files as they are), calling `visit`
/// until it returns `false`. Directory symlinks below a root are not followed; file
/// symlinks are.
fn walk(roots: &[PathBuf], mut visit: impl FnMut(Found) -> bool) {
    for root in roots {
        match std::fs::metadata(root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.is_file() => {
                if !visit(Found::File(root.clone(), meta)) {
                    return;
                }
                continue;
            }
            Ok(_) => {
                if !visit(Found::Ignored(root.clone(), "not a regular file".into())) {
                    return;
                }
                continue;
            }
            Err(e) => {
                if !visit(Found::Unreadable(root.clone(), e.to_string(), true)) {
                    return;
                }
                continue;
            }
        }
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) => {
                    if !visit(Found::Unreadable(dir, format!("directory: {e}"), false)) {
                        return;
                    }
                    continue;
                }
            };
            let mut subdirs = Vec::new();
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        if !visit(Found::Unreadable(
                            dir.clone(),
                            format!("directory: {e}"),
                            false,
                        )) {
                            return;
                        }
                        break;
                    }
                };
                let path = entry.path();
                let found = match entry.file_type() {
                    Ok(t) if t.is_dir() => {
                        subdirs.push(path);
                        continue;
                    }
                    Ok(t) if t.is_file() => match entry.metadata() {
                        Ok(meta) => Found::File(path, meta),
                        Err(e) => Found::Unreadable(path, e.to_string(), true),
                    },
                    Ok(t) if t.is_symlink() => match std::fs::metadata(&path) {
                        Ok(meta) if meta.is_file() => Found::File(path, meta),
                        Ok(meta) if meta.is_dir() => {
                            Found::Ignored(path, "a directory symlink: not followed".into())
                        }
                        Ok(_) => Found::Ignored(path, "a symlink to a special file".into()),
                        Err(e) => Found::Unreadable(path, format!("a broken symlink: {e}"), true),
                    },
                    Ok(_) => Found::Ignored(path, "not a regular file".into()),
                    Err(e) => Found::Unreadable(path, e.to_string(), true),
                };
                if !visit(found) {
                    return;
                }
            }
            // Depth first, in the order read.
            subdirs.reverse();
            dirs.extend(subdirs);
        }
    }
}

fn is_named_dicomdir(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
}

/// Referenced File ID (0004,1500), CS, as Explicit VR Little Endian writes it (PS3.10 has
/// DICOMDIRs in Explicit VR LE).
const REFERENCED_FILE_ID: [u8; 6] = [0x04, 0x00, 0x00, 0x15, b'C', b'S'];

/// Calls `each` with every Referenced File ID of a DICOMDIR, relative to the DICOMDIR's
/// folder; returns how many there were. The file is scanned as a stream for the element
/// (bounded: one chunk plus one value of at most 64 KiB).
fn dicomdir_references(path: &Path, mut each: impl FnMut(PathBuf)) -> io::Result<usize> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut file = File::open(path)?;
    let mut chunk = vec![0u8; 64 << 10];
    let mut buf: Vec<u8> = Vec::new();
    let mut count = 0;
    loop {
        let n = read_full(&mut file, &mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        let mut partial = None;
        while let Some(found) = memchr::memmem::find(&buf[at..], &REFERENCED_FILE_ID) {
            let start = at + found;
            let Some(len) = buf.get(start + 6..start + 8) else {
                partial = Some(start);
                break;
            };
            let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
            let Some(value) = buf.get(start + 8..start + 8 + len) else {
                partial = Some(start);
                break;
            };
            if let Some(relative) = referenced_path(value) {
                count += 1;
                each(base.join(relative));
            }
            at = start + 8 + len;
        }
        let keep_from = partial
            .unwrap_or_else(|| at.max(buf.len().saturating_sub(REFERENCED_FILE_ID.len() - 1)));
        buf.drain(..keep_from);
    }
    Ok(count)
}

/// A Referenced File ID's value (components separated by `\`) as a relative path; `None`
/// when empty or when a component would leave the DICOMDIR's folder.
fn referenced_path(value: &[u8]) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in value.split(|&b| b == b'\\') {
        let part = part.trim_ascii_start();
        let end = part
            .iter()
            .rposition(|&b| b != b' ' && b != 0)
            .map_or(0, |p| p + 1);
        let part = &part[..end];
        if part.is_empty() || part == b"." || part == b".." || part.contains(&b'/') {
            return None;
        }
        out.push(std::ffi::OsStr::from_bytes(part));
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// A referenced file as it exists: as written, or in lower case (media written in upper
/// case and copied onto a file system that lowered it).
fn existing_reference(path: &Path) -> Option<PathBuf> {
    if path.exists() {
        return Some(path.to_path_buf());
    }
    let lower = PathBuf::from(std::ffi::OsString::from_vec(
        path.as_os_str().as_bytes().to_ascii_lowercase(),
    ));
    // Only the referenced part is lowered when the base has upper case; try both.
    if lower.exists() {
        return Some(lower);
    }
    let (parent, name) = (path.parent()?, path.file_name()?);
    let lowered = parent.join(std::ffi::OsStr::from_bytes(
        &name.as_bytes().to_ascii_lowercase(),
    ));
    lowered.exists().then_some(lowered)
}

// ---------------------------------------------------------------------------------------
// Storing one file

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The SOP Class and Instance UIDs the file meta group in a file's first bytes declares.
fn declared_sop(first: &[u8]) -> Option<(String, String)> {
    use kuvasto_engine::dicom::meta::{read_file_meta, MetaLimits};
    let meta = read_file_meta(first, MetaLimits::default()).ok()??;
    let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
    Some((
        trim(&meta.media_storage_sop_class_uid),
        trim(&meta.media_storage_sop_instance_uid),
    ))
}

/// The SOP Instance UIDs workers are storing now. Exports often hold one instance twice (in
/// two folders, or in two encodings); the engine's duplicate check and the commit are not
/// one atomic step, so two workers storing the same UID at once could both store it. A
/// worker claims the UID its file meta group declares and waits while another holds it, so
/// the second copy meets the first one stored (identical: a duplicate; different: the
/// duplicate policy). Files without a file meta group are not claimed.
#[derive(Default)]
struct Claims {
    held: Mutex<HashSet<String>>,
    freed: std::sync::Condvar,
}

struct Claim<'a> {
    claims: &'a Claims,
    uid: String,
}

impl Claims {
    fn claim(&self, uid: String) -> Claim<'_> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while held.contains(&uid) {
            held = self.freed.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        held.insert(uid.clone());
        Claim { claims: self, uid }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut held = self.claims.held.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.uid);
        self.claims.freed.notify_all();
    }
}

/// Streams one file into the archive.
fn store_file(
    archive: &Archive,
    caller: &Caller,
    claims: &Claims,
    path: PathBuf,
    buf: &mut [u8],
) -> FileResult {
    let mut result = FileResult {
        path,
        size: 0,
        mtime_ns: 0,
        is_file: true,
        outcome: Outcome::Unreadable(String::new()),
    };
    let mut file = match File::open(&result.path) {
        Ok(file) => file,
        Err(e) => {
            result.outcome = Outcome::Unreadable(e.to_string());
            return result;
        }
    };
    match file.metadata() {
        Ok(meta) => {
            result.size = meta.len();
            result.mtime_ns = mtime_ns(&meta);
        }
        Err(e) => {
            result.outcome = Outcome::Unreadable(e.to_string());
            return result;
        }
    }
    let mut upload = archive.begin_store(caller, None);
    let mut first = true;
    let mut _claim = None;
    loop {
        let n = match read_full(&mut file, buf) {
            Ok(n) => n,
            Err(e) => {
                // The unfinished instance is dropped: nothing of it is committed.
                result.outcome = Outcome::Unreadable(format!("reading: {e}"));
                return result;
            }
        };
        if first {
            first = false;
            match declared_sop(&buf[..n]) {
                Some((class, _)) if class == DICOMDIR_SOP_CLASS => {
                    result.outcome = Outcome::Dicomdir(
                        "a DICOMDIR (Media Storage Directory) under another name: not an instance, not sent; its references are not read (the walk finds the files beside it)".into(),
                    );
                    return result;
                }
                Some((_, instance)) if !instance.is_empty() => {
                    _claim = Some(claims.claim(instance));
                }
                _ => {}
            }
        }
        if n == 0 {
            break;
        }
        if let Err(failure) = upload.write(&buf[..n]) {
            result.outcome = Outcome::Rejected(failure);
            return result;
        }
        if n < buf.len() {
            break;
        }
    }
    result.outcome = match upload.finish() {
        Ok(stored) => accepted(&stored),
        Err(failure) => Outcome::Rejected(failure),
    };
    result
}

fn accepted(stored: &Stored) -> Outcome {
    let done = if stored.quarantined {
        Done::Quarantined
    } else {
        match stored.outcome {
            PutOutcome::Stored => Done::Stored,
            PutOutcome::Identical => Done::Duplicate,
            PutOutcome::Replaced => Done::Replaced,
        }
    };
    let a = &stored.attrs;
    Outcome::Accepted(
        done,
        format!(
            "study={} series={} sop_instance={}",
            a.study_instance_uid, a.series_instance_uid, a.sop_instance_uid
        ),
    )
}

// ---------------------------------------------------------------------------------------
// The command

/// Everything decided before the store is opened.
struct Plan {
    config: crate::config::Config,
    roots: Vec<PathBuf>,
    identity: Arc<crate::archive::directory::Identity>,
    override_register: Option<String>,
    jobs: usize,
    progress_interval: Duration,
}

fn plan(config_args: &ConfigArgs, args: &ImportArgs) -> anyhow::Result<Plan> {
    let config = config_args.resolve()?;
    let directory = config.directory()?;
    let identity = match &args.as_identity {
        Some(id) => directory.by_id(id).ok_or_else(|| {
            anyhow::anyhow!("--as {id}: no identity with this id in the configuration's [[identities]]")
        })?,
        None if directory.is_standalone() => directory
            .by_id("standalone")
            .ok_or_else(|| anyhow::anyhow!("the standalone profile has no identity"))?,
        None => anyhow::bail!(
            "the national profile imports as a configured identity: give --as IDENTITY_ID (an [[identities]] id; its rules apply as to its network stores)"
        ),
    };
    if !directory.is_standalone() && !matches!(identity.role, Role::System | Role::Operator) {
        anyhow::bail!(
            "--as {}: a {} identity does not store instances (system and operator identities do)",
            identity.id,
            identity.role.name()
        );
    }
    let override_register = if args.operator_override {
        anyhow::ensure!(
            !directory.is_standalone(),
            "--operator-override: the standalone profile has no register rules to override"
        );
        anyhow::ensure!(
            identity.role == Role::Operator,
            "--operator-override needs an operator identity; {} is a {}",
            identity.id,
            identity.role.name()
        );
        let register = args
            .register
            .as_deref()
            .map(str::trim)
            .unwrap_or_default()
            .to_string();
        anyhow::ensure!(
            directory.controller_of(&register).is_some(),
            "--register {register:?} is not a register of any configured organisation"
        );
        Some(register)
    } else {
        anyhow::ensure!(
            args.register.is_none(),
            "--register goes with --operator-override"
        );
        None
    };
    let mut canonical = Vec::new();
    for path in &args.paths {
        canonical.push(
            path.canonicalize()
                .with_context(|| format!("input path {}", path.display()))?,
        );
    }
    // Each file once: a path inside another given directory is walked there.
    let dirs: Vec<PathBuf> = canonical.iter().filter(|p| p.is_dir()).cloned().collect();
    let mut roots: Vec<PathBuf> = Vec::new();
    for path in canonical {
        let inside = dirs.iter().any(|d| path != *d && path.starts_with(d));
        if !inside && !roots.contains(&path) {
            roots.push(path);
        }
    }
    let jobs = match args.jobs {
        Some(0) => anyhow::bail!("--jobs must be at least 1"),
        Some(n) => n.min(JOBS_MAX),
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(JOBS_MAX),
    };
    let progress_interval = Duration::try_from_secs_f64(args.progress_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            anyhow::anyhow!("--progress-interval must be a positive number of seconds")
        })?;
    Ok(Plan {
        config,
        roots,
        identity,
        override_register,
        jobs,
        progress_interval,
    })
}

/// Runs `kuvasto import`; returns the exit code (0 all stored, 1 some rejected). An `Err`
/// is a usage or open error (exit code 2).
pub fn run(config_args: &ConfigArgs, args: &ImportArgs) -> anyhow::Result<i32> {
    let plan = plan(config_args, args)?;
    let journal_path = match &args.journal {
        Some(path) => path.clone(),
        None => plan
            .config
            .storage
            .data_dir
            .join(default_journal_name(&plan.roots)),
    };
    let report_path = match &args.report {
        Some(path) => path.clone(),
        None => PathBuf::from(format!(
            "import-report-{}.tsv",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        )),
    };
    let store = crate::serve::open_store(&plan.config)
        .context("the store cannot be opened (a running server holds it: stop it first)")?;
    let archive = crate::serve::open_archive(&plan.config, store)?;
    let (mut journal, done_earlier) = Journal::open(&journal_path, args.restart, &plan.roots)?;
    let mut report = BufWriter::new(
        File::create(&report_path)
            .with_context(|| format!("creating the report {}", report_path.display()))?,
    );
    writeln!(report, "{REPORT_HEADER}")?;
    eprintln!(
        "kuvasto import: {} path(s) as {} ({} jobs); journal {} ({} files done earlier); report {}",
        plan.roots.len(),
        plan.identity.id,
        plan.jobs,
        journal_path.display(),
        done_earlier.len(),
        report_path.display()
    );
    let caller = Caller {
        identity: plan.identity.clone(),
        on_behalf_of: None,
        protocol: "cli",
        peer: "import".into(),
        override_register: plan.override_register.clone(),
    };
    let mut progress: Box<dyn Progress> = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        Box::new(BarProgress::new())
    } else {
        Box::new(LineProgress::new(io::stderr(), plan.progress_interval))
    };
    let collected = import(
        &archive,
        &caller,
        &plan,
        &done_earlier,
        &mut journal,
        &mut report,
        progress.as_mut(),
    );
    let end = journal
        .sync()
        .context("syncing the journal")
        .and_then(|()| report.flush().context("writing the report"));
    match archive.into_store() {
        Some(store) => store.close(),
        None => {
            tracing::warn!("the store was still held at the end; it closes as the process exits")
        }
    }
    let summary = collected?;
    end?;
    print!("{}", summary.render(&report_path, &journal_path));
    Ok(summary.exit_code())
}

/// Counters the survey and the walker share with the collector.
#[derive(Default)]
struct Totals {
    files: AtomicU64,
    bytes: AtomicU64,
    counting: AtomicBool,
}

/// Walks, stores and collects; the summary, or a fatal error (journal or report unwritable).
#[allow(clippy::too_many_arguments)]
fn import(
    archive: &Archive,
    caller: &Caller,
    plan: &Plan,
    done_earlier: &JournalDone,
    journal: &mut Journal,
    report: &mut BufWriter<File>,
    progress: &mut dyn Progress,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let totals = Totals::default();
    totals.counting.store(true, Ordering::Relaxed);
    let stop = AtomicBool::new(false);
    let claims = Claims::default();
    let mut summary = Summary::default();
    let mut fatal: Option<anyhow::Error> = None;
    std::thread::scope(|s| {
        let (paths_tx, paths_rx) = mpsc::sync_channel::<PathBuf>(QUEUE_PATHS_MAX);
        let (results_tx, results_rx) = mpsc::sync_channel::<FileResult>(RESULTS_QUEUED_MAX);
        std::thread::Builder::new()
            .name("import-survey".into())
            .spawn_scoped(s, || {
                walk(&plan.roots, |found| {
                    if let Found::File(_, meta) = &found {
                        totals.files.fetch_add(1, Ordering::Relaxed);
                        totals.bytes.fetch_add(meta.len(), Ordering::Relaxed);
                    } else if let Found::Unreadable(_, _, true) = &found {
                        totals.files.fetch_add(1, Ordering::Relaxed);
                    }
                    !stop.load(Ordering::Relaxed)
                });
                totals.counting.store(false, Ordering::Relaxed);
            })
            .expect("spawning the survey thread");
        let walker_results = results_tx.clone();
        let (totals_ref, stop_ref) = (&totals, &stop);
        std::thread::Builder::new()
            .name("import-walk".into())
            .spawn_scoped(s, move || {
                feed(
                    plan,
                    done_earlier,
                    paths_tx,
                    walker_results,
                    totals_ref,
                    stop_ref,
                );
            })
            .expect("spawning the walker thread");
        let paths_rx = Arc::new(Mutex::new(paths_rx));
        let claims = &claims;
        for n in 0..plan.jobs {
            let paths_rx = paths_rx.clone();
            let results_tx = results_tx.clone();
            let stop = &stop;
            std::thread::Builder::new()
                .name(format!("import-{n}"))
                .spawn_scoped(s, move || {
                    work(archive, caller, claims, &paths_rx, &results_tx, stop)
                })
                .expect("spawning a worker thread");
        }
        drop(paths_rx);
        drop(results_tx);
        let mut snapshot = Snapshot::default();
        loop {
            let received = results_rx.recv_timeout(Duration::from_millis(200));
            match received {
                Ok(result) => {
                    summary.add(&result);
                    if result.is_file {
                        snapshot.files_done += 1;
                        snapshot.bytes_done += result.size;
                    }
                    if let Err(e) = record(&result, journal, report) {
                        if fatal.is_none() {
                            stop.store(true, Ordering::Relaxed);
                            fatal = Some(e);
                        }
                    }
                    if let Outcome::Rejected(failure) = &result.outcome {
                        if failure.retryable && summary.stopped.is_none() {
                            stop.store(true, Ordering::Relaxed);
                            summary.stopped = Some(format!(
                                "the archive cannot store now ({}); run the same command again to go on",
                                one_field(&failure.message)
                            ));
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            snapshot.files_total = totals.files.load(Ordering::Relaxed);
            snapshot.bytes_total = totals.bytes.load(Ordering::Relaxed);
            snapshot.counting = totals.counting.load(Ordering::Relaxed);
            snapshot.files_sent = summary.files_sent;
            snapshot.bytes_sent = summary.bytes;
            snapshot.elapsed = started.elapsed();
            progress.update(&snapshot);
        }
        snapshot.counting = false;
        snapshot.elapsed = started.elapsed();
        progress.finish(&snapshot);
    });
    summary.elapsed = started.elapsed();
    match fatal {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// The walker: queues the files to store, answers the journaled ones itself, reads
/// DICOMDIRs.
fn feed(
    plan: &Plan,
    done_earlier: &JournalDone,
    paths: SyncSender<PathBuf>,
    results: SyncSender<FileResult>,
    totals: &Totals,
    stop: &AtomicBool,
) {
    let root_dirs: Vec<&PathBuf> = plan.roots.iter().filter(|r| r.is_dir()).collect();
    // Files queued from outside the walked directories (given files, DICOMDIR references).
    let mut queued_outside: HashSet<PathBuf> =
        plan.roots.iter().filter(|r| !r.is_dir()).cloned().collect();
    // Queues one file, or answers it from the journal; false when the import stops.
    let offer = |path: PathBuf, meta: &Metadata| -> bool {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let mtime = mtime_ns(meta);
        if let Some(done) = done_earlier.get(&journal_key(&path, meta.len(), mtime)) {
            return results
                .send(FileResult {
                    path,
                    size: meta.len(),
                    mtime_ns: mtime,
                    is_file: true,
                    outcome: Outcome::Skipped(*done),
                })
                .is_ok();
        }
        paths.send(path).is_ok()
    };
    walk(&plan.roots, |found| match found {
        Found::File(path, meta) if is_named_dicomdir(&path) => {
            let (mut outside, mut missing) = (0usize, 0usize);
            let mut go_on = true;
            let read = dicomdir_references(&path, |referenced| {
                if !go_on {
                    return;
                }
                let Some(existing) = existing_reference(&referenced) else {
                    missing += 1;
                    return;
                };
                let Ok(canonical) = existing.canonicalize() else {
                    missing += 1;
                    return;
                };
                if root_dirs.iter().any(|r| canonical.starts_with(r)) {
                    return; // the walk finds it
                }
                if !queued_outside.insert(canonical.clone()) {
                    return;
                }
                let Ok(meta) = std::fs::metadata(&canonical) else {
                    missing += 1;
                    return;
                };
                if !meta.is_file() {
                    return;
                }
                outside += 1;
                totals.files.fetch_add(1, Ordering::Relaxed);
                totals.bytes.fetch_add(meta.len(), Ordering::Relaxed);
                go_on = offer(canonical, &meta);
            });
            let note = match read {
                Ok(count) => format!(
                    "DICOMDIR: not an instance, not sent; {count} referenced files, {outside} of them outside the given paths (imported from here), {missing} missing"
                ),
                Err(e) => format!("DICOMDIR: not an instance, not sent; its references could not be read: {e}"),
            };
            go_on
                && results
                    .send(FileResult {
                        path,
                        size: meta.len(),
                        mtime_ns: mtime_ns(&meta),
                        is_file: true,
                        outcome: Outcome::Dicomdir(note),
                    })
                    .is_ok()
        }
        Found::File(path, meta) => offer(path, &meta),
        Found::Ignored(path, why) => results
            .send(FileResult {
                path,
                size: 0,
                mtime_ns: 0,
                is_file: false,
                outcome: Outcome::Ignored(why),
            })
            .is_ok(),
        Found::Unreadable(path, why, is_file) => results
            .send(FileResult {
                path,
                size: 0,
                mtime_ns: 0,
                is_file,
                outcome: Outcome::Unreadable(why),
            })
            .is_ok(),
    });
}

/// A worker: stores queued files until the queue closes or the import stops.
fn work(
    archive: &Archive,
    caller: &Caller,
    claims: &Claims,
    paths: &Mutex<Receiver<PathBuf>>,
    results: &SyncSender<FileResult>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let next = match paths.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return, // another worker panicked
        };
        let Ok(path) = next else {
            return;
        };
        let result = store_file(archive, caller, claims, path, &mut buf);
        if results.send(result).is_err() {
            return;
        }
    }
}

/// The result's report line, and its journal line when it is one to remember.
fn record(
    result: &FileResult,
    journal: &mut Journal,
    report: &mut BufWriter<File>,
) -> anyhow::Result<()> {
    let (outcome, reason, message) = match &result.outcome {
        Outcome::Accepted(done, detail) => (done.word(), String::new(), detail.clone()),
        Outcome::Rejected(failure) => (
            "rejected",
            format!("{:04X}", failure.reason.code()),
            one_field(&failure.message),
        ),
        Outcome::Skipped(done) => (
            "skipped",
            String::new(),
            format!("done earlier: {}", done.word()),
        ),
        Outcome::Dicomdir(note) => ("dicomdir", String::new(), one_field(note)),
        Outcome::Ignored(why) => ("ignored", String::new(), one_field(why)),
        Outcome::Unreadable(why) => ("unreadable", String::new(), one_field(why)),
    };
    writeln!(
        report,
        "{}\t{outcome}\t{reason}\t{message}",
        escape_path(&result.path)
    )
    .context("writing the report")?;
    let done = match &result.outcome {
        Outcome::Accepted(done, _) => Some(*done),
        // A refusal the archive calls retryable is not final: the next run tries again.
        Outcome::Rejected(failure) if !failure.retryable => Some(Done::Rejected),
        _ => None,
    };
    if let Some(done) = done {
        journal
            .append(done, result.size, result.mtime_ns, &result.path)
            .context("writing the journal")?;
        if journal.unsynced == 0 {
            report.flush().context("writing the report")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(elapsed_ms: u64, done: u64) -> Snapshot {
        Snapshot {
            files_done: done,
            files_total: 300,
            counting: false,
            bytes_done: done * 1_000_000,
            bytes_total: 300_000_000,
            files_sent: done,
            bytes_sent: done * 1_000_000,
            elapsed: Duration::from_millis(elapsed_ms),
        }
    }

    #[test]
    fn the_plain_progress_line_comes_every_interval_and_at_the_end() {
        let mut p = LineProgress::new(Vec::new(), Duration::from_secs(5));
        for (ms, done) in [
            (1_000, 10),
            (4_900, 49),
            (5_000, 50),
            (7_000, 70),
            (16_000, 160),
        ] {
            p.update(&snapshot(ms, done));
        }
        p.finish(&snapshot(20_000, 300));
        let text = String::from_utf8(p.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "import: 50/300 files, 50.0/300.0 MB, 10.0 files/s, 10.0 MB/s, elapsed 0:00:05, ETA 0:00:25",
                "import: 160/300 files, 160.0/300.0 MB, 10.0 files/s, 10.0 MB/s, elapsed 0:00:16, ETA 0:00:14",
                "import: 300/300 files, 300.0/300.0 MB, 15.0 files/s, 15.0 MB/s, elapsed 0:00:20, ETA 0:00:00",
            ]
        );
        let mut counting = snapshot(3_000, 12);
        counting.counting = true;
        counting.files_total = 40;
        assert_eq!(
            progress_line(&counting),
            "import: 12/40+ files, 12.0/300.0+ MB, 4.0 files/s, 4.0 MB/s, elapsed 0:00:03, ETA ?"
        );
        assert_eq!(clock(Duration::from_secs(3 * 3600 + 62)), "3:01:02");
    }

    #[test]
    fn paths_survive_the_escaping_of_text_files() {
        use std::os::unix::ffi::OsStrExt;
        for raw in [
            &b"/plain/path.dcm"[..],
            b"/with\ttab/and\nnewline\\back",
            b"/latin1-\xe4\xf6/x",
            b"/\x01ctl/\xc3\xa4 ok",
        ] {
            let path = Path::new(std::ffi::OsStr::from_bytes(raw));
            let text = escape_path(path);
            assert!(!text.contains(['\t', '\n']), "{text}");
            assert_eq!(unescape_path(&text).as_deref(), Some(path), "{text}");
        }
        assert_eq!(unescape_path("bad\\q"), None);
        assert_eq!(unescape_path("bad\\x4"), None);
    }

    #[test]
    fn the_journal_is_read_back_and_a_torn_last_line_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.log");
        let inputs = vec![dir.path().to_path_buf()];
        let (mut journal, done) = Journal::open(&path, false, &inputs).unwrap();
        assert!(done.is_empty());
        journal
            .append(Done::Stored, 10, 123, Path::new("/a/b"))
            .unwrap();
        journal
            .append(Done::Rejected, 11, -5, Path::new("/a/c\td"))
            .unwrap();
        drop(journal);
        // A kill in the middle of a line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"stored\t12\t9\t/a/tor").unwrap();
        drop(file);
        let (mut journal, done) = Journal::open(&path, false, &inputs).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(
            done.get(&journal_key(Path::new("/a/b"), 10, 123)),
            Some(&Done::Stored)
        );
        assert_eq!(
            done.get(&journal_key(Path::new("/a/c\td"), 11, -5)),
            Some(&Done::Rejected)
        );
        assert_eq!(done.get(&journal_key(Path::new("/a/b"), 10, 124)), None);
        journal
            .append(Done::Duplicate, 12, 9, Path::new("/a/e"))
            .unwrap();
        drop(journal);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("/a/tor"), "{text}");
        assert!(text.ends_with("duplicate\t12\t9\t/a/e\n"), "{text}");
        let (_, done) = Journal::open(&path, false, &inputs).unwrap();
        assert_eq!(done.len(), 3);
        // --restart forgets everything.
        let (_, done) = Journal::open(&path, true, &inputs).unwrap();
        assert!(done.is_empty());
    }

    #[test]
    fn the_default_journal_name_ignores_order_and_repeats() {
        let a = PathBuf::from("/exports/a");
        let b = PathBuf::from("/exports/b");
        let one = default_journal_name(&[a.clone(), b.clone()]);
        assert_eq!(
            one,
            default_journal_name(&[b.clone(), a.clone(), a.clone()])
        );
        assert_ne!(one, default_journal_name(std::slice::from_ref(&a)));
        assert!(one.starts_with("import-journal-") && one.ends_with(".log"));
        assert_eq!(one.len(), "import-journal-".len() + 16 + ".log".len());
    }

    #[test]
    fn dicomdir_references_are_read_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("DICOMDIR");
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        let mut expected = Vec::new();
        // Enough records that some straddle the 64 KiB chunks.
        for i in 0..5000 {
            let value = format!("PAT{:05}\\IM{i:06}", i % 7);
            let mut value = value.into_bytes();
            if value.len() % 2 == 1 {
                value.push(b' ');
            }
            bytes.extend_from_slice(&[0x04, 0x00, 0x30, 0x14, b'U', b'L', 4, 0, 1, 2, 3, 4]);
            bytes.extend_from_slice(&REFERENCED_FILE_ID);
            bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
            bytes.extend_from_slice(&value);
            expected.push(dir.path().join(format!("PAT{:05}/IM{i:06}", i % 7)));
        }
        // `..` never leaves the folder.
        bytes.extend_from_slice(&REFERENCED_FILE_ID);
        bytes.extend_from_slice(&8u16.to_le_bytes());
        bytes.extend_from_slice(b"..\\ETC  ");
        std::fs::write(&path, &bytes).unwrap();
        let mut got = Vec::new();
        let count = dicomdir_references(&path, |p| got.push(p)).unwrap();
        assert_eq!(count, 5000);
        assert_eq!(got, expected);
        assert_eq!(referenced_path(b"A\\B\\C1 "), Some(PathBuf::from("A/B/C1")));
        assert_eq!(referenced_path(b"A\\\\B"), None);
        assert_eq!(referenced_path(b"a/b"), None);
    }

    #[test]
    fn the_summary_counts_and_exit_code() {
        let mut s = Summary {
            seen: 10,
            stored: 6,
            duplicates: 1,
            rejected: 3,
            elapsed: Duration::from_secs(2),
            files_sent: 10,
            bytes: 4_000_000,
            ..Summary::default()
        };
        s.rejected_by_reason.insert(0xC000, 2);
        s.rejected_by_reason.insert(0xC011, 1);
        let text = s.render(Path::new("r.tsv"), Path::new("j.log"));
        assert!(text.contains("files seen: 10\n"), "{text}");
        assert!(text.contains("accepted (stored new): 6\n"), "{text}");
        assert!(
            text.contains(
                "rejected: 3\n  C000 cannot understand: 2\n  C011 invalid PatientID: 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("rate: 5.0 files/s, 2.0 MB/s\n"), "{text}");
        assert_eq!(s.exit_code(), 1);
        s.rejected = 0;
        assert_eq!(s.exit_code(), 0);
        s.skipped_rejected = 1;
        assert_eq!(s.exit_code(), 1);
    }
}
