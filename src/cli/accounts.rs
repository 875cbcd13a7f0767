//! `cairn user …`, `cairn robot …` and `cairn auth rotate-key`: account
//! management on the database directly (the first admin is created this way,
//! before anyone can log in). Passwords are read from standard input, never
//! from arguments (which other users of the machine can see).

use std::io::BufRead;

use super::retention::cli_origin;
use crate::auth;
use crate::metadata::{Account, Metadata};

/// Reads one line (a password) from standard input, without its line ending.
pub fn read_secret() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn roles(specs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    Ok(specs
        .iter()
        .map(|s| auth::parse_role(s))
        .collect::<Result<Vec<_>, _>>()?)
}

/// `cairn user add NAME --role GLOB=ROLE…` (password on standard input, or
/// from `--password-env`). With `if_missing`, an existing account is left as it
/// is and that is a success: a container's init job runs on every start.
pub async fn add_user(
    meta: &Metadata,
    name: &str,
    role_specs: &[String],
    password: &str,
    if_missing: bool,
) -> anyhow::Result<()> {
    let roles = roles(role_specs)?;
    if !auth::create_user(meta, name, password, &roles, &cli_origin()).await? {
        if if_missing {
            println!("user {name} exists; left unchanged");
            return Ok(());
        }
        anyhow::bail!("account {name:?} already exists");
    }
    println!("user {name} created");
    Ok(())
}

/// `cairn user passwd NAME` (new password on standard input).
pub async fn set_password(meta: &Metadata, name: &str) -> anyhow::Result<()> {
    let password = read_secret()?;
    if password.chars().count() < auth::password::MIN_PASSWORD_LEN {
        anyhow::bail!(
            "passwords have at least {} characters",
            auth::password::MIN_PASSWORD_LEN
        );
    }
    let hash = auth::password::hash(&password)?;
    if !meta.set_account_secret(name, &hash, &cli_origin()).await? {
        anyhow::bail!("no account {name:?}");
    }
    println!("password of {name} changed");
    Ok(())
}

/// `cairn robot add NAME --role GLOB=ROLE… [--expires-in-days N]`: prints the
/// secret, once.
pub async fn add_robot(
    meta: &Metadata,
    name: &str,
    role_specs: &[String],
    expires_in_days: Option<u32>,
) -> anyhow::Result<()> {
    let roles = roles(role_specs)?;
    let expires = expires_in_days.map(|d| crate::metadata::now_ms() + i64::from(d) * 86_400_000);
    let Some(secret) = auth::create_robot(meta, name, expires, &roles, &cli_origin()).await? else {
        anyhow::bail!("account {name:?} already exists");
    };
    eprintln!("robot {name} created; its secret is printed once, below:");
    println!("{secret}");
    Ok(())
}

/// `cairn user|robot grant|revoke NAME GLOB=ROLE`.
pub async fn set_role(meta: &Metadata, name: &str, spec: &str, grant: bool) -> anyhow::Result<()> {
    let (glob, role) = auth::parse_role(spec)?;
    if !meta
        .set_account_role(name, &glob, &role, grant, &cli_origin())
        .await?
    {
        anyhow::bail!("no account {name:?}");
    }
    println!(
        "{name}: {} {role} of {glob:?}",
        if grant { "now" } else { "no longer" }
    );
    Ok(())
}

/// `cairn user|robot remove NAME`.
pub async fn remove(meta: &Metadata, name: &str) -> anyhow::Result<()> {
    if !meta.delete_account(name, &cli_origin()).await? {
        anyhow::bail!("no account {name:?}");
    }
    println!("account {name} removed");
    Ok(())
}

/// `cairn user|robot list`: accounts of one kind as JSON.
pub async fn list(meta: &Metadata, kind: &str) -> anyhow::Result<()> {
    let accounts: Vec<Account> = meta
        .accounts()
        .await?
        .into_iter()
        .filter(|a| a.kind == kind)
        .collect();
    println!("{}", serde_json::to_string_pretty(&accounts)?);
    Ok(())
}
