//! `rivulet-bench`: end-to-end throughput and latency of Rivulet on one machine, next to what
//! Redis itself allows on the same machine in the same run.
//!
//! ```text
//! cargo run --release -p rivulet-suite --bin rivulet-bench -- [--quick] [--runs 3]
//! ```
//!
//! It starts a private `redis-server` (unless `--redis-url`, loopback only) and measures:
//! - `drain`: a pre-filled backlog emptied by 1, 2, 4 worker processes (this binary re-executed
//!   with the hidden `worker` subcommand), plus a concurrency sweep with one process;
//! - `ceiling`: a bare batched XADD / XREADGROUP / XACK+XDEL loop with plain redis-rs;
//! - `enqueue`: `Client::enqueue` one at a time, 64 concurrent callers, `enqueue_many` batches;
//! - `latency`: an open-loop producer at fixed rates, enqueue-to-start and enqueue-to-done
//!   percentiles from HdrHistogram;
//! - `payload`: drain, enqueue and latency with 1 KiB and 64 KiB payloads (64 B elsewhere);
//! - Redis CPU (`INFO cpu`) and commands (`INFO commandstats`) per task in every window.
//!
//! Output: tables on stdout, JSON and plots (SVG, PNG) in `bench-results/<timestamp>/`.
//! Progress goes to stderr. `docs/benchmarks.md` explains the method and the results.
//!
//! # Layout
//! - `target`: the Redis under test, INFO snapshots and per-task usage;
//! - `fleet` / `worker`: worker processes, parent side and child side;
//! - `drain`, `ceiling`, `enqueue`, `latency`: the scenarios;
//! - `payload`: the timestamped task payload; `stats`: histograms and medians;
//! - `report`: metrics, targets and tables; `plot`: the figures.

mod ceiling;
mod drain;
mod enqueue;
mod fleet;
mod latency;
mod payload;
mod plot;
mod report;
mod stats;
mod target;
mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::drain::DrainSpec;
use crate::enqueue::Mode;
use crate::latency::LatencySpec;
use crate::report::{Check, RunResult, Table, Unit, drain_key, fmt_spread, latency_key};
use crate::stats::Spread;
use crate::target::Target;

/// End-to-end benchmarks of Rivulet against a private redis-server on this machine.
#[derive(Debug, Parser)]
#[command(name = "rivulet-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One worker process of a run (started by the harness itself).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

#[derive(Debug, Clone, clap::Args, Serialize)]
struct RunArgs {
    /// A short pass (under a minute): fewer tasks, fewer configurations, 2 s per rate.
    #[arg(long)]
    quick: bool,
    /// Use this Redis instead of starting a private one (loopback addresses only). Its
    /// keyspace notifications are switched on during latency runs and restored after.
    #[arg(long)]
    redis_url: Option<String>,
    /// Repeat the whole suite this many times; the report gives medians with min–max.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Backlog size of each drain [default: 200000, quick: 50000].
    #[arg(long)]
    tasks: Option<u64>,
    /// Worker processes to drain with, comma separated [default: 1,2,4; quick: 1,2].
    #[arg(long, value_delimiter = ',')]
    workers: Option<Vec<usize>>,
    /// Handler slots per worker process in every run but the sweep (1024 drained fastest
    /// here: see docs/benchmarks.md).
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// Other concurrencies to drain with one worker process [default: 64,256; quick: none].
    #[arg(long, value_delimiter = ',')]
    sweep: Option<Vec<usize>>,
    /// Fixed producer rates (tasks/s) of the latency runs, comma separated; 50 % and 80 % of
    /// the measured one-process drain rate are added [default: 1000,2000,10000].
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u64>>,
    /// Measured seconds per latency run [default: 10, quick: 2].
    #[arg(long)]
    seconds: Option<f64>,
    /// Handler slots of the latency runs' worker process [default: --concurrency, so the
    /// 80 % rate is 80 % of what that worker drains].
    #[arg(long)]
    latency_concurrency: Option<usize>,
    /// Bare-loop batch (XREADGROUP COUNT and XADD pipeline size).
    #[arg(long, default_value_t = 1000)]
    bare_batch: usize,
    /// Consumers of the bare loop that one worker process is compared with (the target's
    /// ceiling): one worker process is one consumer.
    #[arg(long, default_value_t = 1)]
    bare_consumers: usize,
    /// Consumers of the second bare loop, run in parallel: what Redis allows on this machine
    /// with several consumers, reported beside the first (0 skips it).
    #[arg(long, default_value_t = 2)]
    bare_consumers_wide: usize,
    /// Scenarios to run, comma separated: drain, ceiling, enqueue, latency, payload,
    /// lifecycle (the reference drain with task records off, then on).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "drain,ceiling,enqueue,latency,payload,lifecycle"
    )]
    only: Vec<String>,
    /// Skip enqueue-to-done (it needs keyspace notifications).
    #[arg(long)]
    no_done_probe: bool,
    /// Directory for results; each run writes `<dir>/<timestamp>/`.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// TrueType font for the plots' text (a common system font by default).
    #[arg(long)]
    font: Option<PathBuf>,
    /// Skip the plots.
    #[arg(long)]
    no_plots: bool,
    /// Stop starting new scenarios after this many seconds.
    #[arg(long, default_value_t = 1200)]
    max_seconds: u64,
}

/// The resolved plan of a run.
#[derive(Debug, Clone, Serialize)]
struct Plan {
    tasks: u64,
    workers: Vec<usize>,
    concurrency: usize,
    sweep: Vec<usize>,
    rates: Vec<u64>,
    seconds: f64,
    warmup: f64,
    latency_concurrency: usize,
    payloads: Vec<usize>,
    done_probe: bool,
}

const BASE_PAYLOAD: usize = 64;
const DRAIN_TARGET: f64 = 100_000.0;

impl RunArgs {
    fn plan(&self) -> Plan {
        let q = self.quick;
        Plan {
            tasks: self.tasks.unwrap_or(if q { 50_000 } else { 200_000 }),
            workers: self
                .workers
                .clone()
                .unwrap_or(if q { vec![1, 2] } else { vec![1, 2, 4] }),
            concurrency: self.concurrency,
            sweep: self.sweep.clone().unwrap_or(if q { vec![] } else { vec![64, 256] }),
            rates: self.rates.clone().unwrap_or(vec![1_000, 2_000, 10_000]),
            seconds: self.seconds.unwrap_or(if q { 2.0 } else { 10.0 }),
            warmup: if q { 0.5 } else { 1.0 },
            latency_concurrency: self.latency_concurrency.unwrap_or(self.concurrency),
            payloads: vec![1024, 64 * 1024],
            done_probe: !self.no_done_probe,
        }
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.iter().any(|s| s == scenario)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rivulet-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Worker(args)) => runtime.block_on(worker::run(args)),
        None => runtime.block_on(suite(cli.run)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rivulet-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(msg: impl std::fmt::Display) {
    eprintln!("[rivulet-bench] {msg}");
}

async fn suite(args: RunArgs) -> Result<()> {
    for s in &args.only {
        if !["drain", "ceiling", "enqueue", "latency", "payload", "lifecycle"].contains(&s.as_str()) {
            bail!("unknown scenario {s:?} (drain, ceiling, enqueue, latency, payload, lifecycle)");
        }
    }
    if args.runs == 0 || args.runs > 20 {
        bail!("--runs must be 1..=20");
    }
    let plan = args.plan();
    let started = Instant::now();
    let stamp = utc_stamp(SystemTime::now());
    let dir = args.out.join(&stamp);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let target = Target::open(args.redis_url.as_deref()).await?;
    progress(format_args!(
        "redis {} at {} ({}); results in {}",
        target.version,
        target.url,
        if target.private {
            "private server"
        } else {
            "given with --redis-url"
        },
        dir.display()
    ));
    let deadline = started + Duration::from_secs(args.max_seconds);
    let reference = drain_key(1, plan.concurrency, BASE_PAYLOAD);

    let mut runs = Vec::with_capacity(args.runs);
    for run in 0..args.runs {
        progress(format_args!("run {} of {}", run + 1, args.runs));
        let r = one_run(&target, &args, &plan, deadline).await?;
        runs.push(r);
    }
    let metrics: Vec<BTreeMap<String, f64>> = runs.iter().map(|r| r.metrics(&reference)).collect();
    let summary = report::summarise(&metrics);
    let checks = targets(&summary, &reference);

    let text = tables(&plan, &summary, &checks, &reference);
    println!("{text}");

    let mut files = Vec::new();
    if !args.no_plots {
        match draw(&dir, &args, &plan, &runs, &summary) {
            Ok(mut f) => files.append(&mut f),
            Err(e) => progress(format_args!("no plots: {e:#}")),
        }
    }
    let json = Output {
        schema: 1,
        started_at: stamp.clone(),
        seconds: started.elapsed().as_secs_f64(),
        machine: machine(&target.version),
        args: args.clone(),
        plan,
        runs,
        summary,
        targets: checks,
    };
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?).with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(dir.join("report.txt"), &text)?;
    files.insert(0, path);
    progress(format_args!("done in {:.0} s; wrote:", started.elapsed().as_secs_f64()));
    for f in files {
        progress(format_args!("  {}", f.display()));
    }
    Ok(())
}

/// One pass over every selected scenario.
async fn one_run(target: &Target, args: &RunArgs, plan: &Plan, deadline: Instant) -> Result<RunResult> {
    let mut r = RunResult {
        load_before: loadavg(),
        ..RunResult::default()
    };
    let late = |what: &str| {
        let over = Instant::now() > deadline;
        if over {
            progress(format_args!("--max-seconds passed; skipping {what}"));
        }
        over
    };

    // The reference drain (one process, default concurrency) and the ceiling run back to
    // back, so the ratio between them sees the same machine; the other drains follow.
    let mut configs: Vec<(usize, usize)> = Vec::new();
    if args.wants("drain") {
        configs.push((1, plan.concurrency));
        configs.extend(plan.workers.iter().filter(|&&w| w != 1).map(|&w| (w, plan.concurrency)));
        configs.extend(plan.sweep.iter().filter(|&&c| c != plan.concurrency).map(|&c| (1, c)));
    }
    let mut ceiling_done = !args.wants("ceiling");
    for (i, (workers, concurrency)) in configs.into_iter().enumerate() {
        if i == 1 && !ceiling_done {
            (r.ceiling, r.ceiling_wide) = run_ceilings(target, args, plan).await?;
            ceiling_done = true;
        }
        if late("drain") {
            break;
        }
        let spec = DrainSpec {
            workers,
            concurrency,
            payload_bytes: BASE_PAYLOAD,
            tasks: plan.tasks,
            lifecycle: true,
        };
        let d = drain::run(target, &spec).await?;
        let life = d.fill_redis.plus(&d.drain_redis);
        progress(format_args!(
            "drain   {workers} process(es) x {concurrency}: {:>9.0} tasks/s (fill {:.0}/s; redis {:.2} µs, {:.2} cmds/task; workers {:.2} µs CPU/task)",
            d.tasks_per_s, d.fill_tasks_per_s, life.cpu_us_per_task, life.commands_per_task, d.worker_cpu_us_per_task,
        ));
        r.drain.push(d);
    }
    if !ceiling_done && !late("ceiling") {
        (r.ceiling, r.ceiling_wide) = run_ceilings(target, args, plan).await?;
    }

    // Lifecycle tracking off and on, back to back on the reference configuration.
    if args.wants("lifecycle") && !late("lifecycle") {
        let mut pair = Vec::new();
        for lifecycle in [false, true] {
            let spec = DrainSpec {
                workers: 1,
                concurrency: plan.concurrency,
                payload_bytes: BASE_PAYLOAD,
                tasks: plan.tasks,
                lifecycle,
            };
            let d = drain::run(target, &spec).await?;
            progress(format_args!(
                "drain   lifecycle {}: {:>9.0} tasks/s (fill {:.0}/s; fill redis {:.2} µs {:.2} cmds/task; drain redis {:.2} µs {:.2} cmds/task; workers {:.2} µs CPU/task{})",
                if lifecycle { "on " } else { "off" },
                d.tasks_per_s,
                d.fill_tasks_per_s,
                d.fill_redis.cpu_us_per_task,
                d.fill_redis.commands_per_task,
                d.drain_redis.cpu_us_per_task,
                d.drain_redis.commands_per_task,
                d.worker_cpu_us_per_task,
                d.record_bytes
                    .map(|b| format!("; {b:.0} B per retained record"))
                    .unwrap_or_default(),
            ));
            pair.push(d);
        }
        progress(format_args!(
            "drain   lifecycle on / off: {:.0} %",
            100.0 * pair[1].tasks_per_s / pair[0].tasks_per_s.max(1e-9)
        ));
        r.lifecycle = pair;
    }

    if args.wants("enqueue") {
        let n = (plan.tasks / 2).max(1000);
        let limit = Duration::from_secs(if args.quick { 2 } else { 5 });
        let modes = [
            (Mode::Single, n / 10),
            (Mode::Concurrent { callers: 64 }, n / 2),
            (Mode::Batch { size: 10 }, n),
            (Mode::Batch { size: 100 }, n),
            (Mode::Batch { size: 1000 }, n),
        ];
        for (mode, tasks) in modes {
            if late("enqueue") {
                break;
            }
            let e = enqueue::run(target, mode, BASE_PAYLOAD, tasks, limit).await?;
            progress(format_args!(
                "enqueue {:<13} {:>9.0} tasks/s (redis {:.2} µs, {:.2} cmds/task)",
                mode.key(),
                e.tasks_per_s,
                e.redis.cpu_us_per_task,
                e.redis.commands_per_task
            ));
            r.enqueue.push(e);
        }
    }

    if args.wants("latency") {
        let mut rates: Vec<(String, f64)> = plan.rates.iter().map(|&x| (x.to_string(), x as f64)).collect();
        let reference = drain_key(1, plan.concurrency, BASE_PAYLOAD);
        if let Some(d) = r
            .drain
            .iter()
            .find(|d| drain_key(d.workers, d.concurrency, d.payload_bytes) == reference)
        {
            rates.push(("auto50".into(), (0.5 * d.tasks_per_s).round()));
            rates.push(("auto80".into(), (0.8 * d.tasks_per_s).round()));
        }
        for (label, rate) in rates {
            if late("latency") {
                break;
            }
            let l = run_latency(target, plan, &label, rate, BASE_PAYLOAD, plan.seconds).await?;
            r.latency.push(l);
        }
    }

    if args.wants("payload") {
        for &size in &plan.payloads {
            if late("payload") {
                break;
            }
            // Bound the backlog's memory: at most 64 MiB of payload (but at least 2,000 tasks).
            let tasks = plan.tasks.min(((64 << 20) / size as u64).max(2_000));
            let spec = DrainSpec {
                workers: 1,
                concurrency: plan.concurrency,
                payload_bytes: size,
                tasks,
                lifecycle: true,
            };
            let d = drain::run(target, &spec).await?;
            progress(format_args!(
                "drain   payload {size:>6} B: {:>9.0} tasks/s, {:.0} MiB/s",
                d.tasks_per_s,
                d.tasks_per_s * size as f64 / 1_048_576.0
            ));
            r.drain.push(d);
            let e = enqueue::run(target, Mode::Batch { size: 100 }, size, tasks, Duration::from_secs(5)).await?;
            progress(format_args!(
                "enqueue payload {size:>6} B: {:>9.0} tasks/s",
                e.tasks_per_s
            ));
            r.enqueue.push(e);
            let seconds = (plan.seconds / 2.0).max(2.0);
            let l = run_latency(target, plan, "1000", 1000.0, size, seconds).await?;
            r.latency.push(l);
        }
    }
    r.load_after = loadavg();
    Ok(r)
}

/// The bare loop with `--bare-consumers` (the target's ceiling), then with
/// `--bare-consumers-wide` unless that is 0.
async fn run_ceilings(
    target: &Target,
    args: &RunArgs,
    plan: &Plan,
) -> Result<(Option<ceiling::CeilingResult>, Option<ceiling::CeilingResult>)> {
    let one = run_ceiling(target, args, plan, args.bare_consumers).await?;
    let wide = match args.bare_consumers_wide {
        0 => None,
        n => Some(run_ceiling(target, args, plan, n).await?),
    };
    Ok((Some(one), wide))
}

async fn run_ceiling(target: &Target, args: &RunArgs, plan: &Plan, consumers: usize) -> Result<ceiling::CeilingResult> {
    let spec = ceiling::CeilingSpec {
        tasks: plan.tasks,
        batch: args.bare_batch,
        consumers,
        payload_bytes: BASE_PAYLOAD,
    };
    let c = ceiling::run(target, &spec).await?;
    progress(format_args!(
        "ceiling bare loop, {consumers} consumer(s): {:>9.0} entries/s drained, {:.0}/s added (redis {:.2} µs/entry)",
        c.drain_per_s,
        c.xadd_per_s,
        c.fill_redis.cpu_us_per_task + c.drain_redis.cpu_us_per_task
    ));
    Ok(c)
}

async fn run_latency(
    target: &Target,
    plan: &Plan,
    label: &str,
    rate: f64,
    payload_bytes: usize,
    seconds: f64,
) -> Result<latency::LatencyResult> {
    let spec = LatencySpec {
        label: label.to_owned(),
        rate,
        payload_bytes,
        seconds,
        warmup: plan.warmup,
        concurrency: plan.latency_concurrency,
        done_probe: plan.done_probe,
    };
    let l = latency::run(target, &spec).await?;
    let done = l
        .done
        .as_ref()
        .map(|d| {
            format!(
                "; to done p50 {:.3} p99 {:.3} ms",
                d.p50 as f64 / 1e3,
                d.p99 as f64 / 1e3
            )
        })
        .unwrap_or_default();
    progress(format_args!(
        "latency {:>6.0}/s {payload_bytes:>6} B: to start p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms{done}{}",
        l.rate_achieved,
        l.start.p50 as f64 / 1e3,
        l.start.p99 as f64 / 1e3,
        l.start.p999 as f64 / 1e3,
        l.start.max as f64 / 1e3,
        if l.producer_stalls > 0 {
            format!(" (producer stalled {} times)", l.producer_stalls)
        } else {
            String::new()
        }
    ));
    Ok(l)
}

/// The project's targets, checked against the medians.
fn targets(summary: &BTreeMap<String, Spread>, reference: &str) -> Vec<Check> {
    let lat = |label: &str, what: &str| format!("{}.start.{what}", latency_key(label, BASE_PAYLOAD));
    vec![
        report::check(
            summary,
            "drain, 1 worker process ≥ 100,000 tasks/s",
            &format!("{reference}.tasks_per_s"),
            DRAIN_TARGET,
            true,
            Unit::Rate,
        ),
        report::check(
            summary,
            "drain ≥ 70 % of the bare loop, --bare-consumers-wide (2) consumers",
            "drain.reference.vs_ceiling_wide",
            0.70,
            true,
            Unit::Pct,
        ),
        report::check(
            summary,
            "drain ≥ 70 % of the bare loop, --bare-consumers (1) consumer",
            "drain.reference.vs_ceiling",
            0.70,
            true,
            Unit::Pct,
        ),
        report::check(
            summary,
            "enqueue-to-start p50 < 0.5 ms at 2,000/s",
            &lat("2000", "p50"),
            500.0,
            false,
            Unit::Ms,
        ),
        report::check(
            summary,
            "enqueue-to-start p99 < 2 ms at 2,000/s",
            &lat("2000", "p99"),
            2_000.0,
            false,
            Unit::Ms,
        ),
        report::check(
            summary,
            "enqueue-to-start p99 < 5 ms at 10,000/s",
            &lat("10000", "p99"),
            5_000.0,
            false,
            Unit::Ms,
        ),
        report::check(
            summary,
            "Redis CPU ≤ 10 µs per task (enqueue + drain)",
            &format!("{reference}.life_cpu_us"),
            10.0,
            false,
            Unit::Us,
        ),
        report::check(
            summary,
            "≤ 3 Redis commands per task (enqueue + drain, script calls included)",
            &format!("{reference}.life_cmds"),
            3.0,
            false,
            Unit::Count,
        ),
    ]
}

fn tables(plan: &Plan, s: &BTreeMap<String, Spread>, checks: &[Check], reference: &str) -> String {
    let g = |k: String, u: Unit| fmt_spread(s.get(&k), u);
    let runs = s.values().map(|v| v.runs).max().unwrap_or(1);
    let mut out = String::new();
    if runs > 1 {
        out.push_str(&format!("\nMedians of {runs} runs, (min–max) beside them.\n"));
    }

    let mut t = Table::new(
        "Drain (no-op tasks, pre-filled backlog)",
        &[
            "processes x slots",
            "payload",
            "tasks/s",
            "Redis µs/task",
            "cmds/task",
            "top-level/task",
            "worker CPU µs/task",
            "fill tasks/s",
        ],
    );
    let mut keys: Vec<(usize, usize, usize)> = Vec::new();
    for k in s.keys() {
        if let Some(rest) = k.strip_prefix("drain.w")
            && let Some(base) = rest.strip_suffix(".tasks_per_s")
        {
            let parts: Vec<&str> = base.split(['.', 'c', 'p']).filter(|p| !p.is_empty()).collect();
            if let [w, c, p] = parts[..]
                && let (Ok(w), Ok(c), Ok(p)) = (w.parse(), c.parse(), p.parse())
            {
                keys.push((p, w, c));
            }
        }
    }
    keys.sort();
    for (p, w, c) in keys {
        let k = drain_key(w, c, p);
        t.row(vec![
            format!("{w} x {c}"),
            bytes_label(p),
            g(format!("{k}.tasks_per_s"), Unit::Rate),
            g(format!("{k}.drain_cpu_us"), Unit::Us),
            g(format!("{k}.drain_cmds"), Unit::Count),
            g(format!("{k}.drain_top"), Unit::Count),
            g(format!("{k}.worker_cpu_us"), Unit::Us),
            g(format!("{k}.fill_tasks_per_s"), Unit::Rate),
        ]);
    }
    if !t.is_empty() {
        out.push_str(&t.render());
    }

    let mut t = Table::new(
        "Ceiling: bare redis-rs loop on the same Redis",
        &[
            "what",
            "entries/s",
            "Redis µs/entry",
            "client CPU µs/entry",
            "engine vs ceiling",
        ],
    );
    if s.contains_key("ceiling.drain_per_s") {
        t.row(vec![
            format!(
                "XREADGROUP + XACK + XDEL, {} consumer(s)",
                g("ceiling.consumers".into(), Unit::Rate)
            ),
            g("ceiling.drain_per_s".into(), Unit::Rate),
            g("ceiling.drain_cpu_us".into(), Unit::Us),
            g("ceiling.client_cpu_us".into(), Unit::Us),
            g("drain.reference.vs_ceiling".into(), Unit::Pct),
        ]);
        if s.contains_key("ceiling_wide.drain_per_s") {
            t.row(vec![
                format!(
                    "XREADGROUP + XACK + XDEL, {} consumers",
                    g("ceiling_wide.consumers".into(), Unit::Rate)
                ),
                g("ceiling_wide.drain_per_s".into(), Unit::Rate),
                g("ceiling_wide.drain_cpu_us".into(), Unit::Us),
                g("ceiling_wide.client_cpu_us".into(), Unit::Us),
                g("drain.reference.vs_ceiling_wide".into(), Unit::Pct),
            ]);
        }
        t.row(vec![
            "XADD (pipelined)".into(),
            g("ceiling.xadd_per_s".into(), Unit::Rate),
            g("ceiling.fill_cpu_us".into(), Unit::Us),
            String::new(),
            String::new(),
        ]);
        t.row(vec![
            "whole lifecycle (Redis CPU)".into(),
            String::new(),
            g("ceiling.life_cpu_us".into(), Unit::Us),
            String::new(),
            format!(
                "engine: {}x the bare loop's Redis CPU",
                g("drain.reference.cpu_vs_ceiling".into(), Unit::Count)
            ),
        ]);
        out.push_str(&t.render());
    }

    let mut t = Table::new(
        "Enqueue (no worker running)",
        &["mode", "payload", "tasks/s", "Redis µs/task", "cmds/task"],
    );
    for k in s.keys() {
        if let Some(rest) = k.strip_prefix("enqueue.")
            && let Some(base) = rest.strip_suffix(".tasks_per_s")
            && let Some((mode, p)) = base.rsplit_once(".p")
        {
            let p: usize = p.parse().unwrap_or(0);
            t.row(vec![
                mode.to_owned(),
                bytes_label(p),
                g(format!("enqueue.{base}.tasks_per_s"), Unit::Rate),
                g(format!("enqueue.{base}.cpu_us"), Unit::Us),
                g(format!("enqueue.{base}.cmds"), Unit::Count),
            ]);
        }
    }
    if !t.is_empty() {
        out.push_str(&t.render());
    }

    for (title, what) in [
        ("Latency: enqueue-to-start (ms)", "start"),
        ("Latency: enqueue-to-done (ms)", "done"),
    ] {
        let mut t = Table::new(
            &format!("{title}, 1 worker process x {} slots", plan.latency_concurrency),
            &["rate", "payload", "achieved/s", "p50", "p90", "p99", "p99.9", "max"],
        );
        let mut rows: Vec<(usize, f64, String, String)> = Vec::new();
        for k in s.keys() {
            if let Some(rest) = k.strip_prefix("latency.")
                && let Some(base) = rest.strip_suffix(&format!(".{what}.p50"))
                && let Some((label, p)) = base.rsplit_once(".p")
            {
                let rate = s.get(&format!("latency.{base}.rate")).map_or(0.0, |r| r.median);
                rows.push((p.parse().unwrap_or(0), rate, label.to_owned(), base.to_owned()));
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for (p, _, label, base) in rows {
            let name = match auto_share(&label) {
                Some(pct) => format!("{pct} % of drain"),
                None => format!("{label}/s"),
            };
            let mut row = vec![name, bytes_label(p), g(format!("latency.{base}.rate"), Unit::Rate)];
            for q in ["p50", "p90", "p99", "p999", "max"] {
                row.push(g(format!("latency.{base}.{what}.{q}"), Unit::Ms));
            }
            t.row(row);
        }
        if !t.is_empty() {
            out.push_str(&t.render());
        }
    }

    let mut t = Table::new(
        "Redis cost per task during the latency runs (producer + worker)",
        &[
            "rate",
            "payload",
            "Redis µs/task",
            "cmds/task",
            "top-level/task",
            "worker CPU µs/task",
            "producer CPU µs/task",
            "producer stalls",
            "backlog at end",
        ],
    );
    for k in s.keys() {
        if let Some(rest) = k.strip_prefix("latency.")
            && let Some(base) = rest.strip_suffix(".cpu_us")
            && let Some((label, p)) = base.rsplit_once(".p")
        {
            t.row(vec![
                label.to_owned(),
                bytes_label(p.parse().unwrap_or(0)),
                g(format!("latency.{base}.cpu_us"), Unit::Us),
                g(format!("latency.{base}.cmds"), Unit::Count),
                g(format!("latency.{base}.top"), Unit::Count),
                g(format!("latency.{base}.worker_cpu_us"), Unit::Us),
                g(format!("latency.{base}.producer_cpu_us"), Unit::Us),
                g(format!("latency.{base}.stalls"), Unit::Count),
                g(format!("latency.{base}.backlog"), Unit::Rate),
            ]);
        }
    }
    if !t.is_empty() {
        out.push_str(&t.render());
    }

    let mut t = Table::new(
        &format!("Targets (reference drain: {reference})"),
        &["target", "measured", "met", "note"],
    );
    for c in checks {
        let met = match c.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        t.row(vec![c.target.clone(), c.measured.clone(), met.into(), c.note.clone()]);
    }
    out.push_str(&t.render());
    out
}

/// `Some(50)` for the rate label `auto50` (a share of the measured drain rate).
fn auto_share(label: &str) -> Option<u32> {
    label.strip_prefix("auto").and_then(|p| p.parse().ok())
}

fn bytes_label(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

/// Plots from the medians (throughput) and, per rate, from the run whose p99 is the median.
fn draw(
    dir: &Path,
    args: &RunArgs,
    plan: &Plan,
    runs: &[RunResult],
    summary: &BTreeMap<String, Spread>,
) -> Result<Vec<PathBuf>> {
    let font = plot::load_font(args.font.as_deref())?;
    progress(format_args!("plots use the font {}", font.display()));
    let mut files = Vec::new();

    let mut labels: Vec<(f64, String)> = Vec::new();
    for r in runs {
        for l in r.latency.iter().filter(|l| l.payload_bytes == BASE_PAYLOAD) {
            if !labels.iter().any(|(_, x)| *x == l.label) {
                labels.push((l.rate_target, l.label.clone()));
            }
        }
    }
    labels.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut series = Vec::new();
    for (_, label) in labels {
        let mut of_label: Vec<&latency::LatencyResult> = runs
            .iter()
            .flat_map(|r| &r.latency)
            .filter(|l| l.label == label && l.payload_bytes == BASE_PAYLOAD)
            .collect();
        of_label.sort_by_key(|l| l.start.p99);
        let mid = of_label[of_label.len() / 2];
        let rate = summary
            .get(&format!("{}.rate", latency_key(&label, BASE_PAYLOAD)))
            .map_or(mid.rate_achieved, |s| s.median);
        let name = match auto_share(&label) {
            Some(pct) => format!("{}/s ({pct} % of drain)", report::fmt_value(rate, Unit::Rate)),
            None => format!("{}/s", report::fmt_value(mid.rate_target, Unit::Rate)),
        };
        series.push(plot::CdfSeries {
            label: name,
            start: mid.start.cdf.clone(),
            done: mid.done.as_ref().map(|d| d.cdf.clone()),
        });
    }
    if !series.is_empty() {
        files.extend(plot::latency_cdf(dir, &series)?);
    }

    let points: Vec<(usize, Spread)> = plan
        .workers
        .iter()
        .filter_map(|&w| {
            summary
                .get(&format!("{}.tasks_per_s", drain_key(w, plan.concurrency, BASE_PAYLOAD)))
                .map(|s| (w, *s))
        })
        .collect();
    if !points.is_empty() {
        files.extend(plot::throughput(
            dir,
            &points,
            // The machine's ceiling (several consumers) when it was measured.
            summary
                .get("ceiling_wide.drain_per_s")
                .or(summary.get("ceiling.drain_per_s"))
                .copied(),
            DRAIN_TARGET,
        )?);
    }
    Ok(files)
}

#[derive(Serialize)]
struct Output {
    schema: u32,
    started_at: String,
    seconds: f64,
    machine: Machine,
    args: RunArgs,
    plan: Plan,
    runs: Vec<RunResult>,
    summary: BTreeMap<String, Spread>,
    targets: Vec<Check>,
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    redis_version: String,
    rivulet_commit: String,
}

fn machine(redis_version: &str) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        redis_version: redis_version.to_owned(),
        rivulet_commit: commit,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `YYYYMMDD-HHMMSS` in UTC, without a date library.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101-000000");
        // 2024-02-29 12:34:56 UTC.
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "20240229-123456"
        );
    }

    #[test]
    fn the_cli_parses_and_plans() {
        let cli = Cli::try_parse_from(["rivulet-bench", "--quick", "--only", "drain,latency"]).unwrap();
        assert!(cli.command.is_none());
        let plan = cli.run.plan();
        assert_eq!(plan.tasks, 50_000);
        assert_eq!(plan.workers, [1, 2]);
        assert!(cli.run.wants("latency") && !cli.run.wants("ceiling"));
        let w = Cli::try_parse_from([
            "rivulet-bench",
            "worker",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--queue",
            "q",
            "--concurrency",
            "8",
        ])
        .unwrap();
        assert!(matches!(w.command, Some(Command::Worker(_))));
    }
}
