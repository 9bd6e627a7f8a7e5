//! Per-user token bucket: each tier gets a steady rate and a burst allowance.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use feed_core::RedisConn;
use feed_core::auth::{AuthUser, Tier};
use feed_core::error::Problem;
use redis::AsyncCommands as _;

#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub capacity: f64,
    pub per_second: f64,
}

impl Limit {
    /// `None`: the tier is not limited.
    pub fn for_tier(tier: Tier) -> Option<Self> {
        match tier {
            Tier::Free => Some(Self { capacity: 60.0, per_second: 1.0 }),
            Tier::Pro => Some(Self { capacity: 100.0, per_second: 10.0 }),
            Tier::Internal => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Exempt,
    Admitted { remaining: u64 },
    Limited { retry_after_secs: u64 },
}

#[derive(Clone)]
pub struct TokenBucket {
    redis: RedisConn,
}

impl TokenBucket {
    pub fn new(redis: RedisConn) -> Self {
        Self { redis }
    }

    /// Take one token from `user`'s bucket, first adding what refilled since the last request.
    /// Two plain Redis commands, no script: easy to read and to debug.
    pub async fn take(&self, user: AuthUser) -> redis::RedisResult<Decision> {
        let Some(limit) = Limit::for_tier(user.tier) else { return Ok(Decision::Exempt) };
        let key = format!("ratelimit:v1:user:{}", user.id);
        let mut redis = self.redis.clone();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();

        let (tokens, updated_at): (Option<f64>, Option<f64>) = redis.hmget(&key, &["tokens", "updated_at"]).await?;
        let elapsed = now - updated_at.unwrap_or(now);
        let tokens = (tokens.unwrap_or(limit.capacity) + elapsed * limit.per_second).min(limit.capacity);

        if tokens < 1.0 {
            let retry_after_secs = ((1.0 - tokens) / limit.per_second).ceil() as u64;
            return Ok(Decision::Limited { retry_after_secs });
        }
        let _: () = redis.hset_multiple(&key, &[("tokens", tokens - 1.0), ("updated_at", now)]).await?;
        Ok(Decision::Admitted { remaining: (tokens - 1.0).floor() as u64 })
    }
}

/// Layer on the `/api` routes (inside authentication, so `AuthUser` is known).
pub async fn rate_limit(State(bucket): State<TokenBucket>, user: AuthUser, request: Request, next: Next) -> Response {
    match bucket.take(user).await {
        Ok(Decision::Limited { retry_after_secs }) => {
            let detail = format!("rate limit for tier {} exceeded", user.tier.as_str());
            let mut response = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests", detail).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
        Ok(Decision::Exempt | Decision::Admitted { .. }) => next.run(request).await,
        Err(error) => {
            tracing::warn!(%error, "rate limiter unavailable; admitting the request");
            next.run(request).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A bucket on the Redis at REDIS_URL (or on localhost), with `user`'s state cleared.
    async fn bucket_for(user: AuthUser) -> TokenBucket {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut redis = RedisConn::connect(&url, None, Duration::from_secs(1)).await.unwrap();
        let _: () = redis.del(format!("ratelimit:v1:user:{}", user.id)).await.unwrap();
        TokenBucket::new(redis)
    }

    #[tokio::test]
    async fn a_free_user_gets_a_full_bucket_then_is_limited() {
        // Arrange
        let user = AuthUser { id: 7, tier: Tier::Free };
        let bucket = bucket_for(user).await;

        // Act
        let mut decisions = Vec::new();
        for _ in 0..61 {
            decisions.push(bucket.take(user).await.unwrap());
        }

        // Assert
        assert!(decisions[..60].iter().all(|d| matches!(d, Decision::Admitted { .. })), "{decisions:?}");
        assert_eq!(decisions[60], Decision::Limited { retry_after_secs: 1 });
    }

    #[tokio::test]
    async fn internal_users_are_never_limited() {
        let user = AuthUser { id: 99, tier: Tier::Internal };
        let bucket = bucket_for(user).await;

        for _ in 0..200 {
            assert_eq!(bucket.take(user).await.unwrap(), Decision::Exempt);
        }
    }
}
