//! Cairn: an OCI registry whose published artifacts never change.
//!
//! `api → service → {storage, metadata}`, with `domain` values shared by all.
//! [`App::build`] wires them from a [`Config`]; `main.rs` and the tests both use it.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod metadata;
pub mod metrics;
pub mod policy;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;

pub use config::Config;
use metadata::{DbOptions, Metadata};
use metrics::Metrics;
use service::{PullStats, Registry};
use storage::MeteredStore;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A built registry: listener bound, database migrated, ready to serve.
pub struct App {
    listener: TcpListener,
    router: Router,
    /// `metrics.listen`: a second listener serving only `/metrics`.
    metrics_server: Option<(TcpListener, Router)>,
    registry: Registry,
    pulls: Option<Arc<PullStats>>,
    pull_stats_flush: Duration,
    shutdown_timeout: Duration,
    /// Idle upload sessions are cancelled after this long (zero: never).
    upload_expiry: Duration,
    gc: config::GcConfig,
    /// Scheduled retention runs (zero: none).
    retention_every: Duration,
    metrics: Option<Arc<Metrics>>,
    http: HttpOptions,
}

/// Connection-level limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
struct HttpOptions {
    header_read_timeout: Duration,
    max_header_bytes: usize,
}

/// Serves `router` on `listener` until `shutdown`, then waits for open
/// connections to finish their requests. HTTP/1.1 (and h2c), with a deadline
/// for reading request headers (slow-loris) and a cap on their size (431).
async fn serve_http(
    listener: TcpListener,
    router: Router,
    opts: HttpOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        // hyper's floor for this buffer is 8 KiB.
        .max_buf_size(opts.max_header_bytes.max(8192));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Responses are written as they stream; without TCP_NODELAY a small
        // body's last segment waits ~40 ms for the client's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(addr));
                router.clone().oneshot(req.map(axum::body::Body::new))
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Runs a scheduled `job` unless another replica is running it right now (see
/// `metadata::jobs`): `None` when it was skipped, because the lock was held
/// elsewhere or could not be asked for.
/// Chains pending audit entries soon after they are written (readers of the
/// trail seal for themselves; this keeps the pending table short). Polls a
/// cheap read, so replicas and CLI commands' entries are sealed too.
async fn seal_audit(registry: Registry) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let meta = registry.metadata();
        match meta.audit_pending().await {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                tracing::debug!(error = %e, "could not look for pending audit entries");
                continue;
            }
        }
        if let Err(e) = meta.audit_seal().await {
            tracing::warn!(error = %e, "could not seal the audit trail");
        }
    }
}

async fn exclusively<T>(
    registry: &Registry,
    job: metadata::Job,
    run: impl Future<Output = T>,
) -> Option<T> {
    let lock = match registry.metadata().try_job_lock(job).await {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            tracing::debug!(job = job.as_str(), "running on another replica; skipped");
            return None;
        }
        Err(e) => {
            tracing::warn!(job = job.as_str(), error = %e, "could not take the job lock; skipped");
            return None;
        }
    };
    let result = run.await;
    if let Err(e) = lock.release().await {
        tracing::warn!(job = job.as_str(), error = %e, "could not release the job lock");
    }
    Some(result)
}

/// Connects to the database named in `config` and applies migrations.
pub async fn open_metadata(config: &Config) -> anyhow::Result<Metadata> {
    let meta = Metadata::connect(&DbOptions {
        url: config.database.url.clone(),
        max_connections: config.database.max_connections,
        acquire_timeout: config.acquire_timeout(),
    })
    .await?;
    meta.migrate().await?;
    Ok(meta)
}

/// The registry's service layer without a listener, for the subcommands that
/// work on the database and storage directly (`cairn gc`, `cairn retention …`).
pub async fn build_registry(config: &Config) -> anyhow::Result<Registry> {
    let meta = open_metadata(config).await?;
    let blobs = MeteredStore::new(config.blob_store()?, None);
    Ok(Registry::new(
        meta,
        blobs,
        config.limits(),
        config.rules()?,
        config.retention()?,
    ))
}

impl App {
    /// Binds the listener first (so tests can ask for port 0 and learn the port),
    /// then opens the database and the object store.
    pub async fn build(config: &Config) -> anyhow::Result<App> {
        let rules = config.rules()?;
        let listener = TcpListener::bind(config.listen).await?;
        let metrics_listener = match (config.metrics.enabled, config.metrics.listen) {
            (true, Some(addr)) => Some(TcpListener::bind(addr).await?),
            _ => None,
        };
        let metrics = config
            .metrics
            .enabled
            .then(|| Arc::new(Metrics::new(config.metrics.max_repositories)));
        let mut meta = open_metadata(config).await?;
        meta.warm().await?;
        if let Some(m) = &metrics {
            meta = meta.with_observer(m.clone());
        }
        let blobs = MeteredStore::new(
            config.blob_store()?,
            metrics
                .clone()
                .map(|m| m as Arc<dyn storage::StoreObserver>),
        );
        let pulls = config.metrics.pull_stats.then(|| {
            let on_failure = metrics
                .clone()
                .map(|m| Box::new(move || m.pull_stats_flush_failed()) as service::FlushFailed);
            Arc::new(PullStats::new(meta.clone(), on_failure))
        });
        let auth =
            Arc::new(auth::Auth::new(meta.clone(), &config.auth, listener.local_addr()?).await?);
        let registry = Registry::new(meta, blobs, config.limits(), rules, config.retention()?);
        registry.record_policy(config.policy_document()).await?;
        let state = api::AppState {
            registry: registry.clone(),
            metrics: metrics.clone(),
            pulls: pulls.clone(),
            gc_grace: Duration::from_secs(config.gc.grace_secs),
            max_requests_per_client: config.limits.max_requests_per_client,
            auth,
        };
        let metrics_server = metrics_listener.map(|l| (l, api::metrics_router(state.clone())));
        let router = api::router(state, config.metrics.enabled && metrics_server.is_none())
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(SetResponseHeaderLayer::overriding(
                HeaderName::from_static("docker-distribution-api-version"),
                HeaderValue::from_static("registry/2.0"),
            ));
        Ok(App {
            listener,
            router,
            metrics_server,
            registry,
            pulls,
            pull_stats_flush: Duration::from_secs(config.metrics.pull_stats_flush_secs.max(1)),
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
            upload_expiry: Duration::from_secs(config.limits.upload_expiry_secs),
            gc: config.gc.clone(),
            retention_every: Duration::from_secs(config.retention.apply_interval_secs),
            metrics,
            http: HttpOptions {
                header_read_timeout: Duration::from_secs(
                    config.limits.header_read_timeout_secs.max(1),
                ),
                max_header_bytes: config.limits.max_header_bytes,
            },
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the separate metrics listener, if `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish
    /// (up to the configured timeout), writes the pending pull statistics and
    /// closes the database. Pull statistics are flushed in the background
    /// meanwhile.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let flusher = self
            .pulls
            .clone()
            .map(|p| tokio::spawn(p.flush_every(self.pull_stats_flush)));
        // The metrics listener has no in-flight work worth draining: it stops
        // with the main server.
        let metrics_server = self.metrics_server.map(|(l, router)| {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, router).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            })
        });
        let janitor = (self.upload_expiry > Duration::ZERO).then(|| {
            let registry = self.registry.clone();
            let ttl = self.upload_expiry;
            // Often enough that a session outlives its expiry by at most a quarter.
            let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let Some(expired) = exclusively(
                        &registry,
                        metadata::Job::UploadExpiry,
                        registry.expire_uploads(ttl),
                    )
                    .await
                    else {
                        continue;
                    };
                    match expired {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(expired = n, "cancelled idle upload sessions"),
                        Err(e) => tracing::warn!(error = %e, "could not expire idle uploads"),
                    }
                }
            })
        });
        let mut jobs = vec![tokio::spawn(seal_audit(self.registry.clone()))];
        if self.gc.interval_secs > 0 {
            let registry = self.registry.clone();
            let grace = Duration::from_secs(self.gc.grace_secs);
            let every = Duration::from_secs(self.gc.interval_secs);
            let metrics = self.metrics.clone();
            jobs.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    let Some(collected) = exclusively(
                        &registry,
                        metadata::Job::GarbageCollection,
                        registry.collect_garbage(grace, Duration::ZERO, false, |_, _| {}),
                    )
                    .await
                    else {
                        continue;
                    };
                    match collected {
                        Ok(r) => {
                            if let Some(m) = &metrics {
                                m.gc_finished(r.blobs, r.bytes);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
                    }
                }
            }));
        }
        if self.retention_every > Duration::ZERO {
            let registry = self.registry.clone();
            let every = self.retention_every;
            let metrics = self.metrics.clone();
            jobs.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                let origin = metadata::Origin::system("retention");
                loop {
                    tick.tick().await;
                    let Some(applied) = exclusively(&registry, metadata::Job::Retention, async {
                        let plan = registry.retention_plan(None, &origin).await?;
                        registry.retention_apply(&plan.id, &origin, |_, _| {}).await
                    })
                    .await
                    else {
                        continue;
                    };
                    if let (Ok(r), Some(m)) = (&applied, &metrics) {
                        m.retention_applied(r.deleted.len() as u64, r.refused.len() as u64);
                    }
                    match applied {
                        Ok(r) => tracing::info!(
                            plan = %r.plan,
                            deleted = r.deleted.len(),
                            refused = r.refused.len(),
                            "scheduled retention applied"
                        ),
                        Err(e) => tracing::warn!(error = %e, "scheduled retention failed"),
                    }
                }
            }));
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let signalled = async move {
            shutdown.await;
            let _ = tx.send(());
        };
        let serve = serve_http(self.listener, self.router, self.http, signalled);
        let timeout = self.shutdown_timeout;
        let result = tokio::select! {
            r = serve => r,
            _ = async { let _ = rx.await; tokio::time::sleep(timeout).await } => {
                tracing::warn!("in-flight requests did not finish within the shutdown timeout");
                Ok(())
            }
        };
        if let Some(m) = metrics_server {
            m.abort();
        }
        if let Some(j) = janitor {
            j.abort();
        }
        for job in jobs {
            job.abort();
        }
        if let Some(p) = &self.pulls {
            p.stop();
            if let Some(f) = flusher {
                let _ = f.await;
            }
            if let Err(e) = p.flush().await {
                tracing::warn!(error = %e, "could not write pull statistics at shutdown");
            }
        }
        if let Err(e) = self.registry.metadata().audit_seal().await {
            tracing::warn!(error = %e, "could not seal the audit trail at shutdown");
        }
        self.registry.metadata().close().await;
        result
    }
}
