//! Which tags may move.
//!
//! Tags are immutable unless a rule says otherwise. A rule selects repositories
//! and tags by glob (`*` stays within one path component, `**` crosses `/`) and
//! says `immutable` or `mutable`. When several rules match a `(repository, tag)`,
//! the **most specific** one decides: first by how specific its matching
//! repository pattern is, then its tag pattern (an exact name beats any glob; among
//! globs, more literal characters beat fewer). On a tie, `immutable` wins, then the
//! rule written later. The built-in rule `default` (`**` : `*` → immutable) decides
//! only when no configured rule matches, so with no configuration every tag is
//! immutable, and a configured `**` : `*` rule replaces it.

use std::cmp::Ordering;
use std::fmt;

use std::collections::BTreeSet;

use globset::{Glob, GlobBuilder, GlobMatcher};

use crate::domain::manifest::ParsedManifest;
use crate::domain::media;
use serde::{Deserialize, Serialize};

/// Whether a tag may be moved to another digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mutability {
    Immutable,
    Mutable,
}

impl fmt::Display for Mutability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mutability::Immutable => "immutable",
            Mutability::Mutable => "mutable",
        })
    }
}

/// A rule as written in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Shown in errors and explanations ("rule \"release tags\"").
    pub name: String,
    /// Repository patterns; the rule applies if any matches.
    pub repositories: Vec<String>,
    /// Tag patterns; the rule applies if any matches. Default: every tag.
    #[serde(default = "all_tags")]
    pub tags: Vec<String>,
    pub mutability: Mutability,
}

fn all_tags() -> Vec<String> {
    vec!["*".to_string()]
}

/// A rule that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("immutability rule #{index} ({name:?}): pattern {pattern:?} is invalid: {reason}")]
    Pattern {
        index: usize,
        name: String,
        pattern: String,
        reason: String,
    },
    #[error("immutability rule #{index} ({name:?}): {reason}")]
    Invalid {
        index: usize,
        name: String,
        reason: String,
    },
}

/// How specific a pattern is: exact names beat globs; then literal characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    exact: bool,
    literals: usize,
}

fn specificity(pattern: &str) -> Specificity {
    let wild = |c: char| matches!(c, '*' | '?' | '[' | ']' | '{' | '}');
    Specificity {
        exact: !pattern.chars().any(wild),
        literals: pattern.chars().filter(|c| !wild(*c)).count(),
    }
}

#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    matcher: GlobMatcher,
    specificity: Specificity,
}

impl Pattern {
    fn new(text: &str) -> Result<Pattern, globset::Error> {
        let glob: Glob = GlobBuilder::new(text).literal_separator(true).build()?;
        Ok(Pattern {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
            specificity: specificity(text),
        })
    }
}

#[derive(Debug, Clone)]
struct Rule {
    spec: RuleSpec,
    index: usize,
    repositories: Vec<Pattern>,
    tags: Vec<Pattern>,
}

impl Rule {
    /// The specificity of this rule for `(repo, tag)`, if it matches.
    fn matches(&self, repo: &str, tag: &str) -> Option<(Specificity, Specificity)> {
        let r = self
            .repositories
            .iter()
            .filter(|p| p.matcher.is_match(repo))
            .map(|p| p.specificity)
            .max()?;
        let t = self
            .tags
            .iter()
            .filter(|p| p.matcher.is_match(tag))
            .map(|p| p.specificity)
            .max()?;
        Some((r, t))
    }
}

/// The decision for one `(repository, tag)` and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub mutability: Mutability,
    /// Name of the deciding rule (`default` for the built-in one).
    pub rule: String,
    /// The deciding rule's repository and tag patterns, for explanations.
    pub repositories: Vec<String>,
    pub tags: Vec<String>,
}

impl Decision {
    pub fn is_immutable(&self) -> bool {
        self.mutability == Mutability::Immutable
    }
}

/// The loaded, validated rules.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Accept a re-built BuildKit index under an immutable tag when only its
    /// attestation manifests differ (see [`equivalent_indexes`]).
    pub index_equivalence: bool,
}

/// Whether `new` may stand for `held` under an immutable tag: both are indexes
/// listing exactly the same platform manifests (digests), differing at most in
/// their attestation manifests. BuildKit adds fresh provenance on every build, so
/// a rebuild of identical images yields a new index digest; the images a client
/// pulls through the tag are the same either way.
pub fn equivalent_indexes(held: &ParsedManifest, new: &ParsedManifest) -> bool {
    if !media::is_index(&held.media_type) || !media::is_index(&new.media_type) {
        return false;
    }
    let platforms = |m: &ParsedManifest| -> BTreeSet<String> {
        m.manifests
            .iter()
            .filter(|d| !d.attestation)
            .map(|d| d.digest.to_string())
            .collect()
    };
    let (a, b) = (platforms(held), platforms(new));
    !a.is_empty() && a == b
}

/// Name of the built-in rule.
pub const DEFAULT_RULE: &str = "default";

impl RuleSet {
    /// Validates and compiles `specs`; the built-in default rule is added first.
    pub fn new(specs: &[RuleSpec]) -> Result<RuleSet, RuleError> {
        let default = RuleSpec {
            name: DEFAULT_RULE.to_string(),
            repositories: vec!["**".to_string()],
            tags: all_tags(),
            mutability: Mutability::Immutable,
        };
        let mut rules = vec![Rule {
            repositories: vec![Pattern::new("**").map_err(|e| RuleError::Invalid {
                index: 0,
                name: DEFAULT_RULE.into(),
                reason: e.to_string(),
            })?],
            tags: vec![Pattern::new("*").map_err(|e| RuleError::Invalid {
                index: 0,
                name: DEFAULT_RULE.into(),
                reason: e.to_string(),
            })?],
            spec: default,
            index: 0,
        }];
        for (i, spec) in specs.iter().enumerate() {
            let index = i + 1;
            let invalid = |reason: &str| RuleError::Invalid {
                index,
                name: spec.name.clone(),
                reason: reason.to_string(),
            };
            if spec.name.trim().is_empty() {
                return Err(invalid("name must not be empty"));
            }
            if spec.name == DEFAULT_RULE {
                return Err(invalid(
                    "the name \"default\" is reserved for the built-in rule",
                ));
            }
            if spec.repositories.is_empty() {
                return Err(invalid("repositories must list at least one pattern"));
            }
            if spec.tags.is_empty() {
                return Err(invalid("tags must list at least one pattern"));
            }
            let compile = |p: &String| {
                if p.is_empty() {
                    return Err(RuleError::Pattern {
                        index,
                        name: spec.name.clone(),
                        pattern: p.clone(),
                        reason: "empty pattern".into(),
                    });
                }
                Pattern::new(p).map_err(|e| RuleError::Pattern {
                    index,
                    name: spec.name.clone(),
                    pattern: p.clone(),
                    reason: e.kind().to_string(),
                })
            };
            rules.push(Rule {
                repositories: spec
                    .repositories
                    .iter()
                    .map(compile)
                    .collect::<Result<_, _>>()?,
                tags: spec.tags.iter().map(compile).collect::<Result<_, _>>()?,
                spec: spec.clone(),
                index,
            });
        }
        Ok(RuleSet {
            rules,
            index_equivalence: false,
        })
    }

    /// Exactly one decision for any repository and tag, naming its rule.
    pub fn decide(&self, repo: &str, tag: &str) -> Decision {
        let mut best: Option<(&Rule, (Specificity, Specificity))> = None;
        for rule in &self.rules {
            let Some(s) = rule.matches(repo, tag) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((b, bs)) => match s.cmp(bs) {
                    Ordering::Greater => true,
                    Ordering::Less => false,
                    // The built-in default only decides when nothing else matches.
                    Ordering::Equal if b.index == 0 => true,
                    Ordering::Equal => {
                        let imm = |r: &Rule| r.spec.mutability == Mutability::Immutable;
                        match (imm(rule), imm(b)) {
                            (true, false) => true,
                            (false, true) => false,
                            _ => rule.index > b.index,
                        }
                    }
                },
            };
            if better {
                best = Some((rule, s));
            }
        }
        // The default rule matches every repository and tag.
        let rule = best.map(|(r, _)| r).unwrap_or(&self.rules[0]);
        Decision {
            mutability: rule.spec.mutability,
            rule: rule.spec.name.clone(),
            repositories: rule.repositories.iter().map(|p| p.text.clone()).collect(),
            tags: rule.tags.iter().map(|p| p.text.clone()).collect(),
        }
    }

    /// The rules that can apply to `repo` (any tag), most specific last, as the
    /// API shows a repository's effective rule set.
    pub fn for_repository(&self, repo: &str) -> Vec<RuleSpec> {
        self.rules
            .iter()
            .filter(|r| r.repositories.iter().any(|p| p.matcher.is_match(repo)))
            .map(|r| r.spec.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(name: &str, repos: &[&str], tags: &[&str], m: Mutability) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            repositories: repos.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            mutability: m,
        }
    }

    fn index(children: &[(&str, bool)]) -> ParsedManifest {
        let manifests: Vec<String> = children
            .iter()
            .map(|(c, att)| {
                let ann = if *att {
                    r#","annotations":{"vnd.docker.reference.type":"attestation-manifest"}"#
                } else {
                    ""
                };
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":1{ann}}}"#,
                    c.repeat(64)
                )
            })
            .collect();
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
            manifests.join(",")
        );
        crate::domain::manifest::parse(doc.as_bytes(), None).unwrap()
    }

    #[test]
    fn indexes_differing_only_in_attestations_are_equivalent() {
        let held = index(&[("a", false), ("b", false), ("c", true)]);
        assert!(equivalent_indexes(
            &held,
            &index(&[("b", false), ("a", false), ("d", true)])
        ));
        assert!(equivalent_indexes(
            &held,
            &index(&[("a", false), ("b", false)])
        ));
        assert!(!equivalent_indexes(
            &held,
            &index(&[("a", false), ("e", false), ("c", true)])
        ));
        assert!(!equivalent_indexes(&held, &index(&[("a", false)])));
        assert!(!equivalent_indexes(
            &index(&[("c", true)]),
            &index(&[("d", true)])
        ));
    }

    #[test]
    fn everything_is_immutable_by_default() {
        let rs = RuleSet::new(&[]).unwrap();
        let d = rs.decide("team/app", "v1");
        assert!(d.is_immutable());
        assert_eq!(d.rule, "default");
    }

    #[test]
    fn exclusions_in_a_namespace() {
        let rs = RuleSet::new(&[rule(
            "dev tags",
            &["team/*"],
            &["latest", "main", "*-dev", "pr-*"],
            Mutability::Mutable,
        )])
        .unwrap();
        assert_eq!(
            rs.decide("team/app", "latest").mutability,
            Mutability::Mutable
        );
        assert_eq!(rs.decide("team/app", "feature-dev").rule, "dev tags");
        assert!(rs.decide("team/app", "v1.4.2").is_immutable());
        // `*` does not cross `/`.
        assert!(rs.decide("team/app/api", "latest").is_immutable());
        assert!(rs.decide("other/app", "latest").is_immutable());
    }

    #[test]
    fn the_most_specific_rule_wins() {
        let rs = RuleSet::new(&[
            rule("cache", &["cache/**"], &["*"], Mutability::Mutable),
            rule(
                "pinned",
                &["cache/base"],
                &["stable"],
                Mutability::Immutable,
            ),
        ])
        .unwrap();
        assert_eq!(rs.decide("cache/x/y", "anything").rule, "cache");
        assert_eq!(rs.decide("cache/base", "stable").rule, "pinned");
        assert_eq!(rs.decide("cache/base", "other").rule, "cache");
    }

    #[test]
    fn a_catch_all_rule_replaces_the_default() {
        let rs =
            RuleSet::new(&[rule("all mutable", &["**"], &["*"], Mutability::Mutable)]).unwrap();
        assert_eq!(rs.decide("conformance/test", "x").rule, "all mutable");
    }

    #[test]
    fn ties_go_to_immutable() {
        let rs = RuleSet::new(&[
            rule("a", &["x/*"], &["*"], Mutability::Immutable),
            rule("b", &["x/*"], &["*"], Mutability::Mutable),
        ])
        .unwrap();
        assert_eq!(rs.decide("x/y", "t").rule, "a");
    }

    #[test]
    fn bad_rules_are_refused_with_their_name() {
        let e =
            RuleSet::new(&[rule("broken", &["team/[a"], &["*"], Mutability::Mutable)]).unwrap_err();
        assert!(e.to_string().contains("broken"), "{e}");
        assert!(e.to_string().contains("team/[a"), "{e}");
        assert!(RuleSet::new(&[rule("", &["a"], &["*"], Mutability::Mutable)]).is_err());
        assert!(RuleSet::new(&[rule("x", &[], &["*"], Mutability::Mutable)]).is_err());
        assert!(RuleSet::new(&[rule("default", &["a"], &["*"], Mutability::Mutable)]).is_err());
    }

    fn arb_rule() -> impl Strategy<Value = RuleSpec> {
        (
            "[a-z]{1,6}",
            proptest::collection::vec(
                prop_oneof!["\\*\\*", "[a-c]{1,2}/\\*", "[a-c]{1,2}", "[a-c]\\*"],
                1..3,
            ),
            proptest::collection::vec(prop_oneof!["\\*", "v[0-9]", "[a-c]{1,3}", "\\*-dev"], 1..3),
            any::<bool>(),
        )
            .prop_map(|(name, repositories, tags, m)| RuleSpec {
                name: format!("r-{name}"),
                repositories,
                tags,
                mutability: if m {
                    Mutability::Mutable
                } else {
                    Mutability::Immutable
                },
            })
    }

    proptest! {
        #[test]
        fn exactly_one_decision_naming_a_matching_rule(
            specs in proptest::collection::vec(arb_rule(), 0..6),
            repo in "[a-c]{1,2}(/[a-c]{1,2}){0,2}",
            tag in "[a-cv0-9]{1,3}(-dev)?",
        ) {
            let specs: Vec<RuleSpec> = specs
                .into_iter()
                .enumerate()
                .map(|(i, mut s)| { s.name = format!("r{i}"); s })
                .collect();
            let rs = RuleSet::new(&specs).unwrap();
            let d = rs.decide(&repo, &tag);
            // The same question always gets the same answer.
            prop_assert_eq!(&d, &rs.decide(&repo, &tag));
            if d.rule == DEFAULT_RULE {
                prop_assert!(d.is_immutable());
            } else {
                let r = specs.iter().find(|s| s.name == d.rule).unwrap();
                prop_assert_eq!(r.mutability, d.mutability);
                let rules = RuleSet::new(std::slice::from_ref(r)).unwrap();
                prop_assert_eq!(rules.decide(&repo, &tag).rule, d.rule.clone());
            }
        }
    }
}
