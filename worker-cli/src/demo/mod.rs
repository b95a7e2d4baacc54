//! `worker-cli demo`: enqueues `--tasks` tasks of kind `demo` into a throwaway queue
//! (`demo-<pid>-<random>`) at once, runs them with `--workers` worker processes under the fleet
//! supervisor, then enqueues `--paced-tasks` more at `--paced-rate` per second, and prints
//! throughput (of the burst) and enqueue-to-start latency of each phase (`samples`: the kind
//! and its latency samples, served only by the demo's own workers). The two latencies answer
//! different questions: the burst's is queueing behind the burst itself (20,000 tasks enqueued
//! in one go wait their turn), the paced phase's is what a task waits under a load the workers
//! keep up with, the figure README quotes. Afterwards every key of the demo queue is deleted
//! (unless `--keep`).
//!
//! When nothing answers at the Redis URL it starts a private `redis-server` from PATH
//! (`local_redis`) and says so.

pub mod samples;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rivulet::RedisConnection;
use rivulet::{Client, Inspector, Queue, Task};
use rivulet_fleet::{Fleet, Stop};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::samples::{DemoPayload, KIND, Phases, decode_into, now_us};
use crate::cli::{DemoArgs, GlobalArgs};
use crate::local_redis::LocalRedis;
use crate::output::{self, fmt_micros};
use crate::settings::{children, redact_url, worker_args};
use crate::store;

/// How often the demo polls the queue's counters.
const POLL: Duration = Duration::from_millis(50);
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Longest wait for the worker processes to register.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The demo's result.
#[derive(Debug, Serialize)]
struct Summary {
    queue: String,
    redis: String,
    private_redis: bool,
    tasks: u64,
    done: u64,
    dead: u64,
    workers: u32,
    concurrency: usize,
    enqueue_ms: f64,
    enqueue_per_s: f64,
    elapsed_ms: f64,
    throughput_per_s: f64,
    /// Start latency of the burst: mostly time spent queueing behind the burst's other tasks.
    start_latency_us: Latency,
    /// The paced phase, when it ran.
    paced: Option<Paced>,
}

/// The paced phase: a steady rate the workers keep up with.
#[derive(Debug, Serialize)]
struct Paced {
    tasks: u64,
    rate_per_s: u64,
    start_latency_us: Latency,
}

#[derive(Debug, Serialize)]
struct Latency {
    samples: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
    mean: f64,
}

/// `worker-cli demo`.
pub async fn run(global: &GlobalArgs, args: &DemoArgs) -> Result<()> {
    let (url, tls, private) = reach_or_start(&global.redis_url, &global.tls(), args.no_private_redis).await?;
    let (client, mut conn) = store::connect_checked(&url, &tls).await?;
    let name = format!("demo-{}-{:06x}", std::process::id(), fastrand::u32(..0x100_0000));
    let queue = Queue::new(&name)?;
    let producer = Client::new(&client).await.map_err(|e| store::engine_error(&url, e))?;
    producer
        .declare(&queue)
        .await
        .map_err(|e| store::engine_error(&url, e))?;
    let inspector = Inspector::new(&client)
        .await
        .map_err(|e| store::engine_error(&url, e))?;
    note!(
        "demo: {} tasks on queue {name}, {} worker process(es) x {} concurrency, Redis at {}",
        args.tasks,
        args.workers,
        args.concurrency,
        redact_url(&url)
    );

    let result = drive(global, args, (&url, &tls), &queue, &producer, &inspector, &mut conn).await;

    if args.keep {
        note!(
            "demo: kept the keys of queue {name} (rivulet:{{{name}:*}}, its entry in rivulet:queues) and {}",
            store::demo_latency_key(queue.name())
        );
    } else if let Err(e) = store::delete_demo_queue(&inspector, &mut conn, &queue).await {
        note!("demo: could not delete the demo's keys: {e:#}");
    }
    let mut summary = result?;
    summary.redis = redact_url(&url);
    summary.private_redis = private.is_some();
    print_summary(&summary, args.output.json)?;
    // `private` (the redis-server) stops here, after the workers are gone.
    drop(private);
    Ok(())
}

/// Starts the workers, enqueues, waits for the last task, drains the workers, and reads the
/// samples. The workers are always drained before this returns, error or not.
async fn drive(
    global: &GlobalArgs,
    args: &DemoArgs,
    // The Redis the demo uses and its TLS options (what its worker processes get).
    (url, tls): (&str, &rivulet::TlsOptions),
    queue: &Queue,
    producer: &Client,
    inspector: &Inspector,
    conn: &mut RedisConnection,
) -> Result<Summary> {
    let name = queue.name().to_string();
    let worker = worker_args(&[
        "--queue",
        &name,
        "--concurrency",
        &args.concurrency.to_string(),
        "--max-attempts",
        "1",
        "--drain-timeout",
        "10s",
        "--demo-samples",
    ])
    .map_err(|e| anyhow!("demo worker flags: {e}"))?;
    let program = std::env::current_exe().context("finding this program to start workers")?;
    let mut fleet = children(program, global.log_format, &worker, url, tls);
    if std::env::var_os("RUST_LOG").is_none() {
        // Keep the progress line readable: workers log warnings only.
        fleet.env.push(("RUST_LOG".into(), "warn".into()));
    }
    fleet.crash_limit = 3;

    // Ctrl-C: the first one ends the demo (workers drain, keys are deleted); a second one
    // kills the workers.
    let mut background = JoinSet::new();
    let signals = Stop::new();
    signals.on_signals(&mut background)?;
    let stop = Stop {
        drain: CancellationToken::new(),
        now: signals.now.clone(),
    };
    let (fleet, _size) = Fleet::new(fleet, args.workers);
    let mut supervisor = JoinSet::new();
    supervisor.spawn(fleet.run(stop.clone()));

    let outcome = tokio::select! {
        r = async {
            let burst = run_tasks(args, queue, producer, inspector).await?;
            run_paced(args, queue, producer, inspector, burst.2 + burst.3).await?;
            Ok(burst)
        } => r,
        () = signals.drain.cancelled() => Err(anyhow!("interrupted")),
        Some(r) = supervisor.join_next() => Err(match r {
            Ok(Ok(_)) => anyhow!("the worker processes stopped early"),
            Ok(Err(e)) => anyhow!(e).context("the worker processes failed"),
            Err(e) => anyhow!("the supervisor task failed: {e}"),
        }),
    };
    stop.drain.cancel();
    if let Some(r) = supervisor.join_next().await {
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => note!("demo: stopping the workers: {e:#}"),
            Err(e) => note!("demo: the supervisor task failed: {e}"),
        }
    }
    background.shutdown().await;
    let (enqueue, elapsed, done, dead) = outcome?;

    let mut hist = Phases::new();
    for encoded in store::load_latency(conn, queue.name()).await? {
        decode_into(&mut hist, &encoded)?;
    }
    let latency = |h: &hdrhistogram::Histogram<u64>| Latency {
        samples: h.len(),
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        max: h.max(),
        mean: h.mean(),
    };
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    Ok(Summary {
        queue: name,
        redis: String::new(),
        private_redis: false,
        tasks: args.tasks,
        done,
        dead,
        workers: args.workers,
        concurrency: args.concurrency,
        enqueue_ms: enqueue.as_secs_f64() * 1000.0,
        enqueue_per_s: args.tasks as f64 / secs(enqueue),
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        throughput_per_s: (done + dead) as f64 / secs(elapsed),
        start_latency_us: latency(&hist.burst),
        paced: (args.paced_tasks > 0).then(|| Paced {
            tasks: args.paced_tasks,
            rate_per_s: args.paced_rate,
            start_latency_us: latency(&hist.paced),
        }),
    })
}

/// Waits for the workers, enqueues every task, and waits until all are settled. Returns the
/// enqueue time, the time from the first enqueue to the last settle, and done/dead counts.
async fn run_tasks(
    args: &DemoArgs,
    queue: &Queue,
    producer: &Client,
    inspector: &Inspector,
) -> Result<(Duration, Duration, u64, u64)> {
    let name = queue.name().as_str();
    let started = Instant::now();
    loop {
        let live = inspector
            .workers()
            .await?
            .iter()
            .filter(|w| w.queues.iter().any(|q| q == name))
            .count();
        if live >= args.workers as usize {
            break;
        }
        if started.elapsed() > STARTUP_TIMEOUT {
            bail!(
                "only {live} of {} worker processes registered within {STARTUP_TIMEOUT:?}; their logs above say why",
                args.workers
            );
        }
        tokio::time::sleep(POLL).await;
    }

    let mut progress = Progress::new(args.tasks);
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < args.tasks {
        let n = (args.tasks - sent).min(args.batch as u64);
        let ms = args.task_time.as_millis() as u64;
        let tasks = (0..n)
            .map(|_| {
                let p = DemoPayload {
                    t_us: now_us(),
                    ms,
                    paced: false,
                };
                Task::json(KIND, &p)
            })
            .collect::<rivulet::Result<Vec<Task>>>()?;
        producer.enqueue_many(queue, tasks).await?;
        sent += n;
        if progress.due() {
            let (done, dead) = settled(inspector, queue).await?;
            progress.show(sent, done + dead, t0.elapsed());
        }
    }
    let enqueue = t0.elapsed();

    loop {
        let (done, dead) = settled(inspector, queue).await?;
        let elapsed = t0.elapsed();
        if done + dead >= args.tasks {
            progress.show(sent, done + dead, elapsed);
            progress.finish();
            return Ok((enqueue, elapsed, done, dead));
        }
        if elapsed > args.timeout {
            progress.finish();
            bail!(
                "only {} of {} tasks finished within --timeout {}",
                done + dead,
                args.tasks,
                humantime::format_duration(args.timeout)
            );
        }
        if progress.due() {
            progress.show(sent, done + dead, elapsed);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The paced phase: `--paced-tasks` tasks enqueued at `--paced-rate` per second (each stamped
/// when it is sent), after the burst has been settled; waits until they are settled too.
/// `before` is what the burst settled.
async fn run_paced(
    args: &DemoArgs,
    queue: &Queue,
    producer: &Client,
    inspector: &Inspector,
    before: u64,
) -> Result<()> {
    if args.paced_tasks == 0 {
        return Ok(());
    }
    note!(
        "demo: paced phase: {} tasks at {} tasks/s",
        args.paced_tasks,
        args.paced_rate
    );
    let ms = args.task_time.as_millis() as u64;
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < args.paced_tasks {
        // As many as are due by now: the rate holds on average whatever the timer's grain.
        let due = ((t0.elapsed().as_secs_f64() * args.paced_rate as f64) as u64 + 1).min(args.paced_tasks);
        if due > sent {
            let tasks = (sent..due)
                .map(|_| {
                    let p = DemoPayload {
                        t_us: now_us(),
                        ms,
                        paced: true,
                    };
                    Task::json(KIND, &p)
                })
                .collect::<rivulet::Result<Vec<Task>>>()?;
            producer.enqueue_many(queue, tasks).await?;
            sent = due;
        } else {
            let next = Duration::from_secs_f64(sent as f64 / args.paced_rate as f64);
            tokio::time::sleep(next.saturating_sub(t0.elapsed())).await;
        }
    }
    let total = before + args.paced_tasks;
    loop {
        let (done, dead) = settled(inspector, queue).await?;
        if done + dead >= total {
            return Ok(());
        }
        if t0.elapsed() > args.timeout {
            bail!(
                "only {} of {} paced tasks finished within --timeout {}",
                (done + dead).saturating_sub(before),
                args.paced_tasks,
                humantime::format_duration(args.timeout)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn settled(inspector: &Inspector, queue: &Queue) -> Result<(u64, u64)> {
    let stats = inspector.stats(queue).await?;
    Ok((stats.counters.done, stats.counters.dead))
}

/// The progress line on stderr: redrawn in place on a terminal, a line every few seconds
/// otherwise (logs, CI).
#[derive(Debug)]
struct Progress {
    total: u64,
    tty: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new(total: u64) -> Self {
        Progress {
            total,
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            last: None,
        }
    }

    fn due(&self) -> bool {
        let every = if self.tty {
            PROGRESS_EVERY
        } else {
            Duration::from_secs(2)
        };
        self.last.is_none_or(|t| t.elapsed() >= every)
    }

    fn show(&mut self, sent: u64, finished: u64, elapsed: Duration) {
        self.last = Some(Instant::now());
        let rate = finished as f64 / elapsed.as_secs_f64().max(1e-9);
        let line = format!(
            "enqueued {sent}/{total}  finished {finished}/{total}  ({rate:.0} tasks/s)",
            total = self.total
        );
        if self.tty {
            output::note_raw(&format!("\r{line}   "));
        } else {
            note!("{line}");
        }
    }

    fn finish(&self) {
        if self.tty && self.last.is_some() {
            note!("");
        }
    }
}

/// The URL and TLS options to use, and the private server when one had to be started (plain
/// TCP, so no TLS options then).
async fn reach_or_start(
    url: &str,
    tls: &rivulet::TlsOptions,
    no_private: bool,
) -> Result<(String, rivulet::TlsOptions, Option<LocalRedis>)> {
    match store::connect_checked(url, tls).await {
        Ok(_) => Ok((url.to_owned(), tls.clone(), None)),
        Err(e) if e.nothing_answered() && !no_private => {
            if !on_path("redis-server") {
                return Err(anyhow!(e).context(
                    "no Redis answers and redis-server is not on PATH to start a private one; \
                     install it (e.g. apt-get install redis-server) or set --redis-url / REDIS_URL",
                ));
            }
            note!(
                "demo: nothing answers at {}; starting a private redis-server from PATH (stopped and removed when the demo ends)",
                redact_url(url)
            );
            let server = LocalRedis::start().await?;
            note!("demo: private redis-server at {}", server.url());
            Ok((server.url(), rivulet::TlsOptions::default(), Some(server)))
        }
        Err(e) => Err(e.into()),
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn print_summary(s: &Summary, json: bool) -> Result<()> {
    if json {
        return output::json(s);
    }
    let l = &s.start_latency_us;
    let private = if s.private_redis { " (private)" } else { "" };
    let text = format!(
        "redis          {redis}{private}\n\
         queue          {queue} (deleted unless --keep)\n\
         tasks          {tasks} ({done} done, {dead} dead)\n\
         workers        {workers} process(es) x {conc} concurrency\n\
         enqueue        {enq:.0} ms ({enq_rate:.0} tasks/s)\n\
         processing     {el:.0} ms from the first enqueue to the last task ({rate:.0} tasks/s)\n\
         start latency  enqueue -> handler start of the burst, {n} samples: mostly time spent\n\
         \x20              queueing behind the rest of the burst (not a per-task latency)\n  \
           p50  {p50}\n  p90  {p90}\n  p99  {p99}\n  max  {max}\n",
        redis = s.redis,
        queue = s.queue,
        tasks = s.tasks,
        done = s.done,
        dead = s.dead,
        workers = s.workers,
        conc = s.concurrency,
        enq = s.enqueue_ms,
        enq_rate = s.enqueue_per_s,
        el = s.elapsed_ms,
        rate = s.throughput_per_s,
        n = l.samples,
        p50 = fmt_micros(l.p50),
        p90 = fmt_micros(l.p90),
        p99 = fmt_micros(l.p99),
        max = fmt_micros(l.max),
    );
    let mut text = text;
    if let Some(p) = &s.paced {
        let l = &p.start_latency_us;
        text.push_str(&format!(
            "paced latency  enqueue -> handler start at a steady {rate} tasks/s, {n} samples: the\n\
             \x20              figure README's Speed section quotes (there from a release build)\n  \
             p50  {p50}\n  p90  {p90}\n  p99  {p99}\n  max  {max}\n",
            rate = p.rate_per_s,
            n = l.samples,
            p50 = fmt_micros(l.p50),
            p90 = fmt_micros(l.p90),
            p99 = fmt_micros(l.p99),
            max = fmt_micros(l.max),
        ));
    }
    output::text(&text)
}
