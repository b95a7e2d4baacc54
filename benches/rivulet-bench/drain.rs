//! Drain: a backlog of no-op tasks, filled first, then emptied by W worker processes at
//! concurrency C. Throughput is counted from the first handler start to the last, over all
//! processes; Redis CPU and commands are read over the whole drain window.
//!
//! The same drain serves the `many-queues` and `many-workers` scenarios: the backlog may be
//! spread over several queues and every priority of each (`queues`, `spread`), and the queues
//! may be paused until every worker process has registered (`pause_first`), so that a large
//! fleet's start-up (processes started one after the other on a small machine) does not decide
//! which process gets the work.

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
    /// Redis memory per retained finished task record, bytes (`MEMORY USAGE` of the shards'
    /// finished hashes and succeeded indexes over the records they hold; lifecycle on only).
    pub record_bytes: Option<f64>,
    /// The scenario's label (`limits` runs: `off`, `rate`, `cap`), empty for plain drains.
    pub label: String,
    /// The workers' limit flags (`--rate-limit=...`, `--max-running=...`).
    pub limits: Vec<String>,
    /// Times a task was sent to wait for a limit (the shards' `limited` counter).
    pub waited: u64,
    /// Queues the backlog was spread over (every one served by every worker process).
    pub queues: usize,
    /// Whether the backlog was spread over every priority of each queue (else all at the
    /// default priority).
    pub spread: bool,
    /// Handlers each worker process started, in start order of the processes.
    pub per_process_started: Vec<u64>,
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
    /// Queues to spread the backlog over (1: one queue); every worker serves them all.
    pub queues: usize,
    /// Spread the backlog over every priority of each queue, round robin.
    pub spread: bool,
    /// Pause the queues until every worker process has registered, then resume them.
    pub pause_first: bool,
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
            queues: 1,
            spread: false,
            pause_first: false,
        }
    }
}

pub async fn run(target: &Target, s: &DrainSpec) -> Result<DrainResult> {
    let base = format!(
        "drain-w{}-c{}-p{}-s{}{}{}{}{}",
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
        if s.metrics { "-m" } else { "" },
        match (s.queues, s.spread) {
            (1, false) => String::new(),
            (n, spread) => format!("-q{n}{}", if spread { "x" } else { "" }),
        }
    );
    let names: Vec<String> = if s.queues <= 1 {
        vec![base]
    } else {
        (0..s.queues).map(|i| format!("{base}-{i}")).collect()
    };
    let mut queues = Vec::with_capacity(names.len());
    for name in &names {
        let mut queue = Queue::new(name)?.shards(s.shards)?;
        if !s.lifecycle {
            queue = queue.retention(Duration::ZERO);
        }
        queues.push(queue);
    }
    target.drop_queues(&queues).await?;
    let client = Client::new(&target.client)
        .await?
        .with_durability(target.durability)
        .await?;
    for queue in &queues {
        client.declare(queue).await?;
    }

    // Fill. One payload shared by every task (a refcount, not a copy). Spread: task j of a
    // queue goes to priority j mod the queue's priorities; the queues share the backlog evenly.
    let body = payload::make(s.payload_bytes, payload::now_us(), false);
    let before = target.snapshot().await?;
    let t0 = Instant::now();
    for (i, queue) in queues.iter().enumerate() {
        let share = s.tasks / queues.len() as u64 + u64::from((i as u64) < s.tasks % queues.len() as u64);
        let priorities = &queue.layout().priorities;
        let mut sent = 0u64;
        while sent < share {
            let n = (share - sent).min(FILL_BATCH as u64);
            let tasks = (sent..sent + n).map(|j| {
                let task = Task::bytes(KIND_NOOP, body.clone());
                if s.spread {
                    task.priority(priorities[j as usize % priorities.len()].clone())
                } else {
                    task
                }
            });
            client.enqueue_many(queue, tasks).await?;
            sent += n;
        }
    }
    let fill_s = t0.elapsed().as_secs_f64();
    let after_fill = target.snapshot().await?;

    // Drain.
    let spec = Spec {
        redis_url: target.url.clone(),
        durability: target.durability.to_string(),
        tls_ca_file: target.tls.ca_file.clone(),
        queue: names.join(","),
        concurrency: s.concurrency,
        done_probe: false,
        max_seconds: 600,
        retention_ms: (!s.lifecycle).then_some(0),
        limits: s.limits.clone(),
        metrics: s.metrics,
    };
    let inspector = rivulet::Inspector::new(&target.client).await?;
    if s.pause_first {
        for queue in &queues {
            inspector.pause(queue).await?;
        }
    }
    let live = target.live_workers().await?;
    let t1 = Instant::now();
    let fleet = Fleet::spawn(&spec, s.workers)?;
    if s.pause_first {
        let limit = Duration::from_secs(30) + Duration::from_millis(500) * s.workers as u32;
        while target.live_workers().await? < live + s.workers as u64 {
            if t1.elapsed() > limit {
                drop(fleet);
                bail!("{} worker processes did not all register within {limit:?}", s.workers);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Registered is not yet reading: give the last one a moment to reach its first read.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for queue in &queues {
            inspector.resume(queue).await?;
        }
    }
    // Paused, the drain's cost starts at the resume (the wait for registration is idle cost).
    let drain_start = if s.pause_first {
        target.snapshot().await?
    } else {
        after_fill.clone()
    };
    // Bounded: even 2,000 tasks/s would finish well within this (limited runs are sized to
    // take a few seconds).
    let limit = Duration::from_secs(30) + Duration::from_secs_f64(s.tasks as f64 / 2_000.0);
    // Polling every shard's counter costs Redis a command per shard: seldom when there are many.
    let shards: usize = queues.iter().map(|q| q.all_shards().count()).sum();
    let poll = Duration::from_millis(if shards > 3 { 100 } else { 5 });
    let t2 = Instant::now();
    loop {
        if target.done_all(&queues).await? >= s.tasks {
            break;
        }
        if t2.elapsed() > limit {
            drop(fleet);
            bail!("drain of {} tasks did not finish within {limit:?}", s.tasks);
        }
        tokio::time::sleep(poll).await;
    }
    let wall_s = t1.elapsed().as_secs_f64();
    let after = target.snapshot().await?;
    let outputs = fleet.stop(Duration::from_secs(60)).await?;
    let mut waited = 0;
    for queue in &queues {
        waited += target.counter(queue, "limited").await?;
    }
    let record_bytes = if s.lifecycle {
        Some(target.record_bytes(&queues[0], 0).await?)
    } else {
        None
    };
    target.drop_queues(&queues).await?;

    let started: u64 = outputs.iter().map(|o| o.started).sum();
    if started < s.tasks {
        bail!("workers started {started} handlers for {} tasks", s.tasks);
    }
    let span_s = crate::worker::span_s(&outputs);
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
        drain_redis: drain_start.usage(&after, s.tasks, Window::Consume, false),
        worker_cpu_us_per_task: outputs.iter().map(|o| o.cpu_s).sum::<f64>() * 1e6 / s.tasks as f64,
        lifecycle: s.lifecycle,
        metrics: s.metrics,
        record_bytes,
        label: s.label.clone(),
        limits: s.limits.clone(),
        waited,
        queues: queues.len(),
        spread: s.spread,
        per_process_started: outputs.iter().map(|o| o.started).collect(),
    })
}
