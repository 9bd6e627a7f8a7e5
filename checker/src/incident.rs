//! `cargo kata incident`: production incidents an interviewer can hand out. Each is the feed
//! service after a release that broke it (incidents/releases/NAME.diff, served by the `incidents`
//! binary); on-call
//! is paged with the symptom and the figures of a short burst of load, never the cause. A
//! diagnosis is graded against what the checker measures on the running incident, as `diagnose`
//! does; `incident fix` puts the incident's code in the workbench to repair and `verify`.
//!
//! The catalogue is data: checker/incidents.toml. A seed varies what on-call sees (the service's
//! name, the page size its clients ask for, the data the database holds), so two candidates do
//! not get the same text or the same figures.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::Api;
use crate::diagnose::shape_of;
use crate::explain::{PlanNode, explain, shape};
use crate::pgss::{self, Statement};
use crate::{EnvOptions, KataEnv, StageId};

/// A question `incident answer` grades, each against a measurement of the running incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Question {
    /// The statement at fault (matched by shape).
    Statement,
    /// How many times it runs per request.
    Calls,
    /// The plan node that reads `posts`.
    PlanNode,
    /// How many database connections the feed's requests can use at once.
    Pool,
    /// A Redis key at fault (its shape: digits do not matter).
    Key,
    /// The dependency a request waits on.
    WaitsFor,
    /// How long a request waits for it, in ms, or `none` (for ever).
    WaitMs,
    /// How long a cached page lives, in s, or `none` (for ever).
    TtlS,
}

impl Question {
    fn flag(self) -> &'static str {
        match self {
            Self::Statement => "--statement",
            Self::Calls => "--calls",
            Self::PlanNode => "--plan-node",
            Self::Pool => "--pool",
            Self::Key => "--key",
            Self::WaitsFor => "--waits-for",
            Self::WaitMs => "--wait-ms",
            Self::TtlS => "--ttl-s",
        }
    }

    fn asking(self) -> &'static str {
        match self {
            Self::Statement => "the statement at fault, as pg_stat_statements shows it",
            Self::Calls => "how many times it runs per request",
            Self::PlanNode => "the plan node that reads posts, in the plan of the statement that reads them",
            Self::Pool => "how many database connections the feed's requests can use at once",
            Self::Key => "the Redis key at fault (the digits in it do not matter)",
            Self::WaitsFor => "the dependency a request waits on: postgres or redis",
            Self::WaitMs => "how long a request waits for it, in ms, or none (for ever)",
            Self::TtlS => "how long a cached page lives, in s, or none (for ever)",
        }
    }
}

/// What the checker does to the services while an incident runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    None,
    /// Redis frozen (SIGSTOP) for as long as the incident runs.
    RedisFrozen,
    /// Postgres stopped for a second while some feeds are read, before on-call is paged.
    PostgresBlip,
}

/// One incident of the catalogue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    pub name: String,
    pub difficulty: String,
    /// The stage whose lesson it is, or `none`: outside the four stages.
    pub lesson: String,
    pub repair_bar: StageId,
    pub alert: String,
    pub asks: Vec<Question>,
    pub fault: Fault,
    pub traffic: String,
    pub causes: Vec<String>,
    pub hints: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Catalogue {
    incident: Vec<Incident>,
}

/// The incidents, read from `checker/incidents.toml` when the checker was built.
pub fn catalogue() -> &'static [Incident] {
    static CATALOGUE: LazyLock<Catalogue> = LazyLock::new(|| {
        toml::from_str(include_str!("../incidents.toml"))
            .unwrap_or_else(|e| panic!("checker/incidents.toml is not a valid catalogue: {e}"))
    });
    &CATALOGUE.incident
}

/// An incident by its number (`incident list`'s, which names no cause) or by its name (which
/// does: the catalogue's, for whoever maintains it).
pub fn find(name: &str) -> anyhow::Result<&'static Incident> {
    let by_number = name.parse::<usize>().ok().and_then(|n| n.checked_sub(1)).and_then(|i| catalogue().get(i));
    by_number.or_else(|| catalogue().iter().find(|i| i.name == name)).ok_or_else(|| {
        anyhow::anyhow!("no incident {name}; `cargo kata incident list` numbers them 1 to {}", catalogue().len())
    })
}

impl Incident {
    /// Its number in `incident list`: what the candidate sees instead of its name, which would
    /// name the cause.
    pub fn number(&self) -> usize {
        catalogue().iter().position(|i| i.name == self.name).expect("a catalogued incident") + 1
    }
}

/// `incident list --format markdown`: the table docs/incidents.md shows: each incident's number,
/// difficulty and page, never its name, the answers it asks or the bar of its repair (each says
/// where to look).
pub fn table() -> String {
    let mut out = String::from(
        "| incident | difficulty | within the stages' lessons | what on-call is paged with |\n|---|---|---|---|\n",
    );
    for incident in catalogue() {
        let alert = incident.alert.replace("{service}", "feed").replace("{limit}", "20");
        let within = if incident.lesson == "none" { "no" } else { "yes" };
        let _ = writeln!(out, "| {} | {} | {within} | {alert} |", incident.number(), incident.difficulty);
    }
    out
}

/// `incident list`: each incident's number, difficulty and what on-call sees, never the cause.
pub fn list() -> String {
    let mut out = String::from("incident  difficulty  a kata lesson  what on-call is paged with\n");
    for incident in catalogue() {
        let alert = incident.alert.replace("{service}", "feed").replace("{limit}", "20");
        let within = if incident.lesson == "none" { "no" } else { "yes" };
        let _ = writeln!(out, "{:<9} {:<11} {within:<14} {alert}", incident.number(), incident.difficulty);
    }
    out.push_str("\n`cargo kata incident start N` (or `--seed S` for one chosen for you) pages you with one.\n");
    out
}

/// What a seed varies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Variant {
    pub incident: String,
    pub seed: u64,
    /// The service's name in the page.
    pub service: String,
    /// The page size the service's clients ask for.
    pub limit: i64,
}

impl Variant {
    /// The incident `name`, or the seed's pick, with the seed's names and sizes.
    pub fn new(name: Option<&str>, seed: u64) -> anyhow::Result<Self> {
        // SplitMix64 of (seed, n): fixed arithmetic, so a seed picks the same incident, names and
        // sizes on every machine and with every Rust release.
        let mix = |n: u64| {
            let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(n.wrapping_mul(0xBF58_476D_1CE4_E5B9));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let incident = match name {
            Some(name) => find(name)?,
            None => &catalogue()[(mix(1) % catalogue().len() as u64) as usize],
        };
        let services = ["feed-api", "home-timeline", "activity-feed", "timeline-svc", "newsfeed"];
        let limits = [10, 20, 25, 30, 50];
        Ok(Self {
            // Its number, not its name: the session file and the process list must not say the cause.
            incident: incident.number().to_string(),
            seed,
            service: services[(mix(2) % services.len() as u64) as usize].to_owned(),
            limit: limits[(mix(3) % limits.len() as u64) as usize],
        })
    }

    pub fn incident(&self) -> &'static Incident {
        find(&self.incident).expect("a variant names a catalogued incident")
    }

    pub fn alert(&self) -> String {
        self.incident().alert.replace("{service}", &self.service).replace("{limit}", &self.limit.to_string())
    }
}

/// A candidate's session, kept in `.kata/incident.json` while the incident runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub variant: Variant,
    /// When on-call was paged (ms since the epoch): the clock starts.
    pub paged_at_ms: i64,
    pub base_url: String,
    pub database_url: String,
    pub redis_url: String,
    pub jwt_secret: String,
    /// Whose feeds the page's load read.
    pub users: Vec<i64>,
    pub attempts: Vec<Attempt>,
    /// When every answer was right (ms since the epoch).
    pub diagnosed_at_ms: Option<i64>,
    pub hints_shown: usize,
    /// When `incident fix` put the code in the workbench.
    pub fixed_at_ms: Option<i64>,
    /// `incident fix --give-up`: the code was taken before the diagnosis was right.
    #[serde(default)]
    pub gave_up: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ms: i64,
    pub right: usize,
    pub of: usize,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn session_file() -> std::path::PathBuf {
    crate::learner::state_dir().join("incident.json")
}

impl Session {
    pub fn load() -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(session_file()).map_err(|_| {
            anyhow::anyhow!("no incident is running: `cargo kata incident start` pages you with one (in another shell)")
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    pub fn save(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(crate::learner::state_dir())?;
        std::fs::write(session_file(), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    fn keys(&self) -> feed_core::auth::JwtKeys {
        feed_core::auth::JwtKeys::new(&self.jwt_secret)
    }

    fn token(&self, user: i64, tier: feed_core::auth::Tier) -> String {
        self.keys().mint(user, tier, Duration::from_secs(3600))
    }
}

/// What the page showed: a burst of the service's traffic.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors_pct: f64,
    pub statements_per_s: f64,
    /// The most connections of the service's pool in use, and its size (from /metrics).
    pub pool: Option<(f64, f64)>,
}

/// An incident running: its services, its service, its session.
pub struct Running {
    pub env: KataEnv,
    pub session: Session,
    pub page: Page,
    _app: kata_services::AppProcess,
}

impl Running {
    /// What on-call reads.
    pub fn page_text(&self) -> String {
        let v = &self.session.variant;
        let mut out = format!(
            "PAGE — {}\n\n{}\n\nthe last {} requests (GET /api/feed?limit={}): p50 {:.0} ms, p99 {:.0} ms, errors {:.1} %, \
             {:.0} database statements/s",
            v.service,
            v.alert(),
            self.page.requests,
            v.limit,
            self.page.p50_ms,
            self.page.p99_ms,
            self.page.errors_pct,
            self.page.statements_per_s,
        );
        if let Some((used, size)) = self.page.pool {
            let _ = write!(out, ", service pool {used:.0}/{size:.0} in use at most");
        }
        let _ = write!(
            out,
            "\n\nthe service: {} (its code: `cargo kata incident fix` puts it in workbench/ once you have diagnosed it)\n\
             DATABASE_URL={}\nREDIS_URL={}\na token: {}\n\n\
             When you know what is wrong: `cargo kata incident answer {}`\n(`cargo kata incident answer --help` says what each asks.)\n",
            self.session.base_url,
            self.session.database_url,
            self.session.redis_url,
            self.session.token(self.session.users[0], feed_core::auth::Tier::Internal),
            v.incident().asks.iter().map(|q| format!("{} …", q.flag())).collect::<Vec<_>>().join(" "),
        );
        out
    }
}

/// Start `variant`'s incident: services seeded with its seed, the incident's service (on
/// `listen`, or a free port), its fault, and the page's burst of load. (`incident start` saves
/// the session for the commands that follow.)
pub async fn start(variant: Variant, options: EnvOptions, listen: Option<&str>) -> anyhow::Result<Running> {
    let incident = variant.incident();
    let mut env = KataEnv::start(EnvOptions { seed: variant.seed, ..options }).await?;
    let binary = match crate::build::build_async("incidents", false).await? {
        crate::build::Built::Binary(path) => path,
        crate::build::Built::CompileError(e) => anyhow::bail!("the incidents do not compile:\n{e}"),
    };
    feed_core::db::reset_to_core_schema(&env.admin).await?;
    // The name goes in the environment, not the command line `ps` shows.
    let launch = kata_services::Launch::Program(binary);
    let mut extra: Vec<(&str, &str)> = vec![("KATA_INCIDENT", &incident.name)];
    extra.extend(listen.map(|l| ("LISTEN_ADDR", l)));
    let app = env.start_app(&launch, &extra).await?;
    let users: Vec<i64> = sqlx::query_scalar(
        "select user_id from posts group by user_id having count(*) >= $1 order by user_id limit 40",
    )
    .bind(variant.limit)
    .fetch_all(&env.admin)
    .await?;
    // observe() reads users[0..31]: the burst's, the pool's, the keys' and the wait's.
    anyhow::ensure!(users.len() >= 31, "the seeded data has too few timelines of {} posts", variant.limit);
    let session = Session {
        variant: variant.clone(),
        paged_at_ms: 0,
        base_url: app.base_url.clone(),
        database_url: env.services.database_url.clone(),
        redis_url: env.services.redis_url.clone(),
        jwt_secret: env.jwt_secret.clone(),
        users,
        attempts: Vec::new(),
        diagnosed_at_ms: None,
        hints_shown: 0,
        fixed_at_ms: None,
        gave_up: false,
    };
    let api = Api::new(&app.base_url);
    match incident.fault {
        Fault::None => {}
        Fault::PostgresBlip => {
            // A second without the database while some feeds are read for the first time.
            let postgres =
                env.services.owned_postgres().ok_or_else(|| anyhow::anyhow!("the checker must own Postgres"))?;
            postgres.stop();
            for &user in &session.users[..5] {
                let _ = api
                    .feed(&session.token(user, feed_core::auth::Tier::Internal), &format!("limit={}", variant.limit))
                    .await;
            }
            env.services.owned_postgres().expect("owned above").restart().await?;
        }
        Fault::RedisFrozen => {
            env.services.owned_redis().ok_or_else(|| anyhow::anyhow!("the checker must own Redis"))?.pause();
        }
    }
    let page = page(&env, &api, &session).await?;
    let mut session = session;
    session.paged_at_ms = now_ms();
    Ok(Running { env, session, page, _app: app })
}

/// The page's burst: 100 feed requests of the session's users, 20 at a time, each with a 3 s
/// deadline (a request that does not answer counts as an error, at 3 s).
async fn page(env: &KataEnv, api: &Api, session: &Session) -> anyhow::Result<Page> {
    use futures::StreamExt as _;
    const REQUESTS: usize = 100;
    let tier = if session.variant.incident().traffic == "free" {
        feed_core::auth::Tier::Free
    } else {
        feed_core::auth::Tier::Internal
    };
    let tokens: Vec<String> = session.users.iter().map(|&u| session.token(u, tier)).collect();
    let query = format!("limit={}", session.variant.limit);
    let before = pgss::snapshot(&env.admin).await?;
    let started = Instant::now();
    let sampling = std::sync::atomic::AtomicBool::new(true);
    let pool = async {
        let mut most: Option<(f64, f64)> = None;
        while sampling.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(reply) = api.send(api.get("/metrics")).await {
                let text = reply.text();
                let (active, size) = (
                    kata_services::prometheus::value(&text, "db_pool_active"),
                    kata_services::prometheus::value(&text, "db_pool_max"),
                );
                if let (Some(active), Some(size)) = (active, size) {
                    most = Some((most.map_or(active, |m| m.0.max(active)), size));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        most
    };
    let load = async {
        let outcomes: Vec<(f64, bool)> = futures::stream::iter(0..REQUESTS)
            .map(|i| {
                let (token, query) = (&tokens[i % tokens.len()], &query);
                async move {
                    let sent = Instant::now();
                    let ok = tokio::time::timeout(Duration::from_secs(3), api.feed(token, query))
                        .await
                        .is_ok_and(|r| r.is_ok_and(|r| r.status == 200));
                    (sent.elapsed().as_secs_f64() * 1000.0, ok)
                }
            })
            .buffer_unordered(20)
            .collect()
            .await;
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        outcomes
    };
    let (outcomes, pool) = tokio::join!(load, pool);
    let seconds = started.elapsed().as_secs_f64();
    let statements = pgss::total_calls(&pgss::delta(&before, &pgss::snapshot(&env.admin).await?));
    let ms: Vec<f64> = outcomes.iter().map(|o| o.0).collect();
    let (p50_ms, p99_ms) = crate::checks::percentiles(ms);
    let errors = outcomes.iter().filter(|o| !o.1).count();
    Ok(Page {
        requests: REQUESTS,
        p50_ms,
        p99_ms,
        errors_pct: errors as f64 * 100.0 / REQUESTS as f64,
        statements_per_s: statements as f64 / seconds,
        pool,
    })
}

/// The answers (`incident answer`): each incident asks some of them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Answers {
    /// The statement at fault, as pg_stat_statements shows it (any spelling of the same statement).
    #[arg(long, value_name = "SQL")]
    pub statement: Option<String>,
    /// How many times that statement runs per request.
    #[arg(long, value_name = "N")]
    pub calls: Option<u32>,
    /// The plan node that reads posts, as EXPLAIN names it.
    #[arg(long, value_name = "NODE")]
    pub plan_node: Option<String>,
    /// How many database connections the feed's requests can use at once.
    #[arg(long, value_name = "N")]
    pub pool: Option<u32>,
    /// The Redis key at fault (digits do not matter: `feed:7:x` and `feed:12:x` are one shape).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// The dependency a request waits on: postgres or redis.
    #[arg(long, value_name = "postgres|redis")]
    pub waits_for: Option<String>,
    /// How long a request waits for it, in ms, or none (for ever).
    #[arg(long, value_name = "MS|none")]
    pub wait_ms: Option<String>,
    /// How long a cached page lives, in s, or none (for ever).
    #[arg(long, value_name = "S|none")]
    pub ttl_s: Option<String>,
}

impl Answers {
    fn given(&self, question: Question) -> Option<String> {
        match question {
            Question::Statement => self.statement.clone(),
            Question::Calls => self.calls.map(|n| n.to_string()),
            Question::PlanNode => self.plan_node.clone(),
            Question::Pool => self.pool.map(|n| n.to_string()),
            Question::Key => self.key.clone(),
            Question::WaitsFor => self.waits_for.clone(),
            Question::WaitMs => self.wait_ms.clone(),
            Question::TtlS => self.ttl_s.clone(),
        }
    }
}

/// What the checker measured of the running incident, for the questions it asks.
#[derive(Debug, Default)]
pub struct Observed {
    pub requests: usize,
    pub statements: Vec<Statement>,
    /// The plan of the statement that reads posts (the one with the most total time).
    pub posts_plan: Option<(Statement, Vec<PlanNode>)>,
    /// The most of the service's connections active at once, under 40 requests in flight.
    pub active_connections: Option<usize>,
    /// Keys in Redis after a few users' reads, with their PTTL in ms (-1: no expiry).
    pub keys: Vec<(String, i64)>,
    /// Whether Postgres and Redis each answered within a second.
    pub postgres_answers: Option<bool>,
    pub redis_answers: Option<bool>,
    /// How long one feed request took; `None`: no answer within 12 s.
    pub feed_wait: Option<Duration>,
}

impl Observed {
    /// The statement at fault: one that runs more than once per request (the most calls), or
    /// else the one with the most total time.
    pub fn fault_statement(&self) -> Option<&Statement> {
        self.statements.iter().filter(|s| s.calls as usize > self.requests).max_by_key(|s| s.calls).or_else(|| {
            pgss::by_total_time(self.statements.clone())
                .first()
                .and_then(|top| self.statements.iter().find(|s| s.query == top.query))
        })
    }

    fn calls_per_request(&self) -> Option<f64> {
        self.fault_statement().map(|s| s.calls as f64 / self.requests.max(1) as f64)
    }

    fn posts_node(&self) -> Option<&str> {
        let (_, nodes) = self.posts_plan.as_ref()?;
        nodes.iter().find(|n| n.relation.as_deref() == Some("posts")).map(|n| n.node.as_str())
    }

    /// The keys at fault: for an incident about a lock, locks without expiry; else the keys that
    /// hold pages.
    fn fault_keys(&self, incident: &Incident) -> Vec<&str> {
        let locks = incident.fault == Fault::PostgresBlip;
        self.keys
            .iter()
            .filter(|(key, ttl)| {
                if locks { key.contains("lock") && *ttl < 0 } else { key.contains("feed") && !key.contains("lock") }
            })
            .map(|(key, _)| key.as_str())
            .collect()
    }

    /// Seconds a cached page has to live (the longest), or `None` when one lives for ever.
    fn ttl_s(&self) -> Option<Option<f64>> {
        let pages: Vec<i64> =
            self.keys.iter().filter(|(k, _)| k.contains("feed") && !k.contains("lock")).map(|(_, t)| *t).collect();
        if pages.is_empty() {
            return None;
        }
        Some(if pages.iter().any(|&t| t < 0) { None } else { pages.iter().max().map(|&ms| ms as f64 / 1000.0) })
    }
}

/// A key's shape: its digits do not matter.
fn key_shape(key: &str) -> String {
    let mut out = String::new();
    for c in key.trim().chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('N') {
                out.push('N');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Measure the running incident for the questions it asks.
pub async fn observe(session: &Session) -> anyhow::Result<Observed> {
    let incident = session.variant.incident();
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&session.database_url)
        .await?;
    let api = Api::new(&session.base_url);
    let query = format!("limit={}", session.variant.limit);
    let internal = |u: i64| session.token(u, feed_core::auth::Tier::Internal);
    let asks = |q: Question| incident.asks.contains(&q);
    let mut observed = Observed::default();
    if asks(Question::Statement) || asks(Question::Calls) || asks(Question::PlanNode) {
        let before = pgss::snapshot(&admin).await?;
        for &user in &session.users[10..20] {
            let reply = api.feed(&internal(user), &query).await?;
            anyhow::ensure!(reply.status == 200, "the incident's feed answered {}", reply.status);
            observed.requests += 1;
        }
        observed.statements = pgss::delta(&before, &pgss::snapshot(&admin).await?);
        if let Some(statement) = pgss::by_total_time(observed.statements.clone())
            .into_iter()
            .find(|s| s.query.to_lowercase().contains("posts"))
        {
            let plan = explain(&admin, &statement.query, session.users[10], session.variant.limit, true).await?;
            let json: serde_json::Value = serde_json::from_str(plan.first().map_or("null", String::as_str))?;
            observed.posts_plan = Some((statement, shape(&json).0));
        }
    }
    if asks(Question::Pool) {
        observed.active_connections = Some(active_connections(&admin, &api, session).await?);
    }
    if asks(Question::Key) || asks(Question::TtlS) {
        for &user in session.users.iter().take(5).chain(&session.users[20..25]) {
            let _ = tokio::time::timeout(Duration::from_secs(3), api.feed(&internal(user), &query)).await;
        }
        let client = kata_services::quiet_client(&session.redis_url)?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut redis).await?;
        for key in keys {
            let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await?;
            observed.keys.push((key, ttl));
        }
    }
    if asks(Question::WaitsFor) || asks(Question::WaitMs) {
        let pg = tokio::time::timeout(Duration::from_secs(1), sqlx::query("select 1").execute(&admin)).await;
        observed.postgres_answers = Some(pg.is_ok_and(|r| r.is_ok()));
        let redis = async {
            let client = kata_services::quiet_client(&session.redis_url)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        observed.redis_answers =
            Some(tokio::time::timeout(Duration::from_secs(1), redis).await.is_ok_and(|r| r.is_ok()));
        let sent = Instant::now();
        let feed = tokio::time::timeout(Duration::from_secs(12), api.feed(&internal(session.users[30]), &query)).await;
        observed.feed_wait = feed.is_ok().then(|| sent.elapsed());
    }
    Ok(observed)
}

/// How many of the service's connections ran the feed's statements while 40 feed requests were
/// in flight: the distinct backends whose last statement read `posts` and started during the
/// burst (pg_stat_activity, sampled every 2 ms; the checker's own connections excluded). A
/// backend is `active` only while a statement executes, a fraction of each round trip, so
/// counting the active ones at an instant would see fewer than the pool holds.
async fn active_connections(admin: &sqlx::PgPool, api: &Api, session: &Session) -> anyhow::Result<usize> {
    let query = format!("limit={}", session.variant.limit);
    let tokens: Vec<String> =
        session.users.iter().map(|&u| session.token(u, feed_core::auth::Tier::Internal)).collect();
    let since: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select clock_timestamp()").fetch_one(admin).await?;
    let done = std::sync::atomic::AtomicBool::new(false);
    let sample = async {
        let mut backends = std::collections::BTreeSet::new();
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let pids: Vec<i32> = sqlx::query_scalar(
                "select pid from pg_stat_activity
                 where backend_type = 'client backend' and pid <> pg_backend_pid()
                   and query ilike '%posts%' and query not ilike '%pg_stat_activity%' and query_start >= $1",
            )
            .bind(since)
            .fetch_all(admin)
            .await?;
            backends.extend(pids);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::Ok(backends.len())
    };
    let load = async {
        let _ = futures::future::join_all((0..40).map(|i| api.feed(&tokens[i % tokens.len()], &query))).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (most, ()) = tokio::join!(sample, load);
    most
}

/// The right answers, from what was measured (for the interviewer, and for the tests).
pub fn truth(incident: &Incident, observed: &Observed) -> Answers {
    Answers {
        statement: observed.fault_statement().map(|s| s.query.clone()),
        calls: observed.calls_per_request().map(|c| c.round() as u32),
        plan_node: observed.posts_node().map(str::to_owned),
        pool: observed.active_connections.map(|n| n as u32),
        key: observed.fault_keys(incident).first().map(|k| (*k).to_owned()),
        waits_for: match (observed.postgres_answers, observed.redis_answers) {
            (Some(true), Some(false)) => Some("redis".into()),
            (Some(false), _) => Some("postgres".into()),
            _ => None,
        },
        wait_ms: observed.feed_wait.map_or(Some("none".into()), |d| Some(d.as_millis().to_string())),
        ttl_s: observed.ttl_s().map(|t| t.map_or("none".into(), |s| format!("{s:.0}"))),
    }
}

fn forever(answer: &str) -> bool {
    matches!(answer.trim().to_lowercase().as_str(), "none" | "never" | "forever" | "for ever" | "infinite" | "-1")
}

/// Grade one answer: right or not, and the measurement that refutes a wrong one (never the cause,
/// never the measured value: which way it is off, and where to look).
fn grade_one(question: Question, given: &str, incident: &Incident, observed: &Observed) -> (bool, String) {
    match question {
        Question::Statement => grade_statement(given, observed),
        Question::Calls => grade_calls(given, observed),
        Question::PlanNode => grade_plan_node(given, observed),
        Question::Pool => grade_pool(given, observed),
        Question::Key => grade_key(given, incident, observed),
        Question::WaitsFor => grade_waits_for(given, incident, observed),
        Question::WaitMs => grade_wait_ms(given, observed),
        Question::TtlS => grade_ttl_s(given, observed),
    }
}

fn grade_statement(given: &str, observed: &Observed) -> (bool, String) {
    let fault = observed.fault_statement();
    let ok = fault.is_some_and(|f| shape_of(given) == shape_of(&f.query));
    let ran: i64 = observed.statements.iter().filter(|s| shape_of(&s.query) == shape_of(given)).map(|s| s.calls).sum();
    (
        ok,
        format!(
            "that statement ran {ran} times over {} requests; sort pg_stat_statements by calls and by total time",
            observed.requests
        ),
    )
}

fn grade_calls(given: &str, observed: &Observed) -> (bool, String) {
    let calls = observed.calls_per_request();
    let ok = given.parse::<f64>().ok().zip(calls).is_some_and(|(a, c)| a == c.round());
    (ok, "divide the statement's `calls` by the requests you sent (count them: reset pg_stat_statements first)".into())
}

fn grade_plan_node(given: &str, observed: &Observed) -> (bool, String) {
    let nodes: Vec<&str> = observed.posts_plan.iter().flat_map(|(_, n)| n.iter().map(|n| n.node.as_str())).collect();
    let ok = observed.posts_node().is_some_and(|n| crate::diagnose::same_node(n, given));
    let has = nodes.iter().any(|n| crate::diagnose::same_node(n, given));
    (
        ok,
        if has {
            format!("the plan has a {given} node, but it does not read posts: read the plan from the innermost node")
        } else {
            format!("the plan of the statement that reads posts has no {given} node: EXPLAIN it with a real user id")
        },
    )
}

fn grade_pool(given: &str, observed: &Observed) -> (bool, String) {
    let used = observed.active_connections.unwrap_or(0);
    let said = given.parse::<usize>().ok();
    (
        said == Some(used),
        // Which way, never the count: a few tries would find it without measuring.
        match said {
            Some(n) if n > used => "with 40 requests in flight, fewer of the service's connections than that ran \
                                   its statements (pg_stat_activity: pid, query, query_start)"
                .into(),
            Some(_) => "with 40 requests in flight, more of the service's connections than that ran its \
                        statements (pg_stat_activity: pid, query, query_start)"
                .into(),
            None => "a number of connections: count them in pg_stat_activity while requests are in flight".into(),
        },
    )
}

fn grade_key(given: &str, incident: &Incident, observed: &Observed) -> (bool, String) {
    let faults = observed.fault_keys(incident);
    let ok = faults.iter().any(|k| key_shape(k) == key_shape(given));
    let exists = observed.keys.iter().any(|(k, _)| key_shape(k) == key_shape(given));
    (
        ok,
        if exists {
            "a key of that shape is in Redis, but it is not the one at fault: compare a slow or wrong user's keys with another's (TTL, what they hold)".into()
        } else {
            "no key of that shape is in Redis after a few users' reads: `KEYS *` and `TTL`".into()
        },
    )
}

fn grade_waits_for(given: &str, incident: &Incident, observed: &Observed) -> (bool, String) {
    let (named, answered) = match given.trim().to_lowercase().as_str() {
        "postgres" | "postgresql" | "database" => (Some("postgres"), observed.postgres_answers),
        "redis" | "cache" => (Some("redis"), observed.redis_answers),
        _ => (None, None),
    };
    let ok = named.is_some() && truth(incident, observed).waits_for.as_deref() == named;
    (
        ok,
        match answered {
            Some(true) => {
                format!("{given} answered within a second when the checker asked it (select 1 / PING)")
            }
            _ => "try each dependency yourself: psql's `select 1`, redis-cli's PING, each with a timeout".into(),
        },
    )
}

fn grade_wait_ms(given: &str, observed: &Observed) -> (bool, String) {
    let ok = match observed.feed_wait {
        None => forever(given),
        Some(d) => given
            .parse::<f64>()
            .is_ok_and(|ms| (ms - d.as_millis() as f64).abs() <= (d.as_millis() as f64 * 0.25).max(50.0)),
    };
    let said = given.parse::<f64>().ok();
    (
        ok,
        // Which way, never the time: time one request yourself (curl -w '%{time_total}').
        match (observed.feed_wait, said) {
            (None, _) => {
                "a feed request waited longer than that: time one yourself (curl -m 15 -w '%{time_total}')".into()
            }
            (Some(_), None) => "a feed request did answer: time one yourself (curl -w '%{time_total}')".into(),
            (Some(d), Some(ms)) if ms > d.as_millis() as f64 => {
                "a feed request answered sooner than that: time one yourself (curl -w '%{time_total}')".into()
            }
            (Some(_), Some(_)) => {
                "a feed request waited longer than that: time one yourself (curl -w '%{time_total}')".into()
            }
        },
    )
}

fn grade_ttl_s(given: &str, observed: &Observed) -> (bool, String) {
    let ttl = observed.ttl_s();
    let ok = match ttl {
        Some(None) => forever(given),
        Some(Some(s)) => given.parse::<f64>().is_ok_and(|a| (a - s).abs() <= s * 0.1 + 1.0),
        None => false,
    };
    let said = given.parse::<f64>().ok();
    (
        ok,
        // Which way, never the value: read the keys' PTTL yourself.
        match (ttl, said) {
            (None, _) => "no cached page is in Redis after a few users' reads".into(),
            (Some(Some(s)), Some(a)) if a < s => {
                "the keys that hold pages live longer than that: read their PTTL".into()
            }
            (Some(Some(_)), Some(_)) => "the keys that hold pages live shorter than that: read their PTTL".into(),
            _ => "not what the keys that hold pages say: read their PTTL".into(),
        },
    )
}

/// `incident answer`: grade `answers` against the running incident; save the attempt.
pub async fn answer(answers: &Answers) -> anyhow::Result<(String, bool)> {
    let mut session = Session::load()?;
    let incident = session.variant.incident();
    let missing: Vec<&str> = incident.asks.iter().filter(|q| answers.given(**q).is_none()).map(|q| q.flag()).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "this incident asks {}; missing: {}",
        incident.asks.iter().map(|q| format!("{} ({})", q.flag(), q.asking())).collect::<Vec<_>>().join(", "),
        missing.join(", ")
    );
    let observed = observe(&session).await?;
    let (report, all) = grade(&session, answers, &observed);
    session.attempts.push(Attempt { at_ms: now_ms(), right: report.matches("RIGHT").count(), of: incident.asks.len() });
    if all && session.diagnosed_at_ms.is_none() {
        session.diagnosed_at_ms = Some(now_ms());
    }
    session.save()?;
    Ok((report, all))
}

/// The grades of `answers`, and whether all are right.
pub fn grade(session: &Session, answers: &Answers, observed: &Observed) -> (String, bool) {
    let incident = session.variant.incident();
    let mut out = String::new();
    let mut right = 0;
    for &question in &incident.asks {
        let given = answers.given(question).unwrap_or_default();
        let (ok, refutes) = grade_one(question, &given, incident, observed);
        right += usize::from(ok);
        let _ = writeln!(out, "  {:<6} {:<13} you said {given:?}", if ok { "RIGHT" } else { "WRONG" }, question.flag());
        if !ok {
            let _ = writeln!(out, "         {:<13} {refutes}", "");
        }
    }
    let all = right == incident.asks.len();
    let _ = writeln!(out, "\n{right} of {} answers match what the checker measured just now.", incident.asks.len());
    if all {
        let minutes = (now_ms() - session.paged_at_ms) as f64 / 60_000.0;
        let _ = writeln!(out, "Diagnosed {minutes:.1} minutes after the page. What was wrong (\"{}\"):", incident.name);
        for cause in &incident.causes {
            let _ = writeln!(out, "  - {cause}");
        }
        let _ = writeln!(
            out,
            "Now repair it: `cargo kata incident fix` puts the incident's code in workbench/; \
             `cargo kata verify {} --target workbench` grades your repair.",
            incident.repair_bar
        );
    } else {
        out.push_str("Measure again (docs/tools.md); `cargo kata incident hint` if you are stuck.\n");
    }
    (out, all)
}

/// `incident hint`: the next hint (counted in the session).
pub fn hint() -> anyhow::Result<String> {
    let mut session = Session::load()?;
    let hints = &session.variant.incident().hints;
    session.hints_shown = (session.hints_shown + 1).min(hints.len());
    session.save()?;
    let mut out = String::new();
    for (i, hint) in hints.iter().take(session.hints_shown).enumerate() {
        let _ = writeln!(out, "{}. {hint}", i + 1);
    }
    let _ = writeln!(out, "({} of {} hints)", session.hints_shown, hints.len());
    Ok(out)
}

/// `incident fix`: the incident's code into the workbench (the files it replaces are kept aside).
pub fn fix(give_up: bool) -> anyhow::Result<String> {
    let mut session = Session::load()?;
    // The code names what went wrong (its comments, its release): it is the repair's, not the
    // diagnosis'.
    anyhow::ensure!(
        session.diagnosed_at_ms.is_some() || give_up,
        "diagnose it first: `cargo kata incident answer …` until every answer is right (or \
         `cargo kata incident fix --give-up`, which the report shows)"
    );
    session.gave_up |= session.diagnosed_at_ms.is_none();
    // The `incidents` binary holds each incident's code (its base with its release applied).
    let binary = match crate::build::build("incidents")? {
        crate::build::Built::Binary(path) => path,
        crate::build::Built::CompileError(e) => anyhow::bail!("the incidents do not compile:\n{e}"),
    };
    let printed = std::process::Command::new(&binary).args([&session.variant.incident().name, "--code"]).output()?;
    anyhow::ensure!(
        printed.status.success(),
        "{} --code: {}",
        binary.display(),
        String::from_utf8_lossy(&printed.stderr)
    );
    let dir = crate::learner::workbench_dir();
    let backup = crate::learner::backup_dir();
    // The learner's changed files go aside; then the start's feed.rs goes (the incident's lib.rs
    // holds the whole feed). It is the start's own, so there is nothing of theirs in it to keep.
    crate::learner::reset(&dir, &backup)?;
    std::fs::remove_file(dir.join("src/feed.rs"))?;
    std::fs::write(dir.join("src/lib.rs"), &printed.stdout)?;
    session.fixed_at_ms = Some(now_ms());
    session.save()?;
    Ok(format!(
        "The incident's code is workbench/src/lib.rs now (your previous workbench files, if you had changed any, are in {}).\n\
         Repair it, then: cargo kata verify {} --target workbench\n\
         `cargo kata reset workbench` puts the kata's start back afterwards.\n",
        backup.display(),
        session.variant.incident().repair_bar
    ))
}

/// `incident report`: for the interviewer.
pub fn report(session: &Session, verified: Option<&crate::Report>) -> String {
    let incident = session.variant.incident();
    let minutes = |ms: i64| (ms - session.paged_at_ms) as f64 / 60_000.0;
    let mut out = format!(
        "incident {} \"{}\" (seed {}, {}, difficulty {}, {}), paged {}\n",
        incident.number(),
        incident.name,
        session.variant.seed,
        session.variant.service,
        incident.difficulty,
        if incident.lesson == "none" {
            "outside the kata's stages".to_owned()
        } else {
            format!("{}'s lesson", incident.lesson)
        },
        chrono::DateTime::from_timestamp_millis(session.paged_at_ms)
            .map_or(String::new(), |t| t.format("%H:%M:%S UTC").to_string()),
    );
    let wrong = session.attempts.iter().filter(|a| a.right < a.of).count();
    match session.diagnosed_at_ms {
        Some(at) => {
            let _ = writeln!(
                out,
                "diagnosis: right after {:.1} minutes, at attempt {} ({wrong} wrong before)",
                minutes(at),
                wrong + 1
            );
        }
        None => {
            let _ = writeln!(out, "diagnosis: not yet right after {} attempt(s)", session.attempts.len());
        }
    }
    for attempt in &session.attempts {
        let _ =
            writeln!(out, "  attempt at {:.1} min: {} of {} right", minutes(attempt.at_ms), attempt.right, attempt.of);
    }
    let _ = writeln!(out, "hints used: {} of {}", session.hints_shown, incident.hints.len());
    if session.gave_up {
        out.push_str("gave up on the diagnosis: took the code with `incident fix --give-up`\n");
    }
    match (session.fixed_at_ms, verified) {
        (None, _) => out.push_str("repair: not attempted (`cargo kata incident fix`)\n"),
        (Some(at), None) => {
            let _ = writeln!(out, "repair: code in the workbench since {:.1} min, not verified here", minutes(at));
        }
        (Some(_), Some(report)) => {
            let failed: Vec<&str> = report.failed().map(|c| c.name()).collect();
            let _ = writeln!(
                out,
                "repair: `verify {}` on the workbench: {:?}{}",
                incident.repair_bar,
                report.verdict,
                if failed.is_empty() { String::new() } else { format!(", failing {}", failed.join(", ")) }
            );
        }
    }
    let _ = writeln!(out, "what was wrong:");
    for cause in &incident.causes {
        let _ = writeln!(out, "  - {cause}");
    }
    let release =
        crate::build::workspace().join("incidents/releases").join(format!("{}.diff", incident.name.replace('-', "_")));
    let _ = writeln!(out, "the release that caused it: {} (the reference repair reverts it)", release.display());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_catalogue_has_ten_incidents_half_outside_the_stages_and_two_with_two_causes() {
        let incidents = catalogue();
        assert!(incidents.len() >= 10);
        assert!(incidents.iter().filter(|i| i.lesson == "none").count() >= 5);
        assert!(incidents.iter().filter(|i| i.causes.len() >= 2).count() >= 2);
        for incident in incidents {
            assert!(!incident.asks.is_empty() && !incident.hints.is_empty(), "{}", incident.name);
            for word in ["N+1", "JOIN", "index", "lock", "TTL", "timeout"] {
                assert!(!incident.alert.contains(word), "{}'s alert names a cause: {word}", incident.name);
            }
        }
    }

    #[test]
    fn a_seed_varies_the_page_and_names_the_same_incident_each_time() {
        let one = Variant::new(None, 1).unwrap();
        assert_eq!(Variant::new(None, 1).unwrap().alert(), one.alert());
        let texts: BTreeSet<String> = (1..=20).map(|s| Variant::new(None, s).unwrap().alert()).collect();
        assert!(texts.len() > 10, "20 seeds gave {} texts", texts.len());
    }

    #[test]
    fn keys_of_one_shape_differ_only_in_digits() {
        assert_eq!(key_shape("feed:{user:42}:lock:20"), key_shape("feed:{user:7}:lock:5"));
        assert_ne!(key_shape("feed:{user:42}:lock:20"), key_shape("feed:{user:42}"));
    }
}
