//! Parsed, validated values of the OCI distribution spec.
//!
//! Everything here is pure: no I/O, no HTTP. Values are parsed once at the edge
//! ("parse, don't validate") so that the layers below never see a malformed name,
//! reference, digest or range.

pub mod digest;
pub mod manifest;
pub mod media;
pub mod name;
pub mod provenance;
pub mod range;
pub mod session;
pub mod sha256;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use name::{NameError, Reference, RepoName, Tag};
pub use range::{ByteRange, ContentRange, RangeError};
pub use session::SessionId;
