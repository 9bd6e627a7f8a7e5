//! The Goose side: who the simulated users are, what they do, and the gate Goose judges.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use feed_core::auth::{JwtKeys, Tier};
use feed_core::seed::{Profile, tier_of};
use goose::config::GooseConfiguration;
use goose::goose::GooseResponse;
use goose::prelude::*;
use serde::Serialize;

use crate::progress::{Live, RunProgress};

/// What a user reads: the first page of their own feed.
const FEED_PATH: &str = "/api/feed?limit=20";

/// The name the readers' requests carry in Goose's metrics and reports (as `GET /api/feed`).
/// The gate names it, so the abuser's requests, named apart, are not judged by it.
pub const FEED_REQUEST: &str = "/api/feed";
const ABUSER_REQUEST: &str = "/api/feed (abuser)";

/// What the readers request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /api/feed?limit=20`, the feed under test.
    Feed,
    /// `GET /health`: no database, no cache, no auth. What the machine, the HTTP stack and the
    /// load generator manage at all: the ceiling a feed's capacity is compared with.
    Health,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Self::Feed => FEED_PATH,
            Self::Health => "/health",
        }
    }

    /// The name its requests carry in Goose's metrics (Goose prefixes the method).
    pub fn request_name(self) -> &'static str {
        match self {
            Self::Feed => FEED_REQUEST,
            Self::Health => "/health",
        }
    }
}

/// One run's shape.
pub struct Plan {
    pub host: String,
    pub users: usize,
    /// Add one user who requests in a tight loop: the one a rate limiter is for.
    pub abuser: bool,
    pub run_time: Duration,
    pub think_time: Duration,
    pub ramp_time: Duration,
    pub gate_p99: Duration,
    pub gate_error_rate: f64,
    pub report_files: Vec<String>,
    pub jwt_secret: String,
    pub endpoint: Endpoint,
    /// Goose's cap on all users' requests per second together (an open model's arrival rate).
    pub throttle: Option<usize>,
    /// Print Goose's own metrics tables on the console.
    pub goose_output: bool,
    /// What the progress line calls this run.
    pub label: String,
}

/// What Goose measured, and whether the gate passed.
pub struct Outcome {
    pub metrics: GooseMetrics,
    pub passed: bool,
    pub abuser: Option<AbuserCounts>,
    /// The readers' requests per second once every user had started (the ramp left out), by
    /// the load test's own clock.
    pub steady_rate: Option<f64>,
    /// The readers' `429 Too Many Requests` answers.
    pub refused: u64,
}

/// The abuser's answers: 200s let through and 429s refused by the rate limiter.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct AbuserCounts {
    pub admitted: u64,
    pub limited: u64,
    /// Any other answer (a 5xx, a timeout).
    pub other: u64,
}

/// The Goose rules of the gate, scoped to the readers' requests.
fn gate(plan: &Plan) -> Vec<String> {
    let name = plan.endpoint.request_name();
    vec![
        format!("p99<{}ms for GET {name}", plan.gate_p99.as_millis()),
        format!("error-rate<{}% for GET {name}", plan.gate_error_rate),
    ]
}

pub async fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    let tokens = Arc::new(mint_tokens(plan));
    anyhow::ensure!(
        tokens.len() > plan.users,
        "at most {} users: that many free-tier users are seeded",
        tokens.len() - 1
    );
    let live = Arc::new(Live::default());
    // Weights are user counts: `users` readers, and one abuser when there is one.
    let mut reader = scenario!("reader").set_weight(plan.users)?;
    if !plan.think_time.is_zero() {
        reader = reader.set_wait_time(plan.think_time, plan.think_time)?;
    }
    let reader =
        reader.register_transaction(sign_in(tokens.clone())).register_transaction(read(plan.endpoint, live.clone()));
    let mut attack = GooseAttack::initialize_with_config(configuration(plan))?.register_scenario(reader);
    let abuser = Arc::new(Counters::default());
    if plan.abuser {
        attack = attack.register_scenario(
            scenario!("abuser")
                .set_weight(1)?
                .register_transaction(sign_in(tokens))
                .register_transaction(hammer(abuser.clone())),
        );
    }
    let progress = RunProgress::start(plan.label.clone(), plan.ramp_time + plan.run_time, live.clone());
    let steady = tokio::spawn({
        let (ramp, run, live) = (plan.ramp_time, plan.run_time, live.clone());
        async move {
            tokio::time::sleep(ramp).await;
            let (first, started) = (live.requests(), tokio::time::Instant::now());
            tokio::time::sleep(run).await;
            (live.requests() - first) as f64 / started.elapsed().as_secs_f64()
        }
    });
    let executed = attack.execute().await;
    drop(progress);
    let steady_rate = if steady.is_finished() { steady.await.ok() } else { None };
    let (metrics, passed) = match executed {
        Ok(metrics) => (metrics, true),
        Err(GooseError::ThresholdsFailed { metrics, .. }) => (*metrics.0, false),
        Err(e) => return Err(e.into()),
    };
    Ok(Outcome { metrics, passed, abuser: plan.abuser.then(|| abuser.counts()), steady_rate, refused: live.refused() })
}

fn configuration(plan: &Plan) -> GooseConfiguration {
    let mut config = GooseConfiguration::default();
    config.host = Some(plan.host.clone());
    config.users = Some(plan.users + usize::from(plan.abuser));
    // Goose takes a rate: users started per second, so that starting them all takes ramp_time.
    config.increase_rate = Some((plan.users as f64 / plan.ramp_time.as_secs_f64()).to_string());
    config.run_time = Some(plan.run_time.as_secs().max(1).to_string());
    // A stalled server makes users send fewer requests, which hides the stall; Goose backfills
    // the requests they would have sent and reports the adjusted times beside the raw ones.
    config.co_mitigation = Some(GooseCoordinatedOmissionMitigation::Average);
    config.threshold = gate(plan);
    // Judge the gate once over the whole run, not at the first bad second.
    config.no_threshold_abort = true;
    // Keep the ramp in the figures: the statement counts around the run include it too.
    config.no_reset_metrics = true;
    // No telnet Controller: nothing steers the run, and matrix runs don't fight over its port.
    config.no_telnet = true;
    config.report_file = plan.report_files.clone();
    // Warnings only on the console: a line per user started and stopped buries the results.
    config.quiet = 1;
    config.no_print_metrics = !plan.goose_output;
    config.throttle_requests = plan.throttle;
    config
}

/// One token per simulated user, for distinct free-tier users: Goose's user index `i` is the
/// `i`-th free user, so a per-user rate limit sees as many callers as there are users.
fn mint_tokens(plan: &Plan) -> Vec<String> {
    let keys = JwtKeys::new(&plan.jwt_secret);
    // Valid for the whole run, ramp and slack included.
    let ttl = plan.ramp_time + plan.run_time + Duration::from_secs(600);
    (1..=Profile::Medium.users())
        .filter(|&id| tier_of(id) == "free")
        .take(plan.users + 1)
        .map(|id| keys.mint(id, Tier::Free, ttl))
        .collect()
}

/// A user's token, kept in Goose's per-user session data.
#[derive(Clone)]
struct Session {
    token: String,
}

/// Runs once when a user starts: take this user's token.
fn sign_in(tokens: Arc<Vec<String>>) -> Transaction {
    let sign_in: TransactionFunction = Arc::new(move |user| {
        let token = tokens[user.weighted_users_index].clone();
        Box::pin(async move {
            user.set_session_data(Session { token });
            Ok(())
        })
    });
    Transaction::new(sign_in).set_name("sign in").set_on_start()
}

/// A reader's loop body: read the feed, or /health (the scenario's wait time is the think
/// time), and tell the progress line how it went.
fn read(endpoint: Endpoint, live: Arc<Live>) -> Transaction {
    let read: TransactionFunction = Arc::new(move |user| {
        let live = live.clone();
        Box::pin(async move {
            let response = get(user, endpoint.path(), endpoint.request_name()).await?;
            live.record(response.request.response_time, response.request.success, response.request.status_code);
            Ok(())
        })
    });
    Transaction::new(read).set_name(match endpoint {
        Endpoint::Feed => "read feed",
        Endpoint::Health => "check health",
    })
}

/// The abuser's loop body: read the feed with no pause, counting what the limiter says.
fn hammer(counters: Arc<Counters>) -> Transaction {
    let hammer: TransactionFunction = Arc::new(move |user| {
        let counters = counters.clone();
        Box::pin(async move {
            let response = get(user, FEED_PATH, ABUSER_REQUEST).await?;
            counters.record(response.request.status_code);
            Ok(())
        })
    });
    Transaction::new(hammer).set_name("hammer feed")
}

async fn get(user: &mut GooseUser, path: &str, name: &str) -> Result<GooseResponse, Box<TransactionError>> {
    let token = user.get_session_data_unchecked::<Session>().token.clone();
    let request = user.get_request_builder(&GooseMethod::Get, path)?.bearer_auth(token);
    user.request(GooseRequest::builder().name(name).set_request_builder(request).build()).await
}

/// The abuser's counts, kept here rather than read from Goose: Goose's per-status counts
/// include the requests coordinated-omission mitigation backfills.
#[derive(Default)]
struct Counters {
    admitted: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    fn record(&self, status: u16) {
        match status {
            200 => self.admitted.fetch_add(1, Ordering::Relaxed),
            429 => self.limited.fetch_add(1, Ordering::Relaxed),
            _ => self.other.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn counts(&self) -> AbuserCounts {
        AbuserCounts {
            admitted: self.admitted.load(Ordering::Relaxed),
            limited: self.limited.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use goose::threshold::Threshold;

    use super::*;

    fn plan(users: usize) -> Plan {
        Plan {
            host: "http://127.0.0.1:1".into(),
            users,
            abuser: true,
            run_time: Duration::from_secs(30),
            think_time: Duration::from_secs(1),
            ramp_time: Duration::from_secs(5),
            gate_p99: Duration::from_millis(500),
            gate_error_rate: 1.0,
            report_files: Vec::new(),
            jwt_secret: "s".into(),
            endpoint: Endpoint::Feed,
            throttle: None,
            goose_output: false,
            label: "test".into(),
        }
    }

    #[test]
    fn the_gate_is_two_goose_rules_on_the_readers_requests() {
        let rules = gate(&plan(10));
        assert_eq!(rules, ["p99<500ms for GET /api/feed", "error-rate<1% for GET /api/feed"]);
        for rule in &rules {
            rule.parse::<Threshold>().unwrap();
        }
        let health = Plan { endpoint: Endpoint::Health, ..plan(10) };
        assert_eq!(gate(&health), ["p99<500ms for GET /health", "error-rate<1% for GET /health"]);
    }

    #[test]
    fn every_user_and_the_abuser_get_a_distinct_free_tier_user() {
        let keys = JwtKeys::new("s");
        let users: HashSet<i64> = mint_tokens(&plan(500))
            .iter()
            .map(|token| {
                let user = keys.verify(token).unwrap();
                assert_eq!((user.tier, tier_of(user.id)), (Tier::Free, "free"));
                user.id
            })
            .collect();
        assert_eq!(users.len(), 501);
    }
}
