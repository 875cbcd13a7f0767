//! Tag immutability as a client sees it: idempotent re-pushes, refused
//! overwrites and deletes, atomic multi-tag pushes, races, pins, and history.

use cairn::policy::{Mutability, RuleSpec};
use cairn::{App, Config};
use reqwest::Method;
use serde_json::Value;

use crate::both;
use crate::helpers::{
    error_code, image_manifest, sha256, within_cache_ttl, Db, TestApp, OCI_MANIFEST,
};

/// Another server over `app`'s database and blobs, with its config tweaked.
async fn sibling(app: &TestApp, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = app.config.clone();
    tweak(&mut config);
    let server = App::build(&config).await.expect("sibling starts");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.run(std::future::pending()));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        db: app.db,
        config,
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

fn mutable(name: &str, repos: &[&str], tags: &[&str]) -> RuleSpec {
    RuleSpec {
        name: name.into(),
        repositories: repos.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        mutability: Mutability::Mutable,
    }
}

/// Pushes a config and layer and returns a manifest (not yet pushed) unique to `seed`.
async fn manifest_for(app: &TestApp, repo: &str, seed: &str) -> (Vec<u8>, String) {
    let config = format!("{{\"seed\":\"{seed}\"}}");
    let cd = app.push_blob(repo, config.as_bytes()).await;
    let m = image_manifest(&cd, config.len(), &[], None, None);
    let d = sha256(&m);
    (m, d)
}

async fn digest_of_tag(app: &TestApp, repo: &str, tag: &str) -> Option<String> {
    let r = app
        .req(Method::HEAD, &format!("/v2/{repo}/manifests/{tag}"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .expect("head");
    (r.status() == 200).then(|| {
        r.headers()["docker-content-digest"]
            .to_str()
            .expect("digest")
            .to_string()
    })
}

async fn history(app: &TestApp, repo: &str, tag: &str) -> Vec<(String, String)> {
    let v: Value = app
        .get(&format!("/api/v1/repositories/{repo}/tags/{tag}/history"))
        .await
        .json()
        .await
        .expect("history json");
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["digest"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn overwrite_is_refused_and_retry_succeeds(app: TestApp) {
    let repo = "team/app";
    let (a, da) = manifest_for(&app, repo, "a").await;
    let (b, db) = manifest_for(&app, repo, "b").await;
    let r = app.put_manifest(repo, "v1.4.2", OCI_MANIFEST, &a).await;
    assert_eq!(r.status(), 201);
    // The CI retry: same bytes, same tag.
    let r = app.put_manifest(repo, "v1.4.2", OCI_MANIFEST, &a).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], da.as_str());
    // Different content under the same tag.
    let r = app.put_manifest(repo, "v1.4.2", OCI_MANIFEST, &b).await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.expect("error json");
    let e = &body["errors"][0];
    assert_eq!(e["code"], "DENIED");
    let msg = e["message"].as_str().expect("message");
    assert_eq!(
        msg,
        format!("tag \"v1.4.2\" in \"team/app\" is immutable (rule \"default\"): it holds {da} and cannot be moved to {db}")
    );
    assert_eq!(e["detail"]["tag"], "v1.4.2");
    assert_eq!(e["detail"]["repository"], repo);
    assert_eq!(e["detail"]["existing_digest"], da.as_str());
    assert_eq!(e["detail"]["attempted_digest"], db.as_str());
    assert_eq!(e["detail"]["rule"], "default");
    // Nothing changed: the tag holds A and the refused manifest was not stored.
    assert_eq!(
        digest_of_tag(&app, repo, "v1.4.2").await.as_deref(),
        Some(da.as_str())
    );
    assert_eq!(
        app.head(&format!("/v2/{repo}/manifests/{db}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        history(&app, repo, "v1.4.2").await,
        vec![
            ("denied".to_string(), db.clone()),
            ("repushed".to_string(), da.clone()),
            ("created".to_string(), da.clone())
        ]
    );
}

async fn multi_tag_pushes_are_atomic(app: TestApp) {
    let repo = "multi";
    let (a, da) = manifest_for(&app, repo, "a").await;
    let (b, db) = manifest_for(&app, repo, "b").await;
    let r = app
        .put_manifest(repo, &format!("{da}?tag=one&tag=two"), OCI_MANIFEST, &a)
        .await;
    assert_eq!(r.status(), 201);
    let r = app
        .put_manifest(
            repo,
            &format!("{db}?tag=three&tag=one&tag=two"),
            OCI_MANIFEST,
            &b,
        )
        .await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.expect("json");
    let tags: Vec<&str> = body["errors"][0]["detail"]["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|t| t["tag"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(tags, vec!["one", "two"]);
    let msg = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(msg.contains("\"one\"") && msg.contains("\"two\""), "{msg}");
    // None bound: "three" does not exist.
    assert_eq!(digest_of_tag(&app, repo, "three").await, None);
    assert_eq!(
        digest_of_tag(&app, repo, "one").await.as_deref(),
        Some(da.as_str())
    );
    let list: Value = app
        .get(&format!("/v2/{repo}/tags/list"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["tags"], serde_json::json!(["one", "two"]));
}

async fn immutable_tags_and_their_manifests_cannot_be_deleted(app: TestApp) {
    let repo = "del";
    let (a, da) = manifest_for(&app, repo, "a").await;
    assert_eq!(
        app.put_manifest(repo, "v1", OCI_MANIFEST, &a)
            .await
            .status(),
        201
    );
    let r = app.delete(&format!("/v2/{repo}/manifests/v1")).await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .contains("rule \"default\""));
    let r = app.delete(&format!("/v2/{repo}/manifests/{da}")).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "DENIED");
    assert_eq!(
        digest_of_tag(&app, repo, "v1").await.as_deref(),
        Some(da.as_str())
    );
    // An untagged manifest deletes as the spec says.
    let (b, db) = manifest_for(&app, repo, "b").await;
    assert_eq!(
        app.put_manifest(repo, &db, OCI_MANIFEST, &b).await.status(),
        201
    );
    assert_eq!(
        app.delete(&format!("/v2/{repo}/manifests/{db}"))
            .await
            .status(),
        202
    );
    assert_eq!(
        app.head(&format!("/v2/{repo}/manifests/{db}"))
            .await
            .status(),
        404
    );
}

async fn mutable_tags_move_and_history_answers_at(app: TestApp) {
    let app = sibling(&app, |c| {
        c.immutability.rules = vec![mutable("dev tags", &["team/*"], &["latest", "*-dev"])]
    })
    .await;
    let repo = "team/web";
    let (a, da) = manifest_for(&app, repo, "a").await;
    let (b, db) = manifest_for(&app, repo, "b").await;
    let before = time_now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        app.put_manifest(repo, "latest", OCI_MANIFEST, &a)
            .await
            .status(),
        201
    );
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = time_now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        app.put_manifest(repo, "latest", OCI_MANIFEST, &b)
            .await
            .status(),
        201
    );
    assert_eq!(
        digest_of_tag(&app, repo, "latest").await.as_deref(),
        Some(db.as_str())
    );
    let h: Value = app
        .get(&format!("/api/v1/repositories/{repo}/tags/latest/history"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(h["events"][0]["action"], "moved");
    assert_eq!(h["events"][0]["previous_digest"], da.as_str());
    assert_eq!(h["events"][0]["rule"], "dev tags");
    assert_eq!(h["events"][0]["actor"], "127.0.0.1");
    let at = |t: String| format!("/api/v1/repositories/{repo}/tags/latest?at={t}");
    let v: Value = app.get(&at(between)).await.json().await.expect("json");
    assert_eq!(v["digest"], da.as_str());
    let v: Value = app.get(&at(time_now())).await.json().await.expect("json");
    assert_eq!(v["digest"], db.as_str());
    assert_eq!(app.get(&at(before)).await.status(), 404);
    let r = app
        .get(&format!(
            "/api/v1/repositories/{repo}/tags/latest?at=yesterday"
        ))
        .await;
    assert_eq!(r.status(), 400);
    // Paginated history: one event per page, following Link.
    let r = app
        .get(&format!(
            "/api/v1/repositories/{repo}/tags/latest/history?n=1"
        ))
        .await;
    let link = r.headers()["link"].to_str().expect("link").to_string();
    let next = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .expect("url")
        .to_string();
    let v: Value = app.get(&next).await.json().await.expect("json");
    assert_eq!(v["events"][0]["action"], "created");
    // A mutable-only tagged manifest can be deleted; its tag goes with it.
    assert_eq!(
        app.delete(&format!("/v2/{repo}/manifests/{db}"))
            .await
            .status(),
        202
    );
    assert_eq!(digest_of_tag(&app, repo, "latest").await, None);
    // The explain API names the rule.
    let v: Value = app
        .get("/api/v1/policy/explain?repository=team/web&tag=feature-dev")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["mutability"], "mutable");
    assert_eq!(v["rule"], "dev tags");
    let v: Value = app
        .get("/api/v1/repositories/team/web/policy")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["rules"][1]["name"], "dev tags");
}

fn time_now() -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("format")
}

async fn a_pinned_name_never_means_another_digest(app: TestApp) {
    let repo = "pins";
    let (a, da) = manifest_for(&app, repo, "a").await;
    let (b, _) = manifest_for(&app, repo, "b").await;
    assert_eq!(
        app.put_manifest(repo, "v1", OCI_MANIFEST, &a)
            .await
            .status(),
        201
    );
    // An operator makes the tag mutable and removes it...
    let lax = sibling(&app, |c| {
        c.immutability.rules = vec![mutable("all", &["**"], &["*"])]
    })
    .await;
    assert_eq!(
        lax.delete(&format!("/v2/{repo}/manifests/v1"))
            .await
            .status(),
        202
    );
    // ...then the default returns: the name stays pinned to its first digest.
    let strict = sibling(&app, |_| {}).await;
    let r = strict.put_manifest(repo, "v1", OCI_MANIFEST, &b).await;
    assert_eq!(r.status(), 409);
    assert_eq!(digest_of_tag(&strict, repo, "v1").await, None);
    // Re-pushing the original digest restores it.
    assert_eq!(
        strict
            .put_manifest(repo, "v1", OCI_MANIFEST, &a)
            .await
            .status(),
        201
    );
    assert_eq!(
        digest_of_tag(&strict, repo, "v1").await.as_deref(),
        Some(da.as_str())
    );
}

/// 32 clients push 32 different manifests under one new immutable tag at once.
async fn race(apps: &[&TestApp], repo: &str) {
    let mut manifests = Vec::new();
    for i in 0..32 {
        manifests.push(manifest_for(apps[0], repo, &format!("racer-{i}")).await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for (i, (m, d)) in manifests.into_iter().enumerate() {
        let app = apps[i % apps.len()];
        let url = format!("{}/v2/{repo}/manifests/release", app.base);
        let client = reqwest::Client::new();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = client
                .put(url)
                .header("Content-Type", OCI_MANIFEST)
                .body(m)
                .send()
                .await
                .expect("put");
            (r.status().as_u16(), d)
        }));
    }
    let mut winners = Vec::new();
    let mut denied = 0;
    for t in tasks {
        match t.await.expect("join") {
            (201, d) => winners.push(d),
            (409, _) => denied += 1,
            (s, _) => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one push wins");
    assert_eq!(denied, 31);
    for app in apps {
        assert_eq!(
            digest_of_tag(app, repo, "release").await.as_deref(),
            Some(winners[0].as_str())
        );
    }
}

async fn thirty_two_way_race_has_one_winner(app: TestApp) {
    race(&[&app], "race/one").await;
}

fn index_of(children: &[(&str, bool)]) -> Vec<u8> {
    let manifests: Vec<Value> = children
        .iter()
        .map(|(d, attestation)| {
            let mut m = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d, "size": 10});
            if *attestation {
                m["annotations"] = serde_json::json!({
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": children[0].0,
                });
            } else {
                m["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
            }
            m
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::helpers::OCI_INDEX,
        "manifests": manifests,
    }))
    .expect("json")
}

async fn rebuilt_buildkit_index_is_equivalent_when_enabled(app: TestApp) {
    let repo = "bk";
    let mut digests = Vec::new();
    for seed in ["image", "att1", "att2", "other-image"] {
        let (m, d) = manifest_for(&app, repo, seed).await;
        assert_eq!(
            app.put_manifest(repo, &d, OCI_MANIFEST, &m).await.status(),
            201
        );
        digests.push(d);
    }
    let (img, att1, att2, other) = (&digests[0], &digests[1], &digests[2], &digests[3]);
    let first = index_of(&[(img, false), (att1, true)]);
    let rebuilt = index_of(&[(img, false), (att2, true)]);
    let different = index_of(&[(other, false), (att2, true)]);
    let index = crate::helpers::OCI_INDEX;
    assert_eq!(
        app.put_manifest(repo, "v1", index, &first).await.status(),
        201
    );
    // Off by default: the rebuilt index is refused like any other digest.
    assert_eq!(
        app.put_manifest(repo, "v1", index, &rebuilt).await.status(),
        409
    );

    let on = sibling(&app, |c| c.immutability.buildkit_index_equivalence = true).await;
    let r = on.put_manifest(repo, "v1", index, &rebuilt).await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["docker-content-digest"],
        sha256(&first).as_str()
    );
    assert_eq!(
        digest_of_tag(&on, repo, "v1").await,
        None,
        "HEAD with an OCI-manifest-only Accept"
    );
    let r = on
        .req(Method::HEAD, &format!("/v2/{repo}/manifests/v1"))
        .header("Accept", index)
        .send()
        .await
        .expect("head");
    assert_eq!(
        r.headers()["docker-content-digest"],
        sha256(&first).as_str()
    );
    // The rebuilt index (with its new attestation) is kept and recorded.
    assert_eq!(
        on.head(&format!("/v2/{repo}/manifests/{}", sha256(&rebuilt)))
            .await
            .status(),
        200
    );
    assert_eq!(
        history(&on, repo, "v1").await[0],
        ("equivalent".to_string(), sha256(&rebuilt))
    );
    // `?at=` answers what the tag held, not the equivalent index.
    let v: Value = on
        .get(&format!(
            "/api/v1/repositories/{repo}/tags/v1?at={}",
            time_now()
        ))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["digest"], sha256(&first).as_str());
    // Other platform images are still refused.
    assert_eq!(
        on.put_manifest(repo, "v1", index, &different)
            .await
            .status(),
        409
    );
}

/// Layers and index children that an immutable tag needs cannot be deleted out
/// from under it; content nothing immutable needs deletes as the spec says.
async fn content_behind_an_immutable_tag_cannot_be_deleted(app: TestApp) {
    let repo = "content";
    let layer = b"layer bytes";
    let ld = app.push_blob(repo, layer).await;
    let config = br#"{"c":1}"#;
    let cd = app.push_blob(repo, config).await;
    let m = image_manifest(&cd, config.len(), &[(ld.clone(), layer.len())], None, None);
    let md = sha256(&m);
    assert_eq!(
        app.put_manifest(repo, &md, OCI_MANIFEST, &m).await.status(),
        201
    );
    let index = index_of(&[(&md, false)]);
    let xd = sha256(&index);
    let r = app
        .put_manifest(repo, "v1", crate::helpers::OCI_INDEX, &index)
        .await;
    assert_eq!(r.status(), 201);

    let r = app.delete(&format!("/v2/{repo}/blobs/{ld}")).await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eq!(
        body["errors"][0]["message"],
        format!(
            "tag \"v1\" in \"content\" is immutable (rule \"default\"): it holds {xd}, which needs {ld}, so {ld} cannot be deleted"
        )
    );
    let r = app.delete(&format!("/v2/{repo}/manifests/{md}")).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "DENIED");
    assert_eq!(
        app.get(&format!("/v2/{repo}/blobs/{ld}")).await.status(),
        200
    );
    assert_eq!(
        app.head(&format!("/v2/{repo}/manifests/{md}"))
            .await
            .status(),
        200
    );

    // An untagged manifest's layers delete as the spec says.
    let other = b"other layer";
    let od = app.push_blob(repo, other).await;
    let m2 = image_manifest(&cd, config.len(), &[(od.clone(), other.len())], None, None);
    let r = app
        .put_manifest(repo, &sha256(&m2), OCI_MANIFEST, &m2)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        app.delete(&format!("/v2/{repo}/blobs/{od}")).await.status(),
        202
    );
}

/// Two pushes binding the same tags in opposite orders never fail with a
/// server error (a deadlock on PostgreSQL): one wins each tag, the other is
/// refused.
async fn opposite_order_multi_tag_pushes_do_not_deadlock(app: TestApp) {
    let repo = "order";
    for round in 0..8 {
        let (a, da) = manifest_for(&app, repo, &format!("a{round}")).await;
        let (b, db) = manifest_for(&app, repo, &format!("b{round}")).await;
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        let (pa, pb) = (
            format!("{da}?tag={x}&tag={y}"),
            format!("{db}?tag={y}&tag={x}"),
        );
        let (ra, rb) = tokio::join!(
            app.put_manifest(repo, &pa, OCI_MANIFEST, &a),
            app.put_manifest(repo, &pb, OCI_MANIFEST, &b),
        );
        let mut statuses = [ra.status().as_u16(), rb.status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [201, 409], "round {round}");
    }
}

async fn tag_list_of(app: &TestApp, repo: &str) -> Vec<String> {
    let v: Value = app
        .get(&format!("/v2/{repo}/tags/list"))
        .await
        .json()
        .await
        .expect("json");
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Tag lookups and listings are served from memory, yet a change made by the
/// same server shows at once, and one made by another process (a replica, a
/// CLI run) within `TAG_CACHE_TTL`.
async fn cached_tags_follow_changes(app: TestApp) {
    let repo = "cached";
    let (a, da) = manifest_for(&app, repo, "a").await;
    let (b, db) = manifest_for(&app, repo, "b").await;
    assert_eq!(
        app.put_manifest(repo, "v1", OCI_MANIFEST, &a)
            .await
            .status(),
        201
    );
    // Both caches are filled...
    assert_eq!(
        digest_of_tag(&app, repo, "v1").await.as_deref(),
        Some(da.as_str())
    );
    assert_eq!(tag_list_of(&app, repo).await, ["v1"]);
    // ...and a push here shows in the very next listing.
    assert_eq!(
        app.put_manifest(repo, "v2", OCI_MANIFEST, &b)
            .await
            .status(),
        201
    );
    assert_eq!(tag_list_of(&app, repo).await, ["v1", "v2"]);
    assert_eq!(
        digest_of_tag(&app, repo, "v2").await.as_deref(),
        Some(db.as_str())
    );
    // Another process, where these tags are mutable, deletes v1 and adds v3.
    let lax = sibling(&app, |c| {
        c.immutability.rules = vec![mutable("all", &["**"], &["*"])]
    })
    .await;
    let deleted_at = std::time::Instant::now();
    assert_eq!(
        lax.delete(&format!("/v2/{repo}/manifests/v1"))
            .await
            .status(),
        202
    );
    assert_eq!(
        lax.put_manifest(repo, "v3", OCI_MANIFEST, &a)
            .await
            .status(),
        201
    );
    assert_eq!(tag_list_of(&lax, repo).await, ["v2", "v3"]);
    // This server catches up within the bound.
    within_cache_ttl(deleted_at, || async {
        let gone = digest_of_tag(&app, repo, "v1").await.is_none();
        let listing = tag_list_of(&app, repo).await;
        match gone && listing == ["v2", "v3"] {
            true => Ok(()),
            false => Err(format!("v1 gone {gone}, listing {listing:?}")),
        }
    })
    .await;
}

/// Status of a GET and of a HEAD of `repo`'s manifest `digest`.
async fn by_digest(app: &TestApp, repo: &str, digest: &str) -> (u16, u16) {
    let path = format!("/v2/{repo}/manifests/{digest}");
    let mut statuses = [0u16; 2];
    for (status, method) in statuses.iter_mut().zip([Method::GET, Method::HEAD]) {
        let r = app.req(method, &path).header("Accept", OCI_MANIFEST).send();
        *status = r.await.expect("request").status().as_u16();
    }
    (statuses[0], statuses[1])
}

/// Pulls by digest are answered from memory too, yet a manifest deleted by
/// the same server is gone at once, one deleted by another process within
/// `TAG_CACHE_TTL`, and one pushed anywhere is there at once.
async fn cached_digests_follow_deletes(app: TestApp) {
    let repo = "cached-digests";
    let (a, da) = manifest_for(&app, repo, "a").await;
    let (b, db) = manifest_for(&app, repo, "b").await;
    // Untagged manifests, which a delete by digest may remove.
    assert_eq!(by_digest(&app, repo, &da).await, (404, 404));
    for (m, d) in [(&a, &da), (&b, &db)] {
        assert_eq!(
            app.put_manifest(repo, d, OCI_MANIFEST, m).await.status(),
            201
        );
        assert_eq!(by_digest(&app, repo, d).await, (200, 200));
    }
    // Asked again: the record is in memory now.
    assert_eq!(by_digest(&app, repo, &da).await, (200, 200));
    assert_eq!(
        app.delete(&format!("/v2/{repo}/manifests/{da}"))
            .await
            .status(),
        202
    );
    assert_eq!(by_digest(&app, repo, &da).await, (404, 404));
    // Another process deletes b; this server catches up within the bound.
    let other = sibling(&app, |_| {}).await;
    assert_eq!(by_digest(&app, repo, &db).await, (200, 200));
    let deleted_at = std::time::Instant::now();
    assert_eq!(
        other
            .delete(&format!("/v2/{repo}/manifests/{db}"))
            .await
            .status(),
        202
    );
    within_cache_ttl(deleted_at, || async {
        match by_digest(&app, repo, &db).await {
            (404, 404) => Ok(()),
            seen => Err(format!("GET and HEAD answer {seen:?}")),
        }
    })
    .await;
    // Pushed again by the other process: pullable here at once.
    assert_eq!(
        other
            .put_manifest(repo, &db, OCI_MANIFEST, &b)
            .await
            .status(),
        201
    );
    assert_eq!(by_digest(&app, repo, &db).await, (200, 200));
}

both!(
    cached_tags_follow_changes,
    cached_digests_follow_deletes,
    content_behind_an_immutable_tag_cannot_be_deleted,
    opposite_order_multi_tag_pushes_do_not_deadlock,
    rebuilt_buildkit_index_is_equivalent_when_enabled,
    overwrite_is_refused_and_retry_succeeds,
    multi_tag_pushes_are_atomic,
    immutable_tags_and_their_manifests_cannot_be_deleted,
    mutable_tags_move_and_history_answers_at,
    a_pinned_name_never_means_another_digest,
    thirty_two_way_race_has_one_winner,
);

/// Two server processes' worth of state (separate pools, no shared memory)
/// over one PostgreSQL database.
#[tokio::test]
async fn race_across_two_servers_on_postgres() {
    let a = TestApp::spawn(Db::Postgres).await;
    let b = sibling(&a, |_| {}).await;
    race(&[&a, &b], "race/two").await;
}
