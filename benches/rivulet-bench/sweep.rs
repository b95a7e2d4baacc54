//! Rate sweep: what a task costs at a trickle and up to saturation.
//!
//! One worker process (the latency runs' slots) and the open-loop producer of `latency` at
//! each offered rate in turn (10/s to 10,000/s by default), a few seconds each, the done probe
//! off (its keyspace events would add Redis CPU). Per rate: every Redis command per task
//! (calls inside Lua included; the harness's own left out by count), Redis CPU per task
//! (`INFO cpu` of the server process), the worker process's CPU per task over the same window,
//! and enqueue-to-start p50/p99. At a trickle the worker's idle polling is part of the cost per
//! task, which is the point: the costs are over the whole window divided by the tasks in it.
//! Then saturation: a pre-filled backlog drained by the same one worker process, the cost
//! per task of the fill and the drain together, at the rate it drains.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::drain::{self, DrainSpec};
use crate::latency::{self, LatencySpec};
use crate::payload::BASE_PAYLOAD;
use crate::suite::progress;
use crate::target::Target;

/// One point of the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// `10`, `100`, ... (offered tasks/s) or `saturation`.
    pub label: String,
    /// Offered rate, tasks/s (the drain rate for saturation).
    pub offered: f64,
    /// Measured tasks/s.
    pub achieved: f64,
    pub tasks: u64,
    pub commands_per_task: f64,
    /// Every command by name, per task (inner calls of scripts and functions included: the
    /// top-level ones are `fcall`, `evalsha`, `xreadgroup`, `multi`/`exec` and the registry's
    /// writes; with records off also the producer's `xadd` and one `hincrby` per pipeline).
    pub calls_per_task: BTreeMap<String, f64>,
    /// Task records on (the default) or off (`--rate-sweep-records-off`).
    pub records: bool,
    pub redis_cpu_us_per_task: f64,
    pub worker_cpu_us_per_task: f64,
    /// Enqueue-to-start, µs (none at saturation: there the backlog decides it).
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Tasks not yet settled when the producer stopped.
    pub backlog_at_end: u64,
}

/// What the sweep runs.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    pub rates: Vec<u64>,
    pub seconds: f64,
    pub warmup: f64,
    pub concurrency: usize,
    /// Backlog of the saturation drain (0 skips it).
    pub saturation_tasks: u64,
    /// Task records on (the default) or off.
    pub records: bool,
}

pub async fn run(target: &Target, s: &SweepSpec, late: impl Fn(&str) -> bool) -> Result<Vec<SweepPoint>> {
    let mut points = Vec::new();
    for &rate in &s.rates {
        if late("rate-sweep") {
            return Ok(points);
        }
        let spec = LatencySpec {
            label: format!("sweep{rate}"),
            rate: rate as f64,
            payload_bytes: BASE_PAYLOAD,
            seconds: s.seconds,
            warmup: s.warmup,
            concurrency: s.concurrency,
            done_probe: false,
            records: s.records,
        };
        let l = latency::run(target, &spec).await?;
        let p = SweepPoint {
            label: rate.to_string(),
            offered: rate as f64,
            achieved: l.rate_achieved,
            tasks: l.sent,
            commands_per_task: l.redis.commands_per_task,
            calls_per_task: l.redis.calls_per_task.clone(),
            records: s.records,
            redis_cpu_us_per_task: l.redis.cpu_us_per_task,
            worker_cpu_us_per_task: l.worker_window_cpu_us_per_task,
            p50_us: Some(l.start.p50),
            p99_us: Some(l.start.p99),
            backlog_at_end: l.backlog_at_end,
        };
        log(&p);
        points.push(p);
    }
    if s.saturation_tasks > 0 && !late("rate-sweep saturation") {
        let d = drain::run(
            target,
            &DrainSpec {
                label: "sweep".into(),
                ..DrainSpec::plain(1, s.concurrency, BASE_PAYLOAD, s.saturation_tasks, s.records)
            },
        )
        .await?;
        let life = d.fill_redis.plus(&d.drain_redis);
        let p = SweepPoint {
            label: "saturation".into(),
            offered: d.tasks_per_s,
            achieved: d.tasks_per_s,
            tasks: d.tasks,
            commands_per_task: life.commands_per_task,
            calls_per_task: life.calls_per_task.clone(),
            records: s.records,
            redis_cpu_us_per_task: life.cpu_us_per_task,
            worker_cpu_us_per_task: d.worker_cpu_us_per_task,
            p50_us: None,
            p99_us: None,
            backlog_at_end: d.tasks,
        };
        log(&p);
        points.push(p);
    }
    Ok(points)
}

fn log(p: &SweepPoint) {
    let lat = match (p.p50_us, p.p99_us) {
        (Some(a), Some(b)) => format!("; to start p50 {:.3} p99 {:.3} ms", a as f64 / 1e3, b as f64 / 1e3),
        _ => String::new(),
    };
    let mut top: Vec<(&String, &f64)> = p.calls_per_task.iter().filter(|(_, n)| **n >= 0.005).collect();
    top.sort_by(|a, b| b.1.total_cmp(a.1));
    let top: Vec<String> = top.iter().map(|(c, n)| format!("{c} {n:.2}")).collect();
    progress(format_args!(
        "sweep   {:>10} {:>9.0} tasks/s: {:.2} cmds/task, redis {:.2} µs/task, worker {:.2} µs/task{lat}; records {}: {}",
        p.label,
        p.achieved,
        p.commands_per_task,
        p.redis_cpu_us_per_task,
        p.worker_cpu_us_per_task,
        if p.records { "on" } else { "off" },
        top.join(", ")
    ));
}
