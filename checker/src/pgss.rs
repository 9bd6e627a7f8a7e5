//! `pg_stat_statements`: what the database executed, counted by the database.
//!
//! Counting works by difference: snapshot, drive requests, snapshot again. The checker sends no
//! SQL of its own between the two snapshots, and the snapshot query itself is excluded, so the
//! difference is exactly what the service executed for those requests.

use std::collections::HashMap;

use sqlx::PgPool;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Statement {
    pub query: String,
    pub calls: i64,
    pub total_ms: f64,
}

impl Statement {
    pub fn mean_ms(&self) -> f64 {
        if self.calls == 0 { 0.0 } else { self.total_ms / self.calls as f64 }
    }

    /// The statement on one line, whitespace collapsed, cut to `width` characters.
    pub fn snippet(&self, width: usize) -> String {
        let flat = self.query.split_whitespace().collect::<Vec<_>>().join(" ");
        if flat.chars().count() <= width {
            flat
        } else {
            format!("{}…", flat.chars().take(width - 1).collect::<String>())
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot(HashMap<i64, Statement>);

/// Make sure the extension exists (it needs `shared_preload_libraries=pg_stat_statements`).
pub async fn ensure_extension(admin: &PgPool) -> anyhow::Result<()> {
    sqlx::query("create extension if not exists pg_stat_statements").execute(admin).await?;
    if let Err(e) = sqlx::query("select 1 from pg_stat_statements limit 1").execute(admin).await {
        anyhow::bail!(
            "pg_stat_statements is installed but not loaded ({e}). Start Postgres with \
             shared_preload_libraries=pg_stat_statements (docker-compose.yml does), or unset \
             DATABASE_URL so the checker starts its own."
        );
    }
    Ok(())
}

/// Forget every statement counted so far (`pg_stat_statements_reset()`): the next text seen for a
/// statement's shape is the one kept.
pub async fn reset(admin: &PgPool) -> anyhow::Result<()> {
    sqlx::query("select pg_stat_statements_reset()").execute(admin).await?;
    Ok(())
}

pub async fn snapshot(admin: &PgPool) -> anyhow::Result<Snapshot> {
    let rows: Vec<(i64, String, i64, f64)> = sqlx::query_as(
        "select s.queryid, s.query, s.calls, s.total_exec_time
         from pg_stat_statements s
         join pg_database d on d.oid = s.dbid
         where d.datname = current_database()
           and s.toplevel
           and s.queryid is not null
           and s.query not ilike '%pg_stat_statements%'",
    )
    .fetch_all(admin)
    .await?;
    Ok(Snapshot(
        rows.into_iter().map(|(id, query, calls, total_ms)| (id, Statement { query, calls, total_ms })).collect(),
    ))
}

/// What ran between `before` and `after`, most calls first.
pub fn delta(before: &Snapshot, after: &Snapshot) -> Vec<Statement> {
    let mut ran: Vec<Statement> = after
        .0
        .iter()
        .filter_map(|(id, now)| {
            let (calls, total) = before.0.get(id).map_or((0, 0.0), |b| (b.calls, b.total_ms));
            (now.calls > calls).then(|| Statement {
                query: now.query.clone(),
                calls: now.calls - calls,
                total_ms: now.total_ms - total,
            })
        })
        .collect();
    ran.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.query.cmp(&b.query)));
    ran
}

/// The same statements, most total time first: where the database spent the time.
pub fn by_total_time(mut statements: Vec<Statement>) -> Vec<Statement> {
    statements.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    statements
}

pub fn total_calls(statements: &[Statement]) -> i64 {
    statements.iter().map(|s| s.calls).sum()
}

/// The table a senior would paste into the incident channel.
pub fn table(statements: &[Statement], rows: usize) -> String {
    let mut out = format!("{:>7}  {:>8}  {:>9}  statement\n", "calls", "mean ms", "total ms");
    for s in statements.iter().take(rows) {
        out.push_str(&format!("{:>7}  {:>8.3}  {:>9.1}  {}\n", s.calls, s.mean_ms(), s.total_ms, s.snippet(90)));
    }
    out
}
