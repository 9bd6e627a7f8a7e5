//! Stage-2's bar: the cache, measured from Redis itself and from pg_stat_statements.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::json;

use feed_core::contract;

use super::{Run, normalise};
use crate::client::Api;
use crate::pgss;
use crate::registry::CheckId;
use crate::report::{Check, Expectation, Report};

/// The freshness bound of the brief: an author's change shows within five minutes, so no cached
/// page may live longer.
const MAX_TTL_SECS: f64 = contract::MAX_STALENESS_SECS as f64;

/// What a hit saves: 50 cold reads (a miss: Redis, then the one statement, then the fill), each
/// followed by a warm read of the same feed, side by side. Reported, not asserted.
pub(super) async fn hit_vs_miss_latency(run: &Run<'_>, report: &mut Report) -> anyhow::Result<()> {
    run.env.flush_redis().await?;
    let (mut misses, mut hits) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for user in run.users.timelines(20)? {
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

const NO_CACHE: &str =
    "nothing is cached (after two reads of a feed Redis holds no key), so there is no cached page to keep fresh";

/// The first item id each instance now returns for `token`'s feed (with `query`).
async fn first_ids(run: &Run<'_>, token: &str, query: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut ids = Vec::new();
    for api in &run.instances {
        let reply = api.feed(token, query).await?;
        ids.push(reply.json().map(|f| f["items"][0]["id"].clone()).unwrap_or_default());
    }
    Ok(ids)
}

async fn post(run: &Run<'_>, api: &Api, owner: i64, author: i64, body: &str) -> anyhow::Result<crate::client::Reply> {
    let body = serde_json::json!({ "user_id": owner, "body": body });
    api.send(api.post("/api/posts").bearer_auth(run.token(author)).json(&body)).await
}

/// `keyspace_hits` and `keyspace_misses` from `INFO stats`.
pub(super) async fn keyspace(run: &Run<'_>) -> anyhow::Result<(u64, u64)> {
    let stats = run.env.redis_info("stats").await?;
    let field = |name: &str| stats.get(name).copied().unwrap_or(0);
    Ok((field("keyspace_hits"), field("keyspace_misses")))
}

/// Statements one cold read costs this target (the median of 5 cold reads of their own
/// timelines): 1 for a JOIN, 2 for a query and a batch of authors.
async fn statements_per_cold_read(run: &Run<'_>) -> anyhow::Result<f64> {
    run.env.flush_redis().await?;
    let mut counts = Vec::new();
    for user in run.users.timelines(5)? {
        let before = pgss::snapshot(&run.env.admin).await?;
        let reply = run.api.feed(&run.token(user), "").await?;
        anyhow::ensure!(
            reply.status == 200,
            "a cold read answered {}: {}",
            reply.status,
            super::excerpt(&reply.text(), 200)
        );
        counts.push(pgss::total_calls(&pgss::delta(&before, &pgss::snapshot(&run.env.admin).await?)) as f64);
    }
    Ok(super::percentiles(counts).0.max(1.0))
}

/// A realistic read mix: 50 users each refreshing their feed 40 times, 8 requests in flight. A
/// read answered from the cache runs no SQL: the share answered without the database is
/// 1 − (statements ÷ statements per cold read) ÷ reads. Redis INFO's `keyspace_hits` and
/// `keyspace_misses` are shown beside it: they count key lookups, not feed reads, so a miss path
/// that looks up three keys counts three misses.
pub async fn hit_ratio(run: &mut Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const USERS: usize = 50;
    const READS: usize = 40;
    let per_cold_read = statements_per_cold_read(run).await?;
    run.env.flush_redis().await?;
    let users = run.users.timelines(USERS)?;
    let tokens: Vec<String> = users.iter().map(|&u| run.token(u)).collect();
    let service_before = run.service_counters().await;
    let (hits_before, misses_before) = keyspace(run).await?;
    let errors_before = run.env.redis_info("errorstats").await?;
    let statements_before = pgss::snapshot(&run.env.admin).await?;
    let started = Instant::now();
    // Bounded: a cache that makes every read wait (a lock nobody fills) must not hold the
    // checker for minutes. The reads made by then are graded (and the summary says so).
    let statuses: Vec<Result<u16, String>> = futures::stream::iter((0..USERS * READS).map(|i| &tokens[i % USERS]))
        .take_while(|_| std::future::ready(started.elapsed() < super::MEASURING_BUDGET))
        .map(|token| async { run.api.feed(token, "").await.map(|r| r.status).map_err(|e| format!("{e:#}")) })
        .buffer_unordered(8)
        .collect()
        .await;
    let window = started.elapsed();
    let reads = statuses.len();
    let statements = pgss::total_calls(&pgss::delta(&statements_before, &pgss::snapshot(&run.env.admin).await?));
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
    let from_database = (statements as f64 / per_cold_read).min(reads as f64);
    let ratio = if reads == 0 { 0.0 } else { 1.0 - from_database / reads as f64 };
    let delta = |name: &str| service_after.get(name).unwrap_or(&0.0) - service_before.get(name).unwrap_or(&0.0);
    let (service_hits, service_misses) = (delta("cache_hits_total"), delta("cache_misses_total"));
    let service_ratio = (service_hits + service_misses > 0.0).then(|| service_hits / (service_hits + service_misses));
    report.metric("hit_ratio", ratio);
    report.metric("keyspace_hits", hits);
    report.metric("keyspace_misses", misses);
    if let Some(service_ratio) = service_ratio {
        report.metric("service_hit_ratio", service_ratio);
    }
    let ok = statuses.iter().filter(|s| **s == Ok(200)).count();
    let no_answer = statuses.iter().find_map(|s| s.as_ref().err());
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
    let per_read =
        if per_cold_read == 1.0 { "1 per cold read".to_owned() } else { format!("{per_cold_read} per cold read") };
    let summary = format!(
        "{:.1}% of {reads} feed reads of {USERS} users answered without the database ({statements} SQL statements, {per_read}){cut_short}; \
         Redis INFO: keyspace_hits +{hits}, keyspace_misses +{misses}{}{refused_note}",
        ratio * 100.0,
        service_ratio.map_or(String::new(), |r| format!("; the service's own counters say {:.1}%", r * 100.0)),
    );
    let expected = Expectation::AtLeast(contract::MIN_HIT_RATIO);
    let all_ok = ok == reads;
    let mut check = Check::new(CheckId::CacheHitRatio, expected.holds(ratio) && all_ok, ratio, expected, summary)
        .evidence(format!(
            "{ok} of {reads} requests returned 200{}; {statements} SQL statements; keyspace_hits +{hits}, keyspace_misses +{misses}; error replies from Redis meanwhile: {}",
            no_answer.map_or(String::new(), |e| format!(" (one got no answer: {e})")),
            if errors.is_empty() { "none".to_owned() } else { listed(&mut errors.iter()) }
        ));
    if crossslot {
        // Keys one command touches in different slots: the cluster's rule, explained there.
        check = check.on_failure("docs/scale-out.md#slots-and-hash-tags");
    }
    Ok(check)
}

/// The TTLs of feed keys written together: `n` cold reads of as many timelines at once, then the
/// `PTTL` of every key holding a feed (its name contains `feed`, locks excluded). Returns the
/// TTLs in seconds (negative: no expiry) and how long the writing took.
async fn fresh_ttls(run: &Run<'_>, n: usize) -> anyhow::Result<(Vec<f64>, Duration)> {
    run.env.flush_redis().await?;
    let tokens: Vec<String> = run.users.timelines(n)?.into_iter().map(|u| run.token(u)).collect();
    let started = Instant::now();
    let replies = futures::future::join_all(tokens.iter().map(|token| run.api.feed(token, ""))).await;
    let window = started.elapsed();
    for reply in replies {
        let reply = reply?;
        anyhow::ensure!(
            reply.status == 200,
            "a cold read answered {}: {}",
            reply.status,
            super::excerpt(&reply.text(), 200)
        );
    }
    let keys = run.env.redis_keys("*feed*").await?;
    let ttls = keys.iter().filter(|(key, _)| !key.contains("lock")).map(|(_, ms)| *ms as f64 / 1000.0).collect();
    Ok((ttls, window))
}

/// Every feed key written by 30 cold reads at once lives at most the freshness bound, and their
/// TTLs spread wider than the time it took to write them (jitter).
pub async fn ttl_jitter(run: &Run<'_>) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::CacheTtlJitter;
    const READS: usize = 30;
    let (mut ttls, window) = fresh_ttls(run, READS).await?;
    if ttls.is_empty() {
        return Ok(Check::new(
            NAME,
            false,
            json!({"keys": 0}),
            "cached feeds with a TTL",
            format!("{READS} cold reads left no feed keys (names containing `feed`) in Redis"),
        ));
    }
    // PTTL answers -1 for a key without an expiry.
    let without_expiry = ttls.iter().filter(|&&t| t < 0.0).count();
    ttls.sort_by(f64::total_cmp);
    let (min, max) = (ttls[0], ttls[ttls.len() - 1]);
    let spread = max - min;
    let bound = Expectation::Between(0.0, MAX_TTL_SECS);
    let within = without_expiry == 0 && bound.holds(max);
    // Without jitter, keys written within `window` differ by at most about that much.
    let spread_s = Expectation::AtLeast((window.as_secs_f64() + 1.0).ceil().max(2.0));
    let jittered = spread_s.holds(spread);
    Ok(Check::new(
        NAME,
        within && jittered,
        json!({ "keys": ttls.len(), "min_s": min.round(), "max_s": max.round(), "spread_s": spread.round() }),
        json!({ "every_ttl_s": bound, "spread_s": spread_s }),
        if without_expiry > 0 {
            format!(
                "{without_expiry} of {} cached feed keys have no expiry at all (at most {MAX_TTL_SECS:.0} s allowed)",
                ttls.len()
            )
        } else {
            format!(
                "{} keys written by {READS} cold reads within {:.1} s: TTLs {min:.0}..{max:.0} s (at most {MAX_TTL_SECS:.0} s), spread {spread:.0} s",
                ttls.len(),
                window.as_secs_f64()
            )
        },
    ))
}

/// Reading a cached page does not extend its life: the moment its key expires (`PEXPIRETIME`,
/// absolute, to the millisecond) is the same after 15 reads as before them. A hit that renews the
/// TTL moves it on every read, whatever TTL it draws.
pub async fn ttl_not_extended(run: &Run<'_>) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::CacheTtlNotExtended;
    const READS: usize = 15;
    if !run.caches().await? {
        return Ok(Check::not_applicable(NAME, NO_CACHE));
    }
    let token = run.token(run.users.timeline()?);
    run.env.flush_redis().await?;
    run.api.feed(&token, "").await?;
    let expiries = || async {
        let keys = run.env.redis_expire_times("*feed*").await?;
        anyhow::Ok(
            keys.into_iter().filter(|(key, _)| !key.contains("lock")).collect::<std::collections::BTreeMap<_, _>>(),
        )
    };
    let before = expiries().await?;
    if before.is_empty() {
        return Ok(Check::not_applicable(NAME, "a read left no feed key to watch"));
    }
    let started = Instant::now();
    for _ in 0..READS {
        run.api.feed(&token, "").await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after_reads = expiries().await?;
    // Then the same timeline's other page sizes, filled: a write beside the page (the same hash,
    // say) must not renew it either.
    for size in [5, 100] {
        run.api.feed(&token, &format!("limit={size}")).await?;
    }
    let after = expiries().await?;
    // PEXPIRETIME is -1 for a key without an expiry.
    let forever = before.values().filter(|&&at| at < 0).count();
    let moved_in = |later: &std::collections::BTreeMap<String, i64>| -> Vec<(String, f64)> {
        before
            .iter()
            .filter_map(|(key, at)| {
                Some((key.clone(), (later.get(key)? - at) as f64 / 1000.0)).filter(|(_, by)| *by != 0.0)
            })
            .collect()
    };
    let (by_reads, moved) = (moved_in(&after_reads), moved_in(&after));
    let passed = forever == 0 && moved.is_empty();
    let summary = if forever > 0 {
        format!(
            "a cached page read {READS} times over {elapsed:.1} s: its key has no expiry at all, so it is never refreshed"
        )
    } else if let Some((_, by)) = by_reads.first() {
        format!(
            "a cached page read {READS} times over {elapsed:.1} s: its expiry moved by {by:+.1} s (each hit renews it)"
        )
    } else if let Some((_, by)) = moved.first() {
        format!(
            "a cached page read {READS} times over {elapsed:.1} s kept its expiry, but filling the same timeline's pages of 5 \
             and 100 moved it by {by:+.1} s: the page lives past its TTL"
        )
    } else {
        let ttl = before
            .values()
            .next()
            .map_or(0.0, |&at| (at as f64 - chrono::Utc::now().timestamp_millis() as f64) / 1000.0);
        format!(
            "a cached page read {READS} times over {elapsed:.1} s, then its timeline's other page sizes filled: its \
             expiry did not move (expires in {ttl:.0} s)"
        )
    };
    Ok(Check::new(
        NAME,
        passed,
        json!({ "keys": before.len(), "without_expiry": forever, "expiry_moved_s": moved.first().map(|m| m.1) }),
        json!({ "without_expiry": 0, "expiry_moved_s": null }),
        summary,
    )
    .evidence(format!("PEXPIRETIME before: {before:?}\nafter the reads: {after_reads:?}\nafter the fills: {after:?}")))
}

/// A warm key is served without SQL.
pub async fn warm_read(run: &Run<'_>) -> anyhow::Result<Check> {
    let user = run.users.timeline()?;
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
        CheckId::CacheWarmReadStatements,
        count as f64,
        Expectation::Exactly(0.0),
        format!("{count} SQL statements for 5 reads of a warm feed"),
    )
    .evidence(pgss::table(&statements, 4)))
}

/// A post shows at once, even when the feed was cached: on every page size and every instance.
pub async fn invalidation(run: &Run<'_>) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::CacheInvalidation;
    if !run.caches().await? {
        return Ok(Check::not_applicable(NAME, NO_CACHE));
    }
    let [owner, author] = run.users.some_timelines()?;
    let token = run.token(owner);
    const PAGES: [&str; 3] = ["", "limit=5", "limit=100"];
    for query in PAGES {
        for _ in 0..2 {
            for api in &run.instances {
                api.feed(&token, query).await?;
            }
        }
    }
    // Written through the first instance, read through every one.
    let created = post(run, &run.instances[0], owner, author, "fresh from the checker").await?;
    let post_id = created.json().map(|p| p["id"].clone()).unwrap_or_default();
    let mut stale = Vec::new();
    for query in PAGES {
        for (instance, first) in first_ids(run, &token, query).await?.into_iter().enumerate() {
            if first != post_id {
                stale.push(format!("instance {} GET /api/feed?{query}: first id {first}", instance + 1));
            }
        }
    }
    let reads = PAGES.len() * run.instances.len();
    Ok(Check::new(
        NAME,
        created.status == 201 && stale.is_empty(),
        json!({ "reads_showing_the_post_first": reads - stale.len() }),
        json!({ "reads_showing_the_post_first": reads }),
        format!(
            "a post through instance 1 to a cached timeline, then the next read of each page size (20, 5, 100) on each of {} instance(s): {} of {reads} show it first",
            run.instances.len(),
            reads - stale.len()
        ),
    )
    .evidence(format!("POST → {} {}\nstale: {}", created.status, super::excerpt(&created.text(), 200), stale.join("; "))))
}

/// How long the race checks wait for the race to be set up (the fill's reply held, the INSERT
/// waiting on its lock) before they say it could not be.
const SETUP: Duration = Duration::from_secs(10);

/// The classic cache-aside race, made deterministic: a cold read's database reply is held in the
/// proxy, a post commits and invalidates meanwhile, then the held reply arrives and the reader
/// fills the cache. A fill that writes without checking it still owns the key writes the page
/// from *before* the post, which then stays until its TTL.
pub async fn race_fill_vs_post(run: &Run<'_>) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::CacheRaceFillVsPost;
    if !run.caches().await? {
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
    let [owner, author] = run.users.some_timelines()?;
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
    )))
}

/// The other order: the post's INSERT waits on a lock while a reader misses and refills. If the
/// key was deleted *before* the insert committed, that refill holds the page without the post.
pub async fn race_read_during_post(run: &Run<'_>) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::CacheRaceReadDuringPost;
    if !run.caches().await? {
        return Ok(Check::not_applicable(NAME, NO_CACHE));
    }
    let [owner, author] = run.users.some_timelines()?;
    let token = run.token(owner);
    for api in &run.instances {
        api.feed(&token, "").await?;
    }
    // SHARE mode blocks INSERTs (ROW EXCLUSIVE) and lets SELECTs through.
    let mut lock = run.env.admin.begin().await?;
    sqlx::query("lock table posts in share mode").execute(&mut *lock).await?;
    let writer = post(run, &run.api, owner, author, "racing a read");
    let reader = async {
        // Until the INSERT is waiting on the lock (or SETUP: then the service did not insert yet).
        let deadline = Instant::now() + SETUP;
        let mut raced = false;
        while !raced && Instant::now() < deadline {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and query ilike '%insert%posts%'",
            )
            .fetch_one(&run.env.admin)
            .await?;
            raced = waiting > 0;
            if !raced {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut statuses = Vec::new();
        for api in &run.instances {
            statuses.push(api.feed(&token, "").await?.status);
        }
        lock.commit().await?;
        anyhow::Ok((statuses, raced))
    };
    let (created, during) = tokio::join!(writer, reader);
    let (created, (during, raced)) = (created?, during?);
    if !raced {
        return Ok(Check::not_applicable(
            NAME,
            format!(
                "no INSERT into posts waited on the checker's lock within {} s of the POST (POST → {}): the race was not produced",
                SETUP.as_secs(),
                created.status
            ),
        ));
    }
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
    )))
}

/// 120 concurrent requests for one cold key, spread over every instance: at most one of them
/// may reach Postgres (a lock each instance keeps to itself lets one query through per instance).
/// The checker's proxy in front of Redis answers in rounds (lockstep): every request's command is
/// answered only once every request has sent its own, so a lock taken in two steps (look, then
/// set) is taken by all of them, every time, instead of when the scheduler happens to interleave
/// them. On a cluster topology the service talks to the nodes directly: the rounds are not forced.
pub async fn stampede(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const CONCURRENT: usize = 120;
    let apis = &run.instances;
    let lockstep = run.env.cluster.is_none().then(|| run.env.services.redis_proxy());
    // A second try only when the first was disturbed: the service says it bypassed Redis (its
    // Redis calls timed out: the machine starved it during the rounds), so Postgres answered
    // what Redis would have. A lock that lets several fills through runs them without any
    // bypass, and fails the first try.
    let mut disturbed = None;
    let mut attempt = 0;
    let (count, correct, statements) = loop {
        attempt += 1;
        let user = run.users.timeline()?;
        let token = run.token(user);
        run.env.flush_redis().await?;
        let bypasses_before = run.service_counters().await.get("cache_bypass_total").copied().unwrap_or(0.0);
        let before = pgss::snapshot(&run.env.admin).await?;
        if let Some(proxy) = lockstep {
            proxy.lockstep(true);
        }
        let replies = futures::future::join_all((0..CONCURRENT).map(|i| apis[i % apis.len()].feed(&token, ""))).await;
        if let Some(proxy) = lockstep {
            proxy.lockstep(false);
        }
        let after = pgss::snapshot(&run.env.admin).await?;
        let bypassed = run.service_counters().await.get("cache_bypass_total").copied().unwrap_or(0.0) - bypasses_before;
        let statements = pgss::delta(&before, &after);
        let count = pgss::total_calls(&statements);
        let expected = normalise(run.oracle(user, 20).await?);
        let correct = replies
            .iter()
            .filter(|r| {
                r.as_ref().is_ok_and(|r| r.status == 200 && r.json().map(normalise).as_ref() == Some(&expected))
            })
            .count();
        if count > 1 && bypassed > 0.0 && attempt == 1 {
            disturbed = Some(format!(
                "a first try ran {count} SQL statements, but the service bypassed Redis {bypassed:.0} time(s) (its Redis \
                 calls timed out): measured again on another cold feed"
            ));
            continue;
        }
        break (count, correct, statements);
    };
    report.metric("stampede_statements", count);
    let most = Expectation::AtMost(1.0);
    let table = pgss::table(&statements, 4);
    Ok(Check::new(
        CheckId::CacheStampede,
        most.holds(count as f64) && correct == CONCURRENT,
        json!({ "statements": count, "correct_responses": correct }),
        json!({ "statements": most, "correct_responses": CONCURRENT }),
        format!(
            "{CONCURRENT} concurrent requests for one cold feed, over {} instance(s){}, ran {count} SQL statement{}; {correct} correct responses",
            apis.len(),
            if lockstep.is_some() { ", their Redis commands answered in rounds" } else { "" },
            if count == 1 { "" } else { "s" },
        ),
    )
    .evidence(match disturbed {
        Some(first) => format!("{first}\n{table}"),
        None => table,
    }))
}

/// A read that misses waits only for the fill that will answer it. A cold `limit=20` read's
/// database reply is held in the checker's proxy; meanwhile a cold `limit=5` read of the same
/// timeline is sent; the held reply is let go after `HELD`. The `limit=5` read must be answered
/// within `SLACK` of that release (by its own fill, or by the `limit=20` fill if that one fills
/// every page size): a read that waits for a fill of another page waits for its own deadline.
pub async fn cold_read_latency(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::CacheColdReadLatency;
    const HELD: Duration = Duration::from_millis(300);
    const SLACK: Duration = Duration::from_millis(250);
    if !run.caches().await? {
        return Ok(Check::not_applicable(NAME, NO_CACHE));
    }
    let Some(proxy) = run.env.services.proxy() else {
        return Ok(Check::not_proven(NAME, "needs the checker's database proxy to hold a fill (--db-latency-ms > 0)"));
    };
    if run.launch.is_none() {
        return Ok(Check::not_proven(NAME, "the service talks to a database proxy of its own; run it with --cmd"));
    }
    let user = run.users.timeline()?;
    let token = run.token(user);
    run.env.flush_redis().await?;
    let held_before = proxy.held_replies();
    // The first page of rows the database sends back (the limit=20 read's) is held; the rest pass.
    proxy.hold_next_large_replies(1024, 1);
    let filler = run.api.feed(&token, "limit=20");
    let other = async {
        let deadline = Instant::now() + SETUP;
        while proxy.held_replies() == held_before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let held = proxy.held_replies() > held_before;
        let started = Instant::now();
        let read = async {
            let reply = run.api.feed(&token, "limit=5").await;
            (reply, Instant::now())
        };
        let release = async {
            tokio::time::sleep(HELD).await;
            proxy.release();
            Instant::now()
        };
        let ((reply, answered), released) = tokio::join!(read, release);
        (held, reply, started, released, answered)
    };
    let (filled, (held, reply, started, released, answered)) = tokio::join!(filler, other);
    proxy.release();
    let (filled, reply) = (filled?, reply?);
    if !held {
        return Ok(Check::not_applicable(
            NAME,
            "the cold read fetched no page of 1 KiB or more from the database, so no fill could be held",
        ));
    }
    let waited = answered.saturating_duration_since(released);
    let total_ms = (answered - started).as_millis();
    report.metric("cold_read_while_other_page_fills_ms", total_ms as u64);
    let bound = Expectation::AtMost(SLACK.as_millis() as f64);
    let expected = normalise(run.oracle(user, 5).await?);
    let correct = reply.status == 200 && reply.json().map(normalise) == Some(expected);
    Ok(Check::new(
        NAME,
        correct && filled.status == 200 && bound.holds(waited.as_millis() as f64),
        json!({ "ms_after_release": waited.as_millis() as u64, "status": reply.status, "correct": correct }),
        json!({ "ms_after_release": bound, "status": 200, "correct": true }),
        format!(
            "a cold limit=5 read while a limit=20 fill of the same timeline was held {} ms: {} in {total_ms} ms, {}",
            HELD.as_millis(),
            reply.status,
            if answered < released {
                "while that fill was still held".to_owned()
            } else {
                format!("answered {} ms after that fill was let go", waited.as_millis())
            }
        ),
    )
    .evidence(format!(
        "limit=20 read → {}; limit=5 read → {} {}",
        filled.status,
        reply.status,
        super::excerpt(&reply.text(), 120)
    )))
}
