//! DICOM JSON (PS3.18 Annex F) for search results: the indexed attributes of a hit.

use crate::archive::search::{hit_attributes, level_attributes, Attributes};
use kuvasto_engine::dicom::json::write_json_string as string;
use kuvasto_engine::dicom::Tag;
use kuvasto_engine::index::attrs::{tags, InstanceAttrs, Level};
use kuvasto_engine::index::catalog::Hits;

const RETRIEVE_URL: Tag = Tag::new(0x0008, 0x1190);

/// Writes one result object `{"GGGGEEEE": {"vr": .., "Value": [..]}, ..}` in tag order.
pub fn write(attributes: &Attributes, out: &mut String) {
    out.push('{');
    for (i, (tag, vr, text)) in attributes.iter().enumerate() {
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
            write_values(vr, text, out);
            out.push(']');
        }
        out.push('}');
    }
    out.push('}');
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

/// Every indexed attribute of an instance (the metadata of `/metadata` requests).
pub fn instance_attributes(attrs: &InstanceAttrs) -> Attributes {
    let mut a = level_attributes(attrs, Level::Instance, true);
    a.put(tags::SPECIFIC_CHARACTER_SET, "ISO_IR 192");
    a
}

/// The search result array; each object gets its RetrieveURL.
pub fn hits(hits: &Hits, base_url: &str, extras: bool) -> String {
    let mut out = String::from("[");
    for (i, (mut a, attrs)) in hit_attributes(hits, extras).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        a.put(tags::SPECIFIC_CHARACTER_SET, "ISO_IR 192");
        let mut url = format!("{base_url}/studies/{}", attrs.study_instance_uid);
        match hits {
            Hits::Patients(_) => url.clear(),
            Hits::Studies(_) => {}
            Hits::Series(_) => url.push_str(&format!("/series/{}", attrs.series_instance_uid)),
            Hits::Instances(_) => url.push_str(&format!(
                "/series/{}/instances/{}",
                attrs.series_instance_uid, attrs.sop_instance_uid
            )),
        }
        if !url.is_empty() {
            a.put(RETRIEVE_URL, &url);
        }
        write(&a, &mut out);
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
        write(&a, &mut out);
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
        write(&a, &mut out);
        assert_eq!(
            out,
            "{\"00180050\":{\"vr\":\"DS\",\"Value\":[\"+1.5\",2.0]}}"
        );
    }
}
