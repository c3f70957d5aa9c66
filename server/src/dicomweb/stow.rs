//! STOW-RS (PS3.18 10.5): `POST /studies[/{study}]` with a `multipart/related;
//! type="application/dicom"` body. The body is parsed as it arrives and each part's bytes go
//! straight into the engine; a request holds at most `stow_queue_chunks_max` network chunks
//! plus the engine's one put buffer.

use super::multipart::{
    boundary_of, Event, MediaType, MultipartLimits, MultipartParser, ParseOrSink,
};
use super::{accept, problem, State, Who};
use crate::archive::{Archive, Caller, Failure, FailureReason, Stored, Upload};
use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use kuvasto_engine::dicom::json::write_json_string as string;
use tokio::sync::mpsc;

/// Messages of failed parts repeated in `Warning` headers, at most.
const WARNINGS_MAX: usize = 8;

pub async fn store(
    axum::extract::State(state): axum::extract::State<State>,
    Who(caller): Who,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(state, Who(caller), None, headers, body).await
}

pub async fn store_in_study(
    axum::extract::State(state): axum::extract::State<State>,
    Who(caller): Who,
    Path(study): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(state, Who(caller), Some(study), headers, body).await
}

/// One part that was not stored.
struct Failed {
    part: usize,
    failure: Failure,
}

/// What the worker did with the body.
#[derive(Default)]
struct Report {
    stored: Vec<Stored>,
    failed: Vec<Failed>,
    /// The body itself was unusable from some point on (400 if nothing was stored).
    broken: Option<String>,
    parts: usize,
}

async fn run(
    state: State,
    Who(caller): Who,
    study: Option<String>,
    headers: HeaderMap,
    mut body: Body,
) -> Response {
    let Ok(_slot) = state.slots.clone().acquire_owned().await else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    };
    let expected = "multipart/related; type=\"application/dicom\"";
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("no Content-Type; STOW-RS takes {expected}"),
        );
    };
    let media = match content_type
        .to_str()
        .map_err(|_| "not ASCII".to_string())
        .and_then(|t| MediaType::parse(t).map_err(|e| e.to_string()))
    {
        Ok(media) => media,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("Content-Type: {e}")),
    };
    if media.essence != "multipart/related" {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {} is not supported; STOW-RS takes {expected}",
                media.essence
            ),
        );
    }
    if let Some(kind) = media.param("type") {
        if !kind.eq_ignore_ascii_case("application/dicom") {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("multipart/related parts of type {kind} are not supported (metadata and bulk data uploads are not); send {expected}"),
            );
        }
    }
    let boundary = match boundary_of(&media) {
        Ok(b) => b,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("Content-Type: {e}")),
    };
    if let Err(refusal) = accept::require_json(&headers, "the store response") {
        return refusal.into_response();
    }
    let base_url = state.base_url(&headers);
    let limits = MultipartLimits {
        part_header_bytes_max: state.http.part_header_bytes_max,
        parts_max: state.http.parts_max,
        ..MultipartLimits::default()
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(state.http.stow_queue_chunks_max);
    let archive = state.archive.clone();
    let study_for_worker = study.clone();
    let worker = tokio::task::spawn_blocking(move || {
        consume(
            &archive,
            &caller,
            study_for_worker.as_deref(),
            &boundary,
            limits,
            rx,
        )
    });
    let (mut frames, mut bytes) = (0u64, 0u64);
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                frames += 1;
                bytes += data.len() as u64;
                if tx.send(Ok(data)).await.is_err() {
                    break; // the worker stopped reading: the body is refused
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(e.to_string())).await;
                break;
            }
            None => break,
        }
    }
    drop(tx);
    tracing::debug!(frames, bytes, "STOW body received");
    match worker.await {
        Ok(report) => {
            if state.notifier.enabled() {
                state.notifier.notify(
                    report
                        .stored
                        .iter()
                        // Quarantined instances are not available (`docs/rules.md` §3).
                        .filter(|s| !s.quarantined)
                        .map(|s| crate::dimse::notify::StoredInstance::of(&s.attrs))
                        .collect(),
                );
            }
            respond(report, study.as_deref(), &base_url)
        }
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("store worker failed: {e}"),
        ),
    }
}

/// The part being read.
enum Current<'a> {
    None,
    Storing(Box<Upload<'a>>),
    /// Refused already; its remaining bytes are skipped.
    Skipping,
}

/// Runs on the blocking pool: parses the body and stores each part as it streams in.
fn consume(
    archive: &Archive,
    caller: &Caller,
    study: Option<&str>,
    boundary: &str,
    limits: MultipartLimits,
    mut rx: mpsc::Receiver<Result<Bytes, String>>,
) -> Report {
    let mut report = Report::default();
    let mut parser = MultipartParser::new(boundary, limits);
    let mut current = Current::None;
    while let Some(chunk) = rx.blocking_recv() {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                report.broken = Some(format!("the request body could not be read: {e}"));
                return report; // an unfinished instance is abandoned when dropped
            }
        };
        let fed = parser.feed(&chunk, |event| -> Result<(), std::convert::Infallible> {
            on_event(archive, caller, study, event, &mut current, &mut report);
            Ok(())
        });
        if let Err(ParseOrSink::Parse(e)) = fed {
            report.broken = Some(format!("the multipart body is malformed: {e}"));
            return report;
        }
    }
    if let Err(e) = parser.finish() {
        report.broken = Some(format!("the multipart body is incomplete: {e}"));
    }
    report
}

fn on_event<'a>(
    archive: &'a Archive,
    caller: &'a Caller,
    study: Option<&'a str>,
    event: Event<'_>,
    current: &mut Current<'a>,
    report: &mut Report,
) {
    match event {
        Event::PartStart { headers } => {
            report.parts += 1;
            let part = report.parts;
            let content_type = headers
                .iter()
                .find(|(name, _)| name == "content-type")
                .map(|(_, value)| value.as_str());
            let essence = content_type.map(|t| MediaType::parse(t).map(|m| m.essence));
            *current = match essence_is_dicom(&essence) {
                true => Current::Storing(Box::new(archive.begin_store(caller, study))),
                false => {
                    report.failed.push(Failed {
                        part,
                        failure: Failure {
                            reason: FailureReason::CannotUnderstand,
                            message: format!(
                                "part {part} has Content-Type {:?}; only application/dicom parts are stored",
                                content_type.unwrap_or_default()
                            ),
                            sop: None,
                            retryable: false,
                        },
                    });
                    Current::Skipping
                }
            };
        }
        Event::Data(bytes) => {
            if let Current::Storing(upload) = current {
                if let Err(failure) = upload.write(bytes) {
                    report.failed.push(Failed {
                        part: report.parts,
                        failure,
                    });
                    *current = Current::Skipping;
                }
            }
        }
        Event::PartEnd => match std::mem::replace(current, Current::None) {
            Current::Storing(upload) => match upload.finish() {
                Ok(stored) => report.stored.push(stored),
                Err(failure) => report.failed.push(Failed {
                    part: report.parts,
                    failure,
                }),
            },
            Current::Skipping | Current::None => {}
        },
        Event::End => {}
    }
}

fn essence_is_dicom(essence: &Option<Result<String, super::multipart::MultipartError>>) -> bool {
    match essence {
        None => true, // a part without headers: the request's type applies
        Some(Ok(e)) => e == "application/dicom",
        Some(Err(_)) => false,
    }
}

fn uid_element(tag: &str, vr: &str, value: &str, out: &mut String) {
    out.push_str(&format!("\"{tag}\":{{\"vr\":\"{vr}\",\"Value\":["));
    string(value, out);
    out.push_str("]}");
}

/// The Store Instances Response (PS3.18 10.5.3) and its status.
fn respond(report: Report, study: Option<&str>, base_url: &str) -> Response {
    if report.stored.is_empty() {
        if let Some(reason) = &report.broken {
            if report.failed.is_empty() {
                return problem(StatusCode::BAD_REQUEST, reason.clone());
            }
        }
        if report.parts == 0 {
            return problem(StatusCode::BAD_REQUEST, "the body has no parts");
        }
    }
    let mut out = String::from("{");
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !first {
            out.push(',');
        }
        first = false;
    };
    if let Some(study) = study {
        sep(&mut out);
        uid_element(
            "00081190",
            "UR",
            &format!("{base_url}/studies/{study}"),
            &mut out,
        );
    }
    let mut failed = report.failed;
    if let Some(reason) = &report.broken {
        failed.push(Failed {
            part: report.parts,
            failure: Failure {
                reason: FailureReason::CannotUnderstand,
                message: reason.clone(),
                sop: None,
                retryable: false,
            },
        });
    }
    if !failed.is_empty() {
        sep(&mut out);
        out.push_str("\"00081198\":{\"vr\":\"SQ\",\"Value\":[");
        for (i, f) in failed.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('{');
            if let Some((class, instance)) = &f.failure.sop {
                uid_element("00081150", "UI", class, &mut out);
                out.push(',');
                uid_element("00081155", "UI", instance, &mut out);
                out.push(',');
            }
            out.push_str(&format!(
                "\"00081197\":{{\"vr\":\"US\",\"Value\":[{}]}}}}",
                f.failure.reason.code()
            ));
        }
        out.push_str("]}");
    }
    if !report.stored.is_empty() {
        sep(&mut out);
        out.push_str("\"00081199\":{\"vr\":\"SQ\",\"Value\":[");
        for (i, s) in report.stored.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('{');
            uid_element("00081150", "UI", &s.attrs.sop_class_uid, &mut out);
            out.push(',');
            uid_element("00081155", "UI", &s.attrs.sop_instance_uid, &mut out);
            out.push(',');
            uid_element(
                "00081190",
                "UR",
                &format!(
                    "{base_url}/studies/{}/series/{}/instances/{}",
                    s.attrs.study_instance_uid,
                    s.attrs.series_instance_uid,
                    s.attrs.sop_instance_uid
                ),
                &mut out,
            );
            out.push('}');
        }
        out.push_str("]}");
    }
    out.push('}');
    let status = if failed.is_empty() {
        StatusCode::OK
    } else if !report.stored.is_empty() {
        StatusCode::ACCEPTED
    } else if failed.iter().all(|f| f.failure.retryable) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::CONFLICT
    };
    let mut response = (status, out).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/dicom+json"),
    );
    for f in failed.iter().take(WARNINGS_MAX) {
        let text: String = format!("part {}: {}", f.part, f.failure.message)
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    if c == '"' {
                        '\''
                    } else {
                        c
                    }
                } else {
                    '?'
                }
            })
            .take(400)
            .collect();
        if let Ok(value) = HeaderValue::from_str(&format!("299 kuvasto \"{text}\"")) {
            headers.append(header::WARNING, value);
        }
    }
    response
}
