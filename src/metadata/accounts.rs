//! Accounts, their roles, and token signing keys: SQL only. Secrets arrive
//! here already hashed (argon2 PHC strings) and signing keys already encoded;
//! this layer never sees a password. Every change is audited in its own
//! transaction (`account.create`, `account.delete`, `account.grant`,
//! `account.revoke`, `account.secret`, `signing_key.rotate`); the audit
//! detail never holds a hash or a key.

use super::BeginWrite as _;
use serde::Serialize;

use super::audit::{self, AuditEntry, Origin};
use super::{now_ms, Backend, Metadata, Result};

/// One account as stored (without its secret hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: i64,
    pub name: String,
    /// `user` or `robot`.
    pub kind: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// `(repository glob, role)` pairs.
    pub roles: Vec<(String, String)>,
}

/// An account with the hash its secret is checked against.
#[derive(Debug, Clone)]
pub struct StoredCredentials {
    pub account: Account,
    pub secret_hash: String,
}

/// One stored signing key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredKey {
    pub kid: String,
    pub algorithm: String,
    /// Base64 PKCS#8 document.
    pub private_key: String,
    /// Base64 raw public key.
    pub public_key: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

type AccountRow = (i64, String, String, i64, Option<i64>, Option<i64>, String);

const ACCOUNT_COLUMNS: &str = "id, name, kind, created_at, expires_at, last_used_at, secret_hash";

impl Metadata {
    /// Whether any account exists (an open registry closes once one does).
    pub async fn has_accounts(&self) -> Result<bool> {
        let n = on_read!(self, "has_accounts", |p| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM (SELECT 1 FROM accounts LIMIT 1) AS a"
        )
        .fetch_one(p)
        .await)?;
        Ok(n > 0)
    }

    /// Creates an account with its roles; `false` if the name is taken.
    pub async fn create_account(
        &self,
        name: &str,
        kind: &str,
        secret_hash: &str,
        expires_at: Option<i64>,
        roles: &[(String, String)],
        origin: &Origin,
    ) -> Result<bool> {
        let now = now_ms();
        let entry = AuditEntry::global("account.create").detail(serde_json::json!({
            "account": name, "kind": kind, "expires_at": expires_at,
            "roles": roles.iter().map(|(g, r)| serde_json::json!({"repositories": g, "role": r})).collect::<Vec<_>>(),
        }));
        let created = on_write!(self, "create_account", |p| async {
            let mut tx = p.begin_write().await?;
            let id = sqlx::query_scalar::<_, i64>(
                "INSERT INTO accounts (name, kind, secret_hash, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING RETURNING id",
            )
            .bind(name)
            .bind(kind)
            .bind(secret_hash)
            .bind(now)
            .bind(expires_at)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = id else {
                return Ok::<bool, sqlx::Error>(false);
            };
            for (repos, role) in roles {
                sqlx::query(
                    "INSERT INTO account_roles (account_id, repositories, role)
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(repos)
                .bind(role)
                .execute(&mut *tx)
                .await?;
            }
            audit::append(&mut *tx, origin, std::slice::from_ref(&entry)).await?;
            tx.commit().await?;
            Ok(true)
        }
        .await)?;
        Ok(created)
    }

    /// Deletes an account (its roles go with it); `false` if there was none.
    pub async fn delete_account(&self, name: &str, origin: &Origin) -> Result<bool> {
        let entry =
            AuditEntry::global("account.delete").detail(serde_json::json!({ "account": name }));
        self.audited_change(
            "delete_account",
            "DELETE FROM accounts WHERE name = $1",
            &[name],
            entry,
            origin,
        )
        .await
    }

    /// Runs one statement binding `args` and, if it changed a row, appends
    /// `entry` in the same transaction. Whether a row changed.
    async fn audited_change(
        &self,
        op: &'static str,
        sql: &str,
        args: &[&str],
        entry: AuditEntry,
        origin: &Origin,
    ) -> Result<bool> {
        let changed = on_write!(self, op, |p| async {
            let mut tx = p.begin_write().await?;
            let mut q = sqlx::query(sql);
            for a in args {
                q = q.bind(*a);
            }
            let n = q.execute(&mut *tx).await?.rows_affected();
            if n > 0 {
                audit::append(&mut *tx, origin, std::slice::from_ref(&entry)).await?;
            }
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(n > 0)
        }
        .await)?;
        Ok(changed)
    }

    /// Replaces an account's secret hash; `false` if there is no such account.
    pub async fn set_account_secret(
        &self,
        name: &str,
        secret_hash: &str,
        origin: &Origin,
    ) -> Result<bool> {
        let entry =
            AuditEntry::global("account.secret").detail(serde_json::json!({ "account": name }));
        self.audited_change(
            "set_account_secret",
            "UPDATE accounts SET secret_hash = $1 WHERE name = $2",
            &[secret_hash, name],
            entry,
            origin,
        )
        .await
    }

    /// Adds (`grant`) or removes a role; `false` if there is no such account.
    pub async fn set_account_role(
        &self,
        name: &str,
        repositories: &str,
        role: &str,
        grant: bool,
        origin: &Origin,
    ) -> Result<bool> {
        let entry = AuditEntry::global(if grant {
            "account.grant"
        } else {
            "account.revoke"
        })
        .detail(serde_json::json!({ "account": name, "repositories": repositories, "role": role }));
        let sql = if grant {
            "INSERT INTO account_roles (account_id, repositories, role)
             SELECT id, $2, $3 FROM accounts WHERE name = $1 ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM account_roles WHERE repositories = $2 AND role = $3
             AND account_id IN (SELECT id FROM accounts WHERE name = $1)"
        };
        self.audited_change(
            "set_account_role",
            sql,
            &[name, repositories, role],
            entry,
            origin,
        )
        .await?;
        Ok(self.account(name).await?.is_some())
    }

    /// An account and its secret hash, for a login.
    pub async fn credentials(&self, name: &str) -> Result<Option<StoredCredentials>> {
        let row = on_read!(self, "credentials", |p| sqlx::query_as::<_, AccountRow>(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = $1")
        )
        .bind(name)
        .fetch_optional(p)
        .await)?;
        let Some(row) = row else { return Ok(None) };
        let roles = self.roles_of(row.0).await?;
        let (account, secret_hash) = account_of(row, roles);
        Ok(Some(StoredCredentials {
            account,
            secret_hash,
        }))
    }

    /// An account without its secret.
    pub async fn account(&self, name: &str) -> Result<Option<Account>> {
        Ok(self.credentials(name).await?.map(|c| c.account))
    }

    /// Every account, by name.
    pub async fn accounts(&self) -> Result<Vec<Account>> {
        let rows = on_read!(self, "accounts", |p| sqlx::query_as::<_, AccountRow>(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY name")
        )
        .fetch_all(p)
        .await)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let roles = self.roles_of(row.0).await?;
            out.push(account_of(row, roles).0);
        }
        Ok(out)
    }

    async fn roles_of(&self, account_id: i64) -> Result<Vec<(String, String)>> {
        Ok(on_read!(self, "account_roles", |p| sqlx::query_as::<
            _,
            (String, String),
        >(
            "SELECT repositories, role FROM account_roles WHERE account_id = $1
             ORDER BY repositories, role"
        )
        .bind(account_id)
        .fetch_all(p)
        .await)?)
    }

    /// Records a successful login.
    pub async fn touch_account(&self, name: &str) -> Result<()> {
        on_write!(self, "touch_account", |p| sqlx::query(
            "UPDATE accounts SET last_used_at = $1 WHERE name = $2"
        )
        .bind(now_ms())
        .bind(name)
        .execute(p)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Every signing key, newest first.
    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>> {
        Ok(on_read!(self, "signing_keys", |p| sqlx::query_as::<
            _,
            StoredKey,
        >(
            "SELECT kid, algorithm, private_key, public_key, created_at, retired_at
             FROM signing_keys ORDER BY created_at DESC, kid DESC"
        )
        .fetch_all(p)
        .await)?)
    }

    /// Stores a new signing key; with `retire_others`, the keys signing until now
    /// are marked retired (they keep verifying the tokens they signed).
    /// `origin` is given for a rotation (audited), absent for the first key.
    pub async fn add_signing_key(
        &self,
        key: &StoredKey,
        retire_others: bool,
        origin: Option<&Origin>,
    ) -> Result<()> {
        let entry =
            AuditEntry::global("signing_key.rotate").detail(serde_json::json!({ "kid": key.kid }));
        on_write!(self, "add_signing_key", |p| async {
            let mut tx = p.begin_write().await?;
            if let Some(o) = origin {
                audit::append(&mut *tx, o, std::slice::from_ref(&entry)).await?;
            }
            if retire_others {
                sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
                    .bind(key.created_at)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kid) DO NOTHING",
            )
            .bind(&key.kid)
            .bind(&key.algorithm)
            .bind(&key.private_key)
            .bind(&key.public_key)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        .await)?;
        Ok(())
    }

    /// Deletes keys retired before `before` (Unix ms): no token they signed is live.
    pub async fn prune_signing_keys(&self, before: i64) -> Result<u64> {
        Ok(on_write!(self, "prune_signing_keys", |p| sqlx::query(
            "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1"
        )
        .bind(before)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?)
    }
}

fn account_of(row: AccountRow, roles: Vec<(String, String)>) -> (Account, String) {
    let (id, name, kind, created_at, expires_at, last_used_at, hash) = row;
    (
        Account {
            id,
            name,
            kind,
            created_at,
            expires_at,
            last_used_at,
            roles,
        },
        hash,
    )
}
