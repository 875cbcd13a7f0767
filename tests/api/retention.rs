//! Promotions, rollback targets, legal holds, retention plans and online
//! garbage collection, as operators and on-call engineers see them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cairn::policy::retention::PolicySpec;
use cairn::Config;
use reqwest::Method;
use serde_json::{json, Value};

use crate::both;
use crate::helpers::{error_code, image_manifest, sha256, TestApp, OCI_INDEX, OCI_MANIFEST};

fn policy(name: &str, repos: &[&str]) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        repositories: repos.iter().map(|s| s.to_string()).collect(),
        keep_last: None,
        keep_pushed_within_days: None,
        keep_pulled_within_days: None,
        keep_tags: Vec::new(),
        untagged_grace_days: None,
        rollback_depth: 3,
    }
}

/// An aggressive policy on `svc/**` (keep only the newest tagged artifact,
/// nothing by age), rollback depth 2, and collection with no grace period.
fn aggressive(c: &mut Config) {
    let mut p = policy("aggressive", &["svc/**"]);
    p.keep_last = Some(1);
    p.keep_pushed_within_days = Some(0);
    p.keep_tags = vec!["release-*".into()];
    p.rollback_depth = 2;
    c.retention.policies = vec![p];
    c.gc.grace_secs = 0;
    c.gc.interval_secs = 0;
}

async fn post_json(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.req(Method::POST, path)
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn promote(app: &TestApp, repo: &str, reference: &str, env: &str) -> reqwest::Response {
    post_json(
        app,
        &format!("/api/v1/repositories/{repo}/promotions"),
        json!({ "reference": reference, "environment": env }),
    )
    .await
}

async fn plan(app: &TestApp, glob: &str) -> Value {
    let r = app
        .req(
            Method::POST,
            &format!("/api/v1/retention/plan?repository={glob}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn apply(app: &TestApp, id: &str) -> Value {
    let r = app
        .req(Method::POST, &format!("/api/v1/retention/apply?plan={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn planned(plan: &Value) -> BTreeSet<String> {
    plan["deletions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Pushes an image whose layer is unique to `seed`; returns (digest, layer digest).
async fn image(app: &TestApp, repo: &str, tag: &str, seed: &str) -> (String, String) {
    let layer = format!("layer of {seed}");
    let (m, d) = app.push_image(repo, tag, layer.as_bytes()).await;
    let _ = m;
    (d, sha256(layer.as_bytes()))
}

/// Promotions by tag and digest, the rollback answer, and their validation.
async fn promotions_answer_what_to_roll_back_to(app: TestApp) {
    let repo = "svc/api";
    let mut d = Vec::new();
    for i in 1..=5 {
        d.push(
            image(&app, repo, &format!("v{i}"), &format!("api {i}"))
                .await
                .0,
        );
    }
    for (reference, env) in [
        ("v1", "prod"),
        ("v2", "prod"),
        ("v2", "prod"),
        ("v3", "prod"),
    ] {
        assert_eq!(promote(&app, repo, reference, env).await.status(), 201);
    }
    let r = promote(&app, repo, &d[4], "staging").await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["promotion"]["digest"], d[4]);
    assert_eq!(body["promotion"]["actor"], "127.0.0.1");

    // CI recorded how v2 was built: the rollback answer says so.
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": repo, "digest": {"sha256": d[1].trim_start_matches("sha256:")}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": "https://example.com/ci@v1",
                "externalParameters": {},
                "resolvedDependencies": [
                    {"uri": "git+https://git.example.com/svc/api", "digest": {"gitCommit": commit}}
                ]
            },
            "runDetails": {"builder": {"id": "https://ci.example.com/runner"}}
        }
    });
    let r = app
        .req(Method::PUT, &format!("/api/v1/provenance/{repo}@{}", d[1]))
        .json(&statement)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let r = app
        .get(&format!(
            "/api/v1/repositories/{repo}/environments/prod/rollback"
        ))
        .await;
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["rollback_to"]["provenance"][0]["revision"], commit);
    assert_eq!(
        a["rollback_to"]["provenance"][0]["builder_id"],
        "https://ci.example.com/runner"
    );
    assert_eq!(a["current"]["digest"], d[2]);
    assert_eq!(a["current"]["tags"], json!(["v3"]));
    assert_eq!(a["rollback_to"]["digest"], d[1]);
    assert_eq!(a["rollback_to"]["label"], "prod previous #1");
    let labels: Vec<&str> = a["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["prod current", "prod previous #1", "prod previous #2"]
    );

    let envs: Value = app
        .get(&format!("/api/v1/repositories/{repo}/environments"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(envs["environments"].as_array().unwrap().len(), 2);
    let list: Value = app
        .get(&format!(
            "/api/v1/repositories/{repo}/promotions?environment=prod&n=2"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["promotions"].as_array().unwrap().len(), 2);
    assert_eq!(list["promotions"][0]["tag"], "v3");

    // Unknown tag, bad environment, bad body: clear errors, nothing recorded.
    let r = promote(&app, repo, "v9", "prod").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = promote(&app, repo, "v1", "prod/eu").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("environment"));
    let r = post_json(
        &app,
        &format!("/api/v1/repositories/{repo}/promotions"),
        json!({"env": "x"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = app
        .get("/api/v1/repositories/svc/api/environments/qa/rollback")
        .await;
    assert_eq!(r.status(), 400);
    let audit: Value = app
        .get("/api/v1/audit?action=promotion")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["entries"].as_array().unwrap().len(), 5);
}

/// The aggressive policy deletes everything it may; rollback targets (and
/// what they reference), held artifacts and release tags survive; the plan is
/// exactly what apply does; re-applying does nothing; collection then
/// reclaims the deleted images' layers and nothing else.
async fn retention_protects_rollback_targets_and_holds(app: TestApp) {
    let repo = "svc/web";
    let mut imgs = Vec::new();
    for i in 1..=7 {
        imgs.push(image(&app, repo, &format!("build-{i}"), &format!("web {i}")).await);
    }
    let (release, _) = image(&app, repo, "release-1", "web release").await;
    let (newest, _) = image(&app, repo, "build-8", "web 8").await;
    // prod: 1 then 2 then 3 (current 3; previous #1 = 2, #2 = 1); staging: 4.
    for i in [0, 1, 2] {
        assert_eq!(promote(&app, repo, &imgs[i].0, "prod").await.status(), 201);
    }
    assert_eq!(
        promote(&app, repo, &imgs[3].0, "staging").await.status(),
        201
    );
    // A legal hold on 5.
    let r = post_json(
        &app,
        &format!("/api/v1/repositories/{repo}/holds"),
        json!({"reference": "build-5", "reason": "case-1234"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let hold: Value = r.json().await.unwrap();

    // Deleting a rollback target or a held artifact through the API is refused.
    let r = app
        .delete(&format!("/v2/{repo}/manifests/{}", imgs[0].0))
        .await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eq!(
        body["errors"][0]["detail"]["protected_by"][0],
        "rollback target: prod previous #2"
    );
    let r = app.delete(&format!("/v2/{repo}/blobs/{}", imgs[4].1)).await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("legal hold: case-1234"));

    let p = plan(&app, "svc/**").await;
    let doomed = planned(&p);
    let expected: BTreeSet<String> = [imgs[5].0.clone(), imgs[6].0.clone()].into();
    assert_eq!(
        doomed, expected,
        "only 6 and 7 are unprotected, old and not newest"
    );
    let rp = &p["repositories"][0];
    let reasons = |d: &str| -> Vec<String> {
        rp["keep"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["digest"] == d)
            .map(|k| {
                k["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["detail"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(reasons(&imgs[2].0), ["rollback target: prod current"]);
    assert_eq!(reasons(&imgs[0].0), ["rollback target: prod previous #2"]);
    assert_eq!(reasons(&imgs[3].0), ["rollback target: staging current"]);
    assert_eq!(reasons(&imgs[4].0), ["legal hold: case-1234"]);
    assert_eq!(reasons(&release), ["tag pattern release-*"]);
    assert!(reasons(&newest)[0].contains("most recent"));

    // Plan equals apply.
    let report = apply(&app, p["id"].as_str().unwrap()).await;
    let deleted: BTreeSet<String> = report["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deleted, expected);
    assert!(report["refused"].as_array().unwrap().is_empty());
    // Re-applying is idempotent.
    let again = apply(&app, p["id"].as_str().unwrap()).await;
    assert!(again["deleted"].as_array().unwrap().is_empty());
    assert_eq!(again["already_gone"], 2);
    // A fresh plan deletes nothing more.
    assert!(planned(&plan(&app, "svc/**").await).is_empty());

    // Deleted: manifests and their (immutable) tags; history and audit say why.
    assert_eq!(
        app.get(&format!("/v2/{repo}/manifests/build-6"))
            .await
            .status(),
        404
    );
    let h: Value = app
        .get(&format!("/api/v1/repositories/{repo}/tags/build-6/history"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(h["events"][0]["action"], "deleted");
    assert!(h["events"][0]["rule"]
        .as_str()
        .unwrap()
        .starts_with("retention: aggressive"));
    let audit: Value = app
        .get("/api/v1/audit?action=retention.delete")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["entries"].as_array().unwrap().len(), 2);
    assert!(audit["entries"][0]["detail"]["why"]
        .as_str()
        .unwrap()
        .contains("aggressive"));

    // Every kept image is whole.
    for (d, layer) in imgs.iter().take(5) {
        assert_eq!(
            app.get(&format!("/v2/{repo}/manifests/{d}")).await.status(),
            200
        );
        assert_eq!(
            app.get(&format!("/v2/{repo}/blobs/{layer}")).await.status(),
            200
        );
    }

    // GC (grace 0): dry run reports, then reclaims exactly the two deleted
    // images' layers and manifests (configs are shared by all images).
    let r = app
        .req(Method::POST, "/api/v1/gc?dry_run=true")
        .send()
        .await
        .unwrap();
    let dry: Value = r.json().await.unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["blobs"], 4, "2 layers + 2 manifests: {dry}");
    assert_eq!(
        app.get(&format!("/v2/{repo}/blobs/{}", imgs[5].1))
            .await
            .status(),
        200
    );
    let r = app.req(Method::POST, "/api/v1/gc").send().await.unwrap();
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["blobs"], 4);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for line in [
        "cairn_gc_reclaimed_blobs_total 4",
        "cairn_gc_runs_total 1",
        "cairn_retention_deleted_artifacts_total 2",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert_eq!(
        app.get(&format!("/v2/{repo}/blobs/{}", imgs[5].1))
            .await
            .status(),
        404
    );
    for (d, layer) in imgs.iter().take(5) {
        assert_eq!(
            app.get(&format!("/v2/{repo}/manifests/{d}")).await.status(),
            200
        );
        assert_eq!(
            app.get(&format!("/v2/{repo}/blobs/{layer}")).await.status(),
            200
        );
    }
    let again: Value = app
        .req(Method::POST, "/api/v1/gc")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["blobs"], 0);

    // Releasing the hold makes 5 deletable by the next plan (it is not a
    // rollback target and not the newest).
    let id = hold["id"].as_i64().unwrap();
    assert_eq!(
        app.delete(&format!("/api/v1/holds/{id}")).await.status(),
        200
    );
    assert_eq!(
        app.delete(&format!("/api/v1/holds/{id}")).await.status(),
        400
    );
    assert_eq!(
        planned(&plan(&app, "svc/**").await),
        [imgs[4].0.clone()].into()
    );
    let holds: Value = app
        .get("/api/v1/holds?active=false")
        .await
        .json()
        .await
        .unwrap();
    assert!(holds["holds"][0]["released_at"].is_i64());
}

/// Referrers follow their subject; a held referrer keeps its subject; an
/// index that stays keeps its children.
async fn referrers_and_children_follow(app: TestApp) {
    let repo = "svc/graph";
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = app.push_blob(repo, config).await;
    let child = |seed: &str| {
        let layer = format!("graph {seed}");
        (layer.clone(), sha256(layer.as_bytes()))
    };
    // Old untagged images A and B, each signed; B's signature is held.
    let mut subjects = Vec::new();
    let mut sigs = Vec::new();
    for seed in ["a", "b"] {
        let (layer, ld) = child(seed);
        app.push_blob(repo, layer.as_bytes()).await;
        let m = image_manifest(&cd, config.len(), &[(ld, layer.len())], None, None);
        let d = sha256(&m);
        assert_eq!(
            app.put_manifest(repo, &d, OCI_MANIFEST, &m).await.status(),
            201
        );
        let sig = image_manifest(
            &cd,
            config.len(),
            &[],
            Some("application/vnd.example.sig"),
            Some((&d, m.len())),
        );
        let sd = sha256(&sig);
        assert_eq!(
            app.put_manifest(repo, &sd, OCI_MANIFEST, &sig)
                .await
                .status(),
            201
        );
        subjects.push(d);
        sigs.push(sd);
    }
    let r = post_json(
        &app,
        &format!("/api/v1/repositories/{repo}/holds"),
        json!({"reference": sigs[1], "reason": "signature evidence"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    // A tagged index over two children: newest tagged, kept by keep_last = 1.
    let (l1, d1) = child("c1");
    let (l2, d2) = child("c2");
    app.push_blob(repo, l1.as_bytes()).await;
    app.push_blob(repo, l2.as_bytes()).await;
    let c1 = image_manifest(&cd, config.len(), &[(d1, l1.len())], None, None);
    let c2 = image_manifest(&cd, config.len(), &[(d2, l2.len())], None, None);
    for c in [&c1, &c2] {
        assert_eq!(
            app.put_manifest(repo, &sha256(c), OCI_MANIFEST, c)
                .await
                .status(),
            201
        );
    }
    let children: Vec<Value> = [&c1, &c2]
        .iter()
        .map(|c| json!({ "mediaType": OCI_MANIFEST, "digest": sha256(c), "size": c.len() }))
        .collect();
    let idx = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children
    }))
    .unwrap();
    assert_eq!(
        app.put_manifest(repo, "v1", OCI_INDEX, &idx).await.status(),
        201
    );

    let p = plan(&app, "svc/graph").await;
    assert_eq!(planned(&p), [subjects[0].clone(), sigs[0].clone()].into());
    let report = apply(&app, p["id"].as_str().unwrap()).await;
    assert_eq!(report["deleted"].as_array().unwrap().len(), 2);
    for d in [
        &subjects[1],
        &sigs[1],
        &sha256(&c1),
        &sha256(&c2),
        &sha256(&idx),
    ] {
        assert_eq!(
            app.get(&format!("/v2/{repo}/manifests/{d}")).await.status(),
            200,
            "{d}"
        );
    }
    // The held signature's subject keeps its referrer listing.
    let refs: Value = app
        .get(&format!("/v2/{repo}/referrers/{}", subjects[1]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(refs["manifests"][0]["digest"], sigs[1]);
    // A deleted child of a kept index is refused through the API too.
    let r = app
        .get(&format!("/api/v1/repositories/{repo}/retention"))
        .await;
    let eff: Value = r.json().await.unwrap();
    assert_eq!(eff["policies"][0]["name"], "aggressive");
    assert_eq!(eff["rollback_depth"], 2);
}

/// Pushes, deletes and collections (no grace period) race for a bounded time;
/// afterwards every acknowledged manifest that was not deleted is whole: the
/// manifest and each of its blobs are readable and match their digests.
async fn gc_races_pushes_and_deletes(app: TestApp) {
    let repo = "stress/app";
    // On S3 (moto, under `CAIRN_TEST_STORAGE=s3`) every store operation takes
    // longer, so the window between a blob's upload and its manifest is wider
    // and, with no grace period, pushes lose it to a collection far more often
    // (they show as retries): fewer images get through, but the race is hit
    // all the more. Such a run goes on longer and asks for fewer images.
    let on_s3 = crate::helpers::Storage::from_env() == crate::helpers::Storage::S3;
    let (run_for, min_pushed) = if on_s3 {
        (Duration::from_secs(10), 4)
    } else {
        (Duration::from_secs(6), 20)
    };
    let start = Instant::now();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let shared = b"shared base layer".to_vec();
    let mut pushers = Vec::new();
    for w in 0..4 {
        let base = app.base.clone();
        let (config, shared) = (config.clone(), shared.clone());
        pushers.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut kept: Vec<(String, Vec<String>)> = Vec::new();
            let mut stats = (0u32, 0u32, 0u32); // pushed, retried, deleted
            let mut i = 0;
            while start.elapsed() < run_for {
                i += 1;
                let own = format!("layer {w}-{i}").into_bytes();
                let blobs = [config.clone(), shared.clone(), own.clone()];
                let m = image_manifest(
                    &sha256(&config),
                    config.len(),
                    &[(sha256(&shared), shared.len()), (sha256(&own), own.len())],
                    None,
                    None,
                );
                let d = sha256(&m);
                let mut ok = false;
                for _attempt in 0..20 {
                    let mut blobs_ok = true;
                    for b in &blobs {
                        let r = c
                            .post(format!(
                                "{base}/v2/{repo}/blobs/uploads/?digest={}",
                                sha256(b)
                            ))
                            .body(b.clone())
                            .send()
                            .await
                            .unwrap();
                        if r.status() != 201 {
                            assert_eq!(r.status(), 503, "blob push: {}", r.text().await.unwrap());
                            blobs_ok = false;
                            break;
                        }
                    }
                    if blobs_ok {
                        let r = c
                            .put(format!("{base}/v2/{repo}/manifests/{d}"))
                            .header("Content-Type", OCI_MANIFEST)
                            .body(m.clone())
                            .send()
                            .await
                            .unwrap();
                        match r.status().as_u16() {
                            201 => {
                                ok = true;
                                break;
                            }
                            // The collection claimed a blob between upload and
                            // manifest: nothing was acknowledged; push again.
                            400 | 503 => {
                                let body = r.text().await.unwrap();
                                assert!(
                                    body.contains("MANIFEST_BLOB_UNKNOWN")
                                        || body.contains("UNAVAILABLE"),
                                    "{body}"
                                );
                            }
                            s => panic!("manifest push: {s} {}", r.text().await.unwrap()),
                        }
                    }
                    stats.1 += 1;
                }
                assert!(ok, "push of {d} never succeeded");
                stats.0 += 1;
                let digests = vec![sha256(&config), sha256(&shared), sha256(&own)];
                // Delete every third image again: its own layer becomes garbage.
                if i % 3 == 0 {
                    let r = c
                        .delete(format!("{base}/v2/{repo}/manifests/{d}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 202);
                    stats.2 += 1;
                } else {
                    kept.push((d, digests));
                }
            }
            (kept, stats)
        }));
    }
    let collector = {
        let base = app.base.clone();
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            let (mut runs, mut reclaimed) = (0u32, 0u64);
            while start.elapsed() < run_for {
                let r = c.post(format!("{base}/api/v1/gc")).send().await.unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
                let v: Value = r.json().await.unwrap();
                reclaimed += v["blobs"].as_u64().unwrap();
                runs += 1;
                // Back-to-back collections with no grace period can starve a
                // push forever (each attempt's fresh blobs are claimed before
                // its manifest lands) when the store is slow; a short random
                // pause keeps the race without the livelock.
                let pause = if on_s3 {
                    rand::random_range(100..400)
                } else {
                    rand::random_range(10..80)
                };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            (runs, reclaimed)
        })
    };
    let mut kept = Vec::new();
    let (mut pushed, mut retried, mut deleted) = (0, 0, 0);
    for p in pushers {
        let (k, s) = p.await.unwrap();
        kept.extend(k);
        pushed += s.0;
        retried += s.1;
        deleted += s.2;
    }
    let (runs, reclaimed) = collector.await.unwrap();
    // One more collection after the dust settles, then verify.
    let last: Value = app
        .req(Method::POST, "/api/v1/gc")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut verified = 0;
    for (d, blobs) in &kept {
        let r = app.get(&format!("/v2/{repo}/manifests/{d}")).await;
        assert_eq!(r.status(), 200, "manifest {d}");
        assert_eq!(sha256(&r.bytes().await.unwrap()), *d);
        for b in blobs {
            let r = app.get(&format!("/v2/{repo}/blobs/{b}")).await;
            assert_eq!(r.status(), 200, "blob {b} of {d}");
            assert_eq!(sha256(&r.bytes().await.unwrap()), *b);
            verified += 1;
        }
    }
    eprintln!(
        "gc stress ({:?}): {pushed} images pushed ({retried} retries), {deleted} deleted, \
         {runs} collections reclaimed {reclaimed} blobs (+{} after), {verified} blobs verified \
         across {} kept images",
        app.db,
        last["blobs"],
        kept.len()
    );
    assert!(
        pushed >= min_pushed && runs >= 5 && reclaimed > 0,
        "the run exercised the race"
    );
}

/// The grace period protects a freshly uploaded blob that waits for its manifest.
async fn grace_protects_fresh_uploads(app: TestApp) {
    let d = app
        .push_blob("svc/fresh", b"waiting for its manifest")
        .await;
    let r: Value = app
        .req(Method::POST, "/api/v1/gc")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["blobs"], 0);
    assert_eq!(
        app.get(&format!("/v2/svc/fresh/blobs/{d}")).await.status(),
        200
    );
}

fn hour_grace(c: &mut Config) {
    aggressive(c);
    c.gc.grace_secs = 3600;
}

both!(with aggressive:
    promotions_answer_what_to_roll_back_to,
    retention_protects_rollback_targets_and_holds,
    referrers_and_children_follow,
    gc_races_pushes_and_deletes,
);
both!(with hour_grace: grace_protects_fresh_uploads);

fn scheduled_gc(c: &mut Config) {
    aggressive(c);
    c.gc.interval_secs = 1;
}

/// `serve` collects on its schedule: an unreferenced blob disappears by itself.
async fn serve_collects_on_a_schedule(app: TestApp) {
    let d = app.push_blob("svc/orphan", b"never referenced").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = app.get(&format!("/v2/svc/orphan/blobs/{d}")).await.status();
        if s == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "not collected within 15 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The run records its summary once it has finished (after the deletion).
    loop {
        let runs: Value = app
            .get("/api/v1/audit?action=gc.run")
            .await
            .json()
            .await
            .unwrap();
        if !runs["entries"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no gc.run entry within 15 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A repository with 2,500 artifacts (tags, an index per 10 images, referrers,
/// promotions) is planned in well under the time an operator waits; the plan
/// keeps every rollback target.
async fn thousands_of_artifacts_are_planned_quickly(app: TestApp) {
    use cairn::domain::{Digest, RepoName, Tag};
    use cairn::metadata::{NewManifest, Origin, TagBinding};
    let meta = app.metadata().await;
    let repo: RepoName = "svc/big".parse().unwrap();
    let id = meta.ensure_repository(&repo).await.unwrap();
    let origin = Origin::system("seed");
    let mut images = Vec::new();
    let manifest = |seed: String, children: Vec<Digest>, subject: Option<Digest>| NewManifest {
        digest: Digest::compute(cairn::domain::Algorithm::Sha256, seed.as_bytes()),
        content: bytes::Bytes::from(seed.clone()),
        media_type: OCI_MANIFEST.into(),
        artifact_type: None,
        subject,
        size: seed.len() as u64,
        annotations: Default::default(),
        blobs: vec![],
        children,
        require_blobs: false,
        touch_fresh_ms: 0,
    };
    let mut n = 0;
    for i in 0..2000 {
        let m = manifest(format!("image {i}"), vec![], None);
        let tag = TagBinding {
            tag: format!("b{i}").parse::<Tag>().unwrap(),
            immutable: true,
            rule: "default".into(),
        };
        meta.put_manifest(id, repo.as_str(), &m, &[tag], &origin)
            .await
            .unwrap();
        images.push(m.digest.clone());
        n += 1;
        if i % 10 == 9 {
            let idx = manifest(format!("index {i}"), images[i - 9..=i].to_vec(), None);
            meta.put_manifest(id, repo.as_str(), &idx, &[], &origin)
                .await
                .unwrap();
            let sig = manifest(format!("sig {i}"), vec![], Some(images[i].clone()));
            meta.put_manifest(id, repo.as_str(), &sig, &[], &origin)
                .await
                .unwrap();
            n += 2;
        }
    }
    assert_eq!(n, 2400);
    for i in (0..2000).step_by(100) {
        assert_eq!(
            promote(&app, "svc/big", &format!("b{i}"), "prod")
                .await
                .status(),
            201
        );
    }
    let started = Instant::now();
    let p = plan(&app, "svc/big").await;
    let took = started.elapsed();
    eprintln!(
        "planned {n} artifacts of svc/big on {:?} in {took:?}",
        app.db
    );
    let doomed = planned(&p);
    // Rollback depth 2: prod current (b1900), previous #1 (b1800), #2 (b1700).
    for i in [1700, 1800, 1900] {
        assert!(
            !doomed.contains(images[i].as_str()),
            "b{i} is a rollback target"
        );
    }
    assert!(doomed.contains(images[1600].as_str()));
    assert!(took < Duration::from_secs(30), "planning took {took:?}");
    meta.close().await;
}

/// The same operations from a shell: `cairn promote`, `hold`, `retention
/// plan|apply`, `gc`, `audit verify|export`, on the server's database.
async fn the_cli_does_what_the_api_does(app: TestApp) {
    let repo = "svc/cli";
    let mut digests = Vec::new();
    for i in 1..=4 {
        digests.push(
            image(&app, repo, &format!("v{i}"), &format!("cli {i}"))
                .await
                .0,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("cairn.toml");
    std::fs::write(&config_path, toml::to_string(&app.config).unwrap()).unwrap();
    // Asynchronously: the registry under test runs on this test's runtime, and
    // its background jobs (the audit sealer) must keep running while the
    // command waits for them.
    let cairn = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.arg("--config")
            .arg(&config_path)
            .args(args)
            .env("CAIRN_LOG__LEVEL", "info");
        async move {
            let out = cmd.output().await.expect("run cairn");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
    };
    let (code, out, err) = cairn(&["promote", &format!("{repo}:v1"), "--env", "prod"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("promoted to prod"), "{out}");
    let (code, out, err) = cairn(&[
        "hold",
        "add",
        &format!("{repo}@{}", digests[1]),
        "--reason",
        "case-77",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("case-77"));
    let (code, out, _) = cairn(&["promote", &format!("{repo}:nope"), "--env", "prod"]).await;
    assert_ne!(code, Some(0));
    assert!(out.is_empty());

    let (code, out, err) = cairn(&["retention", "plan", "--repo", repo, "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    // keep_last 1 keeps v4; v1 is prod's current; v2 is held; v3 goes.
    assert_eq!(planned(&plan), [digests[2].clone()].into());
    let (code, table, _) = cairn(&["retention", "plan", "--repo", repo]).await;
    assert_eq!(code, Some(0));
    assert!(
        table.contains("DELETE") && table.contains("legal hold: case-77"),
        "{table}"
    );
    let (code, out, err) = cairn(&[
        "retention",
        "apply",
        "--plan",
        plan["id"].as_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["deleted"][0]["digest"], digests[2]);
    assert_eq!(
        app.get(&format!("/v2/{repo}/manifests/v3")).await.status(),
        404
    );

    let (code, out, err) = cairn(&["gc", "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let gc: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(gc["blobs"], 2, "v3's layer and manifest: {gc}");

    let (code, out, _) = cairn(&["audit", "verify"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("no broken link"), "{out}");
    let export = dir.path().join("audit.jsonl");
    let (code, _, err) = cairn(&[
        "audit",
        "export",
        "--action",
        "hold.add",
        "-o",
        export.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let lines = std::fs::read_to_string(&export).unwrap();
    let entry: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(entry["detail"]["reason"], "case-77");
    assert!(entry["actor"].as_str().unwrap().starts_with("cli:"));
}

both!(with scheduled_gc: serve_collects_on_a_schedule);
both!(with aggressive: thousands_of_artifacts_are_planned_quickly, the_cli_does_what_the_api_does);
