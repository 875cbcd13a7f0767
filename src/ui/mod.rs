//! The web console under `/ui/`: server-rendered HTML pages over the same
//! service layer as the JSON API (never the metadata store, never SQL).
//!
//! Templates are `maud` macros, so every interpolated value is HTML-escaped by
//! construction; the only unescaped text is the constant style sheet and the
//! copy-to-clipboard script below. Links to URLs taken from stored data are
//! made only for `http`/`https` URLs. Reading works without JavaScript.
//!
//! Every page asks [`Viewer`] what it may show: one decision, from the
//! signed-in account's roles (everything while access control is open).

mod format;
mod pages;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::api::AppState;
use crate::auth::{Auth, Principal, Verdict};
use crate::policy::access::{Action, Target};
use crate::service;

pub use format::{human_size, short_digest};

/// The console's routes, to be merged into the registry's router.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::repositories))
        .route("/ui/dashboard", get(pages::dashboard))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/audit/verify", get(pages::audit_verify))
        .route("/ui/r/{*rest}", get(pages::repository_route))
        .route(
            "/ui/{*rest}",
            get(|| async { UiError::not_found("no such page") }),
        )
}

/// Who is looking at the console, and the one place that decides what they
/// may see: the signed-in account's roles, as on the JSON API. Handlers filter
/// every list through [`Viewer::may_see`] and refuse single pages with a 404
/// through [`Viewer::require`].
#[derive(Clone)]
pub struct Viewer {
    /// The account name, when one is signed in.
    pub principal: Option<String>,
    access: Option<(Principal, Arc<Auth>)>,
}

impl Viewer {
    fn allowed(&self, action: Action, target: Target<'_>) -> bool {
        match &self.access {
            None => true,
            Some((p, auth)) => auth.authorize(p, action, target) == Verdict::Allow,
        }
    }

    /// Whether this viewer may see `repository` (its tags, artifacts,
    /// provenance, promotions, retention and audit entries): readers, writers
    /// and admins of it, and auditors (who read, never change).
    pub fn may_see(&self, repository: &str) -> bool {
        self.allowed(Action::Read, Target::Repository(repository))
            || self.allowed(Action::ReadProvenance, Target::Repository(repository))
    }

    /// Whether this viewer may see registry-wide facts: the dashboard totals.
    pub fn may_see_registry(&self) -> bool {
        self.allowed(Action::Catalog, Target::Global) || self.allowed(Action::Audit, Target::Global)
    }

    /// Whether this viewer may read the audit log (auditors and admins of `**`).
    pub fn may_audit(&self) -> bool {
        self.allowed(Action::Audit, Target::Global)
    }

    /// A 404 (not a 403: names of hidden repositories are not disclosed)
    /// unless the viewer may see `repository`.
    pub fn require(&self, repository: &str) -> Result<(), UiError> {
        if self.may_see(repository) {
            Ok(())
        } else {
            Err(UiError::not_found(&format!(
                "repository {repository} is not known to this registry"
            )))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Viewer {
    type Rejection = std::convert::Infallible;

    /// The principal the access-control middleware attached (none: open).
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let principal = parts.extensions.get::<Principal>().cloned();
        Ok(Viewer {
            principal: principal
                .as_ref()
                .and_then(|p| p.account().map(str::to_string)),
            access: principal.map(|p| (p, state.auth.clone())),
        })
    }
}

/// The registry's address as clients name it (`Host`), for pull commands.
pub struct Host(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Host {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']')
                    })
            })
            .unwrap_or("localhost:5000");
        Ok(Host(host.to_string()))
    }
}

/// A page that could not be shown: an HTML page with the status and a message.
#[derive(Debug)]
pub struct UiError {
    status: StatusCode,
    message: String,
}

impl UiError {
    pub fn not_found(message: &str) -> UiError {
        UiError {
            status: StatusCode::NOT_FOUND,
            message: message.to_string(),
        }
    }

    pub fn bad_request(message: String) -> UiError {
        UiError {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }
}

impl From<service::Error> for UiError {
    fn from(e: service::Error) -> Self {
        use service::Error as E;
        let status = match &e {
            E::NameUnknown(_) | E::ManifestUnknown(_) | E::BlobUnknown(_) => StatusCode::NOT_FOUND,
            E::Name(_) | E::Invalid(_) | E::DigestInvalid(_) | E::Unsupported(_) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = ?e, "console page failed");
            return UiError {
                status,
                message: "the registry could not answer; see its log".into(),
            };
        }
        UiError {
            status,
            message: e.to_string(),
        }
    }
}

impl From<crate::domain::NameError> for UiError {
    fn from(e: crate::domain::NameError) -> Self {
        UiError::bad_request(e.to_string())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let title = match self.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST => "Bad request",
            _ => "Error",
        };
        let body = layout(
            title,
            html! {},
            html! {
                h1 { (title) }
                p.error { (self.message) }
                p { a href="/ui/" { "Back to the repositories" } }
            },
        );
        (self.status, body).into_response()
    }
}

const STYLE: &str = r#"
:root{--fg:#1d2330;--muted:#5b6475;--line:#dfe3ea;--bg:#f7f8fa;--accent:#1f5fbf;--ok:#1d7a3a;--warn:#a35b00;--bad:#b3261e}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header.top{background:#1d2330;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.4rem;align-items:baseline}
header.top a{color:#fff;text-decoration:none}header.top .brand{font-weight:700;font-size:1.1rem}
main{padding:1rem 1.2rem;max-width:1400px}h1{font-size:1.35rem;margin:.2rem 0 .8rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
a{color:var(--accent)}nav.crumbs{color:var(--muted);margin-bottom:.4rem}nav.tabs{display:flex;gap:1rem;margin:.4rem 0 1rem;border-bottom:1px solid var(--line)}
nav.tabs a{padding:.3rem 0;text-decoration:none}nav.tabs a.on{border-bottom:2px solid var(--accent);font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line)}th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}
th{background:#eef1f5;font-weight:600;white-space:nowrap}td.num,th.num{text-align:right;white-space:nowrap}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.pull{display:flex;gap:.4rem;align-items:center;margin-top:.15rem}.pull code{background:#eef1f5;padding:.1rem .3rem;border-radius:3px;word-break:break-all}
button.copy{font-size:11px;padding:.05rem .45rem;cursor:pointer}
.badge{display:inline-block;padding:0 .45rem;border-radius:9px;font-size:12px;font-weight:600}
.immutable{background:#e3f1e7;color:var(--ok)}.mutable{background:#fdf0dc;color:var(--warn)}.denied{background:#fbe4e2;color:var(--bad)}
.muted{color:var(--muted)}.error{color:var(--bad);font-weight:600}.ok{color:var(--ok);font-weight:600}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{background:#fff;border:1px solid var(--line);padding:.6rem 1rem;min-width:10rem}.card b{display:block;font-size:1.4rem}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;background:#fff;border:1px solid var(--line);padding:.6rem 1rem}dl.facts dt{color:var(--muted)}dl.facts dd{margin:0;word-break:break-all}
form.filters{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin-bottom:.8rem}form.filters label{display:flex;flex-direction:column;font-size:12px;color:var(--muted)}
.pager{margin:.7rem 0;display:flex;gap:1rem}.bar{background:var(--accent);height:14px}td.barcell{width:60%}
.env{background:#fff;border:1px solid var(--line);padding:.6rem 1rem;margin-bottom:1rem}
"#;

/// Copies the `data-copy` text of a clicked button; falls back to a hidden
/// text area where the Clipboard API is unavailable (plain-HTTP origins).
const SCRIPT: &str = r#"
document.addEventListener('click',function(e){var b=e.target.closest('button[data-copy]');if(!b)return;var t=b.getAttribute('data-copy');
function done(){b.textContent='Copied';setTimeout(function(){b.textContent='Copy'},1500)}
if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(t).then(done);return}
var a=document.createElement('textarea');a.value=t;a.style.position='fixed';a.style.opacity='0';document.body.appendChild(a);a.select();try{document.execCommand('copy');done()}finally{document.body.removeChild(a)}});
"#;

/// The page frame: title, top navigation, breadcrumbs and content.
pub(crate) fn layout(title: &str, crumbs: Markup, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Cairn" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header.top {
                    a.brand href="/ui/" { "Cairn" }
                    a href="/ui/" { "Repositories" }
                    a href="/ui/dashboard" { "Dashboard" }
                    a href="/ui/audit" { "Audit log" }
                }
                main {
                    nav.crumbs { (crumbs) }
                    (content)
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}
