//! Stage-3 as a second learner writes it, from the brief alone, in a shape of their own: a token
//! bucket per payer in a Redis hash, refilled by a Lua script from the service's clock (the time
//! is an argument, in ms), in front of stage-2's cached feed. Without a mistake (`clock-bucket`)
//! it is right and must pass stage-3; each mistake is this learner's design with one decision
//! made otherwise, at the line where it is matched.

use std::hash::{Hash as _, Hasher as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use feed_core::RedisConn;
use feed_core::app::redis_call;
use feed_core::auth::{AuthUser, Tier};
use feed_core::error::Problem;
use stage_3::{OnRedisError, RateLimitConfig};

use crate::Mistake;

pub struct ClockBucket {
    redis: RedisConn,
    config: RateLimitConfig,
    mistake: Mistake,
    script: redis::Script,
}

/// One tier's bucket.
#[derive(Debug, Clone, Copy)]
struct Limit {
    burst: u32,
    per_min: u32,
}

impl Limit {
    fn per_ms(self) -> f64 {
        f64::from(self.per_min) / 60_000.0
    }
}

/// Refill by the time since the last request (ARGV[3], the service's clock, in ms), then take a
/// token if there is one. ARGV: burst, tokens per ms, now, how to refill (`exact` or `whole`), and
/// whether a refused request is charged (`free` or `charge`). Returns {admitted, tokens left}.
const BUCKET: &str = "
local burst, rate, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('hmget', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
local refill = math.max(0, now - at) * rate
if ARGV[4] == 'whole' then refill = math.floor(refill) end
tokens = math.min(burst, tokens + refill)
local admitted = 0
if tokens >= 1 then
  tokens = tokens - 1
  admitted = 1
elseif ARGV[5] == 'charge' then
  tokens = tokens - 1
end
redis.call('hset', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('pexpire', KEYS[1], math.ceil(burst / rate) + 1000)
return {admitted, tostring(tokens)}
";

/// Who pays for a request, in which tier.
struct Payer {
    key: String,
    tier: Tier,
}

impl ClockBucket {
    pub fn new(ctx: &feed_core::Context, config: RateLimitConfig, mistake: Mistake) -> anyhow::Result<Self> {
        let redis = match mistake {
            // limiter-no-timeout: a connection of its own, the client's response timeout off.
            Mistake::LimiterNoTimeout => {
                let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
                RedisConn::Single(
                    redis::Client::open(ctx.config.redis_url.as_str())?.get_connection_manager_lazy(config)?,
                )
            }
            _ => ctx.redis.clone(),
        };
        Ok(Self { redis, config, mistake, script: redis::Script::new(BUCKET) })
    }

    fn limit(&self, tier: Tier) -> Option<Limit> {
        match tier {
            Tier::Free => Some(Limit { burst: self.config.rate_free_burst, per_min: self.config.rate_free_per_min }),
            // internal-as-pro: "our own jobs get the biggest bucket we have".
            Tier::Pro | Tier::Internal if self.mistake == Mistake::InternalAsPro => {
                Some(Limit { burst: self.config.rate_pro_burst, per_min: self.config.rate_pro_per_min })
            }
            Tier::Pro => Some(Limit { burst: self.config.rate_pro_burst, per_min: self.config.rate_pro_per_min }),
            Tier::Internal => None,
        }
    }

    /// Whose bucket pays for `request`; `None`: nobody to charge (the request goes on).
    fn payer(&self, request: &Request) -> Option<Payer> {
        if self.mistake == Mistake::LimitBeforeAuth {
            // limit-before-auth: outside authentication, the caller is whoever the token's
            // payload names; its signature is the authentication layer's business.
            let (sub, tier) = unverified_claims(request)?;
            return Some(Payer { key: format!("rl:{{{sub}}}"), tier });
        }
        let user = *request.extensions().get::<AuthUser>()?;
        let key = match self.mistake {
            // bucket-by-token: the bearer token names the session, so it names the bucket.
            Mistake::BucketByToken => {
                let token = request.headers().get(AUTHORIZATION).map(|h| h.as_bytes().to_vec()).unwrap_or_default();
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                token.hash(&mut hasher);
                format!("rl:{{token:{:x}}}", hasher.finish())
            }
            // bucket-per-device: the user, on the device (address) it calls from.
            Mistake::BucketPerDevice => {
                let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
                format!("rl:{{{}}}:{}", user.id, peer.unwrap_or_default())
            }
            // bucket-per-route: a budget per endpoint, so a busy page does not starve the others.
            Mistake::BucketPerRoute => format!("rl:{{{}}}:{} {}", user.id, request.method(), request.uri().path()),
            _ => format!("rl:{{{}}}", user.id),
        };
        Some(Payer { key, tier: user.tier })
    }

    /// Charge one request: (admitted, tokens left).
    async fn take(&self, key: &str, limit: Limit) -> redis::RedisResult<(bool, f64)> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        // whole-token-refill: tokens are whole, so the refill is too.
        let refill = if self.mistake == Mistake::WholeTokenRefill { "whole" } else { "exact" };
        // refused-requests-spend: "every request costs a token", refused ones too.
        let refused = if self.mistake == Mistake::RefusedRequestsSpend { "charge" } else { "free" };
        let mut invocation = self.script.key(key);
        invocation.arg(limit.burst).arg(limit.per_ms()).arg(now).arg(refill).arg(refused);
        let mut redis = self.redis.clone();
        let (admitted, tokens): (i64, String) = match self.mistake {
            Mistake::LimiterNoTimeout => invocation.invoke_async(&mut redis).await?,
            _ => redis_call(invocation.invoke_async(&mut redis)).await?,
        };
        Ok((admitted == 1, tokens.parse().unwrap_or(0.0)))
    }
}

/// `sub` and `tier` from a bearer token's payload, read without checking its signature.
fn unverified_claims(request: &Request) -> Option<(i64, Tier)> {
    let header = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let payload = header.strip_prefix("Bearer ")?.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let tier = serde_json::from_value(claims.get("tier")?.clone()).ok()?;
    Some((claims.get("sub")?.as_str()?.parse().ok()?, tier))
}

/// The layer: charge the payer's bucket, then run the handler or answer 429.
pub async fn limit(State(bucket): State<Arc<ClockBucket>>, request: Request, next: Next) -> Response {
    // limit-feed-only: "the feed is what gets hammered".
    if bucket.mistake == Mistake::LimitFeedOnly && request.uri().path() != "/api/feed" {
        return next.run(request).await;
    }
    if bucket.mistake == Mistake::LimitBeforeAuth && !request.uri().path().starts_with("/api/") {
        return next.run(request).await;
    }
    let Some(payer) = bucket.payer(&request) else { return next.run(request).await };
    let Some(limit) = bucket.limit(payer.tier) else { return next.run(request).await };
    let (admitted, tokens) = match bucket.take(&payer.key, limit).await {
        Ok(decision) => decision,
        // ignores-fail-closed: "a limiter must never take the API down", whatever the setting.
        Err(_) if bucket.mistake == Mistake::IgnoresFailClosed => return next.run(request).await,
        Err(error) => {
            tracing::warn!(%error, "rate limiter cannot reach redis");
            return match bucket.config.on_redis_error {
                OnRedisError::Open => next.run(request).await,
                OnRedisError::Closed => {
                    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Rate limiter unavailable", "retry shortly")
                        .into_response()
                }
            };
        }
    };
    // Whole seconds until the next whole token (at least 1).
    let rate_per_sec = f64::from(limit.per_min) / 60.0;
    let next_token = ((tokens.floor() + 1.0 - tokens) / rate_per_sec).ceil().max(1.0) as u64;
    let mut response = if admitted {
        next.run(request).await
    } else {
        let detail = format!("{} requests a minute, bursts of {}; retry in {next_token} s", limit.per_min, limit.burst);
        let mut limited = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests", detail).into_response();
        limited.headers_mut().insert("retry-after", HeaderValue::from(next_token));
        limited
    };
    let tier = payer.tier.as_str();
    let window = (u64::from(limit.burst) * 60).div_ceil(u64::from(limit.per_min));
    let policy = format!("\"{tier}\";q={};w={window}", limit.burst);
    let state = format!("\"{tier}\";r={};t={next_token}", tokens.max(0.0).floor() as u64);
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
