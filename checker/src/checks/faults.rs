//! Faults the checker causes and watches the service through: Redis frozen, Redis stopped,
//! Postgres stopped. During each, the service must answer as the brief promises; after each, it
//! must be back to its warm state within [`WARM_WITHIN`]: nothing the fault left behind (a lock, a
//! marker, an open circuit) may outlive its purpose.

use std::time::{Duration, Instant};

use feed_core::auth::Tier;
use serde_json::json;

use super::{Run, excerpt, normalise};
use crate::StageId;
use crate::client::{Reply, outcome};
use crate::pgss;
use crate::registry::CheckId;
use crate::report::{Check, Expectation, Report};

/// How soon after a fault ends a cached page must be served from the cache again.
pub const WARM_WITHIN: Duration = Duration::from_secs(5);
/// A read slower than this is no cache hit, even without SQL (it waited for something).
const HIT_WITHIN: Duration = Duration::from_millis(250);
/// How long Redis stays frozen, and how long any request may take meanwhile.
const FROZEN: Duration = Duration::from_secs(2);
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// How long a request may take while the database is down, and how long the service may take
/// to serve again once it is back: the core's request deadline (twice the 5 s acquire timeout).
const RECOVERY: Duration = Duration::from_secs(10);

const NO_CACHE: &str = "nothing is cached, so there is no cache to lose";

/// How a service came back after a fault.
struct WarmAgain {
    /// When a pass over every watched page was all hits again (no SQL, each answered within
    /// [`HIT_WITHIN`]), after the fault.
    after: Option<Duration>,
    /// Each pass: the outcomes (statuses, or why none came), the slowest read in ms, the
    /// statements it ran.
    passes: Vec<(Vec<String>, u128, i64)>,
}

impl WarmAgain {
    /// Read each of `tokens`' feeds, every 200 ms, until a whole pass is hits, for [`WARM_WITHIN`]
    /// at most. Several pages, so that on a cluster every master (and the service's connection to
    /// it) is back, not only the one holding a page.
    async fn watch(run: &Run<'_>, tokens: &[String]) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut passes = Vec::new();
        while started.elapsed() < WARM_WITHIN {
            let before = pgss::snapshot(&run.env.admin).await?;
            let (mut statuses, mut slowest) = (Vec::new(), Duration::ZERO);
            for token in tokens {
                let sent = Instant::now();
                statuses.push(outcome(&run.api.feed(token, "").await));
                slowest = slowest.max(sent.elapsed());
            }
            let statements = pgss::total_calls(&pgss::delta(&before, &pgss::snapshot(&run.env.admin).await?));
            let hits = statuses.iter().all(|s| s == "200") && statements == 0 && slowest < HIT_WITHIN;
            passes.push((statuses, slowest.as_millis(), statements));
            if hits {
                return Ok(Self { after: Some(started.elapsed()), passes });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self { after: None, passes })
    }

    fn warm(&self) -> bool {
        self.after.is_some()
    }

    fn describe(&self) -> String {
        let pages = self.passes.first().map_or(0, |p| p.0.len());
        match self.after {
            Some(after) => format!(
                "warm again after {:.1} s ({} pass(es) over {pages} pages)",
                after.as_secs_f64(),
                self.passes.len()
            ),
            None => {
                let statements: i64 = self.passes.iter().map(|p| p.2).sum();
                let slowest = self.passes.iter().map(|p| p.1).max().unwrap_or(0);
                let failed = self.passes.iter().flat_map(|p| &p.0).filter(|s| *s != "200").count();
                format!(
                    "not warm again within {} s: {} passes over {pages} pages ran {statements} SQL statement(s), the slowest read {slowest} ms{}",
                    WARM_WITHIN.as_secs(),
                    self.passes.len(),
                    if failed > 0 { format!(", {failed} reads not 200") } else { String::new() }
                )
            }
        }
    }

    fn evidence(&self) -> String {
        let passes: Vec<String> = self
            .passes
            .iter()
            .map(|(statuses, ms, statements)| format!("{statuses:?} slowest {ms} ms, {statements} SQL"))
            .collect();
        format!("passes after the fault: {}", passes.join("; "))
    }
}

/// After a fault: warm again, when the target cached before it (`None`: it did not).
fn warm_ok(again: &Option<WarmAgain>) -> bool {
    again.as_ref().is_none_or(WarmAgain::warm)
}

fn describe_again(again: &Option<WarmAgain>) -> String {
    again.as_ref().map_or_else(|| "nothing was cached before the fault".to_owned(), WarmAgain::describe)
}

fn evidence_again(again: &Option<WarmAgain>) -> String {
    again.as_ref().map_or_else(String::new, WarmAgain::evidence)
}

fn warm_again_s(again: &Option<WarmAgain>) -> Option<f64> {
    again.as_ref().and_then(|a| a.after).map(|d| d.as_secs_f64())
}

/// The pages a fault check watches: three timelines nobody else reads, warmed before the fault
/// (the premise: does this target cache at all?), and read again after it.
struct Watched {
    users: Vec<i64>,
    tokens: Vec<String>,
    /// They were served from the cache before the fault: the target caches, and must again.
    cached_before: bool,
}

impl Watched {
    async fn warm_up(run: &Run<'_>) -> anyhow::Result<Self> {
        let users = run.users.timelines(3)?;
        let tokens: Vec<String> = users.iter().map(|&u| run.token(u)).collect();
        let cached_before = run.bar >= StageId::Stage2 && WarmAgain::watch(run, &tokens).await?.warm();
        Ok(Self { users, tokens, cached_before })
    }

    /// After the fault: these pages and `also` (a page the fault caught cold), until all are hits.
    async fn again(&self, run: &Run<'_>, also: &str) -> anyhow::Result<Option<WarmAgain>> {
        if !self.cached_before {
            return Ok(None);
        }
        let tokens: Vec<String> = std::iter::once(also.to_owned()).chain(self.tokens.iter().cloned()).collect();
        Ok(Some(WarmAgain::watch(run, &tokens).await?))
    }
}

/// A request sent during a fault, timed.
struct Timed {
    reply: Reply,
    ms: u128,
}

async fn timed(request: impl std::future::Future<Output = anyhow::Result<Reply>>) -> Timed {
    let started = Instant::now();
    // No answer at all (the client gave up after 15 s) is a hang: a failure, not an error.
    let reply = request.await.unwrap_or_else(|e| Reply::nothing(&format!("no answer: {e:#}")));
    Timed { reply, ms: started.elapsed().as_millis() }
}

/// Whether the checker can cause this fault: it started the service, and owns its Redis.
fn redis_fault_possible(run: &mut Run<'_>, id: CheckId) -> Option<Check> {
    if run.launch.is_none() {
        return Some(Check::not_proven(
            id,
            "the checker did not start this service, so it cannot watch it through a Redis fault it causes",
        ));
    }
    if !run.env.owns_redis() {
        return Some(Check::not_proven(
            id,
            "REDIS_URL points at a Redis the checker did not start; it will not stop yours (unset REDIS_URL)",
        ));
    }
    None
}

/// Redis frozen (SIGSTOP) for [`FROZEN`]: it accepts what it is sent and answers nothing. A cold
/// read, a warm read, a post and (stage-3) a free-tier read must each answer correctly within
/// [`ANSWER_WITHIN`]; once Redis goes on, the post is in the next read and the cold page is
/// cached again within [`WARM_WITHIN`].
pub async fn redis_hung(run: &mut Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::RedisHung;
    if let Some(unproven) = redis_fault_possible(run, NAME) {
        return Ok(unproven);
    }
    let watched = Watched::warm_up(run).await?;
    if !watched.cached_before && run.bar < StageId::Stage3 {
        return Ok(Check::not_applicable(NAME, NO_CACHE));
    }
    let [cold, owner, author] = run.users.some_timelines()?;
    let free = run.env.token(run.users.budgets(1)?[0], Tier::Free);
    let (cold_token, warm_token, warm) = (run.token(cold), watched.tokens[0].clone(), watched.users[0]);
    let body = json!({ "user_id": owner, "body": "posted while Redis hung" });
    let frozen_at = Instant::now();
    run.env.services.owned_redis().expect("redis_fault_possible").pause();
    let stage_3 = run.bar >= StageId::Stage3;
    let author_token = run.token(author);
    let redis = run.env.services.owned_redis().expect("redis_fault_possible");
    // Redis goes on after FROZEN whatever the requests do: a service without a timeout must not
    // keep it frozen (nor make the summary's "frozen 2 s" untrue).
    let ((cold_read, warm_read, posted, free_read), ()) = futures::join!(
        async {
            futures::join!(
                timed(run.api.feed(&cold_token, "")),
                timed(run.api.feed(&warm_token, "")),
                timed(run.api.send(run.api.post("/api/posts").bearer_auth(&author_token).json(&body))),
                async { if stage_3 { Some(timed(run.api.feed(&free, "")).await) } else { None } },
            )
        },
        async {
            tokio::time::sleep(FROZEN.saturating_sub(frozen_at.elapsed())).await;
            redis.resume();
        },
    );

    let correct = |timed: &Timed, expected: &serde_json::Value| {
        timed.reply.status == 200 && timed.reply.json().map(normalise).as_ref() == Some(expected)
    };
    let cold_ok = correct(&cold_read, &normalise(run.oracle(cold, 20).await?));
    let warm_ok = correct(&warm_read, &normalise(run.oracle(warm, 20).await?));
    let post_id = posted.reply.json().map(|p| p["id"].clone()).unwrap_or_default();
    let next = run.api.feed(&run.token(owner), "").await?;
    let post_shows = posted.reply.status == 201 && next.json().is_some_and(|f| f["items"][0]["id"] == post_id);
    let bound = Expectation::AtMost(ANSWER_WITHIN.as_millis() as f64);
    let prompt =
        [&cold_read, &warm_read, &posted].into_iter().chain(free_read.as_ref()).all(|t| bound.holds(t.ms as f64));
    let free_ok = free_read.as_ref().is_none_or(|t| t.reply.status == 200);
    let again = watched.again(run, &cold_token).await?;
    let slowest = [&cold_read, &warm_read, &posted].iter().map(|t| t.ms).max().unwrap_or(0) as u64;
    report.metric("redis_hung_slowest_ms", slowest);
    let show = |t: &Timed, ok: bool| format!("{} in {} ms{}", t.reply.status, t.ms, if ok { "" } else { " (wrong)" });
    Ok(Check::new(
        NAME,
        cold_ok && warm_ok && post_shows && prompt && free_ok && self::warm_ok(&again),
        json!({ "cold": cold_read.reply.status, "warm": warm_read.reply.status, "post": posted.reply.status, "slowest_ms": slowest, "post_in_next_read": post_shows, "warm_again_s": warm_again_s(&again) }),
        json!({ "cold": 200, "warm": 200, "post": 201, "slowest_ms": bound, "post_in_next_read": true, "warm_again_s": format!("<= {}", WARM_WITHIN.as_secs()) }),
        format!(
            "Redis frozen {} s: cold read {}, warm read {}, POST {}{}; Redis going on: the post {} the next read; {}",
            FROZEN.as_secs(),
            show(&cold_read, cold_ok),
            show(&warm_read, warm_ok),
            show(&posted, posted.reply.status == 201),
            free_read.as_ref().map_or(String::new(), |t| format!(", free-tier read {}", show(t, t.reply.status == 200))),
            if post_shows { "is first in" } else { "is missing from" },
            describe_again(&again)
        ),
    )
    .evidence(format!(
        "cold → {} {}\nwarm → {} {}\nPOST → {} {}\n{}",
        cold_read.reply.status,
        excerpt(&cold_read.reply.text(), 150),
        warm_read.reply.status,
        excerpt(&warm_read.reply.text(), 150),
        posted.reply.status,
        excerpt(&posted.reply.text(), 150),
        evidence_again(&again)
    )))
}

/// Stop Redis: the feed must still answer from Postgres, and (stage-3) a free-tier request is
/// served, the limiter failing open. Start it: the service is warm again without a restart.
pub async fn redis_down(run: &mut Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::RedisDown;
    if let Some(unproven) = redis_fault_possible(run, NAME) {
        return Ok(unproven);
    }
    let watched = Watched::warm_up(run).await?;
    if !watched.cached_before && run.bar < StageId::Stage3 {
        return Ok(Check::not_applicable(NAME, NO_CACHE));
    }
    let user = run.users.timeline()?;
    let token = run.token(user);
    let free = run.env.token(run.users.budgets(1)?[0], Tier::Free);
    run.env.stop_redis();
    let outcome = async {
        let down = timed(run.api.feed(&token, "")).await;
        let expected = normalise(run.oracle(user, 20).await?);
        let correct = down.reply.status == 200 && down.reply.json().map(normalise) == Some(expected);
        let limited = if run.bar >= StageId::Stage3 { Some(outcome(&run.api.feed(&free, "").await)) } else { None };
        anyhow::Ok((down, correct, limited))
    }
    .await;
    // Whatever happened above, the checks after this one get their Redis back.
    run.env.restart_redis().await?;
    let (down, correct, limited) = outcome?;
    let again = watched.again(run, &token).await?;
    // The limiter counts again (within the same bound): a free-tier request carries its bucket's
    // state.
    let counted = if run.bar >= StageId::Stage3 {
        let started = Instant::now();
        let mut counted = false;
        while !counted && started.elapsed() < WARM_WITHIN {
            let reply = run.api.feed(&free, "").await?;
            counted = reply.status == 200 && reply.header("ratelimit").is_some();
            if !counted {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Some(counted)
    } else {
        None
    };
    report.metric("redis_down_feed_ms", down.ms as u64);
    let limiter_ok = limited.as_deref().is_none_or(|s| s == "200") && counted.is_none_or(|c| c);
    // A refused connection is quick to see: the answer may not wait for it (S2.3, S3.7).
    let prompt = Expectation::AtMost(ANSWER_WITHIN.as_millis() as f64);
    Ok(Check::new(
        NAME,
        correct && prompt.holds(down.ms as f64) && warm_ok(&again) && limiter_ok,
        json!({ "answered_in_ms": down.ms, "status_while_down": down.reply.status, "correct": correct, "free_tier_status_while_down": limited, "warm_again_s": warm_again_s(&again), "limiter_counts_again": counted }),
        json!({ "answered_in_ms": prompt, "status_while_down": 200, "correct": true, "free_tier_status_while_down": limited.as_ref().map(|_| "200"), "warm_again_s": format!("<= {}", WARM_WITHIN.as_secs()), "limiter_counts_again": counted.map(|_| true) }),
        format!(
            "{} stopped: feed {} ({}) in {} ms{}; Redis back: {}{}",
            if run.env.cluster.is_some() { "every Redis Cluster node" } else { "Redis" },
            down.reply.status,
            if correct { "correct" } else { "wrong" },
            down.ms,
            limited.map_or(String::new(), |s| format!(", free-tier request {s} (the limiter fails open: 200)")),
            describe_again(&again),
            match counted {
                Some(true) => ", the limiter counts again (RateLimit sent)",
                Some(false) => ", but for 5 s no free-tier request carried RateLimit: the limiter does not count",
                None => "",
            }
        ),
    )
    .evidence(format!("while down: {} {}\n{}", down.reply.status, excerpt(&down.reply.text(), 200), evidence_again(&again))))
}

/// `RATE_LIMIT_ON_REDIS_ERROR=closed` is honoured: an instance started with it refuses a request
/// it cannot count (503 problem+json) while Redis is stopped, and serves again once it is back.
pub async fn fail_closed(run: &mut Run<'_>) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::RatelimitFailClosed;
    if let Some(unproven) = redis_fault_possible(run, NAME) {
        return Ok(unproven);
    }
    let launch = run.launch.clone().expect("redis_fault_possible");
    let closed = run.env.start_app(&launch, &[("RATE_LIMIT_ON_REDIS_ERROR", "closed")]).await?;
    let api = crate::client::Api::new(&closed.base_url);
    let free = run.env.token(run.users.budgets(1)?[0], Tier::Free);
    let before = api.feed(&free, "").await?;
    run.env.stop_redis();
    let down = timed(api.feed(&free, "")).await;
    run.env.restart_redis().await?;
    let mut after = String::new();
    let started = Instant::now();
    while started.elapsed() < WARM_WITHIN {
        after = outcome(&api.feed(&free, "").await);
        if after == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = down.reply.status == 503 && down.reply.is_problem_json();
    let prompt = Expectation::AtMost(ANSWER_WITHIN.as_millis() as f64);
    Ok(Check::new(
        NAME,
        before.status == 200 && refused && prompt.holds(down.ms as f64) && after == "200",
        json!({ "before": before.status, "while_down": down.reply.status, "answered_in_ms": down.ms, "after": after }),
        json!({ "before": 200, "while_down": "503 problem+json", "answered_in_ms": prompt, "after": "200" }),
        format!(
            "an instance with RATE_LIMIT_ON_REDIS_ERROR=closed: free-tier request {} before, {} in {} ms with Redis stopped (closed: 503), {} once Redis was back",
            before.status, down.reply.status, down.ms, after
        ),
    )
    .evidence(format!("while down: {} {}", down.reply.status, excerpt(&down.reply.text(), 200))))
}

/// Stop Postgres: what needs the database answers 503 problem+json, never a hang or a 500, and
/// `/ready` says so; start it again: the service answers 200 without being restarted, and a
/// cache serves the page that failed during the outage again within [`WARM_WITHIN`].
pub async fn postgres_down(run: &mut Run<'_>) -> anyhow::Result<Check> {
    const NAME: CheckId = CheckId::PostgresDown;
    if run.launch.is_none() {
        return Ok(Check::not_proven(
            NAME,
            "the checker did not start this service, so it will not stop the database under it",
        ));
    }
    if run.env.services.owned_postgres().is_none() {
        return Ok(Check::not_proven(
            NAME,
            "DATABASE_URL points at a PostgreSQL the checker did not start; it will not stop yours (unset DATABASE_URL)",
        ));
    }
    let watched = Watched::warm_up(run).await?;
    // A timeline nobody read yet: a cache cannot answer it, the database must.
    let [cold, other, author] = run.users.some_timelines()?;
    run.env.services.owned_postgres().expect("checked above").stop();
    let outcome = async {
        let body = json!({ "user_id": other, "body": "while the database is down" });
        let cold_token = run.token(cold);
        let (feed, posted, ready) = futures::join!(
            timed(run.api.feed(&cold_token, "")),
            timed(run.api.send(run.api.post("/api/posts").bearer_auth(run.token(author)).json(&body))),
            timed(run.api.send(run.api.get("/ready"))),
        );
        (feed, posted, ready)
    }
    .await;
    run.env.services.owned_postgres().expect("checked above").restart().await?;
    let (feed, posted, ready) = outcome;
    let down_ms = feed.ms.max(posted.ms).max(ready.ms);
    let (resumed, attempts, wrote) = recover(run, cold, other, author).await;
    let again = if resumed { watched.again(run, &run.token(cold)).await? } else { None };
    let unavailable = |t: &Timed| t.reply.status == 503 && t.reply.is_problem_json();
    let prompt = Expectation::AtMost(RECOVERY.as_millis() as f64);
    let passed = unavailable(&feed)
        && unavailable(&posted)
        && unavailable(&ready)
        && prompt.holds(down_ms as f64)
        && resumed
        && warm_ok(&again);
    Ok(Check::new(
        NAME,
        passed,
        json!({ "feed": feed.reply.status, "post": posted.reply.status, "ready": ready.reply.status, "answered_within_ms": down_ms, "recovered": resumed, "warm_again_s": warm_again_s(&again) }),
        json!({ "feed": 503, "post": 503, "ready": "503 problem+json", "answered_within_ms": prompt, "recovered": true, "warm_again_s": if watched.cached_before { format!("<= {}", WARM_WITHIN.as_secs()) } else { "(nothing was cached)".to_owned() } }),
        format!(
            "Postgres stopped: cold feed {}, POST {}, /ready {} (all answered within {down_ms} ms); Postgres back: {}{}",
            feed.reply.status,
            posted.reply.status,
            ready.reply.status,
            if resumed {
                format!("POST 201 and feed 200 again after {attempts} attempt(s)")
            } else if wrote {
                format!("POST 201, but no feed 200 for {} s", RECOVERY.as_secs())
            } else {
                format!("no 201 for {} s", RECOVERY.as_secs())
            },
            again.as_ref().map_or(String::new(), |a| format!("; the page read during the outage: {}", a.describe()))
        ),
    )
    .evidence(format!(
        "feed → {} {}\nPOST → {} {}\n/ready → {} {}{}",
        feed.reply.status,
        excerpt(&feed.reply.text(), 200),
        posted.reply.status,
        excerpt(&posted.reply.text(), 200),
        ready.reply.status,
        excerpt(&ready.reply.text(), 200),
        again.as_ref().map_or(String::new(), |a| format!("\n{}", a.evidence()))
    )))
}

/// After Postgres is back: pooled connections died with the server, and each pool must replace
/// them by itself within the time a request may take. Writes read no cache, so each needs the
/// database: every instance must have answered a POST 201 (asked directly, not through the
/// balancer, so that no instance's pool is left untried), and the page that failed during the
/// outage a 200. (Recovered, attempts, wrote.)
async fn recover(run: &Run<'_>, cold: i64, other: i64, author: i64) -> (bool, usize, bool) {
    let started = Instant::now();
    let mut attempts = 0;
    let mut written = vec![false; run.instances.len()];
    let mut read = false;
    loop {
        attempts += 1;
        for (api, done) in run.instances.iter().zip(written.iter_mut()).filter(|(_, done)| !**done) {
            let body = json!({ "user_id": other, "body": "the database is back" });
            let reply = api.send(api.post("/api/posts").bearer_auth(run.token(author)).json(&body)).await;
            *done = reply.is_ok_and(|r| r.status == 201);
        }
        let wrote = written.iter().all(|&w| w);
        if wrote && !read {
            read = run.api.feed(&run.token(cold), "").await.is_ok_and(|r| r.status == 200);
        }
        if wrote && read {
            return (true, attempts, wrote);
        }
        if started.elapsed() > RECOVERY {
            return (false, attempts, wrote);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
