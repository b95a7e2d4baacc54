//! Wire format v1: a task is one stream entry of flat string fields (see `docs/wire-format.md`),
//! or, as Rust producers write a task's first entry, a compact one whose five common fields are
//! packed into one (`task`).
//!
//! `Envelope::fields` writes an entry flat, `Envelope::stream_fields` compact,
//! `Envelope::from_fields` reads either back and says exactly which field is missing or
//! malformed, so a bad entry can be buried with a useful reason.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backoff::RetryPolicy;
use crate::error::{Error, Result};

/// A task's unique id: stable across retries, replays and requeues.
///
/// Shared, not copied, when cloned: a worker hands it to the handler, its logs and its record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(std::sync::Arc<str>);

impl Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl TaskId {
    /// A new id: 12 hex digits of milliseconds then 16 random hex digits, so ids sort by
    /// creation time and collide with negligible probability.
    pub fn generate() -> Self {
        TaskId(format!("{:012x}{:016x}", now_ms(), fastrand::u64(..)).into())
    }

    /// Wraps an id chosen by the caller (for example an idempotency key).
    pub fn from_string(id: impl Into<String>) -> Self {
        TaskId(id.into().into())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The field a compact entry packs its five common fields into: a MessagePack array of five
/// strings, `[id, kind, codec, enqueued_at, payload]` (docs/wire-format.md, "Compact entries").
pub const TASK_FIELD: &str = "task";

/// The five fields [`TASK_FIELD`] packs, in its order.
const PACKED: [&str; 5] = ["id", "kind", "codec", "enqueued_at", "payload"];

/// A compact entry's `task` value as its five strings, each sharing `task`'s buffer.
fn unpack_task(task: &Bytes) -> Result<[Bytes; 5], Malformed> {
    Ok(unpack_task_slices(task)?.map(|s| if s.is_empty() { Bytes::new() } else { task.slice_ref(s) }))
}

/// A compact entry's `task` value as its five strings, in place.
fn unpack_task_slices(task: &[u8]) -> Result<[&[u8]; 5], Malformed> {
    let bad = || {
        Malformed(format!(
            "field {TASK_FIELD:?} is not a MessagePack array of 5 strings (id, kind, codec, enqueued_at, payload)"
        ))
    };
    let (count, mut at) = crate::msgpack::array(task).ok_or_else(bad)?;
    if count != PACKED.len() {
        return Err(bad());
    }
    let mut next = || crate::msgpack::string(task, &mut at).ok_or_else(bad);
    let parts = [next()?, next()?, next()?, next()?, next()?];
    if at != task.len() {
        return Err(bad());
    }
    Ok(parts)
}

/// Field `name` of an entry as read from a stream, flat or inside its [`TASK_FIELD`]: for
/// code that needs one field of an entry that may not decode (a malformed entry's id).
pub fn entry_field(fields: &[(Bytes, Bytes)], name: &str) -> Option<Bytes> {
    if let Some((_, v)) = fields.iter().find(|(k, _)| k == name.as_bytes()) {
        return Some(v.clone());
    }
    let at = PACKED.iter().position(|n| *n == name)?;
    let (_, task) = fields.iter().find(|(k, _)| k == TASK_FIELD.as_bytes())?;
    unpack_task(task).ok().map(|parts| parts[at].clone())
}

/// How a payload's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    /// JSON (the default: readable and produced by any language).
    #[default]
    Json,
    /// MessagePack via `rmp-serde` (compact, binary).
    MsgPack,
    /// Opaque bytes handed to the handler as they are.
    Bytes,
}

impl Codec {
    /// The name used in the `codec` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
            Codec::Bytes => "bytes",
        }
    }

    /// Parses a `codec` field.
    pub fn parse(s: &[u8]) -> Option<Self> {
        match s {
            b"json" => Some(Codec::Json),
            b"msgpack" => Some(Codec::MsgPack),
            b"bytes" => Some(Codec::Bytes),
            _ => None,
        }
    }

    /// Encodes a value with this codec (`Bytes` takes JSON's place for typed values).
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes> {
        match self {
            Codec::Json | Codec::Bytes => serde_json::to_vec(value).map(Bytes::from).map_err(|e| Error::Codec {
                codec: "json",
                reason: e.to_string(),
            }),
            Codec::MsgPack => rmp_serde::to_vec_named(value)
                .map(Bytes::from)
                .map_err(|e| Error::Codec {
                    codec: "msgpack",
                    reason: e.to_string(),
                }),
        }
    }

    /// Decodes a payload with this codec. `Bytes` payloads are read as JSON when a typed
    /// value is asked for.
    pub fn decode<T: DeserializeOwned>(self, payload: &[u8]) -> Result<T> {
        match self {
            Codec::Json | Codec::Bytes => serde_json::from_slice(payload).map_err(|e| Error::Codec {
                codec: self.as_str(),
                reason: e.to_string(),
            }),
            Codec::MsgPack => rmp_serde::from_slice(payload).map_err(|e| Error::Codec {
                codec: "msgpack",
                reason: e.to_string(),
            }),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task as it travels on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique id, stable across retries.
    pub id: TaskId,
    /// Handler name.
    pub kind: String,
    /// Encoded payload.
    pub payload: Bytes,
    /// How `payload` is encoded.
    pub codec: Codec,
    /// When the task was first enqueued, ms since the epoch.
    pub enqueued_at: u64,
    /// Failed attempts so far (0 on the first run).
    pub attempt: u32,
    /// Overrides the worker's attempt limit for this task.
    pub max_attempts: Option<u32>,
    /// Overrides the worker's handler timeout for this task, in ms.
    pub timeout_ms: Option<u64>,
    /// Overrides the retry delay ceiling of the first retry, in ms.
    pub backoff_base_ms: Option<u64>,
    /// Overrides the growth of the retry delay ceiling per attempt (>= 1).
    pub backoff_factor: Option<f64>,
    /// Overrides the largest retry delay, in ms.
    pub backoff_cap_ms: Option<u64>,
    /// The last failure, when `attempt > 0`.
    pub error: Option<String>,
    /// Overrides the queue's retention of this task's record, in ms (0 = keep no record).
    pub retention_ms: Option<u64>,
    /// The unique key this task holds (see `docs/tasks.md`).
    pub unique_key: Option<String>,
    /// How long the unique key is held from enqueue, in ms; absent or 0 = until the task
    /// reaches a final state.
    pub unique_ttl_ms: Option<u64>,
    /// The fleet-wide limit this task counts against (see [`crate::limits`]); its kind when
    /// absent.
    pub limit_key: Option<String>,
    /// The fair group this task belongs to (a tenant, say: see `docs/groups.md`): within its
    /// priority, groups with waiting tasks are served in turn.
    pub group: Option<String>,
}

/// Why an entry is not a valid task. The text goes into the dead letter's `error` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

/// The rule every task kind obeys, checked at enqueue and again when an entry is read: a kind
/// names a handler, and no handler can be routed under an empty name.
pub(crate) fn check_kind(kind: &str) -> Result<(), Malformed> {
    if kind.is_empty() {
        Err(Malformed("field \"kind\" is empty".into()))
    } else {
        Ok(())
    }
}

/// The rule a task's own timeout obeys, checked at enqueue and again when an entry is read:
/// `timeout_ms = 0` would time every attempt out before the handler ran, so the task would die
/// `exhausted` without ever running.
pub(crate) fn check_timeout(timeout_ms: Option<u64>) -> Result<(), Malformed> {
    if timeout_ms == Some(0) {
        Err(Malformed(
            "field \"timeout_ms\" is 0: a task's timeout must be at least 1 ms (leave it out for the worker's)".into(),
        ))
    } else {
        Ok(())
    }
}

/// Most characters of a group's name.
pub const MAX_GROUP_LEN: usize = 64;

/// The rule a task's group obeys, checked at enqueue and again when an entry is read: 1 to
/// [`MAX_GROUP_LEN`] characters of `A-Z a-z 0-9 . _ - : /`, so `group:<name>` is always a valid
/// limit name (a per-group cap is a limit of that name) and the name never holds a hash tag.
pub fn check_group(group: &str) -> Result<(), Malformed> {
    if group.is_empty() {
        return Err(Malformed("field \"group\" is empty".into()));
    }
    if group.len() > MAX_GROUP_LEN {
        return Err(Malformed(format!(
            "field \"group\" is longer than {MAX_GROUP_LEN} characters: {group:?}"
        )));
    }
    if let Some(c) = group
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
    {
        return Err(Malformed(format!(
            "field \"group\" {group:?} has {c:?}; a group may only contain A-Z, a-z, 0-9, '.', '_', '-', ':' and '/'"
        )));
    }
    Ok(())
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Envelope {
    /// A fresh envelope (attempt 0, enqueued now, a generated id).
    pub fn new(kind: impl Into<String>, payload: Bytes, codec: Codec) -> Self {
        Envelope {
            id: TaskId::generate(),
            kind: kind.into(),
            payload,
            codec,
            enqueued_at: now_ms(),
            attempt: 0,
            max_attempts: None,
            timeout_ms: None,
            backoff_base_ms: None,
            backoff_factor: None,
            backoff_cap_ms: None,
            error: None,
            retention_ms: None,
            unique_key: None,
            unique_ttl_ms: None,
            limit_key: None,
            group: None,
        }
    }

    /// The name of the per-group cap's limit for this task's group (`group:<group>`), when it
    /// has one.
    pub fn group_limit_name(&self) -> Option<String> {
        self.group.as_ref().map(|g| format!("group:{g}"))
    }

    /// The name of the limit this task counts against: its `limit_key`, else its kind.
    pub fn limit_name(&self) -> &str {
        self.limit_key.as_deref().unwrap_or(&self.kind)
    }

    /// The retry policy for this task: `policy` (the worker's, queue's or kind's) with the
    /// task's own limits and backoff in place of it where the envelope carries them. A
    /// combination that makes no sense (a cap below the base) is an error, not a repair.
    pub fn retry_policy(&self, policy: RetryPolicy) -> Result<RetryPolicy, Malformed> {
        let ms = Duration::from_millis;
        let p = RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(policy.max_attempts),
            base: self.backoff_base_ms.map_or(policy.base, ms),
            factor: self.backoff_factor.unwrap_or(policy.factor),
            cap: self.backoff_cap_ms.map_or(policy.cap, ms),
            jitter: policy.jitter,
        };
        p.validate()
            .map_err(|e| Malformed(format!("the task's retry settings: {e}")))?;
        Ok(p)
    }

    /// The entry's fields, in wire order, ready for `XADD`: every field flat (the form any
    /// producer can write and every moved entry takes: retries, dead letters, requeues). A field
    /// at its documented default (`codec` json, `attempt` 0) is left out.
    pub fn fields(&self) -> Vec<(&'static str, Bytes)> {
        let mut f = Vec::with_capacity(12);
        f.push(("id", Bytes::copy_from_slice(self.id.as_str().as_bytes())));
        f.push(("kind", Bytes::copy_from_slice(self.kind.as_bytes())));
        f.push(("payload", self.payload.clone()));
        if self.codec != Codec::Json {
            f.push(("codec", Bytes::from_static(self.codec.as_str().as_bytes())));
        }
        f.push(("enqueued_at", Bytes::from(self.enqueued_at.to_string())));
        self.push_rare_fields(&mut f);
        f
    }

    /// The fields of a task's first entry in its stream as Rust producers write it: the five
    /// fields every task has (`id`, `kind`, `codec`, `enqueued_at`, `payload`) packed into one
    /// [`TASK_FIELD`], the rest flat as in [`fields`](Self::fields) (docs/wire-format.md,
    /// "Compact entries"). Redis's work per entry (storing, reading, acknowledging) and the
    /// worker's grow with the number of fields: one instead of four or five is what this is
    /// for (docs/benchmarks.md).
    pub fn stream_fields(&self) -> Vec<(&'static str, Bytes)> {
        let enqueued_at = self.enqueued_at.to_string();
        let parts: [&[u8]; 5] = [
            self.id.as_str().as_bytes(),
            self.kind.as_bytes(),
            self.codec.as_str().as_bytes(),
            enqueued_at.as_bytes(),
            &self.payload,
        ];
        if parts.iter().any(|p| u32::try_from(p.len()).is_err()) {
            // Past what a MessagePack string holds (4 GiB, far past Redis's own limit): flat.
            return self.fields();
        }
        let mut packed = Vec::with_capacity(parts.iter().map(|p| p.len() + 5).sum::<usize>() + 1);
        rmp::encode::write_array_len(&mut packed, parts.len() as u32).expect("writing to a Vec");
        for part in parts {
            // A str, whatever the bytes: Lua's cmsgpack (settle.lua) decodes no bin type.
            crate::msgpack::put_str(&mut packed, part);
        }
        let mut f = Vec::with_capacity(4);
        f.push((TASK_FIELD, Bytes::from(packed)));
        self.push_rare_fields(&mut f);
        f
    }

    /// The optional fields that are not at their default, flat, in wire order.
    fn push_rare_fields(&self, f: &mut Vec<(&'static str, Bytes)>) {
        if self.attempt != 0 {
            f.push(("attempt", Bytes::from(self.attempt.to_string())));
        }
        if let Some(n) = self.max_attempts {
            f.push(("max_attempts", Bytes::from(n.to_string())));
        }
        if let Some(ms) = self.timeout_ms {
            f.push(("timeout_ms", Bytes::from(ms.to_string())));
        }
        if let Some(ms) = self.backoff_base_ms {
            f.push(("backoff_base_ms", Bytes::from(ms.to_string())));
        }
        if let Some(x) = self.backoff_factor {
            f.push(("backoff_factor", Bytes::from(x.to_string())));
        }
        if let Some(ms) = self.backoff_cap_ms {
            f.push(("backoff_cap_ms", Bytes::from(ms.to_string())));
        }
        if let Some(e) = &self.error {
            f.push(("error", Bytes::copy_from_slice(e.as_bytes())));
        }
        if let Some(ms) = self.retention_ms {
            f.push(("retention_ms", Bytes::from(ms.to_string())));
        }
        if let Some(k) = &self.unique_key {
            f.push(("unique_key", Bytes::copy_from_slice(k.as_bytes())));
        }
        if let Some(ms) = self.unique_ttl_ms {
            f.push(("unique_ttl_ms", Bytes::from(ms.to_string())));
        }
        if let Some(k) = &self.limit_key {
            f.push(("limit_key", Bytes::copy_from_slice(k.as_bytes())));
        }
        if let Some(g) = &self.group {
            f.push(("group", Bytes::copy_from_slice(g.as_bytes())));
        }
    }

    /// Reads an entry's fields (name, value pairs). Unknown fields are ignored, so newer
    /// producers can add fields without breaking older workers.
    pub fn from_fields<K, V, I>(fields: I) -> Result<Self, Malformed>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]> + Into<Bytes>,
        I: IntoIterator<Item = (K, V)>,
    {
        Self::decode(fields, Into::into)
    }

    /// [`from_fields`](Self::from_fields) of an entry as read, borrowed: of its buffers only
    /// the payload's is shared with the envelope (one reference count), where cloning every
    /// field to decode it counted each up and down again, across threads once the task ran
    /// on a runner.
    pub(crate) fn from_entry(fields: &[(Bytes, Bytes)]) -> Result<Self, Malformed> {
        Self::decode(fields.iter().map(|(k, v)| (k, v)), Bytes::clone)
    }

    /// Decodes fields whose values are read in place; `bytes` turns the one value the
    /// envelope keeps (the payload, or the packed `task` it is cut from) into its `Bytes`.
    fn decode<K, V, I>(fields: I, bytes: impl Fn(V) -> Bytes) -> Result<Self, Malformed>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
        I: IntoIterator<Item = (K, V)>,
    {
        let (mut id, mut kind, mut payload, mut codec, mut enqueued_at) = (None, None, None, None, None);
        let (mut attempt, mut max_attempts, mut timeout_ms, mut error) = (None, None, None, None);
        let (mut backoff_base_ms, mut backoff_factor, mut backoff_cap_ms) = (None, None, None);
        let (mut retention_ms, mut unique_key, mut unique_ttl_ms) = (None, None, None);
        let (mut limit_key, mut group) = (None, None);
        let mut task = None;
        for (name, value) in fields {
            match name.as_ref() {
                b"task" => task = Some(value),
                b"id" => id = Some(value),
                b"kind" => kind = Some(value),
                b"payload" => payload = Some(value),
                b"codec" => codec = Some(value),
                b"enqueued_at" => enqueued_at = Some(value),
                b"attempt" => attempt = Some(value),
                b"max_attempts" => max_attempts = Some(value),
                b"timeout_ms" => timeout_ms = Some(value),
                b"backoff_base_ms" => backoff_base_ms = Some(value),
                b"backoff_factor" => backoff_factor = Some(value),
                b"backoff_cap_ms" => backoff_cap_ms = Some(value),
                b"error" => error = Some(value),
                b"retention_ms" => retention_ms = Some(value),
                b"unique_key" => unique_key = Some(value),
                b"unique_ttl_ms" => unique_ttl_ms = Some(value),
                b"limit_key" => limit_key = Some(value),
                b"group" => group = Some(value),
                _ => {}
            }
        }
        // A compact entry's five are read in place from its `task` (the payload is cut from
        // it below; the rest are copied or parsed as flat fields are).
        fn flat<V: AsRef<[u8]>>(v: &Option<V>) -> Option<&[u8]> {
            v.as_ref().map(AsRef::as_ref)
        }
        let (id, kind, codec, enqueued_at, packed) = match &task {
            Some(task) => {
                if id.is_some() || kind.is_some() || payload.is_some() || codec.is_some() || enqueued_at.is_some() {
                    return Err(Malformed(format!(
                        "field {TASK_FIELD:?} and one of the fields it packs (id, kind, codec, enqueued_at, payload) side by side"
                    )));
                }
                let task = task.as_ref();
                let [i, k, c, e, p] = unpack_task_slices(task)?;
                // Where the payload lies in `task`.
                let at = p.as_ptr() as usize - task.as_ptr() as usize;
                (Some(i), Some(k), Some(c), Some(e), Some(at..at + p.len()))
            }
            None => (flat(&id), flat(&kind), flat(&codec), flat(&enqueued_at), None),
        };
        fn not_utf8(field: &str) -> Malformed {
            Malformed(format!("field {field:?} is not UTF-8"))
        }
        fn text(field: &str, v: &[u8]) -> Result<String, Malformed> {
            std::str::from_utf8(v).map(str::to_owned).map_err(|_| not_utf8(field))
        }
        fn required<V>(field: &str, v: Option<V>) -> Result<V, Malformed> {
            v.ok_or_else(|| Malformed(format!("missing field {field:?}")))
        }
        // Straight into the shared string (one allocation, no `String` on the way).
        let id = required("id", id)?;
        let id: std::sync::Arc<str> = std::str::from_utf8(id).map_err(|_| not_utf8("id"))?.into();
        if id.is_empty() {
            return Err(Malformed("field \"id\" is empty".into()));
        }
        let kind = text("kind", required("kind", kind)?)?;
        check_kind(&kind)?;
        if packed.is_none() && payload.is_none() {
            return Err(Malformed("missing field \"payload\"".into()));
        }
        let codec = match codec {
            None => Codec::Json,
            Some(c) => Codec::parse(c).ok_or_else(|| {
                Malformed(format!(
                    "unknown codec {:?} (expected json, msgpack or bytes)",
                    String::from_utf8_lossy(c)
                ))
            })?,
        };
        let timeout_ms = parse_num("timeout_ms", timeout_ms)?;
        check_timeout(timeout_ms)?;
        let group = group.map(|g| text("group", g.as_ref())).transpose()?;
        if let Some(g) = &group {
            check_group(g)?;
        }
        let enqueued_at = parse_num("enqueued_at", enqueued_at)?.unwrap_or(0);
        // The payload last, once nothing borrows `task` any more: moved (or, borrowed, shared)
        // into `Bytes` as it is, never copied, whatever its size.
        let payload = match (packed, task, payload) {
            (Some(span), _, _) if span.is_empty() => Bytes::new(),
            (Some(span), Some(task), _) => {
                let mut task = bytes(task);
                task.truncate(span.end);
                bytes::Buf::advance(&mut task, span.start);
                task
            }
            (_, _, payload) => bytes(required("payload", payload)?),
        };
        Ok(Envelope {
            id: TaskId(id),
            kind,
            payload,
            codec,
            enqueued_at,
            attempt: parse_num("attempt", attempt)?.unwrap_or(0),
            max_attempts: parse_num("max_attempts", max_attempts)?,
            timeout_ms,
            backoff_base_ms: parse_num("backoff_base_ms", backoff_base_ms)?,
            backoff_factor: parse_factor(backoff_factor)?,
            backoff_cap_ms: parse_num("backoff_cap_ms", backoff_cap_ms)?,
            error: error.map(|e| String::from_utf8_lossy(e.as_ref()).into_owned()),
            retention_ms: parse_num("retention_ms", retention_ms)?,
            unique_key: unique_key.map(|k| text("unique_key", k.as_ref())).transpose()?,
            unique_ttl_ms: parse_num("unique_ttl_ms", unique_ttl_ms)?,
            limit_key: limit_key.map(|k| text("limit_key", k.as_ref())).transpose()?,
            group,
        })
    }
}

fn parse_factor<V: AsRef<[u8]>>(v: Option<V>) -> Result<Option<f64>, Malformed> {
    let Some(v) = v else {
        return Ok(None);
    };
    match std::str::from_utf8(v.as_ref()).ok().and_then(|s| s.parse::<f64>().ok()) {
        Some(x) if x.is_finite() && x >= 1.0 => Ok(Some(x)),
        _ => Err(Malformed(format!(
            "field \"backoff_factor\" is not a number >= 1: {:?}",
            String::from_utf8_lossy(v.as_ref())
        ))),
    }
}

/// A non-negative integer field, as `str::parse` reads one (ASCII digits, an optional `+`, no
/// overflow of `T`), by hand: it is read for every task.
fn parse_num<T: TryFrom<u64>, V: AsRef<[u8]>>(field: &str, v: Option<V>) -> Result<Option<T>, Malformed> {
    match v {
        None => Ok(None),
        Some(v) => crate::ascii::decimal(v.as_ref().strip_prefix(b"+").unwrap_or(v.as_ref()))
            .and_then(|n| T::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                Malformed(format!(
                    "field {field:?} is not a non-negative integer: {:?}",
                    String::from_utf8_lossy(v.as_ref())
                ))
            }),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    ms_since_epoch(SystemTime::now())
}

/// Milliseconds since the Unix epoch of a point in time (0 before the epoch).
pub fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(e: &Envelope) -> Envelope {
        Envelope::from_fields(e.fields()).unwrap()
    }

    #[test]
    fn envelope_roundtrips_through_fields() {
        let mut e = Envelope::new("resize", Bytes::from_static(b"{\"w\":3}"), Codec::Json);
        assert_eq!(roundtrip(&e), e);
        e.max_attempts = Some(7);
        e.timeout_ms = Some(1500);
        e.backoff_base_ms = Some(250);
        e.backoff_factor = Some(1.5);
        e.backoff_cap_ms = Some(4000);
        e.error = Some("boom".into());
        e.attempt = 2;
        e.codec = Codec::MsgPack;
        assert_eq!(roundtrip(&e), e);
        e.group = Some("tenant-a".into());
        assert_eq!(roundtrip(&e), e);
        assert_eq!(e.group_limit_name().as_deref(), Some("group:tenant-a"));
    }

    #[test]
    fn defaults_stay_off_the_wire() {
        // A JSON task on its first run: four fields, the fewest a worker parses.
        let mut e = Envelope::new("resize", Bytes::from_static(b"{}"), Codec::Json);
        let names = |e: &Envelope| e.fields().iter().map(|(k, _)| *k).collect::<Vec<_>>();
        assert_eq!(names(&e), ["id", "kind", "payload", "enqueued_at"]);
        // Any other codec, and a retried attempt, are written.
        e.codec = Codec::Bytes;
        e.attempt = 1;
        assert_eq!(names(&e), ["id", "kind", "payload", "codec", "enqueued_at", "attempt"]);
        assert_eq!(roundtrip(&e), e);
    }

    /// An envelope's stream fields read back both ways: owned, and borrowed as the worker
    /// reads an entry (`from_entry`), which must agree.
    fn roundtrip_compact(e: &Envelope) -> Envelope {
        let owned = Envelope::from_fields(e.stream_fields()).unwrap();
        assert_eq!(Envelope::from_entry(&as_read(e.stream_fields())).unwrap(), owned);
        owned
    }

    fn as_read(fields: Vec<(&str, Bytes)>) -> Vec<(Bytes, Bytes)> {
        fields
            .into_iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), v))
            .collect()
    }

    #[test]
    fn compact_entries_roundtrip_and_share_one_buffer() {
        let mut e = Envelope::new("resize", Bytes::from_static(b"{\"w\":3}"), Codec::Json);
        // A task on its first run is one field, whatever its codec.
        let names = |e: &Envelope| e.stream_fields().iter().map(|(k, _)| *k).collect::<Vec<_>>();
        assert_eq!(names(&e), [TASK_FIELD]);
        assert_eq!(roundtrip_compact(&e), e);
        e.codec = Codec::Bytes;
        assert_eq!(names(&e), [TASK_FIELD]);
        assert_eq!(roundtrip_compact(&e), e);
        // The rest stay flat beside it, and read back the same.
        e.max_attempts = Some(7);
        e.attempt = 2;
        e.error = Some("boom".into());
        e.retention_ms = Some(0);
        assert_eq!(
            names(&e),
            [TASK_FIELD, "attempt", "max_attempts", "error", "retention_ms"]
        );
        assert_eq!(roundtrip_compact(&e), e);
        // Payloads of every length class of a MessagePack str (fixstr, str8, str16, str32),
        // binary included, and empty strings.
        for n in [0usize, 31, 32, 255, 256, 65_535, 65_536, 100_000] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let mut e = Envelope::new("k", Bytes::from(payload), Codec::Bytes);
            e.id = TaskId::from_string("i".repeat(n.clamp(1, 300)).as_str());
            assert_eq!(roundtrip_compact(&e), e, "payload of {n} B");
        }
        // The payload is a slice of the field's value, not a copy of it.
        let fields = e.stream_fields();
        let packed = fields[0].1.clone();
        let read = as_read(fields.clone());
        let range = packed.as_ptr() as usize..packed.as_ptr() as usize + packed.len();
        for back in [
            Envelope::from_fields(fields).unwrap(),
            Envelope::from_entry(&read).unwrap(),
        ] {
            assert!(range.contains(&(back.payload.as_ptr() as usize)));
            assert_eq!(back.payload, e.payload);
        }
        // Flat, the payload is the field's buffer itself.
        let flat = as_read(e.fields());
        let payload = &flat.iter().find(|(k, _)| k == "payload").unwrap().1;
        assert_eq!(Envelope::from_entry(&flat).unwrap().payload.as_ptr(), payload.as_ptr());
    }

    #[test]
    fn one_field_of_an_entry_is_found_flat_or_packed() {
        let e = Envelope::new("resize", Bytes::from_static(b"{}"), Codec::Json);
        for fields in [as_read(e.fields()), as_read(e.stream_fields())] {
            assert_eq!(entry_field(&fields, "id").as_deref(), Some(e.id.as_str().as_bytes()));
            assert_eq!(entry_field(&fields, "kind").as_deref(), Some(&b"resize"[..]));
            assert_eq!(entry_field(&fields, "retention_ms"), None);
        }
        // A `task` that does not unpack gives nothing, rather than a wrong value.
        let broken = vec![(Bytes::from_static(b"task"), Bytes::from_static(b"\x95\xa1i"))];
        assert_eq!(entry_field(&broken, "id"), None);
    }

    #[test]
    fn malformed_compact_entries_say_what_is_wrong() {
        let e = Envelope::new("resize", Bytes::from_static(b"{}"), Codec::Json);
        let packed = e.stream_fields().remove(0).1;
        let read = |fields: Vec<(&str, Bytes)>| Envelope::from_fields(fields).unwrap_err().0;
        // Cut anywhere, or with bytes after the array: never a panic, always the field named.
        for cut in 0..packed.len() {
            let err = read(vec![(TASK_FIELD, packed.slice(..cut))]);
            assert!(
                err.contains("\"task\" is not a MessagePack array of 5 strings"),
                "{cut}: {err}"
            );
        }
        let mut longer = packed.to_vec();
        longer.push(0xa0);
        assert!(read(vec![(TASK_FIELD, Bytes::from(longer))]).contains("5 strings"));
        // Four strings, or a number among them.
        let four = Bytes::from_static(b"\x94\xa1i\xa1k\xa4json\xa11");
        assert!(read(vec![(TASK_FIELD, four)]).contains("5 strings"));
        let number = Bytes::from_static(b"\x95\xa1i\xa1k\xa4json\x01\xa0");
        assert!(read(vec![(TASK_FIELD, number)]).contains("5 strings"));
        // Packed and flat at once is ambiguous: refused, not resolved either way.
        let both = vec![(TASK_FIELD, packed), ("id", Bytes::from_static(b"other"))];
        assert!(read(both).contains("side by side"));
        // What it packs is checked as the flat fields are.
        let mut bad_kind = e.clone();
        bad_kind.kind = String::new();
        let err = Envelope::from_fields(bad_kind.stream_fields()).unwrap_err().0;
        assert!(err.contains("kind"), "{err}");
    }

    #[test]
    fn groups_are_checked_when_read() {
        assert!(check_group("tenant-a:eu/1.x_y").is_ok());
        assert!(check_group(&"g".repeat(MAX_GROUP_LEN)).is_ok());
        for bad in ["", "a b", "a{b}", "ü", &"g".repeat(MAX_GROUP_LEN + 1)] {
            let err = check_group(bad).unwrap_err();
            assert!(err.0.contains("group"), "{bad:?}: {err}");
        }
        let mut e = Envelope::new("k", Bytes::from_static(b"1"), Codec::Json);
        e.group = Some("a{b}".into());
        let fields = e.fields();
        let err = Envelope::from_fields(fields.iter().map(|(k, v)| (*k, v.clone()))).unwrap_err();
        assert!(err.0.contains("'/'"), "{err}");
    }

    #[test]
    fn the_task_overrides_the_retry_policy_where_it_says_so() {
        let worker = RetryPolicy::default();
        let mut e = Envelope::new("k", Bytes::new(), Codec::Json);
        assert_eq!(e.retry_policy(worker).unwrap(), worker);
        e.max_attempts = Some(2);
        e.backoff_base_ms = Some(50);
        e.backoff_cap_ms = Some(200);
        let p = e.retry_policy(worker).unwrap();
        assert_eq!(
            (p.max_attempts, p.base, p.factor, p.cap),
            (2, Duration::from_millis(50), worker.factor, Duration::from_millis(200))
        );
        // A cap below the base is the task's mistake, reported, not repaired.
        e.backoff_cap_ms = Some(10);
        let err = e.retry_policy(worker).unwrap_err();
        assert!(err.0.contains("retry.cap"), "{err}");
        // A factor below 1 does not even decode.
        let mut fields = Envelope::new("k", Bytes::new(), Codec::Json).fields();
        fields.push(("backoff_factor", Bytes::from_static(b"0.5")));
        let err = Envelope::from_fields(fields).unwrap_err();
        assert!(err.0.contains("backoff_factor"), "{err}");
    }

    #[test]
    fn malformed_entries_say_which_field() {
        let case = |fields: &[(&str, &str)]| {
            let fields: Vec<(&str, Bytes)> = fields
                .iter()
                .map(|(k, v)| (*k, Bytes::copy_from_slice(v.as_bytes())))
                .collect();
            let owned = Envelope::from_fields(fields.clone()).unwrap_err().0;
            assert_eq!(Envelope::from_entry(&as_read(fields)).unwrap_err().0, owned);
            owned
        };
        assert_eq!(case(&[("kind", "k"), ("payload", "1")]), "missing field \"id\"");
        assert_eq!(case(&[("id", "1"), ("payload", "1")]), "missing field \"kind\"");
        assert_eq!(case(&[("id", "1"), ("kind", "k")]), "missing field \"payload\"");
        assert!(case(&[("id", "1"), ("kind", "k"), ("payload", "1"), ("codec", "xml")]).contains("unknown codec"));
        assert!(case(&[("id", "1"), ("kind", "k"), ("payload", "1"), ("attempt", "-1")]).contains("attempt"));
        assert_eq!(
            case(&[("id", ""), ("kind", "k"), ("payload", "1")]),
            "field \"id\" is empty"
        );
        // Every attempt would time out before the handler ran: malformed, not `exhausted`.
        assert!(case(&[("id", "1"), ("kind", "k"), ("payload", "1"), ("timeout_ms", "0")]).contains("timeout_ms"));
    }

    #[test]
    fn codecs_roundtrip_typed_values() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct P {
            a: u32,
            b: String,
        }
        let p = P { a: 1, b: "x".into() };
        for c in [Codec::Json, Codec::MsgPack] {
            let bytes = c.encode(&p).unwrap();
            assert_eq!(c.decode::<P>(&bytes).unwrap(), p);
        }
        assert!(Codec::Json.decode::<P>(b"garbage").is_err());
        assert!(Codec::MsgPack.decode::<P>(b"\xc1").is_err());
    }

    #[test]
    fn generated_ids_are_unique_and_sortable() {
        let a = TaskId::generate();
        let b = TaskId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 28);
    }
}
