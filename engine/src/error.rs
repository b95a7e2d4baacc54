//! The engine's one error type.
//!
//! Callers branch on the variant: configuration and input mistakes are theirs to fix, a
//! `Redis` error is usually worth retrying, `NotFound` names what was missing.

use std::fmt;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A queue name outside `[A-Za-z0-9._-]{1,64}`.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueueName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A priority name the queue's layout does not have, or an invalid one in a layout.
    #[error("unknown priority {priority:?} for queue {queue:?} (the queue has {known})")]
    UnknownPriority {
        /// The queue.
        queue: String,
        /// The priority asked for.
        priority: String,
        /// The priorities the queue has, comma separated.
        known: String,
    },
    /// A configuration value out of range.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The field, as it is named in the config struct.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A queue is already registered in Redis with another layout.
    #[error("queue {queue:?} is registered with layout {stored}, not {wanted}")]
    LayoutMismatch {
        /// The queue.
        queue: String,
        /// The layout Redis has, as JSON.
        stored: String,
        /// The layout this caller uses, as JSON.
        wanted: String,
    },
    /// A payload could not be encoded or decoded with its codec.
    #[error("{codec} payload: {reason}")]
    Codec {
        /// The codec's wire name.
        codec: &'static str,
        /// The codec's own message.
        reason: String,
    },
    /// A schedule definition that cannot be used: a cron expression, time zone, interval,
    /// payload or name that does not parse or is out of range.
    #[error("schedule {name:?}: {field} {value:?}: {reason}")]
    InvalidSchedule {
        /// The schedule's name as given.
        name: String,
        /// The field at fault, as the CLI and the schedules file name it (`cron`, `timezone`,
        /// `every`, `payload`, ...).
        field: &'static str,
        /// The offending text.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A schedule of this name exists already (add it with replace, or sync a file, to update).
    #[error("schedule {name:?} exists already (replace it explicitly to update its definition)")]
    ScheduleExists {
        /// The name.
        name: String,
    },
    /// The thing asked for does not exist (a queue, a dead letter, ...).
    #[error("not found: {0}")]
    NotFound(String),

    /// A queue still has live workers, or tasks and dead letters that deleting it would drop.
    #[error(
        "queue {queue:?} is in use: {workers} live worker(s), {tasks} task(s) not done, {dead_letters} dead letter(s); stop its workers and let it drain, or force the deletion"
    )]
    QueueInUse {
        /// The queue.
        queue: String,
        /// Live workers serving it.
        workers: usize,
        /// Waiting, in-flight, delayed and retrying tasks.
        tasks: u64,
        /// Entries of its dead-letter streams.
        dead_letters: u64,
    },
    /// No record of this task in this queue: never enqueued here, enqueued with tracking off,
    /// or its record expired after the retention.
    #[error("unknown task {id:?} in queue {queue:?} (never enqueued there, tracking off, or its record expired)")]
    UnknownTask {
        /// The task id asked for.
        id: String,
        /// The queue looked in.
        queue: String,
    },
    /// A wait for a task ended before the task reached a final state.
    #[error("task {id:?} in queue {queue:?} is still {state} after waiting {waited_ms} ms")]
    WaitTimeout {
        /// The task.
        id: String,
        /// Its queue.
        queue: String,
        /// Its state when the wait gave up.
        state: crate::lifecycle::TaskState,
        /// How long the wait lasted, ms.
        waited_ms: u64,
    },
    /// A write was applied on the master but not confirmed as durable in time (`WAIT` saw
    /// fewer replicas than asked, or `WAITAOF` no fsync). It may or may not survive a failover.
    #[error(
        "not confirmed as {wanted}: {acked} acknowledged within {timeout_ms} ms; the write is on the master but may be lost in a failover (retry idempotently, e.g. with the same task id, or check the replicas)"
    )]
    NotDurable {
        /// The durability asked for, e.g. `replicated:1`.
        wanted: String,
        /// Replicas (or local fsyncs, for `fsync`) that acknowledged.
        acked: u32,
        /// How long the engine waited.
        timeout_ms: u64,
    },
    /// A setting this Redis server cannot honour (e.g. `fsync` on Redis 7.0).
    #[error("durability {setting} {reason}")]
    UnsupportedServer {
        /// The setting, e.g. `fsync`.
        setting: String,
        /// What the server lacks.
        reason: String,
    },
    /// A Redis setting that would lose tasks.
    #[error("redis {setting} is {value}: {why}; {fix}")]
    UnsafeRedisSetting {
        /// The Redis configuration parameter.
        setting: &'static str,
        /// Its current value.
        value: String,
        /// What would go wrong.
        why: &'static str,
        /// What to change.
        fix: &'static str,
    },
    /// A rate or concurrency limit spec that does not parse or makes no sense (see
    /// [`crate::limits`]).
    #[error("invalid limit {spec:?}: {reason}")]
    InvalidLimit {
        /// The text as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis answered with something the engine does not understand.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// Redis refused a write because it reached `maxmemory` (with a `noeviction` policy):
    /// nothing of the refused call was written by a script; retry once memory is freed
    /// (workers settling tasks free it) or raise the limit.
    #[error("redis is out of memory (maxmemory reached; writes refused until memory is freed): {source}")]
    OutOfMemory {
        /// Redis's own `OOM` reply.
        #[source]
        source: redis::RedisError,
    },
    /// A Redis URL that does not parse (the password is never shown).
    #[error("invalid Redis URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, its password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A plain `redis://` URL points at a node of a Redis Cluster (it answered `MOVED`, or its
    /// `INFO` says `cluster_enabled:1`).
    #[error(
        "this Redis is a node of a Redis Cluster ({0}); a redis:// URL reaches one node only: use a redis+cluster:// URL naming one or more of its nodes, e.g. redis+cluster://host1:7000,host2:7001"
    )]
    ClusterNode(String),
    /// Redis failed or could not be reached.
    #[error("redis: {0}")]
    Redis(redis::RedisError),
}

impl From<redis::RedisError> for Error {
    /// Redis's `OOM` reply gets its own variant, so a producer can tell a full Redis from an
    /// unreachable one without reading the message; so does a `MOVED`/`ASK` redirection (a
    /// cluster connection follows those itself, so one reaching here came through a single-node
    /// connection to a cluster node, which cannot).
    fn from(e: redis::RedisError) -> Self {
        // A pipeline's error lists each failed command; any `OOM` (or `MOVED`) among them names
        // the cause.
        let codes: Vec<String> = match e.clone().into_server_errors() {
            Some(items) => items.iter().map(|(_, s)| s.code().to_owned()).collect(),
            None => e.code().map(str::to_owned).into_iter().collect(),
        };
        if codes.iter().any(|c| c == "OOM") {
            Error::OutOfMemory { source: e }
        } else if codes.iter().any(|c| c == "MOVED" || c == "ASK")
            || matches!(
                e.kind(),
                redis::ErrorKind::Server(redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask)
            )
        {
            Error::ClusterNode(format!("it answered {}", e.to_string().trim_end_matches(" - Moved")))
        } else {
            Error::Redis(e)
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(field: &'static str, reason: impl fmt::Display) -> Self {
        Error::InvalidConfig {
            field,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn protocol(what: impl fmt::Display) -> Self {
        Error::Protocol(what.to_string())
    }

    /// Whether trying the same call again later may succeed (Redis was unreachable or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                            | redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                    )
            }
            // Settling tasks frees memory: the same call can succeed a moment later.
            Error::OutOfMemory { .. } => true,
            _ => false,
        }
    }
}
