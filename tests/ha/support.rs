//! Fixtures of the HA tests: a worker on any target, a counting router, waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rivulet::{Queue, RedisTarget, Router, TaskContext, Worker, WorkerConfig, WorkerReport};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A worker running in the background, stopped by `stop`.
pub struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<rivulet::Result<WorkerReport>>,
}

impl RunningWorker {
    pub fn start(target: &RedisTarget, queues: &[Queue], router: Router, config: WorkerConfig) -> Self {
        let mut worker = Worker::new(target, router, config);
        for q in queues {
            worker = worker.queue(q.clone());
        }
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        RunningWorker { stop: Some(tx), handle }
    }

    /// Signals shutdown and waits for the report.
    pub async fn stop(mut self) -> WorkerReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("worker stops within 60 s")
            .expect("worker task did not panic")
            .expect("worker ran without error")
    }
}

/// Short timers for tests.
pub fn fast_config() -> WorkerConfig {
    WorkerConfig {
        block: Duration::from_millis(100),
        promote_interval: Duration::from_millis(50),
        ..WorkerConfig::default()
    }
}

pub async fn wait_for(what: &str, timeout: Duration, check: impl AsyncFnMut() -> bool) {
    assert!(
        rivulet::testing::wait_until(timeout, check).await,
        "timed out after {timeout:?} waiting for: {what}"
    );
}

/// How many times each task (a `u32` payload) ran.
pub type Runs = Arc<Mutex<HashMap<u32, u32>>>;

/// A router whose kind `count` records each run of its `u32` payload in `runs`.
pub fn counting_router(runs: &Runs) -> Router {
    let runs = runs.clone();
    Router::new().route("count", move |_ctx: TaskContext, i: u32| {
        let runs = runs.clone();
        async move {
            *runs.lock().unwrap().entry(i).or_default() += 1;
            Ok(())
        }
    })
}

/// Waits until the number of distinct tasks in `runs` satisfies `done`.
pub async fn wait_runs(runs: &Runs, what: &str, timeout: Duration, done: impl Fn(usize) -> bool) {
    wait_for(what, timeout, || {
        let ran = runs.lock().unwrap().len();
        let done = done(ran);
        async move { done }
    })
    .await;
}

/// (tasks never run, tasks run more than once) among `0..n`.
pub fn lost_and_twice(runs: &Runs, n: u32) -> (Vec<u32>, usize) {
    let runs = runs.lock().unwrap();
    let lost = (0..n).filter(|i| !runs.contains_key(i)).collect();
    let twice = runs.values().filter(|&&c| c > 1).count();
    (lost, twice)
}

/// Sum of waiting + pending + scheduled + retry over every shard of a queue.
pub async fn outstanding(inspector: &rivulet::Inspector, queue: &Queue) -> u64 {
    let s = inspector.stats(queue).await.expect("stats");
    s.priorities
        .iter()
        .map(|p| p.waiting + p.pending + p.scheduled + p.retry)
        .sum()
}

/// Waits until nothing of `queue` is outstanding (waiting, pending, scheduled or retrying).
pub async fn wait_nothing_outstanding(inspector: &rivulet::Inspector, queue: &Queue) {
    wait_for("nothing outstanding", Duration::from_secs(30), || {
        let (inspector, queue) = (inspector.clone(), queue.clone());
        async move { outstanding(&inspector, &queue).await == 0 }
    })
    .await;
}

/// Waits until each of the `n` tasks in `runs` ran, then until nothing is outstanding.
pub async fn wait_drained(runs: &Runs, inspector: &rivulet::Inspector, queue: &Queue, n: u32, timeout: Duration) {
    wait_runs(runs, "every task to run", timeout, |ran| ran as u32 == n).await;
    wait_nothing_outstanding(inspector, queue).await;
}
