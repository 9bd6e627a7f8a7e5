//! Posts, as the rest of the service sees them: the SQL about posts lives here, once.

use chrono::{DateTime, Utc};
use feed_core::FeedError;
use feed_core::api::{Author, FeedItem};
use sqlx::PgPool;

#[derive(Clone)]
pub struct PostRepository {
    db: PgPool,
}

/// A post and its author, as one row.
#[derive(sqlx::FromRow)]
struct PostWithAuthor {
    id: i64,
    body: String,
    created_at: DateTime<Utc>,
    author_id: i64,
    author_name: String,
    author_avatar: String,
}

impl PostRepository {
    pub fn new(db: PgPool) -> Self {
        Self { db }
    }

    /// The ids of the newest posts on `user_id`'s timeline, newest first.
    pub async fn timeline_ids(&self, user_id: i64, limit: i64) -> Result<Vec<i64>, FeedError> {
        Ok(sqlx::query_scalar("select id from posts where user_id = $1 order by created_at desc limit $2")
            .bind(user_id)
            .bind(limit)
            .fetch_all(&self.db)
            .await?)
    }

    /// One post with its author, in a single JOIN: no separate query for the author any more.
    pub async fn find(&self, id: i64) -> Result<FeedItem, FeedError> {
        let row: PostWithAuthor = sqlx::query_as(
            "select p.id, p.body, p.created_at,
                    u.id as author_id, u.name as author_name, u.avatar as author_avatar
             from posts p
             join users u on u.id = p.author_id
             where p.id = $1",
        )
        .bind(id)
        .fetch_one(&self.db)
        .await?;
        Ok(FeedItem {
            id: row.id,
            body: row.body,
            created_at: row.created_at,
            author: Author { id: row.author_id, name: row.author_name, avatar: row.author_avatar },
        })
    }
}
