//! Peers side by side: the same backlog of no-op tasks drained by one worker process of each
//! engine, interleaved round by round, on one private `redis-server` this harness starts.
//!
//! Per run it reports the drain rate (first to last handler start, as `rivulet-bench` does),
//! Redis CPU and commands per task (INFO deltas around the drain, so the fill is not counted)
//! and the worker process's own CPU per task (its `getrusage`), then the medians over rounds.
//!
//! Engines and their settings (the peers tuned as their own docs advise for throughput):
//! - `rivulet`: the defaults (task records on), concurrency 1024; `rivulet-off`: records off
//!   (retention 0).
//! - `chasquimq` 1.3: concurrency 1024, read and ack batches of 1024, events stream off, no
//!   embedded scheduler (needs Redis >= 8.6: it uses `XACKDEL`, `XREADGROUP ... CLAIM`, `IDMP`).
//! - `bullmq-rs` (bullmq-official 1.4): concurrency 1024, completed jobs removed.
//! - `bullmq-node` (BullMQ for Node, `node/package.json`): the same, when `npm` is on PATH.
//!
//! Everything runs on loopback; each run is bounded by `--tasks` and `--max-seconds`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

const QUEUE: &str = "peers";
const KIND: &str = "noop";
const BATCH: usize = 1000;

#[derive(Parser, Debug)]
#[command(about = "Rivulet against ChasquiMQ and BullMQ: one worker process each, one Redis, interleaved")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Tasks per run.
    #[arg(long, default_value_t = 200_000)]
    tasks: u64,
    /// Rounds; each round runs every engine once, in order.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Payload bytes per task.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Engines, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rivulet,rivulet-off,chasquimq,bullmq-rs,bullmq-node"
    )]
    engines: Vec<Engine>,
    /// The `redis-server` to start [default: $RIVULET_REDIS_SERVER, else what
    /// scripts/build-redis8.sh builds or has cached].
    #[arg(long)]
    redis_server: Option<PathBuf>,
    /// A run that has not drained after this long fails the harness.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    /// Also write every run and the medians as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One worker process of a run (started by the harness).
    #[command(hide = true)]
    Worker {
        engine: Engine,
        #[arg(long)]
        url: String,
        #[arg(long)]
        tasks: u64,
    },
    /// Fills a queue as a run does, for profiling one worker process on its own
    /// (`fill`, then `worker` under `perf` or `heaptrack`).
    #[command(hide = true)]
    Fill {
        engine: Engine,
        #[arg(long)]
        url: String,
        #[arg(long)]
        tasks: u64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Engine {
    Rivulet,
    RivuletOff,
    Chasquimq,
    BullmqRs,
    BullmqNode,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Rivulet => "rivulet",
            Engine::RivuletOff => "rivulet-off",
            Engine::Chasquimq => "chasquimq",
            Engine::BullmqRs => "bullmq-rs",
            Engine::BullmqNode => "bullmq-node",
        }
    }
}

/// What a worker process prints when it has run `tasks` handlers.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
struct WorkerOut {
    handled: u64,
    first_us: u64,
    last_us: u64,
    cpu_us: u64,
}

#[derive(Serialize, Debug, Clone)]
struct Run {
    engine: Engine,
    round: u32,
    tasks: u64,
    tasks_per_s: f64,
    redis_us_per_task: f64,
    redis_cmds_per_task: f64,
    worker_us_per_task: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.cmd {
        Some(Cmd::Worker { engine, url, tasks }) => {
            let out = rt.block_on(worker(engine, &url, tasks))?;
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
        Some(Cmd::Fill {
            engine,
            url,
            tasks,
            payload,
        }) => rt.block_on(fill(engine, Path::new(env!("CARGO_MANIFEST_DIR")), &url, tasks, payload)),
        None => rt.block_on(run(cli.run)),
    }
}

// ---------------------------------------------------------------- the harness

async fn run(args: RunArgs) -> Result<()> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = match (&args.redis_server, std::env::var_os("RIVULET_REDIS_SERVER")) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => {
            let out = std::process::Command::new(here.join("../../scripts/build-redis8.sh"))
                .stderr(Stdio::inherit())
                .output()
                .context("running scripts/build-redis8.sh")?;
            if !out.status.success() {
                bail!("scripts/build-redis8.sh failed; pass --redis-server PATH");
            }
            PathBuf::from(String::from_utf8(out.stdout)?.trim())
        }
    };
    let mut engines = args.engines.clone();
    if engines.contains(&Engine::BullmqNode) && !node_ready(here).await? {
        eprintln!("peers: npm not found: bullmq-node left out");
        engines.retain(|e| *e != Engine::BullmqNode);
    }
    let server = Server::start(&binary)?;
    let url = server.url();
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let version: String = info(&mut conn, "server")
        .await?
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
        .unwrap_or_default();
    eprintln!(
        "peers: redis {version} ({}), {} tasks of {} B, {} rounds",
        binary.display(),
        args.tasks,
        args.payload,
        args.rounds
    );
    let me = std::env::current_exe()?;
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for &engine in &engines {
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
            fill(engine, here, &url, args.tasks, args.payload).await?;
            let before = snapshot(&mut conn).await?;
            let out = spawn_worker(engine, here, &me, &url, args.tasks, args.max_seconds).await?;
            let after = snapshot(&mut conn).await?;
            let n = out.handled.max(1) as f64;
            let span = (out.last_us.saturating_sub(out.first_us)).max(1) as f64 / 1e6;
            let r = Run {
                engine,
                round,
                tasks: out.handled,
                tasks_per_s: (out.handled.saturating_sub(1)) as f64 / span,
                redis_us_per_task: (after.cpu_s - before.cpu_s) * 1e6 / n,
                // The two INFO calls of the snapshots are not the engine's.
                redis_cmds_per_task: (after.calls.saturating_sub(before.calls + 1)) as f64 / n,
                worker_us_per_task: out.cpu_us as f64 / n,
            };
            eprintln!(
                "round {round} {:<12} {:>9.0} tasks/s  redis {:>5.2} us/task {:>5.3} cmds/task  worker {:>5.2} us/task",
                engine.name(),
                r.tasks_per_s,
                r.redis_us_per_task,
                r.redis_cmds_per_task,
                r.worker_us_per_task
            );
            eprintln!("        executing: {}", top_commands(&before, &after, n));
            runs.push(r);
        }
    }
    let medians = table(&engines, &runs, &version, &args);
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "redis": version, "tasks": args.tasks, "payload": args.payload, "runs": runs, "medians": medians });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn table(engines: &[Engine], runs: &[Run], version: &str, args: &RunArgs) -> Vec<serde_json::Value> {
    println!(
        "\nMedians of {} rounds, {} tasks of {} B, one worker process each, Redis {version}\n",
        args.rounds, args.tasks, args.payload
    );
    println!("| engine | tasks/s | vs rivulet | Redis us/task | Redis cmds/task | worker us/task |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let of = |e: Engine, f: fn(&Run) -> f64| median(runs.iter().filter(|r| r.engine == e).map(f).collect());
    let base = of(Engine::Rivulet, |r| r.tasks_per_s);
    let mut out = Vec::new();
    for &e in engines {
        let rate = of(e, |r| r.tasks_per_s);
        let (rus, cmds, wus) = (
            of(e, |r| r.redis_us_per_task),
            of(e, |r| r.redis_cmds_per_task),
            of(e, |r| r.worker_us_per_task),
        );
        let vs = if base.is_finite() {
            format!("{:.2}x", rate / base)
        } else {
            "n/a".into()
        };
        println!("| {} | {rate:.0} | {vs} | {rus:.2} | {cmds:.3} | {wus:.2} |", e.name());
        out.push(serde_json::json!({ "engine": e, "tasks_per_s": rate, "redis_us_per_task": rus, "redis_cmds_per_task": cmds, "worker_us_per_task": wus }));
    }
    out
}

struct Snapshot {
    cpu_s: f64,
    calls: u64,
    /// Per command (`INFO commandstats`): calls and microseconds spent executing them (not
    /// counting reading requests and writing replies, which `cpu_s` includes).
    by_command: std::collections::BTreeMap<String, (u64, u64)>,
}

/// The commands that took the most execution time between two snapshots, per task:
/// `XACKDEL 1.20us/0.004` (microseconds, calls).
fn top_commands(before: &Snapshot, after: &Snapshot, n: f64) -> String {
    let mut v: Vec<(String, f64, f64)> = after
        .by_command
        .iter()
        .filter(|(c, _)| c.as_str() != "info")
        .map(|(c, (calls, usec))| {
            let (c0, u0) = before.by_command.get(c).copied().unwrap_or((0, 0));
            (c.clone(), usec.saturating_sub(u0) as f64 / n, calls.saturating_sub(c0) as f64 / n)
        })
        .filter(|(_, us, calls)| *us > 0.0 || *calls > 0.0)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.iter()
        .take(6)
        .map(|(c, us, calls)| format!("{c} {us:.2}us/{calls:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn info(conn: &mut redis::aio::MultiplexedConnection, section: &str) -> Result<String> {
    Ok(redis::cmd("INFO").arg(section).query_async(conn).await?)
}

async fn snapshot(conn: &mut redis::aio::MultiplexedConnection) -> Result<Snapshot> {
    let text: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let mut cpu_s = 0.0;
    let mut calls = 0;
    let mut by_command = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(v) = line
            .strip_prefix("used_cpu_sys:")
            .or_else(|| line.strip_prefix("used_cpu_user:"))
        {
            cpu_s += v.trim().parse::<f64>().unwrap_or(0.0);
        }
        if let Some(rest) = line.strip_prefix("cmdstat_")
            && let Some(c) = rest.split("calls=").nth(1)
        {
            let n = c.split(',').next().and_then(|c| c.parse::<u64>().ok()).unwrap_or(0);
            calls += n;
            let usec = rest
                .split(",usec=")
                .nth(1)
                .and_then(|u| u.split(',').next())
                .and_then(|u| u.parse::<u64>().ok())
                .unwrap_or(0);
            let name = rest.split(':').next().unwrap_or_default().to_owned();
            by_command.insert(name, (n, usec));
        }
    }
    Ok(Snapshot { cpu_s, calls, by_command })
}

async fn spawn_worker(engine: Engine, here: &Path, me: &Path, url: &str, tasks: u64, max: u64) -> Result<WorkerOut> {
    let mut cmd = if engine == Engine::BullmqNode {
        let mut c = tokio::process::Command::new("node");
        c.arg(here.join("node/worker.mjs"))
            .env("PEERS_URL", url)
            .env("PEERS_TASKS", tasks.to_string());
        c
    } else {
        let mut c = tokio::process::Command::new(me);
        c.args(["worker", engine.name(), "--url", url, "--tasks", &tasks.to_string()]);
        c
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting the {} worker", engine.name()))?;
    let out = tokio::time::timeout(Duration::from_secs(max), child.wait_with_output())
        .await
        .with_context(|| format!("{} did not drain {tasks} tasks within {max} s", engine.name()))??;
    if !out.status.success() {
        bail!("the {} worker exited with {}", engine.name(), out.status);
    }
    let text = String::from_utf8(out.stdout)?;
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{} worker printed {text:?}", engine.name()))
}

async fn node_ready(here: &Path) -> Result<bool> {
    let dir = here.join("node");
    if dir.join("node_modules/bullmq").is_dir() {
        return Ok(true);
    }
    let Ok(status) = tokio::process::Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&dir)
        .status()
        .await
    else {
        return Ok(false);
    };
    if !status.success() {
        bail!("npm install in {} failed", dir.display());
    }
    Ok(true)
}

// ---------------------------------------------------------------- filling

fn body(payload: usize) -> String {
    "x".repeat(payload)
}

async fn fill(engine: Engine, here: &Path, url: &str, tasks: u64, payload: usize) -> Result<()> {
    let text = body(payload);
    let batches = |n: u64| (0..n).step_by(BATCH).map(move |i| (n - i).min(BATCH as u64) as usize);
    match engine {
        Engine::Rivulet | Engine::RivuletOff => {
            let client = rivulet::Client::new(&redis::Client::open(url)?).await?;
            let queue = rivulet_queue(engine)?;
            client.declare(&queue).await?;
            let bytes = bytes::Bytes::from(text.into_bytes());
            for n in batches(tasks) {
                let batch = (0..n).map(|_| rivulet::Task::bytes(KIND, bytes.clone()));
                client.enqueue_many(&queue, batch).await?;
            }
        }
        Engine::Chasquimq => {
            let producer = chasquimq::Producer::<String>::connect(
                url,
                chasquimq::ProducerConfig {
                    queue_name: QUEUE.into(),
                    ..Default::default()
                },
            )
            .await?;
            for n in batches(tasks) {
                producer.add_bulk(vec![text.clone(); n]).await?;
            }
        }
        Engine::BullmqRs => {
            let queue = bullmq::Queue::with_options(
                QUEUE,
                bullmq::QueueOptions {
                    connection: bullmq::options::RedisConnectionOptions {
                        url: url.into(),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await?;
            for n in batches(tasks) {
                let jobs = (0..n).map(|_| bullmq::BulkJob::new(KIND, &text)).collect();
                queue.add_bulk(jobs).await?;
            }
        }
        Engine::BullmqNode => {
            let status = tokio::process::Command::new("node")
                .arg(here.join("node/fill.mjs"))
                .env("PEERS_URL", url)
                .env("PEERS_TASKS", tasks.to_string())
                .env("PEERS_PAYLOAD", payload.to_string())
                .status()
                .await?;
            if !status.success() {
                bail!("node fill.mjs failed");
            }
        }
    }
    Ok(())
}

fn rivulet_queue(engine: Engine) -> Result<rivulet::Queue> {
    let q = rivulet::Queue::new(QUEUE)?;
    Ok(if engine == Engine::RivuletOff {
        q.retention(Duration::ZERO)
    } else {
        q
    })
}

// ---------------------------------------------------------------- worker processes

/// First and last handler start, and the count; `done` fires at the `tasks`-th handler.
struct Tally {
    tasks: u64,
    handled: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
    done: Notify,
}

impl Tally {
    fn new(tasks: u64) -> Arc<Self> {
        Arc::new(Tally {
            tasks,
            handled: AtomicU64::new(0),
            first_us: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            done: Notify::new(),
        })
    }

    /// Returns true for the handler that completes the count.
    fn hit(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        let n = self.handled.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 {
            self.first_us.store(now, Ordering::Relaxed);
        }
        self.last_us.fetch_max(now, Ordering::Relaxed);
        if n == self.tasks {
            self.done.notify_one();
            return true;
        }
        false
    }

    fn out(&self) -> Result<WorkerOut> {
        let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
        let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
        Ok(WorkerOut {
            handled: self.handled.load(Ordering::Relaxed),
            first_us: self.first_us.load(Ordering::Relaxed),
            last_us: self.last_us.load(Ordering::Relaxed),
            cpu_us: us(usage.user_time()) + us(usage.system_time()),
        })
    }
}

async fn worker(engine: Engine, url: &str, tasks: u64) -> Result<WorkerOut> {
    let tally = Tally::new(tasks);
    match engine {
        Engine::Rivulet | Engine::RivuletOff => {
            let t = tally.clone();
            let router = rivulet::Router::new().route_bytes(KIND, move |_ctx: rivulet::TaskContext, _body| {
                t.hit();
                async { Ok(()) }
            });
            let config = rivulet::WorkerConfig {
                concurrency: 1024,
                ..rivulet::WorkerConfig::default()
            };
            let t = tally.clone();
            rivulet::Worker::new(redis::Client::open(url)?, router, config)
                .queue_with(rivulet_queue(engine)?, rivulet::QueueOptions::default())
                .run(async move { t.done.notified().await })
                .await?;
        }
        Engine::Chasquimq => {
            let token = tokio_util::sync::CancellationToken::new();
            let config = chasquimq::ConsumerConfig {
                queue_name: QUEUE.into(),
                concurrency: 1024,
                batch: 1024,
                ack_batch: 1024,
                events_enabled: false,
                run_scheduler: false,
                ..Default::default()
            };
            let (t, stop) = (tally.clone(), token.clone());
            chasquimq::Consumer::<String>::new(url, config)
                .run(
                    move |_job| {
                        if t.hit() {
                            stop.cancel();
                        }
                        async { Ok(bytes::Bytes::new()) }
                    },
                    token,
                )
                .await?;
        }
        Engine::BullmqRs => {
            let t = tally.clone();
            let options = bullmq::WorkerOptions {
                connection: bullmq::options::RedisConnectionOptions {
                    url: url.into(),
                    ..Default::default()
                },
                concurrency: 1024,
                remove_on_complete: Some(bullmq::types::RemoveOnFinish::Bool(true)),
                ..Default::default()
            };
            let worker = bullmq::Worker::with_options(
                QUEUE,
                move |_job: bullmq::Job, _token| {
                    t.hit();
                    async { Ok(serde_json::Value::Null) }
                },
                options,
            )
            .await?;
            tally.done.notified().await;
            worker.close(10_000).await?;
        }
        Engine::BullmqNode => bail!("bullmq-node runs node/worker.mjs"),
    }
    tally.out()
}

// ---------------------------------------------------------------- the private Redis

struct Server {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl Server {
    fn start(binary: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("rivulet-peers-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = std::process::Command::new(binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let server = Server { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
