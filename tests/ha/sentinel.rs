//! Behind Sentinel: the master is killed while a worker drains; the sentinels promote the
//! replica and the worker and the producer follow it. The enqueues were replicated before the
//! kill, so none may be lost; what the old master took in its last moments runs again
//! (counted, printed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rivulet::testing::node::caught_up;
use rivulet::testing::sentinel::SentinelSetup;
use rivulet::{Client, Inspector, Queue, RedisTarget, Router, Task, TaskContext, WorkerConfig};

use crate::support::{RunningWorker, Runs, fast_config, lost_and_twice, wait_drained, wait_runs};

const TASKS: u32 = 3000;
const AFTER: u32 = 200;
const CONCURRENCY: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_and_a_producer_follow_the_master_sentinel_promotes() {
    let mut setup = SentinelSetup::start();
    let target = RedisTarget::parse(&setup.url()).unwrap();
    let queue = Queue::new("sentinel").unwrap().shards(2).unwrap();
    let client = Client::new(&target).await.unwrap();
    let tasks: Vec<Task> = (0..TASKS).map(|i| Task::json("count", &i).unwrap()).collect();
    for chunk in tasks.chunks(1000) {
        client.enqueue_many(&queue, chunk.to_vec()).await.unwrap();
    }
    let (master, replica) = (setup.data[0].port(), setup.data[1].port());
    assert_eq!(setup.master_port(), Some(master));
    setup.wait(Duration::from_secs(10), "the replica to catch up", |_| {
        caught_up(master, replica)
    });

    let runs: Runs = Arc::default();
    let runs2 = runs.clone();
    let router = Router::new().route("count", move |_ctx: TaskContext, i: u32| {
        let runs = runs2.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            *runs.lock().unwrap().entry(i).or_default() += 1;
            Ok(())
        }
    });
    let config = WorkerConfig {
        concurrency: CONCURRENCY,
        lease: Duration::from_secs(2),
        ..fast_config()
    };
    let w = RunningWorker::start(&target, std::slice::from_ref(&queue), router, config);
    wait_runs(&runs, "a fifth of the tasks to run", Duration::from_secs(60), |n| {
        n as u32 >= TASKS / 5
    })
    .await;
    let killed_at = Instant::now();
    let done_at_kill = runs.lock().unwrap().len();
    setup.data[0].kill();
    setup.wait(Duration::from_secs(30), "the sentinels to promote the replica", |s| {
        s.master_port() == Some(replica)
    });
    let promoted = killed_at.elapsed();
    // More than the worker could have held when the master died (slots plus read-ahead).
    wait_runs(&runs, "the worker to run tasks again", Duration::from_secs(30), |n| {
        n > done_at_kill + 2 * CONCURRENCY
    })
    .await;
    let resumed = killed_at.elapsed();
    // The producer follows too: tasks enqueued after the failover run.
    for i in TASKS..TASKS + AFTER {
        let mut tries = 0;
        while let Err(e) = client.enqueue(&queue, Task::json("count", &i).unwrap()).await {
            tries += 1;
            assert!(tries < 50, "enqueue after the failover keeps failing: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let inspector = Inspector::new(&target).await.unwrap();
    wait_drained(&runs, &inspector, &queue, TASKS + AFTER, Duration::from_secs(90)).await;
    w.stop().await;
    let (lost, twice) = lost_and_twice(&runs, TASKS + AFTER);
    println!(
        "sentinel failover: {TASKS} tasks, {done_at_kill} done at the kill of master {master}; \
         replica {replica} promoted after {promoted:?}, draining again after {resumed:?}; lost {}, \
         run twice {twice}",
        lost.len()
    );
    assert!(lost.is_empty(), "replicated enqueues lost in the failover: {lost:?}");
}
