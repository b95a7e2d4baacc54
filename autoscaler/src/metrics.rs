//! Explain: Prometheus metrics of the autoscaler, served at `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

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
        m
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

/// Binds `addr` for [`serve`]; fails at once on a bad or busy address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --metrics-addr {addr}: {e}"))
}

/// Serves `/metrics` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "metrics at /metrics");
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response(),
                    Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    Ok(())
}
