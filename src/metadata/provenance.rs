//! The provenance store: per manifest digest, one row per in-toto statement (or
//! per label set), with the facts indexed for search, the build inputs in
//! `provenance_materials`, and the full document (JSONB on PostgreSQL, text on
//! SQLite).
//!
//! A record is never updated: the same document for the same artifact and
//! source is stored once (`UNIQUE (repository_id, subject_digest, source,
//! document_digest)`), so re-sending it is a no-op. Every stored record has its
//! `provenance.ingest` audit entry, appended in the inserting transaction.

use super::BeginWrite as _;
use serde::Serialize;

use super::audit::{self, AuditEntry, Origin};
use super::{now_ms, Backend, Metadata, Result};
use crate::domain::provenance::{source_key, Facts};
use crate::domain::RepoName;

/// Where a record came from.
pub const SOURCE_API: &str = "api";
/// An attestation pushed with the image (BuildKit attestation manifest, OCI
/// referrer, cosign `.att` tag).
pub const SOURCE_ATTESTATION: &str = "attestation";
/// OCI annotations of the manifest and labels of the image config.
pub const SOURCE_LABELS: &str = "labels";

/// One record to store for an artifact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewProvenance {
    /// [`SOURCE_API`], [`SOURCE_ATTESTATION`] or [`SOURCE_LABELS`].
    pub source: &'static str,
    /// The attestation layer the record was read from, if any.
    pub source_digest: Option<String>,
    /// What makes the record unique for its artifact and source.
    pub document_digest: String,
    /// `None`: parsed, and `facts` are indexed. `Some`: why the document could
    /// not be used (it is recorded so the auditor sees that one was pushed).
    pub parse_error: Option<String>,
    pub statement_type: Option<String>,
    pub predicate_type: Option<String>,
    pub facts: Facts,
    /// The document as JSON text.
    pub document: Option<String>,
}

/// A record's id and whether this call created it (`false`: it was stored before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StoredProvenance {
    pub id: i64,
    pub created: bool,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ProvenanceRecord {
    pub id: i64,
    #[serde(skip)]
    pub repository_id: i64,
    pub repository: String,
    pub subject_digest: String,
    pub source: String,
    pub source_digest: Option<String>,
    pub document_digest: String,
    pub parsed: bool,
    pub parse_error: Option<String>,
    pub statement_type: Option<String>,
    pub predicate_type: Option<String>,
    pub source_uri: Option<String>,
    pub revision: Option<String>,
    pub builder_id: Option<String>,
    pub build_type: Option<String>,
    pub invocation_id: Option<String>,
    /// Unix milliseconds.
    pub started_at: Option<i64>,
    /// Unix milliseconds.
    pub finished_at: Option<i64>,
    /// `org.opencontainers.image.created`, Unix milliseconds.
    pub image_created_at: Option<i64>,
    pub version: Option<String>,
    pub authors: Option<String>,
    /// JSON text (absent in search results, which would otherwise carry every
    /// matching document).
    pub document: Option<String>,
    pub actor: String,
    pub recorded_at: i64,
    #[sqlx(skip)]
    pub materials: Vec<MaterialRecord>,
    /// Tags the artifact has now (filled by searches only).
    #[sqlx(skip)]
    pub tags: Vec<String>,
}

/// A build input of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct MaterialRecord {
    pub provenance_id: i64,
    pub position: i32,
    pub uri: String,
    pub digest: Option<String>,
}

/// Filters of a provenance search, combined with AND; only parsed records match.
#[derive(Debug, Clone, Default)]
pub struct ProvenanceQuery {
    pub revision: Option<String>,
    /// Any form of the repository URL: compared by [`source_key`].
    pub source: Option<String>,
    pub builder: Option<String>,
    pub repository: Option<String>,
    pub predicate_type: Option<String>,
    /// A material's digest (`sha256:…`) or URI.
    pub material: Option<String>,
    /// Unix milliseconds, inclusive, on `COALESCE(started_at, image_created_at, recorded_at)`.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
    /// Only records with ids below this one (results are newest first).
    pub cursor: Option<i64>,
    pub limit: u32,
}

/// A page of search results; `next` is the cursor of the following page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProvenancePage {
    pub records: Vec<ProvenanceRecord>,
    pub next: Option<i64>,
}

const COLUMNS: &str = "p.id, p.repository_id, r.name AS repository, p.subject_digest, p.source,
    p.source_digest, p.document_digest, p.parsed, p.parse_error, p.statement_type,
    p.predicate_type, p.source_uri, p.revision, p.builder_id, p.build_type, p.invocation_id,
    p.started_at, p.finished_at, p.image_created_at, p.version, p.authors";

/// PostgreSQL refuses NUL in text and JSONB values; untrusted documents may
/// carry one (`\u0000` in JSON), which must not turn into a failed insert.
fn clean(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

fn clean_opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(clean)
}

fn clean_json(s: &str) -> String {
    clean(s).replace("\\u0000", "\\ufffd")
}

/// `LIKE` pattern matching `text` anywhere, with `\` as the escape.
fn contains_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

impl Metadata {
    /// Stores `records` about the artifact `subject` of repository
    /// `repository_id` (named `repo`) in one transaction, with a
    /// `provenance.ingest` audit entry for each record created. A record
    /// already stored is left as it is and reported with `created: false`.
    pub async fn put_provenance(
        &self,
        repository_id: i64,
        repo: &str,
        subject: &str,
        records: &[NewProvenance],
        origin: &Origin,
    ) -> Result<Vec<StoredProvenance>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        // The column is JSONB on PostgreSQL and text on SQLite.
        let document = match self.backend {
            Backend::Postgres(_) => "CAST($21 AS JSONB)",
            Backend::Sqlite { .. } => "$21",
        };
        let insert = format!(
            "INSERT INTO provenance (repository_id, subject_digest, source, source_digest,
                 document_digest, parsed, parse_error, statement_type, predicate_type, source_uri,
                 revision, builder_id, build_type, invocation_id, started_at, finished_at,
                 image_created_at, version, authors, actor, document, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18, $19, $20, {document}, $22)
             ON CONFLICT (repository_id, subject_digest, source, document_digest) DO NOTHING
             RETURNING id"
        );
        let now = now_ms();
        let stored = on_write!(self, "put_provenance", |p| {
            async {
                let mut tx = p.begin_write().await?;
                let mut stored = Vec::with_capacity(records.len());
                let mut entries = Vec::new();
                for r in records {
                    let f = &r.facts;
                    let id = sqlx::query_scalar::<_, i64>(&insert)
                        .bind(repository_id)
                        .bind(subject)
                        .bind(r.source)
                        .bind(clean_opt(&r.source_digest))
                        .bind(clean(&r.document_digest))
                        .bind(r.parse_error.is_none())
                        .bind(clean_opt(&r.parse_error))
                        .bind(clean_opt(&r.statement_type))
                        .bind(clean_opt(&r.predicate_type))
                        .bind(clean_opt(&f.source_uri))
                        .bind(clean_opt(&f.revision))
                        .bind(clean_opt(&f.builder_id))
                        .bind(clean_opt(&f.build_type))
                        .bind(clean_opt(&f.invocation_id))
                        .bind(f.started_at)
                        .bind(f.finished_at)
                        .bind(f.created_at)
                        .bind(clean_opt(&f.version))
                        .bind(clean_opt(&f.authors))
                        .bind(origin.actor.as_str())
                        .bind(r.document.as_deref().map(clean_json))
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(id) = id else {
                        let id = sqlx::query_scalar::<_, i64>(
                            "SELECT id FROM provenance WHERE repository_id = $1
                                AND subject_digest = $2 AND source = $3 AND document_digest = $4",
                        )
                        .bind(repository_id)
                        .bind(subject)
                        .bind(r.source)
                        .bind(clean(&r.document_digest))
                        .fetch_one(&mut *tx)
                        .await?;
                        stored.push(StoredProvenance { id, created: false });
                        continue;
                    };
                    for (position, m) in f.materials.iter().enumerate() {
                        sqlx::query(
                            "INSERT INTO provenance_materials (provenance_id, position, uri, digest)
                             VALUES ($1, $2, $3, $4)",
                        )
                        .bind(id)
                        .bind(i32::try_from(position).unwrap_or(i32::MAX))
                        .bind(clean(&m.uri))
                        .bind(clean_opt(&m.digest))
                        .execute(&mut *tx)
                        .await?;
                    }
                    entries.push(
                        AuditEntry::ok("provenance.ingest", repo)
                            .digest(subject)
                            .detail(serde_json::json!({
                                "provenance_id": id,
                                "source": r.source,
                                "source_digest": r.source_digest,
                                "predicate_type": r.predicate_type,
                                "parsed": r.parse_error.is_none(),
                                "parse_error": r.parse_error,
                            })),
                    );
                    stored.push(StoredProvenance { id, created: true });
                }
                audit::append(&mut *tx, origin, &entries).await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(stored)
            }
            .await
        })?;
        Ok(stored)
    }

    /// Records about `digest` in `repo`, oldest first, with ids above `cursor`,
    /// each with its document and materials.
    pub async fn provenance_of(
        &self,
        repo: &RepoName,
        digest: &str,
        cursor: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ProvenanceRecord>> {
        let sql = format!(
            "SELECT {COLUMNS}, CAST(p.document AS TEXT) AS document, p.actor, p.recorded_at
               FROM provenance p JOIN repositories r ON r.id = p.repository_id
              WHERE r.name = $1 AND p.subject_digest = $2 AND p.id > $3
              ORDER BY p.id LIMIT $4"
        );
        let mut rows = on_read!(self, "provenance_of", |p| {
            sqlx::query_as::<_, ProvenanceRecord>(&sql)
                .bind(repo.as_str())
                .bind(digest)
                .bind(cursor.unwrap_or(0))
                .bind(i64::from(limit))
                .fetch_all(p)
                .await
        })?;
        for r in &mut rows {
            r.materials = self.materials_of(r.id).await?;
        }
        Ok(rows)
    }

    async fn materials_of(&self, provenance_id: i64) -> Result<Vec<MaterialRecord>> {
        let rows = on_read!(self, "provenance_materials", |p| {
            sqlx::query_as::<_, MaterialRecord>(
                "SELECT provenance_id, position, uri, digest FROM provenance_materials
                  WHERE provenance_id = $1 ORDER BY position",
            )
            .bind(provenance_id)
            .fetch_all(p)
            .await
        })?;
        Ok(rows)
    }

    /// The build inputs recorded for `digest` in `repo`, in (record, position)
    /// order after `cursor`.
    pub async fn provenance_materials(
        &self,
        repo: &RepoName,
        digest: &str,
        cursor: Option<(i64, i32)>,
        limit: u32,
    ) -> Result<Vec<MaterialRecord>> {
        let (after_id, after_pos) = cursor.unwrap_or((0, -1));
        let rows = on_read!(self, "provenance_materials", |p| {
            sqlx::query_as::<_, MaterialRecord>(
                "SELECT m.provenance_id, m.position, m.uri, m.digest
                   FROM provenance_materials m
                   JOIN provenance p ON p.id = m.provenance_id
                   JOIN repositories r ON r.id = p.repository_id
                  WHERE r.name = $1 AND p.subject_digest = $2
                    AND (m.provenance_id > $3 OR (m.provenance_id = $4 AND m.position > $5))
                  ORDER BY m.provenance_id, m.position LIMIT $6",
            )
            .bind(repo.as_str())
            .bind(digest)
            .bind(after_id)
            .bind(after_id)
            .bind(after_pos)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await
        })?;
        Ok(rows)
    }

    /// Parsed records matching `q`, newest first, each with its materials and
    /// the tags its artifact has now (documents are left out).
    ///
    /// The source filter narrows in SQL on the URL's path (every spelling of a
    /// repository URL contains it) and then compares [`source_key`]s, so a page
    /// may hold fewer than `q.limit` records while `next` says more may follow.
    pub async fn provenance_search(&self, q: &ProvenanceQuery) -> Result<ProvenancePage> {
        let key = q
            .source
            .as_deref()
            .map(|s| source_key(s).unwrap_or_default());
        let path = key
            .as_deref()
            .map(|k| k.split_once('/').map_or(k, |(_, path)| path).to_string());
        let mut sql = format!(
            "SELECT {COLUMNS}, CAST(NULL AS TEXT) AS document, p.actor, p.recorded_at
               FROM provenance p JOIN repositories r ON r.id = p.repository_id
              WHERE p.parsed = TRUE"
        );
        let mut n = 0;
        let mut param = |sql: &mut String, clause: &str| {
            for part in clause.split('?').enumerate() {
                if part.0 > 0 {
                    n += 1;
                    sql.push_str(&format!("${n}"));
                }
                sql.push_str(part.1);
            }
        };
        let material_pair = q.material.as_ref().map(|m| (m.clone(), m.clone()));
        let texts: [(&str, Option<String>); 5] = [
            (" AND p.revision = ?", q.revision.clone()),
            (" AND p.builder_id = ?", q.builder.clone()),
            (" AND r.name = ?", q.repository.clone()),
            (" AND p.predicate_type = ?", q.predicate_type.clone()),
            (
                " AND LOWER(p.source_uri) LIKE ? ESCAPE '\\'",
                path.as_deref().map(contains_pattern),
            ),
        ];
        for (clause, v) in &texts {
            if v.is_some() {
                param(&mut sql, clause);
            }
        }
        if material_pair.is_some() {
            param(
                &mut sql,
                " AND EXISTS (SELECT 1 FROM provenance_materials m
                               WHERE m.provenance_id = p.id AND (m.digest = ? OR m.uri = ?))",
            );
        }
        let numbers = [
            (
                " AND COALESCE(p.started_at, p.image_created_at, p.recorded_at) >= ?",
                q.since,
            ),
            (
                " AND COALESCE(p.started_at, p.image_created_at, p.recorded_at) < ?",
                q.until,
            ),
            (" AND p.id < ?", q.cursor),
        ];
        for (clause, v) in &numbers {
            if v.is_some() {
                param(&mut sql, clause);
            }
        }
        param(&mut sql, " ORDER BY p.id DESC LIMIT ?");
        let limit = q.limit.max(1);
        let rows = on_read!(self, "provenance_search", |p| {
            let mut query = sqlx::query_as::<_, ProvenanceRecord>(&sql);
            for (_, v) in &texts {
                if let Some(v) = v {
                    query = query.bind(v.as_str());
                }
            }
            if let Some((a, b)) = &material_pair {
                query = query.bind(a.as_str()).bind(b.as_str());
            }
            for (_, v) in &numbers {
                if let Some(v) = v {
                    query = query.bind(*v);
                }
            }
            query.bind(i64::from(limit)).fetch_all(p).await
        })?;
        let next = rows
            .last()
            .filter(|_| rows.len() as u32 >= limit)
            .map(|r| r.id);
        let mut records = Vec::with_capacity(rows.len());
        for mut r in rows {
            if let Some(key) = &key {
                let stored = r.source_uri.as_deref().and_then(source_key);
                if stored.as_deref() != Some(key.as_str()) {
                    continue;
                }
            }
            r.materials = self.materials_of(r.id).await?;
            r.tags = self.tags_of(r.repository_id, &r.subject_digest).await?;
            records.push(r);
        }
        Ok(ProvenancePage { records, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("org/a_b%c"), "%org/a\\_b\\%c%");
    }

    #[test]
    fn nul_never_reaches_the_database() {
        assert_eq!(clean("a\0b"), "a\u{fffd}b");
        assert_eq!(clean_json(r#"{"a":"x\u0000"}"#), r#"{"a":"x\ufffd"}"#);
    }
}
