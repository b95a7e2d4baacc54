//! Failure path: dead workers, long tasks, retries, the DLQ, bad input, fencing, outages,
//! graceful drain.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rivulet::testing::RedisServer;
use rivulet::{
    Client, DlqSelect, HandlerError, Inspector, Queue, RetryPolicy, Router, Task, TaskContext, WorkerConfig,
};

use crate::support::{RunningWorker, abandon_entries, fast_config, outstanding, raw, wait_for};

/// A child process killed on drop, so a failing test leaves nothing running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_test_worker(server: &RedisServer, queue: &str, concurrency: usize, lease_ms: u64) -> (ChildGuard, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rivulet-test-worker"))
        .args([
            server.url(),
            queue.to_owned(),
            concurrency.to_string(),
            lease_ms.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the test worker");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let id = line
        .trim()
        .strip_prefix("ready ")
        .expect("the worker announces itself")
        .to_owned();
    (ChildGuard(child), id)
}

fn record_router(seen: Arc<Mutex<HashMap<u64, u32>>>) -> Router {
    Router::new().route("hold", move |_ctx: TaskContext, h: serde_json::Value| {
        let seen = seen.clone();
        async move {
            *seen.lock().unwrap().entry(h["n"].as_u64().unwrap()).or_default() += 1;
            Ok(())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_process_tasks_complete_elsewhere_after_the_lease() {
    let server = RedisServer::start();
    let queue = Queue::new("crash").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let (mut child, child_id) = spawn_test_worker(&server, "crash", 50, 1000);
    // Tasks that would run for a minute: the process will die holding them.
    let tasks = (0..50u64).map(|n| Task::json("hold", &serde_json::json!({"n": n, "ms": 60_000})).unwrap());
    client.enqueue_many(&queue, tasks).await.unwrap();
    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_for("the child to hold 50 tasks", Duration::from_secs(20), || {
        let inspector = inspector.clone();
        let queue = queue.clone();
        let child_id = child_id.clone();
        async move {
            let p = inspector.pending(&queue, 100).await.unwrap();
            p.len() == 50 && p.iter().all(|e| e.consumer == child_id)
        }
    })
    .await;
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    let seen: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let config = WorkerConfig {
        lease: Duration::from_millis(1000),
        ..fast_config()
    };
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        record_router(seen.clone()),
        config,
    );
    wait_for(
        "all 50 tasks to complete on the survivor",
        Duration::from_secs(30),
        || {
            let n = seen.lock().unwrap().len();
            async move { n == 50 }
        },
    )
    .await;
    w.stop().await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.values().all(|&n| n == 1),
        "a task ran twice on the survivor: {seen:?}"
    );
    assert_eq!(outstanding(&inspector, &queue).await, 0);
    let stats = inspector.stats(&queue).await.unwrap();
    assert_eq!(
        (stats.counters.reclaimed, stats.counters.done, stats.counters.lost),
        (50, 50, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_running_for_three_leases_is_never_reclaimed_or_run_twice() {
    let server = RedisServer::start();
    let queue = Queue::new("long").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let runs2 = runs.clone();
    let lease = Duration::from_millis(300);
    let router = Router::new().route("long", move |_ctx: TaskContext, _: ()| {
        let runs = runs2.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1200)).await;
            Ok(())
        }
    });
    let config = WorkerConfig { lease, ..fast_config() };
    // Two workers: the idle one keeps trying to reclaim.
    let a = RunningWorker::start(&server, std::slice::from_ref(&queue), router.clone(), config.clone());
    let b = RunningWorker::start(&server, std::slice::from_ref(&queue), router, config);
    client.enqueue(&queue, Task::json("long", &()).unwrap()).await.unwrap();
    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_for("the long task to finish", Duration::from_secs(20), || {
        let inspector = inspector.clone();
        let queue = queue.clone();
        async move { inspector.stats(&queue).await.unwrap().counters.done == 1 }
    })
    .await;
    let (ra, rb) = (a.stop().await, b.stop().await);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the long task ran more than once");
    assert_eq!(ra.started + rb.started, 1);
    assert_eq!(inspector.stats(&queue).await.unwrap().counters.reclaimed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_twice_then_succeeding_completes_on_attempt_two_on_schedule() {
    let server = RedisServer::start();
    let client = Client::new(&server.client()).await.unwrap();
    for jitter in [false, true] {
        let queue = Queue::new(if jitter { "retry-jitter" } else { "retry-exact" }).unwrap();
        let attempts: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
        let attempts2 = attempts.clone();
        let router = Router::new().route("flaky", move |ctx: TaskContext, _: ()| {
            let attempts = attempts2.clone();
            async move {
                attempts.lock().unwrap().push((ctx.attempt, Instant::now()));
                if ctx.attempt < 2 {
                    Err(HandlerError::retry(format!("try {}", ctx.attempt)))
                } else {
                    Ok(())
                }
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
        let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, config);
        client.enqueue(&queue, Task::json("flaky", &()).unwrap()).await.unwrap();
        wait_for("three attempts", Duration::from_secs(10), || {
            let n = attempts.lock().unwrap().len();
            async move { n == 3 }
        })
        .await;
        let inspector = Inspector::new(&server.client()).await.unwrap();
        wait_for("done", Duration::from_secs(10), || {
            let inspector = inspector.clone();
            let queue = queue.clone();
            async move { inspector.stats(&queue).await.unwrap().counters.done == 1 }
        })
        .await;
        w.stop().await;
        let attempts = attempts.lock().unwrap().clone();
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
        let stats = inspector.stats(&queue).await.unwrap();
        assert_eq!(
            (stats.counters.failed, stats.counters.retried, stats.counters.dead),
            (2, 2, 0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_and_fatal_tasks_land_in_the_dlq_and_replay_runs_them() {
    let server = RedisServer::start();
    let queue = Queue::new("dead").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let healed = Arc::new(AtomicU32::new(0));
    let runs: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let (healed2, runs2) = (healed.clone(), runs.clone());
    let router = Router::new().route("job", move |ctx: TaskContext, fatal: bool| {
        let (healed, runs) = (healed2.clone(), runs2.clone());
        async move {
            runs.lock().unwrap().push((ctx.id.to_string(), ctx.attempt));
            if healed.load(Ordering::SeqCst) == 1 {
                return Ok(());
            }
            if fatal {
                Err(HandlerError::fatal("cannot ever work"))
            } else {
                Err(HandlerError::retry("still broken"))
            }
        }
    });
    let policy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router,
        WorkerConfig {
            retry: policy,
            ..fast_config()
        },
    );
    let exhausted = client
        .enqueue(&queue, Task::json("job", &false).unwrap())
        .await
        .unwrap();
    let fatal = client.enqueue(&queue, Task::json("job", &true).unwrap()).await.unwrap();
    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_for("two dead letters", Duration::from_secs(10), || {
        let inspector = inspector.clone();
        let queue = queue.clone();
        async move { inspector.dlq_list(&queue, None, 10).await.unwrap().len() == 2 }
    })
    .await;
    let dead = inspector.dlq_list(&queue, None, 10).await.unwrap();
    let by_task: HashMap<String, &rivulet::DeadLetter> = dead.iter().map(|d| (d.task_id.clone(), d)).collect();
    let e = by_task[exhausted.as_str()];
    assert_eq!(
        (e.reason.as_str(), e.error.as_str(), e.attempt, e.kind.as_str()),
        ("exhausted", "still broken", 3, "job"),
        "a dead letter counts every failed attempt, the last included"
    );
    assert!(e.origin.starts_with("rivulet:{dead:normal:0}:stream/"), "{}", e.origin);
    assert!(e.dead_at > 0 && e.deliveries == 1);
    let f = by_task[fatal.as_str()];
    assert_eq!((f.reason.as_str(), f.attempt), ("fatal", 1));
    {
        let runs = runs.lock().unwrap();
        assert_eq!(
            runs.iter().filter(|r| r.0 == exhausted.as_str()).count(),
            3,
            "max_attempts = 3 runs"
        );
        assert_eq!(
            runs.iter().filter(|r| r.0 == fatal.as_str()).count(),
            1,
            "fatal runs once"
        );
    }
    // Show one, then replay them all: with the cause fixed they complete, attempts reset.
    let shown = inspector.dlq_get(&queue, &f.id).await.unwrap();
    assert_eq!(shown.task_id, fatal.as_str());
    healed.store(1, Ordering::SeqCst);
    assert_eq!(inspector.dlq_replay(&queue, &DlqSelect::All).await.unwrap(), 2);
    wait_for("replayed tasks done", Duration::from_secs(10), || {
        let inspector = inspector.clone();
        let queue = queue.clone();
        async move { inspector.stats(&queue).await.unwrap().counters.done == 2 }
    })
    .await;
    w.stop().await;
    let runs = runs.lock().unwrap().clone();
    let last_attempt_of = |id: &str| runs.iter().rfind(|r| r.0 == id).unwrap().1;
    assert_eq!(
        (last_attempt_of(exhausted.as_str()), last_attempt_of(fatal.as_str())),
        (0, 0)
    );
    assert!(inspector.dlq_list(&queue, None, 10).await.unwrap().is_empty());
    assert_eq!(outstanding(&inspector, &queue).await, 0);
    let stats = inspector.stats(&queue).await.unwrap();
    assert_eq!((stats.counters.dead, stats.counters.replayed), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_purge_by_id_kind_and_all() {
    let server = RedisServer::start();
    let queue = Queue::new("purge").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let router = Router::new()
        .route("a", |_ctx: TaskContext, _: ()| async { Err(HandlerError::fatal("no")) })
        .route("b", |_ctx: TaskContext, _: ()| async { Err(HandlerError::fatal("no")) });
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, fast_config());
    for kind in ["a", "a", "a", "b", "b"] {
        client.enqueue(&queue, Task::json(kind, &()).unwrap()).await.unwrap();
    }
    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_for("five dead letters", Duration::from_secs(10), || {
        let inspector = inspector.clone();
        let queue = queue.clone();
        async move { inspector.dlq_list(&queue, None, 10).await.unwrap().len() == 5 }
    })
    .await;
    w.stop().await;
    let dead = inspector.dlq_list(&queue, None, 10).await.unwrap();
    // Paging: two at a time, in order, no overlap.
    let page1 = inspector.dlq_list(&queue, None, 2).await.unwrap();
    let page2 = inspector.dlq_list(&queue, Some(&page1[1].id.entry), 2).await.unwrap();
    assert_eq!(
        page1.iter().chain(&page2).map(|d| d.id.clone()).collect::<Vec<_>>(),
        dead[..4].iter().map(|d| d.id.clone()).collect::<Vec<_>>()
    );
    let one = dead.iter().find(|d| d.kind == "b").unwrap().id.clone();
    assert_eq!(
        inspector.dlq_purge(&queue, &DlqSelect::Id(one.clone())).await.unwrap(),
        1
    );
    assert!(matches!(
        inspector.dlq_get(&queue, &one).await,
        Err(rivulet::Error::NotFound(_))
    ));
    assert!(matches!(
        inspector.dlq_purge(&queue, &DlqSelect::Id(one)).await,
        Err(rivulet::Error::NotFound(_))
    ));
    assert_eq!(
        inspector.dlq_purge(&queue, &DlqSelect::Kind("a".into())).await.unwrap(),
        3
    );
    assert_eq!(inspector.dlq_purge(&queue, &DlqSelect::All).await.unwrap(), 1);
    assert!(inspector.dlq_list(&queue, None, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_malformed_entries_reach_the_dlq_with_their_reason() {
    let server = RedisServer::start();
    let queue = Queue::new("garbage").unwrap();
    let ok = Arc::new(AtomicU32::new(0));
    let ok2 = ok.clone();
    let router = Router::new().route("typed", move |_ctx: TaskContext, _n: u64| {
        let ok = ok2.clone();
        async move {
            ok.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    // The worker creates the group; then raw XADDs arrive as other languages might send them.
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, fast_config());
    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_for("the worker to register", Duration::from_secs(10), || {
        let inspector = inspector.clone();
        async move { inspector.workers().await.unwrap().len() == 1 }
    })
    .await;
    let stream = queue.shard("normal", 0).stream;
    let mut conn = raw(&server).await;
    let mut pipe = redis::pipe();
    let mut expected: HashMap<&str, u64> = HashMap::new();
    for i in 0..1000u32 {
        let id = format!("bad-{i}");
        let cmd = pipe.cmd("XADD").arg(&stream).arg("*");
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
        .arg(&stream)
        .arg("*")
        .arg("id")
        .arg("good")
        .arg("kind")
        .arg("typed")
        .arg("payload")
        .arg("7")
        .ignore();
    pipe.query_async::<()>(&mut conn).await.unwrap();
    wait_for("1000 dead letters and the good task", Duration::from_secs(30), || {
        let inspector = inspector.clone();
        let queue = queue.clone();
        let ok = ok.clone();
        async move {
            let s = inspector.stats(&queue).await.unwrap();
            s.priorities[1].dead_letters == 1000 && ok.load(Ordering::SeqCst) == 1
        }
    })
    .await;
    w.stop().await;
    let mut reasons: HashMap<String, u64> = HashMap::new();
    let mut after = None;
    loop {
        let page = inspector.dlq_list(&queue, after.as_deref(), 300).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.entry.clone());
        for d in &page {
            *reasons.entry(d.reason.to_string()).or_default() += 1;
            assert!(!d.error.is_empty(), "dead letter without an error: {d:?}");
        }
    }
    let expected: HashMap<String, u64> = expected.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    assert_eq!(reasons, expected);
    assert_eq!(outstanding(&inspector, &queue).await, 0, "something stayed pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_timeouts_are_retried_and_the_worker_survives() {
    let server = RedisServer::start();
    let queue = Queue::new("unruly").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    type Seen = Vec<(String, u32, Option<String>)>;
    let errors: Arc<Mutex<Seen>> = Arc::default();
    let errors2 = errors.clone();
    let router = Router::new().route("unruly", move |ctx: TaskContext, mode: String| {
        let errors = errors2.clone();
        async move {
            errors
                .lock()
                .unwrap()
                .push((mode.clone(), ctx.attempt, ctx.last_error.clone()));
            if ctx.attempt == 0 {
                if mode == "panic" {
                    panic!("handler blew up");
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Ok(())
        }
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
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, config);
    client
        .enqueue(&queue, Task::json("unruly", &"panic").unwrap())
        .await
        .unwrap();
    client
        .enqueue(&queue, Task::json("unruly", &"hang").unwrap())
        .await
        .unwrap();
    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_for("both done on their second attempt", Duration::from_secs(10), || {
        let inspector = inspector.clone();
        let queue = queue.clone();
        async move { inspector.stats(&queue).await.unwrap().counters.done == 2 }
    })
    .await;
    w.stop().await;
    let errors = errors.lock().unwrap();
    let second = |mode: &str| errors.iter().find(|e| e.0 == mode && e.1 == 1).cloned().unwrap();
    assert!(second("panic").2.unwrap().contains("handler panicked: handler blew up"));
    assert!(second("hang").2.unwrap().contains("timed out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_requeues_a_running_task_to_run_again_at_once() {
    let server = RedisServer::start();
    let queue = Queue::new("requeue").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let runs: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let started = Arc::new(AtomicU32::new(0));
    let make_router = |runs: Arc<Mutex<Vec<(String, u32)>>>, started: Arc<AtomicU32>, hang: bool| {
        Router::new().route("job", move |ctx: TaskContext, _: ()| {
            let (runs, started) = (runs.clone(), started.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                if hang {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                runs.lock().unwrap().push((ctx.id.to_string(), ctx.attempt));
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
    let a = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        make_router(runs.clone(), started.clone(), true),
        config.clone(),
    );
    let id = client.enqueue(&queue, Task::json("job", &()).unwrap()).await.unwrap();
    wait_for("the task to start", Duration::from_secs(10), || {
        let n = started.load(Ordering::SeqCst);
        async move { n == 1 }
    })
    .await;
    let report = a.stop().await;
    assert_eq!(
        (report.started, report.succeeded, report.requeued),
        (1, 0, 1),
        "{report:?}"
    );
    let b = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        make_router(runs.clone(), started.clone(), false),
        config,
    );
    wait_for(
        "the requeued task to run on the next worker",
        Duration::from_secs(10),
        || {
            let n = runs.lock().unwrap().len();
            async move { n == 1 }
        },
    )
    .await;
    b.stop().await;
    // Requeued, not failed: same id, attempt unchanged.
    assert_eq!(runs.lock().unwrap()[0], (id.to_string(), 0));
    let inspector = Inspector::new(&server.client()).await.unwrap();
    assert_eq!(outstanding(&inspector, &queue).await, 0);
    assert_eq!(inspector.stats(&queue).await.unwrap().counters.requeued, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_redis_being_killed_and_restarted_twice_with_aof() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let queue = Queue::new("outage").unwrap();
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
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router,
        WorkerConfig {
            concurrency: 128,
            // Reads whose reply died with Redis stay pending for a lease, then are reclaimed.
            lease: Duration::from_secs(3),
            ..fast_config()
        },
    );
    // The producer retries a batch until Redis accepts it (at-least-once enqueue).
    let client = Client::new(&server.client()).await.unwrap();
    let producer_queue = queue.clone();
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
        wait_for("progress before the outage", Duration::from_secs(60), || {
            let n = seen.lock().unwrap().len();
            async move { n >= target }
        })
        .await;
        server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.restart();
    }
    wait_for("every task processed", Duration::from_secs(120), || {
        let n = seen.lock().unwrap().len();
        async move { n as u64 == N }
    })
    .await;
    let retries = producer.await.unwrap();
    w.stop().await;
    let missing: Vec<u64> = {
        let seen = seen.lock().unwrap();
        (0..N).filter(|n| !seen.contains(n)).take(10).collect()
    };
    assert!(missing.is_empty(), "lost tasks, e.g. {missing:?}");
    eprintln!("producer retried {retries} batches across two Redis restarts");
    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_for("nothing outstanding", Duration::from_secs(30), || {
        let inspector = inspector.clone();
        let queue = queue.clone();
        async move { outstanding(&inspector, &queue).await == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_read_but_never_received_are_reclaimed_not_renewed_forever() {
    // Redis can die after a read is applied (and persisted) but before its reply reaches the
    // worker: the entries are pending under the worker's consumer name, yet it never had them.
    // Here a raw XREADGROUP under the worker's name plays that lost read.
    let server = RedisServer::start();
    let queue = Queue::new("orphans").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let tasks: Vec<Task> = (0..5u32).map(|i| Task::json("orphan", &i).unwrap()).collect();
    client.enqueue_many(&queue, tasks).await.unwrap();
    abandon_entries(&server, &queue.shard("normal", 0).stream, "w-orphans", 10).await;

    let runs = Arc::new(AtomicU32::new(0));
    let runs2 = runs.clone();
    let router = Router::new().route("orphan", move |_ctx: TaskContext, _i: u32| {
        let runs = runs2.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let config = WorkerConfig {
        worker_id: Some("w-orphans".into()),
        lease: Duration::from_millis(600),
        ..fast_config()
    };
    // The worker's heartbeat renews only what it holds in process, so the orphans age past
    // the lease and its own reclaimer runs them.
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, config);
    wait_for("the orphaned entries to run", Duration::from_secs(20), || {
        let runs = runs.clone();
        async move { runs.load(Ordering::SeqCst) == 5 }
    })
    .await;
    w.stop().await;
    let inspector = Inspector::new(&server.client()).await.unwrap();
    assert_eq!(outstanding(&inspector, &queue).await, 0);
    assert_eq!(inspector.stats(&queue).await.unwrap().counters.done, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_brings_its_own_attempts_and_backoff() {
    let server = RedisServer::start();
    let queue = Queue::new("own-retry").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let runs: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let runs2 = runs.clone();
    let router = Router::new().route("always-fails", move |ctx: TaskContext, _: ()| {
        let runs = runs2.clone();
        async move {
            runs.lock().unwrap().push((ctx.id.to_string(), Instant::now()));
            Err::<(), _>(HandlerError::retry("no"))
        }
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
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, config);
    let own = Task::json("always-fails", &())
        .unwrap()
        .max_attempts(3)
        .backoff(Duration::from_millis(200), 3.0, Duration::from_millis(500))
        .unwrap();
    let own_id = own.task_id().to_string();
    client.enqueue(&queue, own).await.unwrap();
    // Settings that make no sense are refused at enqueue, and buried if written raw.
    assert!(
        Task::json("k", &())
            .unwrap()
            .backoff(Duration::from_secs(2), 2.0, Duration::from_secs(1))
            .is_err()
    );
    assert!(
        client
            .enqueue(&queue, Task::json("k", &()).unwrap().max_attempts(0))
            .await
            .is_err()
    );
    let mut conn = raw(&server).await;
    let _: String = redis::cmd("XADD")
        .arg(queue.shard("normal", 0).stream)
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

    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_for("both tasks in the dead-letter stream", Duration::from_secs(10), || {
        let inspector = inspector.clone();
        let queue = queue.clone();
        async move { inspector.dlq_list(&queue, None, 10).await.unwrap().len() == 2 }
    })
    .await;
    w.stop().await;
    let dead = inspector.dlq_list(&queue, None, 10).await.unwrap();
    let reason_of = |id: &str| dead.iter().find(|d| d.task_id == id).map(|d| d.reason.to_string());
    assert_eq!(reason_of(&own_id).as_deref(), Some("exhausted"));
    assert_eq!(reason_of("raw-1").as_deref(), Some("malformed"));
    // Three runs (the task's limit), 200 ms then 500 ms (3 x 200 capped) apart (the task's
    // backoff, no jitter by the worker's choice), not a minute.
    let runs: Vec<Instant> = runs
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == own_id)
        .map(|r| r.1)
        .collect();
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
