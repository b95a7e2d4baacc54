//! The inspector: read-only views of queues, shards, pending entries and workers, plus the
//! dead-letter operations (list, show, replay, purge), pause flags, queue deletion and the
//! autoscaler's stored decision.
//!
//! Every method is a query over `broker` calls: this file shapes what the broker reads into
//! the public views and never builds a Redis command. Everything here is safe to run against a
//! live system; replay and purge are atomic per entry.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::broker::{self, RangeStart, RedisConnection, RedisTarget, StreamEntry, StreamId};
pub use crate::broker::{DeadReason, WorkerRecord};
use crate::clock::Clock;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::keys::{Queue, Shard, ShardKeys};

/// Counters of one shard (see `docs/architecture.md` for when each moves).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Tasks enqueued (ready or delayed).
    pub enqueued: u64,
    /// Tasks whose handler succeeded.
    pub done: u64,
    /// Failed runs (handler error, panic or timeout).
    pub failed: u64,
    /// Failed runs scheduled for another attempt.
    pub retried: u64,
    /// Tasks moved to the dead-letter stream.
    pub dead: u64,
    /// Entries taken over from dead workers.
    pub reclaimed: u64,
    /// Pending entries that pointed at deleted stream entries.
    pub lost: u64,
    /// Stale outcomes dropped by fencing: a worker settled a task it no longer owned (its
    /// lease ran out and another worker took the task over).
    pub fenced: u64,
    /// Dead letters replayed.
    pub replayed: u64,
    /// Unfinished tasks put back at a worker's shutdown.
    pub requeued: u64,
    /// Dead letters dropped by the dead-letter stream's cap (`WorkerConfig::dlq_maxlen`,
    /// `MAXLEN ~`): the oldest go first. Above 0 means dead letters were lost to the cap.
    pub dlq_trimmed: u64,
    /// Times a task was parked to wait for a fleet-wide rate or concurrency limit (no
    /// attempt used; see [`crate::limits`]).
    pub limited: u64,
}

impl Counters {
    fn from_pairs(pairs: &[(String, u64)]) -> Self {
        let mut c = Counters::default();
        for (k, v) in pairs {
            let slot = match k.as_str() {
                "enqueued" => &mut c.enqueued,
                "done" => &mut c.done,
                "failed" => &mut c.failed,
                "retried" => &mut c.retried,
                "dead" => &mut c.dead,
                "reclaimed" => &mut c.reclaimed,
                "lost" => &mut c.lost,
                "fenced" => &mut c.fenced,
                "replayed" => &mut c.replayed,
                "requeued" => &mut c.requeued,
                "dlq_trimmed" => &mut c.dlq_trimmed,
                "limited" => &mut c.limited,
                _ => continue,
            };
            *slot = *v;
        }
        c
    }

    fn add(&mut self, o: &Counters) {
        self.enqueued += o.enqueued;
        self.done += o.done;
        self.failed += o.failed;
        self.retried += o.retried;
        self.dead += o.dead;
        self.reclaimed += o.reclaimed;
        self.lost += o.lost;
        self.fenced += o.fenced;
        self.replayed += o.replayed;
        self.requeued += o.requeued;
        self.dlq_trimmed += o.dlq_trimmed;
        self.limited += o.limited;
    }
}

/// One shard's state.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStats {
    /// Shard number.
    pub shard: u16,
    /// Entries in the stream (waiting plus in flight).
    pub length: u64,
    /// Entries not yet delivered, as Redis reports it; `None` when Redis cannot tell.
    pub lag: Option<u64>,
    /// Entries waiting to be delivered: `lag` when known, else `length - pending` (exact
    /// while nothing but Rivulet deletes entries), flagged by `waiting_estimated`.
    pub waiting: u64,
    /// Whether `waiting` is the estimate rather than Redis's lag.
    pub waiting_estimated: bool,
    /// Delivered and not yet settled (in flight).
    pub pending: u64,
    /// Delayed tasks not yet due.
    pub scheduled: u64,
    /// Failed tasks waiting for their backoff.
    pub retry: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Grouped tasks waiting for their group's turn in the fair set (`docs/groups.md`): not
    /// in the stream yet, so not in `waiting`.
    pub fair_waiting: u64,
    /// Age of the oldest task waiting to be delivered (in JSON `oldest_waiting_age_ms`).
    #[serde(rename = "oldest_waiting_age_ms", serialize_with = "ser_opt_ms")]
    pub oldest_waiting_age: Option<Duration>,
    /// Counters.
    pub counters: Counters,
}

/// One priority's shards and their sums.
#[derive(Debug, Clone, Serialize)]
pub struct PriorityStats {
    /// Priority name.
    pub priority: String,
    /// Sum of the shards' `waiting`.
    pub waiting: u64,
    /// Whether any shard's `waiting` is an estimate.
    pub waiting_estimated: bool,
    /// Sum of the shards' `pending`.
    pub pending: u64,
    /// Sum of the shards' `scheduled`.
    pub scheduled: u64,
    /// Sum of the shards' `retry`.
    pub retry: u64,
    /// Sum of the shards' dead letters.
    pub dead_letters: u64,
    /// Sum of the shards' `fair_waiting`.
    pub fair_waiting: u64,
    /// The oldest waiting task over all shards (in JSON `oldest_waiting_age_ms`).
    #[serde(rename = "oldest_waiting_age_ms", serialize_with = "ser_opt_ms")]
    pub oldest_waiting_age: Option<Duration>,
    /// Summed counters.
    pub counters: Counters,
    /// Per shard.
    pub shards: Vec<ShardStats>,
}

/// A queue's state, highest priority first.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Whether workers are told to stop fetching from it.
    pub paused: bool,
    /// Per priority.
    pub priorities: Vec<PriorityStats>,
    /// Summed counters.
    pub counters: Counters,
}

/// The fair window of a shard no worker set one for (`FAIR_WINDOW` in `scripts/fair.lua`).
pub const DEFAULT_FAIR_WINDOW: u64 = 100;

/// One group with tasks waiting for their turn, in one priority (over its shards).
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    /// The priority.
    pub priority: String,
    /// The group.
    pub group: String,
    /// Its tasks waiting in the fair sets.
    pub waiting: u64,
    /// Its weight (1 unless a worker set one).
    pub weight: u64,
    /// How many turns (of weight 1) away its newest waiting task is, in the shard where it is
    /// furthest: its backlog as the other groups see it.
    pub turns: f64,
    /// Its tasks running against the per-group cap (`group:<group>` limit; 0 without a cap).
    pub running: u64,
}

/// One shard's fair state.
#[derive(Debug, Clone, Serialize)]
pub struct FairShardStatus {
    /// The priority.
    pub priority: String,
    /// The shard.
    pub shard: u16,
    /// Grouped tasks in its fair set.
    pub waiting: u64,
    /// Groups with tasks waiting.
    pub groups: u64,
    /// Its virtual clock: the tag of the last task fed into the stream.
    pub floor: f64,
    /// The tag of the next task to be fed (the lowest waiting), when any.
    pub next_tag: Option<f64>,
    /// The most unread entries its stream holds before grouped tasks wait.
    pub window: u64,
}

/// A queue's fair groups ([`Inspector::groups`]).
#[derive(Debug, Clone, Serialize)]
pub struct QueueGroups {
    /// The queue.
    pub queue: String,
    /// Grouped tasks waiting for their turn, over every shard.
    pub waiting: u64,
    /// The groups with tasks waiting, by priority (highest first) then name.
    pub groups: Vec<GroupStatus>,
    /// Per shard.
    pub shards: Vec<FairShardStatus>,
}

fn ser_opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
        None => s.serialize_none(),
    }
}

/// Where a dead letter lives: priority, shard and entry id, written `priority/shard/entry`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeadLetterId {
    /// Priority of the shard.
    pub priority: String,
    /// Shard number.
    pub shard: u16,
    /// Entry id in the shard's dlq stream.
    pub entry: String,
}

impl fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.priority, self.shard, self.entry)
    }
}

impl Serialize for DeadLetterId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for DeadLetterId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::NotFound(format!("dead letter {s:?}: ids look like normal/0/1700000000000-0"));
        let mut parts = s.splitn(3, '/');
        let (Some(p), Some(n), Some(e)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        if StreamId::parse(e).is_none() {
            return Err(bad());
        }
        Ok(DeadLetterId {
            priority: p.to_owned(),
            shard: n.parse().map_err(|_| bad())?,
            entry: e.to_owned(),
        })
    }
}

/// A task in the dead-letter stream.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Where it is.
    pub id: DeadLetterId,
    /// The task's id.
    pub task_id: String,
    /// Handler name.
    pub kind: String,
    /// Why it died.
    pub reason: DeadReason,
    /// The last error.
    pub error: String,
    /// Failed attempts.
    pub attempt: u64,
    /// Deliveries of the last entry (reads plus reclaims).
    pub deliveries: u64,
    /// When it died, ms since the epoch.
    pub dead_at: u64,
    /// Stream and entry id it came from.
    pub origin: String,
    /// Payload codec (`json` when the entry names none, as the worker reads it).
    pub codec: String,
    /// Payload, as text (lossy for binary payloads): whole from [`Inspector::dlq_get`], its
    /// first [`DLQ_PREVIEW`] bytes from [`Inspector::dlq_list`] (`payload_truncated` says
    /// which).
    pub payload: String,
    /// The whole payload's size in bytes.
    pub payload_size: u64,
    /// Whether `payload` is only the payload's start (a listing of a payload longer than
    /// [`DLQ_PREVIEW`]).
    pub payload_truncated: bool,
    /// Every other field as stored, those this version does not know included (as text, lossy
    /// for binary values, when serialized). The payload is not repeated here.
    #[serde(serialize_with = "fields_as_text")]
    pub fields: Vec<(String, Vec<u8>)>,
}

/// Bytes of each payload a dead-letter listing carries ([`Inspector::dlq_list`]); the rest
/// stays in Redis until [`Inspector::dlq_get`] asks for it.
pub const DLQ_PREVIEW: usize = 120;

fn fields_as_text<S: serde::Serializer>(fields: &[(String, Vec<u8>)], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_map(fields.iter().map(|(k, v)| (k, String::from_utf8_lossy(v))))
}

impl DeadLetter {
    /// A dead letter from its entry; `size` is the whole payload's size when the entry's
    /// payload was cut to a preview (`None`: the entry holds the whole payload).
    fn from_entry(priority: &str, shard: u16, mut e: StreamEntry, size: Option<u64>) -> Self {
        // Moved out of the fields, so the payload is held (and serialized) once.
        let payload = e
            .fields
            .iter()
            .position(|(k, _)| &k[..] == b"payload")
            .map(|i| Vec::from(e.fields.remove(i).1))
            .unwrap_or_default();
        let payload_size = size.unwrap_or(payload.len() as u64);
        let payload_truncated = payload_size > payload.len() as u64;
        let payload = match String::from_utf8(payload) {
            Ok(text) => text,
            Err(bytes) => String::from_utf8_lossy(bytes.as_bytes()).into_owned(),
        };
        let map: HashMap<&[u8], &[u8]> = e.fields.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let text = |k: &str| {
            map.get(k.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let num = |k: &str| text(k).parse().unwrap_or(0);
        DeadLetter {
            id: DeadLetterId {
                priority: priority.to_owned(),
                shard,
                entry: e.id.to_string(),
            },
            task_id: text("id"),
            kind: text("kind"),
            reason: DeadReason::parse(&text("reason")),
            error: text("error"),
            attempt: num("attempt"),
            deliveries: num("deliveries"),
            dead_at: num("dead_at"),
            origin: text("origin"),
            codec: Some(text("codec"))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| crate::Codec::Json.as_str().to_owned()),
            payload,
            payload_size,
            payload_truncated,
            fields: e
                .fields
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), Vec::from(v)))
                .collect(),
        }
    }
}

/// What [`Inspector::delete_queue`] found, and with `force` discarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueDeletion {
    /// The queue.
    pub queue: String,
    /// Live workers that were serving it.
    pub workers: usize,
    /// Waiting, in-flight, delayed and retrying tasks.
    pub tasks: u64,
    /// Dead letters.
    pub dead_letters: u64,
}

impl QueueDeletion {
    fn holds_anything(&self) -> bool {
        self.workers > 0 || self.tasks > 0 || self.dead_letters > 0
    }

    fn in_use(self) -> Error {
        Error::QueueInUse {
            queue: self.queue,
            workers: self.workers,
            tasks: self.tasks,
            dead_letters: self.dead_letters,
        }
    }
}

/// Which dead letters a replay or purge applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqSelect {
    /// One dead letter.
    Id(DeadLetterId),
    /// Every dead letter of this kind.
    Kind(String),
    /// Every dead letter of the queue.
    All,
}

/// A pending (delivered, unsettled) entry.
#[derive(Debug, Clone, Serialize)]
pub struct PendingEntry {
    /// Priority of the shard.
    pub priority: String,
    /// Shard number.
    pub shard: u16,
    /// Stream entry id.
    pub entry: String,
    /// Worker holding it.
    pub consumer: String,
    /// Ms since it was delivered or its lease was renewed.
    pub idle_ms: u64,
    /// Deliveries (first read plus reclaims).
    pub deliveries: u64,
    /// The task's id (what `enqueue` printed); `None` when the entry is gone (counted as
    /// `lost` once reclaimed) or does not decode.
    pub task_id: Option<String>,
    /// The task's kind, as `task_id`.
    pub kind: Option<String>,
    /// Failed runs before this one (0 on the first run), as `task_id`.
    pub attempt: Option<u32>,
}

/// Read-only views and dead-letter operations.
#[derive(Clone)]
pub struct Inspector {
    conn: RedisConnection,
    clock: Clock,
}

impl fmt::Debug for Inspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inspector").finish_non_exhaustive()
    }
}

const PAGE: usize = 500;

impl Inspector {
    /// Connects to `url` (any URL [`RedisTarget::parse`] reads).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::new(RedisTarget::parse(url)?).await
    }

    /// Connects to a parsed target (or an existing `redis::Client`).
    pub async fn new(target: impl Into<RedisTarget>) -> Result<Self> {
        Ok(Inspector {
            conn: target.into().connect().await?,
            clock: Clock::System,
        })
    }

    fn conn(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// Every queue recorded in Redis.
    pub async fn queues(&self) -> Result<Vec<Queue>> {
        broker::load_queues(&mut self.conn()).await
    }

    /// A recorded queue, or `NotFound` naming the known ones.
    pub async fn queue(&self, name: &str) -> Result<Queue> {
        crate::keys::QueueName::new(name)?;
        match broker::load_queue(&mut self.conn(), name).await? {
            Some(q) => Ok(q),
            None => {
                let known: Vec<String> = self.queues().await?.iter().map(|q| q.name().to_string()).collect();
                Err(Error::NotFound(format!(
                    "queue {name:?} (known queues: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )))
            }
        }
    }

    /// A queue's state per priority and shard.
    pub async fn stats(&self, queue: &Queue) -> Result<QueueStats> {
        let mut conn = self.conn();
        let now = self.clock.now_ms();
        let mut priorities = Vec::new();
        let mut total = Counters::default();
        for p in &queue.layout().priorities {
            let mut shards = Vec::new();
            for n in 0..queue.layout().shards {
                let raw = broker::inspect(&mut conn, &queue.shard(p, n)).await?;
                let age = raw
                    .oldest_waiting
                    .map(|id| Duration::from_millis(now.saturating_sub(id.ms)));
                let (waiting, waiting_estimated) = match raw.lag {
                    Some(lag) => (lag, false),
                    None => (raw.length.saturating_sub(raw.pending), true),
                };
                shards.push(ShardStats {
                    shard: n,
                    length: raw.length,
                    lag: raw.lag,
                    waiting,
                    waiting_estimated,
                    pending: raw.pending,
                    scheduled: raw.scheduled,
                    retry: raw.retry,
                    dead_letters: raw.dlq,
                    fair_waiting: raw.fair,
                    oldest_waiting_age: age,
                    counters: Counters::from_pairs(&raw.stats),
                });
            }
            let mut counters = Counters::default();
            shards.iter().for_each(|s| counters.add(&s.counters));
            total.add(&counters);
            priorities.push(PriorityStats {
                priority: p.clone(),
                waiting: shards.iter().map(|s| s.waiting).sum(),
                waiting_estimated: shards.iter().any(|s| s.waiting_estimated),
                pending: shards.iter().map(|s| s.pending).sum(),
                scheduled: shards.iter().map(|s| s.scheduled).sum(),
                retry: shards.iter().map(|s| s.retry).sum(),
                dead_letters: shards.iter().map(|s| s.dead_letters).sum(),
                fair_waiting: shards.iter().map(|s| s.fair_waiting).sum(),
                oldest_waiting_age: shards.iter().filter_map(|s| s.oldest_waiting_age).max(),
                counters,
                shards,
            });
        }
        let paused = broker::is_paused(&mut conn, queue.name()).await?;
        Ok(QueueStats {
            queue: queue.name().to_string(),
            paused,
            priorities,
            counters: total,
        })
    }

    /// Pending entries of a queue, oldest first per shard, at most `limit` per shard.
    pub async fn pending(&self, queue: &Queue, limit: usize) -> Result<Vec<PendingEntry>> {
        let mut conn = self.conn();
        let mut out = Vec::new();
        for s in queue.all_shards() {
            let rows = broker::pending(&mut conn, &s.keys.stream, limit).await?;
            // The task behind each entry, so "where is my job" can be answered with the id
            // `enqueue` printed; one pipelined read per shard.
            let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
            let found = broker::entries_by_id(&mut conn, &s.keys.stream, &ids).await?;
            for (row, entry) in rows.into_iter().zip(found) {
                let task = entry.and_then(|e| Envelope::from_fields(e.fields).ok());
                out.push(PendingEntry {
                    priority: s.priority.to_owned(),
                    shard: s.number,
                    entry: row.id.to_string(),
                    consumer: row.consumer,
                    idle_ms: row.idle_ms,
                    deliveries: row.deliveries,
                    task_id: task.as_ref().map(|t| t.id.as_str().to_owned()),
                    kind: task.as_ref().map(|t| t.kind.clone()),
                    attempt: task.as_ref().map(|t| t.attempt),
                });
            }
        }
        Ok(out)
    }

    /// What the server says about itself (version, eviction policy, AOF, replicas), for the
    /// start-up checks a supervisor makes before it starts workers
    /// ([`ServerInfo::check_eviction`](crate::ServerInfo::check_eviction),
    /// [`Durability::check`](crate::Durability::check)).
    pub async fn server_info(&self) -> Result<crate::ServerInfo> {
        broker::server_info(&mut self.conn()).await
    }

    /// Live workers (those whose heartbeat has not expired), by id. Stale registry rows are
    /// pruned on the way.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        broker::live_workers(&mut self.conn()).await
    }

    /// Every fleet-wide limit a worker has enforced (see [`crate::limits`]), by name: its
    /// settings, starts in the last whole second, running slots held, tasks waiting.
    pub async fn limits(&self) -> Result<Vec<crate::limits::LimitStatus>> {
        broker::limits::limit_statuses(&mut self.conn(), self.clock.now_ms()).await
    }

    /// The names of the limits workers registered (what [`Inspector::limits`] lists), sorted:
    /// one command, for a caller that shows a page of them.
    pub async fn limit_names(&self) -> Result<Vec<String>> {
        broker::limits::limit_names(&mut self.conn()).await
    }

    /// One limit as [`Inspector::limits`] shows it (one round trip in the limit's slot).
    /// A name no worker registered reads as zeros with no settings: check
    /// [`Inspector::limit_names`] first to tell it apart. A name that cannot be a limit's is
    /// refused ([`Error::InvalidLimit`]).
    pub async fn limit(&self, name: &str) -> Result<crate::limits::LimitStatus> {
        crate::limits::check_limit_name(name)?;
        broker::limits::limit_status(&mut self.conn(), name, self.clock.now_ms()).await
    }

    /// A queue's fair groups (`docs/groups.md`): per priority, each group with tasks waiting
    /// for its turn (count, weight, how many turns its newest task is away, running tasks
    /// against a per-group cap), and each shard's virtual clock. One pipelined read of every
    /// shard's groups hash and fair set, and one of the groups' running slots.
    pub async fn groups(&self, queue: &Queue) -> Result<QueueGroups> {
        let mut conn = self.conn();
        let shards: Vec<_> = queue.all_shards().collect();
        let keys: Vec<&crate::keys::ShardKeys> = shards.iter().map(|s| &s.keys).collect();
        let states = broker::fair_shards(&mut conn, &keys).await?;
        let mut rows: std::collections::BTreeMap<(usize, String), GroupStatus> = Default::default();
        let mut out_shards = Vec::new();
        for (shard, st) in shards.iter().zip(&states) {
            for (g, &(waiting, last)) in &st.groups {
                let row = rows.entry((shard.rank, g.clone())).or_insert_with(|| GroupStatus {
                    priority: shard.priority.to_owned(),
                    group: g.clone(),
                    waiting: 0,
                    weight: 1,
                    turns: 0.0,
                    running: 0,
                });
                row.waiting += waiting;
                row.weight = row.weight.max(st.weights.get(g).copied().unwrap_or(1));
                row.turns = row.turns.max(last - st.floor);
            }
            out_shards.push(FairShardStatus {
                priority: shard.priority.to_owned(),
                shard: shard.number,
                waiting: st.waiting,
                groups: st.groups.len() as u64,
                floor: st.floor,
                next_tag: st.head,
                window: st.window.unwrap_or(DEFAULT_FAIR_WINDOW),
            });
        }
        let mut groups: Vec<GroupStatus> = rows.into_values().collect();
        let names: Vec<String> = groups.iter().map(|g| format!("group:{}", g.group)).collect();
        let running = broker::limits::running_counts(&mut conn, &names, self.clock.now_ms()).await?;
        for (g, n) in groups.iter_mut().zip(running) {
            g.running = n;
        }
        Ok(QueueGroups {
            queue: queue.name().to_string(),
            waiting: states.iter().map(|s| s.waiting).sum(),
            groups,
            shards: out_shards,
        })
    }

    /// Dead letters of a queue in time order, after entry id `after` (exclusive), at most
    /// `limit`. Page by passing the last id's `entry` as `after`.
    pub async fn dlq_list(&self, queue: &Queue, after: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut conn = self.conn();
        let start = match after {
            Some(a) => RangeStart::After(entry_id(a)?),
            None => RangeStart::First,
        };
        let mut found = Vec::new();
        for s in queue.all_shards() {
            // Payloads cut to a preview in Redis: a listing never moves whole payloads.
            for (e, size) in broker::range_heads(&mut conn, &s.keys.dlq, start, limit, DLQ_PREVIEW).await? {
                found.push((e.id, s.priority, s.number, e, size));
            }
        }
        found.sort_by_key(|(id, ..)| *id);
        found.truncate(limit);
        // Built after the cut: only the letters returned are decoded.
        Ok(found
            .into_iter()
            .map(|(_, priority, shard, e, size)| DeadLetter::from_entry(priority, shard, e, size))
            .collect())
    }

    /// One dead letter.
    pub async fn dlq_get(&self, queue: &Queue, id: &DeadLetterId) -> Result<DeadLetter> {
        let keys = self.dlq_keys(queue, id)?;
        let entry = entry_id(&id.entry)?;
        let mut found = broker::range(&mut self.conn(), &keys.dlq, RangeStart::At(entry), 1).await?;
        match found.pop() {
            Some(e) if e.id == entry => Ok(DeadLetter::from_entry(&id.priority, id.shard, e, None)),
            _ => Err(Error::NotFound(format!("dead letter {id} in queue {}", queue.name()))),
        }
    }

    /// Loads (or replaces) the `rivulet_v1` function library ([`crate::functions`]) and
    /// returns its revision. Workers do this at start; this is for producers in other
    /// languages that run before any worker did (`worker-cli functions install`).
    pub async fn install_functions(&self) -> Result<&'static str> {
        broker::functions::install(&mut self.conn()).await
    }

    /// Moves the selected dead letters back into their streams with attempts reset. Returns
    /// how many.
    pub async fn dlq_replay(&self, queue: &Queue, select: &DlqSelect) -> Result<u64> {
        self.dlq_apply(queue, select, true).await
    }

    /// Deletes the selected dead letters. Returns how many.
    pub async fn dlq_purge(&self, queue: &Queue, select: &DlqSelect) -> Result<u64> {
        self.dlq_apply(queue, select, false).await
    }

    async fn dlq_apply(&self, queue: &Queue, select: &DlqSelect, replay: bool) -> Result<u64> {
        let mut conn = self.conn();
        let events_maxlen = queue.events_maxlen();
        let now_ms = self.clock.now_ms();
        let apply = |conn: &mut RedisConnection, keys: ShardKeys, ids: Vec<StreamId>| {
            let mut conn = conn.clone();
            async move {
                if replay {
                    broker::lifecycle::replay(&mut conn, &keys, &ids, events_maxlen, now_ms).await
                } else {
                    broker::delete_entries(&mut conn, &keys.dlq, &ids).await
                }
            }
        };
        if let DlqSelect::Id(id) = select {
            let keys = self.dlq_keys(queue, id)?;
            let n = apply(&mut conn, keys, vec![entry_id(&id.entry)?]).await?;
            if n == 0 {
                return Err(Error::NotFound(format!("dead letter {id} in queue {}", queue.name())));
            }
            return Ok(n);
        }
        let mut total = 0;
        for Shard { keys, .. } in queue.all_shards() {
            let mut start = RangeStart::First;
            loop {
                let page = broker::range(&mut conn, &keys.dlq, start, PAGE).await?;
                let Some(last) = page.last() else { break };
                start = RangeStart::After(last.id);
                let full = page.len() == PAGE;
                let ids: Vec<StreamId> = page
                    .into_iter()
                    .filter(|e| match select {
                        DlqSelect::Kind(k) => {
                            crate::envelope::entry_field(&e.fields, "kind").is_some_and(|v| v == k.as_bytes())
                        }
                        _ => true,
                    })
                    .map(|e| e.id)
                    .collect();
                total += apply(&mut conn, keys.clone(), ids).await?;
                if !full {
                    break;
                }
            }
        }
        Ok(total)
    }

    fn dlq_keys(&self, queue: &Queue, id: &DeadLetterId) -> Result<ShardKeys> {
        queue.rank(&id.priority)?;
        if id.shard >= queue.layout().shards {
            return Err(Error::NotFound(format!(
                "shard {} of queue {} (it has {})",
                id.shard,
                queue.name(),
                queue.layout().shards
            )));
        }
        Ok(queue.shard(&id.priority, id.shard))
    }

    /// Tells workers to stop fetching from a queue (in-flight tasks finish; delayed tasks are
    /// still promoted). Takes effect within a worker's promote interval.
    pub async fn pause(&self, queue: &Queue) -> Result<()> {
        broker::set_paused(&mut self.conn(), queue.name(), true).await
    }

    /// Lets workers fetch from a paused queue again.
    pub async fn resume(&self, queue: &Queue) -> Result<()> {
        broker::set_paused(&mut self.conn(), queue.name(), false).await
    }

    /// Deletes a queue: every shard's stream, delayed and retry sets, dead letters and
    /// counters, its registry entry, pause flag and autoscaler decision. Refused with
    /// [`Error::QueueInUse`] while workers serve it or it holds tasks or dead letters, unless
    /// `force`: then those tasks are discarded, and what the refusal would have named is
    /// returned. Each shard is checked and deleted in one script, so a task enqueued after the
    /// first look is never dropped without `force`; the registry entry goes last.
    ///
    /// Stop the queue's producers first: a running [`crate::Client`] remembers the queue as
    /// declared and keeps writing to it, and a worker started later declares it again with
    /// its own layout. A worker that starts on the queue afterwards declares it again, empty.
    pub async fn delete_queue(&self, queue: &Queue, force: bool) -> Result<QueueDeletion> {
        let found = self.queue_contents(queue).await?;
        if !force && found.holds_anything() {
            return Err(found.in_use());
        }
        let mut conn = self.conn();
        for shard in queue.all_shards() {
            // Forced: the tasks' records go with their tasks (found through the structures
            // that hold them, before those are dropped).
            if force {
                broker::lifecycle::drop_records(&mut conn, &shard.keys).await?;
            }
            if !broker::drop_shard(&mut conn, &shard.keys, force).await? {
                // Something arrived since the look above: refuse, keeping the registry entry.
                return Err(self.queue_contents(queue).await?.in_use());
            }
            if !force {
                broker::lifecycle::drop_records(&mut conn, &shard.keys).await?;
            }
        }
        broker::forget_queue(&mut conn, queue.name()).await?;
        Ok(found)
    }

    /// What deleting a queue would discard: its live workers, tasks and dead letters.
    async fn queue_contents(&self, queue: &Queue) -> Result<QueueDeletion> {
        let stats = self.stats(queue).await?;
        let workers = self
            .workers()
            .await?
            .iter()
            .filter(|w| w.queues.iter().any(|q| q == queue.name().as_str()))
            .count();
        Ok(QueueDeletion {
            queue: queue.name().to_string(),
            workers,
            tasks: stats
                .priorities
                .iter()
                .map(|p| p.waiting + p.pending + p.scheduled + p.retry + p.fair_waiting)
                .sum(),
            dead_letters: stats.priorities.iter().map(|p| p.dead_letters).sum(),
        })
    }

    /// Stores the autoscaler's latest decision (JSON) for a queue.
    pub async fn record_decision(&self, queue: &Queue, json: &str) -> Result<()> {
        broker::store_decision(&mut self.conn(), queue.name(), json).await
    }

    /// The autoscaler's latest decision for a queue (JSON), if any.
    pub async fn decision(&self, queue: &Queue) -> Result<Option<String>> {
        broker::decision(&mut self.conn(), queue.name()).await
    }
}

/// A dead letter's entry id, or `NotFound` saying what ids look like.
fn entry_id(entry: &str) -> Result<StreamId> {
    StreamId::parse(entry).ok_or_else(|| {
        Error::NotFound(format!(
            "dead letter entry {entry:?}: entry ids look like 1700000000000-0"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_shows_every_field_and_the_codec_a_worker_would_use() {
        let field = |k: &str, v: &str| {
            (
                bytes::Bytes::copy_from_slice(k.as_bytes()),
                bytes::Bytes::copy_from_slice(v.as_bytes()),
            )
        };
        let entry = || StreamEntry {
            id: StreamId { ms: 5, seq: 0 },
            fields: vec![
                field("id", "t1"),
                field("kind", "resize"),
                field("payload", "{}"),
                field("enqueued_at", "1700000000000"),
                field("tenant", "acme"),
                field("reason", "malformed"),
            ],
        };
        let dead = DeadLetter::from_entry("normal", 0, entry(), None);
        let json = serde_json::to_value(&dead).unwrap();
        assert_eq!(
            (json["payload"].as_str(), json["payload_size"].as_u64()),
            (Some("{}"), Some(2))
        );
        assert_eq!(json["payload_truncated"], false);
        assert!(
            json["fields"].get("payload").is_none(),
            "the payload appears once: {json}"
        );
        // A listing's entry holds a preview; the size is the whole payload's.
        let listed = DeadLetter::from_entry("normal", 0, entry(), Some(5_000_000));
        assert_eq!((listed.payload_size, listed.payload_truncated), (5_000_000, true));
        assert_eq!(json["codec"], "json", "no codec field: the default");
        assert_eq!(json["fields"]["tenant"], "acme", "{json}");
        assert_eq!(json["fields"]["enqueued_at"], "1700000000000");
        assert_eq!(json["id"], "normal/0/5-0");
        assert_eq!(dead.reason, DeadReason::Malformed);
    }

    #[tokio::test]
    async fn the_oldest_waiting_age_is_measured_on_the_inspectors_clock() {
        let server = crate::testing::RedisServer::start();
        let client = server.client();
        let queue = Queue::new("aged").unwrap();
        let producer = crate::Client::new(&client).await.unwrap();
        producer
            .enqueue(&queue, crate::Task::json("k", &1).unwrap())
            .await
            .unwrap();
        let (clock, now) = Clock::manual(0);
        let inspector = Inspector {
            clock,
            ..Inspector::new(&client).await.unwrap()
        };
        let keys = queue.shard(queue.default_priority(), 0);
        let added = broker::range(&mut inspector.conn(), &keys.stream, RangeStart::First, 1)
            .await
            .unwrap()[0]
            .id;
        let age = |stats: QueueStats| {
            let p = stats.priorities.iter().find(|p| p.priority == queue.default_priority());
            p.and_then(|p| p.oldest_waiting_age)
        };
        now.store(added.ms + 5_000, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            age(inspector.stats(&queue).await.unwrap()),
            Some(Duration::from_secs(5))
        );
        // A clock behind the entry's own time reads as no age, never a negative one.
        now.store(added.ms - 1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(age(inspector.stats(&queue).await.unwrap()), Some(Duration::ZERO));
    }
}
