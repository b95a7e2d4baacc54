//! The queue registry (each queue's layout in [`QUEUES_KEY`]) and the consumer groups.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::RedisConnection;
use redis::{Script, Value};

use crate::error::{Error, Result};
use crate::keys::{GROUP, QUEUES_KEY, Queue, ShardKeys};

static FORGET_CONSUMER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/forget_consumer.lua")));

/// Records a queue's layout in [`QUEUES_KEY`]; a queue already recorded with another layout
/// is an error, since producers and workers would disagree about shards.
///
/// A Redis out of memory refuses the `HSETNX` even when the queue is recorded already; then
/// the recorded layout alone is read, so a worker starts (and drains, freeing memory) on a
/// full Redis for a queue that exists.
pub async fn declare_queue(conn: &mut RedisConnection, queue: &Queue) -> Result<()> {
    let wanted = queue.layout_json();
    let declared: Result<(i64, String)> = redis::pipe()
        .hset_nx(QUEUES_KEY, queue.name().as_str(), &wanted)
        .hget(QUEUES_KEY, queue.name().as_str())
        .query_async(conn)
        .await
        .map_err(Error::from);
    let stored = match declared {
        Ok((_, stored)) => stored,
        Err(oom @ Error::OutOfMemory { .. }) => {
            let stored: Option<String> = redis::cmd("HGET")
                .arg(QUEUES_KEY)
                .arg(queue.name().as_str())
                .query_async(conn)
                .await?;
            stored.ok_or(oom)?
        }
        Err(e) => return Err(e),
    };
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
pub async fn load_queue(conn: &mut RedisConnection, name: &str) -> Result<Option<Queue>> {
    let stored: Option<String> = redis::cmd("HGET").arg(QUEUES_KEY).arg(name).query_async(conn).await?;
    stored.map(|json| parse_layout(name, &json)).transpose()
}

/// Every recorded queue, by name. An entry that is not a valid queue (written by hand or by a
/// producer that skipped validation) is left out with a warning, so one bad entry does not hide
/// every other queue.
pub async fn load_queues(conn: &mut RedisConnection) -> Result<Vec<Queue>> {
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
    Queue::from_layout_json(name, json)
}

/// Creates the consumer group on a stream (and the stream), unless it exists.
pub async fn ensure_group(conn: &mut RedisConnection, stream: &str) -> Result<()> {
    let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created.map_err(Error::from) {
        Ok(_) => Ok(()),
        Err(Error::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
        // Out of memory, Redis refuses XGROUP CREATE before it looks for the group: one
        // that exists is all a worker needs.
        Err(oom @ Error::OutOfMemory { .. }) => {
            let groups: redis::RedisResult<Vec<HashMap<String, Value>>> =
                redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await;
            let named = |g: &HashMap<String, Value>| {
                g.get("name")
                    .is_some_and(|n| redis::from_redis_value::<String>(n.clone()).is_ok_and(|n| n == GROUP))
            };
            let exists = groups.is_ok_and(|groups| groups.iter().any(named));
            if exists { Ok(()) } else { Err(oom) }
        }
        Err(e) => Err(e),
    }
}

/// Whether an error means a stream or its group is gone (e.g. Redis restarted empty).
pub fn is_nogroup(e: &Error) -> bool {
    matches!(e, Error::Redis(r) if r.code() == Some("NOGROUP"))
}

/// Removes a consumer from a shard's group if it owns no entries (`forget_consumer.lua`: the
/// check and the delete are one script, since deleting a consumer drops its pending entries).
/// Returns whether it is gone; false when it still owns entries and was kept.
pub async fn forget_consumer(conn: &mut RedisConnection, keys: &ShardKeys, consumer: &str) -> Result<bool> {
    let gone: i64 = FORGET_CONSUMER
        .key(&keys.stream)
        .arg(GROUP)
        .arg(consumer)
        .invoke_async(conn)
        .await?;
    Ok(gone == 1)
}

/// Every consumer of a shard's group as (name, entries it owns, ms since it was last seen),
/// from one `XINFO CONSUMERS`: the reaper's candidates are those that own none, have been
/// idle for a lease and whose worker the registry does not know.
pub async fn group_consumers(conn: &mut RedisConnection, keys: &ShardKeys) -> Result<Vec<(String, u64, u64)>> {
    let rows: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&keys.stream)
        .arg(GROUP)
        .query_async(conn)
        .await?;
    let mut out = Vec::new();
    for row in rows {
        fn field<T: redis::FromRedisValue>(row: &HashMap<String, Value>, name: &str) -> Result<T> {
            let value = row
                .get(name)
                .cloned()
                .ok_or_else(|| Error::protocol(format!("XINFO CONSUMERS without {name}")))?;
            redis::from_redis_value(value).map_err(|e| Error::protocol(format!("XINFO CONSUMERS {name}: {e}")))
        }
        out.push((field(&row, "name")?, field(&row, "pending")?, field(&row, "idle")?));
    }
    Ok(out)
}
