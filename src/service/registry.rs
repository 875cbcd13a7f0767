//! Use cases of the distribution API (blobs, uploads, manifests, tags, referrers).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;

use super::{Error, Result};
use crate::domain::{
    manifest, media, Algorithm, ByteRange, ContentRange, Digest, Hasher, Reference, RepoName,
    SessionId, Tag,
};
use crate::metadata::{
    self, AuditEntry, DeleteOutcome, FinishOutcome, ManifestRecord, Metadata, NewManifest, Origin,
    Page, PutOutcome, Referrer, TagAction, TagBinding, TagEvent, TagGuard, TagHistoryEntry,
};
use crate::policy::retention::{rollback_targets, RetentionPolicy};
use crate::policy::{self, Decision, RuleSet};
use crate::storage::{ByteStream, MeteredStore, StoredPart};

/// Limits applied to pushes.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest manifest accepted (bytes).
    pub max_manifest_bytes: u64,
    /// Largest blob accepted (bytes).
    pub max_blob_bytes: u64,
    /// Accept manifests whose blobs or child manifests are not in the repository.
    pub allow_sparse_manifests: bool,
    /// Page size used when a listing request gives no `n`, and the cap on `n`.
    pub max_page: u32,
    /// Open upload sessions allowed at once (0: no limit).
    pub max_upload_sessions: u64,
    /// Sessions idle this long are cancelled (zero: never). One that never
    /// received a chunk has been idle since it was opened.
    pub upload_expiry: std::time::Duration,
    /// How long a request body may send nothing (zero: forever).
    pub body_idle_timeout: std::time::Duration,
    /// `gc.grace_secs`: blobs written or referenced this recently are never
    /// collected.
    pub gc_grace: std::time::Duration,
    /// `[storage.s3] redirect_pulls`: blob GETs are redirected to presigned
    /// URLs valid this long (`None`: the registry streams the bytes itself).
    pub pull_redirect: Option<std::time::Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: u64::MAX,
            allow_sparse_manifests: false,
            max_page: 10_000,
            max_upload_sessions: 0,
            upload_expiry: std::time::Duration::ZERO,
            body_idle_timeout: std::time::Duration::ZERO,
            gc_grace: std::time::Duration::ZERO,
            pull_redirect: None,
        }
    }
}

/// Where an upload stands after a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadProgress {
    pub id: String,
    pub size: u64,
}

/// A blob that a repository can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLocation {
    pub digest: Digest,
    pub size: u64,
}

/// A manifest's bytes and what to say about them.
#[derive(Debug, Clone)]
pub struct ManifestContent {
    pub record: ManifestRecord,
    pub bytes: Bytes,
}

/// Result of a manifest push.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// A referrers query.
#[derive(Debug, Clone, Default)]
pub struct ReferrersQuery {
    pub artifact_type: Option<String>,
}

/// The registry: blobs in the object store, everything else in the database.
#[derive(Clone)]
pub struct Registry {
    meta: Metadata,
    blobs: MeteredStore,
    limits: Limits,
    rules: Arc<RuleSet>,
    retention: Arc<RetentionPolicy>,
    /// Manifest bytes by digest. Content-addressed bytes never change, so the
    /// cache needs no invalidation; whether a repository may serve a digest is
    /// [`Self::digests`]' question.
    manifests: Arc<quick_cache::sync::Cache<Digest, Bytes, ManifestWeight>>,
    /// (repository, digest) → manifest record, so a pull by digest (what a
    /// client asks for after resolving a tag, and for each platform of an
    /// index) asks the database nothing. A record never changes; it can only
    /// disappear, by a delete or retention. Deletes made here clear the cache
    /// at once; those made by another replica or a CLI run are seen within
    /// [`TAG_CACHE_TTL`]. Absent manifests are never cached, so a push is
    /// pullable at once everywhere.
    digests: Arc<quick_cache::sync::Cache<(RepoName, Digest), (Instant, ManifestRecord)>>,
    /// Immutable tag → manifest record, so a pull by tag asks the database
    /// nothing. An immutable binding never changes; it can only disappear, by
    /// retention (or a process configured to treat the tag as mutable). Such
    /// deletes made here clear the cache at once; those made by another replica
    /// or a CLI run are seen within [`TAG_CACHE_TTL`]. Mutable tags are never
    /// cached.
    tags: Arc<quick_cache::sync::Cache<(RepoName, Tag), (Instant, ManifestRecord)>>,
    /// Each repository's whole tag list, sorted, for listings (repositories of
    /// up to [`TAG_LIST_CACHE_MAX`] tags). Changes made here replace it at once;
    /// those of another replica are seen within [`TAG_CACHE_TTL`].
    tag_lists: Arc<quick_cache::sync::Cache<RepoName, TagList, TagListWeight>>,
    /// Bumped by every change that can alter a tag: a lookup that started
    /// before a change must not put its (older) answer into a cache after it.
    tag_generation: Arc<AtomicU64>,
    /// Upload sessions as last counted in the database and when, plus those
    /// started here since: the session limit is a guard against abuse, so a
    /// new session is checked against this and the table is counted at most
    /// every [`UPLOAD_COUNT_TTL`] instead of on every `POST`.
    upload_count: Arc<std::sync::Mutex<(Option<Instant>, u64)>>,
    /// Provenance extraction's turns, queue and labels cache (see
    /// `service::provenance`).
    extraction: Arc<super::provenance::Extraction>,
}

/// Weighs cached manifests by the memory an entry takes (bytes, key and the
/// cache's own bookkeeping), so the cache is bounded in bytes.
#[derive(Clone)]
struct ManifestWeight;

impl quick_cache::Weighter<Digest, Bytes> for ManifestWeight {
    fn weight(&self, d: &Digest, bytes: &Bytes) -> u64 {
        (bytes.len() + d.as_str().len()) as u64 + 160
    }
}

/// Bytes of manifests kept in memory: some ten thousand image manifests, the
/// hot set of a large registry, while the whole process stays below the
/// reference registry's footprint (BENCHMARKS.md).
const MANIFEST_CACHE_BYTES: u64 = 8 << 20;

/// How often, and how long apart, a write tries again while a garbage
/// collection deletes the digest it writes (10 s in all; a collection deletes
/// one blob in milliseconds).
const CLAIM_ATTEMPTS: u32 = 100;
const CLAIM_RETRY: Duration = Duration::from_millis(100);

/// Whether reading a session also asks if it ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    Check,
    /// The caller is about to end it: recording that end refuses an ended
    /// session, which saves a read on every push.
    AtFinish,
}

/// How long a count of upload sessions stands in for the table.
const UPLOAD_COUNT_TTL: Duration = Duration::from_secs(1);

/// Immutable tag bindings kept in memory.
const TAG_CACHE_ENTRIES: usize = 16_384;

/// Manifest records by (repository, digest) kept in memory.
const DIGEST_CACHE_ENTRIES: usize = 16_384;

/// How long a cached tag binding, tag list or manifest record is served
/// without asking the database: the longest a replica may lag behind a tag
/// change (a push or a delete) or a manifest delete made by another replica
/// or a CLI run.
pub const TAG_CACHE_TTL: Duration = Duration::from_secs(1);

/// Repositories with more tags than this are listed from the database page by
/// page instead of from memory.
pub const TAG_LIST_CACHE_MAX: u32 = 10_000;

/// Bytes of tag lists kept in memory.
const TAG_LIST_CACHE_BYTES: u64 = 4 << 20;

/// A repository's sorted tag names, and when they were read.
type TagList = (Instant, Arc<Vec<String>>);

/// Weighs cached tag lists by their size.
#[derive(Clone)]
struct TagListWeight;

impl quick_cache::Weighter<RepoName, TagList> for TagListWeight {
    fn weight(&self, _: &RepoName, v: &TagList) -> u64 {
        v.1.iter().map(|t| t.len() as u64 + 24).sum::<u64>() + 64
    }
}

impl Registry {
    pub fn new(
        meta: Metadata,
        blobs: MeteredStore,
        limits: Limits,
        rules: RuleSet,
        retention: RetentionPolicy,
    ) -> Registry {
        Registry {
            meta,
            blobs,
            limits,
            rules: Arc::new(rules),
            retention: Arc::new(retention),
            manifests: Arc::new(quick_cache::sync::Cache::with_weighter(
                4096,
                MANIFEST_CACHE_BYTES,
                ManifestWeight,
            )),
            digests: Arc::new(quick_cache::sync::Cache::new(DIGEST_CACHE_ENTRIES)),
            tags: Arc::new(quick_cache::sync::Cache::new(TAG_CACHE_ENTRIES)),
            tag_lists: Arc::new(quick_cache::sync::Cache::with_weighter(
                1024,
                TAG_LIST_CACHE_BYTES,
                TagListWeight,
            )),
            tag_generation: Arc::new(AtomicU64::new(0)),
            upload_count: Arc::new(std::sync::Mutex::new((None, 0))),
            extraction: Arc::new(super::provenance::Extraction::new()),
        }
    }

    pub(super) fn blob_store(&self) -> &MeteredStore {
        &self.blobs
    }

    pub(super) fn extraction(&self) -> &Arc<super::provenance::Extraction> {
        &self.extraction
    }

    /// The immutability decision for a tag, and the rule that made it.
    pub fn explain(&self, repo: &RepoName, tag: &str) -> Decision {
        self.rules.decide(repo.as_str(), tag)
    }

    /// The immutability rules that can apply to `repo`.
    pub fn rules_for(&self, repo: &RepoName) -> Vec<crate::policy::RuleSpec> {
        self.rules.for_repository(repo.as_str())
    }

    fn guard(&self, repo: &RepoName) -> impl Fn(&str) -> TagGuard + Sync + '_ {
        let repo = repo.as_str().to_string();
        move |tag: &str| {
            let d = self.rules.decide(&repo, tag);
            if d.is_immutable() {
                TagGuard::Keep { rule: d.rule }
            } else {
                TagGuard::Allow { rule: d.rule }
            }
        }
    }

    /// What protects artifacts of `repo` from deletion, given the stored
    /// promotions and holds: rollback targets (current and previous K per
    /// environment, K from the retention policy) and legal holds, with reasons.
    pub(crate) fn protect(
        &self,
        repo: &RepoName,
    ) -> impl Fn(&metadata::ProtectionFacts) -> BTreeMap<String, Vec<String>> + Sync + '_ {
        let depth = self.retention.rollback_depth(repo.as_str());
        move |facts: &metadata::ProtectionFacts| {
            let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (digest, labels) in rollback_targets(&facts.promotions, depth) {
                out.entry(digest)
                    .or_default()
                    .extend(labels.into_iter().map(|l| format!("rollback target: {l}")));
            }
            for (digest, reasons) in &facts.holds {
                out.entry(digest.clone())
                    .or_default()
                    .extend(reasons.iter().map(|r| format!("legal hold: {r}")));
            }
            out
        }
    }

    pub fn retention_policy(&self) -> &RetentionPolicy {
        &self.retention
    }

    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// Whether the database and the object store both answer (readiness).
    pub async fn ready(&self) -> Result<()> {
        self.meta.ping().await?;
        self.blobs.probe().await?;
        Ok(())
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    // ---- blobs (end-2, end-10) ---------------------------------------------

    /// The blob `digest` if `repo` may serve it.
    pub async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobLocation> {
        let size = self
            .meta
            .repository_blob(repo, digest)
            .await?
            .ok_or_else(|| Error::BlobUnknown(digest.clone()))?;
        Ok(BlobLocation {
            digest: digest.clone(),
            size,
        })
    }

    /// Resolves a `Range` header against a blob.
    pub fn blob_range(
        &self,
        blob: &BlobLocation,
        header: Option<&str>,
    ) -> Result<Option<ByteRange>> {
        let Some(h) = header else { return Ok(None) };
        match ByteRange::parse_request(h, blob.size) {
            Ok(r) => Ok(r),
            Err(crate::domain::RangeError::Unsatisfiable(_)) => {
                Err(Error::RangeNotSatisfiable { size: blob.size })
            }
            Err(e) => Err(Error::Range(e)),
        }
    }

    pub async fn blob_stream(
        &self,
        blob: &BlobLocation,
        range: Option<ByteRange>,
    ) -> Result<ByteStream> {
        Ok(self.blobs.stream(&blob.digest, range).await?)
    }

    /// Where a client may fetch the whole blob directly from the object store,
    /// when pulls are redirected and the store can sign URLs; `None`: the
    /// registry serves the bytes itself.
    pub async fn blob_redirect(&self, blob: &BlobLocation) -> Result<Option<url::Url>> {
        let Some(expires_in) = self.limits.pull_redirect else {
            return Ok(None);
        };
        Ok(self.blobs.presigned_get(&blob.digest, expires_in).await?)
    }

    /// Removes the blob from `repo` (end-10), unless a manifest held by an
    /// immutable tag needs it; the bytes stay for other repositories and until
    /// garbage collection.
    pub async fn delete_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        origin: &Origin,
    ) -> Result<()> {
        let guard = self.guard(repo);
        let protect = self.protect(repo);
        match self
            .meta
            .unlink_blob(repo, digest, &guard, &protect, origin)
            .await?
        {
            DeleteOutcome::Deleted => Ok(()),
            DeleteOutcome::Protected(reasons) => {
                self.audit_protected("blob.delete", repo, digest.as_str(), &reasons, origin)
                    .await?;
                Err(Error::Protected {
                    repository: repo.clone(),
                    digest: digest.to_string(),
                    reasons,
                })
            }
            DeleteOutcome::NotFound => Err(Error::BlobUnknown(digest.clone())),
            DeleteOutcome::Denied(tags) => {
                self.audit_denied("blob.delete", repo, digest.as_str(), &tags, origin)
                    .await?;
                Err(Error::Denied {
                    repository: repo.clone(),
                    attempted: None,
                    tags,
                })
            }
        }
    }

    /// Waits until `digest` may be written: not claimed by a garbage
    /// collection in progress (see `Metadata::claim_blob`). A collection deletes
    /// one blob in milliseconds; after 10 s the request fails as retryable.
    /// True when a live row was there: its bytes may be the ones the commit
    /// keeps, so the link must find that row still there.
    async fn claim(&self, digest: &Digest) -> Result<bool> {
        for _ in 0..CLAIM_ATTEMPTS {
            if let Some(existed) = self.meta.claim_blob(digest).await? {
                return Ok(existed);
            }
            tokio::time::sleep(CLAIM_RETRY).await;
        }
        Err(Error::Collecting(digest.to_string()))
    }

    /// Records a delete refused by a protection in the audit trail.
    async fn audit_protected(
        &self,
        action: &'static str,
        repo: &RepoName,
        digest: &str,
        reasons: &[String],
        origin: &Origin,
    ) -> Result<()> {
        let e = AuditEntry::denied(action, repo.as_str())
            .digest(digest)
            .detail(serde_json::json!({ "protected_by": reasons }));
        self.meta.audit_append(origin, &[e]).await?;
        Ok(())
    }

    /// Records a refused delete in the audit trail (the delete itself rolled back).
    async fn audit_denied(
        &self,
        action: &'static str,
        repo: &RepoName,
        target: &str,
        tags: &[metadata::DeniedTag],
        origin: &Origin,
    ) -> Result<()> {
        let detail: Vec<serde_json::Value> = tags
            .iter()
            .map(|t| serde_json::json!({ "tag": t.tag, "held": t.held, "rule": t.rule, "needs": t.needs }))
            .collect();
        let mut e = AuditEntry::denied(action, repo.as_str())
            .detail(serde_json::json!({ "kept_by": detail }));
        if target.contains(':') {
            e = e.digest(target);
        } else {
            e = e.tag(target);
        }
        self.meta.audit_append(origin, &[e]).await?;
        Ok(())
    }

    // ---- uploads (end-4a/b, end-5, end-6, end-11, end-13) -------------------

    /// Starts an upload session (end-4a).
    pub async fn start_upload(
        &self,
        repo: &RepoName,
        algorithm: Algorithm,
    ) -> Result<UploadProgress> {
        let max = self.limits.max_upload_sessions;
        if max > 0 {
            let counted = {
                let c = self.upload_count.lock().unwrap_or_else(|e| e.into_inner());
                c.0.filter(|at| at.elapsed() < UPLOAD_COUNT_TTL)
                    .map(|_| c.1)
            };
            let n = match counted {
                Some(n) => n,
                None => {
                    let n = self.meta.count_uploads().await?;
                    *self.upload_count.lock().unwrap_or_else(|e| e.into_inner()) =
                        (Some(Instant::now()), n);
                    n
                }
            };
            if n >= max {
                return Err(Error::TooManyUploads(max));
            }
            self.upload_count
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .1 += 1;
        }
        // Nothing is written: the id is the session until its first chunk
        // (see `SessionId`).
        self.meta.ensure_repository(repo).await?;
        Ok(UploadProgress {
            id: SessionId::new(algorithm, repo.as_str()).to_string(),
            size: 0,
        })
    }

    /// Mounts `digest` from repository `from` (end-11). `None` if `from` cannot
    /// serve it, in which case the caller starts a normal upload.
    pub async fn mount(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: &RepoName,
        origin: &Origin,
    ) -> Result<Option<BlobLocation>> {
        let Some(size) = self.meta.repository_blob(from, digest).await? else {
            return Ok(None);
        };
        let repo_id = self.meta.ensure_repository(repo).await?;
        let entry = AuditEntry::ok("blob.mount", repo.as_str())
            .detail(serde_json::json!({ "from": from.as_str(), "size": size }));
        // The bytes are the ones stored under the row just read.
        if !self
            .meta
            .link_blob(repo_id, digest, size, origin, entry, true)
            .await?
        {
            // Being collected: the client uploads it instead.
            return Ok(None);
        }
        Ok(Some(BlobLocation {
            digest: digest.clone(),
            size,
        }))
    }

    /// Single-request upload: `POST …/blobs/uploads/?digest=` with the body (end-4b).
    pub async fn upload_whole<S, E>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: S,
        origin: &Origin,
    ) -> Result<BlobLocation>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let repo_id = self.meta.ensure_repository(repo).await?;
        let mut hasher = digest.algorithm().hasher();
        let part = self
            .blobs
            .write_last_part(body, &mut hasher, self.limits.max_blob_bytes)
            .await?;
        let parts: Vec<StoredPart> = part.into_iter().collect();
        let size = parts.iter().map(|p| p.size).sum();
        let actual = hasher.finish();
        if &actual != digest {
            self.blobs.delete_parts(&keys(&parts)).await;
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let existing = self.claim(digest).await?;
        self.blobs.commit_parts(&parts, digest).await?;
        let entry = AuditEntry::ok("blob.push", repo.as_str())
            .detail(serde_json::json!({ "size": size, "upload": "monolithic" }));
        if !self
            .meta
            .link_blob(repo_id, digest, size, origin, entry, existing)
            .await?
        {
            self.blobs.delete_parts(&keys(&parts)).await;
            return Err(Error::Collecting(digest.to_string()));
        }
        self.blobs.settle(&parts, digest, !existing).await?;
        Ok(BlobLocation {
            digest: digest.clone(),
            size,
        })
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadProgress> {
        let u = self.upload(repo, id, Ended::Check).await?;
        Ok(UploadProgress {
            id: u.id,
            size: u.size,
        })
    }

    /// Session `id` of `repo`: its row, or, for a session opened by id that
    /// has none yet, an empty session if the id has not expired (and, with
    /// `Ended::Check`, has not ended).
    async fn upload(&self, repo: &RepoName, id: &str, ended: Ended) -> Result<metadata::Upload> {
        Ok(self.upload_and_blob(repo, id, ended, None).await?.0)
    }

    /// [`Self::upload`], and whether `digest` had a blob row when the session
    /// was read (one round trip for both).
    async fn upload_and_blob(
        &self,
        repo: &RepoName,
        id: &str,
        ended: Ended,
        digest: Option<&Digest>,
    ) -> Result<(metadata::Upload, bool)> {
        let (row, blob_row) = self.meta.upload_and_blob(repo, id, digest).await?;
        if let Some(u) = row {
            return Ok((u, blob_row));
        }
        let unknown = || Error::UploadUnknown(id.to_string());
        let session = SessionId::parse(id)
            .filter(|s| s.belongs_to(repo.as_str()))
            .ok_or_else(unknown)?;
        let ttl = self.limits.upload_expiry;
        let age = metadata::now_ms().saturating_sub(session.opened_ms());
        if !ttl.is_zero() && age >= ttl.as_millis().min(i64::MAX as u128) as i64 {
            return Err(unknown());
        }
        if ended == Ended::Check && self.meta.upload_ended(id).await? {
            return Err(unknown());
        }
        let repo_id = self.meta.ensure_repository(repo).await?;
        Ok((metadata::Upload::opened(session, repo_id), blob_row))
    }

    fn restore_hasher(u: &metadata::Upload) -> Result<(Algorithm, Hasher)> {
        let alg: Algorithm = u
            .algorithm
            .parse()
            .map_err(|_| metadata::Error::Corrupt(format!("upload {} algorithm", u.id)))?;
        let h = Hasher::restore(alg, &u.hash_state)
            .ok_or_else(|| metadata::Error::Corrupt(format!("upload {} hash state", u.id)))?;
        Ok((alg, h))
    }

    /// Checks a chunk's `Content-Range`/`Content-Length` against the upload.
    fn check_chunk(
        size: u64,
        range: Option<ContentRange>,
        content_length: Option<u64>,
    ) -> Result<()> {
        if let Some(r) = range {
            if r.start != size {
                return Err(Error::ChunkOutOfOrder {
                    start: r.start,
                    size,
                });
            }
            if let Some(len) = content_length {
                if len != r.len() {
                    return Err(Error::SizeInvalid(format!(
                        "Content-Length {len} does not match Content-Range {}-{} ({} bytes)",
                        r.start,
                        r.end,
                        r.len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Appends a chunk (end-5). With a `Content-Range` the chunk must start where
    /// the upload ends; without one the body is streamed onto the end.
    pub async fn append<S, E>(
        &self,
        repo: &RepoName,
        id: &str,
        range: Option<ContentRange>,
        content_length: Option<u64>,
        body: S,
    ) -> Result<UploadProgress>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let u = self.upload(repo, id, Ended::Check).await?;
        Self::check_chunk(u.size, range, content_length)?;
        let (_, mut hasher) = Self::restore_hasher(&u)?;
        let limit = self.limits.max_blob_bytes.saturating_sub(u.size);
        let part = self
            .blobs
            .write_part(&u.id, u.size, body, &mut hasher, limit)
            .await?;
        let Some(part) = part else {
            return Ok(UploadProgress {
                id: u.id,
                size: u.size,
            });
        };
        if let Some(r) = range {
            if part.size != r.len() {
                self.blobs
                    .delete_parts(std::slice::from_ref(&part.key))
                    .await;
                return Err(Error::SizeInvalid(format!(
                    "Content-Range announced {} bytes but the body had {}",
                    r.len(),
                    part.size
                )));
            }
        }
        if !self.meta.append_upload(&u, &part, &hasher.save()).await? {
            self.blobs.delete_parts(&[part.key]).await;
            let now = self.upload(repo, id, Ended::Check).await?;
            return Err(Error::ChunkOutOfOrder {
                start: u.size,
                size: now.size,
            });
        }
        Ok(UploadProgress {
            id: u.id,
            size: u.size + part.size,
        })
    }

    /// Completes an upload (end-6), with an optional last chunk in the body.
    #[allow(clippy::too_many_arguments)] // the request's parts, as the handler parsed them
    pub async fn finish_upload<S, E>(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        range: Option<ContentRange>,
        content_length: Option<u64>,
        body: S,
        origin: &Origin,
    ) -> Result<BlobLocation>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        // An ended session is refused when the end is recorded; any other
        // failure first asks whether the session ended meanwhile (cancelled,
        // finished by another request, expired), so that the client hears the
        // session is gone rather than what else went wrong on the way: a
        // cancellation deletes the parts this finish may be joining.
        let (u, blob_row) = self
            .upload_and_blob(repo, id, Ended::AtFinish, Some(digest))
            .await?;
        let stored = u.stored;
        let done = self
            .finish_session(
                repo,
                u,
                blob_row,
                digest,
                range,
                content_length,
                body,
                origin,
            )
            .await;
        match done {
            Err(e) if !matches!(e, Error::UploadUnknown(_)) => {
                let gone = if stored {
                    self.meta.upload(repo, id).await?.is_none()
                } else {
                    self.meta.upload_ended(id).await?
                };
                if gone {
                    return Err(Error::UploadUnknown(id.to_string()));
                }
                Err(e)
            }
            done => done,
        }
    }

    #[allow(clippy::too_many_arguments)] // as finish_upload
    async fn finish_session<S, E>(
        &self,
        repo: &RepoName,
        u: metadata::Upload,
        blob_row: bool,
        digest: &Digest,
        range: Option<ContentRange>,
        content_length: Option<u64>,
        body: S,
        origin: &Origin,
    ) -> Result<BlobLocation>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let id = u.id.as_str();
        Self::check_chunk(u.size, range, content_length)?;
        let (alg, mut hasher) = Self::restore_hasher(&u)?;
        let limit = self.limits.max_blob_bytes.saturating_sub(u.size);
        let last = self.blobs.write_last_part(body, &mut hasher, limit).await?;
        let discard_last = || async {
            if let Some(l) = &last {
                self.blobs.delete_parts(std::slice::from_ref(&l.key)).await;
            }
        };
        if let Some(r) = range {
            let got = last.as_ref().map_or(0, |l| l.size);
            if got != r.len() {
                discard_last().await;
                return Err(Error::SizeInvalid(format!(
                    "Content-Range announced {} bytes but the body had {got}",
                    r.len()
                )));
            }
        }
        // The parts must be exactly what the saved hash state covers.
        if u.parts.iter().map(|p| p.size).sum::<u64>() != u.size {
            discard_last().await;
            return Err(
                metadata::Error::Corrupt(format!("upload {} parts do not add up", u.id)).into(),
            );
        }
        let mut parts = u.parts.clone();
        parts.extend(last.clone());
        let size: u64 = parts.iter().map(|p| p.size).sum();
        // Without a blob row when the session was read there is nothing for
        // a collection to delete, which is all a claim would have found; the
        // statement that finishes the upload refuses a row a collection has
        // claimed meanwhile, and `settle` places the bytes again should one
        // have been collected, file and all, before it.
        let existing = blob_row && self.claim(digest).await?;
        if digest.algorithm() == alg {
            let actual = hasher.finish();
            if &actual != digest {
                discard_last().await;
                return Err(Error::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            self.blobs.commit_parts(&parts, digest).await?;
        } else if let Err(actual) = self
            .blobs
            .commit_rehashed(&parts, digest.algorithm().hasher(), digest)
            .await?
        {
            discard_last().await;
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        match self
            .meta
            .finish_upload(
                &u,
                digest,
                size,
                origin,
                AuditEntry::ok("blob.push", repo.as_str())
                    .detail(serde_json::json!({ "size": size, "upload": u.id })),
                existing,
            )
            .await?
        {
            FinishOutcome::Done => {}
            FinishOutcome::Gone => {
                // Cancelled, finished or extended by another request meanwhile.
                // The blob stored above is still exactly its digest's bytes.
                discard_last().await;
                return Err(Error::UploadUnknown(id.to_string()));
            }
            FinishOutcome::Collecting => {
                discard_last().await;
                return Err(Error::Collecting(digest.to_string()));
            }
        }
        self.blobs.settle(&parts, digest, !existing).await?;
        Ok(BlobLocation {
            digest: digest.clone(),
            size,
        })
    }

    /// Cancels every upload session idle for longer than `ttl` and deletes its
    /// chunks; returns how many were cancelled. Safe on any number of replicas at
    /// once: each session is deleted by exactly one of them, and only if no chunk
    /// arrived since it was found idle. Then deletes staged files as old, which
    /// only an interrupted process leaves (`BlobStore::sweep_staging`).
    pub async fn expire_uploads(&self, ttl: std::time::Duration) -> Result<usize> {
        let before = metadata::now_ms() - ttl.as_millis().min(i64::MAX as u128) as i64;
        let mut expired = 0;
        loop {
            let ids = self.meta.idle_uploads(before, 100).await?;
            let batch = ids.len();
            for id in ids {
                if let Some(keys) = self.meta.expire_upload(&id, before).await? {
                    self.blobs.delete_parts(&keys).await;
                    expired += 1;
                }
            }
            if batch < 100 {
                // Ids opened before `before` are expired whether or not they
                // ended; their ends need not be kept.
                self.meta
                    .prune_ended_uploads(&SessionId::floor(before))
                    .await?;
                let swept = self.blobs.sweep_staging(ttl).await?;
                if swept > 0 {
                    tracing::info!(
                        files = swept,
                        "deleted staged files an interrupted upload left"
                    );
                }
                return Ok(expired);
            }
        }
    }

    /// Cancels an upload (end-13) and deletes its chunks.
    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        let u = self.upload(repo, id, Ended::Check).await?;
        let keys = self
            .meta
            .delete_upload(&u)
            .await?
            .ok_or_else(|| Error::UploadUnknown(id.to_string()))?;
        self.blobs.delete_parts(&keys).await;
        Ok(())
    }

    // ---- manifests (end-3, end-7, end-9) -------------------------------------

    /// Stores a manifest and binds its tags (end-7): `reference` if it is a tag,
    /// plus every `?tag=`, atomically. A tag that already holds this digest is a
    /// no-op (CI retries succeed); an immutable tag holding another digest refuses
    /// the whole push, naming every such tag.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        extra_tags: &[Tag],
        content_type: Option<&str>,
        bytes: Bytes,
        origin: &Origin,
    ) -> Result<PushedManifest> {
        if bytes.len() as u64 > self.limits.max_manifest_bytes {
            return Err(Error::TooLarge {
                limit: self.limits.max_manifest_bytes,
            });
        }
        let parsed = manifest::parse(&bytes, content_type)?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::compute(d.algorithm(), &bytes);
                if &actual != d {
                    return Err(Error::DigestMismatch {
                        expected: d.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::compute(Algorithm::Sha256, &bytes),
        };
        let blob_refs: Vec<Digest> = parsed
            .blob_refs()
            .filter(|d| !d.has_urls)
            .map(|d| d.digest.clone())
            .collect();
        let children: Vec<Digest> = parsed.manifests.iter().map(|d| d.digest.clone()).collect();
        if !self.limits.allow_sparse_manifests && self.meta.repository_id(repo).await?.is_none() {
            // A repository that does not exist serves no blob: refused before
            // it is created, so a refused push leaves no trace (no empty
            // repository in the catalog). In one that exists, the manifest's
            // transaction checks every reference.
            if let Some(d) = blob_refs.iter().chain(&children).next() {
                return Err(Error::ManifestBlobUnknown(d.clone()));
            }
        }
        let repo_id = self.meta.ensure_repository(repo).await?;
        let mut tags: Vec<Tag> = Vec::with_capacity(extra_tags.len() + 1);
        if let Reference::Tag(t) = reference {
            tags.push(t.clone());
        }
        for t in extra_tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        // One global order for claiming tags: two pushes binding the same tags
        // in opposite orders must not deadlock each other (PostgreSQL).
        tags.sort();
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        let size = bytes.len() as u64;
        // Kept only when the BuildKit option may need to compare it after a refusal.
        let parsed_for_equivalence = self.rules.index_equivalence.then(|| parsed.clone());
        let record = NewManifest {
            digest: digest.clone(),
            content: bytes.clone(),
            media_type: parsed.media_type,
            artifact_type: parsed.artifact_type,
            subject: subject.clone(),
            size,
            annotations: parsed.annotations,
            blobs: blob_refs,
            children,
            require_blobs: !self.limits.allow_sparse_manifests,
            touch_fresh_ms: (self.limits.gc_grace.as_millis() / 2).min(60_000) as i64,
        };
        let bindings: Vec<TagBinding> = tags
            .into_iter()
            .map(|tag| {
                let d = self.rules.decide(repo.as_str(), tag.as_str());
                TagBinding {
                    immutable: d.is_immutable(),
                    rule: d.rule,
                    tag,
                }
            })
            .collect();
        // The bytes go in with the record, in its transaction, and that
        // transaction refuses a digest whose row a collection is deleting: such
        // a push waits the collection out as a blob's does (`claim`), without a
        // separate claim before every push.
        let mut attempts = 1;
        let outcome = loop {
            match self
                .meta
                .put_manifest(repo_id, repo.as_str(), &record, &bindings, origin)
                .await?
            {
                PutOutcome::Collecting(d) if d == digest.as_str() && attempts < CLAIM_ATTEMPTS => {
                    attempts += 1;
                    tokio::time::sleep(CLAIM_RETRY).await;
                }
                outcome => break outcome,
            }
        };
        match outcome {
            PutOutcome::Stored(events) => {
                if !bindings.is_empty() {
                    // A push only adds or moves tags: cached immutable
                    // bindings stay right, only the listing changes.
                    self.forget_tag_list(repo);
                }
                // A copy of its own: the request's bytes may be a slice of the
                // connection's whole read buffer, which the cache and the
                // extraction task would then pin while holding only the manifest.
                let own = Bytes::copy_from_slice(&bytes);
                let tags: Vec<Tag> = bindings.iter().map(|b| b.tag.clone()).collect();
                let verified = !self.limits.allow_sparse_manifests;
                self.extract_provenance(repo, &digest, &tags, own.clone(), verified, origin)
                    .await;
                self.manifests.insert(digest.clone(), own);
                for e in events {
                    tracing::info!(tag = %e.tag, action = e.action.as_str(), digest = %e.digest, rule = %e.rule, "tag event");
                }
                Ok(PushedManifest { digest, subject })
            }
            PutOutcome::Collecting(d) => Err(Error::Collecting(d)),
            PutOutcome::MissingBlob(d) => Err(Error::ManifestBlobUnknown(d)),
            PutOutcome::Denied(denied) => {
                if let Some(new) = &parsed_for_equivalence {
                    if let Some(kept) = self
                        .accept_equivalent_index(
                            repo, repo_id, &record, new, &bindings, &denied, origin,
                        )
                        .await?
                    {
                        return Ok(PushedManifest {
                            digest: kept,
                            subject,
                        });
                    }
                }
                // A refused overwrite is history too (recorded after the rollback).
                let events: Vec<TagEvent> = denied
                    .iter()
                    .map(|d| TagEvent {
                        tag: d.tag.clone(),
                        action: TagAction::Denied,
                        digest: digest.to_string(),
                        previous_digest: Some(d.held.clone()),
                        rule: d.rule.clone(),
                    })
                    .collect();
                self.meta
                    .record_tag_events(repo_id, repo.as_str(), &events, origin)
                    .await?;
                Err(Error::Denied {
                    repository: repo.clone(),
                    attempted: Some(digest),
                    tags: denied,
                })
            }
        }
    }

    /// The BuildKit option: when every refused tag holds an index with the same
    /// platform manifests as `new` (only attestations differ), store `new` as an
    /// untagged manifest, bind the other tags, leave the refused ones on their
    /// digest, and answer with that digest. `None` when the push stays refused.
    #[allow(clippy::too_many_arguments)]
    async fn accept_equivalent_index(
        &self,
        repo: &RepoName,
        repo_id: i64,
        record: &NewManifest,
        new: &manifest::ParsedManifest,
        bindings: &[TagBinding],
        denied: &[metadata::DeniedTag],
        origin: &Origin,
    ) -> Result<Option<Digest>> {
        let mut held_digests = Vec::new();
        for d in denied {
            let held: Digest = d
                .held
                .parse()
                .map_err(|_| metadata::Error::Corrupt(format!("tag {} digest", d.tag)))?;
            let bytes = self.manifest_bytes(&held).await?;
            let Ok(held_manifest) = manifest::parse(&bytes, None) else {
                return Ok(None);
            };
            if !policy::equivalent_indexes(&held_manifest, new) {
                return Ok(None);
            }
            held_digests.push(held);
        }
        let others: Vec<TagBinding> = bindings
            .iter()
            .filter(|b| !denied.iter().any(|d| d.tag == b.tag.as_str()))
            .cloned()
            .collect();
        match self
            .meta
            .put_manifest(repo_id, repo.as_str(), record, &others, origin)
            .await?
        {
            PutOutcome::Stored(_) => {}
            PutOutcome::Denied(_) => return Ok(None),
            PutOutcome::Collecting(d) => return Err(Error::Collecting(d)),
            PutOutcome::MissingBlob(d) => return Err(Error::ManifestBlobUnknown(d)),
        }
        let events: Vec<TagEvent> = denied
            .iter()
            .map(|d| TagEvent {
                tag: d.tag.clone(),
                action: TagAction::Equivalent,
                digest: record.digest.to_string(),
                previous_digest: Some(d.held.clone()),
                rule: d.rule.clone(),
            })
            .collect();
        self.meta
            .record_tag_events(repo_id, repo.as_str(), &events, origin)
            .await?;
        Ok(held_digests.into_iter().next())
    }

    /// The manifest `tag` names, from the cache when the tag is immutable.
    async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<ManifestRecord>> {
        self.cached_record(
            &self.tags,
            (repo.clone(), tag.clone()),
            || {
                self.rules
                    .decide(repo.as_str(), tag.as_str())
                    .is_immutable()
            },
            self.meta.resolve_tag(repo, tag),
        )
        .await
    }

    /// The manifest `digest` names in `repo`, from the cache while fresh.
    async fn resolve_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>> {
        self.cached_record(
            &self.digests,
            (repo.clone(), digest.clone()),
            || true,
            self.meta.manifest(repo, digest),
        )
        .await
    }

    /// `key`'s record from `cache` if read less than [`TAG_CACHE_TTL`] ago,
    /// else from `read`, kept when found and `cacheable()`. A change bumps the
    /// generation (`forget_tag_list`): a lookup that read before it must not
    /// cache what it read.
    async fn cached_record<K>(
        &self,
        cache: &quick_cache::sync::Cache<K, (Instant, ManifestRecord)>,
        key: K,
        cacheable: impl FnOnce() -> bool,
        read: impl std::future::Future<Output = metadata::Result<Option<ManifestRecord>>>,
    ) -> Result<Option<ManifestRecord>>
    where
        K: Eq + std::hash::Hash + Clone,
    {
        if let Some((at, record)) = cache.get(&key) {
            if at.elapsed() < TAG_CACHE_TTL {
                return Ok(Some(record));
            }
        }
        let generation = self.tag_generation.load(Ordering::Acquire);
        let record = read.await?;
        if let Some(r) = &record {
            if cacheable() && self.tag_generation.load(Ordering::Acquire) == generation {
                cache.insert(key, (Instant::now(), r.clone()));
            }
        }
        Ok(record)
    }

    /// Forgets `repo`'s cached tag list, and stops lookups already under way
    /// from caching what they read before the change.
    fn forget_tag_list(&self, repo: &RepoName) {
        self.tag_generation.fetch_add(1, Ordering::AcqRel);
        self.tag_lists.remove(repo);
    }

    /// Forgets what is cached about tags and manifests: called after a delete
    /// (or retention) removed a tag or a manifest.
    pub(super) fn forget_deleted(&self, repo: &RepoName) {
        self.forget_tag_list(repo);
        // Bindings are cached only for immutable tags, which only deletes
        // remove, and records only for manifests that exist, which only
        // deletes remove; those are rare enough to start over.
        self.tags.clear();
        self.digests.clear();
    }

    /// Finds a manifest by tag or digest without reading its bytes (HEAD).
    pub async fn manifest_record(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestRecord> {
        let record = match reference {
            Reference::Tag(t) => self.resolve_tag(repo, t).await?,
            Reference::Digest(d) => self.resolve_digest(repo, d).await?,
        }
        .ok_or_else(|| Error::ManifestUnknown(reference.to_string()))?;
        if !media::acceptable(accept, &record.media_type) {
            return Err(Error::NotAcceptable {
                reference: reference.to_string(),
                media_type: record.media_type,
            });
        }
        Ok(record)
    }

    /// A manifest's exact pushed bytes (GET).
    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestContent> {
        let record = self.manifest_record(repo, reference, accept).await?;
        let digest: Digest = record
            .digest
            .parse()
            .map_err(|_| metadata::Error::Corrupt(format!("manifest digest {}", record.digest)))?;
        let bytes = self.manifest_bytes(&digest).await?;
        Ok(ManifestContent { record, bytes })
    }

    /// A manifest's exact bytes: from memory, else stored with its record,
    /// else (pushed before they were) from the blob store.
    pub(super) async fn manifest_bytes(&self, digest: &Digest) -> Result<Bytes> {
        if let Some(b) = self.manifests.get(digest) {
            return Ok(b);
        }
        let b = match self.meta.manifest_content(digest).await? {
            Some(content) => Bytes::from(content),
            None => Bytes::copy_from_slice(&self.blobs.read(digest).await?),
        };
        self.manifests.insert(digest.clone(), b.clone());
        Ok(b)
    }

    /// Deletes a manifest by digest (with its tags), or only a tag (end-9).
    /// Immutable tags, and manifests any immutable tag holds, cannot be deleted
    /// here; retention will be the one path that may remove them.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        origin: &Origin,
    ) -> Result<()> {
        let guard = self.guard(repo);
        let protect = self.protect(repo);
        let outcome = match reference {
            Reference::Digest(d) => {
                self.meta
                    .delete_manifest(repo, d, &guard, &protect, origin)
                    .await?
            }
            Reference::Tag(t) => self.meta.delete_tag(repo, t, &guard, origin).await?,
        };
        if outcome == DeleteOutcome::Deleted {
            self.forget_deleted(repo);
        }
        match outcome {
            DeleteOutcome::Deleted => Ok(()),
            DeleteOutcome::NotFound => Err(Error::ManifestUnknown(reference.to_string())),
            DeleteOutcome::Protected(reasons) => {
                let digest = reference.to_string();
                self.audit_protected("manifest.delete", repo, &digest, &reasons, origin)
                    .await?;
                Err(Error::Protected {
                    repository: repo.clone(),
                    digest,
                    reasons,
                })
            }
            DeleteOutcome::Denied(tags) => {
                let action = match reference {
                    Reference::Digest(_) => "manifest.delete",
                    Reference::Tag(_) => "tag.delete",
                };
                self.audit_denied(action, repo, &reference.to_string(), &tags, origin)
                    .await?;
                Err(Error::Denied {
                    repository: repo.clone(),
                    attempted: None,
                    tags,
                })
            }
        }
    }

    /// A tag's history, newest first (`before`: an event id from a previous page).
    pub async fn tag_history(
        &self,
        repo: &RepoName,
        tag: &Tag,
        before: Option<i64>,
        n: Option<u32>,
    ) -> Result<Vec<TagHistoryEntry>> {
        self.meta
            .tag_history(repo, tag.as_str(), before, self.page_size(n))
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.clone()))
    }

    /// What `tag` pointed at at `at_ms` (Unix milliseconds).
    pub async fn tag_at(&self, repo: &RepoName, tag: &Tag, at_ms: i64) -> Result<TagHistoryEntry> {
        if self.meta.repository_id(repo).await?.is_none() {
            return Err(Error::NameUnknown(repo.clone()));
        }
        self.meta
            .tag_at(repo, tag.as_str(), at_ms)
            .await?
            .ok_or_else(|| Error::ManifestUnknown(format!("{tag} (not bound at that time)")))
    }

    // ---- listings (end-8, end-12, catalog) ----------------------------------

    fn page_size(&self, n: Option<u32>) -> u32 {
        n.unwrap_or(self.limits.max_page).min(self.limits.max_page)
    }

    pub async fn tags(
        &self,
        repo: &RepoName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<TagPage> {
        let n = self.page_size(n);
        let cached = match self.tag_lists.get(repo) {
            Some((at, all)) if at.elapsed() < TAG_CACHE_TTL => Some(all),
            _ => {
                let generation = self.tag_generation.load(Ordering::Acquire);
                let all = self
                    .meta
                    .list_tags(repo, None, TAG_LIST_CACHE_MAX)
                    .await?
                    .ok_or_else(|| Error::NameUnknown(repo.clone()))?;
                if all.more {
                    None
                } else {
                    let all = Arc::new(all.items);
                    if self.tag_generation.load(Ordering::Acquire) == generation {
                        self.tag_lists
                            .insert(repo.clone(), (Instant::now(), all.clone()));
                    }
                    Some(all)
                }
            }
        };
        match cached {
            Some(all) => Ok(page_of(all, last, n)),
            None => {
                let page = self
                    .meta
                    .list_tags(repo, last, n)
                    .await?
                    .ok_or_else(|| Error::NameUnknown(repo.clone()))?;
                Ok(TagPage {
                    range: 0..page.items.len(),
                    names: Arc::new(page.items),
                    more: page.more,
                })
            }
        }
    }

    pub async fn catalog(&self, n: Option<u32>, last: Option<&str>) -> Result<Page> {
        Ok(self.meta.list_repositories(last, self.page_size(n)).await?)
    }

    /// Manifests whose subject is `subject` (end-12), optionally filtered.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        q: &ReferrersQuery,
    ) -> Result<Vec<Referrer>> {
        let mut all = self.meta.referrers(repo, subject).await?;
        if let Some(t) = &q.artifact_type {
            all.retain(|r| r.artifact_type.as_deref() == Some(t.as_str()));
        }
        Ok(all)
    }
}

/// A page of a repository's tags: a window on its sorted list, which a
/// cached list shares with every page served from it (no copy of the names).
#[derive(Debug, Clone)]
pub struct TagPage {
    names: Arc<Vec<String>>,
    range: std::ops::Range<usize>,
    /// More tags follow this page.
    pub more: bool,
}

impl TagPage {
    pub fn items(&self) -> &[String] {
        self.names.get(self.range.clone()).unwrap_or(&[])
    }
}

/// The page of `all` (sorted) after `last`, at most `n` names.
fn page_of(all: Arc<Vec<String>>, last: Option<&str>, n: u32) -> TagPage {
    let start = last.map_or(0, |l| all.partition_point(|t| t.as_str() <= l));
    let end = start.saturating_add(n as usize).min(all.len());
    TagPage {
        more: end < all.len(),
        range: start..end,
        names: all,
    }
}

fn keys(parts: &[StoredPart]) -> Vec<String> {
    parts.iter().map(|p| p.key.clone()).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::page_of;

    proptest! {
        /// Following `last` through the pages of a sorted list yields every
        /// name once, in order, and `more` is false exactly on the last page.
        #[test]
        fn pages_cover_the_list_once(
            names in proptest::collection::btree_set("[a-z0-9]{1,6}", 0..60),
            n in 1u32..20,
        ) {
            let all: Vec<String> = names.into_iter().collect();
            let shared = std::sync::Arc::new(all.clone());
            let mut seen = Vec::new();
            let mut last: Option<String> = None;
            loop {
                let p = page_of(shared.clone(), last.as_deref(), n);
                prop_assert!(p.items().len() <= n as usize);
                seen.extend(p.items().iter().cloned());
                if !p.more {
                    break;
                }
                prop_assert_eq!(p.items().len(), n as usize);
                last = p.items().last().cloned();
            }
            prop_assert_eq!(seen, all);
        }

        /// `last` need not be a name in the list: the page starts after it.
        #[test]
        fn pages_start_after_any_last(
            names in proptest::collection::btree_set("[a-z]{1,4}", 1..40),
            last in "[a-z]{1,4}",
        ) {
            let all: Vec<String> = names.into_iter().collect();
            let p = page_of(std::sync::Arc::new(all.clone()), Some(&last), 1000);
            let want: Vec<String> = all.iter().filter(|t| t.as_str() > last.as_str()).cloned().collect();
            prop_assert_eq!(p.items(), want.as_slice());
            prop_assert!(!p.more);
        }
    }
}
