//! Task lifecycle, the pure part: the states a task goes through, the status read back from
//! its record, results a handler returns, progress and the cancel signal a handler sees, and
//! lifecycle events.
//!
//! The record is one key per task under its shard's tag (`rivulet:{q:p:n}:task:<id>`, see
//! `keys.rs`): a HASH while the task lives, a MessagePack STRING once final (one `SET ... PX`),
//! written by the same scripts that move the task (`broker/scripts/enqueue.lua`, `start.lua`,
//! `settle.lua`, `cancel.lua`, `progress.lua`) and read through `rivulet_v1_record` (the rule is
//! `broker/scripts/record.lua`); its fields are the wire contract in `docs/wire-format.md`. Redis I/O lives in `broker/lifecycle.rs`; this file only parses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{Codec, TaskId};
use crate::error::Result;
use crate::keys::QueueName;

/// Largest result a handler may return by default: 1 MiB.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 1024 * 1024;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// No record: never enqueued in this queue, enqueued with tracking off, or its record
    /// expired after the retention.
    Unknown,
    /// Waiting for its due time (`due_at`).
    Scheduled,
    /// Ready, waiting for a worker.
    Queued,
    /// A worker runs it (`worker`, `attempt`, `started_at`, `progress`).
    Active,
    /// Failed, waiting for its retry at `due_at`; `error` is the last failure.
    Retrying,
    /// Done (`finished_at`, `run_ms`, `result`). Final.
    Succeeded,
    /// In the dead-letter stream (`reason`, `error`, `dlq_id`). Final.
    Dead,
    /// Cancelled (`finished_at`; `started` says whether it had started). Final.
    Cancelled,
}

impl TaskState {
    /// The name used in records, events and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Unknown => "unknown",
            TaskState::Scheduled => "scheduled",
            TaskState::Queued => "queued",
            TaskState::Active => "active",
            TaskState::Retrying => "retrying",
            TaskState::Succeeded => "succeeded",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses a record's `state` field (`None` for an unknown name).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "unknown" => TaskState::Unknown,
            "scheduled" => TaskState::Scheduled,
            "queued" => TaskState::Queued,
            "active" => TaskState::Active,
            "retrying" => TaskState::Retrying,
            "succeeded" => TaskState::Succeeded,
            "dead" => TaskState::Dead,
            "cancelled" => TaskState::Cancelled,
            _ => return None,
        })
    }

    /// Whether the task will not change any more (succeeded, dead or cancelled).
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Dead | TaskState::Cancelled)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A running task's last reported progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u8,
    /// What the handler said it is doing.
    pub message: String,
}

/// What Redis knows about one task, read from its record in one round trip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskStatus {
    /// The task.
    pub id: TaskId,
    /// Its queue.
    pub queue: QueueName,
    /// The priority whose shard holds the record (`None` when unknown).
    pub priority: Option<String>,
    /// Its state. A `scheduled` or `retrying` task whose due time has passed reads as
    /// `queued`: it is ready and waits for a worker (the promoter moves it without rewriting
    /// the record).
    pub state: TaskState,
    /// Handler name.
    pub kind: Option<String>,
    /// Failed attempts before the current or last run.
    pub attempt: u32,
    /// How many times a worker started it (a reclaim after a crash starts it again).
    pub runs: u32,
    /// First enqueue, ms since the epoch.
    pub enqueued_at: Option<u64>,
    /// When it is due (scheduled, retrying), ms since the epoch.
    pub due_at: Option<u64>,
    /// The worker running it (or that ran it last).
    pub worker: Option<String>,
    /// When its current or last run started, ms since the epoch.
    pub started_at: Option<u64>,
    /// When it reached its final state, ms since the epoch.
    pub finished_at: Option<u64>,
    /// How long its last run took, ms.
    pub run_ms: Option<u64>,
    /// Last reported progress (active tasks; kept once finished).
    pub progress: Option<Progress>,
    /// The handler's result (succeeded tasks that returned one), encoded with `result_codec`.
    #[serde(serialize_with = "ser_result")]
    pub result: Option<Bytes>,
    /// How `result` is encoded.
    #[serde(serialize_with = "ser_codec")]
    pub result_codec: Option<Codec>,
    /// The last failure (retrying, dead).
    pub error: Option<String>,
    /// Why it is dead (`exhausted`, `fatal`, ...).
    pub reason: Option<String>,
    /// Its dead letter's stream id (dead tasks).
    pub dlq_id: Option<String>,
    /// Cancelled tasks: whether it had started before the cancel.
    pub started: Option<bool>,
    /// A cancel was asked for while it runs; its worker is stopping it.
    pub cancel_requested: bool,
}

fn ser_result<S: serde::Serializer>(r: &Option<Bytes>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match r {
        Some(b) => s.serialize_some(&String::from_utf8_lossy(b)),
        None => s.serialize_none(),
    }
}

fn ser_codec<S: serde::Serializer>(c: &Option<Codec>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_some(c.as_str()),
        None => s.serialize_none(),
    }
}

impl TaskStatus {
    /// The status of a task without a record.
    pub fn unknown(id: TaskId, queue: QueueName) -> Self {
        TaskStatus {
            id,
            queue,
            priority: None,
            state: TaskState::Unknown,
            kind: None,
            attempt: 0,
            runs: 0,
            enqueued_at: None,
            due_at: None,
            worker: None,
            started_at: None,
            finished_at: None,
            run_ms: None,
            progress: None,
            result: None,
            result_codec: None,
            error: None,
            reason: None,
            dlq_id: None,
            started: None,
            cancel_requested: false,
        }
    }

    /// Parses a record's fields (`rivulet_v1_record`'s flat list) as read at `now_ms`. An empty record is `unknown`.
    pub fn from_record(
        id: TaskId,
        queue: QueueName,
        priority: &str,
        fields: Vec<(String, Vec<u8>)>,
        now_ms: u64,
    ) -> Self {
        let mut st = TaskStatus::unknown(id, queue);
        if fields.is_empty() {
            return st;
        }
        st.priority = Some(priority.to_owned());
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let num = |v: &[u8]| std::str::from_utf8(v).ok().and_then(|s| s.parse::<u64>().ok());
        let mut percent = None;
        let mut message = String::new();
        let mut state = None;
        for (name, value) in fields {
            match name.as_str() {
                "state" => state = TaskState::parse(&text(&value)),
                "kind" => st.kind = Some(text(&value)),
                "attempt" => st.attempt = num(&value).unwrap_or(0).min(u64::from(u32::MAX)) as u32,
                "runs" => st.runs = num(&value).unwrap_or(0).min(u64::from(u32::MAX)) as u32,
                "enqueued_at" => st.enqueued_at = num(&value),
                "due_at" => st.due_at = num(&value),
                "worker" => st.worker = Some(text(&value)),
                "started_at" => st.started_at = num(&value),
                "finished_at" => st.finished_at = num(&value),
                "run_ms" => st.run_ms = num(&value),
                "progress" => percent = num(&value).map(|p| p.min(100) as u8),
                "progress_message" => message = text(&value),
                "result" => st.result = Some(Bytes::from(value)),
                "result_codec" => st.result_codec = Codec::parse(&value),
                "error" => st.error = Some(text(&value)),
                "reason" => st.reason = Some(text(&value)),
                "dlq_id" => st.dlq_id = Some(text(&value)),
                "started" => st.started = Some(value == b"1"),
                "cancel_requested" => st.cancel_requested = value == b"1",
                _ => {}
            }
        }
        st.progress = percent.map(|percent| Progress { percent, message });
        st.state = match state {
            // Promoted without a record write (promote.lua does not know the ids it moves).
            Some(TaskState::Scheduled | TaskState::Retrying) if st.due_at.is_some_and(|d| d <= now_ms) => {
                TaskState::Queued
            }
            Some(s) => s,
            // A record without a state (written by hand, or only a waiter's count): as good as
            // none.
            None => TaskState::Unknown,
        };
        st
    }

    /// The result decoded as `T` with its codec (`None` when there is none).
    pub fn result_as<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match &self.result {
            None => Ok(None),
            Some(b) => Ok(Some(self.result_codec.unwrap_or_default().decode(b)?)),
        }
    }
}

/// What [`Client::cancel`](crate::Client::cancel) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// It had not started (scheduled, queued or retrying) and never will.
    Cancelled,
    /// It is running: its worker learns within about a second, stops it, and records it as
    /// `cancelled`.
    Cancelling,
    /// It had already finished in this state; nothing changed.
    AlreadyFinished(TaskState),
}

/// Whether a task enqueued with a unique key is new or a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// The task was enqueued.
    New(TaskId),
    /// Another live task holds the unique key: nothing was enqueued; this is its id.
    Duplicate(TaskId),
}

impl Enqueued {
    /// The id of the task that holds the work: the new one, or the existing duplicate.
    pub fn id(&self) -> &TaskId {
        match self {
            Enqueued::New(id) | Enqueued::Duplicate(id) => id,
        }
    }

    /// Whether an existing task was returned instead.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Enqueued::Duplicate(_))
    }
}

/// One lifecycle event read from a queue's event streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The event's stream id in its shard (`ms-seq`).
    pub stream_id: String,
    /// The priority of its shard.
    pub priority: String,
    /// The shard number.
    pub shard: u16,
    /// The task.
    pub task_id: String,
    /// `enqueued`, `scheduled`, `started`, `progress`, `retried`, `requeued`, `succeeded`,
    /// `dead`, `cancelled` or `replayed`.
    pub event: String,
    /// When, ms since the epoch.
    pub at: u64,
    /// The event's other fields (attempt, worker, error, progress...).
    pub fields: Vec<(String, String)>,
}

impl Event {
    /// Parses a stream entry of an events stream: one event, or one per task of a batched
    /// entry (docs/wire-format.md "Events": `ids` holds a MessagePack array of task ids, the
    /// fields named in `per_id` one MessagePack array each of their values, in the same order;
    /// the other fields are every task's). A batched entry whose arrays do not parse gives one
    /// event with the fields as they are (task id empty), never a silent drop.
    pub(crate) fn from_entry(priority: &str, shard: u16, e: crate::broker::StreamEntry) -> Vec<Self> {
        let mut ev = Event {
            stream_id: e.id.to_string(),
            priority: priority.to_owned(),
            shard,
            task_id: String::new(),
            event: String::new(),
            at: 0,
            fields: Vec::new(),
        };
        let mut ids: Option<Vec<u8>> = None;
        let mut per_id: Vec<String> = Vec::new();
        let mut raw: Vec<(String, Vec<u8>)> = Vec::new();
        for (k, v) in e.fields {
            let k = String::from_utf8_lossy(&k).into_owned();
            match k.as_str() {
                "id" => ev.task_id = String::from_utf8_lossy(&v).into_owned(),
                "event" => ev.event = String::from_utf8_lossy(&v).into_owned(),
                "at" => ev.at = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
                "ids" => ids = Some(Vec::from(v)),
                "per_id" => per_id = String::from_utf8_lossy(&v).split(' ').map(str::to_owned).collect(),
                _ => raw.push((k, Vec::from(v))),
            }
        }
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let Some(packed) = ids else {
            ev.fields = raw.into_iter().map(|(k, v)| (k, text(&v))).collect();
            return vec![ev];
        };
        let batch = crate::broker::lifecycle::packed_ids(&packed).and_then(|ids| {
            // Every per-task field: its values, one per id.
            let columns: Option<Vec<Option<Vec<String>>>> = raw
                .iter()
                .map(|(k, v)| {
                    if per_id.iter().any(|p| p == k) {
                        crate::broker::lifecycle::packed_ids(v)
                            .filter(|vals| vals.len() == ids.len())
                            .map(Some)
                    } else {
                        Some(None)
                    }
                })
                .collect();
            Some((ids, columns?))
        });
        let Some((ids, columns)) = batch else {
            ev.fields = raw.into_iter().map(|(k, v)| (k, text(&v))).collect();
            ev.fields.push(("ids".to_owned(), text(&packed)));
            return vec![ev];
        };
        ids.into_iter()
            .enumerate()
            .map(|(i, id)| Event {
                task_id: id,
                fields: raw
                    .iter()
                    .zip(&columns)
                    .map(|((k, v), col)| {
                        let value = match col {
                            Some(vals) => vals[i].clone(),
                            None => text(v),
                        };
                        (k.clone(), value)
                    })
                    .collect(),
                ..ev.clone()
            })
            .collect()
    }
}

/// One page of a task listing ([`Client::tasks_page`](crate::Client::tasks_page)).
#[derive(Debug, Clone, Serialize)]
pub struct TaskPage {
    /// The tasks, in the listing's order.
    pub tasks: Vec<TaskStatus>,
    /// The cursor of the next page (`after`), when this one is full and the state is paged
    /// (`succeeded`, `cancelled`). The next page may be empty.
    pub next: Option<String>,
}

/// What a handler returns on success, turned into the task's result.
///
/// Implemented for `()` (no result: every `Ok(())` handler), [`Output`] (a value encoded with
/// the task's codec) and [`Bytes`] (stored as they are, codec `bytes`).
pub trait IntoTaskResult {
    /// The result's bytes and codec, or `None` for no result. `codec` is the task's.
    fn into_task_result(self, codec: Codec) -> Result<Option<(Bytes, Codec)>>;
}

impl IntoTaskResult for () {
    fn into_task_result(self, _codec: Codec) -> Result<Option<(Bytes, Codec)>> {
        Ok(None)
    }
}

impl IntoTaskResult for Bytes {
    fn into_task_result(self, _codec: Codec) -> Result<Option<(Bytes, Codec)>> {
        Ok(Some((self, Codec::Bytes)))
    }
}

impl<T: IntoTaskResult> IntoTaskResult for Option<T> {
    fn into_task_result(self, codec: Codec) -> Result<Option<(Bytes, Codec)>> {
        match self {
            Some(v) => v.into_task_result(codec),
            None => Ok(None),
        }
    }
}

/// A handler's result value, serialised with the task's codec (JSON for `bytes` tasks):
/// `Ok(Output(summary))`.
#[derive(Debug, Clone, PartialEq)]
pub struct Output<T>(pub T);

impl<T: Serialize> IntoTaskResult for Output<T> {
    fn into_task_result(self, codec: Codec) -> Result<Option<(Bytes, Codec)>> {
        // Typed values of a `bytes` task are JSON (as `Codec::encode` writes them).
        let codec = if codec == Codec::Bytes { Codec::Json } else { codec };
        Ok(Some((codec.encode(&self.0)?, codec)))
    }
}

/// A running handler's line back to its worker: the cancel signal and progress reports.
///
/// Reached through [`TaskContext`](crate::TaskContext)'s `cancelled`, `is_cancelled` and
/// `progress`. A context built outside a worker (tests) gets a detached one: never cancelled,
/// progress kept only in memory.
#[derive(Debug, Clone, Default)]
pub struct TaskControl {
    // One allocation a task: the cancel flag, its waiters and the progress share it.
    inner: Arc<ControlInner>,
    /// When the run times out, if it has a timeout (for handlers in other processes, which
    /// cannot see the worker's timer).
    deadline: Option<std::time::Instant>,
}

#[derive(Debug, Default)]
struct ControlInner {
    cancelled: AtomicBool,
    /// Wakes `cancelled()`'s waiters; its waiter list lives in their futures (no allocation).
    woken: tokio::sync::Notify,
    progress: Mutex<Option<Progress>>,
}

impl TaskControl {
    /// A detached control (for contexts built by hand, e.g. in tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// The same control with a deadline (the worker sets it from the task's timeout).
    pub fn with_deadline(mut self, deadline: Option<std::time::Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// When the worker times the run out, if it has a timeout.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.deadline
    }

    /// Asks the handler to stop (what a cancel does).
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
        self.inner.woken.notify_waiters();
    }

    /// Whether a cancel was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// Resolves once a cancel is asked for.
    pub async fn cancelled(&self) {
        let woken = self.inner.woken.notified();
        tokio::pin!(woken);
        // Registered before the flag is read: a cancel between the two still wakes it
        // (`notify_waiters` wakes only the waiters registered when it runs).
        woken.as_mut().enable();
        if self.is_cancelled() {
            return;
        }
        woken.await;
    }

    /// Records a progress report; the worker writes the latest one at most every
    /// [`PROGRESS_INTERVAL`](crate::worker::PROGRESS_INTERVAL), however often this is called.
    pub fn report(&self, percent: u8, message: impl Into<String>) {
        let p = Progress {
            percent: percent.min(100),
            message: message.into(),
        };
        *self.inner.progress.lock().expect("never poisoned: a plain store") = Some(p);
    }

    /// The latest report not yet written, if any (without taking it).
    pub fn latest(&self) -> Option<Progress> {
        self.inner
            .progress
            .lock()
            .expect("never poisoned: a plain store")
            .clone()
    }

    /// Takes the report written since the last call, if any.
    pub(crate) fn take_report(&self) -> Option<Progress> {
        self.inner
            .progress
            .lock()
            .expect("never poisoned: a plain store")
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_reaches_every_clone_and_waiters_before_and_after_it() {
        let control = TaskControl::new();
        let (a, b) = (control.clone(), control.clone());
        let waiting = tokio::spawn(async move { a.cancelled().await });
        // The waiter is parked before the cancel (it cannot finish until then).
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished() && !b.is_cancelled());
        b.report(150, "half");
        control.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the parked waiter wakes")
            .unwrap();
        assert!(b.is_cancelled());
        // After it, at once; and the progress is the clones' too.
        b.cancelled().await;
        assert_eq!(control.latest().map(|p| p.percent), Some(100));
        assert!(!TaskControl::new().is_cancelled(), "a new control is its own");
    }

    fn rec(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn status(pairs: &[(&str, &str)], now: u64) -> TaskStatus {
        TaskStatus::from_record(
            TaskId::from_string("t"),
            QueueName::new("q").unwrap(),
            "normal",
            rec(pairs),
            now,
        )
    }

    #[test]
    fn an_empty_record_is_unknown() {
        assert_eq!(status(&[], 0).state, TaskState::Unknown);
        assert_eq!(status(&[("waiters", "1")], 0).state, TaskState::Unknown);
    }

    #[test]
    fn a_due_scheduled_or_retrying_task_reads_as_queued() {
        let s = status(&[("state", "scheduled"), ("due_at", "100")], 99);
        assert_eq!(s.state, TaskState::Scheduled);
        let s = status(&[("state", "scheduled"), ("due_at", "100")], 100);
        assert_eq!(s.state, TaskState::Queued);
        let s = status(
            &[
                ("state", "retrying"),
                ("due_at", "5"),
                ("error", "boom"),
                ("attempt", "1"),
            ],
            10,
        );
        assert_eq!(
            (s.state, s.attempt, s.error.as_deref()),
            (TaskState::Queued, 1, Some("boom"))
        );
    }

    #[test]
    fn a_finished_record_carries_its_result_and_progress() {
        let s = status(
            &[
                ("state", "succeeded"),
                ("result", "{\"n\":3}"),
                ("result_codec", "json"),
                ("progress", "100"),
                ("progress_message", "done"),
                ("run_ms", "12"),
            ],
            0,
        );
        assert!(s.state.is_final());
        assert_eq!(s.result_as::<serde_json::Value>().unwrap().unwrap()["n"], 3);
        assert_eq!(
            s.progress,
            Some(Progress {
                percent: 100,
                message: "done".into()
            })
        );
        assert_eq!(s.run_ms, Some(12));
    }

    #[test]
    fn results_use_the_task_codec() {
        assert_eq!(().into_task_result(Codec::Json).unwrap(), None);
        let (b, c) = Output(vec![1, 2]).into_task_result(Codec::MsgPack).unwrap().unwrap();
        assert_eq!(c, Codec::MsgPack);
        assert_eq!(Codec::MsgPack.decode::<Vec<u8>>(&b).unwrap(), [1, 2]);
        let (b, c) = Output("x").into_task_result(Codec::Bytes).unwrap().unwrap();
        assert_eq!((&b[..], c), (&b"\"x\""[..], Codec::Json));
        let (b, c) = Bytes::from_static(b"raw")
            .into_task_result(Codec::Json)
            .unwrap()
            .unwrap();
        assert_eq!((&b[..], c), (&b"raw"[..], Codec::Bytes));
    }

    #[test]
    fn progress_reports_coalesce_to_the_latest() {
        let c = TaskControl::new();
        for i in 0..1000u32 {
            c.report((i / 10) as u8, format!("step {i}"));
        }
        let p = c.take_report().unwrap();
        assert_eq!((p.percent, p.message.as_str()), (99, "step 999"));
        assert_eq!(c.take_report(), None);
        c.report(250, "over");
        assert_eq!(c.take_report().unwrap().percent, 100);
    }
}
