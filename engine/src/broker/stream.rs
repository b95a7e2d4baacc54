//! Producing into a shard (`XADD`; delayed tasks go through `enqueue.lua`), reading from it (`XREADGROUP`, `XRANGE`)
//! and its pending list (`XPENDING`).

use std::sync::LazyLock;
use std::time::Duration;

use super::RedisConnection;
use redis::{Script, Value};

use super::{StreamEntry, StreamId, bulk, entries, stream_ids};
use crate::durability::Durability;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::keys::{GROUP, ShardKeys};

static HEADS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/heads.lua")));

/// Adds ready tasks to their streams and counts them, in one pipelined round trip, as one
/// transaction (`MULTI`/`EXEC`) per slot: a connection cut in the middle leaves either a
/// shard's whole batch and its counts or nothing, so `enqueued` stays exact and a caller knows
/// a failed batch was not half written (it may have been written whole if only the reply was
/// lost). On one node every shard shares the one transaction; on a Redis Cluster a
/// transaction cannot span slots, so each shard's part is its own, sent side by side. Then the
/// wait `durability` asks for, if any, on each written shard's master (Redis refuses `WAIT`
/// inside a transaction, so it is a second round trip, paid only by a queue that asks for it).
pub async fn add_ready(
    conn: &mut RedisConnection,
    batch: &[(&ShardKeys, &Envelope)],
    durability: Durability,
) -> Result<()> {
    if conn.is_cluster() {
        let mut groups: Vec<Vec<(&ShardKeys, &Envelope)>> = Vec::new();
        for item in batch {
            match groups.iter_mut().find(|g| g[0].0.stream == item.0.stream) {
                Some(g) => g.push(*item),
                None => groups.push(vec![*item]),
            }
        }
        if groups.len() > 1 {
            let calls = groups.iter().map(|g| {
                let mut conn = conn.clone();
                async move { add_ready_one_slot(&mut conn, g).await }
            });
            futures_util::future::try_join_all(calls).await?;
        } else {
            add_ready_one_slot(conn, batch).await?;
        }
    } else {
        add_ready_one_slot(conn, batch).await?;
    }
    let streams: Vec<&str> = batch.iter().map(|(k, _)| k.stream.as_str()).collect();
    super::wait_durable(conn, durability, &streams).await
}

/// [`add_ready`]'s transaction, for tasks whose keys share a node.
async fn add_ready_one_slot(conn: &mut RedisConnection, batch: &[(&ShardKeys, &Envelope)]) -> Result<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (keys, env) in batch {
        let xadd = pipe.cmd("XADD").arg(&keys.stream).arg("*");
        for (name, value) in env.stream_fields() {
            xadd.arg(name).arg(value.as_ref());
        }
        xadd.ignore();
    }
    // One counter update per shard, not per task.
    let mut counts: Vec<(&str, i64)> = Vec::new();
    for (keys, _) in batch {
        match counts.iter_mut().find(|(k, _)| *k == keys.stats) {
            Some((_, n)) => *n += 1,
            None => counts.push((&keys.stats, 1)),
        }
    }
    for (stats, n) in counts {
        pipe.cmd("HINCRBY").arg(stats).arg("enqueued").arg(n).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// `XREADGROUP ... COUNT count [BLOCK ms] STREAMS keys... > ...`: new entries for `consumer`.
/// Returns (index into `streams`, entry) pairs; nothing when the block timed out.
pub async fn read_group(
    conn: &mut RedisConnection,
    consumer: &str,
    count: usize,
    block: Option<Duration>,
    streams: &[&str],
) -> Result<Vec<(usize, StreamEntry)>> {
    let reply: Value = read_group_cmd(consumer, count, block, streams)
        .query_async(conn)
        .await?;
    let mut out = Vec::new();
    for (key, entries) in stream_map(reply)? {
        let idx = streams
            .iter()
            .position(|s| s.as_bytes() == key.as_slice())
            .ok_or_else(|| Error::protocol("XREADGROUP answered for a stream not asked for"))?;
        for e in entries {
            out.push((idx, e));
        }
    }
    Ok(out)
}

/// The `XREADGROUP` of [`read_group`], for either kind of fetch connection (`reader`).
pub(super) fn read_group_cmd(consumer: &str, count: usize, block: Option<Duration>, streams: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(GROUP).arg(consumer).arg("COUNT").arg(count);
    if let Some(b) = block {
        cmd.arg("BLOCK").arg(crate::envelope::millis(b).max(1));
    }
    cmd.arg("STREAMS").arg(streams);
    for _ in streams {
        cmd.arg(">");
    }
    cmd
}

/// The `CLIENT ID` of `conn`'s link to the node serving `stream` (a fetcher's, for
/// [`unblock_client`]).
pub async fn client_id(conn: &mut RedisConnection, stream: &str) -> Result<i64> {
    let v = conn.on_node_of(redis::cmd("CLIENT").arg("ID"), stream).await?;
    redis::from_redis_value(v).map_err(|e| Error::protocol(format!("CLIENT ID: {e}")))
}

/// `CLIENT UNBLOCK id` on the node serving `stream`: a blocking read of that client returns
/// at once as if it had timed out (nothing is delivered by the unblocked call). True when
/// the client was blocked.
pub async fn unblock_client(conn: &mut RedisConnection, stream: &str, id: i64) -> Result<bool> {
    let v = conn
        .on_node_of(redis::cmd("CLIENT").arg("UNBLOCK").arg(id), stream)
        .await?;
    let n: i64 = redis::from_redis_value(v).map_err(|e| Error::protocol(format!("CLIENT UNBLOCK: {e}")))?;
    Ok(n == 1)
}

/// Splits an XREAD/XREADGROUP reply (RESP2 array or RESP3 map) into (key, entries).
pub(super) fn stream_map(reply: Value) -> Result<Vec<(Vec<u8>, Vec<StreamEntry>)>> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let v = kv.pop().expect("length checked: 2");
                    let k = kv.pop().expect("length checked: 2");
                    Ok((k, v))
                }
                other => Err(Error::protocol(format!("stream reply item {other:?}"))),
            })
            .collect::<Result<_>>()?,
        other => return Err(Error::protocol(format!("stream reply {other:?}"))),
    };
    pairs.into_iter().map(|(k, v)| Ok((bulk(k)?, entries(v)?))).collect()
}

/// Where an [`range`] read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeStart {
    /// At the oldest entry.
    First,
    /// At this id, inclusive.
    At(StreamId),
    /// Just after this id.
    After(StreamId),
}

impl RangeStart {
    /// As XRANGE takes it.
    fn arg(self) -> String {
        match self {
            RangeStart::First => "-".to_owned(),
            RangeStart::At(id) => id.to_string(),
            RangeStart::After(id) => format!("({id}"),
        }
    }
}

/// Entries of a stream from `start` to the newest, at most `count`.
pub async fn range(
    conn: &mut RedisConnection,
    stream: &str,
    start: RangeStart,
    count: usize,
) -> Result<Vec<StreamEntry>> {
    let start = start.arg();
    let reply: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    entries(reply)
}

/// The entries with these ids, in one pipelined round trip (`XRANGE id id` each), in the order
/// asked; `None` for an id whose entry is gone.
pub async fn entries_by_id(
    conn: &mut RedisConnection,
    stream: &str,
    ids: &[StreamId],
) -> Result<Vec<Option<StreamEntry>>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        let id = id.to_string();
        pipe.cmd("XRANGE").arg(stream).arg(&id).arg(&id);
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    replies
        .into_iter()
        .map(|r| Ok(entries(r)?.into_iter().next()))
        .collect()
}

/// Deletes entries of a stream. Returns how many existed.
pub async fn delete_entries(conn: &mut RedisConnection, stream: &str, ids: &[StreamId]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(redis::cmd("XDEL").arg(stream).arg(ids).query_async(conn).await?)
}

/// One row of a shard's pending list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    /// The entry.
    pub id: StreamId,
    /// The consumer holding it.
    pub consumer: String,
    /// Ms since it was delivered or its lease renewed.
    pub idle_ms: u64,
    /// Deliveries (first read plus reclaims).
    pub deliveries: u64,
}

/// Pending entries of a shard, oldest first, at most `count`.
pub async fn pending(conn: &mut RedisConnection, stream: &str, count: usize) -> Result<Vec<PendingRow>> {
    let r: redis::RedisResult<Vec<(String, String, u64, u64)>> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(count)
        .query_async(conn)
        .await;
    match r {
        Ok(rows) => rows
            .into_iter()
            .map(|(id, consumer, idle_ms, deliveries)| {
                Ok(PendingRow {
                    id: id.parse()?,
                    consumer,
                    idle_ms,
                    deliveries,
                })
            })
            .collect(),
        // No stream or no group yet: nothing is pending.
        Err(e) if e.code() == Some("NOGROUP") => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// How many entries each consumer of a shard's group owns (`XPENDING` summary form: one
/// command whatever the count); empty when nothing is pending or the group does not exist.
pub async fn pending_by_consumer(conn: &mut RedisConnection, stream: &str) -> Result<Vec<(String, u64)>> {
    let r: redis::RedisResult<Value> = redis::cmd("XPENDING").arg(stream).arg(GROUP).query_async(conn).await;
    let reply = match r {
        Ok(v) => v,
        Err(e) if e.code() == Some("NOGROUP") => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let Value::Array(mut parts) = reply else {
        return Err(Error::protocol(format!("XPENDING summary {reply:?}")));
    };
    let consumers = match parts.pop() {
        Some(Value::Nil) | None => return Ok(Vec::new()),
        Some(v) => v,
    };
    redis::from_redis_value::<Vec<(String, u64)>>(consumers)
        .map_err(|e| Error::protocol(format!("XPENDING summary consumers: {e}")))
}

/// Ids `consumer` holds in a shard's PEL (oldest first), at most `max`.
pub async fn owned_ids(
    conn: &mut RedisConnection,
    keys: &ShardKeys,
    consumer: &str,
    max: usize,
) -> Result<Vec<StreamId>> {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&keys.stream)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(max)
        .arg(consumer)
        .query_async(conn)
        .await?;
    stream_ids(rows.into_iter().map(|r| r.0).collect())
}

/// Like [`range`], with each entry's `payload` field cut to its first `keep` bytes
/// (`heads.lua`): each entry comes with its whole payload's size in bytes (`None` when it has
/// no payload field). The payloads stay in Redis.
pub async fn range_heads(
    conn: &mut RedisConnection,
    stream: &str,
    start: RangeStart,
    count: usize,
    keep: usize,
) -> Result<Vec<(StreamEntry, Option<u64>)>> {
    let (found, sizes): (Value, Vec<i64>) = HEADS
        .key(stream)
        .arg(start.arg())
        .arg(count)
        .arg(keep)
        .invoke_async(conn)
        .await?;
    let found = entries(found)?;
    if found.len() != sizes.len() {
        return Err(Error::protocol(format!(
            "heads.lua returned {} entries and {} sizes",
            found.len(),
            sizes.len()
        )));
    }
    Ok(found
        .into_iter()
        .zip(sizes)
        .map(|(e, size)| (e, u64::try_from(size).ok()))
        .collect())
}
