//! Which artifacts retention may delete, and why each one stays or goes.
//!
//! Retention removes old manifests of a repository. It must never remove a
//! rollback target, anything under a legal hold, or anything a kept artifact
//! needs, so this module only ever answers with a plan that says, for every
//! manifest, why it is kept or which policy allowed its deletion. It does no I/O:
//! the caller gathers the facts (manifests, holds, promotions) and applies the plan.
//!
//! # Policies
//!
//! A policy (`[[retention.policies]]` in the configuration) selects repositories by
//! glob (`*` stays within one path component, `**` crosses `/`) and lists keep
//! rules. Every policy matching a repository applies there, and they combine by
//! **keep-wins**: an artifact is deleted only if no rule of any of them keeps it.
//! A repository no policy matches is left alone entirely. A policy must name at
//! least one keep rule: one with none would delete every unprotected artifact of
//! the repositories it matches, which is far more likely a mistake than intent
//! (say `keep_last = 0` to mean it).
//!
//! # How a plan is made ([`plan`])
//!
//! 1. **No policy** matches: everything is kept ([`Reason::NoPolicy`]). A
//!    policy handed to [`plan`] that would not load keeps everything too
//!    ([`Reason::InvalidPolicy`]): a deletion plan is never built on a guess.
//! 2. **Relations** count only between artifacts of the list. A *child* is listed
//!    in another artifact's `children` (an index's manifests); a *referrer* has a
//!    `subject` that is in the list. A referrer whose subject is absent (dangling)
//!    is not a referrer here: it is judged like any root.
//! 3. **Protections** keep an artifact whatever it is (root, child or referrer):
//!    a rollback target (the current and the previous K distinct digests promoted
//!    to each environment; see [`rollback_targets`]) or a legal hold.
//! 4. **Rules** judge the *roots* (neither child nor referrer) and also the
//!    *tagged children*. A tagged manifest was pushed by tag and can be pulled by
//!    that tag on its own, so it deserves the same rules as any tagged root; and
//!    since deleting an index turns its children into roots, judging them alike is
//!    what keeps the plan idempotent (a tagged child must not start counting
//!    towards `keep_last` only after its index is gone). The rules, any of which
//!    keeps:
//!    - `keep_last = N`: the N most recent *tagged* judged artifacts, ranked by
//!      `pushed_at` (newest first, ties by digest);
//!    - `keep_pushed_within_days = D`: pushed less than D days before `now`;
//!    - `keep_pulled_within_days = D`: last pulled (or, never pulled, pushed) less
//!      than D days before `now`;
//!    - `keep_tags`: any tag matches any of the globs;
//!    - `untagged_grace_days = D`: an *untagged* judged artifact pushed less than
//!      D days before `now`. Without it, untagged artifacts are judged only by
//!      the time rules.
//!
//!    "Within D days" is strict, so `0` keeps nothing; a time in the future
//!    counts as now.
//! 5. **Propagation**, to a fixpoint: a kept artifact keeps its children
//!    ([`Reason::ChildOf`]) and its referrers ([`Reason::ReferrerOf`]); a kept
//!    referrer keeps its subject ([`Reason::SubjectOf`]: a held signature keeps
//!    what it signs, and with it the image's other referrers and children).
//!    Nothing propagates from a child to its index: a held platform manifest
//!    does not keep the index that lists it.
//! 6. Everything else is **deleted**, and says which policies applied and
//!    why: `not kept by any rule of policy "services"` for a judged artifact,
//!    `index child of deleted sha256:…`, `referrer of deleted sha256:…`.
//!    Untagged children and referrers (subject present) are not judged by the
//!    rules: they follow their parents and subject, so an untagged child goes
//!    when every index listing it goes, and a referrer goes with its subject.
//!
//! A kept artifact's reasons are its protections and rule matches; only an
//! artifact kept by nothing else lists the relations that kept it, and only
//! those to artifacts kept by a shorter chain, so that every explanation leads
//! back to a protection or a rule rather than around a cycle. Where several
//! policies give the same kind of time or count reason, the tightest one is
//! shown ("pushed within 7 days" rather than also "within 30 days").
//!
//! Both lists are sorted newest first (`pushed_at` descending, then digest), and
//! reasons in [`Reason`]'s declaration order (protections first). The plan is
//! deterministic, independent of input order, and idempotent: planning again on
//! the artifacts it keeps deletes nothing more. It runs in O(n log n) of the
//! artifacts plus their relations.
//!
//! Artifacts signed with the cosign tag scheme (`sha256-….sig`, no `subject`)
//! are related to their image only if the caller sets `subject`; otherwise they
//! are ordinary tagged roots.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// K, the number of previous promoted digests kept per environment, when no
/// policy says otherwise.
pub const DEFAULT_ROLLBACK_DEPTH: u32 = 3;

const DAY_MS: i64 = 86_400_000;

/// The `[retention]` section of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
}

/// A policy as written in the configuration file (`[[retention.policies]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Shown in errors and in every deletion it allows.
    pub name: String,
    /// Repository globs; the policy applies if any matches.
    pub repositories: Vec<String>,
    /// Keep the N most recent tagged artifacts by push time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_pushed_within_days: Option<u32>,
    /// Uses `last_pulled_at` when known, else `pushed_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_pulled_within_days: Option<u32>,
    /// Tag globs, e.g. `v*`, `release-*`.
    #[serde(default)]
    pub keep_tags: Vec<String>,
    /// Untagged artifacts are kept this long after their push. `None`: untagged
    /// artifacts are judged only by the other rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untagged_grace_days: Option<u32>,
    /// K: how many previous distinct digests of each environment stay rollback
    /// targets besides the current one.
    #[serde(default = "default_rollback_depth")]
    pub rollback_depth: u32,
}

fn default_rollback_depth() -> u32 {
    DEFAULT_ROLLBACK_DEPTH
}

impl PolicySpec {
    fn has_keep_rule(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_pushed_within_days.is_some()
            || self.keep_pulled_within_days.is_some()
            || !self.keep_tags.is_empty()
            || self.untagged_grace_days.is_some()
    }
}

/// A policy that could not be loaded. `index` counts from 1, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("retention policy #{index} ({name:?}): pattern {pattern:?} is invalid: {reason}")]
    Pattern {
        index: usize,
        name: String,
        pattern: String,
        reason: String,
    },
    #[error("retention policy #{index} ({name:?}): {reason}")]
    Invalid {
        index: usize,
        name: String,
        reason: String,
    },
}

fn glob(index: usize, spec: &PolicySpec, pattern: &str) -> Result<globset::Glob, PolicyError> {
    let err = |reason: String| PolicyError::Pattern {
        index,
        name: spec.name.clone(),
        pattern: pattern.to_string(),
        reason,
    };
    if pattern.is_empty() {
        return Err(err("empty pattern".into()));
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| err(e.kind().to_string()))
}

/// Checks one policy on its own; `index` is its 1-based position.
fn validate(index: usize, spec: &PolicySpec) -> Result<(Vec<GlobMatcher>, TagRule), PolicyError> {
    let invalid = |reason: &str| PolicyError::Invalid {
        index,
        name: spec.name.clone(),
        reason: reason.to_string(),
    };
    if spec.name.trim().is_empty() {
        return Err(invalid("name must not be empty"));
    }
    if spec.repositories.is_empty() {
        return Err(invalid("repositories must list at least one pattern"));
    }
    if !spec.has_keep_rule() {
        return Err(invalid(
            "no keep rule (keep_last, keep_pushed_within_days, keep_pulled_within_days, \
             keep_tags, untagged_grace_days): it would delete every unprotected artifact; \
             say keep_last = 0 to mean that",
        ));
    }
    let repositories = spec
        .repositories
        .iter()
        .map(|p| glob(index, spec, p).map(|g| g.compile_matcher()))
        .collect::<Result<_, _>>()?;
    let mut set = GlobSetBuilder::new();
    for p in &spec.keep_tags {
        set.add(glob(index, spec, p)?);
    }
    let set = set.build().map_err(|e| invalid(&e.to_string()))?;
    Ok((
        repositories,
        TagRule {
            set,
            patterns: spec.keep_tags.clone(),
        },
    ))
}

/// A policy's compiled `keep_tags`.
#[derive(Debug, Clone)]
struct TagRule {
    set: GlobSet,
    patterns: Vec<String>,
}

#[derive(Debug, Clone)]
struct Compiled {
    spec: PolicySpec,
    repositories: Vec<GlobMatcher>,
}

/// The loaded, validated retention policies.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    policies: Vec<Compiled>,
}

impl RetentionPolicy {
    /// Validates and compiles `specs`: names must be non-empty and unique, each
    /// policy needs a repository pattern and a keep rule, and every glob must
    /// compile. Errors name the policy's position and name.
    pub fn new(specs: Vec<PolicySpec>) -> Result<RetentionPolicy, PolicyError> {
        let mut policies: Vec<Compiled> = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let index = i + 1;
            let (repositories, _) = validate(index, &spec)?;
            if let Some(first) = policies.iter().position(|p| p.spec.name == spec.name) {
                return Err(PolicyError::Invalid {
                    index,
                    name: spec.name.clone(),
                    reason: format!("the name is already used by policy #{}", first + 1),
                });
            }
            policies.push(Compiled { spec, repositories });
        }
        Ok(RetentionPolicy { policies })
    }

    /// All policies, in configuration order.
    pub fn policies(&self) -> impl Iterator<Item = &PolicySpec> {
        self.policies.iter().map(|p| &p.spec)
    }

    /// The policies that apply to `repo`, in configuration order; all of them
    /// combine, keep-wins. Empty: retention does nothing there.
    pub fn for_repository(&self, repo: &str) -> Vec<&PolicySpec> {
        self.policies
            .iter()
            .filter(|p| p.repositories.iter().any(|m| m.is_match(repo)))
            .map(|p| &p.spec)
            .collect()
    }

    /// K for `repo`: the largest among the matching policies, so that no policy
    /// loses a rollback target another promises; [`DEFAULT_ROLLBACK_DEPTH`] when
    /// none matches.
    pub fn rollback_depth(&self, repo: &str) -> u32 {
        self.for_repository(repo)
            .iter()
            .map(|p| p.rollback_depth)
            .max()
            .unwrap_or(DEFAULT_ROLLBACK_DEPTH)
    }

    /// [`plan`] with the policies matching `repo`.
    pub fn plan(
        &self,
        repo: &str,
        artifacts: &[Artifact],
        protections: &Protections,
        now_ms: i64,
    ) -> RepoPlan {
        plan(
            repo,
            artifacts,
            protections,
            &self.for_repository(repo),
            now_ms,
        )
    }
}

/// The rollback targets of one repository from its promotion history:
/// `history` maps each environment to the digests promoted there, newest first.
/// The first is "ENV current"; the next `depth` distinct digests other than it
/// are "ENV previous #1" … "ENV previous #K". A digest may carry several labels.
pub fn rollback_targets(
    history: &BTreeMap<String, Vec<String>>,
    depth: u32,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (env, digests) in history {
        let Some(current) = digests.first() else {
            continue;
        };
        out.entry(current.clone())
            .or_default()
            .push(format!("{env} current"));
        let mut seen = vec![current.as_str()];
        for d in &digests[1..] {
            if seen.len() > depth as usize {
                break;
            }
            if seen.contains(&d.as_str()) {
                continue;
            }
            out.entry(d.clone())
                .or_default()
                .push(format!("{env} previous #{}", seen.len()));
            seen.push(d);
        }
    }
    out
}

/// One manifest in a repository, as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub digest: String,
    /// Unix milliseconds.
    pub pushed_at: i64,
    pub last_pulled_at: Option<i64>,
    pub tags: Vec<String>,
    /// For an index: the digests of the manifests it lists.
    pub children: Vec<String>,
    /// For a referrer (signature, SBOM, attestation): the digest it refers to.
    pub subject: Option<String>,
}

/// What keeps an artifact regardless of any policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protections {
    /// Digest -> hold reasons (e.g. case numbers).
    pub holds: BTreeMap<String, Vec<String>>,
    /// Digest -> labels like "prod current", "prod previous #1" (see
    /// [`rollback_targets`]).
    pub rollback: BTreeMap<String, Vec<String>>,
}

/// Why an artifact is kept. Ordered as shown: protections first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The label, e.g. "prod previous #2".
    RollbackTarget(String),
    /// The hold's reason, e.g. "case-1234".
    LegalHold(String),
    /// The `keep_tags` glob that matched.
    TagPattern(String),
    /// Rank (from 1) among the tagged artifacts, newest first, within `keep_last`.
    MostRecent {
        rank: u32,
        of: u32,
    },
    PushedWithin(u32),
    PulledWithin(u32),
    UntaggedGrace(u32),
    /// Listed by this kept index.
    ChildOf(String),
    /// Refers to this kept subject.
    ReferrerOf(String),
    /// This kept referrer refers to it.
    SubjectOf(String),
    /// No retention policy matches the repository.
    NoPolicy,
    /// A policy given to [`plan`] is invalid, so nothing is deleted.
    InvalidPolicy(String),
}

impl Reason {
    /// A stable machine-readable name.
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::RollbackTarget(_) => "rollback_target",
            Reason::LegalHold(_) => "legal_hold",
            Reason::TagPattern(_) => "tag_pattern",
            Reason::MostRecent { .. } => "most_recent",
            Reason::PushedWithin(_) => "pushed_within",
            Reason::PulledWithin(_) => "pulled_within",
            Reason::UntaggedGrace(_) => "untagged_grace",
            Reason::ChildOf(_) => "child_of",
            Reason::ReferrerOf(_) => "referrer_of",
            Reason::SubjectOf(_) => "subject_of",
            Reason::NoPolicy => "no_policy",
            Reason::InvalidPolicy(_) => "invalid_policy",
        }
    }

    /// Reasons of which only the tightest is worth showing.
    fn is_measure(&self) -> bool {
        matches!(
            self,
            Reason::MostRecent { .. }
                | Reason::PushedWithin(_)
                | Reason::PulledWithin(_)
                | Reason::UntaggedGrace(_)
        )
    }
}

fn days(n: u32) -> String {
    if n == 1 {
        "1 day".into()
    } else {
        format!("{n} days")
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::RollbackTarget(l) => write!(f, "rollback target: {l}"),
            Reason::LegalHold(r) => write!(f, "legal hold: {r}"),
            Reason::TagPattern(p) => write!(f, "tag pattern {p}"),
            Reason::MostRecent { rank, of } => {
                write!(f, "among the {of} most recent tagged (#{rank})")
            }
            Reason::PushedWithin(d) => write!(f, "pushed within {}", days(*d)),
            Reason::PulledWithin(d) => write!(f, "pulled within {}", days(*d)),
            Reason::UntaggedGrace(d) => write!(f, "untagged, within grace {}", days(*d)),
            Reason::ChildOf(d) => write!(f, "index child of kept {d}"),
            Reason::ReferrerOf(d) => write!(f, "referrer of kept {d}"),
            Reason::SubjectOf(d) => write!(f, "subject of kept referrer {d}"),
            Reason::NoPolicy => f.write_str("no retention policy applies"),
            Reason::InvalidPolicy(e) => write!(f, "nothing is deleted: {e}"),
        }
    }
}

/// `{"kind": "legal_hold", "detail": "legal hold: case-1234"}`.
impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Reason", 2)?;
        s.serialize_field("kind", self.kind())?;
        s.serialize_field("detail", &self.to_string())?;
        s.end()
    }
}

/// An artifact the plan keeps, with every reason (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    pub digest: String,
    pub tags: Vec<String>,
    pub reasons: Vec<Reason>,
}

/// An artifact the plan deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Doomed {
    pub digest: String,
    pub tags: Vec<String>,
    /// Names of the policies that applied, joined by ", ".
    pub policy: String,
    /// E.g. `not kept by any rule of policy "services"`, `referrer of deleted sha256:…`.
    pub why: String,
}

/// The decision for every artifact of one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoPlan {
    pub repository: String,
    pub keep: Vec<Kept>,
    pub delete: Vec<Doomed>,
}

impl RepoPlan {
    pub fn is_noop(&self) -> bool {
        self.delete.is_empty()
    }
}

/// How artifacts of the list relate; indexes into the deduplicated list.
struct Graph {
    children: Vec<Vec<usize>>,
    parents: Vec<Vec<usize>>,
    subject: Vec<Option<usize>>,
    referrers: Vec<Vec<usize>>,
}

impl Graph {
    fn new(arts: &[&Artifact], index: &HashMap<&str, usize>) -> Graph {
        let n = arts.len();
        let mut children = vec![Vec::new(); n];
        let mut parents = vec![Vec::new(); n];
        let mut subject = vec![None; n];
        let mut referrers = vec![Vec::new(); n];
        for (i, a) in arts.iter().enumerate() {
            let mut kids: Vec<usize> = a
                .children
                .iter()
                .filter_map(|c| index.get(c.as_str()).copied())
                .filter(|&c| c != i)
                .collect();
            kids.sort_unstable();
            kids.dedup();
            for &c in &kids {
                parents[c].push(i);
            }
            children[i] = kids;
            if let Some(s) = a.subject.as_deref().and_then(|s| index.get(s).copied()) {
                if s != i {
                    subject[i] = Some(s);
                    referrers[s].push(i);
                }
            }
        }
        Graph {
            children,
            parents,
            subject,
            referrers,
        }
    }
}

/// Within `days` before `now`, strictly; a future time counts as now.
fn within(now_ms: i64, t: i64, days: u32) -> bool {
    now_ms.saturating_sub(t).max(0) < i64::from(days) * DAY_MS
}

/// Up to three digests, then how many more.
fn digest_list(arts: &[&Artifact], ids: &[usize]) -> String {
    let mut names: Vec<&str> = ids.iter().map(|&i| arts[i].digest.as_str()).collect();
    names.sort_unstable();
    let shown = names.len().min(3);
    let mut s = names[..shown].join(", ");
    if names.len() > shown {
        s.push_str(&format!(" and {} more", names.len() - shown));
    }
    s
}

/// Newest first, then by digest.
fn order(a: &Artifact, b: &Artifact) -> std::cmp::Ordering {
    b.pushed_at
        .cmp(&a.pushed_at)
        .then_with(|| a.digest.cmp(&b.digest))
}

/// The plan for one repository at `now_ms` (Unix ms) under `policies` (those
/// matching the repository, e.g. from [`RetentionPolicy::for_repository`]).
/// Pure; see the module documentation for the semantics. A digest listed twice is
/// judged once, by its first entry. Protections naming digests not in the list are
/// ignored.
pub fn plan(
    repo: &str,
    artifacts: &[Artifact],
    protections: &Protections,
    policies: &[&PolicySpec],
    now_ms: i64,
) -> RepoPlan {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(artifacts.len());
    let mut arts: Vec<&Artifact> = Vec::with_capacity(artifacts.len());
    for a in artifacts {
        if let Entry::Vacant(v) = index.entry(a.digest.as_str()) {
            v.insert(arts.len());
            arts.push(a);
        }
    }
    arts.sort_by(|a, b| order(a, b));
    for (i, a) in arts.iter().enumerate() {
        index.insert(a.digest.as_str(), i);
    }
    let n = arts.len();

    let keep_all = |reason: Reason| RepoPlan {
        repository: repo.to_string(),
        keep: arts
            .iter()
            .map(|a| Kept {
                digest: a.digest.clone(),
                tags: a.tags.clone(),
                reasons: vec![reason.clone()],
            })
            .collect(),
        delete: Vec::new(),
    };
    if policies.is_empty() {
        return keep_all(Reason::NoPolicy);
    }
    let mut tag_rules = Vec::with_capacity(policies.len());
    for (i, p) in policies.iter().enumerate() {
        match validate(i + 1, p) {
            Ok((_, tags)) => tag_rules.push(tags),
            Err(e) => return keep_all(Reason::InvalidPolicy(e.to_string())),
        }
    }

    let graph = Graph::new(&arts, &index);
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); n];

    // Protections: whatever the artifact is.
    let mut protect =
        |map: &BTreeMap<String, Vec<String>>, make: fn(String) -> Reason, none: &str| {
            for (digest, labels) in map {
                let Some(&i) = index.get(digest.as_str()) else {
                    continue;
                };
                if labels.is_empty() {
                    reasons[i].push(make(none.to_string()));
                }
                reasons[i].extend(labels.iter().cloned().map(make));
            }
        };
    protect(
        &protections.rollback,
        Reason::RollbackTarget,
        "(unlabelled)",
    );
    protect(&protections.holds, Reason::LegalHold, "(no reason given)");

    // Rules: roots and tagged children; referrers follow their subject.
    let judged: Vec<bool> = (0..n)
        .map(|i| {
            graph.subject[i].is_none() && (graph.parents[i].is_empty() || !arts[i].tags.is_empty())
        })
        .collect();
    // `arts` is sorted newest first, so ranks follow the list order.
    let mut rank = vec![0u32; n];
    let mut next = 0u32;
    for i in 0..n {
        if judged[i] && !arts[i].tags.is_empty() {
            next += 1;
            rank[i] = next;
        }
    }
    for (spec, tags) in policies.iter().zip(&tag_rules) {
        for i in (0..n).filter(|&i| judged[i]) {
            let a = arts[i];
            let r = &mut reasons[i];
            if let Some(of) = spec.keep_last {
                if rank[i] != 0 && rank[i] <= of {
                    r.push(Reason::MostRecent { rank: rank[i], of });
                }
            }
            if let Some(d) = spec.keep_pushed_within_days {
                if within(now_ms, a.pushed_at, d) {
                    r.push(Reason::PushedWithin(d));
                }
            }
            if let Some(d) = spec.keep_pulled_within_days {
                if within(now_ms, a.last_pulled_at.unwrap_or(a.pushed_at), d) {
                    r.push(Reason::PulledWithin(d));
                }
            }
            for tag in &a.tags {
                for m in tags.set.matches(tag) {
                    r.push(Reason::TagPattern(tags.patterns[m].clone()));
                }
            }
            if let Some(d) = spec.untagged_grace_days {
                if a.tags.is_empty() && within(now_ms, a.pushed_at, d) {
                    r.push(Reason::UntaggedGrace(d));
                }
            }
        }
    }

    // Propagation: breadth first from everything kept directly, so `level` is the
    // length of the shortest chain from a protection or rule.
    let mut level: Vec<Option<u32>> = vec![None; n];
    let mut queue = VecDeque::new();
    for i in 0..n {
        if !reasons[i].is_empty() {
            level[i] = Some(0);
            queue.push_back(i);
        }
    }
    while let Some(x) = queue.pop_front() {
        let l = level[x].unwrap_or(0) + 1;
        let next = graph.children[x]
            .iter()
            .chain(&graph.referrers[x])
            .chain(graph.subject[x].as_slice());
        for &y in next {
            if level[y].is_none() {
                level[y] = Some(l);
                queue.push_back(y);
            }
        }
    }
    for i in 0..n {
        let Some(l) = level[i].filter(|&l| l > 0) else {
            continue;
        };
        let before = |j: usize| level[j] == Some(l - 1);
        let digest = |j: usize| arts[j].digest.clone();
        let r = &mut reasons[i];
        for &p in graph.parents[i].iter().filter(|&&p| before(p)) {
            r.push(Reason::ChildOf(digest(p)));
        }
        if let Some(s) = graph.subject[i].filter(|&s| before(s)) {
            r.push(Reason::ReferrerOf(digest(s)));
        }
        for &q in graph.referrers[i].iter().filter(|&&q| before(q)) {
            r.push(Reason::SubjectOf(digest(q)));
        }
    }

    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let by_policies = format!(
        "not kept by any rule of {} {}",
        if names.len() == 1 {
            "policy"
        } else {
            "policies"
        },
        quoted.join(", ")
    );
    let mut out = RepoPlan {
        repository: repo.to_string(),
        keep: Vec::new(),
        delete: Vec::new(),
    };
    for (i, mut r) in reasons.into_iter().enumerate() {
        let a = arts[i];
        if level[i].is_some() {
            r.sort();
            r.dedup();
            // Sorted, so the first of each measure is the tightest.
            r.dedup_by(|later, kept| later.is_measure() && later.kind() == kept.kind());
            out.keep.push(Kept {
                digest: a.digest.clone(),
                tags: a.tags.clone(),
                reasons: r,
            });
            continue;
        }
        let mut why = Vec::new();
        if judged[i] {
            why.push(by_policies.clone());
        }
        if let Some(s) = graph.subject[i] {
            why.push(format!("referrer of deleted {}", arts[s].digest));
        }
        if !graph.parents[i].is_empty() {
            why.push(format!(
                "index child of deleted {}",
                digest_list(&arts, &graph.parents[i])
            ));
        }
        out.delete.push(Doomed {
            digest: a.digest.clone(),
            tags: a.tags.clone(),
            policy: names.join(", "),
            why: why.join("; "),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const NOW: i64 = 1_750_000_000_000;

    fn d(name: &str) -> String {
        format!("sha256:{name}")
    }

    /// An artifact pushed `age` days ago.
    fn art(name: &str, age: i64, tags: &[&str]) -> Artifact {
        Artifact {
            digest: d(name),
            pushed_at: NOW - age * DAY_MS,
            last_pulled_at: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            children: Vec::new(),
            subject: None,
        }
    }

    fn index(name: &str, age: i64, tags: &[&str], children: &[&str]) -> Artifact {
        Artifact {
            children: children.iter().map(|c| d(c)).collect(),
            ..art(name, age, tags)
        }
    }

    fn referrer(name: &str, age: i64, subject: &str) -> Artifact {
        Artifact {
            subject: Some(d(subject)),
            ..art(name, age, &[])
        }
    }

    fn policy(name: &str) -> PolicySpec {
        PolicySpec {
            name: name.into(),
            repositories: vec!["**".into()],
            keep_last: None,
            keep_pushed_within_days: None,
            keep_pulled_within_days: None,
            keep_tags: Vec::new(),
            untagged_grace_days: None,
            rollback_depth: DEFAULT_ROLLBACK_DEPTH,
        }
    }

    fn aggressive() -> PolicySpec {
        PolicySpec {
            keep_last: Some(1),
            keep_pushed_within_days: Some(0),
            ..policy("services")
        }
    }

    fn run(arts: &[Artifact], prot: &Protections, policies: &[PolicySpec]) -> RepoPlan {
        let refs: Vec<&PolicySpec> = policies.iter().collect();
        plan("team/app", arts, prot, &refs, NOW)
    }

    fn kept<'a>(p: &'a RepoPlan, name: &str) -> Option<&'a Kept> {
        p.keep.iter().find(|k| k.digest == d(name))
    }

    fn reasons(p: &RepoPlan, name: &str) -> Vec<String> {
        kept(p, name)
            .unwrap_or_else(|| panic!("{name} should be kept: {p:#?}"))
            .reasons
            .iter()
            .map(|r| r.to_string())
            .collect()
    }

    fn doomed<'a>(p: &'a RepoPlan, name: &str) -> &'a Doomed {
        p.delete
            .iter()
            .find(|x| x.digest == d(name))
            .unwrap_or_else(|| panic!("{name} should be deleted: {p:#?}"))
    }

    fn protections(rollback: &[(&str, &str)], holds: &[(&str, &str)]) -> Protections {
        let mut p = Protections::default();
        for (n, l) in rollback {
            p.rollback.entry(d(n)).or_default().push(l.to_string());
        }
        for (n, l) in holds {
            p.holds.entry(d(n)).or_default().push(l.to_string());
        }
        p
    }

    #[test]
    fn an_aggressive_policy_keeps_protected_artifacts_and_what_they_need() {
        let arts = vec![
            index("prod", 400, &[], &["prod-amd64", "prod-arm64"]),
            art("prod-amd64", 400, &[]),
            art("prod-arm64", 400, &[]),
            referrer("prod-sig", 400, "prod"),
            art("prev", 300, &["v1"]),
            art("held", 500, &["old"]),
            referrer("held-sbom", 499, "held"),
            referrer("sbom-sig", 498, "held-sbom"),
            art("newest", 1, &["v9"]),
            art("junk", 200, &["v2"]),
            art("junk-untagged", 2, &[]),
        ];
        let prot = protections(
            &[("prod", "prod current"), ("prev", "prod previous #1")],
            &[("held", "case-1234")],
        );
        let p = run(&arts, &prot, &[aggressive()]);
        assert_eq!(reasons(&p, "prod"), ["rollback target: prod current"]);
        assert_eq!(
            reasons(&p, "prod-amd64"),
            [format!("index child of kept {}", d("prod"))]
        );
        assert!(kept(&p, "prod-arm64").is_some());
        assert_eq!(
            reasons(&p, "prod-sig"),
            [format!("referrer of kept {}", d("prod"))]
        );
        assert_eq!(reasons(&p, "prev"), ["rollback target: prod previous #1"]);
        assert_eq!(reasons(&p, "held"), ["legal hold: case-1234"]);
        assert_eq!(
            reasons(&p, "held-sbom"),
            [format!("referrer of kept {}", d("held"))]
        );
        assert_eq!(
            reasons(&p, "sbom-sig"),
            [format!("referrer of kept {}", d("held-sbom"))]
        );
        assert_eq!(
            reasons(&p, "newest"),
            ["among the 1 most recent tagged (#1)"]
        );
        let junk = doomed(&p, "junk");
        assert_eq!(junk.policy, "services");
        assert_eq!(junk.why, "not kept by any rule of policy \"services\"");
        doomed(&p, "junk-untagged");
        assert_eq!(p.keep.len() + p.delete.len(), arts.len());
    }

    #[test]
    fn tag_patterns_keep() {
        let arts = vec![
            art("rel", 900, &["latest", "v1.2.0"]),
            art("nested", 900, &["release/1"]),
            art("dev", 900, &["dev-123"]),
        ];
        let spec = PolicySpec {
            keep_tags: vec!["v*".into(), "release-*".into(), "release*".into()],
            ..policy("tags")
        };
        let p = run(&arts, &Protections::default(), &[spec]);
        assert_eq!(reasons(&p, "rel"), ["tag pattern v*"]);
        // `*` does not cross `/` in tags either.
        doomed(&p, "nested");
        doomed(&p, "dev");
    }

    #[test]
    fn pulled_within_uses_the_pull_time_over_the_push_time() {
        let mut pulled = art("pulled", 100, &["a"]);
        pulled.last_pulled_at = Some(NOW - 3 * DAY_MS);
        let mut stale = art("stale", 2, &["b"]);
        stale.last_pulled_at = Some(NOW - 30 * DAY_MS);
        let arts = vec![
            pulled,
            stale,
            art("fresh", 5, &["c"]),
            art("old", 20, &["d"]),
        ];
        let spec = PolicySpec {
            keep_pulled_within_days: Some(14),
            ..policy("pulls")
        };
        let p = run(&arts, &Protections::default(), &[spec]);
        assert_eq!(reasons(&p, "pulled"), ["pulled within 14 days"]);
        // Never pulled: the push time stands in.
        assert_eq!(reasons(&p, "fresh"), ["pulled within 14 days"]);
        doomed(&p, "stale");
        doomed(&p, "old");
    }

    #[test]
    fn within_is_strict_and_the_future_counts_as_now() {
        let at = |name: &str, ms: i64| Artifact {
            pushed_at: NOW - ms,
            ..art(name, 0, &["t"])
        };
        let arts = vec![
            at("edge", 2 * DAY_MS),
            at("inside", 2 * DAY_MS - 1),
            at("future", -DAY_MS),
        ];
        let two = PolicySpec {
            keep_pushed_within_days: Some(2),
            ..policy("two")
        };
        let p = run(&arts, &Protections::default(), &[two]);
        doomed(&p, "edge");
        assert!(kept(&p, "inside").is_some());
        assert!(kept(&p, "future").is_some());
        let zero = PolicySpec {
            keep_pushed_within_days: Some(0),
            ..policy("zero")
        };
        let p = run(&arts, &Protections::default(), &[zero]);
        assert_eq!(p.delete.len(), 3, "{p:#?}");
    }

    #[test]
    fn untagged_artifacts_get_their_grace_period() {
        let arts = vec![
            art("young", 1, &[]),
            art("expired", 3, &[]),
            art("tagged-old", 3, &["x"]),
        ];
        let spec = PolicySpec {
            untagged_grace_days: Some(2),
            ..policy("grace")
        };
        let p = run(&arts, &Protections::default(), std::slice::from_ref(&spec));
        assert_eq!(reasons(&p, "young"), ["untagged, within grace 2 days"]);
        doomed(&p, "expired");
        // Grace is for untagged artifacts only.
        doomed(&p, "tagged-old");

        // Without grace, untagged artifacts are judged by the other rules alone.
        let spec = PolicySpec {
            keep_pushed_within_days: Some(2),
            ..policy("time")
        };
        let p = run(&arts, &Protections::default(), &[spec]);
        assert_eq!(reasons(&p, "young"), ["pushed within 2 days"]);
        doomed(&p, "expired");
    }

    #[test]
    fn referrers_are_deleted_with_their_subject() {
        let arts = vec![
            art("img", 100, &["old"]),
            referrer("sig", 1, "img"),
            referrer("sig-of-sig", 1, "sig"),
            art("keep", 1, &["new"]),
            referrer("keep-sig", 1, "keep"),
        ];
        let p = run(&arts, &Protections::default(), &[aggressive()]);
        assert_eq!(
            doomed(&p, "sig").why,
            format!("referrer of deleted {}", d("img"))
        );
        assert_eq!(doomed(&p, "sig").policy, "services");
        assert_eq!(
            doomed(&p, "sig-of-sig").why,
            format!("referrer of deleted {}", d("sig"))
        );
        assert_eq!(
            reasons(&p, "keep-sig"),
            [format!("referrer of kept {}", d("keep"))]
        );
    }

    #[test]
    fn a_dangling_referrer_is_judged_like_a_root() {
        let arts = vec![
            Artifact {
                subject: Some(d("gone")),
                ..art("young", 1, &[])
            },
            Artifact {
                subject: Some(d("gone")),
                ..art("old", 5, &[])
            },
        ];
        let spec = PolicySpec {
            untagged_grace_days: Some(2),
            ..policy("grace")
        };
        let p = run(&arts, &Protections::default(), &[spec]);
        assert_eq!(reasons(&p, "young"), ["untagged, within grace 2 days"]);
        assert_eq!(
            doomed(&p, "old").why,
            "not kept by any rule of policy \"grace\""
        );
    }

    #[test]
    fn a_held_referrer_keeps_its_subject_and_what_the_subject_needs() {
        let arts = vec![
            index("img", 100, &["old"], &["img-amd64"]),
            art("img-amd64", 100, &[]),
            referrer("sig", 100, "img"),
            referrer("sbom", 100, "img"),
            art("newer", 1, &["new"]),
        ];
        let prot = protections(&[], &[("sig", "case-9")]);
        let p = run(&arts, &prot, &[aggressive()]);
        assert_eq!(reasons(&p, "sig"), ["legal hold: case-9"]);
        assert_eq!(
            reasons(&p, "img"),
            [format!("subject of kept referrer {}", d("sig"))]
        );
        assert_eq!(
            reasons(&p, "img-amd64"),
            [format!("index child of kept {}", d("img"))]
        );
        assert_eq!(
            reasons(&p, "sbom"),
            [format!("referrer of kept {}", d("img"))]
        );
        assert!(p.delete.is_empty(), "{p:#?}");
    }

    #[test]
    fn a_held_child_does_not_keep_its_index() {
        let arts = vec![
            index("idx", 100, &["old"], &["amd64"]),
            art("amd64", 100, &[]),
            art("newer", 1, &["new"]),
        ];
        let prot = protections(&[], &[("amd64", "case-1")]);
        let p = run(&arts, &prot, &[aggressive()]);
        assert_eq!(reasons(&p, "amd64"), ["legal hold: case-1"]);
        doomed(&p, "idx");
    }

    #[test]
    fn a_kept_index_keeps_its_children_and_nested_indexes() {
        let arts = vec![
            index("top", 1, &["v1"], &["mid", "leaf-a"]),
            index("mid", 1, &[], &["leaf-b"]),
            art("leaf-a", 100, &[]),
            art("leaf-b", 100, &[]),
        ];
        let spec = PolicySpec {
            keep_tags: vec!["v*".into()],
            ..policy("tags")
        };
        let p = run(&arts, &Protections::default(), &[spec]);
        assert!(p.delete.is_empty(), "{p:#?}");
        assert_eq!(
            reasons(&p, "leaf-b"),
            [format!("index child of kept {}", d("mid"))]
        );
    }

    #[test]
    fn a_child_shared_by_a_kept_and_a_deleted_index_is_kept() {
        let arts = vec![
            index("new", 1, &["v2"], &["shared", "only-new"]),
            index("old", 100, &["v1"], &["shared", "only-old"]),
            art("shared", 100, &[]),
            art("only-new", 1, &[]),
            art("only-old", 100, &[]),
        ];
        let p = run(&arts, &Protections::default(), &[aggressive()]);
        assert_eq!(
            reasons(&p, "shared"),
            [format!("index child of kept {}", d("new"))]
        );
        doomed(&p, "old");
        assert_eq!(
            doomed(&p, "only-old").why,
            format!("index child of deleted {}", d("old"))
        );
    }

    #[test]
    fn a_tagged_child_is_judged_like_a_root() {
        let arts = vec![
            index("idx", 100, &["v1"], &["amd64", "arm64"]),
            art("amd64", 100, &["v1-amd64"]),
            art("arm64", 100, &[]),
            art("newest", 1, &["v2"]),
        ];
        let spec = PolicySpec {
            keep_last: Some(1),
            keep_tags: vec!["*-amd64".into()],
            ..policy("p")
        };
        let p = run(&arts, &Protections::default(), &[spec]);
        assert_eq!(reasons(&p, "amd64"), ["tag pattern *-amd64"]);
        doomed(&p, "idx");
        let arm = doomed(&p, "arm64");
        assert_eq!(arm.why, format!("index child of deleted {}", d("idx")));
    }

    #[test]
    fn keep_last_ranks_tagged_artifacts_by_push_time_then_digest() {
        let arts = vec![
            art("c", 1, &["t"]),
            art("b", 1, &["t"]),
            art("a", 5, &["t"]),
            art("u", 0, &[]),
        ];
        let spec = PolicySpec {
            keep_last: Some(2),
            ..policy("last")
        };
        let p = run(&arts, &Protections::default(), &[spec]);
        assert_eq!(reasons(&p, "b"), ["among the 2 most recent tagged (#1)"]);
        assert_eq!(reasons(&p, "c"), ["among the 2 most recent tagged (#2)"]);
        doomed(&p, "a");
        doomed(&p, "u");
        // Output: newest first, then digest.
        let order: Vec<&str> = p.keep.iter().map(|k| k.digest.as_str()).collect();
        assert_eq!(order, [d("b"), d("c")]);
        let order: Vec<&str> = p.delete.iter().map(|k| k.digest.as_str()).collect();
        assert_eq!(order, [d("u"), d("a")]);
    }

    #[test]
    fn policies_combine_keep_wins_and_show_the_tightest_measure() {
        let arts = vec![
            art("a", 3, &["v1"]),
            art("b", 10, &["x"]),
            art("c", 40, &["y"]),
        ];
        let one = PolicySpec {
            keep_pushed_within_days: Some(7),
            keep_tags: vec!["v*".into()],
            ..policy("one")
        };
        let two = PolicySpec {
            keep_pushed_within_days: Some(30),
            keep_tags: vec!["v*".into()],
            ..policy("two")
        };
        let p = run(&arts, &Protections::default(), &[one, two]);
        assert_eq!(reasons(&p, "a"), ["tag pattern v*", "pushed within 7 days"]);
        assert_eq!(reasons(&p, "b"), ["pushed within 30 days"]);
        let c = doomed(&p, "c");
        assert_eq!(c.policy, "one, two");
        assert_eq!(c.why, "not kept by any rule of policies \"one\", \"two\"");
    }

    #[test]
    fn protections_come_first_and_all_are_listed() {
        let arts = vec![art("a", 1, &["v1"])];
        let prot = protections(
            &[("a", "stage current"), ("a", "prod previous #2")],
            &[("a", "case-2"), ("a", "case-1")],
        );
        let spec = PolicySpec {
            keep_tags: vec!["v*".into()],
            ..policy("p")
        };
        let p = run(&arts, &prot, &[spec]);
        assert_eq!(
            reasons(&p, "a"),
            [
                "rollback target: prod previous #2",
                "rollback target: stage current",
                "legal hold: case-1",
                "legal hold: case-2",
                "tag pattern v*",
            ]
        );
    }

    #[test]
    fn no_policy_keeps_everything() {
        let arts = vec![art("a", 1000, &[]), art("b", 1000, &["x"])];
        let p = run(&arts, &Protections::default(), &[]);
        assert!(p.delete.is_empty());
        assert_eq!(p.keep.len(), 2);
        assert!(p.keep.iter().all(|k| k.reasons == [Reason::NoPolicy]));
    }

    #[test]
    fn an_invalid_policy_given_to_plan_deletes_nothing() {
        let arts = vec![art("a", 1000, &[])];
        let bad = PolicySpec {
            keep_tags: vec!["[".into()],
            ..policy("bad")
        };
        let p = run(&arts, &Protections::default(), &[aggressive(), bad]);
        assert!(p.delete.is_empty());
        let r = &p.keep[0].reasons;
        assert!(
            matches!(&r[..], [Reason::InvalidPolicy(e)] if e.contains("\"bad\"")),
            "{r:?}"
        );
    }

    #[test]
    fn bad_policies_are_refused_with_their_position_and_name() {
        let err = |specs: Vec<PolicySpec>| RetentionPolicy::new(specs).unwrap_err().to_string();

        let e = err(vec![
            aggressive(),
            PolicySpec {
                name: "broken".into(),
                repositories: vec!["team/[a".into()],
                ..aggressive()
            },
        ]);
        assert!(
            e.contains("#2") && e.contains("\"broken\"") && e.contains("team/[a"),
            "{e}"
        );

        let e = err(vec![PolicySpec {
            keep_tags: vec!["v{1".into()],
            ..policy("tags")
        }]);
        assert!(e.contains("#1") && e.contains("v{1"), "{e}");

        let e = err(vec![PolicySpec {
            keep_tags: vec![String::new()],
            ..policy("empty")
        }]);
        assert!(e.contains("empty pattern"), "{e}");

        let e = err(vec![PolicySpec {
            name: "  ".into(),
            ..aggressive()
        }]);
        assert!(
            e.contains("#1") && e.contains("name must not be empty"),
            "{e}"
        );

        let e = err(vec![aggressive(), aggressive()]);
        assert!(
            e.contains("#2") && e.contains("\"services\"") && e.contains("policy #1"),
            "{e}"
        );

        let e = err(vec![PolicySpec {
            repositories: vec![],
            ..aggressive()
        }]);
        assert!(e.contains("repositories"), "{e}");

        let e = err(vec![policy("lazy")]);
        assert!(e.contains("\"lazy\"") && e.contains("no keep rule"), "{e}");

        assert!(RetentionPolicy::new(vec![PolicySpec {
            keep_last: Some(0),
            ..policy("all")
        }])
        .is_ok());
    }

    #[test]
    fn repositories_match_by_glob_and_all_matching_policies_apply() {
        let specs = vec![
            PolicySpec {
                repositories: vec!["team/*".into()],
                rollback_depth: 5,
                ..aggressive()
            },
            PolicySpec {
                repositories: vec!["**".into()],
                rollback_depth: 2,
                ..policy("everything")
            }
            .with_keep_last(10),
            PolicySpec {
                repositories: vec!["cache/**".into(), "tmp".into()],
                rollback_depth: 0,
                ..policy("caches")
            }
            .with_keep_last(1),
        ];
        let rp = RetentionPolicy::new(specs).unwrap();
        let names = |repo: &str| -> Vec<String> {
            rp.for_repository(repo)
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        assert_eq!(names("team/app"), ["services", "everything"]);
        // `*` stays within one component.
        assert_eq!(names("team/app/api"), ["everything"]);
        assert_eq!(names("cache/x/y"), ["everything", "caches"]);
        assert_eq!(rp.rollback_depth("team/app"), 5);
        assert_eq!(rp.rollback_depth("tmp"), 2);
        assert_eq!(rp.policies().count(), 3);

        let only = RetentionPolicy::new(vec![PolicySpec {
            repositories: vec!["tmp".into()],
            rollback_depth: 1,
            ..aggressive()
        }])
        .unwrap();
        assert!(only.for_repository("team/app").is_empty());
        assert_eq!(only.rollback_depth("team/app"), DEFAULT_ROLLBACK_DEPTH);
        let p = only.plan(
            "team/app",
            &[art("a", 999, &[])],
            &Protections::default(),
            NOW,
        );
        assert!(p.is_noop());
        assert_eq!(p.keep[0].reasons, [Reason::NoPolicy]);
    }

    impl PolicySpec {
        fn with_keep_last(self, n: u32) -> PolicySpec {
            PolicySpec {
                keep_last: Some(n),
                ..self
            }
        }
    }

    #[test]
    fn policies_parse_from_toml_and_unknown_fields_are_refused() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            retention: RetentionConfig,
        }
        let text = r#"
            [[retention.policies]]
            name = "services"
            repositories = ["team/*", "svc/**"]
            keep_last = 5
            keep_pushed_within_days = 30
            keep_pulled_within_days = 14
            keep_tags = ["v*", "release-*"]
            untagged_grace_days = 2
            rollback_depth = 4

            [[retention.policies]]
            name = "minimal"
            repositories = ["**"]
            keep_last = 1
        "#;
        let f: File = toml::from_str(text).unwrap();
        let p = &f.retention.policies;
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].keep_last, Some(5));
        assert_eq!(p[0].keep_tags, ["v*", "release-*"]);
        assert_eq!(p[0].untagged_grace_days, Some(2));
        assert_eq!(p[0].rollback_depth, 4);
        assert_eq!(p[1].rollback_depth, DEFAULT_ROLLBACK_DEPTH);
        assert!(p[1].keep_tags.is_empty());
        assert_eq!(p[1].keep_pulled_within_days, None);
        RetentionPolicy::new(p.clone()).unwrap();

        // A bare `[[policies]]` list, as the section itself.
        let c: RetentionConfig =
            toml::from_str("[[policies]]\nname = \"a\"\nrepositories = [\"x\"]\nkeep_last = 2\n")
                .unwrap();
        assert_eq!(c.policies[0].name, "a");
        assert_eq!(
            toml::from_str::<RetentionConfig>("").unwrap(),
            RetentionConfig::default()
        );

        let e = toml::from_str::<RetentionConfig>(
            "[[policies]]\nname = \"a\"\nrepositories = [\"x\"]\nkeep_latest = 2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("keep_latest"), "{e}");
        assert!(toml::from_str::<RetentionConfig>("[[policies]]\nname = \"a\"\n").is_err());

        // And back.
        let again: RetentionConfig = toml::from_str(
            &toml::to_string(&RetentionConfig {
                policies: p.clone(),
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(&again.policies, p);
    }

    #[test]
    fn reasons_read_as_sentences_and_serialize_with_kind_and_detail() {
        let texts: Vec<String> = [
            Reason::RollbackTarget("prod current".into()),
            Reason::LegalHold("case-1234".into()),
            Reason::TagPattern("v*".into()),
            Reason::MostRecent { rank: 2, of: 5 },
            Reason::PushedWithin(30),
            Reason::PulledWithin(1),
            Reason::UntaggedGrace(2),
            Reason::ChildOf("sha256:a".into()),
            Reason::ReferrerOf("sha256:b".into()),
            Reason::SubjectOf("sha256:c".into()),
            Reason::NoPolicy,
        ]
        .iter()
        .map(|r| r.to_string())
        .collect();
        assert_eq!(
            texts,
            [
                "rollback target: prod current",
                "legal hold: case-1234",
                "tag pattern v*",
                "among the 5 most recent tagged (#2)",
                "pushed within 30 days",
                "pulled within 1 day",
                "untagged, within grace 2 days",
                "index child of kept sha256:a",
                "referrer of kept sha256:b",
                "subject of kept referrer sha256:c",
                "no retention policy applies",
            ]
        );
        #[derive(Serialize)]
        struct W {
            r: Reason,
        }
        let s = toml::to_string(&W {
            r: Reason::LegalHold("case-1".into()),
        })
        .unwrap();
        assert!(s.contains("kind = \"legal_hold\""), "{s}");
        assert!(s.contains("detail = \"legal hold: case-1\""), "{s}");
    }

    #[test]
    fn rollback_targets_are_the_current_and_previous_distinct_digests() {
        let mut history = BTreeMap::new();
        history.insert(
            "prod".to_string(),
            ["c", "b", "c", "b", "a", "z", "y"].map(d).to_vec(),
        );
        history.insert("stage".to_string(), vec![d("c")]);
        history.insert("empty".to_string(), vec![]);
        let t = rollback_targets(&history, 3);
        assert_eq!(t[&d("c")], ["prod current", "stage current"]);
        assert_eq!(t[&d("b")], ["prod previous #1"]);
        assert_eq!(t[&d("a")], ["prod previous #2"]);
        assert_eq!(t[&d("z")], ["prod previous #3"]);
        assert!(!t.contains_key(&d("y")));
        assert_eq!(rollback_targets(&history, 0).len(), 1);
    }

    #[test]
    fn a_digest_listed_twice_is_judged_once() {
        let arts = vec![art("a", 1, &["x"]), art("a", 1, &["x"]), art("b", 100, &[])];
        let p = run(&arts, &Protections::default(), &[aggressive()]);
        assert_eq!(p.keep.len(), 1);
        assert_eq!(p.delete.len(), 1);
    }

    /// Thousands of artifacts, with indexes sharing children and chains of
    /// referrers: this finishes quickly only without quadratic work.
    #[test]
    fn plans_thousands_of_artifacts() {
        let mut arts = Vec::new();
        let mut prot = Protections::default();
        for i in 0..1000i64 {
            let kids: Vec<String> = (0..3).map(|k| format!("c{i}-{k}")).collect();
            let mut idx = index(
                &format!("i{i}"),
                1000 - i,
                &[&format!("v{i}")],
                &kids.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            // Every index also lists one base manifest shared by all of them.
            idx.children.push(d("shared"));
            arts.push(idx);
            for k in &kids {
                arts.push(art(k, 1000 - i, &[]));
            }
            arts.push(referrer(&format!("s{i}"), 1000 - i, &format!("i{i}")));
            if i % 100 == 0 {
                prot.holds
                    .insert(d(&format!("s{i}")), vec![format!("case-{i}")]);
            }
        }
        arts.push(art("shared", 2000, &[]));
        assert!(arts.len() > 5000);
        let spec = PolicySpec {
            keep_last: Some(10),
            keep_pushed_within_days: Some(30),
            ..policy("big")
        };
        let p = run(&arts, &prot, std::slice::from_ref(&spec));
        assert_eq!(p.keep.len() + p.delete.len(), arts.len());
        assert!(kept(&p, "shared").is_some());
        // 29 releases pushed within 30 days (ages 1 to 29, covering the 10
        // most recent) plus 10 older ones whose held signature keeps them, each
        // with 3 children and a signature; and the shared base.
        assert_eq!(p.keep.len(), 39 * 5 + 1);
        let keep: BTreeSet<&str> = p.keep.iter().map(|k| k.digest.as_str()).collect();
        let again: Vec<Artifact> = arts
            .iter()
            .filter(|a| keep.contains(a.digest.as_str()))
            .cloned()
            .collect();
        assert!(run(&again, &prot, &[spec]).is_noop());
    }

    // Property tests on random graphs.

    fn arb_policy() -> impl Strategy<Value = PolicySpec> {
        (
            proptest::option::of(0u32..6),
            proptest::option::of(0u32..40),
            proptest::option::of(0u32..40),
            proptest::collection::vec(prop_oneof!["v\\*", "a", "\\*-dev", "b\\*"], 0..3),
            proptest::option::of(0u32..10),
        )
            .prop_map(|(last, pushed, pulled, keep_tags, grace)| PolicySpec {
                name: String::new(),
                repositories: vec!["**".into()],
                keep_last: last,
                keep_pushed_within_days: pushed,
                keep_pulled_within_days: pulled,
                keep_tags,
                untagged_grace_days: grace,
                rollback_depth: DEFAULT_ROLLBACK_DEPTH,
            })
            .prop_filter("a policy needs a keep rule", PolicySpec::has_keep_rule)
    }

    type Case = (Vec<Artifact>, Protections, Vec<PolicySpec>);

    fn arb_case() -> impl Strategy<Value = Case> {
        let node = (
            0i64..60,
            proptest::option::of(0i64..60),
            proptest::collection::vec(prop_oneof!["v1", "v2", "a", "x-dev", "b1", "c"], 0..3),
            proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
            proptest::option::of((any::<prop::sample::Index>(), any::<bool>())),
            0u8..10,
        );
        (
            proptest::collection::vec(node, 1..30),
            proptest::collection::vec(arb_policy(), 0..3),
        )
            .prop_map(|(nodes, policies)| {
                let n = nodes.len();
                let mut arts = Vec::with_capacity(n);
                let mut prot = Protections::default();
                for (i, (age, pulled, tags, kids, subject, protect)) in
                    nodes.into_iter().enumerate()
                {
                    let name = format!("{i:03}");
                    // Children come from earlier artifacts (a DAG, as content
                    // addressing guarantees); subjects may be anything, even
                    // absent.
                    let children = kids
                        .iter()
                        .filter(|_| i > 0)
                        .map(|k| d(&format!("{:03}", k.index(i))))
                        .collect();
                    let subject = subject.map(|(s, dangling)| {
                        if dangling {
                            d("absent")
                        } else {
                            d(&format!("{:03}", s.index(n)))
                        }
                    });
                    match protect {
                        0 => {
                            prot.holds.insert(d(&name), vec!["case".into()]);
                        }
                        1 => {
                            prot.rollback.insert(d(&name), vec!["prod current".into()]);
                        }
                        _ => {}
                    }
                    arts.push(Artifact {
                        digest: d(&name),
                        pushed_at: NOW - age * DAY_MS,
                        last_pulled_at: pulled.map(|p| NOW - p * DAY_MS),
                        tags,
                        children,
                        subject,
                    });
                }
                prot.holds.insert(d("absent-held"), vec!["case".into()]);
                let policies = policies
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| PolicySpec {
                        name: format!("p{i}"),
                        ..p
                    })
                    .collect();
                (arts, prot, policies)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn plans_are_safe_complete_and_idempotent((arts, prot, policies) in arb_case()) {
            let p = run(&arts, &prot, &policies);
            let keep: BTreeSet<&str> = p.keep.iter().map(|k| k.digest.as_str()).collect();
            let delete: BTreeSet<&str> = p.delete.iter().map(|k| k.digest.as_str()).collect();

            // (c) A partition of all artifacts.
            let all: BTreeSet<&str> = arts.iter().map(|a| a.digest.as_str()).collect();
            prop_assert_eq!(keep.len(), p.keep.len());
            prop_assert_eq!(delete.len(), p.delete.len());
            prop_assert!(keep.is_disjoint(&delete));
            prop_assert_eq!(&keep | &delete, all.clone());

            // (a) Nothing protected is deleted.
            for digest in prot.holds.keys().chain(prot.rollback.keys()) {
                prop_assert!(!delete.contains(digest.as_str()), "{} deleted", digest);
            }

            // (b) What a kept artifact needs is kept.
            for a in arts.iter().filter(|a| keep.contains(a.digest.as_str())) {
                for c in a.children.iter().filter(|c| all.contains(c.as_str())) {
                    prop_assert!(keep.contains(c.as_str()), "child {} of kept {}", c, a.digest);
                }
                if let Some(s) = a.subject.as_deref().filter(|s| all.contains(s)) {
                    prop_assert!(keep.contains(s), "subject {} of kept {}", s, a.digest);
                }
            }
            for a in arts.iter().filter(|a| delete.contains(a.digest.as_str())) {
                if let Some(s) = a.subject.as_deref() {
                    prop_assert!(!keep.contains(s), "referrer {} of kept {}", a.digest, s);
                }
            }

            // Every decision says why.
            for k in &p.keep {
                prop_assert!(!k.reasons.is_empty());
            }
            for x in &p.delete {
                prop_assert!(!x.why.is_empty() && !x.policy.is_empty());
            }

            // Sorted newest first.
            let pushed: HashMap<&str, i64> =
                arts.iter().map(|a| (a.digest.as_str(), a.pushed_at)).collect();
            let key = |dg: &str| (std::cmp::Reverse(pushed[dg]), dg.to_string());
            prop_assert!(p.keep.windows(2).all(|w| key(&w[0].digest) < key(&w[1].digest)));
            prop_assert!(p.delete.windows(2).all(|w| key(&w[0].digest) < key(&w[1].digest)));

            // Deterministic whatever the input order.
            let mut reversed = arts.clone();
            reversed.reverse();
            prop_assert_eq!(&run(&reversed, &prot, &policies), &p);

            // (d) Idempotent: applying the plan leaves nothing more to delete.
            let remaining: Vec<Artifact> = arts
                .iter()
                .filter(|a| keep.contains(a.digest.as_str()))
                .cloned()
                .collect();
            let again = run(&remaining, &prot, &policies);
            prop_assert!(again.delete.is_empty(), "second plan deletes {:?}", again.delete);
        }
    }
}
