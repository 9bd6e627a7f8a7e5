use clap::Parser;

/// The allocator of every stage: mimalloc (why: [`feed_core::Allocator`]).
#[global_allocator]
static ALLOCATOR: feed_core::Allocator = feed_core::Allocator;

/// workbench: your version of the feed service.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: feed_core::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    feed_core::run(cli.config, workbench::stage).await
}
