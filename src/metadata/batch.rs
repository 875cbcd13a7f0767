//! Group commit for SQLite's single writer.
//!
//! SQLite admits one writer at a time and, with `synchronous = FULL`, every
//! commit waits for an fsync of the WAL (milliseconds on common disks). Under
//! concurrent pushes the writer therefore spends its time waiting for the disk,
//! one commit per change. The batcher runs the changes that queued up while the
//! previous commit was in flight inside one transaction instead: each change in
//! a savepoint of its own (`BEGIN` on a connection already in a transaction is a
//! `SAVEPOINT` in sqlx), so a change that fails or rolls back undoes only itself,
//! and one commit (one fsync) makes the whole batch durable.
//!
//! No caller learns its result before that commit: a change that ran but whose
//! batch failed to commit is reported as failed, so nothing is acknowledged that
//! is not on disk. Nothing waits to fill a batch; a change that finds the writer
//! idle commits alone, as before.

use std::panic::AssertUnwindSafe;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

/// Most changes committed together; bounds how long one commit holds the lock
/// (and the latency the first change of a batch sees).
const MAX_BATCH: usize = 64;

/// Hands a change's result to its caller once its batch's commit is known.
type Deliver = Box<dyn FnOnce(Option<&sqlx::Error>) + Send>;

/// A change, run on the writer connection inside the batch's transaction.
type Job = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Deliver> + Send>;

/// Queue of changes for the one task that owns the write pool's commits.
#[derive(Clone)]
pub(super) struct Batcher {
    queue: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the writer task; it ends when every clone of the batcher is gone.
    pub(super) fn start(write: SqlitePool) -> Batcher {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(write, rx));
        Batcher { queue }
    }

    /// Runs `change` in the next batch and returns its result once that batch
    /// is committed. `change` must open its own transaction with
    /// `conn.begin()` (a savepoint here) and commit or roll it back.
    pub(super) async fn run<T, F>(&self, change: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: &mut SqliteConnection| {
            async move {
                let result = change(conn).await;
                Box::new(move |commit: Option<&sqlx::Error>| {
                    let out = match (result, commit) {
                        (Ok(_), Some(e)) => Err(not_committed(e)),
                        (r, _) => r,
                    };
                    let _ = tx.send(out);
                }) as Deliver
            }
            .boxed()
        });
        self.queue.send(job).map_err(|_| sqlx::Error::PoolClosed)?;
        // A dropped job (writer gone, batch could not start, change panicked)
        // drops its sender: nothing of it was committed.
        rx.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }
}

/// The error a change sees when its own work succeeded but the batch's commit
/// did not. Classified like an I/O failure: retryable, answered with 503.
fn not_committed(e: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(format!(
        "the transaction could not be committed: {e}"
    )))
}

async fn run(write: SqlitePool, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let batch = std::mem::take(&mut jobs);
        if let Err(e) = commit_batch(&write, batch).await {
            tracing::warn!(error = %e, "metadata write batch failed");
        }
    }
}

/// Runs `batch` in one transaction and delivers every result after the commit.
async fn commit_batch(write: &SqlitePool, batch: Vec<Job>) -> Result<(), sqlx::Error> {
    let size = batch.len();
    // On error the jobs are dropped unrun: their callers see the failure.
    // IMMEDIATE: see `BeginWrite`.
    let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
    let mut delivers: Vec<Deliver> = Vec::with_capacity(size);
    for job in batch {
        // A panicking change is dropped (its caller sees a failure); its
        // savepoint is rolled back when its transaction guard unwinds.
        if let Ok(d) = AssertUnwindSafe(job(&mut tx)).catch_unwind().await {
            delivers.push(d);
        }
    }
    let committed = tx.commit().await;
    if let Err(e) = &committed {
        tracing::warn!(error = %e, changes = size, "metadata batch commit failed");
    }
    for d in delivers {
        d(committed.as_ref().err());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    use sqlx::Acquire as _;

    use super::*;

    async fn pool(dir: &std::path::Path) -> SqlitePool {
        let co = SqliteConnectOptions::from_str(&format!("sqlite://{}/t.db", dir.display()))
            .unwrap()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let p = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(co)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .execute(&p)
            .await
            .unwrap();
        p
    }

    /// Inserts `k`; keeps it only when `keep`, else fails after the insert.
    async fn change(b: &Batcher, k: i64, keep: bool) -> Result<i64, sqlx::Error> {
        b.run(move |c: &mut SqliteConnection| {
            async move {
                let mut tx = c.begin().await?;
                sqlx::query("INSERT INTO t (k) VALUES ($1)")
                    .bind(k)
                    .execute(&mut *tx)
                    .await?;
                if !keep {
                    // Like a refused push: the change's own rows go, the batch stays.
                    return Err(sqlx::Error::RowNotFound);
                }
                tx.commit().await?;
                Ok(k)
            }
            .boxed()
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_change_of_a_batch_commits_or_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(dir.path()).await;
        let b = Batcher::start(p.clone());
        // 200 concurrent changes queue up behind each other's commits, so they
        // run in batches; every fifth fails after writing its row.
        let results = futures::future::join_all((0..200).map(|k| change(&b, k, k % 5 != 0))).await;
        for (k, r) in results.iter().enumerate() {
            match r {
                Ok(v) => assert!(k % 5 != 0 && *v == k as i64, "change {k} → {r:?}"),
                Err(sqlx::Error::RowNotFound) => assert_eq!(k % 5, 0, "change {k} failed"),
                Err(e) => panic!("change {k}: {e}"),
            }
        }
        let kept: Vec<i64> = sqlx::query_scalar("SELECT k FROM t ORDER BY k")
            .fetch_all(&p)
            .await
            .unwrap();
        let expected: Vec<i64> = (0..200).filter(|k| k % 5 != 0).collect();
        assert_eq!(kept, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_cannot_commit_fails_all_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(dir.path()).await;
        let b = Batcher::start(p.clone());
        p.close().await;
        let r = change(&b, 1, true).await;
        assert!(
            r.is_err(),
            "a change reported success without a commit: {r:?}"
        );
    }
}
