//! Real PostgreSQL and Redis for the kata, started from locally installed binaries.
//!
//! Tests, the checker and the load test call [`Services::start`]. It honours `DATABASE_URL` and
//! `REDIS_URL` when they are set (docker-compose, your own servers) and otherwise starts throwaway
//! instances on free ports, torn down when the value is dropped. Nothing here is a fake: the
//! service under test talks to a real `postgres` with `pg_stat_statements` preloaded and a real
//! `redis-server`.

mod app_process;
pub mod cargo;
mod haproxy;
mod implementation;
mod postgres;
pub mod prometheus;
mod proxy;
mod redis_cluster;
mod redis_server;
mod signal;
pub mod stats;
mod wait;

pub use app_process::{AppProcess, Launch, StartFailure};
pub use haproxy::{Backend, Haproxy};
pub use implementation::Implementation;
pub use postgres::Postgres;
pub use proxy::LatencyProxy;
pub use redis_cluster::{RedisCluster, node_url, quiet_client};
pub use redis_server::RedisServer;
pub use signal::stop_signal;

use anyhow::Context as _;
use url::Url;

/// The default delay the proxy adds in each direction between the service and Postgres.
///
/// 1 ms each way is about the 2 ms round trip of a database in the same cloud region. On
/// loopback a round trip costs ~0.05 ms and the N+1 is nearly free, which hides the lesson.
pub const DEFAULT_DB_LATENCY_MS: u64 = 1;

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Delay added per direction between the service and Postgres, in ms (0 = no proxy).
    pub db_latency_ms: u64,
    /// Use `DATABASE_URL` / `REDIS_URL` from the environment when they are set.
    pub honour_env: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { db_latency_ms: DEFAULT_DB_LATENCY_MS, honour_env: true }
    }
}

/// A running PostgreSQL and Redis, either started here or given by the environment.
pub struct Services {
    postgres: Option<Postgres>,
    redis: Option<RedisServer>,
    /// The latency proxy, when one runs (see [`Services::proxy`]).
    proxy: Option<LatencyProxy>,
    /// The proxy between the service and Redis (see [`Services::redis_proxy`]).
    redis_proxy: LatencyProxy,
    /// Direct connection to Postgres: for migrations, seeding and measurement.
    pub database_url: String,
    /// The URL the *service* uses: through the latency proxy when one runs.
    pub service_database_url: String,
    pub redis_url: String,
    /// The Redis URL the *service* uses: through a proxy that adds no delay, so the checker can
    /// order concurrent requests' Redis replies (see [`LatencyProxy::lockstep`]).
    pub service_redis_url: String,
    pub db_latency_ms: u64,
}

impl Services {
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let env = |name: &str| options.honour_env.then(|| std::env::var(name).ok()).flatten().filter(|v| !v.is_empty());
        let (postgres, database_url) = match env("DATABASE_URL") {
            Some(url) => (None, url),
            None => {
                let pg = Postgres::start().await?;
                let url = pg.url();
                (Some(pg), url)
            }
        };
        let (redis, redis_url) = match env("REDIS_URL") {
            Some(url) => (None, url),
            None => {
                let r = RedisServer::start().await?;
                let url = r.url();
                (Some(r), url)
            }
        };
        let (proxy, service_database_url) = if options.db_latency_ms == 0 {
            (None, database_url.clone())
        } else {
            let upstream = host_port(&database_url)
                .with_context(|| format!("cannot find host:port in DATABASE_URL {database_url}"))?;
            let proxy = LatencyProxy::start(upstream, std::time::Duration::from_millis(options.db_latency_ms))?;
            let url = replace_host_port(&database_url, proxy.addr())?;
            (Some(proxy), url)
        };
        let redis_upstream =
            host_port(&redis_url).with_context(|| format!("cannot find host:port in REDIS_URL {redis_url}"))?;
        let redis_proxy = LatencyProxy::start(redis_upstream, std::time::Duration::ZERO)?;
        let service_redis_url = replace_host_port(&redis_url, redis_proxy.addr())?;
        Ok(Self {
            postgres,
            redis,
            proxy,
            redis_proxy,
            database_url,
            service_database_url,
            redis_url,
            service_redis_url,
            db_latency_ms: options.db_latency_ms,
        })
    }

    /// The Redis server started here, if any: the checker stops and restarts it to prove the
    /// service survives a Redis outage. `None` when `REDIS_URL` pointed elsewhere.
    pub fn owned_redis(&mut self) -> Option<&mut RedisServer> {
        self.redis.as_mut()
    }

    /// The latency proxy between the service and Postgres, if one runs (`db_latency_ms` > 0).
    pub fn proxy(&self) -> Option<&LatencyProxy> {
        self.proxy.as_ref()
    }

    /// The proxy between the service and Redis.
    pub fn redis_proxy(&self) -> &LatencyProxy {
        &self.redis_proxy
    }

    /// The PostgreSQL server started here, if any.
    pub fn owned_postgres(&mut self) -> Option<&mut Postgres> {
        self.postgres.as_mut()
    }

    /// The environment a service under test is started with (`LISTEN_ADDR` is added per
    /// process, see [`AppProcess::start`]): the database through the latency proxy, so the
    /// service pays for every round trip it makes; the Redis `redis` says; the secret its tokens
    /// are signed with.
    pub fn service_env(&self, jwt_secret: &str, redis: ServiceRedis<'_>) -> Vec<(String, String)> {
        let mut env = vec![
            ("DATABASE_URL".to_owned(), self.service_database_url.clone()),
            ("JWT_SECRET".to_owned(), jwt_secret.to_owned()),
        ];
        match redis {
            ServiceRedis::Proxied => env.push(("REDIS_URL".to_owned(), self.service_redis_url.clone())),
            ServiceRedis::Direct => env.push(("REDIS_URL".to_owned(), self.redis_url.clone())),
            ServiceRedis::Cluster(cluster) => env.extend(cluster.service_env()),
        }
        env
    }
}

/// Which Redis a service under test is given.
#[derive(Clone, Copy)]
pub enum ServiceRedis<'a> {
    /// [`Services::service_redis_url`]: through the Redis proxy, so the checker can hold and
    /// order the service's Redis replies.
    Proxied,
    /// [`Services::redis_url`]: the server itself. The load test measures the service, and a
    /// proxy's threads would take their share of the same CPU.
    Direct,
    /// The nodes of a Redis Cluster (see [`RedisCluster::service_env`]).
    Cluster(&'a RedisCluster),
}

/// `host:port` of a `postgres://user@host:port/db` or `redis://host:port/` URL (the port
/// defaults to the scheme's: 5432 or 6379).
fn host_port(url: &str) -> Option<String> {
    let url = Url::parse(url).ok()?;
    let host = url.host_str().filter(|host| !host.is_empty())?;
    let default_port = if url.scheme().starts_with("redis") { 6379 } else { 5432 };
    Some(format!("{host}:{}", url.port().unwrap_or(default_port)))
}

/// `url` with its host and port replaced by `addr`'s (user, password, database and query kept).
fn replace_host_port(url: &str, addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let cannot = |()| anyhow::anyhow!("{url} has no host to replace");
    let mut url = Url::parse(url)?;
    url.set_ip_host(addr.ip()).map_err(cannot)?;
    url.set_port(Some(addr.port())).map_err(cannot)?;
    Ok(url.into())
}

/// A free TCP port on 127.0.0.1 (the OS picks it; a tiny race with other processes is accepted).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Where `name` is on PATH, if it is.
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| p.is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_found_with_and_without_user_and_port() {
        assert_eq!(host_port("postgres://kata@127.0.0.1:5555/kata").as_deref(), Some("127.0.0.1:5555"));
        assert_eq!(host_port("postgres://u:p@db/x?sslmode=disable").as_deref(), Some("db:5432"));
        assert_eq!(host_port("postgresql://db").as_deref(), Some("db:5432"));
        assert_eq!(host_port("postgres:///x"), None);
        assert_eq!(host_port("not a url"), None);
    }

    #[test]
    fn a_redis_url_without_a_port_is_on_6379() {
        assert_eq!(host_port("redis://127.0.0.1:6380/").as_deref(), Some("127.0.0.1:6380"));
        assert_eq!(host_port("redis://cache").as_deref(), Some("cache:6379"));
        assert_eq!(host_port("redis://:secret@cache/2").as_deref(), Some("cache:6379"));
        assert_eq!(host_port("rediss://user:secret@cache:6390/0").as_deref(), Some("cache:6390"));
    }

    #[test]
    fn replacing_host_port_keeps_user_database_and_query() {
        let proxy = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            replace_host_port("postgres://u:p@db:5432/x?sslmode=disable", proxy).unwrap(),
            "postgres://u:p@127.0.0.1:9/x?sslmode=disable"
        );
        assert_eq!(replace_host_port("redis://:secret@cache:6379/2", proxy).unwrap(), "redis://:secret@127.0.0.1:9/2");
        assert_eq!(replace_host_port("redis://cache", proxy).unwrap(), "redis://127.0.0.1:9");
        assert_eq!(replace_host_port("postgres://db", "[::1]:7".parse().unwrap()).unwrap(), "postgres://[::1]:7");
    }
}
