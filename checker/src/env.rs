//! The checker's world: services, the seeded database, and the implementations it starts.

use std::collections::BTreeMap;
use std::time::Duration;

use feed_core::auth::{JwtKeys, Tier};
use feed_core::seed::Profile;
use kata_services::{AppProcess, Launch, Options, ServiceRedis, Services};

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
    /// Give the implementation a Redis Cluster (3 masters, 3 replicas) instead of one Redis:
    /// `verify --topology cluster`.
    pub redis_cluster: bool,
    /// The seed of the data (`feed_core::seed`): the same seed, the same users and posts.
    pub seed: u64,
    /// Keep cargo's output off the terminal when building what is graded (`watch` and `status`
    /// print only the outcome; a compile error is shown as the compiler's first error).
    pub quiet_builds: bool,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            profile: Profile::Small,
            db_latency_ms: kata_services::DEFAULT_DB_LATENCY_MS,
            honour_env: true,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            redis_cluster: false,
            seed: feed_core::seed::DEFAULT_SEED,
            quiet_builds: false,
        }
    }
}

pub struct KataEnv {
    pub services: Services,
    /// The checker's own connection, straight to Postgres (not through the latency proxy).
    pub admin: PgPool,
    /// The Redis Cluster the implementation is given instead of `redis`, when asked for.
    pub cluster: Option<kata_services::RedisCluster>,
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
        // The cluster topology puts the instances behind HAProxy: a missing HAProxy is this
        // machine's problem, said before anything starts, not a failure of the implementation.
        anyhow::ensure!(
            !options.redis_cluster || kata_services::on_path("haproxy").is_some(),
            "the cluster topology puts the instances behind HAProxy, which is not on PATH \
             (Debian/Ubuntu: apt-get install haproxy)"
        );
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
        feed_core::seed::seed(&admin, options.profile, options.seed).await?;
        let cluster = match options.redis_cluster {
            true => Some(kata_services::RedisCluster::start(3, 1).await?),
            false => None,
        };
        let db_round_trip_ms = round_trip_ms(&services.service_database_url).await?;
        let jwt_secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| feed_core::auth::DEV_SECRET.into());
        Ok(Self { keys: JwtKeys::new(&jwt_secret), services, admin, cluster, jwt_secret, options, db_round_trip_ms })
    }

    /// The environment an implementation is started with ([`Services::service_env`]): the
    /// database through the latency proxy, the checker's Redis through its proxy (or its
    /// cluster: `REDIS_CLUSTER_NODES`, with `REDIS_URL` one of its nodes, since a service
    /// requires it), the secret its tokens are signed with. (`LISTEN_ADDR` is added per process.)
    pub fn app_env(&self) -> Vec<(String, String)> {
        let redis = match &self.cluster {
            Some(cluster) => ServiceRedis::Cluster(cluster),
            None => ServiceRedis::Proxied,
        };
        self.services.service_env(&self.jwt_secret, redis)
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
        match crate::build::build_async(implementation.name(), self.options.quiet_builds).await? {
            Built::Binary(program) => self.start_app(&Launch::Program(program), extra).await,
            Built::CompileError(error) => anyhow::bail!("{} does not compile:\n{error}", implementation.name()),
        }
    }

    /// A bearer token valid for an hour.
    pub fn token(&self, user_id: i64, tier: Tier) -> String {
        self.keys.mint(user_id, tier, Duration::from_secs(3600))
    }

    /// A connection to each Redis that holds the implementation's data: the one server, or every
    /// master of the cluster as it stands now (after a failover, the promoted replicas). What is
    /// per node (`INFO`, `KEYS`, `DBSIZE`, `FLUSHDB`) is asked of each and added up.
    pub async fn redis_nodes(&self) -> anyhow::Result<Vec<redis::aio::MultiplexedConnection>> {
        let urls = match &self.cluster {
            Some(cluster) => cluster.master_urls().await?,
            None => vec![self.services.redis_url.clone()],
        };
        connect_each(&urls).await
    }

    /// Empty the implementation's Redis (every master) so cache measurements start cold.
    pub async fn flush_redis(&self) -> anyhow::Result<()> {
        for mut node in self.redis_nodes().await? {
            let _: () = redis::cmd("FLUSHDB").query_async(&mut node).await?;
        }
        Ok(())
    }

    /// `INFO section` of every node, as `field → value summed over the nodes` (numbers only).
    pub async fn redis_info(&self, section: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        info_sum(self.redis_nodes().await?, section).await
    }

    /// The keys matching `pattern` on every node, each with its `PTTL` in ms (-1: no expiry).
    pub async fn redis_keys(&self, pattern: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let mut found = Vec::new();
        for mut node in self.redis_nodes().await? {
            let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut node).await?;
            for key in keys {
                let ms: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut node).await?;
                found.push((key, ms));
            }
        }
        Ok(found)
    }

    /// The keys matching `pattern` on every node, each with its `PEXPIRETIME`: the moment it
    /// expires, in ms since the epoch (-1: no expiry).
    pub async fn redis_expire_times(&self, pattern: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let mut found = Vec::new();
        for mut node in self.redis_nodes().await? {
            let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut node).await?;
            for key in keys {
                let at: i64 = redis::cmd("PEXPIRETIME").arg(&key).query_async(&mut node).await?;
                found.push((key, at));
            }
        }
        Ok(found)
    }

    /// Where the implementation's instances run: on one Redis, or on the checker's cluster.
    pub fn topology(&self) -> crate::Topology {
        if self.cluster.is_some() { crate::Topology::Cluster } else { crate::Topology::Single }
    }

    /// Whether the checker started the implementation's Redis (so it may stop it).
    pub fn owns_redis(&mut self) -> bool {
        self.cluster.is_some() || self.services.owned_redis().is_some()
    }

    /// Stop all of the implementation's Redis (every node of a cluster), as a crash would.
    pub fn stop_redis(&mut self) {
        match &mut self.cluster {
            Some(cluster) => cluster.stop_all(),
            None => self.services.owned_redis().map_or((), |r| r.stop()),
        }
    }

    /// Start what [`Self::stop_redis`] stopped; empty, as after a real restart.
    pub async fn restart_redis(&mut self) -> anyhow::Result<()> {
        match &mut self.cluster {
            Some(cluster) => cluster.restart_stopped().await,
            None => match self.services.owned_redis() {
                Some(redis) if !redis.is_running() => redis.restart().await,
                _ => Ok(()),
            },
        }
    }
}

/// `INFO section` of each of `nodes`, as `field → value summed over the nodes` (numbers only;
/// `errorstat_CROSSSLOT:count=3` counts as `errorstat_CROSSSLOT` 3).
pub async fn info_sum(
    nodes: Vec<redis::aio::MultiplexedConnection>,
    section: &str,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut sums = BTreeMap::new();
    for mut node in nodes {
        let info: String = redis::cmd("INFO").arg(section).query_async(&mut node).await?;
        for (field, value) in info.lines().filter_map(|l| l.split_once(':')) {
            if let Ok(value) = value.trim().trim_start_matches("count=").parse::<u64>() {
                *sums.entry(field.to_owned()).or_default() += value;
            }
        }
    }
    Ok(sums)
}

/// A connection to each of `urls`. Without the redis crate's `CLIENT SETINFO` on connect: Redis
/// 7.0 answers it with an error, and the checker's own connections must not show up in the
/// error counts (`INFO errorstats`) it reports of the implementation.
pub async fn connect_each(urls: &[String]) -> anyhow::Result<Vec<redis::aio::MultiplexedConnection>> {
    let mut nodes = Vec::new();
    for url in urls {
        nodes.push(kata_services::quiet_client(url)?.get_multiplexed_async_connection().await?);
    }
    Ok(nodes)
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
