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
