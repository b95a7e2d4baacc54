//! `/metrics`: Prometheus text for every queue the dashboard can see, from the sampler's
//! cache (a scrape costs Redis nothing beyond the queue registry's read, at most every few
//! seconds). Labels are queue and priority only: bounded by the installation's layout, never a
//! task id. Per-worker-box metrics (run times, wait histograms) are the workers' own
//! endpoint's (`worker-cli --metrics-addr`), not these.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::api::ApiErr;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabels {
    queue: String,
    priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    queue: String,
    outcome: String,
}

type G = Family<PriorityLabels, Gauge<f64, AtomicU64>>;

pub async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiErr> {
    let queues = state.sampler.queues().await?;
    let mut root = Registry::with_prefix("rivulet");
    let registry = root.sub_registry_with_prefix("queue");
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let g = G::default();
        registry.register(name, help, g.clone());
        g
    };
    let waiting = gauge(
        registry,
        "waiting",
        "Tasks ready and waiting for a worker (the backlog)",
    );
    let in_flight = gauge(registry, "in_flight", "Tasks delivered to a worker and not yet settled");
    let scheduled = gauge(registry, "scheduled", "Delayed tasks not yet due");
    let retrying = gauge(registry, "retrying", "Failed tasks waiting for their backoff");
    let dead = gauge(registry, "dead_letters", "Tasks in the dead-letter stream");
    let oldest = gauge(
        registry,
        "oldest_waiting_age_seconds",
        "Age of the oldest task waiting to be delivered",
    );
    let paused = Family::<QueueLabels, Gauge>::default();
    registry.register(
        "paused",
        "1 while workers are told not to fetch from the queue",
        paused.clone(),
    );
    let age = Family::<QueueLabels, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "stats_age_seconds",
        "How old the dashboard's numbers of the queue are (it reads Redis within a budget)",
        age.clone(),
    );
    let tasks = Family::<OutcomeLabels, Counter>::default();
    registry.register(
        "tasks",
        "Tasks by outcome since the queue was created (enqueued, succeeded, failed, retried, dead, replayed, reclaimed)",
        tasks.clone(),
    );
    for q in &queues {
        let name = q.name().to_string();
        let Some(snap) = state.sampler.cached(&name) else {
            continue;
        };
        let ql = QueueLabels { queue: name.clone() };
        paused.get_or_create(&ql).set(i64::from(snap.stats.paused));
        age.get_or_create(&ql).set(snap.read_at.elapsed().as_secs_f64());
        for p in &snap.stats.priorities {
            let l = PriorityLabels {
                queue: name.clone(),
                priority: p.priority.clone(),
            };
            waiting.get_or_create(&l).set(p.waiting as f64);
            in_flight.get_or_create(&l).set(p.pending as f64);
            scheduled.get_or_create(&l).set(p.scheduled as f64);
            retrying.get_or_create(&l).set(p.retry as f64);
            dead.get_or_create(&l).set(p.dead_letters as f64);
            oldest
                .get_or_create(&l)
                .set(p.oldest_waiting_age.map_or(0.0, |d| d.as_secs_f64()));
        }
        let c = &snap.stats.counters;
        for (outcome, v) in [
            ("enqueued", c.enqueued),
            ("succeeded", c.done),
            ("failed", c.failed),
            ("retried", c.retried),
            ("dead", c.dead),
            ("replayed", c.replayed),
            ("reclaimed", c.reclaimed),
        ] {
            tasks
                .get_or_create(&OutcomeLabels {
                    queue: name.clone(),
                    outcome: outcome.into(),
                })
                .inc_by(v);
        }
    }
    let workers = Gauge::<i64>::default();
    root.register(
        "workers_live",
        "Live worker processes (heartbeat not expired)",
        workers.clone(),
    );
    if let Ok(w) = state.sampler.workers().await {
        workers.set(w.len() as i64);
    }
    let mut body = String::new();
    encode(&mut body, &root).map_err(|e| ApiErr(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
