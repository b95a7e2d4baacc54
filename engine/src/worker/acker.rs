//! The acker: settles outcomes in batches, per shard per batch one `XACKDEL` (or `XACK` +
//! `XDEL`) for the fresh plain successes and one `settle.lua` call for the rest.
//!
//! **Two paths.** A plain success (no task record) settled within
//! `WorkerConfig::fast_ack_window` of its read's reply cannot have been claimed by another
//! worker, so it is acknowledged and deleted with plain commands and counted `done` in the same
//! transaction (`broker::ack_fresh`: `XACKDEL` on Redis 8.2+, `XACK` + `XDEL` before, both
//! measured cheaper than the script; docs/benchmarks.md "What limits the drain"). Everything
//! else goes through `settle.lua`, which checks that this consumer still owns each entry
//! (fencing): failures, buries, requeues, tracked tasks, and any success settled later (a long
//! handler, a frozen process, a batch retried after an outage: the choice is made again on
//! every try).
//!
//! It takes whatever outcomes are waiting (up to `MAX_BATCH`), so under load one round trip
//! settles many tasks and when idle a single outcome goes out at once. While a batch is in
//! flight and a whole next one waits, the fetchers read nothing more ([`Unsettled`]): handlers
//! faster than the settles would otherwise grow its queue without bound, and a long queue
//! makes every batch dearer. A batch that fails
//! (Redis away) is retried with backoff: outcomes are never dropped while the worker runs.
//! Once the worker drains, every call and every wait is bounded by the drain's one deadline
//! (`Shared::drain_deadline`): an outcome not written by then is given up, and its task stays
//! pending under this consumer until a live worker reclaims it after the lease.

use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Outage, Outcome, Shared, WorkerCounters};
use crate::broker::lifecycle::Tracked;
use crate::broker::reader::DedicatedConnection;
use crate::broker::{self, Settle, SettleCtx, StreamId};
use crate::durability::Durability;

/// Most outcomes per script call: Lua's `unpack` takes at most a few thousand values.
const MAX_BATCH: usize = 1000;

/// Outcomes sent to the acker and not yet settled (or given up), and the wait of fetchers for
/// the acker to catch up: while one batch is in flight and a whole next one waits
/// ([`Unsettled::CAP`]), reading more would only lengthen its queue, and with it the stretch
/// of the pending list each batch's `XPENDING` fence scans and the entries `settle.lua` must
/// `XDEL` one by one (docs/benchmarks.md, "An empty priority read with the next, the acker's
/// queue capped, and a bare fleet").
#[derive(Debug, Default)]
pub(super) struct Unsettled {
    count: AtomicUsize,
    settled: Notify,
}

impl Unsettled {
    /// One batch in flight, one waiting.
    pub(super) const CAP: usize = 2 * MAX_BATCH;

    /// An outcome is on its way to the acker.
    pub(super) fn sent(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` outcomes are settled, given up or never arrived: fetchers waiting may read again.
    pub(super) fn done(&self, n: usize) {
        self.count.fetch_sub(n, Ordering::Relaxed);
        self.settled.notify_waiters();
    }

    /// Returns once fewer than [`Self::CAP`] outcomes wait for the acker.
    pub(super) async fn below_cap(&self) {
        // The usual case, without touching the `Notify`'s lock: the acker keeps up.
        if self.count.load(Ordering::Relaxed) < Self::CAP {
            return;
        }
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before the check, so a `done` between the two is not missed.
            settled.as_mut().enable();
            if self.count.load(Ordering::Relaxed) < Self::CAP {
                return;
            }
            settled.await;
        }
    }
}

pub(super) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Outcome>,
    mut link: DedicatedConnection,
    stop: CancellationToken,
) {
    let mut batch: Vec<Outcome> = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            o = rx.recv() => o,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else {
            // Stopping: every handler has finished, so what is queued now is all there is.
            while let Ok(o) = rx.try_recv() {
                batch.push(o);
                if batch.len() == MAX_BATCH {
                    flush(&shared, &mut link, &mut batch).await;
                }
            }
            flush(&shared, &mut link, &mut batch).await;
            return;
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        flush(&shared, &mut link, &mut batch).await;
    }
}

/// Once per settled batch: the waits its queues' durability asks for, on the connection the
/// settles went out on, so one `WAIT` covers every script of the batch. A wait that falls
/// short is logged, not retried: the settles are applied on the master, and if it fails over
/// before its replicas have them, those tasks run again (at-least-once), never get lost.
async fn wait_durable(shared: &Shared, batch: &[Outcome]) {
    // Each durability asked for, with the streams of the shards it covers (on a Redis
    // Cluster the wait goes to each of those shards' masters).
    let mut waits: Vec<(Durability, Vec<&str>)> = Vec::new();
    for group in batch.chunk_by(|a, b| a.lane == b.lane) {
        let lane = &shared.lanes[group[0].lane];
        let d = lane.options.durability;
        if !d.waits() {
            continue;
        }
        match waits.iter_mut().find(|(w, _)| *w == d) {
            Some((_, streams)) => streams.push(&lane.keys.stream),
            None => waits.push((d, vec![&lane.keys.stream])),
        }
    }
    for (d, streams) in waits {
        if let Err(e) = broker::wait_durable(&mut shared.conn.clone(), d, &streams).await {
            tracing::warn!(error = %e, outcomes = batch.len(), durability = %d, "settled, but not confirmed as durable: after a failover these tasks may run again");
        }
    }
}

/// Settles (or, past the drain's deadline, gives up) a batch, then lets fetchers waiting for
/// the acker to catch up read again (`Shared::unsettled`).
async fn flush(shared: &Shared, link: &mut DedicatedConnection, batch: &mut Vec<Outcome>) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len();
    settle(shared, link, batch).await;
    shared.unsettled.done(n);
}

async fn settle(shared: &Shared, link: &mut DedicatedConnection, batch: &mut Vec<Outcome>) {
    batch.sort_by_key(|o| o.lane);
    let mut outage = Outage::new(shared);
    loop {
        // Decided again on every try: a batch retried after an outage may be past the window.
        let now = std::time::Instant::now();
        let window = if shared.fast_acks.load(std::sync::atomic::Ordering::Relaxed) {
            shared.config.fast_ack_window()
        } else {
            std::time::Duration::ZERO
        };
        let groups: Vec<&[Outcome]> = batch.chunk_by(|a, b| a.lane == b.lane).collect();
        let is_fresh: Vec<Vec<bool>> = groups
            .iter()
            .map(|group| fresh_acks(&shared.lanes[group[0].lane], group, now, window))
            .collect();
        let fresh: Vec<Vec<StreamId>> = groups
            .iter()
            .zip(&is_fresh)
            .map(|(group, f)| {
                group
                    .iter()
                    .zip(f)
                    .filter(|(_, f)| **f)
                    .map(|(o, _)| o.entry_id)
                    .collect()
            })
            .collect();
        // Every shard's plain acks in one round trip on the acker's link, then each shard's
        // script (its rest), side by side on the shared connection.
        let acks: Vec<(&crate::keys::ShardKeys, &[StreamId])> = groups
            .iter()
            .zip(&fresh)
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(group, ids)| (&shared.lanes[group[0].lane].keys, ids.as_slice()))
            .collect();
        let all = async {
            let stale_fresh = match link.ack_fresh(&acks, shared.ack_command).await {
                Ok(stale) => stale,
                Err(e) => {
                    // Refused, not failed (an ACL without XACKDEL): the batch's retry and
                    // every later one take the script instead.
                    if refused(&e) && shared.fast_acks.swap(false, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(error = %e, "the server refuses the plain acks; settling every outcome with settle.lua from now on");
                    }
                    return vec![Err(e)];
                }
            };
            let mut stale_fresh = stale_fresh.into_iter();
            let calls = groups.iter().zip(&is_fresh).zip(&fresh).map(|((group, is_fresh), fresh)| {
                let lane = &shared.lanes[group[0].lane];
                let mut conn = shared.conn.clone();
                let stale_fresh = if fresh.is_empty() { 0 } else { stale_fresh.next().unwrap_or(0) };
                async move {
                        let items: Vec<(StreamId, &Settle)> = group
                            .iter()
                            .zip(is_fresh.iter())
                            .filter(|(o, f)| o.track.is_none() && !**f)
                            .map(|(o, _)| (o.entry_id, &o.settle))
                            .collect();
                        let tracked: Vec<(StreamId, &Settle, &Tracked)> = group
                            .iter()
                            .filter_map(|o| o.track.as_ref().map(|t| (o.entry_id, &o.settle, t)))
                            .collect();
                        let ctx = SettleCtx {
                            keys: &lane.keys,
                            consumer: &shared.id,
                            dlq_maxlen: shared.config.dlq_maxlen,
                            now_ms: shared.clock.now_ms(),
                        };
                        let stale = if items.is_empty() && tracked.is_empty() {
                            Vec::new()
                        } else {
                            broker::lifecycle::settle_tracked(&mut conn, ctx, lane.events_maxlen, &items, &tracked).await?
                        };
                        // Fair groups (docs/groups.md): the settled tasks made room in the stream, so
                        // it is refilled from the fair set, right after the settle on the same
                        // connection. Only for shards seen holding grouped tasks; a failed feed is
                        // left to the promoter's round.
                        if lane.grouped.load(std::sync::atomic::Ordering::Relaxed)
                            && let Err(e) = broker::feed(&mut conn, &lane.keys).await
                        {
                            tracing::debug!(error = %e, stream = %lane.keys.stream, "could not feed the stream from the fair set; the promoter will");
                        }
                        Ok::<_, crate::Error>((stale, stale_fresh))
                    }
                });
            futures_util::future::join_all(calls).await
        };
        // While the worker runs, a call waits as long as Redis takes; once it drains, no
        // longer than the drain's deadline.
        let results = match shared.drain_deadline.get() {
            None => all.await,
            Some(&deadline) => match tokio::time::timeout_at(deadline, all).await {
                Ok(results) => results,
                Err(_) => {
                    give_up(batch, "the drain budget ran out");
                    return;
                }
            },
        };
        let mut failed = None;
        for (group, r) in batch.chunk_by(|a, b| a.lane == b.lane).zip(results) {
            match r {
                Ok((stale, stale_fresh)) => {
                    shared.release(group[0].lane, group.iter().map(|o| o.entry_id));
                    // Now in the retry set: the promoter sleeping past one's time wakes for it.
                    for o in group {
                        if let Settle::Retry { due_ms, .. } | Settle::Wait { due_ms, .. } = &o.settle {
                            shared.wake_promoter_by(*due_ms);
                        }
                    }
                    if stale_fresh > 0 {
                        WorkerCounters::add(&shared.counters.fenced, stale_fresh);
                        tracing::warn!(
                            entries = stale_fresh,
                            "acks dropped: these tasks were no longer pending (settled by an earlier try of this batch)"
                        );
                    }
                    if !stale.is_empty() {
                        WorkerCounters::add(&shared.counters.fenced, stale.len() as u64);
                        tracing::warn!(entries = %stale.iter().map(ToString::to_string).collect::<Vec<_>>().join(","), "outcomes dropped: these tasks are no longer this worker's (reclaimed by another, or settled by an earlier try of this batch)");
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        let Some(e) = failed else {
            if outage.recovered() {
                tracing::info!("redis reachable again; outcomes settled");
            }
            wait_durable(shared, batch).await;
            batch.clear();
            return;
        };
        // Settling is idempotent per entry (a settled entry is no longer owned and is skipped
        // as stale), so resending the whole batch after a partial failure is safe.
        let delay = outage.next_delay();
        if let Some(&deadline) = shared.drain_deadline.get()
            && tokio::time::Instant::now() + delay >= deadline
        {
            give_up(batch, &e.to_string());
            return;
        }
        tracing::warn!(error = %e, outcomes = batch.len(), retry_in_ms = delay.as_millis() as u64, "settling failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// Which of one lane's outcomes are plain successes whose read's reply came in less than
/// `window` ago: acknowledged without `settle.lua`'s fence (`broker::ack_fresh`), since nobody can have
/// claimed them yet (`WorkerConfig::fast_ack_window`). Everything else (failures, buries,
/// requeues, tracked tasks, and successes settled later) takes the fenced script.
fn fresh_acks(
    lane: &super::Lane,
    group: &[Outcome],
    now: std::time::Instant,
    window: std::time::Duration,
) -> Vec<bool> {
    // Read after this, an entry is fresh (`now - read < window`, without a `Duration` each).
    let since = now.checked_sub(window);
    let held = lane.held.lock().expect("never poisoned");
    group
        .iter()
        .map(|o| {
            o.track.is_none()
                && matches!(o.settle, Settle::Ack)
                && held
                    .get(&o.entry_id)
                    .is_some_and(|read| since.is_none_or(|since| *read > since))
        })
        .collect()
}

/// Whether Redis refused a fast ack's commands for good (permission, unknown command, or the
/// transaction discarded for either), as opposed to failing for now (connection, OOM,
/// loading, a failover).
fn refused(e: &crate::Error) -> bool {
    let crate::Error::Redis(r) = e else {
        return false;
    };
    match r.code() {
        Some("NOPERM") => true,
        Some("EXECABORT") => !r.to_string().contains("OOM"),
        Some("ERR") => r.to_string().contains("unknown command"),
        _ => false,
    }
}

/// Drops a batch the drain has no time left to write: its tasks stay pending under this
/// consumer (not released, so a heartbeat still running renews them) and are reclaimed after
/// the lease once the worker is gone.
fn give_up(batch: &mut Vec<Outcome>, error: &str) {
    tracing::error!(
        error,
        outcomes = batch.len(),
        "giving up settling within the drain budget; these tasks stay pending and will be reclaimed after the lease"
    );
    batch.clear();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn fetchers_wait_while_two_batches_are_unsettled_and_go_on_when_one_is_written() {
        let u = Unsettled::default();
        for _ in 0..Unsettled::CAP - 1 {
            u.sent();
        }
        // Below the cap: no wait.
        tokio::time::timeout(Duration::from_secs(5), u.below_cap())
            .await
            .unwrap();
        u.sent();
        let waiting = u.below_cap();
        tokio::pin!(waiting);
        assert!(
            waiting.as_mut().now_or_never().is_none(),
            "a fetcher read on with two whole batches unsettled"
        );
        u.done(MAX_BATCH);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap();
    }
}
