//! Blob reads and deletes: end-2 (GET/HEAD) and end-10 (DELETE).

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;

use super::{empty, header_str, Ctx};
use crate::domain::{Digest, RepoName};
use crate::error::ApiError;

/// GET or HEAD of a blob, honouring a single `Range`.
pub(super) async fn get(
    ctx: &Ctx<'_>,
    repo: &RepoName,
    digest: &Digest,
    head: bool,
) -> Result<Response, ApiError> {
    let blob = ctx.registry.blob(repo, digest).await?;
    let range = ctx
        .registry
        .blob_range(&blob, header_str(ctx.headers, &header::RANGE))?;
    if !head && range.is_none() && blob.size > 0 {
        if let Some(url) = ctx.registry.blob_redirect(&blob).await? {
            // The bytes go from the bucket; the registry still says which they
            // are. The body is empty, so Content-Length is 0 and the blob's
            // size travels to the pull metrics as an extension.
            let mut resp = Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, url.as_str())
                .header("Docker-Content-Digest", digest.as_str())
                .header(header::CACHE_CONTROL, "no-store")
                .header(header::CONTENT_LENGTH, 0)
                .body(Body::empty())
                .unwrap_or_else(|_| empty(StatusCode::INTERNAL_SERVER_ERROR, &[]));
            resp.extensions_mut()
                .insert(super::observe::RedirectedPull { bytes: blob.size });
            return Ok(resp);
        }
    }
    let (status, len) = match range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.len()),
        None => (StatusCode::OK, blob.size),
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("Docker-Content-Digest", digest.as_str())
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(r) = range {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", r.start, r.end, blob.size),
        );
    }
    let body = if head || len == 0 {
        Body::empty()
    } else {
        Body::from_stream(ctx.registry.blob_stream(&blob, range).await?)
    };
    Ok(b.body(body)
        .unwrap_or_else(|_| empty(StatusCode::INTERNAL_SERVER_ERROR, &[])))
}

/// end-10: the repository stops serving the blob.
pub(super) async fn delete(
    ctx: &Ctx<'_>,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Response, ApiError> {
    ctx.registry.delete_blob(repo, digest, ctx.origin).await?;
    Ok(empty(
        StatusCode::ACCEPTED,
        &[("Docker-Content-Digest", digest.to_string())],
    ))
}
