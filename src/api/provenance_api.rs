//! The provenance JSON API: CI stores statements (`PUT
//! /api/v1/provenance/<repository>@<digest>`), auditors read an artifact's
//! records and materials (by digest, or by tag at a point in time) and search
//! artifacts by commit, source repository, builder, material or time.
//!
//! Parsing, checks and storage live in the service layer; this module only
//! reads the request and shapes the JSON (times as RFC 3339).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::tags_api::{bad_request, parse_time, rfc3339};
use super::{number, origin, AppState, Query};
use crate::domain::provenance::Facts;
use crate::domain::{Digest, RepoName, Tag};
use crate::error::{ApiError, Code};
use crate::metadata::{MaterialRecord, ProvenanceQuery, ProvenanceRecord};
use crate::service::{IngestedStatement, MAX_ATTESTATION_BYTES};

const PREFIX: &str = "/api/v1/provenance/";

/// What a path after [`PREFIX`] names.
enum Target {
    Digest(RepoName, Digest),
    /// A tag, resolved at `?at=` (or now).
    Tag(RepoName, Tag),
}

/// `<repository>@<digest>` or `<repository>:<tag>`, then optionally `/materials`.
fn target(rest: &str) -> Result<(Target, bool), ApiError> {
    let (reference, materials) = match rest.strip_suffix("/materials") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    if let Some((repo, digest)) = reference.split_once('@') {
        return Ok((Target::Digest(repo.parse()?, digest.parse()?), materials));
    }
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => {
            Ok((Target::Tag(repo.parse()?, tag.parse()?), materials))
        }
        _ => Err(
            ApiError::new(
                Code::Unsupported,
                format!(
                    "no endpoint at {PREFIX}{rest}: name an artifact as <repository>@<digest> or <repository>:<tag>"
                ),
            )
            .with_status(StatusCode::NOT_FOUND),
        ),
    }
}

fn time_opt(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| Value::String(rfc3339(ms)))
}

fn facts_json(f: &Facts) -> Value {
    json!({
        "source_uri": f.source_uri,
        "revision": f.revision,
        "builder_id": f.builder_id,
        "build_type": f.build_type,
        "invocation_id": f.invocation_id,
        "started_at": time_opt(f.started_at),
        "finished_at": time_opt(f.finished_at),
        "image_created_at": time_opt(f.created_at),
        "version": f.version,
        "authors": f.authors,
    })
}

fn record_facts(r: &ProvenanceRecord) -> Value {
    json!({
        "source_uri": r.source_uri,
        "revision": r.revision,
        "builder_id": r.builder_id,
        "build_type": r.build_type,
        "invocation_id": r.invocation_id,
        "started_at": time_opt(r.started_at),
        "finished_at": time_opt(r.finished_at),
        "image_created_at": time_opt(r.image_created_at),
        "version": r.version,
        "authors": r.authors,
    })
}

fn material(m: &MaterialRecord) -> Value {
    json!({ "provenance_id": m.provenance_id, "uri": m.uri, "digest": m.digest })
}

/// A record with everything known about it (the document as JSON).
fn record(r: &ProvenanceRecord) -> Value {
    json!({
        "id": r.id,
        "repository": r.repository,
        "digest": r.subject_digest,
        "source": r.source,
        "source_digest": r.source_digest,
        "parsed": r.parsed,
        "parse_error": r.parse_error,
        "statement_type": r.statement_type,
        "predicate_type": r.predicate_type,
        "facts": record_facts(r),
        "materials": r.materials.iter().map(|m| json!({"uri": m.uri, "digest": m.digest})).collect::<Vec<_>>(),
        "document": r.document.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()),
        "actor": r.actor,
        "recorded_at": rfc3339(r.recorded_at),
    })
}

/// A search hit: the artifact, its tags now, and the record that matched.
fn hit(r: &ProvenanceRecord) -> Value {
    json!({
        "repository": r.repository,
        "digest": r.subject_digest,
        "tags": r.tags,
        "provenance_id": r.id,
        "source": r.source,
        "predicate_type": r.predicate_type,
        "facts": record_facts(r),
        "materials": r.materials.iter().map(|m| json!({"uri": m.uri, "digest": m.digest})).collect::<Vec<_>>(),
        "recorded_at": rfc3339(r.recorded_at),
    })
}

fn ingested(i: &IngestedStatement) -> Value {
    json!({
        "id": i.stored.id,
        "created": i.stored.created,
        "statement_type": i.statement.statement_type,
        "predicate_type": i.statement.predicate_type,
        "facts": facts_json(&i.statement.facts),
        "materials": i.statement.facts.materials,
    })
}

/// A JSON page with `next` and, when there is one, a `Link: <next>; rel="next"`.
fn page(mut body: Value, path: &str, q: &Query, next: Option<String>) -> Response {
    let next = next.map(|cursor| {
        let mut pairs: Vec<(String, String)> =
            q.0.iter().filter(|(k, _)| k != "cursor").cloned().collect();
        pairs.push(("cursor".into(), cursor));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("{path}?{qs}")
    });
    body["next"] = json!(next);
    let mut resp = Json(body).into_response();
    if let Some(n) = &next {
        if let Ok(v) = format!("<{n}>; rel=\"next\"").parse() {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    resp
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// `GET` and `PUT /api/v1/provenance/<repository>@<digest>`, `GET
/// …/<repository>:<tag>[?at=]`, `GET …/materials`.
pub(super) async fn artifact(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let result = async {
        let path = req.uri().path().to_string();
        let rest = path.strip_prefix(PREFIX).unwrap_or_default().to_string();
        let (target, materials) = target(&rest)?;
        if req.method() == Method::PUT {
            let Target::Digest(repo, digest) = target else {
                return Err(bad_request(format!(
                    "store provenance for a digest ({PREFIX}<repository>@<digest>), not a tag: {rest}"
                )));
            };
            if materials {
                return Err(ApiError::new(Code::Unsupported, "materials are read-only"));
            }
            return put(&state, repo, digest, req).await;
        }
        let q = Query::parse(req.uri().query());
        let reg = &state.registry;
        let (repo, digest, at) = match target {
            Target::Digest(repo, digest) => (repo, digest, None),
            Target::Tag(repo, tag) => {
                let at = match q.get("at") {
                    Some(at) => parse_time("at", at)?,
                    None => now_ms(),
                };
                let digest = reg.digest_at(&repo, &tag, at).await?;
                (repo, digest, Some((tag, at)))
            }
        };
        let n = number(&q, "n")?;
        let mut body = json!({
            "repository": repo.as_str(),
            "digest": digest.as_str(),
        });
        if let Some((tag, at)) = &at {
            body["tag"] = json!(tag.as_str());
            body["at"] = json!(rfc3339(*at));
        }
        if materials {
            let cursor = q.get("cursor").map(material_cursor).transpose()?;
            let rows = reg.provenance_materials(&repo, &digest, cursor, n).await?;
            let full = rows.len() as u32 >= page_limit(&state, n);
            let next = rows
                .last()
                .filter(|_| full)
                .map(|m| format!("{}.{}", m.provenance_id, m.position));
            body["materials"] = rows.iter().map(material).collect();
            return Ok(page(body, &path, &q, next));
        }
        let cursor = q
            .get("cursor")
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| bad_request(format!("?cursor={c:?} must be a record id")))
            })
            .transpose()?;
        let rows = reg.provenance(&repo, &digest, cursor, n).await?;
        let full = rows.len() as u32 >= page_limit(&state, n);
        let next = rows.last().filter(|_| full).map(|r| r.id.to_string());
        body["records"] = rows.iter().map(record).collect();
        Ok(page(body, &path, &q, next))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The page size the service applies (records carry documents: 100 by default).
fn page_limit(state: &AppState, n: Option<u32>) -> u32 {
    n.unwrap_or(100)
        .clamp(1, state.registry.limits().max_page.max(1))
}

/// `<provenance id>.<position>`, as `next` gives it.
fn material_cursor(c: &str) -> Result<(i64, i32), ApiError> {
    c.split_once('.')
        .and_then(|(id, pos)| Some((id.parse().ok()?, pos.parse().ok()?)))
        .ok_or_else(|| bad_request(format!("?cursor={c:?} must be a cursor from \"next\"")))
}

/// `PUT /api/v1/provenance/<repository>@<digest>`: `201` with the stored
/// records, `200` when every statement was stored before.
async fn put(
    state: &AppState,
    repo: RepoName,
    digest: Digest,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let who = origin(&parts.headers, &parts.extensions);
    let bytes = read_limited(body, MAX_ATTESTATION_BYTES).await?;
    let stored = state
        .registry
        .put_provenance(&repo, &digest, &bytes, &who)
        .await?;
    let status = if stored.iter().any(|s| s.stored.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({
        "repository": repo.as_str(),
        "digest": digest.as_str(),
        "records": stored.iter().map(ingested).collect::<Vec<_>>(),
    });
    Ok((status, Json(body)).into_response())
}

/// The request body, refused once it passes `limit` bytes (without reading
/// the rest of it into memory).
async fn read_limited(body: Body, limit: u64) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                Code::ProvenanceInvalid,
                format!("the request body could not be read: {e}"),
            )
        })?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(ApiError::new(
                Code::ProvenanceInvalid,
                format!("provenance document is larger than the limit of {limit} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `GET /api/v1/provenance?revision=&source=&builder=&repository=&predicate_type=&material=&since=&until=&n=&cursor=`
pub(super) async fn search(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let q = Query::parse(req.uri().query());
    let result = async {
        let text = |k: &str| q.get(k).filter(|v| !v.is_empty()).map(str::to_string);
        let cursor = q
            .get("cursor")
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| bad_request(format!("?cursor={c:?} must be a record id")))
            })
            .transpose()?;
        let pq = ProvenanceQuery {
            revision: text("revision"),
            source: text("source"),
            builder: text("builder"),
            repository: text("repository"),
            predicate_type: text("predicate_type"),
            material: text("material"),
            since: q.get("since").map(|v| parse_time("since", v)).transpose()?,
            until: q.get("until").map(|v| parse_time("until", v)).transpose()?,
            cursor,
            limit: number(&q, "n")?.unwrap_or(100),
        };
        let found = state.registry.provenance_search(pq).await?;
        let body = json!({
            "artifacts": found.records.iter().map(hit).collect::<Vec<_>>(),
        });
        Ok::<_, ApiError>(page(
            body,
            "/api/v1/provenance",
            &q,
            found.next.map(|n| n.to_string()),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The OpenAPI 3.1 description of the whole `/api/v1` JSON API.
pub(super) const OPENAPI: &str = include_str!("openapi.json");

/// `GET /api/v1/openapi.json`
pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
