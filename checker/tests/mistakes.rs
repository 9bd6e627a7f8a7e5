//! The checker, proven against plausible wrong solutions (mistakes/): each is graded through the
//! same path as any implementation (`--cmd`), and must fail the check that names its symptom,
//! with a message about the symptom, not about the mistake. One correct alternative must pass.

use checker::build::Built;
use checker::{EnvOptions, KataEnv, Report, StageId, Status, Target, Verdict};

/// A mistake, the bar it is graded at, the check that must fail, a pattern its summary must
/// match (the symptom, in figures no correct implementation prints, whatever the timing), and the other checks it fails inherently (a mistake can break more than one
/// promise: no stampede lock also means a fill that cannot tell it was invalidated).
struct Case {
    mistake: &'static str,
    bar: StageId,
    must_fail: &'static str,
    symptom: &'static str,
    also_fails: &'static [&'static str],
    /// Graded on the cluster topology (`verify --topology cluster`).
    cluster: bool,
}

async fn grade(case: &Case) -> Report {
    let binary = match checker::build::build("mistakes").expect("cargo runs") {
        Built::Binary(path) => path,
        Built::CompileError(e) => panic!("mistakes does not compile:\n{e}"),
    };
    let options = EnvOptions { honour_env: false, redis_cluster: case.cluster, ..EnvOptions::default() };
    let mut env = KataEnv::start(options).await.expect("services start");
    let command = format!("exec {} {}", binary.display(), case.mistake);
    checker::checks::verify(&mut env, case.bar, Target::Cmd(command)).await.expect("verify runs")
}

async fn assert_caught(case: Case) {
    let report = grade(&case).await;
    let failed: Vec<&str> = report.failed().map(|c| c.name.as_str()).collect();
    assert_eq!(report.verdict, Verdict::Fail, "{} passed:\n{}", case.mistake, report.to_text());
    assert!(
        failed.contains(&case.must_fail),
        "{}: {} did not fail:\n{}",
        case.mistake,
        case.must_fail,
        report.to_text()
    );
    let unexpected: Vec<&&str> =
        failed.iter().filter(|name| **name != case.must_fail && !case.also_fails.contains(name)).collect();
    assert!(unexpected.is_empty(), "{}: unexpected failures {unexpected:?}:\n{}", case.mistake, report.to_text());
    let check = report.checks.iter().find(|c| c.name == case.must_fail).expect("the check ran");
    let symptom = regex::Regex::new(case.symptom).expect("a valid pattern");
    assert!(
        symptom.is_match(&check.summary),
        "{}: /{}/ does not match {:?}",
        case.mistake,
        case.symptom,
        check.summary
    );
    // The learner reads a symptom, never the name of the mistake they made.
    let named = case.mistake.replace('-', " ");
    for text in report.failed().map(|c| c.summary.to_lowercase()) {
        assert!(!text.contains(&named) && !text.contains(case.mistake), "{}: names the mistake: {text}", case.mistake);
    }
    assert!(report.checks.iter().all(|c| c.status != Status::NotRun), "{}", report.to_text());
}

macro_rules! mistakes {
    ($($test:ident: $mistake:literal at $bar:ident fails $check:literal saying $symptom:literal $(, also $($also:literal),+)?;)+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            assert_caught(Case {
                mistake: $mistake,
                bar: StageId::$bar,
                must_fail: $check,
                symptom: $symptom,
                also_fails: &[$($($also),+)?],
                cluster: false,
            })
            .await;
        }
    )+};
}

mistakes! {
    no_tie_breaker: "no-tie-breaker" at Stage1 fails "feed.order_is_total" saying "with index scans off the statement returns them in another order";
    timeline_by_author: "timeline-by-author" at Stage1 fails "feed.matches_oracle" saying "^0 of 18 feeds",
        also "posts.read_back", "plan.uses_timeline_index", "feed.order_is_total", "equivalence.stage_0";
    cut_in_rust: "cut-in-rust" at Stage1 fails "plan.uses_timeline_index" saying "no Limit node: the statement returns all";
    join_without_index: "join-without-index" at Stage1 fails "plan.uses_timeline_index" saying "posts is read by `Seq Scan on posts`";
    ttl_without_jitter: "ttl-without-jitter" at Stage2 fails "cache.ttl_jitter" saying r"spread [0-3] s";
    ttl_one_day: "ttl-one-day" at Stage2 fails "cache.ttl_jitter" saying r"TTLs \d{5,}\.\.";
    no_ttl: "no-ttl" at Stage2 fails "cache.ttl_jitter" saying "have no expiry at all";
    no_invalidation: "no-invalidation" at Stage2 fails "cache.invalidation" saying ": 0 of 6 show it first",
        also "cache.race_fill_vs_post", "cache.race_read_during_post";
    invalidate_before_insert: "invalidate-before-insert" at Stage2 fails "cache.race_read_during_post" saying "shows the post first on 0 of 2";
    fill_without_lock_check: "fill-without-lock-check" at Stage2 fails "cache.race_fill_vs_post" saying "shows the post first on 0 of 2";
    no_stampede_lock: "no-stampede-lock" at Stage2 fails "cache.stampede" saying r"ran ([2-9]|\d{2,}) SQL statement",
        also "cache.race_fill_vs_post";
    redis_error_500: "redis-error-500" at Stage2 fails "redis_down" saying "^Redis stopped: feed 500";
    key_per_limit: "key-per-limit" at Stage2 fails "cache.invalidation" saying ": 2 of 6 show it first";
    key_without_user: "key-without-user" at Stage2 fails "feed.matches_oracle" saying "^3 of 18 feeds",
        also "queries_per_request", "plan.uses_timeline_index", "feed.order_is_total", "equivalence.stage_0", "cache.ttl_jitter";
    bucket_by_peer_ip: "bucket-by-peer-ip" at Stage3 fails "ratelimit.isolation" saying "another free user after a burst: 429",
        also "ratelimit.across_instances", "ratelimit.spoofed_headers", "ratelimit.headers", "ratelimit.refill";
    bucket_by_forwarded_for: "bucket-by-forwarded-for" at Stage3 fails "ratelimit.spoofed_headers" saying ": 1000 admitted",
        also "ratelimit.across_instances", "ratelimit.isolation", "ratelimit.headers", "ratelimit.refill";
    bucket_in_memory: "bucket-in-memory" at Stage3 fails "ratelimit.across_instances" saying r": 1\d\d admitted";
    get_then_set: "get-then-set" at Stage3 fails "ratelimit.burst" saying r"^([7-9]\d|[1-9]\d{2,}) admitted",
        also "ratelimit.across_instances", "ratelimit.isolation", "ratelimit.spoofed_headers", "ratelimit.refill";
    fixed_window: "fixed-window" at Stage3 fails "ratelimit.refill" saying "after 2 s 0 of",
        also "ratelimit.burst", "ratelimit.isolation", "ratelimit.headers";
    no_retry_after: "no-retry-after" at Stage3 fails "ratelimit.burst" saying "every 429 had Retry-After ≥ 1: no";
    t_until_full: "t-until-full" at Stage3 fails "ratelimit.headers" saying r"a 429 said Retry-After: 1 but t=[56]\d:";
    limit_health_too: "limit-health-too" at Stage3 fails "ratelimit.probes_unlimited" saying "429: ";
    limiter_redis_error_500: "limiter-redis-error-500" at Stage3 fails "redis_down" saying "free-tier request 500";
}

/// On a Redis Cluster, a cache whose key and lock hash to different slots can store nothing: its
/// fill script touches both, and the cluster refuses it. Redis's own error counts say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_without_hash_tags() {
    assert_caught(Case {
        mistake: "keys-without-hash-tags",
        bar: StageId::Stage3,
        must_fail: "cache.hit_ratio",
        symptom: r"^0\.0% hits .*Redis refused commands meanwhile: .*CROSSSLOT ×\d+",
        // Nothing cached: no TTLs, SQL on every read, no hits after a failover or an outage. And
        // a read that finds a page's lock taken waits up to a second for a fill that never lands,
        // so one caller's sequential requests come slower than their bucket refills: no 429 to
        // compare, and a wait refills more than the check allows for.
        also_fails: &[
            "cache.ttl_jitter",
            "cache.warm_read_statements",
            "cache.stampede",
            "ratelimit.headers",
            "ratelimit.refill",
            "cluster.failover",
            "redis_down",
        ],
        cluster: true,
    })
    .await;
}

/// A master dies on a cluster: a cache that answers 500 on a Redis error fails the failover, not
/// only a whole outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_error_500_on_a_cluster() {
    assert_caught(Case {
        mistake: "redis-error-500",
        bar: StageId::Stage2,
        must_fail: "cluster.failover",
        symptom: r"feed reads [^;]*500 ×\d+",
        also_fails: &["redis_down"],
        cluster: true,
    })
    .await;
}

/// Batch loading (posts, then their authors in one `any($1)`) is a correct fix of the N+1: two
/// statements whatever the page size. It meets the stage-1 bar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_loading_passes_stage_1_with_two_statements_at_every_page_size() {
    let report = grade(&Case {
        mistake: "batch-authors",
        bar: StageId::Stage1,
        must_fail: "",
        symptom: "",
        also_fails: &[],
        cluster: false,
    })
    .await;
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.to_text());
    let check = report.checks.iter().find(|c| c.name == "queries_per_request").unwrap();
    assert!(check.summary.starts_with("2 statements per feed request at every page size"), "{}", check.summary);
}
