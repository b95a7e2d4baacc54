//! Every Redis command the engine issues, and the Lua scripts behind each state change.
//!
//! Each state move is one script (`scripts/*.lua`, headed by its KEYS/ARGV/Returns contract) on
//! one shard, so it is atomic and touches a single Cluster slot. Everything else in the crate
//! calls these functions and never builds a command itself.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::keys::{GROUP, QUEUES_KEY, Queue, ShardKeys};

static SCHEDULE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/schedule.lua")));
static PROMOTE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/promote.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/settle.lua")));
static RECLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/reclaim.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/extend.lua")));
static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/replay.lua")));
static INSPECT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/inspect.lua")));
static DROP_SHARD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/drop_shard.lua")));

/// Opens a connection that reconnects by itself after Redis restarts or the link drops.
///
/// `response_timeout` must exceed any `BLOCK` issued on the connection: redis-rs would
/// otherwise time a blocking read out (its default is 500 ms).
pub async fn connect(client: &redis::Client, response_timeout: Option<Duration>) -> Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(response_timeout)
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2))
        // Workers and bulk producers keep many requests in flight on one connection.
        .set_pipeline_buffer_size(4096);
    Ok(ConnectionManager::new_with_config(client.clone(), config).await?)
}

/// One entry read from a stream.
#[derive(Debug)]
pub struct StreamEntry {
    /// The stream entry id (`ms-seq`).
    pub id: String,
    /// The entry's fields in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl StreamEntry {
    /// Decodes the entry as a task.
    pub fn envelope(self) -> Result<Envelope, crate::envelope::Malformed> {
        Envelope::from_fields(self.fields)
    }
}

/// The lowest and highest of some stream ids (`("-", "+")`, everything, for none).
fn id_range<'a>(ids: impl Iterator<Item = &'a str>) -> (&'a str, &'a str) {
    // Numeric order ("10-0" > "9-9"), each id parsed once.
    let mut keyed = ids.map(|id| (parse_stream_id(id), id));
    let Some(first) = keyed.next() else {
        return ("-", "+");
    };
    let (lo, hi) = keyed.fold((first, first), |(lo, hi), this| {
        (
            if this.0 < lo.0 { this } else { lo },
            if this.0 > hi.0 { this } else { hi },
        )
    });
    (lo.1, hi.1)
}

/// Parses a stream id `ms-seq` into numbers, for ordering.
pub fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Queues and groups

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

// ---------------------------------------------------------------------------------------------
// Producing

/// Adds ready tasks to their streams and counts them, in one pipelined round trip.
pub async fn add_ready(conn: &mut ConnectionManager, batch: &[(&ShardKeys, &Envelope)]) -> Result<()> {
    let mut pipe = redis::pipe();
    for (keys, env) in batch {
        let xadd = pipe.cmd("XADD").arg(&keys.stream).arg("*");
        for (name, value) in env.fields() {
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

/// Parks a task in its shard's `scheduled` set until `due_ms`.
pub async fn add_scheduled(conn: &mut ConnectionManager, keys: &ShardKeys, env: &Envelope, due_ms: u64) -> Result<()> {
    let mut inv = SCHEDULE.key(&keys.scheduled);
    inv.key(&keys.stats).arg(due_ms);
    for (name, value) in env.fields() {
        inv.arg(name).arg(value.as_ref());
    }
    inv.invoke_async::<()>(conn).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Consuming

/// `XREADGROUP ... COUNT count [BLOCK ms] STREAMS keys... > ...`: new entries for `consumer`.
/// Returns (index into `streams`, entry) pairs; nothing when the block timed out.
pub async fn read_group(
    conn: &mut ConnectionManager,
    consumer: &str,
    count: usize,
    block: Option<Duration>,
    streams: &[&str],
) -> Result<Vec<(usize, StreamEntry)>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(GROUP).arg(consumer).arg("COUNT").arg(count);
    if let Some(b) = block {
        cmd.arg("BLOCK").arg(crate::envelope::millis(b).max(1));
    }
    cmd.arg("STREAMS").arg(streams);
    for _ in streams {
        cmd.arg(">");
    }
    let reply: Value = cmd.query_async(conn).await?;
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

/// Splits an XREAD/XREADGROUP reply (RESP2 array or RESP3 map) into (key, entries).
fn stream_map(reply: Value) -> Result<Vec<(Vec<u8>, Vec<StreamEntry>)>> {
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

/// Parses a list of `[id, [field, value, ...]]` entries.
pub(crate) fn entries(v: Value) -> Result<Vec<StreamEntry>> {
    let Value::Array(items) = v else {
        return Err(Error::protocol(format!("entry list {v:?}")));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut parts) = item else {
            return Err(Error::protocol("stream entry is not an array"));
        };
        if parts.len() != 2 {
            return Err(Error::protocol("stream entry is not [id, fields]"));
        }
        let fields = parts.pop().expect("length checked: 2");
        let id = string(parts.pop().expect("length checked: 2"))?;
        let flat = match fields {
            Value::Array(f) => f,
            // A deleted entry still in a PEL reads as nil fields.
            Value::Nil => Vec::new(),
            Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            other => return Err(Error::protocol(format!("entry fields {other:?}"))),
        };
        let mut pairs = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((bulk(k)?, bulk(v)?));
        }
        out.push(StreamEntry { id, fields: pairs });
    }
    Ok(out)
}

/// One outcome for [`settle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    /// Done: acknowledge and delete.
    Ack,
    /// Failed, attempts left: park in the retry set until `due_ms` with the new attempt count.
    Retry {
        /// When to run again, ms since the epoch.
        due_ms: u64,
        /// The attempt number the next run will have.
        attempt: u32,
        /// Why this run failed.
        error: String,
    },
    /// Move to the dead-letter stream.
    Bury {
        /// `exhausted`, `fatal`, `malformed` or `unknown_kind`.
        reason: &'static str,
        /// What went wrong.
        error: String,
        /// Failed attempts to record, this run included, when the task ran; `None` keeps the
        /// entry's (it never ran: malformed, unknown kind).
        attempt: Option<u32>,
    },
    /// Put back at the end of the stream, unchanged, to run again at once.
    Requeue,
}

/// Parameters of a [`settle`] call that do not change per outcome.
#[derive(Debug, Clone, Copy)]
pub struct SettleCtx<'a> {
    /// The shard.
    pub keys: &'a ShardKeys,
    /// The consumer that holds the entries.
    pub consumer: &'a str,
    /// Approximate cap of the dead-letter stream.
    pub dlq_maxlen: usize,
}

/// Applies outcomes for entries of one shard in one script call. Returns the ids this
/// consumer no longer owned (fenced off: another worker reclaimed them).
pub async fn settle(
    conn: &mut ConnectionManager,
    ctx: SettleCtx<'_>,
    batch: &[(&str, &Settle)],
) -> Result<Vec<String>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let (lo, hi) = id_range(batch.iter().map(|(id, _)| *id));
    let mut inv = SETTLE.key(&ctx.keys.stream);
    inv.key(&ctx.keys.retry)
        .key(&ctx.keys.dlq)
        .key(&ctx.keys.stats)
        .arg(GROUP)
        .arg(ctx.consumer)
        .arg(crate::envelope::now_ms())
        .arg(ctx.dlq_maxlen)
        .arg(lo)
        .arg(hi);
    // Plain acks first, one id each; then the other outcomes, five values each.
    let is_ack = |op: &Settle| matches!(op, Settle::Ack);
    inv.arg(batch.iter().filter(|(_, op)| is_ack(op)).count());
    for (id, _) in batch.iter().filter(|(_, op)| is_ack(op)) {
        inv.arg(*id);
    }
    for (id, op) in batch.iter().filter(|(_, op)| !is_ack(op)) {
        inv.arg(*id);
        match op {
            Settle::Ack => unreachable!("acks were sent above"),
            Settle::Retry { due_ms, attempt, error } => inv.arg("r").arg(*due_ms).arg(*attempt).arg(error.as_str()),
            Settle::Bury { reason, error, attempt } => {
                let attempt = attempt.map(|a| a.to_string()).unwrap_or_default();
                inv.arg("b").arg(*reason).arg(error.as_str()).arg(attempt)
            }
            Settle::Requeue => inv.arg("q").arg("").arg("").arg(""),
        };
    }
    Ok(inv.invoke_async(conn).await?)
}

/// Moves due tasks of one shard from `scheduled`/`retry` into its stream. Returns how many
/// moved and the earliest due time still waiting.
pub async fn promote(
    conn: &mut ConnectionManager,
    keys: &ShardKeys,
    now_ms: u64,
    limit: usize,
) -> Result<(u64, Option<u64>)> {
    let (moved, next): (u64, i64) = PROMOTE
        .key(&keys.stream)
        .key(&keys.scheduled)
        .key(&keys.retry)
        .arg(now_ms)
        .arg(limit)
        .invoke_async(conn)
        .await?;
    Ok((moved, u64::try_from(next).ok()))
}

/// What one [`reclaim`] call took over.
#[derive(Debug)]
pub struct Reclaimed {
    /// Cursor for the next call; `0-0` when the scan is complete.
    pub next: String,
    /// Entries now owned by the caller, to run.
    pub entries: Vec<StreamEntry>,
    /// Pending ids whose entries were deleted (counted as `lost`).
    pub lost: u64,
    /// Entries buried as `poison`.
    pub poisoned: u64,
}

/// Parameters of a [`reclaim`] call.
#[derive(Debug, Clone, Copy)]
pub struct ReclaimArgs<'a> {
    /// The shard.
    pub keys: &'a ShardKeys,
    /// The consumer taking the entries.
    pub consumer: &'a str,
    /// Entries idle at least this long are taken.
    pub lease: Duration,
    /// Scan cursor (`0-0` to start).
    pub cursor: &'a str,
    /// The most entries to take.
    pub count: usize,
    /// An entry delivered more often than this goes to the DLQ as poison.
    pub max_deliveries: u32,
    /// Approximate cap of the dead-letter stream.
    pub dlq_maxlen: usize,
}

/// `XAUTOCLAIM` past-lease entries of one shard for `consumer`, burying poison.
pub async fn reclaim(conn: &mut ConnectionManager, a: ReclaimArgs<'_>) -> Result<Reclaimed> {
    let reply: Value = RECLAIM
        .key(&a.keys.stream)
        .key(&a.keys.dlq)
        .key(&a.keys.stats)
        .arg(GROUP)
        .arg(a.consumer)
        .arg(crate::envelope::millis(a.lease))
        .arg(a.cursor)
        .arg(a.count)
        .arg(a.max_deliveries)
        .arg(a.dlq_maxlen)
        .arg(crate::envelope::now_ms())
        .invoke_async(conn)
        .await?;
    let Value::Array(mut parts) = reply else {
        return Err(Error::protocol("reclaim.lua did not return an array"));
    };
    if parts.len() != 4 {
        return Err(Error::protocol("reclaim.lua returned the wrong number of values"));
    }
    let poisoned = int(parts.pop().expect("length checked: 4"))?;
    let lost = int(parts.pop().expect("length checked: 4"))?;
    let entries = entries(parts.pop().expect("length checked: 4"))?;
    let next = string(parts.pop().expect("length checked: 4"))?;
    Ok(Reclaimed {
        next,
        entries,
        lost: lost as u64,
        poisoned: poisoned as u64,
    })
}

/// Renews the lease of the entries among `ids` that `consumer` still owns in a shard. Returns
/// how many were renewed.
pub async fn extend<S: AsRef<str> + redis::ToRedisArgs>(
    conn: &mut ConnectionManager,
    keys: &ShardKeys,
    consumer: &str,
    ids: &[S],
) -> Result<u64> {
    let mut renewed = 0;
    // Lua's unpack takes a few thousand values at most.
    for chunk in ids.chunks(1000) {
        let (lo, hi) = id_range(chunk.iter().map(AsRef::as_ref));
        let n: u64 = EXTEND
            .key(&keys.stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(lo)
            .arg(hi)
            .arg(chunk)
            .invoke_async(conn)
            .await?;
        renewed += n;
    }
    Ok(renewed)
}

/// Ids `consumer` holds in a shard's PEL (oldest first), at most `max`.
pub async fn owned_ids(
    conn: &mut ConnectionManager,
    keys: &ShardKeys,
    consumer: &str,
    max: usize,
) -> Result<Vec<String>> {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&keys.stream)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(max)
        .arg(consumer)
        .query_async(conn)
        .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Deletes a shard's keys if it holds no task or dead letter (checked in the same script), or
/// whatever it holds with `force`. Returns whether it deleted them.
pub async fn drop_shard(conn: &mut ConnectionManager, keys: &ShardKeys, force: bool) -> Result<bool> {
    let dropped: i64 = DROP_SHARD
        .key(&keys.stream)
        .key(&keys.scheduled)
        .key(&keys.retry)
        .key(&keys.dlq)
        .key(&keys.stats)
        .arg(if force { "1" } else { "0" })
        .invoke_async(conn)
        .await?;
    Ok(dropped == 1)
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

// ---------------------------------------------------------------------------------------------
// Inspecting and dead letters

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
    pub oldest_waiting: Option<String>,
    /// Delayed tasks.
    pub scheduled: u64,
    /// Tasks waiting for a retry.
    pub retry: u64,
    /// Dead letters.
    pub dlq: u64,
    /// Counters.
    pub stats: Vec<(String, u64)>,
}

/// inspect.lua's reply, in its order.
type InspectReply = (u64, i64, u64, String, u64, u64, u64, Vec<(String, u64)>);

/// Reads one shard's numbers in one round trip.
pub async fn inspect(conn: &mut ConnectionManager, keys: &ShardKeys) -> Result<ShardNumbers> {
    let (length, lag, pending, oldest, scheduled, retry, dlq, stats): InspectReply = INSPECT
        .key(&keys.stream)
        .key(&keys.scheduled)
        .key(&keys.retry)
        .key(&keys.dlq)
        .key(&keys.stats)
        .arg(GROUP)
        .invoke_async(conn)
        .await?;
    Ok(ShardNumbers {
        length,
        lag: u64::try_from(lag).ok(),
        pending,
        oldest_waiting: (!oldest.is_empty()).then_some(oldest),
        scheduled,
        retry,
        dlq,
        stats,
    })
}

/// Entries of a stream from `start` (inclusive; `(id` for exclusive) to `+`, at most `count`.
pub async fn range(conn: &mut ConnectionManager, stream: &str, start: &str, count: usize) -> Result<Vec<StreamEntry>> {
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

/// Replays dead letters of one shard into its stream. Returns how many.
pub async fn replay(conn: &mut ConnectionManager, keys: &ShardKeys, ids: &[&str]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut inv = REPLAY.key(&keys.dlq);
    inv.key(&keys.stream).key(&keys.stats);
    for id in ids {
        inv.arg(*id);
    }
    Ok(inv.invoke_async(conn).await?)
}

/// Deletes entries of a stream. Returns how many existed.
pub async fn delete_entries(conn: &mut ConnectionManager, stream: &str, ids: &[&str]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(redis::cmd("XDEL").arg(stream).arg(ids).query_async(conn).await?)
}

/// Pending entries of a shard: (entry id, consumer, idle ms, deliveries), oldest first.
pub async fn pending(
    conn: &mut ConnectionManager,
    stream: &str,
    count: usize,
) -> Result<Vec<(String, String, u64, u64)>> {
    let r: redis::RedisResult<Vec<(String, String, u64, u64)>> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(count)
        .query_async(conn)
        .await;
    match r {
        Ok(rows) => Ok(rows),
        // No stream or no group yet: nothing is pending.
        Err(e) if e.code() == Some("NOGROUP") => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn bulk(v: Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(Error::protocol(format!("expected a string, got {other:?}"))),
    }
}

fn string(v: Value) -> Result<String> {
    String::from_utf8(bulk(v)?).map_err(|_| Error::protocol("id is not UTF-8"))
}

fn int(v: Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(i),
        other => Err(Error::protocol(format!("expected an integer, got {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Codec, Envelope};
    use crate::keys::Queue;
    // Each test keeps to a queue of its own (`unique_name`), so they share one server.
    use crate::testing::{RedisServer, shared_server, unique_name};
    use bytes::Bytes;

    /// One entry read by consumer `stale`, on a queue of its own on the shared server.
    async fn setup(server: &RedisServer) -> (ConnectionManager, ShardKeys, String) {
        let mut conn = connect(&server.client(), Some(Duration::from_secs(5))).await.unwrap();
        let keys = Queue::new(&unique_name("fence")).unwrap().shard("normal", 0);
        ensure_group(&mut conn, &keys.stream).await.unwrap();
        let env = Envelope::new("k", Bytes::from_static(b"1"), Codec::Json);
        add_ready(&mut conn, &[(&keys, &env)]).await.unwrap();
        let got = read_group(&mut conn, "stale", 10, None, &[keys.stream.as_str()])
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        let id = got.into_iter().next().unwrap().1.id;
        (conn, keys, id)
    }

    fn reclaim_args<'a>(keys: &'a ShardKeys, consumer: &'a str) -> ReclaimArgs<'a> {
        ReclaimArgs {
            keys,
            consumer,
            lease: Duration::ZERO,
            cursor: "0-0",
            count: 10,
            max_deliveries: 5,
            dlq_maxlen: 100,
        }
    }

    #[test]
    fn id_range_orders_ids_by_number_not_text() {
        assert_eq!(id_range(["9-9", "10-0", "5-1", "10-2"].into_iter()), ("5-1", "10-2"));
        assert_eq!(id_range(["7-0"].into_iter()), ("7-0", "7-0"));
        assert_eq!(id_range(std::iter::empty()), ("-", "+"));
    }

    #[tokio::test]
    async fn stale_worker_ack_after_reclaim_is_rejected() {
        let server = shared_server();
        let (mut conn, keys, id) = setup(server).await;
        // Another worker takes the entry over (its lease ran out).
        let taken = reclaim(&mut conn, reclaim_args(&keys, "fresh")).await.unwrap();
        assert_eq!(taken.entries.len(), 1);
        // The stale worker's outcomes are fenced off: ack, retry and bury alike.
        let ctx = SettleCtx {
            keys: &keys,
            consumer: "stale",
            dlq_maxlen: 100,
        };
        for op in [
            Settle::Ack,
            Settle::Retry {
                due_ms: 0,
                attempt: 1,
                error: "x".into(),
            },
            Settle::Bury {
                reason: "fatal",
                error: "x".into(),
                attempt: Some(1),
            },
        ] {
            let stale = settle(&mut conn, ctx, &[(id.as_str(), &op)]).await.unwrap();
            assert_eq!(stale, std::slice::from_ref(&id), "{op:?} by a stale worker was applied");
        }
        // The entry is untouched: still in the stream, still pending for the new owner.
        let len: u64 = redis::cmd("XLEN")
            .arg(&keys.stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 1);
        assert_eq!(
            owned_ids(&mut conn, &keys, "fresh", 10).await.unwrap(),
            std::slice::from_ref(&id)
        );
        let dlq: u64 = redis::cmd("XLEN").arg(&keys.dlq).query_async(&mut conn).await.unwrap();
        assert_eq!(dlq, 0);
        // The owner's ack goes through and removes it.
        let ctx = SettleCtx {
            consumer: "fresh",
            ..ctx
        };
        assert!(
            settle(&mut conn, ctx, &[(id.as_str(), &Settle::Ack)])
                .await
                .unwrap()
                .is_empty()
        );
        let len: u64 = redis::cmd("XLEN")
            .arg(&keys.stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 0);
        // Settling twice is a no-op reported as stale, never a double count.
        assert_eq!(
            settle(&mut conn, ctx, &[(id.as_str(), &Settle::Ack)]).await.unwrap(),
            [id]
        );
        let done: u64 = redis::cmd("HGET")
            .arg(&keys.stats)
            .arg("done")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(done, 1);
    }

    #[tokio::test]
    async fn a_shard_is_dropped_only_when_empty_unless_forced() {
        let server = shared_server();
        let mut conn = connect(&server.client(), Some(Duration::from_secs(5))).await.unwrap();
        let keys = Queue::new(&unique_name("drop")).unwrap().shard("normal", 0);
        ensure_group(&mut conn, &keys.stream).await.unwrap();
        let exists = |conn: &mut ConnectionManager| {
            let mut conn = conn.clone();
            let stream = keys.stream.clone();
            async move {
                redis::cmd("EXISTS")
                    .arg(stream)
                    .query_async::<u64>(&mut conn)
                    .await
                    .unwrap()
            }
        };
        // An empty stream (only its group) goes.
        assert!(drop_shard(&mut conn, &keys, false).await.unwrap());
        assert_eq!(exists(&mut conn).await, 0);
        // One task, even one that arrived after the caller looked, keeps it; force drops it.
        ensure_group(&mut conn, &keys.stream).await.unwrap();
        let env = Envelope::new("k", Bytes::from_static(b"1"), Codec::Json);
        add_ready(&mut conn, &[(&keys, &env)]).await.unwrap();
        assert!(!drop_shard(&mut conn, &keys, false).await.unwrap());
        assert_eq!(exists(&mut conn).await, 1);
        assert!(drop_shard(&mut conn, &keys, true).await.unwrap());
        assert_eq!(exists(&mut conn).await, 0);
    }

    #[tokio::test]
    async fn settling_deletes_only_settled_entries() {
        let server = shared_server();
        let mut conn = connect(&server.client(), Some(Duration::from_secs(5))).await.unwrap();
        let keys = Queue::new(&unique_name("trim")).unwrap().shard("normal", 0);
        ensure_group(&mut conn, &keys.stream).await.unwrap();
        let add = |n: usize| -> Vec<Envelope> {
            (0..n)
                .map(|_| Envelope::new("k", Bytes::from_static(b"1"), Codec::Json))
                .collect()
        };
        let envs = add(3);
        let batch: Vec<(&ShardKeys, &Envelope)> = envs.iter().map(|e| (&keys, e)).collect();
        add_ready(&mut conn, &batch).await.unwrap();
        let stream = [keys.stream.as_str()];
        let a = read_group(&mut conn, "a", 1, None, &stream).await.unwrap();
        let b = read_group(&mut conn, "b", 2, None, &stream).await.unwrap();
        let (e1, e2, e3) = (&a[0].1.id, &b[0].1.id, &b[1].1.id);
        let later = add(1);
        add_ready(&mut conn, &[(&keys, &later[0])]).await.unwrap();
        let ctx = |consumer| SettleCtx {
            keys: &keys,
            consumer,
            dlq_maxlen: 100,
        };
        let ids = |rows: Vec<StreamEntry>| rows.into_iter().map(|e| e.id).collect::<Vec<_>>();
        // b settles its newer entry while a's older one is pending: only that one goes.
        settle(&mut conn, ctx("b"), &[(e3.as_str(), &Settle::Ack)])
            .await
            .unwrap();
        let left = ids(range(&mut conn, &keys.stream, "-", 10).await.unwrap());
        assert_eq!(left[..2], [e1.clone(), e2.clone()]);
        assert_eq!(left.len(), 3, "the undelivered entry stays");
        // a settles the oldest: b's pending entry and the undelivered one stay.
        settle(&mut conn, ctx("a"), &[(e1.as_str(), &Settle::Ack)])
            .await
            .unwrap();
        let left = ids(range(&mut conn, &keys.stream, "-", 10).await.unwrap());
        assert_eq!(left[0], *e2);
        assert_eq!(left.len(), 2);
        // Nothing pending after b's last settle: the undelivered entry still stays, and runs.
        settle(&mut conn, ctx("b"), &[(e2.as_str(), &Settle::Ack)])
            .await
            .unwrap();
        assert_eq!(range(&mut conn, &keys.stream, "-", 10).await.unwrap().len(), 1);
        assert_eq!(read_group(&mut conn, "a", 10, None, &stream).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn lease_renewal_never_steals_a_reclaimed_entry() {
        let server = shared_server();
        let (mut conn, keys, id) = setup(server).await;
        reclaim(&mut conn, reclaim_args(&keys, "fresh")).await.unwrap();
        // The stale worker's heartbeat renews only what it still owns: nothing.
        assert_eq!(extend(&mut conn, &keys, "stale", &[id.as_str()]).await.unwrap(), 0);
        assert_eq!(
            owned_ids(&mut conn, &keys, "fresh", 10).await.unwrap(),
            std::slice::from_ref(&id)
        );
        // Only ids the worker says it holds are renewed.
        assert_eq!(extend(&mut conn, &keys, "fresh", &["1-1"]).await.unwrap(), 0);
        // Renewal does not raise the delivery count (JUSTID).
        assert_eq!(extend(&mut conn, &keys, "fresh", &[id.as_str()]).await.unwrap(), 1);
        let rows = pending(&mut conn, &keys.stream, 10).await.unwrap();
        assert_eq!(rows[0].3, 2, "deliveries: one read plus one reclaim");
    }

    #[tokio::test]
    async fn entries_delivered_past_the_limit_are_buried_as_poison() {
        let server = shared_server();
        let (mut conn, keys, _id) = setup(server).await;
        let args = ReclaimArgs {
            max_deliveries: 1,
            ..reclaim_args(&keys, "fresh")
        };
        let got = reclaim(&mut conn, args).await.unwrap();
        assert_eq!((got.entries.len(), got.poisoned), (0, 1));
        let dlq = range(&mut conn, &keys.dlq, "-", 10).await.unwrap();
        let fields: std::collections::HashMap<String, String> = dlq[0]
            .fields
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into(), String::from_utf8_lossy(v).into()))
            .collect();
        assert_eq!(fields["reason"], "poison");
        assert_eq!(fields["deliveries"], "2");
        assert!(pending(&mut conn, &keys.stream, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reclaim_counts_deleted_entries_as_lost() {
        let server = shared_server();
        let (mut conn, keys, id) = setup(server).await;
        // Someone deletes the entry behind the engine's back while it is pending.
        delete_entries(&mut conn, &keys.stream, &[id.as_str()]).await.unwrap();
        let got = reclaim(&mut conn, reclaim_args(&keys, "fresh")).await.unwrap();
        assert_eq!((got.entries.len(), got.lost), (0, 1));
        let lost: u64 = redis::cmd("HGET")
            .arg(&keys.stats)
            .arg("lost")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(lost, 1);
    }
}
