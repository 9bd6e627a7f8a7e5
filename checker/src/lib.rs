//! The checker: proves what each stage claims by measuring it against real PostgreSQL and Redis.
//!
//! `verify` starts an implementation as its own process (a stage, the workbench, or any command;
//! or is pointed at one somebody else runs), drives it over HTTP only, and reads the
//! evidence where an engineer would: `pg_stat_statements` for statements per request, `EXPLAIN
//! (ANALYZE, BUFFERS)` for plans, Redis `INFO stats` and `TTL` for the cache, response codes and
//! headers for the rate limiter. Nothing it reports is asserted; everything is measured.

pub mod build;
pub mod checks;
pub mod client;
pub mod diagnose;
pub mod env;
pub mod explain;
pub mod incident;
pub mod learner;
pub mod pgss;
pub mod registry;
pub mod report;
pub mod review;
pub mod target;

pub use env::{EnvOptions, KataEnv};
pub use registry::CheckId;
pub use report::{Check, Report, Status, Verdict};
pub use target::{Implementation, StageId, Target, Topology};
