//! `cairn audit verify` and `cairn audit export`.

use std::io::Write;

use crate::metadata::{AuditQuery, Metadata, VerifyReport};

/// Recomputes the chain; prints the result and returns it.
pub async fn verify(meta: &Metadata) -> anyhow::Result<VerifyReport> {
    let bar = super::progress(None, "verifying audit chain");
    let report = meta
        .audit_verify(|checked, total| {
            bar.set_length(total);
            bar.set_position(checked);
        })
        .await?;
    bar.finish_and_clear();
    match &report.broken {
        None => println!(
            "audit chain verified: {} entries, no broken link",
            report.checked
        ),
        Some(b) => println!(
            "audit chain BROKEN at entry {}: {} ({} entries verified before it)",
            b.id, b.reason, report.checked
        ),
    }
    Ok(report)
}

/// Writes every entry matching `q` to `out` as JSON lines, oldest first, in
/// batches; returns how many were written.
pub async fn export(
    meta: &Metadata,
    mut q: AuditQuery,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    q.ascending = true;
    q.limit = 1000;
    let bar = super::progress(None, "exporting audit entries");
    let mut written = 0u64;
    loop {
        let rows = meta.audit(&q).await?;
        for r in &rows {
            let mut v = serde_json::to_value(r)?;
            if let (Some(obj), Some(d)) = (v.as_object_mut(), r.detail.as_deref()) {
                if let Ok(parsed) = serde_json::from_str::<serde_json::Value>(d) {
                    obj.insert("detail".into(), parsed);
                }
            }
            serde_json::to_writer(&mut *out, &v)?;
            out.write_all(b"\n")?;
        }
        written += rows.len() as u64;
        bar.set_position(written);
        match rows.last() {
            Some(last) if rows.len() == 1000 => q.cursor = Some(last.id),
            _ => break,
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(written)
}
