//! The heartbeat: renews the lease of every entry this worker holds and its registry entry.
//!
//! Leases are renewed for the entries the worker holds in process (read, running, or waiting
//! to be settled), and only while this consumer still owns them (`extend.lua`), so nothing
//! another worker reclaimed is touched. An entry the consumer owns in Redis without holding it
//! (Redis died after a read but before its reply arrived) is not renewed: it ages past the
//! lease and the reclaimer brings it back.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Shared, WorkerCounters, in_flight};
use crate::broker::{self, WorkerRecord};

pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(shared.config.heartbeat_interval()) => {}
        }
        beat(&shared).await;
    }
}

/// Renews leases and the registry entry once.
pub(super) async fn beat(shared: &Shared) {
    let mut conn = shared.conn.clone();
    for (i, lane) in shared.lanes.iter().enumerate() {
        let ids = shared.held_ids(i);
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = broker::extend(&mut conn, &lane.keys, &shared.id, &ids).await {
            shared.redis_failed();
            tracing::warn!(error = %e, stream = %lane.keys.stream, "could not renew leases");
        }
    }
    super::limiter::renew(shared).await;
    let mut queues: Vec<String> = shared.lanes.iter().map(|l| l.queue.to_string()).collect();
    queues.dedup();
    let c = &shared.counters;
    let record = WorkerRecord {
        id: shared.id.clone(),
        host: super::hostname(),
        pid: std::process::id(),
        queues,
        concurrency: shared.config.concurrency as u64,
        in_flight: in_flight(shared) as u64,
        started: WorkerCounters::get(&c.started),
        succeeded: WorkerCounters::get(&c.succeeded),
        failed: WorkerCounters::get(&c.failed),
        busy_us: Some(WorkerCounters::get(&c.busy_us)),
        last_beat: shared.clock.now_ms(),
    };
    if let Err(e) = broker::register(&mut conn, &record, ttl(shared)).await {
        shared.redis_failed();
        tracing::warn!(error = %e, "heartbeat failed");
    }
}

/// How long a registry entry outlives its last beat.
fn ttl(shared: &Shared) -> Duration {
    shared.config.heartbeat_interval() * 3 + Duration::from_secs(1)
}

/// Removes the worker from the registry and its consumer from every group it no longer
/// holds entries in (`forget_consumer` keeps a consumer that still owns entries: deleting it
/// would drop them; the reclaimer removes it once they are reclaimed).
pub(super) async fn deregister(shared: &Shared) {
    let mut conn = shared.conn.clone();
    for lane in &shared.lanes {
        match broker::forget_consumer(&mut conn, &lane.keys, &shared.id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(stream = %lane.keys.stream, "consumer still holds entries; keeping it so they are reclaimed")
            }
            Err(e) => tracing::debug!(error = %e, "could not delete consumer"),
        }
    }
    if let Err(e) = broker::deregister(&mut conn, &shared.id).await {
        tracing::warn!(error = %e, "could not deregister");
    }
}
