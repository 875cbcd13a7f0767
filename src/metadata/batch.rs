//! Group commit for SQLite's single writer, on a thread of its own.
//!
//! SQLite admits one writer at a time and, with `synchronous = FULL`, every
//! commit waits for an fsync of the WAL (milliseconds on common disks). Under
//! concurrent pushes the writer therefore spends its time waiting for the disk,
//! one commit per change. The batcher runs the changes that queued up while the
//! previous commit was in flight inside one transaction instead: each change in
//! a savepoint of its own, so a change that fails or rolls back undoes only
//! itself, and one commit (one fsync) makes the whole batch durable.
//!
//! The batch runs on a dedicated thread that owns its own connection
//! (rusqlite, the same SQLite library sqlx links): each statement is a function
//! call there. Through sqlx's driver every statement would be a hand-off to its
//! worker thread and back, two thread wake-ups per statement, a dozen
//! statements per manifest push, all while the database's one write lock is
//! held; measured, that hand-off was most of a batch's time.
//!
//! No caller learns its result before that commit: a change that ran but whose
//! batch failed to commit is reported as failed, so nothing is acknowledged that
//! is not on disk. Nothing waits to fill a batch; a change that finds the writer
//! idle commits alone, as before.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use tokio::sync::oneshot;

use super::exec::{from_rusqlite, Change, Exec, Val};

/// Most changes committed together; bounds how long one commit holds the lock
/// (and the latency the first change of a batch sees).
const MAX_BATCH: usize = 64;

/// Hands a change's result to its caller once its batch's commit is known.
type Deliver = Box<dyn FnOnce(Option<&sqlx::Error>) + Send>;

/// A change, run on the writer's connection inside the batch's transaction and
/// its own savepoint; says whether to keep its writes.
type Job = Box<dyn FnOnce(&mut SqliteWriter) -> (bool, Deliver) + Send>;

/// The writer thread's connection, as the changes see it.
pub(crate) struct SqliteWriter {
    conn: rusqlite::Connection,
    /// Per statement text, the argument each parameter slot takes (see
    /// [`SqliteWriter::slots`]).
    slots: RefCell<HashMap<String, Arc<[usize]>>>,
}

/// Statements whose parameter slots are remembered; past this the memory is
/// cleared and refilled (statement texts are a fixed set but for the number
/// of rows in multi-row inserts).
const SLOT_CACHE: usize = 256;

impl SqliteWriter {
    /// Opens the database file for writing with the settings the sqlx pools
    /// use: foreign keys enforced (upload parts go with their session), FULL
    /// synchronous commits, and a wait rather than a failure while another
    /// connection or process holds the write lock.
    ///
    /// Temporary storage in memory: each change's savepoint keeps the prior
    /// content of every page it touches in a sub-journal, which SQLite spills
    /// to a temporary file past 64 KiB, and a batch of manifest pushes passes
    /// that at once. The writes to that file were a quarter of the writer
    /// thread's CPU (`perf`, manifest push c16). The sub-journal lives only
    /// until the batch commits and holds at most the pages one batch touches;
    /// durability comes from the WAL, which this does not change.
    fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<SqliteWriter> {
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(busy_timeout)?;
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY;",
        )?;
        conn.set_prepared_statement_cache_capacity(128);
        Ok(SqliteWriter {
            conn,
            slots: RefCell::new(HashMap::new()),
        })
    }

    /// Which argument each of a statement's parameter slots takes: SQLite
    /// numbers `$n` parameters in order of first appearance, so `$3, $1`
    /// puts argument 3 in slot 1. Looked up once per statement text: asking
    /// SQLite for a slot's name walks a list, so naming every slot of a
    /// multi-row insert on each run cost time quadratic in its parameters
    /// (`sqlite3_bind_parameter_name` was 4% of the server's CPU under
    /// concurrent manifest pushes).
    fn slots(&self, sql: &str, st: &rusqlite::Statement<'_>) -> Arc<[usize]> {
        if let Some(s) = self.slots.borrow().get(sql) {
            return Arc::clone(s);
        }
        let slots: Arc<[usize]> = (1..=st.parameter_count())
            .map(|i| {
                st.parameter_name(i)
                    .and_then(|name| name.strip_prefix('$'))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(i)
            })
            .collect();
        let mut cache = self.slots.borrow_mut();
        if cache.len() >= SLOT_CACHE {
            cache.clear();
        }
        cache.insert(sql.to_string(), Arc::clone(&slots));
        slots
    }

    /// Prepares (or takes from the cache) `sql` and binds `args` to its `$n`
    /// parameters.
    fn bound(&self, sql: &str, args: &[Val]) -> rusqlite::Result<rusqlite::CachedStatement<'_>> {
        let mut st = self.conn.prepare_cached(sql)?;
        let slots = self.slots(sql, &st);
        for (i, &n) in slots.iter().enumerate() {
            let i = i + 1;
            let value = args
                .get(n.wrapping_sub(1))
                .ok_or(rusqlite::Error::InvalidParameterCount(n, args.len()))?;
            match value {
                Val::Null => st.raw_bind_parameter(i, rusqlite::types::Null)?,
                Val::Int(v) => st.raw_bind_parameter(i, v)?,
                Val::Text(v) => st.raw_bind_parameter(i, v.as_str())?,
                Val::Bytes(v) => st.raw_bind_parameter(i, v.as_slice())?,
            }
        }
        Ok(st)
    }

    fn run_execute(&self, sql: &str, args: &[Val]) -> rusqlite::Result<u64> {
        let mut st = self.bound(sql, args)?;
        Ok(st.raw_execute()? as u64)
    }

    fn run_fetch(&self, sql: &str, args: &[Val]) -> rusqlite::Result<Vec<Vec<Val>>> {
        use rusqlite::types::ValueRef;
        let mut st = self.bound(sql, args)?;
        let columns = st.column_count();
        let mut rows = st.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut vals = Vec::with_capacity(columns);
            for i in 0..columns {
                vals.push(match row.get_ref(i)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(v) => Val::Int(v),
                    ValueRef::Real(v) => Val::Text(v.to_string()),
                    ValueRef::Text(t) => Val::Text(
                        std::str::from_utf8(t)
                            .map_err(rusqlite::Error::Utf8Error)?
                            .to_string(),
                    ),
                    ValueRef::Blob(b) => Val::Bytes(b.to_vec()),
                });
            }
            out.push(vals);
        }
        Ok(out)
    }

    fn batch(&self, sql: &str) -> Result<(), sqlx::Error> {
        self.conn.execute_batch(sql).map_err(from_rusqlite)
    }
}

impl Exec for SqliteWriter {
    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Val>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        futures::future::ready(self.run_execute(sql, &args).map_err(from_rusqlite)).boxed()
    }

    fn fetch<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Val>,
    ) -> BoxFuture<'a, Result<Vec<Vec<Val>>, sqlx::Error>> {
        futures::future::ready(self.run_fetch(sql, &args).map_err(from_rusqlite)).boxed()
    }
}

/// Queue of changes for the thread that owns the writer connection.
#[derive(Clone)]
pub(super) struct Batcher {
    queue: mpsc::Sender<Job>,
}

impl Batcher {
    /// Opens the writer connection on `path` and starts its thread; the thread
    /// ends when every clone of the batcher is gone.
    pub(super) fn start(path: &Path, busy_timeout: Duration) -> Result<Batcher, sqlx::Error> {
        let writer = SqliteWriter::open(path, busy_timeout).map_err(from_rusqlite)?;
        let (queue, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("cairn-sqlite-writer".into())
            .spawn(move || run(writer, rx))
            .map_err(sqlx::Error::Io)?;
        Ok(Batcher { queue })
    }

    /// Runs `change` in the next batch and returns its result once that batch
    /// is committed (or, for [`Change::Rollback`], once its writes are undone).
    ///
    /// `change` runs on the writer thread, where the writer's statements
    /// complete at once: it must await nothing but them.
    pub(super) async fn run<T, F>(&self, change: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteWriter) -> BoxFuture<'c, Result<Change<T>, sqlx::Error>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |w: &mut SqliteWriter| {
            let result = futures::executor::block_on(change(w));
            let keep = matches!(result, Ok(Change::Commit(_)));
            let deliver = Box::new(move |commit: Option<&sqlx::Error>| {
                let out = match (result, commit) {
                    (Ok(Change::Commit(_)), Some(e)) => Err(not_committed(e)),
                    (Ok(Change::Commit(v) | Change::Rollback(v)), _) => Ok(v),
                    (Err(e), _) => Err(e),
                };
                let _ = tx.send(out);
            }) as Deliver;
            (keep, deliver)
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

fn run(mut writer: SqliteWriter, rx: mpsc::Receiver<Job>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let batch = std::mem::take(&mut jobs);
        if let Err(e) = commit_batch(&mut writer, batch) {
            tracing::warn!(error = %e, "metadata write batch failed");
        }
    }
}

/// Runs `batch` in one transaction and delivers every result after the commit.
fn commit_batch(w: &mut SqliteWriter, batch: Vec<Job>) -> Result<(), sqlx::Error> {
    let size = batch.len();
    // On error the jobs are dropped unrun: their callers see the failure.
    // IMMEDIATE: take the write lock now (see `BeginWrite`).
    w.batch("BEGIN IMMEDIATE")?;
    let mut delivers: Vec<Deliver> = Vec::with_capacity(size);
    for job in batch {
        if let Err(e) = w.batch("SAVEPOINT change") {
            tracing::warn!(error = %e, "metadata change could not start");
            continue;
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| job(w))) {
            Ok((true, deliver)) => match w.batch("RELEASE change") {
                Ok(()) => delivers.push(deliver),
                Err(e) => {
                    let _ = w.batch("ROLLBACK TO change; RELEASE change");
                    deliver(Some(&e));
                }
            },
            Ok((false, deliver)) => match w.batch("ROLLBACK TO change; RELEASE change") {
                Ok(()) => delivers.push(deliver),
                // A change whose writes could not be undone poisons the batch.
                Err(e) => {
                    let _ = w.batch("ROLLBACK");
                    deliver(Some(&e));
                    for d in delivers {
                        d(Some(&e));
                    }
                    return Err(e);
                }
            },
            // A panicking change is dropped (its caller sees a failure).
            Err(_) => {
                let _ = w.batch("ROLLBACK TO change; RELEASE change");
            }
        }
    }
    let committed = w.batch("COMMIT");
    if let Err(e) = &committed {
        tracing::warn!(error = %e, changes = size, "metadata batch commit failed");
        // A failed COMMIT can leave the transaction open.
        let _ = w.batch("ROLLBACK");
    }
    for d in delivers {
        d(committed.as_ref().err());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batcher(dir: &Path) -> Batcher {
        let path = dir.join("t.db");
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (k INTEGER PRIMARY KEY);")
            .unwrap();
        Batcher::start(&path, Duration::from_secs(5)).unwrap()
    }

    fn kept(dir: &Path) -> Vec<i64> {
        let c = rusqlite::Connection::open(dir.join("t.db")).unwrap();
        let mut st = c.prepare("SELECT k FROM t ORDER BY k").unwrap();
        let rows = st.query_map([], |r| r.get::<_, i64>(0)).unwrap();
        rows.map(|r| r.unwrap()).collect()
    }

    /// Inserts `k`; keeps it only when `keep`, else fails after the insert.
    async fn change(b: &Batcher, k: i64, keep: bool) -> Result<i64, sqlx::Error> {
        b.run(move |c: &mut SqliteWriter| {
            async move {
                c.execute("INSERT INTO t (k) VALUES ($1)", vec![Val::Int(k)])
                    .await?;
                if !keep {
                    // Like a refused push: the change's own rows go, the batch stays.
                    return Err(sqlx::Error::RowNotFound);
                }
                Ok(Change::Commit(k))
            }
            .boxed()
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_change_of_a_batch_commits_or_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let b = batcher(dir.path());
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
        let expected: Vec<i64> = (0..200).filter(|k| k % 5 != 0).collect();
        assert_eq!(kept(dir.path()), expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_that_asks_for_a_rollback_gets_its_value_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = batcher(dir.path());
        let r = b
            .run(|c: &mut SqliteWriter| {
                async move {
                    c.execute("INSERT INTO t (k) VALUES ($1)", vec![Val::Int(7)])
                        .await?;
                    Ok(Change::Rollback("refused"))
                }
                .boxed()
            })
            .await;
        assert_eq!(r.unwrap(), "refused");
        assert_eq!(change(&b, 8, true).await.unwrap(), 8);
        assert_eq!(kept(dir.path()), vec![8]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_cannot_commit_fails_all_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let b = batcher(dir.path());
        // Another connection holds the write lock past the writer's busy wait.
        let path = dir.path().join("t.db");
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let short = Batcher::start(&path, Duration::from_millis(200)).unwrap();
        let r = change(&short, 1, true).await;
        assert!(
            r.is_err(),
            "a change reported success without a commit: {r:?}"
        );
        blocker.execute_batch("ROLLBACK").unwrap();
        assert_eq!(change(&b, 2, true).await.unwrap(), 2);
        assert_eq!(kept(dir.path()), vec![2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_change_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let b = batcher(dir.path());
        let r: Result<(), sqlx::Error> = b
            .run(|c: &mut SqliteWriter| {
                async move {
                    c.execute("INSERT INTO t (k) VALUES ($1)", vec![Val::Int(3)])
                        .await?;
                    panic!("a bug in a change");
                }
                .boxed()
            })
            .await;
        assert!(r.is_err());
        assert_eq!(change(&b, 4, true).await.unwrap(), 4);
        assert_eq!(kept(dir.path()), vec![4]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parameters_bind_by_number_and_rows_come_back_typed() {
        let dir = tempfile::tempdir().unwrap();
        let b = batcher(dir.path());
        let rows = b
            .run(|c: &mut SqliteWriter| {
                async move {
                    let rows = c
                        .fetch(
                            "SELECT $2, $1, $2 || 'x', $3, $4",
                            vec![
                                Val::Int(1),
                                Val::from("a"),
                                Val::Null,
                                Val::Bytes(vec![0, 1]),
                            ],
                        )
                        .await?;
                    Ok(Change::Rollback(rows))
                }
                .boxed()
            })
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![vec![
                Val::from("a"),
                Val::Int(1),
                Val::from("ax"),
                Val::Null,
                Val::Bytes(vec![0, 1])
            ]]
        );
    }
}
