//! Build provenance: what CI sends through the API, what is read from the
//! attestations pushed with an image, and what the image says of itself in its
//! annotations and labels; and the auditor's questions over all of it.
//!
//! **Extraction never fails a push, and slows one only to bound memory.**
//! [`Registry::extract_provenance`] is called once the manifest is committed and
//! only spawns a task; that task reads small blobs (at most
//! [`MAX_ATTESTATION_BYTES`] each, size checked before reading), and a document
//! it cannot use is recorded as unparsed (`parsed = false` with the reason)
//! rather than refused. Its own failures are logged. At most
//! [`EXTRACTION_SLOTS`] extractions run at once per process, and at most
//! [`EXTRACTION_QUEUE`] wait: a push that finds the queue full waits for a
//! place, so pushes faster than extraction cannot grow the process without
//! bound. An image config's labels are read once per config digest
//! (content-addressed: they never change) and then kept in a small cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{Error, Registry, Result};
use crate::domain::provenance::{
    label_facts, parse_document_with_limit, ProvenanceError, Statement, IN_TOTO_PAYLOAD_TYPE,
    LABEL_AUTHORS, LABEL_CREATED, LABEL_REVISION, LABEL_SOURCE, LABEL_VERSION,
};
use crate::domain::{Digest, RepoName, Tag};
use crate::metadata::{
    MaterialRecord, NewProvenance, Origin, ProvenancePage, ProvenanceQuery, ProvenanceRecord,
    StoredProvenance, SOURCE_API, SOURCE_ATTESTATION, SOURCE_LABELS,
};

/// Largest attestation layer or image config read during extraction, and the
/// largest document accepted through the API (BuildKit `mode=max` provenance
/// reaches megabytes).
pub const MAX_ATTESTATION_BYTES: u64 = crate::domain::provenance::DEFAULT_MAX_BYTES as u64;
/// Extractions running at once in one process; the rest wait their turn, in
/// their own tasks, so pushes do not wait for them.
pub const EXTRACTION_SLOTS: usize = 2;
/// Extractions waiting at most; beyond it a push waits for a place (each
/// holds its manifest, a few KiB at most in the common case).
pub const EXTRACTION_QUEUE: usize = 1024;
/// Bytes of config labels kept (the five source labels of each config).
const LABELS_CACHE_BYTES: u64 = 1 << 20;

/// The source labels of an image config (`None` when the config could not be
/// read or parsed).
type Labels = Arc<BTreeMap<String, String>>;

/// Extraction's shared state in a process.
pub(super) struct Extraction {
    slots: tokio::sync::Semaphore,
    queue: Arc<tokio::sync::Semaphore>,
    labels: quick_cache::sync::Cache<Digest, Labels, LabelsWeight>,
}

impl Extraction {
    pub(super) fn new() -> Extraction {
        Extraction {
            slots: tokio::sync::Semaphore::new(EXTRACTION_SLOTS),
            queue: Arc::new(tokio::sync::Semaphore::new(EXTRACTION_QUEUE)),
            labels: quick_cache::sync::Cache::with_weighter(1024, LABELS_CACHE_BYTES, LabelsWeight),
        }
    }
}

/// Weighs cached labels by their size.
#[derive(Clone)]
struct LabelsWeight;

impl quick_cache::Weighter<Digest, Labels> for LabelsWeight {
    fn weight(&self, _: &Digest, v: &Labels) -> u64 {
        v.iter()
            .map(|(k, v)| (k.len() + v.len()) as u64 + 48)
            .sum::<u64>()
            + 160
    }
}

/// DSSE envelopes (cosign attestations, in-toto tooling).
const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
/// Sigstore bundles (`…bundle+json;version=0.3`, `…bundle.v0.3+json`).
const SIGSTORE_BUNDLE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
/// Image configs, whose `config.Labels` are read (artifacts' configs are not).
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The index annotation marking a BuildKit attestation manifest…
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// …and the one naming the platform manifest it is about.
const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// Whether a media type (or artifact type) carries in-toto statements.
fn is_attestation_type(media_type: &str) -> bool {
    let t = media_type.split(';').next().unwrap_or("").trim();
    t == IN_TOTO_PAYLOAD_TYPE || t == DSSE_ENVELOPE || t.starts_with(SIGSTORE_BUNDLE_PREFIX)
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The fields of a manifest or index extraction reads; anything else is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Doc {
    artifact_type: Option<String>,
    config: Option<Desc>,
    layers: Vec<Desc>,
    manifests: Vec<Desc>,
    subject: Option<Desc>,
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Desc {
    media_type: String,
    digest: String,
    annotations: BTreeMap<String, String>,
}

/// An image config: only `config.Labels`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ImageConfig {
    config: Option<ImageConfigBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ImageConfigBody {
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

/// What the CI sent, as stored.
#[derive(Debug, Clone)]
pub struct IngestedStatement {
    pub stored: StoredProvenance,
    pub statement: Statement,
}

/// Records for one artifact (a subject digest), gathered before storing.
type Pending = BTreeMap<String, Vec<NewProvenance>>;

/// The stored form of a statement that names the artifact. `document` is the
/// whole original document when it held only this statement (so a DSSE
/// envelope keeps its signatures), else the statement itself; the record's
/// identity is the statement's digest, so one statement is stored once
/// whichever wrapping brought it.
fn parsed_record(
    source: &'static str,
    source_digest: Option<String>,
    s: &Statement,
    original: Option<&Value>,
) -> NewProvenance {
    let statement_text = s.document.to_string();
    NewProvenance {
        source,
        source_digest,
        document_digest: sha256_hex(statement_text.as_bytes()),
        parse_error: None,
        statement_type: Some(s.statement_type.clone()),
        predicate_type: Some(s.predicate_type.clone()),
        facts: s.facts.clone(),
        document: Some(original.map_or(statement_text, Value::to_string)),
    }
}

/// The message naming what a statement is about, when it is not `digest`.
fn subject_mismatch(index: usize, count: usize, s: &Statement, digest: &str) -> String {
    let named: Vec<String> = s.subject_digests().collect();
    let position = if count > 1 {
        format!("statement {} of {count}", index + 1)
    } else {
        "the statement".to_string()
    };
    format!(
        "{position} ({}) is about {}, not {digest}: its subject must name the artifact it is attached to",
        s.predicate_type,
        if named.is_empty() {
            "no digest".to_string()
        } else {
            named.join(", ")
        }
    )
}

/// The original document as one JSON value, when it is one (not JSON Lines).
fn single_value(bytes: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(text).ok()
}

impl Registry {
    // ---- from CI, through the API -------------------------------------------

    /// Stores a provenance document sent for `repo@digest`. The manifest must
    /// be in the repository; the document must parse and every statement's
    /// subject must name `digest`, or nothing is stored. Sending the same
    /// document again stores nothing new (`created: false`).
    pub async fn put_provenance(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: &[u8],
        origin: &Origin,
    ) -> Result<Vec<IngestedStatement>> {
        let repo_id = self.require_manifest(repo, digest).await?;
        let statements = parse_document_with_limit(body, MAX_ATTESTATION_BYTES as usize)
            .map_err(|e| Error::ProvenanceInvalid(e.to_string()))?;
        let count = statements.len();
        let wrong: Vec<String> = statements
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.names_digest(digest.as_str()))
            .map(|(i, s)| subject_mismatch(i, count, s, digest.as_str()))
            .collect();
        if !wrong.is_empty() {
            return Err(Error::ProvenanceInvalid(format!(
                "{}; nothing was stored",
                wrong.join("; ")
            )));
        }
        let original = (count == 1).then(|| single_value(body)).flatten();
        let records: Vec<NewProvenance> = statements
            .iter()
            .map(|s| parsed_record(SOURCE_API, None, s, original.as_ref()))
            .collect();
        let stored = self
            .metadata()
            .put_provenance(repo_id, repo.as_str(), digest.as_str(), &records, origin)
            .await?;
        Ok(stored
            .into_iter()
            .zip(statements)
            .map(|(stored, statement)| IngestedStatement { stored, statement })
            .collect())
    }

    /// The repository's id, if `digest` is one of its manifests.
    async fn require_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<i64> {
        let missing = || {
            Error::ManifestUnknown(format!(
                "{digest} in {repo}: provenance is stored for manifests of the repository; push the manifest first"
            ))
        };
        let id = self
            .metadata()
            .repository_id(repo)
            .await?
            .ok_or_else(missing)?;
        self.metadata()
            .manifest(repo, digest)
            .await?
            .ok_or_else(missing)?;
        Ok(id)
    }

    // ---- the auditor's questions -------------------------------------------

    async fn require_repository(&self, repo: &RepoName) -> Result<()> {
        match self.metadata().repository_id(repo).await? {
            Some(_) => Ok(()),
            None => Err(Error::NameUnknown(repo.clone())),
        }
    }

    /// Every record about `repo@digest` (oldest first, ids above `cursor`).
    /// The manifest need not be there any more: records outlive a deleted
    /// manifest, and an auditor may ask about one.
    pub async fn provenance(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cursor: Option<i64>,
        n: Option<u32>,
    ) -> Result<Vec<ProvenanceRecord>> {
        self.require_repository(repo).await?;
        Ok(self
            .metadata()
            .provenance_of(repo, digest.as_str(), cursor, self.provenance_page(n))
            .await?)
    }

    /// The build inputs recorded for `repo@digest`.
    pub async fn provenance_materials(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cursor: Option<(i64, i32)>,
        n: Option<u32>,
    ) -> Result<Vec<MaterialRecord>> {
        self.require_repository(repo).await?;
        Ok(self
            .metadata()
            .provenance_materials(repo, digest.as_str(), cursor, self.provenance_page(n))
            .await?)
    }

    /// Artifacts whose provenance matches `q`.
    pub async fn provenance_search(&self, mut q: ProvenanceQuery) -> Result<ProvenancePage> {
        q.limit = self.provenance_page(Some(q.limit).filter(|&l| l > 0));
        Ok(self.metadata().provenance_search(&q).await?)
    }

    /// The digest `tag` held at `at_ms`.
    pub async fn digest_at(&self, repo: &RepoName, tag: &Tag, at_ms: i64) -> Result<Digest> {
        let e = self.tag_at(repo, tag, at_ms).await?;
        e.digest
            .parse()
            .map_err(|_| crate::metadata::Error::Corrupt(format!("tag event digest {}", e.digest)))
            .map_err(Error::from)
    }

    /// Records carry whole documents: pages default to 100.
    fn provenance_page(&self, n: Option<u32>) -> u32 {
        n.unwrap_or(100).clamp(1, self.limits().max_page.max(1))
    }

    // ---- from the push -------------------------------------------------------

    /// Reads provenance out of a manifest just pushed, in a task of its own:
    /// the push has already succeeded and waits only for a place in the queue
    /// ([`EXTRACTION_QUEUE`]), not for the extraction. `tags` are the tags the
    /// push bound (for cosign's `sha256-<hex>.att` scheme).
    /// `verified`: the push checked, in its transaction, that the repository
    /// serves every blob the manifest references (so its config's labels may
    /// come from the cache).
    pub(super) async fn extract_provenance(
        &self,
        repo: &RepoName,
        digest: &Digest,
        tags: &[Tag],
        bytes: Bytes,
        verified: bool,
        origin: &Origin,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(%digest, "no async runtime: provenance not extracted");
            return;
        };
        // A place in the queue (`Err`: the semaphore was closed, which never
        // happens; extraction then simply proceeds).
        let place = self.extraction().queue.clone().acquire_owned().await.ok();
        let this = self.clone();
        let repo = repo.clone();
        let digest = digest.clone();
        let tags = tags.to_vec();
        let origin = origin.clone();
        runtime.spawn(async move {
            let _place = place;
            let _slot = this.extraction().slots.acquire().await.ok();
            if let Err(e) = this
                .extract(&repo, &digest, &tags, &bytes, verified, &origin)
                .await
            {
                tracing::warn!(repository = %repo, %digest, error = %e, "provenance extraction failed");
            }
        });
    }

    async fn extract(
        &self,
        repo: &RepoName,
        digest: &Digest,
        tags: &[Tag],
        bytes: &[u8],
        verified: bool,
        origin: &Origin,
    ) -> Result<()> {
        let Ok(doc) = serde_json::from_slice::<Doc>(bytes) else {
            return Ok(());
        };
        let mut pending = Pending::new();
        self.labels(repo, digest, &doc, verified, &mut pending)
            .await?;
        // (a) BuildKit: an index listing attestation manifests of its platforms.
        for d in &doc.manifests {
            if d.annotations.get(REFERENCE_TYPE).map(String::as_str) != Some("attestation-manifest")
            {
                continue;
            }
            let (Some(subject), Ok(att)) = (
                d.annotations.get(REFERENCE_DIGEST),
                d.digest.parse::<Digest>(),
            ) else {
                continue;
            };
            let Some(att_bytes) = self.read_manifest(repo, &att).await? else {
                continue;
            };
            let Ok(att_doc) = serde_json::from_slice::<Doc>(&att_bytes) else {
                continue;
            };
            let layers = att_doc
                .layers
                .iter()
                .filter(|l| is_attestation_type(&l.media_type));
            for layer in layers {
                self.attestation_layer(repo, subject, layer, &mut pending)
                    .await?;
            }
        }
        // (b) An OCI referrer carrying in-toto / DSSE / sigstore documents, and
        // (c) cosign's tag scheme `sha256-<hex>.att` for registries without referrers.
        let cosign_subject = tags.iter().find_map(|t| {
            let hex = t.as_str().strip_prefix("sha256-")?.strip_suffix(".att")?;
            format!("sha256:{hex}").parse::<Digest>().ok()
        });
        let subject = doc
            .subject
            .as_ref()
            .map(|s| s.digest.clone())
            .or_else(|| cosign_subject.map(|d| d.to_string()));
        if let Some(subject) = subject {
            let typed = doc
                .artifact_type
                .as_deref()
                .is_some_and(is_attestation_type);
            for layer in doc
                .layers
                .iter()
                .filter(|l| typed || is_attestation_type(&l.media_type))
            {
                self.attestation_layer(repo, &subject, layer, &mut pending)
                    .await?;
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let Some(repo_id) = self.metadata().repository_id(repo).await? else {
            return Ok(());
        };
        for (subject, records) in pending {
            let stored = self
                .metadata()
                .put_provenance(repo_id, repo.as_str(), &subject, &records, origin)
                .await?;
            let created = stored.iter().filter(|s| s.created).count();
            tracing::info!(repository = %repo, %subject, records = stored.len(), created, "provenance extracted");
        }
        Ok(())
    }

    /// (3) The manifest's annotations and, for an image, its config's labels:
    /// a `labels` record when they say anything about the source.
    async fn labels(
        &self,
        repo: &RepoName,
        digest: &Digest,
        doc: &Doc,
        verified: bool,
        pending: &mut Pending,
    ) -> Result<()> {
        let mut from_labels = BTreeMap::new();
        if let Some(config) = &doc.config {
            let image_config =
                config.media_type == OCI_CONFIG || config.media_type == DOCKER_CONFIG;
            if let (true, Ok(d)) = (image_config, config.digest.parse::<Digest>()) {
                let cached = verified.then(|| self.extraction().labels.get(&d)).flatten();
                let labels = match cached {
                    Some(l) => Some(l),
                    None => self.config_labels(repo, &d).await?,
                };
                if let Some(l) = labels {
                    from_labels = (*l).clone();
                }
            }
        }
        // Annotations describe this very artifact: they win over inherited labels.
        let from_annotations = pick_source_labels(&doc.annotations);
        let mut merged = from_labels.clone();
        merged.extend(from_annotations.clone());
        let facts = label_facts(&merged);
        if facts.is_empty() {
            return Ok(());
        }
        let document = serde_json::json!({
            "annotations": from_annotations,
            "labels": from_labels,
        })
        .to_string();
        pending
            .entry(digest.to_string())
            .or_default()
            .push(NewProvenance {
                source: SOURCE_LABELS,
                source_digest: doc.config.as_ref().map(|c| c.digest.clone()),
                document_digest: sha256_hex(document.as_bytes()),
                parse_error: None,
                statement_type: None,
                predicate_type: None,
                facts,
                document: Some(document),
            });
        Ok(())
    }

    /// The source labels of config `d`, if `repo` serves it and it parses;
    /// kept in the cache once read.
    async fn config_labels(&self, repo: &RepoName, d: &Digest) -> Result<Option<Labels>> {
        let Some(Ok(bytes)) = self.read_small_blob(repo, d).await? else {
            return Ok(None);
        };
        let Ok(c) = serde_json::from_slice::<ImageConfig>(&bytes) else {
            return Ok(None);
        };
        let all = c.config.and_then(|c| c.labels).unwrap_or_default();
        let labels = Arc::new(pick_source_labels(&all));
        self.extraction().labels.insert(d.clone(), labels.clone());
        Ok(Some(labels))
    }

    /// Reads one attestation layer about `subject` and adds what it says, or why
    /// it could not be used.
    async fn attestation_layer(
        &self,
        repo: &RepoName,
        subject: &str,
        layer: &Desc,
        pending: &mut Pending,
    ) -> Result<()> {
        let Ok(layer_digest) = layer.digest.parse::<Digest>() else {
            return Ok(());
        };
        let unparsed = |reason: String| NewProvenance {
            source: SOURCE_ATTESTATION,
            source_digest: Some(layer_digest.to_string()),
            document_digest: layer_digest.to_string(),
            parse_error: Some(reason),
            predicate_type: layer.annotations.get("in-toto.io/predicate-type").cloned(),
            ..NewProvenance::default()
        };
        let records = pending.entry(subject.to_string()).or_default();
        let bytes = match self.read_small_blob(repo, &layer_digest).await? {
            None => return Ok(()),
            Some(Err(reason)) => {
                records.push(unparsed(reason));
                return Ok(());
            }
            Some(Ok(bytes)) => bytes,
        };
        let statements = match parse_document_with_limit(&bytes, MAX_ATTESTATION_BYTES as usize) {
            Ok(s) => s,
            Err(e) => {
                records.push(unparsed(attestation_error(&e)));
                return Ok(());
            }
        };
        let count = statements.len();
        let original = (count == 1).then(|| single_value(&bytes)).flatten();
        for (i, s) in statements.iter().enumerate() {
            let mut r = parsed_record(
                SOURCE_ATTESTATION,
                Some(layer_digest.to_string()),
                s,
                original.as_ref(),
            );
            if !s.names_digest(subject) {
                r.parse_error = Some(subject_mismatch(i, count, s, subject));
                r.facts = Default::default();
            }
            records.push(r);
        }
        Ok(())
    }

    /// A manifest of `repo` no larger than the attestation limit; `None` when
    /// it is absent or too large.
    async fn read_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Bytes>> {
        match self.metadata().manifest(repo, digest).await? {
            Some(m) if m.size <= MAX_ATTESTATION_BYTES => {
                Ok(Some(self.manifest_bytes(digest).await?))
            }
            _ => Ok(None),
        }
    }

    /// A blob of `repo`, read only when its recorded size is within the limit:
    /// `None` when the repository does not serve it, `Some(Err(reason))` when
    /// it is too large.
    async fn read_small_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<std::result::Result<Bytes, String>>> {
        let Some(size) = self.metadata().repository_blob(repo, digest).await? else {
            return Ok(None);
        };
        if size > MAX_ATTESTATION_BYTES {
            return Ok(Some(Err(format!(
                "attestation layer is {size} bytes; the limit is {MAX_ATTESTATION_BYTES} bytes"
            ))));
        }
        Ok(Some(Ok(self.blob_store().read(digest).await?)))
    }
}

/// The labels and annotations that say something about an artifact's source.
fn pick_source_labels(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    const KEYS: [&str; 5] = [
        LABEL_SOURCE,
        LABEL_REVISION,
        LABEL_CREATED,
        LABEL_VERSION,
        LABEL_AUTHORS,
    ];
    m.iter()
        .filter(|(k, _)| KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn attestation_error(e: &ProvenanceError) -> String {
    format!("attestation layer is not a usable in-toto document: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestation_media_types() {
        assert!(is_attestation_type("application/vnd.in-toto+json"));
        assert!(is_attestation_type("application/vnd.dsse.envelope.v1+json"));
        assert!(is_attestation_type(
            "application/vnd.dev.sigstore.bundle.v0.3+json"
        ));
        assert!(is_attestation_type(
            "application/vnd.dev.sigstore.bundle+json;version=0.3"
        ));
        assert!(!is_attestation_type(
            "application/vnd.oci.image.layer.v1.tar"
        ));
    }

    #[test]
    fn mismatch_messages_list_the_subjects() {
        let doc = serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "predicateType": "https://slsa.dev/provenance/v1",
            "subject": [{"name": "x", "digest": {"sha256": "aa"}}],
            "predicate": {},
        });
        let s = &crate::domain::provenance::parse_document(doc.to_string().as_bytes()).unwrap()[0];
        let m = subject_mismatch(0, 1, s, "sha256:bb");
        assert!(m.contains("sha256:aa"), "{m}");
        assert!(m.contains("not sha256:bb"), "{m}");
    }
}
