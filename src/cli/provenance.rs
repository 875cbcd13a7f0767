//! `cairn provenance show` and `cairn provenance query`: the auditor's
//! questions answered from the database directly, as JSON on standard output.

use std::io::Write;

use serde_json::Value;

use crate::domain::{Digest, RepoName};
use crate::metadata::{Metadata, ProvenanceQuery, ProvenanceRecord};

/// A record as JSON, with its stored document parsed back into JSON.
fn record_json(r: &ProvenanceRecord) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(r)?;
    if let (Some(obj), Some(d)) = (v.as_object_mut(), r.document.as_deref()) {
        if let Ok(parsed) = serde_json::from_str::<Value>(d) {
            obj.insert("document".into(), parsed);
        }
    }
    Ok(v)
}

/// Every record of `<repository>@<digest>`, as one JSON document.
pub async fn show(meta: &Metadata, reference: &str, out: &mut dyn Write) -> anyhow::Result<u64> {
    let (repo, digest) = reference
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("expected <repository>@<digest>, got {reference:?}"))?;
    let repo: RepoName = repo.parse()?;
    let digest: Digest = digest.parse()?;
    let mut records = Vec::new();
    let mut cursor = None;
    loop {
        let rows = meta
            .provenance_of(&repo, digest.as_str(), cursor, 500)
            .await?;
        for r in &rows {
            records.push(record_json(r)?);
        }
        match rows.last() {
            Some(last) if rows.len() == 500 => cursor = Some(last.id),
            _ => break,
        }
    }
    let n = records.len() as u64;
    let doc = serde_json::json!({
        "repository": repo.as_str(),
        "digest": digest.as_str(),
        "records": records,
    });
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(n)
}

/// Every parsed record matching `q`, newest first, as one JSON document.
pub async fn query(
    meta: &Metadata,
    mut q: ProvenanceQuery,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    q.limit = 500;
    let mut artifacts = Vec::new();
    loop {
        let page = meta.provenance_search(&q).await?;
        for r in &page.records {
            artifacts.push(serde_json::to_value(r)?);
        }
        match page.next {
            Some(next) => q.cursor = Some(next),
            None => break,
        }
    }
    let n = artifacts.len() as u64;
    serde_json::to_writer_pretty(&mut *out, &serde_json::json!({ "artifacts": artifacts }))?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(n)
}
