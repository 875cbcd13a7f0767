//! Bounded label values. A label's values must come from a small set or the
//! number of series (and the scrape) grows without limit, so repositories are
//! admitted first come up to a cap and the rest share `other`; methods outside
//! the standard ones are `other`; statuses are reduced to their class.

use std::collections::HashSet;
use std::sync::RwLock;

/// The label value that stands for every repository beyond the cap.
pub const OTHER: &str = "other";

/// Repository label values: the first `max` distinct names seen keep their own
/// value, later ones are folded into [`OTHER`]. Per process: replicas may admit
/// different names, which Prometheus sums just the same.
#[derive(Debug)]
pub struct RepoLabels {
    max: usize,
    seen: RwLock<HashSet<String>>,
}

impl RepoLabels {
    pub fn new(max: usize) -> RepoLabels {
        RepoLabels {
            max,
            seen: RwLock::new(HashSet::new()),
        }
    }

    /// The label value for `repo`.
    pub fn label(&self, repo: &str) -> String {
        {
            let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
            if seen.contains(repo) {
                return repo.to_string();
            }
            if seen.len() >= self.max {
                return OTHER.to_string();
            }
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if seen.contains(repo) || seen.len() < self.max {
            seen.insert(repo.to_string());
            repo.to_string()
        } else {
            OTHER.to_string()
        }
    }
}

/// An HTTP method as a label: the standard ones by name, any other `other`
/// (extension methods are unbounded).
pub fn method(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::PUT => "PUT",
        http::Method::POST => "POST",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => OTHER,
    }
}

/// A status code's class: `1xx` … `5xx`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_beyond_the_cap_fold_into_other() {
        let l = RepoLabels::new(2);
        assert_eq!(l.label("a"), "a");
        assert_eq!(l.label("b"), "b");
        assert_eq!(l.label("c"), OTHER);
        // Admitted names keep their value; the cap does not evict.
        assert_eq!(l.label("a"), "a");
        assert_eq!(l.label("b"), "b");
        assert_eq!(l.label("d"), OTHER);
    }

    #[test]
    fn a_zero_cap_folds_everything() {
        assert_eq!(RepoLabels::new(0).label("a"), OTHER);
    }

    #[test]
    fn methods_and_statuses_are_bounded() {
        assert_eq!(method(&http::Method::GET), "GET");
        let ext = http::Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method(&ext), OTHER);
        assert_eq!(status_class(201), "2xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(999), "5xx");
    }
}
