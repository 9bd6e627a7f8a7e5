//! The cache hit path, as a number: read a warm page's response body from a real Redis, for a
//! one-item page and a full one (100 items).
//!
//! `cargo bench -p stage-2 --bench hit_path` (needs `redis-server` on PATH; it starts its own).
//!
//! The cached shape promises that a hit costs about the same whatever the page size or the
//! timeline's length, so `v2_page/limit=1` and `v2_page/limit=100` should stay close (only the
//! bytes copied differ). `v1_items/*` is the shape stage-2 had before (the newest 100 items as
//! one JSON array, parsed, sliced and serialised again on every hit), measured beside it so the
//! difference stays visible.

use std::hint::black_box;

use chrono::{TimeZone as _, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use feed_core::FeedSource;
use feed_core::api::{Author, Feed, FeedItem, MAX_LIMIT};
use kata_services::RedisServer;
use stage_2::{CacheConfig, CachedFeed};

/// The stage binary's allocator, so the hit path is measured as it runs (see
/// [`feed_core::Allocator`]).
#[global_allocator]
static ALLOCATOR: feed_core::Allocator = feed_core::Allocator;

const USER: i64 = 42;

/// An inner source without a database: the cache only asks it once, to fill.
struct Synthetic;

fn item(n: i64) -> FeedItem {
    FeedItem {
        id: 10_000 - n,
        // About as long as a seeded post (4 to 24 words).
        body: "shipped the feed today latency query index cache coffee review merged deploy".into(),
        created_at: Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).single().expect("valid date")
            - chrono::Duration::seconds(n * 60),
        author: Author { id: n + 1, name: "Grace Hopper".into(), avatar: format!("/avatars/{}.png", n + 1) },
    }
}

#[async_trait::async_trait]
impl FeedSource for Synthetic {
    async fn feed(&self, _user_id: i64, limit: i64) -> Result<Vec<FeedItem>, feed_core::FeedError> {
        Ok((0..limit).map(item).collect())
    }
}

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let server = rt.block_on(RedisServer::start()).expect("redis-server starts (is it on PATH?)");
    let mut redis = rt
        .block_on(feed_core::RedisConn::connect(&server.url(), None, feed_core::app::REDIS_TIMEOUT))
        .expect("a redis url");

    let cache = CachedFeed::new(Synthetic, redis.clone(), CacheConfig::default());
    // The first read of each page size misses and fills it; every read after it is a hit.
    for limit in [1, MAX_LIMIT] {
        rt.block_on(cache.feed_json(USER, limit)).expect("the fill");
    }
    let pages: i64 =
        rt.block_on(redis::cmd("HLEN").arg(format!("feed:v2:{{user:{USER}}}")).query_async(&mut redis)).expect("HLEN");
    assert_eq!(pages, 2, "both pages are cached, so every read below is a hit");

    // The v1 shape: the whole page as one JSON string.
    let v1_key = format!("feed:v1:user:{USER}");
    let page: Vec<FeedItem> = (0..MAX_LIMIT).map(item).collect();
    let json = serde_json::to_string(&page).expect("serialises");
    rt.block_on(redis::cmd("SET").arg(&v1_key).arg(json).query_async::<()>(&mut redis)).expect("SET");

    let mut group = c.benchmark_group("cache_hit");
    for limit in [1, MAX_LIMIT] {
        group.bench_function(format!("v2_page/limit={limit}"), |b| {
            b.iter(|| rt.block_on(cache.feed_json(USER, black_box(limit))).expect("a hit"))
        });
        group.bench_function(format!("v1_items/limit={limit}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut redis = redis.clone();
                    let json: String = redis::cmd("GET").arg(&v1_key).query_async(&mut redis).await.expect("a hit");
                    let items: Vec<FeedItem> = serde_json::from_str(&json).expect("parses");
                    let items = items.into_iter().take(black_box(limit) as usize).collect();
                    serde_json::to_vec(&Feed { user_id: USER, items }).expect("serialises")
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
