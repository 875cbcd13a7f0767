//! The metadata side of online garbage collection.
//!
//! A blob is collected in three steps, each safe to interrupt and repeat:
//! 1. **claim** (one transaction): `state` goes `live` → `deleting` only if no
//!    manifest references the blob, no manifest is stored under its digest, and
//!    no push touched it within the grace period; its repository links go in
//!    the same transaction, so nothing serves it any more;
//! 2. the bytes are deleted from the object store;
//! 3. **finish**: the row goes, with an audit entry.
//!
//! Pushes touch (`touched_at`) every blob they write or reference inside the
//! transaction that makes them visible, and refuse a blob in `deleting`; on
//! PostgreSQL the claim and the touch update the same row, so whichever commits
//! second re-checks the other's result. A push therefore either sees the claim
//! and fails (retryable), or its touch makes the claim's condition false.

use super::audit::{self, AuditEntry, Origin};
use super::BeginWrite as _;
use super::{Backend, Metadata, Result};

impl Metadata {
    /// Live blobs nobody references and nobody touched since `cutoff_ms`, in
    /// digest order after `after`, at most `limit`: `(digest, size, touches)`.
    pub async fn gc_candidates(
        &self,
        cutoff_ms: i64,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, i64, i64)>> {
        let rows = on_read!(self, "gc_candidates", |p| {
            sqlx::query_as::<_, (String, i64, i64)>(
                "SELECT b.digest, b.size, b.touches FROM blobs b
                  WHERE b.state = 'live' AND b.touched_at < $1 AND b.digest > $2
                    AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = b.digest)
                    AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest)
                  ORDER BY b.digest LIMIT $3",
            )
            .bind(cutoff_ms)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await
        })?;
        Ok(rows)
    }

    /// Blobs a collection claimed and did not finish (interrupted, or running
    /// right now elsewhere; finishing twice is harmless).
    pub async fn gc_claimed(&self, limit: u32) -> Result<Vec<(String, i64)>> {
        let rows = on_read!(self, "gc_claimed", |p| {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT digest, size FROM blobs WHERE state = 'deleting' ORDER BY digest LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(p)
            .await
        })?;
        Ok(rows)
    }

    /// Step 1: claims `digest` if it is still unreferenced, untouched since
    /// `cutoff_ms` and since the collection saw it with `touches`, and unlinks
    /// it from every repository. False: it is in use.
    ///
    /// The `touches` check is what makes this safe on PostgreSQL: when a push
    /// touched the row concurrently, this update waits for it and re-checks the
    /// row's new version, where `touches` has moved (the `NOT EXISTS` clauses
    /// still see the statement's older snapshot).
    pub async fn gc_claim(&self, digest: &str, cutoff_ms: i64, touches: i64) -> Result<bool> {
        let claimed = on_write!(self, "gc_claim", |p| async {
            let mut tx = p.begin_write().await?;
            let n = sqlx::query(
                "UPDATE blobs SET state = 'deleting'
                  WHERE digest = $1 AND state = 'live' AND touched_at < $2 AND touches = $3
                    AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = $1)
                    AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = $1)",
            )
            .bind(digest)
            .bind(cutoff_ms)
            .bind(touches)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                sqlx::query("DELETE FROM repository_blobs WHERE digest = $1")
                    .bind(digest)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            Ok::<bool, sqlx::Error>(n == 1)
        }
        .await)?;
        Ok(claimed)
    }

    /// Step 3: forgets a claimed blob whose bytes are gone, and audits it.
    pub async fn gc_finish(&self, digest: &str, size: i64, origin: &Origin) -> Result<bool> {
        let entry = AuditEntry::global("gc.delete")
            .digest(digest)
            .detail(serde_json::json!({ "size": size }));
        let done = on_write!(self, "gc_finish", |p| async {
            let mut tx = p.begin_write().await?;
            let n = sqlx::query("DELETE FROM blobs WHERE digest = $1 AND state = 'deleting'")
                .bind(digest)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 1 {
                // A manifest's bytes, if it was one stored with its record.
                sqlx::query("DELETE FROM manifest_content WHERE digest = $1")
                    .bind(digest)
                    .execute(&mut *tx)
                    .await?;
                audit::append(&mut *tx, origin, std::slice::from_ref(&entry)).await?;
            }
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(n == 1)
        }
        .await)?;
        Ok(done)
    }
}
