//! Micro-benchmarks of the wire format: `Envelope::fields` (what `XADD` sends),
//! `Envelope::from_fields` (what a worker does with every entry it reads) and the payload
//! codecs, per payload size (64 B, 1 KiB, 64 KiB).
//!
//! Run: `cargo bench -p rivulet-suite --bench envelope` (add `-- --quick` for a short pass).
//! `Codec::Bytes` is not measured on its own: a raw payload is never encoded, and a typed value
//! with `Bytes` goes through JSON, the same code as `Codec::Json`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rivulet::{Codec, Envelope};
use serde::{Deserialize, Serialize};

const SIZES: [usize; 3] = [64, 1024, 64 * 1024];

/// A typical job: a few scalar fields and a body that makes up most of the size.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    user: u64,
    action: String,
    tags: Vec<String>,
    body: String,
}

impl Job {
    /// A job whose JSON encoding is about `size` bytes.
    fn of_size(size: usize) -> Self {
        let fixed = 60;
        Job {
            user: 4_200_042,
            action: "resize".into(),
            tags: vec!["a".into(), "bb".into()],
            body: "x".repeat(size.saturating_sub(fixed).max(1)),
        }
    }
}

fn label(size: usize) -> String {
    if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

/// The fields as a worker receives them from `XREADGROUP`: owned byte vectors.
fn wire_fields(env: &Envelope) -> Vec<(Vec<u8>, Vec<u8>)> {
    env.fields()
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
        .collect()
}

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope/fields");
    for size in SIZES {
        let env = Envelope::new("resize", Bytes::from(vec![b'x'; size]), Codec::Bytes);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(label(size)), &env, |b, env| {
            b.iter(|| black_box(env.fields()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("envelope/from_fields");
    for size in SIZES {
        let mut env = Envelope::new("resize", Bytes::from(vec![b'x'; size]), Codec::Bytes);
        env.max_attempts = Some(3);
        let fields = wire_fields(&env);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(label(size)), &fields, |b, fields| {
            // The clone is set-up, not measured: the worker owns the reply's buffers.
            b.iter_batched(
                || fields.clone(),
                |f| black_box(Envelope::from_fields(f).expect("a valid envelope")),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn codecs(c: &mut Criterion) {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut g = c.benchmark_group(format!("codec/{codec}/encode"));
        for size in SIZES {
            let job = Job::of_size(size);
            let encoded = codec.encode(&job).expect("a Job always encodes");
            g.throughput(Throughput::Bytes(encoded.len() as u64));
            g.bench_with_input(BenchmarkId::from_parameter(label(size)), &job, |b, job| {
                b.iter(|| black_box(codec.encode(job).expect("a Job always encodes")))
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("codec/{codec}/decode"));
        for size in SIZES {
            let encoded = codec.encode(&Job::of_size(size)).expect("a Job always encodes");
            g.throughput(Throughput::Bytes(encoded.len() as u64));
            g.bench_with_input(BenchmarkId::from_parameter(label(size)), &encoded, |b, bytes| {
                b.iter(|| black_box(codec.decode::<Job>(bytes).expect("it was just encoded")))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    // Short windows: the machine is shared, and these numbers are for spotting regressions.
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = envelope, codecs
}
criterion_main!(benches);
