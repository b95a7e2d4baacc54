//! A Redis Cluster (3 masters, 3 replicas, started here): every command takes a
//! `redis+cluster://` URL, and a plain `redis://` URL to one of its nodes is refused with a
//! message naming the URL to use (exit 2), instead of `MOVED` errors.

use rivulet::testing::cluster::RedisCluster;

use crate::common::{cli_env, cli_json_at};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_url_serves_every_command_and_a_plain_url_to_a_node_is_told_what_to_use() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    assert!(url.starts_with("redis+cluster://"), "{url}");

    // A queue of 6 shards spreads over the masters; enqueue, stats (summed over the shards,
    // wherever they live), work and stats again.
    let out = cli_env(Some(&url), &["queue", "create", "cq", "--shards", "6"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sent = cli_json_at(
        &url,
        &["enqueue", "--queue", "cq", "--kind", "noop", "--count", "40", "--json"],
    )
    .await;
    assert_eq!(sent["count"], 40);
    let waiting = |doc: &serde_json::Value| -> u64 {
        doc[0]["priorities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["waiting"].as_u64().unwrap())
            .sum()
    };
    let stats = cli_json_at(&url, &["stats", "--queue", "cq", "--json"]).await;
    assert_eq!(waiting(&stats), 40, "{stats}");
    let out = cli_env(
        Some(&url),
        &["work", "--queue", "cq", "--exec", "noop=true", "--max-tasks", "40"],
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats = cli_json_at(&url, &["stats", "--queue", "cq", "--json"]).await;
    assert_eq!(waiting(&stats), 0, "{stats}");
    assert_eq!(stats[0]["counters"]["done"], 40, "{stats}");

    // A plain URL to one master: refused at once, exit 2, naming redis+cluster://.
    let node = cluster.topology().into_iter().find(|n| n.master).unwrap();
    let plain = format!("redis://127.0.0.1:{}", node.port);
    for args in [
        &["stats"][..],
        &["enqueue", "--queue", "cq", "--kind", "noop"],
        &["work", "--queue", "cq"],
    ] {
        let out = cli_env(Some(&plain), args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("node of a Redis Cluster") && stderr.contains("redis+cluster://"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("Moved"), "{args:?}: {stderr}");
    }
}
