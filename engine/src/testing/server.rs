//! A private `redis-server` on a free loopback port, one per test or one per test binary.
//!
//! Each [`RedisServer`] runs in its own temp dir with persistence off (unless a test asks for
//! AOF), waits until it answers, and is killed on drop. When the test thread is panicking, the
//! drop prints the server's log tail, so a failure shows what Redis saw.
//!
//! The server runs under a small `sh` watchdog that holds the read end of a pipe whose write
//! end only this process holds: when this process ends, however it ends (a finished test
//! binary never drops its statics; a CI timeout SIGKILLs it), the pipe closes and the watchdog
//! kills the server and removes its temp dir. That is what makes [`shared_server`] safe: a
//! `static` server is never dropped, yet it never outlives its test binary.
//!
//! `RIVULET_REDIS_SERVER` names the `redis-server` binary to run (default: the one on `PATH`);
//! CI runs the suite again against Redis 8 with it (`scripts/build-redis8.sh`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::TempDir;

/// Runs `redis-server` with the arguments after the first (the server's dir) and relays its
/// exit status. The watcher reads fd 3 (our stdin: an explicit redirection, because an
/// asynchronous list's own stdin is /dev/null in a non-interactive shell) and SIGKILLs the
/// server when a line arrives ([`RedisServer::kill`]: the dir stays, for a restart) or at end
/// of file (this process is gone: nobody will remove the dir, so the watchdog does). If the
/// server exits first, the watcher is stopped instead, so it never signals a reused pid.
const WATCHDOG: &str = r#"dir=$1; shift
exec 3<&0
"${RIVULET_REDIS_SERVER:-redis-server}" "$@" </dev/null >/dev/null 2>&1 3<&- &
pid=$!
echo "$pid"
( if read -r _ <&3; then code=0; else code=1; fi; kill -9 "$pid" 2>/dev/null; exit "$code" ) &
watcher=$!
exec 3<&-
wait "$pid"
status=$?
kill "$watcher" 2>/dev/null
wait "$watcher"
if [ "$?" = 1 ]; then rm -rf "$dir"; fi
exit "$status""#;

/// A `redis-server` child process owned by a test.
#[derive(Debug)]
pub struct RedisServer {
    running: Option<Running>,
    port: u16,
    dir: TempDir,
    extra: Vec<String>,
    /// Listens with TLS only (`--port 0 --tls-port PORT`, see `testing::tls`): readiness is
    /// then a TCP connect, since a plain PING cannot cross TLS.
    tls: bool,
}

/// The watchdog shell, the end of its pipe that keeps the server alive, and the server's pid.
#[derive(Debug)]
struct Running {
    watchdog: Child,
    lifeline: Option<ChildStdin>,
    pid: u32,
}

impl RedisServer {
    /// Starts a server with persistence off. Panics with the reason when it cannot start
    /// (a test cannot do anything useful without its server).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments, e.g. `["--appendonly", "yes"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_in_mode(extra, false)
    }

    /// Starts a server that listens with TLS only when `tls` (its `extra` then names the
    /// certificate files).
    pub(super) fn start_in_mode(extra: &[&str], tls: bool) -> Self {
        let dir = TempDir::new("redis");
        let mut server = RedisServer {
            running: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        let mut last_err = String::new();
        // A free port can be taken by another test between probing it and redis binding it:
        // try a few.
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => {
                    last_err = e;
                    server.kill();
                }
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let port = self.port.to_string();
        let ports: &[&str] = if self.tls {
            &["--port", "0", "--tls-port", &port]
        } else {
            &["--port", &port]
        };
        let mut watchdog = Command::new("sh")
            .args(["-c", WATCHDOG, "rivulet-redis-watchdog"])
            .arg(self.dir.path())
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("sh is not runnable ({e})"))?;
        let lifeline = watchdog.stdin.take();
        let mut pid_line = String::new();
        let stdout = watchdog.stdout.take().expect("the watchdog's stdout is piped");
        let _ = BufReader::new(stdout).read_line(&mut pid_line);
        let pid = pid_line.trim().parse().unwrap_or(0);
        self.running = Some(Running {
            watchdog,
            lifeline,
            pid,
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(running) = self.running.as_mut()
                && let Ok(Some(status)) = running.watchdog.try_wait()
            {
                return Err(match status.code() {
                    Some(127) => "redis-server is not runnable; install it (apt-get install redis-server)".into(),
                    _ => format!("redis-server exited with {status}; log:\n{}", self.log_tail(20)),
                });
            }
            if if self.tls { listens(self.port) } else { ping(self.port) } {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "redis-server did not answer within 10 s; log:\n{}",
            self.log_tail(20)
        ))
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (AOF files live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `redis::Client` for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a loopback URL always parses")
    }

    /// The `redis-server` process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.pid).filter(|&pid| pid != 0)
    }

    /// Kills the server at once (SIGKILL), as a crash would, and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            // A line on the lifeline: the watchdog SIGKILLs the server, reaps it and exits,
            // leaving the dir. (If the watchdog is already gone, there is nothing to stop.)
            if let Some(mut lifeline) = running.lifeline.take() {
                let _ = lifeline.write_all(b"kill\n");
            }
            let _ = running.watchdog.wait();
        }
    }

    /// Starts the server again on the same port and directory (after [`kill`](Self::kill)).
    /// With AOF on, it reloads its data.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("redis-server did not restart: {e}"),
                Err(_) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of_log(self.dir.path(), lines)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- redis-server log ({}) ---\n{}", self.url(), self.log_tail(40));
        }
        // The dir (a field) is removed after this, once the server no longer writes to it.
        self.kill();
    }
}

/// The test binary's one shared `redis-server`, started on first use and stopped when the
/// binary exits. Tests that share it keep to their own keys: a queue of their own (see
/// [`Fixture::shared`](super::Fixture::shared)), no `FLUSHDB`, no global assertions such as
/// "no workers are registered". It cannot be killed or restarted; a test that does that
/// starts its own server.
///
/// Only the server is shared: each `#[tokio::test]` has its own runtime, and a connection
/// made on one runtime dies with it, so clients and inspectors stay per test.
pub fn shared_server() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(RedisServer::start)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port works")
}

/// Whether something accepts TCP connections on the port (redis binds once it is ready).
fn listens(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// The last `lines` lines of `redis.log` in a server's directory (empty when there is none).
pub(crate) fn tail_of_log(dir: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
