//! Statements per request (pg_stat_statements), the feed statement's plan (EXPLAIN), and
//! equivalence with stage-0's responses.

use std::time::Instant;

use serde_json::{Value, json};

use super::{Run, describe, normalise, percentiles};
use crate::explain::{PlanNode, explain, shape};
use crate::pgss::{self, Statement};
use crate::report::{Check, Report};
use crate::{Implementation, StageId};

/// Requests measured for the headline figure: one each for 10 full timelines.
const REQUESTS: usize = 10;

pub async fn run(run: &mut Run<'_>, report: &mut Report) {
    match measure(run, report).await {
        Ok(()) => {}
        Err(e) => report.push(Check::errored("queries_per_request", &e)),
    }
}

/// The statements the service ran for `users`' feeds, one request each, and the latencies.
async fn window(run: &Run<'_>, users: &[i64]) -> anyhow::Result<(Vec<Statement>, Vec<f64>)> {
    let before = pgss::snapshot(&run.env.admin).await?;
    let mut latencies = Vec::new();
    for &user in users {
        let started = Instant::now();
        let reply = run.api.feed(&run.token(user), "").await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            reply.status == 200,
            "GET /api/feed for user {user} returned {}: {}",
            reply.status,
            reply.text()
        );
    }
    let after = pgss::snapshot(&run.env.admin).await?;
    Ok((pgss::delta(&before, &after), latencies))
}

async fn measure(run: &mut Run<'_>, report: &mut Report) -> anyhow::Result<()> {
    // Cold caches: at stage-2 and later the statement count of a *miss* is what is measured here.
    run.env.flush_redis().await?;
    let users = run.users.full(10, REQUESTS).to_vec();
    let (statements, latencies) = window(run, &users).await?;
    let per_request = pgss::total_calls(&statements) as f64 / REQUESTS as f64;
    let edge_users: Vec<i64> = run.users.short[2..].iter().chain(&run.users.empty[1..]).copied().collect();
    let (edge_statements, _) = window(run, &edge_users).await?;
    let edge_per_request = pgss::total_calls(&edge_statements) as f64 / edge_users.len() as f64;

    report.metric("queries_per_request", per_request);
    report.metric("feed_latency_p50_ms", percentiles(latencies).0);
    report.diagnosis.push(format!(
        "pg_stat_statements, delta over {REQUESTS} feed requests (one per user, cold cache):\n{}",
        pgss::table(&statements, 6)
    ));

    // The N+1 signature: one statement called a whole number of times per request, more than once.
    let repeated = statements.iter().find(|s| s.calls >= 2 * REQUESTS as i64);
    let n_plus_one = repeated.map(|s| format!("{} × {}", s.calls / REQUESTS as i64, s.snippet(70)));
    let check = if run.bar == StageId::Stage0 {
        let passed = per_request == 21.0;
        Check::new(
            "queries_per_request",
            passed,
            per_request,
            21,
            match &n_plus_one {
                Some(n) if passed => format!("21 statements per feed request, as shipped: 1 posts query + {n}"),
                _ => format!("expected 21 (1 posts query + 20 author lookups, the N+1 stage-0 ships with), measured {per_request}"),
            },
        )
        .on_failure("stage-0 is the broken starting point; `verify stage-1` is the bar a fix must meet", "docs/stage-0.md")
    } else {
        let passed = per_request == 1.0 && edge_per_request == 1.0;
        let summary = match &n_plus_one {
            Some(n) => format!("expected 1, measured {per_request} — N+1: {n} per request"),
            None if passed => {
                format!("1 statement per feed request ({REQUESTS} full timelines; short and empty ones: 1 too)")
            }
            None => format!(
                "expected 1 per request, measured {per_request} (full timelines) and {edge_per_request} (short and empty ones)"
            ),
        };
        Check::new(
            "queries_per_request",
            passed,
            json!({ "full_timelines": per_request, "short_and_empty": edge_per_request }),
            json!({ "full_timelines": 1, "short_and_empty": 1 }),
            summary,
        )
        .evidence(pgss::table(&statements, 6))
        .on_failure(
            "read the authors in the same statement as the posts (a JOIN on users), not one query per post",
            "docs/stage-1.md#the-fix-one-statement",
        )
    };
    report.push(check);

    if let Some(top) = statements.first().filter(|_| run.bar == StageId::Stage0 || n_plus_one.is_some()) {
        let plan = explain(&run.env.admin, &top.query, users[0], 20, false).await?;
        report.diagnosis.push(format!(
            "EXPLAIN (ANALYZE, BUFFERS) of the most-called statement, {} — fast on its own; the cost is the number of calls:\n{}",
            top.snippet(60),
            plan.join("\n")
        ));
    }
    if run.bar >= StageId::Stage1 {
        let plan = plan_check(run, report, &statements, users[0]).await;
        report.push(plan.unwrap_or_else(|e| Check::errored("plan.uses_timeline_index", &e)));
    }
    Ok(())
}

/// EXPLAIN the feed statement: the timeline index must hand over the rows in order.
async fn plan_check(run: &Run<'_>, report: &mut Report, statements: &[Statement], user: i64) -> anyhow::Result<Check> {
    const NAME: &str = "plan.uses_timeline_index";
    let Some(feed) = statements.iter().find(|s| s.query.to_lowercase().contains("posts")) else {
        return Ok(Check::new(
            NAME,
            false,
            Value::Null,
            "a statement reading posts",
            "no statement reading posts ran during the feed requests",
        ));
    };
    let explained: Value = serde_json::from_str(&explain(&run.env.admin, &feed.query, user, 20, true).await?.concat())?;
    let (nodes, execution_ms) = shape(&explained);
    let text = explain(&run.env.admin, &feed.query, user, 20, false).await?;
    report.diagnosis.push(format!(
        "EXPLAIN (ANALYZE, BUFFERS) of the feed statement ({}):\n{}",
        feed.snippet(60),
        text.join("\n")
    ));
    report.metric("feed_statement_execution_ms", execution_ms);

    let timeline_index: Option<String> = sqlx::query_scalar(
        "select indexname::text from pg_indexes where tablename = 'posts'
           and indexdef like '%(user_id, created_at DESC, id DESC)%' limit 1",
    )
    .fetch_optional(&run.env.admin)
    .await?;
    let on_posts: Vec<&PlanNode> = nodes.iter().filter(|n| n.relation.as_deref() == Some("posts")).collect();
    let mut problems = Vec::new();
    if timeline_index.is_none() {
        problems.push("posts has no index on (user_id, created_at desc, id desc)".to_owned());
    }
    for node in &on_posts {
        if !node.node.starts_with("Index") || node.index != timeline_index {
            problems.push(format!(
                "posts is read by `{}`, not by an index scan of {}",
                node.line().trim(),
                timeline_index.as_deref().unwrap_or("the timeline index")
            ));
        }
    }
    if on_posts.is_empty() {
        problems.push("the plan does not read posts".to_owned());
    }
    if let Some(sort) = nodes.iter().find(|n| n.node.contains("Sort")) {
        problems.push(format!("a `{}` node sorts rows the index could have returned in order", sort.node));
    }
    let lines: Vec<String> = nodes.iter().map(PlanNode::line).collect();
    Ok(Check::new(
        NAME,
        problems.is_empty(),
        json!({ "shape": lines, "execution_ms": execution_ms }),
        "Index Scan of posts via (user_id, created_at desc, id desc); no Seq Scan on posts; no Sort",
        if problems.is_empty() {
            format!(
                "posts read in order through {}, no sort; executes in {execution_ms:.3} ms",
                timeline_index.unwrap_or_default()
            )
        } else {
            problems.join("; ")
        },
    )
    .evidence(text.join("\n"))
    .on_failure(
        "order by created_at desc, id desc with an index whose columns match (user_id first, then the sort keys)",
        "docs/stage-1.md#reading-explain-analyze",
    ))
}

/// The target answers exactly as stage-0 does, for the same users, side by side.
pub async fn equivalence(run: &mut Run<'_>, report: &mut Report) {
    const NAME: &str = "equivalence.stage_0";
    let result: anyhow::Result<Check> = async {
        // stage-0 as its own process beside the target, on the same database.
        let stage_0 = run.env.spawn(Implementation::Stage0).await?;
        let reference = crate::client::Api::new(&stage_0.base_url);
        let users = run.users.full(20, 6).iter().chain(&run.users.short[..1]).chain(&run.users.empty[..1]).copied().collect::<Vec<_>>();
        let (mut ours, mut theirs, mut differ) = (Vec::new(), Vec::new(), Vec::new());
        let mut compared = 0;
        for &user in &users {
            for query in ["", "limit=100"] {
                let token = run.token(user);
                let started = Instant::now();
                let got = run.api.feed(&token, query).await?;
                ours.push(started.elapsed().as_secs_f64() * 1000.0);
                let started = Instant::now();
                let want = reference.feed(&token, query).await?;
                theirs.push(started.elapsed().as_secs_f64() * 1000.0);
                compared += 1;
                let (got_json, want_json) = (got.json().map(normalise), want.json().map(normalise));
                if got.status != want.status || got_json != want_json {
                    differ.push(format!(
                        "user {user} ?{query}: stage-0 {} {}, target {} {}",
                        want.status,
                        want_json.as_ref().map(describe).unwrap_or_default(),
                        got.status,
                        got_json.as_ref().map(describe).unwrap_or_default()
                    ));
                }
            }
        }
        let (p50, _) = percentiles(ours);
        let (reference_p50, _) = percentiles(theirs);
        report.metric("equivalence_latency_p50_ms", p50);
        report.metric("stage_0_latency_p50_ms", reference_p50);
        let same = compared - differ.len();
        let target = run.target.short_name();
        Ok(Check::new(
            NAME,
            differ.is_empty(),
            format!("{same}/{compared}"),
            format!("{compared}/{compared}"),
            format!("{same} of {compared} responses equal stage-0's (p50 {p50:.1} ms for {target} vs {reference_p50:.1} ms for stage-0, same requests)"),
        )
        .evidence(differ.join("\n"))
        .on_failure("a fix changes how the feed is read, never what it returns: same order, same ties, same authors", "docs/stage-1.md"))
    }
    .await;
    report.push(result.unwrap_or_else(|e| Check::errored(NAME, &e)));
}
