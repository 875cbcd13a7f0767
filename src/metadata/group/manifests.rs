//! Manifest pushes in groups ([`super`]): the group statement of
//! [`crate::metadata::manifest_push_at_once`].
//!
//! Its guards are the single push's, summed over the group: every manifest's
//! blob row inserted or touched, every (repository, blob) pair served and live
//! (fresh, or touched now), every child present, every tag new. Pushes naming
//! the same manifest or tag never share a group; two naming the same blob that
//! needs touching make the total miss, and go alone.

use super::{array, audit_args, ints, Member};
use crate::metadata::audit::{AuditEntry, Origin};
use crate::metadata::exec::Val;
use crate::metadata::now_ms;

/// A manifest push in the common case, as the group statement takes it.
pub(crate) struct GroupPush {
    pub repository_id: i64,
    pub digest: String,
    pub size: i64,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub subject: Option<String>,
    pub annotations: Option<String>,
    /// The manifest's bytes, which are JSON and so UTF-8 text.
    pub content: String,
    /// Distinct referenced blobs and child manifests.
    pub blobs: Vec<String>,
    pub children: Vec<String>,
    /// (tag, immutable, rule), distinct tags.
    pub tags: Vec<(String, bool, String)>,
    pub touch_fresh_ms: i64,
    pub origin: Origin,
    pub entries: Vec<AuditEntry>,
}

/// The group statement: parameters are arrays, one per column, in the order
/// of [`GroupPush::statement`]; `$1` is now, `$2` the freshness bound of
/// referenced blobs.
const GROUP_PUSH: &str = "WITH
m AS (SELECT * FROM unnest($3::bigint[], $4::text[], $5::bigint[], $6::text[], $7::text[],
                           $8::text[], $9::text[], $10::text[])
                    AS m(r, d, size, media_type, artifact_type, subject, annotations, content)),
blob_refs AS (SELECT * FROM unnest($11::bigint[], $12::text[], $13::text[]) AS p(r, d, m)),
refs AS (SELECT DISTINCT r, d FROM blob_refs),
served AS (SELECT p.d, b.touched_at FROM refs p JOIN blobs b ON b.digest = p.d
            WHERE b.state = 'live'
              AND EXISTS (SELECT 1 FROM repository_blobs rb
                           WHERE rb.repository_id = p.r AND rb.digest = p.d)),
child_refs AS (SELECT * FROM unnest($14::bigint[], $15::text[], $16::text[]) AS c(r, d, m)),
children AS (SELECT DISTINCT r, d FROM child_refs),
t AS (SELECT * FROM unnest($17::bigint[], $18::text[], $19::text[], $20::bigint[], $21::text[],
                           $22::text[]) AS t(r, name, d, immutable, rule, actor)),
q0 AS (INSERT INTO blobs (digest, size, created_at, touched_at, state)
       SELECT d, size, $1, $1, 'live' FROM m
       ON CONFLICT (digest) DO UPDATE SET touched_at = $1, touches = blobs.touches + 1
         WHERE blobs.state = 'live'
       RETURNING 1),
q1 AS (SELECT 1 FROM served WHERE touched_at > $2),
q2 AS (UPDATE blobs b SET touched_at = $1, touches = b.touches + 1
        WHERE b.digest IN (SELECT d FROM served WHERE touched_at <= $2)
          AND b.state = 'live' AND b.touched_at <= $2
       RETURNING 1),
q3 AS (SELECT 1 FROM children c JOIN manifests x ON x.repository_id = c.r AND x.digest = c.d),
q4 AS (INSERT INTO tags (repository_id, name, manifest_digest, created_at, updated_at)
       SELECT t.r, t.name, t.d, $1, $1 FROM t
        WHERE t.immutable = 0
           OR NOT EXISTS (SELECT 1 FROM tag_pins p
                           WHERE p.repository_id = t.r AND p.tag = t.name AND p.digest <> t.d)
       ON CONFLICT (repository_id, name) DO NOTHING
       RETURNING 1),
q5 AS (INSERT INTO manifest_content (digest, content)
       SELECT d, convert_to(content, 'UTF8') FROM m
       ON CONFLICT (digest) DO NOTHING),
q6 AS (INSERT INTO manifests
         (repository_id, digest, media_type, artifact_type, subject_digest, size, annotations, created_at)
       SELECT r, d, media_type, artifact_type, subject, size, annotations, $1 FROM m
       ON CONFLICT (repository_id, digest) DO NOTHING),
q7 AS (INSERT INTO manifest_blobs (repository_id, manifest_digest, blob_digest)
       SELECT r, m, d FROM blob_refs
       ON CONFLICT DO NOTHING),
q8 AS (INSERT INTO manifest_children (repository_id, parent_digest, child_digest)
       SELECT r, m, d FROM child_refs
       ON CONFLICT DO NOTHING),
q9 AS (INSERT INTO tag_pins (repository_id, tag, digest, created_at)
       SELECT r, name, d, $1 FROM t WHERE immutable = 1
       ON CONFLICT (repository_id, tag) DO NOTHING),
q10 AS (INSERT INTO tag_events (repository_id, tag, action, digest, previous_digest, rule, actor, at)
        SELECT r, name, 'created', d, NULL, rule, actor, $1 FROM t),
q11 AS (INSERT INTO audit_pending (at, actor, client, action, repository, tag, digest, result,
                                   detail, request_id, user_agent)
        SELECT $1, * FROM unnest($23::text[], $24::text[], $25::text[], $26::text[], $27::text[],
                                 $28::text[], $29::text[], $30::text[], $31::text[], $32::text[]))
SELECT CASE WHEN (SELECT count(*) FROM q0) = (SELECT count(*) FROM m)
             AND (SELECT count(*) FROM q1) + (SELECT count(*) FROM q2) = (SELECT count(*) FROM refs)
             AND (SELECT count(*) FROM q3) = (SELECT count(*) FROM children)
             AND (SELECT count(*) FROM q4) = (SELECT count(*) FROM t)
        THEN 1 ELSE cairn_guard_miss() END";

impl Member for GroupPush {
    const KIND: &'static str = "manifest push";

    fn keys(&self) -> Vec<String> {
        std::iter::once(self.digest.clone())
            .chain(
                self.tags
                    .iter()
                    .map(|(t, _, _)| format!("{}:{t}", self.repository_id)),
            )
            .collect()
    }

    fn statement(pushes: &[&GroupPush]) -> (&'static str, Vec<Val>) {
        let now = now_ms();
        let fresh_ms = pushes.iter().map(|p| p.touch_fresh_ms).min().unwrap_or(0);
        let mut args = vec![Val::Int(now), Val::Int(now - fresh_ms)];
        // m
        args.push(ints(pushes.iter().map(|p| p.repository_id)));
        args.push(array(pushes.iter().map(|p| Some(p.digest.as_str()))));
        args.push(ints(pushes.iter().map(|p| p.size)));
        args.push(array(pushes.iter().map(|p| Some(p.media_type.as_str()))));
        args.push(array(pushes.iter().map(|p| p.artifact_type.as_deref())));
        args.push(array(pushes.iter().map(|p| p.subject.as_deref())));
        args.push(array(pushes.iter().map(|p| p.annotations.as_deref())));
        args.push(array(pushes.iter().map(|p| Some(p.content.as_str()))));
        // blob_refs: the guards' (repository, blob) pairs and the rows of
        // manifest_blobs
        let refs = || {
            pushes
                .iter()
                .flat_map(|p| p.blobs.iter().map(move |b| (p, b)))
        };
        args.push(ints(refs().map(|(p, _)| p.repository_id)));
        args.push(array(refs().map(|(_, b)| Some(b.as_str()))));
        args.push(array(refs().map(|(p, _)| Some(p.digest.as_str()))));
        // child_refs, likewise
        let children = || {
            pushes
                .iter()
                .flat_map(|p| p.children.iter().map(move |c| (p, c)))
        };
        args.push(ints(children().map(|(p, _)| p.repository_id)));
        args.push(array(children().map(|(_, c)| Some(c.as_str()))));
        args.push(array(children().map(|(p, _)| Some(p.digest.as_str()))));
        // t
        let tags = || {
            pushes
                .iter()
                .flat_map(|p| p.tags.iter().map(move |t| (p, t)))
        };
        args.push(ints(tags().map(|(p, _)| p.repository_id)));
        args.push(array(tags().map(|(_, (t, _, _))| Some(t.as_str()))));
        args.push(array(tags().map(|(p, _)| Some(p.digest.as_str()))));
        args.push(ints(
            tags().map(|(_, (_, immutable, _))| i64::from(*immutable)),
        ));
        args.push(array(tags().map(|(_, (_, _, rule))| Some(rule.as_str()))));
        args.push(array(tags().map(|(p, _)| Some(p.origin.actor.as_str()))));
        // audit_pending
        let entries: Vec<(&Origin, &AuditEntry)> = pushes
            .iter()
            .flat_map(|p| p.entries.iter().map(move |e| (&p.origin, e)))
            .collect();
        args.extend(audit_args(&entries));
        (GROUP_PUSH, args)
    }
}
