//! Behaviour of the stages that the verify reports do not cover on their own: byte-identical
//! responses across stages, outages of Postgres and Redis, the seed data.

use std::time::Duration;

use checker::client::Api;
use checker::{EnvOptions, Implementation, KataEnv};
use feed_core::auth::Tier;
use feed_core::seed::{DEFAULT_SEED, Profile};
use futures::StreamExt as _;

async fn env() -> KataEnv {
    KataEnv::start(EnvOptions { honour_env: false, ..EnvOptions::default() }).await.expect("services start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_1_answers_byte_for_byte_what_stage_0_answers_for_every_user() {
    let env = env().await;
    let (zero, one) =
        (env.spawn(Implementation::Stage0).await.unwrap(), env.spawn(Implementation::Stage1).await.unwrap());
    let (zero, one) = (Api::new(&zero.base_url), Api::new(&one.base_url));
    let users = 1..=Profile::Small.users();
    let differing: Vec<i64> = futures::stream::iter(users.clone())
        .map(|user| {
            let (zero, one, token) = (&zero, &one, env.token(user, Tier::Internal));
            async move {
                let a = zero.feed(&token, "limit=100").await.unwrap();
                let b = one.feed(&token, "limit=100").await.unwrap();
                assert_eq!(a.status, 200);
                (a.body != b.body || a.status != b.status).then_some(user)
            }
        })
        .buffer_unordered(8)
        .filter_map(|d| async move { d })
        .collect()
        .await;
    assert_eq!(differing, Vec::<i64>::new(), "users whose feeds differ between stage-0 and stage-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_timelines_have_created_at_ties_and_reseeding_is_a_no_op() {
    let env = env().await;
    let ties: i64 = sqlx::query_scalar(
        "select count(*) from (select 1 from posts group by user_id, created_at having count(*) > 1) t",
    )
    .fetch_one(&env.admin)
    .await
    .unwrap();
    assert!(ties > 0, "the order needs its id tie-breaker only if created_at repeats");
    let again = feed_core::seed::seed(&env.admin, Profile::Small, DEFAULT_SEED).await.unwrap();
    assert!(again.already_loaded);
    let fingerprint: (i64, i64, i64, String) = sqlx::query_as(
        "select count(*), sum(author_id)::bigint, count(distinct user_id), md5(string_agg(body, '' order by id)) from posts",
    )
    .fetch_one(&env.admin)
    .await
    .unwrap();
    // The same seed gives the same data on every machine.
    insta::assert_debug_snapshot!("small_seed_fingerprint", fingerprint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_gives_503_problem_json_not_a_hang() {
    let mut env = env().await;
    let app = env.spawn(Implementation::Stage1).await.unwrap();
    let api = Api::new(&app.base_url);
    let token = env.token(5, Tier::Free);
    assert_eq!(api.feed(&token, "").await.unwrap().status, 200);
    env.services.owned_postgres().unwrap().stop();
    // The pooled connection is dead: the statement fails at once and the answer is 503 (the
    // client would give up after 15 s; a new connection would time out after 5 s).
    let reply = api.feed(&token, "").await.expect("an answer, not a hang");
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.is_problem_json());
    let ready = api.send(api.get("/ready")).await.unwrap();
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("postgres"), "{}", ready.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_limiter_answers_503_while_redis_is_down_and_exempts_internal() {
    let mut env = env().await;
    let app = env.spawn_with(Implementation::Stage3, &[("RATE_LIMIT_ON_REDIS_ERROR", "closed")]).await.unwrap();
    let api = Api::new(&app.base_url);
    let free = env.token(7, Tier::Free);
    assert_eq!(api.feed(&free, "").await.unwrap().status, 200);
    env.services.owned_redis().unwrap().stop();
    let limited = api.feed(&free, "").await.unwrap();
    assert_eq!(limited.status, 503, "{}", limited.text());
    assert!(limited.is_problem_json());
    assert_eq!(api.feed(&env.token(7, Tier::Internal), "").await.unwrap().status, 200);
    env.services.owned_redis().unwrap().restart().await.unwrap();
    let mut status = 0;
    for _ in 0..20 {
        status = api.feed(&free, "").await.unwrap().status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "admitted again once Redis is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_are_not_rate_limited_and_metrics_count_decisions() {
    let env = env().await;
    let app = env.spawn(Implementation::Stage3).await.unwrap();
    let api = Api::new(&app.base_url);
    let token = env.token(9, Tier::Free);
    let mut limited = 0;
    for _ in 0..70 {
        limited += usize::from(api.feed(&token, "").await.unwrap().status == 429);
    }
    // 70 requests against a bucket of 60: some are refused (how many depends on the refill).
    assert!(limited >= 1, "no request of 70 was limited");
    for path in ["/health", "/ready", "/metrics"] {
        for _ in 0..70 {
            assert_eq!(api.send(api.get(path)).await.unwrap().status, 200, "{path}");
        }
    }
    let metrics = api.send(api.get("/metrics")).await.unwrap().text();
    let limited_line = format!(r#"ratelimit_decisions_total{{tier="free",decision="limited"}} {limited}"#);
    assert!(metrics.contains(&limited_line), "{limited_line} not in\n{metrics}");
    assert!(metrics.contains("db_pool_max 10"), "{metrics}");
    let status_line = format!(r#"http_requests_total{{method="GET",route="/api/feed",status="429"}} {limited}"#);
    assert!(metrics.contains(&status_line), "{status_line} not in\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_database_connection_gives_503_or_200_never_500() {
    let env = env().await;
    let app = env.spawn(Implementation::Stage1).await.unwrap();
    let api = Api::new(&app.base_url);
    let token = env.token(5, Tier::Internal);
    for _ in 0..5 {
        assert_eq!(api.feed(&token, "").await.unwrap().status, 200);
    }
    // What a failover or `pg_ctl restart` does to the service's pooled connections.
    let killed: i64 = sqlx::query_scalar(
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
         where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend') t",
    )
    .fetch_one(&env.admin)
    .await
    .unwrap();
    assert!(killed >= 1, "the service had no connection to terminate");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let reply = api.feed(&token, "").await.unwrap();
        assert!(
            reply.status == 200 || (reply.status == 503 && reply.is_problem_json()),
            "{} {}",
            reply.status,
            reply.text()
        );
        statuses.push(reply.status);
    }
    assert_eq!(statuses.last(), Some(&200), "the pool reconnects: {statuses:?}");
}
