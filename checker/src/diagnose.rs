//! `checker diagnose`: the learner states a diagnosis before fixing anything; the checker
//! measures the target then and there and grades each answer against that measurement only.
//!
//! Nothing is compared with a stored answer: the same answers can be right for one target or
//! data set and wrong for another (where the time goes depends on the data), and that is the
//! lesson. The answers are what the tools show (a count, a statement, a plan node, milliseconds),
//! not picks from a list. A wrong answer says where to look and what to compare, never the
//! measured value: the measurement is shown once every answer is right, or on `--reveal`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::explain::{PlanNode, explain, shape};
use crate::pgss::{self, Statement};
use crate::{Implementation, KataEnv};

/// The learner's answers: what they measured.
#[derive(Clone, Debug, clap::Args)]
pub struct Diagnosis {
    /// How many SQL statements one `GET /api/feed` (limit 20) makes the database run: a count.
    #[arg(long, value_name = "N")]
    pub statements_per_request: u32,
    /// The statement that runs more than once per request, as `pg_stat_statements` shows it (any
    /// spelling of the same statement: tables and filtered columns are compared), or `none`.
    #[arg(long, value_name = "SQL")]
    pub repeated: String,
    /// How many times that statement runs per request (0 for none).
    #[arg(long, value_name = "N")]
    pub repeated_calls: u32,
    /// The plan node that reads the table `posts`, in the plan of the statement that reads it,
    /// as `EXPLAIN` names it.
    #[arg(long, value_name = "NODE")]
    pub posts_node: String,
    /// Milliseconds of a request spent waiting for the database's answers (every statement's
    /// round trip).
    #[arg(long, value_name = "MS")]
    pub round_trip_ms: f64,
    /// Milliseconds of a request Postgres spends executing the statement that reads `posts`.
    #[arg(long, value_name = "MS")]
    pub posts_ms: f64,
    /// Milliseconds of a request Postgres spends executing the repeated statement, all its calls
    /// (0 for none).
    #[arg(long, value_name = "MS")]
    pub repeated_ms: f64,
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

    /// The statement that ran more than once per request (the most calls), if one did.
    pub fn repeated(&self) -> Option<&Statement> {
        self.statements.iter().filter(|s| s.calls as usize > self.requests).max_by_key(|s| s.calls)
    }

    pub fn repeated_calls(&self) -> f64 {
        self.repeated().map_or(0.0, |s| s.calls as f64 / self.requests as f64)
    }

    /// The node that reads `posts`, as EXPLAIN names it ("Seq Scan", "Index Scan", …).
    pub fn posts_node(&self) -> Option<&str> {
        let (_, nodes) = self.posts.as_ref()?;
        nodes.iter().find(|n| n.relation.as_deref() == Some("posts")).map(|n| n.node.as_str())
    }

    /// Milliseconds per request: waiting for round trips, executing the posts statement,
    /// executing the repeated statement.
    pub fn times(&self) -> [f64; 3] {
        let per_request = |ms: f64| ms / self.requests as f64;
        [
            self.per_request() * self.round_trip_ms,
            self.posts.as_ref().map_or(0.0, |(s, _)| per_request(s.total_ms)),
            self.repeated().map_or(0.0, |s| per_request(s.total_ms)),
        ]
    }
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

/// What a statement reads and filters on: its tables, and the columns its `where` compares.
/// Two spellings of one statement (`select *` or a column list, `$1` or `42`, an alias or none,
/// upper or lower case) have the same shape.
pub fn shape_of(sql: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let lower = sql.to_lowercase().replace(['"', '`'], "").replace(';', " ");
    let spaced: String = lower.chars().map(|c| if "(),=<>!".contains(c) { ' ' } else { c }).collect();
    let words: Vec<&str> = spaced.split_whitespace().collect();
    let name = |word: &str| word.rsplit('.').next().unwrap_or(word).to_owned();
    let tables = words
        .windows(2)
        .filter(|pair| pair[0] == "from" || pair[0] == "join")
        .map(|pair| name(pair[1]))
        .filter(|t| t.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .collect();
    let filtered = match lower.split_once(" where ") {
        Some((_, condition)) => {
            let condition = condition.split([' ']).collect::<Vec<_>>().join(" ");
            let cut = ["order by", "limit", "group by"]
                .iter()
                .filter_map(|k| condition.find(k))
                .min()
                .unwrap_or(condition.len());
            condition[..cut]
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '$'))
                .filter(|w| !w.is_empty() && !w.starts_with('$') && !w.chars().all(|c| c.is_ascii_digit()))
                .filter(|w| !["and", "or", "not", "in", "any", "is", "null", "true", "false"].contains(w))
                .map(name)
                .collect()
        }
        None => BTreeSet::new(),
    };
    (tables, filtered)
}

/// Whether two plan nodes are the same: a text EXPLAIN says "Parallel Seq Scan" where the JSON
/// plan says "Seq Scan" (with the workers beside it), and case does not matter.
pub fn same_node(a: &str, b: &str) -> bool {
    let bare = |name: &str| {
        let name = name.trim().to_lowercase();
        name.strip_prefix("parallel ").map_or(name.clone(), str::to_owned)
    };
    bare(a) == bare(b)
}

/// Whether `ms` is within the stated tolerance of `measured`: 25 %, or half a millisecond.
fn close(ms: f64, measured: f64) -> bool {
    (ms - measured).abs() <= (measured * 0.25).max(0.5)
}

/// One answer, graded: right or not, the question, what was said, where to look when wrong.
struct Grade {
    ok: bool,
    question: &'static str,
    said: String,
    look: &'static str,
}

/// Each of the seven answers against the measurement.
fn grades(answers: &Diagnosis, measured: &Measured) -> Vec<Grade> {
    let grade = |ok: bool, question: &'static str, said: String, look: &'static str| Grade { ok, question, said, look };
    // Counts are exact: a count within a few of the truth is still not the count.
    let per_request = measured.per_request();
    let said = f64::from(answers.statements_per_request);
    let repeated = answers.repeated.trim();
    let repeated_ok = match measured.repeated() {
        None => repeated.eq_ignore_ascii_case("none"),
        Some(statement) => !repeated.eq_ignore_ascii_case("none") && shape_of(repeated) == shape_of(&statement.query),
    };
    let node = answers.posts_node.trim();
    let node_ok = measured.posts_node().is_some_and(|n| same_node(n, node));
    let [round_trips, posts, repeated_ms] = measured.times();
    vec![
        grade(
            said == per_request,
            "statements per request",
            answers.statements_per_request.to_string(),
            // Never how close the count is: a few tries would find it without measuring.
            "reset pg_stat_statements, send a known number of requests, sum `calls` over every statement and divide",
        ),
        grade(
            repeated_ok,
            "the statement that repeats",
            format!("{repeated:?}"),
            "sort pg_stat_statements by `calls`: compare each statement's calls with the requests you sent",
        ),
        grade(
            f64::from(answers.repeated_calls) == measured.repeated_calls(),
            "its calls per request",
            answers.repeated_calls.to_string(),
            "that statement's `calls` divided by the requests you sent (0 if nothing runs more than once)",
        ),
        grade(
            node_ok,
            "the node that reads posts",
            format!("{node:?}"),
            "EXPLAIN (ANALYZE, BUFFERS) the statement that reads posts, with a real user id: the node that names posts",
        ),
        grade(
            close(answers.round_trip_ms, round_trips),
            "ms waiting for round trips",
            format!("{} ms", answers.round_trip_ms),
            "statements per request × one round trip (`db_round_trip_ms` in the header of `cargo kata verify`); \
             within 25 % or 0.5 ms",
        ),
        grade(
            close(answers.posts_ms, posts),
            "ms executing the posts statement",
            format!("{} ms", answers.posts_ms),
            "`total_exec_time` of that statement in pg_stat_statements, divided by the requests; within 25 % or 0.5 ms",
        ),
        grade(
            close(answers.repeated_ms, repeated_ms),
            "ms executing the repeated one",
            format!("{} ms", answers.repeated_ms),
            "`total_exec_time` of the repeated statement, divided by the requests; within 25 % or 0.5 ms",
        ),
    ]
}

/// Grade `answers` against `measured`: the report, and whether every answer is right. With
/// `reveal`, or when every answer is right, the measurement follows the grades.
pub fn grade(target: Implementation, answers: &Diagnosis, measured: &Measured, reveal: bool) -> (String, bool) {
    let mut out = format!(
        "{} feed requests to {} (limit 20), then pg_stat_statements and EXPLAIN; each answer graded against \
         that measurement:\n\n",
        measured.requests,
        target.name()
    );
    let grades = grades(answers, measured);
    for g in &grades {
        let _ = writeln!(out, "  {:<6} {:<32} you said {}", if g.ok { "RIGHT" } else { "WRONG" }, g.question, g.said);
        if !g.ok {
            let _ = writeln!(out, "         {:<32} {}", "", g.look);
        }
    }
    let right = grades.iter().filter(|g| g.ok).count();
    let all = right == grades.len();
    let _ = writeln!(out, "\n{right} of {} answers match the measurement.", grades.len());
    if all || reveal {
        out.push_str(&measurement(measured));
    }
    if all && measured.repeated().is_some() {
        let _ = writeln!(
            out,
            "\nYour diagnosis is the measured one. What it found, and how the figures come about: \
             docs/walkthrough/stage-0.md; the bar to fix it: docs/stage-1.md \
             (`cargo kata verify stage-1 --target workbench`)."
        );
    } else if all {
        let _ = writeln!(out, "\nYour diagnosis is the measured one.");
    } else {
        let _ = writeln!(
            out,
            "Measure again before you change code (docs/tools.md shows how to read each tool); the measurement is \
             shown once every answer is right{}.",
            if reveal { "" } else { ", or with --reveal" }
        );
    }
    (out, all)
}

/// What was measured, said once the diagnosis is right (or asked for).
fn measurement(measured: &Measured) -> String {
    let mut out = format!(
        "\nmeasured: {:.0} statements per request over {} requests ({} items served)\n{}",
        measured.per_request(),
        measured.requests,
        measured.items,
        pgss::table(&measured.statements, 4)
    );
    if let Some((statement, nodes)) = &measured.posts {
        let reads: Vec<String> = nodes.iter().map(|n| n.line().trim().to_owned()).collect();
        let _ = writeln!(out, "plan of `{}`: {}", statement.snippet(60), reads.join(" → "));
    }
    let [round_trips, posts, repeated] = measured.times();
    let _ = writeln!(
        out,
        "per request: {round_trips:.1} ms waiting for round trips ({:.0} × {:.2} ms), {posts:.1} ms executing the posts \
         statement, {repeated:.1} ms executing the repeated one",
        measured.per_request(),
        measured.round_trip_ms
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_statement_have_one_shape() {
        let stored = "select id, name, avatar from users where id = $1";
        for spelling in [
            "SELECT * FROM users WHERE id = 42",
            "select name from \"public\".\"users\" u where u.id=$1;",
            "select id, name, avatar from users where id = $1",
        ] {
            assert_eq!(shape_of(spelling), shape_of(stored), "{spelling}");
        }
        assert_ne!(shape_of("select * from posts where user_id = $1"), shape_of(stored));
        assert_ne!(shape_of("select * from users where name = $1"), shape_of(stored));
        let join = "select p.id from posts p left join users u on p.author_id = u.id where p.user_id = $1 order by p.created_at desc limit $2";
        assert_eq!(shape_of(join).0, ["posts", "users"].map(String::from).into());
        assert_eq!(shape_of(join).1, ["user_id"].map(String::from).into());
    }

    fn statement(query: &str, calls: i64, total_ms: f64) -> Statement {
        Statement { query: query.into(), calls, total_ms }
    }

    fn measured() -> Measured {
        let posts = "select id from posts where user_id = $1 limit $2";
        Measured {
            requests: 10,
            items: 200,
            statements: vec![
                statement("select id, name, avatar from users where id = $1", 200, 10.0),
                statement(posts, 10, 600.0),
            ],
            round_trip_ms: 2.0,
            posts: Some((statement(posts, 10, 600.0), Vec::new())),
        }
    }

    #[test]
    fn the_repeated_statement_and_the_time_split_are_read_from_the_measurement() {
        let measured = measured();
        assert_eq!(measured.per_request(), 21.0);
        assert_eq!(measured.repeated().map(|s| s.calls), Some(200));
        assert_eq!(measured.repeated_calls(), 20.0);
        // Round trips 21 × 2 ms = 42 ms; the posts query 60 ms; the repeated statement 1 ms.
        assert_eq!(measured.times(), [42.0, 60.0, 1.0]);
    }

    #[test]
    fn a_count_off_by_one_is_wrong_and_the_message_holds_no_measured_value() {
        let answers = Diagnosis {
            statements_per_request: 20,
            repeated: "select * from users where id = 7".into(),
            repeated_calls: 20,
            posts_node: "Seq Scan".into(),
            round_trip_ms: 42.0,
            posts_ms: 60.0,
            repeated_ms: 1.0,
        };
        let (report, all) = grade(Implementation::Stage0, &answers, &measured(), false);
        assert!(!all);
        assert_eq!(report.matches("WRONG").count(), 2, "{report}");
        assert!(!report.contains("21"), "the measured count leaked:\n{report}");
        assert!(!report.contains("walkthrough"), "{report}");
    }

    #[test]
    fn the_posts_node_is_right_as_a_text_or_a_json_plan_names_it() {
        let mut measured = measured();
        let node = |name: &str| crate::explain::PlanNode {
            depth: 1,
            node: name.into(),
            index: None,
            relation: Some("posts".into()),
            condition: None,
        };
        let answers = |posts_node: &str| Diagnosis {
            statements_per_request: 21,
            repeated: "select * from users where id = 7".into(),
            repeated_calls: 20,
            posts_node: posts_node.into(),
            round_trip_ms: 42.0,
            posts_ms: 60.0,
            repeated_ms: 1.0,
        };
        for measured_node in ["Seq Scan", "Parallel Seq Scan"] {
            measured.posts.as_mut().unwrap().1 = vec![node(measured_node)];
            for said in ["Seq Scan", "parallel seq scan", "Parallel Seq Scan"] {
                assert!(grade(Implementation::Stage0, &answers(said), &measured, false).1, "{measured_node} / {said}");
            }
            assert!(!grade(Implementation::Stage0, &answers("Index Scan"), &measured, false).1);
        }
    }
}
