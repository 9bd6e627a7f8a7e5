//! The feed service of this incident: its `GET /api/feed`, as it runs in production: the
//! timeline query behind a Redis cache (one hash per timeline, a field per page size; a lock per
//! page while one request fills it; a post drops the hash).

use std::time::Duration;

use chrono::{DateTime, Utc};
use feed_core::api::{Author, FeedItem, MAX_LIMIT};
use feed_core::{FeedError, FeedSource, RedisConn};
use rand::Rng as _;
use redis::AsyncCommands as _;
use sqlx::PgPool;
pub async fn stage(ctx: feed_core::Context) -> anyhow::Result<feed_core::Stage> {
    timeline_index(&ctx.db).await?;
    let redis = ctx.redis.clone();
    Ok(feed_core::Stage::new("incident", Cached { inner: Timeline { db: ctx.db }, redis }))
}

/// The index the timeline query needs, created at start (one instance at a time).
async fn timeline_index(db: &PgPool) -> anyhow::Result<()> {
    let mut conn = db.acquire().await?;
    sqlx::query("select pg_advisory_lock(7001)").execute(&mut *conn).await?;
    let created =
        sqlx::query("create index if not exists idx_posts_user_created on posts (user_id, created_at desc, id desc)")
            .execute(&mut *conn)
            .await;
    sqlx::query("select pg_advisory_unlock(7001)").execute(&mut *conn).await?;
    created?;
    Ok(())
}

/// One Redis call, under the service's deadline: a Redis that does not answer counts as down.
async fn call<T>(call: impl std::future::Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
    feed_core::app::redis_call(call).await
}

/// The hash of `user_id`'s cached pages: one field per page size.
fn feed_key(user_id: i64) -> String {
    format!("feed:{{user:{user_id}}}")
}

fn lock_key(user_id: i64, limit: i64) -> String {
    format!("feed:{{user:{user_id}}}:lock:{limit}")
}

/// Store a page only while its lock is still ours (a post deletes the lock with the hash).
/// KEYS: the hash, the page's lock. ARGV: the lock token, the page size, the body, the TTL (s).
static FILL: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('get', KEYS[2]) ~= ARGV[1] then return 0 end
         redis.call('hset', KEYS[1], ARGV[2], ARGV[3])
         if redis.call('ttl', KEYS[1]) < 0 then redis.call('expire', KEYS[1], ARGV[4]) end
         return 1",
    )
});

struct Cached {
    inner: Timeline,
    redis: RedisConn,
}

impl Cached {
    async fn get(&self, user_id: i64, limit: i64) -> redis::RedisResult<Option<Vec<u8>>> {
        let mut redis = self.redis.clone();
        call(redis.hget(feed_key(user_id), limit)).await
    }

    async fn fill(&self, user_id: i64, limit: i64, token: &str) -> Result<Vec<u8>, FeedError> {
        let body = self.inner.feed_json(user_id, limit).await?;
        // Five minutes at most (an author's new name must show by then), spread below that.
        let ttl = (300.0 * rand::rng().random_range(0.9..=1.0)) as u64;
        let mut redis = self.redis.clone();
        let mut fill = FILL.key(feed_key(user_id));
        fill.key(lock_key(user_id, limit)).arg(token).arg(limit).arg(&body).arg(ttl);
        if let Err(error) = call(fill.invoke_async::<i64>(&mut redis)).await {
            tracing::warn!(%error, "could not store a page");
        }
        Ok(body)
    }

    async fn miss(&self, user_id: i64, limit: i64) -> redis::RedisResult<Result<Vec<u8>, FeedError>> {
        let token = rand::rng().random::<u64>().to_string();
        let mut redis = self.redis.clone();
        let lock = redis::cmd("SET").arg(lock_key(user_id, limit)).arg(&token).arg("NX").arg("PX").arg(2000).to_owned();
        let locked: Option<String> = call(lock.query_async(&mut redis)).await?;
        if locked.is_some() {
            return Ok(self.fill(user_id, limit, &token).await);
        }
        let waited = tokio::time::Instant::now();
        while waited.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(body) = self.get(user_id, limit).await? {
                return Ok(Ok(body));
            }
        }
        Ok(self.inner.feed_json(user_id, limit).await)
    }
}

#[async_trait::async_trait]
impl FeedSource for Cached {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        self.inner.feed(user_id, limit).await
    }

    async fn feed_json(&self, user_id: i64, limit: i64) -> Result<Vec<u8>, FeedError> {
        match self.get(user_id, limit).await {
            Ok(Some(body)) => Ok(body),
            Ok(None) => match self.miss(user_id, limit).await {
                Ok(result) => result,
                Err(_) => self.inner.feed_json(user_id, limit).await,
            },
            Err(_) => self.inner.feed_json(user_id, limit).await,
        }
    }

    async fn timeline_changed(&self, user_id: i64) {
        let keys: Vec<String> =
            std::iter::once(feed_key(user_id)).chain((1..=MAX_LIMIT).map(|limit| lock_key(user_id, limit))).collect();
        let mut redis = self.redis.clone();
        if let Err(error) = call(redis.del::<_, i64>(&keys)).await {
            tracing::error!(user_id, %error, "could not drop the cached pages");
        }
    }
}

struct Timeline {
    db: PgPool,
}

#[derive(sqlx::FromRow)]
struct FeedRow {
    id: i64,
    body: String,
    created_at: DateTime<Utc>,
    author_id: i64,
    author_name: String,
    author_avatar: String,
}

impl From<FeedRow> for FeedItem {
    fn from(row: FeedRow) -> Self {
        Self {
            id: row.id,
            body: row.body,
            created_at: row.created_at,
            author: Author { id: row.author_id, name: row.author_name, avatar: row.author_avatar },
        }
    }
}

#[async_trait::async_trait]
impl FeedSource for Timeline {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        let rows: Vec<FeedRow> = sqlx::query_as(
            "select p.id, p.body, p.created_at, u.id as author_id, u.name as author_name, u.avatar as author_avatar
             from posts p join users u on u.id = p.author_id
             where p.user_id = $1
             order by p.created_at desc, p.id desc
             limit $2",
        )
        .bind(user_id)
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        Ok(rows.into_iter().map(FeedItem::from).collect())
    }
}
