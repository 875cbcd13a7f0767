//! Authorization decisions: role × action × repository glob → allow or deny,
//! with the reason. Pure: no I/O, no HTTP, no tokens. The API maps each route
//! to an [`Action`] on a [`Target`]; authentication decides who asks; this
//! module alone decides whether they may.
//!
//! Roles (granted per repository glob, `*` within one path component, `**`
//! across `/`):
//!
//! | role      | actions                                                        |
//! |-----------|----------------------------------------------------------------|
//! | `reader`  | pull, read (tag history, artifacts, promotions), read provenance |
//! | `writer`  | reader's, push (blobs, manifests, tags), record provenance       |
//! | `admin`   | everything: delete, promote, holds, retention, gc, accounts, audit |
//! | `auditor` | read provenance, the audit API and metrics; nothing else          |
//!
//! An action on no particular repository ([`Target::Global`]: the catalog,
//! the audit trail, retention runs, garbage collection, accounts, metrics) is
//! granted only by a role over *every* repository, i.e. the glob `**`: a
//! writer of `ci/**` may not list every repository's name, nor collect
//! garbage in everyone's.

use std::fmt;

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

/// A role an account holds over the repositories a glob matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Writer,
    Admin,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reader, Role::Writer, Role::Admin, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }

    /// Whether this role includes `action`.
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Admin => true,
            Role::Reader => matches!(action, Pull | Read | ReadProvenance | Catalog),
            Role::Writer => matches!(
                action,
                Pull | Read | ReadProvenance | Catalog | Push | WriteProvenance
            ),
            Role::Auditor => matches!(action, ReadProvenance | Audit | Metrics),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = AccessError;
    fn from_str(s: &str) -> Result<Role, AccessError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AccessError::UnknownRole(s.to_string()))
    }
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Blobs, manifests, tag lists, referrers.
    Pull,
    /// Uploads, manifest and tag pushes.
    Push,
    /// Manifest and blob deletes.
    Delete,
    /// Repository reads of the JSON API: tag history, artifacts, promotions,
    /// environments, rollback targets, effective policies.
    Read,
    ReadProvenance,
    WriteProvenance,
    /// Promotions, legal holds, retention plans and runs, garbage collection.
    Manage,
    /// The repository catalog (`/v2/_catalog`).
    Catalog,
    /// The audit API.
    Audit,
    /// `/metrics`, when it asks for credentials.
    Metrics,
    /// Accounts and roles (`/api/v1/admin/…`).
    Accounts,
}

impl Action {
    /// The distribution token scope name of a repository action, if it has one.
    pub fn scope_name(self) -> Option<&'static str> {
        match self {
            Action::Pull => Some("pull"),
            Action::Push => Some("push"),
            Action::Delete => Some("delete"),
            _ => None,
        }
    }

    /// The action a token scope's action name asks for (`*` is handled by the caller).
    pub fn from_scope_name(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// What an action is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Repository(&'a str),
    /// No one repository: granted only by a role over `**`.
    Global,
}

/// Errors building grants.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("unknown role {0:?}: use reader, writer, admin or auditor")]
    UnknownRole(String),
    #[error("invalid repository glob {0:?}: {1}")]
    Glob(String, String),
}

/// The glob every repository matches; only grants over it reach [`Target::Global`].
pub const EVERY_REPOSITORY: &str = "**";

/// One role over the repositories a glob matches.
#[derive(Debug, Clone)]
pub struct Grant {
    pub repositories: String,
    pub role: Role,
    matcher: GlobMatcher,
}

impl PartialEq for Grant {
    fn eq(&self, other: &Grant) -> bool {
        self.repositories == other.repositories && self.role == other.role
    }
}

/// Compiles a repository glob the way immutability rules do: `*` stays within
/// one path component, `**` crosses `/`.
pub fn compile_glob(pattern: &str) -> Result<GlobMatcher, AccessError> {
    if pattern.is_empty() {
        return Err(AccessError::Glob(pattern.into(), "empty pattern".into()));
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g: Glob| g.compile_matcher())
        .map_err(|e| AccessError::Glob(pattern.into(), e.to_string()))
}

impl Grant {
    pub fn new(repositories: &str, role: Role) -> Result<Grant, AccessError> {
        Ok(Grant {
            repositories: repositories.to_string(),
            role,
            matcher: compile_glob(repositories)?,
        })
    }

    /// Whether this grant covers `target` (not whether the role allows an action).
    pub fn covers(&self, target: Target<'_>) -> bool {
        match target {
            Target::Repository(r) => self.matcher.is_match(r),
            Target::Global => self.repositories == EVERY_REPOSITORY,
        }
    }
}

/// The outcome of one decision, with the reason a person can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// Who is asking, as far as the decision is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// No credentials: only what anonymous pull allows.
    Anonymous,
    /// An account and its grants.
    Account(&'a str, &'a [Grant]),
}

/// Decides whether `subject` may do `action` on `target`. `anonymous_pull`
/// holds the globs of repositories anyone may pull (authenticated or not).
pub fn decide(
    subject: Subject<'_>,
    action: Action,
    target: Target<'_>,
    anonymous_pull: &[Grant],
) -> Decision {
    if action == Action::Pull {
        if let Target::Repository(repo) = target {
            if let Some(g) = anonymous_pull.iter().find(|g| g.covers(target)) {
                return Decision {
                    allowed: true,
                    reason: format!(
                        "anonymous pull is enabled for {:?} (matches {repo})",
                        g.repositories
                    ),
                };
            }
        }
    }
    let what = match target {
        Target::Repository(r) => format!("{action:?} on {r}").to_lowercase(),
        Target::Global => format!("{action:?} (on every repository)").to_lowercase(),
    };
    match subject {
        Subject::Anonymous => Decision {
            allowed: false,
            reason: format!("{what} needs credentials"),
        },
        Subject::Account(name, grants) => {
            match grants
                .iter()
                .find(|g| g.role.allows(action) && g.covers(target))
            {
                Some(g) => Decision {
                    allowed: true,
                    reason: format!("{name} is {} of {:?}", g.role, g.repositories),
                },
                None => Decision {
                    allowed: false,
                    reason: format!("{name} has no role allowing {what}"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g(p: &str, r: Role) -> Grant {
        Grant::new(p, r).expect("grant")
    }

    fn allowed(grants: &[Grant], action: Action, repo: &str) -> bool {
        decide(
            Subject::Account("a", grants),
            action,
            Target::Repository(repo),
            &[],
        )
        .allowed
    }

    #[test]
    fn the_role_matrix() {
        use Action::*;
        let cases = [
            (Role::Reader, Pull, true),
            (Role::Reader, Push, false),
            (Role::Reader, Delete, false),
            (Role::Writer, Pull, true),
            (Role::Writer, Push, true),
            (Role::Writer, Delete, false),
            (Role::Writer, Manage, false),
            (Role::Admin, Delete, true),
            (Role::Admin, Manage, true),
            (Role::Auditor, Pull, false),
            (Role::Auditor, Push, false),
            (Role::Auditor, ReadProvenance, true),
            (Role::Auditor, Audit, true),
            (Role::Auditor, Read, false),
        ];
        for (role, action, want) in cases {
            assert_eq!(
                allowed(&[g("team/**", role)], action, "team/app"),
                want,
                "{role} {action:?}"
            );
        }
    }

    #[test]
    fn globs_bound_grants() {
        let grants = [g("team/*", Role::Writer)];
        assert!(allowed(&grants, Action::Push, "team/app"));
        assert!(!allowed(&grants, Action::Push, "team/app/api"));
        assert!(!allowed(&grants, Action::Pull, "other/app"));
    }

    #[test]
    fn global_actions_need_every_repository() {
        let scoped = [g("team/**", Role::Admin)];
        let d = decide(
            Subject::Account("a", &scoped),
            Action::Catalog,
            Target::Global,
            &[],
        );
        assert!(!d.allowed, "{}", d.reason);
        let all = [g("**", Role::Reader)];
        assert!(
            decide(
                Subject::Account("a", &all),
                Action::Catalog,
                Target::Global,
                &[]
            )
            .allowed
        );
        assert!(
            !decide(
                Subject::Account("a", &all),
                Action::Audit,
                Target::Global,
                &[]
            )
            .allowed
        );
    }

    #[test]
    fn anonymous_pull_is_only_pull_and_only_where_configured() {
        let anon = [g("public/**", Role::Reader)];
        let pull = |repo| {
            decide(
                Subject::Anonymous,
                Action::Pull,
                Target::Repository(repo),
                &anon,
            )
        };
        assert!(pull("public/base").allowed);
        assert!(!pull("private/base").allowed);
        assert!(
            !decide(
                Subject::Anonymous,
                Action::Push,
                Target::Repository("public/base"),
                &anon
            )
            .allowed
        );
        assert!(
            !decide(
                Subject::Anonymous,
                Action::Pull,
                Target::Repository("x"),
                &[]
            )
            .allowed
        );
    }

    #[test]
    fn reasons_name_the_grant() {
        let d = decide(
            Subject::Account("ci", &[g("ci/**", Role::Writer)]),
            Action::Push,
            Target::Repository("ci/app"),
            &[],
        );
        assert_eq!(d.reason, "ci is writer of \"ci/**\"");
        let d = decide(
            Subject::Account("ci", &[g("ci/**", Role::Writer)]),
            Action::Delete,
            Target::Repository("ci/app"),
            &[],
        );
        assert!(
            d.reason.contains("no role allowing delete on ci/app"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn bad_roles_and_globs_are_refused() {
        assert!("owner".parse::<Role>().is_err());
        assert!(Grant::new("", Role::Reader).is_err());
        assert!(Grant::new("a/[", Role::Reader).is_err());
    }

    fn role() -> impl Strategy<Value = Role> {
        prop::sample::select(Role::ALL.to_vec())
    }

    fn action() -> impl Strategy<Value = Action> {
        use Action::*;
        prop::sample::select(vec![
            Pull,
            Push,
            Delete,
            Read,
            ReadProvenance,
            WriteProvenance,
            Manage,
            Catalog,
            Audit,
            Metrics,
            Accounts,
        ])
    }

    proptest! {
        /// No grants: nothing is allowed, whatever the repository.
        #[test]
        fn no_grant_no_access(a in action(), repo in "[a-z]{1,8}(/[a-z]{1,8}){0,3}") {
            prop_assert!(!allowed(&[], a, &repo));
        }

        /// Adding a grant never takes an allowed action away (monotonic).
        #[test]
        fn grants_only_add(
            r1 in role(), r2 in role(), a in action(),
            repo in "[a-z]{1,6}(/[a-z]{1,6}){0,2}",
            pat in prop::sample::select(vec!["**", "*", "a*/**", "x/*", "b/**"]),
        ) {
            let one = [g("**", r1)];
            let two = [g("**", r1), g(pat, r2)];
            if allowed(&one, a, &repo) {
                prop_assert!(allowed(&two, a, &repo));
            }
        }

        /// The admin role over `**` allows everything; the auditor never pulls or pushes.
        #[test]
        fn admin_everything_auditor_no_content(a in action(), repo in "[a-z]{1,6}(/[a-z]{1,6}){0,2}") {
            prop_assert!(allowed(&[g("**", Role::Admin)], a, &repo));
            let auditor = [g("**", Role::Auditor)];
            prop_assert!(!allowed(&auditor, Action::Pull, &repo));
            prop_assert!(!allowed(&auditor, Action::Push, &repo));
        }
    }
}
