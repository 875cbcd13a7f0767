//! Listings: tags (end-8a/b), catalog, referrers (end-12a/b).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::{number, Ctx};
use crate::domain::{media, Digest, RepoName};
use crate::error::{ApiError, Code};
use crate::service::ReferrersQuery;

/// A JSON page of `names` (serialised as `body`) with an RFC 8288 `Link` to
/// the next one, which starts after the page's last name, when more remain.
fn paged(
    base: &str,
    n: Option<u32>,
    more: bool,
    names: &[String],
    body: impl serde::Serialize,
) -> Response {
    // Sized for the names up front (a buffer grown by doubling is four or
    // five reallocations per page, on a path that is mostly allocator work).
    let size = names.iter().map(|t| t.len() + 3).sum::<usize>() + base.len() + 64;
    let mut buf = Vec::with_capacity(size);
    if let Err(e) = serde_json::to_writer(&mut buf, &body) {
        return ApiError::new(Code::Internal, format!("listing: {e}")).into_response();
    }
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        buf,
    )
        .into_response();
    if more {
        if let Some(last) = names.last() {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            q.append_pair("last", last);
            let link = format!("<{base}?{}>; rel=\"next\"", q.finish());
            if let Ok(v) = link.parse() {
                resp.headers_mut().insert(header::LINK, v);
            }
        }
    }
    resp
}

/// A tag list page (end-8a/b), serialised straight from the page's names
/// rather than through a copy of them as a JSON tree.
#[derive(serde::Serialize)]
struct TagsBody<'a> {
    name: &'a str,
    tags: &'a [String],
}

/// A catalog page, serialised like [`TagsBody`].
#[derive(serde::Serialize)]
struct CatalogBody<'a> {
    repositories: &'a [String],
}

pub(super) async fn tags(ctx: &Ctx<'_>, repo: &RepoName) -> Result<Response, ApiError> {
    let n = number(ctx.query, "n")?;
    let page = ctx.registry.tags(repo, n, ctx.query.get("last")).await?;
    let tags = page.items();
    let body = TagsBody {
        name: repo.as_str(),
        tags,
    };
    let base = format!("/v2/{repo}/tags/list");
    Ok(paged(&base, n, page.more, tags, body))
}

pub(super) async fn catalog(ctx: &Ctx<'_>) -> Result<Response, ApiError> {
    let n = number(ctx.query, "n")?;
    let page = ctx.registry.catalog(n, ctx.query.get("last")).await?;
    let body = CatalogBody {
        repositories: &page.items,
    };
    Ok(paged("/v2/_catalog", n, page.more, &page.items, body))
}

pub(super) async fn referrers(
    ctx: &Ctx<'_>,
    repo: &RepoName,
    subject: &Digest,
) -> Result<Response, ApiError> {
    let q = ReferrersQuery {
        artifact_type: ctx.query.get("artifactType").map(str::to_string),
    };
    let list = ctx.registry.referrers(repo, subject, &q).await?;
    let manifests: Vec<Value> = list
        .into_iter()
        .map(|r| {
            let mut d = Map::new();
            d.insert("mediaType".into(), r.media_type.into());
            d.insert("digest".into(), r.digest.into());
            d.insert("size".into(), r.size.into());
            if let Some(a) = r.artifact_type {
                d.insert("artifactType".into(), a.into());
            }
            if let Some(a) = r.annotations {
                d.insert("annotations".into(), json!(a));
            }
            Value::Object(d)
        })
        .collect();
    let body = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests});
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, media::OCI_INDEX);
    if q.artifact_type.is_some() {
        resp = resp.header("OCI-Filters-Applied", "artifactType");
    }
    Ok(resp
        .body(axum::body::Body::from(body.to_string()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}
