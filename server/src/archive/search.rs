//! Searches, shared by QIDO-RS and C-FIND: which keys can be matched ([`SearchKeys`]) and the
//! attributes of each result ([`Attributes`], [`hit_attributes`]). The matching itself is the
//! engine's (`index::matching`, `Catalog::query`); the adapters only turn their requests into
//! `(tag, value)` keys and the [`Attributes`] into their own encoding (DICOM JSON, a C-FIND
//! identifier).

use kuvasto_engine::dicom::{dictionary_vr, Tag};
use kuvasto_engine::index::attrs::{tags, InstanceAttrs, Level};
use kuvasto_engine::index::catalog::{Hits, PatientHit, Query, SeriesHit, StudyHit};
use kuvasto_engine::index::matching::{MatchOptions, MatchVr, Matcher};

pub const NUMBER_OF_PATIENT_RELATED_STUDIES: Tag = Tag::new(0x0020, 0x1200);
pub const NUMBER_OF_PATIENT_RELATED_SERIES: Tag = Tag::new(0x0020, 0x1202);
pub const NUMBER_OF_PATIENT_RELATED_INSTANCES: Tag = Tag::new(0x0020, 0x1204);
pub const INSTANCE_AVAILABILITY: Tag = Tag::new(0x0008, 0x0056);

/// The VR of an attribute a search can return.
pub fn vr_of(tag: Tag) -> [u8; 2] {
    match tag {
        tags::MODALITIES_IN_STUDY => *b"CS",
        tags::NUMBER_OF_STUDY_RELATED_SERIES
        | tags::NUMBER_OF_STUDY_RELATED_INSTANCES
        | tags::NUMBER_OF_SERIES_RELATED_INSTANCES
        | NUMBER_OF_PATIENT_RELATED_STUDIES
        | NUMBER_OF_PATIENT_RELATED_SERIES
        | NUMBER_OF_PATIENT_RELATED_INSTANCES => *b"IS",
        _ => dictionary_vr(tag).unwrap_or(*b"UN"),
    }
}

/// What became of one search key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Added as a filter (a universal match, such as an empty value, adds none but counts).
    Matched,
    /// Left out, with the reason for the client.
    Ignored(String),
}

/// Builds the catalog query of a search from `(tag, value)` keys, the same way for every
/// protocol.
pub struct SearchKeys<'a> {
    pub query: Query,
    options: MatchOptions,
    extra_tags: &'a [Tag],
}

impl<'a> SearchKeys<'a> {
    pub fn new(level: Level, fuzzy: bool, extra_tags: &'a [Tag]) -> SearchKeys<'a> {
        SearchKeys {
            query: Query {
                level,
                filters: Vec::new(),
                offset: 0,
                limit: None,
            },
            options: MatchOptions { fuzzy },
            extra_tags,
        }
    }

    /// Whether the catalog holds `tag` (standard indexed attributes and the configured extras).
    pub fn indexed(&self, tag: Tag) -> bool {
        InstanceAttrs::level_of(tag).is_some() || self.extra_tags.contains(&tag)
    }

    /// A unique key fixed by the request itself (a UID in a URL path, a C-MOVE identifier):
    /// matched as a UID list.
    pub fn fixed_uid(&mut self, tag: Tag, value: &str) -> Result<(), String> {
        let matcher = Matcher::parse(MatchVr::Uid, value, self.options)
            .map_err(|e| format!("{value:?}: {e}"))?;
        self.query.filters.push((tag, matcher));
        Ok(())
    }

    /// Adds a matching key. `name` names the key in messages. An error is a value that cannot
    /// be a key of its VR; keys this archive does not match on are [`KeyOutcome::Ignored`].
    pub fn key(&mut self, name: &str, tag: Tag, value: &str) -> Result<KeyOutcome, String> {
        let level = self.query.level;
        // Modality in a study search means ModalitiesInStudy (PS3.18 10.6.1.2, PS3.4 C.6.2.1.2).
        let tag = if tag == tags::MODALITY && level == Level::Study {
            tags::MODALITIES_IN_STUDY
        } else {
            tag
        };
        let derived = matches!(
            tag,
            tags::NUMBER_OF_STUDY_RELATED_SERIES
                | tags::NUMBER_OF_STUDY_RELATED_INSTANCES
                | tags::NUMBER_OF_SERIES_RELATED_INSTANCES
                | NUMBER_OF_PATIENT_RELATED_STUDIES
                | NUMBER_OF_PATIENT_RELATED_SERIES
                | NUMBER_OF_PATIENT_RELATED_INSTANCES
        );
        if derived && value.is_empty() {
            return Ok(KeyOutcome::Matched); // a return key: the count comes with the hit
        }
        if !self.indexed(tag) || tag == tags::TRANSFER_SYNTAX_UID || derived {
            if value.is_empty() {
                return Ok(KeyOutcome::Ignored(format!(
                    "{name} is not indexed; it is returned empty"
                )));
            }
            return Ok(KeyOutcome::Ignored(format!(
                "{name} is not supported for matching; the key was ignored"
            )));
        }
        let key_level = InstanceAttrs::level_of(tag).unwrap_or(Level::Instance);
        if key_level > level {
            return Ok(KeyOutcome::Ignored(format!(
                "{name} is an attribute of a lower level than this search; the key was ignored"
            )));
        }
        let matcher = Matcher::parse(MatchVr::from_vr(vr_of(tag)), value, self.options)
            .map_err(|e| format!("{name}={value:?}: {e}"))?;
        self.query.filters.push((tag, matcher));
        Ok(KeyOutcome::Matched)
    }
}

/// Attributes of one result, in tag order, as DICOM text (values separated by `\`).
#[derive(Debug, Default, Clone)]
pub struct Attributes {
    items: Vec<(Tag, [u8; 2], String)>,
}

impl Attributes {
    /// Adds or replaces `tag` with its text value (empty: no value).
    pub fn put(&mut self, tag: Tag, text: &str) {
        match self.items.binary_search_by_key(&tag, |(t, _, _)| *t) {
            Ok(i) => self.items[i].2 = text.to_string(),
            Err(i) => self.items.insert(i, (tag, vr_of(tag), text.to_string())),
        }
    }

    pub fn get(&self, tag: Tag) -> Option<&str> {
        self.items
            .binary_search_by_key(&tag, |(t, _, _)| *t)
            .ok()
            .map(|i| self.items[i].2.as_str())
    }

    /// `(tag, vr, text)` in tag order.
    pub fn iter(&self) -> impl Iterator<Item = (Tag, [u8; 2], &str)> {
        self.items.iter().map(|(t, vr, s)| (*t, *vr, s.as_str()))
    }
}

const PATIENT: &[Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
];
const STUDY: &[Tag] = &[
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_DESCRIPTION,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_ID,
];
const SERIES: &[Tag] = &[
    tags::MODALITY,
    tags::SERIES_DESCRIPTION,
    tags::SERIES_INSTANCE_UID,
    tags::SERIES_NUMBER,
    tags::BODY_PART_EXAMINED,
    tags::PERFORMED_PROCEDURE_STEP_START_DATE,
];
const INSTANCE: &[Tag] = &[
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
    tags::INSTANCE_NUMBER,
    tags::ROWS,
    tags::COLUMNS,
    tags::NUMBER_OF_FRAMES,
];

/// The indexed attributes of `attrs` down to `level`; `extras`: also the configured extra
/// attributes of those levels.
pub fn level_attributes(attrs: &InstanceAttrs, level: Level, extras: bool) -> Attributes {
    let mut a = Attributes::default();
    a.put(INSTANCE_AVAILABILITY, "ONLINE");
    let mut lists = vec![PATIENT];
    if level >= Level::Study {
        lists.push(STUDY);
    }
    if level >= Level::Series {
        lists.push(SERIES);
    }
    if level >= Level::Instance {
        lists.push(INSTANCE);
    }
    for tag in lists.into_iter().flatten() {
        if let Some(text) = attrs.text(*tag) {
            a.put(*tag, &text);
        }
    }
    if extras {
        for (tag, text) in &attrs.extra {
            let extra_level = InstanceAttrs::level_of(*tag).unwrap_or(Level::Instance);
            if extra_level <= level {
                a.put(*tag, text);
            }
        }
    }
    a
}

/// The attributes of every hit, the derived counts included, with the hit's instance
/// attributes (for protocol-specific additions such as a retrieve URL).
pub fn hit_attributes(hits: &Hits, extras: bool) -> Vec<(Attributes, &InstanceAttrs)> {
    let mut out = Vec::with_capacity(hits.len());
    match hits {
        Hits::Patients(list) => {
            for PatientHit {
                attrs,
                study_count,
                series_count,
                instance_count,
            } in list
            {
                let mut a = level_attributes(attrs, Level::Patient, extras);
                a.put(NUMBER_OF_PATIENT_RELATED_STUDIES, &study_count.to_string());
                a.put(NUMBER_OF_PATIENT_RELATED_SERIES, &series_count.to_string());
                a.put(
                    NUMBER_OF_PATIENT_RELATED_INSTANCES,
                    &instance_count.to_string(),
                );
                out.push((a, attrs));
            }
        }
        Hits::Studies(list) => {
            for StudyHit {
                attrs,
                modalities_in_study,
                series_count,
                instance_count,
            } in list
            {
                let mut a = level_attributes(attrs, Level::Study, extras);
                a.put(tags::MODALITIES_IN_STUDY, modalities_in_study);
                a.put(
                    tags::NUMBER_OF_STUDY_RELATED_SERIES,
                    &series_count.to_string(),
                );
                a.put(
                    tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
                    &instance_count.to_string(),
                );
                out.push((a, attrs));
            }
        }
        Hits::Series(list) => {
            for SeriesHit {
                attrs,
                instance_count,
            } in list
            {
                let mut a = level_attributes(attrs, Level::Series, extras);
                a.put(
                    tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
                    &instance_count.to_string(),
                );
                out.push((a, attrs));
            }
        }
        Hits::Instances(list) => {
            for hit in list {
                out.push((
                    level_attributes(&hit.attrs, Level::Instance, extras),
                    &hit.attrs,
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_matched_ignored_or_refused_alike_for_every_protocol() {
        let extra = [Tag::new(0x0018, 0x0050)];
        let mut keys = SearchKeys::new(Level::Study, false, &extra);
        assert_eq!(
            keys.key("PatientID", tags::PATIENT_ID, "P*").unwrap(),
            KeyOutcome::Matched
        );
        // Modality at study level matches ModalitiesInStudy.
        assert_eq!(
            keys.key("Modality", tags::MODALITY, "CT").unwrap(),
            KeyOutcome::Matched
        );
        assert_eq!(keys.query.filters[1].0, tags::MODALITIES_IN_STUDY);
        // A lower-level key and a key nobody indexes are ignored with a reason.
        assert!(matches!(
            keys.key("SOPClassUID", tags::SOP_CLASS_UID, "1.2").unwrap(),
            KeyOutcome::Ignored(_)
        ));
        assert!(matches!(
            keys.key("Other", Tag::new(0x0011, 0x0010), "x").unwrap(),
            KeyOutcome::Ignored(_)
        ));
        // The counts are return keys.
        assert_eq!(
            keys.key("n", tags::NUMBER_OF_STUDY_RELATED_INSTANCES, "")
                .unwrap(),
            KeyOutcome::Matched
        );
        // A malformed range is an error.
        assert!(keys.key("StudyDate", tags::STUDY_DATE, "2020-").is_err());
        assert_eq!(keys.query.filters.len(), 2);
        // Extras are instance-level keys.
        let mut keys = SearchKeys::new(Level::Instance, false, &extra);
        assert_eq!(
            keys.key("SliceThickness", extra[0], "5").unwrap(),
            KeyOutcome::Matched
        );
    }

    #[test]
    fn attributes_stay_in_tag_order_and_replace() {
        let mut a = Attributes::default();
        a.put(tags::STUDY_DATE, "20200101");
        a.put(tags::PATIENT_ID, "P1");
        a.put(tags::SOP_CLASS_UID, "1.2");
        a.put(tags::PATIENT_ID, "P2");
        let tags_in_order: Vec<Tag> = a.iter().map(|(t, _, _)| t).collect();
        assert_eq!(
            tags_in_order,
            vec![tags::SOP_CLASS_UID, tags::STUDY_DATE, tags::PATIENT_ID]
        );
        assert_eq!(a.get(tags::PATIENT_ID), Some("P2"));
        assert_eq!(a.iter().nth(2).unwrap().1, *b"LO");
    }
}
