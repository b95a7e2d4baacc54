//! One worker process (`worker-cli work`): the engine's `Worker` with the built-in and
//! `--exec` handlers, plus its side of the parent/child contract (`rivulet_fleet::contract`):
//!
//! - it dies with its supervisor (parent-death signal, a check at start and a watch on the
//!   parent for as long as it runs);
//! - the first SIGTERM/SIGINT quiets the engine (stop fetching, finish or requeue in-flight
//!   tasks); a second one terminates it (in-flight tasks are requeued at once) and exits 1;
//! - `--max-tasks` is the engine's `max_tasks`: it takes exactly M tasks, drains and exits 0,
//!   which a supervisor reads as "replace me";
//! - under a supervisor, a Redis that does not answer at start is an outage, not a crash: the
//!   process waits for it with the engine's outage backoff (50 ms doubling to 5 s, jittered,
//!   one log line per failure) until Redis answers or it is told to stop, and what it cannot
//!   wait through (Redis gone while the worker sets itself up) exits
//!   [`EXIT_OUTAGE`](rivulet_fleet::contract::EXIT_OUTAGE), which the supervisor restarts
//!   without counting a crash. A Redis that answers but refuses the worker (password, ACL) is
//!   a crash: waiting would not fix it. Run by hand, the process fails at once instead, so a
//!   typo in `--redis-url` is an error, not a silent wait.
//!
//! What else a particular kind of worker needs beside the engine (the demo's sample saver)
//! comes in as a companion future; this module knows nothing of it. Without
//! `RIVULET_SUPERVISOR_PID` (run by hand) it is a plain standalone worker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rivulet::backoff::RetryPolicy;
use rivulet::{Inspector, Queue, QueueName, Router, Worker, WorkerMetrics};
use rivulet_fleet::Stop;
use rivulet_fleet::contract::{self, SLOT_ENV};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::settings::{WorkerSettings, check_weights};
use crate::{handlers, metrics, serve, store};

/// Runs one worker process until it is told to stop. `beside` starts the companion that runs
/// for as long as the worker does: it gets the worker's id and a token cancelled once the
/// worker has stopped, and is awaited (for its last piece of work) before this returns.
pub async fn run<F>(
    settings: WorkerSettings,
    router: Router,
    beside: impl FnOnce(String, CancellationToken) -> F,
) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    // Signals first: until the handlers are registered a SIGTERM would kill the process
    // without a drain.
    let stop = Stop::new();
    let mut loops = JoinSet::new();
    stop.on_signals(&mut loops).context("installing signal handlers")?;
    // Metrics next: a bad --metrics-addr fails at once (exit 2), and the probes answer (not
    // ready) while the worker still waits for Redis.
    let metrics = Arc::new(WorkerMetrics::new());
    let stopped = CancellationToken::new();
    let mut exporters = JoinSet::new();
    if let Some(addr) = settings.metrics_addr {
        let listener = rivulet_fleet::probes::bind(addr, settings.metrics_token.clone()).await?;
        exporters.spawn(metrics::serve_worker(listener, metrics.clone(), stopped.clone()));
    }
    if let Some(path) = metrics::supervisor_socket() {
        exporters.spawn(metrics::report(path, metrics.clone(), stopped.clone()));
    }
    let supervisor = contract::die_with_supervisor()?;
    if let Some(pid) = supervisor {
        let drain = stop.drain.clone();
        loops.spawn(async move {
            contract::watch_parent(pid).await;
            drain.cancel();
        });
    }
    let span = tracing::info_span!("work", slot = std::env::var(SLOT_ENV).ok());
    // Under a supervisor: one that the child dies with, or one it outlives (`autoscaler
    // --leave-workers`), which still sets the slot.
    let wait_for_redis = supervisor.is_some() || std::env::var_os(SLOT_ENV).is_some();
    let result = serve(settings, router, metrics, &stop, wait_for_redis, beside)
        .instrument(span)
        .await;
    // The supervisor gets the last numbers; a scrape in flight finishes.
    stopped.cancel();
    if tokio::time::timeout(Duration::from_secs(2), async {
        while exporters.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        exporters.shutdown().await;
    }
    loops.shutdown().await;
    result
}

/// A worker process that stopped because Redis could not be reached: exit
/// [`EXIT_OUTAGE`](rivulet_fleet::contract::EXIT_OUTAGE) (`main_with` maps it), an outage for
/// the supervisor rather than a crash.
#[derive(Debug)]
pub struct Outage(anyhow::Error);

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redis could not be reached: {:#}", self.0)
    }
}

impl std::error::Error for Outage {}

/// The engine's outage backoff (`rivulet::worker`'s loops use the same numbers): 50 ms
/// doubling to 5 s.
fn outage_backoff() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(50),
        cap: Duration::from_secs(5),
        ..RetryPolicy::default()
    }
}

/// Why one attempt to set the worker up failed.
enum SetupError {
    /// Redis did not answer, or stopped answering: try again.
    Transient(anyhow::Error),
    /// Anything else (refused, unknown queue layout...): give up.
    Fatal(anyhow::Error),
}

/// Connects and resolves the queues: the part of a worker's start that needs Redis.
async fn set_up(url: &str, settings: &WorkerSettings) -> Result<(rivulet::RedisTarget, Vec<Queue>), SetupError> {
    let engine = |e: rivulet::Error| {
        if e.is_transient() {
            SetupError::Transient(store::engine_error(url, e))
        } else {
            SetupError::Fatal(store::engine_error(url, e))
        }
    };
    let (client, _) = store::connect_checked(url, &settings.tls).await.map_err(|e| {
        if e.nothing_answered() {
            SetupError::Transient(e.into())
        } else {
            SetupError::Fatal(e.into())
        }
    })?;
    let inspector = Inspector::new(&client).await.map_err(engine)?;
    let mut queues = Vec::new();
    for name in &settings.queues {
        let queue = resolve_queue(&inspector, name).await.map_err(engine)?;
        check_weights(&settings.config.priority, &queue).map_err(|e| SetupError::Fatal(e.into()))?;
        queues.push(queue.retention(settings.retention));
    }
    Ok((client, queues))
}

/// [`set_up`], waiting through an outage when `wait` (under a supervisor) until Redis answers
/// or `stop` drains; `None` when told to stop first.
async fn set_up_waiting(
    url: &str,
    settings: &WorkerSettings,
    wait: bool,
    stop: &Stop,
) -> Result<Option<(rivulet::RedisTarget, Vec<Queue>)>> {
    let mut failures = 0u32;
    loop {
        match set_up(url, settings).await {
            Ok(ready) => {
                if failures > 0 {
                    tracing::info!(failures, "Redis answers again; starting the worker");
                }
                return Ok(Some(ready));
            }
            Err(SetupError::Fatal(e)) => return Err(e),
            Err(SetupError::Transient(e)) if !wait => return Err(e),
            Err(SetupError::Transient(e)) => {
                let delay = outage_backoff().ceiling(failures).mul_f64(0.5 + fastrand::f64() / 2.0);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "Redis does not answer; waiting for it (an outage, not a crash)");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.drain.cancelled() => return Ok(None),
                    () = stop.now.cancelled() => return Ok(None),
                }
            }
        }
    }
}

async fn serve<F>(
    settings: WorkerSettings,
    router: Router,
    metrics: Arc<WorkerMetrics>,
    stop: &Stop,
    wait_for_redis: bool,
    beside: impl FnOnce(String, CancellationToken) -> F,
) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let url = settings.redis_url.clone();
    let Some((client, queues)) = set_up_waiting(&url, &settings, wait_for_redis, stop).await? else {
        tracing::info!("told to stop while waiting for Redis; exiting");
        return Ok(());
    };

    let router = handlers::with_exec(handlers::with_builtins(router), &settings.exec);
    let (router, pools) = serve::Pools::start(router, &settings.serve);
    let pools_failed = pools.failed();
    let max_tasks = settings.config.max_tasks;
    let mut worker = Worker::new(client, router, settings.config).with_metrics(metrics);
    let options = rivulet::QueueOptions {
        durability: settings.durability,
        ..rivulet::QueueOptions::default()
    };
    for q in queues {
        worker = worker.queue_with(q, options);
    }
    let handle = worker.shutdown_handle();
    let stopped = CancellationToken::new();
    let companion = tokio::spawn(beside(worker.id().to_owned(), stopped.clone()));

    // The first signal quiets, the second terminates; the engine does the rest.
    let running = worker.run(stop.drain.clone().cancelled_owned());
    tokio::pin!(running);
    let result = tokio::select! {
        r = &mut running => r,
        () = stop.now.cancelled() => {
            handle.terminate();
            running.await
        }
        // A --serve handler process that cannot run: stop taking tasks (a signal still
        // terminates).
        () = pools_failed.cancelled() => {
            handle.quiet();
            tokio::select! {
                r = &mut running => r,
                () = stop.now.cancelled() => {
                    handle.terminate();
                    running.await
                }
            }
        }
    };
    // After the drain: nothing runs in the handler processes any more.
    let serve_failure = pools.failure();
    pools.shutdown().await;
    stopped.cancel();
    if let Err(e) = companion.await {
        tracing::warn!(error = %e, "the worker's companion task failed");
    }
    let report = match result {
        Ok(report) => report,
        // Redis went away while the worker set itself up (groups, registry): an outage.
        Err(e) if wait_for_redis && e.is_transient() => return Err(Outage(store::engine_error(&url, e)).into()),
        Err(e) => return Err(store::engine_error(&url, e)),
    };
    if let Some(why) = serve_failure {
        bail!("{why}");
    }
    if report.reached_max_tasks {
        tracing::info!(max_tasks, "reached --max-tasks: took that many tasks, drained; exiting");
    }
    // The engine logged the report's numbers ("worker stopped").
    if handle.is_terminated() {
        bail!(
            "stopped at once by a second signal ({} unfinished task(s) requeued to run again at once)",
            report.requeued
        );
    }
    Ok(())
}

/// The queues `settings` names, with their layouts, checked against the priority weights (a
/// mismatch is a usage error: exit 2, which a supervisor and systemd do not restart).
pub async fn resolve_queues(inspector: &Inspector, settings: &WorkerSettings) -> Result<Vec<Queue>> {
    let mut queues = Vec::new();
    for name in &settings.queues {
        let queue = resolve_queue(inspector, name)
            .await
            .map_err(|e| store::engine_error(&settings.redis_url, e))?;
        check_weights(&settings.config.priority, &queue)?;
        queues.push(queue.retention(settings.retention));
    }
    Ok(queues)
}

/// A queue with the layout Redis has recorded, or the default layout for a new one.
pub async fn resolve_queue(inspector: &Inspector, name: &QueueName) -> rivulet::Result<Queue> {
    match inspector.queue(name.as_str()).await {
        Ok(q) => Ok(q),
        Err(rivulet::Error::NotFound(_)) => {
            tracing::info!(queue = %name, "queue not known yet; it gets the default layout");
            Queue::new(name.as_str())
        }
        Err(e) => Err(e),
    }
}
