//! The core scenarios on a Redis Cluster shared by this binary, a queue per test.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rivulet::testing::cluster::RedisCluster;
use rivulet::{
    Client, DlqSelect, Error, HandlerError, Inspector, Queue, RetryPolicy, Router, Task, TaskContext, WorkerConfig,
};

use crate::support::{
    RunningWorker, Runs, counting_router, fast_config, lost_and_twice, outstanding, wait_for, wait_runs,
};

/// A queue name no other test (or earlier run) of this binary uses.
fn fresh(name: &str) -> String {
    format!("{name}-{:06x}", fastrand::u32(..0x100_0000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_over_priorities_and_shards_spread_over_masters_and_run_once() {
    let cluster = RedisCluster::shared();
    let target = cluster.target();
    let queue = Queue::new(&fresh("bulk")).unwrap().shards(3).unwrap();
    // The queue's nine shards live on more than one master: more shards use more masters.
    let masters: HashSet<u16> = queue
        .all_shards()
        .map(|s| cluster.master_for(&s.keys.stream).port)
        .collect();
    assert!(masters.len() >= 2, "nine shards on one master: {masters:?}");

    let client = Client::new(&target).await.unwrap();
    let priorities = ["high", "normal", "low"];
    let tasks: Vec<Task> = (0..3000u32)
        .map(|i| Task::json("count", &i).unwrap().priority(priorities[i as usize % 3]))
        .collect();
    // One pipelined call spans every shard, so every slot: split per slot, not refused.
    for chunk in tasks.chunks(500) {
        client.enqueue_many(&queue, chunk.to_vec()).await.unwrap();
    }
    let runs: Runs = Arc::default();
    let w1 = RunningWorker::start(
        &target,
        std::slice::from_ref(&queue),
        counting_router(&runs),
        fast_config(),
    );
    let w2 = RunningWorker::start(
        &target,
        std::slice::from_ref(&queue),
        counting_router(&runs),
        fast_config(),
    );
    wait_runs(&runs, "3,000 tasks to run", Duration::from_secs(120), |n| n == 3000).await;
    let (r1, r2) = (w1.stop().await, w2.stop().await);
    let (lost, twice) = lost_and_twice(&runs, 3000);
    assert!(lost.is_empty() && twice == 0, "lost {lost:?}, run twice {twice}");
    assert_eq!(r1.succeeded + r2.succeeded, 3000, "{r1:?} {r2:?}");

    // Stats aggregate every shard, whichever master holds it.
    let inspector = Inspector::new(&target).await.unwrap();
    let stats = inspector.stats(&queue).await.unwrap();
    assert_eq!((stats.counters.enqueued, stats.counters.done), (3000, 3000));
    for p in &stats.priorities {
        for s in &p.shards {
            assert!(s.counters.enqueued > 0, "shard {}/{} got nothing", p.priority, s.shard);
            assert_eq!(
                (s.length, s.pending),
                (0, 0),
                "shard {}/{} not empty",
                p.priority,
                s.shard
            );
        }
    }
    assert!(
        inspector
            .queues()
            .await
            .unwrap()
            .iter()
            .any(|q| q.name() == queue.name())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_and_replay_work_on_a_cluster() {
    let target = RedisCluster::shared().target();
    let queue = Queue::new(&fresh("dead")).unwrap().shards(2).unwrap();
    let client = Client::new(&target).await.unwrap();
    let healed = Arc::new(AtomicU32::new(0));
    let healed2 = healed.clone();
    let router = Router::new().route("job", move |_ctx: TaskContext, fatal: bool| {
        let healed = healed2.clone();
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
    });
    let config = WorkerConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(20),
            ..RetryPolicy::default()
        },
        ..fast_config()
    };
    let w = RunningWorker::start(&target, std::slice::from_ref(&queue), router, config);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            client
                .enqueue(&queue, Task::json("job", &(i % 2 == 0)).unwrap())
                .await
                .unwrap(),
        );
    }
    let inspector = Inspector::new(&target).await.unwrap();
    wait_for("ten dead letters", Duration::from_secs(30), || {
        let (inspector, queue) = (inspector.clone(), queue.clone());
        async move { inspector.dlq_list(&queue, None, 100).await.unwrap().len() == 10 }
    })
    .await;
    let dead = inspector.dlq_list(&queue, None, 100).await.unwrap();
    let reasons: HashMap<String, (String, u64)> = dead
        .iter()
        .map(|d| (d.task_id.clone(), (d.reason.to_string(), d.attempt)))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let want = if i % 2 == 0 {
            ("fatal".to_owned(), 1)
        } else {
            ("exhausted".to_owned(), 3)
        };
        assert_eq!(reasons[id.as_str()], want, "task {i}");
    }
    // Dead letters of both shards (on their own masters) are listed and replayed together.
    healed.store(1, Ordering::SeqCst);
    assert_eq!(inspector.dlq_replay(&queue, &DlqSelect::All).await.unwrap(), 10);
    wait_for("replayed tasks done", Duration::from_secs(30), || {
        let (inspector, queue) = (inspector.clone(), queue.clone());
        async move { inspector.stats(&queue).await.unwrap().counters.done == 10 }
    })
    .await;
    w.stop().await;
    assert!(inspector.dlq_list(&queue, None, 10).await.unwrap().is_empty());
    assert_eq!(outstanding(&inspector, &queue).await, 0);
    let c = inspector.stats(&queue).await.unwrap().counters;
    assert_eq!((c.dead, c.replayed, c.retried), (10, 10, 10), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_tasks_are_reclaimed_on_a_cluster() {
    let target = RedisCluster::shared().target();
    let queue = Queue::new(&fresh("reclaim")).unwrap().shards(3).unwrap();
    let client = Client::new(&target).await.unwrap();
    let tasks: Vec<Task> = (0..60u32).map(|i| Task::json("count", &i).unwrap()).collect();
    client.enqueue_many(&queue, tasks).await.unwrap();
    // A worker that read everything and died: its entries sit in each shard's PEL.
    let mut conn = target.connect().await.unwrap();
    for shard in queue.all_shards() {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&shard.keys.stream)
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
            .arg("dead-worker")
            .arg("COUNT")
            .arg(1000)
            .arg("STREAMS")
            .arg(&shard.keys.stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let runs: Runs = Arc::default();
    let config = WorkerConfig {
        lease: Duration::from_millis(300),
        ..fast_config()
    };
    let w = RunningWorker::start(&target, std::slice::from_ref(&queue), counting_router(&runs), config);
    wait_runs(&runs, "60 reclaimed tasks to run", Duration::from_secs(30), |n| n == 60).await;
    let report = w.stop().await;
    let (lost, twice) = lost_and_twice(&runs, 60);
    assert!(lost.is_empty() && twice == 0, "lost {lost:?}, run twice {twice}");
    let inspector = Inspector::new(&target).await.unwrap();
    let c = inspector.stats(&queue).await.unwrap().counters;
    assert_eq!((c.reclaimed, c.done, c.lost), (60, 60, 0), "{c:?} {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_reach_the_dlq_on_a_cluster() {
    let target = RedisCluster::shared().target();
    let queue = Queue::new(&fresh("garbage")).unwrap().shards(2).unwrap();
    let runs: Runs = Arc::default();
    let w = RunningWorker::start(
        &target,
        std::slice::from_ref(&queue),
        counting_router(&runs),
        fast_config(),
    );
    let inspector = Inspector::new(&target).await.unwrap();
    wait_for("the worker's consumer groups", Duration::from_secs(10), || {
        let (inspector, queue) = (inspector.clone(), queue.clone());
        async move {
            inspector
                .stats(&queue)
                .await
                .is_ok_and(|s| s.priorities.iter().all(|p| p.shards.iter().all(|s| s.lag.is_some())))
        }
    })
    .await;
    let mut conn = target.connect().await.unwrap();
    let mut want = 0;
    for shard in queue.all_shards() {
        for (i, fields) in [
            &[("id", "a"), ("payload", "1")][..],                                      // no kind
            &[("id", "b"), ("kind", "count"), ("payload", "1"), ("codec", "xml")][..], // unknown codec
            &[("id", "c"), ("kind", "nobody-serves-this"), ("payload", "1")][..],      // unknown kind
        ]
        .iter()
        .enumerate()
        {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&shard.keys.stream).arg("*");
            for (k, v) in *fields {
                cmd.arg(*k).arg(format!("{v}{i}"));
            }
            let _: String = cmd.query_async(&mut conn).await.unwrap();
            want += 1;
        }
    }
    wait_for("every malformed entry dead-lettered", Duration::from_secs(30), || {
        let (inspector, queue) = (inspector.clone(), queue.clone());
        async move { inspector.dlq_list(&queue, None, 100).await.unwrap().len() == want }
    })
    .await;
    w.stop().await;
    let reasons: HashSet<String> = inspector
        .dlq_list(&queue, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|d| d.reason.to_string())
        .collect();
    assert_eq!(
        reasons,
        HashSet::from(["malformed".to_owned(), "unknown_kind".to_owned()])
    );
    assert!(runs.lock().unwrap().is_empty());
    assert_eq!(outstanding(&inspector, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_tasks_and_pending_listings_work_across_masters() {
    let target = RedisCluster::shared().target();
    let queue = Queue::new(&fresh("later")).unwrap().shards(3).unwrap();
    let client = Client::new(&target).await.unwrap();
    let tasks: Vec<Task> = (0..30u32)
        .map(|i| Task::json("count", &i).unwrap().delay(Duration::from_millis(300)))
        .collect();
    client.enqueue_many(&queue, tasks).await.unwrap();
    let inspector = Inspector::new(&target).await.unwrap();
    let scheduled: u64 = inspector
        .stats(&queue)
        .await
        .unwrap()
        .priorities
        .iter()
        .map(|p| p.scheduled)
        .sum();
    assert_eq!(scheduled, 30);
    let runs: Runs = Arc::default();
    let w = RunningWorker::start(
        &target,
        std::slice::from_ref(&queue),
        counting_router(&runs),
        fast_config(),
    );
    wait_runs(&runs, "30 delayed tasks to run", Duration::from_secs(30), |n| n == 30).await;
    // The worker is listed (its record lives on one master, the queue's shards on others).
    assert!(!inspector.workers().await.unwrap().is_empty());
    // The listing reads every master; a task that ran is listed until its ack lands, a
    // moment after the handler returns, so the last ones may still be there at first.
    wait_for(
        "no pending entries on any master",
        Duration::from_secs(10),
        async || inspector.pending(&queue, 100).await.unwrap().is_empty(),
    )
    .await;
    w.stop().await;
    assert_eq!(outstanding(&inspector, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_url_on_a_cluster_node_is_told_to_use_a_cluster_url() {
    let cluster = RedisCluster::shared();
    let queue = Queue::new(&fresh("plain")).unwrap().shards(8).unwrap();
    // A plain connection to one master: the keys of the other masters' slots answer MOVED.
    let node = cluster.topology().into_iter().find(|n| n.master).unwrap();
    let client = Client::connect(&format!("redis://127.0.0.1:{}", node.port))
        .await
        .unwrap();
    let tasks: Vec<Task> = (0..64u32).map(|i| Task::json("count", &i).unwrap()).collect();
    let err = client.enqueue_many(&queue, tasks).await.unwrap_err();
    assert!(matches!(err, Error::ClusterNode(_)), "{err:?}");
    assert!(err.to_string().contains("redis+cluster://"), "{err}");
}

#[tokio::test]
async fn bad_cluster_and_sentinel_urls_get_typed_errors() {
    for url in [
        "redis+cluster://",
        "redis+cluster://127.0.0.1:1/2",
        "redis+sentinel://127.0.0.1:26379",
    ] {
        let err = Client::connect(url).await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
    }
}

/// Tracked tasks (records, events, waits, cancels, unique keys) on tasks spread over every
/// master, with `replicated:1` on enqueue and on settle: each wait goes to the master of the
/// shard written (a `WAIT` elsewhere would not cover the write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lifecycle_and_replicated_acks_work_across_masters() {
    let cluster = RedisCluster::shared();
    let target = cluster.target();
    let queue = Queue::new(&fresh("life")).unwrap().shards(6).unwrap();
    let replicated: rivulet::Durability = "replicated:1".parse().unwrap();
    let client = Client::new(&target)
        .await
        .unwrap()
        .with_durability(replicated)
        .await
        .unwrap();
    let mut cursor = client.events_now(&queue).await.unwrap();
    let tasks: Vec<Task> = (0..30u32).map(|i| Task::json("count", &i).unwrap()).collect();
    let ids = client.enqueue_many(&queue, tasks).await.unwrap();
    let later = client
        .enqueue(
            &queue,
            Task::json("count", &99u32).unwrap().delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(
        client.cancel(&queue, &later).await.unwrap(),
        rivulet::CancelOutcome::Cancelled
    );
    let first = client
        .submit(&queue, Task::json("count", &100u32).unwrap().unique_key("report-7"))
        .await
        .unwrap();
    let again = client
        .submit(&queue, Task::json("count", &101u32).unwrap().unique_key("report-7"))
        .await
        .unwrap();
    assert!(matches!(first, rivulet::Enqueued::New(_)), "{first:?}");
    assert!(matches!(again, rivulet::Enqueued::Duplicate(_)), "{again:?}");

    let runs: Runs = Arc::default();
    let options = rivulet::QueueOptions {
        durability: replicated,
        ..rivulet::QueueOptions::default()
    };
    let worker =
        rivulet::Worker::new(&target, counting_router(&runs), fast_config()).queue_with(queue.clone(), options);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    for id in &ids {
        let st = client.wait(&queue, id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(st.state, rivulet::TaskState::Succeeded, "{st:?}");
    }
    assert_eq!(
        client.status(&queue, &later).await.unwrap().state,
        rivulet::TaskState::Cancelled
    );
    // The events of every shard, wherever it lives, reach one follower.
    let mut succeeded = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while succeeded.len() < 31 && std::time::Instant::now() < deadline {
        for e in client
            .follow_events(&queue, &mut cursor, Duration::from_millis(500))
            .await
            .unwrap()
        {
            if e.event == "succeeded" {
                succeeded.insert(e.task_id);
            }
        }
    }
    assert_eq!(succeeded.len(), 31, "succeeded events seen: {succeeded:?}");
    let listed = client.tasks(&queue, rivulet::TaskState::Succeeded, 100).await.unwrap();
    assert_eq!(listed.len(), 31);
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
    let (lost, twice) = lost_and_twice(&runs, 30);
    assert!(lost.is_empty() && twice == 0, "lost {lost:?}, twice {twice}");
}

/// The autoscaler's collector on a cluster: the backlog of a queue whose shards live on every
/// master is their sum, and the live workers are the cluster-wide registry's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_observes_a_queue_spread_over_masters() {
    let cluster = RedisCluster::shared();
    let target = cluster.target();
    let queue = Queue::new(&fresh("scaled")).unwrap().shards(6).unwrap();
    let client = Client::new(&target).await.unwrap();
    let tasks: Vec<Task> = (0..50u32).map(|i| Task::json("count", &i).unwrap()).collect();
    client.enqueue_many(&queue, tasks).await.unwrap();
    let inspector = Inspector::new(&target).await.unwrap();
    let slas = vec![Duration::from_secs(10); queue.layout().priorities.len()];
    let mut observer =
        autoscaler::observe::Observer::new(inspector.clone(), queue.clone(), slas, Duration::from_secs(15));
    let seen = observer.observe().await.unwrap();
    assert_eq!(seen.priorities.iter().map(|p| p.backlog).sum::<u64>(), 50, "{seen:?}");

    let runs: Runs = Arc::default();
    let w = RunningWorker::start(
        &target,
        std::slice::from_ref(&queue),
        counting_router(&runs),
        fast_config(),
    );
    wait_runs(&runs, "the tasks to run", Duration::from_secs(30), |n| n == 50).await;
    let seen = observer.observe().await.unwrap();
    assert_eq!(seen.priorities.iter().map(|p| p.backlog).sum::<u64>(), 0, "{seen:?}");
    assert!(seen.live_workers >= 1, "{seen:?}");
    w.stop().await;
}
