//! `cairn::metadata::Metadata` on its own, over a fresh SQLite file and a fresh
//! PostgreSQL database: each body is written once and run on both.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn::domain::{Algorithm, Digest, RepoName, SessionId, Tag};
use cairn::metadata::{
    AuditEntry, DbOptions, FinishOutcome, Metadata, NewManifest, Origin, PutOutcome, TagBinding,
    Upload,
};
use cairn::storage::StoredPart;

use crate::helpers::fresh_postgres_db;

/// The repository name recorded in audit entries of these tests.
const REPO: &str = "repo";

fn tester() -> Origin {
    Origin::system("test")
}

fn push() -> AuditEntry {
    AuditEntry::ok("blob.push", REPO)
}

/// A migrated, empty metadata store and what keeps it alive.
pub struct Store {
    pub meta: Metadata,
    _dir: Option<tempfile::TempDir>,
}

async fn open(url: String, dir: Option<tempfile::TempDir>) -> Store {
    let meta = Metadata::connect(&DbOptions {
        url,
        max_connections: 8,
        acquire_timeout: Duration::from_secs(10),
    })
    .await
    .expect("connect");
    meta.migrate().await.expect("migrate");
    Store { meta, _dir: dir }
}

pub async fn sqlite_store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
    open(url, Some(dir)).await
}

pub async fn postgres_store() -> Store {
    open(fresh_postgres_db().await, None).await
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    let s = super::sqlite_store().await;
                    assert_eq!(s.meta.backend_name(), "sqlite");
                    super::$name(&s.meta).await
                }
                #[tokio::test]
                async fn postgres() {
                    let s = super::postgres_store().await;
                    assert_eq!(s.meta.backend_name(), "postgres");
                    super::$name(&s.meta).await
                }
            }
        )*
    };
}

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}

fn digest(data: &[u8]) -> Digest {
    Digest::compute(Algorithm::Sha256, data)
}

fn binding(t: &str, immutable: bool) -> TagBinding {
    TagBinding {
        tag: tag(t),
        immutable,
        rule: "test".into(),
    }
}

fn manifest(seed: &[u8], subject: Option<Digest>, artifact_type: Option<&str>) -> NewManifest {
    NewManifest {
        digest: digest(seed),
        content: bytes::Bytes::copy_from_slice(seed),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        artifact_type: artifact_type.map(str::to_string),
        subject,
        size: seed.len() as u64,
        annotations: BTreeMap::new(),
        blobs: vec![digest(b"config"), digest(b"layer")],
        children: vec![],
        // These tests store manifests without their blobs.
        require_blobs: false,
        touch_fresh_ms: 0,
    }
}

async fn ensure_repository_is_idempotent(meta: &Metadata) {
    let a = repo("team/app");
    assert_eq!(meta.repository_id(&a).await.unwrap(), None);
    let id = meta.ensure_repository(&a).await.unwrap();
    assert_eq!(meta.ensure_repository(&a).await.unwrap(), id);
    assert_eq!(meta.repository_id(&a).await.unwrap(), Some(id));
    let other = meta.ensure_repository(&repo("team/other")).await.unwrap();
    assert_ne!(other, id);

    // Concurrent first uses agree on one id.
    let b = repo("raced");
    let ids = futures::future::join_all((0..8).map(|_| meta.ensure_repository(&b))).await;
    let ids: Vec<i64> = ids.into_iter().map(|r| r.unwrap()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    for i in [id, other, ids[0]] {
        meta.link_blob(i, &digest(b"x"), 1, &tester(), push(), false)
            .await
            .unwrap();
    }
    let page = meta.list_repositories(None, 100).await.unwrap();
    assert_eq!(page.items, vec!["raced", "team/app", "team/other"]);
}

async fn put_manifest_binds_all_tags_or_none(meta: &Metadata) {
    let r = repo("demo");
    let id = meta.ensure_repository(&r).await.unwrap();
    let m1 = manifest(b"m1", None, None);
    let out = meta
        .put_manifest(
            id,
            REPO,
            &m1,
            &[binding("a", false), binding("b", false)],
            &tester(),
        )
        .await
        .unwrap();
    assert!(
        matches!(out, PutOutcome::Stored(ref e) if e.len() == 2),
        "{out:?}"
    );
    for t in ["a", "b"] {
        let rec = meta.resolve_tag(&r, &tag(t)).await.unwrap().expect(t);
        assert_eq!(rec.digest, m1.digest.as_str());
    }
    assert_eq!(meta.blob_size(&m1.digest).await.unwrap(), Some(2));
    assert_eq!(
        meta.manifest_content(&m1.digest).await.unwrap().as_deref(),
        Some(&b"m1"[..]),
        "the bytes are stored with the record"
    );

    // `pinned` is immutable and holds m1: a push of m2 that also names `c` and
    // `a` changes nothing at all, not even the manifest row.
    let out = meta
        .put_manifest(id, REPO, &m1, &[binding("pinned", true)], &tester())
        .await
        .unwrap();
    assert!(matches!(out, PutOutcome::Stored(_)), "{out:?}");
    let m2 = manifest(b"m2", None, None);
    let out = meta
        .put_manifest(
            id,
            REPO,
            &m2,
            &[
                binding("c", false),
                binding("a", false),
                binding("pinned", true),
            ],
            &tester(),
        )
        .await
        .unwrap();
    assert!(
        matches!(out, PutOutcome::Denied(ref d) if d.len() == 1 && d[0].tag == "pinned"),
        "{out:?}"
    );
    assert!(meta.resolve_tag(&r, &tag("c")).await.unwrap().is_none());
    assert_eq!(
        meta.resolve_tag(&r, &tag("a"))
            .await
            .unwrap()
            .unwrap()
            .digest,
        m1.digest.as_str()
    );
    assert!(meta.manifest(&r, &m2.digest).await.unwrap().is_none());

    // A failure inside the transaction (no such repository) leaves nothing behind.
    let m3 = manifest(b"m3", None, None);
    assert!(meta
        .put_manifest(id + 1000, REPO, &m3, &[binding("x", false)], &tester())
        .await
        .is_err());
    assert_eq!(meta.blob_size(&m3.digest).await.unwrap(), None);
    assert!(meta.resolve_tag(&r, &tag("x")).await.unwrap().is_none());

    let page = meta.list_tags(&r, None, 100).await.unwrap().unwrap();
    assert_eq!(page.items, vec!["a", "b", "pinned"]);
}

/// A session opened by id, as `POST …/blobs/uploads/` opens one: no row yet.
async fn upload_session(meta: &Metadata, r: &RepoName) -> Upload {
    let repo_id = meta.ensure_repository(r).await.unwrap();
    let u = Upload::opened(SessionId::new(Algorithm::Sha256, r.as_str()), repo_id);
    assert!(meta.upload(r, &u.id).await.unwrap().is_none());
    u
}

fn part(key: &str, size: u64) -> StoredPart {
    StoredPart {
        key: key.into(),
        size,
    }
}

async fn append_upload_is_optimistic(meta: &Metadata) {
    let r = repo("demo");
    let opened = upload_session(meta, &r).await;
    let id = opened.id.clone();
    let state = Algorithm::Sha256.hasher().save();

    // Two first chunks at once: both would store the session, one appends.
    let a = part("uploads/u1/a", 10);
    let b = part("uploads/u1/b", 20);
    let (ra, rb) = tokio::join!(
        meta.append_upload(&opened, &a, &state),
        meta.append_upload(&opened, &b, &state)
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra ^ rb, "exactly one append at offset 0 wins: {ra} {rb}");
    let winner = if ra { &a } else { &b };
    let u = meta.upload(&r, &id).await.unwrap().unwrap();
    assert!(u.stored);
    assert_eq!(u.size, winner.size);
    assert_eq!(u.parts, vec![winner.clone()]);

    // A stale expectation loses; the right one wins.
    let c = part("uploads/u1/c", 5);
    assert!(!meta.append_upload(&opened, &c, &state).await.unwrap());
    assert!(meta.append_upload(&u, &c, &state).await.unwrap());
    let u = meta.upload(&r, &id).await.unwrap().unwrap();
    assert_eq!(u.size, winner.size + 5);
    assert_eq!(u.parts, vec![winner.clone(), c]);
    // Sessions belong to their repository.
    assert!(meta.upload(&repo("other"), &id).await.unwrap().is_none());
}

async fn finish_upload_happens_once(meta: &Metadata) {
    let r = repo("demo");
    let d = digest(b"content");
    let state = Algorithm::Sha256.hasher().save();
    let t = tester();

    // A session that never got a chunk (a POST, then a PUT with the body).
    let opened = upload_session(meta, &r).await;
    assert_eq!(meta.repository_blob(&r, &d).await.unwrap(), None);
    let (first, second) = tokio::join!(
        meta.finish_upload(&opened, &d, 7, &t, push(), false),
        meta.finish_upload(&opened, &d, 7, &t, push(), false)
    );
    let mut outcomes = [first.unwrap(), second.unwrap()];
    outcomes.sort_by_key(|o| *o == FinishOutcome::Gone);
    assert_eq!(outcomes, [FinishOutcome::Done, FinishOutcome::Gone]);
    assert_eq!(meta.repository_blob(&r, &d).await.unwrap(), Some(7));
    assert_eq!(
        meta.finish_upload(&opened, &d, 7, &t, push(), false)
            .await
            .unwrap(),
        FinishOutcome::Gone
    );
    // Ended: it can neither take a chunk nor be cancelled.
    assert!(meta.upload_ended(&opened.id).await.unwrap());
    assert!(!meta
        .append_upload(&opened, &part("uploads/late", 3), &state)
        .await
        .unwrap());
    assert!(meta.upload(&r, &opened.id).await.unwrap().is_none());
    assert!(meta.delete_upload(&opened).await.unwrap().is_none());

    // A session with a chunk.
    let s = upload_session(meta, &r).await;
    assert!(meta
        .append_upload(&s, &part("uploads/u2/p", 7), &state)
        .await
        .unwrap());
    let u = meta.upload(&r, &s.id).await.unwrap().unwrap();
    let (first, second) = tokio::join!(
        meta.finish_upload(&u, &d, 7, &t, push(), false),
        meta.finish_upload(&u, &d, 7, &t, push(), false)
    );
    let mut outcomes = [first.unwrap(), second.unwrap()];
    outcomes.sort_by_key(|o| *o == FinishOutcome::Gone);
    assert_eq!(
        outcomes,
        [FinishOutcome::Done, FinishOutcome::Gone],
        "exactly one finish"
    );
    assert_eq!(
        meta.finish_upload(&u, &d, 7, &t, push(), false)
            .await
            .unwrap(),
        FinishOutcome::Gone
    );
    assert!(meta.upload(&r, &s.id).await.unwrap().is_none());
    assert!(meta.delete_upload(&u).await.unwrap().is_none());

    // Ends are kept only while the id could be used.
    let opened_ms = SessionId::parse(&opened.id).unwrap().opened_ms();
    meta.prune_ended_uploads(&SessionId::floor(opened_ms))
        .await
        .unwrap();
    assert!(meta.upload_ended(&opened.id).await.unwrap());
    assert!(
        meta.prune_ended_uploads(&SessionId::floor(opened_ms + 1))
            .await
            .unwrap()
            >= 1
    );
    assert!(!meta.upload_ended(&opened.id).await.unwrap());
}

/// A chunk appended after the finisher read the session makes the finish fail:
/// the blob was verified against an older state.
async fn finish_upload_needs_the_state_it_verified(meta: &Metadata) {
    let r = repo("demo");
    let opened = upload_session(meta, &r).await;
    let state = Algorithm::Sha256.hasher().save();
    assert!(meta
        .append_upload(&opened, &part("uploads/u3/a", 7), &state)
        .await
        .unwrap());
    let seen = meta.upload(&r, &opened.id).await.unwrap().unwrap();
    assert!(meta
        .append_upload(&seen, &part("uploads/u3/b", 5), &state)
        .await
        .unwrap());
    let d = digest(b"content");
    assert_eq!(
        meta.finish_upload(&seen, &d, 7, &tester(), push(), false)
            .await
            .unwrap(),
        FinishOutcome::Gone
    );
    assert_eq!(meta.repository_blob(&r, &d).await.unwrap(), None);
    let now = meta.upload(&r, &opened.id).await.unwrap().unwrap();
    assert_eq!((now.size, now.parts.len()), (12, 2));
    let keys = meta.delete_upload(&now).await.unwrap().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(meta.upload(&r, &opened.id).await.unwrap().is_none());
}

fn assert_page(p: &cairn::metadata::Page, items: &[&str], more: bool) {
    let got: Vec<&str> = p.items.iter().map(String::as_str).collect();
    assert_eq!((got.as_slice(), p.more), (items, more));
}

async fn listings_paginate(meta: &Metadata) {
    for n in ["c", "a", "b/x", "b", "a-b"] {
        let id = meta.ensure_repository(&repo(n)).await.unwrap();
        meta.link_blob(id, &digest(b"x"), 1, &tester(), push(), false)
            .await
            .unwrap();
    }
    // A repository with no content (an unfinished session) is not listed.
    meta.ensure_repository(&repo("empty")).await.unwrap();
    let p = meta.list_repositories(None, 2).await.unwrap();
    assert_page(&p, &["a", "a-b"], true);
    let p = meta.list_repositories(Some("a-b"), 2).await.unwrap();
    assert_page(&p, &["b", "b/x"], true);
    let p = meta.list_repositories(Some("b/x"), 2).await.unwrap();
    assert_page(&p, &["c"], false);
    let p = meta.list_repositories(Some("a"), 4).await.unwrap();
    assert_page(&p, &["a-b", "b", "b/x", "c"], false);
    let p = meta.list_repositories(None, 0).await.unwrap();
    assert!(p.items.is_empty());

    let r = repo("a");
    let id = meta.repository_id(&r).await.unwrap().unwrap();
    let tags = ["v3", "v1", "V2", "v10"];
    let bindings: Vec<TagBinding> = tags.iter().map(|t| binding(t, false)).collect();
    meta.put_manifest(id, REPO, &manifest(b"m", None, None), &bindings, &tester())
        .await
        .unwrap();
    let p = meta.list_tags(&r, None, 3).await.unwrap().unwrap();
    assert_page(&p, &["V2", "v1", "v10"], true);
    let p = meta.list_tags(&r, Some("v10"), 3).await.unwrap().unwrap();
    assert_page(&p, &["v3"], false);
    assert!(meta
        .list_tags(&repo("zzz"), None, 3)
        .await
        .unwrap()
        .is_none());
    let p = meta.list_tags(&repo("b"), None, 3).await.unwrap().unwrap();
    assert!(p.items.is_empty() && !p.more);
}

async fn referrers_are_found_by_subject(meta: &Metadata) {
    let r = repo("demo");
    let id = meta.ensure_repository(&r).await.unwrap();
    let base = manifest(b"base", None, None);
    meta.put_manifest(id, REPO, &base, &[], &tester())
        .await
        .unwrap();
    assert!(meta.referrers(&r, &base.digest).await.unwrap().is_empty());

    let mut sig = manifest(b"sig", Some(base.digest.clone()), Some("application/x-sig"));
    sig.annotations.insert("k".into(), "v".into());
    meta.put_manifest(id, REPO, &sig, &[], &tester())
        .await
        .unwrap();
    let sbom = manifest(b"sbom", Some(base.digest.clone()), None);
    meta.put_manifest(id, REPO, &sbom, &[], &tester())
        .await
        .unwrap();
    // Same subject in another repository: not a referrer here.
    let other = meta.ensure_repository(&repo("other")).await.unwrap();
    meta.put_manifest(
        other,
        "other",
        &manifest(b"elsewhere", Some(base.digest.clone()), None),
        &[],
        &tester(),
    )
    .await
    .unwrap();

    let mut got = meta.referrers(&r, &base.digest).await.unwrap();
    got.sort_by(|a, b| a.digest.cmp(&b.digest));
    let mut want = [
        (
            sig.digest.to_string(),
            Some("application/x-sig".to_string()),
            Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ),
        (sbom.digest.to_string(), None, None),
    ];
    want.sort();
    let got: Vec<_> = got
        .into_iter()
        .map(|x| (x.digest, x.artifact_type, x.annotations))
        .collect();
    assert_eq!(got, want.to_vec());
    assert!(meta.referrers(&r, &sig.digest).await.unwrap().is_empty());
}

/// A collected manifest's bytes go with its row.
async fn collection_forgets_a_manifests_bytes(meta: &Metadata) {
    let r = repo("gone");
    let id = meta.ensure_repository(&r).await.unwrap();
    let m = manifest(b"short-lived", None, None);
    let out = meta
        .put_manifest(id, "gone", &m, &[binding("t", false)], &tester())
        .await
        .unwrap();
    assert!(matches!(out, PutOutcome::Stored(_)), "{out:?}");
    let allow = |_: &str| cairn::metadata::TagGuard::Allow {
        rule: "test".into(),
    };
    let protect = |_: &cairn::metadata::ProtectionFacts| BTreeMap::new();
    meta.delete_manifest(&r, &m.digest, &allow, &protect, &tester())
        .await
        .unwrap();
    let later = cairn::metadata::now_ms() + 1;
    // A row inserted by a push has not been touched since.
    assert!(meta.gc_claim(m.digest.as_str(), later, 0).await.unwrap());
    assert!(meta
        .gc_finish(m.digest.as_str(), m.size as i64, &tester())
        .await
        .unwrap());
    assert_eq!(meta.manifest_content(&m.digest).await.unwrap(), None);
}

/// A push that found a live row (its claim touched it) and kept the stored
/// file, or a mount, relies on bytes that a collection deletes with that row.
/// If the row was collected between the look and the link, the link must
/// fail (the client retries and writes the bytes again), not insert a new
/// row naming bytes that are gone.
async fn a_link_to_a_row_collected_meanwhile_fails(meta: &Metadata) {
    let r = repo("raced");
    let id = meta.ensure_repository(&r).await.unwrap();
    let d = digest(b"raced blob");
    assert!(meta
        .link_blob(id, &d, 10, &tester(), push(), false)
        .await
        .unwrap());
    // A second push finds the row live and touches it: 1 touch.
    assert_eq!(meta.claim_blob(&d).await.unwrap(), Some(true));
    // A collection (no grace) claims and finishes it meanwhile.
    let later = cairn::metadata::now_ms() + 1;
    assert!(meta.gc_claim(d.as_str(), later, 1).await.unwrap());
    assert!(meta.gc_finish(d.as_str(), 10, &tester()).await.unwrap());
    // The push's link to the row it found fails, and nothing serves the blob.
    assert!(!meta
        .link_blob(id, &d, 10, &tester(), push(), true)
        .await
        .unwrap());
    assert_eq!(meta.repository_blob(&r, &d).await.unwrap(), None);
    // Retried, the claim finds no row; the push writes the bytes and links.
    assert_eq!(meta.claim_blob(&d).await.unwrap(), Some(false));
    assert!(meta
        .link_blob(id, &d, 10, &tester(), push(), false)
        .await
        .unwrap());
    assert_eq!(meta.repository_blob(&r, &d).await.unwrap(), Some(10));
    // A link that relies on a row still there succeeds.
    assert!(meta
        .link_blob(id, &d, 10, &tester(), push(), true)
        .await
        .unwrap());
}

both_stores!(
    a_link_to_a_row_collected_meanwhile_fails,
    collection_forgets_a_manifests_bytes,
    ensure_repository_is_idempotent,
    put_manifest_binds_all_tags_or_none,
    append_upload_is_optimistic,
    finish_upload_happens_once,
    finish_upload_needs_the_state_it_verified,
    listings_paginate,
    referrers_are_found_by_subject,
);

/// Two processes on one SQLite file (the server and `cairn gc`, say): changes
/// that read before they write, from both sides at once, all go through; none
/// fails with "database is locked" while the other holds the write lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_share_one_sqlite_file() {
    let first = sqlite_store().await;
    let dir = first._dir.as_ref().unwrap().path().to_path_buf();
    let second = open(format!("sqlite://{}", dir.join("meta.db").display()), None).await;
    let r = repo("shared");
    let id = first.meta.ensure_repository(&r).await.unwrap();
    let keep = |_: &str| cairn::metadata::TagGuard::Allow {
        rule: "test".into(),
    };
    let tags = {
        let meta = first.meta.clone();
        let r = r.clone();
        tokio::spawn(async move {
            for i in 0..150 {
                let m = manifest(format!("m{i}").as_bytes(), None, None);
                let t = format!("t{i}");
                meta.put_manifest(id, REPO, &m, &[binding(&t, false)], &tester())
                    .await
                    .unwrap_or_else(|e| panic!("put {i}: {e}"));
                meta.delete_tag(&r, &tag(&t), &keep, &tester())
                    .await
                    .unwrap_or_else(|e| panic!("delete tag {i}: {e}"));
            }
        })
    };
    let audit = {
        let meta = second.meta.clone();
        tokio::spawn(async move {
            for i in 0..150 {
                meta.audit_append(&tester(), &[push()])
                    .await
                    .unwrap_or_else(|e| panic!("append {i}: {e}"));
                meta.audit_seal()
                    .await
                    .unwrap_or_else(|e| panic!("seal {i}: {e}"));
            }
        })
    };
    tags.await.unwrap();
    audit.await.unwrap();
    let report = first.meta.audit_verify(|_, _| {}).await.unwrap();
    assert!(report.broken.is_none());
    assert!(report.checked >= 450, "{}", report.checked);
}

#[test]
fn migration_directories_are_in_step() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let names = |d: &str| {
        let mut v: Vec<String> = std::fs::read_dir(root.join(d))
            .unwrap_or_else(|e| panic!("migrations/{d}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        v.sort();
        v
    };
    let (sqlite, postgres) = (names("sqlite"), names("postgres"));
    assert!(!sqlite.is_empty());
    assert_eq!(
        sqlite, postgres,
        "migrations/sqlite and migrations/postgres differ"
    );
}

/// A manifest push reads the rows of the blobs it references by key. Against
/// PostgreSQL, a lookup shaped for the planner's guess of 100 list elements
/// read the whole blobs table on every push until it held tens of thousands
/// of blobs. (Below about a thousand rows a sequential scan is the planner's
/// right choice, hence the size here.) The statistics PostgreSQL keeps per
/// table show it; they are flushed when the registry's connections close.
#[tokio::test]
async fn postgres_manifest_push_reads_only_its_own_blob_rows() {
    use futures::StreamExt;
    use sqlx::Connection;
    const BLOBS: usize = 3000;
    const MANIFESTS: usize = 20;
    let url = fresh_postgres_db().await;
    let s = open(url.clone(), None).await;
    let meta = &s.meta;
    let id = meta.ensure_repository(&repo(REPO)).await.unwrap();
    let blobs: Vec<Digest> = (0..BLOBS)
        .map(|i| digest(format!("blob {i}").as_bytes()))
        .collect();
    let origin = tester();
    futures::stream::iter(&blobs)
        .map(|b| meta.link_blob(id, b, 10, &origin, push(), false))
        .buffer_unordered(8)
        .for_each(|linked| async move { assert!(linked.unwrap()) })
        .await;
    for i in 0..MANIFESTS {
        let mut m = manifest(format!("manifest {i}").as_bytes(), None, None);
        m.blobs = vec![blobs[2 * i].clone(), blobs[2 * i + 1].clone()];
        m.require_blobs = true;
        // Just linked, so fresh: found by the lookup, not touched again.
        m.touch_fresh_ms = 3_600_000;
        let out = meta
            .put_manifest(id, REPO, &m, &[binding(&format!("v{i}"), true)], &tester())
            .await
            .unwrap();
        assert!(matches!(out, PutOutcome::Stored(_)), "{out:?}");
    }
    meta.close().await;

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let want = (BLOBS + MANIFESTS) as i64;
    let mut stats = (0, 0, 0);
    for _ in 0..400 {
        stats = sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT n_tup_ins, seq_tup_read, n_tup_upd FROM pg_stat_user_tables
              WHERE relname = 'blobs'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if stats.0 >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (inserted, read_by_scans, updated) = stats;
    assert_eq!(inserted, want, "the statistics of every insert arrived");
    assert!(
        read_by_scans < BLOBS as i64,
        "{MANIFESTS} pushes read {read_by_scans} blob rows by sequential scan"
    );
    assert_eq!(updated, 0, "fresh blobs were found by the lookup");
}
