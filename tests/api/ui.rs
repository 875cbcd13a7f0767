//! The web console over HTTP: every page renders with the facts it promises,
//! lists paginate, unknown names are 404 pages, and stored text that looks like
//! HTML is shown as text.

use cairn::policy::retention::PolicySpec;
use cairn::Config;
use reqwest::Method;
use serde_json::json;

use crate::both;
use crate::helpers::{sha256, TestApp, OCI_MANIFEST};

pub const XSS: &str = "<script>alert(1)</script>";
pub const XSS_ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";

/// Pushes an image whose config labels and manifest annotations carry
/// `labels` (and an `org.example.note` label with a script tag); returns
/// the manifest digest.
pub async fn push_labelled(app: &TestApp, repo: &str, tag: &str, layer: &[u8]) -> String {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-11-20T10:00:00Z",
        "config": {"Labels": {
            "org.example.note": XSS,
            "org.opencontainers.image.source": "https://github.com/acme/shop",
        }},
    }))
    .expect("json");
    let cd = app.push_blob(repo, &config).await;
    let ld = app.push_blob(repo, layer).await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
        "annotations": {"org.example.annotation": "<script>alert(2)</script>"},
    }))
    .expect("json");
    let r = app.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    sha256(&m)
}

pub async fn promote(app: &TestApp, repo: &str, reference: &str, env: &str) {
    let r = app
        .req(
            Method::POST,
            &format!("/api/v1/repositories/{repo}/promotions"),
        )
        .json(&json!({ "reference": reference, "environment": env }))
        .send()
        .await
        .expect("request");
    assert!(
        r.status().is_success(),
        "promotion: {}",
        r.text().await.unwrap_or_default()
    );
}

/// A page's status and body.
async fn page(app: &TestApp, path: &str) -> (u16, String) {
    let r = app.get(path).await;
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let body = r.text().await.expect("body");
    assert!(ct.starts_with("text/html"), "{path}: content type {ct}");
    (status, body)
}

async fn ok_page(app: &TestApp, path: &str) -> String {
    let (status, body) = page(app, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn assert_inert(path: &str, body: &str) {
    assert!(
        !body.contains("<script>alert"),
        "{path} has a raw script tag"
    );
}

/// The pages of one repository, from the list to the audit log.
async fn every_page_shows_its_facts(app: TestApp) {
    let repo = "shop/web";
    let d1 = push_labelled(&app, repo, "v1", b"layer one").await;
    let (m2, d2) = app.push_image(repo, "v2", b"layer two").await;
    app.push_image(repo, "v3", b"layer three").await;
    // A denied overwrite of v1.
    let other = br#"{"architecture":"arm64","os":"linux"}"#;
    let m = crate::helpers::image_manifest(
        &app.push_blob(repo, other).await,
        other.len(),
        &[],
        None,
        None,
    );
    let r = app.put_manifest(repo, "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 409);
    promote(&app, repo, "v1", "prod").await;
    promote(&app, repo, "v2", "prod").await;
    // A signature referring to v1, and an index listing v2.
    let size1: usize = app
        .head(&format!("/v2/{repo}/manifests/{d1}"))
        .await
        .headers()["content-length"]
        .to_str()
        .expect("length")
        .parse()
        .expect("number");
    let empty = app.push_blob(repo, b"{}").await;
    let sig = crate::helpers::image_manifest(
        &empty,
        2,
        &[],
        Some("application/vnd.dev.cosign.artifact.sig.v1+json"),
        Some((&d1, size1)),
    );
    let r = app
        .put_manifest(repo, &sha256(&sig), OCI_MANIFEST, &sig)
        .await;
    assert_eq!(r.status(), 201);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": crate::helpers::OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": d2, "size": m2.len(),
                       "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}],
    }))
    .expect("json");
    let r = app
        .put_manifest(repo, "multi", crate::helpers::OCI_INDEX, &index)
        .await;
    assert_eq!(r.status(), 201);
    let host = app.host();

    // `/` and `/ui` lead to the console.
    let r = app.get("/").await;
    assert!(r.status().is_redirection());
    assert_eq!(r.headers()["location"], "/ui/");

    let list = ok_page(&app, "/ui/").await;
    assert!(list.contains(r#"href="/ui/r/shop/web""#), "{list}");
    assert!(
        list.contains("<td class=\"num\">5</td>"),
        "five artifacts: v1, v2, v3, the signature and the index: {list}"
    );
    assert!(list.contains("UTC"), "push time shown: {list}");

    let tags = ok_page(&app, "/ui/r/shop/web").await;
    for fact in [
        r#"href="/ui/r/shop/web/-/tags/v1""#,
        r#"href="/ui/r/shop/web/-/tags/v2""#,
        "immutable",
        "<code>default</code>",
        &format!("docker pull {host}/{repo}@{d1}"),
        &format!(r#"data-copy="docker pull {host}/{repo}@{d2}""#),
    ] {
        assert!(tags.contains(fact), "tags page lacks {fact}: {tags}");
    }

    let history = ok_page(&app, "/ui/r/shop/web/-/tags/v1").await;
    assert!(history.contains(">created<"), "{history}");
    assert!(history.contains(">denied<"), "{history}");
    assert!(history.contains("127.0.0.1"), "actor shown: {history}");
    let now = cairn::metadata::now_ms();
    let at = ok_page(&app, &format!("/ui/r/shop/web/-/tags/v1?at={now}")).await;
    assert!(at.contains("pointed at"), "{at}");
    assert!(at.contains(&d1), "{at}");
    let before = ok_page(&app, "/ui/r/shop/web/-/tags/v1?at=2000-01-01T00:00:00Z").await;
    assert!(before.contains("was not bound"), "{before}");
    let (status, _) = page(&app, "/ui/r/shop/web/-/tags/v1?at=yesterday").await;
    assert_eq!(status, 400);

    let artifact = ok_page(&app, &format!("/ui/r/shop/web/-/artifacts/{d1}")).await;
    for fact in [
        "Layers",
        "9 B",
        "org.example.note",
        "org.opencontainers.image.source",
        XSS_ESCAPED,
        "&lt;script&gt;alert(2)&lt;/script&gt;",
        "linux/amd64",
        r#"href="/ui/r/shop/web/-/tags/v1""#,
        &format!("docker pull {host}/{repo}@{d1}"),
    ] {
        assert!(
            artifact.contains(fact),
            "artifact page lacks {fact}: {artifact}"
        );
    }
    assert_inert("artifact", &artifact);
    let referrers = artifact
        .split("id=\"referrers\"")
        .nth(1)
        .expect("referrers table");
    assert!(referrers.contains("signature"), "{artifact}");
    assert!(referrers.contains(&sha256(&sig)), "{artifact}");

    let idx = ok_page(
        &app,
        &format!("/ui/r/shop/web/-/artifacts/{}", sha256(&index)),
    )
    .await;
    let platforms = idx
        .split("id=\"platforms\"")
        .nth(1)
        .expect("platforms table");
    assert!(platforms.contains("linux/arm64/v8"), "{idx}");
    assert!(platforms.contains(&d2), "{idx}");

    let envs = ok_page(&app, "/ui/r/shop/web/-/environments").await;
    for fact in ["prod current", "prod previous #1", d1.as_str(), d2.as_str()] {
        assert!(
            envs.contains(fact),
            "environments page lacks {fact}: {envs}"
        );
    }

    let retention = ok_page(&app, "/ui/r/shop/web/-/retention").await;
    assert!(
        retention.contains("No retention policy applies"),
        "{retention}"
    );

    let audit = ok_page(&app, "/ui/audit").await;
    assert!(audit.contains("manifest.push"), "{audit}");
    assert!(audit.contains("tag.denied"), "{audit}");
    assert_inert("audit", &audit);
    let denied = ok_page(&app, "/ui/audit?action=tag.denied&repository=shop%2Fweb").await;
    assert!(denied.contains("tag.denied"), "{denied}");
    assert!(!denied.contains(">manifest.push<"), "{denied}");
    let by_digest = ok_page(&app, &format!("/ui/audit?digest={d2}")).await;
    assert!(by_digest.contains("promotion"), "{by_digest}");
    let (status, _) = page(&app, "/ui/audit?since=soon").await;
    assert_eq!(status, 400);
    let verify = ok_page(&app, "/ui/audit/verify").await;
    assert!(verify.contains("Intact"), "{verify}");

    let dash = ok_page(&app, "/ui/dashboard").await;
    assert!(dash.contains("Pushes per day"), "{dash}");
    assert!(dash.contains(r#"id="pushes""#), "{dash}");

    // Console requests share one bounded metric label.
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains(r#"cairn_http_requests_total{method="GET",route="/ui",status="2xx"}"#),
        "{metrics}"
    );
    assert!(!metrics.contains("route=\"/ui/r/"), "{metrics}");
}

/// Unknown repositories, tags, digests and pages are HTML 404 pages.
async fn unknown_names_are_404_pages(app: TestApp) {
    app.push_image("known/app", "v1", b"x").await;
    let zero = format!("sha256:{}", "0".repeat(64));
    for path in [
        "/ui/r/nobody/here".to_string(),
        "/ui/r/nobody/here/-/environments".to_string(),
        "/ui/r/known/app/-/tags/nope".to_string(),
        format!("/ui/r/known/app/-/artifacts/{zero}"),
        "/ui/r/known/app/-/nothing".to_string(),
        "/ui/no-such-page".to_string(),
    ] {
        let (status, body) = page(&app, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("Not found"), "{path}: {body}");
    }
    let (status, _) = page(&app, "/ui/r/Bad_Name").await;
    assert_eq!(status, 400);
}

/// Repository and tag lists page by name; the search narrows the list.
async fn lists_paginate(app: TestApp) {
    for r in ["page/a", "page/b", "page/c"] {
        app.push_image(r, "v1", r.as_bytes()).await;
    }
    for t in ["t1", "t2", "t3"] {
        app.push_image("page/a", t, t.as_bytes()).await;
    }
    let first = ok_page(&app, "/ui/?n=2").await;
    assert!(first.contains("/ui/r/page/a\"") && first.contains("/ui/r/page/b\""));
    assert!(!first.contains("/ui/r/page/c\""), "{first}");
    assert!(
        first.contains(r#"href="/ui/?n=2&amp;after=page%2Fb" rel="next""#),
        "{first}"
    );
    let second = ok_page(&app, "/ui/?n=2&after=page%2Fb").await;
    assert!(second.contains("/ui/r/page/c\""), "{second}");
    assert!(!second.contains("rel=\"next\""), "{second}");
    assert!(second.contains("rel=\"first\""), "{second}");

    // page/b holds the config, the layer "page/b" (6 bytes) and the manifest.
    let manifest_size =
        crate::helpers::image_manifest(&sha256(b"x"), 37, &[(sha256(b"x"), 6)], None, None).len();
    let size = 37 + 6 + manifest_size;
    let b_row = first.split("/ui/r/page/b\"").nth(1).expect("row of page/b");
    assert!(
        b_row.contains(&format!(r#"title="{size} bytes""#)),
        "size of page/b is {size}: {first}"
    );

    let found = ok_page(&app, "/ui/?q=page%2Fb").await;
    assert!(found.contains("/ui/r/page/b\"") && !found.contains("/ui/r/page/a\""));
    let none = ok_page(&app, "/ui/?q=%25").await;
    assert!(none.contains("No repositories"), "a % is literal: {none}");

    let tags = ok_page(&app, "/ui/r/page/a?n=2").await;
    assert!(tags.contains("/-/tags/t1\"") && tags.contains("/-/tags/t2\""));
    assert!(!tags.contains("/-/tags/v1\""), "{tags}");
    let next = ok_page(&app, "/ui/r/page/a?n=2&after=t2").await;
    assert!(next.contains("/-/tags/t3\"") && next.contains("/-/tags/v1\""));
}

/// Database queries run so far (every metadata operation is counted).
async fn queries(app: &TestApp) -> u64 {
    let text = app.get("/metrics").await.text().await.expect("metrics");
    text.lines()
        .filter(|l| l.starts_with("cairn_db_query_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Queries one page view costs: the least of three views, since background
/// work (provenance extraction after a push, the access-control check for a
/// first account) adds queries of its own between two scrapes, never removes.
async fn cost(app: &TestApp, path: &str) -> u64 {
    let mut least = u64::MAX;
    for _ in 0..3 {
        let before = queries(app).await;
        ok_page(app, path).await;
        least = least.min(queries(app).await - before);
    }
    least
}

/// A page of 30 rows costs as many queries as a page of 3: nothing is
/// fetched per row. (No pulls here: a pull-statistics flush would add
/// queries of its own between two scrapes.)
async fn pages_cost_the_same_whatever_their_length(app: TestApp) {
    for i in 0..30 {
        app.push_image(&format!("many/r{i:02}"), "v1", format!("r{i}").as_bytes())
            .await;
        app.push_image("many/r00", &format!("t{i:02}"), format!("t{i}").as_bytes())
            .await;
    }
    promote(&app, "many/r00", "t01", "prod").await;
    for (short, long) in [
        ("/ui/?n=3", "/ui/?n=30"),
        ("/ui/r/many/r00?n=3", "/ui/r/many/r00?n=30"),
        (
            "/ui/audit?action=manifest.push&before=5",
            "/ui/audit?action=manifest.push",
        ),
    ] {
        let (a, b) = (cost(&app, short).await, cost(&app, long).await);
        assert_eq!(a, b, "{short} costs {a} queries, {long} costs {b}");
        assert!(b > 0 && b <= 5, "{long} costs {b} queries");
    }
}

fn keep_one(c: &mut Config) {
    c.retention.policies = vec![PolicySpec {
        name: "keep-one".into(),
        repositories: vec!["svc/**".into()],
        keep_last: Some(1),
        keep_pushed_within_days: Some(0),
        keep_pulled_within_days: None,
        keep_tags: Vec::new(),
        untagged_grace_days: None,
        rollback_depth: 1,
    }];
}

/// The retention view says what would go and why the rest stays, and
/// stores nothing.
async fn retention_plan_is_explained(app: TestApp) {
    let repo = "svc/api";
    let (_, d1) = app.push_image(repo, "v1", b"1").await;
    let (_, d2) = app.push_image(repo, "v2", b"2").await;
    let (_, d3) = app.push_image(repo, "v3", b"3").await;
    promote(&app, repo, "v2", "prod").await;
    let page = ok_page(&app, "/ui/r/svc/api/-/retention").await;
    let deletions = page
        .split("id=\"deletions\"")
        .nth(1)
        .and_then(|s| s.split("</table>").next())
        .unwrap_or_else(|| panic!("no deletions table: {page}"));
    assert!(deletions.contains(&d1), "v1 goes: {page}");
    assert!(!deletions.contains(&d2) && !deletions.contains(&d3));
    let kept = page.split("id=\"kept\"").nth(1).expect("kept table");
    assert!(kept.contains("rollback target: prod current"), "{page}");
    assert!(kept.contains(&d3), "{page}");
    assert!(kept.contains("most recent"), "{page}");
}

both!(
    every_page_shows_its_facts,
    unknown_names_are_404_pages,
    lists_paginate,
    pages_cost_the_same_whatever_their_length
);
both!(with keep_one: retention_plan_is_explained);
