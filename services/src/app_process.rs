//! An implementation of the feed API running as its own process, started the way a deployment
//! would: a command, an environment (database, Redis, secret, listen address), and a readiness
//! probe. The checker and the load test know nothing else about it, so a stage, the learner's
//! workbench and a service in another language are graded the same way. It starts from an empty
//! environment: what it needs to run (see [`INHERITED`]) and the settings it is given, nothing
//! else from the shell that started us.
//!
//! The process gets a process group of its own, so a shell command (`sh -c "…"`) and everything
//! it starts are stopped together: SIGTERM first (a clean shutdown), SIGKILL if it lingers. That
//! happens on [`AppProcess::stop`] (async), [`AppProcess::stop_now`] and on drop, which covers
//! errors, panics and Ctrl-C.

use std::ffi::{OsStr, OsString};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::wait::{self, Look};

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

/// What a started process inherits from the shell that runs the checker or the load test: what
/// a program needs to run, to find its tools and to install its dependencies, and nothing that
/// configures a service. Everything else stays behind (a `CACHE_TTL_SECS=5` left from an
/// experiment would fail the reference stage, a `DATABASE_URL` would point it at another
/// database): a service is graded on the settings it is given on purpose, whatever names it
/// reads them from.
const INHERITED: &[&str] = &[
    // Any program: where its commands are, whose it is, where it may write.
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "TZ",
    // Text: the locale (LANG, LANGUAGE and every LC_*, see INHERITED_PREFIXES) and the terminal.
    "LANG",
    "LANGUAGE",
    "TERM",
    "NO_COLOR",
    // Rust: logs and backtraces, as the person running the checker asked for them.
    "RUST_LOG",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    // `--cmd 'cargo run …'`: the same toolchain and target directory (a flag such as RUSTFLAGS
    // is not passed through: set it in the command if the build needs it).
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "CARGO_TARGET_DIR",
    // A command that installs its dependencies when it first starts (examples/python/run.sh)
    // reaches the package index the way this shell does: proxies, certificates, and pip's own
    // settings (every PIP_*, see INHERITED_PREFIXES).
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    // Where examples/python/run.sh keeps its virtual environment.
    "KATA_PYTHON_VENV",
];

/// Inherited too: every name that starts with one of these (see [`INHERITED`]).
const INHERITED_PREFIXES: &[&str] = &["LC_", "PIP_"];

fn inherited(name: &OsStr) -> bool {
    name.to_str().is_some_and(|name| {
        INHERITED.contains(&name) || INHERITED_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
    })
}

/// The command that starts `launch`: from an empty environment, with what it needs to run from
/// `caller` (the environment we were started with; see [`INHERITED`]) and the `settings` given.
fn command(
    launch: &Launch,
    caller: impl IntoIterator<Item = (OsString, OsString)>,
    settings: &[(String, String)],
) -> Command {
    let mut command = match launch {
        Launch::Program(program) => Command::new(program),
        Launch::Shell(line) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(line);
            c
        }
    };
    command
        .env_clear()
        .envs(caller.into_iter().filter(|(name, _)| inherited(name)))
        .envs(settings.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

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
        use std::os::unix::process::CommandExt as _;
        let mut command = command(launch, std::env::vars_os(), env);
        command
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
        // What `/ready` answered last, if anything ever did.
        let mut last = format!("nothing answered on {addr} (the LISTEN_ADDR it was given)");
        let ready = async || -> anyhow::Result<Look<(), String>> {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!("it exited ({status}) before answering GET /ready with 200");
            }
            match client.get(&url).send().await {
                Ok(reply) if reply.status().is_success() => return Ok(Look::Ready(())),
                Ok(reply) => {
                    let status = reply.status();
                    let body: String = reply.text().await.unwrap_or_default().chars().take(300).collect();
                    last = format!("GET /ready answered {status}: {body}");
                }
                Err(_) => {}
            }
            Ok(Look::NotYet(last.clone()))
        };
        let timed_out = |last| anyhow::anyhow!("not ready within {} s: {last}", timeout.as_secs());
        if let Err(summary) = wait::until(timeout, Duration::from_millis(100), ready, timed_out).await {
            // Whatever it started in the background goes with it.
            self.stop().await;
            return Err(self.failure(summary.to_string()).into());
        }
        Ok(())
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

    /// Stop it (see [`Self::stop_now`]) from async code: the grace period is waited out on a
    /// blocking thread, not on the runtime's worker. Once this returns, the group is gone.
    pub async fn stop(&mut self) {
        let Some(child) = self.child.take() else { return };
        let group = self.group;
        // Cancelled or not, the blocking thread finishes the job: it owns the child now.
        let _ = tokio::task::spawn_blocking(move || stop_group(group, child)).await;
    }

    /// SIGTERM to the whole group, then SIGKILL after a grace period; whatever the leader left
    /// in the group is killed too (also when the leader had already exited). It blocks for up to
    /// the grace period: async code calls [`Self::stop`].
    pub fn stop_now(&mut self) {
        if let Some(child) = self.child.take() {
            stop_group(self.group, child);
        }
    }
}

/// SIGTERM to `group`, up to [`STOP_GRACE`] for `leader` to exit, then SIGKILL to the group.
fn stop_group(group: Pid, mut leader: Child) {
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && leader.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(group, Signal::SIGKILL);
    let _ = leader.wait();
}

impl Drop for AppProcess {
    /// A drop cannot wait for anything async: it stops the group right here (errors, panics and
    /// Ctrl-C end up here).
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_inherits_what_it_needs_to_run_and_no_setting_of_the_caller() {
        let caller = [
            ("PATH", "/usr/bin:/bin"),
            ("LC_ALL", "C.UTF-8"),
            ("PIP_FIND_LINKS", "/opt/wheels"),
            // Left in the caller's shell from an experiment: the service must not see them.
            ("CACHE_TTL_SECS", "5"),
            ("RATE_FREE_BURST", "1"),
            ("DATABASE_URL", "postgres://someone@elsewhere/db"),
            ("AWS_SECRET_ACCESS_KEY", "not for the service"),
        ]
        .map(|(name, value)| (OsString::from(name), OsString::from(value)));
        let settings = [("DATABASE_URL".to_owned(), "postgres://kata@127.0.0.1:5432/kata".to_owned())];

        let printed = command(&Launch::Shell("env".into()), caller, &settings).output().expect("sh runs");

        let env = String::from_utf8(printed.stdout).unwrap();
        // What the shell itself adds (dash: PWD; bash as sh: SHLVL and `_` too) is not inherited.
        let own = ["PWD=", "SHLVL=", "_="];
        let mut env: Vec<&str> = env.lines().filter(|line| !own.iter().any(|o| line.starts_with(o))).collect();
        env.sort_unstable();
        assert_eq!(
            env,
            [
                "DATABASE_URL=postgres://kata@127.0.0.1:5432/kata",
                "LC_ALL=C.UTF-8",
                "PATH=/usr/bin:/bin",
                "PIP_FIND_LINKS=/opt/wheels",
            ]
        );
    }
}
