//! Drain: a backlog of no-op tasks, filled first, then emptied by W worker processes at
//! concurrency C. Throughput is counted from the first handler start to the last, over all
//! processes; Redis CPU and commands are read over the whole drain window.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rivulet::{Client, Queue, Task};
use serde::Serialize;

use crate::fleet::{Fleet, Spec};
use crate::payload::{self, KIND_NOOP};
use crate::target::{Target, Usage, Window};

/// Tasks per `enqueue_many` call when filling.
pub const FILL_BATCH: usize = 1000;

#[derive(Debug, Clone, Serialize)]
pub struct DrainResult {
    pub shards: u16,
    pub workers: usize,
    pub concurrency: usize,
    pub payload_bytes: usize,
    pub tasks: u64,
    /// Tasks / (last handler start - first handler start).
    pub tasks_per_s: f64,
    pub span_s: f64,
    /// From starting the worker processes to seeing every task settled.
    pub wall_s: f64,
    /// Filling the backlog with `enqueue_many` batches of [`FILL_BATCH`].
    pub fill_tasks_per_s: f64,
    pub fill_redis: Usage,
    pub drain_redis: Usage,
    /// CPU (user + system) of the worker processes per task, start-up and shutdown included.
    pub worker_cpu_us_per_task: f64,
    /// Whether task records (lifecycle tracking) were on.
    pub lifecycle: bool,
    /// Whether the workers' metrics were on.
    pub metrics: bool,
    /// Redis memory per retained finished task record, bytes (`MEMORY USAGE` of a sample of
    /// records; lifecycle on only).
    pub record_bytes: Option<f64>,
    /// The scenario's label (`limits` runs: `off`, `rate`, `cap`), empty for plain drains.
    pub label: String,
    /// The workers' limit flags (`--rate-limit=...`, `--max-running=...`).
    pub limits: Vec<String>,
    /// Times a task was sent to wait for a limit (the shards' `limited` counter).
    pub waited: u64,
}

pub struct DrainSpec {
    /// Shards per priority of the queue.
    pub shards: u16,
    pub workers: usize,
    pub concurrency: usize,
    pub payload_bytes: usize,
    pub tasks: u64,
    /// Task records kept (lifecycle tracking on, the engine's default) or not.
    pub lifecycle: bool,
    /// A label for the queue name and the report (empty for plain drains).
    pub label: String,
    /// The workers' limit flags.
    pub limits: Vec<String>,
    /// Worker metrics on (`--metrics-addr`'s `WorkerMetrics`) or off.
    pub metrics: bool,
}

impl DrainSpec {
    /// A plain drain: no label, no limits.
    pub fn plain(workers: usize, concurrency: usize, payload_bytes: usize, tasks: u64, lifecycle: bool) -> Self {
        DrainSpec {
            shards: 1,
            workers,
            concurrency,
            payload_bytes,
            tasks,
            lifecycle,
            label: String::new(),
            limits: Vec::new(),
            metrics: false,
        }
    }
}

pub async fn run(target: &Target, s: &DrainSpec) -> Result<DrainResult> {
    let mut queue = Queue::new(&format!(
        "drain-w{}-c{}-p{}-s{}{}{}{}",
        s.workers,
        s.concurrency,
        s.payload_bytes,
        s.shards,
        if s.lifecycle { "" } else { "-off" },
        if s.label.is_empty() {
            String::new()
        } else {
            format!("-{}", s.label)
        },
        if s.metrics { "-m" } else { "" }
    ))?
    .shards(s.shards)?;
    if !s.lifecycle {
        queue = queue.retention(Duration::ZERO);
    }
    target.drop_queue(&queue).await?;
    let client = Client::new(&target.client)
        .await?
        .with_durability(target.durability)
        .await?;
    client.declare(&queue).await?;

    // Fill. One payload shared by every task (a refcount, not a copy).
    let body = payload::make(s.payload_bytes, payload::now_us(), false);
    let before = target.snapshot().await?;
    let t0 = Instant::now();
    let mut left = s.tasks;
    while left > 0 {
        let n = left.min(FILL_BATCH as u64);
        client
            .enqueue_many(&queue, (0..n).map(|_| Task::bytes(KIND_NOOP, body.clone())))
            .await?;
        left -= n;
    }
    let fill_s = t0.elapsed().as_secs_f64();
    let after_fill = target.snapshot().await?;

    // Drain.
    let spec = Spec {
        redis_url: target.url.clone(),
        durability: target.durability.to_string(),
        tls_ca_file: target.tls.ca_file.clone(),
        queue: queue.name().to_string(),
        concurrency: s.concurrency,
        done_probe: false,
        max_seconds: 600,
        retention_ms: (!s.lifecycle).then_some(0),
        limits: s.limits.clone(),
        metrics: s.metrics,
    };
    let t1 = Instant::now();
    let fleet = Fleet::spawn(&spec, s.workers)?;
    // Bounded: even 2,000 tasks/s would finish well within this (limited runs are sized to
    // take a few seconds).
    let limit = Duration::from_secs(30) + Duration::from_secs_f64(s.tasks as f64 / 2_000.0);
    loop {
        if target.done(&queue).await? >= s.tasks {
            break;
        }
        if t1.elapsed() > limit {
            drop(fleet);
            bail!("drain of {} tasks did not finish within {limit:?}", s.tasks);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall_s = t1.elapsed().as_secs_f64();
    let after = target.snapshot().await?;
    let outputs = fleet.stop(Duration::from_secs(60)).await?;
    let waited = target.counter(&queue, "limited").await?;
    let record_bytes = if s.lifecycle {
        Some(target.record_bytes(&queue, 200).await?)
    } else {
        None
    };
    target.drop_queue(&queue).await?;

    let started: u64 = outputs.iter().map(|o| o.started).sum();
    if started < s.tasks {
        bail!("workers started {started} handlers for {} tasks", s.tasks);
    }
    let first = outputs
        .iter()
        .filter(|o| o.started > 0)
        .map(|o| o.first_start_us)
        .min()
        .unwrap_or(0);
    let last = outputs.iter().map(|o| o.last_start_us).max().unwrap_or(0);
    let span_s = (last.saturating_sub(first) as f64 / 1e6).max(1e-6);
    Ok(DrainResult {
        shards: s.shards,
        workers: s.workers,
        concurrency: s.concurrency,
        payload_bytes: s.payload_bytes,
        tasks: s.tasks,
        tasks_per_s: s.tasks as f64 / span_s,
        span_s,
        wall_s,
        fill_tasks_per_s: s.tasks as f64 / fill_s.max(1e-6),
        fill_redis: before.usage(&after_fill, s.tasks, Window::Produce, false),
        drain_redis: after_fill.usage(&after, s.tasks, Window::Consume, false),
        worker_cpu_us_per_task: outputs.iter().map(|o| o.cpu_s).sum::<f64>() * 1e6 / s.tasks as f64,
        lifecycle: s.lifecycle,
        metrics: s.metrics,
        record_bytes,
        label: s.label.clone(),
        limits: s.limits.clone(),
        waited,
    })
}
