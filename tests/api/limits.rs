//! Limits against abuse: slow headers, huge headers, stalled bodies, too many
//! upload sessions, too many requests from one client. Each gets the documented
//! status (and an OCI error body where HTTP allows one) and changes nothing.

use std::time::Duration;

use cairn::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::both;
use crate::helpers::{error_code, TestApp};

fn tight(c: &mut Config) {
    c.limits.header_read_timeout_secs = 1;
    c.limits.max_header_bytes = 16 << 10;
    c.limits.body_idle_timeout_secs = 1;
    c.limits.max_upload_sessions = 3;
    c.limits.max_requests_per_client = 2;
}

/// Reads what the server sends until it closes or `limit` passes.
async fn read_all(s: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

async fn slow_headers_are_cut_off(app: TestApp) {
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Never finish the head: the server closes within the timeout (plus slack).
    let got = read_all(&mut s, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "connection held open"
    );
    assert!(!got.contains("200 OK"), "{got}");
    // The server still serves others.
    assert_eq!(app.get("/v2/").await.status(), 200);
}

async fn huge_headers_get_431(app: TestApp) {
    let r = app
        .req(reqwest::Method::GET, "/v2/")
        .header("X-Padding", "a".repeat(32 << 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
}

async fn a_stalled_body_gets_408_and_the_upload_survives(app: TestApp) {
    let r = app
        .req(reqwest::Method::POST, "/v2/limits/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // ...and then nothing.
    let got = read_all(&mut s, Duration::from_secs(10)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        got.contains("BLOB_UPLOAD_INVALID") && got.contains("sent nothing"),
        "{got}"
    );
    // Nothing was recorded: the session is still at 0 and can go on.
    let r = app.get(&location).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-0");
}

async fn too_many_upload_sessions_get_429(app: TestApp) {
    for _ in 0..3 {
        let r = app
            .req(reqwest::Method::POST, "/v2/limits/many/blobs/uploads/")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = app
        .req(reqwest::Method::POST, "/v2/limits/many/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    // A single-request upload needs no session and still works.
    app.push_blob("limits/many", b"monolithic").await;
}

async fn one_client_cannot_take_every_slot(app: TestApp) {
    let r = app
        .req(reqwest::Method::POST, "/v2/limits/slots/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    // Two requests in progress (bodies that trickle in slower than they finish).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let head =
            format!("PATCH {location} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = app.get("/v2/").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    drop(held);
    // Once they are gone (or timed out), the client is served again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if app.get("/v2/").await.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

both!(with tight:
    slow_headers_are_cut_off,
    huge_headers_get_431,
    a_stalled_body_gets_408_and_the_upload_survives,
    too_many_upload_sessions_get_429,
    one_client_cannot_take_every_slot,
);
