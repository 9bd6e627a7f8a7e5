//! Stage-0's bar, part one: the API contract (docs/api.md) holds.

use feed_core::auth::{Claims, JwtKeys, Tier};
use reqwest::header::CONTENT_TYPE;

use std::time::{Duration, Instant};

use serde_json::json;

use super::{Run, describe, normalise};
use crate::report::{Check, Expectation, Report};

pub async fn run(run: &mut Run<'_>, report: &mut Report) {
    for check in [feed_matches_oracle(run).await, errors(run).await, post_read_back(run).await] {
        report.push(check.unwrap_or_else(|(name, e)| Check::errored(name, &e)));
    }
}

type Checked = Result<Check, (&'static str, anyhow::Error)>;

async fn feed_matches_oracle(run: &Run<'_>) -> Checked {
    const NAME: &str = "feed.matches_oracle";
    let fail = |e| (NAME, e);
    let users = run.users.full(0, 3).iter().chain(&run.users.short[..2]).chain(&run.users.empty[..1]);
    let mut compared = 0;
    let mut mismatches = Vec::new();
    for &user in users {
        for (query, limit) in [("", 20), ("limit=5", 5), ("limit=100", 100)] {
            let reply = run.api.feed(&run.token(user), query).await.map_err(fail)?;
            let expected = run.oracle(user, limit).await.map_err(fail)?;
            compared += 1;
            let got = reply.json().map(normalise);
            if reply.status != 200 || got.as_ref() != Some(&normalise(expected.clone())) {
                mismatches.push(format!(
                    "user {user}, GET /api/feed?{query}: expected 200 with {}, got {} with {}",
                    describe(&expected),
                    reply.status,
                    got.as_ref().map_or_else(|| super::excerpt(&reply.text(), 120), describe)
                ));
            }
        }
    }
    let equal = compared - mismatches.len();
    let check = Check::new(
        NAME,
        mismatches.is_empty(),
        format!("{equal}/{compared}"),
        format!("{compared}/{compared}"),
        format!("{equal} of {compared} feeds (full, short and empty timelines; limit 20, 5, 100) equal the SQL oracle"),
    )
    .on_failure("docs/api.md#get-apifeed");
    Ok(if mismatches.is_empty() { check } else { check.evidence(mismatches.join("\n")) })
}

async fn errors(run: &Run<'_>) -> Checked {
    const NAME: &str = "errors.problem_json";
    let fail = |e| (NAME, e);
    let api = &run.api;
    let user = run.users.full(3, 1)[0];
    let good = run.token(user);
    let expired = run.env.keys.sign(&Claims { sub: user.to_string(), tier: Tier::Free, iat: 1, exp: 2 });
    let foreign = JwtKeys::new("not-the-service-secret").mint(user, Tier::Free, std::time::Duration::from_secs(60));
    let json = |body: &'static str| {
        api.post("/api/posts").bearer_auth(&good).header(CONTENT_TYPE, "application/json").body(body)
    };
    let cases: Vec<(&str, u16, reqwest::RequestBuilder)> = vec![
        ("GET /api/feed without a token", 401, api.get("/api/feed")),
        ("GET /api/feed with a malformed token", 401, api.get("/api/feed").bearer_auth("not-a-jwt")),
        ("GET /api/feed with an expired token", 401, api.get("/api/feed").bearer_auth(&expired)),
        ("GET /api/feed with a token signed by another key", 401, api.get("/api/feed").bearer_auth(&foreign)),
        ("GET /api/feed?limit=0", 400, api.get("/api/feed?limit=0").bearer_auth(&good)),
        ("GET /api/feed?limit=101", 400, api.get("/api/feed?limit=101").bearer_auth(&good)),
        ("GET /api/feed?limit=abc", 400, api.get("/api/feed?limit=abc").bearer_auth(&good)),
        ("GET /api/nothing-here", 404, api.get("/api/nothing-here").bearer_auth(&good)),
        ("DELETE /api/feed", 405, api.delete("/api/feed").bearer_auth(&good)),
        ("POST /api/posts with malformed JSON", 400, json("{\"user_id\": 1,")),
        ("POST /api/posts with user_id as text", 422, json("{\"user_id\": \"one\", \"body\": \"hi\"}")),
        ("POST /api/posts with a blank body", 422, json("{\"user_id\": 1, \"body\": \"   \"}")),
        ("POST /api/posts with a NUL character in the body", 422, json("{\"user_id\": 1, \"body\": \"a\\u0000b\"}")),
        ("POST /api/posts to a user that does not exist", 422, json("{\"user_id\": 987654321, \"body\": \"hi\"}")),
        ("POST /api/posts without a JSON content type", 415, api.post("/api/posts").bearer_auth(&good).body("{}")),
    ];
    let total = cases.len();
    let mut wrong = Vec::new();
    for (what, status, request) in cases {
        let reply = api.send(request).await.map_err(fail)?;
        if reply.status != status || !reply.is_problem_json() {
            wrong.push(format!(
                "{what}: expected {status} application/problem+json, got {} {} {}",
                reply.status,
                reply.header("content-type").unwrap_or("(no content-type)"),
                super::excerpt(&reply.text(), 100)
            ));
        }
    }
    let ok = total - wrong.len();
    let check = Check::new(
        NAME,
        wrong.is_empty(),
        format!("{ok}/{total}"),
        format!("{total}/{total}"),
        format!("{ok} of {total} bad requests answered with the right status and a problem+json body"),
    )
    .on_failure("docs/api.md#errors");
    Ok(if wrong.is_empty() { check } else { check.evidence(wrong.join("\n")) })
}

async fn post_read_back(run: &Run<'_>) -> Checked {
    const NAME: &str = "posts.read_back";
    let fail = |e| (NAME, e);
    let [author, owner] = [run.users.full(4, 1)[0], run.users.full(5, 1)[0]];
    let body = format!("checker was here {}", rand_suffix());
    let created = run
        .api
        .send(
            run.api
                .post("/api/posts")
                .bearer_auth(run.token(author))
                .json(&serde_json::json!({"user_id": owner, "body": body})),
        )
        .await
        .map_err(fail)?;
    let post = created.json().unwrap_or_default();
    let read = run.api.feed(&run.token(owner), "limit=1").await.map_err(fail)?;
    let first = read.json().and_then(|f| f["items"].get(0).cloned()).unwrap_or_default();
    let passed = created.status == 201
        && post["user_id"] == owner
        && post["author_id"] == author
        && post["body"] == body.as_str()
        && first["id"] == post["id"]
        && first["author"]["id"] == author;
    Ok(Check::new(
        NAME,
        passed,
        format!("POST {} then feed's first item id {}", created.status, first["id"]),
        format!("POST 201 then feed's first item id {}", post["id"]),
        "a post written by one user to another's timeline is first in that timeline's feed",
    )
    .evidence(format!(
        "POST /api/posts → {} {}\nGET /api/feed?limit=1 as the owner → {} {}",
        created.status,
        created.text(),
        read.status,
        read.text()
    ))
    .on_failure("docs/api.md#post-apiposts"))
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// How long a request may take while the database is down, and how long the service may take
/// to serve again once it is back: the core's request deadline (twice the 5 s acquire timeout).
const RECOVERY: Duration = Duration::from_secs(10);

/// Stop Postgres: what needs the database answers 503 problem+json, never a hang or a 500, and
/// `/ready` says so; start it again: the service answers 200 without being restarted.
pub async fn postgres_down(run: &mut Run<'_>, report: &mut Report) {
    const NAME: &str = "postgres_down";
    if run.launch.is_none() {
        report.push(Check::not_proven(
            NAME,
            "the checker did not start this service, so it will not stop the database under it",
        ));
        return;
    }
    if run.env.services.owned_postgres().is_none() {
        report.push(Check::not_proven(
            NAME,
            "DATABASE_URL points at a PostgreSQL the checker did not start; it will not stop yours (unset DATABASE_URL)",
        ));
        return;
    }
    let result: anyhow::Result<Check> = async {
        // Timelines nobody read yet: a cache cannot answer them, the database must.
        let [cold, other, author] = [run.users.full(112, 1)[0], run.users.full(113, 1)[0], run.users.full(114, 1)[0]];
        run.env.flush_redis().await?;
        run.env.services.owned_postgres().expect("checked above").stop();
        let started = Instant::now();
        let body = serde_json::json!({ "user_id": other, "body": "while the database is down" });
        let cold_token = run.token(cold);
        let (feed, posted, ready) = futures::join!(
            run.api.feed(&cold_token, ""),
            run.api.send(run.api.post("/api/posts").bearer_auth(run.token(author)).json(&body)),
            run.api.send(run.api.get("/ready")),
        );
        let down_ms = started.elapsed().as_secs_f64() * 1000.0;
        // No answer at all (the client gave up after 15 s) is a hang: a failure, not an error.
        let hung = |r: anyhow::Result<crate::client::Reply>| {
            r.unwrap_or_else(|e| crate::client::Reply::nothing(&format!("no answer: {e:#}")))
        };
        let (feed, posted, ready) = (hung(feed), hung(posted), hung(ready));
        run.env.services.owned_postgres().expect("checked above").restart().await?;
        // Pooled connections died with the server; the pool must replace them by itself, within
        // the time a request may take. Writes read no cache, so each attempt needs the database.
        // Behind a balancer the POST and the feed may reach different instances, each with a pool
        // of its own to repair: both must have answered once.
        let recovery = Instant::now();
        let mut attempts = 0;
        let (mut wrote, mut read) = (false, false);
        let resumed = loop {
            attempts += 1;
            if !wrote {
                let body = serde_json::json!({ "user_id": other, "body": "the database is back" });
                let reply = run.api.send(run.api.post("/api/posts").bearer_auth(run.token(author)).json(&body)).await;
                wrote = reply.is_ok_and(|r| r.status == 201);
            }
            if wrote && !read {
                read = run.api.feed(&cold_token, "").await.is_ok_and(|r| r.status == 200);
            }
            if wrote && read {
                break true;
            }
            if recovery.elapsed() > RECOVERY {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let unavailable = |r: &crate::client::Reply| r.status == 503 && r.is_problem_json();
        let prompt = Expectation::AtMost(RECOVERY.as_millis() as f64);
        let passed = unavailable(&feed) && unavailable(&posted) && ready.status == 503 && prompt.holds(down_ms) && resumed;
        Ok(Check::new(
            NAME,
            passed,
            json!({ "feed": feed.status, "post": posted.status, "ready": ready.status, "answered_within_ms": down_ms.round(), "recovered": resumed }),
            json!({ "feed": 503, "post": 503, "ready": 503, "answered_within_ms": prompt, "recovered": true }),
            format!(
                "Postgres stopped: cold feed {}, POST {}, /ready {} (all answered within {down_ms:.0} ms); Postgres back: {}",
                feed.status,
                posted.status,
                ready.status,
                if resumed {
                    format!("POST 201 and feed 200 again after {attempts} attempt(s)")
                } else if wrote {
                    format!("POST 201, but no feed 200 for {} s", RECOVERY.as_secs())
                } else {
                    format!("no 201 for {} s", RECOVERY.as_secs())
                }
            ),
        )
        .evidence(format!(
            "feed → {} {}\nPOST → {} {}\n/ready → {} {}",
            feed.status,
            super::excerpt(&feed.text(), 200),
            posted.status,
            super::excerpt(&posted.text(), 200),
            ready.status,
            super::excerpt(&ready.text(), 200)
        ))
        .on_failure("docs/api.md#errors"))
    }
    .await;
    if let Some(postgres) = run.env.services.owned_postgres()
        && !postgres.is_running()
    {
        let _ = postgres.restart().await;
    }
    report.push(result.unwrap_or_else(|e| Check::errored(NAME, &e)));
}
