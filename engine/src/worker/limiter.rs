//! The limiter: admits a limited task to its handler, or parks it until the limit lets it
//! start; gives running slots back when handlers finish and renews them while they run.
//!
//! A task whose limit name (its `limit_key`, else its kind) is one of
//! `WorkerConfig::limits` asks the limit's home slot (`broker::limits::acquire`) before its
//! handler starts, holding its handler slot for that one call. Over the limit, it is settled
//! as [`Settle::Wait`]: into its shard's retry set until the time the limit named, with its
//! attempt and last error unchanged, so it neither counts as a failure nor holds up the
//! tasks behind it in the stream. The promoter is woken for that time (it may be sleeping
//! past it), so the task is back in its stream when its reserved start comes.
//!
//! Running slots are held under a lease as entries are: the heartbeat renews every slot a
//! live handler holds (`renew`), so a dead worker's slots come back when their lease runs out.

use std::sync::Arc;
use std::time::Duration;

use super::{Shared, WorkerCounters};
use crate::broker::limits::{self, Admission};
use crate::broker::{Settle, StreamId};

/// How long a task waits when its limit could not be asked (Redis away): about an outage
/// backoff's step, so the task is not lost and not spinning.
const UNREACHABLE_WAIT: Duration = Duration::from_secs(1);

/// A running slot this worker holds for a handler.
#[derive(Debug)]
pub(super) struct Hold {
    limit: Arc<str>,
    holder: String,
}

/// What to do with a limited task.
pub(super) enum Admit {
    /// Run it; give the slots back (`release`) when it finishes.
    Run(Vec<Hold>),
    /// Park it: settle this outcome.
    Wait(Settle),
}

/// Asks each of the task's limits, in order, whether it may start now (its group's cap, then
/// its own limit): it starts only when every one lets it, and a slot taken from an earlier one
/// is given back at once when a later one says wait.
pub(super) async fn admit_all(shared: &Shared, limits: &[Arc<str>], task_id: &str, entry_id: StreamId) -> Admit {
    let mut holds = Vec::new();
    for limit in limits {
        match admit(shared, limit, task_id, entry_id).await {
            Admit::Run(h) => holds.extend(h),
            Admit::Wait(settle) => {
                release(shared, holds, Duration::ZERO).await;
                return Admit::Wait(settle);
            }
        }
    }
    Admit::Run(holds)
}

/// Asks one limit whether the task may start now.
async fn admit(shared: &Shared, limit: &Arc<str>, task_id: &str, entry_id: StreamId) -> Admit {
    let Some((keys, spec)) = shared.limit_spec(limit) else {
        return Admit::Run(Vec::new());
    };
    let (keys, spec) = (keys.as_ref(), &spec);
    let holder = format!("{}/{entry_id}", shared.id);
    let mut conn = shared.conn.clone();
    let wait = match limits::acquire(&mut conn, keys, spec, task_id, &holder, shared.config.lease).await {
        Ok(Admission::Granted) => {
            if spec.max_running.is_none() {
                return Admit::Run(Vec::new());
            }
            let mut holds = shared.limit_holds.lock().expect("never poisoned");
            holds.entry(limit.clone()).or_default().insert(holder.clone());
            return Admit::Run(vec![Hold {
                limit: limit.clone(),
                holder,
            }]);
        }
        Ok(Admission::Wait(d)) => d,
        Err(e) => {
            tracing::warn!(error = %e, limit = %limit, task_id, "could not ask the limit; the task waits and is offered again");
            UNREACHABLE_WAIT
        }
    };
    WorkerCounters::add(&shared.counters.limited, 1);
    let due_ms = shared.clock.now_ms() + crate::envelope::millis(wait);
    // The promoter is woken for it when the outcome goes to the acker (`settle_tracked`).
    tracing::debug!(task_id, limit = %limit, wait_ms = wait.as_millis() as u64, "over its limit; waiting");
    Admit::Wait(Settle::Wait {
        due_ms,
        limit: limit.to_string(),
    })
}

/// Gives running slots back once their handler finished (or was dropped). A failure is only
/// logged: the slot's lease, no longer renewed, runs out and frees it.
pub(super) async fn release(shared: &Shared, holds: Vec<Hold>, run: Duration) {
    for hold in holds {
        release_one(shared, hold, run).await;
    }
}

async fn release_one(shared: &Shared, hold: Hold, run: Duration) {
    {
        let mut holds = shared.limit_holds.lock().expect("never poisoned");
        if let Some(set) = holds.get_mut(&hold.limit) {
            set.remove(&hold.holder);
        }
    }
    let Some((keys, _)) = shared.limit_spec(&hold.limit) else {
        return;
    };
    let keys = keys.as_ref();
    let mut conn = shared.conn.clone();
    if let Err(e) = limits::release(&mut conn, keys, &[hold.holder], run.as_secs_f64() * 1000.0).await {
        tracing::warn!(error = %e, limit = %hold.limit, "could not give a running slot back; its lease frees it");
    }
}

/// Renews the lease of every running slot this worker's handlers hold (from the heartbeat).
pub(super) async fn renew(shared: &Shared) {
    let held: Vec<(Arc<str>, Vec<String>)> = {
        let holds = shared.limit_holds.lock().expect("never poisoned");
        holds
            .iter()
            .filter(|(_, set)| !set.is_empty())
            .map(|(name, set)| (name.clone(), set.iter().cloned().collect()))
            .collect()
    };
    let mut conn = shared.conn.clone();
    for (name, holders) in held {
        let Some((keys, _)) = shared.limit_spec(&name) else {
            continue;
        };
        if let Err(e) = limits::renew(&mut conn, &keys, &holders, shared.config.lease).await {
            tracing::warn!(error = %e, limit = %name, "could not renew running slots");
        }
    }
}
