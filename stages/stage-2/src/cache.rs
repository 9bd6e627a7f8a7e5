//! Cache-aside in Redis, in front of any feed source.
//!
//! Read: HGET the page asked for from the timeline's hash; on a hit, no SQL at all, and no JSON
//! work either: the hash holds each page size's response body as it is sent. On a miss, one
//! request per page (across every instance of the service) takes a short lock, runs the inner
//! source once and stores the result with a jittered TTL; the others wait briefly for that
//! value. Write: the post handler calls `timeline_changed`, which deletes the hash (every page
//! size at once), so the next read shows the new post.
//!
//! Redis is an optimisation, never a dependency: any Redis error or timeout reads from the inner
//! source instead (a "bypass"), and the connection manager reconnects by itself.

use std::time::Duration;

use feed_core::RedisConn;
use feed_core::api::{Feed, FeedItem, MAX_LIMIT};
use feed_core::app::redis_call;
use feed_core::contract;
use feed_core::{FeedError, FeedSource};
use rand::Rng as _;
use redis::AsyncCommands as _;

/// Cache settings (flags and environment variables of the stage-2 and stage-3 binaries).
#[derive(clap::Args, Debug, Clone)]
pub struct CacheConfig {
    /// The longest a cached timeline may be served, in seconds. New posts never wait for it (the
    /// write path invalidates); what can be stale for up to this long is an author's name or
    /// avatar, which the product allows for five minutes. See docs/walkthrough/stage-2.md.
    #[arg(long, env = "CACHE_TTL_SECS", default_value_t = contract::CACHE_TTL_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_ttl_secs: u64,

    /// Random spread of each TTL below CACHE_TTL_SECS, in percent (10 → 270..300 s), so keys
    /// filled together do not all expire in the same second and send their misses to Postgres at
    /// once.
    #[arg(long, env = "CACHE_TTL_JITTER_PCT", default_value_t = contract::CACHE_TTL_JITTER_PCT, value_parser = clap::value_parser!(u64).range(0..=50))]
    pub cache_ttl_jitter_pct: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { cache_ttl_secs: contract::CACHE_TTL_SECS, cache_ttl_jitter_pct: contract::CACHE_TTL_JITTER_PCT }
    }
}

impl CacheConfig {
    /// A TTL drawn uniformly from `ttl × (1 − jitter%) ..= ttl`.
    ///
    /// THE TTL: the freshness bound is a maximum, so the jitter goes below it, never above: with
    /// `300 ± 10 %`, a page could live 330 s and an author's new name show after five and a half
    /// minutes, breaking the product's rule for half of the keys.
    pub fn jittered_ttl(&self) -> Duration {
        let most = self.cache_ttl_secs as f64;
        let spread = most * self.cache_ttl_jitter_pct as f64 / 100.0;
        let secs = if spread > 0.0 { rand::rng().random_range(most - spread..=most) } else { most };
        Duration::from_secs_f64(secs.max(1.0))
    }
}

/// The key of `user_id`'s cached timeline: a Redis hash with one field per page size asked for
/// (`"20"`, `"5"`, …), each holding that page's response body, the bytes the handler sends.
///
/// `v2` is the format version (v1 was the 100 newest items as one JSON array, sliced per
/// request): change the cached shape and bump it, and no instance ever reads an entry written in
/// another format. `{user:42}` is a hash tag: Redis Cluster places a key by the part in braces
/// alone, so a timeline's hash and its locks share one slot, and the FILL script and the DEL on
/// write, which touch several of them, still work on a cluster.
fn feed_key(user_id: i64) -> String {
    format!("feed:v2:{{user:{user_id}}}")
}

/// The stampede lock of one page of `user_id`'s timeline.
fn lock_key(user_id: i64, limit: i64) -> String {
    format!("feed:v2:{{user:{user_id}}}:lock:{limit}")
}

/// How long a recompute may hold the lock; far above the one JOIN it protects.
const LOCK_TTL: Duration = Duration::from_secs(2);
/// How often, and how long, a request that lost the race checks for the winner's value.
const WAIT_STEP: Duration = Duration::from_millis(20);
const WAIT_MAX: Duration = Duration::from_secs(1);

pub struct CachedFeed<S> {
    inner: S,
    redis: RedisConn,
    config: CacheConfig,
}

impl<S: FeedSource> CachedFeed<S> {
    pub fn new(inner: S, redis: RedisConn, config: CacheConfig) -> Self {
        Self { inner, redis, config }
    }

    /// A hit: the page's response body, as it was stored.
    ///
    /// THE SHAPE: cache what you serve. v1 cached the newest 100 items as one JSON array, so
    /// every hit parsed them all, kept `limit` and serialised the page again: a hit cost more the
    /// longer the timeline, and more than the Redis round trip it was waiting for. Here each
    /// page size has its own field holding its finished body, so a hit is one HGET and the
    /// bytes go out as they came in, whatever the page size or the timeline's length. All the
    /// pages sit under one key per timeline, so one DEL still drops every page size at once.
    async fn get(&self, user_id: i64, limit: i64) -> redis::RedisResult<Option<Vec<u8>>> {
        let mut redis = self.redis.clone();
        redis_call(redis.hget(feed_key(user_id), limit)).await
    }

    /// The one request that recomputes: read the inner source, store the page, but only while
    /// we still hold its lock (see `FILL`).
    async fn fill(&self, user_id: i64, limit: i64, token: &str) -> Result<Vec<u8>, FeedError> {
        metrics::counter!("cache_recompute_total").increment(1);
        // Serialised here, once per fill, instead of on every hit.
        let body = self.inner.feed_json(user_id, limit).await?;
        let ttl = self.config.jittered_ttl();
        let mut redis = self.redis.clone();
        let mut fill = FILL.key(feed_key(user_id));
        fill.key(lock_key(user_id, limit)).arg(token).arg(limit).arg(&body).arg(ttl.as_secs().max(1));
        let stored: redis::RedisResult<i64> = redis_call(fill.invoke_async(&mut redis)).await;
        if let Err(e) = stored {
            bypassed("fill", &e);
        }
        Ok(body)
    }

    /// Miss path with stampede protection: only the holder of the page's lock recomputes.
    async fn miss(&self, user_id: i64, limit: i64) -> redis::RedisResult<Result<Vec<u8>, FeedError>> {
        let token = rand::rng().random::<u64>().to_string();
        let mut redis = self.redis.clone();
        let acquired = redis_call(
            redis::cmd("SET")
                .arg(lock_key(user_id, limit))
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
            return Ok(self.fill(user_id, limit, &token).await);
        }
        // Another request (maybe in another instance) is computing this page: wait for it.
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(WAIT_STEP).await;
            if let Some(body) = self.get(user_id, limit).await? {
                return Ok(Ok(body));
            }
        }
        // The winner is slow or died: serve this request from the database rather than wait on.
        Ok(self.inner.feed_json(user_id, limit).await)
    }
}

/// Store the page only if its lock is still ours. A post invalidates by deleting the timeline's
/// hash *and* its locks; a fill that read the database before that post then finds its lock gone
/// and does not write its stale page back (the classic cache-aside race between a read and a
/// write). The TTL is set by the first page stored in the hash and not extended by later ones:
/// no page lives longer than the TTL promises.
/// KEYS: the hash, the page's lock. ARGV: the lock token, the page size, the body, the TTL (s).
static FILL: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('get', KEYS[2]) ~= ARGV[1] then return 0 end
         redis.call('hset', KEYS[1], ARGV[2], ARGV[3])
         if redis.call('ttl', KEYS[1]) < 0 then redis.call('expire', KEYS[1], ARGV[4]) end
         return 1",
    )
});

fn bypassed(op: &str, error: &redis::RedisError) {
    metrics::counter!("cache_bypass_total").increment(1);
    tracing::warn!(op, %error, "redis unavailable: cache bypassed, reading from postgres");
}

#[async_trait::async_trait]
impl<S: FeedSource> FeedSource for CachedFeed<S> {
    /// What the handler calls: the page's body, from Redis when it is there.
    async fn feed_json(&self, user_id: i64, limit: i64) -> Result<Vec<u8>, FeedError> {
        match self.get(user_id, limit).await {
            Ok(Some(body)) => {
                metrics::counter!("cache_hits_total").increment(1);
                Ok(body)
            }
            Ok(None) => {
                metrics::counter!("cache_misses_total").increment(1);
                match self.miss(user_id, limit).await {
                    Ok(result) => result,
                    Err(e) => {
                        bypassed("lock", &e);
                        self.inner.feed_json(user_id, limit).await
                    }
                }
            }
            Err(e) => {
                bypassed("get", &e);
                self.inner.feed_json(user_id, limit).await
            }
        }
    }

    /// The same page as values, for a caller that wants them (the service itself asks for
    /// `feed_json`): parsed from the body.
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        let body = self.feed_json(user_id, limit).await?;
        let feed: Feed = serde_json::from_slice(&body).map_err(FeedError::Decode)?;
        Ok(feed.items)
    }

    async fn timeline_changed(&self, user_id: i64) {
        // One DEL: the hash with every cached page size, and every page's lock (so no fill that
        // read the database before this post can store what it read). Any page size may have a
        // lock, so all of them are named; the hash tag keeps them in one slot.
        let keys: Vec<String> =
            std::iter::once(feed_key(user_id)).chain((1..=MAX_LIMIT).map(|limit| lock_key(user_id, limit))).collect();
        let mut redis = self.redis.clone();
        let deleted: redis::RedisResult<i64> = redis_call(redis.del(&keys)).await;
        if let Err(e) = deleted {
            // The post is safe in Postgres; only its visibility waits for the TTL. Say so loudly.
            tracing::error!(user_id, error = %e, "could not invalidate cached feed; it may be stale until its TTL");
            metrics::counter!("cache_invalidation_failures_total").increment(1);
        }
    }
}
