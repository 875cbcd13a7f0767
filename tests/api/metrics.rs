//! Metrics and pull statistics as an operator sees them: `/metrics` counters
//! moving by exactly what was pulled and pushed, the repository label cap,
//! pull statistics that outlive the process (flushed periodically and at
//! shutdown, never on the pull path), the artifacts API, and the metrics
//! configuration (separate listener, disabled).

use std::time::Duration;

use cairn::{App, Config};
use reqwest::Method;
use serde_json::Value;

use crate::both;
use crate::helpers::{error_code, image_manifest, sha256, TestApp, OCI_MANIFEST};

async fn scrape(app: &TestApp) -> String {
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    r.text().await.unwrap()
}

/// The value of one series (`name{labels}` exactly as exposed); 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

fn repo_series(name: &str, repo: &str) -> String {
    format!("{name}{{repository=\"{repo}\"}}")
}

fn fast_flush(c: &mut Config) {
    c.metrics.pull_stats_flush_secs = 1;
}

fn two_repositories(c: &mut Config) {
    c.metrics.max_repositories = 2;
}

/// GETs `path` and returns the body's length, checking the status.
async fn pull(app: &TestApp, path: &str, status: u16) -> usize {
    let r = app.get(path).await;
    assert_eq!(r.status(), status, "GET {path}");
    r.bytes().await.unwrap().len()
}

async fn pulls_move_the_counters_by_exactly_what_was_served(app: TestApp) {
    let repo = "team/app";
    let layer = vec![7u8; 4096];
    let (m, digest) = app.push_image(repo, "v1", &layer).await;
    let layer_digest = sha256(&layer);
    let before = scrape(&app).await;
    // Pushes so far: two blobs (config, layer) and one manifest.
    assert_eq!(
        value(&before, &repo_series("cairn_blob_uploads_total", repo)),
        2.0
    );
    assert_eq!(
        value(&before, &repo_series("cairn_manifest_pushes_total", repo)),
        1.0
    );

    assert_eq!(
        pull(&app, &format!("/v2/{repo}/manifests/v1"), 200).await,
        m.len()
    );
    assert_eq!(
        pull(&app, &format!("/v2/{repo}/manifests/v1"), 200).await,
        m.len()
    );
    assert_eq!(
        pull(&app, &format!("/v2/{repo}/manifests/{digest}"), 200).await,
        m.len()
    );
    // HEAD is not a pull; a miss is not a pull.
    assert_eq!(
        app.head(&format!("/v2/{repo}/manifests/v1")).await.status(),
        200
    );
    pull(&app, &format!("/v2/{repo}/manifests/nope"), 404).await;
    assert_eq!(
        pull(&app, &format!("/v2/{repo}/blobs/{layer_digest}"), 200).await,
        4096
    );
    assert_eq!(
        pull(&app, &format!("/v2/{repo}/blobs/{layer_digest}"), 200).await,
        4096
    );
    let r = app
        .req(Method::GET, &format!("/v2/{repo}/blobs/{layer_digest}"))
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().len(), 10);
    assert_eq!(
        app.head(&format!("/v2/{repo}/blobs/{layer_digest}"))
            .await
            .status(),
        200
    );

    // An immutable tag overwrite is refused and counted.
    let config = br#"{"architecture":"arm64","os":"linux"}"#;
    let cd = app.push_blob(repo, config).await;
    let other = image_manifest(
        &cd,
        config.len(),
        &[(layer_digest.clone(), 4096)],
        None,
        None,
    );
    let r = app.put_manifest(repo, "v1", OCI_MANIFEST, &other).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "DENIED");
    // An upload in progress: opened, and holding a chunk.
    let r = app
        .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let r = app
        .req(Method::PATCH, &location)
        .header("Content-Type", "application/octet-stream")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let after = scrape(&app).await;
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(delta(&repo_series("cairn_manifest_pulls_total", repo)), 3.0);
    assert_eq!(delta(&repo_series("cairn_blob_pulls_total", repo)), 3.0);
    assert_eq!(
        delta(&repo_series("cairn_served_bytes_total", repo)),
        (3 * m.len() + 2 * 4096 + 10) as f64
    );
    assert_eq!(delta(&repo_series("cairn_blob_uploads_total", repo)), 1.0);
    assert_eq!(
        delta(&repo_series("cairn_manifest_pushes_total", repo)),
        0.0
    );
    assert_eq!(
        value(
            &after,
            &format!(
                "cairn_tag_overwrites_denied_total{{repository=\"{repo}\",operation=\"push\"}}"
            )
        ),
        1.0
    );
    assert_eq!(value(&after, "cairn_uploads_in_progress"), 1.0);
    let manifests = "route=\"/v2/{name}/manifests/{reference}\"";
    assert_eq!(
        delta(&format!(
            "cairn_http_requests_total{{method=\"GET\",{manifests},status=\"2xx\"}}"
        )),
        3.0
    );
    assert_eq!(
        delta(&format!(
            "cairn_http_requests_total{{method=\"GET\",{manifests},status=\"4xx\"}}"
        )),
        1.0
    );
    assert_eq!(
        delta(&format!(
            "cairn_http_requests_total{{method=\"HEAD\",{manifests},status=\"2xx\"}}"
        )),
        1.0
    );
    assert_eq!(
        delta(&format!(
            "cairn_http_request_duration_seconds_count{{method=\"GET\",{manifests},status=\"2xx\"}}"
        )),
        3.0
    );
    assert!(
        value(
            &after,
            "cairn_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"2xx\"}"
        ) >= 1.0
    );
    // Storage, database and build metrics are there.
    assert!(
        value(
            &after,
            "cairn_storage_operation_duration_seconds_count{operation=\"stream\"}"
        ) >= 3.0
    );
    assert!(
        value(
            &after,
            "cairn_db_query_duration_seconds_count{operation=\"resolve_tag\"}"
        ) >= 2.0
    );
    assert!(after.contains("cairn_db_pool_connections{pool="));
    assert!(after.contains(&format!(
        "cairn_build_info{{version=\"{}\",commit=\"",
        env!("CARGO_PKG_VERSION")
    )));
    // Digests, tags and raw paths never become labels.
    assert!(
        !after.contains("sha256:"),
        "a digest in the metrics:\n{after}"
    );
    assert!(!after.contains("v1\""));
    assert!(!after.contains("/v2/team"));
}

async fn repositories_beyond_the_cap_are_counted_as_other(app: TestApp) {
    for repo in ["r1", "r2", "r3", "r4"] {
        app.push_image(repo, "v1", repo.as_bytes()).await;
    }
    for repo in ["r1", "r2", "r3", "r3", "r4"] {
        pull(&app, &format!("/v2/{repo}/manifests/v1"), 200).await;
    }
    let text = scrape(&app).await;
    let pulls = |repo: &str| value(&text, &repo_series("cairn_manifest_pulls_total", repo));
    assert_eq!(pulls("r1"), 1.0);
    assert_eq!(pulls("r2"), 1.0);
    assert_eq!(pulls("other"), 3.0);
    assert!(!text.contains("\"r3\"") && !text.contains("\"r4\""));
}

async fn artifacts(app: &TestApp, repo: &str, query: &str) -> (Vec<Value>, Option<String>) {
    let r = app
        .get(&format!("/api/v1/repositories/{repo}/artifacts{query}"))
        .await;
    assert_eq!(r.status(), 200, "artifacts{query}");
    let link = r
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_string());
    let v: Value = r.json().await.unwrap();
    (v["artifacts"].as_array().unwrap().clone(), link)
}

/// Waits until the artifacts API shows `pulls` pulls of `digest` (flushes are
/// periodic).
async fn wait_for_pulls(app: &TestApp, repo: &str, digest: &str, pulls: u64) {
    for _ in 0..100 {
        let (list, _) = artifacts(app, repo, "").await;
        if list
            .iter()
            .any(|a| a["digest"] == digest && a["pulls"] == pulls)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{digest} never showed {pulls} pulls");
}

async fn pull_statistics_are_flushed_and_survive_a_restart(app: TestApp) {
    let repo = "team/stats";
    let layer = vec![1u8; 1000];
    let (_, digest) = app.push_image(repo, "v1", &layer).await;
    let r = app
        .req(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{digest}?tag=v2"),
        )
        .header("Content-Type", OCI_MANIFEST)
        .body(pull_bytes(&app, repo, &digest).await)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    pull(&app, &format!("/v2/{repo}/manifests/v1"), 200).await;
    pull(&app, &format!("/v2/{repo}/manifests/v1"), 200).await;
    pull(&app, &format!("/v2/{repo}/manifests/v2"), 200).await;
    pull(&app, &format!("/v2/{repo}/blobs/{}", sha256(&layer)), 200).await;
    // The pull_bytes above was a digest pull too: 4 in all.
    wait_for_pulls(&app, repo, &digest, 4).await;

    let again = app.restart().await;
    let (list, _) = artifacts(&again, repo, "").await;
    assert_eq!(list.len(), 1);
    let a = &list[0];
    assert_eq!(a["pulls"], 4);
    assert_eq!(a["tags"], serde_json::json!(["v1", "v2"]));
    assert_eq!(a["tag_pulls"][0]["tag"], "v1");
    assert_eq!(a["tag_pulls"][0]["pulls"], 2);
    assert_eq!(a["tag_pulls"][1]["pulls"], 1);
    assert!(a["last_pulled_at"].is_string());
    assert_eq!(a["media_type"], OCI_MANIFEST);
    // Repository totals. The blob pull is recorded when its body is done.
    let mut totals = Value::Null;
    for _ in 0..100 {
        totals = again
            .get(&format!("/api/v1/repositories/{repo}"))
            .await
            .json()
            .await
            .unwrap();
        if totals["blob_pulls"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(totals["pulls"], 4, "{totals}");
    assert_eq!(totals["blob_pulls"], 1, "{totals}");
    assert_eq!(totals["bytes_served"], 1000, "{totals}");
    assert_eq!(totals["manifests"], 1);
    assert_eq!(totals["tags"], 2);
    assert!(totals["last_pulled_at"].is_string());
    // Pulls through the second server add to the same rows.
    pull(&again, &format!("/v2/{repo}/manifests/v1"), 200).await;
    wait_for_pulls(&again, repo, &digest, 5).await;
}

async fn pull_bytes(app: &TestApp, repo: &str, digest: &str) -> Vec<u8> {
    let r = app.get(&format!("/v2/{repo}/manifests/{digest}")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

/// A flush interval far longer than the test: nothing reaches the database
/// while the server runs (pulls never write), and a graceful shutdown writes
/// what was counted.
async fn pull_statistics_are_written_at_shutdown_not_on_the_pull_path(app: TestApp) {
    let repo = "team/shutdown";
    let (_, digest) = app.push_image(repo, "v1", b"layer").await;
    let mut config = app.config.clone();
    config.metrics.pull_stats_flush_secs = 3600;
    let server = App::build(&config).await.expect("starts");
    let base = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    for _ in 0..3 {
        let r = reqwest::get(format!("{base}/v2/{repo}/manifests/v1"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (list, _) = artifacts(&app, repo, "").await;
    assert_eq!(
        list[0]["pulls"], 0,
        "pull statistics were written on the pull path"
    );
    assert!(list[0]["last_pulled_at"].is_null());
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let (list, _) = artifacts(&app, repo, "").await;
    assert_eq!(list[0]["digest"], digest.as_str());
    assert_eq!(list[0]["pulls"], 3);
}

async fn artifacts_sort_and_paginate(app: TestApp) {
    let repo = "team/sorted";
    // Three manifests of different sizes (1, 2 and 3 layers), pushed in order.
    let mut layers = Vec::new();
    let mut digests = Vec::new();
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = app.push_blob(repo, config).await;
    for (i, tag) in ["a", "b", "c"].iter().enumerate() {
        let data = format!("layer {i}").into_bytes();
        layers.push((app.push_blob(repo, &data).await, data.len()));
        let m = image_manifest(&cd, config.len(), &layers, None, None);
        let r = app.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), 201);
        digests.push(sha256(&m));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // a pulled 3 times, then b once (last); c never.
    for _ in 0..3 {
        pull(&app, &format!("/v2/{repo}/manifests/a"), 200).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    pull(&app, &format!("/v2/{repo}/manifests/b"), 200).await;
    wait_for_pulls(&app, repo, &digests[1], 1).await;
    wait_for_pulls(&app, repo, &digests[0], 3).await;

    let ids = |list: &[Value]| -> Vec<String> {
        list.iter()
            .map(|a| a["tags"][0].as_str().unwrap().to_string())
            .collect()
    };
    let (page1, link) = artifacts(&app, repo, "?sort=pulls&order=desc&n=2").await;
    assert_eq!(ids(&page1), ["a", "b"]);
    let link = link.expect("a Link to the next page");
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    let next = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    assert!(next.contains("offset=2"), "{next}");
    let r = app.get(&next).await;
    assert!(r.headers().get("link").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(ids(v["artifacts"].as_array().unwrap()), ["c"]);

    let (l, _) = artifacts(&app, repo, "?sort=pulls&order=asc").await;
    assert_eq!(ids(&l), ["c", "b", "a"]);
    let (l, _) = artifacts(&app, repo, "?sort=last_pulled").await;
    assert_eq!(ids(&l), ["b", "a", "c"]);
    let (l, _) = artifacts(&app, repo, "?sort=size&order=asc").await;
    assert_eq!(ids(&l), ["a", "b", "c"]);
    let (l, _) = artifacts(&app, repo, "").await;
    assert_eq!(ids(&l), ["c", "b", "a"], "default: newest push first");
    let sizes: Vec<u64> = l.iter().map(|a| a["size"].as_u64().unwrap()).collect();
    assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2]);
    assert!(l[0]["pushed_at"].is_string());

    let r = app
        .get(&format!("/api/v1/repositories/{repo}/artifacts?sort=name"))
        .await;
    assert_eq!(r.status(), 400);
    let r = app.get("/api/v1/repositories/nobody/here/artifacts").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
}

both!(
    pulls_move_the_counters_by_exactly_what_was_served,
    pull_statistics_are_written_at_shutdown_not_on_the_pull_path,
);
both!(with two_repositories: repositories_beyond_the_cap_are_counted_as_other);
both!(with fast_flush: pull_statistics_are_flushed_and_survive_a_restart, artifacts_sort_and_paginate);

#[tokio::test]
async fn metrics_can_be_served_on_a_separate_listener_or_disabled() {
    let app = TestApp::spawn_with(crate::helpers::Db::Sqlite, |_| {}).await;
    let mut config = app.config.clone();
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let server = App::build(&config).await.expect("starts");
    let main = format!("http://{}", server.local_addr().unwrap());
    let metrics = format!(
        "http://{}",
        server.metrics_addr().expect("metrics listener")
    );
    tokio::spawn(server.run(std::future::pending()));
    assert_eq!(
        reqwest::get(format!("{main}/v2/")).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{main}/metrics"))
            .await
            .unwrap()
            .status(),
        404
    );
    let text = reqwest::get(format!("{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        value(
            &text,
            "cairn_http_requests_total{method=\"GET\",route=\"/v2/\",status=\"2xx\"}"
        ),
        1.0
    );

    let off = TestApp::spawn_with(crate::helpers::Db::Sqlite, |c| c.metrics.enabled = false).await;
    assert_eq!(off.get("/metrics").await.status(), 404);
    assert_eq!(off.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn readiness_needs_the_database_and_the_object_store() {
    let app = TestApp::spawn(crate::helpers::Db::Sqlite).await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(app.get("/healthz").await.status(), 200);
}
