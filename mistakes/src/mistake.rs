//! The catalogue: every mistake, the bar it belongs to, and the service that makes it.

use std::sync::Arc;

use feed_core::{Context, Stage};
use stage_2::CacheConfig;
use stage_3::RateLimitConfig;

use crate::cache::{LearnerCache, invalidate_first};
use crate::join::{self, LearnerJoin};
use crate::limiter::{LearnerLimiter, rate_limit};

/// One wrong (or, for `batch-authors`, differently right) solution. Each doc comment says what
/// the learner did, why it is wrong, and what a user of the service would see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mistake {
    // The stage-1 bar: the query.
    /// The JOIN orders by `created_at desc` alone. Posts written in the same instant (an import,
    /// a retried batch) have no defined order: Postgres returns them in whatever order its plan
    /// yields, so the page can differ from stage-0's and a post can repeat or vanish at a page
    /// boundary. The timeline index happens to hand them over by id, so it passes until the plan
    /// changes.
    #[value(help = "the JOIN orders by created_at only; posts created in the same instant come in any order")]
    NoTieBreaker,
    /// The JOIN filters `where p.author_id = $1`, the posts the user wrote, instead of
    /// `p.user_id`, the posts on their timeline. Users see their own posts and never what others
    /// posted to them; and no index serves that filter, so every request scans all posts.
    #[value(help = "the JOIN filters on author_id: users see the posts they wrote, not their timeline")]
    TimelineByAuthor,
    /// One JOIN without `limit`, the page cut with `.take(limit)` in Rust. One statement, the
    /// right JSON, but Postgres reads, joins and sends every post on the timeline to return 20:
    /// the cost grows with the timeline, so the longest timelines are the slowest.
    #[value(help = "one JOIN without LIMIT, cut with .take(limit) in Rust: every row of the timeline read and sent")]
    CutInRust,
    /// Stage-1's JOIN without stage-1's migration: no index on posts (user_id, created_at desc,
    /// id desc). One statement and the right JSON, but every request scans the whole posts table
    /// and sorts the user's rows: fast on a laptop's data, slow at production size.
    #[value(help = "stage-1's JOIN without its migration: a Seq Scan and a Sort per request")]
    JoinWithoutIndex,
    /// NOT a mistake: the posts query, then every author of the page in one
    /// `select … from users where id = any($1)` (docs/walkthrough/stage-1.md, "The other fix"). Two
    /// statements whatever the page size; the same JSON. It must pass stage-1.
    #[value(help = "NOT a mistake: posts, then their authors in one `any($1)` query (2 statements); must pass stage-1")]
    BatchAuthors,

    // The stage-2 bar: the cache.
    /// Stage-2 with `CACHE_TTL_JITTER_PCT=0`: every entry lives exactly 300 s. Keys filled
    /// together (after a deploy, a Redis restart, the morning peak) expire in the same second,
    /// and their misses reach Postgres as one wave, every 300 s.
    #[value(help = "stage-2 with CACHE_TTL_JITTER_PCT=0: every key EX 300; keys filled together expire together")]
    TtlWithoutJitter,
    /// Stage-2 with `CACHE_TTL_SECS=86400` ("cache it for a day, posts invalidate anyway").
    /// New posts still show, but a renamed author or a new avatar stays stale in cached feeds for
    /// up to a day, and so does a feed whose invalidation was lost while Redis was unreachable.
    #[value(help = "stage-2 with CACHE_TTL_SECS=86400: author names and avatars stale for a day")]
    TtlOneDay,
    /// Entries stored with a plain `SET`, no expiry ("posts invalidate it, why expire?"). Author
    /// edits never reach cached feeds, a lost invalidation is never repaired, and Redis keeps
    /// every timeline anyone ever read until it runs out of memory.
    #[value(help = "entries stored without expiry: stale authors forever, and Redis only grows")]
    NoTtl,
    /// `POST /api/posts` does not touch the cache. A new post appears only when the cached feed
    /// expires, up to five minutes later: the user who posts and reloads does not see it.
    #[value(help = "POST does not invalidate: a new post shows only when the cached feed expires")]
    NoInvalidation,
    /// The cached feed is deleted first, then the post is inserted. A read that lands between
    /// the two misses, reads Postgres before the insert commits and caches the timeline without
    /// the post; nothing deletes that entry again, so the post is invisible for the whole TTL.
    #[value(help = "the cached feed is deleted before the insert: a read in between caches the old timeline")]
    InvalidateBeforeInsert,
    /// The fill stores its page with a plain `SET` instead of "only while the lock is still
    /// mine". A fill that read Postgres just before a post writes its page after the post's
    /// invalidation: the post is missing from that feed until the TTL runs out.
    #[value(help = "the fill stores with a plain SET: a fill racing a post writes the stale page back")]
    FillWithoutLockCheck,
    /// No lock on a miss: every request that misses reads Postgres and stores the page. After an
    /// invalidation or an expiry, all of a user's concurrent requests (tabs, retries, a script)
    /// reach Postgres at once: the load the cache was there to absorb.
    #[value(help = "no stampede lock: N concurrent misses run N queries")]
    NoStampedeLock,
    /// A Redis error is returned as the feed's error instead of reading Postgres: with Redis down
    /// or slow, every feed request answers 500 although Postgres is fine. The cache, an
    /// optimisation, became a dependency.
    #[value(name = "redis-error-500", help = "a Redis error fails the feed request (500) instead of reading Postgres")]
    RedisError500,
    /// One key per (user, limit), each filled with exactly that page; the post handler has no
    /// `limit`, so it deletes only the default page's key. After a post, `?limit=20` shows it
    /// but `?limit=5` and `?limit=100` keep serving the old page until they expire.
    #[value(help = "one key per (user, limit); a post deletes only limit=20's: other page sizes stay stale")]
    KeyPerLimit,
    /// One key, `feed:v1`, for every user: whoever misses first fills it, and everyone is served
    /// that user's timeline until it expires. A data leak, not just a stale page.
    #[value(help = "one global key feed:v1: every user is served the first reader's feed")]
    KeyWithoutUser,
    /// The cache's keys without a hash tag (`feed:v1:user:42` and `feed:v1:user:42:lock`), in
    /// front of the reference limiter. On one Redis nothing is wrong. On a Redis Cluster the two
    /// keys hash to different slots, so the fill script, which touches both, is refused with
    /// CROSSSLOT: nothing is ever cached. (The DEL on a post still works: the cluster client
    /// splits it per slot.) Graded with `--topology cluster`.
    #[value(help = "cache keys without a hash tag: on a Redis Cluster every fill is refused (CROSSSLOT)")]
    KeysWithoutHashTags,

    // The stage-3 bar: the rate limiter (in front of the reference stage-2 cache).
    /// The bucket is keyed by the TCP peer address. Everyone behind one address (an office NAT,
    /// a mobile carrier, the load balancer in front of the service) shares one bucket, so one
    /// heavy user gets all the others 429s; a script with many addresses gets many buckets.
    #[value(help = "bucket keyed by the peer IP: everyone behind one address shares one bucket")]
    BucketByPeerIp,
    /// The bucket is keyed by the first `X-Forwarded-For` address, falling back to the peer.
    /// The client writes that header: a script that sends a new value with every request gets a
    /// fresh bucket every time and is never limited.
    #[value(help = "bucket keyed by X-Forwarded-For: a client picks a fresh bucket with every request")]
    BucketByForwardedFor,
    /// The bucket lives in process memory, per user id. Right on one instance; with two behind a
    /// load balancer each has its own bucket, so a user gets the burst twice (N instances: N
    /// times), and a restart hands everyone a full bucket.
    #[value(help = "per-process buckets: each instance admits the whole burst, N instances N times")]
    BucketInMemory,
    /// The bucket is read with `HMGET`, decided in Rust and written back with `HSET`: two round
    /// trips, nothing atomic. Concurrent requests read the same token count and are all
    /// admitted, so a burst on 50 connections goes through a bucket of 60 many times over.
    #[value(help = "HMGET, decide in Rust, HSET: concurrent requests spend the same tokens")]
    GetThenSet,
    /// `INCR` a counter per user, `EXPIRE` it after 60 s: a quota of the tier's requests per
    /// minute. Nothing refills: a user who spent the free 60 waits up to a minute instead of
    /// getting a token a second; two windows' quotas pass back to back at the boundary; and the
    /// pro tier's 600 a minute can arrive as one burst of 600 where the bucket allows 100.
    #[value(help = "INCR + EXPIRE 60: no continuous refill, and a whole minute's quota in one burst")]
    FixedWindow,
    /// 429 without `Retry-After`: clients cannot tell when to come back, so they retry at once,
    /// in a loop, and the overload feeds itself.
    #[value(help = "429 without a Retry-After header")]
    NoRetryAfter,
    /// `t` in the `RateLimit` header is the time until the bucket is full again (what older
    /// readings of the draft's "reset" suggest) instead of the time until the next token. A 429
    /// then says `Retry-After: 1` and `t=60`: a client that trusts `t` waits a minute for a token
    /// that came back after a second, and one that paces itself by `t` barely uses its quota.
    #[value(help = "RateLimit t = seconds until the bucket is full: a 429 says Retry-After 1 and t=60")]
    TUntilFull,
    /// The limiter wraps the whole app, `/health`, `/ready` and `/metrics` included; requests
    /// without a token share their address's bucket. Under load, a load balancer's probes and
    /// Prometheus scrapes get 429 and healthy instances are taken out of rotation.
    #[value(help = "the limiter also on /health, /ready and /metrics: probes and scrapes get 429")]
    LimitHealthToo,
    /// A Redis error in the limiter answers 500: a Redis outage takes the whole API down,
    /// though the feed could still be served from Postgres (the reference fails open).
    #[value(
        name = "limiter-redis-error-500",
        help = "a Redis error in the limiter answers 500 instead of failing open"
    )]
    LimiterRedisError500,
}

/// Settings a mistake may reuse, as the stage binaries read them.
pub struct Settings {
    pub cache: CacheConfig,
    pub limits: RateLimitConfig,
}

impl Mistake {
    /// The `checker verify` bar this mistake is written against.
    pub fn bar(self) -> &'static str {
        use Mistake::*;
        match self {
            NoTieBreaker | TimelineByAuthor | CutInRust | JoinWithoutIndex | BatchAuthors => "stage-1",
            TtlWithoutJitter
            | TtlOneDay
            | NoTtl
            | NoInvalidation
            | InvalidateBeforeInsert
            | FillWithoutLockCheck
            | NoStampedeLock
            | RedisError500
            | KeyPerLimit
            | KeyWithoutUser => "stage-2",
            BucketByPeerIp | BucketByForwardedFor | BucketInMemory | GetThenSet | FixedWindow | NoRetryAfter
            | TUntilFull | LimitHealthToo | LimiterRedisError500 | KeysWithoutHashTags => "stage-3",
        }
    }

    /// The service with this mistake in it.
    pub async fn stage(self, ctx: Context, settings: Settings) -> anyhow::Result<Stage> {
        use Mistake::*;
        const NAME: &str = "mistakes";
        let Settings { cache, limits } = settings;
        if self != JoinWithoutIndex {
            stage_1::migrate(&ctx.db).await?;
        }
        Ok(match self {
            NoTieBreaker | TimelineByAuthor | CutInRust => Stage::new(NAME, LearnerJoin::new(ctx.db, self)),
            JoinWithoutIndex => Stage::new(NAME, stage_1::PostsWithAuthors::new(ctx.db)),
            BatchAuthors => Stage::new(NAME, join::BatchAuthors::new(ctx.db)),
            TtlWithoutJitter => stage_2::stage(ctx, CacheConfig { cache_ttl_jitter_pct: 0, ..cache }).await?,
            TtlOneDay => stage_2::stage(ctx, CacheConfig { cache_ttl_secs: 86_400, ..cache }).await?,
            InvalidateBeforeInsert => {
                let first = LearnerCache::new(&ctx, cache.clone(), self);
                Stage::new(NAME, LearnerCache::new(&ctx, cache, self))
                    .with_api_layer(|api| invalidate_first(api, first))
            }
            NoTtl | NoInvalidation | FillWithoutLockCheck | NoStampedeLock | RedisError500 | KeyPerLimit
            | KeyWithoutUser => Stage::new(NAME, LearnerCache::new(&ctx, cache, self)),
            KeysWithoutHashTags => {
                let cached = Stage::new(NAME, LearnerCache::new(&ctx, cache, self));
                stage_3::limited(cached, ctx.redis.clone(), limits)
            }
            BucketByPeerIp | BucketByForwardedFor | BucketInMemory | GetThenSet | FixedWindow | NoRetryAfter
            | TUntilFull | LimitHealthToo | LimiterRedisError500 => {
                let limiter = Arc::new(LearnerLimiter::new(ctx.redis.clone(), limits, &ctx.config.jwt_secret, self));
                let layer =
                    move |routes: axum::Router| routes.layer(axum::middleware::from_fn_with_state(limiter, rate_limit));
                let stage = Stage::new(NAME, stage_2::cached_feed(ctx, cache).await?);
                if self == LimitHealthToo { stage.with_app_layer(layer) } else { stage.with_api_layer(layer) }
            }
        })
    }
}
