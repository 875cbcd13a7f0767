//! Blob pushes and mounts in groups ([`super`]): the group statement of what
//! [`crate::metadata::Metadata::finish_upload`] and
//! [`crate::metadata::Metadata::link_blob`] write in the common case.
//!
//! Its guards are the single link's, summed over the group: every upload row
//! deleted while it holds the size the caller verified, every session's end
//! recorded for the first time, every blob row inserted or touched (or, for a
//! link relying on stored bytes, found live and touched). Links naming the
//! same blob or upload session never share a group.

use super::{array, audit_args, ints, Member};
use crate::metadata::audit::{AuditEntry, Origin};
use crate::metadata::exec::Val;
use crate::metadata::now_ms;

/// A stored, verified blob made visible in a repository, with the end of the
/// upload session that brought it when there is one.
pub(crate) struct GroupLink {
    pub repository_id: i64,
    pub digest: String,
    pub size: i64,
    /// The blob's row must be there, live, and is only touched: the caller
    /// relies on bytes stored under it (`existing` of `link_blob`).
    pub existing: bool,
    /// The upload row to delete, with the size the caller verified.
    pub upload_row: Option<(String, i64)>,
    /// The session whose end to record (one opened by id).
    pub ended: Option<String>,
    pub origin: Origin,
    pub entry: AuditEntry,
}

/// The group statement: parameters are arrays, one per column, in the order
/// of [`GroupLink::statement`]; `$1` is now.
const GROUP_LINK: &str = "WITH
l AS (SELECT * FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::bigint[])
                    AS l(r, d, size, existing)),
s AS (SELECT * FROM unnest($6::text[], $7::bigint[]) AS s(id, size)),
e AS (SELECT * FROM unnest($8::text[]) AS e(id)),
q0 AS (DELETE FROM uploads u USING s WHERE u.id = s.id AND u.size = s.size RETURNING 1),
q1 AS (INSERT INTO ended_uploads (id) SELECT id FROM e ON CONFLICT (id) DO NOTHING RETURNING 1),
q2 AS (INSERT INTO blobs (digest, size, created_at, touched_at, state)
       SELECT d, size, $1, $1, 'live' FROM l WHERE existing = 0
       ON CONFLICT (digest) DO UPDATE SET touched_at = $1, touches = blobs.touches + 1
         WHERE blobs.state = 'live'
       RETURNING 1),
q3 AS (UPDATE blobs b SET touched_at = $1, touches = b.touches + 1
         FROM l WHERE l.existing = 1 AND b.digest = l.d AND b.size = l.size AND b.state = 'live'
       RETURNING 1),
q4 AS (INSERT INTO repository_blobs (repository_id, digest, created_at)
       SELECT r, d, $1 FROM l
       ON CONFLICT (repository_id, digest) DO NOTHING),
q5 AS (INSERT INTO audit_pending (at, actor, client, action, repository, tag, digest, result,
                                  detail, request_id, user_agent)
       SELECT $1, * FROM unnest($9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                                $14::text[], $15::text[], $16::text[], $17::text[], $18::text[]))
SELECT CASE WHEN (SELECT count(*) FROM q0) = (SELECT count(*) FROM s)
             AND (SELECT count(*) FROM q1) = (SELECT count(*) FROM e)
             AND (SELECT count(*) FROM q2) + (SELECT count(*) FROM q3) = (SELECT count(*) FROM l)
        THEN 1 ELSE cairn_guard_miss() END";

impl Member for GroupLink {
    const KIND: &'static str = "blob link";

    fn keys(&self) -> Vec<String> {
        let session = self
            .upload_row
            .as_ref()
            .map(|(id, _)| id)
            .or(self.ended.as_ref());
        std::iter::once(self.digest.clone())
            .chain(session.map(|id| format!("upload:{id}")))
            .collect()
    }

    fn statement(links: &[&GroupLink]) -> (&'static str, Vec<Val>) {
        let mut args = vec![Val::Int(now_ms())];
        // l
        args.push(ints(links.iter().map(|l| l.repository_id)));
        args.push(array(links.iter().map(|l| Some(l.digest.as_str()))));
        args.push(ints(links.iter().map(|l| l.size)));
        args.push(ints(links.iter().map(|l| i64::from(l.existing))));
        // s
        let rows = || links.iter().filter_map(|l| l.upload_row.as_ref());
        args.push(array(rows().map(|(id, _)| Some(id.as_str()))));
        args.push(ints(rows().map(|(_, size)| *size)));
        // e
        args.push(array(
            links.iter().filter_map(|l| l.ended.as_deref()).map(Some),
        ));
        // audit_pending
        let entries: Vec<(&Origin, &AuditEntry)> =
            links.iter().map(|l| (&l.origin, &l.entry)).collect();
        args.extend(audit_args(&entries));
        (GROUP_LINK, args)
    }
}
