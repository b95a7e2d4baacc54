//! Micro-benchmarks of key building: `Queue::shard` (every enqueue and worker start builds
//! shard keys) and `keys::shard_for` (FNV-1a of the task id, once per enqueued task).
//!
//! Run: `cargo bench -p rivulet-suite --bench keys`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rivulet::keys::shard_for;
use rivulet::{Queue, TaskId};

fn keys(c: &mut Criterion) {
    let queue = Queue::new("emails")
        .expect("a valid name")
        .shards(16)
        .expect("a valid layout");
    c.bench_function("keys/queue_shard", |b| {
        b.iter(|| black_box(queue.shard(black_box("normal"), black_box(7))))
    });

    let mut g = c.benchmark_group("keys/shard_for");
    // A generated id (28 characters) and a long caller-chosen idempotency key.
    let long = "order-2024-11-22/customer-0042/invoice-000000000000000123456789".to_owned();
    for (name, id) in [("generated", TaskId::generate().as_str().to_owned()), ("64chars", long)] {
        g.bench_with_input(BenchmarkId::from_parameter(name), &id, |b, id| {
            b.iter(|| black_box(shard_for(black_box(id), 16)))
        });
    }
    g.finish();

    c.bench_function("keys/queue_new", |b| {
        b.iter(|| black_box(Queue::new(black_box("emails"))))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = keys
}
criterion_main!(benches);
