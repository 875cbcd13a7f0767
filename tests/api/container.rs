//! Cairn's container image, as shipped: the Dockerfile's final stage built
//! from the binary cargo built here (this machine's Docker Engine cannot pull
//! `rust:1-bookworm`, and the final stage starts `FROM scratch`, which needs no
//! pull). `scripts/rootfs.sh` assembles the root filesystem exactly as the
//! Dockerfile's build stage does, and the test takes the final stage's text
//! from the Dockerfile itself, reading `--from=build /rootfs/` as that
//! directory: user, environment, volume, health check and entry point are the
//! real ones.
//!
//! The container runs on the host network against the local PostgreSQL (a
//! fresh database) and a moto S3 server (a fresh bucket): the production shape
//! of docker-compose.yml, minus nginx. It must refuse to serve on 0.0.0.0 with
//! no account, accept one from its init command, become healthy through its own
//! `HEALTHCHECK`, run as a non-root user, take a `docker push` and `docker pull`
//! of an image built `FROM scratch`, put the bytes in the bucket, and stop
//! cleanly on `docker stop`. Containers, images and the client configuration
//! are removed at the end, pass or fail.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::e2e::{path_str, run, run_failing, DockerImages};
use crate::helpers::{fresh_postgres_db, fresh_s3_bucket, s3_endpoint};

/// Removes containers (and their anonymous volumes) when dropped.
struct DockerContainers(Vec<String>);

impl Drop for DockerContainers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v", name])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The Dockerfile's final stage (from its last `FROM scratch`), with its
/// `COPY --from=build /rootfs/…` lines reading the local `rootfs/` instead.
fn final_stage(dockerfile: &str) -> String {
    let start = dockerfile
        .rfind("\nFROM scratch")
        .expect("the Dockerfile's final stage starts FROM scratch");
    let stage = &dockerfile[start + 1..];
    let copies = stage.matches("--from=build /rootfs/").count();
    assert!(
        copies >= 2,
        "the final stage copies the root filesystem and the data directory from the build stage:\n{stage}"
    );
    stage.replace("--from=build /rootfs/", "rootfs/")
}

/// A free TCP port on loopback (released before use; a race with another
/// process is possible but unlikely).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

async fn inspect(container: &str, format: &str) -> String {
    run("docker", &["inspect", "--format", format, container])
        .await
        .trim()
        .to_string()
}

#[tokio::test]
async fn the_image_serves_pushes_and_pulls_over_postgres_and_s3() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    // ---- the image ------------------------------------------------------------
    let context = tmp.path().join("context");
    std::fs::create_dir_all(&context).expect("context dir");
    let rootfs = context.join("rootfs");
    run(
        "sh",
        &[
            path_str(&root.join("scripts/rootfs.sh")),
            env!("CARGO_BIN_EXE_cairn"),
            path_str(&rootfs),
        ],
    )
    .await;
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    std::fs::write(context.join("Dockerfile"), final_stage(&dockerfile)).expect("Dockerfile");
    let image = format!("cairn-test/cairn:{id}");
    let _images = DockerImages(vec![image.clone()]);
    let started = Instant::now();
    run(
        "docker",
        &[
            "build",
            "-q",
            "--force-rm",
            "-t",
            &image,
            path_str(&context),
        ],
    )
    .await;
    let size: u64 = run(
        "docker",
        &["image", "inspect", "--format", "{{.Size}}", &image],
    )
    .await
    .trim()
    .parse()
    .expect("image size");
    eprintln!(
        "image {image}: {:.1} MiB, built in {:?}",
        size as f64 / (1 << 20) as f64,
        started.elapsed()
    );
    assert_eq!(
        run(
            "docker",
            &["image", "inspect", "--format", "{{.Config.User}}", &image]
        )
        .await
        .trim(),
        "10001:10001",
        "the image runs as a non-root user"
    );

    // ---- its environment: PostgreSQL, S3, ports ---------------------------------
    let database = fresh_postgres_db().await;
    let s3 = s3_endpoint().await;
    let bucket = fresh_s3_bucket(&s3).await;
    let port = free_port();
    let metrics_port = free_port();
    let password = format!("pw-{id}");
    let env = [
        format!("CAIRN_LISTEN=0.0.0.0:{port}"),
        format!("CAIRN_DATABASE__URL={database}"),
        format!("CAIRN_STORAGE__URL=s3://{bucket}/registry"),
        format!("CAIRN_STORAGE__S3__ENDPOINT={s3}"),
        "CAIRN_STORAGE__S3__REGION=us-east-1".to_string(),
        "CAIRN_STORAGE__S3__PATH_STYLE=true".to_string(),
        "CAIRN_STORAGE__S3__ALLOW_HTTP=true".to_string(),
        "CAIRN_STORAGE__S3__ACCESS_KEY_ID=cairn-test".to_string(),
        "CAIRN_STORAGE__S3__SECRET_ACCESS_KEY=cairn-test-secret".to_string(),
        format!("CAIRN_METRICS__LISTEN=127.0.0.1:{metrics_port}"),
        "CAIRN_SHUTDOWN_TIMEOUT_SECS=20".to_string(),
        format!("ADMIN_PASSWORD={password}"),
    ];
    let docker_run = |extra: &[&str], command: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec!["run".into(), "--network".into(), "host".into()];
        for e in &env {
            args.push("-e".into());
            args.push(e.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(image.clone());
        args.extend(command.iter().map(|s| s.to_string()));
        args
    };
    let call = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run("docker", &refs).await
    };

    // ---- no account on 0.0.0.0: refused ------------------------------------------
    let refused = docker_run(&["--rm"], &[]);
    let refs: Vec<&str> = refused.iter().map(String::as_str).collect();
    let err = run_failing("docker", &refs).await;
    assert!(
        err.contains("cairn user add"),
        "the refusal says what to do: {err}"
    );

    // ---- the init command: migrations and the first admin, idempotent ------------
    let init = [
        "user",
        "add",
        "admin",
        "--role",
        "**=admin",
        "--password-env",
        "ADMIN_PASSWORD",
        "--if-missing",
    ];
    let out = call(docker_run(&["--rm"], &init)).await;
    assert!(out.contains("user admin created"), "{out}");
    let out = call(docker_run(&["--rm"], &init)).await;
    assert!(out.contains("left unchanged"), "{out}");

    // ---- serve -------------------------------------------------------------------
    let name = format!("cairn-test-{id}");
    let _containers = DockerContainers(vec![name.clone()]);
    let started = Instant::now();
    call(docker_run(
        &[
            "-d",
            "--name",
            &name,
            "--health-interval",
            "1s",
            "--health-start-period",
            "1s",
        ],
        &[],
    ))
    .await;
    let mut health = String::new();
    for _ in 0..120 {
        health = inspect(&name, "{{.State.Status}} {{.State.Health.Status}}").await;
        if health == "running healthy" || !health.starts_with("running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if health != "running healthy" {
        let logs = run("docker", &["logs", &name]).await;
        panic!("container is {health:?}, not healthy; its log:\n{logs}");
    }
    eprintln!("healthy after {:?}", started.elapsed());

    // Non-root: the process's real, effective, saved and file-system uid.
    let pid = inspect(&name, "{{.State.Pid}}").await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["10001"; 4],
        "{uid}"
    );
    // The health check is the binary; there is no shell to fall back on.
    run(
        "docker",
        &["exec", &name, "/usr/local/bin/cairn", "healthcheck"],
    )
    .await;
    run_failing("docker", &["exec", &name, "/bin/sh", "-c", "true"]).await;

    // ---- docker login, push, remove, pull ----------------------------------------
    let host = format!("127.0.0.1:{port}");
    let config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&config).expect("docker config dir");
    let cfg = path_str(&config);
    run(
        "docker",
        &[
            "--config", cfg, "login", "-u", "admin", "-p", &password, &host,
        ],
    )
    .await;

    let app = tmp.path().join("app");
    std::fs::create_dir_all(&app).expect("app dir");
    let content = format!("shipped through {name}\n");
    std::fs::write(app.join("hello.txt"), &content).expect("hello.txt");
    std::fs::write(
        app.join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\nCMD [\"/hello\"]\n",
    )
    .expect("Dockerfile");
    let tagged = format!("{host}/ship/app:v1");
    let _app_images = DockerImages(vec![tagged.clone()]);
    run(
        "docker",
        &["build", "-q", "--force-rm", "-t", &tagged, path_str(&app)],
    )
    .await;
    let started = Instant::now();
    let out = run("docker", &["--config", cfg, "push", &tagged]).await;
    eprintln!("pushed in {:?}: {}", started.elapsed(), out.trim());
    assert!(out.contains("digest: sha256:"), "{out}");
    run("docker", &["image", "rm", &tagged]).await;
    let started = Instant::now();
    let out = run("docker", &["--config", cfg, "pull", &tagged]).await;
    eprintln!("pulled in {:?}: {}", started.elapsed(), out.trim());

    let copy = format!("cairn-test-copy-{id}");
    let _copy = DockerContainers(vec![copy.clone()]);
    run("docker", &["create", "--name", &copy, &tagged]).await;
    let pulled = tmp.path().join("pulled.txt");
    run(
        "docker",
        &["cp", &format!("{copy}:/hello.txt"), path_str(&pulled)],
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&pulled).expect("pulled file"),
        content
    );

    // The bytes are in the bucket, under the configured prefix.
    let listing = reqwest::get(format!(
        "{s3}/{bucket}?list-type=2&prefix=registry/blobs/sha256/"
    ))
    .await
    .expect("list bucket")
    .text()
    .await
    .expect("listing");
    // (The manifest's bytes are in the database, with its record.)
    assert!(
        listing.matches("<Key>registry/blobs/sha256/").count() >= 2,
        "config and layer in the bucket: {listing}"
    );
    // Prometheus's view: the metrics listener counts the push and the pull.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(metrics.contains("cairn_http_requests_total"), "{metrics}");

    // ---- docker stop: a graceful shutdown, well inside the timeout -----------------
    let started = Instant::now();
    run("docker", &["stop", "-t", "30", &name]).await;
    let stopped = started.elapsed();
    let exit = inspect(&name, "{{.State.ExitCode}}").await;
    let logs = run("docker", &["logs", &name]).await;
    eprintln!("stopped in {stopped:?} with exit code {exit}");
    assert_eq!(exit, "0", "a clean exit, not a kill; log:\n{logs}");
    assert!(stopped < Duration::from_secs(25), "{stopped:?}");
    assert!(
        logs.contains("shutdown signal received"),
        "the server saw SIGTERM:\n{logs}"
    );
}
