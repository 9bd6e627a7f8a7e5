//! EXPLAIN of a statement captured by pg_stat_statements, and the plan's shape.
//!
//! pg_stat_statements stores statements normalised (`where user_id = $1 … limit $2`). The
//! checker PREPAREs that text and EXPLAINs an EXECUTE of it with real values: the plan of the
//! statement the service actually ran, whatever language or ORM produced it.

use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

/// `EXPLAIN (ANALYZE, BUFFERS [, FORMAT JSON])` of `query`. Its `limit $N` parameter gets
/// `limit`; every other parameter gets `user_id` (the timeline, or an author id).
pub async fn explain(admin: &PgPool, query: &str, user_id: i64, limit: i64, json: bool) -> anyhow::Result<Vec<String>> {
    let mut conn = admin.acquire().await?;
    let name = statement_name();
    sqlx::raw_sql(AssertSqlSafe(format!("prepare {name} as {query}"))).execute(&mut *conn).await?;
    let args = arguments(query, user_id, limit);
    let format = if json { ", format json" } else { "" };
    let explained = if json {
        sqlx::query_scalar::<_, Value>(AssertSqlSafe(format!(
            "explain (analyze, buffers{format}) execute {name}{args}"
        )))
        .fetch_all(&mut *conn)
        .await
        .map(|rows| rows.iter().map(Value::to_string).collect())
    } else {
        sqlx::query_scalar::<_, String>(AssertSqlSafe(format!("explain (analyze, buffers) execute {name}{args}")))
            .fetch_all(&mut *conn)
            .await
    };
    sqlx::raw_sql(AssertSqlSafe(format!("deallocate {name}"))).execute(&mut *conn).await?;
    Ok(explained?)
}

/// Execute `query` (as normalised by pg_stat_statements) with the same parameter values as
/// [`explain`], under planner `settings` (e.g. `enable_indexscan = off`), and return the `id`
/// column of each row in order (the first column named `id`, or else the first column).
pub async fn execute_ids(
    admin: &PgPool,
    query: &str,
    user_id: i64,
    limit: i64,
    settings: &[&str],
) -> anyhow::Result<Vec<i64>> {
    use sqlx::Row as _;
    let mut tx = admin.begin().await?;
    let name = statement_name();
    for setting in settings {
        sqlx::raw_sql(AssertSqlSafe(format!("set local {setting}"))).execute(&mut *tx).await?;
    }
    sqlx::raw_sql(AssertSqlSafe(format!("prepare {name} as {query}"))).execute(&mut *tx).await?;
    let args = arguments(query, user_id, limit);
    let rows = sqlx::query(AssertSqlSafe(format!("execute {name}{args}"))).fetch_all(&mut *tx).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("deallocate {name}"))).execute(&mut *tx).await?;
    tx.rollback().await?;
    rows.iter()
        .map(|row| {
            use sqlx::Column as _;
            let id = row.columns().iter().position(|c| c.name() == "id").unwrap_or(0);
            Ok(row.try_get::<i64, _>(id)?)
        })
        .collect()
}

/// A name no other PREPARE on a pooled connection uses: one left behind by a failed EXECUTE
/// (PREPARE is not undone by a rollback) can never collide with the next.
fn statement_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("kata_statement_{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// `(v1, v2, …)` for an EXECUTE of `query`: its `limit $N` gets `limit`, every other parameter
/// `user_id` (the timeline, or an author id). Empty when it has no parameters.
fn arguments(query: &str, user_id: i64, limit: i64) -> String {
    let values: Vec<String> = (1..=parameters(query))
        .map(|n| if query.to_lowercase().contains(&format!("limit ${n}")) { limit } else { user_id }.to_string())
        .collect();
    if values.is_empty() { String::new() } else { format!("({})", values.join(", ")) }
}

/// The highest `$N` in a normalised statement.
fn parameters(query: &str) -> usize {
    query
        .split('$')
        .skip(1)
        .filter_map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok())
        .max()
        .unwrap_or(0)
}

/// A plan node, reduced to what does not change between runs: type, join type, index, relation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanNode {
    pub depth: usize,
    pub node: String,
    pub index: Option<String>,
    pub relation: Option<String>,
    /// The index condition (`(user_id = '13'::bigint)`): which rows the index was asked for.
    #[serde(skip)]
    pub condition: Option<String>,
}

impl PlanNode {
    pub fn line(&self) -> String {
        let mut line = format!("{}{}", "  ".repeat(self.depth), self.node);
        if let Some(index) = &self.index {
            line.push_str(&format!(" using {index}"));
        }
        if let Some(relation) = &self.relation {
            line.push_str(&format!(" on {relation}"));
        }
        line
    }
}

/// The plan tree of `EXPLAIN (FORMAT JSON)` output, depth first; and the execution time in ms.
pub fn shape(explained: &Value) -> (Vec<PlanNode>, f64) {
    let top = explained.get(0).unwrap_or(explained);
    let mut nodes = Vec::new();
    if let Some(plan) = top.get("Plan") {
        walk(plan, 0, &mut nodes);
    }
    (nodes, top.get("Execution Time").and_then(Value::as_f64).unwrap_or(0.0))
}

fn walk(plan: &Value, depth: usize, out: &mut Vec<PlanNode>) {
    let text = |key: &str| plan.get(key).and_then(Value::as_str).map(str::to_owned);
    let mut node = text("Node Type").unwrap_or_default();
    if let Some(join) = text("Join Type").filter(|j| j != "Inner") {
        node.push_str(&format!(" ({join})"));
    }
    out.push(PlanNode {
        depth,
        node,
        index: text("Index Name"),
        relation: text("Relation Name"),
        condition: text("Index Cond"),
    });
    for child in plan.get("Plans").and_then(Value::as_array).into_iter().flatten() {
        walk(child, depth + 1, out);
    }
}

/// The first ten users whose timelines fill a default page (20 posts or more): whose feeds
/// `explain` and `diagnose` request, so both measure the same reads.
pub async fn full_timelines(admin: &PgPool) -> anyhow::Result<Vec<i64>> {
    Ok(sqlx::query_scalar("select user_id from posts group by user_id having count(*) >= 20 order by user_id limit 10")
        .fetch_all(admin)
        .await?)
}

/// `checker explain`: drive a burst of feed requests through `stage`, then show what an engineer
/// would look at: the top statements by calls, and the plan of each.
pub async fn on_demand(
    env: &crate::KataEnv,
    stage: crate::Implementation,
    user: Option<i64>,
) -> anyhow::Result<String> {
    let users = full_timelines(&env.admin).await?;
    let user = user.or(users.first().copied()).ok_or_else(|| anyhow::anyhow!("no seeded users; run `checker seed`"))?;
    // The schema the implementation's own migrations give it, as `verify` does.
    feed_core::db::reset_to_core_schema(&env.admin).await?;
    let app = env.spawn(stage).await?;
    let api = crate::client::Api::new(&app.base_url);
    let before = crate::pgss::snapshot(&env.admin).await?;
    let mut requests = 0;
    for &u in std::iter::once(&user).chain(&users) {
        for _ in 0..2 {
            api.feed(&env.token(u, feed_core::auth::Tier::Internal), "").await?;
            requests += 1;
        }
    }
    let after = crate::pgss::snapshot(&env.admin).await?;
    let statements = crate::pgss::delta(&before, &after);
    let mut out = format!(
        "{requests} feed requests to {} ({} ms latency per direction to Postgres), then:\n\n\
         select left(query, 80) as query_snippet, calls,\n       round(mean_exec_time::numeric, 2) as mean_ms,\n       round(total_exec_time::numeric, 0) as total_ms\n\
         from pg_stat_statements order by calls desc limit 5;   -- (delta over those requests)\n\n{}\n",
        stage.name(),
        env.services.db_latency_ms,
        crate::pgss::table(&statements, 5)
    );
    out.push_str(&format!(
        "statements per request: {:.1}\n",
        crate::pgss::total_calls(&statements) as f64 / requests as f64
    ));
    for statement in statements.iter().take(3) {
        let plan = explain(&env.admin, &statement.query, user, 20, false).await?;
        out.push_str(&format!("\nEXPLAIN (ANALYZE, BUFFERS) {}\n{}\n", statement.snippet(80), plan.join("\n")));
    }
    Ok(out)
}

/// `checker explain --sql`: run a statement of your own `times` times, then show its line of
/// `pg_stat_statements` (calls, mean and total time, rows) and its plan, `EXPLAIN (ANALYZE,
/// BUFFERS)`: the two tools on any statement, to learn to read them.
pub async fn statement(env: &crate::KataEnv, sql: &str, times: u32) -> anyhow::Result<String> {
    let before = crate::pgss::snapshot(&env.admin).await?;
    let mut rows = 0;
    for _ in 0..times {
        rows = sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).fetch_all(&env.admin).await?.len();
    }
    let after = crate::pgss::snapshot(&env.admin).await?;
    let ran = crate::pgss::delta(&before, &after);
    // EXPLAIN ANALYZE runs the statement once more: in a transaction rolled back, so a write is
    // made `times` times, as asked, not once more.
    let mut explaining = env.admin.begin().await?;
    let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!("explain (analyze, buffers) {sql}")))
        .fetch_all(&mut *explaining)
        .await?;
    explaining.rollback().await?;
    let runs = if times == 1 { "once".to_owned() } else { format!("{times} times") };
    let rows = if rows == 1 { "1 row".to_owned() } else { format!("{rows} rows") };
    Ok(format!(
        "{sql}\n\nrun {runs} ({rows} each); pg_stat_statements, the delta over those runs:\n{}\n\
         EXPLAIN (ANALYZE, BUFFERS):\n{}\n",
        crate::pgss::table(&ran, 3),
        plan.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_counts_the_highest_placeholder() {
        assert_eq!(parameters("select 1 from posts where user_id = $1 order by x limit $2"), 2);
        assert_eq!(parameters("select id from users where id = $1"), 1);
        assert_eq!(parameters("select 1"), 0);
    }

    #[test]
    fn shape_keeps_node_types_indexes_and_relations_only() {
        let plan = serde_json::json!([{ "Plan": {
            "Node Type": "Limit", "Total Cost": 9.5,
            "Plans": [{ "Node Type": "Nested Loop", "Join Type": "Left", "Plans": [
                { "Node Type": "Index Scan", "Index Name": "idx_posts_user_created", "Relation Name": "posts", "Actual Rows": 20 },
                { "Node Type": "Index Scan", "Index Name": "users_pkey", "Relation Name": "users" }
            ]}]
        }, "Execution Time": 0.25 }]);
        let (nodes, ms) = shape(&plan);
        let lines: Vec<String> = nodes.iter().map(PlanNode::line).collect();
        assert_eq!(
            lines,
            [
                "Limit",
                "  Nested Loop (Left)",
                "    Index Scan using idx_posts_user_created on posts",
                "    Index Scan using users_pkey on users"
            ]
        );
        assert_eq!(ms, 0.25);
    }
}
