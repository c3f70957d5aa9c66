//! DICOM JSON (PS3.18 Annex F) for search results: the indexed attributes of a hit.

use kuvasto_engine::dicom::json::write_json_string as string;
use kuvasto_engine::dicom::{dictionary_vr, Tag};
use kuvasto_engine::index::attrs::{tags, InstanceAttrs, Level};
use kuvasto_engine::index::catalog::{Hits, InstanceHit, PatientHit, SeriesHit, StudyHit};

const RETRIEVE_URL: Tag = Tag::new(0x0008, 0x1190);
const INSTANCE_AVAILABILITY: Tag = Tag::new(0x0008, 0x0056);

/// The VR the JSON names for an indexed attribute.
pub fn vr_of(tag: Tag) -> [u8; 2] {
    match tag {
        tags::MODALITIES_IN_STUDY => *b"CS",
        tags::NUMBER_OF_STUDY_RELATED_SERIES
        | tags::NUMBER_OF_STUDY_RELATED_INSTANCES
        | tags::NUMBER_OF_SERIES_RELATED_INSTANCES => *b"IS",
        RETRIEVE_URL => *b"UR",
        _ => dictionary_vr(tag).unwrap_or(*b"UN"),
    }
}

/// Attributes of one result object, written in tag order.
#[derive(Default)]
pub struct Attributes {
    items: Vec<(Tag, [u8; 2], String)>,
}

impl Attributes {
    /// Adds `tag` with its text value (backslash-separated values; empty: no Value).
    pub fn put(&mut self, tag: Tag, text: &str) {
        if let Some(existing) = self.items.iter_mut().find(|(t, _, _)| *t == tag) {
            existing.2 = text.to_string();
            return;
        }
        self.items.push((tag, vr_of(tag), text.to_string()));
    }

    pub fn write(mut self, out: &mut String) {
        self.items.sort_by_key(|(tag, _, _)| *tag);
        out.push('{');
        for (i, (tag, vr, text)) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("\"{:08X}\":{{\"vr\":\"", tag.0));
            out.push(vr[0] as char);
            out.push(vr[1] as char);
            out.push('"');
            let text = text.trim_end_matches(['\0', ' ']);
            if !text.is_empty() {
                out.push_str(",\"Value\":[");
                write_values(*vr, text, out);
                out.push(']');
            }
            out.push('}');
        }
        out.push('}');
    }
}

fn write_values(vr: [u8; 2], text: &str, out: &mut String) {
    let single = matches!(&vr, b"LT" | b"ST" | b"UT" | b"UR");
    let values: Vec<&str> = if single {
        vec![text]
    } else {
        text.split('\\').collect()
    };
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let value = value.trim_matches(' ');
        match &vr {
            b"PN" => {
                out.push('{');
                let groups: Vec<&str> = value.split('=').collect();
                let mut first = true;
                for (name, group) in ["Alphabetic", "Ideographic", "Phonetic"].iter().zip(groups) {
                    if group.is_empty() {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&format!("\"{name}\":"));
                    string(group, out);
                }
                out.push('}');
            }
            b"IS" | b"US" | b"SS" | b"UL" | b"SL" => match value.parse::<i64>() {
                Ok(n) => out.push_str(&n.to_string()),
                Err(_) if value.is_empty() => out.push_str("null"),
                Err(_) => string(value, out),
            },
            b"DS" | b"FL" | b"FD" if json_number(value) => out.push_str(value),
            b"DS" | b"FL" | b"FD" if value.is_empty() => out.push_str("null"),
            _ if value.is_empty() => out.push_str("null"),
            _ => string(value, out),
        }
    }
}

/// Whether `text` is a number as JSON spells it (RFC 8259 section 6): no `+`, no leading
/// zeros, digits on both sides of a point.
fn json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let int_start = i;
    let int = digits(&mut i);
    if int == 0 || (int > 1 && b[int_start] == b'0') {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
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

/// The attributes a hit answers with: everything indexed for its level and the levels above
/// (the catalog has nothing else), the configured extras, and the derived counts and URL.
fn base(attrs: &InstanceAttrs, level: Level, extras: bool) -> Attributes {
    let mut a = Attributes::default();
    a.put(tags::SPECIFIC_CHARACTER_SET, "ISO_IR 192");
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

/// Every indexed attribute of an instance (configured extras included).
pub fn instance_attributes(attrs: &InstanceAttrs) -> Attributes {
    base(attrs, Level::Instance, true)
}

/// The search results as a DICOM JSON array. `extras`: include the configured extra
/// attributes (`includefield` named them, or `all`).
pub fn hits(hits: &Hits, base_url: &str, extras: bool) -> String {
    let mut out = String::from("[");
    let mut first = true;
    let mut push = |a: Attributes, out: &mut String| {
        if !first {
            out.push(',');
        }
        first = false;
        a.write(out);
    };
    match hits {
        Hits::Patients(list) => {
            for PatientHit {
                attrs,
                study_count,
                series_count,
                instance_count,
            } in list
            {
                let mut a = base(attrs, Level::Patient, extras);
                a.put(Tag::new(0x0020, 0x1200), &study_count.to_string());
                a.put(Tag::new(0x0020, 0x1202), &series_count.to_string());
                a.put(Tag::new(0x0020, 0x1204), &instance_count.to_string());
                push(a, &mut out);
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
                let mut a = base(attrs, Level::Study, extras);
                a.put(tags::MODALITIES_IN_STUDY, modalities_in_study);
                a.put(
                    tags::NUMBER_OF_STUDY_RELATED_SERIES,
                    &series_count.to_string(),
                );
                a.put(
                    tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
                    &instance_count.to_string(),
                );
                a.put(
                    RETRIEVE_URL,
                    &format!("{base_url}/studies/{}", attrs.study_instance_uid),
                );
                push(a, &mut out);
            }
        }
        Hits::Series(list) => {
            for SeriesHit {
                attrs,
                instance_count,
            } in list
            {
                let mut a = base(attrs, Level::Series, extras);
                a.put(
                    tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
                    &instance_count.to_string(),
                );
                a.put(
                    RETRIEVE_URL,
                    &format!(
                        "{base_url}/studies/{}/series/{}",
                        attrs.study_instance_uid, attrs.series_instance_uid
                    ),
                );
                push(a, &mut out);
            }
        }
        Hits::Instances(list) => {
            for InstanceHit { attrs, .. } in list {
                let mut a = base(attrs, Level::Instance, extras);
                a.put(
                    RETRIEVE_URL,
                    &format!(
                        "{base_url}/studies/{}/series/{}/instances/{}",
                        attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid
                    ),
                );
                push(a, &mut out);
            }
        }
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_json_model() {
        let mut a = Attributes::default();
        a.put(tags::PATIENT_NAME, "Yamada^Tarou=山田^太郎=やまだ^たろう");
        a.put(tags::MODALITIES_IN_STUDY, "CT\\MR");
        a.put(tags::SERIES_NUMBER, "7");
        a.put(tags::STUDY_DESCRIPTION, "");
        a.put(tags::ACCESSION_NUMBER, "A\"1");
        let mut out = String::new();
        a.write(&mut out);
        assert_eq!(
            out,
            concat!(
                "{\"00080050\":{\"vr\":\"SH\",\"Value\":[\"A\\\"1\"]},",
                "\"00080061\":{\"vr\":\"CS\",\"Value\":[\"CT\",\"MR\"]},",
                "\"00081030\":{\"vr\":\"LO\"},",
                "\"00100010\":{\"vr\":\"PN\",\"Value\":[{\"Alphabetic\":\"Yamada^Tarou\",\"Ideographic\":\"山田^太郎\",\"Phonetic\":\"やまだ^たろう\"}]},",
                "\"00200011\":{\"vr\":\"IS\",\"Value\":[7]}}"
            )
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(parsed.is_object());
    }

    #[test]
    fn decimal_strings_become_numbers_only_when_json_can_read_them() {
        for good in ["0", "-1.5", "12e3", "1.25E-2"] {
            assert!(json_number(good), "{good}");
        }
        for bad in ["+1.5", ".5", "007", "1.", "-", "1e", "NaN", "inf", ""] {
            assert!(!json_number(bad), "{bad}");
        }
        let mut a = Attributes::default();
        a.put(Tag::new(0x0018, 0x0050), "+1.5\\2.0");
        let mut out = String::new();
        a.write(&mut out);
        assert_eq!(
            out,
            "{\"00180050\":{\"vr\":\"DS\",\"Value\":[\"+1.5\",2.0]}}"
        );
    }
}
