//! QIDO-RS (PS3.18 10.6): searches for studies, series and instances, answered from the
//! catalog alone (no object or metadata record is read).

use super::{json, problem, State, Who};
use crate::archive::search::{KeyOutcome, SearchKeys};
use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kuvasto_engine::dicom::Tag;
use kuvasto_engine::index::attrs::{tags, Level};
use kuvasto_engine::index::catalog::Query;

type AxState = axum::extract::State<State>;

/// Decodes `%XX` escapes and `+` (space) of a query-string component.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in {text:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8"))
}

/// A keyword (`PatientID`) or `GGGGEEEE` tag.
fn attribute(name: &str) -> Option<Tag> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    if name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return u32::from_str_radix(name, 16).ok().map(Tag);
    }
    let entry = dicom_dictionary_std::StandardDataDictionary.by_name(name)?;
    match entry.tag_range() {
        dicom_core::dictionary::TagRange::Single(t) => Some(Tag::new(t.group(), t.element())),
        _ => None,
    }
}

/// What a search request asks for.
struct Search {
    query: Query,
    extras: bool,
    warnings: Vec<String>,
    /// The limit the client asked for (the query asks for one more, to tell if there are
    /// further results).
    limit: usize,
    /// The catalog's most hits per query.
    hits_max: usize,
}

fn parse(
    state: &State,
    level: Level,
    raw: Option<&str>,
    fixed: Vec<(Tag, String)>,
) -> Result<Search, String> {
    let hits_max = state
        .archive
        .store()
        .catalog()
        .map_or(10_000, |c| c.limits().query_hits_max);
    let mut pairs = Vec::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    let fuzzy = pairs
        .iter()
        .filter(|(k, _)| k == "fuzzymatching")
        .try_fold(false, |_, (_, v)| match v.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!("fuzzymatching={other:?}: expected true or false")),
        })?;
    let mut keys = SearchKeys::new(level, fuzzy, &state.extra_tags);
    let mut extras = false;
    let mut warnings = Vec::new();
    let mut limit = hits_max;
    let mut offset = 0;
    for (tag, value) in fixed {
        keys.fixed_uid(tag, &value)
            .map_err(|e| format!("{e} in the path"))?;
    }
    for (key, value) in pairs {
        match key.as_str() {
            "fuzzymatching" => {}
            "limit" => {
                let asked: usize = value
                    .parse()
                    .map_err(|_| format!("limit={value:?} is not a number"))?;
                if asked > hits_max {
                    warnings.push(format!(
                        "limit {asked} is above this server's maximum; at most {hits_max} results are returned"
                    ));
                }
                limit = asked.min(hits_max);
            }
            "offset" => {
                offset = value
                    .parse()
                    .map_err(|_| format!("offset={value:?} is not a number"))?;
            }
            "includefield" => {
                for field in value.split(',').map(str::trim) {
                    if field == "all" {
                        extras = true;
                        continue;
                    }
                    let tag = attribute(field).ok_or_else(|| {
                        format!("includefield {field:?} is not a DICOM attribute")
                    })?;
                    if state.extra_tags.contains(&tag) {
                        extras = true;
                    } else if !keys.indexed(tag) {
                        warnings.push(format!(
                            "includefield {field} is not indexed and was left out"
                        ));
                    }
                }
            }
            name => {
                if name.contains('.') {
                    warnings.push(format!(
                        "matching on sequence attributes ({name}) is not supported; the key was ignored"
                    ));
                    continue;
                }
                let tag = attribute(name).ok_or_else(|| {
                    format!("{name:?} is neither a query parameter nor a DICOM attribute keyword or tag")
                })?;
                if let KeyOutcome::Ignored(why) = keys.key(name, tag, &value)? {
                    warnings.push(why);
                }
            }
        }
    }
    let mut query = keys.query;
    query.offset = offset;
    query.limit = Some(limit.saturating_add(1).min(hits_max + 1));
    Ok(Search {
        query,
        extras,
        warnings,
        limit,
        hits_max,
    })
}

async fn search(
    state: State,
    Who(caller): Who,
    headers: HeaderMap,
    level: Level,
    raw: Option<String>,
    fixed: Vec<(Tag, String)>,
) -> Response {
    if let Err(refusal) = super::accept::require_json(&headers, "the search result") {
        return refusal.into_response();
    }
    let search = match parse(&state, level, raw.as_deref(), fixed) {
        Ok(s) => s,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e),
    };
    let base_url = state.base_url(&headers);
    let st = state.clone();
    let query = search.query.clone();
    let result = tokio::task::spawn_blocking(move || st.archive.search(&caller, &query)).await;
    let mut hits = match result {
        Ok(Ok(hits)) => hits,
        Ok(Err(e)) => return super::wado::archive_error(e).into_response(),
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut warnings = search.warnings;
    if hits.len() > search.limit || hits.len() >= search.hits_max {
        truncate(&mut hits, search.limit);
        warnings.push("there may be more results; ask again with a larger offset".into());
    }
    let body = json::hits(&hits, &base_url, search.extras);
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/dicom+json"),
    );
    for w in warnings {
        let text: String = w
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '"' || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("299 kuvasto \"{text}\"")) {
            h.append(header::WARNING, v);
        }
    }
    response
}

fn truncate(hits: &mut kuvasto_engine::index::catalog::Hits, n: usize) {
    use kuvasto_engine::index::catalog::Hits;
    match hits {
        Hits::Patients(h) => h.truncate(n),
        Hits::Studies(h) => h.truncate(n),
        Hits::Series(h) => h.truncate(n),
        Hits::Instances(h) => h.truncate(n),
    }
}

pub async fn studies(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    search(state, Who(caller), headers, Level::Study, raw, vec![]).await
}

pub async fn all_series(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    search(state, Who(caller), headers, Level::Series, raw, vec![]).await
}

pub async fn all_instances(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    search(state, Who(caller), headers, Level::Instance, raw, vec![]).await
}

pub async fn series_of_study(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path(study): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let fixed = vec![(tags::STUDY_INSTANCE_UID, study)];
    search(state, Who(caller), headers, Level::Series, raw, fixed).await
}

pub async fn instances_of_study(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path(study): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let fixed = vec![(tags::STUDY_INSTANCE_UID, study)];
    search(state, Who(caller), headers, Level::Instance, raw, fixed).await
}

pub async fn instances_of_series(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path((study, series)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let fixed = vec![
        (tags::STUDY_INSTANCE_UID, study),
        (tags::SERIES_INSTANCE_UID, series),
    ];
    search(state, Who(caller), headers, Level::Instance, raw, fixed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_are_percent_decoded_and_attributes_resolved() {
        assert_eq!(percent_decode("Doe%5EJohn+X").unwrap(), "Doe^John X");
        assert!(percent_decode("%G1").is_err());
        assert_eq!(attribute("PatientID"), Some(tags::PATIENT_ID));
        assert_eq!(attribute("00100020"), Some(tags::PATIENT_ID));
        assert_eq!(attribute("NoSuchKeyword"), None);
    }
}
