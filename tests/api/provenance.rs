//! Build provenance as CI, clients and auditors meet it: statements sent through
//! the API, attestations pushed with images by skopeo (a BuildKit-style index)
//! and oras-py (a referrer), labels of the image itself, and the auditor's
//! search by commit, source, builder, material and time. Malformed documents
//! are refused through the API and recorded as unparsed when pushed, never
//! failing a push. Extraction after a push is asynchronous, so tests poll.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use cairn::config::Config;
use cairn::policy::{Mutability, RuleSpec};

use crate::e2e::{path_str, run, tar};
use crate::helpers::{error_code, image_manifest, sha256, TestApp, OCI_INDEX, OCI_MANIFEST};

const COMMIT: &str = "4b220de5058abfd01ff619c9d2ff6b09a049bea0";
const REPO_URL: &str = "https://github.com/cairn-test/app";
const BUILDER: &str = "https://github.com/actions/runner/github-hosted";
const MATERIAL: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const IN_TOTO: &str = "application/vnd.in-toto+json";
const DSSE: &str = "application/vnd.dsse.envelope.v1+json";

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

/// A SLSA v1 statement as GitHub's generators write it.
fn slsa_v1(subject: &str, commit: &str, started: &str) -> Value {
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "cairn-test/app", "digest": {"sha256": hex_of(subject)}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": "https://actions.github.io/buildtypes/workflow/v1",
                "externalParameters": {"workflow": {
                    "ref": "refs/heads/main", "repository": REPO_URL, "path": ".github/workflows/build.yml"
                }},
                "resolvedDependencies": [
                    {"uri": format!("git+{REPO_URL}@refs/heads/main"), "digest": {"gitCommit": commit}},
                    {"uri": "pkg:docker/golang@1.22", "digest": {"sha256": hex_of(MATERIAL)}}
                ]
            },
            "runDetails": {
                "builder": {"id": BUILDER},
                "metadata": {"invocationId": "run-42", "startedOn": started, "finishedOn": started}
            }
        }
    })
}

/// A SLSA v0.2 statement as BuildKit writes it into attestation manifests.
fn slsa_v0_2(subject: &str, commit: &str) -> Value {
    json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": "pkg:docker/cairn-test/app@v1?platform=linux%2Famd64",
                     "digest": {"sha256": hex_of(subject)}}],
        "predicate": {
            "builder": {"id": "https://github.com/docker/buildx/actions/runs/7"},
            "buildType": "https://mobyproject.org/buildkit@v1",
            "materials": [{"uri": "pkg:docker/alpine@3.20?platform=linux%2Famd64",
                           "digest": {"sha256": hex_of(MATERIAL)}}],
            "invocation": {"configSource": {
                "uri": format!("{REPO_URL}.git#refs/heads/main"),
                "digest": {"sha1": commit},
                "entryPoint": "Dockerfile"
            }},
            "metadata": {"buildInvocationID": "bk-1", "buildStartedOn": "2026-11-20T10:00:00Z",
                         "buildFinishedOn": "2026-11-20T10:05:00Z"}
        }
    })
}

fn dsse(statement: &Value) -> Value {
    json!({
        "payloadType": IN_TOTO,
        "payload": base64::engine::general_purpose::STANDARD.encode(statement.to_string()),
        "signatures": [{"keyid": "", "sig": "MEUCIQ=="}]
    })
}

async fn put_provenance(app: &TestApp, repo: &str, digest: &str, body: &[u8]) -> reqwest::Response {
    app.req(Method::PUT, &format!("/api/v1/provenance/{repo}@{digest}"))
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .expect("request")
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let r = app.get(path).await;
    let status = r.status();
    let text = r.text().await.expect("body");
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

/// Polls `path` until `done` holds (extraction runs after the push answered).
async fn wait_for(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = get_json(app, path).await;
        if done(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GET {path} never satisfied the condition; last answer: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn digests(v: &Value) -> Vec<String> {
    v["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| a["digest"].as_str().expect("digest").to_string())
        .collect()
}

fn records(v: &Value) -> &Vec<Value> {
    v["records"].as_array().expect("records")
}

// ---- from CI, through the API ------------------------------------------------

/// `latest` moves, so `?at=` has something to tell apart.
fn moving_latest(c: &mut Config) {
    c.immutability.rules = vec![RuleSpec {
        name: "moving tags".into(),
        repositories: vec!["**".into()],
        tags: vec!["latest".into()],
        mutability: Mutability::Mutable,
    }];
}

/// CI sends a bare SLSA v1 statement and a DSSE-wrapped v0.2 one; both are
/// searchable by commit, builder, source (any spelling), material and time,
/// re-sending stores nothing new, and the tag lookup follows the tag in time.
async fn ci_statements_are_stored_and_searchable(app: TestApp) {
    let repo = "prov/ci";
    let (_, d1) = app.push_image(repo, "latest", b"build one").await;
    let v1 = slsa_v1(&d1, COMMIT, "2026-11-20T10:00:00Z");
    let r = put_provenance(&app, repo, &d1, v1.to_string().as_bytes()).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["digest"], d1);
    let rec = &records(&body)[0];
    assert_eq!(rec["created"], true);
    assert_eq!(rec["predicate_type"], "https://slsa.dev/provenance/v1");
    assert_eq!(rec["facts"]["revision"], COMMIT);
    assert_eq!(rec["facts"]["source_uri"], REPO_URL);
    assert_eq!(rec["facts"]["builder_id"], BUILDER);
    assert_eq!(rec["facts"]["started_at"], "2026-11-20T10:00:00Z");
    // Idempotent: the same document again is 200 with the same record.
    let r = put_provenance(&app, repo, &d1, v1.to_string().as_bytes()).await;
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(records(&again)[0]["id"], rec["id"]);
    assert_eq!(records(&again)[0]["created"], false);

    // A second build, its v0.2 statement wrapped in DSSE, moves `latest`.
    let before_second = cairn::metadata::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, d2) = app.push_image(repo, "latest", b"build two").await;
    let other = "0123456789abcdef0123456789abcdef01234567";
    let env = dsse(&slsa_v0_2(&d2, other));
    let r = put_provenance(&app, repo, &d2, env.to_string().as_bytes()).await;
    assert_eq!(r.status(), 201);
    let stored = get_json(&app, &format!("/api/v1/provenance/{repo}@{d2}")).await;
    let rec2 = &records(&stored)[0];
    assert_eq!(rec2["source"], "api");
    assert_eq!(rec2["parsed"], true);
    assert_eq!(rec2["facts"]["revision"], other);
    assert_eq!(
        rec2["facts"]["builder_id"],
        "https://github.com/docker/buildx/actions/runs/7"
    );
    // The envelope is what is kept, signatures included.
    assert_eq!(rec2["document"]["payloadType"], IN_TOTO);
    assert_eq!(rec2["document"]["signatures"][0]["sig"], "MEUCIQ==");

    // Search: by commit, builder, source in other spellings, material, repository.
    assert_eq!(
        digests(&get_json(&app, &format!("/api/v1/provenance?revision={COMMIT}")).await),
        [d1.as_str()]
    );
    assert_eq!(
        digests(&get_json(&app, &format!("/api/v1/provenance?revision={other}")).await),
        [d2.as_str()]
    );
    let q = format!("/api/v1/provenance?builder={}", urlenc(BUILDER));
    assert_eq!(digests(&get_json(&app, &q).await), [d1.as_str()]);
    for spelling in [
        "https://github.com/cairn-test/app",
        "git@github.com:Cairn-Test/App.git",
        "git+https://github.com/cairn-test/app@refs/heads/main",
        "https://GitHub.com/cairn-test/app/",
    ] {
        let v = get_json(
            &app,
            &format!("/api/v1/provenance?source={}", urlenc(spelling)),
        )
        .await;
        let mut found = digests(&v);
        found.sort();
        let mut both = vec![d1.clone(), d2.clone()];
        both.sort();
        assert_eq!(found, both, "source={spelling}");
    }
    let v = get_json(
        &app,
        "/api/v1/provenance?source=https://github.com/cairn-test/app-other",
    )
    .await;
    assert!(digests(&v).is_empty());
    let v = get_json(
        &app,
        &format!("/api/v1/provenance?material={MATERIAL}&repository={repo}"),
    )
    .await;
    assert_eq!(v["artifacts"].as_array().unwrap().len(), 2);
    let v = get_json(
        &app,
        &format!("/api/v1/provenance?revision={COMMIT}&repository=prov/none"),
    )
    .await;
    assert!(digests(&v).is_empty());
    // Time range on the build start: d1 started 10:00, d2 too; the window
    // 09:00–09:59 finds nothing, 09:00–11:00 both.
    let v = get_json(
        &app,
        "/api/v1/provenance?since=2026-11-20T09:00:00Z&until=2026-11-20T09:59:00Z",
    )
    .await;
    assert!(digests(&v).is_empty());
    let v = get_json(
        &app,
        "/api/v1/provenance?since=2026-11-20T09:00:00Z&until=2026-11-20T11:00:00Z",
    )
    .await;
    assert_eq!(v["artifacts"].as_array().unwrap().len(), 2);
    // A hit carries the artifact's tags now: `latest` moved to d2.
    let v = get_json(&app, &format!("/api/v1/provenance?revision={other}")).await;
    assert_eq!(v["artifacts"][0]["tags"], json!(["latest"]));
    assert_eq!(v["artifacts"][0]["repository"], repo);
    // Pages: n=1 gives a next cursor and a Link header that lead to the other.
    let r = app
        .get(&format!("/api/v1/provenance?repository={repo}&n=1"))
        .await;
    let link = r.headers()["link"].to_str().unwrap().to_string();
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["artifacts"].as_array().unwrap().len(), 1);
    let next = first["next"].as_str().expect("next page");
    assert!(link.contains(next), "{link} vs {next}");
    let second = get_json(&app, next).await;
    assert_ne!(
        second["artifacts"][0]["digest"],
        first["artifacts"][0]["digest"]
    );

    // Materials.
    let m = get_json(&app, &format!("/api/v1/provenance/{repo}@{d1}/materials")).await;
    let uris: Vec<&str> = m["materials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["uri"].as_str().unwrap())
        .collect();
    assert_eq!(
        uris,
        [
            format!("git+{REPO_URL}@refs/heads/main").as_str(),
            "pkg:docker/golang@1.22"
        ]
    );
    assert_eq!(m["materials"][1]["digest"], MATERIAL);
    let m = get_json(
        &app,
        &format!("/api/v1/provenance/{repo}@{d1}/materials?n=1"),
    )
    .await;
    let next = m["next"].as_str().expect("next");
    let m2 = get_json(&app, next).await;
    assert_eq!(m2["materials"][0]["uri"], "pkg:docker/golang@1.22");

    // The tag, now and at a time before it moved.
    let now = get_json(&app, &format!("/api/v1/provenance/{repo}:latest")).await;
    assert_eq!(now["digest"], d2);
    assert_eq!(records(&now)[0]["facts"]["revision"], other);
    let then = get_json(
        &app,
        &format!("/api/v1/provenance/{repo}:latest?at={before_second}"),
    )
    .await;
    assert_eq!(then["digest"], d1);
    assert_eq!(records(&then)[0]["facts"]["revision"], COMMIT);
    let r = app
        .get(&format!(
            "/api/v1/provenance/{repo}:latest?at=2000-01-01T00:00:00Z"
        ))
        .await;
    assert_eq!(r.status(), 404);

    // The trail has one ingest per stored record, none for the repeat.
    let audit = get_json(&app, "/api/v1/audit?action=provenance.ingest").await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit:#}");
    assert!(entries
        .iter()
        .all(|e| e["repository"] == repo && e["detail"]["source"] == "api"));
    assert!(entries.iter().any(|e| e["digest"] == d1.as_str()));
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A statement about another artifact is refused whole, naming what it is about.
async fn subject_mismatch_is_refused(app: TestApp) {
    let repo = "prov/mismatch";
    let (_, d) = app.push_image(repo, "v1", b"mismatch").await;
    let elsewhere = sha256(b"another artifact");
    let doc = json!([
        slsa_v1(&d, COMMIT, "2026-11-20T10:00:00Z"),
        slsa_v1(&elsewhere, COMMIT, "2026-11-20T10:00:00Z")
    ]);
    let r = put_provenance(&app, repo, &d, doc.to_string().as_bytes()).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "PROVENANCE_INVALID");
    let msg = v["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains(&elsewhere)
            && msg.contains(&format!("not {d}"))
            && msg.contains("statement 2 of 2"),
        "{msg}"
    );
    let stored = get_json(&app, &format!("/api/v1/provenance/{repo}@{d}")).await;
    assert!(records(&stored).is_empty());
    // An artifact the repository does not have.
    let r = put_provenance(&app, repo, &elsewhere, b"{}").await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN");
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("push the manifest first"));
    // Reads need the repository, not the manifest (records outlive it).
    let r = app
        .get(&format!("/api/v1/provenance/prov/nowhere@{d}"))
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    let none = get_json(&app, &format!("/api/v1/provenance/{repo}@{elsewhere}")).await;
    assert!(records(&none).is_empty());
}

/// Every shape of garbage, with a name for the failure message.
fn malformed(subject: &str) -> Vec<(&'static str, Vec<u8>)> {
    let statement = slsa_v1(subject, COMMIT, "2026-11-20T10:00:00Z");
    let mut wrong_type = statement.clone();
    wrong_type["_type"] = json!("https://example.com/Statement/v9");
    let mut no_subject = statement.clone();
    no_subject.as_object_mut().unwrap().remove("subject");
    let mut bad_base64 = dsse(&statement);
    bad_base64["payload"] = json!("%%% not base64 %%%");
    let mut wrong_payload_type = dsse(&statement);
    wrong_payload_type["payloadType"] = json!("text/plain");
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let mut huge = b"{\"_type\":\"".to_vec();
    huge.resize(17 << 20, b'a');
    huge.extend_from_slice(b"\"}");
    vec![
        ("not JSON", b"this is not JSON {".to_vec()),
        ("empty", Vec::new()),
        ("wrong _type", wrong_type.to_string().into_bytes()),
        ("no subject", no_subject.to_string().into_bytes()),
        ("bad base64", bad_base64.to_string().into_bytes()),
        (
            "wrong payloadType",
            wrong_payload_type.to_string().into_bytes(),
        ),
        ("deeply nested", deep.into_bytes()),
        (
            "array of garbage",
            br#"[1, "two", null, {"x": 3}]"#.to_vec(),
        ),
        ("not UTF-8", vec![0xff, 0xfe, 0x7b]),
        ("huge", huge),
    ]
}

/// Through the API every malformed shape is a 400 with the parser's message.
async fn malformed_documents_are_400(app: TestApp) {
    let repo = "prov/malformed";
    let (_, d) = app.push_image(repo, "v1", b"malformed").await;
    for (name, body) in malformed(&d) {
        let r = put_provenance(&app, repo, &d, &body).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{name}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["errors"][0]["code"], "PROVENANCE_INVALID",
            "{name}: {text}"
        );
        assert!(!v["errors"][0]["message"].as_str().unwrap().is_empty());
    }
    assert!(records(&get_json(&app, &format!("/api/v1/provenance/{repo}@{d}")).await).is_empty());
}

/// Pushed as attestation layers of a referrer, the same shapes are recorded as
/// unparsed (with the reason) and the push succeeds; a good statement about
/// another artifact is recorded unparsed too, and a good one is indexed.
async fn malformed_attestations_never_fail_a_push(app: TestApp) {
    let repo = "prov/attest";
    let (image, d) = app.push_image(repo, "v1", b"attested").await;
    let mut layers = Vec::new();
    let shapes = malformed(&d);
    for (_, body) in &shapes {
        layers.push((app.push_blob(repo, body).await, body.len()));
    }
    let elsewhere = slsa_v1(&sha256(b"elsewhere"), COMMIT, "2026-11-20T10:00:00Z").to_string();
    layers.push((
        app.push_blob(repo, elsewhere.as_bytes()).await,
        elsewhere.len(),
    ));
    let good = dsse(&slsa_v1(&d, COMMIT, "2026-11-20T10:00:00Z")).to_string();
    layers.push((app.push_blob(repo, good.as_bytes()).await, good.len()));
    let config = app.push_blob(repo, b"{}").await;
    let mut m: Value = serde_json::from_slice(&image_manifest(
        &config,
        2,
        &layers,
        None,
        Some((&d, image.len())),
    ))
    .unwrap();
    m["artifactType"] = json!(DSSE);
    m["config"]["mediaType"] = json!("application/vnd.oci.empty.v1+json");
    for l in m["layers"].as_array_mut().unwrap() {
        l["mediaType"] = json!(DSSE);
    }
    let bytes = serde_json::to_vec(&m).unwrap();
    let r = app
        .put_manifest(repo, &sha256(&bytes), OCI_MANIFEST, &bytes)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let expected = shapes.len() + 2;
    let v = wait_for(&app, &format!("/api/v1/provenance/{repo}@{d}"), |v| {
        records(v).len() >= expected
    })
    .await;
    let recs = records(&v);
    assert_eq!(recs.len(), expected, "{v:#}");
    let unparsed: Vec<&Value> = recs.iter().filter(|r| r["parsed"] == false).collect();
    assert_eq!(unparsed.len(), shapes.len() + 1, "{v:#}");
    for r in &unparsed {
        assert_eq!(r["source"], "attestation");
        assert!(!r["parse_error"].as_str().unwrap().is_empty());
        assert!(r["source_digest"].as_str().unwrap().starts_with("sha256:"));
    }
    assert!(
        unparsed
            .iter()
            .any(|r| r["parse_error"].as_str().unwrap().contains("limit")),
        "the huge layer: {v:#}"
    );
    assert!(unparsed.iter().any(|r| r["parse_error"]
        .as_str()
        .unwrap()
        .contains("its subject must name")));
    let parsed: Vec<&Value> = recs.iter().filter(|r| r["parsed"] == true).collect();
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0]["facts"]["revision"], COMMIT);
    // Only the parsed statement is found by commit.
    let hits = get_json(&app, &format!("/api/v1/provenance?revision={COMMIT}")).await;
    assert_eq!(digests(&hits), [d.as_str()]);
    // The registry still answers normally.
    assert_eq!(
        app.get(&format!("/v2/{repo}/manifests/v1")).await.status(),
        200
    );
    let audit = get_json(&app, "/api/v1/audit?action=provenance.ingest&n=100").await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), expected);
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["detail"]["parsed"] == false));
}

// ---- from images pushed by real clients ----------------------------------------

/// Writes a buildx-style OCI layout: an index with one linux/amd64 image (its
/// config labelled with source and revision) and the BuildKit attestation
/// manifest for it (an in-toto SLSA v0.2 layer). Returns the platform digest.
fn write_buildx_layout(dir: &Path, tag: &str, commit: &str) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> (String, usize) {
        let d = sha256(data);
        std::fs::write(blobs.join(hex_of(&d)), data).unwrap();
        (d, data.len())
    };
    let layer = tar(&[("hello.txt", b"hello from buildx\n")]);
    let (ld, ls) = put(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello"], "Labels": {
            "org.opencontainers.image.source": REPO_URL,
            "org.opencontainers.image.revision": commit,
            "org.opencontainers.image.version": "1.2.3"
        }},
        "rootfs": {"type": "layers", "diff_ids": [ld]},
    }))
    .unwrap();
    let (cd, cs) = put(&config);
    let image = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}],
        "annotations": {"org.opencontainers.image.created": "2026-11-20T10:06:00Z"}
    }))
    .unwrap();
    let (id, is) = put(&image);
    let statement = slsa_v0_2(&id, commit).to_string();
    let (sd, ss) = put(statement.as_bytes());
    let att_config = serde_json::to_vec(&json!({
        "architecture": "unknown", "os": "unknown", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sd]}
    }))
    .unwrap();
    let (acd, acs) = put(&att_config);
    let att = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": acd, "size": acs},
        "layers": [{"mediaType": IN_TOTO, "digest": sd, "size": ss,
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}]
    }))
    .unwrap();
    let (ad, as_) = put(&att);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": id, "size": is,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": ad, "size": as_,
             "platform": {"architecture": "unknown", "os": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                             "vnd.docker.reference.digest": id}}
        ]
    }))
    .unwrap();
    let (xd, xs) = put(&index);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let top = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": xd, "size": xs,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    id
}

/// skopeo copies a buildx-style index with its attestation manifest; the
/// platform image is then found by commit (from the attestation and from its
/// labels), with the labels record carrying version and creation time.
async fn buildx_attestations_pushed_by_skopeo(app: TestApp) {
    let tmp = tempfile::tempdir().unwrap();
    let commit = "9f0e1d2c3b4a59687766554433221100ffeeddcc";
    let platform = write_buildx_layout(tmp.path(), "v1", commit);
    run(
        "skopeo",
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", path_str(tmp.path())),
            &format!("docker://{}/prov/buildx:v1", app.host()),
        ],
    )
    .await;
    let q = format!("/api/v1/provenance?revision={commit}");
    let v = wait_for(&app, &q, |v| {
        v["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["source"] == "attestation")
            && v["artifacts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["source"] == "labels")
    })
    .await;
    for a in v["artifacts"].as_array().unwrap() {
        assert_eq!(a["digest"], platform, "{v:#}");
        assert_eq!(a["repository"], "prov/buildx");
    }
    let all = get_json(&app, &format!("/api/v1/provenance/prov/buildx@{platform}")).await;
    let att = records(&all)
        .iter()
        .find(|r| r["source"] == "attestation")
        .expect("attestation record");
    assert_eq!(att["predicate_type"], "https://slsa.dev/provenance/v0.2");
    assert_eq!(
        att["facts"]["builder_id"],
        "https://github.com/docker/buildx/actions/runs/7"
    );
    assert_eq!(att["facts"]["source_uri"], format!("{REPO_URL}.git"));
    assert_eq!(
        att["document"]["predicateType"],
        "https://slsa.dev/provenance/v0.2"
    );
    let labels = records(&all)
        .iter()
        .find(|r| r["source"] == "labels")
        .expect("labels record");
    assert_eq!(labels["facts"]["version"], "1.2.3");
    assert_eq!(labels["facts"]["image_created_at"], "2026-11-20T10:06:00Z");
    assert_eq!(
        labels["document"]["labels"]["org.opencontainers.image.revision"],
        commit
    );
    // Source search accepts the labels' and the attestation's spelling alike.
    let v = get_json(
        &app,
        &format!(
            "/api/v1/provenance?source={}",
            urlenc("git@github.com:cairn-test/app.git")
        ),
    )
    .await;
    assert_eq!(v["artifacts"].as_array().unwrap().len(), 2);
    let audit = get_json(&app, "/api/v1/audit?action=provenance.ingest").await;
    let sources: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"]["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.contains(&"attestation") && sources.contains(&"labels"),
        "{sources:?}"
    );
}

/// One image config in two repositories and under two manifests: every
/// manifest gets its labels record (a config's labels are read once, then
/// come from memory), and each is found by the commit its config names.
async fn labels_of_a_shared_config_reach_every_manifest(app: TestApp) {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {
            "org.opencontainers.image.source": REPO_URL,
            "org.opencontainers.image.revision": commit,
            "org.opencontainers.image.version": "4.5.6",
            "unrelated": "x",
        }},
    })
    .to_string();
    let mut pushed = Vec::new();
    for (repo, tag) in [
        ("prov/shared-a", "v1"),
        ("prov/shared-b", "v1"),
        ("prov/shared-b", "v2"),
    ] {
        let cd = app.push_blob(repo, config.as_bytes()).await;
        let layer = format!("layer of {repo}:{tag}");
        let ld = app.push_blob(repo, layer.as_bytes()).await;
        let m = image_manifest(&cd, config.len(), &[(ld, layer.len())], None, None);
        let r = app.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), 201);
        pushed.push((repo, sha256(&m)));
    }
    let q = format!("/api/v1/provenance?revision={commit}");
    let v = wait_for(&app, &q, |v| v["artifacts"].as_array().unwrap().len() == 3).await;
    let mut found: Vec<(String, String)> = v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["source"], "labels", "{v:#}");
            (
                a["repository"].as_str().unwrap().to_string(),
                a["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    let mut want: Vec<(String, String)> = pushed
        .iter()
        .map(|(r, d)| (r.to_string(), d.clone()))
        .collect();
    want.sort();
    assert_eq!(found, want);
    for (repo, digest) in &pushed {
        let all = get_json(&app, &format!("/api/v1/provenance/{repo}@{digest}")).await;
        let labels = records(&all)
            .iter()
            .find(|r| r["source"] == "labels")
            .expect("labels record");
        assert_eq!(labels["facts"]["version"], "4.5.6");
        assert!(labels["document"]["labels"].get("unrelated").is_none());
    }
}

/// oras-py attaches a DSSE-wrapped statement to an image as a referrer; the
/// image is then found by commit.
async fn oras_referrer_attestation(app: TestApp) {
    let repo = "prov/oras";
    let (image, d) = app.push_image(repo, "v1", b"oras subject").await;
    let commit = "aaaabbbbccccddddeeeeffff0000111122223333";
    let tmp = tempfile::tempdir().unwrap();
    let att = tmp.path().join("provenance.dsse.json");
    std::fs::write(
        &att,
        dsse(&slsa_v1(&d, commit, "2026-11-21T08:00:00Z")).to_string(),
    )
    .unwrap();
    let empty = tmp.path().join("empty.json");
    std::fs::write(&empty, b"{}").unwrap();
    let script = r#"
import sys, oras.oci, oras.provider
host, repo, subject, size, path, empty = sys.argv[1:7]

class Client(oras.provider.Registry):
    def upload_manifest(self, manifest, container):
        manifest["artifactType"] = "application/vnd.dsse.envelope.v1+json"
        return super().upload_manifest(manifest, container)

reg = Client(hostname=host, insecure=True)
r = reg.push(
    target=f"{host}/{repo}:attestation",
    files=[f"{path}:application/vnd.dsse.envelope.v1+json"],
    manifest_config=f"{empty}:application/vnd.oci.empty.v1+json",
    subject=oras.oci.Subject(mediaType="application/vnd.oci.image.manifest.v1+json", digest=subject, size=int(size)),
    disable_path_validation=True,
)
assert r.status_code == 201, r.text
print(r.headers.get("Docker-Content-Digest"))
"#;
    let size = image.len().to_string();
    run(
        "python3",
        &[
            "-c",
            script,
            &app.host(),
            repo,
            &d,
            &size,
            path_str(&att),
            path_str(&empty),
        ],
    )
    .await;
    let v = wait_for(
        &app,
        &format!("/api/v1/provenance?revision={commit}"),
        |v| !digests(v).is_empty(),
    )
    .await;
    assert_eq!(digests(&v), [d.as_str()]);
    assert_eq!(v["artifacts"][0]["source"], "attestation");
    assert_eq!(v["artifacts"][0]["tags"], json!(["v1"]));
}

// ---- the OpenAPI document ----------------------------------------------------------

/// The document parses as OpenAPI 3.1, every path it lists answers (not the
/// router's "no such endpoint"), and every `/api/v1` route of the router is in it.
async fn openapi_describes_every_route(app: TestApp) {
    let doc = get_json(&app, "/api/v1/openapi.json").await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    assert!(!paths.is_empty());
    let (_, d) = app.push_image("probe/app", "v1", b"probe").await;
    for (template, item) in paths {
        let url = template
            .replace("{repository}", "probe/app")
            .replace("{digest}", &d)
            .replace("{tag}", "v1")
            .replace("{environment}", "prod")
            .replace("{id}", "1");
        for method in item.as_object().unwrap().keys() {
            let m = match method.as_str() {
                "get" => Method::GET,
                "put" => Method::PUT,
                "post" => Method::POST,
                "delete" => Method::DELETE,
                other => panic!("unexpected method {other} on {template}"),
            };
            let r = app.req(m.clone(), &url).body("{}").send().await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert!(
                !(status == 404
                    && (text.contains("no such endpoint") || text.contains("no endpoint at"))),
                "{method} {url} (from {template}) is not routed: {status} {text}"
            );
            assert!(status.as_u16() < 500, "{method} {url}: {status} {text}");
        }
    }
    // Every route the router registers under /api/v1.
    let source = include_str!("../../src/api/mod.rs");
    let mut registered = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("\"/api/v1") {
        let tail = &rest[i + 1..];
        let end = tail.find('"').unwrap();
        registered.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    assert!(registered.len() >= 5, "{registered:?}");
    for route in registered {
        let covered = match route.strip_suffix("{*rest}") {
            Some(prefix) => paths.keys().any(|p| p.starts_with(prefix)),
            None => paths.contains_key(&route),
        };
        assert!(covered, "route {route} is not in src/api/openapi.json");
    }
}

crate::both!(
    malformed_documents_are_400,
    subject_mismatch_is_refused,
    malformed_attestations_never_fail_a_push,
    buildx_attestations_pushed_by_skopeo,
    oras_referrer_attestation,
    labels_of_a_shared_config_reach_every_manifest,
    openapi_describes_every_route,
);
crate::both!(with moving_latest: ci_statements_are_stored_and_searchable);
