//! Stage-3 as a learner writes it: a token bucket per caller in front of stage-2's cached feed,
//! with one mistake.
//!
//! Without a mistake this is the reference limiter in a learner's own words: stage-3's Lua
//! bucket (`stages/stage-3/src/bucket.lua`, one atomic step in Redis) keyed by the verified user
//! id, free 60 + 1/s and pro 100 + 10/s, 429 with `Retry-After`, the `RateLimit` headers, and
//! a Redis error admits the request (or 503 with `RATE_LIMIT_ON_REDIS_ERROR=closed`). Each
//! `Mistake` changes one step, where it is matched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use feed_core::ApiError;
use feed_core::RedisConn;
use feed_core::app::redis_call;
use feed_core::auth::{AuthUser, JwtKeys, Tier};
use feed_core::error::Problem;
use stage_3::{OnRedisError, RateLimitConfig};

use crate::Mistake;

pub struct LearnerLimiter {
    redis: RedisConn,
    config: RateLimitConfig,
    mistake: Mistake,
    bucket: redis::Script,
    /// bucket-in-memory: every bucket, in this process only.
    memory: Mutex<HashMap<String, Bucket>>,
    /// limit-health-too: the layer runs before authentication, so it reads the token itself.
    keys: JwtKeys,
}

/// One tier's bucket: `burst` tokens, refilled at `per_min` a minute.
#[derive(Debug, Clone, Copy)]
struct Limit {
    burst: u32,
    per_min: u32,
}

impl Limit {
    fn per_sec(self) -> f64 {
        f64::from(self.per_min) / 60.0
    }
}

struct Decision {
    admitted: bool,
    remaining: u64,
    /// Whole seconds until one more token (at least 1): the 429's `Retry-After`, and `t`.
    retry_after_secs: u64,
    /// Whole seconds until the bucket is full again (`t` only with `t-until-full`).
    full_in_secs: u64,
}

/// A bucket kept outside Redis's script: in process memory, or in a hash read and written back.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: f64,
}

impl Bucket {
    /// Refill for the time since the last request, then take a token if there is one.
    fn take(state: Option<Bucket>, limit: Limit, now: f64) -> (Bucket, Decision) {
        let capacity = f64::from(limit.burst);
        let Bucket { tokens, at } = state.unwrap_or(Bucket { tokens: capacity, at: now });
        let tokens = (tokens + (now - at).max(0.0) * limit.per_sec()).min(capacity);
        let admitted = tokens >= 1.0;
        let left = if admitted { tokens - 1.0 } else { tokens };
        let decision = Decision {
            admitted,
            remaining: left.floor() as u64,
            retry_after_secs: ((left.floor() + 1.0 - left) / limit.per_sec()).ceil().max(1.0) as u64,
            full_in_secs: ((capacity - left) / limit.per_sec()).ceil() as u64,
        };
        (Bucket { tokens: left, at: now }, decision)
    }
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

impl LearnerLimiter {
    pub fn new(redis: RedisConn, config: RateLimitConfig, jwt_secret: &str, mistake: Mistake) -> Self {
        Self {
            redis,
            config,
            mistake,
            bucket: redis::Script::new(include_str!("../../stages/stage-3/src/bucket.lua")),
            memory: Mutex::default(),
            keys: JwtKeys::new(jwt_secret),
        }
    }

    fn limit(&self, tier: Tier) -> Option<Limit> {
        match tier {
            Tier::Free => Some(Limit { burst: self.config.rate_free_burst, per_min: self.config.rate_free_per_min }),
            Tier::Pro => Some(Limit { burst: self.config.rate_pro_burst, per_min: self.config.rate_pro_per_min }),
            Tier::Internal => None,
        }
    }

    /// Whose bucket pays for `request`, and in which tier (`None`: no caller to charge).
    fn payer(&self, request: &Request) -> Option<(String, Tier)> {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
        let peer = peer.unwrap_or_else(|| "unknown".to_owned());
        let user = match self.mistake {
            // limit-health-too: outside authentication, so the token is read here, and a request
            // without one (a probe, a scrape) pays from its address's bucket, at the free tier.
            Mistake::LimitHealthToo => {
                let token = request.headers().get(AUTHORIZATION).and_then(|h| h.to_str().ok());
                let user = token.and_then(|t| t.strip_prefix("Bearer ")).and_then(|t| self.keys.verify(t).ok());
                let Some(user) = user else { return Some((format!("ratelimit:v1:ip:{peer}"), Tier::Free)) };
                user
            }
            _ => *request.extensions().get::<AuthUser>()?,
        };
        let key = match self.mistake {
            Mistake::BucketByPeerIp => format!("ratelimit:v1:ip:{peer}"),
            Mistake::BucketByForwardedFor => {
                let forwarded = request.headers().get("x-forwarded-for").and_then(|h| h.to_str().ok());
                let client = forwarded.and_then(|f| f.split(',').next()).map(str::trim).filter(|c| !c.is_empty());
                format!("ratelimit:v1:ip:{}", client.unwrap_or(&peer))
            }
            _ => format!("ratelimit:v1:user:{}", user.id),
        };
        Some((key, user.tier))
    }

    /// Charge one request to `key`'s bucket.
    async fn take(&self, key: &str, limit: Limit) -> redis::RedisResult<Decision> {
        let mut redis = self.redis.clone();
        match self.mistake {
            Mistake::BucketInMemory => {
                let mut buckets = self.memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let (bucket, decision) = Bucket::take(buckets.get(key).copied(), limit, now_secs());
                buckets.insert(key.to_owned(), bucket);
                Ok(decision)
            }
            Mistake::GetThenSet => {
                // Two round trips: another request can read the same tokens in between.
                let hmget = redis::cmd("HMGET").arg(key).arg("tokens").arg("at").to_owned();
                let (tokens, at): (Option<f64>, Option<f64>) = redis_call(hmget.query_async(&mut redis)).await?;
                let state = tokens.zip(at).map(|(tokens, at)| Bucket { tokens, at });
                let (bucket, decision) = Bucket::take(state, limit, now_secs());
                let hset =
                    redis::cmd("HSET").arg(key).arg("tokens").arg(bucket.tokens).arg("at").arg(bucket.at).to_owned();
                redis_call(hset.query_async::<()>(&mut redis)).await?;
                Ok(decision)
            }
            Mistake::FixedWindow => {
                // The minute's quota, counted; the window starts at the first request.
                let count: u64 = redis_call(redis::cmd("INCR").arg(key).query_async(&mut redis)).await?;
                if count == 1 {
                    redis_call(redis::cmd("EXPIRE").arg(key).arg(60).query_async::<()>(&mut redis)).await?;
                }
                let ttl: i64 = redis_call(redis::cmd("TTL").arg(key).query_async(&mut redis)).await?;
                let quota = u64::from(limit.per_min);
                let window_left = ttl.max(1) as u64;
                Ok(Decision {
                    admitted: count <= quota,
                    remaining: quota.saturating_sub(count),
                    retry_after_secs: window_left,
                    full_in_secs: window_left,
                })
            }
            _ => {
                let mut call = self.bucket.key(key);
                call.arg(limit.burst).arg(limit.per_sec());
                let (admitted, remaining, next_us, full_us): (i64, i64, i64, i64) =
                    redis_call(call.invoke_async(&mut redis)).await?;
                Ok(Decision {
                    admitted: admitted == 1,
                    remaining: remaining.max(0) as u64,
                    retry_after_secs: (next_us.max(1) as u64).div_ceil(1_000_000),
                    full_in_secs: (full_us.max(0) as u64).div_ceil(1_000_000),
                })
            }
        }
    }
}

/// The layer: charge the caller's bucket, then run the handler or answer 429.
pub async fn rate_limit(State(limiter): State<Arc<LearnerLimiter>>, request: Request, next: Next) -> Response {
    let Some((key, tier, limit)) =
        limiter.payer(&request).and_then(|(key, tier)| Some((key, tier, limiter.limit(tier)?)))
    else {
        return next.run(request).await;
    };
    let decision = match limiter.take(&key, limit).await {
        Ok(decision) => decision,
        // limiter-redis-error-500: the error goes to the client.
        Err(error) if limiter.mistake == Mistake::LimiterRedisError500 => {
            return ApiError::Internal(error.into()).into_response();
        }
        Err(error) => {
            tracing::warn!(%error, "rate limiter cannot reach redis");
            return match limiter.config.on_redis_error {
                OnRedisError::Open => next.run(request).await,
                OnRedisError::Closed => {
                    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Rate limiter unavailable", "retry shortly")
                        .into_response()
                }
            };
        }
    };
    let mut response = if decision.admitted {
        next.run(request).await
    } else {
        let detail = format!("{} requests a minute, bursts of {}", limit.per_min, limit.burst);
        let mut limited = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests", detail).into_response();
        // no-retry-after: the 429 says nothing about when to come back.
        if limiter.mistake != Mistake::NoRetryAfter {
            limited.headers_mut().insert("retry-after", HeaderValue::from(decision.retry_after_secs));
        }
        limited
    };
    describe(response.headers_mut(), tier, limit, &decision, limiter.mistake);
    response
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11), as stage-3 sends
/// them: `t` is the time until the next token, the same as `Retry-After`.
fn describe(headers: &mut HeaderMap, tier: Tier, limit: Limit, decision: &Decision, mistake: Mistake) {
    let window = (u64::from(limit.burst) * 60).div_ceil(u64::from(limit.per_min));
    let tier = tier.as_str();
    let policy = format!("\"{tier}\";q={};w={window}", limit.burst);
    // t-until-full: `t` says when the whole bucket is back, not when the next request is.
    let t = if mistake == Mistake::TUntilFull { decision.full_in_secs } else { decision.retry_after_secs };
    let state = format!("\"{tier}\";r={};t={t}", decision.remaining);
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FREE: Limit = Limit { burst: 60, per_min: 60 };

    #[test]
    fn a_new_bucket_is_full_and_an_empty_one_refills_one_token_a_second() {
        let (bucket, first) = Bucket::take(None, FREE, 100.0);
        assert!(first.admitted);
        assert_eq!(first.remaining, 59);
        let empty = Bucket { tokens: 0.0, ..bucket };
        let (_, refused) = Bucket::take(Some(empty), FREE, 100.0);
        assert!(!refused.admitted);
        assert_eq!(refused.retry_after_secs, 1);
        let (_, later) = Bucket::take(Some(empty), FREE, 105.0);
        assert!(later.admitted);
        assert_eq!(later.remaining, 4);
    }

    #[test]
    fn the_next_token_is_at_most_a_refill_interval_away_after_any_request() {
        const SLOW: Limit = Limit { burst: 10, per_min: 30 };
        let (bucket, first) = Bucket::take(None, SLOW, 100.0);
        assert_eq!((first.remaining, first.retry_after_secs, first.full_in_secs), (9, 2, 2));
        let (_, later) = Bucket::take(Some(Bucket { tokens: 2.2, ..bucket }), SLOW, 100.0);
        // 1.2 tokens left: the second whole one in 0.8 / 0.5 per s = 1.6 s, said as 2; full in 17.6 s.
        assert_eq!((later.remaining, later.retry_after_secs, later.full_in_secs), (1, 2, 18));
    }
}
