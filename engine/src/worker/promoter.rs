//! The promoter: moves due delayed and retry tasks into their streams, and refreshes the
//! queues' pause flags.
//!
//! It sleeps until the earliest due time it saw or `promote_interval`, whichever is sooner,
//! with jitter so many workers do not all call at the same instant. Promotion is one script per
//! shard and safe to run from every worker at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::broker::RedisConnection;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::broker;
use crate::error::Result;

/// Most members moved per set per call; a larger backlog is moved by calling again at once.
const PROMOTE_LIMIT: usize = 1000;

/// Reads which queues are paused into every lane's flag; logs each queue whose flag changed.
/// Called once before the first fetch (a worker started on a paused queue must not run a task
/// of it) and then on every promoter round.
pub(super) async fn refresh_pause_flags(shared: &Shared, conn: &mut RedisConnection) -> Result<()> {
    let paused = broker::paused_queues(conn).await?;
    let mut changed = BTreeSet::new();
    for lane in &shared.lanes {
        let now_paused = paused.contains(lane.queue.as_str());
        if lane.paused.swap(now_paused, Ordering::Relaxed) != now_paused {
            changed.insert((lane.queue.as_str(), now_paused));
        }
    }
    for (queue, paused) in changed {
        tracing::info!(%queue, paused, "pause flag changed");
    }
    Ok(())
}

pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut conn = shared.conn.clone();
    loop {
        let now = shared.clock.now_ms();
        let calls = shared.lanes.iter().map(|lane| {
            let mut conn = shared.conn.clone();
            async move { broker::promote(&mut conn, &lane.keys, now, PROMOTE_LIMIT).await }
        });
        let mut next_due: Option<u64> = None;
        let mut more = false;
        for (lane, r) in shared.lanes.iter().zip(futures_util::future::join_all(calls).await) {
            match r {
                Ok(broker::Promoted {
                    moved,
                    next_due: due,
                    fair,
                }) => {
                    // Fair groups (docs/groups.md): a shard with tasks waiting for their turn
                    // is fed by the acker after each settle from now on.
                    if fair > 0 {
                        lane.grouped.store(true, Ordering::Relaxed);
                    }
                    if moved > 0 {
                        tracing::debug!(stream = %lane.keys.stream, moved, "promoted due tasks");
                    }
                    more |= moved >= PROMOTE_LIMIT as u64;
                    next_due = match (next_due, due) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                Err(e) => {
                    shared.redis_failed();
                    tracing::warn!(error = %e, stream = %lane.keys.stream, "promotion failed; retrying")
                }
            }
        }
        if let Err(e) = refresh_pause_flags(&shared, &mut conn).await {
            tracing::debug!(error = %e, "could not read pause flags");
        }
        let interval = shared.config.promote_interval;
        let mut wait = interval.mul_f64(0.8 + 0.4 * fastrand::f64());
        if let Some(due) = next_due {
            wait = wait.min(Duration::from_millis(due.saturating_sub(shared.clock.now_ms())));
        }
        if more {
            wait = Duration::ZERO;
        }
        // A task parked for a limit until before then wakes this loop (worker/limiter.rs).
        shared
            .promoter_due
            .store(shared.clock.now_ms() + crate::envelope::millis(wait), Ordering::Relaxed);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = shared.promoter_wake.notified() => {}
        }
    }
}
