//! The Postgres pool and the schema migrations every stage shares.

use std::str::FromStr as _;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::Config;

/// The pool. Connections open on first use; every statement is cut off by the server after
/// the same time a request may wait for a connection, so no request holds one forever.
pub fn pool(config: &Config) -> anyhow::Result<PgPool> {
    let timeout_ms = config.db_acquire_timeout_ms.to_string();
    let options =
        PgConnectOptions::from_str(&config.database_url)?.options([("statement_timeout", timeout_ms.as_str())]);
    Ok(PgPoolOptions::new()
        .max_connections(config.db_pool_size)
        .acquire_timeout(config.db_acquire_timeout())
        // No ping on every checkout: one statement is one round trip, as in the load model
        // (docs/loadtest.md). A connection that died is dropped when a statement on it fails.
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// Apply `stages/core/migrations/*.sql` (idempotent: applied ones are skipped).
pub async fn migrate(db: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(db).await
}
