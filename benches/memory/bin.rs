//! `rivulet-memory`: memory under load. One worker process runs N tasks (default 1,000,000)
//! with retries and dead letters while a producer keeps a bounded backlog; every second the
//! worker's resident memory (VmRSS) and Redis's `used_memory` are sampled. Memory should be
//! flat once warm: nothing in the worker or in Redis may grow with the number of tasks run.
//!
//! ```text
//! cargo run --release -p rivulet-suite --bin rivulet-memory -- [--tasks 1000000] [--out DIR]
//! ```
//!
//! Tasks: one in 20 fails its first attempt (a retry, 10 ms later), one in 200 is fatal (a
//! dead letter; the DLQ is capped at `--dlq-maxlen`, 100,000 per shard by default, so it
//! is bounded too, but it grows until the cap: it is reported apart). Output: a table on
//! stdout, `samples.csv` and `memory.svg` in `--out` (default `bench-results/memory`).
//! `docs/benchmarks.md` has the figures of a run.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rivulet::testing::RedisServer;
use rivulet::{Client, HandlerError, Inspector, Queue, RetryPolicy, Router, Task, TaskContext, Worker, WorkerConfig};

#[derive(Debug, Parser)]
#[command(name = "rivulet-memory")]
struct Args {
    /// Tasks to run.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: u64,
    /// Most tasks waiting at once (the producer pauses above it).
    #[arg(long, default_value_t = 20_000)]
    backlog: u64,
    /// Where the samples and the plot go.
    #[arg(long, default_value = "bench-results/memory")]
    out: PathBuf,
    /// Internal: run as the worker process on this Redis URL.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    done: u64,
    rss_kib: u64,
    redis_bytes: u64,
    dlq: u64,
}

fn queue() -> Queue {
    Queue::new("memory").expect("a valid name")
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match &args.worker {
        Some(url) => rt.block_on(worker(url)),
        None => rt.block_on(drive(&args)),
    }
}

/// The worker process: runs until its stdin closes.
async fn worker(url: &str) -> Result<()> {
    let router = Router::new().route("m", |ctx: TaskContext, n: u64| async move {
        if n.is_multiple_of(200) {
            Err(HandlerError::fatal("one in 200 is fatal"))
        } else if n % 20 == 1 && ctx.attempt == 0 {
            Err(HandlerError::retry("one in 20 fails once"))
        } else {
            Ok(())
        }
    });
    let config = WorkerConfig {
        retry: RetryPolicy {
            base: Duration::from_millis(10),
            jitter: false,
            ..RetryPolicy::default()
        },
        ..WorkerConfig::default()
    };
    let worker = Worker::new(redis::Client::open(url)?, router, config).queue(queue());
    worker
        .run(async {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 1];
            let _ = tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await;
        })
        .await?;
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory without used_memory")
}

async fn drive(args: &Args) -> Result<()> {
    let server = RedisServer::start();
    let redis = server.client();
    let client = Client::new(&redis).await?;
    let inspector = Inspector::new(&redis).await?;
    let mut raw = redis.get_multiplexed_async_connection().await?;
    let q = queue();
    client.declare(&q).await?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--worker", &server.url()])
        .stdin(Stdio::piped())
        .spawn()
        .context("starting the worker process")?;
    let pid = child.id();
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = Instant::now();
    let mut enqueued = 0u64;
    let dead_every = 200;
    let expected_dead = args.tasks.div_ceil(dead_every);
    eprintln!(
        "{:>7} {:>10} {:>10} {:>12} {:>8}",
        "secs", "done", "rss MiB", "redis MiB", "dlq"
    );
    loop {
        let stats = inspector.stats(&q).await?;
        let (done, dead) = (stats.counters.done, stats.counters.dead);
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            let dlq: u64 = stats.priorities.iter().map(|p| p.dead_letters).sum();
            let s = Sample {
                secs: started.elapsed().as_secs_f64(),
                done,
                rss_kib: rss_kib(pid),
                redis_bytes: used_memory(&mut raw).await?,
                dlq,
            };
            if samples.len().is_multiple_of(10) {
                eprintln!(
                    "{:>7.0} {:>10} {:>10.1} {:>12.1} {:>8}",
                    s.secs,
                    s.done,
                    s.rss_kib as f64 / 1024.0,
                    s.redis_bytes as f64 / 1048576.0,
                    s.dlq
                );
            }
            samples.push(s);
        }
        if done + dead >= args.tasks {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the worker process exited early: {status}");
        }
        if enqueued < args.tasks && enqueued - (done + dead).min(enqueued) < args.backlog {
            let n = 1000.min(args.tasks - enqueued);
            let batch = (enqueued..enqueued + n).map(|i| Task::json("m", &i).expect("a number encodes"));
            client.enqueue_many(&q, batch).await?;
            enqueued += n;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(child.stdin.take());
    child.wait()?;
    let elapsed = started.elapsed();
    let stats = inspector.stats(&q).await?;
    report(
        args,
        &samples,
        elapsed,
        stats.counters.done,
        stats.counters.dead,
        expected_dead,
    )
}

fn report(args: &Args, samples: &[Sample], elapsed: Duration, done: u64, dead: u64, expected_dead: u64) -> Result<()> {
    // Warm-up: the first tenth of the tasks.
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.done >= args.tasks / 10).collect();
    let span = |f: &dyn Fn(&Sample) -> f64| {
        let lo = warm.iter().map(|s| f(s)).fold(f64::INFINITY, f64::min);
        let hi = warm.iter().map(|s| f(s)).fold(0.0, f64::max);
        (lo, hi)
    };
    let rss = span(&|s| s.rss_kib as f64 / 1024.0);
    let redis = span(&|s| s.redis_bytes as f64 / 1048576.0);
    let first_half: Vec<&&Sample> = warm.iter().filter(|s| s.done < args.tasks / 2).collect();
    let last = warm.last().copied().or(samples.last()).context("no samples")?;
    let mid_rss = first_half.last().map_or(rss.0, |s| s.rss_kib as f64 / 1024.0);
    println!(
        "rivulet-memory: {} tasks through one worker process in {:.0} s ({:.0} tasks/s)",
        args.tasks,
        elapsed.as_secs_f64(),
        args.tasks as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  done {done}, dead letters {dead} (expected {expected_dead}), samples {}",
        samples.len()
    );
    println!(
        "  after warm-up (10 % of tasks): worker RSS {:.1}-{:.1} MiB (at half-way {:.1}, at the end {:.1})",
        rss.0,
        rss.1,
        mid_rss,
        last.rss_kib as f64 / 1024.0
    );
    println!(
        "  after warm-up: Redis used_memory {:.1}-{:.1} MiB (the DLQ holds {} entries at the end)",
        redis.0, redis.1, last.dlq
    );
    std::fs::create_dir_all(&args.out)?;
    let mut csv = std::fs::File::create(args.out.join("samples.csv"))?;
    writeln!(csv, "secs,done,worker_rss_kib,redis_used_memory_bytes,dlq_entries")?;
    for s in samples {
        writeln!(
            csv,
            "{:.1},{},{},{},{}",
            s.secs, s.done, s.rss_kib, s.redis_bytes, s.dlq
        )?;
    }
    std::fs::write(args.out.join("memory.svg"), svg(samples, args.tasks))?;
    println!(
        "  wrote {} and {}",
        args.out.join("samples.csv").display(),
        args.out.join("memory.svg").display()
    );
    Ok(())
}

/// Two lines over tasks done: worker RSS and Redis memory, in MiB, drawn by hand (no fonts
/// needed).
fn svg(samples: &[Sample], tasks: u64) -> String {
    let (w, h, pad) = (800.0, 400.0, 50.0);
    let hi = samples
        .iter()
        .map(|s| (s.rss_kib as f64 / 1024.0).max(s.redis_bytes as f64 / 1048576.0))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |done: u64| pad + (w - 2.0 * pad) * done as f64 / tasks.max(1) as f64;
    let y = |mib: f64| h - pad - (h - 2.0 * pad) * mib / hi;
    let line = |f: &dyn Fn(&Sample) -> f64| {
        samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.done), y(f(s))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    out += r#"<rect width="100%" height="100%" fill="white"/>"#;
    out += &format!(
        r#"<text x="{pad}" y="25" font-size="15">Memory under load: {tasks} tasks, one worker process (MiB over tasks done)</text>"#
    );
    out += &format!(
        r#"<line x1="{pad}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{0}" stroke="black"/>"#,
        h - pad,
        w - pad
    );
    for i in 0..=4 {
        let mib = hi * i as f64 / 4.0;
        out += &format!(r#"<text x="5" y="{:.0}">{mib:.0}</text>"#, y(mib) + 4.0);
        let done = tasks * i / 4;
        out += &format!(
            r#"<text x="{:.0}" y="{:.0}">{done}</text>"#,
            x(done) - 15.0,
            h - pad + 18.0
        );
    }
    out += &format!(
        r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/>"#,
        line(&|s| s.rss_kib as f64 / 1024.0)
    );
    out += &format!(
        r#"<polyline fill="none" stroke="firebrick" stroke-width="2" points="{}"/>"#,
        line(&|s| s.redis_bytes as f64 / 1048576.0)
    );
    out += &format!(
        r#"<text x="{0}" y="{pad}" fill="steelblue">worker RSS</text><text x="{0}" y="{1}" fill="firebrick">Redis used_memory</text>"#,
        w - 180.0,
        pad + 16.0
    );
    out += "</svg>\n";
    out
}
