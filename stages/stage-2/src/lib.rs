//! stage-2: stage-1's query, with a Redis cache in front of it.

mod cache;

pub use cache::{CacheConfig, CachedFeed};

pub fn stage(ctx: feed_core::Context, cache: CacheConfig) -> feed_core::Stage {
    feed_core::Stage::new("stage-2", cached_feed(ctx, cache))
}

/// Stage-1's source behind the cache.
pub fn cached_feed(ctx: feed_core::Context, cache: CacheConfig) -> CachedFeed<stage_1::PostsWithAuthors> {
    // The decorator: the cache wraps the fixed query. Caching stage-0's N+1 instead would make
    // every miss cost 21 round trips.
    CachedFeed::new(stage_1::PostsWithAuthors::new(ctx.db.clone()), ctx.redis, cache)
}
