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

/// Holding one connection's reply holds nothing else: a second connection's query is answered at
/// once, and the held one is answered only once released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_reply_holds_only_its_own_connection() {
    let pg = Postgres::start().await.unwrap();
    let upstream = pg.url().split('@').nth(1).unwrap().split('/').next().unwrap().to_owned();
    let proxy = LatencyProxy::start(upstream.clone(), Duration::from_millis(1)).unwrap();
    let proxied = pg.url().replace(&upstream, &proxy.addr().to_string());
    let mut first = sqlx::PgConnection::connect(&proxied).await.unwrap();
    let mut second = sqlx::PgConnection::connect(&proxied).await.unwrap();
    let large = "select repeat('x', 4000)";

    proxy.hold_next_large_replies(1024, 1);
    let held = tokio::spawn(async move {
        let started = Instant::now();
        sqlx::query(large).execute(&mut first).await.unwrap();
        started.elapsed()
    });
    while proxy.held_replies() == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = Instant::now();
    sqlx::query(large).execute(&mut second).await.unwrap();
    let other = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.release();
    let held = held.await.unwrap();
    eprintln!("other connection {other:?}, held one {held:?}");
    assert!(other < Duration::from_millis(200), "the other connection waited {other:?}");
    assert!(held >= Duration::from_millis(300), "the held reply came after {held:?}");
    assert_eq!(proxy.held_replies(), 1);
}
