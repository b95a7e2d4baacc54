//! Durability and safe Redis settings: `replicated:1` against a real master and replica,
//! `replicated:1` with no replica, `fsync` on a server that cannot do it, and a worker's check of
//! `maxmemory-policy`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rivulet::testing::RedisServer;
use rivulet::testing::replica::ReplicaPair;
use rivulet::{Client, Durability, Error, Queue, QueueOptions, Router, Task, TaskContext, Worker, WorkerConfig};

use rivulet::testing::{fast_config, wait_until};

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

fn replicated_1() -> Durability {
    "replicated:1".parse().unwrap()
}

/// Entries of every stream of `queue` on `server` plus its scheduled sets.
async fn stored(server: &RedisServer, queue: &Queue) -> (u64, u64) {
    let mut conn = raw(server).await;
    let (mut ready, mut scheduled) = (0, 0);
    for shard in queue.all_shards() {
        let n: u64 = redis::cmd("XLEN")
            .arg(&shard.keys.stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        let s: u64 = redis::cmd("ZCARD")
            .arg(&shard.keys.scheduled)
            .query_async(&mut conn)
            .await
            .unwrap();
        ready += n;
        scheduled += s;
    }
    (ready, scheduled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicated_1_an_enqueue_returns_only_once_the_replica_has_it() {
    let pair = ReplicaPair::start();
    let queue = Queue::new("durable").unwrap().shards(3).unwrap();
    let client = Client::new(&pair.master.client())
        .await
        .unwrap()
        .with_durability(replicated_1())
        .await
        .unwrap();
    for round in 1..=5u64 {
        client
            .enqueue_many(&queue, (0..100).map(|i| Task::json("job", &i).unwrap()))
            .await
            .unwrap();
        // Read the replica at once, no waiting: the acknowledgement came after its copy.
        assert_eq!(stored(&pair.replica, &queue).await, (round * 100, 0), "round {round}");
    }
    // A delayed task alone waits after its script.
    client
        .enqueue(&queue, Task::json("job", &0).unwrap().delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(stored(&pair.replica, &queue).await, (500, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_1_without_a_replica_fails_with_a_timeout_never_silently() {
    let server = RedisServer::start();
    let queue = Queue::new("lonely").unwrap();
    let client = Client::new(&server.client())
        .await
        .unwrap()
        .with_durability("replicated:1:200ms".parse().unwrap())
        .await
        .unwrap();
    for task in [
        Task::json("job", &1).unwrap(),
        Task::json("job", &2).unwrap().delay(Duration::from_secs(60)),
    ] {
        let e = client.enqueue(&queue, task).await.unwrap_err();
        assert!(
            matches!(&e, Error::NotDurable { acked: 0, timeout_ms: 200, wanted } if wanted == "replicated:1:200ms"),
            "{e:?}"
        );
        assert!(e.to_string().contains("may be lost in a failover"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_is_refused_at_start_by_a_server_that_cannot_do_it() {
    let server = RedisServer::start();
    let mut conn = raw(&server).await;
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await.unwrap();
    let version = rivulet::ServerInfo::parse(&info).unwrap().version;
    // This machine's Redis is 7.0: WAITAOF does not exist. On 7.2+ the harness's server has
    // AOF off, which fsync needs.
    let wanted = if version < (7, 2, 0) {
        "needs Redis 7.2+"
    } else {
        "appendonly yes"
    };
    let fsync: Durability = "fsync".parse().unwrap();
    let e = Client::new(&server.client())
        .await
        .unwrap()
        .with_durability(fsync)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedServer { .. }) && e.to_string().contains(wanted),
        "{e}"
    );

    let queue = Queue::new("fsynced").unwrap();
    let options = QueueOptions {
        durability: fsync,
        ..QueueOptions::default()
    };
    let e = Worker::new(server.client(), Router::new(), fast_config())
        .queue_with(queue, options)
        .run(async {})
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(wanted) && e.to_string().contains("fsynced"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_replicated_1_has_its_settles_on_the_replica_when_it_stops() {
    let pair = ReplicaPair::start();
    let queue = Queue::new("durable-settle").unwrap().shards(2).unwrap();
    Client::new(&pair.master.client())
        .await
        .unwrap()
        .enqueue_many(&queue, (0..300).map(|i| Task::json("job", &i).unwrap()))
        .await
        .unwrap();
    let ran = Arc::new(AtomicU32::new(0));
    let ran2 = ran.clone();
    let router = Router::new().route("job", move |_ctx: TaskContext, _i: u32| {
        let ran = ran2.clone();
        async move {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let options = QueueOptions {
        durability: replicated_1(),
        ..QueueOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        Worker::new(pair.master.client(), router, fast_config())
            .queue_with(queue.clone(), options)
            .run(async {
                let _ = stopped.await;
            }),
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            let ran = ran.clone();
            async move { ran.load(Ordering::SeqCst) == 300 }
        })
        .await,
        "300 tasks run"
    );
    let _ = stop.send(());
    let report = worker.await.unwrap().unwrap();
    assert_eq!(report.succeeded, 300);
    // Every settle waited for the replica before the worker returned: it has them all.
    let mut replica = raw(&pair.replica).await;
    let mut done = 0u64;
    for shard in queue.all_shards() {
        let d: Option<u64> = redis::cmd("HGET")
            .arg(&shard.keys.stats)
            .arg("done")
            .query_async(&mut replica)
            .await
            .unwrap();
        done += d.unwrap_or(0);
    }
    assert_eq!(done, 300);
    assert_eq!(
        stored(&pair.replica, &queue).await,
        (0, 0),
        "settled entries deleted on the replica too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_an_allkeys_eviction_policy_unless_eviction_is_allowed() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let queue = Queue::new("evictable").unwrap();
    let e = Worker::new(server.client(), Router::new(), fast_config())
        .queue(queue.clone())
        .run(async {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsafeRedisSetting {
                setting: "maxmemory-policy",
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("allkeys-lru")
            && text.contains("maxmemory-policy noeviction")
            && text.contains("--allow-eviction"),
        "{text}"
    );

    // Allowed explicitly: it starts and works.
    Client::new(&server.client())
        .await
        .unwrap()
        .enqueue(&queue, Task::json("job", &1).unwrap())
        .await
        .unwrap();
    let ran = Arc::new(AtomicU32::new(0));
    let ran2 = ran.clone();
    let router = Router::new().route("job", move |_ctx: TaskContext, _i: u32| {
        let ran = ran2.clone();
        async move {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let config = WorkerConfig {
        allow_eviction: true,
        ..fast_config()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::new(server.client(), router, config).queue(queue).run(async {
        let _ = stopped.await;
    }));
    assert!(
        wait_until(Duration::from_secs(10), || {
            let ran = ran.clone();
            async move { ran.load(Ordering::SeqCst) == 1 }
        })
        .await,
        "the task run"
    );
    let _ = stop.send(());
    assert_eq!(worker.await.unwrap().unwrap().succeeded, 1);

    // volatile-* evicts only keys with a TTL (worker records, never tasks): accepted.
    let volatile = RedisServer::start_with(&["--maxmemory-policy", "volatile-lru"]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let _ = stop.send(());
    let report = Worker::new(volatile.client(), Router::new(), fast_config())
        .queue(Queue::new("v").unwrap())
        .run(async {
            let _ = stopped.await;
        })
        .await;
    assert!(report.is_ok(), "{report:?}");
}
