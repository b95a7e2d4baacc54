//! Runs every standard scenario through the simulator, prints the summary
//! table and writes `step.svg` (the step x10 timeline) to the current
//! directory, or to the path given as the first argument.

use autoscaler::sim::{scenarios, simulate, timeline_svg};

fn main() -> std::io::Result<()> {
    let svg_path = std::env::args().nth(1).unwrap_or_else(|| "step.svg".into());
    println!(
        "{:<16} {:>8} {:>9} {:>9} {:>6} {:>10} {:>7} {:>6} {:>7} {:>4} {:>4}",
        "shape",
        "breach_s",
        "worker_s",
        "oracle_s",
        "ratio",
        "c_oracle_s",
        "c_ratio",
        "events",
        "dir_chg",
        "max",
        "lost"
    );
    for scenario in scenarios() {
        let r = simulate(&scenario.config);
        println!(
            "{:<16} {:>8.1} {:>9.0} {:>9.0} {:>6.3} {:>10.0} {:>7.3} {:>6} {:>7} {:>4} {:>4}",
            scenario.name,
            r.breach_seconds,
            r.worker_seconds,
            r.oracle_worker_seconds,
            r.oracle_ratio(),
            r.constrained_oracle_worker_seconds,
            r.constrained_oracle_ratio(),
            r.scale_events,
            r.direction_changes,
            r.max_workers,
            r.lost
        );
        if scenario.name == "step_x10" {
            std::fs::write(
                &svg_path,
                timeline_svg(&r, "Rivulet autoscaler: step x10 (high 2 -> 20 tasks/s at t=300 s)"),
            )?;
        }
    }
    println!("wrote {svg_path}");
    Ok(())
}
