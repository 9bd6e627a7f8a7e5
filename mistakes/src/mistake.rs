//! The catalogue: every mistake, the bar it belongs to, and the service that makes it.

use std::sync::Arc;

use feed_core::{Context, Stage};
use stage_2::CacheConfig;
use stage_3::RateLimitConfig;

use crate::cache::{LearnerCache, invalidate_first};
use crate::generation_cache::invalidate_callers_feed;
use crate::join::{self, LearnerJoin};
use crate::limiter::{LearnerLimiter, rate_limit};
use crate::{clock_bucket, contract, generation_cache};

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
    /// A `limit` outside 1..=100 is clamped into it instead of refused with 400 ("be liberal in
    /// what you accept"). A client that asked for 500 items gets 100 and no error.
    #[value(help = "a limit outside 1..=100 is clamped instead of refused with 400")]
    LimitClamped,
    /// A feed that cannot be read is answered as an empty feed ("never show users an error"). With
    /// Postgres down every user is told, with a 200, that nobody posted to them.
    #[value(help = "a database error is answered as an empty feed (200) instead of 503")]
    EmptyFeedOnDbError,

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
    // The stage-2 bar, a second learner's cache (generation_cache.rs), written from the brief.
    /// NOT a mistake: one string per page, a generation counter per timeline bumped by a post, a
    /// lock per page (`SET NX PX`) released after the fill, TTLs of 270 to 300 s. It must pass
    /// stage-2.
    #[value(help = "NOT a mistake: a cache with a page per key and a generation per timeline; must pass stage-2")]
    GenerationCache,
    /// The page lock is taken with `SET NX` and no expiry, and released after the fill. When a
    /// fill fails (Postgres unreachable for a second), its lock stays for ever: every later read
    /// of that page waits a second for a value that never comes, then reads Postgres, until a
    /// post bumps the timeline.
    #[value(help = "a page lock without expiry: a failed fill leaves it, and the page is never cached again")]
    LockWithoutExpiry,
    /// The lock is taken in two commands: `GET` it, and `SET` it if nobody holds it. Requests
    /// that miss together all see it free, all take it, and all read Postgres.
    #[value(help = "the lock is read, then set if free: concurrent misses all take it")]
    CheckThenSetLock,
    /// One lock per timeline while pages are cached per page size. A cold read of one page
    /// waits for the fill of another, which never stores what it waits for: a second, then
    /// Postgres.
    #[value(help = "one lock per timeline: a cold read of one page waits for another page's fill")]
    LockPerTimeline,
    /// A hit renews the page's TTL (`GETEX … EX`): "hot keys should not expire". A feed read
    /// every few minutes is never refreshed, and an author's new name never reaches it.
    #[value(help = "a hit renews the TTL (GETEX): a page read often never expires")]
    TtlRefreshOnHit,
    /// TTLs of 300 s ± 10 %: up to 330 s, half a minute past the five minutes the product
    /// allows for an author's change.
    #[value(help = "TTL 300 s ± 10 %: pages live up to 330 s, past the five-minute bound")]
    TtlPlusJitter,
    /// The cache's Redis client has no response timeout. A Redis that hangs (a stalled VM, a
    /// slow disk) holds every feed request for as long as it hangs.
    #[value(help = "Redis calls without a timeout: a hung Redis hangs every feed read")]
    NoRedisTimeout,
    /// "When I post, my feed changes": a post invalidates the caller's own timeline, not the one
    /// it was written to. Posting to somebody else's timeline leaves their cached feed stale.
    #[value(help = "a post invalidates the author's timeline, not the owner's")]
    InvalidateAuthorNotOwner,

    /// The cache's keys without a hash tag (`feed:v1:user:42` and `feed:v1:user:42:lock`). On
    /// one Redis nothing is wrong. On a Redis Cluster the two
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

    // The stage-3 bar, a second learner's limiter (clock_bucket.rs), written from the brief.
    /// NOT a mistake: a token bucket per user in a Redis hash, refilled by a Lua script from the
    /// service's clock. It must pass stage-3.
    #[value(help = "NOT a mistake: a bucket per user, refilled from the service's clock; must pass stage-3")]
    ClockBucket,
    /// The bucket is keyed by the bearer token ("the token names the session"). A user gets a
    /// new token at every login, and with it a full bucket: a script that logs in again is never
    /// limited.
    #[value(help = "the bucket is keyed by the bearer token: every new login gets a full bucket")]
    BucketByToken,
    /// The bucket is keyed by the user and the address they call from ("per device"). A client
    /// that spreads its requests over addresses gets a bucket per address.
    #[value(help = "the bucket is keyed by user and peer address: a bucket per address")]
    BucketPerDevice,
    /// A bucket per user and route (`GET /api/feed`, `POST /api/posts`): a budget per endpoint.
    /// The user's budget is then the sum over the routes.
    #[value(help = "a bucket per user and route: the budget multiplied by the routes")]
    BucketPerRoute,
    /// Only `GET /api/feed` is limited ("the feed is what gets hammered"). A loop of
    /// `POST /api/posts`, which writes and invalidates a cached timeline each time, is not.
    #[value(help = "only GET /api/feed is limited: posts are not")]
    LimitFeedOnly,
    /// The limiter runs before authentication and charges the user the token's payload names,
    /// without checking its signature. Anyone can spend anyone's budget with forged tokens that
    /// are then refused with 401.
    #[value(
        help = "the limiter runs before authentication, on the unverified token: forged tokens spend a user's budget"
    )]
    LimitBeforeAuth,
    /// The refill is rounded down to whole tokens, and the bucket's clock moves to now on every
    /// request. A client that asks more often than once per token never gets one back.
    #[value(
        help = "whole-token refill with the clock reset: a client asking faster than the rate is never admitted again"
    )]
    WholeTokenRefill,
    /// A refused request costs a token too ("every request costs one"). The bucket goes into
    /// debt: a client that keeps retrying never gets out of it, and the Retry-After it was given
    /// is a lie.
    #[value(help = "a refused request is charged too: retries put the bucket into debt")]
    RefusedRequestsSpend,
    /// `internal` callers get the pro bucket ("our jobs get the biggest one"). The kata's own
    /// batch jobs and health checkers with an internal token are cut at 100.
    #[value(help = "the internal tier gets the pro bucket instead of no limit")]
    InternalAsPro,
    /// A Redis error always lets the request through, whatever `RATE_LIMIT_ON_REDIS_ERROR` says:
    /// `closed`, chosen to protect the database, does nothing.
    #[value(help = "RATE_LIMIT_ON_REDIS_ERROR=closed is ignored: a Redis error always admits")]
    IgnoresFailClosed,
    /// The limiter's Redis client has no response timeout: a hung Redis holds every limited
    /// request for as long as it hangs.
    #[value(help = "limiter Redis calls without a timeout: a hung Redis hangs every request")]
    LimiterNoTimeout,
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
            NoTieBreaker | TimelineByAuthor | CutInRust | JoinWithoutIndex | BatchAuthors | LimitClamped
            | EmptyFeedOnDbError => "stage-1",
            GenerationCache
            | LockWithoutExpiry
            | CheckThenSetLock
            | LockPerTimeline
            | TtlRefreshOnHit
            | TtlPlusJitter
            | NoRedisTimeout
            | InvalidateAuthorNotOwner => "stage-2",
            TtlWithoutJitter
            | TtlOneDay
            | NoTtl
            | NoInvalidation
            | InvalidateBeforeInsert
            | FillWithoutLockCheck
            | NoStampedeLock
            | RedisError500
            | KeyPerLimit
            | KeyWithoutUser
            | KeysWithoutHashTags => "stage-2",
            BucketByPeerIp | BucketByForwardedFor | BucketInMemory | GetThenSet | FixedWindow | NoRetryAfter
            | TUntilFull | LimitHealthToo | LimiterRedisError500 => "stage-3",
            ClockBucket | BucketByToken | BucketPerDevice | BucketPerRoute | LimitFeedOnly | LimitBeforeAuth
            | WholeTokenRefill | RefusedRequestsSpend | InternalAsPro | IgnoresFailClosed | LimiterNoTimeout => {
                "stage-3"
            }
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
            LimitClamped => {
                Stage::new(NAME, stage_1::PostsWithAuthors::new(ctx.db)).with_api_layer(contract::clamp_limits)
            }
            EmptyFeedOnDbError => Stage::new(NAME, contract::EmptyOnError::new(ctx.db)),
            GenerationCache | LockWithoutExpiry | CheckThenSetLock | LockPerTimeline | TtlRefreshOnHit
            | TtlPlusJitter | NoRedisTimeout => {
                Stage::new(NAME, generation_cache::GenerationCache::new(&ctx, cache, self)?)
            }
            InvalidateAuthorNotOwner => {
                let layer = generation_cache::GenerationCache::new(&ctx, cache.clone(), self)?;
                Stage::new(NAME, generation_cache::GenerationCache::new(&ctx, cache, self)?)
                    .with_api_layer(move |api| invalidate_callers_feed(api, layer))
            }
            TtlWithoutJitter => stage_2::stage(ctx, CacheConfig { cache_ttl_jitter_pct: 0, ..cache }).await?,
            TtlOneDay => stage_2::stage(ctx, CacheConfig { cache_ttl_secs: 86_400, ..cache }).await?,
            InvalidateBeforeInsert => {
                let first = LearnerCache::new(&ctx, cache.clone(), self);
                Stage::new(NAME, LearnerCache::new(&ctx, cache, self))
                    .with_api_layer(|api| invalidate_first(api, first))
            }
            NoTtl | NoInvalidation | FillWithoutLockCheck | NoStampedeLock | RedisError500 | KeyPerLimit
            | KeyWithoutUser => Stage::new(NAME, LearnerCache::new(&ctx, cache, self)),
            KeysWithoutHashTags => Stage::new(NAME, LearnerCache::new(&ctx, cache, self)),
            BucketByPeerIp | BucketByForwardedFor | BucketInMemory | GetThenSet | FixedWindow | NoRetryAfter
            | TUntilFull | LimitHealthToo | LimiterRedisError500 => {
                let limiter = Arc::new(LearnerLimiter::new(ctx.redis.clone(), limits, &ctx.config.jwt_secret, self));
                let layer =
                    move |routes: axum::Router| routes.layer(axum::middleware::from_fn_with_state(limiter, rate_limit));
                let stage = Stage::new(NAME, stage_2::cached_feed(ctx, cache).await?);
                if self == LimitHealthToo { stage.with_app_layer(layer) } else { stage.with_api_layer(layer) }
            }
            ClockBucket | BucketByToken | BucketPerDevice | BucketPerRoute | LimitFeedOnly | LimitBeforeAuth
            | WholeTokenRefill | RefusedRequestsSpend | InternalAsPro | IgnoresFailClosed | LimiterNoTimeout => {
                let bucket = Arc::new(clock_bucket::ClockBucket::new(&ctx, limits, self)?);
                let layer = move |routes: axum::Router| {
                    routes.layer(axum::middleware::from_fn_with_state(bucket, clock_bucket::limit))
                };
                let stage = Stage::new(NAME, stage_2::cached_feed(ctx, cache).await?);
                // limit-before-auth: around the whole app, outside authentication (it lets
                // everything but /api through).
                if self == LimitBeforeAuth { stage.with_app_layer(layer) } else { stage.with_api_layer(layer) }
            }
        })
    }
}
