//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory, `postgres` on a free port
//! with `pg_stat_statements` preloaded, stopped (immediate shutdown) and deleted on drop.
//!
//! `initdb` and `postgres` refuse to run as root. When we are root, both run as the `postgres`
//! user (or `KATA_PG_USER`), and the data and socket directories are handed to that user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use sqlx::Connection as _;

use crate::wait;

pub struct Postgres {
    /// `None` once stopped, so a stopped server is never signalled again (its pid may be reused).
    child: Option<Child>,
    port: u16,
    bindir: PathBuf,
    run_as: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    dir: tempfile::TempDir,
}

const SUPERUSER: &str = "kata";
const DATABASE: &str = "kata";

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, postgres) were not found. \
Install them (Debian/Ubuntu: `apt-get install postgresql postgresql-contrib`; macOS: `brew install postgresql@16`), \
put their bin directory on PATH or in KATA_PG_BINDIR, or point DATABASE_URL at a server that has \
shared_preload_libraries=pg_stat_statements (docker compose up -d db).";

impl Postgres {
    pub async fn start() -> anyhow::Result<Self> {
        let bindir = find_bindir().context(INSTALL_HINT)?;
        let run_as = unprivileged_user()?;
        let dir = tempfile::Builder::new().prefix("kata-pg-").tempdir()?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid.as_raw()), Some(gid.as_raw()))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .args(["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "-U", SUPERUSER, "-D"])
            .arg(&data)
            .stdout(Stdio::null());
        let out = as_user(&mut initdb, run_as).output().context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }

        let mut pg = Self { child: None, port: crate::free_port()?, bindir, run_as, dir };
        pg.spawn()?;
        pg.wait_ready().await?;
        sqlx::query("create database kata").execute(&mut pg.admin().await?).await?;
        Ok(pg)
    }

    /// Start the server process on the cluster in our directory (again after a stop: same port,
    /// same data, as after a real restart; a stop is an immediate shutdown, so it recovers first).
    fn spawn(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("postgres.log"))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid.as_raw()), Some(gid.as_raw()))?;
        }
        let mut postgres = Command::new(self.bindir.join("postgres"));
        postgres
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "shared_preload_libraries=pg_stat_statements",
                "-c",
                "pg_stat_statements.track=all",
                // A throwaway cluster: durability buys nothing and costs seconds when seeding.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=256MB",
            ])
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(as_user(&mut postgres, self.run_as).spawn().context("starting postgres")?);
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Start the server again after [`Self::stop`] and wait until it accepts connections.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()?;
        let ready = self.wait_ready().await;
        if ready.is_err() {
            // Not half-started: a later restart starts from a clean slate.
            self.stop();
        }
        ready
    }

    /// `postgres://kata@127.0.0.1:PORT/kata`: superuser, trust authentication, loopback only.
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// A connection to the `postgres` maintenance database.
    async fn admin(&self) -> Result<sqlx::postgres::PgConnection, sqlx::Error> {
        sqlx::postgres::PgConnection::connect(&format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)).await
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        match wait::until_ok(Duration::from_secs(30), Duration::from_millis(50), async || self.admin().await).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
                bail!("postgres did not accept connections within 30 s: {e}\n{log}")
            }
        }
    }
}

impl Postgres {
    /// Stop the server at once (tests use it to prove the service answers 503, not hangs).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT = immediate shutdown: backends exit at once and shared memory is released.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
            let _ = child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `initdb` and `postgres` live: `KATA_PG_BINDIR`, the newest `/usr/lib/postgresql/*/bin`
/// (Debian keeps the server there, off PATH), then PATH.
fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KATA_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    crate::on_path("postgres").and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The user to run Postgres as when we are root: `KATA_PG_USER` or `postgres`.
fn unprivileged_user() -> anyhow::Result<Option<(nix::unistd::Uid, nix::unistd::Gid)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let name = std::env::var("KATA_PG_USER").unwrap_or_else(|_| "postgres".into());
    let user = nix::unistd::User::from_name(&name)?.with_context(|| {
        format!("running as root, and PostgreSQL refuses to: no user `{name}` to run it as (create one, or set KATA_PG_USER)")
    })?;
    Ok(Some((user.uid, user.gid)))
}

fn as_user(cmd: &mut Command, run_as: Option<(nix::unistd::Uid, nix::unistd::Gid)>) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
    cmd
}
