//! When a pooled PostgreSQL connection is checked before use.
//!
//! sqlx's default pings every connection as it leaves the pool: one more
//! round trip to the server, a wake-up of its backend process, before every
//! statement. Without it 4 KiB pushes ran 11–15% faster on two cores
//! (BENCHMARKS.md), and a connection used a millisecond ago tells nothing new
//! by answering it.
//!
//! A connection is pinged when it has been idle for [`PING_AFTER_IDLE`], and
//! every connection is pinged for [`PING_ALL_AFTER_TROUBLE`] after this process
//! saw any connection break. Together these keep what the ping was for: after
//! the database restarts, fails over or drops connections, a request gets a
//! connection that works rather than a 503. A broken connection is found
//! before use unless it broke silently in the instant since its last use (a
//! restart takes longer than [`PING_AFTER_IDLE`], and any request that met the
//! outage turns pinging back on for all). sqlx still pings each connection as
//! it returns to the pool, off the request's path.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::Connection as _;

/// A connection idle this long is pinged before use.
const PING_AFTER_IDLE: Duration = Duration::from_millis(100);

/// How long after a broken connection every connection is pinged before use.
const PING_ALL_AFTER_TROUBLE: Duration = Duration::from_secs(30);

/// When this process last saw a database connection break (Unix ms; 0:
/// never). Process-wide: every pool in the process shares the database
/// server, so one pool's trouble is a reason for all to check.
static TROUBLE_AT_MS: AtomicI64 = AtomicI64::new(0);

/// Records that a connection broke just now.
pub(crate) fn trouble_seen() {
    TROUBLE_AT_MS.store(super::now_ms(), Ordering::Relaxed);
}

/// Whether a connection idle for `idle_for` must answer a ping before use,
/// `now_ms` and `trouble_at_ms` being Unix milliseconds.
fn needs_ping(idle_for: Duration, now_ms: i64, trouble_at_ms: i64) -> bool {
    let since_trouble = now_ms.saturating_sub(trouble_at_ms);
    idle_for >= PING_AFTER_IDLE
        || (trouble_at_ms > 0 && since_trouble < PING_ALL_AFTER_TROUBLE.as_millis() as i64)
}

/// sqlx's `before_acquire` hook: `false` (the pool closes the connection and
/// takes or opens another) when a ping was due and failed.
pub(crate) fn check(
    conn: &mut sqlx::PgConnection,
    meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if !needs_ping(
            meta.idle_for,
            super::now_ms(),
            TROUBLE_AT_MS.load(Ordering::Relaxed),
        ) {
            return Ok(true);
        }
        match conn.ping().await {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::info!(error = %e, "pooled database connection failed its ping; replacing it");
                trouble_seen();
                Ok(false)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_connection_is_used_without_a_ping() {
        assert!(!needs_ping(Duration::from_millis(2), 1_000_000, 0));
        assert!(!needs_ping(Duration::from_millis(99), 1_000_000, 0));
    }

    #[test]
    fn an_idle_connection_is_pinged() {
        assert!(needs_ping(PING_AFTER_IDLE, 1_000_000, 0));
        assert!(needs_ping(Duration::from_secs(600), 1_000_000, 0));
    }

    #[test]
    fn every_connection_is_pinged_for_a_while_after_one_broke() {
        let now = 1_000_000;
        assert!(needs_ping(Duration::ZERO, now, now));
        assert!(needs_ping(Duration::ZERO, now, now - 29_999));
        assert!(!needs_ping(Duration::ZERO, now, now - 30_000));
    }
}
