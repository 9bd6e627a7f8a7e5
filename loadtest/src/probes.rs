//! What Goose cannot see from the outside: how many statements Postgres ran, how busy the
//! service's connection pool was, and how often its cache had the answer.

use std::time::Duration;

use kata_services::prometheus::value;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every statement except our own reads of pg_stat_statements.
const STATEMENTS: &str = "select coalesce(sum(calls), 0)::bigint from pg_stat_statements \
                          where query not like '%pg_stat_statements%'";

/// How often the pool gauges are read: often enough to see a pool that fills up for a moment.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The direct connection to Postgres (not through the proxy), when we have one, and a client for
/// the service's `/metrics`.
pub struct Probes {
    db: Option<PgPool>,
    http: reqwest::Client,
}

/// Counters read at one moment; a run's figures are the difference of two.
pub struct Snapshot {
    pub statements: Option<i64>,
    pub cache: Option<CacheCounts>,
}

/// The service's own `cache_hits_total` and `cache_misses_total` (stage 2 and later). Redis's
/// keyspace_hits would also count the rate limiter's bucket reads and the cache's lock checks.
#[derive(Clone, Copy)]
pub struct CacheCounts {
    pub hits: f64,
    pub misses: f64,
}

impl Probes {
    /// A database without pg_stat_statements is left out with a warning rather than failing the
    /// run: the load test itself does not need it.
    pub async fn connect(database_url: Option<&str>) -> anyhow::Result<Self> {
        let db = match database_url {
            Some(url) => {
                let db = PgPoolOptions::new().max_connections(1).connect(url).await?;
                let usable = async {
                    sqlx::query("create extension if not exists pg_stat_statements").execute(&db).await?;
                    sqlx::query(STATEMENTS).execute(&db).await
                };
                match usable.await {
                    Ok(_) => Some(db),
                    Err(e) => {
                        eprintln!("warning: no statement counts, pg_stat_statements is not usable: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        let http = reqwest::Client::builder().timeout(SAMPLE_EVERY * 4).build()?;
        Ok(Self { db, http })
    }

    /// The counters now, of the database and of the service's instances at `instance_urls`
    /// (added up: each is asked directly, since through a balancer a scrape sees one of them).
    pub async fn snapshot(&self, instance_urls: &[String]) -> anyhow::Result<Snapshot> {
        let statements = match &self.db {
            Some(db) => Some(sqlx::query_scalar(STATEMENTS).fetch_one(db).await?),
            None => None,
        };
        let mut cache: Option<CacheCounts> = None;
        for url in instance_urls {
            // A counter appears with its first increment: absent means none yet.
            if let Some(text) = scrape(&self.http, url).await {
                let counts = cache.get_or_insert(CacheCounts { hits: 0.0, misses: 0.0 });
                counts.hits += value(&text, "cache_hits_total").unwrap_or(0.0);
                counts.misses += value(&text, "cache_misses_total").unwrap_or(0.0);
            }
        }
        Ok(Snapshot { statements, cache })
    }

    /// Start reading the pool gauges of the instances at `instance_urls` (added up).
    pub fn sample_pool(&self, instance_urls: &[String]) -> PoolSampler {
        PoolSampler::start(self.http.clone(), instance_urls.to_vec())
    }
}

/// The service's `/metrics` text, if it answers.
async fn scrape(http: &reqwest::Client, base_url: &str) -> Option<String> {
    let response = http.get(format!("{base_url}/metrics")).send().await.ok()?;
    response.error_for_status().ok()?.text().await.ok()
}

/// The service's DB pool over a run, from its `db_pool_active` and `db_pool_max` gauges.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PoolUse {
    pub active_mean: f64,
    pub active_max: f64,
    /// `db_pool_max`: the most connections the pool may hold.
    pub size: f64,
    pub samples: usize,
}

/// Reads the service's pool gauges every [`SAMPLE_EVERY`] until finished.
pub struct PoolSampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Option<PoolUse>>,
}

impl PoolSampler {
    fn start(http: reqwest::Client, instance_urls: Vec<String>) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SAMPLE_EVERY);
            let mut samples = Vec::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticker.tick() => {
                        // Every instance's pool at this tick, as one pool of their sizes' sum.
                        let mut sum: Option<(f64, f64)> = None;
                        for url in &instance_urls {
                            if let Some((active, max)) = pool_gauges(&http, url).await {
                                let total = sum.get_or_insert((0.0, 0.0));
                                *total = (total.0 + active, total.1 + max);
                            }
                        }
                        samples.extend(sum);
                    }
                }
            }
            summarise(&samples)
        });
        Self { stop, task }
    }

    /// Stop sampling; `None` when the service never answered with pool gauges.
    pub async fn finish(self) -> Option<PoolUse> {
        let _ = self.stop.send(());
        self.task.await.ok().flatten()
    }
}

/// `(db_pool_active, db_pool_max)` now, if the service exposes them.
async fn pool_gauges(http: &reqwest::Client, base_url: &str) -> Option<(f64, f64)> {
    let text = scrape(http, base_url).await?;
    Some((value(&text, "db_pool_active")?, value(&text, "db_pool_max")?))
}

fn summarise(samples: &[(f64, f64)]) -> Option<PoolUse> {
    if samples.is_empty() {
        return None;
    }
    let active = samples.iter().map(|(active, _)| active);
    Some(PoolUse {
        active_mean: active.clone().sum::<f64>() / samples.len() as f64,
        active_max: active.fold(0.0, |a, &b| f64::max(a, b)),
        size: samples.iter().map(|(_, max)| *max).fold(0.0, f64::max),
        samples: samples.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_use_is_mean_and_max_of_the_samples() {
        let pool = summarise(&[(2.0, 10.0), (4.0, 10.0), (9.0, 10.0)]).unwrap();
        assert_eq!((pool.active_mean, pool.active_max, pool.size), (5.0, 9.0, 10.0));
        assert!(summarise(&[]).is_none());
    }
}
