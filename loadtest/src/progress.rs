//! What a person watching sees while the load test works: progress bars on a terminal, a few
//! plain lines otherwise (CI logs stay readable), and Goose's console messages routed through
//! here so they never tear a bar.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Plain lines instead of bars: how often a run reports itself.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Bars on a terminal; `None` when stdout is a pipe or a file.
fn bars() -> Option<&'static MultiProgress> {
    static BARS: OnceLock<Option<MultiProgress>> = OnceLock::new();
    BARS.get_or_init(|| {
        std::io::stdout().is_terminal().then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()))
    })
    .as_ref()
}

/// Print a line without tearing a bar that is being drawn.
pub fn say(line: impl AsRef<str>) {
    match bars() {
        Some(bars) => bars.suspend(|| println!("{}", line.as_ref())),
        None => println!("{}", line.as_ref()),
    }
}

/// A step of unknown length (seeding, a build): a spinner with the time so far on a terminal,
/// its first line otherwise. [`Step::done`] prints what it achieved and how long it took.
pub struct Step {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Step {
    pub fn start(message: impl Into<String>) -> Self {
        let message = message.into();
        let bar = bars().map(|bars| {
            let bar = bars.add(ProgressBar::new_spinner());
            bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"));
            bar.set_message(message.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if bar.is_none() {
            println!("{message}");
        }
        Self { bar, started: Instant::now() }
    }

    /// A new message on the spinner (nothing without a terminal).
    pub fn update(&self, message: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.into());
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Replace the spinner with `line`.
    pub fn done(self, line: impl AsRef<str>) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        say(line);
    }
}

/// What the simulated readers have seen so far, fed by every request as it finishes.
#[derive(Default)]
pub struct Live {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Answers `429 Too Many Requests`, counted here rather than read from Goose, whose
    /// per-status counts include the requests coordinated-omission mitigation backfills.
    refused: AtomicU64,
    /// Response times (ms) since the last report, for a current p99.
    window: Mutex<Vec<u64>>,
}

impl Live {
    pub fn record(&self, millis: u64, ok: bool, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if status == 429 {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        self.window.lock().expect("not poisoned").push(millis);
    }

    /// Requests finished so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// `429`s so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn take_window(&self) -> Vec<u64> {
        std::mem::take(&mut *self.window.lock().expect("not poisoned"))
    }
}

/// The 99th percentile of `times`, by rank (none when empty).
pub fn p99(times: Vec<u64>) -> Option<u64> {
    (!times.is_empty()).then(|| kata_services::stats::percentile(&times, 0.99))
}

/// Reports a load phase once a second on a bar (requests, rate, current p99, errors, ETA), or
/// every few seconds as a plain line, until dropped.
pub struct RunProgress {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl RunProgress {
    pub fn start(label: String, length: Duration, live: Arc<Live>) -> Self {
        let bar = bars().map(|bars| {
            let bar = bars.add(ProgressBar::new(length.as_secs().max(1)));
            bar.set_style(
                ProgressStyle::with_template("{prefix} {bar:20} {elapsed:>3}/{duration} ETA {eta:>3} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.clone());
            bar
        });
        let every = if bar.is_some() { Duration::from_secs(1) } else { PLAIN_EVERY };
        let task = tokio::spawn({
            let bar = bar.clone();
            async move {
                let started = Instant::now();
                let mut ticker = tokio::time::interval(every);
                ticker.tick().await;
                let mut last_requests = 0;
                loop {
                    ticker.tick().await;
                    let requests = live.requests.load(Ordering::Relaxed);
                    let errors = live.errors.load(Ordering::Relaxed);
                    let rate = (requests - last_requests) as f64 / every.as_secs_f64();
                    last_requests = requests;
                    let p99 = p99(live.take_window()).map_or("–".into(), |ms| format!("{ms} ms"));
                    let error_pct = if requests == 0 { 0.0 } else { errors as f64 * 100.0 / requests as f64 };
                    let status =
                        format!("{requests} requests, {rate:.0} req/s, p99 {p99}, errors {errors} ({error_pct:.1} %)");
                    match &bar {
                        Some(bar) => {
                            bar.set_position(started.elapsed().as_secs().min(length.as_secs()));
                            bar.set_message(status);
                        }
                        None => {
                            println!("  {label} {:>3}/{} s: {status}", started.elapsed().as_secs(), length.as_secs())
                        }
                    }
                }
            }
        });
        Self { task, bar }
    }
}

impl Drop for RunProgress {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Goose's console log, shown through [`say`]: its warnings and errors, less the "threshold …
/// failed" lines (the summary gives the verdict, and an expected FAIL is not a crash).
struct GooseConsole;

impl log::Log for GooseConsole {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        if message.starts_with("threshold ") && message.contains(" failed") {
            return;
        }
        say(format!("goose {}: {message}", record.level().as_str().to_lowercase()));
    }

    fn flush(&self) {}
}

/// Install [`GooseConsole`] before Goose installs its own logger (it then keeps ours).
pub fn install_goose_console() {
    static CONSOLE: GooseConsole = GooseConsole;
    if log::set_logger(&CONSOLE).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_value_at_the_99th_rank() {
        assert_eq!(p99(vec![]), None);
        assert_eq!(p99(vec![7]), Some(7));
        let times: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(p99(times), Some(99));
        let times: Vec<u64> = (1..=1000).collect();
        assert_eq!(p99(times), Some(990));
    }

    #[test]
    fn live_counts_requests_errors_and_429s_and_empties_its_window() {
        let live = Live::default();
        live.record(5, true, 200);
        live.record(900, false, 429);
        live.record(7, false, 503);
        assert_eq!(live.requests.load(Ordering::Relaxed), 3);
        assert_eq!(live.errors.load(Ordering::Relaxed), 2);
        assert_eq!(live.refused(), 1);
        assert_eq!(live.take_window(), vec![5, 900, 7]);
        assert!(live.take_window().is_empty());
    }
}
