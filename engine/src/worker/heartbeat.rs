//! The heartbeat: renews the lease of every entry this worker holds and its registry entry.
//!
//! Leases are renewed for the entries the worker holds in process (read, running, or waiting
//! to be settled), and only while this consumer still owns them (`extend.lua`), so nothing
//! another worker reclaimed is touched. An entry the consumer owns in Redis without holding it
//! (Redis died after a read but before its reply arrived) is not renewed: it ages past the
//! lease and the reclaimer brings it back.
//!
//! The registry entry is written on every beat (`heartbeat_interval`) while the worker holds
//! tasks or its counters moved, so the autoscaler's in-flight counts stay fresh; an idle
//! worker whose record would read the same writes it every `registry_interval` only (a third
//! of the lease, at most 10 s): three commands per 10 s by default. Its time to live is
//! three of those plus a second.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Shared, WorkerCounters, in_flight};
use crate::broker::{self, WorkerRecord};

pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut last = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(shared.config.heartbeat_interval()) => {}
        }
        last = beat(&shared, last).await;
    }
}

/// What the last registry write said (but its time), and when it was made.
pub(super) type Written = Option<(WorkerRecord, tokio::time::Instant)>;

/// Renews leases, and the registry entry unless `last` wrote the same record recently and
/// nothing is held. Returns what the registry now holds.
pub(super) async fn beat(shared: &Shared, last: Written) -> Written {
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
        last_beat: 0,
    };
    let holding = shared
        .lanes
        .iter()
        .any(|l| !l.held.lock().expect("never poisoned").is_empty());
    if let Some((written, at)) = &last
        && !holding
        && *written == record
        && at.elapsed() < shared.config.registry_interval()
    {
        return last;
    }
    let stamped = WorkerRecord {
        last_beat: shared.clock.now_ms(),
        ..record.clone()
    };
    // Were this worker to die now, the tasks it holds (and any it reads before the next write,
    // a beat away when it holds some, else up to `registry_interval`) are past their lease by
    // then: the reclaimers of its queues sweep for them (see `reclaimer`).
    let next_write = if holding {
        shared.config.heartbeat_interval()
    } else {
        shared.config.registry_interval()
    };
    let alive_until =
        stamped.last_beat + crate::envelope::millis(shared.config.lease + next_write + Duration::from_secs(1));
    if let Err(e) = broker::register(&mut conn, &stamped, ttl(shared), alive_until).await {
        shared.redis_failed();
        tracing::warn!(error = %e, "heartbeat failed");
        return None;
    }
    Some((record, tokio::time::Instant::now()))
}

/// How long a registry entry outlives its last write.
fn ttl(shared: &Shared) -> Duration {
    shared.config.registry_interval() * 3 + Duration::from_secs(1)
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
    let mut queues: Vec<String> = shared.lanes.iter().map(|l| l.queue.to_string()).collect();
    queues.dedup();
    if let Err(e) = broker::deregister(&mut conn, &shared.id, &queues).await {
        tracing::warn!(error = %e, "could not deregister");
    }
}
