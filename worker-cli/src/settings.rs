//! Settings resolution: parsed flags (clap has already folded `REDIS_URL` in) become the typed
//! settings each part runs with, checked once here, and the reverse: the flags a supervisor
//! passes to its worker processes. The per-flag parsers are `values`'.

use std::ffi::OsString;
use std::time::Duration;

use rivulet::{Durability, PriorityMode, Queue, QueueName, RetryPolicy, TlsOptions, WorkerConfig};
use rivulet_fleet::{FleetConfig, LogFormat};

use crate::cli::{GlobalArgs, RunArgs, WorkerArgs};
use crate::values::{ExecSpec, format_priority_mode};

pub use rivulet_fleet::UsageError;

/// Time children get on top of their drain timeout to requeue, deregister and exit before
/// the supervisor kills them.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Everything one worker process needs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Redis to use.
    pub redis_url: String,
    /// TLS options for `rediss://` URLs.
    pub tls: TlsOptions,
    /// Queues to serve, validated and without duplicates.
    pub queues: Vec<QueueName>,
    /// The engine's worker configuration, validated.
    pub config: WorkerConfig,
    /// Kinds served by external commands.
    pub exec: Vec<ExecSpec>,
    /// Kinds served by long-lived handler processes.
    pub serve: crate::serve::ServeSettings,
    /// A worker the demo started: it serves the `demo` kind and saves its latency samples.
    pub demo_samples: bool,
    /// What settles wait for, for every queue served.
    pub durability: Durability,
    /// Where this process serves its metrics and probes (`work --metrics-addr`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The bearer token its `/metrics` requires.
    pub metrics_token: Option<String>,
    /// How long finished tasks' records are kept (0 = none) when a task names no retention.
    pub retention: Duration,
}

impl WorkerSettings {
    /// Resolves and checks a worker's flags.
    pub fn resolve(global: &GlobalArgs, args: &WorkerArgs) -> Result<Self, UsageError> {
        let mut queues: Vec<QueueName> = Vec::new();
        for name in &args.queues {
            let q = QueueName::new(name.trim()).map_err(|e| UsageError::new(format!("--queue: {e}")))?;
            if queues.contains(&q) {
                return Err(UsageError::new(format!("--queue: {q:?} is listed twice")));
            }
            queues.push(q);
        }
        if queues.is_empty() {
            return Err(UsageError::new("--queue: name at least one queue"));
        }
        given_once("--exec", "kind", args.exec.iter().map(|e| e.kind.as_str()))?;
        given_once("--rate-limit", "limit", args.rate_limit.iter().map(|l| l.name.as_str()))?;
        given_once(
            "--max-running",
            "limit",
            args.max_running.iter().map(|l| l.name.as_str()),
        )?;
        given_once(
            "--group-weight",
            "group",
            args.group_weight.iter().map(|l| l.name.as_str()),
        )?;
        for (i, spec) in args.serve.iter().enumerate() {
            for kind in &spec.kinds {
                if args.exec.iter().any(|e| &e.kind == kind) || args.serve[..i].iter().any(|p| p.kinds.contains(kind)) {
                    return Err(UsageError::new(format!(
                        "--serve: kind {kind:?} is already served by another --serve or --exec"
                    )));
                }
            }
        }
        if args.max_result_size == 0 || args.max_result_size > 512 * 1024 * 1024 {
            return Err(UsageError::new(
                "--max-result-size: must be 1 byte to 512MiB (Redis' largest string)",
            ));
        }
        let config = worker_config(args);
        config
            .validate()
            .map_err(|e| UsageError::new(format!("worker settings: {e}")))?;
        Ok(WorkerSettings {
            redis_url: global.redis_url.clone(),
            tls: global.tls(),
            queues,
            config,
            exec: args.exec.clone(),
            serve: crate::serve::ServeSettings {
                specs: args.serve.clone(),
                concurrency: args.serve_concurrency,
                max_tasks: args.serve_max_tasks,
                max_memory: args.serve_max_memory,
                start_timeout: args.serve_start_timeout,
            },
            demo_samples: args.demo_samples,
            durability: args.durability,
            metrics_addr: args.metrics_addr,
            metrics_token: args.metrics_token.clone(),
            retention: args.retention,
        })
    }
}

/// Refuses a repeatable flag that names one thing twice (`--exec: kind "x" is given twice`).
fn given_once<'a>(flag: &str, what: &str, names: impl Iterator<Item = &'a str>) -> Result<(), UsageError> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(UsageError::new(format!("{flag}: {what} {name:?} is given twice")));
        }
    }
    Ok(())
}

/// The concurrency of a worker without `--concurrency`: the engine's default for in-process
/// handlers, the CPU count when `--exec` kinds are served (each of their tasks is a process, and
/// 64 processes per worker times `--workers` is a fork bomb on a small box).
pub fn default_concurrency(serves_exec: bool) -> usize {
    if serves_exec {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    } else {
        rivulet::worker::DEFAULT_CONCURRENCY
    }
}

/// The engine configuration a worker's flags describe.
pub fn worker_config(args: &WorkerArgs) -> WorkerConfig {
    let default_retry = RetryPolicy::default();
    WorkerConfig {
        concurrency: args.concurrency.unwrap_or_else(|| {
            // Each --serve handler process takes this many tasks at once: more would wait in
            // the worker (holding their lease) while another worker process could run them.
            let serve_slots = args.serve.len() * args.serve_concurrency;
            match (args.exec.is_empty(), serve_slots) {
                (true, 0) => default_concurrency(false),
                (true, slots) => slots,
                (false, slots) => default_concurrency(true) + slots,
            }
        }),
        lease: args.lease,
        priority: args.priority_mode.clone(),
        retry: RetryPolicy {
            max_attempts: args.max_attempts,
            base: args.retry_base,
            // A base above the default cap raises the cap with it rather than being rejected.
            cap: default_retry.cap.max(args.retry_base),
            ..default_retry
        },
        timeout: args.timeout,
        drain_timeout: args.drain_timeout,
        max_tasks: args.max_tasks,
        allow_eviction: args.allow_eviction,
        unknown_kind_grace: args.unknown_kind_grace,
        dlq_maxlen: args.dlq_maxlen,
        limits: worker_limits(args),
        group_weights: args.group_weight.iter().map(|l| (l.name.clone(), l.value)).collect(),
        fair_window: args.fair_window,
        max_running_per_group: args.max_running_per_group,
        // Out of range (0, or over the engine's limit) fails validate() with its name.
        max_result_bytes: usize::try_from(args.max_result_size).unwrap_or(usize::MAX),
        ..WorkerConfig::default()
    }
}

/// The fleet-wide limits of `--rate-limit` and `--max-running`, by name.
fn worker_limits(args: &WorkerArgs) -> rivulet::Limits {
    let mut limits = rivulet::Limits::new();
    for l in &args.rate_limit {
        limits.entry(l.name.clone()).or_default().rate = Some(l.value);
    }
    for l in &args.max_running {
        limits.entry(l.name.clone()).or_default().max_running = Some(l.value);
    }
    limits
}

/// Checks `--priority-mode weighted:...` against a queue's priorities: one weight per
/// priority, highest first. More weights than priorities would fail every worker at start;
/// fewer would be padded (a missing weight counts 1, so `normal` could outweigh `high`).
pub fn check_weights(mode: &PriorityMode, queue: &Queue) -> Result<(), UsageError> {
    let PriorityMode::Weighted(weights) = mode else {
        return Ok(());
    };
    let priorities = &queue.layout().priorities;
    if weights.len() == priorities.len() {
        return Ok(());
    }
    Err(UsageError::new(format!(
        "--priority-mode {}: {} weight(s) for queue {:?}, which has {} priorities ({}); give one weight \
         per priority, highest first, e.g. weighted:{}",
        format_priority_mode(mode),
        weights.len(),
        queue.name().as_str(),
        priorities.len(),
        priorities.join(", "),
        example_weights(priorities.len()),
    )))
}

/// `3,2,1` for three priorities: falling weights, the lowest 1.
fn example_weights(n: usize) -> String {
    (1..=n).rev().map(|w| w.to_string()).collect::<Vec<_>>().join(",")
}

impl WorkerArgs {
    /// The flags that reproduce these arguments (what a supervisor passes to `work`), but
    /// `--metrics-*`: the supervisor serves its children's metrics itself (they report to it
    /// over the contract's socket), so they bind nothing.
    pub fn to_args(&self) -> Vec<String> {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let mut a = Vec::new();
        for q in &self.queues {
            a.extend(["--queue".to_owned(), q.clone()]);
        }
        // Absent stays absent: the child resolves the same default from the same flags.
        if let Some(c) = self.concurrency {
            a.extend(["--concurrency".to_owned(), c.to_string()]);
        }
        a.extend(["--lease".to_owned(), fmt(self.lease)]);
        a.extend(["--max-attempts".to_owned(), self.max_attempts.to_string()]);
        a.extend(["--retry-base".to_owned(), fmt(self.retry_base)]);
        if let Some(t) = self.timeout {
            a.extend(["--timeout".to_owned(), fmt(t)]);
        }
        a.extend(["--priority-mode".to_owned(), format_priority_mode(&self.priority_mode)]);
        for e in &self.exec {
            // `--exec=...` keeps a command starting with `-` from reading as a flag.
            a.push(format!("--exec={e}"));
        }
        for p in &self.serve {
            a.push(format!("--serve={p}"));
        }
        a.extend(["--serve-concurrency".to_owned(), self.serve_concurrency.to_string()]);
        if let Some(m) = self.serve_max_tasks {
            a.extend(["--serve-max-tasks".to_owned(), m.to_string()]);
        }
        if let Some(m) = self.serve_max_memory {
            a.extend(["--serve-max-memory".to_owned(), m.to_string()]);
        }
        a.extend(["--serve-start-timeout".to_owned(), fmt(self.serve_start_timeout)]);
        a.extend(["--drain-timeout".to_owned(), fmt(self.drain_timeout)]);
        a.extend(["--unknown-kind-grace".to_owned(), fmt(self.unknown_kind_grace)]);
        a.extend(["--dlq-maxlen".to_owned(), self.dlq_maxlen.to_string()]);
        a.extend(["--retention".to_owned(), fmt(self.retention)]);
        a.extend(["--max-result-size".to_owned(), self.max_result_size.to_string()]);
        if let Some(m) = self.max_tasks {
            a.extend(["--max-tasks".to_owned(), m.to_string()]);
        }
        for l in &self.rate_limit {
            a.push(format!("--rate-limit={}={}", l.name, l.value));
        }
        for l in &self.max_running {
            a.push(format!("--max-running={}={}", l.name, l.value));
        }
        for l in &self.group_weight {
            a.push(format!("--group-weight={}={}", l.name, l.value));
        }
        if let Some(w) = self.fair_window {
            a.extend(["--fair-window".to_owned(), w.to_string()]);
        }
        if let Some(n) = self.max_running_per_group {
            a.extend(["--max-running-per-group".to_owned(), n.to_string()]);
        }
        if self.demo_samples {
            a.push("--demo-samples".to_owned());
        }
        a.extend(["--durability".to_owned(), self.durability.to_string()]);
        if self.allow_eviction {
            a.push("--allow-eviction".to_owned());
        }
        a
    }
}

/// Worker arguments from flags alone, with every other flag at its default (for commands that
/// start workers of their own, like `demo`).
pub fn worker_args(flags: &[&str]) -> Result<WorkerArgs, clap::Error> {
    #[derive(Debug, clap::Parser)]
    #[command(no_binary_name = true)]
    struct WorkOnly {
        #[command(flatten)]
        worker: WorkerArgs,
    }
    <WorkOnly as clap::Parser>::try_parse_from(flags).map(|w| w.worker)
}

/// Everything the supervisor needs: the fleet's configuration and its fixed size.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// Worker processes to keep running.
    pub workers: u32,
    /// How the fleet runs them.
    pub fleet: FleetConfig,
}

impl SupervisorSettings {
    /// Resolves the supervisor's flags; `worker` has already been resolved from the same
    /// flags, so it is known to be valid.
    pub fn resolve(global: &GlobalArgs, run: &RunArgs) -> Result<Self, UsageError> {
        let program = std::env::current_exe()
            .map_err(|e| UsageError::new(format!("cannot find this program's path to start workers: {e}")))?;
        let mut fleet = children(
            program,
            global.log_format,
            &run.worker,
            &global.redis_url,
            &global.tls(),
        );
        fleet.max_memory = run.max_memory;
        fleet.crash_limit = run.crash_limit;
        fleet.crash_window = run.crash_window;
        Ok(SupervisorSettings {
            workers: run.workers,
            fleet,
        })
    }
}

/// The fleet that runs `program work [flags]` children with `worker`'s flags: the Redis URL
/// in their environment (a password in it does not show in `ps`), killed when they outlive
/// their drain timeout by more than [`DRAIN_GRACE`].
pub fn children(
    program: std::path::PathBuf,
    log_format: LogFormat,
    worker: &WorkerArgs,
    redis_url: &str,
    tls: &TlsOptions,
) -> FleetConfig {
    let mut fleet = FleetConfig::new(program, child_args(log_format, worker));
    fleet.env = vec![("REDIS_URL".into(), redis_url.into())];
    fleet
        .env
        .extend(tls_env(tls).into_iter().map(|(k, v)| (k.into(), v.into())));
    fleet.stop_timeout = worker.drain_timeout + DRAIN_GRACE;
    fleet
}

/// `work --log-format F [worker flags]`.
pub fn child_args(log_format: LogFormat, worker: &WorkerArgs) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["work".into(), "--log-format".into(), log_format.as_flag().into()];
    args.extend(worker.to_args().into_iter().map(OsString::from));
    args
}

impl GlobalArgs {
    /// The TLS options the `--tls-*` flags (or their `REDIS_TLS_*` variables) describe.
    pub fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca_file: self.tls_ca_file.clone(),
            client_cert: self.tls_cert_file.clone(),
            client_key: self.tls_key_file.clone(),
            insecure: self.tls_insecure,
        }
    }
}

/// The environment that hands these TLS options to a child process (its `REDIS_TLS_*`
/// variables), so worker processes connect the way their supervisor does.
pub fn tls_env(tls: &TlsOptions) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut path = |name: &str, p: &Option<std::path::PathBuf>| {
        if let Some(p) = p {
            env.push((name.to_owned(), p.display().to_string()));
        }
    };
    path("REDIS_TLS_CA_FILE", &tls.ca_file);
    path("REDIS_TLS_CERT_FILE", &tls.client_cert);
    path("REDIS_TLS_KEY_FILE", &tls.client_key);
    if tls.insecure {
        env.push(("REDIS_TLS_INSECURE".to_owned(), "true".to_owned()));
    }
    env
}

pub use rivulet::redact_url;

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn work_args(argv: &[&str]) -> (GlobalArgs, WorkerArgs) {
        let cli = Cli::try_parse_from(std::iter::once("worker-cli").chain(argv.iter().copied())).unwrap();
        match cli.command {
            Some(Command::Work(w)) => (cli.global, w),
            other => panic!("not a work command: {other:?}"),
        }
    }

    #[test]
    fn worker_flags_survive_the_trip_to_a_child() {
        let (_, args) = work_args(&[
            "work",
            "--queue",
            "a,b",
            "-q",
            "c",
            "--concurrency",
            "7",
            "--lease",
            "1m 30s",
            "--max-attempts",
            "3",
            "--retry-base",
            "250ms",
            "--timeout",
            "2s",
            "--priority-mode",
            "weighted:6,3,1",
            "--exec",
            "x=echo a=b; exit 1",
            "--exec",
            "y=-dash",
            "--drain-timeout",
            "5s",
            "--max-tasks",
            "100",
            "--durability",
            "replicated:2:300ms",
            "--allow-eviction",
            "--unknown-kind-grace",
            "90s",
            "--dlq-maxlen",
            "500",
            "--rate-limit",
            "exchange.call=10/s,burst=20",
            "--rate-limit",
            "report=600/min",
            "--max-running",
            "train=2",
            "--serve",
            "t,u=python -m app --x=1",
            "--serve-concurrency",
            "4",
            "--serve-max-tasks",
            "1000",
            "--serve-max-memory",
            "1GiB",
            "--serve-start-timeout",
            "2m",
        ]);
        let mut argv = vec!["work".to_owned()];
        argv.extend(args.to_args());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (_, again) = work_args(&argv);
        assert_eq!(again, args);
        assert_eq!(args.queues, ["a", "b", "c"]);
        assert_eq!(args.exec[0].command, "echo a=b; exit 1");
        let limits = worker_config(&args).limits;
        assert_eq!(limits["exchange.call"].rate.map(|r| (r.count, r.burst)), Some((10, 20)));
        assert_eq!(limits["report"].rate.map(|r| r.burst), Some(10));
        assert_eq!(limits["train"].max_running, Some(2));
    }

    #[test]
    fn defaults_resolve_to_the_engine_defaults() {
        let (global, args) = work_args(&["work"]);
        let s = WorkerSettings::resolve(&global, &args).unwrap();
        assert_eq!(
            s.redis_url,
            std::env::var("REDIS_URL").unwrap_or(crate::cli::DEFAULT_REDIS_URL.into())
        );
        assert_eq!(s.queues, [QueueName::new("default").unwrap()]);
        assert_eq!(s.config, WorkerConfig::default());
        assert!(s.exec.is_empty() && !s.demo_samples);
    }

    #[test]
    fn weights_must_match_the_queue_priorities() {
        let q = Queue::new("q").unwrap();
        assert!(check_weights(&PriorityMode::Strict, &q).is_ok());
        assert!(check_weights(&PriorityMode::Weighted(vec![6, 3, 1]), &q).is_ok());
        for w in [vec![6, 3], vec![4, 3, 2, 1]] {
            let e = check_weights(&PriorityMode::Weighted(w.clone()), &q).unwrap_err();
            assert!(
                e.0.contains("high, normal, low") && e.0.contains("weighted:3,2,1"),
                "{w:?}: {e}"
            );
        }
    }

    #[test]
    fn serve_kinds_default_to_their_slots() {
        let (g, a) = work_args(&[
            "work",
            "--serve",
            "k=true",
            "--serve",
            "j=true",
            "--serve-concurrency",
            "3",
        ]);
        assert_eq!(WorkerSettings::resolve(&g, &a).unwrap().config.concurrency, 6);
        let (g, a) = work_args(&["work", "--serve", "k=true", "-c", "9"]);
        assert_eq!(WorkerSettings::resolve(&g, &a).unwrap().config.concurrency, 9);
    }

    #[test]
    fn exec_kinds_default_to_one_task_per_cpu() {
        let (g, a) = work_args(&["work", "--exec", "k=true"]);
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(WorkerSettings::resolve(&g, &a).unwrap().config.concurrency, cpus);
        let (g, a) = work_args(&["work", "--exec", "k=true", "-c", "3"]);
        assert_eq!(WorkerSettings::resolve(&g, &a).unwrap().config.concurrency, 3);
        let (g, a) = work_args(&["work"]);
        let c = WorkerSettings::resolve(&g, &a).unwrap().config.concurrency;
        assert_eq!(c, rivulet::worker::DEFAULT_CONCURRENCY);
    }

    #[test]
    fn bad_combinations_are_usage_errors() {
        let (g, a) = work_args(&["work", "-q", "a,a"]);
        assert!(WorkerSettings::resolve(&g, &a).unwrap_err().0.contains("twice"));
        let (g, a) = work_args(&["work", "-q", "a{b}"]);
        assert!(WorkerSettings::resolve(&g, &a).unwrap_err().0.contains("--queue"));
        let (g, a) = work_args(&["work", "--exec", "k=true", "--exec", "k=false"]);
        assert!(WorkerSettings::resolve(&g, &a).unwrap_err().0.contains("given twice"));
        let (g, a) = work_args(&["work", "--exec", "k=true", "--serve", "j,k=true"]);
        assert!(
            WorkerSettings::resolve(&g, &a)
                .unwrap_err()
                .0
                .contains("already served")
        );
        let (g, a) = work_args(&["work", "--serve", "k=a", "--serve", "k=b"]);
        assert!(
            WorkerSettings::resolve(&g, &a)
                .unwrap_err()
                .0
                .contains("already served")
        );
    }
}
