//! `loadtest`: drive `GET /api/feed` with Goose and judge it against the SLO.
//!
//! See `loadtest --help`. The modules follow a run: [`cli`] reads what to do, [`harness`] builds
//! and starts the services and the target (a [`kata_services::Implementation`]), [`load`] is the Goose load and its gate,
//! [`probes`] reads what Goose cannot see, [`capacity`] searches the highest rate held,
//! [`progress`] shows it all happening, [`report`] prints the summary and writes the tables,
//! [`chart`] draws them, and [`run`] ties them together.

mod capacity;
mod chart;
mod cli;
mod harness;
mod load;
mod probes;
mod progress;
mod report;
mod run;
mod scale_out;

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    let run = async {
        match cli.command {
            Some(cli::Command::Matrix(args)) => run::matrix(args).await,
            Some(cli::Command::Capacity(args)) => run::capacity(args).await,
            None => run::single(cli.run).await,
        }
    };
    // The services and the target run in process groups of their own, out of the terminal's
    // reach: a signal drops the run, whose drops stop them. (During an attack Goose takes
    // Ctrl-C itself: the attack ends early and the run finishes, stopping them too.)
    tokio::select! {
        outcome = run => outcome,
        signal = kata_services::stop_signal() => Err(anyhow::anyhow!("{signal}; everything the load test started is stopped")),
    }
}
