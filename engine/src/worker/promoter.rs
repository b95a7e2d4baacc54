//! The promoter: moves due delayed and retry tasks into their streams, and refreshes the
//! queues' pause flags.
//!
//! **A round** is one `promote.lua` call over every lane the worker serves (on a Redis
//! Cluster, one per hash slot, in practice per shard): when all their `scheduled` and `retry`
//! sets are empty it costs one `EXISTS`, else a `ZRANGE` per non-empty set and the moves. The
//! script returns the earliest due time still waiting, and the promoter sleeps until then at
//! most. Promotion is safe to run from every worker at once.
//!
//! **Between rounds.** On one node the promoter subscribes to [`WAKE_CHANNEL`]: `enqueue.lua`
//! publishes the due time of every delayed task, and `pause`/`resume` publish a flag change, so
//! an idle worker sleeps [`IDLE_ROUND`] between rounds and still starts a delayed task on
//! time and stops fetching from a paused queue at once. Retries and tasks parked for a limit
//! by this worker wake its own promoter directly (`Shared::wake_promoter_by`); a retry left by
//! a worker that died before it was due is found by the next slow round. Without a
//! subscription (Cluster, Sentinel, or while it reconnects) rounds come every
//! `promote_interval` and read the pause flags each time, as before.
//!
//! A round is also the place for other per-round upkeep of the lanes (`round` below). Every
//! 30 s a round also sweeps the lanes' expired succeeded records (`sweep.lua`), for shards
//! whose settles, which sweep as they go, have stopped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::broker::{self, RedisConnection};
use crate::error::Result;
use crate::keys::WAKE_CHANNEL;

/// Most members moved per set per call; a larger backlog is moved by calling again at once.
const PROMOTE_LIMIT: usize = 1000;

/// The longest sleep between rounds of a subscribed promoter (and between its reads of the
/// pause flags): what a retry left by a dead worker, or a signal lost in a reconnect, may wait
/// past its time at most.
pub const IDLE_ROUND: Duration = Duration::from_secs(10);

/// Reads which queues are paused into every lane's flag; logs each queue whose flag changed,
/// and ends the fetchers' blocking reads so they read the lanes still served. Called once
/// before the first fetch (a worker started on a paused queue must not run a task of it) and
/// then by the promoter.
pub(super) async fn refresh_pause_flags(shared: &Shared, conn: &mut RedisConnection) -> Result<()> {
    let paused = broker::paused_queues(conn).await?;
    let mut changed = BTreeSet::new();
    for lane in &shared.lanes {
        let now_paused = paused.contains(lane.queue.as_str());
        if lane.paused.swap(now_paused, Ordering::Relaxed) != now_paused {
            changed.insert((lane.queue.as_str(), now_paused));
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    for (queue, paused) in changed {
        tracing::info!(%queue, paused, "pause flag changed");
    }
    shared.lanes_changed.notify_waiters();
    shared.unblock_fetchers().await;
    Ok(())
}

pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut conn = shared.conn.clone();
    // The lanes of each call: all of them on one node, one slot's on a cluster.
    let groups = super::fetch_groups(&shared.lanes, conn.is_cluster(), 1);
    let mut subscriber = tokio::task::JoinSet::new();
    if let Some(client) = shared.wake_client.clone() {
        subscriber.spawn(subscribe(shared.clone(), client, stop.clone()));
    }
    let mut flags_read = tokio::time::Instant::now();
    let mut swept = tokio::time::Instant::now();
    loop {
        let (next_due, more, fair_waiting) = round(&shared, &groups).await;
        let subscribed = shared.subscribed.load(Ordering::Relaxed);
        if !subscribed || shared.pause_signal.swap(false, Ordering::Relaxed) || flags_read.elapsed() >= IDLE_ROUND {
            flags_read = tokio::time::Instant::now();
            if let Err(e) = refresh_pause_flags(&shared, &mut conn).await {
                tracing::debug!(error = %e, "could not read pause flags");
            }
        }
        if swept.elapsed() >= SWEEP_EVERY {
            swept = tokio::time::Instant::now();
            sweep(&shared, &groups).await;
        }
        let cap = if subscribed {
            IDLE_ROUND
        } else {
            shared.config.promote_interval
        };
        let mut wait = cap.mul_f64(0.8 + 0.2 * fastrand::f64());
        if let Some(due) = next_due {
            wait = wait.min(Duration::from_millis(due.saturating_sub(shared.clock.now_ms())));
        }
        if fair_waiting {
            // Grouped tasks wait for their turn (docs/groups.md): settles feed them, and this
            // round is the fallback for what no settle fed, so it keeps the short interval
            // while any wait (cost proportional to work: nothing extra once they are fed).
            wait = wait.min(shared.config.promote_interval);
        }
        if more {
            wait = Duration::ZERO;
        }
        // A task due before then (a delayed enqueue, a retry, a task parked for a limit) or a
        // pause flag change wakes this loop early (`Shared::wake_promoter_by`); one asked for
        // during the round shortens the sleep here.
        let now = shared.clock.now_ms();
        shared
            .promoter_due
            .store(now + crate::envelope::millis(wait), Ordering::SeqCst);
        let wanted = shared.promoter_wanted.swap(u64::MAX, Ordering::SeqCst);
        if wanted != u64::MAX {
            wait = wait.min(Duration::from_millis(wanted.saturating_sub(now)));
            shared.promoter_due.fetch_min(wanted, Ordering::SeqCst);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = shared.promoter_wake.notified() => {}
        }
    }
}

/// One promotion round over every group. Returns the earliest due time still waiting,
/// whether some set had more due members than one call moves, and whether grouped tasks still
/// wait in some fair set after the round fed the streams.
async fn round(shared: &Shared, groups: &[Vec<usize>]) -> (Option<u64>, bool, bool) {
    let now = shared.clock.now_ms();
    let calls = groups.iter().map(|group| {
        let mut conn = shared.conn.clone();
        let keys: Vec<_> = group.iter().map(|&i| &shared.lanes[i].keys).collect();
        async move { broker::promote(&mut conn, &keys, now, PROMOTE_LIMIT).await }
    });
    let mut next_due: Option<u64> = None;
    let mut more = false;
    let mut fair_waiting = false;
    for (group, r) in groups.iter().zip(futures_util::future::join_all(calls).await) {
        match r {
            Ok(promoted) => {
                if promoted.moved > 0 {
                    tracing::debug!(lanes = group.len(), moved = promoted.moved, "promoted due tasks");
                }
                // Fair groups (docs/groups.md): a shard with tasks waiting for their turn is
                // fed by the acker after each settle from now on.
                for (k, &i) in group.iter().enumerate() {
                    if promoted.fair_waiting(k) > 0 {
                        shared.lanes[i].grouped.store(true, Ordering::Relaxed);
                        fair_waiting = true;
                    }
                }
                // Conservative: a call moving `PROMOTE_LIMIT` in all may have left some due.
                more |= promoted.moved >= PROMOTE_LIMIT as u64;
                next_due = match (next_due, promoted.next_due) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            Err(e) => {
                shared.redis_failed();
                tracing::warn!(error = %e, stream = %shared.lanes[group[0]].keys.stream, "promotion failed; retrying")
            }
        }
    }
    (next_due, more, fair_waiting)
}

/// Most members of a shard's `succeeded` index one [`sweep`] drops (each names the records
/// one settle call finished).
const SWEEP_LIMIT: usize = 16;

/// How often the promoter sweeps its lanes' expired succeeded records.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Drops expired succeeded records of every lane (`sweep.lua`): settles sweep their own
/// shard as they go, this the shards whose settles stopped. One call per group every
/// [`SWEEP_EVERY`] (on a round: an idle worker's rounds are at most [`IDLE_ROUND`] apart),
/// one `EXISTS` inside it when no lane keeps a succeeded record.
async fn sweep(shared: &Shared, groups: &[Vec<usize>]) {
    let calls = groups.iter().map(|group| {
        let mut conn = shared.conn.clone();
        let keys: Vec<_> = group.iter().map(|&i| &shared.lanes[i].keys).collect();
        async move { broker::lifecycle::sweep_finished(&mut conn, &keys, SWEEP_LIMIT).await }
    });
    for r in futures_util::future::join_all(calls).await {
        if let Err(e) = r {
            tracing::debug!(error = %e, "could not sweep expired task records; next round");
        }
    }
}

/// Listens on [`WAKE_CHANNEL`] while the worker runs, waking the promoter for a delayed task
/// due before its next round (of a lane this worker serves) and for a pause flag change.
/// While subscribed the promoter sleeps long; after a disconnect it polls until subscribed
/// again, and each new subscription starts with a round (signals sent meanwhile were lost).
async fn subscribe(shared: Arc<Shared>, client: redis::Client, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(WAKE_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(5), connect) => r,
        };
        match pubsub {
            Ok(Ok(pubsub)) => {
                failures = 0;
                shared.subscribed.store(true, Ordering::Relaxed);
                shared.pause_signal.store(true, Ordering::Relaxed);
                shared.promoter_wake.notify_one();
                let mut messages = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        () = stop.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let Ok(text) = msg.get_payload::<String>() else {
                        continue;
                    };
                    on_signal(&shared, &text);
                }
                tracing::debug!("wake subscription lost; polling until it is back");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not subscribe to the wake channel; polling"),
            Err(_) => tracing::debug!("subscribing to the wake channel timed out; polling"),
        }
        shared.subscribed.store(false, Ordering::Relaxed);
        shared.promoter_wake.notify_one();
        let delay = Duration::from_millis(100 << failures.min(6)).min(Duration::from_secs(5));
        failures += 1;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One message of [`WAKE_CHANNEL`]: `pause`, or `<due ms> <stream>`.
fn on_signal(shared: &Shared, text: &str) {
    if text == "pause" {
        shared.pause_signal.store(true, Ordering::Relaxed);
        shared.promoter_wake.notify_one();
        return;
    }
    let Some((due, stream)) = text.split_once(' ') else {
        return;
    };
    let Ok(due) = due.parse::<u64>() else { return };
    if shared.lanes.iter().any(|l| l.keys.stream == stream) {
        shared.wake_promoter_by(due);
    }
}
