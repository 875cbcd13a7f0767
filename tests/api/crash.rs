//! Crash safety: `cairn serve` is killed with SIGKILL at random moments while
//! eight clients push images (monolithic and chunked blob uploads, manifests,
//! tags), and restarted on the same data. Afterwards everything that was
//! acknowledged is pullable with the right digest, no tag points at a missing
//! manifest, no manifest at a missing blob, and no partial blob is visible.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::Rng;
use serde_json::Value;

use crate::helpers::{fresh_postgres_db, image_manifest, sha256, Serve, OCI_MANIFEST};

const REPO: &str = "crash/app";
const KILLS: usize = 50;

/// `cairn serve` in `dir` (SQLite there, or `database`), on a fresh port.
fn start(dir: &std::path::Path, database: Option<&str>) -> (Serve, String) {
    let mut env = vec![("CAIRN_GC__INTERVAL_SECS", "0")];
    if let Some(url) = database {
        env.push(("CAIRN_DATABASE__URL", url));
    }
    let s = Serve::start(dir, &env);
    let base = s.base.clone();
    (s, base)
}

/// What the server acknowledged.
#[derive(Default)]
struct Acked {
    blobs: Vec<String>,
    /// (tag, manifest digest, blob digests)
    images: Vec<(String, String, Vec<String>)>,
}

/// Pushes until `stop`; errors (the server is down) just move on.
async fn pusher(w: usize, base: Arc<RwLock<String>>, stop: Arc<AtomicBool>) -> (Acked, usize) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut acked = Acked::default();
    let mut attempts = 0;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        attempts += 1;
        let b = base.read().unwrap().clone();
        let config = format!("{{\"worker\":{w},\"i\":{i}}}").into_bytes();
        let layer: Vec<u8> = (0..(64 * 1024 + i * 97))
            .map(|k| ((k * 31 + w * 7 + i) % 251) as u8)
            .collect();
        let mut ok = true;
        // Config: one monolithic POST.
        match c
            .post(format!(
                "{b}/v2/{REPO}/blobs/uploads/?digest={}",
                sha256(&config)
            ))
            .body(config.clone())
            .send()
            .await
        {
            Ok(r) if r.status() == 201 => acked.blobs.push(sha256(&config)),
            _ => ok = false,
        }
        // Layer: chunked (POST, two PATCHes with Content-Range, PUT).
        if ok {
            ok = chunked(&c, &b, &layer).await;
            if ok {
                acked.blobs.push(sha256(&layer));
            }
        }
        if ok {
            let m = image_manifest(
                &sha256(&config),
                config.len(),
                &[(sha256(&layer), layer.len())],
                None,
                None,
            );
            let tag = format!("w{w}-{i}");
            if let Ok(r) = c
                .put(format!("{b}/v2/{REPO}/manifests/{tag}"))
                .header("Content-Type", OCI_MANIFEST)
                .body(m.clone())
                .send()
                .await
            {
                if r.status() == 201 {
                    acked
                        .images
                        .push((tag, sha256(&m), vec![sha256(&config), sha256(&layer)]));
                }
            }
        }
        if !ok {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (acked, attempts)
}

async fn chunked(c: &reqwest::Client, b: &str, data: &[u8]) -> bool {
    let Ok(r) = c.post(format!("{b}/v2/{REPO}/blobs/uploads/")).send().await else {
        return false;
    };
    if r.status() != 202 {
        return false;
    }
    let mut location = r.headers()["location"].to_str().unwrap().to_string();
    let half = data.len() / 2;
    for (start, part) in [(0, &data[..half]), (half, &data[half..])] {
        let url = if location.starts_with("http") {
            location.clone()
        } else {
            format!("{b}{location}")
        };
        let Ok(r) = c
            .patch(url)
            .header("Content-Type", "application/octet-stream")
            .header(
                "Content-Range",
                format!("{start}-{}", start + part.len() - 1),
            )
            .body(part.to_vec())
            .send()
            .await
        else {
            return false;
        };
        if r.status() != 202 {
            return false;
        }
        location = r.headers()["location"].to_str().unwrap().to_string();
    }
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{b}{location}")
    };
    matches!(
        c.put(format!("{url}{sep}digest={}", sha256(data))).send().await,
        Ok(r) if r.status() == 201
    )
}

async fn crash_loop(database: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = start(dir.path(), database.as_deref());
    let base = Arc::new(RwLock::new(url));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(pusher(w, base.clone(), stop.clone())))
        .collect();
    for _ in 0..KILLS {
        // Up long enough for whole images to get through, often enough that
        // kills land in every phase of a push.
        let wait = rand::rng().random_range(250..900);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill();
        let (c, url) = start(dir.path(), database.as_deref());
        child = c;
        *base.write().unwrap() = url;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Acked::default();
    let mut attempts = 0;
    for w in workers {
        let (a, n) = w.await.unwrap();
        acked.blobs.extend(a.blobs);
        acked.images.extend(a.images);
        attempts += n;
    }
    // One last crash, then check everything on a fresh start.
    child.kill();
    let (mut child, b) = start(dir.path(), database.as_deref());
    let c = reqwest::Client::new();
    let get = |path: String| {
        let c = c.clone();
        let b = b.clone();
        async move { c.get(format!("{b}{path}")).send().await.unwrap() }
    };
    let blob_ok = |d: String| {
        let get = &get;
        async move {
            let r = get(format!("/v2/{REPO}/blobs/{d}")).await;
            assert_eq!(r.status(), 200, "acknowledged blob {d} is gone");
            assert_eq!(
                sha256(&r.bytes().await.unwrap()),
                d,
                "blob {d} is not its digest"
            );
        }
    };
    for d in &acked.blobs {
        blob_ok(d.clone()).await;
    }
    for (tag, digest, blobs) in &acked.images {
        let r = get(format!("/v2/{REPO}/manifests/{tag}")).await;
        assert_eq!(r.status(), 200, "acknowledged {tag} is gone");
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        for d in blobs {
            blob_ok(d.clone()).await;
        }
    }
    // Every tag resolves; every manifest stored has all its blobs.
    let tags: Value = get(format!("/v2/{REPO}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    let tags = tags["tags"].as_array().cloned().unwrap_or_default();
    for t in &tags {
        let t = t.as_str().unwrap();
        assert_eq!(
            get(format!("/v2/{REPO}/manifests/{t}")).await.status(),
            200,
            "tag {t}"
        );
    }
    let arts: Value = get(format!("/api/v1/repositories/{REPO}/artifacts?n=10000"))
        .await
        .json()
        .await
        .unwrap();
    let arts = arts["artifacts"].as_array().cloned().unwrap_or_default();
    for a in &arts {
        let d = a["digest"].as_str().unwrap();
        let r = get(format!("/v2/{REPO}/manifests/{d}")).await;
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        assert_eq!(sha256(&body), d);
        let m: Value = serde_json::from_slice(&body).unwrap();
        let mut refs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
        refs.extend(
            m["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string()),
        );
        for d in refs {
            blob_ok(d).await;
        }
    }
    // The audit chain survived every crash.
    let r = get("/api/v1/audit/verify".into()).await;
    assert_eq!(r.status(), 200, "audit verify");
    let v: Value = r.json().await.unwrap();
    assert!(v["broken"].is_null(), "{v}");
    eprintln!(
        "crash test ({}): {KILLS} SIGKILLs, {attempts} push attempts, {} blobs and {} images \
         acknowledged and verified, {} tags and {} manifests checked, audit chain of {} entries intact",
        if database.is_some() { "postgres" } else { "sqlite" },
        acked.blobs.len(),
        acked.images.len(),
        tags.len(),
        arts.len(),
        v["checked"]
    );
    assert!(
        acked.images.len() >= 20,
        "the run pushed too little to mean anything"
    );
    child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_nothing_acknowledged_sqlite() {
    crash_loop(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_nothing_acknowledged_postgres() {
    crash_loop(Some(fresh_postgres_db().await)).await;
}
