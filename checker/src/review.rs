//! `cargo kata review pr-N`: pull requests to the feed service, to review in your own tools, with
//! findings graded by line. Each is a real change of the workbench (reviews/pr-N/before and
//! after: it builds, runs and can be verified with `--apply`), and an answer key
//! (reviews/pr-N/pr.toml) that is shown only after the findings are graded.

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
    /// What its author wrote.
    pub description: String,
    /// Whether `verify` catches what is wrong with it (it does not always: tests green, bug present).
    pub verify_catches: bool,
    #[serde(rename = "finding")]
    pub findings: Vec<KeyFinding>,
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
                let text = std::fs::read_to_string(reviews_dir().join(&name).join("pr.toml")).expect("readable");
                let mut pull: PullRequest =
                    toml::from_str(&text).unwrap_or_else(|e| panic!("reviews/{name}/pr.toml: {e}"));
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
    fn side(&self, side: &str) -> PathBuf {
        reviews_dir().join(&self.name).join(side)
    }

    /// The workbench-relative paths of every file on either side.
    pub fn files(&self) -> Vec<String> {
        let mut files: Vec<String> = ["before", "after"].iter().flat_map(|side| walk(&self.side(side))).collect();
        files.sort();
        files.dedup();
        files
    }

    fn read(&self, side: &str, path: &str) -> String {
        std::fs::read_to_string(self.side(side).join(path)).unwrap_or_default()
    }

    /// The change as a unified diff, file by file.
    pub fn diff(&self) -> String {
        let mut out = String::new();
        for path in self.files() {
            let (before, after) = (self.read("before", &path), self.read("after", &path));
            if before == after {
                continue;
            }
            let diff = similar::TextDiff::from_lines(&before, &after);
            let _ = write!(
                out,
                "{}",
                diff.unified_diff().context_radius(4).header(&format!("a/{path}"), &format!("b/{path}"))
            );
        }
        out
    }
}

/// Files under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found
}

fn scratch(pull: &PullRequest) -> PathBuf {
    crate::learner::state_dir().join("review").join(&pull.name)
}

/// `review pr-N`: the description, and the change in a scratch folder to read in your tools.
pub fn show(pull: &PullRequest) -> anyhow::Result<String> {
    let dir = scratch(pull);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pr.diff"), pull.diff())?;
    for path in walk(&pull.side("after")) {
        let to = dir.join("after").join(&path);
        std::fs::create_dir_all(to.parent().expect("a file in a folder"))?;
        std::fs::copy(pull.side("after").join(&path), to)?;
    }
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
    let dir = crate::learner::workbench_dir();
    let backup = crate::learner::backup_dir();
    crate::learner::reset(&dir, &backup)?;
    for path in walk(&pull.side("before")) {
        if !pull.side("after").join(&path).exists() && dir.join(&path).exists() {
            std::fs::remove_file(dir.join(&path))?;
        }
    }
    for path in walk(&pull.side("after")) {
        let to = dir.join(&path);
        std::fs::create_dir_all(to.parent().expect("a file in a folder"))?;
        std::fs::copy(pull.side("after").join(&path), to)?;
    }
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
            assert!(!pull.diff().is_empty(), "{} changes nothing", pull.name);
            for key in &pull.findings {
                let lines = pull.read("after", &key.path).lines().count();
                assert!(
                    key.lines[0] >= 1 && key.lines[0] <= key.lines[1] && key.lines[1] <= lines,
                    "{} {key:?}",
                    pull.name
                );
            }
        }
        assert!(pull_requests().iter().filter(|p| !p.verify_catches).count() >= 2);
    }
}
