//! `incidents NAME [--repaired]`: the feed service of one incident, served like a stage, so the
//! checker can page on-call with it (`cargo kata incident start`), grade a diagnosis against it,
//! and verify its repair. `incidents --list` prints the incidents.

use clap::Parser;

macro_rules! incidents {
    ($($name:ident),+ $(,)?) => {
        mod code {
            $(pub mod $name {
                include!(concat!(env!("OUT_DIR"), "/", stringify!($name), ".rs"));
            })+
        }
        mod repaired {
            $(pub mod $name {
                include!(concat!(env!("OUT_DIR"), "/", stringify!($name), "_repaired.rs"));
            })+
        }

        /// The incidents, by the name the checker uses (`lazy-authors`).
        const NAMES: &[&str] = &[$(stringify!($name)),+];

        async fn stage(name: &str, repaired: bool, ctx: feed_core::Context) -> anyhow::Result<feed_core::Stage> {
            match (name.replace('-', "_").as_str(), repaired) {
                $((stringify!($name), false) => code::$name::stage(ctx).await,
                  (stringify!($name), true) => repaired::$name::stage(ctx).await,)+
                _ => anyhow::bail!("no incident {name}; `incidents --list` names them"),
            }
        }
    };
}

incidents!(
    cast_defeats_index,
    join_without_index,
    lazy_and_cast,
    lazy_authors,
    lazy_posts,
    pool_of_two,
    redis_without_timeout,
    shared_cache_key,
    stuck_lock,
    ttl_forever,
);

/// The feed service of one incident (see checker/incidents.toml).
#[derive(Parser)]
#[command(version, after_help = "`incidents --list` prints every incident.")]
struct Cli {
    /// The incident to serve.
    incident: String,
    /// Serve its repair instead (its code with incidents/repairs/NAME.diff applied).
    #[arg(long)]
    repaired: bool,
    #[command(flatten)]
    config: feed_core::Config,
}

/// The services' allocator (see `feed_core::Allocator`).
#[global_allocator]
static ALLOCATOR: feed_core::Allocator = feed_core::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().skip(1).any(|arg| arg == "--list") {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for name in NAMES {
            if writeln!(out, "{}", name.replace('_', "-")).is_err() {
                break;
            }
        }
        return Ok(());
    }
    let cli = Cli::parse();
    let (name, repaired) = (cli.incident.clone(), cli.repaired);
    feed_core::run(cli.config, move |ctx| async move { stage(&name, repaired, ctx).await }).await
}
