//! `--cmd`: any program the checker starts itself. Bad commands are results with evidence and a
//! clean shutdown, never a hang or a stray process; a service in another language gets the full
//! suite.

use std::time::Duration;

use checker::{EnvOptions, KataEnv, Report, StageId, Status, Target, Verdict};

async fn env(ready_timeout: Duration) -> KataEnv {
    KataEnv::start(EnvOptions { honour_env: false, ready_timeout, ..EnvOptions::default() })
        .await
        .expect("services start")
}

async fn verify_cmd(bar: StageId, command: &str, ready_timeout: Duration) -> Report {
    let mut env = env(ready_timeout).await;
    checker::checks::verify(&mut env, bar, Target::Cmd(command.to_owned())).await.expect("verify runs")
}

fn check<'r>(report: &'r Report, name: &str) -> &'r checker::Check {
    report.checks.iter().find(|c| c.name() == name).unwrap_or_else(|| panic!("no check {name}"))
}

/// Only `starts` failed, with `evidence`, and every planned check is reported as not run.
fn assert_failed_to_start(report: &Report, bar: StageId, evidence: &[&str]) {
    assert_eq!(report.verdict, Verdict::Fail, "{}", report.to_text());
    let starts = check(report, "starts");
    assert_eq!(starts.status, Status::Fail);
    let text = starts.evidence.as_deref().unwrap_or_default();
    for needle in evidence {
        assert!(text.contains(needle), "{needle:?} not in the evidence:\n{text}");
    }
    let not_run: Vec<&str> = report.checks.iter().filter(|c| c.status == Status::NotRun).map(|c| c.name()).collect();
    let planned: Vec<&str> =
        checker::registry::planned(bar, checker::Topology::Single).iter().map(|c| c.name()).collect();
    assert_eq!(not_run, planned);
}

/// No process whose command line contains `marker` is left running.
fn assert_no_process(marker: &str) {
    let out = std::process::Command::new("pgrep").args(["-f", marker]).output().expect("pgrep runs");
    assert!(out.stdout.is_empty(), "left running: {}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_exits_at_once_fails_starts_with_its_output() {
    let report =
        verify_cmd(StageId::Stage1, "echo 'cannot open config.toml' >&2; exit 3", Duration::from_secs(10)).await;
    assert_failed_to_start(&report, StageId::Stage1, &["exited (exit status: 3)", "cannot open config.toml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_fails_after_starting_a_server_leaves_nothing_running() {
    // A wrapper script that puts the server in the background and then gives up.
    let marker = "sleep 86399.7";
    let report = verify_cmd(StageId::Stage0, &format!("{marker} & exit 3"), Duration::from_secs(10)).await;
    assert_failed_to_start(&report, StageId::Stage0, &["exited (exit status: 3)"]);
    assert_no_process(marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_never_gets_ready_fails_in_time_and_is_stopped_with_its_children() {
    // A shell that starts a child: stopping the shell alone would leave `sleep` behind.
    let marker = "sleep 86399.5";
    let report = verify_cmd(StageId::Stage0, &format!("echo booting; {marker}; true"), Duration::from_secs(2)).await;
    assert_failed_to_start(
        &report,
        StageId::Stage0,
        &["not ready within 2 s", "nothing answered on 127.0.0.1:", "booting"],
    );
    assert_no_process(marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_on_another_port_than_listen_addr_is_reported_as_such() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stage = match checker::build::build("stage-0").unwrap() {
        checker::build::Built::Binary(path) => path,
        checker::build::Built::CompileError(e) => panic!("stage-0 does not compile: {e}"),
    };
    // The service binds the port it likes, not the one it was given. (`--listen` is the flag
    // LISTEN_ADDR backs; the marker argument lets pgrep find the process.)
    let marker = format!("--listen=127.0.0.1:{port}");
    let command = format!("exec {} {marker}", stage.display());
    let report = verify_cmd(StageId::Stage0, &command, Duration::from_secs(3)).await;
    assert_failed_to_start(&report, StageId::Stage0, &["(the LISTEN_ADDR it was given)"]);
    assert_no_process(&marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_answering_garbage_fails_the_contract_with_evidence() {
    // Ready, and then nonsense for every request.
    let server = r#"
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Garbage(BaseHTTPRequestHandler):
    def answer(self):
        body = b"ready" if self.path == "/ready" else b"\x00<html>not json"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *args): pass
host, port = os.environ["LISTEN_ADDR"].rsplit(":", 1)
ThreadingHTTPServer((host, int(port)), Garbage).serve_forever()
"#;
    let path = std::env::temp_dir().join(format!("kata-garbage-{}.py", std::process::id()));
    std::fs::write(&path, server).unwrap();
    let report =
        verify_cmd(StageId::Stage1, &format!("exec python3 {}", path.display()), Duration::from_secs(10)).await;
    std::fs::remove_file(&path).unwrap();
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(check(&report, "starts").status, Status::Pass);
    for name in ["feed.matches_oracle", "errors.problem_json", "posts.read_back", "queries_per_request"] {
        assert_eq!(check(&report, name).status, Status::Fail, "{name}: {}", report.to_text());
    }
    let oracle = check(&report, "feed.matches_oracle").evidence.clone().unwrap_or_default();
    assert!(oracle.contains("not json"), "{oracle}");
}

/// The contract in another language (examples/python, FastAPI + psycopg): graded by --cmd with
/// the full suite, it meets the stage-1 bar and fails stage-2 on the cache checks alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_implementation_passes_stage_1_and_fails_stage_2_on_the_cache_checks() {
    let run_sh = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/run.sh");
    let command = run_sh.display().to_string();
    // The first start may create its virtualenv (scripts/test prepares it beforehand).
    let ready = Duration::from_secs(180);

    let one = verify_cmd(StageId::Stage1, &command, ready).await;
    assert_eq!(one.verdict, Verdict::Pass, "{}", one.to_text());

    let two = verify_cmd(StageId::Stage2, &command, ready).await;
    let failed: Vec<&str> = two.failed().map(|c| c.name()).collect();
    assert_eq!(
        failed,
        ["cache.hit_ratio", "cache.ttl_jitter", "cache.warm_read_statements", "cache.stampede"],
        "{}",
        two.to_text()
    );
    let not_applicable: Vec<&str> =
        two.checks.iter().filter(|c| c.status == Status::NotApplicable).map(|c| c.name()).collect();
    assert_eq!(
        not_applicable,
        [
            "cache.ttl_not_extended",
            "cache.invalidation",
            "cache.race_fill_vs_post",
            "cache.race_read_during_post",
            "cache.cold_read_latency",
            "redis_hung",
            "redis_down"
        ]
    );
    // Nothing in the messages assumes Rust.
    let text = two.to_text();
    for rust in ["cargo", ".rs", "crate"] {
        assert!(!two.failed().any(|c| c.summary.contains(rust)), "{rust} in a failure summary:\n{text}");
    }
}
