//! The JSON API of promotions, rollback targets, legal holds, retention and
//! garbage collection:
//!
//! - `POST|GET /api/v1/repositories/<name>/promotions`
//! - `GET /api/v1/repositories/<name>/environments[/<env>/rollback]`
//! - `POST /api/v1/repositories/<name>/holds`, `GET /api/v1/holds`,
//!   `DELETE /api/v1/holds/<id>`
//! - `GET /api/v1/repositories/<name>/retention` (the effective policy)
//! - `POST /api/v1/retention/plan`, `POST /api/v1/retention/apply`, `POST /api/v1/gc`

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::tags_api::bad_request;
use super::{number, origin, AppState, Query};
use crate::domain::{Reference, RepoName};
use crate::error::{ApiError, Code};
use crate::service::Job;

/// Largest JSON body these endpoints read.
const BODY_LIMIT: usize = 64 << 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromotionRequest {
    /// A tag (resolved to its digest now) or a digest.
    reference: String,
    environment: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldRequest {
    reference: String,
    reason: String,
}

async fn json_body<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|e| bad_request(format!("the request body could not be read: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(format!("the request body is not the expected JSON: {e}")))
}

fn reference(text: &str) -> Result<Reference, ApiError> {
    text.parse::<Reference>().map_err(|e| {
        bad_request(format!(
            "reference {text:?} is neither a tag nor a digest: {e}"
        ))
    })
}

/// `/api/v1/repositories/<name>/…` for every method: the routes of this module,
/// else the read-only ones of `tags_api`.
pub(super) async fn repository(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let rest = path.trim_start_matches("/api/v1/repositories/").to_string();
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| -> Result<RepoName, ApiError> {
        if k == 0 {
            return Err(ApiError::new(Code::NameInvalid, "repository name is empty"));
        }
        Ok(segs[..k].join("/").parse()?)
    };
    let method = req.method().clone();
    let last = segs[n - 1];
    let result = async {
        match (&method, last) {
            (&Method::POST, "promotions") if n >= 2 => {
                let repo = name(n - 1)?;
                let o = origin_of(&req);
                let body: PromotionRequest = json_body(req).await?;
                let r = reference(&body.reference)?;
                let p = state
                    .registry
                    .promote(&repo, &r, &body.environment, &o)
                    .await?;
                Ok((
                    StatusCode::CREATED,
                    Json(json!({ "repository": repo.as_str(), "promotion": p })),
                )
                    .into_response())
            }
            (&Method::GET, "promotions") if n >= 2 => {
                let repo = name(n - 1)?;
                let q = Query::parse(req.uri().query());
                let before = q
                    .get("cursor")
                    .map(|c| {
                        c.parse::<i64>().map_err(|_| {
                            bad_request(format!("?cursor={c:?} must be a promotion id"))
                        })
                    })
                    .transpose()?;
                let list = state
                    .registry
                    .promotions(&repo, q.get("environment"), before, number(&q, "n")?)
                    .await?;
                let next = list.last().map(|p| p.id);
                Ok(Json(json!({
                    "repository": repo.as_str(),
                    "promotions": list,
                    "next_cursor": next,
                }))
                .into_response())
            }
            (&Method::GET, "environments") if n >= 2 => {
                let repo = name(n - 1)?;
                let envs = state.registry.environments(&repo).await?;
                Ok(
                    Json(json!({ "repository": repo.as_str(), "environments": envs }))
                        .into_response(),
                )
            }
            (&Method::GET, "rollback") if n >= 4 && segs[n - 3] == "environments" => {
                let repo = name(n - 3)?;
                let answer = state.registry.rollback(&repo, segs[n - 2]).await?;
                Ok(Json(answer).into_response())
            }
            (&Method::POST, "holds") if n >= 2 => {
                let repo = name(n - 1)?;
                let o = origin_of(&req);
                let body: HoldRequest = json_body(req).await?;
                let r = reference(&body.reference)?;
                let hold = state.registry.add_hold(&repo, &r, &body.reason, &o).await?;
                Ok((StatusCode::CREATED, Json(hold)).into_response())
            }
            (&Method::GET, "retention") if n >= 2 => {
                let repo = name(n - 1)?;
                let policy = state.registry.retention_policy();
                Ok(Json(json!({
                    "repository": repo.as_str(),
                    "policies": policy.for_repository(repo.as_str()),
                    "rollback_depth": policy.rollback_depth(repo.as_str()),
                }))
                .into_response())
            }
            (&Method::GET, _) => Ok(super::tags_api::repository(State(state.clone()), req).await),
            _ => Err(ApiError::new(
                Code::Unsupported,
                format!("{method} is not supported on {path}"),
            )),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn origin_of(req: &Request) -> crate::metadata::Origin {
    origin(req.headers(), req.extensions())
}

/// `GET /api/v1/holds?repository=&active=true|false`
pub(super) async fn holds(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let q = Query::parse(req.uri().query());
    let result = async {
        let active = match q.get("active") {
            None | Some("true") => true,
            Some("false") => false,
            Some(v) => return Err(bad_request(format!("?active={v:?} must be true or false"))),
        };
        let list = state.registry.holds(q.get("repository"), active).await?;
        Ok::<_, ApiError>(Json(json!({ "holds": list })).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE /api/v1/holds/<id>`: releases a hold (audited).
pub(super) async fn release_hold(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let o = origin_of(&req);
    drop(req);
    let result = async {
        let id: i64 = id
            .parse()
            .map_err(|_| bad_request(format!("hold id {id:?} must be a number")))?;
        state.registry.release_hold(id, &o).await?;
        Ok::<_, ApiError>(Json(json!({ "released": id })).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /api/v1/retention/plan?repository=<glob>`: makes and stores a plan.
pub(super) async fn plan(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let q = Query::parse(req.uri().query());
    let o = origin_of(&req);
    match state.registry.retention_plan(q.get("repository"), &o).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `POST /api/v1/retention/apply?plan=<id>`: applies a stored plan; without
/// `plan`, plans (`?repository=` glob) and applies at once.
pub(super) async fn apply(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let q = Query::parse(req.uri().query());
    let o = origin_of(&req);
    let result = async {
        let id = match q.get("plan") {
            Some(id) => id.to_string(),
            None => {
                state
                    .registry
                    .retention_plan(q.get("repository"), &o)
                    .await?
                    .id
            }
        };
        let report = state
            .registry
            .exclusively(
                Job::Retention,
                state.registry.retention_apply(&id, &o, |_, _| {}),
            )
            .await?;
        if let Some(m) = &state.metrics {
            m.retention_applied(report.deleted.len() as u64, report.refused.len() as u64);
        }
        Ok::<_, ApiError>(Json(report).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /api/v1/gc?dry_run=true`: one collection now, with the configured grace.
pub(super) async fn gc(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let q = Query::parse(req.uri().query());
    let dry_run = match q.get("dry_run") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return bad_request(format!("?dry_run={v:?} must be true or false")).into_response()
        }
    };
    match state
        .registry
        .exclusively(
            Job::GarbageCollection,
            state
                .registry
                .collect_garbage(state.gc_grace, Duration::ZERO, dry_run, |_, _| {}),
        )
        .await
    {
        Ok(r) => {
            if let (Some(m), false) = (&state.metrics, r.dry_run) {
                m.gc_finished(r.blobs, r.bytes);
            }
            Json(r).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
