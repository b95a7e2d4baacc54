//! The reclaimer: takes over entries whose lease ran out because their worker died.
//!
//! `XAUTOCLAIM` with min-idle = lease, following the cursor to `0-0` over successive rounds,
//! taking at most as many entries as there are free handler slots. Live workers renew their
//! leases every `min(lease / 3, 2 s)`, so only orphans are ever idle that long. Entries delivered more
//! than `max_deliveries` times are poison and go to the DLQ inside the same script.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use super::{Shared, WorkerCounters, executor};
use crate::broker::{self, ReclaimArgs, SCAN_START};

/// Most entries taken per call.
const RECLAIM_BATCH: usize = 100;

pub(super) async fn run(shared: Arc<Shared>, quiet: CancellationToken) {
    let mut cursors = vec![SCAN_START; shared.lanes.len()];
    let mut conn = shared.conn.clone();
    loop {
        let interval = shared.config.reclaim_interval().mul_f64(0.8 + 0.4 * fastrand::f64());
        tokio::select! {
            () = quiet.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        for (i, lane) in shared.lanes.iter().enumerate() {
            // A paused queue takes nothing new, its orphans included: they wait for `resume`.
            if lane.paused.load(Ordering::Relaxed) {
                continue;
            }
            loop {
                // With `max_tasks`, budget units bound the claim as free slots do.
                let mut units = shared.try_units(shared.permits.available_permits().min(RECLAIM_BATCH));
                let free = Shared::entries_allowed(&units, shared.permits.available_permits());
                if free == 0 || quiet.is_cancelled() {
                    break;
                }
                let args = ReclaimArgs {
                    keys: &lane.keys,
                    consumer: &shared.id,
                    lease: shared.config.lease,
                    cursor: cursors[i],
                    count: free.min(RECLAIM_BATCH),
                    max_deliveries: shared.config.max_deliveries,
                    dlq_maxlen: shared.config.dlq_maxlen,
                    now_ms: shared.clock.now_ms(),
                };
                let got = match broker::reclaim(&mut conn, args).await {
                    Ok(got) => got,
                    Err(e) => {
                        if broker::is_nogroup(&e) {
                            super::fetcher::recreate_groups(&shared).await;
                        } else {
                            tracing::warn!(error = %e, stream = %lane.keys.stream, "reclaim failed; retrying next round");
                        }
                        break;
                    }
                };
                if got.lost > 0 {
                    tracing::error!(stream = %lane.keys.stream, lost = got.lost, "pending entries pointed at deleted stream entries (counted as lost)");
                }
                if got.poisoned > 0 {
                    tracing::warn!(stream = %lane.keys.stream, poisoned = got.poisoned, "poison tasks moved to the dead-letter stream");
                    WorkerCounters::add(&shared.counters.buried, got.poisoned);
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
                    let permit = shared
                        .permits
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed");
                    executor::dispatch(&shared, i, entry, permit);
                }
                let done = got.next == SCAN_START;
                cursors[i] = got.next;
                if done {
                    break;
                }
            }
        }
    }
}
