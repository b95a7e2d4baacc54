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
//! **Which lanes, when.** A round comes every `reclaim_interval()` (`lease / 8`, 50 ms to 2 s,
//! jittered to between three quarters and all of it) and sweeps the *watched* lanes. A lane is
//! watched from the worker's start, and stays watched while another consumer owns entries of
//! it (`XPENDING` summary after each sweep: any of them could become an orphan) or a dead
//! consumer waits to be removed; then it is left alone. An idle fleet's lanes are all left
//! alone, so an idle reclaimer costs one command per round: the look for dead workers. Every
//! worker's registry writes put one member per queue it serves in
//! [`ALIVE_KEY`](crate::keys::ALIVE_KEY), scored with the time by which all it holds is past
//! its lease were it to die now (see `heartbeat`); the round's `ZRANGEBYSCORE` of the members
//! whose time passed names the dead, and their queues' lanes are watched again (the member is
//! removed once they are left alone). All lanes are watched again a lease after a read of this
//! worker failed (its reply, and the entries delivered with it, may be lost; likewise when the
//! first sweep finds entries under this worker's own name: an earlier process of the same id), and every `safety_sweep_interval()` (ten
//! leases, 1 to 10 minutes) in case a death went unrecorded (a worker of an older version that
//! died while no lane was watched).
//!
//! A dead worker's tasks start again elsewhere at most `lease + heartbeat_interval() + 1 s +
//! reclaim_interval()` after it died when it held them at its last beat (35 s with the default
//! 30 s lease), `lease + registry_interval() + 1 s + reclaim_interval()` when it had been idle
//! until it read them (43 s), plus a round trip and the wait for a free slot when every slot of
//! every live worker is busy; sooner when its lane was watched anyway (a busy fleet's are).
//!
//! **Dead consumers.** A watched lane's consumers are looked at (`XINFO CONSUMERS`) before it
//! is left alone and every `reap_interval()` (`2 * lease`, 1 s to 60 s) while it stays watched:
//! those that own nothing, have been idle for a lease and whose worker is not in the registry
//! (one `EXISTS` each) are removed with `forget_consumer.lua`, which keeps a consumer that owns
//! entries after all (deleting it would drop them): one that died holding tasks leaves once
//! they are reclaimed. Members of `rivulet:alive` nobody removed (a dead worker's queue that no
//! live worker serves) are pruned a day after their time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::broker::RedisConnection;
use tokio_util::sync::CancellationToken;

use super::{Lane, Shared, WorkerCounters, executor};
use crate::broker::{self, ReclaimArgs, SCAN_START};
use crate::error::Result;

/// How long a dead worker's `rivulet:alive` member is kept when no live worker serves its
/// queue (none sweeps and forgets it): a day.
const ALIVE_KEPT_MS: u64 = 24 * 3600 * 1000;
/// Most entries taken per call.
const RECLAIM_BATCH: usize = 100;
/// Most consumers removed from one group per reap pass, so a pass stays small however many
/// dead consumers a long-lived fleet left behind (the rest go in the next passes).
const REAP_BATCH: usize = 100;

pub(super) async fn run(shared: Arc<Shared>, quiet: CancellationToken) {
    let lanes = shared.lanes.len();
    let mut cursors = vec![SCAN_START; lanes];
    // Lanes watched: swept every round until they hold no one else's entries and no dead
    // consumer waits to be removed. All of them at start (orphans and dead consumers left
    // before this worker came are found so).
    let mut watch = vec![true; lanes];
    // Lanes not yet swept to the end once since the start.
    let mut first_sweep = vec![true; lanes];
    // When each watched lane was last reaped (its consumers looked at).
    let mut reaped: Vec<Option<tokio::time::Instant>> = vec![None; lanes];
    // Dead workers' ALIVE_KEY members to remove once their queue's lanes are unwatched.
    let mut dead: Vec<(String, String)> = Vec::new();
    let mut conn = shared.conn.clone();
    let interval = shared.config.reclaim_interval();
    let reap_every = shared.config.reap_interval();
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
                        watch[i] = true;
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
        if lost != 0 && now >= lost + crate::envelope::millis(shared.config.lease) {
            let _ = shared
                .lost_replies_at
                .compare_exchange(lost, 0, Ordering::Relaxed, Ordering::Relaxed);
            watch.fill(true);
        }
        if tokio::time::Instant::now() >= next_safety {
            next_safety = tokio::time::Instant::now() + safety_every;
            watch.fill(true);
            // Members of dead workers nobody swept for a day: their queues are served no more.
            if let Err(e) = broker::prune_alive(&mut conn, now.saturating_sub(ALIVE_KEPT_MS)).await {
                tracing::debug!(error = %e, "could not prune old alive members; next safety sweep");
            }
        }
        for i in 0..lanes {
            // A paused queue takes nothing new, its orphans included: they wait for `resume`.
            if !(watch[i] || cursors[i] != SCAN_START) || shared.lanes[i].paused.load(Ordering::Relaxed) {
                continue;
            }
            let done = match reclaim_lane(&shared, &mut conn, i, &mut cursors[i], interval, &quiet).await {
                None => return,
                Some(done) => done,
            };
            if !done || !watch[i] {
                continue;
            }
            let lane = &shared.lanes[i];
            let clear = match settled_down(&shared, &mut conn, lane, &mut reaped[i], reap_every, first_sweep[i]).await {
                Ok(clear) => clear,
                Err(e) => {
                    tracing::debug!(error = %e, stream = %lane.keys.stream, "could not look at the group's consumers; next round");
                    false
                }
            };
            first_sweep[i] = false;
            watch[i] = !clear;
            if clear {
                reaped[i] = None;
            }
        }
        // A dead worker's members go once every lane of their queue is clear.
        let (cleared, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut dead)
            .into_iter()
            .partition(|(q, _)| (0..lanes).all(|i| shared.lanes[i].queue.as_str() != q || !watch[i]));
        dead = waiting;
        if let Err(e) = broker::forget_alive(&mut conn, &cleared).await {
            tracing::debug!(error = %e, "could not forget swept workers; they are swept again");
        }
    }
}

/// After a complete sweep of a watched lane: whether it can be left unwatched, that is, no
/// other consumer owns entries of it (any could become an orphan without an `ALIVE_KEY`
/// member saying so: a worker of an older version, a consumer that is not a worker) and no
/// dead consumer waits to be removed. The lane's consumers are looked at (and the dead ones
/// removed) when it would be cleared, and every `reap_every` while it stays watched. `first`:
/// the lane's first sweep since the worker started.
#[allow(clippy::too_many_arguments)]
async fn settled_down(
    shared: &Shared,
    conn: &mut RedisConnection,
    lane: &Lane,
    reaped: &mut Option<tokio::time::Instant>,
    reap_every: Duration,
    first: bool,
) -> Result<bool> {
    let owners = broker::pending_by_consumer(conn, &lane.keys.stream).await?;
    if first && owners.iter().any(|(name, n)| *name == shared.id && *n > 0) {
        // Entries under this worker's name before it read any: an earlier process of the same
        // id left them. Not held here, they are claimable a lease from now.
        shared.suspect_lost_replies();
    }
    let others_own = owners.iter().any(|(name, n)| *name != shared.id && *n > 0);
    if others_own && reaped.is_some_and(|at| at.elapsed() < reap_every) {
        return Ok(false);
    }
    *reaped = Some(tokio::time::Instant::now());
    let waiting = reap_lane(shared, conn, lane).await?;
    Ok(!others_own && !waiting)
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
/// Returns whether a consumer of no live worker is left that may be removed later (it still
/// owns entries, or was seen less than a lease ago).
async fn reap_lane(shared: &Shared, conn: &mut RedisConnection, lane: &Lane) -> Result<bool> {
    let lease = crate::envelope::millis(shared.config.lease);
    let mut removed = 0;
    let mut waiting = false;
    let others = broker::group_consumers(conn, &lane.keys).await?;
    for (name, pending, idle) in others.into_iter().filter(|(n, _, _)| *n != shared.id).take(REAP_BATCH) {
        // A worker in the registry is alive (idle, or paused on this queue): keep its consumer.
        if broker::is_registered(conn, &name).await? {
            continue;
        }
        if pending > 0 || idle < lease {
            waiting = true;
            continue;
        }
        if broker::forget_consumer(conn, &lane.keys, &name).await? {
            removed += 1;
            tracing::info!(stream = %lane.keys.stream, consumer = %name, "removed a dead worker's consumer that held nothing");
        } else {
            waiting = true;
        }
    }
    if removed > 0 {
        tracing::debug!(stream = %lane.keys.stream, removed, "dead consumers removed");
    }
    Ok(waiting)
}
