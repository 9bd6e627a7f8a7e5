//! stage-0: the feed as it shipped. The response is right; the way it is read is not.

mod feed;

pub use feed::PostsThenAuthors;

pub fn stage(ctx: feed_core::Context) -> feed_core::Stage {
    feed_core::Stage::new("stage-0", PostsThenAuthors::new(ctx.db))
}
