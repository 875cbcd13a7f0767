//! Scheduled jobs on several replicas: each job's lock is held by one replica
//! at a time, and a replica that cannot take it skips its run.

use std::time::Duration;

use cairn::metadata::Job;
use cairn::App;

use crate::helpers::{Db, TestApp};

/// Two replicas of one registry on one PostgreSQL database: the lock of a job
/// goes to one, the other is refused while it is held and gets it once it is
/// released (or its holder's connection is gone).
#[tokio::test]
async fn a_job_lock_is_held_by_one_replica_at_a_time_on_postgres() {
    let app = TestApp::spawn(Db::Postgres).await;
    let a = App::build(&app.config).await.expect("replica a");
    let b = App::build(&app.config).await.expect("replica b");
    let (ma, mb) = (a.registry().metadata(), b.registry().metadata());

    let held = ma
        .try_job_lock(Job::GarbageCollection)
        .await
        .unwrap()
        .expect("the first replica gets the lock");
    assert!(
        mb.try_job_lock(Job::GarbageCollection)
            .await
            .unwrap()
            .is_none(),
        "the other replica is refused while it is held"
    );
    assert!(
        ma.try_job_lock(Job::GarbageCollection)
            .await
            .unwrap()
            .is_none(),
        "a second run on the same replica is refused too"
    );
    // Other jobs have their own locks.
    let retention = mb
        .try_job_lock(Job::Retention)
        .await
        .unwrap()
        .expect("another job's lock is free");
    retention.release().await.unwrap();

    held.release().await.unwrap();
    let on_b = mb
        .try_job_lock(Job::GarbageCollection)
        .await
        .unwrap()
        .expect("after release the other replica gets it");
    assert!(ma
        .try_job_lock(Job::GarbageCollection)
        .await
        .unwrap()
        .is_none());

    // Dropped without release (a run that panicked): its connection is closed,
    // which ends the session and with it the lock.
    drop(on_b);
    let mut again = None;
    for _ in 0..50 {
        again = ma.try_job_lock(Job::GarbageCollection).await.unwrap();
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    again
        .expect("a dropped lock is released with its connection")
        .release()
        .await
        .unwrap();
}

/// SQLite has one process by construction: the lock is always granted.
#[tokio::test]
async fn a_job_lock_is_always_granted_on_sqlite() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let a = App::build(&app.config).await.expect("second app");
    let m = a.registry().metadata();
    let first = m.try_job_lock(Job::UploadExpiry).await.unwrap();
    let second = m.try_job_lock(Job::UploadExpiry).await.unwrap();
    assert!(first.is_some() && second.is_some());
}

/// A replica's scheduled collection skips its runs while another replica holds
/// the collection lock, and collects once it is released.
#[tokio::test]
async fn scheduled_gc_skips_while_another_replica_runs_it() {
    let app = TestApp::spawn_with(Db::Postgres, |c| {
        c.gc.interval_secs = 1;
        c.gc.grace_secs = 0;
    })
    .await;
    let other = App::build(&app.config).await.expect("other replica");
    // The app's own schedule may be running a collection right now (it starts
    // one at once): wait for it to let go, then hold the lock.
    let mut lock = None;
    for _ in 0..100 {
        lock = other
            .registry()
            .metadata()
            .try_job_lock(Job::GarbageCollection)
            .await
            .unwrap();
        if lock.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let lock = lock.expect("lock");

    let digest = app.push_blob("jobs/app", b"an unreferenced blob").await;
    let path = format!("/v2/jobs/app/blobs/{digest}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        app.head(&path).await.status(),
        200,
        "no collection ran while the other replica held the lock"
    );

    lock.release().await.unwrap();
    let mut status = 200;
    for _ in 0..50 {
        status = app.head(&path).await.status().as_u16();
        if status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 404, "collected once the lock was released");
}

/// `cairn gc` and `cairn retention apply` (the manual runs) take the lock the
/// scheduled runs take: while a replica holds it they wait (saying so) and,
/// after `--wait` seconds, give up having done nothing; once it is free they
/// run. (On the local disk: the commands get their configuration from
/// `CAIRN_*` variables here, which name no S3 credentials.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_gc_and_retention_apply_take_the_job_lock() {
    let app = TestApp::spawn_on_local_disk(Db::Postgres, |c| {
        c.gc.interval_secs = 0;
        c.gc.grace_secs = 0;
    })
    .await;
    let digest = app.push_blob("jobs/manual", b"collect me by hand").await;
    let path = format!("/v2/jobs/manual/blobs/{digest}");
    let cairn = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .current_dir(app.dir.path())
            .env("CAIRN_DATABASE__URL", &app.config.database.url)
            .env("CAIRN_STORAGE__URL", &app.config.storage.url)
            .env("CAIRN_GC__GRACE_SECS", "0")
            .env("CAIRN_LOG__LEVEL", "warn")
            .output()
            .expect("run cairn");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let replica = App::build(&app.config).await.expect("a replica");
    for (job, args) in [
        (Job::GarbageCollection, vec!["gc", "--json", "--wait", "1"]),
        (
            Job::Retention,
            vec!["retention", "apply", "--json", "--wait", "1"],
        ),
    ] {
        let lock = replica
            .registry()
            .metadata()
            .try_job_lock(job)
            .await
            .unwrap()
            .expect("the replica takes the lock");
        let (ok, stderr) = tokio::task::block_in_place(|| cairn(args.as_slice()));
        assert!(!ok, "{args:?} ran while a replica held the lock");
        assert!(
            stderr.contains("is running elsewhere") && stderr.contains("nothing was done"),
            "{args:?}: {stderr}"
        );
        if job == Job::GarbageCollection {
            assert_eq!(app.head(&path).await.status(), 200, "nothing collected");
        }
        lock.release().await.unwrap();
        let (ok, stderr) = tokio::task::block_in_place(|| cairn(args.as_slice()));
        assert!(ok, "{args:?} once the lock is free: {stderr}");
    }
    assert_eq!(app.head(&path).await.status(), 404, "collected by hand");
}

/// `POST /api/v1/gc` and `POST /api/v1/retention/apply` take the same lock: while
/// another replica holds it they wait, answer `503 UNAVAILABLE` with
/// `Retry-After` after `JOB_LOCK_WAIT` having done nothing, and run once it is
/// free, also when it is freed while they wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_gc_and_retention_apply_take_the_job_lock() {
    let app = TestApp::spawn_with(Db::Postgres, |c| {
        c.gc.interval_secs = 0;
        c.gc.grace_secs = 0;
    })
    .await;
    let digest = app
        .push_blob("jobs/api", b"collect me through the API")
        .await;
    let path = format!("/v2/jobs/api/blobs/{digest}");
    let replica = App::build(&app.config).await.expect("a replica");
    let wait = cairn::service::JOB_LOCK_WAIT;
    for (job, route) in [
        (Job::GarbageCollection, "/api/v1/gc"),
        (Job::Retention, "/api/v1/retention/apply"),
    ] {
        let lock = replica
            .registry()
            .metadata()
            .try_job_lock(job)
            .await
            .unwrap()
            .expect("the replica takes the lock");
        let started = std::time::Instant::now();
        let r = app.req(reqwest::Method::POST, route).send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 503, "{route} while a replica holds the lock");
        assert!(took >= wait, "{route} gave up after {took:?}");
        assert_eq!(r.headers()["retry-after"], "10");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("UNAVAILABLE") && body.contains("another replica"),
            "{body}"
        );
        if job == Job::GarbageCollection {
            assert_eq!(app.head(&path).await.status(), 200, "nothing collected");
        }
        // Freed while the request waits: it runs.
        let call = {
            let req = app.req(reqwest::Method::POST, route);
            tokio::spawn(async move { req.send().await.unwrap().status() })
        };
        tokio::time::sleep(Duration::from_millis(1000)).await;
        lock.release().await.unwrap();
        assert_eq!(call.await.unwrap(), 200, "{route} once the lock is free");
    }
    assert_eq!(
        app.head(&path).await.status(),
        404,
        "collected through the API"
    );
}
