//! The executor: turns one entry into a running handler and its result into an outcome.
//!
//! Entries that cannot run (malformed fields, a payload that does not decode) are buried at
//! once with the reason; nothing is left in the PEL. A kind this worker does not serve is
//! retried with a delay, without using up an attempt, while the task is younger than
//! `WorkerConfig::unknown_kind_grace` (a newer worker may serve it during a rolling deploy),
//! and buried as `unknown_kind` after that. A handler's panic
//! or timeout is a failure like an error, and the worker carries on.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;

use super::metrics::Ended;
use super::{Shared, WorkerCounters, limiter, tracker};
use crate::backoff::RetryPolicy;
use crate::broker::lifecycle::{Cancelled, Tracked};
use crate::broker::{DeadReason, Settle, StreamEntry, StreamId};
use crate::envelope::{Envelope, TaskId};
use crate::handler::{HandlerError, HandlerFuture, TaskContext, TaskOutput};
use crate::lifecycle::TaskControl;

/// Why one run of a handler failed.
#[derive(Debug)]
pub(crate) enum Failure {
    Handler(HandlerError),
    Panic(String),
    Timeout(Duration),
    /// Cancelled, and the handler did not stop within the grace (it was dropped).
    Cancelled,
}

pub(super) fn dispatch(shared: &Arc<Shared>, lane_idx: usize, entry: StreamEntry, permit: OwnedSemaphorePermit) {
    let StreamEntry { id: entry_id, fields } = entry;
    let run = match prepare(shared, lane_idx, entry_id, fields) {
        Ok(run) => run,
        Err(NotRunnable { settle, track, kind }) => {
            if matches!(settle, Settle::Bury { .. }) {
                WorkerCounters::add(&shared.counters.buried, 1);
            }
            if let Some(m) = &shared.metrics {
                m.not_run(lane_idx, kind, &settle);
            }
            shared.settle_tracked(lane_idx, entry_id, settle, track.map(|t| *t));
            return;
        }
    };
    shared.runners.start(
        shared,
        Job {
            lane_idx,
            entry_id,
            run,
            permit,
        },
    );
}

/// A task handed to a runner (`runners`): its prepared run and its handler slot.
pub(super) struct Job {
    pub(super) lane_idx: usize,
    pub(super) entry_id: StreamId,
    pub(super) run: Run,
    /// Given back by the runner once it is idle again, so there are never more runners busy
    /// or about to be than there are slots.
    pub(super) permit: OwnedSemaphorePermit,
}

/// Runs a task's handler and sends its outcome to the acker (the runner gives the slot back).
pub(super) async fn execute(shared: &Arc<Shared>, lane_idx: usize, entry_id: StreamId, run: Run) {
    let Run {
        start,
        policy,
        timeout,
        task_id,
        attempt,
        kind,
        kind_index,
        enqueued_at,
        track,
        control,
        limit,
    } = run;
    // A limited task asks its limit first, holding its handler slot for that one call.
    let hold = if limit.is_empty() {
        Vec::new()
    } else {
        // Boxed, as every limiter call here: unboxed, these calls' states would make every
        // runner's future (this function's state, inline in it) several times larger, limited
        // task or not.
        match Box::pin(limiter::admit_all(shared, &limit, task_id.as_str(), entry_id)).await {
            limiter::Admit::Run(hold) => hold,
            limiter::Admit::Wait(settle) => {
                shared.settle_tracked(lane_idx, entry_id, settle, track.map(|t| *t));
                return;
            }
        }
    };
    let fut = match start {
        Start::Ready(fut) => fut,
        Start::Deferred(deferred) => match start_handler(&deferred.0, deferred.1, deferred.2, &task_id) {
            Ok(fut) => fut,
            Err(settle) => {
                release(shared, hold, Duration::ZERO).await;
                WorkerCounters::add(&shared.counters.buried, 1);
                if let Some(m) = &shared.metrics {
                    m.not_run(lane_idx, Some(kind_index), &settle);
                }
                shared.settle_tracked(lane_idx, entry_id, settle, track.map(|t| *t));
                return;
            }
        },
    };
    // Counted only once the limit let it start: a task parked by a limit has not started.
    WorkerCounters::add(&shared.counters.started, 1);
    if let Some(m) = &shared.metrics {
        m.started(lane_idx, kind_index, shared.clock.now_ms().saturating_sub(enqueued_at));
    }
    if let Some(t) = &track {
        // Registered first, so a cancel the start record reports finds the handler.
        tracker::running(shared, lane_idx, &task_id, &control);
        tracker::begin(
            shared,
            lane_idx,
            &task_id,
            attempt,
            kind.unwrap_or_default(),
            t.retention_ms,
        );
    }
    let began = std::time::Instant::now();
    let mut run = std::pin::pin!(guarded(fut, timeout));
    let result = match first_poll(shared, run.as_mut()).await {
        Some(r) => r,
        None => tokio::select! {
            biased;
            // Past the drain deadline: drop the handler; the entry stays held and is requeued.
            () = shared.abort.cancelled() => {
                tracker::finished(shared, lane_idx, &task_id);
                release(shared, hold, began.elapsed()).await;
                return;
            }
            r = run_cancellable(run, &control, shared.config.cancel_grace) => r,
        },
    };
    // Read once (the clock is a measurable share of a no-op task's cost).
    let run_time = began.elapsed();
    release(shared, hold, run_time).await;
    if track.is_some() {
        tracker::finished(shared, lane_idx, &task_id);
    }
    WorkerCounters::add(&shared.counters.busy_us, run_time.as_micros() as u64);
    // A result over the cap is the handler's failure, recorded as such (never truncated).
    let result = result.and_then(|out| match out {
        Some((bytes, _)) if bytes.len() > shared.config.max_result_bytes => {
            Err(Failure::Handler(HandlerError::fatal(format!(
                "the result is {} bytes, over the {}-byte cap (max_result_bytes); it was not stored",
                bytes.len(),
                shared.config.max_result_bytes
            ))))
        }
        out => Ok(out),
    });
    let cancelled = control.is_cancelled() && result.is_err();
    let mut track = track.map(|t| Tracked {
        run_ms: run_time.as_millis() as u64,
        ..*t
    });
    let settle = match result {
        Ok(out) => {
            WorkerCounters::add(&shared.counters.succeeded, 1);
            if let Some(m) = &shared.metrics {
                m.finished(lane_idx, kind_index, run_time, Ended::Succeeded);
            }
            if let Some(t) = &mut track {
                t.result = out;
            }
            Settle::Ack
        }
        Err(_) if cancelled => {
            if let Some(m) = &shared.metrics {
                m.finished(lane_idx, kind_index, run_time, Ended::Cancelled);
            }
            tracing::info!(task_id = %task_id, attempt, "task cancelled while running");
            if let Some(t) = &mut track {
                t.cancel = Some(Cancelled::WhileRunning);
            }
            Settle::Ack
        }
        Err(failure) => {
            WorkerCounters::add(&shared.counters.failed, 1);
            let settle = failure_outcome(&failure, attempt, &policy, shared.clock.now_ms(), fastrand::f64());
            // `attempt` counts earlier failures; the log names the run that failed, counted
            // from 1 as handlers and messages count it ("attempt 1" is the first run).
            tracing::warn!(
                task_id = %task_id,
                attempt = attempt + 1,
                failure = %describe(&failure),
                next = settle_name(&settle),
                "task failed"
            );
            if matches!(settle, Settle::Bury { .. }) {
                WorkerCounters::add(&shared.counters.buried, 1);
            }
            if let Some(m) = &shared.metrics {
                m.finished(lane_idx, kind_index, run_time, Ended::Failed(&settle));
            }
            settle
        }
    };
    shared.settle_tracked(lane_idx, entry_id, settle, track);
}

/// Gives a task's limit holds back; nothing to await (and nothing in its future) for a task
/// under no limit.
async fn release(shared: &Shared, hold: Vec<limiter::Hold>, run: Duration) {
    if !hold.is_empty() {
        Box::pin(limiter::release(shared, hold, run)).await;
    }
}

/// Buries an entry the reclaimer found delivered too often without an outcome (poison),
/// through the acker like every outcome: its record, when it keeps one, reads `dead`.
pub(super) fn bury_poison(shared: &Arc<Shared>, lane_idx: usize, entry: StreamEntry, deliveries: u64) {
    let lane = &shared.lanes[lane_idx];
    let track = match Envelope::from_entry(&entry.fields) {
        Ok(env) => tracker::tracked(lane, &env),
        Err(_) => tracker::RawTrack::of(&entry.fields, lane).tracked(lane),
    };
    WorkerCounters::add(&shared.counters.buried, 1);
    if let Some(m) = &shared.metrics {
        m.poisoned(lane_idx, 1);
    }
    let settle = crate::broker::poison_outcome(deliveries, shared.config.max_deliveries);
    shared.settle_tracked(lane_idx, entry.id, settle, track);
}

/// The handler's first poll, before any waiting is set up: a handler done in it (most short
/// tasks are) never joins the waiter lists of the drain's abort token and of its own cancel,
/// each a lock to join and another to leave, the abort's shared by every task of the worker.
/// `None` when it is not done yet, or when the drain's abort came first (the handler is then
/// not polled at all, as before: the caller's biased `select!` takes the abort).
async fn first_poll<F: Future>(shared: &Shared, mut run: Pin<&mut F>) -> Option<F::Output> {
    if shared.abort.is_cancelled() {
        return None;
    }
    // Polled with this task's own context (not a no-op waker, as `now_or_never` would): a
    // handler that yields or registers a wake in that poll keeps it.
    std::future::poll_fn(|cx| {
        Poll::Ready(match run.as_mut().poll(cx) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        })
    })
    .await
}

/// Runs a handler (polled once already); once it is cancelled, gives it `grace` to stop
/// before dropping it.
async fn run_cancellable<F: Future<Output = Result<TaskOutput, Failure>>>(
    mut run: Pin<&mut F>,
    control: &TaskControl,
    grace: Duration,
) -> Result<TaskOutput, Failure> {
    tokio::select! {
        r = run.as_mut() => r,
        () = control.cancelled() => match tokio::time::timeout(grace, run).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Cancelled),
        },
    }
}

/// What to do with an entry that cannot run (bury it, or retry it later), and its record
/// when known.
struct NotRunnable {
    settle: Settle,
    // Boxed: the error path is rare, and keeps `prepare`'s result small.
    track: Option<Box<Tracked>>,
    /// The route index of its kind, when the worker serves it (for the metrics).
    kind: Option<usize>,
}

/// A handler future, or what builds it once the task's limit lets it start.
enum Start {
    Ready(HandlerFuture),
    /// Boxed: only limited tasks take this path, and it keeps `Run` small.
    Deferred(Box<(crate::handler::Route, TaskContext, bytes::Bytes)>),
}

/// Builds a task's handler future; a payload that does not decode is buried as malformed.
fn start_handler(
    route: &crate::handler::Route,
    ctx: TaskContext,
    payload: bytes::Bytes,
    task_id: &TaskId,
) -> Result<HandlerFuture, Settle> {
    route.start(ctx, payload).map_err(|m| {
        tracing::warn!(task_id = %task_id, reason = %m, "payload does not decode; burying");
        Settle::Bury {
            reason: DeadReason::Malformed,
            error: m.0,
            attempt: None,
        }
    })
}

/// A task ready to run: its handler future and how to treat its failure.
pub(super) struct Run {
    start: Start,
    policy: RetryPolicy,
    timeout: Option<Duration>,
    task_id: TaskId,
    attempt: u32,
    /// The kind, for a tracked task's start record (copied only for those).
    kind: Option<String>,
    /// Its route's index (the kind's row in the metrics).
    kind_index: usize,
    /// When the task was first enqueued, ms since the epoch.
    enqueued_at: u64,
    /// The task's record, when it keeps one (boxed: a task is moved several times on its way
    /// into a runner, and most keep none).
    track: Option<Box<Tracked>>,
    control: TaskControl,
    /// The fleet-wide limits it counts against, of those this worker enforces: its group's
    /// cap, then the limit of its name.
    limit: Vec<Arc<str>>,
}

/// Decodes an entry and starts its handler's future, or says what to do with an entry that
/// cannot run here: bury it with the reason (malformed, unknown kind past the grace) or retry
/// it later (unknown kind within the grace).
fn prepare(
    shared: &Shared,
    lane_idx: usize,
    entry_id: StreamId,
    fields: Vec<(bytes::Bytes, bytes::Bytes)>,
) -> Result<Run, NotRunnable> {
    // It never ran, so a dead letter keeps the entry's attempt.
    let bury = |reason: DeadReason, error: String| Settle::Bury {
        reason,
        error,
        attempt: None,
    };
    let lane = &shared.lanes[lane_idx];
    // Decoded in place (only the payload is shared with the envelope), so a malformed entry's
    // fields are still there for its record (when its id can be read) to say why it is dead;
    // only then are they looked through (a compact entry's `task` unpacked a second time).
    let env = Envelope::from_entry(&fields).map_err(|m| {
        tracing::warn!(stream = %lane.keys.stream, entry = %entry_id, reason = %m, "malformed entry; burying");
        NotRunnable {
            settle: bury(DeadReason::Malformed, m.0),
            track: tracker::RawTrack::of(&fields, lane).tracked(lane).map(Box::new),
            kind: None,
        }
    })?;
    drop(fields);
    let track = tracker::tracked(lane, &env);
    let Some(route) = shared.router.get(&env.kind) else {
        let mut kinds: Vec<&str> = shared.router.kinds().collect();
        kinds.sort_unstable();
        let error = format!(
            "no handler for kind {:?} (this worker serves: {})",
            env.kind,
            kinds.join(", ")
        );
        let now = shared.clock.now_ms();
        let settle = match unknown_kind_delay(env.enqueued_at, now, shared.config.unknown_kind_grace, fastrand::f64()) {
            Some(delay) => {
                tracing::info!(task_id = %env.id, kind = %env.kind, retry_in_ms = delay.as_millis() as u64, "unknown kind; retrying within the grace period, in case a newer worker serves it");
                Settle::Retry {
                    due_ms: now + delay.as_millis() as u64,
                    attempt: env.attempt,
                    error,
                }
            }
            None => {
                tracing::warn!(task_id = %env.id, kind = %env.kind, "unknown kind past the grace period; burying");
                bury(DeadReason::UnknownKind, error)
            }
        };
        return Err(NotRunnable {
            settle,
            track: track.map(Box::new),
            kind: None,
        });
    };
    let kind_index = route.index;
    let policy = route
        .options
        .retry
        .or(lane.options.retry)
        .unwrap_or(shared.config.retry);
    let policy = env.retry_policy(policy).map_err(|m| {
        tracing::warn!(task_id = %env.id, reason = %m, "task carries bad retry settings; burying");
        NotRunnable {
            settle: bury(DeadReason::Malformed, m.0),
            track: track.clone().map(Box::new),
            kind: Some(kind_index),
        }
    })?;
    // A grouped task's cap first (when the worker caps groups), then its own limit.
    if env.group.is_some() && !lane.grouped.load(std::sync::atomic::Ordering::Relaxed) {
        lane.grouped.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let limit: Vec<Arc<str>> = env
        .group_limit_name()
        .filter(|_| shared.config.max_running_per_group.is_some())
        .map(Arc::from)
        .into_iter()
        .chain(
            shared
                .limits
                .get_key_value(env.limit_name())
                .map(|(name, _)| Arc::from(name.as_str())),
        )
        .collect();
    let timeout = env
        .timeout_ms
        .map(Duration::from_millis)
        .or(route.options.timeout)
        .or(lane.options.timeout)
        .or(shared.config.timeout);
    let ctx = TaskContext {
        id: env.id,
        kind: env.kind,
        queue: lane.queue.clone(),
        priority: lane.priority.clone(),
        attempt: env.attempt,
        enqueued_at: env.enqueued_at,
        last_error: env.error,
        codec: env.codec,
        // The timer starts with the handler, a moment from now: the deadline is what a
        // handler in another process sees of it.
        control: TaskControl::new().with_deadline(timeout.map(|t| std::time::Instant::now() + t)),
    };
    let enqueued_at = ctx.enqueued_at;
    let (task_id, attempt, control) = (ctx.id.clone(), ctx.attempt, ctx.control.clone());
    let kind = track.as_ref().map(|_| ctx.kind.clone());
    // A limited task's handler is built only once its limit lets it start: building it may
    // run code of the handler's (a closure's body before its async block).
    let start = if !limit.is_empty() {
        Start::Deferred(Box::new((route.clone(), ctx, env.payload)))
    } else {
        Start::Ready(
            start_handler(route, ctx, env.payload, &task_id).map_err(|settle| NotRunnable {
                settle,
                track: track.clone().map(Box::new),
                kind: Some(kind_index),
            })?,
        )
    };
    Ok(Run {
        start,
        policy,
        timeout,
        task_id,
        attempt,
        kind,
        kind_index,
        enqueued_at,
        track: track.map(Box::new),
        control,
        limit,
    })
}

/// Shortest and longest wait before a task of an unknown kind is offered again.
const UNKNOWN_KIND_DELAY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// When to offer a task of a kind this worker does not serve again (pure): `None` once the
/// task is older than `grace` (bury it), else a tenth of the grace within
/// [`UNKNOWN_KIND_DELAY`], jittered down to half by `unit` (a draw in `[0, 1)`), never past
/// the end of the grace. Age counts from the enqueue, so a task keeps one grace however many
/// workers pass it on. The jitter keeps the retries from locking in phase with the workers'
/// blocking reads, which would hand the task to the same (old) worker every time.
pub(crate) fn unknown_kind_delay(enqueued_at_ms: u64, now_ms: u64, grace: Duration, unit: f64) -> Option<Duration> {
    let age = Duration::from_millis(now_ms.saturating_sub(enqueued_at_ms));
    let left = grace.checked_sub(age).filter(|d| !d.is_zero())?;
    let (lo, hi) = UNKNOWN_KIND_DELAY;
    let delay = (grace / 10).clamp(lo, hi).mul_f64(1.0 - unit.clamp(0.0, 1.0) / 2.0);
    Some(delay.min(left))
}

async fn guarded(fut: HandlerFuture, timeout: Option<Duration>) -> Result<TaskOutput, Failure> {
    let caught = AssertUnwindSafe(fut).catch_unwind();
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, caught).await {
            Ok(r) => r,
            Err(_) => return Err(Failure::Timeout(t)),
        },
        None => caught.await,
    };
    match result {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(Failure::Handler(e)),
        Err(panic) => Err(Failure::Panic(panic_message(&*panic))),
    }
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

pub(crate) fn describe(f: &Failure) -> String {
    match f {
        Failure::Handler(e) => e.to_string(),
        Failure::Panic(m) => format!("handler panicked: {m}"),
        Failure::Timeout(t) => format!("handler timed out after {t:?}"),
        Failure::Cancelled => "cancelled; the handler did not stop within the grace".to_owned(),
    }
}

fn settle_name(s: &Settle) -> &str {
    match s {
        Settle::Ack => "done",
        Settle::Retry { .. } => "retry",
        Settle::Bury { reason, .. } => reason.as_str(),
        Settle::Requeue => "requeue",
        Settle::Wait { .. } => "wait",
    }
}

/// What happens after a failed run (pure): `Fatal` buries at once; otherwise retry after the
/// handler's own delay or the policy's backoff while attempts remain, else bury as exhausted.
pub(crate) fn failure_outcome(failure: &Failure, attempt: u32, policy: &RetryPolicy, now_ms: u64, unit: f64) -> Settle {
    let error = describe(failure);
    // `attempt` counts the failures before this run: the dead letter records this one too.
    // Saturating: `attempt` comes from the producer, and u32::MAX must not panic the task.
    let failed = Some(attempt.saturating_add(1));
    if let Failure::Handler(HandlerError::Fatal(_)) = failure {
        return Settle::Bury {
            reason: DeadReason::Fatal,
            error,
            attempt: failed,
        };
    }
    if !policy.may_retry(attempt) {
        return Settle::Bury {
            reason: DeadReason::Exhausted,
            error,
            attempt: failed,
        };
    }
    let delay = match failure {
        Failure::Handler(HandlerError::RetryAfter(d, _)) => *d,
        _ => policy.delay_with(attempt, unit),
    };
    Settle::Retry {
        due_ms: now_ms + crate::envelope::millis(delay),
        attempt: attempt + 1,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            jitter: false,
            ..Default::default()
        }
    }

    #[test]
    fn unknown_kinds_wait_out_the_grace_then_go_to_the_dlq() {
        let min = Duration::from_secs(60);
        let d = |enqueued, now, grace| unknown_kind_delay(enqueued, now, grace, 0.0);
        // A tenth of the grace, within 100 ms..=5 s.
        assert_eq!(d(0, 0, 5 * min), Some(Duration::from_secs(5)));
        assert_eq!(d(0, 0, Duration::from_secs(10)), Some(Duration::from_secs(1)));
        assert_eq!(d(0, 0, Duration::from_millis(200)), Some(Duration::from_millis(100)));
        // Jittered down to half at most.
        assert_eq!(
            unknown_kind_delay(0, 0, 5 * min, 0.5),
            Some(Duration::from_millis(3750))
        );
        assert_eq!(
            unknown_kind_delay(0, 0, 5 * min, 1.0),
            Some(Duration::from_millis(2500))
        );
        // Never past the end of the grace, which counts from the enqueue.
        assert_eq!(d(1_000, 300_500, 5 * min), Some(Duration::from_millis(500)));
        assert_eq!(d(1_000, 301_000, 5 * min), None);
        assert_eq!(d(1_000, 999_000, 5 * min), None);
        // No grace: straight to the dlq; a clock behind the producer's counts as age 0.
        assert_eq!(d(0, 0, Duration::ZERO), None);
        assert_eq!(d(5_000, 0, min), Some(Duration::from_secs(5)));
    }

    #[test]
    fn errors_retry_with_backoff_until_attempts_run_out() {
        let f = Failure::Handler(HandlerError::retry("boom"));
        assert_eq!(
            failure_outcome(&f, 0, &policy(), 1000, 0.5),
            Settle::Retry {
                due_ms: 2000,
                attempt: 1,
                error: "boom".into()
            }
        );
        assert_eq!(
            failure_outcome(&f, 1, &policy(), 1000, 0.5),
            Settle::Retry {
                due_ms: 3000,
                attempt: 2,
                error: "boom".into()
            }
        );
        assert_eq!(
            failure_outcome(&f, 2, &policy(), 1000, 0.5),
            Settle::Bury {
                reason: DeadReason::Exhausted,
                error: "boom".into(),
                attempt: Some(3)
            }
        );
        // The task's own limit wins.
        assert!(matches!(
            failure_outcome(
                &f,
                2,
                &RetryPolicy {
                    max_attempts: 10,
                    ..policy()
                },
                0,
                0.5
            ),
            Settle::Retry { .. }
        ));
    }

    #[test]
    fn fatal_buries_at_once_and_retry_after_sets_the_delay() {
        let fatal = Failure::Handler(HandlerError::fatal("bad input"));
        assert_eq!(
            failure_outcome(&fatal, 0, &policy(), 0, 0.5),
            Settle::Bury {
                reason: DeadReason::Fatal,
                error: "fatal: bad input".into(),
                attempt: Some(1)
            }
        );
        let after = Failure::Handler(HandlerError::retry_after(Duration::from_millis(250), "busy"));
        assert!(matches!(
            failure_outcome(&after, 0, &policy(), 100, 0.5),
            Settle::Retry {
                due_ms: 350,
                attempt: 1,
                ..
            }
        ));
    }

    #[test]
    fn panics_and_timeouts_are_failures() {
        let p = failure_outcome(&Failure::Panic("oops".into()), 0, &policy(), 0, 0.5);
        assert!(
            matches!(&p, Settle::Retry { error, .. } if error == "handler panicked: oops"),
            "{p:?}"
        );
        let t = failure_outcome(&Failure::Timeout(Duration::from_secs(1)), 2, &policy(), 0, 0.5);
        assert!(
            matches!(&t, Settle::Bury { reason: DeadReason::Exhausted, error, .. } if error.contains("timed out")),
            "{t:?}"
        );
    }

    #[test]
    fn any_std_error_converts_to_retry() {
        fn parse(s: &str) -> Result<u32, HandlerError> {
            Ok(s.parse::<u32>()?)
        }
        assert!(matches!(parse("x"), Err(HandlerError::Retry(m)) if m.contains("invalid digit")));
    }
}
