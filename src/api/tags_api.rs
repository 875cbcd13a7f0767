//! The JSON API (`/api/v1/…`): a tag's history, where it pointed at a given
//! time, the effective rules of a repository, the decision for one tag with the
//! rule that made it, a repository's artifacts with their pull statistics, and
//! a repository's totals.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{number, AppState, Query};
use crate::domain::{RepoName, Tag};
use crate::error::{ApiError, Code};
use crate::metadata::{ArtifactSort, ArtifactStats, TagHistoryEntry};

pub(super) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn entry(e: &TagHistoryEntry) -> Value {
    json!({
        "id": e.id,
        "action": e.action,
        "digest": e.digest,
        "previous_digest": e.previous_digest,
        "rule": e.rule,
        "actor": e.actor,
        "at": rfc3339(e.at_ms),
    })
}

fn artifact(a: &ArtifactStats) -> Value {
    json!({
        "digest": a.digest,
        "media_type": a.media_type,
        "artifact_type": a.artifact_type,
        "size": a.size,
        "pushed_at": rfc3339(a.pushed_at),
        "tags": a.tags.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        "tag_pulls": a.tags.iter().map(|t| json!({
            "tag": t.name,
            "pulls": t.pulls,
            "last_pulled_at": t.last_pulled_at.map(rfc3339),
        })).collect::<Vec<_>>(),
        "pulls": a.pulls,
        "last_pulled_at": a.last_pulled_at.map(rfc3339),
    })
}

pub(super) fn bad_request(msg: String) -> ApiError {
    ApiError::new(Code::Unsupported, msg).with_status(StatusCode::BAD_REQUEST)
}

/// A time query parameter: RFC 3339 (`2026-11-25T14:00:00Z`) or Unix milliseconds.
pub(crate) fn parse_time(key: &str, value: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    OffsetDateTime::parse(value, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|e| {
            bad_request(format!(
                "?{key}={value:?} is not an RFC 3339 time (e.g. 2026-11-25T14:00:00Z) or Unix milliseconds: {e}"
            ))
        })
}

/// `GET /api/v1/policy/explain?repository=<name>&tag=<tag>`
pub(super) async fn explain(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let q = Query::parse(req.uri().query());
    let result = (|| {
        let repo: RepoName = q
            .get("repository")
            .ok_or_else(|| bad_request("?repository= is required".into()))?
            .parse()?;
        let tag: Tag = q
            .get("tag")
            .ok_or_else(|| bad_request("?tag= is required".into()))?
            .parse()?;
        let d = state.registry.explain(&repo, tag.as_str());
        Ok::<_, ApiError>(Json(json!({
            "repository": repo.as_str(),
            "tag": tag.as_str(),
            "mutability": d.mutability,
            "rule": d.rule,
            "rule_repositories": d.repositories,
            "rule_tags": d.tags,
        })))
    })();
    result
        .map(IntoResponse::into_response)
        .unwrap_or_else(IntoResponse::into_response)
}

/// `GET /api/v1/repositories/<name>[/…]`: the repository's totals, `policy`,
/// `artifacts`, `tags/<tag>`, `tags/<tag>/history`.
pub(super) async fn repository(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let q = Query::parse(req.uri().query());
    route(&state, &path, &q)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn route(state: &AppState, path: &str, q: &Query) -> Result<Response, ApiError> {
    let rest = path.trim_start_matches("/api/v1/repositories/");
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| -> Result<RepoName, ApiError> {
        if k == 0 {
            return Err(ApiError::new(Code::NameInvalid, "repository name is empty"));
        }
        Ok(segs[..k].join("/").parse()?)
    };
    let reg = &state.registry;
    if n >= 2 && segs[n - 1] == "policy" {
        let repo = name(n - 1)?;
        return Ok(Json(json!({
            "repository": repo.as_str(),
            "default": "immutable",
            "rules": reg.rules_for(&repo),
        }))
        .into_response());
    }
    if n >= 4 && segs[n - 3] == "tags" && segs[n - 1] == "history" {
        let repo = name(n - 3)?;
        let tag: Tag = segs[n - 2].parse()?;
        let before = q
            .get("before")
            .map(|b| {
                b.parse::<i64>()
                    .map_err(|_| bad_request(format!("?before={b:?} must be an event id")))
            })
            .transpose()?;
        let limit = number(q, "n")?;
        let events = reg.tag_history(&repo, &tag, before, limit).await?;
        let next = events.last().map(|e| e.id);
        let body = json!({
            "repository": repo.as_str(),
            "tag": tag.as_str(),
            "events": events.iter().map(entry).collect::<Vec<_>>(),
        });
        let mut resp = Json(body).into_response();
        // A full page may have more after it, whether or not the client chose `n`.
        let max = reg.limits().max_page;
        let limit = limit.unwrap_or(max).min(max);
        if let Some(next) = next {
            if events.len() as u32 == limit {
                let link = format!("<{path}?n={limit}&before={next}>; rel=\"next\"");
                if let Ok(v) = link.parse() {
                    resp.headers_mut().insert(axum::http::header::LINK, v);
                }
            }
        }
        return Ok(resp);
    }
    if n >= 3 && segs[n - 2] == "tags" {
        let repo = name(n - 2)?;
        let tag: Tag = segs[n - 1].parse()?;
        let decision = reg.explain(&repo, tag.as_str());
        let at_ms = match q.get("at") {
            Some(at) => parse_time("at", at)?,
            None => (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        };
        let e = reg.tag_at(&repo, &tag, at_ms).await?;
        return Ok(Json(json!({
            "repository": repo.as_str(),
            "tag": tag.as_str(),
            "at": rfc3339(at_ms),
            "digest": e.digest,
            "bound_at": rfc3339(e.at_ms),
            "mutability": decision.mutability,
            "rule": decision.rule,
        }))
        .into_response());
    }
    if n >= 2 && segs[n - 1] == "artifacts" {
        return artifacts(state, &name(n - 1)?, path, q).await;
    }
    if segs.iter().all(|s| !s.is_empty()) {
        let repo = name(n)?;
        let s = reg.repository_stats(&repo).await?;
        return Ok(Json(json!({
            "repository": repo.as_str(),
            "created_at": rfc3339(s.created_at),
            "manifests": s.manifests,
            "tags": s.tags,
            "pulls": s.pulls,
            "blob_pulls": s.blob_pulls,
            "bytes_served": s.bytes_served,
            "last_pulled_at": s.last_pulled_at.map(rfc3339),
        }))
        .into_response());
    }
    Err(
        ApiError::new(Code::Unsupported, format!("no endpoint at {path}"))
            .with_status(StatusCode::NOT_FOUND),
    )
}

/// `GET …/<name>/artifacts?sort=pulls|last_pulled|pushed|size&order=asc|desc&n=&offset=`:
/// the repository's manifests with tags and pull statistics, newest push first
/// by default, with a `Link` to the next page.
async fn artifacts(
    state: &AppState,
    repo: &RepoName,
    path: &str,
    q: &Query,
) -> Result<Response, ApiError> {
    let sort_name = q.get("sort").unwrap_or("pushed");
    let sort = match sort_name {
        "pulls" => ArtifactSort::Pulls,
        "last_pulled" => ArtifactSort::LastPulled,
        "pushed" => ArtifactSort::Pushed,
        "size" => ArtifactSort::Size,
        other => {
            return Err(bad_request(format!(
                "?sort={other:?}: use pulls, last_pulled, pushed or size"
            )))
        }
    };
    let order = q.get("order").unwrap_or("desc");
    let descending = match order {
        "desc" => true,
        "asc" => false,
        other => return Err(bad_request(format!("?order={other:?}: use asc or desc"))),
    };
    let n = number(q, "n")?;
    let offset = q
        .get("offset")
        .map(|o| {
            o.parse::<u32>().map(u64::from).map_err(|_| {
                bad_request(format!(
                    "?offset={o:?} must be an integer from 0 to {}",
                    u32::MAX
                ))
            })
        })
        .transpose()?
        .unwrap_or(0);
    let page = state
        .registry
        .artifacts(repo, sort, descending, n, offset)
        .await?;
    let body = json!({
        "repository": repo.as_str(),
        "artifacts": page.items.iter().map(artifact).collect::<Vec<_>>(),
    });
    let mut resp = Json(body).into_response();
    if page.more {
        let mut next = url::form_urlencoded::Serializer::new(String::new());
        next.append_pair("sort", sort_name)
            .append_pair("order", order);
        if let Some(n) = n {
            next.append_pair("n", &n.to_string());
        }
        next.append_pair("offset", &(offset + page.items.len() as u64).to_string());
        let link = format!("<{path}?{}>; rel=\"next\"", next.finish());
        if let Ok(v) = link.parse() {
            resp.headers_mut().insert(axum::http::header::LINK, v);
        }
    }
    Ok(resp)
}
