//! Every Redis command the engine issues, and the Lua scripts behind each state change.
//!
//! Each state move is one script (`scripts/*.lua`, headed by its KEYS/ARGV/Returns contract) on
//! one shard, so it is atomic and touches a single Cluster slot; every key a script touches
//! arrives in `KEYS`, built by `keys.rs`. Everything else in the workspace calls these
//! functions and never builds a command itself: `engine/tests/broker_owns_redis.rs` fails the
//! build otherwise.
//!
//! # Layout
//! - [`target`]: where Redis is ([`RedisTarget`], parsed from the URL: one node, a Cluster, or
//!   a master behind Sentinel) and the connection every call here takes ([`RedisConnection`]);
//! - this file: [`StreamId`] and [`StreamEntry`] (parsed once, where entries are
//!   read), and the reply decoding the other files share;
//! - [`queues`]: the queue registry (layouts in `rivulet:queues`) and consumer groups;
//! - [`stream`]: producing (`XADD`), reading (`XREADGROUP`, `XRANGE`) and the
//!   pending list (`XPENDING`);
//! - [`settle`]: a task's state changes and their scripts (`settle.lua`, `promote.lua`,
//!   `reclaim.lua`, `extend.lua`), and [`DeadReason`];
//! - [`registry`]: the worker registry ([`WorkerRecord`], one codec for writer and readers);
//! - [`functions`]: the `rivulet_v1` Redis Functions library generated from the scripts that
//!   producers in any language call (enqueue, cancel, wait, inspect, replay), its install and
//!   the `FCALL` path the engine uses for them too;
//! - [`lifecycle`]: task records, events, unique keys, cancel and wait (`enqueue.lua`,
//!   `start.lua`, `progress.lua`, `cancel.lua`, `wait.lua`; tracked outcomes through
//!   `settle.lua`, replayed records through `replay.lua`);
//! - [`groups`]: fair groups' settings and state (each shard's `groups` hash and `fair` set;
//!   the moves are `enqueue.lua`, `promote.lua` and `feed.lua`, sharing `fair.lua`);
//! - [`limits`]: fleet-wide rate and concurrency limits (`limit_acquire.lua`,
//!   `limit_release.lua`) in each limit's home slot, and the registry of their names;
//! - [`schedules`]: the schedules' definitions, pause flags and last fire times in the
//!   `{sched}` slot (`schedules_put.lua`, `schedules_fired.lua`, `schedules_pause.lua`);
//! - [`server`]: `INFO` at start ([`ServerInfo`](crate::ServerInfo)) and the durability waits
//!   (`WAIT`, `WAITAOF`) after writes;
//! - [`admin`]: inspection, dead-letter replay, pause flags, queue deletion, the autoscaler's
//!   stored decision, the demo's samples and the reachability check.
//!
//! Time is an argument (`now_ms`) wherever a script or a record needs it: the broker never
//! reads the clock, its callers do (see `crate::clock`).

pub(crate) mod admin;
pub(crate) mod functions;
pub(crate) mod groups;
pub(crate) mod lifecycle;
pub(crate) mod limits;
pub(crate) mod queues;
pub(crate) mod reader;
pub(crate) mod registry;
pub(crate) mod schedules;
pub(crate) mod server;
pub(crate) mod settle;
pub(crate) mod stream;
pub(crate) mod target;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use redis::{RedisWrite, ToRedisArgs, Value};

pub(crate) use admin::*;
pub(crate) use groups::*;
pub(crate) use queues::*;
pub use registry::WorkerRecord;
pub(crate) use registry::{
    deregister, expired_alive, forget_alive, is_registered, live_workers, prune_alive, register,
};
pub(crate) use server::*;
pub use settle::DeadReason;
pub(crate) use settle::*;
pub(crate) use stream::*;
pub use target::{RedisConnection, RedisTarget, URL_SHAPES};

use crate::error::{Error, Result};

/// A map keyed by entry id with a cheap hash (FxHash's multiply-rotate) instead of SipHash:
/// ids come from Redis, not from people, so there is no flooding to defend against, and the
/// worker inserts and removes one per task (`Lane::held`).
pub(crate) type IdMap<V> = std::collections::HashMap<StreamId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// The hasher of [`IdMap`] (for the two `u64`s of a [`StreamId`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A stream entry id `ms-seq`, parsed once where entries are read. Ordered by number
/// (`10-0` after `9-9`), copied without allocating, and written back to Redis as `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// Milliseconds part: when Redis added the entry.
    pub ms: u64,
    /// Sequence within that millisecond.
    pub seq: u64,
}

impl StreamId {
    /// Parses `ms-seq`; `None` for anything else.
    pub fn parse(id: &str) -> Option<Self> {
        Self::parse_ascii(id.as_bytes())
    }

    /// [`parse`](Self::parse) on bytes: two runs of decimal digits around one dash, each a
    /// `u64` (no sign, no spaces). By hand, as every entry read and every id settled pays it:
    /// through `str::parse` it was a tenth of decoding an entry (docs/benchmarks.md).
    fn parse_ascii(id: &[u8]) -> Option<Self> {
        let dash = id.iter().position(|&b| b == b'-')?;
        Some(StreamId {
            ms: crate::ascii::decimal(&id[..dash])?,
            seq: crate::ascii::decimal(&id[dash + 1..])?,
        })
    }

    fn parse_bytes(id: &[u8]) -> Result<Self> {
        Self::parse_ascii(id).ok_or_else(|| Error::protocol(format!("stream id {:?}", String::from_utf8_lossy(id))))
    }

    /// The id in Redis's text form, without allocating: `u64::MAX-u64::MAX` is 41 bytes.
    /// Written with `itoa` (the formatting machinery of `write!` cost as much as the rest of
    /// packing a batch of acks).
    fn write(self, buf: &mut [u8; 41]) -> &[u8] {
        let (mut ms, mut seq) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (ms, seq) = (ms.format(self.ms).as_bytes(), seq.format(self.seq).as_bytes());
        let dash = ms.len();
        let end = dash + 1 + seq.len();
        buf[..dash].copy_from_slice(ms);
        buf[dash] = b'-';
        buf[dash + 1..end].copy_from_slice(seq);
        &buf[..end]
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0; 41];
        f.pad(std::str::from_utf8(self.write(&mut buf)).expect("digits and a dash"))
    }
}

impl FromStr for StreamId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s).ok_or_else(|| Error::protocol(format!("stream id {s:?}")))
    }
}

impl ToRedisArgs for StreamId {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        out.write_arg(self.write(&mut [0; 41]));
    }
}

/// One entry read from a stream.
#[derive(Debug)]
pub struct StreamEntry {
    /// The stream entry id.
    pub id: StreamId,
    /// The entry's fields in order. `Bytes`, so that the fetchers' reader can hand out slices
    /// of one copy of the entry (`reader`), and a redis-rs reply's buffers move in uncopied.
    pub fields: Vec<(bytes::Bytes, bytes::Bytes)>,
}

/// The lowest and highest of some stream ids (`None` for none).
fn id_range(ids: impl Iterator<Item = StreamId>) -> Option<(StreamId, StreamId)> {
    ids.fold(None, |range, id| match range {
        None => Some((id, id)),
        Some((lo, hi)) => Some((lo.min(id), hi.max(id))),
    })
}

/// Parses a list of `[id, [field, value, ...]]` entries.
fn entries(v: Value) -> Result<Vec<StreamEntry>> {
    let Value::Array(items) = v else {
        return Err(Error::protocol(format!("entry list {v:?}")));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut parts) = item else {
            return Err(Error::protocol("stream entry is not an array"));
        };
        if parts.len() != 2 {
            return Err(Error::protocol("stream entry is not [id, fields]"));
        }
        let fields = parts.pop().expect("length checked: 2");
        let id = StreamId::parse_bytes(&bulk(parts.pop().expect("length checked: 2"))?)?;
        let flat = match fields {
            Value::Array(f) => f,
            // A deleted entry still in a PEL reads as nil fields.
            Value::Nil => Vec::new(),
            Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            other => return Err(Error::protocol(format!("entry fields {other:?}"))),
        };
        let mut pairs = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((bulk(k)?.into(), bulk(v)?.into()));
        }
        out.push(StreamEntry { id, fields: pairs });
    }
    Ok(out)
}

/// Stream ids in a reply (a list of strings), parsed.
fn stream_ids(ids: Vec<String>) -> Result<Vec<StreamId>> {
    ids.iter().map(|id| id.parse()).collect()
}

fn bulk(v: Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(Error::protocol(format!("expected a string, got {other:?}"))),
    }
}

fn string(v: Value) -> Result<String> {
    String::from_utf8(bulk(v)?).map_err(|_| Error::protocol("id is not UTF-8"))
}

fn int(v: Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(i),
        other => Err(Error::protocol(format!("expected an integer, got {other:?}"))),
    }
}
