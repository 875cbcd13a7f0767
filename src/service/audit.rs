//! The auditor's use cases: query, export and verify the audit trail.

use futures::stream::{self, Stream};
use futures::TryStreamExt;

use super::{Registry, Result};
use crate::metadata::{AuditEntry, AuditQuery, AuditRecord, Origin, VerifyReport};

/// Rows fetched per query while exporting.
const EXPORT_BATCH: u32 = 1000;

impl Registry {
    /// One page of audit entries matching `q` (`q.limit` capped at the
    /// listing page limit).
    pub async fn audit(&self, mut q: AuditQuery) -> Result<Vec<AuditRecord>> {
        q.limit = q.limit.clamp(1, self.limits().max_page);
        Ok(self.metadata().audit(&q).await?)
    }

    /// Every entry matching `q`, oldest first, fetched in batches as the
    /// consumer reads (an export of millions of rows holds one batch in memory).
    pub fn audit_export(
        &self,
        mut q: AuditQuery,
    ) -> impl Stream<Item = Result<AuditRecord>> + Send + 'static {
        q.ascending = true;
        q.limit = EXPORT_BATCH;
        let meta = self.metadata().clone();
        stream::try_unfold(Some(q), move |state| {
            let meta = meta.clone();
            async move {
                let Some(q) = state else {
                    return Ok(None);
                };
                let rows = meta.audit(&q).await.map_err(super::Error::from)?;
                let next = match rows.last() {
                    Some(last) if rows.len() as u32 == EXPORT_BATCH => Some(AuditQuery {
                        cursor: Some(last.id),
                        ..q
                    }),
                    _ => None,
                };
                Ok::<_, super::Error>(Some((stream::iter(rows.into_iter().map(Ok)), next)))
            }
        })
        .try_flatten()
    }

    /// Recomputes the hash chain (see `metadata::audit`).
    pub async fn audit_verify(&self, progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
        Ok(self.metadata().audit_verify(progress).await?)
    }
}

impl Registry {
    /// Records the policies in force (immutability, retention) when they differ
    /// from the last ones recorded: a policy change shows in the trail at the
    /// first start that applies it, with a digest of the whole document.
    pub async fn record_policy(&self, policy: serde_json::Value) -> Result<bool> {
        use sha2::Digest as _;
        let digest = format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(policy.to_string().as_bytes()))
        );
        let last = self
            .metadata()
            .audit(&AuditQuery {
                action: Some("policy.change".into()),
                limit: 1,
                ..AuditQuery::default()
            })
            .await?;
        if last.first().and_then(|r| r.digest.as_deref()) == Some(digest.as_str()) {
            return Ok(false);
        }
        let entry = AuditEntry::global("policy.change")
            .digest(digest)
            .detail(policy);
        self.metadata()
            .audit_append(&Origin::system("config"), &[entry])
            .await?;
        Ok(true)
    }
}
