//! Stage-2 as a learner writes it: cache-aside in front of stage-1's JOIN, with one mistake.
//!
//! Without a mistake this is the reference design in a learner's own words: GET the key; on a
//! miss take a short `SET NX` lock, read Postgres, store the page with a jittered TTL only if the
//! lock is still ours; other requests wait for the value; a post deletes the key and the lock;
//! any Redis error reads Postgres instead. Each `Mistake` changes one step, where it is matched.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use feed_core::RedisConn;
use feed_core::api::{DEFAULT_LIMIT, FeedItem, MAX_LIMIT};
use feed_core::app::redis_call;
use feed_core::{ApiError, Context, FeedError, FeedSource};
use rand::Rng as _;
use stage_1::PostsWithAuthors;
use stage_2::CacheConfig;

use crate::Mistake;

const LOCK_MS: u64 = 2000;
const WAIT_STEP: Duration = Duration::from_millis(20);
const WAIT_ROUNDS: u32 = 50;

pub struct LearnerCache {
    inner: PostsWithAuthors,
    redis: RedisConn,
    config: CacheConfig,
    mistake: Mistake,
}

impl LearnerCache {
    pub fn new(ctx: &Context, config: CacheConfig, mistake: Mistake) -> Self {
        Self { inner: PostsWithAuthors::new(ctx.db.clone()), redis: ctx.redis.clone(), config, mistake }
    }

    /// Where a page of `user_id`'s feed is cached (its lock: the same name plus `:lock`). The
    /// braces are a hash tag: on a Redis Cluster the key and its lock share a slot.
    fn key(&self, user_id: i64, limit: i64) -> String {
        match self.mistake {
            Mistake::KeyWithoutUser => "feed:v1".to_owned(),
            Mistake::KeyPerLimit => format!("feed:v1:{{user:{user_id}}}:limit:{limit}"),
            Mistake::KeysWithoutHashTags => format!("feed:v1:user:{user_id}"),
            _ => format!("feed:v1:{{user:{user_id}}}"),
        }
    }

    /// How many items a fill caches: the largest page, so one key serves every `limit`.
    fn page(&self, limit: i64) -> i64 {
        if self.mistake == Mistake::KeyPerLimit { limit } else { MAX_LIMIT }
    }

    /// The options after `SET key value`.
    fn expiry(&self) -> Vec<String> {
        match self.mistake {
            Mistake::NoTtl => vec![],
            _ => vec!["EX".into(), self.config.jittered_ttl().as_secs().max(1).to_string()],
        }
    }

    /// What to do with a Redis error: read Postgres instead, or (redis-error-500) fail the request.
    fn redis_failed(&self, op: &str, error: redis::RedisError) -> Result<(), FeedError> {
        if self.mistake == Mistake::RedisError500 {
            return Err(FeedError::Cache(error));
        }
        tracing::warn!(op, %error, "redis unavailable: reading postgres");
        Ok(())
    }

    async fn cached(&self, key: &str) -> redis::RedisResult<Option<Vec<FeedItem>>> {
        let mut redis = self.redis.clone();
        let json: Option<String> = redis_call(redis::cmd("GET").arg(key).query_async(&mut redis)).await?;
        Ok(json.and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// A miss: one request per key fills it, the others wait for its value.
    async fn miss(&self, key: &str, user_id: i64, page: i64) -> redis::RedisResult<Result<Vec<FeedItem>, FeedError>> {
        if self.mistake == Mistake::NoStampedeLock {
            return Ok(self.fill(key, user_id, page, None).await);
        }
        let token = rand::rng().random::<u64>().to_string();
        let mut redis = self.redis.clone();
        let lock = format!("{key}:lock");
        let set = redis::cmd("SET").arg(&lock).arg(&token).arg("NX").arg("PX").arg(LOCK_MS).to_owned();
        let locked: Option<String> = redis_call(set.query_async(&mut redis)).await?;
        if locked.is_some() {
            return Ok(self.fill(key, user_id, page, Some(&token)).await);
        }
        for _ in 0..WAIT_ROUNDS {
            tokio::time::sleep(WAIT_STEP).await;
            if let Some(items) = self.cached(key).await? {
                return Ok(Ok(items));
            }
        }
        Ok(self.inner.feed(user_id, page).await)
    }

    /// Read Postgres and store the page; with a lock token, only while the lock is still ours.
    async fn fill(&self, key: &str, user_id: i64, page: i64, token: Option<&str>) -> Result<Vec<FeedItem>, FeedError> {
        let items = self.inner.feed(user_id, page).await?;
        let json = serde_json::to_string(&items).expect("feed items always serialise");
        let mut redis = self.redis.clone();
        let stored = match token {
            Some(token) if self.mistake != Mistake::FillWithoutLockCheck => {
                let mut store = STORE_IF_LOCKED.key(key);
                store.key(format!("{key}:lock")).arg(token).arg(json).arg(self.expiry());
                redis_call(store.invoke_async::<()>(&mut redis)).await
            }
            // fill-without-lock-check (and no-stampede-lock, which has no lock): a plain SET.
            _ => {
                redis_call(redis::cmd("SET").arg(key).arg(json).arg(self.expiry()).query_async::<()>(&mut redis)).await
            }
        };
        if let Err(e) = stored {
            self.redis_failed("fill", e)?;
        }
        Ok(items)
    }

    /// Delete `user_id`'s cached feed and its lock, so the next read rebuilds it.
    pub async fn invalidate(&self, user_id: i64) {
        // key-per-limit: the post handler knows no `limit`, so only the default page goes.
        let key = self.key(user_id, DEFAULT_LIMIT);
        let mut redis = self.redis.clone();
        let del = redis::cmd("DEL").arg(&key).arg(format!("{key}:lock")).to_owned();
        if let Err(error) = redis_call(del.query_async::<i64>(&mut redis)).await {
            tracing::error!(user_id, %error, "could not invalidate the cached feed");
        }
    }
}

/// `SET KEYS[1] ARGV[2..]` only while KEYS[2], the lock, still holds our token ARGV[1]: a post
/// deletes the lock with the key, so a fill that read Postgres before the post stores nothing.
static STORE_IF_LOCKED: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('get', KEYS[2]) ~= ARGV[1] then return nil end
         return redis.call('set', KEYS[1], unpack(ARGV, 2))",
    )
});

#[async_trait::async_trait]
impl FeedSource for LearnerCache {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        let (key, page) = (self.key(user_id, limit), self.page(limit));
        let items = match self.cached(&key).await {
            Ok(Some(items)) => {
                metrics::counter!("cache_hits_total").increment(1);
                items
            }
            Ok(None) => {
                metrics::counter!("cache_misses_total").increment(1);
                match self.miss(&key, user_id, page).await {
                    Ok(items) => items?,
                    Err(e) => {
                        self.redis_failed("lock", e)?;
                        self.inner.feed(user_id, page).await?
                    }
                }
            }
            Err(e) => {
                self.redis_failed("get", e)?;
                self.inner.feed(user_id, page).await?
            }
        };
        Ok(items.into_iter().take(usize::try_from(limit).unwrap_or(0)).collect())
    }

    async fn timeline_changed(&self, user_id: i64) {
        match self.mistake {
            // no-invalidation: nothing here. invalidate-before-insert: done before the insert.
            Mistake::NoInvalidation | Mistake::InvalidateBeforeInsert => {}
            _ => self.invalidate(user_id).await,
        }
    }
}

/// invalidate-before-insert: the learner's `POST /api/posts` deletes the owner's cached feed,
/// then writes the post (the core's handler, which runs after this layer).
pub fn invalidate_first(api: Router, cache: LearnerCache) -> Router {
    api.layer(axum::middleware::from_fn_with_state(std::sync::Arc::new(cache), delete_then_insert))
}

#[derive(serde::Deserialize)]
struct Owner {
    user_id: i64,
}

async fn delete_then_insert(
    State(cache): State<std::sync::Arc<LearnerCache>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST || request.uri().path() != "/api/posts" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, 64 * 1024).await {
        Ok(bytes) => bytes,
        Err(e) => return ApiError::BadRequest(format!("could not read the body: {e}")).into_response(),
    };
    if let Ok(Owner { user_id }) = serde_json::from_slice(&bytes) {
        cache.invalidate(user_id).await;
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}
