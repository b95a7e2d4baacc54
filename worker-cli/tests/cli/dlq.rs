//! Dead letters at scale: listings carry a payload's size and start, never the payload;
//! `show` carries it once; the cap of the dead-letter stream counts what it drops; unknown
//! kinds get a grace period before they are dead-lettered.

use std::time::Duration;

use rivulet::testing::{Fixture, TempDir, wait_until};

use crate::common::{Supervisor, cli, cli_json, settled, wait_settled};

#[tokio::test]
async fn dlq_list_shows_a_payloads_size_and_start_and_show_gives_it_once() {
    let f = Fixture::start().await;
    let dir = TempDir::new("dlq-big");
    let big = dir.join("big.json");
    // A JSON string of 300,000 bytes, quotes included.
    std::fs::write(&big, format!("\"{}\"", "x".repeat(299_998))).unwrap();
    let big = big.display().to_string();
    cli_json(
        &f.server,
        &[
            "enqueue",
            "--queue",
            "big",
            "--kind",
            "fail",
            "--payload-file",
            &big,
            "--json",
        ],
    )
    .await;
    let _sup = Supervisor::start(&f.server, &["--queue", "big", "--max-attempts", "1"]);
    wait_settled(&f.inspector, "big", (0, 1), Duration::from_secs(60)).await;

    let out = cli(&f.server, &["dlq", "list", "--queue", "big", "--json"]).await;
    assert!(
        out.stdout.len() < 4_000,
        "a listing of one letter wrote {} bytes",
        out.stdout.len()
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &listed[0];
    assert_eq!(d["payload_size"], 300_000, "{d}");
    assert_eq!(d["payload_truncated"], true);
    assert_eq!(d["payload"].as_str().unwrap().len(), rivulet::DLQ_PREVIEW, "{d}");
    assert!(d["fields"].get("payload").is_none(), "the payload appears once: {d}");
    let table = cli(&f.server, &["dlq", "list", "--queue", "big"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("SIZE") && table.contains("293.0 KiB") && table.contains("\"xxxx"),
        "{table}"
    );
    assert!(table.len() < 2_000, "{} bytes of table", table.len());

    let id = d["id"].as_str().unwrap();
    let out = cli(&f.server, &["dlq", "show", "--queue", "big", "--id", id, "--json"]).await;
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["payload"].as_str().unwrap().len(), 300_000);
    assert_eq!(shown["payload_truncated"], false);
    assert!(shown["fields"].get("payload").is_none(), "{}", shown["fields"]);
    assert!(
        out.stdout.len() < 302_000,
        "show wrote {} bytes for a 300,000-byte payload",
        out.stdout.len()
    );
}

#[tokio::test]
async fn the_dlq_cap_counts_what_it_trims_and_stats_says_so() {
    let f = Fixture::start().await;
    cli_json(
        &f.server,
        &[
            "enqueue", "--queue", "capped", "--kind", "fail", "--count", "300", "--json",
        ],
    )
    .await;
    let _sup = Supervisor::start(
        &f.server,
        &["--queue", "capped", "--max-attempts", "1", "--dlq-maxlen", "10"],
    );
    wait_settled(&f.inspector, "capped", (0, 300), Duration::from_secs(120)).await;
    let stats = cli_json(&f.server, &["stats", "--queue", "capped", "--json"]).await;
    let stats = if stats.is_array() { stats[0].clone() } else { stats };
    let trimmed = stats["counters"]["dlq_trimmed"].as_u64().unwrap();
    let kept: u64 = stats["priorities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["dead_letters"].as_u64().unwrap())
        .sum();
    // MAXLEN ~ trims whole stream nodes (100 entries each), so some are kept past the cap;
    // what matters is that every dead letter is kept or counted.
    assert!(trimmed > 0, "{stats}");
    assert_eq!(kept + trimmed, 300, "{stats}");
    let table = cli(&f.server, &["stats", "--queue", "capped"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&format!("dlq_trimmed {trimmed}")), "{table}");
    // Not a terminal: no colour codes.
    assert!(!table.contains('\x1b'), "{table}");
}

#[tokio::test]
async fn an_unknown_kind_is_retried_through_its_grace_then_dead_lettered() {
    let f = Fixture::start().await;
    let _sup = Supervisor::start(&f.server, &["--queue", "grace", "--unknown-kind-grace", "1s"]);
    cli_json(&f.server, &["enqueue", "--queue", "grace", "--kind", "newer", "--json"]).await;
    wait_settled(&f.inspector, "grace", (0, 1), Duration::from_secs(60)).await;
    let q = f.inspector.queue("grace").await.unwrap();
    let s = f.inspector.stats(&q).await.unwrap();
    // Offered again every 100 ms (a tenth of the grace) until the grace ran out.
    assert!(s.counters.retried >= 2, "{s:#?}");
    let dead = cli_json(&f.server, &["dlq", "list", "--queue", "grace", "--json"]).await;
    assert_eq!(dead[0]["reason"], "unknown_kind", "{dead}");
    assert_eq!(dead[0]["attempt"], 0, "the grace does not use up attempts: {dead}");
}

#[tokio::test]
async fn a_newer_worker_takes_an_unknown_kind_within_the_grace() {
    let f = Fixture::start().await;
    let old = Supervisor::start(&f.server, &["--queue", "deploy", "--unknown-kind-grace", "20s"]);
    cli_json(
        &f.server,
        &["enqueue", "--queue", "deploy", "--kind", "resize", "--json"],
    )
    .await;
    // The old worker has met it and put it back.
    let passed = wait_until(Duration::from_secs(30), async || {
        let q = f.inspector.queue("deploy").await.unwrap();
        f.inspector.stats(&q).await.unwrap().counters.retried >= 1
    })
    .await;
    assert!(passed, "the old worker never retried the unknown kind");
    // The deploy replaces the old worker with a new one that serves the kind.
    drop(old);
    let _new = Supervisor::start(&f.server, &["--queue", "deploy", "--exec", "resize=true"]);
    wait_settled(&f.inspector, "deploy", (1, 0), Duration::from_secs(30)).await;
    assert_eq!(settled(&f.inspector, "deploy").await, (1, 0));
}
