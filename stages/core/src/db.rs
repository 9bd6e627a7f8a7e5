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

/// Put the schema back to what core's migrations create: drop every index on `posts` and `users`
/// that no constraint owns, and every stage's migration history (`_sqlx_migrations_*`). The
/// checker and the load test call this before starting an implementation, so each one runs on
/// exactly the schema its own migrations give it: stage-0 without the timeline index, stage-1
/// with the one it adds.
pub async fn reset_to_core_schema(db: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        r"do $$
        declare r record;
        begin
          for r in select i.indexname from pg_indexes i
                   where i.schemaname = 'public' and i.tablename in ('posts', 'users')
                     and not exists (select 1 from pg_constraint c where c.conname = i.indexname)
          loop execute format('drop index %I', r.indexname); end loop;
          for r in select tablename from pg_tables
                   where schemaname = 'public' and tablename like '\_sqlx\_migrations\_%'
          loop execute format('drop table %I', r.tablename); end loop;
        end $$;
        analyze posts;",
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Apply a stage's own migrations (the schema its fix needs), recorded in a history table of its
/// own, `_sqlx_migrations_<owner>`, beside core's `_sqlx_migrations`: core's migrator never sees
/// a version it does not know, and a stage's version numbers cannot collide with core's.
pub async fn migrate_stage(
    db: &PgPool,
    mut migrator: sqlx::migrate::Migrator,
    owner: &str,
) -> Result<(), sqlx::migrate::MigrateError> {
    migrator.dangerous_set_table_name(format!("_sqlx_migrations_{owner}"));
    migrator.run(db).await
}
