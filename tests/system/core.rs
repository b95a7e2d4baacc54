//! Engine core: enqueue, priorities, shards, delays, shutdown, API errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rivulet::testing::{Fixture, Recorder, fast_config, wait_until};
use rivulet::{Client, Error, Queue, Router, Task, TaskContext, WorkerConfig};

/// XPENDING's summary form: count, lowest id, highest id, per-consumer counts.
type PendingSummary = (u64, Option<String>, Option<String>, Option<Vec<(String, String)>>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_over_three_priorities_and_four_shards_run_exactly_once() {
    // A server of its own: this load would slow the timing-sensitive tests sharing one.
    let f = Fixture::with_queue(Queue::new("bulk").unwrap().shards(4).unwrap()).await;
    let priorities = ["high", "normal", "low"];
    let tasks: Vec<Task> = (0..10_000u32)
        .map(|i| Task::json("count", &i).unwrap().priority(priorities[i as usize % 3]))
        .collect();
    for chunk in tasks.chunks(1000) {
        f.client.enqueue_many(&f.queue, chunk.to_vec()).await.unwrap();
    }

    let recorder = Recorder::new();
    let router = recorder.router(&["count"]);
    // Two workers compete for the same shards.
    let w1 = f.start_worker(router.clone(), fast_config());
    let w2 = f.start_worker(router, fast_config());
    recorder.wait_for_runs(10_000, Duration::from_secs(120)).await;
    let r1 = w1.stop().await;
    let r2 = w2.stop().await;

    let mut seen: HashMap<u32, u32> = HashMap::new();
    for i in recorder.payloads::<u32>() {
        *seen.entry(i).or_default() += 1;
    }
    let dupes: Vec<(u32, u32)> = seen.iter().filter(|(_, n)| **n != 1).map(|(k, v)| (*k, *v)).collect();
    assert!(dupes.is_empty(), "tasks run more than once: {dupes:?}");
    assert_eq!(seen.len(), 10_000);
    assert_eq!(r1.succeeded + r2.succeeded, 10_000, "{r1:?} {r2:?}");

    let mut conn = f.redis().await;
    for shard in f.queue.all_shards() {
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
    let stats = f.stats().await;
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
    let f = Fixture::shared(Queue::new("prio").unwrap().shards(2).unwrap()).await;
    // Low first, so arrival order alone would favour low.
    for p in ["low", "normal", "high"] {
        let tasks: Vec<Task> = (0..100)
            .map(|i| Task::json("t", &(p, i)).unwrap().priority(p))
            .collect();
        f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    }
    let recorder = Recorder::new();
    let config = WorkerConfig {
        concurrency: 1,
        ..fast_config()
    };
    let w = f.start_worker(recorder.router(&["t"]), config);
    recorder.wait_for_runs(300, Duration::from_secs(60)).await;
    w.stop().await;
    let order: Vec<String> = recorder
        .payloads::<(String, u32)>()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
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
    let f = Fixture::shared(Queue::new("weighted").unwrap()).await;
    for p in ["high", "low"] {
        let tasks: Vec<Task> = (0..200).map(|_| Task::json("t", &p).unwrap().priority(p)).collect();
        f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    }
    let recorder = Recorder::new();
    let config = WorkerConfig {
        concurrency: 1,
        priority: rivulet::PriorityMode::Weighted(vec![3, 1, 1]),
        ..fast_config()
    };
    let w = f.start_worker(recorder.router(&["t"]), config);
    recorder.wait_for_runs(400, Duration::from_secs(60)).await;
    w.stop().await;
    let order: Vec<String> = recorder.payloads();
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
    // A server of its own: the bound on lateness is a timing claim.
    let f = Fixture::with_queue(Queue::new("later").unwrap()).await;
    // Start times in wall-clock milliseconds, as the due times are.
    let started: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let router = Router::new().route("at", {
        let started = started.clone();
        move |_ctx: TaskContext, due: u64| {
            let started = started.clone();
            async move {
                started.lock().unwrap().push((due, rivulet::envelope::now_ms()));
                Ok(())
            }
        }
    });
    let w = f.start_worker(router, WorkerConfig::default());
    for delay_ms in [300u64, 1200, 2000] {
        let due = rivulet::envelope::now_ms() + delay_ms;
        let t = Task::json("at", &due).unwrap();
        let t = t.run_at(std::time::UNIX_EPOCH + Duration::from_millis(due));
        f.client.enqueue(&f.queue, t).await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), async || started.lock().unwrap().len() == 3).await,
        "3 delayed tasks did not all start: {:?}",
        started.lock().unwrap()
    );
    w.stop().await;
    for (due, at) in started.lock().unwrap().iter() {
        assert!(at >= due, "started {} ms early", due - at);
        assert!(at - due <= 1000, "started {} ms late", at - due);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_and_acks_in_flight_tasks() {
    // A server of its own: it checks that no worker at all stays registered.
    let f = Fixture::with_queue(Queue::new("drain").unwrap()).await;
    let done = Recorder::new();
    let started = Arc::new(AtomicU32::new(0));
    let router = Router::new().route("slow", {
        let (done, started) = (done.clone(), started.clone());
        move |ctx: TaskContext, i: u32| {
            let (done, started) = (done.clone(), started.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(400)).await;
                done.record(&ctx, i.into());
                Ok(())
            }
        }
    });
    f.client
        .enqueue_many(&f.queue, (0..8).map(|i| Task::json("slow", &i).unwrap()))
        .await
        .unwrap();
    let w = f.start_worker(
        router,
        WorkerConfig {
            concurrency: 8,
            ..fast_config()
        },
    );
    assert!(
        wait_until(Duration::from_secs(10), async || started.load(Ordering::SeqCst) == 8).await,
        "8 tasks never were in flight at once"
    );
    let report = w.stop().await;
    assert_eq!(done.len(), 8, "in-flight tasks were not finished");
    assert_eq!((report.succeeded, report.requeued), (8, 0), "{report:?}");
    assert_eq!(f.outstanding().await, 0);
    assert_eq!(f.stats().await.counters.done, 8);
    assert!(
        f.inspector.workers().await.unwrap().is_empty(),
        "worker still registered after shutdown"
    );
}

#[tokio::test]
async fn bad_api_input_gets_typed_errors() {
    assert!(matches!(Queue::new(""), Err(Error::InvalidQueueName { .. })));
    assert!(matches!(Queue::new("a{b}"), Err(Error::InvalidQueueName { .. })));
    assert!(matches!(Queue::new("has space"), Err(Error::InvalidQueueName { .. })));
    // A server of its own: it checks that nothing at all was registered.
    let f = Fixture::with_queue(Queue::new("typed").unwrap()).await;
    let err = f
        .client
        .enqueue(&f.queue, Task::json("k", &1).unwrap().priority("urgent"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownPriority { priority, .. } if priority == "urgent"),
        "{err}"
    );
    // An empty kind could never be routed: refused here rather than dead-lettered later.
    let err = f
        .client
        .enqueue(&f.queue, Task::json("", &1).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::InvalidConfig { .. }), "{err}");
    assert!(err.to_string().contains("kind"), "{err}");
    // Nothing was written for the rejected tasks.
    assert!(f.inspector.queues().await.unwrap().is_empty());
    // A queue registered with one layout cannot be used with another.
    f.client.enqueue(&f.queue, Task::json("k", &1).unwrap()).await.unwrap();
    let other = Client::new(&f.redis_client()).await.unwrap();
    let err = other
        .enqueue(&f.queue.clone().shards(2).unwrap(), Task::json("k", &1).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LayoutMismatch { .. }), "{err}");
    // Invalid worker configuration is reported, not repaired.
    let bad = WorkerConfig {
        concurrency: 0,
        ..WorkerConfig::default()
    };
    let err = rivulet::Worker::new(f.redis_client(), Router::new(), bad)
        .queue(f.queue.clone())
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
    let err = rivulet::Worker::new(f.redis_client(), Router::new(), four)
        .queue(Queue::new("typed").unwrap())
        .run(async {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { field: "priority", .. }), "{err}");
    assert!(matches!(f.inspector.queue("nope").await, Err(Error::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_reports_backlog_lag_and_age() {
    // A server of its own: it checks the list of every queue.
    let f = Fixture::with_queue(Queue::new("seen").unwrap()).await;
    f.client
        .enqueue_many(&f.queue, (0..5).map(|i| Task::json("k", &i).unwrap().priority("high")))
        .await
        .unwrap();
    f.client
        .enqueue(&f.queue, Task::json("k", &0).unwrap().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    let start = Instant::now();
    // Lag needs the group, which a worker creates; without one waiting is the estimate.
    let stats = f.stats().await;
    let high = &stats.priorities[0];
    assert_eq!((high.priority.as_str(), high.waiting, high.pending), ("high", 5, 0));
    assert!(high.waiting_estimated);
    assert!(high.oldest_waiting_age.is_some());
    let normal = &stats.priorities[1];
    assert_eq!((normal.waiting, normal.scheduled), (0, 1));
    assert_eq!(stats.counters.enqueued, 6);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(f.queue_names().await, ["seen"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_and_raw_bytes_payloads_reach_their_handlers() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
    struct Job {
        n: u64,
        name: String,
    }
    let f = Fixture::shared(Queue::new("codecs").unwrap()).await;
    let recorder = Recorder::new();
    let router = recorder.route(Router::new(), "typed", |_ctx, _job: Job| async { Ok(()) });
    let router = recorder.route_bytes(router, "raw", |_ctx, _bytes| async { Ok(()) });
    let job = Job { n: 7, name: "x".into() };
    f.client
        .enqueue(&f.queue, Task::msgpack("typed", &job).unwrap())
        .await
        .unwrap();
    f.client
        .enqueue(&f.queue, Task::json("typed", &job).unwrap())
        .await
        .unwrap();
    f.client
        .enqueue(&f.queue, Task::bytes("raw", vec![0u8, 255, 1]))
        .await
        .unwrap();
    let w = f.start_worker(router, fast_config());
    recorder.wait_for_runs(3, Duration::from_secs(10)).await;
    w.stop().await;
    let mut got: Vec<String> = recorder
        .runs()
        .iter()
        .map(|r| match r.kind.as_str() {
            "typed" => {
                let job: Job = r.payload();
                format!("{}:{}", job.n, job.name)
            }
            _ => format!("{:?}", r.payload::<Vec<u8>>()),
        })
        .collect();
    got.sort();
    assert_eq!(got, ["7:x", "7:x", "[0, 255, 1]"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_fetchers_never_read_more_tasks_than_free_slots() {
    let f = Fixture::shared(Queue::new("slots").unwrap()).await;
    let tasks: Vec<Task> = (0..300u32).map(|i| Task::json("gated", &i).unwrap()).collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();

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
    let w = f.start_worker(router, config);
    assert!(
        wait_until(Duration::from_secs(10), async || {
            w.counters.started.load(Ordering::Relaxed) == 6
        })
        .await,
        "6 handlers never started"
    );
    // Three fetchers share 6 slots; each reserves its slots before reading, so the worker
    // holds exactly 6 entries however their reads interleave (polled over many round trips).
    for _ in 0..200 {
        let held = f.inspector.pending(&f.queue, 1000).await.unwrap().len();
        assert_eq!(held, 6, "the worker holds {held} entries with 6 slots");
    }
    gate.add_permits(300);
    f.wait_done(300, Duration::from_secs(30)).await;
    let report = w.stop().await;
    assert_eq!(report.succeeded, 300, "{report:?}");
    assert_eq!(f.outstanding().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_run_on_at_most_concurrency_long_lived_runners() {
    let f = Fixture::shared(Queue::new("runners").unwrap()).await;
    let tasks: Vec<Task> = (0..400u32).map(|i| Task::json("noted", &i).unwrap()).collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    // Each run notes the tokio task it runs on and how many run at once.
    let seen: Arc<Mutex<HashMap<tokio::task::Id, u32>>> = Arc::default();
    let (running, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (seen2, running2, most2) = (seen.clone(), running.clone(), most.clone());
    let router = Router::new().route("noted", move |_ctx: TaskContext, _i: u32| {
        let (seen, running, most) = (seen2.clone(), running2.clone(), most2.clone());
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            *seen.lock().unwrap().entry(tokio::task::id()).or_default() += 1;
            // Awaits, so runs overlap and a runner is parked mid-task (no clock involved).
            tokio::task::yield_now().await;
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let config = WorkerConfig {
        concurrency: 5,
        ..fast_config()
    };
    let w = f.start_worker(router, config);
    f.wait_done(400, Duration::from_secs(60)).await;
    let report = w.stop().await;
    assert_eq!(report.succeeded, 400, "{report:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.values().sum::<u32>(), 400);
    // Never more runners than slots, each running many tasks in turn (not a task each).
    assert!(seen.len() <= 5, "{} tokio tasks ran handlers with 5 slots", seen.len());
    assert!(most.load(Ordering::SeqCst) <= 5);
    assert!(most.load(Ordering::SeqCst) >= 2, "runs overlapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_on_a_paused_queue_takes_nothing_until_resumed_not_even_orphans() {
    let f = Fixture::shared(Queue::new("paused").unwrap()).await;
    let tasks: Vec<Task> = (0..3u32).map(|i| Task::json("count", &i).unwrap()).collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    // One entry read by a consumer that then died: an orphan whose lease will run out.
    f.abandon_entries(&f.queue.shard("normal", 0).stream, "ghost", 1).await;
    f.inspector.pause(&f.queue).await.unwrap();

    let recorder = Recorder::new();
    let config = WorkerConfig {
        lease: Duration::from_millis(400),
        ..fast_config()
    };
    let w = f.start_worker(recorder.router(&["count"]), config);
    f.wait_worker_registered(Duration::from_secs(10)).await;
    // Several block periods, promoter rounds, leases and reclaim rounds. A sleep, because
    // what is checked is that nothing happens: there is no event to wait for.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(recorder.len(), 0, "a paused queue ran tasks: {}", recorder.summary(5));
    let stats = f.stats().await;
    let normal = stats.priorities.iter().find(|p| p.priority == "normal").unwrap();
    assert_eq!((normal.waiting, normal.pending), (2, 1));

    f.inspector.resume(&f.queue).await.unwrap();
    // Every task, the orphan included, runs.
    recorder.wait_for_runs(3, Duration::from_secs(20)).await;
    w.stop().await;
    assert_eq!(recorder.len(), 3, "{}", recorder.summary(5));
    assert_eq!(f.outstanding().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_registry_entry_does_not_hide_the_other_queues() {
    // A server of its own: it checks the list of every queue.
    let f = Fixture::with_queue(Queue::new("good").unwrap()).await;
    f.client.declare(&f.queue).await.unwrap();
    let mut conn = f.redis().await;
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
    assert_eq!(f.queue_names().await, ["good"]);
    assert!(f.inspector.queue("good").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_is_refused_while_it_holds_work_and_removes_every_key_when_forced() {
    // A server of its own: it checks every key and every queue on the server.
    let f = Fixture::with_queue(Queue::new("doomed").unwrap()).await;
    f.client.enqueue(&f.queue, Task::json("k", &1).unwrap()).await.unwrap();
    f.client
        .enqueue(&f.queue, Task::json("k", &2).unwrap().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    f.inspector.pause(&f.queue).await.unwrap();
    let other = f.other_queue("kept");
    f.client.enqueue(&other, Task::json("k", &3).unwrap()).await.unwrap();

    let err = f.inspector.delete_queue(&f.queue, false).await.unwrap_err();
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
    assert_eq!(f.queue_names().await, ["doomed", "kept"], "a refusal deletes nothing");

    let gone = f.inspector.delete_queue(&f.queue, true).await.unwrap();
    assert_eq!((gone.workers, gone.tasks, gone.dead_letters), (0, 2, 0));
    assert_eq!(f.queue_names().await, ["kept"]);
    let mut conn = f.redis().await;
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
    assert_eq!(rivulet::testing::outstanding(&f.inspector, &other).await, 1);
    let empty = f.other_queue("empty");
    f.client.declare(&empty).await.unwrap();
    f.inspector.delete_queue(&empty, false).await.unwrap();
    assert_eq!(f.queue_names().await, ["kept"]);
    // A live worker serving an empty queue is reason enough to refuse.
    let served = f.other_queue("served");
    let w = f.start_worker_on(&served, Router::new(), fast_config());
    assert!(
        wait_until(Duration::from_secs(10), async || {
            !f.inspector.workers().await.unwrap().is_empty()
        })
        .await,
        "the worker never registered"
    );
    let err = f.inspector.delete_queue(&served, false).await.unwrap_err();
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

/// `calls` of `cmd` in an `INFO commandstats` reply (0 when never called).
fn command_calls(info: &str, cmd: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Successes of tasks without a record settled at once skip the fenced script
/// (worker/acker.rs): on Redis 8.2+ they go out as `XACKDEL` (before, as `XACK` + `XDEL`, which
/// `settle.lua` calls too, so only the counts are checked there), and `done` counts each task
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_successes_are_acked_with_plain_commands_and_counted_done_once() {
    let f = Fixture::with_queue(Queue::new("fastack").unwrap()).await;
    let tasks: Vec<Task> = (0..500u32)
        .map(|i| Task::json("count", &i).unwrap().retention(Duration::ZERO))
        .collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    let mut conn = f.redis().await;
    let recorder = Recorder::new();
    let w = f.start_worker(recorder.router(&["count"]), fast_config());
    f.wait_done(500, Duration::from_secs(30)).await;
    w.stop().await;
    let stats = f.stats().await;
    assert_eq!((stats.counters.done, stats.counters.fenced), (500, 0));
    assert_eq!(f.outstanding().await, 0);
    assert_eq!(recorder.runs_per_task().len(), 500);
    let server: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await.unwrap();
    let version = rivulet::ServerInfo::parse(&server).unwrap().version;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    if version >= (8, 2, 0) {
        assert!(
            command_calls(&info, "xackdel") >= 1,
            "no XACKDEL on {version:?}:\n{info}"
        );
    } else {
        eprintln!("XACKDEL not checked: this server is {version:?}, XACKDEL needs Redis 8.2");
    }
}

/// A priority found empty is read together with the next one (worker/fetcher.rs): draining a
/// `normal` backlog one task at a time costs one `XREADGROUP` per task, not an empty read of
/// `high` before each (two per task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_higher_priority_costs_no_read_of_its_own_per_batch() {
    let f = Fixture::with_queue(Queue::new("fold").unwrap()).await;
    let tasks: Vec<Task> = (0..200u32)
        .map(|i| Task::json("count", &i).unwrap().priority("normal"))
        .collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    let mut conn = f.redis().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let recorder = Recorder::new();
    let config = WorkerConfig {
        concurrency: 1,
        ..fast_config()
    };
    let w = f.start_worker(recorder.router(&["count"]), config);
    f.wait_done(200, Duration::from_secs(30)).await;
    w.stop().await;
    assert_eq!(recorder.runs_per_task().len(), 200);
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let reads = command_calls(&info, "xreadgroup");
    // One read per task, plus the first pass's empty read of high and a few blocking reads
    // (while the enqueue's wake, the drain's end and the stop happen); without the fold, two
    // per task.
    eprintln!("{reads} XREADGROUP for 200 tasks");
    assert!(reads < 300, "{reads} reads for 200 tasks taken one at a time");
}

/// A server that refuses the plain acks (an ACL without `XACKDEL`, Redis 8.2+) still gets
/// every outcome: the worker falls back to `settle.lua` for good, and nothing is lost or
/// counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_the_plain_acks_gets_every_success_through_the_script() {
    let f = Fixture::with_queue(Queue::new("noplain").unwrap()).await;
    let mut conn = f.redis().await;
    let server: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await.unwrap();
    let version = rivulet::ServerInfo::parse(&server).unwrap().version;
    if version < (8, 2, 0) {
        // Before 8.2 the plain acks are XACK + XDEL in a MULTI, which settle.lua and enqueues
        // need as well; an ACL without MULTI is not supported (and redis-rs 1.8 panics on a
        // refused MULTI in a pipeline).
        eprintln!("not run: this server is {version:?}; there is no XACKDEL to refuse before Redis 8.2");
        return;
    }
    redis::cmd("ACL")
        .arg(&["SETUSER", "noplain", "on", ">pw", "~*", "&*", "+@all", "-xackdel"][..])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let tasks: Vec<Task> = (0..300u32)
        .map(|i| Task::json("count", &i).unwrap().retention(Duration::ZERO))
        .collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    let recorder = Recorder::new();
    let url = format!("redis://noplain:pw@127.0.0.1:{}", f.server.port());
    let worker = rivulet::Worker::new(
        redis::Client::open(url).unwrap(),
        recorder.router(&["count"]),
        fast_config(),
    )
    .queue(f.queue.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    f.wait_done(300, Duration::from_secs(30)).await;
    let _ = stop.send(());
    run.await.unwrap().unwrap();
    let stats = f.stats().await;
    assert_eq!((stats.counters.done, stats.counters.fenced), (300, 0));
    assert_eq!(f.outstanding().await, 0);
    assert_eq!(recorder.runs_per_task().len(), 300);
}
