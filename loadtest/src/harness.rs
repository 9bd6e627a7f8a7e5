//! The system under test: PostgreSQL, Redis and the latency proxy, the seeded data, and the stage
//! binary running as its own process, as it would in production.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use feed_core::seed::{DEFAULT_SEED, Profile};
use kata_services::{AppProcess, Implementation, Launch, Options, ServiceRedis, Services, cargo};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::progress::{Step, say};

/// How long a freshly started service may take to answer `GET /ready` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Services started here (or given by DATABASE_URL / REDIS_URL), migrated and seeded.
pub struct Environment {
    pub services: Services,
}

impl Environment {
    pub async fn start(db_latency_ms: u64) -> anyhow::Result<Self> {
        let step = Step::start(format!(
            "starting PostgreSQL, Redis and a {db_latency_ms} ms-per-direction latency proxy \
             (DATABASE_URL / REDIS_URL are used when set)..."
        ));
        let services = Services::start(Options { db_latency_ms, honour_env: true }).await?;
        let seconds = step.elapsed().as_secs_f64();
        step.done(format!("services ready in {seconds:.1} s"));
        let db = PgPoolOptions::new().max_connections(2).connect(&services.database_url).await?;
        feed_core::db::migrate(&db).await?;
        seed(&db).await?;
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

/// Seed the medium profile (a no-op when it is loaded), showing the rows COPY has written so far
/// (Postgres's `pg_stat_progress_copy`, read on a second connection) and the measured time and
/// rate afterwards: no duration is promised before it is measured.
async fn seed(db: &PgPool) -> anyhow::Result<()> {
    let step = Step::start("seeding the medium data set...");
    let seeding = feed_core::seed::seed(db, Profile::Medium, DEFAULT_SEED);
    tokio::pin!(seeding);
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let (mut done, mut current, mut last) = (0i64, 0i64, 0i64);
    let seeded = loop {
        tokio::select! {
            seeded = &mut seeding => break seeded?,
            _ = ticker.tick() => {
                let copying: Option<i64> =
                    sqlx::query_scalar("select sum(tuples_processed)::bigint from pg_stat_progress_copy")
                        .fetch_one(db)
                        .await
                        .unwrap_or(None);
                // Users are copied first, then posts: a drop means the next COPY started.
                let now = copying.unwrap_or(0);
                if now < last {
                    done += last;
                }
                last = now;
                current = current.max(done + now);
                let rate = current as f64 / step.elapsed().as_secs_f64().max(0.001);
                step.update(format!("seeding the medium data set: {} rows copied ({} rows/s)", thousands(current), thousands(rate as i64)));
            }
        }
    };
    let seconds = step.elapsed().as_secs_f64();
    let rows = seeded.users + seeded.posts;
    if seeded.already_loaded {
        step.done(format!(
            "medium data set already loaded: {} users, {} posts",
            thousands(seeded.users),
            thousands(seeded.posts)
        ));
    } else {
        step.done(format!(
            "seeded {} users and {} posts in {seconds:.1} s ({} rows/s)",
            thousands(seeded.users),
            thousands(seeded.posts),
            thousands((rows as f64 / seconds.max(0.001)) as i64)
        ));
    }
    Ok(())
}

/// 1095459 as "1,095,459".
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Build the targets' binaries, so a run never measures stale code, and return the directory
/// they are in: next to this executable, in the same profile.
///
/// Cargo unifies features over the packages one build selects. Built alone, a stage's shared
/// dependencies (tokio, hyper, sqlx, axum, …) get the stage's features, not the ones this load
/// test was built with, and some sixty crates compile a second time. Built together with
/// `loadtest` (which depends on `workspace-hack`, so its features already cover the stages'),
/// they resolve exactly as this executable's own build did: only the targets' crates compile
/// (nothing when they are fresh). A build that compiles something shows a spinner, then the time
/// and the count; a failed one shows cargo's output.
pub fn build_targets(targets: &[Implementation]) -> anyhow::Result<PathBuf> {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let packages: Vec<&str> = targets.iter().map(|target| target.name()).collect();
    let names = packages.join(", ");
    let build = cargo::Build::new(std::iter::once(env!("CARGO_PKG_NAME")).chain(packages)).quiet();
    let started = Instant::now();
    let mut step = None;
    let finished = build.run(|krate| {
        let step = step.get_or_insert_with(|| Step::start(format!("building {names} ({profile})...")));
        step.update(format!("building {names} ({profile}): compiled {krate}"));
    })?;
    if !finished.status.success() {
        if let Some(step) = step {
            step.done(format!("building {names} ({profile}) failed"));
        }
        bail!("`cargo {}` failed ({}):\n{}", build.args().join(" "), finished.status, finished.stderr.trim_end());
    }
    if let Some(step) = step {
        let compiled = finished.compiled;
        step.done(format!(
            "built {names} ({profile}) in {:.1} s: {compiled} crate{} compiled",
            started.elapsed().as_secs_f64(),
            if compiled == 1 { "" } else { "s" }
        ));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the executable has no directory")?;
    Ok(dir.to_path_buf())
}

/// Start a target from `bin_dir` against `env` as its own process (the same way the checker
/// starts an implementation), on `redis`, with `extra` settings, on the schema its own
/// migrations give it, and wait until ready. It stops when dropped; on failure the error shows
/// its last output.
pub async fn start_target(
    bin_dir: &Path,
    target: Implementation,
    env: &Environment,
    jwt_secret: &str,
    redis: ServiceRedis<'_>,
    extra: &[(String, String)],
) -> anyhow::Result<AppProcess> {
    // Each stage runs on the schema its own migrations give it (stage-0: no timeline index).
    let db = PgPoolOptions::new().max_connections(1).connect(&env.services.database_url).await?;
    feed_core::db::reset_to_core_schema(&db).await?;
    db.close().await;
    let mut settings = env.services.service_env(jwt_secret, redis);
    // An extra setting replaces the default of the same name.
    settings.retain(|(name, _)| !extra.iter().any(|(extra_name, _)| extra_name == name));
    settings.extend(extra.iter().cloned());
    let process = AppProcess::start(&Launch::Program(bin_dir.join(target.name())), &settings, READY_TIMEOUT)
        .await
        .with_context(|| format!("starting {target}"))?;
    say(format!("started {target} on {}", process.base_url));
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_095_459), "1,095,459");
        assert_eq!(thousands(-12_345), "-12,345");
    }
}
