//! Settings resolution: parsed flags (clap has already folded `REDIS_URL` in) become the typed
//! settings each part runs with, checked once here. Also the per-flag parsers clap calls, and
//! the reverse: the flags a supervisor passes to its worker processes.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rivulet::{Durability, PriorityMode, QueueName, RetryPolicy, TlsOptions, WorkerConfig};

use crate::cli::{GlobalArgs, LogFormat, RunArgs, WorkerArgs};

/// Bad input found after parsing (a combination of flags, or a value the engine rejects).
/// Reported like a clap error: usage line, exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// One `--exec KIND=COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// The task kind it serves.
    pub kind: String,
    /// The command, run with `sh -c`.
    pub command: String,
}

impl fmt::Display for ExecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kind, self.command)
    }
}

/// Parses `KIND=COMMAND` (the first `=` separates them).
pub fn parse_exec(s: &str) -> Result<ExecSpec, String> {
    let Some((kind, command)) = s.split_once('=') else {
        return Err("expected KIND=COMMAND, e.g. resize=./resize.sh".into());
    };
    if kind.is_empty() || kind.contains(char::is_whitespace) {
        return Err(format!("kind {kind:?} must be non-empty and without spaces"));
    }
    if command.trim().is_empty() {
        return Err(format!("the command for kind {kind:?} is empty"));
    }
    Ok(ExecSpec {
        kind: kind.to_owned(),
        command: command.to_owned(),
    })
}

/// Parses a task kind given to `enqueue`: anything but empty or only whitespace (a task of
/// kind "" could never be served; the worker would dead-letter it as malformed).
pub fn parse_kind(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the task kind must not be empty (it names the handler that runs the task, e.g. resize)".into());
    }
    Ok(s.to_owned())
}

/// Parses `fast`, `replicated:N[:TIMEOUTms]` or `fsync[:TIMEOUTms]`.
pub fn parse_durability(s: &str) -> Result<Durability, String> {
    s.parse::<Durability>().map_err(|e| match e {
        rivulet::Error::InvalidConfig { reason, .. } => reason,
        other => other.to_string(),
    })
}

/// Parses a duration like `30s`, `1m 30s`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') && s[1..].starts_with(|c: char| c.is_ascii_digit()) {
        return Err("a duration cannot be negative (durations look like 500ms, 30s, 5m, 1h)".into());
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (durations look like 500ms, 30s, 5m, 1h)"))
}

/// Checks that `url` (from `--redis-url` or `REDIS_URL`) parses as a Redis URL and that the
/// TLS flags fit it (files readable, a certificate with its key, TLS flags only with
/// `rediss://`): anything else is a bad flag (exit 2), not an unreachable Redis. The message
/// never shows a password.
pub fn check_redis_url(url: &str, tls: &TlsOptions) -> Result<(), UsageError> {
    use redis::IntoConnectionInfo;
    url.into_connection_info().map_err(|e| {
        UsageError(format!(
            "--redis-url (or REDIS_URL) {:?} is not a valid Redis URL ({e}); URLs look like \
             redis://127.0.0.1:6379, redis://user:password@host:6379/0 or rediss://host:6380 (TLS)",
            redact_url(url)
        ))
    })?;
    rivulet::connection::open(url, tls).map(drop).map_err(|e| {
        UsageError(format!(
            "{e} (--redis-url {:?} with --tls-ca-file, --tls-cert-file, --tls-key-file, --tls-insecure)",
            redact_url(url)
        ))
    })
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
    let mut path = |name: &str, p: &Option<PathBuf>| {
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

/// A duration above zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(d)
}

/// A lease: at least 100 ms (the engine's minimum).
pub fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

/// Parses `strict` or `weighted:W1,W2,...` (weights highest priority first).
pub fn parse_priority_mode(s: &str) -> Result<PriorityMode, String> {
    let s = s.trim();
    if s == "strict" {
        return Ok(PriorityMode::Strict);
    }
    let Some(list) = s.strip_prefix("weighted:") else {
        return Err("expected `strict` or `weighted:W1,W2,...` (e.g. weighted:6,3,1)".into());
    };
    let weights = list
        .split(',')
        .map(|w| {
            w.trim()
                .parse::<u32>()
                .map_err(|_| format!("weight {w:?} is not a whole number"))
        })
        .collect::<Result<Vec<u32>, String>>()?;
    if weights.iter().all(|&w| w == 0) {
        return Err("at least one weight must be positive".into());
    }
    Ok(PriorityMode::Weighted(weights))
}

/// The flag form of a priority mode (inverse of [`parse_priority_mode`]).
pub fn format_priority_mode(mode: &PriorityMode) -> String {
    match mode {
        PriorityMode::Strict => "strict".into(),
        PriorityMode::Weighted(w) => {
            let list: Vec<String> = w.iter().map(u32::to_string).collect();
            format!("weighted:{}", list.join(","))
        }
    }
}

/// Parses a byte size: a number with an optional unit. `K`, `M`, `G`, `T` and `KiB`, `MiB`,
/// `GiB`, `TiB` are powers of 1024; `KB`, `MB`, `GB`, `TB` powers of 1000; `B` or none are bytes.
/// With a unit the number may have a decimal fraction (`1.5GiB`); the result is rounded down
/// to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let not_a_size = || format!("{s:?} is not a size (e.g. 512MiB, 1.5GiB, 2G, 300000000)");
    if s.starts_with('-') {
        return Err(format!("{s:?}: a size cannot be negative"));
    }
    let (whole, fraction) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(not_a_size());
    }
    // Up to 9 decimals keep the arithmetic below exact in u128.
    if fraction.len() > 9 {
        return Err(format!("{s:?}: at most 9 decimals"));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| not_a_size())?
    };
    let digits: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| not_a_size())?
    };
    let unit = unit.trim().to_ascii_lowercase();
    if !fraction.is_empty() && matches!(unit.as_str(), "" | "b") {
        return Err(format!(
            "{s:?}: a byte count is a whole number (fractions need a unit, e.g. 1.5GiB)"
        ));
    }
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use K, M, G, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let bytes = whole
        .checked_mul(u128::from(mult))
        .and_then(|w| w.checked_add(digits * u128::from(mult) / scale))
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 {
        return Err("must be above zero".into());
    }
    Ok(bytes)
}

/// A byte count for people: `1.5 GiB`, `300 MiB`, `12 KiB`, `100 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

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
    /// Stop (to be recycled) after this many started tasks.
    pub max_tasks: Option<u64>,
    /// What settles wait for, for every queue served.
    pub durability: Durability,
}

impl WorkerSettings {
    /// Resolves and checks a worker's flags.
    pub fn resolve(global: &GlobalArgs, args: &WorkerArgs) -> Result<Self, UsageError> {
        let mut queues: Vec<QueueName> = Vec::new();
        for name in &args.queues {
            let q = QueueName::new(name.trim()).map_err(|e| UsageError(format!("--queue: {e}")))?;
            if queues.contains(&q) {
                return Err(UsageError(format!("--queue: {q:?} is listed twice")));
            }
            queues.push(q);
        }
        if queues.is_empty() {
            return Err(UsageError("--queue: name at least one queue".into()));
        }
        for (i, e) in args.exec.iter().enumerate() {
            if args.exec[..i].iter().any(|p| p.kind == e.kind) {
                return Err(UsageError(format!("--exec: kind {:?} is given twice", e.kind)));
            }
        }
        let config = worker_config(args);
        config
            .validate()
            .map_err(|e| UsageError(format!("worker settings: {e}")))?;
        Ok(WorkerSettings {
            redis_url: global.redis_url.clone(),
            tls: global.tls(),
            queues,
            config,
            exec: args.exec.clone(),
            max_tasks: args.max_tasks,
            durability: args.durability,
        })
    }
}

/// The engine configuration a worker's flags describe.
pub fn worker_config(args: &WorkerArgs) -> WorkerConfig {
    let default_retry = RetryPolicy::default();
    WorkerConfig {
        concurrency: args.concurrency,
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
        allow_eviction: args.allow_eviction,
        ..WorkerConfig::default()
    }
}

impl WorkerArgs {
    /// The flags that reproduce these arguments (what a supervisor passes to `work`).
    pub fn to_args(&self) -> Vec<String> {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let mut a = Vec::new();
        for q in &self.queues {
            a.extend(["--queue".to_owned(), q.clone()]);
        }
        a.extend(["--concurrency".to_owned(), self.concurrency.to_string()]);
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
        a.extend(["--drain-timeout".to_owned(), fmt(self.drain_timeout)]);
        if let Some(m) = self.max_tasks {
            a.extend(["--max-tasks".to_owned(), m.to_string()]);
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

/// Everything the supervisor needs.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// Worker processes to keep running.
    pub workers: u32,
    /// Recycle a worker process above this resident memory, in bytes.
    pub max_memory: Option<u64>,
    /// The workers' drain timeout (the supervisor allows a grace period on top).
    pub drain_timeout: Duration,
    /// Crash-loop guard: most crashes within `crash_window`.
    pub crash_limit: u32,
    /// Crash-loop guard window.
    pub crash_window: Duration,
    /// The program each worker process runs (this binary).
    pub program: PathBuf,
    /// Its arguments (`work [global flags] [worker flags]`).
    pub args: Vec<OsString>,
    /// Environment set for each worker process (the Redis URL travels here, not in argv,
    /// so a password in it does not show in `ps`).
    pub env: Vec<(String, String)>,
}

impl SupervisorSettings {
    /// Resolves the supervisor's flags; `worker` has already been resolved from the same
    /// flags, so it is known to be valid.
    pub fn resolve(global: &GlobalArgs, run: &RunArgs) -> Result<Self, UsageError> {
        let program = std::env::current_exe()
            .map_err(|e| UsageError(format!("cannot find this program's path to start workers: {e}")))?;
        Ok(SupervisorSettings {
            workers: run.workers,
            max_memory: run.max_memory,
            drain_timeout: run.worker.drain_timeout,
            crash_limit: run.crash_limit,
            crash_window: run.crash_window,
            program,
            args: child_args(global.log_format, &run.worker),
            env: [("REDIS_URL".into(), global.redis_url.clone())]
                .into_iter()
                .chain(tls_env(&global.tls()))
                .collect(),
        })
    }
}

/// `work --log-format F [worker flags]`.
pub fn child_args(log_format: LogFormat, worker: &WorkerArgs) -> Vec<OsString> {
    let format = match log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    let mut args: Vec<OsString> = vec!["work".into(), "--log-format".into(), format.into()];
    args.extend(worker.to_args().into_iter().map(OsString::from));
    args
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
        ]);
        let mut argv = vec!["work".to_owned()];
        argv.extend(args.to_args());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (_, again) = work_args(&argv);
        assert_eq!(again, args);
        assert_eq!(args.queues, ["a", "b", "c"]);
        assert_eq!(args.exec[0].command, "echo a=b; exit 1");
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
        assert!(s.exec.is_empty() && s.max_tasks.is_none());
    }

    #[test]
    fn bad_combinations_are_usage_errors() {
        let (g, a) = work_args(&["work", "-q", "a,a"]);
        assert!(WorkerSettings::resolve(&g, &a).unwrap_err().0.contains("twice"));
        let (g, a) = work_args(&["work", "-q", "a{b}"]);
        assert!(WorkerSettings::resolve(&g, &a).unwrap_err().0.contains("--queue"));
        let (g, a) = work_args(&["work", "--exec", "k=true", "--exec", "k=false"]);
        assert!(WorkerSettings::resolve(&g, &a).unwrap_err().0.contains("given twice"));
    }

    #[test]
    fn exec_specs_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_exec("resize=./r.sh --w=3").unwrap(),
            ExecSpec {
                kind: "resize".into(),
                command: "./r.sh --w=3".into()
            }
        );
        assert!(parse_exec("nocommand").is_err());
        assert!(parse_exec("=cmd").is_err());
        assert!(parse_exec("a b=cmd").is_err());
        assert!(parse_exec("k=  ").is_err());
    }

    #[test]
    fn priority_modes_parse_and_print_back() {
        assert_eq!(parse_priority_mode("strict").unwrap(), PriorityMode::Strict);
        let w = parse_priority_mode("weighted:6,3,1").unwrap();
        assert_eq!(w, PriorityMode::Weighted(vec![6, 3, 1]));
        assert_eq!(format_priority_mode(&w), "weighted:6,3,1");
        for bad in ["", "fair", "weighted:", "weighted:0,0", "weighted:a,1", "weighted:-1"] {
            assert!(parse_priority_mode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("300").unwrap(), 300);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("10 KiB").unwrap(), 10 << 10);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("0.5 MiB").unwrap(), 1 << 19);
        assert_eq!(parse_size(".5k").unwrap(), 512);
        assert_eq!(parse_size("2.5GB").unwrap(), 2_500_000_000);
        assert_eq!(parse_size("1.0000001KiB").unwrap(), 1024);
        for bad in [
            "",
            "0",
            "0.0001B",
            "MiB",
            ".",
            "1..5G",
            "1.2.3G",
            "1.5",
            "1.5B",
            "12XB",
            "99999999999999T",
            "1.0000000001G",
            "-1G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("1.5").unwrap_err().contains("whole number"));
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }

    #[test]
    fn kinds_must_not_be_empty() {
        assert_eq!(parse_kind("resize").unwrap(), "resize");
        for bad in ["", " ", "\t\n"] {
            assert!(parse_kind(bad).unwrap_err().contains("must not be empty"), "{bad:?}");
        }
    }

    #[test]
    fn redis_urls_that_do_not_parse_are_usage_errors_without_the_password() {
        assert!(check_redis_url("redis://127.0.0.1:6379", &TlsOptions::default()).is_ok());
        let e = check_redis_url("notaurl", &TlsOptions::default()).unwrap_err();
        assert!(e.0.contains("--redis-url") && e.0.contains("\"notaurl\""), "{e}");
        let e = check_redis_url("redis://u:secret@h:notaport", &TlsOptions::default()).unwrap_err();
        assert!(!e.0.contains("secret"), "{e}");
    }

    #[test]
    fn durations_reject_zero_and_short_leases() {
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_lease("99ms").is_err());
        assert!(parse_lease("100ms").is_ok());
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
    }
}
