//! The auditor's JSON API over the audit trail: `GET /api/v1/audit` (filtered,
//! cursor-paginated), `/api/v1/audit/export` (JSON lines, streamed) and
//! `/api/v1/audit/verify` (the hash chain, recomputed).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value};

use super::tags_api::{bad_request, parse_time, rfc3339};
use super::{number, AppState, Query};
use crate::error::ApiError;
use crate::metadata::{AuditQuery, AuditRecord};

/// An audit entry as the API shows it (`detail` as JSON, times as RFC 3339
/// and Unix milliseconds).
pub(super) fn record(r: &AuditRecord) -> Value {
    json!({
        "id": r.id,
        "at": rfc3339(r.at),
        "at_ms": r.at,
        "actor": r.actor,
        "client": r.client,
        "action": r.action,
        "repository": r.repository,
        "tag": r.tag,
        "digest": r.digest,
        "result": r.result,
        "detail": r.detail.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()),
        "request_id": r.request_id,
        "user_agent": r.user_agent,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
    })
}

/// The filters shared by the query and the export.
fn filters(q: &Query) -> Result<AuditQuery, ApiError> {
    let text = |k: &str| q.get(k).filter(|v| !v.is_empty()).map(str::to_string);
    let cursor = q
        .get("cursor")
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| bad_request(format!("?cursor={c:?} must be an entry id")))
        })
        .transpose()?;
    let ascending = match q.get("order") {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => return Err(bad_request(format!("?order={o:?} must be asc or desc"))),
    };
    Ok(AuditQuery {
        repository: text("repository"),
        digest: text("digest"),
        tag: text("tag"),
        actor: text("actor"),
        action: text("action"),
        since: q.get("since").map(|v| parse_time("since", v)).transpose()?,
        until: q.get("until").map(|v| parse_time("until", v)).transpose()?,
        cursor,
        ascending,
        limit: number(q, "n")?.unwrap_or(100),
    })
}

/// `GET /api/v1/audit?repository=&digest=&tag=&actor=&action=&since=&until=&order=&n=&cursor=`
pub(super) async fn query(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let q = Query::parse(req.uri().query());
    let result = async {
        let aq = filters(&q)?;
        let rows = state.registry.audit(aq.clone()).await?;
        let full = rows.len() as u32 >= aq.limit.min(state.registry.limits().max_page);
        let next = rows.last().filter(|_| full).map(|last| {
            let mut pairs: Vec<(String, String)> =
                q.0.iter().filter(|(k, _)| k != "cursor").cloned().collect();
            pairs.push(("cursor".into(), last.id.to_string()));
            let qs = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            format!("/api/v1/audit?{qs}")
        });
        let body = json!({
            "entries": rows.iter().map(record).collect::<Vec<_>>(),
            "next": next,
        });
        let mut resp = Json(body).into_response();
        if let Some(n) = &next {
            if let Ok(v) = format!("<{n}>; rel=\"next\"").parse() {
                resp.headers_mut().insert(header::LINK, v);
            }
        }
        Ok::<_, ApiError>(resp)
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /api/v1/audit/export?<filters>`: every matching entry, oldest first, one
/// JSON object per line, streamed.
pub(super) async fn export(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let q = Query::parse(req.uri().query());
    let aq = match filters(&q) {
        Ok(aq) => aq,
        Err(e) => return e.into_response(),
    };
    let lines = state.registry.audit_export(aq).map(|r| {
        r.map(|rec| {
            let mut line = record(&rec).to_string();
            line.push('\n');
            bytes::Bytes::from(line)
        })
        .map_err(|e| {
            tracing::warn!(error = %e, "audit export stopped");
            std::io::Error::other("audit export stopped")
        })
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `GET /api/v1/audit/verify`: `{"checked": n, "broken": null | {"id", "reason"}}`;
/// `409` when the chain is broken, so a monitor can alert on the status alone.
pub(super) async fn verify(State(state): State<Arc<AppState>>) -> Response {
    match state.registry.audit_verify(|_, _| {}).await {
        Ok(report) => {
            let status = if report.broken.is_some() {
                StatusCode::CONFLICT
            } else {
                StatusCode::OK
            };
            (status, Json(report)).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
