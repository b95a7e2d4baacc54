//! The autoscaler for real: worker-cli processes scaled on a live backlog.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use rivulet::testing::{ChildGuard, Fixture, wait_until};
use rivulet::{Queue, Task};

mod common;
use common::worker_cli;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_rise_on_a_backlog_then_fall_to_min_without_losing_or_cutting_tasks() {
    let f = Fixture::with_queue(Queue::new("scale").unwrap()).await;
    // 60 tasks of 250 ms: one worker at concurrency 1 needs 15 s, far past a 3 s SLA.
    let tasks = (0..60).map(|_| Task::json("sleep", &serde_json::json!({"ms": 250})).unwrap());
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();

    // The actuator gives workers REDIS_URL: no URL (or password) on their command line.
    let worker_cmd = format!(
        "{} work --queue {{queue}} --concurrency 1 --lease 10s --log-format text",
        worker_cli().display()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoscaler"));
    cmd.args(["--redis-url", &f.server.url(), "--queue", "scale", "--sla", "normal=3s"])
        .args([
            "--min",
            "1",
            "--max",
            "5",
            "--interval",
            "200ms",
            "--cooldown",
            "2s",
            "--reversal-cooldown",
            "3s",
            "--smoothing",
            "2s",
        ])
        .args(["--worker-cmd", &worker_cmd, "--hard-deadline", "30s"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    let mut autoscaler = ChildGuard::spawn("autoscaler", &mut cmd);
    let inspector = &f.inspector;
    // While waiting for the backlog to drain, note the most workers seen at once.
    let most_live = AtomicUsize::new(0);
    let drained = wait_until(Duration::from_secs(90), async || {
        let live = inspector.workers().await.unwrap().len();
        most_live.fetch_max(live, Ordering::Relaxed);
        let c = f.stats().await.counters;
        c.done + c.dead == 60
    })
    .await;
    let max_live = most_live.load(Ordering::Relaxed);
    assert!(drained, "the backlog did not drain within 90 s");
    assert!(max_live >= 2, "workers never rose above {max_live}");
    let decision = inspector
        .decision(&f.queue)
        .await
        .unwrap()
        .expect("the autoscaler stores its decision");
    assert!(decision.contains("\"reason\""), "{decision}");

    // After the backlog: back down to --min, one step per cooldown.
    assert!(
        wait_until(Duration::from_secs(60), async || inspector
            .workers()
            .await
            .unwrap()
            .len()
            == 1)
        .await,
        "workers did not fall back to --min"
    );
    // Nothing lost, nothing cut short: every task done once, none requeued, reclaimed or dead.
    let c = f.stats().await.counters;
    assert_eq!(
        (c.enqueued, c.done, c.dead, c.requeued, c.reclaimed),
        (60, 60, 0, 0, 0),
        "{c:?}"
    );

    // SIGTERM: the autoscaler drains its workers and exits 0.
    autoscaler.signal(Signal::SIGTERM);
    let status = autoscaler
        .exit_within(Duration::from_secs(60))
        .await
        .expect("the autoscaler exits after SIGTERM");
    assert!(status.success(), "autoscaler exited with {status}");
    assert!(
        wait_until(Duration::from_secs(10), async || inspector
            .workers()
            .await
            .unwrap()
            .is_empty())
        .await,
        "workers left running after the autoscaler stopped"
    );
}
