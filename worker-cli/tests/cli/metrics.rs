//! `--metrics-addr`: the supervisor's one endpoint for its box adds its worker processes'
//! numbers up (and keeps a killed one's), a standalone `work` process serves its own, the
//! probes follow Redis, and a bad address or a bind beyond loopback without a token is refused
//! with exit 2.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rivulet::Task;
use rivulet::testing::{ChildGuard, Fixture, http_get, metric_sum as sum, wait_until};

use crate::common::{BIN, Supervisor, cli_fails, wait_settled};

/// A loopback port nothing listens on (the test binds it again at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get(port, path, None)
}

fn metrics(port: u16) -> String {
    let (code, body) = get(port, "/metrics").expect("the metrics endpoint answers");
    assert_eq!(code, 200, "{body}");
    body
}

async fn wait_ready(port: u16, what: &str) {
    let ready = wait_until(Duration::from_secs(60), async || {
        get(port, "/readyz").is_some_and(|(code, _)| code == 200)
    })
    .await;
    assert!(ready, "{what} never ready: {:?}", get(port, "/readyz"));
}

#[tokio::test]
async fn the_supervisor_adds_up_its_worker_processes_and_counts_a_killed_ones_restart() {
    let f = Fixture::shared(rivulet::Queue::new("metrics").unwrap()).await;
    let q = f.queue.name().as_str().to_owned();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "2",
            "--concurrency",
            "4",
            "--queue",
            &q,
            "--max-attempts",
            "2",
            "--retry-base",
            "10ms",
            "--metrics-addr",
            &addr,
        ],
    );
    wait_ready(port, "the supervisor").await;
    let tasks = (0..20).map(|_| Task::bytes("noop", "x"));
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    let failing = Task::bytes("fail", "x").max_attempts(2).priority("high");
    f.client.enqueue(&f.queue, failing).await.unwrap();
    wait_settled(&f.inspector, &q, (20, 1), Duration::from_secs(60)).await;

    let body = metrics(port);
    let queue = ("queue", q.as_str());
    let noop = [queue, ("priority", "normal"), ("kind", "noop")];
    let fail = [queue, ("priority", "high"), ("kind", "fail")];
    let checks = [
        ("rivulet_tasks_started_total", &[queue][..], 22.0),
        ("rivulet_tasks_succeeded_total", &noop[..], 20.0),
        ("rivulet_tasks_succeeded_total", &[queue][..], 20.0),
        ("rivulet_tasks_failed_total", &fail[..], 2.0),
        ("rivulet_tasks_retried_total", &fail[..], 1.0),
        (
            "rivulet_tasks_dead_total",
            &[queue, ("kind", "fail"), ("reason", "exhausted")][..],
            1.0,
        ),
        ("rivulet_tasks_dead_total", &[queue][..], 1.0),
        ("rivulet_task_wait_seconds_count", &[queue][..], 22.0),
        (
            "rivulet_task_wait_seconds_count",
            &[queue, ("priority", "high")][..],
            2.0,
        ),
        ("rivulet_task_run_seconds_count", &[("kind", "noop")][..], 20.0),
        ("rivulet_worker_slots", &[][..], 8.0),
        ("rivulet_workers_running", &[][..], 2.0),
        ("rivulet_tasks_in_flight", &[][..], 0.0),
        ("rivulet_worker_processes_target", &[][..], 2.0),
        ("rivulet_worker_processes", &[("state", "running")][..], 2.0),
        ("rivulet_worker_process_restarts_total", &[("reason", "crash")][..], 0.0),
        ("rivulet_worker_process_starts_total", &[][..], 2.0),
    ];
    for (name, labels, want) in checks {
        assert_eq!(sum(&body, name, labels), want, "{name} {labels:?} in\n{body}");
    }
    // Task ids never become labels; kinds are the served ones or `_other`.
    assert!(!body.contains("task_id"), "{body}");

    // A killed child is restarted and counted; what it counted stays in the totals.
    let victim = *sup.children().iter().next().unwrap();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let restarted = wait_until(Duration::from_secs(60), async || {
        let body = metrics(port);
        sum(&body, "rivulet_worker_process_restarts_total", &[("reason", "crash")]) == 1.0
            && sum(&body, "rivulet_workers_running", &[]) == 2.0
    })
    .await;
    assert!(restarted, "no restart counted: {}", metrics(port));
    let body = metrics(port);
    assert_eq!(sum(&body, "rivulet_tasks_succeeded_total", &[queue]), 20.0, "{body}");
    assert_eq!(sum(&body, "rivulet_task_wait_seconds_count", &[queue]), 22.0, "{body}");
    assert_eq!(sum(&body, "rivulet_worker_process_starts_total", &[]), 3.0, "{body}");
    wait_ready(port, "the supervisor after the restart").await;
    assert_eq!(get(port, "/healthz").map(|(c, _)| c), Some(200));
    drop(sup);
}

#[tokio::test]
async fn a_work_process_serves_its_metrics_and_is_unready_while_redis_is_down() {
    let mut f = Fixture::start().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "work",
        "--queue",
        "test",
        "--metrics-addr",
        &addr,
        "--metrics-token",
        "t0ken",
    ])
    .env("REDIS_URL", f.server.url())
    .env("RUST_LOG", "info")
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    let _worker = ChildGuard::spawn("worker-cli work", &mut cmd);
    wait_ready(port, "the worker").await;
    f.client
        .enqueue_many(&f.queue, (0..5).map(|_| Task::bytes("noop", "x")))
        .await
        .unwrap();
    f.wait_done(5, Duration::from_secs(60)).await;

    // The token guards /metrics, not the probes.
    assert_eq!(get(port, "/metrics").map(|(c, _)| c), Some(401));
    let body = http_get(port, "/metrics", Some("t0ken")).unwrap().1;
    assert_eq!(
        sum(&body, "rivulet_tasks_succeeded_total", &[("kind", "noop")]),
        5.0,
        "{body}"
    );
    assert_eq!(sum(&body, "rivulet_task_wait_seconds_count", &[]), 5.0, "{body}");
    assert_eq!(sum(&body, "rivulet_workers_redis_down", &[]), 0.0, "{body}");

    f.server.owned_mut().kill();
    let unready = wait_until(Duration::from_secs(60), async || {
        get(port, "/readyz").is_some_and(|(code, body)| code == 503 && body.contains("cannot reach Redis"))
    })
    .await;
    assert!(unready, "still ready with Redis down: {:?}", get(port, "/readyz"));
    assert_eq!(get(port, "/healthz").map(|(c, _)| c), Some(200), "alive all along");
    let body = http_get(port, "/metrics", Some("t0ken")).unwrap().1;
    assert_eq!(sum(&body, "rivulet_workers_redis_down", &[]), 1.0, "{body}");
    assert!(sum(&body, "rivulet_redis_errors_total", &[]) >= 1.0, "{body}");

    f.server.owned_mut().restart();
    wait_ready(port, "the worker after Redis came back").await;
    let body = http_get(port, "/metrics", Some("t0ken")).unwrap().1;
    assert!(sum(&body, "rivulet_redis_outage_seconds_total", &[]) > 0.0, "{body}");
    assert_eq!(sum(&body, "rivulet_workers_redis_down", &[]), 0.0, "{body}");
}

#[tokio::test]
async fn a_bad_metrics_addr_is_a_usage_error() {
    let f = Fixture::shared(rivulet::Queue::new("metrics-usage").unwrap()).await;
    let q = f.queue.name().as_str().to_owned();
    let e = cli_fails(&f.server, &["work", "-q", &q, "--metrics-addr", "nope"], 2).await;
    assert!(e.contains("--metrics-addr"), "{e}");
    // Beyond loopback without a token: refused, as the dashboard does; never bound.
    for args in [
        &["work", "-q", &q, "--metrics-addr", "0.0.0.0:0"][..],
        &["--workers", "1", "-q", &q, "--metrics-addr", "0.0.0.0:0"][..],
    ] {
        let e = cli_fails(&f.server, args, 2).await;
        assert!(e.contains("beyond loopback") && e.contains("--metrics-token"), "{e}");
    }
    // A busy port names the flag.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let e = cli_fails(&f.server, &["work", "-q", &q, "--metrics-addr", &addr], 2).await;
    assert!(e.contains("cannot listen on --metrics-addr"), "{e}");
}
