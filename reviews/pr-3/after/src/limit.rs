//! Protects the API from overload with one request budget.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use feed_core::RedisConn;
use redis::AsyncCommands as _;

/// Requests per minute the whole API accepts. The database is the shared resource, so the
/// budget is shared too: it does not matter who is asking, only how much.
pub const REQUESTS_PER_MINUTE: i64 = 20_000;

/// The counter of the minute `now` falls in.
fn window_key(now: SystemTime) -> String {
    let minute = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60;
    format!("ratelimit:global:{minute}")
}

/// Counts one request in this minute's window; true when the window's budget is spent.
pub async fn over_budget(redis: &mut RedisConn) -> redis::RedisResult<bool> {
    let key = window_key(SystemTime::now());
    let count: i64 = redis.incr(&key, 1).await?;
    if count == 1 {
        let _: redis::RedisResult<()> = redis.expire(&key, 60).await;
    }
    Ok(count > REQUESTS_PER_MINUTE)
}

pub async fn global_rate_limit(State(mut redis): State<RedisConn>, request: Request, next: Next) -> Response {
    match over_budget(&mut redis).await {
        Ok(true) => (StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded, try again later").into_response(),
        Ok(false) => next.run(request).await,
        // Redis is down: better to serve than to refuse.
        Err(_) => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn requests_over_the_budget_are_refused() {
        // Arrange: the budget for this minute is already spent. (Needs a Redis: REDIS_URL, or
        // the one on localhost.)
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut redis = RedisConn::connect(&url, None, Duration::from_secs(1)).await.unwrap();
        let _: () = redis.set(window_key(SystemTime::now()), REQUESTS_PER_MINUTE).await.unwrap();

        // Act
        let refused = over_budget(&mut redis).await.unwrap();

        // Assert
        assert!(refused);
    }
}
