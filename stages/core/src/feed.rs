//! The seam each stage fills: how the feed is read.

use crate::api::{Feed, FeedItem};

/// What a feed read can fail with, with its cause. The handler answers each as it deserves
/// (`stages/core/src/error.rs`): a database that cannot serve now is a 503, anything else a 500
/// whose cause is logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The database failed the read: unreachable, out of time, or the statement failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A page kept as JSON (a cached body) did not parse back into items.
    #[error("a stored feed page does not parse: {0}")]
    Decode(#[source] serde_json::Error),
    /// The cache failed and the source failed the read with it. The reference cache never does:
    /// on any Redis error it reads the database instead (stage-2).
    #[error("the feed cache failed: {0}")]
    Cache(#[source] redis::RedisError),
}

/// Reads a user's timeline. Stage-0 implements it with lazy author loading, stage-1 with one
/// JOIN, stage-2 wraps stage-1's in a cache. The router holds it as `Arc<dyn FeedSource>`.
#[async_trait::async_trait]
pub trait FeedSource: Send + Sync + 'static {
    /// The `limit` newest posts on `user_id`'s timeline, newest first, ties broken by id
    /// descending, each with its author.
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError>;

    /// The same page as the body of a `GET /api/feed` response: a [`Feed`] serialised as JSON.
    /// The handler sends what this returns as it is. The default serialises what
    /// [`feed`](Self::feed) returns; a source that keeps responses serialised (stage-2's cache)
    /// overrides it and hands its bytes over untouched, so serving them parses and serialises
    /// nothing.
    async fn feed_json(&self, user_id: i64, limit: i64) -> Result<Vec<u8>, FeedError> {
        let items = self.feed(user_id, limit).await?;
        Ok(serde_json::to_vec(&Feed { user_id, items }).expect("a feed always serialises"))
    }

    /// Called after a post is written to `user_id`'s timeline. Sources that keep copies of the
    /// feed (a cache) drop them here so the next read shows the post.
    async fn timeline_changed(&self, _user_id: i64) {}
}
