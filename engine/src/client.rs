//! The producer: `Client` enqueues tasks, one at a time or pipelined in batches, and follows
//! them by id: status, wait, cancel (the task lifecycle, `docs/tasks.md`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;

use crate::backoff::RetryPolicy;
use crate::broker::lifecycle::{self as records, EnqueueItem};
use crate::broker::{self, RedisConnection, RedisTarget};
use crate::clock::Clock;
use crate::durability::Durability;
use crate::envelope::{Codec, Envelope, TaskId, ms_since_epoch, now_ms};
use crate::error::{Error, Result};
use crate::keys::{Queue, QueueName, ShardKeys, shard_for};
use crate::lifecycle::{CancelOutcome, Enqueued, Event, TaskPage, TaskState, TaskStatus};

/// How long a producer waits for Redis before a call fails with a timeout.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A task to enqueue: kind, encoded payload and options.
///
/// ```
/// use std::time::Duration;
/// use rivulet::Task;
///
/// let task = Task::json("send_email", &serde_json::json!({"to": "a@example.com"}))?
///     .priority("high")
///     .delay(Duration::from_secs(30))
///     .max_attempts(3);
/// # Ok::<(), rivulet::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Task {
    envelope: Envelope,
    priority: Option<String>,
    run_at_ms: Option<u64>,
    /// Whether the caller chose the id (a unique key then cannot pick the id's shard).
    explicit_id: bool,
}

impl Task {
    /// A task whose payload is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(kind: &str, value: &T) -> Result<Self> {
        Ok(Self::encoded(kind, Codec::Json.encode(value)?, Codec::Json))
    }

    /// A task whose payload is `value` as MessagePack.
    pub fn msgpack<T: Serialize + ?Sized>(kind: &str, value: &T) -> Result<Self> {
        Ok(Self::encoded(kind, Codec::MsgPack.encode(value)?, Codec::MsgPack))
    }

    /// A task with opaque payload bytes (`codec` = `bytes`).
    pub fn bytes(kind: &str, payload: impl Into<Bytes>) -> Self {
        Self::encoded(kind, payload.into(), Codec::Bytes)
    }

    /// A task with a payload already encoded with `codec`.
    pub fn encoded(kind: &str, payload: Bytes, codec: Codec) -> Self {
        Task {
            envelope: Envelope::new(kind, payload, codec),
            priority: None,
            run_at_ms: None,
            explicit_id: false,
        }
    }

    /// Runs at this priority (the queue's default priority otherwise).
    pub fn priority(mut self, priority: impl Into<String>) -> Self {
        self.priority = Some(priority.into());
        self
    }

    /// Runs no sooner than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at_ms = Some(now_ms().saturating_add(crate::envelope::millis(delay)));
        self
    }

    /// Runs no sooner than `at`.
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at_ms = Some(ms_since_epoch(at));
        self
    }

    /// Overrides the worker's attempt limit for this task.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.envelope.max_attempts = Some(n);
        self
    }

    /// Overrides the worker's retry backoff for this task: the delay ceiling of the first
    /// retry, its growth per attempt and the largest delay (full jitter stays the worker's
    /// choice). Fails on a factor below 1 or a cap below the base.
    pub fn backoff(mut self, base: Duration, factor: f64, cap: Duration) -> Result<Self> {
        RetryPolicy {
            base,
            factor,
            cap,
            ..RetryPolicy::default()
        }
        .validate()?;
        self.envelope.backoff_base_ms = Some(crate::envelope::millis(base));
        self.envelope.backoff_factor = Some(factor);
        self.envelope.backoff_cap_ms = Some(crate::envelope::millis(cap));
        Ok(self)
    }

    /// Overrides the worker's handler timeout for this task.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.envelope.timeout_ms = Some(crate::envelope::millis(timeout));
        self
    }

    /// Uses this id instead of a generated one (it must be unique).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.envelope.id = TaskId::from_string(id);
        self.explicit_id = true;
        self
    }

    /// Keeps this task's record (state, result) for `retention` once it is final, instead of
    /// the queue's retention; zero keeps no record (no status, no events, no wait).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.envelope.retention_ms = Some(crate::envelope::millis(retention));
        self
    }

    /// Makes the task unique by `key` within its queue and priority: while a task holding
    /// the key has not reached a final state (succeeded, dead, cancelled), enqueueing another
    /// with the same key enqueues nothing and returns the holder's id
    /// ([`Enqueued::Duplicate`]). See [`unique_for`](Self::unique_for) for a fixed window.
    /// The task is placed in the shard the key maps to, so the check is one atomic script.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.envelope.unique_key = Some(key.into());
        self
    }

    /// Holds the unique key for `window` from enqueue, whether the task finishes sooner or
    /// later (it is not released at completion): at most one task per key per window.
    pub fn unique_for(mut self, window: Duration) -> Self {
        self.envelope.unique_ttl_ms = Some(crate::envelope::millis(window).max(1));
        self
    }

    /// Counts this task against the fleet-wide limit `name` (a rate key shared by several
    /// kinds, e.g. one exchange's API) instead of the limit named by its kind. Workers
    /// enforce the limits they are configured with ([`WorkerConfig::limits`](crate::WorkerConfig::limits)).
    pub fn limit_key(mut self, name: impl Into<String>) -> Self {
        self.envelope.limit_key = Some(name.into());
        self
    }

    /// Puts the task in fair group `group` (a tenant id, say): within its priority, the
    /// groups with tasks waiting are served in turn (weighted by the workers'
    /// `WorkerConfig::group_weights`), so one group's backlog delays another's task by about
    /// one turn, not by the backlog (`docs/groups.md`). 1 to 64 characters of
    /// `A-Z a-z 0-9 . _ - : /`, checked when the task is enqueued.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.envelope.group = Some(group.into());
        self
    }

    /// The task's id.
    pub fn task_id(&self) -> &TaskId {
        &self.envelope.id
    }
}

/// Enqueues tasks. Cheap to clone: clones share one multiplexed connection.
#[derive(Clone)]
pub struct Client {
    conn: RedisConnection,
    declared: Arc<Mutex<HashSet<QueueName>>>,
    /// For the dedicated connections of blocking waits.
    redis: RedisTarget,
    /// Tells a delayed task that is already due (it goes straight to its stream) from one to
    /// park in the scheduled set.
    clock: Clock,
    /// What an enqueue waits for before it returns (see [`Client::with_durability`]).
    durability: Durability,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url`: `redis://127.0.0.1:6379`, `redis+cluster://h1:7000,h2:7001` or
    /// `redis+sentinel://h1:26379,h2:26379/master` (see [`RedisTarget::parse`]).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::new(RedisTarget::parse(url)?).await
    }

    /// Connects to a parsed target (or an existing `redis::Client`).
    pub async fn new(target: impl Into<RedisTarget>) -> Result<Self> {
        let target = target.into();
        let conn = target.connect().await?;
        Ok(Client {
            conn,
            declared: Arc::default(),
            redis: target,
            clock: Clock::System,
            durability: Durability::Fast,
        })
    }

    /// A client (sharing this one's connection) whose enqueues return only once `durability`
    /// holds: `replicated:N` waits for N replicas (`WAIT`), `fsync` for the master's AOF fsync
    /// (`WAITAOF`, Redis 7.2+). The wait is the last command of each enqueue's pipeline, so it
    /// costs no extra round trip, only the replicas' (or the disk's) latency. An enqueue that
    /// is not confirmed in time fails with [`Error::NotDurable`](crate::Error::NotDurable).
    ///
    /// Reads the server's version and settings once: a setting it cannot honour (`fsync` before
    /// 7.2 or without AOF) is refused here with [`Error::UnsupportedServer`](crate::Error::UnsupportedServer).
    /// Use one client per durability to give queues different settings.
    pub async fn with_durability(self, durability: Durability) -> Result<Self> {
        if durability.waits() {
            let info = broker::server_info(&mut self.conn.clone()).await?;
            durability.check(&info)?;
            if let Durability::Replicated { replicas, .. } = durability
                && info.replicas < replicas
            {
                tracing::warn!(
                    %durability,
                    connected = info.replicas,
                    "fewer replicas are connected than the durability asks for: enqueues will fail until they are"
                );
            }
        }
        Ok(Client { durability, ..self })
    }

    /// What enqueues wait for.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Records the queue's layout in Redis (done once per queue and client, automatically,
    /// by the first enqueue). Fails with `LayoutMismatch` if Redis knows another layout.
    pub async fn declare(&self, queue: &Queue) -> Result<()> {
        if self
            .declared
            .lock()
            .expect("the set is never left half-updated")
            .contains(queue.name())
        {
            return Ok(());
        }
        broker::declare_queue(&mut self.conn.clone(), queue).await?;
        self.declared
            .lock()
            .expect("the set is never left half-updated")
            .insert(queue.name().clone());
        Ok(())
    }

    /// Enqueues one task and returns its id (for a duplicate of a unique task, the id of the
    /// task that holds the key: see [`submit`](Self::submit) to tell them apart).
    pub async fn enqueue(&self, queue: &Queue, task: Task) -> Result<TaskId> {
        let mut ids = self.enqueue_many(queue, [task]).await?;
        Ok(ids.pop().expect("one task in, one id out"))
    }

    /// Enqueues many tasks in one pipelined round trip. Validates every task's priority
    /// before sending anything.
    pub async fn enqueue_many(&self, queue: &Queue, tasks: impl IntoIterator<Item = Task>) -> Result<Vec<TaskId>> {
        let done = self.submit_many(queue, tasks).await?;
        Ok(done
            .into_iter()
            .map(|e| match e {
                Enqueued::New(id) | Enqueued::Duplicate(id) => id,
            })
            .collect())
    }

    /// Enqueues one task and says whether it is new or a duplicate of a live unique task.
    pub async fn submit(&self, queue: &Queue, task: Task) -> Result<Enqueued> {
        let mut done = self.submit_many(queue, [task]).await?;
        Ok(done.pop().expect("one task in, one outcome out"))
    }

    /// [`enqueue_many`](Self::enqueue_many), saying per task whether it is new or a
    /// duplicate.
    ///
    /// A task with a record (the queue's or its own retention above zero), a unique key, a
    /// group or a due time is enqueued by `enqueue.lua` (the `rivulet_v1_enqueue` function other
    /// languages call too: record, event, lock and scheduled set in the same script); a ready
    /// one with neither by a plain `XADD`. All of them go in one pipelined round trip.
    pub async fn submit_many(&self, queue: &Queue, tasks: impl IntoIterator<Item = Task>) -> Result<Vec<Enqueued>> {
        let mut tasks: Vec<Task> = tasks.into_iter().collect();
        let shards = queue.layout().shards;
        let mut placed = Vec::with_capacity(tasks.len());
        for task in &mut tasks {
            // The same check a worker makes before it runs the task (0 attempts, a 0 timeout, a
            // cap below the base): refused here rather than dead-lettered there.
            crate::envelope::check_kind(&task.envelope.kind)
                .and_then(|()| crate::envelope::check_timeout(task.envelope.timeout_ms))
                .and_then(|()| task.envelope.retry_policy(RetryPolicy::default()).map(drop))
                .and_then(|()| {
                    task.envelope
                        .group
                        .as_deref()
                        .map_or(Ok(()), crate::envelope::check_group)
                })
                .map_err(|m| crate::Error::config("task", m.0))?;
            if let Some(key) = task.envelope.unique_key.clone() {
                place_unique(task, key, shards)?;
            }
            let priority = task.priority.as_deref().unwrap_or_else(|| queue.default_priority());
            queue.rank(priority)?;
            let keys = queue.shard(priority, shard_for(task.envelope.id.as_str(), shards));
            placed.push(keys);
        }
        self.declare(queue).await?;
        let mut conn = self.conn.clone();
        let now = self.clock.now_ms();
        let retention = crate::envelope::millis(queue.retention_period());
        let mut ready = Vec::new();
        let mut scripted = Vec::new();
        for (i, (task, keys)) in tasks.iter().zip(&placed).enumerate() {
            let due = task.run_at_ms.filter(|&due| due > now);
            let retention_ms = task.envelope.retention_ms.unwrap_or(retention);
            let unique = task
                .envelope
                .unique_key
                .as_ref()
                .map(|k| (keys.unique(k), task.envelope.unique_ttl_ms.unwrap_or(0)));
            if retention_ms > 0 || unique.is_some() || due.is_some() || task.envelope.group.is_some() {
                scripted.push((
                    i,
                    EnqueueItem {
                        keys,
                        env: &task.envelope,
                        due_ms: due.unwrap_or(0),
                        retention_ms,
                        events_maxlen: queue.events_maxlen(),
                        unique,
                    },
                ));
                continue;
            }
            ready.push((keys, &task.envelope));
        }
        // The durability wait goes after every write of the batch, on the same connection: in
        // the ready tasks' pipeline when nothing else follows, else after the scripts.
        let wait_in_pipeline = scripted.is_empty() && !ready.is_empty();
        if !ready.is_empty() {
            let durability = if wait_in_pipeline {
                self.durability
            } else {
                Durability::Fast
            };
            broker::add_ready(&mut conn, &ready, durability).await?;
        }
        let mut out: Vec<Enqueued> = tasks.iter().map(|t| Enqueued::New(t.envelope.id.clone())).collect();
        if !scripted.is_empty() {
            let (indexes, items): (Vec<usize>, Vec<EnqueueItem<'_>>) = scripted.into_iter().unzip();
            let replies = records::enqueue(&mut conn, &items, now).await?;
            for (i, holder) in indexes.into_iter().zip(replies) {
                if let Some(holder) = holder {
                    out[i] = Enqueued::Duplicate(TaskId::from_string(holder));
                }
            }
        }
        if !wait_in_pipeline {
            let streams: Vec<&str> = placed.iter().map(|k| k.stream.as_str()).collect();
            broker::wait_durable(&mut conn, self.durability, &streams).await?;
        }
        Ok(out)
    }

    /// The shards that may hold task `id`'s record: its shard in each priority.
    fn candidates(queue: &Queue, id: &str) -> Vec<(String, ShardKeys)> {
        let n = shard_for(id, queue.layout().shards);
        queue
            .layout()
            .priorities
            .iter()
            .map(|p| (p.clone(), queue.shard(p, n)))
            .collect()
    }

    /// Finds task `id`'s record: one `rivulet_v1_record` call per priority, in one round trip (a task's
    /// shard number follows from its id; its priority does not, so each is looked in).
    async fn find(&self, queue: &Queue, id: &str) -> Result<Option<(String, ShardKeys, Vec<(String, Vec<u8>)>)>> {
        let shards = Self::candidates(queue, id);
        let keys: Vec<ShardKeys> = shards.iter().map(|(_, k)| k.clone()).collect();
        let found = records::records(&mut self.conn.clone(), &keys, id).await?;
        Ok(shards
            .into_iter()
            .zip(found)
            .find(|(_, fields)| fields.iter().any(|(k, _)| k == "state"))
            .map(|((p, k), f)| (p, k, f)))
    }

    /// The status of task `id` in `queue` (`unknown` when it has no record).
    pub async fn status(&self, queue: &Queue, id: &TaskId) -> Result<TaskStatus> {
        Ok(match self.find(queue, id.as_str()).await? {
            Some((priority, _, fields)) => {
                TaskStatus::from_record(id.clone(), queue.name().clone(), &priority, fields, self.clock.now_ms())
            }
            None => TaskStatus::unknown(id.clone(), queue.name().clone()),
        })
    }

    /// Task `id`'s payload and codec, from where the task is now: its stream entry while it
    /// is queued or active (the record's `entry`), its dead letter when it is dead. `None`
    /// when the task is unknown or its payload is no longer kept (a finished task's entry is
    /// deleted when it settles; a scheduled or retrying task's payload sits in its sorted-set
    /// member, which this does not decode). For the dashboard's task page.
    pub async fn payload(&self, queue: &Queue, id: &TaskId) -> Result<Option<(Bytes, Codec)>> {
        let Some((_, keys, fields)) = self.find(queue, id.as_str()).await? else {
            return Ok(None);
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .and_then(broker::StreamId::parse)
        };
        let (stream, entry) = match (field("dlq_id"), field("entry")) {
            (Some(dead), _) => (&keys.dlq, dead),
            (None, Some(entry)) => (&keys.stream, entry),
            (None, None) => return Ok(None),
        };
        let found = broker::entries_by_id(&mut self.conn.clone(), stream, &[entry]).await?;
        Ok(found
            .into_iter()
            .flatten()
            .filter_map(|e| Envelope::from_fields(e.fields).ok())
            .find(|env| env.id == *id)
            .map(|env| (env.payload, env.codec)))
    }

    /// Task `id`'s events among the newest `scan` events of its shard, oldest first (empty
    /// when it has no record). A bounded read (`XREVRANGE ... COUNT scan` on one shard's
    /// capped events stream), for the dashboard's timeline of one task.
    pub async fn task_events(&self, queue: &Queue, id: &TaskId, scan: usize) -> Result<Vec<Event>> {
        let Some((priority, keys, _)) = self.find(queue, id.as_str()).await? else {
            return Ok(Vec::new());
        };
        let shard = shard_for(id.as_str(), queue.layout().shards);
        let newest = broker::newest_entries(&mut self.conn.clone(), &keys.events, scan).await?;
        let mut out: Vec<Event> = newest
            .into_iter()
            .flat_map(|e| Event::from_entry(&priority, shard, e))
            .filter(|e| e.task_id == id.as_str())
            .collect();
        out.reverse();
        Ok(out)
    }

    /// Waits up to `timeout` for task `id` to reach a final state and returns its status.
    ///
    /// Driven by a notification: the wait registers on the task's record, then blocks (on a
    /// connection of its own) on the task's done list, which the script that finishes the
    /// task pushes to only when a waiter is registered. A wait costs a handful of commands
    /// however long it lasts; while nobody waits, finishing a task costs nothing extra. Fails
    /// with [`Error::UnknownTask`] when there is no record, [`Error::WaitTimeout`] when the
    /// task is not final in time.
    pub async fn wait(&self, queue: &Queue, id: &TaskId, timeout: Duration) -> Result<TaskStatus> {
        let began = tokio::time::Instant::now();
        let deadline = began + timeout;
        let Some((priority, keys, _)) = self.find(queue, id.as_str()).await? else {
            return Err(self.unknown(queue, id));
        };
        let mut conn = self.conn.clone();
        let status =
            |fields| TaskStatus::from_record(id.clone(), queue.name().clone(), &priority, fields, self.clock.now_ms());
        let (registered, fields) = records::register_waiter(&mut conn, &keys, id.as_str()).await?;
        let st = status(fields);
        if !registered {
            return if st.state == TaskState::Unknown {
                Err(self.unknown(queue, id))
            } else {
                Ok(st)
            };
        }
        let mut blocking = self.blocking_connection(timeout).await?;
        let st = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let woken = !left.is_zero() && records::block_until_done(&mut blocking, &keys, id.as_str(), left).await?;
            if !woken {
                records::unregister_waiter(&mut conn, &keys, id.as_str()).await?;
                break self.status(queue, id).await?;
            }
            let st = self.status(queue, id).await?;
            if st.state.is_final() {
                records::wake_others(&mut conn, &keys, id.as_str()).await?;
                break st;
            }
            // A token left by an earlier run (the task was replayed since it finished): it is
            // consumed, the registration stands, block again for the time left.
            if st.state == TaskState::Unknown {
                break st;
            }
        };
        match st.state {
            s if s.is_final() => Ok(st),
            TaskState::Unknown => Err(self.unknown(queue, id)),
            state => Err(Error::WaitTimeout {
                id: id.to_string(),
                queue: queue.name().to_string(),
                state,
                waited_ms: began.elapsed().as_millis() as u64,
            }),
        }
    }

    /// Cancels task `id`: a scheduled, queued or retrying task atomically (it never starts);
    /// a running one through its worker, which learns within about a second and stops it (a
    /// Rust handler sees [`TaskContext::cancelled`](crate::TaskContext::cancelled), an
    /// `--exec` command gets SIGTERM, then SIGKILL). Either way the task ends `cancelled`,
    /// is not retried and does not go to the dead-letter stream. A finished task is left as
    /// it is and its final state returned; an id without a record is [`Error::UnknownTask`].
    pub async fn cancel(&self, queue: &Queue, id: &TaskId) -> Result<CancelOutcome> {
        let Some((_, keys, fields)) = self.find(queue, id.as_str()).await? else {
            return Err(self.unknown(queue, id));
        };
        let lock = records::lock_of(&fields);
        let (outcome, state) = records::cancel(
            &mut self.conn.clone(),
            &keys,
            id.as_str(),
            lock.as_deref(),
            queue.events_maxlen(),
            self.clock.now_ms(),
        )
        .await?;
        match outcome.as_str() {
            "cancelled" => Ok(CancelOutcome::Cancelled),
            "cancelling" => Ok(CancelOutcome::Cancelling),
            "final" => Ok(CancelOutcome::AlreadyFinished(
                TaskState::parse(&state).unwrap_or(TaskState::Unknown),
            )),
            // Expired between the lookup and the script.
            _ => Err(self.unknown(queue, id)),
        }
    }

    /// Lifecycle events of every shard of `queue` after `cursor`, oldest first (merged by
    /// their stream ids, which follow time), at most `limit` per shard; advances the cursor.
    pub async fn events(&self, queue: &Queue, cursor: &mut EventCursor, limit: usize) -> Result<Vec<Event>> {
        let mut conn = self.conn.clone();
        let shards: Vec<_> = queue.all_shards().collect();
        cursor.fit(shards.len());
        let mut out = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            let got = records::events(&mut conn, &s.keys, cursor.after[i], limit).await?;
            if let Some(last) = got.last() {
                cursor.after[i] = Some(last.id);
            }
            out.extend(got.into_iter().flat_map(|e| Event::from_entry(s.priority, s.number, e)));
        }
        sort_events(&mut out);
        Ok(out)
    }

    /// Blocks up to `block` for events after `cursor` on every shard of `queue` (one
    /// blocking `XREAD` over all of them, on a connection of its own), and advances it.
    pub async fn follow_events(&self, queue: &Queue, cursor: &mut EventCursor, block: Duration) -> Result<Vec<Event>> {
        let shards: Vec<_> = queue.all_shards().collect();
        cursor.fit(shards.len());
        let keys: Vec<&ShardKeys> = shards.iter().map(|s| &s.keys).collect();
        let mut conn = self.blocking_connection(block).await?;
        let got = records::follow_events(&mut conn, &keys, &cursor.after, block, 1000).await?;
        let mut out = Vec::with_capacity(got.len());
        for (i, e) in got {
            cursor.after[i] = Some(e.id);
            out.extend(Event::from_entry(shards[i].priority, shards[i].number, e));
        }
        sort_events(&mut out);
        Ok(out)
    }

    /// Up to `limit` tasks of `queue` in `state`, per shard in priority order, each read back
    /// from its record (see `broker::lifecycle::list_ids` for where each state is listed
    /// from). The first page of [`tasks_page`](Self::tasks_page).
    pub async fn tasks(&self, queue: &Queue, state: TaskState, limit: usize) -> Result<Vec<TaskStatus>> {
        Ok(self.tasks_page(queue, state, None, limit).await?.tasks)
    }

    /// One page of [`tasks`](Self::tasks). `succeeded` and `cancelled` tasks are listed from
    /// each shard's index of kept records, newest first, as far back as their retention
    /// reaches; the page's [`next`](TaskPage::next) cursor (when the page is full) gives the
    /// following page as `after`. The other states list the first `limit` of the structure
    /// holding them and take no cursor.
    pub async fn tasks_page(
        &self,
        queue: &Queue,
        state: TaskState,
        after: Option<&str>,
        limit: usize,
    ) -> Result<TaskPage> {
        let paged = matches!(state, TaskState::Succeeded | TaskState::Cancelled);
        let (mut from, mut after_shard) = (0usize, None);
        if let Some(cursor) = after {
            let parsed = cursor
                .split_once(':')
                .and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, rest)))
                .filter(|_| paged);
            let Some((n, rest)) = parsed else {
                return Err(Error::config(
                    "after",
                    format!("{cursor:?} is not a cursor of a succeeded or cancelled listing"),
                ));
            };
            (from, after_shard) = (n, Some(rest.to_owned()));
        }
        let mut conn = self.conn.clone();
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        let mut next = None;
        for (n, shard) in queue.all_shards().enumerate().skip(from) {
            let mut cursor = if n == from { after_shard.take() } else { None };
            while out.len() < limit {
                let want = limit - out.len();
                let (ids, more) =
                    records::list_ids(&mut conn, &shard.keys, state, cursor.as_deref(), want, now).await?;
                listed(&mut conn, queue, &shard, state, ids, now, &mut out).await?;
                cursor = more;
                if cursor.is_none() {
                    break;
                }
            }
            if out.len() >= limit {
                next = cursor.map(|c| format!("{n}:{c}"));
                break;
            }
        }
        // A full page on the last shard may be the end: the next page then reads empty.
        Ok(TaskPage { tasks: out, next })
    }

    /// [`tasks`](Self::tasks) after skipping the first `offset` listed (whose records are not
    /// read): a page of a listing by position (the dashboard's), costing the ids of the skipped
    /// ones and the records of the page only. [`tasks_page`](Self::tasks_page) pages
    /// `succeeded` and `cancelled` listings with a cursor instead.
    pub async fn tasks_at_offset(
        &self,
        queue: &Queue,
        state: TaskState,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<TaskStatus>> {
        let mut conn = self.conn.clone();
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        let mut skip = offset;
        for shard in queue.all_shards() {
            let mut cursor: Option<String> = None;
            loop {
                if out.len() >= limit {
                    return Ok(out);
                }
                let want = skip + limit - out.len();
                let (ids, more) =
                    records::list_ids(&mut conn, &shard.keys, state, cursor.as_deref(), want, now).await?;
                let skipped = ids.len().min(skip);
                skip -= skipped;
                let ids: Vec<String> = ids.into_iter().skip(skipped).collect();
                listed(&mut conn, queue, &shard, state, ids, now, &mut out).await?;
                cursor = more;
                if cursor.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A cursor past every event `queue` has now (to follow only new ones).
    pub async fn events_now(&self, queue: &Queue) -> Result<EventCursor> {
        let shards: Vec<_> = queue.all_shards().collect();
        let keys: Vec<&ShardKeys> = shards.iter().map(|s| &s.keys).collect();
        let after = records::last_event_ids(&mut self.conn.clone(), &keys).await?;
        Ok(EventCursor { after })
    }

    fn unknown(&self, queue: &Queue, id: &TaskId) -> Error {
        Error::UnknownTask {
            id: id.to_string(),
            queue: queue.name().to_string(),
        }
    }

    /// A connection for one blocking call of up to `block`.
    async fn blocking_connection(&self, block: Duration) -> Result<RedisConnection> {
        self.redis.open(Some(block + Duration::from_secs(10))).await
    }
}

/// Where a reader of a queue's events is: the last event id seen per shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCursor {
    after: Vec<Option<crate::broker::StreamId>>,
}

impl EventCursor {
    /// A cursor before every event still kept.
    pub fn start() -> Self {
        Self::default()
    }

    fn fit(&mut self, shards: usize) {
        self.after.resize(shards, None);
    }
}

fn sort_events(events: &mut [Event]) {
    events.sort_by_key(|e| {
        (
            crate::broker::StreamId::parse(&e.stream_id),
            e.priority.clone(),
            e.shard,
        )
    });
}

/// Gives a unique task an id in the shard its key maps to, so the lock and the task share a
/// slot and a lookup by id finds it (`shard_for(id)`). Generated ids are drawn again until
/// they land there (about `shards` draws); a caller's own id must already.
fn place_unique(task: &mut Task, key: String, shards: u16) -> Result<()> {
    let want = shard_for(&key, shards);
    if shard_for(task.envelope.id.as_str(), shards) == want {
        return Ok(());
    }
    if task.explicit_id {
        return Err(Error::config(
            "task",
            format!(
                "id {:?} and unique key {key:?} map to different shards ({} and {want} of {shards}); drop the id or pick one in the key's shard",
                task.envelope.id,
                shard_for(task.envelope.id.as_str(), shards)
            ),
        ));
    }
    while shard_for(task.envelope.id.as_str(), shards) != want {
        task.envelope.id = TaskId::generate();
    }
    Ok(())
}

/// `url` with any password replaced by `***`, for messages and logs: the password of
/// `scheme://user:PASSWORD@host`, a lone `scheme://SECRET@host` (some clients read it as the
/// password), and `pass=` / `password=` query parameters (`redis+unix` URLs).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // A password may hold '/', '?' or '#' (such a URL does not parse, and is then shown in the
    // error): when there is an '@', the authority runs to the first of those after the last '@'.
    let host_from = rest.rfind('@').map_or(0, |at| at + 1);
    let authority_end = rest[host_from..]
        .find(['/', '?', '#'])
        .map_or(rest.len(), |i| host_from + i);
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some(("", host)) => host.to_owned(),
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) if matches!(k, "pass" | "password") && !v.is_empty() => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Reads the records of `ids`, listed for `state` in `shard`, into `out`: a record gone since
/// the listing read its id is left out; an id listed by the structure holding it but without
/// a record (tracking off) reads as that state.
async fn listed(
    conn: &mut RedisConnection,
    queue: &Queue,
    shard: &crate::keys::Shard<'_>,
    state: TaskState,
    ids: Vec<String>,
    now: u64,
    out: &mut Vec<TaskStatus>,
) -> Result<()> {
    let found = records::records_of(conn, &shard.keys, &ids).await?;
    for (id, fields) in ids.into_iter().zip(found) {
        let id = TaskId::from_string(id);
        let mut st = TaskStatus::from_record(id, queue.name().clone(), shard.priority, fields, now);
        if st.state == TaskState::Unknown && !state.is_final() {
            st.state = state;
            st.priority = Some(shard.priority.to_owned());
        }
        if st.state == state || !state.is_final() {
            out.push(st);
        }
    }
    Ok(())
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:s3cret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("rediss://user:p@ss:w@host"), "rediss://user:***@host");
        assert_eq!(redact_url("rediss://secret@h"), "rediss://***@h");
        assert_eq!(redact_url("redis://@h"), "redis://h");
        assert_eq!(
            redact_url("redis+unix:///run/r.sock?db=1&pass=s3cret"),
            "redis+unix:///run/r.sock?db=1&pass=***"
        );
        assert_eq!(redact_url("redis://h?password=x&db=2"), "redis://h?password=***&db=2");
        assert_eq!(redact_url("notaurl"), "notaurl");
        assert_eq!(redact_url("redis://:abc#def@host:6379"), "redis://:***@host:6379");
        assert_eq!(redact_url("redis://u:pa?ss/w@h:1/0"), "redis://u:***@h:1/0");
    }
}
