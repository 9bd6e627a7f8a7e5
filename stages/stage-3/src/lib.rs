//! stage-3: stage-2's cached feed, with a per-user token bucket in front of the API.

mod rate_limit;

use std::sync::Arc;

pub use rate_limit::{OnRedisError, RateLimitConfig, TokenBucket};

pub async fn stage(
    ctx: feed_core::Context,
    cache: stage_2::CacheConfig,
    limits: RateLimitConfig,
) -> anyhow::Result<feed_core::Stage> {
    let redis = ctx.redis.clone();
    let cached = feed_core::Stage::new("stage-3", stage_2::cached_feed(ctx, cache).await?);
    Ok(limited(cached, redis, limits))
}

/// `stage` behind the token bucket.
pub fn limited(stage: feed_core::Stage, redis: feed_core::RedisConn, limits: RateLimitConfig) -> feed_core::Stage {
    let bucket = Arc::new(TokenBucket::new(redis, limits));
    stage.with_api_layer(move |api| {
        // Only the /api routes: /health, /ready and /metrics stay reachable for probes. The core
        // adds authentication outside this layer, so a request without a valid token is turned
        // away (401) before it can cost anyone a token.
        api.layer(axum::middleware::from_fn_with_state(bucket, rate_limit::rate_limit))
    })
}
