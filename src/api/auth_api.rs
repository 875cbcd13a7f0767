//! The token endpoint (`/auth/token`, the distribution token protocol) and
//! the admin API of accounts (`/api/v1/admin/…`).
//!
//! - `GET /auth/token?service=&scope=…[&offline_token=true]` with basic
//!   credentials, or none for an anonymous token (podman, skopeo, oras, and
//!   docker when it has no refresh token);
//! - `POST /auth/token` with a form: `grant_type=password` (`username`,
//!   `password`) or `grant_type=refresh_token` (`refresh_token`), `scope`
//!   space-separated (docker's OAuth2 flow; `docker login` keeps the
//!   refresh token it gets as its identity token).
//!
//! A token grants, of the scopes asked for, only the actions the account's
//! roles allow; a scope nothing allows is left out rather than refused, as the
//! protocol expects. Bad credentials are 401; too many are 429.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::access::{basic_pair, client, refusal};
use super::tags_api::{bad_request, rfc3339};
use super::{AppState, Query};
use crate::auth::{self, AccountPrincipal, AuthError};
use crate::error::{ApiError, Code};

const FORM_LIMIT: usize = 64 << 10;

/// `GET|POST /auth/token`.
pub(super) async fn token(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let result = issue(&state, req).await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn issue(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let client = client(&parts.extensions);
    let auth = &state.auth;
    let fail = |e: AuthError| refusal(state, &parts.headers, e, None);
    let (principal, scopes, service, refresh): (Option<AccountPrincipal>, Vec<String>, _, bool) =
        if parts.method == Method::POST {
            let bytes = axum::body::to_bytes(body, FORM_LIMIT)
                .await
                .map_err(|_| bad_request("the form could not be read".into()))?;
            let form = Query::parse(Some(&String::from_utf8_lossy(&bytes)));
            let scopes = form
                .all("scope")
                .flat_map(|s| s.split(' '))
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let service = form.get("service").map(String::from);
            let p = match form.get("grant_type") {
                Some("password") => {
                    let name = form.get("username").unwrap_or_default();
                    let secret = form.get("password").unwrap_or_default();
                    auth.basic(name, secret, client.as_deref())
                        .await
                        .map_err(fail)?
                }
                Some("refresh_token") => {
                    let t = form.get("refresh_token").unwrap_or_default();
                    auth.refresh(t).await.map_err(fail)?
                }
                other => {
                    return Err(bad_request(format!(
                        "grant_type {other:?} is not supported: use password or refresh_token"
                    )))
                }
            };
            (Some(p), scopes, service, true)
        } else if parts.method == Method::GET {
            let q = Query::parse(parts.uri.query());
            let scopes = q.all("scope").map(String::from).collect();
            let service = q.get("service").map(String::from);
            let p = match parts.headers.get(header::AUTHORIZATION) {
                None => None,
                Some(v) => {
                    if v.len() > super::access::MAX_AUTHORIZATION {
                        return Err(fail(AuthError::Unauthorized(
                            "the Authorization header is too long".into(),
                        )));
                    }
                    let text = v.to_str().unwrap_or_default();
                    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
                    if !scheme.eq_ignore_ascii_case("basic") {
                        return Err(fail(AuthError::Unauthorized(
                            "the token endpoint takes basic credentials".into(),
                        )));
                    }
                    let (name, secret) = basic_pair(rest.trim()).map_err(fail)?;
                    Some(
                        auth.basic(&name, &secret, client.as_deref())
                            .await
                            .map_err(fail)?,
                    )
                }
            };
            let offline = q.get("offline_token") == Some("true");
            (p, scopes, service, offline)
        } else {
            return Err(ApiError::new(
                Code::Unsupported,
                "the token endpoint takes GET or POST",
            ));
        };
    if let Some(s) = service.filter(|s| *s != auth.config.service) {
        return Err(bad_request(format!(
            "this registry issues tokens for service {:?}, not {s:?}",
            auth.config.service
        )));
    }
    let access = auth.grant(principal.as_ref(), &scopes);
    let sub = principal.as_ref().map(|p| p.name.as_str()).unwrap_or("");
    let (token, ttl) = auth
        .tokens
        .mint(sub, access, false)
        .await
        .map_err(|e| fail(e.into()))?;
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": ttl.as_secs(),
        "issued_at": rfc3339(crate::metadata::now_ms()),
    });
    if let (true, Some(p)) = (refresh, &principal) {
        let (r, _) = auth
            .tokens
            .mint(&p.name, Vec::new(), true)
            .await
            .map_err(|e| fail(e.into()))?;
        body["refresh_token"] = json!(r);
    }
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSpec {
    repositories: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    name: String,
    /// Users only.
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    roles: Vec<RoleSpec>,
    /// Robots only: days until the robot can no longer log in.
    #[serde(default)]
    expires_in_days: Option<u32>,
}

fn roles(specs: &[RoleSpec]) -> Result<Vec<(String, String)>, ApiError> {
    specs
        .iter()
        .map(|r| auth::check_role(&r.repositories, &r.role).map_err(invalid))
        .collect()
}

fn invalid(e: AuthError) -> ApiError {
    match e {
        AuthError::Invalid(m) => bad_request(m),
        AuthError::Metadata(m) => crate::service::Error::from(m).into(),
        other => ApiError::new(Code::Internal, other.to_string()),
    }
}

async fn json_body<T: serde::de::DeserializeOwned>(body: axum::body::Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, FORM_LIMIT)
        .await
        .map_err(|e| bad_request(format!("the request body could not be read: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(format!("the request body is not the expected JSON: {e}")))
}

fn not_found(what: String) -> ApiError {
    ApiError::new(Code::NameUnknown, what).with_status(StatusCode::NOT_FOUND)
}

/// `/api/v1/admin/…`: accounts, roles, key rotation (admin of `**` only; the
/// middleware checked).
pub(super) async fn admin(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let rest = path.trim_start_matches("/api/v1/admin/").to_string();
    let segs: Vec<&str> = rest.split('/').collect();
    let meta = state.auth.metadata();
    let origin = super::origin(&parts.headers, &parts.extensions);
    let o = &origin;
    let m = &parts.method;
    let result: Result<Response, ApiError> = async {
        match (m, segs.as_slice()) {
            (&Method::GET, ["accounts"]) => {
                let list = meta.accounts().await.map_err(|e| invalid(e.into()))?;
                Ok(Json(json!({ "accounts": list })).into_response())
            }
            (&Method::GET, ["accounts", name]) => match meta.account(name).await {
                Ok(Some(a)) => Ok(Json(a).into_response()),
                Ok(None) => Err(not_found(format!("no account {name:?}"))),
                Err(e) => Err(invalid(e.into())),
            },
            (&Method::POST, ["users"]) => {
                let a: NewAccount = json_body(body).await?;
                let roles = roles(&a.roles)?;
                let pw = a
                    .password
                    .ok_or_else(|| bad_request("a user needs a password".into()))?;
                if a.expires_in_days.is_some() {
                    return Err(bad_request("only robots expire".into()));
                }
                if !auth::create_user(meta, &a.name, &pw, &roles, o)
                    .await
                    .map_err(invalid)?
                {
                    return Err(conflict(&a.name));
                }
                state.auth.close();
                let account = meta.account(&a.name).await.map_err(|e| invalid(e.into()))?;
                Ok((StatusCode::CREATED, Json(json!({ "account": account }))).into_response())
            }
            (&Method::POST, ["robots"]) => {
                let a: NewAccount = json_body(body).await?;
                let roles = roles(&a.roles)?;
                if a.password.is_some() {
                    return Err(bad_request(
                        "robots get a generated secret; do not send a password".into(),
                    ));
                }
                let expires = a
                    .expires_in_days
                    .map(|d| crate::metadata::now_ms() + i64::from(d) * 86_400_000);
                let Some(secret) = auth::create_robot(meta, &a.name, expires, &roles, o)
                    .await
                    .map_err(invalid)?
                else {
                    return Err(conflict(&a.name));
                };
                state.auth.close();
                let account = meta.account(&a.name).await.map_err(|e| invalid(e.into()))?;
                Ok((
                    StatusCode::CREATED,
                    [(header::CACHE_CONTROL, "no-store")],
                    Json(json!({
                        "account": account,
                        "secret": secret,
                        "note": "the secret is shown only now; store it in your CI's secret store",
                    })),
                )
                    .into_response())
            }
            (&Method::DELETE, ["accounts", name]) => {
                if meta
                    .delete_account(name, o)
                    .await
                    .map_err(|e| invalid(e.into()))?
                {
                    Ok(Json(json!({ "deleted": name })).into_response())
                } else {
                    Err(not_found(format!("no account {name:?}")))
                }
            }
            (&Method::POST | &Method::DELETE, ["accounts", name, "roles"]) => {
                let spec: RoleSpec = if m == Method::POST {
                    json_body(body).await?
                } else {
                    let q = Query::parse(parts.uri.query());
                    RoleSpec {
                        repositories: q.get("repositories").unwrap_or_default().to_string(),
                        role: q.get("role").unwrap_or_default().to_string(),
                    }
                };
                let (glob, role) =
                    auth::check_role(&spec.repositories, &spec.role).map_err(invalid)?;
                if !meta
                    .set_account_role(name, &glob, &role, m == Method::POST, o)
                    .await
                    .map_err(|e| invalid(e.into()))?
                {
                    return Err(not_found(format!("no account {name:?}")));
                }
                let account = meta.account(name).await.map_err(|e| invalid(e.into()))?;
                Ok(Json(account).into_response())
            }
            (&Method::POST, ["keys", "rotate"]) => {
                let kid = auth::token::rotate(meta, state.auth.tokens.refresh_ttl, o)
                    .await
                    .map_err(|e| invalid(e.into()))?;
                Ok(Json(json!({ "kid": kid })).into_response())
            }
            _ => Err(
                ApiError::new(Code::Unsupported, format!("{m} is not supported on {path}"))
                    .with_status(StatusCode::NOT_FOUND),
            ),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn conflict(name: &str) -> ApiError {
    ApiError::new(Code::Denied, format!("account {name:?} already exists"))
        .with_status(StatusCode::CONFLICT)
}
