//! One worker process (`worker-cli work`): the engine's `Worker` with the built-in and
//! `--exec` handlers, plus its side of the parent/child contract (`rivulet_fleet::contract`):
//!
//! - it dies with its supervisor (parent-death signal, a check at start and a watch on the
//!   parent for as long as it runs);
//! - the first SIGTERM/SIGINT quiets the engine (stop fetching, finish or requeue in-flight
//!   tasks); a second one terminates it (in-flight tasks are requeued at once) and exits 1;
//! - `--max-tasks` is the engine's `max_tasks`: it takes exactly M tasks, drains and exits 0,
//!   which a supervisor reads as "replace me".
//!
//! What else a particular kind of worker needs beside the engine (the demo's sample saver)
//! comes in as a companion future; this module knows nothing of it. Without
//! `RIVULET_SUPERVISOR_PID` (run by hand) it is a plain standalone worker.

use std::future::Future;

use anyhow::{Context, Result, bail};
use rivulet::{Inspector, Queue, QueueName, Router, Worker};
use rivulet_fleet::Stop;
use rivulet_fleet::contract::{self, SLOT_ENV};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::settings::{WorkerSettings, check_weights};
use crate::{handlers, store};

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
    let supervisor = contract::die_with_supervisor()?;
    if let Some(pid) = supervisor {
        let drain = stop.drain.clone();
        loops.spawn(async move {
            contract::watch_parent(pid).await;
            drain.cancel();
        });
    }
    let span = tracing::info_span!("work", slot = std::env::var(SLOT_ENV).ok());
    let result = serve(settings, router, &stop, beside).instrument(span).await;
    loops.shutdown().await;
    result
}

async fn serve<F>(
    settings: WorkerSettings,
    router: Router,
    stop: &Stop,
    beside: impl FnOnce(String, CancellationToken) -> F,
) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let url = settings.redis_url.clone();
    let (client, _) = store::connect_checked(&url).await?;
    let inspector = Inspector::new(&client)
        .await
        .map_err(|e| store::engine_error(&url, e))?;
    let queues = resolve_queues(&inspector, &settings).await?;

    let router = handlers::with_exec(handlers::with_builtins(router), &settings.exec);
    let max_tasks = settings.config.max_tasks;
    let mut worker = Worker::new(client, router, settings.config);
    for q in queues {
        worker = worker.queue(q);
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
    };
    stopped.cancel();
    if let Err(e) = companion.await {
        tracing::warn!(error = %e, "the worker's companion task failed");
    }
    let report = result.map_err(|e| store::engine_error(&url, e))?;
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
        queues.push(queue);
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
