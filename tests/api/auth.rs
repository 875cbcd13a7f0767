//! Access control: the 401 challenge, the token endpoint (basic credentials,
//! the OAuth2 password and refresh-token forms), the role matrix, anonymous
//! pull, robots (expiry, last use), every kind of bad token, failed-login
//! throttling, secrets kept out of logs, refusing to start open on a
//! non-loopback address, every route covered, and real clients (docker login,
//! podman/skopeo with credentials, oras-py with credentials).

use base64::Engine as _;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

use cairn::config::MetricsAccess;
use cairn::policy::{Mutability, RuleSpec};

use crate::helpers::{error_code, Db, TestApp};

const PASSWORD: &str = "correct horse battery";

/// A registry that requires credentials, with anonymous pull of `public/**`
/// and the `e2e/**` tags mutable (so clients may delete).
fn secured(c: &mut cairn::Config) {
    c.auth.required = true;
    c.auth.anonymous_pull = vec!["public/**".into()];
    c.immutability.rules = vec![RuleSpec {
        name: "e2e scratch".into(),
        repositories: vec!["e2e/**".into()],
        tags: vec!["*".into()],
        mutability: Mutability::Mutable,
    }];
}

/// Creates a user with `PASSWORD` directly in the database (as `cairn user add` does).
async fn user(app: &TestApp, name: &str, roles: &[(&str, &str)]) {
    let meta = cairn::open_metadata(&app.config).await.expect("database");
    let roles: Vec<(String, String)> = roles
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    assert!(cairn::auth::create_user(
        &meta,
        name,
        PASSWORD,
        &roles,
        &cairn::metadata::Origin::system("test")
    )
    .await
    .expect("user"));
    meta.close().await;
}

/// The standard cast: a CI robot-like writer, readers, a release manager, an auditor.
async fn cast(app: &TestApp) {
    user(app, "admin", &[("**", "admin")]).await;
    user(app, "reader", &[("team/**", "reader")]).await;
    user(app, "writer", &[("team/**", "writer")]).await;
    user(app, "releaser", &[("team/**", "admin")]).await;
    user(app, "auditor", &[("**", "auditor")]).await;
}

fn basic(name: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{secret}"))
    )
}

/// `req` with basic credentials of `name` (password `PASSWORD`).
fn as_user(app: &TestApp, m: Method, path: &str, name: &str) -> reqwest::RequestBuilder {
    app.req(m, path)
        .header("Authorization", basic(name, PASSWORD))
}

fn bearer(app: &TestApp, m: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    app.req(m, path)
        .header("Authorization", format!("Bearer {token}"))
}

/// A token for `scopes` with basic credentials of `name` (`None`: anonymous).
async fn token(app: &TestApp, name: Option<&str>, scopes: &[&str]) -> String {
    let mut url = format!("{}/auth/token?service=cairn", app.base);
    for s in scopes {
        url.push_str(&format!("&scope={}", urlencode(s)));
    }
    let mut r = app.client.get(url);
    if let Some(n) = name {
        r = r.header("Authorization", basic(n, PASSWORD));
    }
    let r = r.send().await.expect("request");
    assert_eq!(r.status(), 200, "token for {name:?}");
    let v: Value = r.json().await.expect("json");
    v["token"].as_str().expect("token").to_string()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The JSON of a JWT part.
fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("part");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&raw).expect("json")
}

fn challenge(r: &Response) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("text").to_string())
        .unwrap_or_default()
}

/// Pushes a small image with `auth` applied to every request.
async fn push_as(app: &TestApp, repo: &str, tag: &str, auth: &str) -> StatusCode {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = format!("layer of {repo}:{tag}").into_bytes();
    let mut descs = Vec::new();
    for data in [config.to_vec(), layer] {
        let d = crate::helpers::sha256(&data);
        let r = app
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            )
            .header("Authorization", auth)
            .body(data.clone())
            .send()
            .await
            .expect("request");
        if r.status() != 201 {
            return r.status();
        }
        descs.push((d, data.len()));
    }
    let m =
        crate::helpers::image_manifest(&descs[0].0, descs[0].1, &[descs[1].clone()], None, None);
    app.req(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
        .header("Authorization", auth)
        .header("Content-Type", crate::helpers::OCI_MANIFEST)
        .body(m)
        .send()
        .await
        .expect("request")
        .status()
}

// ---- challenge and tokens ------------------------------------------------------

async fn unauthenticated_requests_get_the_bearer_challenge(app: TestApp) {
    let host = app.host();
    let r = app.get("/v2/").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        challenge(&r),
        format!("Bearer realm=\"http://{host}/auth/token\",service=\"cairn\"")
    );
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    let r = app.get("/v2/team/app/manifests/v1").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        challenge(&r),
        format!(
            "Bearer realm=\"http://{host}/auth/token\",service=\"cairn\",scope=\"repository:team/app:pull\""
        )
    );
    let r = app
        .req(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        challenge(&r).ends_with(",scope=\"repository:team/app:pull,push\""),
        "{}",
        challenge(&r)
    );
    let r = app.get("/v2/_catalog").await;
    assert!(challenge(&r).contains("scope=\"registry:catalog:*\""));
    // The realm follows the Host the client used.
    let r = app
        .req(Method::GET, "/v2/")
        .header("Host", "registry.example:5000")
        .send()
        .await
        .unwrap();
    assert!(challenge(&r).contains("realm=\"http://registry.example:5000/auth/token\""));
    // Public paths stay public.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/api/v1/openapi.json").await.status(), 200);
}

async fn token_flow_with_basic_credentials(app: TestApp) {
    cast(&app).await;
    let t = token(&app, Some("writer"), &["repository:team/app:pull,push"]).await;
    let header = jwt_part(&t, 0);
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()));
    let claims = jwt_part(&t, 1);
    assert_eq!(claims["sub"], "writer");
    assert_eq!(claims["aud"], "cairn");
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])
    );
    let auth = format!("Bearer {t}");
    assert_eq!(push_as(&app, "team/app", "v1", &auth).await, 201);
    let r = bearer(&app, Method::GET, "/v2/team/app/manifests/v1", &t)
        .header("Accept", crate::helpers::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        bearer(&app, Method::GET, "/v2/", &t)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Only what the roles allow: a reader asking for push gets pull.
    let t = token(
        &app,
        Some("reader"),
        &["repository:team/app:pull,push,delete"],
    )
    .await;
    assert_eq!(jwt_part(&t, 1)["access"][0]["actions"], json!(["pull"]));
    // Nothing on a repository outside the grants: the scope is left out.
    let t = token(&app, Some("reader"), &["repository:other/app:pull"]).await;
    assert_eq!(jwt_part(&t, 1)["access"], json!([]));
    // Bad credentials at the token endpoint are 401.
    let r = app
        .client
        .get(format!("{}/auth/token?service=cairn", app.base))
        .header("Authorization", basic("writer", "wrong password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    // Basic credentials work directly on /v2 too.
    let r = as_user(&app, Method::GET, "/v2/team/app/tags/list", "reader")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn refresh_token_form(app: TestApp) {
    cast(&app).await;
    let form = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&")
    };
    let post = |body: String| {
        app.client
            .post(format!("{}/auth/token", app.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let r = post(form(&[
        ("grant_type", "password"),
        ("username", "writer"),
        ("password", PASSWORD),
        ("service", "cairn"),
        ("client_id", "docker"),
        ("access_type", "offline"),
        (
            "scope",
            "repository:team/app:pull,push repository:team/other:pull",
        ),
    ]))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let access = v["access_token"].as_str().unwrap().to_string();
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(jwt_part(&access, 1)["access"].as_array().unwrap().len(), 2);
    assert_eq!(jwt_part(&refresh, 1)["typ"], "refresh");
    assert!(v["expires_in"].as_u64().unwrap() > 0);

    let r = post(form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("service", "cairn"),
        ("scope", "repository:team/app:pull"),
    ]))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let t = v["access_token"].as_str().unwrap();
    assert_eq!(
        jwt_part(t, 1)["access"],
        json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}])
    );
    assert_eq!(
        bearer(&app, Method::GET, "/v2/team/app/tags/list", t)
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "authorised (the repository does not exist yet)"
    );
    // A refresh token is not an access token, and the reverse.
    let r = bearer(&app, Method::GET, "/v2/", &refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = post(form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &access),
    ]))
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = post(form(&[("grant_type", "client_credentials")]))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A wrong service is refused.
    let r = post(form(&[
        ("grant_type", "password"),
        ("username", "writer"),
        ("password", PASSWORD),
        ("service", "elsewhere"),
    ]))
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
}

// ---- roles ---------------------------------------------------------------------

async fn role_matrix(app: TestApp) {
    cast(&app).await;
    let auth = |n: &str| basic(n, PASSWORD);
    // writer pushes; reader cannot.
    assert_eq!(push_as(&app, "team/app", "v1", &auth("writer")).await, 201);
    let r = as_user(&app, Method::POST, "/v2/team/app/blobs/uploads/", "reader")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    // reader pulls.
    let pull = |n: &'static str| {
        as_user(&app, Method::GET, "/v2/team/app/manifests/v1", n)
            .header("Accept", crate::helpers::OCI_MANIFEST)
            .send()
    };
    assert_eq!(pull("reader").await.unwrap().status(), 200);
    assert_eq!(pull("writer").await.unwrap().status(), 200);
    // auditor: no pull, no push; audit and provenance yes.
    let r = pull("auditor").await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    assert_eq!(push_as(&app, "team/app", "v2", &auth("auditor")).await, 403);
    for path in [
        "/api/v1/audit",
        "/api/v1/audit/verify",
        "/api/v1/provenance?repository=team/app",
    ] {
        let r = as_user(&app, Method::GET, path, "auditor")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "auditor GET {path}");
    }
    let r = as_user(
        &app,
        Method::GET,
        "/api/v1/repositories/team/app",
        "auditor",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    // writer: no delete, no promote, no audit.
    let del =
        |n: &'static str| as_user(&app, Method::DELETE, "/v2/team/app/manifests/v1", n).send();
    let r = del("writer").await.unwrap();
    assert_eq!(r.status(), 403);
    let promote = |n: &'static str| {
        as_user(
            &app,
            Method::POST,
            "/api/v1/repositories/team/app/promotions",
            n,
        )
        .json(&json!({"reference": "v1", "environment": "prod"}))
        .send()
    };
    assert_eq!(promote("writer").await.unwrap().status(), 403);
    assert_eq!(
        as_user(&app, Method::GET, "/api/v1/audit", "writer")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // release manager (admin of team/**): promote; but not global GC or accounts.
    assert_eq!(promote("releaser").await.unwrap().status(), 201);
    assert_eq!(
        as_user(&app, Method::POST, "/api/v1/gc?dry_run=true", "releaser")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        as_user(&app, Method::GET, "/api/v1/admin/accounts", "releaser")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // Deleting an immutable tag's manifest is refused by policy, not by roles:
    // push a mutable one in e2e/ to delete (admin of ** only).
    assert_eq!(push_as(&app, "e2e/app", "v1", &auth("admin")).await, 201);
    let r = as_user(&app, Method::DELETE, "/v2/e2e/app/manifests/v1", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = as_user(
        &app,
        Method::DELETE,
        "/v2/team/app/manifests/v1",
        "releaser",
    )
    .send()
    .await
    .unwrap();
    assert_ne!(r.status(), 401);
    assert_eq!(
        error_code(r).await,
        "DENIED",
        "immutable: the policy refuses"
    );
    // Catalog: reader of everything or admin only.
    assert_eq!(
        as_user(&app, Method::GET, "/v2/_catalog", "reader")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        as_user(&app, Method::GET, "/v2/_catalog", "admin")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The audit trail names the accounts.
    let r = as_user(
        &app,
        Method::GET,
        "/api/v1/audit?repository=team/app",
        "admin",
    )
    .send()
    .await
    .unwrap();
    let v: Value = r.json().await.unwrap();
    let entries = v["entries"].as_array().expect("entries");
    let actors: std::collections::BTreeSet<&str> =
        entries.iter().filter_map(|e| e["actor"].as_str()).collect();
    assert!(actors.contains("writer"), "{actors:?}");
    assert!(actors.contains("releaser"), "{actors:?}");
    assert!(entries.iter().all(|e| e["client"] == "127.0.0.1"), "{v}");
}

async fn anonymous_pull_glob(app: TestApp) {
    cast(&app).await;
    user(&app, "pub", &[("public/**", "writer")]).await;
    assert_eq!(
        push_as(&app, "public/base", "v1", &basic("pub", PASSWORD)).await,
        201
    );
    assert_eq!(
        push_as(&app, "team/base", "v1", &basic("writer", PASSWORD)).await,
        201
    );
    let get = |p: &'static str| {
        app.req(Method::GET, p)
            .header("Accept", crate::helpers::OCI_MANIFEST)
            .send()
    };
    assert_eq!(
        get("/v2/public/base/manifests/v1").await.unwrap().status(),
        200
    );
    assert_eq!(
        get("/v2/team/base/manifests/v1").await.unwrap().status(),
        401
    );
    let r = app
        .req(Method::POST, "/v2/public/base/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "anonymous pull is not push");
    // The anonymous token flow docker uses.
    let t = token(
        &app,
        None,
        &[
            "repository:public/base:pull,push",
            "repository:team/base:pull",
        ],
    )
    .await;
    assert_eq!(
        jwt_part(&t, 1)["access"],
        json!([{"type": "repository", "name": "public/base", "actions": ["pull"]}])
    );
    let r = bearer(&app, Method::GET, "/v2/public/base/manifests/v1", &t)
        .header("Accept", crate::helpers::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = bearer(&app, Method::GET, "/v2/team/base/manifests/v1", &t)
        .send()
        .await
        .unwrap();
    assert!(r.status() == 401 || r.status() == 403);
}

// ---- robots and the admin API ----------------------------------------------------

async fn robots_expire_and_record_last_use(app: TestApp) {
    cast(&app).await;
    let admin = |m: Method, p: &str| as_user(&app, m, p, "admin");
    let r = admin(Method::POST, "/api/v1/admin/robots")
        .json(&json!({"name": "ci", "roles": [{"repositories": "ci/**", "role": "writer"}], "expires_in_days": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let secret = v["secret"].as_str().expect("secret shown once").to_string();
    assert!(secret.len() >= 40);
    assert_eq!(v["account"]["kind"], "robot");
    assert!(v["account"]["expires_at"].as_i64().is_some());
    assert!(v["account"]["last_used_at"].is_null());
    // The secret is never shown again.
    let r = admin(Method::GET, "/api/v1/admin/accounts/ci")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains(&secret));
    assert!(!text.contains("argon2"));
    // It logs in, and its last use is recorded.
    assert_eq!(
        push_as(&app, "ci/app", "v1", &basic("ci", &secret)).await,
        201
    );
    let v: Value = admin(Method::GET, "/api/v1/admin/accounts/ci")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["last_used_at"].as_i64().is_some(), "{v}");
    // An expired robot cannot log in (basic or token endpoint).
    let meta = cairn::open_metadata(&app.config).await.unwrap();
    let hash = cairn::auth::password::hash("expired-robot-secret").unwrap();
    assert!(meta
        .create_account(
            "old-ci",
            "robot",
            &hash,
            Some(cairn::metadata::now_ms() - 1000),
            &[("ci/**".into(), "writer".into())],
            &cairn::metadata::Origin::system("test"),
        )
        .await
        .unwrap());
    meta.close().await;
    let r = app
        .req(Method::GET, "/v2/ci/app/tags/list")
        .header("Authorization", basic("old-ci", "expired-robot-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("expired"));
    // Deleting an account ends its access.
    assert_eq!(
        admin(Method::DELETE, "/api/v1/admin/accounts/ci")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        push_as(&app, "ci/app", "v2", &basic("ci", &secret)).await,
        401
    );
    // Users through the admin API; roles granted and revoked.
    let r = admin(Method::POST, "/api/v1/admin/users")
        .json(&json!({"name": "dev", "password": PASSWORD, "roles": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        push_as(&app, "dev/app", "v1", &basic("dev", PASSWORD)).await,
        403
    );
    let r = admin(Method::POST, "/api/v1/admin/accounts/dev/roles")
        .json(&json!({"repositories": "dev/**", "role": "writer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        push_as(&app, "dev/app", "v1", &basic("dev", PASSWORD)).await,
        201
    );
    let r = admin(Method::POST, "/api/v1/admin/users")
        .json(&json!({"name": "dev", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = admin(Method::POST, "/api/v1/admin/users")
        .json(&json!({"name": "x", "password": PASSWORD, "roles": [{"repositories": "**", "role": "owner"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Account changes are audited, by the admin who made them, without secrets.
    let v: Value = admin(Method::GET, "/api/v1/audit?action=account.create")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = v["entries"].as_array().expect("entries");
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "admin" && e["detail"]["account"] == "ci"),
        "{v}"
    );
    assert!(!v.to_string().contains(&secret));
    let v: Value = admin(Method::GET, "/api/v1/audit?action=account.delete")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["entries"][0]["detail"]["account"], "ci", "{v}");
}

// ---- bad tokens ----------------------------------------------------------------

/// Signs `claims` with the registry's own current key (read from its database).
async fn forge(app: &TestApp, claims: Value) -> String {
    let meta = cairn::open_metadata(&app.config).await.unwrap();
    let keys = meta.signing_keys().await.unwrap();
    meta.close().await;
    let k = keys.iter().find(|k| k.retired_at.is_none()).unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&k.private_key)
        .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_ed_der(&der)).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn bad_tokens_are_refused(app: TestApp) {
    cast(&app).await;
    let good = token(&app, Some("writer"), &["repository:team/app:pull,push"]).await;
    let kid = jwt_part(&good, 0)["kid"].as_str().unwrap().to_string();
    let claims = |over: Value| {
        let mut c = json!({
            "iss": "cairn", "sub": "writer", "aud": "cairn",
            "exp": now() + 300, "nbf": now() - 1, "iat": now(), "jti": "x",
            "access": [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}],
        });
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // The forged-but-valid control: our key, right claims → accepted.
    let ok = forge(&app, claims(json!({}))).await;
    let app = &app;
    let probe = |t: String| async move {
        let r = app
            .req(Method::GET, "/v2/team/app/tags/list")
            .header("Authorization", format!("Bearer {t}"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let www = challenge(&r);
        let code = if status == 404 {
            "NAME_UNKNOWN".to_string()
        } else {
            error_code(r).await
        };
        (status, code, www)
    };
    assert_eq!(probe(ok).await.0, 404, "a valid token is accepted");

    let mut cases: Vec<(&str, String)> = vec![
        (
            "expired",
            forge(
                app,
                claims(json!({"exp": now() - 600, "iat": now() - 900, "nbf": now() - 900})),
            )
            .await,
        ),
        (
            "wrong audience",
            forge(app, claims(json!({"aud": "other-registry"}))).await,
        ),
        (
            "wrong issuer",
            forge(app, claims(json!({"iss": "someone-else"}))).await,
        ),
        (
            "refresh token used as access",
            forge(app, claims(json!({"typ": "refresh"}))).await,
        ),
        ("malformed base64", "abc.d$f!.ghi".to_string()),
        ("not a JWT", "hello".to_string()),
    ];
    // alg: none.
    let none_header = b64url(&json!({"alg": "none", "typ": "JWT", "kid": kid}));
    cases.push((
        "alg none",
        format!("{none_header}.{}.", b64url(&claims(json!({})))),
    ));
    // HS256 signed with the public key as the secret (HS/RS-style confusion).
    let meta = cairn::open_metadata(&app.config).await.unwrap();
    let keys = meta.signing_keys().await.unwrap();
    meta.close().await;
    let public = base64::engine::general_purpose::STANDARD
        .decode(&keys[0].public_key)
        .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(kid.clone());
    cases.push((
        "HS256 with the public key",
        jsonwebtoken::encode(
            &h,
            &claims(json!({})),
            &jsonwebtoken::EncodingKey::from_secret(&public),
        )
        .unwrap(),
    ));
    // Signed by another Ed25519 key under the registry's kid.
    let other = cairn::auth::token::generate_key().unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&other.private_key)
        .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(kid.clone());
    cases.push((
        "wrong signature",
        jsonwebtoken::encode(
            &h,
            &claims(json!({})),
            &jsonwebtoken::EncodingKey::from_ed_der(&der),
        )
        .unwrap(),
    ));
    h.kid = Some(other.kid.clone());
    cases.push((
        "unknown key",
        jsonwebtoken::encode(
            &h,
            &claims(json!({})),
            &jsonwebtoken::EncodingKey::from_ed_der(&der),
        )
        .unwrap(),
    ));
    // A tampered payload under a valid signature.
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = claims(json!({"sub": "admin"}));
    cases.push((
        "tampered payload",
        format!("{}.{}.{}", parts[0], b64url(&tampered), parts[2]),
    ));
    for (what, t) in cases {
        let (status, code, www) = probe(t).await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(code, "UNAUTHORIZED", "{what}");
        assert!(www.starts_with("Bearer realm="), "{what}: {www}");
    }
    // Scope for another repository: valid token, no grant here → 403 DENIED
    // with a challenge for the scope needed.
    let other_repo = token(app, Some("writer"), &["repository:team/other:pull"]).await;
    let (status, code, www) = probe(other_repo).await;
    assert_eq!((status, code.as_str()), (403, "DENIED"));
    assert!(www.contains("scope=\"repository:team/app:pull\""), "{www}");
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    // A token for a deleted account.
    let t = forge(app, claims(json!({"sub": "ghost"}))).await;
    assert_eq!(probe(t).await.0, 401);
    // A huge header is refused unread; malformed basic credentials too.
    let huge = "x".repeat(16 * 1024);
    let (status, code, _) = probe(huge).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    for h in ["Basic !!!", "Basic bm9jb2xvbg==", "Digest abc", "Bearer"] {
        let r = app
            .req(Method::GET, "/v2/")
            .header("Authorization", h)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{h}");
    }
}

// ---- throttling ----------------------------------------------------------------

async fn failed_logins_are_throttled(app: TestApp) {
    cast(&app).await;
    let try_login = |name: &'static str, pw: &'static str| {
        app.req(Method::GET, "/v2/")
            .header("Authorization", basic(name, pw))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(try_login("writer", "guess").await.unwrap().status(), 401);
    }
    let r = try_login("writer", "guess").await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    // Even the right password waits now; the token endpoint too.
    let r = app
        .req(Method::GET, "/v2/")
        .header("Authorization", basic("writer", PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let r = app
        .client
        .get(format!("{}/auth/token?service=cairn", app.base))
        .header("Authorization", basic("writer", PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // Another account is not locked (yet)...
    assert_eq!(
        as_user(&app, Method::GET, "/v2/", "reader")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // ...until this address has failed 20 times in all.
    for i in 0..15 {
        let name: &'static str = Box::leak(format!("nobody{i}").into_boxed_str());
        assert_eq!(try_login(name, "guess").await.unwrap().status(), 401);
    }
    assert_eq!(
        try_login("nobody-else", "guess").await.unwrap().status(),
        429
    );
}

fn fast_lockout(c: &mut cairn::Config) {
    secured(c);
}

// ---- open until the first account ------------------------------------------------

async fn open_until_the_first_account(app: TestApp) {
    assert_eq!(app.get("/v2/").await.status(), 200);
    let r = app
        .req(Method::POST, "/api/v1/admin/users")
        .json(&json!({"name": "root", "password": PASSWORD, "roles": [{"repositories": "**", "role": "admin"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(app.get("/v2/").await.status(), 401);
    assert_eq!(app.get("/api/v1/audit").await.status(), 401);
    assert_eq!(
        as_user(&app, Method::GET, "/v2/", "root")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

// ---- every route ----------------------------------------------------------------

async fn every_route_needs_credentials(app: TestApp) {
    cast(&app).await;
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        if template == "/api/v1/openapi.json" {
            continue;
        }
        let url = template
            .replace("{repository}", "team/app")
            .replace("{digest}", &format!("sha256:{}", "0".repeat(64)))
            .replace("{tag}", "v1")
            .replace("{environment}", "prod")
            .replace("{id}", "1")
            .replace("{name}", "admin");
        for method in item.as_object().unwrap().keys() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let r = app.req(m, &url).body("{}").send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {url}");
            checked += 1;
        }
    }
    assert!(checked > 25, "{checked}");
    for (m, p) in [
        (Method::GET, "/v2/"),
        (Method::GET, "/v2/_catalog"),
        (Method::GET, "/v2/team/app/tags/list"),
        (Method::GET, "/v2/team/app/referrers/sha256:0000000000000000000000000000000000000000000000000000000000000000"),
        (Method::HEAD, "/v2/team/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000"),
        (Method::DELETE, "/v2/team/app/manifests/v1"),
        (Method::PATCH, "/v2/team/app/blobs/uploads/x"),
        (Method::GET, "/metrics"),
        (Method::GET, "/nowhere"),
    ] {
        assert_eq!(app.req(m.clone(), p).send().await.unwrap().status(), 401, "{m} {p}");
    }
    // /metrics: an auditor (or admin) of ** may scrape.
    assert_eq!(
        as_user(&app, Method::GET, "/metrics", "auditor")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        as_user(&app, Method::GET, "/metrics", "writer")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
}

fn open_metrics(c: &mut cairn::Config) {
    secured(c);
    c.auth.metrics = MetricsAccess::Open;
}

async fn metrics_can_stay_open(app: TestApp) {
    cast(&app).await;
    assert_eq!(app.get("/metrics").await.status(), 200);
    assert_eq!(app.get("/v2/").await.status(), 401);
}

// ---- keys ----------------------------------------------------------------------

async fn key_rotation_keeps_live_tokens(app: TestApp) {
    cast(&app).await;
    let before = token(&app, Some("reader"), &["repository:team/app:pull"]).await;
    let r = as_user(&app, Method::POST, "/api/v1/admin/keys/rotate", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let kid = r.json::<Value>().await.unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(jwt_part(&before, 0)["kid"], kid);
    // The old token still verifies.
    let r = bearer(&app, Method::GET, "/v2/team/app/tags/list", &before)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "authorised; no such repository");
    // A restarted replica signs with the new key; both verify there.
    let other = app.restart().await;
    let after = token(&other, Some("reader"), &["repository:team/app:pull"]).await;
    assert_eq!(jwt_part(&after, 0)["kid"], kid);
    for t in [&before, &after] {
        let r = bearer(&other, Method::GET, "/v2/team/app/tags/list", t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
}

/// `auth.signing_key_file`: an Ed25519 key made by openssl signs the tokens.
#[tokio::test]
async fn a_configured_signing_key_signs() {
    let keydir = tempfile::tempdir().unwrap();
    let pem = keydir.path().join("key.pem");
    crate::e2e::run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            crate::e2e::path_str(&pem),
        ],
    )
    .await;
    let expected = cairn::auth::token::read_key_file(&pem).expect("key").kid;
    let key = pem.clone();
    let app = TestApp::spawn_with(Db::Sqlite, move |c| {
        secured(c);
        c.auth.signing_key_file = Some(key);
    })
    .await;
    cast(&app).await;
    let t = token(&app, Some("reader"), &["repository:team/app:pull"]).await;
    assert_eq!(jwt_part(&t, 0)["kid"], expected.as_str());
    let r = bearer(&app, Method::GET, "/v2/team/app/tags/list", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "accepted; no such repository");
}

/// The web console signs in with the same accounts (the browser's Basic
/// prompt) and shows each account only what its roles let it read.
async fn the_console_shows_what_the_account_may_read(app: TestApp) {
    cast(&app).await;
    for (repo, who) in [("team/app", "writer"), ("other/secret", "admin")] {
        assert_eq!(
            push_as(&app, repo, "v1", &basic(who, PASSWORD)).await,
            StatusCode::CREATED
        );
    }
    // Anonymous: a Basic challenge, so a browser asks for credentials.
    let r = app.get("/ui/").await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic "),
        "{:?}",
        r.headers()
    );
    // A reader of team/** sees team/app, not other/secret (404, not 403).
    let page = as_user(&app, Method::GET, "/ui/", "reader")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("team/app") && !html.contains("other/secret"),
        "{html}"
    );
    let r = as_user(&app, Method::GET, "/ui/r/other/secret", "reader")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = as_user(&app, Method::GET, "/ui/audit", "reader")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the audit log is for auditors");
    // The auditor reads everything (read-only) and the audit log.
    let html = as_user(&app, Method::GET, "/ui/", "auditor")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("team/app") && html.contains("other/secret"));
    let r = as_user(&app, Method::GET, "/ui/audit", "auditor")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = as_user(&app, Method::GET, "/ui/audit/verify", "auditor")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // ...and cannot delete, in the console (which has no delete action) or the API.
    let r = as_user(&app, Method::DELETE, "/v2/team/app/manifests/v1", "auditor")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A wrong password is refused with the same prompt.
    let r = app
        .req(Method::GET, "/ui/")
        .header("Authorization", basic("reader", "wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic "));
}

crate::both!(with secured:
    the_console_shows_what_the_account_may_read,
    unauthenticated_requests_get_the_bearer_challenge,
    token_flow_with_basic_credentials,
    refresh_token_form,
    role_matrix,
    anonymous_pull_glob,
    robots_expire_and_record_last_use,
    bad_tokens_are_refused,
    every_route_needs_credentials,
    key_rotation_keeps_live_tokens,
);
crate::both!(with fast_lockout: failed_logins_are_throttled);
crate::both!(with open_metrics: metrics_can_stay_open);
crate::both!(open_until_the_first_account);

// ---- the binary: refusing to start open, secrets kept out of logs ----------------

/// Runs `cairn ARGS` in `dir` with `stdin` as standard input; returns (ok, stdout, stderr).
fn cairn(dir: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .current_dir(dir)
        .env("CAIRN_LOG__FORMAT", "json")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cairn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("cairn output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `cairn serve` child logging (JSON, debug) into a file; killed on drop.
struct Served {
    child: std::process::Child,
    log: std::path::PathBuf,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cairn serve EXTRA…` listening on `listen`; `Err(log)` if it exits
/// before listening.
fn serve(dir: &std::path::Path, listen: &str, extra: &[&str]) -> Result<Served, String> {
    let log = dir.join(format!("serve-{}.log", uuid::Uuid::new_v4().simple()));
    let file = std::fs::File::create(&log).expect("log file");
    let err = file.try_clone().expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("serve")
        .args(extra)
        .current_dir(dir)
        .env("CAIRN_LISTEN", listen)
        .env("CAIRN_LOG__FORMAT", "json")
        .env("CAIRN_LOG", "debug")
        .stdout(file)
        .stderr(err)
        .spawn()
        .expect("start cairn");
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_default();
            if let Some(a) = v["fields"]["address"].as_str() {
                let port = a.rsplit(':').next().expect("port");
                return Ok(Served {
                    child,
                    log,
                    base: format!("http://127.0.0.1:{port}"),
                });
            }
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(text);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "cairn did not start: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn refuses_to_start_open_on_a_non_loopback_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No account, 0.0.0.0: refused with a message saying what to do.
    let log = serve(dir.path(), "0.0.0.0:0", &[]).err().expect("refused");
    assert!(
        log.contains("refusing to serve on 0.0.0.0:") && log.contains("with no accounts"),
        "{log}"
    );
    assert!(log.contains("--insecure-open"), "{log}");
    // With --insecure-open it serves, open.
    let s = serve(dir.path(), "0.0.0.0:0", &["--insecure-open"]).expect("serves");
    assert_eq!(
        reqwest::get(format!("{}/v2/", s.base))
            .await
            .unwrap()
            .status(),
        200
    );
    drop(s);
    // With an account it serves, closed.
    let (ok, _, err) = cairn(
        dir.path(),
        &["user", "add", "root", "--role", "**=admin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{err}");
    let s = serve(dir.path(), "0.0.0.0:0", &[]).expect("serves");
    assert_eq!(
        reqwest::get(format!("{}/v2/", s.base))
            .await
            .unwrap()
            .status(),
        401
    );
    // The library refuses too (App::build).
    let mut c = cairn::Config {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..cairn::Config::default()
    };
    let other = tempfile::tempdir().unwrap();
    c.database.url = format!("sqlite://{}", other.path().join("c.db").display());
    c.storage.url = url::Url::from_directory_path(other.path())
        .unwrap()
        .to_string();
    assert!(cairn::App::build(&c).await.is_err());
    c.auth.insecure_open = true;
    assert!(cairn::App::build(&c).await.is_ok());
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, _, err) = cairn(
        dir.path(),
        &["user", "add", "alice", "--role", "team/**=writer"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{err}");
    let (ok, robot_secret, err) = cairn(
        dir.path(),
        &[
            "robot",
            "add",
            "ci",
            "--role",
            "team/**=writer",
            "--expires-in-days",
            "7",
        ],
        "",
    );
    assert!(ok, "{err}");
    let robot_secret = robot_secret.trim().to_string();
    assert!(robot_secret.len() >= 40, "{robot_secret}");
    let (ok, list, _) = cairn(dir.path(), &["robot", "list"], "");
    assert!(
        ok && list.contains("\"ci\"") && !list.contains(&robot_secret),
        "{list}"
    );

    let s = serve(dir.path(), "127.0.0.1:0", &[]).expect("serves");
    let client = reqwest::Client::new();
    let wrong = "hunter2-wrong-guess";
    let mut tokens = Vec::new();
    for (name, secret) in [
        ("alice", PASSWORD),
        ("ci", robot_secret.as_str()),
        ("alice", wrong),
    ] {
        let r = client
            .get(format!("{}/v2/team/app/tags/list", s.base))
            .header("Authorization", basic(name, secret))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 500);
        let r = client
            .get(format!(
                "{}/auth/token?service=cairn&scope=repository:team/app:pull,push&offline_token=true",
                s.base
            ))
            .header("Authorization", basic(name, secret))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let v: Value = r.json().await.unwrap();
            tokens.push(v["token"].as_str().unwrap().to_string());
            tokens.push(v["refresh_token"].as_str().unwrap().to_string());
        }
        let r = client
            .post(format!("{}/auth/token", s.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=password&username={name}&password={}&service=cairn",
                urlencode(secret)
            ))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 500);
    }
    assert_eq!(tokens.len(), 4);
    for t in tokens.clone() {
        let r = client
            .get(format!("{}/v2/team/app/tags/list", s.base))
            .header("Authorization", format!("Bearer {t}"))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 500);
    }
    // Let the log reach the file.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(
        log.contains("failed login"),
        "failures are logged (without the secret)"
    );
    assert!(log.lines().count() > 10, "{log}");
    let b64 =
        |n: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{n}:{p}"));
    let mut secrets = vec![
        PASSWORD.to_string(),
        urlencode(PASSWORD),
        robot_secret.clone(),
        wrong.to_string(),
        b64("alice", PASSWORD),
        b64("ci", &robot_secret),
        "$argon2".to_string(),
    ];
    for t in &tokens {
        secrets.push(t.clone());
        secrets.push(t.split('.').nth(2).unwrap().to_string());
    }
    for secret in secrets {
        assert!(
            !log.contains(&secret),
            "the log contains a secret: {secret}"
        );
    }
}

// ---- real clients ----------------------------------------------------------------

use crate::e2e::{path_str, run, run_failing, tar, write_oci_layout, DockerImages};

/// docker: `docker login` (docker keeps the refresh token it is given and
/// uses the OAuth2 refresh-token form afterwards), push, pull; without login,
/// and as a reader, the push is refused.
async fn docker_login_push_pull(app: TestApp) {
    cast(&app).await;
    let host = app.host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("docker-config");
    let cfg = path_str(&cfg).to_string();
    let image = format!("{host}/team/docker:v1");
    let _cleanup = DockerImages(vec![image.clone()]);
    let archive = tmp.path().join("rootfs.tar");
    std::fs::write(
        &archive,
        tar(&[("hello.txt", format!("docker auth e2e {host}\n").as_bytes())]),
    )
    .expect("tar");
    run("docker", &["import", path_str(&archive), &image]).await;
    // Not logged in: refused.
    let err = run_failing("docker", &["--config", &cfg, "push", &image]).await;
    assert!(
        err.contains("unauthorized")
            || err.contains("authentication required")
            || err.contains("no basic auth"),
        "{err}"
    );
    let out = run(
        "docker",
        &[
            "--config", &cfg, "login", "-u", "writer", "-p", PASSWORD, &host,
        ],
    )
    .await;
    assert!(out.contains("Login Succeeded"), "{out}");
    let stored = std::fs::read_to_string(tmp.path().join("docker-config/config.json")).unwrap();
    assert!(stored.contains(&host), "{stored}");
    // docker keeps the refresh token (its identity token), not the password,
    // and trades it for access tokens with the OAuth2 refresh-token form.
    assert!(stored.contains("identitytoken"), "{stored}");
    assert!(!stored.contains(PASSWORD), "{stored}");
    let out = run("docker", &["--config", &cfg, "push", &image]).await;
    assert!(out.contains("digest: sha256:"), "{out}");
    run("docker", &["image", "rm", &image]).await;
    run("docker", &["--config", &cfg, "pull", &image]).await;
    run("docker", &["--config", &cfg, "logout", &host]).await;
    // A wrong password fails the login.
    let err = run_failing(
        "docker",
        &[
            "--config",
            &cfg,
            "login",
            "-u",
            "writer",
            "-p",
            "wrong password",
            &host,
        ],
    )
    .await;
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("401"),
        "{err}"
    );
    // A reader logs in and pulls, but cannot push.
    run(
        "docker",
        &[
            "--config", &cfg, "login", "-u", "reader", "-p", PASSWORD, &host,
        ],
    )
    .await;
    run("docker", &["image", "rm", &image]).await;
    run("docker", &["--config", &cfg, "pull", &image]).await;
    let other = format!("{host}/team/docker:v2");
    let _cleanup2 = DockerImages(vec![other.clone()]);
    run("docker", &["tag", &image, &other]).await;
    let err = run_failing("docker", &["--config", &cfg, "push", &other]).await;
    assert!(
        err.contains("denied")
            || err.contains("unauthorized")
            || err.contains("insufficient_scope"),
        "{err}"
    );
    // What the audit trail recorded: the account, not the address.
    let v: Value = as_user(
        &app,
        Method::GET,
        "/api/v1/audit?repository=team/docker",
        "admin",
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "writer" && e["action"] == "manifest.push"),
        "{v}"
    );
}

/// skopeo with `--dest-creds`/`--src-creds`, and `skopeo login`; podman login
/// and push.
async fn skopeo_and_podman_with_credentials(app: TestApp) {
    cast(&app).await;
    let host = app.host();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let (digest, _) = write_oci_layout(&src, "v1", b"skopeo with credentials\n");
    let image = format!("docker://{host}/team/skopeo:v1");
    let creds = format!("writer:{PASSWORD}");
    let layout = format!("oci:{}:v1", path_str(&src));
    // Without credentials: refused.
    run_failing(
        "skopeo",
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &layout,
            &image,
        ],
    )
    .await;
    run(
        "skopeo",
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &layout,
            &image,
        ],
    )
    .await;
    let out = run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            &format!("reader:{PASSWORD}"),
            &image,
        ],
    )
    .await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Digest"], digest);
    // The auditor may not pull.
    run_failing(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            &format!("auditor:{PASSWORD}"),
            &image,
        ],
    )
    .await;
    // skopeo login into an auth file, then use it.
    let authfile = tmp.path().join("auth.json");
    let authfile = path_str(&authfile).to_string();
    run(
        "skopeo",
        &[
            "login",
            "--tls-verify=false",
            "--authfile",
            &authfile,
            "-u",
            "reader",
            "-p",
            PASSWORD,
            &host,
        ],
    )
    .await;
    let back = tmp.path().join("back");
    run(
        "skopeo",
        &[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--authfile",
            &authfile,
            &image,
            &format!("oci:{}:v1", path_str(&back)),
        ],
    )
    .await;

    // podman login + push + pull.
    let store = tmp.path().join("storage");
    let flags = [
        "--root".to_string(),
        path_str(&store.join("root")).to_string(),
        "--runroot".to_string(),
        path_str(&store.join("runroot")).to_string(),
        "--storage-driver".to_string(),
        "vfs".to_string(),
        "--events-backend".to_string(),
        "none".to_string(),
        "--cgroup-manager".to_string(),
        "cgroupfs".to_string(),
    ];
    let _cleanup = crate::e2e::Storage(store.clone(), "podman", flags.to_vec());
    let podman = |args: &[&str]| {
        let mut all: Vec<String> = flags.to_vec();
        all.extend(args.iter().map(|s| s.to_string()));
        all
    };
    let archive = tmp.path().join("rootfs.tar");
    std::fs::write(
        &archive,
        tar(&[("hello.txt", b"podman with credentials\n")]),
    )
    .unwrap();
    let pimage = format!("{host}/team/podman:v1");
    let a = podman(&["import", path_str(&archive), &pimage]);
    run("podman", &a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let pauth = tmp.path().join("podman-auth.json");
    let pauth = path_str(&pauth).to_string();
    let a = podman(&[
        "login",
        "--tls-verify=false",
        "--authfile",
        &pauth,
        "-u",
        "writer",
        "-p",
        PASSWORD,
        &host,
    ]);
    let out = run("podman", &a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(out.contains("Login Succeeded"), "{out}");
    let a = podman(&["push", "--tls-verify=false", "--authfile", &pauth, &pimage]);
    run("podman", &a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let a = podman(&["rmi", "-f", &pimage]);
    run("podman", &a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let a = podman(&["pull", "--tls-verify=false", "--authfile", &pauth, &pimage]);
    run("podman", &a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let r = as_user(&app, Method::GET, "/v2/team/podman/tags/list", "reader")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["v1"]));
}

/// oras-py with basic credentials following the Bearer challenges
/// (tests/e2e/oras_client.py: push, chunked push, referrers, pull, delete).
async fn oras_with_credentials(app: TestApp) {
    cast(&app).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/oras_client.py");
    let out = run(
        "python3",
        &[
            path_str(&script),
            "--registry",
            &app.host(),
            "--repo",
            "e2e/oras",
            "--workdir",
            path_str(tmp.path()),
            "--username",
            "admin",
            "--password",
            PASSWORD,
        ],
    )
    .await;
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let artifact = summary["artifact"].as_str().unwrap();
    let r = as_user(
        &app,
        Method::HEAD,
        &format!("/v2/e2e/oras/manifests/{artifact}"),
        "admin",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // Without credentials oras-py gets nothing.
    let err = run_failing(
        "python3",
        &[
            path_str(&script),
            "--registry",
            &app.host(),
            "--repo",
            "e2e/oras2",
            "--workdir",
            path_str(tmp.path()),
        ],
    )
    .await;
    assert!(!err.is_empty());
}

crate::both!(with secured:
    docker_login_push_pull,
    skopeo_and_podman_with_credentials,
    oras_with_credentials,
);
