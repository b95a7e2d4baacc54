//! Fair groups (`--only groups`): tenant A enqueues a backlog of no-op tasks, then tenant B a
//! hundred stamped ones; one worker process drains the queue. Run with groups on (A's tasks in
//! group `a`, B's in `b`) and off (no group): B's wait from the workers' first start to each
//! of its tasks' start (p50, p99), in µs and in task starts, and Redis's commands per task.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rivulet::{Client, Queue, Task};
use serde::Serialize;

use crate::drain::FILL_BATCH;
use crate::fleet::{Fleet, Spec};
use crate::payload::{self, BASE_PAYLOAD, KIND_LATENCY, KIND_NOOP};
use crate::target::{Target, Usage, Window};

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct GroupsResult {
    /// Whether the tasks carried groups.
    pub grouped: bool,
    pub a_tasks: u64,
    pub b_tasks: u64,
    pub concurrency: usize,
    /// B's wait from the first handler start of the run to its tasks' starts, µs.
    pub b_wait_p50_us: f64,
    pub b_wait_p99_us: f64,
    /// The same in task starts: B's wait divided by the run's mean time between starts.
    pub b_wait_p99_starts: f64,
    pub tasks_per_s: f64,
    /// Redis's work per task over the fill and the drain.
    pub redis: Usage,
}

pub async fn run(
    target: &Target,
    grouped: bool,
    a_tasks: u64,
    b_tasks: u64,
    concurrency: usize,
) -> Result<GroupsResult> {
    let queue = Queue::new(if grouped { "groups-on" } else { "groups-off" })?.retention(Duration::ZERO);
    target.drop_queue(&queue).await?;
    let client = Client::new(&target.client).await?;
    client.declare(&queue).await?;
    let group = |t: Task, g: &str| if grouped { t.group(g) } else { t };

    let before = target.snapshot().await?;
    let body = payload::make(BASE_PAYLOAD, payload::now_us(), false);
    let mut left = a_tasks;
    while left > 0 {
        let n = left.min(FILL_BATCH as u64);
        client
            .enqueue_many(&queue, (0..n).map(|_| group(Task::bytes(KIND_NOOP, body.clone()), "a")))
            .await?;
        left -= n;
    }
    let sent_b = payload::now_us();
    let stamped = payload::make(BASE_PAYLOAD, sent_b, true);
    client
        .enqueue_many(
            &queue,
            (0..b_tasks).map(|_| group(Task::bytes(KIND_LATENCY, stamped.clone()), "b")),
        )
        .await?;
    let after_fill = target.snapshot().await?;

    let spec = Spec {
        redis_url: target.url.clone(),
        durability: target.durability.to_string(),
        tls_ca_file: target.tls.ca_file.clone(),
        queue: queue.name().to_string(),
        concurrency,
        done_probe: false,
        max_seconds: 600,
        retention_ms: Some(0),
        limits: Vec::new(),
        metrics: false,
    };
    let total = a_tasks + b_tasks;
    let t0 = Instant::now();
    let fleet = Fleet::spawn(&spec, 1)?;
    let limit = Duration::from_secs(30) + Duration::from_secs_f64(total as f64 / 2_000.0);
    while target.done(&queue).await? < total {
        if t0.elapsed() > limit {
            drop(fleet);
            bail!("the groups drain of {total} tasks did not finish within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = target.snapshot().await?;
    let outputs = fleet.stop(Duration::from_secs(60)).await?;
    target.drop_queue(&queue).await?;
    let o = &outputs[0];
    let Some(start) = &o.start else {
        bail!("the worker measured none of B's tasks");
    };
    if start.count != b_tasks {
        bail!("the worker measured {} of B's {b_tasks} tasks", start.count);
    }
    // B's tasks were stamped when they were enqueued, before the worker started: what they
    // waited once the worker served the queue is their start latency less that head start.
    let head = o.first_start_us.saturating_sub(sent_b) as f64;
    let span_us = o.last_start_us.saturating_sub(o.first_start_us).max(1) as f64;
    let per_start = span_us / total as f64;
    let p99 = (start.p99 as f64 - head).max(0.0);
    Ok(GroupsResult {
        grouped,
        a_tasks,
        b_tasks,
        concurrency,
        b_wait_p50_us: (start.p50 as f64 - head).max(0.0),
        b_wait_p99_us: p99,
        b_wait_p99_starts: p99 / per_start,
        tasks_per_s: total as f64 / (span_us / 1e6),
        redis: before
            .usage(&after_fill, total, Window::Produce, false)
            .plus(&after_fill.usage(&after, total, Window::Consume, false)),
    })
}
