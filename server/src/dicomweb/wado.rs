//! WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data, streamed from the
//! segments (sealed segments straight from their mapping), and DELETE.

use super::accept::{self, Range};
use super::body::{self, ChannelBody, Sender};
use super::{problem, Refusal, State, Who};
use crate::archive::{Archive, ArchiveError, Caller, Scope};
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kuvasto_engine::dicom::frames::{fragments_of, FrameRange};
use kuvasto_engine::dicom::json::{write_data_set_json, Encoding, JsonLimits};
use kuvasto_engine::dicom::meta::ts;
use kuvasto_engine::dicom::metadata::InstanceMetadata;
use kuvasto_engine::dicom::Tag;
use kuvasto_engine::index::catalog::InstanceHit;
use kuvasto_engine::{Error as EngineError, Object};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

type AxState = axum::extract::State<State>;

/// A fresh multipart boundary (unique per response; never found in DICOM data by chance
/// in practice, and the parts are length-delimited for readers that check).
fn boundary() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "kuvasto-{nanos:016x}-{:08x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "retrieval failed");
    Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

pub(crate) fn archive_error(e: ArchiveError) -> Refusal {
    match e {
        ArchiveError::BadQuery(why) => Refusal::new(StatusCode::BAD_REQUEST, why),
        ArchiveError::Denied(why) => Refusal::new(StatusCode::FORBIDDEN, why),
        ArchiveError::NotFound(why) => Refusal::new(StatusCode::NOT_FOUND, why),
        ArchiveError::Conflict(why) => Refusal::new(StatusCode::CONFLICT, why),
        ArchiveError::Audit(e) => Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        other => internal(other),
    }
}

/// How instances are sent back.
#[derive(Debug, Clone, Copy, PartialEq)]
enum InstanceForm {
    Multipart,
    /// `application/dicom` alone: one instance, no multipart wrapper.
    Bare,
}

/// Picks the response form for instances stored in `syntaxes` (no transcoding: a requested
/// transfer syntax must be the stored one, or `*`).
fn negotiate_instances(ranges: &[Range], syntaxes: &[&str], count: usize) -> Option<InstanceForm> {
    let syntax_ok = |r: &Range| match r.transfer_syntax() {
        None | Some("*") => true,
        Some(wanted) => syntaxes.iter().all(|s| *s == wanted),
    };
    for r in ranges {
        if r.essence() == "multipart/related" {
            let kind = r.related_type();
            if matches!(kind.as_deref(), None | Some("application/dicom")) && syntax_ok(r) {
                return Some(InstanceForm::Multipart);
            }
        } else if r.essence() == "application/dicom" && count == 1 && syntax_ok(r) {
            return Some(InstanceForm::Bare);
        } else if r.essence() == "*/*" || r.essence() == "multipart/*" {
            return Some(InstanceForm::Multipart);
        }
    }
    None
}

fn not_acceptable(what: &str, syntaxes: &[&str]) -> Response {
    let mut stored: Vec<&str> = syntaxes.to_vec();
    stored.sort_unstable();
    stored.dedup();
    problem(
        StatusCode::NOT_ACCEPTABLE,
        format!(
            "{what} is available as multipart/related; type=\"application/dicom\" in its stored transfer syntax ({}); this server does not transcode",
            stored.join(", ")
        ),
    )
}

async fn retrieve(
    state: State,
    Who(caller): Who,
    headers: HeaderMap,
    study: String,
    series: Option<String>,
    instance: Option<String>,
) -> Response {
    let Ok(slot) = state.slots.clone().acquire_owned().await else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    };
    let ranges = match accept::ranges(&headers) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e),
    };
    let archive = state.archive.clone();
    let (s2, se2, i2) = (study.clone(), series.clone(), instance.clone());
    let c2 = caller.clone();
    let hits = match tokio::task::spawn_blocking(move || {
        archive.instances(&c2, "retrieve", &s2, se2.as_deref(), i2.as_deref())
    })
    .await
    {
        Ok(Ok(hits)) => hits,
        Ok(Err(e)) => return archive_error(e).into_response(),
        Err(e) => return internal(e).into_response(),
    };
    if hits.is_empty() {
        return problem(StatusCode::NOT_FOUND, not_found(&study, &series, &instance));
    }
    let syntaxes: Vec<&str> = hits
        .iter()
        .map(|h| h.attrs.transfer_syntax_uid.as_str())
        .collect();
    let Some(form) = negotiate_instances(&ranges, &syntaxes, hits.len()) else {
        return not_acceptable("the instance", &syntaxes);
    };
    let boundary = boundary();
    let (tx, body) = body::channel(slot);
    let archive = state.archive.clone();
    let b = boundary.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = send_instances(&archive, &caller, &hits, form, &b, &tx) {
            tracing::warn!(error = %e, "instance retrieval ended early");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let content_type = match form {
        InstanceForm::Multipart => {
            format!("multipart/related; type=\"application/dicom\"; boundary={boundary}")
        }
        InstanceForm::Bare => "application/dicom".to_string(),
    };
    streamed(content_type, body)
}

fn not_found(study: &str, series: &Option<String>, instance: &Option<String>) -> String {
    match (series, instance) {
        (Some(se), Some(i)) => format!("no instance {i} in series {se} of study {study}"),
        (Some(se), None) => format!("no series {se} in study {study}"),
        _ => format!("no study {study}"),
    }
}

fn streamed(content_type: String, body: ChannelBody) -> Response {
    let mut response = Response::new(axum::body::Body::new(body));
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Sends `bytes`; an error means the client went away.
fn send(tx: &Sender, bytes: Bytes) -> Result<(), EngineError> {
    tx.blocking_send(Ok(bytes))
        .map_err(|_| EngineError::InvalidArgument("the client closed the connection".into()))
}

fn send_object_range(
    tx: &Sender,
    object: &Object,
    range: std::ops::Range<u64>,
) -> Result<(), EngineError> {
    object.visit_range_shared(range, &mut |piece| send(tx, Bytes::from_owner(piece)))
}

fn send_instances(
    archive: &Archive,
    caller: &Caller,
    hits: &[InstanceHit],
    form: InstanceForm,
    boundary: &str,
    tx: &Sender,
) -> Result<(), ArchiveError> {
    for hit in hits {
        let sop = &hit.attrs.sop_instance_uid;
        let Some((object, _)) = archive.open_instance(caller, sop, "retrieve")? else {
            continue; // deleted since the listing
        };
        if form == InstanceForm::Multipart {
            send(
                tx,
                Bytes::from(format!(
                    "--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={}\r\nContent-Length: {}\r\n\r\n",
                    hit.attrs.transfer_syntax_uid, object.len
                )),
            )?;
        }
        send_object_range(tx, &object, 0..object.len)?;
        if form == InstanceForm::Multipart {
            send(tx, Bytes::from_static(b"\r\n"))?;
        }
    }
    if form == InstanceForm::Multipart {
        send(tx, Bytes::from(format!("--{boundary}--\r\n")))?;
    }
    Ok(())
}

pub async fn study(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path(study): Path<String>,
    headers: HeaderMap,
) -> Response {
    retrieve(state, Who(caller), headers, study, None, None).await
}

pub async fn series(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path((study, series)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    retrieve(state, Who(caller), headers, study, Some(series), None).await
}

pub async fn instance(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path((study, series, instance)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    retrieve(
        state,
        Who(caller),
        headers,
        study,
        Some(series),
        Some(instance),
    )
    .await
}

// ---- metadata ----

fn instance_url(base_url: &str, md: &InstanceMetadata) -> String {
    format!(
        "{base_url}/studies/{}/series/{}/instances/{}",
        md.attrs.study_instance_uid, md.attrs.series_instance_uid, md.attrs.sop_instance_uid
    )
}

/// Whether the object's data set is deflated (its record's offsets are inflated-stream
/// offsets, and it keeps no header).
fn deflated(md: &InstanceMetadata) -> bool {
    md.inflated
        || matches!(
            md.attrs.transfer_syntax_uid.as_str(),
            ts::DEFLATED_EXPLICIT_VR_LE | ts::JPIP_DEFLATE
        )
}

/// One instance's metadata as a DICOM JSON object: the stored header with BulkDataURIs for
/// the values left in the object, Pixel Data included.
pub fn metadata_json(
    md: &InstanceMetadata,
    base_url: &str,
    out: &mut String,
) -> Result<(), String> {
    if deflated(md) {
        // A deflated data set keeps no header in its metadata record (offsets into the
        // inflated stream would not address the object): answer with the indexed attributes.
        super::json::write(&super::json::instance_attributes(&md.attrs), out);
        return Ok(());
    }
    let Some(encoding) = Encoding::of_transfer_syntax(&md.attrs.transfer_syntax_uid, md.inflated)
    else {
        return Err(format!(
            "instance {} has transfer syntax {}, whose data set this server cannot read",
            md.attrs.sop_instance_uid, md.attrs.transfer_syntax_uid
        ));
    };
    let url = instance_url(base_url, md);
    let bulk_uri = |tag: Tag| {
        md.bulk
            .iter()
            .any(|b| b.tag == tag)
            .then(|| format!("{url}/bulkdata/{:08X}", tag.0))
    };
    let mut extra = Vec::new();
    if let Some(pixel) = &md.pixel_data {
        extra.push((
            Tag::PIXEL_DATA,
            pixel.vr,
            format!("{url}/bulkdata/{:08X}", Tag::PIXEL_DATA.0),
        ));
    }
    write_data_set_json(
        &md.header,
        encoding,
        &bulk_uri,
        &extra,
        &JsonLimits::default(),
        out,
    )
    .map_err(|e| format!("instance {}: {e}", md.attrs.sop_instance_uid))
}

async fn metadata(
    state: State,
    Who(caller): Who,
    headers: HeaderMap,
    study: String,
    series: Option<String>,
    instance: Option<String>,
) -> Response {
    if let Err(refusal) = accept::require_json(&headers, "the metadata") {
        return refusal.into_response();
    }
    let Ok(_slot) = state.slots.clone().acquire_owned().await else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    };
    let base_url = state.base_url(&headers);
    let archive = state.archive.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<Option<String>, Refusal> {
        let hits = archive
            .instances(
                &caller,
                "retrieve-metadata",
                &study,
                series.as_deref(),
                instance.as_deref(),
            )
            .map_err(archive_error)?;
        if hits.is_empty() {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                not_found(&study, &series, &instance),
            ));
        }
        let mut out = String::from("[");
        let mut written = 0;
        for hit in &hits {
            let sop = &hit.attrs.sop_instance_uid;
            let Some((_, md)) = archive
                .open_instance(&caller, sop, "retrieve-metadata")
                .map_err(archive_error)?
            else {
                continue;
            };
            if written > 0 {
                out.push(',');
            }
            metadata_json(&md, &base_url, &mut out).map_err(internal)?;
            written += 1;
        }
        out.push(']');
        Ok((written > 0).then_some(out))
    })
    .await;
    match result {
        Ok(Ok(Some(json))) => {
            let mut response = (StatusCode::OK, json).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/dicom+json"),
            );
            response
        }
        Ok(Ok(None)) => problem(
            StatusCode::NOT_FOUND,
            "the instances were deleted meanwhile",
        ),
        Ok(Err(refusal)) => refusal.into_response(),
        Err(e) => internal(e).into_response(),
    }
}

pub async fn study_metadata(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path(study): Path<String>,
    headers: HeaderMap,
) -> Response {
    metadata(state, Who(caller), headers, study, None, None).await
}

pub async fn series_metadata(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path((study, series)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    metadata(state, Who(caller), headers, study, Some(series), None).await
}

pub async fn instance_metadata(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path((study, series, instance)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    metadata(
        state,
        Who(caller),
        headers,
        study,
        Some(series),
        Some(instance),
    )
    .await
}

// ---- frames and bulk data ----

/// The media type of a transfer syntax's encapsulated frames (PS3.18 Table 8.7.3-2).
pub fn frame_media_type(transfer_syntax: &str) -> &'static str {
    match transfer_syntax {
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => "image/jpeg",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "image/jp2",
        "1.2.840.10008.1.2.4.92" | "1.2.840.10008.1.2.4.93" => "image/jpx",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            "image/jphc"
        }
        "1.2.840.10008.1.2.5" => "image/dicom-rle",
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.101" => "video/mpeg",
        "1.2.840.10008.1.2.4.102"
        | "1.2.840.10008.1.2.4.103"
        | "1.2.840.10008.1.2.4.104"
        | "1.2.840.10008.1.2.4.105"
        | "1.2.840.10008.1.2.4.106" => "video/mp4",
        "1.2.840.10008.1.2.4.107" | "1.2.840.10008.1.2.4.108" => "video/H265",
        _ => "application/octet-stream",
    }
}

/// The media type and transfer syntax frames are sent with, if the client accepts them.
fn negotiate_frames(ranges: &[Range], md: &InstanceMetadata) -> Option<(&'static str, String)> {
    let stored = md.attrs.transfer_syntax_uid.as_str();
    // Native frames are little endian bytes unless the object is big endian.
    let native_syntax = if stored == ts::EXPLICIT_VR_BE {
        ts::EXPLICIT_VR_BE
    } else {
        ts::EXPLICIT_VR_LE
    };
    let (media, syntax) = if md.frames_encapsulated {
        (frame_media_type(stored), stored)
    } else {
        ("application/octet-stream", native_syntax)
    };
    for r in ranges {
        let (kind, wanted_syntax) = match r.essence() {
            "multipart/related" => (r.related_type(), r.transfer_syntax()),
            "*/*" | "multipart/*" => (None, None),
            _ => continue,
        };
        let kind_ok = match kind.as_deref() {
            None => true,
            Some("application/octet-stream") => {
                // Encapsulated bytes as octet-stream only when the client says any syntax
                // (or names the stored one) will do.
                !md.frames_encapsulated
                    || matches!(wanted_syntax, Some("*"))
                    || wanted_syntax == Some(stored)
            }
            Some(other) => other == media,
        };
        let syntax_ok = match wanted_syntax {
            None | Some("*") => true,
            Some(wanted) => wanted == syntax,
        };
        if kind_ok && syntax_ok {
            let media = match kind.as_deref() {
                Some("application/octet-stream") => "application/octet-stream",
                _ => media,
            };
            return Some((media, syntax.to_string()));
        }
    }
    None
}

/// Parses `1,3,5` into 1-based frame numbers.
fn frame_list(text: &str) -> Result<Vec<u32>, String> {
    let numbers: Result<Vec<u32>, _> = text
        .split(',')
        .map(|n| n.trim().parse::<u32>().ok().filter(|&n| n > 0).ok_or(n))
        .collect();
    match numbers {
        Ok(list) if !list.is_empty() && list.len() <= 10_000 => Ok(list),
        Ok(_) => Err("the frame list must name 1 to 10,000 frames".into()),
        Err(bad) => Err(format!(
            "{bad:?} is not a frame number (frames are numbered from 1)"
        )),
    }
}

/// The bytes of one frame, as sent (fragments joined; 1-bit frames realigned to a byte).
fn frame_bytes(
    object: &Object,
    range: &FrameRange,
    md: &InstanceMetadata,
) -> Result<Vec<u8>, String> {
    let raw = object
        .read_range(range.offset..range.offset + range.length)
        .map_err(|e| e.to_string())?;
    if md.frames_encapsulated {
        let mut out = Vec::with_capacity(raw.len());
        for fragment in fragments_of(&raw, range.fragments) {
            out.extend_from_slice(fragment.map_err(|e| e.to_string())?);
        }
        return Ok(out);
    }
    if range.bit_offset == 0 {
        return Ok(raw);
    }
    // BitsAllocated 1: the frame starts mid-byte; shift it down to bit 0.
    let bits = u64::from(md.attrs.rows.unwrap_or(0)) * u64::from(md.attrs.columns.unwrap_or(0));
    let shift = range.bit_offset;
    let mut out = vec![0u8; bits.div_ceil(8) as usize];
    for (i, byte) in out.iter_mut().enumerate() {
        let lo = raw.get(i).copied().unwrap_or(0) >> shift;
        let hi = raw.get(i + 1).copied().unwrap_or(0) << (8 - shift);
        *byte = lo | hi;
    }
    Ok(out)
}

pub async fn frames(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path((study, series, instance, list)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let wanted = match frame_list(&list) {
        Ok(w) => w,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e),
    };
    let ranges = match accept::ranges(&headers) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e),
    };
    let Ok(slot) = state.slots.clone().acquire_owned().await else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    };
    let base_url = state.base_url(&headers);
    let archive = state.archive.clone();
    let opened = {
        let archive = archive.clone();
        let (study, series, instance) = (study.clone(), series.clone(), instance.clone());
        tokio::task::spawn_blocking(move || {
            open_in(
                &archive,
                &caller,
                &study,
                &series,
                &instance,
                "retrieve-frames",
            )
        })
        .await
    };
    let (object, md) = match opened {
        Ok(Ok(found)) => found,
        Ok(Err(refusal)) => return refusal.into_response(),
        Err(e) => return internal(e).into_response(),
    };
    if md.frames.is_empty() {
        return problem(
            StatusCode::NOT_FOUND,
            format!("instance {instance} has no frames (no Pixel Data, or frames this server cannot locate)"),
        );
    }
    if let Some(&bad) = wanted.iter().find(|&&n| n as usize > md.frames.len()) {
        return problem(
            StatusCode::NOT_FOUND,
            format!(
                "instance {instance} has {} frames; there is no frame {bad}",
                md.frames.len()
            ),
        );
    }
    let Some((media, syntax)) = negotiate_frames(&ranges, &md) else {
        return problem(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "frames of this instance are available as multipart/related; type=\"{}\"; transfer-syntax={} (this server does not transcode)",
                if md.frames_encapsulated { frame_media_type(&md.attrs.transfer_syntax_uid) } else { "application/octet-stream" },
                md.attrs.transfer_syntax_uid
            ),
        );
    };
    let boundary = boundary();
    let (tx, body) = body::channel(slot);
    let url = format!("{}/frames", instance_url(&base_url, &md));
    let part_headers = move |n: u32| {
        format!(
            "Content-Type: {media}; transfer-syntax={syntax}\r\nContent-Location: {url}/{n}\r\n"
        )
    };
    spawn_frame_parts(object, md, wanted, boundary.clone(), tx, part_headers);
    streamed(
        format!("multipart/related; type=\"{media}\"; boundary={boundary}"),
        body,
    )
}

/// Sends frames `numbers` (1-based) of `object` as multipart parts on the blocking pool;
/// `part_headers` gives each part's header lines (Content-Length is added).
fn spawn_frame_parts(
    object: Object,
    md: InstanceMetadata,
    numbers: Vec<u32>,
    boundary: String,
    tx: Sender,
    part_headers: impl Fn(u32) -> String + Send + 'static,
) {
    tokio::task::spawn_blocking(move || {
        for n in numbers {
            let Some(range) = md.frames.get(n as usize - 1) else {
                return; // numbers were checked against the frame map
            };
            let bytes = match frame_bytes(&object, range, &md) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(error = %e, frame = n, "frame read failed");
                    let _ = tx.blocking_send(Err(std::io::Error::other(e)));
                    return;
                }
            };
            let head = format!(
                "--{boundary}\r\n{}Content-Length: {}\r\n\r\n",
                part_headers(n),
                bytes.len()
            );
            if send(&tx, Bytes::from(head)).is_err()
                || send(&tx, Bytes::from(bytes)).is_err()
                || send(&tx, Bytes::from_static(b"\r\n")).is_err()
            {
                return;
            }
        }
        let _ = send(&tx, Bytes::from(format!("--{boundary}--\r\n")));
    });
}

/// The instance named by a URL, checked to be in that study and series.
fn open_in(
    archive: &Archive,
    caller: &Caller,
    study: &str,
    series: &str,
    instance: &str,
    what: &'static str,
) -> Result<(Object, InstanceMetadata), Refusal> {
    let found = archive
        .open_instance(caller, instance, what)
        .map_err(archive_error)?;
    match found {
        Some((object, md))
            if md.attrs.study_instance_uid == study && md.attrs.series_instance_uid == series =>
        {
            Ok((object, md))
        }
        _ => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no instance {instance} in series {series} of study {study}"),
        )),
    }
}

pub async fn bulkdata(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path((study, series, instance, tag)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Ok(tag) = crate::config::parse_tag(&tag) else {
        return problem(
            StatusCode::BAD_REQUEST,
            format!("{tag:?} is not a tag (GGGGEEEE)"),
        );
    };
    let ranges = match accept::ranges(&headers) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e),
    };
    let acceptable = ranges.iter().any(|r| match r.essence() {
        "multipart/related" => matches!(
            r.related_type().as_deref(),
            None | Some("application/octet-stream")
        ),
        "*/*" | "multipart/*" => true,
        _ => false,
    });
    if !acceptable {
        return problem(
            StatusCode::NOT_ACCEPTABLE,
            "bulk data is available as multipart/related; type=\"application/octet-stream\"",
        );
    }
    let Ok(slot) = state.slots.clone().acquire_owned().await else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    };
    let archive = state.archive.clone();
    let opened = {
        let (study, series, instance) = (study.clone(), series.clone(), instance.clone());
        tokio::task::spawn_blocking(move || {
            open_in(
                &archive,
                &caller,
                &study,
                &series,
                &instance,
                "retrieve-bulkdata",
            )
        })
        .await
    };
    let (object, md) = match opened {
        Ok(Ok(found)) => found,
        Ok(Err(refusal)) => return refusal.into_response(),
        Err(e) => return internal(e).into_response(),
    };
    if deflated(&md) {
        return problem(
            StatusCode::NOT_FOUND,
            format!("instance {instance} is deflated; its values are only served within the whole instance"),
        );
    }
    if tag == Tag::PIXEL_DATA && md.frames_encapsulated {
        // Encapsulated Pixel Data: its frames, each one part (fragments joined).
        if md.frames.is_empty() {
            return problem(
                StatusCode::NOT_FOUND,
                format!("instance {instance} has encapsulated Pixel Data whose frames this server cannot locate"),
            );
        }
        let boundary = boundary();
        let (tx, body) = body::channel(slot);
        let all: Vec<u32> = (1..=md.frames.len() as u32).collect();
        let part_headers = |_| "Content-Type: application/octet-stream\r\n".to_string();
        spawn_frame_parts(object, md, all, boundary.clone(), tx, part_headers);
        return streamed(
            format!("multipart/related; type=\"application/octet-stream\"; boundary={boundary}"),
            body,
        );
    }
    let range = if tag == Tag::PIXEL_DATA {
        md.pixel_data.and_then(|p| {
            let len = p.length?;
            Some(p.value_offset..(p.value_offset + u64::from(len)).min(object.len))
        })
    } else {
        md.bulk
            .iter()
            .find(|b| b.tag == tag)
            .map(|b| b.object_offset..b.object_offset + b.length)
    };
    let Some(range) = range.filter(|r| r.end <= object.len) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("instance {instance} has no bulk data value {:08X}", tag.0),
        );
    };
    let boundary = boundary();
    let (tx, body) = body::channel(slot);
    let b = boundary.clone();
    let object = Arc::new(object);
    tokio::task::spawn_blocking(move || {
        let head = format!(
            "--{b}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            range.end - range.start
        );
        let sent = send(&tx, Bytes::from(head))
            .and_then(|()| send_object_range(&tx, &object, range))
            .and_then(|()| send(&tx, Bytes::from(format!("\r\n--{b}--\r\n"))));
        if let Err(e) = sent {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    streamed(
        format!("multipart/related; type=\"application/octet-stream\"; boundary={boundary}"),
        body,
    )
}

// ---- delete ----

async fn delete(state: State, caller: Caller, scope: Scope) -> Response {
    let archive = state.archive.clone();
    let result = tokio::task::spawn_blocking(move || archive.delete(&caller, scope)).await;
    match result {
        Ok(Ok(0)) => problem(StatusCode::NOT_FOUND, "nothing to delete there"),
        Ok(Ok(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => archive_error(e).into_response(),
        Err(e) => internal(e).into_response(),
    }
}

pub async fn delete_study(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path(study): Path<String>,
) -> Response {
    delete(state, caller, Scope::Study(study)).await
}

pub async fn delete_series(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path((study, series)): Path<(String, String)>,
) -> Response {
    delete(state, caller, Scope::Series(study, series)).await
}

pub async fn delete_instance(
    axum::extract::State(state): AxState,
    Who(caller): Who,
    Path((study, series, instance)): Path<(String, String, String)>,
) -> Response {
    delete(state, caller, Scope::Instance(study, series, instance)).await
}
