//! `--metrics-addr`: the box's worker metrics in Prometheus text, and its probes, served
//! through the server the autoscaler shares (`rivulet_fleet::probes`). docs/metrics.md lists
//! every metric.
//!
//! - `worker-cli work --metrics-addr A`: the process's engine metrics
//!   (`rivulet::WorkerMetrics`, atomics the engine fills per task) read at each scrape;
//!   ready while its worker runs and reaches Redis.
//! - `worker-cli --workers N --metrics-addr A`: one endpoint for the whole box. The supervisor
//!   listens on a Unix socket in a private directory and hands its path to its children
//!   (`RIVULET_METRICS_SOCKET`, part of the parent/child contract). Each child connects,
//!   sends a snapshot of its metrics at once and then one for every request (a newline) and a
//!   last one after its worker stopped. At each scrape the supervisor asks every child and
//!   adds the answers up, plus what children that have exited counted (their counters stay
//!   in the totals, so no counter goes down when a child is replaced); a child killed outright
//!   loses what it counted after the last scrape. The supervisor adds its own numbers:
//!   process starts, restarts by reason, processes by state. Ready when every slot's child
//!   runs, its worker has started, and none has lost Redis.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use rivulet::WorkerMetrics;
use rivulet::worker::Histogram;
use rivulet::worker::{DEAD_REASONS, MetricsSnapshot, RUN_TIME_BUCKETS, WAIT_BUCKETS};
use rivulet_fleet::probes::{self, Probe};
use rivulet_fleet::{FleetHandle, FleetStatus};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a scrape waits for the children's answers (a child that does not answer in time
/// counts with its last snapshot).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What `/metrics` shows: set by the probe's refresh, read by the registry's collector.
#[derive(Debug, Default)]
struct Shown {
    worker: MetricsSnapshot,
    fleet: Option<FleetStatus>,
}

/// The collector of the worker (and supervisor) metrics.
#[derive(Debug, Default)]
struct Exposition(Mutex<Shown>);

impl Exposition {
    fn show(&self, worker: MetricsSnapshot, fleet: Option<FleetStatus>) {
        *self.0.lock().expect("never poisoned") = Shown { worker, fleet };
    }
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let shown = self.0.lock().expect("never poisoned");
        encode_worker(&shown.worker, &mut enc)?;
        if let Some(f) = &shown.fleet {
            encode_fleet(f, &mut enc)?;
        }
        Ok(())
    }
}

/// A registry holding the exposition.
fn registry(exposition: &Arc<Exposition>) -> Arc<Registry> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(exposition.clone()));
    Arc::new(registry)
}

fn counters<'a, L: EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstGauge::new(v as i64).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn histograms<'a, L: EncodeLabelSet + 'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64],
    rows: impl IntoIterator<Item = (L, &'a Histogram)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.counts.iter().copied().chain(std::iter::repeat(0)))
            .collect();
        m.encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum, h.count(), &buckets, None)?;
    }
    Ok(())
}

/// The worker metrics of `s`, with the names and labels docs/metrics.md lists.
fn encode_worker(s: &MetricsSnapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let row = |t: &rivulet::worker::TaskCounts| {
        [
            ("queue", t.queue.clone()),
            ("priority", t.priority.clone()),
            ("kind", t.kind.clone()),
        ]
    };
    type Field = fn(&rivulet::worker::TaskCounts) -> u64;
    let fields: [(&str, &str, Field); 5] = [
        ("rivulet_tasks_started", "Handlers started", |t| t.started),
        ("rivulet_tasks_succeeded", "Handler runs that succeeded", |t| {
            t.succeeded
        }),
        (
            "rivulet_tasks_failed",
            "Handler runs that failed (error, panic or timeout); each is then retried or dead",
            |t| t.failed,
        ),
        (
            "rivulet_tasks_retried",
            "Tasks put in the retry set (after a failure, or an unknown kind within its grace)",
            |t| t.retried,
        ),
        ("rivulet_tasks_cancelled", "Handler runs ended by a cancel", |t| {
            t.cancelled
        }),
    ];
    for (name, help, get) in fields {
        counters(enc, name, help, s.tasks.iter().map(|t| (row(t), get(t))))?;
    }
    counters(
        enc,
        "rivulet_tasks_dead",
        "Tasks sent to the dead-letter stream, by reason",
        s.tasks.iter().flat_map(|t| {
            DEAD_REASONS.iter().zip(t.dead).map(move |(reason, n)| {
                let [q, p, k] = row(t);
                ([q, p, k, ("reason", (*reason).to_owned())], n)
            })
        }),
    )?;
    histograms(
        enc,
        "rivulet_task_run_seconds",
        "Handler run time",
        &RUN_TIME_BUCKETS,
        s.run_time.iter().map(|h| ([("kind", h.kind.clone())], &h.histogram)),
    )?;
    histograms(
        enc,
        "rivulet_task_wait_seconds",
        "Time from a task's first enqueue to the start of its handler",
        &WAIT_BUCKETS,
        s.wait.iter().map(|h| {
            (
                [("queue", h.queue.clone()), ("priority", h.priority.clone())],
                &h.histogram,
            )
        }),
    )?;
    gauge(enc, "rivulet_tasks_in_flight", "Handlers running now", s.in_flight)?;
    gauge(enc, "rivulet_worker_slots", "Handler slots (concurrency)", s.slots)?;
    gauge(
        enc,
        "rivulet_workers_running",
        "Workers started and not draining",
        s.workers_running,
    )?;
    gauge(
        enc,
        "rivulet_workers_redis_down",
        "Workers whose last Redis call failed (in an outage now)",
        s.workers_redis_down,
    )?;
    ConstCounter::new(s.redis_errors).encode(enc.encode_descriptor(
        "rivulet_redis_errors",
        "Redis calls of the workers that failed",
        None,
        MetricType::Counter,
    )?)?;
    ConstCounter::new(s.outage_seconds).encode(enc.encode_descriptor(
        "rivulet_redis_outage_seconds",
        "Time during which a worker could not reach Redis (per worker, added up)",
        None,
        MetricType::Counter,
    )?)
}

/// The supervisor's own numbers.
fn encode_fleet(f: &FleetStatus, enc: &mut DescriptorEncoder) -> fmt::Result {
    let r = &f.report;
    counters(
        enc,
        "rivulet_worker_process_starts",
        "Worker processes started, first starts included",
        [(NoLabels, r.started)],
    )?;
    counters(
        enc,
        "rivulet_worker_process_restarts",
        "Worker processes replaced after they exited: crash (any unplanned exit, a kill included), recycle (--max-tasks, --max-memory), outage (Redis away at start)",
        [
            ([("reason", "crash")], r.crashed),
            ([("reason", "recycle")], r.recycled),
            ([("reason", "outage")], r.outages),
        ],
    )?;
    let mut m = enc.encode_descriptor(
        "rivulet_worker_processes",
        "Worker processes by state",
        None,
        MetricType::Gauge,
    )?;
    for (state, n) in [("running", f.running), ("stopping", f.stopping)] {
        ConstGauge::new(i64::from(n)).encode(m.encode_family(&[("state", state)])?)?;
    }
    gauge(
        enc,
        "rivulet_worker_processes_target",
        "Worker processes the supervisor keeps running",
        u64::from(f.target),
    )
}

/// An empty label set for an unlabelled row of [`counters`].
struct NoLabels;

impl EncodeLabelSet for NoLabels {
    fn encode(&self, _: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        Ok(())
    }
}

/// Why a worker whose metrics read `s` is not ready, out of `of` expected.
fn worker_not_ready(s: &MetricsSnapshot, of: u64) -> Option<String> {
    if s.workers_running < of {
        return Some(if of == 1 {
            "the worker is not running (starting, waiting for Redis, or draining)".to_owned()
        } else {
            format!(
                "{} of {of} worker processes run a worker (the others are starting, waiting for Redis, or draining)",
                s.workers_running
            )
        });
    }
    (s.workers_redis_down > 0).then(|| {
        if of == 1 {
            "the worker cannot reach Redis (its last call failed; it keeps retrying)".to_owned()
        } else {
            format!(
                "{} of {of} worker processes cannot reach Redis (they keep retrying)",
                s.workers_redis_down
            )
        }
    })
}

/// `work --metrics-addr`: one process's metrics.
#[derive(Debug)]
struct WorkProbe {
    metrics: Arc<WorkerMetrics>,
    exposition: Arc<Exposition>,
}

impl Probe for WorkProbe {
    async fn refresh(&self) {
        self.exposition.show(self.metrics.snapshot(), None);
    }

    async fn not_ready(&self) -> Option<String> {
        worker_not_ready(&self.metrics.snapshot(), 1)
    }
}

/// Serves one worker process's metrics on `listener` until `stop`.
pub async fn serve_worker(listener: probes::Listener, metrics: Arc<WorkerMetrics>, stop: CancellationToken) {
    let exposition = Arc::new(Exposition::default());
    let probe = Arc::new(WorkProbe {
        metrics,
        exposition: exposition.clone(),
    });
    if let Err(e) = probes::serve(listener, registry(&exposition), probe, stop).await {
        tracing::error!(error = %e, "the metrics server failed");
    }
}

/// A child's side: connects to the supervisor's socket at `path`, answers every request with
/// a snapshot of `metrics`, and sends a last one once `stopped` is cancelled (its worker has
/// stopped). Problems are logged, never fatal: metrics must not stop a worker.
pub async fn report(path: PathBuf, metrics: Arc<WorkerMetrics>, stopped: CancellationToken) {
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, socket = %path.display(), "cannot report metrics to the supervisor");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut asks = BufReader::new(read).lines();
    let send = async |write: &mut tokio::net::unix::OwnedWriteHalf| {
        let mut line = serde_json::to_string(&metrics.snapshot()).expect("a snapshot is plain data");
        line.push('\n');
        write.write_all(line.as_bytes()).await
    };
    if send(&mut write).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            ask = asks.next_line() => match ask {
                Ok(Some(_)) => {
                    if send(&mut write).await.is_err() {
                        return;
                    }
                }
                // The supervisor is gone (the process follows it).
                _ => return,
            },
            () = stopped.cancelled() => {
                let _ = send(&mut write).await;
                return;
            }
        }
    }
}

/// One child's connection, as the supervisor's hub sees it.
#[derive(Debug)]
struct Child {
    latest: MetricsSnapshot,
    asks: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

#[derive(Debug, Default)]
struct HubState {
    live: HashMap<u64, Child>,
    /// What children that have exited counted.
    retired: MetricsSnapshot,
}

/// The supervisor's side: the socket its children report to, and what they reported.
#[derive(Debug)]
pub struct Hub {
    dir: PathBuf,
    listener: Mutex<Option<UnixListener>>,
    state: Mutex<HubState>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Hub {
    /// Listens on a socket in a new private directory (mode 0700) under the temp dir.
    pub fn bind() -> std::io::Result<Hub> {
        let dir = std::env::temp_dir().join(format!(
            "rivulet-metrics-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let listener = match UnixListener::bind(dir.join("hub.sock")) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(Hub {
            dir,
            listener: Mutex::new(Some(listener)),
            state: Mutex::default(),
        })
    }

    /// The socket children connect to (their `RIVULET_METRICS_SOCKET`).
    pub fn path(&self) -> PathBuf {
        self.dir.join("hub.sock")
    }

    /// Accepts children and keeps their snapshots until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(listener) = self.listener.lock().expect("never poisoned").take() else {
            return;
        };
        let mut conns = JoinSet::new();
        let mut next = 0u64;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        next += 1;
                        let (tx, rx) = mpsc::unbounded_channel();
                        self.state.lock().expect("never poisoned").live.insert(next, Child { latest: MetricsSnapshot::default(), asks: tx });
                        conns.spawn(self.clone().serve_child(next, stream, rx));
                    }
                    Err(e) => tracing::warn!(error = %e, "accepting a worker process's metrics connection"),
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
    }

    async fn serve_child(
        self: Arc<Self>,
        id: u64,
        stream: UnixStream,
        mut asks: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    ) {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    match serde_json::from_str::<MetricsSnapshot>(&line) {
                        Ok(s) => {
                            if let Some(c) = self.state.lock().expect("never poisoned").live.get_mut(&id) {
                                c.latest = s;
                            }
                            for w in waiting.drain(..) {
                                let _ = w.send(());
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "a worker process sent metrics that do not decode; ignoring its connection");
                            break;
                        }
                    }
                }
                ask = asks.recv() => {
                    let Some(ask) = ask else { break };
                    waiting.push(ask);
                    if write.write_all(b"\n").await.is_err() {
                        break;
                    }
                }
            }
        }
        let mut state = self.state.lock().expect("never poisoned");
        if let Some(c) = state.live.remove(&id) {
            state.retired.merge(&c.latest.retired());
        }
    }

    /// Asks every child for fresh numbers (waiting up to [`ASK_TIMEOUT`]) and adds them up
    /// with what exited children counted.
    pub async fn collect(&self) -> MetricsSnapshot {
        let answers: Vec<oneshot::Receiver<()>> = {
            let state = self.state.lock().expect("never poisoned");
            state
                .live
                .values()
                .map(|c| {
                    let (tx, rx) = oneshot::channel();
                    let _ = c.asks.send(tx);
                    rx
                })
                .collect()
        };
        let _ = tokio::time::timeout(ASK_TIMEOUT, async {
            for a in answers {
                let _ = a.await;
            }
        })
        .await;
        let state = self.state.lock().expect("never poisoned");
        let mut total = state.retired.clone();
        for c in state.live.values() {
            total.merge(&c.latest);
        }
        total
    }
}

/// `--workers N --metrics-addr`: the box's metrics.
#[derive(Debug)]
struct FleetProbe {
    hub: Arc<Hub>,
    fleet: Arc<FleetHandle>,
    exposition: Arc<Exposition>,
}

impl Probe for FleetProbe {
    async fn refresh(&self) {
        let worker = self.hub.collect().await;
        self.exposition.show(worker, Some(self.fleet.status()));
    }

    async fn not_ready(&self) -> Option<String> {
        let status = self.fleet.status();
        if status.running < status.target {
            return Some(format!(
                "{} of {} worker processes are running (the others are restarting)",
                status.running, status.target
            ));
        }
        worker_not_ready(&self.hub.collect().await, u64::from(status.target))
    }
}

/// Serves the box's metrics on `listener` until `stop`: the children's through `hub`, the
/// supervisor's from `fleet`.
pub async fn serve_fleet(listener: probes::Listener, hub: Arc<Hub>, fleet: Arc<FleetHandle>, stop: CancellationToken) {
    let exposition = Arc::new(Exposition::default());
    let probe = Arc::new(FleetProbe {
        hub,
        fleet,
        exposition: exposition.clone(),
    });
    if let Err(e) = probes::serve(listener, registry(&exposition), probe, stop).await {
        tracing::error!(error = %e, "the metrics server failed");
    }
}

/// The socket a supervisor gave this process, if any.
pub fn supervisor_socket() -> Option<PathBuf> {
    std::env::var_os(rivulet_fleet::METRICS_SOCKET_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Whether `path` is the hub's socket (for tests of the contract).
#[cfg(test)]
fn is_socket(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &MetricsSnapshot, fleet: Option<FleetStatus>) -> String {
        let e = Arc::new(Exposition::default());
        e.show(s.clone(), fleet);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry(&e)).unwrap();
        out
    }

    fn sample() -> MetricsSnapshot {
        MetricsSnapshot {
            tasks: vec![rivulet::worker::TaskCounts {
                queue: "q".into(),
                priority: "high".into(),
                kind: "noop".into(),
                started: 3,
                succeeded: 2,
                failed: 1,
                retried: 1,
                cancelled: 0,
                dead: [0, 1, 0, 0, 0],
            }],
            wait: vec![rivulet::worker::LaneHistogram {
                queue: "q".into(),
                priority: "high".into(),
                histogram: Histogram {
                    counts: vec![1, 2],
                    sum: 0.5,
                },
            }],
            slots: 4,
            outage_seconds: 1.5,
            ..MetricsSnapshot::default()
        }
    }

    #[test]
    fn the_exposition_follows_prometheus_conventions() {
        let out = text(&sample(), None);
        for line in [
            r#"rivulet_tasks_started_total{queue="q",priority="high",kind="noop"} 3"#,
            r#"rivulet_tasks_dead_total{queue="q",priority="high",kind="noop",reason="fatal"} 1"#,
            r#"rivulet_task_wait_seconds_count{queue="q",priority="high"} 3"#,
            r#"rivulet_task_wait_seconds_bucket{le="0.005",queue="q",priority="high"} 3"#,
            r#"rivulet_task_wait_seconds_bucket{le="+Inf",queue="q",priority="high"} 3"#,
            "rivulet_worker_slots 4",
            "rivulet_redis_outage_seconds_total 1.5",
        ] {
            assert!(out.lines().any(|l| l == line), "no line {line:?} in\n{out}");
        }
        assert!(!out.contains("rivulet_worker_process"), "{out}");
        let with_fleet = text(&sample(), Some(FleetStatus::default()));
        assert!(
            with_fleet.contains(r#"rivulet_worker_process_restarts_total{reason="crash"} 0"#),
            "{with_fleet}"
        );
    }

    #[test]
    fn readiness_wants_every_worker_running_and_reaching_redis() {
        let mut s = MetricsSnapshot::default();
        assert!(worker_not_ready(&s, 1).unwrap().contains("not running"));
        s.workers_running = 1;
        assert_eq!(worker_not_ready(&s, 1), None);
        assert!(worker_not_ready(&s, 2).unwrap().starts_with("1 of 2"));
        s.workers_redis_down = 1;
        assert!(worker_not_ready(&s, 1).unwrap().contains("cannot reach Redis"));
    }

    #[tokio::test]
    async fn the_hub_adds_up_children_and_keeps_what_exited_ones_counted() {
        let hub = Arc::new(Hub::bind().unwrap());
        assert!(is_socket(&hub.path()));
        let stop = CancellationToken::new();
        let running = tokio::spawn(hub.clone().run(stop.clone()));
        let (m1, m2) = (Arc::new(WorkerMetrics::new()), Arc::new(WorkerMetrics::new()));
        let (s1, s2) = (CancellationToken::new(), CancellationToken::new());
        let c1 = tokio::spawn(report(hub.path(), m1, s1.clone()));
        let c2 = tokio::spawn(report(hub.path(), m2, s2.clone()));
        let two = rivulet::testing::wait_until(Duration::from_secs(10), async || {
            hub.state.lock().unwrap().live.len() == 2
        })
        .await;
        assert!(two);
        assert_eq!(hub.collect().await, MetricsSnapshot::default());
        s1.cancel();
        c1.await.unwrap();
        let one = rivulet::testing::wait_until(Duration::from_secs(10), async || {
            hub.state.lock().unwrap().live.len() == 1
        })
        .await;
        assert!(one);
        s2.cancel();
        c2.await.unwrap();
        stop.cancel();
        running.await.unwrap();
        let dir = hub.dir.clone();
        drop(hub);
        assert!(!dir.exists());
    }
}
