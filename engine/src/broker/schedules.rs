//! The schedules' commands: definitions, pause flags and last fire times, all in the
//! `{sched}` slot (`keys::SCHEDULES_*`), each change one script or one `MULTI` on that slot.
//! A fire's task is enqueued by the producer's own path (`enqueue.lua`, with a unique key in
//! the target shard's slot); only the schedule's state lives here.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use redis::Script;

use super::RedisConnection;
use crate::error::{Error, Result};
use crate::keys::{SCHEDULES_FIRED_KEY, SCHEDULES_KEY, SCHEDULES_PAUSED_KEY, SCHEDULES_VERSION_KEY};

static PUT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/schedules_put.lua")));
static FIRED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/schedules_fired.lua")));
static PAUSE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/schedules_pause.lua")));

/// What `schedules_put.lua` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutReply {
    Created,
    Updated,
    Unchanged,
    /// `add` of a name that exists: nothing written.
    Exists,
}

/// Stores a definition: `add` refuses a name that exists, otherwise it is created or updated.
pub async fn put_schedule(
    conn: &mut RedisConnection,
    name: &str,
    json: &str,
    add: bool,
    now_ms: u64,
) -> Result<PutReply> {
    let reply: String = PUT
        .key(SCHEDULES_KEY)
        .key(SCHEDULES_FIRED_KEY)
        .key(SCHEDULES_VERSION_KEY)
        .arg(name)
        .arg(json)
        .arg(if add { "add" } else { "put" })
        .arg(now_ms)
        .invoke_async(conn)
        .await?;
    match reply.as_str() {
        "created" => Ok(PutReply::Created),
        "updated" => Ok(PutReply::Updated),
        "unchanged" => Ok(PutReply::Unchanged),
        "exists" => Ok(PutReply::Exists),
        other => Err(Error::protocol(format!("schedules_put.lua replied {other:?}"))),
    }
}

/// Deletes a schedule (definition, state, pause flag); whether it existed.
pub async fn remove_schedule(conn: &mut RedisConnection, name: &str) -> Result<bool> {
    let (removed,): (u64,) = redis::pipe()
        .atomic()
        .hdel(SCHEDULES_KEY, name)
        .hdel(SCHEDULES_FIRED_KEY, name)
        .ignore()
        .srem(SCHEDULES_PAUSED_KEY, name)
        .ignore()
        // INCR, not redis-rs's `incr` (INCRBY): the documented ACL grants `+incr`.
        .cmd("INCR")
        .arg(SCHEDULES_VERSION_KEY)
        .ignore()
        .query_async(conn)
        .await?;
    Ok(removed > 0)
}

/// Pauses (`true`) or resumes a schedule: `None` when there is no such schedule, else whether
/// its state changed.
pub async fn pause_schedule(conn: &mut RedisConnection, name: &str, pause: bool, now_ms: u64) -> Result<Option<bool>> {
    let reply: i64 = PAUSE
        .key(SCHEDULES_KEY)
        .key(SCHEDULES_PAUSED_KEY)
        .key(SCHEDULES_FIRED_KEY)
        .key(SCHEDULES_VERSION_KEY)
        .arg(name)
        .arg(if pause { "pause" } else { "resume" })
        .arg(now_ms)
        .invoke_async(conn)
        .await?;
    Ok(match reply {
        0 => None,
        n => Some(n == 2),
    })
}

/// Moves a schedule's last fire time forward to `fire_ms` (never back); whether it moved.
pub async fn mark_fired(conn: &mut RedisConnection, name: &str, fire_ms: u64) -> Result<bool> {
    let moved: i64 = FIRED
        .key(SCHEDULES_KEY)
        .key(SCHEDULES_FIRED_KEY)
        .arg(name)
        .arg(fire_ms)
        .invoke_async(conn)
        .await?;
    Ok(moved == 1)
}

/// Everything stored about the schedules, in one round trip.
#[derive(Debug, Default)]
pub struct StoredSchedules {
    /// Name -> definition JSON.
    pub defs: HashMap<String, String>,
    /// Name -> last fire time handled.
    pub fired: HashMap<String, u64>,
    /// Paused names.
    pub paused: HashSet<String>,
    /// The version counter.
    pub version: u64,
}

/// `load_schedules`' reply: definitions, last fire times, paused names, version.
type StoredReply = (
    HashMap<String, String>,
    HashMap<String, u64>,
    HashSet<String>,
    Option<u64>,
);

/// Reads every definition, state and pause flag.
pub async fn load_schedules(conn: &mut RedisConnection) -> Result<StoredSchedules> {
    let (defs, fired, paused, version): StoredReply = redis::pipe()
        .hgetall(SCHEDULES_KEY)
        .hgetall(SCHEDULES_FIRED_KEY)
        .smembers(SCHEDULES_PAUSED_KEY)
        .get(SCHEDULES_VERSION_KEY)
        .query_async(conn)
        .await?;
    Ok(StoredSchedules {
        defs,
        fired,
        paused,
        version: version.unwrap_or(0),
    })
}

/// What a scheduler reads on every wake-up: the version counter and the last fire times
/// (two commands in one round trip; the definitions only when the version moved).
pub async fn schedule_state(conn: &mut RedisConnection) -> Result<(u64, HashMap<String, u64>)> {
    let (version, fired): (Option<u64>, HashMap<String, u64>) = redis::pipe()
        .get(SCHEDULES_VERSION_KEY)
        .hgetall(SCHEDULES_FIRED_KEY)
        .query_async(conn)
        .await?;
    Ok((version.unwrap_or(0), fired))
}
