//! The checker never links the workbench, so a learner in the middle of an edit keeps every
//! command: on a copy of this workspace whose workbench has a syntax error, `hint`, `status` and
//! `reset` build and work, and `status` says what is wrong.

use std::path::Path;
use std::process::{Command, Output};

/// A copy of the workspace's tracked files (not target/), built into the real target directory
/// so the dependencies are not compiled again.
fn workspace_copy() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let files = Command::new("git").args(["ls-files", "-z"]).current_dir(root).output().expect("git runs");
    let copy = tempfile::Builder::new().prefix("kata-workspace-").tempdir().unwrap();
    for file in files.stdout.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let file = Path::new(std::str::from_utf8(file).unwrap());
        let to = copy.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root.join(file), to).unwrap();
    }
    copy
}

fn kata(workspace: &Path, args: &[&str]) -> Output {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "--quiet", "-p", "checker", "--"])
        .args(args)
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target)
        // The learner's commands start their own services, whatever this shell points at.
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cargo runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn hint_status_and_reset_work_while_the_workbench_does_not_compile() {
    let workspace = workspace_copy();
    let feed = workspace.path().join("workbench/src/feed.rs");
    let start = std::fs::read_to_string(&feed).unwrap();
    std::fs::write(&feed, start.replace("Ok(items)", "Ok(items")).unwrap();

    let hint = kata(workspace.path(), &["hint", "queries_per_request"]);
    assert!(hint.status.success(), "{}", text(&hint));
    assert!(text(&hint).contains("1. Measure before you change anything"), "{}", text(&hint));

    let status = kata(workspace.path(), &["status"]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    let said = text(&status);
    assert!(said.contains("workbench does not compile"), "{said}");
    assert!(said.contains("workbench/src/feed.rs"), "the first error names the file: {said}");

    let reset = kata(workspace.path(), &["reset", "workbench", "--yes"]);
    assert!(reset.status.success(), "{}", text(&reset));
    assert_eq!(std::fs::read_to_string(&feed).unwrap(), start);
}
