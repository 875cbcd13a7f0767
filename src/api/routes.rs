//! Routes of the distribution API as data.
//!
//! Repository names contain slashes (`team/app/api`), so the router cannot match
//! them with path parameters; instead every `/v2/…` path is parsed here into a
//! [`Route`], from the right, where the spec's fixed words are. Each route has a
//! stable template name (used in logs and, later, metrics; never the raw path).

use crate::domain::{Digest, NameError, Reference, RepoName};
use crate::error::{ApiError, Code};

/// A parsed `/v2/…` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// end-1: `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// end-2, end-10: `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// end-4a/4b, end-11: `/v2/<name>/blobs/uploads/`
    Uploads(RepoName),
    /// end-5, end-6, end-13, upload status: `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// end-3, end-7, end-9: `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// A manifest URL whose reference is neither a valid tag nor a digest. Reads
    /// of it are `404` (no such manifest can exist, as the conformance suite
    /// requires); a push to it is a `400`.
    BadReference(RepoName, String, NameError),
    /// end-8a/8b: `/v2/<name>/tags/list`
    Tags(RepoName),
    /// end-12a/12b: `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

impl Route {
    /// The route's template, e.g. `/v2/{name}/blobs/{digest}`.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Base => "/v2/",
            Route::Catalog => "/v2/_catalog",
            Route::Blob(..) => "/v2/{name}/blobs/{digest}",
            Route::Uploads(_) => "/v2/{name}/blobs/uploads/",
            Route::Upload(..) => "/v2/{name}/blobs/uploads/{id}",
            Route::Manifest(..) | Route::BadReference(..) => "/v2/{name}/manifests/{reference}",
            Route::Tags(_) => "/v2/{name}/tags/list",
            Route::Referrers(..) => "/v2/{name}/referrers/{digest}",
        }
    }

    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Blob(n, _)
            | Route::Uploads(n)
            | Route::Upload(n, _)
            | Route::Manifest(n, _)
            | Route::BadReference(n, ..)
            | Route::Tags(n)
            | Route::Referrers(n, _) => Some(n),
        }
    }

    /// Parses a request path. `Ok(None)` means "no such endpoint" (404); an
    /// endpoint with a malformed name, digest or reference is an OCI error.
    pub fn parse(path: &str) -> Result<Option<Route>, ApiError> {
        let Some(rest) = path.strip_prefix("/v2") else {
            return Ok(None);
        };
        if rest.is_empty() || rest == "/" {
            return Ok(Some(Route::Base));
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Ok(None);
        };
        if rest == "_catalog" {
            return Ok(Some(Route::Catalog));
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let name = |k: usize| -> Result<RepoName, ApiError> {
            if k == 0 {
                return Err(ApiError::new(Code::NameInvalid, "repository name is empty"));
            }
            Ok(segs[..k].join("/").parse()?)
        };
        if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
            return Ok(Some(Route::Tags(name(n - 2)?)));
        }
        if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
            return Ok(Some(Route::Uploads(name(n - 2)?)));
        }
        if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
            let id = segs[n - 1];
            if id.is_empty() {
                return Ok(Some(Route::Uploads(name(n - 3)?)));
            }
            return Ok(Some(Route::Upload(name(n - 3)?, id.to_string())));
        }
        if n >= 3 && segs[n - 2] == "blobs" {
            return Ok(Some(Route::Blob(name(n - 2)?, segs[n - 1].parse()?)));
        }
        if n >= 3 && segs[n - 2] == "manifests" {
            let repo = name(n - 2)?;
            return Ok(Some(match segs[n - 1].parse() {
                Ok(r) => Route::Manifest(repo, r),
                Err(e) => Route::BadReference(repo, segs[n - 1].to_string(), e),
            }));
        }
        if n >= 3 && segs[n - 2] == "referrers" {
            return Ok(Some(Route::Referrers(name(n - 2)?, segs[n - 1].parse()?)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn p(s: &str) -> Route {
        Route::parse(s).unwrap().unwrap()
    }

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(p("/v2/"), Route::Base);
        assert_eq!(p("/v2"), Route::Base);
        assert_eq!(p("/v2/_catalog"), Route::Catalog);
        assert!(
            matches!(p(&format!("/v2/team/app/api/blobs/{D}")), Route::Blob(n, _) if n.as_str() == "team/app/api")
        );
        assert!(matches!(p("/v2/a/blobs/uploads/"), Route::Uploads(n) if n.as_str() == "a"));
        assert!(matches!(p("/v2/a/blobs/uploads"), Route::Uploads(_)));
        assert!(
            matches!(p("/v2/a/b/blobs/uploads/xyz"), Route::Upload(n, id) if n.as_str() == "a/b" && id == "xyz")
        );
        assert!(matches!(
            p("/v2/a/manifests/latest"),
            Route::Manifest(_, Reference::Tag(_))
        ));
        assert!(matches!(
            p(&format!("/v2/a/manifests/{D}")),
            Route::Manifest(_, Reference::Digest(_))
        ));
        assert!(matches!(p("/v2/a/tags/list"), Route::Tags(_)));
        assert!(matches!(
            p(&format!("/v2/a/referrers/{D}")),
            Route::Referrers(..)
        ));
        // A repository may itself be called "blobs" or "manifests".
        assert!(
            matches!(p("/v2/manifests/manifests/x"), Route::Manifest(n, _) if n.as_str() == "manifests")
        );
    }

    #[test]
    fn malformed_parts_are_oci_errors() {
        let e = Route::parse("/v2/Bad/manifests/x").unwrap_err();
        assert_eq!(e.code, Code::NameInvalid);
        let e = Route::parse("/v2/a/blobs/sha256:zz").unwrap_err();
        assert_eq!(e.code, Code::DigestInvalid);
        assert!(matches!(
            Route::parse("/v2/a/manifests/-bad").unwrap(),
            Some(Route::BadReference(_, r, NameError::InvalidTag(_))) if r == "-bad"
        ));
        assert!(Route::parse("/v2/a/unknown/x").unwrap().is_none());
        assert!(Route::parse("/other").unwrap().is_none());
        // Found by the fuzzer: a path continuing "/v2" without a slash.
        assert!(Route::parse("/v2\u{6e8}").unwrap().is_none());
        assert!(Route::parse("/v2x/manifests/latest").unwrap().is_none());
    }

    proptest! {
        #[test]
        fn never_panics(s in "/v2(/[a-z0-9:._-]{0,12}){0,6}/?") {
            let _ = Route::parse(&s);
        }
    }
}
