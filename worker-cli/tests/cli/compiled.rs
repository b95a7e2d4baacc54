//! `--max-tasks` with a kind compiled into a custom binary (`worker_cli::main_with`): the
//! engine's budget counts it like the built-ins, so the worker takes exactly M tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rivulet::testing::Fixture;
use rivulet::{Queue, Router, Task, TaskContext};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tasks_counts_compiled_kinds_exactly() {
    let f = Fixture::shared(Queue::new("compiled").unwrap()).await;
    let tasks: Vec<Task> = (0..200).map(|i| Task::json("count", &i).unwrap()).collect();
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();

    let runs = Arc::new(AtomicU64::new(0));
    let counted = runs.clone();
    // Instant handlers and many slots: a limit checked after the fact would overshoot.
    let router = Router::new().route_bytes("count", move |_ctx: TaskContext, _payload| {
        let runs = counted.clone();
        async move {
            runs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    });
    let url = f.server.url();
    let queue = f.queue.name().to_string();
    let args = [
        "worker-cli",
        "work",
        "--redis-url",
        &url,
        "--queue",
        &queue,
        "--concurrency",
        "32",
        "--max-tasks",
        "25",
    ]
    .map(str::to_owned);
    // `main_with_args` builds its own runtime: run it off this one.
    let code = tokio::task::spawn_blocking(move || worker_cli::main_with_args(args, router))
        .await
        .unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert_eq!(runs.load(Ordering::Relaxed), 25);

    let s = f.stats().await;
    let waiting: u64 = s.priorities.iter().map(|p| p.waiting).sum();
    let pending: u64 = s.priorities.iter().map(|p| p.pending).sum();
    assert_eq!((s.counters.done, waiting, pending), (25, 175, 0), "{s:#?}");
}
