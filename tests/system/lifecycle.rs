//! Task lifecycle: status of every state, results, progress, wait, cancel, unique keys,
//! retention and events, through the public API (the CLI's side is in worker-cli's tests).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rivulet::testing::RedisServer;
use rivulet::{
    CancelOutcome, Client, Enqueued, EventCursor, HandlerError, Output, Queue, Router, Task, TaskContext, TaskId,
    TaskState, TaskStatus, WorkerConfig,
};
use tokio::sync::Notify;

use rivulet::testing::{Fixture, RunningWorker, fast_config, unique_name};

/// Waits for `check`, failing the test with `what` when it does not hold in time.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        rivulet::testing::wait_until(timeout, async || check().await).await,
        "timed out after {timeout:?} waiting for: {what}"
    );
}

async fn status(client: &Client, queue: &Queue, id: &TaskId) -> TaskStatus {
    client.status(queue, id).await.expect("status")
}

async fn wait_state(client: &Client, queue: &Queue, id: &TaskId, want: TaskState) -> TaskStatus {
    rivulet::testing::wait_for_value(
        &format!("task {id} to read {want}"),
        Duration::from_secs(20),
        async || client.status(queue, id).await.expect("status"),
        |st| st.state == want,
    )
    .await
}

/// Every command Redis has served so far.
async fn total_calls(server: &RedisServer) -> u64 {
    let mut conn = server.client().get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| l.split_once(":calls=").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// A router whose `gate` handler reports progress, then waits for `open` and returns a result;
/// `boom` always fails; `big` returns a result of the payload's size.
fn router(open: Arc<Notify>) -> Router {
    Router::new()
        .route_returning("gate", move |ctx: TaskContext, n: u32| {
            let open = open.clone();
            async move {
                for i in 0..1000 {
                    // A tight loop: the worker coalesces these into a few writes a second.
                    ctx.progress((i / 20) as u8, format!("step {i}"));
                }
                ctx.progress(50, "halfway");
                tokio::select! {
                    () = open.notified() => {}
                    () = ctx.cancelled() => return Err(HandlerError::retry("stopped: cancelled")),
                }
                Ok(Output(serde_json::json!({ "doubled": n * 2 })))
            }
        })
        .route_bytes("boom", |_ctx, _b| async move { Err(HandlerError::retry("it broke")) })
        .route_returning("big", |_ctx, size: usize| async move {
            Ok(bytes::Bytes::from(vec![b'x'; size]))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_is_observed_through_the_api_for_rust_handlers() {
    let server = RedisServer::start();
    let queue = Queue::new("states").unwrap();
    let client = Client::new(&server.client()).await.unwrap();

    // Unknown: never enqueued.
    let nobody = TaskId::from_string("no-such-task");
    assert_eq!(status(&client, &queue, &nobody).await.state, TaskState::Unknown);

    // Scheduled, then queued (no worker yet).
    let later = client
        .enqueue(&queue, Task::json("gate", &1).unwrap().delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let st = status(&client, &queue, &later).await;
    assert_eq!(st.state, TaskState::Scheduled, "{st:#?}");
    assert!(st.due_at.is_some());
    let id = client.enqueue(&queue, Task::json("gate", &21).unwrap()).await.unwrap();
    let st = status(&client, &queue, &id).await;
    assert_eq!(
        (st.state, st.kind.as_deref()),
        (TaskState::Queued, Some("gate")),
        "{st:#?}"
    );

    // Active, with worker, attempt, start time and (coalesced) progress.
    let open = Arc::new(Notify::new());
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router(open.clone()),
        fast_config(),
    );
    let st = wait_state(&client, &queue, &id, TaskState::Active).await;
    assert_eq!(st.worker.as_deref(), Some(w.id.as_str()));
    assert_eq!((st.attempt, st.runs), (0, 1));
    assert!(st.started_at.is_some());
    wait_for("progress 50 %", Duration::from_secs(10), || {
        let (client, queue, id) = (client.clone(), queue.clone(), id.clone());
        async move {
            client
                .status(&queue, &id)
                .await
                .unwrap()
                .progress
                .is_some_and(|p| p.message == "halfway")
        }
    })
    .await;
    // 1001 reports in a tight loop cost a write or two (one per flush), not one each.
    let progress = client
        .events(&queue, &mut EventCursor::start(), 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.task_id == id.as_str() && e.event == "progress")
        .count();
    assert!(
        (1..=3).contains(&progress),
        "{progress} progress writes for 1001 reports"
    );

    // Succeeded, with the result encoded with the task's codec.
    open.notify_one();
    let st = wait_state(&client, &queue, &id, TaskState::Succeeded).await;
    assert_eq!(st.result_as::<serde_json::Value>().unwrap().unwrap()["doubled"], 42);
    assert!(st.finished_at.is_some() && st.run_ms.is_some());

    // Retrying (with the last error), then dead (with reason and dead-letter id).
    let failing = client
        .enqueue(
            &queue,
            Task::bytes("boom", "x")
                .max_attempts(2)
                .backoff(Duration::from_secs(2), 1.0, Duration::from_secs(2))
                .unwrap(),
        )
        .await
        .unwrap();
    let st = wait_state(&client, &queue, &failing, TaskState::Retrying).await;
    assert_eq!((st.attempt, st.error.as_deref()), (1, Some("it broke")), "{st:#?}");
    let st = wait_state(&client, &queue, &failing, TaskState::Dead).await;
    assert_eq!(st.reason.as_deref(), Some("exhausted"), "{st:#?}");
    assert!(st.dlq_id.is_some(), "{st:#?}");

    // Cancelled: a scheduled task never starts.
    assert_eq!(client.cancel(&queue, &later).await.unwrap(), CancelOutcome::Cancelled);
    let st = status(&client, &queue, &later).await;
    assert_eq!((st.state, st.started), (TaskState::Cancelled, Some(false)));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_queued_a_delayed_and_a_running_task() {
    let server = RedisServer::start();
    let queue = Queue::new("cancel").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let queued = client.enqueue(&queue, Task::json("gate", &1).unwrap()).await.unwrap();
    let delayed = client
        .enqueue(
            &queue,
            Task::json("gate", &2).unwrap().delay(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert_eq!(client.cancel(&queue, &queued).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(client.cancel(&queue, &delayed).await.unwrap(), CancelOutcome::Cancelled);

    // A worker starts after the delay has passed: neither ever runs.
    let open = Arc::new(Notify::new());
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router(open.clone()),
        fast_config(),
    );
    let running = client.enqueue(&queue, Task::json("gate", &3).unwrap()).await.unwrap();
    wait_state(&client, &queue, &running, TaskState::Active).await;
    for id in [&queued, &delayed] {
        let st = status(&client, &queue, id).await;
        assert_eq!(
            (st.state, st.started, st.runs),
            (TaskState::Cancelled, Some(false), 0),
            "{st:#?}"
        );
    }

    // The running one: its handler sees the cancel on its context within about a second.
    let asked = std::time::Instant::now();
    assert_eq!(
        client.cancel(&queue, &running).await.unwrap(),
        CancelOutcome::Cancelling
    );
    let st = client.wait(&queue, &running, Duration::from_secs(10)).await.unwrap();
    assert_eq!((st.state, st.started), (TaskState::Cancelled, Some(true)), "{st:#?}");
    // Not a timing assertion on the machine, only on the engine's own poll: the cancel
    // reached the handler on one of its polls, not after the lease or the heartbeat.
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        asked.elapsed()
    );
    assert_eq!(
        w.counters.failed.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a cancel is not a failure"
    );

    // Not retried, not dead-lettered; cancelling again answers with the final state.
    let inspector = rivulet::Inspector::new(&server.client()).await.unwrap();
    let stats = inspector.stats(&queue).await.unwrap();
    assert_eq!(stats.counters.dead, 0);
    assert_eq!(stats.counters.retried, 0);
    assert_eq!(
        client.cancel(&queue, &running).await.unwrap(),
        CancelOutcome::AlreadyFinished(TaskState::Cancelled)
    );
    let err = client.cancel(&queue, &TaskId::from_string("nope")).await.unwrap_err();
    assert!(matches!(err, rivulet::Error::UnknownTask { .. }), "{err}");
    assert!(
        err.to_string().contains("\"nope\"") && err.to_string().contains("\"cancel\""),
        "{err}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_at_completion_and_an_idle_wait_costs_a_bounded_number_of_commands() {
    let server = RedisServer::start();
    let queue = Queue::new("wait").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let id = client.enqueue(&queue, Task::json("gate", &5).unwrap()).await.unwrap();

    // Nobody works on it: a wait times out after a fixed number of commands, the same for a
    // 3 s wait as for a 1 s one (one blocking BLPOP, no polling).
    let mut used = Vec::new();
    for secs in [1, 3] {
        let before = total_calls(&server).await;
        let err = client.wait(&queue, &id, Duration::from_secs(secs)).await.unwrap_err();
        used.push(total_calls(&server).await - before);
        assert!(
            matches!(
                err,
                rivulet::Error::WaitTimeout {
                    state: TaskState::Queued,
                    ..
                }
            ),
            "{err}"
        );
    }
    // (The first wait also loads wait.lua: NOSCRIPT, SCRIPT LOAD.)
    assert!(used[1] <= used[0], "a longer idle wait issued more commands: {used:?}");
    // Per wait: a lookup and a final read (one `rivulet_v1_record` call per priority each,
    // which runs one HGETALL, and on a priority without a live record one HGET of its
    // shard's `finished` hash: two or three commands), the register script, BLPOP, the
    // unregister script (3), the blocking connection's handshake, the INFO read. Redis 8 also
    // counts the CLIENT SETINFO calls of the handshakes (the blocking connection's and the one
    // this test opens to read INFO): 26 on Redis 7.0, 30 on Redis 8.6.
    eprintln!("commands per idle wait: {used:?}");
    assert!(used[1] <= 30, "an idle wait issued {} commands", used[1]);

    // A waiter blocked before the task finishes is woken by the finish.
    let open = Arc::new(Notify::new());
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router(open.clone()),
        fast_config(),
    );
    let waiter = {
        let (client, queue, id) = (client.clone(), queue.clone(), id.clone());
        tokio::spawn(async move { client.wait(&queue, &id, Duration::from_secs(30)).await })
    };
    let second = {
        let (client, queue, id) = (client.clone(), queue.clone(), id.clone());
        tokio::spawn(async move { client.wait(&queue, &id, Duration::from_secs(30)).await })
    };
    wait_state(&client, &queue, &id, TaskState::Active).await;
    open.notify_one();
    for w in [waiter, second] {
        let st = w.await.unwrap().unwrap();
        assert_eq!(st.state, TaskState::Succeeded);
        assert_eq!(st.result_as::<serde_json::Value>().unwrap().unwrap()["doubled"], 10);
    }
    // Waiting on a finished task answers at once; on an unknown one with a typed error.
    assert_eq!(
        client.wait(&queue, &id, Duration::from_secs(1)).await.unwrap().state,
        TaskState::Succeeded
    );
    let err = client
        .wait(&queue, &TaskId::from_string("ghost"), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, rivulet::Error::UnknownTask { .. }), "{err}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_after_a_replay_is_not_woken_by_the_first_runs_token() {
    let server = RedisServer::start();
    let queue = Queue::new("rewait").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let id = client
        .enqueue(&queue, Task::json("boom", &()).unwrap().max_attempts(1))
        .await
        .unwrap();
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router(Arc::new(Notify::new())),
        fast_config(),
    );
    let first = client.wait(&queue, &id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(first.state, TaskState::Dead);
    w.stop().await;
    // Replayed while no worker runs: the done list still holds the first run's token (it lives
    // a minute), which must not end the next wait early.
    let inspector = rivulet::Inspector::new(&server.client()).await.unwrap();
    assert_eq!(inspector.dlq_replay(&queue, &rivulet::DlqSelect::All).await.unwrap(), 1);
    let err = client.wait(&queue, &id, Duration::from_millis(800)).await.unwrap_err();
    assert!(
        matches!(err, rivulet::Error::WaitTimeout { state: TaskState::Queued, waited_ms, .. } if waited_ms >= 700),
        "{err}"
    );
    // Run again: the wait returns the second run's end.
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router(Arc::new(Notify::new())),
        fast_config(),
    );
    let second = client.wait(&queue, &id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(second.state, TaskState::Dead);
    assert_ne!(second.dlq_id, first.dlq_id, "{second:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_racing_producers_of_one_unique_key_make_exactly_one_task() {
    let server = RedisServer::start();
    let queue = Queue::new("unique").unwrap().shards(4).unwrap();
    let producers: Vec<Client> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(Client::new(&server.client()).await.unwrap());
        }
        v
    };
    let start = Arc::new(tokio::sync::Barrier::new(10));
    let mut handles = Vec::new();
    for p in producers {
        let (queue, start) = (queue.clone(), start.clone());
        handles.push(tokio::spawn(async move {
            start.wait().await;
            p.submit(&queue, Task::json("gate", &1).unwrap().unique_key("report-2026-12-01"))
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(h.await.unwrap());
    }
    let new: Vec<&Enqueued> = outcomes.iter().filter(|e| !e.is_duplicate()).collect();
    assert_eq!(new.len(), 1, "{outcomes:?}");
    let holder = new[0].id().clone();
    assert!(outcomes.iter().all(|e| e.id() == &holder), "{outcomes:?}");
    let inspector = rivulet::Inspector::new(&server.client()).await.unwrap();
    let stats = inspector.stats(&queue).await.unwrap();
    assert_eq!(stats.counters.enqueued, 1);

    // Live until final: once the holder finishes, the key is free again.
    let client = Client::new(&server.client()).await.unwrap();
    let open = Arc::new(Notify::new());
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router(open.clone()),
        fast_config(),
    );
    wait_state(&client, &queue, &holder, TaskState::Active).await;
    let dup = client
        .submit(&queue, Task::json("gate", &1).unwrap().unique_key("report-2026-12-01"))
        .await
        .unwrap();
    assert_eq!(dup, Enqueued::Duplicate(holder.clone()));
    open.notify_one();
    wait_state(&client, &queue, &holder, TaskState::Succeeded).await;
    let again = client
        .submit(&queue, Task::json("gate", &1).unwrap().unique_key("report-2026-12-01"))
        .await
        .unwrap();
    assert!(!again.is_duplicate(), "{again:?}");
    open.notify_one();
    wait_state(&client, &queue, again.id(), TaskState::Succeeded).await;

    // A window: held for its length, even after the task finished.
    let first = client
        .submit(
            &queue,
            Task::json("gate", &1)
                .unwrap()
                .unique_key("daily")
                .unique_for(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    open.notify_one();
    wait_state(&client, &queue, first.id(), TaskState::Succeeded).await;
    let second = client
        .submit(
            &queue,
            Task::json("gate", &1)
                .unwrap()
                .unique_key("daily")
                .unique_for(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(second, Enqueued::Duplicate(first.id().clone()));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_cap_is_an_error_on_the_task_never_a_truncation() {
    let server = RedisServer::start();
    let queue = Queue::new("cap").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let config = WorkerConfig {
        max_result_bytes: 1000,
        ..fast_config()
    };
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router(Arc::default()), config);
    let fits = client.enqueue(&queue, Task::json("big", &1000).unwrap()).await.unwrap();
    let over = client.enqueue(&queue, Task::json("big", &1001).unwrap()).await.unwrap();
    let st = client.wait(&queue, &fits, Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        (st.state, st.result.as_ref().map(|r| r.len())),
        (TaskState::Succeeded, Some(1000))
    );
    let st = client.wait(&queue, &over, Duration::from_secs(20)).await.unwrap();
    assert_eq!(st.state, TaskState::Dead, "{st:#?}");
    assert_eq!(st.reason.as_deref(), Some("fatal"));
    let error = st.error.unwrap();
    assert!(
        error.contains("1001 bytes") && error.contains("1000-byte cap"),
        "{error}"
    );
    assert_eq!(st.result, None);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_expire_after_the_retention_and_zero_keeps_none() {
    let server = RedisServer::start();
    let queue = Queue::new("retain").unwrap().retention(Duration::from_millis(300));
    let client = Client::new(&server.client()).await.unwrap();
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router(Arc::default()),
        fast_config(),
    );
    let short = client.enqueue(&queue, Task::json("big", &3).unwrap()).await.unwrap();
    let untracked = client
        .enqueue(&queue, Task::json("big", &3).unwrap().retention(Duration::ZERO))
        .await
        .unwrap();
    let long = client
        .enqueue(
            &queue,
            Task::json("big", &3).unwrap().retention(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(
        client.wait(&queue, &long, Duration::from_secs(20)).await.unwrap().state,
        TaskState::Succeeded
    );
    wait_for("the short record to expire", Duration::from_secs(20), || {
        let (client, queue, short) = (client.clone(), queue.clone(), short.clone());
        async move { client.status(&queue, &short).await.unwrap().state == TaskState::Unknown }
    })
    .await;
    // The per-task override outlives the queue's retention; zero never had a record.
    assert_eq!(status(&client, &queue, &long).await.state, TaskState::Succeeded);
    assert_eq!(status(&client, &queue, &untracked).await.state, TaskState::Unknown);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_task_arrive_in_order() {
    let server = RedisServer::start();
    let queue = Queue::new("events").unwrap().shards(2).unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let mut follow = client.events_now(&queue).await.unwrap();
    let open = Arc::new(Notify::new());
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router(open.clone()),
        fast_config(),
    );
    let id = client.enqueue(&queue, Task::json("gate", &1).unwrap()).await.unwrap();
    wait_state(&client, &queue, &id, TaskState::Active).await;
    open.notify_one();
    client.wait(&queue, &id, Duration::from_secs(20)).await.unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &rivulet::Event| e.event == "succeeded") {
        let got = client
            .follow_events(&queue, &mut follow, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!got.is_empty(), "no event within 5 s; so far {seen:?}");
        seen.extend(got.into_iter().filter(|e| e.task_id == id.as_str()));
    }
    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    let without_progress: Vec<&str> = names.iter().copied().filter(|n| *n != "progress").collect();
    assert_eq!(without_progress, ["enqueued", "started", "succeeded"], "{names:?}");
    // Read from the start, the same order.
    let all = client.events(&queue, &mut EventCursor::start(), 1000).await.unwrap();
    let from_start: Vec<&str> = all
        .iter()
        .filter(|e| e.task_id == id.as_str() && e.event != "progress")
        .map(|e| e.event.as_str())
        .collect();
    assert_eq!(from_start, ["enqueued", "started", "succeeded"]);
    w.stop().await;
}

/// A child process killed on drop, so a failing test leaves nothing running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_never_shows_succeeded_and_is_active_again_after_reclaim() {
    let server = RedisServer::start();
    let queue = Queue::new("killed").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rivulet-test-worker"))
        .args([server.url(), "killed".into(), "4".into(), "1000".into()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the test worker");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child_id = line.trim().strip_prefix("ready ").unwrap().to_owned();
    let mut child = ChildGuard(child);
    let id = client
        .enqueue(
            &queue,
            Task::json("hold", &serde_json::json!({"n": 1, "ms": 60_000})).unwrap(),
        )
        .await
        .unwrap();
    let st = wait_state(&client, &queue, &id, TaskState::Active).await;
    assert_eq!((st.worker.as_deref(), st.runs), (Some(child_id.as_str()), 1));
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // Dead worker: the record still says active on the dead worker (it never finished).
    assert_eq!(status(&client, &queue, &id).await.state, TaskState::Active);

    // A survivor reclaims it after the lease: active again, a second run, then done.
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let router = Router::new().route("hold", move |_ctx: TaskContext, _h: serde_json::Value| {
        let g = g.clone();
        async move {
            g.notified().await;
            Ok(())
        }
    });
    let config = WorkerConfig {
        lease: Duration::from_millis(1000),
        ..fast_config()
    };
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, config);
    wait_for("the survivor to take the task over", Duration::from_secs(20), || {
        let (client, queue, id, me) = (client.clone(), queue.clone(), id.clone(), w.id.clone());
        async move {
            let st = client.status(&queue, &id).await.unwrap();
            assert_ne!(st.state, TaskState::Succeeded, "succeeded before anyone finished it");
            st.state == TaskState::Active && st.worker.as_deref() == Some(me.as_str())
        }
    })
    .await;
    let st = status(&client, &queue, &id).await;
    assert_eq!((st.runs, st.attempt), (2, 0), "{st:#?}");
    gate.notify_one();
    let st = client.wait(&queue, &id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(st.state, TaskState::Succeeded);
    w.stop().await;
}

/// The shard every task of a one-shard queue at the default priority goes to.
fn normal_shard(queue: &Queue) -> rivulet::keys::ShardKeys {
    queue.shard("normal", 0)
}

/// A size read straight from Redis (`XLEN`, `ZCARD`, ...) of one key.
async fn size_of(f: &Fixture, command: &str, key: &str) -> u64 {
    let mut conn = f.redis().await;
    redis::cmd(command).arg(key).query_async(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_task_reads_dead_with_its_reason_and_dead_letter_id() {
    let f = Fixture::shared(Queue::new(&unique_name("poison")).unwrap()).await;
    let id = f.client.enqueue(&f.queue, Task::json("p", &1).unwrap()).await.unwrap();
    // Delivered once to a consumer that never settles it (a worker that died reading it).
    f.abandon_entries(&normal_shard(&f.queue).stream, "gone", 10).await;
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = ran.clone();
    let router = Router::new().route("p", move |_ctx: TaskContext, _n: u32| {
        r.store(true, std::sync::atomic::Ordering::SeqCst);
        async {}
    });
    let config = WorkerConfig {
        lease: Duration::from_millis(200),
        max_deliveries: 1,
        ..fast_config()
    };
    let w = f.start_worker(router, config);
    let st = wait_state(&f.client, &f.queue, &id, TaskState::Dead).await;
    assert_eq!(st.reason.as_deref(), Some("poison"), "{st:#?}");
    assert!(
        st.error.as_deref().unwrap_or("").contains("delivered 2 times"),
        "{st:#?}"
    );
    let dlq_id = st.dlq_id.clone().expect("the dead letter's id");
    let letters = f.inspector.dlq_list(&f.queue, None, 10).await.unwrap();
    assert!(
        letters.iter().any(|d| d.id.entry == dlq_id),
        "dlq_id {dlq_id} not among {letters:#?}"
    );
    assert!(
        !ran.load(std::sync::atomic::Ordering::SeqCst),
        "a poison task is not run"
    );
    // Waiting on it answers at once with the final state.
    let done = f.client.wait(&f.queue, &id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(done.state, TaskState::Dead);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_requeued_at_the_drain_deadline_reads_queued_again() {
    let f = Fixture::shared(Queue::new(&unique_name("requeued")).unwrap()).await;
    let router = Router::new().route("hold", |_ctx: TaskContext, _n: u32| async {
        std::future::pending::<()>().await;
    });
    let config = WorkerConfig {
        drain_timeout: Duration::from_millis(100),
        ..fast_config()
    };
    let w = f.start_worker(router, config);
    let id = f
        .client
        .enqueue(&f.queue, Task::json("hold", &1).unwrap())
        .await
        .unwrap();
    let st = wait_state(&f.client, &f.queue, &id, TaskState::Active).await;
    assert_eq!(st.worker.as_deref(), Some(w.id.as_str()));
    let report = w.stop().await;
    assert_eq!(report.requeued, 1);
    let st = status(&f.client, &f.queue, &id).await;
    assert_eq!(st.state, TaskState::Queued, "{st:#?}");
    assert_eq!(st.worker, None, "{st:#?}");
    let mut cursor = EventCursor::start();
    let names: Vec<String> = f
        .client
        .events(&f.queue, &mut cursor, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.task_id == id.as_str())
        .map(|e| e.event)
        .collect();
    assert_eq!(names.last().map(String::as_str), Some("requeued"), "{names:?}");
    // Requeued under a new entry: a cancel now removes it before anyone runs it.
    assert_eq!(f.client.cancel(&f.queue, &id).await.unwrap(), CancelOutcome::Cancelled);
    let left = size_of(&f, "XLEN", &normal_shard(&f.queue).stream).await;
    assert_eq!(left, 0, "the requeued entry is deleted by the cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_listed_by_state_page_by_page_past_the_events_cap() {
    let f = Fixture::shared(Queue::new(&unique_name("listed")).unwrap()).await;
    let router = Router::new().route("ok", |_ctx: TaskContext, _n: u32| async {}).route(
        "slow",
        |ctx: TaskContext, _n: u32| async move {
            ctx.cancelled().await;
            Err(HandlerError::retry("cancelled"))
        },
    );
    let w = f.start_worker(router, fast_config());
    // Enough tasks that their events overflow the shard's capped events stream (about 3,333
    // kept per shard at this layout): the listing must not need them.
    const N: usize = 2500;
    let tasks = (0..N).map(|n| Task::json("ok", &n).unwrap());
    let mut ids = f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    let slow = f
        .client
        .enqueue(&f.queue, Task::json("slow", &0).unwrap())
        .await
        .unwrap();
    f.wait_done(N as u64, Duration::from_secs(30)).await;
    wait_state(&f.client, &f.queue, &slow, TaskState::Active).await;
    f.client.cancel(&f.queue, &slow).await.unwrap();
    wait_state(&f.client, &f.queue, &slow, TaskState::Cancelled).await;

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..N {
        let page = f
            .client
            .tasks_page(&f.queue, TaskState::Succeeded, after.as_deref(), 500)
            .await
            .unwrap();
        assert!(page.tasks.len() <= 500);
        assert!(page.tasks.iter().all(|t| t.state == TaskState::Succeeded));
        seen.extend(page.tasks.into_iter().map(|t| t.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "a task listed twice: {seen:?}");
    ids.sort();
    assert_eq!(unique, ids, "every succeeded task, once");
    let kept = size_of(&f, "XLEN", &normal_shard(&f.queue).events).await as usize;
    assert!(
        kept < 2 * N,
        "the events stream was not capped ({kept} entries), so the test proves nothing"
    );
    let cancelled = f.client.tasks(&f.queue, TaskState::Cancelled, 10).await.unwrap();
    assert_eq!(cancelled.iter().map(|t| &t.id).collect::<Vec<_>>(), vec![&slow]);
    // A cursor is refused for a state that is not paged.
    assert!(
        f.client
            .tasks_page(&f.queue, TaskState::Queued, Some("0:x"), 10)
            .await
            .is_err()
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_leave_the_finished_listing() {
    let queue = Queue::new(&unique_name("expiring"))
        .unwrap()
        .retention(Duration::from_millis(300));
    let f = Fixture::shared(queue).await;
    let w = f.start_worker(
        Router::new().route("ok", |_ctx: TaskContext, _n: u32| async {}),
        fast_config(),
    );
    let id = f.client.enqueue(&f.queue, Task::json("ok", &1).unwrap()).await.unwrap();
    f.wait_done(1, Duration::from_secs(20)).await;
    let listed = f.client.tasks(&f.queue, TaskState::Succeeded, 10).await.unwrap();
    assert_eq!(listed.iter().map(|t| &t.id).collect::<Vec<_>>(), vec![&id]);
    wait_state(&f.client, &f.queue, &id, TaskState::Unknown).await;
    assert!(
        f.client
            .tasks(&f.queue, TaskState::Succeeded, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The next settle on the shard trims the expired id from the index.
    f.client.enqueue(&f.queue, Task::json("ok", &2).unwrap()).await.unwrap();
    f.wait_done(2, Duration::from_secs(20)).await;
    let members = size_of(&f, "ZCARD", &normal_shard(&f.queue).succeeded).await;
    assert_eq!(members, 1, "only the second task's settle is left in the index");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_after_delivery_that_runs_anyway_ends_cancelled_not_succeeded() {
    let f = Fixture::shared(Queue::new(&unique_name("late-cancel")).unwrap()).await;
    let id = f
        .client
        .enqueue(&f.queue, Task::json("quick", &1).unwrap())
        .await
        .unwrap();
    // A worker read it (and died) before the cancel: cancel cannot take it out of the stream.
    f.abandon_entries(&normal_shard(&f.queue).stream, "gone", 10).await;
    assert_eq!(f.client.cancel(&f.queue, &id).await.unwrap(), CancelOutcome::Cancelled);
    // The survivor reclaims it and its handler finishes before any start record is written.
    let router = Router::new().route("quick", |_ctx: TaskContext, _n: u32| async {});
    let config = WorkerConfig {
        lease: Duration::from_millis(200),
        ..fast_config()
    };
    let w = f.start_worker(router, config);
    let st = rivulet::testing::wait_for_value(
        "the reclaimed run to be settled",
        Duration::from_secs(20),
        async || status(&f.client, &f.queue, &id).await,
        |st| st.started == Some(true) || st.state != TaskState::Cancelled,
    )
    .await;
    assert_eq!((st.state, st.started), (TaskState::Cancelled, Some(true)), "{st:#?}");
    assert_eq!(f.outstanding().await, 0);
    w.stop().await;
}
