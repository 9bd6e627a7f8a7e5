//! Your workbench: it starts as stage-0. Change `feed.rs` (and this file, for stage-2 and
//! stage-3) until `cargo kata verify stage-N --target workbench` passes.

mod feed;

pub use feed::TimelineFeed;

pub async fn stage(ctx: feed_core::Context) -> anyhow::Result<feed_core::Stage> {
    // Your own schema changes: the .sql files in workbench/migrations/ (the timeline index).
    feed_core::db::migrate_stage(&ctx.db, sqlx::migrate!("./migrations"), "workbench").await?;
    Ok(feed_core::Stage::new("workbench", TimelineFeed::new(ctx.db)))
}
