//! One row per run, Goose's figures beside the database's, as a Markdown table and as JSON.

use std::fmt::Write as _;

use anyhow::Context as _;
use goose::metrics::GooseRequestMetricTimingData;
use goose::threshold::ThresholdResult;
use serde::Serialize;

use crate::load::{AbuserCounts, FEED_REQUEST, Outcome};
use crate::probes::{PoolUse, Snapshot};

#[derive(Debug, Serialize)]
pub struct Row {
    pub stage: u8,
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
    pub gate_passed: bool,
    /// Each gate rule as Goose judged it at the end of the run.
    pub thresholds: Vec<ThresholdResult>,
}

impl Row {
    pub fn new(
        stage: u8,
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
            stage,
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
            gate_passed: outcome.passed,
            thresholds: metrics.thresholds.clone(),
        })
    }

    /// PASS, or FAIL with each failed rule and what was observed.
    fn verdict(&self) -> String {
        if self.gate_passed {
            return "PASS".into();
        }
        let failed: Vec<String> = self
            .thresholds
            .iter()
            .filter(|t| !t.passed)
            .map(|t| format!("{}: {}", t.rule.split(" for ").next().unwrap_or(&t.rule), t.observed))
            .collect();
        format!("FAIL ({})", failed.join("; "))
    }
}

/// The before/after table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| stage | users | requests | req/s | p50 | p99 | p99 CO-adjusted | errors \
         | statements/request | statements/s | pool active mean / max of size | hit ratio \
         | abuser 200 / 429 | gate |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    for row in rows {
        let dash = || "–".to_string();
        let _ = writeln!(
            out,
            "| stage-{} | {} | {} | {:.1} | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} % | {} | {} | {} | {} | {} | {} |",
            row.stage,
            row.users,
            row.requests,
            row.requests_per_sec,
            row.p50_ms,
            row.p99_ms,
            row.p99_co_ms,
            row.error_pct,
            row.statements_per_request.map_or_else(dash, |s| format!("{s:.2}")),
            row.statements_per_sec.map_or_else(dash, |s| format!("{s:.0}")),
            row.pool.map_or_else(dash, |p| format!("{:.1} / {:.0} of {:.0}", p.active_mean, p.active_max, p.size)),
            row.hit_ratio.map_or_else(dash, |h| format!("{:.1} %", h * 100.0)),
            row.abuser.map_or_else(dash, |a| format!("{} / {}", a.admitted, a.limited)),
            row.verdict(),
        );
    }
    out
}

/// The rows as JSON, to `dest` or to stdout when it is "-".
pub fn write_json(rows: &[Row], dest: &str) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(rows)?;
    if dest == "-" {
        println!("{json}");
    } else {
        std::fs::write(dest, json + "\n").with_context(|| format!("writing {dest}"))?;
        println!("wrote {dest}");
    }
    Ok(())
}
