//! Fleet-wide limits (`limit_acquire.lua`, `limit_release.lua`) and the registry of their
//! names (`rivulet:limits`), read by `worker-cli limits`.
//!
//! Every key of one limit shares the hash tag `{limit:<name>}`: a limit's home slot, apart
//! from every shard's (see `keys::LimitKeys`).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use super::RedisConnection;
use redis::Script;

use crate::error::Result;
use crate::keys::{LIMITS_KEY, LimitKeys};
use crate::limits::{Limit, LimitStatus, Rate};

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/limit_acquire.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/limit_release.lua")));

/// What `acquire` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Start now (holding a running slot when the limit has a cap).
    Granted,
    /// Not now: come back after this long. Nothing is held.
    Wait(Duration),
}

/// May task `task` (delivered as `holder`) start under `limit` now?
pub async fn acquire(
    conn: &mut RedisConnection,
    keys: &LimitKeys,
    limit: &Limit,
    task: &str,
    holder: &str,
    lease: Duration,
) -> Result<Admission> {
    let (interval, burst) = limit.rate.map_or((0.0, 1), |r: Rate| (r.interval_ms(), r.burst));
    let (wait, _now): (u64, u64) = ACQUIRE
        .key(&keys.state)
        .key(&keys.reserved)
        .key(&keys.running)
        .key(&keys.waiting)
        .arg(task)
        .arg(holder)
        .arg(interval)
        .arg(burst)
        .arg(limit.max_running.unwrap_or(0))
        .arg(lease.as_millis() as u64)
        .arg(limit.rate.map(|r| r.to_string()).unwrap_or_default())
        .invoke_async(conn)
        .await?;
    Ok(if wait == 0 {
        Admission::Granted
    } else {
        Admission::Wait(Duration::from_millis(wait))
    })
}

/// Gives back running slots whose handlers finished, `run_ms` their summed run time.
pub async fn release(conn: &mut RedisConnection, keys: &LimitKeys, holders: &[String], run_ms: f64) -> Result<u64> {
    Ok(RELEASE
        .key(&keys.state)
        .key(&keys.running)
        .arg("r")
        .arg(run_ms)
        .arg(holders)
        .invoke_async(conn)
        .await?)
}

/// Renews the leases of running slots held by live handlers.
pub async fn renew(conn: &mut RedisConnection, keys: &LimitKeys, holders: &[String], lease: Duration) -> Result<u64> {
    Ok(RELEASE
        .key(&keys.state)
        .key(&keys.running)
        .arg("e")
        .arg(lease.as_millis() as u64)
        .arg(holders)
        .invoke_async(conn)
        .await?)
}

/// Records the limits a worker enforces: their names in the registry (`rivulet:limits`), so
/// `worker-cli limits` and the dashboard find them, and their settings (`rate`, `cap`) in each
/// limit's state hash, so what a worker is configured with shows before its first start (the
/// check refreshes them once per second while the limit is in use). A setting the worker does
/// not have for that name is removed: the settings shown are the last worker's to start or to
/// use the limit.
pub async fn register_limits<'a>(
    conn: &mut RedisConnection,
    limits: impl IntoIterator<Item = (&'a str, &'a Limit)>,
) -> Result<()> {
    let limits: Vec<(&str, &Limit)> = limits.into_iter().collect();
    if limits.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = limits.iter().map(|(n, _)| *n).collect();
    redis::cmd("SADD")
        .arg(LIMITS_KEY)
        .arg(&names)
        .query_async::<()>(conn)
        .await?;
    // One round trip per limit (its own slot), once at a worker's start.
    for (name, limit) in limits {
        let k = LimitKeys::new(name);
        let mut set: Vec<(&str, String)> = Vec::new();
        let mut unset: Vec<&str> = Vec::new();
        match limit.rate {
            Some(r) => set.push(("rate", r.to_string())),
            None => unset.push("rate"),
        }
        match limit.max_running {
            Some(c) => set.push(("cap", c.to_string())),
            None => unset.push("cap"),
        }
        let mut pipe = redis::pipe();
        if !set.is_empty() {
            pipe.cmd("HSET").arg(&k.state).arg(&set).ignore();
        }
        if !unset.is_empty() {
            pipe.cmd("HDEL").arg(&k.state).arg(&unset).ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

/// The names of the registered limits, sorted (one `SMEMBERS`).
pub async fn limit_names(conn: &mut RedisConnection) -> Result<Vec<String>> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS").arg(LIMITS_KEY).query_async(conn).await?;
    names.sort();
    Ok(names)
}

/// One limit as it is now (one round trip of 4 commands in its slot); `now_ms` is the
/// reader's clock (it decides which leases and waits still count). A name never used reads
/// as zeros.
pub async fn limit_status(conn: &mut RedisConnection, name: &str, now_ms: u64) -> Result<LimitStatus> {
    let k = LimitKeys::new(name);
    let (state, reserved, running, waiting): (HashMap<String, String>, u64, u64, u64) = redis::pipe()
        .cmd("HGETALL")
        .arg(&k.state)
        .cmd("ZCARD")
        .arg(&k.reserved)
        .cmd("ZCOUNT")
        .arg(&k.running)
        .arg(format!("({now_ms}"))
        .arg("+inf")
        .cmd("ZCARD")
        .arg(&k.waiting)
        .query_async(conn)
        .await?;
    Ok(status(name.to_owned(), &state, reserved, running, waiting, now_ms))
}

/// Every registered limit as it is now; `now_ms` is the reader's clock.
pub async fn limit_statuses(conn: &mut RedisConnection, now_ms: u64) -> Result<Vec<LimitStatus>> {
    let names = limit_names(conn).await?;
    // One round trip per limit: an admin read of a handful of limits.
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(limit_status(conn, &name, now_ms).await?);
    }
    Ok(out)
}

/// The running slots (leases not run out at `now_ms`) of each of these limits, in one
/// pipelined round trip (one `ZCOUNT` per limit, each in its own slot): a group's cap for
/// `worker-cli groups`. A limit never used counts 0.
pub async fn running_counts(conn: &mut RedisConnection, names: &[String], now_ms: u64) -> Result<Vec<u64>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for name in names {
        pipe.cmd("ZCOUNT")
            .arg(LimitKeys::new(name).running)
            .arg(format!("({now_ms}"))
            .arg("+inf");
    }
    Ok(pipe.query_async(conn).await?)
}

/// Shapes one limit's state HASH and counts into its status (pure).
fn status(
    name: String,
    state: &HashMap<String, String>,
    reserved: u64,
    running: u64,
    waiting: u64,
    now_ms: u64,
) -> LimitStatus {
    let num = |f: &str| state.get(f).and_then(|v| v.parse::<f64>().ok());
    let rate = state.get("rate").and_then(|r| r.parse::<Rate>().ok());
    // `cur` counts the second `sec`; `last` the one before it.
    let sec = num("sec").map(|s| s as u64);
    let now_sec = now_ms / 1000;
    let current_rate = match sec {
        Some(s) if s + 1 == now_sec => num("cur").unwrap_or(0.0) as u64,
        Some(s) if s == now_sec => num("last").unwrap_or(0.0) as u64,
        _ => 0,
    };
    LimitStatus {
        name,
        rate,
        max_running: num("cap").map(|c| c as u32),
        current_rate,
        running,
        waiting_for_rate: reserved,
        waiting_for_slot: waiting,
        granted: num("granted").unwrap_or(0.0) as u64,
        waited: num("waited").unwrap_or(0.0) as u64,
    }
}
