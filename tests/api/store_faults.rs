//! Faults of the blob store, on both metadata databases.
//!
//! - S3 behind a TCP proxy (`proxy.rs`) that cuts every connection and refuses
//!   new ones, or holds bytes back beyond the store timeout: clients get a
//!   retryable `503 UNAVAILABLE` with `Retry-After` within a bounded time (a
//!   manifest may still come from the in-memory manifest cache, whole), no
//!   manifest is accepted whose blobs were not stored, everything acknowledged
//!   pulls whole afterwards, and the registry recovers by itself.
//! - The local filesystem running out of space (a small tmpfs mounted by the
//!   test, which therefore needs root): `507 INSUFFICIENT_STORAGE` naming the
//!   cause, nothing partial visible, earlier blobs still served, and pushes
//!   work again once space is freed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::Config;
use reqwest::{Method, Response};

use crate::helpers::{error_code, image_manifest, s3_endpoint, sha256, Db, TestApp, OCI_MANIFEST};
use crate::proxy::Proxy;

/// The store limits of these tests: one request 2 s, connecting 1 s, two
/// retries started within 3 s of the first attempt.
fn short_store_timeouts(c: &mut Config) {
    c.storage.timeout_secs = 2;
    c.storage.connect_timeout_secs = 1;
    c.storage.max_retries = 2;
    c.storage.retry_timeout_secs = 3;
    c.metrics.pull_stats = false;
    c.gc.interval_secs = 0;
}

/// What a client may wait for an answer while the store is away: the retry
/// window plus one request timeout plus one backoff, with room for a loaded
/// machine. Anything longer is a hang.
const BOUND: Duration = Duration::from_secs(15);

/// The image config `TestApp::push_image` pushes.
const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux"}"#;

/// A client-side guard far beyond `BOUND`, so a hang fails the test instead of
/// blocking it.
async fn send(rb: reqwest::RequestBuilder) -> (Response, Duration) {
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(60), rb.send())
        .await
        .expect("the registry answered within 60 s")
        .expect("request");
    (r, started.elapsed())
}

/// A retryable 503 with the OCI error body, in time.
async fn assert_unavailable(what: &str, r: Response, took: Duration) {
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    eprintln!(
        "{what}: {} after {took:?}, Retry-After {retry_after:?}",
        r.status()
    );
    assert!(took < BOUND, "{what}: answered after {took:?}");
    assert_eq!(r.status(), 503, "{what}");
    assert!(retry_after.is_some(), "{what}: no Retry-After");
    assert_eq!(error_code(r).await, "UNAVAILABLE", "{what}");
}

/// Either the content whose digest is `digest`, whole, or a retryable 503 in time.
async fn assert_pulled_or_unavailable(what: &str, r: Response, took: Duration, digest: &str) {
    if r.status() == 200 {
        assert!(took < BOUND, "{what}: answered after {took:?}");
        assert_eq!(sha256(&r.bytes().await.expect("body")), digest, "{what}");
    } else {
        assert_unavailable(what, r, took).await;
    }
}

async fn s3_behind_proxy(db: Db) -> (TestApp, Proxy) {
    let endpoint = s3_endpoint().await;
    let upstream = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let proxy = Proxy::start(upstream).await;
    let via = proxy.url();
    let app = TestApp::spawn_s3_with(db, move |c| {
        c.storage.s3.endpoint = Some(via);
        short_store_timeouts(c);
    })
    .await;
    (app, proxy)
}

fn blob_data(tag: &str, n: usize) -> Vec<u8> {
    let mut v = format!("{tag}:{}:", uuid::Uuid::new_v4()).into_bytes();
    v.resize(n, b'x');
    v
}

/// A pushed blob or manifest the registry acknowledged with `201`.
#[derive(Clone)]
struct Acked {
    repo: String,
    digest: String,
    kind: &'static str,
}

async fn push_blob(app: &TestApp, repo: &str, data: &[u8]) -> (Response, Duration) {
    send(
        app.req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data)),
        )
        .body(data.to_vec()),
    )
    .await
}

/// Pushers that keep pushing blobs and manifests (each manifest naming the
/// blob just pushed, whether or not it was accepted) and pulling the first
/// image, until `stop`; every outcome is checked as it comes.
async fn load(
    app: Arc<TestApp>,
    worker: usize,
    config: String,
    v1: String,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> Vec<Acked> {
    let repo = format!("faults/load{worker}");
    let config_bytes = CONFIG;
    let mut acked = Vec::new();
    let mut config_ok = false;
    for i in 0..500 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if !config_ok {
            let (r, _) = push_blob(&app, &repo, config_bytes).await;
            config_ok = r.status() == 201;
        }
        let data = blob_data(&format!("w{worker}i{i}"), 40_000);
        let (r, took) = push_blob(&app, &repo, &data).await;
        let blob_ok = match r.status().as_u16() {
            201 => {
                acked.push(Acked {
                    repo: repo.clone(),
                    digest: sha256(&data),
                    kind: "blob",
                });
                progress.fetch_add(1, Ordering::SeqCst);
                true
            }
            _ => {
                assert_unavailable("blob push during the cut", r, took).await;
                false
            }
        };
        let m = image_manifest(
            &config,
            config_bytes.len(),
            &[(sha256(&data), data.len())],
            None,
            None,
        );
        let (r, took) = send(
            app.req(Method::PUT, &format!("/v2/{repo}/manifests/t{i}"))
                .header("Content-Type", OCI_MANIFEST)
                .body(m.clone()),
        )
        .await;
        match r.status().as_u16() {
            201 => {
                // A blob push can be answered 503 after its blob was linked:
                // the store went away as the push checked, after the link,
                // that a collection had not taken the bytes. Then the blob is
                // served, a manifest may name it, and it must pull whole
                // after the cut like everything acknowledged.
                for (ok, digest) in [(blob_ok, sha256(&data)), (config_ok, config.clone())] {
                    if !ok {
                        acked.push(Acked {
                            repo: repo.clone(),
                            digest,
                            kind: "blob",
                        });
                    }
                }
                acked.push(Acked {
                    repo: repo.clone(),
                    digest: sha256(&m),
                    kind: "manifest",
                });
                progress.fetch_add(1, Ordering::SeqCst);
            }
            400 => {
                assert!(
                    !(blob_ok && config_ok),
                    "refused a manifest whose blobs are stored"
                );
                assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
            }
            _ => assert_unavailable("manifest push during the cut", r, took).await,
        }
        // A pull: whole and right (from the manifest cache), or a 503.
        let (r, took) = send(app.req(Method::GET, "/v2/faults/app/manifests/v1")).await;
        assert_pulled_or_unavailable("manifest pull during the cut", r, took, &v1).await;
    }
    acked
}

async fn object_store_cut(db: Db) {
    let (app, proxy) = s3_behind_proxy(db).await;
    let app = Arc::new(app);
    let (_, v1) = app.push_image("faults/app", "v1", b"first layer").await;
    let config = app.push_blob("faults/app", CONFIG).await;
    let layer = sha256(b"first layer");

    // A chunked upload with its first chunk acknowledged.
    let chunk1 = blob_data("chunk1", 30_000);
    let chunk2 = blob_data("chunk2", 20_000);
    let whole: Vec<u8> = [chunk1.clone(), chunk2.clone()].concat();
    let (r, _) = send(app.req(Method::POST, "/v2/faults/app/blobs/uploads/")).await;
    assert_eq!(r.status(), 202);
    let session = app.url_of(r.headers()["location"].to_str().unwrap());
    let (r, _) = send(
        app.client
            .patch(&session)
            .header("Content-Range", format!("0-{}", chunk1.len() - 1))
            .body(chunk1.clone()),
    )
    .await;
    assert_eq!(r.status(), 202);
    let session = app.url_of(r.headers()["location"].to_str().unwrap());

    // Pushers and pullers run across the cut.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            tokio::spawn(load(
                app.clone(),
                w,
                config.clone(),
                v1.clone(),
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();
    // The cut comes once the pushers have had some pushes acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::SeqCst) < 24 {
        assert!(Instant::now() < deadline, "the pushers made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.cut();

    // While the store is unreachable: every kind of request answers 503 in time.
    let lost = blob_data("lost", 50_000);
    let (r, took) = push_blob(&app, "faults/app", &lost).await;
    assert_unavailable("monolithic blob push", r, took).await;
    let (r, took) = send(
        app.client
            .patch(&session)
            .header(
                "Content-Range",
                format!("{}-{}", chunk1.len(), whole.len() - 1),
            )
            .body(chunk2.clone()),
    )
    .await;
    assert_unavailable("chunk", r, took).await;
    let (r, took) = send(app.req(Method::GET, &format!("/v2/faults/app/blobs/{layer}"))).await;
    assert_unavailable("blob pull", r, took).await;
    // A manifest may be answered from the registry's in-memory cache.
    let (r, took) = send(app.req(Method::GET, "/v2/faults/app/manifests/v1")).await;
    assert_pulled_or_unavailable("manifest pull", r, took, &v1).await;
    let lost_manifest = image_manifest(
        &config,
        CONFIG.len(),
        &[(sha256(&lost), lost.len())],
        None,
        None,
    );
    let (r, took) = send(
        app.req(Method::PUT, "/v2/faults/app/manifests/lost")
            .header("Content-Type", OCI_MANIFEST)
            .body(lost_manifest.clone()),
    )
    .await;
    assert!(took < BOUND);
    assert_ne!(r.status(), 201, "a manifest naming a lost blob");
    let (r, took) = send(app.req(Method::GET, "/readyz")).await;
    assert!(took < BOUND, "/readyz took {took:?}");
    assert_eq!(r.status(), 503, "/readyz while the store is away");
    assert_eq!(app.get("/healthz").await.status(), 200);

    stop.store(true, Ordering::SeqCst);
    let mut acked = vec![
        Acked {
            repo: "faults/app".into(),
            digest: v1.clone(),
            kind: "manifest",
        },
        Acked {
            repo: "faults/app".into(),
            digest: layer.clone(),
            kind: "blob",
        },
    ];
    for w in workers {
        acked.extend(w.await.expect("pusher"));
    }

    // Back by itself once the store answers again.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = app.get(&format!("/v2/faults/app/blobs/{layer}")).await;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover: {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.get("/readyz").await.status(), 200);

    // Everything acknowledged is whole.
    assert!(acked.len() >= 26, "the load pushed before the cut");
    for a in &acked {
        let path = match a.kind {
            "blob" => format!("/v2/{}/blobs/{}", a.repo, a.digest),
            _ => format!("/v2/{}/manifests/{}", a.repo, a.digest),
        };
        let r = app.get(&path).await;
        assert_eq!(r.status(), 200, "acknowledged {} {path}", a.kind);
        assert_eq!(sha256(&r.bytes().await.unwrap()), a.digest, "{path}");
    }
    // The blob whose upload failed is unknown, and so is a manifest naming it.
    let r = app
        .head(&format!("/v2/faults/app/blobs/{}", sha256(&lost)))
        .await;
    assert_eq!(r.status(), 404);
    let r = app
        .put_manifest("faults/app", "lost", OCI_MANIFEST, &lost_manifest)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // The chunked upload kept its acknowledged chunk and completes.
    let r = app.client.get(&session).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["range"].to_str().unwrap(),
        format!("0-{}", chunk1.len() - 1)
    );
    let r = app
        .client
        .patch(&session)
        .header(
            "Content-Range",
            format!("{}-{}", chunk1.len(), whole.len() - 1),
        )
        .body(chunk2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let session = app.url_of(r.headers()["location"].to_str().unwrap());
    let sep = if session.contains('?') { '&' } else { '?' };
    let r = app
        .client
        .put(format!("{session}{sep}digest={}", sha256(&whole)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app
        .get(&format!("/v2/faults/app/blobs/{}", sha256(&whole)))
        .await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), sha256(&whole));
    // Pushes work again, and the audit chain is whole.
    app.push_image("faults/app", "v2", b"after the outage")
        .await;
    let v: serde_json::Value = app.get("/api/v1/audit/verify").await.json().await.unwrap();
    assert!(v["broken"].is_null(), "{v}");
}

async fn object_store_slow(db: Db) {
    let (app, proxy) = s3_behind_proxy(db).await;
    let (_, v1) = app.push_image("faults/slow", "v1", b"slow layer").await;
    let layer = sha256(b"slow layer");

    // Every byte from or to the store is held back longer than a request may take.
    proxy.slow(Duration::from_secs(5));
    let (r, took) = push_blob(&app, "faults/slow", &blob_data("slow", 10_000)).await;
    assert_unavailable("blob push to a slow store", r, took).await;
    let (r, took) = send(app.req(Method::GET, &format!("/v2/faults/slow/blobs/{layer}"))).await;
    assert_unavailable("blob pull from a slow store", r, took).await;
    let (r, took) = send(app.req(Method::GET, "/v2/faults/slow/manifests/v1")).await;
    assert_pulled_or_unavailable("manifest pull from a slow store", r, took, &v1).await;

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = app.get(&format!("/v2/faults/slow/blobs/{layer}")).await;
        if r.status() == 200 {
            assert_eq!(sha256(&r.bytes().await.unwrap()), layer);
            break;
        }
        assert!(Instant::now() < deadline, "did not recover: {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.push_image("faults/slow", "v2", b"fast again").await;
}

/// A store that is slow but keeps sending: transfers that take longer in all
/// than one request may (`timeout_secs`, 2 s here) still complete, since only
/// a stall fails them. A 600 KiB pull and a 9 MiB push (a multipart upload of
/// two parts, then a server-side copy) each take several seconds here.
async fn object_store_slow_but_steady(db: Db) {
    let (app, proxy) = s3_behind_proxy(db).await;
    let small = blob_data("steady", 600 << 10);
    let (r, _) = push_blob(&app, "faults/steady", &small).await;
    assert_eq!(r.status(), 201);

    // Each 16 KiB the proxy forwards waits 100 ms: about 40 reads for the pull.
    proxy.slow(Duration::from_millis(100));
    let (r, _) = send(app.req(
        Method::GET,
        &format!("/v2/faults/steady/blobs/{}", sha256(&small)),
    ))
    .await;
    let started = Instant::now();
    assert_eq!(r.status(), 200, "slow pull");
    let body = r.bytes().await.expect("the whole body");
    let took = started.elapsed();
    eprintln!("slow but steady pull of {} bytes: {took:?}", body.len());
    assert_eq!(sha256(&body), sha256(&small));
    assert!(
        took > Duration::from_secs(2),
        "the transfer took {took:?}, not longer than one request may: the test proves nothing"
    );

    proxy.slow(Duration::from_millis(15));
    let big = blob_data("steady-big", 9 << 20);
    let started = Instant::now();
    let (r, _) = push_blob(&app, "faults/steady", &big).await;
    let took = started.elapsed();
    eprintln!(
        "slow but steady push of {} bytes: {:?} after {took:?}",
        big.len(),
        r.status()
    );
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert!(took > Duration::from_secs(2), "the push took {took:?}");
    proxy.restore();
    let r = app
        .get(&format!("/v2/faults/steady/blobs/{}", sha256(&big)))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), sha256(&big));
}

#[tokio::test]
async fn s3_slow_but_steady_transfers_complete() {
    object_store_slow_but_steady(Db::Sqlite).await
}

mod s3_cut {
    #[tokio::test]
    async fn sqlite() {
        super::object_store_cut(crate::helpers::Db::Sqlite).await
    }
    #[tokio::test]
    async fn postgres() {
        super::object_store_cut(crate::helpers::Db::Postgres).await
    }
}

mod s3_slow {
    #[tokio::test]
    async fn sqlite() {
        super::object_store_slow(crate::helpers::Db::Sqlite).await
    }
    #[tokio::test]
    async fn postgres() {
        super::object_store_slow(crate::helpers::Db::Postgres).await
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped
/// (also when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
            })
            .unwrap_or_default();
        assert_eq!(
            uid, "0",
            "the disk-full test mounts a tmpfs and needs root (scripts/test.sh runs as root in CI)"
        );
        let dir = tempfile::tempdir().expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Tmpfs { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the registry may still hold a file open; the kernel detaches
        // the mount now and frees it when the last file closes.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Files under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn disk_full(db: Db) {
    let disk = Tmpfs::mount("8m");
    let blobs = disk.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    // Room to free later, as an operator would.
    let ballast = disk.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 4 << 20]).unwrap();
    let url = url::Url::from_directory_path(&blobs).unwrap().to_string();
    let app = TestApp::spawn_with(db, move |c| {
        c.storage.url = url;
        c.metrics.pull_stats = false;
        c.gc.interval_secs = 0;
    })
    .await;
    let (_, v1) = app
        .push_image("full/app", "v1", b"before the disk filled")
        .await;
    let config = sha256(CONFIG);

    // Fill the disk with 1 MiB blobs until a push fails.
    let mut stored = Vec::new();
    let mut failed = None;
    for i in 0..16 {
        let data = blob_data(&format!("fill{i}"), 1 << 20);
        let (r, took) = push_blob(&app, "full/app", &data).await;
        assert!(took < BOUND, "push took {took:?}");
        if r.status() == 201 {
            stored.push(data);
            continue;
        }
        assert_eq!(r.status(), 507, "a push to a full disk");
        let body: serde_json::Value = r.json().await.unwrap();
        eprintln!("push {i} of 1 MiB to the full disk: 507 after {took:?}: {body}");
        assert_eq!(body["errors"][0]["code"], "INSUFFICIENT_STORAGE", "{body}");
        let msg = body["errors"][0]["message"].as_str().unwrap();
        assert!(msg.contains("full") && msg.contains("no space"), "{msg}");
        failed = Some(data);
        break;
    }
    let failed = failed.expect("the 8 MiB disk filled within 16 MiB of pushes");
    assert!(!stored.is_empty(), "some pushes fit before the disk filled");

    // A chunked upload hits the same wall with the same answer.
    let r = app
        .req(Method::POST, "/v2/full/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let session = app.url_of(r.headers()["location"].to_str().unwrap());
    let chunk = blob_data("chunk", 2 << 20);
    let r = app
        .client
        .patch(&session)
        .header("Content-Range", format!("0-{}", chunk.len() - 1))
        .body(chunk.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    assert_eq!(error_code(r).await, "INSUFFICIENT_STORAGE");
    let r = app.client.get(&session).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-0", "the failed chunk was not kept");

    // Nothing partial is visible: the failed blob is unknown, a manifest naming
    // it is refused, and no half-written file is left behind.
    let r = app
        .get(&format!("/v2/full/app/blobs/{}", sha256(&failed)))
        .await;
    assert_eq!(r.status(), 404);
    let naming_failed = image_manifest(
        &config,
        CONFIG.len(),
        &[(sha256(&failed), failed.len())],
        None,
        None,
    );
    let r = app
        .put_manifest("full/app", "failed", OCI_MANIFEST, &naming_failed)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    let leftovers: Vec<_> = files(disk.path())
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.contains("/staging/") || s.contains('#')
        })
        .collect();
    assert!(leftovers.is_empty(), "partial files: {leftovers:?}");
    // Earlier content keeps being served.
    for data in &stored {
        let r = app
            .get(&format!("/v2/full/app/blobs/{}", sha256(data)))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(sha256(&r.bytes().await.unwrap()), sha256(data));
    }
    let r = app.get("/v2/full/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), v1);

    // Space freed: the same pushes succeed.
    std::fs::remove_file(&ballast).unwrap();
    let d = app.push_blob("full/app", &failed).await;
    let r = app.get(&format!("/v2/full/app/blobs/{d}")).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), d);
    let r = app
        .put_manifest("full/app", "failed", OCI_MANIFEST, &naming_failed)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let r = app
        .client
        .patch(&session)
        .header("Content-Range", format!("0-{}", chunk.len() - 1))
        .body(chunk.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let session = app.url_of(r.headers()["location"].to_str().unwrap());
    let sep = if session.contains('?') { '&' } else { '?' };
    let r = app
        .client
        .put(format!("{session}{sep}digest={}", sha256(&chunk)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = app.get("/api/v1/audit/verify").await.json().await.unwrap();
    assert!(v["broken"].is_null(), "{v}");
    drop(app);
    drop(disk);
}

mod disk_full {
    #[tokio::test]
    async fn sqlite() {
        super::disk_full(crate::helpers::Db::Sqlite).await
    }
    #[tokio::test]
    async fn postgres() {
        super::disk_full(crate::helpers::Db::Postgres).await
    }
}
