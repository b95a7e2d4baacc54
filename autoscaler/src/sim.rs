//! Deterministic virtual-time simulator that drives the real
//! [`policy::decide`] against a queue model, so the policy's SLA breaches,
//! cost and flapping can be measured and pinned by tests. Owns the load
//! shapes, the queue/worker model, the oracle and the SVG timeline.
//!
//! Model, per sub-step (100 ms by default): finished tasks complete, idle
//! workers that were asked to stop exit, new tasks arrive (Poisson or
//! deterministic), then every idle running worker takes the oldest task of
//! the highest non-empty priority and holds it for a fixed service time.
//! Every tick (1 s) the collector builds an [`Observation`] (rates smoothed
//! and the busy count by an EWMA, like a real collector would) and applies the decision: new
//! workers become available after `startup_delay`; stopping prefers workers
//! that are still starting, then idle ones, and a busy worker finishes its
//! task first (graceful drain). Time is an integer sub-step counter, so runs
//! are bit-for-bit reproducible from the seed.

use crate::policy::{self, Observation, PolicyParams, PolicyState, PriorityObservation};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

/// Default decision interval.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);
/// Default resolution of the queue model.
pub const DEFAULT_SUB_STEP: Duration = Duration::from_millis(100);
/// Default time from "spawn a worker" to "it takes tasks".
pub const DEFAULT_STARTUP_DELAY: Duration = Duration::from_secs(2);
/// Default time constant of the collector's rate EWMA: the daemon's default.
pub const DEFAULT_RATE_WINDOW: Duration = crate::observe::DEFAULT_SMOOTHING;

/// Arrival rate of one priority over time (tasks/s; times in seconds).
#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    Constant(f64),
    Step {
        before: f64,
        after: f64,
        at: f64,
    },
    Spike {
        base: f64,
        peak: f64,
        at: f64,
        len: f64,
    },
    /// Linear from `from` to `to` over `over` seconds, then flat.
    Ramp {
        from: f64,
        to: f64,
        over: f64,
    },
    Sine {
        mean: f64,
        amplitude: f64,
        period: f64,
    },
    IdleBurstIdle {
        idle: f64,
        burst: f64,
        burst_at: f64,
        burst_len: f64,
    },
}

impl Load {
    /// Arrival rate at `t` seconds; never negative.
    pub fn rate_at(&self, t: f64) -> f64 {
        let rate = match *self {
            Self::Constant(r) => r,
            Self::Step { before, after, at } => {
                if t < at {
                    before
                } else {
                    after
                }
            }
            Self::Spike { base, peak, at, len } => {
                if t >= at && t < at + len {
                    peak
                } else {
                    base
                }
            }
            Self::Ramp { from, to, over } => {
                let f = if over > 0.0 { (t / over).min(1.0) } else { 1.0 };
                from + (to - from) * f
            }
            Self::Sine {
                mean,
                amplitude,
                period,
            } => mean + amplitude * (std::f64::consts::TAU * t / period).sin(),
            Self::IdleBurstIdle {
                idle,
                burst,
                burst_at,
                burst_len,
            } => {
                if t >= burst_at && t < burst_at + burst_len {
                    burst
                } else {
                    idle
                }
            }
        };
        rate.max(0.0)
    }
}

/// One priority stream of the simulated system.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityLoad {
    pub priority: String,
    pub sla: Duration,
    pub load: Load,
}

impl PriorityLoad {
    pub fn new(priority: &str, sla: Duration, load: Load) -> Self {
        Self {
            priority: priority.into(),
            sla,
            load,
        }
    }
}

/// How arrivals are drawn in each sub-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    /// Poisson-distributed counts from the seeded PRNG.
    Poisson,
    /// Exactly `rate · dt` on average, via a fractional accumulator.
    Deterministic,
}

/// Everything a run depends on; two equal configs give equal reports.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub params: PolicyParams,
    /// Highest priority first; workers serve them in this order.
    pub loads: Vec<PriorityLoad>,
    pub duration: Duration,
    pub seed: u64,
    pub startup_delay: Duration,
    /// True tasks/s of one worker (service time = 1 / rate, rounded to a
    /// whole number of sub-steps).
    pub service_rate: f64,
    pub tick: Duration,
    pub sub_step: Duration,
    pub arrivals: Arrivals,
    /// EWMA time constant of the observed arrival and completion rates.
    pub rate_window: Duration,
    /// Workers at t = 0 (already running); clamped to `params.min..=max`.
    pub initial_workers: u32,
    /// Workers report how long their handlers ran (as the engine's heartbeat does); when
    /// false, as from older workers, the policy falls back to Little's law.
    pub handler_times: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            params: PolicyParams::default(),
            loads: vec![PriorityLoad::new(
                "default",
                Duration::from_secs(10),
                Load::Constant(1.0),
            )],
            duration: Duration::from_secs(600),
            seed: 0x5EED,
            startup_delay: DEFAULT_STARTUP_DELAY,
            service_rate: 1.0,
            tick: DEFAULT_TICK,
            sub_step: DEFAULT_SUB_STEP,
            arrivals: Arrivals::Poisson,
            rate_window: DEFAULT_RATE_WINDOW,
            initial_workers: 1,
            handler_times: true,
        }
    }
}

/// State of the system at the end of one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub t: f64,
    /// Requested workers (starting ones included, draining ones not).
    pub workers: u32,
    /// What the oracle would run at this instant.
    pub oracle_workers: u32,
    /// Waiting tasks over all priorities.
    pub backlog: u64,
    /// Oldest waiting age per priority, seconds, in `SimReport::priorities` order.
    pub oldest_age: Vec<f64>,
    pub reason: &'static str,
}

/// Outcome of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Seconds during which any priority's oldest waiting task was at or past
    /// its SLA.
    pub breach_seconds: f64,
    /// Integral of worker processes (starting and draining included).
    pub worker_seconds: f64,
    /// Integral of `max(min, ceil(total arrival rate / service rate))`: an
    /// ideal scaler that knows the future, starts workers instantly and runs
    /// them at 100 % utilisation. Unreachable by design; a yardstick.
    pub oracle_worker_seconds: f64,
    /// The same oracle held to the policy's scale-down rule (one worker per
    /// `cooldown` after any change): the best any scaler obeying that rule
    /// could do. The gap to `oracle_worker_seconds` is the price of the rule.
    pub constrained_oracle_worker_seconds: f64,
    pub scale_events: u32,
    /// Scale-ups directly following a scale-down or vice versa.
    pub direction_changes: u32,
    pub max_workers: u32,
    /// Priority names and SLAs, in the order of `Sample::oldest_age`.
    pub priorities: Vec<(String, Duration)>,
    pub timeline: Vec<Sample>,
    /// `|arrived - completed - still queued - in flight|`; must be 0.
    pub lost: u64,
}

impl SimReport {
    pub fn oracle_ratio(&self) -> f64 {
        self.worker_seconds / self.oracle_worker_seconds.max(f64::MIN_POSITIVE)
    }

    pub fn constrained_oracle_ratio(&self) -> f64 {
        self.worker_seconds / self.constrained_oracle_worker_seconds.max(f64::MIN_POSITIVE)
    }
}

/// SplitMix64: tiny, fast, and good enough for arrival noise.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Knuth's method, split into chunks of mean <= 20 so `exp(-mean)` never
    /// underflows (Poisson is additive, so the sum has the right law).
    pub fn poisson(&mut self, mean: f64) -> u64 {
        let mut remaining = if mean.is_finite() { mean.max(0.0) } else { 0.0 };
        let mut total = 0;
        while remaining > 0.0 {
            let chunk = remaining.min(20.0);
            remaining -= chunk;
            let limit = (-chunk).exp();
            let mut p = 1.0;
            loop {
                p *= self.next_f64();
                if p <= limit {
                    break;
                }
                total += 1;
            }
        }
        total
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Worker {
    /// Sub-step from which it takes tasks.
    ready_at: u64,
    /// Priority index and the sub-step at which the task completes.
    task: Option<(usize, u64)>,
    stopping: bool,
}

/// The worker processes; all counting and stop-selection rules live here.
#[derive(Debug, Clone, Default)]
struct Fleet {
    workers: Vec<Worker>,
}

impl Fleet {
    fn requested(&self) -> u32 {
        self.workers.iter().filter(|w| !w.stopping).count() as u32
    }

    fn live(&self, step: u64) -> impl Iterator<Item = &Worker> {
        self.workers.iter().filter(move |w| !w.stopping && w.ready_at <= step)
    }

    fn in_flight(&self, priority: usize) -> u64 {
        self.workers
            .iter()
            .filter(|w| w.task.is_some_and(|(p, _)| p == priority))
            .count() as u64
    }

    /// Completes due tasks (counted per priority) and lets drained workers exit.
    fn complete(&mut self, step: u64, completed: &mut [u64]) {
        for w in &mut self.workers {
            if let Some((p, done)) = w.task
                && done <= step
            {
                w.task = None;
                completed[p] += 1;
            }
        }
        self.workers.retain(|w| !(w.stopping && w.task.is_none()));
    }

    /// Idle running workers take the oldest task of the highest priority.
    fn dispatch(&mut self, queues: &mut [VecDeque<u64>], step: u64, service_steps: u64) {
        for w in &mut self.workers {
            if w.stopping || w.task.is_some() || w.ready_at > step {
                continue;
            }
            let Some(p) = queues.iter().position(|q| !q.is_empty()) else {
                return;
            };
            queues[p].pop_front();
            w.task = Some((p, step + service_steps));
        }
    }

    fn resize(&mut self, desired: u32, step: u64, startup_steps: u64) {
        let current = self.requested();
        if desired > current {
            let spawned = Worker {
                ready_at: step + startup_steps,
                task: None,
                stopping: false,
            };
            self.workers.extend((current..desired).map(|_| spawned.clone()));
            return;
        }
        let mut excess = current - desired;
        // Cheapest to stop first: never-started, then idle, then busy (drain).
        let still_starting = |w: &Worker| w.ready_at > step;
        let idle = |w: &Worker| w.task.is_none();
        for pick in [&still_starting as &dyn Fn(&Worker) -> bool, &idle, &|_: &Worker| true] {
            for w in self.workers.iter_mut().rev() {
                if excess > 0 && !w.stopping && pick(w) {
                    w.stopping = true;
                    excess -= 1;
                }
            }
        }
        self.workers.retain(|w| !(w.stopping && w.task.is_none()));
    }
}

fn steps(d: Duration, sub_ms: u64) -> u64 {
    (d.as_millis() as u64).div_ceil(sub_ms)
}

/// Runs the configured scenario and measures it; see the module docs.
pub fn simulate(cfg: &SimConfig) -> SimReport {
    let sub_ms = (cfg.sub_step.as_millis() as u64).max(1);
    let dt = sub_ms as f64 / 1000.0;
    let tick_steps = steps(cfg.tick, sub_ms).max(1);
    let total_steps = steps(cfg.duration, sub_ms);
    let startup_steps = steps(cfg.startup_delay, sub_ms);
    let service_rate = if cfg.service_rate > 0.0 { cfg.service_rate } else { 1.0 };
    let service_steps = ((1.0 / service_rate / dt).round() as u64).max(1);
    let sla_steps: Vec<u64> = cfg.loads.iter().map(|l| steps(l.sla, sub_ms)).collect();
    let n = cfg.loads.len();
    let (min, max) = (cfg.params.min.min(cfg.params.max), cfg.params.max);
    let tick_s = tick_steps as f64 * dt;
    let alpha = 1.0 - (-tick_s / cfg.rate_window.as_secs_f64().max(tick_s)).exp();

    let mut rng = Rng::new(cfg.seed);
    let mut queues: Vec<VecDeque<u64>> = vec![VecDeque::new(); n];
    let mut carry = vec![0.0; n];
    let mut fleet = Fleet::default();
    fleet.resize(cfg.initial_workers.clamp(min, max), 0, 0);
    let mut state = PolicyState::default();
    let (mut arrived, mut completed) = (vec![0u64; n], vec![0u64; n]);
    let (mut tick_arrived, mut tick_completed) = (vec![0u64; n], vec![0u64; n]);
    // The system is taken to be in steady state before t = 0: the collector's
    // averages start at the initial load, like the fleet does.
    let mut arr_ewma: Vec<f64> = cfg.loads.iter().map(|l| l.load.rate_at(0.0)).collect();
    let mut done_ewma = arr_ewma.clone();
    let mut busy_ewma = (arr_ewma.iter().sum::<f64>() / service_rate).min(f64::from(fleet.requested()));
    // Handlers finished (/s) and the time they ran (s/s), as workers report them.
    let service_s = service_steps as f64 * dt;
    let finishing: f64 = arr_ewma.iter().sum();
    let mut handler_ewma = (finishing, finishing * service_s);
    let mut report = SimReport {
        breach_seconds: 0.0,
        worker_seconds: 0.0,
        oracle_worker_seconds: 0.0,
        constrained_oracle_worker_seconds: 0.0,
        scale_events: 0,
        direction_changes: 0,
        max_workers: fleet.requested(),
        priorities: cfg.loads.iter().map(|l| (l.priority.clone(), l.sla)).collect(),
        timeline: Vec::new(),
        lost: 0,
    };
    let mut last_direction: Option<bool> = None;
    let cooldown_steps = steps(cfg.params.cooldown, sub_ms);
    let (mut constrained, mut constrained_changed) = (0u32, 0u64);

    for step in 0..total_steps {
        // From integer milliseconds, so shape edges land exactly on sub-steps.
        let t = (step * sub_ms) as f64 / 1000.0;
        fleet.complete(step, &mut tick_completed);
        let mut oracle_rate = 0.0;
        for (i, pl) in cfg.loads.iter().enumerate() {
            let rate = pl.load.rate_at(t);
            oracle_rate += rate;
            let count = match cfg.arrivals {
                Arrivals::Poisson => rng.poisson(rate * dt),
                Arrivals::Deterministic => {
                    carry[i] += rate * dt;
                    let whole = carry[i].floor();
                    carry[i] -= whole;
                    whole as u64
                }
            };
            queues[i].extend(std::iter::repeat_n(step, count as usize));
            tick_arrived[i] += count;
        }
        fleet.dispatch(&mut queues, step, service_steps);

        let oracle_workers = ((oracle_rate / service_rate).ceil() as u32).max(min);
        report.worker_seconds += fleet.workers.len() as f64 * dt;
        report.oracle_worker_seconds += f64::from(oracle_workers) * dt;
        if oracle_workers > constrained {
            (constrained, constrained_changed) = (oracle_workers, step);
        } else if oracle_workers < constrained && step - constrained_changed >= cooldown_steps {
            (constrained, constrained_changed) = (constrained - 1, step);
        }
        report.constrained_oracle_worker_seconds += f64::from(constrained) * dt;
        let breaching = queues
            .iter()
            .zip(&sla_steps)
            .any(|(q, &sla)| q.front().is_some_and(|&a| step - a >= sla));
        if breaching {
            report.breach_seconds += dt;
        }

        if (step + 1) % tick_steps != 0 {
            continue;
        }
        let per_s = |c: &[u64]| c.iter().map(|&c| c as f64 / tick_s).collect::<Vec<_>>();
        let (arr_now, done_now) = (per_s(&tick_arrived), per_s(&tick_completed));
        let finished: f64 = done_now.iter().sum();
        let mix = |old: &[f64], new: Vec<f64>| -> Vec<f64> {
            old.iter().zip(new).map(|(o, n)| o + alpha * (n - o)).collect()
        };
        let arr_rate = mix(&arr_ewma, arr_now);
        let done_rate = mix(&done_ewma, done_now);
        for i in 0..n {
            arrived[i] += tick_arrived[i];
            completed[i] += tick_completed[i];
        }
        tick_arrived.fill(0);
        tick_completed.fill(0);

        let age_steps = |q: &VecDeque<u64>| q.front().map(|&a| step - a);
        let busy = fleet.live(step).filter(|w| w.task.is_some()).count() as u32;
        busy_ewma += alpha * (f64::from(busy) - busy_ewma);
        handler_ewma.0 += alpha * (finished - handler_ewma.0);
        handler_ewma.1 += alpha * (finished * service_s - handler_ewma.1);
        let obs = Observation {
            priorities: cfg
                .loads
                .iter()
                .enumerate()
                .map(|(i, pl)| PriorityObservation {
                    priority: pl.priority.clone(),
                    sla: pl.sla,
                    backlog: queues[i].len() as u64,
                    backlog_estimated: false,
                    in_flight: fleet.in_flight(i),
                    oldest_age: age_steps(&queues[i]).map(|s| Duration::from_millis(s * sub_ms)),
                    arrival_rate: arr_rate[i],
                    completion_rate: done_rate[i],
                })
                .collect(),
            live_workers: fleet.live(step).count() as u32,
            busy_workers: busy,
            // One slot a worker: a busy worker runs one task.
            in_flight_avg: busy_ewma,
            slots_per_worker: 1.0,
            slot_rate: Some(handler_ewma.0 / handler_ewma.1).filter(|r| cfg.handler_times && r.is_finite() && *r > 0.0),
        };
        (arr_ewma, done_ewma) = (arr_rate, done_rate);

        let current = fleet.requested();
        let now = Duration::from_millis((step + 1) * sub_ms);
        let decision = policy::decide(&obs, current, now, &cfg.params, &mut state);
        if decision.desired != current {
            let up = decision.desired > current;
            report.scale_events += 1;
            if last_direction.is_some_and(|d| d != up) {
                report.direction_changes += 1;
            }
            last_direction = Some(up);
            fleet.resize(decision.desired, step + 1, startup_steps);
        }
        report.max_workers = report.max_workers.max(fleet.requested());
        report.timeline.push(Sample {
            t: now.as_secs_f64(),
            workers: fleet.requested(),
            oracle_workers,
            backlog: queues.iter().map(|q| q.len() as u64).sum(),
            oldest_age: queues
                .iter()
                .map(|q| age_steps(q).map_or(0.0, |s| s as f64 * dt))
                .collect(),
            reason: decision.reason.as_str(),
        });
    }

    let arrived: u64 = arrived.iter().chain(&tick_arrived).sum();
    let completed: u64 = completed.iter().chain(&tick_completed).sum();
    let queued: u64 = queues.iter().map(|q| q.len() as u64).sum();
    let in_flight: u64 = (0..n).map(|i| fleet.in_flight(i)).sum();
    report.lost = arrived.abs_diff(completed + queued + in_flight);
    report
}

/// A named scenario shared by the tests and the example report.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub config: SimConfig,
}

/// The standard load shapes, fixed before tuning: two priorities ("high",
/// 10 s SLA, carrying the shape; "low", 60 s SLA, steady background), 1 task/s
/// per worker, 2 s startup, a 32-worker budget and otherwise default policy
/// parameters with a measured per-worker rate.
pub fn scenarios() -> Vec<Scenario> {
    let secs = Duration::from_secs;
    let base = |duration: u64, high: Load, low: f64| {
        let params = PolicyParams {
            max: 32,
            per_worker_rate: Some(1.0),
            ..PolicyParams::default()
        };
        // Start warm, at the policy's own steady state for the t = 0 load, so
        // the shapes measure the shape and not a cold start.
        let initial = ((high.rate_at(0.0) + low) * params.headroom).ceil() as u32;
        SimConfig {
            params,
            loads: vec![
                PriorityLoad::new("high", secs(10), high),
                PriorityLoad::new("low", secs(60), Load::Constant(low)),
            ],
            duration: secs(duration),
            initial_workers: initial,
            ..SimConfig::default()
        }
    };
    vec![
        Scenario {
            name: "step_x10",
            config: base(
                1200,
                Load::Step {
                    before: 2.0,
                    after: 20.0,
                    at: 300.0,
                },
                1.0,
            ),
        },
        Scenario {
            name: "spike",
            config: base(
                1200,
                Load::Spike {
                    base: 8.0,
                    peak: 20.0,
                    at: 300.0,
                    len: 60.0,
                },
                1.0,
            ),
        },
        Scenario {
            name: "ramp",
            config: base(
                1200,
                Load::Ramp {
                    from: 2.0,
                    to: 20.0,
                    over: 600.0,
                },
                1.0,
            ),
        },
        Scenario {
            name: "sine",
            config: base(
                3600,
                Load::Sine {
                    mean: 12.0,
                    amplitude: 6.0,
                    period: 1200.0,
                },
                1.0,
            ),
        },
        Scenario {
            name: "idle_burst_idle",
            config: base(
                1200,
                Load::IdleBurstIdle {
                    idle: 0.2,
                    burst: 15.0,
                    burst_at: 300.0,
                    burst_len: 300.0,
                },
                0.2,
            ),
        },
    ]
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Smallest "round" number (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k) >= `x`,
/// so axis labels stay readable without wasting half the plot.
fn nice_ceil(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(x.log10().floor());
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&v| v >= x)
        .unwrap_or(10.0 * magnitude)
}

const COLORS: [&str; 4] = ["#d62728", "#9467bd", "#8c564b", "#e377c2"];
const DASH: &str = r#" stroke-dasharray="4 3""#;

/// One plotted series: `(t, value)` points plus how to draw and name it.
struct Line {
    label: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

impl Line {
    fn new(report: &SimReport, label: String, color: &'static str, f: impl Fn(&Sample) -> f64) -> Self {
        let points = report.timeline.iter().map(|s| (s.t, f(s))).collect();
        Self {
            label,
            color,
            dashed: false,
            points,
        }
    }
}

/// A self-contained SVG of the run: workers (with the oracle), total backlog
/// and per-priority oldest wait (with dashed SLA lines), sharing a time axis.
pub fn timeline_svg(report: &SimReport, title: &str) -> String {
    const WIDTH: f64 = 820.0;
    const LEFT: f64 = 64.0;
    const TOP: f64 = 64.0;
    const PANEL: f64 = 130.0;
    const GAP: f64 = 34.0;
    let plot_w = WIDTH - LEFT - 16.0;
    let height = TOP + 3.0 * (PANEL + GAP) + 10.0;
    let t_max = report.timeline.last().map_or(1.0, |s| s.t).max(1.0);
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let color = |i: usize| COLORS[i % COLORS.len()];

    let mut ages = Vec::new();
    for (i, (name, sla)) in report.priorities.iter().enumerate() {
        let label = format!("oldest wait {name}");
        ages.push(Line::new(report, label, color(i), |s| {
            s.oldest_age.get(i).copied().unwrap_or(0.0)
        }));
        let sla = sla.as_secs_f64();
        ages.push(Line {
            label: format!("SLA {name}"),
            color: color(i),
            dashed: true,
            points: vec![(0.0, sla), (t_max, sla)],
        });
    }
    let panels = [
        (
            "workers",
            vec![
                Line::new(report, "workers".into(), "#1f77b4", |s| f64::from(s.workers)),
                Line {
                    dashed: true,
                    ..Line::new(report, "oracle workers".into(), "#1f77b4", |s| {
                        f64::from(s.oracle_workers)
                    })
                },
            ],
        ),
        (
            "backlog (tasks)",
            vec![Line::new(report, "backlog".into(), "#ff7f0e", |s| s.backlog as f64)],
        ),
        ("oldest wait (s)", ages),
    ];

    let mut svg = String::new();
    // Writing to a String cannot fail, hence the ignored results below.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let mut lx = LEFT;
    for line in panels.iter().flat_map(|(_, lines)| lines) {
        let (c, dash) = (line.color, if line.dashed { DASH } else { "" });
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="38" x2="{}" y2="38" stroke="{c}" stroke-width="2"{dash}/><text x="{}" y="42">{}</text>"#,
            lx + 18.0,
            lx + 22.0,
            escape(&line.label)
        );
        lx += 30.0 + 6.5 * line.label.len() as f64;
    }

    for (k, (name, lines)) in panels.iter().enumerate() {
        let y0 = TOP + k as f64 * (PANEL + GAP);
        let peak = lines.iter().flat_map(|l| &l.points).map(|p| p.1).fold(0.0, f64::max);
        let y_max = nice_ceil(peak);
        let y = |v: f64| y0 + PANEL - v / y_max * PANEL;
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#999"/>
<text x="{LEFT}" y="{}" font-weight="bold">{name}</text>"##,
            y0 - 4.0
        );
        for v in [0.0, y_max / 2.0, y_max] {
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{yy}" x2="{}" y2="{yy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{v}</text>"##,
                LEFT + plot_w,
                LEFT - 4.0,
                y(v) + 4.0,
                yy = y(v)
            );
        }
        for line in lines {
            let dash = if line.dashed { DASH } else { "" };
            let points: Vec<String> = line
                .points
                .iter()
                .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5"{dash} points="{}"/>"#,
                line.color,
                points.join(" ")
            );
        }
    }

    let axis_y = TOP + 3.0 * PANEL + 2.0 * GAP;
    let t_step = nice_ceil(t_max / 6.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{axis_y}" x2="{xx:.1}" y2="{}" stroke="#999"/><text x="{xx:.1}" y="{}" text-anchor="middle">{t}</text>"##,
            axis_y + 4.0,
            axis_y + 16.0,
            xx = x(t)
        );
        t += t_step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text>
</svg>"#,
        LEFT + plot_w / 2.0,
        axis_y + 30.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_shapes_give_expected_rates() {
        assert_eq!(Load::Constant(3.0).rate_at(99.0), 3.0);
        let step = Load::Step {
            before: 1.0,
            after: 10.0,
            at: 5.0,
        };
        assert_eq!((step.rate_at(4.9), step.rate_at(5.0)), (1.0, 10.0));
        let spike = Load::Spike {
            base: 1.0,
            peak: 9.0,
            at: 10.0,
            len: 5.0,
        };
        assert_eq!([9.9, 10.0, 14.9, 15.0].map(|t| spike.rate_at(t)), [1.0, 9.0, 9.0, 1.0]);
        let ramp = Load::Ramp {
            from: 2.0,
            to: 4.0,
            over: 10.0,
        };
        assert_eq!([0.0, 5.0, 10.0, 50.0].map(|t| ramp.rate_at(t)), [2.0, 3.0, 4.0, 4.0]);
        let sine = Load::Sine {
            mean: 5.0,
            amplitude: 10.0,
            period: 4.0,
        };
        assert!((sine.rate_at(1.0) - 15.0).abs() < 1e-9);
        assert_eq!(sine.rate_at(3.0), 0.0, "clamped at zero");
        let ibi = Load::IdleBurstIdle {
            idle: 0.0,
            burst: 7.0,
            burst_at: 2.0,
            burst_len: 1.0,
        };
        assert_eq!([1.0, 2.5, 3.0].map(|t| ibi.rate_at(t)), [0.0, 7.0, 0.0]);
    }

    #[test]
    fn rng_is_deterministic_and_poisson_has_the_right_mean() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        for mean in [0.3, 4.0, 45.0] {
            let n = 20_000;
            let total: u64 = (0..n).map(|_| a.poisson(mean)).sum();
            let avg = total as f64 / f64::from(n);
            assert!((avg - mean).abs() < 0.05 * mean + 0.02, "mean {mean}: {avg}");
        }
        assert_eq!(a.poisson(0.0), 0);
        assert_eq!(a.poisson(f64::NAN), 0);
    }

    #[test]
    fn fleet_stops_starting_then_idle_then_drains_busy() {
        let mut fleet = Fleet::default();
        fleet.resize(3, 0, 0);
        let mut queues = vec![VecDeque::from([0, 0])];
        fleet.dispatch(&mut queues, 0, 10);
        fleet.resize(5, 1, 20); // two more, starting until step 21
        assert_eq!(fleet.requested(), 5);
        fleet.resize(2, 2, 20);
        // Starting and idle ones went at once; one busy worker drains.
        assert_eq!(fleet.requested(), 2);
        assert_eq!(fleet.workers.len(), 2);
        fleet.resize(1, 3, 20);
        assert_eq!((fleet.requested(), fleet.workers.len()), (1, 2));
        assert_eq!(fleet.in_flight(0), 2, "draining worker keeps its task");
        let mut done = vec![0];
        fleet.complete(10, &mut done);
        assert_eq!(done, vec![2]);
        assert_eq!(fleet.workers.len(), 1, "drained worker exited");
    }

    #[test]
    fn strict_priority_and_fixed_service_time() {
        let mut fleet = Fleet::default();
        fleet.resize(1, 0, 0);
        let mut queues = vec![VecDeque::from([5]), VecDeque::from([0])];
        fleet.dispatch(&mut queues, 6, 10);
        assert_eq!(fleet.workers[0].task, Some((0, 16)), "high first despite being younger");
        let mut done = vec![0, 0];
        fleet.complete(15, &mut done);
        assert_eq!(done, vec![0, 0]);
        fleet.complete(16, &mut done);
        assert_eq!(done, vec![1, 0]);
    }

    #[test]
    fn deterministic_arrivals_at_capacity_never_queue_long() {
        let cfg = SimConfig {
            arrivals: Arrivals::Deterministic,
            loads: vec![PriorityLoad::new("p", Duration::from_secs(10), Load::Constant(0.5))],
            duration: Duration::from_secs(120),
            ..SimConfig::default()
        };
        let r = simulate(&cfg);
        assert_eq!(r.lost, 0);
        assert_eq!(r.breach_seconds, 0.0);
        assert_eq!(r.max_workers, 1);
        assert!((r.worker_seconds - 120.0).abs() < 1e-6);
        assert!((r.oracle_worker_seconds - 120.0).abs() < 1e-6);
    }

    #[test]
    fn constrained_oracle_steps_down_once_per_cooldown() {
        let cfg = SimConfig {
            arrivals: Arrivals::Deterministic,
            loads: vec![PriorityLoad::new(
                "p",
                Duration::from_secs(10),
                Load::Spike {
                    base: 1.0,
                    peak: 4.0,
                    at: 10.0,
                    len: 5.0,
                },
            )],
            duration: Duration::from_secs(200),
            ..SimConfig::default()
        };
        let r = simulate(&cfg);
        assert!(
            (r.oracle_worker_seconds - 215.0).abs() < 1e-6,
            "{}",
            r.oracle_worker_seconds
        );
        // 4 from t = 10 until 40, then 3, 2 and finally 1 from t = 100.
        let expected = 10.0 + 30.0 * 4.0 + 30.0 * 3.0 + 30.0 * 2.0 + 100.0;
        assert!((r.constrained_oracle_worker_seconds - expected).abs() < 1e-6);
        assert_eq!(r.lost, 0);
    }

    #[test]
    fn svg_has_axes_legend_and_escaped_title() {
        let cfg = SimConfig {
            duration: Duration::from_secs(30),
            ..SimConfig::default()
        };
        let svg = timeline_svg(&simulate(&cfg), "a < b & c");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt; b &amp; c"));
        for label in [
            "workers",
            "oracle workers",
            "backlog",
            "oldest wait default",
            "time (s)",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        assert_eq!(nice_ceil(7.0), 8.0);
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(120.0), 150.0);
        assert_eq!(nice_ceil(26.0), 30.0);
    }
}
