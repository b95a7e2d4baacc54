//! The fetcher: reads new entries in priority order and hands them to the executor.
//!
//! Each fetcher owns a dedicated connection: a blocking `XREADGROUP` would stall every other
//! command on a shared multiplexed connection. A worker runs `fetchers` of them (two by
//! default), so one read is on its way to Redis while the other batch is decoded and
//! dispatched. A fetcher reserves its share of the free handler slots before it reads and its
//! non-blocking reads take no more entries than it reserved, so under load tasks wait in the
//! stream (where any worker can take them), not in this process. Only when every stream was
//! empty does a fetcher block, asking for every free slot, and it keeps none while it waits:
//! a slot that frees (or stays free) during a long blocking read is there at once for the
//! reclaimer's orphans and for the other fetcher, never held back until the read times out.
//! If two blocked fetchers (or several shards) answer at once with more than the free slots,
//! the extra entries wait here for a slot, leased to this worker and renewed.
//!
//! Each fetcher reads the lanes it is given: on one node every lane, on a Redis Cluster the
//! lanes of one hash slot (in practice one shard), since one `XREADGROUP` may not name streams
//! of several slots. Priority order then holds within a fetcher's lanes; across shards, their
//! fetchers take free handler slots in turn.
//!
//! **Idle.** When its last read found every lane drained (each stream gave back fewer entries
//! than asked for, or nothing), a fetcher skips the non-blocking pass and goes straight to one
//! blocking read across all its lanes: at a trickle a task costs one read, and an idle worker
//! makes one read per fetcher per `block` (10 s by default). Priority order is kept by the
//! non-blocking pass, which runs whenever the last read may have left a backlog. A long read is
//! never dropped (that would leave entries delivered to this consumer that nothing runs): a
//! quiet, or a pause flag that changed, ends it from the shared connection with `CLIENT
//! UNBLOCK` (the fetcher's `CLIENT ID` is asked for once per connection), and it returns empty.
//!
//! **Empty priorities fold into the next read.** A priority whose streams the last read that
//! named them found empty is not read on its own again: it is named in the same `XREADGROUP`
//! as the next priority, so draining a `normal` backlog costs one read per batch, not an empty
//! read of `high` before each. `COUNT` applies per stream, so such a read may return up to the
//! reserved slots from each priority; the higher ones are dispatched first and the rest wait
//! here for slots, leased and renewed, as a blocking read's extras do. Strict priority then
//! holds per read: a high task that arrives while a lower backlog drains is dispatched ahead
//! of every lower entry of the read that found it, with at most one lower batch run beside it.
//!
//! With `max_tasks`, a fetcher reserves a budget unit per slot too (see `budget`), and reads
//! no more entries than it holds units for; an entry a multi-shard read returns beyond the
//! budget stays held, unrun, and is requeued when the worker drains.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::config::rank_order;
use super::{Outage, Shared, Units, executor};
use crate::broker::reader::DedicatedConnection;
use crate::broker::{self, StreamEntry};
use crate::error::Result;

pub(super) async fn run(
    shared: Arc<Shared>,
    me: usize,
    mine: Vec<usize>,
    mut conn: DedicatedConnection,
    quiet: CancellationToken,
) {
    // Whether the last read found every lane drained: the next one then blocks at once.
    let mut drained = false;
    let ranks = shared.lanes.iter().map(|l| l.rank).max().map_or(0, |r| r + 1);
    // By priority: whether the last read that named it found it empty (see `read`).
    let mut empty = vec![false; ranks];
    let mut outage = Outage::new(&shared);
    let fetchers = shared.config.fetchers.min(shared.config.concurrency);
    let share = shared.config.concurrency.div_ceil(fetchers);
    loop {
        // While the acker is behind, reading more would only lengthen its queue.
        tokio::select! {
            () = quiet.cancelled() => return,
            () = shared.unsettled.below_cap() => {}
        }
        // Wait for a free slot first: reading without one would park tasks in this process.
        let mut held = tokio::select! {
            () = quiet.cancelled() => return,
            p = shared.permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        if quiet.is_cancelled() {
            return;
        }
        // Reserve more free slots, up to this fetcher's share of them: fetchers side by side
        // then never read more between them than there are free slots, and each leaves the
        // others slots to read for while its own batch is decoded and dispatched.
        let free = shared.permits.available_permits().min(share - 1);
        if free > 0
            && let Ok(more) = shared.permits.clone().try_acquire_many_owned(free as u32)
        {
            held.merge(more);
        }
        // The budget bounds a read as the slots do: wait for a unit (another fetcher may hold
        // the last ones for a read that comes back short), and give back slots beyond them.
        let mut units = match &shared.budget {
            None => None,
            Some(budget) => {
                let units = tokio::select! {
                    () = quiet.cancelled() => return,
                    u = budget.reserve(held.num_permits()) => u,
                };
                if units.len() < held.num_permits() {
                    drop(held.split(held.num_permits() - units.len()));
                }
                Some(units)
            }
        };
        // Not raced against `quiet`: dropping a read in flight would leave entries delivered
        // to this consumer that nothing runs. The read returns within `block`, or at once when
        // a quiet or a pause flag change sends `CLIENT UNBLOCK` (`Shared::unblock_fetchers`).
        match read(
            &shared, me, &mine, &mut conn, ranks, drained, &mut empty, &mut held, &mut units, &quiet,
        )
        .await
        {
            Ok((mut batch, now_drained)) => {
                drained = now_drained;
                if outage.recovered() {
                    tracing::info!("redis reachable again; fetching");
                }
                // A blocking read may return several priorities: run the higher ones first.
                batch.sort_by_key(|(lane, _)| (shared.lanes[*lane].rank, *lane));
                for group in batch.chunk_by(|a, b| a.0 == b.0) {
                    shared.hold(group[0].0, group.iter().map(|(_, e)| e.id));
                }
                for (lane, entry) in batch {
                    // The slot first, then the budget unit: spending the last unit quiets
                    // the worker, so a unit spent before its slot was taken could be lost
                    // to the quiet it fires, leaving the worker one task short.
                    let permit = match held.split(1) {
                        Some(p) => p,
                        // More entries than reserved slots (a blocking read, which reserves
                        // none, or several shards answering): wait for a slot. They stay
                        // leased to this worker meanwhile, and a quiet leaves them to the
                        // drain's requeue instead of holding the drain up.
                        None => tokio::select! {
                            () = quiet.cancelled() => break,
                            p = shared.permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                        },
                    };
                    if !shared.spend(&mut units) {
                        tracing::debug!(entry = %entry.id, "max_tasks spent: the entry waits for the drain's requeue");
                        continue;
                    }
                    executor::dispatch(&shared, lane, entry, permit);
                }
                // Slots and units reserved but not filled go back as they drop here.
            }
            Err(e) => {
                drop(held);
                drop(units);
                drained = false;
                // The connection may be a new one now: ask for its id again before blocking.
                *shared.fetch_clients[me].id.lock().expect("never poisoned") = None;
                shared.suspect_lost_replies();
                if broker::is_nogroup(&e) {
                    // The stream or group vanished (e.g. Redis restarted without data).
                    tracing::warn!(error = %e, "consumer group missing; recreating");
                    recreate_groups(&shared).await;
                    continue;
                }
                let delay = outage.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "fetch failed; retrying");
                tokio::select! {
                    () = quiet.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One fetch: a non-blocking read per priority in order, then one blocking read over all;
/// after a read that found every lane drained (`drained`), the blocking read alone. Returns
/// the entries and whether this read found every lane drained.
///
/// The non-blocking reads take as many entries as `held` has slots. Before blocking, `held`
/// gives back every slot (and `units` every budget unit), so while this worker waits for work
/// its slots stay free for the reclaimer and the other fetchers; the blocking read asks for as
/// many entries as there are free slots (and budget units) when it starts, and its entries
/// take slots as they arrive (see `run`).
#[allow(clippy::too_many_arguments)]
async fn read(
    shared: &Shared,
    me: usize,
    mine: &[usize],
    conn: &mut DedicatedConnection,
    ranks: usize,
    drained: bool,
    empty: &mut [bool],
    held: &mut OwnedSemaphorePermit,
    units: &mut Option<Units>,
    quiet: &CancellationToken,
) -> Result<(Vec<(usize, StreamEntry)>, bool)> {
    let unpaused = |i: &usize| !shared.lanes[*i].paused.load(Ordering::Relaxed);
    let mut all: Vec<usize> = Vec::new();
    if drained {
        all.extend(mine.iter().copied().filter(unpaused));
    } else {
        let order = rank_order(&shared.config.priority, ranks, fastrand::f64);
        let last = order
            .iter()
            .rposition(|&r| mine.iter().any(|i| shared.lanes[*i].rank == r && unpaused(i)));
        // Lanes of priorities found empty last time, read with the next priority's lanes.
        let mut lanes: Vec<usize> = Vec::new();
        for (n, rank) in order.iter().copied().enumerate() {
            let before = lanes.len();
            lanes.extend(
                mine.iter()
                    .copied()
                    .filter(|&i| shared.lanes[i].rank == rank && unpaused(&i)),
            );
            if lanes.len() == before || (empty[rank] && Some(n) != last) {
                continue;
            }
            let asked = held.num_permits();
            let got = read_lanes(shared, conn, &lanes, asked, false).await?;
            note_empty(shared, empty, &lanes, &got);
            if !got.is_empty() {
                // Drained when this was the last priority and no stream filled the read.
                let drained = Some(n) == last && !filled(&got, asked);
                return Ok((got, drained));
            }
            all.append(&mut lanes);
        }
    }
    drop(held.split(held.num_permits()));
    if let Some(u) = units {
        u.keep(0);
    }
    if all.is_empty() {
        // Everything is paused: wait for a flag to change (or the block), then look again.
        let changed = shared.lanes_changed.notified();
        tokio::select! {
            () = quiet.cancelled() => {}
            () = changed => {}
            () = tokio::time::sleep(shared.config.block) => {}
        }
        return Ok((Vec::new(), false));
    }
    // At least one: this fetcher just had a slot, so one is free or about to be.
    let mut want = shared.permits.available_permits().max(1);
    if let Some(budget) = &shared.budget {
        // Entries are dispatched with units free when they arrive; one beyond the budget
        // stays unrun and is requeued when the worker drains.
        want = want.min(budget.available().max(1));
    }
    // The id `CLIENT UNBLOCK` needs to end this read early (asked once per connection).
    let client = &shared.fetch_clients[me];
    let known = *client.id.lock().expect("never poisoned");
    if known.is_none() {
        match conn.client_id(&client.route).await {
            Ok(id) => *client.id.lock().expect("never poisoned") = Some(id),
            // Without it the read still ends within `block`.
            Err(e) => tracing::debug!(error = %e, "CLIENT ID failed; a quiet waits for the read's block"),
        }
    }
    if quiet.is_cancelled() {
        return Ok((Vec::new(), false));
    }
    let got = read_lanes(shared, conn, &all, want, true).await?;
    note_empty(shared, empty, &all, &got);
    let drained = !filled(&got, want);
    Ok((got, drained))
}

/// Notes, for each priority a read named, whether it gave back nothing: the next
/// non-blocking pass then reads it together with the priority after it (see `read`).
fn note_empty(shared: &Shared, empty: &mut [bool], lanes: &[usize], got: &[(usize, StreamEntry)]) {
    for &lane in lanes {
        empty[shared.lanes[lane].rank] = true;
    }
    for group in got.chunk_by(|a, b| a.0 == b.0) {
        empty[shared.lanes[group[0].0].rank] = false;
    }
}

/// Whether some stream gave a read all the `asked` entries it could (so it may hold more).
fn filled(got: &[(usize, StreamEntry)], asked: usize) -> bool {
    got.chunk_by(|a, b| a.0 == b.0).any(|g| g.len() >= asked)
}

async fn read_lanes(
    shared: &Shared,
    conn: &mut DedicatedConnection,
    lanes: &[usize],
    want: usize,
    block: bool,
) -> Result<Vec<(usize, StreamEntry)>> {
    let streams: Vec<&str> = lanes.iter().map(|&i| shared.lanes[i].keys.stream.as_str()).collect();
    let block = block.then_some(shared.config.block);
    let got = conn.read_group(&shared.id, want, block, &streams).await?;
    Ok(got.into_iter().map(|(idx, e)| (lanes[idx], e)).collect())
}

pub(super) async fn recreate_groups(shared: &Shared) {
    let mut conn = shared.conn.clone();
    for lane in &shared.lanes {
        if let Err(e) = broker::ensure_group(&mut conn, &lane.keys.stream).await {
            tracing::warn!(error = %e, stream = %lane.keys.stream, "could not create consumer group");
        }
    }
}
