//! Whole-loop guarantees of the policy, measured by the simulator on the
//! standard scenarios (`sim::scenarios`, fixed seed) through the public API.
//! The bounds were written down before the policy constants were tuned.

use autoscaler::sim::{Arrivals, Scenario, SimReport, scenarios, simulate, timeline_svg};

/// Step x10 with a 2 s startup delay and a 10 s SLA: at most 15 s in breach.
const STEP_BREACH_BOUND_S: f64 = 15.0;
/// Worker-seconds at most this multiple of the (constrained) oracle.
const COST_BOUND: f64 = 1.3;

fn scenario(name: &str) -> Scenario {
    scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

fn run(name: &str) -> SimReport {
    simulate(&scenario(name).config)
}

#[test]
fn no_task_is_ever_lost() {
    for s in scenarios() {
        assert_eq!(simulate(&s.config).lost, 0, "{}", s.name);
        let mut deterministic = s.config.clone();
        deterministic.arrivals = Arrivals::Deterministic;
        assert_eq!(simulate(&deterministic).lost, 0, "{} (deterministic)", s.name);
    }
}

#[test]
fn step_x10_breach_is_bounded() {
    let r = run("step_x10");
    assert!(r.breach_seconds <= STEP_BREACH_BOUND_S, "breach {} s", r.breach_seconds);
}

#[test]
fn no_shape_breaches_its_sla_for_long() {
    for s in scenarios() {
        let r = simulate(&s.config);
        assert!(
            r.breach_seconds <= STEP_BREACH_BOUND_S,
            "{}: breach {} s",
            s.name,
            r.breach_seconds
        );
    }
}

#[test]
fn shapes_cost_within_1_3x_of_the_oracle() {
    for s in scenarios() {
        let r = simulate(&s.config);
        assert!(r.oracle_ratio() <= COST_BOUND, "{}: {:.3}", s.name, r.oracle_ratio());
    }
}

/// Why a scale-down step after a burst removes the surplus rather than one worker: one worker per
/// `cooldown` means a burst of `n` workers costs at least `cooldown · n(n+1)/2` worker-seconds
/// after it ends, which the plain oracle does not pay. Even that rule-bound oracle, run at the
/// policy's target utilisation, exceeds 1.3x the plain oracle on the burst shapes.
#[test]
fn one_worker_per_cooldown_could_not_meet_1_3x_on_bursts() {
    for name in ["spike", "idle_burst_idle"] {
        let s = scenario(name);
        let r = simulate(&s.config);
        let floor = r.constrained_oracle_worker_seconds * s.config.params.headroom;
        assert!(floor > COST_BOUND * r.oracle_worker_seconds, "{name}");
    }
}

#[test]
fn bursts_cost_within_1_3x_of_the_one_worker_per_cooldown_oracle() {
    for name in ["spike", "idle_burst_idle"] {
        let r = run(name);
        let ratio = r.constrained_oracle_ratio();
        assert!(ratio <= COST_BOUND, "{name}: {ratio:.3}");
    }
}

/// Direction changes allowed on the sine: one per half period.
fn sine_flap_bound(s: &Scenario) -> u32 {
    let period = 1200.0;
    (s.config.duration.as_secs_f64() / (period / 2.0)).ceil() as u32
}

#[test]
fn sine_does_not_flap() {
    let s = scenario("sine");
    let r = simulate(&s.config);
    let bound = sine_flap_bound(&s);
    assert!(
        r.direction_changes <= bound,
        "{} direction changes in {bound} half periods",
        r.direction_changes
    );
}

#[test]
fn never_exceeds_the_worker_budget() {
    for s in scenarios() {
        let r = simulate(&s.config);
        assert!(r.max_workers <= s.config.params.max, "{}", s.name);
        let min = s.config.params.min;
        assert!(r.timeline.iter().all(|x| x.workers >= min), "{}", s.name);
    }
}

#[test]
fn same_seed_gives_an_identical_report() {
    let cfg = scenario("sine").config;
    assert_eq!(simulate(&cfg), simulate(&cfg));
    let mut other = cfg.clone();
    other.seed ^= 1;
    assert_ne!(simulate(&cfg).timeline, simulate(&other).timeline);
}

/// Without `--per-worker-rate` the rate is measured from the handler run times workers report:
/// measured at completion, it has no lag, and every shape keeps the same bounds.
#[test]
fn a_measured_per_worker_rate_meets_the_same_bounds() {
    for s in scenarios() {
        let mut cfg = s.config.clone();
        cfg.params.per_worker_rate = None;
        check_estimated(&s, &simulate(&cfg), COST_BOUND);
    }
}

/// Workers that report no run times (older versions) leave Little's law (completions per task
/// in flight), which costs more on idle -> burst -> idle: from idle, a burst's first
/// completions trail its first running tasks by one service time, so for its first seconds the
/// rate reads up to 40 % low and the fleet over-shoots the burst by about four workers, which
/// then go one per cooldown.
const LITTLE_COLD_BURST_COST_BOUND: f64 = 1.4;

#[test]
fn without_handler_times_littles_law_meets_the_bounds_but_a_cold_burst() {
    for s in scenarios() {
        let mut cfg = s.config.clone();
        cfg.params.per_worker_rate = None;
        cfg.handler_times = false;
        let bound = match s.name {
            "idle_burst_idle" => LITTLE_COLD_BURST_COST_BOUND,
            _ => COST_BOUND,
        };
        check_estimated(&s, &simulate(&cfg), bound);
    }
}

fn check_estimated(s: &Scenario, r: &SimReport, cost_bound: f64) {
    assert_eq!(r.lost, 0, "{}", s.name);
    assert!(
        r.breach_seconds <= STEP_BREACH_BOUND_S,
        "{}: breach {} s",
        s.name,
        r.breach_seconds
    );
    assert!(r.max_workers <= s.config.params.max, "{}", s.name);
    assert!(r.oracle_ratio() <= cost_bound, "{}: {:.3}", s.name, r.oracle_ratio());
    if s.name == "sine" {
        assert!(r.direction_changes <= sine_flap_bound(s), "{}", r.direction_changes);
    }
}

#[test]
fn step_timeline_renders_as_svg() {
    let svg = timeline_svg(&run("step_x10"), "step x10");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let lines = svg.matches("<polyline").count();
    assert_eq!(lines, 7, "workers, oracle, backlog, 2 ages, 2 SLAs");
    assert!(svg.contains("SLA high") && svg.contains("time (s)"));
}
