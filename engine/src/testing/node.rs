//! One `redis-server` (a cluster node, a replica, a sentinel) tethered to the test process.
//!
//! The server runs under a small `sh` that kills it when its stdin closes; the test keeps the
//! other end, so the server dies with the test process even when it is held in a `static`
//! (a harness shared by every test of a binary is never dropped) or the test is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A tethered `redis-server` on a loopback port in its own temp dir.
#[derive(Debug)]
pub struct Node {
    port: u16,
    dir: PathBuf,
    /// The server's full command line, to start it again in the same dir.
    args: Vec<String>,
    pid: Option<u32>,
    tether: Option<Child>,
}

impl Node {
    /// Starts `redis-server` with `args` (its port, bind address, dir and log file are
    /// added), or `redis-server CONFIG --sentinel` when `sentinel_conf` is given. Waits until it
    /// answers PING. Panics with the log when it cannot start.
    pub fn start(port: u16, args: &[String], sentinel_conf: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rivulet-node-{}-{}-{port}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        let mut full: Vec<String> = Vec::new();
        if let Some(conf) = sentinel_conf {
            let path = dir.join("sentinel.conf");
            std::fs::write(&path, conf).expect("the temp dir is writable");
            full.push(path.display().to_string());
            full.push("--sentinel".into());
        }
        full.extend(["--port".into(), port.to_string(), "--bind".into(), "127.0.0.1".into()]);
        full.extend(["--dir".into(), dir.display().to_string()]);
        full.extend(["--logfile".into(), dir.join("redis.log").display().to_string()]);
        full.extend(args.iter().cloned());
        Self::spawn(port, dir, full)
    }

    fn spawn(port: u16, dir: PathBuf, args: Vec<String>) -> Self {
        let (pid, tether) = launch(&args);
        let node = Node {
            port,
            dir,
            args,
            pid,
            tether: Some(tether),
        };
        node.wait_answers();
        node
    }

    fn wait_answers(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline && self.alive(),
                "redis-server on {} did not start; log:\n{}",
                self.port,
                self.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts a killed server again, on its port, in its dir, with its arguments (a cluster
    /// node rejoins from its `nodes.conf`, as a replica of whoever took its slots).
    pub fn restart(&mut self) {
        assert!(!self.alive(), "restart a node that was killed");
        if let Some(mut old) = self.tether.take() {
            // Closing stdin ends the old shell; its server is gone already.
            drop(old.stdin.take());
            let _ = old.wait();
        }
        let (pid, tether) = launch(&self.args);
        self.pid = pid;
        self.tether = Some(tether);
        self.wait_answers();
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT`: a plain connection to this node alone.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// The node's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the server process is still there.
    pub fn alive(&self) -> bool {
        self.pid.is_some_and(|pid| !gone(pid))
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !gone(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Whether the node answers PING (sentinels and cluster nodes answer too).
    pub fn answers(&self) -> bool {
        ping(self.port)
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        super::server::tail_of_log(&self.dir, lines)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- redis-server log ({}) ---\n{}", self.addr(), self.log_tail(30));
        }
        self.kill();
        if let Some(mut tether) = self.tether.take() {
            // Closing stdin ends the shell.
            drop(tether.stdin.take());
            let _ = tether.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `redis-server ARGS` under a shell that prints the server's pid, then waits for its
/// stdin to close (the test ends) and kills the server.
fn launch(args: &[String]) -> (Option<u32>, Child) {
    let mut tether = Command::new("sh")
        .arg("-c")
        .arg(r#""${RIVULET_REDIS_SERVER:-redis-server}" "$@" & p=$!; echo $p; read _; kill -9 $p 2>/dev/null"#)
        .arg("sh")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh runs");
    let mut line = String::new();
    BufReader::new(tether.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the tether prints the pid");
    (line.trim().parse().ok(), tether)
}

/// Whether a process has exited (no longer listed, or a zombie its shell has not reaped yet).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// `n` distinct free loopback ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    // Held open together, so the kernel hands out distinct ones.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral loopback port works"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
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

/// Runs one command on a node over a plain synchronous connection (harness use only).
pub fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    cmd.query(&mut conn)
}

/// Whether the replica on `replica` has every write the master on `master` had when asked
/// (its replication offset caught up): what the master acknowledged so far survives a
/// failover to that replica.
pub fn caught_up(master: u16, replica: u16) -> bool {
    let offset = |port: u16, field: &str| -> Option<u64> {
        let info: String = query(port, redis::cmd("INFO").arg("replication")).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().parse().ok())
    };
    match (
        offset(master, "master_repl_offset:"),
        offset(replica, "slave_repl_offset:"),
    ) {
        (Some(m), Some(r)) => r >= m,
        _ => false,
    }
}
