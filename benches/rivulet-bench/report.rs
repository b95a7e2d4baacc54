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
use crate::stats::Spread;

/// Everything one pass of the suite measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    pub drain: Vec<DrainResult>,
    /// The reference drain with lifecycle tracking off, then on (the `lifecycle` scenario).
    pub lifecycle: Vec<DrainResult>,
    /// The bare loop with one consumer: what one worker process is compared with.
    pub ceiling: Option<CeilingResult>,
    /// The bare loop with several consumers in parallel: what Redis allows on this machine.
    pub ceiling_wide: Option<CeilingResult>,
    pub enqueue: Vec<EnqueueResult>,
    pub latency: Vec<LatencyResult>,
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
        m
    }
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

/// Costs are targets of the form "at most".
fn unit_is_le(unit: Unit) -> bool {
    matches!(unit, Unit::Us | Unit::Count)
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
