//! Prometheus metrics: what is counted, with which labels, and the text
//! exposition served at `GET /metrics`.
//!
//! One [`Metrics`] per [`crate::App`] (never a process-global recorder), so two
//! servers in one process, as in the tests, count separately. Label values are
//! bounded (see [`labels`]): repositories beyond `metrics.max_repositories`
//! become `other`; tags, digests and raw paths are never labels. Gauges that
//! describe shared state (uploads in progress, database pools) are read at
//! scrape time, because upload sessions live in the database and any replica
//! may hold them.

pub mod labels;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::metadata::{PoolStats, QueryObserver};
use crate::storage::StoreObserver;
use labels::RepoLabels;

/// The commit this binary was built from (`build.rs`), or `unknown`.
pub const GIT_COMMIT: &str = env!("CAIRN_GIT_COMMIT");

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepoLabel {
    repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    repository: String,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request latency buckets: 1 ms to ~33 s, doubling.
fn http_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

/// Storage and database latency buckets: 100 µs to ~3.3 s, doubling.
fn io_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 16,
    ))
}

/// Every metric Cairn exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    repos: RepoLabels,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Histograms<HttpLabels>,
    manifest_pulls: Family<RepoLabel, Counter>,
    blob_pulls: Family<RepoLabel, Counter>,
    served_bytes: Family<RepoLabel, Counter>,
    manifest_pushes: Family<RepoLabel, Counter>,
    blob_uploads: Family<RepoLabel, Counter>,
    denied: Family<DeniedLabels, Counter>,
    uploads_in_progress: Gauge,
    storage_duration: Histograms<OpLabel>,
    storage_errors: Family<OpLabel, Counter>,
    db_duration: Histograms<OpLabel>,
    pool_connections: Family<PoolLabel, Gauge>,
    pool_idle: Family<PoolLabel, Gauge>,
    pool_max: Family<PoolLabel, Gauge>,
    pull_stats_flush_errors: Counter,
    gc_runs: Counter,
    gc_blobs: Counter,
    gc_bytes: Counter,
    retention_deleted: Counter,
    retention_refused: Counter,
}

impl Metrics {
    /// Registers every metric; `max_repositories` caps the repository label.
    pub fn new(max_repositories: usize) -> Metrics {
        let mut registry = Registry::with_prefix("cairn");
        let m = Metrics {
            registry: Registry::default(),
            repos: RepoLabels::new(max_repositories),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(http_buckets),
            manifest_pulls: Family::default(),
            blob_pulls: Family::default(),
            served_bytes: Family::default(),
            manifest_pushes: Family::default(),
            blob_uploads: Family::default(),
            denied: Family::default(),
            uploads_in_progress: Gauge::default(),
            storage_duration: Family::new_with_constructor(io_buckets),
            storage_errors: Family::default(),
            db_duration: Family::new_with_constructor(io_buckets),
            pool_connections: Family::default(),
            pool_idle: Family::default(),
            pool_max: Family::default(),
            pull_stats_flush_errors: Counter::default(),
            gc_runs: Counter::default(),
            gc_blobs: Counter::default(),
            gc_bytes: Counter::default(),
            retention_deleted: Counter::default(),
            retention_refused: Counter::default(),
        };
        registry.register(
            "build",
            "Version and git commit of the running binary",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: GIT_COMMIT,
            }),
        );
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status class",
            m.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to the response head, by method, route template and status class",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        registry.register(
            "manifest_pulls",
            "Manifest GETs answered 200, by repository",
            m.manifest_pulls.clone(),
        );
        registry.register(
            "blob_pulls",
            "Blob GETs answered 200 or 206, by repository",
            m.blob_pulls.clone(),
        );
        registry.register_with_unit(
            "served",
            "Bytes of blob and manifest content sent to clients, by repository",
            Unit::Bytes,
            m.served_bytes.clone(),
        );
        registry.register(
            "manifest_pushes",
            "Manifests stored (PUT answered 201), by repository",
            m.manifest_pushes.clone(),
        );
        registry.register(
            "blob_uploads",
            "Blobs added to a repository (uploads completed and mounts), by repository",
            m.blob_uploads.clone(),
        );
        registry.register(
            "tag_overwrites_denied",
            "Pushes and deletes refused because an immutable tag would change, by repository and operation (push, delete)",
            m.denied.clone(),
        );
        registry.register(
            "uploads_in_progress",
            "Upload sessions that have received a chunk (all replicas), read at scrape time",
            m.uploads_in_progress.clone(),
        );
        registry.register_with_unit(
            "storage_operation_duration",
            "Duration of blob store operations, by operation",
            Unit::Seconds,
            m.storage_duration.clone(),
        );
        registry.register(
            "storage_operation_errors",
            "Failed blob store operations, by operation",
            m.storage_errors.clone(),
        );
        registry.register_with_unit(
            "db_query_duration",
            "Duration of database queries, by metadata operation",
            Unit::Seconds,
            m.db_duration.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Open database connections, by pool",
            m.pool_connections.clone(),
        );
        registry.register(
            "db_pool_idle_connections",
            "Idle database connections, by pool",
            m.pool_idle.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Configured maximum database connections, by pool",
            m.pool_max.clone(),
        );
        registry.register(
            "pull_stats_flush_errors",
            "Failed writes of pull statistics to the database (the counts are kept for the next try)",
            m.pull_stats_flush_errors.clone(),
        );
        registry.register(
            "gc_runs",
            "Garbage collections run by this process (schedule or API)",
            m.gc_runs.clone(),
        );
        registry.register(
            "gc_reclaimed_blobs",
            "Unreferenced blobs deleted by garbage collection",
            m.gc_blobs.clone(),
        );
        registry.register_with_unit(
            "gc_reclaimed",
            "Bytes of unreferenced blobs deleted by garbage collection",
            Unit::Bytes,
            m.gc_bytes.clone(),
        );
        registry.register(
            "retention_deleted_artifacts",
            "Manifests deleted by retention",
            m.retention_deleted.clone(),
        );
        registry.register(
            "retention_refused_artifacts",
            "Planned deletions retention refused at apply time (protected or still listed)",
            m.retention_refused.clone(),
        );
        Metrics { registry, ..m }
    }

    fn repo(&self, repo: &str) -> RepoLabel {
        RepoLabel {
            repository: self.repos.label(repo),
        }
    }

    /// One HTTP request: `route` is a template, never a raw path.
    pub fn http_request(
        &self,
        method: &http::Method,
        route: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let l = HttpLabels {
            method: labels::method(method),
            route,
            status: labels::status_class(status),
        };
        self.http_requests.get_or_create(&l).inc();
        self.http_duration
            .get_or_create(&l)
            .observe(elapsed.as_secs_f64());
    }

    pub fn manifest_pulled(&self, repo: &str, bytes: u64) {
        let l = self.repo(repo);
        self.manifest_pulls.get_or_create(&l).inc();
        self.served_bytes.get_or_create(&l).inc_by(bytes);
    }

    /// Counts a blob pull; returns the repository's bytes counter, which the
    /// caller increases as the body is sent.
    pub fn blob_pulled(&self, repo: &str) -> Counter<u64, AtomicU64> {
        let l = self.repo(repo);
        self.blob_pulls.get_or_create(&l).inc();
        self.served_bytes.get_or_create_owned(&l)
    }

    pub fn manifest_pushed(&self, repo: &str) {
        self.manifest_pushes.get_or_create(&self.repo(repo)).inc();
    }

    pub fn blob_uploaded(&self, repo: &str) {
        self.blob_uploads.get_or_create(&self.repo(repo)).inc();
    }

    /// An immutability refusal (`operation`: `push` or `delete`).
    pub fn denied(&self, repo: &str, operation: &'static str) {
        let l = DeniedLabels {
            repository: self.repos.label(repo),
            operation,
        };
        self.denied.get_or_create(&l).inc();
    }

    pub fn pull_stats_flush_failed(&self) {
        self.pull_stats_flush_errors.inc();
    }

    /// One finished (not dry) garbage collection.
    pub fn gc_finished(&self, blobs: u64, bytes: u64) {
        self.gc_runs.inc();
        self.gc_blobs.inc_by(blobs);
        self.gc_bytes.inc_by(bytes);
    }

    /// One applied retention plan.
    pub fn retention_applied(&self, deleted: u64, refused: u64) {
        self.retention_deleted.inc_by(deleted);
        self.retention_refused.inc_by(refused);
    }

    /// The text exposition, after setting the scrape-time gauges
    /// (`uploads`: `None` when the database could not be asked).
    pub fn encode(&self, uploads: Option<u64>, pools: &[PoolStats]) -> String {
        if let Some(n) = uploads {
            self.uploads_in_progress.set(n as i64);
        }
        for p in pools {
            let l = PoolLabel { pool: p.pool };
            self.pool_connections
                .get_or_create(&l)
                .set(i64::from(p.size));
            self.pool_idle.get_or_create(&l).set(i64::from(p.idle));
            self.pool_max.get_or_create(&l).set(i64::from(p.max));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl StoreObserver for Metrics {
    fn operation(&self, operation: &'static str, elapsed: Duration, ok: bool) {
        let l = OpLabel { operation };
        self.storage_duration
            .get_or_create(&l)
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.storage_errors.get_or_create(&l).inc();
        }
    }
}

impl QueryObserver for Metrics {
    fn query(&self, operation: &'static str, elapsed: Duration) {
        self.db_duration
            .get_or_create(&OpLabel { operation })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new(1);
        m.http_request(
            &http::Method::GET,
            "/v2/{name}/blobs/{digest}",
            200,
            Duration::from_millis(3),
        );
        m.manifest_pulled("a", 10);
        m.manifest_pulled("b", 5);
        m.blob_pulled("a").inc_by(7);
        m.denied("a", "push");
        let text = m.encode(Some(2), &[]);
        for line in [
            "cairn_manifest_pulls_total{repository=\"a\"} 1",
            "cairn_manifest_pulls_total{repository=\"other\"} 1",
            "cairn_served_bytes_total{repository=\"a\"} 17",
            "cairn_blob_pulls_total{repository=\"a\"} 1",
            "cairn_tag_overwrites_denied_total{repository=\"a\",operation=\"push\"} 1",
            "cairn_uploads_in_progress 2",
            "cairn_http_requests_total{method=\"GET\",route=\"/v2/{name}/blobs/{digest}\",status=\"2xx\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("cairn_http_request_duration_seconds_bucket{"));
        assert!(text.contains("cairn_build_info{version=\""));
    }
}
