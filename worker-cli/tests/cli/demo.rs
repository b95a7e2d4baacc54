//! `worker-cli demo`: a run on the given Redis that reports and leaves nothing behind.

use rivulet::testing::Fixture;
use serde_json::Value;

use crate::common::cli;

#[tokio::test]
async fn demo_reports_throughput_and_latency_and_cleans_up() {
    let f = Fixture::start().await;
    let out = cli(
        &f.server,
        &[
            "demo",
            "--tasks",
            "300",
            "--workers",
            "1",
            "--concurrency",
            "8",
            "--paced-tasks",
            "200",
            "--paced-rate",
            "1000",
            "--json",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let summary: Value = serde_json::from_str(&stdout).expect("demo --json prints JSON");
    assert_eq!(
        (summary["tasks"].clone(), summary["done"].clone()),
        (300.into(), 300.into())
    );
    assert_eq!(summary["private_redis"], false);
    let latency = &summary["start_latency_us"];
    assert_eq!(latency["samples"], 300);
    let (p50, p99, max) = (
        latency["p50"].as_u64().unwrap(),
        latency["p99"].as_u64().unwrap(),
        latency["max"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{latency}");
    assert!(summary["throughput_per_s"].as_f64().unwrap() > 0.0);
    // The paced phase is measured apart from the burst (whose latency is queueing behind it).
    let paced = &summary["paced"];
    assert_eq!(
        (paced["tasks"].clone(), paced["rate_per_s"].clone()),
        (200.into(), 1000.into())
    );
    assert_eq!(paced["start_latency_us"]["samples"], 200, "{paced}");

    // Nothing of the demo is left behind.
    let mut conn = f.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    assert!(keys.is_empty(), "left behind: {keys:?}");
    let queues = f.inspector.queues().await.unwrap();
    assert!(queues.is_empty(), "{queues:?}");
}
