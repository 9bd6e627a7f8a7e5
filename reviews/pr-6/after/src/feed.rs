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

/// One row per post, its author's columns alongside.
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
impl FeedSource for TimelineFeed {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        // The page and its authors in one statement (it was 1 + limit: one lookup per post),
        // read in index order from migrations/0001_timeline_index.sql.
        let rows = sqlx::query_as::<_, FeedRow>(
            "select p.id, p.body, p.created_at,
                    u.id as author_id, u.name as author_name, u.avatar as author_avatar
             from posts p
             left join users u on p.author_id = u.id
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
