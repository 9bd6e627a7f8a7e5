//! The checker against the reference stages, on throwaway PostgreSQL and Redis.
//!
//! Each test starts its own services (a fresh cluster costs about half a second), so tests never
//! share a pg_stat_statements view or a Redis keyspace. Numbers that are exact in the lesson are
//! asserted exactly; what a learner reads is snapshotted with timings and ids redacted.

use checker::{EnvOptions, Implementation, KataEnv, Report, StageId, Status, Target, Verdict};

async fn env() -> KataEnv {
    // `honour_env: false`: a developer's DATABASE_URL must never be reseeded by the tests.
    KataEnv::start(EnvOptions { honour_env: false, ..EnvOptions::default() }).await.expect("services start")
}

async fn verify(bar: StageId, target: Implementation) -> Report {
    let mut env = env().await;
    checker::checks::verify(&mut env, bar, Target::Implementation(target)).await.expect("verify runs")
}

/// Every report lists `builds`, `starts` and then each planned check of its bar, in order.
fn assert_all_checks_ran(report: &Report, bar: StageId) {
    let names: Vec<&str> = report.checks.iter().map(|c| c.name()).collect();
    let mut planned = vec!["builds", "starts"];
    planned.extend(checker::registry::planned(bar, checker::Topology::Single).iter().map(|c| c.name()));
    assert_eq!(names, planned);
}

fn metric(report: &Report, name: &str) -> f64 {
    report.metrics.get(name).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("metric {name} missing"))
}

/// Which checks ran, in order, and how each ended: the structure of a report, which must not
/// change from run to run (what each measured is asserted exactly where it is exact, below).
macro_rules! assert_checks_snapshot {
    ($name:expr, $report:expr) => {
        let outcome: Vec<String> = $report.checks.iter().map(|c| format!("{:<30} {:?}", c.name(), c.status)).collect();
        insta::assert_yaml_snapshot!($name, (outcome, $report.verdict));
    };
}

/// The text a learner reads first, minus what changes from run to run (timings, plans' costs).
macro_rules! assert_text_snapshot {
    ($name:expr, $report:expr) => {
        insta::with_settings!({
            filters => vec![
                (r"db_round_trip_ms=[\d.]+", "db_round_trip_ms=[rtt]"),
                (r"(?m)^(  [a-z0-9_]+_ms) +[\d.]+$", "$1 [ms]"),
                (r"(?m)^(\s+(?:\| +)?\d+)\s+[\d.]+\s+[\d.]+(  )", "$1  [mean]  [total]$2"),
                (r"\d+(\.\d+)? ms", "[n] ms"),
                (r"actual time=[\d.]+\.\.[\d.]+", "actual time=[t]"),
                // Buffers count pages touched, hint bits and catalog reads included: 196 one run,
                // 202 the next. Plain, or quoted as evidence (`| `).
                (r"Buffers: .*", "Buffers: [buffers]"),
                // Whether planning read the catalog (a `Planning:` block) depends on the pooled
                // connection's cache, plain or quoted as evidence (`| `).
                (r"(?m)^ *(?:\| +)?Planning:\n *(?:\| +)?Buffers: .*\n", ""),
                (r"[\d.]+ s after start", "[s] s after start"),
                // Which statement took the most time overall is a close call on the small profile.
                (r"(?m)^( +\| )by total time:\n(?: +\| .*\n)+", "${1}by total time: [table]\n"),
                (r"(?m)^the same, by total time:\n(?:.+\n)+", "the same, by total time: [table]\n"),
                (r"after \d+ attempt\(s\)", "after [n] attempt(s)"),
                (r"warm again after [\d.]+ s \(\d+ pass\(es\) over", "warm again after [s] s ([n] pass(es) over"),
            ],
        }, {
            insta::assert_snapshot!($name, $report.to_text());
        });
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_0_makes_21_statements_per_feed_request() {
    let report = verify(StageId::Stage0, Implementation::Stage0).await;
    assert!(report.passed, "{}", report.to_text());
    assert_all_checks_ran(&report, StageId::Stage0);
    assert_eq!(metric(&report, "queries_per_request"), 21.0);
    assert_text_snapshot!("stage_0_report", report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_1_makes_one_statement_using_the_timeline_index() {
    let report = verify(StageId::Stage1, Implementation::Stage1).await;
    assert!(report.passed, "{}", report.to_text());
    assert_all_checks_ran(&report, StageId::Stage1);
    assert_eq!(metric(&report, "queries_per_request"), 1.0);
    let plan = report.checks.iter().find(|c| c.name() == "plan.uses_timeline_index").expect("plan check ran");
    insta::assert_yaml_snapshot!("stage_1_plan_shape", plan.measured["shape"]);
    assert_checks_snapshot!("stage_1_report", report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_1_bar_fails_stage_0_on_the_n_plus_one_and_the_missing_index() {
    let report = verify(StageId::Stage1, Implementation::Stage0).await;
    assert!(!report.passed);
    let failed: Vec<&str> = report.failed().map(|c| c.name()).collect();
    // Two causes to find: 21 statements, and a posts query without its index (Seq Scan + Sort).
    assert_eq!(failed, ["queries_per_request", "plan.uses_timeline_index"]);
    let check = report.failed().next().unwrap();
    // The measurement, not the diagnosis: the learner is left to name the cause and the fix.
    assert!(
        check.summary.starts_with("statements per request change with the page size: 6 at limit 5, 21 at limit 20, "),
        "{}",
        check.summary
    );
    for spoiler in ["join", "JOIN", "N+1", "index"] {
        assert!(!check.summary.contains(spoiler), "{spoiler} in {}", check.summary);
    }
    assert_eq!(check.doc.as_deref(), Some("docs/stage-1.md"));
    assert_text_snapshot!("stage_1_bar_on_stage_0", report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_2_serves_hits_without_sql_and_one_statement_per_stampede() {
    let report = verify(StageId::Stage2, Implementation::Stage2).await;
    assert!(report.passed, "{}", report.to_text());
    assert_all_checks_ran(&report, StageId::Stage2);
    assert_eq!(metric(&report, "queries_per_request"), 1.0);
    assert!(metric(&report, "hit_ratio") >= 0.95);
    assert_eq!(metric(&report, "stampede_statements"), 1.0);
    let warm = report.checks.iter().find(|c| c.name() == "cache.warm_read_statements").unwrap();
    assert_eq!(warm.measured, 0.0);
    assert_checks_snapshot!("stage_2_report", report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_2_bar_fails_stage_1_on_the_cache_checks_only() {
    let report = verify(StageId::Stage2, Implementation::Stage1).await;
    let failed: Vec<&str> = report.failed().map(|c| c.name()).collect();
    assert_eq!(failed, ["cache.hit_ratio", "cache.ttl_jitter", "cache.warm_read_statements", "cache.stampede"]);
    // Without a cache, "the next read shows the post" proves nothing: not applicable, not passed.
    let not_applicable: Vec<&str> =
        report.checks.iter().filter(|c| c.status == Status::NotApplicable).map(|c| c.name()).collect();
    assert_eq!(
        not_applicable,
        [
            "cache.ttl_not_extended",
            "cache.invalidation",
            "cache.race_fill_vs_post",
            "cache.race_read_during_post",
            "cache.cold_read_latency",
            "redis_hung",
            "redis_down"
        ]
    );
    assert_checks_snapshot!("stage_2_bar_on_stage_1", report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_3_admits_one_bucket_per_user_however_the_burst_arrives() {
    let report = verify(StageId::Stage3, Implementation::Stage3).await;
    assert!(report.passed, "{}", report.to_text());
    assert_all_checks_ran(&report, StageId::Stage3);
    for burst in ["burst", "across_instances", "spoofed_burst"] {
        // Exactly the bucket, plus what refilled during that burst's own measured duration.
        let admitted = metric(&report, &format!("{burst}_admitted"));
        let most = metric(&report, &format!("{burst}_expected_admitted_max"));
        assert!((60.0..=most).contains(&admitted), "{burst}: {admitted} admitted, at most {most} allowed");
    }
    assert_eq!(metric(&report, "burst_admitted") + metric(&report, "burst_limited"), 1000.0);
    assert_checks_snapshot!("stage_3_report", report);
}

/// The scale-out topology: three stage-3 instances behind HAProxy on a Redis Cluster of 3
/// masters and 3 replicas, every check through the balancer, then a master killed mid-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_3_passes_on_a_redis_cluster_behind_a_balancer_through_a_failover() {
    let options = EnvOptions { honour_env: false, redis_cluster: true, ..EnvOptions::default() };
    let mut env = KataEnv::start(options).await.expect("services and the cluster start");
    let target = Target::Implementation(Implementation::Stage3);
    let report = checker::checks::verify(&mut env, StageId::Stage3, target).await.expect("verify runs");
    assert!(report.passed, "{}", report.to_text());
    let names: Vec<&str> = report.checks.iter().map(|c| c.name()).collect();
    let mut planned = vec!["builds", "starts"];
    planned.extend(checker::registry::planned(StageId::Stage3, checker::Topology::Cluster).iter().map(|c| c.name()));
    assert_eq!(names, planned);
    let text = report.to_text();
    assert!(text.contains("3 instance(s) ready") && text.contains("behind HAProxy"), "{text}");
    assert!(text.contains("on each of 3 instance(s): 9 of 9 show it first"), "{text}");
    // One bucket, whichever of the three instances answers.
    let admitted = metric(&report, "across_instances_admitted");
    assert!((60.0..=metric(&report, "across_instances_expected_admitted_max")).contains(&admitted), "{admitted}");
    assert!(metric(&report, "stampede_statements") <= 1.0);
    // The replica took over and hits came back on it after the promotion.
    assert!(metric(&report, "failover_hits_resumed_ms") >= metric(&report, "failover_promoted_ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_3_bar_fails_stage_2_on_the_rate_limit_checks_only() {
    let report = verify(StageId::Stage3, Implementation::Stage2).await;
    let failed: Vec<&str> = report.failed().map(|c| c.name()).collect();
    assert_eq!(
        failed,
        [
            "ratelimit.burst",
            "ratelimit.across_instances",
            "ratelimit.isolation",
            "ratelimit.spoofed_headers",
            "ratelimit.reissued_tokens",
            "ratelimit.source_addresses",
            "ratelimit.every_route",
            "ratelimit.unauthenticated_free",
            "ratelimit.headers",
            "ratelimit.refill",
            "ratelimit.steady_client",
            "redis_down",
            "ratelimit.fail_closed"
        ]
    );
    assert_eq!(metric(&report, "burst_admitted"), 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_implementation_is_graded_by_url_alone() {
    // Served like an external process would be: the checker only knows its URL.
    let mut env = env().await;
    let external = env.spawn(Implementation::Stage2).await.unwrap();
    let target = Target::Urls(vec![external.base_url.clone()]);
    let report = checker::checks::verify(&mut env, StageId::Stage2, target).await.unwrap();
    assert_eq!(report.failed().count(), 0, "{}", report.to_text());
    // What needs the process in hand is not proven, and so neither is the bar: never a pass.
    let unproven: Vec<&str> = report.unresolved().map(|c| c.name()).collect();
    assert_eq!(
        unproven,
        ["cache.race_fill_vs_post", "cache.cold_read_latency", "redis_hung", "redis_down", "postgres_down"]
    );
    assert_eq!(report.verdict, Verdict::NotProven);
    assert_eq!(report.verdict.exit_code(), 3);
    assert!(report.to_text().contains("stage-2: NOT PROVEN"), "{}", report.to_text());
    assert_eq!(report.target, external.base_url);
    assert_eq!(metric(&report, "queries_per_request"), 1.0);
    assert_eq!(metric(&report, "stampede_statements"), 1.0);
}
