//! `--instances N --redis-cluster`: the target as several instances behind HAProxy, on the one
//! Redis or on a Redis Cluster of 3 masters and 3 replicas, and how a run's load spread over
//! them: requests per instance (HAProxy's own statistics) and commands per Redis node.

use std::path::Path;

use kata_services::{AppProcess, Haproxy, Implementation, RedisCluster, ServiceRedis};
use serde::Serialize;

use crate::harness::{Environment, start_target};
use crate::progress::say;

pub struct ScaleOut {
    balancer: Haproxy,
    processes: Vec<AppProcess>,
    cluster: Option<RedisCluster>,
    /// The one Redis, when there is no cluster.
    redis_url: String,
}

/// How one run spread: each instance's requests and each Redis node's commands (a replica's
/// are the writes it applied from its master).
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub instances: Vec<(String, u64)>,
    pub redis_nodes: Vec<(String, u64)>,
}

/// Counters read at one moment; a run's [`Spread`] is the difference of two.
pub struct Counters {
    instances: Vec<(String, u64)>,
    /// By address; the roles (cluster nodes only) label them in the spread.
    redis_nodes: Vec<(String, u64)>,
    roles: Vec<(String, &'static str)>,
}

impl ScaleOut {
    pub async fn start(
        bin_dir: &Path,
        target: Implementation,
        env: &Environment,
        jwt_secret: &str,
        instances: u8,
        redis_cluster: bool,
    ) -> anyhow::Result<Self> {
        let cluster = if redis_cluster {
            say("starting a Redis Cluster of 3 masters and 3 replicas...");
            Some(RedisCluster::start(3, 1).await?)
        } else {
            None
        };
        let redis = cluster.as_ref().map_or(ServiceRedis::Direct, ServiceRedis::Cluster);
        let mut processes = Vec::new();
        for _ in 0..instances {
            processes.push(start_target(bin_dir, target, env, jwt_secret, redis, &[]).await?);
        }
        let backends: Vec<String> =
            processes.iter().map(|p| p.base_url.trim_start_matches("http://").to_owned()).collect();
        let balancer = Haproxy::start(None, &backends).await?;
        say(format!("HAProxy balances {instances} instance(s) of {target} round-robin on {}", balancer.base_url()));
        Ok(Self { balancer, processes, cluster, redis_url: env.services.redis_url.clone() })
    }

    /// Where the load goes: the balancer.
    pub fn base_url(&self) -> String {
        self.balancer.base_url()
    }

    /// Each instance, reached directly (for its /metrics).
    pub fn instance_urls(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.base_url.clone()).collect()
    }

    pub async fn counters(&self) -> anyhow::Result<Counters> {
        let instances = self.balancer.backends().await?.into_iter().map(|b| (b.name, b.requests)).collect();
        let (urls, masters) = match &self.cluster {
            Some(cluster) => {
                (cluster.nodes_csv().split(',').map(str::to_owned).collect(), Some(cluster.master_urls().await?))
            }
            None => (vec![self.redis_url.clone()], None),
        };
        let (mut redis_nodes, mut roles) = (Vec::new(), Vec::new());
        for url in urls {
            let mut node = kata_services::quiet_client(&url)?.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("INFO").arg("stats").query_async(&mut node).await?;
            let commands = info
                .lines()
                .find_map(|l| l.strip_prefix("total_commands_processed:")?.trim().parse().ok())
                .unwrap_or(0);
            let address = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
            if let Some(masters) = &masters {
                roles.push((address.clone(), if masters.contains(&url) { "master" } else { "replica" }));
            }
            redis_nodes.push((address, commands));
        }
        Ok(Counters { instances, redis_nodes, roles })
    }
}

impl Spread {
    pub fn between(before: &Counters, after: &Counters) -> Self {
        let delta = |before: &[(String, u64)], after: &[(String, u64)]| -> Vec<(String, u64)> {
            after
                .iter()
                .map(|(name, n)| {
                    let was = before.iter().find(|(b, _)| b == name).map_or(0, |(_, n)| *n);
                    (name.clone(), n.saturating_sub(was))
                })
                .collect()
        };
        // Matched by address; labelled with the role each node has at the end of the run.
        let redis_nodes = delta(&before.redis_nodes, &after.redis_nodes)
            .into_iter()
            .map(|(address, n)| match after.roles.iter().find(|(a, _)| *a == address) {
                Some((_, role)) => (format!("{address} ({role})"), n),
                None => (address, n),
            })
            .collect();
        Self { instances: delta(&before.instances, &after.instances), redis_nodes }
    }

    /// "instance-1 33,210 (33.3 %), instance-2 …": a name, a count and its share, per entry.
    pub fn shares(entries: &[(String, u64)]) -> String {
        let total: u64 = entries.iter().map(|(_, n)| n).sum();
        entries
            .iter()
            .map(|(name, n)| {
                let share = if total == 0 { 0.0 } else { *n as f64 * 100.0 / total as f64 };
                format!("{name} {} ({share:.1} %)", crate::harness::thousands(*n as i64))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_is_the_difference_per_name_with_shares() {
        let named = |v: &[(&str, u64)]| v.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect::<Vec<_>>();
        let before = Counters {
            instances: named(&[("instance-1", 10), ("instance-2", 12)]),
            redis_nodes: named(&[("127.0.0.1:7000", 5)]),
            roles: vec![("127.0.0.1:7000".into(), "replica")],
        };
        let after = Counters {
            instances: named(&[("instance-1", 40), ("instance-2", 42)]),
            redis_nodes: named(&[("127.0.0.1:7000", 9)]),
            // Promoted during the run: still the same node.
            roles: vec![("127.0.0.1:7000".into(), "master")],
        };
        let spread = Spread::between(&before, &after);
        assert_eq!(spread.instances, named(&[("instance-1", 30), ("instance-2", 30)]));
        assert_eq!(spread.redis_nodes, named(&[("127.0.0.1:7000 (master)", 4)]));
        assert_eq!(Spread::shares(&spread.instances), "instance-1 30 (50.0 %), instance-2 30 (50.0 %)");
    }
}
