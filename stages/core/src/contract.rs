//! The numbers the kata promises, typed once. The stages take their defaults from here and the
//! checker grades against the same values, so a default and the bar it is graded by cannot drift
//! apart. docs/walkthrough/stage-2.md and docs/walkthrough/stage-3.md explain how each was chosen.

use crate::api::DEFAULT_LIMIT;

/// Statements per feed request of the N+1 as stage-0 ships it: the posts query, then one author
/// lookup per post of a full default page.
pub const N_PLUS_ONE_STATEMENTS: i64 = 1 + DEFAULT_LIMIT;

/// The stage-1 bar: statements per request may not grow with the page size, and are at most this
/// many (one JOIN: 1; posts, then all their authors in one batch: 2).
pub const MAX_STATEMENTS_PER_REQUEST: i64 = 2;

/// The freshness the product asks for (docs/stage-2.md): an author's changed name or avatar shows
/// within five minutes. New posts invalidate a cached timeline at once; what may be stale this
/// long is an author's name or avatar, so no cached page may live longer.
pub const MAX_STALENESS_SECS: u64 = 300;
/// Cache-aside: the longest a cached timeline is kept: the freshness bound itself.
pub const CACHE_TTL_SECS: u64 = MAX_STALENESS_SECS;
/// Random spread of each TTL below that, in percent (10: 270..300 s), so keys filled together
/// expire apart.
pub const CACHE_TTL_JITTER_PCT: u64 = 10;
/// The share of feed reads the cache must answer under a realistic read mix.
pub const MIN_HIT_RATIO: f64 = 0.95;

/// One tier's token bucket: up to `burst` requests at once, refilled at `per_min` a minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub per_min: u32,
    pub burst: u32,
}

impl Bucket {
    pub const fn per_sec(self) -> f64 {
        self.per_min as f64 / 60.0
    }
}

/// The free tier: a steady request a second, and a minute's worth at once after a quiet minute.
pub const FREE: Bucket = Bucket { per_min: 60, burst: 60 };
/// The pro tier: ten a second, bursts of 100.
pub const PRO: Bucket = Bucket { per_min: 600, burst: 100 };
