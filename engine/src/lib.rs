//! Rivulet: a task engine on Redis Streams.
//!
//! Producers enqueue tasks into priority-sharded streams; workers read them through consumer
//! groups, run typed handlers, retry failures with backoff, take over the tasks of dead
//! workers, and move what cannot succeed to a dead-letter stream. Delivery is at least once:
//! nothing is silently lost.
//!
//! ```no_run
//! use rivulet::{Client, Queue, Router, Task, TaskContext, Worker, WorkerConfig};
//!
//! # async fn demo() -> Result<(), rivulet::Error> {
//! let queue = Queue::new("emails")?;
//! let client = Client::connect("redis://127.0.0.1:6379").await?;
//! client.enqueue(&queue, Task::json("send", &"hello")?.priority("high")).await?;
//!
//! let router = Router::new().route("send", |_ctx: TaskContext, body: String| async move {
//!     println!("sending {body}");
//!     Ok(())
//! });
//! let redis = redis::Client::open("redis://127.0.0.1:6379")?;
//! Worker::new(redis, router, WorkerConfig::default())
//!     .queue(queue)
//!     .run(async { tokio::signal::ctrl_c().await.ok(); })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`keys`]: validated names ([`QueueName`], [`Queue`] and its [`Layout`]) and every key name.
//! - [`envelope`]: wire format v1 ([`Envelope`], [`Codec`], [`TaskId`]).
//! - `broker`: every Redis command and Lua script (`broker/scripts/*.lua`), split by subject
//!   (queues, stream, settle, registry, admin); nothing else builds a command
//!   (`tests/broker_owns_redis.rs` checks it).
//! - [`connection`]: a URL and its [`TlsOptions`] (CA file, client certificate, opt-out of
//!   verification) become a `redis::Client`.
//! - [`durability`]: [`Durability`] (fast, replicated:N, fsync) and the start-up checks of the
//!   server's version and eviction policy ([`ServerInfo`]).
//! - [`functions`]: the `rivulet_v1` Redis Functions library other languages call.
//! - [`client`]: the producer ([`Client`], [`Task`]).
//! - [`handler`]: [`Router`], [`TaskContext`] and [`HandlerError`] (retry / retry after / fatal).
//! - [`backoff`]: [`RetryPolicy`], a pure exponential-with-full-jitter schedule.
//! - [`worker`]: [`Worker`] and its loops (fetcher, executor, acker, promoter, reclaimer,
//!   heartbeat), and what they count for an exporter ([`WorkerMetrics`], opt in).
//! - [`lifecycle`]: task states, the status read from a task's record ([`TaskStatus`]),
//!   results ([`Output`]), progress and cancel ([`TaskControl`]), events.
//! - [`limits`]: fleet-wide rate and concurrency limits ([`Limit`], [`Rate`]): specs, checks,
//!   what a limit looks like now ([`LimitStatus`]).
//! - [`inspector`]: queue statistics, pending entries, workers ([`WorkerRecord`]), dead-letter
//!   operations ([`DeadLetter`], [`DeadReason`]), pause flags, queue deletion.
//! - [`schedule`]: periodic tasks: [`Schedule`] (cron with seconds and a time zone, or an
//!   interval; jitter; missed-fire policy), [`Schedules`] (store, list, pause, sync) and the
//!   leaderless [`Scheduler`] (exactly one task per fire time however many run).
//! - [`store`]: the reachability check and the demo's samples, for the binaries.
//! - `clock`: where the worker and the inspector read the time they pass to the broker.
//! - `testing` (feature `test-util`): fixtures on a private `redis-server` (server, client,
//!   inspector and queue in one call; a recording router; child-process guards; `wait_until`).; a TLS server
//!   (`testing::tls`) and a master with a replica (`testing::replica`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ascii;
pub mod backoff;
mod broker;
pub mod client;
mod clock;
pub mod connection;
pub mod durability;
pub mod envelope;
mod error;
/// The `rivulet_v1` Redis Functions library (see `docs/wire-format.md`): generated from the
/// engine's own scripts, loaded by every worker at start and by
/// [`Inspector::install_functions`], called by producers in any language with `FCALL`.
pub mod functions {
    pub use crate::broker::functions::{LIBRARY, name, revision, source};
}
pub mod handler;
pub mod inspector;
pub mod keys;
pub mod lifecycle;
pub mod limits;
mod msgpack;
pub mod schedule;
pub mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod worker;

pub use backoff::RetryPolicy;
pub use broker::{RedisConnection, RedisTarget, URL_SHAPES};
pub use client::{Client, EventCursor, Task, redact_url};
pub use connection::TlsOptions;
pub use durability::{Durability, ServerInfo};
pub use envelope::{Codec, Envelope, TaskId};
pub use error::{Error, Result};
pub use handler::{HandlerError, HandlerReturn, RouteOptions, Router, TaskContext};
pub use inspector::{
    DLQ_PREVIEW, DeadLetter, DeadLetterId, DeadReason, DlqSelect, FairShardStatus, GroupStatus, Inspector,
    QueueDeletion, QueueGroups, QueueStats, WorkerRecord,
};
pub use keys::{Layout, Queue, QueueName};
pub use lifecycle::{
    CancelOutcome, Enqueued, Event, IntoTaskResult, Output, Progress, TaskControl, TaskPage, TaskState, TaskStatus,
};
pub use limits::{Limit, LimitStatus, Limits, Rate};
pub use schedule::{Missed, Schedule, Scheduler, Schedules};
pub use worker::{
    DRAIN_SETTLE_BUDGET, MetricsSnapshot, PriorityMode, QueueOptions, ShutdownHandle, Worker, WorkerConfig,
    WorkerCounters, WorkerMetrics, WorkerReport,
};

// The Rust snippets of the README and the task lifecycle guide compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoc;
#[cfg(doctest)]
#[doc = include_str!("../../docs/tasks.md")]
struct TasksDoc;
#[cfg(doctest)]
#[doc = include_str!("../../docs/groups.md")]
struct GroupsDoc;
