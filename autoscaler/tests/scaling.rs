//! The autoscaler for real: worker-cli processes scaled on a live backlog.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rivulet::testing::{RedisServer, wait_until};
use rivulet::{Client, Inspector, Queue, Task};

mod common;
use common::worker_cli;

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_rise_on_a_backlog_then_fall_to_min_without_losing_or_cutting_tasks() {
    let server = RedisServer::start();
    let queue = Queue::new("scale").unwrap();
    let client = Client::new(&server.client()).await.unwrap();
    // 60 tasks of 250 ms: one worker at concurrency 1 needs 15 s, far past a 3 s SLA.
    let tasks = (0..60).map(|_| Task::json("sleep", &serde_json::json!({"ms": 250})).unwrap());
    client.enqueue_many(&queue, tasks).await.unwrap();

    // The actuator gives workers REDIS_URL: no URL (or password) on their command line.
    let worker_cmd = format!(
        "{} work --queue {{queue}} --concurrency 1 --lease 10s --log-format text",
        worker_cli().display()
    );
    let autoscaler = Guard(
        Command::new(env!("CARGO_BIN_EXE_autoscaler"))
            .args(["--redis-url", &server.url(), "--queue", "scale", "--sla", "normal=3s"])
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
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the autoscaler"),
    );
    let inspector = Inspector::new(&server.client()).await.unwrap();
    // While waiting for the backlog to drain, note the most workers seen at once.
    let most_live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let drained = wait_until(Duration::from_secs(90), || {
        let (inspector, queue, most_live) = (inspector.clone(), queue.clone(), most_live.clone());
        async move {
            let live = inspector.workers().await.unwrap().len();
            most_live.fetch_max(live, std::sync::atomic::Ordering::Relaxed);
            let c = inspector.stats(&queue).await.unwrap().counters;
            c.done + c.dead == 60
        }
    })
    .await;
    let max_live = most_live.load(std::sync::atomic::Ordering::Relaxed);
    assert!(drained, "the backlog did not drain within 90 s");
    assert!(max_live >= 2, "workers never rose above {max_live}");
    let decision = inspector
        .decision(&queue)
        .await
        .unwrap()
        .expect("the autoscaler stores its decision");
    assert!(decision.contains("\"reason\""), "{decision}");

    // After the backlog: back down to --min, one step per cooldown.
    assert!(
        wait_until(Duration::from_secs(60), || {
            let inspector = inspector.clone();
            async move { inspector.workers().await.unwrap().len() == 1 }
        })
        .await,
        "workers did not fall back to --min"
    );
    // Nothing lost, nothing cut short: every task done once, none requeued, reclaimed or dead.
    let c = inspector.stats(&queue).await.unwrap().counters;
    assert_eq!(
        (c.enqueued, c.done, c.dead, c.requeued, c.reclaimed),
        (60, 60, 0, 0, 0),
        "{c:?}"
    );

    // SIGTERM: the autoscaler drains its workers and exits 0.
    let mut autoscaler = autoscaler;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(autoscaler.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let s = autoscaler.0.wait();
        std::mem::forget(autoscaler);
        s
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "autoscaler exited with {status}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let inspector = inspector.clone();
            async move { inspector.workers().await.unwrap().is_empty() }
        })
        .await,
        "workers left running after the autoscaler stopped"
    );
}
