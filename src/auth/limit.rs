//! Failed-login throttling per account and per client address.
//!
//! Kept in process memory on purpose: it needs no database write on the login
//! path, and losing it on restart only resets the counters. With several
//! replicas, each counts its own failures, so an attacker spread over N
//! replicas gets N times the budget; the limit still bounds guessing to a few
//! attempts per minute per replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bounds the table: beyond this many keys, entries whose window has passed
/// are dropped before a new one is added.
const MAX_KEYS: usize = 100_000;

#[derive(Debug)]
struct Entry {
    failures: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// Counts failures per key (`account:<name>`, `client:<address>`); a key with
/// `max` failures within `window` is locked for `window`.
#[derive(Debug)]
pub struct Limiter {
    window: Duration,
    max_per_account: u32,
    max_per_client: u32,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Limiter {
    pub fn new(window: Duration, max_per_account: u32, max_per_client: u32) -> Limiter {
        Limiter {
            window,
            max_per_account: max_per_account.max(1),
            max_per_client: max_per_client.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn keys(account: Option<&str>, client: Option<&str>) -> Vec<(String, bool)> {
        let mut keys = Vec::with_capacity(2);
        if let Some(a) = account {
            keys.push((format!("account:{a}"), true));
        }
        if let Some(c) = client {
            keys.push((format!("client:{c}"), false));
        }
        keys
    }

    /// `Err(retry after)` if the account or the client is locked out now.
    pub fn check(&self, account: Option<&str>, client: Option<&str>) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(map) = self.entries.lock() else {
            return Ok(());
        };
        let wait = Self::keys(account, client)
            .iter()
            .filter_map(|(k, _)| map.get(k).and_then(|e| e.locked_until))
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        match wait {
            Some(w) => Err(w),
            None => Ok(()),
        }
    }

    /// Records a failed login.
    pub fn failed(&self, account: Option<&str>, client: Option<&str>) {
        let now = Instant::now();
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= MAX_KEYS {
            let window = self.window;
            map.retain(|_, e| {
                now.duration_since(e.since) < window || e.locked_until.is_some_and(|u| u > now)
            });
        }
        for (key, is_account) in Self::keys(account, client) {
            let max = if is_account {
                self.max_per_account
            } else {
                self.max_per_client
            };
            let e = map.entry(key).or_insert(Entry {
                failures: 0,
                since: now,
                locked_until: None,
            });
            if now.duration_since(e.since) >= self.window {
                e.failures = 0;
                e.since = now;
            }
            e.failures += 1;
            if e.failures >= max {
                e.locked_until = Some(now + self.window);
                e.failures = 0;
                e.since = now;
            }
        }
    }

    /// Records a successful login: the account's count starts over (the
    /// client's does not, so one good account does not launder guesses at others).
    pub fn succeeded(&self, account: &str) {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(&format!("account:{account}"));
        }
    }
}

/// Whole seconds to announce in `Retry-After` (at least 1).
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_failures_per_account_and_per_client() {
        let l = Limiter::new(Duration::from_secs(60), 3, 5);
        for _ in 0..2 {
            l.failed(Some("alice"), Some("10.0.0.1"));
        }
        assert!(l.check(Some("alice"), Some("10.0.0.1")).is_ok());
        l.failed(Some("alice"), Some("10.0.0.1"));
        let wait = l
            .check(Some("alice"), Some("10.0.0.2"))
            .expect_err("alice locked");
        assert!(wait <= Duration::from_secs(60));
        assert!(l.check(Some("bob"), Some("10.0.0.2")).is_ok());
        // The client has 3 failures; two more (at other accounts) lock it.
        l.failed(Some("bob"), Some("10.0.0.1"));
        l.failed(Some("carol"), Some("10.0.0.1"));
        assert!(l.check(Some("dave"), Some("10.0.0.1")).is_err());
        assert!(l.check(Some("dave"), Some("10.0.0.3")).is_ok());
    }

    #[test]
    fn success_resets_the_account() {
        let l = Limiter::new(Duration::from_secs(60), 2, 100);
        l.failed(Some("a"), None);
        l.succeeded("a");
        l.failed(Some("a"), None);
        assert!(l.check(Some("a"), None).is_ok());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }
}
