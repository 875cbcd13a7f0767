//! [`MeteredStore`]: the [`BlobStore`] with every public operation timed and its
//! failures counted, reported to a [`StoreObserver`] (the metrics layer; this
//! layer knows no metrics library). Also the readiness probe of the store.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use object_store::path::Path;

use super::{BlobStore, ByteStream, Error, Result, StoredPart};
use crate::domain::{ByteRange, Digest, Hasher};

/// Told the duration and outcome of each store operation.
pub trait StoreObserver: Send + Sync {
    fn operation(&self, operation: &'static str, elapsed: Duration, ok: bool);
}

/// A [`BlobStore`] whose operations are reported to an observer (if any).
#[derive(Clone)]
pub struct MeteredStore {
    inner: BlobStore,
    observer: Option<Arc<dyn StoreObserver>>,
}

impl MeteredStore {
    pub fn new(inner: BlobStore, observer: Option<Arc<dyn StoreObserver>>) -> MeteredStore {
        MeteredStore { inner, observer }
    }

    /// Runs `f`, reporting its duration and whether it succeeded as `operation`.
    async fn timed<T>(
        &self,
        operation: &'static str,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let Some(o) = &self.observer else {
            return f.await;
        };
        let started = Instant::now();
        let r = f.await;
        o.operation(operation, started.elapsed(), r.is_ok());
        r
    }

    /// See [`BlobStore::write_part`].
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
        self.timed(
            "write_part",
            self.inner
                .write_part(upload_id, offset, body, hasher, limit),
        )
        .await
    }

    /// See [`BlobStore::write_last_part`].
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
        self.timed(
            "write_part",
            self.inner.write_last_part(body, hasher, limit),
        )
        .await
    }

    /// See [`BlobStore::commit_parts`].
    pub async fn commit_parts(&self, parts: &[StoredPart], digest: &Digest) -> Result<()> {
        self.timed("commit_parts", self.inner.commit_parts(parts, digest))
            .await
    }

    /// See [`BlobStore::settle`].
    pub async fn settle(&self, parts: &[StoredPart], digest: &Digest, recheck: bool) -> Result<()> {
        self.timed("settle", self.inner.settle(parts, digest, recheck))
            .await
    }

    /// See [`BlobStore::sweep_staging`].
    pub async fn sweep_staging(&self, age: std::time::Duration) -> Result<u64> {
        self.timed("sweep_staging", self.inner.sweep_staging(age))
            .await
    }

    /// See [`BlobStore::commit_rehashed`].
    pub async fn commit_rehashed(
        &self,
        parts: &[StoredPart],
        hasher: Hasher,
        expected: &Digest,
    ) -> Result<std::result::Result<(), Digest>> {
        self.timed(
            "commit_rehashed",
            self.inner.commit_rehashed(parts, hasher, expected),
        )
        .await
    }

    /// See [`BlobStore::delete_parts`] (which logs its own failures).
    pub async fn delete_parts(&self, keys: &[String]) {
        let _ = self
            .timed("delete_parts", async {
                self.inner.delete_parts(keys).await;
                Ok(())
            })
            .await;
    }

    /// See [`BlobStore::presigned_get`].
    pub async fn presigned_get(
        &self,
        digest: &Digest,
        expires_in: Duration,
    ) -> Result<Option<url::Url>> {
        self.timed(
            "presigned_get",
            self.inner.presigned_get(digest, expires_in),
        )
        .await
    }

    /// See [`BlobStore::exists`].
    /// See [`BlobStore::delete_blob`].
    pub async fn delete_blob(&self, digest: &Digest) -> Result<()> {
        self.timed("delete_blob", self.inner.delete_blob(digest))
            .await
    }

    pub async fn exists(&self, digest: &Digest) -> Result<bool> {
        self.timed("exists", self.inner.exists(digest)).await
    }

    /// See [`BlobStore::read`].
    pub async fn read(&self, digest: &Digest) -> Result<Bytes> {
        self.timed("read", self.inner.read(digest)).await
    }

    /// See [`BlobStore::stream`]; the time measured is until the stream is open
    /// (the body then flows at the client's pace).
    pub async fn stream(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream> {
        self.timed("stream", self.inner.stream(digest, range)).await
    }

    /// Whether the object store answers: a HEAD of a key that never exists, so
    /// "not found" is the healthy answer. Cheap on every backend.
    pub async fn probe(&self) -> Result<()> {
        self.timed("probe", async {
            match self
                .inner
                .store
                .head(&Path::from("cairn-readiness-probe"))
                .await
            {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(Error::from(e)),
            }
        })
        .await
    }
}
