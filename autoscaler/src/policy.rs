//! Pure scaling policy: owns the control law that turns one [`Observation`]
//! of the priority streams into a [`Decision`] about how many worker
//! processes should exist. No I/O, no clocks, no randomness: time comes in as
//! `now`, and the only memory is the caller-held [`PolicyState`].
//!
//! # Control law
//!
//! With `μ` the per-worker completion rate, `λ_p` the smoothed arrival rate
//! and `drain_p = backlog_p / (drain_fraction · sla_p)` for every priority
//! `p` (listed highest first, as workers serve them):
//!
//! ```text
//! need   = Σ max(λ_p · headroom, λ_p + drain_p) / μ      target = ceil(need)
//! raw    = Σ λ_p / μ
//! ```
//!
//! * `λ · headroom` keeps utilisation near `1 / headroom`, so random bursts
//!   queue for a moment instead of growing without bound.
//! * `drain_p` is the spare rate that clears what already waits within a
//!   fraction of the SLA. The headroom's spare capacity drains the backlog
//!   first and only the part it cannot cover adds workers: adding the two
//!   (`λ·headroom + drain`) over-shoots on every queueing blip, and the
//!   excess then has to be walked back down, which is flapping.
//! * The sum is rounded once, not per priority: workers are shared, and three
//!   priorities needing 0.3 workers each need one worker, not three.
//!
//! Rules, first match wins:
//!
//! 1. **Breach** (`oldest_age >= sla`) or **projected breach**
//!    (`oldest_age + backlog / spare_capacity >= sla`, spare capacity being
//!    what higher priorities leave over): scale up at once, cooldown or not,
//!    to `max(target, current + 1)`, at most `max_step_up` per decision.
//!    While workers requested earlier are still starting (`live < current`)
//!    the `+1` is dropped and only `target` counts; otherwise every decision
//!    tick of the startup delay would add one more worker for the same breach.
//! 2. **Demand**: `target > current` and either arrivals alone exceed the
//!    fleet (`ceil(raw) > current`) or a task has waited past
//!    `low_watermark · sla`: scale up to `target`, at most `max_step_up`.
//!    Triggering on overload but aiming at `target` leaves a dead band
//!    (`headroom - 1` wide) in which noise in the smoothed rates moves nothing.
//! 3. **Scale down** one step when `target < current`: when the fleet is at
//!    least `LARGE_SURPLUS` (1.5) times the target, as a burst leaves it,
//!    `down_fraction` (all) of the surplus `current - target`, and so again
//!    at every later step until something scales up: the smoothed rates are
//!    still decaying after the burst, and the fleet follows them down instead
//!    of shedding the rest of the burst a worker per cooldown. Otherwise one
//!    worker. Only when every waiting task is younger than
//!    `low_watermark · sla`, that has been so at every decision for a whole
//!    `cooldown`, `cooldown` has passed since the last change in either
//!    direction, `reversal_cooldown` since the last scale-up (waived for a
//!    large surplus: that is a burst over, not noise), and never below
//!    `busy_workers`. Scaling up late costs SLA, scaling down late costs only
//!    worker-seconds, hence the asymmetry. The calm period and the reversal
//!    cooldown are what stop flapping: a single noisy dip cannot trigger a
//!    scale-down, and a scale-up is never reverted on the trailing edge of the
//!    same noise that caused it.
//! 4. Otherwise hold.
//!
//! `max` and `min` are applied last and override every rule: `max` is a
//! budget, `min` an availability promise.
//!
//! When `per_worker_rate` is unknown it is measured per handler slot: from
//! the run times workers report for their finished handlers (`slot_rate`,
//! the inverse of the mean handler time; measured at completion, so a burst
//! does not bias it), or, from workers that do not report them, by Little's
//! law: one slot completes `completions / tasks in flight` tasks/s. A worker
//! process has `slots_per_worker` slots. Dividing by live
//! workers (idle ones included), or by *busy* ones (a process with one of its
//! sixteen slots in use is busy), makes an over-provisioned fleet look slow,
//! which raises the demand and keeps it over-provisioned for ever. The
//! in-flight count is smoothed because a snapshot of it is as noisy as a queue
//! length, and by the collector with the rates' own time constant: averaged
//! faster than the completions, it jumps with a burst while they still lag,
//! and the estimate sags by a third just when sizing matters (in the simulated
//! step the fleet then over-shot to its budget, 32 workers where 26 were
//! needed). The estimate assumes a worker's slots run in parallel; handlers
//! that compete for one CPU make it optimistic at low occupancy, which the
//! backlog rules then correct: give such workers as many slots as cores, or
//! configure the rate.

use std::fmt;
use std::time::Duration;

/// Default floor: one worker keeps latency low for the first task.
pub const DEFAULT_MIN_WORKERS: u32 = 1;
/// Default budget cap on worker processes.
pub const DEFAULT_MAX_WORKERS: u32 = 16;
/// Tasks/s one worker is assumed to complete when nothing better is known.
pub const DEFAULT_PER_WORKER_RATE: f64 = 1.0;
/// Minimum time after any scale change before a scale-down, and how long the
/// scale-down condition must hold first.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// Minimum time from a scale-up to the next scale-down.
pub const DEFAULT_REVERSAL_COOLDOWN: Duration = Duration::from_secs(90);
/// Largest scale-up of one decision; bounds the cost of a bad observation.
pub const DEFAULT_MAX_STEP_UP: u32 = 4;
/// Share of a large surplus (`current - target`) one scale-down step removes (and every later
/// step until the next scale-up), at least one worker: by default all of it, straight to the
/// target.
pub const DEFAULT_DOWN_FRACTION: f64 = 1.0;
/// A surplus is large when the fleet is at least this multiple of the target; smaller ones
/// are stepped down one worker at a time. Over 100 simulator seeds, 1.25 let the sine flap
/// (8 direction changes in 6 half periods on the worst seed) where 1.5 keeps it at 6.
pub const LARGE_SURPLUS: f64 = 1.5;
/// Capacity margin over the arrival rate (1.2 = aim at ~83 % utilisation).
pub const DEFAULT_HEADROOM: f64 = 1.2;
/// Scale down only while every oldest wait is below this fraction of its SLA.
pub const DEFAULT_LOW_WATERMARK: f64 = 0.25;
/// Fraction of the SLA within which an existing backlog should be drained.
pub const DEFAULT_DRAIN_FRACTION: f64 = 0.75;

/// What the collector saw for one priority stream.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityObservation {
    pub priority: String,
    pub sla: Duration,
    /// Tasks waiting, not yet delivered to any worker.
    pub backlog: u64,
    /// The backlog is an estimate (e.g. stream length when consumer-group lag
    /// was unavailable); it is still used as is, never treated as zero.
    pub backlog_estimated: bool,
    pub in_flight: u64,
    /// Age of the oldest waiting task; `None` when nothing waits or unknown.
    pub oldest_age: Option<Duration>,
    /// Smoothed arrivals, tasks/s.
    pub arrival_rate: f64,
    /// Smoothed completions, tasks/s.
    pub completion_rate: f64,
}

/// One snapshot of the whole system; priorities are listed highest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    pub priorities: Vec<PriorityObservation>,
    /// Worker processes running now (not counting ones still starting).
    pub live_workers: u32,
    /// Workers with at least one task in flight.
    pub busy_workers: u32,
    /// Tasks running on live workers, averaged by the collector exactly as it
    /// averages the rates (same time constant), for estimating the
    /// per-worker rate.
    pub in_flight_avg: f64,
    /// Handler slots of one worker process (mean over live workers; 1 when
    /// nothing is known).
    pub slots_per_worker: f64,
    /// Tasks per second one handler slot completes, from the run times the
    /// workers report for their finished handlers (averaged like the rates);
    /// `None` until a handler has finished, or from workers that do not report.
    pub slot_rate: Option<f64>,
}

/// Tuning of the control law; see the module docs for how each is used.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyParams {
    pub min: u32,
    pub max: u32,
    /// Measured tasks/s one worker completes; `None` = unknown, estimate it.
    pub per_worker_rate: Option<f64>,
    pub default_per_worker_rate: f64,
    pub cooldown: Duration,
    pub reversal_cooldown: Duration,
    pub max_step_up: u32,
    /// Share of the surplus one scale-down step removes (at least one worker; 0 = one worker).
    pub down_fraction: f64,
    pub headroom: f64,
    pub low_watermark: f64,
    /// Drain window as a fraction of each priority's SLA.
    pub drain_fraction: f64,
}

impl Default for PolicyParams {
    fn default() -> Self {
        Self {
            min: DEFAULT_MIN_WORKERS,
            max: DEFAULT_MAX_WORKERS,
            per_worker_rate: None,
            default_per_worker_rate: DEFAULT_PER_WORKER_RATE,
            cooldown: DEFAULT_COOLDOWN,
            reversal_cooldown: DEFAULT_REVERSAL_COOLDOWN,
            max_step_up: DEFAULT_MAX_STEP_UP,
            down_fraction: DEFAULT_DOWN_FRACTION,
            headroom: DEFAULT_HEADROOM,
            low_watermark: DEFAULT_LOW_WATERMARK,
            drain_fraction: DEFAULT_DRAIN_FRACTION,
        }
    }
}

impl PolicyParams {
    /// Rejects parameters for which the control law is meaningless. `decide`
    /// stays total on bad input, but callers should validate at load time.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max == 0 {
            return Err(PolicyError::MaxIsZero);
        }
        if self.min > self.max {
            return Err(PolicyError::MinAboveMax {
                min: self.min,
                max: self.max,
            });
        }
        if self.max_step_up == 0 {
            return Err(PolicyError::ZeroStepUp);
        }
        let positive = "finite and > 0";
        if let Some(rate) = self.per_worker_rate {
            check("per_worker_rate", rate, rate > 0.0, positive)?;
        }
        let d = self.default_per_worker_rate;
        check("default_per_worker_rate", d, d > 0.0, positive)?;
        let h = self.headroom;
        check("headroom", h, h >= 1.0, "finite and >= 1")?;
        let w = self.low_watermark;
        check("low_watermark", w, w > 0.0 && w <= 1.0, "in (0, 1]")?;
        let f = self.drain_fraction;
        check("drain_fraction", f, f > 0.0 && f <= 1.0, "in (0, 1]")?;
        let d = self.down_fraction;
        check("down_fraction", d, (0.0..=1.0).contains(&d), "in [0, 1]")
    }
}

fn check(field: &'static str, value: f64, ok: bool, expected: &'static str) -> Result<(), PolicyError> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(PolicyError::OutOfRange { field, value, expected })
    }
}

/// Why a [`PolicyParams`] was rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyError {
    MaxIsZero,
    MinAboveMax {
        min: u32,
        max: u32,
    },
    ZeroStepUp,
    OutOfRange {
        field: &'static str,
        value: f64,
        expected: &'static str,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MaxIsZero => write!(f, "max must be at least 1"),
            Self::MinAboveMax { min, max } => write!(f, "min ({min}) exceeds max ({max})"),
            Self::ZeroStepUp => write!(f, "max_step_up must be at least 1"),
            Self::OutOfRange { field, value, expected } => write!(f, "{field} = {value} must be {expected}"),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Memory between decisions. Times are the caller's virtual "time since
/// start"; a fresh `Default` state means "no history".
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PolicyState {
    pub last_scale_down: Option<Duration>,
    pub last_scale_up: Option<Duration>,
    /// Start of the unbroken run of decisions that wanted to scale down.
    pub down_since: Option<Duration>,
    /// A large surplus was stepped down (a burst ended) and nothing has
    /// scaled up since: scale-down steps go to the target, not one worker.
    pub after_burst: bool,
}

/// Why the desired count is what it is; `as_str` gives the metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A priority's oldest waiting task is at or past its SLA.
    Breach { priority: String },
    /// A priority's backlog will not clear before its SLA at current capacity.
    ProjectedBreach { priority: String },
    /// Arrivals exceed the fleet, or tasks wait past the low watermark.
    Demand,
    /// Capacity is inside the dead band; nothing to do.
    Steady,
    /// Stepped down by one step (part of the surplus, at least one worker).
    ScaleDown,
    /// Would scale down, but a recent change or a too-short calm forbids it.
    Cooldown,
    /// Would scale down, but some task has waited past the low watermark.
    AboveLowWatermark { priority: String },
    /// Held or raised to `min`.
    ClampMin,
    /// Held or lowered to `max` although more was wanted.
    ClampMax,
    /// Would scale down, but every remaining worker is busy.
    InFlightFloor,
    /// Urgent, but workers requested earlier are still starting.
    AwaitingStartup,
    /// Nothing waiting, in flight or arriving, and already at `min`.
    Idle,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Breach { .. } => "breach",
            Self::ProjectedBreach { .. } => "projected_breach",
            Self::Demand => "demand",
            Self::Steady => "steady",
            Self::ScaleDown => "scale_down",
            Self::Cooldown => "cooldown",
            Self::AboveLowWatermark { .. } => "above_low_watermark",
            Self::ClampMin => "clamp_min",
            Self::ClampMax => "clamp_max",
            Self::InFlightFloor => "in_flight_floor",
            Self::AwaitingStartup => "awaiting_startup",
            Self::Idle => "idle",
        }
    }

    /// The priority the reason is about, for the reasons that name one.
    pub fn priority(&self) -> Option<&str> {
        match self {
            Self::Breach { priority } | Self::ProjectedBreach { priority } | Self::AboveLowWatermark { priority } => {
                Some(priority)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Breach { priority } | Self::ProjectedBreach { priority } | Self::AboveLowWatermark { priority } => {
                write!(f, "{}({priority})", self.as_str())
            }
            _ => f.write_str(self.as_str()),
        }
    }
}

/// The outcome of one [`decide`] call.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub reason: Reason,
    /// One human-readable line with the numbers behind the decision.
    pub detail: String,
    /// The same numbers as data (what `worker-cli stats --json` shows).
    pub basis: Basis,
}

/// The numbers a [`Decision`] rests on.
#[derive(Debug, Clone, PartialEq)]
pub struct Basis {
    /// Workers the backlog and SLAs call for, before the step limits and bounds.
    pub target: u32,
    /// Workers needed, with headroom.
    pub need: f64,
    /// Workers needed, without headroom.
    pub raw: f64,
    /// Tasks per second one worker is taken to complete.
    pub per_worker_rate: f64,
    /// Where that rate comes from: `configured`, `measured`, `observed` or `default`.
    pub rate_source: &'static str,
}

/// Shortest SLA the arithmetic will use, so a zero SLA cannot divide by zero.
const MIN_SLA_SECS: f64 = 1e-3;
/// Below this many tasks in flight on average there is too little evidence to
/// estimate the per-worker rate from completions.
const MIN_IN_FLIGHT_EVIDENCE: f64 = 0.5;

/// Observation values arrive from the outside world: treat NaN, infinities
/// and negatives as "nothing" rather than letting them poison the sums.
fn non_negative(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

/// Unvalidated parameters must not turn the arithmetic into NaN soup.
fn finite_in(x: f64, lo: f64, hi: f64, default: f64) -> f64 {
    if x.is_finite() { x.clamp(lo, hi) } else { default }
}

/// `as` saturates (NaN becomes 0, +inf becomes `u32::MAX`), which is exactly
/// the clamping wanted for a worker count.
fn ceil_u32(x: f64) -> u32 {
    x.ceil() as u32
}

fn per_worker_rate(obs: &Observation, params: &PolicyParams) -> (f64, &'static str) {
    if let Some(rate) = params.per_worker_rate.filter(|r| r.is_finite() && *r > 0.0) {
        return (rate, "configured");
    }
    let slots = non_negative(obs.slots_per_worker).max(1.0);
    if let Some(rate) = obs.slot_rate.filter(|r| r.is_finite() && *r > 0.0) {
        return (rate * slots, "measured");
    }
    let completed: f64 = obs.priorities.iter().map(|p| non_negative(p.completion_rate)).sum();
    let in_flight = non_negative(obs.in_flight_avg);
    if completed > 0.0 && in_flight >= MIN_IN_FLIGHT_EVIDENCE {
        return (completed / in_flight * slots, "observed");
    }
    let d = params.default_per_worker_rate;
    if d.is_finite() && d > 0.0 {
        (d, "default")
    } else {
        (DEFAULT_PER_WORKER_RATE, "default")
    }
}

/// Per-observation aggregates the rules are evaluated on.
struct Assessment<'a> {
    need: f64,
    raw: f64,
    breach: Option<&'a str>,
    projected: Option<&'a str>,
    aging: Option<&'a str>,
    idle: bool,
}

fn assess<'a>(obs: &'a Observation, params: &PolicyParams, rate: f64, current: u32) -> Assessment<'a> {
    let headroom = finite_in(params.headroom, 1.0, f64::MAX, DEFAULT_HEADROOM);
    let drain_fraction = finite_in(params.drain_fraction, 0.01, 1.0, DEFAULT_DRAIN_FRACTION);
    let low_watermark = finite_in(params.low_watermark, 0.0, 1.0, DEFAULT_LOW_WATERMARK);
    let capacity = f64::from(current) * rate;
    let mut a = Assessment {
        need: 0.0,
        raw: 0.0,
        breach: None,
        projected: None,
        aging: None,
        idle: obs.busy_workers == 0,
    };
    let mut higher_arrivals = 0.0;
    for p in &obs.priorities {
        let sla = p.sla.as_secs_f64().max(MIN_SLA_SECS);
        let arrivals = non_negative(p.arrival_rate);
        let backlog = p.backlog as f64;
        let drain = backlog / (drain_fraction * sla);
        a.need += (arrivals * headroom).max(arrivals + drain) / rate;
        a.raw += arrivals / rate;
        a.idle &= p.backlog == 0 && p.in_flight == 0 && arrivals == 0.0;

        let age = p.oldest_age.map_or(0.0, |d| d.as_secs_f64());
        let name = p.priority.as_str();
        if p.oldest_age.is_some_and(|d| d >= p.sla) {
            a.breach = a.breach.or(Some(name));
        }
        if p.backlog > 0 {
            // Strict priority: this stream only gets what the higher ones leave.
            let spare = capacity - higher_arrivals;
            let clear = if spare > 0.0 { backlog / spare } else { f64::INFINITY };
            if age + clear >= sla {
                a.projected = a.projected.or(Some(name));
            }
            if age >= low_watermark * sla {
                a.aging = a.aging.or(Some(name));
            }
        }
        higher_arrivals += arrivals;
    }
    a
}

/// Decides how many workers should exist; see the module docs for the law.
///
/// `current` is the count requested by the previous decision (workers still
/// starting included); `now` is virtual time since start and must not go
/// backwards. `state` records scale changes and the calm period.
pub fn decide(
    obs: &Observation,
    current: u32,
    now: Duration,
    params: &PolicyParams,
    state: &mut PolicyState,
) -> Decision {
    let (rate, rate_source) = per_worker_rate(obs, params);
    let a = assess(obs, params, rate, current);
    let target = ceil_u32(a.need);
    let raw = ceil_u32(a.raw);
    // Busy workers only limit how far down we go; they never cause scale-up.
    // Never below the workers the tasks in flight occupy (at full slots, so multi-slot workers
    // that are each a little busy can still be merged: a stopped worker drains its tasks), nor
    // below the busy workers when fewer.
    let in_flight: u64 = obs.priorities.iter().map(|p| p.in_flight).sum();
    let slots = non_negative(obs.slots_per_worker).max(1.0);
    let busy_floor = ceil_u32(in_flight as f64 / slots).min(obs.busy_workers).min(current);
    let step_cap = current.saturating_add(params.max_step_up.max(1));
    let urgent = a
        .breach
        .map(|p| Reason::Breach { priority: p.into() })
        .or_else(|| a.projected.map(|p| Reason::ProjectedBreach { priority: p.into() }));
    let within = |t: Option<Duration>, gap: Duration| t.is_some_and(|t| now.saturating_sub(t) < gap);
    // The fleet is far above the target: a burst is over (see rule 3).
    let large = f64::from(current) >= LARGE_SURPLUS * f64::from(target.max(1));
    let cooling = within(state.last_scale_up.max(state.last_scale_down), params.cooldown)
        || (!large && within(state.last_scale_up, params.reversal_cooldown));
    let at_min = if a.idle { Reason::Idle } else { Reason::ClampMin };
    let mut down_wanted = false;

    let (mut desired, mut reason) = if let Some(urgent) = urgent {
        let starting = obs.live_workers < current;
        let want = if starting {
            target
        } else {
            target.max(current.saturating_add(1))
        };
        if want > current {
            (want.min(step_cap), urgent)
        } else {
            (current, Reason::AwaitingStartup)
        }
    } else if target > current && (raw > current || a.aging.is_some()) {
        (target.min(step_cap), Reason::Demand)
    } else if target < current && current <= params.min {
        (current, at_min)
    } else if let (true, Some(p)) = (target < current, a.aging) {
        (current, Reason::AboveLowWatermark { priority: p.into() })
    } else if target < current {
        down_wanted = true;
        let calm_since = *state.down_since.get_or_insert(now);
        if cooling || within(Some(calm_since), params.cooldown) {
            (current, Reason::Cooldown)
        } else if current - 1 < busy_floor {
            (current, Reason::InFlightFloor)
        } else {
            // A large surplus (what a burst leaves) goes to the target at once (by default),
            // and so does the rest of it while the smoothed rates decay after the burst; a
            // small one (a load falling slowly) a worker at a time, which keeps the trough of
            // a wave from over-shooting. Never below the target or the busy workers.
            let surplus = current - target;
            state.after_burst |= large;
            let step = if state.after_burst {
                ((f64::from(surplus) * params.down_fraction).floor() as u32).clamp(1, surplus)
            } else {
                1
            };
            ((current - step).max(busy_floor), Reason::ScaleDown)
        }
    } else if a.idle && current <= params.min {
        (current, at_min)
    } else {
        (current, Reason::Steady)
    };
    if !down_wanted {
        state.down_since = None;
    }

    // Hard bounds last: they override every rule above.
    if desired > params.max {
        desired = params.max;
        if desired <= current {
            reason = Reason::ClampMax;
        }
    }
    let min = params.min.min(params.max);
    if desired < min {
        desired = min;
        reason = Reason::ClampMin;
    }

    if desired > current {
        state.after_burst = false;
        state.last_scale_up = Some(now);
    } else if desired < current {
        state.last_scale_down = Some(now);
    }

    let detail = describe(obs, current, desired, &a, target, rate, rate_source);
    Decision {
        desired,
        reason,
        detail,
        basis: Basis {
            target,
            need: a.need,
            raw: a.raw,
            per_worker_rate: rate,
            rate_source,
        },
    }
}

fn describe(
    obs: &Observation,
    current: u32,
    desired: u32,
    a: &Assessment<'_>,
    target: u32,
    rate: f64,
    rate_source: &str,
) -> String {
    use fmt::Write as _;
    let mut s = format!(
        "{current}->{desired} target={target} need={:.2} raw={:.2} rate={rate:.2}/s({rate_source}) live={} busy={}",
        a.need, a.raw, obs.live_workers, obs.busy_workers
    );
    for p in &obs.priorities {
        let estimated = if p.backlog_estimated { "~" } else { "" };
        let age = p.oldest_age.map_or(0.0, |d| d.as_secs_f64());
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "; {}: backlog={estimated}{} in_flight={} age={age:.1}s/{:.1}s in={:.2}/s out={:.2}/s",
            p.priority,
            p.backlog,
            p.in_flight,
            p.sla.as_secs_f64(),
            p.arrival_rate,
            p.completion_rate
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn prio(name: &str, sla: u64, arrival: f64, backlog: u64, age: Option<f64>) -> PriorityObservation {
        PriorityObservation {
            priority: name.into(),
            sla: s(sla),
            backlog,
            backlog_estimated: false,
            in_flight: 0,
            oldest_age: age.map(Duration::from_secs_f64),
            arrival_rate: arrival,
            completion_rate: 0.0,
        }
    }

    /// Single-slot workers, `busy` of them running a task each (counted on the first priority
    /// unless it says otherwise).
    fn obs(mut priorities: Vec<PriorityObservation>, live: u32, busy: u32) -> Observation {
        if let Some(first) = priorities.first_mut().filter(|p| p.in_flight == 0) {
            first.in_flight = u64::from(busy);
        }
        Observation {
            priorities,
            live_workers: live,
            busy_workers: busy,
            in_flight_avg: f64::from(busy),
            slots_per_worker: 1.0,
            slot_rate: None,
        }
    }

    fn params() -> PolicyParams {
        PolicyParams {
            per_worker_rate: Some(1.0),
            ..PolicyParams::default()
        }
    }

    /// Scale-down one worker per step: the timing tests below count single steps.
    fn one_at_a_time() -> PolicyParams {
        PolicyParams {
            down_fraction: 0.0,
            ..params()
        }
    }

    fn run(o: &Observation, current: u32, now: u64, p: &PolicyParams, st: &mut PolicyState) -> Decision {
        decide(o, current, s(now), p, st)
    }

    fn fresh(o: &Observation, current: u32, p: &PolicyParams) -> Decision {
        decide(o, current, s(1000), p, &mut PolicyState::default())
    }

    /// A state whose scale-down condition has held for long enough already.
    fn calm_state() -> PolicyState {
        PolicyState {
            down_since: Some(s(0)),
            ..PolicyState::default()
        }
    }

    /// Over-provisioned and calm: 1 task/s needs 2 workers with headroom.
    fn calm(live: u32) -> Observation {
        obs(vec![prio("high", 10, 1.0, 0, None)], live, 0)
    }

    #[test]
    fn defaults_are_documented_constants_and_valid() {
        let p = PolicyParams::default();
        assert_eq!((p.min, p.max, p.max_step_up), (1, 16, 4));
        assert_eq!((p.cooldown, p.reversal_cooldown), (s(30), s(90)));
        assert_eq!(
            (p.headroom, p.low_watermark, p.default_per_worker_rate),
            (1.2, 0.25, 1.0)
        );
        assert_eq!((p.per_worker_rate, p.drain_fraction), (None, 0.75));
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_bad_params() {
        let bad = [
            PolicyParams {
                max: 0,
                min: 0,
                ..params()
            },
            PolicyParams {
                min: 5,
                max: 4,
                ..params()
            },
            PolicyParams {
                max_step_up: 0,
                ..params()
            },
            PolicyParams {
                per_worker_rate: Some(0.0),
                ..params()
            },
            PolicyParams {
                per_worker_rate: Some(-1.0),
                ..params()
            },
            PolicyParams {
                per_worker_rate: Some(f64::NAN),
                ..params()
            },
            PolicyParams {
                default_per_worker_rate: f64::INFINITY,
                ..params()
            },
            PolicyParams {
                default_per_worker_rate: 0.0,
                ..params()
            },
            PolicyParams {
                headroom: 0.9,
                ..params()
            },
            PolicyParams {
                headroom: f64::NAN,
                ..params()
            },
            PolicyParams {
                low_watermark: 0.0,
                ..params()
            },
            PolicyParams {
                low_watermark: 1.5,
                ..params()
            },
            PolicyParams {
                drain_fraction: 0.0,
                ..params()
            },
            PolicyParams {
                drain_fraction: f64::NAN,
                ..params()
            },
        ];
        for p in bad {
            let err = p.validate().expect_err(&format!("{p:?} accepted"));
            assert!(!err.to_string().is_empty());
        }
        let err = PolicyParams {
            min: 5,
            max: 4,
            ..params()
        }
        .validate();
        assert_eq!(err, Err(PolicyError::MinAboveMax { min: 5, max: 4 }));
        assert!(PolicyParams { min: 0, ..params() }.validate().is_ok());
    }

    #[test]
    fn breach_scales_up_at_once_even_inside_cooldown() {
        let mut st = PolicyState {
            last_scale_down: Some(s(99)),
            last_scale_up: Some(s(99)),
            ..PolicyState::default()
        };
        // Demand alone is met by 4 workers; the breach still adds one.
        let o = obs(vec![prio("high", 10, 1.0, 1, Some(12.0))], 4, 4);
        let d = run(&o, 4, 100, &params(), &mut st);
        assert_eq!(
            (d.desired, d.reason),
            (
                5,
                Reason::Breach {
                    priority: "high".into()
                }
            )
        );
        assert_eq!((st.last_scale_up, st.last_scale_down), (Some(s(100)), Some(s(99))));
    }

    #[test]
    fn breach_step_is_bounded_by_max_step_up() {
        let p = PolicyParams { max: 100, ..params() };
        let o = obs(vec![prio("high", 10, 50.0, 500, Some(30.0))], 2, 2);
        assert_eq!(fresh(&o, 2, &p).desired, 2 + DEFAULT_MAX_STEP_UP);
        let p = PolicyParams { max_step_up: 1, ..p };
        assert_eq!(fresh(&o, 2, &p).desired, 3);
    }

    #[test]
    fn breach_names_the_first_breaching_priority() {
        let o = obs(
            vec![prio("high", 10, 0.0, 1, Some(1.0)), prio("low", 60, 0.0, 1, Some(61.0))],
            2,
            2,
        );
        let d = fresh(&o, 2, &params());
        assert_eq!(d.reason, Reason::Breach { priority: "low".into() });
        assert_eq!(d.reason.to_string(), "breach(low)");
    }

    #[test]
    fn projected_breach_scales_up_before_the_sla_is_hit() {
        // 8 s old, 20 waiting, 4 workers at 1/s: clears in 5 s, 13 s > 10 s.
        let o = obs(vec![prio("high", 10, 0.0, 20, Some(8.0))], 4, 4);
        let mut st = PolicyState {
            last_scale_up: Some(s(0)),
            ..PolicyState::default()
        };
        let d = run(&o, 4, 1, &params(), &mut st);
        assert_eq!(
            d.reason,
            Reason::ProjectedBreach {
                priority: "high".into()
            }
        );
        assert!(d.desired > 4 && d.desired <= 8, "{d:?}");
    }

    #[test]
    fn projected_breach_accounts_for_higher_priorities() {
        // 4 workers, high eats 4/s: low's small backlog never drains.
        let o = obs(
            vec![prio("high", 10, 4.0, 0, None), prio("low", 60, 0.0, 2, Some(1.0))],
            4,
            4,
        );
        let d = fresh(&o, 4, &params());
        assert_eq!(d.reason, Reason::ProjectedBreach { priority: "low".into() });
    }

    #[test]
    fn breach_while_workers_start_waits_for_them() {
        // 8 requested, 4 live: the +1 is not re-added every tick of startup.
        let o = obs(vec![prio("high", 10, 1.0, 1, Some(11.0))], 4, 4);
        assert_eq!(fresh(&o, 8, &params()).reason, Reason::AwaitingStartup);
        assert_eq!(fresh(&o, 8, &params()).desired, 8);
        // ...but a target above the requested count is still pursued.
        let o = obs(vec![prio("high", 10, 10.0, 75, Some(11.0))], 4, 4);
        let d = fresh(&o, 8, &params());
        assert_eq!(
            (d.desired, d.reason),
            (
                12,
                Reason::Breach {
                    priority: "high".into()
                }
            )
        );
    }

    #[test]
    fn demand_scales_up_without_cooldown_and_bounded_step() {
        let mut st = PolicyState {
            last_scale_up: Some(s(10)),
            ..PolicyState::default()
        };
        let o = obs(vec![prio("high", 10, 10.0, 0, None)], 4, 4);
        let d = run(&o, 4, 11, &params(), &mut st);
        assert_eq!((d.desired, d.reason), (8, Reason::Demand));
        let d = run(&o, 8, 12, &params(), &mut st);
        assert_eq!(d.desired, 12, "target = ceil(10 * 1.2)");
    }

    #[test]
    fn waiting_past_the_low_watermark_is_demand_too() {
        // Arrivals fit in 10 workers, but 30 tasks have waited 3 s (> 2.5 s).
        let o = obs(vec![prio("high", 10, 9.0, 30, Some(3.0))], 10, 10);
        let d = fresh(&o, 10, &params());
        assert_eq!((d.desired, d.reason), (13, Reason::Demand), "9 + 30 / 7.5 = 13");
    }

    #[test]
    fn dead_band_between_arrivals_and_headroom_target_holds() {
        // raw = 10, target = 12: 11 workers keep up, so nothing moves.
        let o = obs(vec![prio("high", 10, 10.0, 0, None)], 11, 9);
        let mut st = PolicyState::default();
        let d = run(&o, 11, 100, &params(), &mut st);
        assert_eq!((d.desired, d.reason), (11, Reason::Steady));
        assert_eq!(
            (st.last_scale_up, st.last_scale_down, st.down_since),
            (None, None, None)
        );
    }

    #[test]
    fn headroom_spare_drains_small_backlogs_without_extra_workers() {
        // 10/s with 12 workers leaves 2/s spare: 10 waiting on a 10 s SLA
        // drain in 5 s < 7.5 s, so no extra worker is needed.
        let o = obs(vec![prio("high", 10, 10.0, 10, Some(0.5))], 12, 12);
        assert_eq!(fresh(&o, 12, &params()).desired, 12);
        // 40 waiting need 40 / 7.5 = 5.3/s of drain: 10 + 5.3 -> 16.
        let p = PolicyParams { max: 32, ..params() };
        let o = obs(vec![prio("high", 10, 10.0, 40, Some(0.5))], 16, 16);
        assert_eq!(fresh(&o, 16, &p).reason, Reason::Steady);
        assert_eq!(fresh(&o, 17, &p).reason, Reason::Cooldown, "17 is one too many");
    }

    #[test]
    fn scale_down_waits_for_a_full_calm_cooldown_then_steps_one_at_a_time() {
        let p = one_at_a_time();
        let mut st = PolicyState::default();
        let d = run(&calm(10), 10, 100, &p, &mut st);
        assert_eq!((d.desired, d.reason), (10, Reason::Cooldown), "calm just started");
        let d = run(&calm(10), 10, 129, &p, &mut st);
        assert_eq!(d.desired, 10);
        let d = run(&calm(10), 10, 130, &p, &mut st);
        assert_eq!((d.desired, d.reason), (9, Reason::ScaleDown));
        assert_eq!(st.last_scale_down, Some(s(130)));
        let d = run(&calm(9), 9, 159, &p, &mut st);
        assert_eq!((d.desired, d.reason), (9, Reason::Cooldown));
        let d = run(&calm(9), 9, 160, &p, &mut st);
        assert_eq!((d.desired, d.reason), (8, Reason::ScaleDown));
    }

    #[test]
    fn a_single_busy_moment_restarts_the_calm_period() {
        let p = one_at_a_time();
        let mut st = PolicyState::default();
        run(&calm(10), 10, 100, &p, &mut st);
        let busy = obs(vec![prio("high", 10, 9.0, 0, None)], 10, 9);
        assert_eq!(run(&busy, 10, 120, &p, &mut st).reason, Reason::Steady);
        assert_eq!(st.down_since, None);
        assert_eq!(run(&calm(10), 10, 131, &p, &mut st).reason, Reason::Cooldown);
        assert_eq!(run(&calm(10), 10, 161, &p, &mut st).desired, 9);
    }

    #[test]
    fn cooldown_counts_from_the_last_change_in_either_direction() {
        let mut st = PolicyState {
            last_scale_down: Some(s(80)),
            ..calm_state()
        };
        assert_eq!(
            run(&calm(10), 10, 100, &one_at_a_time(), &mut st).reason,
            Reason::Cooldown
        );
        assert_eq!(run(&calm(10), 10, 110, &one_at_a_time(), &mut st).desired, 9);
        // After a scale-up the wait is the longer reversal cooldown (8 running where 5/s
        // needs 6: a small surplus, which may be the tail of the noise that added them).
        let falling = obs(vec![prio("high", 10, 5.0, 0, None)], 8, 0);
        let mut st = PolicyState {
            last_scale_up: Some(s(50)),
            ..calm_state()
        };
        assert_eq!(run(&falling, 8, 139, &params(), &mut st).reason, Reason::Cooldown);
        assert_eq!(run(&falling, 8, 140, &params(), &mut st).desired, 7);
        // A large surplus (10 running where 2 are needed: a burst is over) waits only the
        // plain cooldown.
        let mut st = PolicyState {
            last_scale_up: Some(s(50)),
            ..calm_state()
        };
        assert_eq!(run(&calm(10), 10, 80, &params(), &mut st).desired, 2);
    }

    #[test]
    fn scale_down_waits_until_under_the_low_watermark() {
        // 3 s wait on a 10 s SLA is above 0.25 * SLA even though demand is low.
        let o = obs(vec![prio("high", 10, 1.0, 1, Some(3.0))], 10, 0);
        let d = run(&o, 10, 100, &one_at_a_time(), &mut calm_state());
        assert_eq!(
            (d.desired, d.reason),
            (
                10,
                Reason::AboveLowWatermark {
                    priority: "high".into()
                }
            )
        );
        let o = obs(vec![prio("high", 10, 1.0, 1, Some(2.0))], 10, 0);
        assert_eq!(run(&o, 10, 100, &one_at_a_time(), &mut calm_state()).desired, 9);
    }

    #[test]
    fn scale_down_goes_to_the_target_from_a_large_surplus_else_one_worker() {
        // 1/s needs 2 workers (1.2 with headroom, rounded up); 10 are running.
        let p = params();
        let d = run(&calm(10), 10, 100, &p, &mut calm_state());
        assert_eq!((d.desired, d.reason), (2, Reason::ScaleDown));
        // A small surplus (8 running, 6 needed for 5/s) goes one worker at a time.
        let falling = obs(vec![prio("high", 10, 5.0, 0, None)], 8, 0);
        assert_eq!(run(&falling, 8, 100, &p, &mut calm_state()).desired, 7);
        // Never below the busy workers.
        let busy = obs(vec![prio("high", 10, 1.0, 0, None)], 10, 7);
        assert_eq!(run(&busy, 10, 100, &p, &mut calm_state()).desired, 7);
        // A smaller fraction stops part of the way: 3/4 of a surplus of 8.
        let part = PolicyParams {
            down_fraction: 0.75,
            ..params()
        };
        assert_eq!(run(&calm(10), 10, 100, &part, &mut calm_state()).desired, 4);
    }

    #[test]
    fn after_a_burst_the_fleet_follows_the_target_down_until_something_scales_up() {
        let p = params();
        let load = |rate: f64| obs(vec![prio("high", 10, rate, 0, None)], 0, 0);
        let mut st = calm_state();
        // 16 running where 8/s needs 10: a large surplus, straight to the target.
        assert_eq!(run(&load(8.0), 16, 100, &p, &mut st).desired, 10);
        assert!(st.after_burst);
        // The rates keep decaying: 6/s needs 8. A small surplus, but the burst's rest goes
        // at once rather than a worker per cooldown.
        assert_eq!(run(&load(6.0), 10, 129, &p, &mut st).reason, Reason::Cooldown);
        assert_eq!(run(&load(6.0), 10, 130, &p, &mut st).desired, 8);
        // A scale-up ends it: the same small surplus later goes one worker at a time.
        assert_eq!(run(&load(9.0), 8, 131, &p, &mut st).desired, 11);
        assert!(!st.after_burst);
        assert_eq!(run(&load(6.0), 11, 221, &p, &mut st).reason, Reason::Cooldown);
        assert_eq!(run(&load(6.0), 11, 251, &p, &mut st).desired, 10);
    }

    #[test]
    fn never_below_busy_workers() {
        let o = obs(vec![prio("high", 10, 1.0, 0, None)], 6, 6);
        let d = run(&o, 6, 100, &params(), &mut calm_state());
        assert_eq!((d.desired, d.reason), (6, Reason::InFlightFloor));
        let o = obs(vec![prio("high", 10, 1.0, 0, None)], 6, 5);
        assert_eq!(run(&o, 6, 100, &params(), &mut calm_state()).desired, 5);
    }

    #[test]
    fn never_below_min() {
        let p = PolicyParams { min: 3, ..params() };
        let idle = obs(vec![prio("high", 10, 0.0, 0, None)], 3, 0);
        let d = run(&idle, 3, 100, &p, &mut calm_state());
        assert_eq!((d.desired, d.reason), (3, Reason::Idle));
        let d = run(&calm(3), 3, 100, &p, &mut calm_state());
        assert_eq!((d.desired, d.reason), (3, Reason::ClampMin));
        let d = run(&idle, 1, 100, &p, &mut calm_state());
        assert_eq!((d.desired, d.reason), (3, Reason::ClampMin));
    }

    #[test]
    fn never_above_max() {
        let p = PolicyParams { max: 6, ..params() };
        let hot = obs(vec![prio("high", 10, 50.0, 500, Some(30.0))], 6, 6);
        assert_eq!(fresh(&hot, 6, &p).reason, Reason::ClampMax);
        assert_eq!(fresh(&hot, 6, &p).desired, 6);
        let d = fresh(&hot, 4, &p);
        assert_eq!(
            (d.desired, d.reason),
            (
                6,
                Reason::Breach {
                    priority: "high".into()
                }
            )
        );
        // A lowered budget applies at once, busy workers or not.
        let d = fresh(&hot, 9, &p);
        assert_eq!((d.desired, d.reason), (6, Reason::ClampMax));
    }

    #[test]
    fn estimated_backlog_is_used_not_zeroed() {
        let mut high = prio("high", 10, 0.0, 40, None);
        high.backlog_estimated = true;
        let d = fresh(&obs(vec![high], 1, 1), 1, &params());
        assert_eq!(d.desired, 5, "{d:?}");
        assert!(d.detail.contains("backlog=~40"), "{}", d.detail);
    }

    #[test]
    fn scales_from_zero_on_any_backlog() {
        let p = PolicyParams { min: 0, ..params() };
        let o = obs(vec![prio("high", 10, 0.0, 1, Some(0.1))], 0, 0);
        assert_eq!(fresh(&o, 0, &p).desired, 1);
        let idle = obs(vec![prio("high", 10, 0.0, 0, None)], 0, 0);
        assert_eq!(fresh(&idle, 0, &p).reason, Reason::Idle);
    }

    #[test]
    fn per_worker_rate_falls_back_to_observed_then_default() {
        let mut p = PolicyParams {
            max: 100,
            per_worker_rate: None,
            ..params()
        };
        let mut high = prio("high", 10, 10.0, 0, None);
        high.completion_rate = 10.0;
        // 10 single-slot workers running a task each complete 10/s: 1/s each.
        let d = fresh(&obs(vec![high.clone()], 10, 10), 4, &p);
        assert!(d.detail.contains("rate=1.00/s(observed)"), "{}", d.detail);
        // 5 tasks in flight on 20 live workers doing 10/s: 2/s a slot; idle workers do not count.
        let d = fresh(&obs(vec![high.clone()], 20, 5), 20, &p);
        assert!(d.detail.contains("rate=2.00/s(observed)"), "{}", d.detail);
        // The collector's average of the in-flight count is what divides, not the snapshot.
        let o = Observation {
            in_flight_avg: 8.0,
            ..obs(vec![high.clone()], 10, 0)
        };
        let d = fresh(&o, 10, &p);
        assert!(d.detail.contains("rate=1.25/s(observed)"), "{}", d.detail);
        // Handler run times, when workers report them, win over Little's law: 2/s a slot, 4
        // slots a worker.
        let o = Observation {
            slot_rate: Some(2.0),
            slots_per_worker: 4.0,
            ..obs(vec![high.clone()], 10, 10)
        };
        assert!(fresh(&o, 4, &p).detail.contains("rate=8.00/s(measured)"));
        // Too little evidence (under half a task in flight on average): default.
        let o = Observation {
            in_flight_avg: 0.4,
            ..obs(vec![high.clone()], 10, 3)
        };
        assert!(fresh(&o, 10, &p).detail.contains("(default)"));
        // Nothing completed yet: default.
        high.completion_rate = 0.0;
        p.default_per_worker_rate = 5.0;
        let d = fresh(&obs(vec![high.clone()], 1, 0), 1, &p);
        assert!(d.detail.contains("rate=5.00/s(default)"), "{}", d.detail);
        assert_eq!(d.desired, 3, "ceil(10 * 1.2 / 5)");
        // A configured rate wins over observations.
        p.per_worker_rate = Some(2.0);
        let d = fresh(&obs(vec![high], 1, 0), 1, &p);
        assert!(d.detail.contains("(configured)"), "{}", d.detail);
    }

    #[test]
    fn multi_slot_workers_that_are_all_busy_but_mostly_idle_scale_down() {
        // 8 processes of 16 slots, 10 tasks in flight spread over all of them: every process is
        // busy, yet 10/s at 1 s a task needs 10 slots, one process. Per slot 1/s, per process
        // 16/s: target ceil(10 x 1.2 / 16) = 1. Counting busy processes instead would read
        // 1.25/s a process and hold all 8 for ever (target ceil(12 / 1.25) = 10 > 8).
        let p = PolicyParams {
            per_worker_rate: None,
            ..params()
        };
        let mut high = prio("high", 10, 10.0, 0, None);
        high.completion_rate = 10.0;
        high.in_flight = 10;
        let o = Observation {
            in_flight_avg: 10.0,
            slots_per_worker: 16.0,
            ..obs(vec![high], 8, 8)
        };
        let d = run(&o, 8, 100, &p, &mut calm_state());
        assert!(d.detail.contains("rate=16.00/s(observed)"), "{}", d.detail);
        // Down to the one process the 10 tasks in flight need: the others drain and exit.
        assert_eq!((d.desired, d.reason), (1, Reason::ScaleDown), "{}", d.detail);
        // 20 tasks in flight need two processes' slots, whatever the target says.
        let mut o = o;
        o.priorities[0].in_flight = 20;
        assert_eq!(run(&o, 8, 100, &p, &mut calm_state()).desired, 2);
    }

    #[test]
    fn garbage_observations_do_not_poison_the_decision() {
        let o = obs(
            vec![prio("high", 0, f64::NAN, 0, None), prio("low", 10, -5.0, 0, None)],
            1,
            0,
        );
        let d = fresh(&o, 1, &params());
        assert_eq!((d.desired, d.reason), (1, Reason::Idle));
    }

    #[test]
    fn reason_labels_are_unique_snake_case() {
        let p = String::from("x");
        let all = [
            Reason::Breach { priority: p.clone() },
            Reason::ProjectedBreach { priority: p.clone() },
            Reason::Demand,
            Reason::Steady,
            Reason::ScaleDown,
            Reason::Cooldown,
            Reason::AboveLowWatermark { priority: p },
            Reason::ClampMin,
            Reason::ClampMax,
            Reason::InFlightFloor,
            Reason::AwaitingStartup,
            Reason::Idle,
        ];
        let mut labels: Vec<_> = all.iter().map(Reason::as_str).collect();
        assert!(
            labels
                .iter()
                .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
    }
}
