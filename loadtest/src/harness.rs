//! The system under test: PostgreSQL, Redis and the latency proxy, the seeded data, and the stage
//! binary running as its own process, as it would in production.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use feed_core::seed::{DEFAULT_SEED, Profile};
use kata_services::{Options, Services};
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

/// A stage binary running as a child process; killed when stopped or dropped.
pub struct StageProcess {
    child: tokio::process::Child,
    pub base_url: String,
    log: PathBuf,
}

impl StageProcess {
    /// Start `stage-N` from `bin_dir` against `env` and wait until it is ready.
    pub async fn start(bin_dir: &Path, stage: u8, env: &Environment, jwt_secret: &str) -> anyhow::Result<Self> {
        // Each stage runs on the schema its own migrations give it (stage-0: no timeline index).
        let db = PgPoolOptions::new().max_connections(1).connect(&env.services.database_url).await?;
        feed_core::db::reset_to_core_schema(&db).await?;
        db.close().await;
        let binary = bin_dir.join(format!("stage-{stage}"));
        let addr = format!("127.0.0.1:{}", free_port()?);
        let log = std::env::temp_dir().join(format!("loadtest-stage-{stage}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(&binary)
            // Through the latency proxy: the service must pay for every round trip it makes.
            .env("DATABASE_URL", &env.services.service_database_url)
            .env("REDIS_URL", &env.services.redis_url)
            .env("LISTEN_ADDR", &addr)
            .env("JWT_SECRET", jwt_secret)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        println!("started stage-{stage} on {addr} (its log: {})", log.display());
        let mut process = Self { child, base_url: format!("http://{addr}"), log };
        process.wait_ready().await?;
        Ok(process)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let url = format!("{}/ready", self.base_url);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the service exited ({status}) before it was ready; see {}", self.log.display());
            }
            let ready = client.get(&url).send().await.is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{url} did not answer 200 within {READY_TIMEOUT:?}; see {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// A free TCP port on 127.0.0.1, chosen by the OS (another process could take it before the
/// service binds it; unlikely enough for a local tool).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
