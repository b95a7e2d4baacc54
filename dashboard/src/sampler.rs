//! The queue numbers every page and API client shares, and the one loop that reads them.
//!
//! A queue's numbers cost Redis about 9 commands per shard (`inspect.lua`, its inner commands
//! counted) plus one for the autoscaler's decision. Read per request, 5 open pages on 100
//! queues would cost thousands of commands a second; so nothing but this loop reads them, and
//! it spends at most `budget` commands per second, however many pages are open:
//! - queues someone looked at in the last [`WATCH_FOR`] are refreshed first, every `refresh`
//!   (2 s) while the budget allows, oldest first;
//! - the rest are swept in turn when budget is left, every [`SWEEP`] at most, for the
//!   history and `/metrics`.
//!
//! Answers carry the age of their numbers (`age_ms`), so a page can say how fresh they are
//! when many queues share the budget. A queue never sampled is read on its first request (a
//! one-off cost, counted against the budget). The history (one point per sample, 15 minutes)
//! feeds the throughput chart and the autoscaler's desired-against-current chart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rivulet::inspector::Counters;
use rivulet::{Inspector, Queue, QueueStats, WorkerRecord};
use tokio_util::sync::CancellationToken;

/// How long a request keeps a queue on the fast refresh.
pub const WATCH_FOR: Duration = Duration::from_secs(10);
/// How often every queue is read at least, budget allowing.
pub const SWEEP: Duration = Duration::from_secs(60);
/// How far back the history goes.
pub const HISTORY: Duration = Duration::from_secs(15 * 60);
/// How often the queue registry (one `HGETALL`) and the worker list are read at most.
const LIST_TTL: Duration = Duration::from_secs(5);
/// The loop's tick.
const TICK: Duration = Duration::from_millis(250);
/// Commands one shard's numbers cost (`inspect.lua` and the 8 commands inside).
const COMMANDS_PER_SHARD: f64 = 9.0;

/// One sample of a queue, for the charts.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at_ms: u64,
    pub counters: Counters,
}

/// The autoscaler's decision as recorded, one point of its chart.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionPoint {
    pub at_ms: u64,
    pub desired: u64,
    pub current: u64,
    pub reason: String,
    pub detail: String,
}

/// A queue's numbers and when they were read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub stats: Arc<QueueStats>,
    pub read_at: Instant,
    pub decision: Option<String>,
}

#[derive(Debug, Default)]
struct Slot {
    snapshot: Option<Snapshot>,
    watched_until: Option<Instant>,
    history: VecDeque<Sample>,
    decisions: VecDeque<DecisionPoint>,
}

#[derive(Debug, Default)]
struct Inner {
    queues: Option<(Instant, Vec<Queue>)>,
    workers: Option<(Instant, Arc<Vec<WorkerRecord>>)>,
    slots: HashMap<String, Slot>,
    /// Commands the loop may still spend (a token bucket, refilled at `budget` per second).
    allowance: f64,
}

/// The shared cache and its refresh loop.
#[derive(Debug)]
pub struct Sampler {
    inspector: Inspector,
    refresh: Duration,
    budget: f64,
    inner: Mutex<Inner>,
    /// One read of Redis at a time: concurrent requests for the same numbers wait and share.
    reading: tokio::sync::Mutex<()>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn cost(queue: &Queue) -> f64 {
    let shards = queue.layout().priorities.len() as f64 * f64::from(queue.layout().shards);
    shards * COMMANDS_PER_SHARD + 2.0
}

impl Sampler {
    pub fn new(inspector: Inspector, refresh: Duration, budget: f64) -> Self {
        Sampler {
            inspector,
            refresh,
            budget,
            inner: Mutex::new(Inner {
                allowance: budget,
                ..Inner::default()
            }),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No code panics while holding it (plain map updates), so it is never poisoned; if it
        // were, the data is still consistent enough to show.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every queue recorded in Redis, sorted by name (read at most every few seconds).
    pub async fn queues(&self) -> rivulet::Result<Vec<Queue>> {
        if let Some((at, q)) = &self.lock().queues
            && at.elapsed() < LIST_TTL
        {
            return Ok(q.clone());
        }
        let _reading = self.reading.lock().await;
        if let Some((at, q)) = &self.lock().queues
            && at.elapsed() < LIST_TTL
        {
            return Ok(q.clone());
        }
        let mut queues = self.inspector.queues().await?;
        queues.sort_by(|a, b| a.name().cmp(b.name()));
        self.lock().queues = Some((Instant::now(), queues.clone()));
        Ok(queues)
    }

    /// A recorded queue by name.
    pub async fn queue(&self, name: &str) -> rivulet::Result<Queue> {
        if let Some(q) = self.queues().await?.into_iter().find(|q| q.name().as_str() == name) {
            return Ok(q);
        }
        // Declared in the last few seconds, or unknown (the inspector's error names the known ones).
        let q = self.inspector.queue(name).await?;
        self.lock().queues = None;
        Ok(q)
    }

    /// Live workers (read at most every few seconds).
    pub async fn workers(&self) -> rivulet::Result<Arc<Vec<WorkerRecord>>> {
        if let Some((at, w)) = &self.lock().workers
            && at.elapsed() < self.refresh
        {
            return Ok(w.clone());
        }
        let _reading = self.reading.lock().await;
        if let Some((at, w)) = &self.lock().workers
            && at.elapsed() < self.refresh
        {
            return Ok(w.clone());
        }
        let w = Arc::new(self.inspector.workers().await?);
        self.lock().workers = Some((Instant::now(), w.clone()));
        Ok(w)
    }

    /// The queue's latest numbers; marks it watched (refreshed every `refresh` while the
    /// budget allows). Reads them now only when it was never read.
    pub async fn snapshot(&self, queue: &Queue) -> rivulet::Result<Snapshot> {
        {
            let mut inner = self.lock();
            let slot = inner.slots.entry(queue.name().to_string()).or_default();
            slot.watched_until = Some(Instant::now() + WATCH_FOR);
            if let Some(s) = &slot.snapshot {
                return Ok(s.clone());
            }
        }
        let _reading = self.reading.lock().await;
        if let Some(s) = self
            .lock()
            .slots
            .get(queue.name().as_str())
            .and_then(|s| s.snapshot.clone())
        {
            return Ok(s);
        }
        self.lock().allowance -= cost(queue);
        self.read(queue).await
    }

    /// The cached numbers of a queue without marking it watched (for `/metrics`).
    pub fn cached(&self, name: &str) -> Option<Snapshot> {
        self.lock().slots.get(name).and_then(|s| s.snapshot.clone())
    }

    /// The samples of a queue, oldest first.
    pub fn history(&self, name: &str) -> Vec<Sample> {
        self.lock()
            .slots
            .get(name)
            .map(|s| s.history.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The autoscaler decisions seen for a queue, oldest first.
    pub fn decisions(&self, name: &str) -> Vec<DecisionPoint> {
        self.lock()
            .slots
            .get(name)
            .map(|s| s.decisions.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a queue's cached numbers after a change the page should see at once (pause,
    /// replay, purge, enqueue): the next request reads them again.
    pub fn invalidate(&self, name: &str) {
        if let Some(slot) = self.lock().slots.get_mut(name) {
            slot.snapshot = None;
        }
    }

    async fn read(&self, queue: &Queue) -> rivulet::Result<Snapshot> {
        let stats = self.inspector.stats(queue).await?;
        let decision = self.inspector.decision(queue).await?;
        let snapshot = Snapshot {
            stats: Arc::new(stats),
            read_at: Instant::now(),
            decision,
        };
        let at_ms = now_ms();
        let mut inner = self.lock();
        let slot = inner.slots.entry(queue.name().to_string()).or_default();
        slot.history.push_back(Sample {
            at_ms,
            counters: snapshot.stats.counters.clone(),
        });
        while slot
            .history
            .front()
            .is_some_and(|s| at_ms.saturating_sub(s.at_ms) > HISTORY.as_millis() as u64)
        {
            slot.history.pop_front();
        }
        if let Some(point) = snapshot.decision.as_deref().and_then(decision_point)
            && slot.decisions.back().is_none_or(|last| last.at_ms != point.at_ms)
        {
            slot.decisions.push_back(point);
            while slot
                .decisions
                .front()
                .is_some_and(|d| at_ms.saturating_sub(d.at_ms) > HISTORY.as_millis() as u64)
            {
                slot.decisions.pop_front();
            }
        }
        slot.snapshot = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// The next queue to read, if the budget allows one: watched and older than `refresh`
    /// first, then any older than [`SWEEP`], oldest first.
    fn next(&self, queues: &[Queue]) -> Option<Queue> {
        let now = Instant::now();
        let inner = self.lock();
        let age = |q: &Queue| {
            inner
                .slots
                .get(q.name().as_str())
                .and_then(|s| s.snapshot.as_ref())
                .map_or(Duration::MAX, |s| now.duration_since(s.read_at))
        };
        let watched = |q: &Queue| {
            inner
                .slots
                .get(q.name().as_str())
                .and_then(|s| s.watched_until)
                .is_some_and(|u| u > now)
        };
        let pick = queues
            .iter()
            .filter(|q| watched(q) && age(q) >= self.refresh)
            .max_by_key(|q| age(q))
            .or_else(|| queues.iter().filter(|q| age(q) >= SWEEP).max_by_key(|q| age(q)))?;
        (inner.allowance >= cost(pick)).then(|| pick.clone())
    }

    /// Refreshes numbers within the budget until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            {
                let mut inner = self.lock();
                // At most two seconds' worth saved up, so a quiet spell does not turn into a burst.
                inner.allowance = (inner.allowance + self.budget * TICK.as_secs_f64()).min(self.budget * 2.0);
            }
            let queues = match self.queues().await {
                Ok(q) => q,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the queue registry failed");
                    continue;
                }
            };
            while let Some(q) = self.next(&queues) {
                self.lock().allowance -= cost(&q);
                let _reading = self.reading.lock().await;
                if let Err(e) = self.read(&q).await {
                    tracing::warn!(queue = %q.name(), error = %e, "reading a queue's numbers failed");
                    break;
                }
            }
        }
    }
}

/// A stored decision (JSON written by the autoscaler) as a chart point; `None` when it does
/// not parse.
fn decision_point(json: &str) -> Option<DecisionPoint> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(DecisionPoint {
        at_ms: v.get("at_ms")?.as_u64()?,
        desired: v.get("desired")?.as_u64()?,
        current: v.get("current").and_then(|c| c.as_u64()).unwrap_or(0),
        reason: v.get("reason").and_then(|r| r.as_str()).unwrap_or("").to_owned(),
        detail: v.get("detail").and_then(|r| r.as_str()).unwrap_or("").to_owned(),
    })
}

/// Rates between consecutive samples as (from_ms, to_ms, done/s, failed/s, enqueued/s).
fn segments(samples: &[Sample]) -> impl Iterator<Item = (u64, u64, [f64; 3])> + '_ {
    samples.windows(2).filter_map(|w| {
        let (a, b) = (&w[0], &w[1]);
        let dt = b.at_ms.checked_sub(a.at_ms).filter(|d| *d > 0)? as f64 / 1000.0;
        let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
        Some((
            a.at_ms,
            b.at_ms,
            [
                rate(a.counters.done, b.counters.done),
                rate(a.counters.failed, b.counters.failed),
                rate(a.counters.enqueued, b.counters.enqueued),
            ],
        ))
    })
}

/// The latest rates of one queue (done, failed, enqueued per second), from its last two samples.
pub fn latest_rates(samples: &[Sample]) -> Option<[f64; 3]> {
    segments(samples).last().map(|(_, _, r)| r)
}

/// Sums the rates of many queues into `buckets` buckets of `width_ms` ending at `end_ms`:
/// each segment between two samples adds its rate for the part of a bucket it covers, so
/// queues sampled at different moments add up correctly. Returns (bucket end, rates).
pub fn throughput(per_queue: &[Vec<Sample>], end_ms: u64, width_ms: u64, buckets: usize) -> Vec<(u64, [f64; 3])> {
    let start = end_ms.saturating_sub(width_ms * buckets as u64);
    let mut out: Vec<(u64, [f64; 3])> = (0..buckets)
        .map(|i| (start + width_ms * (i as u64 + 1), [0.0; 3]))
        .collect();
    for samples in per_queue {
        for (from, to, rate) in segments(samples) {
            for (i, (bucket_end, sum)) in out.iter_mut().enumerate() {
                let bucket_start = start + width_ms * i as u64;
                let overlap = to.min(*bucket_end).saturating_sub(from.max(bucket_start));
                if overlap > 0 {
                    let share = overlap as f64 / width_ms as f64;
                    for k in 0..3 {
                        sum[k] += rate[k] * share;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, done: u64) -> Sample {
        Sample {
            at_ms,
            counters: Counters {
                done,
                ..Counters::default()
            },
        }
    }

    #[test]
    fn rates_of_queues_sampled_at_different_moments_add_up() {
        // Queue a: 10/s throughout; queue b: 5/s, sampled off the bucket edges.
        let a = vec![sample(0, 0), sample(10_000, 100), sample(20_000, 200)];
        let b = vec![sample(3_000, 0), sample(13_000, 50), sample(20_000, 85)];
        let t = throughput(&[a, b], 20_000, 10_000, 2);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].0, 10_000);
        // First bucket: a's 10/s whole, b's 5/s for 7 of 10 s.
        assert!((t[0].1[0] - 13.5).abs() < 1e-9, "{t:?}");
        assert!((t[1].1[0] - 15.0).abs() < 1e-9, "{t:?}");
        assert_eq!(latest_rates(&[sample(0, 0), sample(2_000, 10)]), Some([5.0, 0.0, 0.0]));
        assert_eq!(latest_rates(&[sample(0, 0)]), None);
    }

    #[test]
    fn decisions_parse_from_the_autoscalers_json() {
        let p = decision_point(r#"{"desired":4,"current":2,"reason":"backlog","detail":"d","at_ms":5}"#).unwrap();
        assert_eq!((p.desired, p.current, p.at_ms, p.reason.as_str()), (4, 2, 5, "backlog"));
        assert!(decision_point("not json").is_none());
    }
}
