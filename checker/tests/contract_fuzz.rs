//! Contract fuzzing: Schemathesis generates requests from docs/openapi.yaml and checks every
//! answer of stage-1 and stage-3 against it (statuses, content types, headers, bodies, and that
//! schema-valid requests are accepted and schema-invalid ones refused). Each stage runs as its
//! own process on throwaway PostgreSQL and Redis, like every other test here.
//!
//! Schemathesis is pinned in contract_fuzz/requirements.txt and installed into
//! target/schemathesis-venv by contract_fuzz/install.sh (scripts/test runs it). Without that
//! virtual environment this test fails and says how to create it: it is never skipped.
//! docs/api.md ("Contract fuzzing") records the command, the cases and the result.

use std::path::{Path, PathBuf};
use std::time::Instant;

use checker::{EnvOptions, Implementation, KataEnv};
use feed_core::auth::Tier;
use feed_core::seed::Profile;

/// Test cases per API operation and phase (Schemathesis's `--max-examples`). With the coverage
/// phase's own cases this is about 480 requests per run; see docs/api.md for the measured count.
const MAX_EXAMPLES: &str = "200";
/// A fixed seed: CI runs the same cases every time, and a failure replays. Set KATA_FUZZ_SEED
/// to explore others.
const DEFAULT_SEED: &str = "1";

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract_fuzz")
}

/// The pinned Schemathesis, or a failure that says how to install it.
fn schemathesis() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = std::env::var_os("KATA_SCHEMATHESIS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/schemathesis-venv"));
    let binary = venv.join("bin/schemathesis");
    let install = "run checker/tests/contract_fuzz/install.sh (Python 3.11+ with venv; it installs the pinned \
                   requirements from PyPI; scripts/test runs it)";
    assert!(binary.is_file(), "Schemathesis is not installed in {}: {install}", venv.display());
    let wanted = std::fs::read(here().join("requirements.txt")).expect("requirements.txt is readable");
    let installed = std::fs::read(venv.join("kata-requirements.txt")).unwrap_or_default();
    assert!(
        wanted == installed,
        "{} was not built from checker/tests/contract_fuzz/requirements.txt: {install}",
        venv.display()
    );
    binary
}

/// One `schemathesis run` of the whole spec against `base_url` with `token`; panics with its
/// output unless it exits 0. Returns the summary line ("N generated, N passed, …").
async fn fuzz(stage: &str, base_url: &str, token: &str, max_examples: &str, extra: &[&str]) -> String {
    let binary = schemathesis();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    let seed = std::env::var("KATA_FUZZ_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_owned());
    // Its own working directory: Schemathesis finds no stray schemathesis.toml and leaves nothing
    // in the checkout.
    let cwd = tempfile::tempdir().expect("a temporary directory");
    let mut command = tokio::process::Command::new(&binary);
    command
        .current_dir(cwd.path())
        .env("SCHEMATHESIS_HOOKS", here().join("hooks.py"))
        .env("KATA_FUZZ_USERS", Profile::Small.users().to_string())
        .env("NO_COLOR", "1")
        .args(["run", spec.to_str().expect("a UTF-8 path"), "--url", base_url])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all", "--max-examples", max_examples, "--seed", &seed])
        .args(["--generation-database", "none", "--continue-on-failure", "--no-color"])
        .args(extra);
    let started = Instant::now();
    let output = command.output().await.expect("schemathesis starts");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!(
        "{stage}: schemathesis run --max-examples {max_examples} {} in {:.1} s:\n{text}",
        extra.join(" "),
        started.elapsed().as_secs_f64()
    );
    assert!(output.status.success(), "{stage}: Schemathesis found the service and docs/openapi.yaml disagree:\n{text}");
    let summary = text.lines().skip_while(|l| !l.starts_with("Test cases:")).nth(1).unwrap_or_default();
    summary.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_1_answers_as_the_openapi_spec_says() {
    schemathesis();
    let env = KataEnv::start(EnvOptions { honour_env: false, ..EnvOptions::default() }).await.expect("services start");
    let app = env.spawn(Implementation::Stage1).await.expect("stage-1 starts");
    let summary = fuzz("stage-1", &app.base_url, &env.token(1, Tier::Free), MAX_EXAMPLES, &[]).await;
    println!("stage-1: {summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_3_answers_as_the_openapi_spec_says_admitted_and_limited() {
    schemathesis();
    let env = KataEnv::start(EnvOptions { honour_env: false, ..EnvOptions::default() }).await.expect("services start");
    // Free: a bucket no run can empty, so every case reaches the handler and every answer carries
    // the RateLimit headers. Pro: one request a minute, so nearly every answer is the 429, with
    // Retry-After and the RateLimit headers, checked against the spec too.
    let settings = [("RATE_FREE_BURST", "1000000"), ("RATE_PRO_BURST", "1"), ("RATE_PRO_PER_MIN", "1")];
    let app = env.spawn_with(Implementation::Stage3, &settings).await.expect("stage-3 starts");
    let admitted = fuzz("stage-3", &app.base_url, &env.token(1, Tier::Free), MAX_EXAMPLES, &[]).await;
    // The 429 is the same for every request: the /api operations only, fewer cases.
    let api_only = ["--include-path-regex", "^/api/"];
    let limited = fuzz("stage-3 (429)", &app.base_url, &env.token(10, Tier::Pro), "20", &api_only).await;
    println!("stage-3: {admitted}; limited: {limited}");
}
