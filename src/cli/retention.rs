//! `cairn promote`, `cairn hold …`, `cairn retention plan|apply`, `cairn gc`:
//! the same service calls as the JSON API, run against the configured database
//! and storage.

use std::io::IsTerminal;
use std::time::Duration;

use crate::domain::{Reference, RepoName};
use crate::metadata::{Job, JobLock, Origin};
use crate::service::{GcReport, Plan, Registry};

/// Who a command acts as in the audit trail: the operating-system user.
pub fn cli_origin() -> Origin {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_string());
    Origin {
        actor: format!("cli:{user}"),
        client: None,
        request_id: None,
        user_agent: Some(format!("cairn/{}", env!("CARGO_PKG_VERSION"))),
    }
}

/// Splits `repo:tag` or `repo@digest`.
pub fn parse_reference(text: &str) -> anyhow::Result<(RepoName, Reference)> {
    let (repo, reference) = if let Some((r, d)) = text.split_once('@') {
        (r, d)
    } else {
        let (r, t) = text
            .rsplit_once(':')
            .filter(|(r, _)| !r.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "expected <repository>:<tag> or <repository>@<digest>, got {text:?}"
                )
            })?;
        (r, t)
    };
    Ok((repo.parse()?, reference.parse()?))
}

/// Prints a plan: a table on a terminal (every decision with its reasons),
/// JSON with `json`.
pub fn print_plan(plan: &Plan, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(plan)?);
        return Ok(());
    }
    println!(
        "retention plan {}: {} to delete, {} kept",
        plan.id,
        plan.deletions.len(),
        plan.kept
    );
    for rp in &plan.repositories {
        println!("\n{}", rp.repository);
        for d in &rp.delete {
            println!(
                "  DELETE {}  {:<24} {}",
                short(&d.digest),
                tags(&d.tags),
                d.why
            );
        }
        for k in &rp.keep {
            let reasons: Vec<String> = k.reasons.iter().map(|r| r.to_string()).collect();
            println!(
                "  keep   {}  {:<24} {}",
                short(&k.digest),
                tags(&k.tags),
                reasons.join("; ")
            );
        }
    }
    println!(
        "\napply exactly this with: cairn retention apply --plan {}",
        plan.id
    );
    Ok(())
}

fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

fn tags(t: &[String]) -> String {
    if t.is_empty() {
        "(untagged)".to_string()
    } else {
        t.join(",")
    }
}

/// Takes `job`'s lock (the one a replica's scheduled run takes, see
/// `metadata::jobs`), so that a manual run never overlaps a scheduled one or
/// another manual one. While someone else holds it, says so on standard error
/// and waits up to `wait`; then gives up with an error, having done nothing.
pub async fn job_lock(registry: &Registry, job: Job, wait: Duration) -> anyhow::Result<JobLock> {
    let deadline = std::time::Instant::now() + wait;
    let mut told = false;
    loop {
        if let Some(lock) = registry.metadata().try_job_lock(job).await? {
            return Ok(lock);
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{} is running elsewhere (a replica's scheduled run or another command holds \
                 its lock) and did not finish within {} s; nothing was done. Try again later \
                 or give --wait more seconds",
                job.as_str(),
                wait.as_secs()
            );
        }
        if !told {
            eprintln!(
                "{} is running elsewhere (a replica's scheduled run or another command holds \
                 its lock); waiting up to {} s for it to finish…",
                job.as_str(),
                wait.as_secs()
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Applies plan `id` with a progress bar on a terminal; prints the report.
pub async fn apply(registry: &Registry, id: &str, json: bool) -> anyhow::Result<()> {
    let bar = super::progress(Some(0), "applying retention plan");
    let report = registry
        .retention_apply(id, &cli_origin(), |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .await?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "plan {}: {} deleted, {} already gone, {} refused",
        report.plan,
        report.deleted.len(),
        report.already_gone,
        report.refused.len()
    );
    for d in &report.deleted {
        println!(
            "  deleted {}@{} {} ({})",
            d.repository,
            d.digest,
            tags(&d.tags),
            d.why
        );
    }
    for (digest, reasons) in &report.refused {
        println!("  kept    {digest}: {}", reasons.join("; "));
    }
    Ok(())
}

/// One collection with a progress line on a terminal; prints the report.
pub async fn gc(
    registry: &Registry,
    grace: Duration,
    upload_ttl: Duration,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<GcReport> {
    let bar = super::progress(
        None,
        if dry_run {
            "finding garbage"
        } else {
            "collecting garbage"
        },
    );
    let report = registry
        .collect_garbage(grace, upload_ttl, dry_run, |blobs, _| {
            bar.set_position(blobs)
        })
        .await?;
    bar.finish_and_clear();
    if json || !std::io::stdout().is_terminal() {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} {} blobs ({} bytes); {} in use again and kept; {} idle uploads cancelled; {} ms",
            if dry_run {
                "would reclaim"
            } else {
                "reclaimed"
            },
            report.blobs,
            report.bytes,
            report.skipped,
            report.uploads,
            report.elapsed_ms
        );
    }
    Ok(report)
}
