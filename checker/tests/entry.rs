//! The way in shows symptoms only: before the learner has measured anything and stated a
//! diagnosis, nothing they are likely to read names the cause or its fix. The README's first lines,
//! every `--help` of the checker and the load test, and what `verify stage-0` prints.

use checker::checks::Selection;
use checker::{EnvOptions, Implementation, KataEnv, StageId, Target};

/// Words and SQL that give the diagnosis away.
fn spoilers(text: &str) -> Vec<&'static str> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric() && c != '+').collect();
    let mut found = Vec::new();
    if lower.contains("n+1") {
        found.push("N+1");
    }
    if words.contains(&"join") || words.contains(&"joins") {
        found.push("JOIN");
    }
    if lower.contains("from users where id") || lower.contains("select id, name, avatar") {
        found.push("the author lookup's SQL");
    }
    found
}

/// `--help` of `binary` and of each of its subcommands (listed under "Commands:"), recursively.
fn helps(binary: &std::path::Path, path: &[&str]) -> Vec<(String, String)> {
    let mut args: Vec<&str> = path.to_vec();
    args.push("--help");
    let out = std::process::Command::new(binary).args(&args).output().expect("the binary runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut all = vec![(format!("{} {}", binary.display(), args.join(" ")), text.clone())];
    let commands: Vec<String> = text
        .split("Commands:")
        .nth(1)
        .map(|rest| rest.split("\n\n").next().unwrap_or_default())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    for command in &commands {
        let mut deeper = path.to_vec();
        deeper.push(command);
        all.extend(helps(binary, &deeper));
    }
    all
}

fn binary(package: &str) -> std::path::PathBuf {
    match checker::build::build(package).expect("cargo runs") {
        checker::build::Built::Binary(path) => path,
        checker::build::Built::CompileError(e) => panic!("{package} does not compile:\n{e}"),
    }
}

#[test]
fn no_help_of_the_checker_the_load_test_or_the_service_names_the_cause() {
    // The service's own `--help` (stage-0's, the workbench's) lists its settings, read early.
    for package in ["checker", "loadtest", "stage-0", "workbench"] {
        let helps = helps(&binary(package), &[]);
        assert!(!helps.is_empty(), "{package}: no help text");
        for (invocation, text) in helps {
            assert!(spoilers(&text).is_empty(), "`{invocation}` says {:?}:\n{text}", spoilers(&text));
        }
    }
}

#[test]
fn the_readme_opens_with_symptoms() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let head: String = readme.lines().take(20).collect::<Vec<_>>().join("\n");
    assert!(spoilers(&head).is_empty(), "the README's first 20 lines say {:?}", spoilers(&head));
    // The settings file it links as "every setting", read before any measurement.
    let settings = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../.env.example")).unwrap();
    assert!(spoilers(&settings).is_empty(), ".env.example says {:?}", spoilers(&settings));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// The workbench a clone starts with (checker/start/) passes stage-0's bar, whose contract checks
/// compare every response with stage-0's: it serves what stage-0 serves. And what it prints names
/// the symptom, never the cause.
async fn verify_stage_0_shows_the_incident_not_its_cause() {
    let mut env = KataEnv::start(EnvOptions { honour_env: false, ..EnvOptions::default() }).await.expect("services");
    let target = Target::Implementation(Implementation::Workbench);
    let report = checker::checks::verify_checks(&mut env, StageId::Stage0, target, &Selection::default())
        .await
        .expect("verify runs");
    assert!(report.passed, "{}", report.to_text());
    let text = report.to_text();
    assert!(spoilers(&text).is_empty(), "verify stage-0 says {:?}:\n{text}", spoilers(&text));
    // The statement count is the diagnosis' first answer; the statements are its second.
    for leak in ["21 statements", "statements per feed request", "from users where"] {
        assert!(!text.contains(leak), "the diagnosis leaked ({leak:?}):\n{text}");
    }
    let json = serde_json::to_string(&report).unwrap();
    assert!(spoilers(&json).is_empty() && !json.contains("\"queries_per_request\":21"), "{json}");
}
