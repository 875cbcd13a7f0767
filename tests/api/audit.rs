//! The audit trail as an auditor sees it: every change and refusal recorded
//! with its actor and request, queryable and exportable, and a hash chain that
//! detects a row altered directly in the database.

use reqwest::Method;
use serde_json::Value;
use sqlx::Connection;

use crate::helpers::{image_manifest, sha256, Db, TestApp, OCI_MANIFEST};

async fn audit(app: &TestApp, query: &str) -> Value {
    let r = app.get(&format!("/api/v1/audit?{query}")).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn actions(v: &Value) -> Vec<String> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

/// Runs SQL on the registry's own database, as someone with database access would.
async fn tamper(app: &TestApp, statements: &[&str]) -> Result<(), sqlx::Error> {
    let url = &app.config.database.url;
    match app.db {
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await?;
            for s in statements {
                sqlx::query(s).execute(&mut c).await?;
            }
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            for s in statements {
                sqlx::query(s).execute(&mut c).await?;
            }
        }
    }
    Ok(())
}

/// A busy run: blobs, manifests, tags, a refused overwrite, deletes. Every
/// change is in the trail with who and which request; filters and the
/// cursor pages agree with the export; the chain verifies.
async fn every_change_is_audited_and_the_chain_verifies(app: TestApp) {
    let repo = "audit/app";
    let (_, d1) = app.push_image(repo, "v1", b"layer one").await;
    // A refused overwrite of the immutable tag.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = sha256(config);
    let other_layer = app.push_blob(repo, b"layer two").await;
    let m2 = image_manifest(&cd, config.len(), &[(other_layer, 9)], None, None);
    let r = app
        .req(Method::PUT, &format!("/v2/{repo}/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .header("User-Agent", "ci-bot/1.0")
        .header("X-Request-Id", "req-overwrite-1")
        .body(m2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // An untagged manifest, then its deletion; a refused delete of v1's manifest.
    let d2 = sha256(&m2);
    assert_eq!(
        app.put_manifest(repo, &d2, OCI_MANIFEST, &m2)
            .await
            .status(),
        201
    );
    assert_eq!(
        app.delete(&format!("/v2/{repo}/manifests/{d2}"))
            .await
            .status(),
        202
    );
    assert_eq!(
        app.delete(&format!("/v2/{repo}/manifests/{d1}"))
            .await
            .status(),
        409
    );
    // Concurrent pushes elsewhere, to exercise chaining under contention.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let base = app.base.clone();
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let data = format!("blob {i}");
            let r = c
                .post(format!(
                    "{base}/v2/audit/busy/blobs/uploads/?digest={}",
                    sha256(data.as_bytes())
                ))
                .body(data)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let all = audit(&app, &format!("repository={repo}&order=asc")).await;
    assert_eq!(
        actions(&all),
        [
            "blob.push",
            "blob.push",
            "manifest.push",
            "tag.created",
            "blob.push",
            "tag.denied",
            "manifest.push",
            "manifest.delete",
            "manifest.delete",
        ]
    );
    let entries = all["entries"].as_array().unwrap();
    let denied = &entries[5];
    assert_eq!(denied["result"], "denied");
    assert_eq!(denied["tag"], "v1");
    assert_eq!(denied["digest"], d2);
    assert_eq!(denied["detail"]["previous"], d1);
    assert_eq!(denied["user_agent"], "ci-bot/1.0");
    assert_eq!(denied["request_id"], "req-overwrite-1");
    assert_eq!(denied["actor"], "127.0.0.1");
    assert_eq!(entries[7]["result"], "ok");
    assert_eq!(entries[8]["result"], "denied");
    assert_eq!(entries[8]["detail"]["kept_by"][0]["tag"], "v1");

    // Filters: by digest, by action; newest first by default.
    let by_digest = audit(&app, &format!("digest={d1}")).await;
    assert_eq!(
        actions(&by_digest),
        ["manifest.delete", "tag.created", "manifest.push"]
    );
    let pushes = audit(&app, "action=blob.push&repository=audit/busy").await;
    assert_eq!(pushes["entries"].as_array().unwrap().len(), 8);

    // Cursor pages cover the whole log exactly once, and match the export.
    let mut ids = Vec::new();
    let mut next = Some("/api/v1/audit?n=4&order=asc".to_string());
    while let Some(path) = next {
        let r = app.get(&path).await;
        let link = r
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_string());
        let page: Value = r.json().await.unwrap();
        ids.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap()),
        );
        next = page["next"].as_str().map(str::to_string);
        assert_eq!(link.is_some(), next.is_some());
    }
    let export = app.get("/api/v1/audit/export").await;
    assert_eq!(export.status(), 200);
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let text = export.text().await.unwrap();
    let exported: Vec<i64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, exported);
    // policy.change at start, then the run above.
    assert_eq!(exported, (1..=exported.len() as i64).collect::<Vec<_>>());

    let v = app.get("/api/v1/audit/verify").await;
    assert_eq!(v.status(), 200);
    let report: Value = v.json().await.unwrap();
    assert_eq!(report["checked"], exported.len());
    assert!(report["broken"].is_null());
}

/// The table refuses updates and deletes; someone who disables that and
/// alters a row is caught by verification, at that row.
async fn tampering_breaks_the_chain(app: TestApp) {
    app.push_image("tamper/app", "v1", b"layer").await;
    let target = audit(&app, "action=tag.created").await["entries"][0]["id"]
        .as_i64()
        .unwrap();
    let update = format!("UPDATE audit_log SET actor = 'someone-else' WHERE id = {target}");
    let refused = tamper(&app, &[&update]).await;
    assert!(
        refused.unwrap_err().to_string().contains("append-only"),
        "the database refuses to alter the trail"
    );
    let delete = "DELETE FROM audit_log WHERE id = 1";
    assert!(tamper(&app, &[delete]).await.is_err());
    assert_eq!(app.get("/api/v1/audit/verify").await.status(), 200);

    let disable = match app.db {
        Db::Sqlite => "DROP TRIGGER audit_log_no_update",
        Db::Postgres => "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update",
    };
    tamper(&app, &[disable, &update]).await.unwrap();
    let v = app.get("/api/v1/audit/verify").await;
    assert_eq!(v.status(), 409);
    let report: Value = v.json().await.unwrap();
    assert_eq!(report["broken"]["id"], target);
    assert_eq!(report["checked"], target - 1);
    assert!(report["broken"]["reason"]
        .as_str()
        .unwrap()
        .contains("altered"));
}

/// Removing the newest entries (the tail) is detected through the head row.
async fn a_removed_tail_is_detected(app: TestApp) {
    app.push_image("tamper/tail", "v1", b"layer").await;
    let newest = audit(&app, "n=1").await["entries"][0]["id"]
        .as_i64()
        .unwrap();
    let disable = match app.db {
        Db::Sqlite => "DROP TRIGGER audit_log_no_delete",
        Db::Postgres => "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_delete",
    };
    let delete = format!("DELETE FROM audit_log WHERE id = {newest}");
    tamper(&app, &[disable, &delete]).await.unwrap();
    let v = app.get("/api/v1/audit/verify").await;
    assert_eq!(v.status(), 409);
    let report: Value = v.json().await.unwrap();
    assert_eq!(report["broken"]["id"], newest);
    assert!(report["broken"]["reason"]
        .as_str()
        .unwrap()
        .contains("removed"));
}

/// Bad filters are a 400 naming the parameter; nothing else changes.
async fn bad_filters_are_clear_errors(app: TestApp) {
    for (q, needle) in [
        ("since=yesterday", "since"),
        ("order=sideways", "order"),
        ("cursor=abc", "cursor"),
        ("n=-1", "n="),
    ] {
        let r = app.get(&format!("/api/v1/audit?{q}")).await;
        assert_eq!(r.status(), 400, "{q}");
        let body = r.text().await.unwrap();
        assert!(body.contains(needle), "{q}: {body}");
    }
}

crate::both!(
    every_change_is_audited_and_the_chain_verifies,
    tampering_breaks_the_chain,
    a_removed_tail_is_detected,
    bad_filters_are_clear_errors,
);
