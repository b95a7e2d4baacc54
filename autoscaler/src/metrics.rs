//! Explain: Prometheus metrics of the autoscaler, served at `/metrics`, and the probes
//! `/healthz` (the process answers) and `/readyz` (it observed the queue recently) on the same
//! address, through the server both binaries share (`rivulet_fleet::probes`).
//!
//! When Redis is away the per-queue gauges keep their last values, so they are read together
//! with `rivulet_autoscaler_up` (0 after a failed observation), the timestamp of the last
//! successful observation and the error counters; `/readyz` answers 503 once the last
//! successful observation is older than its staleness limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::policy::{Decision, Observation};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabel {
    priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// The autoscaler's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    desired: Gauge,
    current: Gauge,
    live: Gauge,
    oldest_age: Family<PriorityLabel, Gauge<f64, AtomicU64>>,
    backlog: Family<PriorityLabel, Gauge>,
    in_flight: Family<PriorityLabel, Gauge>,
    arrival_rate: Family<PriorityLabel, Gauge<f64, AtomicU64>>,
    completion_rate: Family<PriorityLabel, Gauge<f64, AtomicU64>>,
    decisions: Family<ReasonLabel, Counter>,
    up: Gauge,
    last_observation: Gauge<f64, AtomicU64>,
    observation_errors: Counter,
    store_errors: Counter,
    /// Last successful observation, ms since the epoch (0: none yet); what `/readyz` reads.
    last_ok_ms: AtomicU64,
}

impl Metrics {
    /// Registers every metric under the `rivulet_autoscaler` prefix.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Arc::new(Metrics::default());
        let r = registry.sub_registry_with_prefix("rivulet_autoscaler");
        r.register("desired_workers", "Workers the policy wants", m.desired.clone());
        r.register("current_workers", "Workers the actuator runs", m.current.clone());
        r.register(
            "live_workers",
            "Workers with a live heartbeat for the queue",
            m.live.clone(),
        );
        r.register(
            "oldest_age_seconds",
            "Age of the oldest waiting task",
            m.oldest_age.clone(),
        );
        r.register("backlog", "Tasks waiting to be delivered", m.backlog.clone());
        r.register("in_flight", "Tasks delivered and not yet settled", m.in_flight.clone());
        r.register(
            "arrival_rate",
            "Smoothed arrivals, tasks per second",
            m.arrival_rate.clone(),
        );
        r.register(
            "completion_rate",
            "Smoothed completions, tasks per second",
            m.completion_rate.clone(),
        );
        r.register("decisions", "Decisions by reason", m.decisions.clone());
        r.register(
            "up",
            "1 when the last observation of the queue succeeded, 0 when it failed (Redis away): the other gauges are stale while it is 0",
            m.up.clone(),
        );
        r.register(
            "last_observation_timestamp_seconds",
            "When the queue was last observed successfully, seconds since the epoch",
            m.last_observation.clone(),
        );
        r.register(
            "observation_errors",
            "Observations of the queue that failed (no decision was taken)",
            m.observation_errors.clone(),
        );
        r.register(
            "decision_store_errors",
            "Decisions that could not be stored in Redis for `worker-cli stats`",
            m.store_errors.clone(),
        );
        m
    }

    /// Records a successful observation at `now`.
    pub fn observed(&self, now: SystemTime) {
        let ms = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.up.set(1);
        self.last_observation.set(ms as f64 / 1000.0);
        self.last_ok_ms.store(ms, Ordering::Relaxed);
    }

    /// Records a failed observation: `up` drops to 0, the gauges of the queue stay as they
    /// were (the last known values) and the error counter moves.
    pub fn observation_failed(&self) {
        self.up.set(0);
        self.observation_errors.inc();
    }

    /// Records a decision that could not be stored in Redis.
    pub fn store_failed(&self) {
        self.store_errors.inc();
    }

    /// Why the autoscaler is not ready at `now` (pure given the last observation): never
    /// observed yet, or observed successfully longer than `stale_after` ago. `None`: ready.
    pub fn not_ready(&self, now: SystemTime, stale_after: Duration) -> Option<String> {
        let last = self.last_ok_ms.load(Ordering::Relaxed);
        if last == 0 {
            return Some("no successful observation of the queue yet".to_owned());
        }
        let now_ms = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let age = Duration::from_millis(now_ms.saturating_sub(last));
        (age > stale_after).then(|| {
            format!(
                "last successful observation {} ago (limit {}): is Redis reachable?",
                humantime::format_duration(Duration::from_millis(age.as_millis() as u64)),
                humantime::format_duration(stale_after)
            )
        })
    }

    /// Records one tick.
    pub fn record(&self, obs: &Observation, decision: &Decision, current: u32) {
        self.desired.set(i64::from(decision.desired));
        self.current.set(i64::from(current));
        self.live.set(i64::from(obs.live_workers));
        for p in &obs.priorities {
            let l = PriorityLabel {
                priority: p.priority.clone(),
            };
            self.oldest_age
                .get_or_create(&l)
                .set(p.oldest_age.map_or(0.0, |d| d.as_secs_f64()));
            self.backlog.get_or_create(&l).set(p.backlog as i64);
            self.in_flight.get_or_create(&l).set(p.in_flight as i64);
            self.arrival_rate.get_or_create(&l).set(p.arrival_rate);
            self.completion_rate.get_or_create(&l).set(p.completion_rate);
        }
        self.decisions
            .get_or_create(&ReasonLabel {
                reason: decision.reason.as_str().to_owned(),
            })
            .inc();
    }
}

/// What `/readyz` means for the autoscaler: observed successfully within `stale_after`.
#[derive(Debug)]
pub struct Readiness {
    /// The metrics that keep the last successful observation.
    pub metrics: Arc<Metrics>,
    /// How old the last successful observation may be.
    pub stale_after: Duration,
}

impl rivulet_fleet::probes::Probe for Readiness {
    async fn not_ready(&self) -> Option<String> {
        self.metrics.not_ready(SystemTime::now(), self.stale_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_last_successful_observation() {
        let m = Metrics::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let limit = Duration::from_secs(10);
        assert!(m.not_ready(t0, limit).unwrap().contains("no successful observation"));
        m.observed(t0);
        assert_eq!(m.not_ready(t0 + limit, limit), None);
        m.observation_failed();
        // A failure alone does not flip readiness: a blip shorter than the limit is tolerated.
        assert_eq!(m.not_ready(t0 + Duration::from_secs(5), limit), None);
        let why = m.not_ready(t0 + Duration::from_secs(11), limit).unwrap();
        assert!(why.contains("11s ago (limit 10s)"), "{why}");
        assert_eq!(m.up.get(), 0);
        assert_eq!(m.observation_errors.get(), 1);
    }
}
