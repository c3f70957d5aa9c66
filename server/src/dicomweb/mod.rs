//! DICOMweb (PS3.18): STOW-RS, QIDO-RS, WADO-RS and DELETE over HTTP, adapted onto the
//! [`Archive`](crate::archive::Archive).
//!
//! - [`multipart`]: the streaming `multipart/related` parser and media types;
//! - `stow`: store requests, each part piped into the engine while it arrives;
//! - `qido`: searches, answered from the catalog;
//! - `wado`: retrieval of instances, metadata, frames and bulk data, streamed from segments;
//! - `accept`: `Accept` negotiation; `json`: the DICOM JSON the searches answer with;
//! - `body`: the response body fed from a blocking producer.
//!
//! Engine calls block (a put waits for `fdatasync`), so every request's engine work runs on
//! the blocking pool and talks to the async side through bounded channels: a request holds at
//! most `stow_queue_chunks_max` network chunks or `RETRIEVE_QUEUE_PIECES_MAX` object pieces.

pub mod accept;
mod body;
mod json;
pub mod multipart;
mod qido;
mod stow;
pub(crate) mod wado;

use crate::archive::{Archive, Caller};
use crate::config::HttpSection;
use crate::tls::http::TlsPeer;
use crate::tls::identity::CertificateFacts;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where DICOMweb lives under the server's root.
pub const PREFIX: &str = "/dicom-web";

/// What every handler shares.
pub struct AppState {
    pub archive: Arc<Archive>,
    pub http: HttpSection,
    /// The configured extra indexed attributes (searchable besides the standard ones).
    pub extra_tags: Vec<kuvasto_engine::dicom::Tag>,
    /// The address the listener is bound to (set once listening).
    pub bound: std::sync::OnceLock<SocketAddr>,
    /// Bounds concurrent requests (`http.requests_max`).
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Announces each STOW request's studies to subscribed DIMSE peers.
    pub notifier: Arc<crate::dimse::notify::Notifier>,
    /// Set once shutdown began: `/ready` answers 503 from then on.
    pub stopping: std::sync::atomic::AtomicBool,
}

pub type State = Arc<AppState>;

/// The header a portal identity names the patient it acts for in.
pub const ON_BEHALF_OF: &str = "x-on-behalf-of";

/// The authenticated caller of a request: `Authorization: Bearer <token>` of a configured
/// identity, or over HTTPS with mutual TLS the verified client certificate's identity, as
/// `http.authentication` says (every caller, in the standalone profile); a portal identity
/// also names its patient in `X-On-Behalf-Of`. Anything else is answered 401, 403 (or 400)
/// before the handler.
pub struct Who(pub Caller);

impl axum::extract::FromRequestParts<State> for Who {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &State,
    ) -> Result<Who, Response> {
        // Plain HTTP gives the address; HTTPS its `TlsPeer` (address and client certificate).
        let (peer, certificate) = match parts.extensions.get::<ConnectInfo<TlsPeer>>() {
            Some(ConnectInfo(tls)) => (tls.address.to_string(), tls.certificate.clone()),
            None => (
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.to_string())
                    .unwrap_or_default(),
                None,
            ),
        };
        let protocol = if parts.extensions.get::<crate::api::ApiRequest>().is_some() {
            "api"
        } else {
            "dicomweb"
        };
        state
            .authenticate(&parts.headers, peer, certificate.as_deref(), protocol)
            .map(Who)
            .map_err(IntoResponse::into_response)
    }
}

impl AppState {
    /// Identifies the caller of a request (see [`Who`]); `certificate` is the connection's
    /// verified client certificate, if any.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: String,
        certificate: Option<&CertificateFacts>,
        protocol: &'static str,
    ) -> Result<Caller, Refusal> {
        use crate::tls::HttpAuthentication;
        let (identity, peer) = match (self.http.authentication, certificate) {
            (HttpAuthentication::Token, _) | (HttpAuthentication::Either, None) => {
                (self.by_bearer_token(headers, &peer, protocol)?, peer)
            }
            (HttpAuthentication::Certificate | HttpAuthentication::Either, Some(facts)) => {
                let identity = crate::tls::identity::identify(self.archive.directory(), facts)
                    .map_err(|reason| {
                        tracing::warn!(%peer, protocol, subject = %facts.subject, %reason, "request refused: client certificate");
                        Refusal::new(StatusCode::FORBIDDEN, reason)
                    })?;
                // The audit record's peer names the certificate too.
                let peer = match &facts.common_name {
                    Some(cn) => format!("{peer} CN={cn}"),
                    None => peer,
                };
                (identity, peer)
            }
            (HttpAuthentication::Certificate, None) => {
                tracing::warn!(%peer, protocol, "request refused: no client certificate");
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "this archive identifies its callers by TLS client certificate, and this connection presented none (bearer tokens are not accepted)",
                ));
            }
        };
        let on_behalf_of = match identity.role {
            crate::archive::directory::Role::Portal => {
                let patient = headers
                    .get(ON_BEHALF_OF)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|p| !p.is_empty() && p.len() <= 64);
                match patient {
                    Some(p) => Some(p.to_string()),
                    None => {
                        return Err(Refusal::new(
                            StatusCode::BAD_REQUEST,
                            "a portal identity names the patient it acts for in X-On-Behalf-Of",
                        ))
                    }
                }
            }
            _ => None,
        };
        Ok(Caller {
            identity,
            on_behalf_of,
            protocol,
            peer,
            override_register: None,
        })
    }

    /// The identity of `Authorization: Bearer <token>` (401 when there is none or it is not
    /// one of the directory's).
    fn by_bearer_token(
        &self,
        headers: &HeaderMap,
        peer: &str,
        protocol: &'static str,
    ) -> Result<Arc<crate::archive::directory::Identity>, Refusal> {
        let directory = self.archive.directory();
        let token = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let text = value.to_str().unwrap_or_default();
                match text.split_once(' ') {
                    Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                        Some(token.trim())
                    }
                    _ => {
                        return Err(Refusal::unauthorized(
                            "the Authorization header must be `Bearer <token>`",
                        ))
                    }
                }
            }
        };
        let Some(identity) = directory.by_token(token) else {
            tracing::warn!(%peer, protocol, token_given = token.is_some(), "request refused: no identity");
            return Err(Refusal::unauthorized(match token {
                None => "this archive needs a bearer token (Authorization: Bearer <token>)",
                Some(_) => "the bearer token is not one of this archive's identities",
            }));
        };
        Ok(identity)
    }

    /// `http(s)://host/dicom-web`, for RetrieveURL and BulkDataURI values.
    fn base_url(&self, headers: &HeaderMap) -> String {
        if !self.http.public_url.is_empty() {
            return format!("{}{PREFIX}", self.http.public_url.trim_end_matches('/'));
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or("localhost");
        // Some clients (dicomweb-client) send Host without the port; when this server does
        // not listen on port 80 (443 with TLS), the URLs it hands out must still name its port.
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !host.ends_with(']');
        let (scheme, default_port) = if self.http.tls {
            ("https", 443)
        } else {
            ("http", 80)
        };
        match self.bound.get() {
            Some(bound) if !has_port && bound.port() != default_port => {
                format!("{scheme}://{host}:{}{PREFIX}", bound.port())
            }
            _ => format!("{scheme}://{host}{PREFIX}"),
        }
    }
}

/// A plain-text error response: the status and a reason a person can act on.
pub fn problem(status: StatusCode, reason: impl Into<String>) -> Response {
    let reason = reason.into();
    tracing::debug!(%status, %reason, "request refused");
    let mut response = (status, format!("{reason}\n")).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A refused request on its way to becoming a [`problem`] response.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

impl Refusal {
    /// 401 with a `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized(reason: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::UNAUTHORIZED, reason)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = problem(self.status, self.reason);
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kuvasto\""),
            );
        }
        response
    }
}

/// `/health`: the process serves HTTP (liveness).
async fn health() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// `/ready`: 200 while the server takes requests (both listeners up, the store writable),
/// 503 with the reason otherwise (starting, shutting down, store read-only after a failed
/// write or fsync).
async fn ready(axum::extract::State(state): axum::extract::State<State>) -> Response {
    use std::sync::atomic::Ordering;
    if state.stopping.load(Ordering::Relaxed) {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if state.bound.get().is_none() {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "starting");
    }
    if let Some(cause) = state.archive.store().poisoned() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store is read-only after a failed write: {cause}"),
        );
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// `/metrics`: Prometheus text format.
async fn metrics(axum::extract::State(state): axum::extract::State<State>) -> Response {
    let archive = state.archive.clone();
    match tokio::task::spawn_blocking(move || archive.metrics().render(archive.store())).await {
        Ok(text) => {
            let mut response = (StatusCode::OK, text).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Path segments after which the next segment is a parameter (a UID, an id, a patient).
const PARAMETER_AFTER: &[&str] = &[
    "studies",
    "series",
    "instances",
    "frames",
    "bulkdata",
    "documents",
    "authorizations",
    "patients",
    "quarantine",
    "rejections",
];

/// A request path with its parameters replaced by `{}`: the route label of its metrics
/// (`/dicom-web/studies/{}/series/{}/metadata`).
pub fn route_template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut parameter_next = false;
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        if parameter_next {
            out.push_str("{}");
            parameter_next = false;
        } else {
            out.push_str(segment);
            parameter_next = PARAMETER_AFTER.contains(&segment);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Counts and times every request (to its response head), by route and method.
async fn timed(
    axum::extract::State(state): axum::extract::State<State>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = route_template(request.uri().path());
    let method = request.method().as_str().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let metrics = state.archive.metrics();
    let status = format!("{}xx", response.status().as_u16() / 100);
    metrics.observe_seconds(
        "kuvasto_http_request_duration_seconds",
        &[("route", &route), ("method", &method)],
        started.elapsed().as_secs_f64(),
    );
    metrics.count(
        "kuvasto_http_requests_total",
        &[("route", &route), ("method", &method), ("status", &status)],
        1,
    );
    response
}

/// The DICOMweb routes.
pub fn router(state: State) -> Router {
    let routes = Router::new()
        .route("/studies", post(stow::store).get(qido::studies))
        .route(
            "/studies/{study}",
            post(stow::store_in_study)
                .get(wado::study)
                .delete(wado::delete_study),
        )
        .route("/studies/{study}/metadata", get(wado::study_metadata))
        .route("/studies/{study}/series", get(qido::series_of_study))
        .route("/studies/{study}/instances", get(qido::instances_of_study))
        .route(
            "/studies/{study}/series/{series}",
            get(wado::series).delete(wado::delete_series),
        )
        .route(
            "/studies/{study}/series/{series}/metadata",
            get(wado::series_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances",
            get(qido::instances_of_series),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}",
            get(wado::instance).delete(wado::delete_instance),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/metadata",
            get(wado::instance_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            get(wado::frames),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}",
            get(wado::bulkdata),
        )
        .route("/series", get(qido::all_series))
        .route("/instances", get(qido::all_instances))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such DICOMweb resource") });
    Router::new()
        .nest(PREFIX, routes)
        .nest(crate::api::PREFIX, crate::api::routes())
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                format!("no such resource; DICOMweb is served under {PREFIX}"),
            )
        })
        // Bodies are streamed into the engine, which bounds each instance; no whole-body limit.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.clone(), timed))
        .with_state(state)
}
