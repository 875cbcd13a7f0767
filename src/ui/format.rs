//! How the console shows values: human sizes and times, digests with their
//! pull commands, links that are safe to follow. Pure.

use maud::{html, Markup};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `1536` → `1.5 KiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `sha256:0123456789ab…` (algorithm and the first 12 hex digits).
pub fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}…", &hex[..12]),
        _ => digest.to_string(),
    }
}

pub(crate) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// `2026-11-25 14:03 UTC`.
pub(crate) fn utc(ms: i64) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// `3 minutes ago`, `in 2 days`.
pub(crate) fn ago(ms: i64, now: i64) -> String {
    let d = (now - ms) / 1000;
    let (n, unit) = match d.abs() {
        s if s < 60 => return "just now".to_string(),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s if s < 86_400 * 60 => (s / 86_400, "day"),
        s if s < 86_400 * 730 => (s / (86_400 * 30), "month"),
        s => (s / (86_400 * 365), "year"),
    };
    let plural = if n == 1 { "" } else { "s" };
    if d >= 0 {
        format!("{n} {unit}{plural} ago")
    } else {
        format!("in {n} {unit}{plural}")
    }
}

/// A time as text a person reads, with the exact instant in `datetime` and
/// the tooltip.
pub(crate) fn when(ms: i64) -> Markup {
    let now = crate::metadata::now_ms();
    html! {
        time datetime=(rfc3339(ms)) title=(rfc3339(ms)) { (utc(ms)) " " span.muted { "(" (ago(ms, now)) ")" } }
    }
}

/// An optional time; `never` when absent.
pub(crate) fn when_opt(ms: Option<i64>) -> Markup {
    match ms {
        Some(ms) => when(ms),
        None => html! { span.muted { "never" } },
    }
}

/// A path segment or query value, percent-encoded.
pub(crate) fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The console URL of a repository (names are `[a-z0-9._/-]`, safe in paths).
pub(crate) fn repo_url(repo: &str) -> String {
    format!("/ui/r/{repo}")
}

pub(crate) fn tag_url(repo: &str, tag: &str) -> String {
    format!("/ui/r/{repo}/-/tags/{}", enc(tag))
}

pub(crate) fn artifact_url(repo: &str, digest: &str) -> String {
    format!("/ui/r/{repo}/-/artifacts/{}", enc(digest))
}

/// The pull command by digest, shown as text and copied by the button.
pub(crate) fn pull_command(host: &str, repo: &str, digest: &str) -> Markup {
    let cmd = format!("docker pull {host}/{repo}@{digest}");
    html! {
        div.pull {
            code { (cmd) }
            button.copy type="button" data-copy=(cmd) title="Copy the pull command" { "Copy" }
        }
    }
}

/// A digest linking to its artifact page, with its pull command.
pub(crate) fn digest_cell(host: &str, repo: &str, digest: &str) -> Markup {
    html! {
        a.mono href=(artifact_url(repo, digest)) title=(digest) { (short_digest(digest)) }
        (pull_command(host, repo, digest))
    }
}

/// A link for `http`/`https` URLs only (never `javascript:` or `data:` from
/// stored documents); other text is shown as text.
pub(crate) fn external(text: &str) -> Markup {
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        html! { a href=(text) rel="noopener noreferrer nofollow" { (text) } }
    } else {
        html! { span.mono { (text) } }
    }
}

/// A link to a commit when the source is a known forge (`…/commit/<rev>`).
pub(crate) fn commit_link(source: Option<&str>, revision: &str) -> Markup {
    let base = source
        .map(|s| s.trim_start_matches("git+"))
        .map(|s| s.split(['@', '#']).next().unwrap_or(s))
        .map(|s| s.trim_end_matches(".git"))
        .filter(|s| {
            s.starts_with("https://github.com/")
                || s.starts_with("https://gitlab.com/")
                || s.starts_with("https://codeberg.org/")
        });
    let safe_rev = revision.chars().all(|c| c.is_ascii_hexdigit());
    match base {
        Some(b) if safe_rev => {
            html! { a.mono href=(format!("{b}/commit/{revision}")) rel="noopener noreferrer nofollow" { (revision) } }
        }
        _ => html! { span.mono { (revision) } },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(300 * 1024 * 1024), "300 MiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn times_are_human() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(ago(0, 30_000), "just now");
        assert_eq!(ago(0, 120_000), "2 minutes ago");
        assert_eq!(ago(0, 3_600_000), "1 hour ago");
        assert_eq!(ago(86_400_000 * 2, 0), "in 2 days");
    }

    #[test]
    fn digests_shorten() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_digest(&d), "sha256:abababababab…");
        assert_eq!(short_digest("weird"), "weird");
    }

    #[test]
    fn only_web_urls_become_links() {
        assert!(external("https://example.com/x")
            .into_string()
            .contains("href="));
        let js = external("javascript:alert(1)").into_string();
        assert!(!js.contains("href"), "{js}");
        let html = external("<script>alert(1)</script>").into_string();
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn commits_link_to_their_forge() {
        let m = commit_link(
            Some("git+https://github.com/acme/app@refs/heads/main"),
            "abc123",
        );
        assert!(m
            .into_string()
            .contains("https://github.com/acme/app/commit/abc123"));
        let m = commit_link(Some("https://github.com/acme/app"), "x\" onclick=\"y");
        assert!(!m.into_string().contains("href"));
    }
}
