//! The results of a run: flattened into named metrics, summarised over repeated runs
//! (median, min, max), checked against the project's targets, printed as tables and written
//! as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::ceiling::CeilingResult;
use crate::drain::DrainResult;
use crate::enqueue::EnqueueResult;
use crate::latency::LatencyResult;
use crate::payload::BASE_PAYLOAD;
use crate::stats::Spread;

/// Everything one pass of the suite measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    pub drain: Vec<DrainResult>,
    /// The reference drain with lifecycle tracking off, then on (the `lifecycle` scenario).
    pub lifecycle: Vec<DrainResult>,
    /// The same small drain with no limit, a rate limit and a cap (the `limits` scenario).
    pub limits: Vec<DrainResult>,
    /// The reference drain with worker metrics off, then on (the `metrics` scenario).
    pub metrics: Vec<DrainResult>,
    /// Tenant A's backlog then tenant B's tasks, with fair groups on and off (`groups`).
    pub groups: Vec<crate::groups::GroupsResult>,
    /// The bare loop with one consumer: what one worker process is compared with.
    pub ceiling: Option<CeilingResult>,
    /// The bare loop with several consumers in parallel: what Redis allows on this machine.
    pub ceiling_wide: Option<CeilingResult>,
    pub enqueue: Vec<EnqueueResult>,
    pub latency: Vec<LatencyResult>,
    /// `--only compare`: one node, with a replica, over TLS, a cluster (see `compare`).
    pub compare: Vec<crate::compare::CompareRow>,
    /// `--only idle`: idle worker-cli processes, one entry per queue count.
    pub idle: Vec<crate::idle::IdleResult>,
    /// `--only rate-sweep`: one point per offered rate, then saturation.
    pub rate_sweep: Vec<crate::sweep::SweepPoint>,
    /// `--only many-queues`: one worker process on 1 queue, then on `--many-queues` queues.
    pub many_queues: Vec<DrainResult>,
    /// `--only many-workers`: one drain per worker process count.
    pub many_workers: Vec<DrainResult>,
    /// Beside each many-workers drain: as many bare-loop processes on the same backlog size.
    pub many_workers_bare: Vec<crate::bare_fleet::BareFleetResult>,
    /// `/proc/loadavg` before and after the pass: how busy the machine was.
    pub load_before: String,
    pub load_after: String,
}

/// Keys shared by the flattening, the tables and the targets.
pub fn drain_key(workers: usize, concurrency: usize, payload: usize) -> String {
    format!("drain.w{workers}.c{concurrency}.p{payload}")
}

pub fn latency_key(label: &str, payload: usize) -> String {
    format!("latency.{label}.p{payload}")
}

impl RunResult {
    /// The run's numbers by name; `reference` is the drain key the ceiling ratio and the
    /// per-task Redis costs refer to (one worker process, default concurrency, 64 B).
    pub fn metrics(&self, reference: &str) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        let mut put = |k: String, v: f64| {
            m.insert(k, v);
        };
        for d in &self.drain {
            let k = drain_key(d.workers, d.concurrency, d.payload_bytes);
            put(format!("{k}.tasks_per_s"), d.tasks_per_s);
            put(
                format!("{k}.mib_per_s"),
                d.tasks_per_s * d.payload_bytes as f64 / 1_048_576.0,
            );
            put(format!("{k}.fill_tasks_per_s"), d.fill_tasks_per_s);
            put(format!("{k}.drain_cpu_us"), d.drain_redis.cpu_us_per_task);
            put(format!("{k}.drain_cmds"), d.drain_redis.commands_per_task);
            put(format!("{k}.drain_top"), d.drain_redis.top_level_per_task);
            put(format!("{k}.fill_cpu_us"), d.fill_redis.cpu_us_per_task);
            put(format!("{k}.worker_cpu_us"), d.worker_cpu_us_per_task);
            put(format!("{k}.fill_cmds"), d.fill_redis.commands_per_task);
            let life = d.fill_redis.plus(&d.drain_redis);
            put(format!("{k}.life_cpu_us"), life.cpu_us_per_task);
            put(format!("{k}.life_cmds"), life.commands_per_task);
            put(format!("{k}.life_top"), life.top_level_per_task);
        }
        for d in &self.limits {
            let k = format!("limits.{}", d.label);
            let life = d.fill_redis.plus(&d.drain_redis);
            put(format!("{k}.tasks_per_s"), d.tasks_per_s);
            put(format!("{k}.life_cpu_us"), life.cpu_us_per_task);
            put(format!("{k}.life_cmds"), life.commands_per_task);
            put(format!("{k}.life_top"), life.top_level_per_task);
            put(format!("{k}.waits_per_task"), d.waited as f64 / d.tasks.max(1) as f64);
        }
        for g in &self.groups {
            let k = format!("groups.{}", if g.grouped { "on" } else { "off" });
            put(format!("{k}.tasks_per_s"), g.tasks_per_s);
            put(format!("{k}.b_wait_p50_us"), g.b_wait_p50_us);
            put(format!("{k}.b_wait_p99_us"), g.b_wait_p99_us);
            put(format!("{k}.b_wait_p99_starts"), g.b_wait_p99_starts);
            put(format!("{k}.life_cpu_us"), g.redis.cpu_us_per_task);
            put(format!("{k}.life_cmds"), g.redis.commands_per_task);
            put(format!("{k}.life_top"), g.redis.top_level_per_task);
        }
        if let Some(c) = &self.ceiling {
            put("ceiling.consumers".into(), c.consumers as f64);
            put("ceiling.drain_per_s".into(), c.drain_per_s);
            put("ceiling.xadd_per_s".into(), c.xadd_per_s);
            put("ceiling.drain_cpu_us".into(), c.drain_redis.cpu_us_per_task);
            put("ceiling.fill_cpu_us".into(), c.fill_redis.cpu_us_per_task);
            put("ceiling.client_cpu_us".into(), c.client_cpu_us_per_entry);
            put(
                "ceiling.life_cpu_us".into(),
                c.fill_redis.cpu_us_per_task + c.drain_redis.cpu_us_per_task,
            );
            put(
                "ceiling.life_cmds".into(),
                c.fill_redis.commands_per_task + c.drain_redis.commands_per_task,
            );
            if let Some(d) = self
                .drain
                .iter()
                .find(|d| drain_key(d.workers, d.concurrency, d.payload_bytes) == reference)
            {
                put("drain.reference.vs_ceiling".into(), d.tasks_per_s / c.drain_per_s);
                put(
                    "drain.reference.cpu_vs_ceiling".into(),
                    d.fill_redis.plus(&d.drain_redis).cpu_us_per_task
                        / (c.fill_redis.cpu_us_per_task + c.drain_redis.cpu_us_per_task),
                );
            }
        }
        if let Some(c) = &self.ceiling_wide {
            put("ceiling_wide.consumers".into(), c.consumers as f64);
            put("ceiling_wide.drain_per_s".into(), c.drain_per_s);
            put("ceiling_wide.drain_cpu_us".into(), c.drain_redis.cpu_us_per_task);
            put("ceiling_wide.client_cpu_us".into(), c.client_cpu_us_per_entry);
            if let Some(d) = self
                .drain
                .iter()
                .find(|d| drain_key(d.workers, d.concurrency, d.payload_bytes) == reference)
            {
                put("drain.reference.vs_ceiling_wide".into(), d.tasks_per_s / c.drain_per_s);
            }
        }
        for e in &self.enqueue {
            let k = format!("enqueue.{}.p{}", e.mode.key(), e.payload_bytes);
            put(format!("{k}.tasks_per_s"), e.tasks_per_s);
            put(format!("{k}.cpu_us"), e.redis.cpu_us_per_task);
            put(format!("{k}.cmds"), e.redis.commands_per_task);
        }
        for l in &self.latency {
            let k = latency_key(&l.label, l.payload_bytes);
            put(format!("{k}.rate"), l.rate_achieved);
            for (name, h) in [("start", Some(&l.start)), ("done", l.done.as_ref())] {
                let Some(h) = h else { continue };
                put(format!("{k}.{name}.p50"), h.p50 as f64);
                put(format!("{k}.{name}.p90"), h.p90 as f64);
                put(format!("{k}.{name}.p99"), h.p99 as f64);
                put(format!("{k}.{name}.p999"), h.p999 as f64);
                put(format!("{k}.{name}.max"), h.max as f64);
            }
            put(format!("{k}.enqueue_call.p99"), l.enqueue_call.p99 as f64);
            put(format!("{k}.stalls"), l.producer_stalls as f64);
            put(format!("{k}.backlog"), l.backlog_at_end as f64);
            put(format!("{k}.cpu_us"), l.redis.cpu_us_per_task);
            put(format!("{k}.cmds"), l.redis.commands_per_task);
            put(format!("{k}.top"), l.redis.top_level_per_task);
            put(format!("{k}.worker_cpu_us"), l.worker_cpu_us_per_task);
            put(format!("{k}.producer_cpu_us"), l.producer_cpu_us_per_task);
        }
        self.scale_metrics(&mut m);
        m
    }

    /// The idle, rate-sweep, many-queues and many-workers metrics.
    fn scale_metrics(&self, m: &mut BTreeMap<String, f64>) {
        let mut put = |k: String, v: f64| {
            m.insert(k, v);
        };
        let mut worst = None::<f64>;
        for i in &self.idle {
            let k = format!("idle.q{}", i.queues);
            put(format!("{k}.cmds_per_s"), i.commands_per_s_per_process);
            put("idle.processes".into(), i.processes as f64);
            put(format!("{k}.lanes"), (i.queues * i.priorities) as f64);
            put(format!("{k}.redis_cpu_us_per_s"), i.redis_cpu_us_per_s);
            put(format!("{k}.worker_cpu_us_per_s"), i.worker_cpu_us_per_s_per_process);
            for (c, n) in &i.per_command {
                put(format!("{k}.cmd.{c}"), *n);
            }
            worst = Some(worst.map_or(i.commands_per_s_per_process, |w| w.max(i.commands_per_s_per_process)));
        }
        if let Some(w) = worst {
            put("idle.max_cmds_per_s".into(), w);
        }
        let (mut cmds, mut cpu) = (None::<f64>, None::<f64>);
        for p in &self.rate_sweep {
            let k = format!("sweep.{}", p.label);
            put(format!("{k}.offered"), p.offered);
            put(format!("{k}.rate"), p.achieved);
            put(format!("{k}.cmds"), p.commands_per_task);
            put(format!("{k}.cpu_us"), p.redis_cpu_us_per_task);
            put(format!("{k}.worker_cpu_us"), p.worker_cpu_us_per_task);
            put(format!("{k}.backlog"), p.backlog_at_end as f64);
            if let (Some(a), Some(b)) = (p.p50_us, p.p99_us) {
                put(format!("{k}.p50"), a as f64);
                put(format!("{k}.p99"), b as f64);
            }
            cmds = Some(cmds.map_or(p.commands_per_task, |c| c.max(p.commands_per_task)));
            cpu = Some(cpu.map_or(p.redis_cpu_us_per_task, |c| c.max(p.redis_cpu_us_per_task)));
        }
        if let (Some(c), Some(u)) = (cmds, cpu) {
            put("sweep.max_cmds".into(), c);
            put("sweep.max_cpu_us".into(), u);
        }
        for d in &self.many_queues {
            let k = if d.spread {
                format!("many_queues.q{}", d.queues)
            } else {
                "many_queues.default".to_owned()
            };
            put(format!("{k}.tasks_per_s"), d.tasks_per_s);
            put(format!("{k}.drain_cmds"), d.drain_redis.commands_per_task);
            put(format!("{k}.drain_cpu_us"), d.drain_redis.cpu_us_per_task);
            put(format!("{k}.worker_cpu_us"), d.worker_cpu_us_per_task);
        }
        if let (Some(one), Some(many)) = (
            self.many_queues.iter().find(|d| d.queues == 1 && d.spread),
            self.many_queues
                .iter()
                .filter(|d| d.queues > 1 && d.spread)
                .max_by_key(|d| d.queues),
        ) {
            put("many_queues.ratio".into(), many.tasks_per_s / one.tasks_per_s.max(1e-9));
        }
        for d in &self.many_workers {
            let k = format!("many_workers.w{}", d.workers);
            let spread = spread_of(&d.per_process_started);
            put(format!("{k}.tasks_per_s"), d.tasks_per_s);
            put(format!("{k}.slots"), d.concurrency as f64);
            put(format!("{k}.per_process_min"), spread.min);
            put(format!("{k}.per_process_median"), spread.median);
            put(format!("{k}.per_process_max"), spread.max);
            put(format!("{k}.drain_cmds"), d.drain_redis.commands_per_task);
            put(format!("{k}.drain_cpu_us"), d.drain_redis.cpu_us_per_task);
            put(format!("{k}.worker_cpu_us"), d.worker_cpu_us_per_task);
            if let Some(b) = self.many_workers_bare.iter().find(|b| b.processes == d.workers) {
                put(format!("{k}.bare_per_s"), b.drain_per_s);
                put(format!("{k}.vs_bare"), d.tasks_per_s / b.drain_per_s.max(1e-9));
                put(format!("{k}.bare_client_cpu_us"), b.client_cpu_us_per_entry);
                put(format!("{k}.bare_redis_cpu_us"), b.drain_redis.cpu_us_per_task);
                put(format!("{k}.bare_cmds"), b.drain_redis.commands_per_task);
            }
        }
        let rates = self.many_workers.iter().map(|d| (d.workers, d.tasks_per_s));
        if let Some(r) = most_over_fewest(rates) {
            put("many_workers.ratio".into(), r);
        }
        let bare = self.many_workers_bare.iter().map(|b| (b.processes, b.drain_per_s));
        if let Some(r) = most_over_fewest(bare) {
            put("many_workers.bare_ratio".into(), r);
        }
    }
}

/// The rate of the most processes over that of the fewest, of `(processes, rate)` pairs
/// (none unless at least two counts ran).
fn most_over_fewest(rates: impl Iterator<Item = (usize, f64)> + Clone) -> Option<f64> {
    let few = rates.clone().min_by_key(|(n, _)| *n)?;
    let most = rates.max_by_key(|(n, _)| *n)?;
    (most.0 > few.0).then(|| most.1 / few.1.max(1e-9))
}

/// Minimum, median and maximum of handlers started per process (all 0 for none).
pub fn spread_of(started: &[u64]) -> Spread {
    let v: Vec<f64> = started.iter().map(|&n| n as f64).collect();
    Spread::of(&v).unwrap_or(Spread {
        median: 0.0,
        min: 0.0,
        max: 0.0,
        runs: 0,
    })
}

/// Median, min and max of every metric over the runs.
pub fn summarise(runs: &[BTreeMap<String, f64>]) -> BTreeMap<String, Spread> {
    let mut all: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for (k, v) in run {
            all.entry(k).or_default().push(*v);
        }
    }
    all.into_iter()
        .filter_map(|(k, v)| Spread::of(&v).map(|s| (k.to_owned(), s)))
        .collect()
}

/// How a number is shown.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Tasks per second, thousands separated.
    Rate,
    /// Microseconds, shown as milliseconds.
    Ms,
    /// Microseconds of CPU.
    Us,
    /// A plain count with two decimals.
    Count,
    /// A fraction shown as a percentage.
    Pct,
}

pub fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Rate => thousands(v.round() as u64),
        Unit::Ms => format!("{:.3}", v / 1000.0),
        Unit::Us => format!("{v:.2}"),
        Unit::Count => format!("{v:.2}"),
        Unit::Pct => format!("{:.1} %", v * 100.0),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `median` alone for one run, `median (min–max)` for several.
pub fn fmt_spread(s: Option<&Spread>, unit: Unit) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.runs == 1 => fmt_value(s.median, unit),
        Some(s) => format!(
            "{} ({}–{})",
            fmt_value(s.median, unit),
            fmt_value(s.min, unit),
            fmt_value(s.max, unit)
        ),
    }
}

/// A plain-text table with aligned columns.
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Self {
        Table {
            title: title.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![0; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = format!("\n## {}\n", self.title);
        for (n, r) in std::iter::once(&self.header).chain(&self.rows).enumerate() {
            let cells: Vec<String> = (0..cols)
                .map(|i| {
                    let c = r.get(i).map_or("", String::as_str);
                    let pad = width[i] - c.chars().count();
                    if i == 0 {
                        format!("{c}{}", " ".repeat(pad))
                    } else {
                        format!("{}{c}", " ".repeat(pad))
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
            if n == 0 {
                let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
                let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
            }
        }
        out
    }
}

/// One of the project's targets, checked against the medians.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub target: String,
    pub measured: String,
    /// `None` when the run did not measure it.
    pub met: Option<bool>,
    /// By how much it was missed (or the margin), as text.
    pub note: String,
}

/// Checks `summary[key]` (median) against `limit`; `at_least` says which side passes.
pub fn check(
    summary: &BTreeMap<String, Spread>,
    target: &str,
    key: &str,
    limit: f64,
    at_least: bool,
    unit: Unit,
) -> Check {
    let Some(s) = summary.get(key) else {
        return Check {
            target: target.into(),
            measured: "not measured".into(),
            met: None,
            note: String::new(),
        };
    };
    let met = if at_least {
        s.median >= limit
    } else {
        s.median < limit || (unit_is_le(unit) && s.median <= limit)
    };
    let ratio = s.median / limit;
    let note = if met {
        String::new()
    } else if at_least {
        format!("missed: {:.0} % of the target", ratio * 100.0)
    } else {
        format!("missed: {ratio:.2}x the limit")
    };
    Check {
        target: target.into(),
        measured: fmt_spread(Some(s), unit),
        met: Some(met),
        note,
    }
}

/// The targets a run measured and missed (what `--check` fails on); unmeasured ones are not
/// misses, so `--only drain` gates on the drain targets alone.
pub fn missed(checks: &[Check]) -> Vec<&Check> {
    checks.iter().filter(|c| c.met == Some(false)).collect()
}

/// Costs are targets of the form "at most".
fn unit_is_le(unit: Unit) -> bool {
    matches!(unit, Unit::Us | Unit::Count)
}

/// The one-process drain rate the project aims at, tasks/s.
pub const DRAIN_TARGET: f64 = 100_000.0;

/// The project's targets, checked against the medians.
pub fn targets(summary: &BTreeMap<String, Spread>, reference: &str) -> Vec<Check> {
    let lat = |label: &str, what: &str| format!("{}.start.{what}", latency_key(label, BASE_PAYLOAD));
    vec![
        check(
            summary,
            "drain, 1 worker process ≥ 100,000 tasks/s",
            &format!("{reference}.tasks_per_s"),
            DRAIN_TARGET,
            true,
            Unit::Rate,
        ),
        check(
            summary,
            "drain ≥ 70 % of the bare loop, --bare-consumers-wide (2) consumers",
            "drain.reference.vs_ceiling_wide",
            0.70,
            true,
            Unit::Pct,
        ),
        check(
            summary,
            "drain ≥ 70 % of the bare loop, --bare-consumers (1) consumer",
            "drain.reference.vs_ceiling",
            0.70,
            true,
            Unit::Pct,
        ),
        check(
            summary,
            "enqueue-to-start p50 < 0.5 ms at 2,000/s",
            &lat("2000", "p50"),
            500.0,
            false,
            Unit::Ms,
        ),
        check(
            summary,
            "enqueue-to-start p99 < 2 ms at 2,000/s",
            &lat("2000", "p99"),
            2_000.0,
            false,
            Unit::Ms,
        ),
        check(
            summary,
            "enqueue-to-start p99 < 5 ms at 10,000/s",
            &lat("10000", "p99"),
            5_000.0,
            false,
            Unit::Ms,
        ),
        check(
            summary,
            "Redis CPU ≤ 10 µs per task (enqueue + drain)",
            &format!("{reference}.life_cpu_us"),
            10.0,
            false,
            Unit::Us,
        ),
        check(
            summary,
            "≤ 3 Redis commands per task (enqueue + drain, script calls included)",
            &format!("{reference}.life_cmds"),
            3.0,
            false,
            Unit::Count,
        ),
    ]
}

/// Every table of a run's summary, then the targets; `latency_concurrency` is the latency
/// runs' worker slots (their title names them).
pub fn tables(latency_concurrency: usize, s: &BTreeMap<String, Spread>, checks: &[Check], reference: &str) -> String {
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
        "Limits (2 processes x 64, no-op tasks, records off): the same drain with no limit, a rate limit, a cap",
        &[
            "limit",
            "tasks/s",
            "Redis µs/task",
            "cmds/task",
            "top-level/task",
            "waits/task",
        ],
    );
    for label in ["off", "rate", "cap"] {
        let k = format!("limits.{label}");
        if !s.contains_key(&format!("{k}.tasks_per_s")) {
            continue;
        }
        t.row(vec![
            label.to_owned(),
            g(format!("{k}.tasks_per_s"), Unit::Rate),
            g(format!("{k}.life_cpu_us"), Unit::Us),
            g(format!("{k}.life_cmds"), Unit::Count),
            g(format!("{k}.life_top"), Unit::Count),
            g(format!("{k}.waits_per_task"), Unit::Count),
        ]);
    }
    if !t.is_empty() {
        out.push_str(&t.render());
    }

    let mut t = Table::new(
        "Fair groups (1 process, no-op tasks, records off): A's backlog, then B's 100 tasks; B's wait from the first start",
        &[
            "groups",
            "tasks/s",
            "B wait p50",
            "B wait p99",
            "B p99 in starts",
            "Redis µs/task",
            "cmds/task",
            "top-level/task",
        ],
    );
    for label in ["on", "off"] {
        let k = format!("groups.{label}");
        if !s.contains_key(&format!("{k}.tasks_per_s")) {
            continue;
        }
        t.row(vec![
            label.to_owned(),
            g(format!("{k}.tasks_per_s"), Unit::Rate),
            g(format!("{k}.b_wait_p50_us"), Unit::Us),
            g(format!("{k}.b_wait_p99_us"), Unit::Us),
            g(format!("{k}.b_wait_p99_starts"), Unit::Count),
            g(format!("{k}.life_cpu_us"), Unit::Us),
            g(format!("{k}.life_cmds"), Unit::Count),
            g(format!("{k}.life_top"), Unit::Count),
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
            &format!("{title}, 1 worker process x {} slots", latency_concurrency),
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

    out.push_str(&scale_tables(s));

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

/// The numbers after `prefix` in keys `<prefix><N><suffix>`, sorted.
fn numbered(s: &BTreeMap<String, Spread>, prefix: &str, suffix: &str) -> Vec<usize> {
    let mut v: Vec<usize> = s
        .keys()
        .filter_map(|k| k.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The idle, rate-sweep, many-queues and many-workers tables (empty when none ran).
pub fn scale_tables(s: &BTreeMap<String, Spread>) -> String {
    let g = |k: String, u: Unit| fmt_spread(s.get(&k), u);
    let mut out = String::new();

    let processes = s.get("idle.processes").map_or(0.0, |p| p.median);
    let mut t = Table::new(
        &format!(
            "Idle: {processes:.0} worker-cli work process(es), nothing to do (every command counted, Lua's included)"
        ),
        &[
            "queues served",
            "lanes",
            "commands/s per process",
            "Redis CPU µs/s",
            "worker CPU µs/s per process",
            "largest shares (per process)",
        ],
    );
    for q in numbered(s, "idle.q", ".cmds_per_s") {
        let k = format!("idle.q{q}");
        let mut shares: Vec<(&str, f64)> = s
            .iter()
            .filter_map(|(key, v)| Some((key.strip_prefix(&format!("{k}.cmd."))?, v.median)))
            .collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = shares
            .iter()
            .take(4)
            .map(|(c, n)| format!("{} {n:.1}/s", c.to_uppercase()))
            .collect();
        t.row(vec![
            q.to_string(),
            // A count fixed by the plan: the median alone.
            s.get(&format!("{k}.lanes"))
                .map_or("-".into(), |v| fmt_value(v.median, Unit::Rate)),
            g(format!("{k}.cmds_per_s"), Unit::Count),
            g(format!("{k}.redis_cpu_us_per_s"), Unit::Rate),
            g(format!("{k}.worker_cpu_us_per_s"), Unit::Rate),
            top.join(", "),
        ]);
    }
    if !t.is_empty() {
        out.push_str(&t.render());
    }

    let mut t = Table::new(
        "Rate sweep: one worker process, open-loop producer; cost per task over the whole window (idle polling included)",
        &[
            "offered/s",
            "achieved/s",
            "cmds/task",
            "Redis µs/task",
            "worker CPU µs/task",
            "p50 ms",
            "p99 ms",
        ],
    );
    let mut labels: Vec<(f64, String)> = s
        .iter()
        .filter_map(|(k, v)| Some((v.median, k.strip_prefix("sweep.")?.strip_suffix(".offered")?.to_owned())))
        .collect();
    labels.sort_by(|a, b| {
        (a.1 == "saturation")
            .cmp(&(b.1 == "saturation"))
            .then(a.0.total_cmp(&b.0))
    });
    for (_, label) in labels {
        let k = format!("sweep.{label}");
        t.row(vec![
            if label == "saturation" {
                "saturation (backlog)".into()
            } else {
                s.get(&format!("{k}.offered"))
                    .map_or("-".into(), |v| fmt_value(v.median, Unit::Rate))
            },
            g(format!("{k}.rate"), Unit::Rate),
            g(format!("{k}.cmds"), Unit::Count),
            g(format!("{k}.cpu_us"), Unit::Us),
            g(format!("{k}.worker_cpu_us"), Unit::Us),
            g(format!("{k}.p50"), Unit::Ms),
            g(format!("{k}.p99"), Unit::Ms),
        ]);
    }
    if !t.is_empty() {
        out.push_str(&t.render());
    }

    let mut t = Table::new(
        "Many queues: one worker process, the backlog spread over every queue x 3 priorities (first row: one queue, all at its default priority)",
        &[
            "queues",
            "tasks/s",
            "vs 1 queue",
            "drain cmds/task",
            "drain Redis µs/task",
            "worker CPU µs/task",
        ],
    );
    let rows = s
        .contains_key("many_queues.default.tasks_per_s")
        .then(|| {
            (
                "1, default priority".to_owned(),
                "many_queues.default".to_owned(),
                false,
            )
        })
        .into_iter()
        .chain(
            numbered(s, "many_queues.q", ".tasks_per_s")
                .into_iter()
                .map(|q| (q.to_string(), format!("many_queues.q{q}"), q > 1)),
        );
    for (name, k, many) in rows {
        t.row(vec![
            name,
            g(format!("{k}.tasks_per_s"), Unit::Rate),
            if many {
                g("many_queues.ratio".into(), Unit::Pct)
            } else {
                String::new()
            },
            g(format!("{k}.drain_cmds"), Unit::Count),
            g(format!("{k}.drain_cpu_us"), Unit::Us),
            g(format!("{k}.worker_cpu_us"), Unit::Us),
        ]);
    }
    if !t.is_empty() {
        out.push_str(&t.render());
    }

    let mut t = Table::new(
        "Many workers: one backlog, the queue paused until every process registered",
        &[
            "processes x slots",
            "tasks/s",
            "vs fewest",
            "tasks per process min / median / max",
            "drain cmds/task",
            "drain Redis µs/task",
            "worker CPU µs/task",
            "bare fleet entries/s",
            "bare vs fewest",
            "vs bare",
        ],
    );
    let counts = numbered(s, "many_workers.w", ".tasks_per_s");
    for &w in &counts {
        let k = format!("many_workers.w{w}");
        let m = |x: &str| s.get(&format!("{k}.{x}")).map_or(0.0, |v| v.median);
        t.row(vec![
            format!("{w} x {:.0}", m("slots")),
            g(format!("{k}.tasks_per_s"), Unit::Rate),
            if Some(&w) == counts.last() && counts.len() > 1 {
                g("many_workers.ratio".into(), Unit::Pct)
            } else {
                String::new()
            },
            format!(
                "{:.0} / {:.0} / {:.0}",
                m("per_process_min"),
                m("per_process_median"),
                m("per_process_max")
            ),
            g(format!("{k}.drain_cmds"), Unit::Count),
            g(format!("{k}.drain_cpu_us"), Unit::Us),
            g(format!("{k}.worker_cpu_us"), Unit::Us),
            g(format!("{k}.bare_per_s"), Unit::Rate),
            if Some(&w) == counts.last() && counts.len() > 1 {
                g("many_workers.bare_ratio".into(), Unit::Pct)
            } else {
                String::new()
            },
            g(format!("{k}.vs_bare"), Unit::Pct),
        ]);
    }
    if !t.is_empty() {
        out.push_str(&t.render());
    }
    out
}

/// The targets of the idle, rate-sweep, many-queues and many-workers scenarios (issue 18).
pub fn scale_targets(summary: &BTreeMap<String, Spread>) -> Vec<Check> {
    let queues = numbered(summary, "many_queues.q", ".tasks_per_s");
    let workers = numbered(summary, "many_workers.w", ".tasks_per_s");
    let sweep = |what: &str| format!("sweep.2000.{what}");
    vec![
        check(
            summary,
            "idle: ≤ 2 Redis commands/s per idle worker process, whatever it serves (worst queue count)",
            "idle.max_cmds_per_s",
            2.0,
            false,
            Unit::Count,
        ),
        check(
            summary,
            "trickle: ≤ 2 Redis commands per task at every rate to saturation (worst rate)",
            "sweep.max_cmds",
            2.0,
            false,
            Unit::Count,
        ),
        check(
            summary,
            "trickle: ≤ 25 µs Redis CPU per task at every rate to saturation (worst rate)",
            "sweep.max_cpu_us",
            25.0,
            false,
            Unit::Us,
        ),
        check(
            summary,
            "trickle: enqueue-to-start p50 < 0.3 ms at 2,000/s",
            &sweep("p50"),
            300.0,
            false,
            Unit::Ms,
        ),
        check(
            summary,
            "trickle: enqueue-to-start p99 < 1 ms at 2,000/s",
            &sweep("p99"),
            1_000.0,
            false,
            Unit::Ms,
        ),
        check(
            summary,
            &format!(
                "many queues: 1 worker serving {} queues x 3 priorities ≥ 50 % of its 1-queue rate",
                queues.last().copied().unwrap_or(200)
            ),
            "many_queues.ratio",
            0.50,
            true,
            Unit::Pct,
        ),
        check(
            summary,
            &format!(
                "many workers: {} processes drain ≥ 90 % of what {} do",
                workers.last().copied().unwrap_or(64),
                workers.first().copied().unwrap_or(4)
            ),
            "many_workers.ratio",
            0.90,
            true,
            Unit::Pct,
        ),
    ]
}

/// `Some(50)` for the rate label `auto50` (a share of the measured drain rate).
pub fn auto_share(label: &str) -> Option<u32> {
    label.strip_prefix("auto").and_then(|p| p.parse().ok())
}

/// `64 B`, `1 KiB`.
pub fn bytes_label(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(fmt_value(1_234_567.4, Unit::Rate), "1,234,567");
        assert_eq!(fmt_value(999.0, Unit::Rate), "999");
        assert_eq!(fmt_value(412.0, Unit::Ms), "0.412");
        assert_eq!(fmt_value(0.7314, Unit::Pct), "73.1 %");
        let s = Spread::of(&[1000.0, 2000.0, 3000.0]);
        assert_eq!(fmt_spread(s.as_ref(), Unit::Rate), "2,000 (1,000–3,000)");
    }

    #[test]
    fn checks_say_by_how_much_a_target_was_missed() {
        let mut summary = BTreeMap::new();
        summary.insert("a".to_owned(), Spread::of(&[80_000.0]).unwrap());
        summary.insert("b".to_owned(), Spread::of(&[3_000.0]).unwrap());
        let c = check(&summary, "rate", "a", 100_000.0, true, Unit::Rate);
        assert_eq!(c.met, Some(false));
        assert_eq!(c.note, "missed: 80 % of the target");
        let c = check(&summary, "p99", "b", 2_000.0, false, Unit::Ms);
        assert_eq!(c.note, "missed: 1.50x the limit");
        assert_eq!(check(&summary, "x", "missing", 1.0, true, Unit::Rate).met, None);
        let checks = [
            check(&summary, "met", "a", 50_000.0, true, Unit::Rate),
            check(&summary, "missed", "a", 200_000.0, true, Unit::Rate),
            check(&summary, "unmeasured", "missing", 1.0, true, Unit::Rate),
        ];
        let names: Vec<&str> = missed(&checks).iter().map(|c| c.target.as_str()).collect();
        assert_eq!(names, ["missed"]);
    }

    #[test]
    fn tables_align_their_columns() {
        let mut t = Table::new("T", &["name", "value"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["long name".into(), "12,345".into()]);
        let text = t.render();
        assert!(text.contains("| a         |      1 |"), "{text}");
    }
}
