use clap::Parser;

/// The allocator of every stage: mimalloc (why: [`feed_core::Allocator`]).
#[global_allocator]
static ALLOCATOR: feed_core::Allocator = feed_core::Allocator;

/// stage-2: the JOIN, with Redis cache-aside in front of it.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: feed_core::Config,
    #[command(flatten)]
    cache: stage_2::CacheConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    feed_core::run(cli.config, |ctx| stage_2::stage(ctx, cli.cache)).await
}
