//! `cairn-bench`: a load generator for any OCI Distribution registry.
//!
//! One invocation runs one scenario against one registry URL and prints one JSON
//! line: throughput, latency percentiles, errors and (with `--pid`) the server's
//! peak RSS and CPU time during the timed phase. Setup (blobs to pull, manifests,
//! the tags to list) happens before timing starts. Every loop is bounded by
//! `--ops` and/or `--duration`; requests only go to `--url`'s origin.
//!
//! ```sh
//! cairn-bench --url http://127.0.0.1:5000 --label cairn --scenario blob-push \
//!     --size 64MiB --concurrency 16 --ops 32 --duration 30 --pid $(pgrep -n cairn)
//! ```

#[path = "cairn_bench/payload.rs"]
mod payload;
#[path = "cairn_bench/procstat.rs"]
mod procstat;
#[path = "cairn_bench/rawget.rs"]
mod rawget;
#[path = "cairn_bench/registry.rs"]
mod registry;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::StreamExt as _;
use serde_json::{json, Value};

use payload::{Blob, BlobTemplate};
use registry::{Registry, OCI_MANIFEST};

#[derive(Parser, Debug)]
#[command(
    name = "cairn-bench",
    about = "Load generator for OCI Distribution registries (prints one JSON line per run)"
)]
struct Args {
    /// Registry base URL; the only origin the tool talks to.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    url: String,
    /// Name of the registry in the output (e.g. cairn-sqlite, distribution).
    #[arg(long, default_value = "registry")]
    label: String,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Blob size for blob scenarios: bytes, or with KiB/MiB/GiB (K/M/G) suffix.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    size: u64,
    /// PATCH chunk size for blob-push-chunked.
    #[arg(long, default_value = "5MiB", value_parser = parse_size)]
    chunk_size: u64,
    /// Operations in flight at once (one task each, sharing one connection pool).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Stop after this many operations (0: no count limit).
    #[arg(long, default_value_t = 0)]
    ops: u64,
    /// Start no operation after this many seconds (0: no time limit); operations
    /// in flight finish.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop early after this many failed operations.
    #[arg(long, default_value_t = 50)]
    max_errors: u64,
    /// Server process id: report its peak RSS and CPU seconds over the timed phase.
    #[arg(long)]
    pid: Option<u32>,
    /// Repository namespace the scenarios use (`<prefix>/push`, `<prefix>/pull`, …).
    #[arg(long, default_value = "bench")]
    repo_prefix: String,
    /// Tags in the repository for tag-list.
    #[arg(long, default_value_t = 1000)]
    tags: usize,
    /// Page size (`?n=`) for tag-list.
    #[arg(long, default_value_t = 100)]
    page: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Also print one JSON line per this many seconds of the timed phase (ops/s,
    /// latency percentiles, errors and, with `--pid`, the server's current RSS
    /// over that window); 0: only the final line.
    #[arg(long, default_value_t = 0.0)]
    report_every: f64,
    /// Extra `key=value` fields copied into the JSON line (repeatable).
    #[arg(long = "meta", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("--meta {s:?}: expected key=value"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// POST, then PUT ?digest= with the whole blob (unique blob per operation).
    BlobPush,
    /// POST, PATCH chunks of --chunk-size with Content-Range, PUT ?digest=.
    BlobPushChunked,
    /// GET one blob (pushed during setup), counting bytes.
    BlobPull,
    /// GET one blob and verify its sha256 client-side.
    BlobPullVerify,
    /// PUT a new manifest under a new unique tag.
    ManifestPush,
    /// GET a manifest by tag.
    ManifestPullTag,
    /// GET a manifest by digest.
    ManifestPullDigest,
    /// List --tags tags, --page per page, following Link headers (one op = all pages).
    TagList,
    /// A mix, by operation number: 2 in 10 push a unique blob of --size, 1 in
    /// 10 pushes a manifest under a new tag, 4 in 10 pull (and verify) a blob
    /// of --size, 3 in 10 pull a manifest by tag. For long runs (`scripts/soak.sh`).
    Soak,
}

impl Scenario {
    fn name(self) -> String {
        self.to_possible_value().unwrap().get_name().to_string()
    }
    fn uses_size(self) -> bool {
        matches!(
            self,
            Scenario::BlobPush
                | Scenario::BlobPushChunked
                | Scenario::BlobPull
                | Scenario::BlobPullVerify
                | Scenario::Soak
        )
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("bad size {s:?}"))
}

fn size_label(n: u64) -> String {
    for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= m && n % m == 0 {
            return format!("{}{unit}", n / m);
        }
    }
    format!("{n}B")
}

/// What each operation needs, prepared by setup.
enum Work {
    Push {
        repo: String,
        template: BlobTemplate,
        chunk: Option<u64>,
    },
    Pull {
        repo: String,
        blob: Blob,
        verify: bool,
    },
    ManifestPush {
        repo: String,
        config: Blob,
        layer: Blob,
    },
    ManifestPull {
        repo: String,
        reference: String,
        digest: String,
    },
    TagList {
        repo: String,
        page: usize,
        expect: usize,
    },
    Soak {
        repo: String,
        template: Box<BlobTemplate>,
        pull: Blob,
        config: Blob,
        layer: Blob,
    },
}

struct Ctx {
    reg: Registry,
    work: Work,
    nonce: String,
}

/// One operation: `Ok((payload bytes, HTTP requests))`.
async fn run_op(ctx: &Ctx, i: u64) -> Result<(u64, u64), String> {
    match &ctx.work {
        Work::Push {
            repo,
            template,
            chunk,
        } => {
            let blob = template.instance(&format!("cairn-bench {} op {i}", ctx.nonce));
            match chunk {
                None => {
                    ctx.reg.push_monolithic(repo, &blob).await?;
                    Ok((blob.len(), 2))
                }
                Some(c) => {
                    ctx.reg.push_chunked(repo, &blob, *c).await?;
                    Ok((blob.len(), 2 + blob.len().div_ceil(*c)))
                }
            }
        }
        Work::Pull { repo, blob, verify } => {
            let n = ctx
                .reg
                .pull_blob(repo, &blob.digest, blob.len(), *verify)
                .await?;
            Ok((n, 1))
        }
        Work::ManifestPush {
            repo,
            config,
            layer,
        } => {
            let id = format!("{}-{i}", ctx.nonce);
            let body = manifest(config, layer, &id);
            ctx.reg
                .put_manifest(repo, &format!("p-{id}"), &body)
                .await?;
            Ok((body.len() as u64, 1))
        }
        Work::ManifestPull {
            repo,
            reference,
            digest,
        } => {
            let n = ctx.reg.get_manifest(repo, reference, digest).await?;
            Ok((n, 1))
        }
        Work::Soak {
            repo,
            template,
            pull,
            config,
            layer,
        } => match i % 10 {
            0 | 1 => {
                let blob = template.instance(&format!("cairn-bench {} op {i}", ctx.nonce));
                ctx.reg.push_monolithic(repo, &blob).await?;
                Ok((blob.len(), 2))
            }
            2 => {
                let id = format!("{}-{i}", ctx.nonce);
                let body = manifest(config, layer, &id);
                ctx.reg
                    .put_manifest(repo, &format!("p-{id}"), &body)
                    .await?;
                Ok((body.len() as u64, 1))
            }
            3..=6 => {
                let n = ctx
                    .reg
                    .pull_blob(repo, &pull.digest, pull.len(), true)
                    .await?;
                Ok((n, 1))
            }
            _ => {
                let digest = registry::sha256_digest(&manifest(config, layer, "pull"));
                let n = ctx.reg.get_manifest(repo, "pull", &digest).await?;
                Ok((n, 1))
            }
        },
        Work::TagList { repo, page, expect } => {
            let (tags, pages, bytes) = ctx.reg.list_tags(repo, *page).await?;
            if tags < *expect {
                return Err(format!("tag list returned {tags} tags, expected {expect}"));
            }
            Ok((bytes, pages as u64))
        }
    }
}

fn manifest(config: &Blob, layer: &Blob, id: &str) -> Bytes {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer.digest,
            "size": layer.len(),
        }],
        "annotations": { "org.example.cairn-bench.id": id },
    });
    Bytes::from(serde_json::to_vec(&v).expect("manifest serialises"))
}

/// The config and layer blobs every benchmark manifest references.
fn manifest_blobs() -> (Blob, Blob) {
    let layer = BlobTemplate::new(1024, 42).instance("cairn-bench layer");
    let config = Bytes::from(
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
        }))
        .expect("config serialises"),
    );
    let config = Blob {
        digest: registry::sha256_digest(&config),
        prefix: config,
        tail: Bytes::new(),
    };
    (config, layer)
}

async fn ensure_blob(reg: &Registry, repo: &str, blob: &Blob) -> Result<(), String> {
    if !reg.blob_exists(repo, &blob.digest).await? {
        reg.push_monolithic(repo, blob).await?;
    }
    Ok(())
}

/// Prepares the registry for the scenario (untimed).
async fn setup(args: &Args, reg: &Registry) -> Result<Work, String> {
    let p = &args.repo_prefix;
    Ok(match args.scenario {
        Scenario::BlobPush | Scenario::BlobPushChunked => {
            let seed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            Work::Push {
                repo: format!("{p}/push"),
                template: BlobTemplate::new(args.size, seed),
                chunk: (args.scenario == Scenario::BlobPushChunked).then_some(args.chunk_size),
            }
        }
        Scenario::BlobPull | Scenario::BlobPullVerify => {
            let repo = format!("{p}/pull");
            let blob = BlobTemplate::new(args.size, 0xC0FFEE ^ args.size)
                .instance("cairn-bench pull blob");
            ensure_blob(reg, &repo, &blob).await?;
            Work::Pull {
                repo,
                blob,
                verify: args.scenario == Scenario::BlobPullVerify,
            }
        }
        Scenario::ManifestPush => {
            let repo = format!("{p}/manifests");
            let (config, layer) = manifest_blobs();
            ensure_blob(reg, &repo, &config).await?;
            ensure_blob(reg, &repo, &layer).await?;
            Work::ManifestPush {
                repo,
                config,
                layer,
            }
        }
        Scenario::ManifestPullTag | Scenario::ManifestPullDigest => {
            let repo = format!("{p}/manifests");
            let (config, layer) = manifest_blobs();
            ensure_blob(reg, &repo, &config).await?;
            ensure_blob(reg, &repo, &layer).await?;
            let body = manifest(&config, &layer, "pull");
            let digest = reg.put_manifest(&repo, "pull", &body).await?;
            let reference = if args.scenario == Scenario::ManifestPullTag {
                "pull".to_string()
            } else {
                digest.clone()
            };
            Work::ManifestPull {
                repo,
                reference,
                digest,
            }
        }
        Scenario::Soak => {
            let repo = format!("{p}/soak");
            let (config, layer) = manifest_blobs();
            ensure_blob(reg, &repo, &config).await?;
            ensure_blob(reg, &repo, &layer).await?;
            reg.put_manifest(&repo, "pull", &manifest(&config, &layer, "pull"))
                .await?;
            let pull = BlobTemplate::new(args.size, 0x50A4 ^ args.size)
                .instance("cairn-bench soak pull blob");
            ensure_blob(reg, &repo, &pull).await?;
            let seed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            Work::Soak {
                repo,
                template: Box::new(BlobTemplate::new(args.size, seed)),
                pull,
                config,
                layer,
            }
        }
        Scenario::TagList => {
            let repo = format!("{p}/tags");
            let (have, _, _) = reg.list_tags(&repo, args.page).await?;
            if have < args.tags {
                let (config, layer) = manifest_blobs();
                ensure_blob(reg, &repo, &config).await?;
                ensure_blob(reg, &repo, &layer).await?;
                let body = manifest(&config, &layer, "tags");
                let width = args.tags.to_string().len().max(4);
                let results: Vec<Result<String, String>> = futures::stream::iter(0..args.tags)
                    .map(|i| {
                        let body = body.clone();
                        let repo = repo.clone();
                        async move {
                            reg.put_manifest(&repo, &format!("t{i:0width$}"), &body)
                                .await
                        }
                    })
                    .buffer_unordered(16)
                    .collect()
                    .await;
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    return Err(e);
                }
            }
            Work::TagList {
                repo,
                page: args.page,
                expect: args.tags,
            }
        }
    })
}

#[derive(Default)]
struct WorkerStats {
    latencies_ms: Vec<f64>,
    bytes: u64,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Outcomes since the last interval report.
#[derive(Default)]
struct Window {
    latencies_ms: Vec<f64>,
    errors: u64,
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    ctx: Arc<Ctx>,
    window: Option<Arc<std::sync::Mutex<Window>>>,
    next: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    max_ops: u64,
    max_errors: u64,
    deadline: Option<Instant>,
) -> WorkerStats {
    let mut s = WorkerStats::default();
    loop {
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if max_ops > 0 && i >= max_ops {
            break;
        }
        let t = Instant::now();
        let outcome = run_op(&ctx, i).await;
        if let Some(Ok(mut w)) = window.as_ref().map(|w| w.lock()) {
            match &outcome {
                Ok(_) => w.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3),
                Err(_) => w.errors += 1,
            }
        }
        match outcome {
            Ok((bytes, requests)) => {
                s.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
                s.bytes += bytes;
                s.requests += requests;
            }
            Err(e) => {
                s.errors += 1;
                s.first_error.get_or_insert(e);
                if failures.fetch_add(1, Ordering::Relaxed) + 1 >= max_errors {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    s
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

fn ms(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |x| json!(round(x, 3)))
}

/// One `--report-every` line: the window's operations, latencies and errors,
/// and the server's RSS at its end.
fn interval_record(
    mut m: serde_json::Map<String, Value>,
    n: u64,
    secs: f64,
    start: Instant,
    mut w: Window,
    pid: Option<&str>,
) -> Value {
    w.latencies_ms.sort_by(f64::total_cmp);
    let ops = w.latencies_ms.len();
    m.insert("interval".into(), json!(n));
    m.insert(
        "elapsed_s".into(),
        json!(round(start.elapsed().as_secs_f64(), 1)),
    );
    m.insert("seconds".into(), json!(round(secs, 3)));
    m.insert("ops".into(), json!(ops));
    m.insert("errors".into(), json!(w.errors));
    m.insert(
        "ops_per_s".into(),
        json!(round(ops as f64 / secs.max(1e-9), 2)),
    );
    m.insert("p50_ms".into(), ms(percentile(&w.latencies_ms, 50.0)));
    m.insert("p99_ms".into(), ms(percentile(&w.latencies_ms, 99.0)));
    m.insert("max_ms".into(), ms(w.latencies_ms.last().copied()));
    m.insert(
        "server_rss_mib".into(),
        pid.and_then(procstat::rss_kib)
            .map_or(Value::Null, |k| json!(round(k as f64 / 1024.0, 1))),
    );
    Value::Object(m)
}

fn base_record(args: &Args) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("scenario".into(), json!(args.scenario.name()));
    m.insert("registry".into(), json!(args.label));
    if args.scenario.uses_size() {
        m.insert("size".into(), json!(size_label(args.size)));
        m.insert("size_bytes".into(), json!(args.size));
    } else {
        m.insert("size".into(), Value::Null);
        m.insert("size_bytes".into(), Value::Null);
    }
    if args.scenario == Scenario::BlobPushChunked {
        m.insert("chunk_bytes".into(), json!(args.chunk_size));
    }
    m.insert("concurrency".into(), json!(args.concurrency));
    for (k, v) in &args.meta {
        m.insert(k.clone(), json!(v));
    }
    m
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let code = match run(&args).await {
        Ok(rec) => {
            println!("{rec}");
            0
        }
        Err(e) => {
            let mut m = base_record(&args);
            m.insert("setup_error".into(), json!(e));
            println!("{}", Value::Object(m));
            eprintln!("cairn-bench: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run(args: &Args) -> Result<Value, String> {
    if args.ops == 0 && args.duration <= 0.0 {
        return Err("give --ops and/or --duration: every run must be bounded".into());
    }
    if args.concurrency == 0 || args.page == 0 {
        return Err("--concurrency and --page must be at least 1".into());
    }
    let pool = args.concurrency.max(16) * 2;
    let reg = Registry::new(&args.url, pool, Duration::from_secs(args.timeout))?;
    reg.ping().await?;
    let setup_started = Instant::now();
    let work = setup(args, &reg).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();

    let nonce = format!(
        "{:x}{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros()),
        std::process::id()
    );
    let ctx = Arc::new(Ctx { reg, work, nonce });

    // Timed phase.
    let pid = args.pid.map(|p| p.to_string());
    let rss_reset = pid.as_deref().is_some_and(procstat::reset_peak_rss);
    let rss_start = pid.as_deref().and_then(procstat::rss_kib);
    let server_cpu0 = pid.as_deref().and_then(procstat::cpu_seconds);
    let client_cpu0 = procstat::cpu_seconds("self");
    let start = Instant::now();
    let deadline = (args.duration > 0.0).then(|| start + Duration::from_secs_f64(args.duration));
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let window =
        (args.report_every > 0.0).then(|| Arc::new(std::sync::Mutex::new(Window::default())));
    let reporter = window.clone().map(|w| {
        let every = Duration::from_secs_f64(args.report_every);
        let (pid, record, done) = (pid.clone(), base_record(args), stop.clone());
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let mut last = Instant::now();
            for n in 1u64.. {
                // Wakes at each interval, or early when the workers are done.
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = async { while !f.load(Ordering::Relaxed) { tokio::time::sleep(Duration::from_millis(100)).await } } => {}
                }
                // At the deadline the operations in flight are still ending:
                // they belong to this interval, not to one of their own a
                // fraction of a second long. (They end within their timeout.)
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    while !f.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                let w = match w.lock() {
                    Ok(mut g) => std::mem::take(&mut *g),
                    Err(_) => return,
                };
                let secs = last.elapsed().as_secs_f64();
                last = Instant::now();
                println!("{}", interval_record(record.clone(), n, secs, start, w, pid.as_deref()));
                if f.load(Ordering::Relaxed) || done.load(Ordering::Relaxed) {
                    return;
                }
            }
        });
        (task, finished)
    });
    let handles: Vec<_> = (0..args.concurrency)
        .map(|_| {
            tokio::spawn(worker(
                ctx.clone(),
                window.clone(),
                next.clone(),
                failures.clone(),
                stop.clone(),
                args.ops,
                args.max_errors.max(1),
                deadline,
            ))
        })
        .collect();
    let mut all = WorkerStats::default();
    for h in handles {
        let s = h.await.map_err(|e| format!("worker panicked: {e}"))?;
        all.latencies_ms.extend(s.latencies_ms);
        all.bytes += s.bytes;
        all.requests += s.requests;
        all.errors += s.errors;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some((task, finished)) = reporter {
        finished.store(true, Ordering::Relaxed);
        let _ = task.await;
    }
    let server_cpu = match (server_cpu0, pid.as_deref().and_then(procstat::cpu_seconds)) {
        (Some(a), Some(b)) => json!(round(b - a, 2)),
        _ => Value::Null,
    };
    let client_cpu = match (client_cpu0, procstat::cpu_seconds("self")) {
        (Some(a), Some(b)) => json!(round(b - a, 2)),
        _ => Value::Null,
    };
    let peak_rss = pid.as_deref().and_then(procstat::peak_rss_kib);

    let mut lat = all.latencies_ms;
    lat.sort_by(f64::total_cmp);
    let ops = lat.len() as u64;
    let mut m = base_record(args);
    m.insert("ops".into(), json!(ops));
    m.insert("errors".into(), json!(all.errors));
    m.insert("seconds".into(), json!(round(secs, 3)));
    m.insert("ops_per_s".into(), json!(round(ops as f64 / secs, 2)));
    m.insert(
        "mb_per_s".into(),
        json!(round(all.bytes as f64 / secs / 1e6, 2)),
    );
    m.insert("p50_ms".into(), ms(percentile(&lat, 50.0)));
    m.insert("p90_ms".into(), ms(percentile(&lat, 90.0)));
    m.insert("p99_ms".into(), ms(percentile(&lat, 99.0)));
    m.insert("max_ms".into(), ms(lat.last().copied()));
    m.insert("requests".into(), json!(all.requests));
    if args.scenario == Scenario::TagList {
        m.insert("tags".into(), json!(args.tags));
        m.insert("page".into(), json!(args.page));
        m.insert(
            "pages_per_op".into(),
            json!(round(all.requests as f64 / ops.max(1) as f64, 2)),
        );
    }
    m.insert(
        "server_peak_rss_mib".into(),
        peak_rss.map_or(Value::Null, |k| json!(round(k as f64 / 1024.0, 1))),
    );
    m.insert(
        "server_rss_start_mib".into(),
        rss_start.map_or(Value::Null, |k| json!(round(k as f64 / 1024.0, 1))),
    );
    // Whether the peak covers only the timed phase (VmHWM reset) or the process's life.
    if pid.is_some() {
        m.insert(
            "rss_peak_scope".into(),
            json!(if rss_reset { "run" } else { "process" }),
        );
    }
    m.insert("server_cpu_s".into(), server_cpu);
    m.insert("client_cpu_s".into(), client_cpu);
    m.insert("setup_s".into(), json!(round(setup_s, 3)));
    m.insert(
        "bounds".into(),
        json!({ "ops": args.ops, "duration_s": args.duration }),
    );
    m.insert(
        "first_error".into(),
        all.first_error.map_or(Value::Null, Value::String),
    );
    m.insert(
        "unix_time".into(),
        json!(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())),
    );
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("0").is_err());
        assert!(parse_size("3XB").is_err());
        assert_eq!(size_label(64 << 20), "64MiB");
        assert_eq!(size_label(4096), "4KiB");
        assert_eq!(size_label(1000), "1000B");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[3.0], 90.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
