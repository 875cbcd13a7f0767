//! Locks that keep a scheduled job (garbage collection, retention, upload
//! expiry) to one replica at a time.
//!
//! On PostgreSQL a job's lock is a session-level advisory lock
//! (`pg_try_advisory_lock`) taken on a connection set aside from the pool for
//! the length of the run: another replica asking for it meanwhile is refused and
//! skips its run. If the replica holding it dies, the server ends its session
//! and the lock goes with it. On SQLite there is one process by construction,
//! so every request for a lock succeeds.

use sqlx::pool::PoolConnection;
use sqlx::Postgres;

use super::{Backend, Metadata, Result};

/// A scheduled job that must not run on two replicas at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    GarbageCollection,
    Retention,
    UploadExpiry,
}

impl Job {
    /// The advisory lock key: `cairn` in ASCII in the high bytes, the job below,
    /// so it does not collide with another application's small keys.
    fn key(self) -> i64 {
        const BASE: i64 = 0x6361_6972_6e00_0000;
        BASE + match self {
            Job::GarbageCollection => 1,
            Job::Retention => 2,
            Job::UploadExpiry => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Job::GarbageCollection => "gc",
            Job::Retention => "retention",
            Job::UploadExpiry => "upload-expiry",
        }
    }
}

/// A held job lock. [`JobLock::release`] gives it back; dropped without that,
/// its connection is closed instead of returned to the pool, which ends the
/// session and so releases the lock too.
#[must_use = "the lock is released when this is dropped"]
pub struct JobLock {
    job: Job,
    conn: Option<PoolConnection<Postgres>>,
}

impl JobLock {
    pub fn job(&self) -> Job {
        self.job
    }

    /// Releases the lock and returns the connection to the pool.
    pub async fn release(mut self) -> Result<()> {
        if let Some(mut conn) = self.conn.take() {
            let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                .bind(self.job.key())
                .fetch_one(&mut *conn)
                .await?;
            if !unlocked {
                tracing::warn!(job = self.job.as_str(), "job lock was not held at release");
            }
        }
        Ok(())
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}

impl Metadata {
    /// Takes `job`'s lock if no other replica holds it; `None` if one does.
    pub async fn try_job_lock(&self, job: Job) -> Result<Option<JobLock>> {
        match &self.backend {
            Backend::Sqlite { .. } => Ok(Some(JobLock { job, conn: None })),
            Backend::Postgres(pg) => {
                let mut conn = pg.acquire().await?;
                let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(job.key())
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(acquired.then(|| JobLock {
                    job,
                    conn: Some(conn),
                }))
            }
        }
    }
}
