//! The reclaimer: takes over entries whose lease ran out because their worker died, and
//! removes dead workers' consumers from the groups once they hold nothing.
//!
//! **Reclaim.** `XAUTOCLAIM` with min-idle = lease, following the cursor to `0-0` (a *sweep*
//! of a lane). Live workers renew their leases every `min(lease / 3, 2 s)`, so only orphans are
//! ever idle that long. Entries delivered more than `max_deliveries` times are poison and go to
//! the DLQ: the script sets them apart and the worker buries them through the acker (one settle
//! path, which also marks a tracked task's record `dead`). The reclaimer claims into the handler
//! slots free now; while a sweep is unfinished and no slot is free, it waits for the next slot
//! to free (at most one round) rather than leaving the rest of the orphans for a later round.
//! The fetchers keep no slot while they wait in a blocking read, so a free slot is always the
//! reclaimer's to take.
//!
//! **When.** Orphans only exist where a worker stopped beating (or a read lost its reply).
//! Every worker's registry writes put one member per queue it serves in [`ALIVE_KEY`](crate::keys::ALIVE_KEY), scored
//! with the time by which all it holds is past its lease were it to die now (see
//! `heartbeat`). A round every `reclaim_interval()` (`lease / 8`, 50 ms to 2 s, jittered to
//! between three quarters and all of it) is one `ZRANGEBYSCORE` of the members whose time
//! passed: for each of those of a queue this worker serves, it sweeps that queue's lanes, and
//! once they are all swept, reaps their dead consumers and removes the member. Lanes are also
//! swept when the worker starts, a lease after a read of this worker failed (its reply, and
//! the entries delivered with it, may be lost), and every `safety_sweep_interval()` (ten
//! leases, 1 to 10 minutes) in case a death went unrecorded (a worker of an older version). A
//! dead worker's tasks start again elsewhere at most `lease + heartbeat_interval() + 1 s +
//! reclaim_interval()` after it died when it held them at its last beat (35 s with the default
//! 30 s lease), `lease + registry_interval() + 1 s + reclaim_interval()` when it had been idle
//! (43 s), plus a round trip and the wait for a free slot when every slot of every live worker
//! is busy. An idle worker's reclaimer costs one command per round.
//!
//! **Dead consumers.** After a dead worker's queue is swept, and at each safety sweep, the
//! reclaimer looks at those lanes' consumers (`XINFO CONSUMERS`, one call per shard) and
//! removes those that own nothing, have been idle for a lease and whose worker is not in the
//! registry (one `EXISTS` per such candidate). The removal is `forget_consumer.lua`, which
//! keeps a consumer that owns entries after all (deleting it would drop them): one that died
//! holding tasks leaves once they are reclaimed. `XINFO CONSUMERS` then lists live workers and
//! the dead ones whose tasks still wait for their lease.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::broker::RedisConnection;
use tokio_util::sync::CancellationToken;

use super::{Lane, Shared, WorkerCounters, executor};
use crate::broker::{self, ReclaimArgs, SCAN_START};
use crate::error::Result;

/// Most entries taken per call.
const RECLAIM_BATCH: usize = 100;
/// Most consumers removed from one group per reap pass, so a pass stays small however many
/// dead consumers a long-lived fleet left behind (the rest go in the next passes).
const REAP_BATCH: usize = 100;

pub(super) async fn run(shared: Arc<Shared>, quiet: CancellationToken) {
    let lanes = shared.lanes.len();
    let mut cursors = vec![SCAN_START; lanes];
    // Lanes to sweep (to the end of their scan), and lanes to reap once swept.
    let mut sweep = vec![true; lanes];
    let mut reap = vec![false; lanes];
    // Dead workers' ALIVE_KEY members to remove once their queue's lanes are swept.
    let mut dead: Vec<(String, String)> = Vec::new();
    let mut conn = shared.conn.clone();
    let interval = shared.config.reclaim_interval();
    let safety_every = shared.config.safety_sweep_interval();
    let mut next_safety = tokio::time::Instant::now() + safety_every;
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                () = quiet.cancelled() => return,
                () = tokio::time::sleep(interval.mul_f64(0.75 + 0.25 * fastrand::f64())) => {}
            }
        }
        first = false;
        let now = shared.clock.now_ms();
        match broker::expired_alive(&mut conn, now).await {
            Ok(expired) => {
                for (queue, worker) in expired {
                    if worker == shared.id || dead.iter().any(|(q, w)| *q == queue && *w == worker) {
                        continue;
                    }
                    let of_queue: Vec<usize> = (0..lanes)
                        .filter(|&i| shared.lanes[i].queue.as_str() == queue)
                        .collect();
                    if of_queue.is_empty() {
                        continue; // another queue's workers sweep for it
                    }
                    tracing::info!(%queue, %worker, "a worker stopped beating; sweeping its queue for orphans");
                    for i in of_queue {
                        sweep[i] = true;
                        reap[i] = true;
                    }
                    dead.push((queue, worker));
                }
            }
            Err(e) => {
                shared.redis_failed();
                tracing::debug!(error = %e, "could not look for dead workers; next round");
            }
        }
        let lost = shared.lost_replies_at.load(Ordering::Relaxed);
        if lost != 0 && now >= lost + crate::envelope::millis(shared.config.lease + interval) {
            let _ = shared
                .lost_replies_at
                .compare_exchange(lost, 0, Ordering::Relaxed, Ordering::Relaxed);
            sweep.fill(true);
        }
        if tokio::time::Instant::now() >= next_safety {
            next_safety = tokio::time::Instant::now() + safety_every;
            sweep.fill(true);
            reap.fill(true);
        }
        for i in 0..lanes {
            // A paused queue takes nothing new, its orphans included: they wait for `resume`.
            if !(sweep[i] || cursors[i] != SCAN_START) || shared.lanes[i].paused.load(Ordering::Relaxed) {
                continue;
            }
            match reclaim_lane(&shared, &mut conn, i, &mut cursors[i], interval, &quiet).await {
                None => return,
                Some(done) => sweep[i] &= !done,
            }
        }
        for i in 0..lanes {
            if !reap[i] || sweep[i] {
                continue;
            }
            if quiet.is_cancelled() {
                return;
            }
            reap[i] = false;
            let lane = &shared.lanes[i];
            if let Err(e) = reap_lane(&shared, &mut conn, lane).await {
                tracing::debug!(error = %e, stream = %lane.keys.stream, "could not look for dead consumers; next pass");
            }
        }
        // A dead worker's members go once every lane of their queue is swept.
        let (swept, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut dead)
            .into_iter()
            .partition(|(q, _)| (0..lanes).all(|i| shared.lanes[i].queue.as_str() != q || !sweep[i]));
        dead = waiting;
        if let Err(e) = broker::forget_alive(&mut conn, &swept).await {
            tracing::debug!(error = %e, "could not forget swept workers; they are swept again");
        }
    }
}

/// One round of reclaiming on one lane: claims until the scan is complete. Returns whether
/// it completed (`None` when the worker went quiet); an unfinished scan goes on next round.
async fn reclaim_lane(
    shared: &Arc<Shared>,
    conn: &mut RedisConnection,
    i: usize,
    cursor: &mut broker::StreamId,
    interval: Duration,
    quiet: &CancellationToken,
) -> Option<bool> {
    let lane = &shared.lanes[i];
    loop {
        if quiet.is_cancelled() {
            return None;
        }
        // The slots to claim into: those free now; none free and the scan unfinished, the next
        // one to free (within a round), since orphans may be waiting further on.
        let mut held = match shared.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if *cursor != SCAN_START => tokio::select! {
                () = quiet.cancelled() => return None,
                () = tokio::time::sleep(interval) => return Some(false),
                p = shared.permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            },
            Err(_) => return Some(false),
        };
        let more = shared.permits.available_permits().min(RECLAIM_BATCH - 1);
        if more > 0
            && let Ok(extra) = shared.permits.clone().try_acquire_many_owned(more as u32)
        {
            held.merge(extra);
        }
        // With `max_tasks`, budget units bound the claim as the slots do.
        let mut units = shared.try_units(held.num_permits());
        let count = Shared::entries_allowed(&units, held.num_permits());
        if count == 0 {
            return Some(false);
        }
        let args = ReclaimArgs {
            keys: &lane.keys,
            consumer: &shared.id,
            lease: shared.config.lease,
            cursor: *cursor,
            count,
            max_deliveries: shared.config.max_deliveries,
        };
        let got = match broker::reclaim(conn, args).await {
            Ok(got) => got,
            Err(e) => {
                shared.redis_failed();
                if broker::is_nogroup(&e) {
                    super::fetcher::recreate_groups(shared).await;
                } else {
                    tracing::warn!(error = %e, stream = %lane.keys.stream, "reclaim failed; retrying next round");
                }
                return Some(false);
            }
        };
        if got.lost > 0 {
            tracing::error!(stream = %lane.keys.stream, lost = got.lost, "pending entries pointed at deleted stream entries (counted as lost)");
        }
        if !got.poison.is_empty() {
            tracing::warn!(stream = %lane.keys.stream, poisoned = got.poison.len(), "poison tasks (delivered too often without an outcome); moving them to the dead-letter stream");
            shared.hold(i, got.poison.iter().map(|(e, _)| e.id));
            for (entry, deliveries) in got.poison {
                executor::bury_poison(shared, i, entry, deliveries);
            }
        }
        if !got.entries.is_empty() {
            tracing::info!(stream = %lane.keys.stream, count = got.entries.len(), "reclaimed tasks whose lease ran out");
            WorkerCounters::add(&shared.counters.reclaimed, got.entries.len() as u64);
        }
        shared.hold(i, got.entries.iter().map(|e| e.id));
        for entry in got.entries {
            if !shared.spend(&mut units) {
                continue; // stays held, unrun; requeued when the worker drains
            }
            // XAUTOCLAIM returns at most `count` entries, and `held` has `count` slots.
            let permit = held.split(1).expect("no more entries claimed than slots reserved");
            executor::dispatch(shared, i, entry, permit);
        }
        *cursor = got.next;
        if *cursor == SCAN_START {
            return Some(true);
        }
    }
}

/// Removes the consumers of one lane's group whose worker is gone and that own nothing.
async fn reap_lane(shared: &Shared, conn: &mut RedisConnection, lane: &Lane) -> Result<()> {
    let candidates = broker::idle_empty_consumers(conn, &lane.keys, shared.config.lease).await?;
    let mut removed = 0;
    for name in candidates.into_iter().filter(|n| *n != shared.id).take(REAP_BATCH) {
        // A worker in the registry is alive (idle, or paused on this queue): keep its consumer.
        if broker::is_registered(conn, &name).await? {
            continue;
        }
        if broker::forget_consumer(conn, &lane.keys, &name).await? {
            removed += 1;
            tracing::info!(stream = %lane.keys.stream, consumer = %name, "removed a dead worker's consumer that held nothing");
        }
    }
    if removed > 0 {
        tracing::debug!(stream = %lane.keys.stream, removed, "dead consumers removed");
    }
    Ok(())
}
