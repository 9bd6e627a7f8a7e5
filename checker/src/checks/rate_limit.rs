//! Stage-3's bar: one user's burst is cut to their bucket, exactly, however it arrives and
//! whatever varies between its requests.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use feed_core::auth::{JwtKeys, Tier};
use feed_core::contract;
use futures::StreamExt as _;
use serde_json::json;

use super::Run;
use crate::client::{Api, Reply, outcome};
use crate::registry::CheckId;
use crate::report::{Check, Expectation, Report};

const BURST: usize = 1000;
const CONNECTIONS: usize = 50;

/// The tiers (docs/stage-3.md): bucket size and refill per second.
const FREE: (f64, f64) = (contract::FREE.burst as f64, contract::FREE.per_sec());
const PRO: (f64, f64) = (contract::PRO.burst as f64, contract::PRO.per_sec());

/// `RateLimit: "free";r=59;t=1` (draft-ietf-httpapi-ratelimit-headers-11: a structured-field
/// list; the kata's services send one item, the caller's policy).
#[derive(Debug, Clone, Default, PartialEq)]
struct RateLimit {
    policy: Option<String>,
    /// Requests left.
    r: Option<u64>,
    /// Seconds until the next token.
    t: Option<u64>,
    /// `q` and `w` of a `RateLimit-Policy`.
    q: Option<u64>,
    w: Option<u64>,
}

impl RateLimit {
    fn parse(value: Option<&str>) -> Option<Self> {
        let list: sfv::List = sfv::Parser::new(value?).parse().ok()?;
        let Some(sfv::ListEntry::Item(item)) = list.into_iter().next() else { return None };
        let param = |name: &str| {
            item.params.iter().find(|(key, _)| key.as_str() == name).and_then(|(_, value)| match value {
                sfv::BareItem::Integer(n) => u64::try_from(i64::from(*n)).ok(),
                _ => None,
            })
        };
        let policy = match &item.bare_item {
            sfv::BareItem::String(s) => Some(s.as_str().to_owned()),
            sfv::BareItem::Token(s) => Some(s.as_str().to_owned()),
            _ => None,
        };
        Some(Self { policy, r: param("r"), t: param("t"), q: param("q"), w: param("w") })
    }
}

/// What a burst produced.
#[derive(Default)]
struct Burst {
    admitted: usize,
    limited: usize,
    /// Statuses other than 200 and 429.
    other: Vec<u16>,
    /// Requests that got no answer at all, with the first reason.
    unanswered: usize,
    first_error: Option<String>,
    duration: Duration,
    /// Every 429 carried a whole-seconds `Retry-After` ≥ 1 and a problem+json body.
    retry_after_valid: bool,
    last_retry_after: Option<u64>,
    /// Every 429 said `r=0` in its `RateLimit` header.
    limited_say_zero: bool,
    /// Admitted, per label of the request (a route, an address), when the burst labels them.
    admitted_by: BTreeMap<String, (usize, usize)>,
    /// Admitted responses that carried a `RateLimit` header: a limiter ran for them.
    admitted_counted: usize,
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
        self.expected(tier).holds(self.admitted as f64) && self.other.is_empty() && self.unanswered == 0
    }

    /// Every request of the burst, whatever became of it.
    fn sent(&self) -> usize {
        self.admitted + self.limited + self.other.len() + self.unanswered
    }

    fn describe(&self, tier: (f64, f64)) -> String {
        let (low, high) = self.bounds(tier);
        let mut text = format!(
            "{} admitted, {} limited of {} in {:.2} s (expected {low}..={high}: bucket {} + refill {:.1}/s × {:.2} s)",
            self.admitted,
            self.limited,
            self.sent(),
            self.duration.as_secs_f64(),
            tier.0,
            tier.1,
            self.duration.as_secs_f64(),
        );
        if !self.other.is_empty() {
            text.push_str(&format!("; other statuses: {:?}", &self.other[..self.other.len().min(5)]));
        }
        if self.unanswered > 0 {
            text.push_str(&format!(
                "; {} got no answer ({})",
                self.unanswered,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        if !self.admitted_by.is_empty() {
            let parts: Vec<String> =
                self.admitted_by.iter().map(|(label, (ok, of))| format!("{label}: {ok} of {of} admitted")).collect();
            text.push_str(&format!("; {}", parts.join(", ")));
        }
        text
    }
}

/// Send `total` requests, `CONNECTIONS` at a time: request `i` is `make(i)`, sent through the
/// client it names, under a label (empty: not broken down in the summary).
async fn burst<'a, F>(total: usize, make: F) -> Burst
where
    F: Fn(usize) -> (&'a Api, reqwest::RequestBuilder, String),
{
    let started = Instant::now();
    let replies: Vec<(String, anyhow::Result<Reply>)> = futures::stream::iter(0..total)
        .map(|i| {
            let (api, request, label) = make(i);
            async move { (label, api.send(request).await) }
        })
        .buffer_unordered(CONNECTIONS)
        .collect()
        .await;
    let mut result =
        Burst { duration: started.elapsed(), retry_after_valid: true, limited_say_zero: true, ..Burst::default() };
    for (label, reply) in replies {
        if !label.is_empty() {
            let entry = result.admitted_by.entry(label).or_default();
            entry.1 += 1;
            entry.0 += usize::from(reply.as_ref().is_ok_and(|r| r.status == 200 || r.status == 201));
        }
        match reply {
            Ok(r) if r.status == 200 || r.status == 201 => {
                result.admitted += 1;
                result.admitted_counted += usize::from(r.header("ratelimit").is_some());
            }
            Ok(r) if r.status == 429 => {
                result.limited += 1;
                let retry: Option<u64> = r.header("retry-after").and_then(|v| v.parse().ok());
                result.retry_after_valid &= retry.is_some_and(|s| s >= 1) && r.is_problem_json();
                result.last_retry_after = retry.or(result.last_retry_after);
                result.limited_say_zero &= RateLimit::parse(r.header("ratelimit")).is_some_and(|s| s.r == Some(0));
            }
            Ok(r) => result.other.push(r.status),
            Err(e) => {
                result.unanswered += 1;
                result.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    result
}

/// `total` feed requests of one token through `apis`, in turn.
async fn feed_burst(apis: &[&Api], token: &str, total: usize) -> Burst {
    burst(total, |i| {
        let api = apis[i % apis.len()];
        (api, api.get("/api/feed").bearer_auth(token), String::new())
    })
    .await
}

/// `n` free-tier users whose buckets no other check touched, with a token each.
fn free_tokens(run: &Run<'_>, n: usize) -> anyhow::Result<Vec<(i64, String)>> {
    Ok(run.users.budgets(n)?.into_iter().map(|u| (u, run.env.token(u, Tier::Free))).collect())
}

fn free_token(run: &Run<'_>) -> anyhow::Result<String> {
    Ok(free_tokens(run, 1)?.remove(0).1)
}

/// A burst held against one free bucket: the check passes when it admitted the bucket (plus
/// refill), no more.
fn one_bucket(id: CheckId, result: &Burst, what: &str) -> Check {
    Check::new(
        id,
        result.within(FREE),
        result.admitted,
        result.expected(FREE),
        format!("{what}: {}", result.describe(FREE)),
    )
}

pub async fn single_user_burst(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    let token = free_token(run)?;
    let result = feed_burst(&[&run.api], &token, BURST).await;
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
    let summary = if result.limited == 0 && result.admitted_counted == 0 {
        format!(
            "no rate limit: {} of {} requests of one free-tier user's burst were served, none with a RateLimit header (expected {}..={})",
            result.admitted,
            result.sent(),
            result.bounds(FREE).0,
            result.bounds(FREE).1
        )
    } else if result.limited == 0 {
        // A limiter ran (its header came back) and still refused nothing: it lost count.
        format!("{}; RateLimit sent on admitted responses, yet none refused", result.describe(FREE))
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
        CheckId::RatelimitBurst,
        passed,
        json!({ "admitted": result.admitted, "limited": result.limited, "retry_after_valid": result.retry_after_valid, "last_retry_after_s": wait, "status_after_retry_after": after_wait }),
        json!({ "admitted": result.expected(FREE), "retry_after_valid": true, "last_retry_after_s": Expectation::Between(1.0, longest_honest as f64), "status_after_retry_after": 200 }),
        summary,
    ))
}

pub async fn across_instances(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::RatelimitAcrossInstances;
    if run.instances.len() < 2 {
        return Ok(Check::not_proven(
            NAME,
            "needs a second instance: pass --url twice, both sharing the checker's Redis",
        ));
    }
    let apis: Vec<&Api> = run.instances.iter().collect();
    let result = feed_burst(&apis, &free_token(run)?, BURST).await;
    report.metric("across_instances_admitted", result.admitted);
    report.metric("across_instances_expected_admitted_max", result.bounds(FREE).1);
    let shared = if run.env.cluster.is_some() { "one Redis Cluster" } else { "one Redis" };
    Ok(one_bucket(NAME, &result, &format!("burst split across {} instances sharing {shared}", apis.len())))
}

/// A fresh free user right after someone else's burst; a pro user's own burst; an internal
/// caller's burst, which no bucket may cut.
pub async fn isolation(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const INTERNAL: usize = 300;
    let tokens = free_tokens(run, 2)?;
    let _ = feed_burst(&[&run.api], &tokens[0].1, 200).await;
    let bystander = run.api.feed(&tokens[1].1, "").await?;
    let [pro_user, internal_user] = run.users.budgets(2)?[..] else { unreachable!("two users") };
    let pro = feed_burst(&[&run.api], &run.env.token(pro_user, Tier::Pro), 400).await;
    let internal = feed_burst(&[&run.api], &run.env.token(internal_user, Tier::Internal), INTERNAL).await;
    report.metric("pro_burst_admitted", pro.admitted);
    let passed = bystander.status == 200 && pro.within(PRO) && internal.admitted == INTERNAL;
    Ok(Check::new(
        CheckId::RatelimitIsolation,
        passed,
        json!({ "bystander_status": bystander.status, "pro_admitted": pro.admitted, "internal_admitted": internal.admitted }),
        json!({ "bystander_status": 200, "pro_admitted": pro.expected(PRO), "internal_admitted": INTERNAL }),
        format!(
            "another free user after a burst: {}; a pro user's burst of 400: {}; an internal caller's burst of {INTERNAL}: {} admitted",
            bystander.status,
            pro.describe(PRO),
            internal.admitted
        ),
    ))
}

pub async fn spoofed_headers(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    let token = free_token(run)?;
    let api = &run.api;
    let result = burst(BURST, |i| {
        // A different client address on every request: it must not buy a new bucket.
        let ip = format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256);
        let request = api
            .get("/api/feed")
            .bearer_auth(&token)
            .header("x-forwarded-for", &ip)
            .header("x-real-ip", &ip)
            .header("forwarded", format!("for={ip}"));
        (api, request, String::new())
    })
    .await;
    report.metric("spoofed_burst_admitted", result.admitted);
    report.metric("spoofed_burst_expected_admitted_max", result.bounds(FREE).1);
    Ok(one_bucket(CheckId::RatelimitSpoofedHeaders, &result, "a new X-Forwarded-For / X-Real-IP on every request"))
}

/// A user logs in again and again: every request carries a token issued for it (the same user
/// and tier, another expiry, so other bytes and another signature).
pub async fn reissued_tokens(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    let user = run.users.budgets(1)?[0];
    let keys = JwtKeys::new(&run.env.jwt_secret);
    let tokens: Vec<String> =
        (0..BURST).map(|i| keys.mint(user, Tier::Free, Duration::from_secs(3600 + i as u64))).collect();
    let api = &run.api;
    let result = burst(BURST, |i| (api, api.get("/api/feed").bearer_auth(&tokens[i]), String::new())).await;
    report.metric("reissued_tokens_burst_admitted", result.admitted);
    Ok(one_bucket(CheckId::RatelimitReissuedTokens, &result, "one user, a newly issued token on every request"))
}

/// One user's burst from eight source addresses (127.0.0.2 to 127.0.0.9: every loopback address
/// is this machine's), as from a phone that changes networks.
pub async fn source_addresses(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::RatelimitSourceAddresses;
    let addresses: Vec<IpAddr> = (2..=9).map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))).collect();
    // Linux routes all of 127/8 to loopback; other systems may have only 127.0.0.1.
    if let Some(missing) = addresses.iter().find(|a| std::net::UdpSocket::bind((**a, 0)).is_err()) {
        return Ok(Check::not_proven(
            NAME,
            format!("this machine cannot send from {missing} (only 127.0.0.1 is a loopback address here)"),
        ));
    }
    let token = free_token(run)?;
    let clients: Vec<Api> = addresses.iter().map(|&a| Api::from_address(&run.api.base_url, Some(a))).collect();
    let result = burst(BURST, |i| {
        let api = &clients[i % clients.len()];
        (api, api.get("/api/feed").bearer_auth(&token), String::new())
    })
    .await;
    report.metric("source_addresses_burst_admitted", result.admitted);
    Ok(one_bucket(NAME, &result, "one user from 8 source addresses"))
}

/// One user's burst over the whole API: reads at several page sizes and posts, one budget.
pub async fn every_route(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    let (user, token) = free_tokens(run, 1)?.remove(0);
    let api = &run.api;
    let result = burst(BURST, |i| {
        let (request, label) = match i % 4 {
            0 => (api.get("/api/feed").bearer_auth(&token), "GET /api/feed"),
            1 => (api.get("/api/feed?limit=5").bearer_auth(&token), "GET /api/feed?limit=5"),
            2 => (api.get("/api/feed?limit=1").bearer_auth(&token), "GET /api/feed?limit=1"),
            _ => {
                let body = json!({ "user_id": user, "body": format!("budget post {i}") });
                (api.post("/api/posts").bearer_auth(&token).json(&body), "POST /api/posts")
            }
        };
        (api, request, label.to_owned())
    })
    .await;
    report.metric("every_route_burst_admitted", result.admitted);
    Ok(one_bucket(CheckId::RatelimitEveryRoute, &result, "one user's burst over reads at 3 page sizes and posts"))
}

/// Requests that fail authentication cost no one anything: 100 with tokens that name a user but
/// are signed with another key, 100 without a token; then that user's own first request sees a
/// full bucket, less itself.
pub async fn unauthenticated_free(run: &Run<'_>) -> anyhow::Result<Check> {
    const EACH: usize = 100;
    let (victim, token) = free_tokens(run, 1)?.remove(0);
    let forged = JwtKeys::new("not-the-service-secret").mint(victim, Tier::Free, Duration::from_secs(3600));
    let api = &run.api;
    let refused = burst(2 * EACH, |i| {
        let request = if i % 2 == 0 { api.get("/api/feed").bearer_auth(&forged) } else { api.get("/api/feed") };
        (api, request, String::new())
    })
    .await;
    let own = run.api.feed(&token, "").await?;
    let state = RateLimit::parse(own.header("ratelimit"));
    let full = (FREE.0 as u64) - 1;
    let left = state.as_ref().and_then(|s| s.r);
    let passed = own.status == 200 && left == Some(full) && refused.admitted == 0;
    Ok(Check::new(
        CheckId::RatelimitUnauthenticatedFree,
        passed,
        json!({ "own_status": own.status, "remaining": left, "statuses_of_the_others": refused.other.len() + refused.limited }),
        json!({ "own_status": 200, "remaining": full }),
        format!(
            "{} requests with forged tokens naming user {victim} and {EACH} without a token ({} answered 401), then the user's own: {}, RateLimit said {}",
            EACH,
            refused.other.iter().filter(|&&s| s == 401).count(),
            own.status,
            left.map_or("no r".to_owned(), |r| format!("r={r} (a full bucket less this request: r={full})"))
        ),
    )
    .evidence(format!("RateLimit: {:?}", own.header("ratelimit"))))
}

/// `RateLimit-Policy` and `RateLimit` on admitted responses, counting down one per request
/// (plus whatever refilled while the five requests ran, from their measured duration). Then the
/// same caller goes on until the bucket is empty: `t` (draft-ietf-httpapi-ratelimit-headers-11,
/// docs/api.md) is the seconds until the next token on every response, so on a 429 it is the
/// `Retry-After`, to the second. A client that obeys either then waits the same time.
pub async fn headers(run: &Run<'_>) -> anyhow::Result<Check> {
    let token = free_token(run)?;
    let seen = HeadersSeen::collect(&run.api, &token).await?;
    Ok(seen.grade())
}

/// What one caller's responses said, from a fresh bucket to its first 429s.
struct HeadersSeen {
    /// The first five responses: `RateLimit-Policy` and `RateLimit` as sent.
    first: Vec<(Option<String>, Option<String>)>,
    /// Tokens that refilled while the first five ran.
    refill: u64,
    /// `t` of every admitted response.
    admitted_t: Vec<Option<u64>>,
    /// `Retry-After` and `t` of the first 429s.
    limited: Vec<(Option<u64>, Option<u64>)>,
    sent: usize,
}

impl HeadersSeen {
    /// Requests after the first five: enough to empty a bucket that refills while they run.
    const MORE: usize = contract::FREE.burst as usize + 20;
    /// 429s whose `t` and `Retry-After` are compared.
    const LIMITED: usize = 3;

    async fn collect(api: &Api, token: &str) -> anyhow::Result<Self> {
        let mut first = Vec::new();
        let started = Instant::now();
        for _ in 0..5 {
            let reply = api.feed(token, "").await?;
            first.push((
                reply.header("ratelimit-policy").map(str::to_owned),
                reply.header("ratelimit").map(str::to_owned),
            ));
        }
        let refill = (started.elapsed().as_secs_f64() * FREE.1).floor() as u64;
        let mut admitted_t: Vec<Option<u64>> =
            first.iter().map(|(_, state)| RateLimit::parse(state.as_deref()).and_then(|s| s.t)).collect();
        let mut limited = Vec::new();
        let mut sent = first.len();
        while limited.len() < Self::LIMITED && sent < first.len() + Self::MORE {
            let reply = api.feed(token, "").await?;
            sent += 1;
            let t = RateLimit::parse(reply.header("ratelimit")).and_then(|s| s.t);
            match reply.status {
                429 => limited.push((reply.header("retry-after").and_then(|v| v.parse().ok()), t)),
                _ => admitted_t.push(t),
            }
        }
        Ok(Self { first, refill, admitted_t, limited, sent })
    }

    fn grade(&self) -> Check {
        // The policy names the bucket: its size, per the time it takes to refill it.
        let (size, window) = (FREE.0 as u64, (FREE.0 / FREE.1).ceil() as u64);
        let wanted = RateLimit { policy: Some("free".into()), q: Some(size), w: Some(window), ..RateLimit::default() };
        let policy = self.first.first().and_then(|s| s.0.clone());
        let policy_ok = self.first.iter().all(|(p, _)| RateLimit::parse(p.as_deref()).as_ref() == Some(&wanted));
        let remaining: Vec<Option<u64>> =
            self.first.iter().map(|(_, s)| RateLimit::parse(s.as_deref()).and_then(|s| s.r)).collect();
        // A fresh bucket: one fewer after the first request, five fewer after the fifth (+ refill).
        let first = Expectation::Exactly((size - 1) as f64);
        let last = Expectation::Between((size - 5) as f64, (size - 5 + self.refill) as f64);
        let counts_down = remaining.first().copied().flatten().is_some_and(|r| first.holds(r as f64))
            && remaining.last().copied().flatten().is_some_and(|r| last.holds(r as f64));
        // After an admitted request the next token is at most one refill interval away.
        let interval = (1.0 / FREE.1).ceil();
        let t_admitted = Expectation::Between(1.0, interval);
        let t_ok = self.admitted_t.iter().all(|t| t.is_some_and(|t| t_admitted.holds(t as f64)));
        // Compared where the 429 has a Retry-After (its absence is ratelimit.burst's failure).
        let compared: Vec<(u64, Option<u64>)> =
            self.limited.iter().filter_map(|&(retry, t)| retry.map(|r| (r, t))).collect();
        let disagree: Vec<(u64, Option<u64>)> = compared.iter().copied().filter(|&(r, t)| t != Some(r)).collect();
        let agree = !self.limited.is_empty() && disagree.is_empty();
        let passed = policy_ok && counts_down && t_ok && agree;
        let summary = if passed {
            format!(
                "RateLimit-Policy {} on every response; RateLimit remaining counts down from {}; t at most {interval} s \
                 on every admitted response, {}",
                policy.clone().unwrap_or_default(),
                size - 1,
                self.against_retry_after(&compared),
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
                let said: Vec<u64> = self.admitted_t.iter().flatten().copied().collect();
                problems.push(match (said.iter().min(), said.iter().max()) {
                    (Some(low), Some(high)) if said.len() == self.admitted_t.len() => format!(
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
            } else if self.limited.is_empty() {
                problems.push(format!("no 429 in {} requests: t and Retry-After not compared", self.sent));
            }
            problems.join("; ")
        };
        let limited_json: Vec<serde_json::Value> =
            self.limited.iter().map(|(retry, t)| json!({ "retry_after_s": retry, "t_s": t })).collect();
        Check::new(
            CheckId::RatelimitHeaders,
            passed,
            json!({ "remaining": remaining, "policy": policy, "t_admitted_s": self.admitted_t, "limited": limited_json }),
            json!({ "remaining_first": first, "remaining_fifth": last, "policy": format!("\"free\";q={size};w={window}"), "t_admitted_s": t_admitted, "limited": "t_s = retry_after_s" }),
            summary,
        )
        .evidence(
            self.first
                .iter()
                .map(|(p, s)| format!("RateLimit-Policy: {p:?}  RateLimit: {s:?}"))
                .chain(self.limited.iter().map(|(retry, t)| format!("429: Retry-After: {retry:?}  RateLimit t: {t:?}")))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// How `t` compared with `Retry-After` on the first 429s, said on a pass.
    fn against_retry_after(&self, compared: &[(u64, Option<u64>)]) -> String {
        let retry: Vec<String> = compared.iter().map(|(r, _)| r.to_string()).collect();
        match compared.len() {
            0 => format!("but not compared with Retry-After: none of the first {} 429s had one", self.limited.len()),
            n if n == self.limited.len() => {
                format!("and equal to Retry-After on the first {n} 429s ({} s)", retry.join(", "))
            }
            n => format!(
                "and equal to Retry-After on the {n} of the first {} 429s that had one ({} s)",
                self.limited.len(),
                retry.join(", ")
            ),
        }
    }
}

/// The bucket refills continuously: once it is empty, waiting `WAIT` gives back `rate × WAIT`
/// tokens (± 1), on every tier. A fixed window (INCR + EXPIRE 60) admits a whole minute's worth
/// at once, then nothing until the window ends: it fails here.
pub async fn refill(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const WAIT: Duration = Duration::from_secs(2);
    let [free_user, pro_user] = run.users.budgets(2)?[..] else { unreachable!("two users") };
    let tiers =
        [("free", FREE, run.env.token(free_user, Tier::Free)), ("pro", PRO, run.env.token(pro_user, Tier::Pro))];
    // Both tiers at once: one wait for both.
    let measured = futures::future::join_all(tiers.iter().map(|(_, (capacity, per_sec), token)| async move {
        let emptying = Instant::now();
        let first = feed_burst(&[&run.api], token, *capacity as usize + 20).await;
        let emptied = Instant::now();
        tokio::time::sleep(WAIT).await;
        let second_started = Instant::now();
        // Enough to take everything a wait of WAIT can refill, with room to spare.
        let second = feed_burst(&[&run.api], token, (per_sec * WAIT.as_secs_f64() * 2.0).ceil() as usize + 10).await;
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
    Ok(Check::new(CheckId::RatelimitRefill, passed, measured_json, expected_json, lines.join("; ")))
}

/// A polite client: its bucket empty, it asks every `EVERY` (more often than a token comes
/// back) for `FOR`. Admitted: the tokens that refilled meanwhile (± 1), whatever the pacing. A
/// bucket that refills whole tokens only and still moves its clock to now on every request never
/// gives this client one.
pub async fn steady_client(run: &Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const EVERY: Duration = Duration::from_millis(200);
    const FOR: Duration = Duration::from_secs(3);
    let token = free_token(run)?;
    let emptying = feed_burst(&[&run.api], &token, FREE.0 as usize + 20).await;
    let started = Instant::now();
    let (mut admitted, mut asked) = (0, 0);
    let mut statuses = BTreeMap::<String, usize>::new();
    while started.elapsed() < FOR {
        let status = outcome(&run.api.feed(&token, "").await);
        admitted += usize::from(status == "200");
        *statuses.entry(status).or_default() += 1;
        asked += 1;
        tokio::time::sleep(EVERY).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = Expectation::Between(((elapsed * FREE.1).floor() - 1.0).max(1.0), (elapsed * FREE.1).ceil() + 1.0);
    report.metric("steady_client_admitted", admitted);
    Ok(Check::new(
        CheckId::RatelimitSteadyClient,
        emptying.limited > 0 && expected.holds(admitted as f64),
        json!({ "admitted": admitted, "asked": asked }),
        json!({ "admitted": expected }),
        format!(
            "{admitted} of {asked} admitted to a free user asking every {} ms for {elapsed:.1} s after its bucket was emptied (refill {}/s: expected {expected}); statuses {}",
            EVERY.as_millis(),
            FREE.1,
            statuses.iter().map(|(s, n)| format!("{s} ×{n}")).collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// Health checks, readiness probes and scrapers call often, without a user: a limiter on them
/// takes healthy instances out of rotation. More calls each than a free bucket holds, in a row,
/// must all answer 200.
pub async fn probes_unlimited(run: &Run<'_>) -> anyhow::Result<Check> {
    const CALLS: usize = contract::FREE.burst as usize + 10;
    let mut refused = Vec::new();
    for path in ["/health", "/ready", "/metrics"] {
        let mut statuses = BTreeMap::<u16, usize>::new();
        for _ in 0..CALLS {
            *statuses.entry(run.api.send(run.api.get(path)).await?.status).or_default() += 1;
        }
        if statuses.keys().any(|&s| s != 200) {
            refused.push(format!("{path}: {statuses:?}"));
        }
    }
    Ok(Check::new(
        CheckId::RatelimitProbesUnlimited,
        refused.is_empty(),
        json!({ "paths_with_other_statuses": refused.len() }),
        json!({ "paths_with_other_statuses": 0 }),
        if refused.is_empty() {
            format!("{CALLS} calls each to /health, /ready and /metrics in a row: all 200")
        } else {
            format!("{CALLS} calls each to /health, /ready and /metrics in a row: {}", refused.join("; "))
        },
    ))
}

/// What the limiter adds to a cache hit, measured side by side: the same warm feeds read with an
/// `internal` token (exempt: no bucket) and a `free` token (one bucket round trip), alternating,
/// so both see the same machine at the same moment. Reported, not asserted.
pub async fn limiter_cost(run: &Run<'_>, report: &mut Report) -> anyhow::Result<()> {
    const READS: usize = 5;
    let (mut exempt, mut limited) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for user in run.users.budgets(20)? {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratelimit_fields_are_read_as_structured_fields() {
        let state = RateLimit::parse(Some("\"free\";r=59;t=1")).unwrap();
        assert_eq!((state.policy.as_deref(), state.r, state.t), (Some("free"), Some(59), Some(1)));
        let policy = RateLimit::parse(Some("\"pro\";q=100;w=10")).unwrap();
        assert_eq!((policy.q, policy.w), (Some(100), Some(10)));
        assert_eq!(RateLimit::parse(Some("not a ;; field")), None);
    }
}
