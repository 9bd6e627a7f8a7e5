//! The feed service of this incident: its `GET /api/feed`, as it runs in production.

use chrono::{DateTime, Utc};
use feed_core::api::{Author, FeedItem};
use feed_core::{FeedError, FeedSource};
use sqlx::PgPool;
pub async fn stage(ctx: feed_core::Context) -> anyhow::Result<feed_core::Stage> {
    timeline_index(&ctx.db).await?;
    Ok(feed_core::Stage::new("incident", Timeline { db: ctx.db }))
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
