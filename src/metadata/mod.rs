//! Registry metadata in a relational database: repositories, which blobs each
//! repository may serve, manifests and what they reference, tags, and upload
//! sessions.
//!
//! One type, [`Metadata`], with two backends: SQLite (the embedded default) and
//! PostgreSQL. Every query is written once in the SQL both dialects share
//! (`$n` parameters in ascending order, `ON CONFLICT`, `RETURNING`) and run
//! through [`on_read!`]/[`on_write!`], which pick the backend's pool. This layer
//! knows nothing of HTTP or of object keys' meaning; it stores the keys it is given.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::domain::{Digest, RepoName, SessionId, Tag};
use crate::storage::StoredPart;
use exec::{args, Val};

/// Errors of the metadata layer. Database text never reaches clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://… or postgres://…")]
    Url(String),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        if connection_broke(&e) {
            liveness::trouble_seen();
        }
        Error::Database(e)
    }
}

/// Whether `e` says a connection to the database broke (rather than that a
/// statement failed on a working one): its socket failed or closed, the
/// server spoke out of turn, or the server said it is shutting the session
/// down (SQLSTATE class 57, operator intervention) or lost it (class 08).
fn connection_broke(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}

impl Error {
    /// Whether the database is unreachable or overloaded (retryable), rather than
    /// a bug: the API answers those with 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => true,
            // The connection broke under the statement (the server went
            // away, or ended the session): another connection may work.
            Error::Database(e) if connection_broke(e) => true,
            // A deadlock or serialization failure (PostgreSQL) and a busy
            // database (SQLite) succeed when retried.
            Error::Database(sqlx::Error::Database(db)) => matches!(
                db.code().as_deref(),
                Some("40P01" | "40001" | "5" | "6" | "517")
            ),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Clone)]
enum Backend {
    /// SQLite allows one writer at a time; a one-connection write pool makes
    /// writers queue in the pool instead of failing with SQLITE_BUSY, while
    /// readers use their own pool (WAL lets them run beside the writer).
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
        /// Group commit of the changes on the acknowledgement path of pushes.
        batcher: batch::Batcher,
    },
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to a pool that may read, and reports its
/// duration under the operation name `$op` to the query observer.
macro_rules! on_read {
    ($self:expr, $op:expr, |$p:ident| $body:expr) => {{
        let started = std::time::Instant::now();
        let result = match &$self.backend {
            Backend::Sqlite { read, .. } => {
                let $p = read;
                $body
            }
            Backend::Postgres(pg) => {
                let $p = pg;
                $body
            }
        };
        $self.observe($op, started);
        result
    }};
}

/// Runs `$body` with `$p` bound to a pool that may write, and reports its
/// duration under the operation name `$op` to the query observer.
macro_rules! on_write {
    ($self:expr, $op:expr, |$p:ident| $body:expr) => {{
        let started = std::time::Instant::now();
        let result = match &$self.backend {
            Backend::Sqlite { write, .. } => {
                let $p = write;
                $body
            }
            Backend::Postgres(pg) => {
                let $p = pg;
                $body
            }
        };
        $self.observe($op, started);
        result
    }};
}

/// Opens a write transaction. On SQLite it is `BEGIN IMMEDIATE`: a deferred
/// transaction that reads first and writes later fails at once with
/// `SQLITE_BUSY` (no busy wait) when another process, e.g. a `cairn gc` next to
/// the server, committed in between; taking the write lock up front makes it
/// wait its turn instead.
pub(crate) trait BeginWrite<DB: sqlx::Database> {
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, DB>, sqlx::Error>,
    > + Send;
}

impl BeginWrite<sqlx::Sqlite> for SqlitePool {
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error>,
    > + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite<sqlx::Postgres> for PgPool {
    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = std::result::Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error>,
    > + Send {
        self.begin()
    }
}

/// Runs `$body`, an async body returning `Result<Change<T>, sqlx::Error>`,
/// with `$c` bound to an [`Exec`] inside a transaction of the change's own; the
/// body's [`Change`] says whether its writes are kept. On SQLite the change
/// joins the next group commit on the writer thread (see [`batch`]), so
/// everything it captures must be owned and it may await nothing but `$c`; on
/// PostgreSQL it runs in a pooled connection's transaction (the server groups
/// concurrent commits itself).
///
/// `on_batched_write!(self, op, single_statement, |c| …)` is for a change of
/// exactly one statement, which is atomic on its own: PostgreSQL runs it without
/// `BEGIN` and `COMMIT`, two round trips fewer. Its body must not return
/// `Rollback` after writing, as nothing would undo the write.
macro_rules! on_batched_write {
    ($self:expr, $op:expr, single_statement, |$c:ident| $body:expr) => {
        on_batched_write!(@run $self, $op, autocommit, |$c| $body)
    };
    ($self:expr, $op:expr, |$c:ident| $body:expr) => {
        on_batched_write!(@run $self, $op, transaction, |$c| $body)
    };
    (@run $self:expr, $op:expr, $mode:ident, |$c:ident| $body:expr) => {{
        let started = std::time::Instant::now();
        let result = match &$self.backend {
            Backend::Sqlite { batcher, .. } => {
                batcher
                    .run(move |$c: &mut $crate::metadata::batch::SqliteWriter| {
                        use futures::FutureExt as _;
                        async move {
                            #[allow(unused_imports)]
                            use $crate::metadata::exec::Exec as _;
                            $body
                        }
                        .boxed()
                    })
                    .await
            }
            Backend::Postgres(pg) => on_batched_write!(@postgres $mode, pg, |$c| $body),
        };
        $self.observe($op, started);
        result
    }};
    (@postgres autocommit, $pg:ident, |$c:ident| $body:expr) => {
        async {
            let mut conn = $pg.acquire().await?;
            #[allow(unused_imports)]
            use $crate::metadata::exec::Exec as _;
            let mut change = $crate::metadata::exec::PgChange::new(&mut conn);
            let $c = &mut change;
            let outcome = $body?;
            if let $crate::metadata::exec::Change::Commit(_) = &outcome {
                change.flush().await?;
            }
            match outcome {
                $crate::metadata::exec::Change::Commit(v)
                | $crate::metadata::exec::Change::Rollback(v) => Ok(v),
            }
        }
        .await
    };
    (@postgres transaction, $pg:ident, |$c:ident| $body:expr) => {
        async {
            let mut tx = $pg.begin().await?;
            let mut held = $crate::metadata::exec::PgChange::new(&mut tx);
            let change = async {
                #[allow(unused_imports)]
                use $crate::metadata::exec::Exec as _;
                let $c = &mut held;
                $body
            }
            .await?;
            if let $crate::metadata::exec::Change::Commit(_) = &change {
                held.flush().await?;
            }
            drop(held);
            match change {
                $crate::metadata::exec::Change::Commit(v) => {
                    tx.commit().await?;
                    Ok(v)
                }
                $crate::metadata::exec::Change::Rollback(v) => {
                    tx.rollback().await?;
                    Ok(v)
                }
            }
        }
        .await
    };
}

/// Told how long each metadata operation's queries took. Implemented by the
/// metrics layer; this layer knows no metrics library.
pub trait QueryObserver: Send + Sync {
    fn query(&self, operation: &'static str, elapsed: Duration);
}

/// Connections of one pool, as seen at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// `read`/`write` (SQLite) or `main` (PostgreSQL).
    pub pool: &'static str,
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct DbOptions {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// An upload session.
#[derive(Debug, Clone)]
pub struct Upload {
    pub id: String,
    pub repository_id: i64,
    pub algorithm: String,
    pub hash_state: Vec<u8>,
    pub size: u64,
    pub parts: Vec<StoredPart>,
    /// The session has an `uploads` row. A session opened by id alone
    /// ([`SessionId`]) gets one with its first chunk.
    pub stored: bool,
}

impl Upload {
    /// A session opened by `id` that has no row yet: empty, its hash fresh.
    pub fn opened(id: SessionId, repository_id: i64) -> Upload {
        Upload {
            id: id.to_string(),
            repository_id,
            algorithm: id.algorithm().as_str().to_string(),
            hash_state: id.algorithm().hasher().save(),
            size: 0,
            parts: Vec::new(),
            stored: false,
        }
    }
}

/// A stored manifest's index entry (its bytes are a blob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// A manifest that names another as its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Everything recorded when a manifest is pushed.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub digest: Digest,
    /// The exact pushed bytes, stored with the record.
    pub content: bytes::Bytes,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
    pub blobs: Vec<Digest>,
    pub children: Vec<Digest>,
    /// Every blob must be stored (false: `limits.allow_sparse_manifests`).
    pub require_blobs: bool,
    /// A referenced blob touched less than this long ago (milliseconds) is not
    /// touched again: the shared rows of popular layers stay unlocked. Safe
    /// while it is at most half the collection grace period (0: always touch).
    pub touch_fresh_ms: i64,
}

/// A tag to bind in a manifest push, with the policy's verdict on it.
#[derive(Debug, Clone)]
pub struct TagBinding {
    pub tag: Tag,
    pub immutable: bool,
    /// The rule that decided, recorded in the history.
    pub rule: String,
}

/// What happened to a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagAction {
    Created,
    Moved,
    Repushed,
    Denied,
    Deleted,
    /// An equivalent index was pushed; the tag kept its digest.
    Equivalent,
}

impl TagAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TagAction::Created => "created",
            TagAction::Moved => "moved",
            TagAction::Repushed => "repushed",
            TagAction::Denied => "denied",
            TagAction::Deleted => "deleted",
            TagAction::Equivalent => "equivalent",
        }
    }
}

/// One tag event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEvent {
    pub tag: String,
    pub action: TagAction,
    pub digest: String,
    pub previous_digest: Option<String>,
    pub rule: String,
}

/// A recorded tag event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TagHistoryEntry {
    pub id: i64,
    pub action: String,
    pub digest: String,
    pub previous_digest: Option<String>,
    pub rule: String,
    pub actor: String,
    pub at_ms: i64,
}

/// A tag that an operation may not change, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedTag {
    pub tag: String,
    /// The digest the tag holds (or is pinned to).
    pub held: String,
    pub rule: String,
    /// For deletes: the content the held manifest needs that the request would
    /// remove (a layer, or a child of an index), when it is not `held` itself.
    pub needs: Option<String>,
}

/// Result of a manifest push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored; one event per tag (created, moved or repushed).
    Stored(Vec<TagEvent>),
    /// Nothing changed: these tags are immutable and hold other digests.
    Denied(Vec<DeniedTag>),
    /// Nothing changed: garbage collection is deleting this blob (the manifest's
    /// own bytes, or one it references).
    Collecting(String),
    /// Nothing changed: a referenced blob is no longer stored.
    MissingBlob(Digest),
}

/// Result of completing an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishOutcome {
    /// The blob is visible in the repository; the session is gone.
    Done,
    /// The session was already finished, cancelled or moved on.
    Gone,
    /// Nothing changed: garbage collection is deleting this digest's bytes.
    Collecting,
}

/// Whether a delete may remove a tag, as the policy decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagGuard {
    Allow { rule: String },
    Keep { rule: String },
}

/// Result of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    Denied(Vec<DeniedTag>),
    /// A rollback target or held artifact needs it (the reasons).
    Protected(Vec<String>),
}

/// A page of names and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    pub more: bool,
}

/// Now, in the Unix milliseconds every time column holds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The registry's metadata store.
#[derive(Clone)]
pub struct Metadata {
    backend: Backend,
    observer: Option<Arc<dyn QueryObserver>>,
    /// Repository name → id. A repository row is never deleted nor renamed,
    /// so an id once read stays right forever, in every replica.
    repository_ids: Arc<quick_cache::sync::Cache<String, i64>>,
    /// PostgreSQL only: the connections that run the one-statement changes
    /// ([`exec::OneStatement`]) with generic plans (see [`GUARDED_SHARE`]).
    guarded: Option<PgPool>,
    /// PostgreSQL only: group commit of manifest pushes and of blob links
    /// ([`group`]), on the same connections.
    push_groups: Option<group::Groups<group::manifests::GroupPush>>,
    link_groups: Option<group::Groups<group::blobs::GroupLink>>,
}

/// The share (1/n) of PostgreSQL's connections kept for the one-statement
/// changes of the push path. Their sessions plan with
/// `plan_cache_mode = force_generic_plan`: such a statement is ten inserts and
/// updates by key, and PostgreSQL otherwise plans it again on every execution
/// (a custom plan wins its cost comparison), which measured a fifth of the
/// throughput of manifest pushes on two cores (docs/benchmarks-history.md). The other
/// connections keep the default: some reads there (optional filters, prefix
/// searches) need plans for their actual parameters.
const GUARDED_SHARE: u32 = 2;

/// How long a SQLite writer waits for another connection's or process's write
/// lock before failing with `SQLITE_BUSY` (answered with 503).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Repository ids kept in memory (a few MiB at most).
const REPOSITORY_ID_CACHE: usize = 65_536;

/// Opens up to `n` connections of `pool` at once and returns them to it
/// idle. A server that cannot open them all still starts with those it has:
/// the pool opens more on demand, and `database.max_connections` may exceed
/// what the server allows this client.
async fn warm(pool: &PgPool, n: u32) -> Result<()> {
    let opened = futures::future::join_all((0..n).map(|_| pool.acquire())).await;
    let ok = opened.iter().filter(|c| c.is_ok()).count();
    match opened.into_iter().find_map(|c| c.err()) {
        Some(e) if ok == 0 => Err(e.into()),
        Some(e) => {
            tracing::warn!(error = %e, wanted = n, opened = ok, "opened fewer database connections than the pool may hold");
            Ok(())
        }
        None => Ok(()),
    }
}

impl Metadata {
    /// Connects (creating an SQLite file and its directory if needed).
    pub async fn connect(opts: &DbOptions) -> Result<Metadata> {
        let url = opts.url.as_str();
        if url.starts_with("sqlite:") {
            let co = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit is on disk before the registry acknowledges it.
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            if let Some(dir) = co.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
                }
            }
            // No ping before handing out a connection: a SQLite connection is
            // a file handle that cannot go stale, and each ping is one more
            // round trip to the driver's thread.
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(opts.acquire_timeout)
                .test_before_acquire(false)
                .connect_with(co.clone())
                .await?;
            let read = SqlitePoolOptions::new()
                .max_connections(opts.max_connections.max(2))
                .acquire_timeout(opts.acquire_timeout)
                .test_before_acquire(false)
                .connect_with(co.clone().read_only(true))
                .await?;
            // After the write pool, which created the file and set WAL mode.
            let batcher = batch::Batcher::start(co.get_filename(), SQLITE_BUSY_TIMEOUT)?;
            Ok(Metadata {
                backend: Backend::Sqlite {
                    read,
                    write,
                    batcher,
                },
                observer: None,
                repository_ids: Arc::new(quick_cache::sync::Cache::new(REPOSITORY_ID_CACHE)),
                guarded: None,
                push_groups: None,
                link_groups: None,
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            // `max_connections` in all: a share for the one-statement
            // changes, the rest (at least one) for everything else.
            let total = opts.max_connections.max(2);
            let guarded_max = (total / GUARDED_SHARE).max(1);
            let pg = PgPoolOptions::new()
                .max_connections(total - guarded_max)
                .acquire_timeout(opts.acquire_timeout)
                .test_before_acquire(false)
                .before_acquire(liveness::check)
                .connect(url)
                .await?;
            let generic = sqlx::postgres::PgConnectOptions::from_str(url)?
                .options([("plan_cache_mode", "force_generic_plan")]);
            let guarded = PgPoolOptions::new()
                .max_connections(guarded_max)
                .acquire_timeout(opts.acquire_timeout)
                .test_before_acquire(false)
                .before_acquire(liveness::check)
                .connect_lazy_with(generic);
            Ok(Metadata {
                backend: Backend::Postgres(pg),
                observer: None,
                repository_ids: Arc::new(quick_cache::sync::Cache::new(REPOSITORY_ID_CACHE)),
                push_groups: Some(group::Groups::new(guarded.clone())),
                link_groups: Some(group::Groups::new(guarded.clone())),
                guarded: Some(guarded),
            })
        } else {
            Err(Error::Url(url.to_string()))
        }
    }

    /// Opens every connection the pools may hold (PostgreSQL; nothing to do
    /// on SQLite), for a server about to listen: a restarted server meets its
    /// clients' backlog at once, and every request that had to open its own
    /// connection (a backend to start, a SCRAM exchange) paid for it in
    /// latency, several times over while the machine was busy. One-shot
    /// commands skip it.
    pub async fn warm(&self) -> Result<()> {
        if let (Backend::Postgres(pg), Some(guarded)) = (&self.backend, &self.guarded) {
            warm(pg, pg.options().get_max_connections()).await?;
            warm(guarded, guarded.options().get_max_connections()).await?;
        }
        Ok(())
    }

    /// Reports every operation's query time to `observer` from now on (clones
    /// made afterwards share it).
    pub fn with_observer(mut self, observer: Arc<dyn QueryObserver>) -> Metadata {
        self.observer = Some(observer);
        self
    }

    fn observe(&self, operation: &'static str, started: std::time::Instant) {
        if let Some(o) = &self.observer {
            o.query(operation, started.elapsed());
        }
    }

    /// Size, idle and maximum connections of each pool, for the metrics scrape.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        fn stats<DB: sqlx::Database>(pool: &'static str, p: &sqlx::Pool<DB>) -> PoolStats {
            PoolStats {
                pool,
                size: p.size(),
                idle: p.num_idle() as u32,
                max: p.options().get_max_connections(),
            }
        }
        match &self.backend {
            Backend::Sqlite { read, write, .. } => vec![stats("read", read), stats("write", write)],
            Backend::Postgres(pg) => {
                let mut v = vec![stats("main", pg)];
                v.extend(self.guarded.as_ref().map(|g| stats("guarded", g)));
                v
            }
        }
    }

    /// Applies pending migrations of this backend.
    pub async fn migrate(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite { write, .. } => sqlx::migrate!("migrations/sqlite").run(write).await?,
            Backend::Postgres(pg) => sqlx::migrate!("migrations/postgres").run(pg).await?,
        }
        Ok(())
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    pub async fn ping(&self) -> Result<()> {
        on_read!(self, "ping", |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { read, write, .. } => {
                read.close().await;
                write.close().await;
            }
            Backend::Postgres(pg) => pg.close().await,
        }
        if let Some(g) = &self.guarded {
            g.close().await;
        }
    }

    /// Runs `one` on PostgreSQL ([`exec::OneStatement`]): true if it
    /// committed, false if a guard missed and nothing changed. Always false
    /// on SQLite, whose changes take the group-commit writer.
    async fn at_once(&self, op: &'static str, one: exec::OneStatement) -> Result<bool> {
        let Some(pg) = &self.guarded else {
            return Ok(false);
        };
        let started = std::time::Instant::now();
        let done = async {
            let mut conn = pg.acquire().await?;
            one.run(&mut conn).await
        }
        .await;
        self.observe(op, started);
        Ok(done?)
    }

    /// The common case of a change on PostgreSQL: alone, as its one
    /// statement (`single`), when a runner of `groups` is free; else in the
    /// next group with the changes that queued meanwhile (`member`, `None`
    /// when the change cannot be grouped). True if it committed; false when
    /// the general transaction must settle it (a guard of its own missed).
    async fn common_case<M: group::Member>(
        &self,
        op: &'static str,
        groups: Option<&group::Groups<M>>,
        member: impl FnOnce() -> Option<M>,
        single: impl std::future::Future<Output = std::result::Result<exec::OneStatement, sqlx::Error>>,
    ) -> Result<bool> {
        let alone = groups.and_then(|g| g.try_alone());
        if let (None, Some(groups)) = (&alone, groups) {
            if let Some(member) = member() {
                let started = std::time::Instant::now();
                let grouped = groups.send(member).await;
                self.observe(op, started);
                match grouped {
                    group::Grouped::Committed => return Ok(true),
                    group::Grouped::Missed => return Ok(false),
                    group::Grouped::Undecided => {}
                }
            }
        }
        let one = single.await?;
        let done = self.at_once(op, one).await?;
        drop(alone);
        Ok(done)
    }

    /// A blob link in the common case on PostgreSQL ([`Metadata::common_case`]):
    /// the blob's row inserted or touched (not being collected), the
    /// repository's link and the audit entry, and the end of the upload
    /// session `ending` when there is one. True if it committed.
    #[allow(clippy::too_many_arguments)] // the link, its origin and its session
    async fn link_common_case(
        &self,
        op: &'static str,
        repository_id: i64,
        digest: &Digest,
        size: u64,
        origin: &Origin,
        entry: &AuditEntry,
        existing: bool,
        ending: Option<SessionEnd<'_>>,
    ) -> Result<bool> {
        let single = async {
            let mut one = exec::OneStatement::default();
            if let Some(e) = &ending {
                if let Some(recorded) = e.row_size {
                    one.guard(
                        vec![(
                            "DELETE FROM uploads WHERE id = $1 AND size = $2 RETURNING 1"
                                .to_string(),
                            args![e.id, recorded],
                        )],
                        1,
                    );
                }
                if e.by_id {
                    one.guard(vec![(format!("{END_UPLOAD} RETURNING 1"), args![e.id])], 1);
                }
            }
            // The blob's row (guarded: not being collected), the link and
            // its audit entry.
            guard_blob_row(&mut one, digest.as_str(), size, now_ms(), existing);
            link(&mut one, repository_id, digest).await?;
            audit::append(&mut one, origin, std::slice::from_ref(entry)).await?;
            Ok(one)
        };
        let member = || {
            Some(group::blobs::GroupLink {
                repository_id,
                digest: digest.to_string(),
                size: size as i64,
                existing,
                upload_row: ending
                    .as_ref()
                    .and_then(|e| e.row_size.map(|n| (e.id.to_string(), n))),
                ended: ending
                    .as_ref()
                    .filter(|e| e.by_id)
                    .map(|e| e.id.to_string()),
                origin: origin.clone(),
                entry: entry.clone(),
            })
        };
        self.common_case(op, self.link_groups.as_ref(), member, single)
            .await
    }

    // ---- repositories -------------------------------------------------------

    pub async fn repository_id(&self, name: &RepoName) -> Result<Option<i64>> {
        if let Some(id) = self.repository_ids.get(name.as_str()) {
            return Ok(Some(id));
        }
        let id = on_read!(self, "repository_id", |p| sqlx::query_scalar::<_, i64>(
            "SELECT id FROM repositories WHERE name = $1"
        )
        .bind(name.as_str())
        .fetch_optional(p)
        .await)?;
        if let Some(id) = id {
            self.repository_ids.insert(name.as_str().to_string(), id);
        }
        Ok(id)
    }

    /// The repository's id, creating it on first use.
    pub async fn ensure_repository(&self, name: &RepoName) -> Result<i64> {
        if let Some(id) = self.repository_id(name).await? {
            return Ok(id);
        }
        let id = on_write!(self, "ensure_repository", |p| {
            sqlx::query(
                "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name.as_str())
            .bind(now_ms())
            .execute(p)
            .await?;
            sqlx::query_scalar::<_, i64>("SELECT id FROM repositories WHERE name = $1")
                .bind(name.as_str())
                .fetch_one(p)
                .await
        })?;
        self.repository_ids.insert(name.as_str().to_string(), id);
        Ok(id)
    }

    /// Repository names in order, after `last`, at most `n`.
    pub async fn list_repositories(&self, last: Option<&str>, n: u32) -> Result<Page> {
        let rows = on_read!(self, "list_repositories", |p| {
            sqlx::query_scalar::<_, String>(
                // Repositories with content: a session that was never finished,
                // or a refused push, leaves no name in the catalog.
                "SELECT r.name FROM repositories r
                  WHERE r.name > $1
                    AND (EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id)
                         OR EXISTS (SELECT 1 FROM repository_blobs b WHERE b.repository_id = r.id))
                  ORDER BY r.name LIMIT $2",
            )
            .bind(last.unwrap_or(""))
            .bind(i64::from(n) + 1)
            .fetch_all(p)
            .await
        })?;
        Ok(page(rows, n))
    }

    // ---- blobs --------------------------------------------------------------

    /// Size of `digest` if `repo` may serve it.
    pub async fn repository_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let size = on_read!(self, "repository_blob", |p| sqlx::query_scalar::<_, i64>(
            "SELECT b.size FROM blobs b
               JOIN repository_blobs rb ON rb.digest = b.digest
               JOIN repositories r ON r.id = rb.repository_id
              WHERE r.name = $1 AND b.digest = $2"
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(p)
        .await)?;
        Ok(size.map(|s| s as u64))
    }

    /// Size of a stored blob, whichever repository holds it.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let size = on_read!(self, "blob_size", |p| sqlx::query_scalar::<_, i64>(
            "SELECT size FROM blobs WHERE digest = $1"
        )
        .bind(digest.as_str())
        .fetch_optional(p)
        .await)?;
        Ok(size.map(|s| s as u64))
    }

    /// Claims `digest` before its bytes are written: an existing row is touched
    /// (garbage collection then leaves it alone for its grace period).
    /// `Some(true)`: a live row was there, so its bytes may be stored already
    /// and the caller must link that row, not a new one (`existing` of
    /// [`Metadata::link_blob`]); `Some(false)`: no row. `None` when a
    /// collection is deleting it; the caller waits for that to finish before
    /// writing, or its bytes could be deleted after the write.
    pub async fn claim_blob(&self, digest: &Digest) -> Result<Option<bool>> {
        let state = on_read!(self, "claim_blob", |p| {
            sqlx::query_scalar::<_, String>("SELECT state FROM blobs WHERE digest = $1")
                .bind(digest.as_str())
                .fetch_optional(p)
                .await
        })?;
        match state.as_deref() {
            // No row: nothing for a collection to delete; whoever inserts it
            // makes it fresh.
            None => Ok(Some(false)),
            Some("live") => {
                let n = on_write!(self, "claim_blob", |p| {
                    sqlx::query(
                        "UPDATE blobs SET touched_at = $1, touches = touches + 1
                          WHERE digest = $2 AND state = 'live'",
                    )
                    .bind(now_ms())
                    .bind(digest.as_str())
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
                })?;
                if n == 1 {
                    return Ok(Some(true));
                }
                // Collected meanwhile, or claimed by a collection: ask again.
                let again = on_read!(self, "claim_blob", |p| {
                    sqlx::query_scalar::<_, String>("SELECT state FROM blobs WHERE digest = $1")
                        .bind(digest.as_str())
                        .fetch_optional(p)
                        .await
                })?;
                Ok(again.is_none().then_some(false))
            }
            Some(_) => Ok(None),
        }
    }

    /// Records a stored, verified blob and lets `repository_id` serve it.
    /// `entry` is its audit record (`blob.push` or `blob.mount`). Returns false,
    /// changing nothing, when garbage collection is deleting the blob.
    ///
    /// `existing`: the caller relies on bytes stored under a row that was live
    /// when it looked (a mount; a push whose claim found the row and did not
    /// rewrite the file). Only that row is linked: if a collection deleted it
    /// meanwhile, its bytes went with it, and a new row would name bytes that
    /// are gone, so this returns false too.
    pub async fn link_blob(
        &self,
        repository_id: i64,
        digest: &Digest,
        size: u64,
        origin: &Origin,
        entry: AuditEntry,
        existing: bool,
    ) -> Result<bool> {
        let entry = entry.digest(digest.as_str());
        if self.backend_name() == "postgres"
            && self
                .link_common_case(
                    "link_blob",
                    repository_id,
                    digest,
                    size,
                    origin,
                    &entry,
                    existing,
                    None,
                )
                .await?
        {
            return Ok(true);
        }
        let (digest, origin) = (digest.clone(), origin.clone());
        let live = on_batched_write!(self, "link_blob", |c| {
            if !insert_blob(c, &digest, size, existing).await? {
                return Ok(exec::Change::Rollback(false));
            }
            link(c, repository_id, &digest).await?;
            audit::append(c, &origin, std::slice::from_ref(&entry)).await?;
            Ok::<_, sqlx::Error>(exec::Change::Commit(true))
        })?;
        Ok(live)
    }

    /// Stops `repo` serving `digest`; the bytes stay until garbage collection.
    ///
    /// Refused when `guard` keeps a tag whose manifest needs the blob (directly,
    /// or through an index listing that manifest): content behind an immutable
    /// tag stays pullable. Check and delete share one transaction.
    pub async fn unlink_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        guard: &(dyn Fn(&str) -> TagGuard + Sync),
        protect: retention::Protect<'_>,
        origin: &Origin,
    ) -> Result<DeleteOutcome> {
        let Some(id) = self.repository_id(repo).await? else {
            return Ok(DeleteOutcome::NotFound);
        };
        let outcome = on_write!(self, "unlink_blob", |p| {
            async {
                let mut tx = p.begin_write().await?;
                // Manifests that use the blob, locked, then judged.
                let users = sqlx::query_scalar::<_, String>(
                    "SELECT manifest_digest FROM manifest_blobs
                      WHERE repository_id = $1 AND blob_digest = $2 ORDER BY manifest_digest",
                )
                .bind(id)
                .bind(digest.as_str())
                .fetch_all(&mut *tx)
                .await?;
                if !users.is_empty() {
                    for m in &users {
                        retention::lock_manifest(&mut *tx, id, m).await?;
                    }
                    let facts = retention::load_facts(&mut *tx, id).await?;
                    let roots = protect(&facts);
                    let mut reasons = Vec::new();
                    for m in &users {
                        for r in retention::protected_reasons(&mut *tx, id, &roots, m).await? {
                            reasons.push(format!("{r} (manifest {m} uses it)"));
                        }
                    }
                    if !reasons.is_empty() {
                        tx.rollback().await?;
                        return Ok(DeleteOutcome::Protected(reasons));
                    }
                }
                let holders = sqlx::query_as::<_, (String, String)>(
                    "SELECT t.name, t.manifest_digest FROM tags t
                      WHERE t.repository_id = $1 AND t.manifest_digest IN (
                        SELECT mb.manifest_digest FROM manifest_blobs mb
                         WHERE mb.repository_id = $1 AND mb.blob_digest = $2
                        UNION
                        SELECT mc.parent_digest FROM manifest_children mc
                          JOIN manifest_blobs mb
                            ON mb.repository_id = mc.repository_id AND mb.manifest_digest = mc.child_digest
                         WHERE mc.repository_id = $1 AND mb.blob_digest = $2)
                      ORDER BY t.name",
                )
                .bind(id)
                .bind(digest.as_str())
                .fetch_all(&mut *tx)
                .await?;
                let refused = kept(guard, holders, digest.as_str());
                if !refused.is_empty() {
                    tx.rollback().await?;
                    return Ok::<DeleteOutcome, sqlx::Error>(DeleteOutcome::Denied(refused));
                }
                let n = sqlx::query(
                    "DELETE FROM repository_blobs WHERE repository_id = $1 AND digest = $2",
                )
                .bind(id)
                .bind(digest.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n > 0 {
                    let e = AuditEntry::ok("blob.delete", repo.as_str()).digest(digest.as_str());
                    audit::append(&mut *tx, origin, &[e]).await?;
                }
                tx.commit().await?;
                Ok(if n > 0 {
                    DeleteOutcome::Deleted
                } else {
                    DeleteOutcome::NotFound
                })
            }
            .await
        })?;
        Ok(outcome)
    }

    // ---- uploads ------------------------------------------------------------

    /// The session `id` of repository `repo`, with its parts in order.
    pub async fn upload(&self, repo: &RepoName, id: &str) -> Result<Option<Upload>> {
        Ok(self.upload_and_blob(repo, id, None).await?.0)
    }

    /// [`Metadata::upload`] and whether `digest` has a blob row (in any
    /// state), in one round trip: finishing an upload asks both, and each
    /// statement is a round trip and, on PostgreSQL, server CPU.
    pub async fn upload_and_blob(
        &self,
        repo: &RepoName,
        id: &str,
        digest: Option<&Digest>,
    ) -> Result<(Option<Upload>, bool)> {
        // One row at least (the session's columns NULL when it has none): the
        // session on every row, with one of its parts or none. Only the parts
        // the row's size (and so its hash state) accounts for: a chunk
        // appended after the row was read belongs to a later state.
        type Row = (
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<Vec<u8>>,
            Option<i64>,
            Option<String>,
            Option<i64>,
            bool,
        );
        let rows = on_read!(self, "upload", |p| sqlx::query_as::<_, Row>(
            "SELECT u.id, u.repository_id, u.algorithm, u.hash_state, u.size,
                    p.object_key, p.size,
                    EXISTS (SELECT 1 FROM blobs WHERE digest = $3)
               FROM (SELECT 1 AS one) k
               LEFT JOIN (uploads u JOIN repositories r
                            ON r.id = u.repository_id AND r.name = $2)
                 ON u.id = $1
               LEFT JOIN upload_parts p ON p.upload_id = u.id AND p.start_offset < u.size
              ORDER BY p.start_offset"
        )
        .bind(id)
        .bind(repo.as_str())
        .bind(digest.map(Digest::as_str))
        .fetch_all(p)
        .await)?;
        let blob_row = rows.first().is_some_and(|r| r.7);
        let mut rows = rows.into_iter();
        let Some((
            Some(id),
            Some(repository_id),
            Some(algorithm),
            Some(hash_state),
            Some(size),
            key,
            part_size,
            _,
        )) = rows.next()
        else {
            return Ok((None, blob_row));
        };
        let parts = std::iter::once((key, part_size))
            .chain(rows.map(|r| (r.5, r.6)))
            .filter_map(|(key, size)| {
                Some(StoredPart {
                    key: key?,
                    size: size? as u64,
                })
            })
            .collect();
        Ok((
            Some(Upload {
                id,
                repository_id,
                algorithm,
                hash_state,
                size: size as u64,
                parts,
                stored: true,
            }),
            blob_row,
        ))
    }

    /// Whether session `id` ended (was finished or cancelled) while it had no
    /// row to delete.
    pub async fn upload_ended(&self, id: &str) -> Result<bool> {
        let ended = on_read!(self, "upload_ended", |p| sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM ended_uploads WHERE id = $1)"
        )
        .bind(id)
        .fetch_one(p)
        .await)?;
        Ok(ended)
    }

    /// Forgets the ends of sessions opened before `floor` (a
    /// [`SessionId::floor`]): their ids have expired anyway.
    pub async fn prune_ended_uploads(&self, floor: &str) -> Result<u64> {
        let floor = floor.to_string();
        let n = on_write!(self, "prune_ended_uploads", |p| sqlx::query(
            "DELETE FROM ended_uploads WHERE id < $1"
        )
        .bind(floor.as_str())
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n)
    }

    /// Appends a stored chunk to upload `id` if the upload is still at
    /// `expected_size`. Returns false when another request moved it first (the
    /// caller then deletes its chunk): two replicas can never both append at one
    /// offset.
    ///
    /// A session without a row gets one first, unless it has ended.
    pub async fn append_upload(
        &self,
        u: &Upload,
        part: &StoredPart,
        hash_state: &[u8],
    ) -> Result<bool> {
        let (part, hash_state) = (part.clone(), hash_state.to_vec());
        let (id, expected_size) = (u.id.clone(), u.size);
        let opened = (!u.stored).then(|| {
            let at = SessionId::parse(&u.id).map_or_else(now_ms, |s| s.opened_ms());
            (
                u.repository_id,
                u.algorithm.clone(),
                u.hash_state.clone(),
                at,
            )
        });
        let ok = on_batched_write!(self, "append_upload", |c| {
            if let Some((repository_id, algorithm, initial, at)) = &opened {
                // Another request may have stored it meanwhile: then the
                // size check below decides.
                c.execute(
                    "INSERT INTO uploads (id, repository_id, algorithm, hash_state, size, created_at, updated_at)
                     SELECT $1, $2, $3, $4, 0, $5, $5
                      WHERE NOT EXISTS (SELECT 1 FROM ended_uploads WHERE id = $1)
                     ON CONFLICT (id) DO NOTHING",
                    args![id.as_str(), *repository_id, algorithm.as_str(), initial.as_slice(), *at],
                )
                .await?;
            }
            let n = c
                .execute(
                    "UPDATE uploads SET size = $1, hash_state = $2, updated_at = $3
                      WHERE id = $4 AND size = $5",
                    args![
                        (expected_size + part.size) as i64,
                        hash_state.as_slice(),
                        now_ms(),
                        id.as_str(),
                        expected_size as i64,
                    ],
                )
                .await?;
            if n != 1 {
                return Ok(exec::Change::Rollback(false));
            }
            c.execute(
                "INSERT INTO upload_parts (upload_id, start_offset, object_key, size) VALUES ($1, $2, $3, $4)",
                args![id.as_str(), expected_size as i64, part.key.as_str(), part.size as i64],
            )
            .await?;
            Ok::<_, sqlx::Error>(exec::Change::Commit(true))
        })?;
        Ok(ok)
    }

    /// Completes upload `u`: the blob becomes visible in the repository and the
    /// session ends, in one transaction. Returns `Gone` if the session already
    /// ended (finished or cancelled concurrently).
    ///
    /// Only if the session still holds `u.size` bytes, the state the caller
    /// verified: a chunk that arrived meanwhile makes this return `Gone`.
    ///
    /// `existing` as for [`Metadata::link_blob`].
    pub async fn finish_upload(
        &self,
        u: &Upload,
        digest: &Digest,
        size: u64,
        origin: &Origin,
        entry: AuditEntry,
        existing: bool,
    ) -> Result<FinishOutcome> {
        let entry = entry.digest(digest.as_str());
        let (id, repository_id, recorded) = (u.id.as_str(), u.repository_id, u.size as i64);
        // A session opened by id ends by recording its end; one with a row also
        // loses the row.
        let by_id = SessionId::parse(id).is_some();
        if self.backend_name() == "postgres" {
            // The common case: the session holds what was verified and the
            // blob is not being collected.
            let ending = SessionEnd {
                id,
                row_size: u.stored.then_some(recorded),
                by_id,
            };
            if self
                .link_common_case(
                    "finish_upload",
                    repository_id,
                    digest,
                    size,
                    origin,
                    &entry,
                    existing,
                    Some(ending),
                )
                .await?
            {
                return Ok(FinishOutcome::Done);
            }
        }
        let (id, stored, digest, origin) =
            (id.to_string(), u.stored, digest.clone(), origin.clone());
        let outcome = on_batched_write!(self, "finish_upload", |c| {
            if stored {
                let n = c
                    .execute(
                        "DELETE FROM uploads WHERE id = $1 AND size = $2",
                        args![id.as_str(), recorded],
                    )
                    .await?;
                if n != 1 {
                    return Ok(exec::Change::Rollback(FinishOutcome::Gone));
                }
                // Its upload_parts rows go with it (ON DELETE CASCADE).
            }
            if by_id && c.execute(END_UPLOAD, args![id.as_str()]).await? != 1 {
                return Ok(exec::Change::Rollback(FinishOutcome::Gone));
            }
            if !insert_blob(c, &digest, size, existing).await? {
                return Ok(exec::Change::Rollback(FinishOutcome::Collecting));
            }
            link(c, repository_id, &digest).await?;
            audit::append(c, &origin, std::slice::from_ref(&entry)).await?;
            Ok::<_, sqlx::Error>(exec::Change::Commit(FinishOutcome::Done))
        })?;
        Ok(outcome)
    }

    /// Ids of upload sessions last touched before `before_ms`, at most `limit`.
    pub async fn idle_uploads(&self, before_ms: i64, limit: u32) -> Result<Vec<String>> {
        let ids = on_read!(self, "idle_uploads", |p| {
            sqlx::query_scalar::<_, String>(
                "SELECT id FROM uploads WHERE updated_at < $1 ORDER BY updated_at LIMIT $2",
            )
            .bind(before_ms)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await
        })?;
        Ok(ids)
    }

    /// Deletes session `id` if it is still idle since before `before_ms` (a chunk
    /// that arrived meanwhile keeps it), returning its chunks' keys.
    pub async fn expire_upload(&self, id: &str, before_ms: i64) -> Result<Option<Vec<String>>> {
        let keys = on_write!(self, "expire_upload", |p| {
            async {
                let mut tx = p.begin_write().await?;
                let keys = sqlx::query_scalar::<_, String>(
                    "SELECT object_key FROM upload_parts WHERE upload_id = $1",
                )
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                let n = sqlx::query("DELETE FROM uploads WHERE id = $1 AND updated_at < $2")
                    .bind(id)
                    .bind(before_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    tx.rollback().await?;
                    return Ok::<Option<Vec<String>>, sqlx::Error>(None);
                }
                // upload_parts rows go with the session (ON DELETE CASCADE).
                tx.commit().await?;
                Ok(Some(keys))
            }
            .await
        })?;
        Ok(keys)
    }

    /// Cancels upload `u`, returning its chunks' keys for cleanup; `None` if it
    /// ended meanwhile.
    pub async fn delete_upload(&self, u: &Upload) -> Result<Option<Vec<String>>> {
        let id = u.id.clone();
        let by_id = SessionId::parse(&id).is_some();
        let keys = on_write!(self, "delete_upload", |p| {
            let mut tx = p.begin_write().await?;
            // The session's row first, as a finish takes it first: a cancel
            // racing a finish then waits for it (and finds the session gone)
            // instead of taking the end record first and deadlocking with a
            // finish that holds the row and waits for that record.
            sqlx::query("UPDATE uploads SET updated_at = updated_at WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            let ended = if by_id {
                sqlx::query(END_UPLOAD)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            } else {
                0
            };
            // Every part, including one appended since the caller read it.
            let keys = sqlx::query_scalar::<_, String>(
                "DELETE FROM upload_parts WHERE upload_id = $1 RETURNING object_key",
            )
            .bind(id.as_str())
            .fetch_all(&mut *tx)
            .await?;
            let deleted = sqlx::query("DELETE FROM uploads WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok::<_, sqlx::Error>((ended + deleted > 0).then_some(keys))
        })?;
        Ok(keys)
    }

    // ---- manifests and tags -------------------------------------------------

    /// Records a manifest and binds `tags` to it, all in one transaction: either
    /// every tag is bound (or already held this digest) or nothing changes at all,
    /// not even the manifest row.
    ///
    /// Races are settled by the database: a new tag is claimed with
    /// `INSERT … ON CONFLICT DO NOTHING`, so of two pushes of one new tag exactly
    /// one inserts and the other then reads the winner's digest and is judged
    /// against it (PostgreSQL makes the loser wait for the winner's commit; SQLite
    /// has one writer).
    pub async fn put_manifest(
        &self,
        repository_id: i64,
        repo: &str,
        m: &NewManifest,
        tags: &[TagBinding],
        origin: &Origin,
    ) -> Result<PutOutcome> {
        let annotations = if m.annotations.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&m.annotations).map_err(|e| Error::Corrupt(e.to_string()))?)
        };
        let now = now_ms();
        let (m, tags, origin, repo) = (m.clone(), tags.to_vec(), origin.clone(), repo.to_string());
        // Every statement is a round trip (to the driver's thread on SQLite, to
        // the server on PostgreSQL), so the referenced blobs (their state, and
        // whether this repository serves each) are read in one, and the child
        // manifests in another. PostgreSQL gets an array: it probes the primary
        // key for `= ANY(array)`, whereas `IN (SELECT json_array_elements_text(…))`
        // is planned for 100 rows and read the whole blobs table on every push
        // up to tens of thousands of blobs.
        let (in_list, blob_list, children_list) = if self.backend_name() == "postgres" {
            (
                "= ANY($1::text[])",
                pg_text_array(m.blobs.iter().map(Digest::as_str)),
                pg_text_array(m.children.iter().map(Digest::as_str)),
            )
        } else {
            let json = |list: &[Digest]| {
                serde_json::to_string(&list.iter().map(Digest::as_str).collect::<Vec<_>>())
                    .map_err(|e| Error::Corrupt(format!("digest list: {e}")))
            };
            (
                "IN (SELECT value FROM json_each($1))",
                json(&m.blobs)?,
                json(&m.children)?,
            )
        };
        // The common case on PostgreSQL: one statement, alone when a runner is
        // free, else in the next group with the pushes that queued meanwhile.
        if m.require_blobs && self.backend_name() == "postgres" {
            let single = async {
                let mut one = exec::OneStatement::default();
                manifest_push_at_once(
                    &mut one,
                    repository_id,
                    &repo,
                    &m,
                    annotations.as_deref(),
                    &tags,
                    &origin,
                    now,
                    (&blob_list, &children_list),
                )
                .await?;
                Ok(one)
            };
            let member = || {
                self.group_push(
                    repository_id,
                    &repo,
                    &m,
                    annotations.as_deref(),
                    &tags,
                    &origin,
                )
            };
            if self
                .common_case("put_manifest", self.push_groups.as_ref(), member, single)
                .await?
            {
                return Ok(PutOutcome::Stored(created_events(m.digest.as_str(), &tags)));
            }
        }
        let blob_states_sql = format!(
            "SELECT b.digest, b.state, b.touched_at,
                    EXISTS (SELECT 1 FROM repository_blobs rb
                             WHERE rb.repository_id = $2 AND rb.digest = b.digest)
               FROM blobs b WHERE b.digest {in_list}"
        );
        let children_sql =
            format!("SELECT digest FROM manifests WHERE repository_id = $2 AND digest {in_list}");
        let outcome = on_batched_write!(self, "put_manifest", |c| {
            let (m, repo) = (&m, repo.as_str());
            let digest = m.digest.as_str();
            if !insert_blob(c, &m.digest, m.size, false).await? {
                return Ok(exec::Change::Rollback(PutOutcome::Collecting(
                    m.digest.to_string(),
                )));
            }
            // Touch every blob this manifest references, in this transaction:
            // garbage collection claims only blobs untouched for its grace
            // period, so either it claimed one first (and this push fails here)
            // or it will see this reference. Unless sparse manifests are
            // allowed, every blob must be one this repository serves, and
            // every child manifest one of its manifests: checked here, in the
            // transaction that records the references.
            let states = if !m.blobs.is_empty() && (m.touch_fresh_ms > 0 || m.require_blobs) {
                c.fetch(&blob_states_sql, args![blob_list.as_str(), repository_id])
                    .await?
            } else {
                Vec::new()
            };
            for b in &m.blobs {
                let row = states.iter().find_map(|row| match row.as_slice() {
                    [Val::Text(d), Val::Text(state), at, linked] if d == b.as_str() => {
                        Some((state.as_str(), at.as_int(), linked.as_int() == Some(1)))
                    }
                    _ => None,
                });
                if m.require_blobs && !row.is_some_and(|(_, _, linked)| linked) {
                    return Ok(exec::Change::Rollback(PutOutcome::MissingBlob(b.clone())));
                }
                // A collection can claim a blob only once it is `grace` old,
                // and this push commits long before half of that passes.
                let fresh = row.is_some_and(|(state, at, _)| {
                    state == "live" && at.is_some_and(|at| now - at < m.touch_fresh_ms)
                });
                if fresh {
                    continue;
                }
                let touched = c
                    .execute(
                        "UPDATE blobs SET touched_at = $1, touches = touches + 1
                          WHERE digest = $2 AND state = 'live'",
                        args![now, b.as_str()],
                    )
                    .await?;
                if touched == 0 {
                    let state = c
                        .fetch_text(
                            "SELECT state FROM blobs WHERE digest = $1",
                            args![b.as_str()],
                        )
                        .await?;
                    if state.is_some() {
                        return Ok(exec::Change::Rollback(PutOutcome::Collecting(
                            b.to_string(),
                        )));
                    }
                    if m.require_blobs {
                        // Collected since it was read.
                        return Ok(exec::Change::Rollback(PutOutcome::MissingBlob(b.clone())));
                    }
                }
            }
            if m.require_blobs && !m.children.is_empty() {
                let present = c
                    .fetch(&children_sql, args![children_list.as_str(), repository_id])
                    .await?;
                let missing = m.children.iter().find(|child| {
                    !present
                        .iter()
                        .any(|row| matches!(row.as_slice(), [Val::Text(d)] if d == child.as_str()))
                });
                if let Some(child) = missing {
                    return Ok(exec::Change::Rollback(PutOutcome::MissingBlob(
                        child.clone(),
                    )));
                }
            }
            record_manifest(c, repository_id, m, annotations.as_deref(), now).await?;
            let mut events: Vec<TagEvent> = Vec::new();
            let mut denied: Vec<DeniedTag> = Vec::new();
            for t in &tags {
                let name = t.tag.as_str();
                // The binding is inserted unless the tag exists or, for an
                // immutable tag, a pin names another digest; those cases are
                // sorted out below, off the common path (one statement for a
                // new tag).
                let inserted = c
                    .execute(
                        TAG_INSERT,
                        args![repository_id, name, digest, now, i64::from(t.immutable)],
                    )
                    .await?;
                let (action, previous) = if inserted == 1 {
                    (TagAction::Created, None)
                } else {
                    let held = c
                        .fetch_text(
                            "SELECT manifest_digest FROM tags WHERE repository_id = $1 AND name = $2",
                            args![repository_id, name],
                        )
                        .await?;
                    let pin = if t.immutable {
                        c.fetch_text(
                            "SELECT digest FROM tag_pins WHERE repository_id = $1 AND tag = $2",
                            args![repository_id, name],
                        )
                        .await?
                    } else {
                        None
                    };
                    match (held, pin) {
                        // Re-pushing what the tag holds is fine, even where a
                        // tag that was mutable for a while holds another digest
                        // than its pin.
                        (Some(held), _) if held == digest => (TagAction::Repushed, None),
                        // Held elsewhere, or deleted while its pin names
                        // another digest: an immutable tag stays where it was.
                        (held, pin) if t.immutable => {
                            let Some(held) = held.or(pin) else {
                                return Err(sqlx::Error::RowNotFound);
                            };
                            denied.push(DeniedTag {
                                tag: name.to_string(),
                                held,
                                rule: t.rule.clone(),
                                needs: None,
                            });
                            continue;
                        }
                        (Some(held), _) => {
                            c.execute(
                                "UPDATE tags SET manifest_digest = $1, updated_at = $2
                                  WHERE repository_id = $3 AND name = $4",
                                args![digest, now, repository_id, name],
                            )
                            .await?;
                            (TagAction::Moved, Some(held))
                        }
                        (None, _) => return Err(sqlx::Error::RowNotFound),
                    }
                };
                events.push(TagEvent {
                    tag: name.to_string(),
                    action,
                    digest: digest.to_string(),
                    previous_digest: previous,
                    rule: t.rule.clone(),
                });
            }
            if !denied.is_empty() {
                return Ok::<_, sqlx::Error>(exec::Change::Rollback(PutOutcome::Denied(denied)));
            }
            record_bindings(c, repository_id, repo, m, &tags, &events, &origin, now).await?;
            Ok(exec::Change::Commit(PutOutcome::Stored(events)))
        })?;
        Ok(outcome)
    }

    /// `m` as a member of a group commit ([`group`]): on PostgreSQL, when its
    /// bytes are text (a manifest is JSON, so always but for a NUL).
    fn group_push(
        &self,
        repository_id: i64,
        repo: &str,
        m: &NewManifest,
        annotations: Option<&str>,
        tags: &[TagBinding],
        origin: &Origin,
    ) -> Option<group::manifests::GroupPush> {
        self.push_groups.as_ref()?;
        let content = std::str::from_utf8(&m.content).ok()?;
        if content.contains('\0') {
            return None;
        }
        let distinct = |list: &[Digest]| {
            let mut seen = std::collections::HashSet::new();
            list.iter()
                .map(Digest::as_str)
                .filter(|d| seen.insert(*d))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let events = created_events(m.digest.as_str(), tags);
        Some(group::manifests::GroupPush {
            repository_id,
            digest: m.digest.to_string(),
            size: m.size as i64,
            media_type: m.media_type.clone(),
            artifact_type: m.artifact_type.clone(),
            subject: m.subject.as_ref().map(|s| s.to_string()),
            annotations: annotations.map(str::to_string),
            content: content.to_string(),
            blobs: distinct(&m.blobs),
            children: distinct(&m.children),
            tags: tags
                .iter()
                .map(|t| (t.tag.to_string(), t.immutable, t.rule.clone()))
                .collect(),
            touch_fresh_ms: m.touch_fresh_ms,
            origin: origin.clone(),
            entries: push_entries(repo, m, &events),
        })
    }

    /// Appends events to tag history on their own (outside a push's transaction).
    pub async fn record_tag_events(
        &self,
        repository_id: i64,
        repo: &str,
        events: &[TagEvent],
        origin: &Origin,
    ) -> Result<()> {
        let now = now_ms();
        let entries: Vec<AuditEntry> = events.iter().map(|e| tag_entry(repo, e)).collect();
        on_write!(self, "record_tag_events", |p| {
            let mut tx = p.begin_write().await?;
            for e in events {
                insert_event(&mut *tx, repository_id, e, &origin.actor, now).await?;
            }
            audit::append(&mut *tx, origin, &entries).await?;
            tx.commit().await
        })?;
        Ok(())
    }

    /// The manifest `tag` points at in `repo`.
    pub async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<ManifestRecord>> {
        let row = on_read!(self, "resolve_tag", |p| {
            sqlx::query_as::<_, (String, String, i64)>(
            "SELECT m.digest, m.media_type, m.size
               FROM tags t
               JOIN repositories r ON r.id = t.repository_id
               JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest
              WHERE r.name = $1 AND t.name = $2"
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(p)
        .await
        })?;
        Ok(row.map(record))
    }

    pub async fn manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>> {
        let row = on_read!(self, "manifest", |p| sqlx::query_as::<
            _,
            (String, String, i64),
        >(
            "SELECT m.digest, m.media_type, m.size
               FROM manifests m JOIN repositories r ON r.id = m.repository_id
              WHERE r.name = $1 AND m.digest = $2"
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(p)
        .await)?;
        Ok(row.map(record))
    }

    /// The exact bytes of manifest `digest`, if they were stored with its
    /// record (every manifest pushed since they are; older ones are files of
    /// the blob store).
    pub async fn manifest_content(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let content = on_read!(self, "manifest_content", |p| {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT content FROM manifest_content WHERE digest = $1",
            )
            .bind(digest.as_str())
            .fetch_optional(p)
            .await
        })?;
        Ok(content)
    }

    /// Deletes a manifest and every tag pointing at it, unless `guard` refuses one
    /// of those tags (it returns the deciding rule's name for a tag that must stay).
    /// The check and the delete share one transaction, so a tag bound meanwhile
    /// cannot slip through.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        guard: &(dyn Fn(&str) -> TagGuard + Sync),
        protect: retention::Protect<'_>,
        origin: &Origin,
    ) -> Result<DeleteOutcome> {
        let Some(id) = self.repository_id(repo).await? else {
            return Ok(DeleteOutcome::NotFound);
        };
        let actor = origin.actor.as_str();
        let now = now_ms();
        let outcome = on_write!(self, "delete_manifest", |p| {
            async {
                let mut tx = p.begin_write().await?;
                // Lock the row first (promotions and holds lock it too), then
                // read the protections as they are now.
                if !retention::lock_manifest(&mut *tx, id, digest.as_str()).await? {
                    tx.rollback().await?;
                    return Ok(DeleteOutcome::NotFound);
                }
                let facts = retention::load_facts(&mut *tx, id).await?;
                let reasons =
                    retention::protected_reasons(&mut *tx, id, &protect(&facts), digest.as_str())
                        .await?;
                if !reasons.is_empty() {
                    tx.rollback().await?;
                    return Ok(DeleteOutcome::Protected(reasons));
                }
                // Deleting first and judging what was deleted leaves no window: a tag
                // bound to this manifest by a concurrent push is either returned here
                // or its push fails on the manifest row removed below.
                let mut tags = sqlx::query_scalar::<_, String>(
                "DELETE FROM tags WHERE repository_id = $1 AND manifest_digest = $2 RETURNING name",
            )
            .bind(id)
            .bind(digest.as_str())
            .fetch_all(&mut *tx)
            .await?;
                tags.sort();
                // Indexes listing this manifest need it too.
                let parents = sqlx::query_as::<_, (String, String)>(
                    "SELECT t.name, t.manifest_digest FROM tags t
                   JOIN manifest_children mc
                     ON mc.repository_id = t.repository_id AND mc.parent_digest = t.manifest_digest
                  WHERE mc.repository_id = $1 AND mc.child_digest = $2
                  ORDER BY t.name",
                )
                .bind(id)
                .bind(digest.as_str())
                .fetch_all(&mut *tx)
                .await?;
                let mut refused = Vec::new();
                let mut rules = Vec::new();
                for t in &tags {
                    match guard(t) {
                        TagGuard::Keep { rule } => refused.push(DeniedTag {
                            tag: t.clone(),
                            held: digest.to_string(),
                            rule,
                            needs: None,
                        }),
                        TagGuard::Allow { rule } => rules.push(rule),
                    }
                }
                refused.extend(kept(guard, parents, digest.as_str()));
                if !refused.is_empty() {
                    tx.rollback().await?;
                    return Ok::<DeleteOutcome, sqlx::Error>(DeleteOutcome::Denied(refused));
                }
                let n =
                    sqlx::query("DELETE FROM manifests WHERE repository_id = $1 AND digest = $2")
                        .bind(id)
                        .bind(digest.as_str())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                if n == 0 {
                    tx.rollback().await?;
                    return Ok(DeleteOutcome::NotFound);
                }
                let mut entries = vec![AuditEntry::ok("manifest.delete", repo.as_str())
                    .digest(digest.as_str())
                    .detail(serde_json::json!({ "tags": tags }))];
                for (t, rule) in tags.iter().zip(rules) {
                    let e = TagEvent {
                        tag: t.clone(),
                        action: TagAction::Deleted,
                        digest: digest.to_string(),
                        previous_digest: None,
                        rule,
                    };
                    insert_event(&mut *tx, id, &e, actor, now).await?;
                    entries.push(tag_entry(repo.as_str(), &e));
                }
                audit::append(&mut *tx, origin, &entries).await?;
                tx.commit().await?;
                Ok(DeleteOutcome::Deleted)
            }
            .await
        })?;
        Ok(outcome)
    }

    /// Removes a tag (the manifest stays) unless `guard` refuses it.
    pub async fn delete_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        guard: &(dyn Fn(&str) -> TagGuard + Sync),
        origin: &Origin,
    ) -> Result<DeleteOutcome> {
        let actor = origin.actor.as_str();
        let Some(id) = self.repository_id(repo).await? else {
            return Ok(DeleteOutcome::NotFound);
        };
        let now = now_ms();
        let outcome = on_write!(self, "delete_tag", |p| async {
            let mut tx = p.begin_write().await?;
            let held = sqlx::query_scalar::<_, String>(
                "SELECT manifest_digest FROM tags WHERE repository_id = $1 AND name = $2",
            )
            .bind(id)
            .bind(tag.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(held) = held else {
                return Ok::<DeleteOutcome, sqlx::Error>(DeleteOutcome::NotFound);
            };
            let rule = match guard(tag.as_str()) {
                TagGuard::Keep { rule } => {
                    return Ok(DeleteOutcome::Denied(vec![DeniedTag {
                        tag: tag.to_string(),
                        held,
                        rule,
                        needs: None,
                    }]))
                }
                TagGuard::Allow { rule } => rule,
            };
            sqlx::query("DELETE FROM tags WHERE repository_id = $1 AND name = $2")
                .bind(id)
                .bind(tag.as_str())
                .execute(&mut *tx)
                .await?;
            let e = TagEvent {
                tag: tag.to_string(),
                action: TagAction::Deleted,
                digest: held,
                previous_digest: None,
                rule,
            };
            insert_event(&mut *tx, id, &e, actor, now).await?;
            audit::append(&mut *tx, origin, &[tag_entry(repo.as_str(), &e)]).await?;
            tx.commit().await?;
            Ok(DeleteOutcome::Deleted)
        }
        .await)?;
        Ok(outcome)
    }

    /// A tag's history, newest first: at most `n` events with ids below `before`.
    pub async fn tag_history(
        &self,
        repo: &RepoName,
        tag: &str,
        before: Option<i64>,
        n: u32,
    ) -> Result<Option<Vec<TagHistoryEntry>>> {
        let Some(id) = self.repository_id(repo).await? else {
            return Ok(None);
        };
        let rows = on_read!(self, "tag_history", |p| {
            sqlx::query_as::<_, TagHistoryEntry>(
            "SELECT id, action, digest, previous_digest, rule, actor, at AS at_ms FROM tag_events
              WHERE repository_id = $1 AND tag = $2 AND id < $3
              ORDER BY id DESC LIMIT $4"
        )
        .bind(id)
        .bind(tag)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(n))
        .fetch_all(p)
        .await
        })?;
        Ok(Some(rows))
    }

    /// The digest `tag` pointed at at time `at_ms` (`None`: not bound then).
    pub async fn tag_at(
        &self,
        repo: &RepoName,
        tag: &str,
        at_ms: i64,
    ) -> Result<Option<TagHistoryEntry>> {
        let Some(id) = self.repository_id(repo).await? else {
            return Ok(None);
        };
        let row = on_read!(self, "tag_at", |p| {
            sqlx::query_as::<_, TagHistoryEntry>(
            "SELECT id, action, digest, previous_digest, rule, actor, at AS at_ms FROM tag_events
              WHERE repository_id = $1 AND tag = $2 AND at <= $3 AND action NOT IN ('denied', 'equivalent')
              ORDER BY id DESC LIMIT 1"
        )
        .bind(id)
        .bind(tag)
        .bind(at_ms)
        .fetch_optional(p)
        .await
        })?;
        Ok(row.filter(|r| r.action != "deleted"))
    }

    /// Tags of `repo` in lexical order after `last`, at most `n`; `None` if the
    /// repository does not exist.
    pub async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: u32,
    ) -> Result<Option<Page>> {
        let Some(id) = self.repository_id(repo).await? else {
            return Ok(None);
        };
        // The page comes back as one JSON array in one row: the SQLite driver
        // hands each row from its worker thread to the caller separately, and
        // those hand-offs, not the query, cost most of a listing.
        let sql = if self.backend_name() == "postgres" {
            "SELECT COALESCE(json_agg(name)::text, '[]') FROM
               (SELECT name FROM tags WHERE repository_id = $1 AND name > $2
                 ORDER BY name LIMIT $3) page"
        } else {
            "SELECT json_group_array(name) FROM
               (SELECT name FROM tags WHERE repository_id = $1 AND name > $2
                 ORDER BY name LIMIT $3)"
        };
        let json = on_read!(self, "list_tags", |p| {
            sqlx::query_scalar::<_, String>(sql)
                .bind(id)
                .bind(last.unwrap_or(""))
                .bind(i64::from(n) + 1)
                .fetch_one(p)
                .await
        })?;
        let mut rows: Vec<String> = serde_json::from_str(&json)
            .map_err(|e| Error::Corrupt(format!("tag page of {repo}: {e}")))?;
        // Aggregates keep the subquery's order in practice, not by contract.
        rows.sort_unstable();
        Ok(Some(page(rows, n)))
    }

    /// Manifests of `repo` whose subject is `subject`, oldest first.
    pub async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Referrer>> {
        let rows = on_read!(self, "referrers", |p| sqlx::query_as::<
            _,
            (String, String, i64, Option<String>, Option<String>),
        >(
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations
               FROM manifests m JOIN repositories r ON r.id = m.repository_id
              WHERE r.name = $1 AND m.subject_digest = $2
              ORDER BY m.created_at, m.digest"
        )
        .bind(repo.as_str())
        .bind(subject.as_str())
        .fetch_all(p)
        .await)?;
        rows.into_iter()
            .map(|(digest, media_type, size, artifact_type, annotations)| {
                let annotations = annotations
                    .map(|a| serde_json::from_str(&a))
                    .transpose()
                    .map_err(|e| Error::Corrupt(format!("annotations of {digest}: {e}")))?;
                Ok(Referrer {
                    digest,
                    media_type,
                    size: size as u64,
                    artifact_type,
                    annotations,
                })
            })
            .collect()
    }
}

/// The tags among `holders` (tag, manifest digest) that `guard` keeps, as
/// refusals of removing `needed` from under them.
/// The audit entry of a tag event (`tag.created`, `tag.denied`, …).
fn tag_entry(repo: &str, e: &TagEvent) -> AuditEntry {
    let base = match e.action {
        TagAction::Created => AuditEntry::ok("tag.created", repo),
        TagAction::Moved => AuditEntry::ok("tag.moved", repo),
        TagAction::Repushed => AuditEntry::ok("tag.repushed", repo),
        TagAction::Denied => AuditEntry::denied("tag.denied", repo),
        TagAction::Deleted => AuditEntry::ok("tag.deleted", repo),
        TagAction::Equivalent => AuditEntry::ok("tag.equivalent", repo),
    };
    base.tag(e.tag.as_str())
        .digest(e.digest.as_str())
        .detail(serde_json::json!({ "previous": e.previous_digest, "rule": e.rule }))
}

fn kept(
    guard: &(dyn Fn(&str) -> TagGuard + Sync),
    holders: Vec<(String, String)>,
    needed: &str,
) -> Vec<DeniedTag> {
    holders
        .into_iter()
        .filter_map(|(tag, held)| match guard(&tag) {
            TagGuard::Keep { rule } => Some(DeniedTag {
                needs: (held != needed).then(|| needed.to_string()),
                tag,
                held,
                rule,
            }),
            TagGuard::Allow { .. } => None,
        })
        .collect()
}

fn record((digest, media_type, size): (String, String, i64)) -> ManifestRecord {
    ManifestRecord {
        digest,
        media_type,
        size: size as u64,
    }
}

/// A PostgreSQL array literal of `items` (`{"a","b"}`), for a text parameter
/// cast with `::text[]`; every element quoted, `"` and `\` escaped.
fn pg_text_array<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    pg_array(items.into_iter().map(Some))
}

/// A PostgreSQL array literal of `items`, `None` as SQL NULL (`{"a",NULL}`),
/// for a text parameter cast to an array type (`::text[]`, `::bigint[]`):
/// one parameter however many elements, so one prepared statement serves
/// every length.
fn pg_array<'a>(items: impl IntoIterator<Item = Option<&'a str>>) -> String {
    let mut out = String::from("{");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let Some(item) = item else {
            out.push_str("NULL");
            continue;
        };
        out.push('"');
        for ch in item.chars() {
            if ch == '"' || ch == '\\' {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
    out.push('}');
    out
}

fn page(mut rows: Vec<String>, n: u32) -> Page {
    let more = rows.len() > n as usize;
    rows.truncate(n as usize);
    Page { items: rows, more }
}

/// How a blob link ends the upload session that brought the blob.
struct SessionEnd<'a> {
    id: &'a str,
    /// The size the caller verified, when the session has a row (deleted
    /// only while it still holds that size).
    row_size: Option<i64>,
    /// Opened by id: its end is recorded (once).
    by_id: bool,
}

/// Ends a session opened by id: one row per id, so of two requests ending
/// it exactly one inserts.
const END_UPLOAD: &str = "INSERT INTO ended_uploads (id) VALUES ($1) ON CONFLICT (id) DO NOTHING";

/// Records a stored blob, or marks an existing one as just used: one row comes
/// back when it was inserted or updated, none when garbage collection has
/// claimed the row (`state = 'deleting'`). Parameters: digest, size, now.
const BLOB_INSERT: &str = "INSERT INTO blobs (digest, size, created_at, touched_at, state)
     VALUES ($1, $2, $3, $3, 'live')
     ON CONFLICT (digest) DO UPDATE SET touched_at = $3, touches = blobs.touches + 1
       WHERE blobs.state = 'live'
     RETURNING state";

/// [`BLOB_INSERT`] for a row that must already be there: touches it, and
/// returns no row when it is gone or claimed. Same parameters.
const BLOB_TOUCH: &str = "UPDATE blobs SET touched_at = $3, touches = touches + 1
      WHERE digest = $1 AND size = $2 AND state = 'live'
     RETURNING state";

/// Binds a new tag: inserts nothing when the tag exists or, for an immutable
/// tag ($5 = 1), when its pin names another digest. Parameters: repository id,
/// tag, digest, now, immutable.
const TAG_INSERT: &str =
    "INSERT INTO tags (repository_id, name, manifest_digest, created_at, updated_at)
     SELECT $1, $2, $3, $4, $4
      WHERE $5 = 0
         OR NOT EXISTS (SELECT 1 FROM tag_pins
                         WHERE repository_id = $1 AND tag = $2 AND digest <> $3)
     ON CONFLICT (repository_id, name) DO NOTHING";

/// `INSERT` of a blob row ([`BLOB_INSERT`]), valid in both dialects, on any
/// connection. Returns false when garbage collection has claimed the row: its
/// bytes may be gone, so the caller must roll back and not make them visible.
async fn insert_blob<E: exec::Exec + ?Sized>(
    ex: &mut E,
    digest: &Digest,
    size: u64,
    existing: bool,
) -> std::result::Result<bool, sqlx::Error> {
    let state = ex
        .fetch(
            if existing { BLOB_TOUCH } else { BLOB_INSERT },
            exec::args![digest.as_str(), size as i64, now_ms()],
        )
        .await?;
    Ok(!state.is_empty())
}

/// Guards `one` on [`BLOB_INSERT`] of `digest`: the row is inserted or
/// touched, not claimed by a collection; with `existing`, on [`BLOB_TOUCH`]:
/// the row was there and still is.
fn guard_blob_row(one: &mut exec::OneStatement, digest: &str, size: u64, now: i64, existing: bool) {
    let sql = if existing { BLOB_TOUCH } else { BLOB_INSERT };
    one.guard(vec![(sql.to_string(), args![digest, size as i64, now])], 1);
}

/// The rows of manifest `m` itself: its bytes, its record, and its references
/// to blobs and child manifests. Writes only, held where the connection holds
/// writes ([`exec::Exec::defer`]).
async fn record_manifest<E: exec::Exec + ?Sized>(
    c: &mut E,
    repository_id: i64,
    m: &NewManifest,
    annotations: Option<&str>,
    now: i64,
) -> std::result::Result<(), sqlx::Error> {
    let digest = m.digest.as_str();
    c.defer(
        "INSERT INTO manifest_content (digest, content) VALUES ($1, $2)
         ON CONFLICT (digest) DO NOTHING",
        args![digest, &m.content[..]],
    )
    .await?;
    c.defer(
        "INSERT INTO manifests
           (repository_id, digest, media_type, artifact_type, subject_digest, size, annotations, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (repository_id, digest) DO NOTHING",
        args![
            repository_id,
            digest,
            m.media_type.as_str(),
            m.artifact_type.as_deref(),
            m.subject.as_ref().map(|s| s.as_str()),
            m.size as i64,
            annotations,
            now,
        ],
    )
    .await?;
    for group in m.blobs.chunks(500) {
        let rows: Vec<String> = (0..group.len())
            .map(|i| format!("($1, $2, ${})", i + 3))
            .collect();
        let sql = format!(
            "INSERT INTO manifest_blobs (repository_id, manifest_digest, blob_digest)
             VALUES {} ON CONFLICT DO NOTHING",
            rows.join(", ")
        );
        let mut values = args![repository_id, digest];
        values.extend(group.iter().map(|b| Val::from(b.as_str())));
        c.defer(&sql, values).await?;
    }
    for child in &m.children {
        c.defer(
            "INSERT INTO manifest_children (repository_id, parent_digest, child_digest)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            args![repository_id, digest, child.as_str()],
        )
        .await?;
    }
    Ok(())
}

/// What a push that bound `tags` to `m` leaves besides the bindings: the pins
/// of its immutable tags, the tag history of `events`, and its audit entries.
#[allow(clippy::too_many_arguments)] // the push, its outcome and its origin
async fn record_bindings<E: exec::Exec + ?Sized>(
    c: &mut E,
    repository_id: i64,
    repo: &str,
    m: &NewManifest,
    tags: &[TagBinding],
    events: &[TagEvent],
    origin: &Origin,
    now: i64,
) -> std::result::Result<(), sqlx::Error> {
    let digest = m.digest.as_str();
    for t in tags.iter().filter(|t| t.immutable) {
        c.defer(
            "INSERT INTO tag_pins (repository_id, tag, digest, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (repository_id, tag) DO NOTHING",
            args![repository_id, t.tag.as_str(), digest, now],
        )
        .await?;
    }
    for e in events {
        insert_event(c, repository_id, e, origin.actor.as_str(), now).await?;
    }
    audit::append(c, origin, &push_entries(repo, m, events)).await
}

/// The audit entries of a push of `m` that recorded `events`.
fn push_entries(repo: &str, m: &NewManifest, events: &[TagEvent]) -> Vec<AuditEntry> {
    let mut entries = vec![AuditEntry::ok("manifest.push", repo)
        .digest(m.digest.as_str())
        .detail(serde_json::json!({
            "media_type": m.media_type,
            "artifact_type": m.artifact_type,
            "subject": m.subject.as_ref().map(|s| s.as_str()),
            "size": m.size,
            "tags": events.iter().map(|e| e.tag.as_str()).collect::<Vec<_>>(),
        }))];
    entries.extend(events.iter().map(|e| tag_entry(repo, e)));
    entries
}

/// The common manifest push on PostgreSQL, as one statement
/// ([`exec::OneStatement`]): the manifest's blob row is live, every referenced
/// blob is live and served by the repository (touched unless fresh), every
/// child manifest is present, and every tag is new. Fills `one` and returns
/// the tag events it records; if a guard misses when it runs, the general
/// transaction of [`Metadata::put_manifest`] settles the push.
#[allow(clippy::too_many_arguments)] // the push, its context and its lists
async fn manifest_push_at_once(
    one: &mut exec::OneStatement,
    repository_id: i64,
    repo: &str,
    m: &NewManifest,
    annotations: Option<&str>,
    tags: &[TagBinding],
    origin: &Origin,
    now: i64,
    (blob_list, children_list): (&str, &str),
) -> std::result::Result<Vec<TagEvent>, sqlx::Error> {
    let distinct = |list: &[Digest]| {
        list.iter()
            .map(Digest::as_str)
            .collect::<std::collections::HashSet<_>>()
            .len() as i64
    };
    let digest = m.digest.as_str();
    guard_blob_row(one, digest, m.size, now, false);
    if !m.blobs.is_empty() {
        // Fresh ones as read, the others touched (a row a collection claimed
        // meanwhile is not): together, every blob.
        let served = "b.digest = ANY($1::text[]) AND b.state = 'live'
             AND EXISTS (SELECT 1 FROM repository_blobs rb
                          WHERE rb.repository_id = $2 AND rb.digest = b.digest)";
        let fresh_after = now - m.touch_fresh_ms;
        one.guard(
            vec![
                (
                    format!("SELECT 1 FROM blobs b WHERE {served} AND b.touched_at > $3"),
                    args![blob_list, repository_id, fresh_after],
                ),
                (
                    format!(
                        "UPDATE blobs b SET touched_at = $4, touches = b.touches + 1
                          WHERE {served} AND b.touched_at <= $3 RETURNING 1"
                    ),
                    args![blob_list, repository_id, fresh_after, now],
                ),
            ],
            distinct(&m.blobs),
        );
    }
    if !m.children.is_empty() {
        one.guard(
            vec![(
                "SELECT 1 FROM manifests WHERE repository_id = $2 AND digest = ANY($1::text[])"
                    .to_string(),
                args![children_list, repository_id],
            )],
            distinct(&m.children),
        );
    }
    for t in tags {
        one.guard(
            vec![(
                format!("{TAG_INSERT} RETURNING 1"),
                args![
                    repository_id,
                    t.tag.as_str(),
                    digest,
                    now,
                    i64::from(t.immutable)
                ],
            )],
            1,
        );
    }
    record_manifest(one, repository_id, m, annotations, now).await?;
    let events = created_events(digest, tags);
    record_bindings(one, repository_id, repo, m, tags, &events, origin, now).await?;
    Ok(events)
}

/// The events of binding every one of `tags` anew to `digest`.
fn created_events(digest: &str, tags: &[TagBinding]) -> Vec<TagEvent> {
    tags.iter()
        .map(|t| TagEvent {
            tag: t.tag.to_string(),
            action: TagAction::Created,
            digest: digest.to_string(),
            previous_digest: None,
            rule: t.rule.clone(),
        })
        .collect()
}

async fn insert_event<E: exec::Exec + ?Sized>(
    ex: &mut E,
    repository_id: i64,
    e: &TagEvent,
    actor: &str,
    now: i64,
) -> std::result::Result<(), sqlx::Error> {
    ex.defer(
        "INSERT INTO tag_events (repository_id, tag, action, digest, previous_digest, rule, actor, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        exec::args![
            repository_id,
            e.tag.as_str(),
            e.action.as_str(),
            e.digest.as_str(),
            e.previous_digest.as_deref(),
            e.rule.as_str(),
            actor,
            now,
        ],
    )
    .await?;
    Ok(())
}

async fn link<E: exec::Exec + ?Sized>(
    ex: &mut E,
    repository_id: i64,
    digest: &Digest,
) -> std::result::Result<(), sqlx::Error> {
    ex.defer(
        "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (repository_id, digest) DO NOTHING",
        exec::args![repository_id, digest.as_str(), now_ms()],
    )
    .await?;
    Ok(())
}

// After the macros it uses.
mod accounts;
mod audit;
mod batch;
mod console;
mod exec;
mod gc;
mod group;
mod jobs;
mod liveness;
mod provenance;
mod pulls;
mod retention;

pub use accounts::{Account, StoredCredentials, StoredKey};
pub use audit::{
    chain_hash, AuditEntry, AuditQuery, AuditRecord, BrokenLink, Origin, VerifyReport, GENESIS,
};
pub use console::{DayCount, RepositoryPullTotal, RepositorySummary, TagSummary, Totals, DAY_MS};
pub use jobs::{Job, JobLock};
pub use provenance::{
    MaterialRecord, NewProvenance, ProvenancePage, ProvenanceQuery, ProvenanceRecord,
    StoredProvenance, SOURCE_API, SOURCE_ATTESTATION, SOURCE_LABELS,
};
pub use pulls::{
    ArtifactSort, ArtifactStats, PullCount, RepositoryPulls, RepositoryStats, TagStats,
};
pub use retention::{ArtifactFacts, Hold, Promotion, Protect, ProtectionFacts, RetentionDelete};

#[cfg(test)]
mod tests {
    use super::{pg_array, pg_text_array};

    #[test]
    fn pg_array_writes_none_as_null_and_quotes_the_rest() {
        assert_eq!(
            pg_array([None, Some("NULL"), Some("1")]),
            r#"{NULL,"NULL","1"}"#
        );
    }

    #[test]
    fn pg_text_array_quotes_every_element() {
        assert_eq!(pg_text_array([]), "{}");
        assert_eq!(
            pg_text_array(["sha256:ab", "sha512:cd"]),
            r#"{"sha256:ab","sha512:cd"}"#
        );
        assert_eq!(pg_text_array([r#"a"b\c,{}"#]), r#"{"a\"b\\c,{}"}"#);
    }

    #[test]
    fn a_broken_connection_is_retryable_and_a_failed_statement_is_not() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(super::Error::from(sqlx::Error::Io(reset)).is_unavailable());
        assert!(super::Error::from(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!super::Error::from(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!super::Error::from(sqlx::Error::ColumnNotFound("x".into())).is_unavailable());
    }
}
