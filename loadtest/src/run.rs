//! Putting it together: a single run, the matrix of runs on the same services, or a capacity
//! search.

use std::process::ExitCode;

use kata_services::{Implementation, ServiceRedis};

use crate::capacity::{self, Capacity};
use crate::cli::{CapacityArgs, Common, MatrixArgs, RunArgs};
use crate::harness::{Environment, build_targets, start_target};
use crate::load::{Endpoint, Plan};
use crate::probes::Probes;
use crate::progress::say;
use crate::report::{self, Capacities, Provenance, Row};
use crate::scale_out::{ScaleOut, Spread};

/// One row of the matrix: what runs, at how many users, with or without the abuser.
#[derive(Debug, Clone, Copy)]
struct Spec {
    target: Implementation,
    users: usize,
    abuser: bool,
}

const fn spec(stage: usize, users: usize, abuser: bool) -> Spec {
    Spec { target: Implementation::STAGES[stage], users, abuser }
}

/// The before/after story: the N+1 at 200 users and at 500 (the pool gives up: 503s); the JOIN
/// at 200, then at 500; the cache at 500, alone and with an abuser it cannot stop; the rate
/// limiter at 500 with the same abuser.
const MATRIX: [Spec; 7] = [
    spec(0, 200, false),
    spec(0, 500, false),
    spec(1, 200, false),
    spec(1, 500, false),
    spec(2, 500, false),
    spec(2, 500, true),
    spec(3, 500, true),
];

/// Stage-3 is where the rate limiter lives: a run of it brings the abuser along by default.
fn abuser_by_default(target: Implementation) -> bool {
    target == Implementation::Stage3
}

/// One run; the exit code says whether the gate passed.
pub async fn single(args: RunArgs) -> anyhow::Result<ExitCode> {
    crate::progress::install_goose_console();
    let target = args.stage.expect("clap requires --stage without a subcommand");
    let spec = Spec { target, users: args.users, abuser: args.abuser || abuser_by_default(target) };
    let row = match &args.url {
        Some(url) => {
            // Someone else's service: count its statements only if told where its database is.
            let database_url = std::env::var("DATABASE_URL").ok().filter(|url| !url.is_empty());
            let probes = Probes::connect(database_url.as_deref()).await?;
            let base_url = url.trim_end_matches('/');
            measure(spec, base_url, &[base_url.to_owned()], &probes, &args.common, args.report_file).await?
        }
        None if args.instances > 1 || args.redis_cluster => {
            let bin_dir = build_targets(&[target])?;
            let env = Environment::start(args.common.db_latency_ms).await?;
            let probes = Probes::connect(Some(&env.services.database_url)).await?;
            let topology =
                ScaleOut::start(&bin_dir, target, &env, &args.common.jwt_secret, args.instances, args.redis_cluster)
                    .await?;
            let before = topology.counters().await?;
            let urls = topology.instance_urls();
            let mut row = measure(spec, &topology.base_url(), &urls, &probes, &args.common, args.report_file).await?;
            row.spread = Some(Spread::between(&before, &topology.counters().await?));
            row
        }
        None => {
            let bin_dir = build_targets(&[target])?;
            let env = Environment::start(args.common.db_latency_ms).await?;
            let probes = Probes::connect(Some(&env.services.database_url)).await?;
            let service =
                start_target(&bin_dir, target, &env, &args.common.jwt_secret, ServiceRedis::Direct, &[]).await?;
            let urls = [service.base_url.clone()];
            let row = measure(spec, &service.base_url, &urls, &probes, &args.common, args.report_file).await;
            drop(service);
            row?
        }
    };
    let rows = [row];
    finish(&rows, &Capacities::default(), &args.common)?;
    Ok(if rows[0].gate_passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Every row of [`MATRIX`] (and the workbench's when asked), one after the other, then each
/// target's capacity and /health's; writes the reports, the summary and the chart to the out
/// directory. Exits 0 once everything has run.
pub async fn matrix(args: MatrixArgs) -> anyhow::Result<ExitCode> {
    crate::progress::install_goose_console();
    let started = std::time::Instant::now();
    let mut specs = MATRIX.to_vec();
    if args.workbench {
        specs.push(Spec { target: Implementation::Workbench, users: 500, abuser: false });
    }
    let mut targets: Vec<Implementation> = specs.iter().map(|s| s.target).collect();
    targets.dedup();
    let bin_dir = build_targets(&targets)?;
    let mut env = Environment::start(args.common.db_latency_ms).await?;
    let probes = Probes::connect(Some(&env.services.database_url)).await?;
    let out_dir = if args.out_dir.is_absolute() {
        args.out_dir.clone()
    } else {
        kata_services::cargo::workspace().join(&args.out_dir)
    };
    std::fs::create_dir_all(&out_dir)?;
    let out_dir = out_dir.canonicalize().unwrap_or(out_dir);
    let rows = run_rows(&specs, &bin_dir, &mut env, &probes, &args.common, &out_dir).await?;
    let capacities = if args.no_capacity {
        Capacities::default()
    } else {
        measure_capacities(&targets, &bin_dir, &mut env, &args).await?
    };
    let provenance = Provenance::now(&kata_services::cargo::workspace());
    let summary = out_dir.join("summary.md");
    let mut markdown = report::markdown(&provenance, &rows, &capacities);
    markdown.push_str(&format!(
        "\nThe matrix took {:.0} s. Goose's HTML reports load their chart script from a CDN: offline, \
         their charts are blank and their tables are all there.\n",
        started.elapsed().as_secs_f64()
    ));
    std::fs::write(&summary, &markdown)?;
    report::write_json(&provenance, &rows, &capacities, &out_dir.join("results.json").display().to_string())?;
    let charts = crate::chart::draw(&provenance, &rows, &capacities, args.common.gate_p99, &out_dir);
    say(format!("\n## Before / after ({:.0} s in all)\n", started.elapsed().as_secs_f64()));
    print!("{}", report::narrow(&provenance, &rows, &capacities, args.common.gate_p99.as_millis()));
    println!("\nevery column and each run's Goose report: {}", summary.display());
    match charts {
        Ok(paths) => {
            println!("chart: {}", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
        }
        Err(e) => println!("no chart: {e:#}"),
    }
    write_extra(&provenance, &rows, &capacities, &args.common)?;
    Ok(ExitCode::SUCCESS)
}

/// Each row of the matrix in turn: its target started on an empty Redis, measured, stopped.
async fn run_rows(
    specs: &[Spec],
    bin_dir: &std::path::Path,
    env: &mut Environment,
    probes: &Probes,
    common: &Common,
    out_dir: &std::path::Path,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let name = format!("{}-{}{}", spec.target, spec.users, if spec.abuser { "-abuser" } else { "" });
        say(format!(
            "\n[{}/{}] {} @ {} users{}",
            i + 1,
            specs.len(),
            spec.target,
            spec.users,
            if spec.abuser { " + abuser" } else { "" }
        ));
        env.flush_redis().await?;
        let html = format!("{name}.html");
        let report_files =
            [html.clone(), format!("{name}.md")].iter().map(|f| out_dir.join(f).display().to_string()).collect();
        let service = start_target(bin_dir, spec.target, env, &common.jwt_secret, ServiceRedis::Direct, &[]).await?;
        let urls = [service.base_url.clone()];
        let row = measure(*spec, &service.base_url, &urls, probes, common, report_files).await;
        drop(service);
        let mut row = row?;
        row.report = Some(html);
        say(row.verdict_line());
        rows.push(row);
    }
    Ok(rows)
}

/// Each target's capacity (an open model: no think time, the throttle sets the rate), and
/// /health's once.
async fn measure_capacities(
    targets: &[Implementation],
    bin_dir: &std::path::Path,
    env: &mut Environment,
    args: &MatrixArgs,
) -> anyhow::Result<Capacities> {
    let mut capacities = Capacities::default();
    for target in targets {
        say(format!("\ncapacity of {target} (open model: no think time, the throttle sets the rate)"));
        let service =
            start_target(bin_dir, *target, env, &args.common.jwt_secret, ServiceRedis::Direct, &capacity::unlimited())
                .await?;
        if capacities.health.is_none() {
            let health = capacity::search(
                "GET /health",
                &service.base_url,
                Endpoint::Health,
                Some(&mut *env),
                &args.search,
                &args.common,
            )
            .await?;
            say(format!("  GET /health capacity: {}", health.display()));
            capacities.health = Some(health);
        }
        let found = capacity::search(
            target.name(),
            &service.base_url,
            Endpoint::Feed,
            Some(&mut *env),
            &args.search,
            &args.common,
        )
        .await?;
        drop(service);
        say(format!("  {target} capacity: {}", found.display()));
        capacities.targets.push((*target, found));
    }
    Ok(capacities)
}

/// `loadtest capacity --stage N`: /health's capacity, then the target's, on one service.
pub async fn capacity(args: CapacityArgs) -> anyhow::Result<ExitCode> {
    crate::progress::install_goose_console();
    let mut env = None;
    let mut service = None;
    let base_url = match &args.url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let bin_dir = build_targets(&[args.stage])?;
            let started = Environment::start(args.common.db_latency_ms).await?;
            let process = start_target(
                &bin_dir,
                args.stage,
                &started,
                &args.common.jwt_secret,
                ServiceRedis::Direct,
                &capacity::unlimited(),
            )
            .await?;
            let url = process.base_url.clone();
            env = Some(started);
            service = Some(process);
            url
        }
    };
    let health =
        capacity::search("GET /health", &base_url, Endpoint::Health, env.as_mut(), &args.search, &args.common).await?;
    let found: Capacity =
        capacity::search(args.stage.name(), &base_url, Endpoint::Feed, env.as_mut(), &args.search, &args.common)
            .await?;
    drop(service);
    let capacities = Capacities { health: Some(health), targets: vec![(args.stage, found)] };
    let provenance = Provenance::now(&kata_services::cargo::workspace());
    print!("\n{}", report::narrow(&provenance, &[], &capacities, args.common.gate_p99.as_millis()));
    write_extra(&provenance, &[], &capacities, &args.common)?;
    Ok(ExitCode::SUCCESS)
}

/// Drive `base_url` with Goose while reading the counters Goose cannot see (the service's own
/// from each of `instance_urls`).
async fn measure(
    spec: Spec,
    base_url: &str,
    instance_urls: &[String],
    probes: &Probes,
    common: &Common,
    report_files: Vec<String>,
) -> anyhow::Result<Row> {
    let plan = Plan {
        host: base_url.to_string(),
        users: spec.users,
        abuser: spec.abuser,
        run_time: common.run_time,
        think_time: common.think_time,
        ramp_time: common.ramp_time,
        gate_p99: common.gate_p99,
        gate_error_rate: common.gate_error_rate,
        report_files,
        jwt_secret: common.jwt_secret.clone(),
        endpoint: Endpoint::Feed,
        throttle: None,
        goose_output: common.goose_output,
        label: format!("{} @ {}", spec.target, spec.users),
    };
    let before = probes.snapshot(instance_urls).await?;
    let sampler = probes.sample_pool(instance_urls);
    let outcome = crate::load::run(&plan).await?;
    let pool = sampler.finish().await;
    let after = probes.snapshot(instance_urls).await?;
    Row::new(spec.target, spec.users, &outcome, &before, &after, pool)
}

fn finish(rows: &[Row], capacities: &Capacities, common: &Common) -> anyhow::Result<()> {
    let provenance = Provenance::now(&kata_services::cargo::workspace());
    print!("\n{}", report::narrow(&provenance, rows, capacities, common.gate_p99.as_millis()));
    write_extra(&provenance, rows, capacities, common)
}

/// `--json-out` and `--markdown-out`.
fn write_extra(provenance: &Provenance, rows: &[Row], capacities: &Capacities, common: &Common) -> anyhow::Result<()> {
    if let Some(dest) = &common.json_out {
        report::write_json(provenance, rows, capacities, dest)?;
    }
    if let Some(dest) = &common.markdown_out {
        std::fs::write(dest, report::markdown(provenance, rows, capacities))?;
        say(format!("wrote {}", dest.display()));
    }
    Ok(())
}
