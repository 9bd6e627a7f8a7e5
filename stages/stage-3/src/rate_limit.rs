//! Per-user token buckets in Redis, applied as a layer on the `/api` routes.
//!
//! The bucket belongs to the authenticated user id from the verified token, never to an IP
//! address or a header the client controls: colleagues behind one office NAT each get their own
//! bucket, and a script cannot dodge its bucket by changing `X-Forwarded-For`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use feed_core::RedisConn;
use feed_core::auth::{AuthUser, Tier};
use feed_core::contract;
use feed_core::error::Problem;

/// Rate-limit settings (flags and environment variables of the stage-3 binary).
/// docs/walkthrough/stage-3.md explains the numbers.
#[derive(clap::Args, Debug, Clone)]
pub struct RateLimitConfig {
    /// free tier: sustained requests per minute (refill rate).
    #[arg(long, env = "RATE_FREE_PER_MIN", default_value_t = contract::FREE.per_min, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_free_per_min: u32,
    /// free tier: bucket size, the burst allowed after a quiet minute.
    #[arg(long, env = "RATE_FREE_BURST", default_value_t = contract::FREE.burst, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_free_burst: u32,
    /// pro tier: sustained requests per minute.
    #[arg(long, env = "RATE_PRO_PER_MIN", default_value_t = contract::PRO.per_min, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_pro_per_min: u32,
    /// pro tier: bucket size.
    #[arg(long, env = "RATE_PRO_BURST", default_value_t = contract::PRO.burst, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_pro_burst: u32,
    /// What to do when Redis cannot be asked: `open` admits (and counts) the request, `closed`
    /// answers 503.
    #[arg(long, env = "RATE_LIMIT_ON_REDIS_ERROR", value_enum, default_value_t = OnRedisError::Open)]
    pub on_redis_error: OnRedisError,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            rate_free_per_min: contract::FREE.per_min,
            rate_free_burst: contract::FREE.burst,
            rate_pro_per_min: contract::PRO.per_min,
            rate_pro_burst: contract::PRO.burst,
            on_redis_error: OnRedisError::Open,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnRedisError {
    /// Keep the feed up: a Redis outage should not become a feed outage.
    Open,
    /// Protect the database: refuse requests that cannot be counted.
    Closed,
}

/// One tier's bucket: `burst` tokens, refilled at `per_min` a minute.
#[derive(Debug, Clone, Copy)]
struct Limit {
    per_min: u32,
    burst: u32,
}

pub struct TokenBucket {
    redis: RedisConn,
    config: RateLimitConfig,
    script: redis::Script,
}

/// The decision for one request.
struct Decision {
    admitted: bool,
    remaining: u64,
    /// Whole seconds (rounded up, at least 1) until one more token is in the bucket: the
    /// `Retry-After` of a 429 and the `t` of every `RateLimit` header, so a client that obeys
    /// either waits the same time.
    next_token_secs: u64,
    /// Whole seconds until the whole burst is back (said in the 429's detail, for people).
    full_in_secs: u64,
}

impl TokenBucket {
    pub fn new(redis: RedisConn, config: RateLimitConfig) -> Self {
        Self { redis, config, script: redis::Script::new(include_str!("bucket.lua")) }
    }

    /// The tier's limit; `None` = exempt (internal callers: health checkers, batch jobs we run).
    fn limit(&self, tier: Tier) -> Option<Limit> {
        match tier {
            Tier::Free => Some(Limit { per_min: self.config.rate_free_per_min, burst: self.config.rate_free_burst }),
            Tier::Pro => Some(Limit { per_min: self.config.rate_pro_per_min, burst: self.config.rate_pro_burst }),
            Tier::Internal => None,
        }
    }

    /// One round trip: EVALSHA of the bucket script (EVAL the first time Redis has not seen it).
    async fn take(&self, user_id: i64, limit: Limit) -> redis::RedisResult<Decision> {
        let mut redis = self.redis.clone();
        let mut invocation = self.script.key(format!("ratelimit:v1:user:{user_id}"));
        invocation.arg(limit.burst).arg(f64::from(limit.per_min) / 60.0);
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut redis);
        let (admitted, remaining, next_token_us, full_in_us) = feed_core::app::redis_call(call).await?;
        Ok(Decision {
            admitted: admitted == 1,
            remaining: remaining.max(0) as u64,
            // Whole seconds, rounded up, at least 1: a client that waits this long gets a token.
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
    let Some(limit) = bucket.limit(user.tier) else {
        return next.run(request).await;
    };
    let tier = user.tier.as_str();
    let decision = match bucket.take(user.id, limit).await {
        Ok(decision) => decision,
        Err(error) => {
            tracing::warn!(%error, policy = ?bucket.config.on_redis_error, "rate limiter cannot reach redis");
            return match bucket.config.on_redis_error {
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

/// The IETF httpapi headers (draft-ietf-httpapi-ratelimit-headers-11, docs/api.md): the policy,
/// and where the caller stands in it, so well-behaved clients slow down before they hit the wall.
fn rate_limit_headers(headers: &mut HeaderMap, tier: &str, limit: Limit, decision: &Decision) {
    // The header has no word for "burst", so the policy names the bucket: `burst` requests per
    // the time it takes to refill it (free: 60 per 60 s; pro: 100 per 10 s, i.e. 600 a minute).
    let window = (u64::from(limit.burst) * 60).div_ceil(u64::from(limit.per_min));
    let policy = format!("\"{tier}\";q={};w={window}", limit.burst);
    // `t` is the draft's effective window: the seconds within which the caller can spend no more
    // than `r`, i.e. until the next token. On a 429 it is the Retry-After, to the second.
    let state = format!("\"{tier}\";r={};t={}", decision.remaining, decision.next_token_secs);
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}
