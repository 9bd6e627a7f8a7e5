//! The part of the feed service that every stage shares.
//!
//! A stage supplies only what its lesson is about: a [`FeedSource`] (how the feed is read) and,
//! for stage-3, extra layers around the API routes. Everything else is here, once.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod contract;
pub mod db;
pub mod error;
pub mod feed;
pub mod metrics;
pub mod redis_conn;
pub mod seed;

pub use app::{Context, Stage, router, run, serve};
pub use config::Config;
pub use error::ApiError;
pub use feed::{FeedError, FeedSource};
pub use redis_conn::RedisConn;

/// The allocator of every stage (and of everything else built on this crate: the checker, the
/// load test): mimalloc, not the system's. A cache hit allocates for the Redis reply, the body
/// and the headers, on every worker thread at once. In a profile of warm stage-3 hits glibc's
/// malloc and free took about a seventh of the service's CPU, and a 60-item page (13 KB) added
/// page faults that a 1-item page did not. Side by side (`scripts/hit-throughput`'s cases, the
/// same build with each allocator): warm hits served 10 to 17 % more requests a second, and a
/// 60-item page's service CPU per hit fell from 34 to 25 µs, which is most of the gap to a
/// 1-item page (22 µs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
