//! stage-0: the feed as it shipped. The response is right; the way it is read is not.

mod feed;

pub use feed::PostsThenAuthors;

pub async fn stage(ctx: feed_core::Context) -> anyhow::Result<feed_core::Stage> {
    Ok(feed_core::Stage::new("stage-0", PostsThenAuthors::new(ctx.db)))
}
