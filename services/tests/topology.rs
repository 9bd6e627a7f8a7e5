//! The scale-out topology is real: a Redis Cluster that fails over when a master dies, and
//! HAProxy that spreads requests over healthy instances and stops sending to a dead one.

use std::time::Duration;

use kata_services::{Haproxy, RedisCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica() {
    let mut cluster = RedisCluster::start(3, 1).await.expect("cluster starts");
    let masters = cluster.masters().await.expect("masters");
    assert_eq!(masters.len(), 3, "3 masters of 6 nodes: {masters:?}");

    // A key through a cluster client, then the master that owns it dies.
    let client = redis::cluster::ClusterClient::new(cluster.nodes_csv().split(',').collect::<Vec<_>>()).unwrap();
    let mut conn = client.get_async_connection().await.expect("cluster connection");
    let _: () = redis::cmd("SET").arg("{user:1}:k").arg("v").query_async(&mut conn).await.unwrap();
    // Replication is asynchronous: wait until the replica has the write, or its loss in the
    // crash below would be the cluster working as designed, not a failed failover.
    let replicas: i64 = redis::cmd("WAIT").arg(1).arg(1000).query_async(&mut conn).await.unwrap();
    assert_eq!(replicas, 1, "the write reached the owner's replica");
    let owner = cluster.owner_of("{user:1}:k").await.expect("the key's master");
    cluster.kill(owner);
    let took = cluster.wait_for_failover(owner, 3, Duration::from_secs(20)).await.expect("the replica is promoted");
    let after = cluster.masters().await.expect("masters after");
    assert_eq!(after.len(), 3, "still 3 masters: {after:?}");
    assert!(!after.contains(&owner), "{owner} is dead but listed as a master: {after:?}");
    eprintln!("failover took {} ms", took.as_millis());
    // The promoted replica serves the key written before the crash.
    let value: Option<String> = redis::cmd("GET").arg("{user:1}:k").query_async(&mut conn).await.unwrap();
    assert_eq!(value.as_deref(), Some("v"));

    // Every node down, then up again on its port: the same slots, no data (nothing persisted),
    // and a cluster client reconnects without being rebuilt.
    cluster.stop_all();
    for url in cluster.nodes_csv().split(',') {
        let connected = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await;
        assert!(connected.is_err(), "{url} still answers after stop_all");
    }
    cluster.restart_stopped().await.expect("the cluster comes back");
    assert_eq!(cluster.masters().await.expect("masters").len(), 3, "3 masters after the restart");
    let mut value: Option<Option<String>> = None;
    for _ in 0..50 {
        match redis::cmd("GET").arg("{user:1}:k").query_async::<Option<String>>(&mut conn).await {
            Ok(v) => {
                value = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(value, Some(None), "the old connection answers again, and the key is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_spreads_requests_and_skips_a_dead_instance() {
    // Two tiny HTTP servers answering /ready, standing in for instances of the service.
    let (a, a_addr) = ready_server().await;
    let (b, b_addr) = ready_server().await;
    let proxy = Haproxy::start(None, &[a_addr, b_addr]).await.expect("haproxy starts");
    // Wait until both are UP, then send 10 requests: round robin gives 5 each.
    wait_until(&proxy, |b| b.iter().all(|b| b.status == "UP")).await;
    assert_eq!(spread(&proxy, 10).await, [5, 5], "round robin over two healthy instances");

    // One instance dies: after its health checks fail, every request goes to the other.
    a.abort();
    wait_until(&proxy, |b| b.iter().any(|b| b.status.starts_with("DOWN"))).await;
    assert_eq!(spread(&proxy, 10).await, [0, 10], "nothing to the dead instance");

    // No healthy backend at all: the balancer answers 503 at once, never hangs.
    b.abort();
    wait_until(&proxy, |b| b.iter().all(|b| b.status.starts_with("DOWN"))).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let reply = http.get(format!("{}/api/feed", proxy.base_url())).send().await.expect("an answer, not a hang");
    assert_eq!(reply.status(), 503);
}

/// Up to 5 s for the balancer's view of its backends to satisfy `done`.
async fn wait_until(proxy: &Haproxy, done: impl Fn(&[kata_services::Backend]) -> bool) {
    for _ in 0..100 {
        if done(&proxy.backends().await.unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send `n` requests through the balancer (each answered 200); how many each backend got.
async fn spread(proxy: &Haproxy, n: usize) -> Vec<u64> {
    let requests = |backends: Vec<kata_services::Backend>| backends.iter().map(|b| b.requests).collect::<Vec<u64>>();
    let before = requests(proxy.backends().await.unwrap());
    let http = reqwest::Client::new();
    for _ in 0..n {
        assert_eq!(http.get(format!("{}/ready", proxy.base_url())).send().await.unwrap().status(), 200);
    }
    let after = requests(proxy.backends().await.unwrap());
    after.iter().zip(&before).map(|(a, b)| a - b).collect()
}

async fn ready_server() -> (tokio::task::JoinHandle<()>, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                }
            });
        }
    });
    (task, addr)
}
