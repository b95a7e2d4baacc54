//! The collector against a private Redis and a real in-process worker: the numbers the
//! per-worker rate is estimated from are the tasks running per the heartbeats and the handler
//! slots a worker has, not the count of busy worker processes.

use std::sync::Arc;
use std::time::Duration;

use autoscaler::observe::Observer;
use rivulet::testing::{Fixture, wait_until};
use rivulet::{Queue, Router, Task, WorkerConfig};
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_running_tasks_and_slots_of_multi_slot_workers() {
    // A server of its own: the heartbeats summed are every worker's.
    let f = Fixture::with_queue(Queue::new("observed").unwrap()).await;
    let queue = &f.queue;
    // Every task holds its slot until the test lets it go.
    let gate = Arc::new(Semaphore::new(0));
    let router = Router::new().route_bytes("hold", {
        let gate = gate.clone();
        move |_ctx, _payload| {
            let gate = gate.clone();
            async move {
                let _permit = gate.acquire().await;
                Ok(())
            }
        }
    });
    let config = WorkerConfig {
        concurrency: 4,
        ..WorkerConfig::default()
    };
    let running = f.start_worker(router, config);

    let started_at = std::time::Instant::now();
    for _ in 0..3 {
        f.client.enqueue(queue, Task::bytes("hold", "x")).await.unwrap();
    }
    let inspector = &f.inspector;
    let heartbeat_shows = |n: u64| {
        async move || {
            inspector
                .workers()
                .await
                .unwrap()
                .iter()
                .map(|w| w.in_flight)
                .sum::<u64>()
                == n
        }
    };
    assert!(
        wait_until(WAIT, heartbeat_shows(3)).await,
        "3 tasks never showed as running"
    );

    let slas = vec![Duration::from_secs(10); queue.layout().priorities.len()];
    let mut observer = Observer::new(inspector.clone(), queue.clone(), slas, Duration::from_secs(15));
    let first = observer.observe().await.unwrap();
    // One process, busy, but with one of its four slots free: 3 tasks on 4 slots.
    assert_eq!((first.live_workers, first.busy_workers), (1, 1));
    assert_eq!(first.slots_per_worker, 4.0);
    assert_eq!(
        first.in_flight_avg, 3.0,
        "the first tick starts the average at the reading"
    );
    assert_eq!(first.priorities.iter().map(|p| p.in_flight).sum::<u64>(), 3);
    assert_eq!(first.slot_rate, None, "no handler has finished yet");

    // The tasks finish: the average moves towards 0 at the rates' pace, not at once.
    let hold = Duration::from_millis(300);
    tokio::time::sleep(hold).await;
    gate.add_permits(3);
    assert!(wait_until(WAIT, heartbeat_shows(0)).await, "the tasks never finished");
    let second = observer.observe().await.unwrap();
    assert!(
        second.in_flight_avg > 0.0 && second.in_flight_avg < 3.0,
        "{}",
        second.in_flight_avg
    );
    assert_eq!(second.busy_workers, 0);
    // The three finished handlers ran at least `hold` each and at most since they were
    // enqueued: one slot does between 1/held and 1/hold a second, measured from the run times
    // the worker reported.
    let held = started_at.elapsed().as_secs_f64();
    let rate = second.slot_rate.expect("a rate measured from handler run times");
    assert!(
        rate > 0.0 && rate <= 1.0 / hold.as_secs_f64() && rate >= 1.0 / held,
        "{rate}"
    );

    let report = running.stop().await;
    assert_eq!(report.succeeded, 3, "{report:?}");
}
