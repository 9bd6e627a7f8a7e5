//! Stage-2's bar: the cache, measured from Redis itself and from pg_stat_statements.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::json;

use super::{Run, normalise};
use crate::pgss;
use crate::report::{Check, Report};

/// The TTL window the reference stages use (`CACHE_TTL_SECS` ± `CACHE_TTL_JITTER_PCT`).
const TTL_SECS: f64 = 300.0;
const JITTER: f64 = 0.10;

const DOC: &str = "docs/stage-2.md";

/// Stage-2's checks, in the order they run (`redis_down` runs last of all: see `verify`).
pub const CHECKS: [&str; 5] =
    ["cache.hit_ratio", "cache.ttl_jitter", "cache.warm_read_statements", "cache.invalidation", "cache.stampede"];

pub async fn run(run: &mut Run<'_>, report: &mut Report) {
    let [hit_ratio, ttl] = hit_ratio(run, report)
        .await
        .unwrap_or_else(|e| [Check::errored("cache.hit_ratio", &e), Check::errored("cache.ttl_jitter", &e)]);
    let checks = [
        hit_ratio,
        ttl,
        warm_read(run).await.unwrap_or_else(|e| Check::errored("cache.warm_read_statements", &e)),
        invalidation(run).await.unwrap_or_else(|e| Check::errored("cache.invalidation", &e)),
        stampede(run, report).await.unwrap_or_else(|e| Check::errored("cache.stampede", &e)),
    ];
    for check in checks {
        report.push(check);
    }
    if let Err(e) = hit_vs_miss_latency(run, report).await {
        report.diagnosis.push(format!("hit and miss latency not measured: {e:#}"));
    }
}

/// What a hit saves: 50 cold reads (a miss: Redis, then the one statement, then the fill), each
/// followed by a warm read of the same feed, side by side. Reported, not asserted.
async fn hit_vs_miss_latency(run: &Run<'_>, report: &mut Report) -> anyhow::Result<()> {
    run.env.flush_redis().await?;
    let (mut misses, mut hits) = (Vec::new(), Vec::new());
    for &user in run.users.full(120, 50) {
        let token = run.token(user);
        for samples in [&mut misses, &mut hits] {
            let started = Instant::now();
            let reply = run.api.feed(&token, "").await?;
            anyhow::ensure!(reply.status == 200, "feed returned {}", reply.status);
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (miss_p50, _) = super::percentiles(misses);
    let (hit_p50, _) = super::percentiles(hits);
    report.metric("cache_miss_p50_ms", miss_p50);
    report.metric("cache_hit_p50_ms", hit_p50);
    report
        .diagnosis
        .push(format!("cache miss vs hit, same 50 feeds read cold then warm: p50 {miss_p50:.2} ms vs {hit_p50:.2} ms"));
    Ok(())
}

/// `keyspace_hits` and `keyspace_misses` from `INFO stats`.
async fn keyspace(run: &Run<'_>) -> anyhow::Result<(u64, u64)> {
    let mut conn = run.env.redis_conn().await?;
    let info: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await?;
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    Ok((field("keyspace_hits"), field("keyspace_misses")))
}

/// A realistic read mix: 50 users each refreshing their feed 40 times, 8 requests in flight.
async fn hit_ratio(run: &mut Run<'_>, report: &mut Report) -> anyhow::Result<[Check; 2]> {
    const USERS: usize = 50;
    const READS: usize = 40;
    run.env.flush_redis().await?;
    let users = run.users.full(40, USERS).to_vec();
    let tokens: Vec<String> = users.iter().map(|&u| run.token(u)).collect();
    let service_before = run.service_counters().await;
    let (hits_before, misses_before) = keyspace(run).await?;
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter((0..USERS * READS).map(|i| &tokens[i % USERS]))
        .map(|token| async { run.api.feed(token, "").await.map_or(0, |r| r.status) })
        .buffer_unordered(8)
        .collect()
        .await;
    let window = started.elapsed();
    let (hits_after, misses_after) = keyspace(run).await?;
    let service_after = run.service_counters().await;
    let (hits, misses) = (hits_after - hits_before, misses_after - misses_before);
    let ratio = if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 };
    let delta = |name: &str| service_after.get(name).unwrap_or(&0.0) - service_before.get(name).unwrap_or(&0.0);
    let (service_hits, service_misses) = (delta("cache_hits_total"), delta("cache_misses_total"));
    let service_ratio = (service_hits + service_misses > 0.0).then(|| service_hits / (service_hits + service_misses));
    report.metric("hit_ratio", ratio);
    report.metric("keyspace_hits", hits);
    report.metric("keyspace_misses", misses);
    if let Some(service_ratio) = service_ratio {
        report.metric("service_hit_ratio", service_ratio);
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();

    // The keys this window wrote are what the TTL check inspects.
    let ttl = ttl_check(run, window).await.unwrap_or_else(|e| Check::errored("cache.ttl_jitter", &e));

    let summary = if hits + misses == 0 {
        format!("Redis saw no reads during {} feed requests: the feed never asks the cache", USERS * READS)
    } else {
        // INFO counts every key lookup, not feed reads: the fill script's check of its lock is a
        // hit too (one per miss). The service's own counters count feed reads only.
        format!(
            "{:.1}% hits in Redis INFO (keyspace_hits +{hits}, keyspace_misses +{misses}, over {} feed reads of {USERS} users){}",
            ratio * 100.0,
            USERS * READS,
            service_ratio.map_or(String::new(), |r| format!("; the service's own counters say {:.1}%", r * 100.0))
        )
    };
    let check = Check::new("cache.hit_ratio", ratio >= 0.95 && ok == USERS * READS, ratio, ">= 0.95", summary)
        .evidence(format!(
            "{ok} of {} requests returned 200; keyspace_hits +{hits}, keyspace_misses +{misses}",
            USERS * READS
        ))
        .on_failure(
            "cache-aside: GET the timeline's key first; on a miss read Postgres and SET the result with a TTL",
            "docs/stage-2.md#cache-aside",
        );
    Ok([check, ttl])
}

/// Every key holding a feed (its name contains `feed`, locks excluded) has a TTL inside the
/// configured window, and the TTLs spread wider than the time it took to write them.
async fn ttl_check(run: &Run<'_>, window: Duration) -> anyhow::Result<Check> {
    const NAME: &str = "cache.ttl_jitter";
    let mut conn = run.env.redis_conn().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*feed*").query_async(&mut conn).await?;
    let mut ttls = Vec::new();
    for key in keys.iter().filter(|k| !k.contains("lock")) {
        let ms: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await?;
        ttls.push(ms as f64 / 1000.0);
    }
    if ttls.is_empty() {
        return Ok(Check::new(
            NAME,
            false,
            json!({"keys": 0}),
            "cached feeds with a TTL",
            "no cached feed keys (names containing `feed`) found in Redis",
        )
        .on_failure("store each feed under a key containing `feed`, with an expiry (SET … EX)", DOC));
    }
    ttls.sort_by(f64::total_cmp);
    let (min, max) = (ttls[0], ttls[ttls.len() - 1]);
    let low = TTL_SECS * (1.0 - JITTER) - window.as_secs_f64() - 1.0;
    let high = TTL_SECS * (1.0 + JITTER);
    let spread = max - min;
    let in_window = min >= low && max <= high;
    // Without jitter, keys written over `window` seconds differ by at most about that much.
    let jittered = spread > window.as_secs_f64() + 1.0;
    Ok(Check::new(
        NAME,
        in_window && jittered,
        json!({ "keys": ttls.len(), "min_s": min.round(), "max_s": max.round(), "spread_s": spread.round() }),
        json!({ "window_s": [low.round(), high], "spread_s": format!("> {:.0}", window.as_secs_f64() + 1.0) }),
        format!(
            "{} keys, TTLs {min:.0}..{max:.0} s (window {low:.0}..{high:.0} s), spread {spread:.0} s across keys written within {:.0} s",
            ttls.len(),
            window.as_secs_f64()
        ),
    )
    .on_failure(
        if in_window { "all keys expire together: add random jitter (e.g. ±10%) to each TTL" } else { "the TTL should come from the freshness requirement: 300 s ± 10% by default" },
        "docs/stage-2.md#choosing-the-ttl",
    ))
}

/// A warm key is served without SQL.
async fn warm_read(run: &Run<'_>) -> anyhow::Result<Check> {
    let user = run.users.full(100, 1)[0];
    let token = run.token(user);
    run.api.feed(&token, "").await?;
    let before = pgss::snapshot(&run.env.admin).await?;
    for _ in 0..5 {
        run.api.feed(&token, "").await?;
    }
    let after = pgss::snapshot(&run.env.admin).await?;
    let statements = pgss::delta(&before, &after);
    let count = pgss::total_calls(&statements);
    Ok(Check::new(
        "cache.warm_read_statements",
        count == 0,
        count,
        0,
        format!("{count} SQL statements for 5 reads of a warm feed"),
    )
    .evidence(pgss::table(&statements, 4))
    .on_failure("a hit must be answered from Redis alone", DOC))
}

/// A post shows at once, even when the feed was cached.
async fn invalidation(run: &Run<'_>) -> anyhow::Result<Check> {
    let [owner, author] = [run.users.full(101, 1)[0], run.users.full(102, 1)[0]];
    let token = run.token(owner);
    run.api.feed(&token, "").await?;
    run.api.feed(&token, "").await?;
    let body = serde_json::json!({ "user_id": owner, "body": "fresh from the checker" });
    let created = run.api.send(run.api.post("/api/posts").bearer_auth(run.token(author)).json(&body)).await?;
    let post_id = created.json().map(|p| p["id"].clone()).unwrap_or_default();
    let read = run.api.feed(&token, "").await?;
    let first = read.json().map(|f| f["items"][0]["id"].clone()).unwrap_or_default();
    Ok(Check::new(
        "cache.invalidation",
        created.status == 201 && first == post_id,
        json!({ "first_item_after_post": first }),
        json!({ "first_item_after_post": post_id }),
        "a post to a cached timeline is first on the next read",
    )
    .evidence(format!("POST → {} {}; next feed → first id {first}", created.status, created.text()))
    .on_failure(
        "the write path must delete the owner's cached feed after the insert commits",
        "docs/stage-2.md#invalidation",
    ))
}

/// 120 concurrent requests for one cold key: at most one of them may reach Postgres.
async fn stampede(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const CONCURRENT: usize = 120;
    let user = run.users.full(103, 1)[0];
    let token = run.token(user);
    run.env.flush_redis().await?;
    let before = pgss::snapshot(&run.env.admin).await?;
    let replies = futures::future::join_all((0..CONCURRENT).map(|_| run.api.feed(&token, ""))).await;
    let after = pgss::snapshot(&run.env.admin).await?;
    let statements = pgss::delta(&before, &after);
    let count = pgss::total_calls(&statements);
    let expected = normalise(run.oracle(user, 20).await?);
    let correct = replies
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status == 200 && r.json().map(normalise).as_ref() == Some(&expected)))
        .count();
    report.metric("stampede_statements", count);
    Ok(Check::new(
        "cache.stampede",
        count <= 1 && correct == CONCURRENT,
        json!({ "statements": count, "correct_responses": correct }),
        json!({ "statements": "<= 1", "correct_responses": CONCURRENT }),
        format!("{CONCURRENT} concurrent requests for one cold feed ran {count} SQL statement(s); {correct} correct responses"),
    )
    .evidence(pgss::table(&statements, 4))
    .on_failure(
        "let one request recompute a missing key (a short Redis lock: SET key:lock NX PX) while the others wait for its value",
        "docs/stage-2.md#stampedes",
    ))
}

/// Stop Redis: the feed must still answer from Postgres. Start it: hits must come back.
pub async fn redis_down(run: &mut Run<'_>, report: &mut Report) {
    const NAME: &str = "redis_down";
    if run.launch.is_none() {
        report.push(Check::not_proven(
            NAME,
            "the checker did not start this service, so it cannot watch it through a Redis outage it causes",
        ));
        return;
    }
    if run.env.services.owned_redis().is_none() {
        report.push(Check::not_proven(
            NAME,
            "REDIS_URL points at a Redis the checker did not start; it will not stop yours (unset REDIS_URL)",
        ));
        return;
    }
    let result: anyhow::Result<Check> = async {
        let user = run.users.full(110, 1)[0];
        let token = run.token(user);
        let free = run.env.token(run.users.full(111, 1)[0], feed_core::auth::Tier::Free);
        run.env.services.owned_redis().expect("checked above").stop();
        let started = Instant::now();
        let down = run.api.feed(&token, "").await?;
        let down_ms = started.elapsed().as_secs_f64() * 1000.0;
        let expected = normalise(run.oracle(user, 20).await?);
        let correct = down.status == 200 && down.json().map(normalise) == Some(expected);
        let limited = if run.bar >= crate::StageId::Stage3 { Some(run.api.feed(&free, "").await?.status) } else { None };
        run.env.services.owned_redis().expect("checked above").restart().await?;
        // Hits resume without a restart of the service: read the same feed until Redis reports a hit.
        let mut attempts = 0;
        let resumed = loop {
            attempts += 1;
            let (hits, _) = keyspace(run).await?;
            run.api.feed(&token, "").await?;
            run.api.feed(&token, "").await?;
            if keyspace(run).await?.0 > hits {
                break true;
            }
            if attempts == 30 {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        report.metric("redis_down_feed_ms", down_ms);
        let limiter_ok = limited.is_none_or(|s| s == 200);
        Ok(Check::new(
            NAME,
            correct && resumed && limiter_ok,
            json!({ "status_while_down": down.status, "correct": correct, "free_tier_status_while_down": limited, "hits_resumed_after_attempts": resumed.then_some(attempts) }),
            json!({ "status_while_down": 200, "correct": true, "free_tier_status_while_down": limited.map(|_| 200), "hits_resumed_after_attempts": "<= 30" }),
            format!(
                "Redis stopped: feed {} ({}) in {down_ms:.0} ms{}; Redis back: {}",
                down.status,
                if correct { "correct" } else { "wrong" },
                limited.map_or(String::new(), |s| format!(", free-tier request {s} (fail open)")),
                if resumed { format!("cache hits again after {attempts} attempt(s)") } else { "no cache hits after 30 attempts".into() }
            ),
        )
        .evidence(format!("while down: {} {}", down.status, down.text().chars().take(200).collect::<String>()))
        .on_failure(
            "treat Redis errors and timeouts as a miss: read Postgres, log, count it, never 5xx; reconnect without a restart",
            "docs/stage-2.md#when-redis-fails",
        ))
    }
    .await;
    if let Some(redis) = run.env.services.owned_redis().filter(|r| !r.is_running()) {
        let _ = redis.restart().await;
    }
    report.push(result.unwrap_or_else(|e| Check::errored(NAME, &e)));
}
