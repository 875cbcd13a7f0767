//! Tests of the `cairn` binary as an operator runs it: a child process with its
//! own memory, signals and configuration.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

use crate::helpers::Serve;

/// A `cairn serve` child process on a free loopback port.
struct Server {
    serve: Serve,
    base: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts `cairn serve` with extra `CAIRN_*` settings.
    fn start_with(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all = vec![("CAIRN_SHUTDOWN_TIMEOUT_SECS", "20")];
        all.extend_from_slice(env);
        let s = Serve::start(dir.path(), &all);
        Server {
            base: s.base.clone(),
            serve: s,
            _dir: dir,
        }
    }

    /// Peak resident memory of the server so far, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.serve.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

const MIB: usize = 1 << 20;

/// A deterministic body of `mib` MiB, produced 1 MiB at a time.
fn generated(mib: usize) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::iter(0..mib).map(|i| {
        let mut chunk = vec![(i % 251) as u8; MIB];
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Ok(Bytes::from(chunk))
    })
}

fn generated_digest(mib: usize) -> String {
    let mut h = Sha256::new();
    for i in 0..mib {
        let mut chunk = vec![(i % 251) as u8; MIB];
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        h.update(&chunk);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[tokio::test]
async fn a_large_upload_streams_with_bounded_memory() {
    let server = Server::start();
    let client = reqwest::Client::new();
    // Warm up: one small push so pools and buffers exist before measuring.
    let r = client
        .post(format!(
            "{}/v2/warm/blobs/uploads/?digest={}",
            server.base,
            generated_digest(1)
        ))
        .body(reqwest::Body::wrap_stream(generated(1)))
        .send()
        .await
        .expect("warm-up push");
    assert_eq!(r.status(), 201);
    let before = server.peak_rss_kib();

    let mib = 1024;
    let digest = generated_digest(mib);
    let start = client
        .post(format!("{}/v2/big/blobs/uploads/", server.base))
        .send()
        .await
        .expect("start upload");
    assert_eq!(start.status(), 202);
    let location = start.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    // Streamed PATCH without Content-Range (chunked transfer encoding), then PUT.
    let r = client
        .patch(format!("{}{}", server.base, location))
        .body(reqwest::Body::wrap_stream(generated(mib)))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers()["range"],
        format!("0-{}", mib * MIB - 1).as_str()
    );
    let r = client
        .put(format!("{}{}?digest={}", server.base, location, digest))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201);

    // Pull it back, hashing as it streams.
    let r = client
        .get(format!("{}/v2/big/blobs/{}", server.base, digest))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some((mib * MIB) as u64));
    let mut h = Sha256::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        h.update(chunk.expect("chunk"));
    }
    assert_eq!(format!("sha256:{}", hex::encode(h.finalize())), digest);

    let growth_mib = (server.peak_rss_kib().saturating_sub(before)) / 1024;
    assert!(
        growth_mib < 32,
        "pushing and pulling a 1 GiB blob raised the server's peak RSS by {growth_mib} MiB"
    );
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_upload_finish() {
    let server = Server::start();
    let client = reqwest::Client::new();
    let mib = 8;
    let digest = generated_digest(mib);
    // A slow single-POST upload: one MiB every 100 ms.
    let slow = generated(mib).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c
    });
    let url = format!("{}/v2/slow/blobs/uploads/?digest={}", server.base, digest);
    let upload = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .body(reqwest::Body::wrap_stream(slow))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let status = Command::new("kill")
        .args(["-TERM", &server.serve.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(upload.await.expect("join").expect("upload response"), 201);
    // New connections are refused once the server has drained.
    let mut server = server;
    let exit = tokio::task::spawn_blocking(move || {
        let s = server.serve.child.wait().expect("wait");
        (s, server)
    })
    .await
    .expect("join");
    assert!(exit.0.success(), "cairn exited with {:?}", exit.0);
    assert!(client
        .get(format!("{}/v2/", exit.1.base))
        .send()
        .await
        .is_err());
}

/// Two `cairn serve` processes sharing one PostgreSQL database and one blob
/// store race 32 pushes of different manifests under one new immutable tag:
/// exactly one wins, whichever process served it.
#[tokio::test]
async fn two_processes_race_for_one_immutable_tag_on_postgres() {
    let db = crate::helpers::fresh_postgres_db().await;
    let blobs = tempfile::tempdir().expect("tempdir");
    let storage = url::Url::from_directory_path(blobs.path())
        .expect("url")
        .to_string();
    let env = [
        ("CAIRN_DATABASE__URL", db.as_str()),
        ("CAIRN_STORAGE__URL", storage.as_str()),
    ];
    let servers = [Server::start_with(&env), Server::start_with(&env)];
    let client = reqwest::Client::new();
    let mut manifests = Vec::new();
    for i in 0..32 {
        let config = format!("{{\"racer\":{i}}}");
        let digest = crate::helpers::sha256(config.as_bytes());
        let r = client
            .post(format!(
                "{}/v2/race/procs/blobs/uploads/?digest={digest}",
                servers[i % 2].base
            ))
            .body(config.clone())
            .send()
            .await
            .expect("blob push");
        assert_eq!(r.status(), 201);
        manifests.push(crate::helpers::image_manifest(
            &digest,
            config.len(),
            &[],
            None,
            None,
        ));
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for (i, m) in manifests.into_iter().enumerate() {
        let url = format!("{}/v2/race/procs/manifests/v1", servers[i % 2].base);
        let barrier = barrier.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = client
                .put(url)
                .header("Content-Type", crate::helpers::OCI_MANIFEST)
                .body(m.clone())
                .send()
                .await
                .expect("put");
            (r.status().as_u16(), crate::helpers::sha256(&m))
        }));
    }
    let mut winners = Vec::new();
    let mut denied = 0;
    for t in tasks {
        match t.await.expect("join") {
            (201, d) => winners.push(d),
            (409, _) => denied += 1,
            (s, _) => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((winners.len(), denied), (1, 31));
    for s in &servers {
        let r = client
            .head(format!("{}/v2/race/procs/manifests/v1", s.base))
            .send()
            .await
            .expect("head");
        assert_eq!(r.headers()["docker-content-digest"], winners[0].as_str());
    }
}

/// Built with `--features otel` and given `log.otlp_endpoint`, the server exports
/// its request spans over OTLP/HTTP; a stand-in collector receives them.
#[cfg(feature = "otel")]
#[tokio::test]
async fn request_spans_are_exported_over_otlp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("collector");
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    let collector = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("export connection");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        let (head_len, body_len) = loop {
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "collector connection closed early");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .expect("content-length");
                break (i + 4, len);
            }
        };
        while buf.len() < head_len + body_len {
            let n = conn.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "collector connection closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("reply");
        let request_line =
            String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == b'\r').unwrap_or(0)])
                .to_string();
        (request_line, buf[head_len..head_len + body_len].to_vec())
    });

    let server = Server::start_with(&[("CAIRN_LOG__OTLP_ENDPOINT", endpoint.as_str())]);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = client
            .get(format!("{}/v2/", server.base))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
    }
    // A graceful stop flushes the batch of spans.
    let status = Command::new("kill")
        .args(["-TERM", &server.serve.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let (request_line, body) = tokio::time::timeout(Duration::from_secs(30), collector)
        .await
        .expect("spans exported within 30 s")
        .expect("collector");
    assert!(
        request_line.starts_with("POST /v1/traces"),
        "{request_line}"
    );
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"cairn"), "the resource names the service");
    assert!(has(b"request"), "the request span is exported");
}

/// Open file descriptors of the server process.
/// Open descriptors of `pid`, but for the SQLite database's own files: pooled
/// database connections (three files each) come and go with the pool, up to
/// its size, and are not what a client's transfer could leak.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            let t = target.to_string_lossy();
            !(t.ends_with(".db") || t.ends_with(".db-wal") || t.ends_with(".db-shm"))
        })
        .count()
}

/// Clients that disconnect in the middle of an upload or a download leave
/// nothing open behind them: no file handle, no connection, and the upload
/// sessions they started are still listed (to be resumed or expired), never
/// half-written blobs.
#[tokio::test]
async fn disconnects_mid_transfer_leak_no_file_handles() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = Server::start();
    let client = reqwest::Client::new();
    let addr = server.base.trim_start_matches("http://").to_string();
    // A 16 MiB blob to download, and warm-up so pools exist before counting.
    let digest = generated_digest(16);
    let r = client
        .post(format!(
            "{}/v2/leak/app/blobs/uploads/?digest={digest}",
            server.base
        ))
        .body(reqwest::Body::wrap_stream(generated(16)))
        .send()
        .await
        .expect("push");
    assert_eq!(r.status(), 201);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = open_fds(server.serve.child.id());

    let mut sessions = Vec::new();
    for i in 0..40 {
        // Upload: a session, then a PATCH announcing 8 MiB that stops after 1 MiB.
        let r = client
            .post(format!("{}/v2/leak/app/blobs/uploads/", server.base))
            .send()
            .await
            .expect("start");
        let location = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let head = format!(
            "PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
             Content-Range: 0-8388607\r\nContent-Length: 8388608\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("head");
        s.write_all(&vec![i as u8; 1 << 20]).await.expect("body");
        drop(s);
        sessions.push(location);
        // Download: read the first bytes of the 16 MiB blob, then hang up.
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let get = format!("GET /v2/leak/app/blobs/{digest} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        s.write_all(get.as_bytes()).await.expect("get");
        let mut buf = vec![0u8; 64 << 10];
        let _ = s.read(&mut buf).await.expect("read");
        drop(s);
    }
    // Give the server a moment to notice the closed sockets.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let n = open_fds(server.serve.child.id());
        if n <= before + 4 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        after <= before + 4,
        "open file descriptors grew from {before} to {after} after 80 abandoned transfers"
    );
    // Where chunks live: a chunk that does arrive is one file under the session.
    let r = client
        .post(format!("{}/v2/leak/app/blobs/uploads/", server.base))
        .send()
        .await
        .expect("start");
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let r = client
        .patch(format!("{}{location}", server.base))
        .header("Content-Range", "0-9")
        .body(vec![7u8; 10])
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 202);
    let id = location.rsplit('/').next().expect("session id");
    let kept = server._dir.path().join("data/blobs/uploads").join(id);
    assert_eq!(
        std::fs::read_dir(&kept).expect("chunk directory").count(),
        1
    );
    // The abandoned chunks were never recorded: each session is still at 0
    // bytes, ready to be resumed (or expired).
    for location in &sessions {
        let r = client
            .get(format!("{}{location}", server.base))
            .send()
            .await
            .expect("status");
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers()["range"], "0-0");
        // ...and the abandoned bytes were not left on disk.
        let id = location.rsplit('/').next().expect("session id");
        let dir = server._dir.path().join("data/blobs/uploads").join(id);
        let leftovers = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(
            leftovers,
            0,
            "{} holds abandoned chunk files",
            dir.display()
        );
    }
    let r = client
        .get(format!("{}/v2/leak/app/blobs/{digest}", server.base))
        .send()
        .await
        .expect("pull");
    assert_eq!(r.status(), 200);
    assert_eq!(
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(r.bytes().await.expect("body")))
        ),
        digest
    );
}

/// `cairn-bench` (scripts/soak.sh, scripts/bench.sh) against a running server:
/// a timed run reports one line per whole interval, the operations still in
/// flight at the deadline counted in the last one rather than in a line of
/// their own a fraction of a second long, then a summary with the server's
/// CPU and peak memory.
#[tokio::test]
async fn the_benchmark_reports_whole_intervals_and_a_summary() {
    let server = Server::start();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .args(["--url", &server.base, "--pid"])
        .arg(server.serve.child.id().to_string())
        .args([
            "--scenario",
            "soak",
            "--size",
            "4KiB",
            "--concurrency",
            "16",
        ])
        .args(["--duration", "2", "--report-every", "1"])
        .output()
        .expect("run cairn-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cairn-bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let (intervals, summary): (Vec<_>, Vec<_>) =
        lines.iter().partition(|l| l.get("interval").is_some());
    let numbers: Vec<u64> = intervals
        .iter()
        .map(|l| l["interval"].as_u64().expect("interval number"))
        .collect();
    assert_eq!(numbers, [1, 2], "one line per whole second: {stdout}");
    for l in &intervals {
        let secs = l["seconds"].as_f64().expect("seconds");
        assert!(secs >= 0.9, "an interval of {secs} s: {stdout}");
        assert!(l["ops"].as_u64().expect("ops") > 0, "{l}");
    }
    let [summary] = summary[..] else {
        panic!("one summary line expected: {stdout}");
    };
    assert_eq!(summary["errors"], 0, "{summary}");
    let ops = summary["ops"].as_u64().expect("ops");
    let counted: u64 = intervals.iter().filter_map(|l| l["ops"].as_u64()).sum();
    assert_eq!(ops, counted, "the intervals add up to the run: {stdout}");
    assert!(summary["server_cpu_s"].as_f64().is_some(), "{summary}");
    assert!(
        summary["server_peak_rss_mib"]
            .as_f64()
            .is_some_and(|m| m > 0.0),
        "{summary}"
    );
}
