//! Worker configuration: data with documented defaults, checked by `validate`.

use std::time::Duration;

use crate::backoff::RetryPolicy;
use crate::durability::Durability;
use crate::error::{Error, Result};

/// Default handlers running at once per worker.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Default lease (visibility timeout): how long an entry may sit without a heartbeat before
/// another worker may take it over.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default longest blocking read: an idle worker makes one read per fetcher per `block`. New
/// tasks wake it at once, and a quiet or a pause flag change ends it early (`CLIENT UNBLOCK`).
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(10);
/// Default time in-flight tasks get to finish on shutdown before they are requeued.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a drain may spend, after its handlers are done or cut off at `drain_timeout`,
/// settling outcomes, requeueing what is unfinished and deregistering: the whole drain ends
/// within `drain_timeout` plus this, also when Redis is away (the supervisor's kill deadline,
/// `drain_timeout` + 10 s, is never reached). What is not written by then stays pending under
/// the worker's consumer and is reclaimed by a live worker one lease later.
pub const DRAIN_SETTLE_BUDGET: Duration = Duration::from_secs(5);
/// Largest weight of a fair group.
pub const MAX_GROUP_WEIGHT: u32 = 1000;
/// Largest fair window.
pub const MAX_FAIR_WINDOW: u32 = 100_000;
/// Default longest wait between promotion passes over `scheduled` and `retry` sets.
pub const DEFAULT_PROMOTE_INTERVAL: Duration = Duration::from_millis(250);
/// Default deliveries (first read plus reclaims) after which a task that never reported an
/// outcome is poison.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
/// Default approximate cap of each dead-letter stream.
pub const DEFAULT_DLQ_MAXLEN: usize = 100_000;
/// How long a task of a kind no handler serves is retried before it is dead-lettered
/// (asynq's habit): long enough for a rolling deploy to bring up the workers that serve it.
pub const DEFAULT_UNKNOWN_KIND_GRACE: Duration = Duration::from_secs(5 * 60);
/// Default fetch loops per worker. Two let one read travel to Redis and back while the other
/// decodes and dispatches its batch; with small handlers that is worth about a quarter more
/// throughput (docs/benchmarks.md). Never more than `concurrency`.
pub const DEFAULT_FETCHERS: usize = 2;
/// Default time a cancelled handler gets to stop before it is dropped.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(10);
/// Largest `max_tasks` (the budget is a semaphore, whose permits are bounded).
pub const MAX_TASKS_LIMIT: u64 = 1 << 60;

/// The order in which a worker reads priorities.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PriorityMode {
    /// Always the highest priority that has work; block on all only when all are empty.
    #[default]
    Strict,
    /// Each read starts at a priority drawn with these weights (highest priority first;
    /// missing weights count as 1, more weights than a queue's priorities are refused when the
    /// worker starts), so lower priorities are never starved.
    Weighted(Vec<u32>),
}

/// Per-queue overrides of the worker's retry policy and timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueOptions {
    /// Attempts and backoff for this queue.
    pub retry: Option<RetryPolicy>,
    /// Handler timeout for this queue.
    pub timeout: Option<Duration>,
    /// What settling this queue's tasks waits for ([`Durability::Fast`] by default): one wait
    /// per settle batch, after the batch's scripts, on the same connection. Checked against the
    /// server when the worker starts.
    pub durability: Durability,
}

/// How a worker runs. Every field has a documented default.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Handlers running at once ([`DEFAULT_CONCURRENCY`]).
    pub concurrency: usize,
    /// Lease of an in-flight task ([`DEFAULT_LEASE`]); renewed every `min(lease / 3, 2 s)` while the
    /// worker lives.
    pub lease: Duration,
    /// Longest blocking read ([`DEFAULT_BLOCK`]).
    pub block: Duration,
    /// Fetch loops, each with its own connection ([`DEFAULT_FETCHERS`]; at most `concurrency`
    /// run). Each reserves its share of the free slots before a read (see `worker/fetcher.rs`).
    pub fetchers: usize,
    /// Priority order ([`PriorityMode::Strict`]).
    pub priority: PriorityMode,
    /// Attempts and backoff, unless a queue, kind or task overrides them.
    pub retry: RetryPolicy,
    /// Handler timeout, unless a queue, kind or task overrides it (none by default).
    pub timeout: Option<Duration>,
    /// Deliveries after which a task is poison ([`DEFAULT_MAX_DELIVERIES`]).
    pub max_deliveries: u32,
    /// Approximate cap of each dead-letter stream ([`DEFAULT_DLQ_MAXLEN`]), `MAXLEN ~`:
    /// past it the oldest dead letters are dropped, and counted in the shard's
    /// `dlq_trimmed` counter (`Counters::dlq_trimmed`).
    pub dlq_maxlen: usize,
    /// A task whose kind this worker does not serve is retried with a short delay (without
    /// using up an attempt) while it is younger than this, counted from its enqueue, so a
    /// newer worker can take it during a rolling deploy; after that it goes to the
    /// dead-letter stream as `unknown_kind` ([`DEFAULT_UNKNOWN_KIND_GRACE`]; zero buries at
    /// once).
    pub unknown_kind_grace: Duration,
    /// Time in-flight tasks get on shutdown ([`DEFAULT_DRAIN_TIMEOUT`]).
    pub drain_timeout: Duration,
    /// Longest wait between promotion passes ([`DEFAULT_PROMOTE_INTERVAL`]).
    pub promote_interval: Duration,
    /// This worker's id (also its consumer name). Generated from host, pid and a random
    /// suffix when `None`; must be unique among live workers.
    pub worker_id: Option<String>,
    /// Largest result a handler may return, bytes
    /// ([`DEFAULT_MAX_RESULT_BYTES`](crate::lifecycle::DEFAULT_MAX_RESULT_BYTES)); a larger one
    /// fails the task as `fatal` with an error saying so, and is never stored truncated.
    pub max_result_bytes: usize,
    /// Time a cancelled handler gets to stop before it is dropped ([`DEFAULT_CANCEL_GRACE`]).
    pub cancel_grace: Duration,
    /// Start even when Redis's `maxmemory-policy` can evict task keys (`allkeys-*`), with a
    /// warning instead of [`Error::UnsafeRedisSetting`] (false by default).
    pub allow_eviction: bool,
    /// Most tasks this worker takes (reads or reclaims to run) before it quiets on its own
    /// and drains, as for [`ShutdownHandle::quiet`](super::ShutdownHandle::quiet); unlimited
    /// when `None` (the default). Honoured when the fetcher and the reclaimer reserve their
    /// slots, so exactly this many are taken unless the queues run dry first. A task taken
    /// counts also when it never reaches its handler (a payload that does not decode, a kind
    /// not served): it is buried, not run.
    pub max_tasks: Option<u64>,
    /// Fleet-wide rate and concurrency limits this worker enforces, by name (none by
    /// default). A task counts against the limit its `limit_key` names, else the one its
    /// kind names; over it, the task waits in its shard's retry set without using an
    /// attempt (see [`crate::limits`]). Give every worker serving those tasks the same
    /// limits: the state is shared in Redis, the settings are each worker's.
    pub limits: crate::limits::Limits,
    /// Fair groups' weights, by group (`docs/groups.md`): a group of weight 3 gets three turns
    /// to another's one. Groups not listed weigh 1. Written into each of the worker's shards at
    /// start (the producer's enqueue reads them there), so the last worker started sets them.
    pub group_weights: std::collections::BTreeMap<String, u32>,
    /// The most unread entries a shard's stream holds before its grouped tasks wait in the
    /// fair set (`None`: leave what the shards hold, by default 100). A smaller window makes a
    /// new group's task wait less behind the stream; too small leaves handler slots idle.
    /// Written into each of the worker's shards at start, as the weights are.
    pub fair_window: Option<u32>,
    /// Most tasks of one group running at once over the fleet (`None`: no cap): a
    /// `max_running` limit named `group:<group>` (see [`crate::limits`]), taken before the
    /// task's own limit.
    pub max_running_per_group: Option<u32>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: DEFAULT_CONCURRENCY,
            lease: DEFAULT_LEASE,
            block: DEFAULT_BLOCK,
            fetchers: DEFAULT_FETCHERS,
            priority: PriorityMode::Strict,
            retry: RetryPolicy::default(),
            timeout: None,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            dlq_maxlen: DEFAULT_DLQ_MAXLEN,
            unknown_kind_grace: DEFAULT_UNKNOWN_KIND_GRACE,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            promote_interval: DEFAULT_PROMOTE_INTERVAL,
            worker_id: None,
            max_result_bytes: crate::lifecycle::DEFAULT_MAX_RESULT_BYTES,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            allow_eviction: false,
            max_tasks: None,
            limits: crate::limits::Limits::new(),
            group_weights: std::collections::BTreeMap::new(),
            fair_window: None,
            max_running_per_group: None,
        }
    }
}

impl WorkerConfig {
    /// Checks every field; never repairs one silently.
    pub fn validate(&self) -> Result<()> {
        if self.concurrency == 0 || self.concurrency > 100_000 {
            return Err(Error::config("concurrency", "must be 1..=100000"));
        }
        if self.lease < Duration::from_millis(100) {
            return Err(Error::config("lease", "must be at least 100ms"));
        }
        if self.block < Duration::from_millis(1) || self.block > Duration::from_secs(60) {
            return Err(Error::config("block", "must be 1ms..=60s"));
        }
        if self.fetchers == 0 || self.fetchers > 16 {
            return Err(Error::config("fetchers", "must be 1..=16"));
        }
        if self.max_deliveries == 0 {
            return Err(Error::config("max_deliveries", "must be at least 1"));
        }
        if self.dlq_maxlen == 0 {
            return Err(Error::config("dlq_maxlen", "must be at least 1"));
        }
        if self.promote_interval < Duration::from_millis(1) {
            return Err(Error::config("promote_interval", "must be at least 1ms"));
        }
        if self.max_result_bytes == 0 || self.max_result_bytes > 512 * 1024 * 1024 {
            return Err(Error::config(
                "max_result_bytes",
                "must be 1..=536870912 (512 MiB, Redis' string limit)",
            ));
        }
        if let Some(max) = self.max_tasks
            && (max == 0 || max > MAX_TASKS_LIMIT)
        {
            return Err(Error::config("max_tasks", format!("must be 1..={MAX_TASKS_LIMIT}")));
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(Error::config("timeout", "must be positive"));
        }
        if let PriorityMode::Weighted(w) = &self.priority
            && (w.is_empty() || w.iter().all(|&x| x == 0))
        {
            return Err(Error::config("priority", "weights must include a positive one"));
        }
        if let Some(id) = &self.worker_id
            && (id.is_empty() || id.len() > 200 || id.contains(char::is_whitespace))
        {
            return Err(Error::config("worker_id", "must be 1..=200 characters without spaces"));
        }
        crate::limits::check_limits(&self.limits)?;
        for (group, &weight) in &self.group_weights {
            crate::envelope::check_group(group).map_err(|m| Error::config("group_weights", m.0))?;
            if weight == 0 || weight > MAX_GROUP_WEIGHT {
                return Err(Error::config(
                    "group_weights",
                    format!("the weight of {group:?} is {weight}; it must be 1..={MAX_GROUP_WEIGHT}"),
                ));
            }
        }
        if let Some(w) = self.fair_window
            && (w == 0 || w > MAX_FAIR_WINDOW)
        {
            return Err(Error::config("fair_window", format!("must be 1..={MAX_FAIR_WINDOW}")));
        }
        if self.max_running_per_group == Some(0) {
            return Err(Error::config(
                "max_running_per_group",
                "must be at least 1 (leave it out for no cap)",
            ));
        }
        self.retry.validate()
    }

    /// How often a worker renews its leases and heartbeat: a third of the lease, and at
    /// least every 2 s so the registry (in-flight count, read by the autoscaler) stays fresh.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.lease / 3).min(Duration::from_secs(2))
    }

    /// How long after its read's reply a plain success is acknowledged without the fence
    /// (`worker/acker.rs`): half a heartbeat interval (a sixth of the lease, at most 1 s).
    /// Within it nobody can have claimed the entry: a peer would need a lease shorter than
    /// this, and such a peer could claim a renewed entry (idle up to a heartbeat interval)
    /// anyway; the other half covers the trip of the read's reply and of the ack.
    pub fn fast_ack_window(&self) -> Duration {
        self.heartbeat_interval() / 2
    }

    /// How often an idle worker (holding nothing, its counters still) rewrites its registry
    /// record: a third of the lease, at least every 10 s (and never more often than the
    /// heartbeat). The record lives three of these plus a second.
    pub fn registry_interval(&self) -> Duration {
        (self.lease / 3)
            .min(Duration::from_secs(10))
            .max(self.heartbeat_interval())
    }

    /// The longest wait between a worker's looks for entries whose lease ran out: an eighth
    /// of the lease, 50 ms to 2 s. A dead worker's tasks start again elsewhere at most
    /// `lease + reclaim_interval()` after it died, when a live worker has a free slot.
    pub fn reclaim_interval(&self) -> Duration {
        (self.lease / 8).clamp(Duration::from_millis(50), Duration::from_secs(2))
    }

    /// How often a worker looks for dead workers' consumers to remove from a group it still
    /// watches (see `worker/reclaimer.rs`): twice the lease, 1 s to 60 s.
    pub fn reap_interval(&self) -> Duration {
        (self.lease * 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// How often a worker sweeps all its lanes for orphans (and reaps dead consumers) whether
    /// or not a worker was seen to die: ten leases, 1 to 10 minutes (see `worker/reclaimer.rs`).
    pub fn safety_sweep_interval(&self) -> Duration {
        (self.lease * 10).clamp(Duration::from_secs(60), Duration::from_secs(600))
    }
}

/// The order of ranks for one read: strict is 0, 1, 2...; weighted draws the first rank by
/// weight, then the rest in the same way. `draw` yields uniform numbers in `[0, 1)`.
pub(crate) fn rank_order(mode: &PriorityMode, ranks: usize, mut draw: impl FnMut() -> f64) -> Vec<usize> {
    match mode {
        PriorityMode::Strict => (0..ranks).collect(),
        PriorityMode::Weighted(weights) => {
            let mut left: Vec<(usize, f64)> = (0..ranks)
                .map(|r| (r, f64::from(weights.get(r).copied().unwrap_or(1))))
                .collect();
            let mut order = Vec::with_capacity(ranks);
            while !left.is_empty() {
                let total: f64 = left.iter().map(|(_, w)| w).sum();
                let pick = if total <= 0.0 {
                    0
                } else {
                    let mut x = draw() * total;
                    left.iter()
                        .position(|(_, w)| {
                            x -= w;
                            x < 0.0
                        })
                        .unwrap_or(left.len() - 1)
                };
                order.push(left.remove(pick).0);
            }
            order
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_rejected() {
        let c = WorkerConfig::default();
        assert!(c.validate().is_ok());
        for bad in [
            WorkerConfig {
                concurrency: 0,
                ..c.clone()
            },
            WorkerConfig {
                lease: Duration::from_millis(10),
                ..c.clone()
            },
            WorkerConfig {
                max_deliveries: 0,
                ..c.clone()
            },
            WorkerConfig {
                priority: PriorityMode::Weighted(vec![0, 0]),
                ..c.clone()
            },
            WorkerConfig {
                worker_id: Some("a b".into()),
                ..c.clone()
            },
            WorkerConfig {
                timeout: Some(Duration::ZERO),
                ..c.clone()
            },
            WorkerConfig {
                max_tasks: Some(0),
                ..c.clone()
            },
        ] {
            assert!(matches!(bad.validate(), Err(Error::InvalidConfig { .. })), "{bad:?}");
        }
    }

    #[test]
    fn a_dead_workers_tasks_wait_at_most_one_lease_and_a_small_margin() {
        for (lease_ms, worst_ms) in [(30_000, 32_000), (2_000, 2_250), (400, 450), (100, 150)] {
            let c = WorkerConfig {
                lease: Duration::from_millis(lease_ms),
                ..WorkerConfig::default()
            };
            assert_eq!(
                (c.lease + c.reclaim_interval()).as_millis(),
                worst_ms,
                "lease {lease_ms} ms"
            );
            assert!(c.reclaim_interval() <= c.lease / 2, "lease {lease_ms} ms");
        }
    }

    #[test]
    fn strict_order_is_rank_order() {
        assert_eq!(rank_order(&PriorityMode::Strict, 3, || 0.9), [0, 1, 2]);
    }

    #[test]
    fn weighted_order_follows_the_draw() {
        let w = PriorityMode::Weighted(vec![6, 3, 1]);
        assert_eq!(rank_order(&w, 3, || 0.0), [0, 1, 2]);
        // 0.95 * 10 = 9.5 falls in the last tenth: rank 2 first.
        let mut draws = [0.95, 0.0].into_iter();
        assert_eq!(rank_order(&w, 3, || draws.next().unwrap_or(0.0)), [2, 0, 1]);
        // Over many draws rank 0 leads about 60 % of reads.
        let mut firsts = [0u32; 3];
        for _ in 0..10_000 {
            firsts[rank_order(&w, 3, fastrand::f64)[0]] += 1;
        }
        assert!((5_500..6_500).contains(&firsts[0]), "{firsts:?}");
        assert!(firsts[2] > 500, "{firsts:?}");
    }
}
