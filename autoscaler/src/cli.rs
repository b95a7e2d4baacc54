//! The command line as clap sees it, and its resolution into the daemon's [`Settings`]
//! (mistakes are [`UsageError`]s naming the flag), and the one place an error becomes an exit
//! code. `main.rs` only wires these to the daemon.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, ValueEnum};
use rivulet_fleet::LogFormat;

use crate::actuator::SCALE_CMD_NEEDS_REPLICAS;
use crate::daemon::{self, Actuation, Settings, UsageError, usage};
use crate::policy::{self, PolicyError, PolicyParams};

/// Workers read the Redis URL from REDIS_URL, which the actuator sets: no password in `ps`.
const DEFAULT_WORKER_CMD: &str = "worker-cli work --queue {queue}";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ActuatorKind {
    /// Run workers as child processes of the autoscaler.
    Process,
    /// Run --scale-cmd with {replicas} (e.g. an orchestrator's scale command).
    Command,
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
pub struct Cli {
    /// Redis URL: redis:// or rediss:// (one node), redis+cluster://h1:7000,h2:7001 (a Redis
    /// Cluster), redis+sentinel://s1:26379,s2:26379/master-name [env: REDIS_URL] [default:
    /// redis://127.0.0.1:6379]
    #[arg(long)]
    redis_url: Option<String>,
    /// TLS (rediss:// URLs): PEM file of the CA to trust instead of the system's roots. Workers
    /// started by the process actuator get it as REDIS_TLS_CA_FILE, like the other --tls-*.
    #[arg(long, value_name = "PATH", env = "REDIS_TLS_CA_FILE")]
    tls_ca_file: Option<std::path::PathBuf>,
    /// TLS: PEM file of a client certificate, for a Redis that requires one. Needs
    /// --tls-key-file.
    #[arg(long, value_name = "PATH", env = "REDIS_TLS_CERT_FILE")]
    tls_cert_file: Option<std::path::PathBuf>,
    /// TLS: PEM file of the client certificate's private key.
    #[arg(long, value_name = "PATH", env = "REDIS_TLS_KEY_FILE")]
    tls_key_file: Option<std::path::PathBuf>,
    /// TLS: do not verify the server's certificate (for tests only; logged as a warning).
    #[arg(long, env = "REDIS_TLS_INSECURE", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    tls_insecure: bool,
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
    /// Tasks per second one worker process completes. When not given it is measured: one
    /// handler slot's rate (handlers finished over the time they ran, from the workers'
    /// heartbeats) times the slots a worker has.
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
    /// Worker command for the process actuator, run with `sh -c "exec WORKER_CMD"` in its own
    /// process group; {queue} is replaced. Workers get the Redis URL as REDIS_URL in their
    /// environment ({redis_url} is replaced too, but puts the password on the command line).
    #[arg(long, default_value = DEFAULT_WORKER_CMD)]
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
    /// Serve Prometheus metrics at http://ADDR/metrics, and the probes /healthz (the process
    /// answers) and /readyz (503 once the queue has not been observed for 3 intervals, at least
    /// 10s: Redis away). Watch rivulet_autoscaler_up: the other gauges keep their last values
    /// while it is 0.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Bearer token /metrics requires (Authorization: Bearer TOKEN); needed to serve beyond
    /// loopback, which is refused without one. The probes stay open.
    #[arg(long, env = rivulet_fleet::probes::TOKEN_ENV, hide_env_values = true)]
    metrics_token: Option<String>,
    /// Log format on stderr (filter with RUST_LOG, default info). Workers it starts log in the
    /// same format (it travels to them in RIVULET_LOG_FORMAT, which worker-cli reads).
    #[arg(long, value_enum, env = rivulet_fleet::logging::LOG_FORMAT_ENV, default_value = "text")]
    pub log_format: LogFormat,
}

/// The flag a policy field is set with (fields without a flag keep their name).
fn flag_of(field: &str) -> &str {
    match field {
        "per_worker_rate" => "--per-worker-rate",
        "headroom" => "--headroom",
        "down_fraction" => "--down-fraction",
        other => other,
    }
}

/// A rejected policy parameter in terms of the flags.
fn policy_message(e: &PolicyError) -> String {
    match e {
        PolicyError::MaxIsZero => "--max must be at least 1".to_owned(),
        PolicyError::MinAboveMax { min, max } => format!("--min {min} exceeds --max {max}"),
        PolicyError::ZeroStepUp => "--max-step-up must be at least 1".to_owned(),
        PolicyError::OutOfRange { field, value, expected } => {
            format!("{} {value} must be {expected}", flag_of(field))
        }
    }
}

/// Resolves the flags; mistakes are [`UsageError`]s naming the flag.
pub fn settings(cli: Cli) -> anyhow::Result<Settings> {
    let (redis_url, redis_url_from) = match (cli.redis_url, std::env::var("REDIS_URL")) {
        (Some(url), _) => (url, "--redis-url"),
        (None, Ok(url)) if !url.is_empty() => (url, "REDIS_URL"),
        _ => ("redis://127.0.0.1:6379".to_owned(), "the default Redis URL"),
    };
    rivulet::QueueName::new(&cli.queue).map_err(|e| usage(format!("--queue: {e}")))?;
    let actuation = match cli.actuator {
        ActuatorKind::Process => {
            if cli.worker_cmd.trim().is_empty() {
                return Err(usage("--worker-cmd must not be empty"));
            }
            Actuation::Process {
                command: cli.worker_cmd,
                drain_on_exit: !cli.leave_workers,
                hard_deadline: cli.hard_deadline,
            }
        }
        ActuatorKind::Command => {
            let template = cli.scale_cmd.ok_or_else(|| {
                usage(
                    "--actuator command needs --scale-cmd, e.g. \"kubectl scale deploy/workers --replicas={replicas}\"",
                )
            })?;
            if !template.contains("{replicas}") {
                return Err(usage(SCALE_CMD_NEEDS_REPLICAS));
            }
            Actuation::Command { template }
        }
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
    params.validate().map_err(|e| usage(policy_message(&e)))?;
    if cli.interval.is_zero() {
        return Err(usage("--interval must be longer than zero"));
    }
    let tls = rivulet::TlsOptions {
        ca_file: cli.tls_ca_file,
        client_cert: cli.tls_cert_file,
        client_key: cli.tls_key_file,
        insecure: cli.tls_insecure,
    };
    tls.validate().map_err(|e| usage(format!("--tls-*: {e}")))?;
    Ok(Settings {
        redis_url,
        redis_url_from,
        tls,
        queue: cli.queue,
        slas: daemon::parse_slas(&cli.sla)?,
        params,
        interval: cli.interval,
        smoothing: cli.smoothing,
        actuation,
        dry_run: cli.dry_run,
        metrics_addr: cli.metrics_addr,
        metrics_token: cli.metrics_token,
    })
}

/// An error's chain as one line, each message once (a wrapped error often repeats its source).
fn describe(e: &anyhow::Error) -> String {
    rivulet_fleet::logging::describe_error(e.as_ref())
}

/// Prints the error: usage errors as clap prints its own (exit 2), the rest exit 1.
pub fn report(e: &anyhow::Error) -> ExitCode {
    if e.chain().any(|c| c.is::<UsageError>()) {
        let err = Cli::command().error(clap::error::ErrorKind::ValueValidation, describe(e));
        let _ = err.print();
        ExitCode::from(2)
    } else {
        // A JSON log stays JSON to its last line.
        if rivulet_fleet::logging::installed_format() == Some(rivulet_fleet::LogFormat::Json) {
            tracing::error!(error = %describe(e), "failed");
        } else {
            let _ = writeln!(std::io::stderr(), "autoscaler: error: {}", describe(e));
        }
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_are_the_ones_the_simulator_proves() {
        let cli = Cli::try_parse_from(["autoscaler", "--queue", "q"]).unwrap();
        assert_eq!(cli.smoothing, crate::observe::DEFAULT_SMOOTHING);
        assert_eq!(cli.smoothing, crate::sim::DEFAULT_RATE_WINDOW);
        assert_eq!(cli.down_fraction, policy::DEFAULT_DOWN_FRACTION);
        assert_eq!(cli.headroom, policy::DEFAULT_HEADROOM);
        assert!(!cli.worker_cmd.contains("{redis_url}"), "{}", cli.worker_cmd);
    }

    fn settings_error(args: &[&str]) -> anyhow::Error {
        let queue: &[&str] = if args.contains(&"--queue") {
            &[]
        } else {
            &["--queue", "q"]
        };
        let cli = Cli::try_parse_from(["autoscaler"].iter().chain(queue).chain(args)).unwrap();
        settings(cli).unwrap_err()
    }

    #[test]
    fn bad_flag_values_are_usage_errors_naming_the_flag() {
        for (args, want) in [
            (
                &["--sla", "high=abc"][..],
                "--sla \"high=abc\": \"abc\" is not a duration",
            ),
            (&["--min", "5", "--max", "2"], "--min 5 exceeds --max 2"),
            (&["--max", "0"], "--max must be at least 1"),
            (&["--max-step-up", "0"], "--max-step-up must be at least 1"),
            (&["--interval", "0s"], "--interval must be longer than zero"),
            (&["--headroom", "0.5"], "--headroom 0.5 must be"),
            (&["--down-fraction", "2"], "--down-fraction 2 must be in [0, 1]"),
            (&["--per-worker-rate", "0"], "--per-worker-rate 0 must be"),
            (&["--queue", "bad{"], "--queue: invalid queue name \"bad{\""),
            (&["--actuator", "command"], "--actuator command needs --scale-cmd"),
            (
                &["--actuator", "command", "--scale-cmd", "echo"],
                "--scale-cmd must contain {replicas}",
            ),
            (&["--worker-cmd", " "], "--worker-cmd must not be empty"),
        ] {
            let e = settings_error(args);
            assert!(e.is::<UsageError>(), "{args:?}: {e:#}");
            assert!(describe(&e).starts_with(want), "{args:?}: {e:#}");
        }
    }

    #[test]
    fn repeated_causes_are_told_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(io)
            .context("redis: Connection refused")
            .context("cannot reach Redis");
        assert_eq!(describe(&e), "cannot reach Redis: redis: Connection refused");
    }
}
