//! Test fixtures on real parts (feature `test-util`): never mocks, never the Redis at 6379.
//!
//! # Layout
//! - `server`: [`RedisServer`], a private `redis-server` on a free loopback port in a temp
//!   dir, killed on drop (and by a watchdog if this process dies first), its log printed when
//!   a test fails; [`shared_server`], the one per test binary.
//! - `fixture`: [`Fixture`], server + [`Client`](crate::Client) +
//!   [`Inspector`](crate::Inspector) + a queue in one call, with waits and raw access;
//!   [`RunningWorker`] and [`fast_config`] for in-process workers.
//! - `recorder`: [`Recorder`], handlers that record every run so a test asserts what ran.
//! - `process`: [`ChildGuard`], a child process killed on drop whose stderr is printed when
//!   the test fails; [`TempDir`], removed on drop.
//! - `tls`: [`tls::TlsRedis`], a TLS-only server with certificates the test makes
//!   ([`tls::TestCerts`], rcgen).
//! - `replica`: [`replica::ReplicaPair`], a master and a synced replica.
//! - `cluster`: [`cluster::RedisCluster`], 3 masters and 3 replicas joined with
//!   `redis-cli --cluster create`, one per binary ([`cluster::RedisCluster::shared`]) or one of
//!   a test's own (to kill a master, say); `sentinel`: [`sentinel::SentinelSetup`], a master, a
//!   replica and 3 sentinels; both built of `node`'s [`node::Node`]s, tethered so they die
//!   with the test process.
//! - here: [`wait_until`], the one way tests wait (no sleeps), and [`hostname`].
//!
//! # A server per test, or one per test binary
//! [`Fixture::start`] and [`Fixture::with_queue`] start a server of the test's own: nothing
//! another test does can show, and the test may kill, restart or reconfigure it. Starting
//! `redis-server` takes a few milliseconds, so that is the default.
//!
//! Parts that are slow to start (a Redis Cluster, Sentinel, a TLS server, Chromium) are
//! started once per test binary instead, in a `static OnceLock`, and each test takes a part of
//! its own inside them: its own queue, its own keys, its own browser tab. [`shared_server`] and
//! [`Fixture::shared`] show the pattern with a single server:
//!
//! ```no_run
//! # async fn demo() {
//! use rivulet::testing::{Fixture, Recorder, fast_config};
//! let f = Fixture::shared(rivulet::Queue::new("prio").unwrap()).await; // queue `prio-N`
//! let recorder = Recorder::new();
//! let worker = f.start_worker(recorder.router(&["t"]), fast_config());
//! f.client.enqueue(&f.queue, rivulet::Task::json("t", &1).unwrap()).await.unwrap();
//! recorder.wait_for_runs(1, std::time::Duration::from_secs(10)).await;
//! worker.stop().await;
//! # }
//! ```
//!
//! The rules that make sharing safe: the static holds only the server process (each
//! `#[tokio::test]` has its own runtime, and a connection dies with the runtime that made it,
//! so clients stay per test); names are made unique per test ([`unique_name`]); a sharing test
//! never flushes, never kills the server, and never asserts on what spans the server (all
//! queues, all workers, all keys). A static is never dropped, so the part must end with the
//! process by itself: the server's watchdog kills it when the binary exits.

pub mod cluster;
pub mod decoders;
mod fixture;
mod http;
pub mod node;
mod process;
mod recorder;
pub mod replica;
pub mod sentinel;
mod server;
pub mod tls;

use std::time::Duration;

pub use fixture::{Fixture, RunningWorker, Server, fast_config, outstanding, queue_names, unique_name};
pub use http::{has_metric, http_get, metric_sum};
pub use process::{ChildGuard, TempDir, workspace_binary};
pub use recorder::{Recorder, Run};
pub use server::{RedisServer, shared_server};

/// Polls `check` every 10 ms until it returns true or `timeout` passes; returns whether it
/// became true. Tests wait on a condition instead of sleeping a guessed time, and say what
/// they waited for: `assert!(wait_until(t, async || ...).await, "...")`.
///
/// `check` may be an async closure borrowing the test's locals (`async || f.stats().await...`)
/// or a closure returning a future.
#[must_use = "a wait that timed out must fail the test"]
pub async fn wait_until(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads a value with `get` until `done` holds for it (every 10 ms) and returns it; panics
/// naming `what` and the last value read when it does not within `timeout`. The one poll of
/// "wait until the task (or queue) reads so" that tests of the API and of the CLI share.
pub async fn wait_for_value<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut get: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let v = get().await;
        if done(&v) {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last read: {v:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The machine's host name as the kernel reports it, read independently of the engine so a
/// test compares what workers register against the machine, not against the code under test.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::{Queue, Task};

    fn gone(pid: u32) -> bool {
        // A zombie is gone too: it runs no more, only its parent has not reaped it yet.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true)
    }

    #[tokio::test]
    async fn a_killed_server_is_gone_and_restarts_on_its_port_with_its_dir() {
        let mut server = RedisServer::start();
        let (port, dir) = (server.port(), server.dir().to_owned());
        let pid = server.pid().expect("a running server has a pid");
        server.kill();
        assert!(gone(pid), "redis-server {pid} outlived kill()");
        assert_eq!(server.pid(), None);
        server.restart();
        assert_eq!((server.port(), server.dir()), (port, dir.as_path()));
        let mut conn = server.client().get_multiplexed_async_connection().await.unwrap();
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG");
        drop(server);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[tokio::test]
    async fn shared_fixtures_share_one_server_and_never_one_queue() {
        let (a, b) = (
            Fixture::shared(Queue::new("same").unwrap()).await,
            Fixture::shared(Queue::new("same").unwrap()).await,
        );
        assert!(a.is_shared() && b.is_shared());
        assert_eq!(a.server.port(), b.server.port());
        assert_ne!(a.queue.name(), b.queue.name());
        assert!(a.queue.name().as_str().starts_with("same-"), "{}", a.queue.name());
        a.client.enqueue(&a.queue, Task::json("k", &1).unwrap()).await.unwrap();
        assert_eq!((a.outstanding().await, b.outstanding().await), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recording_router_notes_every_run_with_its_payload() {
        let f = Fixture::shared(Queue::new("recorded").unwrap()).await;
        let recorder = Recorder::new();
        let w = f.start_worker(recorder.router(&["a", "b"]), fast_config());
        let a = f.client.enqueue(&f.queue, Task::json("a", &1).unwrap()).await.unwrap();
        f.client
            .enqueue(&f.queue, Task::json("b", &"two").unwrap().priority("high"))
            .await
            .unwrap();
        recorder.wait_for_runs(2, Duration::from_secs(10)).await;
        w.stop().await;
        let runs = recorder.runs();
        let run_a = recorder.runs_of(a.as_str());
        assert_eq!(run_a.len(), 1, "{runs:?}");
        assert_eq!((run_a[0].kind.as_str(), run_a[0].payload::<u32>()), ("a", 1));
        let run_b = runs.iter().find(|r| r.kind == "b").unwrap();
        assert_eq!(
            (run_b.priority.as_str(), run_b.payload::<String>()),
            ("high", "two".into())
        );
        assert!(recorder.repeated().is_empty());
        f.wait_done(2, Duration::from_secs(10)).await;
    }

    #[tokio::test]
    async fn a_child_guard_kills_its_child_and_keeps_its_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started >&2; exec sleep 30"]);
        let guard = ChildGuard::spawn("sleeper", &mut cmd);
        let pid = guard.id();
        assert!(
            wait_until(Duration::from_secs(10), async || guard.log() == "started\n").await,
            "stderr not captured: {:?}",
            guard.log()
        );
        drop(guard);
        assert!(gone(pid), "the child {pid} outlived its guard");
    }

    #[tokio::test]
    async fn a_child_guard_reports_an_exit() {
        let mut guard = ChildGuard::spawn("false", Command::new("sh").args(["-c", "exit 3"]));
        let status = guard.exit_within(Duration::from_secs(10)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(3));
    }

    #[test]
    fn temp_dirs_are_fresh_and_removed_on_drop() {
        let (a, b) = (TempDir::new("t"), TempDir::new("t"));
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("file"), b"x").unwrap();
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists());
        assert!(b.path().is_dir());
    }

    #[test]
    fn hostname_is_the_kernels() {
        let name = hostname();
        assert!(!name.is_empty() && !name.contains('\n'), "{name:?}");
    }
}
