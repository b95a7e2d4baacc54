//! Enqueue: `Client::enqueue` one task per round trip (one caller, then 64 concurrent callers
//! sharing the multiplexed connection) and `Client::enqueue_many` pipelined batches. No
//! worker runs; each mode gets a fresh queue that is deleted afterwards.

use std::time::{Duration, Instant};

use anyhow::Result;
use rivulet::{Client, Queue, Task};
use serde::Serialize;

use crate::payload::{self, KIND_NOOP};
use crate::target::{Target, Usage, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One `enqueue` at a time: bound by the round trip.
    Single,
    /// `callers` concurrent `enqueue` calls on one client.
    Concurrent { callers: usize },
    /// Sequential `enqueue_many` calls of `size` tasks.
    Batch { size: usize },
}

impl Mode {
    pub fn key(&self) -> String {
        match self {
            Mode::Single => "single".into(),
            Mode::Concurrent { callers } => format!("concurrent{callers}"),
            Mode::Batch { size } => format!("batch{size}"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EnqueueResult {
    pub mode: Mode,
    pub payload_bytes: usize,
    pub tasks: u64,
    pub tasks_per_s: f64,
    pub redis: Usage,
}

/// Enqueues up to `tasks` tasks (fewer if `limit` passes first) and measures the rate.
pub async fn run(
    target: &Target,
    mode: Mode,
    payload_bytes: usize,
    tasks: u64,
    limit: Duration,
) -> Result<EnqueueResult> {
    let queue = Queue::new(&format!("enqueue-{}-p{payload_bytes}", mode.key()))?;
    target.drop_queue(&queue).await?;
    let client = Client::new(&target.client)
        .await?
        .with_durability(target.durability)
        .await?;
    client.declare(&queue).await?;
    let body = payload::make(payload_bytes, payload::now_us(), false);
    let task = move || Task::bytes(KIND_NOOP, body.clone());

    let before = target.snapshot().await?;
    let t0 = Instant::now();
    let deadline = t0 + limit;
    let done = match mode {
        Mode::Single => {
            let mut n = 0;
            while n < tasks && Instant::now() < deadline {
                client.enqueue(&queue, task()).await?;
                n += 1;
            }
            n
        }
        Mode::Concurrent { callers } => {
            let mut set = tokio::task::JoinSet::new();
            let per = tasks.div_ceil(callers as u64);
            for _ in 0..callers {
                let (client, queue, task) = (client.clone(), queue.clone(), task.clone());
                set.spawn(async move {
                    let mut n = 0u64;
                    while n < per && Instant::now() < deadline {
                        client.enqueue(&queue, task()).await?;
                        n += 1;
                    }
                    anyhow::Ok(n)
                });
            }
            let mut n = 0;
            while let Some(r) = set.join_next().await {
                n += r??;
            }
            n
        }
        Mode::Batch { size } => {
            let mut n = 0;
            while n < tasks && Instant::now() < deadline {
                let k = (tasks - n).min(size as u64);
                client.enqueue_many(&queue, (0..k).map(|_| task())).await?;
                n += k;
            }
            n
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let after = target.snapshot().await?;
    target.drop_queue(&queue).await?;
    Ok(EnqueueResult {
        mode,
        payload_bytes,
        tasks: done,
        tasks_per_s: done as f64 / secs.max(1e-6),
        redis: before.usage(&after, done, Window::Produce, false),
    })
}
