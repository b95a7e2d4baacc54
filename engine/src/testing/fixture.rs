//! One call to a ready test: a server, a producer, an inspector and a queue
//! ([`Fixture`]), and workers running in the background ([`RunningWorker`]).

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{RedisServer, shared_server, wait_until};
use crate::{Client, Inspector, Queue, QueueStats, Router, Worker, WorkerConfig, WorkerCounters, WorkerReport};

/// The server behind a [`Fixture`]: the test's own, or the binary's shared one.
#[derive(Debug)]
pub enum Server {
    /// Started for this test and killed when the fixture drops.
    Owned(RedisServer),
    /// The test binary's [`shared_server`].
    Shared(&'static RedisServer),
}

impl Deref for Server {
    type Target = RedisServer;

    fn deref(&self) -> &RedisServer {
        match self {
            Server::Owned(s) => s,
            Server::Shared(s) => s,
        }
    }
}

impl Server {
    /// The server to kill or restart. Panics for the shared one, which other tests use.
    pub fn owned_mut(&mut self) -> &mut RedisServer {
        match self {
            Server::Owned(s) => s,
            Server::Shared(_) => panic!("the shared server cannot be killed or restarted: start the fixture's own"),
        }
    }
}

/// A server, a [`Client`] and an [`Inspector`] connected to it, and a queue for the test.
///
/// ```no_run
/// # async fn demo() {
/// use rivulet::testing::Fixture;
/// let f = Fixture::start().await;
/// f.client.enqueue(&f.queue, rivulet::Task::json("k", &1).unwrap()).await.unwrap();
/// assert_eq!(f.outstanding().await, 1);
/// # }
/// ```
#[derive(Debug)]
pub struct Fixture {
    /// The server.
    pub server: Server,
    /// A producer on the server.
    pub client: Client,
    /// An inspector on the server.
    pub inspector: Inspector,
    /// The test's queue (not yet declared: the first enqueue or worker records its layout).
    pub queue: Queue,
}

impl Fixture {
    /// A server of the test's own and a queue named `test`.
    pub async fn start() -> Self {
        Self::with_queue(Queue::new("test").expect("a valid name")).await
    }

    /// A server of the test's own and `queue`.
    pub async fn with_queue(queue: Queue) -> Self {
        Self::on_server(RedisServer::start(), queue).await
    }

    /// `server` (one started with extra arguments, say) and `queue`.
    pub async fn on_server(server: RedisServer, queue: Queue) -> Self {
        Self::connect(Server::Owned(server), queue).await
    }

    /// The binary's shared server and a queue of `queue`'s layout and retention whose name is made unique
    /// (`name-N`), so tests sharing the server never see each other's tasks. For tests that
    /// keep to their queue: see [`shared_server`] for what a sharing test must not do.
    pub async fn shared(queue: Queue) -> Self {
        let queue = Queue::with_layout(&unique_name(queue.name().as_str()), queue.layout().clone())
            .expect("a suffixed valid name stays valid")
            .retention(queue.retention_period());
        Self::connect(Server::Shared(shared_server()), queue).await
    }

    async fn connect(server: Server, queue: Queue) -> Self {
        let redis = server.client();
        let client = Client::new(&redis)
            .await
            .expect("the client connects to the test server");
        let inspector = Inspector::new(&redis)
            .await
            .expect("the inspector connects to the test server");
        Fixture {
            server,
            client,
            inspector,
            queue,
        }
    }

    /// Whether the server is shared with other tests.
    pub fn is_shared(&self) -> bool {
        matches!(self.server, Server::Shared(_))
    }

    /// A `redis::Client` for the server.
    pub fn redis_client(&self) -> redis::Client {
        self.server.client()
    }

    /// A raw connection, for assertions on keys and for writing what the engine never would.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        self.server
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("a raw connection to the test server")
    }

    /// Another queue on the same server, named like the fixture's (unique when shared).
    pub fn other_queue(&self, name: &str) -> Queue {
        let name = if self.is_shared() {
            unique_name(name)
        } else {
            name.to_owned()
        };
        Queue::new(&name).expect("a valid queue name")
    }

    /// A worker on the fixture's queue, running in the background.
    pub fn start_worker(&self, router: Router, config: WorkerConfig) -> RunningWorker {
        self.start_worker_on(&self.queue, router, config)
    }

    /// A worker on another queue of the fixture's server, running in the background.
    pub fn start_worker_on(&self, queue: &Queue, router: Router, config: WorkerConfig) -> RunningWorker {
        RunningWorker::start(&self.server, std::slice::from_ref(queue), router, config)
    }

    /// The fixture queue's statistics.
    pub async fn stats(&self) -> QueueStats {
        self.inspector
            .stats(&self.queue)
            .await
            .expect("stats of the test queue")
    }

    /// Sum of waiting + pending + scheduled + retry over every shard of the fixture's queue.
    pub async fn outstanding(&self) -> u64 {
        outstanding(&self.inspector, &self.queue).await
    }

    /// Waits until the fixture's queue has counted `n` tasks done; panics after `timeout`
    /// with the queue's statistics.
    pub async fn wait_done(&self, n: u64, timeout: Duration) {
        let done = wait_until(timeout, async || self.stats().await.counters.done >= n).await;
        assert!(
            done,
            "timed out after {timeout:?} waiting for {n} tasks done in {}: {:#?}",
            self.queue.name(),
            self.stats().await
        );
    }

    /// Waits until the fixture's queue holds `n` dead letters; panics after `timeout`.
    pub async fn wait_dead_letters(&self, n: usize, timeout: Duration) {
        let dead = wait_until(timeout, async || {
            self.inspector
                .dlq_list(&self.queue, None, n + 1)
                .await
                .expect("dlq list")
                .len()
                >= n
        })
        .await;
        assert!(
            dead,
            "timed out after {timeout:?} waiting for {n} dead letters in {}: {:#?}",
            self.queue.name(),
            self.stats().await
        );
    }

    /// Waits until a live worker serving the fixture's queue is registered.
    pub async fn wait_worker_registered(&self, timeout: Duration) {
        let name = self.queue.name().as_str();
        let up = wait_until(timeout, async || {
            let workers = self.inspector.workers().await.expect("workers");
            workers.iter().any(|w| w.queues.iter().any(|q| q == name))
        })
        .await;
        assert!(up, "timed out after {timeout:?} waiting for a worker on {name}");
    }

    /// The names of every queue the registry lists, sorted.
    pub async fn queue_names(&self) -> Vec<String> {
        queue_names(&self.inspector).await
    }

    /// Reads up to `count` entries of `stream` under `consumer` with a raw `XREADGROUP`
    /// (creating the group from the start first) and never settles them: entries pending
    /// under a consumer that never received them, as after a worker crash or a read whose
    /// reply was lost.
    pub async fn abandon_entries(&self, stream: &str, consumer: &str, count: usize) {
        let mut conn = self.redis().await;
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
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // An owned server prints its own log when dropped; the shared one never drops.
        if std::thread::panicking()
            && let Server::Shared(s) = self.server
        {
            eprintln!(
                "--- shared redis-server log ({}, test queue {}) ---\n{}",
                s.url(),
                self.queue.name(),
                s.log_tail(20)
            );
        }
    }
}

/// `prefix-N`, unique within this test binary (which is what a shared server spans).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sum of waiting + pending + scheduled + retry + fair-waiting over every shard of a queue.
pub async fn outstanding(inspector: &Inspector, queue: &Queue) -> u64 {
    let s = inspector.stats(queue).await.expect("stats");
    s.priorities
        .iter()
        .map(|p| p.waiting + p.pending + p.scheduled + p.retry + p.fair_waiting)
        .sum()
}

/// The names of every queue the registry lists, sorted.
pub async fn queue_names(inspector: &Inspector) -> Vec<String> {
    let queues = inspector.queues().await.expect("queues");
    queues.iter().map(|q| q.name().to_string()).collect()
}

/// A worker config with short timers for tests: 100 ms blocking reads, promotion every 50 ms,
/// unknown kinds buried at once (no grace).
pub fn fast_config() -> WorkerConfig {
    WorkerConfig {
        block: Duration::from_millis(100),
        promote_interval: Duration::from_millis(50),
        // Tests that feed a kind nobody serves expect its dead letter now, not in 5 minutes;
        // the grace has tests of its own.
        unknown_kind_grace: Duration::ZERO,
        ..WorkerConfig::default()
    }
}

/// A worker running in the background on the test's runtime, stopped by [`stop`](Self::stop).
/// Dropped without `stop`, its task is aborted with the runtime at the end of the test.
#[derive(Debug)]
pub struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<crate::Result<WorkerReport>>,
    /// The worker's live counters.
    pub counters: Arc<WorkerCounters>,
    /// The worker id (its consumer name).
    pub id: String,
}

impl RunningWorker {
    /// Starts a worker on `server` serving `queues`.
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

    /// Signals shutdown and waits for the report (at most 60 s); panics if the worker failed.
    pub async fn stop(mut self) -> WorkerReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.handle)
            .await
            .expect("worker stops within 60 s")
            .expect("worker task did not panic")
            .expect("worker ran without error")
    }
}
