//! Access control at the HTTP boundary: the one middleware that authenticates
//! every request and attaches its [`Principal`], the table mapping each route
//! to what it needs ([`Need`]), and the responses of a refusal (401 with a
//! `WWW-Authenticate: Bearer` challenge, 403 `DENIED`, 429 with `Retry-After`).
//!
//! `/v2` requests are authorised by `dispatch`, which parses the route anyway
//! ([`v2_needs`]); every other path is authorised here ([`path_needs`]), and a
//! path the table does not know needs an admin of `**`, so a new route is
//! closed until it is listed.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::routes::Route;
use super::{AppState, Query};
use crate::auth::{AuthError, Principal, Verdict};
use crate::config::MetricsAccess;
use crate::error::{ApiError, Code};
use crate::policy::access::{Action, Target};
use crate::service;

/// Longest `Authorization` header read; longer ones are refused unread.
pub const MAX_AUTHORIZATION: usize = 8 * 1024;

/// What a request needs to be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing: probes, the OpenAPI document, the token endpoint.
    Public,
    /// Any credentials (or an anonymous token): the `/v2/` version check.
    Authenticated,
    Repository(Action, String),
    Global(Action),
}

/// The web console's paths (`/` redirects there).
fn is_console(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// A refusal of a console page asks the browser for a user name and password
/// (Basic), which it then sends with every page.
fn for_console(path: &str, mut resp: Response) -> Response {
    if is_console(path) && resp.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static(
                "Basic realm=\"Cairn console\", charset=\"UTF-8\"",
            ),
        );
    }
    resp
}

/// The paths anyone may reach.
fn is_public(path: &str, state: &AppState) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/api/v1/openapi.json" | "/auth/token"
    ) || (path == "/metrics" && state.auth.config.metrics == MetricsAccess::Open)
}

/// The client's address, for throttling and the audit trail.
pub(crate) fn client(parts_ext: &axum::http::Extensions) -> Option<String> {
    parts_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// Authenticates every request (except public paths) and attaches the
/// [`Principal`]; authorises every path but `/v2`, which `dispatch` does.
pub(super) async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    if is_public(&path, &state) {
        return next.run(req).await;
    }
    let principal = if state.auth.is_open().await {
        Principal::Open
    } else {
        let client = client(req.extensions());
        match credentials(&state, req.headers(), client.as_deref()).await {
            Ok(p) => p,
            Err(e) => {
                return for_console(
                    &path,
                    refusal(&state, req.headers(), e, None).into_response(),
                )
            }
        }
    };
    if !(path == "/v2" || path.starts_with("/v2/")) {
        let q = Query::parse(req.uri().query());
        for need in path_needs(req.method(), &path, &q) {
            if let Err(e) = require(&state, &principal, &need, req.headers()) {
                return for_console(&path, e.into_response());
            }
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Reads the `Authorization` header: none (anonymous), `Basic` or `Bearer`.
pub(crate) async fn credentials(
    state: &AppState,
    headers: &HeaderMap,
    client: Option<&str>,
) -> Result<Principal, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Principal::Anonymous(false));
    };
    if value.len() > MAX_AUTHORIZATION {
        return Err(AuthError::Unauthorized(format!(
            "the Authorization header is longer than {MAX_AUTHORIZATION} bytes"
        )));
    }
    match parse_authorization(value.as_bytes())? {
        Authorization::Basic(name, secret) => state
            .auth
            .basic(&name, &secret, client)
            .await
            .map(Principal::Account),
        Authorization::Bearer(token) => state.auth.bearer(token).await,
    }
}

/// Credentials as an `Authorization` header carries them, not yet checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// `Basic <base64 name:secret>`, decoded.
    Basic(String, String),
    /// `Bearer <token>`.
    Bearer(&'a str),
}

/// Parses an untrusted `Authorization` header value (the scheme is
/// case-insensitive). Pure; the fuzz target `token` calls it.
pub fn parse_authorization(value: &[u8]) -> Result<Authorization<'_>, AuthError> {
    let text = std::str::from_utf8(value)
        .ok()
        .filter(|t| t.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .ok_or_else(|| AuthError::Unauthorized("the Authorization header is not text".into()))?;
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let (name, secret) = basic_pair(rest)?;
        return Ok(Authorization::Basic(name, secret));
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Authorization::Bearer(rest));
    }
    Err(AuthError::Unauthorized(
        "unsupported authorization scheme: use Basic or Bearer".into(),
    ))
}

/// Decodes basic credentials into `(name, secret)`.
pub fn basic_pair(b64: &str) -> Result<(String, String), AuthError> {
    let malformed = || AuthError::Unauthorized("malformed basic credentials".into());
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| malformed())?;
    let text = String::from_utf8(raw).map_err(|_| malformed())?;
    let (name, secret) = text.split_once(':').ok_or_else(malformed)?;
    Ok((name.to_string(), secret.to_string()))
}

/// The token endpoint clients are sent to.
fn realm(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(r) = &state.auth.config.realm {
        return r.clone();
    }
    let host = super::header_str(headers, &header::HOST)
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    let proto = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{proto}://{host}/auth/token")
}

/// The scope a client should ask a token for, to satisfy `need`.
fn scope_of(need: &Need) -> Option<String> {
    match need {
        Need::Repository(Action::Pull, r) => Some(format!("repository:{r}:pull")),
        Need::Repository(Action::Push, r) => Some(format!("repository:{r}:pull,push")),
        Need::Repository(Action::Delete, r) => Some(format!("repository:{r}:delete")),
        Need::Global(Action::Catalog) => Some("registry:catalog:*".into()),
        _ => None,
    }
}

/// The `WWW-Authenticate` value of a 401.
fn challenge(
    state: &AppState,
    headers: &HeaderMap,
    scope: Option<String>,
    error: Option<&str>,
) -> String {
    let mut c = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        realm(state, headers),
        state.auth.config.service
    );
    if let Some(s) = scope {
        c.push_str(&format!(",scope=\"{s}\""));
    }
    if let Some(e) = error {
        c.push_str(&format!(",error=\"{e}\""));
    }
    c
}

/// The response to a failed authentication.
pub(crate) fn refusal(
    state: &AppState,
    headers: &HeaderMap,
    e: AuthError,
    scope: Option<String>,
) -> ApiError {
    match e {
        AuthError::TooManyAttempts(wait) => ApiError::new(
            Code::TooManyRequests,
            "too many failed logins for this account or address; retry later",
        )
        .with_header(
            header::RETRY_AFTER,
            crate::auth::limit::retry_after_secs(wait),
        ),
        AuthError::Unauthorized(msg) => ApiError::new(Code::Unauthorized, msg).with_header(
            header::WWW_AUTHENTICATE,
            challenge(state, headers, scope, None),
        ),
        AuthError::Token(t) => ApiError::new(Code::Unauthorized, t.to_string()).with_header(
            header::WWW_AUTHENTICATE,
            challenge(state, headers, scope, Some("invalid_token")),
        ),
        AuthError::Invalid(msg) => {
            ApiError::new(Code::Unsupported, msg).with_status(StatusCode::BAD_REQUEST)
        }
        AuthError::Metadata(m) => service::Error::from(m).into(),
        AuthError::Key(k) => {
            tracing::error!(error = %k, "token signing failed");
            ApiError::new(
                Code::Internal,
                "internal server error; the registry log has the details",
            )
        }
    }
}

/// Checks one need; the error is the response.
pub(crate) fn require(
    state: &AppState,
    principal: &Principal,
    need: &Need,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let verdict = match need {
        Need::Public => Verdict::Allow,
        Need::Authenticated => match principal {
            Principal::Anonymous(false) => Verdict::Challenge("authentication required".into()),
            _ => Verdict::Allow,
        },
        Need::Repository(a, r) => state.auth.authorize(principal, *a, Target::Repository(r)),
        Need::Global(a) => state.auth.authorize(principal, *a, Target::Global),
    };
    match verdict {
        Verdict::Allow => Ok(()),
        Verdict::Challenge(reason) => Err(ApiError::new(Code::Unauthorized, reason).with_header(
            header::WWW_AUTHENTICATE,
            challenge(state, headers, scope_of(need), None),
        )),
        Verdict::InsufficientScope(reason) => Err(ApiError::new(Code::Denied, reason).with_header(
            header::WWW_AUTHENTICATE,
            challenge(state, headers, scope_of(need), Some("insufficient_scope")),
        )),
        Verdict::Deny(reason) => Err(ApiError::new(Code::Denied, reason)),
    }
}

/// What a `/v2` route needs, by method. A cross-repository mount also needs
/// pull on the source repository.
pub(crate) fn v2_needs(route: &Route, m: &Method, q: &Query) -> Vec<Need> {
    let read = m == Method::GET || m == Method::HEAD;
    let repo = |a: Action, r: &crate::domain::RepoName| Need::Repository(a, r.as_str().to_string());
    match route {
        Route::Base => vec![Need::Authenticated],
        Route::Catalog => vec![Need::Global(Action::Catalog)],
        Route::Blob(r, _) | Route::Manifest(r, _) | Route::BadReference(r, _, _) => {
            if read {
                vec![repo(Action::Pull, r)]
            } else if m == Method::DELETE {
                vec![repo(Action::Delete, r)]
            } else {
                vec![repo(Action::Push, r)]
            }
        }
        Route::Uploads(r) => {
            let mut needs = vec![repo(Action::Push, r)];
            if let Some(from) = q.get("from").filter(|_| q.get("mount").is_some()) {
                needs.push(Need::Repository(Action::Pull, from.to_string()));
            }
            needs
        }
        Route::Upload(r, _) => vec![repo(Action::Push, r)],
        Route::Tags(r) | Route::Referrers(r, _) => {
            if read {
                vec![repo(Action::Pull, r)]
            } else {
                vec![repo(Action::Push, r)]
            }
        }
    }
}

/// What every path outside `/v2` needs. Unknown paths need an admin of `**`.
pub(crate) fn path_needs(m: &Method, path: &str, q: &Query) -> Vec<Need> {
    let repo_or_all = |a: Action, key: &str| match q.get(key) {
        Some(r) if r.parse::<crate::domain::RepoName>().is_ok() => {
            Need::Repository(a, r.to_string())
        }
        _ => Need::Global(a),
    };
    let need = if path == "/metrics" {
        Need::Global(Action::Metrics)
    } else if is_console(path) {
        // Any account; each page shows what its roles let it read.
        Need::Authenticated
    } else if let Some(rest) = path.strip_prefix("/api/v1/") {
        match rest {
            "openapi.json" => Need::Public,
            "policy/explain" => repo_or_all(Action::Read, "repository"),
            "audit" | "audit/export" | "audit/verify" => Need::Global(Action::Audit),
            "holds" => repo_or_all(Action::Read, "repository"),
            "retention/plan" | "retention/apply" | "gc" => Need::Global(Action::Manage),
            "provenance" => repo_or_all(Action::ReadProvenance, "repository"),
            r if r.starts_with("holds/") => Need::Global(Action::Manage),
            r if r == "admin" || r.starts_with("admin/") => Need::Global(Action::Accounts),
            r if r.starts_with("provenance/") => provenance_need(m, &r["provenance/".len()..]),
            r if r.starts_with("repositories/") => repository_need(m, &r["repositories/".len()..]),
            _ => Need::Global(Action::Accounts),
        }
    } else {
        Need::Global(Action::Accounts)
    };
    vec![need]
}

/// `/api/v1/provenance/<repository>@<digest>|:<tag>[/materials]`.
fn provenance_need(m: &Method, rest: &str) -> Need {
    let action = if m == Method::GET || m == Method::HEAD {
        Action::ReadProvenance
    } else {
        Action::WriteProvenance
    };
    let reference = rest.strip_suffix("/materials").unwrap_or(rest);
    let repo = match reference.split_once('@') {
        Some((r, _)) => Some(r),
        None => reference
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map(|(r, _)| r),
    };
    match repo {
        Some(r) => Need::Repository(action, r.to_string()),
        None => Need::Global(action),
    }
}

/// `/api/v1/repositories/<name>/…`: the repository is found exactly as the
/// handlers (`retention_api::repository`, then `tags_api::route`) find it, so
/// the name authorised is the name served.
fn repository_need(m: &Method, rest: &str) -> Need {
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let last = segs[n - 1];
    let name = |k: usize| segs[..k].join("/");
    if m == Method::POST && n >= 2 && (last == "promotions" || last == "holds") {
        return Need::Repository(Action::Manage, name(n - 1));
    }
    if m != Method::GET && m != Method::HEAD {
        return Need::Global(Action::Manage);
    }
    let k = if n >= 2 && matches!(last, "promotions" | "environments") {
        n - 1
    } else if n >= 4 && last == "rollback" && segs[n - 3] == "environments" {
        n - 3
    } else if n >= 2 && matches!(last, "retention" | "policy") {
        n - 1
    } else if n >= 4 && segs[n - 3] == "tags" && last == "history" {
        n - 3
    } else if n >= 3 && segs[n - 2] == "tags" {
        n - 2
    } else if n >= 2 && last == "artifacts" {
        n - 1
    } else {
        n
    };
    Need::Repository(Action::Read, name(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(m: Method, path: &str) -> Need {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        path_needs(&m, p, &Query::parse(Some(q))).remove(0)
    }

    fn repo(a: Action, r: &str) -> Need {
        Need::Repository(a, r.into())
    }

    #[test]
    fn json_api_routes_map_to_actions() {
        use Action::*;
        let cases = [
            (Method::GET, "/api/v1/audit", Need::Global(Audit)),
            (Method::GET, "/api/v1/audit/export", Need::Global(Audit)),
            (Method::GET, "/api/v1/audit/verify", Need::Global(Audit)),
            (Method::GET, "/api/v1/openapi.json", Need::Public),
            (
                Method::GET,
                "/api/v1/policy/explain?repository=a/b&tag=v1",
                repo(Read, "a/b"),
            ),
            (Method::POST, "/api/v1/gc", Need::Global(Manage)),
            (Method::POST, "/api/v1/retention/plan", Need::Global(Manage)),
            (
                Method::POST,
                "/api/v1/retention/apply",
                Need::Global(Manage),
            ),
            (Method::DELETE, "/api/v1/holds/3", Need::Global(Manage)),
            (
                Method::GET,
                "/api/v1/holds?repository=a/b",
                repo(Read, "a/b"),
            ),
            (Method::GET, "/api/v1/holds", Need::Global(Read)),
            (
                Method::GET,
                "/api/v1/provenance",
                Need::Global(ReadProvenance),
            ),
            (
                Method::GET,
                "/api/v1/provenance/a/b@sha256:00",
                repo(ReadProvenance, "a/b"),
            ),
            (
                Method::PUT,
                "/api/v1/provenance/a/b@sha256:00",
                repo(WriteProvenance, "a/b"),
            ),
            (
                Method::GET,
                "/api/v1/provenance/a/b:v1/materials",
                repo(ReadProvenance, "a/b"),
            ),
            (
                Method::POST,
                "/api/v1/repositories/a/b/promotions",
                repo(Manage, "a/b"),
            ),
            (
                Method::POST,
                "/api/v1/repositories/a/b/holds",
                repo(Manage, "a/b"),
            ),
            (
                Method::GET,
                "/api/v1/repositories/a/b/promotions",
                repo(Read, "a/b"),
            ),
            (
                Method::GET,
                "/api/v1/repositories/a/b/environments/prod/rollback",
                repo(Read, "a/b"),
            ),
            (
                Method::GET,
                "/api/v1/repositories/a/b/tags/v1/history",
                repo(Read, "a/b"),
            ),
            (
                Method::GET,
                "/api/v1/repositories/a/b/tags/v1",
                repo(Read, "a/b"),
            ),
            (
                Method::GET,
                "/api/v1/repositories/a/b/artifacts",
                repo(Read, "a/b"),
            ),
            (Method::GET, "/api/v1/repositories/a/b", repo(Read, "a/b")),
            (
                Method::GET,
                "/api/v1/admin/accounts",
                Need::Global(Accounts),
            ),
            (Method::GET, "/api/v1/unknown", Need::Global(Accounts)),
            (Method::GET, "/elsewhere", Need::Global(Accounts)),
            (Method::GET, "/metrics", Need::Global(Metrics)),
        ];
        for (m, path, want) in cases {
            assert_eq!(need(m.clone(), path), want, "{m} {path}");
        }
    }

    #[test]
    fn v2_routes_map_to_actions() {
        let q = Query::parse(Some("mount=sha256:00&from=other/x"));
        let r = Route::parse("/v2/a/b/blobs/uploads/").unwrap().unwrap();
        assert_eq!(
            v2_needs(&r, &Method::POST, &q),
            vec![repo(Action::Push, "a/b"), repo(Action::Pull, "other/x")]
        );
        let r = Route::parse("/v2/a/b/manifests/v1").unwrap().unwrap();
        let none = Query::parse(None);
        assert_eq!(
            v2_needs(&r, &Method::GET, &none),
            vec![repo(Action::Pull, "a/b")]
        );
        assert_eq!(
            v2_needs(&r, &Method::PUT, &none),
            vec![repo(Action::Push, "a/b")]
        );
        assert_eq!(
            v2_needs(&r, &Method::DELETE, &none),
            vec![repo(Action::Delete, "a/b")]
        );
        let r = Route::parse("/v2/_catalog").unwrap().unwrap();
        assert_eq!(
            v2_needs(&r, &Method::GET, &none),
            vec![Need::Global(Action::Catalog)]
        );
        let r = Route::parse("/v2/").unwrap().unwrap();
        assert_eq!(v2_needs(&r, &Method::GET, &none), vec![Need::Authenticated]);
    }
}
