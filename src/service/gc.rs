//! Online garbage collection: reclaims blobs no manifest references any more
//! (and idle upload sessions) while pushes and pulls go on. The safety argument
//! is in `metadata::gc` and ARCHITECTURE.md.

use std::time::Duration;

use serde::Serialize;

use super::{Registry, Result};
use crate::metadata::{now_ms, Origin};

/// What a collection did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Blobs deleted (or that would be).
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Candidates a push touched between listing and claiming (kept).
    pub skipped: u64,
    /// Idle upload sessions cancelled.
    pub uploads: u64,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
}

const BATCH: u32 = 500;

/// How long a manual run waits for a job's lock before answering `503`.
pub const JOB_LOCK_WAIT: Duration = Duration::from_secs(10);

impl Registry {
    /// Runs `run` holding `job`'s lock, the one every replica's scheduled run
    /// takes (`metadata::jobs`), so a run asked for through the API never
    /// overlaps a scheduled one, a `cairn` command or another API call. Waits
    /// up to [`JOB_LOCK_WAIT`] for another holder to finish, then gives up
    /// having done nothing.
    pub async fn exclusively<T>(
        &self,
        job: crate::metadata::Job,
        run: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let deadline = std::time::Instant::now() + JOB_LOCK_WAIT;
        let lock = loop {
            if let Some(lock) = self.metadata().try_job_lock(job).await? {
                break lock;
            }
            if std::time::Instant::now() >= deadline {
                return Err(super::Error::JobBusy(job.as_str()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let out = run.await;
        if let Err(e) = lock.release().await {
            tracing::warn!(job = job.as_str(), error = %e, "could not release the job lock");
        }
        out
    }

    /// Collects unreferenced blobs older than `grace` and cancels upload
    /// sessions idle for `upload_ttl` (zero: none); `progress(blobs, bytes)`
    /// after each batch. Any number of collections may run at once, here or on
    /// other replicas.
    pub async fn collect_garbage(
        &self,
        grace: Duration,
        upload_ttl: Duration,
        dry_run: bool,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<GcReport> {
        let started = std::time::Instant::now();
        let origin = Origin::system("gc");
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        let cutoff = now_ms() - i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        if !dry_run {
            // Claims left by an interrupted collection first.
            loop {
                let claimed = self.metadata().gc_claimed(BATCH).await?;
                let n = claimed.len();
                for (digest, size) in claimed {
                    if self.reclaim(&digest, size, &origin).await? {
                        report.blobs += 1;
                        report.bytes += size as u64;
                    }
                }
                if n < BATCH as usize {
                    break;
                }
            }
        }
        let mut after = String::new();
        loop {
            let batch = self.metadata().gc_candidates(cutoff, &after, BATCH).await?;
            let n = batch.len();
            for (digest, size, touches) in batch {
                after.clone_from(&digest);
                if dry_run {
                    report.blobs += 1;
                    report.bytes += size as u64;
                    continue;
                }
                if !self.metadata().gc_claim(&digest, cutoff, touches).await? {
                    report.skipped += 1;
                    continue;
                }
                if self.reclaim(&digest, size, &origin).await? {
                    report.blobs += 1;
                    report.bytes += size as u64;
                }
            }
            progress(report.blobs, report.bytes);
            if n < BATCH as usize {
                break;
            }
        }
        if !dry_run && !upload_ttl.is_zero() {
            report.uploads = self.expire_uploads(upload_ttl).await? as u64;
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        if !dry_run {
            let entry = crate::metadata::AuditEntry::global("gc.run").detail(serde_json::json!({
                "blobs": report.blobs,
                "bytes": report.bytes,
                "skipped": report.skipped,
                "uploads": report.uploads,
                "grace_secs": grace.as_secs(),
            }));
            self.metadata().audit_append(&origin, &[entry]).await?;
        }
        tracing::info!(
            dry_run,
            blobs = report.blobs,
            bytes = report.bytes,
            skipped = report.skipped,
            uploads = report.uploads,
            "garbage collection finished"
        );
        Ok(report)
    }

    /// Steps 2 and 3 for a claimed blob: bytes, then the row.
    async fn reclaim(&self, digest: &str, size: i64, origin: &Origin) -> Result<bool> {
        let d: crate::domain::Digest = digest
            .parse()
            .map_err(|_| crate::metadata::Error::Corrupt(format!("blob digest {digest}")))?;
        self.blob_store().delete_blob(&d).await?;
        Ok(self.metadata().gc_finish(digest, size, origin).await?)
    }
}
