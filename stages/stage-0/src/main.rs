use clap::Parser;

/// stage-0: the feed service as it shipped (correct, and slow under load).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: feed_core::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    feed_core::run(cli.config, stage_0::stage).await
}
