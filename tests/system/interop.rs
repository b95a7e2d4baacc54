//! Cross-language: tasks produced by the Python example (on the `rivulet` package in
//! clients/python, through the engine's `rivulet_v1` functions) are processed by Rust handlers.

use std::process::Command;
use std::time::Duration;

use rivulet::testing::{Fixture, Recorder, fast_config, outstanding};
use rivulet::{Queue, Router, WorkerConfig};

fn python_with_redis() -> Result<(), String> {
    match Command::new("python3").args(["-c", "import redis"]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "redis-py is not installed ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("python3 is not runnable: {e}")),
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
struct Resize {
    width: u32,
    n: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_producer_tasks_are_processed_by_a_rust_handler() {
    if let Err(why) = python_with_redis() {
        eprintln!("SKIPPED python_producer_tasks_are_processed_by_a_rust_handler: {why}");
        return;
    }
    // A server of its own: the Python producer names the queue itself.
    let f = Fixture::start().await;
    let server = &f.server;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_producer.py");
    // The package from the source tree, whether or not it is installed.
    let package = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    // Producers in other languages call the functions a worker (or this) loads.
    f.inspector.install_functions().await.unwrap();
    for (priority, shards) in [("high", "2"), ("low", "2")] {
        let out = Command::new("python3")
            .env("PYTHONPATH", package)
            .args([script, "--url", &server.url(), "--queue", "py", "--kind", "resize"])
            .args([
                "--payload",
                r#"{"width": 640, "n": $i}"#,
                "--count",
                "3",
                "--priority",
                priority,
                "--shards",
                shards,
            ])
            .output()
            .expect("run the python producer");
        assert!(
            out.status.success(),
            "python producer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    }
    // A shard count that disagrees with the recorded layout would strand tasks on streams no
    // worker reads: refused with exit 2, nothing written.
    let out = Command::new("python3")
        .env("PYTHONPATH", package)
        .args([script, "--url", &server.url(), "--queue", "py", "--shards", "4"])
        .output()
        .expect("run the python producer");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("recorded with 2 shard(s)"));
    // The worker finds the layout the Python producer registered.
    let inspector = &f.inspector;
    let queue = inspector.queue("py").await.unwrap();
    assert_eq!(queue, Queue::new("py").unwrap().shards(2).unwrap());
    let recorder = Recorder::new();
    let router = recorder.route(Router::new(), "resize", |_ctx, _r: Resize| async { Ok(()) });
    // One slot, so one fetcher: strict priority holds per read (docs/architecture.md, "fetch"),
    // and with two fetchers the one that found `high` already taken could read and start
    // `low` while the other's `high` batch waits for a busy thread (seen under load in CI).
    let config = WorkerConfig {
        concurrency: 1,
        ..fast_config()
    };
    let w = f.start_worker_on(&queue, router, config);
    recorder.wait_for_runs(6, Duration::from_secs(10)).await;
    w.stop().await;
    let got: Vec<(String, Resize)> = recorder
        .runs()
        .iter()
        .map(|r| (r.priority.clone(), r.payload()))
        .collect();
    assert_eq!(got.len(), 6, "{got:?}");
    // Strict priority holds across languages too: all high before any low.
    assert!(got[..3].iter().all(|(p, _)| p == "high"), "{got:?}");
    let mut ns: Vec<u32> = got.iter().map(|(_, r)| r.n).collect();
    ns.sort();
    assert_eq!(ns, [0, 0, 1, 1, 2, 2]);
    assert!(got.iter().all(|(_, r)| r.width == 640));
    assert_eq!(outstanding(inspector, &queue).await, 0);
}
