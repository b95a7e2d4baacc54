//! The process actuator and signals, for real: a Ctrl-C to the autoscaler's process group
//! drains its workers (they are in their own groups, so the signal reaches them once, from the
//! autoscaler), and a SIGKILLed autoscaler takes its workers with it.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rivulet::Task;
use rivulet::testing::{ChildGuard, Fixture, RedisServer, wait_until};

mod common;
use common::worker_cli;

/// The autoscaler with the process actuator, leading its own process group (so that signals
/// sent to that group do not reach the test), stderr captured. The guard kills the whole
/// group if a test fails half way.
fn start_autoscaler(server: &RedisServer, queue: &str, min: &str) -> ChildGuard {
    // No Redis URL on the worker's command line: the actuator passes REDIS_URL.
    let worker_cmd = format!(
        "{} work --queue {{queue}} --concurrency 1 --lease 30s --log-format text",
        worker_cli().display()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoscaler"));
    cmd.args(["--redis-url", &server.url(), "--queue", queue, "--sla", "normal=30s"])
        .args(["--min", min, "--max", min, "--interval", "200ms"])
        .args(["--worker-cmd", &worker_cmd, "--hard-deadline", "30s"])
        .env("RUST_LOG", "info")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .process_group(0);
    ChildGuard::spawn("autoscaler", &mut cmd).kill_group_on_drop()
}

/// The autoscaler's exit status; after `timeout`, its group is killed and the test fails.
async fn exit_of(autoscaler: &mut ChildGuard, timeout: Duration) -> ExitStatus {
    match autoscaler.exit_within(timeout).await {
        Some(status) => status,
        None => {
            autoscaler.kill();
            panic!("the autoscaler did not exit within {timeout:?}:\n{}", autoscaler.log());
        }
    }
}

/// `/proc/<pid>/stat` fields after the command name: state, ppid, pgrp, ...
fn stat(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(s.rsplit_once(") ")?.1.split(' ').map(str::to_owned).collect())
}

/// Running (a zombie no reaper has collected yet counts as gone).
fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|f| f[0] != "Z" && f[0] != "X")
}

/// Whether `pid` is gone within a few seconds of its parent's exit (its last moments, and the
/// reaping, may trail the parent's exit by a little).
async fn worker_gone(pid: u32) -> bool {
    wait_until(Duration::from_secs(10), async || !alive(pid)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_to_the_autoscalers_group_drains_the_workers_and_the_task_completes() {
    let f = Fixture::with_queue(rivulet::Queue::new("ctrlc").unwrap()).await;
    f.client
        .enqueue(&f.queue, Task::json("sleep", &serde_json::json!({"ms": 3000})).unwrap())
        .await
        .unwrap();
    let mut autoscaler = start_autoscaler(&f.server, "ctrlc", "1");

    // The worker has the task in hand.
    let running = wait_until(Duration::from_secs(30), async || {
        f.stats().await.priorities.iter().map(|p| p.pending).sum::<u64>() == 1
    })
    .await;
    assert!(running, "the worker never took the task");
    let workers = f.inspector.workers().await.unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    let worker = workers[0].pid;
    // It is the autoscaler's child (the shell exec'd it) in a process group of its own.
    let fields = stat(worker).expect("worker is running");
    assert_eq!(fields[1], autoscaler.id().to_string(), "parent of the worker");
    assert_eq!(fields[2], worker.to_string(), "process group of the worker");

    // Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    autoscaler.signal_group(Signal::SIGINT);
    let status = exit_of(&mut autoscaler, Duration::from_secs(60)).await;
    let log = autoscaler.log();
    assert!(status.success(), "autoscaler exited with {status}\n{log}");
    assert!(!log.contains("second signal"), "the worker was signalled twice:\n{log}");
    assert!(worker_gone(worker).await, "worker {worker} still running");

    // The task ran to the end: done once, nothing requeued, reclaimed or left pending.
    let stats = f.stats().await;
    let c = stats.counters;
    assert_eq!(
        (c.enqueued, c.done, c.dead, c.requeued, c.reclaimed),
        (1, 1, 0, 0, 0),
        "{c:?}\n{log}"
    );
    assert_eq!(stats.priorities.iter().map(|p| p.pending).sum::<u64>(), 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_die_with_a_sigkilled_autoscaler() {
    let f = Fixture::start().await;
    let mut autoscaler = start_autoscaler(&f.server, "orphans", "2");
    let up = wait_until(Duration::from_secs(30), async || {
        f.inspector.workers().await.unwrap().len() == 2
    })
    .await;
    assert!(up, "two workers never came up:\n{}", autoscaler.log());
    let pids: Vec<u32> = f.inspector.workers().await.unwrap().iter().map(|w| w.pid).collect();
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");

    autoscaler.signal(Signal::SIGKILL);
    let status = exit_of(&mut autoscaler, Duration::from_secs(10)).await;
    assert!(!status.success());
    let gone = wait_until(Duration::from_secs(10), async || !pids.iter().any(|p| alive(*p))).await;
    if !gone {
        // In groups of their own: the guard's group kill does not reach them.
        for p in &pids {
            let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
        }
    }
    assert!(
        gone,
        "workers {pids:?} outlived the SIGKILLed autoscaler\n{}",
        autoscaler.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_kills_the_workers_at_once_and_exits_1() {
    let f = Fixture::with_queue(rivulet::Queue::new("twice").unwrap()).await;
    f.client
        .enqueue(
            &f.queue,
            Task::json("sleep", &serde_json::json!({"ms": 60_000})).unwrap(),
        )
        .await
        .unwrap();
    let mut autoscaler = start_autoscaler(&f.server, "twice", "1");
    let running = wait_until(Duration::from_secs(30), async || {
        f.inspector.workers().await.unwrap().iter().any(|w| w.in_flight == 1)
    })
    .await;
    assert!(running, "the worker never took the task");
    let worker = f.inspector.workers().await.unwrap()[0].pid;

    // The first drains (the task would take a minute), the second gives up on that.
    autoscaler.signal_group(Signal::SIGINT);
    // A sleep, because what is checked is that the first signal does not kill the worker.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(worker), "the first Ctrl-C must not kill the worker");
    autoscaler.signal_group(Signal::SIGINT);
    let status = exit_of(&mut autoscaler, Duration::from_secs(10)).await;
    let log = autoscaler.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("stopped at once by a second signal"), "{log}");
    assert!(worker_gone(worker).await, "worker {worker} still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_log_stays_json_through_its_workers_and_the_stored_decision_is_data() {
    let f = Fixture::start().await;
    // No --log-format on the worker's command line: it comes from the autoscaler's.
    let worker_cmd = format!("{} work --queue {{queue}} --concurrency 1", worker_cli().display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoscaler"));
    cmd.args(["--redis-url", &f.server.url(), "--queue", "jlog", "--sla", "normal=30s"])
        .args([
            "--min",
            "1",
            "--max",
            "1",
            "--interval",
            "200ms",
            "--log-format",
            "json",
        ])
        .args(["--worker-cmd", &worker_cmd, "--hard-deadline", "30s"])
        .env("RUST_LOG", "info")
        .env_remove("REDIS_URL")
        .env_remove("RIVULET_LOG_FORMAT")
        .stdout(Stdio::null())
        .process_group(0);
    let mut autoscaler = ChildGuard::spawn("autoscaler", &mut cmd).kill_group_on_drop();
    let queue = rivulet::Queue::new("jlog").unwrap();
    let decided = wait_until(Duration::from_secs(30), async || {
        f.inspector.workers().await.unwrap().len() == 1 && f.inspector.decision(&queue).await.unwrap().is_some()
    })
    .await;
    assert!(decided, "no worker or no decision:\n{}", autoscaler.log());

    // The decision as `worker-cli stats --json` shows it: numbers, not a sentence.
    let out = Command::new(worker_cli())
        .args(["stats", "--queue", "jlog", "--json"])
        .env("REDIS_URL", f.server.url())
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let decision = &stats[0]["autoscaler"];
    assert_eq!(decision["desired"], 1, "{decision}");
    assert!(decision["per_worker_rate_per_s"].is_number(), "{decision}");
    assert_eq!(decision["priorities"][1]["priority"], "normal", "{decision}");
    assert_eq!(decision["priorities"][1]["sla_ms"], 30_000, "{decision}");

    autoscaler.signal(Signal::SIGTERM);
    let status = exit_of(&mut autoscaler, Duration::from_secs(60)).await;
    let log = autoscaler.log();
    assert!(status.success(), "autoscaler exited with {status}\n{log}");
    let mut worker_lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{log}"));
        worker_lines += usize::from(event["message"] == "worker started");
    }
    assert_eq!(worker_lines, 1, "the worker's own lines are missing:\n{log}");
}
