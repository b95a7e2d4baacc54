//! The process actuator and signals, for real: a Ctrl-C to the autoscaler's process group
//! drains its workers (they are in their own groups, so the signal reaches them once, from the
//! autoscaler), and a SIGKILLed autoscaler takes its workers with it.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use rivulet::testing::{RedisServer, wait_until};
use rivulet::{Client, Inspector, Queue, Task};

mod common;
use common::worker_cli;

/// Kills the autoscaler's process group (it leads one) if a test fails half way.
struct Guard(Option<Child>);

impl Guard {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.as_ref().unwrap().id() as i32)
    }

    async fn wait(mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.0.take().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let waited = tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || child.wait())).await;
        match waited {
            Ok(status) => status.unwrap().unwrap(),
            Err(_) => {
                let _ = killpg(pid, Signal::SIGKILL);
                panic!("the autoscaler did not exit within {timeout:?}");
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// The autoscaler with the process actuator, leading its own process group (so that signals
/// sent to that group do not reach the test), stderr captured.
fn start_autoscaler(server: &RedisServer, queue: &str, min: &str) -> (Guard, std::thread::JoinHandle<String>) {
    // No Redis URL on the worker's command line: the actuator passes REDIS_URL.
    let worker_cmd = format!(
        "{} work --queue {{queue}} --concurrency 1 --lease 30s --log-format text",
        worker_cli().display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_autoscaler"))
        .args(["--redis-url", &server.url(), "--queue", queue, "--sla", "normal=30s"])
        .args(["--min", min, "--max", min, "--interval", "200ms"])
        .args(["--worker-cmd", &worker_cmd, "--hard-deadline", "30s"])
        .env("RUST_LOG", "info")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start the autoscaler");
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    (Guard(Some(child)), log)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_to_the_autoscalers_group_drains_the_workers_and_the_task_completes() {
    let server = RedisServer::start();
    let queue = Queue::new("ctrlc").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let inspector = Inspector::new(&server.client()).await.unwrap();
    client
        .enqueue(&queue, Task::json("sleep", &serde_json::json!({"ms": 3000})).unwrap())
        .await
        .unwrap();
    let (autoscaler, log) = start_autoscaler(&server, "ctrlc", "1");

    // The worker has the task in hand.
    let running = wait_until(Duration::from_secs(30), || {
        let (inspector, queue) = (inspector.clone(), queue.clone());
        async move {
            let s = inspector.stats(&queue).await.unwrap();
            s.priorities.iter().map(|p| p.pending).sum::<u64>() == 1
        }
    })
    .await;
    assert!(running, "the worker never took the task");
    let workers = inspector.workers().await.unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    let worker = workers[0].pid;
    // It is the autoscaler's child (the shell exec'd it) in a process group of its own.
    let fields = stat(worker).expect("worker is running");
    assert_eq!(fields[1], autoscaler.pid().to_string(), "parent of the worker");
    assert_eq!(fields[2], worker.to_string(), "process group of the worker");

    // Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    killpg(autoscaler.pid(), Signal::SIGINT).unwrap();
    let status = autoscaler.wait(Duration::from_secs(60)).await;
    let log = log.join().unwrap();
    assert!(status.success(), "autoscaler exited with {status}\n{log}");
    assert!(!log.contains("second signal"), "the worker was signalled twice:\n{log}");
    assert!(!alive(worker), "worker {worker} still running");

    // The task ran to the end: done once, nothing requeued, reclaimed or left pending.
    let stats = inspector.stats(&queue).await.unwrap();
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
    let server = RedisServer::start();
    let inspector = Inspector::new(&server.client()).await.unwrap();
    let (autoscaler, log) = start_autoscaler(&server, "orphans", "2");
    let up = wait_until(Duration::from_secs(30), || {
        let inspector = inspector.clone();
        async move { inspector.workers().await.unwrap().len() == 2 }
    })
    .await;
    assert!(up, "two workers never came up");
    let pids: Vec<u32> = inspector.workers().await.unwrap().iter().map(|w| w.pid).collect();
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");

    kill(autoscaler.pid(), Signal::SIGKILL).unwrap();
    let status = autoscaler.wait(Duration::from_secs(10)).await;
    assert!(!status.success());
    let gone = wait_until(Duration::from_secs(10), || {
        let pids = pids.clone();
        async move { !pids.iter().any(|p| alive(*p)) }
    })
    .await;
    if !gone {
        // They hold the log pipe open.
        for p in &pids {
            let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
        }
    }
    let log = log.join().unwrap();
    assert!(gone, "workers {pids:?} outlived the SIGKILLed autoscaler\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_kills_the_workers_at_once_and_exits_1() {
    let server = RedisServer::start();
    let queue = Queue::new("twice").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    let inspector = Inspector::new(&server.client()).await.unwrap();
    client
        .enqueue(&queue, Task::json("sleep", &serde_json::json!({"ms": 60_000})).unwrap())
        .await
        .unwrap();
    let (autoscaler, log) = start_autoscaler(&server, "twice", "1");
    let running = wait_until(Duration::from_secs(30), || {
        let inspector = inspector.clone();
        async move { inspector.workers().await.unwrap().iter().any(|w| w.in_flight == 1) }
    })
    .await;
    assert!(running, "the worker never took the task");
    let worker = inspector.workers().await.unwrap()[0].pid;

    // The first drains (the task would take a minute), the second gives up on that.
    killpg(autoscaler.pid(), Signal::SIGINT).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(worker), "the first Ctrl-C must not kill the worker");
    killpg(autoscaler.pid(), Signal::SIGINT).unwrap();
    let status = autoscaler.wait(Duration::from_secs(10)).await;
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("stopped at once by a second signal"), "{log}");
    assert!(!alive(worker), "worker {worker} still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_the_autoscaler_and_the_workers_it_starts_use_its_tls_flags() {
    let server = rivulet::testing::tls::TlsRedis::start_mutual();
    let redis = server.client();
    let queue = Queue::new("tls-scaled").unwrap();
    Client::new(&redis)
        .await
        .unwrap()
        .enqueue_many(&queue, (0..10).map(|_| Task::json("noop", &()).unwrap()))
        .await
        .unwrap();
    let (ca, (cert, key)) = (server.certs().ca(), server.certs().client());
    // The worker command names no TLS flag: the actuator hands REDIS_TLS_* down.
    let worker_cmd = format!("{} work --queue {{queue}} --log-format text", worker_cli().display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_autoscaler"))
        .args(["--redis-url", &server.url(), "--queue", "tls-scaled", "--sla", "normal=30s"])
        .args(["--min", "1", "--max", "1", "--interval", "200ms"])
        .args(["--worker-cmd", &worker_cmd, "--hard-deadline", "30s"])
        .arg("--tls-ca-file")
        .arg(&ca)
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .env("RUST_LOG", "info")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start the autoscaler");
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let autoscaler = Guard(Some(child));
    let inspector = Inspector::new(&redis).await.unwrap();
    let done = wait_until(Duration::from_secs(60), || {
        let (inspector, queue) = (inspector.clone(), queue.clone());
        async move { inspector.stats(&queue).await.unwrap().counters.done == 10 }
    })
    .await;
    killpg(autoscaler.pid(), Signal::SIGINT).unwrap();
    let status = autoscaler.wait(Duration::from_secs(60)).await;
    let log = log.join().unwrap();
    assert!(done, "the worker started over TLS did not run the tasks:\n{log}");
    assert!(status.success(), "autoscaler exited with {status}\n{log}");
}
