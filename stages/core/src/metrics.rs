//! Prometheus metrics: request counts and latency by route and status, and the DB pool's state.
//! Stages add their own (cache hits, rate-limit decisions) with the `metrics` macros.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

/// The process's recorder (the `metrics` facade allows one per process), installed on first use.
/// A service process serves one app, whose `/metrics` renders it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                )
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// Middleware: count and time every request by method, matched route and status.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let labels = [("method", method), ("route", route), ("status", response.status().as_u16().to_string())];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

/// Set the pool gauges (called when `/metrics` is scraped, so they are current).
pub fn record_pool(db: &PgPool) {
    let size = db.size() as f64;
    let idle = db.num_idle() as f64;
    metrics::gauge!("db_pool_max").set(f64::from(db.options().get_max_connections()));
    metrics::gauge!("db_pool_size").set(size);
    metrics::gauge!("db_pool_idle").set(idle);
    metrics::gauge!("db_pool_active").set(size - idle);
}
