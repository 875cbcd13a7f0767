//! The console's pages: one handler per page, each reading through
//! `service::Registry` a bounded number of times per page (lists are
//! paginated; no query per row), filtering through [`Viewer`], rendering
//! with `maud` (escaped by construction).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde_json::Value;

use super::format::{
    artifact_url, commit_link, digest_cell, enc, external, human_size, pull_command, repo_url,
    short_digest, tag_url, utc, when, when_opt,
};
use super::{layout, Host, UiError, Viewer};
use crate::api::{AppState, Query};
use crate::domain::{Digest, Reference, RepoName, Tag};
use crate::metadata::{AuditQuery, DAY_MS};
use crate::policy::Mutability;
use crate::service::{ReferrersQuery, RollbackAnswer};

type Page = Result<Response, UiError>;

fn query(raw: Option<String>) -> Query {
    Query::parse(raw.as_deref())
}

/// A non-empty query parameter.
fn param<'a>(q: &'a Query, key: &str) -> Option<&'a str> {
    q.get(key).map(str::trim).filter(|v| !v.is_empty())
}

/// `?n=`: rows per page (the service caps it).
fn page_size(q: &Query) -> Result<Option<u32>, UiError> {
    Ok(number(q, "n")?.map(|n| n.clamp(1, i64::from(u32::MAX)) as u32))
}

fn number(q: &Query, key: &str) -> Result<Option<i64>, UiError> {
    param(q, key)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| UiError::bad_request(format!("{key}={v:?} must be a number")))
        })
        .transpose()
}

fn time_param(q: &Query, key: &str) -> Result<Option<i64>, UiError> {
    param(q, key)
        .map(|v| {
            crate::api::parse_time(key, v).map_err(|_| {
                UiError::bad_request(format!(
                    "{key}={v:?} is not an RFC 3339 time (2026-11-25T14:00:00Z) or Unix milliseconds"
                ))
            })
        })
        .transpose()
}

/// `?a=1&b=2` from the non-empty pairs.
fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", enc(v)))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn pager(first: Option<String>, next: Option<String>) -> Markup {
    html! {
        @if first.is_some() || next.is_some() {
            nav.pager {
                @if let Some(f) = first { a href=(f) rel="first" { "« First page" } }
                @if let Some(n) = next { a href=(n) rel="next" { "Next page »" } }
            }
        }
    }
}

fn crumbs_repo(repo: &str) -> Markup {
    html! { a href="/ui/" { "Repositories" } " / " a href=(repo_url(repo)) { (repo) } }
}

fn tabs(repo: &str, on: &str) -> Markup {
    let items = [
        ("tags", "Tags", repo_url(repo)),
        (
            "environments",
            "Environments & promotions",
            format!("{}/-/environments", repo_url(repo)),
        ),
        (
            "retention",
            "Retention plan",
            format!("{}/-/retention", repo_url(repo)),
        ),
        (
            "audit",
            "Audit log",
            format!("/ui/audit?repository={}", enc(repo)),
        ),
    ];
    html! {
        nav.tabs {
            @for (key, label, href) in &items {
                a.on[*key == on] href=(href) { (label) }
            }
        }
    }
}

fn html_page(title: &str, crumbs: Markup, content: Markup) -> Page {
    Ok(layout(title, crumbs, content).into_response())
}

// ---- repositories -------------------------------------------------------

/// `GET /ui/?q=<search>&after=<name>`: repositories with their totals.
pub(super) async fn repositories(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    RawQuery(raw): RawQuery,
) -> Page {
    let q = query(raw);
    let search = param(&q, "q").map(str::to_ascii_lowercase);
    let after = param(&q, "after");
    let n = page_size(&q)?;
    let n_text = n.map(|n| n.to_string());
    let page = state
        .registry
        .repository_summaries(search.as_deref(), after, n)
        .await?;
    let next = page.items.last().filter(|_| page.more).map(|last| {
        format!(
            "/ui/{}",
            query_string(&[
                ("q", search.as_deref()),
                ("n", n_text.as_deref()),
                ("after", Some(&last.name))
            ])
        )
    });
    let first = after.map(|_| {
        format!(
            "/ui/{}",
            query_string(&[("q", search.as_deref()), ("n", n_text.as_deref())])
        )
    });
    let rows: Vec<_> = page
        .items
        .iter()
        .filter(|r| viewer.may_see(&r.name))
        .collect();
    html_page(
        "Repositories",
        html! { "Repositories" },
        html! {
            h1 { "Repositories" }
            form.filters method="get" action="/ui/" {
                label { "Name contains" input type="search" name="q" value=[search.as_deref()] placeholder="team/app"; }
                button type="submit" { "Search" }
            }
            @if rows.is_empty() {
                p.muted { "No repositories" @if let Some(s) = &search { " match " q { (s) } } "." }
            } @else {
                table #repositories {
                    thead { tr {
                        th { "Repository" } th.num { "Artifacts" } th.num { "Size" }
                        th { "Last push" } th { "Last pull" } th.num { "Pulls" }
                    } }
                    tbody {
                        @for r in &rows {
                            tr {
                                td { a href=(repo_url(&r.name)) { (r.name) } }
                                td.num { (r.artifacts) }
                                td.num title=(format!("{} bytes", r.size)) { (human_size(r.size)) }
                                td { (when_opt(r.last_push)) }
                                td { (when_opt(r.last_pull)) }
                                td.num { (r.pulls) }
                            }
                        }
                    }
                }
            }
            (pager(first, next))
        },
    )
}

// ---- one repository: routing -----------------------------------------------

/// `GET /ui/r/<name>[/-/<page>…]`: names contain slashes, so the page is
/// named after a `/-/` separator (no name component can be `-`).
pub(super) async fn repository_route(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Host(host): Host,
    Path(rest): Path<String>,
    RawQuery(raw): RawQuery,
) -> Page {
    let q = query(raw);
    let (name, sub) = match rest.split_once("/-/") {
        Some((n, s)) => (n, Some(s)),
        None => (rest.trim_end_matches('/'), None),
    };
    let repo: RepoName = name.parse()?;
    viewer.require(repo.as_str())?;
    let ctx = Ctx {
        state: &state,
        host: &host,
        repo: &repo,
    };
    match sub.map(|s| s.split_once('/').unwrap_or((s, ""))) {
        None => tags_page(&ctx, &q).await,
        Some(("tags", tag)) if !tag.is_empty() => tag_page(&ctx, tag, &q).await,
        Some(("artifacts", digest)) if !digest.is_empty() => artifact_page(&ctx, digest).await,
        Some(("environments", "")) => environments_page(&ctx, &q).await,
        Some(("retention", "")) => retention_page(&ctx, &q).await,
        _ => Err(UiError::not_found("no such page")),
    }
}

struct Ctx<'a> {
    state: &'a AppState,
    host: &'a str,
    repo: &'a RepoName,
}

fn mutability_badge(m: Mutability, rule: &str) -> Markup {
    let class = match m {
        Mutability::Immutable => "badge immutable",
        Mutability::Mutable => "badge mutable",
    };
    html! { span class=(class) { (m) } " " span.muted { "rule " code { (rule) } } }
}

// ---- tags ------------------------------------------------------------------

/// A repository's tags: digest, immutability and its rule, push time, pulls.
async fn tags_page(c: &Ctx<'_>, q: &Query) -> Page {
    let r = c.repo.as_str();
    let after = param(q, "after");
    let stats = c.state.registry.repository_stats(c.repo).await?;
    let n = page_size(q)?;
    let n_text = n.map(|n| n.to_string());
    let page = c.state.registry.tag_summaries(c.repo, after, n).await?;
    let next = page.items.last().filter(|_| page.more).map(|t| {
        format!(
            "{}{}",
            repo_url(r),
            query_string(&[("n", n_text.as_deref()), ("after", Some(&t.name))])
        )
    });
    let first = after.map(|_| {
        format!(
            "{}{}",
            repo_url(r),
            query_string(&[("n", n_text.as_deref())])
        )
    });
    html_page(
        r,
        crumbs_repo(r),
        html! {
            h1 { (r) }
            div.cards {
                div.card { b { (stats.manifests) } "artifacts" }
                div.card { b { (stats.tags) } "tags" }
                div.card { b { (stats.pulls) } "manifest pulls" }
                div.card { b { (human_size(stats.bytes_served)) } "served" }
                div.card { b { (when_opt(stats.last_pulled_at)) } "last pull" }
            }
            (tabs(r, "tags"))
            @if page.items.is_empty() {
                p.muted { "No tags." }
            } @else {
                table #tags {
                    thead { tr {
                        th { "Tag" } th { "Digest" } th { "Immutability" } th { "Pushed" }
                        th.num { "Size" } th.num { "Pulls" } th { "Last pulled" }
                    } }
                    tbody {
                        @for t in &page.items {
                            @let d = c.state.registry.explain(c.repo, &t.name);
                            tr {
                                td { a href=(tag_url(r, &t.name)) { (t.name) } }
                                td { (digest_cell(c.host, r, &t.digest)) }
                                td { (mutability_badge(d.mutability, &d.rule)) }
                                td { (when(t.pushed_at)) }
                                td.num { (human_size(t.size)) }
                                td.num { (t.pulls) }
                                td { (when_opt(t.last_pulled_at)) }
                            }
                        }
                    }
                }
            }
            (pager(first, next))
        },
    )
}

// ---- a tag's history ----------------------------------------------------------

async fn tag_page(c: &Ctx<'_>, tag: &str, q: &Query) -> Page {
    let r = c.repo.as_str();
    let tag: Tag = tag
        .parse()
        .map_err(|e| UiError::bad_request(format!("tag {tag:?}: {e}")))?;
    let before = number(q, "before")?;
    let registry = &c.state.registry;
    let history = registry.tag_history(c.repo, &tag, before, Some(50)).await?;
    let current = match registry
        .manifest_record(c.repo, &Reference::Tag(tag.clone()), &[])
        .await
    {
        Ok(m) => Some(m),
        Err(crate::service::Error::ManifestUnknown(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if history.is_empty() && current.is_none() && before.is_none() {
        return Err(UiError::not_found(&format!(
            "tag {tag} is not known to {r}"
        )));
    }
    let at_text = param(q, "at");
    let at = time_param(q, "at")?;
    let at_answer = match at {
        Some(ms) => match registry.tag_at(c.repo, &tag, ms).await {
            Ok(e) => Some((ms, Some(e))),
            Err(crate::service::Error::ManifestUnknown(_)) => Some((ms, None)),
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let decision = registry.explain(c.repo, tag.as_str());
    let next = history
        .last()
        .filter(|_| history.len() == 50)
        .map(|e| format!("{}?before={}", tag_url(r, tag.as_str()), e.id));
    let first = before.map(|_| tag_url(r, tag.as_str()));
    html_page(
        &format!("{r}:{tag}"),
        html! { (crumbs_repo(r)) " / tags / " (tag.as_str()) },
        html! {
            h1 { (r) ":" (tag.as_str()) }
            dl.facts #tag-facts {
                dt { "Holds" }
                dd { @match &current {
                    Some(m) => { (digest_cell(c.host, r, &m.digest)) }
                    None => { span.muted { "nothing (the tag is not bound now)" } }
                } }
                dt { "Immutability" }
                dd { (mutability_badge(decision.mutability, &decision.rule)) }
            }
            h2 { "What did it point at?" }
            form.filters method="get" action=(tag_url(r, tag.as_str())) {
                label { "At (RFC 3339 or Unix ms)" input type="text" name="at" value=[at_text] placeholder="2026-11-25T14:00:00Z"; }
                button type="submit" { "Look up" }
            }
            @if let Some((ms, answer)) = &at_answer {
                p #at-answer {
                    "At " (utc(*ms)) ", " code { (tag.as_str()) } " "
                    @match answer {
                        Some(e) => { "pointed at " a.mono href=(artifact_url(r, &e.digest)) { (e.digest) }
                            " (bound " (when(e.at_ms)) " by " (e.actor) ")." }
                        None => { "was not bound." }
                    }
                }
            }
            h2 { "History" }
            table #history {
                thead { tr { th { "Event" } th { "Digest" } th { "Previously" } th { "Rule" } th { "Actor" } th { "When" } } }
                tbody {
                    @for e in &history {
                        tr {
                            td { span class=(format!("badge {}", if e.action == "denied" { "denied" } else { "" })) { (e.action) } }
                            td { (digest_cell(c.host, r, &e.digest)) }
                            td { @if let Some(p) = &e.previous_digest { a.mono href=(artifact_url(r, p)) title=(p) { (short_digest(p)) } } }
                            td { code { (e.rule) } }
                            td { (e.actor) }
                            td { (when(e.at_ms)) }
                        }
                    }
                }
            }
            (pager(first, next))
        },
    )
}

// ---- an artifact ---------------------------------------------------------------

/// What a referrer is, from its artifact type.
fn referrer_kind(artifact_type: Option<&str>) -> &'static str {
    let t = artifact_type.unwrap_or("").to_ascii_lowercase();
    if t.contains("signature") || t.contains("cosign") || t.contains("notary") {
        "signature"
    } else if t.contains("spdx") || t.contains("cyclonedx") || t.contains("sbom") {
        "SBOM"
    } else if t.contains("in-toto") || t.contains("attestation") || t.contains("provenance") {
        "attestation"
    } else {
        "artifact"
    }
}

fn annotations_table(map: &BTreeMap<String, String>) -> Markup {
    html! {
        table.annotations {
            tbody { @for (k, v) in map { tr { td.mono { (k) } td { (v) } } } }
        }
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let text = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), text)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn platform(v: &Value) -> String {
    let p = &v["platform"];
    if p.is_null() {
        return "—".into();
    }
    let mut s = format!(
        "{}/{}",
        p["os"].as_str().unwrap_or("?"),
        p["architecture"].as_str().unwrap_or("?")
    );
    if let Some(var) = p["variant"].as_str() {
        s.push('/');
        s.push_str(var);
    }
    s
}

async fn artifact_page(c: &Ctx<'_>, digest: &str) -> Page {
    let r = c.repo.as_str();
    let digest: Digest = digest
        .parse()
        .map_err(|e| UiError::bad_request(format!("digest {digest:?}: {e}")))?;
    let registry = &c.state.registry;
    let content = registry
        .manifest(c.repo, &Reference::Digest(digest.clone()), &[])
        .await?;
    let doc: Value = serde_json::from_slice(&content.bytes).unwrap_or(Value::Null);
    let tags = registry.tags_of(c.repo, digest.as_str()).await?;
    let referrers = registry
        .referrers(c.repo, &digest, &ReferrersQuery::default())
        .await?;
    let provenance = registry.provenance(c.repo, &digest, None, Some(20)).await?;
    let config = match doc["config"]["digest"].as_str().map(str::parse::<Digest>) {
        Some(Ok(cd)) if doc["manifests"].is_null() => registry.image_config(c.repo, &cd).await?,
        _ => None,
    };
    let annotations = string_map(&doc["annotations"]);
    let labels = config
        .as_ref()
        .map(|cfg| string_map(&cfg["config"]["Labels"]))
        .unwrap_or_default();
    let layers = doc["layers"].as_array().cloned().unwrap_or_default();
    let children = doc["manifests"].as_array().cloned().unwrap_or_default();
    let layer_total: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
    let d = digest.as_str();
    html_page(
        &format!("{r}@{}", short_digest(d)),
        html! { (crumbs_repo(r)) " / " (short_digest(d)) },
        html! {
            h1 { (r) "@" span.mono { (short_digest(d)) } }
            dl.facts #artifact-facts {
                dt { "Digest" } dd { span.mono { (d) } (pull_command(c.host, r, d)) }
                dt { "Media type" } dd { code { (content.record.media_type) } }
                @if let Some(t) = doc["artifactType"].as_str() { dt { "Artifact type" } dd { code { (t) } } }
                dt { "Manifest size" } dd { (human_size(content.record.size)) }
                @if !layers.is_empty() { dt { "Layers" } dd { (layers.len()) " layers, " (human_size(layer_total)) } }
                dt { "Tags" } dd {
                    @if tags.is_empty() { span.muted { "none" } }
                    @for t in &tags { a href=(tag_url(r, t)) { (t) } " " }
                }
                @if let Some(s) = doc["subject"]["digest"].as_str() {
                    dt { "Subject" } dd { a.mono href=(artifact_url(r, s)) { (s) } }
                }
                @if let Some(cfg) = &config {
                    @if let Some(created) = cfg["created"].as_str() { dt { "Created" } dd { (created) } }
                    @if let Some(os) = cfg["os"].as_str() {
                        dt { "Platform" } dd { (os) "/" (cfg["architecture"].as_str().unwrap_or("?")) }
                    }
                }
            }
            @if !children.is_empty() {
                h2 { "Platforms" }
                table #platforms {
                    thead { tr { th { "Platform" } th { "Digest" } th { "Media type" } th.num { "Size" } th { "Annotations" } } }
                    tbody { @for m in &children {
                        tr {
                            td { (platform(m)) }
                            td { @if let Some(md) = m["digest"].as_str() { (digest_cell(c.host, r, md)) } }
                            td { code { (m["mediaType"].as_str().unwrap_or("")) } }
                            td.num { (human_size(m["size"].as_u64().unwrap_or(0))) }
                            td { (annotations_table(&string_map(&m["annotations"]))) }
                        }
                    } }
                }
            }
            @if !layers.is_empty() {
                h2 { "Layers" }
                table #layers {
                    thead { tr { th { "#" } th { "Digest" } th { "Media type" } th.num { "Size" } } }
                    tbody { @for (i, l) in layers.iter().enumerate() {
                        tr {
                            td.num { (i + 1) }
                            td.mono { (l["digest"].as_str().unwrap_or("")) }
                            td { code { (l["mediaType"].as_str().unwrap_or("")) } }
                            td.num title=(format!("{} bytes", l["size"].as_u64().unwrap_or(0))) { (human_size(l["size"].as_u64().unwrap_or(0))) }
                        }
                    } }
                }
            }
            @if !labels.is_empty() {
                h2 { "Config labels" }
                div #labels { (annotations_table(&labels)) }
            }
            @if !annotations.is_empty() {
                h2 { "Annotations" }
                div #annotations { (annotations_table(&annotations)) }
            }
            h2 { "Referrers" }
            @if referrers.is_empty() {
                p.muted { "No signatures, SBOMs or attestations refer to this artifact." }
            } @else {
                table #referrers {
                    thead { tr { th { "Kind" } th { "Artifact type" } th { "Digest" } th.num { "Size" } th { "Annotations" } } }
                    tbody { @for f in &referrers {
                        tr {
                            td { (referrer_kind(f.artifact_type.as_deref())) }
                            td { code { (f.artifact_type.as_deref().unwrap_or("")) } }
                            td { (digest_cell(c.host, r, &f.digest)) }
                            td.num { (human_size(f.size)) }
                            td { @if let Some(a) = &f.annotations { (annotations_table(a)) } }
                        }
                    } }
                }
            }
            h2 #provenance-heading { "Provenance" }
            p.muted { "As JSON: " a href=(format!("/api/v1/provenance/{r}@{d}")) { "/api/v1/provenance/" (r) "@" (short_digest(d)) } }
            @if provenance.is_empty() {
                p.muted { "No provenance is recorded for this artifact." }
            }
            @for p in &provenance {
                div.env.provenance {
                    dl.facts {
                        dt { "Recorded from" } dd { (p.source) " by " (p.actor) ", " (when(p.recorded_at)) }
                        @if let Some(t) = &p.predicate_type { dt { "Predicate" } dd { code { (t) } } }
                        @if !p.parsed { dt { "Not parsed" } dd.error { (p.parse_error.as_deref().unwrap_or("")) } }
                        @if let Some(s) = &p.source_uri { dt { "Source" } dd.source { (external(s)) } }
                        @if let Some(rev) = &p.revision { dt { "Commit" } dd.commit { (commit_link(p.source_uri.as_deref(), rev)) } }
                        @if let Some(b) = &p.builder_id { dt { "Builder" } dd.builder { (external(b)) } }
                        @if let Some(b) = &p.build_type { dt { "Build type" } dd { (external(b)) } }
                        @if let Some(i) = &p.invocation_id { dt { "Invocation" } dd { (i) } }
                        @if let Some(t) = p.started_at { dt { "Started" } dd { (when(t)) } }
                        @if let Some(t) = p.finished_at { dt { "Finished" } dd { (when(t)) } }
                        @if let Some(t) = p.image_created_at { dt { "Image created" } dd { (when(t)) } }
                        @if let Some(v) = &p.version { dt { "Version" } dd { (v) } }
                        @if !p.materials.is_empty() {
                            dt { "Materials" }
                            dd { ul.materials { @for m in &p.materials {
                                li { (external(&m.uri)) @if let Some(md) = &m.digest { " " span.mono { (md) } } }
                            } } }
                        }
                    }
                }
            }
        },
    )
}

// ---- environments ---------------------------------------------------------------

fn environment_block(c: &Ctx<'_>, env: &RollbackAnswer) -> Markup {
    let r = c.repo.as_str();
    html! {
        div.env id=(format!("env-{}", env.environment)) {
            h2 { "Environment " code { (env.environment) } }
            dl.facts {
                dt { "Current" }
                dd { @match &env.current {
                    Some(cur) => { (digest_cell(c.host, r, &cur.digest)) }
                    None => { span.muted { "none" } }
                } }
                dt { "Roll back to" }
                dd { @match &env.rollback_to {
                    Some(rb) => { (digest_cell(c.host, r, &rb.digest)) }
                    None => { span.muted { "nothing earlier was promoted" } }
                } }
            }
            h3 { "Rollback targets retention protects" }
            table.targets {
                thead { tr { th { "Target" } th { "Digest" } th { "Tags" } th { "Promoted" } th { "Built from" } } }
                tbody { @for t in &env.targets {
                    tr {
                        td { (t.label) }
                        td { (digest_cell(c.host, r, &t.digest)) }
                        td { @for tag in &t.tags { a href=(tag_url(r, tag)) { (tag) } " " } }
                        td { (when(t.promoted_at)) " by " (t.promoted_by) }
                        td { @for p in &t.provenance {
                            div {
                                @if let Some(s) = &p.source_uri { (external(s)) " " }
                                @if let Some(rev) = &p.revision { (commit_link(p.source_uri.as_deref(), rev)) }
                                @if let Some(b) = &p.builder_id { br; span.muted { "builder " } (external(b)) }
                            }
                        } }
                    }
                } }
            }
        }
    }
}

async fn environments_page(c: &Ctx<'_>, q: &Query) -> Page {
    let r = c.repo.as_str();
    let before = number(q, "before")?;
    let registry = &c.state.registry;
    let envs = registry.environments(c.repo).await?;
    let promotions = registry.promotions(c.repo, None, before, Some(50)).await?;
    let base = format!("{}/-/environments", repo_url(r));
    let next = promotions
        .last()
        .filter(|_| promotions.len() == 50)
        .map(|p| format!("{base}?before={}", p.id));
    let first = before.map(|_| base.clone());
    html_page(
        &format!("{r}: environments"),
        html! { (crumbs_repo(r)) " / environments" },
        html! {
            h1 { (r) }
            (tabs(r, "environments"))
            @if envs.is_empty() {
                p.muted { "Nothing of " (r) " was ever promoted. Record promotions with "
                    code { "POST /api/v1/repositories/" (r) "/promotions" } "." }
            }
            @for env in &envs { (environment_block(c, env)) }
            h2 { "Promotions" }
            @if !promotions.is_empty() {
                table #promotions {
                    thead { tr { th { "Environment" } th { "Digest" } th { "Tag" } th { "By" } th { "When" } } }
                    tbody { @for p in &promotions {
                        tr {
                            td { code { (p.environment) } }
                            td { (digest_cell(c.host, r, &p.digest)) }
                            td { @if let Some(t) = &p.tag { a href=(tag_url(r, t)) { (t) } } }
                            td { (p.actor) }
                            td { (when(p.at)) }
                        }
                    } }
                }
            }
            (pager(first, next))
        },
    )
}

// ---- retention ------------------------------------------------------------------

/// Kept artifacts shown per page of the retention view.
const KEPT_PAGE: usize = 100;

async fn retention_page(c: &Ctx<'_>, q: &Query) -> Page {
    let r = c.repo.as_str();
    let from = number(q, "from")?.unwrap_or(0).max(0) as usize;
    let plan = c.state.registry.retention_preview(c.repo).await?;
    let base = format!("{}/-/retention", repo_url(r));
    html_page(
        &format!("{r}: retention"),
        html! { (crumbs_repo(r)) " / retention" },
        html! {
            h1 { (r) }
            (tabs(r, "retention"))
            @match &plan {
                None => { p #no-policy { "No retention policy applies to " (r) ": nothing would be deleted." } }
                Some(plan) => {
                    p.muted { "What a retention run would do now. Nothing is stored or deleted here; "
                        code { "cairn retention plan" } " records a plan to apply." }
                    h2 { "Would be deleted (" (plan.delete.len()) ")" }
                    @if plan.delete.is_empty() {
                        p #nothing-deleted { "Nothing." }
                    } @else {
                        table #deletions {
                            thead { tr { th { "Digest" } th { "Tags" } th { "Policy" } th { "Why" } } }
                            tbody { @for d in plan.delete.iter().take(1000) {
                                tr {
                                    td { (digest_cell(c.host, r, &d.digest)) }
                                    td { (d.tags.join(", ")) }
                                    td { (d.policy) }
                                    td { (d.why) }
                                }
                            } }
                        }
                        @if plan.delete.len() > 1000 {
                            p.muted { "The first 1000 are shown; the plan API lists all." }
                        }
                    }
                    h2 { "Kept (" (plan.keep.len()) "), and why" }
                    table #kept {
                        thead { tr { th { "Digest" } th { "Tags" } th { "Kept because" } } }
                        tbody { @for k in plan.keep.iter().skip(from).take(KEPT_PAGE) {
                            tr {
                                td { (digest_cell(c.host, r, &k.digest)) }
                                td { (k.tags.join(", ")) }
                                td { ul { @for reason in &k.reasons { li { (reason.to_string()) } } } }
                            }
                        } }
                    }
                    (pager(
                        (from > 0).then(|| base.clone()),
                        (plan.keep.len() > from + KEPT_PAGE).then(|| format!("{base}?from={}", from + KEPT_PAGE)),
                    ))
                }
            }
        },
    )
}

// ---- audit ----------------------------------------------------------------------

/// Audit entries per page.
const AUDIT_PAGE: u32 = 50;

/// `GET /ui/audit?repository=&digest=&actor=&action=&since=&until=&before=`.
pub(super) async fn audit(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Host(host): Host,
    RawQuery(raw): RawQuery,
) -> Page {
    let q = query(raw);
    if !viewer.may_audit() {
        return Err(UiError::not_found("no such page"));
    }
    if let Some(r) = param(&q, "repository") {
        viewer.require(r)?;
    }
    let filters = [
        ("repository", param(&q, "repository")),
        ("digest", param(&q, "digest")),
        ("actor", param(&q, "actor")),
        ("action", param(&q, "action")),
        ("since", param(&q, "since")),
        ("until", param(&q, "until")),
    ];
    let aq = AuditQuery {
        repository: param(&q, "repository").map(str::to_string),
        digest: param(&q, "digest").map(str::to_string),
        actor: param(&q, "actor").map(str::to_string),
        action: param(&q, "action").map(str::to_string),
        since: time_param(&q, "since")?,
        until: time_param(&q, "until")?,
        cursor: number(&q, "before")?,
        ascending: false,
        limit: AUDIT_PAGE,
        ..AuditQuery::default()
    };
    let rows = state.registry.audit(aq).await?;
    let next = rows
        .last()
        .filter(|_| rows.len() == AUDIT_PAGE as usize)
        .map(|last| {
            let mut pairs = filters.to_vec();
            let id = last.id.to_string();
            pairs.push(("before", Some(&id)));
            format!("/ui/audit{}", query_string(&pairs))
        });
    let first = param(&q, "before").map(|_| format!("/ui/audit{}", query_string(&filters)));
    let visible: Vec<_> = rows
        .iter()
        .filter(|e| match &e.repository {
            Some(r) => viewer.may_see(r),
            None => viewer.may_see_registry(),
        })
        .collect();
    html_page(
        "Audit log",
        html! { "Audit log" },
        html! {
            h1 { "Audit log" }
            p { a #verify href="/ui/audit/verify" { "Check the hash chain" } " · "
                a href=(format!("/api/v1/audit/export{}", query_string(&filters))) { "Export as JSON lines" } }
            form.filters method="get" action="/ui/audit" {
                @for (key, value) in &filters {
                    label { (key) input type="text" name=(key) value=[*value]; }
                }
                button type="submit" { "Filter" }
            }
            @if visible.is_empty() {
                p.muted { "No entries match." }
            } @else {
                table #audit {
                    thead { tr { th.num { "#" } th { "When" } th { "Actor" } th { "Action" } th { "Repository" }
                        th { "Tag" } th { "Digest" } th { "Result" } th { "Detail" } } }
                    tbody { @for e in &visible {
                        tr {
                            td.num { (e.id) }
                            td { (when(e.at)) }
                            td { a href=(format!("/ui/audit?actor={}", enc(&e.actor))) { (e.actor) } }
                            td { a href=(format!("/ui/audit?action={}", enc(&e.action))) { (e.action) } }
                            td { @if let Some(r) = &e.repository { a href=(repo_url(r)) { (r) } } }
                            td { @if let (Some(r), Some(t)) = (&e.repository, &e.tag) { a href=(tag_url(r, t)) { (t) } } }
                            td { @if let Some(d) = &e.digest {
                                @if let Some(r) = e.repository.as_deref().filter(|_| d.starts_with("sha256:") || d.starts_with("sha512:")) {
                                    (digest_cell(&host, r, d))
                                } @else { span.mono title=(d) { (short_digest(d)) } }
                            } }
                            td { span class=(if e.result == "ok" { "ok" } else { "error" }) { (e.result) } }
                            td.mono { @if let Some(d) = &e.detail { (d.chars().take(300).collect::<String>()) } }
                        }
                    } }
                }
            }
            (pager(first, next))
        },
    )
}

/// `GET /ui/audit/verify`: recomputes the hash chain.
pub(super) async fn audit_verify(State(state): State<Arc<AppState>>, viewer: Viewer) -> Page {
    if !viewer.may_audit() {
        return Err(UiError::not_found("no such page"));
    }
    let report = state.registry.audit_verify(|_, _| {}).await?;
    html_page(
        "Audit chain",
        html! { a href="/ui/audit" { "Audit log" } " / verify" },
        html! {
            h1 { "Audit hash chain" }
            @match &report.broken {
                None => { p.ok #chain { "Intact: " (report.checked) " entries checked; every entry's hash covers the one before it." } }
                Some(b) => { p.error #chain { "Broken at entry " (b.id) ": " (b.reason) " (" (report.checked) " entries checked)." } }
            }
            p { a href="/ui/audit" { "Back to the audit log" } }
        },
    )
}

// ---- dashboard --------------------------------------------------------------------

/// Days the dashboard draws.
const DASHBOARD_DAYS: u32 = 14;

fn bars(
    title: &str,
    id: &str,
    first_day: i64,
    days: u32,
    counts: &[crate::metadata::DayCount],
) -> Markup {
    let by_day: BTreeMap<i64, u64> = counts.iter().map(|c| (c.day, c.count)).collect();
    let max = by_day.values().copied().max().unwrap_or(0).max(1);
    html! {
        h2 { (title) }
        table.chart id=(id) {
            tbody { @for day in first_day..first_day + i64::from(days) {
                @let n = by_day.get(&day).copied().unwrap_or(0);
                tr {
                    td.mono { (utc(day * DAY_MS).get(..10).unwrap_or("")) }
                    td.num { (n) }
                    td.barcell { div.bar style=(format!("width:{}%", if n == 0 { 0 } else { (n * 100 / max).max(1) })) {} }
                }
            } }
        }
    }
}

/// `GET /ui/dashboard`: pushes and pulls over time, the most pulled
/// repositories, totals.
pub(super) async fn dashboard(State(state): State<Arc<AppState>>, viewer: Viewer) -> Page {
    if !viewer.may_see_registry() {
        return Err(UiError::not_found("no such page"));
    }
    let a = state.registry.activity(DASHBOARD_DAYS).await?;
    html_page(
        "Dashboard",
        html! { "Dashboard" },
        html! {
            h1 { "Dashboard" }
            div.cards #totals {
                div.card { b { (a.totals.repositories) } "repositories" }
                div.card { b { (a.totals.artifacts) } "artifacts" }
                div.card { b { (a.totals.tags) } "tags" }
                div.card { b { (a.totals.pulls) } "manifest pulls" }
            }
            (bars("Pushes per day (manifest pushes in the audit log)", "pushes", a.first_day, a.days, &a.pushes))
            (bars("Pulls by the day artifacts were last pulled", "pulls", a.first_day, a.days, &a.pulls))
            p.muted { "Pull statistics keep a count and the last pull time per artifact, so each artifact's pulls are drawn on the day of its latest pull." }
            h2 { "Most pulled repositories" }
            table #top {
                thead { tr { th { "Repository" } th.num { "Pulls" } th.num { "Served" } th { "Last pull" } } }
                tbody { @for t in a.top.iter().filter(|t| viewer.may_see(&t.name)) {
                    tr {
                        td { a href=(repo_url(&t.name)) { (t.name) } }
                        td.num { (t.pulls) }
                        td.num { (human_size(t.bytes_served)) }
                        td { (when(t.last_pulled_at)) }
                    }
                } }
            }
        },
    )
}
