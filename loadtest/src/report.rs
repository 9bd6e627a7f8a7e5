//! One row per run, Goose's figures beside the database's: a narrow summary for a terminal (the
//! verdicts first), the wide Markdown table and JSON for files.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use goose::metrics::GooseRequestMetricTimingData;
use goose::threshold::ThresholdResult;
use kata_services::Implementation;
use serde::Serialize;

use crate::capacity::Capacity;
use crate::load::{AbuserCounts, FEED_REQUEST, Outcome};
use crate::probes::{PoolUse, Snapshot};

/// The widest line the terminal summary prints.
#[cfg(test)]
const NARROW: usize = 100;

#[derive(Debug, Serialize)]
pub struct Row {
    pub target: Implementation,
    pub users: usize,
    /// Feed requests the readers made, failed ones included, backfilled ones not.
    pub requests: usize,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The p99 with the requests coordinated-omission mitigation backfilled: what a user
    /// arriving on schedule would have seen while the service stalled.
    pub p99_co_ms: f64,
    /// Failed feed requests in percent, as Goose's error-rate rule counts them.
    pub error_pct: f64,
    pub statements_per_request: Option<f64>,
    pub statements_per_sec: Option<f64>,
    pub pool: Option<PoolUse>,
    /// The service's cache hits over lookups; none without a cache.
    pub hit_ratio: Option<f64>,
    pub abuser: Option<AbuserCounts>,
    /// The abuser's requests per second, all answers.
    pub abuser_per_sec: Option<f64>,
    pub gate_passed: bool,
    /// Each gate rule as Goose judged it at the end of the run.
    pub thresholds: Vec<ThresholdResult>,
    /// Goose's HTML report of this run, when one was written.
    pub report: Option<String>,
    /// Behind a balancer (`--instances`, `--redis-cluster`): how the load spread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spread: Option<crate::scale_out::Spread>,
}

impl Row {
    pub fn new(
        target: Implementation,
        users: usize,
        outcome: &Outcome,
        before: &Snapshot,
        after: &Snapshot,
        pool: Option<PoolUse>,
    ) -> anyhow::Result<Self> {
        let metrics = &outcome.metrics;
        let key = format!("GET {FEED_REQUEST}");
        let feed = metrics.requests.get(&key).with_context(|| format!("Goose recorded no {key}"))?;
        let requests = feed.raw_data.counter;
        let seconds = metrics.duration.max(1) as f64;
        let ms = |times: &GooseRequestMetricTimingData, percent| times.percentile_us(percent) as f64 / 1000.0;
        // Without a stall there is nothing to backfill, and the adjusted times are the raw ones.
        let co = feed.coordinated_omission_data.as_ref().unwrap_or(&feed.raw_data);
        let made = feed.success_count + feed.fail_count;
        let statements = before.statements.zip(after.statements).map(|(b, a)| (a - b) as f64);
        let hit_ratio = before.cache.zip(after.cache).and_then(|(b, a)| {
            let hits = a.hits - b.hits;
            let lookups = hits + a.misses - b.misses;
            (lookups > 0.0).then(|| hits / lookups)
        });
        Ok(Self {
            target,
            users,
            requests,
            requests_per_sec: requests as f64 / seconds,
            p50_ms: ms(&feed.raw_data, 0.5),
            p99_ms: ms(&feed.raw_data, 0.99),
            p99_co_ms: ms(co, 0.99),
            error_pct: if made == 0 { 0.0 } else { feed.fail_count as f64 * 100.0 / made as f64 },
            statements_per_request: statements.filter(|_| requests > 0).map(|s| s / requests as f64),
            statements_per_sec: statements.map(|s| s / seconds),
            pool,
            hit_ratio,
            abuser: outcome.abuser,
            abuser_per_sec: outcome.abuser.map(|a| (a.admitted + a.limited + a.other) as f64 / seconds),
            gate_passed: outcome.passed,
            thresholds: metrics.thresholds.clone(),
            report: None,
            spread: None,
        })
    }

    /// "stage-2 @ 500 + abuser".
    pub fn label(&self) -> String {
        format!("{} @ {}{}", self.target, self.users, if self.abuser.is_some() { " + abuser" } else { "" })
    }

    /// What the lesson says this row should do: stage-0 fails the gate at any load the matrix
    /// uses; the fixed stages pass (stage-2 with an abuser and the workbench are open questions).
    fn expected_pass(&self) -> Option<bool> {
        match (self.target, self.abuser.is_some()) {
            (Implementation::Stage0, _) => Some(false),
            (Implementation::Stage2, true) | (Implementation::Workbench, _) => None,
            _ => Some(true),
        }
    }

    /// Each broken rule with what was observed, e.g. "p99 1073 ms > 500 ms".
    fn broken_rules(&self) -> Vec<String> {
        self.thresholds
            .iter()
            .filter(|t| !t.passed)
            .map(|t| {
                let rule = t.rule.split(" for ").next().unwrap_or(&t.rule);
                match rule.split_once('<') {
                    Some(("p99", limit)) => format!("p99 {:.0} ms > {}", self.p99_ms, spaced(limit)),
                    Some(("error-rate", limit)) => format!("errors {:.2} % > {}", self.error_pct, spaced(limit)),
                    _ => format!("{rule}: {}", t.observed),
                }
            })
            .collect()
    }

    /// The verdict in a sentence, e.g. "stage-0 @ 200 fails the gate, as expected: p99 1073 ms >
    /// 500 ms".
    pub fn verdict_line(&self) -> String {
        let label = self.label();
        if self.gate_passed {
            let how = format!("p99 {:.0} ms, errors {:.2} %", self.p99_ms, self.error_pct);
            match self.expected_pass() {
                Some(false) => format!("{label} passes the gate, which the lesson does not expect: {how}"),
                _ => format!("{label} passes the gate: {how}"),
            }
        } else {
            let why = self.broken_rules().join(", ");
            match self.expected_pass() {
                Some(false) => format!("{label} fails the gate, as expected: {why}"),
                Some(true) => format!("{label} FAILS the gate, which the lesson does not expect: {why}"),
                None => format!("{label} fails the gate: {why}"),
            }
        }
    }

    /// PASS, or FAIL with each failed rule and what was observed (the wide table).
    fn verdict(&self) -> String {
        if self.gate_passed { "PASS".into() } else { format!("FAIL ({})", self.broken_rules().join("; ")) }
    }
}

/// A Goose limit as prose: "500ms" as "500 ms", "1%" as "1 %".
fn spaced(limit: &str) -> String {
    match limit.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => format!("{} {}", &limit[..at], &limit[at..]),
        None => limit.to_string(),
    }
}

/// Where and when the figures were measured: the first line of every capture.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub commit: String,
    pub cores: usize,
    pub date: String,
}

impl Provenance {
    pub fn now(workspace: &Path) -> Self {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .current_dir(workspace)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let mut commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        // What is measured is the services' code: say when it is not the commit's.
        let measured = ["stages", "workbench", "services", "loadtest"];
        let mut diff = vec!["diff", "--quiet", "HEAD", "--"];
        diff.extend(measured);
        if git(&diff).is_none() {
            commit.push_str(" with uncommitted changes");
        }
        Self {
            commit,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }

    pub fn line(&self) -> String {
        format!("measured at commit {} on {} cores, {}", self.commit, self.cores, self.date)
    }
}

/// Every capacity the run measured, /health's first.
#[derive(Debug, Default, Serialize)]
pub struct Capacities {
    pub health: Option<Capacity>,
    pub targets: Vec<(Implementation, Capacity)>,
}

impl Capacities {
    pub fn of(&self, target: Implementation) -> Option<&Capacity> {
        self.targets.iter().find(|(t, _)| *t == target).map(|(_, c)| c)
    }

    /// The target's capacity over /health's, as a share.
    pub fn ratio(&self, target: Implementation) -> Option<f64> {
        let rate = self.of(target)?.rate?;
        let health = self.health.as_ref()?.rate?;
        Some(rate / health)
    }
}

/// A share as a percentage: whole percents, one decimal below 10 % (18 of 10,396 is 0.2 %, not 0 %).
pub fn percent(share: f64) -> String {
    let pct = share * 100.0;
    if pct < 10.0 { format!("{pct:.1} %") } else { format!("{pct:.0} %") }
}

fn dash() -> String {
    "–".to_string()
}

fn pool_cell(pool: &Option<PoolUse>) -> String {
    pool.map_or_else(dash, |p| format!("{:.1}/{:.0} of {:.0}", p.active_mean, p.active_max, p.size))
}

fn abuser_cell(row: &Row) -> String {
    row.abuser.map_or_else(dash, |a| format!("{}/{}", a.admitted, a.limited))
}

/// The terminal summary: the provenance, each row's verdict in a sentence, then a table that fits
/// [`NARROW`] columns, then the capacities. Every line fits.
pub fn narrow(provenance: &Provenance, rows: &[Row], capacities: &Capacities, gate_p99_ms: u128) -> String {
    let mut out = format!("{}\n\n", provenance.line());
    for row in rows {
        let _ = writeln!(out, "{}", row.verdict_line());
    }
    if !rows.is_empty() {
        table(&mut out, rows);
    }
    for row in rows {
        if let Some(spread) = &row.spread {
            let _ = writeln!(out, "\n{} through HAProxy:", row.label());
            let _ = writeln!(out, "  requests per instance: {}", crate::scale_out::Spread::shares(&spread.instances));
            let _ =
                writeln!(out, "  commands per Redis node: {}", crate::scale_out::Spread::shares(&spread.redis_nodes));
        }
    }
    if let Some(health) = &capacities.health {
        let _ = writeln!(
            out,
            "\ncapacity, open model (highest rate held with p99 < {gate_p99_ms} ms, errors < gate):\n  \
             GET /health {} (the ceiling of this machine and load generator)",
            health.display()
        );
        for (target, capacity) in &capacities.targets {
            let ratio = capacities.ratio(*target).map_or_else(String::new, |r| format!(", {} of /health", percent(r)));
            let _ = writeln!(out, "  {target:<11} {}{ratio}", capacity.display());
        }
    }
    out
}

/// The rows of [`narrow`]: the figures that tell the story, one short line each.
fn table(out: &mut String, rows: &[Row]) {
    let _ = writeln!(
        out,
        "\n{:<22} {:>7} {:>6} {:>6} {:>6} {:>5} {:>12} {:>5} {:>12} {:>4}",
        "run", "p99 ms", "err %", "req/s", "st/req", "st/s", "pool mean/max", "hit %", "abuser 200/429", "gate"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<22} {:>7.0} {:>6.2} {:>6.0} {:>6} {:>5} {:>12} {:>5} {:>12} {:>4}",
            row.label(),
            row.p99_ms,
            row.error_pct,
            row.requests_per_sec,
            row.statements_per_request.map_or_else(dash, |s| format!("{s:.2}")),
            row.statements_per_sec.map_or_else(dash, |s| format!("{s:.0}")),
            row.pool.map_or_else(dash, |p| format!("{:.1}/{:.0}", p.active_mean, p.active_max)),
            row.hit_ratio.map_or_else(dash, |h| format!("{:.1}", h * 100.0)),
            abuser_cell(row),
            if row.gate_passed { "PASS" } else { "FAIL" },
        );
    }
}

/// The wide table, every column: for `--markdown-out` and the matrix's summary.md.
pub fn markdown(provenance: &Provenance, rows: &[Row], capacities: &Capacities) -> String {
    let mut out = format!("{}\n\n", provenance.line());
    out.push_str(
        "| run | requests | req/s | p50 | p99 | p99 CO-adjusted | errors \
         | statements/request | statements/s | pool active mean / max of size | hit ratio \
         | abuser 200 / 429 (req/s) | capacity | ÷ /health | gate | Goose report |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} % | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.label(),
            row.requests,
            row.requests_per_sec,
            row.p50_ms,
            row.p99_ms,
            row.p99_co_ms,
            row.error_pct,
            row.statements_per_request.map_or_else(dash, |s| format!("{s:.2}")),
            row.statements_per_sec.map_or_else(dash, |s| format!("{s:.0}")),
            pool_cell(&row.pool),
            row.hit_ratio.map_or_else(dash, |h| format!("{:.1} %", h * 100.0)),
            row.abuser
                .zip(row.abuser_per_sec)
                .map_or_else(dash, |(a, rate)| format!("{} / {} ({rate:.0}/s)", a.admitted, a.limited)),
            capacities.of(row.target).map_or_else(dash, Capacity::display),
            capacities.ratio(row.target).map_or_else(dash, percent),
            row.verdict(),
            row.report.as_deref().map_or_else(dash, |path| format!("[html]({path})")),
        );
    }
    if let Some(health) = &capacities.health {
        let _ = writeln!(out, "\nGET /health capacity on the same machine: {}", health.display());
    }
    out
}

/// Everything the run measured, as JSON.
#[derive(Serialize)]
struct Results<'a> {
    provenance: &'a Provenance,
    rows: &'a [Row],
    capacities: &'a Capacities,
}

/// The results as JSON, to `dest` or to stdout when it is "-".
pub fn write_json(provenance: &Provenance, rows: &[Row], capacities: &Capacities, dest: &str) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(&Results { provenance, rows, capacities })?;
    if dest == "-" {
        println!("{json}");
    } else {
        std::fs::write(dest, json + "\n").with_context(|| format!("writing {dest}"))?;
        crate::progress::say(format!("wrote {dest}"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capacity::StepResult;

    fn threshold(rule: &str, passed: bool, observed: &str) -> ThresholdResult {
        serde_json::from_value(serde_json::json!({ "rule": rule, "passed": passed, "observed": observed, "value": null, "aborted": false }))
            .unwrap_or_else(|e| panic!("ThresholdResult's shape changed: {e}"))
    }

    pub(crate) fn row(target: Implementation, users: usize, p99: f64, errors: f64, abuser: bool) -> Row {
        let passed = p99 < 500.0 && errors < 1.0;
        Row {
            target,
            users,
            requests: 123_456,
            requests_per_sec: 4321.9,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            p99_co_ms: p99,
            error_pct: errors,
            statements_per_request: Some(21.0),
            statements_per_sec: Some(22_222.0),
            pool: Some(PoolUse { active_mean: 9.7, active_max: 10.0, size: 10.0, samples: 100 }),
            hit_ratio: Some(0.97),
            abuser: abuser.then_some(AbuserCounts { admitted: 99_999, limited: 1_234_567, other: 0 }),
            abuser_per_sec: abuser.then_some(12_345.0),
            gate_passed: passed,
            thresholds: vec![
                threshold("p99<500ms for GET /api/feed", p99 < 500.0, &format!("{p99}ms")),
                threshold("error-rate<1% for GET /api/feed", errors < 1.0, &format!("{errors}%")),
            ],
            report: Some("stage-0-200.html".into()),
            spread: None,
        }
    }

    pub(crate) fn capacities() -> Capacities {
        let cap = |rate| Capacity {
            rate: Some(rate),
            at_max: false,
            lowest_rate: 50,
            steps: vec![StepResult {
                target_rate: 50,
                achieved_rate: rate,
                p99_ms: 1.0,
                error_pct: 0.0,
                refused: 0,
                held: true,
            }],
        };
        Capacities { health: Some(cap(12_000.0)), targets: vec![(Implementation::Stage0, cap(98.0))] }
    }

    #[test]
    fn the_verdict_comes_first_and_names_the_broken_rule() {
        let failing = row(Implementation::Stage0, 200, 1073.4, 0.0, false);
        assert_eq!(failing.verdict_line(), "stage-0 @ 200 fails the gate, as expected: p99 1073 ms > 500 ms");
        let surprising = row(Implementation::Stage1, 500, 800.0, 3.5, false);
        assert_eq!(
            surprising.verdict_line(),
            "stage-1 @ 500 FAILS the gate, which the lesson does not expect: p99 800 ms > 500 ms, errors 3.50 % > 1 %"
        );
        let abused = row(Implementation::Stage2, 500, 20.0, 0.0, true);
        assert_eq!(abused.verdict_line(), "stage-2 @ 500 + abuser passes the gate: p99 20 ms, errors 0.00 %");
    }

    #[test]
    fn the_terminal_summary_fits_a_hundred_columns() {
        let rows = [
            row(Implementation::Stage0, 500, 5_123_456.0, 42.123, false),
            row(Implementation::Stage3, 500, 4.0, 0.0, true),
            row(Implementation::Workbench, 10_000, 4.0, 0.0, true),
        ];
        let provenance = Provenance {
            commit: "abcdef0 with uncommitted changes".into(),
            cores: 2,
            date: "2026-11-29 12:00 UTC".into(),
        };
        let text = narrow(&provenance, &rows, &capacities(), 500);
        for line in text.lines() {
            assert!(line.chars().count() <= NARROW, "{} columns: {line}", line.chars().count());
        }
        assert!(text.starts_with("measured at commit abcdef0"));
        assert!(text.contains("stage-0     98/s, 0.8 % of /health"), "{text}");
        assert_eq!(percent(0.95), "95 %");
        let wide = markdown(&provenance, &rows, &capacities());
        assert!(wide.contains("[html](stage-0-200.html)"));
    }
}
