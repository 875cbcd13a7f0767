//! Manifests (end-3, end-7, end-9), as a client sees them.

use reqwest::{Method, Response};
use serde_json::json;

use crate::both;
use crate::helpers::{
    error_code, image_manifest, sha256, Db, TestApp, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};

const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Runs a test body that needs its own server configuration against both databases.
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

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn get_with_accept(app: &TestApp, m: Method, path: &str, accept: &[&str]) -> Response {
    let mut b = app.req(m, path);
    for a in accept {
        b = b.header("Accept", *a);
    }
    b.send().await.unwrap()
}

/// Asserts that `reference` serves exactly `bytes` as `media_type`.
async fn assert_manifest(
    app: &TestApp,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let digest = sha256(bytes);
    let r = get_with_accept(app, Method::GET, &path, &[media_type]).await;
    assert_eq!(r.status(), 200, "GET {path}");
    assert_eq!(header(&r, "content-type"), Some(media_type));
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        header(&r, "content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes);
    let r = get_with_accept(app, Method::HEAD, &path, &[media_type]).await;
    assert_eq!(r.status(), 200, "HEAD {path}");
    assert_eq!(header(&r, "content-type"), Some(media_type));
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        header(&r, "content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert!(r.bytes().await.unwrap().is_empty());
}

async fn assert_manifest_unknown(app: &TestApp, repo: &str, reference: &str) {
    let r = app.get(&format!("/v2/{repo}/manifests/{reference}")).await;
    assert_eq!(r.status(), 404, "{repo}:{reference}");
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

/// Pushes a config and a layer to `repo`; returns an image manifest naming them.
async fn image(app: &TestApp, repo: &str, layer: &[u8]) -> Vec<u8> {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = app.push_blob(repo, config).await;
    let ld = app.push_blob(repo, layer).await;
    image_manifest(&cd, config.len(), &[(ld, layer.len())], None, None)
}

fn index(media_type: &str, children: &[(&str, &str, usize)]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": children.iter().map(|(mt, d, s)| json!({
            "mediaType": mt, "digest": d, "size": s,
            "platform": {"architecture": "amd64", "os": "linux"},
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

async fn put_by_tag_and_by_digest(app: TestApp) {
    let m = image(&app, "demo", b"layer one").await;
    let d = sha256(&m);

    let r = app.put_manifest("demo", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    let loc = header(&r, "location").expect("Location").to_string();
    assert!(loc.ends_with(&format!("/v2/demo/manifests/{d}")), "{loc}");
    assert!(header(&r, "oci-subject").is_none());
    let r = app.client.get(app.url_of(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice());

    let m2 = image(&app, "demo", b"layer two").await;
    let d2 = sha256(&m2);
    let r = app.put_manifest("demo", &d2, OCI_MANIFEST, &m2).await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), Some(d2.as_str()));
    assert!(header(&r, "location")
        .unwrap()
        .ends_with(&format!("/v2/demo/manifests/{d2}")));

    assert_manifest(&app, "demo", "v1", OCI_MANIFEST, &m).await;
    assert_manifest(&app, "demo", &d, OCI_MANIFEST, &m).await;
    assert_manifest(&app, "demo", &d2, OCI_MANIFEST, &m2).await;
    // Pushed by digest only: no tag was created.
    let r = app.get("/v2/demo/tags/list").await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["v1"]));
}

async fn sha512_manifest_digests(app: TestApp) {
    use sha2::{Digest as _, Sha512};
    let m = image(&app, "demo", b"layer").await;
    let d = format!("sha512:{}", hex::encode(Sha512::digest(&m)));
    let r = app
        .req(Method::PUT, &format!("/v2/demo/manifests/{d}?tag=s512"))
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    let r = app.get(&format!("/v2/demo/manifests/{d}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice());
    let r = app.get("/v2/demo/manifests/s512").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice());
}

async fn exact_bytes_are_served(app: TestApp) {
    // Whitespace, key order and an unknown field: a registry that re-serialised
    // would change the digest.
    let cd = app.push_blob("demo", b"{}").await;
    let ld = app.push_blob("demo", b"layer").await;
    let text = format!(
        "{{\n  \"schemaVersion\": 2,\n  \"zz-unknown\": [1, 2],\n  \"mediaType\": \"{OCI_MANIFEST}\",\n  \
         \"config\": {{ \"mediaType\": \"application/vnd.oci.image.config.v1+json\", \"size\": 2, \"digest\": \"{cd}\" }},\n  \
         \"layers\": [ {{ \"mediaType\": \"application/vnd.oci.image.layer.v1.tar\", \"digest\": \"{ld}\", \"size\": 5 }} ]\n}}\n"
    );
    let r = app
        .put_manifest("demo", "pretty", OCI_MANIFEST, text.as_bytes())
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_manifest(&app, "demo", "pretty", OCI_MANIFEST, text.as_bytes()).await;
}

async fn oci_index_and_docker_types(app: TestApp) {
    // OCI image index over two images.
    let a = image(&app, "multi", b"amd64 layer").await;
    let b = image(&app, "multi", b"arm64 layer").await;
    for m in [&a, &b] {
        let r = app.put_manifest("multi", &sha256(m), OCI_MANIFEST, m).await;
        assert_eq!(r.status(), 201);
    }
    let idx = index(
        OCI_INDEX,
        &[
            (OCI_MANIFEST, &sha256(&a), a.len()),
            (OCI_MANIFEST, &sha256(&b), b.len()),
        ],
    );
    let r = app.put_manifest("multi", "latest", OCI_INDEX, &idx).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_manifest(&app, "multi", "latest", OCI_INDEX, &idx).await;

    // Docker schema 2 manifest and manifest list.
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}"#;
    let cd = app.push_blob("docker", config).await;
    let ld = app.push_blob("docker", b"docker layer").await;
    let dm = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": cd, "size": config.len()},
        "layers": [{"mediaType": DOCKER_LAYER, "digest": ld, "size": 12}],
    }))
    .unwrap();
    let r = app.put_manifest("docker", "v2", DOCKER_MANIFEST, &dm).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_manifest(&app, "docker", "v2", DOCKER_MANIFEST, &dm).await;

    let list = index(
        DOCKER_MANIFEST_LIST,
        &[(DOCKER_MANIFEST, &sha256(&dm), dm.len())],
    );
    let r = app
        .put_manifest("docker", "list", DOCKER_MANIFEST_LIST, &list)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_manifest(&app, "docker", "list", DOCKER_MANIFEST_LIST, &list).await;
}

async fn put_by_digest_with_several_tags(app: TestApp) {
    let m = image(&app, "demo", b"tagged twice").await;
    let d = sha256(&m);
    let r = app
        .req(
            Method::PUT,
            &format!("/v2/demo/manifests/{d}?tag=a&tag=b&tag=c.1"),
        )
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    for t in ["a", "b", "c.1"] {
        assert_manifest(&app, "demo", t, OCI_MANIFEST, &m).await;
    }
    let v: serde_json::Value = app.get("/v2/demo/tags/list").await.json().await.unwrap();
    assert_eq!(v["tags"], json!(["a", "b", "c.1"]));

    // One invalid tag refuses the whole push: no tag is created.
    let m2 = image(&app, "demo", b"never tagged").await;
    let r = app
        .req(
            Method::PUT,
            &format!("/v2/demo/manifests/{}?tag=ok&tag=-bad", sha256(&m2)),
        )
        .header("Content-Type", OCI_MANIFEST)
        .body(m2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_manifest_unknown(&app, "demo", "ok").await;
}

async fn oci_subject_header_on_put(app: TestApp) {
    let (base, base_digest) = app.push_image("demo", "v1", b"base layer").await;
    let empty = app.push_blob("demo", b"{}").await;
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": base_digest, "size": base.len()},
    }))
    .unwrap();
    let r = app
        .put_manifest("demo", &sha256(&sig), OCI_MANIFEST, &sig)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_eq!(header(&r, "oci-subject"), Some(base_digest.as_str()));

    // The subject need not exist in the registry.
    let absent = sha256(b"a manifest pushed later");
    let sig2 = image_manifest(
        &empty,
        2,
        &[(empty.clone(), 2)],
        Some("application/x-sig"),
        Some((&absent, 99)),
    );
    let r = app
        .put_manifest("demo", &sha256(&sig2), OCI_MANIFEST, &sig2)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_eq!(header(&r, "oci-subject"), Some(absent.as_str()));
}

async fn missing_blob_is_manifest_blob_unknown_and_nothing_is_stored(app: TestApp) {
    let config = br#"{"os":"linux"}"#;
    let missing = sha256(b"layer never pushed");
    let m = image_manifest(
        &sha256(config),
        config.len(),
        &[(missing.clone(), 18)],
        None,
        None,
    );
    let d = sha256(&m);

    // A repository that does not exist yet: the push must not create it.
    let r = app.put_manifest("fresh/repo", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    assert_manifest_unknown(&app, "fresh/repo", "v1").await;
    assert_manifest_unknown(&app, "fresh/repo", &d).await;
    let r = app.get("/v2/fresh/repo/tags/list").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    let v: serde_json::Value = app.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        v["repositories"],
        json!([]),
        "a refused push created a repository"
    );

    // The config is there, one layer is not.
    app.push_blob("demo", config).await;
    let r = app.put_manifest("demo", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    assert_manifest_unknown(&app, "demo", "v1").await;
    assert_manifest_unknown(&app, "demo", &d).await;

    // A blob of another repository does not count.
    app.push_blob("elsewhere", b"layer never pushed").await;
    let r = app.put_manifest("demo", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");

    // Once it is pushed, the same manifest goes through.
    app.push_blob("demo", b"layer never pushed").await;
    let r = app.put_manifest("demo", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
}

async fn index_with_a_missing_child_is_refused(app: TestApp) {
    let a = image(&app, "multi", b"present").await;
    let r = app
        .put_manifest("multi", &sha256(&a), OCI_MANIFEST, &a)
        .await;
    assert_eq!(r.status(), 201);
    let absent = sha256(b"child never pushed");
    let idx = index(
        OCI_INDEX,
        &[
            (OCI_MANIFEST, &sha256(&a), a.len()),
            (OCI_MANIFEST, &absent, 10),
        ],
    );
    let r = app.put_manifest("multi", "latest", OCI_INDEX, &idx).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    assert_manifest_unknown(&app, "multi", "latest").await;
    assert_manifest_unknown(&app, "multi", &sha256(&idx)).await;

    // A child that is only a blob (not a manifest) of the repository is missing too.
    let blob = app.push_blob("multi", b"just a blob").await;
    let idx = index(OCI_INDEX, &[(OCI_MANIFEST, &blob, 11)]);
    let r = app.put_manifest("multi", "latest", OCI_INDEX, &idx).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
}

async fn sparse_manifests_when_configured(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.limits.allow_sparse_manifests = true).await;
    let absent = sha256(b"child kept elsewhere");
    let idx = index(OCI_INDEX, &[(OCI_MANIFEST, &absent, 10)]);
    let r = app
        .put_manifest("mirror/app", "latest", OCI_INDEX, &idx)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_manifest(&app, "mirror/app", "latest", OCI_INDEX, &idx).await;

    let m = image_manifest(&sha256(b"c"), 1, &[(sha256(b"l"), 1)], None, None);
    let r = app
        .put_manifest("mirror/app", "img", OCI_MANIFEST, &m)
        .await;
    assert_eq!(r.status(), 201);
    assert_manifest(&app, "mirror/app", "img", OCI_MANIFEST, &m).await;
}

async fn non_distributable_layers_need_not_be_pushed(app: TestApp) {
    let config = br#"{"os":"windows"}"#;
    let cd = app.push_blob("win", config).await;
    let foreign = sha256(b"windows base layer hosted elsewhere");
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": foreign, "size": 1000,
            "urls": ["https://example.com/layer.tar.gz"],
        }],
    }))
    .unwrap();
    let r = app.put_manifest("win", "ltsc", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_manifest(&app, "win", "ltsc", OCI_MANIFEST, &m).await;

    // Without `urls` the same layer must be in the repository.
    let m = String::from_utf8(m)
        .unwrap()
        .replace(r#","urls":["https://example.com/layer.tar.gz"]"#, "");
    assert!(!m.contains("urls"));
    let r = app
        .put_manifest("win", "ltsc2", OCI_MANIFEST, m.as_bytes())
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
}

async fn invalid_manifests_are_manifest_invalid(app: TestApp) {
    let good = image(&app, "demo", b"layer").await;
    let text = String::from_utf8(good.clone()).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"{\"schemaVersion\": 2,".to_vec(), OCI_MANIFEST),
        ("JSON array", b"[1,2]".to_vec(), OCI_MANIFEST),
        (
            "schemaVersion 1",
            edit(&|v| v["schemaVersion"] = json!(1)),
            OCI_MANIFEST,
        ),
        (
            "no schemaVersion",
            edit(&|v| {
                v.as_object_mut().unwrap().remove("schemaVersion");
            }),
            OCI_MANIFEST,
        ),
        (
            "mediaType differs from Content-Type",
            good.clone(),
            OCI_INDEX,
        ),
        (
            "mediaType differs from Content-Type",
            good.clone(),
            DOCKER_MANIFEST,
        ),
        (
            "unsupported media type",
            text.replace(OCI_MANIFEST, "application/x-not-a-manifest")
                .into_bytes(),
            "application/x-not-a-manifest",
        ),
        (
            "index with layers",
            edit(&|v| v["mediaType"] = json!(OCI_INDEX)),
            OCI_INDEX,
        ),
    ];
    for (what, body, ct) in cases {
        let r = app.put_manifest("demo", "bad", ct, &body).await;
        assert_eq!(r.status(), 400, "{what}");
        assert_eq!(error_code(r).await, "MANIFEST_INVALID", "{what}");
    }
    assert_manifest_unknown(&app, "demo", "bad").await;
}

async fn digest_mismatch_on_put_by_digest(app: TestApp) {
    let m = image(&app, "demo", b"layer").await;
    let wrong = sha256(b"some other manifest");
    let r = app.put_manifest("demo", &wrong, OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_manifest_unknown(&app, "demo", &wrong).await;
    assert_manifest_unknown(&app, "demo", &sha256(&m)).await;
}

async fn too_large_manifests_are_413(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.limits.max_manifest_bytes = 2048).await;
    let cd = app.push_blob("demo", b"{}").await;
    let ld = app.push_blob("demo", b"layer").await;
    let mut v: serde_json::Value =
        serde_json::from_slice(&image_manifest(&cd, 2, &[(ld, 5)], None, None)).unwrap();
    v["annotations"] = json!({"padding": "x".repeat(4000)});
    let m = serde_json::to_vec(&v).unwrap();
    let r = app.put_manifest("demo", "big", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 413);
    assert!(!error_code(r).await.is_empty());
    assert_manifest_unknown(&app, "demo", "big").await;

    // Just under the limit is fine.
    v["annotations"] = json!({"padding": ""});
    let base = serde_json::to_vec(&v).unwrap().len();
    v["annotations"] = json!({"padding": "x".repeat(2048 - base)});
    let m = serde_json::to_vec(&v).unwrap();
    assert_eq!(m.len(), 2048);
    let r = app.put_manifest("demo", "big", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}

async fn accept_negotiation(app: TestApp) {
    let (m, d) = app.push_image("demo", "v1", b"layer").await;
    let path = "/v2/demo/manifests/v1";

    // Several Accept lines are one list.
    let r = get_with_accept(
        &app,
        Method::GET,
        path,
        &[
            DOCKER_MANIFEST,
            "application/vnd.oci.image.index.v1+json",
            OCI_MANIFEST,
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
    assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice());
    // So is one comma-joined line with parameters.
    let joined = format!("{DOCKER_MANIFEST};q=0.9, {OCI_MANIFEST};q=0.5");
    let r = get_with_accept(&app, Method::GET, path, &[&joined]).await;
    assert_eq!(r.status(), 200);
    // No manifest type named: anything goes.
    for a in [&[][..], &["*/*"][..], &["application/json"][..]] {
        let r = get_with_accept(&app, Method::GET, path, a).await;
        assert_eq!(r.status(), 200, "{a:?}");
    }
    // Only other manifest types: not found, by tag and by digest, GET and HEAD.
    for reference in ["v1", d.as_str()] {
        let p = format!("/v2/demo/manifests/{reference}");
        let r = get_with_accept(&app, Method::GET, &p, &[DOCKER_MANIFEST, OCI_INDEX]).await;
        assert_eq!(r.status(), 404, "{reference}");
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
        let r = get_with_accept(&app, Method::HEAD, &p, &[DOCKER_MANIFEST, OCI_INDEX]).await;
        assert_eq!(r.status(), 404, "HEAD {reference}");
    }
}

/// A registry whose tags are all mutable, for the tests of moving and deleting
/// tags (every tag is immutable by default).
async fn spawn_mutable(db: Db) -> TestApp {
    TestApp::spawn_with(db, |c| {
        c.immutability.rules = vec![cairn::policy::RuleSpec {
            name: "everything mutable".into(),
            repositories: vec!["**".into()],
            tags: vec!["*".into()],
            mutability: cairn::policy::Mutability::Mutable,
        }]
    })
    .await
}

async fn delete_by_digest_removes_its_tags(db: Db) {
    let app = spawn_mutable(db).await;
    let (_, d) = app.push_image("demo", "v1", b"layer").await;
    let r = app
        .req(Method::PUT, &format!("/v2/demo/manifests/{d}?tag=stable"))
        .header("Content-Type", OCI_MANIFEST)
        .body(
            app.get(&format!("/v2/demo/manifests/{d}"))
                .await
                .bytes()
                .await
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, other) = app.push_image("demo", "v2", b"other layer").await;

    let r = app.delete(&format!("/v2/demo/manifests/{d}")).await;
    assert_eq!(r.status(), 202);
    assert_manifest_unknown(&app, "demo", &d).await;
    assert_manifest_unknown(&app, "demo", "v1").await;
    assert_manifest_unknown(&app, "demo", "stable").await;
    let v: serde_json::Value = app.get("/v2/demo/tags/list").await.json().await.unwrap();
    assert_eq!(v["tags"], json!(["v2"]));
    assert_eq!(
        app.get(&format!("/v2/demo/manifests/{other}"))
            .await
            .status(),
        200
    );

    let r = app.delete(&format!("/v2/demo/manifests/{d}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

async fn delete_tag_leaves_the_manifest(db: Db) {
    let app = spawn_mutable(db).await;
    let (m, d) = app.push_image("demo", "v1", b"layer").await;
    let r = app.delete("/v2/demo/manifests/v1").await;
    assert_eq!(r.status(), 202);
    assert_manifest_unknown(&app, "demo", "v1").await;
    assert_manifest(&app, "demo", &d, OCI_MANIFEST, &m).await;
    let r = app.delete("/v2/demo/manifests/v1").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

async fn unknown_manifests_are_404(app: TestApp) {
    app.push_image("demo", "v1", b"layer").await;
    let d = sha256(b"nothing");
    for reference in ["nope", d.as_str()] {
        assert_manifest_unknown(&app, "demo", reference).await;
        let r = app.head(&format!("/v2/demo/manifests/{reference}")).await;
        assert_eq!(r.status(), 404);
        let r = app.delete(&format!("/v2/demo/manifests/{reference}")).await;
        assert_eq!(r.status(), 404);
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    }
    // A manifest of another repository is not visible.
    let (_, other) = app.push_image("other", "v1", b"other layer").await;
    assert_manifest_unknown(&app, "demo", &other).await;
    assert_manifest_unknown(&app, "no/such/repo", "v1").await;
}

/// Where tags are mutable, a push to an existing tag moves it.
async fn a_tag_moves_to_a_new_digest(db: Db) {
    let app = spawn_mutable(db).await;
    let (m1, d1) = app.push_image("demo", "latest", b"first").await;
    let (m2, d2) = app.push_image("demo", "latest", b"second").await;
    assert_ne!(d1, d2);
    assert_manifest(&app, "demo", "latest", OCI_MANIFEST, &m2).await;
    // The old manifest stays reachable by digest.
    assert_manifest(&app, "demo", &d1, OCI_MANIFEST, &m1).await;
    let v: serde_json::Value = app.get("/v2/demo/tags/list").await.json().await.unwrap();
    assert_eq!(v["tags"], json!(["latest"]));
}

/// A reference that is neither a tag nor a digest names no manifest: reads are
/// 404 MANIFEST_UNKNOWN (as the conformance suite requires), a push is 400.
async fn invalid_references(app: TestApp) {
    for path in [
        "/v2/inv/manifests/.INVALID_MANIFEST_NAME",
        "/v2/inv/manifests/sha256:short",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
        assert_eq!(app.head(path).await.status(), 404, "{path}");
        assert_eq!(app.delete(path).await.status(), 404, "{path}");
    }
    let m = image_manifest(&sha256(b"x"), 1, &[], None, None);
    let r = app.put_manifest("inv", ".bad", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = app
        .put_manifest("inv", "sha256:short", OCI_MANIFEST, &m)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
}

/// A manifest pushed again while a garbage collection deletes its digest
/// waits for the collection to finish, then is stored afresh and served: the
/// push neither fails nor lands in a row the collection then removes.
async fn a_push_waits_out_the_collection_of_its_digest(app: TestApp) {
    use cairn::metadata::{now_ms, Origin};
    use std::time::Duration;
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = app.push_blob("gc/race", config).await;
    let m = image_manifest(&cd, config.len(), &[], None, None);
    let d = sha256(&m);
    let path = format!("/v2/gc/race/manifests/{d}");
    let r = app.put_manifest("gc/race", &d, OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    let r = app.delete(&path).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    // The collection's first step, as `cairn gc` takes it.
    let meta = app.metadata().await;
    assert!(meta.gc_claim(&d, now_ms() + 1, 0).await.unwrap());

    let push = {
        let (client, url) = (app.client.clone(), format!("{}{path}", app.base));
        let body = m.clone();
        tokio::spawn(async move {
            client
                .put(url)
                .header("Content-Type", OCI_MANIFEST)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!push.is_finished(), "the push must wait for the collection");
    assert!(meta
        .gc_finish(&d, m.len() as i64, &Origin::system("gc"))
        .await
        .unwrap());
    assert_eq!(push.await.unwrap(), 201);
    assert_manifest(&app, "gc/race", &d, OCI_MANIFEST, &m).await;
    meta.close().await;
}

/// A manifest with hundreds of layers (more than one multi-row insert of
/// references) is checked and recorded whole: refused while one layer is
/// missing, then stored with every layer protected by its immutable tag.
async fn a_manifest_with_hundreds_of_layers_keeps_every_reference(app: TestApp) {
    use futures::StreamExt as _;
    let repo = "many/layers";
    let config = br#"{"layers":620}"#;
    let cd = app.push_blob(repo, config).await;
    let bodies: Vec<Vec<u8>> = (0..620)
        .map(|i| format!("layer {i}").into_bytes())
        .collect();
    let layers: Vec<(String, usize)> = bodies.iter().map(|b| (sha256(b), b.len())).collect();
    // All but the last, sixteen at a time.
    futures::stream::iter(&bodies[..619])
        .for_each_concurrent(16, |b| {
            let app = &app;
            async move {
                app.push_blob(repo, b).await;
            }
        })
        .await;
    let m = image_manifest(&cd, config.len(), &layers, None, None);

    let r = app.put_manifest(repo, "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    assert_manifest_unknown(&app, repo, "v1").await;

    app.push_blob(repo, &bodies[619]).await;
    let r = app.put_manifest(repo, "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_manifest(&app, repo, "v1", OCI_MANIFEST, &m).await;
    // The first layer and the last (recorded by different inserts) are both
    // references the immutable tag keeps.
    for (d, _) in [&layers[0], &layers[619]] {
        let r = app.delete(&format!("/v2/{repo}/blobs/{d}")).await;
        assert_eq!(r.status(), 409, "deleting {d}");
        assert_eq!(error_code(r).await, "DENIED");
    }
}

/// A burst of pushes, more than run at once, where some must be refused:
/// every push gets the answer it would get alone. Distinct manifests under new
/// tags are stored once each (one audit entry and one tag event apiece); one
/// naming a blob never pushed, or a taken immutable tag, is refused and leaves
/// nothing; the same manifest pushed eight times under one tag is stored once;
/// blobs pushed in the same burst, distinct or the same, are all served; every
/// manifest is served with exactly the bytes pushed.
async fn a_burst_of_pushes_answers_each_as_if_alone(app: TestApp) {
    use futures::future::join_all;
    let repo = "burst/app";
    let config = br#"{"burst":true}"#;
    let cd = app.push_blob(repo, config).await;
    let ld = app.push_blob(repo, b"burst layer").await;
    let layers = [(ld.clone(), b"burst layer".len())];
    // Bytes a client may send that a text encoding could alter: quotes and
    // backslashes, braces and commas, the word NULL, non-ASCII, tabs, CRLF.
    let manifest = |kind: &str| {
        let compact = image_manifest(
            &cd,
            config.len(),
            &layers,
            Some(&format!("application/vnd.test.{kind}")),
            None,
        );
        let mut v: serde_json::Value = serde_json::from_slice(&compact).unwrap();
        v["annotations"] = json!({ "note": "q\"b\\s {},NULL 日本\ttab" });
        serde_json::to_string_pretty(&v)
            .unwrap()
            .replace('\n', "\r\n")
            .into_bytes()
    };
    let taken = manifest("taken");
    let r = app.put_manifest(repo, "taken", OCI_MANIFEST, &taken).await;
    assert_eq!(r.status(), 201);
    let absent = sha256(b"never pushed");
    let dangling = image_manifest(&cd, config.len(), &[(absent, 12)], None, None);
    let same = manifest("same");

    let valid: Vec<Vec<u8>> = (0..32).map(|i| manifest(&format!("v{i}"))).collect();
    let others: Vec<Vec<u8>> = (0..8).map(|i| manifest(&format!("other{i}"))).collect();
    let blobs: Vec<Vec<u8>> = (0..8)
        .map(|i| format!("burst blob {i}").into_bytes())
        .collect();
    let app = &app;
    let pushes = join_all(
        valid
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("v{i}"), m, 201, None))
            .chain((0..8).map(|i| {
                (
                    format!("missing{i}"),
                    &dangling,
                    400,
                    Some("MANIFEST_BLOB_UNKNOWN"),
                )
            }))
            .chain(
                others
                    .iter()
                    .map(|m| ("taken".to_string(), m, 409, Some("DENIED"))),
            )
            .chain((0..8).map(|_| ("same".to_string(), &same, 201, None)))
            .map(|(tag, m, status, code)| async move {
                let r = app.put_manifest(repo, &tag, OCI_MANIFEST, m).await;
                let got = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                assert_eq!(got, status, "{tag}: {body}");
                if let Some(code) = code {
                    assert!(body.contains(code), "{tag}: {body}");
                }
            }),
    );
    let blob_pushes = join_all(
        blobs
            .iter()
            .chain(std::iter::repeat_n(&blobs[0], 4))
            .map(|b| async move { app.push_blob(repo, b).await }),
    );
    futures::join!(pushes, blob_pushes);

    // Then a burst in which every push is accepted: they commit together.
    let more: Vec<Vec<u8>> = (32..64).map(|i| manifest(&format!("v{i}"))).collect();
    join_all(more.iter().enumerate().map(|(i, m)| async move {
        let r = app
            .put_manifest(repo, &format!("v{}", i + 32), OCI_MANIFEST, m)
            .await;
        assert_eq!(
            r.status(),
            201,
            "v{}: {}",
            i + 32,
            r.text().await.unwrap_or_default()
        );
    }))
    .await;
    let valid: Vec<Vec<u8>> = valid.into_iter().chain(more).collect();

    for (i, m) in valid.iter().enumerate() {
        assert_manifest(app, repo, &format!("v{i}"), OCI_MANIFEST, m).await;
        let d = sha256(m);
        let v = app
            .get(&format!("/api/v1/audit?digest={d}&action=manifest.push"))
            .await;
        let v: serde_json::Value = v.json().await.unwrap();
        assert_eq!(
            v["entries"].as_array().map(Vec::len),
            Some(1),
            "audit of v{i}: {v}"
        );
        let h = app
            .get(&format!("/api/v1/repositories/{repo}/tags/v{i}/history"))
            .await;
        assert_eq!(h.status(), 200);
        let h: serde_json::Value = h.json().await.unwrap();
        assert_eq!(
            h["events"].as_array().map(Vec::len),
            Some(1),
            "history of v{i}: {h}"
        );
    }
    for i in 0..8 {
        assert_manifest_unknown(app, repo, &format!("missing{i}")).await;
    }
    assert_manifest(app, repo, "taken", OCI_MANIFEST, &taken).await;
    assert_manifest(app, repo, "same", OCI_MANIFEST, &same).await;
    for b in &blobs {
        let r = app
            .req(Method::HEAD, &format!("/v2/{repo}/blobs/{}", sha256(b)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

both!(
    invalid_references,
    sha512_manifest_digests,
    put_by_tag_and_by_digest,
    exact_bytes_are_served,
    oci_index_and_docker_types,
    put_by_digest_with_several_tags,
    oci_subject_header_on_put,
    missing_blob_is_manifest_blob_unknown_and_nothing_is_stored,
    index_with_a_missing_child_is_refused,
    non_distributable_layers_need_not_be_pushed,
    invalid_manifests_are_manifest_invalid,
    digest_mismatch_on_put_by_digest,
    accept_negotiation,
    unknown_manifests_are_404,
    a_push_waits_out_the_collection_of_its_digest,
    a_manifest_with_hundreds_of_layers_keeps_every_reference,
    a_burst_of_pushes_answers_each_as_if_alone,
);

both_db!(
    sparse_manifests_when_configured,
    too_large_manifests_are_413,
    delete_by_digest_removes_its_tags,
    delete_tag_leaves_the_manifest,
    a_tag_moves_to_a_new_digest,
);
