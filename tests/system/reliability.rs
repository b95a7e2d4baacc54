//! Reliability promises around the core one (issue 16): a dead worker's tasks run again within
//! about one lease, a free slot never waits for an idle read, a drain during an outage keeps
//! to one budget, dead consumers leave the group, and a Redis out of memory refuses enqueues
//! with a typed error while nothing acknowledged is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rivulet::testing::{Fixture, Recorder, RedisServer, fast_config, wait_until};
use rivulet::{Error, Queue, Router, Task, WorkerConfig};
use tokio::sync::Semaphore;

/// `XINFO CONSUMERS` of a stream: (name, pending) per consumer.
async fn consumers(f: &Fixture, stream: &str) -> Vec<(String, u64)> {
    let mut conn = f.redis().await;
    let rows: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg("rivulet")
        .query_async(&mut conn)
        .await
        .expect("XINFO CONSUMERS");
    rows.iter()
        .map(|row| {
            let name: String = redis::from_redis_value(row["name"].clone()).expect("a name");
            let pending: u64 = redis::from_redis_value(row["pending"].clone()).expect("a pending count");
            (name, pending)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_start_within_one_lease_while_every_fetcher_waits_in_a_long_read() {
    // A server of its own: the start times are the claim. Two handler slots and two fetchers
    // whose blocking reads last longer than the lease: a fetcher that kept a slot while it
    // waits would leave the reclaimer none until its read times out.
    let f = Fixture::with_queue(Queue::new("orphans").unwrap().shards(1).unwrap()).await;
    let stream = f.queue.shard("normal", 0).stream;
    let tasks: Vec<Task> = (0..2u32).map(|i| Task::json("orphan", &i).unwrap()).collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    // A worker that read both and died: their idle time starts now.
    f.abandon_entries(&stream, "dead-worker", 10).await;
    let died = Instant::now();

    let lease = Duration::from_secs(2);
    let recorder = Recorder::new();
    let config = WorkerConfig {
        concurrency: 2,
        fetchers: 2,
        lease,
        block: Duration::from_secs(10),
        ..fast_config()
    };
    let w = f.start_worker(recorder.router(&["orphan"]), config);
    recorder.wait_for_runs(2, Duration::from_secs(30)).await;
    w.stop().await;
    // One lease, the reclaimer's cadence (lease / 8) and room for a loaded machine.
    let bound = lease.mul_f64(1.3) + Duration::from_secs(1);
    for run in recorder.runs() {
        let after = run.at - died;
        assert!(
            after >= lease.mul_f64(0.9) && after < bound,
            "orphan {} started {after:?} after its worker died (lease {lease:?}, bound {bound:?}): {}",
            run.id,
            recorder.summary(5)
        );
    }
    assert_eq!(f.stats().await.counters.done, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumer_leaves_the_group_once_it_holds_nothing_and_never_before() {
    let f = Fixture::shared(Queue::new("ghosts").unwrap()).await;
    let stream = f.queue.shard("normal", 0).stream;
    // One dead consumer that died holding three tasks ...
    let tasks: Vec<Task> = (0..3u32).map(|i| Task::json("t", &i).unwrap()).collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    f.abandon_entries(&stream, "ghost-holding", 10).await;
    // ... and one that holds nothing (it read nothing, or settled everything, and died).
    let created: u64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg("rivulet")
        .arg("ghost-empty")
        .query_async(&mut f.redis().await)
        .await
        .unwrap();
    assert_eq!(created, 1);
    let before = consumers(&f, &stream).await;
    assert_eq!(
        before,
        [("ghost-empty".to_owned(), 0), ("ghost-holding".to_owned(), 3)],
        "{before:?}"
    );

    let recorder = Recorder::new();
    let config = WorkerConfig {
        lease: Duration::from_millis(500),
        ..fast_config()
    };
    let w = f.start_worker(recorder.router(&["t"]), config);
    let mut seen = Vec::new();
    let cleaned = wait_until(Duration::from_secs(30), async || {
        let now = consumers(&f, &stream).await;
        // A consumer deleted with entries drops them: a ghost may only leave with none.
        if let Some(last) = seen.last()
            && let Some((_, pending)) = (last as &Vec<(String, u64)>).iter().find(|(n, _)| n == "ghost-holding")
            && *pending > 0
            && !now.iter().any(|(n, _)| n == "ghost-holding")
        {
            let stats = f.stats().await;
            assert_eq!(
                stats.counters.lost, 0,
                "ghost-holding left with entries: {seen:?} then {now:?}"
            );
        }
        seen.push(now.clone());
        !now.iter().any(|(n, _)| n.starts_with("ghost-"))
    })
    .await;
    let after = consumers(&f, &stream).await;
    assert!(cleaned, "dead consumers stayed in the group: {after:?}");
    // The live worker's own consumer stays.
    assert!(after.iter().any(|(n, _)| n == &w.id), "{after:?}");
    f.wait_done(3, Duration::from_secs(20)).await;
    w.stop().await;
    let stats = f.stats().await;
    assert_eq!((stats.counters.done, stats.counters.lost), (3, 0), "{stats:#?}");
    assert_eq!(recorder.runs_per_task().len(), 3, "{}", recorder.summary(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_during_an_outage_keeps_to_one_budget_and_leaves_the_rest_pending() {
    // A server of its own, killed during the drain and restarted with its AOF.
    let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut f = Fixture::on_server(server, Queue::new("outage-drain").unwrap()).await;
    let gate = Arc::new(Semaphore::new(0));
    let first = Recorder::new();
    let g = gate.clone();
    let router = first.route(Router::new(), "t", move |_ctx, _: u32| {
        let g = g.clone();
        async move {
            let _pass = g.acquire().await.expect("the gate is never closed");
            Ok(())
        }
    });
    let drain_timeout = Duration::from_secs(1);
    let config = WorkerConfig {
        concurrency: 4,
        lease: Duration::from_secs(1),
        drain_timeout,
        ..fast_config()
    };
    let tasks: Vec<Task> = (0..8u32).map(|i| Task::json("t", &i).unwrap()).collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    let w = f.start_worker(router, config.clone());
    first.wait_for_runs(4, Duration::from_secs(20)).await;

    // Redis goes away; the four handlers finish, and their outcomes cannot be written.
    f.server.owned_mut().kill();
    gate.add_permits(100);
    let began = Instant::now();
    w.stop().await;
    let took = began.elapsed();
    let budget = drain_timeout + rivulet::DRAIN_SETTLE_BUDGET;
    assert!(
        took < budget + Duration::from_secs(2),
        "the drain took {took:?} against a budget of {budget:?}"
    );

    // What was left pending runs again once Redis is back: nothing acknowledged is lost.
    f.server.owned_mut().restart();
    let second = Recorder::new();
    let w = f.start_worker(second.router(&["t"]), config);
    // The fixture's inspector lost its connection with the server: a fresh one.
    let inspector = rivulet::Inspector::new(&f.redis_client()).await.unwrap();
    let done = wait_until(Duration::from_secs(30), async || {
        rivulet::testing::outstanding(&inspector, &f.queue).await == 0
    })
    .await;
    assert!(done, "tasks still outstanding: {:#?}", inspector.stats(&f.queue).await);
    w.stop().await;
    let mut ran: Vec<String> = first.runs().into_iter().chain(second.runs()).map(|r| r.id).collect();
    ran.sort();
    ran.dedup();
    assert_eq!(
        ran.len(),
        8,
        "first: {}\nsecond: {}",
        first.summary(8),
        second.summary(8)
    );
    assert_eq!(inspector.stats(&f.queue).await.unwrap().counters.lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_refuses_enqueues_with_a_typed_error_and_loses_nothing_acknowledged() {
    // A server of its own with a small memory limit and no eviction.
    let server = RedisServer::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    // Task records off (retention 0): a finished task's record stays for the queue's retention
    // (1 h by default), so with records on a 4 MiB Redis stays full after the drain until they
    // expire; this test is about the tasks themselves (docs/tasks.md: memory per record).
    let f = Fixture::on_server(server, Queue::new("oom").unwrap().retention(Duration::ZERO)).await;
    let recorder = Recorder::new();
    // A worker runs throughout, its handlers held until Redis is full.
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let router = recorder.route(Router::new(), "t", move |_ctx, _: (u32, String)| {
        let g = g.clone();
        async move {
            let _pass = g.acquire().await.expect("the gate is never closed");
            Ok(())
        }
    });
    let config = WorkerConfig {
        concurrency: 16,
        lease: Duration::from_secs(2),
        ..fast_config()
    };
    let w = f.start_worker(router, config);
    f.wait_worker_registered(Duration::from_secs(20)).await;
    let payload = "x".repeat(2000);
    let mut accepted = Vec::new();
    let mut refused = None;
    for batch in 0..1000u32 {
        let tasks: Vec<Task> = (0..50u32)
            .map(|i| Task::json("t", &(batch * 50 + i, &payload)).unwrap())
            .collect();
        match f.client.enqueue_many(&f.queue, tasks).await {
            Ok(ids) => accepted.extend(ids.into_iter().map(|id| id.to_string())),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a 4 MiB Redis refuses 100 MB of tasks");
    assert!(
        matches!(refused, Error::OutOfMemory { .. }),
        "not the out-of-memory error: {refused:?}"
    );
    assert!(refused.to_string().contains("out of memory"), "{refused}");
    assert!(!accepted.is_empty(), "nothing was accepted before the limit");

    // The worker keeps running against the full Redis and drains every accepted task.
    gate.add_permits(1_000_000);
    let ran_all = wait_until(Duration::from_secs(60), async || {
        recorder.runs_per_task().len() >= accepted.len()
    })
    .await;
    let runs = recorder.runs_per_task();
    let missing: Vec<&String> = accepted.iter().filter(|id| !runs.contains_key(*id)).take(5).collect();
    assert!(
        ran_all && missing.is_empty(),
        "{} of {} accepted tasks ran; missing e.g. {missing:?}: {:#?}",
        runs.len(),
        accepted.len(),
        f.stats().await
    );
    // Memory came back: enqueueing works again.
    let again = wait_until(Duration::from_secs(30), async || {
        f.client
            .enqueue(&f.queue, Task::json("t", &(0u32, "again")).unwrap())
            .await
            .is_ok()
    })
    .await;
    assert!(again, "enqueue still refused after the backlog drained");
    let done = wait_until(Duration::from_secs(30), async || f.outstanding().await == 0).await;
    assert!(done, "{:#?}", f.stats().await);
    w.stop().await;
    assert_eq!(f.stats().await.counters.lost, 0);
}
