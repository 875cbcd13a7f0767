//! Manifests: end-3 (GET/HEAD), end-7 (PUT, with `?tag=`), end-9 (DELETE).

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;

use super::{empty, header_str, Ctx};
use crate::domain::{media, Reference, RepoName, Tag};
use crate::error::{ApiError, Code};

fn accept(ctx: &Ctx<'_>) -> Vec<String> {
    media::accepted(
        ctx.headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

pub(super) async fn get(
    ctx: &Ctx<'_>,
    repo: &RepoName,
    r: &Reference,
    head: bool,
) -> Result<Response, ApiError> {
    let accept = accept(ctx);
    let (record, body) = if head {
        (
            ctx.registry.manifest_record(repo, r, &accept).await?,
            Body::empty(),
        )
    } else {
        let c = ctx.registry.manifest(repo, r, &accept).await?;
        (c.record, Body::from(c.bytes))
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &record.media_type)
        .header(header::CONTENT_LENGTH, record.size)
        .header("Docker-Content-Digest", &record.digest)
        .header(header::ETAG, format!("\"{}\"", record.digest))
        .body(body)
        .map_err(|e| ApiError::new(Code::Internal, e.to_string()))
}

pub(super) async fn put(
    ctx: &Ctx<'_>,
    repo: &RepoName,
    r: &Reference,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = ctx.registry.limits().max_manifest_bytes;
    let bytes = http_body_util::Limited::new(body, limit as usize + 1)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::new(
                    Code::SizeInvalid,
                    format!("manifest is larger than the limit of {limit} bytes"),
                )
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            } else {
                ApiError::new(
                    Code::ManifestInvalid,
                    format!("manifest body could not be read: {e}"),
                )
            }
        })?
        .to_bytes();
    let tags = ctx
        .query
        .all("tag")
        .map(|t| t.parse::<Tag>())
        .collect::<Result<Vec<_>, _>>()?;
    let pushed = ctx
        .registry
        .put_manifest(
            repo,
            r,
            &tags,
            header_str(ctx.headers, &header::CONTENT_TYPE),
            bytes,
            ctx.origin,
        )
        .await?;
    let mut headers = vec![
        (
            "Location",
            format!("/v2/{repo}/manifests/{}", pushed.digest),
        ),
        ("Docker-Content-Digest", pushed.digest.to_string()),
    ];
    if let Some(s) = pushed.subject {
        headers.push(("OCI-Subject", s.to_string()));
    }
    Ok(empty(StatusCode::CREATED, &headers))
}

pub(super) async fn delete(
    ctx: &Ctx<'_>,
    repo: &RepoName,
    r: &Reference,
) -> Result<Response, ApiError> {
    ctx.registry.delete_manifest(repo, r, ctx.origin).await?;
    Ok(empty(StatusCode::ACCEPTED, &[]))
}
