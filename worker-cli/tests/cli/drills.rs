//! The drills of issue 16, run as a user would: `worker-cli --workers 4` with real worker
//! processes.
//!
//! - **Chaos**: workers SIGKILLed on a timer, Redis killed and restarted twice with AOF
//!   (`appendfsync always`) while a producer enqueues through the outages; then every
//!   acknowledged task ran (the `--exec` handler appends `RIVULET_TASK_ID` to a file), nothing
//!   is left pending, the supervisor is still up; the figures (tasks run twice, recovery after
//!   each Redis restart) are printed. Bounded for CI (3,000 tasks, about half a minute);
//!   `RIVULET_CHAOS_TASKS=35000` makes it the large run of docs/operations.md.
//! - **Graceful stop**: SIGTERM with long tasks running: with the default drain they finish;
//!   with a short `--drain-timeout` they are requeued and another worker starts them at once
//!   (not a lease later).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rivulet::testing::{Fixture, RedisServer, TempDir, wait_until};
use rivulet::{Queue, Task};

use crate::common::{Supervisor, enqueue_sleeps};

/// Tasks in the bounded drill (CI).
const CI_TASKS: u64 = 3_000;
/// How long Redis stays down in each outage.
const OUTAGE: Duration = Duration::from_millis(300);

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Tasks not settled yet (waiting, in flight, delayed, retrying); `u64::MAX` while Redis does
/// not answer (its connection may still be the one the restart broke).
async fn outstanding(f: &Fixture) -> u64 {
    match f.inspector.stats(&f.queue).await {
        Ok(s) => s
            .priorities
            .iter()
            .map(|p| p.waiting + p.pending + p.scheduled + p.retry)
            .sum(),
        Err(_) => u64::MAX,
    }
}

#[tokio::test]
async fn chaos_drill_loses_no_acknowledged_task() {
    let tasks: u64 = std::env::var("RIVULET_CHAOS_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_TASKS);
    let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut f = Fixture::on_server(server, Queue::new("chaos").unwrap()).await;
    let dir = TempDir::new("chaos");
    let ran = dir.join("ran");
    let exec = format!("record=echo \"$RIVULET_TASK_ID\" >> {}", ran.display());
    let begun = Instant::now();
    // A high crash limit: the drill's SIGKILLs are crashes (about one every 2.5 s), and the
    // guard is for workers that cannot run, which these can.
    let mut sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "4",
            "--concurrency",
            "8",
            "--lease",
            "2s",
            "--crash-limit",
            "1000",
            "--queue",
            "chaos",
            "--exec",
            &exec,
        ],
    );

    // The producer: 25 tasks every 150 ms (about what the workers run, so the producer runs
    // through the whole drill: 18 s for 3,000 tasks), each batch retried with the same ids
    // until Redis acknowledges it (an unacknowledged batch may still have been written: at
    // least once).
    let per_batch = 25u64;
    let acked: Arc<AtomicU64> = Arc::default();
    let producer = {
        let (client, queue, acked) = (f.client.clone(), f.queue.clone(), acked.clone());
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(150));
            let mut retries = 0u64;
            let mut next = 0u64;
            while next < tasks {
                pace.tick().await;
                let end = (next + per_batch).min(tasks);
                loop {
                    let batch = (next..end).map(|i| Task::bytes("record", "").id(format!("chaos-{i}")));
                    match client.enqueue_many(&queue, batch).await {
                        Ok(_) => break,
                        Err(_) => {
                            retries += 1;
                            pace.tick().await;
                        }
                    }
                }
                acked.store(end, Ordering::SeqCst);
                next = end;
            }
            retries
        })
    };

    // The chaos: a random worker SIGKILLed every 2-3 s; Redis killed (and restarted 300 ms
    // later) at about a third and two thirds of the enqueueing.
    let mut kills = 0u32;
    let mut recoveries = Vec::new();
    let mut outages_done = 0u64;
    let mut next_kill = Instant::now() + Duration::from_millis(2000 + fastrand::u64(..1000));
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !producer.is_finished() {
        tick.tick().await;
        let now = Instant::now();
        if now >= next_kill {
            let children: Vec<u32> = sup.children().into_iter().collect();
            if let Some(victim) = fastrand::choice(&children) {
                let _ = kill(Pid::from_raw(*victim as i32), Signal::SIGKILL);
                kills += 1;
            }
            next_kill = now + Duration::from_millis(2000 + fastrand::u64(..1000));
        }
        let produced = acked.load(Ordering::SeqCst);
        if outages_done < 2 && produced >= tasks * (outages_done + 1) / 3 {
            outages_done += 1;
            f.server.owned_mut().kill();
            // The outage's length is the drill's input, not a wait for something to happen.
            tokio::time::sleep(OUTAGE).await;
            f.server.owned_mut().restart();
            // Recovery: from the restart to the next task run.
            let restarted = Instant::now();
            let before = lines(&ran).len();
            let back = wait_until(Duration::from_secs(60), async || lines(&ran).len() > before).await;
            assert!(
                back,
                "no task ran within 60 s of Redis restart {outages_done}:\n{}",
                sup.log()
            );
            recoveries.push(restarted.elapsed());
        }
    }
    let retries = producer.await.unwrap();

    // Every acknowledged task ran, nothing is left pending, the supervisor is up.
    // The backlog left when the producer stops drains at the workers' pace (about 80-150
    // `--exec` tasks a second on a loaded 2-core machine): the bound grows with the size.
    let drain_bound = Duration::from_secs(120 + tasks / 25);
    let all_ran = wait_until(drain_bound, async || {
        let seen: HashSet<String> = lines(&ran).into_iter().collect();
        seen.len() as u64 == tasks && outstanding(&f).await == 0
    })
    .await;
    let log = lines(&ran);
    let mut runs: HashMap<&str, u32> = HashMap::new();
    for id in &log {
        *runs.entry(id.as_str()).or_default() += 1;
    }
    let missing: Vec<String> = (0..tasks)
        .map(|i| format!("chaos-{i}"))
        .filter(|id| !runs.contains_key(id.as_str()))
        .collect();
    assert!(
        all_ran,
        "{} acknowledged task(s) never ran (first: {:?}); outstanding {}\n{}",
        missing.len(),
        missing.first(),
        outstanding(&f).await,
        sup.log()
    );
    assert!(missing.is_empty());
    assert!(
        sup.exit_within(Duration::ZERO).await.is_none(),
        "the supervisor stopped:\n{}",
        sup.log()
    );
    let twice = runs.values().filter(|n| **n > 1).count();
    let stats = f.stats().await;
    println!(
        "chaos drill: {tasks} tasks acknowledged, all ran; {twice} ran more than once ({:.2} %), {} runs in all; \
         {kills} workers SIGKILLed, Redis restarted {outages_done} times (first task run {:?} after each restart), \
         {retries} producer retries; reclaimed {}, lost {}; {:?} in all",
        twice as f64 * 100.0 / tasks as f64,
        log.len(),
        recoveries,
        stats.counters.reclaimed,
        stats.counters.lost,
        begun.elapsed(),
    );
    assert_eq!(stats.counters.lost, 0, "{stats:#?}");
}

/// With the default drain (30 s), SIGTERM lets running tasks finish.
#[tokio::test]
async fn graceful_stop_drill_lets_running_tasks_finish() {
    let f = Fixture::start().await;
    let mut sup = Supervisor::start(
        &f.server,
        &["--workers", "2", "--concurrency", "2", "--queue", "drain-all"],
    );
    enqueue_sleeps(&f.server, "drain-all", 2_000, 4).await;
    let q = f.inspector.queue("drain-all").await.unwrap();
    // Running, not only delivered: a task read but not started yet is requeued at a stop, by
    // design. A start record (`active`) is written only for a handler that runs.
    let client = rivulet::Client::new(&f.server.client()).await.unwrap();
    let running = wait_until(Duration::from_secs(60), async || {
        client
            .tasks(&q, rivulet::TaskState::Active, 10)
            .await
            .map(|t| t.len())
            .unwrap_or(0)
            == 4
    })
    .await;
    assert!(running, "the 4 tasks never ran at once:\n{}", sup.log());
    sup.signal(Signal::SIGTERM);
    let status = sup.exit_within(Duration::from_secs(40)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", sup.log());
    let s = f.inspector.stats(&q).await.unwrap();
    assert_eq!((s.counters.done, s.counters.requeued), (4, 0), "{s:#?}");
}

/// With a short `--drain-timeout`, SIGTERM requeues the running tasks and another worker
/// starts them at once, not a lease (30 s) later.
#[tokio::test]
async fn graceful_stop_drill_requeues_to_another_worker_at_once() {
    let f = Fixture::start().await;
    let mut first = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "1",
            "--concurrency",
            "2",
            "--drain-timeout",
            "500ms",
            "--queue",
            "handoff",
        ],
    );
    enqueue_sleeps(&f.server, "handoff", 20_000, 2).await;
    let q = f.inspector.queue("handoff").await.unwrap();
    let holder = || async {
        let p = f.inspector.pending(&q, 10).await.unwrap_or_default();
        let holders: HashSet<String> = p.iter().map(|e| e.consumer.clone()).collect();
        (p.len(), holders)
    };
    let taken = wait_until(Duration::from_secs(60), async || holder().await.0 == 2).await;
    assert!(taken, "the first worker never took both tasks:\n{}", first.log());
    let (_, before) = holder().await;
    // The second worker comes up idle (nothing left to take), then the first is stopped.
    let second = Supervisor::start(
        &f.server,
        &["--workers", "1", "--concurrency", "2", "--queue", "handoff"],
    );
    crate::common::wait_live_workers(&f.inspector, "handoff", 2, Duration::from_secs(60)).await;
    let stopped = Instant::now();
    first.signal(Signal::SIGTERM);
    let moved = wait_until(Duration::from_secs(25), async || {
        let (n, holders) = holder().await;
        n == 2 && holders.is_disjoint(&before)
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        moved,
        "the tasks never moved to the second worker:\n{}\n{}",
        first.log(),
        second.log()
    );
    let status = first.exit_within(Duration::from_secs(30)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", first.log());
    let s = f.inspector.stats(&q).await.unwrap();
    assert_eq!(s.counters.requeued, 2, "{s:#?}");
    println!(
        "graceful-stop drill: SIGTERM with --drain-timeout 500ms; both tasks running on the other worker {took:?} \
         after the signal (so about {:?} after the requeue)",
        took.saturating_sub(Duration::from_millis(500))
    );
    // Far below the 30 s lease a reclaim would have taken.
    assert!(took < Duration::from_secs(10), "{took:?}");
}
