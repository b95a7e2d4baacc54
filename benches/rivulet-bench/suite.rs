//! A run of the suite: the plan resolved from the flags, the scenarios in their order (the
//! reference drain and the ceiling back to back, so their ratio sees one machine state), and
//! what is printed and written at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::drain::DrainSpec;
use crate::enqueue::Mode;
use crate::latency::LatencySpec;
use crate::payload::BASE_PAYLOAD;
use crate::report::{RunResult, drain_key};
use crate::results::Output;
use crate::target::Target;
use crate::{ceiling, drain, enqueue, latency, plot, report, results};

/// Every scenario `--only` may name.
const SCENARIOS: [&str; 14] = [
    "drain",
    "ceiling",
    "enqueue",
    "latency",
    "payload",
    "lifecycle",
    "limits",
    "compare",
    "metrics",
    "idle",
    "rate-sweep",
    "many-queues",
    "many-workers",
    "groups",
];

/// The groups scenario: tenant A's backlog, then tenant B's tasks (issue 13: 20,000 then 100).
const GROUPS_A: u64 = 20_000;
const GROUPS_B: u64 = 100;

/// The limits scenario: tasks per run, the rate limit, the concurrency cap. Sized to take a
/// few seconds under the rate and to make most tasks wait at least once.
const LIMITS_TASKS: u64 = 10_000;
const LIMITS_RATE: &str = "noop=5000/s,burst=100";
const LIMITS_CAP: &str = "noop=16";

/// The flags of a suite run.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct RunArgs {
    /// A short pass (under a minute): fewer tasks, fewer configurations, 2 s per rate.
    #[arg(long)]
    quick: bool,
    /// Use this Redis instead of starting a private one (loopback addresses only). Its
    /// keyspace notifications are switched on during latency runs and restored after.
    #[arg(long)]
    redis_url: Option<String>,
    /// Start a private Redis Cluster (3 masters, 3 replicas) instead of one server. On a
    /// cluster (this or a `redis+cluster://` URL) only drain and enqueue run.
    #[arg(long)]
    cluster: bool,
    /// Shards per priority of the drain queues, comma separated (each drain runs once per
    /// value) [default: 1].
    #[arg(long, value_delimiter = ',')]
    shards: Option<Vec<u16>>,
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
    /// lifecycle (the reference drain with task records off, then on), limits (a drain with
    /// no limit, then under a fleet-wide rate limit, then under a concurrency cap), compare
    /// (not by default: the reference drain and a batched enqueue on private setups started
    /// in turn, one node, one node + replica with `replicated:1`, one node over TLS, a 3+3
    /// cluster, with `--shards` on the single node and the cluster; cost per task side by
    /// side), metrics (not by default: the reference drain with worker metrics off, then on),
    /// and, not by default either: idle (idle `worker-cli work` processes serving
    /// --idle-queues queues: Redis commands per second per process), rate-sweep (one worker
    /// at --rate-sweep-rates, then saturation: commands and Redis µs per task against the
    /// rate, plotted), many-queues (one worker process draining a backlog spread over
    /// --many-queues queues x 3 priorities, against the same on 1 queue), many-workers
    /// (--many-workers processes of --many-concurrency slots draining one backlog: rate and
    /// spread of tasks over processes, each beside as many bare-loop processes reading as
    /// many entries at a time, which shows what this machine allows that many processes).
    /// groups (not by default: 20,000 tasks of tenant A then 100 of tenant B, with fair groups
    /// on and off: B's wait p50/p99 and the cost per task).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "drain,ceiling,enqueue,latency,payload,lifecycle,limits"
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
    /// Exit 1 when a measured target is missed (after the tables and files are written), so
    /// a run can gate a change. Targets the run did not measure do not count.
    #[arg(long)]
    check: bool,
    /// The `worker-cli` binary the idle scenario runs [default: next to this binary].
    #[arg(long, env = "RIVULET_WORKER_CLI")]
    worker_cli: Option<PathBuf>,
    /// Queue counts of the idle scenario, comma separated [default: 1,10,50,200; quick: 1,200].
    #[arg(long, value_delimiter = ',')]
    idle_queues: Option<Vec<usize>>,
    /// Idle worker processes per queue count [default: 4, quick: 2].
    #[arg(long)]
    idle_processes: Option<usize>,
    /// Measured seconds per idle queue count [default: 10, quick: 2].
    #[arg(long)]
    idle_seconds: Option<f64>,
    /// Offered rates (tasks/s) of the rate sweep, comma separated; saturation (a drain of
    /// --tasks / 4) follows [default: 10,100,1000,2000,10000].
    #[arg(long, value_delimiter = ',')]
    rate_sweep_rates: Option<Vec<u64>>,
    /// Measured seconds per rate of the rate sweep [default: 5, quick: 1.5].
    #[arg(long)]
    rate_sweep_seconds: Option<f64>,
    /// Run the rate sweep (its rates and its saturation drain) with task records off
    /// (retention 0 on the producer and the worker) instead of on, the default.
    #[arg(long)]
    rate_sweep_records_off: bool,
    /// Queues of the many-queues scenario (each with 3 priorities) [default: 200].
    #[arg(long, default_value_t = 200)]
    many_queues: usize,
    /// Worker process counts of the many-workers scenario, comma separated [default:
    /// 4,16,64; quick: 2,4].
    #[arg(long, value_delimiter = ',')]
    many_workers: Option<Vec<usize>>,
    /// Handler slots of each many-workers process.
    #[arg(long, default_value_t = 16)]
    many_concurrency: usize,
    /// Backlog of each many-queues and many-workers drain [default: 100000, quick: 6000].
    #[arg(long)]
    many_tasks: Option<u64>,
    /// What enqueues and settles wait for: `fast`, `replicated:N` (the private server then
    /// gets N replicas, so the cost includes replication) or `fsync` (Redis 7.2+). Run the
    /// suite once per setting to compare their drain and enqueue cost.
    #[arg(long, default_value = "fast")]
    durability: String,
}

/// The resolved plan of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub tasks: u64,
    pub workers: Vec<usize>,
    pub concurrency: usize,
    pub sweep: Vec<usize>,
    pub rates: Vec<u64>,
    pub seconds: f64,
    pub warmup: f64,
    pub latency_concurrency: usize,
    pub payloads: Vec<usize>,
    pub done_probe: bool,
    pub shards: Vec<u16>,
    pub idle_queues: Vec<usize>,
    pub idle_processes: usize,
    pub idle_seconds: f64,
    pub idle_warmup: f64,
    pub sweep_rates: Vec<u64>,
    pub sweep_seconds: f64,
    pub sweep_saturation_tasks: u64,
    pub many_queues: usize,
    pub many_workers: Vec<usize>,
    pub many_concurrency: usize,
    pub many_tasks: u64,
}

impl RunArgs {
    /// The plan: the flags with the defaults (full or `--quick`) filled in.
    pub fn plan(&self) -> Plan {
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
            shards: self.shards.clone().unwrap_or(vec![1]),
            idle_queues: self
                .idle_queues
                .clone()
                .unwrap_or(if q { vec![1, 200] } else { vec![1, 10, 50, 200] }),
            idle_processes: self.idle_processes.unwrap_or(if q { 2 } else { 4 }),
            idle_seconds: self.idle_seconds.unwrap_or(if q { 2.0 } else { 10.0 }),
            idle_warmup: if q { 1.0 } else { 3.0 },
            sweep_rates: self
                .rate_sweep_rates
                .clone()
                .unwrap_or(vec![10, 100, 1_000, 2_000, 10_000]),
            sweep_seconds: self.rate_sweep_seconds.unwrap_or(if q { 1.5 } else { 5.0 }),
            sweep_saturation_tasks: self.tasks.unwrap_or(if q { 50_000 } else { 200_000 }) / 4,
            many_queues: self.many_queues,
            many_workers: self
                .many_workers
                .clone()
                .unwrap_or(if q { vec![2, 4] } else { vec![4, 16, 64] }),
            many_concurrency: self.many_concurrency,
            many_tasks: self.many_tasks.unwrap_or(if q { 6_000 } else { 100_000 }),
        }
    }

    /// Refuses flags no run can honour (bad usage: `main` exits 2).
    pub fn validate(&self) -> Result<()> {
        for s in &self.only {
            if !SCENARIOS.contains(&s.as_str()) {
                bail!("unknown scenario {s:?} ({})", SCENARIOS.join(", "));
            }
        }
        if self.runs == 0 || self.runs > 20 {
            bail!("--runs must be 1..=20");
        }
        let plan = self.plan();
        if !(1..=64).contains(&plan.idle_processes) || plan.idle_queues.iter().any(|&q| !(1..=1000).contains(&q)) {
            bail!("--idle-processes must be 1..=64 and every --idle-queues 1..=1000");
        }
        if !(1..=1000).contains(&plan.many_queues)
            || plan.many_workers.iter().any(|&w| !(1..=128).contains(&w))
            || plan.many_concurrency == 0
            || plan.many_tasks == 0
        {
            bail!(
                "--many-queues must be 1..=1000, every --many-workers 1..=128, --many-concurrency and --many-tasks at least 1"
            );
        }
        if plan.sweep_rates.contains(&0) || !(plan.sweep_seconds > 0.0 && plan.idle_seconds > 0.0) {
            bail!("--rate-sweep-rates must be positive, --rate-sweep-seconds and --idle-seconds above 0");
        }
        Ok(())
    }

    /// Whether `--only` selects `scenario`.
    pub fn wants(&self, scenario: &str) -> bool {
        self.only.iter().any(|s| s == scenario)
    }
}

/// A progress line on stderr (stdout carries the tables).
pub fn progress(msg: impl std::fmt::Display) {
    eprintln!("[rivulet-bench] {msg}");
}

/// Runs the suite `args.runs` times, prints the tables and writes results, report and plots.
pub async fn run(args: RunArgs) -> Result<()> {
    args.validate()?;
    let plan = args.plan();
    let started = Instant::now();
    let stamp = results::utc_stamp(SystemTime::now());
    let dir = args.out.join(&stamp);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let durability: rivulet::Durability = args.durability.parse()?;
    let target = Target::open(args.redis_url.as_deref(), args.cluster, durability).await?;
    let mut args = args;
    if target.cluster {
        // The bare loop and the latency probes use one node's connection and keyspace events.
        args.only.retain(|s| s == "drain" || s == "enqueue" || s == "compare");
        progress("on a cluster: only drain and enqueue run; Redis CPU and commands are summed over every master");
    }
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
    let mut checks = report::targets(&summary, &reference);
    // The scale targets only when their scenarios ran (they are not in the default set).
    checks.extend(report::scale_targets(&summary).into_iter().filter(|c| c.met.is_some()));

    let mut text = report::tables(plan.latency_concurrency, &summary, &checks, &reference);
    for r in &runs {
        text.push_str(&crate::compare::table(&r.compare));
    }
    println!("{text}");

    let mut files = Vec::new();
    if !args.no_plots {
        match plot::figures(
            &dir,
            args.font.as_deref(),
            &plan.workers,
            plan.concurrency,
            &runs,
            &summary,
        ) {
            Ok(mut f) => files.append(&mut f),
            Err(e) => progress(format_args!("no plots: {e:#}")),
        }
    }
    let json = Output {
        schema: 1,
        started_at: stamp.clone(),
        seconds: started.elapsed().as_secs_f64(),
        machine: results::machine(&target.version),
        args: args.clone(),
        plan,
        runs,
        summary,
        targets: checks,
    };
    files.insert(0, results::write(&dir, &json, &text)?);
    progress(format_args!("done in {:.0} s; wrote:", started.elapsed().as_secs_f64()));
    for f in files {
        progress(format_args!("  {}", f.display()));
    }
    if args.check {
        let missed = report::missed(&json.targets);
        if !missed.is_empty() {
            bail!(
                "--check: {} target(s) missed: {}",
                missed.len(),
                missed
                    .iter()
                    .map(|c| format!("{} (measured {}; {})", c.target, c.measured, c.note))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        progress("--check: every measured target met");
    }
    Ok(())
}

/// One pass over every selected scenario.
async fn one_run(target: &Target, args: &RunArgs, plan: &Plan, deadline: Instant) -> Result<RunResult> {
    let mut r = RunResult {
        load_before: results::loadavg(),
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
    let configs: Vec<(usize, usize, u16)> = configs
        .into_iter()
        .flat_map(|(w, c)| plan.shards.iter().map(move |&n| (w, c, n)))
        .collect();
    for (i, (workers, concurrency, shards)) in configs.into_iter().enumerate() {
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
            shards,
            label: String::new(),
            limits: Vec::new(),
            metrics: false,
            queues: 1,
            spread: false,
            pause_first: false,
        };
        let d = drain::run(target, &spec).await?;
        let life = d.fill_redis.plus(&d.drain_redis);
        progress(format_args!(
            "drain   {workers} process(es) x {concurrency}, {shards} shard(s): {:>9.0} tasks/s (fill {:.0}/s; redis {:.2} µs, {:.2} cmds/task; workers {:.2} µs CPU/task)",
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
                shards: 1,
                label: String::new(),
                limits: Vec::new(),
                metrics: false,
                queues: 1,
                spread: false,
                pause_first: false,
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

    // The same small drain three times, back to back: no limit, a rate limit, a cap. Two
    // processes, so the limits are shared between them.
    if args.wants("limits") && !late("limits") {
        let tasks = LIMITS_TASKS.min(plan.tasks);
        for (label, flags) in [
            ("off", vec![]),
            ("rate", vec![format!("--rate-limit={LIMITS_RATE}")]),
            ("cap", vec![format!("--max-running={LIMITS_CAP}")]),
        ] {
            let spec = DrainSpec {
                label: label.to_owned(),
                limits: flags,
                ..DrainSpec::plain(2, 64, BASE_PAYLOAD, tasks, false)
            };
            target.drop_limit(crate::payload::KIND_NOOP).await?;
            let d = drain::run(target, &spec).await?;
            let life = d.fill_redis.plus(&d.drain_redis);
            progress(format_args!(
                "limits  {label:<4} {}: {:>8.0} tasks/s; redis {:.2} µs, {:.2} cmds/task ({:.2} top-level); {:.2} waits/task",
                d.limits.join(" "),
                d.tasks_per_s,
                life.cpu_us_per_task,
                life.commands_per_task,
                life.top_level_per_task,
                d.waited as f64 / tasks as f64,
            ));
            r.limits.push(d);
        }
    }

    // Fair groups on and off, back to back: B's wait behind A's backlog, and the cost.
    if args.wants("groups") && !late("groups") {
        let a = GROUPS_A.min(plan.tasks.max(GROUPS_B));
        for grouped in [true, false] {
            let g = crate::groups::run(target, grouped, a, GROUPS_B, plan.concurrency).await?;
            progress(format_args!(
                "groups  {:<3}: B's wait p50 {:.1} ms, p99 {:.1} ms ({:.0} task starts) behind A's {a}; {:>8.0} tasks/s; redis {:.2} µs, {:.2} cmds/task ({:.2} top-level)",
                if grouped { "on" } else { "off" },
                g.b_wait_p50_us / 1e3,
                g.b_wait_p99_us / 1e3,
                g.b_wait_p99_starts,
                g.tasks_per_s,
                g.redis.cpu_us_per_task,
                g.redis.commands_per_task,
                g.redis.top_level_per_task,
            ));
            r.groups.push(g);
        }
    }

    // Worker metrics off and on, back to back on the reference configuration: the cost per
    // task in worker CPU (Redis commands must not change: the metrics live in the process).
    if args.wants("metrics") && !late("metrics") {
        let mut pair = Vec::new();
        for metrics in [false, true] {
            let spec = DrainSpec {
                workers: 1,
                concurrency: plan.concurrency,
                payload_bytes: BASE_PAYLOAD,
                tasks: plan.tasks,
                lifecycle: true,
                shards: 1,
                metrics,
                label: String::new(),
                limits: Vec::new(),
                queues: 1,
                spread: false,
                pause_first: false,
            };
            let d = drain::run(target, &spec).await?;
            progress(format_args!(
                "drain   metrics {}: {:>9.0} tasks/s (drain redis {:.2} µs {:.2} cmds/task; workers {:.2} µs CPU/task)",
                if metrics { "on " } else { "off" },
                d.tasks_per_s,
                d.drain_redis.cpu_us_per_task,
                d.drain_redis.commands_per_task,
                d.worker_cpu_us_per_task,
            ));
            pair.push(d);
        }
        progress(format_args!(
            "drain   metrics on - off: {:+.2} µs worker CPU/task, {:+.3} Redis cmds/task",
            pair[1].worker_cpu_us_per_task - pair[0].worker_cpu_us_per_task,
            pair[1].drain_redis.commands_per_task - pair[0].drain_redis.commands_per_task,
        ));
        r.metrics = pair;
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
                shards: 1,
                label: String::new(),
                limits: Vec::new(),
                metrics: false,
                queues: 1,
                spread: false,
                pause_first: false,
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
    if args.wants("idle") {
        let worker_cli = crate::idle::locate_worker_cli(args.worker_cli.as_deref())?;
        for &queues in &plan.idle_queues {
            if late("idle") {
                break;
            }
            let spec = crate::idle::IdleSpec {
                queues,
                processes: plan.idle_processes,
                warmup: plan.idle_warmup,
                seconds: plan.idle_seconds,
                worker_cli: worker_cli.clone(),
            };
            let i = crate::idle::run(target, &spec).await?;
            let mut top: Vec<(&String, &f64)> = i.per_command.iter().collect();
            top.sort_by(|a, b| b.1.total_cmp(a.1));
            progress(format_args!(
                "idle    {queues:>4} queue(s) x {} priorities, {} process(es): {:.1} commands/s per process ({}); redis {:.0} µs/s, worker {:.0} µs/s per process",
                i.priorities,
                i.processes,
                i.commands_per_s_per_process,
                top.iter()
                    .take(4)
                    .map(|(c, n)| format!("{c} {n:.1}/s"))
                    .collect::<Vec<_>>()
                    .join(", "),
                i.redis_cpu_us_per_s,
                i.worker_cpu_us_per_s_per_process,
            ));
            r.idle.push(i);
        }
    }

    if args.wants("rate-sweep") && !late("rate-sweep") {
        let spec = crate::sweep::SweepSpec {
            rates: plan.sweep_rates.clone(),
            seconds: plan.sweep_seconds,
            warmup: plan.warmup,
            concurrency: plan.latency_concurrency,
            saturation_tasks: plan.sweep_saturation_tasks,
            records: !args.rate_sweep_records_off,
        };
        r.rate_sweep = crate::sweep::run(target, &spec, late).await?;
    }

    if args.wants("many-queues") && !late("many-queues") {
        // One queue with every task at its default priority (the reference drain's shape), then
        // the backlog spread over one queue's priorities, then over many queues' (the ratio).
        for (queues, spread) in [(1, false), (1, true), (plan.many_queues, true)] {
            let spec = DrainSpec {
                label: "mq".into(),
                queues,
                spread,
                ..DrainSpec::plain(1, plan.concurrency, BASE_PAYLOAD, plan.many_tasks, true)
            };
            let d = drain::run(target, &spec).await?;
            progress(format_args!(
                "many-q  {queues:>4} queue(s), {}, 1 process x {}: {:>9.0} tasks/s (drain redis {:.2} µs, {:.2} cmds/task; worker {:.2} µs CPU/task)",
                if spread {
                    "spread over 3 priorities"
                } else {
                    "default priority"
                },
                plan.concurrency,
                d.tasks_per_s,
                d.drain_redis.cpu_us_per_task,
                d.drain_redis.commands_per_task,
                d.worker_cpu_us_per_task,
            ));
            r.many_queues.push(d);
        }
        if let [_, one, many] = &r.many_queues[..] {
            progress(format_args!(
                "many-q  {} queues / 1 queue: {:.0} %",
                many.queues,
                100.0 * many.tasks_per_s / one.tasks_per_s.max(1e-9)
            ));
        }
    }

    if args.wants("many-workers") {
        for &workers in &plan.many_workers {
            if late("many-workers") {
                break;
            }
            let spec = DrainSpec {
                label: "mw".into(),
                pause_first: true,
                ..DrainSpec::plain(workers, plan.many_concurrency, BASE_PAYLOAD, plan.many_tasks, true)
            };
            let d = drain::run(target, &spec).await?;
            let spread = crate::report::spread_of(&d.per_process_started);
            progress(format_args!(
                "many-w  {workers:>3} processes x {}: {:>9.0} tasks/s; tasks per process min {:.0} median {:.0} max {:.0}; drain redis {:.2} µs, {:.2} cmds/task",
                plan.many_concurrency,
                d.tasks_per_s,
                spread.min,
                spread.median,
                spread.max,
                d.drain_redis.cpu_us_per_task,
                d.drain_redis.commands_per_task,
            ));
            let rivulet_per_s = d.tasks_per_s;
            r.many_workers.push(d);
            // The same backlog through as many bare-loop processes: what this machine allows
            // that many processes, so the ratio above can be read against it.
            let b =
                crate::bare_fleet::run(target, workers, plan.many_concurrency, plan.many_tasks, BASE_PAYLOAD).await?;
            progress(format_args!(
                "many-w  {workers:>3} bare processes x {}: {:>9.0} entries/s (Rivulet {:.0} % of it); redis {:.2} µs, {:.3} cmds/entry; client {:.2} µs CPU/entry",
                b.count,
                b.drain_per_s,
                100.0 * rivulet_per_s / b.drain_per_s.max(1e-9),
                b.drain_redis.cpu_us_per_task,
                b.drain_redis.commands_per_task,
                b.client_cpu_us_per_entry,
            ));
            r.many_workers_bare.push(b);
        }
    }

    if args.wants("compare") && !late("compare") {
        r.compare = crate::compare::run(plan, args.quick).await?;
    }
    r.load_after = results::loadavg();
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
        records: true,
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
