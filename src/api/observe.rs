//! Observation of every request: one structured log line, the HTTP metrics, and
//! what the distribution API's outcomes count (pulls, pushes, refusals, bytes
//! served, pull statistics). Also `GET /metrics` and `GET /readyz`.
//!
//! Metric labels are route *templates* (from [`Route::template`] or the fixed
//! paths of the router), never raw paths; repositories go through the bounded
//! repository label. Pull statistics are only counted in memory here
//! ([`crate::service::PullStats`]); nothing on this path writes to the database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use tracing::Instrument;

use super::routes::Route;
use super::AppState;
use crate::domain::Reference;
use crate::error::{ApiError, Code};
use crate::service::PullStats;

const DIGEST_HEADER: &str = "docker-content-digest";

/// What dispatch learned about a `/v2` request, left in the response's
/// extensions for the log line and the metrics.
#[derive(Debug, Clone)]
pub(crate) struct RouteInfo {
    pub template: &'static str,
    pub repository: Option<String>,
    pub digest: Option<String>,
}

/// Which outcome of a `/v2` request is worth counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ManifestGet,
    BlobGet,
    ManifestPut,
    BlobAdded,
    Other,
}

/// A parsed route's facts, taken before the handler consumes the route.
pub(crate) struct Facts {
    template: &'static str,
    repository: Option<String>,
    digest: Option<String>,
    tag: Option<String>,
    kind: Kind,
    method: Method,
}

impl Facts {
    pub(crate) fn of(route: &Route, method: &Method) -> Facts {
        let (digest, tag) = match route {
            Route::Blob(_, d) | Route::Referrers(_, d) => (Some(d.to_string()), None),
            Route::Manifest(_, Reference::Digest(d)) => (Some(d.to_string()), None),
            Route::Manifest(_, Reference::Tag(t)) => (None, Some(t.to_string())),
            _ => (None, None),
        };
        let kind = match route {
            Route::Manifest(..) if method == Method::GET => Kind::ManifestGet,
            Route::Manifest(..) if method == Method::PUT => Kind::ManifestPut,
            Route::Blob(..) if method == Method::GET => Kind::BlobGet,
            Route::Uploads(_) if method == Method::POST => Kind::BlobAdded,
            Route::Upload(..) if method == Method::PUT => Kind::BlobAdded,
            _ => Kind::Other,
        };
        Facts {
            template: route.template(),
            repository: route.repository().map(|r| r.to_string()),
            digest,
            tag,
            kind,
            method: method.clone(),
        }
    }
}

fn header_u64(resp: &Response, name: header::HeaderName) -> Option<u64> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Counts what a `/v2` request's outcome means (a pull, a push, a refusal),
/// meters a blob body as it is sent, and leaves a [`RouteInfo`] for [`observe`].
pub(crate) fn outcome(
    state: &AppState,
    facts: Facts,
    result: Result<Response, ApiError>,
) -> Response {
    let metrics = state.metrics.as_deref();
    let repo = facts.repository.as_deref();
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if let (Some(m), Some(repo), Code::Denied) = (metrics, repo, e.code) {
                let op = if facts.method == Method::DELETE {
                    "delete"
                } else {
                    "push"
                };
                m.denied(repo, op);
            }
            e.into_response()
        }
    };
    let status = resp.status();
    if let Some(repo) = repo {
        match facts.kind {
            Kind::ManifestGet if status == StatusCode::OK => {
                let len = header_u64(&resp, header::CONTENT_LENGTH).unwrap_or(0);
                if let Some(m) = metrics {
                    m.manifest_pulled(repo, len);
                }
                if let Some(p) = &state.pulls {
                    if let Some(d) = resp
                        .headers()
                        .get(DIGEST_HEADER)
                        .and_then(|v| v.to_str().ok())
                    {
                        p.manifest_pulled(repo, d, facts.tag.as_deref());
                    }
                }
            }
            Kind::BlobGet
                if (status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT)
                    && (metrics.is_some() || state.pulls.is_some()) =>
            {
                resp = meter_body(resp, state, repo);
            }
            Kind::BlobGet if status == StatusCode::TEMPORARY_REDIRECT => {
                if let Some(r) = resp.extensions().get::<RedirectedPull>().copied() {
                    if let Some(m) = metrics {
                        m.blob_pulled(repo).inc_by(r.bytes);
                    }
                    if let Some(p) = &state.pulls {
                        p.blob_pulled(repo, r.bytes);
                    }
                }
            }
            Kind::ManifestPut if status == StatusCode::CREATED => {
                if let Some(m) = metrics {
                    m.manifest_pushed(repo);
                }
            }
            Kind::BlobAdded if status == StatusCode::CREATED => {
                if let Some(m) = metrics {
                    m.blob_uploaded(repo);
                }
            }
            _ => {}
        }
    }
    let digest = facts.digest.or_else(|| {
        resp.headers()
            .get(DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    resp.extensions_mut().insert(RouteInfo {
        template: facts.template,
        repository: facts.repository,
        digest,
    });
    resp
}

/// A blob GET answered with a redirect to the object store: the pull counts,
/// with the blob's size as the bytes served (the store sends them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RedirectedPull {
    pub bytes: u64,
}

/// Records a blob pull in the pull statistics when the body is finished with
/// (sent, or dropped by a client that went away), with the bytes really sent.
struct SentBytes {
    pulls: Option<Arc<PullStats>>,
    repo: String,
    bytes: u64,
}

impl Drop for SentBytes {
    fn drop(&mut self) {
        if let Some(p) = &self.pulls {
            p.blob_pulled(&self.repo, self.bytes);
        }
    }
}

/// Counts a blob pull and wraps its body so every chunk sent adds to the
/// repository's bytes counter (an atomic add; the counter is looked up once).
fn meter_body(resp: Response, state: &AppState, repo: &str) -> Response {
    let counter = state.metrics.as_ref().map(|m| m.blob_pulled(repo));
    let mut sent = SentBytes {
        pulls: state.pulls.clone(),
        repo: repo.to_string(),
        bytes: 0,
    };
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().inspect_ok(move |chunk| {
        let n = chunk.len() as u64;
        if let Some(c) = &counter {
            c.inc_by(n);
        }
        // Through a reference: the closure owns the whole guard (whose drop
        // records the pull), not a copy of its counter.
        let sent = &mut sent;
        sent.bytes += n;
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// The metric label of a router path that is not a `/v2` route (those carry
/// their [`RouteInfo`]): the router's fixed paths, anything else `unmatched`.
fn fixed_template(matched: Option<&MatchedPath>) -> &'static str {
    match matched.map(MatchedPath::as_str) {
        Some("/api/v1/policy/explain") => "/api/v1/policy/explain",
        Some("/api/v1/repositories/{*rest}") => "/api/v1/repositories/{*rest}",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/metrics") => "/metrics",
        Some("/v2") | Some("/v2/") | Some("/v2/{*rest}") => "/v2/{*rest}",
        // The web console's pages, one label for all of them.
        Some(p) if p == "/" || p == "/ui" || p.starts_with("/ui/") => "/ui",
        _ => "unmatched",
    }
}

/// Middleware around every route: a span carrying the request id (so every
/// log line of the request has it), then one INFO line per request with
/// method, route template, status, duration, bytes, repository, digest,
/// request id and client address, and the HTTP metrics.
pub(crate) async fn observe(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let fixed = fixed_template(req.extensions().get::<MatchedPath>());
    // The log fields are copied only when the line will be written.
    let log = tracing::enabled!(tracing::Level::INFO);
    let (path, request_id, client) = if log {
        (
            req.uri().path().to_string(),
            req.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.to_string())
                .unwrap_or_default(),
        )
    } else {
        Default::default()
    };
    let span = tracing::info_span!(
        "request",
        method = %method,
        path = %path,
        request_id = %request_id,
        route = tracing::field::Empty,
        repository = tracing::field::Empty,
    );
    let resp = next.run(req).instrument(span).await;
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    let info = resp.extensions().get::<RouteInfo>();
    let route = info.map_or(fixed, |i| i.template);
    if let Some(m) = &state.metrics {
        m.http_request(&method, route, status, elapsed);
    }
    if !log {
        return resp;
    }
    // The header when a handler set it, else the body's exact size (as hyper
    // will send it); unknown for streams without a length.
    let bytes = header_u64(&resp, header::CONTENT_LENGTH)
        .or_else(|| axum::body::HttpBody::size_hint(resp.body()).exact());
    tracing::info!(
        method = %method,
        route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        bytes,
        repository = info.and_then(|i| i.repository.as_deref()),
        digest = info.and_then(|i| i.digest.as_deref()),
        request_id = %request_id,
        client = %client,
        path = %path,
        "request"
    );
    resp
}

/// `GET /metrics`: the metrics in the OpenMetrics text format.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let Some(m) = &state.metrics else {
        return ApiError::new(Code::Unsupported, "metrics are disabled")
            .with_status(StatusCode::NOT_FOUND)
            .into_response();
    };
    let uploads = match state.registry.uploads_in_progress().await {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "could not count uploads for the metrics scrape");
            None
        }
    };
    let body = m.encode(uploads, &state.registry.pool_stats());
    (
        // The OpenMetrics text format (Prometheus's text format with `# EOF`,
        // units and info metrics), which Prometheus asks for by default.
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /readyz`: the database and the object store both answer.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.registry.ready().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: database or object store unavailable",
            )
                .into_response()
        }
    }
}
