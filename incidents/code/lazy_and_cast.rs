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
struct PostRow {
    id: i64,
    author_id: i64,
    body: String,
    created_at: DateTime<Utc>,
}

#[async_trait::async_trait]
impl FeedSource for Timeline {
    async fn feed(&self, user_id: i64, limit: i64) -> Result<Vec<FeedItem>, FeedError> {
        let posts: Vec<PostRow> = sqlx::query_as(
            "select id, author_id, body, created_at from posts
             where user_id::text = $1
             order by created_at desc, id desc
             limit $2",
        )
        .bind(user_id.to_string())
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        let mut items = Vec::with_capacity(posts.len());
        for post in posts {
            let (id, name, avatar): (i64, String, String) =
                sqlx::query_as("select id, name, avatar from users where id = $1")
                    .bind(post.author_id)
                    .fetch_one(&self.db)
                    .await?;
            items.push(FeedItem {
                id: post.id,
                body: post.body,
                created_at: post.created_at,
                author: Author { id, name, avatar },
            });
        }
        Ok(items)
    }
}
