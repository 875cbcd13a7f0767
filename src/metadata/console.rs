//! What the web console reads that no other use case needs: a page of
//! repositories with their totals, a page of tags with what they hold and
//! their pull counts, and the activity the dashboard draws. Each page is one
//! query (correlated subqueries bounded by the page size), never one per row.

use super::{Backend, Metadata, Result};

/// One row of the console's repository list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositorySummary {
    pub name: String,
    /// Manifests (images, indexes, referrers) stored.
    pub artifacts: u64,
    /// Bytes of its manifests and of every blob it may serve (layers, configs),
    /// each digest counted once.
    pub size: u64,
    /// Unix milliseconds of the newest manifest.
    pub last_push: Option<i64>,
    pub pulls: u64,
    pub last_pull: Option<i64>,
}

/// One row of a repository's tag list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSummary {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// When the tag was bound to this digest (Unix milliseconds).
    pub pushed_at: i64,
    pub pulls: u64,
    pub last_pulled_at: Option<i64>,
}

/// Counts per day (`day` is Unix milliseconds / 86 400 000, `DAY_MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayCount {
    pub day: i64,
    pub count: u64,
}

/// A repository's pull totals, for the dashboard's top list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryPullTotal {
    pub name: String,
    pub pulls: u64,
    pub bytes_served: u64,
    pub last_pulled_at: i64,
}

/// Registry-wide totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub repositories: u64,
    pub artifacts: u64,
    pub tags: u64,
    pub pulls: u64,
}

/// Milliseconds per day; the queries divide by this literal.
pub const DAY_MS: i64 = 86_400_000;

/// `%` and `_` are wildcards in LIKE; a search for them means the characters.
fn like_pattern(text: &str) -> String {
    let mut p = String::from("%");
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Metadata {
    /// Repositories with content whose name contains `search`, in name order
    /// after `after`, at most `n`, and whether more follow.
    pub async fn repository_summaries(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        n: u32,
    ) -> Result<(Vec<RepositorySummary>, bool)> {
        type Row = (String, i64, i64, Option<i64>, Option<i64>, Option<i64>);
        let pattern = like_pattern(search.unwrap_or(""));
        let mut rows = on_read!(self, "repository_summaries", |p| {
            sqlx::query_as::<_, Row>(
                "SELECT r.name,
                        (SELECT COUNT(*) FROM manifests m WHERE m.repository_id = r.id),
                        (SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT)
                           FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest
                          WHERE rb.repository_id = r.id)
                        + (SELECT CAST(COALESCE(SUM(m.size), 0) AS BIGINT) FROM manifests m
                            WHERE m.repository_id = r.id
                              AND NOT EXISTS (SELECT 1 FROM repository_blobs rb
                                               WHERE rb.repository_id = r.id
                                                 AND rb.digest = m.digest)),
                        (SELECT MAX(m.created_at) FROM manifests m WHERE m.repository_id = r.id),
                        rp.pulls, rp.last_pulled_at
                   FROM repositories r
                   LEFT JOIN repository_pulls rp ON rp.repository_id = r.id
                  WHERE r.name > $1 AND r.name LIKE $2 ESCAPE '\\'
                    AND (EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id)
                         OR EXISTS (SELECT 1 FROM repository_blobs b WHERE b.repository_id = r.id))
                  ORDER BY r.name LIMIT $3",
            )
            .bind(after.unwrap_or(""))
            .bind(&pattern)
            .bind(i64::from(n) + 1)
            .fetch_all(p)
            .await
        })?;
        let more = rows.len() > n as usize;
        rows.truncate(n as usize);
        Ok((
            rows.into_iter()
                .map(
                    |(name, artifacts, size, last_push, pulls, last_pull)| RepositorySummary {
                        name,
                        artifacts: artifacts as u64,
                        size: size as u64,
                        last_push,
                        pulls: pulls.unwrap_or(0) as u64,
                        last_pull,
                    },
                )
                .collect(),
            more,
        ))
    }

    /// Tags of repository `repository_id` in name order after `after`, at most
    /// `n`, with what they hold and their pulls, and whether more follow.
    pub async fn tag_summaries(
        &self,
        repository_id: i64,
        after: Option<&str>,
        n: u32,
    ) -> Result<(Vec<TagSummary>, bool)> {
        type Row = (String, String, String, i64, i64, Option<i64>, Option<i64>);
        let mut rows = on_read!(self, "tag_summaries", |p| {
            sqlx::query_as::<_, Row>(
                "SELECT t.name, t.manifest_digest, m.media_type, m.size, t.updated_at,
                        tp.pulls, tp.last_pulled_at
                   FROM tags t
                   JOIN manifests m
                     ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest
                   LEFT JOIN tag_pulls tp ON tp.repository_id = t.repository_id AND tp.tag = t.name
                  WHERE t.repository_id = $1 AND t.name > $2
                  ORDER BY t.name LIMIT $3",
            )
            .bind(repository_id)
            .bind(after.unwrap_or(""))
            .bind(i64::from(n) + 1)
            .fetch_all(p)
            .await
        })?;
        let more = rows.len() > n as usize;
        rows.truncate(n as usize);
        Ok((
            rows.into_iter()
                .map(
                    |(name, digest, media_type, size, pushed_at, pulls, last)| TagSummary {
                        name,
                        digest,
                        media_type,
                        size: size as u64,
                        pushed_at,
                        pulls: pulls.unwrap_or(0) as u64,
                        last_pulled_at: last,
                    },
                )
                .collect(),
            more,
        ))
    }

    /// Audit entries of `action` per day since `since_ms`.
    pub async fn audit_per_day(&self, action: &str, since_ms: i64) -> Result<Vec<DayCount>> {
        self.audit_seal().await?;
        let rows = on_read!(self, "audit_per_day", |p| {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT at / 86400000, COUNT(*) FROM audit_log
                  WHERE action = $1 AND at >= $2
                  GROUP BY at / 86400000 ORDER BY 1",
            )
            .bind(action)
            .bind(since_ms)
            .fetch_all(p)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(day, count)| DayCount {
                day,
                count: count as u64,
            })
            .collect())
    }

    /// Pulls of artifacts grouped by the day they were last pulled, since
    /// `since_ms` (pull statistics keep counts and the last time, not every
    /// pull).
    pub async fn pulls_by_last_day(&self, since_ms: i64) -> Result<Vec<DayCount>> {
        let rows = on_read!(self, "pulls_by_last_day", |p| {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT last_pulled_at / 86400000, CAST(SUM(pulls) AS BIGINT) FROM manifest_pulls
                  WHERE last_pulled_at >= $1
                  GROUP BY last_pulled_at / 86400000 ORDER BY 1",
            )
            .bind(since_ms)
            .fetch_all(p)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(day, count)| DayCount {
                day,
                count: count as u64,
            })
            .collect())
    }

    /// The `n` most pulled repositories.
    pub async fn top_pulled(&self, n: u32) -> Result<Vec<RepositoryPullTotal>> {
        let rows = on_read!(self, "top_pulled", |p| {
            sqlx::query_as::<_, (String, i64, i64, i64)>(
                "SELECT r.name, rp.pulls, rp.bytes_served, rp.last_pulled_at
                   FROM repository_pulls rp JOIN repositories r ON r.id = rp.repository_id
                  ORDER BY rp.pulls DESC, r.name LIMIT $1",
            )
            .bind(i64::from(n))
            .fetch_all(p)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(
                |(name, pulls, bytes_served, last_pulled_at)| RepositoryPullTotal {
                    name,
                    pulls: pulls as u64,
                    bytes_served: bytes_served as u64,
                    last_pulled_at,
                },
            )
            .collect())
    }

    /// Registry-wide counts, in one query.
    pub async fn totals(&self) -> Result<Totals> {
        let (repositories, artifacts, tags, pulls) = on_read!(self, "totals", |p| {
            sqlx::query_as::<_, (i64, i64, i64, i64)>(
                "SELECT (SELECT COUNT(*) FROM repositories),
                        (SELECT COUNT(*) FROM manifests),
                        (SELECT COUNT(*) FROM tags),
                        (SELECT CAST(COALESCE(SUM(pulls), 0) AS BIGINT) FROM repository_pulls)",
            )
            .fetch_one(p)
            .await
        })?;
        Ok(Totals {
            repositories: repositories as u64,
            artifacts: artifacts as u64,
            tags: tags as u64,
            pulls: pulls as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(like_pattern(""), "%%");
        assert_eq!(like_pattern("team/a_b%"), "%team/a\\_b\\%%");
    }
}
