//! A user's feed: the newest posts of their timeline, each with its author.

use feed_core::api::FeedItem;
use feed_core::{FeedError, FeedSource};
use sqlx::PgPool;

use crate::repository::PostRepository;

pub struct TimelineFeed {
    posts: PostRepository,
}

impl TimelineFeed {
    pub fn new(db: PgPool) -> Self {
        Self { posts: PostRepository::new(db) }
    }
}

#[async_trait::async_trait]
impl FeedSource for TimelineFeed {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        // The page's posts, each read with its author by the repository.
        let ids = self.posts.timeline_ids(user_id, limit).await?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            items.push(self.posts.find(id).await?);
        }
        Ok(items)
    }
}
