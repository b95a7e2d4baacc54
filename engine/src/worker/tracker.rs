//! The tracker: keeps the records of the tasks this worker runs.
//!
//! Two loops, both owned by the worker:
//! - the starter batches start records: a start waits [`START_RECORD_DELAY`], then every
//!   start waiting at that moment goes in one `start.lua` call per shard, as the acker batches
//!   outcomes. The handler does not wait for
//!   it (a round trip per batch on the critical path cost most of the drain rate): the script
//!   leaves a record that is already final or at a later attempt alone, so it may land after
//!   the settle; and when it says the task was cancelled before it started (a cancel that
//!   raced the task's delivery or promotion), the handler is cancelled at once and the task
//!   settles `cancelled`. A task whose handler has already finished when its start comes up
//!   gets no start record at all: its settle records the final state and the worker;
//! - the monitor writes the latest progress report of each running task every
//!   [`PROGRESS_INTERVAL`] (coalesced: a handler reporting in a tight loop costs at most that
//!   many writes) and reads the shards' cancel sets every [`CANCEL_POLL`] while this worker
//!   runs tracked tasks there, cancelling the handlers named.
//!
//! Untracked tasks (retention zero) touch neither loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Lane, Outage, Shared};
use crate::broker::RedisConnection;
use crate::broker::lifecycle::{self as records, StartCode, Tracked, TrackedEnvelope};
use crate::envelope::{Envelope, TaskId};
use crate::lifecycle::TaskControl;

/// How often the latest progress of each running task is written, at most.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// How often a worker running tracked tasks looks for cancels: a cancelled task's handler
/// hears of it within this (plus a round trip).
pub const CANCEL_POLL: Duration = Duration::from_millis(500);
/// Most starts per `start.lua` call.
const MAX_BATCH: usize = 500;
/// How long a start waits before it is recorded: a task that finished by then needs no start
/// record (its settle writes the final state and the worker), which spares short tasks, most
/// of a busy queue, three writes each. A cancel that raced the task's delivery stops its
/// handler this much later (plus a round trip).
pub const START_RECORD_DELAY: Duration = Duration::from_millis(20);

/// One tracked task starting, whose record is to say so.
pub(super) struct StartRequest {
    lane: usize,
    task_id: TaskId,
    attempt: u32,
    kind: String,
    retention_ms: u64,
}

/// Running tracked tasks by (lane, task id), with their handler's control and whether their
/// start record is written (progress is written only then: `progress.lua` updates `active`
/// records only, so an earlier report would be dropped; it waits for the next round instead).
pub(super) type RunningTasks = std::sync::Mutex<HashMap<(usize, TaskId), (TaskControl, bool)>>;

/// One running tracked task, as the monitor's rounds see it: (lane, task id) and its control.
type RunningTask = ((usize, TaskId), TaskControl);

/// The record a task keeps, if it keeps one: its own retention, else its queue's.
pub(super) fn tracked(lane: &Lane, env: &Envelope) -> Option<Tracked> {
    let retention_ms = env.retention_ms.unwrap_or(lane.retention_ms);
    if retention_ms == 0 {
        return None;
    }
    // A lock held for a fixed window is not released at completion.
    let until_final = env.unique_ttl_ms.unwrap_or(0) == 0;
    Some(Tracked {
        task_id: env.id.as_str().to_owned(),
        retention_ms,
        unique_lock: env
            .unique_key
            .as_deref()
            .filter(|_| until_final)
            .map(|k| lane.keys.unique(k)),
        result: None,
        run_ms: 0,
        cancel: None,
        envelope: Some(TrackedEnvelope {
            kind: env.kind.clone(),
            attempt: env.attempt,
            enqueued_at: env.enqueued_at,
        }),
    })
}

/// The id and retention fields of an entry that may not parse as an [`Envelope`] (malformed,
/// or poison set apart before it is decoded), for the record of its burial.
pub(super) struct RawTrack {
    id: Option<bytes::Bytes>,
    retention: Option<bytes::Bytes>,
}

impl RawTrack {
    /// What [`RawTrack::tracked`] needs of `fields`, read from `lane`'s entry: shared, not
    /// copied (the fields are `Bytes`), and not even looked up for a task that can keep no
    /// record (the lane keeps none and the entry asks for none).
    pub(super) fn of(fields: &[(bytes::Bytes, bytes::Bytes)], lane: &Lane) -> Self {
        let get = |name: &str| crate::envelope::entry_field(fields, name);
        let retention = get("retention_ms");
        if retention.is_none() && lane.retention_ms == 0 {
            return RawTrack { id: None, retention };
        }
        RawTrack {
            id: get("id"),
            retention,
        }
    }

    /// The record to mark: `None` without a readable id or when the task keeps no record. A
    /// unique lock is not released here (the key cannot be trusted): it frees when its window
    /// ends, or by hand (docs/tasks.md).
    pub(super) fn tracked(self, lane: &Lane) -> Option<Tracked> {
        let id = String::from_utf8(self.id?.to_vec()).ok().filter(|id| !id.is_empty())?;
        let retention_ms = self
            .retention
            .and_then(|r| std::str::from_utf8(&r).ok()?.parse::<u64>().ok())
            .unwrap_or(lane.retention_ms);
        (retention_ms > 0).then(|| Tracked {
            task_id: id,
            retention_ms,
            unique_lock: None,
            result: None,
            run_ms: 0,
            cancel: None,
            envelope: None,
        })
    }
}

/// Asks for the start of a tracked task to be recorded (without waiting for it). A record
/// that says it was cancelled stops it through its control in [`RunningTasks`] (registered
/// with [`running`] first), so the request carries no clone of it (most requests are dropped
/// unsent). The kind is the task's own copy, moved in.
pub(super) fn begin(shared: &Shared, lane: usize, task_id: &TaskId, attempt: u32, kind: String, retention_ms: u64) {
    let req = StartRequest {
        lane,
        task_id: task_id.clone(),
        attempt,
        kind,
        retention_ms,
    };
    // The starter stops only after every handler has finished: a send cannot fail while one
    // runs. Were it to, the record would only miss its `active` step.
    let _ = shared.starts.send(req);
}

/// Registers a running tracked task (for progress and cancel).
pub(super) fn running(shared: &Shared, lane: usize, task_id: &TaskId, control: &TaskControl) {
    shared
        .running
        .lock()
        .expect("never poisoned")
        .insert((lane, task_id.clone()), (control.clone(), false));
}

/// Forgets a task that finished running (a report not yet written is dropped: its final
/// state says more).
pub(super) fn finished(shared: &Shared, lane: usize, task_id: &TaskId) {
    shared
        .running
        .lock()
        .expect("never poisoned")
        .remove(&(lane, task_id.clone()));
}

/// The starter loop (see the module docs). Stops once `stop` is cancelled and every request
/// sent before is answered.
pub(super) async fn run_starter(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<StartRequest>,
    stop: CancellationToken,
) {
    let mut batch: Vec<StartRequest> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            r = rx.recv() => r,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else {
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
            }
            flush(&shared, &mut batch, &stop).await;
            return;
        };
        // Every start that comes in meanwhile joins this batch (none waits longer than the
        // delay plus a flush); stopping cuts the wait short.
        tokio::select! {
            biased;
            () = stop.cancelled() => {}
            () = tokio::time::sleep(START_RECORD_DELAY) => {}
        }
        batch.push(first);
        loop {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let full = batch.len() == MAX_BATCH;
            flush(&shared, &mut batch, &stop).await;
            if !full {
                break;
            }
        }
    }
}

async fn flush(shared: &Shared, batch: &mut Vec<StartRequest>, stop: &CancellationToken) {
    // A handler that already finished needs no start record: its settle writes the final
    // state (and the worker) directly. Short tasks under load mostly end here.
    {
        let running = shared.running.lock().expect("never poisoned");
        batch.retain(|r| running.contains_key(&(r.lane, r.task_id.clone())));
    }
    if batch.is_empty() {
        return;
    }
    batch.sort_by_key(|r| r.lane);
    let mut outage = Outage::new(shared);
    let codes = loop {
        let calls = batch.chunk_by(|a, b| a.lane == b.lane).map(|group| {
            let lane = &shared.lanes[group[0].lane];
            let mut conn = shared.conn.clone();
            async move {
                let items: Vec<records::StartItem<'_>> = group
                    .iter()
                    .map(|r| (r.task_id.as_str(), r.attempt, r.kind.as_str(), r.retention_ms))
                    .collect();
                records::start(
                    &mut conn,
                    &lane.keys,
                    &shared.id,
                    lane.events_maxlen,
                    &items,
                    shared.clock.now_ms(),
                )
                .await
            }
        });
        let results = futures_util::future::join_all(calls).await;
        match results.into_iter().collect::<crate::Result<Vec<Vec<StartCode>>>>() {
            Ok(codes) => break codes.into_iter().flatten().collect::<Vec<_>>(),
            Err(e) if stop.is_cancelled() => {
                // Shutting down with Redis away: run them unrecorded rather than hang; their
                // settle will fail the same way and they are reclaimed after the lease.
                tracing::warn!(error = %e, starts = batch.len(), "could not record task starts at shutdown");
                break vec![StartCode::Run; batch.len()];
            }
            Err(e) => {
                // Recording a start again is harmless (it rewrites the same fields).
                let delay = outage.next_delay();
                tracing::warn!(error = %e, starts = batch.len(), retry_in = ?delay, "recording task starts failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    };
    let mut running = shared.running.lock().expect("never poisoned");
    for (req, code) in batch.drain(..).zip(codes) {
        let Some((control, recorded)) = running.get_mut(&(req.lane, req.task_id.clone())) else {
            // Finished meanwhile: nothing to mark or stop.
            continue;
        };
        if code == StartCode::Run {
            *recorded = true;
        } else {
            tracing::info!(task_id = %req.task_id, "task was cancelled before it started; stopping it");
            control.cancel();
        }
    }
}

/// The monitor loop (see the module docs).
pub(super) async fn run_monitor(shared: Arc<Shared>, stop: CancellationToken) {
    let mut conn = shared.conn.clone();
    let mut tick: u64 = 0;
    let cancel_every = (CANCEL_POLL.as_millis() / PROGRESS_INTERVAL.as_millis()).max(1) as u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PROGRESS_INTERVAL) => {}
        }
        tick += 1;
        // Snapshot under the lock; no I/O while holding it.
        // Progress of a task whose start record is not written yet waits for a later round.
        let (mut running, mut started): (Vec<RunningTask>, Vec<RunningTask>) = (Vec::new(), Vec::new());
        for (k, (c, recorded)) in shared.running.lock().expect("never poisoned").iter() {
            if *recorded {
                started.push((k.clone(), c.clone()));
            }
            running.push((k.clone(), c.clone()));
        }
        if running.is_empty() {
            continue;
        }
        write_progress(&shared, &mut conn, &started).await;
        if tick.is_multiple_of(cancel_every) {
            poll_cancels(&shared, &mut conn, &running).await;
        }
    }
}

async fn write_progress(shared: &Shared, conn: &mut RedisConnection, running: &[RunningTask]) {
    let mut by_lane: HashMap<usize, Vec<(TaskId, u8, String)>> = HashMap::new();
    for ((lane, id), control) in running {
        if let Some(p) = control.take_report() {
            by_lane
                .entry(*lane)
                .or_default()
                .push((id.clone(), p.percent, p.message));
        }
    }
    for (lane, reports) in by_lane {
        let l = &shared.lanes[lane];
        let items: Vec<(&str, u8, &str)> = reports.iter().map(|(i, p, m)| (i.as_str(), *p, m.as_str())).collect();
        if let Err(e) = records::progress(
            conn,
            &l.keys,
            &shared.id,
            l.events_maxlen,
            &items,
            shared.clock.now_ms(),
        )
        .await
        {
            tracing::warn!(error = %e, stream = %l.keys.stream, "could not write progress");
        }
    }
}

async fn poll_cancels(shared: &Shared, conn: &mut RedisConnection, running: &[RunningTask]) {
    let mut lanes: Vec<usize> = running.iter().map(|((l, _), _)| *l).collect();
    lanes.sort_unstable();
    lanes.dedup();
    let keys: Vec<&crate::keys::ShardKeys> = lanes.iter().map(|&l| &shared.lanes[l].keys).collect();
    let marks = match records::cancel_marks(conn, &keys).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "could not read cancel marks");
            return;
        }
    };
    for (lane, ids) in lanes.into_iter().zip(marks) {
        for id in ids {
            if let Some((_, control)) = running.iter().find(|((l, i), _)| *l == lane && i.as_str() == id)
                && !control.is_cancelled()
            {
                tracing::info!(task_id = %id, "cancel asked for; stopping the handler");
                control.cancel();
            }
        }
    }
}
