//! The capacity search: the highest request rate a service sustains within the gate, in an open
//! model (the arrival rate is set, not the users' patience).
//!
//! Many users with no think time make requests as fast as Goose's throttle lets them, so the
//! throttle is the arrival rate. A step holds when the service kept up (at least 80 % of the
//! rate arrived and was answered, counted after the ramp), its p99 stayed under the gate and its errors under the gate's
//! rate. The rate doubles while steps hold; after the first step that does not, two bisections
//! narrow the gap; when even the first step does not hold, the rate halves (three times at most)
//! until one does, and the same bisections follow. The capacity is the best rate a holding step
//! achieved, as measured.

use std::time::Duration;

use serde::Serialize;

use crate::cli::{Common, SearchArgs};
use crate::harness::Environment;
use crate::load::{Endpoint, Plan};

/// The ramp of each step: users start over this time, at the step's rate.
const STEP_RAMP: Duration = Duration::from_secs(2);
/// A step whose achieved rate falls below this share of the target did not keep up. Goose's
/// throttle releases requests on a 10 ms tick and runs a little slow on a busy machine, so this
/// is not 1; a service that cannot keep up shows it in its p99 long before this.
const KEPT_UP: f64 = 0.8;
/// Bisections after the first step that does not hold.
const BISECTIONS: usize = 2;
/// Halvings below the start rate when even it does not hold (50/s down to 6/s).
const HALVINGS: usize = 3;
/// The most requests one user makes in a step, on average: under stage-3's free-tier burst
/// (60). Goose's throttle does not share the rate evenly (the users started first have it to
/// themselves during the ramp), so against a limiter at its default policy some users still
/// cross their burst; a target the load test starts gets [`unlimited`] settings as well.
const PER_USER: f64 = 50.0;

/// The settings a target started for a capacity search gets: the free tier's bucket so large that
/// it never refuses. Every request still runs the limiter (its round trip and its script are in
/// the capacity), but the search measures how fast the service answers, not its policy: with
/// the default 60 a minute, hundreds of free-tier users at full speed are refused by design.
pub fn unlimited() -> Vec<(String, String)> {
    ["RATE_FREE_BURST", "RATE_FREE_PER_MIN"].map(|name| (name.to_owned(), "1000000000".to_owned())).into()
}

/// Users for a step at `rate`: at least `fewest`, and enough that they make no more than
/// [`PER_USER`] requests each on average.
fn users_for(rate: usize, step: Duration, fewest: usize) -> usize {
    let requests = rate as f64 * (step + STEP_RAMP).as_secs_f64();
    fewest.max((requests / PER_USER).ceil() as usize)
}

#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// The best achieved rate of a step that held (requests/s); none when the first step failed.
    pub rate: Option<f64>,
    /// The search stopped at `--max-rate` with every step holding: the capacity is at least this.
    pub at_max: bool,
    /// The lowest rate tried.
    pub lowest_rate: usize,
    pub steps: Vec<StepResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub target_rate: usize,
    pub achieved_rate: f64,
    pub p99_ms: f64,
    pub error_pct: f64,
    /// `429 Too Many Requests` answers actually received: a rate limiter's refusals, not the
    /// service falling behind. Real answers only, so not a share of `error_pct`, which counts
    /// the failures Goose's coordinated-omission mitigation backfills too.
    pub refused: u64,
    pub held: bool,
}

impl Capacity {
    /// "1,600/s", "≥ 12,800/s" or "< 50/s".
    pub fn display(&self) -> String {
        match self.rate {
            Some(rate) if self.at_max => format!("≥ {rate:.0}/s"),
            Some(rate) => format!("{rate:.0}/s"),
            None => format!("< {}/s", self.lowest_rate),
        }
    }
}

/// The next rate to try, or none when the search is over: double while everything held, then
/// bisect between the best hold and the lowest failure.
fn next_rate(steps: &[StepResult], search: &SearchArgs) -> Option<usize> {
    let held = steps.iter().filter(|s| s.held).map(|s| s.target_rate).max();
    let failed = steps.iter().filter(|s| !s.held).map(|s| s.target_rate).min();
    match (held, failed) {
        (_, None) => {
            let last = steps.last().map_or(0, |s| s.target_rate);
            if last == 0 {
                Some(search.start_rate)
            } else if last >= search.max_rate {
                None
            } else {
                Some((last * 2).min(search.max_rate))
            }
        }
        // Even the first rate was too much: halve it, a few times, to find one that holds.
        (None, Some(failed)) => {
            let halvings = steps.len();
            (halvings <= HALVINGS && failed / 2 >= 1).then_some(failed / 2)
        }
        (Some(held), Some(failed)) => {
            // Steps since the first one that had a hold and a failure on either side.
            let bracketed = (0..steps.len())
                .find(|&i| steps[..=i].iter().any(|s| s.held) && steps[..=i].iter().any(|s| !s.held))
                .unwrap_or(steps.len() - 1);
            let bisected = steps.len() - 1 - bracketed;
            let mid = (held + failed) / 2;
            (bisected < BISECTIONS && mid > held && mid < failed).then_some(mid)
        }
    }
}

/// Search the capacity of `endpoint` on the service at `base_url`. Redis is emptied before each
/// step when `env` is ours, so every step starts with full token buckets.
pub async fn search(
    label: &str,
    base_url: &str,
    endpoint: Endpoint,
    mut env: Option<&mut Environment>,
    search: &SearchArgs,
    common: &Common,
) -> anyhow::Result<Capacity> {
    let mut steps: Vec<StepResult> = Vec::new();
    while let Some(rate) = next_rate(&steps, search) {
        if let Some(env) = env.as_deref_mut() {
            env.flush_redis().await?;
        }
        let plan = Plan {
            host: base_url.to_string(),
            users: users_for(rate, search.step_time, search.search_users),
            abuser: false,
            run_time: search.step_time,
            think_time: Duration::ZERO,
            ramp_time: STEP_RAMP,
            gate_p99: common.gate_p99,
            gate_error_rate: common.gate_error_rate,
            report_files: Vec::new(),
            jwt_secret: common.jwt_secret.clone(),
            endpoint,
            throttle: Some(rate),
            goose_output: common.goose_output,
            label: format!("{label} @ {rate}/s"),
        };
        let outcome = crate::load::run(&plan).await?;
        let key = format!("GET {}", endpoint.request_name());
        let Some(metrics) = outcome.metrics.requests.get(&key) else {
            anyhow::bail!("Goose recorded no {key}");
        };
        let achieved_rate = outcome
            .steady_rate
            .unwrap_or_else(|| metrics.raw_data.counter as f64 / (outcome.metrics.duration.max(1) as f64));
        let made = metrics.success_count + metrics.fail_count;
        let step = StepResult {
            target_rate: rate,
            achieved_rate,
            p99_ms: metrics.raw_data.percentile_us(0.99) as f64 / 1000.0,
            error_pct: if made == 0 { 0.0 } else { metrics.fail_count as f64 * 100.0 / made as f64 },
            refused: outcome.refused,
            held: outcome.passed && achieved_rate >= KEPT_UP * rate as f64,
        };
        crate::progress::say(format!(
            "  {label} @ {rate:>5}/s: {} ({achieved_rate:.0}/s achieved, p99 {:.0} ms, errors {:.2} %{})",
            if step.held { "holds" } else { "does not hold" },
            step.p99_ms,
            step.error_pct,
            if step.refused > 0 {
                format!("; {} answers were 429: refused by a rate limiter, not a slow service", step.refused)
            } else {
                String::new()
            }
        ));
        steps.push(step);
    }
    let best = steps
        .iter()
        .filter(|s| s.held)
        .map(|s| s.achieved_rate)
        .fold(None, |a: Option<f64>, r| Some(a.map_or(r, |a| a.max(r))));
    let at_max = steps.iter().all(|s| s.held) && !steps.is_empty();
    let lowest_rate = steps.iter().map(|s| s.target_rate).min().unwrap_or(search.start_rate);
    Ok(Capacity { rate: best, at_max, lowest_rate, steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SearchArgs {
        SearchArgs { step_time: Duration::from_secs(8), start_rate: 50, max_rate: 800, search_users: 400 }
    }

    fn step(rate: usize, held: bool) -> StepResult {
        StepResult { target_rate: rate, achieved_rate: rate as f64, p99_ms: 1.0, error_pct: 0.0, refused: 0, held }
    }

    #[test]
    fn the_rate_doubles_while_steps_hold_and_stops_at_the_maximum() {
        let search = args();
        assert_eq!(next_rate(&[], &search), Some(50));
        assert_eq!(next_rate(&[step(50, true)], &search), Some(100));
        let all: Vec<_> = [50, 100, 200, 400, 800].map(|r| step(r, true)).into();
        assert_eq!(next_rate(&all, &search), None);
    }

    #[test]
    fn after_the_first_failure_the_gap_is_bisected_twice() {
        let search = args();
        let mut steps = vec![step(50, true), step(100, true), step(200, false)];
        assert_eq!(next_rate(&steps, &search), Some(150));
        steps.push(step(150, false));
        assert_eq!(next_rate(&steps, &search), Some(125));
        steps.push(step(125, true));
        assert_eq!(next_rate(&steps, &search), None);
        let mut steps = vec![step(50, false)];
        assert_eq!(next_rate(&steps, &search), Some(25));
        steps.push(step(25, false));
        assert_eq!(next_rate(&steps, &search), Some(12));
        steps.push(step(12, true));
        assert_eq!(next_rate(&steps, &search), Some(18));
        let failing: Vec<_> = [50, 25, 12, 6].map(|r| step(r, false)).into();
        assert_eq!(next_rate(&failing, &search), None);
    }

    #[test]
    fn fast_steps_get_enough_users_to_stay_under_the_burst() {
        assert_eq!(users_for(100, Duration::from_secs(8), 400), 400);
        assert_eq!(users_for(3200, Duration::from_secs(8), 400), 640);
        assert!(3200.0 * 10.0 / users_for(3200, Duration::from_secs(8), 400) as f64 <= PER_USER);
    }

    #[test]
    fn capacity_says_when_it_is_a_bound() {
        let cap = |rate, at_max| Capacity { rate, at_max, lowest_rate: 50, steps: Vec::new() };
        assert_eq!(cap(Some(1234.4), false).display(), "1234/s");
        assert_eq!(cap(Some(800.0), true).display(), "≥ 800/s");
        assert_eq!(cap(None, false).display(), "< 50/s");
    }
}
