//! The command line: one run (`loadtest --stage N --users U`), the before/after `matrix`, or a
//! `capacity` search.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use kata_services::Implementation;

/// Load test `GET /api/feed` with Goose and judge it against the SLO: p99 < 500 ms, < 1 % errors.
///
/// Starts PostgreSQL, Redis and the latency proxy (or uses DATABASE_URL / REDIS_URL), seeds the
/// medium data set, starts the stage (or the workbench) as its own process and drives it with one
/// free-tier user per Goose user. Beside Goose's figures it reports statements per request
/// (pg_stat_statements), DB pool use and the cache hit ratio (the service's /metrics). Exits
/// non-zero when the gate fails.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every lesson one after the other on the same services and print a before/after
    /// summary: stage-0 @ 200 and @ 500 users, stage-1 @ 200 and @ 500, stage-2 @ 500 without and
    /// with an abuser, stage-3 @ 500 with the abuser; then each stage's capacity (see `capacity`)
    /// and a chart.
    ///
    /// Exits 0 once the matrix has run; each row shows its own gate verdict.
    Matrix(MatrixArgs),
    /// Find the highest request rate a stage sustains (p99 < gate, errors < gate) in an open
    /// model: many users with no think time, Goose's request throttle stepping the rate up until
    /// the gate fails, then halving the gap. GET /health is measured the same way, on the same
    /// service, as the machine's ceiling.
    Capacity(CapacityArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// What to load test: 0 (the feed as shipped), 1, 2 (+ Redis cache), 3 (+ rate limit; adds an
    /// abuser), or workbench (your fix, built and started like the stages).
    #[arg(
        long,
        visible_alias = "target",
        required = true,
        value_name = "0|1|2|3|workbench",
        hide_possible_values = true
    )]
    pub stage: Option<Implementation>,
    /// Simulated users, each a distinct free-tier user reading their own feed.
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// Add the abuser (one user requesting in a tight loop) to a run of any target; stage-3 runs
    /// have it anyway.
    #[arg(long)]
    pub abuser: bool,
    /// Load test a service already running at URL (such as http://127.0.0.1:8080) instead of
    /// starting one. Statements are then counted only when DATABASE_URL points at its database.
    #[arg(long)]
    pub url: Option<String>,
    /// Start this many instances of the target behind HAProxy (round-robin) and load them
    /// through it; the summary adds requests per instance and commands per Redis node.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8), conflicts_with = "url")]
    pub instances: u8,
    /// Give the instances a Redis Cluster (3 masters, 3 replicas) instead of one Redis; they sit
    /// behind HAProxy even when there is one. See docs/scale-out.md.
    #[arg(long, conflicts_with = "url")]
    pub redis_cluster: bool,
    /// Write Goose's report to FILE; the extension picks the format: .html, .json or .md.
    /// Repeatable.
    #[arg(long, value_name = "FILE")]
    pub report_file: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct MatrixArgs {
    /// Where the matrix writes what it measured: each row's Goose reports (stage-N-USERS.html and
    /// .md), summary.md (the wide table), results.json and the chart (matrix.svg, matrix.png).
    #[arg(long, visible_alias = "report-dir", value_name = "DIR", default_value = "target/loadtest")]
    pub out_dir: PathBuf,
    /// Also measure the workbench: a row at 500 users and its capacity.
    #[arg(long)]
    pub workbench: bool,
    /// Skip the capacity searches (about two thirds of the matrix's time).
    #[arg(long)]
    pub no_capacity: bool,
    #[command(flatten)]
    pub search: SearchArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct CapacityArgs {
    /// What to search: 0, 1, 2, 3 or workbench.
    #[arg(long, visible_alias = "target", value_name = "0|1|2|3|workbench", hide_possible_values = true)]
    pub stage: Implementation,
    /// Search a service already running at URL instead of starting one.
    #[arg(long)]
    pub url: Option<String>,
    #[command(flatten)]
    pub search: SearchArgs,
    #[command(flatten)]
    pub common: Common,
}

/// How the capacity search steps.
#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// How long each rate is held in the capacity search (a 2 s ramp comes on top).
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub step_time: Duration,
    /// The first rate tried, in requests per second; each step that holds doubles it.
    #[arg(long, default_value_t = 50)]
    pub start_rate: usize,
    /// The search stops here even if the service still holds.
    #[arg(long, default_value_t = 12_800)]
    pub max_rate: usize,
    /// The fewest concurrent users in a search step, each a distinct free-tier user with no think
    /// time: enough that the throttle, not the users, sets the rate. Faster steps get more, so
    /// that users make at most 50 requests a step on average. A target the load test starts also
    /// gets a free-tier bucket that never refuses (docs/loadtest.md, "Capacity"); a service at
    /// --url keeps its own, and a step says how many of its errors were 429s.
    #[arg(long, default_value_t = 400)]
    pub search_users: usize,
}

/// Options every command shares.
#[derive(Args, Debug)]
pub struct Common {
    /// How long to hold the full load once every user has started (the ramp comes on top).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub run_time: Duration,
    /// Pause after each request, as k6's `sleep(1)`: people read their feed, they don't hammer it.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub think_time: Duration,
    /// Time to start every user: a ramp, not a thundering herd at second zero.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub ramp_time: Duration,
    /// Delay the proxy adds per direction between the service and Postgres (0 = no proxy).
    #[arg(long, default_value_t = kata_services::DEFAULT_DB_LATENCY_MS)]
    pub db_latency_ms: u64,
    /// The gate: the p99 of the users' feed requests must be below this.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub gate_p99: Duration,
    /// The gate: failed feed requests (any non-2xx, 429 included), in percent, must be below this.
    #[arg(long, default_value_t = 1.0)]
    pub gate_error_rate: f64,
    /// HS256 secret that signs the users' tokens; the started service gets it as JWT_SECRET.
    #[arg(
        long,
        env = "JWT_SECRET",
        default_value = feed_core::auth::DEV_SECRET,
        hide_default_value = true,
        hide_env_values = true
    )]
    pub jwt_secret: String,
    /// Also write the results as JSON to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<String>,
    /// Also write the wide Markdown table (every column) to FILE.
    #[arg(long, value_name = "FILE")]
    pub markdown_out: Option<PathBuf>,
    /// Print Goose's own metrics tables after each run (by default they go only to report files).
    #[arg(long)]
    pub goose_output: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_run_needs_a_stage_and_the_matrix_does_not() {
        assert!(Cli::try_parse_from(["loadtest", "--users", "5"]).is_err());
        let cli = Cli::try_parse_from(["loadtest", "--stage", "2", "--run-time", "10s", "--gate-p99", "2s"]).unwrap();
        assert_eq!(cli.run.stage, Some(Implementation::Stage2));
        assert_eq!(cli.run.common.run_time, Duration::from_secs(10));
        assert_eq!(cli.run.common.gate_p99, Duration::from_secs(2));
        let cli = Cli::try_parse_from(["loadtest", "matrix", "--run-time", "20s"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Matrix(m)) if m.common.run_time == Duration::from_secs(20)));
        assert!(Cli::try_parse_from(["loadtest", "--stage", "4"]).is_err());
    }

    #[test]
    fn the_workbench_is_a_target_by_either_name() {
        let cli = Cli::try_parse_from(["loadtest", "--target", "workbench", "--abuser"]).unwrap();
        assert_eq!(cli.run.stage, Some(Implementation::Workbench));
        assert!(cli.run.abuser);
        let cli = Cli::try_parse_from(["loadtest", "capacity", "--stage", "1", "--step-time", "5s"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Capacity(c))
            if c.stage == Implementation::Stage1 && c.search.step_time == Duration::from_secs(5)));
    }
}
