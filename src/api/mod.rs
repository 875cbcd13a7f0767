//! HTTP handlers of the distribution API. They parse requests into domain values,
//! call the service layer and write responses. No SQL and no object keys here.

pub mod access;
mod audit_api;
mod auth_api;
mod blobs;
mod limits;
mod listing;
mod manifests;
mod observe;
mod provenance_api;
mod retention_api;
pub mod routes;
mod tags_api;
mod uploads;

pub(crate) use tags_api::parse_time;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::Router;

use crate::auth::{Auth, Principal};
use crate::error::{ApiError, Code};
use crate::metadata::Origin;
use crate::metrics::Metrics;
use crate::service::{PullStats, Registry};
use routes::Route;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    /// Prometheus metrics (`None`: `metrics.enabled = false`).
    pub metrics: Option<Arc<Metrics>>,
    /// The in-memory pull statistics (`None`: `metrics.pull_stats = false`).
    pub pulls: Option<Arc<PullStats>>,
    /// `gc.grace_secs`, for collections asked for through the API.
    pub gc_grace: std::time::Duration,
    /// `limits.max_requests_per_client` (0: none).
    pub max_requests_per_client: usize,
    /// Authentication and authorization (see `access`).
    pub auth: Arc<Auth>,
}

/// The registry's router: the distribution API under `/v2`, the JSON API under
/// `/api/v1`, the token endpoint, health probes, and `/metrics` when
/// `serve_metrics` (metrics on the main listener). Every route is
/// authenticated (`access::authenticate`) and observed (log line, HTTP metrics).
pub fn router(state: AppState, serve_metrics: bool) -> Router {
    let state = Arc::new(state);
    let mut r = Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .route("/api/v1/policy/explain", get(tags_api::explain))
        .route("/api/v1/audit", get(audit_api::query))
        .route("/api/v1/audit/export", get(audit_api::export))
        .route("/api/v1/audit/verify", get(audit_api::verify))
        .route(
            "/api/v1/repositories/{*rest}",
            any(retention_api::repository),
        )
        .route("/api/v1/holds", get(retention_api::holds))
        .route("/api/v1/holds/{id}", delete(retention_api::release_hold))
        .route("/api/v1/retention/plan", post(retention_api::plan))
        .route("/api/v1/retention/apply", post(retention_api::apply))
        .route("/api/v1/gc", post(retention_api::gc))
        .route("/api/v1/provenance", get(provenance_api::search))
        .route(
            "/api/v1/provenance/{*rest}",
            get(provenance_api::artifact).put(provenance_api::artifact),
        )
        .route("/api/v1/openapi.json", get(provenance_api::openapi))
        .route("/api/v1/admin/{*rest}", any(auth_api::admin))
        .route("/auth/token", get(auth_api::token).post(auth_api::token))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(observe::readyz))
        .merge(crate::ui::router());
    if serve_metrics {
        r = r.route("/metrics", get(observe::metrics));
    }
    r.fallback(|| async {
        ApiError::new(Code::Unsupported, "no such endpoint").with_status(StatusCode::NOT_FOUND)
    })
    .layer(middleware::from_fn_with_state(
        Arc::new(limits::ClientLimiter::new(state.max_requests_per_client)),
        limits::per_client,
    ))
    .layer(middleware::from_fn_with_state(
        state.clone(),
        access::authenticate,
    ))
    .layer(middleware::from_fn_with_state(
        state.clone(),
        observe::observe,
    ))
    .with_state(state)
}

/// The router of a separate metrics listener (`metrics.listen`): `/metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route("/metrics", get(observe::metrics))
        .with_state(state)
}

/// Query parameters in order, repeated keys kept (`?tag=a&tag=b`).
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(q: Option<&str>) -> Query {
        Query(
            url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A header's value if present and valid text.
pub(crate) fn header_str<'a>(h: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Routes one `/v2` request by its parsed [`Route`] and method.
async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let route = match Route::parse(req.uri().path()) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return ApiError::new(
                Code::Unsupported,
                format!("no endpoint at {}", req.uri().path()),
            )
            .with_status(StatusCode::NOT_FOUND)
            .into_response()
        }
        Err(e) => return e.into_response(),
    };
    tracing::Span::current().record("route", route.template());
    if let Some(repo) = route.repository() {
        tracing::Span::current().record("repository", repo.as_str());
    }
    let (parts, body) = req.into_parts();
    let facts = observe::Facts::of(&route, &parts.method);
    let query = Query::parse(parts.uri.query());
    // Authorization: the route and method say what the request needs.
    let anonymous = Principal::Anonymous(false);
    let principal = parts.extensions.get::<Principal>().unwrap_or(&anonymous);
    for need in access::v2_needs(&route, &parts.method, &query) {
        if let Err(e) = access::require(&state, principal, &need, &parts.headers) {
            return observe::outcome(&state, facts, Err(e));
        }
    }
    let origin = origin(&parts.headers, &parts.extensions);
    let ctx = Ctx {
        registry: &state.registry,
        headers: &parts.headers,
        query: &query,
        origin: &origin,
    };
    let m = &parts.method;
    let result = match route {
        Route::Base if m == Method::GET || m == Method::HEAD => Ok(base()),
        Route::Catalog if m == Method::GET => listing::catalog(&ctx).await,
        Route::Blob(repo, d) if m == Method::GET => blobs::get(&ctx, &repo, &d, false).await,
        Route::Blob(repo, d) if m == Method::HEAD => blobs::get(&ctx, &repo, &d, true).await,
        Route::Blob(repo, d) if m == Method::DELETE => blobs::delete(&ctx, &repo, &d).await,
        Route::Uploads(repo) if m == Method::POST => uploads::start(&ctx, &repo, body).await,
        Route::Upload(repo, id) if m == Method::PATCH => {
            uploads::patch(&ctx, &repo, &id, body).await
        }
        Route::Upload(repo, id) if m == Method::PUT => uploads::put(&ctx, &repo, &id, body).await,
        Route::Upload(repo, id) if m == Method::GET => uploads::status(&ctx, &repo, &id).await,
        Route::Upload(repo, id) if m == Method::DELETE => uploads::cancel(&ctx, &repo, &id).await,
        Route::Manifest(repo, r) if m == Method::GET => {
            manifests::get(&ctx, &repo, &r, false).await
        }
        Route::Manifest(repo, r) if m == Method::HEAD => {
            manifests::get(&ctx, &repo, &r, true).await
        }
        Route::Manifest(repo, r) if m == Method::PUT => manifests::put(&ctx, &repo, &r, body).await,
        Route::Manifest(repo, r) if m == Method::DELETE => manifests::delete(&ctx, &repo, &r).await,
        Route::BadReference(_, reference, e)
            if m == Method::GET || m == Method::HEAD || m == Method::DELETE =>
        {
            Err(ApiError::new(
                Code::ManifestUnknown,
                format!("manifest {reference:?} is not known to this repository: {e}"),
            ))
        }
        Route::BadReference(_, _, e) if m == Method::PUT => Err(e.into()),
        Route::Tags(repo) if m == Method::GET => listing::tags(&ctx, &repo).await,
        Route::Referrers(repo, d) if m == Method::GET => listing::referrers(&ctx, &repo, &d).await,
        _ => Err(ApiError::new(
            Code::Unsupported,
            format!("{} is not supported on {}", m, route.template()),
        )),
    };
    observe::outcome(&state, facts, result)
}

/// What a handler needs of the request besides its route and body.
pub(crate) struct Ctx<'a> {
    pub registry: &'a Registry,
    pub headers: &'a HeaderMap,
    pub query: &'a Query,
    /// Who is asking, as recorded in tag history and the audit trail.
    pub origin: &'a Origin,
}

/// Who sent a request, for the audit trail: the authenticated account, or
/// `anonymous`; while the registry is open (no accounts), the client's address.
pub(crate) fn origin(headers: &HeaderMap, extensions: &axum::http::Extensions) -> Origin {
    let client = access::client(extensions);
    let actor = match extensions.get::<Principal>() {
        Some(Principal::Account(a)) => Some(a.name.clone()),
        Some(Principal::Anonymous(_)) => Some("anonymous".to_string()),
        _ => None,
    };
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(512).collect::<String>())
    };
    Origin {
        actor: actor
            .or_else(|| client.clone())
            .unwrap_or_else(|| "unknown".to_string()),
        client,
        request_id: text("x-request-id"),
        user_agent: text("user-agent"),
    }
}

/// end-1: the API version check.
fn base() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

/// An empty-bodied response with the given status and headers.
pub(crate) fn empty(status: StatusCode, headers: &[(&str, String)]) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.header(header::CONTENT_LENGTH, "0")
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Parses an optional numeric query parameter, with a clear error.
pub(crate) fn number(q: &Query, key: &str) -> Result<Option<u32>, ApiError> {
    q.get(key)
        .map(|v| {
            v.parse::<u32>().map_err(|_| {
                ApiError::new(
                    Code::Unsupported,
                    format!("query parameter {key}={v:?} must be a non-negative integer"),
                )
                .with_status(StatusCode::BAD_REQUEST)
            })
        })
        .transpose()
}
