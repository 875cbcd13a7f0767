//! Listings: tags (end-8a/8b), the catalog, referrers (end-12a/12b).

use reqwest::{Method, Response};
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{error_code, image_manifest, sha256, TestApp, OCI_INDEX, OCI_MANIFEST};

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The target of a `Link: <…>; rel="next"` header.
fn next_link(r: &Response) -> Option<String> {
    let v = header(r, "link")?;
    assert!(v.contains("rel=\"next\""), "Link without rel=next: {v}");
    let start = v.find('<')? + 1;
    let end = v.find('>')?;
    Some(v[start..end].to_string())
}

/// Follows `Link` headers from `first` until there is none; returns every page's
/// items (under `key`) and the number of pages.
async fn follow(app: &TestApp, first: &str, key: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let mut pages = Vec::new();
    let mut urls = Vec::new();
    let mut next = Some(app.url_of(first));
    while let Some(url) = next {
        assert!(pages.len() < 50, "pagination does not end");
        let r = app.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert!(header(&r, "content-type")
            .unwrap_or("")
            .starts_with("application/json"));
        next = next_link(&r).map(|l| app.url_of(&l));
        urls.push(url);
        let v: Value = r.json().await.unwrap();
        let items: Vec<String> = serde_json::from_value(v[key].clone()).unwrap();
        pages.push(items);
    }
    (pages, urls)
}

/// Tags a single image (pushed once) with every tag in `tags`.
async fn tag_all(app: &TestApp, repo: &str, tags: &[&str]) -> String {
    let (m, d) = app.push_image(repo, tags[0], b"layer").await;
    for t in &tags[1..] {
        let r = app.put_manifest(repo, t, OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), 201);
    }
    d
}

async fn tags_are_listed_in_lexical_order(app: TestApp) {
    // Pushed out of order, mixing case, digits and punctuation.
    let tags = [
        "v1.10", "v1.9", "latest", "V2", "_x", "a-b", "a.b", "a_b", "1.0", "ab",
    ];
    tag_all(&app, "team/app", &tags).await;
    let r = app.get("/v2/team/app/tags/list").await;
    assert_eq!(r.status(), 200);
    assert!(next_link(&r).is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["name"], "team/app");
    let mut want: Vec<&str> = tags.to_vec();
    want.sort_unstable(); // byte order
    assert_eq!(v["tags"], json!(want));
}

async fn tags_paginate_with_link_headers(app: TestApp) {
    let tags = ["t1", "t2", "t3", "t4", "t5", "t6", "t7"];
    tag_all(&app, "demo", &tags).await;

    let (pages, urls) = follow(&app, "/v2/demo/tags/list?n=3", "tags").await;
    assert_eq!(
        pages,
        vec![vec!["t1", "t2", "t3"], vec!["t4", "t5", "t6"], vec!["t7"],]
    );
    assert!(
        urls[1].contains("n=3") && urls[1].contains("last=t3"),
        "{}",
        urls[1]
    );

    // Exactly n left: the last full page has no Link.
    let (pages, _) = follow(&app, "/v2/demo/tags/list?n=7", "tags").await;
    assert_eq!(pages, vec![tags.to_vec()]);
    // `last` alone starts after it.
    let v: Value = app
        .get("/v2/demo/tags/list?last=t5")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], json!(["t6", "t7"]));
    // `last` beyond the end: an empty list.
    let r = app.get("/v2/demo/tags/list?n=2&last=zzz").await;
    assert_eq!(r.status(), 200);
    assert!(next_link(&r).is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));
}

async fn tags_with_n_zero_are_an_empty_list(app: TestApp) {
    tag_all(&app, "demo", &["a", "b"]).await;
    let r = app.get("/v2/demo/tags/list?n=0").await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "link").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["name"], "demo");
    assert_eq!(v["tags"], json!([]));
}

async fn tags_of_an_unknown_repository_are_name_unknown(app: TestApp) {
    app.push_image("known", "v1", b"layer").await;
    let r = app.get("/v2/unknown/tags/list").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    let r = app.get("/v2/known/sub/tags/list").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    // A malformed n is refused.
    let r = app.get("/v2/known/tags/list?n=-1").await;
    assert_eq!(r.status(), 400);
}

async fn catalog_paginates_like_tags(app: TestApp) {
    let repos = ["b/app", "a-c", "a/b", "ab", "z", "library/x", "a"];
    for r in repos {
        app.push_blob(r, r.as_bytes()).await;
    }
    let mut want: Vec<String> = repos.iter().map(|s| s.to_string()).collect();
    want.sort();

    let r = app.get("/v2/_catalog").await;
    assert_eq!(r.status(), 200);
    assert!(next_link(&r).is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(want));

    let (pages, _) = follow(&app, "/v2/_catalog?n=2", "repositories").await;
    assert_eq!(pages.len(), 4);
    assert!(pages.iter().all(|p| p.len() <= 2 && !p.is_empty()));
    assert_eq!(pages.concat(), want);

    let r = app.get("/v2/_catalog?n=0").await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "link").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!([]));
}

async fn referrers_of_an_unreferenced_manifest_are_an_empty_index(app: TestApp) {
    let (_, d) = app.push_image("demo", "v1", b"layer").await;
    for subject in [d, sha256(b"not even a manifest")] {
        let r = app.get(&format!("/v2/demo/referrers/{subject}")).await;
        assert_eq!(r.status(), 200, "{subject}");
        assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_INDEX);
        assert_eq!(v["manifests"], json!([]));
    }
    let r = app.get("/v2/demo/referrers/sha256:nothex").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

/// Pushes an artifact manifest referring to `subject`; returns (bytes, digest).
async fn push_referrer(
    app: &TestApp,
    repo: &str,
    subject: (&str, usize),
    artifact_type: Option<&str>,
    annotations: Option<Value>,
    payload: &[u8],
) -> (Vec<u8>, String) {
    let config = app.push_blob(repo, b"{}").await;
    let layer = app.push_blob(repo, payload).await;
    let mut v: Value = serde_json::from_slice(&image_manifest(
        &config,
        2,
        &[(layer, payload.len())],
        artifact_type,
        Some(subject),
    ))
    .unwrap();
    v["config"]["mediaType"] = json!("application/vnd.oci.empty.v1+json");
    if let Some(a) = annotations {
        v["annotations"] = a;
    }
    let m = serde_json::to_vec(&v).unwrap();
    let d = sha256(&m);
    let r = app.put_manifest(repo, &d, OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_eq!(header(&r, "oci-subject"), Some(subject.0));
    (m, d)
}

async fn referrers_list_artifact_types_and_annotations(app: TestApp) {
    let (base, bd) = app.push_image("demo", "v1", b"layer").await;
    let (sig, sd) = push_referrer(
        &app,
        "demo",
        (&bd, base.len()),
        Some("application/vnd.example.signature"),
        Some(json!({"org.opencontainers.image.created": "2026-01-01T00:00:00Z", "x": "y"})),
        b"signature",
    )
    .await;
    // No artifactType: the config's media type stands in for it.
    let (sbom, bomd) = push_referrer(&app, "demo", (&bd, base.len()), None, None, b"sbom").await;
    // A referrer of another manifest is not listed.
    push_referrer(
        &app,
        "demo",
        (&sd, sig.len()),
        Some("application/x-other"),
        None,
        b"o",
    )
    .await;

    let r = app.get(&format!("/v2/demo/referrers/{bd}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
    assert!(header(&r, "oci-filters-applied").is_none());
    let v: Value = r.json().await.unwrap();
    let mut got = v["manifests"].as_array().unwrap().clone();
    got.sort_by_key(|m| m["digest"].as_str().unwrap().to_string());
    let mut want = vec![
        json!({
            "mediaType": OCI_MANIFEST, "digest": sd, "size": sig.len(),
            "artifactType": "application/vnd.example.signature",
            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z", "x": "y"},
        }),
        json!({
            "mediaType": OCI_MANIFEST, "digest": bomd, "size": sbom.len(),
            "artifactType": "application/vnd.oci.empty.v1+json",
        }),
    ];
    want.sort_by_key(|m| m["digest"].as_str().unwrap().to_string());
    assert_eq!(got, want);

    // Other repositories do not see them.
    let r = app.get(&format!("/v2/elsewhere/referrers/{bd}")).await;
    if r.status() == 200 {
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["manifests"], json!([]));
    } else {
        assert_eq!(r.status(), 404);
    }
}

async fn referrers_filtered_by_artifact_type(app: TestApp) {
    let (base, bd) = app.push_image("demo", "v1", b"layer").await;
    let (_, sig) = push_referrer(
        &app,
        "demo",
        (&bd, base.len()),
        Some("application/x-sig"),
        None,
        b"s",
    )
    .await;
    push_referrer(
        &app,
        "demo",
        (&bd, base.len()),
        Some("application/x-sbom"),
        None,
        b"b",
    )
    .await;

    let r = app
        .req(
            Method::GET,
            &format!("/v2/demo/referrers/{bd}?artifactType=application/x-sig"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "oci-filters-applied"), Some("artifactType"));
    assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
    let v: Value = r.json().await.unwrap();
    let ds: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(ds, vec![sig.as_str()]);

    // A filter nothing matches: an empty index, still marked as filtered.
    let r = app
        .get(&format!(
            "/v2/demo/referrers/{bd}?artifactType=application%2Fx-none"
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "oci-filters-applied"), Some("artifactType"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));
}

both!(
    tags_are_listed_in_lexical_order,
    tags_paginate_with_link_headers,
    tags_with_n_zero_are_an_empty_list,
    tags_of_an_unknown_repository_are_name_unknown,
    catalog_paginates_like_tags,
    referrers_of_an_unreferenced_manifest_are_an_empty_index,
    referrers_list_artifact_types_and_annotations,
    referrers_filtered_by_artifact_type,
);
