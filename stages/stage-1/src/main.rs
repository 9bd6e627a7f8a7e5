use clap::Parser;

/// stage-1: the feed in one JOIN.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: feed_core::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    feed_core::run(cli.config, stage_1::stage).await
}
