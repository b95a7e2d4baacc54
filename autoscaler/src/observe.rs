//! Observe: one snapshot per tick of a queue's priorities and its live workers.
//!
//! Backlog is the consumer group's lag when Redis knows it, else `length - pending`, flagged
//! as an estimate (never a silent zero). Arrival and completion rates are counter deltas
//! smoothed with an exponential moving average whose time constant is `smoothing`, and so is
//! the number of tasks running on the queue's workers, which the per-worker rate is estimated
//! with.

use std::collections::HashMap;
use std::time::Duration;

use rivulet::{Inspector, Queue};
use tokio::time::Instant;

use crate::policy::{Observation, PriorityObservation};

/// Default time constant of the rate smoothing: the one the simulator proves the policy with
/// (`sim::DEFAULT_RATE_WINDOW`). 10 s let the simulated sine flap on some seeds (10 direction
/// changes in 6 half periods on the worst of 100).
pub const DEFAULT_SMOOTHING: Duration = Duration::from_secs(15);

/// Reads observations for one queue.
#[derive(Debug)]
pub struct Observer {
    inspector: Inspector,
    queue: Queue,
    slas: Vec<Duration>,
    smoothing: Duration,
    last: Option<(Instant, Vec<(u64, u64)>)>,
    rates: Vec<(f64, f64)>,
    in_flight_avg: Option<f64>,
    /// Per worker id: handlers finished and their run time (µs) at its last heartbeat.
    handlers: HashMap<String, (u64, u64)>,
    /// Averaged handler finishes (/s) and handler run time (s/s) over the queue's workers.
    handler_avg: Option<(f64, f64)>,
}

impl Observer {
    /// `slas` holds one SLA per priority of the queue, highest first.
    pub fn new(inspector: Inspector, queue: Queue, slas: Vec<Duration>, smoothing: Duration) -> Self {
        let n = slas.len();
        Observer {
            inspector,
            queue,
            slas,
            smoothing,
            last: None,
            rates: vec![(0.0, 0.0); n],
            in_flight_avg: None,
            handlers: HashMap::new(),
            handler_avg: None,
        }
    }

    /// The queue observed.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The inspector used (for storing decisions).
    pub fn inspector(&self) -> &Inspector {
        &self.inspector
    }

    /// One observation: per priority numbers, live and busy workers of this queue.
    pub async fn observe(&mut self) -> rivulet::Result<Observation> {
        let stats = self.inspector.stats(&self.queue).await?;
        let workers = self.inspector.workers().await?;
        let now = Instant::now();
        // Completions count every settled outcome that frees a worker: done and dead alike.
        let counts: Vec<(u64, u64)> = stats
            .priorities
            .iter()
            .map(|p| (p.counters.enqueued, p.counters.done + p.counters.dead))
            .collect();
        // EWMA weight for an irregular interval: 1 - e^(-dt/tau); none on the first tick.
        let tau = self.smoothing.as_secs_f64().max(1e-3);
        let step = self
            .last
            .as_ref()
            .map(|(then, before)| (now.duration_since(*then).as_secs_f64(), before))
            .filter(|(dt, _)| *dt > 0.0)
            .map(|(dt, before)| (dt, 1.0 - (-dt / tau).exp(), before));
        if let Some((dt, alpha, before)) = step {
            for ((rate, (enq, done)), (enq0, done0)) in self.rates.iter_mut().zip(&counts).zip(before) {
                // Counters only grow; a drop means Redis lost them (restart): count nothing.
                let arrivals = enq.saturating_sub(*enq0) as f64 / dt;
                let completions = done.saturating_sub(*done0) as f64 / dt;
                rate.0 += alpha * (arrivals - rate.0);
                rate.1 += alpha * (completions - rate.1);
            }
        }
        let timing = step.map(|(dt, alpha, _)| (dt, alpha));
        let alpha = timing.map(|(_, alpha)| alpha);
        self.last = Some((now, counts));
        let priorities = stats
            .priorities
            .iter()
            .zip(&self.slas)
            .zip(&self.rates)
            .map(|((p, sla), (arrival, completion))| PriorityObservation {
                priority: p.priority.clone(),
                sla: *sla,
                // Grouped tasks waiting their turn in the fair set are backlog too.
                backlog: p.waiting + p.fair_waiting,
                backlog_estimated: p.waiting_estimated,
                in_flight: p.pending,
                oldest_age: p.oldest_waiting_age,
                arrival_rate: *arrival,
                completion_rate: *completion,
            })
            .collect();
        let ours: Vec<_> = workers
            .iter()
            .filter(|w| w.queues.iter().any(|q| q == self.queue.name().as_str()))
            .collect();
        // Tasks running per the heartbeats, not the pending count: that also holds entries of
        // dead workers until they are reclaimed.
        let running = ours.iter().map(|w| w.in_flight).sum::<u64>() as f64;
        let in_flight_avg = match (self.in_flight_avg, alpha) {
            (Some(avg), Some(alpha)) => avg + alpha * (running - avg),
            (Some(avg), None) => avg,
            (None, _) => running,
        };
        self.in_flight_avg = Some(in_flight_avg);
        let slot_rate = self.measure_handlers(&ours, timing);
        let slots_per_worker = if ours.is_empty() {
            1.0
        } else {
            ours.iter().map(|w| w.concurrency).sum::<u64>() as f64 / ours.len() as f64
        };
        Ok(Observation {
            priorities,
            live_workers: ours.len() as u32,
            busy_workers: ours.iter().filter(|w| w.in_flight > 0).count() as u32,
            in_flight_avg,
            slots_per_worker,
            slot_rate,
        })
    }

    /// Tasks per second one handler slot completes: handlers finished over the time they ran,
    /// from the heartbeats' counters (deltas per worker, averaged like the rates). Workers
    /// that report no run time (older versions) are left out. `None` before any data.
    fn measure_handlers(&mut self, ours: &[&rivulet::WorkerRecord], step: Option<(f64, f64)>) -> Option<f64> {
        let (mut finished, mut busy_us) = (0u64, 0u64);
        let mut now = HashMap::with_capacity(ours.len());
        for w in ours {
            let Some(busy) = w.busy_us else { continue };
            let done = w.succeeded + w.failed;
            if let Some(&(done0, busy0)) = self.handlers.get(&w.id) {
                finished += done.saturating_sub(done0);
                busy_us += busy.saturating_sub(busy0);
            }
            now.insert(w.id.clone(), (done, busy));
        }
        self.handlers = now;
        if let Some((dt, alpha)) = step {
            let sample = (finished as f64 / dt, busy_us as f64 / 1e6 / dt);
            self.handler_avg = Some(match self.handler_avg {
                Some((f, b)) => (f + alpha * (sample.0 - f), b + alpha * (sample.1 - b)),
                None => sample,
            });
        }
        self.handler_avg
            .filter(|&(f, b)| f > 0.0 && b > 0.0)
            .map(|(f, b)| f / b)
    }

    /// Pids of this queue's workers that had nothing in flight at their last heartbeat.
    pub async fn idle_pids(&self) -> rivulet::Result<Vec<u32>> {
        Ok(self
            .inspector
            .workers()
            .await?
            .into_iter()
            .filter(|w| w.in_flight == 0 && w.queues.iter().any(|q| q == self.queue.name().as_str()))
            .map(|w| w.pid)
            .collect())
    }
}
