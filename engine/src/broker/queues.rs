//! The queue registry (each queue's layout in [`QUEUES_KEY`]) and the consumer groups.

use redis::Value;
use redis::aio::ConnectionManager;

use crate::error::{Error, Result};
use crate::keys::{GROUP, QUEUES_KEY, Queue, ShardKeys};

/// Records a queue's layout in [`QUEUES_KEY`]; a queue already recorded with another layout
/// is an error, since producers and workers would disagree about shards.
pub async fn declare_queue(conn: &mut ConnectionManager, queue: &Queue) -> Result<()> {
    let wanted = queue.layout_json();
    let (_, stored): (i64, String) = redis::pipe()
        .hset_nx(QUEUES_KEY, queue.name().as_str(), &wanted)
        .hget(QUEUES_KEY, queue.name().as_str())
        .query_async(conn)
        .await?;
    let stored_layout: crate::keys::Layout = serde_json::from_str(&stored)
        .map_err(|e| Error::protocol(format!("layout of queue {} is not valid JSON: {e}", queue.name())))?;
    if &stored_layout != queue.layout() {
        return Err(Error::LayoutMismatch {
            queue: queue.name().to_string(),
            stored,
            wanted,
        });
    }
    Ok(())
}

/// The layout recorded for a queue, if any.
pub async fn load_queue(conn: &mut ConnectionManager, name: &str) -> Result<Option<Queue>> {
    let stored: Option<String> = redis::cmd("HGET").arg(QUEUES_KEY).arg(name).query_async(conn).await?;
    stored.map(|json| parse_layout(name, &json)).transpose()
}

/// Every recorded queue, by name. An entry that is not a valid queue (written by hand or by a
/// producer that skipped validation) is left out with a warning, so one bad entry does not hide
/// every other queue.
pub async fn load_queues(conn: &mut ConnectionManager) -> Result<Vec<Queue>> {
    let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(QUEUES_KEY).query_async(conn).await?;
    let mut queues: Vec<Queue> = all
        .iter()
        .filter_map(|(name, json)| {
            parse_layout(name, json)
                .inspect_err(|e| {
                    tracing::warn!(entry = %name, error = %e, "skipping an invalid entry of {QUEUES_KEY} (remove it with HDEL {QUEUES_KEY} <entry>)");
                })
                .ok()
        })
        .collect();
    queues.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(queues)
}

fn parse_layout(name: &str, json: &str) -> Result<Queue> {
    let layout = serde_json::from_str(json)
        .map_err(|e| Error::protocol(format!("layout of queue {name} is not valid JSON: {e}")))?;
    Queue::with_layout(name, layout)
}

/// Creates the consumer group on a stream (and the stream), unless it exists.
pub async fn ensure_group(conn: &mut ConnectionManager, stream: &str) -> Result<()> {
    let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether an error means a stream or its group is gone (e.g. Redis restarted empty).
pub fn is_nogroup(e: &Error) -> bool {
    matches!(e, Error::Redis(r) if r.code() == Some("NOGROUP"))
}

/// Removes a consumer from a shard's group. Only call it once the consumer holds nothing:
/// deleting a consumer drops its pending entries.
pub async fn delete_consumer(conn: &mut ConnectionManager, keys: &ShardKeys, consumer: &str) -> Result<()> {
    redis::cmd("XGROUP")
        .arg("DELCONSUMER")
        .arg(&keys.stream)
        .arg(GROUP)
        .arg(consumer)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}
