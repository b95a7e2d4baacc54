//! Engine core: enqueue, priorities, shards, delays, shutdown, API errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rivulet::testing::RedisServer;
use rivulet::{Client, Error, Inspector, Queue, Router, Task, TaskContext, WorkerConfig};

use crate::support::{RunningWorker, abandon_entries, fast_config, outstanding, queue_names, raw, wait_for};

/// XPENDING's summary form: count, lowest id, highest id, per-consumer counts.
type PendingSummary = (u64, Option<String>, Option<String>, Option<Vec<(String, String)>>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_over_three_priorities_and_four_shards_run_exactly_once() {
    let server = RedisServer::start();
    let queue = Queue::new("bulk").unwrap().shards(4).unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let priorities = ["high", "normal", "low"];
    let mut tasks = Vec::new();
    for i in 0..10_000u32 {
        tasks.push(Task::json("count", &i).unwrap().priority(priorities[i as usize % 3]));
    }
    for chunk in tasks.chunks(1000) {
        client.enqueue_many(&queue, chunk.to_vec()).await.unwrap();
    }

    let seen: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let seen2 = seen.clone();
    let router = Router::new().route("count", move |_ctx: TaskContext, i: u32| {
        let seen = seen2.clone();
        async move {
            *seen.lock().unwrap().entry(i).or_default() += 1;
            Ok(())
        }
    });
    // Two workers compete for the same shards.
    let w1 = RunningWorker::start(&server, std::slice::from_ref(&queue), router.clone(), fast_config());
    let w2 = RunningWorker::start(&server, std::slice::from_ref(&queue), router, fast_config());
    wait_for("10,000 tasks to run", Duration::from_secs(120), || {
        let n = seen.lock().unwrap().len();
        async move { n == 10_000 }
    })
    .await;
    let r1 = w1.stop().await;
    let r2 = w2.stop().await;

    let dupes: Vec<(u32, u32)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n != 1)
        .map(|(k, v)| (*k, *v))
        .collect();
    assert!(dupes.is_empty(), "tasks run more than once: {dupes:?}");
    assert_eq!(r1.succeeded + r2.succeeded, 10_000, "{r1:?} {r2:?}");

    let mut conn = raw(&server).await;
    for shard in queue.all_shards() {
        let len: u64 = redis::cmd("XLEN")
            .arg(&shard.keys.stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        let pending: PendingSummary = redis::cmd("XPENDING")
            .arg(&shard.keys.stream)
            .arg("rivulet")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!((len, pending.0), (0, 0), "stream {} not empty", shard.keys.stream);
    }
    let stats = Inspector::new(&server.client())
        .await
        .unwrap()
        .stats(&queue)
        .await
        .unwrap();
    assert_eq!(stats.counters.enqueued, 10_000);
    assert_eq!(stats.counters.done, 10_000);
    // Every shard got some of the work.
    for p in &stats.priorities {
        for s in &p.shards {
            assert!(s.counters.enqueued > 0, "shard {}/{} got nothing", p.priority, s.shard);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_priority_runs_every_high_task_before_any_low() {
    let server = RedisServer::start();
    let queue = Queue::new("prio").unwrap().shards(2).unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    // Low first, so arrival order alone would favour low.
    for p in ["low", "normal", "high"] {
        let tasks: Vec<Task> = (0..100)
            .map(|i| Task::json("t", &(p, i)).unwrap().priority(p))
            .collect();
        client.enqueue_many(&queue, tasks).await.unwrap();
    }
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let order2 = order.clone();
    let router = Router::new().route("t", move |_ctx: TaskContext, (p, _i): (String, u32)| {
        let order = order2.clone();
        async move {
            order.lock().unwrap().push(p);
            Ok(())
        }
    });
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router,
        WorkerConfig {
            concurrency: 1,
            ..fast_config()
        },
    );
    wait_for("300 tasks", Duration::from_secs(60), || {
        let n = order.lock().unwrap().len();
        async move { n == 300 }
    })
    .await;
    w.stop().await;
    let order = order.lock().unwrap();
    let last_high = order.iter().rposition(|p| p == "high").unwrap();
    let first_low = order.iter().position(|p| p == "low").unwrap();
    let first_normal = order.iter().position(|p| p == "normal").unwrap();
    let last_normal = order.iter().rposition(|p| p == "normal").unwrap();
    assert!(
        last_high < first_normal && last_high < first_low,
        "a lower priority started before the last high: {order:?}"
    );
    assert!(last_normal < first_low, "low started before the last normal: {order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_priority_still_serves_low_while_high_has_a_backlog() {
    let server = RedisServer::start();
    let queue = Queue::new("weighted").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    for p in ["high", "low"] {
        let tasks: Vec<Task> = (0..200).map(|_| Task::json("t", &p).unwrap().priority(p)).collect();
        client.enqueue_many(&queue, tasks).await.unwrap();
    }
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let order2 = order.clone();
    let router = Router::new().route("t", move |_ctx: TaskContext, p: String| {
        let order = order2.clone();
        async move {
            order.lock().unwrap().push(p);
            Ok(())
        }
    });
    let config = WorkerConfig {
        concurrency: 1,
        priority: rivulet::PriorityMode::Weighted(vec![3, 1, 1]),
        ..fast_config()
    };
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, config);
    wait_for("400 tasks", Duration::from_secs(60), || {
        let n = order.lock().unwrap().len();
        async move { n == 400 }
    })
    .await;
    w.stop().await;
    let order = order.lock().unwrap();
    let first_half_low = order[..200].iter().filter(|p| *p == "low").count();
    assert!(
        first_half_low > 10,
        "low starved under weighted mode: {first_half_low} of the first 200"
    );
    assert!(
        first_half_low < 100,
        "high not favoured: {first_half_low} low of the first 200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_task_never_starts_early_and_starts_within_a_second() {
    let server = RedisServer::start();
    let queue = Queue::new("later").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let started: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let started2 = started.clone();
    let router = Router::new().route("at", move |_ctx: TaskContext, due: u64| {
        let started = started2.clone();
        async move {
            started.lock().unwrap().push((due, rivulet::envelope::now_ms()));
            Ok(())
        }
    });
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, WorkerConfig::default());
    for delay_ms in [300u64, 1200, 2000] {
        let due = rivulet::envelope::now_ms() + delay_ms;
        let t = Task::json("at", &due).unwrap();
        let t = t.run_at(std::time::UNIX_EPOCH + Duration::from_millis(due));
        client.enqueue(&queue, t).await.unwrap();
    }
    wait_for("3 delayed tasks", Duration::from_secs(10), || {
        let n = started.lock().unwrap().len();
        async move { n == 3 }
    })
    .await;
    w.stop().await;
    for (due, at) in started.lock().unwrap().iter() {
        assert!(at >= due, "started {} ms early", due - at);
        assert!(at - due <= 1000, "started {} ms late", at - due);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_and_acks_in_flight_tasks() {
    let server = RedisServer::start();
    let queue = Queue::new("drain").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let done: Arc<Mutex<Vec<u32>>> = Arc::default();
    let started = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (done2, started2) = (done.clone(), started.clone());
    let router = Router::new().route("slow", move |_ctx: TaskContext, i: u32| {
        let (done, started) = (done2.clone(), started2.clone());
        async move {
            started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(400)).await;
            done.lock().unwrap().push(i);
            Ok(())
        }
    });
    client
        .enqueue_many(&queue, (0..8).map(|i| Task::json("slow", &i).unwrap()))
        .await
        .unwrap();
    let w = RunningWorker::start(
        &server,
        std::slice::from_ref(&queue),
        router,
        WorkerConfig {
            concurrency: 8,
            ..fast_config()
        },
    );
    wait_for("8 tasks in flight", Duration::from_secs(10), || {
        let n = started.load(std::sync::atomic::Ordering::SeqCst);
        async move { n == 8 }
    })
    .await;
    let report = w.stop().await;
    assert_eq!(done.lock().unwrap().len(), 8, "in-flight tasks were not finished");
    assert_eq!((report.succeeded, report.requeued), (8, 0), "{report:?}");
    let inspector = Inspector::new(&server.client()).await.unwrap();
    assert_eq!(outstanding(&inspector, &queue).await, 0);
    let stats = inspector.stats(&queue).await.unwrap();
    assert_eq!(stats.counters.done, 8);
    assert!(
        inspector.workers().await.unwrap().is_empty(),
        "worker still registered after shutdown"
    );
}

#[tokio::test]
async fn bad_api_input_gets_typed_errors() {
    assert!(matches!(Queue::new(""), Err(Error::InvalidQueueName { .. })));
    assert!(matches!(Queue::new("a{b}"), Err(Error::InvalidQueueName { .. })));
    assert!(matches!(Queue::new("has space"), Err(Error::InvalidQueueName { .. })));
    let server = RedisServer::start();
    let client = Client::new(&server.client()).await.unwrap();
    let queue = Queue::new("typed").unwrap();
    let err = client
        .enqueue(&queue, Task::json("k", &1).unwrap().priority("urgent"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownPriority { priority, .. } if priority == "urgent"),
        "{err}"
    );
    // An empty kind could never be routed: refused here rather than dead-lettered later.
    let err = client.enqueue(&queue, Task::json("", &1).unwrap()).await.unwrap_err();
    assert!(matches!(&err, Error::InvalidConfig { .. }), "{err}");
    assert!(err.to_string().contains("kind"), "{err}");
    // Nothing was written for the rejected tasks.
    let inspector = Inspector::new(&server.client()).await.unwrap();
    assert!(inspector.queues().await.unwrap().is_empty());
    // A queue registered with one layout cannot be used with another.
    client.enqueue(&queue, Task::json("k", &1).unwrap()).await.unwrap();
    let other = Client::new(&server.client()).await.unwrap();
    let err = other
        .enqueue(&queue.clone().shards(2).unwrap(), Task::json("k", &1).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LayoutMismatch { .. }), "{err}");
    // Invalid worker configuration is reported, not repaired.
    let bad = WorkerConfig {
        concurrency: 0,
        ..WorkerConfig::default()
    };
    let err = rivulet::Worker::new(server.client(), Router::new(), bad)
        .queue(queue)
        .run(async {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "concurrency",
                ..
            }
        ),
        "{err}"
    );
    // More weights than the queue has priorities are a mistake, not something to ignore.
    let four = WorkerConfig {
        priority: rivulet::PriorityMode::Weighted(vec![6, 3, 1, 1]),
        ..WorkerConfig::default()
    };
    let err = rivulet::Worker::new(server.client(), Router::new(), four)
        .queue(Queue::new("typed").unwrap())
        .run(async {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { field: "priority", .. }), "{err}");
    assert!(matches!(inspector.queue("nope").await, Err(Error::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_reports_backlog_lag_and_age() {
    let server = RedisServer::start();
    let queue = Queue::new("seen").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    client
        .enqueue_many(&queue, (0..5).map(|i| Task::json("k", &i).unwrap().priority("high")))
        .await
        .unwrap();
    client
        .enqueue(&queue, Task::json("k", &0).unwrap().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    let inspector = Inspector::new(&server.client()).await.unwrap();
    let start = Instant::now();
    // Lag needs the group, which a worker creates; without one waiting is the estimate.
    let stats = inspector.stats(&queue).await.unwrap();
    let high = &stats.priorities[0];
    assert_eq!((high.priority.as_str(), high.waiting, high.pending), ("high", 5, 0));
    assert!(high.waiting_estimated);
    assert!(high.oldest_waiting_age.is_some());
    let normal = &stats.priorities[1];
    assert_eq!((normal.waiting, normal.scheduled), (0, 1));
    assert_eq!(stats.counters.enqueued, 6);
    assert!(start.elapsed() < Duration::from_secs(5));
    let names = queue_names(&inspector).await;
    assert_eq!(names, ["seen"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_and_raw_bytes_payloads_reach_their_handlers() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
    struct Job {
        n: u64,
        name: String,
    }
    let server = RedisServer::start();
    let queue = Queue::new("codecs").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let (g1, g2) = (got.clone(), got.clone());
    let router = Router::new()
        .route("typed", move |_ctx: TaskContext, job: Job| {
            let got = g1.clone();
            async move {
                got.lock().unwrap().push(format!("{}:{}", job.n, job.name));
                Ok(())
            }
        })
        .route_bytes("raw", move |_ctx, bytes| {
            let got = g2.clone();
            async move {
                got.lock().unwrap().push(format!("{:?}", bytes.as_ref()));
                Ok(())
            }
        });
    let job = Job { n: 7, name: "x".into() };
    client
        .enqueue(&queue, Task::msgpack("typed", &job).unwrap())
        .await
        .unwrap();
    client
        .enqueue(&queue, Task::json("typed", &job).unwrap())
        .await
        .unwrap();
    client
        .enqueue(&queue, Task::bytes("raw", vec![0u8, 255, 1]))
        .await
        .unwrap();
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, fast_config());
    wait_for("3 tasks", Duration::from_secs(10), || {
        let n = got.lock().unwrap().len();
        async move { n == 3 }
    })
    .await;
    w.stop().await;
    let mut got = got.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, ["7:x", "7:x", "[0, 255, 1]"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_fetchers_never_read_more_tasks_than_free_slots() {
    let server = RedisServer::start();
    let queue = Queue::new("slots").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let tasks: Vec<Task> = (0..300u32).map(|i| Task::json("gated", &i).unwrap()).collect();
    client.enqueue_many(&queue, tasks).await.unwrap();

    // Handlers wait at a gate the test opens, so nothing finishes and no slot frees up.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let gate2 = gate.clone();
    let router = Router::new().route("gated", move |_ctx: TaskContext, _i: u32| {
        let gate = gate2.clone();
        async move {
            gate.acquire().await.expect("the gate stays open").forget();
            Ok(())
        }
    });
    let config = WorkerConfig {
        concurrency: 6,
        fetchers: 3,
        ..fast_config()
    };
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, config);
    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_for("6 handlers to start", Duration::from_secs(10), || {
        let counters = w.counters.clone();
        async move { counters.started.load(std::sync::atomic::Ordering::Relaxed) == 6 }
    })
    .await;
    // Three fetchers share 6 slots; each reserves its slots before reading, so the worker
    // holds exactly 6 entries however their reads interleave (polled over many round trips).
    for _ in 0..200 {
        let held = inspector.pending(&queue, 1000).await.unwrap().len();
        assert_eq!(held, 6, "the worker holds {held} entries with 6 slots");
    }
    gate.add_permits(300);
    wait_for("300 tasks done", Duration::from_secs(30), || {
        let inspector = inspector.clone();
        let queue = queue.clone();
        async move { inspector.stats(&queue).await.unwrap().counters.done == 300 }
    })
    .await;
    let report = w.stop().await;
    assert_eq!(report.succeeded, 300, "{report:?}");
    assert_eq!(outstanding(&inspector, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_on_a_paused_queue_takes_nothing_until_resumed_not_even_orphans() {
    let server = RedisServer::start();
    let queue = Queue::new("paused").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let inspector = Inspector::new(&server.client()).await.unwrap();
    let tasks: Vec<Task> = (0..3u32).map(|i| Task::json("count", &i).unwrap()).collect();
    client.enqueue_many(&queue, tasks).await.unwrap();
    // One entry read by a consumer that then died: an orphan whose lease will run out.
    abandon_entries(&server, &queue.shard("normal", 0).stream, "ghost", 1).await;
    inspector.pause(&queue).await.unwrap();

    let runs = Arc::new(Mutex::new(0u32));
    let runs2 = runs.clone();
    let router = Router::new().route("count", move |_ctx: TaskContext, _i: u32| {
        let runs = runs2.clone();
        async move {
            *runs.lock().unwrap() += 1;
            Ok(())
        }
    });
    let config = WorkerConfig {
        lease: Duration::from_millis(400),
        ..fast_config()
    };
    let w = RunningWorker::start(&server, std::slice::from_ref(&queue), router, config);
    wait_for("the worker to register", Duration::from_secs(10), || {
        let inspector = inspector.clone();
        async move { !inspector.workers().await.unwrap().is_empty() }
    })
    .await;
    // Several block periods, promoter rounds, leases and reclaim rounds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(*runs.lock().unwrap(), 0, "a paused queue ran tasks");
    let normal = inspector.stats(&queue).await.unwrap();
    let normal = normal.priorities.iter().find(|p| p.priority == "normal").unwrap();
    assert_eq!((normal.waiting, normal.pending), (2, 1));

    inspector.resume(&queue).await.unwrap();
    wait_for(
        "every task, the orphan included, to run",
        Duration::from_secs(20),
        || {
            let runs = runs.clone();
            async move { *runs.lock().unwrap() == 3 }
        },
    )
    .await;
    w.stop().await;
    assert_eq!(outstanding(&inspector, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_registry_entry_does_not_hide_the_other_queues() {
    let server = RedisServer::start();
    let client = Client::new(&server.client()).await.unwrap();
    client.declare(&Queue::new("good").unwrap()).await.unwrap();
    let mut conn = raw(&server).await;
    // What a producer that skips name validation leaves behind.
    let _: () = redis::cmd("HSET")
        .arg("rivulet:queues")
        .arg("bad{q")
        .arg(r#"{"priorities":["normal"],"shards":1}"#)
        .arg("garbled")
        .arg("not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    let inspector = Inspector::new(&server.client()).await.unwrap();
    let names = queue_names(&inspector).await;
    assert_eq!(names, ["good"]);
    assert!(inspector.queue("good").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_is_refused_while_it_holds_work_and_removes_every_key_when_forced() {
    let server = RedisServer::start();
    let queue = Queue::new("doomed").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let inspector = Inspector::new(&server.client()).await.unwrap();
    client.enqueue(&queue, Task::json("k", &1).unwrap()).await.unwrap();
    client
        .enqueue(&queue, Task::json("k", &2).unwrap().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    inspector.pause(&queue).await.unwrap();
    let other = Queue::new("kept").unwrap();
    client.enqueue(&other, Task::json("k", &3).unwrap()).await.unwrap();

    let err = inspector.delete_queue(&queue, false).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::QueueInUse {
                workers: 0,
                tasks: 2,
                dead_letters: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        queue_names(&inspector).await,
        ["doomed", "kept"],
        "a refusal deletes nothing"
    );

    let gone = inspector.delete_queue(&queue, true).await.unwrap();
    assert_eq!((gone.workers, gone.tasks, gone.dead_letters), (0, 2, 0));
    assert_eq!(queue_names(&inspector).await, ["kept"]);
    let mut conn = raw(&server).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("rivulet:*doomed*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    let paused: Vec<String> = redis::cmd("SMEMBERS")
        .arg("rivulet:paused")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(paused.is_empty(), "{paused:?}");
    // The other queue is untouched; an empty queue with no workers goes without force.
    assert_eq!(outstanding(&inspector, &other).await, 1);
    let empty = Queue::new("empty").unwrap();
    client.declare(&empty).await.unwrap();
    inspector.delete_queue(&empty, false).await.unwrap();
    assert_eq!(queue_names(&inspector).await, ["kept"]);
    // A live worker serving an empty queue is reason enough to refuse.
    let served = Queue::new("served").unwrap();
    let w = RunningWorker::start(&server, std::slice::from_ref(&served), Router::new(), fast_config());
    wait_for("the worker to register", Duration::from_secs(10), || {
        let inspector = inspector.clone();
        async move { !inspector.workers().await.unwrap().is_empty() }
    })
    .await;
    let err = inspector.delete_queue(&served, false).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::QueueInUse {
                workers: 1,
                tasks: 0,
                ..
            }
        ),
        "{err}"
    );
    w.stop().await;
}
