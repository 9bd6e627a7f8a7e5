//! A reviewer's session through the CLI, as a candidate runs it: `review pr-1` (the diff and a
//! findings file to fill in), then `review pr-1 --grade` with findings that are only partly right:
//! what was found, what was missed, what is not in the key, and only then the key.

use std::process::Command;

fn checker(state: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_checker"))
        .args(args)
        .env("KATA_STATE_DIR", state)
        .output()
        .expect("the checker runs");
    (out.status.success(), String::from_utf8(out.stdout).expect("UTF-8"))
}

#[test]
fn a_partly_right_review_of_pr_1_is_graded_by_line_before_the_key_is_shown() {
    let state = tempfile::tempdir().unwrap();
    let (ok, shown) = checker(state.path(), &["review", "pr-1"]);
    assert!(ok, "{shown}");
    let diff = state.path().join("review/pr-1/pr.diff");
    assert!(std::fs::read_to_string(&diff).unwrap().contains("+++ "), "no diff in {}", diff.display());
    assert!(!shown.contains("THE ANSWER KEY"), "the key is shown before grading:\n{shown}");

    // The blocker, found; a should-fix at its line but about something else; a remark the key
    // does not hold; a line that is not a finding.
    let findings = state.path().join("findings.txt");
    std::fs::write(
        &findings,
        "src/feed.rs:25 blocker: still a statement per post in this loop, 21 round trips per page\n\
         src/repository.rs:31 should-fix: the column list could be shorter\n\
         src/lib.rs:3 nit: the module's doc could say what a repository is\n\
         looks fine otherwise\n",
    )
    .unwrap();
    let (all_blockers, graded) = checker(state.path(), &["review", "pr-1", "--grade", findings.to_str().unwrap()]);
    assert!(all_blockers, "every blocker was found, so the exit code is 0:\n{graded}");
    let section = |name: &str| graded.find(name).unwrap_or_else(|| panic!("no {name} in:\n{graded}"));
    let (found, missed, extra, key) =
        (section("FOUND"), section("MISSED"), section("NOT IN THE KEY"), section("THE ANSWER KEY"));
    assert!(found < missed && missed < extra && extra < key, "{graded}");
    assert!(graded[found..missed].contains("src/feed.rs:25 as a blocker"), "{graded}");
    // Its line is right but its words are not the finding's: still missed.
    assert!(graded[missed..extra].contains("src/repository.rs lines 31-31 (should-fix)"), "{graded}");
    assert!(graded[extra..key].contains("src/repository.rs:31"), "{graded}");
    assert!(graded[extra..key].contains("src/lib.rs:3"), "{graded}");
    assert!(graded[extra..key].contains("not read (expected `PATH:LINE SEVERITY: text`): looks fine otherwise"));
    assert!(graded.contains("1 of 5 key findings found; 1 of 1 blockers."), "{graded}");

    // Without the blocker: exit code 1.
    std::fs::write(&findings, "src/lib.rs:3 nit: the module's doc could say what a repository is\n").unwrap();
    let (all_blockers, graded) = checker(state.path(), &["review", "pr-1", "--grade", findings.to_str().unwrap()]);
    assert!(!all_blockers, "{graded}");
    assert!(graded.contains("0 of 5 key findings found; 0 of 1 blockers."), "{graded}");
}
