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
use crate::broker;
use crate::envelope::now_ms;
use crate::keys::{WORKERS_KEY, worker_key};

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
            tracing::warn!(error = %e, stream = %lane.keys.stream, "could not renew leases");
        }
    }
    let mut queues: Vec<&str> = shared.lanes.iter().map(|l| l.queue.as_str()).collect();
    queues.dedup();
    let c = &shared.counters;
    let ttl = ttl(shared);
    let key = worker_key(&shared.id);
    let r = redis::pipe()
        .zadd(WORKERS_KEY, &shared.id, now_ms())
        .ignore()
        .hset_multiple(
            &key,
            &[
                ("id", shared.id.clone()),
                ("host", super::hostname()),
                ("pid", std::process::id().to_string()),
                ("queues", queues.join(",")),
                ("concurrency", shared.config.concurrency.to_string()),
                ("in_flight", in_flight(shared).to_string()),
                ("started", WorkerCounters::get(&c.started).to_string()),
                ("succeeded", WorkerCounters::get(&c.succeeded).to_string()),
                ("failed", WorkerCounters::get(&c.failed).to_string()),
                ("busy_us", WorkerCounters::get(&c.busy_us).to_string()),
                ("last_beat", now_ms().to_string()),
            ],
        )
        .ignore()
        .pexpire(&key, ttl.as_millis() as i64)
        .ignore()
        .query_async::<()>(&mut conn)
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "heartbeat failed");
    }
}

/// How long a registry entry outlives its last beat.
fn ttl(shared: &Shared) -> Duration {
    shared.config.heartbeat_interval() * 3 + Duration::from_secs(1)
}

/// Removes the worker from the registry and its consumer from every group it no longer
/// holds entries in (deleting a consumer that still holds entries would drop them).
pub(super) async fn deregister(shared: &Shared) {
    let mut conn = shared.conn.clone();
    for lane in &shared.lanes {
        match broker::owned_ids(&mut conn, &lane.keys, &shared.id, 1).await {
            Ok(ids) if ids.is_empty() => {
                if let Err(e) = broker::delete_consumer(&mut conn, &lane.keys, &shared.id).await {
                    tracing::debug!(error = %e, "could not delete consumer");
                }
            }
            Ok(_) => {
                tracing::warn!(stream = %lane.keys.stream, "consumer still holds entries; keeping it so they are reclaimed")
            }
            Err(e) => tracing::debug!(error = %e, "could not check held entries"),
        }
    }
    let r = redis::pipe()
        .zrem(WORKERS_KEY, &shared.id)
        .ignore()
        .del(worker_key(&shared.id))
        .ignore()
        .query_async::<()>(&mut conn)
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not deregister");
    }
}
