//! Commands behind the inspector and the programs around the engine: one shard's numbers
//! (`inspect.lua`, through the `rivulet_v1` functions), dead-letter replay (`replay.lua`), queue deletion (`drop_shard.lua` and the
//! registry entries), pause flags, the autoscaler's stored decision, the demo's per-worker
//! samples and the reachability check.

use std::collections::HashSet;
use std::sync::LazyLock;

use super::RedisConnection;
use redis::Script;
use redis::aio::ConnectionLike;

use super::StreamId;
use crate::error::Result;
use crate::keys::{GROUP, PAUSED_KEY, QUEUES_KEY, QueueName, ShardKeys, autoscaler_key, demo_samples_key};

static DROP_SHARD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/drop_shard.lua")));

/// One shard's numbers, raw from inspect.lua.
#[derive(Debug, Clone, Default)]
pub struct ShardNumbers {
    /// Entries in the stream (waiting plus in flight).
    pub length: u64,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell.
    pub lag: Option<u64>,
    /// Delivered, not yet settled.
    pub pending: u64,
    /// Id of the oldest entry not yet delivered.
    pub oldest_waiting: Option<StreamId>,
    /// Delayed tasks.
    pub scheduled: u64,
    /// Tasks waiting for a retry.
    pub retry: u64,
    /// Dead letters.
    pub dlq: u64,
    /// Counters.
    pub stats: Vec<(String, u64)>,
    /// Grouped tasks waiting for their turn in the fair set (`docs/groups.md`).
    pub fair: u64,
}

/// inspect.lua's reply, in its order.
type InspectReply = (u64, i64, u64, String, u64, u64, u64, Vec<(String, u64)>, u64);

/// Reads one shard's numbers in one round trip.
pub async fn inspect(conn: &mut RedisConnection, keys: &ShardKeys) -> Result<ShardNumbers> {
    let mut cmd = super::functions::fcall(
        "inspect",
        &[
            &keys.stream,
            &keys.scheduled,
            &keys.retry,
            &keys.dlq,
            &keys.stats,
            &keys.fair,
        ],
    );
    cmd.arg(GROUP);
    let (length, lag, pending, oldest, scheduled, retry, dlq, stats, fair): InspectReply =
        super::functions::call(conn, &cmd).await?;
    Ok(ShardNumbers {
        length,
        lag: u64::try_from(lag).ok(),
        pending,
        oldest_waiting: StreamId::parse(&oldest),
        scheduled,
        retry,
        dlq,
        stats,
        fair,
    })
}

// Replaying dead letters (`replay.lua`) is `lifecycle::replay`: it passes the tasks'
// records too, so a replayed task reads `queued` again.

/// Deletes a shard's keys if it holds no task or dead letter (checked in the same script), or
/// whatever it holds with `force`. Returns whether it deleted them.
pub async fn drop_shard(conn: &mut RedisConnection, keys: &ShardKeys, force: bool) -> Result<bool> {
    let dropped: i64 = DROP_SHARD
        .key(&keys.stream)
        .key(&keys.scheduled)
        .key(&keys.retry)
        .key(&keys.dlq)
        .key(&keys.stats)
        .key(&keys.fair)
        .key(&keys.groups)
        .arg(if force { "1" } else { "0" })
        .invoke_async(conn)
        .await?;
    Ok(dropped == 1)
}

/// Forgets a queue once its shards are gone: its entry in [`QUEUES_KEY`], its pause flag and
/// the autoscaler's decision, in one round trip.
pub async fn forget_queue(conn: &mut RedisConnection, queue: &QueueName) -> Result<()> {
    redis::pipe()
        .hdel(QUEUES_KEY, queue.as_str())
        .ignore()
        .srem(PAUSED_KEY, queue.as_str())
        .ignore()
        .del(autoscaler_key(queue))
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Sets or clears a queue's pause flag.
pub async fn set_paused(conn: &mut RedisConnection, queue: &QueueName, paused: bool) -> Result<()> {
    let cmd = if paused { "SADD" } else { "SREM" };
    // The PUBLISH wakes idle workers, which otherwise read the flags on a slow round.
    redis::pipe()
        .cmd(cmd)
        .arg(PAUSED_KEY)
        .arg(queue.as_str())
        .ignore()
        .cmd("PUBLISH")
        .arg(crate::keys::WAKE_CHANNEL)
        .arg("pause")
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Whether a queue is paused.
pub async fn is_paused(conn: &mut RedisConnection, queue: &QueueName) -> Result<bool> {
    Ok(redis::cmd("SISMEMBER")
        .arg(PAUSED_KEY)
        .arg(queue.as_str())
        .query_async(conn)
        .await?)
}

/// Every paused queue's name.
pub async fn paused_queues(conn: &mut RedisConnection) -> Result<HashSet<String>> {
    Ok(redis::cmd("SMEMBERS").arg(PAUSED_KEY).query_async(conn).await?)
}

/// Stores the autoscaler's latest decision (JSON) for a queue.
pub async fn store_decision(conn: &mut RedisConnection, queue: &QueueName, json: &str) -> Result<()> {
    redis::cmd("SET")
        .arg(autoscaler_key(queue))
        .arg(json)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// The autoscaler's latest decision (JSON) for a queue, if any.
pub async fn decision(conn: &mut RedisConnection, queue: &QueueName) -> Result<Option<String>> {
    Ok(redis::cmd("GET").arg(autoscaler_key(queue)).query_async(conn).await?)
}

/// `PING`: whether Redis answers on this connection.
pub async fn ping<C: ConnectionLike + Send>(conn: &mut C) -> redis::RedisResult<()> {
    redis::cmd("PING").query_async::<String>(conn).await.map(drop)
}

/// Whether this node runs in cluster mode (`INFO cluster` says `cluster_enabled:1`).
pub async fn is_cluster_node<C: ConnectionLike + Send>(conn: &mut C) -> redis::RedisResult<bool> {
    let info: String = redis::cmd("INFO").arg("cluster").query_async(conn).await?;
    Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

/// Stores one worker's sample blob for a queue (the demo's start latencies).
pub async fn save_sample<C: ConnectionLike + Send>(
    conn: &mut C,
    queue: &QueueName,
    worker: &str,
    blob: &str,
) -> redis::RedisResult<()> {
    redis::cmd("HSET")
        .arg(demo_samples_key(queue))
        .arg(worker)
        .arg(blob)
        .query_async(conn)
        .await
}

/// Every worker's sample blob for a queue.
pub async fn samples<C: ConnectionLike + Send>(conn: &mut C, queue: &QueueName) -> redis::RedisResult<Vec<String>> {
    redis::cmd("HVALS").arg(demo_samples_key(queue)).query_async(conn).await
}

/// Deletes a queue's sample blobs.
pub async fn delete_samples<C: ConnectionLike + Send>(conn: &mut C, queue: &QueueName) -> redis::RedisResult<()> {
    redis::cmd("DEL").arg(demo_samples_key(queue)).query_async(conn).await
}

/// The newest `count` entries of a stream, newest first (`XREVRANGE + - COUNT n`): the
/// dashboard's timeline of one task reads its shard's recent events this way, a bounded read
/// however long the stream is.
pub async fn newest_entries(conn: &mut RedisConnection, stream: &str, count: usize) -> Result<Vec<super::StreamEntry>> {
    let reply: redis::Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    super::entries(reply)
}
