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

pub use app::{Context, Stage, run};
pub use config::Config;
pub use error::ApiError;
pub use feed::{FeedError, FeedSource};
pub use redis_conn::RedisConn;

/// The allocator every service binary declares (`#[global_allocator]` in each stage's, the
/// workbench's and the mistakes' `main.rs`): mimalloc, not the system's. A cache hit allocates
/// for the Redis reply, the body and the headers on every worker thread at once; with glibc's
/// malloc, malloc and free took a large share of a warm hit's CPU, and a full page's larger
/// buffers added page faults that a small page did not. docs/walkthrough/stage-2.md quotes what
/// `scripts/hit-throughput` measured with each. A library does not choose the allocator of what
/// links it: the checker and the load test keep the system's.
pub use mimalloc::MiMalloc as Allocator;
