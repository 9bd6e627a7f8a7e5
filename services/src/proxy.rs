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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub struct LatencyProxy {
    addr: SocketAddr,
    stopped: Arc<AtomicBool>,
    hold: Arc<Hold>,
}

/// A race, made deterministic: while armed, every reply chunk from the database of at least
/// `min_bytes` (a page of feed rows) is held back until [`LatencyProxy::release`] (at most
/// `MAX_HOLD`), while small replies (an INSERT's) pass at the usual latency. The checker uses it
/// to make a cache fill read the database *before* a post commits and write to Redis *after* the
/// post invalidated the key.
#[derive(Default)]
struct Hold {
    min_bytes: AtomicUsize,
    /// Chunks held so far: the checker waits for the first before it lets the race go on.
    held: AtomicUsize,
}

/// A held reply is let go after this long even if nobody releases it: never a hang.
const MAX_HOLD: Duration = Duration::from_secs(10);

impl Hold {
    fn armed(&self) -> bool {
        self.min_bytes.load(Ordering::Relaxed) > 0
    }

    /// Is a chunk of `bytes` to be held? (Counted when it is.)
    fn holds(&self, bytes: usize) -> bool {
        let min = self.min_bytes.load(Ordering::Relaxed);
        let held = min > 0 && bytes >= min;
        if held {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
        held
    }
}

impl LatencyProxy {
    /// Listen on a free loopback port and forward to `upstream` (`host:port`).
    pub fn start(upstream: String, latency: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stopped = Arc::new(AtomicBool::new(false));
        let stop = stopped.clone();
        let hold = Arc::new(Hold::default());
        let holds = hold.clone();
        thread::Builder::new().name("db-latency-proxy".into()).spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                // Requests go out at the plain latency; replies may be held (see `Hold`).
                for (from, to, hold) in [(&client, &server, None), (&server, &client, Some(holds.clone()))] {
                    if let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) {
                        delayed_copy(from, to, latency, hold);
                    }
                }
            }
        })?;
        Ok(Self { addr, stopped, hold })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Hold database replies of at least `min_bytes` until [`Self::release`].
    pub fn hold_large_replies(&self, min_bytes: usize) {
        self.hold.min_bytes.store(min_bytes.max(1), Ordering::Relaxed);
    }

    /// How many reply chunks have been held since the proxy started.
    pub fn held_replies(&self) -> usize {
        self.hold.held.load(Ordering::Relaxed)
    }

    pub fn release(&self) {
        self.hold.min_bytes.store(0, Ordering::Relaxed);
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
fn delayed_copy(mut from: TcpStream, mut to: TcpStream, latency: Duration, hold: Option<Arc<Hold>>) {
    let _ = from.set_nodelay(true);
    let _ = to.set_nodelay(true);
    let (tx, rx) = mpsc::channel::<(Instant, bool, Vec<u8>)>();
    let gate = hold.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            let held = hold.as_ref().is_some_and(|h| h.holds(n));
            if tx.send((Instant::now() + latency, held, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    thread::spawn(move || {
        for (due, held, chunk) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if let Some(gate) = gate.as_ref().filter(|_| held) {
                let until = Instant::now() + MAX_HOLD;
                while gate.armed() && Instant::now() < until {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
