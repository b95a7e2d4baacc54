//! Failure path: dead workers, long tasks, retries, the DLQ, bad input, fencing, outages,
//! graceful drain.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rivulet::testing::{ChildGuard, Fixture, Recorder, RedisServer, fast_config, wait_until};
use rivulet::worker::{DEAD_REASONS, OTHER_KIND};
use rivulet::{
    DlqSelect, HandlerError, Queue, RetryPolicy, Router, Task, TaskContext, Worker, WorkerConfig, WorkerMetrics,
};

/// A `rivulet-test-worker` process serving `queue` (killed on drop, its stderr shown if the
/// test fails) and the worker id it announced; `limits` are its limit arguments
/// (`rate:NAME=SPEC`, `running:NAME=N`).
pub(crate) fn spawn_test_worker(
    server: &RedisServer,
    queue: &str,
    concurrency: usize,
    lease_ms: u64,
    limits: &[String],
) -> (ChildGuard, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rivulet-test-worker"));
    cmd.args([
        server.url(),
        queue.to_owned(),
        concurrency.to_string(),
        lease_ms.to_string(),
    ])
    .args(limits)
    .stdout(Stdio::piped());
    let mut child = ChildGuard::spawn("rivulet-test-worker", &mut cmd);
    let mut line = String::new();
    BufReader::new(child.child().stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let id = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("the worker announces itself, not {line:?}:\n{}", child.log()))
        .to_owned();
    (child, id)
}

/// Kind `hold` (the test worker's kind) recorded, payload `{"n": .., "ms": ..}`.
fn hold_router(recorder: &Recorder) -> Router {
    recorder.router(&["hold"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_process_tasks_complete_elsewhere_after_the_lease() {
    let f = Fixture::with_queue(Queue::new("crash").unwrap()).await;
    let (mut child, child_id) = spawn_test_worker(&f.server, "crash", 50, 1000, &[]);
    // Tasks that would run for a minute: the process will die holding them.
    let tasks = (0..50u64).map(|n| Task::json("hold", &serde_json::json!({"n": n, "ms": 60_000})).unwrap());
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    let held = wait_until(Duration::from_secs(20), async || {
        let p = f.inspector.pending(&f.queue, 100).await.unwrap();
        p.len() == 50 && p.iter().all(|e| e.consumer == child_id)
    })
    .await;
    assert!(held, "the child never held all 50 tasks");
    child.child().kill().expect("the child is still running");
    child.child().wait().unwrap();

    let recorder = Recorder::new();
    let config = WorkerConfig {
        lease: Duration::from_millis(1000),
        ..fast_config()
    };
    let w = f.start_worker(hold_router(&recorder), config);
    // All 50 tasks complete on the survivor.
    recorder.wait_for_runs(50, Duration::from_secs(30)).await;
    w.stop().await;
    let repeated = recorder.repeated();
    assert!(repeated.is_empty(), "a task ran twice on the survivor: {repeated:?}");
    assert_eq!(recorder.runs_per_task().len(), 50);
    assert_eq!(f.outstanding().await, 0);
    let stats = f.stats().await;
    assert_eq!(
        (stats.counters.reclaimed, stats.counters.done, stats.counters.lost),
        (50, 50, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_running_for_three_leases_is_never_reclaimed_or_run_twice() {
    let f = Fixture::shared(Queue::new("long").unwrap()).await;
    let recorder = Recorder::new();
    let lease = Duration::from_millis(300);
    let router = recorder.route(Router::new(), "long", |_ctx, _: ()| async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        Ok(())
    });
    let config = WorkerConfig { lease, ..fast_config() };
    // Two workers: the idle one keeps trying to reclaim.
    let a = f.start_worker(router.clone(), config.clone());
    let b = f.start_worker(router, config);
    f.client
        .enqueue(&f.queue, Task::json("long", &()).unwrap())
        .await
        .unwrap();
    f.wait_done(1, Duration::from_secs(20)).await;
    let (ra, rb) = (a.stop().await, b.stop().await);
    assert_eq!(
        recorder.len(),
        1,
        "the long task ran more than once: {}",
        recorder.summary(5)
    );
    assert_eq!(ra.started + rb.started, 1);
    assert_eq!(f.stats().await.counters.reclaimed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_twice_then_succeeding_completes_on_attempt_two_on_schedule() {
    // A server of its own: the retry gaps are timing claims.
    let base = Fixture::start().await;
    for jitter in [false, true] {
        let queue = Queue::new(if jitter { "retry-jitter" } else { "retry-exact" }).unwrap();
        let recorder = Recorder::new();
        let router = recorder.route(Router::new(), "flaky", |ctx, _: ()| async move {
            if ctx.attempt < 2 {
                Err(HandlerError::retry(format!("try {}", ctx.attempt)))
            } else {
                Ok(())
            }
        });
        let policy = RetryPolicy {
            base: Duration::from_millis(300),
            factor: 2.0,
            jitter,
            ..RetryPolicy::default()
        };
        let config = WorkerConfig {
            retry: policy,
            ..fast_config()
        };
        let w = base.start_worker_on(&queue, router, config);
        base.client
            .enqueue(&queue, Task::json("flaky", &()).unwrap())
            .await
            .unwrap();
        recorder.wait_for_runs(3, Duration::from_secs(10)).await;
        let done = wait_until(Duration::from_secs(10), async || {
            base.inspector.stats(&queue).await.unwrap().counters.done == 1
        })
        .await;
        assert!(done, "the task never completed");
        w.stop().await;
        let attempts: Vec<(u32, Instant)> = recorder.runs().iter().map(|r| (r.attempt, r.at)).collect();
        assert_eq!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 1, 2]);
        // Promotion runs at least every 50 ms here; allow generous scheduling slack above.
        let slack = Duration::from_millis(400);
        for (i, pair) in attempts.windows(2).enumerate() {
            let gap = pair[1].1 - pair[0].1;
            let ceiling = policy.ceiling(i as u32);
            if jitter {
                assert!(
                    gap <= ceiling + slack,
                    "gap {gap:?} after attempt {i} exceeds ceiling {ceiling:?}"
                );
            } else {
                // The delay is the ceiling itself: never early, never much later.
                let early_margin = Duration::from_millis(5); // ms rounding of due times
                assert!(
                    gap + early_margin >= ceiling,
                    "retry {i} came early: {gap:?} < {ceiling:?}"
                );
                assert!(gap <= ceiling + slack, "retry {i} came late: {gap:?} vs {ceiling:?}");
            }
        }
        let stats = base.inspector.stats(&queue).await.unwrap();
        assert_eq!(
            (stats.counters.failed, stats.counters.retried, stats.counters.dead),
            (2, 2, 0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_and_fatal_tasks_land_in_the_dlq_and_replay_runs_them() {
    let f = Fixture::shared(Queue::new("dead").unwrap()).await;
    let healed = Arc::new(AtomicU32::new(0));
    let recorder = Recorder::new();
    let router = recorder.route(Router::new(), "job", {
        let healed = healed.clone();
        move |_ctx, fatal: bool| {
            let healed = healed.clone();
            async move {
                if healed.load(Ordering::SeqCst) == 1 {
                    return Ok(());
                }
                if fatal {
                    Err(HandlerError::fatal("cannot ever work"))
                } else {
                    Err(HandlerError::retry("still broken"))
                }
            }
        }
    });
    let policy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    let w = f.start_worker(
        router,
        WorkerConfig {
            retry: policy,
            ..fast_config()
        },
    );
    let exhausted = f
        .client
        .enqueue(&f.queue, Task::json("job", &false).unwrap())
        .await
        .unwrap();
    let fatal = f
        .client
        .enqueue(&f.queue, Task::json("job", &true).unwrap())
        .await
        .unwrap();
    f.wait_dead_letters(2, Duration::from_secs(10)).await;
    let dead = f.inspector.dlq_list(&f.queue, None, 10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:#?}");
    let by_task: HashMap<String, &rivulet::DeadLetter> = dead.iter().map(|d| (d.task_id.clone(), d)).collect();
    let e = by_task[exhausted.as_str()];
    assert_eq!(
        (e.reason.as_str(), e.error.as_str(), e.attempt, e.kind.as_str()),
        ("exhausted", "still broken", 3, "job"),
        "a dead letter counts every failed attempt, the last included"
    );
    let origin = format!("rivulet:{{{}:normal:0}}:stream/", f.queue.name());
    assert!(
        e.origin.starts_with(&origin),
        "{} does not start with {origin}",
        e.origin
    );
    assert!(e.dead_at > 0 && e.deliveries == 1);
    let fd = by_task[fatal.as_str()];
    assert_eq!((fd.reason.as_str(), fd.attempt), ("fatal", 1));
    assert_eq!(recorder.runs_of(exhausted.as_str()).len(), 3, "max_attempts = 3 runs");
    assert_eq!(recorder.runs_of(fatal.as_str()).len(), 1, "fatal runs once");
    // Show one, then replay them all: with the cause fixed they complete, attempts reset.
    let shown = f.inspector.dlq_get(&f.queue, &fd.id).await.unwrap();
    assert_eq!(shown.task_id, fatal.as_str());
    healed.store(1, Ordering::SeqCst);
    assert_eq!(f.inspector.dlq_replay(&f.queue, &DlqSelect::All).await.unwrap(), 2);
    f.wait_done(2, Duration::from_secs(10)).await;
    w.stop().await;
    let last_attempt_of = |id: &str| recorder.runs_of(id).last().unwrap().attempt;
    assert_eq!(
        (last_attempt_of(exhausted.as_str()), last_attempt_of(fatal.as_str())),
        (0, 0)
    );
    assert!(f.inspector.dlq_list(&f.queue, None, 10).await.unwrap().is_empty());
    assert_eq!(f.outstanding().await, 0);
    let stats = f.stats().await;
    assert_eq!((stats.counters.dead, stats.counters.replayed), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_purge_by_id_kind_and_all() {
    let f = Fixture::shared(Queue::new("purge").unwrap()).await;
    let router = Router::new()
        .route("a", |_ctx: TaskContext, _: ()| async { Err(HandlerError::fatal("no")) })
        .route("b", |_ctx: TaskContext, _: ()| async { Err(HandlerError::fatal("no")) });
    let w = f.start_worker(router, fast_config());
    for kind in ["a", "a", "a", "b", "b"] {
        f.client
            .enqueue(&f.queue, Task::json(kind, &()).unwrap())
            .await
            .unwrap();
    }
    f.wait_dead_letters(5, Duration::from_secs(10)).await;
    w.stop().await;
    let (inspector, queue) = (&f.inspector, &f.queue);
    let dead = inspector.dlq_list(queue, None, 10).await.unwrap();
    assert_eq!(dead.len(), 5, "{dead:#?}");
    // Paging: two at a time, in order, no overlap.
    let page1 = inspector.dlq_list(queue, None, 2).await.unwrap();
    let page2 = inspector.dlq_list(queue, Some(&page1[1].id.entry), 2).await.unwrap();
    assert_eq!(
        page1.iter().chain(&page2).map(|d| d.id.clone()).collect::<Vec<_>>(),
        dead[..4].iter().map(|d| d.id.clone()).collect::<Vec<_>>()
    );
    let one = dead.iter().find(|d| d.kind == "b").unwrap().id.clone();
    assert_eq!(
        inspector.dlq_purge(queue, &DlqSelect::Id(one.clone())).await.unwrap(),
        1
    );
    assert!(matches!(
        inspector.dlq_get(queue, &one).await,
        Err(rivulet::Error::NotFound(_))
    ));
    assert!(matches!(
        inspector.dlq_purge(queue, &DlqSelect::Id(one)).await,
        Err(rivulet::Error::NotFound(_))
    ));
    assert_eq!(
        inspector.dlq_purge(queue, &DlqSelect::Kind("a".into())).await.unwrap(),
        3
    );
    assert_eq!(inspector.dlq_purge(queue, &DlqSelect::All).await.unwrap(), 1);
    assert!(inspector.dlq_list(queue, None, 10).await.unwrap().is_empty());
}

/// Appends 1,000 entries no worker can run (a fifth each: no kind, an unknown codec, a payload
/// that does not decode, a kind nobody serves, an attempt that is not a number) and then one
/// good task to `stream`; returns how many dead letters of each reason to expect.
async fn add_malformed_entries(f: &Fixture, stream: &str) -> HashMap<String, u64> {
    let mut conn = f.redis().await;
    let mut pipe = redis::pipe();
    let mut expected: HashMap<&str, u64> = HashMap::new();
    for i in 0..1000u32 {
        let id = format!("bad-{i}");
        let cmd = pipe.cmd("XADD").arg(stream).arg("*");
        let reason = match i % 5 {
            0 => {
                cmd.arg("id").arg(&id).arg("payload").arg("1");
                "malformed" // missing kind
            }
            1 => {
                cmd.arg("id")
                    .arg(&id)
                    .arg("kind")
                    .arg("typed")
                    .arg("payload")
                    .arg("1")
                    .arg("codec")
                    .arg("xml");
                "malformed" // unknown codec
            }
            2 => {
                cmd.arg("id")
                    .arg(&id)
                    .arg("kind")
                    .arg("typed")
                    .arg("payload")
                    .arg(b"\xff\x00garbage".as_slice());
                "malformed" // payload does not decode
            }
            3 => {
                cmd.arg("id")
                    .arg(&id)
                    .arg("kind")
                    .arg("nobody-serves-this")
                    .arg("payload")
                    .arg("1");
                "unknown_kind"
            }
            _ => {
                cmd.arg("id")
                    .arg(&id)
                    .arg("kind")
                    .arg("typed")
                    .arg("payload")
                    .arg("1")
                    .arg("attempt")
                    .arg("many");
                "malformed" // attempt is not a number
            }
        };
        cmd.ignore();
        *expected.entry(reason).or_default() += 1;
    }
    // And one good task at the end: the worker is still serving.
    pipe.cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("id")
        .arg("good")
        .arg("kind")
        .arg("typed")
        .arg("payload")
        .arg("7")
        .ignore();
    pipe.query_async::<()>(&mut conn).await.unwrap();
    expected.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_malformed_entries_reach_the_dlq_with_their_reason() {
    let f = Fixture::shared(Queue::new("garbage").unwrap()).await;
    let ok = Recorder::new();
    let router = ok.route(Router::new(), "typed", |_ctx, _n: u64| async { Ok(()) });
    // The worker creates the group; then raw XADDs arrive as other languages might send them.
    let w = f.start_worker(router, fast_config());
    f.wait_worker_registered(Duration::from_secs(10)).await;
    let stream = f.queue.shard("normal", 0).stream;
    let expected = add_malformed_entries(&f, &stream).await;
    let settled = wait_until(Duration::from_secs(30), async || {
        f.stats().await.priorities[1].dead_letters == 1000 && ok.len() == 1
    })
    .await;
    assert!(
        settled,
        "not 1000 dead letters and the good task: {:#?}\n{}",
        f.stats().await,
        ok.summary(5)
    );
    w.stop().await;
    let mut reasons: HashMap<String, u64> = HashMap::new();
    let mut after = None;
    loop {
        let page = f.inspector.dlq_list(&f.queue, after.as_deref(), 300).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.entry.clone());
        for d in &page {
            *reasons.entry(d.reason.to_string()).or_default() += 1;
            assert!(!d.error.is_empty(), "dead letter without an error: {d:?}");
        }
    }
    assert_eq!(reasons, expected);
    assert_eq!(f.outstanding().await, 0, "something stayed pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_count_what_could_not_run_under_bounded_kinds() {
    let f = Fixture::shared(Queue::new("counted").unwrap()).await;
    let ok = Recorder::new();
    let router = ok.route(Router::new(), "typed", |_ctx, _n: u64| async { Ok(()) });
    let metrics = Arc::new(WorkerMetrics::new());
    let config = fast_config();
    let slots = config.concurrency as u64;
    let worker = Worker::new(f.redis_client(), router, config)
        .queue(f.queue.clone())
        .with_metrics(metrics.clone());
    let handle = worker.shutdown_handle();
    let running = tokio::spawn(worker.run(std::future::pending()));
    f.wait_worker_registered(Duration::from_secs(10)).await;
    let stream = f.queue.shard("normal", 0).stream;
    add_malformed_entries(&f, &stream).await;
    let counted = wait_until(Duration::from_secs(30), async || {
        let s = metrics.snapshot();
        s.tasks.iter().map(|t| t.dead.iter().sum::<u64>()).sum::<u64>() == 1000
            && s.tasks.iter().map(|t| t.succeeded).sum::<u64>() == 1
    })
    .await;
    let s = metrics.snapshot();
    assert!(counted, "{s:#?}");
    let row = |kind: &str| {
        s.tasks
            .iter()
            .find(|t| t.priority == "normal" && t.kind == kind)
            .unwrap()
    };
    let dead = |kind: &str, reason: &str| row(kind).dead[DEAD_REASONS.iter().position(|r| *r == reason).unwrap()];
    // Entries without a usable envelope, or of a kind nobody serves, count under `_other`;
    // a served kind whose payload does not decode counts under its kind.
    assert_eq!(dead(OTHER_KIND, "malformed"), 600, "{s:#?}");
    assert_eq!(dead(OTHER_KIND, "unknown_kind"), 200, "{s:#?}");
    assert_eq!(dead("typed", "malformed"), 200, "{s:#?}");
    assert_eq!((row("typed").started, row("typed").succeeded), (1, 1), "{s:#?}");
    assert!(
        s.tasks.iter().all(|t| t.kind == "typed" || t.kind == OTHER_KIND),
        "{s:#?}"
    );
    let wait: u64 = s.wait.iter().map(|w| w.histogram.count()).sum();
    assert_eq!(wait, s.started(), "one wait per start: {s:#?}");
    assert_eq!((s.slots, s.in_flight, s.workers_running), (slots, 0, 1));
    handle.quiet();
    running.await.unwrap().unwrap();
    assert_eq!(metrics.snapshot().workers_running, 0, "a stopped worker is not running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_timeouts_are_retried_and_the_worker_survives() {
    let f = Fixture::shared(Queue::new("unruly").unwrap()).await;
    let recorder = Recorder::new();
    let router = recorder.route(Router::new(), "unruly", |ctx, mode: String| async move {
        if ctx.attempt == 0 {
            if mode == "panic" {
                panic!("handler blew up");
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(())
    });
    let policy = RetryPolicy {
        base: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    let config = WorkerConfig {
        retry: policy,
        timeout: Some(Duration::from_millis(200)),
        ..fast_config()
    };
    let w = f.start_worker(router, config);
    f.client
        .enqueue(&f.queue, Task::json("unruly", &"panic").unwrap())
        .await
        .unwrap();
    f.client
        .enqueue(&f.queue, Task::json("unruly", &"hang").unwrap())
        .await
        .unwrap();
    // Both done on their second attempt.
    f.wait_done(2, Duration::from_secs(10)).await;
    w.stop().await;
    let runs = recorder.runs();
    let second = |mode: &str| {
        runs.iter()
            .find(|r| r.payload::<String>() == mode && r.attempt == 1)
            .and_then(|r| r.last_error.clone())
            .unwrap()
    };
    assert!(second("panic").contains("handler panicked: handler blew up"));
    assert!(second("hang").contains("timed out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_requeues_a_running_task_to_run_again_at_once() {
    let f = Fixture::shared(Queue::new("requeue").unwrap()).await;
    // `started` notes every start; `finished` only runs that got to the end.
    let (started, finished) = (Recorder::new(), Recorder::new());
    let make_router = |hang: bool| {
        let finished = finished.clone();
        started.route(Router::new(), "job", move |ctx, _: ()| {
            let finished = finished.clone();
            async move {
                if hang {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                finished.record(&ctx, serde_json::Value::Null);
                Ok(())
            }
        })
    };
    // A lease far longer than the test: only an immediate requeue lets the task run again.
    let config = WorkerConfig {
        lease: Duration::from_secs(600),
        drain_timeout: Duration::from_millis(200),
        ..fast_config()
    };
    let a = f.start_worker(make_router(true), config.clone());
    let id = f
        .client
        .enqueue(&f.queue, Task::json("job", &()).unwrap())
        .await
        .unwrap();
    started.wait_for_runs(1, Duration::from_secs(10)).await;
    let report = a.stop().await;
    assert_eq!(
        (report.started, report.succeeded, report.requeued),
        (1, 0, 1),
        "{report:?}"
    );
    let b = f.start_worker(make_router(false), config);
    // The requeued task runs on the next worker.
    finished.wait_for_runs(1, Duration::from_secs(10)).await;
    b.stop().await;
    // Requeued, not failed: same id, attempt unchanged.
    let runs = finished.runs();
    assert_eq!((runs[0].id.as_str(), runs[0].attempt), (id.as_str(), 0));
    assert_eq!(f.outstanding().await, 0);
    assert_eq!(f.stats().await.counters.requeued, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_redis_being_killed_and_restarted_twice_with_aof() {
    // A server of its own, killed and restarted.
    let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut f = Fixture::on_server(server, Queue::new("outage").unwrap()).await;
    const N: u64 = 20_000;
    let seen: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let seen2 = seen.clone();
    let router = Router::new().route("n", move |_ctx: TaskContext, n: u64| {
        let seen = seen2.clone();
        async move {
            seen.lock().unwrap().insert(n);
            Ok(())
        }
    });
    let w = f.start_worker(
        router,
        WorkerConfig {
            concurrency: 128,
            // Reads whose reply died with Redis stay pending for a lease, then are reclaimed.
            lease: Duration::from_secs(3),
            ..fast_config()
        },
    );
    // The producer retries a batch until Redis accepts it (at-least-once enqueue).
    let client = f.client.clone();
    let producer_queue = f.queue.clone();
    let producer = tokio::spawn(async move {
        let mut retries = 0u32;
        for start in (0..N).step_by(500) {
            loop {
                let batch = (start..(start + 500).min(N)).map(|n| Task::json("n", &n).unwrap());
                match client.enqueue_many(&producer_queue, batch).await {
                    Ok(_) => break,
                    Err(_) => {
                        retries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        retries
    });
    for round in 1..=2u64 {
        let target = (N * round / 3) as usize;
        let progressed = wait_until(Duration::from_secs(60), async || seen.lock().unwrap().len() >= target).await;
        assert!(progressed, "no progress to {target} tasks before outage {round}");
        let server = f.server.owned_mut();
        server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.restart();
    }
    let all = wait_until(Duration::from_secs(120), async || {
        seen.lock().unwrap().len() as u64 == N
    })
    .await;
    assert!(
        all,
        "not every task was processed: {} of {N}",
        seen.lock().unwrap().len()
    );
    let retries = producer.await.unwrap();
    w.stop().await;
    let missing: Vec<u64> = {
        let seen = seen.lock().unwrap();
        (0..N).filter(|n| !seen.contains(n)).take(10).collect()
    };
    assert!(missing.is_empty(), "lost tasks, e.g. {missing:?}");
    eprintln!("producer retried {retries} batches across two Redis restarts");
    let inspector = rivulet::Inspector::new(&f.redis_client()).await.unwrap();
    let settled = wait_until(Duration::from_secs(30), async || {
        rivulet::testing::outstanding(&inspector, &f.queue).await == 0
    })
    .await;
    assert!(
        settled,
        "tasks still outstanding: {:#?}",
        inspector.stats(&f.queue).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_read_but_never_received_are_reclaimed_not_renewed_forever() {
    // Redis can die after a read is applied (and persisted) but before its reply reaches the
    // worker: the entries are pending under the worker's consumer name, yet it never had them.
    // Here a raw XREADGROUP under the worker's name plays that lost read.
    let f = Fixture::shared(Queue::new("orphans").unwrap()).await;
    let tasks: Vec<Task> = (0..5u32).map(|i| Task::json("orphan", &i).unwrap()).collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    f.abandon_entries(&f.queue.shard("normal", 0).stream, "w-orphans", 10)
        .await;

    let recorder = Recorder::new();
    let config = WorkerConfig {
        worker_id: Some("w-orphans".into()),
        lease: Duration::from_millis(600),
        ..fast_config()
    };
    // The worker's heartbeat renews only what it holds in process, so the orphans age past
    // the lease and its own reclaimer runs them.
    let w = f.start_worker(recorder.router(&["orphan"]), config);
    recorder.wait_for_runs(5, Duration::from_secs(20)).await;
    w.stop().await;
    assert_eq!(recorder.len(), 5, "{}", recorder.summary(10));
    assert_eq!(f.outstanding().await, 0);
    assert_eq!(f.stats().await.counters.done, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_brings_its_own_attempts_and_backoff() {
    // A server of its own: the backoff gaps are timing claims.
    let f = Fixture::with_queue(Queue::new("own-retry").unwrap()).await;
    let recorder = Recorder::new();
    let router = recorder.route(Router::new(), "always-fails", |_ctx, _: ()| async {
        Err(HandlerError::retry("no"))
    });
    // The worker's own policy would wait a minute between attempts and allow ten.
    let config = WorkerConfig {
        retry: RetryPolicy {
            max_attempts: 10,
            base: Duration::from_secs(60),
            cap: Duration::from_secs(600),
            jitter: false,
            ..RetryPolicy::default()
        },
        ..fast_config()
    };
    let w = f.start_worker(router, config);
    let own = Task::json("always-fails", &())
        .unwrap()
        .max_attempts(3)
        .backoff(Duration::from_millis(200), 3.0, Duration::from_millis(500))
        .unwrap();
    let own_id = own.task_id().to_string();
    f.client.enqueue(&f.queue, own).await.unwrap();
    // Settings that make no sense are refused at enqueue, and buried if written raw.
    assert!(
        Task::json("k", &())
            .unwrap()
            .backoff(Duration::from_secs(2), 2.0, Duration::from_secs(1))
            .is_err()
    );
    assert!(
        f.client
            .enqueue(&f.queue, Task::json("k", &()).unwrap().max_attempts(0))
            .await
            .is_err()
    );
    // A zero timeout would time every attempt out before the handler ran.
    let zero = f
        .client
        .enqueue(&f.queue, Task::json("k", &()).unwrap().timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(zero.to_string().contains("timeout_ms"), "{zero}");
    let mut conn = f.redis().await;
    let _: String = redis::cmd("XADD")
        .arg(f.queue.shard("normal", 0).stream)
        .arg("*")
        .arg(&[
            "id",
            "raw-1",
            "kind",
            "always-fails",
            "payload",
            "null",
            "backoff_factor",
            "0.5",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();

    // Both tasks reach the dead-letter stream.
    f.wait_dead_letters(2, Duration::from_secs(10)).await;
    w.stop().await;
    let dead = f.inspector.dlq_list(&f.queue, None, 10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:#?}");
    let reason_of = |id: &str| dead.iter().find(|d| d.task_id == id).map(|d| d.reason.to_string());
    assert_eq!(reason_of(&own_id).as_deref(), Some("exhausted"));
    assert_eq!(reason_of("raw-1").as_deref(), Some("malformed"));
    // Three runs (the task's limit), 200 ms then 500 ms (3 x 200 capped) apart (the task's
    // backoff, no jitter by the worker's choice), not a minute.
    let runs: Vec<Instant> = recorder.runs_of(own_id.as_str()).iter().map(|r| r.at).collect();
    assert_eq!(runs.len(), 3);
    let slack = Duration::from_millis(400);
    for (gap, ceiling) in runs
        .windows(2)
        .map(|p| p[1] - p[0])
        .zip([200, 500].map(Duration::from_millis))
    {
        assert!(
            gap + Duration::from_millis(5) >= ceiling && gap <= ceiling + slack,
            "{gap:?} vs {ceiling:?}"
        );
    }
}

/// How many `start` lines process `pid` wrote to the probe log `key`.
async fn probe_starts(f: &Fixture, key: &str, pid: u32) -> usize {
    crate::limits::probe_log(f, key)
        .await
        .iter()
        .filter(|l| matches!(l, crate::limits::Line::Start { pid: p, .. } if *p == pid))
        .count()
}

fn signal(child: &mut ChildGuard, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.child().id() as i32);
    nix::sys::signal::kill(pid, sig).expect("the test worker is running");
}

/// A plain success settled within `fast_ack_window` of its read skips the fence (acker.rs):
/// one settled after its worker was frozen past the lease must not. Worker A is frozen
/// (SIGSTOP) while it runs a task; B reclaims it once the lease is over and is frozen in turn
/// while it runs it; A thaws and settles its success: fenced off, and the entry stays B's, not
/// counted done. B thaws: its outcome is the one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_settled_after_a_freeze_past_the_lease_is_fenced_and_the_new_owner_keeps_the_task() {
    let f = Fixture::with_queue(Queue::new("frozen").unwrap()).await;
    // Lease 6 s: the fast window is 1 s, longer than the 600 ms the probe runs, so without
    // the freeze A's success would skip the fence.
    let lease_ms = 6000;
    let key = "frozen";
    let (mut a, _a_id) = spawn_test_worker(&f.server, "frozen", 4, lease_ms, &[]);
    let pid_a = a.child().id();
    f.client
        .enqueue(
            &f.queue,
            // No task record: a tracked success always takes the fenced script.
            Task::json("probe", &serde_json::json!({"key": key, "ms": 600}))
                .unwrap()
                .retention(Duration::ZERO),
        )
        .await
        .unwrap();
    let started = wait_until(Duration::from_secs(20), async || {
        probe_starts(&f, key, pid_a).await == 1
    })
    .await;
    assert!(started, "A never started the task:\n{}", a.log());
    signal(&mut a, nix::sys::signal::Signal::SIGSTOP);

    let (mut b, b_id) = spawn_test_worker(&f.server, "frozen", 4, lease_ms, &[]);
    let pid_b = b.child().id();
    let started = wait_until(Duration::from_secs(30), async || {
        probe_starts(&f, key, pid_b).await == 1
    })
    .await;
    assert!(started, "B never reclaimed and started the task:\n{}", b.log());
    signal(&mut b, nix::sys::signal::Signal::SIGSTOP);
    signal(&mut a, nix::sys::signal::Signal::SIGCONT);

    // A's handler ends (its sleep is long over) and A settles: fenced off.
    let fenced = wait_until(Duration::from_secs(20), async || f.stats().await.counters.fenced == 1).await;
    assert!(
        fenced,
        "A's late success was not fenced: {:#?}\n{}",
        f.stats().await,
        a.log()
    );
    assert_eq!(f.stats().await.counters.done, 0, "A's late success was counted");
    let pending = f.inspector.pending(&f.queue, 10).await.unwrap();
    assert_eq!(pending.len(), 1, "the entry is still pending: {pending:?}");
    assert_eq!(pending[0].consumer, b_id, "and still B's");

    signal(&mut b, nix::sys::signal::Signal::SIGCONT);
    f.wait_done(1, Duration::from_secs(20)).await;
    let stats = f.stats().await;
    assert_eq!(
        (stats.counters.done, stats.counters.fenced, stats.counters.reclaimed),
        (1, 1, 1)
    );
    assert_eq!(f.outstanding().await, 0);
}
