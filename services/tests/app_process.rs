//! A started implementation is stopped without holding up the async code that stops it.

use std::time::{Duration, Instant};

use kata_services::{AppProcess, Launch};

/// A service that ignores SIGTERM, so stopping it takes the whole grace period before SIGKILL:
/// the runtime (one thread here) keeps running other tasks meanwhile.
#[tokio::test]
async fn stopping_a_process_that_ignores_sigterm_leaves_the_runtime_free() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ready"), "ready").unwrap();
    let serve = format!(
        "trap '' TERM; cd {}; exec python3 -m http.server --bind 127.0.0.1 \"${{LISTEN_ADDR##*:}}\"",
        dir.path().display()
    );
    let mut app = AppProcess::start(&Launch::Shell(serve), &[], Duration::from_secs(20)).await.expect("it starts");
    let ticker = tokio::spawn(async {
        let mut ticks = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ticks += 1;
            if ticks == 10 {
                return Instant::now();
            }
        }
    });

    let stopping = Instant::now();
    app.stop().await;
    let stopped = Instant::now();

    let ticked = ticker.await.unwrap();
    assert!(ticked < stopped, "the other task had to wait for the stop ({:?} after it began)", ticked - stopping);
    let reply = reqwest::Client::new().get(format!("{}/ready", app.base_url)).send().await;
    assert!(reply.is_err(), "still answering after stop: {reply:?}");
}
