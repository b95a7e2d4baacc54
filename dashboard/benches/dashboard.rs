//! The dashboard under a big installation: `--queues` queues holding `--tasks` tasks in all
//! (100 and 1,000,000 by default) on a private `redis-server`, the dashboard with its default
//! refresh and Redis budget, then
//! 1. six open pages (overview, a queue with its task list, a task, dead letters, workers,
//!    limits), each polling what the page polls every 2 s, for `--seconds`: the dashboard's own Redis
//!    commands per second (`INFO` `total_commands_processed`, inner script commands
//!    included, the benchmark's own `INFO` calls taken out) and each call's latency;
//! 2. every page's API call `--calls` times back to back: p50 / p99 / max latency;
//! 3. the Redis commands of one view of the limits page with 5 and 25 limits (on a Redis of
//!    its own, so no queue numbers are read in the window).
//!
//! Printed beside a bare `PING` round trip of the same run (the floor any call stands on).
//!
//! `cargo bench -p rivulet-dashboard --bench dashboard -- [--queues 100] [--tasks 1000000]
//! [--seconds 30] [--calls 200]`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rivulet::testing::{RedisServer, fast_config, wait_until};
use rivulet::{Client, HandlerError, Inspector, Limit, Queue, Router, Task, TaskContext, Worker};
use serde_json::{Value, json};

#[path = "../tests/support/mod.rs"]
mod support;

struct Args {
    queues: usize,
    tasks: usize,
    seconds: u64,
    calls: usize,
}

fn args() -> Args {
    let mut a = Args {
        queues: 100,
        tasks: 1_000_000,
        seconds: 30,
        calls: 200,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match argv[i].as_str() {
            "--queues" => a.queues = value().expect("--queues N") as usize,
            "--tasks" => a.tasks = value().expect("--tasks N") as usize,
            "--seconds" => a.seconds = value().expect("--seconds N"),
            "--calls" => a.calls = value().expect("--calls N") as usize,
            // cargo bench passes --bench.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

async fn commands(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Calls per command (`INFO commandstats`).
async fn per_command(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let server = RedisServer::start();
    let redis = server.client();
    let client = Client::new(&redis).await.unwrap();
    let mut raw = redis.get_multiplexed_async_connection().await.unwrap();
    let queues: Vec<Queue> = (0..a.queues)
        .map(|i| Queue::new(&format!("q-{i:03}")).unwrap())
        .collect();

    // Fill: most tasks untracked (a pipelined XADD each); 1,000 per the first queue tracked,
    // so its task list reads records. Priorities alternate.
    let began = Instant::now();
    let per_queue = a.tasks / a.queues;
    const BATCH: usize = 10_000;
    let prios = ["high", "normal", "low"];
    for q in &queues {
        client.declare(q).await.unwrap();
        let mut left = per_queue;
        while left > 0 {
            let n = left.min(BATCH);
            let tasks = (0..n).map(|i| {
                Task::json("work", &json!({ "i": i }))
                    .unwrap()
                    .priority(prios[i % 3])
                    .retention(Duration::ZERO)
            });
            client.enqueue_many(q, tasks).await.unwrap();
            left -= n;
        }
    }
    let first = &queues[0];
    let tracked = client
        .enqueue_many(
            first,
            (0..1000).map(|i| Task::json("work", &json!({ "t": i })).unwrap()),
        )
        .await
        .unwrap();
    // Dead letters on the first queue: a worker buries 1,000 `boom` tasks.
    let boom = Router::new().route("boom", |_ctx: TaskContext, _v: Value| async move {
        Err(HandlerError::fatal("boom"))
    });
    let second = &queues[1 % queues.len()];
    client
        .enqueue_many(
            second,
            (0..1000).map(|i| Task::json("boom", &json!(i)).unwrap().priority("high")),
        )
        .await
        .unwrap();
    // The worker registers 5 limits (what the limits page lists); `boom` goes through one.
    let mut config = fast_config();
    config.limits = bench_limits(5);
    config.limits.insert(
        "boom".into(),
        Limit {
            rate: Some("1000/s".parse().unwrap()),
            max_running: Some(8),
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        Worker::new(redis.clone(), boom, config)
            .queue(second.clone())
            .run(async move {
                let _ = stop_rx.await;
            }),
    );
    let inspector = Inspector::new(&redis).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(120), async || inspector
            .dlq_list(second, None, 1000)
            .await
            .unwrap()
            .len()
            == 1000)
        .await
    );
    // Stopped before measuring: an idle worker polls Redis too, and only the dashboard's
    // commands are to be counted.
    let _ = stop_tx.send(());
    let _ = worker.await;
    println!(
        "filled {} queues with {} tasks (+1000 tracked, +1000 dead letters) in {:.1}s; Redis used {}",
        a.queues,
        per_queue * a.queues,
        began.elapsed().as_secs_f64(),
        {
            let info: String = redis::cmd("INFO").arg("memory").query_async(&mut raw).await.unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory_human:"))
                .unwrap_or("?")
                .trim()
                .to_owned()
        }
    );

    // The dashboard with its defaults, and the floor: PING round trips.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = rivulet_dashboard::Config::new(addr, support::TOKEN);
    let (dash_tx, dash_rx) = tokio::sync::oneshot::channel::<()>();
    let dash = tokio::spawn(rivulet_dashboard::serve(listener, redis.clone(), config, async move {
        let _ = dash_rx.await;
    }));
    let mut ping = Histogram::<u64>::new(3).unwrap();
    for _ in 0..1000 {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut raw).await.unwrap();
        ping.record(t.elapsed().as_micros() as u64).unwrap();
    }
    let task = tracked[500].to_string();
    let page_calls: Vec<(&str, Vec<String>)> = vec![
        ("overview", vec!["/api/v1/queues?limit=25".into()]),
        (
            "queue",
            vec![
                format!("/api/v1/queues/{}", first.name()),
                format!("/api/v1/queues/{}/tasks?state=queued&limit=25", first.name()),
            ],
        ),
        ("task", vec![format!("/api/v1/queues/{}/tasks/{task}", first.name())]),
        (
            "dead letters",
            vec![format!("/api/v1/queues/{}/dead-letters?limit=25", second.name())],
        ),
        ("workers", vec!["/api/v1/workers".into()]),
        ("limits", vec!["/api/v1/limits?limit=25".into()]),
    ];

    // 1. Six open pages for a while.
    let latencies: Arc<Mutex<BTreeMap<String, Histogram<u64>>>> = Arc::default();
    // Warm up: every page once (first reads of never-sampled queues), then let the budget refill.
    for (_, calls) in &page_calls {
        for c in calls {
            support::request(addr, "GET", c, &[], b"").await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let by_command = per_command(&mut raw).await;
    let before = commands(&mut raw).await;
    let window = Instant::now();
    let mut pages = tokio::task::JoinSet::new();
    for (name, calls) in page_calls.clone() {
        let latencies = latencies.clone();
        let seconds = a.seconds;
        pages.spawn(async move {
            let end = Instant::now() + Duration::from_secs(seconds);
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            while Instant::now() < end {
                tick.tick().await;
                for c in &calls {
                    let t = Instant::now();
                    let r = support::request(addr, "GET", c, &[], b"").await;
                    assert_eq!(r.status, 200, "{c}: {}", r.text());
                    let us = t.elapsed().as_micros() as u64;
                    latencies
                        .lock()
                        .unwrap()
                        .entry(format!("{name}: {c}"))
                        .or_insert_with(|| Histogram::new(3).unwrap())
                        .record(us)
                        .unwrap();
                }
            }
        });
    }
    while pages.join_next().await.is_some() {}
    let elapsed = window.elapsed().as_secs_f64();
    // The two INFO calls of the measurement are not the dashboard's.
    let spent = commands(&mut raw).await - before - 1;
    let after = per_command(&mut raw).await;
    println!(
        "\n{} open pages for {elapsed:.0}s: the dashboard made {:.1} Redis commands/s (inner script commands counted)",
        page_calls.len(),
        spent as f64 / elapsed
    );
    let mut split: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - by_command.get(k).copied().unwrap_or(0)) as f64 / elapsed,
            )
        })
        .filter(|(k, r)| *r > 0.0 && k != "info")
        .collect();
    split.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!(
        "  per command/s: {}",
        split
            .iter()
            .map(|(k, r)| format!("{k} {r:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "{:<90} {:>9} {:>9} {:>9}",
        "page: call (polled every 2 s)", "p50 ms", "p99 ms", "max ms"
    );
    for (k, h) in latencies.lock().unwrap().iter() {
        println!(
            "{k:<90} {:>9.2} {:>9.2} {:>9.2}",
            ms(h, 0.5),
            ms(h, 0.99),
            h.max() as f64 / 1000.0
        );
    }

    // 2. Each call back to back.
    let mut all: Vec<String> = page_calls.iter().flat_map(|(_, c)| c.clone()).collect();
    all.extend([
        "/api/v1/queues?offset=75&limit=25".to_string(),
        format!("/api/v1/queues/{}/tasks?state=queued&offset=500&limit=25", first.name()),
        format!("/api/v1/queues/{}/dead-letters/{}", second.name(), {
            let d = inspector.dlq_list(second, None, 1).await.unwrap();
            d[0].id.to_string().replace('/', "%2F")
        }),
        "/metrics".into(),
        "/".into(),
    ]);
    println!(
        "\n{} calls each, back to back (bare PING round trip: p50 {:.3} ms, p99 {:.3} ms)",
        a.calls,
        ms(&ping, 0.5),
        ms(&ping, 0.99)
    );
    println!("{:<90} {:>9} {:>9} {:>9}", "call", "p50 ms", "p99 ms", "max ms");
    for c in &all {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for _ in 0..a.calls {
            let t = Instant::now();
            let r = support::request(addr, "GET", c, &[], b"").await;
            assert_eq!(r.status, 200, "{c}: {}", r.text());
            h.record(t.elapsed().as_micros() as u64).unwrap();
        }
        println!(
            "{c:<90} {:>9.2} {:>9.2} {:>9.2}",
            ms(&h, 0.5),
            ms(&h, 0.99),
            h.max() as f64 / 1000.0
        );
    }
    let _ = dash_tx.send(());
    let _ = dash.await;

    // 3. What one view of the limits page costs Redis.
    for n in [5, 25] {
        limits_page_cost(n).await;
    }
}

/// `n` limits: a rate on the even ones, a cap on the odd ones.
fn bench_limits(n: usize) -> rivulet::Limits {
    (0..n)
        .map(|i| {
            let limit = if i % 2 == 0 {
                Limit {
                    rate: Some("50/s,burst=10".parse().unwrap()),
                    max_running: None,
                }
            } else {
                Limit {
                    rate: None,
                    max_running: Some(4),
                }
            };
            (format!("limit-{i:02}"), limit)
        })
        .collect()
}

/// The Redis commands of one view of the limits page (`GET /api/v1/limits?limit=25`) with `n`
/// limits registered, on a Redis of its own (no queue numbers for the sampler to read in the
/// window): a view whose numbers are older than the refresh, and views within it.
async fn limits_page_cost(n: usize) {
    let server = RedisServer::start();
    let redis = server.client();
    let mut raw = redis.get_multiplexed_async_connection().await.unwrap();
    // A worker registers the limits at its start (on a queue of its own), then stops.
    let mut config = fast_config();
    config.limits = bench_limits(n);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        Worker::new(
            redis.clone(),
            Router::new().route("noop", |_ctx: TaskContext, _v: Value| async move { Ok(()) }),
            config,
        )
        .queue(Queue::new("limits-bench").unwrap())
        .run(async move {
            let _ = stop_rx.await;
        }),
    );
    let inspector = Inspector::new(&redis).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(30), async || inspector
            .limit_names()
            .await
            .unwrap()
            .len()
            == n)
        .await
    );
    let _ = stop_tx.send(());
    let _ = worker.await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = rivulet_dashboard::Config::new(addr, support::TOKEN);
    let refresh = config.refresh;
    let (dash_tx, dash_rx) = tokio::sync::oneshot::channel::<()>();
    let dash = tokio::spawn(rivulet_dashboard::serve(listener, redis.clone(), config, async move {
        let _ = dash_rx.await;
    }));
    // Let the sampler read the one queue's numbers first (then nothing until its next sweep,
    // a minute on).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let view = async || {
        let r = support::request(addr, "GET", "/api/v1/limits?limit=25", &[], b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        tokio::time::sleep(refresh + Duration::from_millis(100)).await;
        let before = commands(&mut raw).await;
        view().await;
        // The INFO call itself is the benchmark's.
        cold.push(commands(&mut raw).await - before - 1);
        let before = commands(&mut raw).await;
        for _ in 0..10 {
            view().await;
        }
        warm.push(commands(&mut raw).await - before - 1);
    }
    println!(
        "\nlimits page with {n} limits: a view older than the refresh {cold:?} Redis commands (runs), then 10 views within it {warm:?} (the sampler's registry read, 1 command every 5 s, may fall in a window)"
    );
    let _ = dash_tx.send(());
    let _ = dash.await;
}
