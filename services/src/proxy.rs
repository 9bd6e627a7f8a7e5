//! A TCP proxy that delays every byte by a fixed latency in each direction.
//!
//! Why it exists: on loopback a Postgres round trip takes ~0.05 ms, so 21 round trips per request
//! cost about 1 ms and the N+1 looks harmless. In production the database sits across a network;
//! the proxy puts that distance back so the kata's numbers mean what they would in production.
//!
//! Bytes are timestamped when read and written out once their delay has passed, so the proxy adds
//! latency without limiting throughput (pipelined traffic stays pipelined). It runs on its own
//! thread and runtime so a busy service or load generator does not add jitter to it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub struct LatencyProxy {
    addr: SocketAddr,
    latency: Duration,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl LatencyProxy {
    /// Listen on a free loopback port and forward to `upstream` (`host:port`).
    pub fn start(upstream: String, latency: Duration) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("db-latency-proxy".into())
            .spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    tokio::select! {
                        _ = stop => Ok(()),
                        result = accept_loop(listener, upstream, latency) => result,
                    }
                })
            })?;
        Ok(Self {
            addr,
            latency,
            shutdown: Some(shutdown),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn latency(&self) -> Duration {
        self.latency
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    latency: Duration,
) -> anyhow::Result<()> {
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                delayed_copy(client_read, server_write, latency),
                delayed_copy(server_read, client_write, latency),
            );
        });
    }
}

/// Copy `from` → `to`, each chunk leaving `latency` after it arrived.
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + latency, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    tokio::join!(reader, writer);
}
