//! Stage-3's bar: one user's burst is cut to their bucket, exactly, however it arrives.

use std::time::{Duration, Instant};

use feed_core::auth::Tier;
use feed_core::contract;
use futures::StreamExt as _;
use serde_json::json;

use super::Run;
use crate::client::{Api, Reply};
use crate::report::{Check, Expectation, Report};

const DOC: &str = "docs/stage-3.md";

/// Stage-3's checks, in the order they run.
pub const CHECKS: [&str; 7] = [
    "ratelimit.burst",
    "ratelimit.across_instances",
    "ratelimit.isolation",
    "ratelimit.spoofed_headers",
    "ratelimit.headers",
    "ratelimit.probes_unlimited",
    "ratelimit.refill",
];

const BURST: usize = 1000;
const CONNECTIONS: usize = 50;

/// The tiers (docs/stage-3.md): bucket size and refill per second.
const FREE: (f64, f64) = (contract::FREE.burst as f64, contract::FREE.per_sec());
const PRO: (f64, f64) = (contract::PRO.burst as f64, contract::PRO.per_sec());

/// What a burst produced.
struct Burst {
    admitted: usize,
    limited: usize,
    other: Vec<u16>,
    duration: Duration,
    /// Every 429 carried a whole-seconds `Retry-After` ≥ 1.
    retry_after_valid: bool,
    last_retry_after: Option<u64>,
    /// Every 429 said `r=0` in its `RateLimit` header.
    limited_say_zero: bool,
}

impl Burst {
    /// At most the bucket plus what refilled while the burst ran (from the measured duration),
    /// and at least the bucket.
    fn bounds(&self, (capacity, per_sec): (f64, f64)) -> (usize, usize) {
        (capacity as usize, (capacity + (self.duration.as_secs_f64() * per_sec).floor()) as usize)
    }

    /// Admitted: the bucket, plus what refilled while the burst ran.
    fn expected(&self, tier: (f64, f64)) -> Expectation {
        let (low, high) = self.bounds(tier);
        Expectation::Between(low as f64, high as f64)
    }

    fn within(&self, tier: (f64, f64)) -> bool {
        self.expected(tier).holds(self.admitted as f64) && self.other.is_empty()
    }

    fn describe(&self, tier: (f64, f64)) -> String {
        let (low, high) = self.bounds(tier);
        format!(
            "{} admitted, {} limited of {} in {:.2} s (expected {low}..={high}: bucket {} + refill {:.1}/s × {:.2} s){}",
            self.admitted,
            self.limited,
            self.admitted + self.limited + self.other.len(),
            self.duration.as_secs_f64(),
            tier.0,
            tier.1,
            self.duration.as_secs_f64(),
            if self.other.is_empty() {
                String::new()
            } else {
                format!("; other statuses: {:?}", &self.other[..self.other.len().min(5)])
            }
        )
    }
}

/// Send `total` feed requests for `token`, `CONNECTIONS` at a time, spread over `apis`.
async fn burst(apis: &[&Api], token: &str, total: usize, spoof: bool) -> Burst {
    let started = Instant::now();
    let replies: Vec<Option<Reply>> = futures::stream::iter(0..total)
        .map(|i| async move {
            let api = apis[i % apis.len()];
            let mut request = api.get("/api/feed").bearer_auth(token);
            if spoof {
                // A different client address on every request: it must not buy a new bucket.
                let ip = format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256);
                request = request
                    .header("x-forwarded-for", &ip)
                    .header("x-real-ip", &ip)
                    .header("forwarded", format!("for={ip}"));
            }
            api.send(request).await.ok()
        })
        .buffer_unordered(CONNECTIONS)
        .collect()
        .await;
    let duration = started.elapsed();
    let mut result = Burst {
        admitted: 0,
        limited: 0,
        other: Vec::new(),
        duration,
        retry_after_valid: true,
        last_retry_after: None,
        limited_say_zero: true,
    };
    for reply in replies {
        match reply {
            Some(r) if r.status == 200 => result.admitted += 1,
            Some(r) if r.status == 429 => {
                result.limited += 1;
                let retry: Option<u64> = r.header("retry-after").and_then(|v| v.parse().ok());
                result.retry_after_valid &= retry.is_some_and(|s| s >= 1) && r.is_problem_json();
                result.last_retry_after = retry.or(result.last_retry_after);
                result.limited_say_zero &= r.header("ratelimit").is_some_and(|v| v.contains("r=0"));
            }
            Some(r) => result.other.push(r.status),
            None => result.other.push(0),
        }
    }
    result
}

pub async fn run(run: &mut Run<'_>, report: &mut Report) {
    let checks = [
        single_user_burst(run, report).await.unwrap_or_else(|e| Check::errored("ratelimit.burst", &e)),
        across_instances(run, report).await,
        isolation(run, report).await.unwrap_or_else(|e| Check::errored("ratelimit.isolation", &e)),
        spoofed_headers(run, report).await,
        headers(run).await.unwrap_or_else(|e| Check::errored("ratelimit.headers", &e)),
        probes_unlimited(run).await.unwrap_or_else(|e| Check::errored("ratelimit.probes_unlimited", &e)),
        refill(run, report).await.unwrap_or_else(|e| Check::errored("ratelimit.refill", &e)),
    ];
    for check in checks {
        report.push(check);
    }
    if let Err(e) = limiter_cost(run, report).await {
        report.diagnosis.push(format!("limiter cost not measured: {e:#}"));
    }
}

/// What the limiter adds to a cache hit, measured side by side: the same warm feeds read with an
/// `internal` token (exempt: no bucket) and a `free` token (one bucket round trip), alternating,
/// so both see the same machine at the same moment. Reported, not asserted.
async fn limiter_cost(run: &Run<'_>, report: &mut Report) -> anyhow::Result<()> {
    const USERS: i64 = 50;
    const READS: usize = 5;
    let (mut exempt, mut limited) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for user in 1..=USERS {
        if started.elapsed() > super::DIAGNOSIS_BUDGET {
            break;
        }
        let (internal, free) = (run.env.token(user, Tier::Internal), run.env.token(user, Tier::Free));
        // Warm: the timed reads are hits.
        run.api.feed(&internal, "").await?;
        for _ in 0..READS {
            for (token, samples) in [(&internal, &mut exempt), (&free, &mut limited)] {
                let started = Instant::now();
                let reply = run.api.feed(token, "").await?;
                anyhow::ensure!(reply.status == 200, "warm read returned {}", reply.status);
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    let pairs = exempt.len();
    let (exempt_p50, exempt_p99) = super::percentiles(exempt);
    let (limited_p50, limited_p99) = super::percentiles(limited);
    report.metric("cache_hit_without_limiter_p50_ms", exempt_p50);
    report.metric("cache_hit_without_limiter_p99_ms", exempt_p99);
    report.metric("cache_hit_with_limiter_p50_ms", limited_p50);
    report.metric("cache_hit_with_limiter_p99_ms", limited_p99);
    report.diagnosis.push(format!(
        "limiter cost on cache hits ({pairs} alternating reads each): p50 {exempt_p50:.2} → {limited_p50:.2} ms, p99 {exempt_p99:.2} → {limited_p99:.2} ms (exempt → one bucket round trip)"
    ));
    Ok(())
}

fn free_token(run: &Run<'_>, index: usize) -> String {
    run.env.token(run.users.full(200 + index, 1)[0], Tier::Free)
}

async fn single_user_burst(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    let token = free_token(run, 0);
    let result = burst(&[&run.api], &token, BURST, false).await;
    report.metric("burst_admitted", result.admitted);
    report.metric("burst_limited", result.limited);
    report.metric("burst_expected_admitted_max", result.bounds(FREE).1);
    // Retry-After says when the next token comes: at the free rate, within a second or so. Waiting
    // that long must be enough for the next request; a longer promise is wrong (and not awaited).
    let longest_honest = (1.0 / FREE.1).ceil() as u64;
    let wait = result.last_retry_after.unwrap_or(1);
    let honest = wait <= longest_honest;
    let after_wait = if honest {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        run.api.feed(&token, "").await?.status
    } else {
        0
    };
    let passed = result.within(FREE)
        && result.limited > 0
        && result.retry_after_valid
        && honest
        && result.limited_say_zero
        && after_wait == 200;
    let summary = if result.limited == 0 {
        format!(
            "no rate limit: all {} requests of one free-tier user's burst were served (expected {}..={})",
            result.admitted,
            result.bounds(FREE).0,
            result.bounds(FREE).1
        )
    } else {
        format!(
            "{}; every 429 had Retry-After ≥ 1: {}; {}",
            result.describe(FREE),
            if result.retry_after_valid { "yes" } else { "no" },
            if honest {
                format!("after waiting {wait} s: {after_wait}")
            } else {
                format!("the last said {wait} s, but a token comes back every {longest_honest} s")
            }
        )
    };
    Ok(Check::new(
        "ratelimit.burst",
        passed,
        json!({ "admitted": result.admitted, "limited": result.limited, "retry_after_valid": result.retry_after_valid, "last_retry_after_s": wait, "status_after_retry_after": after_wait }),
        json!({ "admitted": result.expected(FREE), "retry_after_valid": true, "last_retry_after_s": Expectation::Between(1.0, longest_honest as f64), "status_after_retry_after": 200 }),
        summary,
    )
    .on_failure(DOC))
}

async fn across_instances(run: &Run<'_>, report: &mut Report) -> Check {
    const NAME: &str = "ratelimit.across_instances";
    if run.instances.len() < 2 {
        return Check::not_proven(NAME, "needs a second instance: pass --url twice, both sharing the checker's Redis");
    }
    let apis: Vec<&Api> = run.instances.iter().collect();
    let result = burst(&apis, &free_token(run, 1), BURST, false).await;
    report.metric("across_instances_admitted", result.admitted);
    report.metric("across_instances_expected_admitted_max", result.bounds(FREE).1);
    let shared = if run.env.cluster.is_some() { "one Redis Cluster" } else { "one Redis" };
    Check::new(
        NAME,
        result.within(FREE),
        result.admitted,
        result.expected(FREE),
        format!("burst split across {} instances sharing {shared}: {}", apis.len(), result.describe(FREE)),
    )
    .on_failure(DOC)
}

async fn isolation(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    // A fresh free user right after someone else's burst, and a pro user's own burst.
    let abuser = free_token(run, 2);
    let _ = burst(&[&run.api], &abuser, 200, false).await;
    let bystander = run.api.feed(&free_token(run, 3), "").await?;
    let pro = burst(&[&run.api], &run.env.token(run.users.full(204, 1)[0], Tier::Pro), 400, false).await;
    report.metric("pro_burst_admitted", pro.admitted);
    let passed = bystander.status == 200 && pro.within(PRO);
    Ok(Check::new(
        "ratelimit.isolation",
        passed,
        json!({ "bystander_status": bystander.status, "pro_admitted": pro.admitted }),
        json!({ "bystander_status": 200, "pro_admitted": pro.expected(PRO) }),
        format!(
            "another free user after a burst: {}; a pro user's burst of 400: {}",
            bystander.status,
            pro.describe(PRO)
        ),
    )
    .on_failure(DOC))
}

async fn spoofed_headers(run: &Run<'_>, report: &mut Report) -> Check {
    let result = burst(&[&run.api], &free_token(run, 5), BURST, true).await;
    report.metric("spoofed_burst_admitted", result.admitted);
    report.metric("spoofed_burst_expected_admitted_max", result.bounds(FREE).1);
    Check::new(
        "ratelimit.spoofed_headers",
        result.within(FREE),
        result.admitted,
        result.expected(FREE),
        format!("a new X-Forwarded-For / X-Real-IP on every request: {}", result.describe(FREE)),
    )
    .on_failure(DOC)
}

/// `RateLimit-Policy` and `RateLimit` on admitted responses, counting down one per request
/// (plus whatever refilled while the five requests ran, from their measured duration). Then the
/// same caller goes on until the bucket is empty: `t` (draft-ietf-httpapi-ratelimit-headers-11,
/// docs/api.md) is the seconds until the next token on every response, so on a 429 it is the
/// `Retry-After`, to the second. A client that obeys either then waits the same time.
async fn headers(run: &Run<'_>) -> anyhow::Result<Check> {
    /// Requests after the first five: enough to empty a bucket that refills while they run.
    const MORE: usize = contract::FREE.burst as usize + 20;
    /// 429s whose `t` and `Retry-After` are compared.
    const LIMITED: usize = 3;
    let token = free_token(run, 6);
    let mut seen = Vec::new();
    let started = Instant::now();
    for _ in 0..5 {
        let reply = run.api.feed(&token, "").await?;
        seen.push((reply.header("ratelimit-policy").map(str::to_owned), reply.header("ratelimit").map(str::to_owned)));
    }
    let refill = (started.elapsed().as_secs_f64() * FREE.1).floor() as u64;
    let param = |state: Option<&str>, name: &str| -> Option<u64> {
        state.and_then(|s| s.split(';').find_map(|p| p.trim().strip_prefix(name)?.strip_prefix('=')?.parse().ok()))
    };
    let remaining: Vec<Option<u64>> = seen.iter().map(|(_, state)| param(state.as_deref(), "r")).collect();
    let mut admitted_t: Vec<Option<u64>> = seen.iter().map(|(_, state)| param(state.as_deref(), "t")).collect();
    // On to the bucket's end: `t` of every admitted reply, `Retry-After` and `t` of the first 429s.
    let mut limited: Vec<(Option<u64>, Option<u64>)> = Vec::new();
    let mut sent = seen.len();
    while limited.len() < LIMITED && sent < seen.len() + MORE {
        let reply = run.api.feed(&token, "").await?;
        sent += 1;
        let t = param(reply.header("ratelimit"), "t");
        match reply.status {
            429 => limited.push((reply.header("retry-after").and_then(|v| v.parse().ok()), t)),
            _ => admitted_t.push(t),
        }
    }
    let policy = seen.first().and_then(|s| s.0.clone());
    // The policy names the bucket: its size, per the time it takes to refill it.
    let (size, window) = (FREE.0 as u64, (FREE.0 / FREE.1).ceil() as u64);
    let wanted_policy = format!("\"free\";q={size};w={window}");
    let policy_ok = seen.iter().all(|(p, _)| {
        p.as_deref().is_some_and(|p| {
            let parts: Vec<&str> = p.split(';').map(str::trim).collect();
            parts.contains(&"\"free\"")
                && parts.contains(&format!("q={size}").as_str())
                && parts.contains(&format!("w={window}").as_str())
        })
    });
    // A fresh bucket: one fewer after the first request, five fewer after the fifth (+ refill).
    let first = Expectation::Exactly((size - 1) as f64);
    let last = Expectation::Between((size - 5) as f64, (size - 5 + refill) as f64);
    let counts_down = remaining.first().copied().flatten().is_some_and(|r| first.holds(r as f64))
        && remaining.last().copied().flatten().is_some_and(|r| last.holds(r as f64));
    // After an admitted request the next token is at most one refill interval away.
    let interval = (1.0 / FREE.1).ceil();
    let t_admitted = Expectation::Between(1.0, interval);
    let t_ok = admitted_t.iter().all(|t| t.is_some_and(|t| t_admitted.holds(t as f64)));
    // Compared where the 429 has a Retry-After (its absence is ratelimit.burst's failure).
    let compared: Vec<(u64, Option<u64>)> = limited.iter().filter_map(|&(retry, t)| retry.map(|r| (r, t))).collect();
    let disagree: Vec<(u64, Option<u64>)> = compared.iter().copied().filter(|&(r, t)| t != Some(r)).collect();
    let agree = !limited.is_empty() && disagree.is_empty();
    let passed = policy_ok && counts_down && t_ok && agree;
    let summary = if passed {
        let retry: Vec<String> = compared.iter().map(|(r, _)| r.to_string()).collect();
        let against_retry = match compared.len() {
            0 => format!("but not compared with Retry-After: none of the first {} 429s had one", limited.len()),
            n if n == limited.len() => {
                format!("and equal to Retry-After on the first {n} 429s ({} s)", retry.join(", "))
            }
            n => format!(
                "and equal to Retry-After on the {n} of the first {} 429s that had one ({} s)",
                limited.len(),
                retry.join(", ")
            ),
        };
        format!(
            "RateLimit-Policy {} on every response; RateLimit remaining counts down from {}; t at most {interval} s \
             on every admitted response, {against_retry}",
            policy.clone().unwrap_or_default(),
            size - 1,
        )
    } else {
        let mut problems = Vec::new();
        if !(policy_ok && counts_down) {
            problems.push(format!(
                "RateLimit-Policy {}; RateLimit remaining {remaining:?} over 5 requests",
                policy.clone().unwrap_or_else(|| "missing".into())
            ));
        }
        if !t_ok {
            let said: Vec<u64> = admitted_t.iter().flatten().copied().collect();
            problems.push(match (said.iter().min(), said.iter().max()) {
                (Some(low), Some(high)) if said.len() == admitted_t.len() => format!(
                    "t on admitted responses said {low}..={high} s, but the next token is never more than {interval} s away"
                ),
                _ => "t missing from RateLimit on admitted responses".to_owned(),
            });
        }
        if let Some(&(retry, t)) = disagree.first() {
            problems.push(match t {
                Some(t) => format!(
                    "a 429 said Retry-After: {retry} but t={t}: a client that obeys t waits {t} s, one that obeys Retry-After {retry} s"
                ),
                None => format!("a 429 said Retry-After: {retry} but RateLimit had no t"),
            });
        } else if limited.is_empty() {
            problems.push(format!("no 429 in {sent} requests: t and Retry-After not compared"));
        }
        problems.join("; ")
    };
    let limited_json: Vec<serde_json::Value> =
        limited.iter().map(|(retry, t)| json!({ "retry_after_s": retry, "t_s": t })).collect();
    Ok(Check::new(
        "ratelimit.headers",
        passed,
        json!({ "remaining": remaining, "policy": policy, "t_admitted_s": admitted_t, "limited": limited_json }),
        json!({ "remaining_first": first, "remaining_fifth": last, "policy": wanted_policy, "t_admitted_s": t_admitted, "limited": "t_s = retry_after_s" }),
        summary,
    )
    .evidence(
        seen.iter()
            .map(|(p, s)| format!("RateLimit-Policy: {p:?}  RateLimit: {s:?}"))
            .chain(limited.iter().map(|(retry, t)| format!("429: Retry-After: {retry:?}  RateLimit t: {t:?}")))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .on_failure(DOC))
}

/// The bucket refills continuously: once it is empty, waiting `WAIT` gives back `rate × WAIT`
/// tokens (± 1), on every tier. A fixed window (INCR + EXPIRE 60) admits a whole minute's worth
/// at once, then nothing until the window ends: it fails here.
async fn refill(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const WAIT: Duration = Duration::from_secs(2);
    let tiers = [
        ("free", FREE, run.env.token(run.users.full(207, 1)[0], Tier::Free)),
        ("pro", PRO, run.env.token(run.users.full(208, 1)[0], Tier::Pro)),
    ];
    // Both tiers at once: one wait for both.
    let measured = futures::future::join_all(tiers.iter().map(|(_, (capacity, per_sec), token)| async move {
        let emptying = Instant::now();
        let first = burst(&[&run.api], token, *capacity as usize + 20, false).await;
        let emptied = Instant::now();
        tokio::time::sleep(WAIT).await;
        let second_started = Instant::now();
        // Enough to take everything a wait of WAIT can refill, with room to spare.
        let second = burst(&[&run.api], token, (per_sec * WAIT.as_secs_f64() * 2.0).ceil() as usize + 10, false).await;
        // At least what refilled between the two bursts, at most what refilled from the first
        // request of the first burst to the last of the second; ± 1 for the token being counted.
        let low = (per_sec * (second_started - emptied).as_secs_f64()).floor() - 1.0;
        let high = (per_sec * emptying.elapsed().as_secs_f64()).ceil() + 1.0;
        (first, second, Expectation::Between(low.max(1.0), high))
    }))
    .await;
    let mut passed = true;
    let mut lines = Vec::new();
    let mut measured_json = serde_json::Map::new();
    let mut expected_json = serde_json::Map::new();
    for ((name, (capacity, per_sec), _), (first, second, expected)) in tiers.iter().zip(&measured) {
        let emptied = first.limited > 0;
        let ok = emptied && expected.holds(second.admitted as f64);
        passed &= ok;
        report.metric(&format!("refill_{name}_admitted"), second.admitted);
        measured_json.insert(format!("{name}_admitted_after_wait"), json!(second.admitted));
        expected_json.insert(format!("{name}_admitted_after_wait"), json!(expected));
        lines.push(if emptied {
            format!(
                "{name}: bucket {capacity} emptied, then after {} s {} of {} admitted (refill {per_sec}/s: expected {expected})",
                WAIT.as_secs(),
                second.admitted,
                second.admitted + second.limited + second.other.len()
            )
        } else {
            format!("{name}: {} requests did not empty the bucket ({} admitted)", first.admitted + first.limited, first.admitted)
        });
    }
    Ok(Check::new("ratelimit.refill", passed, measured_json, expected_json, lines.join("; ")).on_failure(DOC))
}

/// Health checks, readiness probes and scrapers call often, without a user: a limiter on them
/// takes healthy instances out of rotation. More calls each than a free bucket holds, in a row,
/// must all answer 200.
async fn probes_unlimited(run: &Run<'_>) -> anyhow::Result<Check> {
    const CALLS: usize = contract::FREE.burst as usize + 10;
    let mut refused = Vec::new();
    for path in ["/health", "/ready", "/metrics"] {
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        for _ in 0..CALLS {
            *statuses.entry(run.api.send(run.api.get(path)).await?.status).or_default() += 1;
        }
        if statuses.keys().any(|&s| s != 200) {
            refused.push(format!("{path}: {statuses:?}"));
        }
    }
    Ok(Check::new(
        "ratelimit.probes_unlimited",
        refused.is_empty(),
        json!({ "paths_with_other_statuses": refused.len() }),
        json!({ "paths_with_other_statuses": 0 }),
        if refused.is_empty() {
            format!("{CALLS} calls each to /health, /ready and /metrics in a row: all 200")
        } else {
            format!("{CALLS} calls each to /health, /ready and /metrics in a row: {}", refused.join("; "))
        },
    )
    .on_failure(DOC))
}
