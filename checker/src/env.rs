//! The checker's world: services, the seeded database, and the implementations it starts.

use std::time::Duration;

use feed_core::auth::{JwtKeys, Tier};
use feed_core::seed::Profile;
use kata_services::{AppProcess, Launch, Options, Services};

use crate::Implementation;
use crate::build::Built;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Long enough for a debug build to connect and migrate, or a script to create its virtualenv's
/// imports; short enough that a service that never comes up is a quick, clear failure.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct EnvOptions {
    pub profile: Profile,
    pub db_latency_ms: u64,
    /// Use `DATABASE_URL` / `REDIS_URL` when set (otherwise always start throwaway ones).
    pub honour_env: bool,
    /// How long a started implementation may take to answer `GET /ready` with 200.
    pub ready_timeout: Duration,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            profile: Profile::Small,
            db_latency_ms: kata_services::DEFAULT_DB_LATENCY_MS,
            honour_env: true,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

pub struct KataEnv {
    pub services: Services,
    /// The checker's own connection, straight to Postgres (not through the latency proxy).
    pub admin: PgPool,
    pub redis: redis::Client,
    pub keys: JwtKeys,
    pub jwt_secret: String,
    pub options: EnvOptions,
    /// Median time of `select 1` as the service sees it (through the latency proxy), measured
    /// at start: the real distance every figure in a report was measured at.
    pub db_round_trip_ms: f64,
}

impl KataEnv {
    /// Start or reuse services, migrate, make sure pg_stat_statements is loaded, seed.
    pub async fn start(options: EnvOptions) -> anyhow::Result<Self> {
        let services =
            Services::start(Options { db_latency_ms: options.db_latency_ms, honour_env: options.honour_env }).await?;
        let admin = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&services.database_url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", services.database_url))?;
        feed_core::db::migrate(&admin).await?;
        crate::pgss::ensure_extension(&admin).await?;
        feed_core::seed::seed(&admin, options.profile, feed_core::seed::DEFAULT_SEED).await?;
        let redis = redis::Client::open(services.redis_url.as_str())?;
        let db_round_trip_ms = round_trip_ms(&services.service_database_url).await?;
        let jwt_secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| feed_core::auth::DEV_SECRET.into());
        Ok(Self { keys: JwtKeys::new(&jwt_secret), services, admin, redis, jwt_secret, options, db_round_trip_ms })
    }

    /// The environment an implementation is started with: the database through the latency
    /// proxy, the checker's Redis, the secret its tokens are signed with. (`LISTEN_ADDR` is added
    /// per process.)
    pub fn app_env(&self) -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), self.services.service_database_url.clone()),
            ("REDIS_URL".into(), self.services.redis_url.clone()),
            ("JWT_SECRET".into(), self.jwt_secret.clone()),
        ]
    }

    /// Start `launch` as its own process with [`Self::app_env`] plus `extra`, ready to serve.
    pub async fn start_app(&self, launch: &Launch, extra: &[(&str, &str)]) -> anyhow::Result<AppProcess> {
        let mut env = self.app_env();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        AppProcess::start(launch, &env, self.options.ready_timeout).await
    }

    /// Build a stage or the workbench with cargo and start it (a compile error is an error here;
    /// `verify` reports it as a check instead).
    pub async fn spawn(&self, implementation: Implementation) -> anyhow::Result<AppProcess> {
        self.spawn_with(implementation, &[]).await
    }

    /// [`Self::spawn`] with extra settings, e.g. `RATE_LIMIT_ON_REDIS_ERROR=closed`.
    pub async fn spawn_with(
        &self,
        implementation: Implementation,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<AppProcess> {
        match crate::build::build_async(implementation.name()).await? {
            Built::Binary(program) => self.start_app(&Launch::Program(program), extra).await,
            Built::CompileError(error) => anyhow::bail!("{} does not compile:\n{error}", implementation.name()),
        }
    }

    /// A bearer token valid for an hour.
    pub fn token(&self, user_id: i64, tier: Tier) -> String {
        self.keys.mint(user_id, tier, Duration::from_secs(3600))
    }

    pub async fn redis_conn(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(self.redis.get_multiplexed_async_connection().await?)
    }

    /// Empty the checker's Redis so cache measurements start cold.
    pub async fn flush_redis(&self) -> anyhow::Result<()> {
        let mut conn = self.redis_conn().await?;
        let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await?;
        Ok(())
    }
}

async fn round_trip_ms(url: &str) -> anyhow::Result<f64> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut samples = Vec::new();
    for _ in 0..21 {
        let started = std::time::Instant::now();
        sqlx::query("select 1").execute(&mut conn).await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}
