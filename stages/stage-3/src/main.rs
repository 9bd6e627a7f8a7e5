use clap::Parser;

/// The allocator of every stage: mimalloc (why: [`feed_core::Allocator`]).
#[global_allocator]
static ALLOCATOR: feed_core::Allocator = feed_core::Allocator;

/// stage-3: the cached feed, with per-user token-bucket rate limiting.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: feed_core::Config,
    #[command(flatten)]
    cache: stage_2::CacheConfig,
    #[command(flatten)]
    limits: stage_3::RateLimitConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    feed_core::run(cli.config, |ctx| stage_3::stage(ctx, cli.cache, cli.limits)).await
}
