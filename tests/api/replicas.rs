//! Stateless replicas: three `cairn serve` processes (the built binary) on one
//! fresh PostgreSQL database and one fresh bucket of the test S3 server. An
//! upload's chunks go to different replicas, a race for one immutable tag
//! across replicas has exactly one winner, one replica is SIGKILLed in the
//! middle of concurrent pushes, and the survivors serve everything that was
//! acknowledged and resume uploads the dead one had started. Also: what one
//! replica changes (a mutable tag moved, a manifest deleted) the others serve
//! at once, since no replica caches a mutable tag or a repository's contents.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::policy::{Mutability, RuleSpec};
use reqwest::StatusCode;

use crate::helpers::{
    error_code, fresh_postgres_db, fresh_s3_bucket, image_manifest, s3_endpoint, seeded_bytes,
    sha256, within_cache_ttl, Db, Serve, TestApp, OCI_MANIFEST,
};

/// Starts `cairn serve` on a free port with its metadata at `database` and its
/// blobs under `registry/` in `bucket`; returns once it listens.
fn start(dir: &std::path::Path, database: &str, endpoint: &str, bucket: &str) -> Replica {
    let url = format!("s3://{bucket}/registry");
    Serve::start(
        dir,
        &[
            ("CAIRN_DATABASE__URL", database),
            ("CAIRN_STORAGE__URL", &url),
            ("CAIRN_STORAGE__S3__ENDPOINT", endpoint),
            ("CAIRN_STORAGE__S3__REGION", "us-east-1"),
            ("CAIRN_STORAGE__S3__PATH_STYLE", "true"),
            ("CAIRN_STORAGE__S3__ALLOW_HTTP", "true"),
            ("CAIRN_STORAGE__S3__ACCESS_KEY_ID", "cairn-test"),
            ("CAIRN_STORAGE__S3__SECRET_ACCESS_KEY", "cairn-test-secret"),
            ("CAIRN_GC__INTERVAL_SECS", "0"),
        ],
    )
}

/// A replica: a `cairn serve` process.
type Replica = Serve;

/// Three replicas on a fresh database and bucket (started one after the
/// other: each applies migrations on start).
async fn three_replicas(dir: &std::path::Path) -> Vec<Replica> {
    let database = fresh_postgres_db().await;
    let endpoint = s3_endpoint().await;
    let bucket = fresh_s3_bucket(&endpoint).await;
    (0..3)
        .map(|_| start(dir, &database, &endpoint, &bucket))
        .collect()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The path and query of a `Location` (absolute or not).
fn path_of(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]).to_string(),
        None => location.to_string(),
    }
}

fn with_digest(path: &str, digest: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}digest={digest}")
}

async fn patch(
    c: &reqwest::Client,
    base: &str,
    path: &str,
    offset: usize,
    chunk: &[u8],
) -> reqwest::Result<reqwest::Response> {
    c.patch(format!("{base}{path}"))
        .header("Content-Type", "application/octet-stream")
        .header(
            "Content-Range",
            format!("{offset}-{}", offset + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .await
}

/// GETs a blob from `base` and checks its bytes hash to `digest`.
async fn blob_is_served(c: &reqwest::Client, base: &str, repo: &str, digest: &str) -> bool {
    match c
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => match r.bytes().await {
            Ok(b) => sha256(&b) == digest,
            Err(_) => false,
        },
        _ => false,
    }
}

/// GETs a manifest by `reference` from `base`; its digest (header and bytes)
/// must be `digest`.
async fn manifest_is_served(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    digest: &str,
) -> bool {
    match c
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => {
            let header = r
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match r.bytes().await {
                Ok(b) => header.as_deref() == Some(digest) && sha256(&b) == digest,
                Err(_) => false,
            }
        }
        _ => false,
    }
}

/// The replicas that are up, as seen by the pushers.
struct Fleet {
    bases: Vec<String>,
    dead: Vec<AtomicBool>,
    /// Round robin over the replicas, shared by every request of every pusher.
    next: AtomicUsize,
}

impl Fleet {
    /// The next replica not known to be dead.
    fn pick(&self) -> &str {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len();
            if !self.dead[i].load(Ordering::Relaxed) {
                return &self.bases[i];
            }
        }
    }
}

/// How an upload got through.
#[derive(Debug, Default, Clone, Copy)]
struct UploadOutcome {
    /// Sessions found again (GET) after a failed request and continued.
    resumed: usize,
    /// Sessions started over because the one in progress was not found.
    restarted: usize,
}

/// Uploads `data` in chunks of `chunk` bytes, every request to the next
/// replica. A failed request (a replica killed under it) is followed by a GET
/// of the session on another replica, which says how far it got; the upload
/// goes on from there, or starts over if the session is unknown. `None` if it
/// did not get through in a few attempts.
async fn upload(
    c: &reqwest::Client,
    fleet: &Fleet,
    repo: &str,
    data: &[u8],
    chunk: usize,
) -> Option<UploadOutcome> {
    let digest = sha256(data);
    let mut outcome = UploadOutcome::default();
    let mut session: Option<String> = None;
    let mut offset = 0usize;
    let mut failed = false;
    for _ in 0..8 {
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let done: Result<(), ()> = async {
            let path = match &session {
                None => {
                    let r = c
                        .post(format!("{}/v2/{repo}/blobs/uploads/", fleet.pick()))
                        .send()
                        .await
                        .map_err(drop)?;
                    if r.status() != 202 {
                        return Err(());
                    }
                    let loc = r.headers().get("location").ok_or(())?;
                    let p = path_of(loc.to_str().map_err(drop)?);
                    session = Some(p.clone());
                    offset = 0;
                    p
                }
                Some(p) if failed => {
                    // Where does the session stand? Any replica can tell.
                    let r = c
                        .get(format!("{}{p}", fleet.pick()))
                        .send()
                        .await
                        .map_err(drop)?;
                    match r.status().as_u16() {
                        204 => {
                            let range = r
                                .headers()
                                .get("range")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("0-0");
                            let end: usize = range
                                .rsplit('-')
                                .next()
                                .and_then(|e| e.parse().ok())
                                .ok_or(())?;
                            // "0-0" is both "nothing yet" and "one byte"; the
                            // chunks here are never one byte long.
                            offset = if end == 0 { 0 } else { end + 1 };
                            outcome.resumed += 1;
                            p.clone()
                        }
                        404 => {
                            session = None;
                            outcome.restarted += 1;
                            return Err(());
                        }
                        _ => return Err(()),
                    }
                }
                Some(p) => p.clone(),
            };
            let mut path = path;
            while offset < data.len() {
                let end = (offset + chunk).min(data.len());
                let r = patch(c, fleet.pick(), &path, offset, &data[offset..end])
                    .await
                    .map_err(drop)?;
                if r.status() != 202 {
                    return Err(());
                }
                offset = end;
                let loc = r.headers().get("location").ok_or(())?;
                path = path_of(loc.to_str().map_err(drop)?);
                session = Some(path.clone());
            }
            let r = c
                .put(format!("{}{}", fleet.pick(), with_digest(&path, &digest)))
                .send()
                .await
                .map_err(drop)?;
            match r.status().as_u16() {
                201 => Ok(()),
                // Finished by a request whose answer was lost with its replica.
                404 => {
                    if blob_is_served(c, fleet.pick(), repo, &digest).await {
                        Ok(())
                    } else {
                        session = None;
                        outcome.restarted += 1;
                        Err(())
                    }
                }
                _ => Err(()),
            }
        }
        .await;
        match done {
            Ok(()) => return Some(outcome),
            Err(()) => failed = true,
        }
    }
    None
}

/// What a pusher got acknowledged.
#[derive(Default)]
struct Acked {
    attempts: usize,
    blobs: Vec<String>,
    /// (tag, manifest digest)
    images: Vec<(String, String)>,
    resumed: usize,
    restarted: usize,
}

const REPO: &str = "replicas/app";

/// Pushes images (config by single POST, layer in three chunks, manifest under
/// a new tag) until `stop`, spreading every request over the replicas.
async fn pusher(w: usize, fleet: Arc<Fleet>, stop: Arc<AtomicBool>) -> Acked {
    let c = client();
    let mut acked = Acked::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        acked.attempts += 1;
        let config = format!("{{\"worker\":{w},\"i\":{i}}}").into_bytes();
        let cd = sha256(&config);
        let mut ok = false;
        for _ in 0..4 {
            if let Ok(r) = c
                .post(format!(
                    "{}/v2/{REPO}/blobs/uploads/?digest={cd}",
                    fleet.pick()
                ))
                .body(config.clone())
                .send()
                .await
            {
                if r.status() == 201 {
                    ok = true;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        acked.blobs.push(cd.clone());
        let layer = seeded_bytes(w * 100_000 + i, 96 * 1024 + i * 101);
        let Some(o) = upload(&c, &fleet, REPO, &layer, 32 * 1024).await else {
            continue;
        };
        acked.resumed += o.resumed;
        acked.restarted += o.restarted;
        let ld = sha256(&layer);
        acked.blobs.push(ld.clone());
        let m = image_manifest(&cd, config.len(), &[(ld, layer.len())], None, None);
        let tag = format!("w{w}-{i}");
        // A retry of the same digest under the same tag is accepted (a
        // push whose answer was lost with its replica).
        for _ in 0..4 {
            if let Ok(r) = c
                .put(format!("{}/v2/{REPO}/manifests/{tag}", fleet.pick()))
                .header("Content-Type", OCI_MANIFEST)
                .body(m.clone())
                .send()
                .await
            {
                if r.status() == 201 {
                    acked.images.push((tag.clone(), sha256(&m)));
                    break;
                }
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_uploads_and_tags_and_survive_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut replicas = three_replicas(dir.path()).await;
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let c = client();

    // 1. One chunked upload, each request to another replica than the one before.
    let data = seeded_bytes(1, 7 * 1024 * 1024 + 333);
    let digest = sha256(&data);
    let r = c
        .post(format!("{}/v2/replicas/chunks/blobs/uploads/", bases[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut path = path_of(r.headers()["location"].to_str().unwrap());
    let mut offset = 0;
    for (i, chunk) in data.chunks(1024 * 1024).enumerate() {
        let base = &bases[(i + 1) % 3];
        let r = patch(&c, base, &path, offset, chunk).await.unwrap();
        assert_eq!(r.status(), 202, "chunk {i} on replica {}", (i + 1) % 3);
        offset += chunk.len();
        path = path_of(r.headers()["location"].to_str().unwrap());
    }
    // Eight chunks: the last went to replica 0; replica 1 finishes.
    let r = c
        .put(format!("{}{}", bases[1], with_digest(&path, &digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    for base in &bases {
        assert!(
            blob_is_served(&c, base, "replicas/chunks", &digest).await,
            "{base} serves the blob"
        );
    }

    // 2. Races for one immutable tag, one contender per replica: exactly one
    // wins, the others are refused naming the tag, and every replica then
    // serves the winner.
    for round in 0..5 {
        let repo = "replicas/race";
        let tag = format!("v{round}");
        let mut contenders = Vec::new();
        for (k, base) in bases.iter().enumerate() {
            let config = format!("{{\"round\":{round},\"replica\":{k}}}").into_bytes();
            let cd = sha256(&config);
            let r = c
                .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={cd}"))
                .body(config.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            contenders.push(image_manifest(&cd, config.len(), &[], None, None));
        }
        let puts = contenders.iter().zip(&bases).map(|(m, base)| {
            let c = c.clone();
            let url = format!("{base}/v2/{repo}/manifests/{tag}");
            let m = m.clone();
            async move {
                c.put(url)
                    .header("Content-Type", OCI_MANIFEST)
                    .body(m)
                    .send()
                    .await
                    .unwrap()
            }
        });
        let answers = futures::future::join_all(puts).await;
        let mut winners = Vec::new();
        for (k, r) in answers.into_iter().enumerate() {
            match r.status().as_u16() {
                201 => winners.push(sha256(&contenders[k])),
                409 => assert_eq!(error_code(r).await, "DENIED"),
                s => panic!("round {round}: replica {k} answered {s}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        for base in &bases {
            assert!(
                manifest_is_served(&c, base, repo, &tag, &winners[0]).await,
                "round {round}: {base} serves the winner"
            );
        }
    }

    // 3. An upload started on replica 2, one chunk acknowledged there.
    let interrupted = seeded_bytes(2, 3 * 1024 * 1024);
    let interrupted_digest = sha256(&interrupted);
    let half = interrupted.len() / 2;
    let r = c
        .post(format!("{}/v2/replicas/resume/blobs/uploads/", bases[2]))
        .send()
        .await
        .unwrap();
    let resume_path = path_of(r.headers()["location"].to_str().unwrap());
    let r = patch(&c, &bases[2], &resume_path, 0, &interrupted[..half])
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // 4. Eight pushers over the three replicas; replica 2 is SIGKILLed while
    // they run, the others carry on.
    let fleet = Arc::new(Fleet {
        bases: bases.clone(),
        dead: (0..3).map(|_| AtomicBool::new(false)).collect(),
        next: AtomicUsize::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(pusher(w, fleet.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let killed_after = started.elapsed();
    replicas[2].kill();
    fleet.dead[2].store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Acked::default();
    for w in workers {
        let a = w.await.expect("pusher");
        acked.attempts += a.attempts;
        acked.blobs.extend(a.blobs);
        acked.images.extend(a.images);
        acked.resumed += a.resumed;
        acked.restarted += a.restarted;
    }
    let survivors = &bases[..2];

    // 5. The interrupted upload goes on on a survivor: it tells the offset,
    // takes the rest, and the blob is the bytes of both chunks.
    let r = c
        .get(format!("{}{resume_path}", survivors[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["range"].to_str().unwrap(),
        format!("0-{}", half - 1)
    );
    let r = patch(&c, &survivors[0], &resume_path, half, &interrupted[half..])
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let path = path_of(r.headers()["location"].to_str().unwrap());
    let r = c
        .put(format!(
            "{}{}",
            survivors[1],
            with_digest(&path, &interrupted_digest)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());

    // 6. Every survivor serves everything that was acknowledged.
    let mut verified_blobs = 0;
    let mut verified_images = 0;
    for base in survivors {
        assert!(blob_is_served(&c, base, "replicas/resume", &interrupted_digest).await);
        assert!(blob_is_served(&c, base, "replicas/chunks", &digest).await);
        for d in &acked.blobs {
            assert!(
                blob_is_served(&c, base, REPO, d).await,
                "{base} serves acknowledged blob {d}"
            );
            verified_blobs += 1;
        }
        for (tag, d) in &acked.images {
            assert!(
                manifest_is_served(&c, base, REPO, tag, d).await,
                "{base} serves acknowledged {tag} = {d}"
            );
            assert!(manifest_is_served(&c, base, REPO, d, d).await);
            verified_images += 1;
        }
    }
    assert!(
        acked.images.len() >= 8,
        "the pushers got images through: {}",
        acked.images.len()
    );
    eprintln!(
        "replica kill: {} image pushes attempted by 8 pushers over 3 replicas, replica 2 \
         SIGKILLed {:.1} s in; acknowledged {} blobs and {} images; {} upload sessions \
         resumed on another replica and {} restarted after failed requests; each of the 2 \
         survivors pulled every acknowledged blob and manifest (by tag and by digest): \
         {} blob pulls and {} manifest pairs in all, every digest right; the upload interrupted on the killed replica was resumed at \
         offset {half} and completed",
        acked.attempts,
        killed_after.as_secs_f64(),
        acked.blobs.len(),
        acked.images.len(),
        acked.resumed,
        acked.restarted,
        verified_blobs,
        verified_images,
    );
}

fn mutable(tags: &[&str]) -> RuleSpec {
    RuleSpec {
        name: "moving tags".into(),
        repositories: vec!["**".into()],
        tags: tags.iter().map(|s| s.to_string()).collect(),
        mutability: Mutability::Mutable,
    }
}

/// Two replicas (two `App`s, each with its own caches) on one database: a
/// mutable tag moved on one is served with its new digest by the other at
/// once, and a manifest deleted on one is gone from the other by tag at once
/// and by digest within `TAG_CACHE_TTL`. The bounds documented in
/// ARCHITECTURE.md (*Caches across replicas*): zero for mutable tags, which
/// are read from the database on every request; 1 s for manifest records by
/// digest, immutable tags' bindings and tag lists
/// (`immutability::cached_tags_follow_changes`, `cached_digests_follow_deletes`).
#[tokio::test]
async fn what_one_replica_changes_the_other_serves_at_once() {
    let a = TestApp::spawn_with(Db::Postgres, |c| {
        c.immutability.rules = vec![mutable(&["latest"])];
    })
    .await;
    let b = a.restart().await;
    let repo = "replicas/cache";
    let mut pushed = Vec::new();
    for seed in 0..3 {
        let config = format!("{{\"seed\":{seed}}}");
        let cd = a.push_blob(repo, config.as_bytes()).await;
        let m = image_manifest(&cd, config.len(), &[], None, None);
        assert_eq!(
            a.put_manifest(repo, &sha256(&m), OCI_MANIFEST, &m)
                .await
                .status(),
            201
        );
        pushed.push((m.clone(), sha256(&m)));
    }
    let c = client();
    for (m, d) in &pushed {
        // Moved on a…
        assert_eq!(
            a.put_manifest(repo, "latest", OCI_MANIFEST, m)
                .await
                .status(),
            201
        );
        // …and b, which has served (and cached) the previous digest, serves
        // the new one on the very next request.
        assert!(manifest_is_served(&c, &b.base, repo, "latest", d).await);
        assert!(manifest_is_served(&c, &b.base, repo, d, d).await);
    }
    // Deleted on a: gone from b at once by its mutable tag, and by digest
    // (which b has served, and cached) within the bound.
    let (_, last) = &pushed[2];
    let deleted_at = Instant::now();
    assert_eq!(
        a.delete(&format!("/v2/{repo}/manifests/{last}"))
            .await
            .status(),
        202
    );
    let r = b.get(&format!("/v2/{repo}/manifests/latest")).await;
    assert_eq!(r.status(), 404, "latest after the delete on a");
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let path = format!("/v2/{repo}/manifests/{last}");
    within_cache_ttl(deleted_at, || async {
        match (b.head(&path).await.status(), b.get(&path).await.status()) {
            (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND) => Ok(()),
            seen => Err(format!(
                "{last} still served by b after the delete on a: {seen:?}"
            )),
        }
    })
    .await;
    assert_eq!(error_code(b.get(&path).await).await, "MANIFEST_UNKNOWN");
}
