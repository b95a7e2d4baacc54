//! Robustness check behind the fixed-seed tests: runs every standard
//! scenario over many seeds and prints mean and worst figures, so a bound
//! that only holds for the lucky test seed shows up as such.
//! Usage: `cargo run --release --example seed_sweep [seeds] [estimate|little]`;
//! `estimate` runs with `per_worker_rate: None` (measured from handler run times), `little`
//! also without handler run times (Little's law).

use autoscaler::sim::{scenarios, simulate};

fn main() {
    let mut args = std::env::args().skip(1);
    let seeds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let mode = args.next().unwrap_or_default();
    let (estimate, little) = (mode == "estimate" || mode == "little", mode == "little");
    println!(
        "{:<16} {:>10} {:>10} {:>12} {:>12} {:>11} {:>11}",
        "shape", "ratio_mean", "ratio_max", "c_ratio_mean", "c_ratio_max", "dir_chg_max", "breach_max"
    );
    for scenario in scenarios() {
        let (mut ratio, mut c_ratio) = (Vec::new(), Vec::new());
        let (mut flips, mut breach) = (0, 0.0f64);
        for seed in 0..seeds {
            let mut cfg = scenario.config.clone();
            cfg.seed = 1000 + seed;
            cfg.handler_times = !little;
            if estimate {
                cfg.params.per_worker_rate = None;
            }
            let r = simulate(&cfg);
            assert_eq!(r.lost, 0, "{} seed {}", scenario.name, cfg.seed);
            ratio.push(r.oracle_ratio());
            c_ratio.push(r.constrained_oracle_ratio());
            flips = flips.max(r.direction_changes);
            breach = breach.max(r.breach_seconds);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<16} {:>10.3} {:>10.3} {:>12.3} {:>12.3} {:>11} {:>11.1}",
            scenario.name,
            mean(&ratio),
            max(&ratio),
            mean(&c_ratio),
            max(&c_ratio),
            flips,
            breach
        );
    }
}
