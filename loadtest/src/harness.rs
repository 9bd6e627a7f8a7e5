//! The system under test: PostgreSQL, Redis and the latency proxy, the seeded data, and the stage
//! binary running as its own process, as it would in production.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use feed_core::seed::{DEFAULT_SEED, Profile};
use kata_services::{AppProcess, Launch, Options, Services};
use sqlx::postgres::PgPoolOptions;

/// The workspace this crate was built in: where `cargo build -p stage-N` runs.
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// How long a freshly started service may take to answer `GET /ready` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Services started here (or given by DATABASE_URL / REDIS_URL), migrated and seeded.
pub struct Environment {
    pub services: Services,
}

impl Environment {
    pub async fn start(db_latency_ms: u64) -> anyhow::Result<Self> {
        println!(
            "starting PostgreSQL, Redis and a {db_latency_ms} ms-per-direction latency proxy \
             (DATABASE_URL / REDIS_URL are used when set)..."
        );
        let services = Services::start(Options { db_latency_ms, honour_env: true }).await?;
        let db = PgPoolOptions::new().max_connections(1).connect(&services.database_url).await?;
        feed_core::db::migrate(&db).await?;
        println!("seeding the medium data set (about a minute on a fresh database)...");
        let seeded = feed_core::seed::seed(&db, Profile::Medium, DEFAULT_SEED).await?;
        println!(
            "{} users, {} posts{}",
            seeded.users,
            seeded.posts,
            if seeded.already_loaded { " (already loaded)" } else { "" }
        );
        db.close().await;
        Ok(Self { services })
    }

    /// Empty Redis when it is ours, so every run starts with a cold cache and full token buckets
    /// rather than inheriting what the run before it left behind.
    pub async fn flush_redis(&mut self) -> anyhow::Result<()> {
        if self.services.owned_redis().is_some() {
            let client = redis::Client::open(self.services.redis_url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
        }
        Ok(())
    }
}

/// Build the stage binaries, so a run never measures stale code (a no-op when they are fresh),
/// and return the directory they are in: next to this executable, in the same profile.
pub fn build_stages(stages: &[u8]) -> anyhow::Result<PathBuf> {
    let mut args = vec!["build".to_string()];
    if !cfg!(debug_assertions) {
        args.push("--release".into());
    }
    for stage in stages {
        args.extend(["-p".into(), format!("stage-{stage}")]);
    }
    println!("$ cargo {}", args.join(" "));
    let status = std::process::Command::new("cargo")
        .args(&args)
        .current_dir(WORKSPACE)
        .status()
        .context("running cargo (is it on PATH?)")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the executable has no directory")?;
    Ok(dir.to_path_buf())
}

/// Start `stage-N` from `bin_dir` against `env` as its own process (the same way the checker
/// starts an implementation), on the schema its own migrations give it, and wait until ready.
/// It stops when dropped; on failure the error shows its last output.
pub async fn start_stage(bin_dir: &Path, stage: u8, env: &Environment, jwt_secret: &str) -> anyhow::Result<AppProcess> {
    // Each stage runs on the schema its own migrations give it (stage-0: no timeline index).
    let db = PgPoolOptions::new().max_connections(1).connect(&env.services.database_url).await?;
    feed_core::db::reset_to_core_schema(&db).await?;
    db.close().await;
    let settings = [
        // Through the latency proxy: the service must pay for every round trip it makes.
        ("DATABASE_URL".to_owned(), env.services.service_database_url.clone()),
        ("REDIS_URL".to_owned(), env.services.redis_url.clone()),
        ("JWT_SECRET".to_owned(), jwt_secret.to_owned()),
    ];
    let process = AppProcess::start(&Launch::Program(bin_dir.join(format!("stage-{stage}"))), &settings, READY_TIMEOUT)
        .await
        .with_context(|| format!("starting stage-{stage}"))?;
    println!("started stage-{stage} on {}", process.base_url);
    Ok(process)
}
