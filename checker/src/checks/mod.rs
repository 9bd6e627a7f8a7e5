//! `verify stage-N`: the checks of every stage up to N, against one target.

mod cache;
mod cluster;
mod contract;
mod queries;
mod rate_limit;

use std::collections::BTreeMap;

use feed_core::api::{Author, Feed, FeedItem};
use feed_core::auth::Tier;
use serde_json::Value;

use kata_services::{AppProcess, Launch};

use crate::build::Built;
use crate::client::Api;
use crate::env::KataEnv;
use crate::report::{Check, Report};
use crate::{StageId, Target};

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
    /// The processes started for this run; they stop when the run ends.
    _processes: Vec<AppProcess>,
    /// The load balancer in front of them, on a cluster topology (kept to the end of the run).
    _balancer: Option<kata_services::Haproxy>,
}

/// How long a check's measuring loop may read before it grades what it has: a target that makes
/// every read wait a second must fail in a minute, not hold the checker for ten.
pub const MEASURING_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);
/// The same for the side-by-side timings reported beside the checks (not graded).
pub const DIAGNOSIS_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

/// Disjoint sets of seeded users, so one check's cache entries or token buckets never leak into
/// another's measurement. Chosen by query, so the same data always gives the same users.
#[derive(Debug, Clone)]
pub struct Users {
    /// Timelines with at least 20 posts (the headline case: a full page).
    pub full: Vec<i64>,
    /// Timelines with 1 to 19 posts.
    pub short: Vec<i64>,
    /// Users with no posts on their timeline.
    pub empty: Vec<i64>,
}

impl Users {
    async fn load(env: &KataEnv) -> anyhow::Result<Self> {
        let by_count = |low: i64, high: i64, n: i64| {
            sqlx::query_scalar::<_, i64>(
                "select user_id from posts where user_id <= (select max(id) from users)
                 group by user_id having count(*) between $1 and $2 order by user_id limit $3",
            )
            .bind(low)
            .bind(high)
            .bind(n)
            .fetch_all(&env.admin)
        };
        let full = by_count(20, i64::MAX, 400).await?;
        let short = by_count(1, 19, 4).await?;
        let empty = sqlx::query_scalar(
            "select id from users u where not exists (select 1 from posts p where p.user_id = u.id) order by id limit 2",
        )
        .fetch_all(&env.admin)
        .await?;
        anyhow::ensure!(
            full.len() >= 210 && short.len() >= 4 && empty.len() >= 2,
            "verify needs full, short and empty timelines; the loaded data has {}, {} and {}. \
             Only the `small` profile has all three: run verify with `--profile small` (the default).",
            full.len(),
            short.len(),
            empty.len()
        );
        Ok(Self { full, short, empty })
    }

    /// `n` full timelines starting at `from`; each check uses its own range.
    pub fn full(&self, from: usize, n: usize) -> &[i64] {
        &self.full[from..from + n]
    }
}

/// The checks of each bar, in the order `verify` runs them (before them: `builds` for a cargo
/// target, `starts` for anything the checker starts). On a Redis Cluster (`cluster`), the
/// failover check runs too.
pub fn planned(bar: StageId, cluster: bool) -> Vec<&'static str> {
    let mut names = vec!["feed.matches_oracle", "errors.problem_json", "posts.read_back", "queries_per_request"];
    if bar >= StageId::Stage1 {
        names.extend(["plan.uses_timeline_index", "feed.order_is_total", "equivalence.stage_0"]);
    }
    if bar >= StageId::Stage2 {
        names.extend(cache::CHECKS);
    }
    if bar >= StageId::Stage3 {
        names.extend(rate_limit::CHECKS);
    }
    if cluster && bar >= StageId::Stage2 {
        names.push(cluster::FAILOVER);
    }
    if bar >= StageId::Stage2 {
        names.push("redis_down");
    }
    names.push("postgres_down");
    names
}

/// Run the checks of stages 0..=`bar` against `target`.
pub async fn verify(env: &mut KataEnv, bar: StageId, target: Target) -> anyhow::Result<Report> {
    let mut report = Report::new(bar.name(), &target.label(), &target.invocation());
    report.environment.insert("db_latency_ms_per_direction".into(), env.services.db_latency_ms.into());
    report.environment.insert("db_round_trip_ms".into(), ((env.db_round_trip_ms * 100.0).round() / 100.0).into());
    report.environment.insert("profile".into(), env.options.profile.name().into());
    let cluster = env.cluster.is_some();
    if cluster {
        report.invocation.push_str(" --topology cluster");
        report
            .environment
            .insert("topology".into(), "3 instances, HAProxy, Redis Cluster of 3 masters + 3 replicas".into());
    }
    let not_run = |report: &mut Report, why: &str| {
        for name in planned(bar, cluster) {
            report.push(Check::not_run(name, why));
        }
    };

    let launch = match &target {
        Target::Implementation(implementation) => match crate::build::build_async(implementation.name()).await? {
            Built::Binary(program) => {
                report.push(Check::new(
                    "builds",
                    true,
                    true,
                    true,
                    format!("cargo build -p {}", implementation.name()),
                ));
                Some(Launch::Program(program))
            }
            Built::CompileError(error) => {
                report.push(
                    Check::new("builds", false, false, true, format!("{} does not compile", implementation.name()))
                        .evidence(error)
                        .on_failure("the compiler's first error, above"),
                );
                not_run(&mut report, "it does not compile");
                return Ok(report);
            }
        },
        Target::Cmd(command) => Some(Launch::Shell(command.clone())),
        Target::Urls(_) => None,
    };
    let users = Users::load(env).await?;
    env.flush_redis().await?;
    let mut processes = Vec::new();
    let mut balancer = None;
    let (api, instances) = match (&launch, &target) {
        (Some(launch), _) => {
            // Each implementation runs on the schema its own migrations give it, nothing left over.
            feed_core::db::reset_to_core_schema(&env.admin).await?;
            let started = std::time::Instant::now();
            // A second instance sharing the same Postgres and Redis from stage-2 on: what one
            // instance writes, the other must see (cache), and what one admits, the other must
            // count (limiter). Its start must succeed too (migrations that run twice, say). On a
            // cluster, three, behind a load balancer, as a team that scaled out runs them.
            let wanted = if cluster {
                3
            } else if bar >= StageId::Stage2 {
                2
            } else {
                1
            };
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
                            Check::new("starts", false, false, true, which)
                                .evidence(format!("{e:#}"))
                                .on_failure("docs/api.md#get-ready"),
                        );
                        not_run(&mut report, "it did not start");
                        return Ok(report);
                    }
                }
            }
            let instances: Vec<Api> = processes.iter().map(|app| Api::new(&app.base_url)).collect();
            let api = if cluster {
                let backends: Vec<String> =
                    processes.iter().map(|app| app.base_url.trim_start_matches("http://").to_owned()).collect();
                // The balancer takes an instance whose GET /health answers 200: one that does not
                // is the target's failure, reported as such.
                let proxy = match kata_services::Haproxy::start(None, &backends).await {
                    Ok(proxy) => proxy,
                    Err(e) => {
                        report.push(
                            Check::new(
                                "starts",
                                false,
                                false,
                                true,
                                "HAProxy did not take every instance (GET /health)",
                            )
                            .evidence(format!("{e:#}"))
                            .on_failure("docs/api.md#get-health"),
                        );
                        not_run(&mut report, "it did not start behind the balancer");
                        return Ok(report);
                    }
                };
                let api = Api::new(&proxy.base_url());
                balancer = Some(proxy);
                api
            } else {
                instances[0].clone()
            };
            report.push(Check::new(
                "starts",
                true,
                true,
                true,
                format!(
                    "{wanted} instance(s) ready (GET /ready 200) {:.1} s after start{}",
                    started.elapsed().as_secs_f64(),
                    if cluster { ", behind HAProxy (every backend UP)" } else { "" }
                ),
            ));
            (api, instances)
        }
        (None, Target::Urls(urls)) => (Api::new(&urls[0]), urls.iter().map(|u| Api::new(u)).collect()),
        (None, _) => unreachable!("every target but --url has a launch"),
    };
    let mut run = Run { env, bar, target, api, instances, users, launch, _processes: processes, _balancer: balancer };

    contract::run(&mut run, &mut report).await;
    queries::run(&mut run, &mut report).await;
    if bar >= StageId::Stage1 {
        queries::equivalence(&mut run, &mut report).await;
    }
    if bar >= StageId::Stage2 {
        cache::run(&mut run, &mut report).await;
    }
    if bar >= StageId::Stage3 {
        rate_limit::run(&mut run, &mut report).await;
    }
    if cluster && bar >= StageId::Stage2 {
        // It kills a master; the checks after it run on the promoted replica.
        let check = cluster::failover(&mut run, &mut report).await;
        report.push(check);
    }
    if bar >= StageId::Stage2 {
        // Near the end: it stops and restarts Redis.
        cache::redis_down(&mut run, &mut report).await;
    }
    // Last: it stops and restarts Postgres.
    contract::postgres_down(&mut run, &mut report).await;
    Ok(report)
}

impl Run<'_> {
    /// A token for checks that are not about rate limiting: `internal` is exempt from the
    /// stage-3 limiter, so those checks measure the same thing at every stage.
    pub fn token(&self, user_id: i64) -> String {
        self.env.token(user_id, Tier::Internal)
    }

    /// The feed as the checker's own SQL computes it, independently of any stage.
    pub async fn oracle(&self, user_id: i64, limit: i64) -> anyhow::Result<Value> {
        let rows: Vec<(i64, String, chrono::DateTime<chrono::Utc>, i64, String, String)> = sqlx::query_as(
            "select p.id, p.body, p.created_at, a.id, a.name, a.avatar
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
            .map(|(id, body, created_at, author_id, name, avatar)| FeedItem {
                id,
                body,
                created_at,
                author: Author { id: author_id, name, avatar },
            })
            .collect();
        Ok(serde_json::to_value(Feed { user_id, items })?)
    }

    /// Counters from every instance's `/metrics`, added up (empty when it has none). Each
    /// instance is asked directly: through a balancer, one scrape would see one instance.
    pub async fn service_counters(&self) -> BTreeMap<String, f64> {
        let mut counters = BTreeMap::new();
        for api in &self.instances {
            let Ok(reply) = api.send(api.get("/metrics")).await else { continue };
            for line in reply.text().lines().filter(|l| !l.starts_with('#')) {
                if let Some((name, value)) = line.rsplit_once(' ') {
                    let name = name.split('{').next().unwrap_or(name);
                    if let Ok(value) = value.parse::<f64>() {
                        *counters.entry(name.to_owned()).or_default() += value;
                    }
                }
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
pub fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    if ms.is_empty() {
        return (0.0, 0.0);
    }
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
    (at(0.5), at(0.99))
}
