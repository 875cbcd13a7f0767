//! The web console in a real browser: Debian's Chromium, headless, driven by
//! `chromedriver` over WebDriver (fantoccini). A reader navigates from the
//! repository list to a tag, its history, the artifact's provenance and the
//! rollback targets; a label holding a script tag stays text. Screenshots of
//! the main pages are written to `docs/screenshots/` (committed; the README
//! shows them).
//!
//! Chromium and chromedriver are required (`scripts/test.sh` installs the
//! `chromium` and `chromium-driver` packages); without them this test fails.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use reqwest::Method;
use serde_json::json;

use crate::helpers::{Db, TestApp};
use crate::ui::{promote, push_labelled, XSS};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "the browser test needs Debian's chromium and chromium-driver packages \
         ({CHROMIUM}, {CHROMEDRIVER}); scripts/test.sh installs them"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/status", driver.url)).await {
            if r.status().is_success() {
                return driver;
            }
        }
        assert!(Instant::now() < deadline, "chromedriver did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--hide-scrollbars",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn screenshots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn shoot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).expect("write screenshot");
}

/// The text of the first element matching `css`, waiting up to 10 s for it to
/// appear: a form submission or a script may still be rendering it.
async fn text(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(std::time::Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .text()
        .await
        .expect("element text")
}

/// No alert dialog is open (a script from a label would have opened one).
async fn no_alert(c: &Client) {
    assert!(
        c.get_alert_text().await.is_err(),
        "an alert dialog is open: a stored script ran"
    );
}

const COMMIT: &str = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c";
const BUILDER: &str = "https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main";

fn statement(digest: &str) -> serde_json::Value {
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "shop/web", "digest": {"sha256": digest.trim_start_matches("sha256:")}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": "https://actions.github.io/buildtypes/workflow/v1",
                "externalParameters": {"workflow": {
                    "ref": "refs/heads/main", "repository": "https://github.com/acme/shop",
                    "path": ".github/workflows/release.yml"
                }},
                "resolvedDependencies": [
                    {"uri": "git+https://github.com/acme/shop@refs/heads/main", "digest": {"gitCommit": COMMIT}},
                    {"uri": "pkg:docker/golang@1.22", "digest": {"sha256": "ab".repeat(32)}}
                ]
            },
            "runDetails": {
                "builder": {"id": BUILDER},
                "metadata": {"invocationId": "run-7", "startedOn": "2026-11-20T10:00:00Z", "finishedOn": "2026-11-20T10:04:00Z"}
            }
        }
    })
}

#[tokio::test]
async fn a_reader_follows_a_release_in_chromium() {
    // Pull statistics flushed every second, so the pages show the pulls below.
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.metrics.pull_stats_flush_secs = 1).await;
    let repo = "shop/web";
    let d1 = push_labelled(&app, repo, "v1.0.0", b"first release").await;
    let (_, d2) = app.push_image(repo, "v1.1.0", b"second release").await;
    app.push_image("shop/worker", "v1", b"worker").await;
    let r = app
        .req(Method::PUT, &format!("/api/v1/provenance/{repo}@{d2}"))
        .header("Content-Type", "application/json")
        .body(statement(&d2).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    promote(&app, repo, "v1.0.0", "prod").await;
    promote(&app, repo, "v1.1.0", "prod").await;
    // Some pulls for the dashboard and the tag list.
    for _ in 0..3 {
        app.req(Method::GET, &format!("/v2/{repo}/manifests/v1.1.0"))
            .header("Accept", crate::helpers::OCI_MANIFEST)
            .send()
            .await
            .expect("pull");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let driver = start_driver().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let c = browser(&driver, profile.path()).await;
    let result = std::panic::AssertUnwindSafe(async {
        // The repository list, reached from `/`.
        c.goto(&format!("{}/", app.base)).await.expect("goto");
        assert!(c.current_url().await.expect("url").path() == "/ui/");
        let list = text(&c, "#repositories").await;
        assert!(
            list.contains("shop/web") && list.contains("shop/worker"),
            "{list}"
        );
        shoot(&c, "repositories").await;

        // The repository's tags.
        c.find(Locator::LinkText(repo))
            .await
            .expect("repo link")
            .click()
            .await
            .expect("click");
        let tags = text(&c, "#tags").await;
        assert!(tags.contains("v1.0.0") && tags.contains("v1.1.0"), "{tags}");
        assert!(tags.contains("immutable"), "{tags}");
        let pulled = c
            .find(Locator::XPath(
                "//table[@id='tags']//tr[td/a[text()='v1.1.0']]/td[6]",
            ))
            .await
            .expect("pull count cell")
            .text()
            .await
            .expect("text");
        assert_eq!(pulled, "3", "pulls of v1.1.0");
        assert!(
            tags.contains(&format!("docker pull {}/{repo}@{d2}", app.host())),
            "{tags}"
        );
        no_alert(&c).await;
        shoot(&c, "repository").await;

        // The copy button holds the pull command and says "Copied" once the
        // clipboard write succeeded.
        let button = c
            .find(Locator::Css(&format!("button[data-copy$='{d2}']")))
            .await
            .expect("copy button");
        assert_eq!(
            button.attr("data-copy").await.expect("attr").as_deref(),
            Some(format!("docker pull {}/{repo}@{d2}", app.host()).as_str())
        );
        button.click().await.expect("click copy");
        let deadline = Instant::now() + Duration::from_secs(5);
        while button.text().await.expect("button text") != "Copied" {
            assert!(
                Instant::now() < deadline,
                "the copy button never said Copied"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The tag and its history, with the ?at= lookup.
        c.find(Locator::LinkText("v1.1.0"))
            .await
            .expect("tag link")
            .click()
            .await
            .expect("click");
        let history = text(&c, "#history").await;
        assert!(history.contains("created"), "{history}");
        assert!(history.contains("127.0.0.1"), "actor: {history}");
        let at = c
            .find(Locator::Css("input[name=at]"))
            .await
            .expect("at input");
        at.send_keys(&cairn::metadata::now_ms().to_string())
            .await
            .expect("type");
        c.find(Locator::Css("form.filters button"))
            .await
            .expect("button")
            .click()
            .await
            .expect("submit");
        let answer = text(&c, "#at-answer").await;
        assert!(
            answer.contains("pointed at") && answer.contains(&d2),
            "{answer}"
        );
        shoot(&c, "tag-history").await;

        // The artifact and its provenance.
        c.find(Locator::Css("#tag-facts a.mono"))
            .await
            .expect("digest link")
            .click()
            .await
            .expect("click");
        let facts = text(&c, "#artifact-facts").await;
        assert!(facts.contains(&d2), "{facts}");
        let commit = text(&c, "dd.commit").await;
        assert_eq!(commit, COMMIT);
        let commit_href = c
            .find(Locator::Css("dd.commit a"))
            .await
            .expect("commit link")
            .attr("href")
            .await
            .expect("href");
        assert_eq!(
            commit_href.as_deref(),
            Some(format!("https://github.com/acme/shop/commit/{COMMIT}").as_str())
        );
        assert!(text(&c, "dd.builder").await.contains(BUILDER));
        assert!(text(&c, "dd.source")
            .await
            .contains("https://github.com/acme/shop"));
        assert!(text(&c, "ul.materials")
            .await
            .contains("pkg:docker/golang@1.22"));
        shoot(&c, "artifact").await;

        // Environments: the current release and the rollback target.
        c.find(Locator::LinkText(repo))
            .await
            .expect("crumb")
            .click()
            .await
            .expect("click");
        c.find(Locator::LinkText("Environments & promotions"))
            .await
            .expect("tab")
            .click()
            .await
            .expect("click");
        let prod = text(&c, "#env-prod").await;
        assert!(
            prod.contains("prod current") && prod.contains("prod previous #1"),
            "{prod}"
        );
        let mut rows = Vec::new();
        for row in c
            .find_all(Locator::Css("#env-prod table.targets tbody tr"))
            .await
            .expect("target rows")
        {
            rows.push(row.text().await.expect("row text"));
        }
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            rows[0].starts_with("prod current") && rows[0].contains("v1.1.0"),
            "{rows:?}"
        );
        assert!(rows[0].contains(&d2), "{rows:?}");
        assert!(
            rows[1].starts_with("prod previous #1") && rows[1].contains("v1.0.0"),
            "{rows:?}"
        );
        assert!(rows[1].contains(&d1), "{rows:?}");
        assert!(
            prod.contains(COMMIT),
            "provenance of the current release: {prod}"
        );
        shoot(&c, "environments").await;

        // The artifact with a script in its label: shown as text, never run.
        c.goto(&format!("{}/ui/r/{repo}/-/artifacts/{d1}", app.base))
            .await
            .expect("goto");
        no_alert(&c).await;
        let labels = text(&c, "#labels").await;
        assert!(labels.contains(XSS), "{labels}");
        let annotations = text(&c, "#annotations").await;
        assert!(
            annotations.contains("<script>alert(2)</script>"),
            "{annotations}"
        );
        let scripts: i64 = c
            .execute("return document.querySelectorAll('script').length", vec![])
            .await
            .expect("script")
            .as_i64()
            .expect("number");
        assert_eq!(scripts, 1, "only the console's own script is on the page");

        // The audit log and the dashboard.
        c.goto(&format!("{}/ui/audit", app.base))
            .await
            .expect("goto");
        assert!(text(&c, "#audit").await.contains("promotion"));
        shoot(&c, "audit").await;
        c.find(Locator::Id("verify"))
            .await
            .expect("verify link")
            .click()
            .await
            .expect("click");
        assert!(text(&c, "#chain").await.contains("Intact"));
        c.goto(&format!("{}/ui/dashboard", app.base))
            .await
            .expect("goto");
        assert!(text(&c, "#totals").await.contains("repositories"));
        shoot(&c, "dashboard").await;
    })
    .catch_unwind()
    .await;
    c.close().await.expect("close the browser");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// An auditor signs in (the browser answers the console's Basic challenge),
/// reads the repository, the artifact's provenance and the audit log, and
/// finds no action that changes anything: no form, no button but "Copy".
#[tokio::test]
async fn an_auditor_reads_and_cannot_reach_a_delete() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.auth.required = false).await;
    let repo = "shop/audited";
    let (_, d) = app.push_image(repo, "v1", b"audited release").await;
    let r = app
        .req(Method::PUT, &format!("/api/v1/provenance/{repo}@{d}"))
        .header("Content-Type", "application/json")
        .body(statement(&d).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 201);
    // Accounts from now on: the registry closes.
    let meta = cairn::open_metadata(&app.config).await.expect("database");
    let origin = cairn::metadata::Origin::system("test");
    for (name, role) in [("ada", "auditor"), ("root", "admin")] {
        let roles = vec![("**".to_string(), role.to_string())];
        assert!(
            cairn::auth::create_user(&meta, name, "audit pass phrase", &roles, &origin)
                .await
                .expect("user")
        );
    }
    meta.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.get("/ui/").await.status() != 401 {
        assert!(Instant::now() < deadline, "the console stayed open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let signed_in = app
        .base
        .replace("http://", "http://ada:audit%20pass%20phrase@");

    let driver = start_driver().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let c = browser(&driver, profile.path()).await;
    let result = std::panic::AssertUnwindSafe(async {
        for page in [
            "/ui/".to_string(),
            format!("/ui/r/{repo}"),
            format!("/ui/r/{repo}/-/artifacts/{d}"),
            "/ui/audit".to_string(),
        ] {
            c.goto(&format!("{signed_in}{page}")).await.expect("goto");
            let body = text(&c, "body").await;
            assert!(!body.contains("401"), "{page} refused the auditor: {body}");
            // Forms only look things up (GET); no control names a change.
            for f in c.find_all(Locator::Css("form")).await.expect("query") {
                let method = f.attr("method").await.expect("method").unwrap_or_default();
                assert!(
                    method.is_empty() || method.eq_ignore_ascii_case("get"),
                    "{page} has a form that changes something ({method})"
                );
            }
            for b in c
                .find_all(Locator::Css("button, input[type=submit]"))
                .await
                .expect("query")
            {
                let label = b.text().await.expect("button text").to_lowercase();
                for word in ["delete", "remove", "promote", "release", "apply", "push"] {
                    assert!(!label.contains(word), "{page} has a {label:?} control");
                }
            }
            assert!(
                !body.to_lowercase().contains("delete manifest"),
                "{page} offers a delete"
            );
        }
        // What the auditor came for: the commit on the artifact page, and the trail.
        c.goto(&format!("{signed_in}/ui/r/{repo}/-/artifacts/{d}"))
            .await
            .expect("goto");
        let body = text(&c, "body").await;
        assert!(body.contains(COMMIT) && body.contains(BUILDER), "{body}");
        c.goto(&format!("{signed_in}/ui/audit?repository={repo}"))
            .await
            .expect("goto");
        let body = text(&c, "body").await;
        assert!(
            body.contains("provenance.ingest") && body.contains("manifest.push"),
            "{body}"
        );
    })
    .catch_unwind()
    .await;
    c.close().await.expect("close the browser");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    // And the API agrees: the auditor's delete is refused.
    let r = app
        .req(Method::DELETE, &format!("/v2/{repo}/manifests/{d}"))
        .basic_auth("ada", Some("audit pass phrase"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 403);
}
