//! Micro-benchmarks of the retry schedule: `RetryPolicy::delay_with` (computed once per
//! failed attempt), with and without jitter, early and capped attempts.
//!
//! Run: `cargo bench -p rivulet-suite --bench backoff`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rivulet::RetryPolicy;

fn backoff(c: &mut Criterion) {
    let jitter = RetryPolicy::default();
    let fixed = RetryPolicy {
        jitter: false,
        ..RetryPolicy::default()
    };
    let mut g = c.benchmark_group("backoff/delay_with");
    // Attempt 3 is below the cap; attempt 40 is capped (the exponent saturates).
    for (name, policy) in [("jitter", jitter), ("fixed", fixed)] {
        for attempt in [3u32, 40] {
            g.bench_with_input(BenchmarkId::new(name, attempt), &attempt, |b, &attempt| {
                b.iter(|| black_box(policy.delay_with(black_box(attempt), black_box(0.37))))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = backoff
}
criterion_main!(benches);
