//! The latency proxy really puts distance between client and Postgres.

use std::time::{Duration, Instant};

use kata_services::{LatencyProxy, Postgres};
use sqlx::Connection as _;

async fn median_round_trip(url: &str) -> Duration {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let mut samples = Vec::new();
    for _ in 0..41 {
        let started = Instant::now();
        sqlx::query("select 1").execute(&mut conn).await.unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn a_statement_through_the_proxy_takes_at_least_two_delays_longer() {
    let pg = Postgres::start().await.unwrap();
    let upstream = pg.url().split('@').nth(1).unwrap().split('/').next().unwrap().to_owned();
    let proxy = LatencyProxy::start(upstream.clone(), Duration::from_millis(5)).unwrap();
    let proxied = pg.url().replace(&upstream, &proxy.addr().to_string());

    let direct = median_round_trip(&pg.url()).await;
    let delayed = median_round_trip(&proxied).await;
    eprintln!("median statement round trip: direct {direct:?}, through a 5 ms proxy {delayed:?}");

    // One statement = one request and one response, each delayed by 5 ms.
    assert!(delayed >= direct + Duration::from_millis(10), "direct {direct:?}, proxied {delayed:?}");
}
