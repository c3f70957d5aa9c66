//! Retention: how long studies are kept, and the sweep that expires the ones whose time is up.
//!
//! Images are kept at least [`KEEP_YEARS_MIN_LEGAL`] years, and, pending the national
//! archive's decision, indefinitely: with no `[[retention]]` rules nothing ever expires. A rule
//! names what it covers (a content type, a register, or both) and for how long (`keep_years`
//! or forever), counted from a clock (the study date, the time the archive first stored the
//! study, or the later of the two). A study expires only when at least one rule covers it and
//! every rule that covers it has run out: the longest rule wins, so adding a rule can only
//! keep studies longer. A study whose clock cannot be read (no study date, no stored time) is
//! kept. A rule shorter than the legal minimum is refused when the configuration loads.
//!
//! The sweep ([`Archive::retention_sweep`], run by `kuvasto compact` and the server's
//! scheduled compaction) deletes an expired study's instances with tombstones, marks the study
//! `expired` (it then takes no new instances), and writes one audit record per study naming
//! the rule; compaction reclaims the space afterwards. Quarantined studies are left to the
//! operators' quarantine expiry.

use super::state::{Change, StudyState};
use super::{time, Archive, ArchiveError, Caller, Outcome};
use kuvasto_engine::index::attrs::{tags, Level};
use kuvasto_engine::index::catalog::{Hits, Query};
use kuvasto_engine::index::matching::{MatchOptions, MatchVr, Matcher};
use serde::{Deserialize, Serialize};

/// No rule keeps images shorter than this (DOMAIN: "images are kept at least 12 years").
pub const KEEP_YEARS_MIN_LEGAL: u32 = 12;

/// Studies looked at per catalog page during a sweep (bounds the sweep's memory).
const SWEEP_PAGE_STUDIES: usize = 1000;

/// How long a rule keeps what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Keep {
    Years(u32),
    Forever,
}

/// Where a rule's time starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Clock {
    /// The study date (0008,0020), from the end of that day in any time zone.
    StudyDate,
    /// When the archive first stored the study (national profile's study records).
    Stored,
    /// The later of the two: an imported old study is kept its full time after import.
    Later,
}

impl Clock {
    pub fn parse(text: &str) -> Result<Clock, String> {
        match text {
            "study-date" => Ok(Clock::StudyDate),
            "stored" => Ok(Clock::Stored),
            "later" => Ok(Clock::Later),
            other => Err(format!(
                "clock {other:?}: expected study-date, stored or later"
            )),
        }
    }
}

/// One `[[retention]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    /// Named in every expiry's audit record.
    pub name: String,
    /// A content type (radiology, dental, ecg, ophthalmology) or `None` for any.
    pub content_type: Option<String>,
    /// A register OID, or `None` for any.
    pub register: Option<String>,
    pub keep: Keep,
    pub clock: Clock,
}

impl RetentionRule {
    /// Checks the rule against the legal minimum and the known content types.
    pub fn check(&self) -> Result<(), String> {
        if let Keep::Years(years) = self.keep {
            if years < KEEP_YEARS_MIN_LEGAL {
                return Err(format!(
                    "retention rule {:?}: keep_years = {years} is below the legal minimum of {KEEP_YEARS_MIN_LEGAL} years",
                    self.name
                ));
            }
        }
        if let Some(kind) = &self.content_type {
            if !CONTENT_TYPES.contains(&kind.as_str()) {
                return Err(format!(
                    "retention rule {:?}: content_type {kind:?} is not one of {} (or \"any\")",
                    self.name,
                    CONTENT_TYPES.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn covers(&self, facts: &StudyFacts) -> bool {
        self.content_type
            .as_deref()
            .is_none_or(|c| c == facts.content_type)
            && self.register.as_deref().is_none_or(|r| r == facts.register)
    }

    /// When this rule lets the study go; `None`: never (forever, or the clock is unknown).
    fn expires_ms(&self, facts: &StudyFacts) -> Option<i64> {
        let Keep::Years(years) = self.keep else {
            return None;
        };
        // A study date is local; its day has ended everywhere one day after its UTC start.
        let study = facts.study_date_ms.map(|d| d + 86_400_000);
        let start = match self.clock {
            Clock::StudyDate => study?,
            Clock::Stored => facts.stored_ms?,
            Clock::Later => study?.max(facts.stored_ms?),
        };
        Some(time::add_years_ms(start, years))
    }
}

/// The content types rules may name (as the validation module names them).
pub const CONTENT_TYPES: [&str; 4] = ["radiology", "dental", "ecg", "ophthalmology"];

/// What retention needs to know of a study.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StudyFacts {
    pub content_type: String,
    pub register: String,
    pub study_date_ms: Option<i64>,
    pub stored_ms: Option<i64>,
}

/// All rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub rules: Vec<RetentionRule>,
}

/// When a study may expire, and by which rule (the longest of those covering it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No rule covers it, a covering rule keeps it forever, or a clock is unknown.
    KeptForever,
    /// Kept until this instant by this rule.
    Until { expires_ms: i64, rule: String },
}

impl RetentionPolicy {
    pub fn new(rules: Vec<RetentionRule>) -> Result<RetentionPolicy, String> {
        let mut names = std::collections::HashSet::new();
        for rule in &rules {
            rule.check()?;
            if !names.insert(rule.name.as_str()) {
                return Err(format!("two retention rules are named {:?}", rule.name));
            }
        }
        Ok(RetentionPolicy { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The shortest period any rule keeps anything: nothing younger can expire.
    fn keep_years_min(&self) -> Option<u32> {
        self.rules
            .iter()
            .filter_map(|r| match r.keep {
                Keep::Years(y) => Some(y),
                Keep::Forever => None,
            })
            .min()
    }

    pub fn verdict(&self, facts: &StudyFacts) -> Verdict {
        let mut latest: Option<(i64, &str)> = None;
        let mut covered = false;
        for rule in self.rules.iter().filter(|r| r.covers(facts)) {
            covered = true;
            let Some(expires) = rule.expires_ms(facts) else {
                return Verdict::KeptForever;
            };
            if latest.is_none_or(|(at, _)| expires > at) {
                latest = Some((expires, rule.name.as_str()));
            }
        }
        match latest {
            Some((expires_ms, rule)) if covered => Verdict::Until {
                expires_ms,
                rule: rule.to_string(),
            },
            _ => Verdict::KeptForever,
        }
    }
}

/// One study the sweep expired (or, in a dry run, would).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiredStudy {
    pub study: String,
    pub patient: String,
    pub register: String,
    pub rule: String,
    pub expired_at: String,
    pub study_date: String,
    pub instances_deleted: u64,
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    pub rules: usize,
    /// Studies old enough to be looked at.
    pub studies_examined: u64,
    pub expired: Vec<ExpiredStudy>,
    /// Studies examined but kept: under a rule's time, no rule, or a forever rule.
    pub kept: u64,
    pub dry_run: bool,
    /// Studies that could not be expired, with the reason.
    pub problems: Vec<String>,
}

impl Archive {
    /// Expires every study whose retention has run out at `now_ms` (see the module
    /// documentation); with `dry_run` only lists them. Operators only.
    pub fn retention_sweep(
        &self,
        caller: &Caller,
        policy: &RetentionPolicy,
        now_ms: i64,
        dry_run: bool,
        progress: &dyn Fn(u64, usize),
    ) -> Result<RetentionReport, ArchiveError> {
        super::admin::require(
            caller,
            &[super::directory::Role::Operator],
            "expire studies",
        )?;
        let mut report = RetentionReport {
            rules: policy.rules.len(),
            dry_run,
            ..RetentionReport::default()
        };
        let Some(years_min) = policy.keep_years_min() else {
            return Ok(report);
        };
        // Only studies older than the shortest rule can expire: those with a study date before
        // the cutoff, and (clock `stored`) those stored before it.
        let cutoff_ms = now_ms - years_before_ms(now_ms, years_min);
        let mut candidates: Vec<(String, String)> = Vec::new(); // (study, study date)
        let cutoff_date = time::format_ms(cutoff_ms)[..10].replace('-', "");
        let date_filter = Matcher::parse(
            MatchVr::Date,
            &format!("-{cutoff_date}"),
            MatchOptions::default(),
        )
        .map_err(|e| ArchiveError::BadQuery(e.to_string()))?;
        let mut offset = 0;
        loop {
            let query = Query {
                level: Level::Study,
                filters: vec![(tags::STUDY_DATE, date_filter.clone())],
                offset,
                limit: Some(SWEEP_PAGE_STUDIES),
            };
            let Hits::Studies(page) = self.store.query(&query)? else {
                return Err(ArchiveError::BadQuery(
                    "study query answered another level".into(),
                ));
            };
            if page.is_empty() {
                break;
            }
            offset += page.len();
            candidates.extend(
                page.into_iter()
                    .map(|h| (h.attrs.study_instance_uid, h.attrs.study_date)),
            );
        }
        let known: std::collections::HashSet<String> =
            candidates.iter().map(|(s, _)| s.clone()).collect();
        {
            let maps = self.state.read();
            for record in maps.studies.values() {
                let open = matches!(
                    record.state,
                    StudyState::Linked | StudyState::Invalidated { .. }
                );
                if open && record.created_ms <= cutoff_ms && !known.contains(&record.study) {
                    candidates.push((record.study.clone(), String::new()));
                }
            }
        }
        candidates.sort();
        let total = candidates.len();
        for (i, (study, study_date)) in candidates.into_iter().enumerate() {
            report.studies_examined += 1;
            if i % 100 == 0 {
                progress(i as u64, total);
            }
            match self.expire_if_due(caller, policy, now_ms, dry_run, &study, &study_date) {
                Ok(Some(expired)) => report.expired.push(expired),
                Ok(None) => report.kept += 1,
                Err(e) => report.problems.push(format!("study {study}: {e}")),
            }
        }
        progress(total as u64, total);
        Ok(report)
    }

    fn expire_if_due(
        &self,
        caller: &Caller,
        policy: &RetentionPolicy,
        now_ms: i64,
        dry_run: bool,
        study: &str,
        study_date: &str,
    ) -> Result<Option<ExpiredStudy>, ArchiveError> {
        let record = self.state.read().studies.get(study).cloned();
        // Quarantine has its own expiry; an expired study is done.
        if record.as_ref().is_some_and(|r| {
            !matches!(r.state, StudyState::Linked | StudyState::Invalidated { .. })
        }) {
            return Ok(None);
        }
        let instances = self.all_instances(Query {
            level: Level::Instance,
            filters: vec![super::uid_filter(tags::STUDY_INSTANCE_UID, study)?],
            offset: 0,
            limit: None,
        })?;
        let first = instances.first().map(|h| &h.attrs);
        let study_date = if study_date.is_empty() {
            first.map(|a| a.study_date.clone()).unwrap_or_default()
        } else {
            study_date.to_string()
        };
        let facts = match &record {
            Some(r) => StudyFacts {
                content_type: r.content_type.clone(),
                register: r.register.clone(),
                study_date_ms: time::dicom_date_ms(&study_date),
                stored_ms: Some(r.created_ms),
            },
            None => StudyFacts {
                content_type: String::new(),
                // Standalone: the one register, named after the archive's organisation.
                register: if self.directory.is_standalone() {
                    self.rules.audit_source_id.clone()
                } else {
                    String::new()
                },
                study_date_ms: time::dicom_date_ms(&study_date),
                stored_ms: None,
            },
        };
        let (expires_ms, rule) = match policy.verdict(&facts) {
            Verdict::Until { expires_ms, rule } if expires_ms <= now_ms => (expires_ms, rule),
            _ => return Ok(None),
        };
        let patient = record
            .as_ref()
            .map(|r| r.patient.clone())
            .or_else(|| first.map(|a| a.patient_id.clone()))
            .unwrap_or_default();
        let mut expired = ExpiredStudy {
            study: study.to_string(),
            patient: patient.clone(),
            register: facts.register.clone(),
            rule: rule.clone(),
            expired_at: time::format_ms(expires_ms),
            study_date,
            instances_deleted: 0,
        };
        if dry_run {
            expired.instances_deleted = instances.len() as u64;
            return Ok(Some(expired));
        }
        // The state first: a crash midway leaves an expired study with instances left to
        // delete on the next sweep, never a visible half.
        if let Some(mut record) = record {
            let now = time::now_ms();
            record.state = StudyState::Expired {
                by: format!("retention rule {rule}"),
                at_ms: now,
            };
            record.changed_ms = now;
            self.state
                .change(&self.store, |_| (vec![Change::Study(record)], ()))?;
        }
        let result = (|| -> Result<u64, ArchiveError> {
            let mut deleted = 0;
            for hit in &instances {
                if self
                    .store
                    .delete_instance(&hit.attrs.sop_instance_uid)?
                    .is_some()
                {
                    deleted += 1;
                }
            }
            Ok(deleted)
        })();
        let detail = format!(
            "rule={rule} study_date={} expired_at={} instances={}",
            expired.study_date,
            expired.expired_at,
            result.as_ref().map_or(0, |n| *n)
        );
        let outcome = if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failed
        };
        self.audit(
            caller,
            "retention-expire",
            outcome,
            &patient,
            study,
            &facts.register,
            detail,
        )?;
        expired.instances_deleted = result?;
        Ok(Some(expired))
    }
}

/// Milliseconds from `years` years before `now_ms` to `now_ms` (calendar years).
fn years_before_ms(now_ms: i64, years: u32) -> i64 {
    // Walk back by whole years: the calendar anniversary `years` ago.
    let mut back = now_ms - i64::from(years) * 366 * 86_400_000;
    while time::add_years_ms(back, years) < now_ms {
        back += 86_400_000;
    }
    now_ms - back
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, content_type: Option<&str>, keep: Keep, clock: Clock) -> RetentionRule {
        RetentionRule {
            name: name.into(),
            content_type: content_type.map(str::to_string),
            register: None,
            keep,
            clock,
        }
    }

    fn facts(content_type: &str, study_date: &str, stored: Option<&str>) -> StudyFacts {
        StudyFacts {
            content_type: content_type.into(),
            register: "1.2.246.10.1".into(),
            study_date_ms: time::dicom_date_ms(study_date),
            stored_ms: stored.map(|s| time::parse_ms(s).expect("time")),
        }
    }

    #[test]
    fn rules_below_the_legal_minimum_or_of_unknown_content_types_are_refused() {
        let short = rule("short", None, Keep::Years(11), Clock::StudyDate);
        assert!(RetentionPolicy::new(vec![short])
            .expect_err("11 years")
            .contains("legal minimum of 12"));
        let odd = rule("odd", Some("cardiology"), Keep::Years(12), Clock::StudyDate);
        assert!(RetentionPolicy::new(vec![odd])
            .expect_err("unknown type")
            .contains("cardiology"));
        let a = rule("a", None, Keep::Years(12), Clock::StudyDate);
        assert!(RetentionPolicy::new(vec![a.clone(), a]).is_err());
    }

    #[test]
    fn no_rule_means_kept_forever_and_the_longest_covering_rule_wins() {
        let policy = RetentionPolicy::default();
        assert_eq!(
            policy.verdict(&facts("radiology", "19900101", None)),
            Verdict::KeptForever
        );
        let policy = RetentionPolicy::new(vec![
            rule("all-12", None, Keep::Years(12), Clock::StudyDate),
            rule(
                "dental-20",
                Some("dental"),
                Keep::Years(20),
                Clock::StudyDate,
            ),
            rule("ecg-forever", Some("ecg"), Keep::Forever, Clock::StudyDate),
        ])
        .expect("policy");
        let Verdict::Until { expires_ms, rule } =
            policy.verdict(&facts("radiology", "20000315", None))
        else {
            panic!("radiology is covered by all-12");
        };
        assert_eq!(rule, "all-12");
        assert_eq!(time::format_ms(expires_ms), "2012-03-16T00:00:00.000Z");
        let Verdict::Until { expires_ms, rule } =
            policy.verdict(&facts("dental", "20000315", None))
        else {
            panic!("dental is covered");
        };
        assert_eq!(rule, "dental-20");
        assert_eq!(time::format_ms(expires_ms), "2020-03-16T00:00:00.000Z");
        assert_eq!(
            policy.verdict(&facts("ecg", "19800101", None)),
            Verdict::KeptForever
        );
    }

    #[test]
    fn an_unknown_clock_keeps_the_study() {
        let policy = RetentionPolicy::new(vec![rule("later", None, Keep::Years(12), Clock::Later)])
            .expect("policy");
        assert_eq!(
            policy.verdict(&facts("radiology", "19900101", None)),
            Verdict::KeptForever,
            "no stored time: the later of the two is unknown"
        );
        assert_eq!(
            policy.verdict(&facts("radiology", "", Some("2001-01-01"))),
            Verdict::KeptForever,
            "no study date"
        );
        let Verdict::Until { expires_ms, .. } = policy.verdict(&facts(
            "radiology",
            "19900101",
            Some("2026-11-26T10:00:00Z"),
        )) else {
            panic!("both clocks known");
        };
        assert_eq!(time::format_ms(expires_ms), "2038-11-26T10:00:00.000Z");
    }

    #[test]
    fn leap_days_expire_later_never_earlier() {
        let leap = time::parse_ms("2024-02-29T12:00:00Z").expect("time");
        assert_eq!(
            time::format_ms(time::add_years_ms(leap, 12)),
            "2036-02-29T12:00:00.000Z"
        );
        assert_eq!(
            time::format_ms(time::add_years_ms(leap, 13)),
            "2037-03-01T12:00:00.000Z"
        );
        let now = time::parse_ms("2026-11-26T08:00:00Z").expect("time");
        assert_eq!(
            time::format_ms(now - years_before_ms(now, 12)),
            "2014-11-26T08:00:00.000Z"
        );
    }
}
