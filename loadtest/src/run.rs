//! Putting it together: a single run, or the matrix of runs on the same services.

use std::process::ExitCode;

use crate::cli::{Common, MatrixArgs, RunArgs};
use crate::harness::{Environment, build_stages, start_stage};
use crate::load::Plan;
use crate::probes::Probes;
use crate::report::{self, Row};

/// The before/after story: the N+1 at 200 users; the JOIN at 200, then at 500; the cache at 500;
/// the rate limiter at 500 with an abuser.
const MATRIX: [(u8, usize); 5] = [(0, 200), (1, 200), (1, 500), (2, 500), (3, 500)];

/// One run; the exit code says whether the gate passed.
pub async fn single(args: RunArgs) -> anyhow::Result<ExitCode> {
    let stage = args.stage.expect("clap requires --stage without a subcommand");
    let row = match &args.url {
        Some(url) => {
            // Someone else's service: count its statements only if told where its database is.
            let database_url = std::env::var("DATABASE_URL").ok().filter(|url| !url.is_empty());
            let probes = Probes::connect(database_url.as_deref()).await?;
            let base_url = url.trim_end_matches('/');
            measure(stage, args.users, base_url, &probes, &args.common, args.report_file).await?
        }
        None => {
            let bin_dir = build_stages(&[stage])?;
            let env = Environment::start(args.common.db_latency_ms).await?;
            let probes = Probes::connect(Some(&env.services.database_url)).await?;
            let service = start_stage(&bin_dir, stage, &env, &args.common.jwt_secret).await?;
            let row = measure(stage, args.users, &service.base_url, &probes, &args.common, args.report_file).await;
            drop(service);
            row?
        }
    };
    let rows = [row];
    finish(&rows, &args.common)?;
    Ok(if rows[0].gate_passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Every row of [`MATRIX`], one after the other; exits 0 once they have all run.
pub async fn matrix(args: MatrixArgs) -> anyhow::Result<ExitCode> {
    let bin_dir = build_stages(&[0, 1, 2, 3])?;
    let mut env = Environment::start(args.common.db_latency_ms).await?;
    let probes = Probes::connect(Some(&env.services.database_url)).await?;
    if let Some(dir) = &args.report_dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut rows = Vec::new();
    for (stage, users) in MATRIX {
        println!("\n=== stage-{stage} @ {users} users ===");
        env.flush_redis().await?;
        let report_files = args
            .report_dir
            .iter()
            .map(|dir| dir.join(format!("stage-{stage}-{users}.html")).display().to_string())
            .collect();
        let service = start_stage(&bin_dir, stage, &env, &args.common.jwt_secret).await?;
        let row = measure(stage, users, &service.base_url, &probes, &args.common, report_files).await;
        drop(service);
        let row = row?;
        print!("{}", report::markdown(std::slice::from_ref(&row)));
        rows.push(row);
    }
    println!("\n## Before / after\n");
    finish(&rows, &args.common)?;
    Ok(ExitCode::SUCCESS)
}

/// Drive `base_url` with Goose while reading the counters Goose cannot see.
async fn measure(
    stage: u8,
    users: usize,
    base_url: &str,
    probes: &Probes,
    common: &Common,
    report_files: Vec<String>,
) -> anyhow::Result<Row> {
    let plan = Plan {
        host: base_url.to_string(),
        users,
        abuser: stage == 3,
        run_time: common.run_time,
        think_time: common.think_time,
        ramp_time: common.ramp_time,
        gate_p99: common.gate_p99,
        gate_error_rate: common.gate_error_rate,
        report_files,
        jwt_secret: common.jwt_secret.clone(),
    };
    let before = probes.snapshot(base_url).await?;
    let sampler = probes.sample_pool(base_url);
    let outcome = crate::load::run(&plan).await?;
    let pool = sampler.finish().await;
    let after = probes.snapshot(base_url).await?;
    Row::new(stage, users, &outcome, &before, &after, pool)
}

fn finish(rows: &[Row], common: &Common) -> anyhow::Result<()> {
    print!("{}", report::markdown(rows));
    if let Some(dest) = &common.json_out {
        report::write_json(rows, dest)?;
    }
    Ok(())
}
