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

mod fixture;
mod process;
mod recorder;
mod server;

use std::time::Duration;

pub use fixture::{Fixture, RunningWorker, Server, fast_config, outstanding, queue_names, unique_name};
pub use process::{ChildGuard, TempDir};
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

/// The machine's host name as the kernel reports it, read independently of the engine so a
/// test compares what workers register against the machine, not against the code under test.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
