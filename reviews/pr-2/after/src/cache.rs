//! Caches feeds in Redis so repeated reads skip Postgres.

use std::sync::Arc;
use std::time::Duration;

use feed_core::api::FeedItem;
use feed_core::{FeedError, FeedSource, RedisConn};
use redis::AsyncCommands as _;

/// How long a cached feed is served. Five minutes sounds about right for a feed.
const FEED_TTL: Duration = Duration::from_secs(300);

pub struct RedisFeed {
    inner: Arc<dyn FeedSource>,
    redis: RedisConn,
}

impl RedisFeed {
    pub fn new(inner: impl FeedSource, redis: RedisConn) -> Self {
        Self { inner: Arc::new(inner), redis }
    }
}

fn feed_key(user_id: i64, limit: i64) -> String {
    format!("feed:{user_id}:{limit}")
}

#[async_trait::async_trait]
impl FeedSource for RedisFeed {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        let key = feed_key(user_id, limit);
        let mut redis = self.redis.clone();

        let cached: Option<String> = redis.get(&key).await.map_err(FeedError::Cache)?;
        if let Some(json) = cached {
            return serde_json::from_str(&json).map_err(FeedError::Decode);
        }

        let items = self.inner.feed(user_id, limit).await?;
        let json = serde_json::to_string(&items).map_err(FeedError::Decode)?;
        let _: () = redis.set_ex(&key, json, FEED_TTL.as_secs()).await.map_err(FeedError::Cache)?;
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A feed source that counts how often it is read.
    struct CountingSource(Arc<AtomicUsize>);

    #[async_trait::async_trait]
    impl FeedSource for CountingSource {
        async fn feed(&self, _user_id: i64, _limit: i64) -> Result<Vec<FeedItem>, FeedError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_repeated_feed_read_is_served_from_redis() {
        // Arrange (needs a Redis: REDIS_URL, or the one on localhost)
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut redis = RedisConn::connect(&url, None, Duration::from_secs(1)).await.unwrap();
        let _: () = redis.del(feed_key(1, 20)).await.unwrap();
        let reads = Arc::new(AtomicUsize::new(0));
        let cache = RedisFeed::new(CountingSource(reads.clone()), redis);
        let first = cache.feed(1, 20).await.unwrap();

        // Act
        let second = cache.feed(1, 20).await.unwrap();

        // Assert
        assert_eq!(second, first);
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }
}
