//! The checker's world: services, the seeded database, and the apps it starts in-process.

use std::time::Duration;

use feed_core::auth::{JwtKeys, Tier};
use feed_core::seed::Profile;
use kata_services::{Options, Services};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct EnvOptions {
    pub profile: Profile,
    pub db_latency_ms: u64,
    /// Use `DATABASE_URL` / `REDIS_URL` when set (otherwise always start throwaway ones).
    pub honour_env: bool,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self { profile: Profile::Small, db_latency_ms: kata_services::DEFAULT_DB_LATENCY_MS, honour_env: true }
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

    /// The config an in-process app gets: port 0, the proxied database, the checker's Redis.
    pub fn app_config(&self) -> feed_core::Config {
        feed_core::Config {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            database_url: self.services.service_database_url.clone(),
            redis_url: self.services.redis_url.clone(),
            jwt_secret: self.jwt_secret.clone(),
            db_pool_size: 10,
            db_acquire_timeout_ms: 5000,
        }
    }

    /// Serve a reference stage or the workbench on a free port in this process.
    pub async fn spawn(&self, implementation: crate::Implementation) -> anyhow::Result<RunningApp> {
        self.spawn_with(|ctx| implementation.build(ctx)).await
    }

    /// Serve any stage built from the context (tests use this to change a stage's settings).
    pub async fn spawn_with<F: Future<Output = anyhow::Result<feed_core::Stage>>>(
        &self,
        build: impl FnOnce(feed_core::Context) -> F,
    ) -> anyhow::Result<RunningApp> {
        feed_core::metrics::handle();
        let ctx = feed_core::Context::connect(self.app_config()).await?;
        let app = feed_core::router(&ctx, build(ctx.clone()).await?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(feed_core::serve(listener, app, async move {
            let _ = stopped.await;
        }));
        Ok(RunningApp { base_url, _stop: stop, db: ctx.db })
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

/// An app served in-process; it stops when dropped.
pub struct RunningApp {
    pub base_url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    pub db: PgPool,
}
