//! `mistakes NAME`: the feed service with one plausible mistake in it, served like a stage, so
//! `checker verify` can be shown to fail it. `mistakes --list` prints the catalogue.

mod cache;
mod clock_bucket;
mod contract;
mod generation_cache;
mod join;
mod limiter;
mod mistake;

use clap::{Parser, ValueEnum as _};

pub use mistake::Mistake;

/// The stages' allocator, so a mistake runs as its stage would (see [`feed_core::Allocator`]).
#[global_allocator]
static ALLOCATOR: feed_core::Allocator = feed_core::Allocator;

/// The feed service with one plausible wrong solution in it (see mistakes/README.md).
#[derive(Parser)]
#[command(version, after_help = "`mistakes --list` prints every mistake with its bar and what it does.")]
struct Cli {
    /// The mistake to serve.
    #[arg(value_enum)]
    mistake: Mistake,
    #[command(flatten)]
    config: feed_core::Config,
    #[command(flatten)]
    cache: stage_2::CacheConfig,
    #[command(flatten)]
    limits: stage_3::RateLimitConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Answered before the settings are read: listing needs no database.
    if std::env::args().skip(1).any(|arg| arg == "--list") {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for mistake in Mistake::value_variants() {
            let value = mistake.to_possible_value().expect("no variant is skipped");
            let help = value.get_help().map(ToString::to_string).unwrap_or_default();
            // `mistakes --list | head`: a reader that has seen enough closes the pipe; stop quietly.
            if writeln!(out, "{:<28} {}  {help}", value.get_name(), mistake.bar()).is_err() {
                break;
            }
        }
        return Ok(());
    }
    let cli = Cli::parse();
    let mistake = cli.mistake;
    let settings = mistake::Settings { cache: cli.cache, limits: cli.limits };
    feed_core::run(cli.config, move |ctx| async move {
        tracing::info!(?mistake, bar = mistake.bar(), "serving a mistake");
        mistake.stage(ctx, settings).await
    })
    .await
}
