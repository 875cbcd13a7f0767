//! Blob reads and deletes (end-2, end-10), as a client sees them.

use reqwest::Method;

use crate::both;
use crate::helpers::{error_code, seeded_bytes, sha256, TestApp};

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn get_and_head_describe_the_blob(app: TestApp) {
    let data = b"hello, blob";
    let d = app.push_blob("demo", data).await;

    let r = app.get(&format!("/v2/demo/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(header(&r, "content-length"), Some("11"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), data);

    let r = app.head(&format!("/v2/demo/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(header(&r, "content-length"), Some("11"));
    assert!(r.bytes().await.unwrap().is_empty());
}

async fn range_requests_return_206_with_content_range(app: TestApp) {
    let data: Vec<u8> = (0..100u8).collect();
    let d = app.push_blob("demo", &data).await;
    let path = format!("/v2/demo/blobs/{d}");

    let r = app
        .req(Method::GET, &path)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), Some("bytes 10-19/100"));
    assert_eq!(header(&r, "content-length"), Some("10"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);

    // Open-ended and suffix ranges.
    let r = app
        .req(Method::GET, &path)
        .header("Range", "bytes=95-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), Some("bytes 95-99/100"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[95..]);
    let r = app
        .req(Method::GET, &path)
        .header("Range", "bytes=-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), Some("bytes 97-99/100"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[97..]);
}

async fn unsatisfiable_ranges_are_416_with_the_size(app: TestApp) {
    let data = [7u8; 100];
    let d = app.push_blob("demo", &data).await;
    for range in ["bytes=100-", "bytes=500-600", "bytes=-0"] {
        let r = app
            .req(Method::GET, &format!("/v2/demo/blobs/{d}"))
            .header("Range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(header(&r, "content-range"), Some("bytes */100"), "{range}");
    }
}

async fn unknown_blobs_are_404_blob_unknown(app: TestApp) {
    app.push_blob("demo", b"something else").await;
    let d = sha256(b"never pushed");
    for m in [Method::GET, Method::HEAD] {
        let r = app
            .req(m.clone(), &format!("/v2/demo/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{m}");
        if m == Method::GET {
            assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
        }
    }
    // A repository that does not exist at all.
    let r = app.get(&format!("/v2/nothing/here/blobs/{d}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
}

async fn blobs_of_another_repository_are_not_visible(app: TestApp) {
    let d = app.push_blob("alice/private", b"alice's layer").await;
    assert_eq!(
        app.get(&format!("/v2/alice/private/blobs/{d}"))
            .await
            .status(),
        200
    );
    let r = app.get(&format!("/v2/bob/app/blobs/{d}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    // Not even once bob's repository exists.
    app.push_blob("bob/app", b"bob's layer").await;
    let r = app.head(&format!("/v2/bob/app/blobs/{d}")).await;
    assert_eq!(r.status(), 404);
}

async fn deleting_a_blob_is_202_then_404(app: TestApp) {
    let d = app.push_blob("demo", b"to be deleted").await;
    let other = app.push_blob("other", b"to be deleted").await;
    assert_eq!(d, other);

    let r = app.delete(&format!("/v2/demo/blobs/{d}")).await;
    assert_eq!(r.status(), 202);
    let r = app.get(&format!("/v2/demo/blobs/{d}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = app.delete(&format!("/v2/demo/blobs/{d}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    // The other repository still serves its copy.
    let r = app.get(&format!("/v2/other/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"to be deleted");
}

async fn malformed_digests_are_400_digest_invalid(app: TestApp) {
    for d in [
        "sha256:zz",
        "sha256:abc",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:",
    ] {
        let r = app.get(&format!("/v2/demo/blobs/{d}")).await;
        assert_eq!(r.status(), 400, "{d}");
        assert_eq!(error_code(r).await, "DIGEST_INVALID", "{d}");
    }
}

async fn invalid_repository_names_are_400_name_invalid(app: TestApp) {
    let d = sha256(b"x");
    for name in ["Upper", "a__-b", "a//b", "-lead", "trail-", "a/.b"] {
        let r = app.get(&format!("/v2/{name}/blobs/{d}")).await;
        assert_eq!(r.status(), 400, "{name}");
        assert_eq!(error_code(r).await, "NAME_INVALID", "{name}");
    }
    let long = "a".repeat(256);
    let r = app.get(&format!("/v2/{long}/blobs/{d}")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "NAME_INVALID");
}

async fn nested_repository_names_work(app: TestApp) {
    let d = app.push_blob("team/app/api", b"nested").await;
    let r = app.get(&format!("/v2/team/app/api/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"nested");
    // Neither a prefix nor a suffix of the name is the same repository.
    assert_eq!(
        app.get(&format!("/v2/team/app/blobs/{d}")).await.status(),
        404
    );
    assert_eq!(
        app.get(&format!("/v2/app/api/blobs/{d}")).await.status(),
        404
    );
    // A repository may be called "blobs".
    let d = app.push_blob("team/blobs", b"odd name").await;
    let r = app.get(&format!("/v2/team/blobs/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"odd name");
}

async fn empty_blobs_round_trip(app: TestApp) {
    let d = app.push_blob("demo", b"").await;
    let r = app.get(&format!("/v2/demo/blobs/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some("0"));
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    assert!(r.bytes().await.unwrap().is_empty());
}

/// Large bodies are written in batches whose size depends on how many
/// uploads are in flight, so it changes while they run; each blob must still
/// be exactly its own bytes.
async fn large_pushes_at_once_each_store_exactly_their_bytes(app: TestApp) {
    let blobs: Vec<Vec<u8>> = (0..5)
        .map(|i| seeded_bytes(i, (3 << 20) + i * 4099 + 1))
        .collect();
    // Each push carries its digest; the registry answers 201 only if what it
    // stored hashes to it.
    let digests =
        futures::future::join_all(blobs.iter().map(|b| app.push_blob("demo/large", b))).await;
    for (data, d) in blobs.iter().zip(&digests) {
        assert_eq!(d, &sha256(data));
        let r = app.get(&format!("/v2/demo/large/blobs/{d}")).await;
        assert_eq!(r.status(), 200);
        let got = r.bytes().await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(
            got.as_ref() == data.as_slice(),
            "blob {d} came back altered"
        );
    }
}

both!(
    get_and_head_describe_the_blob,
    range_requests_return_206_with_content_range,
    unsatisfiable_ranges_are_416_with_the_size,
    unknown_blobs_are_404_blob_unknown,
    blobs_of_another_repository_are_not_visible,
    deleting_a_blob_is_202_then_404,
    malformed_digests_are_400_digest_invalid,
    invalid_repository_names_are_400_name_invalid,
    nested_repository_names_work,
    empty_blobs_round_trip,
    large_pushes_at_once_each_store_exactly_their_bytes,
);
