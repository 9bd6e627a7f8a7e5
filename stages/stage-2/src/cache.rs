//! Cache-aside in Redis, in front of any feed source.
//!
//! Read: GET the timeline's key; on a hit, no SQL at all. On a miss, one request per key (across
//! every instance of the service) takes a short lock, runs the inner source once and stores the
//! result with a jittered TTL; the others wait briefly for that value. Write: the post handler
//! calls `timeline_changed`, which deletes the key, so the next read shows the new post.
//!
//! Redis is an optimisation, never a dependency: any Redis error or timeout reads from the inner
//! source instead (a "bypass"), and the connection manager reconnects by itself.

use std::time::Duration;

use feed_core::api::{FeedItem, MAX_LIMIT};
use feed_core::app::redis_call;
use feed_core::contract;
use feed_core::{FeedError, FeedSource};
use rand::Rng as _;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

/// Cache settings (flags and environment variables of the stage-2 and stage-3 binaries).
#[derive(clap::Args, Debug, Clone)]
pub struct CacheConfig {
    /// How long a cached timeline may be served, in seconds. New posts never wait for it (the
    /// write path invalidates); what can be stale for up to this long is an author's name or
    /// avatar. See docs/stage-2.md for how 300 s was chosen.
    #[arg(long, env = "CACHE_TTL_SECS", default_value_t = contract::CACHE_TTL_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_ttl_secs: u64,

    /// Random spread of each TTL, in percent (10 → 270..330 s), so keys filled together do not
    /// all expire in the same second and send their misses to Postgres at once.
    #[arg(long, env = "CACHE_TTL_JITTER_PCT", default_value_t = contract::CACHE_TTL_JITTER_PCT, value_parser = clap::value_parser!(u64).range(0..=50))]
    pub cache_ttl_jitter_pct: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { cache_ttl_secs: contract::CACHE_TTL_SECS, cache_ttl_jitter_pct: contract::CACHE_TTL_JITTER_PCT }
    }
}

impl CacheConfig {
    /// A TTL drawn uniformly from `ttl ± jitter%`.
    pub fn jittered_ttl(&self) -> Duration {
        let base = self.cache_ttl_secs as f64;
        let spread = base * self.cache_ttl_jitter_pct as f64 / 100.0;
        let secs = if spread > 0.0 { rand::rng().random_range(base - spread..=base + spread) } else { base };
        Duration::from_secs_f64(secs.max(1.0))
    }
}

/// The key for `user_id`'s timeline. `v1` is the format version: change the cached shape and
/// bump it, and no instance ever parses an entry written in the old format.
fn feed_key(user_id: i64) -> String {
    format!("feed:v1:user:{user_id}")
}

fn lock_key(user_id: i64) -> String {
    format!("feed:v1:user:{user_id}:lock")
}

/// How long a recompute may hold the lock; far above the one JOIN it protects.
const LOCK_TTL: Duration = Duration::from_secs(2);
/// How often, and how long, a request that lost the race checks for the winner's value.
const WAIT_STEP: Duration = Duration::from_millis(20);
const WAIT_MAX: Duration = Duration::from_secs(1);

pub struct CachedFeed<S> {
    inner: S,
    redis: ConnectionManager,
    config: CacheConfig,
}

impl<S: FeedSource> CachedFeed<S> {
    pub fn new(inner: S, redis: ConnectionManager, config: CacheConfig) -> Self {
        Self { inner, redis, config }
    }

    async fn get(&self, key: &str) -> redis::RedisResult<Option<Vec<FeedItem>>> {
        let mut redis = self.redis.clone();
        let cached: Option<String> = redis_call(redis.get(key)).await?;
        // An entry that no longer parses is treated as a miss and overwritten.
        Ok(cached.and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// The one request that recomputes: read the inner source, store the page with a jittered
    /// TTL, but only while we still hold the lock (see `FILL`).
    async fn fill(&self, user_id: i64, token: &str) -> Result<Vec<FeedItem>, FeedError> {
        metrics::counter!("cache_recompute_total").increment(1);
        // Cache the largest page anyone may ask for; every `limit` is a slice of it, so one key
        // (and one DEL on write) covers all page sizes.
        let items = self.inner.feed(user_id, MAX_LIMIT).await?;
        let json = serde_json::to_string(&items).expect("feed items always serialise");
        let ttl = self.config.jittered_ttl();
        let mut redis = self.redis.clone();
        let mut fill = FILL.key(feed_key(user_id));
        fill.key(lock_key(user_id)).arg(token).arg(json).arg(ttl.as_secs().max(1));
        let stored: redis::RedisResult<i64> = redis_call(fill.invoke_async(&mut redis)).await;
        if let Err(e) = stored {
            bypassed("fill", &e);
        }
        Ok(items)
    }

    /// Miss path with stampede protection: only the holder of the per-key lock recomputes.
    async fn miss(&self, user_id: i64) -> redis::RedisResult<Result<Vec<FeedItem>, FeedError>> {
        let token = rand::rng().random::<u64>().to_string();
        let mut redis = self.redis.clone();
        let acquired = redis_call(
            redis::cmd("SET")
                .arg(lock_key(user_id))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64)
                .query_async::<Option<String>>(&mut redis),
        )
        .await?
        .is_some();
        if acquired {
            // The lock is not released after the fill: it expires by itself. A request that
            // missed just before our fill then finds the lock taken and waits for the value,
            // instead of taking a free lock and running the query a second time.
            return Ok(self.fill(user_id, &token).await);
        }
        // Another request (maybe in another instance) is computing this feed: wait for it.
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(WAIT_STEP).await;
            if let Some(items) = self.get(&feed_key(user_id)).await? {
                return Ok(Ok(items));
            }
        }
        // The winner is slow or died: serve this request from the database rather than wait on.
        Ok(self.inner.feed(user_id, MAX_LIMIT).await)
    }
}

/// Store the value only if the lock is still ours. A post invalidates by deleting the value *and*
/// the lock; a fill that read the database before that post then finds the lock gone and does
/// not write its stale page back (the classic cache-aside race between a read and a write).
static FILL: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('get', KEYS[2]) == ARGV[1] then
           redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
           return 1
         end
         return 0",
    )
});

fn bypassed(op: &str, error: &redis::RedisError) {
    metrics::counter!("cache_bypass_total").increment(1);
    tracing::warn!(op, %error, "redis unavailable: cache bypassed, reading from postgres");
}

#[async_trait::async_trait]
impl<S: FeedSource> FeedSource for CachedFeed<S> {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        let limit = usize::try_from(limit).unwrap_or(0);
        let items = match self.get(&feed_key(user_id)).await {
            Ok(Some(items)) => {
                metrics::counter!("cache_hits_total").increment(1);
                items
            }
            Ok(None) => {
                metrics::counter!("cache_misses_total").increment(1);
                match self.miss(user_id).await {
                    Ok(result) => result?,
                    Err(e) => {
                        bypassed("lock", &e);
                        self.inner.feed(user_id, MAX_LIMIT).await?
                    }
                }
            }
            Err(e) => {
                bypassed("get", &e);
                return self.inner.feed(user_id, limit as i64).await;
            }
        };
        Ok(items.into_iter().take(limit).collect())
    }

    async fn timeline_changed(&self, user_id: i64) {
        let mut redis = self.redis.clone();
        let deleted: redis::RedisResult<i64> = redis_call(redis.del(&[feed_key(user_id), lock_key(user_id)])).await;
        if let Err(e) = deleted {
            // The post is safe in Postgres; only its visibility waits for the TTL. Say so loudly.
            tracing::error!(user_id, error = %e, "could not invalidate cached feed; it may be stale until its TTL");
            metrics::counter!("cache_invalidation_failures_total").increment(1);
        }
    }
}
