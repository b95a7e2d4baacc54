//! The worker: reads tasks through consumer groups, runs their handlers, settles outcomes.
//!
//! One worker is a set of owned loops (see `run` for the order they stop in):
//! - `fetcher`: strict or weighted priority reads on a dedicated connection, `COUNT` up to the
//!   free handler slots, dispatching to the `executor`;
//! - `executor`: decodes each entry, runs its handler with a timeout and panic guard, and turns
//!   the result into an outcome;
//! - `runners`: the long-lived tasks the handlers run on, one task after another (at most
//!   `concurrency`; idle ones exit after a while);
//! - `acker`: batches outcomes per shard into one `settle.lua` call each;
//! - `promoter`: moves due delayed and retry tasks into their streams, and reads pause flags;
//! - `reclaimer`: takes over entries whose lease ran out (their worker died);
//! - `heartbeat`: renews the leases of held entries and the worker's registry entry;
//! - `tracker`: records of tracked tasks: batched start records, coalesced progress, cancel
//!   marks read for running tasks;
//! - `budget`: what is left of `max_tasks`, reserved with the slots;
//! - `limiter`: fleet-wide rate and concurrency limits: admits a limited task or parks it
//!   until the limit lets it start, gives running slots back, renews them with the leases.
//! - `metrics`: what the loops count for an exporter, in atomics ([`WorkerMetrics`], opt in
//!   with [`Worker::with_metrics`]); every hook is called from the loop it counts.
//!
//! A worker stops in two steps, as asynq's and Sidekiq's do: *quiet* (stop taking tasks,
//! finish the running ones within `drain_timeout`, requeue the rest, settle, deregister) and
//! *terminate* (the same without the wait: running handlers are dropped and their tasks
//! requeued at once). [`Worker::run`]'s shutdown future and [`ShutdownHandle::quiet`] quiet;
//! spending the last of `max_tasks` quiets too; [`ShutdownHandle::terminate`] terminates, also
//! in the middle of a drain.

mod acker;
mod budget;
mod config;
mod executor;
mod fetcher;
mod heartbeat;
mod limiter;
mod metrics;
mod promoter;
mod reclaimer;
mod runners;
mod tracker;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::DEFAULT_CANCEL_GRACE;
pub use config::{
    DEFAULT_BLOCK, DEFAULT_CONCURRENCY, DEFAULT_DLQ_MAXLEN, DEFAULT_DRAIN_TIMEOUT, DEFAULT_LEASE,
    DEFAULT_MAX_DELIVERIES, DEFAULT_PROMOTE_INTERVAL, DEFAULT_UNKNOWN_KIND_GRACE, DRAIN_SETTLE_BUDGET, MAX_FAIR_WINDOW,
    MAX_GROUP_WEIGHT, MAX_TASKS_LIMIT, PriorityMode, QueueOptions, WorkerConfig,
};
pub use metrics::{
    DEAD_REASONS, Histogram, KindHistogram, LaneHistogram, MetricsSnapshot, OTHER_KIND, RUN_TIME_BUCKETS, TaskCounts,
    WAIT_BUCKETS, WorkerMetrics,
};
pub use tracker::{CANCEL_POLL, PROGRESS_INTERVAL, START_RECORD_DELAY};

use self::budget::{Budget, Units};
use crate::broker::{self, RedisConnection, RedisTarget, Settle, StreamId};
use crate::clock::Clock;
use crate::durability::Durability;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::handler::Router;
use crate::keys::{Queue, QueueName, ShardKeys};

/// Counters a running worker keeps; read them through [`Worker::counters`].
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Handlers started.
    pub started: AtomicU64,
    /// Handlers that succeeded.
    pub succeeded: AtomicU64,
    /// Handlers that failed (error, panic or timeout).
    pub failed: AtomicU64,
    /// Entries sent to the dead-letter stream by this worker (any reason).
    pub buried: AtomicU64,
    /// Outcomes dropped because another worker had reclaimed the entry (fencing).
    pub fenced: AtomicU64,
    /// Entries taken over from dead workers.
    pub reclaimed: AtomicU64,
    /// How long the handlers that finished (`succeeded + failed`) ran, in µs: with them, the
    /// mean handler time, which the autoscaler sizes the fleet with.
    pub busy_us: AtomicU64,
    /// Times a task was sent to wait for a fleet-wide limit (it did not start).
    pub limited: AtomicU64,
}

impl WorkerCounters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Handlers started.
    pub started: u64,
    /// Handlers that succeeded.
    pub succeeded: u64,
    /// Handlers that failed.
    pub failed: u64,
    /// Unfinished tasks put back at shutdown, to run again at once.
    pub requeued: u64,
    /// Whether the worker stopped because it had taken `max_tasks` tasks.
    pub reached_max_tasks: bool,
}

/// Stops a running worker from anywhere (a signal handler, a supervisor's watch, a test),
/// in the two steps asynq and Sidekiq users know. Get one with [`Worker::shutdown_handle`]
/// before [`Worker::run`]; clones stop the same worker. Calling either step before `run`
/// makes the worker stop as soon as it has started.
///
/// ```no_run
/// use rivulet::{Queue, Router, Worker, WorkerConfig};
///
/// # async fn demo() -> Result<(), rivulet::Error> {
/// let redis = redis::Client::open("redis://127.0.0.1:6379")?;
/// let worker = Worker::new(redis, Router::new(), WorkerConfig::default()).queue(Queue::new("default")?);
/// let handle = worker.shutdown_handle();
/// tokio::spawn(async move {
///     tokio::signal::ctrl_c().await.ok();
///     handle.quiet(); // finish what runs, then stop
///     tokio::signal::ctrl_c().await.ok();
///     handle.terminate(); // requeue what runs, stop now
/// });
/// let report = worker.run(std::future::pending()).await?;
/// # let _ = report;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ShutdownHandle {
    quiet: CancellationToken,
    terminate: CancellationToken,
}

impl ShutdownHandle {
    /// Stop taking tasks; let the running ones finish (up to `drain_timeout`), requeue what is
    /// still unfinished, settle everything and deregister. `run` then returns its report.
    pub fn quiet(&self) {
        self.quiet.cancel();
    }

    /// Stop at once: quiet without the wait. Running handlers are dropped and every task the
    /// worker holds is requeued to run again at once. Also cuts a drain already under way short.
    pub fn terminate(&self) {
        self.quiet.cancel();
        self.terminate.cancel();
    }

    /// Whether [`quiet`](Self::quiet) or [`terminate`](Self::terminate) was called.
    pub fn is_quiet(&self) -> bool {
        self.quiet.is_cancelled()
    }

    /// Whether [`terminate`](Self::terminate) was called.
    pub fn is_terminated(&self) -> bool {
        self.terminate.is_cancelled()
    }
}

/// One shard this worker reads, with what it needs to settle its tasks.
#[derive(Debug)]
struct Lane {
    queue: QueueName,
    priority: Arc<str>,
    rank: usize,
    keys: ShardKeys,
    options: QueueOptions,
    paused: AtomicBool,
    /// Entries of this shard the worker has in process, from the read until their outcome is
    /// settled: the ones whose lease the heartbeat renews. Entries the consumer owns in Redis
    /// but not here (a read whose reply was lost) age out and are reclaimed. Each with when its
    /// read's reply came in: the acker acks one still young without the fence (`acker.rs`).
    held: Mutex<crate::broker::IdMap<std::time::Instant>>,
    /// The queue's record retention in ms (0: its tasks keep none unless they ask).
    retention_ms: u64,
    /// Approximate cap of the shard's events stream.
    events_maxlen: usize,
    /// Whether the shard was seen holding grouped tasks (one read, or the fair set not empty
    /// at a promotion): the acker then feeds its stream from the fair set after each settle.
    grouped: AtomicBool,
}

/// One settled task on its way to the acker.
#[derive(Debug)]
struct Outcome {
    lane: usize,
    entry_id: StreamId,
    settle: Settle,
    /// What the task's record gets, when it keeps one.
    track: Option<broker::lifecycle::Tracked>,
}

/// State every loop of a running worker shares.
/// The start-up checks of the server: an eviction policy that can delete task keys is refused
/// (or only warned about, with `allow_eviction`), and so is a queue's durability the server
/// cannot honour.
async fn check_server(
    conn: &mut RedisConnection,
    config: &WorkerConfig,
    queues: &[(Queue, QueueOptions)],
) -> Result<crate::durability::ServerInfo> {
    let info = broker::server_info(conn).await?;
    // The function library producers in other languages call (and the engine's own
    // enqueue, cancel, wait, inspect and replay): loaded unless this revision already is.
    if broker::functions::ensure(conn).await? {
        tracing::info!(
            library = broker::functions::LIBRARY,
            revision = broker::functions::revision(),
            "loaded the Redis function library"
        );
    }
    if let Err(e) = info.check_eviction() {
        if !config.allow_eviction {
            return Err(e);
        }
        tracing::warn!(error = %e, "starting anyway: eviction allowed (allow_eviction / --allow-eviction)");
    } else if info.maxmemory_policy.starts_with("volatile-") {
        tracing::info!(
            policy = %info.maxmemory_policy,
            "volatile eviction can delete worker registry records (keys with a TTL), never tasks"
        );
    }
    for (queue, options) in queues {
        options.durability.check(&info).map_err(|e| match e {
            crate::Error::UnsupportedServer { setting, reason } => crate::Error::UnsupportedServer {
                setting: format!("{setting} (queue {})", queue.name()),
                reason,
            },
            other => other,
        })?;
        if let Durability::Replicated { replicas, .. } = options.durability
            && info.replicas < replicas
        {
            tracing::warn!(
                queue = %queue.name(),
                durability = %options.durability,
                connected = info.replicas,
                "fewer replicas are connected than the durability asks for: settles will be logged as unconfirmed until they are"
            );
        }
    }
    Ok(info)
}

struct Shared {
    id: String,
    lanes: Vec<Lane>,
    router: Router,
    config: WorkerConfig,
    /// Multiplexed connection for everything but the blocking read.
    conn: RedisConnection,
    /// One permit per handler slot.
    permits: Arc<Semaphore>,
    /// The long-lived tasks handlers run on.
    runners: Arc<runners::Runners>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    /// Outcomes on their way to the acker: fetchers wait while it is behind.
    unsettled: acker::Unsettled,
    /// Cancels handlers still running when the drain deadline passes.
    abort: CancellationToken,
    counters: Arc<WorkerCounters>,
    /// What the loops count for an exporter, when the worker was given metrics.
    metrics: Option<Arc<WorkerMetrics>>,
    /// Start records for the tracker's starter.
    starts: mpsc::UnboundedSender<tracker::StartRequest>,
    /// Tracked tasks running now.
    running: tracker::RunningTasks,
    /// What is left of `max_tasks`, when there is a limit.
    budget: Option<Budget>,
    /// Where every loop reads the time it passes to the broker.
    clock: Clock,
    /// When the drain must be over: set when shutdown begins (`drain_timeout` +
    /// [`DRAIN_SETTLE_BUDGET`] from then). Writes still failing at this instant are given up:
    /// their tasks stay pending and are reclaimed a lease later.
    drain_deadline: OnceLock<tokio::time::Instant>,
    /// The limits this worker enforces, with their keys.
    limits: HashMap<String, (crate::keys::LimitKeys, crate::limits::Limit)>,
    /// Running slots this worker's handlers hold, by limit (renewed by the heartbeat).
    limit_holds: Mutex<HashMap<Arc<str>, HashSet<String>>>,
    /// When the promoter plans to look next, ms since the epoch: a task parked for a limit
    /// until earlier wakes it (`promoter_wake`).
    promoter_due: AtomicU64,
    /// The earliest due time wakers asked for since the promoter last planned its sleep.
    promoter_wanted: AtomicU64,
    promoter_wake: tokio::sync::Notify,
    /// Each fetcher's connection, for ending its blocking read early (`CLIENT UNBLOCK`).
    fetch_clients: Vec<FetchClient>,
    /// How the acker writes a plain success settled within the fast window (`acker.rs`):
    /// `XACKDEL` on Redis 8.2 and later, `XACK` + `XDEL` before.
    ack_command: broker::AckCommand,
    /// Whether the fast acks are on: turned off for good when the server refuses them (an ACL
    /// without `XACKDEL`), and every outcome then takes the script.
    fast_acks: AtomicBool,
    /// Told when a pause flag changed (a fetcher waiting with every lane paused looks again).
    lanes_changed: tokio::sync::Notify,
    /// When a read may have lost its reply (ms since the epoch; 0: never): entries delivered
    /// to this consumer that it does not hold age out, and the reclaimer sweeps for them.
    lost_replies_at: AtomicU64,
    /// The single node's client, for the promoter's wake subscription (none on a cluster or
    /// behind Sentinel: the promoter polls).
    wake_client: Option<redis::Client>,
    /// Whether the promoter's wake subscription is up (it then sleeps long between rounds).
    subscribed: AtomicBool,
    /// A pause flag changed (signalled): the promoter reads the flags on its next round.
    pause_signal: AtomicBool,
}

/// A fetcher's connection as `CLIENT UNBLOCK` needs it.
#[derive(Debug)]
struct FetchClient {
    /// Its `CLIENT ID`, once asked (again after an error: the connection may be new).
    id: Mutex<Option<i64>>,
    /// A stream it reads, which routes a command to its node.
    route: String,
}

impl Shared {
    /// A Redis call of a loop failed (counted in the metrics, when on).
    fn redis_failed(&self) {
        if let Some(m) = &self.metrics {
            m.redis_failed();
        }
    }

    /// Wakes the promoter when it plans to sleep past `due_ms` (a task due then was just
    /// scheduled, retried or parked). A call while the promoter is in a round is kept in
    /// `promoter_wanted`, which the promoter reads once it has planned its next sleep.
    fn wake_promoter_by(&self, due_ms: u64) {
        self.promoter_wanted.fetch_min(due_ms, Ordering::SeqCst);
        if self.promoter_due.load(Ordering::SeqCst) > due_ms {
            self.promoter_wake.notify_one();
        }
    }

    /// A read failed: its reply (entries delivered to this consumer) may be lost.
    fn suspect_lost_replies(&self) {
        self.lost_replies_at.store(self.clock.now_ms(), Ordering::Relaxed);
    }

    /// Ends every fetcher's blocking read now (it returns empty and the fetcher loops: on a
    /// quiet it stops, on a pause flag change it reads the lanes still served).
    async fn unblock_fetchers(&self) {
        let mut conn = self.conn.clone();
        for client in &self.fetch_clients {
            let id = *client.id.lock().expect("never poisoned");
            if let Some(id) = id
                && let Err(e) = broker::unblock_client(&mut conn, &client.route, id).await
            {
                tracing::debug!(error = %e, "CLIENT UNBLOCK failed; the read ends within its block");
            }
        }
    }

    /// The limit `name` this worker enforces, with its keys: one of its configured limits
    /// (borrowed: nothing is built per task), or a group's cap (`group:<g>`, when it caps
    /// groups; its keys are named after the group).
    fn limit_spec(&self, name: &str) -> Option<(std::borrow::Cow<'_, crate::keys::LimitKeys>, crate::limits::Limit)> {
        if let Some((keys, limit)) = self.limits.get(name) {
            return Some((std::borrow::Cow::Borrowed(keys), *limit));
        }
        let cap = self.config.max_running_per_group?;
        name.starts_with("group:").then(|| {
            (
                std::borrow::Cow::Owned(crate::keys::LimitKeys::new(name)),
                crate::limits::Limit {
                    rate: None,
                    max_running: Some(cap),
                },
            )
        })
    }

    /// Records entries read from a lane as held in process (see [`Lane::held`]).
    fn hold(&self, lane: usize, ids: impl Iterator<Item = StreamId>) {
        let now = std::time::Instant::now();
        let mut held = self.lanes[lane].held.lock().expect("never poisoned");
        held.extend(ids.map(|id| (id, now)));
    }

    /// Forgets entries whose outcome is settled (or fenced off).
    fn release(&self, lane: usize, ids: impl Iterator<Item = StreamId>) {
        let mut held = self.lanes[lane].held.lock().expect("never poisoned");
        for id in ids {
            held.remove(&id);
        }
    }

    /// The ids held in a lane now, for renewing their leases.
    fn held_ids(&self, lane: usize) -> Vec<StreamId> {
        let held = self.lanes[lane].held.lock().expect("never poisoned");
        held.keys().copied().collect()
    }

    /// Budget units for up to `want` entries a loop is about to ask Redis for, taken now
    /// without waiting; `None` when the worker has no `max_tasks`.
    fn try_units(&self, want: usize) -> Option<Units> {
        self.budget.as_ref().map(|b| b.try_reserve(want))
    }

    /// How many entries a loop holding `units` may ask for, of the `want` its slots allow.
    fn entries_allowed(units: &Option<Units>, want: usize) -> usize {
        units.as_ref().map_or(want, |u| want.min(u.len()))
    }

    /// Spends a budget unit on an entry about to be dispatched. False when the budget is
    /// spent: the entry stays held, unrun, and is requeued when the worker drains.
    fn spend(&self, units: &mut Option<Units>) -> bool {
        match (units, &self.budget) {
            (Some(u), Some(b)) => u.spend(b),
            _ => true,
        }
    }

    fn settle_tracked(
        &self,
        lane: usize,
        entry_id: StreamId,
        settle: Settle,
        track: Option<broker::lifecycle::Tracked>,
    ) {
        // The acker only stops after every handler has finished, so the receiver is alive
        // whenever a handler sends; an error here would mean a bug in the shutdown order.
        let outcome = Outcome {
            lane,
            entry_id,
            settle,
            track,
        };
        self.unsettled.sent();
        if self.outcomes.send(outcome).is_err() {
            self.unsettled.done(1);
            tracing::error!(worker = %self.id, "outcome after the acker stopped; the task stays pending and will be reclaimed");
        }
    }
}

/// A worker for one or more queues.
///
/// ```no_run
/// use rivulet::{Queue, Router, TaskContext, Worker, WorkerConfig};
///
/// # async fn demo() -> Result<(), rivulet::Error> {
/// let router = Router::new().route("hello", |ctx: TaskContext, name: String| async move {
///     tracing::info!(task_id = %ctx.id, %name, "hello");
///     Ok(())
/// });
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let worker = Worker::new(client, router, WorkerConfig::default()).queue(Queue::new("default")?);
/// worker.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    target: RedisTarget,
    router: Router,
    config: WorkerConfig,
    queues: Vec<(Queue, QueueOptions)>,
    id: String,
    counters: Arc<WorkerCounters>,
    metrics: Option<Arc<WorkerMetrics>>,
    handle: ShutdownHandle,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker with no queues yet; add them with [`queue`](Self::queue).
    ///
    /// `target` is where Redis is: a [`RedisTarget`] parsed from a URL (one node, a Cluster,
    /// Sentinel) or a `redis::Client` for one node.
    pub fn new(target: impl Into<RedisTarget>, router: Router, config: WorkerConfig) -> Self {
        let id = config.worker_id.clone().unwrap_or_else(generate_worker_id);
        Worker {
            target: target.into(),
            router,
            config,
            queues: Vec::new(),
            id,
            counters: Arc::default(),
            metrics: None,
            handle: ShutdownHandle::default(),
        }
    }

    /// Counts tasks, run and wait times, in flight, slots and Redis errors into `metrics` for
    /// an exporter to read ([`WorkerMetrics::snapshot`]) while the worker runs. Off by
    /// default; on, each task costs a few relaxed atomic adds.
    pub fn with_metrics(mut self, metrics: Arc<WorkerMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves `queue` with the worker's defaults.
    pub fn queue(self, queue: Queue) -> Self {
        self.queue_with(queue, QueueOptions::default())
    }

    /// Serves `queue` with its own retry policy and timeout.
    pub fn queue_with(mut self, queue: Queue, options: QueueOptions) -> Self {
        self.queues.push((queue, options));
        self
    }

    /// The worker's id (its consumer name in every group).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Live counters, readable while the worker runs.
    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.counters.clone()
    }

    /// A handle that quiets or terminates this worker once it runs (see [`ShutdownHandle`]).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown` resolves (or the [`ShutdownHandle`] says so, or `max_tasks` is
    /// spent), then drains: stops fetching, gives in-flight handlers up to `drain_timeout`
    /// (none after [`ShutdownHandle::terminate`]), requeues what is still unfinished so it
    /// runs again at once, settles everything, and deregisters. Pass
    /// `std::future::pending()` to stop through the handle alone.
    ///
    /// Fails only at start (bad configuration, Redis unreachable); once running, Redis errors
    /// are logged and retried with backoff.
    #[tracing::instrument(name = "worker", skip_all, fields(worker = %self.id))]
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<WorkerReport> {
        self.config.validate()?;
        if self.queues.is_empty() {
            return Err(crate::Error::config("queues", "a worker needs at least one queue"));
        }
        let Worker {
            target,
            router,
            config,
            queues,
            id,
            counters,
            metrics,
            handle,
        } = self;
        let ranks = queues
            .iter()
            .map(|(q, _)| q.layout().priorities.len())
            .max()
            .unwrap_or(0);
        if let PriorityMode::Weighted(weights) = &config.priority
            && weights.len() > ranks
        {
            return Err(crate::Error::config(
                "priority",
                format!("{} weights for queues of at most {ranks} priorities", weights.len()),
            ));
        }
        let mut conn = target.open(Some(Duration::from_secs(10))).await?;
        let server = check_server(&mut conn, &config, &queues).await?;

        let mut lanes = Vec::new();
        for (queue, options) in &queues {
            broker::declare_queue(&mut conn, queue).await?;
            for shard in queue.all_shards() {
                broker::ensure_group(&mut conn, &shard.keys.stream).await?;
                lanes.push(Lane {
                    queue: queue.name().clone(),
                    priority: shard.priority.into(),
                    rank: shard.rank,
                    keys: shard.keys,
                    options: *options,
                    paused: AtomicBool::new(false),
                    held: Mutex::default(),
                    retention_ms: crate::envelope::millis(queue.retention_period()),
                    events_maxlen: queue.events_maxlen(),
                    grouped: AtomicBool::new(false),
                });
            }
        }

        // The blocking reads get connections of their own, with a response timeout longer than
        // BLOCK: a blocking read would stall every other command on the shared multiplexed
        // one. On one node, `fetchers` loops read every lane side by side. On a cluster one
        // XREADGROUP may only name streams of one slot, and every shard is its own slot: one
        // fetcher per slot group, each on its own connection.
        let mut fetch_conns = Vec::new();
        let mut fetch_clients = Vec::new();
        let fetch_timeout = config.block + Duration::from_secs(10);
        for group in fetch_groups(&lanes, conn.is_cluster(), config.fetchers.min(config.concurrency)) {
            fetch_clients.push(FetchClient {
                id: Mutex::new(None),
                route: lanes[group[0]].keys.stream.clone(),
            });
            fetch_conns.push((group, target.open_dedicated(fetch_timeout).await?));
        }
        // The acker's plain acks go out on a link of its own where the engine can have one
        // (their replies, a status per id, are read without redis-rs: `broker::reader`), on
        // the shared connection elsewhere.
        let ack_link = target.open_raw(Duration::from_secs(10)).await?;

        let limits: HashMap<_, _> = config
            .limits
            .iter()
            .map(|(name, limit)| (name.clone(), (crate::keys::LimitKeys::new(name), *limit)))
            .collect();
        broker::limits::register_limits(&mut conn, limits.iter().map(|(name, (_, l))| (name.as_str(), l))).await?;
        // Fair groups' weights and window live in each shard (the enqueue script reads them).
        if !config.group_weights.is_empty() || config.fair_window.is_some() {
            let keys: Vec<&ShardKeys> = lanes.iter().map(|l| &l.keys).collect();
            broker::set_fair_settings(&mut conn, &keys, config.fair_window, &config.group_weights).await?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (starts, starts_rx) = mpsc::unbounded_channel();
        let runners = runners::Runners::new();
        let metrics = metrics.filter(|m| {
            let labels = lanes
                .iter()
                .map(|l| (l.queue.to_string(), l.priority.to_string()))
                .collect();
            m.start(labels, router.kinds_by_index(), config.concurrency, runners.clone())
        });
        let shared = Arc::new(Shared {
            starts,
            running: Default::default(),
            id,
            lanes,
            router,
            permits: Arc::new(Semaphore::new(config.concurrency)),
            budget: config.max_tasks.map(Budget::new),
            config,
            conn,
            runners,
            outcomes: tx,
            unsettled: acker::Unsettled::default(),
            abort: CancellationToken::new(),
            counters,
            metrics,
            clock: Clock::System,
            drain_deadline: OnceLock::new(),
            limits,
            limit_holds: Mutex::default(),
            promoter_due: AtomicU64::new(u64::MAX),
            promoter_wanted: AtomicU64::new(u64::MAX),
            promoter_wake: tokio::sync::Notify::new(),
            fetch_clients,
            ack_command: broker::AckCommand::for_version(server.version),
            fast_acks: AtomicBool::new(true),
            lanes_changed: tokio::sync::Notify::new(),
            lost_replies_at: AtomicU64::new(0),
            wake_client: target.single_client().cloned(),
            subscribed: AtomicBool::new(false),
            pause_signal: AtomicBool::new(false),
        });
        // Before the first read: a worker started on a paused queue must not run its tasks.
        promoter::refresh_pause_flags(&shared, &mut shared.conn.clone()).await?;
        heartbeat::beat(&shared, None).await;
        tracing::info!(
            // Lists as comma-separated text: a log field is a plain value, never Rust's debug form.
            queues = %queues.iter().map(|(q, _)| q.name().as_str()).collect::<Vec<_>>().join(","),
            concurrency = shared.config.concurrency,
            kinds = %shared.router.kinds().collect::<Vec<_>>().join(","),
            "worker started"
        );
        if let Some(m) = &shared.metrics {
            m.set_running(true);
        }

        // quiet: stop taking new work. stop: end the maintenance loops and the acker.
        let quiet = CancellationToken::new();
        let stop = CancellationToken::new();
        let mut intake = JoinSet::new();
        for (me, (group, conn)) in fetch_conns.into_iter().enumerate() {
            intake.spawn(fetcher::run(shared.clone(), me, group, conn, quiet.clone()));
        }
        intake.spawn(reclaimer::run(shared.clone(), quiet.clone()));
        let mut upkeep = JoinSet::new();
        upkeep.spawn(promoter::run(shared.clone(), stop.clone()));
        upkeep.spawn(heartbeat::run(shared.clone(), stop.clone()));
        upkeep.spawn(tracker::run_monitor(shared.clone(), stop.clone()));
        upkeep.spawn(runners::reap_idle(shared.clone(), stop.clone()));
        // The starter lives as long as the acker: handlers wait on both until they finish.
        let mut acker = JoinSet::new();
        let ack_link = ack_link.unwrap_or_else(|| shared.conn.clone().into());
        acker.spawn(acker::run(shared.clone(), rx, ack_link, stop.clone()));
        acker.spawn(tracker::run_starter(shared.clone(), starts_rx, stop.clone()));

        let exhausted = match &shared.budget {
            Some(b) => b.exhausted().clone(),
            None => CancellationToken::new(),
        };
        tokio::pin!(shutdown);
        tokio::select! {
            () = &mut shutdown => {}
            () = handle.quiet.cancelled() => {}
            () = exhausted.cancelled() => {}
            Some(res) = intake.join_next() => {
                let how = match &res {
                    Ok(()) => "returned".to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::error!(how = %how, "an intake loop ended on its own; shutting down");
            }
        }

        // Shutdown order: 1. quiet (no new reads or reclaims; the loops finish the call they
        // are in, so no entry arrives after this); 2. drain handlers up to the deadline, then
        // abort the rest; 3. stop the acker once it has settled everything; 4. requeue what
        // this worker still holds; 5. stop promoter and heartbeat; 6. deregister.
        // The whole drain has one budget: handlers get `drain_timeout` from here, and steps
        // 3-6 end by `drain_timeout + DRAIN_SETTLE_BUDGET` from here whatever Redis does.
        if let Some(m) = &shared.metrics {
            m.set_running(false);
        }
        let began = tokio::time::Instant::now();
        let handlers_by = began + shared.config.drain_timeout;
        let deadline = *shared.drain_deadline.get_or_init(|| handlers_by + DRAIN_SETTLE_BUDGET);
        // Debug: the signal handler (or the caller) already said the process drains; one
        // "draining" line per signal, not one more per worker.
        tracing::debug!(in_flight = in_flight(&shared), "quiet: finishing in-flight tasks");
        quiet.cancel();
        // A fetcher's read is not raced against quiet (see `fetcher`), but a Redis that
        // stopped answering must not hold the drain past its budget: a read cut off here
        // leaves its entries pending, reclaimed after the lease.
        // A fetcher blocked in a long read is ended with CLIENT UNBLOCK, sent again until the
        // intake is down (a fetcher may have been about to block when the first one went).
        let unblock = async {
            loop {
                shared.unblock_fetchers().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let joined = async {
            tokio::select! {
                () = async { while intake.join_next().await.is_some() {} } => {}
                () = unblock => {}
            }
        };
        if tokio::time::timeout_at(handlers_by, joined).await.is_err() {
            tracing::warn!("intake did not stop by the drain deadline; cutting its Redis calls off");
            intake.abort_all();
            while intake.join_next().await.is_some() {}
        }
        shared.runners.close();
        let drained = tokio::select! {
            biased;
            r = tokio::time::timeout_at(handlers_by, shared.runners.wait()) => r.is_ok(),
            () = handle.terminate.cancelled() => false,
        };
        if !drained {
            if handle.is_terminated() {
                tracing::warn!(
                    in_flight = in_flight(&shared),
                    "terminated; requeueing unfinished tasks"
                );
            } else {
                tracing::warn!(
                    in_flight = in_flight(&shared),
                    drain_timeout_ms = shared.config.drain_timeout.as_millis() as u64,
                    "drain deadline passed; requeueing unfinished tasks"
                );
            }
            shared.abort.cancel();
            shared.runners.wait().await;
        }
        stop.cancel();
        while acker.join_next().await.is_some() {}
        let requeued = requeue_held(&shared, deadline).await;
        if tokio::time::timeout_at(deadline, async { while upkeep.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            upkeep.abort_all();
            while upkeep.join_next().await.is_some() {}
        }
        if tokio::time::timeout_at(deadline, heartbeat::deregister(&shared))
            .await
            .is_err()
        {
            tracing::warn!(
                "could not deregister within the drain budget; the registry entry expires on its own and the reclaimer removes the consumer"
            );
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                budget = ?(shared.config.drain_timeout + DRAIN_SETTLE_BUDGET),
                "drain budget spent with Redis unreachable: unsettled outcomes and unfinished tasks stay pending and run again elsewhere after the lease"
            );
        }

        let c = &shared.counters;
        let report = WorkerReport {
            started: WorkerCounters::get(&c.started),
            succeeded: WorkerCounters::get(&c.succeeded),
            failed: WorkerCounters::get(&c.failed),
            requeued,
            reached_max_tasks: exhausted.is_cancelled(),
        };
        tracing::info!(
            started = report.started,
            succeeded = report.succeeded,
            failed = report.failed,
            requeued = report.requeued,
            reached_max_tasks = report.reached_max_tasks,
            "worker stopped"
        );
        Ok(report)
    }
}

/// Which lanes each fetcher reads: on one node, every lane for each of `fetchers` loops; on a
/// cluster, the lanes of one hash slot per loop (a multi-key XREADGROUP must not span slots).
fn fetch_groups(lanes: &[Lane], cluster: bool, fetchers: usize) -> Vec<Vec<usize>> {
    if !cluster {
        return vec![(0..lanes.len()).collect(); fetchers];
    }
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, lane) in lanes.iter().enumerate() {
        let slot = crate::keys::hash_slot(lane.keys.stream.as_bytes());
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, g)) => g.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Handlers running now. Not `concurrency - free permits`: the fetcher holds a permit while
/// it waits for entries, and an idle worker would then look busy.
fn in_flight(shared: &Shared) -> usize {
    shared.runners.busy()
}

/// Puts back every entry this worker still holds (unfinished at the drain deadline, or read
/// but never started) at the end of its stream, so another worker runs it at once instead of
/// a lease later. Redis errors are retried with the outage backoff until `deadline`; what is
/// not requeued by then stays pending and is reclaimed after the lease.
async fn requeue_held(shared: &Shared, deadline: tokio::time::Instant) -> u64 {
    let conn = shared.conn.clone();
    let mut requeued = 0;
    let mut outage = Outage::new(shared);
    for lane in &shared.lanes {
        loop {
            let step = async {
                let ids = broker::owned_ids(&mut conn.clone(), &lane.keys, &shared.id, 500).await?;
                if ids.is_empty() {
                    return Ok(None);
                }
                // Tracked tasks' records read `queued` again: their entries say which they are.
                let found = broker::entries_by_id(&mut conn.clone(), &lane.keys.stream, &ids).await?;
                let tracks: Vec<Option<broker::lifecycle::Tracked>> = found
                    .into_iter()
                    .map(|e| match e.map(|e| Envelope::from_fields(e.fields)) {
                        Some(Ok(env)) => tracker::tracked(lane, &env),
                        _ => None,
                    })
                    .collect();
                let untracked: Vec<(StreamId, &Settle)> = ids
                    .iter()
                    .zip(&tracks)
                    .filter(|(_, t)| t.is_none())
                    .map(|(id, _)| (*id, &Settle::Requeue))
                    .collect();
                let tracked: Vec<(StreamId, &Settle, &broker::lifecycle::Tracked)> = ids
                    .iter()
                    .zip(&tracks)
                    .filter_map(|(id, t)| t.as_ref().map(|t| (*id, &Settle::Requeue, t)))
                    .collect();
                let ctx = broker::SettleCtx {
                    keys: &lane.keys,
                    consumer: &shared.id,
                    dlq_maxlen: shared.config.dlq_maxlen,
                    now_ms: shared.clock.now_ms(),
                };
                let stale =
                    broker::lifecycle::settle_tracked(&mut conn.clone(), ctx, lane.events_maxlen, &untracked, &tracked)
                        .await?;
                Ok::<_, crate::Error>(Some((ids.len() - stale.len()) as u64))
            };
            let error = match tokio::time::timeout_at(deadline, step).await {
                Ok(Ok(None)) => break,
                Ok(Ok(Some(n))) => {
                    requeued += n;
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the drain budget ran out".to_owned(),
            };
            let delay = outage.next_delay();
            if tokio::time::Instant::now() + delay >= deadline {
                tracing::error!(error = %error, stream = %lane.keys.stream, "could not requeue held tasks within the drain budget; they will be reclaimed after the lease");
                if requeued > 0 {
                    tracing::info!(requeued, "requeued unfinished tasks");
                }
                return requeued;
            }
            tracing::warn!(error = %error, stream = %lane.keys.stream, retry_in = ?delay, "requeueing failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }
    if requeued > 0 {
        tracing::info!(requeued, "requeued unfinished tasks");
    }
    requeued
}

fn generate_worker_id() -> String {
    format!(
        "{}-{}-{:06x}",
        hostname(),
        std::process::id(),
        fastrand::u32(..0x100_0000)
    )
}

/// The machine's host name (for the workers list), without a dependency.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
        .replace(char::is_whitespace, "_")
}

/// Exponential backoff for loops that wait out a Redis outage: 50 ms doubling to 5 s, jittered.
/// Each failure is a Redis error in the metrics, and a loop failing in a row is in an outage
/// until it recovers (or gives up: dropped). (The scheduler's loop uses it too, without
/// metrics.)
#[derive(Debug, Default)]
pub(crate) struct Outage {
    failures: u32,
    metrics: Option<Arc<WorkerMetrics>>,
}

impl Drop for Outage {
    fn drop(&mut self) {
        if self.failures > 0
            && let Some(m) = &self.metrics
        {
            m.outage_ended();
        }
    }
}

impl Outage {
    fn new(shared: &Shared) -> Self {
        Outage {
            failures: 0,
            metrics: shared.metrics.clone(),
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        if let Some(m) = &self.metrics {
            m.redis_failed();
            if self.failures == 0 {
                m.outage_began();
            }
        }
        let policy = crate::backoff::RetryPolicy {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(5),
            ..Default::default()
        };
        let d = policy.ceiling(self.failures).mul_f64(0.5 + fastrand::f64() / 2.0);
        self.failures = self.failures.saturating_add(1);
        d
    }

    pub(crate) fn recovered(&mut self) -> bool {
        let was = std::mem::take(&mut self.failures) > 0;
        if was && let Some(m) = &self.metrics {
            m.outage_ended();
        }
        was
    }
}
