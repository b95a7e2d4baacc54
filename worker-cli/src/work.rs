//! One worker process (`worker-cli work`): the engine's `Worker` with the built-in and
//! `--exec` handlers, plus what a supervised child needs:
//!
//! - it dies with its supervisor: `PR_SET_PDEATHSIG` = SIGKILL set first thing, then a check
//!   that the parent is still the supervisor that started it (it may have died before the
//!   request was made), and a watch on the parent for as long as it runs;
//! - the first SIGTERM/SIGINT drains (stop fetching, finish or requeue in-flight tasks); a second
//!   one stops at once;
//! - at its `--max-tasks`th start it stops fetching, drains (the tasks it has already read
//!   still run) and exits 0, which a supervisor reads as "replace me";
//! - it saves the demo's latency samples (see `demo`).
//!
//! Without `RIVULET_SUPERVISOR_PID` (run by hand) it is a plain standalone worker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::unistd::{Pid, getppid};
use rivulet::{Inspector, Queue, QueueName, Router, Worker, WorkerCounters};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::settings::WorkerSettings;
use crate::supervisor::Stop;
use crate::{demo, handlers, store};

/// Set by the supervisor for its children: its pid.
pub const SUPERVISOR_PID_ENV: &str = "RIVULET_SUPERVISOR_PID";
/// Set by the supervisor for its children: the child's slot number (for logs).
pub const SLOT_ENV: &str = "RIVULET_WORKER_SLOT";
/// How often a child checks that its supervisor is still its parent.
const PARENT_CHECK: Duration = Duration::from_millis(500);
/// How often the engine's count of started tasks is checked against `--max-tasks` (an atomic
/// load: cheap). The built-in and `--exec` kinds trigger the drain themselves at the exact
/// start (see `handlers::StartLimit`); this check is what counts the kinds compiled into a
/// custom binary (`main_with`), whose handlers the CLI cannot wrap: tasks of those started
/// between two checks overshoot the limit.
const TASK_COUNT_CHECK: Duration = Duration::from_millis(10);

/// Runs one worker process until it is told to stop.
pub async fn run(settings: WorkerSettings, router: Router) -> Result<()> {
    // Signals first: until the handlers are registered a SIGTERM would kill the process
    // without a drain.
    let stop = Stop::new();
    let mut loops = JoinSet::new();
    stop.on_signals(&mut loops).context("installing signal handlers")?;
    let supervisor = die_with_supervisor()?;
    let span = tracing::info_span!("work", slot = std::env::var(SLOT_ENV).ok());
    serve(settings, router, stop, loops, supervisor).instrument(span).await
}

async fn serve(
    settings: WorkerSettings,
    router: Router,
    stop: Stop,
    mut loops: JoinSet<()>,
    supervisor: Option<Pid>,
) -> Result<()> {
    let url = settings.redis_url.clone();
    let (client, conn) = store::connect_checked(&url, &settings.tls).await?;
    let inspector = Inspector::new(&client)
        .await
        .map_err(|e| store::engine_error(&url, e))?;
    let mut queues = Vec::new();
    for name in &settings.queues {
        queues.push(
            resolve_queue(&inspector, name)
                .await
                .map_err(|e| store::engine_error(&url, e))?,
        );
    }

    // The CLI's own kinds count their starts, so the drain begins at the --max-tasks-th start.
    let limit = settings
        .max_tasks
        .map(|max| Arc::new(handlers::StartLimit::new(max, stop.drain.clone())));
    let router = handlers::builtins(router, limit.clone());
    let limit_seen = limit.clone();
    let router = handlers::with_exec(router, &settings.exec, limit);
    let mut worker = Worker::new(client, router, settings.config.clone());
    let options = rivulet::QueueOptions {
        durability: settings.durability,
        ..rivulet::QueueOptions::default()
    };
    for q in queues {
        worker = worker.queue_with(q, options);
    }
    let counters = worker.counters();
    let worker_id = worker.id().to_owned();

    if let Some(pid) = supervisor {
        loops.spawn(watch_parent(pid, stop.drain.clone()));
    }
    if let Some(max) = settings.max_tasks {
        loops.spawn(watch_task_count(counters, max, stop.drain.clone()));
    }
    // The engine stops fetching in the first poll after the drain began, before it next waits
    // (or already has, when it is shutting down for another reason): tell the --max-tasks limit
    // after that poll (see `StartLimit`), not from inside the shutdown future.
    let drain = stop.drain.clone();
    let mut running = std::pin::pin!(worker.run(stop.drain.clone().cancelled_owned()));
    let running = std::future::poll_fn(|cx| {
        let draining = drain.is_cancelled();
        let poll = running.as_mut().poll(cx);
        if draining && let Some(limit) = &limit_seen {
            limit.draining();
        }
        poll
    });
    let flushed = CancellationToken::new();
    loops.spawn(demo::save_samples_until(
        conn.clone(),
        worker_id.clone(),
        flushed.clone(),
    ));

    let result = tokio::select! {
        r = running => r.map_err(|e| store::engine_error(&url, e)),
        () = stop.now.cancelled() => {
            bail!("stopped at once by a second signal (unfinished tasks run again after the lease)")
        }
    };
    // The demo's samples are final now; save them before exiting.
    flushed.cancel();
    loops.shutdown().await;
    demo::save_samples(&mut conn.clone(), &worker_id).await;
    let report = result?;
    tracing::info!(
        started = report.started,
        succeeded = report.succeeded,
        failed = report.failed,
        requeued = report.requeued,
        "worker process done"
    );
    Ok(())
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

/// Under a supervisor: asks for SIGKILL when the parent dies, then checks the parent is still
/// the supervisor (it may have died before the request was made). Returns its pid.
fn die_with_supervisor() -> Result<Option<Pid>> {
    let Ok(raw) = std::env::var(SUPERVISOR_PID_ENV) else {
        return Ok(None);
    };
    let pid: i32 = raw
        .parse()
        .with_context(|| format!("{SUPERVISOR_PID_ENV}={raw:?} is not a pid"))?;
    let pid = Pid::from_raw(pid);
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("asking to be killed with the supervisor (PR_SET_PDEATHSIG)")?;
    if getppid() != pid {
        bail!("the supervisor (pid {pid}) is gone; not starting");
    }
    Ok(Some(pid))
}

/// Drains the worker if the supervisor stops being the parent (belt and braces: the death
/// signal normally arrives first).
async fn watch_parent(supervisor: Pid, drain: CancellationToken) {
    loop {
        tokio::time::sleep(PARENT_CHECK).await;
        if getppid() != supervisor {
            tracing::warn!(supervisor = %supervisor, "supervisor is gone; stopping");
            drain.cancel();
            return;
        }
    }
}

/// Drains the worker once it has started `max` tasks of any kind (the backstop for compiled
/// kinds; see [`TASK_COUNT_CHECK`]).
async fn watch_task_count(counters: Arc<WorkerCounters>, max: u64, drain: CancellationToken) {
    loop {
        tokio::select! {
            () = drain.cancelled() => return,
            () = tokio::time::sleep(TASK_COUNT_CHECK) => {}
        }
        let started = WorkerCounters::get(&counters.started);
        if started >= max {
            drain.cancel();
            tracing::info!(
                started,
                max_tasks = max,
                "reached --max-tasks: stopped fetching; finishing what was read, then exiting"
            );
            return;
        }
    }
}
