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

/// The workspace root (the checker lives in `checker/`).
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("checker/ has a parent")
}

fn state_dir() -> PathBuf {
    workspace().join("target/kata")
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
        let report = crate::checks::verify(env, bar, Target::Local(Implementation::Workbench)).await?;
        match report.failed().next() {
            None => {
                let _ = writeln!(out, "{:<8} PASS", bar.name());
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
                "\nNext: read {doc}; `checker verify {} --target workbench` shows the evidence; `checker hint {}` gives a nudge.",
                bar.name(),
                bar.name()
            );
        }
        None => out.push_str("\nAll three fixes pass. Try docs/interview.md and docs/review/ next.\n"),
    }
    Ok((out, done))
}

/// The workbench as it starts: stage-0's taught part.
pub fn start_state() -> [(&'static str, String); 2] {
    let lib = include_str!("../../stages/stage-0/src/lib.rs")
        .replace(
            "//! stage-0: the feed as it shipped. The response is right; the way it is read is not.",
            "//! Your workbench: it starts as stage-0. Change `feed.rs` (and this file, for stage-2 and\n//! stage-3) until `cargo run -p checker -- verify stage-N --target workbench` passes.",
        )
        .replace("\"stage-0\"", "\"workbench\"");
    [("lib.rs", lib), ("feed.rs", include_str!("../../stages/stage-0/src/feed.rs").to_owned())]
}

pub fn workbench_dir() -> PathBuf {
    workspace().join("workbench/src")
}

/// Files of `dir` that differ from the start state.
pub fn changed_files(dir: &Path) -> Vec<&'static str> {
    start_state()
        .into_iter()
        .filter(|(name, start)| std::fs::read_to_string(dir.join(name)).ok().as_deref() != Some(start.as_str()))
        .map(|(name, _)| name)
        .collect()
}

/// Put the start state back into `dir`, first copying whatever is there into `backup`.
pub fn reset(dir: &Path, backup: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(backup)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::copy(&path, backup.join(path.file_name().expect("a file has a name")))?;
        }
    }
    for (name, content) in start_state() {
        std::fs::write(dir.join(name), content)?;
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

    #[test]
    fn reset_restores_stage_0_and_keeps_a_copy_of_the_learners_work() {
        let dir = tempfile_dir("work");
        let backup = tempfile_dir("backup");
        std::fs::write(dir.join("feed.rs"), "// my half-done JOIN\n").unwrap();
        std::fs::write(dir.join("notes.rs"), "// my notes\n").unwrap();
        assert!(changed_files(&dir).contains(&"feed.rs"));

        reset(&dir, &backup).unwrap();

        assert_eq!(changed_files(&dir), Vec::<&str>::new());
        assert_eq!(std::fs::read_to_string(backup.join("feed.rs")).unwrap(), "// my half-done JOIN\n");
        assert_eq!(std::fs::read_to_string(backup.join("notes.rs")).unwrap(), "// my notes\n");
        assert!(std::fs::read_to_string(dir.join("lib.rs")).unwrap().contains("Stage::new(\"workbench\""));
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kata-{name}-{}-{}", std::process::id(), rand_id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn rand_id() -> u128 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    }

    #[test]
    fn every_stage_has_hints_and_the_last_nearly_gives_the_answer() {
        for stage in StageId::ALL {
            assert!(!hints(stage).is_empty(), "{stage}");
        }
        assert!(hints(StageId::Stage1).last().unwrap().contains("order by p.created_at desc, p.id desc"));
    }
}
