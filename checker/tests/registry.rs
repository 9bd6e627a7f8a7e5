//! The registry (checker/registry.toml) holds together: every promise has a check, every check a
//! promise and a wrong solution that fails it (or, for `builds` and `starts`, the test that shows
//! it failing), every mistake fails something it can reach, and `mistakes --list` and the
//! registry name the same mistakes.

use std::collections::{BTreeMap, BTreeSet};

use checker::build::Built;
use checker::registry::{CheckId, Origin, planned, registry};

/// Every way the registry can be broken, each as a line; empty when it holds together.
fn broken_links() -> Vec<String> {
    let registry = registry();
    let mut broken = Vec::new();
    for promise in &registry.promises {
        if registry.enforcing(&promise.id).is_empty() {
            broken.push(format!("promise {} has no check", promise.id));
        }
    }
    for check in &registry.checks {
        for promise in &check.promises {
            if registry.promise(promise).is_none() {
                broken.push(format!("check {} names promise {promise}, which does not exist", check.name));
            }
        }
        if check.promises.is_empty() {
            broken.push(format!("check {} enforces no promise", check.name));
        }
        match &check.proven_by {
            Some(test) => {
                let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(test);
                if !path.is_file() {
                    broken.push(format!("check {} is proven by {test}, which does not exist", check.name));
                }
            }
            None if registry.failing(check.name).is_empty() => {
                broken.push(format!("check {} has no mistake that fails it", check.name));
            }
            None => {}
        }
        if check.hints.is_empty() {
            broken.push(format!("check {} has no hints", check.name));
        }
    }
    for case in &registry.mistakes {
        if case.correct {
            if !case.fails.is_empty() {
                broken.push(format!("{} is a correct alternative that lists failures", case.name));
            }
            continue;
        }
        if case.fails.is_empty() {
            broken.push(format!("mistake {} fails nothing", case.name));
        }
        if let Some(both) = case.may_fail.iter().find(|c| case.fails.contains(c)) {
            broken.push(format!("mistake {} lists {both} as failing and as maybe failing", case.name));
        }
        if !case.fails.contains(&case.symptom.check) {
            broken.push(format!(
                "mistake {}'s symptom is read from {}, which it does not fail",
                case.name, case.symptom.check
            ));
        }
        let reachable = planned(case.bar, case.topology);
        for check in &case.fails {
            if !reachable.contains(check) {
                broken.push(format!(
                    "mistake {} is said to fail {check}, which its bar and topology do not run",
                    case.name
                ));
            }
        }
        if let Err(e) = regex::Regex::new(&case.symptom.pattern) {
            broken.push(format!("mistake {}'s symptom pattern does not compile: {e}", case.name));
        }
    }
    broken
}

#[test]
fn every_promise_check_and_mistake_is_linked() {
    let broken = broken_links();
    assert!(broken.is_empty(), "the registry has broken links:\n  {}", broken.join("\n  "));
}

#[test]
fn every_check_is_registered_and_every_registered_check_exists() {
    let registered: BTreeSet<CheckId> = registry().checks.iter().map(|c| c.name).collect();
    let known: BTreeSet<CheckId> = CheckId::ALL.iter().copied().collect();
    assert_eq!(registered, known);
}

#[test]
fn the_mistakes_binary_serves_exactly_the_registered_mistakes() {
    let binary = match checker::build::build("mistakes").expect("cargo runs") {
        Built::Binary(path) => path,
        Built::CompileError(e) => panic!("mistakes does not compile:\n{e}"),
    };
    let listed = std::process::Command::new(binary).arg("--list").output().expect("mistakes --list runs");
    let served: BTreeSet<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect();
    let registered: BTreeSet<String> = registry().mistakes.iter().map(|m| m.name.clone()).collect();
    let unregistered: Vec<&String> = served.difference(&registered).collect();
    let unserved: Vec<&String> = registered.difference(&served).collect();
    assert!(
        unregistered.is_empty() && unserved.is_empty(),
        "served but not in registry.toml: {unregistered:?}; in registry.toml but not served: {unserved:?}"
    );
    for case in &registry().mistakes {
        let line = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(case.name.as_str()))
            .map(str::to_owned)
            .unwrap_or_default();
        assert!(line.contains(case.bar.name()), "{}: the binary says {line:?}, the registry {}", case.name, case.bar);
    }
}

#[test]
fn the_readme_counts_the_mistakes_the_registry_holds() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let said = |pattern: &str| -> usize {
        let found = regex::Regex::new(pattern).unwrap().captures(&readme);
        found
            .unwrap_or_else(|| panic!("the README no longer says /{pattern}/"))
            .get(1)
            .unwrap()
            .as_str()
            .parse()
            .unwrap()
    };
    // Distinct wrong solutions (redis-error-500 is graded on both topologies, once each).
    let wrong: BTreeMap<&str, Origin> =
        registry().mistakes.iter().filter(|m| !m.correct).map(|m| (m.name.as_str(), m.origin)).collect();
    let from = |origin| wrong.values().filter(|o| **o == origin).count();
    assert_eq!(said(r"mistakes/README\.md\) holds (\d+) plausible ones"), wrong.len());
    assert_eq!(said(r"(\d+) change a line of a reference stage"), from(Origin::Reference));
    assert_eq!(said(r"(\d+) were written from the briefs' promises alone"), from(Origin::Brief));
}
