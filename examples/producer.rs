//! Enqueue a few tasks: typed JSON, MessagePack, a high-priority one and a delayed one.
//!
//! ```sh
//! cargo run --example producer          # REDIS_URL defaults to redis://127.0.0.1:6379
//! cargo run --example worker            # then run them
//! ```

use std::time::Duration;

use rivulet::{Client, Queue, Task};

#[derive(serde::Serialize)]
struct Backtest {
    strategy: String,
    days: u32,
}

#[tokio::main]
async fn main() -> Result<(), rivulet::Error> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = Client::connect(&url).await?;
    let queue = Queue::new("examples")?;

    let job = Backtest {
        strategy: "mean-reversion".into(),
        days: 30,
    };
    let id = client.enqueue(&queue, Task::json("backtest", &job)?).await?;
    println!("enqueued backtest {id}");

    let id = client
        .enqueue(
            &queue,
            Task::msgpack("backtest", &job)?.priority("high").max_attempts(3),
        )
        .await?;
    println!("enqueued high-priority msgpack backtest {id}");

    let id = client
        .enqueue(&queue, Task::json("report", &"daily")?.delay(Duration::from_secs(5)))
        .await?;
    println!("enqueued report {id}, due in 5 s");

    // A batch is one round trip, however large.
    let batch = (0..100).map(|i| {
        Task::json(
            "backtest",
            &Backtest {
                strategy: format!("grid-{i}"),
                days: 1,
            },
        )
    });
    let ids = client
        .enqueue_many(&queue, batch.collect::<Result<Vec<_>, _>>()?)
        .await?;
    println!("enqueued {} more in one round trip", ids.len());
    Ok(())
}
