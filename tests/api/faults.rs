//! Faults below the registry: the database connection drops and stays away for
//! a while (as when PostgreSQL restarts). Requests in flight fail with a
//! retryable 503 within the acquire timeout, none hangs, `/readyz` says so, and
//! the registry recovers by itself when the database is back.

use std::time::{Duration, Instant};

use crate::helpers::{error_code, Db, TestApp};
use crate::proxy::Proxy;

#[tokio::test]
async fn the_database_going_away_is_a_503_and_recovery_is_automatic() {
    let admin = url::Url::parse(&crate::helpers::postgres_admin_url()).unwrap();
    let upstream = format!(
        "{}:{}",
        admin.host_str().unwrap(),
        admin.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(upstream).await;
    let port = proxy.port;
    let app = TestApp::spawn_with(Db::Postgres, move |c| {
        let mut u = url::Url::parse(&c.database.url).unwrap();
        u.set_port(Some(port)).unwrap();
        c.database.url = u.to_string();
        c.database.acquire_timeout_secs = 2;
        c.metrics.pull_stats = false;
    })
    .await;
    let (_, digest) = app.push_image("faults/app", "v1", b"layer").await;
    assert_eq!(app.get("/readyz").await.status(), 200);

    proxy.cut();
    // Reads and writes fail fast and retryably; nothing hangs.
    for path in [
        "/v2/faults/app/manifests/v1".to_string(),
        format!("/v2/faults/app/blobs/{digest}"),
        "/v2/faults/app/tags/list".to_string(),
    ] {
        let started = Instant::now();
        let r = app.get(&path).await;
        assert!(started.elapsed() < Duration::from_secs(10), "{path} hung");
        assert_eq!(r.status(), 503, "{path}");
        assert_eq!(error_code(r).await, "UNAVAILABLE");
    }
    let started = Instant::now();
    let r = app
        .req(reqwest::Method::POST, "/v2/faults/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(r.status(), 503);
    assert_eq!(app.get("/readyz").await.status(), 503);
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "the process itself is fine"
    );

    proxy.restore();
    // Back by itself: the pool opens new connections.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = app.get("/v2/faults/app/manifests/v1").await;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover: {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.get("/readyz").await.status(), 200);
    app.push_image("faults/app", "v2", b"after the outage")
        .await;
    let v: serde_json::Value = app.get("/api/v1/audit/verify").await.json().await.unwrap();
    assert!(v["broken"].is_null(), "{v}");
}

/// The database ends every session of the registry while it is idle (an
/// administrator's `pg_terminate_backend`, a failover, a pooler's idle
/// timeout) and says nothing more. The registry finds the dead connections
/// before using them: the next requests succeed, none answers 503.
#[tokio::test]
async fn connections_the_database_dropped_while_idle_are_replaced_before_use() {
    use sqlx::Connection as _;
    let app = TestApp::spawn_with(Db::Postgres, |c| c.metrics.pull_stats = false).await;
    let (_, digest) = app.push_image("faults/idle", "v1", b"layer one").await;
    let db = url::Url::parse(&app.config.database.url).unwrap();
    let db = db.path().trim_start_matches('/').to_string();
    let mut admin = sqlx::PgConnection::connect(&crate::helpers::postgres_admin_url())
        .await
        .unwrap();
    let ended: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!ended.is_empty(), "the registry held no connection to end");
    // Idle a little longer than the ping threshold, as after a real drop.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = app.get("/v2/faults/idle/manifests/v1").await;
    assert_eq!(r.status(), 200);
    let r = app
        .get(&format!("/v2/faults/idle/manifests/{digest}"))
        .await;
    assert_eq!(r.status(), 200);
    // The push path's own connections (and its one-statement changes).
    app.push_image("faults/idle", "v2", b"layer two").await;
    let r = app.get("/v2/faults/idle/tags/list").await;
    assert_eq!(r.status(), 200);
    let tags: serde_json::Value = r.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1", "v2"]));
}
