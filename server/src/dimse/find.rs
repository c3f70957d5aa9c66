//! C-FIND SCP (PS3.4 C.4.1) for the Patient Root and Study Root Query/Retrieve information
//! models, at every level. The identifier's keys go through the same
//! [`SearchKeys`](crate::archive::search::SearchKeys) as QIDO-RS and the engine's matching;
//! each match is one pending response carrying the keys the identifier asked for.

use super::link::LinkError;
use super::session::Session;
use crate::archive::search::{hit_attributes, vr_of, Attributes, KeyOutcome, SearchKeys};
use kuvasto_dimse::command::{status, Command, DATA_SET_PRESENT};
use kuvasto_dimse::dataset::{DataSet, Element, Value};
use kuvasto_engine::dicom::Tag;
use kuvasto_engine::index::attrs::{tags, Level};

pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const QUERY_RETRIEVE_LEVEL: Tag = Tag::new(0x0008, 0x0052);
pub const RETRIEVE_AE_TITLE: Tag = Tag::new(0x0008, 0x0054);

/// Which model an abstract syntax names (`true`: patient root).
fn patient_root(abstract_syntax: &str) -> Option<bool> {
    match abstract_syntax {
        PATIENT_ROOT_FIND
        | super::retrieve::PATIENT_ROOT_MOVE
        | super::retrieve::PATIENT_ROOT_GET => Some(true),
        STUDY_ROOT_FIND | super::retrieve::STUDY_ROOT_MOVE | super::retrieve::STUDY_ROOT_GET => {
            Some(false)
        }
        _ => None,
    }
}

/// The level an identifier asks for, checked against the information model.
pub fn query_level(abstract_syntax: &str, identifier: &DataSet) -> Result<Level, String> {
    let patient_root = patient_root(abstract_syntax)
        .ok_or_else(|| format!("{abstract_syntax} is not a query/retrieve model"))?;
    let text = identifier
        .text(QUERY_RETRIEVE_LEVEL)
        .ok_or("the identifier has no QueryRetrieveLevel (0008,0052)")?;
    match text.as_str() {
        "PATIENT" if patient_root => Ok(Level::Patient),
        "PATIENT" => Err("the Study Root model has no PATIENT level".into()),
        "STUDY" => Ok(Level::Study),
        "SERIES" => Ok(Level::Series),
        "IMAGE" => Ok(Level::Instance),
        other => Err(format!(
            "QueryRetrieveLevel {other:?} is not PATIENT, STUDY, SERIES or IMAGE"
        )),
    }
}

/// Elements of an identifier that are not keys.
fn is_control(tag: Tag) -> bool {
    tag.0 & 0xFFFF == 0 // group lengths
        || matches!(
            tag,
            tags::SPECIFIC_CHARACTER_SET | QUERY_RETRIEVE_LEVEL | RETRIEVE_AE_TITLE
        )
        || tag == crate::archive::search::INSTANCE_AVAILABILITY
        || tag == Tag::new(0x0008, 0x0201) // TimezoneOffsetFromUTC
}

pub fn keyword(tag: Tag) -> String {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    let dicom_tag = dicom_core::Tag(tag.group(), tag.element());
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(dicom_tag)
        .map(|e| e.alias().to_string())
        .unwrap_or_else(|| format!("({:04X},{:04X})", tag.group(), tag.element()))
}

/// The catalog query of an identifier: `Ok((keys, unsupported))`, where `unsupported` says an
/// optional key with a value was not matched on.
pub fn identifier_query<'a>(
    level: Level,
    identifier: &DataSet,
    extra_tags: &'a [Tag],
) -> Result<(SearchKeys<'a>, bool), String> {
    let mut keys = SearchKeys::new(level, false, extra_tags);
    let mut unsupported = false;
    for element in identifier.elements() {
        if is_control(element.tag) {
            continue;
        }
        let name = keyword(element.tag);
        match &element.value {
            Value::Items(items) => {
                // Sequence matching is not supported; an empty sequence is a return key.
                if items.iter().any(|item| !item.elements().is_empty()) {
                    unsupported = true;
                }
            }
            Value::Bytes(_) => {
                let value = identifier.text(element.tag).unwrap_or_default();
                if let KeyOutcome::Ignored(_) = keys.key(&name, element.tag, &value)? {
                    if !value.is_empty() {
                        unsupported = true;
                    }
                }
            }
        }
    }
    Ok((keys, unsupported))
}

/// The response identifier of one match: every key the request named, with the match's value
/// where the archive has one.
fn response_identifier(
    request: &DataSet,
    attributes: &Attributes,
    level_text: &str,
    ae_title: &str,
) -> DataSet {
    let mut out = DataSet::new();
    out.put_text(QUERY_RETRIEVE_LEVEL, *b"CS", level_text);
    out.put_text(RETRIEVE_AE_TITLE, *b"AE", ae_title);
    for element in request.elements() {
        if is_control(element.tag) {
            continue;
        }
        let tag = element.tag;
        // Study-level searches keep Modality as the request spelled it.
        let value = attributes.get(tag).or_else(|| {
            (tag == tags::MODALITY)
                .then(|| attributes.get(tags::MODALITIES_IN_STUDY))
                .flatten()
        });
        match (&element.value, value) {
            (Value::Items(_), _) => out.put_items(tag, Vec::new()),
            (_, Some(text)) => put_value(&mut out, tag, text),
            (_, None) => out.put(Element {
                tag,
                vr: element.vr,
                value: Value::Bytes(Vec::new()),
            }),
        }
    }
    if out.has_non_ascii() {
        out.put_text(tags::SPECIFIC_CHARACTER_SET, *b"CS", "ISO_IR 192");
    }
    out
}

fn put_value(out: &mut DataSet, tag: Tag, text: &str) {
    let vr = vr_of(tag);
    if &vr == b"US" {
        match text.parse::<u16>() {
            Ok(n) => out.put_u16(tag, n),
            Err(_) => out.put(Element {
                tag,
                vr,
                value: Value::Bytes(Vec::new()),
            }),
        }
    } else {
        out.put_text(tag, vr, text);
    }
}

pub fn c_find(session: &mut Session, context: u8, request: Command) -> Result<(), LinkError> {
    let respond = |session: &mut Session, code: u16, comment: Option<String>| {
        let mut response = Command::response_to(&request, code);
        response.error_comment = comment.map(|c| super::store::error_comment(&c));
        session.link.send_command(context, &response)
    };
    if !request.has_data_set() {
        return respond(
            session,
            status::MISSING_ATTRIBUTE,
            Some("C-FIND-RQ without an identifier".into()),
        );
    }
    let identifier = session.link.read_data_set(context)?;
    let abstract_syntax = session.abstract_syntax(context).to_string();
    if !matches!(
        abstract_syntax.as_str(),
        PATIENT_ROOT_FIND | STUDY_ROOT_FIND
    ) {
        return respond(
            session,
            status::SOP_CLASS_NOT_SUPPORTED,
            Some(format!(
                "C-FIND is served for the Patient and Study Root models, not {abstract_syntax}"
            )),
        );
    }
    let identifier = match identifier {
        Ok(identifier) => identifier,
        Err(e) => {
            return respond(
                session,
                status::UNABLE_TO_PROCESS,
                Some(format!("unreadable identifier: {e}")),
            )
        }
    };
    let level = match query_level(&abstract_syntax, &identifier) {
        Ok(level) => level,
        Err(e) => return respond(session, status::IDENTIFIER_DOES_NOT_MATCH, Some(e)),
    };
    let level_text = identifier.text(QUERY_RETRIEVE_LEVEL).unwrap_or_default();
    let services = session.services;
    let (keys, unsupported) = match identifier_query(level, &identifier, &services.extra_tags) {
        Ok(found) => found,
        Err(e) => return respond(session, status::UNABLE_TO_PROCESS, Some(e)),
    };
    let encoding = match session.link.encoding(context) {
        Ok(encoding) => encoding,
        Err(e) => return respond(session, status::UNABLE_TO_PROCESS, Some(e)),
    };
    let pending_status = if unsupported {
        status::PENDING_WARNING
    } else {
        status::PENDING
    };
    let mut query = keys.query;
    let page = services
        .archive
        .store()
        .catalog()
        .map_or(1000, |c| c.limits().query_hits_max);
    let mut sent = 0usize;
    loop {
        query.offset = sent;
        query.limit = Some(page);
        let hits = match services.archive.search(&session.caller, &query) {
            Ok(hits) => hits,
            Err(e) => return respond(session, status::UNABLE_TO_PROCESS, Some(e.to_string())),
        };
        if hits.is_empty() {
            break;
        }
        for (attributes, _) in hit_attributes(&hits, true) {
            if session.link.cancel_requested(request.message_id)? {
                return respond(session, status::CANCEL, None);
            }
            let data = response_identifier(
                &identifier,
                &attributes,
                &level_text,
                &services.config.ae_title,
            )
            .encode(encoding);
            let mut response = Command::response_to(&request, pending_status);
            response.data_set_type = DATA_SET_PRESENT;
            session.link.send_with_data(context, &response, &data)?;
            sent += 1;
        }
    }
    respond(session, status::SUCCESS, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_information_model() {
        let mut id = DataSet::new();
        id.put_text(QUERY_RETRIEVE_LEVEL, *b"CS", "PATIENT");
        assert_eq!(query_level(PATIENT_ROOT_FIND, &id), Ok(Level::Patient));
        assert!(query_level(STUDY_ROOT_FIND, &id).is_err());
        id.put_text(QUERY_RETRIEVE_LEVEL, *b"CS", "IMAGE");
        assert_eq!(query_level(STUDY_ROOT_FIND, &id), Ok(Level::Instance));
        id.put_text(QUERY_RETRIEVE_LEVEL, *b"CS", "FRAME");
        assert!(query_level(STUDY_ROOT_FIND, &id).is_err());
        assert!(query_level("1.2.3", &id).is_err());
    }

    #[test]
    fn identifiers_become_the_same_queries_as_qido_and_answers_echo_the_keys() {
        let mut id = DataSet::new();
        id.put_text(QUERY_RETRIEVE_LEVEL, *b"CS", "STUDY");
        id.put_text(tags::PATIENT_ID, *b"LO", "P*");
        id.put_text(tags::STUDY_DATE, *b"DA", "20200101-");
        id.put_text(tags::MODALITY, *b"CS", "");
        id.put_text(tags::STUDY_INSTANCE_UID, *b"UI", "");
        id.put_text(Tag::new(0x0008, 0x0080), *b"LO", "Some Hospital"); // not indexed
        let (keys, unsupported) = identifier_query(Level::Study, &id, &[]).unwrap();
        let filtered: Vec<Tag> = keys.query.filters.iter().map(|(t, _)| *t).collect();
        assert!(filtered.contains(&tags::PATIENT_ID));
        assert!(filtered.contains(&tags::STUDY_DATE));
        assert!(
            unsupported,
            "InstitutionName with a value cannot be matched"
        );

        let mut attributes = Attributes::default();
        attributes.put(tags::PATIENT_ID, "P1");
        attributes.put(tags::STUDY_DATE, "20200202");
        attributes.put(tags::MODALITIES_IN_STUDY, "CT\\MR");
        attributes.put(tags::STUDY_INSTANCE_UID, "1.2.3");
        attributes.put(tags::PATIENT_NAME, "Åström^Åke");
        let out = response_identifier(&id, &attributes, "STUDY", "KUVASTO");
        assert_eq!(out.text(tags::PATIENT_ID).as_deref(), Some("P1"));
        assert_eq!(out.text(tags::MODALITY).as_deref(), Some("CT\\MR"));
        assert_eq!(out.text(tags::STUDY_INSTANCE_UID).as_deref(), Some("1.2.3"));
        assert_eq!(out.text(Tag::new(0x0008, 0x0080)).as_deref(), Some(""));
        assert!(!out.contains(tags::PATIENT_NAME), "only the keys asked for");
        assert_eq!(out.text(RETRIEVE_AE_TITLE).as_deref(), Some("KUVASTO"));
    }
}
