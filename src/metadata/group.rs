//! Group commit of manifest pushes on PostgreSQL.
//!
//! Under concurrent manifest pushes PostgreSQL's CPU is the limit, and most of
//! a push's statement ([`super::manifest_push_at_once`]: ten inserts and
//! guards) is spent per statement and per table, not per row: the message and
//! portal, the executor start of a dozen data-modifying clauses with their
//! indexes and triggers, the snapshot, the commit and its WAL flush. So the
//! pushes that queue up while earlier ones run are sent together as one
//! statement whose every clause writes the rows of all of them: a fixed text
//! over arrays (`unnest`), so PostgreSQL plans it once per connection whatever
//! the group's size and the pushes' shapes. It commits all of them or none.
//!
//! A push that finds a runner free goes at once: nothing waits to fill a
//! group. The statement's guards are the single push's, summed over the
//! group: every manifest's blob row inserted or touched, every (repository,
//! blob) pair served and live (fresh, or touched now), every child present,
//! every tag new. If a total misses, nothing of the group is written and each
//! push takes the path it would have taken alone ([`Grouped::Undecided`]).
//! Pushes naming the same manifest or tag never share a group; two naming the
//! same blob that needs touching make the total miss, and go alone.
//!
//! Groups run in tasks of their own, not in the requests' futures: a request
//! whose client goes away must not cancel a statement that others wait on.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::PgPool;
use tokio::sync::oneshot;

use super::audit::{AuditEntry, Origin};
use super::exec::{Exec, Val, GUARD_MISS};
use super::{now_ms, pg_array};

/// Groups in flight at once (pushes running alone included), each on a
/// connection of its own. Two, so one group's round trip and commit overlap
/// the next one's execution; measured at c16 on two cores, two ran 27% more
/// pushes than ungrouped statements and four 13% (BENCHMARKS.md).
const RUNNERS: usize = 2;

/// Most pushes in one group: bounds the statement, and so the latency the
/// first push of a group sees.
const MAX_GROUP: usize = 32;

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

impl GroupPush {
    /// The rows this push claims: no two pushes of a group share one.
    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.digest.clone()).chain(
            self.tags
                .iter()
                .map(|(t, _, _)| format!("{}:{t}", self.repository_id)),
        )
    }
}

/// What became of a push sent to a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grouped {
    /// Committed, with its tags created.
    Committed,
    /// It went alone and one of its own guards missed: nothing was written,
    /// and the general transaction settles it.
    Missed,
    /// Nothing was written (another push's guard, or an error): it goes alone.
    Undecided,
}

/// The pushes waiting for a runner, and the runners at work.
#[derive(Clone)]
pub(crate) struct PushGroups {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Waiting>,
    runners: usize,
}

struct Waiting {
    push: GroupPush,
    done: oneshot::Sender<Grouped>,
}

impl PushGroups {
    pub(crate) fn new(pool: PgPool) -> PushGroups {
        PushGroups {
            inner: Arc::new(Inner {
                pool,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// A runner's place for a push to run alone, its own way, when one is
    /// free and no push waits: at concurrency 1 a group would only add a hop.
    /// Giving it back starts a runner for the pushes that queued meanwhile.
    pub(crate) fn try_alone(&self) -> Option<Alone> {
        let mut state = self.inner.lock();
        if state.runners < RUNNERS && state.queue.is_empty() {
            state.runners += 1;
            Some(Alone(self.inner.clone()))
        } else {
            None
        }
    }

    /// Sends `push` with the next group.
    pub(crate) async fn push(&self, push: GroupPush) -> Grouped {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut state = self.inner.lock();
            state.queue.push_back(Waiting { push, done });
            let start = state.runners < RUNNERS;
            if start {
                state.runners += 1;
            }
            start
        };
        if start {
            tokio::spawn(Runner(self.inner.clone()).work());
        }
        // No answer: the runner was dropped mid-statement (the runtime is
        // shutting down). Going alone settles it either way: had the group
        // committed, this push now finds its tags bound, as a re-push does.
        answer.await.unwrap_or(Grouped::Undecided)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a queue and a counter, each change of which is done
        // before anything that could panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next group, oldest push first; `None` when none waits.
    fn take(&self) -> Option<Vec<Waiting>> {
        let mut state = self.lock();
        let first = state.queue.pop_front()?;
        let mut keys: HashSet<String> = first.push.keys().collect();
        let mut group = vec![first];
        let mut i = 0;
        while i < state.queue.len() && group.len() < MAX_GROUP {
            if state.queue[i].push.keys().any(|k| keys.contains(&k)) {
                i += 1;
                continue;
            }
            if let Some(w) = state.queue.remove(i) {
                keys.extend(w.push.keys());
                group.push(w);
            }
        }
        Some(group)
    }
}

/// A runner's place, held by a push that runs alone ([`PushGroups::try_alone`]).
pub(crate) struct Alone(Arc<Inner>);

impl Drop for Alone {
    fn drop(&mut self) {
        Runner::hand_over(&self.0);
    }
}

/// Takes groups until none waits; its place among the runners is given back
/// when it ends, however it ends.
struct Runner(Arc<Inner>);

impl Runner {
    async fn work(self) {
        while let Some(group) = self.0.take() {
            let outcome = match run(&self.0.pool, &group).await {
                Ok(true) => Grouped::Committed,
                Ok(false) if group.len() == 1 => Grouped::Missed,
                Ok(false) => Grouped::Undecided,
                Err(e) => {
                    tracing::debug!(error = %e, pushes = group.len(), "manifest push group failed");
                    Grouped::Undecided
                }
            };
            for w in group {
                let _ = w.done.send(outcome);
            }
        }
    }
}

impl Runner {
    /// Gives a place back: to a new runner if pushes wait (queued while it
    /// was taken, or left by a runner that panicked), else to the pool.
    fn hand_over(inner: &Arc<Inner>) {
        let mut state = inner.lock();
        if !state.queue.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(Runner(inner.clone()).work());
        } else {
            state.runners = state.runners.saturating_sub(1);
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        Runner::hand_over(&self.0);
    }
}

/// The group statement: parameters are arrays, one per column, in the order
/// of [`run`]; `$1` is now, `$2` the freshness bound of referenced blobs.
const GROUP_PUSH: &str = "WITH
m AS (SELECT * FROM unnest($3::bigint[], $4::text[], $5::bigint[], $6::text[], $7::text[],
                           $8::text[], $9::text[], $10::text[])
                    AS m(r, d, size, media_type, artifact_type, subject, annotations, content)),
refs AS (SELECT DISTINCT r, d FROM unnest($11::bigint[], $12::text[]) AS p(r, d)),
served AS (SELECT p.d, b.touched_at FROM refs p JOIN blobs b ON b.digest = p.d
            WHERE b.state = 'live'
              AND EXISTS (SELECT 1 FROM repository_blobs rb
                           WHERE rb.repository_id = p.r AND rb.digest = p.d)),
children AS (SELECT DISTINCT r, d FROM unnest($13::bigint[], $14::text[]) AS c(r, d)),
t AS (SELECT * FROM unnest($15::bigint[], $16::text[], $17::text[], $18::bigint[], $19::text[],
                           $20::text[]) AS t(r, name, d, immutable, rule, actor)),
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
       SELECT * FROM unnest($21::bigint[], $22::text[], $23::text[])
       ON CONFLICT DO NOTHING),
q8 AS (INSERT INTO manifest_children (repository_id, parent_digest, child_digest)
       SELECT * FROM unnest($24::bigint[], $25::text[], $26::text[])
       ON CONFLICT DO NOTHING),
q9 AS (INSERT INTO tag_pins (repository_id, tag, digest, created_at)
       SELECT r, name, d, $1 FROM t WHERE immutable = 1
       ON CONFLICT (repository_id, tag) DO NOTHING),
q10 AS (INSERT INTO tag_events (repository_id, tag, action, digest, previous_digest, rule, actor, at)
        SELECT r, name, 'created', d, NULL, rule, actor, $1 FROM t),
q11 AS (INSERT INTO audit_pending (at, actor, client, action, repository, tag, digest, result,
                                   detail, request_id, user_agent)
        SELECT $1, * FROM unnest($27::text[], $28::text[], $29::text[], $30::text[], $31::text[],
                                 $32::text[], $33::text[], $34::text[], $35::text[], $36::text[]))
SELECT CASE WHEN (SELECT count(*) FROM q0) = (SELECT count(*) FROM m)
             AND (SELECT count(*) FROM q1) + (SELECT count(*) FROM q2) = (SELECT count(*) FROM refs)
             AND (SELECT count(*) FROM q3) = (SELECT count(*) FROM children)
             AND (SELECT count(*) FROM q4) = (SELECT count(*) FROM t)
        THEN 1 ELSE cairn_guard_miss() END";

/// An array parameter of `items`.
fn array<'a>(items: impl IntoIterator<Item = Option<&'a str>>) -> Val {
    Val::Text(pg_array(items))
}

fn ints(items: impl IntoIterator<Item = i64>) -> Val {
    let texts: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    array(texts.iter().map(|s| Some(s.as_str())))
}

/// Runs `group` as one statement: true if it committed, false if a guard
/// missed and nothing was written.
async fn run(pool: &PgPool, group: &[Waiting]) -> Result<bool, sqlx::Error> {
    let pushes: Vec<&GroupPush> = group.iter().map(|w| &w.push).collect();
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
    // refs
    let refs = || {
        pushes
            .iter()
            .flat_map(|p| p.blobs.iter().map(move |b| (p, b)))
    };
    args.push(ints(refs().map(|(p, _)| p.repository_id)));
    args.push(array(refs().map(|(_, b)| Some(b.as_str()))));
    // children
    let children = || {
        pushes
            .iter()
            .flat_map(|p| p.children.iter().map(move |c| (p, c)))
    };
    args.push(ints(children().map(|(p, _)| p.repository_id)));
    args.push(array(children().map(|(_, c)| Some(c.as_str()))));
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
    // manifest_blobs and manifest_children rows
    args.push(ints(refs().map(|(p, _)| p.repository_id)));
    args.push(array(refs().map(|(p, _)| Some(p.digest.as_str()))));
    args.push(array(refs().map(|(_, b)| Some(b.as_str()))));
    args.push(ints(children().map(|(p, _)| p.repository_id)));
    args.push(array(children().map(|(p, _)| Some(p.digest.as_str()))));
    args.push(array(children().map(|(_, c)| Some(c.as_str()))));
    // audit_pending, as `audit::append` writes it
    let entries = || {
        pushes
            .iter()
            .flat_map(|p| p.entries.iter().map(move |e| (p, e)))
    };
    let details: Vec<Option<String>> = entries()
        .map(|(_, e)| e.detail.as_ref().map(|d| d.to_string()))
        .collect();
    args.push(array(entries().map(|(p, _)| Some(p.origin.actor.as_str()))));
    args.push(array(entries().map(|(p, _)| p.origin.client.as_deref())));
    args.push(array(entries().map(|(_, e)| Some(e.action))));
    args.push(array(entries().map(|(_, e)| e.repository.as_deref())));
    args.push(array(entries().map(|(_, e)| e.tag.as_deref())));
    args.push(array(entries().map(|(_, e)| e.digest.as_deref())));
    args.push(array(entries().map(|(_, e)| Some(e.result))));
    args.push(array(details.iter().map(|d| d.as_deref())));
    args.push(array(
        entries().map(|(p, _)| p.origin.request_id.as_deref()),
    ));
    args.push(array(
        entries().map(|(p, _)| p.origin.user_agent.as_deref()),
    ));

    let mut conn = pool.acquire().await?;
    match Exec::execute(&mut *conn, GROUP_PUSH, args).await {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(GUARD_MISS) => Ok(false),
        Err(e) => Err(e),
    }
}
