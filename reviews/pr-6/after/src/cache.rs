//! Cache-aside in Redis, in front of the feed query.
//!
//! Read: HGET the page from the timeline's hash; a hit sends the stored body and runs no SQL. A
//! miss takes a short per-page lock so that one request (across every instance) runs the query
//! and stores the page; the others wait briefly for it. Write: `timeline_changed` deletes the
//! hash, every page size at once, so the next read shows the new post.
//!
//! Redis is an optimisation, not a dependency: on any Redis error or timeout the feed is read
//! from Postgres (a bypass, counted in `cache_bypass_total`).

use std::time::Duration;

use feed_core::api::{Feed, FeedItem, MAX_LIMIT};
use feed_core::app::redis_call;
use feed_core::{FeedError, FeedSource, RedisConn};
use rand::Rng as _;
use redis::AsyncCommands as _;

/// The longest a cached page may be served. New posts do not wait for it (a post deletes the
/// timeline's pages); what it bounds is how long an author's new name or avatar may take to show,
/// and the product allows five minutes for that.
const TTL_MAX: Duration = Duration::from_secs(300);
/// Each page's TTL is drawn from 90 %..100 % of the bound (270..300 s): pages filled together
/// (after a deploy or a Redis restart) expire apart. Below the bound, never above it.
const TTL_MIN: Duration = Duration::from_secs(270);

/// How long a recompute may hold a page's lock; far above the one statement it protects.
const LOCK_TTL: Duration = Duration::from_secs(2);
/// How often, and how long, a request that did not get the lock looks for the page.
const WAIT_STEP: Duration = Duration::from_millis(20);
const WAIT_MAX: Duration = Duration::from_secs(1);

/// One hash per timeline, a field per page size holding that page's response body. `v1`: bump it
/// when the stored format changes. `{user:42}` is a hash tag, so the hash and its locks live in one
/// Redis Cluster slot (the fill script and the delete on write touch several of them).
fn feed_key(user_id: i64) -> String {
    format!("feed:v1:{{user:{user_id}}}")
}

fn lock_key(user_id: i64, limit: i64) -> String {
    format!("feed:v1:{{user:{user_id}}}:lock:{limit}")
}

fn jittered_ttl() -> Duration {
    rand::rng().random_range(TTL_MIN..=TTL_MAX)
}

/// Store the page only while its lock is still ours: a post deletes the hash and the locks, so a
/// fill that read Postgres before the post finds its lock gone and does not put a stale page back.
/// The first page stored sets the hash's TTL; later pages do not extend it.
/// KEYS: the hash, the page's lock. ARGV: the lock token, the page size, the body, the TTL (s).
static FILL: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('get', KEYS[2]) ~= ARGV[1] then return 0 end
         redis.call('hset', KEYS[1], ARGV[2], ARGV[3])
         if redis.call('ttl', KEYS[1]) < 0 then redis.call('expire', KEYS[1], ARGV[4]) end
         return 1",
    )
});

pub struct CachedFeed<S> {
    inner: S,
    redis: RedisConn,
}

impl<S: FeedSource> CachedFeed<S> {
    pub fn new(inner: S, redis: RedisConn) -> Self {
        Self { inner, redis }
    }

    async fn get(&self, user_id: i64, limit: i64) -> redis::RedisResult<Option<Vec<u8>>> {
        let mut redis = self.redis.clone();
        redis_call(redis.hget(feed_key(user_id), limit)).await
    }

    /// The request holding the page's lock: run the query, store the page if the lock is still ours.
    async fn fill(&self, user_id: i64, limit: i64, token: &str) -> Result<Vec<u8>, FeedError> {
        metrics::counter!("cache_recompute_total").increment(1);
        let body = self.inner.feed_json(user_id, limit).await?;
        let mut redis = self.redis.clone();
        let mut fill = FILL.key(feed_key(user_id));
        fill.key(lock_key(user_id, limit)).arg(token).arg(limit).arg(&body).arg(jittered_ttl().as_secs());
        let stored: redis::RedisResult<i64> = redis_call(fill.invoke_async(&mut redis)).await;
        if let Err(e) = stored {
            bypassed("fill", &e);
        }
        Ok(body)
    }

    /// A miss: take the page's lock and fill it, or wait for whoever holds it.
    async fn miss(&self, user_id: i64, limit: i64) -> redis::RedisResult<Result<Vec<u8>, FeedError>> {
        let token = rand::rng().random::<u64>().to_string();
        let mut redis = self.redis.clone();
        let set = redis::cmd("SET")
            .arg(lock_key(user_id, limit))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL.as_millis() as u64)
            .to_owned();
        let acquired = redis_call(set.query_async::<Option<String>>(&mut redis)).await?.is_some();
        if acquired {
            // Not released after the fill: it expires. A request that missed just before the
            // fill finds it taken and waits for the page instead of running the query again.
            return Ok(self.fill(user_id, limit, &token).await);
        }
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(WAIT_STEP).await;
            if let Some(body) = self.get(user_id, limit).await? {
                return Ok(Ok(body));
            }
        }
        // Whoever holds the lock is slow or gone: read Postgres rather than wait on.
        Ok(self.inner.feed_json(user_id, limit).await)
    }
}

fn bypassed(op: &str, error: &redis::RedisError) {
    metrics::counter!("cache_bypass_total").increment(1);
    tracing::warn!(op, %error, "redis unavailable: cache bypassed, reading from postgres");
}

#[async_trait::async_trait]
impl<S: FeedSource> FeedSource for CachedFeed<S> {
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

    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        let body = self.feed_json(user_id, limit).await?;
        let feed: Feed = serde_json::from_slice(&body).map_err(FeedError::Decode)?;
        Ok(feed.items)
    }

    async fn timeline_changed(&self, user_id: i64) {
        // The hash (every page size) and every page's lock, in one DEL.
        let keys: Vec<String> =
            std::iter::once(feed_key(user_id)).chain((1..=MAX_LIMIT).map(|limit| lock_key(user_id, limit))).collect();
        let mut redis = self.redis.clone();
        let deleted: redis::RedisResult<i64> = redis_call(redis.del(&keys)).await;
        if let Err(e) = deleted {
            // The post is safe in Postgres; only its visibility waits for the TTL. Say so.
            tracing::error!(user_id, error = %e, "could not invalidate cached feed; it may be stale until its TTL");
            metrics::counter!("cache_invalidation_failures_total").increment(1);
        }
    }
}
