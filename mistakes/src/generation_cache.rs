//! Stage-2 as a second learner writes it, from the brief alone, in a shape of their own: one
//! string per page (`feed:{user:ID}:page:LIMIT`), a generation counter per timeline that a post
//! bumps (a fill stores its page only if the generation it started under is still current), a lock
//! per page taken with `SET NX PX` and released after the fill, a TTL drawn below the freshness
//! bound. Without a mistake (`generation-cache`) it is right and must pass stage-2; each mistake
//! is this learner's design with one decision made otherwise, at the line where it is matched.

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use feed_core::app::redis_call;
use feed_core::auth::AuthUser;
use feed_core::{Context, FeedError, FeedSource, RedisConn};
use rand::Rng as _;
use redis::RedisResult;
use stage_1::PostsWithAuthors;
use stage_2::CacheConfig;

use crate::Mistake;

/// A lock outlives any fill it guards.
const LOCK_MS: u64 = 3000;
const POLL: Duration = Duration::from_millis(25);
const POLL_FOR: Duration = Duration::from_secs(1);

pub struct GenerationCache {
    inner: PostsWithAuthors,
    redis: RedisConn,
    config: CacheConfig,
    mistake: Mistake,
}

fn page_key(user_id: i64, limit: i64) -> String {
    format!("feed:{{user:{user_id}}}:page:{limit}")
}

fn generation_key(user_id: i64) -> String {
    format!("cache:{{user:{user_id}}}:generation")
}

fn pages_key(user_id: i64) -> String {
    format!("cache:{{user:{user_id}}}:pages")
}

/// Store the page only if the timeline's generation is still the one the fill started under; then
/// release the lock if it is still ours. KEYS: page, generation, pages, lock. ARGV: generation,
/// body, ttl (s), lock token.
static STORE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if (redis.call('get', KEYS[2]) or '0') == ARGV[1] then
           redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
           redis.call('sadd', KEYS[3], KEYS[1])
           redis.call('expire', KEYS[3], ARGV[3])
         end
         if redis.call('get', KEYS[4]) == ARGV[4] then redis.call('del', KEYS[4]) end
         return 1",
    )
});

/// A post: a new generation (fills that began before it store nothing), and every page dropped.
/// KEYS: generation, pages.
static INVALIDATE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "redis.call('incr', KEYS[1])
         redis.call('expire', KEYS[1], 600)
         for _, page in ipairs(redis.call('smembers', KEYS[2])) do redis.call('del', page) end
         redis.call('del', KEYS[2])
         return 1",
    )
});

impl GenerationCache {
    pub fn new(ctx: &Context, config: CacheConfig, mistake: Mistake) -> anyhow::Result<Self> {
        let redis = match mistake {
            // no-redis-timeout: a connection of its own, with the client's response timeout off
            // (redis-py's default, and what "the library handles it" often means).
            Mistake::NoRedisTimeout => {
                let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
                RedisConn::Single(
                    redis::Client::open(ctx.config.redis_url.as_str())?.get_connection_manager_lazy(config)?,
                )
            }
            _ => ctx.redis.clone(),
        };
        Ok(Self { inner: PostsWithAuthors::new(ctx.db.clone()), redis, config, mistake })
    }

    /// One Redis call, under a deadline (no-redis-timeout: without).
    async fn call<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> RedisResult<T> {
        let mut redis = self.redis.clone();
        match self.mistake {
            Mistake::NoRedisTimeout => command.query_async(&mut redis).await,
            _ => redis_call(command.query_async(&mut redis)).await,
        }
    }

    async fn script(&self, invocation: redis::ScriptInvocation<'_>) -> RedisResult<()> {
        let mut redis = self.redis.clone();
        match self.mistake {
            Mistake::NoRedisTimeout => invocation.invoke_async(&mut redis).await,
            _ => redis_call(invocation.invoke_async(&mut redis)).await,
        }
    }

    fn lock_key(&self, user_id: i64, limit: i64) -> String {
        match self.mistake {
            // lock-per-timeline: one fill at a time per timeline, whichever page it fills.
            Mistake::LockPerTimeline => format!("feed:{{user:{user_id}}}:lock"),
            _ => format!("feed:{{user:{user_id}}}:lock:{limit}"),
        }
    }

    /// How long a page lives: below the five minutes the brief allows, spread by up to a tenth.
    fn ttl_secs(&self) -> u64 {
        let most = self.config.cache_ttl_secs as f64;
        let factor = match self.mistake {
            // ttl-plus-jitter: "300 s ± 10 %", which reaches 330 s.
            Mistake::TtlPlusJitter => rand::rng().random_range(0.9..=1.1),
            _ => rand::rng().random_range(0.9..=1.0),
        };
        (most * factor).max(1.0) as u64
    }

    async fn page(&self, key: &str) -> RedisResult<Option<Vec<u8>>> {
        match self.mistake {
            // ttl-refresh-on-hit: a page that is read stays ("hot keys should not expire").
            Mistake::TtlRefreshOnHit => {
                self.call(redis::cmd("GETEX").arg(key).arg("EX").arg(self.ttl_secs()).to_owned()).await
            }
            _ => self.call(redis::cmd("GET").arg(key).to_owned()).await,
        }
    }

    /// Take the page's lock: true when this request is the one to fill.
    async fn lock(&self, lock: &str, token: &str) -> RedisResult<bool> {
        match self.mistake {
            // lock-without-expiry: released after a fill that succeeds; a fill that fails
            // leaves it for ever.
            Mistake::LockWithoutExpiry => {
                let taken: Option<String> =
                    self.call(redis::cmd("SET").arg(lock).arg(token).arg("NX").to_owned()).await?;
                Ok(taken.is_some())
            }
            // check-then-set-lock: look whether somebody holds it, and take it if not.
            Mistake::CheckThenSetLock => {
                let holder: Option<String> = self.call(redis::cmd("GET").arg(lock).to_owned()).await?;
                if holder.is_some() {
                    return Ok(false);
                }
                let set = redis::cmd("SET").arg(lock).arg(token).arg("PX").arg(LOCK_MS).to_owned();
                self.call::<()>(set).await?;
                Ok(true)
            }
            _ => {
                let set = redis::cmd("SET").arg(lock).arg(token).arg("NX").arg("PX").arg(LOCK_MS).to_owned();
                let taken: Option<String> = self.call(set).await?;
                Ok(taken.is_some())
            }
        }
    }

    /// A miss: one request per page fills it (and stores it if no post came meanwhile); the
    /// others wait for its value, then read Postgres themselves.
    async fn miss(&self, user_id: i64, limit: i64) -> RedisResult<Result<Vec<u8>, FeedError>> {
        let key = page_key(user_id, limit);
        let generation: Option<String> = self.call(redis::cmd("GET").arg(generation_key(user_id)).to_owned()).await?;
        let generation = generation.unwrap_or_else(|| "0".to_owned());
        let token = rand::rng().random::<u64>().to_string();
        let lock = self.lock_key(user_id, limit);
        if self.lock(&lock, &token).await? {
            // Somebody may have filled it between our miss and our lock.
            if let Some(body) = self.page(&key).await? {
                let _: RedisResult<i64> = self.call(redis::cmd("DEL").arg(&lock).to_owned()).await;
                return Ok(Ok(body));
            }
            let body = match self.inner.feed_json(user_id, limit).await {
                Ok(body) => body,
                Err(e) => return Ok(Err(e)),
            };
            let mut store = STORE.key(&key);
            store.key(generation_key(user_id)).key(pages_key(user_id)).key(&lock);
            store.arg(&generation).arg(&body).arg(self.ttl_secs()).arg(&token);
            if let Err(error) = self.script(store).await {
                tracing::warn!(%error, "could not store a page");
            }
            return Ok(Ok(body));
        }
        let waited = tokio::time::Instant::now();
        while waited.elapsed() < POLL_FOR {
            tokio::time::sleep(POLL).await;
            if let Some(body) = self.page(&key).await? {
                return Ok(Ok(body));
            }
        }
        Ok(self.inner.feed_json(user_id, limit).await)
    }

    /// Drop `user_id`'s pages and start a new generation.
    pub async fn invalidate(&self, user_id: i64) {
        let mut invalidate = INVALIDATE.key(generation_key(user_id));
        invalidate.key(pages_key(user_id));
        if let Err(error) = self.script(invalidate).await {
            tracing::error!(user_id, %error, "could not invalidate");
        }
    }
}

#[async_trait::async_trait]
impl FeedSource for GenerationCache {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<feed_core::api::FeedItem>, FeedError> {
        let body = self.feed_json(user_id, limit).await?;
        let feed: feed_core::api::Feed = serde_json::from_slice(&body).map_err(FeedError::Decode)?;
        Ok(feed.items)
    }

    async fn feed_json(&self, user_id: i64, limit: i64) -> Result<Vec<u8>, FeedError> {
        match self.page(&page_key(user_id, limit)).await {
            Ok(Some(body)) => {
                metrics::counter!("cache_hits_total").increment(1);
                return Ok(body);
            }
            Ok(None) => metrics::counter!("cache_misses_total").increment(1),
            Err(error) => {
                tracing::warn!(%error, "redis unavailable: reading postgres");
                return self.inner.feed_json(user_id, limit).await;
            }
        }
        match self.miss(user_id, limit).await {
            Ok(result) => result,
            Err(error) => {
                tracing::warn!(%error, "redis unavailable: reading postgres");
                self.inner.feed_json(user_id, limit).await
            }
        }
    }

    async fn timeline_changed(&self, user_id: i64) {
        // invalidate-author-not-owner: done by its own layer, for the caller.
        if self.mistake != Mistake::InvalidateAuthorNotOwner {
            self.invalidate(user_id).await;
        }
    }
}

/// invalidate-author-not-owner: "when I post, my feed changes": after a 201 from POST /api/posts,
/// the caller's own timeline is invalidated, not the timeline the post was written to.
pub fn invalidate_callers_feed(api: Router, cache: GenerationCache) -> Router {
    api.layer(axum::middleware::from_fn_with_state(std::sync::Arc::new(cache), after_post))
}

async fn after_post(State(cache): State<std::sync::Arc<GenerationCache>>, request: Request, next: Next) -> Response {
    let posting = request.method() == Method::POST && request.uri().path() == "/api/posts";
    let caller = request.extensions().get::<AuthUser>().copied();
    let response = next.run(request).await;
    if let (true, Some(caller), StatusCode::CREATED) = (posting, caller, response.status()) {
        cache.invalidate(caller.id).await;
    }
    response
}
