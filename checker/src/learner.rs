//! The learner's side of the checker: step-by-step hints, progress, and resetting the workbench.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::{Implementation, KataEnv, StageId, Target};

/// Hints per stage, from a nudge to nearly the answer. `checker hint stage-N` reveals one more
/// each time it is run.
pub fn hints(stage: StageId) -> &'static [&'static str] {
    match stage {
        StageId::Stage0 => &[
            "Stage-0 is the starting point: it is correct and slow. Run `checker verify stage-0` to see the evidence, then work towards `verify stage-1 --target workbench`.",
            "Measure before you change anything: `checker explain --stage workbench` lists the statements one burst of feed requests ran, most calls first.",
        ],
        StageId::Stage1 => &[
            "Run `checker explain --stage workbench`. Look at the calls column, not the mean: which statement runs 20 times for 1 feed request?",
            "It is the author lookup in workbench/src/feed.rs: `post.author(&self.db)` inside the loop is one round trip to Postgres per post.",
            "Ask for the authors in the same statement as the posts: `from posts p left join users u on p.author_id = u.id`, selecting u.id, u.name and u.avatar beside the post columns.",
            "Read the rows into one flat struct (post columns + author_id, author_name, author_avatar) and map it into FeedItem { author: Author { .. } }. Keep `order by p.created_at desc, p.id desc limit $2`: the JSON must stay identical.",
        ],
        StageId::Stage2 => &[
            "Wrap your feed source in a second FeedSource that holds it (a decorator). lib.rs builds `Stage::new(\"workbench\", YourCache::new(inner, ctx.redis, ..))`.",
            "Read-through on the way in: GET `feed:v1:user:{id}`; on a hit return it without touching Postgres; on a miss ask the inner source and SET the JSON with `EX <ttl>`. Cache the largest page (100) and slice per request.",
            "TTL: new posts must show at once (so invalidate on write), names and avatars may be a few minutes stale: 300 s, times a random factor between 0.9 and 1.1 so keys filled together expire apart.",
            "Invalidation: implement `timeline_changed` and DEL the owner's key. The core calls it after every successful POST /api/posts.",
            "Stampede: on a miss, `SET feed:v1:user:{id}:lock <token> NX PX 2000`. Whoever gets it recomputes; everyone else polls GET every ~20 ms for up to a second.",
            "Redis failure: wrap each Redis call in `feed_core::app::redis_call` (a 250 ms deadline) and on any error read the inner source: a cache outage must never become a 5xx.",
        ],
        StageId::Stage3 => &[
            "Add a layer around the API routes: `Stage::with_api_layer(|api| api.layer(axum::middleware::from_fn_with_state(bucket, your_fn)))`. The core authenticates before your layer runs.",
            "Key the bucket by the caller's id: take `feed_core::auth::AuthUser` as an argument of your middleware. Never by an address or X-Forwarded-For.",
            "One Lua script does it atomically in one round trip: TIME, HMGET tokens/at, refill by elapsed × rate (capped at the burst), take 1 if ≥ 1, HSET, PEXPIRE. GET-then-SET from Rust admits too many under concurrency.",
            "Tiers from `AuthUser::tier`: free 60/min with a bucket of 60, pro 600/min with 100, internal exempt. Over the limit: 429, `Retry-After: <whole seconds ≥ 1>`, problem+json, and RateLimit-Policy / RateLimit headers on every response.",
        ],
    }
}

use crate::build::workspace;

/// Where the learner's progress (hints shown) and workbench backups are kept: beside the
/// workspace's files, not in target/, so `cargo clean` does not erase them. Git ignores it.
pub fn state_dir() -> PathBuf {
    workspace().join(".kata")
}

/// The next hint for `stage` (all of them so far), remembering how many were shown.
pub fn next_hint(stage: StageId, reset: bool) -> anyhow::Result<String> {
    let file = state_dir().join(format!("hints-{}", stage.name()));
    let shown: usize =
        if reset { 0 } else { std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0) };
    let all = hints(stage);
    let now = (shown + 1).min(all.len());
    std::fs::create_dir_all(state_dir())?;
    std::fs::write(&file, now.to_string())?;
    let mut out = String::new();
    for (i, hint) in all.iter().take(now).enumerate() {
        let _ = writeln!(out, "{}. {hint}\n", i + 1);
    }
    if now < all.len() {
        let _ = writeln!(out, "({now} of {} hints; run again for the next.)", all.len());
    } else {
        let _ = writeln!(out, "(all {} hints shown; the reference answer is stages/{}/src.)", all.len(), stage.name());
    }
    Ok(out)
}

/// `checker status`: the highest bar the workbench meets, and what to do next.
pub async fn status(env: &mut KataEnv) -> anyhow::Result<(String, bool)> {
    let mut out = String::from("bar      workbench  first failing check\n");
    let mut next = None;
    for bar in [StageId::Stage1, StageId::Stage2, StageId::Stage3] {
        if next.is_some() {
            let _ = writeln!(
                out,
                "{:<8} -          (pass {} first)",
                bar.name(),
                next.as_ref().map_or("", |(b, _): &(StageId, String)| b.name())
            );
            continue;
        }
        let report = crate::checks::verify(env, bar, Target::Implementation(Implementation::Workbench)).await?;
        match report.failed().next() {
            None => {
                let _ = writeln!(out, "{:<8} PASS", bar.name());
            }
            Some(check) if check.name == "builds" => {
                let _ = writeln!(out, "{:<8} -          workbench does not compile:", bar.name());
                for line in check.evidence.as_deref().unwrap_or_default().lines() {
                    let _ = writeln!(out, "           {line}");
                }
                out.push_str("\nFix the compiler error first; `cargo kata watch` re-checks on every save.\n");
                return Ok((out, false));
            }
            Some(check) => {
                let _ = writeln!(out, "{:<8} FAIL       {}: {}", bar.name(), check.name, check.summary);
                next = Some((bar, check.doc.clone().unwrap_or_else(|| format!("docs/{}.md", bar.name()))));
            }
        }
    }
    let done = next.is_none();
    match next {
        Some((bar, doc)) => {
            let _ = writeln!(
                out,
                "\nNext: read {doc}; `cargo kata verify {} --target workbench` shows the evidence; `cargo kata hint {}` gives a nudge.",
                bar.name(),
                bar.name()
            );
        }
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
        let stamp = chrono::Local::now().format("%H:%M:%S");
        println!("[{stamp}] {}", watch_once(env, &bars).await?);
        println!("watching workbench/ for changes (Ctrl-C stops)…");
        saves.recv().await.ok_or_else(|| anyhow::anyhow!("the file watcher stopped"))?;
        // One run for a burst of saves.
        while saves.try_recv().is_ok() {}
    }
}

/// One grading of the workbench against `bars` in turn, up to the first it fails.
async fn watch_once(env: &mut KataEnv, bars: &[StageId]) -> anyhow::Result<String> {
    let mut passed = None;
    for &bar in bars {
        let report = crate::checks::verify(env, bar, Target::Implementation(Implementation::Workbench)).await?;
        let Some(check) = report.failed().next().or_else(|| report.unresolved().next()) else {
            passed = Some(bar);
            continue;
        };
        let mut out = if check.name == "builds" {
            "workbench does not compile:".to_owned()
        } else {
            format!("{}: {} — {}", bar.name(), check.name, check.summary)
        };
        for line in check.evidence.as_deref().unwrap_or_default().lines() {
            let _ = write!(out, "\n  | {line}");
        }
        if let Some(doc) = &check.doc {
            let _ = write!(out, "\n  read: {doc}   (`cargo kata hint {}` for a nudge)", bar.name());
        }
        return Ok(out);
    }
    Ok(match passed {
        Some(StageId::Stage3) => "stage-3 passes: all three fixes hold. Well done.".to_owned(),
        Some(bar) => format!("{} passes.", bar.name()),
        None => "nothing to check".to_owned(),
    })
}

/// The workbench as it starts: stage-0, under its own name, applying its own (so far empty)
/// migrations. Paths are relative to `workbench/`.
pub fn start_state() -> [(&'static str, String); 3] {
    let lib = include_str!("../../stages/stage-0/src/lib.rs")
        .replace(
            "//! stage-0: the feed as it shipped. The response is right; the way it is read is not.",
            "//! Your workbench: it starts as stage-0. Change `feed.rs` (and this file, for stage-2 and\n//! stage-3) until `cargo kata verify stage-N --target workbench` passes.",
        )
        .replace(
            "    Ok(feed_core::Stage::new(\"stage-0\"",
            "    // Your own schema changes: the .sql files in workbench/migrations/ (none yet).\n    \
             feed_core::db::migrate_stage(&ctx.db, sqlx::migrate!(\"./migrations\"), \"workbench\").await?;\n    \
             Ok(feed_core::Stage::new(\"workbench\"",
        );
    let main = include_str!("../../stages/stage-0/src/main.rs")
        .replace(
            "/// stage-0: the feed service as it shipped (correct, and slow under load).",
            "/// workbench: your version of the feed service.",
        )
        .replace("stage_0::stage", "workbench::stage");
    [
        ("src/lib.rs", lib),
        ("src/feed.rs", include_str!("../../stages/stage-0/src/feed.rs").to_owned()),
        ("src/main.rs", main),
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
        .filter(|(name, start)| std::fs::read_to_string(dir.join(name)).ok().as_deref() != Some(start.as_str()))
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
    fn the_committed_workbench_is_the_start_state() {
        assert_eq!(changed_files(&workbench_dir()), Vec::<String>::new());
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
    fn every_stage_has_hints_and_the_last_nearly_gives_the_answer() {
        for stage in StageId::ALL {
            assert!(!hints(stage).is_empty(), "{stage}");
        }
        assert!(hints(StageId::Stage1).last().unwrap().contains("order by p.created_at desc, p.id desc"));
    }
}
