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

        /// An incident's code whole, as `cargo kata incident fix` puts it in workbench/src/lib.rs.
        fn code_text(name: &str) -> Option<&'static str> {
            match name.replace('-', "_").as_str() {
                $(stringify!($name) => Some(include_str!(concat!(env!("OUT_DIR"), "/", stringify!($name), ".lib.rs"))),)+
                _ => None,
            }
        }

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
#[command(
    version,
    after_help = "`incidents --list` prints every incident; `incidents NAME --code` prints an incident's code."
)]
struct Cli {
    /// The incident to serve (or KATA_INCIDENT: the checker passes it there, so that the
    /// process list does not name it).
    #[arg(env = "KATA_INCIDENT")]
    incident: String,
    /// Serve its repair instead (the healthy service its release, incidents/releases/NAME.diff,
    /// broke).
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
    // `incidents NAME --code`: print the incident's code (the workbench lib.rs it is) and stop.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--code") {
        let name = args.iter().find(|arg| !arg.starts_with("--")).map_or("", String::as_str);
        let code = code_text(name).ok_or_else(|| anyhow::anyhow!("no incident {name:?}; `incidents --list`"))?;
        print!("{code}");
        return Ok(());
    }
    let cli = Cli::parse();
    let (name, repaired) = (cli.incident.clone(), cli.repaired);
    feed_core::run(cli.config, move |ctx| async move { stage(&name, repaired, ctx).await }).await
}
