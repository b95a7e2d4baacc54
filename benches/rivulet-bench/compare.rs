//! `--only compare`: what going past one Redis costs, measured in one run. Each setup is a
//! private Redis started in turn (one node; one node with a replica and `replicated:1` on every
//! enqueue and settle; one node over TLS; a 3+3 Redis Cluster), and on each the same reference
//! drain (one worker process) and a batched enqueue run. Redis CPU and commands per task are
//! summed over every master (replicas' CPU is not counted); the shards of `--shards` apply to
//! the single node and the cluster, where they decide how many masters a queue uses.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::drain::{self, DrainSpec};
use crate::enqueue::{self, Mode};
use crate::payload::BASE_PAYLOAD;
use crate::suite::{Plan, progress};
use crate::target::{Setup, Target};

/// One setup and shard count, drained and enqueued into.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub setup: String,
    pub shards: u16,
    pub drain_tasks_per_s: f64,
    /// Fill (enqueue in batches of 1000) and drain together, per task.
    pub redis_cpu_us_per_task: f64,
    pub commands_per_task: f64,
    pub enqueue_tasks_per_s: f64,
    /// Enqueue in batches of 100 alone, per task.
    pub enqueue_cpu_us_per_task: f64,
    pub enqueue_commands_per_task: f64,
}

/// Runs every setup in turn; each private Redis is stopped before the next starts.
pub async fn run(plan: &Plan, quick: bool) -> Result<Vec<CompareRow>> {
    let mut rows = Vec::new();
    for setup in [Setup::Single, Setup::Replicated, Setup::Tls, Setup::Cluster] {
        let target = Target::start(setup).await?;
        let shards: Vec<u16> = match setup {
            Setup::Single | Setup::Cluster => plan.shards.clone(),
            Setup::Replicated | Setup::Tls => vec![1],
        };
        for n in shards {
            let spec = DrainSpec {
                shards: n,
                workers: 1,
                concurrency: plan.concurrency,
                payload_bytes: BASE_PAYLOAD,
                tasks: plan.tasks,
                lifecycle: true,
                label: String::new(),
                limits: Vec::new(),
                metrics: false,
                queues: 1,
                spread: false,
                pause_first: false,
            };
            let d = drain::run(&target, &spec).await?;
            let life = d.fill_redis.plus(&d.drain_redis);
            let limit = Duration::from_secs(if quick { 2 } else { 5 });
            let e = enqueue::run(&target, Mode::Batch { size: 100 }, BASE_PAYLOAD, plan.tasks / 2, limit).await?;
            let row = CompareRow {
                setup: setup.label().to_owned(),
                shards: n,
                drain_tasks_per_s: d.tasks_per_s,
                redis_cpu_us_per_task: life.cpu_us_per_task,
                commands_per_task: life.commands_per_task,
                enqueue_tasks_per_s: e.tasks_per_s,
                enqueue_cpu_us_per_task: e.redis.cpu_us_per_task,
                enqueue_commands_per_task: e.redis.commands_per_task,
            };
            progress(format_args!(
                "compare {:<34} {n} shard(s): drain {:>8.0} tasks/s, redis {:.2} µs {:.2} cmds/task; enqueue x100 {:>8.0} tasks/s, redis {:.2} µs {:.2} cmds/task",
                row.setup,
                row.drain_tasks_per_s,
                row.redis_cpu_us_per_task,
                row.commands_per_task,
                row.enqueue_tasks_per_s,
                row.enqueue_cpu_us_per_task,
                row.enqueue_commands_per_task
            ));
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The comparison as a table (empty when it did not run).
pub fn table(rows: &[CompareRow]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nPast one Redis (one worker process; Redis CPU and commands summed over the masters)\n\
         {:<34} {:>6} {:>12} {:>12} {:>10} {:>14} {:>14} {:>12}",
        "setup", "shards", "drain/s", "µs/task", "cmds/task", "enqueue x100/s", "enq µs/task", "enq cmds"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<34} {:>6} {:>12.0} {:>12.2} {:>10.2} {:>14.0} {:>14.2} {:>12.2}",
            r.setup,
            r.shards,
            r.drain_tasks_per_s,
            r.redis_cpu_us_per_task,
            r.commands_per_task,
            r.enqueue_tasks_per_s,
            r.enqueue_cpu_us_per_task,
            r.enqueue_commands_per_task
        );
    }
    out
}
