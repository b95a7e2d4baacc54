//! The `demo` kind, served by the workers `worker-cli demo` starts (`work --demo-samples`), and
//! the latency samples behind the demo's report.
//!
//! Each task's payload carries its enqueue time in microseconds; the worker process that runs
//! it records `now - t_us` in an in-process histogram (one for the burst, one for the paced
//! phase: the payload says which) and saves both (every [`SAVE_EVERY`] and
//! when the worker has stopped) into a HASH field of its own (`rivulet:demo:<queue>:latency`),
//! which the demo merges once the workers have drained. Other worker processes neither serve
//! the kind nor keep samples.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rivulet::RedisConnection;
use rivulet::{HandlerError, QueueName, Router, TaskContext};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::store;

/// The kind the demo enqueues.
pub const KIND: &str = "demo";
/// How often a worker process saves new latency samples.
pub const SAVE_EVERY: Duration = Duration::from_millis(500);

/// `router` with the `demo` kind added (unless it serves one already).
pub fn route(router: Router) -> Router {
    if router.serves(KIND) {
        return router;
    }
    router.route(KIND, handle)
}

/// Payload of a `demo` task.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DemoPayload {
    /// When it was enqueued, microseconds since the epoch.
    pub t_us: u64,
    /// Milliseconds of simulated work.
    #[serde(default)]
    pub ms: u64,
    /// Enqueued by the paced phase (at a steady rate) rather than the burst.
    #[serde(default)]
    pub paced: bool,
}

/// The `demo` handler: records enqueue-to-start latency, then "works" for `ms`.
pub async fn handle(ctx: TaskContext, p: DemoPayload) -> Result<(), HandlerError> {
    record(&ctx.queue, now_us().saturating_sub(p.t_us), p.paced);
    if p.ms > 0 {
        tokio::time::sleep(Duration::from_millis(p.ms)).await;
    }
    Ok(())
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A histogram of microseconds from 1 µs to 1 h at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds 1..1h with 3 digits are valid")
}

/// One worker's start latencies for one queue, by phase.
#[derive(Debug)]
pub struct Phases {
    /// Tasks of the burst (all enqueued at once).
    pub burst: Histogram<u64>,
    /// Tasks of the paced phase (enqueued at a steady rate).
    pub paced: Histogram<u64>,
}

impl Phases {
    /// Empty histograms.
    pub fn new() -> Self {
        Phases {
            burst: new_histogram(),
            paced: new_histogram(),
        }
    }
}

#[derive(Debug)]
struct Samples {
    hist: Phases,
    /// Recorded since the last save.
    dirty: bool,
}

/// Start latencies recorded in this process, per queue.
static SAMPLES: LazyLock<Mutex<HashMap<QueueName, Samples>>> = LazyLock::new(Mutex::default);

fn record(queue: &QueueName, micros: u64, paced: bool) {
    let mut all = SAMPLES.lock().expect("holders never panic while the map is locked");
    let s = all.entry(queue.clone()).or_insert_with(|| Samples {
        hist: Phases::new(),
        dirty: false,
    });
    let hist = if paced { &mut s.hist.paced } else { &mut s.hist.burst };
    hist.saturating_record(micros.max(1));
    s.dirty = true;
}

/// Both phases' histograms as JSON `{"burst": [[value, count], ...], "paced": [...]}` (the
/// `serialization` feature of hdrhistogram would pull in compression crates for a few
/// kilobytes).
pub fn encode(h: &Phases) -> String {
    let pairs = |h: &Histogram<u64>| -> Vec<(u64, u64)> {
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    };
    serde_json::json!({ "burst": pairs(&h.burst), "paced": pairs(&h.paced) }).to_string()
}

/// Adds [`encode`]d histograms into `into`.
pub fn decode_into(into: &mut Phases, encoded: &str) -> Result<()> {
    #[derive(Deserialize)]
    struct Encoded {
        burst: Vec<(u64, u64)>,
        paced: Vec<(u64, u64)>,
    }
    let e: Encoded = serde_json::from_str(encoded).context("a latency histogram does not parse")?;
    for (v, n) in e.burst {
        into.burst.saturating_record_n(v, n);
    }
    for (v, n) in e.paced {
        into.paced.saturating_record_n(v, n);
    }
    Ok(())
}

/// Saves this process's new samples (no-op when there are none).
pub async fn save_samples(conn: &mut RedisConnection, worker_id: &str) {
    let dirty: Vec<(QueueName, String)> = {
        let mut all = SAMPLES.lock().expect("holders never panic while the map is locked");
        all.iter_mut()
            .filter(|(_, s)| s.dirty)
            .map(|(q, s)| {
                s.dirty = false;
                (q.clone(), encode(&s.hist))
            })
            .collect()
    };
    for (queue, encoded) in dirty {
        if let Err(e) = store::save_latency(conn, &queue, worker_id, &encoded).await {
            tracing::warn!(queue = %queue, error = %e, "could not save demo latency samples");
            if let Some(s) = SAMPLES.lock().expect("never poisoned").get_mut(&queue) {
                s.dirty = true;
            }
        }
    }
}

/// The companion of a demo worker: saves new samples every [`SAVE_EVERY`] until `stopped`
/// (the worker has stopped: the samples are final), then once more.
pub async fn save_until(url: String, tls: rivulet::TlsOptions, worker_id: String, stopped: CancellationToken) {
    let mut conn = match store::connect_checked(&url, &tls).await {
        Ok((_, conn)) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "cannot save demo latency samples");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stopped.cancelled() => break,
            () = tokio::time::sleep(SAVE_EVERY) => save_samples(&mut conn, &worker_id).await,
        }
    }
    save_samples(&mut conn, &worker_id).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_encoding_and_merge_phase_by_phase() {
        let mut a = Phases::new();
        for v in [10, 20, 30, 1_000, 250_000] {
            a.burst.record(v).unwrap();
        }
        a.paced.record(7).unwrap();
        let mut b = Phases::new();
        b.burst.record_n(40, 5).unwrap();
        let mut merged = Phases::new();
        decode_into(&mut merged, &encode(&a)).unwrap();
        decode_into(&mut merged, &encode(&b)).unwrap();
        assert_eq!(merged.burst.len(), 10);
        assert_eq!(merged.burst.value_at_quantile(0.5), 40);
        assert!(
            merged.burst.max() >= 250_000 && merged.burst.max() < 250_500,
            "{}",
            merged.burst.max()
        );
        assert_eq!((merged.paced.len(), merged.paced.max()), (1, 7));
        assert!(decode_into(&mut merged, "nope").is_err());
    }
}
