//! The `cairn` binary: configuration, logging, and the subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use cairn::{App, Config};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "An OCI registry whose published artifacts never change"
)]
struct Cli {
    /// TOML configuration file (see config/cairn.example.toml).
    #[arg(long, short, global = true, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry (migrates the database first).
    Serve {
        /// Serve with no accounts on a non-loopback address, open to anyone
        /// who can reach it (auth.insecure_open). Without accounts Cairn
        /// otherwise refuses to start there.
        #[arg(long)]
        insecure_open: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Print the effective configuration (defaults, file, environment) as TOML.
    Config,
    /// Exit 0 if the registry answers `GET /healthz` with 200, 1 otherwise
    /// (a container health check that needs no shell or curl).
    Healthcheck {
        /// The URL to ask; default: `/healthz` on the configured `listen`
        /// address (loopback when it is 0.0.0.0 or ::).
        #[arg(long)]
        url: Option<String>,
        /// Seconds to wait for the connection and for each read and write.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
    /// Immutability policy questions.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The audit trail: verify its hash chain, export it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Record that an artifact was promoted (deployed) to an environment:
    /// `cairn promote team/app:v1.4.2 --env prod`.
    Promote {
        /// `<repository>:<tag>` (resolved to its digest now) or `<repository>@<digest>`.
        reference: String,
        #[arg(long)]
        env: String,
    },
    /// What to roll back to: the current and previous promoted digests of an environment.
    Rollback {
        repository: String,
        #[arg(long)]
        env: String,
    },
    /// Legal holds: artifacts beyond the reach of every deletion path.
    Hold {
        #[command(subcommand)]
        command: HoldCommand,
    },
    /// Retention: plan (what would be deleted, and why everything else stays), then apply.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Reclaim blobs no manifest references and idle upload sessions, while the registry serves.
    Gc {
        /// Report what would be reclaimed; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// While a collection runs elsewhere (a replica's schedule, another
        /// `cairn gc`), wait this many seconds for it before giving up.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// Build provenance: an artifact's records, or artifacts by commit, source or builder.
    Provenance {
        #[command(subcommand)]
        command: ProvenanceCommand,
    },
    /// User accounts (people): `echo "$PASSWORD" | cairn user add alice --role 'team/**=writer'`.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Robot accounts (CI): `cairn robot add ci --role 'ci/**=writer' --expires-in-days 90`
    /// prints a generated secret, once.
    Robot {
        #[command(subcommand)]
        command: RobotCommand,
    },
    /// Token signing keys.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input.
    Add {
        name: String,
        /// `<repository glob>=<role>` (reader, writer, admin, auditor); repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Read the password from this environment variable instead of standard
        /// input (for a container's one-shot init job, which has no shell to pipe).
        #[arg(long, value_name = "VARIABLE")]
        password_env: Option<String>,
        /// Succeed without changing anything when the account already exists.
        #[arg(long)]
        if_missing: bool,
    },
    /// Change a user's password (read from standard input).
    Passwd {
        name: String,
    },
    /// Grant a role: `cairn user grant alice 'team/**=admin'`.
    Grant {
        name: String,
        role: String,
    },
    /// Take a role away.
    Revoke {
        name: String,
        role: String,
    },
    Remove {
        name: String,
    },
    /// Users and their roles, as JSON.
    List,
}

#[derive(Subcommand)]
enum RobotCommand {
    /// Create a robot and print its generated secret (shown once).
    Add {
        name: String,
        /// `<repository glob>=<role>`; repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// The robot can no longer log in after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    Grant {
        name: String,
        role: String,
    },
    Revoke {
        name: String,
        role: String,
    },
    Remove {
        name: String,
    },
    /// Robots, their roles, expiry and last use, as JSON.
    List,
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Sign new tokens with a new key; tokens signed with the old one stay
    /// valid until they expire.
    RotateKey,
}

#[derive(Subcommand)]
enum HoldCommand {
    /// `cairn hold add team/app@sha256:… --reason "case 1234"`
    Add {
        reference: String,
        #[arg(long)]
        reason: String,
    },
    /// Release hold `id` (see `cairn hold list`).
    Release { id: i64 },
    /// Active holds (`--all`: released ones too).
    List {
        #[arg(long)]
        repository: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Show what retention would delete and why each kept artifact stays; stores the plan.
    Plan {
        /// Only repositories matching this glob.
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Apply a stored plan (`--plan <id>`), or plan and apply at once.
    Apply {
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        json: bool,
        /// While retention runs elsewhere (a replica's schedule, another
        /// `cairn retention apply`), wait this many seconds for it before giving up.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
}

#[derive(Subcommand)]
enum ProvenanceCommand {
    /// Every provenance record of `<repository>@<digest>`, as JSON.
    Show {
        /// `<repository>@<digest>`
        reference: String,
    },
    /// Artifacts whose provenance matches every filter given, as JSON.
    Query {
        /// Source commit.
        #[arg(long)]
        revision: Option<String>,
        /// Source repository URL (any spelling: scheme, user, case, `.git` are ignored).
        #[arg(long)]
        source: Option<String>,
        /// Builder id.
        #[arg(long)]
        builder: Option<String>,
        #[arg(long)]
        repository: Option<String>,
        #[arg(long)]
        predicate_type: Option<String>,
        /// A build input's digest or URI.
        #[arg(long)]
        material: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain; exit status 1 and the first broken link if it was tampered with.
    Verify,
    /// Write entries as JSON lines, oldest first (all of them, or those matching the filters).
    Export {
        #[arg(long)]
        repository: Option<String>,
        #[arg(long)]
        digest: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        action: Option<String>,
        /// Only entries at or after this time (Unix milliseconds).
        #[arg(long)]
        since: Option<i64>,
        /// Only entries before this time (Unix milliseconds).
        #[arg(long)]
        until: Option<i64>,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Whether a tag is mutable, and which rule decides: `cairn policy explain team/app:latest`.
    Explain {
        /// `<repository>:<tag>`
        reference: String,
    },
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    if let Command::Healthcheck { url, timeout_secs } = &cli.command {
        let url = url
            .clone()
            .unwrap_or_else(|| cairn::cli::healthcheck::default_url(config.listen));
        if let Err(e) = cairn::cli::healthcheck::check(
            &url,
            std::time::Duration::from_secs((*timeout_secs).max(1)),
        ) {
            eprintln!("unhealthy: {e:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    let serving = matches!(cli.command, Command::Serve { .. });
    let _telemetry = cairn::telemetry::init(&config, !serving)?;
    match cli.command {
        Command::Serve { insecure_open } => {
            let mut config = config;
            config.auth.insecure_open |= insecure_open;
            let app = App::build(&config).await?;
            tracing::info!(
                address = %app.local_addr()?,
                database = app.registry().metadata().backend_name(),
                "cairn listening"
            );
            app.run(shutdown_signal()).await?;
        }
        Command::Migrate => {
            let meta = cairn::open_metadata(&config).await?;
            println!("migrations applied ({})", meta.backend_name());
            meta.close().await;
        }
        Command::Config => {
            print!("{}", toml::to_string_pretty(&config.redacted())?);
        }
        // Answered above, before logging starts.
        Command::Healthcheck { .. } => {}
        Command::Policy {
            command: PolicyCommand::Explain { reference },
        } => {
            let (repo, tag) = reference
                .rsplit_once(':')
                .ok_or_else(|| anyhow::anyhow!("expected <repository>:<tag>, got {reference:?}"))?;
            let repo: cairn::domain::RepoName = repo.parse()?;
            let tag: cairn::domain::Tag = tag.parse()?;
            let d = config.rules()?.decide(repo.as_str(), tag.as_str());
            println!(
                "{repo}:{tag} is {} (rule {:?}: repositories {:?}, tags {:?})",
                d.mutability, d.rule, d.repositories, d.tags
            );
        }
        Command::Promote { reference, env } => {
            let registry = cairn::build_registry(&config).await?;
            let (repo, r) = cairn::cli::retention::parse_reference(&reference)?;
            let p = registry
                .promote(&repo, &r, &env, &cairn::cli::retention::cli_origin())
                .await?;
            println!("{repo}@{} promoted to {env} (promotion {})", p.digest, p.id);
            registry.metadata().close().await;
        }
        Command::Rollback { repository, env } => {
            let registry = cairn::build_registry(&config).await?;
            let answer = registry.rollback(&repository.parse()?, &env).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            registry.metadata().close().await;
        }
        Command::Hold { command } => {
            let registry = cairn::build_registry(&config).await?;
            let origin = cairn::cli::retention::cli_origin();
            match command {
                HoldCommand::Add { reference, reason } => {
                    let (repo, r) = cairn::cli::retention::parse_reference(&reference)?;
                    let h = registry.add_hold(&repo, &r, &reason, &origin).await?;
                    println!("hold {} on {repo}@{}: {}", h.id, h.digest, h.reason);
                }
                HoldCommand::Release { id } => {
                    registry.release_hold(id, &origin).await?;
                    println!("hold {id} released");
                }
                HoldCommand::List { repository, all } => {
                    let holds = registry.holds(repository.as_deref(), !all).await?;
                    println!("{}", serde_json::to_string_pretty(&holds)?);
                }
            }
            registry.metadata().close().await;
        }
        Command::Retention { command } => {
            let registry = cairn::build_registry(&config).await?;
            let origin = cairn::cli::retention::cli_origin();
            match command {
                RetentionCommand::Plan { repo, json } => {
                    let plan = registry.retention_plan(repo.as_deref(), &origin).await?;
                    cairn::cli::retention::print_plan(&plan, json)?;
                }
                RetentionCommand::Apply {
                    plan,
                    repo,
                    json,
                    wait,
                } => {
                    let lock = cairn::cli::retention::job_lock(
                        &registry,
                        cairn::metadata::Job::Retention,
                        std::time::Duration::from_secs(wait),
                    )
                    .await?;
                    let id = match plan {
                        Some(id) => id,
                        None => registry.retention_plan(repo.as_deref(), &origin).await?.id,
                    };
                    let applied = cairn::cli::retention::apply(&registry, &id, json).await;
                    lock.release().await?;
                    applied?;
                }
            }
            registry.metadata().close().await;
        }
        Command::Gc {
            dry_run,
            json,
            wait,
        } => {
            let registry = cairn::build_registry(&config).await?;
            // A dry run deletes nothing and needs no lock.
            let lock = if dry_run {
                None
            } else {
                Some(
                    cairn::cli::retention::job_lock(
                        &registry,
                        cairn::metadata::Job::GarbageCollection,
                        std::time::Duration::from_secs(wait),
                    )
                    .await?,
                )
            };
            let collected = cairn::cli::retention::gc(
                &registry,
                std::time::Duration::from_secs(config.gc.grace_secs),
                std::time::Duration::from_secs(config.limits.upload_expiry_secs),
                dry_run,
                json,
            )
            .await;
            if let Some(lock) = lock {
                lock.release().await?;
            }
            collected?;
            registry.metadata().close().await;
        }
        Command::Audit { command } => {
            let meta = cairn::open_metadata(&config).await?;
            match command {
                AuditCommand::Verify => {
                    let report = cairn::cli::audit::verify(&meta).await?;
                    meta.close().await;
                    if report.broken.is_some() {
                        std::process::exit(1);
                    }
                }
                AuditCommand::Export {
                    repository,
                    digest,
                    actor,
                    action,
                    since,
                    until,
                    output,
                } => {
                    let q = cairn::metadata::AuditQuery {
                        repository,
                        digest,
                        actor,
                        action,
                        since,
                        until,
                        ..Default::default()
                    };
                    let mut out: Box<dyn std::io::Write> = match output {
                        Some(path) => {
                            Box::new(std::io::BufWriter::new(std::fs::File::create(path)?))
                        }
                        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
                    };
                    let n = cairn::cli::audit::export(&meta, q, &mut out).await?;
                    eprintln!("{n} audit entries exported");
                    meta.close().await;
                }
            }
        }
        Command::User { command } => {
            let meta = cairn::open_metadata(&config).await?;
            use cairn::cli::accounts as acc;
            let result = match command {
                UserCommand::Add {
                    name,
                    roles,
                    password_env,
                    if_missing,
                } => {
                    let password = match password_env {
                        Some(var) => std::env::var(&var).map_err(|_| {
                            anyhow::anyhow!("environment variable {var} is not set (or not UTF-8)")
                        }),
                        None => acc::read_secret(),
                    };
                    match password {
                        Ok(p) => acc::add_user(&meta, &name, &roles, &p, if_missing).await,
                        Err(e) => Err(e),
                    }
                }
                UserCommand::Passwd { name } => acc::set_password(&meta, &name).await,
                UserCommand::Grant { name, role } => acc::set_role(&meta, &name, &role, true).await,
                UserCommand::Revoke { name, role } => {
                    acc::set_role(&meta, &name, &role, false).await
                }
                UserCommand::Remove { name } => acc::remove(&meta, &name).await,
                UserCommand::List => acc::list(&meta, "user").await,
            };
            meta.close().await;
            result?;
        }
        Command::Robot { command } => {
            let meta = cairn::open_metadata(&config).await?;
            use cairn::cli::accounts as acc;
            let result = match command {
                RobotCommand::Add {
                    name,
                    roles,
                    expires_in_days,
                } => acc::add_robot(&meta, &name, &roles, expires_in_days).await,
                RobotCommand::Grant { name, role } => {
                    acc::set_role(&meta, &name, &role, true).await
                }
                RobotCommand::Revoke { name, role } => {
                    acc::set_role(&meta, &name, &role, false).await
                }
                RobotCommand::Remove { name } => acc::remove(&meta, &name).await,
                RobotCommand::List => acc::list(&meta, "robot").await,
            };
            meta.close().await;
            result?;
        }
        Command::Auth {
            command: AuthCommand::RotateKey,
        } => {
            let meta = cairn::open_metadata(&config).await?;
            let kid = cairn::auth::token::rotate(
                &meta,
                std::time::Duration::from_secs(config.auth.refresh_token_ttl_secs),
                &cairn::cli::retention::cli_origin(),
            )
            .await;
            meta.close().await;
            println!(
                "new signing key {}; older keys verify until their tokens expire",
                kid?
            );
        }
        Command::Provenance { command } => {
            let meta = cairn::open_metadata(&config).await?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let result = match command {
                ProvenanceCommand::Show { reference } => {
                    cairn::cli::provenance::show(&meta, &reference, &mut out).await
                }
                ProvenanceCommand::Query {
                    revision,
                    source,
                    builder,
                    repository,
                    predicate_type,
                    material,
                } => {
                    let q = cairn::metadata::ProvenanceQuery {
                        revision,
                        source,
                        builder,
                        repository,
                        predicate_type,
                        material,
                        ..Default::default()
                    };
                    cairn::cli::provenance::query(&meta, q, &mut out).await
                }
            };
            meta.close().await;
            let n = result?;
            eprintln!("{n} provenance records");
        }
    }
    Ok(())
}
