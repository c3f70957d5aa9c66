//! The workload the power-cut harness runs on the engine, and the check after each cut.
//!
//! The child process (`powercut_child`) runs a [`Mix`] of threads on one store: putters
//! (`Store::put` of small, multi-chunk and large objects, deleting three in five again),
//! streamers (`Store::put_stream` in uneven pieces, several chunks each, deleting every
//! other one again, so streams cross segment boundaries with the small segments of
//! [`store_config`]), instancers (`Store::put_instance` of small CT instances in uneven
//! pieces, `Store::delete_instance` of one in three) and one compactor (`Store::compact`
//! with a garbage ratio of 0.3, in a loop). Every object's bytes derive from its key
//! ([`object_spec`]) and every instance's from its SOP Instance UID
//! ([`kuvasto_tests::workload_instance`]: one of four test patients, two studies each), so
//! anything found later can be checked.
//!
//! The ack log lives on the real disk. A line is appended only *after* the store
//! acknowledged the operation: `PUT key`; `DELETING key` before a delete and `DEL key`
//! after it; `IPUTTING uid` before an instance put and `IPUT uid` after it; `IDELETING uid`
//! and `IDEL uid` around an instance delete; `COMPACTING` when a compaction starts copying
//! and `COMPACTED ...` when it removed segments (markers for the harness, not promises).
//! [`expectations`] and [`instance_expectations`] turn the log into what must hold after a
//! cut and [`check`] holds a reopened store to it: objects byte for byte, and for instances
//! [`kuvasto_tests::check_instances`] — each acknowledged instance's object byte for byte,
//! `Store::instance_metadata` naming that object's seq, its catalog row by SOP Instance UID
//! with the right attributes; each acknowledged instance delete with no object, metadata or
//! row; and each test patient's catalog listing (and its studies' instance counts) exactly
//! the instances present: every acknowledged one, in-doubt ones only whole.

use kuvasto_engine::{CompactOptions, Namespace, Store, StoreConfig};
use kuvasto_tests::{
    check_instances, content, crash_object, describe_difference, instance_ack, is_instance_key,
    InstanceCheck, InstanceExpect,
};
use std::collections::BTreeMap;

pub use kuvasto_tests::Finding;

/// The store configuration of the child and of the check: 8 MiB segments (several seal per
/// cycle), 64 KiB put buffers (objects from 64 KiB on are several chunks), small batches.
pub fn store_config(direct_io: bool) -> StoreConfig {
    StoreConfig {
        segment_size_bytes_max: 8 << 20,
        put_buffer_bytes: 64 << 10,
        batch_bytes_max: 512 << 10,
        requests_queued_max: 64,
        flushers: 4,
        direct_io,
        ..StoreConfig::default()
    }
}

/// Compaction as the child runs it: online, segments at least 30 % garbage.
pub fn compact_options() -> CompactOptions {
    CompactOptions {
        garbage_ratio_min: 0.3,
        ..CompactOptions::default()
    }
}

/// What a workload thread does (shared with the kill -9 test's child).
pub use kuvasto_tests::workers::Role;

/// How many threads of each role the child runs, and how fast they write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub putters: usize,
    pub streamers: usize,
    pub instancers: usize,
    pub compactors: usize,
    /// A putter and an instancer pause this long after each object, a streamer twice as
    /// long, and a streamer 0 to 3 times as long after each piece (a slow client, so streams
    /// stay in flight across seals and compactions). The file system takes ~400 MB/s; unpaced
    /// writers outrun compaction and fill memory.
    pub pause_ms: u64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            putters: 3,
            streamers: 2,
            instancers: 1,
            compactors: 1,
            pause_ms: 4,
        }
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--putters {} --streamers {} --instancers {} --compactors {} --pause-ms {}",
            self.putters, self.streamers, self.instancers, self.compactors, self.pause_ms
        )
    }
}

/// Parses the child's options (`--putters N --streamers N --instancers N --compactors N
/// --pause-ms N`, any subset; the rest default).
impl std::str::FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix::default();
        let mut words = s.split_whitespace();
        while let Some(flag) = words.next() {
            let value: u64 = words
                .next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .parse()
                .map_err(|_| format!("{flag} needs a number"))?;
            match flag {
                "--putters" => mix.putters = value as usize,
                "--streamers" => mix.streamers = value as usize,
                "--instancers" => mix.instancers = value as usize,
                "--compactors" => mix.compactors = value as usize,
                "--pause-ms" => mix.pause_ms = value,
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        Ok(mix)
    }
}

impl Mix {
    /// Every thread's role, in a fixed order.
    pub fn roles(&self) -> Vec<Role> {
        let mut roles = vec![Role::Putter; self.putters];
        roles.extend(std::iter::repeat_n(Role::Streamer, self.streamers));
        roles.extend(std::iter::repeat_n(Role::Instancer, self.instancers));
        roles.extend(std::iter::repeat_n(Role::Compactor, self.compactors));
        roles
    }
}

/// A key's object: the seed of its bytes and its length. Putters' objects are those of the
/// kill -9 test (200 B to 800 KB, a third of them several chunks); streams are 70 KB to
/// 570 KB (2 to 9 chunks).
pub fn object_spec(key: &str) -> (u64, usize) {
    let (seed, len) = crash_object(key);
    let streamed = key.split('-').nth(1).is_some_and(|t| t.starts_with('s'));
    if streamed {
        (seed, 70_000 + (seed >> 12) as usize % 500_000)
    } else {
        (seed, len)
    }
}

/// The bytes stored under `key`.
pub fn object_bytes(key: &str) -> Vec<u8> {
    let (seed, len) = object_spec(key);
    content(seed, len)
}

/// The SOP Instance UID of instancer `thread`'s `i`th instance in `cycle` (the instance
/// itself is [`kuvasto_tests::workload_instance`] of it).
pub fn instance_uid(cycle: u64, thread: usize, i: u64) -> String {
    format!("1.2.15.10.{cycle}.{thread}.{i}")
}

/// One line of the ack log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Put(String),
    Deleting(String),
    Deleted(String),
    /// `IPUTTING`, `IPUT`, `IDELETING` or `IDEL` of a SOP Instance UID.
    Instance(String, InstanceExpect),
    Compacting,
    Compacted,
    /// A line cut short by the kill, or a verb this build does not know.
    Other,
}

impl Line {
    pub fn parse(line: &str) -> Line {
        if let Some((uid, expect)) = instance_ack(line) {
            return Line::Instance(uid.to_string(), expect);
        }
        match line.split_once(' ') {
            Some(("PUT", key)) => Line::Put(key.to_string()),
            Some(("DELETING", key)) => Line::Deleting(key.to_string()),
            Some(("DEL", key)) => Line::Deleted(key.to_string()),
            Some(("COMPACTED", _)) => Line::Compacted,
            None if line == "COMPACTING" => Line::Compacting,
            _ => Line::Other,
        }
    }
}

/// What a key must read as after a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Acknowledged put: must read back byte for byte.
    Present,
    /// Acknowledged delete: must stay deleted.
    Deleted,
    /// A delete started but not acknowledged: either, but intact if present.
    Either,
}

/// What the ack log promises, key by key (the last acknowledged operation wins). Only lines
/// ending in a newline count: a line the kill cut short was never acknowledged.
pub fn expectations(log: &str) -> BTreeMap<String, Expect> {
    let mut expect = BTreeMap::new();
    for line in complete_lines(log).lines() {
        match Line::parse(line) {
            Line::Put(key) => {
                expect.insert(key, Expect::Present);
            }
            Line::Deleting(key) => {
                expect.insert(key, Expect::Either);
            }
            Line::Deleted(key) => {
                expect.insert(key, Expect::Deleted);
            }
            Line::Instance(..) | Line::Compacting | Line::Compacted | Line::Other => {}
        }
    }
    expect
}

/// The log up to its last newline: a line the kill cut short was never acknowledged.
fn complete_lines(log: &str) -> &str {
    match log.rfind('\n') {
        Some(end) => &log[..end],
        None => "",
    }
}

/// What the ack log promises, instance by instance (the last line wins): `IPUT` present,
/// `IDEL` deleted, `IPUTTING` or `IDELETING` without its acknowledgement in doubt.
pub fn instance_expectations(log: &str) -> BTreeMap<String, InstanceExpect> {
    let mut expect = BTreeMap::new();
    for line in complete_lines(log).lines() {
        if let Line::Instance(uid, what) = Line::parse(line) {
            expect.insert(uid, what);
        }
    }
    expect
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Keys with an expectation that were checked.
    pub checked: usize,
    /// Of those, acknowledged puts read back whole.
    pub present_ok: usize,
    /// Of those, acknowledged deletes still deleted.
    pub deleted_ok: usize,
    /// Objects the store holds beyond the acknowledged ones (puts in flight at the kill),
    /// each checked byte for byte too.
    pub unacknowledged_present: usize,
    /// Acknowledged puts that are gone.
    pub lost: Vec<Finding>,
    /// Acknowledged deletes whose object is back.
    pub resurrected: Vec<Finding>,
    /// Objects that read back wrong, or fail to read.
    pub corrupted: Vec<Finding>,
    /// The instances: acknowledged puts and deletes, in-doubt ones, the catalog.
    pub instances: InstanceCheck,
}

impl CheckReport {
    /// Every finding, lost first, the instances' after the objects'.
    pub fn findings(&self) -> impl Iterator<Item = (&'static str, &Finding)> {
        self.lost
            .iter()
            .map(|f| ("lost", f))
            .chain(self.resurrected.iter().map(|f| ("resurrected", f)))
            .chain(self.corrupted.iter().map(|f| ("corrupted", f)))
            .chain(self.instances.findings())
    }

    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.resurrected.is_empty()
            && self.corrupted.is_empty()
            && self.instances.is_clean()
    }
}

/// Reads `key` and compares it with its derived bytes; `Ok(None)` if absent.
fn read_and_compare(store: &Store, key: &str) -> Result<Option<()>, String> {
    let object = match store.get(Namespace::OBJECT, key.as_bytes()) {
        Ok(None) => return Ok(None),
        Ok(Some(object)) => object,
        Err(e) => return Err(format!("get failed: {e}")),
    };
    let bytes = object.read_all().map_err(|e| format!("read failed: {e}"))?;
    let want = object_bytes(key);
    if bytes == want {
        return Ok(Some(()));
    }
    Err(describe_difference(&bytes, &want))
}

/// Holds a reopened store to the ack log's promises — objects ([`expectations`]) and
/// instances ([`instance_expectations`], checked by [`kuvasto_tests::check_instances`]) —
/// and checks every other object it holds byte for byte.
pub fn check(
    store: &Store,
    expect: &BTreeMap<String, Expect>,
    instances: &BTreeMap<String, InstanceExpect>,
) -> CheckReport {
    let mut report = CheckReport::default();
    let finding = |key: &str, expected: &str, found: String| Finding {
        key: key.to_string(),
        expected: expected.to_string(),
        found,
    };
    for (key, &expected) in expect {
        report.checked += 1;
        let wanted = match expected {
            Expect::Present => "present (acknowledged put)",
            Expect::Deleted => "deleted (acknowledged delete)",
            Expect::Either => "present or deleted (delete not acknowledged)",
        };
        match (expected, read_and_compare(store, key)) {
            (_, Err(what)) => report.corrupted.push(finding(key, wanted, what)),
            (Expect::Present, Ok(Some(()))) => report.present_ok += 1,
            (Expect::Present, Ok(None)) => {
                report.lost.push(finding(key, wanted, "no object".into()))
            }
            (Expect::Deleted, Ok(None)) => report.deleted_ok += 1,
            (Expect::Deleted, Ok(Some(()))) => {
                report
                    .resurrected
                    .push(finding(key, wanted, "the object, intact".into()))
            }
            (Expect::Either, Ok(_)) => {}
        }
    }
    for key in store.keys(Namespace::OBJECT) {
        let key = String::from_utf8_lossy(&key).into_owned();
        // Instances' objects are `check_instances`'s.
        if expect.contains_key(&key) || is_instance_key(&key) {
            continue;
        }
        match read_and_compare(store, &key) {
            Ok(Some(())) => report.unacknowledged_present += 1,
            Ok(None) => {}
            Err(what) => report.corrupted.push(finding(
                &key,
                "intact if present (put not acknowledged)",
                what,
            )),
        }
    }
    report.instances = check_instances(store, instances);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_promises_only_complete_lines_and_the_last_word_wins() {
        let log = "PUT a\nPUT b\nDELETING a\nDEL a\nPUT c\nDELETING c\nCOMPACTING\nPUT d";
        let expect = expectations(log);
        assert_eq!(expect.get("a"), Some(&Expect::Deleted));
        assert_eq!(expect.get("b"), Some(&Expect::Present));
        assert_eq!(expect.get("c"), Some(&Expect::Either));
        assert_eq!(
            expect.get("d"),
            None,
            "a line without its newline was cut by the kill"
        );
        assert_eq!(
            Line::parse("COMPACTED removed=[1] written=[4]"),
            Line::Compacted
        );
        assert_eq!(Line::parse("PU"), Line::Other);
    }

    #[test]
    fn instance_lines_promise_present_deleted_or_in_doubt() {
        let log = "IPUTTING 1.2.1\nIPUT 1.2.1\nIPUTTING 1.2.2\nIPUT 1.2.2\nIDELETING 1.2.1\n\
                   IDEL 1.2.1\nIDELETING 1.2.2\nIPUTTING 1.2.3\nPUT c0-p0-1\nIPUTTING 1.2.4\n\
                   IPUT 1.2.4";
        let expect = instance_expectations(log);
        let want: BTreeMap<String, InstanceExpect> = [
            ("1.2.1", InstanceExpect::Deleted),
            ("1.2.2", InstanceExpect::InDoubt),
            ("1.2.3", InstanceExpect::InDoubt),
            ("1.2.4", InstanceExpect::InDoubt),
        ]
        .into_iter()
        .map(|(uid, e)| (uid.to_string(), e))
        .collect();
        assert_eq!(expect, want, "the last complete line wins");
        assert_eq!(
            expectations(log).into_iter().collect::<Vec<_>>(),
            vec![("c0-p0-1".to_string(), Expect::Present)],
            "instance lines promise nothing about plain objects"
        );
        assert_eq!(
            Line::parse("IPUT 1.2.5"),
            Line::Instance("1.2.5".into(), InstanceExpect::Present)
        );
        assert!(kuvasto_tests::is_instance_key(&instance_uid(3, 0, 7)));
        assert!(!kuvasto_tests::is_instance_key("c3-p0-7"));
    }

    #[test]
    fn object_sizes_cover_chunks_and_streams() {
        let chunk = store_config(true).put_buffer_bytes;
        let puts: Vec<usize> = (0..200)
            .map(|i| object_spec(&format!("c0-p0-{i}")).1)
            .collect();
        assert!(puts.iter().any(|&l| l < 4096));
        assert!(puts.iter().any(|&l| l > 4 * chunk));
        let streams: Vec<usize> = (0..50)
            .map(|i| object_spec(&format!("c0-s1-{i}")).1)
            .collect();
        assert!(streams.iter().all(|&l| l > chunk && l < 9 * chunk));
        assert_eq!(object_bytes("c1-s0-3"), object_bytes("c1-s0-3"));
        assert_eq!(Mix::default().roles().len(), 7);
        assert_eq!(
            Mix::default()
                .roles()
                .iter()
                .filter(|&&r| r == Role::Instancer)
                .count(),
            1
        );
        let mix: Mix = "--putters 1 --streamers 0 --instancers 2 --pause-ms 9"
            .parse()
            .unwrap();
        assert_eq!(
            (
                mix.putters,
                mix.streamers,
                mix.instancers,
                mix.compactors,
                mix.pause_ms
            ),
            (1, 0, 2, 1, 9)
        );
        assert_eq!(mix.to_string().parse::<Mix>().unwrap(), mix);
        assert!("--putters".parse::<Mix>().is_err());
        assert!("--writers 3".parse::<Mix>().is_err());
    }
}
