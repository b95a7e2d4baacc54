//! The engine's own stop: `max_tasks`, and the shutdown handle's quiet and terminate. Each
//! test keeps to its queue, so they share the binary's server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rivulet::testing::{Fixture, fast_config, wait_until};
use rivulet::{Queue, Router, Task, TaskContext, Worker, WorkerConfig, WorkerReport};

/// A router whose `count` kind counts its runs, and whose `hold` kind runs until dropped.
fn counting_router(runs: &Arc<AtomicU64>) -> Router {
    let runs = runs.clone();
    Router::new()
        .route_bytes("count", move |_ctx: TaskContext, _payload| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .route_bytes("hold", |_ctx: TaskContext, _payload| std::future::pending())
}

async fn enqueue(f: &Fixture, kind: &str, n: usize) {
    let tasks: Vec<Task> = (0..n).map(|i| Task::json(kind, &i).unwrap()).collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
}

fn worker(f: &Fixture, router: Router, config: WorkerConfig) -> Worker {
    Worker::new(f.redis_client(), router, config).queue(f.queue.clone())
}

async fn run_to_the_end(worker: Worker) -> WorkerReport {
    tokio::time::timeout(Duration::from_secs(60), worker.run(std::future::pending()))
        .await
        .expect("the worker stops on its own within 60 s")
        .expect("the worker runs")
}

/// Waiting, pending and done over every shard of the fixture's queue.
async fn tally(f: &Fixture) -> (u64, u64, u64) {
    let s = f.stats().await;
    let waiting = s.priorities.iter().map(|p| p.waiting).sum();
    let pending = s.priorities.iter().map(|p| p.pending).sum();
    (waiting, pending, s.counters.done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tasks_runs_exactly_that_many_handlers_then_stops() {
    let f = Fixture::shared(Queue::new("budget").unwrap()).await;
    enqueue(&f, "count", 300).await;
    let runs = Arc::new(AtomicU64::new(0));
    // Instant handlers, many slots, two fetchers: the case where a limit checked after the
    // fact overshoots by up to the slots free.
    let config = WorkerConfig {
        concurrency: 16,
        max_tasks: Some(37),
        ..fast_config()
    };
    let report = run_to_the_end(worker(&f, counting_router(&runs), config)).await;
    assert_eq!(runs.load(Ordering::Relaxed), 37, "{report:?}");
    assert!(report.reached_max_tasks, "{report:?}");
    assert_eq!(
        (report.started, report.succeeded, report.requeued),
        (37, 37, 0),
        "{report:?}"
    );
    assert_eq!(tally(&f).await, (300 - 37, 0, 37), "nothing lost or held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tasks_over_several_shards_never_runs_an_extra_entry() {
    // A blocking read over several shards may return COUNT entries from each: the ones past
    // the budget stay unrun and are requeued at the drain.
    let f = Fixture::shared(Queue::new("budget-shards").unwrap().shards(4).unwrap()).await;
    let runs = Arc::new(AtomicU64::new(0));
    let config = WorkerConfig {
        concurrency: 8,
        max_tasks: Some(5),
        block: Duration::from_secs(2),
        ..fast_config()
    };
    let running = tokio::spawn(run_to_the_end(worker(&f, counting_router(&runs), config)));
    // The worker is blocked on every shard when the tasks arrive together.
    f.wait_worker_registered(Duration::from_secs(10)).await;
    enqueue(&f, "count", 40).await;
    let report = running.await.unwrap();
    assert_eq!(runs.load(Ordering::Relaxed), 5, "{report:?}");
    let (waiting, pending, done) = tally(&f).await;
    assert_eq!((waiting, pending, done), (35, 0, 5), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_lets_running_tasks_finish() {
    let f = Fixture::shared(Queue::new("quiet").unwrap()).await;
    enqueue(&f, "gate", 2).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let gate2 = gate.clone();
    let router = Router::new().route_bytes("gate", move |_ctx: TaskContext, _payload| {
        let gate = gate2.clone();
        async move {
            gate.notified().await;
            Ok(())
        }
    });
    let config = WorkerConfig {
        concurrency: 2,
        drain_timeout: Duration::from_secs(3600),
        ..fast_config()
    };
    let worker = worker(&f, router, config);
    let handle = worker.shutdown_handle();
    let counters = worker.counters();
    let running = tokio::spawn(worker.run(std::future::pending()));
    let started = wait_until(Duration::from_secs(10), async || {
        rivulet::WorkerCounters::get(&counters.started) == 2
    })
    .await;
    assert!(started, "both tasks never started");
    handle.quiet();
    assert!(handle.is_quiet() && !handle.is_terminated());
    // The drain waits for the handlers: release them, and they finish and are acknowledged.
    gate.notify_waiters();
    let finished = wait_until(Duration::from_secs(10), async || {
        // A handler not yet waiting on the gate misses one notice: send another.
        gate.notify_waiters();
        rivulet::WorkerCounters::get(&counters.succeeded) == 2
    })
    .await;
    assert!(finished, "both tasks never finished");
    let report = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the worker stops once its handlers are done")
        .unwrap()
        .unwrap();
    assert_eq!((report.succeeded, report.requeued), (2, 0), "{report:?}");
    assert_eq!(tally(&f).await, (0, 0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_cuts_a_drain_short_and_requeues_the_running_tasks() {
    let f = Fixture::shared(Queue::new("terminate").unwrap()).await;
    enqueue(&f, "hold", 3).await;
    let runs = Arc::new(AtomicU64::new(0));
    let config = WorkerConfig {
        concurrency: 3,
        // Far longer than the test: only terminate can end this drain.
        drain_timeout: Duration::from_secs(3600),
        ..fast_config()
    };
    let worker = worker(&f, counting_router(&runs), config);
    let handle = worker.shutdown_handle();
    let counters = worker.counters();
    let running = tokio::spawn(worker.run(std::future::pending()));
    let started = wait_until(Duration::from_secs(10), async || {
        rivulet::WorkerCounters::get(&counters.started) == 3
    })
    .await;
    assert!(started, "the three held tasks never started");
    // Quiet first: the drain would wait for handlers that never finish.
    handle.quiet();
    handle.terminate();
    assert!(handle.is_terminated());
    let report = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("terminate stops the worker at once")
        .unwrap()
        .unwrap();
    assert_eq!(
        (report.started, report.requeued, report.reached_max_tasks),
        (3, 3, false),
        "{report:?}"
    );
    // Requeued to run again at once: waiting, not pending under the stopped worker.
    assert_eq!(tally(&f).await, (3, 0, 0));
}
