//! Every incident of the catalogue (checker/incidents.toml), started as a candidate would get it:
//! the diagnosis that the measurement supports is graded RIGHT, a wrong one WRONG with the
//! measurement that refutes it, and the reference repair (the healthy base that its release,
//! incidents/releases/NAME.diff, broke) passes `verify` at the incident's bar. Plus one whole session through the CLI: start, a wrong and a
//! right answer, the report.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use checker::incident::{Answers, Question, Session, Variant, catalogue, grade, observe, truth};
use checker::{EnvOptions, KataEnv, Target, Verdict};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let mut trials: Vec<Trial> = catalogue()
        .iter()
        .map(|incident| Trial::test(incident.name.replace('-', "_"), move || run(&incident.name)))
        .collect();
    trials.push(Trial::test("a_candidates_whole_session_through_the_cli", session));
    libtest_mimic::run(&args, trials).exit();
}

/// Answers that each get a question wrong: a statement nobody runs, counts and sizes off.
fn wrong() -> Answers {
    Answers {
        statement: Some("select * from kata_seed where profile = $1".into()),
        calls: Some(1000),
        plan_node: Some("Hash Join".into()),
        pool: Some(100),
        key: Some("nothing:here".into()),
        waits_for: Some("postgres".into()),
        wait_ms: Some("1".into()),
        ttl_s: Some("1".into()),
    }
}

fn run(name: &str) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let options = EnvOptions { honour_env: false, ..EnvOptions::default() };
        let running = checker::incident::start(Variant::new(Some(name), 1)?, options, None).await?;
        let incident = running.session.variant.incident();
        let page = running.page_text();
        for word in ["N+1", "JOIN", "lock", "timeout"] {
            if page.contains(word) {
                return Err(format!("the page names a cause ({word}):\n{page}").into());
            }
        }
        let observed = observe(&running.session).await?;
        let right = truth(incident, &observed);
        // What some incidents are known to be, whatever was measured: the grades below use the
        // measurement, so a measurement gone wrong would grade itself right.
        let limit = running.session.variant.limit.to_string();
        let known: Vec<(&str, Option<String>, &str)> = match name {
            "pool-of-two" => vec![("pool", right.pool.map(|n| n.to_string()), "2")],
            "lazy-authors" => vec![("calls", right.calls.map(|n| n.to_string()), &limit)],
            "ttl-forever" => vec![("ttl_s", right.ttl_s.clone(), "none")],
            // A request waits for Redis until the service's 10 s deadline answers it 503.
            "redis-without-timeout" => vec![
                ("waits_for", right.waits_for.clone(), "redis"),
                (
                    "wait_ms",
                    right
                        .wait_ms
                        .as_deref()
                        .and_then(|ms| ms.parse::<u64>().ok())
                        .map(|ms| ((ms + 500) / 1000).to_string()),
                    "10",
                ),
            ],
            _ => Vec::new(),
        };
        for (answer, measured, expected) in known {
            if measured.as_deref() != Some(expected) {
                return Err(
                    format!("{name}: {answer} measured {measured:?}, but it is {expected}\n{observed:#?}").into()
                );
            }
        }
        let (report, all) = grade(&running.session, &right, &observed);
        if !all {
            return Err(format!("the measured diagnosis was graded:\n{report}\n{observed:#?}").into());
        }
        let (report, all) = grade(&running.session, &wrong(), &observed);
        let wrong_count = report.matches("WRONG").count();
        if all || wrong_count != incident.asks.len() {
            return Err(format!("a wrong diagnosis was graded:\n{report}").into());
        }
        if report.contains(&incident.causes[0]) {
            return Err(format!("a wrong answer was handed the cause:\n{report}").into());
        }
        drop(running);

        // The reference repair, graded like any implementation.
        let binary = match checker::build::build("incidents")? {
            checker::build::Built::Binary(path) => path,
            checker::build::Built::CompileError(e) => return Err(e.into()),
        };
        let mut env = KataEnv::start(EnvOptions { honour_env: false, ..EnvOptions::default() }).await?;
        let command = format!("exec {} {name} --repaired", binary.display());
        let verified = checker::checks::verify(&mut env, incident.repair_bar, Target::Cmd(command)).await?;
        if verified.verdict != Verdict::Pass {
            return Err(
                format!("the reference repair does not pass {}:\n{}", incident.repair_bar, verified.to_text()).into()
            );
        }
        Ok::<(), Failed>(())
    })
}

/// `incident start --seed 1`, a wrong `incident answer`, a right one, `incident report`: the
/// commands a candidate runs, as processes.
fn session() -> Result<(), Failed> {
    let checker = env!("CARGO_BIN_EXE_checker");
    let state = tempfile::tempdir()?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let mut start = Command::new(checker)
        .args(["incident", "start", "--seed", "1", "--profile", "small", "--listen", &listen])
        .env("KATA_STATE_DIR", state.path())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // The page is printed once the incident runs; its last line says how to answer.
    let mut page = String::new();
    for line in BufReader::new(start.stdout.take().expect("piped")).lines() {
        let line = line?;
        page.push_str(&line);
        page.push('\n');
        if line.starts_with("(`cargo kata incident answer --help`") {
            break;
        }
    }
    let outcome = (|| {
        if !page.contains("PAGE") {
            return Err(format!("no page:\n{page}"));
        }
        let cli = |args: &[&str]| {
            Command::new(checker).args(args).env("KATA_STATE_DIR", state.path()).output().map_err(|e| e.to_string())
        };
        let session: Session = serde_json::from_str(
            &std::fs::read_to_string(state.path().join("incident.json")).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let incident = session.variant.incident();
        let flags = |answers: &Answers| -> Vec<String> {
            let mut args = vec!["incident".to_owned(), "answer".to_owned()];
            for question in &incident.asks {
                let value = match question {
                    Question::Statement => answers.statement.clone(),
                    Question::Calls => answers.calls.map(|n| n.to_string()),
                    Question::PlanNode => answers.plan_node.clone(),
                    Question::Pool => answers.pool.map(|n| n.to_string()),
                    Question::Key => answers.key.clone(),
                    Question::WaitsFor => answers.waits_for.clone(),
                    Question::WaitMs => answers.wait_ms.clone(),
                    Question::TtlS => answers.ttl_s.clone(),
                };
                args.push(format!("--{}", serde_json::to_value(question).unwrap().as_str().unwrap().replace('_', "-")));
                args.push(value.unwrap_or_default());
            }
            args
        };
        let wrong_run = cli(&flags(&wrong()).iter().map(String::as_str).collect::<Vec<_>>())?;
        let wrong_text = String::from_utf8_lossy(&wrong_run.stdout);
        if wrong_run.status.code() != Some(1) || !wrong_text.contains("WRONG") {
            return Err(format!("a wrong answer: {:?}\n{wrong_text}", wrong_run.status));
        }
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        let observed = runtime.block_on(observe(&session)).map_err(|e| e.to_string())?;
        let right = truth(incident, &observed);
        let right_run = cli(&flags(&right).iter().map(String::as_str).collect::<Vec<_>>())?;
        let right_text = String::from_utf8_lossy(&right_run.stdout);
        if !right_run.status.success() {
            return Err(format!("a right answer: {:?}\n{right_text}", right_run.status));
        }
        let report = cli(&["incident", "report", "--no-verify"])?;
        let report = String::from_utf8_lossy(&report.stdout);
        for expected in ["diagnosis: right after", "(1 wrong before)", "hints used: 0", "repair: not attempted"] {
            if !report.contains(expected) {
                return Err(format!("{expected:?} not in the report:\n{report}"));
            }
        }
        Ok(())
    })();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(start.id() as i32), nix::sys::signal::Signal::SIGINT);
    let _ = start.wait();
    outcome.map_err(Failed::from)
}
