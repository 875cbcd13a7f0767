//! Pull statistics (per manifest digest, per tag, per repository), counted in
//! memory on the pull path and written to the database in batches.
//!
//! A pull never waits for the database because of this: recording is a short
//! mutex-guarded map update. A background task ([`PullStats::flush_every`])
//! adds the counts to the database every `metrics.pull_stats_flush_secs`, and
//! [`crate::App::run`] flushes once more on graceful shutdown, so a crash loses
//! at most one interval. A failed flush keeps its counts for the next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::metadata::{self, Metadata, RepositoryPulls};

/// Called when a flush fails (the metrics layer counts them).
pub type FlushFailed = Box<dyn Fn() + Send + Sync>;

/// The in-memory aggregate and its flusher.
pub struct PullStats {
    meta: Metadata,
    pending: Mutex<HashMap<String, RepositoryPulls>>,
    stop: Notify,
    on_failure: Option<FlushFailed>,
}

impl PullStats {
    pub fn new(meta: Metadata, on_failure: Option<FlushFailed>) -> PullStats {
        PullStats {
            meta,
            pending: Mutex::new(HashMap::new()),
            stop: Notify::new(),
            on_failure,
        }
    }

    /// Applies `f` to `repo`'s pending counts.
    fn with(&self, repo: &str, f: impl FnOnce(&mut RepositoryPulls, i64)) {
        let now = metadata::now_ms();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let r = match pending.get_mut(repo) {
            Some(r) => r,
            None => pending.entry(repo.to_string()).or_default(),
        };
        r.last_pulled_at = r.last_pulled_at.max(now);
        f(r, now);
    }

    /// A manifest GET of `digest`; `tag` when the client named one.
    pub fn manifest_pulled(&self, repo: &str, digest: &str, tag: Option<&str>) {
        self.with(repo, |r, now| {
            r.manifests_total += 1;
            match r.manifests.get_mut(digest) {
                Some(c) => c.add(1, now),
                None => r
                    .manifests
                    .entry(digest.to_string())
                    .or_default()
                    .add(1, now),
            }
            if let Some(t) = tag {
                match r.tags.get_mut(t) {
                    Some(c) => c.add(1, now),
                    None => r.tags.entry(t.to_string()).or_default().add(1, now),
                }
            }
        });
    }

    /// A blob GET that sent `bytes` bytes.
    pub fn blob_pulled(&self, repo: &str, bytes: u64) {
        self.with(repo, |r, _| {
            r.blob_pulls += 1;
            r.bytes_served += bytes;
        });
    }

    /// Writes the pending counts to the database. On failure they are merged
    /// back and the next flush retries them.
    pub async fn flush(&self) -> Result<(), metadata::Error> {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        match self.meta.add_pulls(&batch).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Some(f) = &self.on_failure {
                    f();
                }
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                for (repo, counts) in batch {
                    pending.entry(repo).or_default().merge(counts);
                }
                Err(e)
            }
        }
    }

    /// Flushes every `interval` until [`PullStats::stop`]; a flush in progress
    /// completes first. The caller flushes once more afterwards.
    pub async fn flush_every(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.flush().await {
                        tracing::warn!(error = %e, "could not write pull statistics; will retry");
                    }
                }
                _ = self.stop.notified() => return,
            }
        }
    }

    /// Ends [`PullStats::flush_every`].
    pub fn stop(&self) {
        self.stop.notify_one();
    }
}
