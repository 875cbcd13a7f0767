//! Blob uploads (end-4a/4b, end-5, end-6, end-11, end-13), as a client sees them.

use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::{Method, Response};
use sha2::{Digest as _, Sha512};

use crate::both;
use crate::helpers::{error_code, sha256, Db, TestApp};

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(data)))
}

/// `url` with `?digest=` (or `&digest=`) appended.
fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

/// POSTs a new upload session and returns the absolute URL of its Location.
async fn start(app: &TestApp, repo: &str, query: &str) -> String {
    let r = app
        .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    assert!(header(&r, "docker-upload-uuid").is_some());
    app.url_of(header(&r, "location").expect("Location"))
}

async fn patch(app: &TestApp, url: &str, range: Option<&str>, body: &[u8]) -> Response {
    let mut b = app.client.patch(url).body(body.to_vec());
    if let Some(r) = range {
        b = b
            .header("Content-Range", r)
            .header("Content-Type", "application/octet-stream");
    }
    b.send().await.unwrap()
}

async fn put(app: &TestApp, url: &str, digest: &str, body: &[u8]) -> Response {
    app.client
        .put(with_digest(url, digest))
        .header("Content-Type", "application/octet-stream")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

async fn assert_blob(app: &TestApp, repo: &str, digest: &str, data: &[u8]) {
    let r = app.get(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(r.status(), 200, "blob {digest} in {repo}");
    assert_eq!(header(&r, "docker-content-digest"), Some(digest));
    assert_eq!(
        header(&r, "content-length"),
        Some(data.len().to_string().as_str())
    );
    let got = r.bytes().await.unwrap();
    assert!(got.as_ref() == data, "bytes of {digest} differ");
}

async fn assert_no_blob(app: &TestApp, repo: &str, digest: &str) {
    let r = app.get(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(
        r.status(),
        404,
        "blob {digest} must not be visible in {repo}"
    );
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
}

/// The session at `url` is gone: its status and a late finish (of `late`)
/// both answer `404 BLOB_UPLOAD_UNKNOWN`.
async fn assert_upload_gone(app: &TestApp, url: &str, late: &[u8]) {
    let r = app.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 404, "status of {url}");
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = put(app, url, &sha256(late), late).await;
    assert_eq!(r.status(), 404, "late finish of {url}");
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

async fn post_then_put_monolithic(app: TestApp) {
    let data = b"monolithic upload";
    let d = sha256(data);
    let url = start(&app, "demo", "").await;
    let r = put(&app, &url, &d, data).await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    let loc = header(&r, "location").expect("Location").to_string();
    assert!(loc.ends_with(&format!("/v2/demo/blobs/{d}")), "{loc}");
    // The Location serves the blob.
    let r = app.client.get(app.url_of(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data);
    // The session is gone, for every request.
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = put(&app, &url, &d, data).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = patch(&app, &url, None, b"more").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = app.client.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

/// A session cancelled before it received anything is gone as well.
async fn sessions_cancelled_before_any_chunk_are_gone(app: TestApp) {
    let url = start(&app, "demo", "").await;
    let r = app.client.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_upload_gone(&app, &url, b"late").await;
    assert_no_blob(&app, "demo", &sha256(b"late")).await;
    let r = patch(&app, &url, None, b"late").await;
    assert_eq!(r.status(), 404);
    // An id that was never issued (right form, made up) is unknown too once
    // it would have expired; a made-up id in the wrong form at once.
    let r = app.get("/v2/demo/blobs/uploads/not-a-session").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

async fn single_post_with_digest(app: TestApp) {
    let data = b"single POST";
    let d = sha256(data);
    let r = app
        .req(Method::POST, &format!("/v2/demo/blobs/uploads/?digest={d}"))
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    assert!(header(&r, "location")
        .unwrap()
        .ends_with(&format!("/v2/demo/blobs/{d}")));
    assert_blob(&app, "demo", &d, data).await;

    // A wrong digest stores nothing.
    let wrong = sha256(b"something else");
    let r = app
        .req(
            Method::POST,
            &format!("/v2/demo/blobs/uploads/?digest={wrong}"),
        )
        .body(b"not that".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_no_blob(&app, "demo", &wrong).await;
    assert_no_blob(&app, "demo", &sha256(b"not that")).await;
}

async fn chunked_patches_in_order(app: TestApp) {
    let data: Vec<u8> = (0..30u8).collect();
    let d = sha256(&data);
    let url = start(&app, "demo", "").await;

    let r = patch(&app, &url, Some("0-9"), &data[..10]).await;
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), Some("0-9"));
    let url = app.url_of(header(&r, "location").expect("Location"));
    let r = patch(&app, &url, Some("10-19"), &data[10..20]).await;
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), Some("0-19"));
    let url = app.url_of(header(&r, "location").expect("Location"));
    let r = patch(&app, &url, Some("20-29"), &data[20..]).await;
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), Some("0-29"));
    let url = app.url_of(header(&r, "location").expect("Location"));

    let r = put(&app, &url, &d, b"").await;
    assert_eq!(r.status(), 201);
    assert_blob(&app, "demo", &d, &data).await;
}

async fn out_of_order_chunks_are_416_with_the_current_range(app: TestApp) {
    let data: Vec<u8> = (0..30u8).collect();
    let url = start(&app, "demo", "").await;
    let r = patch(&app, &url, Some("0-9"), &data[..10]).await;
    assert_eq!(r.status(), 202);

    // A gap, then a repeat of the first chunk: both refused with the size held.
    for (range, body) in [("20-29", &data[20..]), ("0-9", &data[..10])] {
        let r = patch(&app, &url, Some(range), body).await;
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(header(&r, "range"), Some("0-9"), "{range}");
    }
    // The upload is unharmed: it continues where it stood.
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-9"));
    let r = patch(&app, &url, Some("10-29"), &data[10..]).await;
    assert_eq!(r.status(), 202);
    let r = put(&app, &url, &sha256(&data), b"").await;
    assert_eq!(r.status(), 201);
    assert_blob(&app, "demo", &sha256(&data), &data).await;
}

async fn content_range_with_and_without_bytes_prefix(app: TestApp) {
    let data = b"0123456789abcdefghij";
    let url = start(&app, "demo", "").await;
    let r = patch(&app, &url, Some("0-9"), &data[..10]).await;
    assert_eq!(r.status(), 202);
    let r = patch(&app, &url, Some("bytes=10-14"), &data[10..15]).await;
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), Some("0-14"));
    let r = patch(&app, &url, Some("bytes 15-19/*"), &data[15..]).await;
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), Some("0-19"));
    let r = put(&app, &url, &sha256(data), b"").await;
    assert_eq!(r.status(), 201);
    assert_blob(&app, "demo", &sha256(data), data).await;
}

async fn streamed_patch_with_chunked_transfer_encoding(app: TestApp) {
    let pieces: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 3000 + i as usize]).collect();
    let data: Vec<u8> = pieces.concat();
    let url = start(&app, "demo", "").await;

    let stream = futures::stream::iter(
        pieces
            .clone()
            .into_iter()
            .map(|p| Ok::<_, std::io::Error>(Bytes::from(p))),
    );
    let r = app
        .client
        .patch(&url)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let want = format!("0-{}", data.len() - 1);
    assert_eq!(header(&r, "range"), Some(want.as_str()));

    // A second streamed PATCH appends.
    let tail = b"and the tail".to_vec();
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(tail.clone()))]);
    let r = app
        .client
        .patch(&url)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let all = [data, tail].concat();
    let want = format!("0-{}", all.len() - 1);
    assert_eq!(header(&r, "range"), Some(want.as_str()));

    let r = put(&app, &url, &sha256(&all), b"").await;
    assert_eq!(r.status(), 201);
    assert_blob(&app, "demo", &sha256(&all), &all).await;
}

async fn upload_status_is_204_with_range(app: TestApp) {
    let url = start(&app, "demo", "").await;
    let r = patch(&app, &url, None, &[1u8; 1234]).await;
    assert_eq!(r.status(), 202);
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-1233"));
    assert!(header(&r, "location").is_some());
    assert!(header(&r, "docker-upload-uuid").is_some());

    // An id that was never issued.
    let r = app
        .get("/v2/demo/blobs/uploads/0192f0a0-0000-7000-8000-000000000000")
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

async fn cancelled_uploads_are_gone(app: TestApp) {
    let url = start(&app, "demo", "").await;
    let r = patch(&app, &url, None, b"partial").await;
    assert_eq!(r.status(), 202);
    let r = app.client.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 204);

    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = patch(&app, &url, None, b"more").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = put(&app, &url, &sha256(b"partial"), b"").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = app.client.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    assert_no_blob(&app, "demo", &sha256(b"partial")).await;
}

async fn uploads_belong_to_their_repository(app: TestApp) {
    let url = start(&app, "alice/app", "").await;
    let id = url.rsplit('/').next().unwrap().to_string();
    let r = app.get(&format!("/v2/bob/app/blobs/uploads/{id}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = app
        .req(
            Method::PUT,
            &format!("/v2/bob/app/blobs/uploads/{id}?digest={}", sha256(b"x")),
        )
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_no_blob(&app, "bob/app", &sha256(b"x")).await;
    assert_no_blob(&app, "alice/app", &sha256(b"x")).await;
}

async fn wrong_digest_on_put_is_digest_invalid_and_stores_nothing(app: TestApp) {
    let data = b"the real content";
    let wrong = sha256(b"what the client claims");
    let url = start(&app, "demo", "").await;
    let r = patch(&app, &url, None, &data[..8]).await;
    assert_eq!(r.status(), 202);
    let r = put(&app, &url, &wrong, &data[8..]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_no_blob(&app, "demo", &wrong).await;
    assert_no_blob(&app, "demo", &sha256(data)).await;

    // A PUT without any digest is refused too.
    let r = app
        .client
        .put(&url)
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

async fn sha512_uploads(app: TestApp) {
    let data = b"hashed with sha512 from the start";
    let d = sha512(data);
    let url = start(&app, "demo", "?digest-algorithm=sha512").await;
    let r = patch(&app, &url, Some("0-9"), &data[..10]).await;
    assert_eq!(r.status(), 202);
    let r = put(&app, &url, &d, &data[10..]).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_blob(&app, "demo", &d, data).await;

    // A single POST with a sha512 digest.
    let data2 = b"single post, sha512";
    let d2 = sha512(data2);
    let r = app
        .req(
            Method::POST,
            &format!("/v2/demo/blobs/uploads/?digest={d2}"),
        )
        .body(data2.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), Some(d2.as_str()));
    assert_blob(&app, "demo", &d2, data2).await;

    // An algorithm the registry cannot verify is refused up front.
    let r = app
        .req(Method::POST, "/v2/demo/blobs/uploads/?digest-algorithm=md5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

async fn finishing_a_sha256_upload_with_a_sha512_digest(app: TestApp) {
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 199) as u8).collect();
    let url = start(&app, "demo", "").await;
    let r = patch(&app, &url, Some("0-2999"), &data[..3000]).await;
    assert_eq!(r.status(), 202);

    // The wrong sha512 digest first: refused, nothing stored, session kept.
    let r = put(&app, &url, &sha512(b"nope"), &data[3000..]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_no_blob(&app, "demo", &sha512(&data)).await;
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-2999"));

    let r = put(&app, &url, &sha512(&data), &data[3000..]).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_blob(&app, "demo", &sha512(&data), &data).await;
    // It was stored under the sha512 digest only.
    assert_no_blob(&app, "demo", &sha256(&data)).await;
}

async fn cross_repository_mount(app: TestApp) {
    let data = b"shared base layer";
    let d = app.push_blob("library/base", data).await;

    let r = app
        .req(
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?mount={d}&from=library/base"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    assert!(header(&r, "location")
        .unwrap()
        .ends_with(&format!("/v2/team/app/blobs/{d}")));
    assert_blob(&app, "team/app", &d, data).await;

    // The source lacks the blob: a normal upload session starts instead.
    let missing = sha256(b"not in the source");
    let r = app
        .req(
            Method::POST,
            &format!("/v2/team/other/blobs/uploads/?mount={missing}&from=library/base"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let url = app.url_of(header(&r, "location").expect("Location"));
    assert_no_blob(&app, "team/other", &missing).await;
    // ... which works as any other.
    let r = put(&app, &url, &missing, b"not in the source").await;
    assert_eq!(r.status(), 201);

    // The source repository does not exist at all.
    let r = app
        .req(
            Method::POST,
            &format!("/v2/team/third/blobs/uploads/?mount={d}&from=no/such/repo"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(header(&r, "location").is_some());
    assert_no_blob(&app, "team/third", &d).await;

    // A repository holding the blob only through another one cannot lend it:
    // deleting it from the mount target leaves the source serving it.
    assert_eq!(
        app.delete(&format!("/v2/team/app/blobs/{d}"))
            .await
            .status(),
        202
    );
    assert_no_blob(&app, "team/app", &d).await;
    assert_blob(&app, "library/base", &d, data).await;
}

async fn upload_continues_after_a_restart(app: TestApp) {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let d = sha256(&data);
    let url = start(&app, "demo", "").await;
    let r = patch(&app, &url, Some("0-49999"), &data[..50_000]).await;
    assert_eq!(r.status(), 202);
    let path = url.strip_prefix(&app.base).unwrap().to_string();
    // The received chunk is in the shared store.
    let id = path.rsplit('/').next().unwrap();
    assert_eq!(app.stored_objects(&format!("uploads/{id}")).await, 1);

    let second = app.restart().await;
    assert_ne!(second.base, app.base);
    let url2 = second.url_of(&path);
    let r = second.client.get(&url2).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-49999"));
    let r = patch(&second, &url2, Some("50000-89999"), &data[50_000..90_000]).await;
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), Some("0-89999"));
    let r = put(&second, &url2, &d, &data[90_000..]).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_blob(&second, "demo", &d, &data).await;
    // Both servers see the same registry.
    assert_blob(&app, "demo", &d, &data).await;
}

/// Two replicas (two servers over one database and blob directory) receive the
/// same chunk offset at once: exactly one append wins, the other is told where
/// the upload stands, and the blob is the winner's bytes.
async fn concurrent_chunks_at_one_offset_on_two_servers(app: TestApp) {
    let second = app.restart().await;
    for round in 0..5u8 {
        let url = start(&app, "demo", "").await;
        let url2 = second.url_of(url.strip_prefix(&app.base).unwrap());
        let a = vec![round; 64 * 1024];
        let b = vec![round + 100; 64 * 1024];
        let (ra, rb) = tokio::join!(
            patch(&app, &url, Some("0-65535"), &a),
            patch(&second, &url2, Some("0-65535"), &b)
        );
        let (sa, sb) = (ra.status().as_u16(), rb.status().as_u16());
        assert!(
            (sa, sb) == (202, 416) || (sa, sb) == (416, 202),
            "round {round}: {sa} {sb}"
        );
        let loser = if sa == 416 { &ra } else { &rb };
        assert_eq!(header(loser, "range"), Some("0-65535"));
        let winner = if sa == 202 { &a } else { &b };
        let r = put(&app, &url, &sha256(winner), b"").await;
        assert_eq!(r.status(), 201, "round {round}");
        assert_blob(&second, "demo", &sha256(winner), winner).await;
    }
}

async fn a_multi_mebibyte_blob_in_chunks(app: TestApp) {
    let size = 5 * 1024 * 1024 + 12_345;
    let data: Vec<u8> = (0..size as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let d = sha256(&data);
    let url = start(&app, "big/blob", "").await;
    let chunk = 1_500_000;
    let mut offset = 0;
    let mut last: &[u8] = &[];
    while offset < size {
        let end = (offset + chunk).min(size);
        if end == size {
            last = &data[offset..end];
            break;
        }
        let r = patch(
            &app,
            &url,
            Some(&format!("{}-{}", offset, end - 1)),
            &data[offset..end],
        )
        .await;
        assert_eq!(r.status(), 202);
        assert_eq!(header(&r, "range"), Some(format!("0-{}", end - 1).as_str()));
        offset = end;
    }
    let r = put(&app, &url, &d, last).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_blob(&app, "big/blob", &d, &data).await;
    // A range from the middle, across chunk boundaries.
    let r = app
        .req(Method::GET, &format!("/v2/big/blob/blobs/{d}"))
        .header("Range", "bytes=1499990-3000009")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap().as_ref() == &data[1_499_990..3_000_010]);
}

/// A PUT of a whole multi-MiB blob, streamed in uneven pieces: the server
/// hashes the first MiB as it arrives and the rest beside its writes, and
/// must still verify every byte exactly once, whichever piece the switch
/// falls in. One wrong byte at the very end is caught.
async fn a_multi_mebibyte_monolithic_put_is_verified_whole(app: TestApp) {
    let size = 3 * 1024 * 1024 + 777;
    let data: Vec<u8> = (0..size as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let streamed = |body: Vec<u8>| {
        let pieces: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(100_003)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        reqwest::Body::wrap_stream(futures::stream::iter(pieces))
    };
    let mut tampered = data.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let url = start(&app, "big/mono", "").await;
    let r = app
        .client
        .put(with_digest(&url, &sha256(&data)))
        .body(streamed(tampered.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_no_blob(&app, "big/mono", &sha256(&data)).await;
    assert_no_blob(&app, "big/mono", &sha256(&tampered)).await;

    let d = sha256(&data);
    let url = start(&app, "big/mono", "").await;
    let r = app
        .client
        .put(with_digest(&url, &d))
        .body(streamed(data.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_blob(&app, "big/mono", &d, &data).await;
}

async fn put_with_a_final_chunk_and_content_range(app: TestApp) {
    let data = b"first part|last part";
    let url = start(&app, "demo", "").await;
    let r = patch(&app, &url, Some("0-10"), &data[..11]).await;
    assert_eq!(r.status(), 202);
    // A final chunk that does not start at the end is refused with the range held.
    let r = app
        .client
        .put(with_digest(&url, &sha256(data)))
        .header("Content-Range", "5-13")
        .body(data[5..14].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "range"), Some("0-10"));
    let r = app
        .client
        .put(with_digest(&url, &sha256(data)))
        .header("Content-Range", "11-19")
        .body(data[11..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_blob(&app, "demo", &sha256(data), data).await;
}

async fn blobs_over_the_size_limit_are_413(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.limits.max_blob_bytes = 1000).await;
    let url = start(&app, "demo", "").await;
    let r = patch(&app, &url, Some("0-599"), &[1u8; 600]).await;
    assert_eq!(r.status(), 202);
    let r = patch(&app, &url, Some("600-1099"), &[2u8; 500]).await;
    assert_eq!(r.status(), 413);
    // The upload still holds what it had and can finish within the limit.
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), Some("0-599"));
    let data = [vec![1u8; 600], vec![2u8; 400]].concat();
    let r = put(&app, &url, &sha256(&data), &data[600..]).await;
    assert_eq!(r.status(), 201);
    assert_blob(&app, "demo", &sha256(&data), &data).await;
    // A single POST over the limit stores nothing.
    let big = vec![3u8; 1001];
    let r = app
        .req(
            Method::POST,
            &format!("/v2/demo/blobs/uploads/?digest={}", sha256(&big)),
        )
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_no_blob(&app, "demo", &sha256(&big)).await;
}

macro_rules! both_db {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::helpers::Db::Sqlite).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::helpers::Db::Postgres).await
                }
            }
        )*
    };
}

/// An upload nobody touches for `limits.upload_expiry_secs` is cancelled and its
/// chunks are deleted from the store; so is a staged file as old, which only a
/// process stopped mid-upload leaves.
async fn idle_uploads_expire(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.limits.upload_expiry_secs = 1).await;
    app.put_stored_object(
        "staging/0123456789abcdef0123456789abcdef",
        b"left by a crash",
    )
    .await;
    assert_eq!(app.stored_objects("staging").await, 1);
    let url = start(&app, "demo", "").await;
    let r = patch(&app, &url, Some("0-9"), &[7u8; 10]).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        app.stored_objects("uploads").await,
        1,
        "the chunk is stored"
    );
    // The janitor runs every second for a one-second expiry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = app.client.get(&url).send().await.unwrap();
        if r.status() == 404 {
            assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the idle upload did not expire"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        app.stored_objects("uploads").await,
        0,
        "its chunk is deleted"
    );
    // The staged file went in the same run or the next one, a second later.
    while app.stored_objects("staging").await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the staged file stayed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A session that never received a chunk expires as well, one expiry
    // after it was opened.
    let url = start(&app, "demo", "").await;
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 204);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_upload_gone(&app, &url, b"late").await;
}

/// A burst of uploads finishing at once, more than run at once, where some
/// must be refused: every one gets the answer it would get alone. Distinct
/// blobs (POST then PUT, chunked with a row, single POST, mounts) are stored
/// and served with one audit entry apiece; the same blob pushed by many at
/// once, to two repositories, is served by both with one entry per push; a
/// finish with the wrong digest is refused and leaves nothing; a finish whose
/// session was cancelled while its body was on the way (with or without a
/// chunk stored before) is refused as unknown and leaves nothing; a finish racing the session's cancellation either stores the blob
/// (and the cancellation finds no session) or is refused (and the cancellation
/// went through).
async fn a_burst_of_uploads_answers_each_as_if_alone(app: TestApp) {
    use futures::future::join_all;
    let app = &app;
    let repo = "burst/blobs";
    let blobs = |kind: &str, n: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{kind} {i}: first part|second part").into_bytes())
            .collect()
    };
    let mounted = blobs("mounted", 4);
    for b in &mounted {
        app.push_blob("burst/base", b).await;
    }
    let monolithic = blobs("monolithic", 24);
    let chunked = blobs("chunked", 8);
    let single = blobs("single", 8);
    let wrong = blobs("wrong", 4);
    let raced = blobs("raced", 16);
    let same = b"the same blob, pushed by many".to_vec();
    // Sessions opened beforehand, so that the finishes come together.
    let opened = |n: usize| join_all((0..n).map(|_| start(app, repo, "")));
    let mono_urls = opened(monolithic.len()).await;
    let wrong_urls = opened(wrong.len()).await;
    let chunk_urls = join_all(chunked.iter().chain(&raced).map(|b| async move {
        let url = start(app, repo, "").await;
        let r = patch(app, &url, None, &b[..12]).await;
        assert_eq!(r.status(), 202);
        app.url_of(header(&r, "location").expect("Location"))
    }))
    .await;
    let (chunk_urls, raced_urls) = chunk_urls.split_at(chunked.len());

    let finishes = join_all(
        mono_urls
            .iter()
            .zip(&monolithic)
            .map(|(url, b)| (url, b, &b[..]))
            .chain(
                chunk_urls
                    .iter()
                    .zip(&chunked)
                    .map(|(url, b)| (url, b, &b[12..])),
            )
            .map(|(url, b, rest)| async move {
                let r = put(app, url, &sha256(b), rest).await;
                assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
            }),
    );
    let refused = join_all(wrong_urls.iter().zip(&wrong).map(|(url, b)| async move {
        let r = put(app, url, &sha256(b"something else"), b).await;
        assert_eq!(r.status(), 400);
        assert_eq!(error_code(r).await, "DIGEST_INVALID");
    }));
    let races = join_all(raced_urls.iter().zip(&raced).map(|(url, b)| async move {
        let d = sha256(b);
        let (finish, cancel) =
            futures::join!(put(app, url, &d, &b[12..]), app.client.delete(url).send());
        let cancel = cancel.unwrap().status().as_u16();
        match finish.status().as_u16() {
            201 => {
                assert_eq!(cancel, 404, "cancelled after it finished");
                true
            }
            404 => {
                assert_eq!(cancel, 204, "finish refused, cancellation lost");
                assert_eq!(error_code(finish).await, "BLOB_UPLOAD_UNKNOWN");
                false
            }
            other => panic!("finish racing a cancellation: {other}"),
        }
    }));
    let singles = join_all(
        single
            .iter()
            .map(|b| (repo, b))
            .chain(std::iter::repeat_n((repo, &same), 8))
            .chain(std::iter::repeat_n(("burst/other", &same), 4))
            .map(|(repo, b)| async move { app.push_blob(repo, b).await }),
    );
    let mounts = join_all(mounted.iter().map(|b| async move {
        let d = sha256(b);
        let r = app
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?mount={d}&from=burst/base"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }));
    // Finishes whose sessions are cancelled while their bodies are on the way
    // (the session was read when the request began): they reach the end
    // with the others, and are refused. Half of them hold a first chunk,
    // which the cancellation deletes before the finish can join it.
    let held = blobs("held", 8);
    let mut held_urls = opened(held.len()).await;
    for (url, b) in held_urls.iter_mut().zip(&held).take(4) {
        let r = patch(app, url, None, &b[..6]).await;
        assert_eq!(r.status(), 202);
        *url = app.url_of(header(&r, "location").expect("Location"));
    }
    let (release, released) = tokio::sync::watch::channel(false);
    let held_finishes = join_all(
        held_urls
            .iter()
            .zip(&held)
            .enumerate()
            .map(|(i, (url, b))| {
                let mut released = released.clone();
                let sent = if i < 4 { 6 } else { 0 };
                let (first, rest) = (
                    Bytes::copy_from_slice(&b[sent..12]),
                    Bytes::copy_from_slice(&b[12..]),
                );
                let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
                    .chain(futures::stream::once(async move {
                        let _ = released.wait_for(|r| *r).await;
                        Ok(rest)
                    }));
                let request = app
                    .client
                    .put(with_digest(url, &sha256(b)))
                    .header("Content-Type", "application/octet-stream")
                    .body(reqwest::Body::wrap_stream(body));
                async move {
                    let r = request.send().await.unwrap();
                    assert_eq!(r.status(), 404, "finish of a cancelled session");
                    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
                }
            }),
    );
    let (_, (_, _, raced_stored, _, _)) = futures::join!(held_finishes, async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        for url in &held_urls {
            let r = app.client.delete(url).send().await.unwrap();
            assert_eq!(r.status(), 204, "cancelling {url}");
        }
        let _ = release.send(true);
        futures::join!(finishes, refused, races, singles, mounts)
    });

    // Then a burst in which every upload is accepted: they commit together.
    let more = blobs("more", 32);
    let more_urls = opened(more.len()).await;
    join_all(more_urls.iter().zip(&more).map(|(url, b)| async move {
        let r = put(app, url, &sha256(b), b).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    }))
    .await;

    let audited = |d: String, action: &'static str| async move {
        let v = app
            .get(&format!("/api/v1/audit?digest={d}&action={action}"))
            .await;
        let v: serde_json::Value = v.json().await.unwrap();
        v["entries"].as_array().map_or(0, Vec::len)
    };
    for b in monolithic
        .iter()
        .chain(&chunked)
        .chain(&single)
        .chain(&more)
    {
        assert_blob(app, repo, &sha256(b), b).await;
        assert_eq!(audited(sha256(b), "blob.push").await, 1);
    }
    for b in &mounted {
        assert_blob(app, repo, &sha256(b), b).await;
        assert_eq!(audited(sha256(b), "blob.mount").await, 1);
    }
    assert_blob(app, repo, &sha256(&same), &same).await;
    assert_blob(app, "burst/other", &sha256(&same), &same).await;
    assert_eq!(audited(sha256(&same), "blob.push").await, 12);
    for b in wrong.iter().chain(&held) {
        assert_no_blob(app, repo, &sha256(b)).await;
        assert_eq!(audited(sha256(b), "blob.push").await, 0);
    }
    for (b, stored) in raced.iter().zip(raced_stored) {
        if stored {
            assert_blob(app, repo, &sha256(b), b).await;
        } else {
            assert_no_blob(app, repo, &sha256(b)).await;
        }
        assert_eq!(audited(sha256(b), "blob.push").await, usize::from(stored));
    }
}

both_db!(blobs_over_the_size_limit_are_413, idle_uploads_expire);

both!(
    put_with_a_final_chunk_and_content_range,
    post_then_put_monolithic,
    single_post_with_digest,
    chunked_patches_in_order,
    out_of_order_chunks_are_416_with_the_current_range,
    content_range_with_and_without_bytes_prefix,
    streamed_patch_with_chunked_transfer_encoding,
    upload_status_is_204_with_range,
    cancelled_uploads_are_gone,
    sessions_cancelled_before_any_chunk_are_gone,
    uploads_belong_to_their_repository,
    wrong_digest_on_put_is_digest_invalid_and_stores_nothing,
    sha512_uploads,
    finishing_a_sha256_upload_with_a_sha512_digest,
    cross_repository_mount,
    upload_continues_after_a_restart,
    concurrent_chunks_at_one_offset_on_two_servers,
    a_multi_mebibyte_blob_in_chunks,
    a_multi_mebibyte_monolithic_put_is_verified_whole,
    a_burst_of_uploads_answers_each_as_if_alone,
);
