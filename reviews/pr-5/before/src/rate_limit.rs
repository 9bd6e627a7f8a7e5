//! A token bucket per user in Redis, as a layer on the `/api` routes.
//!
//! The bucket belongs to the user id of the verified token, never to an address or a header the
//! client controls: a script cannot get a new bucket by changing `X-Forwarded-For`, and people
//! behind one office NAT each keep their own.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use feed_core::RedisConn;
use feed_core::app::redis_call;
use feed_core::auth::{AuthUser, Tier};
use feed_core::contract::{self, Bucket};
use feed_core::error::Problem;

/// What to do when Redis cannot be asked (`RATE_LIMIT_ON_REDIS_ERROR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Admit the request (and count it): a Redis outage should not become a feed outage.
    Open,
    /// Answer 503: protect the database when requests cannot be counted.
    Closed,
}

impl OnRedisError {
    /// `RATE_LIMIT_ON_REDIS_ERROR`: `open` (the default) or `closed`.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("RATE_LIMIT_ON_REDIS_ERROR").as_deref() {
            Err(_) | Ok("open") => Ok(Self::Open),
            Ok("closed") => Ok(Self::Closed),
            Ok(other) => anyhow::bail!("RATE_LIMIT_ON_REDIS_ERROR must be `open` or `closed`, not {other:?}"),
        }
    }
}

/// The tier's bucket; `None`: not limited (internal callers: our own jobs and probes).
fn limit(tier: Tier) -> Option<Bucket> {
    match tier {
        Tier::Free => Some(contract::FREE),
        Tier::Pro => Some(contract::PRO),
        Tier::Internal => None,
    }
}

pub struct TokenBucket {
    redis: RedisConn,
    on_redis_error: OnRedisError,
    script: redis::Script,
}

/// The decision for one request.
struct Decision {
    admitted: bool,
    remaining: u64,
    /// Whole seconds (rounded up, at least 1) until the next token: the 429's `Retry-After` and
    /// the `t` of the `RateLimit` header.
    next_token_secs: u64,
    /// Whole seconds until the bucket is full again (in the 429's detail).
    full_in_secs: u64,
}

impl TokenBucket {
    pub fn new(redis: RedisConn, on_redis_error: OnRedisError) -> Self {
        Self { redis, on_redis_error, script: redis::Script::new(include_str!("bucket.lua")) }
    }

    /// One round trip: the bucket script refills, decides and writes in one atomic step, on
    /// Redis's clock (bucket.lua says why).
    async fn take(&self, user_id: i64, limit: Bucket) -> redis::RedisResult<Decision> {
        let mut redis = self.redis.clone();
        let mut invocation = self.script.key(format!("ratelimit:v1:user:{user_id}"));
        invocation.arg(limit.burst).arg(limit.per_sec());
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut redis);
        let (admitted, remaining, next_token_us, full_in_us) = redis_call(call).await?;
        Ok(Decision {
            admitted: admitted == 1,
            remaining: remaining.max(0) as u64,
            next_token_secs: (next_token_us.max(1) as u64).div_ceil(1_000_000).max(1),
            full_in_secs: (full_in_us.max(0) as u64).div_ceil(1_000_000),
        })
    }
}

/// The layer: charge the caller's bucket, then run the handler or answer 429.
pub async fn rate_limit(
    State(bucket): State<Arc<TokenBucket>>,
    user: AuthUser,
    request: Request,
    next: Next,
) -> Response {
    let Some(limit) = limit(user.tier) else {
        return next.run(request).await;
    };
    let tier = user.tier.as_str();
    let decision = match bucket.take(user.id, limit).await {
        Ok(decision) => decision,
        Err(error) => {
            tracing::warn!(%error, policy = ?bucket.on_redis_error, "rate limiter cannot reach redis");
            return match bucket.on_redis_error {
                OnRedisError::Open => {
                    metrics::counter!("ratelimit_decisions_total", "tier" => tier, "decision" => "failed_open")
                        .increment(1);
                    next.run(request).await
                }
                OnRedisError::Closed => {
                    metrics::counter!("ratelimit_decisions_total", "tier" => tier, "decision" => "failed_closed")
                        .increment(1);
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Rate limiter unavailable",
                        "requests cannot be counted right now; retry shortly",
                    )
                    .into_response()
                }
            };
        }
    };
    let outcome = if decision.admitted { "admitted" } else { "limited" };
    metrics::counter!("ratelimit_decisions_total", "tier" => tier, "decision" => outcome).increment(1);

    let mut response = if decision.admitted {
        next.run(request).await
    } else {
        let mut limited = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            format!(
                "the {tier} tier's bucket holds {} requests, refilled at {} a minute; retry in {} s (all {} back in {} s)",
                limit.burst, limit.per_min, decision.next_token_secs, limit.burst, decision.full_in_secs
            ),
        )
        .into_response();
        limited.headers_mut().insert("retry-after", HeaderValue::from(decision.next_token_secs));
        limited
    };
    rate_limit_headers(response.headers_mut(), tier, limit, &decision);
    response
}

/// `RateLimit-Policy` and `RateLimit` (docs/api.md): the policy, and where the caller stands in it.
fn rate_limit_headers(headers: &mut HeaderMap, tier: &str, limit: Bucket, decision: &Decision) {
    // The policy names the bucket: `burst` requests per the time it takes to refill it.
    let window = (u64::from(limit.burst) * 60).div_ceil(u64::from(limit.per_min));
    let policy = format!("\"{tier}\";q={};w={window}", limit.burst);
    let state = format!("\"{tier}\";r={};t={}", decision.remaining, decision.next_token_secs);
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}
