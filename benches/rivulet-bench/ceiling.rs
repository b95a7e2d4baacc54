//! The ceiling: what Redis itself allows on this machine, measured in the same run with plain
//! redis-rs and no engine. Pipelined `XADD` batches fill a stream with entries shaped like
//! real tasks (the same fields), then consumers loop over one pipeline per batch:
//! `XACK` + `XDEL` of the previous batch and `XREADGROUP COUNT batch` of the next.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use redis::Value;
use rivulet::{Codec, Envelope};
use serde::Serialize;

use crate::payload::{self, KIND_NOOP};
use crate::target::{Target, Usage, Window};

const STREAM: &str = "rivulet-bench:{bare}:stream";
const GROUP: &str = "bare";

#[derive(Debug, Clone, Serialize)]
pub struct CeilingResult {
    pub tasks: u64,
    pub batch: usize,
    pub consumers: usize,
    pub payload_bytes: usize,
    /// Pipelined XADD of `batch` entries per round trip.
    pub xadd_per_s: f64,
    /// XREADGROUP + XACK + XDEL per entry, `consumers` loops in parallel.
    pub drain_per_s: f64,
    pub fill_redis: Usage,
    pub drain_redis: Usage,
    /// CPU of this (client) process per entry while draining.
    pub client_cpu_us_per_entry: f64,
}

pub struct CeilingSpec {
    pub tasks: u64,
    pub batch: usize,
    pub consumers: usize,
    pub payload_bytes: usize,
}

pub async fn run(target: &Target, s: &CeilingSpec) -> Result<CeilingResult> {
    let mut conn = target.conn.clone();
    create(&mut conn, STREAM, GROUP).await?;
    let before = target.snapshot().await?;
    let t0 = Instant::now();
    fill(&mut conn, STREAM, s.tasks, s.batch, s.payload_bytes).await?;
    let fill_s = t0.elapsed().as_secs_f64();
    let after_fill = target.snapshot().await?;

    let cpu = crate::worker::process_cpu_s();
    let t1 = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for i in 0..s.consumers {
        let conn = target.node_connection().await?;
        loops.spawn(consume(conn, format!("c{i}"), s.batch, s.tasks));
    }
    let mut drained = 0;
    while let Some(r) = loops.join_next().await {
        drained += r??;
    }
    let drain_s = t1.elapsed().as_secs_f64();
    let cpu = crate::worker::process_cpu_s() - cpu;
    let after = target.snapshot().await?;
    redis::cmd("DEL").arg(STREAM).query_async::<()>(&mut conn).await?;
    if drained != s.tasks {
        bail!("bare loop drained {drained} of {} entries", s.tasks);
    }
    Ok(CeilingResult {
        tasks: s.tasks,
        batch: s.batch,
        consumers: s.consumers,
        payload_bytes: s.payload_bytes,
        xadd_per_s: s.tasks as f64 / fill_s.max(1e-6),
        drain_per_s: s.tasks as f64 / drain_s.max(1e-6),
        fill_redis: before.usage(&after_fill, s.tasks, Window::Produce, true),
        drain_redis: after_fill.usage(&after, s.tasks, Window::Consume, true),
        client_cpu_us_per_entry: cpu * 1e6 / s.tasks as f64,
    })
}

/// One consumer loop; returns how many entries it acknowledged. Bounded by `max` entries
/// and a time limit.
async fn consume(mut conn: redis::aio::MultiplexedConnection, consumer: String, batch: usize, max: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut prev: Vec<Vec<u8>> = Vec::new();
    let mut acked = 0u64;
    loop {
        if Instant::now() > deadline {
            bail!("bare consumer {consumer} ran past its time limit");
        }
        acked += prev.len() as u64;
        prev = ack_and_read(&mut conn, STREAM, GROUP, &consumer, &prev, batch).await?;
        if prev.is_empty() || acked >= max {
            return Ok(acked);
        }
    }
}

/// A new empty `stream` (deleted first) with consumer group `group`.
pub async fn create(conn: &mut impl redis::aio::ConnectionLike, stream: &str, group: &str) -> Result<()> {
    redis::cmd("DEL").arg(stream).query_async::<()>(conn).await?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Fills `stream` with `tasks` entries shaped like a Rust producer's (compact) no-op tasks of
/// `payload_bytes`, so the bare loops move what the workers do: pipelined `XADD`s, `batch` per
/// round trip.
pub async fn fill(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    tasks: u64,
    batch: usize,
    payload_bytes: usize,
) -> Result<()> {
    let env = Envelope::new(KIND_NOOP, payload::make(payload_bytes, 0, false), Codec::Bytes);
    let fields: Vec<(&str, Bytes)> = env.stream_fields();
    let mut left = tasks;
    while left > 0 {
        let n = left.min(batch as u64);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            let xadd = pipe.cmd("XADD").arg(stream).arg("*");
            for (k, v) in &fields {
                xadd.arg(*k).arg(v.as_ref());
            }
            xadd.ignore();
        }
        pipe.query_async::<()>(conn).await?;
        left -= n;
    }
    Ok(())
}

/// One round trip of a bare consumer: `XACK` + `XDEL` of the entries it read last (`prev`,
/// none on the first call) and `XREADGROUP COUNT batch` of the next, pipelined. Returns the
/// ids it read (none: the stream is drained).
pub async fn ack_and_read(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
    prev: &[Vec<u8>],
    batch: usize,
) -> Result<Vec<Vec<u8>>> {
    let mut pipe = redis::pipe();
    if !prev.is_empty() {
        pipe.cmd("XACK").arg(stream).arg(group).arg(prev).ignore();
        pipe.cmd("XDEL").arg(stream).arg(prev).ignore();
    }
    pipe.cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(batch)
        .arg("STREAMS")
        .arg(stream)
        .arg(">");
    let (reply,): (Value,) = pipe.query_async(conn).await?;
    Ok(entry_ids(reply))
}

/// The entry ids of an XREADGROUP reply (RESP2 or RESP3).
fn entry_ids(reply: Value) -> Vec<Vec<u8>> {
    let streams = match reply {
        Value::Array(items) => items.into_iter().filter_map(|s| match s {
            Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
            _ => None,
        }),
        Value::Map(m) => return m.into_iter().flat_map(|(_, v)| ids_of(v)).collect(),
        _ => return Vec::new(),
    };
    streams.flat_map(ids_of).collect()
}

fn ids_of(entries: Value) -> Vec<Vec<u8>> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| match e {
            Value::Array(mut parts) if !parts.is_empty() => match parts.swap_remove(0) {
                Value::BulkString(id) => Some(id),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
