//! `autoscaler`: scales Rivulet worker processes to keep each priority inside its SLA.
//! Flags are resolved here; the loop lives in `autoscaler::daemon`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use autoscaler::daemon::{self, Actuation, Settings};
use autoscaler::policy::{self, PolicyParams};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ActuatorKind {
    /// Run workers as child processes of the autoscaler.
    Process,
    /// Run --scale-cmd with {replicas} (e.g. an orchestrator's scale command).
    Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Keeps each priority's waiting time inside its SLA with as few workers as that takes.
///
/// Every INTERVAL it reads the queue's backlog, in-flight tasks, the age of the oldest waiting
/// task and smoothed arrival and completion rates per priority, decides a worker count with a
/// pure policy (scale up at once on a breach or projected breach; down one step after a calm
/// cooldown: straight to the target after a burst, one worker otherwise; never below the busy
/// workers), and acts. Each decision is logged with its inputs, exported as metrics and
/// stored in Redis so `worker-cli stats` shows it.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Redis URL [env: REDIS_URL] [default: redis://127.0.0.1:6379]
    #[arg(long)]
    redis_url: Option<String>,
    /// Queue whose workers are scaled.
    #[arg(long)]
    queue: String,
    /// SLA per priority: the longest a task may wait before it starts. Priorities not named get
    /// the loosest SLA given.
    #[arg(long, default_value = "high=500ms,normal=5s,low=60s")]
    sla: String,
    /// Fewest workers, also when idle.
    #[arg(long, default_value_t = policy::DEFAULT_MIN_WORKERS)]
    min: u32,
    /// Most workers.
    #[arg(long, default_value_t = policy::DEFAULT_MAX_WORKERS)]
    max: u32,
    /// Time between decisions.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Time after any change before the next scale-down.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    cooldown: Duration,
    /// Time after a scale-up before any scale-down: a scale-up is never undone by the tail of
    /// the same burst.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    reversal_cooldown: Duration,
    /// Most workers added by one decision.
    #[arg(long, default_value_t = policy::DEFAULT_MAX_STEP_UP)]
    max_step_up: u32,
    /// Share of a large surplus (fleet at least 1.5x the target, as after a burst) one
    /// scale-down step removes, at least one worker; 1 goes straight to the target. Later
    /// steps do the same until the next scale-up, following the decaying rates down. Other
    /// surpluses go one worker per step; 0 always steps down one worker at a time.
    #[arg(long, default_value_t = policy::DEFAULT_DOWN_FRACTION)]
    down_fraction: f64,
    /// Tasks per second one worker process completes. When not given it is measured: the
    /// completions per running task (one handler slot) times the slots a worker has.
    #[arg(long)]
    per_worker_rate: Option<f64>,
    /// Capacity margin over the arrival rate (1.2 aims at about 83 % utilisation).
    #[arg(long, default_value_t = policy::DEFAULT_HEADROOM)]
    headroom: f64,
    /// Time constant of the arrival and completion rate smoothing.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    smoothing: Duration,
    /// How workers are started and stopped.
    #[arg(long, value_enum, default_value = "process")]
    actuator: ActuatorKind,
    /// Worker command for the process actuator, run with `sh -c`; {redis_url} and {queue} are
    /// replaced.
    #[arg(long, default_value = "worker-cli work --redis-url {redis_url} --queue {queue}")]
    worker_cmd: String,
    /// Scale command for the command actuator; must contain {replicas}.
    #[arg(long)]
    scale_cmd: Option<String>,
    /// Time a stopping worker gets to drain before it is killed.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    hard_deadline: Duration,
    /// On exit, leave the workers running instead of draining them.
    #[arg(long)]
    leave_workers: bool,
    /// Decide and log, never start or stop anything.
    #[arg(long)]
    dry_run: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Log format on stderr (filter with RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn settings(cli: Cli) -> anyhow::Result<Settings> {
    let redis_url = cli
        .redis_url
        .or_else(|| std::env::var("REDIS_URL").ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let actuation = match cli.actuator {
        ActuatorKind::Process => Actuation::Process {
            command: cli
                .worker_cmd
                .replace("{redis_url}", &redis_url)
                .replace("{queue}", &cli.queue),
            drain_on_exit: !cli.leave_workers,
            hard_deadline: cli.hard_deadline,
        },
        ActuatorKind::Command => Actuation::Command {
            template: cli
                .scale_cmd
                .context("--actuator command needs --scale-cmd \"... {replicas}\"")?,
        },
    };
    let params = PolicyParams {
        min: cli.min,
        max: cli.max,
        per_worker_rate: cli.per_worker_rate,
        cooldown: cli.cooldown,
        reversal_cooldown: cli.reversal_cooldown,
        max_step_up: cli.max_step_up,
        down_fraction: cli.down_fraction,
        headroom: cli.headroom,
        ..PolicyParams::default()
    };
    params.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    if cli.interval.is_zero() {
        anyhow::bail!("--interval must be positive");
    }
    rivulet::QueueName::new(&cli.queue)?;
    Ok(Settings {
        redis_url,
        queue: cli.queue,
        slas: daemon::parse_slas(&cli.sla)?,
        params,
        interval: cli.interval,
        smoothing: cli.smoothing,
        actuation,
        dry_run: cli.dry_run,
        metrics_addr: cli.metrics_addr,
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let result = settings(cli).and_then(|s| {
        tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")?
            .block_on(daemon::run(s, shutdown_signal()))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("autoscaler: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_are_the_ones_the_simulator_proves() {
        let cli = Cli::try_parse_from(["autoscaler", "--queue", "q"]).unwrap();
        assert_eq!(cli.smoothing, autoscaler::observe::DEFAULT_SMOOTHING);
        assert_eq!(cli.smoothing, autoscaler::sim::DEFAULT_RATE_WINDOW);
        assert_eq!(cli.down_fraction, policy::DEFAULT_DOWN_FRACTION);
        assert_eq!(cli.headroom, policy::DEFAULT_HEADROOM);
    }
}
