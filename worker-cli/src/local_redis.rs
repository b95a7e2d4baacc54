//! A private `redis-server` for `worker-cli demo` when nothing answers at the Redis URL: a
//! feature of the command, not a test fixture (the engine's `testing` harness is for tests and
//! ships only with its `test-util` feature).
//!
//! The server runs from PATH on a free loopback port, in a temp dir of its own with persistence
//! off, and is stopped and its dir removed when the [`LocalRedis`] drops.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Longest wait for the server to answer.
const STARTUP: Duration = Duration::from_secs(10);
/// How often the server is asked whether it answers yet while it starts.
const PROBE: Duration = Duration::from_millis(20);

/// A running private `redis-server`, stopped on drop.
#[derive(Debug)]
pub struct LocalRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl LocalRedis {
    /// Starts one and waits until it answers `PING`.
    pub async fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "worker-cli-redis-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The port is free now; another process could take it before redis binds it, which the
        // server's exit then reports.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free loopback port")?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        let mut server = LocalRedis { child, port, dir };
        let started = tokio::time::Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().context("checking on redis-server")? {
                bail!("redis-server exited with {status}; its log:\n{}", server.log_tail());
            }
            if ping(port).await {
                return Ok(server);
            }
            if started.elapsed() > STARTUP {
                bail!(
                    "redis-server did not answer within {STARTUP:?}; its log:\n{}",
                    server.log_tail()
                );
            }
            tokio::time::sleep(PROBE).await;
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        // `kill_on_drop` would do it too, but the dir can only go once the server is gone.
        let _ = self.child.start_kill();
        if let Some(pid) = self.child.id() {
            // Reap it so the dir is free; the server exits at once on SIGKILL.
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    let read = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    matches!(read, Ok(Ok(n)) if buf[..n].starts_with(b"+PONG"))
}
