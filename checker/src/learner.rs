//! The learner's side of the checker: step-by-step hints, progress, and resetting the workbench.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::registry::CheckId;
use crate::{Implementation, KataEnv, StageId, Target};

use crate::build::workspace;

/// Where the learner's progress (hints shown) and workbench backups are kept: beside the
/// workspace's files, not in target/, so `cargo clean` does not erase them. Git ignores it.
pub fn state_dir() -> PathBuf {
    // KATA_STATE_DIR: somewhere else (the tests give each of theirs its own).
    std::env::var_os("KATA_STATE_DIR").map_or_else(|| workspace().join(".kata"), PathBuf::from)
}

/// Where a right diagnosis is remembered (written by `diagnose`, cleared by `reset`).
fn diagnosis_file() -> PathBuf {
    state_dir().join("diagnosis")
}

/// Remember whether the learner's diagnosis (of `target`) was graded right.
pub fn record_diagnosis(target: Implementation, right: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir())?;
    let line =
        format!("{} {} {}\n", if right { "right" } else { "wrong" }, target.name(), chrono::Utc::now().to_rfc3339());
    std::fs::write(diagnosis_file(), line)?;
    Ok(())
}

/// The last diagnosis: `Some(true)` when it was graded right, `None` before any.
pub fn diagnosis() -> Option<bool> {
    let text = std::fs::read_to_string(diagnosis_file()).ok()?;
    Some(text.starts_with("right"))
}

/// Forget every hint shown and the diagnosis: the learner starts over. The files removed.
pub fn forget_progress() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(state_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if (name.starts_with("hints-") || name == "diagnosis") && entry.path().is_file() {
            std::fs::remove_file(entry.path())?;
            removed.push(name);
        }
    }
    removed.sort();
    Ok(removed)
}

/// The next hint for `check` (all of them so far), remembering how many were shown. Hints live in
/// the registry (checker/registry.toml), from a nudge (where to look, what to measure) to the
/// precise fix; a failing check prints its evidence, not these.
pub fn next_hint(check: CheckId, reset: bool) -> anyhow::Result<String> {
    let all = check.hints();
    anyhow::ensure!(!all.is_empty(), "no hints for `{check}`");
    let file = state_dir().join(format!("hints-{check}"));
    let shown: usize =
        if reset { 0 } else { std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0) };
    let now = (shown + 1).min(all.len());
    std::fs::create_dir_all(state_dir())?;
    std::fs::write(&file, now.to_string())?;
    let mut out = format!("hints for {check}:\n\n");
    for (i, hint) in all.iter().take(now).enumerate() {
        let _ = writeln!(out, "{}. {hint}\n", i + 1);
    }
    if now < all.len() {
        let _ = writeln!(out, "({now} of {} hints; run again for the next.)", all.len());
    } else {
        let _ = writeln!(out, "(all {} hints shown.)", all.len());
    }
    Ok(out)
}

/// The workbench's first failing check, at `bar` or (None) from the lowest bar it fails. None:
/// it fails none (a not-proven check is no failure to give hints for).
pub async fn first_failing_check(env: &mut KataEnv, bar: Option<StageId>) -> anyhow::Result<Option<CheckId>> {
    let bars = bar.map_or_else(|| vec![StageId::Stage1, StageId::Stage2, StageId::Stage3], |bar| vec![bar]);
    for bar in bars {
        let report = crate::checks::verify(env, bar, Target::Implementation(Implementation::Workbench)).await?;
        if let Some(check) = report.failed().next() {
            return Ok(Some(check.id));
        }
    }
    Ok(None)
}

/// What a failed check says in `status` and `watch`: before the learner's diagnosis is right, the
/// checks that measure the database's work per request say only that they fail (their figures
/// are the diagnosis' answers). `verify` itself says everything: asking it is the learner's call.
fn said(check: &crate::report::Check) -> (String, Option<String>) {
    const DIAGNOSIS: [CheckId; 2] = [CheckId::QueriesPerRequest, CheckId::PlanUsesTimelineIndex];
    if DIAGNOSIS.contains(&check.id) && diagnosis() != Some(true) {
        let hidden = "fails; what it measured is hidden until your diagnosis is right (`cargo kata diagnose`)";
        return (hidden.to_owned(), None);
    }
    (check.summary.clone(), check.evidence.clone())
}

/// `checker status`: the highest bar the workbench meets, and what to do next.
pub async fn status(env: &mut KataEnv) -> anyhow::Result<(String, bool)> {
    let mut out = String::from("bar       workbench  first failing check\n");
    // Stage-0's bar is the shipped feed: once fixed, the workbench no longer reproduces the
    // incident, but it must still keep the contract.
    let contract = crate::checks::Selection {
        only: vec![
            CheckId::FeedMatchesOracle,
            CheckId::ErrorsProblemJson,
            CheckId::PostsReadBack,
            CheckId::PostgresDown,
        ],
        reveal: false,
    };
    let report = crate::checks::verify_checks(
        env,
        StageId::Stage0,
        Target::Implementation(Implementation::Workbench),
        &contract,
    )
    .await?;
    match report.failed().next() {
        None => {
            let _ = writeln!(out, "{:<9} PASS       (the contract: {} checks)", "stage-0", report.checks.len());
        }
        Some(check) => {
            let _ = writeln!(out, "{:<9} FAIL       {}: {}", "stage-0", check.name(), check.summary);
        }
    }
    let _ = writeln!(
        out,
        "{:<9} {}",
        "diagnosis",
        match diagnosis() {
            Some(true) => "RIGHT      (`cargo kata diagnose` graded it against what it measured)",
            Some(false) => "WRONG      the last one: `cargo kata diagnose` again, after measuring (docs/tools.md)",
            None => "-          not yet: `cargo kata diagnose --help`, after measuring (docs/stage-0.md)",
        }
    );
    let mut next = None;
    let mut unproven = false;
    for bar in [StageId::Stage1, StageId::Stage2, StageId::Stage3] {
        if next.is_some() {
            let _ = writeln!(
                out,
                "{:<9} -          (pass {} first)",
                bar.name(),
                next.as_ref().map_or("", |(b, _, _): &(StageId, CheckId, String)| b.name())
            );
            continue;
        }
        let report = crate::checks::verify(env, bar, Target::Implementation(Implementation::Workbench)).await?;
        match report.failed().next() {
            None if report.verdict == crate::Verdict::Pass => {
                let _ = writeln!(out, "{:<9} PASS", bar.name());
            }
            None => {
                // Nothing failed, but something could not be measured here (the environment, not
                // the workbench: services it does not own): not a pass, and no reason to stop.
                let check = report.unresolved().next().expect("not proven means something unresolved");
                let _ = writeln!(out, "{:<9} UNPROVEN   {}: {}", bar.name(), check.name(), check.summary);
                unproven = true;
            }
            Some(check) if check.id == CheckId::Builds => {
                let _ = writeln!(out, "{:<9} -          workbench does not compile:", bar.name());
                for line in check.evidence.as_deref().unwrap_or_default().lines() {
                    let _ = writeln!(out, "           {line}");
                }
                out.push_str("\nFix the compiler error first; `cargo kata watch` re-checks on every save.\n");
                return Ok((out, false));
            }
            Some(check) => {
                let _ = writeln!(out, "{:<9} FAIL       {}: {}", bar.name(), check.name(), said(check).0);
                next = Some((bar, check.id, check.doc.clone().unwrap_or_else(|| bar.brief().to_owned())));
            }
        }
    }
    let done = next.is_none() && !unproven;
    match next {
        Some((bar, check, doc)) => {
            let _ = writeln!(
                out,
                "\nNext: read {doc}; `cargo kata verify {} --target workbench` shows the evidence; `cargo kata hint {check}` gives a nudge.",
                bar.name(),
            );
        }
        None if unproven => out.push_str(
            "\nNothing fails, but some checks could not run here (see UNPROVEN): unset DATABASE_URL and \
             REDIS_URL so the checker can stop and start its own services.\n",
        ),
        None => out.push_str("\nAll three fixes pass. Try docs/interview.md and docs/review/ next.\n"),
    }
    Ok((out, done))
}

/// `checker watch`: grade the workbench now and after every save (debounced), printing only the
/// outcome: the compile error, the first failing check with its evidence, or the bar it passes.
pub async fn watch(env: &mut KataEnv, only: Option<StageId>) -> anyhow::Result<()> {
    use notify_debouncer_mini::notify::RecursiveMode;
    let (saved, mut saves) = tokio::sync::mpsc::unbounded_channel();
    let mut debouncer = notify_debouncer_mini::new_debouncer(
        std::time::Duration::from_millis(300),
        move |events: notify_debouncer_mini::DebounceEventResult| {
            // Source, migrations and manifest; not editor swap files or build output.
            let relevant = |p: &Path| p.extension().is_some_and(|e| e == "rs" || e == "sql" || e == "toml");
            if events.is_ok_and(|events| events.iter().any(|e| relevant(&e.path))) {
                let _ = saved.send(());
            }
        },
    )?;
    debouncer.watcher().watch(&workbench_dir(), RecursiveMode::Recursive)?;
    let bars = only.map_or_else(|| vec![StageId::Stage1, StageId::Stage2, StageId::Stage3], |bar| vec![bar]);
    loop {
        let graded = fingerprint(&workbench_dir());
        let stamp = chrono::Local::now().format("%H:%M:%S");
        println!("[{stamp}] {}", watch_once(env, &bars).await?);
        println!("watching workbench/ for changes (Ctrl-C stops)…");
        // Until a save changes something: the compiler reading the files is an event too.
        loop {
            saves.recv().await.ok_or_else(|| anyhow::anyhow!("the file watcher stopped"))?;
            // One run for a burst of saves.
            while saves.try_recv().is_ok() {}
            if fingerprint(&workbench_dir()) != graded {
                break;
            }
        }
    }
}

/// Path, size and modification time of every file under `src/` and `migrations/` (at any
/// depth), the manifest and the build script: what a save changes.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { walk(&path, files) } else { files.push(path) }
        }
    }
    let mut files = vec![dir.join("Cargo.toml"), dir.join("build.rs")];
    for sub in ["src", "migrations"] {
        walk(&dir.join(sub), &mut files);
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let (len, modified) = meta.map_or((0, None), |m| (m.len(), m.modified().ok()));
            (path, len, modified)
        })
        .collect()
}

/// One grading of the workbench against `bars` in turn, up to the first it fails.
async fn watch_once(env: &mut KataEnv, bars: &[StageId]) -> anyhow::Result<String> {
    let mut out = String::new();
    for &bar in bars {
        let report = crate::checks::verify(env, bar, Target::Implementation(Implementation::Workbench)).await?;
        let Some(check) = report.failed().next() else {
            // Said before moving on: a bar that passes is news.
            let _ = writeln!(out, "{bar} passes: all {} checks.", report.checks.len());
            continue;
        };
        let (summary, evidence) = said(check);
        if check.id == CheckId::Builds {
            out.push_str("workbench does not compile:");
        } else {
            let _ = write!(out, "{bar}: {} — {summary}", check.name());
        }
        for line in evidence.as_deref().unwrap_or_default().lines() {
            let _ = write!(out, "\n  | {line}");
        }
        if let Some(doc) = &check.doc {
            let _ = write!(out, "\n  read: {doc}   (`cargo kata hint {}` for a nudge)", check.name());
        }
        return Ok(out);
    }
    // What could not run against these services is `status`'s to say.
    out.push_str(if bars.last() == Some(&StageId::Stage3) {
        "Nothing fails: all three fixes hold. Well done."
    } else {
        "Nothing fails."
    });
    Ok(out)
}

/// The workbench as it starts: stage-0's code under its own name, applying its own (so far
/// empty) migrations, and without stage-0's teaching comments (the comment that names the lesson
/// would be the diagnosis the learner is asked to make, and so would a type named after the bug).
/// Shipped as files (checker/start/), as they are; a test proves they serve what stage-0 serves.
/// Paths are relative to `workbench/`.
pub fn start_state() -> [(&'static str, &'static str); 3] {
    [
        ("src/lib.rs", include_str!("../start/src/lib.rs")),
        ("src/feed.rs", include_str!("../start/src/feed.rs")),
        ("src/main.rs", include_str!("../start/src/main.rs")),
    ]
}

pub fn workbench_dir() -> PathBuf {
    workspace().join("workbench")
}

/// Files the learner added: anything in `src/` or `migrations/` that the start state lacks
/// (`migrations/README.md` belongs to the start).
fn added_files(dir: &Path) -> Vec<String> {
    let start: Vec<&str> = start_state().iter().map(|(name, _)| *name).collect();
    let mut added = Vec::new();
    for sub in ["src", "migrations"] {
        for entry in std::fs::read_dir(dir.join(sub)).into_iter().flatten().flatten() {
            let name = format!("{sub}/{}", entry.file_name().to_string_lossy());
            if entry.path().is_file() && !start.contains(&name.as_str()) && name != "migrations/README.md" {
                added.push(name);
            }
        }
    }
    added.sort();
    added
}

/// Files of the workbench in `dir` that differ from the start state, or were added to it.
pub fn changed_files(dir: &Path) -> Vec<String> {
    let mut changed: Vec<String> = start_state()
        .into_iter()
        .filter(|(name, start)| std::fs::read_to_string(dir.join(name)).ok().as_deref() != Some(*start))
        .map(|(name, _)| name.to_owned())
        .collect();
    changed.extend(added_files(dir));
    changed
}

/// Put the start state back into `dir`: copy every changed or added file into `backup` first
/// (keeping its path), then restore the start files and remove the added ones.
pub fn reset(dir: &Path, backup: &Path) -> anyhow::Result<()> {
    let added = added_files(dir);
    for name in changed_files(dir) {
        let from = dir.join(&name);
        if from.is_file() {
            let to = backup.join(&name);
            std::fs::create_dir_all(to.parent().expect("a file in a folder"))?;
            std::fs::copy(&from, &to)?;
        }
    }
    for (name, content) in start_state() {
        std::fs::write(dir.join(name), content)?;
    }
    for name in added {
        std::fs::remove_file(dir.join(name))?;
    }
    Ok(())
}

pub fn backup_dir() -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    state_dir().join(format!("workbench-backup-{stamp}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the workbench as it is in the repository, in a temporary folder.
    fn workbench_copy() -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        for sub in ["src", "migrations"] {
            std::fs::create_dir_all(copy.path().join(sub)).unwrap();
            for entry in std::fs::read_dir(workbench_dir().join(sub)).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), copy.path().join(sub).join(entry.file_name())).unwrap();
            }
        }
        copy
    }

    #[test]
    /// What a clone gets in workbench/ is the start state: git's HEAD when there is one (your
    /// edits in workbench/ do not fail this test), else the files on disk.
    fn the_committed_workbench_is_the_start_state() {
        for (name, start) in start_state() {
            let committed = std::process::Command::new("git")
                .args(["show", &format!("HEAD:workbench/{name}")])
                .current_dir(workspace())
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8(out.stdout).expect("UTF-8 source"));
            let shipped = committed.unwrap_or_else(|| std::fs::read_to_string(workbench_dir().join(name)).unwrap());
            assert_eq!(shipped, start, "workbench/{name} differs from checker/start/{name}");
        }
    }

    #[test]
    fn reset_restores_stage_0_and_keeps_a_copy_of_the_learners_work() {
        let work = workbench_copy();
        let backup = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("src/feed.rs"), "// my half-done JOIN\n").unwrap();
        std::fs::write(work.path().join("src/cache.rs"), "// my cache\n").unwrap();
        std::fs::write(work.path().join("migrations/0001_index.sql"), "create index …;\n").unwrap();
        assert_eq!(changed_files(work.path()), ["src/feed.rs", "migrations/0001_index.sql", "src/cache.rs"]);

        reset(work.path(), backup.path()).unwrap();

        assert_eq!(changed_files(work.path()), Vec::<String>::new());
        assert_eq!(std::fs::read_to_string(backup.path().join("src/feed.rs")).unwrap(), "// my half-done JOIN\n");
        assert_eq!(std::fs::read_to_string(backup.path().join("src/cache.rs")).unwrap(), "// my cache\n");
        assert!(backup.path().join("migrations/0001_index.sql").is_file());
        assert!(!work.path().join("migrations/0001_index.sql").exists());
        assert!(work.path().join("migrations/README.md").is_file());
    }

    #[test]
    fn every_check_has_hints_from_a_nudge_to_the_fix() {
        for id in CheckId::ALL {
            assert!(!id.hints().is_empty(), "{id} has no hints");
        }
        let hints = CheckId::QueriesPerRequest.hints();
        assert!(hints.last().unwrap().contains("left join users"));
        assert!(!hints[0].contains("join"), "the first hint is a nudge, not the fix");
    }
}
