//! Blob uploads: start (end-4a), single POST (end-4b), mount (end-11), chunk
//! (end-5), finish (end-6), status, cancel (end-13).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;

use super::{empty, header_str, Ctx};
use crate::domain::{Algorithm, ContentRange, Digest, RepoName};
use crate::error::{upload_range, ApiError, Code};
use crate::service::{BlobLocation, UploadProgress};

/// Set when a body was abandoned for sending nothing for too long.
struct Stalled {
    fired: Arc<AtomicBool>,
    idle: Duration,
}

impl Stalled {
    /// A service error caused by the stall becomes 408; others pass through.
    fn explain(&self, e: crate::service::Error) -> ApiError {
        if self.fired.load(Ordering::Relaxed) {
            ApiError::new(
                Code::BlobUploadInvalid,
                format!(
                    "the request body sent nothing for {} s and was abandoned; \
                     resume the upload from its last acknowledged offset",
                    self.idle.as_secs()
                ),
            )
            .with_status(StatusCode::REQUEST_TIMEOUT)
        } else {
            e.into()
        }
    }
}

/// The request body as a stream that fails when the client sends nothing for
/// `idle`: a stalled upload must not hold its connection and session forever
/// (slow-loris). Zero: no limit.
fn idle_limited(
    body: Body,
    idle: Duration,
) -> (
    impl futures::Stream<Item = Result<Bytes, String>> + Send,
    Stalled,
) {
    let fired = Arc::new(AtomicBool::new(false));
    let flag = fired.clone();
    let stream = futures::stream::unfold(
        (body.into_data_stream(), flag, false),
        move |(mut inner, flag, done)| async move {
            if done {
                return None;
            }
            let next = if idle.is_zero() {
                inner.next().await
            } else {
                match tokio::time::timeout(idle, inner.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        flag.store(true, Ordering::Relaxed);
                        let msg = format!("no data for {} s", idle.as_secs());
                        return Some((Err(msg), (inner, flag, true)));
                    }
                }
            };
            next.map(|r| (r.map_err(|e| e.to_string()), (inner, flag, false)))
        },
    );
    (stream, Stalled { fired, idle })
}

fn upload_location(repo: &RepoName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

fn accepted(repo: &RepoName, p: &UploadProgress) -> Response {
    empty(
        StatusCode::ACCEPTED,
        &[
            ("Location", upload_location(repo, &p.id)),
            ("Range", upload_range(p.size)),
            ("Docker-Upload-UUID", p.id.clone()),
        ],
    )
}

fn created(repo: &RepoName, b: &BlobLocation) -> Response {
    empty(
        StatusCode::CREATED,
        &[
            ("Location", format!("/v2/{repo}/blobs/{}", b.digest)),
            ("Docker-Content-Digest", b.digest.to_string()),
        ],
    )
}

fn digest_param(ctx: &Ctx<'_>) -> Result<Option<Digest>, ApiError> {
    ctx.query
        .get("digest")
        .map(|d| d.parse::<Digest>().map_err(ApiError::from))
        .transpose()
}

fn content_range(ctx: &Ctx<'_>) -> Result<Option<ContentRange>, ApiError> {
    header_str(ctx.headers, &header::CONTENT_RANGE)
        .map(|h| {
            ContentRange::parse(h).map_err(|e| {
                ApiError::new(Code::BlobUploadInvalid, e.to_string())
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            })
        })
        .transpose()
}

fn content_length(ctx: &Ctx<'_>) -> Option<u64> {
    header_str(ctx.headers, &header::CONTENT_LENGTH).and_then(|v| v.parse().ok())
}

/// POST `/v2/<name>/blobs/uploads/`: mount, single-request upload, or a new session.
pub(super) async fn start(
    ctx: &Ctx<'_>,
    repo: &RepoName,
    body: Body,
) -> Result<Response, ApiError> {
    if let (Some(mount), Some(from)) = (ctx.query.get("mount"), ctx.query.get("from")) {
        let digest: Digest = mount.parse()?;
        let from: RepoName = from.parse()?;
        if let Some(b) = ctx.registry.mount(repo, &digest, &from, ctx.origin).await? {
            return Ok(created(repo, &b));
        }
    }
    if let Some(digest) = digest_param(ctx)? {
        let (body, stalled) = idle_limited(body, ctx.registry.limits().body_idle_timeout);
        let b = ctx
            .registry
            .upload_whole(repo, &digest, body, ctx.origin)
            .await
            .map_err(|e| stalled.explain(e))?;
        return Ok(created(repo, &b));
    }
    let algorithm = match ctx.query.get("digest-algorithm") {
        Some(a) => a.parse::<Algorithm>().map_err(ApiError::from)?,
        None => Algorithm::Sha256,
    };
    let p = ctx.registry.start_upload(repo, algorithm).await?;
    Ok(accepted(repo, &p))
}

/// PATCH: one chunk (with `Content-Range`) or a stream (without).
pub(super) async fn patch(
    ctx: &Ctx<'_>,
    repo: &RepoName,
    id: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let range = content_range(ctx)?;
    let (body, stalled) = idle_limited(body, ctx.registry.limits().body_idle_timeout);
    let p = ctx
        .registry
        .append(repo, id, range, content_length(ctx), body)
        .await
        .map_err(|e| stalled.explain(e))?;
    Ok(accepted(repo, &p))
}

/// PUT `?digest=`: the last chunk, if any, and completion.
pub(super) async fn put(
    ctx: &Ctx<'_>,
    repo: &RepoName,
    id: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let digest = digest_param(ctx)?.ok_or_else(|| {
        ApiError::new(
            Code::DigestInvalid,
            "completing an upload needs ?digest=<algorithm>:<hex>",
        )
    })?;
    let range = content_range(ctx)?;
    let (body, stalled) = idle_limited(body, ctx.registry.limits().body_idle_timeout);
    let b = ctx
        .registry
        .finish_upload(
            repo,
            id,
            &digest,
            range,
            content_length(ctx),
            body,
            ctx.origin,
        )
        .await
        .map_err(|e| stalled.explain(e))?;
    Ok(created(repo, &b))
}

/// GET: how much of the upload the registry holds.
pub(super) async fn status(ctx: &Ctx<'_>, repo: &RepoName, id: &str) -> Result<Response, ApiError> {
    let p = ctx.registry.upload_status(repo, id).await?;
    Ok(empty(
        StatusCode::NO_CONTENT,
        &[
            ("Location", upload_location(repo, &p.id)),
            ("Range", upload_range(p.size)),
            ("Docker-Upload-UUID", p.id.clone()),
        ],
    ))
}

/// DELETE: cancel the upload.
pub(super) async fn cancel(ctx: &Ctx<'_>, repo: &RepoName, id: &str) -> Result<Response, ApiError> {
    ctx.registry.cancel_upload(repo, id).await?;
    Ok(empty(StatusCode::NO_CONTENT, &[]))
}
