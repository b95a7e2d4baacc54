//! The daemon loop: observe -> decide -> act, once per interval, until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use rivulet::{Inspector, Queue, redact_url};
use tokio_util::sync::CancellationToken;

use crate::actuator::Actuator;
use crate::metrics::{self, Metrics};
use crate::observe::Observer;
use crate::policy::{Observation, PolicyParams, PolicyState, decide};

pub use crate::actuator::Actuation;
/// A mistake in the flags or settings (exit status 2), as opposed to a failure while running;
/// the same type worker-cli uses. Found in an error's chain with
/// `e.chain().any(|c| c.is::<UsageError>())`.
pub use rivulet_fleet::UsageError;

/// A [`UsageError`] as an `anyhow::Error`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError::new(message).into()
}

/// Everything the daemon needs, resolved from flags and environment by the binary.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis URL.
    pub redis_url: String,
    /// Where the URL came from, for messages: `--redis-url`, `REDIS_URL` or `the default Redis URL`.
    pub redis_url_from: &'static str,
    /// TLS options for `rediss://` URLs (also handed to the workers it starts).
    pub tls: rivulet::TlsOptions,
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
    /// The bearer token `/metrics` requires (needed beyond loopback).
    pub metrics_token: Option<String>,
}

/// The decision as stored in Redis for `worker-cli stats`.
#[derive(Debug, serde::Serialize)]
struct StoredDecision<'a> {
    desired: u32,
    current: u32,
    live: u32,
    busy: u32,
    reason: &'a str,
    /// The priority a breach, projected breach or low watermark names.
    reason_priority: Option<&'a str>,
    target: u32,
    need: f64,
    raw: f64,
    per_worker_rate_per_s: f64,
    rate_source: &'a str,
    priorities: Vec<StoredPriority<'a>>,
    /// The same numbers in one line for people.
    detail: &'a str,
    dry_run: bool,
    at_ms: u64,
}

/// One priority as the decision saw it (units in the names).
#[derive(Debug, serde::Serialize)]
struct StoredPriority<'a> {
    priority: &'a str,
    backlog: u64,
    backlog_estimated: bool,
    in_flight: u64,
    oldest_waiting_age_ms: Option<u64>,
    sla_ms: u64,
    arrivals_per_s: f64,
    completions_per_s: f64,
}

impl<'a> StoredPriority<'a> {
    fn of(p: &'a crate::policy::PriorityObservation) -> Self {
        StoredPriority {
            priority: &p.priority,
            backlog: p.backlog,
            backlog_estimated: p.backlog_estimated,
            in_flight: p.in_flight,
            oldest_waiting_age_ms: p.oldest_age.map(|d| d.as_millis() as u64),
            sla_ms: p.sla.as_millis() as u64,
            arrivals_per_s: p.arrival_rate,
            completions_per_s: p.completion_rate,
        }
    }
}

/// Runs until `shutdown` resolves, then drains the workers (process actuator) unless `force`
/// resolves first: then it kills them and fails.
///
/// The process actuator's workers die with the thread that started them (parent-death
/// signal): run this on a thread that lives as long as the process, as `block_on` on the
/// main thread does.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    settings
        .params
        .validate()
        .map_err(|e| usage(format!("invalid policy parameters: {e}")))?;
    let shown_url = redact_url(&settings.redis_url);
    if settings.tls.insecure {
        tracing::warn!(
            redis = %shown_url,
            "TLS certificate verification is off (--tls-insecure): encrypted, but anyone in the path can pose as Redis"
        );
    }
    let inspector = match rivulet::RedisTarget::with_tls(&settings.redis_url, &settings.tls) {
        Ok(redis) => Inspector::new(&redis).await,
        Err(e) => Err(e),
    };
    let inspector = match inspector {
        Ok(i) => i,
        // TLS options that do not fit the URL, or a certificate file that cannot be read.
        Err(e @ rivulet::Error::InvalidConfig { .. }) => {
            return Err(usage(format!("{} {shown_url:?}: {e}", settings.redis_url_from)));
        }
        Err(rivulet::Error::InvalidUrl { reason, .. }) => {
            let from = settings.redis_url_from;
            return Err(usage(format!(
                "{from} {shown_url:?} does not parse as a Redis URL ({reason}); expected e.g. {}",
                rivulet::URL_SHAPES
            )));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot reach Redis at {shown_url} (is it running? set --redis-url or REDIS_URL)"
            )));
        }
    };
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
        let listener = rivulet_fleet::probes::bind(addr, settings.metrics_token.clone()).await?;
        // Ready while observations succeed; stale after three missed ticks (at least 10 s,
        // so a short Redis blip or a slow tick does not pull the pod out).
        let stale_after = (settings.interval * 3).max(std::time::Duration::from_secs(10));
        let probe = Arc::new(metrics::Readiness {
            metrics: metrics.clone(),
            stale_after,
        });
        server.spawn(rivulet_fleet::probes::serve(
            listener,
            Arc::new(registry),
            probe,
            stop.clone(),
        ));
    }

    let mut actuator = Actuator::new(
        &settings.actuation,
        &settings.queue,
        &settings.redis_url,
        &shown_url,
        &settings.tls,
    )
    .map_err(|e| usage(e.to_string()))?;
    if !settings.dry_run
        && let Actuator::Process(p) = &mut actuator
    {
        p.scale_to(settings.params.min, &[]).await?;
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
            Ok(obs) => {
                metrics.observed(std::time::SystemTime::now());
                obs
            }
            Err(e) => {
                metrics.observation_failed();
                tracing::warn!(error = %e, "observation failed; keeping the current workers");
                continue;
            }
        };
        let current = match actuator.current() {
            Some(n) if !settings.dry_run => n,
            _ => obs.live_workers,
        };
        let decision = decide(&obs, current, start.elapsed(), &settings.params, &mut state);
        log_decision(&obs, current, &decision, settings.dry_run);
        metrics.record(&obs, &decision, current);
        let stored = StoredDecision {
            desired: decision.desired,
            current,
            live: obs.live_workers,
            busy: obs.busy_workers,
            reason: decision.reason.as_str(),
            reason_priority: decision.reason.priority(),
            target: decision.basis.target,
            need: decision.basis.need,
            raw: decision.basis.raw,
            per_worker_rate_per_s: decision.basis.per_worker_rate,
            rate_source: decision.basis.rate_source,
            priorities: obs.priorities.iter().map(StoredPriority::of).collect(),
            detail: &decision.detail,
            dry_run: settings.dry_run,
            at_ms: rivulet::envelope::now_ms(),
        };
        let json = serde_json::to_string(&stored).expect("a struct of numbers and strings serialises");
        if let Err(e) = inspector.record_decision(&queue, &json).await {
            metrics.store_failed();
            tracing::warn!(error = %e, "could not store the decision in Redis");
        }
        if settings.dry_run {
            continue;
        }
        let idle = match &actuator {
            Actuator::Process(_) => observer.idle_pids().await.unwrap_or_default(),
            Actuator::Command(_) => Vec::new(),
        };
        actuator.scale_to(decision.desired, &idle).await?;
    }
    tracing::info!("autoscaler stopping");
    stop.cancel();
    while server.join_next().await.is_some() {}
    let drain = match &settings.actuation {
        Actuation::Process { drain_on_exit, .. } => *drain_on_exit,
        Actuation::Command { .. } => false,
    };
    actuator.shutdown(drain, force).await?;
    Ok(())
}

/// A duration cut to whole milliseconds, for people.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

fn log_decision(obs: &Observation, current: u32, d: &crate::policy::Decision, dry_run: bool) {
    let per_priority: Vec<String> = obs
        .priorities
        .iter()
        .map(|p| {
            format!(
                "{}: backlog={}{} in_flight={} oldest={} arrive={:.1}/s done={:.1}/s sla={}",
                p.priority,
                p.backlog,
                if p.backlog_estimated { "(est)" } else { "" },
                p.in_flight,
                p.oldest_age.map_or_else(
                    || "-".to_owned(),
                    |d| humantime::format_duration(round_ms(d)).to_string()
                ),
                p.arrival_rate,
                p.completion_rate,
                humantime::format_duration(round_ms(p.sla))
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

/// An example for `--sla` messages.
const SLA_EXAMPLE: &str = "e.g. --sla high=500ms,normal=5s";

/// One SLA per priority of the queue, highest first. Priorities the flag does not name get
/// the loosest SLA given; names the queue does not have are a [`UsageError`].
pub fn resolve_slas(queue: &Queue, given: &[(String, Duration)]) -> anyhow::Result<Vec<Duration>> {
    for (p, _) in given {
        queue.rank(p).map_err(|e| usage(format!("--sla: {e}")))?;
    }
    let loosest = given
        .iter()
        .map(|(_, d)| *d)
        .max()
        .ok_or_else(|| usage(format!("--sla must name at least one priority ({SLA_EXAMPLE})")))?;
    Ok(queue
        .layout()
        .priorities
        .iter()
        .map(|p| {
            given.iter().find(|(q, _)| q == p).map(|(_, d)| *d).unwrap_or_else(|| {
                tracing::warn!(priority = %p, sla_ms = loosest.as_millis() as u64, "no SLA given for this priority; using the loosest");
                loosest
            })
        })
        .collect())
}

/// Parses `high=500ms,normal=5s,low=60s`; mistakes are [`UsageError`]s naming `--sla`.
pub fn parse_slas(s: &str) -> anyhow::Result<Vec<(String, Duration)>> {
    let mut slas: Vec<(String, Duration)> = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, d)) = pair.split_once('=') else {
            return Err(usage(format!(
                "--sla {pair:?} is not PRIORITY=DURATION; give comma-separated pairs, {SLA_EXAMPLE}"
            )));
        };
        let (name, d) = (name.trim(), d.trim());
        if name.is_empty() {
            return Err(usage(format!("--sla {pair:?} names no priority; {SLA_EXAMPLE}")));
        }
        let d = humantime::parse_duration(d).map_err(|_| {
            usage(format!(
                "--sla {pair:?}: {d:?} is not a duration (a number with a unit: 500ms, 5s, 1m); {SLA_EXAMPLE}"
            ))
        })?;
        if d.is_zero() {
            return Err(usage(format!(
                "--sla {pair:?}: the SLA must be longer than zero; {SLA_EXAMPLE}"
            )));
        }
        if slas.iter().any(|(n, _)| n == name) {
            return Err(usage(format!("--sla names priority {name:?} twice")));
        }
        slas.push((name.to_owned(), d));
    }
    if slas.is_empty() {
        return Err(usage(format!("--sla must name at least one priority ({SLA_EXAMPLE})")));
    }
    Ok(slas)
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
        let is_usage = |r: anyhow::Result<_>| r.is_err_and(|e| e.is::<UsageError>());
        assert!(is_usage(parse_slas("high").map(|_| ())));
        assert!(is_usage(parse_slas("high=0s").map(|_| ())));
        assert!(is_usage(parse_slas("=1s").map(|_| ())));
        assert!(is_usage(parse_slas("high=1s,high=2s").map(|_| ())));
        assert!(is_usage(parse_slas(" , ").map(|_| ())));
        let e = parse_slas("high=abc").unwrap_err().to_string();
        assert!(e.starts_with("--sla \"high=abc\": \"abc\" is not a duration"), "{e}");
        assert!(
            e.contains("--sla high=500ms,normal=5s") && !e.contains("expected number"),
            "{e}"
        );
        assert!(is_usage(
            resolve_slas(&q, &parse_slas("urgent=1s").unwrap()).map(|_| ())
        ));
        assert!(is_usage(resolve_slas(&q, &[]).map(|_| ())));
    }
}
