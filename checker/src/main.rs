use std::process::ExitCode;

use anyhow::Context as _;
use checker::{CheckId, EnvOptions, Implementation, KataEnv, StageId, Target, Topology};
use clap::{Parser, Subcommand, ValueEnum};
use feed_core::auth::Tier;
use feed_core::seed::Profile;

/// The slow-api-kata checker: start the services, seed them, and prove what a stage claims by
/// measuring it (pg_stat_statements, EXPLAIN, Redis INFO, response codes and headers).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ServiceArgs {
    /// Delay added between the service and Postgres, per direction, in ms (0 = none).
    #[arg(long, env = "DB_LATENCY_MS", default_value_t = kata_services::DEFAULT_DB_LATENCY_MS)]
    db_latency_ms: u64,
    /// How long an implementation may take to answer GET /ready with 200 after it starts, in
    /// seconds (a first run that installs dependencies may need more).
    #[arg(long, default_value_t = checker::env::DEFAULT_READY_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    ready_timeout_secs: u64,
}

impl ServiceArgs {
    fn options(&self, profile: Profile) -> EnvOptions {
        EnvOptions {
            profile,
            db_latency_ms: self.db_latency_ms,
            honour_env: true,
            ready_timeout: std::time::Duration::from_secs(self.ready_timeout_secs),
            ..EnvOptions::default()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Start PostgreSQL, Redis and the latency proxy (or reuse DATABASE_URL/REDIS_URL), seed,
    /// serve a stage on --listen, and print what to export and a curl to try. Ctrl-C stops all.
    Up {
        #[arg(long, value_enum, default_value = "medium")]
        profile: Profile,
        /// What to serve: stage-0, stage-1, stage-2, stage-3, workbench, or none (start only the
        /// services, to run your own build against them).
        #[arg(long, default_value = "stage-0", value_parser = serve)]
        serve: std::option::Option<Implementation>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Serve this many instances behind HAProxy (round-robin, health-checked on /health),
        /// which listens on --listen. See docs/scale-out.md.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
        instances: u8,
        /// Give the instances a Redis Cluster (3 masters, 3 replicas) instead of one Redis.
        #[arg(long)]
        redis_cluster: bool,
        #[command(flatten)]
        services: ServiceArgs,
    },
    /// Load a seed profile into DATABASE_URL (deterministic; a no-op when already loaded).
    Seed {
        #[arg(long, value_enum, default_value = "medium")]
        profile: Profile,
        #[arg(long, default_value_t = feed_core::seed::DEFAULT_SEED)]
        seed: u64,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Mint a bearer token for a user (signed with JWT_SECRET, or the development secret).
    Token {
        #[arg(long)]
        user: i64,
        #[arg(long, value_enum, default_value = "free")]
        tier: Tier,
        /// Validity in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// Run the checks of every stage up to STAGE against a target and report what was measured.
    /// Exit code: 0 the bar passes, 1 a check failed, 3 not proven (nothing failed, but some
    /// checks could not be run against this target), 2 the checker itself could not run.
    Verify(VerifyArgs),
    /// The promises each brief makes and the checks that enforce them, from the checker's
    /// registry: what `verify` runs, in order, and what each check measures.
    Checks {
        /// Only the promises and checks of this bar (default: every bar).
        bar: Option<StageId>,
        /// What to print.
        #[arg(long, value_enum, default_value = "all")]
        part: checker::registry::Part,
        /// The scaled-out topology's promises and checks instead (docs/scale-out.md).
        #[arg(long, value_enum, default_value = "single")]
        topology: Topology,
        #[arg(long, value_enum, default_value = "text")]
        format: ChecksFormat,
    },
    /// Show the evidence on demand: a burst of feed requests to an implementation, its
    /// statements by calls (pg_stat_statements) and EXPLAIN (ANALYZE, BUFFERS) of each; or, with
    /// --sql, the same two tools on a statement of your own (docs/tools.md).
    Explain {
        #[arg(long, value_enum, default_value = "workbench")]
        stage: Implementation,
        /// The user whose feed is requested and explained (default: the first full timeline).
        #[arg(long)]
        user: Option<i64>,
        /// A statement of your own instead of the feed: run it, then show its pg_stat_statements
        /// line and its plan.
        #[arg(long, value_name = "SQL")]
        sql: Option<String>,
        /// How many times --sql runs it.
        #[arg(long, default_value_t = 5)]
        times: u32,
        /// The data set. `medium` (10,000 users, about a million posts) is the load test's, where
        /// plans are what production would choose; on `small` (300 users, about 10,000 posts)
        /// every plan is cheap and a missing index barely shows.
        #[arg(long, value_enum, default_value = "medium")]
        profile: Profile,
        #[command(flatten)]
        services: ServiceArgs,
    },
    /// Before you fix anything: state your diagnosis of the slow feed, and the checker grades each
    /// answer against what it measures now (statements, plans, times), saying what you missed.
    /// Exit code 0 when every answer matches the measurement, 1 otherwise.
    Diagnose {
        #[command(flatten)]
        answers: checker::diagnose::Diagnosis,
        /// What to measure (your workbench, or a reference stage).
        #[arg(long, value_enum, default_value = "workbench")]
        target: Implementation,
        /// The data set: `medium` is the load test's (10,000 users, about a million posts).
        #[arg(long, value_enum, default_value = "medium")]
        profile: Profile,
        /// Show what was measured even when an answer is wrong (giving up on finding it).
        #[arg(long)]
        reveal: bool,
        #[command(flatten)]
        services: ServiceArgs,
    },
    /// Where a bar's reference fix is explained, and its code. `verify --target workbench` offers
    /// this once your workbench passes the bar; asking before is your call (the briefs never show it).
    Solution {
        /// The bar (stage-0's "solution" is the walkthrough of its diagnosis).
        bar: StageId,
    },
    /// The next hint for a check (each run reveals one more, from a nudge to the fix). Without a
    /// check, or with a bar (stage-1…): for the first check your workbench fails there (it grades
    /// the workbench first).
    Hint {
        /// A check's name as `verify` prints it (e.g. queries_per_request), or a bar (stage-2).
        check: Option<String>,
        /// Start again from the first hint.
        #[arg(long)]
        restart: bool,
        #[command(flatten)]
        services: ServiceArgs,
    },
    /// Which bars your workbench passes, and what to read next.
    Status {
        #[command(flatten)]
        services: ServiceArgs,
    },
    /// Re-check your workbench on every save: the compile error, or the first failing check with
    /// its evidence, or the bar it now passes. Ctrl-C stops it and everything it started.
    Watch {
        /// Only this bar (default: each bar in turn, up to the first one the workbench fails).
        bar: Option<StageId>,
        #[command(flatten)]
        services: ServiceArgs,
    },
    /// Practise on-call: be paged with a production incident of the feed service, diagnose it
    /// from the symptoms and the tools, then repair it (docs/interview.md, "Running an incident").
    Incident {
        #[command(subcommand)]
        action: IncidentCommand,
    },
    /// Practise code review on a pull request to the feed service: read it, write your findings,
    /// and have them graded by line (docs/review/README.md).
    Review {
        /// The pull request: pr-1, pr-2, …
        pr: String,
        /// Grade the findings in this file (one per line: `path:line severity: text`).
        #[arg(long, value_name = "FINDINGS")]
        grade: Option<std::path::PathBuf>,
        /// Put the pull request's code in workbench/ to build, run and verify it (your files are
        /// kept aside; `cargo kata reset workbench` puts the start back).
        #[arg(long, conflicts_with = "grade")]
        apply: bool,
    },
    /// Put workbench/ back to its start (stage-0). Your files are copied aside first.
    Reset {
        /// Only `workbench` can be reset.
        #[arg(value_parser = ["workbench"])]
        what: String,
        /// Do not ask before replacing changed files.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The bar: stage-0 (the feed as shipped), stage-1, stage-2 or stage-3 (`cargo kata checks` lists each one's checks).
    stage: StageId,
    /// What to verify: a reference stage or your workbench (default: the bar's reference).
    /// The checker builds it with cargo and starts it as its own process.
    #[arg(long, value_enum, conflicts_with_all = ["url", "cmd"])]
    target: Option<Implementation>,
    /// Any implementation, in any language: the checker starts this shell command itself
    /// (with DATABASE_URL, REDIS_URL, JWT_SECRET and LISTEN_ADDR set), as often as it needs.
    #[arg(long, conflicts_with = "url")]
    cmd: Option<String>,
    /// A service you started yourself against the checker's DATABASE_URL and REDIS_URL. What
    /// needs the process in hand (a second instance, a Redis outage) is reported as not proven.
    #[arg(long)]
    url: Vec<String>,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[arg(long, value_enum, default_value = "small")]
    profile: Profile,
    /// `cluster` (stage-2 and stage-3): three instances behind HAProxy on a Redis Cluster (3
    /// masters, 3 replicas), every check through the balancer, and a master killed mid-run
    /// (docs/scale-out.md).
    #[arg(long, value_enum, default_value = "single")]
    topology: Topology,
    /// Run only this check (repeat for more): quicker while you work on one. The report then
    /// grades those checks, never the bar.
    #[arg(long, value_name = "CHECK")]
    only: Vec<CheckId>,
    /// Show what stage-0's bar measures of the database before your diagnosis is graded
    /// right (`cargo kata diagnose`): the statements and their count.
    #[arg(long)]
    reveal: bool,
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Subcommand)]
enum IncidentCommand {
    /// The incidents: each one's difficulty and what on-call is paged with.
    List {
        #[arg(long, value_enum, default_value = "text")]
        format: ChecksFormat,
    },
    /// Start an incident and page yourself with it: services (the `medium` data), the incident's
    /// service on --listen, a burst of its traffic. Ctrl-C ends it.
    Start {
        /// The incident's number in `incident list` (default: the seed's pick).
        name: Option<String>,
        /// Varies the incident (when no name is given), the service's name, the page size its
        /// clients ask for and the data (default: a new one each time).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, value_enum, default_value = "medium")]
        profile: Profile,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        services: ServiceArgs,
    },
    /// State your diagnosis of the running incident: each answer is graded against what the
    /// checker measures on it now. `incident start` says which ones the incident asks.
    Answer {
        #[command(flatten)]
        answers: checker::incident::Answers,
    },
    /// The next hint for the running incident (counted in the report).
    Hint,
    /// Put the running incident's code in workbench/ to repair it, once the diagnosis is right.
    Fix {
        /// Take the code before the diagnosis is right (the report says so).
        #[arg(long)]
        give_up: bool,
    },
    /// For the interviewer: time to the diagnosis, attempts, hints, and whether the repair passes.
    Report {
        /// Do not run `verify` on the workbench for the repair.
        #[arg(long)]
        no_verify: bool,
        #[command(flatten)]
        services: ServiceArgs,
    },
}

/// `--serve none`, or the implementation to serve.
fn serve(value: &str) -> Result<Option<Implementation>, String> {
    match value {
        "none" => Ok(None),
        other => <Implementation as ValueEnum>::from_str(other, true).map(Some),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ChecksFormat {
    Text,
    /// The tables the briefs show (written into docs/ by scripts/docs-capture).
    Markdown,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    // Ctrl-C, a closed terminal or a `kill` drops the running command, so the implementations it
    // started are stopped and the throwaway servers stopped and their data deleted.
    // Biased: `up` and `incident start` end on Ctrl-C themselves, and the same Ctrl-C wakes both
    // branches; the command's own ending (exit 0) goes first.
    let outcome = tokio::select! {
        biased;
        outcome = run(Cli::parse()) => outcome,
        signal = kata_services::stop_signal() => Err(anyhow::anyhow!("{signal}; everything the checker started is stopped")),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up { profile, serve, listen, instances, redis_cluster, services } => {
            let topology = Serving { instances, redis_cluster };
            up(profile, serve, listen, topology, services).await?
        }
        Command::Seed { profile, seed, database_url } => {
            let db =
                sqlx::PgPool::connect(&database_url).await.with_context(|| format!("connecting to {database_url}"))?;
            feed_core::db::migrate(&db).await?;
            let report = feed_core::seed::seed(&db, profile, seed).await?;
            println!(
                "{} profile {} (seed {}): {} users, {} posts in {:.1} s",
                if report.already_loaded { "already loaded:" } else { "loaded" },
                profile.name(),
                seed,
                report.users,
                report.posts,
                report.elapsed.as_secs_f64()
            );
        }
        Command::Token { user, tier, hours } => {
            let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| feed_core::auth::DEV_SECRET.into());
            println!(
                "{}",
                feed_core::auth::JwtKeys::new(&secret).mint(user, tier, std::time::Duration::from_secs(hours * 3600))
            );
        }
        Command::Verify(args) => return verify(args).await,
        Command::Checks { bar, part, topology, format } => {
            print!("{}", checker::registry::describe(bar, topology, part, format == ChecksFormat::Markdown));
        }
        Command::Hint { check, restart, services } => return hint(check, restart, &services).await,
        Command::Status { services } => {
            eprintln!("starting services and grading workbench/ against each bar…");
            let mut env = KataEnv::start(EnvOptions { quiet_builds: true, ..small(&services) }).await?;
            let (table, all_pass) = checker::learner::status(&mut env).await?;
            print!("{table}");
            return Ok(if all_pass { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Command::Watch { bar, services } => {
            eprintln!("starting services; then watching workbench/ (Ctrl-C stops)…");
            let mut env = KataEnv::start(EnvOptions { quiet_builds: true, ..small(&services) }).await?;
            checker::learner::watch(&mut env, bar).await?;
        }
        Command::Reset { what: _, yes } => return reset_workbench(yes),
        Command::Incident { action } => return incident(action).await,
        Command::Review { pr, grade, apply } => return review(&pr, grade.as_deref(), apply),
        Command::Solution { bar } => {
            println!("You asked for the solution of {bar}:");
            println!("  the walkthrough: docs/walkthrough/{bar}.md");
            match bar.previous() {
                None => println!("  the diagnosis it explains: `cargo kata explain --stage 0 --profile medium`"),
                Some(before) => println!("  the code: stages/{bar} (`diff -r stages/{before} stages/{bar}`)"),
            }
        }
        Command::Diagnose { answers, target, profile, reveal, services } => {
            eprintln!("starting services, seeding the {} profile and measuring {}…", profile.name(), target.name());
            let env = KataEnv::start(services.options(profile)).await?;
            let measured = checker::diagnose::measure(&env, target).await?;
            let (report, all_right) = checker::diagnose::grade(target, &answers, &measured, reveal);
            // Only a diagnosis of the incident (a statement repeated per request) unlocks what
            // `verify stage-0` hides: a right account of an already fixed feed proves nothing.
            if measured.repeated().is_some() {
                checker::learner::record_diagnosis(target, all_right)?;
            }
            print!("{report}");
            return Ok(if all_right { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Command::Explain { stage, user, sql, times, profile, services } => {
            eprintln!("starting services and seeding the {} profile…", profile.name());
            let env = KataEnv::start(services.options(profile)).await?;
            match sql {
                Some(sql) => print!("{}", checker::explain::statement(&env, &sql, times).await?),
                None => print!("{}", checker::explain::on_demand(&env, stage, user).await?),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `verify`: which target, the services it needs, the checks, the report.
async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let VerifyArgs { stage, target, cmd, url, format, profile, topology, only, reveal, services } = args;
    anyhow::ensure!(
        topology == Topology::Single || stage >= StageId::Stage2,
        "--topology cluster grades what the instances share in Redis (the cache, the buckets): \
         use it with stage-2 or stage-3"
    );
    let target = match (cmd, url.is_empty()) {
        (Some(cmd), _) => Target::Cmd(cmd),
        (None, true) => Target::Implementation(target.unwrap_or(Implementation::reference(stage))),
        (None, false) => {
            // The implementation and the checker must share the database and Redis, or the
            // checker would measure servers the implementation never talks to.
            anyhow::ensure!(
                ["DATABASE_URL", "REDIS_URL"].iter().all(|v| std::env::var(v).is_ok_and(|v| !v.is_empty())),
                "--url needs DATABASE_URL and REDIS_URL set to the servers your implementation uses \
                 (run `cargo kata up --serve none` and export what it prints), or use --cmd and let \
                 the checker start it"
            );
            anyhow::ensure!(
                topology == Topology::Single,
                "--topology cluster starts the instances itself (behind HAProxy, on the checker's \
                 Redis Cluster): use --target or --cmd, not --url"
            );
            Target::Urls(url)
        }
    };
    if format == Format::Text {
        eprintln!("starting services and seeding the {} profile…", profile.name());
    }
    let cluster = topology == Topology::Cluster;
    if cluster && format == Format::Text {
        eprintln!("and a Redis Cluster of 3 masters and 3 replicas…");
    }
    let mut env = KataEnv::start(EnvOptions { redis_cluster: cluster, ..services.options(profile) }).await?;
    let reveal = reveal || checker::learner::diagnosis() == Some(true);
    let selection = checker::checks::Selection { only, reveal };
    let report = checker::checks::verify_checks(&mut env, stage, target, &selection).await?;
    match format {
        Format::Text => print!("{}", report.to_text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(ExitCode::from(report.verdict.exit_code()))
}

/// `hint`: for a check, or for the first check the workbench fails (at a bar, or anywhere).
async fn hint(check: Option<String>, restart: bool, services: &ServiceArgs) -> anyhow::Result<ExitCode> {
    let bar = check.as_deref().and_then(|c| <StageId as ValueEnum>::from_str(c, true).ok());
    let check = match check {
        Some(check) if bar.is_none() => check.parse::<CheckId>().map_err(anyhow::Error::msg)?,
        _ => {
            eprintln!("grading workbench/ to find its first failing check…");
            let mut env = KataEnv::start(small(services)).await?;
            match checker::learner::first_failing_check(&mut env, bar).await? {
                Some(check) => check,
                None => {
                    println!(
                        "Your workbench fails no check there: no hint needed. `cargo kata status` shows where it stands."
                    );
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    };
    print!("{}", checker::learner::next_hint(check, restart)?);
    Ok(ExitCode::SUCCESS)
}

async fn incident(action: IncidentCommand) -> anyhow::Result<ExitCode> {
    use checker::incident;
    match action {
        IncidentCommand::List { format } => match format {
            ChecksFormat::Text => print!("{}", incident::list()),
            ChecksFormat::Markdown => print!("{}", incident::table()),
        },
        IncidentCommand::Start { name, seed, profile, listen, services } => {
            let seed = seed.unwrap_or_else(|| chrono::Utc::now().timestamp_micros().unsigned_abs() % 1_000_000);
            let variant = incident::Variant::new(name.as_deref(), seed)?;
            eprintln!("starting the services with the {} data (seed {seed}), and the incident…", profile.name());
            let running = incident::start(variant, services.options(profile), Some(&listen.to_string())).await?;
            running.session.save()?;
            println!("{}", running.page_text());
            eprintln!("(Ctrl-C ends the incident and stops everything it started.)");
            tokio::signal::ctrl_c().await?;
        }
        IncidentCommand::Answer { answers } => {
            let (report, all) = incident::answer(&answers).await?;
            print!("{report}");
            return Ok(if all { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        IncidentCommand::Hint => print!("{}", incident::hint()?),
        IncidentCommand::Fix { give_up } => print!("{}", incident::fix(give_up)?),
        IncidentCommand::Report { no_verify, services } => {
            let session = incident::Session::load()?;
            let verified = match (session.fixed_at_ms, no_verify) {
                (Some(_), false) => {
                    eprintln!("verifying the repair in workbench/…");
                    let mut env = KataEnv::start(small(&services)).await?;
                    let bar = session.variant.incident().repair_bar;
                    Some(
                        checker::checks::verify(&mut env, bar, Target::Implementation(Implementation::Workbench))
                            .await?,
                    )
                }
                _ => None,
            };
            print!("{}", incident::report(&session, verified.as_ref()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn review(pr: &str, grade: Option<&std::path::Path>, apply: bool) -> anyhow::Result<ExitCode> {
    let pull = checker::review::find(pr)?;
    match (grade, apply) {
        (Some(findings), _) => {
            let text = std::fs::read_to_string(findings)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", findings.display()))?;
            let (report, all) = checker::review::grade(pull, &text)?;
            print!("{report}");
            Ok(if all { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        (None, true) => {
            print!("{}", checker::review::apply(pull)?);
            Ok(ExitCode::SUCCESS)
        }
        (None, false) => {
            print!("{}", checker::review::show(pull)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The small profile, for the learner's quick loops (status, watch).
fn small(services: &ServiceArgs) -> EnvOptions {
    services.options(Profile::Small)
}

fn reset_workbench(yes: bool) -> anyhow::Result<ExitCode> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let dir = checker::learner::workbench_dir();
    let changed = checker::learner::changed_files(&dir);
    if changed.is_empty() {
        println!("workbench/ is already at its start (stage-0).");
        return forget_progress();
    }
    let backup = checker::learner::backup_dir();
    println!("These workbench files differ from the start: {}", changed.join(", "));
    println!("They will be copied to {} before being replaced.", backup.display());
    if !yes {
        if !std::io::stdin().is_terminal() {
            println!("Not replacing anything without a yes: run `cargo kata reset workbench --yes` to confirm.");
            return Ok(ExitCode::FAILURE);
        }
        print!("Replace them with stage-0? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("Left as it is.");
            return Ok(ExitCode::FAILURE);
        }
    }
    checker::learner::reset(&dir, &backup)?;
    println!("workbench/ is back at stage-0; your previous files are in {}.", backup.display());
    forget_progress()
}

/// The second half of a reset: the hints shown and the diagnosis are forgotten, and it is said.
fn forget_progress() -> anyhow::Result<ExitCode> {
    let forgotten = checker::learner::forget_progress()?;
    if forgotten.is_empty() {
        println!("No hints had been shown and no diagnosis graded: nothing else to forget.");
    } else {
        println!(
            "Your progress is reset too ({}): `cargo kata hint` starts again from the first nudge, and \
             `cargo kata diagnose` from no diagnosis.",
            forgotten.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `up` serves: how many instances, on one Redis or a cluster.
struct Serving {
    instances: u8,
    redis_cluster: bool,
}

async fn up(
    profile: Profile,
    stage: Option<Implementation>,
    listen: std::net::SocketAddr,
    topology: Serving,
    services: ServiceArgs,
) -> anyhow::Result<()> {
    eprintln!("starting PostgreSQL and Redis (or using DATABASE_URL / REDIS_URL) and seeding {}…", profile.name());
    if topology.redis_cluster {
        eprintln!("and a Redis Cluster of 3 masters and 3 replicas…");
    }
    let options = EnvOptions { redis_cluster: topology.redis_cluster, ..services.options(profile) };
    let env = KataEnv::start(options).await?;
    let s = &env.services;
    println!("# services are up; in another shell:");
    println!("export DATABASE_URL={}   # psql and the checker: straight to Postgres", s.database_url);
    match &env.cluster {
        Some(cluster) => {
            // Not exported: the checker's and the load test's own commands honour REDIS_URL and
            // would talk to one node of the cluster as if it were all of Redis.
            let settings: Vec<String> = cluster.service_env().iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("# for a service of yours: {}", settings.join(" "));
            println!("# (the cluster client uses REDIS_CLUSTER_NODES; a service still needs REDIS_URL set)");
        }
        None => println!("export REDIS_URL={}", s.redis_url),
    }
    println!(
        "export SERVICE_DATABASE_URL={}   # for a service: through the {} ms latency proxy",
        s.service_database_url, s.db_latency_ms
    );
    let user = 1;
    // Valid for a working day, so the printed curl keeps working while you do.
    let token = env.keys.mint(user, Tier::Free, std::time::Duration::from_secs(24 * 3600));
    let mut servers = Vec::new();
    let mut _balancer = None;
    match stage {
        Some(stage) => {
            feed_core::db::reset_to_core_schema(&env.admin).await?;
            // The instances get the cluster's nodes from the environment (KataEnv::app_env).
            let behind_balancer = topology.instances > 1 || env.cluster.is_some();
            for _ in 0..topology.instances {
                let own_listen = listen.to_string();
                let mut extra: Vec<(&str, &str)> = Vec::new();
                if !behind_balancer {
                    extra.push(("LISTEN_ADDR", &own_listen));
                }
                let server =
                    env.spawn_with(stage, &extra).await.with_context(|| format!("starting {}", stage.name()))?;
                servers.push(server);
            }
            if behind_balancer {
                let backends: Vec<String> =
                    servers.iter().map(|s| s.base_url.trim_start_matches("http://").to_owned()).collect();
                let balancer = kata_services::Haproxy::start(Some(listen), &backends)
                    .await
                    .with_context(|| format!("starting HAProxy on {listen} (use --listen to pick another address)"))?;
                for (server, backend) in servers.iter().zip(balancer.backends().await?) {
                    println!("# {}: {} at {} ({})", backend.name, stage.name(), server.base_url, backend.status);
                }
                println!("# HAProxy balances them round-robin on http://{listen}; try it:");
                _balancer = Some(balancer);
            } else {
                println!("# {} is serving on {}; try it:", stage.name(), servers[0].base_url);
            }
        }
        None => println!(
            "# no stage served; start yours, e.g.: DATABASE_URL=$SERVICE_DATABASE_URL LISTEN_ADDR={listen} cargo run -p stage-1"
        ),
    }
    println!("curl -s -H 'Authorization: Bearer {token}' 'http://{listen}/api/feed?limit=3'");
    println!("# Ctrl-C stops everything and deletes the throwaway data.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
