//! Promotions, legal holds, stored retention plans, the facts a retention plan
//! is made from, and the deletions retention and the API perform under the
//! protections.
//!
//! Every deletion path re-reads the protections (promotion history and active
//! holds) inside its own transaction, after locking the manifest row it
//! deletes; promotions and holds lock the same row. So a promotion or hold that
//! commits first is always seen, and one that comes second finds the manifest
//! gone and fails: nothing protected is ever deleted by a race.

use super::BeginWrite as _;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::audit::{self, AuditEntry, Origin};
use super::{insert_event, now_ms, Backend, Metadata, Result, TagAction, TagEvent};
use crate::domain::RepoName;

/// One recorded promotion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Promotion {
    pub id: i64,
    pub environment: String,
    pub digest: String,
    pub tag: Option<String>,
    pub actor: String,
    /// Unix milliseconds.
    pub at: i64,
}

/// One legal hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Hold {
    pub id: i64,
    pub repository: String,
    pub digest: String,
    pub reason: String,
    pub actor: String,
    pub created_at: i64,
    pub released_at: Option<i64>,
    pub released_by: Option<String>,
}

/// What protects artifacts of one repository, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtectionFacts {
    /// Environment -> promoted digests, newest first.
    pub promotions: BTreeMap<String, Vec<String>>,
    /// Digest -> reasons of its active holds.
    pub holds: BTreeMap<String, Vec<String>>,
}

/// Turns stored facts into protected digests with their reasons (the caller's
/// policy: rollback depth K, labels). Expansion to what those reference is done
/// here, in the database.
pub type Protect<'a> = &'a (dyn Fn(&ProtectionFacts) -> BTreeMap<String, Vec<String>> + Sync);

/// A manifest of a repository as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFacts {
    pub digest: String,
    pub pushed_at: i64,
    pub last_pulled_at: Option<i64>,
    pub subject: Option<String>,
    pub tags: Vec<String>,
    pub children: Vec<String>,
}

/// Result of one retention deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetentionDelete {
    /// Deleted, with the tags it had.
    Deleted { tags: Vec<String> },
    /// Already gone (a re-run of the same plan).
    Gone,
    /// Protected now (promoted or held since the plan was made).
    Protected(Vec<String>),
    /// Still listed by an index that stays.
    Referenced(String),
}

impl Metadata {
    /// Records a promotion of `digest` to `environment`; `None` if the manifest is
    /// not in the repository.
    pub async fn promote(
        &self,
        repository_id: i64,
        repo: &RepoName,
        environment: &str,
        digest: &str,
        tag: Option<&str>,
        origin: &Origin,
    ) -> Result<Option<Promotion>> {
        let now = now_ms();
        let entry = AuditEntry::ok("promotion", repo.as_str())
            .digest(digest)
            .detail(serde_json::json!({ "environment": environment, "tag": tag }));
        let entry = match tag {
            Some(t) => entry.tag(t),
            None => entry,
        };
        let out = on_write!(self, "promote", |p| async {
            let mut tx = p.begin_write().await?;
            if !lock_manifest(&mut *tx, repository_id, digest).await? {
                return Ok::<Option<Promotion>, sqlx::Error>(None);
            }
            let id = sqlx::query_scalar::<_, i64>(
                "INSERT INTO promotions (repository_id, environment, digest, tag, actor, at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(repository_id)
            .bind(environment)
            .bind(digest)
            .bind(tag)
            .bind(origin.actor.as_str())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            audit::append(&mut *tx, origin, std::slice::from_ref(&entry)).await?;
            tx.commit().await?;
            Ok(Some(Promotion {
                id,
                environment: environment.to_string(),
                digest: digest.to_string(),
                tag: tag.map(str::to_string),
                actor: origin.actor.clone(),
                at: now,
            }))
        }
        .await)?;
        Ok(out)
    }

    /// Promotions of a repository (optionally one environment), newest first.
    pub async fn promotions(
        &self,
        repository_id: i64,
        environment: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Promotion>> {
        let rows = on_read!(self, "promotions", |p| {
            sqlx::query_as::<_, Promotion>(
                "SELECT id, environment, digest, tag, actor, at FROM promotions
                  WHERE repository_id = $1
                    AND ($2 IS NULL OR environment = $2)
                    AND id < $3
                  ORDER BY id DESC LIMIT $4",
            )
            .bind(repository_id)
            .bind(environment)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(p)
            .await
        })?;
        Ok(rows)
    }

    /// Promotion history and active holds of a repository.
    pub async fn protection_facts(&self, repository_id: i64) -> Result<ProtectionFacts> {
        Ok(on_read!(self, "protection_facts", |p| {
            let mut c = p.acquire().await?;
            load_facts(&mut *c, repository_id).await
        })?)
    }

    /// Puts `digest` under a legal hold; `None` if the manifest is not in the repository.
    pub async fn add_hold(
        &self,
        repository_id: i64,
        repo: &RepoName,
        digest: &str,
        reason: &str,
        origin: &Origin,
    ) -> Result<Option<Hold>> {
        let now = now_ms();
        let entry = AuditEntry::ok("hold.add", repo.as_str())
            .digest(digest)
            .detail(serde_json::json!({ "reason": reason }));
        let out = on_write!(self, "add_hold", |p| async {
            let mut tx = p.begin_write().await?;
            if !lock_manifest(&mut *tx, repository_id, digest).await? {
                return Ok::<Option<Hold>, sqlx::Error>(None);
            }
            let id = sqlx::query_scalar::<_, i64>(
                "INSERT INTO holds (repository_id, digest, reason, actor, created_at)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(repository_id)
            .bind(digest)
            .bind(reason)
            .bind(origin.actor.as_str())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let entry = entry.detail(serde_json::json!({ "reason": reason, "hold": id }));
            audit::append(&mut *tx, origin, std::slice::from_ref(&entry)).await?;
            tx.commit().await?;
            Ok(Some(Hold {
                id,
                repository: repo.to_string(),
                digest: digest.to_string(),
                reason: reason.to_string(),
                actor: origin.actor.clone(),
                created_at: now,
                released_at: None,
                released_by: None,
            }))
        }
        .await)?;
        Ok(out)
    }

    /// Releases hold `id`; false if there is no such active hold.
    pub async fn release_hold(&self, id: i64, origin: &Origin) -> Result<bool> {
        let now = now_ms();
        let done = on_write!(self, "release_hold", |p| async {
            let mut tx = p.begin_write().await?;
            let row = sqlx::query_as::<_, (i64, String, String)>(
                "UPDATE holds SET released_at = $1, released_by = $2
                  WHERE id = $3 AND released_at IS NULL
                 RETURNING repository_id, digest, reason",
            )
            .bind(now)
            .bind(origin.actor.as_str())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((repository_id, digest, reason)) = row else {
                return Ok::<bool, sqlx::Error>(false);
            };
            let repo =
                sqlx::query_scalar::<_, String>("SELECT name FROM repositories WHERE id = $1")
                    .bind(repository_id)
                    .fetch_one(&mut *tx)
                    .await?;
            let entry = AuditEntry::ok("hold.release", &repo)
                .digest(digest)
                .detail(serde_json::json!({ "reason": reason, "hold": id }));
            audit::append(&mut *tx, origin, std::slice::from_ref(&entry)).await?;
            tx.commit().await?;
            Ok(true)
        }
        .await)?;
        Ok(done)
    }

    /// Holds, newest first: of one repository or all, active only or all.
    pub async fn holds(&self, repository: Option<&str>, active_only: bool) -> Result<Vec<Hold>> {
        let rows = on_read!(self, "holds", |p| {
            sqlx::query_as::<_, Hold>(
                "SELECT h.id, r.name AS repository, h.digest, h.reason, h.actor, h.created_at,
                        h.released_at, h.released_by
                   FROM holds h JOIN repositories r ON r.id = h.repository_id
                  WHERE ($1 IS NULL OR r.name = $1)
                    AND ($2 = 0 OR h.released_at IS NULL)
                  ORDER BY h.id DESC",
            )
            .bind(repository)
            .bind(i64::from(active_only))
            .fetch_all(p)
            .await
        })?;
        Ok(rows)
    }

    /// Every manifest of a repository with its tags, children, subject and
    /// last pull: the input of a retention plan. Four queries, whatever the size.
    pub async fn artifact_facts(&self, repository_id: i64) -> Result<Vec<ArtifactFacts>> {
        let (manifests, tags, children) = on_read!(self, "artifact_facts", |p| {
            async {
                let manifests = sqlx::query_as::<_, (String, i64, Option<String>, Option<i64>)>(
                    "SELECT m.digest, m.created_at, m.subject_digest, mp.last_pulled_at
                       FROM manifests m
                       LEFT JOIN manifest_pulls mp
                         ON mp.repository_id = m.repository_id AND mp.digest = m.digest
                      WHERE m.repository_id = $1",
                )
                .bind(repository_id)
                .fetch_all(p)
                .await?;
                let tags = sqlx::query_as::<_, (String, String)>(
                    "SELECT manifest_digest, name FROM tags WHERE repository_id = $1 ORDER BY name",
                )
                .bind(repository_id)
                .fetch_all(p)
                .await?;
                let children = sqlx::query_as::<_, (String, String)>(
                    "SELECT parent_digest, child_digest FROM manifest_children
                      WHERE repository_id = $1",
                )
                .bind(repository_id)
                .fetch_all(p)
                .await?;
                Ok::<_, sqlx::Error>((manifests, tags, children))
            }
            .await
        })?;
        let mut tag_map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (d, t) in tags {
            tag_map.entry(d).or_default().push(t);
        }
        let mut child_map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (parent, child) in children {
            child_map.entry(parent).or_default().push(child);
        }
        Ok(manifests
            .into_iter()
            .map(
                |(digest, pushed_at, subject, last_pulled_at)| ArtifactFacts {
                    tags: tag_map.remove(&digest).unwrap_or_default(),
                    children: child_map.remove(&digest).unwrap_or_default(),
                    digest,
                    pushed_at,
                    last_pulled_at,
                    subject,
                },
            )
            .collect())
    }

    /// Deletes one manifest and its tags for retention (immutable tags
    /// included: retention is the one path that may), unless it is protected
    /// now or an index that stays still lists it. `why` and `policy` go to the
    /// tag history and the audit trail.
    #[allow(clippy::too_many_arguments)] // the deletion, its policy and its reasons
    pub async fn retention_delete(
        &self,
        repository_id: i64,
        repo: &RepoName,
        digest: &str,
        protect: Protect<'_>,
        policy: &str,
        why: &str,
        origin: &Origin,
    ) -> Result<RetentionDelete> {
        let now = now_ms();
        let out = on_write!(self, "retention_delete", |p| async {
            let mut tx = p.begin_write().await?;
            if !lock_manifest(&mut *tx, repository_id, digest).await? {
                return Ok::<RetentionDelete, sqlx::Error>(RetentionDelete::Gone);
            }
            let facts = load_facts(&mut *tx, repository_id).await?;
            let reasons =
                protected_reasons(&mut *tx, repository_id, &protect(&facts), digest).await?;
            if !reasons.is_empty() {
                tx.rollback().await?;
                return Ok(RetentionDelete::Protected(reasons));
            }
            let parent = sqlx::query_scalar::<_, String>(
                "SELECT parent_digest FROM manifest_children
                  WHERE repository_id = $1 AND child_digest = $2 LIMIT 1",
            )
            .bind(repository_id)
            .bind(digest)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(parent) = parent {
                tx.rollback().await?;
                return Ok(RetentionDelete::Referenced(parent));
            }
            let mut tags = sqlx::query_scalar::<_, String>(
                "DELETE FROM tags WHERE repository_id = $1 AND manifest_digest = $2 RETURNING name",
            )
            .bind(repository_id)
            .bind(digest)
            .fetch_all(&mut *tx)
            .await?;
            tags.sort();
            sqlx::query("DELETE FROM manifests WHERE repository_id = $1 AND digest = $2")
                .bind(repository_id)
                .bind(digest)
                .execute(&mut *tx)
                .await?;
            let mut entries = vec![AuditEntry::ok("retention.delete", repo.as_str())
                .digest(digest)
                .detail(serde_json::json!({ "policy": policy, "why": why, "tags": tags }))];
            for t in &tags {
                let e = TagEvent {
                    tag: t.clone(),
                    action: TagAction::Deleted,
                    digest: digest.to_string(),
                    previous_digest: None,
                    rule: format!("retention: {policy}"),
                };
                insert_event(&mut *tx, repository_id, &e, &origin.actor, now).await?;
                entries.push(
                    AuditEntry::ok("tag.deleted", repo.as_str())
                        .tag(t.as_str())
                        .digest(digest)
                        .detail(serde_json::json!({ "rule": e.rule, "why": why })),
                );
            }
            audit::append(&mut *tx, origin, &entries).await?;
            tx.commit().await?;
            Ok(RetentionDelete::Deleted { tags })
        }
        .await)?;
        Ok(out)
    }

    /// Every repository: `(id, name)` in name order.
    pub async fn all_repositories(&self) -> Result<Vec<(i64, String)>> {
        let rows = on_read!(self, "all_repositories", |p| {
            sqlx::query_as::<_, (i64, String)>("SELECT id, name FROM repositories ORDER BY name")
                .fetch_all(p)
                .await
        })?;
        Ok(rows)
    }

    /// The tags that point at `digest` now.
    pub async fn tags_of(&self, repository_id: i64, digest: &str) -> Result<Vec<String>> {
        let rows = on_read!(self, "tags_of", |p| {
            sqlx::query_scalar::<_, String>(
                "SELECT name FROM tags WHERE repository_id = $1 AND manifest_digest = $2 ORDER BY name",
            )
            .bind(repository_id)
            .bind(digest)
            .fetch_all(p)
            .await
        })?;
        Ok(rows)
    }

    /// Stores a plan shown to an operator.
    pub async fn store_plan(
        &self,
        id: &str,
        plan: &serde_json::Value,
        origin: &Origin,
    ) -> Result<()> {
        on_write!(self, "store_plan", |p| {
            sqlx::query(
                "INSERT INTO retention_plans (id, created_at, actor, plan) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(now_ms())
            .bind(origin.actor.as_str())
            .bind(plan.to_string())
            .execute(p)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// A stored plan (JSON) and when it was applied, if it was.
    pub async fn stored_plan(&self, id: &str) -> Result<Option<(serde_json::Value, Option<i64>)>> {
        let row = on_read!(self, "stored_plan", |p| {
            sqlx::query_as::<_, (String, Option<i64>)>(
                "SELECT plan, applied_at FROM retention_plans WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(p)
            .await
        })?;
        row.map(|(text, applied)| {
            serde_json::from_str(&text)
                .map(|v| (v, applied))
                .map_err(|e| super::Error::Corrupt(format!("retention plan {id}: {e}")))
        })
        .transpose()
    }

    pub async fn mark_plan_applied(&self, id: &str) -> Result<()> {
        on_write!(self, "mark_plan_applied", |p| {
            sqlx::query("UPDATE retention_plans SET applied_at = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(id)
                .execute(p)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }
}

/// Locks manifest `digest` of a repository for this transaction (a no-op
/// update: a row lock on PostgreSQL; SQLite has one writer). False if absent.
pub(super) async fn lock_manifest<C, DB>(
    conn: &mut C,
    repository_id: i64,
    digest: &str,
) -> std::result::Result<bool, sqlx::Error>
where
    C: Send,
    DB: sqlx::Database,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + for<'q> sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<<DB as sqlx::Database>::Row>,
{
    let found = sqlx::query_scalar::<DB, i64>(
        "UPDATE manifests SET size = size WHERE repository_id = $1 AND digest = $2 RETURNING size",
    )
    .bind(repository_id)
    .bind(digest)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(found.is_some())
}

/// Promotion history (newest first per environment) and active holds.
pub(super) async fn load_facts<C, DB>(
    conn: &mut C,
    repository_id: i64,
) -> std::result::Result<ProtectionFacts, sqlx::Error>
where
    C: Send,
    DB: sqlx::Database,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (String, String): for<'r> sqlx::FromRow<'r, <DB as sqlx::Database>::Row>,
{
    let promotions = sqlx::query_as::<DB, (String, String)>(
        "SELECT environment, digest FROM promotions WHERE repository_id = $1 ORDER BY id DESC",
    )
    .bind(repository_id)
    .fetch_all(&mut *conn)
    .await?;
    let holds = sqlx::query_as::<DB, (String, String)>(
        "SELECT digest, reason FROM holds
          WHERE repository_id = $1 AND released_at IS NULL ORDER BY id",
    )
    .bind(repository_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut facts = ProtectionFacts::default();
    for (env, digest) in promotions {
        facts.promotions.entry(env).or_default().push(digest);
    }
    for (digest, reason) in holds {
        facts.holds.entry(digest).or_default().push(reason);
    }
    Ok(facts)
}

/// Reasons `digest` is protected: it is a protected root, or an index child
/// (at any depth) of one.
pub(super) async fn protected_reasons<C, DB>(
    conn: &mut C,
    repository_id: i64,
    roots: &BTreeMap<String, Vec<String>>,
    digest: &str,
) -> std::result::Result<Vec<String>, sqlx::Error>
where
    C: Send,
    DB: sqlx::Database,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'q> sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<<DB as sqlx::Database>::Row>,
{
    let mut reasons: Vec<String> = roots.get(digest).cloned().unwrap_or_default();
    // Walk up: the indexes listing this manifest, and theirs (bounded depth).
    let mut frontier = vec![digest.to_string()];
    let mut seen: BTreeSet<String> = frontier.iter().cloned().collect();
    for _ in 0..4 {
        let mut next = Vec::new();
        for d in &frontier {
            let parents = sqlx::query_scalar::<DB, String>(
                "SELECT parent_digest FROM manifest_children
                  WHERE repository_id = $1 AND child_digest = $2",
            )
            .bind(repository_id)
            .bind(d.as_str())
            .fetch_all(&mut *conn)
            .await?;
            for p in parents {
                if let Some(r) = roots.get(&p) {
                    reasons.extend(r.iter().map(|r| format!("{r} (index {p} lists it)")));
                }
                if seen.insert(p.clone()) {
                    next.push(p);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    Ok(reasons)
}
