//! The command line as clap sees it: every flag, its help text and its default, and nothing
//! else. Turning flags into engine configuration is `settings`' job, so this file reads as the
//! CLI's reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use rivulet::{Durability, PriorityMode};

pub use rivulet_fleet::LogFormat;

use crate::values::{
    ExecSpec, ServeSpec, parse_durability, parse_duration, parse_exec, parse_kind, parse_lease,
    parse_positive_duration, parse_priority_mode, parse_serve, parse_size,
};

/// The Redis URL used when neither `--redis-url` nor `REDIS_URL` is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Supervised Rivulet worker processes and admin commands.
///
/// Without a subcommand, worker-cli supervises `--workers` worker processes that serve
/// `--queue` (restarting crashed ones, recycling them after `--max-tasks` or above
/// `--max-memory`), e.g. `worker-cli --workers 4 --queue emails`. SIGTERM or Ctrl-C drains
/// them; a second signal stops at once. Bare `worker-cli` (no command, no supervisor flag)
/// prints this help.
///
/// Task kinds served out of the box: `noop`, `sleep` (payload {"ms": N}), `fail` (always fails),
/// plus one per `--exec KIND=COMMAND`.
#[derive(Debug, Parser)]
#[command(name = "worker-cli", version)]
#[command(after_help = "Examples:\n  \
    worker-cli --workers 4 --queue emails --exec send=./send_email.sh\n  \
    worker-cli enqueue --queue emails --kind send --payload '{\"to\": \"a@example.com\"}'\n  \
    worker-cli stats --queue emails --watch\n  \
    worker-cli demo")]
pub struct Cli {
    // Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    // The supervisor's options (when no subcommand is given).
    #[command(flatten)]
    pub run: RunArgs,
    // An admin command; none runs the supervisor.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every command takes (before or after the subcommand).
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Redis to use, e.g. redis://127.0.0.1:6379, or rediss://user:pass@host:6380/0 for TLS
    /// (see the --tls-* flags); a Redis Cluster as redis+cluster://h1:7000,h2:7001 (seed nodes;
    /// rediss+cluster:// for TLS), a master behind Sentinel as
    /// redis+sentinel://s1:26379,s2:26379/master-name.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, global = true, hide_env_values = true, help_heading = "Global")]
    pub redis_url: String,
    /// TLS (rediss:// URLs): PEM file of the CA to trust instead of the system's roots.
    #[arg(
        long,
        value_name = "PATH",
        env = "REDIS_TLS_CA_FILE",
        global = true,
        help_heading = "Global"
    )]
    pub tls_ca_file: Option<PathBuf>,
    /// TLS: PEM file of a client certificate, for a Redis that requires one
    /// (tls-auth-clients yes). Needs --tls-key-file.
    #[arg(
        long,
        value_name = "PATH",
        env = "REDIS_TLS_CERT_FILE",
        global = true,
        help_heading = "Global"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS: PEM file of the client certificate's private key.
    #[arg(
        long,
        value_name = "PATH",
        env = "REDIS_TLS_KEY_FILE",
        global = true,
        help_heading = "Global"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// TLS: do not verify the server's certificate (still encrypted, but anyone in the path can
    /// pose as Redis). For tests only; a warning is logged at start.
    #[arg(long, env = "REDIS_TLS_INSECURE", global = true, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue, help_heading = "Global")]
    pub tls_insecure: bool,
    /// Log line format on stderr. Filter with RUST_LOG (e.g. RUST_LOG=rivulet=debug); the
    /// default is `info` for workers and the supervisor, `warn` for admin commands.
    ///
    /// With `json` every line is one JSON object, an --exec command's output included (a
    /// `task output` event per line, with its task_id). The format travels to worker processes
    /// in RIVULET_LOG_FORMAT.
    #[arg(long, value_enum, env = rivulet_fleet::logging::LOG_FORMAT_ENV, default_value_t = LogFormat::Text, global = true, help_heading = "Global")]
    pub log_format: LogFormat,
}

/// Supervisor options: how many worker processes and when to replace them.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    // What each worker process serves and how.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Worker processes to run. Each runs up to --concurrency tasks at once: 64 by default, but
    /// with --exec kinds the number of CPUs, so `--workers 4 --exec ...` on 8 CPUs runs at most
    /// 32 commands at once (say --concurrency 1 for one job per process, RQ- and Celery-style).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1024), help_heading = "Supervisor")]
    pub workers: u32,
    /// Recycle (drain and restart) a worker process whose resident memory exceeds SIZE, e.g.
    /// 512MiB, 1.5GiB, 2G, 300000000. Checked every second; only the worker process counts,
    /// not the commands --exec starts. Keep it well above an idle worker process's own size
    /// (roughly 5-15 MiB): a worker already above it when it starts is recycled every second,
    /// and a warning says so. No limit by default.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "Supervisor")]
    pub max_memory: Option<u64>,
    /// Crash-loop guard: give up (drain the rest, exit 1) when worker processes crash more
    /// than this many times within --crash-window.
    #[arg(long, default_value_t = 10, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Supervisor")]
    pub crash_limit: u32,
    /// Crash-loop guard window (see --crash-limit).
    #[arg(long, value_name = "DURATION", default_value = "60s", allow_hyphen_values = true, value_parser = parse_positive_duration, help_heading = "Supervisor")]
    pub crash_window: Duration,
    /// Do not run a scheduler in this supervisor. By default every supervisor runs one: any
    /// number may run, each fire time still enqueues exactly one task.
    #[arg(long, help_heading = "Supervisor")]
    pub no_scheduler: bool,
    /// Make the stored schedules what FILE (TOML) lists at start, saying what changed (see
    /// `worker-cli schedule sync --help`).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "no_scheduler",
        help_heading = "Supervisor"
    )]
    pub schedules: Option<PathBuf>,
}

/// What a worker process serves and how; the supervisor passes these to its children.
#[derive(Debug, Clone, PartialEq, Args)]
#[command(next_help_heading = "Worker")]
pub struct WorkerArgs {
    /// Queue to serve; repeat the flag or separate names with commas. An existing queue keeps
    /// its recorded layout; a new one gets the default (high, normal, low; 1 shard).
    #[arg(
        long = "queue",
        short = 'q',
        value_name = "NAME",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,
    /// Tasks each worker process runs at once. Default: 64, or the number of CPUs when --exec
    /// kinds are served (each task is a process; 64 of them per worker process is more than
    /// most machines survive).
    #[arg(long, short = 'c', allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..=100_000).map(|n| n as usize))]
    pub concurrency: Option<usize>,
    /// Lease of a running task: a worker that stops heartbeating for this long (it died) has
    /// its tasks taken over by another. At least 100ms.
    #[arg(long, value_name = "DURATION", default_value = "30s", allow_hyphen_values = true, value_parser = parse_lease)]
    pub lease: Duration,
    /// Runs a task gets before it goes to the dead-letter stream as `exhausted` (1 = never
    /// retried). A task's own max_attempts wins.
    #[arg(long, default_value_t = rivulet::backoff::DEFAULT_MAX_ATTEMPTS, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Longest wait before the first retry; later retries wait up to twice as long each
    /// (capped at 10m), drawn at random below that ceiling.
    #[arg(long, value_name = "DURATION", default_value = "1s", allow_hyphen_values = true, value_parser = parse_duration)]
    pub retry_base: Duration,
    /// Handler timeout: a task still running after this is failed (and retried); an --exec
    /// command is killed. None by default; a task's own timeout wins.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_positive_duration)]
    pub timeout: Option<Duration>,
    /// Priority order: `strict` (always the highest priority with work) or `weighted:6,3,1`
    /// (reads start at a priority drawn with these weights, highest first, so low priorities
    /// are never starved).
    #[arg(long, value_name = "MODE", default_value = "strict", value_parser = parse_priority_mode)]
    pub priority_mode: PriorityMode,
    /// Serve KIND by running COMMAND with `sh -c` per task: payload on stdin; env
    /// RIVULET_TASK_ID, RIVULET_KIND, RIVULET_ATTEMPT, RIVULET_QUEUE, RIVULET_PRIORITY. Exit 0 =
    /// done; 75 = retry later (a last stderr line `retry-after=30s` picks the delay; it still
    /// uses up one of --max-attempts); 65 = fatal (straight to the dead-letter stream as
    /// `fatal`, not retried); anything else = failed (retried, then dead-lettered as
    /// `exhausted`). The stderr tail becomes the task's error; every line of stdout and stderr
    /// is logged as a `task output` event with the task id. Repeatable.
    #[arg(long, value_name = "KIND=COMMAND", value_parser = parse_exec)]
    pub exec: Vec<ExecSpec>,
    /// Serve KINDS (comma separated) with one long-lived handler process per worker process,
    /// `sh -c COMMAND`, e.g. train='python -m myapp.tasks': it stays up and takes tasks as
    /// JSON lines on its stdin, answering on its stdout (progress, result, error; a cancel is a
    /// message in), the protocol of docs/serve-protocol.md (the Python package's
    /// `rivulet.handlers.serve()` speaks it). A process that crashes has its tasks retried and
    /// is restarted with backoff. Repeatable.
    #[arg(long, value_name = "KINDS=COMMAND", value_parser = parse_serve)]
    pub serve: Vec<ServeSpec>,
    /// Tasks each --serve handler process runs at once (on threads or asyncio, as the process
    /// chooses). The worker's default --concurrency with --serve is the sum of its handler
    /// processes' slots.
    #[arg(long, value_name = "N", default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..=10_000).map(|n| n as usize))]
    pub serve_concurrency: usize,
    /// Recycle a --serve handler process after it has taken N tasks: it gets no more, finishes
    /// what it runs, has its stdin closed (it exits) and is replaced. No limit by default.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..).map(|n| n as u64))]
    pub serve_max_tasks: Option<u64>,
    /// Recycle a --serve handler process (the whole process tree of its command) whose resident
    /// memory exceeds SIZE, e.g. 2GiB, checked every second: as with --serve-max-tasks, it
    /// finishes its running tasks first. No limit by default.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub serve_max_memory: Option<u64>,
    /// Time a --serve handler process gets from its start to say it is ready (the protocol's
    /// `ready` line: loading a model counts); past it, it is killed and restarted as a crash.
    #[arg(long, value_name = "DURATION", default_value = "60s", allow_hyphen_values = true, value_parser = parse_positive_duration)]
    pub serve_start_timeout: Duration,
    /// A task of a kind this worker does not serve is retried (every tenth of this or less, 50ms
    /// to 5s apart, without using up an attempt) until it is this old, so a newer worker can take
    /// it during a rolling deploy; then it is dead-lettered as `unknown_kind`. 0s = at once.
    #[arg(long, value_name = "DURATION", default_value = "5m", allow_hyphen_values = true, value_parser = parse_duration)]
    pub unknown_kind_grace: Duration,
    /// Cap of each shard's dead-letter stream (approximate, `MAXLEN ~`): past it the oldest
    /// dead letters are dropped and counted in `stats` as `dlq_trimmed`.
    #[arg(long, value_name = "N", default_value_t = rivulet::worker::DEFAULT_DLQ_MAXLEN, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..).map(|n| n as usize))]
    pub dlq_maxlen: usize,
    /// Keep a finished task's record (state, result, progress) this long, for tasks that do
    /// not carry their own retention (`enqueue --retention`). 0s keeps no record: the tasks'
    /// status reads `unknown` (set the producers' retention to 0 too, or the records they
    /// write on enqueue stay until deleted).
    #[arg(long, value_name = "DURATION", default_value = "1h", allow_hyphen_values = true, value_parser = parse_duration)]
    pub retention: Duration,
    /// Largest result a task may store (an --exec command's stdout): a larger one fails the
    /// task as `fatal` with an error naming both sizes, never truncated. E.g. 1MiB, 64K.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub max_result_size: u64,
    /// On shutdown, time running tasks get to finish; unfinished ones are put back to run
    /// again at once.
    #[arg(long, value_name = "DURATION", default_value = "30s", allow_hyphen_values = true, value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Exit after M tasks: a worker process takes exactly M tasks (fewer if the queues run
    /// dry first), stops fetching, lets them finish, and exits 0; under a supervisor it is
    /// then replaced. No limit by default.
    #[arg(long, value_name = "M", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..).map(|n| n as u64))]
    pub max_tasks: Option<u64>,
    /// What settling a task waits for, for every queue served: `fast` (the master has it),
    /// `replicated:N` (N replicas have it: WAIT, once per settle batch) or `fsync` (the
    /// master's AOF is fsynced: WAITAOF, Redis 7.2+ with appendonly yes); `:TIMEOUTms` sets the
    /// wait (default 1000ms). Refused at start when the server cannot honour it.
    #[arg(long, value_name = "MODE", default_value = "fast", value_parser = parse_durability)]
    pub durability: Durability,
    /// Start even when Redis's maxmemory-policy can evict task keys (allkeys-*), with a
    /// warning. Without it such a policy is refused at start: tasks would vanish under memory
    /// pressure. Use noeviction (or volatile-*, which evicts only keys with a TTL).
    #[arg(long)]
    pub allow_eviction: bool,
    /// Fleet-wide rate limit: at most COUNT task starts per UNIT (s, min or h) over every
    /// worker process on every host, for tasks whose limit key (their `limit_key` field, else
    /// their kind) is NAME, e.g. `exchange.call=10/s,burst=20` or `report=600/min`. burst (the
    /// starts allowed at once after a quiet spell) defaults to one second's worth, at least 1.
    /// A task over the rate waits for its reserved start time in its shard's retry set: no
    /// attempt used, no polling, other kinds not held up. Give every worker the same limits.
    /// Repeatable; `worker-cli limits` shows them.
    #[arg(long, value_name = "NAME=RATE", value_parser = crate::values::parse_rate_limit, help_heading = "Limits")]
    pub rate_limit: Vec<crate::values::NamedLimit<rivulet::Rate>>,
    /// Fleet-wide concurrency limit: at most N tasks with limit key NAME running at once over
    /// the whole fleet, e.g. `train=2`. Each running slot is held under the task's lease, so a
    /// dead worker's slot comes back within --lease. A task over the cap waits (no attempt
    /// used) and is offered again about when a slot should free. Repeatable.
    #[arg(long, value_name = "NAME=N", value_parser = crate::values::parse_max_running, help_heading = "Limits")]
    pub max_running: Vec<crate::values::NamedLimit<u32>>,
    /// Fair groups (tasks enqueued with a group, e.g. a tenant id, are served in turn within
    /// their priority: docs/groups.md): group GROUP gets W turns to another group's one, e.g.
    /// `tenant-a=3` (1 to 1000; groups not listed weigh 1). Written into the queues' shards at
    /// start, where the producers' enqueue reads it. Repeatable.
    #[arg(long, value_name = "GROUP=W", value_parser = crate::values::parse_group_weight, help_heading = "Fair groups")]
    pub group_weight: Vec<crate::values::NamedLimit<u32>>,
    /// Fair groups: the most entries no worker has read that a shard's stream holds before
    /// grouped tasks wait for their turn in the fair set (1 to 100000; the shards' default is
    /// 100). Smaller: a new group's task waits less behind the stream; too small leaves
    /// handler slots idle. Written into the queues' shards at start.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000), help_heading = "Fair groups")]
    pub fair_window: Option<u32>,
    /// Fair groups: at most N tasks of one group running at once over the fleet (a
    /// --max-running limit named `group:GROUP` for each group, held under the lease). A task
    /// over its group's cap waits without using an attempt, like any limited task.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Fair groups")]
    pub max_running_per_group: Option<u32>,
    /// Serve Prometheus metrics at http://ADDR/metrics, and the probes /healthz (the process
    /// answers) and /readyz (ready: the worker runs and reaches Redis), e.g. 127.0.0.1:9100.
    /// Under the supervisor (--workers N) one address serves the whole box: the numbers of
    /// every worker process added up, its restarts, and ready only while every worker process
    /// is up and reaches Redis. Loopback only, unless --metrics-token is set. Every metric and
    /// its labels: docs/metrics.md.
    #[arg(long, value_name = "ADDR", help_heading = "Metrics")]
    pub metrics_addr: Option<SocketAddr>,
    /// Bearer token /metrics then requires (`Authorization: Bearer TOKEN`, Prometheus's
    /// `authorization` scrape setting); needed to serve --metrics-addr beyond loopback. The
    /// probes stay open.
    #[arg(long, value_name = "TOKEN", env = rivulet_fleet::probes::TOKEN_ENV, hide_env_values = true, help_heading = "Metrics")]
    pub metrics_token: Option<String>,
    /// Set by `worker-cli demo` for its workers: serve the `demo` kind and save its latency
    /// samples.
    #[arg(long, hide = true)]
    pub demo_samples: bool,
}

/// The worker process and the admin commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one worker process, without a supervisor (what the supervisor and the autoscaler
    /// start).
    ///
    /// Nothing restarts it if it crashes, and it exits 0 after --max-tasks. The supervisor
    /// (worker-cli without a command) and the autoscaler's --worker-cmd start exactly this.
    /// SIGTERM or Ctrl-C drains it; a second signal stops at once.
    Work(WorkerArgs),
    /// Add tasks to a queue.
    Enqueue(EnqueueArgs),
    /// Create a queue with its own priorities and shards, or show a queue's layout.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// List queues with their backlog.
    Queues(OutputArgs),
    /// Show a queue's backlog and counters per priority, and the autoscaler's last decision.
    Stats(StatsArgs),
    /// List tasks in flight (delivered, not yet settled) and who holds them.
    Pending(PendingArgs),
    /// List live worker processes.
    Workers(OutputArgs),
    /// List the fleet-wide limits workers enforce (--rate-limit, --max-running): the rate and
    /// cap workers publish (the last to start or use the limit), starts in the last whole second, running slots held against the cap,
    /// tasks waiting for the rate or for a slot, and totals granted and sent to wait.
    Limits(OutputArgs),
    /// List a queue's fair groups with tasks waiting for their turn: per priority and group
    /// the tasks waiting, the weight, how many turns its newest task is away and its running
    /// tasks against --max-running-per-group; per shard the tasks waiting, the virtual clock
    /// (floor), the next turn's tag and the window.
    Groups(QueueArgs),
    /// Inspect, replay or purge dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Tell workers to stop fetching from a queue (running tasks finish).
    Pause(QueueArgs),
    /// Let workers fetch from a paused queue again.
    Resume(QueueArgs),
    /// Delete a queue: its tasks, dead letters, counters and registry entry.
    ///
    /// Refused (exit 1, naming what it holds) while live workers serve the queue or it holds
    /// tasks (waiting, in flight, delayed, retrying) or dead letters. Stop its workers and let
    /// it drain first (`pause` stops new work), or pass --force to discard them. Stop its
    /// producers first too: a running producer keeps writing to the queue it declared.
    DeleteQueue(DeleteQueueArgs),
    /// Show, wait for or cancel one task by id.
    #[command(subcommand)]
    Task(TaskCommand),
    /// List tasks of a queue in one state (from the structures that hold them; never a key
    /// scan).
    Tasks(TasksArgs),
    /// Print a queue's lifecycle events (enqueued, started, progress, retried, succeeded,
    /// dead, cancelled, ...), oldest first; --follow keeps printing new ones.
    Events(EventsArgs),
    /// Serve the web dashboard, the JSON API (/api/v1, OpenAPI at /api/v1/openapi.json),
    /// Prometheus /metrics for the queues and the /healthz and /readyz probes.
    ///
    /// Listens on loopback by default. Every change (enqueue, cancel, replay, purge, pause)
    /// needs the token as `Authorization: Bearer <token>`; beyond loopback every read needs it
    /// too, and starting there without a token is refused. Without --token on loopback, a
    /// random token is made and printed once to stderr.
    Dashboard(DashboardArgs),
    /// Load the `rivulet_v1` Redis Functions library, or print its source.
    ///
    /// Producers in other languages (the Python package) enqueue, cancel, wait and read stats
    /// with `FCALL rivulet_v1_*`. Every worker loads the library at start; run `functions
    /// install` when producers start before any worker did (a deploy step, like `queue
    /// create`). The library is generated from the engine's own scripts (docs/wire-format.md).
    #[command(subcommand)]
    Functions(FunctionsCommand),
    /// Enqueue many tasks, run them with worker processes, and print throughput and latency.
    ///
    /// Two phases on a throwaway queue (demo-<pid>-<random>) of the built-in `demo` kind,
    /// served by --workers supervised worker processes. The burst enqueues --tasks tasks at
    /// once and measures throughput; its start latency is mostly waiting behind the rest of
    /// the burst. The paced phase then enqueues --paced-tasks tasks at --paced-rate per second,
    /// a steady load the workers keep up with: its enqueue-to-start latency (p50/p90/p99/max) is
    /// the figure README's Speed section quotes (at 2,000 tasks/s). Uses --redis-url (or REDIS_URL); when nothing answers there, it starts
    /// a private redis-server from PATH and says so. The queue's keys are deleted afterwards
    /// unless --keep.
    Demo(DemoArgs),
    /// Periodic tasks: add, list, show (the next fire times), remove, pause, resume, run-now,
    /// and sync from a file.
    ///
    /// A schedule enqueues a task of KIND into a queue at the times of a cron expression (5
    /// fields, or 6 with seconds first; in a time zone, DST handled) or every fixed interval.
    /// Schedules live in Redis; every supervisor runs a scheduler (unless --no-scheduler), and
    /// `worker-cli scheduler` runs one alone: however many run, each fire time enqueues exactly
    /// one task. See docs/schedules.md.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Run a scheduler alone (no workers): fire the stored schedules until SIGTERM or Ctrl-C.
    ///
    /// Run as many as you like (on several machines, for availability): each fire time
    /// enqueues exactly one task whichever scheduler gets there first.
    Scheduler(SchedulerArgs),
}

/// `schedule ...`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule (refused if the name exists, unless --replace).
    #[command(after_help = "Examples:\n  \
        worker-cli schedule add nightly --queue research --kind refresh --cron '0 30 2 * * *' --timezone Europe/Berlin --missed run-once\n  \
        worker-cli schedule add stats --queue ops --kind record_stats --every 60s --payload '{\"scope\": \"all\"}'")]
    Add(Box<ScheduleAddArgs>),
    /// List the schedules with their next fire time.
    List(OutputArgs),
    /// Show a schedule and its next 5 fire times.
    Show(ScheduleNameArgs),
    /// Remove a schedule (the tasks it enqueued stay).
    Remove(ScheduleNameArgs),
    /// Pause a schedule: it fires nothing until resumed.
    Pause(ScheduleNameArgs),
    /// Resume a paused schedule: it fires from now on (what fell in the pause is not run).
    Resume(ScheduleNameArgs),
    /// Enqueue one task of a schedule now, outside its fire times.
    RunNow(ScheduleNameArgs),
    /// Make the stored schedules exactly what FILE lists: create or update each one listed,
    /// remove each stored one it does not list; print what changed.
    ///
    /// FILE is TOML with one [[schedule]] table per schedule, fields as `schedule add` names
    /// them: name, queue, kind, cron + timezone or every, payload (a string of JSON or a TOML
    /// value), codec, priority, jitter, missed, misfire_grace. Every entry is checked before
    /// anything changes. The file owns all schedules: one added by hand and not in the file is
    /// removed.
    Sync(ScheduleSyncArgs),
}

/// `schedule add`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("when").args(["cron", "every"]).required(true)))]
#[command(group(ArgGroup::new("body").args(["payload", "payload_file"])))]
pub struct ScheduleAddArgs {
    /// The schedule's name ([A-Za-z0-9._-], up to 64).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Queue the tasks go to.
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: String,
    /// The tasks' kind.
    #[arg(long, value_parser = parse_kind)]
    pub kind: String,
    /// Cron expression: `MIN HOUR DOM MON DOW`, or `SEC MIN HOUR DOM MON DOW`; `L`, `W` and
    /// `#` as in croner (e.g. `0 9 * * MON#2`, the second Monday at 09:00).
    #[arg(long, value_name = "EXPR", allow_hyphen_values = true)]
    pub cron: Option<String>,
    /// IANA time zone the cron expression is read in (DST handled: a time skipped by the
    /// spring-forward runs right after the gap, a repeated one runs once).
    #[arg(long, value_name = "ZONE", default_value = "UTC", requires = "cron")]
    pub timezone: String,
    /// Fixed interval instead of a cron expression (at least 1s): fires at its multiples since
    /// the Unix epoch, so 60s fires on the minute.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    pub every: Option<Duration>,
    /// The tasks' payload (JSON unless --codec bytes).
    #[arg(long, allow_hyphen_values = true)]
    pub payload: Option<String>,
    /// Read the payload from a file.
    #[arg(long, value_name = "PATH")]
    pub payload_file: Option<PathBuf>,
    /// Payload codec.
    #[arg(long, value_enum, default_value_t = PayloadCodec::Json)]
    pub codec: PayloadCodec,
    /// The tasks' priority (the queue's default otherwise).
    #[arg(long)]
    pub priority: Option<String>,
    /// Make each task due a random delay of up to this after its fire time (spreads a burst of
    /// schedules that fire at the same time).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub jitter: Duration,
    /// What to do with fire times found more than --misfire-grace late because no scheduler
    /// ran: `skip` them, or `run-once` (one task for all of them).
    #[arg(long, value_enum, default_value_t = MissedArg::Skip)]
    pub missed: MissedArg,
    /// How late a fire time may be found and still run as usual.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub misfire_grace: Duration,
    /// Update the schedule if one has this name (its last fire time and pause are kept).
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--missed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MissedArg {
    /// Skip missed fire times.
    Skip,
    /// Run once for all missed fire times.
    RunOnce,
}

/// A schedule's name and `--json`.
#[derive(Debug, Clone, Args)]
pub struct ScheduleNameArgs {
    /// The schedule's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `schedule sync`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Example file:\n  \
    [[schedule]]\n  \
    name = \"nightly\"\n  \
    queue = \"research\"\n  \
    kind = \"refresh\"\n  \
    cron = \"0 30 2 * * *\"\n  \
    timezone = \"Europe/Berlin\"\n  \
    payload = { universe = \"all\" }\n  \
    missed = \"run-once\"\n\n  \
    [[schedule]]\n  \
    name = \"stats\"\n  \
    queue = \"ops\"\n  \
    kind = \"record_stats\"\n  \
    every = \"60s\"")]
pub struct ScheduleSyncArgs {
    /// The schedules file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Say what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `scheduler`.
#[derive(Debug, Clone, Args)]
pub struct SchedulerArgs {
    /// Make the stored schedules what FILE lists first (as `schedule sync FILE`).
    #[arg(long, value_name = "FILE")]
    pub schedules: Option<PathBuf>,
    /// Longest sleep between two looks at the schedules (it also wakes at every fire time):
    /// how soon an added or changed schedule is seen.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    pub poll: Duration,
}

/// `dashboard`.
#[derive(Debug, Clone, Args)]
pub struct DashboardArgs {
    /// Address to listen on (IP:PORT). Beyond loopback, --token is required.
    #[arg(long, value_name = "IP:PORT", default_value = rivulet_dashboard::DEFAULT_ADDR)]
    pub addr: std::net::SocketAddr,
    /// The bearer token for changes (and for every read beyond loopback); at least 8 visible
    /// characters.
    #[arg(long, value_name = "TOKEN", env = "RIVULET_DASHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How often pages refresh and the numbers of a watched queue are read again.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_positive_duration)]
    pub refresh: Duration,
    /// Redis commands per second the dashboard allows itself for queue numbers, however many
    /// pages are open.
    #[arg(long, value_name = "N", default_value_t = rivulet_dashboard::DEFAULT_REDIS_BUDGET)]
    pub redis_budget: f64,
}

/// `functions ...`.
#[derive(Debug, Subcommand)]
pub enum FunctionsCommand {
    /// Load (or replace) the library on the server and print its name and revision.
    Install(OutputArgs),
    /// Print the library's Lua source (what `install` loads), e.g. to load it by other means.
    Source,
}

/// `queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Record a queue's layout (priorities, shards) before its producers and workers use it.
    ///
    /// A queue's layout is fixed once recorded: producers and workers all read it from Redis.
    /// Creating a queue that exists with the same layout does nothing (exit 0, so scripts can
    /// run it on every deploy); with another layout it is refused (exit 1, naming both).
    /// Without this command a queue gets the default layout (high, normal, low; 1 shard) when
    /// the first task is enqueued or the first worker serves it.
    #[command(after_help = "Example:\n  worker-cli queue create reports --priorities high,normal,low --shards 4")]
    Create(QueueCreateArgs),
    /// Show a queue's layout: priorities (highest first), shards, default priority, paused.
    Show(QueueShowArgs),
}

/// `queue create`.
#[derive(Debug, Clone, Args)]
pub struct QueueCreateArgs {
    /// The queue's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Priority names, highest first, comma separated.
    #[arg(
        long,
        value_name = "P1,P2,...",
        value_delimiter = ',',
        default_value = "high,normal,low"
    )]
    pub priorities: Vec<String>,
    /// Shards per priority (each a stream of its own: more shards spread a hot queue's work
    /// over more Redis keys), 1 to 1024.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(0..=i64::from(u16::MAX)).map(|n| n as u16))]
    pub shards: u16,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `queue show`.
#[derive(Debug, Clone, Args)]
pub struct QueueShowArgs {
    /// The queue's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--json`.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print JSON for machines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A queue and `--json`.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// The queue.
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `delete-queue`.
#[derive(Debug, Clone, Args)]
pub struct DeleteQueueArgs {
    /// The queue.
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: String,
    /// Delete even with live workers, tasks or dead letters: they are discarded.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Payload codecs the CLI can enqueue with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PayloadCodec {
    /// The payload must be valid JSON.
    Json,
    /// The payload is opaque bytes.
    Bytes,
}

/// `enqueue`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("body").args(["payload", "payload_file"])))]
pub struct EnqueueArgs {
    /// The queue (created with the default layout if Redis does not know it yet).
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: String,
    /// The task kind (handler name); not empty.
    #[arg(long, short = 'k', value_parser = parse_kind)]
    pub kind: String,
    /// The payload, e.g. '{"ms": 100}'. Default: null.
    #[arg(long, value_name = "DATA")]
    pub payload: Option<String>,
    /// Read the payload from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    /// How the payload is encoded.
    #[arg(long, value_enum, default_value_t = PayloadCodec::Json)]
    pub codec: PayloadCodec,
    /// Priority (one of the queue's; the queue's default when absent, usually `normal`).
    #[arg(long, short = 'p')]
    pub priority: Option<String>,
    /// Run no sooner than this from now, e.g. 5s, 10m.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Runs this task gets (overrides the worker's --max-attempts).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// Handler timeout for this task (overrides the worker's --timeout).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_positive_duration)]
    pub timeout: Option<Duration>,
    /// Enqueue this many copies (each with its own id). They are sent in batches of 1,000,
    /// each written whole or not at all; the ids of each batch are printed as it is written,
    /// so a run cut off by a lost connection has printed exactly what was enqueued.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..=10_000_000).map(|n| n as u64))]
    pub count: u64,
    /// Make the task unique by KEY within its queue and priority: while a task holding the
    /// key is not finished (or for --unique-for), enqueueing another prints the holder's id
    /// and says it is a duplicate.
    #[arg(long, value_name = "KEY")]
    pub unique_key: Option<String>,
    /// Put the task(s) in fair group GROUP (a tenant id, say): within a priority the groups
    /// with tasks waiting are served in turn, so one group's backlog delays another's task by
    /// about one turn (docs/groups.md). 1 to 64 characters of A-Z a-z 0-9 . _ - : /.
    #[arg(long, value_name = "GROUP", value_parser = crate::values::parse_group)]
    pub group: Option<String>,
    /// Hold the unique key for this long from enqueue, even after the task finished.
    #[arg(long, value_name = "DURATION", requires = "unique_key", allow_hyphen_values = true, value_parser = parse_positive_duration)]
    pub unique_for: Option<Duration>,
    /// Keep the task's record (state, result) this long once finished, instead of the
    /// queue's (1h); 0s keeps none.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// Block until the task(s) finish and print their results (exit 1 when one ends dead or
    /// cancelled, or does not finish within --wait-timeout).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", default_value = "30s", requires = "wait", allow_hyphen_values = true, value_parser = parse_positive_duration)]
    pub wait_timeout: Duration,
    /// What an enqueue waits for before it reports success: `fast`, `replicated:N` or `fsync`
    /// (see `work --durability`). One wait per batch of tasks.
    #[arg(long, value_name = "MODE", default_value = "fast", value_parser = parse_durability)]
    pub durability: Durability,
    /// Give copy number i (from 0) the id PREFIX-i instead of a random one, so a retry of a
    /// run that was cut off can resume with --resume-from and the same ids. The ids must be
    /// unique: use a fresh prefix per run you mean.
    #[arg(long, value_name = "PREFIX", value_parser = parse_kind)]
    pub id_prefix: Option<String>,
    /// With --id-prefix: start at copy number K (enqueue K..count-1), as the error of a run
    /// that was cut off says.
    #[arg(long, value_name = "K", requires = "id_prefix", value_parser = clap::value_parser!(u64))]
    pub resume_from: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `task ...`.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Show a task's state, progress, result or error.
    Show(TaskArgs),
    /// Wait for a task to finish and print its result (exit 0 succeeded; 1 dead, cancelled
    /// or still running at --timeout, naming the state).
    Wait(TaskWaitArgs),
    /// Cancel a task: one not started never starts; a running one is stopped by its worker
    /// within about a second. A finished task is left as it is.
    Cancel(TaskArgs),
}

/// A task id in a queue, and `--json`.
#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// The task id (as `enqueue` prints it).
    pub id: String,
    /// The queue.
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `task wait`.
#[derive(Debug, Clone, Args)]
pub struct TaskWaitArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// How long to wait.
    #[arg(long, value_name = "DURATION", default_value = "30s", allow_hyphen_values = true, value_parser = parse_positive_duration)]
    pub timeout: Duration,
}

/// Task states `tasks --state` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Waiting for their due time.
    Scheduled,
    /// Ready, not yet read by a worker.
    Queued,
    /// Running (read by a worker, not settled).
    Active,
    /// Waiting for a retry.
    Retrying,
    /// Finished (as far back as the events reach).
    Succeeded,
    /// In the dead-letter stream.
    Dead,
    /// Cancelled (as far back as the events reach).
    Cancelled,
}

/// `tasks`.
#[derive(Debug, Clone, Args)]
pub struct TasksArgs {
    /// The queue.
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: String,
    /// The state to list.
    #[arg(long, value_enum)]
    pub state: StateArg,
    /// Most tasks listed (at least 1).
    #[arg(long, default_value_t = 20, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..=10_000).map(|n| n as usize))]
    pub limit: usize,
    /// Continue a `succeeded` or `cancelled` listing after this cursor (the `next page:` line
    /// a full page ends with on stderr).
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `events`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// The queue.
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: String,
    /// Keep printing new events until Ctrl-C, SIGTERM or the reader of stdout goes away.
    #[arg(long)]
    pub follow: bool,
    /// Most past events printed (the newest ones) before following; 0 prints only new ones.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=10_000).map(|n| n as usize))]
    pub limit: usize,
    /// Print one JSON object per line instead of text lines.
    #[arg(long)]
    pub json: bool,
}

/// `stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Only this queue (all queues by default).
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: Option<String>,
    /// Repeat every --interval until Ctrl-C, SIGTERM or the reader of stdout goes away (with
    /// --json: one JSON document per line).
    #[arg(long)]
    pub watch: bool,
    /// Refresh interval of --watch.
    #[arg(long, value_name = "DURATION", default_value = "1s", allow_hyphen_values = true, value_parser = parse_positive_duration)]
    pub interval: Duration,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `pending`.
#[derive(Debug, Clone, Args)]
pub struct PendingArgs {
    /// The queue.
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: String,
    /// Most entries listed per shard, oldest first (at least 1).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..).map(|n| n as usize))]
    pub limit: usize,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List(DlqListArgs),
    /// Show one dead letter in full, payload included.
    Show(DlqShowArgs),
    /// Put dead letters back in their streams with attempts reset.
    Replay(DlqSelectArgs),
    /// Delete dead letters.
    Purge(DlqSelectArgs),
}

/// `dlq list`.
#[derive(Debug, Clone, Args)]
pub struct DlqListArgs {
    /// The queue.
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: String,
    /// Only dead letters of this kind.
    #[arg(long, short = 'k')]
    pub kind: Option<String>,
    /// Most dead letters listed (at least 1).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..).map(|n| n as usize))]
    pub limit: usize,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `dlq show`.
#[derive(Debug, Clone, Args)]
pub struct DlqShowArgs {
    /// The queue.
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: String,
    /// The dead letter's id as `dlq list` prints it, e.g. normal/0/1700000000000-0.
    #[arg(long)]
    pub id: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Which dead letters `replay` or `purge` touch: exactly one of `--id`, `--kind`, `--all`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("select").required(true).args(["id", "kind", "all"])))]
pub struct DlqSelectArgs {
    /// The queue.
    #[arg(long, short = 'q', value_name = "NAME")]
    pub queue: String,
    /// One dead letter, e.g. normal/0/1700000000000-0.
    #[arg(long)]
    pub id: Option<String>,
    /// Every dead letter of this kind.
    #[arg(long, short = 'k')]
    pub kind: Option<String>,
    /// Every dead letter of the queue.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Tasks to enqueue.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub tasks: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    /// Tasks each worker process runs at once.
    #[arg(long, short = 'c', default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000).map(|n| n as usize))]
    pub concurrency: usize,
    /// Tasks of the paced phase (0 skips it).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub paced_tasks: u64,
    /// Tasks per second the paced phase enqueues.
    #[arg(long, value_name = "N", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub paced_rate: u64,
    /// Time each task spends "working" (0 = none).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub task_time: Duration,
    /// Tasks per pipelined enqueue call.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000).map(|n| n as usize))]
    pub batch: usize,
    /// Give up when the tasks have not all finished after this long.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_positive_duration)]
    pub timeout: Duration,
    /// Fail instead of starting a private redis-server when nothing answers at --redis-url.
    #[arg(long)]
    pub no_private_redis: bool,
    /// Keep the demo queue's keys in Redis afterwards (they are deleted by default).
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}
