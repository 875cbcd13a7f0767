//! Cairn: an OCI registry whose published artifacts never change.
//!
//! `api → service → {storage, metadata}`, with `domain` values shared by all.
//! [`App::build`] wires them from a [`Config`]; `main.rs` and the tests both use it.

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod metadata;
pub mod policy;
pub mod service;
pub mod storage;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Request};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use config::Config;
use metadata::{DbOptions, Metadata};
use service::Registry;
use storage::BlobStore;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A built registry: listener bound, database migrated, ready to serve.
pub struct App {
    listener: TcpListener,
    router: Router,
    registry: Registry,
    shutdown_timeout: Duration,
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

impl App {
    /// Binds the listener first (so tests can ask for port 0 and learn the port),
    /// then opens the database and the object store.
    pub async fn build(config: &Config) -> anyhow::Result<App> {
        let rules = config.rules()?;
        let listener = TcpListener::bind(config.listen).await?;
        let meta = open_metadata(config).await?;
        let blobs = BlobStore::open(&config.storage_url()?)?;
        let registry = Registry::new(meta, blobs, config.limits(), rules);
        let router = api::router(api::AppState {
            registry: registry.clone(),
        })
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = %id,
                        route = tracing::field::Empty,
                        repository = tracing::field::Empty,
                    )
                })
                // One line per request at INFO: method, path, route, status, latency.
                .on_request(DefaultOnRequest::new().level(Level::DEBUG))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        ));
        Ok(App {
            listener,
            router,
            registry,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish
    /// (up to the configured timeout) and closes the database.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let signalled = async move {
            shutdown.await;
            let _ = tx.send(());
        };
        // Responses are written as they stream; without TCP_NODELAY a small body's
        // last segment waits ~40 ms for the client's delayed ACK.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "could not set TCP_NODELAY");
            }
        });
        let serve = axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signalled);
        let timeout = self.shutdown_timeout;
        let result = tokio::select! {
            r = serve => r,
            _ = async { let _ = rx.await; tokio::time::sleep(timeout).await } => {
                tracing::warn!("in-flight requests did not finish within the shutdown timeout");
                Ok(())
            }
        };
        self.registry.metadata().close().await;
        result
    }
}
