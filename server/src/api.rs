//! The archive rules' HTTP JSON API under `/api` (`docs/api.md`): documents from the patient
//! data repository, purchased-service authorizations, disclosure prohibitions, the patient
//! view, quarantine, study invalidation, rejected instances and the audit log.
//!
//! Callers authenticate as on DICOMweb ([`Who`]); every operation is a call into
//! [`Archive`](crate::archive::Archive), which checks the caller's role and writes the audit
//! record. This module only translates HTTP to those calls and their answers to JSON.

use crate::archive::audit::AuditFilter;
use crate::archive::{atna, documents, state::Authorization, time, ArchiveError};
use crate::dicomweb::{problem, wado::archive_error, State, Who};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};

type St = axum::extract::State<State>;

/// Where the API lives.
pub const PREFIX: &str = "/api";
/// Largest request body: a document with 64 MiB of content is ~86 MiB of base64.
pub const API_BODY_BYTES_MAX: usize = 96 << 20;
/// Audit records one export answers with, at most (page on with `after`).
pub const AUDIT_EXPORT_RECORDS_MAX: usize = 100_000;

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = (status, body).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Runs an archive call on the blocking pool and answers with its JSON.
async fn call<T: Serialize + Send + 'static>(
    status: StatusCode,
    f: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => json(status, &value),
        Ok(Err(e)) => archive_error(e).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// An authorization with its instants also written as RFC 3339.
#[derive(Serialize)]
struct AuthorizationView {
    #[serde(flatten)]
    authorization: Authorization,
    valid_from: String,
    valid_until: String,
    revoked: Option<String>,
}

impl From<Authorization> for AuthorizationView {
    fn from(a: Authorization) -> Self {
        AuthorizationView {
            valid_from: time::format_ms(a.valid_from_ms),
            valid_until: time::format_ms(a.valid_until_ms),
            revoked: a.revoked_ms.map(time::format_ms),
            authorization: a,
        }
    }
}

async fn post_document(axum::extract::State(state): St, Who(caller): Who, body: Bytes) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::CREATED, move || {
        archive.register_document(&caller, &body)
    })
    .await
}

async fn get_document(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(id): Path<String>,
) -> Response {
    let archive = state.archive.clone();
    let url = format!("{PREFIX}/documents/{id}/content");
    call(StatusCode::OK, move || {
        let (document, _) = archive.document(&caller, &id, false)?;
        let has_content = archive.document_has_content(&id);
        Ok(documents::to_fhir_json(
            &document,
            has_content.then_some(url.as_str()),
        ))
    })
    .await
}

async fn get_document_content(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(id): Path<String>,
) -> Response {
    let archive = state.archive.clone();
    match tokio::task::spawn_blocking(move || archive.document(&caller, &id, true)).await {
        Ok(Ok((document, Some(content)))) => {
            let mut response = (StatusCode::OK, content).into_response();
            if let Ok(value) = HeaderValue::from_str(&document.content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        // `document(.., true)` answers NotFound when there is no content.
        Ok(Ok((_, None))) => problem(StatusCode::NOT_FOUND, "the document has no content"),
        Ok(Err(e)) => archive_error(e).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn post_authorization(
    axum::extract::State(state): St,
    Who(caller): Who,
    body: Bytes,
) -> Response {
    let request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("the authorization is not valid JSON of the documented shape: {e}"),
            )
        }
    };
    let archive = state.archive.clone();
    call(StatusCode::CREATED, move || {
        archive
            .create_authorization(&caller, request)
            .map(AuthorizationView::from)
    })
    .await
}

async fn list_authorizations(axum::extract::State(state): St, Who(caller): Who) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::OK, move || {
        Ok(archive
            .authorizations(&caller)?
            .into_iter()
            .map(AuthorizationView::from)
            .collect::<Vec<_>>())
    })
    .await
}

async fn revoke_authorization(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(id): Path<String>,
) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::OK, move || {
        archive
            .revoke_authorization(&caller, &id)
            .map(AuthorizationView::from)
    })
    .await
}

#[derive(Serialize)]
struct ProhibitionView {
    patient: String,
    prohibited: bool,
    since: Option<String>,
}

async fn get_prohibition(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(patient): Path<String>,
) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::OK, move || {
        let p = archive.prohibition(&caller, &patient)?;
        Ok(ProhibitionView {
            prohibited: p.is_some(),
            since: p.map(|p| time::format_ms(p.set_ms)),
            patient,
        })
    })
    .await
}

async fn put_prohibition(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(patient): Path<String>,
) -> Response {
    set_prohibition(state, caller, patient, true).await
}

async fn delete_prohibition(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(patient): Path<String>,
) -> Response {
    set_prohibition(state, caller, patient, false).await
}

async fn set_prohibition(
    state: State,
    caller: crate::archive::Caller,
    patient: String,
    prohibited: bool,
) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::OK, move || {
        let p = archive.set_prohibition(&caller, &patient, prohibited)?;
        Ok(ProhibitionView {
            prohibited: p.is_some(),
            since: p.map(|p| time::format_ms(p.set_ms)),
            patient,
        })
    })
    .await
}

async fn patient_view(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(patient): Path<String>,
) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::OK, move || {
        archive.patient_view(&caller, &patient)
    })
    .await
}

async fn quarantine(axum::extract::State(state): St, Who(caller): Who) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::OK, move || archive.quarantine(&caller)).await
}

async fn release(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(study): Path<String>,
) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::OK, move || archive.release(&caller, &study)).await
}

#[derive(Serialize)]
struct Expired {
    study: String,
    instances_deleted: usize,
}

async fn expire(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(study): Path<String>,
) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::OK, move || {
        let instances_deleted = archive.expire(&caller, &study)?;
        Ok(Expired {
            study,
            instances_deleted,
        })
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateRequest {
    reason: String,
}

async fn invalidate(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(study): Path<String>,
    body: Bytes,
) -> Response {
    let request: InvalidateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"reason\": \"...\"}}: {e}"),
            )
        }
    };
    if request.reason.trim().is_empty() {
        return problem(StatusCode::BAD_REQUEST, "an invalidation needs a reason");
    }
    let archive = state.archive.clone();
    call(StatusCode::OK, move || {
        archive.invalidate_study(&caller, &study, &request.reason)
    })
    .await
}

async fn correct(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(study): Path<String>,
    body: Bytes,
) -> Response {
    let request: crate::archive::CorrectionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"service_event\": \"<OID>\", \"reason\": \"...\"}}: {e}"),
            )
        }
    };
    if request.reason.trim().is_empty() {
        return problem(StatusCode::BAD_REQUEST, "a correction needs a reason");
    }
    let archive = state.archive.clone();
    call(StatusCode::OK, move || {
        archive.correct_study(&caller, &study, request)
    })
    .await
}

async fn restore(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(study): Path<String>,
) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::OK, move || {
        archive.restore_study(&caller, &study)
    })
    .await
}

async fn rejections(axum::extract::State(state): St, Who(caller): Who) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::OK, move || archive.hidden_instances(&caller)).await
}

async fn restore_instance(
    axum::extract::State(state): St,
    Who(caller): Who,
    Path(sop): Path<String>,
) -> Response {
    let archive = state.archive.clone();
    call(StatusCode::OK, move || {
        archive.restore_instance(&caller, &sop)
    })
    .await
}

/// `GET /api/audit` parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    patient: Option<String>,
    study: Option<String>,
    organisation: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    /// `jsonl` (default) or `dicom` (DICOM audit messages, one per line).
    format: Option<String>,
}

async fn audit(
    axum::extract::State(state): St,
    Who(caller): Who,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("audit parameters (patient, study, organisation, action, since, until, after, limit, format): {e}"),
            )
        }
    };
    let instant = |t: &Option<String>, name: &str| -> Result<Option<i64>, String> {
        t.as_deref()
            .map(time::parse_ms)
            .transpose()
            .map_err(|e| format!("{name}: {e}"))
    };
    let (since_ms, until_ms) = match (
        instant(&params.since, "since"),
        instant(&params.until, "until"),
    ) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return problem(StatusCode::BAD_REQUEST, e),
    };
    let dicom = match params.format.as_deref() {
        None | Some("jsonl") => false,
        Some("dicom") => true,
        Some(other) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("format {other:?}: expected jsonl or dicom"),
            )
        }
    };
    let filter = AuditFilter {
        patient: params.patient,
        study: params.study,
        organisation: params.organisation,
        action: params.action,
        since_ms,
        until_ms,
        after_seq: params.after,
        limit: params
            .limit
            .unwrap_or(AUDIT_EXPORT_RECORDS_MAX)
            .min(AUDIT_EXPORT_RECORDS_MAX),
    };
    let archive = state.archive.clone();
    let result = tokio::task::spawn_blocking(move || {
        let records = archive.audit_records(&caller, &filter)?;
        let source = archive.rules().audit_source_id.clone();
        let mut out = String::new();
        for r in &records {
            if dicom {
                out.push_str(&atna::dicom_audit_message(r, &source));
            } else {
                out.push_str(&serde_json::to_string(r).unwrap_or_default());
            }
            out.push('\n');
        }
        Ok::<_, ArchiveError>(out)
    })
    .await;
    match result {
        Ok(Ok(body)) => {
            let mut response = (StatusCode::OK, body).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(if dicom {
                    "application/xml; charset=utf-8"
                } else {
                    "application/x-ndjson"
                }),
            );
            response
        }
        Ok(Err(e)) => archive_error(e).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Marks a request as an API call (the audit records' protocol is `api`).
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest;

/// The API routes (nested under [`PREFIX`] by the caller).
pub fn routes() -> Router<State> {
    Router::new()
        .route("/documents", post(post_document))
        .route("/documents/{id}", get(get_document))
        .route("/documents/{id}/content", get(get_document_content))
        .route(
            "/authorizations",
            post(post_authorization).get(list_authorizations),
        )
        .route("/authorizations/{id}/revoke", post(revoke_authorization))
        .route(
            "/patients/{patient}/prohibition",
            get(get_prohibition)
                .put(put_prohibition)
                .delete(delete_prohibition),
        )
        .route("/patients/{patient}/view", get(patient_view))
        .route("/quarantine", get(quarantine))
        .route("/quarantine/{study}/release", post(release))
        .route("/quarantine/{study}/expire", post(expire))
        .route("/studies/{study}/invalidate", post(invalidate))
        .route("/studies/{study}/restore", post(restore))
        .route("/studies/{study}/correct", post(correct))
        .route("/rejections", get(rejections))
        .route("/rejections/{sop}/restore", post(restore_instance))
        .route("/audit", get(audit))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such API resource (docs/api.md)") })
        .layer(DefaultBodyLimit::max(API_BODY_BYTES_MAX))
        .layer(axum::Extension(ApiRequest))
}
