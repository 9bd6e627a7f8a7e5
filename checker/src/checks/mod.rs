//! `verify stage-N`: the checks of every stage up to N, against one target, in the order the
//! registry lists them (`registry::planned`).

mod cache;
mod cluster;
mod contract;
mod faults;
mod queries;
mod rate_limit;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use feed_core::api::{Author, Feed, FeedItem};
use feed_core::auth::Tier;
use serde_json::Value;

use kata_services::{AppProcess, Launch};

use crate::build::Built;
use crate::client::Api;
use crate::env::KataEnv;
use crate::registry::{CheckId, planned};
use crate::report::{Check, Report};
use crate::{StageId, Target, Topology};

/// Everything a check needs.
pub struct Run<'a> {
    pub env: &'a mut KataEnv,
    pub bar: StageId,
    pub target: Target,
    /// Where requests go: the first instance, or on a cluster topology the load balancer.
    pub api: Api,
    /// Every instance, each reached directly (not through the balancer).
    pub instances: Vec<Api>,
    pub users: Users,
    /// How the checker starts the target; `None` when somebody else runs it (`--url`).
    pub launch: Option<Launch>,
    /// The feed statement `queries_per_request` saw, and a user whose page it read: the plan
    /// checks explain it.
    feed_statement: Option<(crate::pgss::Statement, i64)>,
    /// Show what stage-0's bar measures of the database (the statements, their count) before
    /// the learner's diagnosis is right: `verify --reveal`.
    pub reveal: bool,
    /// The processes started for this run; they stop when the run ends.
    _processes: Vec<AppProcess>,
    /// The load balancer in front of them, on a cluster topology (kept to the end of the run).
    _balancer: Option<kata_services::Haproxy>,
}

/// How long a check's measuring loop may read before it grades what it has: a target that makes
/// every read wait a second must fail in seconds, not hold the checker for minutes.
pub const MEASURING_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);
/// The same for the side-by-side timings reported beside the checks (not graded).
pub const DIAGNOSIS_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

/// Seeded users handed out so that no two checks share one: each check's cache entries and token
/// buckets are its own. Chosen by query, so the same data and the same checks always get the
/// same users.
#[derive(Debug)]
pub struct Users {
    /// Timelines with at least 20 posts (the headline case: a full page), for what reads feeds.
    full: Vec<i64>,
    next_full: AtomicUsize,
    /// Every user, for what counts requests (a bucket does not care about the timeline), handed
    /// out from the last one down.
    every: Vec<i64>,
    next_budget: AtomicUsize,
    /// Timelines with 1 to 19 posts.
    pub short: Vec<i64>,
    /// Users with no posts on their timeline.
    pub empty: Vec<i64>,
}

impl Users {
    async fn load(env: &KataEnv) -> anyhow::Result<Self> {
        let by_count = |low: i64, high: i64| {
            sqlx::query_scalar::<_, i64>(
                "select user_id from posts where user_id <= (select max(id) from users)
                 group by user_id having count(*) between $1 and $2 order by user_id",
            )
            .bind(low)
            .bind(high)
            .fetch_all(&env.admin)
        };
        let full = by_count(20, i64::MAX).await?;
        let short: Vec<i64> = by_count(1, 19).await?.into_iter().take(4).collect();
        let empty = sqlx::query_scalar(
            "select id from users u where not exists (select 1 from posts p where p.user_id = u.id) order by id limit 2",
        )
        .fetch_all(&env.admin)
        .await?;
        let every = sqlx::query_scalar("select id from users order by id desc").fetch_all(&env.admin).await?;
        anyhow::ensure!(
            full.len() >= 200 && short.len() >= 4 && empty.len() >= 2,
            "verify needs full, short and empty timelines; the loaded data has {}, {} and {}. \
             Only the `small` profile has all three: run verify with `--profile small` (the default).",
            full.len(),
            short.len(),
            empty.len()
        );
        Ok(Self { full, next_full: AtomicUsize::new(0), every, next_budget: AtomicUsize::new(0), short, empty })
    }

    /// `n` full timelines no other check has had.
    pub fn timelines(&self, n: usize) -> anyhow::Result<Vec<i64>> {
        take(&self.full, &self.next_full, n, "full timelines")
    }

    /// One full timeline no other check has had.
    pub fn timeline(&self) -> anyhow::Result<i64> {
        Ok(self.timelines(1)?[0])
    }

    /// `N` full timelines no other check has had, to destructure: `let [owner, author] = …`.
    pub fn some_timelines<const N: usize>(&self) -> anyhow::Result<[i64; N]> {
        Ok(self.timelines(N)?.try_into().expect("timelines(N) has N users"))
    }

    /// `n` users whose rate-limit buckets no other check has touched.
    pub fn budgets(&self, n: usize) -> anyhow::Result<Vec<i64>> {
        take(&self.every, &self.next_budget, n, "users for rate limits")
    }
}

fn take(pool: &[i64], next: &AtomicUsize, n: usize, what: &str) -> anyhow::Result<Vec<i64>> {
    let from = next.fetch_add(n, Ordering::Relaxed);
    pool.get(from..from + n).map(<[i64]>::to_vec).ok_or_else(|| {
        anyhow::anyhow!("the checks used up the {} {what} of the seeded data (a check needs {n} more)", pool.len())
    })
}

/// How a run of `verify` is asked for.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only these checks (all of the bar's when empty). A run of some checks says so in its
    /// report and never counts as the bar passed.
    pub only: Vec<CheckId>,
    /// Show what stage-0's bar hides before the diagnosis (see [`Run::reveal`]).
    pub reveal: bool,
}

/// Run the checks of stages 0..=`bar` against `target`, showing everything they measure.
pub async fn verify(env: &mut KataEnv, bar: StageId, target: Target) -> anyhow::Result<Report> {
    verify_checks(env, bar, target, &Selection { only: Vec::new(), reveal: true }).await
}

/// [`verify`], as `selection` asks.
pub async fn verify_checks(
    env: &mut KataEnv,
    bar: StageId,
    target: Target,
    selection: &Selection,
) -> anyhow::Result<Report> {
    let only = &selection.only;
    let topology = env.topology();
    let mut report = Report::new(bar, &target.label(), &target.invocation());
    describe_environment(env, &mut report);
    let mut checks = planned(bar, topology);
    if !only.is_empty() {
        let outside: Vec<&str> = only.iter().filter(|id| !checks.contains(id)).map(|id| id.name()).collect();
        anyhow::ensure!(
            outside.is_empty(),
            "{bar}'s bar does not run {} (`cargo kata checks {bar}` lists the checks it runs)",
            outside.join(", ")
        );
        checks.retain(|id| only.contains(id));
        // Some checks of the bar only: never a verdict on the bar (not proven at best).
        report.partial = true;
    }
    let Some(launch) = build(&target, env.options.quiet_builds, &mut report, &checks).await? else {
        return Ok(report);
    };
    let users = Users::load(env).await?;
    env.flush_redis().await?;
    // A fresh pg_stat_statements for every grading: the evidence quotes the statements as this
    // target sent them, not as an earlier run (or another implementation) first did.
    crate::pgss::reset(&env.admin).await?;
    let Some(started) = start(env, bar, &target, launch.as_ref(), &mut report, &checks).await? else {
        return Ok(report);
    };
    let mut run = Run {
        env,
        bar,
        target,
        api: started.api,
        instances: started.instances,
        users,
        launch,
        feed_statement: None,
        reveal: selection.reveal,
        _processes: started.processes,
        _balancer: started.balancer,
    };
    for id in checks {
        let started = std::time::Instant::now();
        let mut check = measure(id, &mut run, &mut report).await.unwrap_or_else(|e| Check::errored(id, &e));
        check.elapsed_ms = started.elapsed().as_millis() as u64;
        report.push(check);
    }
    if !report.partial {
        diagnose(&run, &mut report).await;
    }
    Ok(report)
}

/// What a senior would look at beside the verdicts, measured side by side and reported, never
/// graded: what a cache hit saves (stage-2), what the limiter adds to one (stage-3).
async fn diagnose(run: &Run<'_>, report: &mut Report) {
    if run.bar >= StageId::Stage2
        && let Err(e) = cache::hit_vs_miss_latency(run, report).await
    {
        report.diagnosis.push(format!("hit and miss latency not measured: {e:#}"));
    }
    if run.bar >= StageId::Stage3
        && let Err(e) = rate_limit::limiter_cost(run, report).await
    {
        report.diagnosis.push(format!("limiter cost not measured: {e:#}"));
    }
}

fn describe_environment(env: &KataEnv, report: &mut Report) {
    report.environment.insert("db_latency_ms_per_direction".into(), env.services.db_latency_ms.into());
    report.environment.insert("db_round_trip_ms".into(), ((env.db_round_trip_ms * 100.0).round() / 100.0).into());
    report.environment.insert("profile".into(), env.options.profile.name().into());
    if env.cluster.is_some() {
        report.invocation.push_str(" --topology cluster");
        report
            .environment
            .insert("topology".into(), "3 instances, HAProxy, Redis Cluster of 3 masters + 3 replicas".into());
    }
}

/// Report every check of the run as not run, for `why`.
fn not_run(report: &mut Report, checks: &[CheckId], why: &str) {
    for &id in checks {
        report.push(Check::not_run(id, why));
    }
}

/// `builds`: how the target is started (`Some(None)`: somebody else runs it), or `None` when it
/// does not compile (reported).
async fn build(
    target: &Target,
    quiet: bool,
    report: &mut Report,
    checks: &[CheckId],
) -> anyhow::Result<Option<Option<Launch>>> {
    let implementation = match target {
        Target::Implementation(implementation) => implementation,
        Target::Cmd(command) => return Ok(Some(Some(Launch::Shell(command.clone())))),
        Target::Urls(_) => return Ok(Some(None)),
    };
    match crate::build::build_async(implementation.name(), quiet).await? {
        Built::Binary(program) => {
            report.push(Check::new(
                CheckId::Builds,
                true,
                true,
                true,
                format!("cargo build -p {}", implementation.name()),
            ));
            Ok(Some(Some(Launch::Program(program))))
        }
        Built::CompileError(error) => {
            report.push(
                Check::new(CheckId::Builds, false, false, true, format!("{} does not compile", implementation.name()))
                    .evidence(error)
                    .on_failure("the compiler's first error, above"),
            );
            not_run(report, checks, "it does not compile");
            Ok(None)
        }
    }
}

/// What `starts` brought up.
struct Started {
    api: Api,
    instances: Vec<Api>,
    processes: Vec<AppProcess>,
    balancer: Option<kata_services::Haproxy>,
}

/// `starts`: every instance of the target, ready (and on a cluster, behind the balancer), or
/// `None` when one did not come up (reported).
async fn start(
    env: &KataEnv,
    bar: StageId,
    target: &Target,
    launch: Option<&Launch>,
    report: &mut Report,
    checks: &[CheckId],
) -> anyhow::Result<Option<Started>> {
    let Some(launch) = launch else {
        let Target::Urls(urls) = target else { unreachable!("every target but --url has a launch") };
        let instances: Vec<Api> = urls.iter().map(|u| Api::new(u)).collect();
        return Ok(Some(Started { api: instances[0].clone(), instances, processes: Vec::new(), balancer: None }));
    };
    // Each implementation runs on the schema its own migrations give it, nothing left over.
    feed_core::db::reset_to_core_schema(&env.admin).await?;
    let started = std::time::Instant::now();
    let cluster = env.topology() == Topology::Cluster;
    // A second instance sharing the same Postgres and Redis from stage-2 on: what one instance
    // writes, the other must see (cache), and what one admits, the other must count (limiter).
    // Its start must succeed too (migrations that run twice, say). On a cluster, three, behind a
    // load balancer, as a team that scaled out runs them.
    let wanted = match (cluster, bar >= StageId::Stage2) {
        (true, _) => 3,
        (false, true) => 2,
        (false, false) => 1,
    };
    let mut processes = Vec::new();
    for n in 1..=wanted {
        match env.start_app(launch, &[]).await {
            Ok(app) => processes.push(app),
            Err(e) => {
                let which = if n == 1 {
                    "it did not become ready".to_owned()
                } else {
                    format!("instance {n} of {wanted} did not become ready")
                };
                report.push(
                    Check::new(CheckId::Starts, false, false, true, which)
                        .evidence(format!("{e:#}"))
                        .on_failure("docs/api.md#get-ready"),
                );
                not_run(report, checks, "it did not start");
                return Ok(None);
            }
        }
    }
    let instances: Vec<Api> = processes.iter().map(|app| Api::new(&app.base_url)).collect();
    let (api, balancer) = if cluster {
        let backends: Vec<String> =
            processes.iter().map(|app| app.base_url.trim_start_matches("http://").to_owned()).collect();
        // The balancer takes an instance whose GET /health answers 200: one that does not is the
        // target's failure, reported as such.
        match kata_services::Haproxy::start(None, &backends).await {
            Ok(proxy) => (Api::new(&proxy.base_url()), Some(proxy)),
            Err(e) => {
                report.push(
                    Check::new(
                        CheckId::Starts,
                        false,
                        false,
                        true,
                        "HAProxy did not take every instance (GET /health)",
                    )
                    .evidence(format!("{e:#}"))
                    .on_failure("docs/api.md#get-health"),
                );
                not_run(report, checks, "it did not start behind the balancer");
                return Ok(None);
            }
        }
    } else {
        (instances[0].clone(), None)
    };
    report.push(Check::new(
        CheckId::Starts,
        true,
        true,
        true,
        format!(
            "{wanted} instance(s) ready (GET /ready 200) {:.1} s after start{}",
            started.elapsed().as_secs_f64(),
            if cluster { ", behind HAProxy (every backend UP)" } else { "" }
        ),
    ));
    Ok(Some(Started { api, instances, processes, balancer }))
}

/// The measurement of each check: the one place a check id meets the code that measures it.
async fn measure(id: CheckId, run: &mut Run<'_>, report: &mut Report) -> anyhow::Result<Check> {
    use CheckId::*;
    match id {
        Builds | Starts => anyhow::bail!("{id} is decided before the checks run"),
        FeedMatchesOracle => contract::feed_matches_oracle(run).await,
        ErrorsProblemJson => contract::errors(run).await,
        PostsReadBack => contract::post_read_back(run).await,
        QueriesPerRequest => queries::per_request(run, report).await,
        PlanUsesTimelineIndex => queries::plan(run, report).await,
        FeedOrderIsTotal => queries::order(run).await,
        EquivalenceStage0 => queries::equivalence(run, report).await,
        CacheHitRatio => cache::hit_ratio(run, report).await,
        CacheTtlJitter => cache::ttl_jitter(run).await,
        CacheTtlNotExtended => cache::ttl_not_extended(run).await,
        CacheWarmReadStatements => cache::warm_read(run).await,
        CacheInvalidation => cache::invalidation(run).await,
        CacheRaceFillVsPost => cache::race_fill_vs_post(run).await,
        CacheRaceReadDuringPost => cache::race_read_during_post(run).await,
        CacheStampede => cache::stampede(run, report).await,
        CacheColdReadLatency => cache::cold_read_latency(run, report).await,
        RatelimitBurst => rate_limit::single_user_burst(run, report).await,
        RatelimitAcrossInstances => rate_limit::across_instances(run, report).await,
        RatelimitIsolation => rate_limit::isolation(run, report).await,
        RatelimitSpoofedHeaders => rate_limit::spoofed_headers(run, report).await,
        RatelimitReissuedTokens => rate_limit::reissued_tokens(run, report).await,
        RatelimitSourceAddresses => rate_limit::source_addresses(run, report).await,
        RatelimitEveryRoute => rate_limit::every_route(run, report).await,
        RatelimitUnauthenticatedFree => rate_limit::unauthenticated_free(run).await,
        RatelimitHeaders => rate_limit::headers(run).await,
        RatelimitProbesUnlimited => rate_limit::probes_unlimited(run).await,
        RatelimitRefill => rate_limit::refill(run, report).await,
        RatelimitSteadyClient => rate_limit::steady_client(run, report).await,
        ClusterFailover => cluster::failover(run, report).await,
        RedisHung => faults::redis_hung(run, report).await,
        RedisDown => faults::redis_down(run, report).await,
        RatelimitFailClosed => faults::fail_closed(run).await,
        PostgresDown => faults::postgres_down(run).await,
    }
}

impl Run<'_> {
    /// A token for checks that are not about rate limiting: `internal` is exempt from the
    /// stage-3 limiter, so those checks measure the same thing at every stage.
    pub fn token(&self, user_id: i64) -> String {
        self.env.token(user_id, Tier::Internal)
    }

    /// The feed as the checker's own SQL computes it, independently of any stage.
    pub async fn oracle(&self, user_id: i64, limit: i64) -> anyhow::Result<Value> {
        // `'oracle' as checker`: pg_stat_statements keeps the first text it sees for a statement's
        // shape, and aliases are not part of the shape. Without a column of its own, the oracle's
        // text would stand for a learner's JOIN of the same shape in the evidence they read.
        #[derive(sqlx::FromRow)]
        struct Row {
            id: i64,
            body: String,
            created_at: chrono::DateTime<chrono::Utc>,
            author_id: i64,
            name: String,
            avatar: String,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "select p.id, p.body, p.created_at, a.id as author_id, a.name, a.avatar, 'oracle' as checker
             from posts p join users a on a.id = p.author_id
             where p.user_id = $1
             order by p.created_at desc, p.id desc
             limit $2",
        )
        .bind(user_id)
        .bind(limit)
        .fetch_all(&self.env.admin)
        .await?;
        let items = rows
            .into_iter()
            .map(|row| FeedItem {
                id: row.id,
                body: row.body,
                created_at: row.created_at,
                author: Author { id: row.author_id, name: row.name, avatar: row.avatar },
            })
            .collect();
        Ok(serde_json::to_value(Feed { user_id, items })?)
    }

    /// The premise of the freshness checks: does the target keep anything in Redis when it serves
    /// a feed? (Two reads of one timeline with an exempt token: a cache leaves a key, nothing else
    /// does.) Without a cache, "a post is visible on the next read" proves nothing.
    pub async fn caches(&self) -> anyhow::Result<bool> {
        self.env.flush_redis().await?;
        let token = self.token(self.users.timeline()?);
        // Two answered reads; a service still recovering from a fault gets a few tries (this
        // premise is not what is graded).
        let mut answered = 0;
        for _ in 0..10 {
            let reply = self.api.feed(&token, "").await?;
            if reply.status != 200 {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                continue;
            }
            answered += 1;
            if answered == 2 {
                return Ok(!self.env.redis_keys("*").await?.is_empty());
            }
        }
        anyhow::bail!("feed reads of one timeline did not answer 200 twice in 10 tries")
    }

    /// Counters from every instance's `/metrics`, added up (empty when it has none). Each
    /// instance is asked directly: through a balancer, one scrape would see one instance.
    pub async fn service_counters(&self) -> BTreeMap<String, f64> {
        let mut counters = BTreeMap::new();
        for api in &self.instances {
            let Ok(reply) = api.send(api.get("/metrics")).await else { continue };
            for (name, value) in kata_services::prometheus::samples(&reply.text()) {
                *counters.entry(name).or_default() += value;
            }
        }
        counters
    }
}

/// Response JSON with timestamps normalised (`+00:00` and `Z` are the same instant), so an
/// implementation in another language is compared on content, not on formatting.
pub fn normalise(mut feed: Value) -> Value {
    if let Some(items) = feed.get_mut("items").and_then(Value::as_array_mut) {
        for item in items {
            if let Some(at) = item.get_mut("created_at")
                && let Some(parsed) = at.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            {
                *at = Value::String(parsed.with_timezone(&chrono::Utc).to_rfc3339());
            }
        }
    }
    feed
}

/// "first ids 5, 4, 3" — enough of a feed to see where two differ.
pub fn describe(feed: &Value) -> String {
    let ids: Vec<String> = feed
        .get("items")
        .and_then(Value::as_array)
        .map(|items| items.iter().take(5).map(|i| i.get("id").map_or("?".into(), |v| v.to_string())).collect())
        .unwrap_or_default();
    let n = feed.get("items").and_then(Value::as_array).map_or(0, Vec::len);
    format!("{n} items, first ids [{}]", ids.join(", "))
}

/// At most about `max` characters of `text`, cut at a word or field boundary, never inside a
/// token, and saying how much was left out.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let head: String = text.chars().take(max).collect();
    let cut = head.rfind([' ', ',', '\n']).filter(|&i| i > max / 2).unwrap_or(head.len());
    let kept = &head[..cut];
    format!("{kept} … ({} more characters)", text.chars().count() - kept.chars().count())
}

/// The median and 99th percentile of latencies in ms.
pub fn percentiles(ms: Vec<f64>) -> (f64, f64) {
    (kata_services::stats::percentile(&ms, 0.5), kata_services::stats::percentile(&ms, 0.99))
}
