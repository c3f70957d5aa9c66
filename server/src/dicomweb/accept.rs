//! `Accept` negotiation (PS3.18 8.7): the media ranges a client listed, most preferred first.

use super::multipart::MediaType;
use axum::http::{header, HeaderMap};

/// One acceptable media range.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub media: MediaType,
    pub q: f32,
}

impl Range {
    /// `type/subtype` lowercased.
    pub fn essence(&self) -> &str {
        &self.media.essence
    }

    /// The `type` parameter of a `multipart/related` range, lowercased; `None` when absent
    /// or a wildcard (`*/*`, `*`), which admit any part type.
    pub fn related_type(&self) -> Option<String> {
        self.media
            .param("type")
            .map(|t| t.to_ascii_lowercase())
            .filter(|t| t != "*/*" && t != "*")
    }

    pub fn transfer_syntax(&self) -> Option<&str> {
        self.media.param("transfer-syntax")
    }

    /// Whether this range admits `essence` (`*/*` and `type/*` included).
    pub fn admits(&self, essence: &str) -> bool {
        let mine = self.essence();
        mine == "*/*"
            || mine == essence
            || mine
                .strip_suffix("/*")
                .is_some_and(|t| essence.split('/').next() == Some(t))
    }
}

/// Checks that the client accepts a DICOM JSON answer (`application/dicom+json` or
/// `application/json`, wild cards included); `what` names the answer in the 406 reason.
pub fn require_json(headers: &HeaderMap, what: &str) -> Result<(), super::Refusal> {
    use axum::http::StatusCode;
    let ranges = ranges(headers).map_err(|e| super::Refusal::new(StatusCode::BAD_REQUEST, e))?;
    if ranges
        .iter()
        .any(|r| r.admits("application/dicom+json") || r.admits("application/json"))
    {
        return Ok(());
    }
    Err(super::Refusal::new(
        StatusCode::NOT_ACCEPTABLE,
        format!("{what} is available as application/dicom+json (XML is not supported)"),
    ))
}

/// Splits a header value on commas that are not inside quoted strings.
fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

/// The client's acceptable ranges, most preferred first (q=0 dropped). No `Accept` header
/// means anything; a header that does not parse is an error naming the bad range.
pub fn ranges(headers: &HeaderMap) -> Result<Vec<Range>, String> {
    let mut out = Vec::new();
    let values: Vec<_> = headers.get_all(header::ACCEPT).iter().collect();
    if values.is_empty() {
        return Ok(vec![Range {
            media: MediaType::parse("*/*").map_err(|e| e.to_string())?,
            q: 1.0,
        }]);
    }
    for value in values {
        let text = value
            .to_str()
            .map_err(|_| "the Accept header is not visible ASCII".to_string())?;
        for item in split_list(text) {
            if item.trim().is_empty() {
                continue;
            }
            let media =
                MediaType::parse(item).map_err(|e| format!("Accept: {:?}: {e}", item.trim()))?;
            let q = match media.param("q") {
                Some(q) => q
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))
                    .ok_or_else(|| format!("Accept: {:?}: bad q value", item.trim()))?,
                None => 1.0,
            };
            if q > 0.0 {
                out.push(Range { media, q });
            }
        }
    }
    out.sort_by(|a, b| b.q.total_cmp(&a.q));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(value: &str) -> Vec<Range> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        ranges(&headers).unwrap()
    }

    #[test]
    fn ranges_are_split_outside_quotes_and_sorted_by_q() {
        let r = accept(
            "application/json;q=0.5, multipart/related; type=\"application/dicom\"; transfer-syntax=*, image/jpeg;q=0",
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].essence(), "multipart/related");
        assert_eq!(r[0].related_type().as_deref(), Some("application/dicom"));
        assert_eq!(r[0].transfer_syntax(), Some("*"));
        assert_eq!(r[1].essence(), "application/json");
        assert!(accept("*/*")[0].admits("application/dicom+json"));
        assert!(accept("application/*")[0].admits("application/dicom+json"));
        assert!(!accept("image/*")[0].admits("application/dicom+json"));
    }

    #[test]
    fn no_header_accepts_anything_and_garbage_is_an_error() {
        assert!(ranges(&HeaderMap::new()).unwrap()[0].admits("application/dicom"));
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/plain;q=x"));
        assert!(ranges(&headers).unwrap_err().contains("q value"));
    }
}
