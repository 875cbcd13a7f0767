//! The registry on S3 (a moto server, see `helpers::s3_endpoint`) with its
//! metadata in PostgreSQL: uploads of every kind, ranged pulls, manifests,
//! mounts and garbage collection, which must delete from the bucket.

use futures::StreamExt;
use reqwest::Method;
use sha2::{Digest as _, Sha256};

use crate::helpers::{image_manifest, sha256, Db, TestApp, OCI_MANIFEST};

async fn s3_app() -> TestApp {
    TestApp::spawn_s3_with(Db::Postgres, |c| {
        c.gc.grace_secs = 0;
        c.gc.interval_secs = 0;
    })
    .await
}

/// Whether the bucket holds `digest`'s object, asked through a store handle of
/// the test's own.
async fn in_bucket(app: &TestApp, digest: &str) -> bool {
    app.blob_store()
        .exists(&digest.parse().expect("digest"))
        .await
        .expect("HEAD on the bucket")
}

async fn start(app: &TestApp, repo: &str) -> String {
    let r = app
        .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    app.url_of(r.headers()["location"].to_str().unwrap())
}

/// PATCHes `chunks` in order, then finishes with `digest`; returns the 201.
async fn chunked_upload(app: &TestApp, repo: &str, chunks: &[Vec<u8>], digest: &str) {
    let mut url = start(app, repo).await;
    let mut offset = 0usize;
    for c in chunks {
        let r = app
            .client
            .patch(&url)
            .header("Content-Type", "application/octet-stream")
            .header(
                "Content-Range",
                format!("{offset}-{}", offset + c.len() - 1),
            )
            .body(c.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
        offset += c.len();
        url = app.url_of(r.headers()["location"].to_str().unwrap());
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = app
        .client
        .put(format!("{url}{sep}digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}

async fn assert_range(
    app: &TestApp,
    repo: &str,
    digest: &str,
    data: &[u8],
    start: usize,
    end: usize,
) {
    let r = app
        .req(Method::GET, &format!("/v2/{repo}/blobs/{digest}"))
        .header("Range", format!("bytes={start}-{end}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes {start}-{end}/{}", data.len())
    );
    assert_eq!(&r.bytes().await.unwrap()[..], &data[start..=end]);
}

#[tokio::test]
async fn monolithic_upload_and_ranged_pull() {
    let app = s3_app().await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = app.push_blob("s3/mono", &data).await;
    let r = app.get(&format!("/v2/s3/mono/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    assert_range(&app, "s3/mono", &d, &data, 1000, 54_321).await;
    // The bytes are in the bucket.
    let stored = app
        .blob_store()
        .read(&d.parse().unwrap())
        .await
        .expect("in the bucket");
    assert_eq!(&stored[..], &data[..]);
}

#[tokio::test]
async fn chunked_upload_and_ranged_pull() {
    let app = s3_app().await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let d = sha256(&data);
    let chunks: Vec<Vec<u8>> = data.chunks(100_000).map(<[u8]>::to_vec).collect();
    chunked_upload(&app, "s3/chunked", &chunks, &d).await;
    let r = app.get(&format!("/v2/s3/chunked/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    assert_range(&app, "s3/chunked", &d, &data, 99_990, 200_010).await;
}

#[tokio::test]
async fn manifest_push_pull_and_mount() {
    let app = s3_app().await;
    let (m, md) = app.push_image("s3/img", "v1", b"layer on s3").await;
    for reference in ["v1", md.as_str()] {
        let r = app.get(&format!("/v2/s3/img/manifests/{reference}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), md);
        assert_eq!(&r.bytes().await.unwrap()[..], &m[..]);
    }
    let layer = sha256(b"layer on s3");
    let r = app
        .req(
            Method::POST,
            &format!("/v2/s3/other/blobs/uploads/?mount={layer}&from=s3/img"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app.get(&format!("/v2/s3/other/blobs/{layer}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"layer on s3");
}

#[tokio::test]
async fn garbage_collection_deletes_from_the_bucket() {
    let app = s3_app().await;
    // Pushed by digest, with no tag (tags are immutable).
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = app.push_blob("s3/gc", config).await;
    let layer = app.push_blob("s3/gc", b"a layer to collect").await;
    let m = image_manifest(&cd, config.len(), &[(layer.clone(), 18)], None, None);
    let md = sha256(&m);
    let r = app.put_manifest("s3/gc", &md, OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    assert!(in_bucket(&app, &layer).await);

    assert_eq!(
        app.delete(&format!("/v2/s3/gc/manifests/{md}"))
            .await
            .status(),
        202
    );
    let r = app.req(Method::POST, "/api/v1/gc").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let done: serde_json::Value = r.json().await.unwrap();
    // At least the layer and the config.
    assert!(done["blobs"].as_u64().unwrap() >= 2, "{done}");
    assert_eq!(
        app.get(&format!("/v2/s3/gc/blobs/{layer}")).await.status(),
        404
    );
    assert!(
        !in_bucket(&app, &layer).await,
        "the object is gone from the bucket"
    );
}

/// 64 MiB in four 16 MiB PATCHes: each chunk is a multipart upload of its own,
/// and finishing concatenates them into the blob by streaming.
#[tokio::test]
async fn a_64_mib_chunked_upload() {
    let app = s3_app().await;
    const CHUNK: usize = 16 << 20;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut hasher = Sha256::new();
    let chunks: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            let c: Vec<u8> = (0..CHUNK / 8)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()
                })
                .collect();
            hasher.update(&c);
            c
        })
        .collect();
    let d = format!("sha256:{}", hex::encode(hasher.finalize()));
    chunked_upload(&app, "s3/big", &chunks, &d).await;
    drop(chunks);

    let r = app.get(&format!("/v2/s3/big/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(4 * CHUNK as u64));
    let mut pulled = Sha256::new();
    let mut len = 0usize;
    let mut body = r.bytes_stream();
    while let Some(b) = body.next().await {
        let b = b.unwrap();
        len += b.len();
        pulled.update(&b);
    }
    assert_eq!(len, 4 * CHUNK);
    assert_eq!(format!("sha256:{}", hex::encode(pulled.finalize())), d);
}

/// Two replicas on one PostgreSQL database and one bucket: an upload whose every
/// request goes to the other replica than the one before, then pulled from the
/// one that did not finish it.
#[tokio::test]
async fn an_upload_spread_over_two_replicas() {
    let a = s3_app().await;
    let b = a.restart().await;
    let replicas = [&a, &b];
    let data: Vec<u8> = (0..9_000_000u32).map(|i| (i * 31 % 257) as u8).collect();
    let d = sha256(&data);

    let mut location = start(&a, "s3/replicas").await;
    let mut offset = 0usize;
    for (i, c) in data.chunks(2_000_000).enumerate() {
        // Chunk 0 to b, chunk 1 to a, …: never the replica of the request before.
        let app = replicas[(i + 1) % 2];
        let path = location
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap()
            .to_string();
        let r = app
            .client
            .patch(format!("{}{path}", app.base))
            .header("Content-Type", "application/octet-stream")
            .header(
                "Content-Range",
                format!("{offset}-{}", offset + c.len() - 1),
            )
            .body(c.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            202,
            "chunk {i}: {}",
            r.text().await.unwrap_or_default()
        );
        offset += c.len();
        location = app.url_of(r.headers()["location"].to_str().unwrap());
    }
    // Five chunks, the last to b: a finishes and b serves the pull.
    let path = location
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap()
        .to_string();
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = a
        .client
        .put(format!("{}{path}{sep}digest={d}", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());

    let r = b.get(&format!("/v2/s3/replicas/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    let pulled = r.bytes().await.unwrap();
    assert_eq!(pulled.len(), data.len());
    assert_eq!(sha256(&pulled), d);
    assert_range(&b, "s3/replicas", &d, &data, 1_999_990, 2_000_009).await;
}

/// With `[storage.s3] redirect_pulls`, a blob GET answers `307` with a
/// presigned URL of the object: a plain HTTP client (no credentials) gets the
/// exact bytes there; HEAD and ranged GETs are still answered by the registry;
/// the pull is counted in the metrics and the pull statistics.
#[tokio::test]
async fn pulls_redirect_to_presigned_urls() {
    let app = TestApp::spawn_s3_with(Db::Postgres, |c| {
        c.storage.s3.redirect_pulls = Some(true);
        c.storage.s3.presign_expiry_secs = Some(120);
        c.metrics.pull_stats_flush_secs = 1;
    })
    .await;
    let repo = "s3/redirect";
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let d = app.push_blob(repo, &data).await;
    let path = format!("/v2/{repo}/blobs/{d}");

    // The registry's client does not follow redirects: it sees the 307.
    let r = app.get(&path).await;
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), d);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.contains("X-Amz-Signature=") && location.contains("X-Amz-Expires=120"),
        "{location}"
    );
    assert!(r.bytes().await.unwrap().is_empty());

    // Anyone holding the URL gets the bytes, without credentials.
    let direct = reqwest::get(&location).await.unwrap();
    assert_eq!(direct.status(), 200);
    let bytes = direct.bytes().await.unwrap();
    assert_eq!(bytes.len(), data.len());
    assert_eq!(sha256(&bytes), d);

    // A client that follows redirects (as docker does) just gets the blob.
    let follows = reqwest::Client::new();
    let r = follows
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), d);

    // HEAD and ranges: the registry answers.
    let r = app.head(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        data.len().to_string()
    );
    assert_range(&app, repo, &d, &data, 10, 20_000).await;

    // Two redirected pulls and one ranged pull are counted.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let series = format!("cairn_blob_pulls_total{{repository=\"{repo}\"}} ");
    let pulls: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .expect("the repository's blob pulls")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pulls, 3.0, "{metrics}");
    let mut totals = serde_json::Value::Null;
    for _ in 0..100 {
        totals = app
            .get(&format!("/api/v1/repositories/{repo}"))
            .await
            .json()
            .await
            .unwrap();
        if totals["blob_pulls"] == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(totals["blob_pulls"], 3, "{totals}");
    assert_eq!(
        totals["bytes_served"].as_u64(),
        Some(2 * data.len() as u64 + 19_991),
        "{totals}"
    );
}

/// Without `redirect_pulls` (the default) the registry streams the bytes.
#[tokio::test]
async fn pulls_are_not_redirected_by_default() {
    let app = s3_app().await;
    let d = app.push_blob("s3/direct", b"served by the registry").await;
    let r = app.get(&format!("/v2/s3/direct/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"served by the registry");
}

/// The multipart uploads in progress in the app's bucket (S3
/// `ListMultipartUploads`, which moto answers without signatures).
async fn multipart_uploads(app: &TestApp) -> usize {
    let endpoint = app.config.storage.s3.endpoint.clone().expect("endpoint");
    let bucket = app
        .config
        .storage
        .url
        .strip_prefix("s3://")
        .and_then(|r| r.split('/').next())
        .expect("bucket")
        .to_string();
    let xml = reqwest::get(format!("{endpoint}/{bucket}?uploads"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    xml.matches("<UploadId>").count()
}

/// A chunk whose client goes away in the middle of it was being written as a
/// multipart upload; the registry aborts that upload, so no part of it stays
/// in the bucket. (A process killed mid-chunk cannot abort anything: the
/// bucket's `AbortIncompleteMultipartUpload` lifecycle rule, see the README,
/// reclaims those parts.)
#[tokio::test]
async fn an_abandoned_chunk_aborts_its_multipart_upload() {
    let app = s3_app().await;
    let url = start(&app, "s3/abandoned").await;
    let (tx, rx) = futures::channel::mpsc::unbounded::<std::io::Result<Vec<u8>>>();
    // 20 MiB: more than two 8 MiB parts, so a multipart upload is under way.
    for i in 0..20u8 {
        tx.unbounded_send(Ok(vec![i; 1 << 20])).unwrap();
    }
    let request = app
        .client
        .patch(&url)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(rx))
        .send();
    let request = tokio::spawn(request);
    let mut seen = 0;
    for _ in 0..100 {
        seen = multipart_uploads(&app).await;
        if seen > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 1, "the chunk is being written as a multipart upload");
    // The client fails mid-body.
    tx.unbounded_send(Err(std::io::Error::other("client gone")))
        .unwrap();
    let _ = request.await;
    let mut left = seen;
    for _ in 0..100 {
        left = multipart_uploads(&app).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the abandoned multipart upload was aborted");
    // The session is where it was: nothing of the failed chunk counts.
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"].to_str().unwrap(), "0-0");
    assert_eq!(app.stored_objects("uploads").await, 0);
}
