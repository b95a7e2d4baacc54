//! The supervisor and its worker processes: children that register, crash and are replaced,
//! drain on SIGTERM, die with a SIGKILLed supervisor, and are recycled by --max-tasks and
//! --max-memory; a standalone `work` process.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rivulet::testing::{ChildGuard, Fixture, hostname, wait_until};

use crate::common::{
    BIN, Supervisor, children_of, cli, cli_json, enqueue_sleeps, live_workers, running, settled, wait_live_workers,
    wait_settled, workers_json,
};

#[tokio::test]
async fn four_workers_run_as_children_and_list_themselves() {
    let f = Fixture::start().await;
    let mut sup = Supervisor::start(&f.server, &["--workers", "4", "--concurrency", "2", "--queue", "four"]);
    wait_live_workers(&f.inspector, "four", 4, Duration::from_secs(60)).await;
    let listed = workers_json(&f.server, "four").await;
    assert_eq!(listed.len(), 4, "4 live workers: {listed:#?}");
    let children = sup.children();
    let pids: HashSet<u32> = listed.iter().map(|w| w["pid"].as_u64().unwrap() as u32).collect();
    assert_eq!(
        pids, children,
        "the listed workers are exactly the supervisor's children"
    );
    for w in &listed {
        assert_eq!(w["host"], hostname(), "{w}");
        assert_eq!(w["queues"], serde_json::json!(["four"]), "{w}");
        assert_eq!(w["concurrency"], 2, "{w}");
    }

    sup.signal(Signal::SIGTERM);
    let status = sup.exit_within(Duration::from_secs(30)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "clean exit after SIGTERM");
    assert!(children.iter().all(|p| !running(*p)), "no child left after the drain");
    let after = workers_json(&f.server, "four").await;
    assert!(after.is_empty(), "workers deregistered: {after:#?}");
    assert!(sup.log().contains("supervisor stopped"), "{}", sup.log());
}

#[tokio::test]
async fn a_child_killed_with_sigkill_is_restarted_and_every_task_completes() {
    let f = Fixture::start().await;
    let queue = "crashy";
    let first = enqueue_sleeps(&f.server, queue, 300, 20).await;
    assert_eq!(first["count"], 20);
    let mut sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "2",
            "--concurrency",
            "4",
            "--lease",
            "1s",
            "--queue",
            queue,
        ],
    );
    let q = f.inspector.queue(queue).await.unwrap();

    // Kill a child while it holds tasks.
    let both_busy = wait_until(Duration::from_secs(60), async || {
        let pending = f.inspector.pending(&q, 100).await.unwrap();
        let holders: HashSet<&str> = pending.iter().map(|p| p.consumer.as_str()).collect();
        holders.len() == 2
    })
    .await;
    assert!(both_busy, "2 children never had tasks in flight at once");
    let before = sup.children();
    assert_eq!(before.len(), 2, "{before:?}");
    let victim = *before.iter().next().unwrap();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();

    // More work arrives while the child is down.
    let during = enqueue_sleeps(&f.server, queue, 50, 20).await;
    assert_eq!(during["count"], 20);

    let replaced = wait_until(Duration::from_secs(30), async || {
        let now = sup.children();
        now.len() == 2 && !now.contains(&victim)
    })
    .await;
    assert!(replaced, "no replacement child: {:?}", sup.children());
    wait_settled(&f.inspector, queue, (40, 0), Duration::from_secs(90)).await;
    let stats = f.inspector.stats(&q).await.unwrap();
    assert!(
        stats.counters.reclaimed > 0,
        "the killed child's tasks were taken over: {stats:#?}"
    );
    assert!(
        sup.log().contains("worker process crashed; restarting"),
        "{}",
        sup.log()
    );
}

#[tokio::test]
async fn sigterm_drains_every_child_within_the_drain_timeout_and_exits_zero() {
    let f = Fixture::start().await;
    let queue = "draining";
    enqueue_sleeps(&f.server, queue, 1500, 4).await;
    enqueue_sleeps(&f.server, queue, 60000, 2).await;
    let drain = Duration::from_secs(3);
    let mut sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "2",
            "--concurrency",
            "3",
            "--drain-timeout",
            "3s",
            "--queue",
            queue,
        ],
    );
    let q = f.inspector.queue(queue).await.unwrap();
    let in_flight = wait_until(Duration::from_secs(60), async || {
        f.inspector.pending(&q, 100).await.unwrap().len() == 6
    })
    .await;
    assert!(in_flight, "the 6 tasks were never all in flight");
    let children = sup.children();
    assert_eq!(children.len(), 2);

    let t0 = Instant::now();
    sup.signal(Signal::SIGTERM);
    let status = sup.exit_within(drain + Duration::from_secs(20)).await;
    let took = t0.elapsed();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit 0 after a drain (took {took:?})"
    );
    assert!(
        took < drain + Duration::from_secs(5),
        "the drain took {took:?}, more than the drain timeout {drain:?} allows"
    );
    assert!(children.iter().all(|p| !running(*p)), "children stopped");

    // The short tasks finished; the long ones went back to the stream, ready to run at once.
    let s = f.inspector.stats(&q).await.unwrap();
    let waiting: u64 = s.priorities.iter().map(|p| p.waiting).sum();
    let pending: u64 = s.priorities.iter().map(|p| p.pending).sum();
    assert_eq!(
        (s.counters.done, s.counters.requeued, waiting, pending, s.counters.dead),
        (4, 2, 2, 0, 0),
        "{s:#?}"
    );
}

#[tokio::test]
async fn children_die_with_a_supervisor_killed_by_sigkill() {
    let f = Fixture::start().await;
    let mut sup = Supervisor::start(
        &f.server,
        &["--workers", "3", "--concurrency", "1", "--queue", "orphans"],
    );
    // Registered workers have passed their start-up (the death signal is requested first).
    wait_live_workers(&f.inspector, "orphans", 3, Duration::from_secs(60)).await;
    let children = sup.children();
    assert_eq!(children.len(), 3);

    sup.signal(Signal::SIGKILL);
    sup.exit_within(Duration::from_secs(10))
        .await
        .expect("the supervisor died");
    let gone = wait_until(Duration::from_secs(10), async || children.iter().all(|p| !running(*p))).await;
    let alive: Vec<u32> = children.iter().copied().filter(|p| running(*p)).collect();
    assert!(gone, "children outlived the supervisor: {alive:?}");
}

#[tokio::test]
async fn max_tasks_and_max_memory_recycle_children() {
    let f = Fixture::start().await;
    children_are_recycled_after_max_tasks(&f).await;
    children_are_recycled_above_max_memory_with_one_warning(&f).await;
}

/// One child at a time, four tasks each: twelve tasks need at least three children.
async fn children_are_recycled_after_max_tasks(f: &Fixture) {
    // Tasks long enough that the task count is checked between them.
    enqueue_sleeps(&f.server, "recycle", 100, 12).await;
    let mut sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "1",
            "--concurrency",
            "1",
            "--max-tasks",
            "4",
            "--queue",
            "recycle",
        ],
    );
    let mut pids = HashSet::new();
    let done = wait_until(Duration::from_secs(60), async || {
        pids.extend(sup.children());
        settled(&f.inspector, "recycle").await == (12, 0)
    })
    .await;
    assert!(
        done,
        "12 tasks not done by recycled children: {:?}",
        settled(&f.inspector, "recycle").await
    );
    assert!(sup.log().contains("worker process recycled"), "{}", sup.log());
    assert!(pids.len() >= 2, "children were replaced: {pids:?}");
}

/// Any worker process is above 1 KiB: it is drained and replaced again and again, and the
/// supervisor says (once) that the limit looks too low.
async fn children_are_recycled_above_max_memory_with_one_warning(f: &Fixture) {
    let mut sup = Supervisor::start(
        &f.server,
        &["--workers", "1", "--max-memory", "1KiB", "--queue", "memory"],
    );
    let replaced = wait_until(Duration::from_secs(60), async || {
        let log = sup.log();
        log.matches("above --max-memory").count() >= 2 && log.matches("worker process recycled").count() >= 2
    })
    .await;
    assert!(
        replaced,
        "two children were not replaced for their memory:\n{}",
        sup.log()
    );
    let log = sup.log();
    assert_eq!(
        log.matches("--max-memory 1.0 KiB looks too low").count(),
        1,
        "warned once: {log}"
    );
    sup.signal(Signal::SIGTERM);
    let status = sup.exit_within(Duration::from_secs(30)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[tokio::test]
async fn a_closed_stderr_does_not_stop_a_drain() {
    let f = Fixture::start().await;
    // `worker-cli ... 2>&1 | head -1`: the reader of the logs goes away early.
    let child = Command::new(BIN)
        .args(["--workers", "1", "--queue", "quiet-logs"])
        .env("REDIS_URL", f.server.url())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker-cli starts");
    let mut sup = ChildGuard::adopt("worker-cli", child);
    drop(sup.child().stderr.take());
    let registered = wait_until(Duration::from_secs(60), async || {
        live_workers(&f.inspector, "quiet-logs").await == 1
    })
    .await;
    let children = children_of(sup.id());
    let _ = kill(sup.pid(), Signal::SIGTERM);
    let status = sup.exit_within(Duration::from_secs(30)).await;
    if status.is_none() {
        // The guard kills the supervisor; its children are in groups of their own.
        sup.kill();
        for pid in &children {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
    assert!(registered, "the worker registered");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "drained and exited 0 with stderr closed"
    );
}

#[tokio::test]
async fn max_tasks_stops_fetching_at_the_limit_and_loses_nothing() {
    let f = Fixture::start().await;
    let (total, max, concurrency) = (200u64, 20u64, 4u64);
    let count = total.to_string();
    cli_json(
        &f.server,
        &[
            "enqueue", "--queue", "capped", "--kind", "noop", "--count", &count, "--json",
        ],
    )
    .await;
    // A standalone worker (no supervisor): it exits 0 once it has reached the limit. No-op
    // tasks finish at once, so a limit checked now and then would let it run far past M.
    let out = cli(
        &f.server,
        &[
            "work",
            "--queue",
            "capped",
            "--concurrency",
            &concurrency.to_string(),
            "--max-tasks",
            &max.to_string(),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("reached --max-tasks"), "{stderr}");

    let q = f.inspector.queue("capped").await.unwrap();
    let s = f.inspector.stats(&q).await.unwrap();
    let waiting: u64 = s.priorities.iter().map(|p| p.waiting).sum();
    let pending: u64 = s.priorities.iter().map(|p| p.pending).sum();
    let done = s.counters.done;
    // The engine reserves the budget with the slots: it takes exactly M, and the rest waits
    // for the next worker.
    assert!(
        (max..max + concurrency).contains(&done),
        "started {done} tasks with --max-tasks {max} --concurrency {concurrency}: {s:#?}"
    );
    assert_eq!(done, max, "exactly --max-tasks: {s:#?}");
    assert_eq!(
        (waiting, pending, s.counters.dead, s.counters.requeued),
        (total - done, 0, 0, 0),
        "nothing lost: {s:#?}"
    );
}
