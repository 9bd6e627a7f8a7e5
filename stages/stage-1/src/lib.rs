//! stage-1: the feed in one statement, on the index that statement needs.

mod feed;

pub use feed::PostsWithAuthors;

/// The schema stage-1's query needs: `migrations/` (the timeline index).
pub async fn migrate(db: &sqlx::PgPool) -> anyhow::Result<()> {
    Ok(feed_core::db::migrate_stage(db, sqlx::migrate!("./migrations"), "stage_1").await?)
}

pub async fn stage(ctx: feed_core::Context) -> anyhow::Result<feed_core::Stage> {
    migrate(&ctx.db).await?;
    Ok(feed_core::Stage::new("stage-1", PostsWithAuthors::new(ctx.db)))
}
