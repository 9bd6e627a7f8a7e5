//! `loadtest`: drive `GET /api/feed` with Goose and judge it against the SLO.
//!
//! See `loadtest --help`. The modules follow a run: [`cli`] reads what to do, [`harness`] starts
//! the services and the stage, [`load`] is the Goose load and its gate, [`probes`] reads what
//! Goose cannot see, [`report`] prints the table, and [`run`] ties them together.

mod cli;
mod harness;
mod load;
mod probes;
mod report;
mod run;

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    match cli.command {
        Some(cli::Command::Matrix(args)) => run::matrix(args).await,
        None => run::single(cli.run).await,
    }
}
