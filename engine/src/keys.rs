//! Names: validated queue names, queue layouts, and every Redis key the engine uses.
//!
//! This is the only file that builds key strings. A shard's keys share one hash tag
//! `{queue:priority:shard}`, so every script touches a single Cluster slot; names are validated
//! so they can never contain `{` or `}` and break that tag.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The Redis Cluster hash slot of a key (CRC16/XMODEM of its hash tag, or of the whole key
/// when it has none, modulo 16384): keys of one slot can share a script or a multi-key command.
pub fn hash_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            // An empty tag `{}` does not count: the whole key is hashed.
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// Prefix of every key.
pub const PREFIX: &str = "rivulet";
/// The consumer group every worker joins on every shard stream.
pub const GROUP: &str = "rivulet";
/// HASH of queue name -> layout JSON, for discovery.
pub const QUEUES_KEY: &str = "rivulet:queues";
/// ZSET of worker id -> last heartbeat (ms since the epoch).
pub const WORKERS_KEY: &str = "rivulet:workers";
/// ZSET of `<queue> <worker id>` -> the time (ms since the epoch) by which every task that
/// worker holds of that queue is past its lease if the worker stopped beating: written with
/// the registry record, removed at deregistration. A member whose time passed names a worker
/// that died: the workers serving that queue sweep its lanes for orphans (worker/reclaimer.rs).
pub const ALIVE_KEY: &str = "rivulet:alive";
/// SET of paused queue names.
pub const PAUSED_KEY: &str = "rivulet:paused";
/// Pub/sub channel that wakes idle workers' promoters: `<due ms> <stream>` when a delayed task
/// is enqueued (`enqueue.lua`), `pause` when a pause flag changed. A signal only: workers that
/// miss one find the task (or the flag) on their next slow round.
pub const WAKE_CHANNEL: &str = "rivulet:wake";
/// SET of the names of the rate and concurrency limits workers enforce (see [`LimitKeys`]).
pub const LIMITS_KEY: &str = "rivulet:limits";
/// The schedules' keys (`docs/schedules.md`): one home slot of their own, `{sched}`, so each
/// change of a schedule is one script on one Cluster slot. A shard's tag always holds two `:`,
/// so it can never be `{sched}`.
///
/// HASH of schedule name -> definition JSON.
pub const SCHEDULES_KEY: &str = "rivulet:{sched}:defs";
/// HASH of schedule name -> the last fire time handled (ms since the epoch): enqueued, or
/// skipped as missed.
pub const SCHEDULES_FIRED_KEY: &str = "rivulet:{sched}:fired";
/// SET of paused schedule names.
pub const SCHEDULES_PAUSED_KEY: &str = "rivulet:{sched}:paused";
/// STRING counter raised by every change of a definition or pause flag: a scheduler re-reads
/// the definitions only when it moved.
pub const SCHEDULES_VERSION_KEY: &str = "rivulet:{sched}:version";
/// Default priorities, highest first.
pub const DEFAULT_PRIORITIES: [&str; 3] = ["high", "normal", "low"];
/// The priority a task gets when it names none (the middle one of the defaults).
pub const DEFAULT_PRIORITY: &str = "normal";
/// Most shards a priority may have.
pub const MAX_SHARDS: u16 = 1024;
/// How long a finished task's record (state, result) is kept by default: one hour.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);
/// About how many lifecycle events a queue keeps, over all its shards.
pub const DEFAULT_EVENTS_KEPT: usize = 10_000;

const MAX_NAME_LEN: usize = 64;

pub(crate) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("must be at most 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may only contain A-Z, a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

/// A validated queue name: `[A-Za-z0-9._-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(Arc<str>);

impl Serialize for QueueName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl QueueName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self> {
        check_name(name).map_err(|reason| Error::InvalidQueueName {
            name: name.to_owned(),
            reason,
        })?;
        Ok(QueueName(name.into()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for QueueName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        QueueName::new(s)
    }
}

/// How a queue is laid out in Redis: its priorities (highest first) and shards per priority.
///
/// Stored as JSON in [`QUEUES_KEY`] so the CLI, the inspector and the autoscaler can find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Priority names, highest first.
    pub priorities: Vec<String>,
    /// Shards per priority (each shard is one stream and its companion keys).
    pub shards: u16,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            priorities: DEFAULT_PRIORITIES.iter().map(|p| p.to_string()).collect(),
            shards: 1,
        }
    }
}

/// A queue: its name and layout, validated together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    name: QueueName,
    layout: Layout,
    /// How long finished tasks' records are kept; zero keeps none (lifecycle tracking off).
    retention: std::time::Duration,
}

impl Queue {
    /// A queue with the default layout (`high`, `normal`, `low`; one shard each).
    pub fn new(name: &str) -> Result<Self> {
        Self::with_layout(name, Layout::default())
    }

    /// A queue from its layout as stored in the registry ([`QUEUES_KEY`], JSON written by any
    /// language's producer, or by hand): JSON that is not a layout is [`Error::Protocol`], a
    /// layout that is not valid the error [`with_layout`](Self::with_layout) gives.
    pub fn from_layout_json(name: &str, json: &str) -> Result<Self> {
        let layout = serde_json::from_str(json)
            .map_err(|e| Error::protocol(format!("layout of queue {name} is not valid JSON: {e}")))?;
        Self::with_layout(name, layout)
    }

    /// A queue with its own layout.
    pub fn with_layout(name: &str, layout: Layout) -> Result<Self> {
        let name = QueueName::new(name)?;
        if layout.priorities.is_empty() {
            return Err(Error::config("layout.priorities", "must name at least one priority"));
        }
        for (i, p) in layout.priorities.iter().enumerate() {
            check_name(p).map_err(|reason| Error::UnknownPriority {
                queue: name.to_string(),
                priority: p.clone(),
                known: format!("an invalid name: it {reason}"),
            })?;
            if layout.priorities[..i].contains(p) {
                return Err(Error::config("layout.priorities", format!("{p:?} is listed twice")));
            }
        }
        if layout.shards == 0 || layout.shards > MAX_SHARDS {
            return Err(Error::config("layout.shards", format!("must be 1..={MAX_SHARDS}")));
        }
        Ok(Queue {
            name,
            layout,
            retention: DEFAULT_RETENTION,
        })
    }

    /// Same queue, keeping finished tasks' records (state, result) for `retention`
    /// ([`DEFAULT_RETENTION`] by default). Zero turns lifecycle tracking off for the queue's
    /// tasks (no record, no events, no status), the cheapest drain; a task may still ask for
    /// its own retention. Producers and workers each apply the retention of the `Queue` they
    /// were given: it is not part of the layout recorded in Redis.
    pub fn retention(mut self, retention: std::time::Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long finished tasks' records are kept (zero: none).
    pub fn retention_period(&self) -> std::time::Duration {
        self.retention
    }

    /// The approximate cap of each shard's events stream: [`DEFAULT_EVENTS_KEPT`] spread over
    /// the shards, at least 100 each.
    pub fn events_maxlen(&self) -> usize {
        let shards = self.layout.priorities.len() * usize::from(self.layout.shards);
        (DEFAULT_EVENTS_KEPT / shards.max(1)).max(100)
    }

    /// Same queue, `shards` shards per priority.
    pub fn shards(self, shards: u16) -> Result<Self> {
        let retention = self.retention;
        let layout = Layout { shards, ..self.layout };
        Ok(Self::with_layout(self.name.as_str(), layout)?.retention(retention))
    }

    /// Same queue with these priorities, highest first.
    pub fn priorities<S: AsRef<str>>(self, priorities: &[S]) -> Result<Self> {
        let layout = Layout {
            priorities: priorities.iter().map(|p| p.as_ref().to_owned()).collect(),
            ..self.layout
        };
        let retention = self.retention;
        Ok(Self::with_layout(self.name.as_str(), layout)?.retention(retention))
    }

    /// The queue's name.
    pub fn name(&self) -> &QueueName {
        &self.name
    }

    /// The queue's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The rank (0 = highest) of a priority, or a typed error naming the known ones.
    pub fn rank(&self, priority: &str) -> Result<usize> {
        self.layout
            .priorities
            .iter()
            .position(|p| p == priority)
            .ok_or_else(|| Error::UnknownPriority {
                queue: self.name.to_string(),
                priority: priority.to_owned(),
                known: self.layout.priorities.join(", "),
            })
    }

    /// The priority tasks get when they name none: `normal` when the queue has it, else the
    /// middle one.
    pub fn default_priority(&self) -> &str {
        let ps = &self.layout.priorities;
        if ps.iter().any(|p| p == DEFAULT_PRIORITY) {
            DEFAULT_PRIORITY
        } else {
            &ps[ps.len() / 2]
        }
    }

    /// Keys of one shard.
    pub fn shard(&self, priority: &str, shard: u16) -> ShardKeys {
        ShardKeys::new(&self.name, priority, shard)
    }

    /// Every shard of the queue, highest priority first.
    pub fn all_shards(&self) -> impl Iterator<Item = Shard<'_>> + '_ {
        self.layout.priorities.iter().enumerate().flat_map(move |(rank, p)| {
            (0..self.layout.shards).map(move |number| Shard {
                rank,
                priority: p,
                number,
                keys: self.shard(p, number),
            })
        })
    }

    /// The layout as the JSON stored in [`QUEUES_KEY`].
    pub fn layout_json(&self) -> String {
        serde_json::to_string(&self.layout).expect("a Layout of strings and an integer always serialises")
    }
}

/// One shard of a queue, as [`Queue::all_shards`] lists them.
#[derive(Debug, Clone)]
pub struct Shard<'a> {
    /// Rank of its priority (0 = highest).
    pub rank: usize,
    /// Its priority.
    pub priority: &'a str,
    /// Its number within the priority.
    pub number: u16,
    /// Its keys.
    pub keys: ShardKeys,
}

/// The keys of one shard (queue, priority, shard number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeys {
    /// Ready and in-flight tasks, with the consumer group.
    pub stream: String,
    /// Delayed tasks (ZSET, score = due ms).
    pub scheduled: String,
    /// Failed tasks waiting for their backoff (ZSET, score = due ms).
    pub retry: String,
    /// Dead letters.
    pub dlq: String,
    /// Counters.
    pub stats: String,
    /// Lifecycle events of the shard's tasks (STREAM, `MAXLEN ~` capped).
    pub events: String,
    /// Ids of running tasks whose cancel was asked for (SET), polled by their workers.
    pub cancels: String,
    /// Ids of tasks someone waits for (SET), so settling checks per task only when it is not
    /// empty.
    pub waiting: String,
    /// Ids of succeeded tasks whose record is kept (ZSET, score = when the record expires,
    /// ms), trimmed as they expire: `tasks --state succeeded` pages through it.
    pub succeeded: String,
    /// Ids of cancelled tasks whose record is kept, as [`succeeded`](Self::succeeded).
    pub cancelled: String,
    /// The final records of succeeded tasks (HASH: field = task id, value = when it expires,
    /// ms, a space and the MessagePack record; `scripts/record.lua`), read only through the
    /// record scripts.
    pub finished: String,
    /// Grouped tasks waiting for their turn (ZSET: member = the packed wire fields, score =
    /// the task's virtual start tag), fed into the stream a window at a time
    /// (`docs/groups.md`).
    pub fair: String,
    /// The fair groups' state (HASH: `floor`, `window`, and per group `w:<g>` weight,
    /// `l:<g>` newest tag, `n:<g>` waiting count).
    pub groups: String,
    /// Prefix of the per-task keys (`<base>:task:<id>` and friends), with the shard's tag.
    base: String,
}

impl ShardKeys {
    fn new(queue: &QueueName, priority: &str, shard: u16) -> Self {
        let base = format!("{PREFIX}:{{{queue}:{priority}:{shard}}}");
        ShardKeys {
            stream: format!("{base}:stream"),
            scheduled: format!("{base}:scheduled"),
            retry: format!("{base}:retry"),
            dlq: format!("{base}:dlq"),
            stats: format!("{base}:stats"),
            events: format!("{base}:events"),
            cancels: format!("{base}:cancels"),
            waiting: format!("{base}:waiting"),
            succeeded: format!("{base}:succeeded"),
            cancelled: format!("{base}:cancelled"),
            finished: format!("{base}:finished"),
            fair: format!("{base}:fair"),
            groups: format!("{base}:groups"),
            base,
        }
    }

    /// The task record (HASH: state, result, progress) of task `id` in this shard.
    pub fn task(&self, id: &str) -> String {
        self.per_task(":task:", id)
    }

    /// The list a finished task's waiters block on (written only while someone waits).
    pub fn done(&self, id: &str) -> String {
        self.per_task(":done:", id)
    }

    /// The lock of a unique key (STRING: the id of the task holding it).
    pub fn unique(&self, key: &str) -> String {
        self.per_task(":unique:", key)
    }

    /// `base`, `part` and `name` in one allocation of the right size: a settle with records
    /// builds a few of these per task, and `format!` (its machinery, then the string grown
    /// as it is written) was a fifteenth of such a worker's instructions.
    fn per_task(&self, part: &str, name: &str) -> String {
        let mut key = String::with_capacity(self.base.len() + part.len() + name.len());
        key.push_str(&self.base);
        key.push_str(part);
        key.push_str(name);
        key
    }
}

/// The keys of one fleet-wide limit, in a home slot of their own (`{limit:<name>}`): a limit
/// spans every shard, so it cannot live in one, and a task waiting on it never holds its
/// shard's other work (it waits in its shard's retry set). The name is checked by
/// [`crate::limits::check_limit_name`], so it never holds `{` or `}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKeys {
    /// HASH: the rate bucket (`tat`), the settings (published by workers at start, refreshed
    /// while in use), counters.
    pub state: String,
    /// ZSET: task id -> the start time it reserved (ms), while it waits for the rate.
    pub reserved: String,
    /// ZSET: holder -> its lease's end (ms), one per task holding a running slot.
    pub running: String,
    /// ZSET: task id -> when it is due back (ms), while it waits for a running slot.
    pub waiting: String,
}

impl LimitKeys {
    /// The keys of limit `name`.
    pub fn new(name: &str) -> Self {
        let base = format!("{PREFIX}:{{limit:{name}}}");
        LimitKeys {
            state: base.clone(),
            reserved: format!("{base}:reserved"),
            running: format!("{base}:running"),
            waiting: format!("{base}:waiting"),
        }
    }
}

/// The HASH describing one live worker.
pub fn worker_key(worker_id: &str) -> String {
    format!("{PREFIX}:worker:{worker_id}")
}

/// The key holding the autoscaler's latest decision for a queue.
pub fn autoscaler_key(queue: &QueueName) -> String {
    format!("{PREFIX}:autoscaler:{queue}")
}

/// The HASH of per-worker sample blobs the demo gathers for a queue (its start-latency
/// histograms), one field per worker process.
pub fn demo_samples_key(queue: &QueueName) -> String {
    format!("{PREFIX}:demo:{queue}:latency")
}

/// The shard a task id maps to: FNV-1a (64 bit) of the id, modulo the shard count.
///
/// Stable and documented in `docs/wire-format.md`, so producers in other languages can pick the
/// same shard.
pub fn shard_for(task_id: &str, shards: u16) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"123456789"), 12739);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_slot(b"foo{}{bar}"), hash_slot(b"foo{}{bar}"));
        assert_ne!(hash_slot(b"foo{}{bar}"), hash_slot(b"bar"));
        let keys = Queue::new("q").unwrap().shard("high", 3);
        assert_eq!(hash_slot(keys.stream.as_bytes()), hash_slot(keys.dlq.as_bytes()));
    }

    /// Every key a script or a multi-key command is given is one of a shard's keys (the
    /// broker builds `KEYS` only from [`ShardKeys`]): all of them hash to the shard's slot, so
    /// no call can span slots on a Redis Cluster (`CROSSSLOT`), whatever the task id or unique
    /// key holds (braces included: only the first `{...}`, the shard's, is the hash tag).
    #[test]
    fn every_key_a_script_takes_hashes_to_its_shards_slot() {
        let q = Queue::new("billing")
            .unwrap()
            .priorities(&["high", "low"])
            .unwrap()
            .shards(8)
            .unwrap();
        let mut slots = std::collections::HashSet::new();
        for shard in q.all_shards() {
            let k = &shard.keys;
            let slot = hash_slot(k.stream.as_bytes());
            slots.insert(slot);
            let all = [
                k.stream.clone(),
                k.scheduled.clone(),
                k.retry.clone(),
                k.dlq.clone(),
                k.stats.clone(),
                k.events.clone(),
                k.cancels.clone(),
                k.waiting.clone(),
                k.fair.clone(),
                k.groups.clone(),
                k.task("01J{other}x"),
                k.done("id}{"),
                k.unique("{user:42}"),
            ];
            for key in &all {
                assert_eq!(hash_slot(key.as_bytes()), slot, "{key} is not in {}'s slot", k.stream);
            }
        }
        // Different shards land in different slots (they can spread over masters).
        assert_eq!(slots.len(), 16);
    }

    #[test]
    fn shard_keys_share_one_hash_tag() {
        let q = Queue::new("emails").unwrap();
        let k = q.shard("high", 3);
        assert_eq!(k.stream, "rivulet:{emails:high:3}:stream");
        assert_eq!(k.scheduled, "rivulet:{emails:high:3}:scheduled");
        assert_eq!(k.retry, "rivulet:{emails:high:3}:retry");
        assert_eq!(k.dlq, "rivulet:{emails:high:3}:dlq");
        assert_eq!(k.stats, "rivulet:{emails:high:3}:stats");
        assert_eq!(k.events, "rivulet:{emails:high:3}:events");
        assert_eq!(k.cancels, "rivulet:{emails:high:3}:cancels");
        assert_eq!(k.fair, "rivulet:{emails:high:3}:fair");
        assert_eq!(k.groups, "rivulet:{emails:high:3}:groups");
        assert_eq!(k.task("t1"), "rivulet:{emails:high:3}:task:t1");
        assert_eq!(k.done("t1"), "rivulet:{emails:high:3}:done:t1");
        assert_eq!(k.unique("u"), "rivulet:{emails:high:3}:unique:u");
    }

    #[test]
    fn global_keys_carry_the_prefix_and_the_name() {
        let q = QueueName::new("emails").unwrap();
        assert_eq!(worker_key("w-1"), "rivulet:worker:w-1");
        assert_eq!(autoscaler_key(&q), "rivulet:autoscaler:emails");
        assert_eq!(demo_samples_key(&q), "rivulet:demo:emails:latency");
    }

    #[test]
    fn queue_names_are_validated() {
        assert!(QueueName::new("a.b_c-D9").is_ok());
        for bad in ["", "a{b", "a}b", "a b", "ü", &"x".repeat(65)] {
            let err = QueueName::new(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidQueueName { .. }), "{bad:?}: {err}");
        }
        assert!(QueueName::new(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn layouts_are_validated() {
        assert!(Queue::new("q").unwrap().shards(0).is_err());
        assert!(Queue::new("q").unwrap().priorities::<&str>(&[]).is_err());
        assert!(Queue::new("q").unwrap().priorities(&["a", "a"]).is_err());
        assert!(Queue::new("q").unwrap().priorities(&["a{"]).is_err());
        let q = Queue::new("q").unwrap().priorities(&["x", "y"]).unwrap();
        assert_eq!(q.default_priority(), "y");
        assert_eq!(Queue::new("q").unwrap().default_priority(), "normal");
    }

    #[test]
    fn unknown_priority_names_the_known_ones() {
        let q = Queue::new("q").unwrap();
        assert_eq!(q.rank("high").unwrap(), 0);
        let err = q.rank("urgent").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown priority \"urgent\" for queue \"q\" (the queue has high, normal, low)"
        );
    }

    #[test]
    fn shard_for_is_stable_and_in_range() {
        assert_eq!(shard_for("anything", 1), 0);
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(shard_for("a", 7), (0xaf63_dc4c_8601_ec8c_u64 % 7) as u16);
        for i in 0..1000 {
            assert!(shard_for(&i.to_string(), 4) < 4);
        }
    }
}
