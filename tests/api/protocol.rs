//! HTTP-level behaviour: what any client sees whatever the endpoint.

use std::time::Duration;

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::both;
use crate::helpers::{error_code, sha256, TestApp};

/// The start of a TLS 1.2/1.3 ClientHello record, as a client that wrongly
/// speaks HTTPS to this plain-HTTP port sends it.
fn client_hello() -> Vec<u8> {
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xa5, // record: handshake, TLS 1.0, length
        0x01, 0x00, 0x00, 0xa1, // ClientHello, length
        0x03, 0x03, // client version TLS 1.2
    ];
    hello.extend((0u8..32).map(|i| i.wrapping_mul(37))); // random
    hello.push(0x00); // session id length
    hello.extend([0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f]); // cipher suites
    hello.extend([0x01, 0x00]); // compression methods
    hello.resize(5 + 0xa5, 0);
    hello
}

async fn tls_to_the_plain_port_gets_http_400(app: TestApp) {
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(&client_hello()).await.unwrap();
        let mut buf = Vec::new();
        // The server answers and closes; a reset after the answer is fine.
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf
    })
    .await
    .expect("the server must answer (and close) rather than wait for more bytes");
    let text = String::from_utf8_lossy(&outcome);
    assert!(
        text.starts_with("HTTP/1.1 400"),
        "expected an HTTP 400 response, got {text:?}"
    );
    // The server is still serving.
    assert_eq!(app.get("/v2/").await.status(), 200);
}

async fn api_version_header_on_every_response(app: TestApp) {
    let d = sha256(b"nothing");
    let cases: Vec<(Method, String, u16)> = vec![
        (Method::GET, "/v2/".into(), 200),
        (Method::GET, "/v2".into(), 200),
        (Method::HEAD, "/v2/".into(), 200),
        (Method::GET, format!("/v2/demo/blobs/{d}"), 404),
        (Method::GET, "/v2/demo/manifests/latest".into(), 404),
        (Method::GET, "/v2/Bad/tags/list".into(), 400),
        (Method::POST, "/v2/demo/blobs/uploads/".into(), 202),
        (Method::GET, "/v2/demo/unknown/endpoint".into(), 404),
    ];
    for (m, path, status) in cases {
        let r = app.req(m.clone(), &path).send().await.unwrap();
        assert_eq!(r.status(), status, "{m} {path}");
        assert_eq!(
            r.headers()
                .get("docker-distribution-api-version")
                .map(|v| v.to_str().unwrap()),
            Some("registry/2.0"),
            "{m} {path}"
        );
    }
    let r = app.get("/v2/").await;
    assert_eq!(r.headers().get("content-type").unwrap(), "application/json");
    assert_eq!(r.text().await.unwrap(), "{}");
}

async fn request_ids_are_honoured_and_returned(app: TestApp) {
    let r = app
        .req(Method::GET, "/v2/")
        .header("X-Request-Id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get("x-request-id").unwrap(), "trace-me-42");
    // On errors too.
    let r = app
        .req(Method::GET, "/v2/demo/manifests/nope")
        .header("X-Request-Id", "err-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers().get("x-request-id").unwrap(), "err-7");
    // Without one, the registry makes one up, different each time.
    let a = app.get("/v2/").await;
    let b = app.get("/v2/").await;
    let a = a
        .headers()
        .get("x-request-id")
        .expect("generated id")
        .clone();
    let b = b
        .headers()
        .get("x-request-id")
        .expect("generated id")
        .clone();
    assert!(!a.is_empty());
    assert_ne!(a, b);
}

async fn unsupported_methods_are_405_unsupported(app: TestApp) {
    let d = sha256(b"x");
    let cases: Vec<(Method, String)> = vec![
        (Method::POST, "/v2/demo/manifests/latest".into()),
        (Method::PATCH, "/v2/demo/manifests/latest".into()),
        (Method::PUT, format!("/v2/demo/blobs/{d}")),
        (Method::POST, format!("/v2/demo/blobs/{d}")),
        (Method::DELETE, "/v2/demo/tags/list".into()),
        (Method::PUT, "/v2/demo/tags/list".into()),
        (Method::DELETE, "/v2/_catalog".into()),
        (Method::DELETE, "/v2/".into()),
        (Method::GET, "/v2/demo/blobs/uploads/".into()),
        (Method::POST, format!("/v2/demo/referrers/{d}")),
    ];
    for (m, path) in cases {
        let r = app.req(m.clone(), &path).send().await.unwrap();
        assert_eq!(r.status(), 405, "{m} {path}");
        assert_eq!(error_code(r).await, "UNSUPPORTED", "{m} {path}");
    }
}

both!(
    tls_to_the_plain_port_gets_http_400,
    api_version_header_on_every_response,
    request_ids_are_honoured_and_returned,
    unsupported_methods_are_405_unsupported,
);
