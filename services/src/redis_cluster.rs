//! A throwaway Redis Cluster: `masters` masters with `replicas` replicas each, every node a real
//! `redis-server` on a free port, joined with `redis-cli --cluster create`.
//!
//! A node can be killed as a crash would kill it, so the checker can watch the cluster promote a
//! replica and the service ride through the failover.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use crate::wait::{self, Look};

/// How long a master may be unreachable before its replica takes over. Production clusters use
/// seconds too (the default is 15 s); 2 s keeps a failover check short.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(2);

struct Node {
    port: u16,
    /// The cluster bus (node-to-node gossip); by default port + 10000, which can be taken or
    /// beyond 65535 for a free port, so it gets a free port of its own.
    bus_port: u16,
    child: Option<Child>,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Start `masters × (1 + replicas)` nodes and form the cluster; ready when every node reports
    /// `cluster_state:ok`. At least 3 masters: a cluster needs a majority of masters to agree
    /// that one of them failed.
    pub async fn start(masters: usize, replicas: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(masters >= 3, "a Redis Cluster needs at least 3 masters to fail over (got {masters})");
        crate::on_path("redis-server").context("redis-server was not found on PATH (apt-get install redis-server)")?;
        crate::on_path("redis-cli").context("redis-cli was not found on PATH (apt-get install redis-tools)")?;
        let dir = tempfile::Builder::new().prefix("kata-redis-cluster-").tempdir()?;
        let mut cluster = Self { nodes: Vec::new(), dir };
        for _ in 0..masters * (1 + replicas) {
            let (port, bus_port) = (crate::free_port()?, crate::free_port()?);
            cluster.nodes.push(Node { port, bus_port, child: None });
            cluster.spawn(port)?;
        }
        for node in &cluster.nodes {
            wait_for_ping(node.port).await?;
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addresses)
                .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("redis-cli --cluster create did not finish within 30 s"))?
        .context("running redis-cli --cluster create")?;
        if !created.status.success() {
            bail!(
                "redis-cli --cluster create failed ({}):\n{}{}",
                created.status,
                String::from_utf8_lossy(&created.stdout),
                String::from_utf8_lossy(&created.stderr)
            );
        }
        cluster.wait_until_ok(Duration::from_secs(20)).await?;
        // Replicas are assigned after the slots, and a replica that never synced with its master
        // refuses to take over from it: wait until every replica's link to its master is up.
        let settled = async || -> anyhow::Result<Look<(), ()>> {
            Ok(Look::when(
                cluster.masters().await?.len() == masters && cluster.synced_replicas().await == masters * replicas,
            ))
        };
        let timed_out = |()| anyhow!("the Redis Cluster did not settle on {masters} masters within 20 s");
        wait::until(Duration::from_secs(20), Duration::from_millis(50), settled, timed_out).await?;
        Ok(cluster)
    }

    /// Replicas whose replication link to their master is up (`INFO replication`).
    async fn synced_replicas(&self) -> usize {
        let mut synced = 0;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let info = query(node.port, &redis::cmd("INFO").arg("replication").clone()).await.unwrap_or_default();
            synced += usize::from(info.contains("role:slave") && info.contains("master_link_status:up"));
        }
        synced
    }

    fn spawn(&mut self, port: u16) -> anyhow::Result<()> {
        let dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&dir)?;
        let bus_port = self.nodes.iter().find(|n| n.port == port).expect("a node of this cluster").bus_port;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--cluster-port", &bus_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT.as_millis().to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server in cluster mode")?;
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        node.child = Some(child);
        Ok(())
    }

    /// Every node's `redis://127.0.0.1:PORT/`, comma-separated: what a cluster client is given
    /// (`REDIS_CLUSTER_NODES`). Any one reachable node is enough for it to learn the rest.
    pub fn nodes_csv(&self) -> String {
        self.nodes.iter().map(|n| node_url(n.port)).collect::<Vec<_>>().join(",")
    }

    /// Ports of the nodes that are masters now, as the cluster itself reports (`CLUSTER NODES`
    /// from a live node), in port order.
    pub async fn masters(&self) -> anyhow::Result<Vec<u16>> {
        let text = self.query_any(redis::cmd("CLUSTER").arg("NODES")).await?;
        let mut masters: Vec<u16> = text
            .lines()
            .filter(|line| {
                let flags = line.split(' ').nth(2).unwrap_or("");
                flags.contains("master") && !flags.contains("fail")
            })
            .filter_map(|line| line.split(' ').nth(1)?.split('@').next()?.rsplit(':').next()?.parse().ok())
            .collect();
        masters.sort_unstable();
        Ok(masters)
    }

    /// What a service is given to use this cluster: `REDIS_CLUSTER_NODES` (every node), and
    /// `REDIS_URL` set to one of them, since a service requires it and should not be handed a
    /// Redis of its own that it could use instead without anyone noticing.
    pub fn service_env(&self) -> [(String, String); 2] {
        let nodes = self.nodes_csv();
        let first = nodes.split(',').next().unwrap_or_default().to_owned();
        [("REDIS_URL".into(), first), ("REDIS_CLUSTER_NODES".into(), nodes)]
    }

    /// Each live master's `redis://` URL, in port order: where a cluster's data is. Per-node
    /// commands (`INFO`, `KEYS`, `FLUSHALL`) go to each of these.
    pub async fn master_urls(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.masters().await?.into_iter().map(node_url).collect())
    }

    /// The port of the master that serves `key` now (`CLUSTER KEYSLOT`, then `CLUSTER SLOTS`).
    pub async fn owner_of(&self, key: &str) -> anyhow::Result<u16> {
        let port = self.nodes.iter().find(|n| n.child.is_some()).map(|n| n.port).context("no node is running")?;
        let client = quiet_client(&node_url(port))?;
        let mut conn =
            tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection()).await??;
        let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut conn).await?;
        let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await?;
        slot_owner(&slots, slot).with_context(|| format!("no master serves slot {slot} (of key {key})"))
    }

    /// Kill every node: the whole cluster is unreachable, as one Redis is when it stops.
    pub fn stop_all(&mut self) {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        for port in ports {
            self.kill(port);
        }
    }

    /// Start every stopped node again on its port, with its own `nodes.conf`: the cluster comes
    /// back with the same slots and roles, and (no persistence) without data. Returns once every
    /// node says `cluster_state:ok`.
    pub async fn restart_stopped(&mut self) -> anyhow::Result<()> {
        let stopped: Vec<u16> = self.nodes.iter().filter(|n| n.child.is_none()).map(|n| n.port).collect();
        for &port in &stopped {
            self.spawn(port)?;
        }
        for port in stopped {
            wait_for_ping(port).await?;
        }
        self.wait_until_ok(Duration::from_secs(30)).await?;
        Ok(())
    }

    /// Kill one node as a crash would (SIGKILL, no goodbye to its replicas or clients).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait until every running node says `cluster_state:ok` (all 16384 slots served).
    pub async fn wait_until_ok(&self, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let all_ok = async || -> anyhow::Result<Look<(), ()>> {
            let mut all_ok = true;
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                let info = query(node.port, &redis::cmd("CLUSTER").arg("INFO").clone()).await.unwrap_or_default();
                all_ok &= info.contains("cluster_state:ok");
            }
            Ok(Look::when(all_ok))
        };
        let timed_out = |()| anyhow!("the Redis Cluster did not reach cluster_state:ok within {} s", limit.as_secs());
        wait::until(limit, Duration::from_millis(50), all_ok, timed_out).await?;
        Ok(started.elapsed())
    }

    /// After `dead` was killed: wait until a replica took over its slots (the cluster lists
    /// `masters` live masters, none of them `dead`, and says `cluster_state:ok` again). Returns
    /// how long that took from the call.
    pub async fn wait_for_failover(&self, dead: u16, masters: usize, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let taken_over = async || -> anyhow::Result<Look<(), Vec<u16>>> {
            let now = self.masters().await.unwrap_or_default();
            Ok(if now.len() == masters && !now.contains(&dead) { Look::Ready(()) } else { Look::NotYet(now) })
        };
        let timed_out = |now: Vec<u16>| {
            anyhow!(
                "no replica took over from the master on port {dead} within {} s (masters now: {now:?})",
                limit.as_secs()
            )
        };
        wait::until(limit, Duration::from_millis(50), taken_over, timed_out).await?;
        self.wait_until_ok(limit.saturating_sub(started.elapsed())).await?;
        Ok(started.elapsed())
    }

    async fn query_any(&self, cmd: &mut redis::Cmd) -> anyhow::Result<String> {
        let mut last = None;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            match query(node.port, cmd).await {
                Ok(text) => return Ok(text),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no node of the cluster is running")))
    }
}

/// The port of the master serving `slot`, from a `CLUSTER SLOTS` reply (ranges of slots, each
/// with its master's address first).
fn slot_owner(slots: &redis::Value, slot: i64) -> Option<u16> {
    let redis::Value::Array(ranges) = slots else { return None };
    ranges.iter().find_map(|range| {
        let redis::Value::Array(fields) = range else { return None };
        let (redis::Value::Int(start), redis::Value::Int(end)) = (fields.first()?, fields.get(1)?) else { return None };
        if !(*start..=*end).contains(&slot) {
            return None;
        }
        let redis::Value::Array(master) = fields.get(2)? else { return None };
        match master.get(1)? {
            redis::Value::Int(port) => u16::try_from(*port).ok(),
            _ => None,
        }
    })
}

/// The `redis://` URL of the node on `port` (a node of a cluster started here).
pub fn node_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

/// A client for `url` that does not offer `CLIENT SETINFO` when it connects: Redis 7.0 answers
/// that 7.2 command with an error, and a measuring tool's own connections must not show up in
/// the error counts (`INFO errorstats`) it reports of a service.
pub fn quiet_client(url: &str) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo as _;
    let info = url.into_connection_info()?;
    let quiet = info.redis_settings().clone().set_skip_set_lib_name();
    redis::Client::open(info.set_redis_settings(quiet))
}

/// One command to one node (not through a cluster client: `CLUSTER …` and `INFO` are per node).
async fn query(port: u16, cmd: &redis::Cmd) -> anyhow::Result<String> {
    let client = quiet_client(&node_url(port))?;
    let mut conn = tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection()).await??;
    let reply: redis::Value = tokio::time::timeout(Duration::from_secs(2), cmd.query_async(&mut conn)).await??;
    Ok(match reply {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        redis::Value::SimpleString(text) => text,
        other => format!("{other:?}"),
    })
}

async fn wait_for_ping(port: u16) -> anyhow::Result<()> {
    wait::until_ok(Duration::from_secs(10), Duration::from_millis(20), async || query(port, &redis::cmd("PING")).await)
        .await
        .map_err(|e| anyhow!("redis-server on port {port} did not answer within 10 s: {e}"))?;
    Ok(())
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
