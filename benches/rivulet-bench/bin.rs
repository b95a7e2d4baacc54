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
//! - `idle` (not by default): idle `worker-cli work` processes serving 1 to 200 queues, Redis
//!   commands per second per process;
//! - `rate-sweep` (not by default): one worker process at 10/s to 10,000/s, then saturation:
//!   Redis commands, Redis CPU and worker CPU per task, latency, against the rate (plotted);
//! - `many-queues`, `many-workers` (not by default): one worker process serving 200 queues x
//!   3 priorities against the same on one queue; 4, 16, 64 worker processes on one backlog,
//!   with the spread of the tasks over the processes, each beside a fleet of as many bare-loop
//!   processes (hidden `bare-worker` subcommand) on the same backlog size;
//! - Redis CPU (`INFO cpu`) and commands (`INFO commandstats`) per task in every window.
//!
//! Output: tables on stdout, JSON and plots (SVG, PNG) in `bench-results/<timestamp>/`.
//! Progress goes to stderr. `docs/benchmarks.md` explains the method and the results.
//!
//! # Layout
//! - `target`: the Redis under test, INFO snapshots and per-task usage;
//! - `fleet` / `worker`: worker processes, parent side and child side; `bare_fleet`: the
//!   bare-loop processes of many-workers, both sides;
//! - `drain`, `ceiling`, `enqueue`, `latency`, `idle`, `sweep`: the scenarios (`drain` also
//!   serves many-queues and many-workers);
//! - `payload`: the timestamped task payload; `stats`: histograms and medians;
//! - `suite`: the flags, the plan, the scenarios in order (what `main` runs);
//! - `report`: metrics, targets and tables; `results`: the files a run writes; `plot`: the
//!   figures.

mod bare_fleet;
mod ceiling;
mod compare;
mod drain;
mod enqueue;
mod fleet;
mod groups;
mod idle;
mod latency;
mod payload;
mod plot;
mod report;
mod results;
mod stats;
mod suite;
mod sweep;
mod target;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// End-to-end benchmarks of Rivulet against a private redis-server on this machine.
#[derive(Debug, Parser)]
#[command(name = "rivulet-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: suite::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One worker process of a run (started by the harness itself).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// One bare-loop process of a many-workers run (started by the harness itself).
    #[command(hide = true)]
    BareWorker(bare_fleet::BareWorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_none()
        && let Err(e) = cli.run.validate()
    {
        eprintln!("rivulet-bench: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rivulet-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Worker(args)) => runtime.block_on(worker::run(args)),
        Some(Command::BareWorker(args)) => runtime.block_on(bare_fleet::worker(args)),
        None => runtime.block_on(suite::run(cli.run)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rivulet-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_parses_and_plans() {
        let cli = Cli::try_parse_from(["rivulet-bench", "--quick", "--only", "drain,latency"]).unwrap();
        assert!(cli.command.is_none());
        let plan = cli.run.plan();
        assert_eq!(plan.tasks, 50_000);
        assert_eq!(plan.workers, [1, 2]);
        assert!(cli.run.wants("latency") && !cli.run.wants("ceiling"));
        // The scale scenarios' quick plan: small, bounded, each scenario still meaningful.
        assert_eq!(plan.idle_queues, [1, 200]);
        assert_eq!(plan.many_workers, [2, 4]);
        assert_eq!(plan.many_queues, 200);
        assert_eq!(plan.sweep_rates, [10, 100, 1_000, 2_000, 10_000]);
        let full = Cli::try_parse_from(["rivulet-bench", "--only", "idle,many-workers"]).unwrap();
        let plan = full.run.plan();
        assert_eq!(plan.idle_queues, [1, 10, 50, 200]);
        assert_eq!(
            (plan.idle_processes, plan.many_workers.as_slice()),
            (4, &[4, 16, 64][..])
        );
        assert_eq!(plan.many_tasks, 100_000);
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
