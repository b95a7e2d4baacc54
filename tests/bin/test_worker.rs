//! A worker process for system tests that need a real process to kill.
//!
//! `rivulet-test-worker URL QUEUE CONCURRENCY LEASE_MS [LIMIT...]`: serves kind `hold`
//! (sleeps the payload's `ms`, then adds the payload's `n` to the set `test:done`) and kind
//! `probe` (see below) until SIGTERM/SIGINT. It prints `ready <worker id>` on stdout once it
//! runs. Each LIMIT is `rate:NAME=SPEC` (as `--rate-limit`) or `running:NAME=N` (as
//! `--max-running`); fair groups' settings are `group-cap:N` (as `--max-running-per-group`),
//! `fair-window:N` (as `--fair-window`) and `group-weight:GROUP=W` (as `--group-weight`).
//!
//! `probe` checks limits from inside the handler: it `INCR`s `test:running:<key>` and
//! `RPUSH`es `start <ms since epoch> <running count it saw> <pid> <task id>` to
//! `test:log:<key>`, sleeps `ms`, then pushes `end <ms> <pid> <task id>` and `DECR`s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rivulet::{Queue, Router, TaskContext, Worker, WorkerConfig, limits};

#[derive(serde::Deserialize)]
struct Hold {
    n: u64,
    ms: u64,
}

#[derive(serde::Deserialize)]
struct Probe {
    key: String,
    ms: u64,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, concurrency, lease_ms, limit_args @ ..] = args.as_slice() else {
        return Err(
            "usage: rivulet-test-worker URL QUEUE CONCURRENCY LEASE_MS [rate:NAME=SPEC|running:NAME=N ...]".into(),
        );
    };
    let (mut rates, mut caps) = (Vec::new(), Vec::new());
    let (mut group_cap, mut fair_window, mut group_weights) = (None, None, std::collections::BTreeMap::new());
    for spec in limit_args {
        if let Some(s) = spec.strip_prefix("rate:") {
            rates.push(s);
        } else if let Some(s) = spec.strip_prefix("running:") {
            caps.push(s);
        } else if let Some(s) = spec.strip_prefix("group-cap:") {
            group_cap = Some(s.parse()?);
        } else if let Some(s) = spec.strip_prefix("fair-window:") {
            fair_window = Some(s.parse()?);
        } else if let Some((g, w)) = spec.strip_prefix("group-weight:").and_then(|s| s.split_once('=')) {
            group_weights.insert(g.to_owned(), w.parse()?);
        } else {
            return Err(format!("unknown limit {spec:?}").into());
        }
    }
    let limits = limits::from_specs(&rates, &caps)?;
    let client = redis::Client::open(url.as_str())?;
    let conn = client.get_multiplexed_async_connection().await?;
    let probe_conn = conn.clone();
    let pid = std::process::id();
    let router = Router::new()
        .route("hold", move |_ctx: TaskContext, h: Hold| {
            let mut conn = conn.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(h.ms)).await;
                redis::cmd("SADD")
                    .arg("test:done")
                    .arg(h.n)
                    .query_async::<()>(&mut conn)
                    .await?;
                Ok(())
            }
        })
        .route("probe", move |ctx: TaskContext, p: Probe| {
            let mut conn = probe_conn.clone();
            async move {
                let (running, log) = (format!("test:running:{}", p.key), format!("test:log:{}", p.key));
                let n: i64 = redis::cmd("INCR").arg(&running).query_async(&mut conn).await?;
                redis::cmd("RPUSH")
                    .arg(&log)
                    .arg(format!("start {} {n} {pid} {}", now_ms(), ctx.id))
                    .query_async::<()>(&mut conn)
                    .await?;
                tokio::time::sleep(Duration::from_millis(p.ms)).await;
                redis::cmd("RPUSH")
                    .arg(&log)
                    .arg(format!("end {} {pid} {}", now_ms(), ctx.id))
                    .query_async::<()>(&mut conn)
                    .await?;
                redis::cmd("DECR").arg(&running).query_async::<()>(&mut conn).await?;
                Ok(())
            }
        });
    let config = WorkerConfig {
        concurrency: concurrency.parse()?,
        lease: Duration::from_millis(lease_ms.parse()?),
        block: Duration::from_millis(100),
        limits,
        max_running_per_group: group_cap,
        fair_window,
        group_weights,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(client, router, config).queue(Queue::new(queue)?);
    println!("ready {}", worker.id());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    worker
        .run(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}
