//! The bare fleet: what Redis itself allows many processes on this machine, measured beside
//! each `many-workers` drain. N processes of this binary (the hidden `bare-worker`
//! subcommand) loop over the bare ceiling's round trip on one stream (`XACK` + `XDEL` of the
//! last batch and `XREADGROUP COUNT <slots>` of the next, pipelined: `ceiling::ack_and_read`)
//! with a worker's batch, and stop at their first empty read. They start together: each
//! pushes to a ready list and waits on `BLPOP` of a go list that the parent fills once it has
//! popped every ready, as the many-workers drain resumes its paused queues only once every worker has
//! registered, so neither measures the processes' start-up.
//!
//! If 64 bare processes drain less than 4 do, so does anything on this machine: what the
//! many-workers ratio loses beyond the bare fleet's own ratio is the engine's.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::fleet::Fleet;
use crate::target::{Target, Usage, Window, conn_config};
use crate::worker::WorkerOutput;

const STREAM: &str = "rivulet-bench:{barefleet}:stream";
const GROUP: &str = "bare";
const READY: &str = "rivulet-bench:{barefleet}:ready";
const GO: &str = "rivulet-bench:{barefleet}:go";
/// How long a bare worker waits for the go before giving up.
const START_WAIT: Duration = Duration::from_secs(60);

/// Arguments of the hidden `bare-worker` subcommand (set by the parent, not by people).
#[derive(Debug, Clone, clap::Args)]
pub struct BareWorkerArgs {
    #[arg(long)]
    pub redis_url: String,
    /// Entries per read (a worker process's handler slots).
    #[arg(long)]
    pub count: usize,
    /// The CA to verify a `rediss://` server against.
    #[arg(long)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Stops by itself after this long.
    #[arg(long, default_value_t = 300)]
    pub max_seconds: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BareFleetResult {
    pub processes: usize,
    /// Entries per read.
    pub count: usize,
    pub tasks: u64,
    /// Entries / (last non-empty read - first), over every process.
    pub drain_per_s: f64,
    /// Redis CPU and commands per entry from the go to the last process's exit.
    pub drain_redis: Usage,
    /// CPU (user + system) of the bare processes per entry.
    pub client_cpu_us_per_entry: f64,
    /// Entries each process acknowledged, in start order.
    pub per_process: Vec<u64>,
}

/// Fills the stream with `tasks` entries shaped like the workers' tasks, then drains it with
/// `processes` bare workers reading `count` at a time.
pub async fn run(
    target: &Target,
    processes: usize,
    count: usize,
    tasks: u64,
    payload_bytes: usize,
) -> Result<BareFleetResult> {
    let mut conn = target.conn.clone();
    crate::ceiling::create(&mut conn, STREAM, GROUP).await?;
    redis::cmd("DEL")
        .arg(READY)
        .arg(GO)
        .query_async::<()>(&mut conn)
        .await?;
    crate::ceiling::fill(&mut conn, STREAM, tasks, 1000, payload_bytes).await?;
    let mut args: Vec<std::ffi::OsString> = vec![
        "bare-worker".into(),
        "--redis-url".into(),
        target.node_urls[0].clone().into(),
        "--count".into(),
        count.to_string().into(),
    ];
    if let Some(ca) = &target.tls.ca_file {
        args.extend(["--tls-ca-file".into(), ca.clone().into()]);
    }
    let fleet = Fleet::start(&args, processes)?;
    // Each process pushes once to the ready list when connected: wait for all of them, on a
    // connection of its own (a blocking pop would hold up anything else on the shared one).
    let limit = Duration::from_secs(30) + Duration::from_millis(500) * processes as u32;
    let mut ready = target.node_connection().await?;
    let deadline = Instant::now() + limit;
    for _ in 0..processes {
        if !pop(&mut ready, READY, deadline).await? {
            drop(fleet);
            bail!("{processes} bare workers were not all ready within {limit:?}");
        }
    }
    let before = target.snapshot().await?;
    redis::cmd("RPUSH")
        .arg(GO)
        .arg(vec!["go"; processes])
        .query_async::<()>(&mut conn)
        .await?;
    let outputs = fleet.stop(Duration::from_secs(120)).await?;
    let after = target.snapshot().await?;
    // Each measured its own CPU from the go to its last read (`getrusage`: a bare process's
    // share of a small drain is well under `/proc`'s 10 ms ticks).
    let cpu = outputs.iter().map(|o| o.cpu_s).sum::<f64>();
    redis::cmd("DEL")
        .arg(STREAM)
        .arg(READY)
        .arg(GO)
        .query_async::<()>(&mut conn)
        .await?;
    let drained: u64 = outputs.iter().map(|o| o.started).sum();
    if drained != tasks {
        bail!("the bare fleet drained {drained} of {tasks} entries");
    }
    Ok(BareFleetResult {
        processes,
        count,
        tasks,
        drain_per_s: tasks as f64 / crate::worker::span_s(&outputs),
        drain_redis: before.usage(&after, tasks, Window::Consume, true),
        client_cpu_us_per_entry: cpu.max(0.0) * 1e6 / tasks.max(1) as f64,
        per_process: outputs.iter().map(|o| o.started).collect(),
    })
}

/// Pops one element of `list`, blocking until `deadline`; false if none came by then. Each
/// `BLPOP` waits at most 10 s, well within the connection's response timeout.
async fn pop(conn: &mut impl redis::aio::ConnectionLike, list: &str, deadline: Instant) -> Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let wait = left.min(Duration::from_secs(10)).as_secs_f64().max(0.01);
        let got: Option<(String, String)> = redis::cmd("BLPOP").arg(list).arg(wait).query_async(conn).await?;
        if got.is_some() {
            return Ok(true);
        }
    }
}

/// One bare worker process: waits for the go, drains until a read comes back empty, then
/// prints its [`WorkerOutput`] (`started`: entries acknowledged; first and last start: the
/// first and last non-empty read; `cpu_s`: its CPU from the go on).
pub async fn worker(args: BareWorkerArgs) -> Result<()> {
    let tls = rivulet::connection::TlsOptions {
        ca_file: args.tls_ca_file.clone(),
        ..Default::default()
    };
    let mut conn = rivulet::connection::open(&args.redis_url, &tls)?
        .get_multiplexed_async_connection_with_config(&conn_config())
        .await
        .context("connecting the bare worker")?;
    let consumer = format!("bare-{}", std::process::id());
    let _: u64 = redis::cmd("RPUSH")
        .arg(READY)
        .arg("ready")
        .query_async(&mut conn)
        .await?;
    if !pop(&mut conn, GO, Instant::now() + START_WAIT).await? {
        bail!("no go within {START_WAIT:?}");
    }
    let cpu_at_go = crate::worker::rusage_cpu_s();
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let mut out = WorkerOutput::default();
    let mut prev: Vec<Vec<u8>> = Vec::new();
    loop {
        if Instant::now() > deadline {
            bail!("ran past --max-seconds");
        }
        out.started += prev.len() as u64;
        prev = crate::ceiling::ack_and_read(&mut conn, STREAM, GROUP, &consumer, &prev, args.count).await?;
        if prev.is_empty() {
            break;
        }
        let now = crate::payload::now_us();
        if out.first_start_us == 0 {
            out.first_start_us = now;
        }
        out.last_start_us = now;
    }
    out.cpu_s = crate::worker::rusage_cpu_s() - cpu_at_go;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
