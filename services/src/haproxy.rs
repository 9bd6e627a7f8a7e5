//! HAProxy in front of several instances of a service: round-robin, each backend health-checked
//! on `GET /health`, as a team would run it in front of stage-3. Not `/ready`: readiness reports
//! Redis too (docs/api.md), and every instance shares the same Redis, so a Redis outage would
//! take every instance out of rotation at once, while the feed itself keeps answering without
//! Redis. `/health` says the process serves HTTP, which is what the balancer needs to know.
//!
//! Installed from the distribution (`apt-get install haproxy`); started in the foreground on a
//! free port with a generated configuration, stopped when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

use crate::wait::{self, Look};

pub struct Haproxy {
    child: Option<Child>,
    port: u16,
    stats_port: u16,
    _dir: tempfile::TempDir,
}

/// One backend's line of HAProxy's statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    /// `UP`, `DOWN`, …, as HAProxy's health checks see it.
    pub status: String,
    /// Requests HAProxy sent to it (the CSV's `stot`, total sessions).
    pub requests: u64,
}

impl Haproxy {
    /// Start HAProxy on `listen` (`127.0.0.1` and a free port when `None`) balancing over
    /// `backends` (`host:port` each); ready when every backend passed its health check, so
    /// nothing sent through it lands on an instance still starting.
    pub async fn start(listen: Option<std::net::SocketAddr>, backends: &[String]) -> anyhow::Result<Self> {
        crate::on_path("haproxy").context("haproxy was not found on PATH (Debian/Ubuntu: apt-get install haproxy)")?;
        anyhow::ensure!(!backends.is_empty(), "HAProxy needs at least one backend");
        let dir = tempfile::Builder::new().prefix("kata-haproxy-").tempdir()?;
        let listen = match listen {
            Some(addr) => addr,
            None => std::net::SocketAddr::from(([127, 0, 0, 1], crate::free_port()?)),
        };
        let (port, stats_port) = (listen.port(), crate::free_port()?);
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, configuration(listen, stats_port, backends))?;
        let check = Command::new("haproxy").arg("-c").arg("-f").arg(&config).output()?;
        if !check.status.success() {
            bail!("HAProxy refused its configuration:\n{}", String::from_utf8_lossy(&check.stderr));
        }
        let log = dir.path().join("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db") // foreground: the checker owns the process
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting haproxy")?;
        let mut proxy = Self { child: Some(child), port, stats_port, _dir: dir };
        let all_up = async || -> anyhow::Result<Look<(), Vec<Backend>>> {
            if let Some(child) = proxy.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                proxy.child = None;
                bail!("HAProxy exited ({status}) on {listen}:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            let states = proxy.backends().await.unwrap_or_default();
            Ok(if !states.is_empty() && states.iter().all(|b| b.status == "UP") {
                Look::Ready(())
            } else {
                Look::NotYet(states)
            })
        };
        let timed_out = |states: Vec<Backend>| {
            let states: Vec<String> = states.iter().map(|b| format!("{} {}", b.name, b.status)).collect();
            anyhow!(
                "HAProxy on {listen}: not every backend passed its health check (GET /health 200) within 10 s: {}",
                states.join(", ")
            )
        };
        wait::until(Duration::from_secs(10), Duration::from_millis(50), all_up, timed_out).await?;
        Ok(proxy)
    }

    /// The balancer's address on loopback (whatever interface it was bound to).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Each backend's health and the requests it was sent, from HAProxy's own statistics.
    pub async fn backends(&self) -> anyhow::Result<Vec<Backend>> {
        let csv = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/stats;csv", self.stats_port))
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .text()
            .await?;
        Ok(parse_stats(&csv))
    }
}

fn configuration(listen: std::net::SocketAddr, stats_port: u16, backends: &[String]) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, address)| format!("    server instance-{} {address} check\n", i + 1))
        .collect();
    format!(
        "global\n    maxconn 4096\n\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\n\
         frontend feed\n    bind {listen}\n    default_backend instances\n\n\
         backend instances\n    balance roundrobin\n    option httpchk GET /health\n    http-check expect status 200\n\
         \x20   default-server inter 500ms fall 2 rise 1\n{servers}\n\
         frontend stats\n    bind 127.0.0.1:{stats_port}\n    stats enable\n    stats uri /stats\n"
    )
}

/// The server lines of HAProxy's CSV statistics (`# pxname,svname,…`).
fn parse_stats(csv: &str) -> Vec<Backend> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").trim_start_matches("# ").split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (Some(sv), Some(status), Some(stot)) = (column("svname"), column("status"), column("stot")) else {
        return Vec::new();
    };
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(sv).is_some_and(|s| s.starts_with("instance-")))
        .map(|f| Backend {
            name: f[sv].to_owned(),
            status: f.get(status).unwrap_or(&"").to_string(),
            requests: f.get(stot).and_then(|s| s.parse().ok()).unwrap_or(0),
        })
        .collect()
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statistics_give_each_instance_its_status_and_requests() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status\n\
                   feed,FRONTEND,,,0,1,4096,30,0,0,0,0,0,,,,,OPEN\n\
                   instances,instance-1,0,0,0,1,,10,0,0,,0,,0,0,0,0,UP\n\
                   instances,instance-2,0,0,0,1,,11,0,0,,0,,0,0,0,0,DOWN\n\
                   instances,BACKEND,0,0,0,1,410,21,0,0,0,0,,0,0,0,0,UP\n";
        assert_eq!(
            parse_stats(csv),
            [
                Backend { name: "instance-1".into(), status: "UP".into(), requests: 10 },
                Backend { name: "instance-2".into(), status: "DOWN".into(), requests: 11 },
            ]
        );
    }
}
