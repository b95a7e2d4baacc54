//! A master of the cluster is killed while a queue drains: the cluster promotes its replica,
//! the worker carries on.
//!
//! What is asserted, and why it is all that can be: the enqueues were replicated before the
//! kill (the test waits for the replicas' offsets), so with Redis's asynchronous replication
//! the promoted replica has every task; what the old master took in its last moments (reads
//! into the PEL, settles) may be missing on the new one, so those tasks run again, counted
//! and printed, never asserted to be zero. Nothing may be lost and nothing may stay pending.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rivulet::keys::shard_for;
use rivulet::testing::cluster::RedisCluster;
use rivulet::{Client, Inspector, Queue, Router, Task, TaskContext, WorkerConfig};

use crate::support::{RunningWorker, Runs, fast_config, lost_and_twice, outstanding, wait_for};

const TASKS: u32 = 5000;
const SHARDS: u16 = 3;
const CONCURRENCY: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_master_while_draining_loses_nothing_and_draining_resumes() {
    let mut cluster = RedisCluster::start();
    let target = cluster.target();
    let queue = Queue::new("failover")
        .unwrap()
        .priorities(&["normal"])
        .unwrap()
        .shards(SHARDS)
        .unwrap();
    let client = Client::new(&target).await.unwrap();
    let tasks: Vec<Task> = (0..TASKS).map(|i| Task::json("count", &i).unwrap()).collect();
    let mut ids = Vec::new();
    for chunk in tasks.chunks(1000) {
        ids.extend(client.enqueue_many(&queue, chunk.to_vec()).await.unwrap());
    }
    // The master holding shard 0, and every acknowledged enqueue on its replica.
    let victim = cluster.master_for(&queue.shard("normal", 0).stream);
    cluster.wait_replicated(victim.port, Duration::from_secs(10));

    let runs: Runs = Arc::default();
    // When each task of shard 0 finished: shows when that shard drains again.
    let shard0_done: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let (runs2, done2) = (runs.clone(), shard0_done.clone());
    let router = Router::new().route("count", move |ctx: TaskContext, i: u32| {
        let (runs, done) = (runs2.clone(), done2.clone());
        async move {
            // Slow enough that the kill lands mid-drain.
            tokio::time::sleep(Duration::from_millis(2)).await;
            *runs.lock().unwrap().entry(i).or_default() += 1;
            if shard_for(ctx.id.as_str(), SHARDS) == 0 {
                done.lock().unwrap().push(Instant::now());
            }
            Ok(())
        }
    });
    let config = WorkerConfig {
        concurrency: CONCURRENCY,
        // Entries the old master handed out but the new one never heard settled are
        // reclaimed after this.
        lease: Duration::from_secs(2),
        ..fast_config()
    };
    let w = RunningWorker::start(&target, std::slice::from_ref(&queue), router, config);
    wait_for("a fifth of the tasks to run", Duration::from_secs(60), || {
        let n = runs.lock().unwrap().len();
        async move { n as u32 >= TASKS / 5 }
    })
    .await;
    let killed_at = Instant::now();
    let done_before = runs.lock().unwrap().len();
    cluster.kill(victim.port);
    let before_kill = shard0_done.lock().unwrap().len();
    // Shard 0 drains again once more of its tasks finish than the worker could have held
    // when its master died (its handler slots plus as many read ahead).
    let held = 2 * CONCURRENCY;
    wait_for("shard 0 to drain again", Duration::from_secs(60), || {
        let n = shard0_done.lock().unwrap().iter().filter(|t| **t > killed_at).count();
        async move { n > held }
    })
    .await;
    let resumed = *shard0_done
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > killed_at)
        .nth(held)
        .unwrap()
        - killed_at;
    wait_for("every task to run", Duration::from_secs(90), || {
        let n = runs.lock().unwrap().len();
        async move { n as u32 == TASKS }
    })
    .await;
    let all_done = killed_at.elapsed();
    let inspector = Inspector::new(&target).await.unwrap();
    // Reruns of what the new master never heard settled finish too: nothing stays pending.
    wait_for("nothing outstanding", Duration::from_secs(30), || {
        let (inspector, queue) = (inspector.clone(), queue.clone());
        async move { outstanding(&inspector, &queue).await == 0 }
    })
    .await;
    w.stop().await;
    let (lost, twice) = lost_and_twice(&runs, TASKS);
    let topo = cluster.topology();
    let promoted = topo
        .iter()
        .find(|n| n.master && !n.failed && n.master_id.is_none() && n.port != victim.port && n.slots == victim.slots)
        .map(|n| n.port);
    println!(
        "cluster failover: {TASKS} tasks, {done_before} done at the kill of master {} (shard 0; \
         {before_kill} of its tasks done), promoted {promoted:?}; lost {}, run twice {twice}, \
         shard 0 draining again after {resumed:?}, all done {all_done:?} after the kill",
        victim.port,
        lost.len()
    );
    assert!(lost.is_empty(), "replicated enqueues lost in the failover: {lost:?}");
}
