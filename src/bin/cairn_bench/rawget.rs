//! Small GETs (manifests, tag pages) over HTTP/1.1 connections driven by hyper
//! itself: a connection is taken from an idle list, used for one request and
//! put back. The pooled client spends more CPU per request (it parses a URL,
//! checks out through its pool and wraps each call in its timeout and redirect
//! layers) than a small GET costs the server, and on a machine the load
//! generator shares with the server that CPU is taken from the server.
//!
//! Plain `http://` only; requests go to the base URL's host and port.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, HOST};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use url::Url;

use super::registry::Result;

pub struct RawGets {
    /// `host:port` of the base URL: where to connect, and the `Host` header.
    authority: String,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
    timeout: Duration,
}

pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawGets {
    /// `None` for a base URL this path does not serve (https).
    pub fn new(base: &Url, timeout: Duration) -> Option<RawGets> {
        if base.scheme() != "http" {
            return None;
        }
        let host = base.host_str()?;
        let port = base.port_or_known_default()?;
        Some(RawGets {
            authority: format!("{host}:{port}"),
            idle: Mutex::new(Vec::new()),
            timeout,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connect {}: {e}", self.authority))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// GET `target` (a path and query on the base URL's origin) and read the
    /// whole body.
    pub async fn get(&self, target: &str, accept: Option<&str>) -> Result<RawResponse> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let mut sender = match idle {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let mut req = http::Request::get(target).header(HOST, self.authority.as_str());
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("GET {target}: {e}"))?;
        let exchange = async {
            sender
                .ready()
                .await
                .map_err(|e| format!("GET {target}: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("GET {target}: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("GET {target} body: {e}"))?
                .to_bytes();
            Ok::<_, String>(RawResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let resp = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("GET {target}: timed out"))??;
        if let Ok(mut v) = self.idle.lock() {
            v.push(sender);
        }
        Ok(resp)
    }
}
