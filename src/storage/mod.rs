//! Content-addressed blob storage over `object_store`.
//!
//! This layer knows bytes and digests only: no repository names, no HTTP, no SQL.
//! Whether a blob is *visible* in a repository is the metadata's business; this
//! layer guarantees that an object under a blob key always holds exactly the
//! bytes its digest names, because bytes reach a blob key only after their digest
//! has been verified (or was computed while they streamed in).
//!
//! ```text
//! <root>/
//! ├── blobs/<algorithm>/<first two hex>/<hex>   content, immutable once written
//! ├── uploads/<upload id>/<offset>-<nonce>      one object per received chunk
//! └── staging/<uuid>                            an upload's last chunk, a blob being joined
//!                                               or re-hashed (hard-linked or renamed into place)
//! ```

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, PutPayload, WriteMultipart,
};

use crate::domain::{ByteRange, Digest, Hasher};

mod metered;
pub use metered::{MeteredStore, StoreObserver};

/// Errors of the blob store. Messages never reach clients (they may name keys).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("reading blob file: {0}")]
    Io(#[from] std::io::Error),
    /// The client's request body failed mid-stream (disconnect, bad framing).
    #[error("request body: {0}")]
    Body(String),
    /// The body was larger than the caller allowed.
    #[error("body exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("object {0} not found")]
    NotFound(String),
    #[error("invalid object store URL {url:?}: {reason}")]
    Url { url: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the failure is the local disk being full (`ENOSPC`, or a quota):
    /// the client is told so (`507`) rather than "unavailable".
    pub fn is_out_of_space(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) {
                    return true;
                }
            }
            cur = e.source();
        }
        false
    }
}

/// Time limits of the requests to a remote object store (S3, GCS, Azure). Every
/// request is bounded, so a store that stops answering costs a client at most
/// about `retry_timeout + timeout`, never a hang.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// One request, from connecting until its response body has been read. A
    /// streamed download that takes longer resumes where it stopped with a new
    /// request (while retries remain).
    pub timeout: std::time::Duration,
    /// One long transfer in all (a streamed read, a multipart part or its
    /// completion, a copy); a streamed read also fails after `timeout` without
    /// a byte.
    pub transfer_timeout: std::time::Duration,
    /// Establishing a connection.
    pub connect_timeout: std::time::Duration,
    /// Retries of a failed request (connection refused, timeout, 5xx), with
    /// exponential backoff from 100 ms.
    pub max_retries: usize,
    /// No retry starts this long after the first attempt.
    pub retry_timeout: std::time::Duration,
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound {
            timeout: std::time::Duration::from_secs(30),
            transfer_timeout: std::time::Duration::from_secs(3600),
            connect_timeout: std::time::Duration::from_secs(5),
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// The store for a remote scheme and, for S3, the same client as a URL signer.
type Remote = (
    Arc<dyn ObjectStore>,
    Option<Arc<object_store::aws::AmazonS3>>,
);

/// Builds a cloud store from its URL and configuration keys, with `outbound`'s
/// timeouts and retries (which `object_store::parse_url_opts` cannot set).
fn remote_store(
    scheme: object_store::ObjectStoreScheme,
    url: &url::Url,
    opts: Vec<(String, String)>,
    outbound: &Outbound,
) -> object_store::Result<Remote> {
    use object_store::{ObjectStoreScheme as S, RetryConfig};
    let retry = RetryConfig {
        max_retries: outbound.max_retries,
        retry_timeout: outbound.retry_timeout,
        ..RetryConfig::default()
    };
    // The limits go last so that no variable of the environment undoes them.
    let limits = [
        ("timeout", outbound.timeout),
        ("connect_timeout", outbound.connect_timeout),
    ]
    .map(|(k, d)| (k.to_string(), format!("{}ms", d.as_millis().max(1))));
    let opts: Vec<_> = opts.into_iter().chain(limits).collect();
    // Keys a builder does not know are ignored, as `parse_url_opts` does: the
    // environment holds every provider's variables.
    macro_rules! build {
        ($builder:ty) => {{
            let b = opts.iter().fold(
                <$builder>::new()
                    .with_url(url.to_string())
                    .with_retry(retry),
                |b, (k, v)| match k.parse() {
                    Ok(key) => b.with_config(key, v),
                    Err(_) => b,
                },
            );
            Arc::new(b.build()?)
        }};
    }
    Ok(match scheme {
        S::AmazonS3 => {
            let s3: Arc<object_store::aws::AmazonS3> = build!(object_store::aws::AmazonS3Builder);
            (s3.clone() as Arc<dyn ObjectStore>, Some(s3))
        }
        S::GoogleCloudStorage => {
            let gcs: Arc<object_store::gcp::GoogleCloudStorage> =
                build!(object_store::gcp::GoogleCloudStorageBuilder);
            (gcs as Arc<dyn ObjectStore>, None)
        }
        S::MicrosoftAzure => {
            let az: Arc<object_store::azure::MicrosoftAzure> =
                build!(object_store::azure::MicrosoftAzureBuilder);
            (az as Arc<dyn ObjectStore>, None)
        }
        other => {
            return Err(object_store::Error::NotSupported {
                source: format!("object store scheme {other:?}").into(),
            })
        }
    })
}

/// A stream of blob bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// One stored chunk of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPart {
    pub key: String,
    pub size: u64,
}

/// Content-addressed blob store.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// The same store for long transfers: multipart uploads, copies and
    /// streamed reads, bounded by `Outbound::transfer_timeout` in all (and
    /// reads by `idle` between bytes) instead of the per-request timeout.
    bulk: Arc<dyn ObjectStore>,
    /// How long a remote read may wait for its answer or its next bytes.
    idle: std::time::Duration,
    /// Size of the parts streamed to the object store; bounds per-upload memory.
    part_size: usize,
    /// Root directory when the store is the local filesystem: object_store does
    /// not fsync, so this layer does, before anything is acknowledged.
    local_root: Option<std::path::PathBuf>,
    /// On the local filesystem: the directories whose entries, up to the
    /// root, this process has made durable (see [`DurableDirs`]).
    durable_dirs: DurableDirs,
    /// Blob files being streamed from the local disk right now: their count
    /// sets each one's window (see [`WINDOW_FEW`]).
    open_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// On S3: what signs URLs that let a client read an object directly, and
    /// the prefix the store's keys sit under in the bucket.
    signer: Option<(Arc<dyn Signer>, Path)>,
}

impl BlobStore {
    /// Opens the store named by an `object_store` URL (`file://`, `memory://`,
    /// `s3://`, `gs://`, `az://`). Cloud credentials come from the standard
    /// environment variables of each provider.
    pub fn open(url: &str) -> Result<BlobStore> {
        Self::open_with(url, &[], &Outbound::default())
    }

    /// [`BlobStore::open`] with `object_store` configuration keys (e.g.
    /// `aws_endpoint`) that override the environment's, and the time limits of
    /// every request to a remote store.
    pub fn open_with(
        url: &str,
        options: &[(String, String)],
        outbound: &Outbound,
    ) -> Result<BlobStore> {
        let parsed = url::Url::parse(url).map_err(|e| Error::Url {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let bad = |reason: String| Error::Url {
            url: url.to_string(),
            reason,
        };
        let mut local_root = None;
        let mut signer: Option<(Arc<dyn Signer>, Path)> = None;
        let mut bulk: Option<Arc<dyn ObjectStore>> = None;
        let (store, part_size): (Arc<dyn ObjectStore>, usize) = match parsed.scheme() {
            "file" => {
                let path = parsed
                    .to_file_path()
                    .map_err(|_| bad("not an absolute file path".into()))?;
                std::fs::create_dir_all(&path)?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&path)?;
                local_root = Some(path);
                (Arc::new(fs), 1 << 20)
            }
            "memory" => (Arc::new(object_store::memory::InMemory::new()), 1 << 20),
            _ => {
                let opts: Vec<(String, String)> = std::env::vars()
                    .filter(|(k, _)| {
                        let k = k.to_ascii_uppercase();
                        k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
                    })
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    // Later keys win: the configuration's over the environment's.
                    .chain(options.iter().cloned())
                    .collect();
                let (scheme, prefix) = object_store::ObjectStoreScheme::parse(&parsed)
                    .map_err(|e| bad(e.to_string()))?;
                let (store, s3) = remote_store(scheme.clone(), &parsed, opts.clone(), outbound)
                    .map_err(|e| bad(e.to_string()))?;
                let long = Outbound {
                    timeout: outbound.transfer_timeout,
                    ..outbound.clone()
                };
                let (long, _) =
                    remote_store(scheme, &parsed, opts, &long).map_err(|e| bad(e.to_string()))?;
                // The concrete `AmazonS3` can also sign URLs (redirected pulls).
                signer = s3.map(|s3| (s3 as Arc<dyn Signer>, prefix.clone()));
                let under_prefix = |s: Arc<dyn ObjectStore>| -> Arc<dyn ObjectStore> {
                    if prefix.as_ref().is_empty() {
                        s
                    } else {
                        Arc::new(object_store::prefix::PrefixStore::new(s, prefix.clone()))
                    }
                };
                bulk = Some(under_prefix(long));
                let store = under_prefix(store);
                // Multipart parts must be at least 5 MiB on S3.
                (store, 8 << 20)
            }
        };
        Ok(BlobStore {
            bulk: bulk.unwrap_or_else(|| store.clone()),
            idle: outbound.timeout,
            store,
            part_size,
            local_root,
            durable_dirs: DurableDirs::default(),
            open_streams: Arc::default(),
            signer,
        })
    }

    /// Makes the object at `key` durable: on the local filesystem, fsyncs the file
    /// and its directory (so a rename into place survives a crash too). Other
    /// backends acknowledge writes only once they are durable.
    async fn sync(&self, key: &Path) -> Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = key
            .parts()
            .fold(root.clone(), |p, part| p.join(part.as_ref()));
        let (root, durable) = (root.clone(), self.durable_dirs.clone());
        tokio::task::spawn_blocking(move || sync_file_and_dirs(&file, &root, &durable))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    /// Where `key` lives under the local root.
    fn local_file(&self, root: &std::path::Path, key: &str) -> std::path::PathBuf {
        Path::from(key)
            .parts()
            .fold(root.to_path_buf(), |p, part| p.join(part.as_ref()))
    }

    /// What placing `parts` as `digest`'s blob on disk takes, for a blocking call.
    fn local_placement(
        &self,
        root: &std::path::Path,
        parts: &[StoredPart],
        digest: &Digest,
    ) -> LocalPlacement {
        LocalPlacement {
            sources: parts
                .iter()
                .map(|p| self.local_file(root, &p.key))
                .collect(),
            staging: self.local_file(root, &format!("staging/{}", uuid::Uuid::new_v4().simple())),
            dest: self.local_file(root, Self::blob_path(digest).as_ref()),
            root: root.to_path_buf(),
            durable: self.durable_dirs.clone(),
        }
    }

    /// What deleting the upload parts `keys` on disk takes, for a blocking call.
    fn local_cleanup(&self, root: &std::path::Path, keys: &[String]) -> LocalCleanup {
        LocalCleanup {
            files: keys.iter().map(|k| self.local_file(root, k)).collect(),
            uploads: root.join("uploads"),
            durable: self.durable_dirs.clone(),
        }
    }

    fn blob_path(digest: &Digest) -> Path {
        let hex = digest.hex();
        Path::from(format!(
            "blobs/{}/{}/{}",
            digest.algorithm().as_str(),
            &hex[..2],
            hex
        ))
    }

    fn part_path(upload_id: &str, offset: u64) -> String {
        format!(
            "uploads/{upload_id}/{offset:020}-{}",
            uuid::Uuid::new_v4().simple()
        )
    }

    /// Streams `body` into a new object for one chunk of upload `upload_id`
    /// starting at `offset`, feeding every byte through `hasher`.
    ///
    /// Memory stays within about two part sizes whatever the body's length.
    /// An empty body stores nothing and returns `None`.
    pub async fn write_part<S, E>(
        &self,
        upload_id: &str,
        offset: u64,
        body: S,
        hasher: &mut Hasher,
        limit: u64,
    ) -> Result<Option<StoredPart>>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let key = Self::part_path(upload_id, offset);
        let path = Path::from(key.clone());
        let size = self.write_stream(&path, body, Some(hasher), limit).await?;
        if size > 0 {
            // A chunk is acknowledged (202) once stored: it must survive a crash.
            self.sync(&path).await?;
        }
        Ok((size > 0).then_some(StoredPart { key, size }))
    }

    /// [`BlobStore::write_part`] for the chunk that completes an upload, stored
    /// under `staging/`: not made durable on its own, since it is acknowledged
    /// only as part of the blob, which [`BlobStore::commit_parts`] makes durable
    /// (or it is deleted). Spares a push of one request its chunk's fsyncs and,
    /// on disk, a session directory to create and remove.
    pub async fn write_last_part<S, E>(
        &self,
        body: S,
        hasher: &mut Hasher,
        limit: u64,
    ) -> Result<Option<StoredPart>>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let key = format!("staging/{}", uuid::Uuid::new_v4().simple());
        let path = Path::from(key.clone());
        let size = self.write_stream(&path, body, Some(hasher), limit).await?;
        Ok((size > 0).then_some(StoredPart { key, size }))
    }

    /// Writes a stream to `path`, hashing it if a hasher is given. On local
    /// disk it goes straight into the file ([`write_local`]); elsewhere small
    /// bodies become one PUT, larger ones a multipart upload with bounded
    /// buffering.
    async fn write_stream<S, E>(
        &self,
        path: &Path,
        body: S,
        mut hasher: Option<&mut Hasher>,
        limit: u64,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        if let Some(root) = &self.local_root {
            let file = self.local_file(root, path.as_ref());
            return write_local(file, body, hasher, limit).await;
        }
        let mut body = std::pin::pin!(body);
        let mut first: Vec<Bytes> = Vec::new();
        let mut buffered = 0usize;
        let mut writer: Option<WriteMultipart> = None;
        let mut total: u64 = 0;
        let result: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = take_chunk(chunk, &mut total, limit, hasher.as_deref_mut())?;
                match writer.as_mut() {
                    Some(w) => {
                        w.wait_for_capacity(2).await?;
                        w.put(chunk);
                    }
                    None => {
                        buffered += chunk.len();
                        first.push(chunk);
                        if buffered >= self.part_size {
                            let upload = self.bulk.put_multipart(path).await?;
                            let mut w = WriteMultipart::new_with_chunk_size(upload, self.part_size);
                            for b in first.drain(..) {
                                w.put(b);
                            }
                            writer = Some(w);
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        match (result, writer) {
            (Err(e), Some(w)) => {
                let _ = w.abort().await;
                Err(e)
            }
            (Err(e), None) => Err(e),
            (Ok(()), Some(w)) => {
                w.finish().await?;
                Ok(total)
            }
            (Ok(()), None) => {
                if total > 0 {
                    self.store.put(path, PutPayload::from_iter(first)).await?;
                }
                Ok(total)
            }
        }
    }

    /// Makes the concatenation of `parts`, whose digest the caller has verified
    /// to be `digest`, the content of that blob. A blob that already exists is
    /// left alone (same digest, same bytes). The parts stay where they are:
    /// [`BlobStore::settle`] deletes them once the blob is linked, and may
    /// need them again before that.
    pub async fn commit_parts(&self, parts: &[StoredPart], digest: &Digest) -> Result<()> {
        if let (Some(root), false) = (&self.local_root, parts.is_empty()) {
            // On disk: the check, the link or join, and the fsyncs in one
            // blocking call instead of a hand-off to the blocking pool each.
            // The kernel joins many chunks (copy_file_range): no pass through
            // user space, no object_store part machinery.
            let place = self.local_placement(root, parts, digest);
            tokio::task::spawn_blocking(move || place.run())
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))??;
            return Ok(());
        }
        if self.exists(digest).await? {
            return Ok(());
        }
        self.place(parts, digest).await
    }

    /// Writes `parts` as `digest`'s blob through the object store, whether or
    /// not it exists, and makes it durable. The parts stay.
    async fn place(&self, parts: &[StoredPart], digest: &Digest) -> Result<()> {
        let target = Self::blob_path(digest);
        match parts {
            [] => {
                self.store.put(&target, PutPayload::new()).await?;
            }
            [one] => {
                self.bulk
                    .copy(&Path::from(one.key.clone()), &target)
                    .await?;
            }
            many => {
                let stream = self.concat(many);
                self.write_stream(&target, stream, None, u64::MAX).await?;
            }
        }
        self.sync(&target).await
    }

    /// Ends a commit once the blob's row is linked: deletes the `parts`, and
    /// first, with `recheck`, places them again if the blob is gone.
    ///
    /// A push whose claim found no blob row had nothing keeping a collection
    /// away between its commit and its link: another push of the same bytes
    /// may have linked a row meanwhile, which a collection with a grace
    /// shorter than the push then took, file and all; this push's link then
    /// made a fresh row for bytes that are gone. A fresh row is not
    /// collected within its grace, so what is placed here stays.
    pub async fn settle(&self, parts: &[StoredPart], digest: &Digest, recheck: bool) -> Result<()> {
        let keys: Vec<String> = parts.iter().map(|p| p.key.clone()).collect();
        let placed = if let (Some(root), false) = (&self.local_root, parts.is_empty()) {
            // The check, a placement if needed, and the deletes: one blocking call.
            let place = recheck.then(|| self.local_placement(root, parts, digest));
            let cleanup = self.local_cleanup(root, &keys);
            tokio::task::spawn_blocking(move || {
                let placed = match &place {
                    Some(p) => p.run()?,
                    None => false,
                };
                cleanup.run();
                Ok::<_, std::io::Error>(placed)
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??
        } else {
            let missing = recheck && !self.exists(digest).await?;
            if missing {
                self.place(parts, digest).await?;
            }
            self.delete_parts(&keys).await;
            missing
        };
        if placed {
            tracing::warn!(%digest, "a collection took the blob while it was pushed; placed it again");
        }
        Ok(())
    }

    /// Re-reads `parts`, hashes them with `hasher`, and stores them as a blob only
    /// if the digest matches `expected`. Used when a client finishes an upload with
    /// a digest of another algorithm than the session hashed with.
    pub async fn commit_rehashed(
        &self,
        parts: &[StoredPart],
        mut hasher: Hasher,
        expected: &Digest,
    ) -> Result<std::result::Result<(), Digest>> {
        let staging = Path::from(format!("staging/{}", uuid::Uuid::new_v4().simple()));
        let stream = self.concat(parts);
        self.write_stream(&staging, stream, Some(&mut hasher), u64::MAX)
            .await?;
        let actual = hasher.finish();
        if &actual != expected {
            let _ = self.store.delete(&staging).await;
            return Ok(Err(actual));
        }
        let total: u64 = parts.iter().map(|p| p.size).sum();
        let target = Self::blob_path(expected);
        let placed = if total == 0 {
            self.store.put(&target, PutPayload::new()).await.map(|_| ())
        } else {
            self.bulk.rename(&staging, &target).await
        };
        if let Err(e) = placed {
            let _ = self.store.delete(&staging).await;
            return Err(e.into());
        }
        self.sync(&target).await?;
        Ok(Ok(()))
    }

    fn concat(&self, parts: &[StoredPart]) -> ByteStream {
        let store = self.bulk.clone();
        let idle = self.idle;
        let keys: Vec<Path> = parts.iter().map(|p| Path::from(p.key.clone())).collect();
        futures::stream::iter(keys)
            .then(move |k| {
                let store = store.clone();
                async move {
                    let r = within(idle, store.get(&k)).await?;
                    Ok::<_, Error>(idle_limited(
                        r.into_stream().map_err(Error::from).boxed(),
                        idle,
                    ))
                }
            })
            .try_flatten()
            .boxed()
    }

    /// Deletes upload chunks; missing ones are fine (another replica may have
    /// cleaned up first).
    pub async fn delete_parts(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        if let Some(root) = &self.local_root {
            let cleanup = self.local_cleanup(root, keys);
            let _ = tokio::task::spawn_blocking(move || cleanup.run()).await;
            return;
        }
        for k in keys {
            match self.store.delete(&Path::from(k.clone())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(key = %k, error = %e, "could not delete upload part"),
            }
        }
    }

    /// Deletes files under `staging/` last written more than `age` ago, and
    /// returns how many went. A request keeps a staged file for the length of
    /// its body and commit, then deletes it (or links it into place and deletes
    /// its own name, see [`BlobStore::settle`]); one older than any request
    /// was left by a process that stopped mid-way, a crash or a kill, and would
    /// otherwise keep its bytes, or a collected blob's, on disk forever.
    pub async fn sweep_staging(&self, age: std::time::Duration) -> Result<u64> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let cutoff = now_ms.saturating_sub(age.as_millis().min(i64::MAX as u128) as i64);
        let staging = Path::from("staging");
        let mut listed = self.store.list(Some(&staging));
        let mut swept = 0;
        while let Some(meta) = listed.next().await {
            let meta = match meta {
                Ok(m) => m,
                // Deleted by another sweep meanwhile.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if meta.last_modified.timestamp_millis() >= cutoff {
                continue;
            }
            match self.store.delete(&meta.location).await {
                Ok(()) => swept += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(swept)
    }

    /// Deletes a blob's bytes (garbage collection, after the metadata claimed
    /// it). Already gone is fine: a collection interrupted after this step
    /// repeats it.
    pub async fn delete_blob(&self, digest: &Digest) -> Result<()> {
        match self.store.delete(&Self::blob_path(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A URL from which a client may GET `digest`'s bytes directly from the
    /// object store for `expires_in`, without credentials of its own; `None`
    /// when the backend cannot sign URLs (only S3 does here). The key stays
    /// this layer's business: callers get a URL, never a key.
    pub async fn presigned_get(
        &self,
        digest: &Digest,
        expires_in: std::time::Duration,
    ) -> Result<Option<url::Url>> {
        let Some((signer, prefix)) = &self.signer else {
            return Ok(None);
        };
        let key: Path = prefix
            .parts()
            .chain(Self::blob_path(digest).parts())
            .collect();
        Ok(Some(
            signer
                .signed_url(http::Method::GET, &key, expires_in)
                .await?,
        ))
    }

    pub async fn exists(&self, digest: &Digest) -> Result<bool> {
        match self.store.head(&Self::blob_path(digest)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a whole small blob (a config, an attestation, a manifest pushed
    /// before manifests were stored in the database).
    pub async fn read(&self, digest: &Digest) -> Result<Bytes> {
        match self.store.get(&Self::blob_path(digest)).await {
            Ok(r) => Ok(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(Error::NotFound(digest.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams a blob, or the inclusive `range` of it.
    ///
    /// On the local filesystem the file is read directly with large buffers
    /// rather than through object_store's small-chunk stream.
    pub async fn stream(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream> {
        let opts = GetOptions {
            range: range.map(|r| GetRange::Bounded(r.start..r.end + 1)),
            ..Default::default()
        };
        let path = Self::blob_path(digest);
        let result = match within(self.idle, self.bulk.get_opts(&path, opts)).await {
            Ok(r) => r,
            Err(Error::ObjectStore(object_store::Error::NotFound { .. })) => {
                return Err(Error::NotFound(digest.to_string()))
            }
            Err(e) => return Err(e),
        };
        let span = result.range.clone();
        match result.payload {
            GetResultPayload::File(file, _) => {
                let open = OpenStream::new(&self.open_streams);
                Ok(mapped_windows(file, span, open).boxed())
            }
            GetResultPayload::Stream(s) => {
                Ok(idle_limited(s.map_err(Error::from).boxed(), self.idle))
            }
        }
    }
}

/// `request`, failed as timed out when the store has not answered in `idle`
/// (the long-transfer client's own limit is much longer).
async fn within<T>(
    idle: std::time::Duration,
    request: impl std::future::Future<Output = object_store::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(idle, request).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the object store did not answer within {idle:?}"),
        ))),
    }
}

/// Ends `stream` with a timed-out error when no bytes come for `idle`: a long
/// download may go on as long as the client reads, but not stall.
fn idle_limited(stream: ByteStream, idle: std::time::Duration) -> ByteStream {
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => Some((
                Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the object store sent nothing for {idle:?}"),
                ))),
                None,
            )),
        }
    })
    .boxed()
}

/// Bytes of a blob file mapped, sent and unmapped at a time.
const WINDOW: u64 = 1 << 20;

/// The window while at most [`FEW_STREAMS`] blob files are being streamed:
/// each window costs a hand-off to the blocking pool, a `mmap` and a `munmap`,
/// and a 64 MiB pull at concurrency 1 measured 7% faster with 4 MiB windows.
/// With more streams open the small window keeps memory bounded (the bar is
/// 64 MiB of RSS for sixteen 512 MiB pulls at once).
const WINDOW_FEW: u64 = 4 << 20;

/// Open streams up to which each gets [`WINDOW_FEW`].
const FEW_STREAMS: usize = 4;

/// Counts the blob files being streamed; one per stream, dropped with it.
struct OpenStream(Arc<std::sync::atomic::AtomicUsize>);

impl OpenStream {
    fn new(open: &Arc<std::sync::atomic::AtomicUsize>) -> OpenStream {
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenStream(open.clone())
    }

    /// The window for a mapping, by how many streams are open now. A
    /// stream's first window is always the small one: when many pulls start
    /// at once, each has been counted before any maps a large window.
    fn window(&self, first: bool) -> u64 {
        if !first && self.0.load(std::sync::atomic::Ordering::Relaxed) <= FEW_STREAMS {
            WINDOW_FEW
        } else {
            WINDOW
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Streams `span` of a blob file as memory-mapped windows: the socket write
/// copies straight from the page cache, where a `read` would copy every byte
/// once more into a buffer first. A window is unmapped when the connection has
/// written it, so memory stays bounded by the windows in flight, not the blob.
fn mapped_windows(
    file: std::fs::File,
    span: std::ops::Range<u64>,
    open: OpenStream,
) -> impl Stream<Item = Result<Bytes>> + Send {
    let file = Arc::new(file);
    futures::stream::try_unfold((span.start, open), move |(offset, open)| {
        let file = file.clone();
        let end = span.end;
        async move {
            if offset >= end {
                return Ok(None);
            }
            let len = open.window(offset == span.start).min(end - offset);
            let window = tokio::task::spawn_blocking(move || -> Result<Bytes> {
                // SAFETY: a blob file is immutable once in place: it is
                // written under another name, fsynced and renamed, and never
                // opened for writing again; garbage collection unlinks it,
                // which leaves a live mapping intact. Only a process outside
                // Cairn truncating the file could invalidate the mapping.
                let map = unsafe {
                    memmap2::MmapOptions::new()
                        .offset(offset)
                        .len(len as usize)
                        .populate()
                        .map(&*file)?
                };
                Ok(Bytes::from_owner(map))
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
            Ok(Some((window, (offset + len, open))))
        }
    })
}

/// Directories under the local root whose entry in their parent, and so on up
/// to the root, this process has fsynced: a new entry in one of them is
/// durable once the directory itself is fsynced. Each process learns them
/// anew, so a directory created by a process that crashed before fsyncing its
/// parent is made durable by the first write into it after the restart.
/// Directories are removed only with their upload session (then forgotten).
#[derive(Clone, Default)]
struct DurableDirs(Arc<std::sync::Mutex<std::collections::HashSet<std::path::PathBuf>>>);

/// More directories than this known durable and the memory starts over: the
/// blob tree has 256 per algorithm, and each upload session one for a while.
const DURABLE_DIRS_MAX: usize = 4096;

impl DurableDirs {
    fn contains(&self, dir: &std::path::Path) -> bool {
        self.0.lock().is_ok_and(|s| s.contains(dir))
    }

    fn remember(&self, dirs: Vec<std::path::PathBuf>) {
        if let Ok(mut s) = self.0.lock() {
            if s.len() + dirs.len() > DURABLE_DIRS_MAX {
                s.clear();
            }
            s.extend(dirs);
        }
    }

    fn forget(&self, dir: &std::path::Path) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(dir);
        }
    }
}

/// Makes `file` and its name durable: fsyncs the file and its directory, and,
/// unless `durable` knows that directory, every directory above it up to
/// `root` (any of them may have just been created, as a new
/// `blobs/sha256/ab/` is, and its own entry must be durable too). Each fsync
/// is a disk cache flush (about 40 µs on the benchmark machine); a blob into a
/// known directory takes two instead of five.
fn sync_file_and_dirs(
    file: &std::path::Path,
    root: &std::path::Path,
    durable: &DurableDirs,
) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    let Some(dir) = file.parent() else {
        return Ok(());
    };
    std::fs::File::open(dir)?.sync_all()?;
    let mut walked = Vec::new();
    let mut d = dir;
    while d != root && !durable.contains(d) {
        let Some(parent) = d.parent() else { break };
        std::fs::File::open(parent)?.sync_all()?;
        walked.push(d.to_path_buf());
        d = parent;
    }
    durable.remember(walked);
    Ok(())
}

/// Bytes gathered before each write to a local file: the first MiB's
/// batches, and every batch while many uploads are in flight (see
/// [`write_batch`]). With one batch being
/// written while the next is read, an upload holds at most two: bounded
/// memory (gathering a whole 1 MiB part first held 16 MiB under 16 concurrent
/// 1 MiB pushes) with few trips to the blocking pool. Past
/// [`LOCAL_WRITE_BATCH_AFTER`] a batch is also hashed in its trip, and is held
/// that much longer: 512 KiB batches, which cost half the trips, then held
/// 37 MiB at 16 concurrent 64 MiB pushes, 256 KiB ones 30–32 MiB, at the
/// same throughput.
const LOCAL_WRITE_BATCH: usize = 256 << 10;

/// Bytes after which batches are hashed on the blocking pool and the kernel
/// is asked to start writing them back early.
const LOCAL_WRITE_BATCH_AFTER: u64 = 1 << 20;

/// Past [`LOCAL_WRITE_BATCH_AFTER`], the bytes the batches of all local
/// uploads in flight may add up to; each gets an equal share, between
/// [`LOCAL_WRITE_BATCH`] and [`LOCAL_WRITE_BATCH_MAX`]. Every batch is a trip
/// to the blocking pool and back, two thread wake-ups: a lone 64 MiB push in
/// 256 KiB batches makes 256 trips, and larger batches ran it 20% faster
/// (64 MiB pushes at c1, alternating: 615 and 664 MB/s in 256 KiB batches,
/// 792 and 758 in 1 MiB ones). Many uploads at once already keep the cores
/// busy, so they keep the small batches and the memory bound above.
const LOCAL_WRITE_BUDGET: usize = 2 << 20;

/// The largest batch. 2 MiB ones ran a lone push faster still (846 and 864
/// MB/s) but held 4 MiB more at peak, above the reference registry's RSS for
/// the same push; 4 MiB ones were slower (less overlap of reading and
/// writing).
const LOCAL_WRITE_BATCH_MAX: usize = 1 << 20;

/// Local uploads streaming to a file right now (see [`LOCAL_WRITE_BUDGET`]).
static LOCAL_STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts one local upload in [`LOCAL_STREAMS`] while it lives.
struct LocalStream;

impl LocalStream {
    fn start() -> LocalStream {
        LOCAL_STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        LocalStream
    }
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        LOCAL_STREAMS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The batch size for an upload that has received `total` bytes while
/// `streams` uploads (itself included) are in flight.
fn write_batch(total: u64, streams: usize) -> usize {
    if total <= LOCAL_WRITE_BATCH_AFTER {
        return LOCAL_WRITE_BATCH;
    }
    (LOCAL_WRITE_BUDGET / streams.max(1)).clamp(LOCAL_WRITE_BATCH, LOCAL_WRITE_BATCH_MAX)
}

/// One chunk of a body as it arrives: counted against `limit` into `total`
/// and fed through `hasher`.
fn take_chunk<E: std::fmt::Display>(
    chunk: std::result::Result<Bytes, E>,
    total: &mut u64,
    limit: u64,
    hasher: Option<&mut Hasher>,
) -> Result<Bytes> {
    let chunk = chunk.map_err(|e| Error::Body(e.to_string()))?;
    *total += chunk.len() as u64;
    if *total > limit {
        return Err(Error::TooLarge { limit });
    }
    if let Some(h) = hasher {
        h.update(&chunk);
    }
    Ok(chunk)
}

/// A batch being hashed and written to a local file on the blocking pool;
/// gives the file and the hasher back.
type LocalWrite = tokio::task::JoinHandle<std::io::Result<(std::fs::File, Option<Hasher>)>>;

/// Streams `body` into the local file `file`, hashing it if a hasher is given.
/// The file (and its directories) is created with the first bytes, so an empty
/// body stores nothing. A failure, or the request being dropped, removes the
/// partial file. Not fsynced: callers decide when bytes must be durable.
async fn write_local<S, E>(
    file: std::path::PathBuf,
    body: S,
    hasher: Option<&mut Hasher>,
    limit: u64,
) -> Result<u64>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let mut partial = PartialFile {
        path: file,
        created: false,
        complete: false,
        inflight: None,
    };
    // The hasher travels with the batches (see `stream_to_local`) and comes
    // back with the last one.
    let mut running = hasher.as_deref().cloned();
    let result = stream_to_local(&mut partial, body, &mut running, limit).await;
    // Wait for the last write even on failure, so the file is removed after it.
    let last = match partial.inflight.take() {
        Some(w) => joined(w).await.map(|(_, h)| h.or_else(|| running.take())),
        None => Ok(running),
    };
    let total = result?;
    let last = last?;
    partial.complete = true;
    if let (Some(h), Some(done)) = (hasher, last) {
        *h = done;
    }
    Ok(total)
}

/// The loop of [`write_local`]: reads `body` while the previous batch is
/// written on the blocking pool, leaving the last batch in `partial.inflight`.
/// Past the first MiB each batch is hashed there too, and the hasher travels
/// with it (`running` holds it otherwise).
///
/// The hash runs beside the socket reads rather than between them: a large
/// push is bound by one core's SHA-256, and the reads then take none of that
/// core (64 MiB pushes took 245 ms with the hash here, 392 ms with it between
/// the reads and the portable SHA-256, on a core hashing 340 MB/s). One batch
/// in flight, one being read: a writer fed through a queue measured 230 ms
/// but held twice the memory at 16 concurrent pushes (61 MiB against 29).
async fn stream_to_local<S, E>(
    partial: &mut PartialFile,
    body: S,
    running: &mut Option<Hasher>,
    limit: u64,
) -> Result<u64>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut pending: Vec<Bytes> = Vec::new();
    let mut pending_len = 0usize;
    let mut total: u64 = 0;
    // Whether the batch being gathered is hashed by its job (else here).
    let mut in_jobs = false;
    let _counted = LocalStream::start();
    loop {
        let next = body.next().await;
        let end = next.is_none();
        if let Some(chunk) = next {
            // The first MiB is hashed as it arrives, while the batch ahead
            // of it is written: a small body's batches are then freed as soon
            // as they are written (memory at 16 concurrent 1 MiB pushes).
            let here = if in_jobs { None } else { running.as_mut() };
            let chunk = take_chunk(chunk, &mut total, limit, here)?;
            pending_len += chunk.len();
            pending.push(chunk);
        }
        let batch = write_batch(
            total,
            LOCAL_STREAMS.load(std::sync::atomic::Ordering::Relaxed),
        );
        if pending_len >= batch || (end && pending_len > 0) {
            let file = match partial.inflight.take() {
                Some(w) => {
                    let (f, h) = joined(w).await?;
                    if h.is_some() {
                        *running = h;
                    }
                    Some(f)
                }
                None => None,
            };
            // Past the first MiB the hasher goes with the batch.
            let mut hasher = if in_jobs { running.take() } else { None };
            in_jobs = total > LOCAL_WRITE_BATCH_AFTER;
            let (path, bufs) = (partial.path.clone(), std::mem::take(&mut pending));
            let (len, early_writeback) = (pending_len as u64, total > LOCAL_WRITE_BATCH_AFTER);
            pending_len = 0;
            partial.created = true;
            partial.inflight = Some(tokio::task::spawn_blocking(move || {
                if let Some(h) = hasher.as_mut() {
                    for b in &bufs {
                        h.update(b);
                    }
                }
                let mut f = match file {
                    Some(f) => f,
                    None => create_with_dirs(&path)?,
                };
                write_all_vectored(&mut f, &bufs)?;
                if early_writeback {
                    start_writeback(&f, total - len, len);
                }
                Ok((f, hasher))
            }));
        }
        if end {
            return Ok(total);
        }
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` of `f` to disk now
/// rather than at the fsync that acknowledges the blob: a large blob's fsync
/// then waits for its last batches only, not for all of it (measured: 20 ms
/// of a 95 ms 64 MiB push). A hint only; durability still comes from fsync.
#[cfg(target_os = "linux")]
fn start_writeback(f: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the call's duration (borrowed from
    // `f`), and the call reads no memory of this process.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &std::fs::File, _: u64, _: u64) {}

/// Writes all of `bufs` with as few `writev` calls as the kernel allows.
fn write_all_vectored(f: &mut std::fs::File, bufs: &[Bytes]) -> std::io::Result<()> {
    use std::io::{IoSlice, Write};
    let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        // At most IOV_MAX (1024 on Linux) slices per call.
        let upto = rest.len().min(1024);
        match f.write_vectored(&rest[..upto]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The file and hasher back from a finished [`LocalWrite`], or its error.
async fn joined(w: LocalWrite) -> Result<(std::fs::File, Option<Hasher>)> {
    Ok(w.await.map_err(|e| Error::Io(std::io::Error::other(e)))??)
}

/// A file being written; removed when dropped unfinished.
struct PartialFile {
    path: std::path::PathBuf,
    created: bool,
    complete: bool,
    /// The write under way, if any.
    inflight: Option<LocalWrite>,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.created || self.complete {
            return;
        }
        let path = std::mem::take(&mut self.path);
        match (self.inflight.take(), tokio::runtime::Handle::try_current()) {
            // Dropped mid-write (the request went away): the write may yet
            // create the file, so it is removed once that write is over.
            (Some(w), Ok(rt)) => {
                rt.spawn(async move {
                    let _ = w.await;
                    let _ = tokio::fs::remove_file(path).await;
                });
            }
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Creates (or truncates) `path`, creating its directory if needed.
fn create_with_dirs(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    match std::fs::File::create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::File::create(path)
        }
        r => r,
    }
}

/// A blob placed on disk from its upload parts (see [`BlobStore::commit_parts`]).
struct LocalPlacement {
    sources: Vec<std::path::PathBuf>,
    staging: std::path::PathBuf,
    dest: std::path::PathBuf,
    root: std::path::PathBuf,
    durable: DurableDirs,
}

impl LocalPlacement {
    /// Places the blob, durably, unless it is there already (same digest,
    /// same bytes); true when it was placed.
    fn run(&self) -> std::io::Result<bool> {
        if self.dest.exists() {
            return Ok(false);
        }
        match self.sources.as_slice() {
            [one] => link_into(one, &self.dest, &self.staging)?,
            many => join_files(many, &self.staging, &self.dest)?,
        }
        sync_file_and_dirs(&self.dest, &self.root, &self.durable)?;
        Ok(true)
    }
}

/// Upload parts to delete on disk (see [`BlobStore::delete_parts`]).
struct LocalCleanup {
    files: Vec<std::path::PathBuf>,
    uploads: std::path::PathBuf,
    durable: DurableDirs,
}

impl LocalCleanup {
    /// Deletes the files, missing ones included, and the session directories
    /// left empty: each session's chunks sit in a directory of their own,
    /// which goes with them (else one empty directory would stay behind per
    /// upload ever made).
    fn run(&self) {
        let mut dirs = Vec::new();
        for f in &self.files {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "could not delete upload part")
                }
            }
            if let Some(d) = f
                .parent()
                .filter(|d| d.parent() == Some(self.uploads.as_path()))
            {
                dirs.push(d.to_path_buf());
            }
        }
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            // Fails, harmlessly, while another chunk is still there.
            if std::fs::remove_dir(&d).is_ok() {
                self.durable.forget(&d);
            }
        }
    }
}

/// Gives `from`'s file the name `dest` as well, creating `dest`'s directory if
/// needed: a hard link, so no byte is copied and the part stays for
/// [`BlobStore::settle`]. `dest` there already is fine (same digest, same
/// bytes). Where the file system has no hard links, a copy through `staging`.
fn link_into(
    from: &std::path::Path,
    dest: &std::path::Path,
    staging: &std::path::Path,
) -> std::io::Result<()> {
    let linked = match std::fs::hard_link(from, dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && from.exists() => {
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::hard_link(from, dest)
        }
        r => r,
    };
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(e),
        Err(e) => {
            tracing::debug!(error = %e, "no hard link here; copying the part");
            join_files(&[from.to_path_buf()], staging, dest)
        }
    }
}

/// Concatenates `sources` into `staging`, then renames it to `dest` (the caller
/// fsyncs `dest` and its directories). A failure removes `staging`.
fn join_files(
    sources: &[std::path::PathBuf],
    staging: &std::path::Path,
    dest: &std::path::Path,
) -> std::io::Result<()> {
    let result = (|| {
        if let Some(dir) = staging.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = std::fs::File::create(staging)?;
        for src in sources {
            std::io::copy(&mut std::fs::File::open(src)?, &mut out)?;
        }
        out.sync_all()?;
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(staging, dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(staging);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Algorithm;

    #[test]
    fn a_lone_upload_writes_larger_batches_past_its_first_mib_and_many_keep_small_ones() {
        // The first MiB always goes in small batches (small blobs' memory).
        assert_eq!(write_batch(0, 1), LOCAL_WRITE_BATCH);
        assert_eq!(write_batch(1 << 20, 1), LOCAL_WRITE_BATCH);
        assert_eq!(write_batch((1 << 20) + 1, 1), LOCAL_WRITE_BATCH_MAX);
        assert_eq!(write_batch(64 << 20, 2), LOCAL_WRITE_BATCH_MAX);
        assert_eq!(write_batch(64 << 20, 4), 512 << 10);
        assert_eq!(write_batch(64 << 20, 16), LOCAL_WRITE_BATCH);
        assert_eq!(write_batch(64 << 20, 1000), LOCAL_WRITE_BATCH);
        // A count that raced to zero still gets a batch.
        assert_eq!(write_batch(64 << 20, 0), LOCAL_WRITE_BATCH_MAX);
        for streams in 1..64 {
            let b = write_batch(64 << 20, streams);
            assert!((LOCAL_WRITE_BATCH..=LOCAL_WRITE_BATCH_MAX).contains(&b));
            assert!(
                b >= write_batch(64 << 20, streams + 1),
                "never larger with more uploads"
            );
            // Beyond the floor, all uploads' batches together stay within the budget.
            if b > LOCAL_WRITE_BATCH {
                assert!(b * streams <= LOCAL_WRITE_BUDGET);
            }
        }
    }

    fn chunks(data: &[u8], size: usize) -> impl Stream<Item = std::result::Result<Bytes, String>> {
        let v: Vec<_> = data
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(v)
    }

    /// The first blob into a directory makes the directory's own entry, and
    /// its parents', durable; later blobs there rely on that. An upload
    /// session's directory is forgotten with it.
    #[tokio::test]
    async fn directories_made_durable_are_remembered_and_forgotten_with_sessions() {
        let (dir, store) = local_store();
        let root = dir.path().to_path_buf();
        let known = |p: &str| store.durable_dirs.contains(&root.join(p));
        let data = b"remember the directory".to_vec();
        let digest = Digest::compute(Algorithm::Sha256, &data);
        let mut h = Algorithm::Sha256.hasher();
        let part = store
            .write_part("s9", 0, chunks(&data, 5), &mut h, u64::MAX)
            .await
            .unwrap()
            .unwrap();
        assert!(known("uploads/s9") && known("uploads"));
        store
            .commit_parts(std::slice::from_ref(&part), &digest)
            .await
            .unwrap();
        let sub = format!("blobs/sha256/{}", &digest.hex()[..2]);
        assert!(known(&sub) && known("blobs/sha256") && known("blobs"));
        store.delete_parts(&[part.key]).await;
        assert!(!root.join("uploads/s9").exists());
        assert!(
            !known("uploads/s9"),
            "a removed session directory is forgotten"
        );
        assert!(known(&sub), "blob directories stay known");
    }

    /// A blob streamed in windows, large or small by how many streams are
    /// open, comes out whole, and so does a range across window boundaries.
    #[tokio::test]
    async fn windows_of_either_size_stream_the_exact_bytes() {
        let (_dir, store) = local_store();
        let data: Vec<u8> = (0..(9 << 20) + 123u32).map(|i| (i % 253) as u8).collect();
        let digest = Digest::compute(Algorithm::Sha256, &data);
        let mut h = Algorithm::Sha256.hasher();
        let part = store
            .write_part("w1", 0, chunks(&data, 1 << 20), &mut h, u64::MAX)
            .await
            .unwrap()
            .unwrap();
        store
            .commit_parts(std::slice::from_ref(&part), &digest)
            .await
            .unwrap();
        let read = |range: Option<ByteRange>| {
            let store = &store;
            let digest = &digest;
            async move {
                store
                    .stream(digest, range)
                    .await
                    .unwrap()
                    .try_collect::<Vec<_>>()
                    .await
                    .unwrap()
                    .concat()
            }
        };
        let across = ByteRange {
            start: (1 << 20) - 7,
            end: (5 << 20) + 9,
        };
        let windows = || async {
            let s = store.stream(&digest, None).await.unwrap();
            s.map(|w| w.unwrap().len() as u64).collect::<Vec<_>>().await
        };
        // The first window is small; the next ones large while few stream.
        assert_eq!(windows().await[..3], [WINDOW, WINDOW_FEW, WINDOW_FEW]);
        let whole_large = read(None).await;
        assert_eq!(whole_large, data);
        // Five streams open: the next ones map the small window.
        let mut held = Vec::new();
        for _ in 0..=FEW_STREAMS {
            held.push(store.stream(&digest, None).await.unwrap());
        }
        assert!(windows().await.iter().all(|w| *w <= WINDOW));
        let whole_small = read(None).await;
        let range_small = read(Some(across)).await;
        drop(held);
        let range_large = read(Some(across)).await;
        assert_eq!(whole_small, data);
        let want = &data[across.start as usize..=across.end as usize];
        assert_eq!(range_small, want);
        assert_eq!(range_large, want);
        assert_eq!(
            store
                .open_streams
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "every stream counted out when dropped"
        );
    }

    async fn suite(store: BlobStore) {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::compute(Algorithm::Sha256, &data);
        let mut hasher = Algorithm::Sha256.hasher();
        let a = store
            .write_part(
                "u1",
                0,
                chunks(&data[..2_000_000], 65536),
                &mut hasher,
                u64::MAX,
            )
            .await
            .unwrap()
            .unwrap();
        let b = store
            .write_part(
                "u1",
                2_000_000,
                chunks(&data[2_000_000..], 7777),
                &mut hasher,
                u64::MAX,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hasher.finish(), digest);
        assert!(!store.exists(&digest).await.unwrap());
        store
            .commit_parts(&[a.clone(), b.clone()], &digest)
            .await
            .unwrap();
        let got: Vec<u8> = store
            .stream(&digest, None)
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .concat();
        assert_eq!(got, data);
        let part: Vec<u8> = store
            .stream(&digest, Some(ByteRange { start: 10, end: 19 }))
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .concat();
        assert_eq!(part, &data[10..20]);
        store.delete_parts(&[a.key, b.key]).await;

        // A re-hash with a wrong expectation stores nothing.
        let mut h = Algorithm::Sha256.hasher();
        let p = store
            .write_part("u2", 0, chunks(b"abc", 2), &mut h, u64::MAX)
            .await
            .unwrap()
            .unwrap();
        let wrong = Digest::compute(Algorithm::Sha512, b"abd");
        let r = store
            .commit_rehashed(std::slice::from_ref(&p), Algorithm::Sha512.hasher(), &wrong)
            .await
            .unwrap();
        assert_eq!(r, Err(Digest::compute(Algorithm::Sha512, b"abc")));
        assert!(!store.exists(&wrong).await.unwrap());

        // Limits are enforced while streaming.
        let mut h = Algorithm::Sha256.hasher();
        assert!(matches!(
            store
                .write_part("u3", 0, chunks(&data, 4096), &mut h, 1000)
                .await,
            Err(Error::TooLarge { limit: 1000 })
        ));
    }

    #[tokio::test]
    async fn memory_backend() {
        suite(BlobStore::open("memory://").unwrap()).await;
        settling(BlobStore::open("memory://").unwrap()).await;
        sweeping(BlobStore::open("memory://").unwrap()).await;
    }

    /// Whether the store holds an object at `key` (an upload part, say).
    async fn has_object(store: &BlobStore, key: &str) -> bool {
        store.store.head(&Path::from(key)).await.is_ok()
    }

    /// A staged file older than the age is swept; a fresh one and the blobs stay.
    async fn sweeping(store: BlobStore) {
        let staged = |data: &'static [u8]| {
            let store = store.clone();
            async move {
                let mut h = Algorithm::Sha256.hasher();
                let part = store
                    .write_last_part(chunks(data, 4), &mut h, u64::MAX)
                    .await
                    .unwrap()
                    .unwrap();
                (part, h.finish())
            }
        };
        let (left, _) = staged(b"left by a crash").await;
        let (blob, digest) = staged(b"a blob").await;
        store
            .commit_parts(std::slice::from_ref(&blob), &digest)
            .await
            .unwrap();
        store
            .settle(std::slice::from_ref(&blob), &digest, false)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let (fresh, _) = staged(b"being uploaded").await;
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(store.sweep_staging(hour).await.unwrap(), 0);
        assert!(has_object(&store, &left.key).await);
        let age = std::time::Duration::from_millis(600);
        assert_eq!(store.sweep_staging(age).await.unwrap(), 1);
        assert!(
            !has_object(&store, &left.key).await,
            "the old staged file stayed"
        );
        assert!(
            has_object(&store, &fresh.key).await,
            "a fresh staged file went"
        );
        assert_eq!(&store.read(&digest).await.unwrap()[..], b"a blob");
    }

    /// A blob committed from one part or from several, then taken by a
    /// collection before the push that committed it linked its row:
    /// `settle` with `recheck` places it again from the parts it kept, and
    /// deletes them either way.
    async fn settling(store: BlobStore) {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
        for split in [None, Some(120_000)] {
            let digest = Digest::compute(Algorithm::Sha256, &data);
            let mut h = Algorithm::Sha256.hasher();
            let mut parts = Vec::new();
            if let Some(at) = split {
                parts.extend(
                    store
                        .write_part("c1", 0, chunks(&data[..at], 4096), &mut h, u64::MAX)
                        .await
                        .unwrap(),
                );
            }
            let rest = &data[split.unwrap_or(0)..];
            parts.extend(
                store
                    .write_last_part(chunks(rest, 4096), &mut h, u64::MAX)
                    .await
                    .unwrap(),
            );
            assert_eq!(h.finish(), digest);

            store.commit_parts(&parts, &digest).await.unwrap();
            store.delete_blob(&digest).await.unwrap();
            store.settle(&parts, &digest, true).await.unwrap();
            assert_eq!(&store.read(&digest).await.unwrap()[..], &data[..]);
            for p in &parts {
                assert!(!has_object(&store, &p.key).await, "part {} stayed", p.key);
            }

            // Found in place: left alone; without `recheck`: not looked for.
            let mut h = Algorithm::Sha256.hasher();
            let again = store
                .write_last_part(chunks(&data, 65536), &mut h, u64::MAX)
                .await
                .unwrap()
                .unwrap();
            store
                .commit_parts(std::slice::from_ref(&again), &digest)
                .await
                .unwrap();
            store
                .settle(std::slice::from_ref(&again), &digest, true)
                .await
                .unwrap();
            assert_eq!(&store.read(&digest).await.unwrap()[..], &data[..]);
            assert!(!has_object(&store, &again.key).await);
            store.delete_blob(&digest).await.unwrap();
            store.settle(&[], &digest, false).await.unwrap();
            assert!(!store.exists(&digest).await.unwrap());
        }
    }

    /// A store on a fresh temporary directory, which must outlive it.
    fn local_store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let store = BlobStore::open(url.as_str()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn local_filesystem_backend() {
        let (_dir, store) = local_store();
        suite(store).await;
        let (dir, store) = local_store();
        settling(store.clone()).await;
        let staged = std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .count();
        assert_eq!(staged, 0, "a part stayed behind in staging");
        sweeping(store).await;
    }

    /// A body that breaks off, or runs past its limit, after some of it was
    /// written leaves no partial chunk on disk.
    #[tokio::test]
    async fn a_broken_body_leaves_no_partial_file() {
        let (dir, store) = local_store();
        let data = vec![7u8; 3 << 20];
        let broken = chunks(&data, 65536)
            .chain(futures::stream::iter([Err("connection reset".to_string())]));
        let mut h = Algorithm::Sha256.hasher();
        let r = store.write_part("b1", 0, broken, &mut h, u64::MAX).await;
        assert!(matches!(r, Err(Error::Body(_))), "{r:?}");
        let mut h = Algorithm::Sha256.hasher();
        let r = store
            .write_last_part(chunks(&data, 65536), &mut h, 2 << 20)
            .await;
        assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
        let files = files_under(dir.path());
        assert!(files.is_empty(), "left behind: {files:?}");
    }

    /// A write dropped mid-body (the client went away, a timeout fired)
    /// leaves no partial file either.
    #[tokio::test]
    async fn a_dropped_write_leaves_no_partial_file() {
        let (dir, store) = local_store();
        let data = vec![1u8; 600 << 10];
        let stalled = chunks(&data, 65536)
            .chain(futures::stream::pending::<std::result::Result<Bytes, String>>());
        let mut h = Algorithm::Sha256.hasher();
        let write = store.write_part("d1", 0, stalled, &mut h, u64::MAX);
        let r = tokio::time::timeout(std::time::Duration::from_millis(300), write).await;
        assert!(
            r.is_err(),
            "the body never ends, so the write cannot finish"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let files = files_under(dir.path());
            if files.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "left behind: {files:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Every file (not directory) under `root`.
    fn files_under(root: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    dirs.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
        files
    }

    /// A finished upload leaves no directory of its own behind on disk, and a
    /// blob completed by an unsynced last chunk holds exactly its bytes.
    #[tokio::test]
    async fn a_finished_upload_leaves_no_directory_behind() {
        let (dir, store) = local_store();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let digest = Digest::compute(Algorithm::Sha256, &data);
        let mut h = Algorithm::Sha256.hasher();
        let a = store
            .write_part("s1", 0, chunks(&data[..40_000], 4096), &mut h, u64::MAX)
            .await
            .unwrap()
            .unwrap();
        let b = store
            .write_last_part(chunks(&data[40_000..], 4096), &mut h, u64::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(h.finish(), digest);
        assert!(dir.path().join("uploads/s1").is_dir());
        store
            .commit_parts(&[a.clone(), b.clone()], &digest)
            .await
            .unwrap();
        store.delete_parts(&[a.key, b.key]).await;
        assert!(
            !dir.path().join("uploads/s1").exists(),
            "the session's directory stayed"
        );
        let got = store.read(&digest).await.unwrap();
        assert_eq!(&got[..], &data[..]);

        // A blob of one unsynced chunk lands whole too.
        let mut h = Algorithm::Sha256.hasher();
        let one = store
            .write_last_part(chunks(b"second", 3), &mut h, u64::MAX)
            .await
            .unwrap()
            .unwrap();
        let d2 = h.finish();
        store
            .commit_parts(std::slice::from_ref(&one), &d2)
            .await
            .unwrap();
        store.delete_parts(&[one.key]).await;
        assert_eq!(&store.read(&d2).await.unwrap()[..], b"second");
        let staged = std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .count();
        assert_eq!(staged, 0, "a staged last chunk stayed behind");
    }
}
