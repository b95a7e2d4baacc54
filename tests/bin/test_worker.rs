//! A worker process for system tests that need a real process to kill.
//!
//! `rivulet-test-worker URL QUEUE CONCURRENCY LEASE_MS`: serves kind `hold` (sleeps the
//! payload's `ms`, then adds the payload's `n` to the set `test:done`) until SIGTERM/SIGINT.
//! It prints `ready <worker id>` on stdout once it runs.

use std::time::Duration;

use rivulet::{Queue, Router, TaskContext, Worker, WorkerConfig};

#[derive(serde::Deserialize)]
struct Hold {
    n: u64,
    ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, concurrency, lease_ms] = args.as_slice() else {
        return Err("usage: rivulet-test-worker URL QUEUE CONCURRENCY LEASE_MS".into());
    };
    let client = redis::Client::open(url.as_str())?;
    let conn = client.get_multiplexed_async_connection().await?;
    let router = Router::new().route("hold", move |_ctx: TaskContext, h: Hold| {
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
    });
    let config = WorkerConfig {
        concurrency: concurrency.parse()?,
        lease: Duration::from_millis(lease_ms.parse()?),
        block: Duration::from_millis(100),
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
