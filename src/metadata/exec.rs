//! One way to run a statement on any of the metadata layer's connections.
//!
//! The changes on a push's acknowledgement path run on PostgreSQL through sqlx
//! and on SQLite on the group-commit writer's own thread (see [`super::batch`]),
//! where a statement is a plain function call instead of a round trip to
//! sqlx's SQLite worker thread. [`Exec`] lets such a change be written once, in
//! the SQL both dialects share, and run on either; the sqlx connections
//! implement it too, so helpers such as [`super::audit::append`] serve every
//! caller.

use std::borrow::Cow;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use sqlx::{Row as _, TypeInfo as _, ValueRef as _};

/// A statement parameter or a column of a result row.
///
/// `Null` binds as a NULL of type text on PostgreSQL (which types every
/// parameter): every nullable parameter of this layer is a text column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Val {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Val {
    /// The value as an integer, if it is one.
    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_string())
    }
}

impl From<&String> for Val {
    fn from(v: &String) -> Val {
        Val::Text(v.clone())
    }
}

impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}

impl From<&[u8]> for Val {
    fn from(v: &[u8]) -> Val {
        Val::Bytes(v.to_vec())
    }
}

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map_or(Val::Null, Into::into)
    }
}

/// Statement parameters, `$1` first: `args![repository_id, digest.as_str()]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        vec![$($crate::metadata::exec::Val::from($v)),*]
    };
}
pub(crate) use args;

/// What a change asks of its transaction once it has run: keep its writes or
/// undo them. Either way the caller gets the value.
#[derive(Debug)]
pub(crate) enum Change<T> {
    Commit(T),
    Rollback(T),
}

/// Runs statements written in the SQL both backends share (`$n` parameters).
pub(crate) trait Exec: Send {
    /// Runs a statement that returns no rows; returns the rows it changed.
    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Val>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;

    /// Runs a statement and returns every row it produced.
    fn fetch<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Val>,
    ) -> BoxFuture<'a, Result<Vec<Vec<Val>>, sqlx::Error>>;

    /// Runs a write whose result the change does not read (an insert whose
    /// row count nobody checks), at the latest before the change commits.
    /// Where every statement is a round trip ([`PgChange`]), the writes held
    /// back this way travel together; elsewhere it runs at once. A later
    /// statement of the change sees its effect either way.
    fn defer<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Val>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move { self.execute(sql, args).await.map(|_| ()) }.boxed()
    }

    /// The first column of the first row, as text; `None` without a row.
    fn fetch_text<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Val>,
    ) -> BoxFuture<'a, Result<Option<String>, sqlx::Error>> {
        async move {
            let rows = self.fetch(sql, args).await?;
            match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
                None => Ok(None),
                Some(Val::Text(s)) => Ok(Some(s)),
                Some(other) => Err(sqlx::Error::Decode(
                    format!("expected text, found {other:?}").into(),
                )),
            }
        }
        .boxed()
    }
}

/// `sql` with `args` bound in order, for a sqlx backend.
fn bound<'q, DB>(
    sql: &'q str,
    args: Vec<Val>,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::query::<DB>(sql);
    for a in args {
        q = match a {
            Val::Null => q.bind(None::<String>),
            Val::Int(i) => q.bind(i),
            Val::Text(s) => q.bind(s),
            Val::Bytes(b) => q.bind(b),
        };
    }
    q
}

/// Implements [`Exec`] for a sqlx connection type.
macro_rules! sqlx_exec {
    ($conn:ty, $db:ty) => {
        impl Exec for $conn {
            fn execute<'a>(
                &'a mut self,
                sql: &'a str,
                args: Vec<Val>,
            ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
                async move {
                    let q = bound::<$db>(sql, args);
                    Ok(q.execute(&mut *self).await?.rows_affected())
                }
                .boxed()
            }

            fn fetch<'a>(
                &'a mut self,
                sql: &'a str,
                args: Vec<Val>,
            ) -> BoxFuture<'a, Result<Vec<Vec<Val>>, sqlx::Error>> {
                async move {
                    let q = bound::<$db>(sql, args);
                    let rows = q.fetch_all(&mut *self).await?;
                    let mut out = Vec::with_capacity(rows.len());
                    for row in &rows {
                        let mut vals = Vec::with_capacity(row.columns().len());
                        for i in 0..row.columns().len() {
                            let (null, ty) = {
                                let raw = row.try_get_raw(i)?;
                                (raw.is_null(), raw.type_info().name().to_ascii_uppercase())
                            };
                            vals.push(if null {
                                Val::Null
                            } else {
                                match ty.as_str() {
                                    "INT8" | "BIGINT" | "INTEGER" | "INT" => {
                                        Val::Int(row.try_get::<i64, _>(i)?)
                                    }
                                    "INT4" => Val::Int(i64::from(row.try_get::<i32, _>(i)?)),
                                    "INT2" => Val::Int(i64::from(row.try_get::<i16, _>(i)?)),
                                    "BOOL" | "BOOLEAN" => {
                                        Val::Int(i64::from(row.try_get::<bool, _>(i)?))
                                    }
                                    "BYTEA" | "BLOB" => Val::Bytes(row.try_get::<Vec<u8>, _>(i)?),
                                    _ => Val::Text(row.try_get::<String, _>(i)?),
                                }
                            });
                        }
                        out.push(vals);
                    }
                    Ok(out)
                }
                .boxed()
            }
        }
    };
}

sqlx_exec!(sqlx::SqliteConnection, sqlx::Sqlite);
sqlx_exec!(sqlx::PgConnection, sqlx::Postgres);

/// Most parameters one combined statement of [`PgChange`] takes; PostgreSQL
/// accepts 65,535.
const MAX_COMBINED_ARGS: usize = 30_000;

/// A change's view of its PostgreSQL transaction: each statement is a round
/// trip to the server, and each costs the server a message, a portal and an
/// executor start besides its work. Writes a change does not read back
/// ([`Exec::defer`]) are held until the next statement that needs the
/// database's state, or until commit, and then sent as one statement of
/// data-modifying `WITH` clauses (`WITH q0 AS (INSERT …), q1 AS (INSERT …)
/// SELECT 1`): the six inserts of a manifest push under one tag take two round
/// trips instead of six.
///
/// Held writes always run before the statement that follows them, so that
/// statement sees their effect, as it would without the holding. Within one
/// combined statement the writes see one snapshot and not each other's rows:
/// only independent inserts are deferred (foreign keys between them are
/// checked at the end of the statement, after all of them).
pub(crate) struct PgChange<'c> {
    conn: &'c mut sqlx::PgConnection,
    held: Vec<(String, Vec<Val>)>,
}

impl<'c> PgChange<'c> {
    pub(crate) fn new(conn: &'c mut sqlx::PgConnection) -> PgChange<'c> {
        PgChange {
            conn,
            held: Vec::new(),
        }
    }

    /// Runs `statement` once the held writes have run.
    fn after_held<'a, T: Send + 'a>(
        &'a mut self,
        statement: impl FnOnce(&'a mut sqlx::PgConnection) -> BoxFuture<'a, Result<T, sqlx::Error>>
            + Send
            + 'a,
    ) -> BoxFuture<'a, Result<T, sqlx::Error>> {
        async move {
            self.flush().await?;
            statement(&mut *self.conn).await
        }
        .boxed()
    }

    /// Runs the held writes, in one statement.
    pub(crate) async fn flush(&mut self) -> Result<(), sqlx::Error> {
        match self.held.len() {
            0 => Ok(()),
            1 => {
                let (sql, args) = self.held.remove(0);
                Exec::execute(&mut *self.conn, &sql, args).await.map(|_| ())
            }
            _ => {
                let (sql, args) = combine(std::mem::take(&mut self.held));
                Exec::execute(&mut *self.conn, &sql, args).await.map(|_| ())
            }
        }
    }
}

impl Exec for PgChange<'_> {
    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Val>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        self.after_held(move |c| Exec::execute(c, sql, args))
    }

    fn fetch<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Val>,
    ) -> BoxFuture<'a, Result<Vec<Vec<Val>>, sqlx::Error>> {
        self.after_held(move |c| Exec::fetch(c, sql, args))
    }

    fn defer<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Val>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        async move {
            let held: usize = self.held.iter().map(|(_, a)| a.len()).sum();
            if held + args.len() > MAX_COMBINED_ARGS {
                self.flush().await?;
            }
            self.held.push((sql.to_string(), args));
            Ok(())
        }
        .boxed()
    }
}

/// One statement running every write of `held`, in order, with the
/// parameters of each renumbered after those of the ones before it.
fn combine(held: Vec<(String, Vec<Val>)>) -> (String, Vec<Val>) {
    let (mut sql, args) = with_clauses(held);
    sql.push_str(" SELECT 1");
    (sql, args)
}

/// `WITH q0 AS (…), q1 AS (…)` of `parts`, in order, each part's parameters
/// renumbered after those of the parts before it.
fn with_clauses(parts: Vec<(String, Vec<Val>)>) -> (String, Vec<Val>) {
    let mut sql = String::from("WITH ");
    let mut args = Vec::new();
    for (i, (s, a)) in parts.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("q{i} AS ("));
        sql.push_str(&shift_params(&s, args.len()));
        sql.push(')');
        args.extend(a);
    }
    (sql, args)
}

/// The SQLSTATE of `cairn_guard_miss()` (PostgreSQL migration 9), which a
/// [`OneStatement`] raises when a guard did not hold.
pub(crate) const GUARD_MISS: &str = "CA001";

/// A change sent to PostgreSQL as one statement that commits on its own, for
/// the common case of a write path: one round trip and no `BEGIN`/`COMMIT`,
/// where the general path takes six or seven. Each round trip costs both
/// processes a wake-up and the server a message, a portal and an executor
/// start; on a push they cost more than the rows.
///
/// Guards are the reads and conditional writes the common case depends on
/// (`INSERT … RETURNING`, `SELECT`), each with the number of rows it must
/// return; writes ([`Exec::defer`]) go with them. If any guard returns another
/// count, the statement raises `cairn_guard_miss()` and PostgreSQL rolls the
/// whole of it back: [`OneStatement::run`] returns false and the caller runs
/// its general transaction, which settles the uncommon case. All parts see
/// one snapshot, as with [`PgChange`]'s held writes: a guard reads the rows
/// as they were before the statement, and a conditional write (`ON CONFLICT`,
/// `UPDATE … WHERE`) re-checks the row it changes, waiting for a concurrent
/// writer of that row to finish.
#[derive(Default)]
pub(crate) struct OneStatement {
    parts: Vec<(String, Vec<Val>)>,
    /// The parts of each guard, by index, and the rows they must return in all.
    guards: Vec<(Vec<usize>, i64)>,
}

impl OneStatement {
    /// Adds a guard of one or more parts: the statement goes ahead only if
    /// they return `rows` rows in all.
    pub(crate) fn guard(&mut self, parts: Vec<(String, Vec<Val>)>, rows: i64) {
        let first = self.parts.len();
        self.guards
            .push(((first..first + parts.len()).collect(), rows));
        self.parts.extend(parts);
    }

    /// Runs the statement: true if every guard held and it committed, false if
    /// it changed nothing because one did not (or because it would take more
    /// parameters than one statement should).
    pub(crate) async fn run(self, conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
        let held: usize = self.parts.iter().map(|(_, a)| a.len()).sum();
        if held + self.guards.len() > MAX_COMBINED_ARGS {
            return Ok(false);
        }
        let (sql, args) = self.into_statement();
        match Exec::execute(conn, &sql, args).await {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(GUARD_MISS) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn into_statement(self) -> (String, Vec<Val>) {
        let (mut sql, mut args) = with_clauses(self.parts);
        let mut checks = Vec::with_capacity(self.guards.len());
        for (parts, rows) in self.guards {
            let counted: Vec<String> = parts
                .iter()
                .map(|i| format!("(SELECT count(*) FROM q{i})"))
                .collect();
            args.push(Val::Int(rows));
            checks.push(format!("{} = ${}", counted.join(" + "), args.len()));
        }
        if checks.is_empty() {
            sql.push_str(" SELECT 1");
        } else {
            sql.push_str(&format!(
                " SELECT CASE WHEN {} THEN 1 ELSE cairn_guard_miss() END",
                checks.join(" AND ")
            ));
        }
        (sql, args)
    }
}

impl Exec for OneStatement {
    fn execute<'a>(
        &'a mut self,
        _sql: &'a str,
        _args: Vec<Val>,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        async { Err(inside_one_statement()) }.boxed()
    }

    fn fetch<'a>(
        &'a mut self,
        _sql: &'a str,
        _args: Vec<Val>,
    ) -> BoxFuture<'a, Result<Vec<Vec<Val>>, sqlx::Error>> {
        async { Err(inside_one_statement()) }.boxed()
    }

    fn defer<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Val>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        self.parts.push((sql.to_string(), args));
        async { Ok(()) }.boxed()
    }
}

/// A helper asked a [`OneStatement`] for a result: it has none before it runs.
fn inside_one_statement() -> sqlx::Error {
    sqlx::Error::Protocol("a read inside a one-statement change (a guard is needed)".into())
}

/// `sql` with every parameter `$n` outside string literals and quoted names
/// written as `$(n + by)`.
fn shift_params(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    // A doubled quote stays inside; this toggles out and the
                    // next one back in.
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    n.push(d);
                    chars.next();
                }
                match n.parse::<usize>() {
                    Ok(n) => out.push_str(&format!("${}", n + by)),
                    Err(_) => {
                        out.push('$');
                        out.push_str(&n);
                    }
                }
            }
            None => out.push(c),
        }
    }
    out
}

/// A failure reported by SQLite on the group-commit writer's connection, in the
/// shape sqlx reports its own: [`super::Error::is_unavailable`] reads the code.
#[derive(Debug, thiserror::Error)]
#[error("{message} (SQLite code {code})")]
pub(crate) struct SqliteFailure {
    /// The extended result code, as sqlx's SQLite driver reports it.
    code: i32,
    message: String,
}

impl sqlx::error::DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use sqlx::error::ErrorKind;
        match self.code {
            // SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY
            2067 | 1555 => ErrorKind::UniqueViolation,
            787 => ErrorKind::ForeignKeyViolation,
            1299 => ErrorKind::NotNullViolation,
            275 => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// A rusqlite error as the sqlx error the rest of the layer classifies.
pub(crate) fn from_rusqlite(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(f, message) => {
            sqlx::Error::Database(Box::new(SqliteFailure {
                code: f.extended_code,
                message: message.unwrap_or_else(|| f.to_string()),
            }))
        }
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_shifted_outside_literals_only() {
        assert_eq!(
            shift_params("INSERT INTO t (a, b) VALUES ($1, $2) -- $x", 3),
            "INSERT INTO t (a, b) VALUES ($4, $5) -- $x"
        );
        assert_eq!(
            shift_params(
                "SELECT '$1', \"$2\", 'it''s $3', $10 WHERE state = 'live'",
                2
            ),
            "SELECT '$1', \"$2\", 'it''s $3', $12 WHERE state = 'live'"
        );
        assert_eq!(shift_params("VALUES ($1, $1)", 0), "VALUES ($1, $1)");
    }

    #[test]
    fn held_writes_combine_into_one_statement_in_order() {
        let (sql, args) = combine(vec![
            ("INSERT INTO a (x) VALUES ($1)".into(), args![1_i64]),
            (
                "INSERT INTO b (y, z) VALUES ($2, $1)".into(),
                args!["y", "z"],
            ),
        ]);
        assert_eq!(
            sql,
            "WITH q0 AS (INSERT INTO a (x) VALUES ($1)), q1 AS (INSERT INTO b (y, z) VALUES ($3, $2)) SELECT 1"
        );
        assert_eq!(args, args![1_i64, "y", "z"]);
    }

    #[test]
    fn guards_are_counted_in_the_final_select() {
        let mut one = OneStatement::default();
        one.guard(
            vec![(
                "DELETE FROM uploads WHERE id = $1 RETURNING 1".into(),
                args!["u"],
            )],
            1,
        );
        one.guard(
            vec![
                ("SELECT 1 FROM blobs WHERE d = $1".into(), args!["a"]),
                ("UPDATE blobs SET t = $1 RETURNING 1".into(), args![5_i64]),
            ],
            2,
        );
        let mut w = one;
        futures::executor::block_on(w.defer("INSERT INTO x (y) VALUES ($1)", args!["y"]))
            .expect("held");
        let (sql, args) = w.into_statement();
        assert_eq!(
            sql,
            "WITH q0 AS (DELETE FROM uploads WHERE id = $1 RETURNING 1), \
             q1 AS (SELECT 1 FROM blobs WHERE d = $2), q2 AS (UPDATE blobs SET t = $3 RETURNING 1), \
             q3 AS (INSERT INTO x (y) VALUES ($4)) \
             SELECT CASE WHEN (SELECT count(*) FROM q0) = $5 \
             AND (SELECT count(*) FROM q1) + (SELECT count(*) FROM q2) = $6 \
             THEN 1 ELSE cairn_guard_miss() END"
        );
        assert_eq!(args, args!["u", "a", 5_i64, "y", 1_i64, 2_i64]);
    }

    proptest::proptest! {
        /// Every parameter moves by the offset and nothing else changes: the
        /// text between parameters is kept, whatever it holds.
        #[test]
        fn shifting_moves_every_parameter(
            parts in proptest::collection::vec(("[a-z ,()=]{0,8}", 1usize..200), 0..12),
            by in 0usize..1000,
        ) {
            let sql: String = parts.iter().map(|(t, n)| format!("{t}${n}")).collect();
            let want: String = parts.iter().map(|(t, n)| format!("{t}${}", n + by)).collect();
            proptest::prop_assert_eq!(shift_params(&sql, by), want);
        }
    }

    #[test]
    fn busy_is_reported_with_the_code_the_layer_retries_on() {
        let e = from_rusqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(5),
            Some("database is locked".into()),
        ));
        let err = crate::metadata::Error::Database(e);
        assert!(err.is_unavailable(), "{err}");
    }

    #[test]
    fn a_unique_violation_is_classified() {
        let e = from_rusqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(2067),
            None,
        ));
        match e {
            sqlx::Error::Database(db) => assert!(db.is_unique_violation()),
            other => panic!("{other:?}"),
        }
    }
}
