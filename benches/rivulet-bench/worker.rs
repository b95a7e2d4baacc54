//! The hidden `worker` subcommand: one worker process of a run, re-executed from this binary.
//!
//! It runs a `rivulet::Worker` whose handlers do nothing but take notes: when the first and
//! the last handler started (drain throughput), and for latency runs the enqueue-to-start time
//! carried in each payload and, with `--done-probe`, the enqueue-to-done time (see
//! [`DoneProbe`]). It stops when its stdin closes (the parent's signal) or after
//! `--max-seconds`, and then prints one JSON line ([`WorkerOutput`]) on stdout.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use rivulet::{Queue, Router, TaskContext, Worker, WorkerConfig};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::payload::{self, KIND_LATENCY, KIND_NOOP};
use crate::stats::HistSummary;

/// Arguments of the hidden `worker` subcommand (set by the parent, not by people).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub redis_url: String,
    /// Queues to serve, comma separated (the first one is the done probe's).
    #[arg(long, value_delimiter = ',', required = true)]
    pub queue: Vec<String>,
    #[arg(long)]
    pub concurrency: usize,
    /// Measure enqueue-to-done through keyspace notifications of the shard's stats hash.
    #[arg(long)]
    pub done_probe: bool,
    /// Stops by itself after this long, whatever the parent does.
    #[arg(long, default_value_t = 900)]
    pub max_seconds: u64,
    /// The queue's record retention in ms (0 = lifecycle tracking off); the engine's default
    /// (on) without it.
    #[arg(long)]
    pub retention_ms: Option<u64>,
    /// What settles wait for (`fast`, `replicated:N`, `fsync`).
    #[arg(long, default_value = "fast")]
    pub durability: String,
    /// Fleet-wide rate limits, as worker-cli's `--rate-limit NAME=RATE`.
    #[arg(long)]
    pub rate_limit: Vec<String>,
    /// Fleet-wide concurrency limits, as worker-cli's `--max-running NAME=N`.
    #[arg(long)]
    pub max_running: Vec<String>,
    /// The CA to verify a `rediss://` server against.
    #[arg(long)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Count into the engine's `WorkerMetrics` (what `--metrics-addr` turns on), and read
    /// and encode a snapshot every second as a scrape through the supervisor would.
    #[arg(long)]
    pub metrics: bool,
}

/// What one worker process reports when it stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerOutput {
    /// Handlers started.
    pub started: u64,
    /// Wall clock of the first and last handler start, µs since the epoch (0 if none).
    pub first_start_us: u64,
    pub last_start_us: u64,
    /// Enqueue-to-start of measured latency tasks.
    pub start: Option<HistSummary>,
    /// Enqueue-to-done of measured latency tasks (with `--done-probe`).
    pub done: Option<HistSummary>,
    /// Tasks the done probe could not place (should be 0).
    pub done_unmatched: u64,
    /// Settle notifications the done probe handled.
    pub probe_events: u64,
    /// CPU time (user + system) this process used, seconds.
    pub cpu_s: f64,
}

/// The span of a fleet's work, seconds: from the first handler start in any process's report
/// to the last (at least 1 µs, so a rate over it is finite).
pub fn span_s(outputs: &[WorkerOutput]) -> f64 {
    let first = outputs
        .iter()
        .filter(|o| o.started > 0)
        .map(|o| o.first_start_us)
        .min()
        .unwrap_or(0);
    let last = outputs.iter().map(|o| o.last_start_us).max().unwrap_or(0);
    (last.saturating_sub(first) as f64 / 1e6).max(1e-6)
}

/// CPU time (user + system) of this process so far, in seconds, from `/proc/self/stat`
/// (0 where that file does not exist).
pub fn process_cpu_s() -> f64 {
    stat_cpu_s("/proc/self/stat")
}

/// CPU time (user + system) of this process so far, in seconds, from `getrusage`: to the
/// microsecond, where `/proc`'s ticks are 10 ms, for a process that measures a short stretch
/// of its own work (0 where it fails).
pub fn rusage_cpu_s() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return 0.0;
    };
    let s = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    s(usage.user_time()) + s(usage.system_time())
}

/// CPU time (user + system) of process `pid` so far, in seconds (0 once it has exited, or
/// where `/proc` does not exist).
pub fn pid_cpu_s(pid: u32) -> f64 {
    stat_cpu_s(&format!("/proc/{pid}/stat"))
}

fn stat_cpu_s(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15, in clock ticks of 1/100 s (USER_HZ on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Where the handlers take their notes.
struct Recorder {
    /// Keep finished tasks for the done probe (only when it runs, or they would pile up).
    track_done: bool,
    started: AtomicU64,
    first: AtomicU64,
    last: AtomicU64,
    latency: Mutex<LatencyNotes>,
}

struct LatencyNotes {
    start: Histogram<u64>,
    done: Histogram<u64>,
    /// Send times of finished latency tasks, in the order their outcomes went to the acker
    /// (which settles them in that order), waiting for the probe to see them settled.
    finished: VecDeque<(u64, bool)>,
    /// Tasks of the queue settled before this worker started (the counter's base).
    base: Option<u64>,
    placed: u64,
    unmatched: u64,
}

impl Recorder {
    fn new(track_done: bool) -> Self {
        Recorder {
            track_done,
            started: AtomicU64::new(0),
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
            latency: Mutex::new(LatencyNotes {
                start: crate::stats::histogram(),
                done: crate::stats::histogram(),
                finished: VecDeque::new(),
                base: None,
                placed: 0,
                unmatched: 0,
            }),
        }
    }

    fn started(&self) -> u64 {
        let now = payload::now_us();
        self.started.fetch_add(1, Ordering::Relaxed);
        self.first.fetch_min(now, Ordering::Relaxed);
        self.last.fetch_max(now, Ordering::Relaxed);
        now
    }

    fn latency(&self, body: &[u8]) {
        let now = self.started();
        let Some((sent, measured)) = payload::parse(body) else {
            return;
        };
        let mut notes = self.latency.lock().expect("no code panics while holding this lock");
        if measured {
            crate::stats::record(&mut notes.start, now.saturating_sub(sent));
        }
        // Pushed as the handler ends (it does nothing else), right before its outcome is
        // sent to the acker: the acker settles in this order.
        if self.track_done {
            notes.finished.push_back((sent, measured));
        }
    }

    /// The queue's `done` counter read `done` at `at_us`: every finished task it covers is done.
    fn settled(&self, done: u64, at_us: u64) {
        let mut notes = self.latency.lock().expect("no code panics while holding this lock");
        let Some(base) = notes.base else { return };
        let target = done.saturating_sub(base);
        while notes.placed < target {
            let Some((sent, measured)) = notes.finished.pop_front() else {
                // Counted settled but not yet seen finishing: only possible if another process
                // settled tasks of this queue.
                notes.unmatched += target - notes.placed;
                notes.placed = target;
                break;
            };
            notes.placed += 1;
            if measured {
                crate::stats::record(&mut notes.done, at_us.saturating_sub(sent));
            }
        }
    }
}

/// Observes settles as they become visible: the settle script ends by incrementing the shard's
/// `done` counter, which (with `notify-keyspace-events Kh`) publishes a keyspace event. On each
/// event (coalescing any already queued) the probe reads the counter with `HGET`; every task
/// the counter now covers is done at the time the reply arrived. The error is at most one
/// notification delivery plus one loopback round trip, always late (an upper bound).
struct DoneProbe {
    pubsub: redis::aio::PubSubStream,
    conn: redis::aio::MultiplexedConnection,
    stats_key: String,
}

impl DoneProbe {
    async fn start(client: &redis::Client, stats_key: String, recorder: &Recorder) -> Result<Self> {
        let db = client.get_connection_info().redis_settings().db();
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(format!("__keyspace@{db}__:{stats_key}")).await?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&crate::target::conn_config())
            .await?;
        let base: Option<u64> = redis::cmd("HGET")
            .arg(&stats_key)
            .arg("done")
            .query_async(&mut conn)
            .await?;
        recorder
            .latency
            .lock()
            .expect("no code panics while holding this lock")
            .base = Some(base.unwrap_or(0));
        Ok(DoneProbe {
            pubsub: pubsub.into_on_message(),
            conn,
            stats_key,
        })
    }

    /// Handles events until the stream ends; returns how many it handled.
    async fn run(mut self, recorder: Arc<Recorder>, probe_events: Arc<AtomicU64>) {
        while let Some(_msg) = self.pubsub.next().await {
            // Coalesce the events already waiting: one read covers them all.
            while let Some(Some(_)) = self.pubsub.next().now_or_never() {}
            let done: redis::RedisResult<Option<u64>> = redis::cmd("HGET")
                .arg(&self.stats_key)
                .arg("done")
                .query_async(&mut self.conn)
                .await;
            let at = payload::now_us();
            probe_events.fetch_add(1, Ordering::Relaxed);
            match done {
                Ok(d) => recorder.settled(d.unwrap_or(0), at),
                Err(e) => eprintln!("rivulet-bench worker: done probe read failed: {e}"),
            }
        }
    }
}

pub async fn run(args: WorkerArgs) -> Result<()> {
    let tls = rivulet::TlsOptions {
        ca_file: args.tls_ca_file.clone(),
        ..rivulet::TlsOptions::default()
    };
    let target = rivulet::RedisTarget::with_tls(&args.redis_url, &tls)?;
    // The layouts (shards) the harness declared before starting this process.
    let inspector = rivulet::Inspector::new(&target).await?;
    let mut queues = Vec::with_capacity(args.queue.len());
    for name in &args.queue {
        let mut queue = match inspector.queue(name).await {
            Ok(q) => q,
            Err(rivulet::Error::NotFound(_)) => Queue::new(name)?,
            Err(e) => return Err(e.into()),
        };
        if let Some(ms) = args.retention_ms {
            queue = queue.retention(Duration::from_millis(ms));
        }
        queues.push(queue);
    }
    let queue = queues.first().context("at least one --queue")?.clone();
    let recorder = Arc::new(Recorder::new(args.done_probe));
    let noop = recorder.clone();
    let lat = recorder.clone();
    let router = Router::new()
        .route_bytes_returning(KIND_NOOP, move |_ctx: TaskContext, _body| {
            let r = noop.clone();
            async move {
                r.started();
                // A small result, kept in the task's record when tracking is on.
                Ok(bytes::Bytes::from_static(b"{\"ok\":true}"))
            }
        })
        .route_bytes(KIND_LATENCY, move |_ctx: TaskContext, body| {
            let r = lat.clone();
            async move {
                r.latency(&body);
                Ok(())
            }
        });

    let probe_events = Arc::new(AtomicU64::new(0));
    let mut probe_task = None;
    if args.done_probe {
        let stats_key = queue.shard(queue.default_priority(), 0).stats;
        // The probe subscribes to keyspace events of one node (the suite refuses it on a cluster).
        let client = rivulet::connection::open(&args.redis_url, &tls)?;
        let probe = DoneProbe::start(&client, stats_key, &recorder)
            .await
            .context("starting the done probe")?;
        probe_task = Some(tokio::spawn(probe.run(recorder.clone(), probe_events.clone())));
    }

    let limits = rivulet::limits::from_specs(&args.rate_limit, &args.max_running)?;
    let config = WorkerConfig {
        concurrency: args.concurrency,
        limits,
        ..WorkerConfig::default()
    };
    let max = Duration::from_secs(args.max_seconds);
    let shutdown = async move {
        let mut sink = Vec::new();
        let stdin_closed = async {
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        };
        tokio::select! {
            () = stdin_closed => {}
            () = tokio::time::sleep(max) => eprintln!("rivulet-bench worker: --max-seconds reached; stopping"),
        }
    };
    let options = rivulet::QueueOptions {
        durability: args.durability.parse()?,
        ..rivulet::QueueOptions::default()
    };
    let mut worker = Worker::new(target, router, config);
    for q in queues {
        worker = worker.queue_with(q, options);
    }
    let mut scrapes = tokio::task::JoinSet::new();
    if args.metrics {
        let metrics = Arc::new(rivulet::WorkerMetrics::new());
        worker = worker.with_metrics(metrics.clone());
        scrapes.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let line = serde_json::to_string(&metrics.snapshot()).expect("a snapshot is plain data");
                std::hint::black_box(line);
            }
        });
    }
    worker.run(shutdown).await?;
    scrapes.shutdown().await;

    if let Some(task) = probe_task {
        // Every outcome is settled now; give the probe a moment to see the last events.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            let pending = recorder
                .latency
                .lock()
                .expect("no code panics while holding this lock")
                .finished
                .len();
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
    }

    let notes = recorder.latency.lock().expect("no code panics while holding this lock");
    let started = recorder.started.load(Ordering::Relaxed);
    let out = WorkerOutput {
        started,
        first_start_us: if started > 0 {
            recorder.first.load(Ordering::Relaxed)
        } else {
            0
        },
        last_start_us: recorder.last.load(Ordering::Relaxed),
        start: (!notes.start.is_empty()).then(|| HistSummary::of(&notes.start)),
        done: (args.done_probe && !notes.done.is_empty()).then(|| HistSummary::of(&notes.done)),
        done_unmatched: notes.unmatched
            + if args.done_probe {
                notes.finished.len() as u64
            } else {
                0
            },
        probe_events: probe_events.load(Ordering::Relaxed),
        cpu_s: process_cpu_s(),
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
