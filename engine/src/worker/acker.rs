//! The acker: settles outcomes in batches, one `settle.lua` call per shard per batch.
//!
//! It takes whatever outcomes are waiting (up to `MAX_BATCH`), so under load one round trip
//! settles many tasks and when idle a single outcome goes out at once. A batch that fails
//! (Redis away) is retried with backoff: outcomes are never dropped while the worker runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Outage, Outcome, Shared, WorkerCounters};
use crate::broker::{self, Settle, SettleCtx, StreamId};

/// Most outcomes per script call: Lua's `unpack` takes at most a few thousand values.
const MAX_BATCH: usize = 1000;
/// How long the acker keeps retrying after shutdown began before it gives up on a batch
/// (the tasks then stay pending and are reclaimed after their lease).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Outcome>, stop: CancellationToken) {
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
                    flush(&shared, &mut batch, &stop).await;
                }
            }
            flush(&shared, &mut batch, &stop).await;
            return;
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        flush(&shared, &mut batch, &stop).await;
    }
}

async fn flush(shared: &Shared, batch: &mut Vec<Outcome>, stop: &CancellationToken) {
    if batch.is_empty() {
        return;
    }
    batch.sort_by_key(|o| o.lane);
    let mut outage = Outage::default();
    let mut gave_up_at = None;
    loop {
        let calls = batch.chunk_by(|a, b| a.lane == b.lane).map(|group| {
            let lane = &shared.lanes[group[0].lane];
            let mut conn = shared.conn.clone();
            async move {
                let items: Vec<(StreamId, &Settle)> = group.iter().map(|o| (o.entry_id, &o.settle)).collect();
                let ctx = SettleCtx {
                    keys: &lane.keys,
                    consumer: &shared.id,
                    dlq_maxlen: shared.config.dlq_maxlen,
                    now_ms: shared.clock.now_ms(),
                };
                broker::settle(&mut conn, ctx, &items).await
            }
        });
        let results = futures_util::future::join_all(calls).await;
        let mut failed = None;
        for (group, r) in batch.chunk_by(|a, b| a.lane == b.lane).zip(results) {
            match r {
                Ok(stale) => {
                    shared.release(group[0].lane, group.iter().map(|o| o.entry_id));
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
            batch.clear();
            return;
        };
        // Settling is idempotent per entry (a settled entry is no longer owned and is skipped
        // as stale), so resending the whole batch after a partial failure is safe.
        if stop.is_cancelled() {
            let since = *gave_up_at.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > SHUTDOWN_GRACE {
                tracing::error!(error = %e, outcomes = batch.len(), "giving up settling at shutdown; these tasks stay pending and will be reclaimed after the lease");
                batch.clear();
                return;
            }
        }
        let delay = outage.next_delay();
        tracing::warn!(error = %e, outcomes = batch.len(), retry_in_ms = delay.as_millis() as u64, "settling failed; retrying");
        tokio::time::sleep(delay).await;
    }
}
