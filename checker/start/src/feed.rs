//! A user's feed: the newest posts of their timeline, each with its author.

use chrono::{DateTime, Utc};
use feed_core::api::{Author, FeedItem};
use feed_core::{FeedError, FeedSource};
use sqlx::PgPool;

pub struct TimelineFeed {
    db: PgPool,
}

impl TimelineFeed {
    pub fn new(db: PgPool) -> Self {
        Self { db }
    }
}

#[derive(sqlx::FromRow)]
struct PostRow {
    id: i64,
    author_id: i64,
    body: String,
    created_at: DateTime<Utc>,
}

impl PostRow {
    /// The post's author.
    async fn author(&self, db: &PgPool) -> Result<Author, sqlx::Error> {
        sqlx::query_as::<_, (i64, String, String)>("select id, name, avatar from users where id = $1")
            .bind(self.author_id)
            .fetch_one(db)
            .await
            .map(|(id, name, avatar)| Author { id, name, avatar })
    }
}

#[async_trait::async_trait]
impl FeedSource for TimelineFeed {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        let posts = sqlx::query_as::<_, PostRow>(
            "select id, author_id, body, created_at
             from posts
             where user_id = $1
             order by created_at desc, id desc
             limit $2",
        )
        .bind(user_id)
        .bind(limit)
        .fetch_all(&self.db)
        .await?;

        let mut items = Vec::with_capacity(posts.len());
        for post in posts {
            let author = post.author(&self.db).await?;
            items.push(FeedItem { id: post.id, body: post.body, created_at: post.created_at, author });
        }
        Ok(items)
    }
}
