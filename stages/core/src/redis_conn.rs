//! The service's Redis: one server (the default), or a Redis Cluster when `REDIS_CLUSTER_NODES`
//! is set. Stages talk to either the same way; what a cluster changes is which keys may meet in
//! one command (see docs/scale-out.md: hash tags).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A cheap-to-clone handle that reconnects by itself.
#[derive(Clone)]
pub enum RedisConn {
    /// One server. Connects on first use, so the service starts without Redis and serves what
    /// it can.
    Single(ConnectionManager),
    /// A cluster: commands go to the master of their key's slot; the client follows `MOVED`
    /// when slots move (a failover) and refreshes its slot map.
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Connect to `url`, or to the cluster of `cluster_nodes` (comma-separated `redis://` URLs,
    /// any reachable one is enough) when given. Every call may take up to `timeout`.
    pub async fn connect(url: &str, cluster_nodes: Option<&str>, timeout: Duration) -> anyhow::Result<Self> {
        match cluster_nodes {
            None => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                Ok(Self::Single(redis::Client::open(url)?.get_connection_manager_lazy(config)?))
            }
            Some(nodes) => {
                let nodes: Vec<&str> = nodes.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()?;
                // The client needs the slot map before its first command: unlike one server, a
                // cluster that no listed node can describe is an error at start, said clearly.
                let connection = tokio::time::timeout(Duration::from_secs(5), client.get_async_connection())
                    .await
                    .map_err(|_| anyhow::anyhow!("no node of REDIS_CLUSTER_NODES answered within 5 s: {nodes:?}"))?
                    .map_err(|e| anyhow::anyhow!("cannot reach the Redis Cluster at {nodes:?}: {e}"))?;
                Ok(Self::Cluster(connection))
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
