//! Pull statistics in the database: batches of pulls counted in memory are
//! added to `manifest_pulls`, `tag_pulls` and `repository_pulls`, and read back
//! for the artifacts API. Also the counts the metrics scrape asks for.

use super::BeginWrite as _;
use std::collections::HashMap;

use super::{Backend, Metadata, Result};
use crate::domain::RepoName;

/// How often and when something was pulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullCount {
    pub pulls: u64,
    /// Unix milliseconds.
    pub last_pulled_at: i64,
}

impl PullCount {
    /// Adds `n` pulls, the latest at `at`.
    pub fn add(&mut self, n: u64, at: i64) {
        self.pulls += n;
        self.last_pulled_at = self.last_pulled_at.max(at);
    }
}

/// Pulls of one repository counted since the last flush.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepositoryPulls {
    /// Manifest GETs.
    pub manifests_total: u64,
    pub blob_pulls: u64,
    pub bytes_served: u64,
    /// The latest pull of anything in the repository (Unix milliseconds).
    pub last_pulled_at: i64,
    /// Manifest GETs by digest.
    pub manifests: HashMap<String, PullCount>,
    /// Manifest GETs that named a tag, by tag.
    pub tags: HashMap<String, PullCount>,
}

impl RepositoryPulls {
    /// Adds `other`'s counts to these (a failed flush is merged back this way).
    pub fn merge(&mut self, other: RepositoryPulls) {
        self.manifests_total += other.manifests_total;
        self.blob_pulls += other.blob_pulls;
        self.bytes_served += other.bytes_served;
        self.last_pulled_at = self.last_pulled_at.max(other.last_pulled_at);
        for (k, v) in other.manifests {
            self.manifests
                .entry(k)
                .or_default()
                .add(v.pulls, v.last_pulled_at);
        }
        for (k, v) in other.tags {
            self.tags
                .entry(k)
                .or_default()
                .add(v.pulls, v.last_pulled_at);
        }
    }
}

/// The artifacts listing's sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactSort {
    Pulls,
    LastPulled,
    Pushed,
    Size,
}

impl ArtifactSort {
    /// The ORDER BY expression (a fixed string: never built from input). Never
    /// pulled sorts as 0 so both backends order NULLs alike.
    fn column(self) -> &'static str {
        match self {
            ArtifactSort::Pulls => "COALESCE(mp.pulls, 0)",
            ArtifactSort::LastPulled => "COALESCE(mp.last_pulled_at, 0)",
            ArtifactSort::Pushed => "m.created_at",
            ArtifactSort::Size => "m.size",
        }
    }
}

/// A tag and how often it was pulled by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagStats {
    pub name: String,
    pub pulls: u64,
    pub last_pulled_at: Option<i64>,
}

/// A manifest of a repository with its tags and pull statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactStats {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: u64,
    pub pushed_at: i64,
    pub tags: Vec<TagStats>,
    pub pulls: u64,
    pub last_pulled_at: Option<i64>,
}

/// One repository's totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryStats {
    pub created_at: i64,
    pub manifests: u64,
    pub tags: u64,
    pub pulls: u64,
    pub blob_pulls: u64,
    pub bytes_served: u64,
    pub last_pulled_at: Option<i64>,
}

/// Keeps the later of two times in an upsert; `CASE` because SQLite spells it
/// `max(a, b)` and PostgreSQL `GREATEST(a, b)`.
macro_rules! later {
    ($table:literal) => {
        concat!(
            "last_pulled_at = CASE WHEN excluded.last_pulled_at > ",
            $table,
            ".last_pulled_at THEN excluded.last_pulled_at ELSE ",
            $table,
            ".last_pulled_at END"
        )
    };
}

impl Metadata {
    /// Adds a batch of pulls (repository name → counts) in one transaction.
    /// Repositories that no longer exist are skipped.
    pub async fn add_pulls(&self, batch: &HashMap<String, RepositoryPulls>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        on_write!(self, "add_pulls", |p| {
            let mut tx = p.begin_write().await?;
            for (repo, r) in batch {
                sqlx::query(concat!(
                    "INSERT INTO repository_pulls (repository_id, pulls, blob_pulls, bytes_served, last_pulled_at)
                     SELECT id, $2, $3, $4, $5 FROM repositories WHERE name = $1
                     ON CONFLICT (repository_id) DO UPDATE SET
                       pulls = repository_pulls.pulls + excluded.pulls,
                       blob_pulls = repository_pulls.blob_pulls + excluded.blob_pulls,
                       bytes_served = repository_pulls.bytes_served + excluded.bytes_served, ",
                    later!("repository_pulls")
                ))
                .bind(repo.as_str())
                .bind(r.manifests_total as i64)
                .bind(r.blob_pulls as i64)
                .bind(r.bytes_served as i64)
                .bind(r.last_pulled_at)
                .execute(&mut *tx)
                .await?;
                for (digest, c) in &r.manifests {
                    sqlx::query(concat!(
                        "INSERT INTO manifest_pulls (repository_id, digest, pulls, last_pulled_at)
                         SELECT id, $2, $3, $4 FROM repositories WHERE name = $1
                         ON CONFLICT (repository_id, digest) DO UPDATE SET
                           pulls = manifest_pulls.pulls + excluded.pulls, ",
                        later!("manifest_pulls")
                    ))
                    .bind(repo.as_str())
                    .bind(digest.as_str())
                    .bind(c.pulls as i64)
                    .bind(c.last_pulled_at)
                    .execute(&mut *tx)
                    .await?;
                }
                for (tag, c) in &r.tags {
                    sqlx::query(concat!(
                        "INSERT INTO tag_pulls (repository_id, tag, pulls, last_pulled_at)
                         SELECT id, $2, $3, $4 FROM repositories WHERE name = $1
                         ON CONFLICT (repository_id, tag) DO UPDATE SET
                           pulls = tag_pulls.pulls + excluded.pulls, ",
                        later!("tag_pulls")
                    ))
                    .bind(repo.as_str())
                    .bind(tag.as_str())
                    .bind(c.pulls as i64)
                    .bind(c.last_pulled_at)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await
        })?;
        Ok(())
    }

    /// Manifests of `repo` with tags and pull counts, sorted by `sort` (ties by
    /// digest), `limit` from `offset`, and whether more follow. `None` if the
    /// repository does not exist.
    pub async fn artifacts(
        &self,
        repo: &RepoName,
        sort: ArtifactSort,
        descending: bool,
        limit: u32,
        offset: u64,
    ) -> Result<Option<(Vec<ArtifactStats>, bool)>> {
        let Some(id) = self.repository_id(repo).await? else {
            return Ok(None);
        };
        let dir = if descending { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT m.digest, m.media_type, m.artifact_type, m.size, m.created_at,
                    COALESCE(mp.pulls, 0), mp.last_pulled_at
               FROM manifests m
               LEFT JOIN manifest_pulls mp
                      ON mp.repository_id = m.repository_id AND mp.digest = m.digest
              WHERE m.repository_id = $1
              ORDER BY {col} {dir}, m.digest {dir}
              LIMIT $2 OFFSET $3",
            col = sort.column()
        );
        type Row = (String, String, Option<String>, i64, i64, i64, Option<i64>);
        let mut rows = on_read!(self, "artifacts", |p| sqlx::query_as::<_, Row>(&sql)
            .bind(id)
            .bind(i64::from(limit) + 1)
            .bind(offset as i64)
            .fetch_all(p)
            .await)?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let mut tags: HashMap<String, Vec<TagStats>> = HashMap::new();
        if !rows.is_empty() {
            let placeholders: Vec<String> =
                (0..rows.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT t.manifest_digest, t.name, tp.pulls, tp.last_pulled_at
                   FROM tags t
                   LEFT JOIN tag_pulls tp ON tp.repository_id = t.repository_id AND tp.tag = t.name
                  WHERE t.repository_id = $1 AND t.manifest_digest IN ({}) ORDER BY t.name",
                placeholders.join(", ")
            );
            let pairs = on_read!(self, "artifacts", |p| {
                let mut q =
                    sqlx::query_as::<_, (String, String, Option<i64>, Option<i64>)>(&sql).bind(id);
                for r in &rows {
                    q = q.bind(r.0.as_str());
                }
                q.fetch_all(p).await
            })?;
            for (digest, name, pulls, last_pulled_at) in pairs {
                tags.entry(digest).or_default().push(TagStats {
                    name,
                    pulls: pulls.unwrap_or(0) as u64,
                    last_pulled_at,
                });
            }
        }
        let list = rows
            .into_iter()
            .map(
                |(digest, media_type, artifact_type, size, pushed_at, pulls, last)| ArtifactStats {
                    tags: tags.remove(&digest).unwrap_or_default(),
                    digest,
                    media_type,
                    artifact_type,
                    size: size as u64,
                    pushed_at,
                    pulls: pulls as u64,
                    last_pulled_at: last,
                },
            )
            .collect();
        Ok(Some((list, more)))
    }

    /// Totals of one repository; `None` if it does not exist.
    pub async fn repository_stats(&self, repo: &RepoName) -> Result<Option<RepositoryStats>> {
        type Row = (
            i64,
            i64,
            i64,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        );
        let row = on_read!(self, "repository_stats", |p| sqlx::query_as::<_, Row>(
            "SELECT r.created_at,
                    (SELECT COUNT(*) FROM manifests m WHERE m.repository_id = r.id),
                    (SELECT COUNT(*) FROM tags t WHERE t.repository_id = r.id),
                    rp.pulls, rp.blob_pulls, rp.bytes_served, rp.last_pulled_at
               FROM repositories r
               LEFT JOIN repository_pulls rp ON rp.repository_id = r.id
              WHERE r.name = $1"
        )
        .bind(repo.as_str())
        .fetch_optional(p)
        .await)?;
        Ok(row.map(
            |(created_at, manifests, tags, pulls, blob_pulls, bytes, last)| RepositoryStats {
                created_at,
                manifests: manifests as u64,
                tags: tags as u64,
                pulls: pulls.unwrap_or(0) as u64,
                blob_pulls: blob_pulls.unwrap_or(0) as u64,
                bytes_served: bytes.unwrap_or(0) as u64,
                last_pulled_at: last,
            },
        ))
    }

    /// Upload sessions in progress (all repositories, all replicas).
    pub async fn count_uploads(&self) -> Result<u64> {
        let n = on_read!(self, "count_uploads", |p| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM uploads"
        )
        .fetch_one(p)
        .await)?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_keeps_the_latest_time() {
        let mut a = RepositoryPulls {
            manifests_total: 2,
            last_pulled_at: 10,
            ..Default::default()
        };
        a.manifests.entry("d".into()).or_default().add(2, 10);
        let mut b = RepositoryPulls {
            manifests_total: 1,
            bytes_served: 7,
            last_pulled_at: 5,
            ..Default::default()
        };
        b.manifests.entry("d".into()).or_default().add(1, 5);
        b.tags.entry("v1".into()).or_default().add(1, 5);
        a.merge(b);
        assert_eq!(a.manifests_total, 3);
        assert_eq!(a.bytes_served, 7);
        assert_eq!(a.last_pulled_at, 10);
        assert_eq!(
            a.manifests["d"],
            PullCount {
                pulls: 3,
                last_pulled_at: 10
            }
        );
        assert_eq!(a.tags["v1"].pulls, 1);
    }
}
