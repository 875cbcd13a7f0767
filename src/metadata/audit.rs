//! The audit trail: one append-only, hash-chained log of everything that changed
//! the registry or was refused.
//!
//! Each row's `hash` is SHA-256 over its own fields and the previous row's hash,
//! ids run 1, 2, 3… without gaps, and `audit_head` keeps the last id and hash.
//! Altering, removing or inserting a row anywhere (the tail included) therefore
//! breaks the chain at that row, which [`Metadata::audit_verify`] reports. The
//! database refuses `UPDATE`/`DELETE` on the table (triggers); the chain is what
//! catches someone who drops those first.
//!
//! Entries are appended inside the transaction of the change they describe, so
//! the trail never misses a committed change nor records one that rolled back.
//! They are appended as *pending* rows, which take no shared lock; the sealer
//! ([`Metadata::audit_seal`], run by the server shortly after each change and by
//! every reader of the trail) chains them in batches. Chaining inside each
//! change's transaction made every writer wait for the head row.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::exec::{args, Change, Val};
use super::{now_ms, Backend, Metadata, Result};

/// Who asked for a change, and through which request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The authenticated account (`anonymous` without credentials); the client
    /// address while the registry is open (no accounts); `cairn:<task>` for the
    /// registry's own jobs (retention, GC).
    pub actor: String,
    pub client: Option<String>,
    pub request_id: Option<String>,
    pub user_agent: Option<String>,
}

impl Origin {
    /// A change made by the registry itself (a scheduled job or a CLI command).
    pub fn system(task: &str) -> Origin {
        Origin {
            actor: format!("cairn:{task}"),
            ..Origin::default()
        }
    }
}

/// One thing that happened, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// `blob.push`, `manifest.push`, `tag.created`, `tag.denied`, … (see ARCHITECTURE.md).
    pub action: &'static str,
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// `ok` or `denied`.
    pub result: &'static str,
    /// Action-specific facts (sizes, rules, reasons), as JSON.
    pub detail: Option<serde_json::Value>,
}

impl AuditEntry {
    pub fn ok(action: &'static str, repository: &str) -> AuditEntry {
        AuditEntry {
            action,
            repository: Some(repository.to_string()),
            tag: None,
            digest: None,
            result: "ok",
            detail: None,
        }
    }

    pub fn denied(action: &'static str, repository: &str) -> AuditEntry {
        AuditEntry {
            result: "denied",
            ..AuditEntry::ok(action, repository)
        }
    }

    pub fn global(action: &'static str) -> AuditEntry {
        AuditEntry {
            repository: None,
            ..AuditEntry::ok(action, "")
        }
    }

    pub fn tag(mut self, tag: impl Into<String>) -> AuditEntry {
        self.tag = Some(tag.into());
        self
    }

    pub fn digest(mut self, digest: impl Into<String>) -> AuditEntry {
        self.digest = Some(digest.into());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> AuditEntry {
        self.detail = Some(detail);
        self
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub actor: String,
    pub client: Option<String>,
    pub action: String,
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub result: String,
    /// JSON text exactly as hashed.
    pub detail: Option<String>,
    pub request_id: Option<String>,
    pub user_agent: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of the chain before its first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 (hex) of a record's fields and the previous hash. The fields are
/// hashed as one JSON array, so no two different records share an encoding.
pub fn chain_hash(r: &AuditRecord) -> String {
    let fields = serde_json::json!([
        r.id,
        r.at,
        r.actor,
        r.client,
        r.action,
        r.repository,
        r.tag,
        r.digest,
        r.result,
        r.detail,
        r.request_id,
        r.user_agent,
        r.prev_hash,
    ]);
    hex::encode(Sha256::digest(fields.to_string().as_bytes()))
}

/// Filters of an audit query; all optional and combined with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub repository: Option<String>,
    pub digest: Option<String>,
    pub tag: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
    /// Cursor: only ids above (ascending) or below (descending) this one.
    pub cursor: Option<i64>,
    pub ascending: bool,
    pub limit: u32,
}

/// What [`Metadata::audit_verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries checked.
    pub checked: u64,
    /// The first entry whose link does not hold, and why; `None`: the chain holds.
    pub broken: Option<BrokenLink>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    pub id: i64,
    pub reason: String,
}

/// `($1, $2), ($3, $4)` for `rows` rows of `fields` parameters each.
fn row_placeholders(rows: usize, fields: usize) -> String {
    let mut sql = String::new();
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for f in 0..fields {
            if f > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", i * fields + f + 1));
        }
        sql.push(')');
    }
    sql
}

/// Appends `entries` inside the caller's transaction, as pending entries: they
/// commit or roll back with the change they record, and [`Metadata::audit_seal`]
/// chains them later. Takes no lock that other writers wait for.
pub(super) async fn append<E: super::exec::Exec + ?Sized>(
    conn: &mut E,
    origin: &Origin,
    entries: &[AuditEntry],
) -> std::result::Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    const FIELDS: usize = 11;
    let sql = format!(
        "INSERT INTO audit_pending (at, actor, client, action, repository, tag, digest, result,
                                    detail, request_id, user_agent) VALUES {}",
        row_placeholders(entries.len(), FIELDS)
    );
    let at = now_ms();
    let mut values = Vec::with_capacity(entries.len() * FIELDS);
    for e in entries {
        values.extend(super::exec::args![
            at,
            origin.actor.as_str(),
            origin.client.as_deref(),
            e.action,
            e.repository.as_deref(),
            e.tag.as_deref(),
            e.digest.as_deref(),
            e.result,
            e.detail.as_ref().map(|d| d.to_string()),
            origin.request_id.as_deref(),
            origin.user_agent.as_deref(),
        ]);
    }
    conn.defer(&sql, values).await?;
    Ok(())
}

/// A pending entry as stored, before it is chained.
struct Pending {
    seq: i64,
    at: i64,
    actor: String,
    client: Option<String>,
    action: String,
    repository: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    result: String,
    detail: Option<String>,
    request_id: Option<String>,
    user_agent: Option<String>,
}

impl Pending {
    /// Reads the columns of the sealer's `SELECT`, in its order.
    fn from_row(row: Vec<Val>) -> std::result::Result<Pending, sqlx::Error> {
        fn text(v: Val) -> std::result::Result<String, sqlx::Error> {
            match v {
                Val::Text(s) => Ok(s),
                other => Err(sqlx::Error::Decode(
                    format!("audit entry: expected text, found {other:?}").into(),
                )),
            }
        }
        fn maybe(v: Val) -> std::result::Result<Option<String>, sqlx::Error> {
            match v {
                Val::Null => Ok(None),
                v => text(v).map(Some),
            }
        }
        fn int(v: Val) -> std::result::Result<i64, sqlx::Error> {
            v.as_int().ok_or_else(|| {
                sqlx::Error::Decode(format!("audit entry: expected an integer, found {v:?}").into())
            })
        }
        let Ok::<[Val; 12], _>(
            [seq, at, actor, client, action, repository, tag, digest, result, detail, request_id, user_agent],
        ) = row.try_into()
        else {
            return Err(sqlx::Error::Decode(
                "audit entry: wrong column count".into(),
            ));
        };
        Ok(Pending {
            seq: int(seq)?,
            at: int(at)?,
            actor: text(actor)?,
            client: maybe(client)?,
            action: text(action)?,
            repository: maybe(repository)?,
            tag: maybe(tag)?,
            digest: maybe(digest)?,
            result: text(result)?,
            detail: maybe(detail)?,
            request_id: maybe(request_id)?,
            user_agent: maybe(user_agent)?,
        })
    }
}

/// Pending entries chained per sealing transaction.
const SEAL_BATCH: i64 = 500;

/// Rows per `INSERT` when sealing (14 parameters each, far below either
/// backend's limit on parameters).
const SEAL_ROWS_PER_INSERT: usize = 50;

/// Inserts chained entries into `audit_log` with one statement.
async fn insert_sealed<E: super::exec::Exec + ?Sized>(
    c: &mut E,
    group: &[AuditRecord],
) -> std::result::Result<(), sqlx::Error> {
    const FIELDS: usize = 14;
    let sql = format!(
        "INSERT INTO audit_log (id, at, actor, client, action, repository, tag, digest, result,
                                detail, request_id, user_agent, prev_hash, hash) VALUES {}",
        row_placeholders(group.len(), FIELDS)
    );
    let mut values = Vec::with_capacity(group.len() * FIELDS);
    for rec in group {
        values.extend(super::exec::args![
            rec.id,
            rec.at,
            rec.actor.as_str(),
            rec.client.as_deref(),
            rec.action.as_str(),
            rec.repository.as_deref(),
            rec.tag.as_deref(),
            rec.digest.as_deref(),
            rec.result.as_str(),
            rec.detail.as_deref(),
            rec.request_id.as_deref(),
            rec.user_agent.as_deref(),
            rec.prev_hash.as_str(),
            rec.hash.as_str(),
        ]);
    }
    c.execute(&sql, values).await?;
    Ok(())
}

const COLUMNS: &str = "id, at, actor, client, action, repository, tag, digest, result, detail,
                       request_id, user_agent, prev_hash, hash";

impl Metadata {
    /// Chains every committed pending entry onto the log: in one transaction per
    /// batch, under the head's lock (a row lock on PostgreSQL, the writer on
    /// SQLite), so that replicas sealing at once take turns. Entries are chained
    /// in the order their rows were inserted, as far as they are committed.
    /// Returns how many entries were sealed.
    pub async fn audit_seal(&self) -> Result<u64> {
        let mut total = 0u64;
        let postgres = self.backend_name() == "postgres";
        loop {
            // On SQLite a seal is one more change of the writer's next batch:
            // hundreds of inserts are function calls there, so it holds the
            // write lock for milliseconds, not for a round trip per row.
            let sealed = on_batched_write!(self, "audit_seal", |c| {
                if postgres {
                    // The head may be held by a sealer whose process died and
                    // whose connection the server has not reaped yet: give up
                    // rather than wait (that sealer's work is redone later).
                    c.execute("SET LOCAL lock_timeout = '2s'", Vec::new())
                        .await?;
                }
                let head = c
                    .fetch(
                        "UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash",
                        Vec::new(),
                    )
                    .await;
                let (last, mut prev) = match head.as_deref() {
                    Ok([row]) => match row.as_slice() {
                        [Val::Int(seq), Val::Text(hash)] => (*seq, hash.clone()),
                        other => {
                            return Err(sqlx::Error::Decode(
                                format!("audit head: {other:?}").into(),
                            ))
                        }
                    },
                    Ok(_) => return Err(sqlx::Error::RowNotFound),
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                        tracing::warn!("audit head busy for 2 s; entries stay pending");
                        return Ok(Change::Rollback(0));
                    }
                    Err(_) => return head.map(|_| Change::Rollback(0)),
                };
                let rows = c
                    .fetch(
                        "SELECT seq, at, actor, client, action, repository, tag, digest, result,
                                detail, request_id, user_agent
                           FROM audit_pending ORDER BY seq LIMIT $1",
                        args![SEAL_BATCH],
                    )
                    .await?;
                let n = rows.len() as i64;
                if n == 0 {
                    return Ok(Change::Rollback(0));
                }
                let mut seqs = Vec::with_capacity(rows.len());
                let mut sealed = Vec::with_capacity(rows.len());
                for (i, row) in rows.into_iter().enumerate() {
                    let r = Pending::from_row(row)?;
                    seqs.push(r.seq);
                    let mut rec = AuditRecord {
                        id: last + 1 + i as i64,
                        at: r.at,
                        actor: r.actor,
                        client: r.client,
                        action: r.action,
                        repository: r.repository,
                        tag: r.tag,
                        digest: r.digest,
                        result: r.result,
                        detail: r.detail,
                        request_id: r.request_id,
                        user_agent: r.user_agent,
                        prev_hash: prev,
                        hash: String::new(),
                    };
                    rec.hash = chain_hash(&rec);
                    prev = rec.hash.clone();
                    sealed.push(rec);
                }
                // Many rows per statement: on PostgreSQL each statement is a
                // round trip and a share of the server's CPU, and a busy
                // registry seals an entry or two per push.
                for group in sealed.chunks(SEAL_ROWS_PER_INSERT) {
                    insert_sealed(c, group).await?;
                }
                // Exactly the rows chained: on PostgreSQL a row with a lower
                // seq may still be uncommitted, and is sealed next time.
                let sql = format!(
                    "DELETE FROM audit_pending WHERE seq IN {}",
                    row_placeholders(1, seqs.len())
                );
                c.execute(&sql, seqs.into_iter().map(Val::Int).collect())
                    .await?;
                c.execute(
                    "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
                    args![last + n, prev.as_str()],
                )
                .await?;
                Ok::<_, sqlx::Error>(Change::Commit(n))
            })?;
            total += sealed as u64;
            if sealed < SEAL_BATCH {
                return Ok(total);
            }
        }
    }

    /// Whether any entry waits to be sealed (a cheap read, for the sealer).
    pub async fn audit_pending(&self) -> Result<bool> {
        let any = on_read!(self, "audit_pending", |p| {
            sqlx::query_scalar::<_, i64>("SELECT seq FROM audit_pending LIMIT 1")
                .fetch_optional(p)
                .await
        })?;
        Ok(any.is_some())
    }

    /// Appends entries in a transaction of their own (changes that have no
    /// transaction to share, e.g. a refused push that rolled back).
    pub async fn audit_append(&self, origin: &Origin, entries: &[AuditEntry]) -> Result<()> {
        let (origin, entries) = (origin.clone(), entries.to_vec());
        on_batched_write!(self, "audit_append", single_statement, |c| {
            append(c, &origin, &entries).await?;
            Ok::<_, sqlx::Error>(super::exec::Change::Commit(()))
        })?;
        Ok(())
    }

    /// Entries matching `q`, in id order (ascending or descending); seals the
    /// pending entries first, so every committed change is found.
    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        self.audit_seal().await?;
        self.audit_sealed(q).await
    }

    /// Entries matching `q` among those already sealed.
    async fn audit_sealed(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE 1 = 1");
        let mut n = 0;
        let mut param = |sql: &mut String, clause: &str| {
            n += 1;
            sql.push_str(&clause.replace('?', &format!("${n}")));
        };
        let texts = [
            (" AND repository = ?", &q.repository),
            (" AND digest = ?", &q.digest),
            (" AND tag = ?", &q.tag),
            (" AND actor = ?", &q.actor),
            (" AND action = ?", &q.action),
        ];
        for (clause, v) in &texts {
            if v.is_some() {
                param(&mut sql, clause);
            }
        }
        let cursor_clause = if q.ascending {
            " AND id > ?"
        } else {
            " AND id < ?"
        };
        let numbers = [
            (" AND at >= ?", q.since),
            (" AND at < ?", q.until),
            (cursor_clause, q.cursor),
        ];
        for (clause, v) in &numbers {
            if v.is_some() {
                param(&mut sql, clause);
            }
        }
        sql.push_str(if q.ascending {
            " ORDER BY id ASC"
        } else {
            " ORDER BY id DESC"
        });
        param(&mut sql, " LIMIT ?");
        macro_rules! run {
            ($p:expr) => {{
                let mut query = sqlx::query_as::<_, AuditRecord>(&sql);
                for (_, v) in &texts {
                    if let Some(v) = v {
                        query = query.bind(v.as_str());
                    }
                }
                for (_, v) in &numbers {
                    if let Some(v) = v {
                        query = query.bind(*v);
                    }
                }
                query.bind(i64::from(q.limit)).fetch_all($p).await
            }};
        }
        let rows = on_read!(self, "audit_query", |p| run!(p))?;
        Ok(rows)
    }

    /// Recomputes the whole chain in id order, `batch` rows per query, calling
    /// `progress(checked, total)` as it goes. Stops at the first broken link.
    pub async fn audit_verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
        self.audit_seal().await?;
        let (seq, head_hash) = on_read!(self, "audit_verify", |p| {
            sqlx::query_as::<_, (i64, String)>("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_one(p)
                .await
        })?;
        let total = seq.max(0) as u64;
        let mut checked = 0u64;
        let mut expected_id = 1i64;
        let mut prev = GENESIS.to_string();
        let broken = |id: i64, reason: String, checked: u64| VerifyReport {
            checked,
            broken: Some(BrokenLink { id, reason }),
        };
        loop {
            let q = AuditQuery {
                cursor: Some(expected_id - 1),
                ascending: true,
                limit: 1000,
                ..AuditQuery::default()
            };
            let rows = self.audit_sealed(&q).await?;
            let done = rows.len() < 1000;
            for r in rows {
                if r.id != expected_id {
                    return Ok(broken(
                        expected_id,
                        format!("entry {expected_id} is missing (next entry is {})", r.id),
                        checked,
                    ));
                }
                if r.prev_hash != prev {
                    return Ok(broken(
                        r.id,
                        "prev_hash does not match the previous entry's hash".into(),
                        checked,
                    ));
                }
                if chain_hash(&r) != r.hash {
                    return Ok(broken(
                        r.id,
                        "hash does not match the entry's fields (the entry was altered)".into(),
                        checked,
                    ));
                }
                prev = r.hash;
                checked += 1;
                expected_id += 1;
            }
            progress(checked, total);
            if done {
                break;
            }
        }
        let last = expected_id - 1;
        if last != seq {
            return Ok(broken(
                last + 1,
                format!(
                    "the chain ends at entry {last} but {seq} were written (entries were removed)"
                ),
                checked,
            ));
        }
        if prev != head_hash {
            return Ok(broken(
                last,
                "the last entry's hash does not match the recorded head".into(),
                checked,
            ));
        }
        Ok(VerifyReport {
            checked,
            broken: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::row_placeholders;

    #[test]
    fn placeholders_number_rows_then_fields() {
        assert_eq!(row_placeholders(1, 1), "($1)");
        assert_eq!(row_placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }
}
