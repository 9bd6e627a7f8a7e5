//! A TCP proxy between the service and one of its servers (Postgres, Redis), which the checker
//! can use to delay, hold and order replies.
//!
//! Why it exists: on loopback a Postgres round trip takes ~0.05 ms, so 21 round trips per request
//! cost about 1 ms and the N+1 looks harmless. In production the database sits across a network;
//! the proxy puts that distance back so the kata's numbers mean what they would in production.
//! In front of Redis it adds no delay: it is there so the checker can force an interleaving that
//! a race needs, instead of hoping the scheduler produces it (see [`LatencyProxy::lockstep`]).
//!
//! Bytes are timestamped when read and written out once their delay has passed, so the proxy adds
//! latency without limiting throughput (pipelined traffic stays pipelined). It uses plain threads:
//! `std::thread::sleep` is precise to a few tens of microseconds, where an async timer rounds every
//! delay up to the next millisecond and would turn "1 ms" into nearly 2.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub struct LatencyProxy {
    addr: SocketAddr,
    stopped: Arc<AtomicBool>,
    gate: Arc<Gate>,
}

/// What the checker has asked the proxy to do with replies (server → service), besides delaying
/// them.
///
/// - **Hold large replies**: every reply chunk of at least `min_bytes` (a page of feed rows) waits
///   until [`LatencyProxy::release`], while small replies (an INSERT's) pass at the usual latency;
///   at most `budget` chunks are held, the rest pass. The checker uses it to make a cache fill
///   read the database *before* a post commits and write to Redis *after* the post invalidated
///   the key, or to stall one page's fill while another page is read.
/// - **Lockstep**: every reply waits until no request has arrived from any connection for
///   [`QUIET`] (at most [`LOCKSTEP_MAX_HOLD`]). Concurrent requests then move in rounds: each sends
///   its next command only after every other has sent the one before. A "read, then write if
///   empty" done in two commands is always a race lost: all the reads are answered before any
///   write arrives.
struct Gate {
    min_bytes: AtomicUsize,
    /// How many more chunks may be held (`usize::MAX`: any number).
    budget: AtomicUsize,
    /// Chunks held so far: the checker waits for the first before it lets the race go on.
    held: AtomicUsize,
    lockstep: AtomicBool,
    /// When the last request bytes arrived, in µs since `epoch`.
    last_request_us: AtomicU64,
    epoch: Instant,
}

/// A held reply is let go after this long even if nobody releases it: never a hang.
const MAX_HOLD: Duration = Duration::from_secs(10);
/// Lockstep: the silence that ends a round. Long enough for every request of a concurrent burst
/// to send its next command once its previous reply arrived (a few ms on a busy 2-core machine),
/// short enough to keep a round far below the service's Redis timeout.
pub const QUIET: Duration = Duration::from_millis(15);
/// Lockstep: no reply waits longer than this, however busy the connections are (a Redis call
/// that waits 150 ms counts as failed in the reference stages).
pub const LOCKSTEP_MAX_HOLD: Duration = Duration::from_millis(60);

impl Gate {
    fn new() -> Self {
        Self {
            min_bytes: AtomicUsize::new(0),
            budget: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            lockstep: AtomicBool::new(false),
            last_request_us: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn armed(&self) -> bool {
        self.min_bytes.load(Ordering::Relaxed) > 0
    }

    /// Is a chunk of `bytes` to be held? (Counted, and taken from the budget, when it is.)
    fn holds(&self, bytes: usize) -> bool {
        let min = self.min_bytes.load(Ordering::Relaxed);
        if min == 0 || bytes < min {
            return false;
        }
        let taken = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| match left {
                0 => None,
                usize::MAX => Some(usize::MAX),
                n => Some(n - 1),
            })
            .is_ok();
        if taken {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn request_arrived(&self) {
        self.last_request_us.store(self.now_us(), Ordering::Relaxed);
    }

    /// Lockstep: wait until the connections have been quiet for [`QUIET`], or the chunk read at
    /// `read_at` has waited [`LOCKSTEP_MAX_HOLD`].
    fn wait_for_round(&self, read_at: Instant) {
        while self.lockstep.load(Ordering::Relaxed) && read_at.elapsed() < LOCKSTEP_MAX_HOLD {
            let quiet_for = self.now_us().saturating_sub(self.last_request_us.load(Ordering::Relaxed));
            if quiet_for >= QUIET.as_micros() as u64 {
                return;
            }
            thread::sleep(Duration::from_micros(500));
        }
    }
}

impl LatencyProxy {
    /// Listen on a free loopback port and forward to `upstream` (`host:port`), adding `latency`
    /// in each direction (zero: none).
    pub fn start(upstream: String, latency: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stopped = Arc::new(AtomicBool::new(false));
        let stop = stopped.clone();
        let gate = Arc::new(Gate::new());
        let gates = gate.clone();
        thread::Builder::new().name("service-proxy".into()).spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                // Requests go out at the plain latency (and are timed for lockstep); replies may
                // be held (see `Gate`).
                for (from, to, direction) in
                    [(&client, &server, Direction::Request), (&server, &client, Direction::Reply)]
                {
                    if let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) {
                        delayed_copy(from, to, latency, direction, gates.clone());
                    }
                }
            }
        })?;
        Ok(Self { addr, stopped, gate })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Hold every reply of at least `min_bytes` until [`Self::release`].
    pub fn hold_large_replies(&self, min_bytes: usize) {
        self.hold_next_large_replies(min_bytes, usize::MAX);
    }

    /// Hold the next `count` replies of at least `min_bytes` until [`Self::release`]; later ones
    /// pass.
    pub fn hold_next_large_replies(&self, min_bytes: usize, count: usize) {
        self.gate.budget.store(count, Ordering::Relaxed);
        self.gate.min_bytes.store(min_bytes.max(1), Ordering::Relaxed);
    }

    /// How many reply chunks have been held since the proxy started.
    pub fn held_replies(&self) -> usize {
        self.gate.held.load(Ordering::Relaxed)
    }

    /// Let held replies go, and hold no more.
    pub fn release(&self) {
        self.gate.min_bytes.store(0, Ordering::Relaxed);
    }

    /// Move concurrent requests in rounds (see [`Gate`]) until called with `false`.
    pub fn lockstep(&self, on: bool) {
        self.gate.request_arrived();
        self.gate.lockstep.store(on, Ordering::Relaxed);
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Service → server.
    Request,
    /// Server → service: what the gate may hold.
    Reply,
}

/// Copy `from` → `to` on two threads: one reads and timestamps, one waits out each chunk's delay
/// (and, for replies, the gate) and writes it.
fn delayed_copy(mut from: TcpStream, mut to: TcpStream, latency: Duration, direction: Direction, gate: Arc<Gate>) {
    let _ = from.set_nodelay(true);
    let _ = to.set_nodelay(true);
    let (tx, rx) = mpsc::channel::<(Instant, Instant, bool, Vec<u8>)>();
    let reader_gate = gate.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            let held = match direction {
                Direction::Request => {
                    reader_gate.request_arrived();
                    false
                }
                Direction::Reply => reader_gate.holds(n),
            };
            let read_at = Instant::now();
            if tx.send((read_at + latency, read_at, held, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    thread::spawn(move || {
        for (due, read_at, held, chunk) in rx {
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if held {
                let until = Instant::now() + MAX_HOLD;
                while gate.armed() && Instant::now() < until {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            if direction == Direction::Reply {
                gate.wait_for_round(read_at);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
