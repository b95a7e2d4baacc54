//! What the API answers and accepts: typed views with OpenAPI schemas, built from the
//! engine's views, and the decoding of payloads and results for people (JSON pretty-printed,
//! MessagePack decoded to JSON, anything else as hex).

use std::collections::BTreeMap;

use rivulet::{Codec, DeadLetter, Event, QueueStats, TaskStatus, WorkerRecord};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::sampler::{self, DecisionPoint, Sample};

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// What went wrong, for a person.
    pub error: String,
}

/// `/healthz` and `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or what is wrong.
    pub status: String,
}

/// Rates from the last two samples of a queue's counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rates {
    /// Tasks succeeded per second.
    pub done_per_s: f64,
    /// Failed runs per second.
    pub failed_per_s: f64,
    /// Tasks enqueued per second.
    pub enqueued_per_s: f64,
}

/// One priority of a queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct PriorityView {
    /// Priority name.
    pub priority: String,
    /// Ready, waiting for a worker (the backlog).
    pub waiting: u64,
    /// Delivered, not yet settled.
    pub in_flight: u64,
    /// Delayed, not yet due.
    pub scheduled: u64,
    /// Failed, waiting for their backoff.
    pub retrying: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Grouped tasks waiting for their group's turn (not in `waiting` yet).
    pub fair_waiting: u64,
    /// Age of the oldest waiting task, ms.
    pub oldest_waiting_age_ms: Option<f64>,
}

/// Counters summed over a queue's shards.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountersView {
    /// Tasks enqueued.
    pub enqueued: u64,
    /// Tasks succeeded.
    pub done: u64,
    /// Failed runs.
    pub failed: u64,
    /// Failed runs scheduled again.
    pub retried: u64,
    /// Tasks moved to the dead letters.
    pub dead: u64,
    /// Dead letters replayed.
    pub replayed: u64,
    /// Tasks taken over from dead workers.
    pub reclaimed: u64,
}

/// A queue's numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// Queue name.
    pub name: String,
    /// Whether workers are told not to fetch from it.
    pub paused: bool,
    /// Shards per priority.
    pub shards: u16,
    /// Sum over priorities.
    pub waiting: u64,
    /// Sum over priorities.
    pub in_flight: u64,
    /// Sum over priorities.
    pub scheduled: u64,
    /// Sum over priorities.
    pub retrying: u64,
    /// Sum over priorities.
    pub dead_letters: u64,
    /// The oldest waiting task of any priority, ms.
    pub oldest_waiting_age_ms: Option<f64>,
    /// Highest priority first.
    pub priorities: Vec<PriorityView>,
    /// Counters.
    pub counters: CountersView,
    /// Rates from the dashboard's last two samples (none before the second).
    pub rates: Option<Rates>,
    /// How old these numbers are, ms (see docs/dashboard.md: the dashboard reads Redis
    /// within a budget of commands per second).
    pub age_ms: u64,
}

impl QueueView {
    pub fn new(stats: &QueueStats, shards: u16, history: &[Sample], age_ms: u64) -> Self {
        let ps: Vec<PriorityView> = stats
            .priorities
            .iter()
            .map(|p| PriorityView {
                priority: p.priority.clone(),
                waiting: p.waiting,
                in_flight: p.pending,
                scheduled: p.scheduled,
                retrying: p.retry,
                dead_letters: p.dead_letters,
                fair_waiting: p.fair_waiting,
                oldest_waiting_age_ms: p.oldest_waiting_age.map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect();
        let c = &stats.counters;
        QueueView {
            name: stats.queue.clone(),
            paused: stats.paused,
            shards,
            waiting: ps.iter().map(|p| p.waiting).sum(),
            in_flight: ps.iter().map(|p| p.in_flight).sum(),
            scheduled: ps.iter().map(|p| p.scheduled).sum(),
            retrying: ps.iter().map(|p| p.retrying).sum(),
            dead_letters: ps.iter().map(|p| p.dead_letters).sum(),
            oldest_waiting_age_ms: ps.iter().filter_map(|p| p.oldest_waiting_age_ms).reduce(f64::max),
            priorities: ps,
            counters: CountersView {
                enqueued: c.enqueued,
                done: c.done,
                failed: c.failed,
                retried: c.retried,
                dead: c.dead,
                replayed: c.replayed,
                reclaimed: c.reclaimed,
            },
            rates: sampler::latest_rates(history).map(|[done_per_s, failed_per_s, enqueued_per_s]| Rates {
                done_per_s,
                failed_per_s,
                enqueued_per_s,
            }),
            age_ms,
        }
    }
}

/// One point of the throughput chart: rates summed over the listed queues.
#[derive(Debug, Serialize, ToSchema)]
pub struct ThroughputPoint {
    /// End of the bucket, ms since the epoch.
    pub at_ms: u64,
    /// Tasks succeeded per second.
    pub done_per_s: f64,
    /// Failed runs per second.
    pub failed_per_s: f64,
    /// Tasks enqueued per second.
    pub enqueued_per_s: f64,
}

/// A page of queues.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    /// Queues on this page, by name.
    pub queues: Vec<QueueView>,
    /// Queues in all.
    pub total: usize,
    /// Where this page starts.
    pub offset: usize,
    /// Page size.
    pub limit: usize,
    /// The last 15 minutes of the page's queues' rates, in 30 s buckets, oldest first.
    pub throughput: Vec<ThroughputPoint>,
}

/// Paging of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Entries to skip (at most 10000).
    #[param(minimum = 0, maximum = 10000)]
    pub offset: Option<u32>,
    /// Entries to return (1 to 100; default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// A payload or result, shown for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct Decoded {
    /// `json`, `msgpack` or `bytes`.
    pub codec: String,
    /// Size in bytes.
    pub size: usize,
    /// JSON pretty-printed (a MessagePack value decoded to JSON first); `None` when it does
    /// not decode.
    pub text: Option<String>,
    /// The bytes in hex (at most the first 4 KiB) when there is no `text`.
    pub hex: Option<String>,
}

const HEX_MAX: usize = 4096;

impl Decoded {
    pub fn new(bytes: &[u8], codec: Codec) -> Self {
        let text = match codec {
            Codec::Json => serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok()),
            Codec::MsgPack => rmp_serde::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok()),
            Codec::Bytes => std::str::from_utf8(bytes)
                .ok()
                .filter(|s| !s.chars().any(|c| c.is_control() && !c.is_whitespace()))
                .map(str::to_owned),
        };
        let hex = text.is_none().then(|| {
            bytes[..bytes.len().min(HEX_MAX)]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        });
        Decoded {
            codec: codec.as_str().to_owned(),
            size: bytes.len(),
            text,
            hex,
        }
    }
}

/// A task's progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressView {
    /// 0 to 100.
    pub percent: u8,
    /// What the handler said.
    pub message: String,
}

/// A lifecycle event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// Stream id in its shard.
    pub stream_id: String,
    /// Priority of its shard.
    pub priority: String,
    /// Shard number.
    pub shard: u16,
    /// The task.
    pub task_id: String,
    /// `enqueued`, `started`, `progress`, `retried`, `succeeded`, `dead`, `cancelled`, ...
    pub event: String,
    /// When, ms since the epoch.
    pub at: u64,
    /// Other fields (attempt, worker, error, ...).
    pub fields: BTreeMap<String, String>,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        EventView {
            stream_id: e.stream_id,
            priority: e.priority,
            shard: e.shard,
            task_id: e.task_id,
            event: e.event,
            at: e.at,
            fields: e.fields.into_iter().collect(),
        }
    }
}

/// A task's status (and, for one task, its payload and events).
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    /// Task id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// Priority whose shard holds it.
    pub priority: Option<String>,
    /// `scheduled`, `queued`, `active`, `retrying`, `succeeded`, `dead`, `cancelled`.
    pub state: String,
    /// Handler name.
    pub kind: Option<String>,
    /// Failed attempts before the current or last run.
    pub attempt: u32,
    /// Runs started.
    pub runs: u32,
    /// ms since the epoch.
    pub enqueued_at: Option<u64>,
    /// ms since the epoch.
    pub due_at: Option<u64>,
    /// Worker running it, or that ran it last.
    pub worker: Option<String>,
    /// ms since the epoch.
    pub started_at: Option<u64>,
    /// ms since the epoch.
    pub finished_at: Option<u64>,
    /// How long the last run took, ms.
    pub run_ms: Option<u64>,
    /// Last reported progress.
    pub progress: Option<ProgressView>,
    /// The result, decoded.
    pub result: Option<Decoded>,
    /// The last failure.
    pub error: Option<String>,
    /// Why it is dead.
    pub reason: Option<String>,
    /// Its dead letter's id (`priority/shard/entry`), for replay.
    pub dead_letter: Option<String>,
    /// Cancelled tasks: whether it had started.
    pub started: Option<bool>,
    /// A cancel is on its way to its worker.
    pub cancel_requested: bool,
    /// The payload, decoded (one task only; `None` once the task's entry is gone).
    pub payload: Option<Decoded>,
    /// Its events, oldest first (one task only).
    pub events: Option<Vec<EventView>>,
}

impl TaskView {
    pub fn new(st: TaskStatus, shard: u16) -> Self {
        let dead_letter = match (&st.priority, &st.dlq_id) {
            (Some(p), Some(d)) => Some(format!("{p}/{shard}/{d}")),
            _ => None,
        };
        TaskView {
            id: st.id.to_string(),
            queue: st.queue.to_string(),
            priority: st.priority,
            state: st.state.as_str().to_owned(),
            kind: st.kind,
            attempt: st.attempt,
            runs: st.runs,
            enqueued_at: st.enqueued_at,
            due_at: st.due_at,
            worker: st.worker,
            started_at: st.started_at,
            finished_at: st.finished_at,
            run_ms: st.run_ms,
            progress: st.progress.map(|p| ProgressView {
                percent: p.percent,
                message: p.message,
            }),
            result: st
                .result
                .as_ref()
                .map(|r| Decoded::new(r, st.result_codec.unwrap_or(Codec::Bytes))),
            error: st.error,
            reason: st.reason,
            dead_letter,
            started: st.started,
            cancel_requested: st.cancel_requested,
            payload: None,
            events: None,
        }
    }
}

/// A page of tasks in one state.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    /// The state listed.
    pub state: String,
    /// Tasks, per shard in priority order.
    pub tasks: Vec<TaskView>,
    /// Where this page starts.
    pub offset: usize,
    /// Page size.
    pub limit: usize,
    /// Whether another page follows.
    pub has_more: bool,
}

/// Which tasks to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// The state to list (default `queued`).
    pub state: Option<StateName>,
    /// Entries to skip (at most 1000).
    #[param(minimum = 0, maximum = 1000)]
    pub offset: Option<u32>,
    /// Entries to return (1 to 100; default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// A task state that can be listed.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateName {
    /// Waiting for their due time.
    Scheduled,
    /// Ready, waiting for a worker.
    Queued,
    /// Running.
    Active,
    /// Waiting for a retry.
    Retrying,
    /// Done (from the recent events).
    Succeeded,
    /// In the dead letters.
    Dead,
    /// Cancelled (from the recent events).
    Cancelled,
}

impl StateName {
    pub fn state(self) -> rivulet::TaskState {
        use rivulet::TaskState as S;
        match self {
            StateName::Scheduled => S::Scheduled,
            StateName::Queued => S::Queued,
            StateName::Active => S::Active,
            StateName::Retrying => S::Retrying,
            StateName::Succeeded => S::Succeeded,
            StateName::Dead => S::Dead,
            StateName::Cancelled => S::Cancelled,
        }
    }
}

/// An integer that JSON may write as `3` or `3.0` (both are integers to a JSON schema).
fn whole<'de, D: serde::Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
    let Some(n) = Option::<f64>::deserialize(d)? else {
        return Ok(None);
    };
    if n.fract() != 0.0 || !(0.0..=u64::MAX as f64).contains(&n) {
        return Err(serde::de::Error::custom(format!("{n} is not a whole number >= 0")));
    }
    T::try_from(n as u64)
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{n} is out of range")))
}

/// A task to enqueue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// Handler name.
    #[schema(min_length = 1, max_length = 200)]
    pub kind: String,
    /// The payload, any JSON value (default `null`).
    #[serde(default)]
    pub payload: serde_json::Value,
    /// `json` (default) or `msgpack` (the value encoded as MessagePack).
    pub codec: Option<CodecName>,
    /// Priority (default: the queue's middle one); one the queue does not have is 404.
    pub priority: Option<String>,
    /// Run no sooner than this many ms from now (at most a year).
    #[schema(minimum = 0, maximum = 31_622_400_000_u64)]
    #[serde(default, deserialize_with = "whole")]
    pub delay_ms: Option<u64>,
    /// Attempts before the task goes to the dead letters.
    #[schema(minimum = 1, maximum = 4_294_967_295_u64)]
    #[serde(default, deserialize_with = "whole")]
    pub max_attempts: Option<u32>,
    /// While a task holding this key is not final, another enqueue returns its id.
    #[schema(min_length = 1)]
    pub unique_key: Option<String>,
    /// Fair group (a tenant id, say): within a priority, groups are served in turn
    /// (docs/groups.md).
    #[schema(pattern = "^[A-Za-z0-9._:/-]{1,64}$")]
    pub group: Option<String>,
}

/// How an enqueued payload is encoded.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CodecName {
    /// JSON.
    Json,
    /// MessagePack.
    Msgpack,
}

/// An enqueued task.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnqueueReply {
    /// Its id (the holder's for a duplicate of a unique task).
    pub id: String,
    /// Whether a task holding the unique key was there already.
    pub duplicate: bool,
}

/// A cancel's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelReply {
    /// `cancelled` (it never starts), `cancelling` (its worker stops it) or `finished`.
    pub outcome: String,
    /// The final state of a task that had finished already.
    pub state: Option<String>,
}

/// A count of what an operation touched.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountReply {
    /// How many.
    pub count: u64,
}

/// A dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// `priority/shard/entry`.
    pub id: String,
    /// The task's id.
    pub task_id: String,
    /// Handler name.
    pub kind: String,
    /// `exhausted`, `fatal`, `poison`, `malformed`, `unknown_kind`.
    pub reason: String,
    /// The last error.
    pub error: String,
    /// Failed attempts.
    pub attempt: u64,
    /// Deliveries of its last entry.
    pub deliveries: u64,
    /// When it died, ms since the epoch.
    pub dead_at: u64,
    /// The payload, decoded (in a list, its first bytes only: see `payload_truncated`).
    pub payload: Decoded,
    /// The whole payload's size.
    pub payload_size: u64,
    /// Whether `payload` is only its start.
    pub payload_truncated: bool,
}

impl DeadLetterView {
    pub fn new(d: DeadLetter) -> Self {
        let codec = Codec::parse(d.codec.as_bytes()).unwrap_or(Codec::Bytes);
        // A preview cut mid-value does not decode: show its text as it is.
        let payload = if d.payload_truncated {
            Decoded {
                codec: d.codec.clone(),
                size: d.payload.len(),
                text: Some(d.payload.clone()),
                hex: None,
            }
        } else {
            Decoded::new(d.payload.as_bytes(), codec)
        };
        DeadLetterView {
            id: d.id.to_string(),
            task_id: d.task_id,
            kind: d.kind,
            reason: d.reason.as_str().to_owned(),
            error: d.error,
            attempt: d.attempt,
            deliveries: d.deliveries,
            dead_at: d.dead_at,
            payload,
            payload_size: d.payload_size,
            payload_truncated: d.payload_truncated,
        }
    }
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// Oldest first.
    pub dead_letters: Vec<DeadLetterView>,
    /// Pass as `after` for the next page; `None` at the end.
    pub next: Option<String>,
}

/// Which dead letters to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DlqQuery {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this reason.
    pub reason: Option<String>,
    /// Entry id (`ms-seq`) to list after, from the previous page's `next`.
    #[param(pattern = "^[0-9]{1,19}-[0-9]{1,19}$")]
    pub after: Option<String>,
    /// Entries to return (1 to 100; default 25).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// Which dead letters a replay or purge applies to: some ids, every one of a kind, or all
/// (`{"all": false}` selects nothing). Exactly one of the three shapes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DlqSelection {
    /// Dead letter ids.
    Ids(SelectIds),
    /// Every dead letter of a kind.
    Kind(SelectKind),
    /// Every dead letter of the queue.
    All(SelectAll),
}

/// Dead letters by id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectIds {
    /// `priority/shard/entry` each.
    #[schema(min_items = 1, max_items = 1000)]
    pub ids: Vec<String>,
}

/// Dead letters of a kind.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectKind {
    /// The kind.
    #[schema(min_length = 1)]
    pub kind: String,
}

/// All dead letters.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectAll {
    /// `true` for all.
    pub all: bool,
}

/// A live worker process.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    /// Worker id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Queues it serves.
    pub queues: Vec<String>,
    /// Handler slots.
    pub slots: u64,
    /// Handlers running at its last heartbeat.
    pub in_flight: u64,
    /// Handlers started.
    pub started: u64,
    /// Handlers succeeded.
    pub succeeded: u64,
    /// Handlers failed.
    pub failed: u64,
    /// Last heartbeat, ms since the epoch.
    pub last_beat: u64,
}

impl From<&WorkerRecord> for WorkerView {
    fn from(w: &WorkerRecord) -> Self {
        WorkerView {
            id: w.id.clone(),
            host: w.host.clone(),
            pid: w.pid,
            queues: w.queues.clone(),
            slots: w.concurrency,
            in_flight: w.in_flight,
            started: w.started,
            succeeded: w.succeeded,
            failed: w.failed,
            last_beat: w.last_beat,
        }
    }
}

/// An autoscaler decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionView {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Workers it wanted.
    pub desired: u64,
    /// Workers running then.
    pub current: u64,
    /// Why (`backlog`, `sla`, `idle`, ...).
    pub reason: String,
    /// The numbers behind it, for people.
    pub detail: String,
}

impl From<DecisionPoint> for DecisionView {
    fn from(d: DecisionPoint) -> Self {
        DecisionView {
            at_ms: d.at_ms,
            desired: d.desired,
            current: d.current,
            reason: d.reason,
            detail: d.detail,
        }
    }
}

/// One group with tasks waiting for its turn, in one priority.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    /// Priority.
    pub priority: String,
    /// Group.
    pub group: String,
    /// Its tasks waiting in the fair sets.
    pub waiting: u64,
    /// Its weight (1 unless a worker set one with `--group-weight`).
    pub weight: u64,
    /// How many turns away its newest waiting task is (in the shard where it is furthest).
    pub turns: f64,
    /// Its tasks running against `--max-running-per-group` (0 without a cap).
    pub running: u64,
}

/// One shard's fair state.
#[derive(Debug, Serialize, ToSchema)]
pub struct FairShardView {
    /// Priority.
    pub priority: String,
    /// Shard number.
    pub shard: u16,
    /// Grouped tasks in its fair set.
    pub waiting: u64,
    /// Groups with tasks waiting.
    pub groups: u64,
    /// Its virtual clock: the tag of the last task fed into the stream.
    pub floor: f64,
    /// The tag of the next task to be fed, when any waits.
    pub next_tag: Option<f64>,
    /// The most unread entries its stream holds before grouped tasks wait.
    pub window: u64,
}

/// A queue's fair groups (docs/groups.md).
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupsView {
    /// Queue.
    pub queue: String,
    /// Grouped tasks waiting for their turn, over every shard.
    pub waiting: u64,
    /// The groups with tasks waiting, highest priority first, then by name.
    pub groups: Vec<GroupView>,
    /// Per shard.
    pub shards: Vec<FairShardView>,
}

impl From<rivulet::QueueGroups> for GroupsView {
    fn from(g: rivulet::QueueGroups) -> Self {
        GroupsView {
            queue: g.queue,
            waiting: g.waiting,
            groups: g
                .groups
                .into_iter()
                .map(|r| GroupView {
                    priority: r.priority,
                    group: r.group,
                    waiting: r.waiting,
                    weight: r.weight,
                    turns: r.turns,
                    running: r.running,
                })
                .collect(),
            shards: g
                .shards
                .into_iter()
                .map(|s| FairShardView {
                    priority: s.priority,
                    shard: s.shard,
                    waiting: s.waiting,
                    groups: s.groups,
                    floor: s.floor,
                    next_tag: s.next_tag,
                    window: s.window,
                })
                .collect(),
        }
    }
}

/// The autoscaler's decisions for a queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct AutoscalerView {
    /// Queue.
    pub queue: String,
    /// The latest decision as the autoscaler stored it (JSON), if any.
    #[schema(value_type = Option<Object>)]
    pub latest: Option<serde_json::Value>,
    /// The decisions the dashboard has seen in the last 15 minutes, oldest first.
    pub history: Vec<DecisionView>,
}

/// Which events to stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this task's events.
    pub task: Option<String>,
}

/// A schedule: what it enqueues, when, and its state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    /// Its name.
    pub name: String,
    /// The queue its tasks go to.
    pub queue: String,
    /// The tasks' kind.
    pub kind: String,
    /// The tasks' priority (none: the queue's default).
    pub priority: Option<String>,
    /// The cron expression (none for an interval schedule).
    pub cron: Option<String>,
    /// The interval in ms (none for a cron schedule).
    pub every_ms: Option<u64>,
    /// The IANA time zone the cron expression is read in.
    pub timezone: String,
    /// When it fires, for people: `cron <expr> (<zone>)` or `every <interval>`.
    pub cadence: String,
    /// Whether it is paused.
    pub paused: bool,
    /// The last fire time handled, ms since the epoch.
    pub last_fired_ms: Option<u64>,
    /// The next fire time, ms since the epoch (none while paused).
    pub next_fire_ms: Option<u64>,
    /// The next fire times (up to 5; none while paused), ms since the epoch.
    pub next_fires_ms: Vec<u64>,
    /// The same as RFC 3339 times in the schedule's time zone.
    pub next_fires: Vec<String>,
    /// Why the stored definition cannot be used (such a schedule does not fire).
    pub error: Option<String>,
}

impl From<rivulet::schedule::ScheduleInfo> for ScheduleView {
    fn from(i: rivulet::schedule::ScheduleInfo) -> Self {
        let s = &i.schedule;
        ScheduleView {
            cadence: s.cadence_text(),
            name: s.name.clone(),
            queue: s.queue.clone(),
            kind: s.kind.clone(),
            priority: s.priority.clone(),
            cron: s.cron.clone(),
            every_ms: s.every_ms,
            timezone: s.timezone.clone(),
            paused: i.paused,
            last_fired_ms: i.last_fired_ms,
            next_fire_ms: i.next_fires_ms.first().copied(),
            next_fires_ms: i.next_fires_ms,
            next_fires: i.next_fires,
            error: i.error,
        }
    }
}

/// Every schedule, by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    /// The schedules.
    pub schedules: Vec<ScheduleView>,
}

/// The task a manual run enqueued.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunNowReply {
    /// The schedule's queue.
    pub queue: String,
    /// The new task's id.
    pub id: String,
}
