//! stage-1: the feed in one statement.

mod feed;

pub use feed::PostsWithAuthors;

pub fn stage(ctx: feed_core::Context) -> feed_core::Stage {
    feed_core::Stage::new("stage-1", PostsWithAuthors::new(ctx.db))
}
