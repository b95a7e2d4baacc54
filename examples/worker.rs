//! A worker with typed handlers, per-kind options and graceful shutdown on Ctrl-C / SIGTERM.
//!
//! ```sh
//! cargo run --example worker            # REDIS_URL defaults to redis://127.0.0.1:6379
//! ```

use std::time::Duration;

use rivulet::{HandlerError, Queue, RetryPolicy, RouteOptions, Router, TaskContext, Worker, WorkerConfig};

#[derive(serde::Deserialize)]
struct Backtest {
    strategy: String,
    days: u32,
}

async fn backtest(ctx: TaskContext, job: Backtest) -> Result<(), HandlerError> {
    if job.days == 0 {
        // Retrying cannot fix bad input: straight to the dead-letter stream.
        return Err(HandlerError::fatal("days must be positive"));
    }
    tracing::info!(task_id = %ctx.id, attempt = ctx.attempt, strategy = %job.strategy, "backtesting");
    tokio::time::sleep(Duration::from_millis(20 * u64::from(job.days.min(50)))).await;
    Ok(())
}

async fn report(_ctx: TaskContext, name: String) -> Result<(), HandlerError> {
    tracing::info!(%name, "report written");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("signal received: draining (in-flight tasks finish, the rest is requeued)");
}

#[tokio::main]
async fn main() -> Result<(), rivulet::Error> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let router = Router::new()
        .route("backtest", backtest)
        .route("report", report)
        // Backtests are long: give them their own timeout and fewer, slower retries.
        .options(
            "backtest",
            RouteOptions {
                timeout: Some(Duration::from_secs(600)),
                retry: Some(RetryPolicy {
                    max_attempts: 3,
                    base: Duration::from_secs(10),
                    ..Default::default()
                }),
            },
        );
    let config = WorkerConfig {
        concurrency: 4,
        drain_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let report = Worker::new(redis::Client::open(url)?, router, config)
        .queue(Queue::new("examples")?)
        .run(shutdown_signal())
        .await?;
    tracing::info!(?report, "stopped");
    Ok(())
}
