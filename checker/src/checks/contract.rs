//! Stage-0's bar: the API contract (docs/api.md) holds.

use feed_core::auth::{Claims, JwtKeys, Tier};
use reqwest::header::CONTENT_TYPE;

use super::{Run, describe, normalise};
use crate::registry::CheckId;
use crate::report::Check;

pub async fn feed_matches_oracle(run: &Run<'_>) -> anyhow::Result<Check> {
    let full = run.users.timelines(3)?;
    let users = full.iter().chain(&run.users.short[..2]).chain(&run.users.empty[..1]);
    let mut compared = 0;
    let mut mismatches = Vec::new();
    for &user in users {
        for (query, limit) in [("", 20), ("limit=5", 5), ("limit=100", 100)] {
            let reply = run.api.feed(&run.token(user), query).await?;
            let expected = run.oracle(user, limit).await?;
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
    Ok(Check::new(
        CheckId::FeedMatchesOracle,
        mismatches.is_empty(),
        format!("{equal}/{compared}"),
        format!("{compared}/{compared}"),
        format!("{equal} of {compared} feeds (full, short and empty timelines; limit 20, 5, 100) equal the SQL oracle"),
    )
    .evidence(mismatches.join("\n")))
}

pub async fn errors(run: &Run<'_>) -> anyhow::Result<Check> {
    let api = &run.api;
    let user = run.users.timeline()?;
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
        let reply = api.send(request).await?;
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
    Ok(Check::new(
        CheckId::ErrorsProblemJson,
        wrong.is_empty(),
        format!("{ok}/{total}"),
        format!("{total}/{total}"),
        format!("{ok} of {total} bad requests answered with the right status and a problem+json body"),
    )
    .evidence(wrong.join("\n")))
}

pub async fn post_read_back(run: &Run<'_>) -> anyhow::Result<Check> {
    let [author, owner] = run.users.some_timelines()?;
    let body = format!("checker was here {}", rand_suffix());
    let created = run
        .api
        .send(
            run.api
                .post("/api/posts")
                .bearer_auth(run.token(author))
                .json(&serde_json::json!({"user_id": owner, "body": body})),
        )
        .await?;
    let post = created.json().unwrap_or_default();
    let read = run.api.feed(&run.token(owner), "limit=1").await?;
    let first = read.json().and_then(|f| f["items"].get(0).cloned()).unwrap_or_default();
    let passed = created.status == 201
        && post["user_id"] == owner
        && post["author_id"] == author
        && post["body"] == body.as_str()
        && first["id"] == post["id"]
        && first["author"]["id"] == author;
    Ok(Check::new(
        CheckId::PostsReadBack,
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
    )))
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
