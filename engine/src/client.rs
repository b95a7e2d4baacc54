//! The producer: `Client` enqueues tasks, one at a time or pipelined in batches.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use redis::aio::ConnectionManager;
use serde::Serialize;

use crate::backoff::RetryPolicy;
use crate::broker;
use crate::clock::Clock;
use crate::durability::Durability;
use crate::envelope::{Codec, Envelope, TaskId, ms_since_epoch, now_ms};
use crate::error::Result;
use crate::keys::{Queue, QueueName, shard_for};

/// How long a producer waits for Redis before a call fails with a timeout.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A task to enqueue: kind, encoded payload and options.
///
/// ```
/// use std::time::Duration;
/// use rivulet::Task;
///
/// let task = Task::json("send_email", &serde_json::json!({"to": "a@example.com"}))?
///     .priority("high")
///     .delay(Duration::from_secs(30))
///     .max_attempts(3);
/// # Ok::<(), rivulet::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Task {
    envelope: Envelope,
    priority: Option<String>,
    run_at_ms: Option<u64>,
}

impl Task {
    /// A task whose payload is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(kind: &str, value: &T) -> Result<Self> {
        Ok(Self::encoded(kind, Codec::Json.encode(value)?, Codec::Json))
    }

    /// A task whose payload is `value` as MessagePack.
    pub fn msgpack<T: Serialize + ?Sized>(kind: &str, value: &T) -> Result<Self> {
        Ok(Self::encoded(kind, Codec::MsgPack.encode(value)?, Codec::MsgPack))
    }

    /// A task with opaque payload bytes (`codec` = `bytes`).
    pub fn bytes(kind: &str, payload: impl Into<Bytes>) -> Self {
        Self::encoded(kind, payload.into(), Codec::Bytes)
    }

    /// A task with a payload already encoded with `codec`.
    pub fn encoded(kind: &str, payload: Bytes, codec: Codec) -> Self {
        Task {
            envelope: Envelope::new(kind, payload, codec),
            priority: None,
            run_at_ms: None,
        }
    }

    /// Runs at this priority (the queue's default priority otherwise).
    pub fn priority(mut self, priority: impl Into<String>) -> Self {
        self.priority = Some(priority.into());
        self
    }

    /// Runs no sooner than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at_ms = Some(now_ms().saturating_add(crate::envelope::millis(delay)));
        self
    }

    /// Runs no sooner than `at`.
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at_ms = Some(ms_since_epoch(at));
        self
    }

    /// Overrides the worker's attempt limit for this task.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.envelope.max_attempts = Some(n);
        self
    }

    /// Overrides the worker's retry backoff for this task: the delay ceiling of the first
    /// retry, its growth per attempt and the largest delay (full jitter stays the worker's
    /// choice). Fails on a factor below 1 or a cap below the base.
    pub fn backoff(mut self, base: Duration, factor: f64, cap: Duration) -> Result<Self> {
        RetryPolicy {
            base,
            factor,
            cap,
            ..RetryPolicy::default()
        }
        .validate()?;
        self.envelope.backoff_base_ms = Some(crate::envelope::millis(base));
        self.envelope.backoff_factor = Some(factor);
        self.envelope.backoff_cap_ms = Some(crate::envelope::millis(cap));
        Ok(self)
    }

    /// Overrides the worker's handler timeout for this task.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.envelope.timeout_ms = Some(crate::envelope::millis(timeout));
        self
    }

    /// Uses this id instead of a generated one (it must be unique).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.envelope.id = TaskId::from_string(id);
        self
    }

    /// The task's id.
    pub fn task_id(&self) -> &TaskId {
        &self.envelope.id
    }
}

/// Enqueues tasks. Cheap to clone: clones share one multiplexed connection.
#[derive(Clone)]
pub struct Client {
    conn: ConnectionManager,
    declared: Arc<Mutex<HashSet<QueueName>>>,
    /// Tells a delayed task that is already due (it goes straight to its stream) from one to
    /// park in the scheduled set.
    clock: Clock,
    /// What an enqueue waits for before it returns (see [`Client::with_durability`]).
    durability: Durability,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::new(&redis::Client::open(url)?).await
    }

    /// Connects with an existing `redis::Client`.
    pub async fn new(client: &redis::Client) -> Result<Self> {
        let conn = broker::connect(client, Some(DEFAULT_RESPONSE_TIMEOUT)).await?;
        Ok(Client {
            conn,
            declared: Arc::default(),
            clock: Clock::System,
            durability: Durability::Fast,
        })
    }

    /// A client (sharing this one's connection) whose enqueues return only once `durability`
    /// holds: `replicated:N` waits for N replicas (`WAIT`), `fsync` for the master's AOF fsync
    /// (`WAITAOF`, Redis 7.2+). The wait is the last command of each enqueue's pipeline, so it
    /// costs no extra round trip, only the replicas' (or the disk's) latency. An enqueue that
    /// is not confirmed in time fails with [`Error::NotDurable`](crate::Error::NotDurable).
    ///
    /// Reads the server's version and settings once: a setting it cannot honour (`fsync` before
    /// 7.2 or without AOF) is refused here with [`Error::UnsupportedServer`](crate::Error::UnsupportedServer).
    /// Use one client per durability to give queues different settings.
    pub async fn with_durability(self, durability: Durability) -> Result<Self> {
        if durability.waits() {
            let info = broker::server_info(&mut self.conn.clone()).await?;
            durability.check(&info)?;
            if let Durability::Replicated { replicas, .. } = durability
                && info.replicas < replicas
            {
                tracing::warn!(
                    %durability,
                    connected = info.replicas,
                    "fewer replicas are connected than the durability asks for: enqueues will fail until they are"
                );
            }
        }
        Ok(Client { durability, ..self })
    }

    /// What enqueues wait for.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Records the queue's layout in Redis (done once per queue and client, automatically,
    /// by the first enqueue). Fails with `LayoutMismatch` if Redis knows another layout.
    pub async fn declare(&self, queue: &Queue) -> Result<()> {
        if self
            .declared
            .lock()
            .expect("the set is never left half-updated")
            .contains(queue.name())
        {
            return Ok(());
        }
        broker::declare_queue(&mut self.conn.clone(), queue).await?;
        self.declared
            .lock()
            .expect("the set is never left half-updated")
            .insert(queue.name().clone());
        Ok(())
    }

    /// Enqueues one task and returns its id.
    pub async fn enqueue(&self, queue: &Queue, task: Task) -> Result<TaskId> {
        let mut ids = self.enqueue_many(queue, [task]).await?;
        Ok(ids.pop().expect("one task in, one id out"))
    }

    /// Enqueues many tasks in one pipelined round trip (delayed ones one script call each).
    /// Validates every task's priority before sending anything.
    pub async fn enqueue_many(&self, queue: &Queue, tasks: impl IntoIterator<Item = Task>) -> Result<Vec<TaskId>> {
        let tasks: Vec<Task> = tasks.into_iter().collect();
        let mut placed = Vec::with_capacity(tasks.len());
        for task in &tasks {
            // The same check a worker makes before it runs the task (0 attempts, a cap below
            // the base): refused here rather than dead-lettered there.
            crate::envelope::check_kind(&task.envelope.kind)
                .and_then(|()| task.envelope.retry_policy(RetryPolicy::default()).map(drop))
                .map_err(|m| crate::Error::config("task", m.0))?;
            let priority = task.priority.as_deref().unwrap_or_else(|| queue.default_priority());
            queue.rank(priority)?;
            let keys = queue.shard(priority, shard_for(task.envelope.id.as_str(), queue.layout().shards));
            placed.push(keys);
        }
        self.declare(queue).await?;
        let mut conn = self.conn.clone();
        let now = self.clock.now_ms();
        let mut ready = Vec::with_capacity(tasks.len());
        for (task, keys) in tasks.iter().zip(&placed) {
            match task.run_at_ms {
                Some(due) if due > now => broker::add_scheduled(&mut conn, keys, &task.envelope, due).await?,
                _ => ready.push((keys, &task.envelope)),
            }
        }
        if !ready.is_empty() {
            broker::add_ready(&mut conn, &ready, self.durability).await?;
        } else {
            // Only delayed tasks: wait after their scripts (on the same connection).
            broker::wait_durable(&mut conn, self.durability).await?;
        }
        Ok(tasks.into_iter().map(|t| t.envelope.id).collect())
    }
}

/// `url` with any password replaced by `***`, for messages and logs: the password of
/// `scheme://user:PASSWORD@host`, a lone `scheme://SECRET@host` (some clients read it as the
/// password), and `pass=` / `password=` query parameters (`redis+unix` URLs).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // A password may hold '/', '?' or '#' (such a URL does not parse, and is then shown in the
    // error): when there is an '@', the authority runs to the first of those after the last '@'.
    let host_from = rest.rfind('@').map_or(0, |at| at + 1);
    let authority_end = rest[host_from..]
        .find(['/', '?', '#'])
        .map_or(rest.len(), |i| host_from + i);
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some(("", host)) => host.to_owned(),
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) if matches!(k, "pass" | "password") && !v.is_empty() => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:s3cret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("rediss://user:p@ss:w@host"), "rediss://user:***@host");
        assert_eq!(redact_url("rediss://secret@h"), "rediss://***@h");
        assert_eq!(redact_url("redis://@h"), "redis://h");
        assert_eq!(
            redact_url("redis+unix:///run/r.sock?db=1&pass=s3cret"),
            "redis+unix:///run/r.sock?db=1&pass=***"
        );
        assert_eq!(redact_url("redis://h?password=x&db=2"), "redis://h?password=***&db=2");
        assert_eq!(redact_url("notaurl"), "notaurl");
        assert_eq!(redact_url("redis://:abc#def@host:6379"), "redis://:***@host:6379");
        assert_eq!(redact_url("redis://u:pa?ss/w@h:1/0"), "redis://u:***@h:1/0");
    }
}
