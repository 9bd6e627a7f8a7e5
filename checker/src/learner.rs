//! The learner's side of the checker: step-by-step hints, progress, and resetting the workbench.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::{Implementation, KataEnv, StageId, Target};

/// Hints per check, from a nudge (where to look, what to measure) to the precise fix. A failing
/// check prints its evidence, not these: `cargo kata hint <check>` reveals one more each time.
pub fn hints(check: &str) -> &'static [&'static str] {
    match check {
        "builds" => &[
            "Read the compiler's first error only: later ones often follow from it.",
            "`cargo build -p workbench` shows the same errors with full context; `cargo kata reset workbench` starts over (your files are kept aside).",
        ],
        "starts" => &[
            "The service must listen on LISTEN_ADDR and answer GET /ready with 200 once Postgres and Redis answer. The evidence shows its last output.",
            "Run it by hand with the checker's environment: `cargo kata up --serve none` prints what to export.",
        ],
        "feed.matches_oracle" | "equivalence.stage_0" => &[
            "The evidence lists the users and page sizes where the response differs: compare your feed with the rules in docs/api.md.",
            "Newest first by created_at; equal created_at: the larger id first. `limit` items at most; the timeline is the posts whose user_id is the caller.",
            "The order must be `order by p.created_at desc, p.id desc`, and the filter `where p.user_id = $1`. Posts can share a created_at (the seed data has ties).",
        ],
        "feed.order_is_total" => &[
            "The evidence shows the page your statement returns on a plan without index scans: compare it with the expected ids. Which posts swapped places?",
            "Posts can share a created_at. An order by created_at alone leaves ties to the plan; through the index they happen to come out right.",
            "Order by `created_at desc, id desc`: the id breaks every tie, on any plan.",
        ],
        "ratelimit.probes_unlimited" => &[
            "Which routes does your limiter wrap? Probes and scrapers call /health, /ready and /metrics without a user, and often.",
            "Apply the limiter as an api layer (`Stage::with_api_layer`): it then wraps /api/* only, inside authentication.",
        ],
        "errors.problem_json" => &[
            "Every error is application/problem+json with title, status and detail; the evidence names the requests that were not.",
            "Errors come from core's ApiError and Problem: return them instead of building responses by hand.",
        ],
        "posts.read_back" => &[
            "A post is written by the caller (author_id from the token) onto the timeline of user_id, and shows first in that timeline's feed.",
        ],
        "queries_per_request" => &[
            "Measure before you change anything: `cargo kata explain --stage workbench` shows the statements one burst of feed requests ran. Look at the calls column, not the mean.",
            "Which statement runs once per post? Compare its calls with the number of requests, and see how the count changes with ?limit=5 and ?limit=100.",
            "It is the author lookup in workbench/src/feed.rs: `post.author(&self.db)` inside the loop is one round trip to Postgres per post.",
            "Ask for the authors in the same statement as the posts: `from posts p left join users u on p.author_id = u.id`, selecting u.id, u.name and u.avatar beside the post columns, into one flat row struct mapped into FeedItem { author: Author { .. } }. (Batch loading, `where id = any($1)`, passes too: 2 statements.)",
        ],
        "plan.uses_timeline_index" => &[
            "Read the plan in the evidence from the innermost node out: how is posts read, and how many rows are removed or sorted to keep 20?",
            "`EXPLAIN (ANALYZE, BUFFERS)` of the posts query at the medium profile (`cargo kata explain --stage workbench --profile medium`) shows the same thing at a size where it hurts.",
            "The query filters by user_id and orders by created_at desc, id desc: an index with exactly those columns, in that order and direction, lets Postgres read the first N entries and stop.",
            "Add workbench/migrations/0001_timeline_index.sql with `create index idx_posts_user_created on posts (user_id, created_at desc, id desc);` (lib.rs applies workbench/migrations at start). Keep `limit $2` in the statement.",
        ],
        "cache.hit_ratio" | "cache.warm_read_statements" => &[
            "A repeated read of the same feed should not reach Postgres. The evidence shows how many did.",
            "Wrap your feed source in a second FeedSource that holds it (a decorator): lib.rs builds `Stage::new(\"workbench\", YourCache::new(inner, ctx.redis, ..))`.",
            "Cache-aside, one key per timeline: `HGET feed:v2:{user:ID} <limit>`; on a hit return those bytes from `feed_json` without touching Postgres; on a miss ask the inner source's `feed_json` and HSET the body under the page size, with `EXPIRE <ttl>` on the hash. (Caching the newest 100 items as one JSON value and slicing per request passes too; it costs more per hit.)",
            "On a Redis Cluster (`--topology cluster`), CROSSSLOT in the summary means one command or script touched keys in different slots, so the cluster refused it: give a timeline's keys one hash tag, `feed:v2:{user:42}` and `feed:v2:{user:42}:lock:20` (docs/scale-out.md, \"Slots and hash tags\").",
        ],
        "cache.ttl_jitter" => &[
            "How stale may a cached feed be? New posts are invalidated on write; only names and avatars can be stale until the TTL. Let that decide the TTL.",
            "Keys filled at the same moment expire at the same moment, and their misses arrive together. The evidence shows the spread of the TTLs.",
            "300 s, times a random factor between 0.9 and 1.1 per key (`SET … EX <ttl>`).",
        ],
        "cache.invalidation" => &[
            "After a 201 from POST /api/posts, the owner's next read (any page size, any instance) must show the post first. Which cached entries still hold the old page?",
            "Implement `timeline_changed` on your cache: the core calls it after every successful insert. Delete every entry that holds the owner's timeline (one key for all page sizes makes this one DEL).",
        ],
        "cache.race_fill_vs_post" => &[
            "Replay it: a read misses and queries Postgres; before its reply arrives, a post commits and invalidates; then the read stores what it read. What is in the cache now?",
            "A fill must only write if nothing invalidated the key since the fill began. Something the post deletes can tell the fill.",
            "Take the stampede lock with a random token; invalidation deletes the value *and* the lock; the fill writes with a Lua script that SETs only if the lock still holds its token.",
        ],
        "cache.race_read_during_post" => &[
            "Replay it: the post deletes the cached page, then inserts. A read in between misses and refills from Postgres. Which page does it store?",
            "Invalidate after the insert has committed, never before: the core's `timeline_changed` hook runs after the insert.",
        ],
        "cache.stampede" => &[
            "When a popular key is missing, how many requests recompute it at once? The evidence counts the statements for 120 concurrent reads of one cold feed.",
            "Let one request recompute a missing key while the others wait for its value, across every instance (so the lock lives in Redis).",
            "On a miss: `SET feed:v2:{user:ID}:lock:<limit> <token> NX PX 2000`. Whoever gets it recomputes; everyone else polls HGET every ~20 ms for up to a second, then reads Postgres.",
        ],
        "postgres_down" => &[
            "With the database gone, what the service cannot answer it must refuse quickly and clearly: 503 with a problem body, not a hang, not a 500. And it must recover by itself.",
            "Bound every wait on the database (a pool acquire timeout, a statement timeout) and map connection errors to 503; the core's ApiError does this for sqlx errors.",
        ],
        "redis_down" => &[
            "The cache is an optimisation: with Redis stopped, the feed must still answer 200 from Postgres, and hits must come back when Redis does, without a restart.",
            "Wrap each Redis call in `feed_core::app::redis_call` (a deadline) and treat any error as a miss: read the inner source, log and count it, never answer 5xx.",
        ],
        "ratelimit.burst" | "ratelimit.refill" => &[
            "A token bucket: a burst up to its size, then a steady rate. The evidence shows how many of a burst were admitted, and how many a wait of a few seconds gave back.",
            "Keep the bucket in Redis, per user: tokens and the time of the last update. Refill by elapsed × rate (capped at the size) on every request, then take one.",
            "One Lua script does it atomically in one round trip: TIME, HMGET tokens/at, refill, take 1 if ≥ 1, HSET, PEXPIRE. Over the limit: 429, `Retry-After: <whole seconds ≥ 1>`, problem+json.",
        ],
        "cluster.failover" => &[
            "A Redis Cluster master died and its replica took over. Meanwhile the cluster answers errors (CLUSTERDOWN, or a timeout), like a Redis outage: the feed must stay 200, and hits must come back on the promoted replica without a restart.",
            "Treat every cluster error as a Redis error: the cache reads Postgres, the limiter follows RATE_LIMIT_ON_REDIS_ERROR. Use the redis crate's cluster client (it follows MOVED and refreshes its slot map), with the same per-call deadline as on one Redis.",
        ],
        "ratelimit.across_instances" => &[
            "Several instances share one Redis. A limiter that counts in process memory gives each instance a bucket of its own.",
            "Keep the bucket in Redis, keyed by the user id, so every instance charges the same one.",
        ],
        "ratelimit.isolation" => &[
            "One user's burst must not cost anyone else a token, and a pro user gets a bigger bucket than a free one.",
            "Key the bucket by the user id from the verified token; size it by `AuthUser::tier`: free 60 (60/min), pro 100 (600/min), internal exempt.",
        ],
        "ratelimit.spoofed_headers" => &[
            "The burst changed X-Forwarded-For on every request. What does your limiter key on?",
            "Take `feed_core::auth::AuthUser` as an argument of your middleware and key the bucket by its id. Never by an address or a header the client sends.",
        ],
        "ratelimit.headers" => &[
            "Every limited /api response says the policy and where the caller stands: RateLimit-Policy and RateLimit (docs/api.md).",
            "`RateLimit-Policy: \"free\";q=60;w=60` and `RateLimit: \"free\";r=<tokens left>;t=<seconds until the next token, rounded up>` on every response, 429s included; on a 429, `t` equals `Retry-After`.",
        ],
        _ => &[],
    }
}

use crate::build::workspace;

/// Where the learner's progress (hints shown) and workbench backups are kept: beside the
/// workspace's files, not in target/, so `cargo clean` does not erase them. Git ignores it.
pub fn state_dir() -> PathBuf {
    workspace().join(".kata")
}

/// The next hint for `check` (all of them so far), remembering how many were shown.
pub fn next_hint(check: &str, reset: bool) -> anyhow::Result<String> {
    let all = hints(check);
    anyhow::ensure!(!all.is_empty(), "no hints for `{check}`; the check names are the ones `verify` prints");
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
pub async fn first_failing_check(env: &mut KataEnv, bar: Option<StageId>) -> anyhow::Result<Option<String>> {
    let bars = bar.map_or_else(|| vec![StageId::Stage1, StageId::Stage2, StageId::Stage3], |bar| vec![bar]);
    for bar in bars {
        let report = crate::checks::verify(env, bar, Target::Implementation(Implementation::Workbench)).await?;
        if let Some(check) = report.failed().next() {
            return Ok(Some(check.name.clone()));
        }
    }
    Ok(None)
}

/// `checker status`: the highest bar the workbench meets, and what to do next.
pub async fn status(env: &mut KataEnv) -> anyhow::Result<(String, bool)> {
    let mut out = String::from("bar      workbench  first failing check\n");
    let mut next = None;
    let mut unproven = false;
    for bar in [StageId::Stage1, StageId::Stage2, StageId::Stage3] {
        if next.is_some() {
            let _ = writeln!(
                out,
                "{:<8} -          (pass {} first)",
                bar.name(),
                next.as_ref().map_or("", |(b, _, _): &(StageId, String, String)| b.name())
            );
            continue;
        }
        let report = crate::checks::verify(env, bar, Target::Implementation(Implementation::Workbench)).await?;
        match report.failed().next() {
            None if report.verdict == crate::Verdict::Pass => {
                let _ = writeln!(out, "{:<8} PASS", bar.name());
            }
            None => {
                // Nothing failed, but something could not be measured here (the environment, not
                // the workbench: services it does not own): not a pass, and no reason to stop.
                let check = report.unresolved().next().expect("not proven means something unresolved");
                let _ = writeln!(out, "{:<8} UNPROVEN   {}: {}", bar.name(), check.name, check.summary);
                unproven = true;
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
                next = Some((
                    bar,
                    check.name.clone(),
                    check.doc.clone().unwrap_or_else(|| format!("docs/{}.md", bar.name())),
                ));
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
    let mut passed = None;
    for &bar in bars {
        let report = crate::checks::verify(env, bar, Target::Implementation(Implementation::Workbench)).await?;
        let Some(check) = report.failed().next() else {
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
            let _ = write!(out, "\n  read: {doc}   (`cargo kata hint {}` for a nudge)", check.name);
        }
        return Ok(out);
    }
    // "Passes" here: nothing failed. What could not run against these services is `status`'s to say.
    Ok(match passed {
        Some(StageId::Stage3) => "stage-3: nothing fails: all three fixes hold. Well done.".to_owned(),
        Some(bar) => format!("{}: nothing fails.", bar.name()),
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
    // The learner gets stage-0's code without its teaching comments: the comment that names the
    // lesson would be the diagnosis they are asked to make (docs/stage-0.md), and so would a
    // type named after the bug.
    let feed = include_str!("../../stages/stage-0/src/feed.rs")
        .lines()
        .filter(|line| !line.trim_start().starts_with("// "))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "//! Reads a timeline the way an ORM with lazy relations does.",
            "//! A user's feed: the newest posts of their timeline, each with its author.",
        )
        .replace("/// The post's author, like `post.author` on an ORM model.", "/// The post's author.")
        + "\n";
    let rename = |code: String| code.replace("PostsThenAuthors", "TimelineFeed");
    [("src/lib.rs", rename(lib)), ("src/feed.rs", rename(feed)), ("src/main.rs", main)]
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
    fn every_check_has_hints_from_a_nudge_to_the_fix() {
        let mut names = vec!["builds", "starts"];
        names.extend(crate::checks::planned(StageId::Stage3, true));
        for name in names {
            assert!(!hints(name).is_empty(), "{name} has no hints");
        }
        assert!(hints("queries_per_request").last().unwrap().contains("left join users"));
        assert!(!hints("queries_per_request")[0].contains("join"), "the first hint is a nudge, not the fix");
    }
}
