//! Redis commands of the task lifecycle: tracked and unique enqueues, start and progress
//! records, tracked settles, cancel, status lookups, waits and events.
//!
//! Every write is one script on the task's shard (its record, events stream, cancel set, done
//! list and unique lock all carry the shard's tag), and each is folded into a call the task
//! makes anyway or batched per shard: enqueue (one script per task, pipelined per batch),
//! start (one script per shard per batch of starts), settle (the same `settle.lua` call),
//! progress (one script per shard per flush).

use std::sync::LazyLock;
use std::time::Duration;

use crate::broker::RedisConnection;
use bytes::Bytes;
use redis::{Script, Value};

use super::functions;
use super::settle::settle_invocation;
use super::stream::stream_map;
use super::{RangeStart, Settle, SettleCtx, StreamEntry, StreamId, bulk, entries, id_range, stream_ids};
use crate::envelope::{Codec, Envelope};
use crate::error::{Error, Result};
use crate::keys::{GROUP, ShardKeys};
use crate::msgpack::put_str;

static START: LazyLock<Script> = LazyLock::new(|| functions::with_records(include_str!("scripts/start.lua")));
static PROGRESS: LazyLock<Script> = LazyLock::new(|| functions::with_records(include_str!("scripts/progress.lua")));
static FINISHED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/finished.lua")));
static SWEEP: LazyLock<Script> = LazyLock::new(|| functions::with_records(include_str!("scripts/sweep.lua")));

/// Drops expired succeeded records of shards whose settles stopped (`sweep.lua`): at most
/// `limit` index members per shard, one call (on a Redis Cluster, the shards of one slot).
/// Returns how many members went.
pub async fn sweep_finished(conn: &mut RedisConnection, shards: &[&ShardKeys], limit: usize) -> Result<u64> {
    if shards.is_empty() {
        return Ok(0);
    }
    let mut inv = SWEEP.prepare_invoke();
    for k in shards {
        inv.key(&k.succeeded);
    }
    Ok(inv.arg(limit).invoke_async(conn).await?)
}

/// One task for [`enqueue`].
#[derive(Debug)]
pub struct EnqueueItem<'a> {
    /// Its shard.
    pub keys: &'a ShardKeys,
    /// The task.
    pub env: &'a Envelope,
    /// When it is due, ms since the epoch; 0 = ready now.
    pub due_ms: u64,
    /// How long its record is kept once final, ms; 0 = no record, no events.
    pub retention_ms: u64,
    /// Approximate cap of the shard's events stream.
    pub events_maxlen: usize,
    /// Its unique key's lock key and lifetime in ms (0 = until the task is final).
    pub unique: Option<(String, u64)>,
}

/// Enqueues tasks through `enqueue.lua` (the `rivulet_v1_enqueue` function), pipelined in one
/// round trip. Per task: `None` when it was enqueued, `Some(holder id)` when its unique key was
/// taken (nothing written).
pub async fn enqueue(conn: &mut RedisConnection, items: &[EnqueueItem<'_>], now: u64) -> Result<Vec<Option<String>>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let calls: Vec<redis::Cmd> = items.iter().map(|it| enqueue_call(it, now)).collect();
    let all: Vec<usize> = (0..calls.len()).collect();
    let mut replies = send_enqueues(conn, &calls, &all).await?;
    // A library missing (a fresh or flushed server): load it and resend exactly the calls
    // refused for it. A refused call ran nothing, so nothing is written twice.
    let missing: Vec<usize> = (0..replies.len())
        .filter(|&i| matches!(&replies[i], Err(e) if functions::is_missing(e)))
        .collect();
    if !missing.is_empty() {
        functions::install(conn).await?;
        let again = send_enqueues(conn, &calls, &missing).await?;
        for (i, reply) in missing.into_iter().zip(again) {
            replies[i] = reply;
        }
    }
    replies
        .into_iter()
        .map(|r| {
            let (added, id) = r?;
            Ok((added == 0).then_some(id))
        })
        .collect()
}

/// One task's `FCALL rivulet_v1_enqueue` (its contract: `scripts/enqueue.lua`).
fn enqueue_call(it: &EnqueueItem<'_>, now: u64) -> redis::Cmd {
    let lock = it.unique.as_ref().map(|(k, _)| k.as_str()).unwrap_or(&it.keys.stream);
    let record = it.keys.task(it.env.id.as_str());
    let mut keys = vec![
        it.keys.stream.as_str(),
        &it.keys.scheduled,
        &it.keys.stats,
        &record,
        &it.keys.events,
        lock,
    ];
    if it.env.group.is_some() {
        keys.extend([it.keys.fair.as_str(), &it.keys.groups]);
    }
    let mut cmd = functions::fcall("enqueue", &keys);
    cmd.arg(it.env.id.as_str())
        .arg(now)
        .arg(it.due_ms)
        .arg(it.retention_ms)
        .arg(it.events_maxlen)
        .arg(it.unique.as_ref().map(|(_, ttl)| ttl.to_string()).unwrap_or_default());
    // A ready task goes into the stream as it is sent, so it is sent compact (one field);
    // a delayed or grouped one waits as a set member first and stays flat.
    let fields = if it.due_ms == 0 && it.env.group.is_none() {
        it.env.stream_fields()
    } else {
        it.env.fields()
    };
    for (name, value) in fields {
        cmd.arg(name).arg(value.as_ref());
    }
    cmd
}

/// One enqueue reply per call: whether it was new, and the id.
type EnqueueReply = redis::RedisResult<(i64, String)>;

/// Sends the calls `which` (indexes into `calls`) in one round trip. One reply per call of
/// `which`, in its order.
///
/// On one node a batch of several is one transaction (`MULTI`/`EXEC`, like
/// [`super::add_ready`]): a connection cut in the middle leaves the whole batch or nothing, so
/// a caller knows a failed batch was not half written. A single call is atomic on its own (a
/// function runs whole), so it goes without the transaction: two commands fewer per task for a
/// producer that enqueues one at a time. On a Redis Cluster it is a plain pipeline, each call
/// atomic on its own: redis-rs follows a `MOVED` (a failover, a resharding) for a pipelined
/// command but aborts a transaction on it, and a producer would then fail until its slot map
/// is refreshed.
async fn send_enqueues(conn: &mut RedisConnection, calls: &[redis::Cmd], which: &[usize]) -> Result<Vec<EnqueueReply>> {
    let mut pipe = redis::pipe();
    if !conn.is_cluster() && which.len() > 1 {
        pipe.atomic();
    }
    for &i in which {
        pipe.add_command(calls[i].clone());
    }
    Ok(pipe.ignore_errors().query_async(conn).await?)
}

/// What [`start`] says about one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartCode {
    /// Run it.
    Run,
    /// Cancelled before it started: acknowledge it without running.
    Skip,
    /// Its cancel was asked for during an earlier delivery: settle it as cancelled.
    Cancel,
}

/// One task for [`start`]: task id, attempt, kind, retention ms.
pub type StartItem<'a> = (&'a str, u32, &'a str, u64);

/// Records that `worker` starts these tasks of one shard (`start.lua`).
pub async fn start(
    conn: &mut RedisConnection,
    keys: &ShardKeys,
    worker: &str,
    events_maxlen: usize,
    items: &[StartItem<'_>],
    now_ms: u64,
) -> Result<Vec<StartCode>> {
    let mut inv = START.key(&keys.events);
    inv.arg(worker).arg(now_ms).arg(events_maxlen);
    for (id, attempt, kind, retention) in items {
        inv.key(keys.task(id)).arg(*id).arg(*attempt).arg(*kind).arg(*retention);
    }
    let codes: Vec<i64> = inv.invoke_async(conn).await?;
    Ok(codes
        .into_iter()
        .map(|c| match c {
            1 => StartCode::Skip,
            2 => StartCode::Cancel,
            _ => StartCode::Run,
        })
        .collect())
}

/// Writes progress reports (task id, percent, message) of tasks `worker` runs in one shard.
pub async fn progress(
    conn: &mut RedisConnection,
    keys: &ShardKeys,
    worker: &str,
    events_maxlen: usize,
    reports: &[(&str, u8, &str)],
    now_ms: u64,
) -> Result<u64> {
    let mut inv = PROGRESS.key(&keys.events);
    inv.arg(worker).arg(now_ms).arg(events_maxlen);
    for (id, percent, message) in reports {
        inv.key(keys.task(id)).arg(*id).arg(*percent).arg(*message);
    }
    Ok(inv.invoke_async(conn).await?)
}

/// Ids of running tasks whose cancel was asked for, per shard, in one round trip.
pub async fn cancel_marks(conn: &mut RedisConnection, shards: &[&ShardKeys]) -> Result<Vec<Vec<String>>> {
    let mut pipe = redis::pipe();
    for k in shards {
        pipe.cmd("SMEMBERS").arg(&k.cancels);
    }
    Ok(pipe.query_async(conn).await?)
}

/// What a tracked outcome records beyond the plain [`Settle`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    /// The task.
    pub task_id: String,
    /// How long its record is kept once final, ms.
    pub retention_ms: u64,
    /// Its unique lock to release when final (held until then), if any.
    pub unique_lock: Option<String>,
    /// The result of a success, with its codec.
    pub result: Option<(Bytes, Codec)>,
    /// How long the run took, ms.
    pub run_ms: u64,
    /// `Some` when the task ends cancelled instead of with its [`Settle`].
    pub cancel: Option<Cancelled>,
    /// The task's kind, attempt and enqueue time (from its envelope), from which a success
    /// writes its final record without reading the live one; `None` when the entry did not
    /// parse (a final record is then written over the live record's fields).
    pub envelope: Option<TrackedEnvelope>,
}

/// The fields of a task's envelope its final record repeats ([`Tracked::envelope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedEnvelope {
    /// The task's kind.
    pub kind: String,
    /// The attempt that ran.
    pub attempt: u32,
    /// When it was enqueued, ms since the epoch.
    pub enqueued_at: u64,
}

/// How a tracked task ends cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It ran (or had begun to) and was stopped.
    WhileRunning,
}

/// [`super::settle`] with tracked outcomes too, in the same `settle.lua` call.
pub async fn settle_tracked(
    conn: &mut RedisConnection,
    ctx: SettleCtx<'_>,
    events_maxlen: usize,
    untracked: &[(StreamId, &Settle)],
    tracked: &[(StreamId, &Settle, &Tracked)],
) -> Result<Vec<StreamId>> {
    if tracked.is_empty() {
        return super::settle(conn, ctx, untracked).await;
    }
    let range = id_range(
        untracked
            .iter()
            .map(|(id, _)| *id)
            .chain(tracked.iter().map(|(id, _, _)| *id)),
    )
    .expect("tracked is not empty");
    let mut inv = settle_invocation(ctx, untracked, range, tracked.len());
    // A plain success of a task with an envelope and no unique lock (almost every tracked
    // outcome under load) goes in settle.lua's short form: its record key, and five values
    // with the final record packed here.
    let short = |op: &Settle, t: &Tracked| {
        t.cancel.is_none()
            && matches!(op, Settle::Ack)
            && t.envelope.is_some()
            && t.unique_lock.is_none()
            && t.retention_ms > 0
    };
    let (fast, tracked): (Vec<_>, Vec<_>) = tracked.iter().partition(|(_, op, t)| short(op, t));
    inv.key(&ctx.keys.events)
        .key(&ctx.keys.cancels)
        .key(&ctx.keys.waiting)
        .key(&ctx.keys.succeeded)
        .key(&ctx.keys.cancelled);
    for (entry, op, t) in &tracked {
        let done = ctx.keys.done(&t.task_id);
        inv.key(&ctx.keys.task(&t.task_id))
            .key(&done)
            .key(t.unique_lock.as_deref().unwrap_or(&done));
        inv.arg(*entry);
        match (t.cancel, op) {
            (Some(Cancelled::WhileRunning), _) => inv.arg("x").arg(t.run_ms).arg("").arg("").arg(""),
            (None, Settle::Ack) => {
                let (result, codec) = match &t.result {
                    Some((b, c)) => (b.as_ref(), c.as_str()),
                    None => (&b""[..], ""),
                };
                // (The start time from the call's clock: Lua's number conversions cost more.)
                inv.arg("s")
                    .arg(result)
                    .arg(codec)
                    .arg(t.run_ms)
                    .arg(ctx.now_ms.saturating_sub(t.run_ms))
            }
            (None, Settle::Retry { due_ms, attempt, error }) => {
                inv.arg("r").arg(*due_ms).arg(*attempt).arg(error.as_str()).arg("")
            }
            (None, Settle::Bury { reason, error, attempt }) => {
                let attempt = attempt.map(|a| a.to_string()).unwrap_or_default();
                inv.arg("b")
                    .arg(reason.as_str())
                    .arg(error.as_str())
                    .arg(attempt)
                    .arg(t.run_ms)
            }
            (None, Settle::Requeue) => inv.arg("q").arg("").arg("").arg("").arg(""),
            (None, Settle::Wait { due_ms, limit }) => inv.arg("w").arg(*due_ms).arg(limit.as_str()).arg("").arg(""),
        };
        inv.arg(t.task_id.as_str())
            .arg(t.retention_ms)
            .arg(if t.unique_lock.is_some() { "1" } else { "0" });
        match &t.envelope {
            Some(e) => inv.arg(e.kind.as_str()).arg(e.attempt).arg(e.enqueued_at),
            None => inv.arg("").arg("").arg(""),
        };
    }
    let mut packed = Vec::new();
    for (entry, _, t) in &fast {
        inv.key(&ctx.keys.task(&t.task_id));
        let Some(env) = &t.envelope else {
            unreachable!("a short success has its envelope")
        };
        packed.clear();
        pack_success(&mut packed, ctx, t, env);
        inv.arg(*entry)
            .arg(t.task_id.as_str())
            .arg(t.retention_ms)
            .arg(t.run_ms)
            .arg(packed.as_slice());
    }
    inv.arg(fast.len()).arg(events_maxlen);
    stream_ids(inv.invoke(conn).await?)
}

/// The final record of a plain success as `settle.lua` stores it (scripts/record.lua): the
/// MessagePack map of its fields, every key and value a string, what the script would pack
/// itself for a first delivery (it re-packs `runs` when the entry was delivered more often).
fn pack_success(out: &mut Vec<u8>, ctx: SettleCtx<'_>, t: &Tracked, env: &TrackedEnvelope) {
    let result = t.result.as_ref().filter(|(b, _)| !b.is_empty());
    let n = if result.is_some() { 13 } else { 11 };
    // (Writing into a Vec cannot fail.)
    let _ = rmp::encode::write_map_len(out, n);
    let num = |out: &mut Vec<u8>, name: &str, v: u64| {
        put_str(out, name.as_bytes());
        put_str(out, itoa::Buffer::new().format(v).as_bytes());
    };
    let text = |out: &mut Vec<u8>, name: &str, v: &[u8]| {
        put_str(out, name.as_bytes());
        put_str(out, v);
    };
    text(out, "state", b"succeeded");
    text(out, "kind", env.kind.as_bytes());
    num(out, "attempt", u64::from(env.attempt));
    num(out, "enqueued_at", env.enqueued_at);
    num(out, "runs", u64::from(env.attempt) + 1);
    num(out, "run_ms", t.run_ms);
    num(out, "started_at", ctx.now_ms.saturating_sub(t.run_ms));
    num(out, "finished_at", ctx.now_ms);
    num(out, "updated_at", ctx.now_ms);
    text(out, "worker", ctx.consumer.as_bytes());
    num(out, "retention_ms", t.retention_ms);
    if let Some((b, codec)) = result {
        text(out, "result", b);
        text(out, "result_codec", codec.as_str().as_bytes());
    }
}

/// Every priority's record of task `id` (the shards are the candidates: one per priority),
/// in one round trip. Empty field lists for shards without one.
pub async fn records(
    conn: &mut RedisConnection,
    shards: &[ShardKeys],
    id: &str,
) -> Result<Vec<Vec<(String, Vec<u8>)>>> {
    let keys: Vec<String> = shards.iter().map(|k| k.task(id)).collect();
    read_records(conn, &keys).await
}

/// The records of tasks `ids` of one shard, in one round trip (empty field lists for those
/// without one).
pub async fn records_of(
    conn: &mut RedisConnection,
    keys: &ShardKeys,
    ids: &[String],
) -> Result<Vec<Vec<(String, Vec<u8>)>>> {
    let keys: Vec<String> = ids.iter().map(|id| keys.task(id)).collect();
    read_records(conn, &keys).await
}

/// Reads records (their full keys) whatever their type, through `rivulet_v1_record`
/// (`scripts/record.lua` holds the rule: a HASH while live, a MessagePack STRING once final),
/// one call per record in one round trip.
async fn read_records(conn: &mut RedisConnection, records: &[String]) -> Result<Vec<Vec<(String, Vec<u8>)>>> {
    let calls: Vec<redis::Cmd> = records.iter().map(|r| functions::fcall("record", &[r])).collect();
    functions::call_all(conn, &calls).await
}

/// Cancels task `id` of one shard (`cancel.lua`): (outcome, state) as the script names them.
pub async fn cancel(
    conn: &mut RedisConnection,
    keys: &ShardKeys,
    id: &str,
    unique_lock: Option<&str>,
    events_maxlen: usize,
    now_ms: u64,
) -> Result<(String, String)> {
    let done = keys.done(id);
    let record = keys.task(id);
    let mut cmd = functions::fcall(
        "cancel",
        &[
            &record,
            &keys.stream,
            &keys.scheduled,
            &keys.retry,
            &keys.stats,
            &keys.events,
            &keys.cancels,
            &done,
            unique_lock.unwrap_or(&done),
            &keys.waiting,
            &keys.cancelled,
            &keys.fair,
            &keys.groups,
        ],
    );
    cmd.arg(id).arg(now_ms).arg(events_maxlen).arg(GROUP);
    let reply: (String, String) = functions::call(conn, &cmd).await?;
    Ok(reply)
}

/// Reads a task's record and registers a waiter unless it is final (`wait.lua`): (registered,
/// record fields).
pub async fn register_waiter(
    conn: &mut RedisConnection,
    keys: &ShardKeys,
    id: &str,
) -> Result<(bool, Vec<(String, Vec<u8>)>)> {
    let record = keys.task(id);
    let mut cmd = functions::fcall("wait", &[&record, &keys.waiting]);
    cmd.arg(id);
    let reply: Value = functions::call(conn, &cmd).await?;
    let Value::Array(items) = reply else {
        return Err(Error::protocol("wait.lua did not return an array"));
    };
    let mut it = items.into_iter();
    let registered = matches!(it.next(), Some(Value::Int(1)));
    let mut fields = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        fields.push((String::from_utf8_lossy(&bulk(k)?).into_owned(), bulk(v)?));
    }
    Ok((registered, fields))
}

/// Blocks on a task's done list for up to `timeout` (on a connection of its own: a blocking
/// call would stall a shared one). Whether it was woken. The token it took stays taken: a
/// waiter that finds the task final puts it back with [`wake_others`]; one woken by a token
/// left from an earlier run (the task was replayed since) must not.
pub async fn block_until_done(
    conn: &mut RedisConnection,
    keys: &ShardKeys,
    id: &str,
    timeout: Duration,
) -> Result<bool> {
    // BLPOP takes seconds as a decimal; at least 1 ms so 0 never means "forever".
    let secs = timeout.as_secs_f64().max(0.001);
    let got: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(keys.done(id))
        .arg(format!("{secs:.3}"))
        .query_async(conn)
        .await?;
    Ok(got.is_some())
}

/// Puts the done token back so every other waiter of a finished task wakes too (the list
/// expires a minute after the task finished).
pub async fn wake_others(conn: &mut RedisConnection, keys: &ShardKeys, id: &str) -> Result<()> {
    redis::cmd("RPUSH")
        .arg(keys.done(id))
        .arg("1")
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Drops a waiter registration that timed out (best effort: the count only decides whether
/// settling pushes to the done list).
pub async fn unregister_waiter(conn: &mut RedisConnection, keys: &ShardKeys, id: &str) -> Result<()> {
    // wait.lua's unregister mode: only a live record with waiters is touched (an HINCRBY on
    // a missing record would create a stray one, one on a final record is refused).
    let record = keys.task(id);
    let mut cmd = functions::fcall("wait", &[&record, &keys.waiting]);
    cmd.arg(id).arg("unregister");
    functions::call::<()>(conn, &cmd).await
}

/// Events of one shard after `after` (exclusive; `None` for the oldest), at most `count`.
pub async fn events(
    conn: &mut RedisConnection,
    keys: &ShardKeys,
    after: Option<StreamId>,
    count: usize,
) -> Result<Vec<StreamEntry>> {
    let start = after.map_or(RangeStart::First, RangeStart::After);
    super::range(conn, &keys.events, start, count).await
}

/// The newest event id of each shard (`None` for an empty stream), in one round trip.
pub async fn last_event_ids(conn: &mut RedisConnection, shards: &[&ShardKeys]) -> Result<Vec<Option<StreamId>>> {
    let mut pipe = redis::pipe();
    for k in shards {
        pipe.cmd("XREVRANGE")
            .arg(&k.events)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    replies
        .into_iter()
        .map(|v| Ok(entries(v)?.into_iter().next().map(|e| e.id)))
        .collect()
}

/// Blocks up to `block` for events after `after[i]` on each shard's events stream (a
/// connection of its own). Returns (shard index, entry) pairs.
///
/// On a Redis Cluster one `XREAD` may not name streams of several slots, and blocking reads
/// of several shards on one node's connection would queue behind each other; there each
/// shard is read without blocking, every 50 ms until an event comes or `block` passes.
pub async fn follow_events(
    conn: &mut RedisConnection,
    shards: &[&ShardKeys],
    after: &[Option<StreamId>],
    block: Duration,
    count: usize,
) -> Result<Vec<(usize, StreamEntry)>> {
    if !conn.is_cluster() || shards.len() < 2 {
        return read_events(conn, shards, after, Some(block), count).await;
    }
    let deadline = tokio::time::Instant::now() + block;
    loop {
        let calls = shards.iter().zip(after).enumerate().map(|(i, (k, a))| {
            let mut conn = conn.clone();
            async move {
                let got = read_events(&mut conn, &[*k], &[*a], None, count).await?;
                Ok::<_, Error>(got.into_iter().map(move |(_, e)| (i, e)))
            }
        });
        let out: Vec<(usize, StreamEntry)> = futures_util::future::try_join_all(calls)
            .await?
            .into_iter()
            .flatten()
            .collect();
        if !out.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(out);
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(50))).await;
    }
}

/// One `XREAD` over the shards' events streams, blocking up to `block` if given.
async fn read_events(
    conn: &mut RedisConnection,
    shards: &[&ShardKeys],
    after: &[Option<StreamId>],
    block: Option<Duration>,
    count: usize,
) -> Result<Vec<(usize, StreamEntry)>> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(count);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
    }
    cmd.arg("STREAMS");
    for k in shards {
        cmd.arg(&k.events);
    }
    for a in after {
        // XREAD takes `0-0` for "from the start".
        cmd.arg(a.unwrap_or(StreamId { ms: 0, seq: 0 }));
    }
    let reply: Value = cmd.query_async(conn).await?;
    let mut out = Vec::new();
    for (key, list) in stream_map(reply)? {
        let idx = shards
            .iter()
            .position(|k| k.events.as_bytes() == key.as_slice())
            .ok_or_else(|| Error::protocol("XREAD answered for a stream not asked for"))?;
        out.extend(list.into_iter().map(|e| (idx, e)));
    }
    Ok(out)
}

/// The unique lock a task's record names (`unique_key` holds the lock's full key).
pub fn lock_of(fields: &[(String, Vec<u8>)]) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k == "unique_key")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Up to `limit` task ids of one shard in one state, read from the structure that holds
/// them (never a key scan): `scheduled` and `retrying` from their sets (earliest due first),
/// `queued` from the stream past the group's last delivery, `active` from the PEL, `dead`
/// from the dead-letter stream, `succeeded` and `cancelled` from the shard's index of kept
/// records (`finished.lua`, newest first). For these two, `after` is the cursor a previous
/// call returned, and the second value the cursor of the next page (`None` at the end); the
/// other states take none and return none.
pub async fn list_ids(
    conn: &mut RedisConnection,
    keys: &ShardKeys,
    state: crate::lifecycle::TaskState,
    after: Option<&str>,
    limit: usize,
    now_ms: u64,
) -> Result<(Vec<String>, Option<String>)> {
    use crate::lifecycle::TaskState as S;
    let ids = match state {
        S::Scheduled | S::Retrying => {
            let set = if state == S::Scheduled {
                &keys.scheduled
            } else {
                &keys.retry
            };
            let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                .arg(set)
                .arg(0)
                .arg(limit.saturating_sub(1))
                .query_async(conn)
                .await?;
            members.iter().filter_map(|m| member_id(m)).collect()
        }
        S::Queued => {
            let groups: redis::RedisResult<Vec<std::collections::HashMap<String, Value>>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&keys.stream)
                .query_async(conn)
                .await;
            let after = groups
                .ok()
                .and_then(|gs| {
                    gs.into_iter()
                        .find(|g| g.get("name").and_then(|v| bulk(v.clone()).ok()).as_deref() == Some(GROUP.as_bytes()))
                })
                .and_then(|g| g.get("last-delivered-id").and_then(|v| bulk(v.clone()).ok()))
                .map(|b| format!("({}", String::from_utf8_lossy(&b)))
                .unwrap_or_else(|| "-".to_owned());
            let reply: Value = redis::cmd("XRANGE")
                .arg(&keys.stream)
                .arg(after)
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async(conn)
                .await?;
            entries(reply)?.into_iter().filter_map(field_id).collect()
        }
        S::Active => {
            let rows = super::pending(conn, &keys.stream, limit).await?;
            let mut pipe = redis::pipe();
            for row in &rows {
                pipe.cmd("XRANGE").arg(&keys.stream).arg(row.id).arg(row.id);
            }
            let replies: Vec<Value> = if rows.is_empty() {
                Vec::new()
            } else {
                pipe.query_async(conn).await?
            };
            let mut out = Vec::new();
            for r in replies {
                out.extend(entries(r)?.into_iter().filter_map(field_id));
            }
            out
        }
        S::Dead => {
            let rows = super::range(conn, &keys.dlq, RangeStart::First, limit).await?;
            rows.into_iter().filter_map(field_id).collect()
        }
        S::Succeeded | S::Cancelled => {
            let index = if state == S::Succeeded {
                &keys.succeeded
            } else {
                &keys.cancelled
            };
            // The cursor is `score:skip:first id` (the id last: it may hold colons).
            let (score, skip, first) = match after {
                None => ("", "0", ""),
                Some(c) => {
                    let mut parts = c.splitn(3, ':');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(score), Some(skip), Some(first)) => (score, skip, first),
                        _ => return Err(Error::config("after", format!("{c:?} is not a listing cursor"))),
                    }
                }
            };
            let (ids, score, first, skip): (Vec<String>, String, String, u64) = FINISHED
                .key(index)
                .arg(now_ms)
                .arg(score)
                .arg(first)
                .arg(skip)
                .arg(limit)
                .invoke_async(conn)
                .await?;
            let next = (!score.is_empty()).then(|| format!("{score}:{skip}:{first}"));
            return Ok((ids, next));
        }
        S::Unknown => Vec::new(),
    };
    Ok((ids, None))
}

fn field_id(e: StreamEntry) -> Option<String> {
    crate::envelope::entry_field(&e.fields, "id").map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The `id` field of a `scheduled`/`retry` member: a MessagePack array of alternating field
/// names and values.
pub(super) fn member_id(m: &[u8]) -> Option<String> {
    let (count, mut at) = crate::msgpack::array(m)?;
    for _ in 0..count / 2 {
        let k = crate::msgpack::string(m, &mut at)?;
        let v = crate::msgpack::string(m, &mut at)?;
        if k == b"id" {
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        // A compact entry's `task` (docs/wire-format.md): the id is its first string.
        if k == b"task"
            && let Some((_, mut at)) = crate::msgpack::array(v)
        {
            return crate::msgpack::string(v, &mut at).map(|id| String::from_utf8_lossy(id).into_owned());
        }
    }
    None
}

/// The task ids of a finished index's member, or the per-task values of a batched event: a
/// MessagePack array of strings.
pub(crate) fn packed_ids(m: &[u8]) -> Option<Vec<String>> {
    let (count, mut at) = crate::msgpack::array(m)?;
    (0..count)
        .map(|_| crate::msgpack::string(m, &mut at).map(|s| String::from_utf8_lossy(s).into_owned()))
        .collect()
}

/// Deletes the lifecycle keys of one shard that is being dropped: its events stream and cancel
/// set, and the record, done list and unique lock of every task it still names (in its
/// stream, scheduled and retry sets, dead-letter stream, events and finished indexes). Records
/// of dead tasks whose dead letter was purged expire on their own after the retention.
pub async fn drop_records(conn: &mut RedisConnection, keys: &ShardKeys) -> Result<()> {
    let mut ids: Vec<String> = Vec::new();
    for stream in [&keys.stream, &keys.dlq, &keys.events] {
        let mut after = RangeStart::First;
        loop {
            let page = super::range(conn, stream, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = RangeStart::After(last.id);
            ids.extend(page.into_iter().filter_map(field_id));
        }
    }
    for set in [&keys.scheduled, &keys.retry, &keys.fair] {
        let members: Vec<Vec<u8>> = redis::cmd("ZRANGE").arg(set).arg(0).arg(-1).query_async(conn).await?;
        ids.extend(members.iter().filter_map(|m| member_id(m)));
    }
    for index in [&keys.succeeded, &keys.cancelled] {
        let members: Vec<Vec<u8>> = redis::cmd("ZRANGE").arg(index).arg(0).arg(-1).query_async(conn).await?;
        ids.extend(members.iter().flat_map(|m| packed_ids(m).unwrap_or_default()));
    }
    ids.sort_unstable();
    ids.dedup();
    for chunk in ids.chunks(500) {
        let found = records_of(conn, keys, chunk).await?;
        let mut pipe = redis::pipe();
        for (id, lock) in chunk.iter().zip(found.iter().map(|f| lock_of(f))) {
            pipe.cmd("DEL").arg(keys.task(id)).arg(keys.done(id)).ignore();
            if let Some(lock) = lock {
                pipe.cmd("DEL").arg(lock).ignore();
            }
        }
        pipe.query_async::<()>(conn).await?;
    }
    redis::cmd("DEL")
        .arg(&keys.events)
        .arg(&keys.cancels)
        .arg(&keys.waiting)
        .arg(&keys.succeeded)
        .arg(&keys.cancelled)
        .arg(&keys.finished)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Replays dead letters of one shard into its stream (`replay.lua`) and puts each replayed
/// task's record back to `queued` with a `replayed` event. Returns how many. The dead letters
/// are read first for their task ids, so `replay.lua` receives every record key in `KEYS`.
pub async fn replay(
    conn: &mut RedisConnection,
    keys: &ShardKeys,
    ids: &[StreamId],
    events_maxlen: usize,
    now_ms: u64,
) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("XRANGE").arg(&keys.dlq).arg(*id).arg(*id);
    }
    let found: Vec<Value> = pipe.query_async(conn).await?;
    let mut entry_ids = Vec::with_capacity(ids.len());
    let mut records = Vec::with_capacity(ids.len());
    for (id, reply) in ids.iter().zip(found) {
        // Gone already (replayed or purged by someone else): skip it, as replay.lua would.
        let Some(task) = entries(reply)?.into_iter().next().and_then(field_id) else {
            continue;
        };
        entry_ids.push(*id);
        records.push(keys.task(&task));
    }
    if entry_ids.is_empty() {
        return Ok(0);
    }
    let mut call_keys: Vec<&str> = vec![&keys.dlq, &keys.stream, &keys.stats, &keys.events];
    call_keys.extend(records.iter().map(String::as_str));
    let mut cmd = functions::fcall("replay", &call_keys);
    cmd.arg(&entry_ids).arg(now_ms).arg(events_maxlen);
    functions::call(conn, &cmd).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{ReclaimArgs, RedisTarget, ensure_group, read_group, reclaim};
    use crate::envelope::Envelope;
    use crate::keys::Queue;
    use crate::testing::{RedisServer, wait_until};

    #[tokio::test]
    async fn a_fenced_worker_cannot_overwrite_the_record_of_the_new_owner() {
        let server = RedisServer::start();
        let mut conn = RedisTarget::from(server.client()).connect().await.unwrap();
        let queue = Queue::new("fenced").unwrap();
        let keys = queue.shard("normal", 0);
        ensure_group(&mut conn, &keys.stream).await.unwrap();
        let env = Envelope::new("k", Bytes::from_static(b"1"), Codec::Json);
        let item = EnqueueItem {
            keys: &keys,
            env: &env,
            due_ms: 0,
            retention_ms: 60_000,
            events_maxlen: 100,
            unique: None,
        };
        assert_eq!(enqueue(&mut conn, &[item], 1).await.unwrap(), [None]);
        let entry = read_group(&mut conn, "stale", 10, None, &[keys.stream.as_str()])
            .await
            .unwrap()
            .remove(0)
            .1
            .id;
        let id = env.id.as_str();
        start(&mut conn, &keys, "stale", 100, &[(id, 0, "k", 60_000)], 2)
            .await
            .unwrap();
        // The lease ran out; another worker takes the task over and starts it again.
        let args = ReclaimArgs {
            keys: &keys,
            consumer: "fresh",
            lease: Duration::ZERO,
            cursor: crate::broker::SCAN_START,
            count: 10,
            max_deliveries: 5,
        };
        assert_eq!(reclaim(&mut conn, args).await.unwrap().entries.len(), 1);
        start(&mut conn, &keys, "fresh", 100, &[(id, 0, "k", 60_000)], 2)
            .await
            .unwrap();
        let tracked = Tracked {
            task_id: id.to_owned(),
            retention_ms: 60_000,
            unique_lock: None,
            result: Some((Bytes::from_static(b"stale"), Codec::Bytes)),
            run_ms: 1,
            cancel: None,
            envelope: Some(TrackedEnvelope {
                kind: "k".to_owned(),
                attempt: 0,
                enqueued_at: 1,
            }),
        };
        let ctx = |consumer| SettleCtx {
            keys: &keys,
            consumer,
            dlq_maxlen: 100,
            now_ms: 4,
        };
        // The stale worker's success is fenced off: the record still names the new owner.
        let stale = settle_tracked(&mut conn, ctx("stale"), 100, &[], &[(entry, &Settle::Ack, &tracked)])
            .await
            .unwrap();
        assert_eq!(stale, [entry]);
        let rec = &records(&mut conn, std::slice::from_ref(&keys), id).await.unwrap()[0];
        let field = |name: &str| rec.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(field("state").as_deref(), Some(&b"active"[..]));
        assert_eq!(field("worker").as_deref(), Some(&b"fresh"[..]));
        assert_eq!(field("runs").as_deref(), Some(&b"2"[..]));
        assert_eq!(field("result"), None);
        // The owner's outcome lands, with the record's expiry set.
        let fresh = Tracked {
            result: Some((Bytes::from_static(b"fresh"), Codec::Bytes)),
            ..tracked
        };
        let stale = settle_tracked(&mut conn, ctx("fresh"), 100, &[], &[(entry, &Settle::Ack, &fresh)])
            .await
            .unwrap();
        assert!(stale.is_empty());
        let rec = &records(&mut conn, std::slice::from_ref(&keys), id).await.unwrap()[0];
        let field = |name: &str| rec.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(field("state").as_deref(), Some(&b"succeeded"[..]));
        assert_eq!(field("result").as_deref(), Some(&b"fresh"[..]));
        // (Packed by the caller for a first delivery; this is the entry's second: re-counted.)
        assert_eq!(field("runs").as_deref(), Some(&b"2"[..]));
        assert_eq!(field("worker").as_deref(), Some(&b"fresh"[..]));
        let ttl = finished_ttl(&mut conn, &keys, id).await;
        assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
        // A start record arriving late (after the settle) leaves the final state alone.
        start(&mut conn, &keys, "fresh", 100, &[(id, 0, "k", 60_000)], 2)
            .await
            .unwrap();
        let rec = &records(&mut conn, std::slice::from_ref(&keys), id).await.unwrap()[0];
        assert!(rec.iter().any(|(k, v)| k == "state" && v == b"succeeded"), "{rec:?}");
    }

    /// A tracked enqueue of `env` (unique key `unique`, held until final), read by worker `w`:
    /// its entry id (`None` when the unique key was taken).
    async fn enqueued_and_read(
        conn: &mut RedisConnection,
        keys: &ShardKeys,
        env: &Envelope,
        unique: Option<&str>,
    ) -> Option<StreamId> {
        let item = EnqueueItem {
            keys,
            env,
            due_ms: 0,
            retention_ms: 60_000,
            events_maxlen: 100,
            unique: unique.map(|k| (keys.unique(k), 0)),
        };
        if enqueue(conn, &[item], 1).await.unwrap() != [None] {
            return None;
        }
        let got = read_group(conn, "w", 10, None, &[keys.stream.as_str()]).await.unwrap();
        got.into_iter().map(|(_, e)| e.id).next()
    }

    fn tracked_of(env: &Envelope, unique_lock: Option<String>, result: Option<&'static [u8]>) -> Tracked {
        Tracked {
            task_id: env.id.as_str().to_owned(),
            retention_ms: 60_000,
            unique_lock,
            result: result.map(|r| (Bytes::from_static(r), Codec::Bytes)),
            run_ms: 3,
            cancel: None,
            envelope: Some(TrackedEnvelope {
                kind: env.kind.clone(),
                attempt: env.attempt,
                enqueued_at: env.enqueued_at,
            }),
        }
    }

    fn field<'a>(rec: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
        rec.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    async fn key_type(conn: &mut RedisConnection, key: &str) -> String {
        redis::cmd("TYPE").arg(key).query_async(conn).await.unwrap()
    }

    /// How long the succeeded record of task `id` (its field of the shard's `finished` hash,
    /// `scripts/record.lua`) is kept still, ms by the server's clock; panics without one.
    async fn finished_ttl(conn: &mut RedisConnection, keys: &ShardKeys, id: &str) -> i64 {
        let v: Vec<u8> = redis::cmd("HGET")
            .arg(&keys.finished)
            .arg(id)
            .query_async(conn)
            .await
            .unwrap();
        let sp = v.iter().position(|&b| b == b' ').expect("expiry, a space, the record");
        let expires: i64 = std::str::from_utf8(&v[..sp]).unwrap().parse().unwrap();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await.unwrap();
        expires - (secs * 1000 + micros / 1000)
    }

    #[tokio::test]
    async fn a_final_record_is_one_finished_field_and_every_script_reads_it() {
        let server = RedisServer::start();
        let mut conn = RedisTarget::from(server.client()).connect().await.unwrap();
        let queue = Queue::new("final").unwrap();
        let keys = queue.shard("normal", 0);
        ensure_group(&mut conn, &keys.stream).await.unwrap();
        let a = Envelope::new("k", Bytes::from_static(b"1"), Codec::Json);
        let b = Envelope::new("k", Bytes::from_static(b"2"), Codec::Json);
        let ea = enqueued_and_read(&mut conn, &keys, &a, Some("u")).await.unwrap();
        let eb = enqueued_and_read(&mut conn, &keys, &b, None).await.unwrap();
        // While the unique key is held (until final), a second enqueue is a duplicate.
        let dup = Envelope::new("k", Bytes::from_static(b"3"), Codec::Json);
        assert_eq!(enqueued_and_read(&mut conn, &keys, &dup, Some("u")).await, None);
        let (ta, tb) = (
            tracked_of(&a, Some(keys.unique("u")), Some(b"ra")),
            tracked_of(&b, None, None),
        );
        let ctx = SettleCtx {
            keys: &keys,
            consumer: "w",
            dlq_maxlen: 100,
            now_ms: 10,
        };
        let stale = settle_tracked(
            &mut conn,
            ctx,
            100,
            &[],
            &[(ea, &Settle::Ack, &ta), (eb, &Settle::Ack, &tb)],
        )
        .await
        .unwrap();
        assert!(stale.is_empty());

        // One field each of the shard's finished hash, with its expiry, the live hashes gone;
        // read back whole through the one reader.
        let (ka, kb) = (keys.task(a.id.as_str()), keys.task(b.id.as_str()));
        for (k, id) in [(&ka, a.id.as_str()), (&kb, b.id.as_str())] {
            assert_eq!(key_type(&mut conn, k).await, "none");
            let ttl = finished_ttl(&mut conn, &keys, id).await;
            assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
        }
        let rec = records(&mut conn, std::slice::from_ref(&keys), a.id.as_str())
            .await
            .unwrap()
            .remove(0);
        assert_eq!(field(&rec, "state"), Some(&b"succeeded"[..]));
        assert_eq!(field(&rec, "result"), Some(&b"ra"[..]));
        assert_eq!(field(&rec, "result_codec"), Some(&b"bytes"[..]));
        assert_eq!(field(&rec, "kind"), Some(&b"k"[..]));
        assert_eq!(field(&rec, "runs"), Some(&b"1"[..]));
        assert_eq!(field(&rec, "run_ms"), Some(&b"3"[..]));
        assert_eq!(field(&rec, "worker"), Some(&b"w"[..]));
        assert_eq!(field(&rec, "started_at"), Some(&b"7"[..]));
        let both = records_of(&mut conn, &keys, &[a.id.to_string(), b.id.to_string()])
            .await
            .unwrap();
        assert_eq!(field(&both[1], "state"), Some(&b"succeeded"[..]));
        assert_eq!(field(&both[1], "result"), None);

        // A late start and a late progress report are no-ops, never a WRONGTYPE error.
        let codes = start(&mut conn, &keys, "w", 100, &[(a.id.as_str(), 0, "k", 60_000)], 20)
            .await
            .unwrap();
        assert_eq!(codes, [StartCode::Run]);
        let written = progress(&mut conn, &keys, "w", 100, &[(a.id.as_str(), 50, "late")], 20)
            .await
            .unwrap();
        assert_eq!(written, 0);
        let again = records(&mut conn, std::slice::from_ref(&keys), a.id.as_str())
            .await
            .unwrap()
            .remove(0);
        assert_eq!(again, rec, "the final record is unchanged");
        assert_eq!(
            key_type(&mut conn, &ka).await,
            "none",
            "no live record beside the final one"
        );

        // Cancel answers the final state; a wait on it does not register, and an unregister
        // leaves it alone.
        assert_eq!(
            cancel(&mut conn, &keys, a.id.as_str(), None, 100, 30).await.unwrap(),
            ("final".to_owned(), "succeeded".to_owned())
        );
        let (registered, fields) = register_waiter(&mut conn, &keys, a.id.as_str()).await.unwrap();
        assert!(!registered);
        assert_eq!(field(&fields, "state"), Some(&b"succeeded"[..]));
        unregister_waiter(&mut conn, &keys, a.id.as_str()).await.unwrap();
        assert_eq!(key_type(&mut conn, &ka).await, "none");

        // The unique key was freed at the final state: the key enqueues anew. The same id
        // enqueued again starts a live record of its own over the final one.
        let fresh = Envelope::new("k", Bytes::from_static(b"4"), Codec::Json);
        assert!(enqueued_and_read(&mut conn, &keys, &fresh, Some("u")).await.is_some());
        let mut same = Envelope::new("k2", Bytes::from_static(b"5"), Codec::Json);
        same.id = a.id.clone();
        assert!(enqueued_and_read(&mut conn, &keys, &same, None).await.is_some());
        assert_eq!(key_type(&mut conn, &ka).await, "hash");
        let rec = records(&mut conn, std::slice::from_ref(&keys), a.id.as_str())
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            (field(&rec, "state"), field(&rec, "kind"), field(&rec, "result")),
            (Some(&b"queued"[..]), Some(&b"k2"[..]), None)
        );

        // The two successes share one event entry; the reader gives one event per task.
        let entries = events(&mut conn, &keys, None, 100).await.unwrap();
        let batched: Vec<_> = entries
            .iter()
            .filter(|e| {
                e.fields
                    .iter()
                    .any(|(k, v)| &k[..] == b"event" && &v[..] == b"succeeded")
            })
            .collect();
        assert_eq!(batched.len(), 1, "{entries:?}");
        let read: Vec<crate::lifecycle::Event> = entries
            .into_iter()
            .flat_map(|e| crate::lifecycle::Event::from_entry("normal", 0, e))
            .filter(|e| e.event == "succeeded")
            .collect();
        let seen: Vec<(&str, &[(String, String)])> =
            read.iter().map(|e| (e.task_id.as_str(), e.fields.as_slice())).collect();
        let want = |id: &Envelope| {
            (
                id.id.as_str().to_owned(),
                vec![
                    ("run_ms".to_owned(), "3".to_owned()),
                    ("worker".to_owned(), "w".to_owned()),
                ],
            )
        };
        let (wa, wb) = (want(&a), want(&b));
        assert_eq!(
            seen,
            [(wa.0.as_str(), wa.1.as_slice()), (wb.0.as_str(), wb.1.as_slice())]
        );
        assert!(read.iter().all(|e| e.at == 10 && e.stream_id == read[0].stream_id));
    }

    #[tokio::test]
    async fn a_dead_final_record_replays_into_a_live_one() {
        let server = RedisServer::start();
        let mut conn = RedisTarget::from(server.client()).connect().await.unwrap();
        let queue = Queue::new("replayed").unwrap();
        let keys = queue.shard("normal", 0);
        ensure_group(&mut conn, &keys.stream).await.unwrap();
        let d = Envelope::new("k", Bytes::from_static(b"1"), Codec::Json);
        let entry = enqueued_and_read(&mut conn, &keys, &d, None).await.unwrap();
        let bury = Settle::Bury {
            reason: super::super::DeadReason::Fatal,
            error: "no".to_owned(),
            attempt: Some(1),
        };
        let ctx = SettleCtx {
            keys: &keys,
            consumer: "w",
            dlq_maxlen: 100,
            now_ms: 10,
        };
        let t = tracked_of(&d, None, None);
        settle_tracked(&mut conn, ctx, 100, &[], &[(entry, &bury, &t)])
            .await
            .unwrap();
        let k = keys.task(d.id.as_str());
        assert_eq!(key_type(&mut conn, &k).await, "string");
        let rec = records(&mut conn, std::slice::from_ref(&keys), d.id.as_str())
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            (field(&rec, "state"), field(&rec, "reason"), field(&rec, "kind")),
            (Some(&b"dead"[..]), Some(&b"fatal"[..]), Some(&b"k"[..]))
        );
        assert_eq!(field(&rec, "entry"), None, "live-only fields go at the final state");
        let dlq_id = StreamId::parse(std::str::from_utf8(field(&rec, "dlq_id").unwrap()).unwrap()).unwrap();
        assert_eq!(replay(&mut conn, &keys, &[dlq_id], 100, 20).await.unwrap(), 1);
        assert_eq!(key_type(&mut conn, &k).await, "hash");
        let ttl: i64 = redis::cmd("PTTL").arg(&k).query_async(&mut conn).await.unwrap();
        assert_eq!(ttl, -1, "a replayed record lives again, without expiry");
        let rec = records(&mut conn, std::slice::from_ref(&keys), d.id.as_str())
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            (
                field(&rec, "state"),
                field(&rec, "attempt"),
                field(&rec, "kind"),
                field(&rec, "reason")
            ),
            (Some(&b"queued"[..]), Some(&b"0"[..]), Some(&b"k"[..]), None)
        );
        assert!(field(&rec, "entry").is_some());
    }

    #[tokio::test]
    async fn expired_succeeded_records_read_unknown_and_are_swept() {
        let server = RedisServer::start();
        let mut conn = RedisTarget::from(server.client()).connect().await.unwrap();
        let queue = Queue::new("swept").unwrap();
        let keys = queue.shard("normal", 0);
        ensure_group(&mut conn, &keys.stream).await.unwrap();
        let ctx = SettleCtx {
            keys: &keys,
            consumer: "w",
            dlq_maxlen: 100,
            now_ms: 10,
        };
        let hlen = |conn: &mut RedisConnection| {
            let mut c = conn.clone();
            let k = keys.finished.clone();
            async move { redis::cmd("HLEN").arg(k).query_async::<u64>(&mut c).await.unwrap() }
        };
        // Two tasks kept 1 ms, one of them (`a`) then enqueued again under its id and kept
        // a minute: the older index member's sweep must leave the newer record.
        let a = Envelope::new("k", Bytes::from_static(b"1"), Codec::Json);
        let b = Envelope::new("k", Bytes::from_static(b"2"), Codec::Json);
        let ea = enqueued_and_read(&mut conn, &keys, &a, None).await.unwrap();
        let eb = enqueued_and_read(&mut conn, &keys, &b, None).await.unwrap();
        let short = |env: &Envelope| Tracked {
            retention_ms: 1,
            ..tracked_of(env, None, None)
        };
        let (ta, tb) = (short(&a), short(&b));
        settle_tracked(
            &mut conn,
            ctx,
            100,
            &[],
            &[(ea, &Settle::Ack, &ta), (eb, &Settle::Ack, &tb)],
        )
        .await
        .unwrap();
        let expired = |conn: &mut RedisConnection, id: String| {
            let mut c = conn.clone();
            let k = keys.clone();
            async move { records(&mut c, std::slice::from_ref(&k), &id).await.unwrap()[0].is_empty() }
        };
        // (The server's clock decides: 1 ms passes within a few reads.)
        assert!(
            wait_until(Duration::from_secs(10), async || expired(&mut conn, b.id.to_string())
                .await)
            .await,
            "a record kept 1 ms never expired"
        );
        assert_eq!(
            hlen(&mut conn).await,
            2,
            "expired fields stay until swept, reading unknown"
        );
        let mut again = Envelope::new("k", Bytes::from_static(b"3"), Codec::Json);
        again.id = a.id.clone();
        let e2 = enqueued_and_read(&mut conn, &keys, &again, None).await.unwrap();
        let t2 = tracked_of(&again, None, Some(b"second"));
        // This settle's own sweep drops the first member: b's field goes, a's newer one stays.
        settle_tracked(&mut conn, ctx, 100, &[], &[(e2, &Settle::Ack, &t2)])
            .await
            .unwrap();
        assert_eq!(hlen(&mut conn).await, 1);
        let rec = records(&mut conn, std::slice::from_ref(&keys), a.id.as_str())
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            (field(&rec, "state"), field(&rec, "result")),
            (Some(&b"succeeded"[..]), Some(&b"second"[..]))
        );
        let members: u64 = redis::cmd("ZCARD")
            .arg(&keys.succeeded)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(members, 1, "the swept member left the index");
        // An idle shard's sweep (the promoter's) finds nothing expired now.
        assert_eq!(sweep_finished(&mut conn, &[&keys], 16).await.unwrap(), 0);
        assert_eq!(hlen(&mut conn).await, 1);

        // With no settle after it, a short record goes by the idle sweep alone.
        let c = Envelope::new("k", Bytes::from_static(b"4"), Codec::Json);
        let ec = enqueued_and_read(&mut conn, &keys, &c, None).await.unwrap();
        let tc = short(&c);
        settle_tracked(&mut conn, ctx, 100, &[], &[(ec, &Settle::Ack, &tc)])
            .await
            .unwrap();
        assert_eq!(hlen(&mut conn).await, 2);
        assert!(
            wait_until(Duration::from_secs(10), async || sweep_finished(
                &mut conn,
                &[&keys],
                16
            )
            .await
            .unwrap()
                > 0)
            .await,
            "the sweep never found the expired record"
        );
        assert_eq!(hlen(&mut conn).await, 1);
        assert!(expired(&mut conn, c.id.to_string()).await);
    }

    #[test]
    fn batched_event_entries_read_as_one_event_per_task() {
        let entry = |fields: Vec<(&str, Vec<u8>)>| StreamEntry {
            id: StreamId { ms: 5, seq: 0 },
            fields: fields
                .into_iter()
                .map(|(k, v)| (bytes::Bytes::copy_from_slice(k.as_bytes()), v.into()))
                .collect(),
        };
        // ids ["a", "bc"], attempt ["0", "2"], as cmsgpack writes them.
        let ids = vec![0x92, 0xa1, b'a', 0xa2, b'b', b'c'];
        let attempts = vec![0x92, 0xa1, b'0', 0xa1, b'2'];
        let e = entry(vec![
            ("event", b"started".to_vec()),
            ("at", b"9".to_vec()),
            ("ids", ids.clone()),
            ("per_id", b"attempt".to_vec()),
            ("worker", b"w1".to_vec()),
            ("attempt", attempts),
        ]);
        let got = crate::lifecycle::Event::from_entry("high", 2, e);
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].task_id.as_str(), got[0].event.as_str(), got[0].at),
            ("a", "started", 9)
        );
        assert_eq!(got[0].fields, pairs(&[("worker", "w1"), ("attempt", "0")]));
        assert_eq!(got[1].task_id, "bc");
        assert_eq!(got[1].fields, pairs(&[("worker", "w1"), ("attempt", "2")]));
        assert!(
            got.iter()
                .all(|e| e.priority == "high" && e.shard == 2 && e.stream_id == "5-0")
        );
        // A per-task column of the wrong length: one event as it is, not a silent drop.
        let bad = entry(vec![
            ("event", b"started".to_vec()),
            ("ids", ids),
            ("per_id", b"attempt".to_vec()),
            ("attempt", vec![0x91, 0xa1, b'0']),
        ]);
        let got = crate::lifecycle::Event::from_entry("high", 2, bad);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].task_id, "");
        // A plain entry is one event.
        let plain = entry(vec![
            ("id", b"x".to_vec()),
            ("event", b"dead".to_vec()),
            ("reason", b"fatal".to_vec()),
        ]);
        let got = crate::lifecycle::Event::from_entry("high", 2, plain);
        assert_eq!((got.len(), got[0].task_id.as_str()), (1, "x"));
        assert_eq!(got[0].fields, pairs(&[("reason", "fatal")]));
    }

    #[test]
    fn member_ids_are_read_from_msgpack_arrays() {
        // ["kind", "k", "id", "abc"] as cmsgpack writes it.
        let m = [
            0x94, 0xa4, b'k', b'i', b'n', b'd', 0xa1, b'k', 0xa2, b'i', b'd', 0xa3, b'a', b'b', b'c',
        ];
        assert_eq!(member_id(&m).as_deref(), Some("abc"));
        assert_eq!(member_id(&[0x90]), None);
        assert_eq!(member_id(&[0x92, 0xa2]), None, "truncated");
        // A member another language wrote with a compact `task` field: the id is its first string.
        let env = crate::envelope::Envelope::new("k", bytes::Bytes::from_static(b"{}"), crate::envelope::Codec::Json);
        let mut m = vec![0x92, 0xa4];
        m.extend_from_slice(b"task");
        let packed = env.stream_fields().remove(0).1;
        m.push(0xd9);
        m.push(packed.len() as u8);
        m.extend_from_slice(&packed);
        assert_eq!(member_id(&m).as_deref(), Some(env.id.as_str()));
    }

    #[test]
    fn finished_index_members_unpack_to_their_ids() {
        // ["ab", "c"] as cmsgpack writes it.
        let m = [0x92, 0xa2, b'a', b'b', 0xa1, b'c'];
        assert_eq!(packed_ids(&m), Some(vec!["ab".to_owned(), "c".to_owned()]));
        assert_eq!(packed_ids(&[0x90]), Some(vec![]));
        assert_eq!(packed_ids(&[0x92, 0xa1, b'a']), None, "truncated");
    }
}
