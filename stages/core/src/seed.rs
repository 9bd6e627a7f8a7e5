//! Deterministic seed data, loaded with COPY.
//!
//! The same profile and seed always give the same rows (a fixed ChaCha RNG), so every learner,
//! test and snapshot sees the same feeds. Loading an already loaded profile is a no-op.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone as _, Utc};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use sqlx::PgPool;

pub const DEFAULT_SEED: u64 = 42;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// 300 users, ~10k posts, including empty and short timelines. Loads in about a second.
    Small,
    /// 10,000 users, ~1.1M posts, 20-200 per timeline: enough that the planner's choices matter.
    Medium,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Medium => "medium",
        }
    }

    pub fn users(self) -> i64 {
        match self {
            Self::Small => 300,
            Self::Medium => 10_000,
        }
    }

    /// How many posts are on `user_id`'s timeline.
    fn timeline_len(self, user_id: i64, rng: &mut ChaCha8Rng) -> i64 {
        match self {
            // Every 25th timeline is empty and every 5th short, so checks cover both.
            Self::Small if user_id % 25 == 0 => 0,
            Self::Small if user_id % 5 == 0 => rng.random_range(1..=19),
            Self::Small => rng.random_range(20..=60),
            Self::Medium => rng.random_range(20..=200),
        }
    }
}

/// The tier a seeded user has: every 10th is `pro`, every 100th (ending in 99) `internal`.
pub fn tier_of(user_id: i64) -> &'static str {
    match user_id {
        id if id % 100 == 99 => "internal",
        id if id % 10 == 0 => "pro",
        _ => "free",
    }
}

#[derive(Debug, serde::Serialize)]
pub struct SeedReport {
    pub profile: Profile,
    pub seed: u64,
    pub users: i64,
    pub posts: i64,
    /// True when this profile was already loaded and nothing was written.
    pub already_loaded: bool,
    #[serde(skip)]
    pub elapsed: Duration,
}

/// Load `profile` unless it is already there.
pub async fn seed(db: &PgPool, profile: Profile, seed: u64) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    let loaded: Option<(i64, i64)> =
        sqlx::query_as("select users, posts from kata_seed where profile = $1 and seed = $2")
            .bind(profile.name())
            .bind(seed as i64)
            .fetch_optional(db)
            .await?;
    if let Some((users, posts)) = loaded {
        return Ok(SeedReport { profile, seed, users, posts, already_loaded: true, elapsed: started.elapsed() });
    }

    let mut tx = db.begin().await?;
    sqlx::query("truncate posts, users, kata_seed restart identity").execute(&mut *tx).await?;

    let users = profile.users();
    let mut rows = String::new();
    for id in 1..=users {
        writeln!(rows, "{id}\t{}\t/avatars/{id}.png\t{}", name_of(id), tier_of(id))?;
    }
    let mut copy = tx.copy_in_raw("copy users (id, name, avatar, tier) from stdin").await?;
    copy.send(rows.into_bytes()).await?;
    copy.finish().await?;

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let newest = Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).single().expect("valid date");
    let mut copy = tx.copy_in_raw("copy posts (id, user_id, author_id, body, created_at) from stdin").await?;
    let mut post_id = 0i64;
    let mut chunk = String::with_capacity(1 << 20);
    for user_id in 1..=users {
        // Walk back in time from a per-timeline start; about one step in eight is zero, so some
        // posts share a created_at and the feed's order needs the id tie-breaker.
        let mut at = newest - chrono::Duration::seconds(rng.random_range(0..3 * 86_400));
        let mut times: Vec<DateTime<Utc>> = Vec::new();
        for _ in 0..profile.timeline_len(user_id, &mut rng) {
            times.push(at);
            let step = if rng.random_range(0..8) == 0 { 0 } else { rng.random_range(1..3_600) };
            at -= chrono::Duration::seconds(step);
        }
        // Ids grow with time, as they would in a live system.
        for created_at in times.into_iter().rev() {
            post_id += 1;
            let author_id = rng.random_range(1..=users);
            let body = body_text(&mut rng);
            writeln!(
                chunk,
                "{post_id}\t{user_id}\t{author_id}\t{body}\t{}",
                created_at.format("%Y-%m-%d %H:%M:%S+00")
            )?;
        }
        if chunk.len() > (1 << 20) - 4096 {
            copy.send(std::mem::take(&mut chunk).into_bytes()).await?;
        }
    }
    copy.send(chunk.into_bytes()).await?;
    copy.finish().await?;

    // New posts from POST /api/posts continue after the seeded ids.
    sqlx::query("select setval(pg_get_serial_sequence('posts', 'id'), greatest($1, 1))")
        .bind(post_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("insert into kata_seed (profile, seed, users, posts) values ($1, $2, $3, $4)")
        .bind(profile.name())
        .bind(seed as i64)
        .bind(users)
        .bind(post_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // Fresh statistics, so the planner sees the data it will serve.
    sqlx::query("analyze users, posts").execute(db).await?;
    Ok(SeedReport { profile, seed, users, posts: post_id, already_loaded: false, elapsed: started.elapsed() })
}

const FIRST: [&str; 16] = [
    "Ada", "Alan", "Barbara", "Dennis", "Edsger", "Frances", "Grace", "Guido", "Hedy", "John", "Ken", "Leslie",
    "Linus", "Margaret", "Radia", "Tony",
];
const LAST: [&str; 16] = [
    "Allen", "Backus", "Cerf", "Dijkstra", "Hamilton", "Hopper", "Hoare", "Kay", "Knuth", "Lamport", "Liskov",
    "Lovelace", "Perlman", "Ritchie", "Thompson", "Turing",
];
const WORDS: [&str; 24] = [
    "shipped", "the", "feed", "today", "latency", "query", "index", "cache", "coffee", "review", "merged", "deploy",
    "friday", "pager", "quiet", "night", "postgres", "redis", "tokens", "bucket", "join", "plan", "graph", "again",
];

fn name_of(id: i64) -> String {
    let i = id as usize;
    format!("{} {}", FIRST[i % FIRST.len()], LAST[(i / FIRST.len()) % LAST.len()])
}

fn body_text(rng: &mut ChaCha8Rng) -> String {
    let words = rng.random_range(4..=24);
    (0..words).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect::<Vec<_>>().join(" ")
}
