//! The registry's use cases: what happens when a blob is uploaded, a manifest
//! pushed, a tag resolved. Handlers call these; these call storage and metadata.
//!
//! The ordering rule that keeps acknowledged data safe lives here: **bytes are
//! written to the object store before the metadata that makes them visible is
//! committed.** A crash between the two leaves unreferenced bytes (reclaimed by
//! garbage collection), never a row pointing at missing content.

mod audit;
mod console;
mod gc;
mod provenance;
mod pull_stats;
mod registry;
mod retention;
mod stats;

/// The jobs a manual run takes the lock of (see [`Registry::exclusively`]).
pub use crate::metadata::Job;
pub use console::{Activity, ConsolePage, MAX_CONFIG_BYTES};
pub use gc::GcReport;
pub use gc::JOB_LOCK_WAIT;
pub use provenance::{IngestedStatement, EXTRACTION_SLOTS, MAX_ATTESTATION_BYTES};
pub use pull_stats::{FlushFailed, PullStats};
pub use registry::{
    BlobLocation, Limits, ManifestContent, PushedManifest, ReferrersQuery, Registry,
    UploadProgress, TAG_CACHE_TTL, TAG_LIST_CACHE_MAX,
};
pub use retention::{ApplyReport, Plan, RollbackAnswer};
pub use stats::ArtifactPage;

use crate::domain::manifest::ManifestError;
use crate::domain::{Digest, NameError, RangeError, RepoName};
use crate::{metadata, storage};

/// Everything that can go wrong in a use case; `crate::error` maps each variant
/// to one OCI error code and HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("repository {0} is not known to this registry")]
    NameUnknown(RepoName),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("blob {0} is not known to this repository")]
    BlobUnknown(Digest),
    #[error("upload {0} is not known: it was finished, cancelled or never started")]
    UploadUnknown(String),
    #[error("manifest {0} is not known to this repository")]
    ManifestUnknown(String),
    #[error(
        "manifest {reference} is stored as {media_type}, which the Accept header does not list"
    )]
    NotAcceptable {
        reference: String,
        media_type: String,
    },
    #[error("manifest references {0}, which is not in this repository; push it first")]
    ManifestBlobUnknown(Digest),
    #[error(transparent)]
    ManifestInvalid(#[from] ManifestError),
    #[error("the content's digest is {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{0}")]
    DigestInvalid(String),
    /// A chunk that does not start where the upload ends (416).
    #[error("chunk starts at byte {start} but the upload has {size} bytes; send the chunk that starts at {size}")]
    ChunkOutOfOrder { start: u64, size: u64 },
    #[error("{0}")]
    SizeInvalid(String),
    /// An unsatisfiable `Range` on a blob GET (416).
    #[error("range not satisfiable: the blob has {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error(transparent)]
    Range(RangeError),
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the request body could not be read: {0}")]
    Body(String),
    #[error("{0}")]
    Unsupported(String),
    /// An immutable tag would move or disappear; nothing was changed.
    #[error("{}", denied_message(repository, attempted.as_ref(), tags))]
    Denied {
        repository: RepoName,
        /// The digest a push tried to bind (`None` for a delete).
        attempted: Option<Digest>,
        tags: Vec<metadata::DeniedTag>,
    },
    /// A rollback target or held artifact (or what one references) would be
    /// deleted; nothing was changed.
    #[error("{digest} in {repository} is protected ({}); it cannot be deleted while that holds", reasons.join("; "))]
    Protected {
        repository: RepoName,
        digest: String,
        reasons: Vec<String>,
    },
    /// Garbage collection is deleting these bytes right now (only possible with
    /// a grace period shorter than the request); retrying succeeds.
    #[error("{0} is being garbage-collected; retry the request")]
    Collecting(String),
    /// A manual run of a job (garbage collection, retention) found it running
    /// elsewhere (a replica's scheduled run, a `cairn` command) for too long.
    #[error(
        "{0} is running on another replica or in a `cairn` command; retry when it has finished"
    )]
    JobBusy(&'static str),
    /// The registry holds as many open upload sessions as it allows.
    #[error("the registry already has {0} upload sessions in progress; finish or cancel some, or retry later")]
    TooManyUploads(u64),
    /// A request the JSON API cannot act on, with what to fix.
    #[error("{0}")]
    Invalid(String),
    /// A provenance document that cannot be parsed or is about another artifact.
    #[error("{0}")]
    ProvenanceInvalid(String),
    #[error(transparent)]
    Storage(storage::Error),
    #[error(transparent)]
    Metadata(#[from] metadata::Error),
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        match e {
            storage::Error::TooLarge { limit } => Error::TooLarge { limit },
            storage::Error::Body(b) => Error::Body(b),
            other => Error::Storage(other),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A message a person can act on: which tag, which rule, what it holds.
fn denied_message(
    repo: &RepoName,
    attempted: Option<&Digest>,
    tags: &[metadata::DeniedTag],
) -> String {
    tags.iter()
        .map(|t| match attempted {
            Some(new) => format!(
                "tag {:?} in {:?} is immutable (rule {:?}): it holds {} and cannot be moved to {}",
                t.tag,
                repo.as_str(),
                t.rule,
                t.held,
                new
            ),
            None => match &t.needs {
                None => format!(
                    "tag {:?} in {:?} is immutable (rule {:?}): it holds {} and cannot be deleted",
                    t.tag,
                    repo.as_str(),
                    t.rule,
                    t.held
                ),
                Some(needed) => format!(
                    "tag {:?} in {:?} is immutable (rule {:?}): it holds {}, which needs {}, so {} cannot be deleted",
                    t.tag,
                    repo.as_str(),
                    t.rule,
                    t.held,
                    needed,
                    needed
                ),
            },
        })
        .collect::<Vec<_>>()
        .join("; ")
}
