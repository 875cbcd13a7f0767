//! The one table of OCI error codes and the one place that writes error responses.
//!
//! Handlers never build error bodies: they return [`ApiError`], usually via `?` on
//! a `service::Error`, whose mapping to a code and status is [`From`] below. A
//! 5xx logs the whole source chain and sends the client a generic message.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::{DigestError, NameError, RangeError};
use crate::service;

/// Error codes of the distribution spec (and the few Cairn adds), each with its
/// status and the description the spec gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// The request's range cannot be satisfied (416).
    RangeInvalid,
    /// A provenance document that cannot be parsed, or whose statements are
    /// about another artifact (400).
    ProvenanceInvalid,
    /// A dependency (database, object store) is unavailable; retry later (503).
    Unavailable,
    /// The blob store has no space left; nothing of the request was kept (507).
    InsufficientStorage,
    /// A bug or an unexpected failure (500).
    Internal,
}

impl Code {
    /// `(code, status, description)`: the single table.
    pub fn info(self) -> (&'static str, StatusCode, &'static str) {
        use Code::*;
        match self {
            BlobUnknown => (
                "BLOB_UNKNOWN",
                StatusCode::NOT_FOUND,
                "blob unknown to registry",
            ),
            BlobUploadInvalid => (
                "BLOB_UPLOAD_INVALID",
                StatusCode::BAD_REQUEST,
                "blob upload invalid",
            ),
            BlobUploadUnknown => (
                "BLOB_UPLOAD_UNKNOWN",
                StatusCode::NOT_FOUND,
                "blob upload unknown to registry",
            ),
            DigestInvalid => (
                "DIGEST_INVALID",
                StatusCode::BAD_REQUEST,
                "provided digest did not match uploaded content",
            ),
            ManifestBlobUnknown => (
                "MANIFEST_BLOB_UNKNOWN",
                StatusCode::BAD_REQUEST,
                "manifest references a manifest or blob unknown to registry",
            ),
            ManifestInvalid => (
                "MANIFEST_INVALID",
                StatusCode::BAD_REQUEST,
                "manifest invalid",
            ),
            ManifestUnknown => (
                "MANIFEST_UNKNOWN",
                StatusCode::NOT_FOUND,
                "manifest unknown to registry",
            ),
            NameInvalid => (
                "NAME_INVALID",
                StatusCode::BAD_REQUEST,
                "invalid repository name",
            ),
            NameUnknown => (
                "NAME_UNKNOWN",
                StatusCode::NOT_FOUND,
                "repository name not known to registry",
            ),
            SizeInvalid => (
                "SIZE_INVALID",
                StatusCode::BAD_REQUEST,
                "provided length did not match content length",
            ),
            Unauthorized => (
                "UNAUTHORIZED",
                StatusCode::UNAUTHORIZED,
                "authentication required",
            ),
            Denied => (
                "DENIED",
                StatusCode::FORBIDDEN,
                "requested access to the resource is denied",
            ),
            Unsupported => (
                "UNSUPPORTED",
                StatusCode::METHOD_NOT_ALLOWED,
                "the operation is unsupported",
            ),
            TooManyRequests => (
                "TOOMANYREQUESTS",
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests",
            ),
            RangeInvalid => (
                "RANGE_INVALID",
                StatusCode::RANGE_NOT_SATISFIABLE,
                "requested range not satisfiable",
            ),
            ProvenanceInvalid => (
                "PROVENANCE_INVALID",
                StatusCode::BAD_REQUEST,
                "provenance document invalid",
            ),
            Unavailable => (
                "UNAVAILABLE",
                StatusCode::SERVICE_UNAVAILABLE,
                "service temporarily unavailable; retry",
            ),
            InsufficientStorage => (
                "INSUFFICIENT_STORAGE",
                StatusCode::INSUFFICIENT_STORAGE,
                "the registry's storage is full",
            ),
            Internal => (
                "UNKNOWN",
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            ),
        }
    }
}

/// An error response: code, status (the code's unless overridden), message.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub status: StatusCode,
    pub message: String,
    /// Structured `detail` of the error body (`null` when absent).
    pub detail: Option<serde_json::Value>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            status: code.info().1,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: impl ToString) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, v));
        }
        self
    }

    fn internal(code: Code, err: &dyn std::error::Error) -> ApiError {
        let mut chain = err.to_string();
        let mut src = err.source();
        while let Some(s) = src {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            src = s.source();
        }
        tracing::error!(error = %chain, "request failed");
        let message = match code {
            Code::Unavailable => "a backing service is unavailable; retry the request",
            Code::InsufficientStorage => {
                "the registry's blob storage is full (no space left on device); \
                 nothing of this request was stored"
            }
            _ => "internal server error; the registry log has the details",
        };
        ApiError::new(code, message)
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Digest(d) => d.into(),
            NameError::InvalidTag(_) => ApiError::new(Code::ManifestInvalid, e.to_string()),
            _ => ApiError::new(Code::NameInvalid, e.to_string()),
        }
    }
}

impl From<DigestError> for ApiError {
    fn from(e: DigestError) -> Self {
        ApiError::new(Code::DigestInvalid, e.to_string())
    }
}

impl From<service::Error> for ApiError {
    fn from(e: service::Error) -> Self {
        use service::Error as E;
        let msg = e.to_string();
        match e {
            E::NameUnknown(_) => ApiError::new(Code::NameUnknown, msg),
            E::Name(n) => n.into(),
            E::BlobUnknown(_) => ApiError::new(Code::BlobUnknown, msg),
            E::UploadUnknown(_) => ApiError::new(Code::BlobUploadUnknown, msg),
            E::ManifestUnknown(_) | E::NotAcceptable { .. } => {
                ApiError::new(Code::ManifestUnknown, msg)
            }
            E::ManifestBlobUnknown(_) => ApiError::new(Code::ManifestBlobUnknown, msg),
            E::ManifestInvalid(_) => ApiError::new(Code::ManifestInvalid, msg),
            E::DigestMismatch { .. } | E::DigestInvalid(_) => {
                ApiError::new(Code::DigestInvalid, msg)
            }
            E::ChunkOutOfOrder { size, .. } => ApiError::new(Code::BlobUploadInvalid, msg)
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                .with_header(header::RANGE, upload_range(size)),
            E::SizeInvalid(_) => ApiError::new(Code::SizeInvalid, msg),
            E::RangeNotSatisfiable { size } => ApiError::new(Code::RangeInvalid, msg)
                .with_header(header::CONTENT_RANGE, format!("bytes */{size}")),
            E::Range(RangeError::Malformed(_)) => {
                ApiError::new(Code::RangeInvalid, msg).with_status(StatusCode::BAD_REQUEST)
            }
            E::Range(RangeError::Unsatisfiable(_)) => ApiError::new(Code::RangeInvalid, msg),
            E::TooLarge { .. } => {
                ApiError::new(Code::SizeInvalid, msg).with_status(StatusCode::PAYLOAD_TOO_LARGE)
            }
            E::Body(_) => ApiError::new(Code::BlobUploadInvalid, msg),
            E::Unsupported(_) => ApiError::new(Code::Unsupported, msg),
            E::Protected {
                ref repository,
                ref digest,
                ref reasons,
            } => {
                let detail = json!({
                    "repository": repository.as_str(),
                    "digest": digest,
                    "protected_by": reasons,
                });
                ApiError::new(Code::Denied, msg)
                    .with_status(StatusCode::CONFLICT)
                    .with_detail(detail)
            }
            E::TooManyUploads(_) => ApiError::new(Code::TooManyRequests, msg)
                .with_header(header::RETRY_AFTER, "10".to_string()),
            E::Collecting(_) => ApiError::new(Code::Unavailable, msg)
                .with_header(header::RETRY_AFTER, "1".to_string()),
            E::JobBusy(_) => ApiError::new(Code::Unavailable, msg)
                .with_header(header::RETRY_AFTER, "10".to_string()),
            E::Invalid(_) => {
                ApiError::new(Code::Unsupported, msg).with_status(StatusCode::BAD_REQUEST)
            }
            E::ProvenanceInvalid(_) => ApiError::new(Code::ProvenanceInvalid, msg),
            // 409 rather than DENIED's usual 403: the request conflicts with the
            // tag's current state; the same credentials could not make it succeed.
            E::Denied {
                repository,
                attempted,
                tags,
            } => {
                let list: Vec<_> = tags
                    .iter()
                    .map(|t| json!({"tag": t.tag, "existing_digest": t.held, "rule": t.rule}))
                    .collect();
                let mut detail = json!({
                    "repository": repository.as_str(),
                    "attempted_digest": attempted.as_ref().map(|d| d.to_string()),
                    "tags": list,
                });
                if let [one] = tags.as_slice() {
                    detail["tag"] = json!(one.tag);
                    detail["existing_digest"] = json!(one.held);
                    detail["rule"] = json!(one.rule);
                }
                ApiError::new(Code::Denied, msg)
                    .with_status(StatusCode::CONFLICT)
                    .with_detail(detail)
            }
            // Bytes the metadata names are missing: an inconsistency, not
            // something a retry fixes.
            E::Storage(ref s @ crate::storage::Error::NotFound(_)) => {
                ApiError::internal(Code::Internal, s)
            }
            E::Storage(ref s) if s.is_out_of_space() => {
                ApiError::internal(Code::InsufficientStorage, s)
            }
            E::Storage(ref s) => ApiError::internal(Code::Unavailable, s)
                .with_header(header::RETRY_AFTER, "5".to_string()),
            E::Metadata(ref m) if m.is_unavailable() => ApiError::internal(Code::Unavailable, m)
                .with_header(header::RETRY_AFTER, "5".to_string()),
            E::Metadata(ref m) => ApiError::internal(Code::Internal, m),
        }
    }
}

/// The `Range` header value of an upload holding `size` bytes: the inclusive
/// range received so far. Empty uploads report `0-0`, as distribution does and
/// clients expect.
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, _, _) = self.code.info();
        let body =
            json!({"errors": [{"code": code, "message": self.message, "detail": self.detail}]});
        let mut resp = (self.status, axum::Json(body)).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_distinct_name() {
        use Code::*;
        let all = [
            BlobUnknown,
            BlobUploadInvalid,
            BlobUploadUnknown,
            DigestInvalid,
            ManifestBlobUnknown,
            ManifestInvalid,
            ManifestUnknown,
            NameInvalid,
            NameUnknown,
            SizeInvalid,
            Unauthorized,
            Denied,
            Unsupported,
            TooManyRequests,
            RangeInvalid,
            ProvenanceInvalid,
            Unavailable,
            InsufficientStorage,
            Internal,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|c| c.info().0).collect();
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn out_of_order_chunks_are_416_with_the_current_range() {
        let e: ApiError = service::Error::ChunkOutOfOrder { start: 5, size: 10 }.into();
        assert_eq!(e.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(e.headers[0].1, "0-9");
    }
}
