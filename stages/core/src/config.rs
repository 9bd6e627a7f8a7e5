//! Settings shared by every stage binary. Each has a flag and an environment variable; see
//! `.env.example` for what each one is for.

use std::net::SocketAddr;
use std::time::Duration;

/// Core settings, flattened into each stage's command line.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PostgreSQL the service reads and writes (through the latency proxy when `checker up` runs).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// Redis for readiness, the cache (stage-2) and the rate limiter (stage-3).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: String,

    /// A Redis Cluster, used instead of REDIS_URL: some or all of its nodes, comma-separated
    /// (`redis://127.0.0.1:7000/,redis://127.0.0.1:7001/`). See docs/scale-out.md.
    #[arg(long, env = "REDIS_CLUSTER_NODES")]
    pub redis_cluster_nodes: Option<String>,

    /// HS256 secret that signs bearer tokens. The default is for local use only and logs a warning.
    #[arg(long, env = "JWT_SECRET", default_value = crate::auth::DEV_SECRET, hide_default_value = true)]
    pub jwt_secret: String,

    /// Connections in the Postgres pool. 10 is a common default (sqlx's, and HikariCP's sizing
    /// advice for a few cores): the pool a service like this one is usually shipped with.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 10)]
    pub db_pool_size: u32,

    /// How long a request waits for a pool connection before it gets a 503 instead of hanging.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 5000)]
    pub db_acquire_timeout_ms: u64,
}

impl Config {
    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }
}
