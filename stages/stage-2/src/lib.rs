//! stage-2: stage-1's query, with a Redis cache in front of it.

mod cache;

pub use cache::{CacheConfig, CachedFeed};

pub async fn stage(ctx: feed_core::Context, cache: CacheConfig) -> anyhow::Result<feed_core::Stage> {
    Ok(feed_core::Stage::new("stage-2", cached_feed(ctx, cache).await?))
}

/// Stage-1's source (and the index it needs) behind the cache.
pub async fn cached_feed(
    ctx: feed_core::Context,
    cache: CacheConfig,
) -> anyhow::Result<CachedFeed<stage_1::PostsWithAuthors>> {
    stage_1::migrate(&ctx.db).await?;
    // The decorator: the cache wraps the fixed query. Caching stage-0's N+1 instead would make
    // every miss cost 21 round trips.
    Ok(CachedFeed::new(stage_1::PostsWithAuthors::new(ctx.db.clone()), ctx.redis, cache))
}
