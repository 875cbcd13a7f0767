//! Authentication: who is asking. Checks basic credentials (argon2, with
//! throttled failures) and bearer tokens, issues tokens for the scopes an
//! account's roles allow, and knows whether the registry is still open (no
//! account yet, on loopback). Whether a principal may do something is
//! `policy::access`'s decision; mapping routes to actions is the API's.
//!
//! Secrets never leave this module except as argon2 hashes; no error or log
//! line here includes one.

pub mod limit;
pub mod password;
pub mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::config::AuthConfig;
use crate::metadata::{self, Account, Metadata};
use crate::policy::access::{self, Action, Decision, Grant, Role, Subject, Target};
use limit::Limiter;
pub use token::{Access, Claims, TokenError, Tokens};

/// How long a verified basic credential skips argon2 (clients like oras send
/// basic credentials on every request; each check costs tens of milliseconds).
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// While no account exists, how often the database is asked whether one does now.
const OPEN_RECHECK: Duration = Duration::from_secs(1);

/// Who a request comes from.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Access control is off (no account, loopback): everything is allowed.
    Open,
    /// No credentials (`true`: with an anonymous token from the token endpoint).
    Anonymous(bool),
    Account(AccountPrincipal),
}

/// An authenticated account.
#[derive(Debug, Clone)]
pub struct AccountPrincipal {
    pub name: String,
    pub grants: Vec<Grant>,
    /// With a bearer token: the scopes it grants, which bound what it may do
    /// on `/v2` (the roles still decide on the JSON API).
    pub token: Option<Vec<Access>>,
}

impl Principal {
    /// The account name the audit trail records, if any.
    pub fn account(&self) -> Option<&str> {
        match self {
            Principal::Account(a) => Some(&a.name),
            _ => None,
        }
    }
}

/// What an authorization check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// 401 with a challenge: no credentials, or a token without the scope
    /// (the client may fetch one that has it).
    Challenge(String),
    /// 403: authenticated, and the roles do not allow it.
    Deny(String),
    /// 403 with a challenge naming the scope: a valid token that does not
    /// grant this (clients such as oras-py fetch a new token on a 403).
    InsufficientScope(String),
}

/// Why authentication failed. Messages never include a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("too many failed logins; retry later")]
    TooManyAttempts(Duration),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Metadata(#[from] metadata::Error),
    #[error(transparent)]
    Key(#[from] token::KeyError),
    #[error("{0}")]
    Invalid(String),
}

/// The access-control state of one `App`.
pub struct Auth {
    meta: Metadata,
    pub config: AuthConfig,
    pub tokens: Tokens,
    pub anonymous: Vec<Grant>,
    limiter: Limiter,
    /// sha256(name, secret) → when the check expires.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    /// Whether the registry may be open at all (loopback or `insecure_open`).
    may_be_open: bool,
    /// Sticky: once an account has existed, this process never opens again.
    closed: AtomicBool,
    checked: Mutex<Option<Instant>>,
}

fn now_ms() -> i64 {
    metadata::now_ms()
}

impl Auth {
    /// Loads (or creates) the signing keys. Refuses to serve on a non-loopback
    /// address while no account exists unless `insecure_open`.
    pub async fn new(
        meta: Metadata,
        config: &AuthConfig,
        listen: SocketAddr,
    ) -> anyhow::Result<Auth> {
        let anonymous = config
            .anonymous_pull
            .iter()
            .map(|p| Grant::new(p, Role::Reader))
            .collect::<Result<Vec<_>, _>>()?;
        let loopback = listen.ip().is_loopback();
        let has_accounts = meta.has_accounts().await?;
        if !loopback && !has_accounts && !config.insecure_open {
            anyhow::bail!(
                "refusing to serve on {listen} with no accounts: anyone who can reach it \
                 could push, delete and read everything. Create an account first \
                 (`cairn user add NAME --role '**=admin'`), listen on a loopback address, \
                 or pass --insecure-open (auth.insecure_open = true) to serve open on purpose"
            );
        }
        let tokens = Tokens::load(
            meta.clone(),
            &config.service,
            Duration::from_secs(config.token_ttl_secs.max(1)),
            Duration::from_secs(config.refresh_token_ttl_secs.max(1)),
            config.signing_key_file.as_deref(),
        )
        .await?;
        let window = Duration::from_secs(config.lockout_secs.max(1));
        Ok(Auth {
            limiter: Limiter::new(
                window,
                config.max_failed_logins_per_account,
                config.max_failed_logins_per_client,
            ),
            meta,
            config: config.clone(),
            tokens,
            anonymous,
            verified: Mutex::new(HashMap::new()),
            may_be_open: loopback || config.insecure_open,
            closed: AtomicBool::new(config.required || has_accounts),
            checked: Mutex::new(Some(Instant::now())),
        })
    }

    /// Whether every route is open (no account exists, `auth.required` is off,
    /// and the address is loopback or `insecure_open`).
    pub async fn is_open(&self) -> bool {
        if !self.may_be_open || self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let due = self
            .checked
            .lock()
            .map(|c| c.is_none_or(|t| t.elapsed() >= OPEN_RECHECK))
            .unwrap_or(true);
        if due {
            match self.meta.has_accounts().await {
                Ok(true) => self.closed.store(true, Ordering::Relaxed),
                Ok(false) => {}
                // Fail closed: a database that cannot answer cannot open the registry.
                Err(_) => return false,
            }
            if let Ok(mut c) = self.checked.lock() {
                *c = Some(Instant::now());
            }
        }
        !self.closed.load(Ordering::Relaxed)
    }

    /// Called when an account is created through this process.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    fn principal_of(
        &self,
        account: Account,
        token: Option<Vec<Access>>,
    ) -> Result<AccountPrincipal, AuthError> {
        if account.expires_at.is_some_and(|e| e <= now_ms()) {
            return Err(AuthError::Unauthorized(format!(
                "account {} has expired",
                account.name
            )));
        }
        let grants = account
            .roles
            .iter()
            .filter_map(|(repos, role)| {
                let role: Role = role.parse().ok()?;
                Grant::new(repos, role).ok()
            })
            .collect();
        Ok(AccountPrincipal {
            name: account.name,
            grants,
            token,
        })
    }

    /// Checks basic credentials. Failures count towards the lockout of the
    /// account and of the client address.
    pub async fn basic(
        &self,
        name: &str,
        secret: &str,
        client: Option<&str>,
    ) -> Result<AccountPrincipal, AuthError> {
        if let Err(wait) = self.limiter.check(Some(name), client) {
            return Err(AuthError::TooManyAttempts(wait));
        }
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(name.as_bytes());
            h.update([0]);
            h.update(secret.as_bytes());
            h.finalize().into()
        };
        let cached = self
            .verified
            .lock()
            .map(|m| m.get(&key).is_some_and(|t| *t > Instant::now()))
            .unwrap_or(false);
        let creds = self.meta.credentials(name).await?;
        if !cached {
            let stored = creds.as_ref().map(|c| c.secret_hash.clone());
            let secret = secret.to_string();
            let ok =
                tokio::task::spawn_blocking(move || password::verify(&secret, stored.as_deref()))
                    .await
                    .unwrap_or(false);
            if !ok {
                self.limiter.failed(Some(name), client);
                tracing::info!(account = name, client, "failed login");
                return Err(AuthError::Unauthorized(
                    "invalid username or password".into(),
                ));
            }
        }
        let Some(creds) = creds else {
            return Err(AuthError::Unauthorized(
                "invalid username or password".into(),
            ));
        };
        let p = self.principal_of(creds.account, None)?;
        self.limiter.succeeded(name);
        if !cached {
            if let Ok(mut m) = self.verified.lock() {
                let now = Instant::now();
                m.retain(|_, t| *t > now);
                m.insert(key, now + VERIFIED_TTL);
            }
            self.meta.touch_account(name).await?;
        }
        Ok(p)
    }

    /// Checks a bearer access token; the account must still exist and not be expired.
    pub async fn bearer(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self.tokens.verify(token, false).await?;
        if claims.sub.is_empty() {
            return Ok(Principal::Anonymous(true));
        }
        self.account_for_token(claims, true)
            .await
            .map(Principal::Account)
    }

    async fn account_for_token(
        &self,
        claims: Claims,
        with_access: bool,
    ) -> Result<AccountPrincipal, AuthError> {
        let account = self.meta.account(&claims.sub).await?.ok_or_else(|| {
            AuthError::Unauthorized("the token's account no longer exists".into())
        })?;
        self.principal_of(account, with_access.then_some(claims.access))
    }

    /// The account a refresh token (docker's identity token) names.
    pub async fn refresh(&self, token: &str) -> Result<AccountPrincipal, AuthError> {
        let claims = self.tokens.verify(token, true).await?;
        let p = self.account_for_token(claims, false).await?;
        self.meta.touch_account(&p.name).await?;
        Ok(p)
    }

    /// Whether `p` may do `action` on `target`.
    pub fn authorize(&self, p: &Principal, action: Action, target: Target<'_>) -> Verdict {
        let decide =
            |s: Subject<'_>| -> Decision { access::decide(s, action, target, &self.anonymous) };
        match p {
            Principal::Open => Verdict::Allow,
            Principal::Anonymous(_) => {
                let d = decide(Subject::Anonymous);
                if d.allowed {
                    Verdict::Allow
                } else {
                    Verdict::Challenge(d.reason)
                }
            }
            Principal::Account(a) => {
                if let (Some(access), Some(scope)) = (&a.token, token_scope(action, target)) {
                    let (kind, name, want) = scope;
                    let granted = access.iter().any(|x| {
                        x.kind == kind
                            && x.name == name
                            && x.actions.iter().any(|y| y == want || y == "*")
                    });
                    // Anonymous pull needs no scope in the token.
                    if granted || (action == Action::Pull && decide(Subject::Anonymous).allowed) {
                        return Verdict::Allow;
                    }
                    return Verdict::InsufficientScope(format!(
                        "the token does not grant {want} on {kind} {name}"
                    ));
                }
                let d = decide(Subject::Account(&a.name, &a.grants));
                if d.allowed {
                    Verdict::Allow
                } else {
                    Verdict::Deny(d.reason)
                }
            }
        }
    }

    /// The scopes to put in a token for `p`: of those `requested`
    /// (`repository:<name>:<actions>`, `registry:catalog:*`), the actions the
    /// roles (and anonymous pull) allow. Unknown scopes are left out.
    pub fn grant(&self, p: Option<&AccountPrincipal>, requested: &[String]) -> Vec<Access> {
        let subject = match p {
            Some(a) => Subject::Account(&a.name, &a.grants),
            None => Subject::Anonymous,
        };
        grant_scopes(subject, &self.anonymous, requested)
    }

    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }
}

/// Of the `requested` scopes (`repository:<name>:<actions>`, `registry:catalog:*`;
/// several may share one string, space-separated as in the OAuth2 form), the
/// actions `subject` may do. Scopes of unknown types, unknown actions, invalid
/// names and scopes nothing is granted on are left out.
pub fn grant_scopes(
    subject: Subject<'_>,
    anonymous: &[Grant],
    requested: &[String],
) -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    for scope in requested.iter().flat_map(|s| s.split(' ')) {
        let Some((kind, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        let mut granted = Vec::new();
        for a in actions.split(',') {
            let wanted: Vec<&str> = if a == "*" {
                vec!["pull", "push", "delete"]
            } else {
                vec![a]
            };
            for w in wanted {
                let ok = match (kind, w) {
                    ("registry", _) if name == "catalog" => {
                        access::decide(subject, Action::Catalog, Target::Global, anonymous).allowed
                    }
                    ("repository", w) => match Action::from_scope_name(w) {
                        Some(action) if name.parse::<crate::domain::RepoName>().is_ok() => {
                            access::decide(subject, action, Target::Repository(name), anonymous)
                                .allowed
                        }
                        _ => false,
                    },
                    _ => false,
                };
                let w = if kind == "registry" { "*" } else { w };
                if ok && !granted.iter().any(|g| g == w) {
                    granted.push(w.to_string());
                }
            }
        }
        if granted.is_empty() {
            continue;
        }
        match out.iter_mut().find(|x| x.kind == kind && x.name == name) {
            Some(x) => {
                for g in granted {
                    if !x.actions.contains(&g) {
                        x.actions.push(g);
                    }
                }
            }
            None => out.push(Access {
                kind: kind.to_string(),
                name: name.to_string(),
                actions: granted,
            }),
        }
    }
    out
}

/// The token scope an action on a target needs, if tokens carry it.
fn token_scope(action: Action, target: Target<'_>) -> Option<(&'static str, &str, &'static str)> {
    match (action, target) {
        (Action::Catalog, Target::Global) => Some(("registry", "catalog", "*")),
        (a, Target::Repository(r)) => a.scope_name().map(|s| ("repository", r, s)),
        _ => None,
    }
}

/// Parses `role` grants written `<glob>=<role>` (CLI) into `(glob, role)`,
/// checking both.
pub fn parse_role(text: &str) -> Result<(String, String), AuthError> {
    let (glob, role) = text.rsplit_once('=').ok_or_else(|| {
        AuthError::Invalid(format!(
            "role {text:?} must be written <repository glob>=<role>, e.g. 'team/**=writer'"
        ))
    })?;
    check_role(glob, role)
}

/// Checks a `(glob, role)` pair.
pub fn check_role(glob: &str, role: &str) -> Result<(String, String), AuthError> {
    let r: Role = role
        .parse()
        .map_err(|e: access::AccessError| AuthError::Invalid(e.to_string()))?;
    Grant::new(glob, r).map_err(|e| AuthError::Invalid(e.to_string()))?;
    Ok((glob.to_string(), r.as_str().to_string()))
}

/// What account names may be: they appear in tokens, audit entries and URLs.
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@$".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "account name {name:?} must be 1-64 characters of letters, digits and . _ - @ $"
        )))
    }
}

/// Creates a user with a password; `Ok(false)` if the name is taken.
pub async fn create_user(
    meta: &Metadata,
    name: &str,
    password: &str,
    roles: &[(String, String)],
    origin: &metadata::Origin,
) -> Result<bool, AuthError> {
    check_name(name)?;
    if password.chars().count() < password::MIN_PASSWORD_LEN {
        return Err(AuthError::Invalid(format!(
            "passwords have at least {} characters",
            password::MIN_PASSWORD_LEN
        )));
    }
    let pw = password.to_string();
    let hash = tokio::task::spawn_blocking(move || password::hash(&pw))
        .await
        .map_err(|e| AuthError::Invalid(e.to_string()))?
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    Ok(meta
        .create_account(name, "user", &hash, None, roles, origin)
        .await?)
}

/// Creates a robot with a generated secret, returned once; `Ok(None)` if the
/// name is taken.
pub async fn create_robot(
    meta: &Metadata,
    name: &str,
    expires_at: Option<i64>,
    roles: &[(String, String)],
    origin: &metadata::Origin,
) -> Result<Option<String>, AuthError> {
    check_name(name)?;
    let secret = password::generate_secret();
    let s = secret.clone();
    let hash = tokio::task::spawn_blocking(move || password::hash(&s))
        .await
        .map_err(|e| AuthError::Invalid(e.to_string()))?
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    let created = meta
        .create_account(name, "robot", &hash, expires_at, roles, origin)
        .await?;
    Ok(created.then_some(secret))
}

/// Shared handle.
pub type SharedAuth = Arc<Auth>;

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(subject: Subject<'_>, anonymous: &[Grant], requested: &[&str]) -> Vec<Access> {
        let r: Vec<String> = requested.iter().map(|s| s.to_string()).collect();
        grant_scopes(subject, anonymous, &r)
    }

    fn access(kind: &str, name: &str, actions: &[&str]) -> Access {
        Access {
            kind: kind.into(),
            name: name.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn tokens_carry_only_what_roles_allow() {
        let grants = [
            Grant::new("team/**", Role::Writer).unwrap(),
            Grant::new("**", Role::Reader).unwrap(),
        ];
        let me = Subject::Account("me", &grants);
        assert_eq!(
            scopes(me, &[], &["repository:team/app:pull,push,delete"]),
            [access("repository", "team/app", &["pull", "push"])]
        );
        assert_eq!(
            scopes(me, &[], &["repository:other/app:*"]),
            [access("repository", "other/app", &["pull"])]
        );
        assert_eq!(
            scopes(me, &[], &["registry:catalog:*"]),
            [access("registry", "catalog", &["*"])]
        );
        // Space-separated (OAuth2 form) and repeated scopes merge.
        assert_eq!(
            scopes(
                me,
                &[],
                &[
                    "repository:team/app:pull repository:team/app:push",
                    "repository:team/app:pull"
                ]
            ),
            [access("repository", "team/app", &["pull", "push"])]
        );
    }

    #[test]
    fn malformed_and_unknown_scopes_are_left_out() {
        let grants = [Grant::new("**", Role::Admin).unwrap()];
        let me = Subject::Account("me", &grants);
        for bad in [
            "",
            "repository",
            "repository:team/app",
            "repository::pull",
            "repository:Team App:pull",
            "repository:team/app:fly",
            "plugin:x:pull",
            "registry:other:*",
        ] {
            assert_eq!(scopes(me, &[], &[bad]), [], "{bad:?}");
        }
    }

    #[test]
    fn anonymous_tokens_get_anonymous_pull_only() {
        let anon = [Grant::new("public/**", Role::Reader).unwrap()];
        assert_eq!(
            scopes(
                Subject::Anonymous,
                &anon,
                &["repository:public/x:pull,push", "repository:private/x:pull"]
            ),
            [access("repository", "public/x", &["pull"])]
        );
    }

    #[test]
    fn account_names_and_roles_are_checked() {
        assert!(check_name("ci-bot.1@team").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
        assert_eq!(
            parse_role("team/**=writer").unwrap(),
            ("team/**".to_string(), "writer".to_string())
        );
        assert!(parse_role("team/**").is_err());
        assert!(parse_role("team/**=owner").is_err());
    }
}
