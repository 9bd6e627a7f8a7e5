//! `cargo kata review pr-N`: pull requests to the feed service, to review in your own tools, with
//! findings graded by line. Each is a real change of the workbench: reviews/pr-N/change.diff, a
//! unified diff of its base (the workbench's start, or a base of reviews/base/ built on it), that
//! builds, runs and can be verified with `--apply`; and an answer key (reviews/pr-N/pr.toml) that
//! is shown only after the findings are graded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde::Deserialize;

use crate::StageId;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// It must not merge like this.
    Blocker,
    /// Fix it in this pull request, or right after.
    ShouldFix,
    /// Worth a word, not a round trip.
    Nit,
}

impl Severity {
    fn parse(word: &str) -> Option<Self> {
        match word.trim().to_lowercase().as_str() {
            "blocker" | "block" | "blocking" => Some(Self::Blocker),
            "should-fix" | "should" | "should fix" | "major" => Some(Self::ShouldFix),
            "nit" | "minor" => Some(Self::Nit),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Blocker => "blocker",
            Self::ShouldFix => "should-fix",
            Self::Nit => "nit",
        }
    }
}

/// One finding of the answer key: where, how much it matters, what and why.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFinding {
    pub path: String,
    /// The lines of the changed file it is about (inclusive).
    pub lines: [usize; 2],
    pub severity: Severity,
    pub title: String,
    pub why: String,
    /// When several findings share lines: words one of which a reviewer's finding must contain to
    /// be about this one (any case).
    #[serde(default)]
    pub words: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    #[serde(skip)]
    pub name: String,
    pub title: String,
    /// The bar its code is meant to meet.
    pub bar: StageId,
    /// The code it changes: `start` (the workbench's start) or a base of reviews/base/bases.toml.
    pub base: String,
    /// What its author wrote.
    pub description: String,
    /// Whether `verify` catches what is wrong with it (it does not always: tests green, bug present).
    pub verify_catches: bool,
    #[serde(rename = "finding")]
    pub findings: Vec<KeyFinding>,
    /// The change, as its author sent it (reviews/pr-N/change.diff): a unified diff of its base.
    #[serde(skip)]
    pub diff: String,
}

fn reviews_dir() -> PathBuf {
    crate::build::workspace().join("reviews")
}

/// Every pull request under reviews/, in order.
pub fn pull_requests() -> &'static [PullRequest] {
    static ALL: LazyLock<Vec<PullRequest>> = LazyLock::new(|| {
        let mut names: Vec<String> = std::fs::read_dir(reviews_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("pr.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_by_key(|n| n.trim_start_matches("pr-").parse::<u32>().unwrap_or(u32::MAX));
        names
            .into_iter()
            .map(|name| {
                let dir = reviews_dir().join(&name);
                let text = std::fs::read_to_string(dir.join("pr.toml")).expect("readable");
                let mut pull: PullRequest =
                    toml::from_str(&text).unwrap_or_else(|e| panic!("reviews/{name}/pr.toml: {e}"));
                pull.diff = std::fs::read_to_string(dir.join("change.diff"))
                    .unwrap_or_else(|e| panic!("reviews/{name}/change.diff: {e}"));
                pull.name = name;
                pull
            })
            .collect()
    });
    &ALL
}

pub fn find(name: &str) -> anyhow::Result<&'static PullRequest> {
    pull_requests().iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = pull_requests().iter().map(|p| p.name.as_str()).collect();
        anyhow::anyhow!("no pull request {name}; there are: {}", names.join(", "))
    })
}

impl PullRequest {
    /// The workbench's files before the change: its base.
    pub fn before(&self) -> anyhow::Result<Tree> {
        base(&self.base)
    }

    /// The workbench's files with the change.
    pub fn after(&self) -> anyhow::Result<Tree> {
        patch(&self.before()?, &self.diff).map_err(|e| e.context(format!("reviews/{}/change.diff", self.name)))
    }
}

/// A workbench's files by their path in it (`src/feed.rs`, `migrations/0001_….sql`), as text.
pub type Tree = BTreeMap<String, String>;

/// The base every other base is a change of: the workbench's start (checker/start/).
const START: &str = "start";

/// The workbench's files as the kata starts.
fn start() -> Tree {
    crate::learner::start_state().iter().map(|(path, text)| ((*path).to_owned(), (*text).to_owned())).collect()
}

/// reviews/base/bases.toml: each base's name, and the name of the base it is a change of.
fn bases() -> &'static BTreeMap<String, String> {
    static ALL: LazyLock<BTreeMap<String, String>> = LazyLock::new(|| {
        let text = std::fs::read_to_string(reviews_dir().join("base").join("bases.toml"))
            .unwrap_or_else(|e| panic!("reviews/base/bases.toml: {e}"));
        toml::from_str(&text).unwrap_or_else(|e| panic!("reviews/base/bases.toml: {e}"))
    });
    &ALL
}

/// The files of the base `name`: the workbench's start, changed by each base's diff
/// (reviews/base/NAME.diff) from the first base on it down to `name`.
fn base(name: &str) -> anyhow::Result<Tree> {
    let mut chain = Vec::new();
    let mut at = name;
    while at != START {
        anyhow::ensure!(!chain.contains(&at), "reviews/base/bases.toml: {at} is a change of itself");
        chain.push(at);
        at = bases().get(at).ok_or_else(|| {
            let names: Vec<&str> = bases().keys().map(String::as_str).collect();
            anyhow::anyhow!("no base {at}; there are: {START}, {}", names.join(", "))
        })?;
    }
    chain.iter().rev().try_fold(start(), |tree, name| {
        let diff = std::fs::read_to_string(reviews_dir().join("base").join(format!("{name}.diff")))
            .map_err(|e| anyhow::anyhow!("reviews/base/{name}.diff: {e}"))?;
        patch(&tree, &diff).map_err(|e| e.context(format!("reviews/base/{name}.diff")))
    })
}

/// `tree` changed by `diff`, a unified diff of one file or more: `--- a/PATH` and `+++ b/PATH`
/// (`--- /dev/null` for a file it adds, `+++ /dev/null` for one it removes), then its hunks.
fn patch(tree: &Tree, diff: &str) -> anyhow::Result<Tree> {
    let mut tree = tree.clone();
    for file in per_file(diff)? {
        let patch = diffy::Patch::from_str(file)?;
        let name = |name: Option<&str>, prefix: &str| {
            name.filter(|n| *n != "/dev/null").map(|n| n.strip_prefix(prefix).unwrap_or(n).to_owned())
        };
        let (old, new) = (name(patch.original(), "a/"), name(patch.modified(), "b/"));
        let path = new.clone().or_else(|| old.clone()).ok_or_else(|| anyhow::anyhow!("a file without a name"))?;
        let text = match &old {
            Some(old) => tree.remove(old).ok_or_else(|| anyhow::anyhow!("{old}: no such file to change"))?,
            None => {
                anyhow::ensure!(!tree.contains_key(&path), "{path}: added, but it is there already");
                String::new()
            }
        };
        let text = diffy::apply(&text, &patch).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        match new {
            Some(new) => {
                tree.insert(new, text);
            }
            None => anyhow::ensure!(text.is_empty(), "{path}: removed, but not all of its lines"),
        }
    }
    Ok(tree)
}

/// A unified diff of several files cut into one diff per file, as `diffy` reads them. A file's
/// diff starts at its `--- ` line: outside a hunk, for inside one `--- x` is the line `-- x`
/// removed, so each hunk's lines are counted from its header. Lines between files (`diff --git`,
/// `index`) are left out.
fn per_file(diff: &str) -> anyhow::Result<Vec<&str>> {
    let mut files = Vec::new();
    // Where the current file's diff starts and (so far) ends, and what its hunk has still to come.
    let (mut from, mut to) = (None, 0);
    let (mut old, mut new) = (0_usize, 0_usize);
    let mut at = 0;
    for line in diff.split_inclusive('\n') {
        let end = at + line.len();
        if old > 0 || new > 0 {
            let (o, n) = match line.as_bytes()[0] {
                b'-' => (1, 0),
                b'+' => (0, 1),
                b'\\' => (0, 0),
                _ => (1, 1),
            };
            (old, new) = old
                .checked_sub(o)
                .zip(new.checked_sub(n))
                .ok_or_else(|| anyhow::anyhow!("a hunk longer than its header says: {}", line.trim_end()))?;
            to = end;
        } else if let Some(ranges) = line.strip_prefix("@@ -") {
            let length = |range: &str| range.split_once(',').map_or(Some(1), |(_, n)| n.parse().ok());
            let (lengths, _) = ranges.split_once(" @@").unwrap_or_default();
            let (o, n) = lengths.split_once(" +").unwrap_or_default();
            (old, new) = length(o)
                .zip(length(n))
                .ok_or_else(|| anyhow::anyhow!("a hunk header that does not read: {}", line.trim_end()))?;
            to = end;
        } else if line.starts_with("--- ") {
            if let Some(from) = from {
                files.push(&diff[from..to]);
            }
            (from, to) = (Some(at), end);
        } else if line.starts_with("+++ ") || line.starts_with('\\') {
            to = end;
        }
        at = end;
    }
    anyhow::ensure!(old == 0 && new == 0, "the last hunk is shorter than its header says");
    files.extend(from.map(|from| &diff[from..to]));
    Ok(files)
}

/// The files of `tree` that the workbench's start does not have as they are: what a pull
/// request's code puts in the workbench.
fn changed(tree: &Tree) -> Vec<(&str, &str)> {
    let start = start();
    tree.iter()
        .filter(|(path, text)| start.get(*path) != Some(*text))
        .map(|(path, text)| (path.as_str(), text.as_str()))
        .collect()
}

/// Write `files` under `dir`, each at its path.
fn write(dir: &Path, files: &[(&str, &str)]) -> anyhow::Result<()> {
    for (path, text) in files {
        let to = dir.join(path);
        std::fs::create_dir_all(to.parent().expect("a file in a folder"))?;
        std::fs::write(to, text)?;
    }
    Ok(())
}

fn scratch(pull: &PullRequest) -> PathBuf {
    crate::learner::state_dir().join("review").join(&pull.name)
}

/// `review pr-N`: the description, and the change in a scratch folder to read in your tools.
pub fn show(pull: &PullRequest) -> anyhow::Result<String> {
    let dir = scratch(pull);
    let after = pull.after()?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pr.diff"), &pull.diff)?;
    write(&dir.join("after"), &changed(&after))?;
    let findings = dir.join("findings.txt");
    if !findings.exists() {
        std::fs::write(
            &findings,
            "# One finding per line: PATH:LINE SEVERITY: what goes wrong, as a scenario, and what to do instead.\n\
             # PATH and LINE are those of the changed file (after/); SEVERITY is blocker, should-fix or nit.\n\
             # Example: src/feed.rs:42 blocker: every item reads ... (lines starting with # are ignored)\n",
        )?;
    }
    Ok(format!(
        "{} — \"{}\"\n\n{}\n\nthe change: {}\nthe files as changed (line numbers for your findings): {}\n\n\
         Review it in your own tools: read the description, then the diff. Write your findings in {}\n\
         then: cargo kata review {} --grade {}\n\
         To build, run and verify it: cargo kata review {} --apply (it is meant to pass {}).\n",
        pull.name,
        pull.title,
        pull.description.trim(),
        dir.join("pr.diff").display(),
        dir.join("after").display(),
        findings.display(),
        pull.name,
        findings.display(),
        pull.name,
        pull.bar,
    ))
}

/// `review pr-N --apply`: the pull request's code in the workbench (the learner's files kept aside).
pub fn apply(pull: &PullRequest) -> anyhow::Result<String> {
    let after = pull.after()?;
    let dir = crate::learner::workbench_dir();
    let backup = crate::learner::backup_dir();
    crate::learner::reset(&dir, &backup)?;
    for (path, _) in crate::learner::start_state() {
        if !after.contains_key(path) {
            std::fs::remove_file(dir.join(path))?;
        }
    }
    write(&dir, &changed(&after))?;
    Ok(format!(
        "{}'s code is in workbench/ (your previous files, if any changed, are in {}).\n\
         cargo kata verify {} --target workbench   # what the checker says of it\n\
         cargo kata reset workbench                # the kata's start back\n",
        pull.name,
        backup.display(),
        pull.bar
    ))
}

/// One line of a reviewer's findings.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub path: String,
    pub line: usize,
    pub severity: Severity,
    pub text: String,
}

/// `path:line severity: text` lines; blank lines and `#` comments skipped. The lines that do not
/// read are returned as they are.
pub fn parse(text: &str) -> (Vec<Finding>, Vec<String>) {
    let (mut findings, mut unread) = (Vec::new(), Vec::new());
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let parsed = (|| {
            let (place, rest) = line.split_once(char::is_whitespace)?;
            let (path, number) = place.rsplit_once(':')?;
            let number = number.split('-').next()?.parse().ok()?;
            let (severity, text) = rest.trim().split_once(':')?;
            Some(Finding {
                path: path.trim_start_matches("workbench/").trim_start_matches("after/").to_owned(),
                line: number,
                severity: Severity::parse(severity)?,
                text: text.trim().to_owned(),
            })
        })();
        match parsed {
            Some(finding) => findings.push(finding),
            None => unread.push(line.to_owned()),
        }
    }
    (findings, unread)
}

/// How near a finding's line must be to a key finding's lines to be about it.
const SLACK: usize = 3;

fn about(finding: &Finding, key: &KeyFinding) -> bool {
    let text = finding.text.to_lowercase();
    (finding.path == key.path || finding.path.ends_with(&format!("/{}", key.path)))
        && finding.line + SLACK >= key.lines[0]
        && finding.line <= key.lines[1] + SLACK
        && (key.words.is_empty() || key.words.iter().any(|w| text.contains(&w.to_lowercase())))
}

/// Grade a reviewer's findings: what was found (and at which severity), what was missed, what is
/// not in the key; then the key. True when every blocker was found.
pub fn grade(pull: &PullRequest, text: &str) -> anyhow::Result<(String, bool)> {
    let (findings, unread) = parse(text);
    anyhow::ensure!(
        !findings.is_empty() || !unread.is_empty(),
        "no findings in the file: write one per line, `PATH:LINE SEVERITY: text`"
    );
    let mut out =
        format!("{} — \"{}\": your {} finding(s) against the answer key\n\n", pull.name, pull.title, findings.len());
    let mut blockers_missed = 0;
    let (mut found, mut missed) = (Vec::new(), Vec::new());
    // Each finding of the reviewer's counts for one key finding at most.
    let mut used = vec![false; findings.len()];
    for key in &pull.findings {
        let matching: Vec<usize> = (0..findings.len()).filter(|&i| !used[i] && about(&findings[i], key)).collect();
        match matching.iter().find(|&&i| findings[i].severity == key.severity).or(matching.first()) {
            Some(&i) => {
                used[i] = true;
                found.push((key, &findings[i]));
            }
            None => {
                blockers_missed += usize::from(key.severity == Severity::Blocker);
                missed.push(key);
            }
        }
    }
    out.push_str("FOUND\n");
    for (key, finding) in &found {
        let severity = if finding.severity == key.severity {
            format!("as a {}", key.severity.name())
        } else {
            format!("as a {}, the key says {}", finding.severity.name(), key.severity.name())
        };
        let _ = writeln!(out, "  {}:{} {severity}: {}", finding.path, finding.line, key.title);
    }
    if found.is_empty() {
        out.push_str("  (none)\n");
    }
    out.push_str("\nMISSED\n");
    for key in &missed {
        let _ = writeln!(
            out,
            "  {} lines {}-{} ({}): {}",
            key.path,
            key.lines[0],
            key.lines[1],
            key.severity.name(),
            key.title
        );
    }
    if missed.is_empty() {
        out.push_str("  (none)\n");
    }
    out.push_str("\nNOT IN THE KEY (worth a second look: right, or noise?)\n");
    let extra: Vec<&Finding> = findings.iter().zip(&used).filter(|(_, used)| !**used).map(|(f, _)| f).collect();
    for finding in &extra {
        let _ = writeln!(out, "  {}:{} {}: {}", finding.path, finding.line, finding.severity.name(), finding.text);
    }
    if extra.is_empty() {
        out.push_str("  (none)\n");
    }
    for line in &unread {
        let _ = writeln!(out, "  not read (expected `PATH:LINE SEVERITY: text`): {line}");
    }
    let blockers = pull.findings.iter().filter(|k| k.severity == Severity::Blocker).count();
    let _ = writeln!(
        out,
        "\n{} of {} key findings found; {} of {blockers} blockers.{}",
        found.len(),
        pull.findings.len(),
        blockers - blockers_missed,
        if pull.verify_catches { "" } else { " (`verify` passes this pull request: only review catches it.)" }
    );
    out.push_str("\nTHE ANSWER KEY\n");
    for key in &pull.findings {
        let _ = writeln!(
            out,
            "\n  {} lines {}-{} — {} — {}\n",
            key.path,
            key.lines[0],
            key.lines[1],
            key.severity.name(),
            key.title
        );
        for line in textwrap(key.why.trim(), 96) {
            let _ = writeln!(out, "    {line}");
        }
    }
    Ok((out, blockers_missed == 0))
}

/// `text` in lines of at most `width` characters, cut at spaces.
fn textwrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("one line at least");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_are_read_line_by_line_and_what_does_not_read_is_kept() {
        let (findings, unread) = parse(
            "# a comment\nsrc/feed.rs:42 blocker: one statement per item\n\nworkbench/src/lib.rs:7-9 nit: naming\nno place here\n",
        );
        assert_eq!(findings.len(), 2);
        assert_eq!(
            (findings[0].path.as_str(), findings[0].line, findings[0].severity),
            ("src/feed.rs", 42, Severity::Blocker)
        );
        assert_eq!((findings[1].path.as_str(), findings[1].line), ("src/lib.rs", 7));
        assert_eq!(unread, ["no place here"]);
    }

    #[test]
    fn every_pull_request_has_a_key_whose_lines_exist_in_its_changed_files() {
        assert!(pull_requests().len() >= 6, "{} pull requests", pull_requests().len());
        for pull in pull_requests() {
            assert!(pull.findings.iter().any(|k| k.severity == Severity::Blocker), "{} has no blocker", pull.name);
            let after = pull.after().unwrap_or_else(|e| panic!("{e:#}"));
            assert_ne!(pull.before().unwrap(), after, "{} changes nothing", pull.name);
            let changed = changed(&after);
            for key in &pull.findings {
                let text = changed.iter().find(|(path, _)| *path == key.path).map(|(_, text)| *text);
                let lines =
                    text.unwrap_or_else(|| panic!("{}: {} is not in after/", pull.name, key.path)).lines().count();
                assert!(
                    key.lines[0] >= 1 && key.lines[0] <= key.lines[1] && key.lines[1] <= lines,
                    "{} {key:?}",
                    pull.name
                );
            }
        }
        assert!(pull_requests().iter().filter(|p| !p.verify_catches).count() >= 2);
    }

    #[test]
    fn every_pull_request_applies_to_its_base_and_every_base_to_its_own() {
        for name in bases().keys() {
            let tree = base(name).unwrap_or_else(|e| panic!("{e:#}"));
            assert_ne!(tree, start(), "base {name} is the start");
        }
        for pull in pull_requests() {
            let after = pull.after().unwrap_or_else(|e| panic!("{e:#}"));
            // A diff that applies with an offset would not be the change its key's lines are of.
            for file in per_file(&pull.diff).unwrap() {
                let patch = diffy::Patch::from_str(file).unwrap();
                for hunk in patch.hunks() {
                    let path = patch.modified().unwrap().trim_start_matches("b/");
                    let lines: Vec<&str> = after.get(path).map_or(vec![], |t| t.lines().collect());
                    let new = hunk.new_range();
                    let expected: Vec<&str> = hunk
                        .lines()
                        .iter()
                        .filter_map(|line| match line {
                            diffy::Line::Context(l) | diffy::Line::Insert(l) => Some(l.trim_end_matches('\n')),
                            diffy::Line::Delete(_) => None,
                        })
                        .collect();
                    let at = new.start().saturating_sub(1);
                    assert_eq!(lines.get(at..at + new.len()), Some(&expected[..]), "{} {path}", pull.name);
                }
            }
        }
    }

    #[test]
    fn a_diff_of_several_files_is_cut_per_file_counting_each_hunk() {
        let tree: Tree =
            [("migrations/1.sql", "-- an index\ncreate index i on t (a);\n"), ("src/old.rs", "fn old() {}\n")]
                .into_iter()
                .map(|(p, t)| (p.to_owned(), t.to_owned()))
                .collect();
        // `--- an index` is the line `-- an index` removed, not the next file's header.
        let diff = "diff --git a/migrations/1.sql b/migrations/1.sql\n\
                    --- a/migrations/1.sql\n+++ b/migrations/1.sql\n@@ -1,2 +1,2 @@\n\
                    --- an index\n+-- the index\n create index i on t (a);\n\
                    --- /dev/null\n+++ b/src/new.rs\n@@ -0,0 +1 @@\n+fn new() {}\n\\ No newline at end of file\n\
                    --- a/src/old.rs\n+++ /dev/null\n@@ -1 +0,0 @@\n-fn old() {}\n";
        assert_eq!(per_file(diff).unwrap().len(), 3);
        let after = patch(&tree, diff).unwrap();
        assert_eq!(after["migrations/1.sql"], "-- the index\ncreate index i on t (a);\n");
        assert_eq!(after["src/new.rs"], "fn new() {}");
        assert!(!after.contains_key("src/old.rs"));
        assert!(patch(&tree, "--- a/src/gone.rs\n+++ b/src/gone.rs\n@@ -1 +1 @@\n-a\n+b\n").is_err());
        assert!(per_file("--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n+b\n").is_err(), "a hunk cut short");
    }
}
