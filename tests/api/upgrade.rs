//! Upgrades: a database written by an older version (fewer migrations, with
//! content) is migrated when the registry starts and its content stays served;
//! a migration that fails leaves the schema as it was.

use std::borrow::Cow;

use sqlx::{Connection, SqliteConnection};

use crate::helpers::{Db, TestApp};

/// The embedded SQLite migrations, only the first `n` of them.
fn first(n: usize) -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.migrations = Cow::Owned(m.migrations[..n].to_vec());
    m
}

#[tokio::test]
async fn an_older_database_is_migrated_on_start_and_keeps_its_content() {
    // A registry of the previous schema (three migrations), with a pushed image.
    let old = TestApp::spawn(Db::Sqlite).await;
    let (_, digest) = old.push_image("upgrade/app", "v1", b"old layer").await;
    let url = old.config.database.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("old.db");
    {
        // Rebuild the same content on a database holding only the first three
        // migrations, as the previous release wrote it.
        let mut c = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", copy.display()))
            .await
            .unwrap();
        first(3).run(&mut c).await.unwrap();
        let source = url.trim_start_matches("sqlite://");
        sqlx::query(&format!("ATTACH DATABASE '{source}' AS src"))
            .execute(&mut c)
            .await
            .unwrap();
        for table in [
            "repositories",
            "blobs",
            "repository_blobs",
            "manifests",
            "manifest_blobs",
            "manifest_children",
            "tags",
            "tag_events",
            "tag_pins",
        ] {
            // The old schema's columns only (newer versions added some).
            let cols: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
            ))
            .fetch_all(&mut c)
            .await
            .unwrap();
            let list = cols.join(", ");
            sqlx::query(&format!(
                "INSERT INTO main.{table} ({list}) SELECT {list} FROM src.{table}"
            ))
            .execute(&mut c)
            .await
            .unwrap();
        }
        // The previous release kept a manifest's bytes as a file of the blob
        // store, not in the database: put them where it did.
        let content: Vec<u8> =
            sqlx::query_scalar("SELECT content FROM src.manifest_content WHERE digest = $1")
                .bind(digest.as_str())
                .fetch_one(&mut c)
                .await
                .unwrap();
        let root = url::Url::parse(&old.config.storage.url)
            .unwrap()
            .to_file_path()
            .unwrap();
        let hex = digest.trim_start_matches("sha256:");
        let file = root.join("blobs/sha256").join(&hex[..2]).join(hex);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &content).unwrap();
        sqlx::query("DETACH DATABASE src")
            .execute(&mut c)
            .await
            .unwrap();
        let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(version, 20261125000003);
    }
    // Start the current version on it, with the old blob directory.
    let blobs = old.config.storage.url.clone();
    let new = TestApp::spawn_with(Db::Sqlite, move |c| {
        c.database.url = format!("sqlite://{}", copy.display());
        c.storage.url = blobs;
    })
    .await;
    let r = new.get("/v2/upgrade/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    let history: serde_json::Value = new
        .get("/api/v1/repositories/upgrade/app/tags/v1/history")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["events"][0]["action"], "created");
    // New features work on the migrated database.
    new.push_image("upgrade/app", "v2", b"new layer").await;
    let v: serde_json::Value = new.get("/api/v1/audit/verify").await.json().await.unwrap();
    assert!(v["broken"].is_null());
    assert_eq!(
        new.get("/api/v1/repositories/upgrade/app/retention")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_failing_migration_leaves_the_schema_intact() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let mut c = SqliteConnection::connect(&url).await.unwrap();
    first(3).run(&mut c).await.unwrap();
    // The next migration with a statement that fails half-way.
    let mut broken = sqlx::migrate!("./migrations/sqlite");
    let mut next = broken.migrations[3].clone();
    next.sql = Cow::Owned(format!("{}\nSELECT no_such_function();", next.sql));
    next.checksum = Cow::Owned(vec![0; 48]);
    broken.migrations = Cow::Owned(
        broken.migrations[..3]
            .iter()
            .cloned()
            .chain(std::iter::once(next))
            .collect(),
    );
    let err = broken.run(&mut c).await.unwrap_err().to_string();
    assert!(err.contains("no_such_function"), "{err}");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(
        tables.is_empty(),
        "the failed migration left a table behind"
    );
    let version: i64 =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(version, 20261125000003);
}
