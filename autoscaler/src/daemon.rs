//! The daemon loop: observe -> decide -> act, once per interval, until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use rivulet::{Inspector, Queue};
use tokio_util::sync::CancellationToken;

use crate::actuator::{CommandActuator, ProcessActuator};
use crate::metrics::{self, Metrics};
use crate::observe::Observer;
use crate::policy::{Observation, PolicyParams, PolicyState, decide};

/// How the daemon changes the number of workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actuation {
    /// Child processes started with `sh -c <command>`.
    Process {
        /// The worker command.
        command: String,
        /// On the daemon's own shutdown: drain the workers (true) or leave them running.
        drain_on_exit: bool,
        /// How long a stopping worker gets before SIGKILL.
        hard_deadline: Duration,
    },
    /// A command template with `{replicas}`.
    Command {
        /// The template.
        template: String,
    },
}

/// Everything the daemon needs, resolved from flags and environment by the binary.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis URL.
    pub redis_url: String,
    /// The queue to scale workers for.
    pub queue: String,
    /// SLA per priority name.
    pub slas: Vec<(String, Duration)>,
    /// Policy parameters.
    pub params: PolicyParams,
    /// Time between decisions.
    pub interval: Duration,
    /// Rate smoothing time constant.
    pub smoothing: Duration,
    /// How to act.
    pub actuation: Actuation,
    /// Decide and log, never act.
    pub dry_run: bool,
    /// Where to serve `/metrics`.
    pub metrics_addr: Option<SocketAddr>,
}

/// The decision as stored in Redis for `worker-cli stats`.
#[derive(Debug, serde::Serialize)]
struct StoredDecision<'a> {
    desired: u32,
    current: u32,
    live: u32,
    reason: &'a str,
    detail: &'a str,
    dry_run: bool,
    at_ms: u64,
}

/// Runs until `shutdown` resolves.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    settings.params.validate().context("invalid policy parameters")?;
    let inspector = Inspector::connect(&settings.redis_url).await.with_context(|| {
        format!(
            "cannot reach Redis at {} (is it running? set --redis-url or REDIS_URL)",
            settings.redis_url
        )
    })?;
    let queue = match inspector.queue(&settings.queue).await {
        Ok(q) => q,
        Err(rivulet::Error::NotFound(_)) => {
            tracing::warn!(queue = %settings.queue, "queue not registered yet; assuming the default layout");
            Queue::new(&settings.queue)?
        }
        Err(e) => return Err(e.into()),
    };
    let slas = resolve_slas(&queue, &settings.slas)?;
    let mut observer = Observer::new(inspector.clone(), queue.clone(), slas, settings.smoothing);

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let stop = CancellationToken::new();
    let mut server = tokio::task::JoinSet::new();
    if let Some(addr) = settings.metrics_addr {
        // Bind before spawning, so a bad address fails at start rather than in the background.
        let listener = metrics::bind(addr).await?;
        server.spawn(metrics::serve(listener, Arc::new(registry), stop.clone()));
    }

    let mut process = None;
    let mut command = None;
    match &settings.actuation {
        Actuation::Process {
            command: cmd,
            hard_deadline,
            ..
        } => {
            process = Some(ProcessActuator::new(cmd.clone(), *hard_deadline));
        }
        Actuation::Command { template } => command = Some(CommandActuator::new(template.clone())?),
    }
    if !settings.dry_run
        && let Some(p) = process.as_mut()
    {
        p.scale_to(settings.params.min, &[])?;
    }

    let start = tokio::time::Instant::now();
    let mut state = PolicyState::default();
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    tracing::info!(queue = %queue.name(), dry_run = settings.dry_run, "autoscaler started");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
            Some(r) = server.join_next() => {
                r.context("metrics server panicked")??;
            }
        }
        let obs = match observer.observe().await {
            Ok(obs) => obs,
            Err(e) => {
                tracing::warn!(error = %e, "observation failed; keeping the current workers");
                continue;
            }
        };
        let current = match (&process, &command) {
            _ if settings.dry_run => obs.live_workers,
            (Some(p), _) => p.current(),
            (_, Some(c)) => c.applied().unwrap_or(obs.live_workers),
            (None, None) => unreachable!("one actuator is always configured"),
        };
        let decision = decide(&obs, current, start.elapsed(), &settings.params, &mut state);
        log_decision(&obs, current, &decision, settings.dry_run);
        metrics.record(&obs, &decision, current);
        let stored = StoredDecision {
            desired: decision.desired,
            current,
            live: obs.live_workers,
            reason: decision.reason.as_str(),
            detail: &decision.detail,
            dry_run: settings.dry_run,
            at_ms: rivulet::envelope::now_ms(),
        };
        let json = serde_json::to_string(&stored).expect("a struct of numbers and strings serialises");
        if let Err(e) = inspector.record_decision(&queue, &json).await {
            tracing::warn!(error = %e, "could not store the decision in Redis");
        }
        if settings.dry_run {
            continue;
        }
        if let Some(p) = process.as_mut() {
            let idle = observer.idle_pids().await.unwrap_or_default();
            if let Err(e) = p.scale_to(decision.desired, &idle) {
                tracing::error!(error = format!("{e:#}"), "could not start a worker");
            }
        }
        if let Some(c) = command.as_mut()
            && let Err(e) = c.scale_to(decision.desired).await
        {
            tracing::error!(error = format!("{e:#}"), "scale command failed");
        }
    }
    tracing::info!("autoscaler stopping");
    stop.cancel();
    while server.join_next().await.is_some() {}
    if let (Some(p), Actuation::Process { drain_on_exit, .. }) = (process.as_mut(), &settings.actuation) {
        if *drain_on_exit {
            tracing::info!(workers = p.current(), "draining workers");
            p.shutdown().await;
        } else {
            tracing::info!(workers = p.current(), "leaving workers running");
            p.detach();
        }
    }
    Ok(())
}

fn log_decision(obs: &Observation, current: u32, d: &crate::policy::Decision, dry_run: bool) {
    let per_priority: Vec<String> = obs
        .priorities
        .iter()
        .map(|p| {
            format!(
                "{}: backlog={}{} in_flight={} oldest={:?} arrive={:.1}/s done={:.1}/s sla={:?}",
                p.priority,
                p.backlog,
                if p.backlog_estimated { "(est)" } else { "" },
                p.in_flight,
                p.oldest_age,
                p.arrival_rate,
                p.completion_rate,
                p.sla
            )
        })
        .collect();
    tracing::info!(
        desired = d.desired,
        current,
        live = obs.live_workers,
        busy = obs.busy_workers,
        reason = %d.reason,
        detail = %d.detail,
        priorities = %per_priority.join("; "),
        dry_run,
        "decision"
    );
}

/// One SLA per priority of the queue, highest first. Priorities the flag does not name get
/// the loosest SLA given; names the queue does not have are an error.
pub fn resolve_slas(queue: &Queue, given: &[(String, Duration)]) -> anyhow::Result<Vec<Duration>> {
    for (p, _) in given {
        queue.rank(p)?;
    }
    let loosest = given
        .iter()
        .map(|(_, d)| *d)
        .max()
        .context("--sla must name at least one priority")?;
    Ok(queue
        .layout()
        .priorities
        .iter()
        .map(|p| {
            given.iter().find(|(q, _)| q == p).map(|(_, d)| *d).unwrap_or_else(|| {
                tracing::warn!(priority = %p, sla = ?loosest, "no SLA given for this priority; using the loosest");
                loosest
            })
        })
        .collect())
}

/// Parses `high=500ms,normal=5s,low=60s`.
pub fn parse_slas(s: &str) -> anyhow::Result<Vec<(String, Duration)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (name, d) = pair
                .split_once('=')
                .with_context(|| format!("--sla entry {pair:?} is not PRIORITY=DURATION (e.g. high=500ms)"))?;
            let d = humantime::parse_duration(d.trim())
                .with_context(|| format!("--sla entry {pair:?}: {d:?} is not a duration (e.g. 500ms, 5s, 1m)"))?;
            if d.is_zero() {
                anyhow::bail!("--sla entry {pair:?}: the SLA must be positive");
            }
            Ok((name.trim().to_owned(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slas_parse_and_resolve_per_priority() {
        let given = parse_slas("high=500ms, low=60s").unwrap();
        let q = Queue::new("q").unwrap();
        let slas = resolve_slas(&q, &given).unwrap();
        assert_eq!(
            slas,
            [
                Duration::from_millis(500),
                Duration::from_secs(60),
                Duration::from_secs(60)
            ]
        );
        assert!(parse_slas("high").is_err());
        assert!(parse_slas("high=soon").is_err());
        assert!(parse_slas("high=0s").is_err());
        assert!(resolve_slas(&q, &parse_slas("urgent=1s").unwrap()).is_err());
        assert!(resolve_slas(&q, &[]).is_err());
    }
}
