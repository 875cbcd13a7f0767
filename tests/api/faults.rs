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
