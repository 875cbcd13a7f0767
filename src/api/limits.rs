//! Per-client concurrency: one address may have at most `max` requests in
//! progress; beyond that it gets `429 TOOMANYREQUESTS` with `Retry-After`, so a
//! single misbehaving client cannot take every connection and worker.
//!
//! Counted per process, from the request's arrival until its response head is
//! produced (a streaming download's body is not counted).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, Code};

pub(crate) struct ClientLimiter {
    max: usize,
    inflight: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientLimiter {
    pub(crate) fn new(max: usize) -> ClientLimiter {
        ClientLimiter {
            max,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Permit {
            limiter: self.clone(),
            ip,
        })
    }
}

struct Permit {
    limiter: Arc<ClientLimiter>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self
            .limiter
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

pub(crate) async fn per_client(
    State(limiter): State<Arc<ClientLimiter>>,
    req: Request,
    next: Next,
) -> Response {
    if limiter.max == 0 {
        return next.run(req).await;
    }
    let Some(ip) = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return next.run(req).await;
    };
    match limiter.enter(ip) {
        Some(permit) => {
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        None => ApiError::new(
            Code::TooManyRequests,
            format!(
                "this client already has {} requests in progress; retry when some finish",
                limiter.max
            ),
        )
        .with_header(header::RETRY_AFTER, "1")
        .into_response(),
    }
}
