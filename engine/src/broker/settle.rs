//! A task's state changes, each one script on one shard: settling outcomes (`settle.lua`),
//! promoting due tasks (`promote.lua`), reclaiming a dead worker's tasks (`reclaim.lua`) and
//! renewing leases (`extend.lua`).

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use super::RedisConnection;
use redis::{Script, Value};
use serde::Serialize;

use super::{StreamEntry, StreamId, entries, id_range, int, stream_ids, string};
use crate::error::{Error, Result};
use crate::keys::{GROUP, ShardKeys};

static SETTLE: LazyLock<Script> = LazyLock::new(|| super::functions::with_records(include_str!("scripts/settle.lua")));
/// Fair groups' shared Lua (`scripts/fair.lua`), prepended to each script that uses it.
macro_rules! with_fair {
    ($script:literal) => {
        concat!(include_str!("scripts/fair.lua"), include_str!($script))
    };
}
/// `enqueue.lua` as it runs (in the function library): with the fair groups' part.
pub(super) const ENQUEUE_SOURCE: &str = with_fair!("scripts/enqueue.lua");
static PROMOTE: LazyLock<Script> = LazyLock::new(|| Script::new(with_fair!("scripts/promote.lua")));
static FEED: LazyLock<Script> = LazyLock::new(|| Script::new(with_fair!("scripts/feed.lua")));
static RECLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/reclaim.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/extend.lua")));

/// Why a task went to the dead-letter stream: the `reason` field of a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadReason {
    /// It failed on every attempt its retry policy allows.
    Exhausted,
    /// Its handler returned a fatal error.
    Fatal,
    /// It was delivered more than `max_deliveries` times without an outcome.
    Poison,
    /// Its entry, retry settings or payload do not decode.
    Malformed,
    /// No handler serves its kind.
    UnknownKind,
    /// A reason this version does not know (written by another version or by hand), as stored.
    Other(String),
}

impl DeadReason {
    /// The reason as stored in the `reason` field.
    pub fn as_str(&self) -> &str {
        match self {
            DeadReason::Exhausted => "exhausted",
            DeadReason::Fatal => "fatal",
            DeadReason::Poison => "poison",
            DeadReason::Malformed => "malformed",
            DeadReason::UnknownKind => "unknown_kind",
            DeadReason::Other(s) => s,
        }
    }

    /// Reads a stored `reason` field; an unknown one is kept as [`DeadReason::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "exhausted" => DeadReason::Exhausted,
            "fatal" => DeadReason::Fatal,
            "poison" => DeadReason::Poison,
            "malformed" => DeadReason::Malformed,
            "unknown_kind" => DeadReason::UnknownKind,
            other => DeadReason::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeadReason {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(DeadReason::parse(s))
    }
}

impl Serialize for DeadReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for DeadReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
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
        /// Why.
        reason: DeadReason,
        /// What went wrong.
        error: String,
        /// Failed attempts to record, this run included, when the task ran; `None` keeps the
        /// entry's (it never ran: malformed, unknown kind).
        attempt: Option<u32>,
    },
    /// Put back at the end of the stream, unchanged, to run again at once.
    Requeue,
    /// Over a fleet-wide limit: park in the retry set until `due_ms`, unchanged (no attempt
    /// used, the last error kept), counted as `limited`.
    Wait {
        /// When to offer it again, ms since the epoch.
        due_ms: u64,
        /// The limit it waits for.
        limit: String,
    },
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
    /// Now, ms since the epoch: a dead letter's `dead_at`.
    pub now_ms: u64,
}

/// Applies outcomes for entries of one shard in one script call. Returns the ids this
/// consumer no longer owned (fenced off: another worker reclaimed them).
pub async fn settle(
    conn: &mut RedisConnection,
    ctx: SettleCtx<'_>,
    batch: &[(StreamId, &Settle)],
) -> Result<Vec<StreamId>> {
    let Some(range) = id_range(batch.iter().map(|(id, _)| *id)) else {
        return Ok(Vec::new());
    };
    stream_ids(settle_invocation(ctx, batch, range, 0).invoke(conn).await?)
}

/// One `settle.lua` call being built: its keys and its arguments each in one buffer (a
/// [`redis::ScriptInvocation`] allocates one per argument, then copies them all into the
/// command: about a tenth of a worker's CPU with a thousand tracked outcomes per call), sent as
/// one `EVALSHA`.
pub(super) struct SettleCall {
    keys: redis::Cmd,
    key_count: usize,
    args: redis::Cmd,
}

impl SettleCall {
    /// Room for `keys` keys and `args` arguments of `bytes` bytes in all, so that a call of a
    /// thousand outcomes is not copied over and over as its buffers grow (with task records,
    /// those copies were a twentieth of a draining worker's instructions).
    fn with_capacity(keys: usize, args: usize, bytes: usize) -> Self {
        SettleCall {
            keys: redis::Cmd::with_capacity(keys, keys * 40),
            key_count: 0,
            args: redis::Cmd::with_capacity(args, bytes),
        }
    }

    /// Adds one key (a single value: a key never expands to several arguments).
    pub(super) fn key(&mut self, key: &str) -> &mut Self {
        self.keys.arg(key);
        self.key_count += 1;
        self
    }

    /// Adds one argument.
    pub(super) fn arg<T: redis::ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.arg(arg);
        self
    }

    /// Sends it (`EVALSHA`; on `NOSCRIPT`, loads the script and sends it again, as
    /// `ScriptInvocation` does).
    pub(super) async fn invoke<T: redis::FromRedisValue>(self, conn: &mut RedisConnection) -> Result<T> {
        let parts = [&self.keys, &self.args];
        let simple = |a: redis::Arg<&[u8]>| match a {
            redis::Arg::Simple(b) => b.len(),
            _ => 0,
        };
        let n: usize = parts.iter().map(|p| p.args_iter().len()).sum();
        let bytes: usize = parts.iter().flat_map(|p| p.args_iter()).map(simple).sum();
        let mut cmd = redis::Cmd::with_capacity(n + 3, bytes + 64);
        cmd.arg("EVALSHA").arg(SETTLE.get_hash()).arg(self.key_count);
        for part in parts {
            for a in part.args_iter() {
                if let redis::Arg::Simple(b) = a {
                    cmd.arg(b);
                }
            }
        }
        match cmd.query_async::<T>(conn).await {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                SETTLE.prepare_invoke().load_async(conn).await?;
                Ok(cmd.query_async(conn).await?)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// How [`ack_fresh`] acknowledges and deletes: chosen once at start from the server's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCommand {
    /// `XACKDEL key group IDS n id...` (Redis 8.2 and later): one command, a status per id.
    AckDel,
    /// `XACK` then `XDEL` of the same ids (older servers).
    AckThenDel,
}

impl AckCommand {
    /// How many commands [`ack_fresh`]'s transaction holds (its `EXEC` answers one reply
    /// each): the ack (and the delete, before 8.2), then the `done` counter.
    pub(crate) fn commands(self) -> usize {
        match self {
            AckCommand::AckDel => 2,
            AckCommand::AckThenDel => 3,
        }
    }

    /// The command a server of this version takes.
    pub fn for_version(version: (u32, u32, u32)) -> Self {
        if version >= (8, 2, 0) {
            AckCommand::AckDel
        } else {
            AckCommand::AckThenDel
        }
    }
}

/// Acknowledges and deletes plain successes of one shard without `settle.lua`'s fence, and
/// counts them as `done`: only for entries settled well within their lease, which no other
/// worker can have claimed (`worker/acker.rs` says when; docs/architecture.md "Settling").
/// One transaction on one node (a pipeline on a Redis Cluster, as enqueues): `XACKDEL` (or
/// `XACK` + `XDEL`) and `HINCRBY done`. Neither command touches an entry the group no longer
/// has pending (`XACKDEL` answers -1 for it and deletes nothing; `XDEL` of an entry already
/// settled finds nothing): those (settled by an earlier try of the same batch whose reply was
/// lost) are taken back from `done` and counted as `fenced`, as the script counts them.
/// Returns how many there were.
pub async fn ack_fresh(conn: &mut RedisConnection, keys: &ShardKeys, ids: &[StreamId], how: AckCommand) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let (reply,): (Value,) = ack_fresh_pipe(keys, ids, how, !conn.is_cluster())
        .query_async(conn)
        .await?;
    let acked = match reply {
        // One status per id: 1 acknowledged and deleted, -1 not pending in the group.
        Value::Array(codes) => codes.iter().filter(|c| matches!(c, Value::Int(1 | 2))).count() as u64,
        Value::Int(n) => n as u64,
        other => return Err(Error::protocol(format!("XACKDEL / XACK reply {other:?}"))),
    };
    let stale = (ids.len() as u64).saturating_sub(acked);
    if stale > 0 {
        stale_acks_pipe(keys, stale).query_async::<()>(conn).await?;
    }
    Ok(stale)
}

/// [`ack_fresh`]'s transaction (a plain pipeline when not `atomic`, on a Redis Cluster): its
/// one reply not ignored is `XACKDEL`'s (a status per id: 1 or 2 acknowledged and deleted, -1
/// not pending) or `XACK`'s (how many it acknowledged). The engine's own connection sends the
/// same transaction and reads that reply without redis-rs (`reader::DedicatedConnection`).
pub(crate) fn ack_fresh_pipe(keys: &ShardKeys, ids: &[StreamId], how: AckCommand, atomic: bool) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    if atomic {
        pipe.atomic();
    }
    match how {
        AckCommand::AckDel => {
            pipe.cmd("XACKDEL")
                .arg(&keys.stream)
                .arg(GROUP)
                .arg("IDS")
                .arg(ids.len())
                .arg(ids);
        }
        AckCommand::AckThenDel => {
            pipe.cmd("XACK").arg(&keys.stream).arg(GROUP).arg(ids);
            pipe.cmd("XDEL").arg(&keys.stream).arg(ids).ignore();
        }
    }
    pipe.cmd("HINCRBY").arg(&keys.stats).arg("done").arg(ids.len()).ignore();
    pipe
}

/// [`ack_fresh_pipe`]'s transaction (atomic) packed as RESP straight into `out`, for the
/// engine's own link: each id written once, where building the `redis::Pipeline` first copied
/// every argument into it and then out again (about a twentieth of a draining worker's
/// instructions). The bytes are `ack_fresh_pipe(.., true)`'s, which a test holds it to.
pub(crate) fn pack_ack_fresh(out: &mut Vec<u8>, keys: &ShardKeys, ids: &[StreamId], how: AckCommand) {
    fn head(out: &mut Vec<u8>, args: usize) {
        out.push(b'*');
        out.extend_from_slice(itoa::Buffer::new().format(args).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    fn arg(out: &mut Vec<u8>, a: &[u8]) {
        out.push(b'$');
        out.extend_from_slice(itoa::Buffer::new().format(a.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    fn each(out: &mut Vec<u8>, ids: &[StreamId]) {
        let mut buf = [0; 41];
        for id in ids {
            arg(out, id.write(&mut buf));
        }
    }
    out.reserve(64 + ids.len() * 24 * if how == AckCommand::AckDel { 1 } else { 2 });
    let stream = keys.stream.as_bytes();
    head(out, 1);
    arg(out, b"MULTI");
    match how {
        AckCommand::AckDel => {
            head(out, 5 + ids.len());
            for a in [&b"XACKDEL"[..], stream, GROUP.as_bytes(), b"IDS"] {
                arg(out, a);
            }
            arg(out, itoa::Buffer::new().format(ids.len()).as_bytes());
            each(out, ids);
        }
        AckCommand::AckThenDel => {
            head(out, 3 + ids.len());
            for a in [&b"XACK"[..], stream, GROUP.as_bytes()] {
                arg(out, a);
            }
            each(out, ids);
            head(out, 2 + ids.len());
            arg(out, b"XDEL");
            arg(out, stream);
            each(out, ids);
        }
    }
    head(out, 4);
    for a in [&b"HINCRBY"[..], keys.stats.as_bytes(), b"done"] {
        arg(out, a);
    }
    arg(out, itoa::Buffer::new().format(ids.len()).as_bytes());
    head(out, 1);
    arg(out, b"EXEC");
}

/// Moves `stale` acks of [`ack_fresh`] (entries no longer pending) from `done` to `fenced`.
pub(crate) fn stale_acks_pipe(keys: &ShardKeys, stale: u64) -> redis::Pipeline {
    let mut fix = redis::pipe();
    fix.cmd("HINCRBY")
        .arg(&keys.stats)
        .arg("done")
        .arg(-(stale as i64))
        .ignore();
    fix.cmd("HINCRBY").arg(&keys.stats).arg("fenced").arg(stale).ignore();
    fix
}

/// settle.lua's invocation for untracked outcomes; `(lo, hi)` spans every entry id of the
/// call (tracked ones included, which `lifecycle::settle_tracked` appends: `tracked` of them,
/// for the call's room).
pub(super) fn settle_invocation(
    ctx: SettleCtx<'_>,
    batch: &[(StreamId, &Settle)],
    (lo, hi): (StreamId, StreamId),
    tracked: usize,
) -> SettleCall {
    // About what a tracked outcome takes (its record's key, its packed final record and a few
    // numbers), and an untracked one (an id, and an op's values for the rarer ones).
    let mut inv = SettleCall::with_capacity(
        9 + 3 * tracked,
        8 + 2 * batch.len() + 12 * tracked,
        128 + 32 * batch.len() + 384 * tracked,
    );
    inv.key(&ctx.keys.stream)
        .key(&ctx.keys.retry)
        .key(&ctx.keys.dlq)
        .key(&ctx.keys.stats)
        .arg(GROUP)
        .arg(ctx.consumer)
        .arg(ctx.now_ms)
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
                inv.arg("b").arg(reason.as_str()).arg(error.as_str()).arg(attempt)
            }
            Settle::Requeue => inv.arg("q").arg("").arg("").arg(""),
            Settle::Wait { due_ms, limit } => inv.arg("w").arg(*due_ms).arg(limit.as_str()).arg(""),
        };
    }
    inv
}

/// What one [`promote`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promoted {
    /// Due tasks moved (into the stream, or a grouped one into the fair set), over every shard.
    pub moved: u64,
    /// The earliest due time still waiting in any shard's scheduled or retry set.
    pub next_due: Option<u64>,
    /// Per shard, in the order given: grouped tasks still waiting for their turn in its fair
    /// set after this call fed the stream from it (empty when every set was empty).
    pub fair: Vec<u64>,
}

impl Promoted {
    /// Grouped tasks still waiting in shard `i`'s fair set.
    pub fn fair_waiting(&self, i: usize) -> u64 {
        self.fair.get(i).copied().unwrap_or(0)
    }
}

/// Moves due tasks of some shards (on a cluster, of one slot) from `scheduled`/`retry` into
/// their streams (a grouped one into its fair set), then feeds each stream from its fair set
/// when it holds tasks (the fallback for what no settle fed: `docs/groups.md`), in one script
/// call.
pub async fn promote(conn: &mut RedisConnection, shards: &[&ShardKeys], now_ms: u64, limit: usize) -> Result<Promoted> {
    let mut inv = PROMOTE.prepare_invoke();
    for keys in shards {
        inv.key(&keys.stream)
            .key(&keys.scheduled)
            .key(&keys.retry)
            .key(&keys.fair)
            .key(&keys.groups);
    }
    let (moved, next, fair): (u64, i64, Vec<u64>) = inv.arg(now_ms).arg(limit).invoke_async(conn).await?;
    Ok(Promoted {
        moved,
        next_due: u64::try_from(next).ok(),
        fair,
    })
}

/// Feeds a shard's stream from its fair set (`feed.lua`) until it holds a window of unread
/// entries. Returns (tasks fed, tasks still waiting).
pub async fn feed(conn: &mut RedisConnection, keys: &ShardKeys) -> Result<(u64, u64)> {
    Ok(FEED
        .key(&keys.stream)
        .key(&keys.fair)
        .key(&keys.groups)
        .invoke_async(conn)
        .await?)
}

/// What one [`reclaim`] call took over.
#[derive(Debug)]
pub struct Reclaimed {
    /// Cursor for the next call; `0-0` when the scan is complete.
    pub next: StreamId,
    /// Entries now owned by the caller, to run.
    pub entries: Vec<StreamEntry>,
    /// Pending ids whose entries were deleted (counted as `lost`).
    pub lost: u64,
    /// Entries now owned by the caller that were delivered more often than
    /// `max_deliveries`, with their delivery count: not to run, but to bury as
    /// [`DeadReason::Poison`] (with [`poison_outcome`]) through the settle every outcome takes.
    pub poison: Vec<(StreamEntry, u64)>,
}

/// The cursor that starts a [`reclaim`] scan, and that a finished scan returns.
pub const SCAN_START: StreamId = StreamId { ms: 0, seq: 0 };

/// Parameters of a [`reclaim`] call.
#[derive(Debug, Clone, Copy)]
pub struct ReclaimArgs<'a> {
    /// The shard.
    pub keys: &'a ShardKeys,
    /// The consumer taking the entries.
    pub consumer: &'a str,
    /// Entries idle at least this long are taken.
    pub lease: Duration,
    /// Scan cursor ([`SCAN_START`] to start).
    pub cursor: StreamId,
    /// The most entries to take.
    pub count: usize,
    /// An entry delivered more often than this is poison (returned apart, not to run).
    pub max_deliveries: u32,
}

/// `XAUTOCLAIM` past-lease entries of one shard for `consumer`, setting poison apart.
pub async fn reclaim(conn: &mut RedisConnection, a: ReclaimArgs<'_>) -> Result<Reclaimed> {
    let reply: Value = RECLAIM
        .key(&a.keys.stream)
        .key(&a.keys.stats)
        .arg(GROUP)
        .arg(a.consumer)
        .arg(crate::envelope::millis(a.lease))
        .arg(a.cursor)
        .arg(a.count)
        .arg(a.max_deliveries)
        .invoke_async(conn)
        .await?;
    let Value::Array(mut parts) = reply else {
        return Err(Error::protocol("reclaim.lua did not return an array"));
    };
    if parts.len() != 4 {
        return Err(Error::protocol("reclaim.lua returned the wrong number of values"));
    }
    let poison = poison_entries(parts.pop().expect("length checked: 4"))?;
    let lost = int(parts.pop().expect("length checked: 4"))?;
    let entries = entries(parts.pop().expect("length checked: 4"))?;
    let next = string(parts.pop().expect("length checked: 4"))?.parse()?;
    Ok(Reclaimed {
        next,
        entries,
        lost: lost as u64,
        poison,
    })
}

/// The poison part of reclaim.lua's reply: `{ id, fields, deliveries }` triples.
fn poison_entries(v: Value) -> Result<Vec<(StreamEntry, u64)>> {
    let Value::Array(items) = v else {
        return Err(Error::protocol("reclaim.lua: poison is not an array"));
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(mut parts) = item else {
                return Err(Error::protocol("reclaim.lua: a poison entry is not an array"));
            };
            if parts.len() != 3 {
                return Err(Error::protocol(
                    "reclaim.lua: a poison entry is not id, fields, deliveries",
                ));
            }
            let deliveries = int(parts.pop().expect("length checked: 3"))? as u64;
            let entry = entries(Value::Array(vec![Value::Array(parts)]))?
                .pop()
                .ok_or_else(|| Error::protocol("reclaim.lua: a poison entry without fields"))?;
            Ok((entry, deliveries))
        })
        .collect()
}

/// How a poison entry is settled: buried as [`DeadReason::Poison`], keeping its attempt,
/// with an error naming its deliveries and the limit.
pub fn poison_outcome(deliveries: u64, max_deliveries: u32) -> Settle {
    Settle::Bury {
        reason: DeadReason::Poison,
        error: format!("delivered {deliveries} times without an outcome (limit {max_deliveries})"),
        attempt: None,
    }
}

/// Renews the lease of the entries among `ids` that `consumer` still owns in a shard. Returns
/// how many were renewed.
pub async fn extend(conn: &mut RedisConnection, keys: &ShardKeys, consumer: &str, ids: &[StreamId]) -> Result<u64> {
    let mut renewed = 0;
    // Lua's unpack takes a few thousand values at most.
    for chunk in ids.chunks(1000) {
        let Some((lo, hi)) = id_range(chunk.iter().copied()) else {
            continue;
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_reasons_read_back_as_written() {
        for r in [
            DeadReason::Exhausted,
            DeadReason::Fatal,
            DeadReason::Poison,
            DeadReason::Malformed,
            DeadReason::UnknownKind,
            DeadReason::Other("by-hand".into()),
        ] {
            assert_eq!(DeadReason::parse(r.as_str()), r);
            assert_eq!(serde_json::to_value(&r).unwrap(), r.as_str());
        }
        assert_eq!(DeadReason::Poison.as_str(), "poison");
        assert_eq!(DeadReason::UnknownKind.to_string(), "unknown_kind");
    }
}
