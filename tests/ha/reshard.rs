//! A busy shard's slot moves to another master while the queue drains and a producer keeps
//! enqueueing: clients follow `ASK` during the move and `MOVED` after it; nothing is lost and
//! nothing stays pending.

use std::sync::Arc;
use std::time::Duration;

use rivulet::keys::hash_slot;
use rivulet::testing::cluster::RedisCluster;
use rivulet::{Client, Inspector, Queue, Router, Task, TaskContext, WorkerConfig};

use crate::support::{RunningWorker, Runs, fast_config, lost_and_twice, wait_drained, wait_runs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_busy_shards_slot_loses_nothing_and_leaves_nothing_pending() {
    let cluster = RedisCluster::shared();
    let target = cluster.target();
    let name = format!("reshard-{:06x}", fastrand::u32(..0x100_0000));
    let queue = Queue::new(&name).unwrap().priorities(&["normal"]).unwrap();
    let keys = queue.shard("normal", 0);
    let slot = hash_slot(keys.stream.as_bytes());
    let client = Client::new(&target).await.unwrap();
    const FIRST: u32 = 3000;
    const MORE: u32 = 1000;
    let tasks: Vec<Task> = (0..FIRST).map(|i| Task::json("count", &i).unwrap()).collect();
    for chunk in tasks.chunks(500) {
        client.enqueue_many(&queue, chunk.to_vec()).await.unwrap();
    }
    let runs: Runs = Arc::default();
    let runs2 = runs.clone();
    let router = Router::new().route("count", move |_ctx: TaskContext, i: u32| {
        let runs = runs2.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            *runs.lock().unwrap().entry(i).or_default() += 1;
            Ok(())
        }
    });
    let config = WorkerConfig {
        concurrency: 8,
        ..fast_config()
    };
    let w = RunningWorker::start(&target, std::slice::from_ref(&queue), router, config);
    wait_runs(&runs, "the drain to start", Duration::from_secs(30), |n| n >= 200).await;

    // Enqueue more while the slot moves; an enqueue that fails is retried (at least once).
    let producer = tokio::spawn({
        let (client, queue) = (client.clone(), queue.clone());
        async move {
            let mut failures = 0;
            for i in FIRST..FIRST + MORE {
                while client.enqueue(&queue, Task::json("count", &i).unwrap()).await.is_err() {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            failures
        }
    });
    let from = cluster.master_for(&keys.stream);
    let to = cluster
        .topology()
        .into_iter()
        .find(|n| n.master && !n.failed && n.port != from.port)
        .unwrap();
    let moved = tokio::task::spawn_blocking(move || RedisCluster::shared().move_slot(slot, to.port))
        .await
        .unwrap()
        .expect("the slot moves");
    assert_eq!(cluster.master_for(&keys.stream).port, to.port, "slot {slot} moved");
    let producer_retries = producer.await.unwrap();

    let inspector = Inspector::new(&target).await.unwrap();
    wait_drained(&runs, &inspector, &queue, FIRST + MORE, Duration::from_secs(90)).await;
    w.stop().await;
    let (lost, twice) = lost_and_twice(&runs, FIRST + MORE);
    println!(
        "resharding: slot {slot} ({moved} keys) {} -> {} while draining; lost {}, run twice {twice}, \
         producer retries {producer_retries}",
        from.port,
        to.port,
        lost.len()
    );
    assert!(lost.is_empty(), "lost in the move: {lost:?}");
    assert!(inspector.pending(&queue, 10).await.unwrap().is_empty());
}
