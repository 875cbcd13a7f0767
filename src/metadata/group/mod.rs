//! Group commit of the common changes on PostgreSQL: manifest pushes
//! ([`manifests`]) and blob pushes and mounts ([`blobs`]).
//!
//! Under concurrent pushes PostgreSQL's CPU is the limit, and most of a
//! change's one statement ([`super::exec::OneStatement`]: a few inserts and
//! their guards) is spent per statement and per table, not per row: the
//! message and portal, the executor start of each data-modifying clause with
//! its indexes and triggers, the snapshot, the commit and its WAL flush. So
//! the changes that queue up while earlier ones run are sent together as one
//! statement whose every clause writes the rows of all of them: a fixed text
//! over arrays (`unnest`), so PostgreSQL plans it once per connection whatever
//! the group's size and the changes' shapes. It commits all of them or none.
//!
//! A change that finds a runner free goes at once, alone: nothing waits to
//! fill a group. A group statement's guards are the single change's, summed
//! over the group. If a total misses, nothing of the group is written and each
//! change takes the path it would have taken alone ([`Grouped::Undecided`]).
//! Changes claiming the same row ([`Member::keys`]) never share a group.
//!
//! Groups run in tasks of their own, not in the requests' futures: a request
//! whose client goes away must not cancel a statement that others wait on.

pub(crate) mod blobs;
pub(crate) mod manifests;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::PgPool;
use tokio::sync::oneshot;

use super::audit::{AuditEntry, Origin};
use super::exec::{Exec, Val, GUARD_MISS};
use super::pg_array;

/// Groups of one kind in flight at once (changes running alone included),
/// each on a connection of its own. Two, so one group's round trip and commit
/// overlap the next one's execution; measured with manifest pushes at c16 on
/// two cores, two ran 27% more pushes than ungrouped statements and four 13%
/// (BENCHMARKS.md).
const RUNNERS: usize = 2;

/// Most changes in one group: bounds the statement, and so the latency the
/// first change of a group sees.
const MAX_GROUP: usize = 32;

/// A change that can be written in a group of its kind.
pub(crate) trait Member: Send + Sync + Sized + 'static {
    /// Names the kind in logs.
    const KIND: &'static str;

    /// The rows this change claims: no two changes of a group share one.
    fn keys(&self) -> Vec<String>;

    /// The statement writing all of `group` or nothing, and its arguments:
    /// a fixed text that raises [`GUARD_MISS`] when a guard's total misses.
    fn statement(group: &[&Self]) -> (&'static str, Vec<Val>);
}

/// What became of a change sent to a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grouped {
    /// Committed.
    Committed,
    /// It went alone and one of its own guards missed: nothing was written,
    /// and the general transaction settles it.
    Missed,
    /// Nothing was written (another change's guard, or an error): it goes alone.
    Undecided,
}

/// The changes of one kind waiting for a runner, and the runners at work.
pub(crate) struct Groups<M: Member> {
    inner: Arc<Inner<M>>,
}

impl<M: Member> Clone for Groups<M> {
    fn clone(&self) -> Self {
        Groups {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<M> {
    pool: PgPool,
    state: Mutex<State<M>>,
}

struct State<M> {
    queue: VecDeque<Waiting<M>>,
    runners: usize,
}

struct Waiting<M> {
    member: M,
    done: oneshot::Sender<Grouped>,
}

impl<M: Member> Groups<M> {
    pub(crate) fn new(pool: PgPool) -> Groups<M> {
        Groups {
            inner: Arc::new(Inner {
                pool,
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    runners: 0,
                }),
            }),
        }
    }

    /// A runner's place for a change to run alone, its own way, when one is
    /// free and no change waits: at concurrency 1 a group would only add a
    /// hop. Giving it back starts a runner for the changes that queued
    /// meanwhile.
    pub(crate) fn try_alone(&self) -> Option<Alone<M>> {
        let mut state = self.inner.lock();
        if state.runners < RUNNERS && state.queue.is_empty() {
            state.runners += 1;
            Some(Alone(self.inner.clone()))
        } else {
            None
        }
    }

    /// Sends `member` with the next group.
    pub(crate) async fn send(&self, member: M) -> Grouped {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut state = self.inner.lock();
            state.queue.push_back(Waiting { member, done });
            let start = state.runners < RUNNERS;
            if start {
                state.runners += 1;
            }
            start
        };
        if start {
            Runner::start(self.inner.clone());
        }
        // No answer: its runner was dropped (the runtime is shutting down,
        // or it panicked), perhaps mid-statement. Going alone settles it
        // either way: had the group committed, the change now finds its rows
        // there, as a retry does.
        answer.await.unwrap_or(Grouped::Undecided)
    }
}

impl<M: Member> Inner<M> {
    fn lock(&self) -> MutexGuard<'_, State<M>> {
        // The state is a queue and a counter, each change of which is done
        // before anything that could panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next group, oldest change first. `None` when none waits, and then
    /// the caller's place is given back under the same lock: a change queued
    /// after it looked finds the place free and starts a runner.
    fn take(&self) -> Option<Vec<Waiting<M>>> {
        let mut state = self.lock();
        let Some(first) = state.queue.pop_front() else {
            state.runners = state.runners.saturating_sub(1);
            return None;
        };
        let mut keys: HashSet<String> = first.member.keys().into_iter().collect();
        let mut group = vec![first];
        let mut i = 0;
        while i < state.queue.len() && group.len() < MAX_GROUP {
            let theirs = state.queue[i].member.keys();
            if theirs.iter().any(|k| keys.contains(k)) {
                i += 1;
                continue;
            }
            if let Some(w) = state.queue.remove(i) {
                keys.extend(theirs);
                group.push(w);
            }
        }
        Some(group)
    }

    /// Gives back the place of a runner that did not finish (it panicked, or
    /// the runtime is shutting down and dropped it): every change still
    /// waiting is answered [`Grouped::Undecided`] and goes alone, so none
    /// waits for a runner that may never come. Nothing is spawned here: a
    /// task spawned while the runtime shuts down is dropped at once, inside
    /// the spawn, and would come back here.
    fn abandon(&self) {
        let waiting: Vec<Waiting<M>> = {
            let mut state = self.lock();
            state.runners = state.runners.saturating_sub(1);
            state.queue.drain(..).collect()
        };
        // Dropping their senders answers them, outside the lock.
        drop(waiting);
    }
}

/// A runner's place, held by a change that runs alone ([`Groups::try_alone`]).
pub(crate) struct Alone<M: Member>(Arc<Inner<M>>);

impl<M: Member> Drop for Alone<M> {
    /// Gives the place to a new runner if changes queued meanwhile, else back.
    fn drop(&mut self) {
        let start = {
            let mut state = self.0.lock();
            let start = !state.queue.is_empty() && tokio::runtime::Handle::try_current().is_ok();
            if !start {
                state.runners = state.runners.saturating_sub(1);
            }
            start
        };
        if start {
            Runner::start(self.0.clone());
        }
    }
}

/// Takes groups until none waits, holding one of the places.
struct Runner<M: Member> {
    inner: Arc<Inner<M>>,
    /// Its place was given back when it found the queue empty.
    done: bool,
}

impl<M: Member> Runner<M> {
    /// Starts a runner in the place the caller took.
    fn start(inner: Arc<Inner<M>>) {
        tokio::spawn(Runner { inner, done: false }.work());
    }

    async fn work(mut self) {
        loop {
            let Some(group) = self.inner.take() else {
                self.done = true;
                return;
            };
            let outcome = match run(&self.inner.pool, &group).await {
                Ok(true) => Grouped::Committed,
                Ok(false) if group.len() == 1 => Grouped::Missed,
                Ok(false) => Grouped::Undecided,
                Err(e) => {
                    tracing::debug!(error = %e, kind = M::KIND, changes = group.len(), "group commit failed");
                    Grouped::Undecided
                }
            };
            for w in group {
                let _ = w.done.send(outcome);
            }
        }
    }
}

impl<M: Member> Drop for Runner<M> {
    fn drop(&mut self) {
        if !self.done {
            self.inner.abandon();
        }
    }
}

/// Runs `group` as one statement: true if it committed, false if a guard
/// missed and nothing was written.
async fn run<M: Member>(pool: &PgPool, group: &[Waiting<M>]) -> Result<bool, sqlx::Error> {
    let members: Vec<&M> = group.iter().map(|w| &w.member).collect();
    let (sql, args) = M::statement(&members);
    let mut conn = pool.acquire().await?;
    match Exec::execute(&mut *conn, sql, args).await {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(GUARD_MISS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// An array parameter of `items`.
fn array<'a>(items: impl IntoIterator<Item = Option<&'a str>>) -> Val {
    Val::Text(pg_array(items))
}

/// An array parameter of integers.
fn ints(items: impl IntoIterator<Item = i64>) -> Val {
    let texts: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    array(texts.iter().map(|s| Some(s.as_str())))
}

/// The `audit_pending` columns after `at`, as `audit::append` writes them:
/// ten array parameters, for `SELECT $1, * FROM unnest(…)` into `(at, actor,
/// client, action, repository, tag, digest, result, detail, request_id,
/// user_agent)`.
fn audit_args(entries: &[(&Origin, &AuditEntry)]) -> Vec<Val> {
    let details: Vec<Option<String>> = entries
        .iter()
        .map(|(_, e)| e.detail.as_ref().map(|d| d.to_string()))
        .collect();
    vec![
        array(entries.iter().map(|(o, _)| Some(o.actor.as_str()))),
        array(entries.iter().map(|(o, _)| o.client.as_deref())),
        array(entries.iter().map(|(_, e)| Some(e.action))),
        array(entries.iter().map(|(_, e)| e.repository.as_deref())),
        array(entries.iter().map(|(_, e)| e.tag.as_deref())),
        array(entries.iter().map(|(_, e)| e.digest.as_deref())),
        array(entries.iter().map(|(_, e)| Some(e.result))),
        array(details.iter().map(|d| d.as_deref())),
        array(entries.iter().map(|(o, _)| o.request_id.as_deref())),
        array(entries.iter().map(|(o, _)| o.user_agent.as_deref())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A change of a test kind, claiming the row it names.
    struct Probe(&'static str);

    impl Member for Probe {
        const KIND: &'static str = "probe";

        fn keys(&self) -> Vec<String> {
            vec![self.0.to_string()]
        }

        fn statement(_: &[&Probe]) -> (&'static str, Vec<Val>) {
            ("SELECT 1", Vec::new())
        }
    }

    /// A server shutting down while a runner is mid-group and a change still
    /// queues behind it stops: the dropped runner answers what waits (each
    /// would go alone) and spawns nothing. Spawning from its drop, as the
    /// runtime shuts down, dropped the new task inside the spawn, under the
    /// queue's lock, and the shutdown hung.
    #[test]
    fn shutting_down_with_changes_queued_does_not_hang() {
        let (stopped, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                // Nothing answers on port 1: a runner waits for a connection.
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .acquire_timeout(Duration::from_secs(600))
                    .connect_lazy("postgres://cairn:cairn@127.0.0.1:1/cairn")
                    .expect("pool");
                let groups = Groups::<Probe>::new(pool);
                let places = (groups.try_alone(), groups.try_alone());
                assert!(places.0.is_some() && places.1.is_some());
                assert!(groups.try_alone().is_none(), "two places");
                // Two changes claiming the same row: never in one group.
                for _ in 0..2 {
                    let g = groups.clone();
                    tokio::spawn(async move { g.send(Probe("row")).await });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(groups.inner.lock().queue.len(), 2);
                // A runner takes the first and waits; the second queues on.
                drop(places.0);
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(groups.inner.lock().queue.len(), 1);
                std::mem::forget(places.1);
            });
            drop(rt);
            let _ = stopped.send(());
        });
        wait.recv_timeout(Duration::from_secs(30))
            .expect("the runtime shut down");
    }
}
