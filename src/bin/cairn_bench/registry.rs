//! The OCI Distribution calls the benchmark makes, over one pooled HTTP/1.1 client
//! (manifest GETs and tag pages over `rawget`'s connections instead).
//!
//! Every URL the client follows (upload `Location`s, `Link` pages, redirects) is
//! resolved against the base URL and refused unless it has the same origin, so the
//! tool only ever talks to the registry it was given.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LINK, LOCATION};
use reqwest::{Client, Method, Response, StatusCode};
use sha2::{Digest as _, Sha256};
use url::Url;

use super::payload::Blob;
use super::rawget::{RawGets, RawResponse};

pub type Result<T> = std::result::Result<T, String>;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

pub struct Registry {
    http: Client,
    base: Url,
    /// Manifest GETs and tag pages, on `http://` registries (see `rawget`).
    raw: Option<RawGets>,
}

impl Registry {
    pub fn new(base: &str, pool: usize, timeout: Duration) -> Result<Registry> {
        let mut base = Url::parse(base).map_err(|e| format!("--url {base}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!(
                "--url {base}: only http:// and https:// are supported"
            ));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let origin = base.origin();
        let redirects = reqwest::redirect::Policy::custom(move |a| {
            if a.url().origin() == origin && a.previous().len() < 5 {
                a.follow()
            } else {
                a.stop()
            }
        });
        let http = Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .redirect(redirects)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let raw = RawGets::new(&base, timeout);
        Ok(Registry { http, base, raw })
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.resolve(path.trim_start_matches('/'))
    }

    /// A `Location` or `Link` target, which must stay on the base URL's origin.
    fn resolve(&self, target: &str) -> Result<Url> {
        let u = self
            .base
            .join(target)
            .map_err(|e| format!("bad URL {target:?}: {e}"))?;
        if u.origin() != self.base.origin() {
            return Err(format!("refusing to follow {u} (not on {})", self.base));
        }
        Ok(u)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Response> {
        rb.send().await.map_err(|e| format!("{e:#}"))
    }

    async fn expect(resp: Response, want: &[StatusCode], what: &str) -> Result<Response> {
        if want.contains(&resp.status()) {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(300).collect();
        Err(format!("{what}: HTTP {status}: {body}"))
    }

    fn location(&self, headers: &HeaderMap, what: &str) -> Result<Url> {
        let loc = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("{what}: no Location header"))?;
        self.resolve(loc)
    }

    /// `GET /v2/`: the registry answers without authentication.
    pub async fn ping(&self) -> Result<()> {
        let r = self.send(self.http.get(self.url("v2/")?)).await?;
        Self::expect(r, &[StatusCode::OK], "GET /v2/")
            .await
            .map(drop)
    }

    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let u = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let r = self.send(self.http.head(u)).await?;
        match r.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(format!("HEAD blob: HTTP {s}")),
        }
    }

    async fn start_upload(&self, repo: &str) -> Result<Url> {
        let u = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        let r = self
            .send(self.http.post(u).header(CONTENT_LENGTH, "0"))
            .await?;
        let r = Self::expect(r, &[StatusCode::ACCEPTED], "POST upload").await?;
        self.location(r.headers(), "POST upload")
    }

    fn with_digest(mut u: Url, digest: &str) -> Url {
        u.query_pairs_mut().append_pair("digest", digest);
        u
    }

    /// POST, then PUT `?digest=` with the whole blob as the body.
    pub async fn push_monolithic(&self, repo: &str, blob: &Blob) -> Result<()> {
        let loc = self.start_upload(repo).await?;
        let parts = [blob.prefix.clone(), blob.tail.clone()];
        let stream = futures::stream::iter(
            parts
                .into_iter()
                .filter(|b| !b.is_empty())
                .map(Ok::<Bytes, std::convert::Infallible>),
        );
        let req = self
            .http
            .put(Self::with_digest(loc, &blob.digest))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, blob.len())
            .body(reqwest::Body::wrap_stream(stream));
        let r = self.send(req).await?;
        let r = Self::expect(r, &[StatusCode::CREATED], "PUT blob").await?;
        drain(r).await.map(drop)
    }

    /// POST, PATCH chunks of `chunk` bytes with `Content-Range`, then PUT `?digest=`.
    pub async fn push_chunked(&self, repo: &str, blob: &Blob, chunk: u64) -> Result<()> {
        let mut loc = self.start_upload(repo).await?;
        let size = blob.len();
        let mut off = 0;
        while off < size {
            let end = (off + chunk).min(size);
            let req = self
                .http
                .request(Method::PATCH, loc.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header("Content-Range", format!("{}-{}", off, end - 1))
                .header(CONTENT_LENGTH, end - off)
                .body(blob.slice(off, end));
            let r = self.send(req).await?;
            let r = Self::expect(r, &[StatusCode::ACCEPTED], "PATCH chunk").await?;
            loc = self.location(r.headers(), "PATCH chunk")?;
            drain(r).await?;
            off = end;
        }
        let req = self
            .http
            .put(Self::with_digest(loc, &blob.digest))
            .header(CONTENT_LENGTH, "0");
        let r = self.send(req).await?;
        let r = Self::expect(r, &[StatusCode::CREATED], "PUT (close upload)").await?;
        drain(r).await.map(drop)
    }

    /// GET a blob, streaming it; checks the length and, with `verify`, the digest.
    pub async fn pull_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        verify: bool,
    ) -> Result<u64> {
        let u = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let r = self.send(self.http.get(u)).await?;
        let mut r = Self::expect(r, &[StatusCode::OK], "GET blob").await?;
        let mut hasher = verify.then(Sha256::new);
        let mut n = 0u64;
        while let Some(c) = r
            .chunk()
            .await
            .map_err(|e| format!("GET blob body: {e:#}"))?
        {
            n += c.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&c);
            }
        }
        if n != size {
            return Err(format!("GET blob: got {n} bytes, expected {size}"));
        }
        if let Some(h) = hasher {
            let got = format!("sha256:{}", hex::encode(h.finalize()));
            if got != digest {
                return Err(format!("GET blob: content is {got}, expected {digest}"));
            }
        }
        Ok(n)
    }

    /// PUT a manifest under `reference`; returns its digest (checked against the
    /// registry's `Docker-Content-Digest` when it sends one).
    pub async fn put_manifest(&self, repo: &str, reference: &str, body: &Bytes) -> Result<String> {
        let digest = sha256_digest(body);
        let u = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let req = self
            .http
            .put(u)
            .header(CONTENT_TYPE, OCI_MANIFEST)
            .body(body.clone());
        let r = self.send(req).await?;
        let r = Self::expect(r, &[StatusCode::CREATED], "PUT manifest").await?;
        if let Some(d) = r.headers().get("Docker-Content-Digest") {
            if d.as_bytes() != digest.as_bytes() {
                return Err(format!(
                    "PUT manifest: registry says {d:?}, expected {digest}"
                ));
            }
        }
        drain(r).await?;
        Ok(digest)
    }

    /// A GET whose whole body is read: over `rawget`'s connections on
    /// `http://` registries, else through the pooled client.
    async fn get_small(&self, u: Url, accept: Option<&str>) -> Result<RawResponse> {
        if let Some(raw) = &self.raw {
            return raw.get(target(&u), accept).await;
        }
        let mut rb = self.http.get(u);
        if let Some(a) = accept {
            rb = rb.header(ACCEPT, a);
        }
        let r = self.send(rb).await?;
        let (status, headers) = (r.status(), r.headers().clone());
        let body = r.bytes().await.map_err(|e| format!("GET body: {e:#}"))?;
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// GET a manifest by tag or digest; checks the bytes hash to `digest`.
    pub async fn get_manifest(&self, repo: &str, reference: &str, digest: &str) -> Result<u64> {
        let u = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let r = self.get_small(u, Some(MANIFEST_ACCEPT)).await?;
        let body = raw_expect(r, StatusCode::OK, "GET manifest")?.body;
        let got = sha256_digest(&body);
        if got != digest {
            return Err(format!("GET manifest: content is {got}, expected {digest}"));
        }
        Ok(body.len() as u64)
    }

    /// Lists every tag, `n` per page, following `Link: <…>; rel="next"`.
    /// Returns (tags, pages, bytes received).
    pub async fn list_tags(&self, repo: &str, n: usize) -> Result<(usize, usize, u64)> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let mut next = Some(self.url(&format!("v2/{repo}/tags/list?n={n}"))?);
        let (mut tags, mut pages, mut bytes) = (0usize, 0usize, 0u64);
        while let Some(u) = next.take() {
            pages += 1;
            if pages > 100_000 {
                return Err("tag list: more than 100000 pages".into());
            }
            let r = self.get_small(u, None).await?;
            if r.status == StatusCode::NOT_FOUND && pages == 1 {
                return Ok((0, 1, 0));
            }
            let r = raw_expect(r, StatusCode::OK, "GET tags/list")?;
            let (link, body) = (header_text(&r.headers, LINK), r.body);
            next = match link {
                Some(l) => next_link(&l).map(|t| self.resolve(&t)).transpose()?,
                None => None,
            };
            bytes += body.len() as u64;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| format!("GET tags/list: bad JSON: {e}"))?;
            tags += page.tags.map_or(0, |t| t.len());
        }
        Ok((tags, pages, bytes))
    }
}

fn header_text(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The path and query of `u`, which the caller has checked is on the base URL.
fn target(u: &Url) -> &str {
    &u[url::Position::BeforePath..]
}

/// `r` if it has status `want`; else an error quoting the start of its body.
fn raw_expect(r: RawResponse, want: StatusCode, what: &str) -> Result<RawResponse> {
    if r.status == want {
        return Ok(r);
    }
    let body: String = String::from_utf8_lossy(&r.body).chars().take(300).collect();
    Err(format!("{what}: HTTP {}: {body}", r.status))
}

/// Reads and discards a response body.
async fn drain(mut r: Response) -> Result<u64> {
    let mut n = 0;
    while let Some(c) = r.chunk().await.map_err(|e| format!("body: {e:#}"))? {
        n += c.len() as u64;
    }
    Ok(n)
}

pub fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// The target of the `rel="next"` link in an RFC 8288 `Link` header value.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| target.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::next_link;

    #[test]
    fn parses_next_links() {
        assert_eq!(
            next_link("</v2/a/tags/list?n=100&last=t0099>; rel=\"next\"").as_deref(),
            Some("/v2/a/tags/list?n=100&last=t0099")
        );
        assert_eq!(next_link("<x>; rel=\"prev\""), None);
        assert_eq!(
            next_link("<p>; rel=prev, <q>; rel=\"next\"").as_deref(),
            Some("q")
        );
    }
}
