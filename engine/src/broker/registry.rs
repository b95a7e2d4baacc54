//! The worker registry: one [`WorkerRecord`] per live worker (a HASH that expires unless its
//! heartbeat renews it) and the [`WORKERS_KEY`] index of them by last beat.
//!
//! The record's encode ([`WorkerRecord::fields`]) and decode ([`WorkerRecord::from_fields`])
//! sit side by side, as `Envelope`'s do: the heartbeat writes with one and the inspector (and
//! through it the autoscaler's collector) reads with the other, so a field renamed on one side
//! cannot silently read as 0 on the other.

use std::collections::HashMap;
use std::time::Duration;

use super::RedisConnection;
use serde::Serialize;

use crate::error::Result;
use crate::keys::{ALIVE_KEY, WORKERS_KEY, worker_key};

/// A live worker, as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRecord {
    /// Worker id (consumer name).
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Queues it serves.
    pub queues: Vec<String>,
    /// Handler slots.
    pub concurrency: u64,
    /// Handlers running at the last beat.
    pub in_flight: u64,
    /// Handlers started.
    pub started: u64,
    /// Handlers that succeeded.
    pub succeeded: u64,
    /// Handlers that failed.
    pub failed: u64,
    /// How long the finished handlers ran, µs; `None` from workers that do not report it.
    pub busy_us: Option<u64>,
    /// Last heartbeat, ms since the epoch.
    pub last_beat: u64,
}

/// The record's field names, in the order they are written.
mod field {
    pub const ID: &str = "id";
    pub const HOST: &str = "host";
    pub const PID: &str = "pid";
    pub const QUEUES: &str = "queues";
    pub const CONCURRENCY: &str = "concurrency";
    pub const IN_FLIGHT: &str = "in_flight";
    pub const STARTED: &str = "started";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    pub const BUSY_US: &str = "busy_us";
    pub const LAST_BEAT: &str = "last_beat";
}

impl WorkerRecord {
    /// The HASH fields that describe this worker (queues comma separated).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (field::ID, self.id.clone()),
            (field::HOST, self.host.clone()),
            (field::PID, self.pid.to_string()),
            (field::QUEUES, self.queues.join(",")),
            (field::CONCURRENCY, self.concurrency.to_string()),
            (field::IN_FLIGHT, self.in_flight.to_string()),
            (field::STARTED, self.started.to_string()),
            (field::SUCCEEDED, self.succeeded.to_string()),
            (field::FAILED, self.failed.to_string()),
        ];
        if let Some(busy) = self.busy_us {
            out.push((field::BUSY_US, busy.to_string()));
        }
        out.push((field::LAST_BEAT, self.last_beat.to_string()));
        out
    }

    /// Reads a record back from its HASH, `id` being its member of [`WORKERS_KEY`]. A missing
    /// or unparsable number reads as 0 (a record written by an older version), except
    /// `busy_us`, which older workers did not report: `None`.
    pub fn from_fields(id: &str, fields: &HashMap<String, String>) -> Self {
        let num = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0u64);
        WorkerRecord {
            id: id.to_owned(),
            host: fields.get(field::HOST).cloned().unwrap_or_default(),
            pid: fields.get(field::PID).and_then(|v| v.parse().ok()).unwrap_or(0),
            queues: fields
                .get(field::QUEUES)
                .filter(|q| !q.is_empty())
                .map(|q| q.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            concurrency: num(field::CONCURRENCY),
            in_flight: num(field::IN_FLIGHT),
            started: num(field::STARTED),
            succeeded: num(field::SUCCEEDED),
            failed: num(field::FAILED),
            busy_us: fields.get(field::BUSY_US).and_then(|v| v.parse().ok()),
            last_beat: num(field::LAST_BEAT),
        }
    }
}

/// Writes a worker's record, its place in [`WORKERS_KEY`] (scored by `last_beat`) and its
/// [`ALIVE_KEY`] members (one per queue it serves, scored `alive_until`), in one round trip;
/// the record expires after `ttl` unless written again.
pub async fn register(
    conn: &mut RedisConnection,
    record: &WorkerRecord,
    ttl: Duration,
    alive_until: u64,
) -> Result<()> {
    let key = worker_key(&record.id);
    let mut pipe = redis::pipe();
    pipe.zadd(WORKERS_KEY, &record.id, record.last_beat)
        .ignore()
        .hset_multiple(&key, &record.fields())
        .ignore()
        .pexpire(&key, i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
        .ignore();
    if !record.queues.is_empty() {
        let members: Vec<(u64, String)> = record
            .queues
            .iter()
            .map(|q| (alive_until, alive_member(q, &record.id)))
            .collect();
        pipe.zadd_multiple(ALIVE_KEY, &members).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// Removes a worker's record, its place in [`WORKERS_KEY`] and its [`ALIVE_KEY`] members.
pub async fn deregister(conn: &mut RedisConnection, worker_id: &str, queues: &[String]) -> Result<()> {
    let mut pipe = redis::pipe();
    pipe.zrem(WORKERS_KEY, worker_id)
        .ignore()
        .del(worker_key(worker_id))
        .ignore();
    if !queues.is_empty() {
        let members: Vec<String> = queues.iter().map(|q| alive_member(q, worker_id)).collect();
        pipe.zrem(ALIVE_KEY, members).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// An [`ALIVE_KEY`] member: queue names and worker ids have no spaces.
fn alive_member(queue: &str, worker_id: &str) -> String {
    format!("{queue} {worker_id}")
}

/// The [`ALIVE_KEY`] members whose time passed, as (queue, worker id): workers that stopped
/// beating (died) while serving those queues. One command; empty in a healthy fleet.
pub async fn expired_alive(conn: &mut RedisConnection, now_ms: u64) -> Result<Vec<(String, String)>> {
    let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(ALIVE_KEY)
        .arg("-inf")
        .arg(now_ms)
        .query_async(conn)
        .await?;
    Ok(members
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(q, w)| (q.to_owned(), w.to_owned())))
        .collect())
}

/// Removes the [`ALIVE_KEY`] members whose time passed before `before_ms`: dead workers of
/// queues no live worker serves any more, which nobody sweeps (and forgets) otherwise.
pub async fn prune_alive(conn: &mut RedisConnection, before_ms: u64) -> Result<u64> {
    Ok(redis::cmd("ZREMRANGEBYSCORE")
        .arg(ALIVE_KEY)
        .arg("-inf")
        .arg(format!("({before_ms}"))
        .query_async(conn)
        .await?)
}

/// Removes [`ALIVE_KEY`] members (queue, worker id) whose queue's lanes were swept.
pub async fn forget_alive(conn: &mut RedisConnection, members: &[(String, String)]) -> Result<()> {
    if members.is_empty() {
        return Ok(());
    }
    let members: Vec<String> = members.iter().map(|(q, w)| alive_member(q, w)).collect();
    redis::cmd("ZREM")
        .arg(ALIVE_KEY)
        .arg(members)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Whether a worker's record is live (written by a heartbeat within its time to live).
pub async fn is_registered(conn: &mut RedisConnection, worker_id: &str) -> Result<bool> {
    let n: i64 = redis::cmd("EXISTS")
        .arg(worker_key(worker_id))
        .query_async(conn)
        .await?;
    Ok(n == 1)
}

/// Every live worker's record, in [`WORKERS_KEY`] order. Index entries whose record expired
/// (the worker died without deregistering) are pruned on the way.
pub async fn live_workers(conn: &mut RedisConnection) -> Result<Vec<WorkerRecord>> {
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(WORKERS_KEY)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(worker_key(&id)).query_async(conn).await?;
        if fields.is_empty() {
            redis::cmd("ZREM")
                .arg(WORKERS_KEY)
                .arg(&id)
                .query_async::<()>(conn)
                .await?;
            continue;
        }
        out.push(WorkerRecord::from_fields(&id, &fields));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(busy_us: Option<u64>) -> WorkerRecord {
        WorkerRecord {
            id: "host-1-abc".into(),
            host: "host".into(),
            pid: 4242,
            queues: vec!["emails".into(), "images".into()],
            concurrency: 8,
            in_flight: 3,
            started: 100,
            succeeded: 90,
            failed: 7,
            busy_us,
            last_beat: 1_700_000_000_123,
        }
    }

    fn as_hash(r: &WorkerRecord) -> HashMap<String, String> {
        r.fields().into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn a_worker_record_reads_back_as_written() {
        for busy in [Some(12_345), None] {
            let written = record(busy);
            assert_eq!(WorkerRecord::from_fields(&written.id, &as_hash(&written)), written);
        }
        let idle = WorkerRecord {
            queues: Vec::new(),
            ..record(Some(0))
        };
        assert_eq!(WorkerRecord::from_fields(&idle.id, &as_hash(&idle)), idle);
    }

    #[test]
    fn a_record_from_an_older_worker_reads_missing_numbers_as_zero() {
        let old: HashMap<String, String> = [("host", "h"), ("pid", "7"), ("queues", "q")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let r = WorkerRecord::from_fields("w", &old);
        assert_eq!(
            (r.pid, r.concurrency, r.busy_us, r.queues),
            (7, 0, None, vec!["q".to_owned()])
        );
    }
}
