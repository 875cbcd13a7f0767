//! Typed configuration: built-in defaults, then an optional TOML file, then
//! `CAIRN_*` environment variables (nested keys joined by `__`, e.g.
//! `CAIRN_DATABASE__URL`). With nothing set, Cairn runs the embedded default:
//! 127.0.0.1:5000, SQLite at `./data/cairn.db`, blobs under `./data/blobs`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::policy::retention::{PolicySpec, RetentionPolicy};
use crate::policy::{RuleSet, RuleSpec};
use crate::service::Limits;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub immutability: ImmutabilityConfig,
    pub metrics: MetricsConfig,
    pub retention: RetentionSection,
    pub gc: GcConfig,
    pub auth: AuthConfig,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://user:password@host/db`.
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// An object_store URL: `file:///abs/path` (or `file://./relative`),
    /// `memory://`, `s3://bucket/prefix`, `gs://…`, `az://…`.
    pub url: String,
    /// Settings of an `s3://` store; each overrides the matching `AWS_*`
    /// environment variable.
    #[serde(default, skip_serializing_if = "S3Config::is_empty")]
    pub s3: S3Config,
    /// Seconds one request to a remote store (S3, GCS, Azure) may take, from
    /// connecting until its response body is read; a timed-out request is
    /// retried, then the client gets `503`. For the long transfers (see
    /// `transfer_timeout_secs`): seconds without a byte, or until the store
    /// starts answering.
    pub timeout_secs: u64,
    /// Seconds one long transfer to or from a remote store may take in all: a
    /// blob streamed to a client, a multipart part or the completion of a
    /// multipart upload, a server-side copy. S3 documents that completing a
    /// multi-GiB upload can take minutes, and a pull lasts as long as the
    /// client reads.
    pub transfer_timeout_secs: u64,
    /// Seconds to establish a connection to a remote store.
    pub connect_timeout_secs: u64,
    /// Retries of a failed request to a remote store.
    pub max_retries: usize,
    /// Seconds after a request's first attempt when no retry starts any more.
    pub retry_timeout_secs: u64,
}

/// `[storage.s3]`: how to reach an S3 or S3-compatible store (MinIO, Ceph,
/// moto…). Unset keys fall back to the standard `AWS_*` environment variables
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:9000` for a local S3-compatible server. Absent:
    /// AWS's endpoint for the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Address the bucket in the path (`endpoint/bucket/key`) rather than in
    /// the host name (`bucket.endpoint/key`); most S3-compatible servers want it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Allow a plain `http://` endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// Answer a blob `GET` with `307 Temporary Redirect` to a presigned URL of
    /// the object, so the bytes go from the bucket to the client without
    /// passing through the registry. Off by default; `HEAD` and ranged `GET`s
    /// are always answered by the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_pulls: Option<bool>,
    /// How long a presigned URL stays valid, in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presign_expiry_secs: Option<u64>,
}

/// Lifetime of a presigned pull URL unless `presign_expiry_secs` says otherwise.
pub const DEFAULT_PRESIGN_EXPIRY_SECS: u64 = 300;

impl S3Config {
    pub fn is_empty(&self) -> bool {
        self == &S3Config::default()
    }

    /// How long presigned pull URLs live, when pulls are redirected.
    pub fn pull_redirect(&self) -> Option<std::time::Duration> {
        self.redirect_pulls.unwrap_or(false).then(|| {
            std::time::Duration::from_secs(
                self.presign_expiry_secs
                    .unwrap_or(DEFAULT_PRESIGN_EXPIRY_SECS)
                    .max(1),
            )
        })
    }

    /// As `object_store` configuration keys.
    pub fn options(&self) -> Vec<(String, String)> {
        let keys = [
            ("aws_endpoint", self.endpoint.clone()),
            ("aws_region", self.region.clone()),
            (
                "aws_virtual_hosted_style_request",
                self.path_style.map(|p| (!p).to_string()),
            ),
            ("aws_allow_http", self.allow_http.map(|a| a.to_string())),
            ("aws_access_key_id", self.access_key_id.clone()),
            ("aws_secret_access_key", self.secret_access_key.clone()),
            ("aws_session_token", self.session_token.clone()),
        ];
        keys.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect()
    }
}

/// Secrets stay out of logs and error messages.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("redirect_pulls", &self.redirect_pulls)
            .field("presign_expiry_secs", &self.presign_expiry_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_manifest_bytes: u64,
    /// 0 means unlimited.
    pub max_blob_bytes: u64,
    pub allow_sparse_manifests: bool,
    pub max_page: u32,
    /// Upload sessions idle this long (seconds) are cancelled and their chunks
    /// deleted; 0 keeps them forever.
    pub upload_expiry_secs: u64,
    /// Open upload sessions allowed at once (all repositories); beyond it a new
    /// upload gets 429 with `Retry-After`. 0: no limit. Counted as the sessions
    /// holding chunks plus those opened in the last second: an opened session
    /// that has received nothing is only its id.
    pub max_upload_sessions: u64,
    /// A client must send a request's headers within this many seconds of
    /// connecting or of its previous request (slow-loris); else the connection
    /// is closed.
    pub header_read_timeout_secs: u64,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// A request body that sends nothing for this many seconds is abandoned with
    /// 408. 0: no limit.
    pub body_idle_timeout_secs: u64,
    /// Requests one client address may have in progress at once; beyond it 429
    /// with `Retry-After`. 0: no limit.
    pub max_requests_per_client: usize,
}

/// Tag immutability rules (see `policy::immutability`). Empty: every tag is
/// immutable.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImmutabilityConfig {
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Accept a rebuilt BuildKit image index under an immutable tag when it lists
    /// the same platform manifests and differs only in attestation manifests; the
    /// tag keeps its digest.
    #[serde(default)]
    pub buildkit_index_equivalence: bool,
}

/// Retention policies (see `policy::retention`) and their schedule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    /// Seconds between scheduled `retention apply` runs inside `serve`; 0 (the
    /// default) runs retention only when asked (`cairn retention apply`, API).
    #[serde(default)]
    pub apply_interval_secs: u64,
}

/// Online garbage collection of unreferenced blobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// Seconds between collections inside `serve`; 0 turns the schedule off
    /// (`cairn gc` still works).
    pub interval_secs: u64,
    /// A blob written or referenced by a push within this many seconds is never
    /// collected: the window in which an upload's blob waits for its manifest.
    pub grace_secs: u64,
}

/// Prometheus metrics and pull statistics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Record Prometheus metrics and serve `GET /metrics`. Off: nothing is
    /// recorded on the request path and `/metrics` is 404.
    pub enabled: bool,
    /// Serve `/metrics` on this address instead of the main listener (so it can
    /// stay off the network clients reach). Absent: on the main listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Distinct repositories that get their own label value; the rest are
    /// counted under `repository="other"`, which bounds the series count.
    pub max_repositories: usize,
    /// Count pulls per manifest, tag and repository in the database.
    pub pull_stats: bool,
    /// Seconds between flushes of pull statistics (aggregated in memory, never
    /// written on the pull path); a crash loses at most this much.
    pub pull_stats_flush_secs: u64,
}

/// Who may reach `/metrics` when credentials are required.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// Anyone who reaches the listener (put it on a private address with
    /// `metrics.listen`).
    Open,
    /// An account holding `admin` or `auditor` over `**` (basic credentials or
    /// a token), e.g. a robot for the Prometheus scraper.
    Token,
}

/// Access control (see README.md, "Access control").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Require credentials on every route even while no account exists. Once
    /// any account exists they are required anyway.
    pub required: bool,
    /// Serve with no account on a non-loopback address, open to everyone.
    /// Without it (or `cairn serve --insecure-open`) Cairn refuses to start there.
    pub insecure_open: bool,
    /// The `service` named in challenges and tokens (the token audience).
    pub service: String,
    /// The token endpoint announced in `WWW-Authenticate`. Absent: built from
    /// the request's `Host` (and `X-Forwarded-Proto`) + `/auth/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Lifetime of access tokens, in seconds.
    pub token_ttl_secs: u64,
    /// Lifetime of refresh tokens (docker's identity token), in seconds.
    pub refresh_token_ttl_secs: u64,
    /// A PKCS#8 Ed25519 private key (PEM or DER) that signs tokens. Absent: a
    /// key generated on first start and kept in the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<std::path::PathBuf>,
    /// Repository globs anyone may pull from without credentials.
    #[serde(default)]
    pub anonymous_pull: Vec<String>,
    /// Who may read `/metrics` on the main listener.
    pub metrics: MetricsAccess,
    /// Failed logins per account, and per client address, before a lockout.
    pub max_failed_logins_per_account: u32,
    pub max_failed_logins_per_client: u32,
    /// The window failures are counted in, and the lockout's length (seconds).
    pub lockout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `cairn=debug,tower_http=info`.
    pub level: String,
    /// OTLP/HTTP endpoint receiving request spans (e.g.
    /// `http://127.0.0.1:4318/v1/traces`); needs a build with `--features otel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        let l = Limits::default();
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            database: DatabaseConfig {
                url: "sqlite://./data/cairn.db".into(),
                max_connections: 16,
                acquire_timeout_secs: 5,
            },
            storage: StorageConfig {
                url: "file://./data/blobs".into(),
                s3: S3Config::default(),
                timeout_secs: 30,
                transfer_timeout_secs: 3600,
                connect_timeout_secs: 5,
                max_retries: 3,
                retry_timeout_secs: 10,
            },
            limits: LimitsConfig {
                max_manifest_bytes: l.max_manifest_bytes,
                max_blob_bytes: 0,
                allow_sparse_manifests: l.allow_sparse_manifests,
                max_page: l.max_page,
                upload_expiry_secs: 24 * 60 * 60,
                max_upload_sessions: 10_000,
                header_read_timeout_secs: 30,
                max_header_bytes: 64 << 10,
                body_idle_timeout_secs: 60,
                max_requests_per_client: 256,
            },
            log: LogConfig {
                format: "pretty".into(),
                level: "info".into(),
                otlp_endpoint: None,
            },
            immutability: ImmutabilityConfig::default(),
            metrics: MetricsConfig {
                enabled: true,
                listen: None,
                max_repositories: 1000,
                pull_stats: true,
                pull_stats_flush_secs: 5,
            },
            retention: RetentionSection::default(),
            gc: GcConfig {
                interval_secs: 60 * 60,
                grace_secs: 24 * 60 * 60,
            },
            auth: AuthConfig {
                required: false,
                insecure_open: false,
                service: "cairn".into(),
                realm: None,
                token_ttl_secs: 300,
                refresh_token_ttl_secs: 14 * 24 * 60 * 60,
                signing_key_file: None,
                anonymous_pull: Vec::new(),
                metrics: MetricsAccess::Token,
                max_failed_logins_per_account: 5,
                max_failed_logins_per_client: 20,
                lockout_secs: 60,
            },
            shutdown_timeout_secs: 30,
        }
    }
}

impl Config {
    /// Defaults, then `file` if given, then `CAIRN_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = file {
            if !p.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "configuration file {} does not exist",
                    p.display()
                ))));
            }
            f = f.merge(Toml::file(p));
        }
        // Only variables naming a configuration section are configuration:
        // CAIRN_CONFIG and CAIRN_LOG belong to the CLI, and other CAIRN_* variables
        // (CAIRN_PORT injected by Kubernetes for a service called cairn, test
        // settings) must not stop the registry from starting. Unknown keys *inside*
        // a known section are still refused.
        let sections = Config::sections();
        f.merge(
            Env::prefixed("CAIRN_")
                .ignore(&["config", "log"])
                .filter(move |key| {
                    let key = key.as_str().to_ascii_lowercase();
                    let first = key.split("__").next().unwrap_or("");
                    sections.iter().any(|s| s == first)
                })
                .split("__"),
        )
        .extract()
        .map_err(Box::new)
    }

    /// The top-level keys of the configuration (`listen`, `database`, …).
    fn sections() -> Vec<String> {
        match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(t)) => t.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_manifest_bytes: self.limits.max_manifest_bytes,
            max_blob_bytes: if self.limits.max_blob_bytes == 0 {
                u64::MAX
            } else {
                self.limits.max_blob_bytes
            },
            allow_sparse_manifests: self.limits.allow_sparse_manifests,
            max_page: self.limits.max_page.max(1),
            max_upload_sessions: self.limits.max_upload_sessions,
            upload_expiry: std::time::Duration::from_secs(self.limits.upload_expiry_secs),
            body_idle_timeout: std::time::Duration::from_secs(self.limits.body_idle_timeout_secs),
            gc_grace: std::time::Duration::from_secs(self.gc.grace_secs),
            pull_redirect: self.storage.s3.pull_redirect(),
        }
    }

    /// This configuration with its secrets replaced by `<redacted>`, for
    /// printing (`cairn config`): the S3 secret key and session token, and a
    /// password in the database URL.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let hide = |v: &mut Option<String>| {
            if v.is_some() {
                *v = Some("<redacted>".into());
            }
        };
        hide(&mut c.storage.s3.secret_access_key);
        hide(&mut c.storage.s3.session_token);
        if let Ok(mut url) = url::Url::parse(&c.database.url) {
            if url.password().is_some() && url.set_password(Some("redacted")).is_ok() {
                c.database.url = url.to_string();
            }
        }
        c
    }

    /// The policies as recorded in the audit trail when they change.
    pub fn policy_document(&self) -> serde_json::Value {
        serde_json::json!({
            "immutability": self.immutability,
            "retention": self.retention.policies,
        })
    }

    /// The compiled retention policies; an invalid one is an error naming it.
    pub fn retention(&self) -> Result<RetentionPolicy, crate::policy::retention::PolicyError> {
        RetentionPolicy::new(self.retention.policies.clone())
    }

    /// The compiled immutability rules; an invalid rule is an error naming it.
    pub fn rules(&self) -> Result<RuleSet, crate::policy::immutability::RuleError> {
        let mut rules = RuleSet::new(&self.immutability.rules)?;
        rules.index_equivalence = self.immutability.buildkit_index_equivalence;
        Ok(rules)
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.database.acquire_timeout_secs)
    }

    /// The blob store named by `storage`.
    pub fn blob_store(&self) -> Result<crate::storage::BlobStore, crate::storage::Error> {
        crate::storage::BlobStore::open_with(
            &self.storage_url()?,
            &self.storage.s3.options(),
            &self.outbound(),
        )
    }

    /// The time limits of requests to a remote object store.
    pub fn outbound(&self) -> crate::storage::Outbound {
        let s = &self.storage;
        crate::storage::Outbound {
            timeout: Duration::from_secs(s.timeout_secs.max(1)),
            transfer_timeout: Duration::from_secs(s.transfer_timeout_secs.max(1)),
            connect_timeout: Duration::from_secs(s.connect_timeout_secs.max(1)),
            max_retries: s.max_retries,
            retry_timeout: Duration::from_secs(s.retry_timeout_secs),
        }
    }

    /// The storage URL with a relative `file://` path made absolute.
    pub fn storage_url(&self) -> std::io::Result<String> {
        let u = &self.storage.url;
        if let Some(rest) = u.strip_prefix("file://") {
            if !rest.starts_with('/') {
                std::fs::create_dir_all(rest)?;
                let abs = std::fs::canonicalize(rest)?;
                return Ok(url::Url::from_directory_path(&abs)
                    .map_err(|_| std::io::Error::other("bad storage path"))?
                    .to_string());
            }
        }
        Ok(u.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_example_config_loads_and_matches_the_defaults_it_documents() {
        // Inside a jail: the other tests set CAIRN_* variables, and the jail's
        // lock keeps them from running at the same time as this one.
        figment::Jail::expect_with(|_| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cairn.example.toml");
            let c = Config::load(Some(&path)).map_err(|e| e.to_string())?;
            assert_eq!(c, Config::default());
            Ok(())
        });
    }

    #[test]
    fn s3_settings_become_object_store_keys_and_secrets_stay_out_of_debug() {
        let s3 = S3Config {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("eu-west-1".into()),
            path_style: Some(true),
            allow_http: Some(true),
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("very-secret".into()),
            session_token: None,
            redirect_pulls: None,
            presign_expiry_secs: None,
        };
        assert_eq!(
            s3.pull_redirect(),
            None,
            "pulls are not redirected by default"
        );
        let redirecting = S3Config {
            redirect_pulls: Some(true),
            ..S3Config::default()
        };
        assert_eq!(
            redirecting.pull_redirect(),
            Some(std::time::Duration::from_secs(DEFAULT_PRESIGN_EXPIRY_SECS))
        );
        let opts: std::collections::BTreeMap<_, _> = s3.options().into_iter().collect();
        assert_eq!(opts["aws_endpoint"], "http://127.0.0.1:9000");
        assert_eq!(opts["aws_region"], "eu-west-1");
        assert_eq!(opts["aws_virtual_hosted_style_request"], "false");
        assert_eq!(opts["aws_allow_http"], "true");
        assert_eq!(opts["aws_secret_access_key"], "very-secret");
        assert!(!opts.contains_key("aws_session_token"));
        assert!(!format!("{s3:?}").contains("very-secret"));
        assert!(S3Config::default().options().is_empty());
    }

    #[test]
    // figment's Jail closures return figment's (large) error type.
    #[allow(clippy::result_large_err)]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "listen = \"127.0.0.1:6000\"\n[database]\nurl = \"sqlite://x.db\"\n",
            )?;
            jail.set_env("CAIRN_DATABASE__URL", "postgres://u@127.0.0.1/db");
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 6000);
            assert_eq!(c.database.url, "postgres://u@127.0.0.1/db");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn cli_and_foreign_variables_are_not_config_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CAIRN_CONFIG", "/etc/cairn.toml");
            jail.set_env("CAIRN_LOG", "debug");
            jail.set_env("CAIRN_LOG__FORMAT", "json");
            jail.set_env("CAIRN_PORT", "tcp://10.0.0.1:5000");
            jail.set_env("CAIRN_TEST_POSTGRES_URL", "postgres://x@127.0.0.1/y");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.log.format, "json");
            assert_eq!(c.log.level, "info");
            // A typo inside a known section is still an error.
            jail.set_env("CAIRN_DATABASE__URLL", "x");
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    // figment's Jail closures return figment's (large) error type.
    #[allow(clippy::result_large_err)]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "lisen = \"127.0.0.1:6000\"\n")?;
            assert!(Config::load(Some(Path::new("c.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn printed_configuration_hides_secrets() {
        let mut c = Config::default();
        c.storage.s3.secret_access_key = Some("very-secret".into());
        c.database.url = "postgres://cairn:hunter2@127.0.0.1/cairn".into();
        let text = toml::to_string_pretty(&c.redacted()).expect("toml");
        assert!(
            !text.contains("very-secret") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(text.contains("<redacted>") && text.contains("cairn:redacted@127.0.0.1"));
    }

    /// README.md's "Configuration reference" table, checked against the code:
    /// it names every key of `Config` and no other, each row's environment
    /// variable is the one `Config::load` reads for that key (set, it changes
    /// that key), and each row's default is the built-in default.
    mod reference {
        use super::*;

        const HEADING: &str = "## Configuration reference";

        /// Every key as `section.key`: the fields of `Config`'s derived `Debug`,
        /// which names each field whether it is set or not (the TOML form leaves
        /// out unset options).
        fn keys() -> Vec<String> {
            let text = format!("{:#?}", Config::default());
            let mut path: Vec<String> = Vec::new();
            let mut keys = Vec::new();
            for line in text.lines().skip(1) {
                let depth = (line.len() - line.trim_start().len()) / 4;
                let Some((name, value)) = line.trim_start().split_once(": ") else {
                    continue;
                };
                if depth == 0
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    continue;
                }
                path.truncate(depth - 1);
                if value.ends_with('{') {
                    path.push(name.to_string());
                } else {
                    let mut key = path.clone();
                    key.push(name.to_string());
                    keys.push(key.join("."));
                }
            }
            keys
        }

        /// The defaults that are set, by key, from the TOML form.
        fn defaults() -> std::collections::BTreeMap<String, toml::Value> {
            fn walk(
                prefix: &str,
                v: &toml::Value,
                out: &mut std::collections::BTreeMap<String, toml::Value>,
            ) {
                match v {
                    toml::Value::Table(t) => {
                        for (k, v) in t {
                            let key = if prefix.is_empty() {
                                k.clone()
                            } else {
                                format!("{prefix}.{k}")
                            };
                            walk(&key, v, out);
                        }
                    }
                    other => {
                        out.insert(prefix.to_string(), other.clone());
                    }
                }
            }
            let mut out = std::collections::BTreeMap::new();
            walk(
                "",
                &toml::Value::try_from(Config::default()).expect("toml"),
                &mut out,
            );
            out
        }

        pub(super) fn env_var(key: &str) -> String {
            format!("CAIRN_{}", key.to_ascii_uppercase().replace('.', "__"))
        }

        /// The table's rows: key, environment variable, default (cells without
        /// their backticks).
        fn rows() -> Vec<(String, String, String)> {
            let readme =
                std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                    .expect("README.md");
            let start = readme
                .find(HEADING)
                .unwrap_or_else(|| panic!("README.md has no {HEADING:?} section"));
            let section = &readme[start + HEADING.len()..];
            let section = &section[..section.find("\n## ").unwrap_or(section.len())];
            section
                .lines()
                .filter(|l| l.starts_with("| `"))
                .map(|l| {
                    let cells: Vec<&str> = l.trim().trim_matches('|').split(" | ").collect();
                    assert!(cells.len() >= 4, "a row of four cells: {l}");
                    let bare = |c: &str| c.trim().trim_matches('`').to_string();
                    (bare(cells[0]), bare(cells[1]), cells[2].trim().to_string())
                })
                .collect()
        }

        #[test]
        fn the_readme_names_every_key_and_no_other_with_its_variable_and_default() {
            let keys = keys();
            let defaults = defaults();
            // The Debug walk sees every serialised key (same names, nothing missed).
            for k in defaults.keys() {
                assert!(keys.contains(k), "{k} is serialised but not found in Debug");
            }
            let rows = rows();
            let named: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
            let missing: Vec<&String> = keys
                .iter()
                .filter(|k| !named.contains(&k.as_str()))
                .collect();
            assert!(
                missing.is_empty(),
                "README.md's {HEADING:?} lacks {missing:?}"
            );
            let unknown: Vec<&&str> = named
                .iter()
                .filter(|n| !keys.iter().any(|k| k == *n))
                .collect();
            assert!(
                unknown.is_empty(),
                "README.md's {HEADING:?} names keys the code lacks: {unknown:?}"
            );
            assert_eq!(named.len(), keys.len(), "each key once: {named:?}");
            for (key, var, default) in &rows {
                assert_eq!(var, &env_var(key), "the variable of {key}");
                let expected = match defaults.get(key) {
                    Some(v) => format!("`{v}`"),
                    None => "unset".to_string(),
                };
                assert_eq!(default, &expected, "the default of {key}");
            }
        }

        /// A value for `key`'s variable other than its default, and what the
        /// key must then hold (`None`: a non-empty array, for lists of tables).
        fn sample(key: &str, default: Option<&toml::Value>) -> (String, Option<toml::Value>) {
            let s = |v: &str| (v.to_string(), Some(toml::Value::String(v.to_string())));
            match key {
                "listen" => s("127.0.0.1:6000"),
                "metrics.listen" => s("127.0.0.1:9191"),
                "auth.metrics" => s("open"),
                "storage.s3.path_style"
                | "storage.s3.allow_http"
                | "storage.s3.redirect_pulls" => {
                    ("true".into(), Some(toml::Value::Boolean(true)))
                }
                "storage.s3.presign_expiry_secs" => {
                    ("600".into(), Some(toml::Value::Integer(600)))
                }
                "auth.anonymous_pull" => (
                    "[\"public/**\"]".into(),
                    Some(toml::Value::Array(vec![toml::Value::String("public/**".into())])),
                ),
                "immutability.rules" => (
                    "[{name=\"env\", repositories=[\"**\"], tags=[\"latest\"], mutability=\"mutable\"}]"
                        .into(),
                    None,
                ),
                "retention.policies" => (
                    "[{name=\"env\", repositories=[\"**\"], keep_last=3}]".into(),
                    None,
                ),
                _ => match default {
                    Some(toml::Value::Boolean(b)) => {
                        ((!b).to_string(), Some(toml::Value::Boolean(!b)))
                    }
                    Some(toml::Value::Integer(n)) => {
                        ((n + 1).to_string(), Some(toml::Value::Integer(n + 1)))
                    }
                    Some(toml::Value::String(_)) | None => s("changed-by-env"),
                    Some(other) => panic!("no sample value for {key} (default {other})"),
                },
            }
        }

        #[test]
        #[allow(clippy::result_large_err)]
        fn each_keys_variable_overrides_it() {
            let defaults = defaults();
            for key in keys() {
                let (value, expected) = sample(&key, defaults.get(&key));
                let var = env_var(&key);
                figment::Jail::expect_with(|jail| {
                    jail.set_env(&var, &value);
                    let c = Config::load(None).map_err(|e| format!("{var}={value}: {e}"))?;
                    let loaded = toml::Value::try_from(&c).map_err(|e| e.to_string())?;
                    let got = key
                        .split('.')
                        .try_fold(&loaded, |v, k| v.get(k))
                        .unwrap_or_else(|| panic!("{key} absent after {var}={value}"));
                    match &expected {
                        Some(e) => assert_eq!(got, e, "{var}={value}"),
                        None => assert_eq!(
                            got.as_array().map(Vec::len),
                            Some(1),
                            "{var}={value} gives {got}"
                        ),
                    }
                    Ok(())
                });
            }
        }
    }
}
