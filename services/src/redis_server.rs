//! A throwaway `redis-server` on a free port, without persistence.
//!
//! It can be stopped and started again on the same port, which is how the checker proves that a
//! Redis outage degrades the service instead of taking it down.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow};

use crate::wait;

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

const INSTALL_HINT: &str = "redis-server was not found on PATH. Install it \
(Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`), or point REDIS_URL \
at a running Redis (docker compose up -d redis).";

impl RedisServer {
    pub async fn start() -> anyhow::Result<Self> {
        crate::on_path("redis-server").context(INSTALL_HINT)?;
        let mut server = Self {
            child: None,
            port: crate::free_port()?,
            dir: tempfile::Builder::new().prefix("kata-redis-").tempdir()?,
        };
        server.restart().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kill the server (as a crash would: no goodbye to clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze the server (SIGSTOP): connections stay open and commands are accepted, but nothing
    /// is answered until [`Self::resume`], as when Redis hangs on a slow disk or a stalled VM.
    pub fn pause(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Let a paused server go on (SIGCONT): it answers what it was sent meanwhile, in order.
    pub fn resume(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// Start (again) on the same port; data from before a stop is gone, as after a real restart.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let client = redis::Client::open(self.url())?;
        let ping = async || -> redis::RedisResult<String> {
            redis::cmd("PING").query_async(&mut client.get_multiplexed_async_connection().await?).await
        };
        wait::until_ok(Duration::from_secs(10), Duration::from_millis(20), ping)
            .await
            .map_err(|e| anyhow!("redis-server did not answer within 10 s: {e}"))?;
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
