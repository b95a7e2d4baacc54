//! An idle worker costs almost nothing (issue 18): it blocks long in one read, its promoter
//! sleeps until woken, its reclaimer looks for dead workers with one command. These tests
//! check the cost (a command count on a server of their own) and that what the long sleeps
//! could delay still happens on time: delayed tasks, retries, pause and resume, shutdown.
//! Bounds on time are generous: each is several times what the feature needs and well under
//! what the worker would take without it (a 10 s promoter round, a 30 s blocking read).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rivulet::testing::{Fixture, RunningWorker, wait_until};
use rivulet::{HandlerError, Queue, Router, Task, TaskContext, Worker, WorkerConfig};

/// Every command the server ran (scripts' inner calls included) since the last reset.
async fn commands(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// The defaults but for a long block, so a fetcher that ends early was ended on purpose.
fn idle_config() -> WorkerConfig {
    WorkerConfig {
        block: Duration::from_secs(30),
        ..WorkerConfig::default()
    }
}

/// Records when each run of `kind` started, and fails its first attempt with a 1 s retry
/// when `fail_first`.
fn timing_router(starts: &Arc<Mutex<Vec<(u32, Instant)>>>, fail_first: bool) -> Router {
    let starts = starts.clone();
    Router::new().route_bytes("timed", move |ctx: TaskContext, _payload| {
        let starts = starts.clone();
        async move {
            starts.lock().unwrap().push((ctx.attempt, Instant::now()));
            if fail_first && ctx.attempt == 0 {
                return Err(HandlerError::retry_after(Duration::from_secs(1), "first attempt fails"));
            }
            Ok(())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_serving_thirty_lanes_makes_at_most_two_commands_a_second() {
    // A server of its own: the count is of every command it runs.
    let f = Fixture::with_queue(Queue::new("idle-0").unwrap()).await;
    let queues: Vec<Queue> = (0..10).map(|i| Queue::new(&format!("idle-{i}")).unwrap()).collect();
    assert_eq!(queues[0].layout().priorities.len(), 3, "3 priorities each: 30 lanes");
    let worker = RunningWorker::start(
        &f.server,
        &queues,
        Router::new().route_bytes("x", |_c, _p| async { Ok(()) }),
        WorkerConfig::default(),
    );
    f.wait_worker_registered(Duration::from_secs(10)).await;
    // Start-up (groups, the first sweep of every lane, the first promotion) is not idle cost:
    // wait until a 2 s window is quiet, however slow the machine.
    let mut conn = f.redis().await;
    let reset = async |conn: &mut redis::aio::MultiplexedConnection| {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(conn)
            .await
            .unwrap()
    };
    let mut quiet = false;
    for _ in 0..30 {
        reset(&mut conn).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if commands(&mut conn).await <= 8 {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "the worker never went quiet");
    reset(&mut conn).await;
    let window = Duration::from_secs(20);
    tokio::time::sleep(window).await;
    // The INFO call reading them counts itself: leave it out.
    let n = commands(&mut conn).await.saturating_sub(1);
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        n <= 2 * window.as_secs(),
        "{n} commands in {window:?} from one idle worker serving 30 lanes:\n{info}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_task_enqueued_while_the_worker_idles_starts_on_time() {
    let f = Fixture::shared(Queue::new("idle-delayed").unwrap()).await;
    let starts = Arc::new(Mutex::new(Vec::new()));
    let worker = f.start_worker(timing_router(&starts, false), idle_config());
    f.wait_worker_registered(Duration::from_secs(10)).await;
    // Let the promoter settle into its long sleep (its first rounds are at start).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let due = Instant::now() + Duration::from_secs(1);
    f.client
        .enqueue(&f.queue, Task::bytes("timed", "x").delay(Duration::from_secs(1)))
        .await
        .unwrap();
    f.wait_done(1, Duration::from_secs(30)).await;
    let (_, started) = starts.lock().unwrap()[0];
    // Without the wake it would wait for the promoter's next round (8 to 10 s).
    let late = started.saturating_duration_since(due);
    assert!(late < Duration::from_secs(4), "started {late:?} after its due time");
    assert!(
        started + Duration::from_millis(50) >= due,
        "started before its due time"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_an_idle_worker_starts_on_time() {
    let f = Fixture::shared(Queue::new("idle-retry").unwrap()).await;
    let starts = Arc::new(Mutex::new(Vec::new()));
    let worker = f.start_worker(timing_router(&starts, true), idle_config());
    f.wait_worker_registered(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.client.enqueue(&f.queue, Task::bytes("timed", "x")).await.unwrap();
    f.wait_done(1, Duration::from_secs(30)).await;
    let runs = starts.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let gap = runs[1].1 - runs[0].1;
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_secs(5),
        "the retry (due 1 s after the failure) started {gap:?} after the first run"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_and_terminate_end_a_worker_blocked_in_a_long_read_promptly() {
    for terminate in [false, true] {
        let f = Fixture::shared(Queue::new("idle-stop").unwrap()).await;
        let worker = Worker::new(f.redis_client(), Router::new(), idle_config()).queue(f.queue.clone());
        let handle = worker.shutdown_handle();
        let running = tokio::spawn(worker.run(std::future::pending()));
        f.wait_worker_registered(Duration::from_secs(10)).await;
        // Both fetchers are in their 30 s read by now.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if terminate {
            handle.terminate();
        } else {
            handle.quiet();
        }
        let report = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the worker stops well before its 30 s read would end")
            .unwrap()
            .unwrap();
        assert_eq!(report.started, 0, "terminate {terminate}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_reach_a_worker_blocked_in_a_long_read() {
    let f = Fixture::shared(Queue::new("idle-pause").unwrap()).await;
    let other = f.other_queue("idle-pause-other");
    let starts = Arc::new(Mutex::new(Vec::new()));
    let worker = Worker::new(f.redis_client(), timing_router(&starts, false), idle_config())
        .queue(f.queue.clone())
        .queue(other.clone());
    let handle = worker.shutdown_handle();
    let running = tokio::spawn(worker.run(std::future::pending()));
    f.wait_worker_registered(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Paused while the fetchers block on both queues: the read is ended and made again
    // without the paused queue, so a task enqueued then waits.
    f.inspector.pause(&f.queue).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.client
        .enqueue(&f.queue, Task::bytes("timed", "paused"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(starts.lock().unwrap().is_empty(), "a paused queue's task ran");
    // The other queue is still served.
    f.client.enqueue(&other, Task::bytes("timed", "other")).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), async || starts.lock().unwrap().len() == 1).await,
        "the queue left unpaused is served"
    );
    // Resumed while the fetchers block on the other queue alone: the read is ended and
    // made again with it, well before its 30 s block would end.
    f.inspector.resume(&f.queue).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), async || starts.lock().unwrap().len() == 2).await,
        "the resumed queue's task runs"
    );
    handle.quiet();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_takes_over_the_tasks_of_a_worker_killed_after_it_started() {
    // A server of its own (a process is killed). The survivor starts first: its first sweep
    // finds nothing, so its lanes are left alone, and only the dead worker's `rivulet:alive`
    // members can send it looking (the safety sweep is a minute away).
    let f = Fixture::with_queue(Queue::new("takeover").unwrap()).await;
    let recorder = rivulet::testing::Recorder::new();
    let lease = Duration::from_millis(1000);
    let config = WorkerConfig {
        lease,
        concurrency: 1,
        ..WorkerConfig::default()
    };
    assert!(config.safety_sweep_interval() >= Duration::from_secs(60));
    let survivor = f.start_worker(recorder.router(&["hold"]), config);
    f.wait_worker_registered(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut child, child_id) =
        crate::failures::spawn_test_worker(&f.server, "takeover", 50, lease.as_millis() as u64, &[]);
    // Tasks that would run for a minute in the child.
    let tasks = (0..50u64).map(|n| Task::json("hold", &serde_json::json!({"n": n, "ms": 60_000})).unwrap());
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    let mut held = 0;
    let holding = wait_until(Duration::from_secs(20), async || {
        let p = f.inspector.pending(&f.queue, 100).await.unwrap();
        held = p.iter().filter(|e| e.consumer == child_id).count();
        // All 50 are read: the survivor's done, or the child's.
        held > 0 && p.len() as u64 + f.stats().await.counters.done >= 50
    })
    .await;
    assert!(holding, "the child never held a task");
    child.child().kill().expect("the child is still running");
    child.child().wait().unwrap();
    // Its tasks come back well within the safety sweep: lease + a beat + 1 s + a round.
    recorder.wait_for_runs(50, Duration::from_secs(30)).await;
    survivor.stop().await;
    assert_eq!(recorder.runs_per_task().len(), 50);
    let stats = f.stats().await;
    assert_eq!(
        (stats.counters.reclaimed, stats.counters.done, stats.counters.lost),
        (held as u64, 50, 0),
        "{stats:#?}"
    );
}
