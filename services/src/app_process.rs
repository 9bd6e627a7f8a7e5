//! An implementation of the feed API running as its own process, started the way a deployment
//! would: a command, an environment (database, Redis, secret, listen address), and a readiness
//! probe. The checker and the load test know nothing else about it, so a stage, the learner's
//! workbench and a service in another language are graded the same way.
//!
//! The process gets a process group of its own, so a shell command (`sh -c "…"`) and everything
//! it starts are stopped together: SIGTERM first (a clean shutdown), SIGKILL if it lingers. That
//! happens on [`AppProcess::stop_now`] and on drop, which covers errors, panics and Ctrl-C.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How a service is started.
#[derive(Debug, Clone)]
pub enum Launch {
    /// A binary cargo built (a stage, the workbench).
    Program(std::path::PathBuf),
    /// A shell command line, run with `sh -c` (any language: `python app.py`, `./run.sh`).
    Shell(String),
}

impl std::fmt::Display for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Program(program) => write!(f, "{}", program.display()),
            Self::Shell(command) => f.write_str(command),
        }
    }
}

/// The service settings of `.env.example`. A graded process gets none of them from the shell
/// that runs the checker (a `CACHE_TTL_SECS=5` left from an experiment would fail the reference
/// stage): only what the checker sets on purpose.
const SERVICE_SETTINGS: [&str; 14] = [
    "LISTEN_ADDR",
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_CLUSTER_NODES",
    "JWT_SECRET",
    "DB_POOL_SIZE",
    "DB_ACQUIRE_TIMEOUT_MS",
    "CACHE_TTL_SECS",
    "CACHE_TTL_JITTER_PCT",
    "RATE_FREE_PER_MIN",
    "RATE_FREE_BURST",
    "RATE_PRO_PER_MIN",
    "RATE_PRO_BURST",
    "RATE_LIMIT_ON_REDIS_ERROR",
];

/// Why a service did not come up. The message carries the evidence: the exit status or what
/// `/ready` last answered, and the last lines the process printed.
#[derive(Debug, thiserror::Error)]
#[error("{summary}\n--- last output of `{launch}` ---\n{output}")]
pub struct StartFailure {
    pub summary: String,
    pub launch: String,
    pub output: String,
}

pub struct AppProcess {
    child: Option<Child>,
    /// The process group: everything the command started, even after the leader has exited.
    group: Pid,
    pub base_url: String,
    log: tempfile::NamedTempFile,
    launch: Launch,
}

/// Lines of the process's output shown when it fails to start.
const OUTPUT_LINES: usize = 25;
/// How long a clean shutdown (SIGTERM) may take before the process group is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl AppProcess {
    /// Start `launch` with `env` (plus `LISTEN_ADDR` on a free port, unless `env` names one) and
    /// wait until `GET /ready` answers 200, or `ready_timeout` passes, or the process exits.
    pub async fn start(launch: &Launch, env: &[(String, String)], ready_timeout: Duration) -> anyhow::Result<Self> {
        let addr = match env.iter().find(|(name, _)| name == "LISTEN_ADDR") {
            Some((_, addr)) => addr.clone(),
            None => format!("127.0.0.1:{}", crate::free_port()?),
        };
        let log = tempfile::Builder::new().prefix("kata-app-").suffix(".log").tempfile()?;
        let mut command = match launch {
            Launch::Program(program) => Command::new(program),
            Launch::Shell(line) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(line);
                c
            }
        };
        use std::os::unix::process::CommandExt as _;
        for name in SERVICE_SETTINGS {
            command.env_remove(name);
        }
        command
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("LISTEN_ADDR", &addr)
            .stdin(Stdio::null())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?)
            // Its own process group: stopping it stops whatever a shell command started too.
            .process_group(0);
        let child = command.spawn().with_context(|| format!("starting `{launch}`"))?;
        let group = Pid::from_raw(child.id() as i32);
        let mut process =
            Self { child: Some(child), group, base_url: format!("http://{addr}"), log, launch: launch.clone() };
        process.wait_ready(&addr, ready_timeout).await?;
        Ok(process)
    }

    async fn wait_ready(&mut self, addr: &str, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let url = format!("{}/ready", self.base_url);
        let deadline = Instant::now() + timeout;
        let mut last = format!("nothing answered on {addr} (the LISTEN_ADDR it was given)");
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                // Whatever it started in the background goes with it.
                self.stop_now();
                return Err(self.failure(format!("it exited ({status}) before answering GET /ready with 200")).into());
            }
            match client.get(&url).send().await {
                Ok(reply) if reply.status().is_success() => return Ok(()),
                Ok(reply) => {
                    let status = reply.status();
                    let body: String = reply.text().await.unwrap_or_default().chars().take(300).collect();
                    last = format!("GET /ready answered {status}: {body}");
                }
                Err(_) => {}
            }
            if Instant::now() > deadline {
                let summary = format!("not ready within {} s: {last}", timeout.as_secs());
                self.stop_now();
                return Err(self.failure(summary).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn failure(&self, summary: String) -> StartFailure {
        StartFailure { summary, launch: self.launch.to_string(), output: self.last_output(OUTPUT_LINES) }
    }

    /// The last `lines` lines the process wrote to stdout and stderr.
    pub fn last_output(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut file) = self.log.reopen() {
            // The tail is what matters; a chatty process can write megabytes.
            let len = file.metadata().map_or(0, |m| m.len());
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
            let _ = file.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        if tail.is_empty() { "(no output)".into() } else { tail }
    }

    /// SIGTERM to the whole group, then SIGKILL after a grace period; whatever the leader left
    /// in the group is killed too (also when the leader had already exited).
    pub fn stop_now(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = killpg(self.group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(self.group, Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        self.stop_now();
    }
}
