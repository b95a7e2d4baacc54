//! Redis calls for the programs around the engine that neither produce, work nor inspect a
//! queue: the reachability check `worker-cli` runs before anything else, and the per-worker
//! sample blobs its demo gathers from its worker processes. Each is one broker call, so the
//! binaries never build a Redis command; they take any async connection (the CLI uses a plain
//! multiplexed one) and return redis-rs's own error, which says whether Redis was unreachable.

use redis::RedisResult;
use redis::aio::ConnectionLike;

use crate::broker;
use crate::keys::QueueName;

/// Whether Redis answers `PING` on this connection.
pub async fn ping<C: ConnectionLike + Send>(conn: &mut C) -> RedisResult<()> {
    broker::ping(conn).await
}

/// Whether the node this (single-node) connection reaches is part of a Redis Cluster: then a
/// `redis://` URL is the wrong kind, and `redis+cluster://` the one to use.
pub async fn is_cluster_node<C: ConnectionLike + Send>(conn: &mut C) -> RedisResult<bool> {
    broker::is_cluster_node(conn).await
}

/// Stores one worker's sample blob for a queue (one field per worker of
/// [`demo_samples_key`](crate::keys::demo_samples_key)), replacing its previous one.
pub async fn save_sample<C: ConnectionLike + Send>(
    conn: &mut C,
    queue: &QueueName,
    worker: &str,
    blob: &str,
) -> RedisResult<()> {
    broker::save_sample(conn, queue, worker, blob).await
}

/// Every worker's sample blob for a queue.
pub async fn samples<C: ConnectionLike + Send>(conn: &mut C, queue: &QueueName) -> RedisResult<Vec<String>> {
    broker::samples(conn, queue).await
}

/// Deletes a queue's sample blobs.
pub async fn delete_samples<C: ConnectionLike + Send>(conn: &mut C, queue: &QueueName) -> RedisResult<()> {
    broker::delete_samples(conn, queue).await
}
