//! `checker diagnose`: the learner states a diagnosis before fixing anything; the checker
//! measures the target then and there and grades each answer against that measurement only.
//!
//! Nothing is compared with a stored answer: the same answers can be right for one target or
//! data set and wrong for another (where the time goes depends on the data), and that is the
//! lesson. Each wrong answer says what was measured and which tool shows it, never the fix.

use std::fmt::Write as _;

use crate::explain::{PlanNode, explain, shape};
use crate::pgss::{self, Statement};
use crate::{Implementation, KataEnv};
use feed_core::seed::Profile;

/// Where most of a feed request's database time goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TimeIn {
    /// Waiting for answers: the number of statements × the round trip to Postgres.
    RoundTrips,
    /// Postgres executing the statement that reads the timeline's posts.
    PostsQuery,
    /// Postgres executing the statements that run once per feed item.
    PerRowStatements,
}

impl TimeIn {
    fn name(self) -> &'static str {
        match self {
            Self::RoundTrips => "round-trips",
            Self::PostsQuery => "posts-query",
            Self::PerRowStatements => "per-row-statements",
        }
    }
}

/// The learner's answers.
#[derive(Clone, Debug, clap::Args)]
pub struct Diagnosis {
    /// How many SQL statements one `GET /api/feed` (limit 20) runs.
    #[arg(long, value_name = "N")]
    pub statements_per_request: f64,
    /// The table read by a statement that runs once per feed item, or `none`.
    #[arg(long, value_name = "TABLE")]
    pub per_row: String,
    /// Whether the statement that reads the timeline's posts finds them through an index.
    #[arg(long, value_name = "yes|no", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), hide_possible_values = true)]
    pub posts_index: bool,
    /// Where most of a request's database time goes.
    #[arg(long, value_enum)]
    pub time_in: TimeIn,
}

/// What the checker measured, from which the answers are graded.
#[derive(Debug)]
pub struct Measured {
    pub requests: usize,
    pub items: usize,
    pub statements: Vec<Statement>,
    pub round_trip_ms: f64,
    /// The statement reading `posts` with the most total time, and its plan.
    pub posts: Option<(Statement, Vec<PlanNode>)>,
}

impl Measured {
    pub fn per_request(&self) -> f64 {
        pgss::total_calls(&self.statements) as f64 / self.requests as f64
    }

    /// Statements that ran more than once per request and at least once for every other item
    /// served: the "+1 per row" of an N+1.
    pub fn per_row(&self) -> Vec<&Statement> {
        self.statements
            .iter()
            .filter(|s| s.calls as usize > self.requests && 2 * s.calls as usize >= self.items)
            .collect()
    }

    pub fn posts_use_an_index(&self) -> Option<bool> {
        let (_, nodes) = self.posts.as_ref()?;
        Some(nodes.iter().any(|n| {
            n.relation.as_deref() == Some("posts") && (n.node.contains("Index") || n.node == "Bitmap Heap Scan")
        }))
    }

    /// Milliseconds per request of each place the time can go.
    pub fn time_split(&self) -> [(TimeIn, f64); 3] {
        let per_request = |ms: f64| ms / self.requests as f64;
        let posts = self.posts.as_ref().map_or(0.0, |(s, _)| per_request(s.total_ms));
        let per_row = self.per_row().iter().map(|s| per_request(s.total_ms)).sum();
        [
            (TimeIn::RoundTrips, self.per_request() * self.round_trip_ms),
            (TimeIn::PostsQuery, posts),
            (TimeIn::PerRowStatements, per_row),
        ]
    }
}

/// Every table a statement names after a `from` (`from users`, `FROM "public"."users"`): the
/// tables it may read. (`extract(epoch from created_at)` adds a column name; grading accepts any
/// of them, so that costs nothing.)
fn tables_of(query: &str) -> Vec<String> {
    let words: Vec<&str> = query.split_whitespace().collect();
    words
        .windows(2)
        .filter(|pair| pair[0].eq_ignore_ascii_case("from"))
        .filter_map(|pair| {
            let name: String = pair[1]
                .chars()
                .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '"'))
                .filter(|c| *c != '"')
                .collect();
            name.rsplit('.').next().filter(|table| !table.is_empty()).map(str::to_lowercase)
        })
        .collect()
}

/// Start `target`, send feed requests (limit 20) for users with full timelines, and measure.
pub async fn measure(env: &KataEnv, target: Implementation) -> anyhow::Result<Measured> {
    let users = crate::explain::full_timelines(&env.admin).await?;
    anyhow::ensure!(!users.is_empty(), "no seeded user has 20 posts; run `cargo kata seed`");
    feed_core::db::reset_to_core_schema(&env.admin).await?;
    let app = env.spawn(target).await?;
    let api = crate::client::Api::new(&app.base_url);
    let before = pgss::snapshot(&env.admin).await?;
    let (mut requests, mut items) = (0, 0);
    for &user in &users {
        for _ in 0..2 {
            let reply = api.feed(&env.token(user, feed_core::auth::Tier::Internal), "limit=20").await?;
            anyhow::ensure!(reply.status == 200, "GET /api/feed answered {}: {}", reply.status, reply.text());
            items += reply.json().and_then(|j| j["items"].as_array().map(Vec::len)).unwrap_or(0);
            requests += 1;
        }
    }
    let after = pgss::snapshot(&env.admin).await?;
    let statements = pgss::delta(&before, &after);
    let posts = pgss::by_total_time(statements.clone()).into_iter().find(|s| s.query.to_lowercase().contains("posts"));
    let posts = match posts {
        Some(statement) => {
            let plan = explain(&env.admin, &statement.query, users[0], 20, true).await?;
            let json: serde_json::Value = serde_json::from_str(plan.first().map_or("null", String::as_str))?;
            let (nodes, _) = shape(&json);
            Some((statement, nodes))
        }
        None => None,
    };
    Ok(Measured { requests, items, statements, round_trip_ms: env.db_round_trip_ms, posts })
}

/// Grade `answers` against `measured`: the report, and whether every answer is right.
pub fn grade(target: Implementation, profile: Profile, answers: &Diagnosis, measured: &Measured) -> (String, bool) {
    let mut out = format!(
        "{} feed requests to {} (limit 20, {} items served), then pg_stat_statements and EXPLAIN:\n\n",
        measured.requests,
        target.name(),
        measured.items
    );
    let mut right = 0;
    let mut line = |ok: bool, question: &str, detail: String| {
        right += usize::from(ok);
        let _ = writeln!(out, "  {:<6} {question:<28} {detail}", if ok { "RIGHT" } else { "WRONG" });
    };

    // 1. Statements per request: counted by the database, over these requests only.
    let per_request = measured.per_request();
    let ok = (answers.statements_per_request - per_request).abs() <= (per_request * 0.1).max(0.5);
    line(
        ok,
        "statements per request",
        format!(
            "you said {}; measured {per_request:.1} ({} statements over {} requests){}",
            answers.statements_per_request,
            pgss::total_calls(&measured.statements),
            measured.requests,
            if ok { "" } else { ". Count them: the `calls` column of pg_stat_statements, before and after a burst" }
        ),
    );

    // 2. The statement that runs once per row.
    let per_row = measured.per_row();
    let tables: Vec<String> = per_row.iter().flat_map(|s| tables_of(&s.query)).collect();
    let answer = answers.per_row.trim().to_lowercase();
    let ok = if per_row.is_empty() { answer == "none" } else { tables.contains(&answer) };
    let evidence = match per_row.first() {
        Some(s) => format!(
            "`{}` ran {} times for {} items served ({:.2} per item): it reads {}",
            s.snippet(60),
            s.calls,
            measured.items,
            s.calls as f64 / measured.items.max(1) as f64,
            tables.first().map_or("no named table", String::as_str)
        ),
        None => "no statement ran more than once per request".to_owned(),
    };
    line(
        ok,
        "statement run once per row",
        format!(
            "you said {answer:?}; {evidence}{}",
            if ok { "" } else { ". Sort pg_stat_statements by calls and compare with the items served" }
        ),
    );

    // 3. Does the posts statement use an index? Read from its plan, not from the schema.
    match (&measured.posts, measured.posts_use_an_index()) {
        (Some((statement, nodes)), Some(uses)) => {
            let reads: Vec<String> = nodes
                .iter()
                .filter(|n| n.relation.as_deref() == Some("posts"))
                .map(|n| n.line().trim().to_owned())
                .collect();
            let sort = if nodes.iter().any(|n| n.node == "Sort") { ", then a Sort" } else { "" };
            let ok = answers.posts_index == uses;
            line(
                ok,
                "posts read through an index",
                format!(
                    "you said {}; the plan of `{}` reads posts by {}{sort}{}",
                    if answers.posts_index { "yes" } else { "no" },
                    statement.snippet(48),
                    reads.join(", "),
                    if ok { "" } else { ". Read it yourself: EXPLAIN (ANALYZE, BUFFERS) of that statement" }
                ),
            );
        }
        _ => line(false, "posts read through an index", "no statement of this target read `posts`".to_owned()),
    }

    // 4. Where the time goes: the largest share; a close second (within 25 %) counts as well.
    let mut split = measured.time_split();
    split.sort_by(|a, b| b.1.total_cmp(&a.1));
    let accepted: Vec<TimeIn> = split.iter().filter(|(_, ms)| *ms >= split[0].1 * 0.75).map(|(t, _)| *t).collect();
    let ok = accepted.contains(&answers.time_in);
    let breakdown =
        measured.time_split().iter().map(|(t, ms)| format!("{} {ms:.1} ms", t.name())).collect::<Vec<_>>().join(", ");
    line(
        ok,
        "where the time goes",
        format!(
            "you said {}; per request: {breakdown} (round trips = {per_request:.1} statements × {:.2} ms){}",
            answers.time_in.name(),
            measured.round_trip_ms,
            if ok {
                ""
            } else {
                ". Execution time is pg_stat_statements' total_exec_time; the wait is every statement's round trip"
            }
        ),
    );

    let all = right == 4;
    let _ = writeln!(out, "\n{right} of 4 answers match the measurement.");
    let explain = format!(
        "`cargo kata explain --stage {} --profile {}`",
        target.name().trim_start_matches("stage-"),
        profile.name()
    );
    if all && !per_row.is_empty() {
        // The N+1 as shipped, diagnosed: what stage-0 asks of the learner.
        let _ = writeln!(
            out,
            "Your diagnosis is the measured one. The walkthrough of this diagnosis is docs/walkthrough/stage-0.md;\n\
             the bar to fix it is docs/stage-1.md (`cargo kata verify stage-1 --target workbench`)."
        );
    } else if all {
        let _ = writeln!(out, "Your diagnosis is the measured one.");
    } else {
        let _ = writeln!(
            out,
            "Measure again before you change code: {explain} shows the statements by calls and their plans."
        );
    }
    (out, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_of_reads_every_name_after_from() {
        assert_eq!(tables_of("select id, name, avatar from users where id = $1"), ["users"]);
        assert_eq!(tables_of("SELECT * FROM \"public\".\"users\" WHERE id = $1"), ["users"]);
        assert_eq!(tables_of("select extract(epoch from created_at), id\nfrom\n  posts"), ["created_at", "posts"]);
        assert!(tables_of("select 1").is_empty());
    }

    fn statement(query: &str, calls: i64, total_ms: f64) -> Statement {
        Statement { query: query.into(), calls, total_ms }
    }

    #[test]
    fn a_statement_per_item_is_per_row_and_one_per_request_is_not() {
        let measured = Measured {
            requests: 10,
            items: 200,
            statements: vec![
                statement("select id, name, avatar from users where id = $1", 200, 10.0),
                statement("select id from posts where user_id = $1 limit $2", 10, 600.0),
            ],
            round_trip_ms: 2.0,
            posts: Some((statement("select id from posts where user_id = $1 limit $2", 10, 600.0), Vec::new())),
        };
        assert_eq!(measured.per_request(), 21.0);
        let per_row: Vec<&str> = measured.per_row().iter().map(|s| s.query.as_str()).collect();
        assert_eq!(per_row, ["select id, name, avatar from users where id = $1"]);
        // Round trips 21 × 2 ms = 42 ms; the posts query 60 ms; the per-row statements 1 ms.
        let split = measured.time_split();
        assert_eq!(split.map(|(_, ms)| ms), [42.0, 60.0, 1.0]);
    }
}
