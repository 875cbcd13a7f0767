//! The test harness: starts the real server on 127.0.0.1:0 over a fresh database
//! (SQLite in a temporary directory, or a new PostgreSQL database on the local
//! server) and local-disk blob storage, and returns a client for it.
//!
//! With `CAIRN_TEST_STORAGE=s3` every `TestApp::spawn*` keeps its blobs in a
//! fresh bucket of the test S3 server instead (the database stays what each
//! test asks for), so the same API tests run over both stores;
//! `scripts/test.sh` runs the storage-sensitive modules that way a second time.
//! A test about the local disk itself uses [`TestApp::spawn_on_local_disk`].

use std::net::SocketAddr;

use cairn::{App, Config};
use reqwest::{Method, RequestBuilder, Response};
use sha2::{Digest as _, Sha256};
use sqlx::Connection;

/// Which metadata backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on. `scripts/test.sh`
/// starts one and sets this; without it the PostgreSQL half of the suite fails
/// (it is never skipped).
pub fn postgres_admin_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_string())
}

/// A fresh, empty PostgreSQL database; returns its URL.
pub async fn fresh_postgres_db() -> String {
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
            "PostgreSQL is required for the metadata tests and is not reachable at {admin}: {e}. \
             Run scripts/test.sh, which starts it, or set CAIRN_TEST_POSTGRES_URL."
        )
        });
    let name = format!("cairn_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin).expect("admin URL");
    url.set_path(&name);
    url.to_string()
}

/// The S3-compatible server the S3 tests store blobs in: `CAIRN_TEST_S3_ENDPOINT`
/// if set, else a moto server (`pip install 'moto[server]'`, which
/// `scripts/test.sh` does) started once per test process on a free port. The
/// harness starts it rather than the script so that `cargo test` alone works
/// and every run begins with an empty server; it is stopped when the test
/// process exits (its wrapper shell waits on its stdin, which closes then).
pub async fn s3_endpoint() -> String {
    static ENDPOINT: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    ENDPOINT
        .get_or_init(|| async {
            if let Ok(e) = std::env::var("CAIRN_TEST_S3_ENDPOINT") {
                return e;
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let child = std::process::Command::new("sh")
                .args([
                    "-c",
                    "moto_server -H 127.0.0.1 -p \"$0\" >/dev/null 2>&1 & m=$!; read _; kill $m",
                    &port.to_string(),
                ])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("sh");
            // Kept open for the life of the process: its end stops the server.
            static MOTO: std::sync::OnceLock<std::process::Child> = std::sync::OnceLock::new();
            let _ = MOTO.set(child);
            let endpoint = format!("http://127.0.0.1:{port}");
            for _ in 0..200 {
                if reqwest::get(&endpoint).await.is_ok() {
                    return endpoint;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!(
                "moto_server did not answer on {endpoint}: install it with \
                 `pip install 'moto[server]'` (scripts/test.sh does) or set CAIRN_TEST_S3_ENDPOINT"
            );
        })
        .await
        .clone()
}

/// A new, empty bucket on the test S3 server; returns its name.
pub async fn fresh_s3_bucket(endpoint: &str) -> String {
    let bucket = format!("cairn-test-{}", uuid::Uuid::new_v4().simple());
    let r = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("create bucket");
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    bucket
}

/// Where a test's blobs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    LocalDisk,
    S3,
}

impl Storage {
    /// `CAIRN_TEST_STORAGE`: `s3` for a bucket on the test S3 server, anything
    /// else (or nothing) for the local disk.
    pub fn from_env() -> Storage {
        match std::env::var("CAIRN_TEST_STORAGE").as_deref() {
            Ok("s3") => Storage::S3,
            _ => Storage::LocalDisk,
        }
    }
}

/// Points `config` at a new, empty bucket of the test S3 server, under the
/// prefix `registry/`.
pub async fn use_fresh_bucket(config: &mut Config) {
    let endpoint = s3_endpoint().await;
    let bucket = fresh_s3_bucket(&endpoint).await;
    config.storage.url = format!("s3://{bucket}/registry");
    config.storage.s3 = cairn::config::S3Config {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        path_style: Some(true),
        allow_http: Some(true),
        access_key_id: Some("cairn-test".into()),
        secret_access_key: Some("cairn-test-secret".into()),
        ..Default::default()
    };
}

/// A running registry and a client for it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub db: Db,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn(db: Db) -> TestApp {
        Self::spawn_with(db, |_| {}).await
    }

    /// Starts a registry with a config adjusted by `tweak`, its blobs where
    /// `CAIRN_TEST_STORAGE` says.
    pub async fn spawn_with(db: Db, tweak: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_on(db, Storage::from_env(), tweak).await
    }

    /// [`TestApp::spawn_with`] on the local disk whatever `CAIRN_TEST_STORAGE`
    /// says: for tests of the disk layout, fsync or `copy_file_range`, which
    /// mean nothing on an object store.
    pub async fn spawn_on_local_disk(db: Db, tweak: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_on(db, Storage::LocalDisk, tweak).await
    }

    /// Starts a registry over `storage` with a config adjusted by `tweak`.
    pub async fn spawn_on(db: Db, storage: Storage, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..Config::default()
        };
        config.database.url = match db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("cairn.db").display()),
            Db::Postgres => fresh_postgres_db().await,
        };
        config.storage.url = url::Url::from_directory_path(dir.path().join("blobs"))
            .expect("blob dir")
            .to_string();
        std::fs::create_dir_all(dir.path().join("blobs")).expect("blob dir");
        if storage == Storage::S3 {
            use_fresh_bucket(&mut config).await;
        }
        tweak(&mut config);
        let app = App::build(&config).await.expect("server starts");
        let addr = app.local_addr().expect("addr");
        tokio::spawn(app.run(std::future::pending()));
        TestApp {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            db,
            config,
            dir,
        }
    }

    /// Starts a registry whose blobs live in a fresh bucket of the test S3
    /// server, under the prefix `registry/`, with its config adjusted by `tweak`.
    pub async fn spawn_s3_with(db: Db, tweak: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_on(db, Storage::S3, tweak).await
    }

    /// The registry's object store, opened afresh, and the path of `key` in it.
    fn raw_store(
        &self,
        key: &str,
    ) -> (Box<dyn object_store::ObjectStore>, object_store::path::Path) {
        let url =
            url::Url::parse(&self.config.storage_url().expect("storage URL")).expect("storage URL");
        let (store, root) = object_store::parse_url_opts(&url, self.config.storage.s3.options())
            .expect("object store");
        let at = key
            .split('/')
            .filter(|p| !p.is_empty())
            .fold(root, |p, part| p.child(part));
        (store, at)
    }

    /// Writes `bytes` as the object `key` of the registry's store, behind the
    /// registry's back (as a process stopped mid-upload leaves them).
    pub async fn put_stored_object(&self, key: &str, bytes: &[u8]) {
        let (store, at) = self.raw_store(key);
        store
            .put(&at, bytes.to_vec().into())
            .await
            .expect("write to the store");
    }

    /// How many objects the registry's store holds under `prefix` (e.g.
    /// `uploads`), whichever store it is: a test checks the store's contents
    /// without knowing whether they are files or bucket objects.
    pub async fn stored_objects(&self, prefix: &str) -> usize {
        use futures::TryStreamExt;
        let (store, under) = self.raw_store(prefix);
        store
            .list(Some(&under))
            .try_collect::<Vec<_>>()
            .await
            .expect("list the store")
            .len()
    }

    /// A handle of its own on the registry's object store, for a test that
    /// looks at the bucket directly.
    pub fn blob_store(&self) -> cairn::storage::BlobStore {
        self.config.blob_store().expect("blob store")
    }

    /// Starts a second registry with this one's configuration: the same database
    /// and blob directory, a new port and a new process state (nothing shared in
    /// memory with `self`). `self` must outlive the result, which owns only an
    /// unused temporary directory.
    pub async fn restart(&self) -> TestApp {
        let app = App::build(&self.config).await.expect("server restarts");
        let addr = app.local_addr().expect("addr");
        tokio::spawn(app.run(std::future::pending()));
        TestApp {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            db: self.db,
            config: self.config.clone(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The absolute URL of a `Location` header (which may be relative).
    pub fn url_of(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{}", self.base, location)
        }
    }

    /// `host:port`, as image references name this registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.base, path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.expect("request")
    }

    pub async fn head(&self, path: &str) -> Response {
        self.req(Method::HEAD, path).send().await.expect("request")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.req(Method::DELETE, path)
            .send()
            .await
            .expect("request")
    }

    /// A second connection to this registry's database, as another process
    /// (`cairn gc`, a replica) has one; for tests that act beside the server.
    pub async fn metadata(&self) -> cairn::metadata::Metadata {
        cairn::metadata::Metadata::connect(&cairn::metadata::DbOptions {
            url: self.config.database.url.clone(),
            max_connections: 4,
            acquire_timeout: std::time::Duration::from_secs(10),
        })
        .await
        .expect("connect to the registry's database")
    }

    /// Uploads `data` with a single POST and returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let r = self
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            )
            .body(data.to_vec())
            .send()
            .await
            .expect("request");
        assert_eq!(
            r.status(),
            201,
            "blob push: {}",
            r.text().await.unwrap_or_default()
        );
        digest
    }

    /// Pushes a manifest under `reference` and returns the response.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("request")
    }

    /// Pushes a config and one layer, then an OCI image manifest naming them
    /// under `reference`; returns (manifest bytes, manifest digest).
    pub async fn push_image(&self, repo: &str, reference: &str, layer: &[u8]) -> (Vec<u8>, String) {
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let cd = self.push_blob(repo, config).await;
        let ld = self.push_blob(repo, layer).await;
        let m = image_manifest(&cd, config.len(), &[(ld, layer.len())], None, None);
        let r = self.put_manifest(repo, reference, OCI_MANIFEST, &m).await;
        assert_eq!(
            r.status(),
            201,
            "manifest push: {}",
            r.text().await.unwrap_or_default()
        );
        let d = sha256(&m);
        (m, d)
    }
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Polls `caught_up` every 50 ms until it holds, failing (with `what` it
/// last saw) once `TAG_CACHE_TTL` and some slack have passed since `since`:
/// the longest a server may serve what another process changed.
pub async fn within_cache_ttl<F, Fut>(since: std::time::Instant, mut caught_up: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let bound = cairn::service::TAG_CACHE_TTL + std::time::Duration::from_millis(500);
    loop {
        let Err(what) = caught_up().await else {
            return;
        };
        assert!(
            since.elapsed() < bound,
            "still stale after {:?}: {what}",
            since.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Deterministic, incompressible bytes unique to `seed`.
pub fn seeded_bytes(seed: usize, len: usize) -> Vec<u8> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64 ^ (seed as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An OCI image manifest; `subject` is `(digest, size)`.
pub fn image_manifest(
    config: &str,
    config_size: usize,
    layers: &[(String, usize)],
    artifact_type: Option<&str>,
    subject: Option<(&str, usize)>,
) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": layers.iter().map(|(d, s)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s
        })).collect::<Vec<_>>(),
    });
    if let Some(a) = artifact_type {
        m["artifactType"] = a.into();
    }
    if let Some((d, s)) = subject {
        m["subject"] = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d, "size": s});
    }
    serde_json::to_vec(&m).expect("json")
}

/// The error code of an OCI error response.
pub async fn error_code(r: Response) -> String {
    let v: serde_json::Value = r.json().await.expect("error body is JSON");
    v["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_string()
}

/// Runs each listed async test body against SQLite and against PostgreSQL;
/// `both!(with tweak: a, b)` starts the registry with its configuration
/// adjusted by the function `tweak` (a sibling of the test bodies).
#[macro_export]
macro_rules! both {
    (with $tweak:ident: $($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::helpers::TestApp::spawn_with($crate::helpers::Db::Sqlite, super::$tweak).await).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::helpers::TestApp::spawn_with($crate::helpers::Db::Postgres, super::$tweak).await).await
                }
            }
        )*
    };
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::helpers::TestApp::spawn($crate::helpers::Db::Sqlite).await).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::helpers::TestApp::spawn($crate::helpers::Db::Postgres).await).await
                }
            }
        )*
    };
}

/// A `cairn serve` child process, killed (SIGKILL) and reaped when dropped,
/// also when an assertion fails.
pub struct Serve {
    pub child: std::process::Child,
    pub base: String,
}

impl Serve {
    /// Starts `cairn serve` in `dir` on a free loopback port, with JSON logs and
    /// `env` on top, and returns once it listens. A server that exits first
    /// fails the test with its log.
    pub fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Serve {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("serve")
            .current_dir(dir)
            .env("CAIRN_LISTEN", "127.0.0.1:0")
            .env("CAIRN_LOG__FORMAT", "json")
            .env("CAIRN_LOG__LEVEL", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start cairn");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let addr = loop {
            let Some(line) = lines.next() else {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                panic!(
                    "cairn exited before listening ({status}); its log:\n{}",
                    seen.join("\n")
                );
            };
            let line = line.expect("read log");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(a) = v["fields"]["address"].as_str() {
                break a.to_string();
            }
            seen.push(line);
        };
        // Keep draining the log so the child never blocks on a full pipe;
        // with CAIRN_TEST_SERVER_LOG set, append it to that file to debug.
        let keep = std::env::var_os("CAIRN_TEST_SERVER_LOG").and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        let pid = child.id();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut keep = keep;
            for line in lines.map_while(Result::ok) {
                if let Some(f) = keep.as_mut() {
                    // One write per line: with O_APPEND the lines of
                    // servers logging at once do not interleave.
                    let _ = f.write_all(format!("{pid} {line}\n").as_bytes());
                }
            }
        });
        Serve {
            child,
            base: format!("http://{addr}"),
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}
