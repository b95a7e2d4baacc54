//! Latency: an open-loop producer at a fixed rate for a fixed time, one worker process.
//!
//! Every millisecond the producer sends, in one `enqueue_many` pipeline, the tasks the rate
//! says are due by then, without waiting for earlier calls to return (open loop: a slow
//! Redis delays tasks, it does not slow the producer down and hide the delay). Each payload
//! carries its send time (wall clock, µs, taken just before the pipeline is built). The first
//! `warmup` seconds are sent but not recorded. The worker records:
//! - enqueue-to-start: handler start minus send time;
//! - enqueue-to-done: the time the task's settle became visible in Redis (the shard's `done`
//!   counter covers it, seen through a keyspace notification and one `HGET`) minus send time;
//!   see `worker::DoneProbe` for the exact definition and its error bound.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rivulet::{Client, Queue, Task};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::fleet::{Fleet, Spec};
use crate::payload::{self, KIND_LATENCY};
use crate::stats::{self, HistSummary};
use crate::target::{Target, Usage, Window};

/// Most `enqueue_many` calls in flight before the producer waits (it is then saturated, and
/// says so in `producer_stalls`).
const MAX_IN_FLIGHT: usize = 256;

#[derive(Debug, Clone)]
pub struct LatencySpec {
    /// Metric key of the rate: `1000`, `2000`, ... or `auto80` (80 % of the drain rate).
    pub label: String,
    pub rate: f64,
    pub payload_bytes: usize,
    pub seconds: f64,
    pub warmup: f64,
    pub concurrency: usize,
    pub done_probe: bool,
    /// Task records on (the default: the engine's retention); off = retention 0 on the
    /// producer's queue and the worker's.
    pub records: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub label: String,
    pub rate_target: f64,
    /// Measured tasks / measured seconds.
    pub rate_achieved: f64,
    pub seconds: f64,
    pub payload_bytes: usize,
    pub concurrency: usize,
    /// Tasks sent, warm-up included.
    pub sent: u64,
    pub measured: u64,
    pub start: HistSummary,
    pub done: Option<HistSummary>,
    pub done_unmatched: u64,
    /// Duration of the producer's `enqueue_many` calls.
    pub enqueue_call: HistSummary,
    /// Times the producer had to wait for a free call slot (0 = it kept its schedule).
    pub producer_stalls: u64,
    /// Tasks sent but not yet settled when the producer stopped: near 0 while the worker
    /// keeps up, growing with the run when the rate is beyond what the machine sustains.
    pub backlog_at_end: u64,
    pub redis: Usage,
    /// CPU of the worker process per task sent (start-up and shutdown included).
    pub worker_cpu_us_per_task: f64,
    /// CPU of the worker process over the measured window only (the same window as `redis`,
    /// from `/proc/<pid>/stat`), per task sent.
    pub worker_window_cpu_us_per_task: f64,

    /// CPU of this (producer) process per task sent during the producing window.
    pub producer_cpu_us_per_task: f64,
}

pub async fn run(target: &Target, s: &LatencySpec) -> Result<LatencyResult> {
    let mut queue = Queue::new(&format!("latency-{}-p{}", s.label, s.payload_bytes))?;
    if !s.records {
        queue = queue.retention(Duration::ZERO);
    }
    target.drop_queue(&queue).await?;
    let client = Client::new(&target.client)
        .await?
        .with_durability(target.durability)
        .await?;
    client.declare(&queue).await?;

    let mut done_probe = s.done_probe;
    let mut restore = None;
    if done_probe {
        match target.set_notify("Kh").await {
            Ok(old) => restore = Some(old),
            Err(e) => {
                eprintln!("rivulet-bench: cannot enable keyspace notifications ({e}); enqueue-to-done not measured");
                done_probe = false;
            }
        }
    }
    let result = measure(target, s, &queue, &client, done_probe).await;
    if let Some(old) = restore {
        target.set_notify(&old).await?;
    }
    target.drop_queue(&queue).await?;
    result
}

async fn measure(
    target: &Target,
    s: &LatencySpec,
    queue: &Queue,
    client: &Client,
    done_probe: bool,
) -> Result<LatencyResult> {
    let spec = Spec {
        redis_url: target.url.clone(),
        durability: target.durability.to_string(),
        tls_ca_file: target.tls.ca_file.clone(),
        queue: queue.name().to_string(),
        concurrency: s.concurrency,
        done_probe,
        max_seconds: 600,
        retention_ms: (!s.records).then_some(0),
        limits: Vec::new(),
        metrics: false,
    };
    let live = target.live_workers().await?;
    let fleet = Fleet::spawn(&spec, 1)?;
    let t = Instant::now();
    while target.live_workers().await? <= live {
        if t.elapsed() > Duration::from_secs(15) {
            bail!("the latency worker did not register within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let before = target.snapshot().await?;
    let worker_cpu = fleet.cpu_s();
    let producer_cpu = crate::worker::process_cpu_s();
    let total = s.warmup + s.seconds;
    let mut calls = stats::histogram();
    let mut in_flight: JoinSet<rivulet::Result<Duration>> = JoinSet::new();
    let (mut sent, mut measured, mut pipelines, mut stalls) = (0u64, 0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let start = Instant::now();
    loop {
        tick.tick().await;
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= total {
            break;
        }
        let due = (s.rate * elapsed) as u64;
        if due <= sent {
            continue;
        }
        let n = due - sent;
        let is_measured = elapsed >= s.warmup;
        while in_flight.len() >= MAX_IN_FLIGHT {
            stalls += 1;
            reap(in_flight.join_next().await, &mut calls)?;
        }
        let now = payload::now_us();
        let tasks: Vec<Task> = (0..n)
            .map(|_| Task::bytes(KIND_LATENCY, payload::make(s.payload_bytes, now, is_measured)))
            .collect();
        let (client, queue) = (client.clone(), queue.clone());
        in_flight.spawn(async move {
            let t = Instant::now();
            client.enqueue_many(&queue, tasks).await?;
            Ok(t.elapsed())
        });
        while let Some(r) = in_flight.try_join_next() {
            reap(Some(r), &mut calls)?;
        }
        sent += n;
        pipelines += 1;
        if is_measured {
            measured += n;
        }
    }
    while let Some(r) = in_flight.join_next().await {
        reap(Some(r), &mut calls)?;
    }
    let producer_cpu = crate::worker::process_cpu_s() - producer_cpu;
    let backlog_at_end = sent.saturating_sub(target.done(queue).await?);

    let limit = Duration::from_secs(30) + Duration::from_secs_f64(sent as f64 / 2_000.0);
    let t = Instant::now();
    while target.done(queue).await? < sent {
        if t.elapsed() > limit {
            drop(fleet);
            bail!("latency run at {}/s: tasks still unsettled after {limit:?}", s.rate);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = target.snapshot().await?;
    let worker_cpu = fleet.cpu_s() - worker_cpu;
    let mut outputs = fleet.stop(Duration::from_secs(60)).await?;
    let out = outputs.pop().context("one worker report")?;
    // The done probe's reads (one HGET per event it handled) are the harness's too.
    let mut redis = before.usage(&after, sent, Window::Mixed { pipelines }, false);
    redis.discount("hget", out.probe_events, sent);
    Ok(LatencyResult {
        label: s.label.clone(),
        rate_target: s.rate,
        rate_achieved: measured as f64 / s.seconds,
        seconds: s.seconds,
        payload_bytes: s.payload_bytes,
        concurrency: s.concurrency,
        sent,
        measured,
        start: out.start.context("the worker recorded no latency")?,
        done: out.done,
        done_unmatched: out.done_unmatched,
        enqueue_call: HistSummary::of(&calls),
        producer_stalls: stalls,
        backlog_at_end,
        redis,
        worker_cpu_us_per_task: out.cpu_s * 1e6 / sent.max(1) as f64,
        worker_window_cpu_us_per_task: worker_cpu * 1e6 / sent.max(1) as f64,

        producer_cpu_us_per_task: producer_cpu * 1e6 / sent.max(1) as f64,
    })
}

fn reap(
    r: Option<Result<rivulet::Result<Duration>, tokio::task::JoinError>>,
    calls: &mut hdrhistogram::Histogram<u64>,
) -> Result<()> {
    if let Some(r) = r {
        let took = r??;
        stats::record(calls, u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }
    Ok(())
}
