//! Statistics use cases: a repository's manifests with their pull statistics
//! and its totals (the artifacts API), and what the metrics scrape reads from
//! the database.

use super::{Error, Registry, Result};
use crate::domain::RepoName;
use crate::metadata::{ArtifactSort, ArtifactStats, PoolStats, RepositoryStats};

/// A page of artifacts and whether more follow.
#[derive(Debug, Clone)]
pub struct ArtifactPage {
    pub items: Vec<ArtifactStats>,
    pub more: bool,
}

impl Registry {
    /// `repo`'s manifests sorted by `sort`, at most `n` (capped by
    /// `limits.max_page`) from `offset`.
    pub async fn artifacts(
        &self,
        repo: &RepoName,
        sort: ArtifactSort,
        descending: bool,
        n: Option<u32>,
        offset: u64,
    ) -> Result<ArtifactPage> {
        let max = self.limits().max_page;
        let n = n.unwrap_or(max).min(max);
        let (items, more) = self
            .metadata()
            .artifacts(repo, sort, descending, n, offset)
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.clone()))?;
        Ok(ArtifactPage { items, more })
    }

    /// `repo`'s manifest and tag counts and pull totals.
    pub async fn repository_stats(&self, repo: &RepoName) -> Result<RepositoryStats> {
        self.metadata()
            .repository_stats(repo)
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.clone()))
    }

    /// Upload sessions that have received a chunk (every replica's); an
    /// opened session without one has no row.
    pub async fn uploads_in_progress(&self) -> Result<u64> {
        Ok(self.metadata().count_uploads().await?)
    }

    /// The database pools' connection counts.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        self.metadata().pool_stats()
    }
}
