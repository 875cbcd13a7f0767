//! What the web console asks of the registry beyond the JSON API's use cases:
//! pages of repositories and tags with their totals, an image's config, and
//! the activity the dashboard draws. Reads only.

use futures::TryStreamExt;

use super::{Error, Registry, Result};
use crate::domain::{Digest, RepoName};
use crate::metadata::{
    now_ms, DayCount, RepositoryPullTotal, RepositorySummary, TagSummary, Totals, DAY_MS,
};

/// Configs larger than this are not read for their labels.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A page of rows and whether more follow.
#[derive(Debug, Clone)]
pub struct ConsolePage<T> {
    pub items: Vec<T>,
    pub more: bool,
}

/// What the dashboard draws.
#[derive(Debug, Clone)]
pub struct Activity {
    /// The first day shown (Unix milliseconds / `DAY_MS`).
    pub first_day: i64,
    pub days: u32,
    /// `manifest.push` audit entries per day.
    pub pushes: Vec<DayCount>,
    /// Pulls of artifacts, by the day each was last pulled.
    pub pulls: Vec<DayCount>,
    pub top: Vec<RepositoryPullTotal>,
    pub totals: Totals,
}

impl Registry {
    fn console_page(&self, n: Option<u32>) -> u32 {
        n.unwrap_or(50).clamp(1, self.limits().max_page.max(1))
    }

    /// Repositories whose name contains `search`, after `after`, in name order.
    pub async fn repository_summaries(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        n: Option<u32>,
    ) -> Result<ConsolePage<RepositorySummary>> {
        let (items, more) = self
            .metadata()
            .repository_summaries(search, after, self.console_page(n))
            .await?;
        Ok(ConsolePage { items, more })
    }

    /// `repo`'s tags after `after`, with what they hold and their pulls.
    pub async fn tag_summaries(
        &self,
        repo: &RepoName,
        after: Option<&str>,
        n: Option<u32>,
    ) -> Result<ConsolePage<TagSummary>> {
        let id = self
            .metadata()
            .repository_id(repo)
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.clone()))?;
        let (items, more) = self
            .metadata()
            .tag_summaries(id, after, self.console_page(n))
            .await?;
        Ok(ConsolePage { items, more })
    }

    /// Tags of `repo` that point at `digest` now.
    pub async fn tags_of(&self, repo: &RepoName, digest: &str) -> Result<Vec<String>> {
        let id = self
            .metadata()
            .repository_id(repo)
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.clone()))?;
        Ok(self.metadata().tags_of(id, digest).await?)
    }

    /// An image config as JSON, if `repo` serves it, it is at most
    /// `MAX_CONFIG_BYTES` and it parses; `None` otherwise.
    pub async fn image_config(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<serde_json::Value>> {
        let blob = match self.blob(repo, digest).await {
            Ok(b) => b,
            Err(Error::BlobUnknown(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if blob.size > MAX_CONFIG_BYTES {
            return Ok(None);
        }
        let chunks: Vec<bytes::Bytes> = self.blob_stream(&blob, None).await?.try_collect().await?;
        Ok(serde_json::from_slice(&chunks.concat()).ok())
    }

    /// Pushes and pulls over the last `days` days, the most pulled
    /// repositories and registry-wide totals.
    pub async fn activity(&self, days: u32) -> Result<Activity> {
        let today = now_ms() / DAY_MS;
        let first_day = today - i64::from(days) + 1;
        let since = first_day * DAY_MS;
        let meta = self.metadata();
        Ok(Activity {
            first_day,
            days,
            pushes: meta.audit_per_day("manifest.push", since).await?,
            pulls: meta.pulls_by_last_day(since).await?,
            top: meta.top_pulled(10).await?,
            totals: meta.totals().await?,
        })
    }
}
