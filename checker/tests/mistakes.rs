//! The checker, proven against wrong solutions (mistakes/): one test per mistake of the registry
//! (checker/registry.toml), each graded through the same path as any implementation (`--cmd`) at
//! its bar and topology. A mistake must fail exactly the checks the registry lists for it, and the
//! summary of its symptom's check must match the registry's pattern: the symptom, in figures no
//! correct implementation prints, never the name of the mistake. A correct alternative must pass.
//!
//! `KATA_SOAK=N` grades each case N times (not in CI) and prints how often it was caught: a verdict
//! is a property of the code, so every run must give the same one.

use checker::build::Built;
use checker::registry::{MistakeCase, registry};
use checker::{EnvOptions, KataEnv, Report, Status, Target, Topology, Verdict};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let runs: usize = std::env::var("KATA_SOAK").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    let trials = registry()
        .mistakes
        .iter()
        .map(|case| {
            let name = match case.topology {
                Topology::Single => case.name.replace('-', "_"),
                Topology::Cluster => format!("{}_on_a_cluster", case.name.replace('-', "_")),
            };
            Trial::test(name, move || soak(case, runs))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

/// Grade `case` `runs` times; fail unless every run was caught as the registry says.
fn soak(case: &'static MistakeCase, runs: usize) -> Result<(), Failed> {
    let mut problems = Vec::new();
    for run in 1..=runs {
        // A runtime per run: no task of one run (a proxy, a fault's timer) outlives it into the
        // next, whose servers may listen on the ports this one freed.
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let report = runtime.block_on(grade(case));
        runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        if let Err(problem) = judge(case, &report) {
            problems.push(format!("run {run}: {problem}\n{}", report.to_text()));
        }
    }
    if runs > 1 {
        println!("SOAK {} ({:?}): as listed in {} of {runs} runs", case.name, case.topology, runs - problems.len());
    }
    match problems.first() {
        None => Ok(()),
        Some(first) => Err(format!("{} of {runs} runs not as listed; the first:\n{first}", problems.len()).into()),
    }
}

async fn grade(case: &MistakeCase) -> Report {
    let binary = match checker::build::build("mistakes").expect("cargo runs") {
        Built::Binary(path) => path,
        Built::CompileError(e) => panic!("mistakes does not compile:\n{e}"),
    };
    let cluster = case.topology == Topology::Cluster;
    let options = EnvOptions { honour_env: false, redis_cluster: cluster, ..EnvOptions::default() };
    let mut env = KataEnv::start(options).await.expect("services start");
    let command = format!("exec {} {}", binary.display(), case.name);
    checker::checks::verify(&mut env, case.bar, Target::Cmd(command)).await.expect("verify runs")
}

/// Whether `report` is what the registry says of `case`.
fn judge(case: &MistakeCase, report: &Report) -> Result<(), String> {
    if report.checks.iter().any(|c| c.status == Status::NotRun) {
        return Err("some checks did not run".into());
    }
    // A check the checker could not measure has caught nothing, whatever its status says.
    if let Some(errored) = report.checks.iter().find(|c| c.summary.starts_with("could not measure")) {
        return Err(format!("{} errored: {}", errored.name(), errored.summary));
    }
    let symptom = report.checks.iter().find(|c| c.id == case.symptom.check).ok_or("the symptom's check did not run")?;
    let pattern = regex::Regex::new(&case.symptom.pattern).map_err(|e| e.to_string())?;
    if !pattern.is_match(&symptom.summary) {
        return Err(format!(
            "/{}/ does not match {}'s summary {:?}",
            case.symptom.pattern,
            symptom.name(),
            symptom.summary
        ));
    }
    if case.correct {
        return match report.verdict {
            Verdict::Pass => Ok(()),
            verdict => Err(format!("a correct alternative got {verdict:?}")),
        };
    }
    let failed: Vec<_> = report.failed().map(|c| c.id).filter(|c| !case.may_fail.contains(c)).collect();
    let mut listed = case.fails.clone();
    let (mut got, mut want) = (failed.clone(), listed.clone());
    got.sort();
    want.sort();
    if got != want {
        listed.retain(|c| !failed.contains(c));
        let unexpected: Vec<_> = failed.iter().filter(|c| !case.fails.contains(c)).collect();
        return Err(format!(
            "failed {failed:?}; not failed but listed: {listed:?}; failed but not listed: {unexpected:?}"
        ));
    }
    if symptom.status != Status::Fail {
        return Err(format!("{} passed", symptom.name()));
    }
    // The learner reads a symptom, never the name of the mistake they made.
    let named = case.name.replace('-', " ");
    for text in report.failed().map(|c| c.summary.to_lowercase()) {
        if text.contains(&named) || text.contains(&case.name) {
            return Err(format!("a summary names the mistake: {text}"));
        }
    }
    Ok(())
}
