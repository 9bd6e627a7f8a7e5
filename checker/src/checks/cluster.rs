//! The scale-out topology's own check (`verify --topology cluster`): a Redis Cluster master dies
//! while the feed is being read through the load balancer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use feed_core::auth::Tier;
use serde_json::json;

use super::Run;
use crate::client::outcome;
use crate::env::{connect_each, info_sum};
use crate::registry::CheckId;
use crate::report::{Check, Report};

const FAILOVER: CheckId = CheckId::ClusterFailover;

/// How long the cluster may take to promote a replica (its node timeout is 2 s).
const PROMOTION_LIMIT: Duration = Duration::from_secs(20);
/// How long after the promotion cache hits may take to come back.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);
/// How often a free-tier read goes out until the promotion.
const FREE_EVERY: Duration = Duration::from_millis(150);

/// What one request saw during the run.
struct Seen {
    free_tier: bool,
    /// The status, or why no answer came.
    status: String,
    at: Instant,
    ms: f64,
}

/// Warm the feeds of some users, kill the master serving their cache hits (SIGKILL), and read
/// through the balancer all along: exempt feed reads (the cache's side) and, until a replica is
/// promoted, free-tier reads (the limiter's side, at a pace that never empties a bucket). Every
/// answer must be 200: the cache bypasses to Postgres while a slot has no master, the limiter
/// fails open (the default `RATE_LIMIT_ON_REDIS_ERROR`). Then cache hits must come back on the
/// promoted replica without a restart.
pub async fn failover(run: &mut Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    let users = run.users.timelines(12)?;
    let tokens = Tokens {
        internal: users.iter().map(|&u| run.token(u)).collect(),
        free: users.iter().map(|&u| run.env.token(u, Tier::Free)).collect(),
    };
    let api = run.api.clone();
    run.env.flush_redis().await?;
    for token in tokens.internal.iter().chain(&tokens.free) {
        api.feed(token, "").await?;
    }
    let cluster = run.env.cluster.as_mut().ok_or_else(|| anyhow::anyhow!("no Redis Cluster in this run"))?;
    let masters_before = cluster.masters().await?;
    let victim = busiest_master(&api, &tokens.internal, &masters_before).await?;

    let shared = Shared {
        stop: AtomicBool::new(false),
        promoted: AtomicBool::new(false),
        steps_done: AtomicUsize::new(0),
        killed_at: Instant::now() + Duration::from_millis(500),
    };
    let killing = async {
        let outcome = kill(cluster, victim, &masters_before, &shared).await;
        // Whatever happened, the reader stops.
        shared.stop.store(true, Ordering::Relaxed);
        outcome
    };
    let (seen, outcome) = tokio::join!(read(&api, &tokens, &shared), killing);
    let outcome = outcome?;
    let masters_after = cluster.masters().await.unwrap_or_default();
    Ok(grade(report, &seen, &outcome, shared.killed_at).evidence(format!(
        "masters before {masters_before:?}, after {masters_after:?}; the killed one had the most cache hits on a warm read ({}); {} requests through the balancer",
        victim.1,
        seen.len()
    )))
}

/// The readers' tokens: exempt (internal), which no limiter reads, and free-tier.
struct Tokens {
    internal: Vec<String>,
    free: Vec<String>,
}

/// What the reader and the killer share.
struct Shared {
    stop: AtomicBool,
    /// Once a replica is promoted, only exempt reads go on: the hits counted then are the
    /// cache's, not a limiter's reads of its buckets.
    promoted: AtomicBool,
    /// Steps the reader has finished: the killer waits for one that started after the flag.
    steps_done: AtomicUsize,
    killed_at: Instant,
}

/// What the kill led to.
struct Outcome {
    /// How long the promotion took, or why it did not happen.
    promoted: anyhow::Result<Duration>,
    /// When cache hits came back on the promoted replica, after the kill.
    resumed: Option<Duration>,
    promoted_to: Vec<u16>,
    victim: u16,
}

/// `keyspace_hits` of the nodes on `ports`, added up.
async fn hits(ports: &[u16]) -> anyhow::Result<u64> {
    let urls: Vec<String> = ports.iter().copied().map(kata_services::node_url).collect();
    let stats = info_sum(connect_each(&urls).await?, "stats").await?;
    Ok(stats.get("keyspace_hits").copied().unwrap_or(0))
}

/// The victim: the master where the warm feeds' cache hits happen (read them again with exempt
/// tokens, which no limiter reads, and see whose hits grow), whatever the implementation names
/// its keys. The port, and how many hits it gained.
async fn busiest_master(api: &crate::client::Api, internal: &[String], masters: &[u16]) -> anyhow::Result<(u16, u64)> {
    let mut before = Vec::new();
    for &port in masters {
        before.push(hits(&[port]).await?);
    }
    for token in internal {
        api.feed(token, "").await?;
    }
    let first = *masters.first().ok_or_else(|| anyhow::anyhow!("the cluster lists no master"))?;
    let mut victim = (first, 0);
    for (&port, was) in masters.iter().zip(before) {
        let grew = hits(&[port]).await?.saturating_sub(was);
        if grew > victim.1 {
            victim = (port, grew);
        }
    }
    Ok(victim)
}

/// Read until told to stop: two exempt reads each step, and a free-tier read every 150 ms or
/// more (until the promotion), each free user in turn: under one a second per user, inside any
/// bucket's refill.
async fn read(api: &crate::client::Api, tokens: &Tokens, shared: &Shared) -> Vec<Seen> {
    let users = tokens.internal.len();
    let mut seen = Vec::new();
    let (mut step, mut free_reads) = (0usize, 0usize);
    let mut last_free: Option<Instant> = None;
    // However the other side ends, the reads stop by then.
    let deadline = shared.killed_at + PROMOTION_LIMIT + RECOVERY_LIMIT + Duration::from_secs(2);
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut requests = vec![(false, &tokens.internal[step % users]), (false, &tokens.internal[(step + 1) % users])];
        if !shared.promoted.load(Ordering::Relaxed) && last_free.is_none_or(|at| at.elapsed() >= FREE_EVERY) {
            requests.push((true, &tokens.free[free_reads % users]));
            free_reads += 1;
            last_free = Some(Instant::now());
        }
        let replies = futures::future::join_all(requests.iter().map(|&(free_tier, token)| async move {
            let started = Instant::now();
            let status = outcome(&api.feed(token, "").await);
            Seen { free_tier, status, at: started, ms: started.elapsed().as_secs_f64() * 1000.0 }
        }))
        .await;
        seen.extend(replies);
        step += 1;
        shared.steps_done.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

/// At `killed_at` (reads before it too, so the run shows the change), SIGKILL the victim; wait
/// for the promotion, then for cache hits on the promoted replica, then a second more.
async fn kill(
    cluster: &mut kata_services::RedisCluster,
    victim: (u16, u64),
    masters_before: &[u16],
    shared: &Shared,
) -> anyhow::Result<Outcome> {
    tokio::time::sleep_until(shared.killed_at.into()).await;
    cluster.kill(victim.0);
    let promoted = cluster.wait_for_failover(victim.0, masters_before.len(), PROMOTION_LIMIT).await;
    let promoted_to: Vec<u16> = cluster.masters().await?.into_iter().filter(|p| !masters_before.contains(p)).collect();
    shared.promoted.store(true, Ordering::Relaxed);
    // A free-tier read already sent could still look its bucket up on the promoted replica:
    // wait until a step that started after the flag is done (two steps on).
    let flagged_at = shared.steps_done.load(Ordering::Relaxed);
    let wait_until = Instant::now() + Duration::from_secs(5);
    while shared.steps_done.load(Ordering::Relaxed) < flagged_at + 2 && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Cache hits again: on the promoted replica, which served no reads until now.
    let mut resumed = None;
    if promoted.is_ok() && !promoted_to.is_empty() {
        let deadline = Instant::now() + RECOVERY_LIMIT;
        let before = hits(&promoted_to).await?;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if hits(&promoted_to).await? > before {
                resumed = Some(shared.killed_at.elapsed());
                break;
            }
        }
    }
    // A second of reads after that, to see them settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Outcome { promoted, resumed, promoted_to, victim: victim.0 })
}

/// Every read answered 200 (the feed's and the free tier's, some of those between the kill and
/// the promotion), a promotion, and cache hits again.
fn grade(report: &mut Report, seen: &[Seen], outcome: &Outcome, killed_at: Instant) -> Check {
    let Outcome { promoted, resumed, promoted_to, victim } = outcome;
    // Free-tier reads sent between the kill and the promotion: the limiter's side of the outage.
    let promoted_at = promoted.as_ref().ok().map(|took| killed_at + *took);
    let free_during =
        seen.iter().filter(|s| s.free_tier && s.at >= killed_at && promoted_at.is_some_and(|at| s.at <= at)).count();
    let statuses = |free_tier: bool| {
        let mut counts = BTreeMap::<&str, usize>::new();
        for s in seen.iter().filter(|s| s.free_tier == free_tier) {
            *counts.entry(&s.status).or_default() += 1;
        }
        counts
    };
    let (feed_statuses, free_statuses) = (statuses(false), statuses(true));
    let all_200 = |counts: &BTreeMap<&str, usize>| !counts.is_empty() && counts.keys().all(|&s| s == "200");
    let slowest = seen.iter().map(|s| s.ms).fold(0.0, f64::max);
    let promoted_ms = promoted.as_ref().ok().map(|d| d.as_millis() as u64);
    let resumed_ms = resumed.map(|d| d.as_millis() as u64);
    report.metric("failover_promoted_ms", promoted_ms);
    report.metric("failover_hits_resumed_ms", resumed_ms);
    report.metric("failover_slowest_request_ms", slowest.round());
    let show =
        |counts: &BTreeMap<&str, usize>| counts.iter().map(|(s, n)| format!("{s} ×{n}")).collect::<Vec<_>>().join(", ");
    let passed =
        promoted.is_ok() && resumed.is_some() && all_200(&feed_statuses) && all_200(&free_statuses) && free_during > 0;
    let summary = match promoted {
        Err(e) => format!("master :{victim} killed: {e:#}"),
        Ok(took) => format!(
            "master :{victim} killed mid-run: replica :{} promoted after {} ms; feed reads {}; free-tier reads {} ({free_during} before the promotion); {}; slowest request {slowest:.0} ms",
            promoted_to.first().map_or("?".into(), u16::to_string),
            took.as_millis(),
            show(&feed_statuses),
            show(&free_statuses),
            match resumed {
                Some(at) => format!("cache hits again {} ms after the kill", at.as_millis()),
                None => format!("no cache hit on the promoted replica within {} s", RECOVERY_LIMIT.as_secs()),
            },
        ),
    };
    Check::new(
        FAILOVER,
        passed,
        json!({ "promoted_ms": promoted_ms, "hits_resumed_ms": resumed_ms, "feed_statuses": feed_statuses, "free_tier_statuses": free_statuses, "free_tier_reads_before_promotion": free_during }),
        json!({ "promoted_ms": format!("<= {}", PROMOTION_LIMIT.as_millis()), "hits_resumed": true, "feed_statuses": "200 only", "free_tier_statuses": "200 only (RATE_LIMIT_ON_REDIS_ERROR=open)", "free_tier_reads_before_promotion": ">= 1" }),
        summary,
    )
}
