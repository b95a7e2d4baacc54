//! Worker metrics: what a worker counts for an exporter (a Prometheus `/metrics` endpoint), in
//! atomics only. The engine knows nothing of HTTP or Prometheus: it fills these tables, and a
//! binary reads them as plain data ([`MetricsSnapshot`]) and exports them.
//!
//! Opt in with [`Worker::with_metrics`](super::Worker::with_metrics); without it every hook is
//! one branch on `None`. With it, a task costs a handful of relaxed atomic adds into tables
//! sized once when the worker starts (one row per shard and handler kind): no lock, no
//! allocation and no label lookup per task. Labels are bounded by construction: queue and
//! priority come from the shards the worker reads, kind from the router (every other kind, and
//! an entry too malformed to have one, counts under [`OTHER_KIND`]), reason from
//! [`DEAD_REASONS`]. Task ids never become labels.
//!
//! Snapshots of several worker processes add up with [`MetricsSnapshot::merge`] (a supervisor
//! serving one `/metrics` for its box); [`MetricsSnapshot::retired`] keeps what a process that
//! exited counted, without its gauges.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::broker::{DeadReason, Settle};

/// Upper bounds (seconds) of the handler run time histogram's buckets (`+Inf` comes after).
pub const RUN_TIME_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];
/// Upper bounds (seconds) of the enqueue-to-start wait histogram's buckets (`+Inf` after).
pub const WAIT_BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0,
];
/// The kind label of tasks whose kind the worker has no handler for (and of entries too
/// malformed to name one): the label set stays bounded whatever producers send.
pub const OTHER_KIND: &str = "_other";
/// The dead-letter reasons a worker counts, in the order of [`TaskCounts::dead`].
pub const DEAD_REASONS: [&str; 5] = ["exhausted", "fatal", "poison", "malformed", "unknown_kind"];

const STARTED: usize = 0;
const SUCCEEDED: usize = 1;
const FAILED: usize = 2;
const RETRIED: usize = 3;
const CANCELLED: usize = 4;
const DEAD: usize = 5;
const FIELDS: usize = DEAD + DEAD_REASONS.len();

/// How a handler run ended, for [`WorkerMetrics::finished`].
pub(super) enum Ended<'a> {
    Succeeded,
    Cancelled,
    /// Failed (error, panic, timeout); the settle says whether it is retried or dead.
    Failed(&'a Settle),
}

/// What a worker counts; share one with [`Worker::with_metrics`](super::Worker::with_metrics)
/// and read it with [`snapshot`](Self::snapshot) while the worker runs. One per worker: a
/// second worker given the same one records nothing.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Sized when the worker starts (its shards and kinds are known then).
    table: OnceLock<Table>,
    running: AtomicBool,
    redis_errors: AtomicU64,
    /// Loops whose last Redis call failed: the worker is in an outage while this is above 0.
    failing: AtomicU32,
    /// When the current outage began, ms since `origin`.
    outage_began: AtomicU64,
    /// Outages that ended, ms.
    outage_ms: AtomicU64,
    /// Outage times are measured from here (monotonic).
    origin: Instant,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            table: OnceLock::new(),
            running: AtomicBool::new(false),
            redis_errors: AtomicU64::new(0),
            failing: AtomicU32::new(0),
            outage_began: AtomicU64::new(0),
            outage_ms: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

#[derive(Debug)]
struct Table {
    /// Queue and priority of each lane (shard), by lane index.
    lanes: Vec<(String, String)>,
    /// The router's kinds by route index; [`OTHER_KIND`] is index `kinds.len()`.
    kinds: Vec<String>,
    /// `[(lane * (kinds + 1) + kind) * FIELDS + field]`.
    tasks: Box<[AtomicU64]>,
    /// Run time per kind (handlers run for routed kinds only).
    run: Box<[Hist]>,
    /// Enqueue-to-start wait per lane.
    wait: Box<[Hist]>,
    slots: u64,
    /// The worker's runners: their busy count is the number of handlers in flight.
    in_flight: Arc<super::runners::Runners>,
}

#[derive(Debug)]
struct Hist {
    /// Per bucket (not cumulative), `+Inf` last.
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Hist {
    fn new(bounds: usize) -> Self {
        Hist {
            buckets: (0..=bounds).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, bounds: &[f64], us: u64) {
        let seconds = us as f64 / 1e6;
        // `le` is inclusive: the first bound at or above the value.
        let i = bounds.partition_point(|b| *b < seconds);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn read(&self) -> Histogram {
        Histogram {
            counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

fn reason_index(reason: &DeadReason) -> Option<usize> {
    DEAD_REASONS.iter().position(|r| *r == reason.as_str())
}

impl WorkerMetrics {
    /// Empty metrics, to hand to a worker before it runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sizes the tables for a starting worker. False when they already serve another worker
    /// (whose shards and kinds they are sized for): the new one then records nothing.
    pub(super) fn start(
        &self,
        lanes: Vec<(String, String)>,
        kinds: Vec<String>,
        slots: usize,
        in_flight: Arc<super::runners::Runners>,
    ) -> bool {
        let rows = lanes.len() * (kinds.len() + 1);
        let table = Table {
            tasks: (0..rows * FIELDS).map(|_| AtomicU64::new(0)).collect(),
            run: kinds.iter().map(|_| Hist::new(RUN_TIME_BUCKETS.len())).collect(),
            wait: lanes.iter().map(|_| Hist::new(WAIT_BUCKETS.len())).collect(),
            lanes,
            kinds,
            slots: slots as u64,
            in_flight,
        };
        let fresh = self.table.set(table).is_ok();
        if !fresh {
            tracing::warn!("these WorkerMetrics already serve another worker; this one records nothing in them");
        }
        fresh
    }

    /// Whether the worker is running (started and not yet quieted).
    pub(super) fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    fn add(&self, t: &Table, lane: usize, kind: Option<usize>, field: usize, n: u64) {
        let kind = kind.unwrap_or(t.kinds.len());
        let i = (lane * (t.kinds.len() + 1) + kind) * FIELDS + field;
        t.tasks[i].fetch_add(n, Ordering::Relaxed);
    }

    /// A handler starts, `wait_ms` after its task was first enqueued.
    pub(super) fn started(&self, lane: usize, kind: usize, wait_ms: u64) {
        let Some(t) = self.table.get() else { return };
        self.add(t, lane, Some(kind), STARTED, 1);
        t.wait[lane].observe(&WAIT_BUCKETS, wait_ms.saturating_mul(1000));
    }

    /// A handler run ended after `took`.
    pub(super) fn finished(&self, lane: usize, kind: usize, took: Duration, how: Ended<'_>) {
        let Some(t) = self.table.get() else { return };
        t.run[kind].observe(&RUN_TIME_BUCKETS, took.as_micros() as u64);
        match how {
            Ended::Succeeded => self.add(t, lane, Some(kind), SUCCEEDED, 1),
            Ended::Cancelled => self.add(t, lane, Some(kind), CANCELLED, 1),
            Ended::Failed(settle) => {
                self.add(t, lane, Some(kind), FAILED, 1);
                self.settled(t, lane, Some(kind), settle, 1);
            }
        }
    }

    /// An entry that did not run (malformed, unknown kind) was buried or put off; `kind` is
    /// `None` when the worker has no handler for it.
    pub(super) fn not_run(&self, lane: usize, kind: Option<usize>, settle: &Settle) {
        let Some(t) = self.table.get() else { return };
        self.settled(t, lane, kind, settle, 1);
    }

    /// The reclaimer buried `n` poison entries of a lane (their kinds unread).
    pub(super) fn poisoned(&self, lane: usize, n: u64) {
        let Some(t) = self.table.get() else { return };
        self.add(t, lane, None, DEAD + 2, n);
    }

    fn settled(&self, t: &Table, lane: usize, kind: Option<usize>, settle: &Settle, n: u64) {
        match settle {
            Settle::Retry { .. } => self.add(t, lane, kind, RETRIED, n),
            Settle::Bury { reason, .. } => {
                if let Some(r) = reason_index(reason) {
                    self.add(t, lane, kind, DEAD + r, n);
                }
            }
            // A wait for a limit is no outcome (the worker's `limited` counter has it).
            Settle::Ack | Settle::Requeue | Settle::Wait { .. } => {}
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// A Redis call of one of the worker's loops failed.
    pub(super) fn redis_failed(&self) {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A loop's Redis calls began failing (its first failure in a row).
    pub(super) fn outage_began(&self) {
        self.outage_began_at(self.now_ms());
    }

    /// A loop that was failing reached Redis again (or stopped trying).
    pub(super) fn outage_ended(&self) {
        self.outage_ended_at(self.now_ms());
    }

    fn outage_began_at(&self, now_ms: u64) {
        if self.failing.fetch_add(1, Ordering::AcqRel) == 0 {
            self.outage_began.store(now_ms, Ordering::Release);
        }
    }

    fn outage_ended_at(&self, now_ms: u64) {
        if self.failing.fetch_sub(1, Ordering::AcqRel) == 1 {
            let began = self.outage_began.load(Ordering::Acquire);
            self.outage_ms
                .fetch_add(now_ms.saturating_sub(began), Ordering::Relaxed);
        }
    }

    /// Outage time so far, the one under way included: time during which at least one of
    /// the worker's loops could not reach Redis.
    fn outage_seconds_at(&self, now_ms: u64) -> f64 {
        let mut ms = self.outage_ms.load(Ordering::Relaxed);
        if self.failing.load(Ordering::Acquire) > 0 {
            ms += now_ms.saturating_sub(self.outage_began.load(Ordering::Acquire));
        }
        ms as f64 / 1000.0
    }

    /// What the worker counted so far, as plain data. Shards of one queue and priority add
    /// up into one row.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let down = self.failing.load(Ordering::Acquire) > 0;
        let mut s = MetricsSnapshot {
            workers_running: u64::from(self.running.load(Ordering::Relaxed)),
            workers_redis_down: u64::from(down),
            redis_errors: self.redis_errors.load(Ordering::Relaxed),
            outage_seconds: self.outage_seconds_at(self.now_ms()),
            ..MetricsSnapshot::default()
        };
        let Some(t) = self.table.get() else { return s };
        s.slots = t.slots;
        s.in_flight = t.in_flight.busy() as u64;
        let kinds = t.kinds.iter().map(String::as_str).chain([OTHER_KIND]);
        let mut rows = MetricsSnapshot::default();
        for (lane, (queue, priority)) in t.lanes.iter().enumerate() {
            for (k, kind) in kinds.clone().enumerate() {
                let base = (lane * (t.kinds.len() + 1) + k) * FIELDS;
                let get = |f: usize| t.tasks[base + f].load(Ordering::Relaxed);
                rows.tasks.push(TaskCounts {
                    queue: queue.clone(),
                    priority: priority.clone(),
                    kind: kind.to_owned(),
                    started: get(STARTED),
                    succeeded: get(SUCCEEDED),
                    failed: get(FAILED),
                    retried: get(RETRIED),
                    cancelled: get(CANCELLED),
                    dead: std::array::from_fn(|r| get(DEAD + r)),
                });
            }
            rows.wait.push(LaneHistogram {
                queue: queue.clone(),
                priority: priority.clone(),
                histogram: t.wait[lane].read(),
            });
        }
        rows.run_time = t
            .kinds
            .iter()
            .zip(t.run.iter())
            .map(|(kind, h)| KindHistogram {
                kind: kind.clone(),
                histogram: h.read(),
            })
            .collect();
        // Merging into an empty snapshot folds the shards of a queue and priority together.
        s.merge(&rows);
        s
    }
}

/// A histogram as plain data: counts per bucket of its bounds ([`RUN_TIME_BUCKETS`] or
/// [`WAIT_BUCKETS`]), not cumulative, `+Inf` last; and the sum of the observations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Observations per bucket.
    pub counts: Vec<u64>,
    /// Sum of the observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn add(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }
}

/// Task counts of one queue, priority and kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskCounts {
    /// Queue name.
    pub queue: String,
    /// Priority name.
    pub priority: String,
    /// Handler kind, or [`OTHER_KIND`].
    pub kind: String,
    /// Handlers started.
    pub started: u64,
    /// Handler runs that succeeded.
    pub succeeded: u64,
    /// Handler runs that failed (error, panic, timeout).
    pub failed: u64,
    /// Tasks put in the retry set (after a failure, or an unknown kind within its grace).
    pub retried: u64,
    /// Handler runs ended by a cancel.
    pub cancelled: u64,
    /// Tasks sent to the dead-letter stream, per reason of [`DEAD_REASONS`].
    pub dead: [u64; DEAD_REASONS.len()],
}

/// A run time histogram of one kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KindHistogram {
    /// Handler kind.
    pub kind: String,
    /// Run times, seconds.
    pub histogram: Histogram,
}

/// An enqueue-to-start wait histogram of one queue and priority.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LaneHistogram {
    /// Queue name.
    pub queue: String,
    /// Priority name.
    pub priority: String,
    /// Waits, seconds.
    pub histogram: Histogram,
}

/// What one or more workers counted, as plain data (serializable, so a worker process can
/// hand it to its supervisor).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Task counts per queue, priority and kind.
    pub tasks: Vec<TaskCounts>,
    /// Handler run time per kind.
    pub run_time: Vec<KindHistogram>,
    /// Enqueue-to-start wait per queue and priority (from the task's first enqueue, so a
    /// retry's wait includes its backoff and a delayed task's its delay).
    pub wait: Vec<LaneHistogram>,
    /// Handlers running now.
    pub in_flight: u64,
    /// Handler slots (concurrency).
    pub slots: u64,
    /// Workers started and not yet quieted.
    pub workers_running: u64,
    /// Workers that cannot reach Redis now.
    pub workers_redis_down: u64,
    /// Redis calls of the workers' loops that failed.
    pub redis_errors: u64,
    /// Time during which a worker could not reach Redis, seconds.
    pub outage_seconds: f64,
}

fn merge_rows<T: Clone, K: PartialEq>(into: &mut Vec<T>, from: &[T], key: impl Fn(&T) -> K, add: impl Fn(&mut T, &T)) {
    for row in from {
        match into.iter_mut().find(|r| key(r) == key(row)) {
            Some(r) => add(r, row),
            None => into.push(row.clone()),
        }
    }
}

impl MetricsSnapshot {
    /// Adds `other`'s numbers to these: rows with the same labels add up, gauges add up.
    pub fn merge(&mut self, other: &MetricsSnapshot) {
        merge_rows(
            &mut self.tasks,
            &other.tasks,
            |t| (t.queue.clone(), t.priority.clone(), t.kind.clone()),
            |a, b| {
                a.started += b.started;
                a.succeeded += b.succeeded;
                a.failed += b.failed;
                a.retried += b.retried;
                a.cancelled += b.cancelled;
                for (x, y) in a.dead.iter_mut().zip(b.dead) {
                    *x += y;
                }
            },
        );
        merge_rows(
            &mut self.run_time,
            &other.run_time,
            |h| h.kind.clone(),
            |a, b| a.histogram.add(&b.histogram),
        );
        merge_rows(
            &mut self.wait,
            &other.wait,
            |h| (h.queue.clone(), h.priority.clone()),
            |a, b| a.histogram.add(&b.histogram),
        );
        self.in_flight += other.in_flight;
        self.slots += other.slots;
        self.workers_running += other.workers_running;
        self.workers_redis_down += other.workers_redis_down;
        self.redis_errors += other.redis_errors;
        self.outage_seconds += other.outage_seconds;
    }

    /// What a worker that has exited leaves behind: its counters and histograms (they stay in
    /// the totals, so they never go down), without its gauges.
    pub fn retired(mut self) -> MetricsSnapshot {
        self.in_flight = 0;
        self.slots = 0;
        self.workers_running = 0;
        self.workers_redis_down = 0;
        self
    }

    /// Handlers started, over every row.
    pub fn started(&self) -> u64 {
        self.tasks.iter().map(|t| t.started).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> WorkerMetrics {
        let m = WorkerMetrics::new();
        let lanes = vec![
            ("q".to_owned(), "high".to_owned()),
            ("q".to_owned(), "high".to_owned()),
            ("q".to_owned(), "low".to_owned()),
        ];
        m.start(
            lanes,
            vec!["a".into(), "b".into()],
            8,
            crate::worker::runners::Runners::new(),
        );
        m
    }

    #[test]
    fn counts_land_in_their_row_and_shards_fold_together() {
        let m = metrics();
        m.started(0, 0, 3);
        m.started(1, 0, 30_000);
        m.finished(0, 0, Duration::from_millis(2), Ended::Succeeded);
        let retry = Settle::Retry {
            due_ms: 0,
            attempt: 1,
            error: String::new(),
        };
        m.finished(1, 0, Duration::from_secs(400), Ended::Failed(&retry));
        let bury = Settle::Bury {
            reason: DeadReason::UnknownKind,
            error: String::new(),
            attempt: None,
        };
        m.not_run(2, None, &bury);
        m.poisoned(2, 2);
        let s = m.snapshot();
        // 2 priorities x (2 kinds + other); the two high shards are one row.
        assert_eq!(s.tasks.len(), 6, "{s:#?}");
        let row = |p: &str, k: &str| s.tasks.iter().find(|t| t.priority == p && t.kind == k).unwrap();
        let a = row("high", "a");
        assert_eq!((a.started, a.succeeded, a.failed, a.retried), (2, 1, 1, 1));
        let other = row("low", OTHER_KIND);
        assert_eq!(other.dead, [0, 0, 2, 0, 1]);
        assert_eq!(s.started(), 2);
        let wait = &s.wait.iter().find(|w| w.priority == "high").unwrap().histogram;
        assert_eq!(wait.count(), 2);
        // 3 ms is in the 5 ms bucket (index 1); 30 s in the 60 s one.
        assert_eq!((wait.counts[1], wait.counts[12]), (1, 1));
        assert!((wait.sum - 30.003).abs() < 1e-9, "{}", wait.sum);
        let run = &s.run_time.iter().find(|h| h.kind == "a").unwrap().histogram;
        // 2 ms in the 2.5 ms bucket; 400 s beyond the last bound (+Inf).
        assert_eq!((run.counts[1], run.counts[RUN_TIME_BUCKETS.len()]), (1, 1));
        assert_eq!(s.slots, 8);
    }

    #[test]
    fn a_bound_is_inclusive() {
        let h = Hist::new(WAIT_BUCKETS.len());
        h.observe(&WAIT_BUCKETS, 1_000_000);
        assert_eq!(h.read().counts[8], 1, "1 s goes in le=1");
    }

    #[test]
    fn without_a_start_nothing_is_recorded() {
        let m = WorkerMetrics::new();
        m.started(0, 0, 1);
        m.poisoned(5, 1);
        assert_eq!(m.snapshot(), MetricsSnapshot::default());
    }

    #[test]
    fn outage_time_is_the_union_of_the_loops_failing() {
        let m = WorkerMetrics::new();
        m.outage_began_at(1_000);
        m.outage_began_at(1_500);
        m.outage_ended_at(2_000);
        assert!((m.outage_seconds_at(2_500) - 1.5).abs() < 1e-9);
        m.outage_ended_at(3_000);
        assert!((m.outage_seconds_at(9_000) - 2.0).abs() < 1e-9);
        assert_eq!(m.snapshot().workers_redis_down, 0);
    }

    #[test]
    fn snapshots_of_processes_add_up_and_retire_without_gauges() {
        let m = metrics();
        m.started(0, 1, 0);
        let one = m.snapshot();
        let mut sum = one.clone();
        sum.merge(&one);
        assert_eq!(sum.started(), 2);
        assert_eq!(sum.slots, 16);
        assert_eq!(sum.tasks.len(), one.tasks.len());
        let gone = one.retired();
        assert_eq!((gone.slots, gone.started()), (0, 1));
    }
}
