//! Shared by the CLI tests: the real binary run as a supervisor (killed with every child it
//! started when a test ends, pass or fail; its log printed when a test fails), as a one-shot
//! command, and the `/proc` readings the tests check processes with.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rivulet::Inspector;
use rivulet::testing::{ChildGuard, RedisServer};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_worker-cli");

/// A running `worker-cli` supervisor. Dropping it SIGKILLs it and every child it has had.
#[derive(Debug)]
pub struct Supervisor {
    guard: ChildGuard,
    seen_children: HashSet<u32>,
}

impl Supervisor {
    /// `worker-cli ARGS` against `server`, logging at info to a file.
    pub fn start(server: &RedisServer, args: &[&str]) -> Self {
        Self::start_at(&server.url(), args)
    }

    /// `worker-cli ARGS` against `redis_url` (one with credentials, say).
    pub fn start_at(redis_url: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null());
        Supervisor {
            guard: ChildGuard::spawn("worker-cli", &mut cmd),
            seen_children: HashSet::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// Everything the supervisor (and its children, which share its stderr) logged so far.
    pub fn log(&self) -> String {
        self.guard.log()
    }

    /// Live (non-zombie) children right now, remembered for the drop guard.
    pub fn children(&mut self) -> HashSet<u32> {
        let now = children_of(self.pid());
        self.seen_children.extend(&now);
        now
    }

    pub fn signal(&self, sig: Signal) {
        self.guard.signal(sig);
    }

    /// Waits for the supervisor to exit, up to `timeout`.
    pub async fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.guard.exit_within(timeout).await
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Children live in process groups of their own: each is killed by pid, after the
        // supervisor, so none is restarted in between.
        let mut all = self.seen_children.clone();
        all.extend(children_of(self.pid()));
        self.guard.kill();
        for pid in all {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// A one-shot `worker-cli` command whose stdout the test reads line by line (`--watch`).
pub fn spawn_reading_stdout(server: &RedisServer, args: &[&str]) -> ChildGuard {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("REDIS_URL", server.url()).stdout(Stdio::piped());
    ChildGuard::spawn("worker-cli", &mut cmd)
}

/// Reads stdout's first line (bounded by the process writing it: `stats` prints at once) and
/// hands back the rest of the pipe, to hold open or drop.
pub fn first_line(child: &mut ChildGuard) -> (String, BufReader<ChildStdout>) {
    let mut out = BufReader::new(child.child().stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("reading stdout");
    (line, out)
}

/// Pids whose parent is `parent` and that have not exited.
pub fn children_of(parent: u32) -> HashSet<u32> {
    let mut out = HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((state, ppid)) = proc_state(pid)
            && ppid == parent
            && state != 'Z'
        {
            out.insert(pid);
        }
    }
    out
}

/// A process's state letter and parent pid, from `/proc/<pid>/stat`.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last `)`.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` runs (a zombie does not).
pub fn running(pid: u32) -> bool {
    proc_state(pid).is_some_and(|(state, _)| state != 'Z')
}

/// Runs a worker-cli command against `server` to completion (bounded).
pub async fn cli(server: &RedisServer, args: &[&str]) -> Output {
    cli_env(Some(&server.url()), args).await
}

/// Runs a worker-cli command with `REDIS_URL` set to `redis_url`, or unset.
pub async fn cli_env(redis_url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    match redis_url {
        Some(url) => cmd.env("REDIS_URL", url),
        None => cmd.env_remove("REDIS_URL"),
    };
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("worker-cli {args:?} did not finish within 60 s"))
        .expect("worker-cli runs")
}

/// Runs a command that must succeed and print JSON; returns the JSON.
pub async fn cli_json(server: &RedisServer, args: &[&str]) -> Value {
    cli_json_at(&server.url(), args).await
}

/// [`cli_json`] against `redis_url`.
pub async fn cli_json_at(redis_url: &str, args: &[&str]) -> Value {
    let out = cli_env(Some(redis_url), args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "worker-cli {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("worker-cli {args:?} printed no JSON ({e}):\n{stdout}"))
}

/// Runs a command that must fail with `code`; returns its stderr.
pub async fn cli_fails(server: &RedisServer, args: &[&str], code: i32) -> String {
    let out = cli(server, args).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "worker-cli {args:?}: {stderr}");
    stderr
}

/// `worker-cli enqueue` of `count` built-in `sleep` tasks of `ms` each; returns its JSON.
pub async fn enqueue_sleeps(server: &RedisServer, queue: &str, ms: u64, count: u32) -> Value {
    let payload = format!(r#"{{"ms": {ms}}}"#);
    let count = count.to_string();
    let args = [
        "enqueue",
        "--queue",
        queue,
        "--kind",
        "sleep",
        "--payload",
        &payload,
        "--count",
        &count,
        "--json",
    ];
    cli_json(server, &args).await
}

/// done and dead counters of a queue (0, 0 while Redis does not know it).
pub async fn settled(inspector: &Inspector, queue: &str) -> (u64, u64) {
    match inspector.queue(queue).await {
        Ok(q) => {
            let s = inspector.stats(&q).await.expect("stats");
            (s.counters.done, s.counters.dead)
        }
        Err(_) => (0, 0),
    }
}

/// How many live workers serve `queue`, straight from the engine (cheap to poll).
pub async fn live_workers(inspector: &Inspector, queue: &str) -> usize {
    let all = inspector.workers().await.expect("workers");
    all.iter().filter(|w| w.queues.iter().any(|q| q == queue)).count()
}

/// Live workers registered for `queue`, from `workers --json`.
pub async fn workers_json(server: &RedisServer, queue: &str) -> Vec<Value> {
    let all = cli_json(server, &["workers", "--json"]).await;
    all.as_array()
        .expect("workers --json is an array")
        .iter()
        .filter(|w| w["queues"].as_array().is_some_and(|q| q.iter().any(|n| n == queue)))
        .cloned()
        .collect()
}

/// Waits until `settled` of `queue` is `want`; panics with the counters after `timeout`.
pub async fn wait_settled(inspector: &Inspector, queue: &str, want: (u64, u64), timeout: Duration) {
    let reached = rivulet::testing::wait_until(timeout, async || settled(inspector, queue).await == want).await;
    assert!(
        reached,
        "timed out after {timeout:?} waiting for (done, dead) = {want:?} in {queue}: now {:?}",
        settled(inspector, queue).await
    );
}

/// Waits until `n` live workers serve `queue`; panics after `timeout`.
pub async fn wait_live_workers(inspector: &Inspector, queue: &str, n: usize, timeout: Duration) {
    let reached = rivulet::testing::wait_until(timeout, async || live_workers(inspector, queue).await == n).await;
    assert!(
        reached,
        "timed out after {timeout:?} waiting for {n} workers on {queue}: now {}",
        live_workers(inspector, queue).await
    );
}
