//! Fixtures shared by the system tests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rivulet::testing::RedisServer;
use rivulet::{Inspector, Queue, Router, Worker, WorkerConfig, WorkerReport};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A worker running in the background, stopped by `stop`.
#[allow(dead_code)] // Not every test reads every field.
pub struct RunningWorker {
    pub stop: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<rivulet::Result<WorkerReport>>,
    pub counters: Arc<rivulet::WorkerCounters>,
    pub id: String,
}

impl RunningWorker {
    pub fn start(server: &RedisServer, queues: &[Queue], router: Router, config: WorkerConfig) -> Self {
        let mut worker = Worker::new(server.client(), router, config);
        for q in queues {
            worker = worker.queue(q.clone());
        }
        let counters = worker.counters();
        let id = worker.id().to_owned();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        RunningWorker {
            stop: Some(tx),
            handle,
            counters,
            id,
        }
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

/// A config with short timers for tests.
pub fn fast_config() -> WorkerConfig {
    WorkerConfig {
        block: Duration::from_millis(100),
        promote_interval: Duration::from_millis(50),
        ..WorkerConfig::default()
    }
}

pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        rivulet::testing::wait_until(timeout, check).await,
        "timed out after {timeout:?} waiting for: {what}"
    );
}

/// Sum of waiting + pending + scheduled + retry over every shard of a queue.
pub async fn outstanding(inspector: &Inspector, queue: &Queue) -> u64 {
    let s = inspector.stats(queue).await.expect("stats");
    s.priorities
        .iter()
        .map(|p| p.waiting + p.pending + p.scheduled + p.retry)
        .sum()
}

/// Raw redis connection for assertions.
pub async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// Reads up to `count` entries of `stream` under `consumer` with a raw `XREADGROUP` (creating
/// the group from the start first) and never settles them: entries pending under a consumer
/// that never received them, as after a worker crash or a read whose reply was lost.
pub async fn abandon_entries(server: &RedisServer, stream: &str, consumer: &str, count: usize) {
    let mut conn = raw(server).await;
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("rivulet")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    if let Err(e) = created {
        assert_eq!(e.code(), Some("BUSYGROUP"), "{e}");
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("rivulet")
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP");
}

/// The names of every queue the registry lists, sorted.
pub async fn queue_names(inspector: &Inspector) -> Vec<String> {
    let queues = inspector.queues().await.expect("queues");
    queues.iter().map(|q| q.name().to_string()).collect()
}
