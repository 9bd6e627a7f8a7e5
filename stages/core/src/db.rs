//! The Postgres pool and the schema migrations every stage shares.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::Config;

/// Connect the pool. It connects lazily so the service starts (and `/ready` says why it is not
/// ready) even while Postgres is still coming up.
pub fn pool(config: &Config) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(config.db_pool_size)
        .acquire_timeout(config.db_acquire_timeout())
        // No ping on every checkout: one statement is one round trip, as in the load model
        // (docs/loadtest.md). A connection that died is dropped when a statement on it fails.
        .test_before_acquire(false)
        .connect_lazy(&config.database_url)?)
}

/// Apply `stages/core/migrations/*.sql` (idempotent: applied ones are skipped).
pub async fn migrate(db: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(db).await
}
