//! Promotions, rollback targets, legal holds, and retention plans: made from
//! the database's facts by the pure `policy::retention`, applied one manifest
//! at a time under the protections as they are at that moment.

use std::collections::BTreeMap;

use globset::GlobBuilder;
use serde::{Deserialize, Serialize};

use super::{Error, Registry, Result};
use crate::domain::{Reference, RepoName};
use crate::metadata::{self, now_ms, Hold, Origin, Promotion, RetentionDelete};
use crate::policy::retention::{rollback_targets, Artifact, Protections, RepoPlan};

/// A deletion a plan allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedDeletion {
    pub repository: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub policy: String,
    pub why: String,
}

/// A retention plan: for every repository a policy applies to, what goes and,
/// for everything kept, why. Stored under `id` so that applying it does
/// exactly what was shown.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub repositories: Vec<RepoPlan>,
    pub deletions: Vec<PlannedDeletion>,
    pub kept: usize,
}

/// What applying a plan did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub plan: String,
    pub deleted: Vec<PlannedDeletion>,
    /// Already gone (a re-run).
    pub already_gone: usize,
    /// Not deleted because a protection appeared since the plan, or an index
    /// that stays still lists it: `(digest, reasons)`.
    pub refused: Vec<(String, Vec<String>)>,
}

/// One promoted digest as the rollback question sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PromotedArtifact {
    pub digest: String,
    /// "prod current", "prod previous #1", …
    pub label: String,
    /// Tags pointing at it now.
    pub tags: Vec<String>,
    pub promoted_at: i64,
    pub promoted_by: String,
    /// Where it was built from, as far as provenance says (parsed records).
    pub provenance: Vec<ProvenanceSummary>,
}

/// The facts of one provenance record an on-call engineer needs.
#[derive(Debug, Clone, Serialize)]
pub struct ProvenanceSummary {
    pub source: String,
    pub source_uri: Option<String>,
    pub revision: Option<String>,
    pub builder_id: Option<String>,
    pub predicate_type: Option<String>,
    /// Unix milliseconds: build finished, else started, else image created.
    pub built_at: Option<i64>,
}

/// "What do I roll back to?"
#[derive(Debug, Clone, Serialize)]
pub struct RollbackAnswer {
    pub repository: String,
    pub environment: String,
    pub current: Option<PromotedArtifact>,
    /// The previous distinct promoted digest: the rollback.
    pub rollback_to: Option<PromotedArtifact>,
    /// Every rollback target retention protects here (current and previous K).
    pub targets: Vec<PromotedArtifact>,
}

impl Registry {
    async fn repo_id(&self, repo: &RepoName) -> Result<i64> {
        self.metadata()
            .repository_id(repo)
            .await?
            .ok_or_else(|| Error::NameUnknown(repo.clone()))
    }

    /// The digest `reference` names now (a tag resolved at this moment).
    async fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<String> {
        let record = match reference {
            Reference::Tag(t) => self.metadata().resolve_tag(repo, t).await?,
            Reference::Digest(d) => self.metadata().manifest(repo, d).await?,
        };
        record
            .map(|r| r.digest)
            .ok_or_else(|| Error::ManifestUnknown(reference.to_string()))
    }

    /// Records that `reference` (a tag is resolved to its digest now) was
    /// promoted to `environment`.
    pub async fn promote(
        &self,
        repo: &RepoName,
        reference: &Reference,
        environment: &str,
        origin: &Origin,
    ) -> Result<Promotion> {
        check_environment(environment)?;
        let id = self.repo_id(repo).await?;
        let digest = self.resolve(repo, reference).await?;
        let tag = match reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        };
        self.metadata()
            .promote(id, repo, environment, &digest, tag, origin)
            .await?
            .ok_or_else(|| Error::ManifestUnknown(reference.to_string()))
    }

    /// Promotions of `repo` (one environment or all), newest first.
    pub async fn promotions(
        &self,
        repo: &RepoName,
        environment: Option<&str>,
        before: Option<i64>,
        n: Option<u32>,
    ) -> Result<Vec<Promotion>> {
        let id = self.repo_id(repo).await?;
        let n = n.unwrap_or(100).clamp(1, self.limits().max_page);
        Ok(self
            .metadata()
            .promotions(id, environment, before, n)
            .await?)
    }

    /// The environments of `repo` with their rollback answers.
    pub async fn environments(&self, repo: &RepoName) -> Result<Vec<RollbackAnswer>> {
        let id = self.repo_id(repo).await?;
        let facts = self.metadata().protection_facts(id).await?;
        let mut out = Vec::new();
        for env in facts.promotions.keys() {
            out.push(self.rollback(repo, env).await?);
        }
        Ok(out)
    }

    /// Current and previous promoted digests of `environment`, and the one to
    /// roll back to.
    pub async fn rollback(&self, repo: &RepoName, environment: &str) -> Result<RollbackAnswer> {
        let id = self.repo_id(repo).await?;
        let depth = self.retention_policy().rollback_depth(repo.as_str());
        // Newest first; distinct digests up to K+1 are all we need, but a long
        // run of re-promotions of one digest must not hide older ones: page on.
        let mut history: Vec<Promotion> = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .metadata()
                .promotions(id, Some(environment), before, 500)
                .await?;
            let n = page.len();
            before = page.last().map(|p| p.id);
            history.extend(page);
            let distinct: std::collections::BTreeSet<&str> =
                history.iter().map(|p| p.digest.as_str()).collect();
            if n < 500 || distinct.len() > depth as usize {
                break;
            }
        }
        if history.is_empty() {
            return Err(Error::Invalid(format!(
                "nothing was ever promoted to environment {environment:?} of {repo}"
            )));
        }
        let digests: Vec<String> = history.iter().map(|p| p.digest.clone()).collect();
        let labels = rollback_targets(&BTreeMap::from([(environment.to_string(), digests)]), depth);
        let mut targets: Vec<PromotedArtifact> = Vec::new();
        for p in &history {
            if targets.iter().any(|t| t.digest == p.digest) {
                continue;
            }
            let Some(label) = labels.get(&p.digest).and_then(|l| l.first()) else {
                break;
            };
            let provenance = self
                .metadata()
                .provenance_of(repo, &p.digest, None, 20)
                .await?
                .into_iter()
                .filter(|r| r.parsed)
                .map(|r| ProvenanceSummary {
                    built_at: r.finished_at.or(r.started_at).or(r.image_created_at),
                    source: r.source,
                    source_uri: r.source_uri,
                    revision: r.revision,
                    builder_id: r.builder_id,
                    predicate_type: r.predicate_type,
                })
                .collect();
            targets.push(PromotedArtifact {
                digest: p.digest.clone(),
                label: label.clone(),
                tags: self.metadata().tags_of(id, &p.digest).await?,
                promoted_at: p.at,
                promoted_by: p.actor.clone(),
                provenance,
            });
        }
        Ok(RollbackAnswer {
            repository: repo.to_string(),
            environment: environment.to_string(),
            current: targets.first().cloned(),
            rollback_to: targets.get(1).cloned(),
            targets,
        })
    }

    /// Puts the artifact `reference` names under a legal hold.
    pub async fn add_hold(
        &self,
        repo: &RepoName,
        reference: &Reference,
        reason: &str,
        origin: &Origin,
    ) -> Result<Hold> {
        if reason.trim().is_empty() {
            return Err(Error::Invalid(
                "a legal hold needs a reason (e.g. a case number)".into(),
            ));
        }
        let id = self.repo_id(repo).await?;
        let digest = self.resolve(repo, reference).await?;
        self.metadata()
            .add_hold(id, repo, &digest, reason, origin)
            .await?
            .ok_or_else(|| Error::ManifestUnknown(reference.to_string()))
    }

    /// Releases hold `id`.
    pub async fn release_hold(&self, id: i64, origin: &Origin) -> Result<()> {
        if self.metadata().release_hold(id, origin).await? {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "there is no active legal hold {id}"
            )))
        }
    }

    pub async fn holds(&self, repository: Option<&str>, active_only: bool) -> Result<Vec<Hold>> {
        Ok(self.metadata().holds(repository, active_only).await?)
    }

    /// Plans retention for every repository matching `repositories` (a glob;
    /// all when `None`) that a policy applies to, and stores the plan.
    pub async fn retention_plan(
        &self,
        repositories: Option<&str>,
        origin: &Origin,
    ) -> Result<Plan> {
        let filter = repositories
            .map(|g| {
                GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map(|g| g.compile_matcher())
                    .map_err(|e| Error::Invalid(format!("repository pattern {g:?}: {e}")))
            })
            .transpose()?;
        let now = now_ms();
        let mut plan = Plan {
            id: uuid::Uuid::now_v7().to_string(),
            created_at: now,
            repositories: Vec::new(),
            deletions: Vec::new(),
            kept: 0,
        };
        for (id, name) in self.metadata().all_repositories().await? {
            if filter.as_ref().is_some_and(|f| !f.is_match(&name)) {
                continue;
            }
            let Some(rp) = self.plan_repository(id, &name, now).await? else {
                continue;
            };
            plan.kept += rp.keep.len();
            plan.deletions
                .extend(rp.delete.iter().map(|d| PlannedDeletion {
                    repository: name.clone(),
                    digest: d.digest.clone(),
                    tags: d.tags.clone(),
                    policy: d.policy.clone(),
                    why: d.why.clone(),
                }));
            plan.repositories.push(rp);
        }
        let stored = serde_json::json!({
            "id": plan.id,
            "created_at": plan.created_at,
            "deletions": plan.deletions,
        });
        self.metadata()
            .store_plan(&plan.id, &stored, origin)
            .await?;
        Ok(plan)
    }

    /// What retention would do to `repo` now, without storing a plan (the web
    /// console's read-only view). `None`: no retention policy applies to it.
    pub async fn retention_preview(&self, repo: &RepoName) -> Result<Option<RepoPlan>> {
        let id = self.repo_id(repo).await?;
        self.plan_repository(id, repo.as_str(), now_ms()).await
    }

    /// The plan of one repository (`None`: no policy applies to it).
    async fn plan_repository(&self, id: i64, name: &str, now: i64) -> Result<Option<RepoPlan>> {
        let policies = self.retention_policy().for_repository(name);
        if policies.is_empty() {
            return Ok(None);
        }
        let repo: RepoName = name
            .parse()
            .map_err(|_| metadata::Error::Corrupt(format!("repository name {name:?}")))?;
        let artifacts: Vec<Artifact> = self
            .metadata()
            .artifact_facts(id)
            .await?
            .into_iter()
            .map(|a| Artifact {
                digest: a.digest,
                pushed_at: a.pushed_at,
                last_pulled_at: a.last_pulled_at,
                tags: a.tags,
                children: a.children,
                subject: a.subject,
            })
            .collect();
        let facts = self.metadata().protection_facts(id).await?;
        let protections = Protections {
            holds: facts.holds.clone(),
            rollback: rollback_targets(
                &facts.promotions,
                self.retention_policy().rollback_depth(name),
            ),
        };
        Ok(Some(self.retention_policy().plan(
            repo.as_str(),
            &artifacts,
            &protections,
            now,
        )))
    }

    /// Applies the stored plan `id`: deletes exactly its deletions, each only if
    /// it is not protected at that moment and no index that stays lists it.
    /// Re-running is harmless (already deleted ones are counted as gone).
    pub async fn retention_apply(
        &self,
        id: &str,
        origin: &Origin,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<ApplyReport> {
        let (stored, _) = self
            .metadata()
            .stored_plan(id)
            .await?
            .ok_or_else(|| Error::Invalid(format!("there is no retention plan {id}")))?;
        let deletions: Vec<PlannedDeletion> =
            serde_json::from_value(stored["deletions"].clone())
                .map_err(|e| metadata::Error::Corrupt(format!("retention plan {id}: {e}")))?;
        let total = deletions.len();
        let mut report = ApplyReport {
            plan: id.to_string(),
            ..ApplyReport::default()
        };
        let mut by_repo: BTreeMap<String, Vec<PlannedDeletion>> = BTreeMap::new();
        for d in deletions {
            by_repo.entry(d.repository.clone()).or_default().push(d);
        }
        let mut done = 0;
        for (name, mut pending) in by_repo {
            let repo: RepoName = name
                .parse()
                .map_err(|_| metadata::Error::Corrupt(format!("repository name {name:?}")))?;
            let Some(repo_id) = self.metadata().repository_id(&repo).await? else {
                report.already_gone += pending.len();
                continue;
            };
            let protect = self.protect(&repo);
            // An index goes before the manifests it lists: repeat while a pass
            // deletes something.
            loop {
                let mut waiting = Vec::new();
                let mut progressed = false;
                for d in pending {
                    match self
                        .metadata()
                        .retention_delete(
                            repo_id, &repo, &d.digest, &protect, &d.policy, &d.why, origin,
                        )
                        .await?
                    {
                        RetentionDelete::Deleted { tags } => {
                            self.forget_deleted(&repo);
                            progressed = true;
                            done += 1;
                            report.deleted.push(PlannedDeletion { tags, ..d });
                        }
                        RetentionDelete::Gone => {
                            done += 1;
                            report.already_gone += 1;
                        }
                        RetentionDelete::Protected(reasons) => {
                            done += 1;
                            report.refused.push((d.digest, reasons));
                        }
                        RetentionDelete::Referenced(parent) => waiting.push((d, parent)),
                    }
                    progress(done, total);
                }
                if waiting.is_empty() {
                    break;
                }
                if !progressed {
                    for (d, parent) in waiting {
                        done += 1;
                        report.refused.push((
                            d.digest,
                            vec![format!("listed by index {parent}, which stays")],
                        ));
                    }
                    progress(done, total);
                    break;
                }
                pending = waiting.into_iter().map(|(d, _)| d).collect();
            }
        }
        self.metadata().mark_plan_applied(id).await?;
        let entry = metadata::AuditEntry::global("retention.apply").detail(serde_json::json!({
            "plan": id,
            "deleted": report.deleted.len(),
            "already_gone": report.already_gone,
            "refused": report.refused.len(),
        }));
        self.metadata().audit_append(origin, &[entry]).await?;
        Ok(report)
    }
}

/// Environment names are short words: they appear in URLs and labels.
fn check_environment(env: &str) -> Result<()> {
    let ok = !env.is_empty()
        && env.len() <= 64
        && env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "environment {env:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
        )))
    }
}
