//! Stage-2's bar: the cache, measured from Redis itself and from pg_stat_statements.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::json;

use feed_core::contract;

use super::{Run, normalise};
use crate::pgss;
use crate::report::{Check, Expectation, Report};

/// The TTL window the stages default to (`CACHE_TTL_SECS` ± `CACHE_TTL_JITTER_PCT`).
const TTL_SECS: f64 = contract::CACHE_TTL_SECS as f64;
const JITTER: f64 = contract::CACHE_TTL_JITTER_PCT as f64 / 100.0;

const DOC: &str = "docs/stage-2.md";

/// Stage-2's checks, in the order they run (`redis_down` runs last of all: see `verify`).
pub const CHECKS: [&str; 7] = [
    "cache.hit_ratio",
    "cache.ttl_jitter",
    "cache.warm_read_statements",
    "cache.invalidation",
    "cache.race_fill_vs_post",
    "cache.race_read_during_post",
    "cache.stampede",
];

pub async fn run(run: &mut Run<'_>, report: &mut Report) {
    let [hit_ratio, ttl] = hit_ratio(run, report)
        .await
        .unwrap_or_else(|e| [Check::errored("cache.hit_ratio", &e), Check::errored("cache.ttl_jitter", &e)]);
    let caches = caches(run).await.unwrap_or(false);
    let checks = [
        hit_ratio,
        ttl,
        warm_read(run).await.unwrap_or_else(|e| Check::errored("cache.warm_read_statements", &e)),
        invalidation(run, caches).await.unwrap_or_else(|e| Check::errored("cache.invalidation", &e)),
        race_fill_vs_post(run, caches).await.unwrap_or_else(|e| Check::errored("cache.race_fill_vs_post", &e)),
        race_read_during_post(run, caches).await.unwrap_or_else(|e| Check::errored("cache.race_read_during_post", &e)),
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
    let started = Instant::now();
    for &user in run.users.full(120, 50) {
        if started.elapsed() > super::DIAGNOSIS_BUDGET {
            break;
        }
        let token = run.token(user);
        for samples in [&mut misses, &mut hits] {
            let started = Instant::now();
            let reply = run.api.feed(&token, "").await?;
            anyhow::ensure!(reply.status == 200, "feed returned {}", reply.status);
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let feeds = hits.len();
    let (miss_p50, _) = super::percentiles(misses);
    let (hit_p50, _) = super::percentiles(hits);
    report.metric("cache_miss_p50_ms", miss_p50);
    report.metric("cache_hit_p50_ms", hit_p50);
    report.diagnosis.push(format!(
        "cache miss vs hit, same {feeds} feeds read cold then warm: p50 {miss_p50:.2} ms vs {hit_p50:.2} ms"
    ));
    Ok(())
}

/// The premise of the freshness checks: does the target keep anything in Redis when it serves a
/// feed? (Two reads of one timeline with an exempt token: a cache leaves a key, nothing else does.)
/// Without a cache, "a post is visible on the next read" proves nothing about invalidation.
async fn caches(run: &Run<'_>) -> anyhow::Result<bool> {
    run.env.flush_redis().await?;
    let token = run.token(run.users.full(170, 1)[0]);
    run.api.feed(&token, "").await?;
    run.api.feed(&token, "").await?;
    Ok(!run.env.redis_keys("*").await?.is_empty())
}

const NO_CACHE: &str =
    "nothing is cached (after two reads of a feed Redis holds no key), so there is no cached page to keep fresh";

/// The instances to read through, each directly: every one the checker started (or was given).
fn instances<'r>(run: &'r Run<'_>) -> Vec<&'r crate::client::Api> {
    run.instances.iter().collect()
}

/// The first item id each instance now returns for `token`'s feed (with `query`).
async fn first_ids(run: &Run<'_>, token: &str, query: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut ids = Vec::new();
    for api in instances(run) {
        let reply = api.feed(token, query).await?;
        ids.push(reply.json().map(|f| f["items"][0]["id"].clone()).unwrap_or_default());
    }
    Ok(ids)
}

async fn post(
    run: &Run<'_>,
    api: &crate::client::Api,
    owner: i64,
    author: i64,
    body: &str,
) -> anyhow::Result<crate::client::Reply> {
    let body = serde_json::json!({ "user_id": owner, "body": body });
    api.send(api.post("/api/posts").bearer_auth(run.token(author)).json(&body)).await
}

/// `keyspace_hits` and `keyspace_misses` from `INFO stats`.
async fn keyspace(run: &Run<'_>) -> anyhow::Result<(u64, u64)> {
    let stats = run.env.redis_info("stats").await?;
    let field = |name: &str| stats.get(name).copied().unwrap_or(0);
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
    let errors_before = run.env.redis_info("errorstats").await?;
    let started = Instant::now();
    // Bounded: a cache that makes every read wait (a lock nobody fills) must not hold the
    // checker for minutes. The reads made by then are graded (and the summary says so).
    let statuses: Vec<u16> = futures::stream::iter((0..USERS * READS).map(|i| &tokens[i % USERS]))
        .take_while(|_| std::future::ready(started.elapsed() < super::MEASURING_BUDGET))
        .map(|token| async { run.api.feed(token, "").await.map_or(0, |r| r.status) })
        .buffer_unordered(8)
        .collect()
        .await;
    let window = started.elapsed();
    let reads = statuses.len();
    let (hits_after, misses_after) = keyspace(run).await?;
    let errors_after = run.env.redis_info("errorstats").await?;
    let service_after = run.service_counters().await;
    // Commands Redis refused meanwhile (`INFO errorstats`), such as CROSSSLOT on a cluster: a
    // cache whose every fill fails has no hits, and this says why. All of them go in the
    // evidence; the summary leaves out NOSCRIPT (the first call of a script by its hash; the
    // client then sends the script), MOVED and ASK (a cluster client redirected), and the generic
    // ERR, which every new connection of the redis crate earns from Redis 7.0 by offering
    // `CLIENT SETINFO`, a command of 7.2 (the checker's own connections do not offer it). (Sums
    // over the masters can drop if a master changes between the two reads: saturating.)
    let errors: Vec<(&str, u64)> = errors_after
        .iter()
        .filter_map(|(field, after)| {
            let n = after.saturating_sub(errors_before.get(field).copied().unwrap_or(0));
            Some((field.strip_prefix("errorstat_")?, n)).filter(|_| n > 0)
        })
        .collect();
    let listed = |kinds: &mut dyn Iterator<Item = &(&str, u64)>| {
        kinds.map(|(kind, n)| format!("{kind} ×{n}")).collect::<Vec<_>>().join(", ")
    };
    let refused = listed(&mut errors.iter().filter(|(kind, _)| !["NOSCRIPT", "MOVED", "ASK", "ERR"].contains(kind)));
    let crossslot = errors.iter().any(|(kind, _)| *kind == "CROSSSLOT");
    let refused_note = if refused.is_empty() {
        String::new()
    } else {
        format!("; Redis refused commands meanwhile: {refused} (INFO errorstats)")
    };
    let (hits, misses) = (hits_after.saturating_sub(hits_before), misses_after.saturating_sub(misses_before));
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

    let cut_short = if reads < USERS * READS {
        format!(
            "; only {reads} of {} reads within {} s, about {:.0} ms each, 8 at a time",
            USERS * READS,
            super::MEASURING_BUDGET.as_secs(),
            window.as_secs_f64() * 1000.0 * 8.0 / reads.max(1) as f64
        )
    } else {
        String::new()
    };
    let summary = if hits + misses == 0 {
        format!(
            "Redis saw no reads during {reads} feed requests: the feed never asks the cache{cut_short}{refused_note}"
        )
    } else {
        // INFO counts every key lookup, not feed reads: the fill script's check of its lock is a
        // hit too (one per miss). The service's own counters count feed reads only.
        format!(
            "{:.1}% hits in Redis INFO (keyspace_hits +{hits}, keyspace_misses +{misses}, over {reads} feed reads of {USERS} users){cut_short}{}{refused_note}",
            ratio * 100.0,
            service_ratio.map_or(String::new(), |r| format!("; the service's own counters say {:.1}%", r * 100.0)),
        )
    };
    let expected = Expectation::AtLeast(contract::MIN_HIT_RATIO);
    let all_ok = ok == reads;
    let check = Check::new("cache.hit_ratio", expected.holds(ratio) && all_ok, ratio, expected, summary)
        .evidence(format!(
            "{ok} of {reads} requests returned 200; keyspace_hits +{hits}, keyspace_misses +{misses}; error replies from Redis meanwhile: {}",
            if errors.is_empty() { "none".to_owned() } else { listed(&mut errors.iter()) }
        ))
        // Keys one command touches in different slots: the cluster's rule, explained there.
        .on_failure(if crossslot { "docs/scale-out.md#slots-and-hash-tags" } else { DOC });
    Ok([check, ttl])
}

/// Every key holding a feed (its name contains `feed`, locks excluded) has a TTL inside the
/// configured window, and the TTLs spread wider than the time it took to write them.
async fn ttl_check(run: &Run<'_>, window: Duration) -> anyhow::Result<Check> {
    const NAME: &str = "cache.ttl_jitter";
    let keys = run.env.redis_keys("*feed*").await?;
    let mut ttls: Vec<f64> =
        keys.iter().filter(|(key, _)| !key.contains("lock")).map(|(_, ms)| *ms as f64 / 1000.0).collect();
    if ttls.is_empty() {
        return Ok(Check::new(
            NAME,
            false,
            json!({"keys": 0}),
            "cached feeds with a TTL",
            "no cached feed keys (names containing `feed`) found in Redis",
        )
        .on_failure(DOC));
    }
    // PTTL answers -1 for a key without an expiry.
    let without_expiry = ttls.iter().filter(|&&t| t < 0.0).count();
    ttls.sort_by(f64::total_cmp);
    let (min, max) = (ttls[0], ttls[ttls.len() - 1]);
    let low = TTL_SECS * (1.0 - JITTER) - window.as_secs_f64() - 1.0;
    let high = TTL_SECS * (1.0 + JITTER);
    let spread = max - min;
    let window_s = Expectation::Between(low.round(), high);
    let in_window = window_s.holds(min) && window_s.holds(max);
    // Without jitter, keys written over `window` seconds differ by at most about that much.
    let spread_s = Expectation::AtLeast((window.as_secs_f64() + 1.0).ceil());
    let jittered = spread_s.holds(spread);
    Ok(Check::new(
        NAME,
        in_window && jittered,
        json!({ "keys": ttls.len(), "min_s": min.round(), "max_s": max.round(), "spread_s": spread.round() }),
        json!({ "every_ttl_s": window_s, "spread_s": spread_s }),
        if without_expiry > 0 {
            format!("{without_expiry} of {} cached feed keys have no expiry at all (window {low:.0}..{high:.0} s)", ttls.len())
        } else {
            format!(
                "{} keys, TTLs {min:.0}..{max:.0} s (window {low:.0}..{high:.0} s), spread {spread:.0} s across keys written within {:.0} s",
                ttls.len(),
                window.as_secs_f64()
            )
        },
    )
    .on_failure(DOC))
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
    Ok(Check::measure(
        "cache.warm_read_statements",
        count as f64,
        Expectation::Exactly(0.0),
        format!("{count} SQL statements for 5 reads of a warm feed"),
    )
    .evidence(pgss::table(&statements, 4))
    .on_failure(DOC))
}

/// A post shows at once, even when the feed was cached: on every page size and every instance.
async fn invalidation(run: &Run<'_>, caches: bool) -> anyhow::Result<Check> {
    const NAME: &str = "cache.invalidation";
    if !caches {
        return Ok(Check::not_applicable(NAME, NO_CACHE));
    }
    let [owner, author] = [run.users.full(101, 1)[0], run.users.full(102, 1)[0]];
    let token = run.token(owner);
    const PAGES: [&str; 3] = ["", "limit=5", "limit=100"];
    for query in PAGES {
        for _ in 0..2 {
            for api in instances(run) {
                api.feed(&token, query).await?;
            }
        }
    }
    // Written through the first instance, read through every one.
    let created = post(run, instances(run)[0], owner, author, "fresh from the checker").await?;
    let post_id = created.json().map(|p| p["id"].clone()).unwrap_or_default();
    let mut stale = Vec::new();
    for query in PAGES {
        for (instance, first) in first_ids(run, &token, query).await?.into_iter().enumerate() {
            if first != post_id {
                stale.push(format!("instance {} GET /api/feed?{query}: first id {first}", instance + 1));
            }
        }
    }
    let reads = PAGES.len() * instances(run).len();
    Ok(Check::new(
        NAME,
        created.status == 201 && stale.is_empty(),
        json!({ "reads_showing_the_post_first": reads - stale.len() }),
        json!({ "reads_showing_the_post_first": reads }),
        format!(
            "a post through instance 1 to a cached timeline, then the next read of each page size (20, 5, 100) on each of {} instance(s): {} of {reads} show it first",
            instances(run).len(),
            reads - stale.len()
        ),
    )
    .evidence(format!("POST → {} {}\nstale: {}", created.status, super::excerpt(&created.text(), 200), stale.join("; ")))
    .on_failure(DOC))
}

/// How long the race checks wait for the race to be set up (the fill's reply held, the INSERT
/// waiting on its lock) before they say it could not be.
const SETUP: Duration = Duration::from_secs(10);

/// The classic cache-aside race, made deterministic: a cold read's database reply is held in the
/// proxy, a post commits and invalidates meanwhile, then the held reply arrives and the reader
/// fills the cache. A fill that writes without checking it still owns the key writes the page
/// from *before* the post, which then stays until its TTL.
async fn race_fill_vs_post(run: &Run<'_>, caches: bool) -> anyhow::Result<Check> {
    const NAME: &str = "cache.race_fill_vs_post";
    if !caches {
        return Ok(Check::not_applicable(NAME, NO_CACHE));
    }
    let Some(proxy) = run.env.services.proxy() else {
        return Ok(Check::not_proven(
            NAME,
            "needs the checker's database proxy to hold the race (--db-latency-ms > 0)",
        ));
    };
    if run.launch.is_none() {
        return Ok(Check::not_proven(NAME, "the service talks to a database proxy of its own; run it with --cmd"));
    }
    let [owner, author] = [run.users.full(180, 1)[0], run.users.full(181, 1)[0]];
    let token = run.token(owner);
    run.env.flush_redis().await?;
    // A page of feed rows is kilobytes; an INSERT's reply is a few hundred bytes.
    let held_before = proxy.held_replies();
    proxy.hold_large_replies(1024);
    let reader = run.api.feed(&token, "");
    let writer = async {
        // Once the reader's page is held in the proxy (its query has run), the post; and only
        // after the post's 201 (committed, invalidated) is the page let go.
        let deadline = Instant::now() + SETUP;
        while proxy.held_replies() == held_before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let held = proxy.held_replies() > held_before;
        let created = post(run, run.instances.get(1).unwrap_or(&run.api), owner, author, "racing a cold fill").await;
        proxy.release();
        (held, created)
    };
    let (read, (held, created)) = tokio::join!(reader, writer);
    proxy.release();
    let (read, created) = (read?, created?);
    if !held {
        // The read never fetched a page from the database: nothing raced.
        return Ok(Check::not_applicable(
            NAME,
            "the cold read fetched no page of 1 KiB or more from the database, so no fill could be held",
        ));
    }
    let post_id = created.json().map(|p| p["id"].clone()).unwrap_or_default();
    // The reader's page came from before the post: that is fine. What comes next must not be.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let firsts = first_ids(run, &token, "").await?;
    let fresh = firsts.iter().filter(|id| **id == post_id).count();
    Ok(Check::new(
        NAME,
        created.status == 201 && read.status == 200 && fresh == firsts.len(),
        json!({ "instances_showing_the_post_first": fresh }),
        json!({ "instances_showing_the_post_first": firsts.len() }),
        format!(
            "a cold read's database reply held until a post had committed: next read shows the post first on {fresh} of {} instance(s)",
            firsts.len()
        ),
    )
    .evidence(format!(
        "cold read → {}; POST during it → {} (id {post_id}); next reads' first ids: {firsts:?}",
        read.status, created.status
    ))
    .on_failure(DOC))
}

/// The other order: the post's INSERT waits on a lock while a reader misses and refills. If the
/// key was deleted *before* the insert committed, that refill holds the page without the post.
async fn race_read_during_post(run: &Run<'_>, caches: bool) -> anyhow::Result<Check> {
    const NAME: &str = "cache.race_read_during_post";
    if !caches {
        return Ok(Check::not_applicable(NAME, NO_CACHE));
    }
    let [owner, author] = [run.users.full(182, 1)[0], run.users.full(183, 1)[0]];
    let token = run.token(owner);
    for api in instances(run) {
        api.feed(&token, "").await?;
    }
    // SHARE mode blocks INSERTs (ROW EXCLUSIVE) and lets SELECTs through.
    let mut lock = run.env.admin.begin().await?;
    sqlx::query("lock table posts in share mode").execute(&mut *lock).await?;
    let writer = post(run, &run.api, owner, author, "racing a read");
    let reader = async {
        // Until the INSERT is waiting on the lock (or SETUP: then the service did not insert yet).
        let deadline = Instant::now() + SETUP;
        while Instant::now() < deadline {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and query ilike '%insert%posts%'",
            )
            .fetch_one(&run.env.admin)
            .await?;
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut statuses = Vec::new();
        for api in instances(run) {
            statuses.push(api.feed(&token, "").await?.status);
        }
        lock.commit().await?;
        anyhow::Ok(statuses)
    };
    let (created, during) = tokio::join!(writer, reader);
    let (created, during) = (created?, during?);
    let post_id = created.json().map(|p| p["id"].clone()).unwrap_or_default();
    let firsts = first_ids(run, &token, "").await?;
    let fresh = firsts.iter().filter(|id| **id == post_id).count();
    Ok(Check::new(
        NAME,
        created.status == 201 && fresh == firsts.len(),
        json!({ "instances_showing_the_post_first": fresh }),
        json!({ "instances_showing_the_post_first": firsts.len() }),
        format!(
            "reads while a post's INSERT waited on a lock, then the 201: next read shows the post first on {fresh} of {} instance(s)",
            firsts.len()
        ),
    )
    .evidence(format!(
        "reads during the INSERT → {during:?}; POST → {} (id {post_id}); next reads' first ids: {firsts:?}",
        created.status
    ))
    .on_failure(DOC))
}

/// 120 concurrent requests for one cold key, spread over every instance: at most one of them
/// may reach Postgres (a lock each instance keeps to itself lets one query through per instance).
async fn stampede(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const CONCURRENT: usize = 120;
    let user = run.users.full(103, 1)[0];
    let token = run.token(user);
    let apis = instances(run);
    run.env.flush_redis().await?;
    let before = pgss::snapshot(&run.env.admin).await?;
    let replies = futures::future::join_all((0..CONCURRENT).map(|i| apis[i % apis.len()].feed(&token, ""))).await;
    let after = pgss::snapshot(&run.env.admin).await?;
    let statements = pgss::delta(&before, &after);
    let count = pgss::total_calls(&statements);
    let expected = normalise(run.oracle(user, 20).await?);
    let correct = replies
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status == 200 && r.json().map(normalise).as_ref() == Some(&expected)))
        .count();
    report.metric("stampede_statements", count);
    let most = Expectation::AtMost(1.0);
    Ok(Check::new(
        "cache.stampede",
        most.holds(count as f64) && correct == CONCURRENT,
        json!({ "statements": count, "correct_responses": correct }),
        json!({ "statements": most, "correct_responses": CONCURRENT }),
        format!(
            "{CONCURRENT} concurrent requests for one cold feed, over {} instance(s), ran {count} SQL statement(s); {correct} correct responses",
            apis.len()
        ),
    )
    .evidence(pgss::table(&statements, 4))
    .on_failure(DOC))
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
    if !run.env.owns_redis() {
        report.push(Check::not_proven(
            NAME,
            "REDIS_URL points at a Redis the checker did not start; it will not stop yours (unset REDIS_URL)",
        ));
        return;
    }
    if !caches(run).await.unwrap_or(false) && run.bar < crate::StageId::Stage3 {
        report.push(Check::not_applicable(NAME, "nothing is cached, so there is no cache to lose"));
        return;
    }
    let result: anyhow::Result<Check> = async {
        let user = run.users.full(110, 1)[0];
        let token = run.token(user);
        let free = run.env.token(run.users.full(111, 1)[0], feed_core::auth::Tier::Free);
        run.env.stop_redis();
        let started = Instant::now();
        let down = run.api.feed(&token, "").await?;
        let down_ms = started.elapsed().as_secs_f64() * 1000.0;
        let expected = normalise(run.oracle(user, 20).await?);
        let correct = down.status == 200 && down.json().map(normalise) == Some(expected);
        let limited = if run.bar >= crate::StageId::Stage3 { Some(run.api.feed(&free, "").await?.status) } else { None };
        run.env.restart_redis().await?;
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
                "{} stopped: feed {} ({}) in {down_ms:.0} ms{}; Redis back: {}",
                if run.env.cluster.is_some() { "every Redis Cluster node" } else { "Redis" },
                down.status,
                if correct { "correct" } else { "wrong" },
                limited.map_or(String::new(), |s| format!(", free-tier request {s} (the limiter fails open: 200)")),
                if resumed { format!("cache hits again after {attempts} attempt(s)") } else { "no cache hits after 30 attempts".into() }
            ),
        )
        .evidence(format!("while down: {} {}", down.status, super::excerpt(&down.text(), 200)))
        .on_failure(DOC))
    }
    .await;
    // Whatever happened above, the checks after this one get their Redis back.
    let _ = run.env.restart_redis().await;
    report.push(result.unwrap_or_else(|e| Check::errored(NAME, &e)));
}
