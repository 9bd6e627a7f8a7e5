//! The command line: one run (`loadtest --stage N --users U`) or the before/after `matrix`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Load test `GET /api/feed` with Goose and judge it against the SLO: p99 < 500 ms, < 1 % errors.
///
/// Starts PostgreSQL, Redis and the latency proxy (or uses DATABASE_URL / REDIS_URL), seeds the
/// medium data set, starts the stage as its own process and drives it with one free-tier user per
/// Goose user. Beside Goose's figures it reports statements per request (pg_stat_statements), DB
/// pool use and the cache hit ratio (the service's /metrics). Exits non-zero when the gate fails.
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
    /// Run every lesson one after the other on the same services and print a before/after table:
    /// stage-0 @ 200 users, stage-1 @ 200 and @ 500, stage-2 @ 500, stage-3 @ 500 (+ abuser).
    ///
    /// Exits 0 once the matrix has run; each row shows its own gate verdict.
    Matrix(MatrixArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Stage to load test: 0 (N+1), 1 (JOIN), 2 (+ Redis cache), 3 (+ rate limit; adds an abuser).
    #[arg(long, required = true, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub stage: Option<u8>,
    /// Simulated users, each a distinct free-tier user reading their own feed.
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// Load test a service already running at URL (such as http://127.0.0.1:8080) instead of
    /// starting one. Statements are then counted only when DATABASE_URL points at its database.
    #[arg(long)]
    pub url: Option<String>,
    /// Write Goose's report to FILE; the extension picks the format: .html, .json or .md.
    /// Repeatable.
    #[arg(long, value_name = "FILE")]
    pub report_file: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct MatrixArgs {
    /// Write each row's Goose report into DIR, as stage-N-USERS.html.
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

/// Options a single run and the matrix share.
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
        assert_eq!(cli.run.stage, Some(2));
        assert_eq!(cli.run.common.run_time, Duration::from_secs(10));
        assert_eq!(cli.run.common.gate_p99, Duration::from_secs(2));
        let cli = Cli::try_parse_from(["loadtest", "matrix", "--run-time", "20s"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Matrix(m)) if m.common.run_time == Duration::from_secs(20)));
        assert!(Cli::try_parse_from(["loadtest", "--stage", "4"]).is_err());
    }
}
