//! A TCP proxy that delays every byte by a fixed latency in each direction.
//!
//! Why it exists: on loopback a Postgres round trip takes ~0.05 ms, so 21 round trips per request
//! cost about 1 ms and the N+1 looks harmless. In production the database sits across a network;
//! the proxy puts that distance back so the kata's numbers mean what they would in production.
//!
//! Bytes are timestamped when read and written out once their delay has passed, so the proxy adds
//! latency without limiting throughput (pipelined traffic stays pipelined). It uses plain threads:
//! `std::thread::sleep` is precise to a few tens of microseconds, where an async timer rounds every
//! delay up to the next millisecond and would turn "1 ms" into nearly 2.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub struct LatencyProxy {
    addr: SocketAddr,
    stopped: Arc<AtomicBool>,
}

impl LatencyProxy {
    /// Listen on a free loopback port and forward to `upstream` (`host:port`).
    pub fn start(upstream: String, latency: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stopped = Arc::new(AtomicBool::new(false));
        let stop = stopped.clone();
        thread::Builder::new().name("db-latency-proxy".into()).spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    if let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) {
                        delayed_copy(from, to, latency);
                    }
                }
            }
        })?;
        Ok(Self { addr, stopped })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copy `from` → `to` on two threads: one reads and timestamps, one waits out each chunk's delay
/// and writes it.
fn delayed_copy(mut from: TcpStream, mut to: TcpStream, latency: Duration) {
    let _ = from.set_nodelay(true);
    let _ = to.set_nodelay(true);
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if tx.send((Instant::now() + latency, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    thread::spawn(move || {
        for (due, chunk) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
