//! A Redis Cluster over TLS (`rediss+cluster://`, the cluster bus and replication on TLS too):
//! tasks spread over its masters run once, and a CA that did not sign the nodes' certificates
//! is refused with an error that says so.

use std::sync::Arc;
use std::time::Duration;

use rivulet::testing::cluster::RedisCluster;
use rivulet::{Client, Inspector, Queue, RedisTarget, Task, TlsOptions};

use crate::support::{RunningWorker, Runs, counting_router, fast_config, lost_and_twice, wait_drained};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_runs_tasks_on_every_master_and_refuses_a_wrong_ca() {
    let cluster = RedisCluster::start_tls();
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let target = cluster.target();
    let queue = Queue::new("tls-cluster").unwrap().shards(6).unwrap();
    let client = Client::new(&target).await.unwrap();
    let tasks: Vec<Task> = (0..300u32).map(|i| Task::json("count", &i).unwrap()).collect();
    client.enqueue_many(&queue, tasks).await.unwrap();
    let runs: Runs = Arc::default();
    let w = RunningWorker::start(
        &target,
        std::slice::from_ref(&queue),
        counting_router(&runs),
        fast_config(),
    );
    let inspector = Inspector::new(&target).await.unwrap();
    wait_drained(&runs, &inspector, &queue, 300, Duration::from_secs(60)).await;
    w.stop().await;
    let (lost, twice) = lost_and_twice(&runs, 300);
    assert!(lost.is_empty() && twice == 0, "lost {lost:?}, twice {twice}");

    // Trusting another CA: the handshake fails, and the error says it is the certificate.
    let wrong = TlsOptions {
        ca_file: Some(cluster.certs().unwrap().other_ca()),
        ..TlsOptions::default()
    };
    let err = Client::new(RedisTarget::with_tls(&url, &wrong).unwrap())
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("certificate") || text.contains("UnknownIssuer"), "{text}");
    // TLS options on a plain cluster URL are a mistake, not silently ignored.
    let plain = url.replace("rediss+cluster://", "redis+cluster://");
    let err = RedisTarget::with_tls(&plain, &cluster.tls_options()).unwrap_err();
    assert!(err.to_string().contains("rediss+cluster://"), "{err}");
}
