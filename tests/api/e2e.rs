//! End-to-end tests with real clients that nobody here wrote: skopeo, docker,
//! podman, buildah, oras-py and the `oci-client` crate, each against the real
//! server on 127.0.0.1. A missing tool fails its test with a message saying how
//! to install it (`scripts/test.sh` does); nothing is skipped. Every external
//! command runs under a timeout, and the tests remove what they create (docker
//! images, client storage, temporary directories).
//!
//! The tests run on a current-thread runtime that also runs the server, so every
//! external command is awaited (`tokio::process`), never run blocking.
//!
//! Tags are immutable by default; the registry here makes `e2e/**` mutable so
//! clients can delete, and leaves `frozen/**` at the default to check how a
//! client reports a refused delete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use cairn::policy::{Mutability, RuleSpec};

use crate::helpers::{sha256, Db, TestApp, OCI_MANIFEST};

/// The longest any one client command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// How to install each tool, for the failure message.
fn install_hint(tool: &str) -> &'static str {
    match tool {
        "skopeo" | "podman" | "buildah" => {
            "apt-get install skopeo podman buildah (scripts/test.sh does)"
        }
        "docker" => "the Docker Engine (docker CLI and a running daemon)",
        "python3" => {
            "python3 with oras-py: python3 -m pip install 'oras==0.2.*' (scripts/test.sh does)"
        }
        _ => "see scripts/test.sh",
    }
}

/// The output of a finished command.
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `program args…` with a timeout; a missing program fails the test.
async fn exec(program: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let child = match cmd.output().await {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{program} is required by this end-to-end test and is not installed: {}",
            install_hint(program)
        ),
        Err(e) => panic!("could not run {program}: {e}"),
    };
    Output {
        ok: child.status.success(),
        stdout: String::from_utf8_lossy(&child.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&child.stderr).into_owned(),
    }
}

/// Runs a command that must succeed within [`COMMAND_TIMEOUT`]; returns stdout.
pub(crate) async fn run(program: &str, args: &[&str]) -> String {
    let line = format!("{program} {}", args.join(" "));
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(COMMAND_TIMEOUT, exec(program, args))
        .await
        .unwrap_or_else(|_| panic!("`{line}` did not finish within {COMMAND_TIMEOUT:?}"));
    assert!(
        out.ok,
        "`{line}` failed:\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    eprintln!("ok in {:?}: {line}", started.elapsed());
    out.stdout
}

/// Runs a command that must fail; returns its stderr.
pub(crate) async fn run_failing(program: &str, args: &[&str]) -> String {
    let line = format!("{program} {}", args.join(" "));
    let out = tokio::time::timeout(COMMAND_TIMEOUT, exec(program, args))
        .await
        .unwrap_or_else(|_| panic!("`{line}` did not finish within {COMMAND_TIMEOUT:?}"));
    assert!(!out.ok, "`{line}` should have failed:\n{}", out.stdout);
    out.stderr
}

/// A ustar archive holding `files` (regular files, mode 0644).
pub(crate) fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, 0o644);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, data.len() as u64);
        octal(&mut h, 136, 12, 1_700_000_000);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub(crate) fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The digest Cairn serves for `repo:reference` (HEAD), asserting it answers.
async fn served_digest(app: &TestApp, repo: &str, reference: &str) -> String {
    let r = app
        .req(Method::HEAD, &format!("/v2/{repo}/manifests/{reference}"))
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "HEAD {repo}:{reference}");
    r.headers()["docker-content-digest"]
        .to_str()
        .expect("digest header")
        .to_string()
}

/// The tags Cairn lists for `repo`.
async fn served_tags(app: &TestApp, repo: &str) -> Vec<String> {
    let r = app.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    let mut tags: Vec<String> = v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

/// Writes an OCI image layout with one image (config + one tar layer) tagged
/// `tag`; returns the manifest's digest and bytes.
pub(crate) fn write_oci_layout(dir: &Path, tag: &str, file_content: &[u8]) -> (String, Vec<u8>) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout dir");
    let put = |data: &[u8]| -> String {
        let d = sha256(data);
        std::fs::write(blobs.join(&d["sha256:".len()..]), data).expect("blob");
        d
    };
    let layer = tar(&[("hello.txt", file_content)]);
    let layer_digest = put(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "cairn e2e test"}],
    }))
    .expect("json");
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))
    .expect("json");
    let manifest_digest = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index.json");
    (manifest_digest, manifest)
}

/// The manifest digest an OCI layout's index.json names for `tag`.
fn layout_digest(dir: &Path, tag: &str) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("json");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} in {index}"))["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

// ---- skopeo ----------------------------------------------------------------

/// skopeo: copy a hand-written OCI layout in, copy it back out, inspect, list
/// tags, copy registry to registry, delete.
async fn skopeo_copy(app: TestApp) {
    let host = app.host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let (digest, manifest) =
        write_oci_layout(&src, "v1", format!("hello from {host}\n").as_bytes());
    let image = format!("docker://{host}/e2e/app:v1");
    // Without --preserve-digests skopeo gzips uncompressed layers on the way to
    // a registry (or, through its blob-info cache, reuses a copy it pushed
    // earlier), which changes the manifest; with it the digest must survive.

    run(
        "skopeo",
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", path_str(&src)),
            &image,
        ],
    )
    .await;
    let served = served_digest(&app, "e2e/app", "v1").await;
    if served != digest {
        let got = app.get("/v2/e2e/app/manifests/v1").await.text().await;
        panic!(
            "skopeo changed the manifest: pushed {}\nserved {got:?}",
            String::from_utf8_lossy(&manifest)
        );
    }
    let raw = app.get(&format!("/v2/e2e/app/manifests/{digest}")).await;
    assert_eq!(
        raw.bytes().await.expect("body").as_ref(),
        manifest.as_slice()
    );

    // Copy back into a fresh layout: same manifest digest.
    let back = tmp.path().join("back");
    run(
        "skopeo",
        &[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &image,
            &format!("oci:{}:v1", path_str(&back)),
        ],
    )
    .await;
    assert_eq!(layout_digest(&back, "v1"), digest);

    let out = run("skopeo", &["inspect", "--tls-verify=false", &image]).await;
    let v: Value = serde_json::from_str(&out).expect("inspect JSON");
    assert_eq!(v["Digest"], digest, "{v}");
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["RepoTags"], json!(["v1"]));
    let raw = run(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &image],
    )
    .await;
    assert_eq!(
        raw.as_bytes(),
        manifest.as_slice(),
        "inspect --raw gives the pushed bytes"
    );

    // Registry to registry: a second tag (the blobs already exist there).
    let v2 = format!("docker://{host}/e2e/app:v2");
    run(
        "skopeo",
        &[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &image,
            &v2,
        ],
    )
    .await;
    let out = run(
        "skopeo",
        &[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{host}/e2e/app"),
        ],
    )
    .await;
    let v: Value = serde_json::from_str(&out).expect("list-tags JSON");
    let mut tags: Vec<&str> = v["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v2"]);

    // Under the default policy the tag is immutable: skopeo's delete is refused
    // and skopeo reports the registry's DENIED error.
    let frozen = format!("docker://{host}/frozen/app:v1");
    run(
        "skopeo",
        &[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &image,
            &frozen,
        ],
    )
    .await;
    let err = run_failing("skopeo", &["delete", "--tls-verify=false", &frozen]).await;
    assert!(err.contains("DENIED") && err.contains("immutable"), "{err}");
    assert_eq!(served_digest(&app, "frozen/app", "v1").await, digest);

    // skopeo delete resolves the tag and deletes the manifest by digest, which
    // removes every tag pointing at it.
    run("skopeo", &["delete", "--tls-verify=false", &image]).await;
    assert_eq!(
        app.get(&format!("/v2/e2e/app/manifests/{digest}"))
            .await
            .status(),
        404
    );
    assert!(served_tags(&app, "e2e/app").await.is_empty());
    let err = run_failing("skopeo", &["inspect", "--tls-verify=false", &v2]).await;
    assert!(err.contains("manifest unknown"), "{err}");
}

// ---- docker ----------------------------------------------------------------

/// Removes docker images when dropped, pass or fail.
pub(crate) struct DockerImages(pub(crate) Vec<String>);

impl Drop for DockerImages {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["image", "rm", "-f", image])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The `sha256:…` after `marker` in a client's output.
fn digest_after(out: &str, marker: &str) -> String {
    let at = out
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in output:\n{out}"));
    out[at + marker.len()..]
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

/// docker: import a tarball, push, remove, pull by tag and by digest.
async fn docker_push_pull(app: TestApp) {
    let host = app.host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = format!("{host}/e2e/docker:v1");
    let _cleanup = DockerImages(vec![image.clone()]);
    let archive = tmp.path().join("rootfs.tar");
    std::fs::write(
        &archive,
        tar(&[("hello.txt", format!("docker e2e {host}\n").as_bytes())]),
    )
    .expect("tar");

    run("docker", &["import", path_str(&archive), &image]).await;
    let out = run("docker", &["push", &image]).await;
    let pushed = digest_after(&out, "digest: ");
    assert_eq!(served_digest(&app, "e2e/docker", "v1").await, pushed);
    assert_eq!(served_tags(&app, "e2e/docker").await, ["v1"]);

    run("docker", &["image", "rm", &image]).await;
    let out = run("docker", &["pull", &image]).await;
    assert_eq!(digest_after(&out, "Digest: "), pushed);
    let repo_digests = run(
        "docker",
        &[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &image,
        ],
    )
    .await;
    assert!(
        repo_digests.contains(&format!("{host}/e2e/docker@{pushed}")),
        "{repo_digests}"
    );

    // By digest, as containerd-based pulls do.
    run("docker", &["image", "rm", &image]).await;
    let by_digest = format!("{host}/e2e/docker@{pushed}");
    let _cleanup_digest = DockerImages(vec![by_digest.clone()]);
    let out = run("docker", &["pull", &by_digest]).await;
    assert!(out.contains(&pushed), "{out}");
}

// ---- podman and buildah ----------------------------------------------------

/// Global flags that keep podman/buildah storage inside `dir` (vfs, no
/// overlay or fuse needed).
fn storage_flags(dir: &Path) -> Vec<String> {
    vec![
        "--root".into(),
        path_str(&dir.join("root")).into(),
        "--runroot".into(),
        path_str(&dir.join("runroot")).into(),
        "--storage-driver".into(),
        "vfs".into(),
    ]
}

async fn run_with(program: &str, pre: &[String], args: &[&str]) -> String {
    let mut all: Vec<&str> = pre.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    run(program, &all).await
}

/// Removes a podman/buildah storage tree (vfs layers and all) when dropped.
pub(crate) struct Storage(
    pub(crate) PathBuf,
    pub(crate) &'static str,
    pub(crate) Vec<String>,
);

impl Drop for Storage {
    fn drop(&mut self) {
        let mut args = self.2.clone();
        args.extend(["rmi".into(), "-a".into(), "-f".into()]);
        let _ = std::process::Command::new(self.1)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// podman: import a tarball, push (chunked PATCH), remove, pull, compare digests.
async fn podman_push_pull(app: TestApp) {
    let host = app.host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("storage");
    let mut flags = storage_flags(&store);
    flags.extend([
        "--events-backend".into(),
        "none".into(),
        "--cgroup-manager".into(),
        "cgroupfs".into(),
    ]);
    let _cleanup = Storage(store.clone(), "podman", flags.clone());
    let archive = tmp.path().join("rootfs.tar");
    std::fs::write(
        &archive,
        tar(&[("hello.txt", format!("podman e2e {host}\n").as_bytes())]),
    )
    .expect("tar");
    let image = format!("{host}/e2e/podman:v1");
    let digest_file = tmp.path().join("digest");

    run_with("podman", &flags, &["import", path_str(&archive), &image]).await;
    run_with(
        "podman",
        &flags,
        &[
            "push",
            "--tls-verify=false",
            "--digestfile",
            path_str(&digest_file),
            &image,
        ],
    )
    .await;
    let pushed = std::fs::read_to_string(&digest_file)
        .expect("digest file")
        .trim()
        .to_string();
    assert_eq!(served_digest(&app, "e2e/podman", "v1").await, pushed);

    run_with("podman", &flags, &["rmi", "-f", &image]).await;
    run_with("podman", &flags, &["pull", "--tls-verify=false", &image]).await;
    let pulled = run_with(
        "podman",
        &flags,
        &["image", "inspect", "--format", "{{.Digest}}", &image],
    )
    .await;
    assert_eq!(pulled.trim(), pushed);

    // An immutable tag: the same image again is fine, another one is refused
    // and podman shows the registry's message.
    let frozen = format!("{host}/frozen/podman:v1");
    run_with("podman", &flags, &["tag", &image, &frozen]).await;
    run_with("podman", &flags, &["push", "--tls-verify=false", &frozen]).await;
    run_with("podman", &flags, &["push", "--tls-verify=false", &frozen]).await;
    std::fs::write(&archive, tar(&[("hello.txt", b"other content\n")])).expect("tar");
    run_with("podman", &flags, &["import", path_str(&archive), &frozen]).await;
    let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
    all.extend_from_slice(&["push", "--tls-verify=false", &frozen]);
    let err = run_failing("podman", &all).await;
    assert!(
        err.contains("tag \"v1\" in \"frozen/podman\" is immutable (rule \"default\"): it holds")
            || err.contains("tag \\\"v1\\\" in \\\"frozen/podman\\\" is immutable (rule \\\"default\\\"): it holds"),
        "podman showed: {err}"
    );
}

/// buildah: build an image from scratch, push it, pull it into fresh storage.
async fn buildah_build_push_pull(app: TestApp) {
    let host = app.host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("storage");
    let flags = storage_flags(&store);
    let _cleanup = Storage(store.clone(), "buildah", flags.clone());
    let file = tmp.path().join("hello.txt");
    std::fs::write(&file, format!("buildah e2e {host}\n")).expect("file");
    let image = format!("{host}/e2e/buildah:v1");
    let digest_file = tmp.path().join("digest");

    let ctr = run_with("buildah", &flags, &["from", "scratch"]).await;
    let ctr = ctr.trim();
    run_with(
        "buildah",
        &flags,
        &["copy", ctr, path_str(&file), "/hello.txt"],
    )
    .await;
    run_with("buildah", &flags, &["config", "--cmd", "/hello", ctr]).await;
    run_with(
        "buildah",
        &flags,
        &["commit", "-q", ctr, "localhost/e2e/buildah:v1"],
    )
    .await;
    run_with("buildah", &flags, &["rm", ctr]).await;
    run_with(
        "buildah",
        &flags,
        &[
            "push",
            "--tls-verify=false",
            "--digestfile",
            path_str(&digest_file),
            "localhost/e2e/buildah:v1",
            &format!("docker://{image}"),
        ],
    )
    .await;
    let pushed = std::fs::read_to_string(&digest_file)
        .expect("digest file")
        .trim()
        .to_string();
    assert_eq!(served_digest(&app, "e2e/buildah", "v1").await, pushed);

    let fresh = tmp.path().join("fresh");
    let fresh_flags = storage_flags(&fresh);
    let _cleanup_fresh = Storage(fresh.clone(), "buildah", fresh_flags.clone());
    run_with(
        "buildah",
        &fresh_flags,
        &["pull", "--tls-verify=false", &image],
    )
    .await;
    let pulled = run_with(
        "buildah",
        &fresh_flags,
        &["images", "--format", "{{.Digest}}", &image],
    )
    .await;
    assert_eq!(pulled.trim(), pushed);
}

// ---- oras-py -----------------------------------------------------------------

/// oras-py (tests/e2e/oras_client.py): artifact with an artifactType, chunked
/// push, referrer with a subject, referrers discovery, pull, tags, delete.
async fn oras_py(app: TestApp) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/oras_client.py");
    let probe = exec("python3", &["-c", "import oras.provider"]).await;
    assert!(
        probe.ok,
        "oras-py is required by this test and is not installed ({}): {}",
        probe.stderr.trim(),
        install_hint("python3")
    );
    let out = run(
        "python3",
        &[
            path_str(&script),
            "--registry",
            &app.host(),
            "--repo",
            "e2e/oras",
            "--workdir",
            path_str(tmp.path()),
        ],
    )
    .await;
    let summary: Value =
        serde_json::from_str(out.lines().last().expect("summary line")).expect("summary JSON");
    let artifact = summary["artifact"].as_str().expect("artifact");
    let referrer = summary["referrer"].as_str().expect("referrer");

    // Cross-check what oras-py saw with raw HTTP.
    assert_eq!(served_digest(&app, "e2e/oras", "v1").await, artifact);
    assert_eq!(served_tags(&app, "e2e/oras").await, ["v1", "v2-chunked"]);
    let m: Value = app
        .get(&format!("/v2/e2e/oras/manifests/{artifact}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(m["artifactType"], "application/vnd.cairn.e2e.artifact");
    let layer = m["layers"][0]["digest"].as_str().expect("layer");
    assert_eq!(layer, summary["payload"]);
    assert_eq!(
        app.get(&format!("/v2/e2e/oras/blobs/{layer}"))
            .await
            .status(),
        200
    );
    // The referrer's manifest went with its tag (oras-py deletes by digest).
    assert_eq!(
        app.get(&format!("/v2/e2e/oras/manifests/{referrer}"))
            .await
            .status(),
        404
    );
}

// ---- oci-client ----------------------------------------------------------------

/// Collects, while installed as the thread's default subscriber, oci-client's
/// warnings (it warns, then silently falls back to a monolithic upload, when a
/// registry breaks its chunked push).
#[derive(Clone, Default)]
struct Probe(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

struct FieldText(String, &'static str, Option<String>);

impl tracing::field::Visit for FieldText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.1 {
            self.2 = Some(format!("{value:?}"));
        }
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Probe {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let m = event.metadata();
        if *m.level() <= tracing::Level::WARN && m.target().starts_with("oci_client") {
            let mut v = FieldText(String::new(), "", None);
            event.record(&mut v);
            self.0.lock().expect("probe").push(v.0);
        }
    }
}

/// oci-client: push (chunked, 4 MiB chunks with a bare `Content-Range`), pull,
/// compare, list tags, ranged blob stream, referrers.
async fn oci_client_push_pull(app: TestApp) {
    use ::oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use ::oci_client::manifest::{IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE};
    use ::oci_client::secrets::RegistryAuth;
    use ::oci_client::{Client, Reference};
    use futures::TryStreamExt;
    use tracing_subscriber::layer::SubscriberExt;

    let probe = Probe::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(probe.clone()));

    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        read_timeout: Some(Duration::from_secs(60)),
        connect_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    });
    let auth = RegistryAuth::Anonymous;
    let host = app.host();
    let image: Reference = format!("{host}/e2e/ociclient:v1")
        .parse()
        .expect("reference");

    // A 9 MiB layer: three PATCHes of at most 4 MiB; a small one: one PATCH.
    let big: Vec<u8> = (0..9 * 1024 * 1024 + 123)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let small = b"small layer".to_vec();
    let layers = vec![
        ImageLayer::new(big.clone(), IMAGE_LAYER_MEDIA_TYPE.to_string(), None),
        ImageLayer::new(small.clone(), IMAGE_LAYER_MEDIA_TYPE.to_string(), None),
    ];
    let config_bytes =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let config = Config::new(
        config_bytes.clone(),
        IMAGE_CONFIG_MEDIA_TYPE.to_string(),
        None,
    );
    let started = std::time::Instant::now();
    let pushed = tokio::time::timeout(
        COMMAND_TIMEOUT,
        client.push(&image, &layers, config, &auth, None),
    )
    .await
    .expect("push within the timeout")
    .expect("oci-client push");
    eprintln!(
        "oci-client push (9 MiB + 11 B + config) in {:?}",
        started.elapsed()
    );
    assert!(
        pushed.manifest_url.contains("/v2/e2e/ociclient/manifests/"),
        "{}",
        pushed.manifest_url
    );
    {
        let warnings = &*probe.0.lock().expect("probe");
        assert!(
            warnings.is_empty(),
            "oci-client warned (fell back from chunked push?): {warnings:?}"
        );
    }
    // PATCHes this registry answered, from its own metrics (a thread-local
    // tracing subscriber missed them when many tests ran at once).
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let patches: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"cairn_http_requests_total{method="PATCH",route="/v2/{name}/blobs/uploads/{id}",status="2xx"} "#,
            )
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(
        patches,
        3 + 1 + 1,
        "chunked PATCHes: 3 for the big layer, 1 each for the rest"
    );

    let digest = client
        .fetch_manifest_digest(&image, &auth)
        .await
        .expect("manifest digest");
    assert_eq!(served_digest(&app, "e2e/ociclient", "v1").await, digest);

    let data = client
        .pull(&image, &auth, vec![IMAGE_LAYER_MEDIA_TYPE])
        .await
        .expect("oci-client pull");
    assert_eq!(data.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(data.config.data, config_bytes);
    // oci-client pulls layers concurrently and returns them in completion
    // order, so match them by digest.
    let mut got: Vec<String> = data.layers.iter().map(|l| sha256(&l.data)).collect();
    got.sort();
    let mut want = vec![sha256(&big), sha256(&small)];
    want.sort();
    assert_eq!(got, want, "both layers round-trip byte for byte");

    // Ranged streaming read of the big layer from an offset.
    let manifest = data.manifest.expect("manifest");
    let offset = 5 * 1024 * 1024;
    match client
        .pull_blob_stream_partial(&image, &manifest.layers[0], offset, Some(1000))
        .await
        .expect("partial pull")
    {
        ::oci_client::client::BlobResponse::Partial(s) => {
            let got: Vec<u8> = s
                .stream
                .try_fold(Vec::new(), |mut acc, b| async move {
                    acc.extend_from_slice(&b);
                    Ok(acc)
                })
                .await
                .expect("stream");
            assert_eq!(got, big[offset as usize..offset as usize + 1000]);
        }
        ::oci_client::client::BlobResponse::Full(_) => panic!("expected a 206 partial response"),
    }

    // A second tag by pushing the same manifest; list tags, paged.
    let v2: Reference = format!("{host}/e2e/ociclient:v2")
        .parse()
        .expect("reference");
    client
        .push_manifest(&v2, &manifest.clone().into())
        .await
        .expect("push manifest under v2");
    let tags = client
        .list_tags(&image, &auth, None, None)
        .await
        .expect("tags");
    assert_eq!(tags.tags, ["v1", "v2"]);
    let page = client
        .list_tags(&image, &auth, Some(1), None)
        .await
        .expect("tags");
    assert_eq!(page.tags, ["v1"]);
    let page = client
        .list_tags(&image, &auth, Some(1), Some("v1"))
        .await
        .expect("tags");
    assert_eq!(page.tags, ["v2"]);

    // Referrers of the image (none yet, then one pushed by raw HTTP).
    let by_digest: Reference = format!("{host}/e2e/ociclient@{digest}")
        .parse()
        .expect("reference");
    let none = client
        .pull_referrers(&by_digest, None)
        .await
        .expect("referrers");
    assert!(none.manifests.is_empty());
    let empty = app.push_blob("e2e/ociclient", b"{}").await;
    let size = app
        .get(&format!("/v2/e2e/ociclient/manifests/{digest}"))
        .await
        .bytes()
        .await
        .expect("body")
        .len();
    let referrer = crate::helpers::image_manifest(
        &empty,
        2,
        &[],
        Some("application/vnd.cairn.e2e.sig"),
        Some((&digest, size)),
    );
    let r = app
        .put_manifest("e2e/ociclient", &sha256(&referrer), OCI_MANIFEST, &referrer)
        .await;
    assert_eq!(r.status(), 201);
    let found = client
        .pull_referrers(&by_digest, Some("application/vnd.cairn.e2e.sig"))
        .await
        .expect("referrers");
    assert_eq!(found.manifests.len(), 1);
    assert_eq!(found.manifests[0].digest, sha256(&referrer));
}

// ---- what clients expect of a plain-HTTP port ----------------------------------

/// docker, skopeo and podman try TLS first on a registry they may reach over
/// plain HTTP, and fall back to HTTP only when the port answers the TLS
/// ClientHello with an HTTP 400: the connection must get that answer, not a
/// hang or a reset.
async fn tls_client_hello_gets_http_400(app: TestApp) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // A TLS 1.2 record header (handshake, ClientHello) and the start of a hello.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
    ];
    hello.extend_from_slice(&[0u8; 40]);
    s.write_all(&hello).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the server answers and closes within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
}

// ---- immutability as clients show it ----------------------------------------------

/// The tag's history actions, newest first.
async fn history_actions(app: &TestApp, repo: &str, tag: &str) -> Vec<String> {
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
        .map(|e| e["action"].as_str().unwrap_or("").to_string())
        .collect()
}

/// skopeo and oras-py push `v1`, push it again (succeeds), push other content
/// to `v1` (refused, with Cairn's message shown to the user), and move `latest`
/// twice; the history API shows all of it.
async fn immutable_tags_through_skopeo_and_oras(app: TestApp) {
    let host = app.host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (da, _) = write_oci_layout(&a_dir, "t", b"content a");
    let (db, _) = write_oci_layout(&b_dir, "t", b"content b");
    let copy = |dir: &Path, tag: &str| {
        vec![
            "copy".to_string(),
            "--preserve-digests".into(),
            "--dest-tls-verify=false".into(),
            format!("oci:{}:t", path_str(dir)),
            format!("docker://{host}/frozen/skopeo:{tag}"),
        ]
    };
    let args = |v: &[String]| v.to_vec();
    let a_v1 = args(&copy(&a_dir, "v1"));
    let a_v1: Vec<&str> = a_v1.iter().map(String::as_str).collect();
    run("skopeo", &a_v1).await;
    run("skopeo", &a_v1).await; // the CI retry
    let b_v1 = copy(&b_dir, "v1");
    let b_v1: Vec<&str> = b_v1.iter().map(String::as_str).collect();
    let err = run_failing("skopeo", &b_v1).await;
    let expected = format!(
        "tag \"v1\" in \"frozen/skopeo\" is immutable (rule \"default\"): it holds {da} and cannot be moved to {db}"
    );
    // skopeo logs through logrus, which escapes the quotes of the message.
    assert!(
        err.contains(&format!("denied: {}", expected.replace('"', "\\\""))),
        "skopeo showed: {err}"
    );
    assert_eq!(served_digest(&app, "frozen/skopeo", "v1").await, da);
    for dir in [&a_dir, &b_dir] {
        let latest = copy(dir, "latest");
        let latest: Vec<&str> = latest.iter().map(String::as_str).collect();
        run("skopeo", &latest).await;
    }
    assert_eq!(served_digest(&app, "frozen/skopeo", "latest").await, db);
    assert_eq!(
        history_actions(&app, "frozen/skopeo", "v1").await,
        ["denied", "repushed", "created"]
    );
    assert_eq!(
        history_actions(&app, "frozen/skopeo", "latest").await,
        ["moved", "created"]
    );

    // oras-py: the same story with artifacts.
    let push = r#"
import sys, oras.provider
host, repo, tag, path = sys.argv[1:5]
reg = oras.provider.Registry(hostname=host, insecure=True)
r = reg.push(target=f"{host}/{repo}:{tag}", files=[path], disable_path_validation=True)
print(r.headers.get("Docker-Content-Digest"))
"#;
    let (fa, fb) = (tmp.path().join("a.txt"), tmp.path().join("b.txt"));
    std::fs::write(&fa, "artifact a").expect("write");
    std::fs::write(&fb, "artifact b").expect("write");
    let oras = |tag: &'static str, file: &Path| {
        vec![
            "-c".to_string(),
            push.to_string(),
            host.clone(),
            "frozen/oras".into(),
            tag.into(),
            path_str(file).to_string(),
        ]
    };
    let a = oras("v1", &fa);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let first = run("python3", &a).await;
    assert_eq!(run("python3", &a).await, first);
    let b = oras("v1", &fb);
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let err = run_failing("python3", &b).await;
    assert!(
        err.contains("tag \"v1\" in \"frozen/oras\" is immutable (rule \"default\"): it holds"),
        "oras-py showed: {err}"
    );
    for file in [&fa, &fb] {
        let l = oras("latest", file);
        let l: Vec<&str> = l.iter().map(String::as_str).collect();
        run("python3", &l).await;
    }
    assert_eq!(
        history_actions(&app, "frozen/oras", "v1").await,
        ["denied", "repushed", "created"]
    );
    assert_eq!(
        history_actions(&app, "frozen/oras", "latest").await,
        ["moved", "created"]
    );
}

/// The registry these tests use: defaults, with `e2e/**` mutable.
async fn spawn(db: Db) -> TestApp {
    TestApp::spawn_with(db, |c| {
        c.immutability.rules = vec![
            RuleSpec {
                name: "e2e scratch".into(),
                repositories: vec!["e2e/**".into()],
                tags: vec!["*".into()],
                mutability: Mutability::Mutable,
            },
            RuleSpec {
                name: "moving tags".into(),
                repositories: vec!["**".into()],
                tags: vec!["latest".into()],
                mutability: Mutability::Mutable,
            },
        ]
    })
    .await
}

/// Runs each listed test body against SQLite and against PostgreSQL.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(super::spawn(super::Db::Sqlite).await).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$name(super::spawn(super::Db::Postgres).await).await
                }
            }
        )*
    };
}

on_both!(
    skopeo_copy,
    docker_push_pull,
    oras_py,
    oci_client_push_pull,
    immutable_tags_through_skopeo_and_oras
);

#[tokio::test]
async fn tls_client_hello_on_plain_http() {
    tls_client_hello_gets_http_400(spawn(Db::Sqlite).await).await
}

#[tokio::test]
async fn podman_push_pull_sqlite() {
    podman_push_pull(spawn(Db::Sqlite).await).await
}

#[tokio::test]
async fn buildah_build_push_pull_sqlite() {
    buildah_build_push_pull(spawn(Db::Sqlite).await).await
}
