//! The firing loop. Any number of schedulers may run (each `worker-cli` supervisor runs one):
//! there is no leader. Each wake-up reads the schedules' last fire times (and their
//! definitions when the version counter moved), plans every schedule
//! (`cadence::plan`), enqueues each due fire time's task and moves the schedule's last fire
//! time forward.
//!
//! Exactly one task per fire time: the task of a fire time has an id and a unique key derived
//! from the schedule's name and the fire time, so when several schedulers enqueue it at once
//! the queue's enqueue script takes the first and answers the others "duplicate". The last
//! fire time, kept beside the schedule and only ever moved forward, is what a scheduler that
//! restarts, or one whose clock lags, reads to know a fire time is done, and what the
//! missed-fire policy counts from. A scheduler that dies between the enqueue and the move
//! leaves the fire time to the next one, whose enqueue is then the duplicate.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use super::cadence::{self, Cadence};
use super::{Schedule, target_queue};
use crate::broker::{self, RedisConnection, RedisTarget};
use crate::client::Client;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::lifecycle::Enqueued;
use crate::worker::Outage;

/// Longest sleep between two wake-ups: how soon a new, changed or resumed schedule is seen.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// Each wake-up comes up to this much after the fire time, drawn at random: of schedulers
/// that wake for one fire time, the first enqueues it and moves the state on, and the others
/// mostly find it done (two commands) instead of racing to enqueue a duplicate.
const WAKE_SPREAD_MS: u64 = 30;

/// Fires the stored schedules (see the module docs).
#[derive(Debug)]
pub struct Scheduler {
    redis: RedisTarget,
    clock: Clock,
    poll: Duration,
}

impl Scheduler {
    /// A scheduler on this Redis (a parsed target: one node, a Cluster, Sentinel; or an
    /// existing `redis::Client`).
    pub fn new(redis: impl Into<RedisTarget>) -> Self {
        Scheduler {
            redis: redis.into(),
            clock: Clock::System,
            poll: DEFAULT_POLL,
        }
    }

    /// Wakes up at least this often (default [`DEFAULT_POLL`]) to see schedule changes; it
    /// also wakes at every fire time.
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(10));
        self
    }

    /// Fires schedules until `shutdown` resolves. Redis errors (at start too) are logged and
    /// retried with backoff (50 ms to 5 s); what was not fired is fired (or handled by its
    /// missed-fire policy) when Redis is back.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        // The workers' outage backoff (50 ms doubling to 5 s, jittered), each failure logged.
        let mut outage = Outage::default();
        let failed = |outage: &mut Outage, error: &Error, what: &str| {
            let delay = outage.next_delay();
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "scheduler: {what}; retrying");
            delay
        };
        // Redis may be away when the scheduler starts (a supervisor's workers wait for it
        // too): connect with the same backoff as every later call.
        let mut firing = loop {
            let delay = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                f = Firing::connect(&self.redis) => match f {
                    Ok(f) => break f,
                    Err(e) => failed(&mut outage, &e, "cannot connect to redis"),
                },
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        };
        outage.recovered();
        tracing::info!("scheduler started");
        loop {
            let now = self.clock.now_ms();
            let wait = match firing.tick(now).await {
                Ok(wake) => {
                    if outage.recovered() {
                        tracing::info!("scheduler: redis is back");
                    }
                    let now = self.clock.now_ms();
                    Duration::from_millis(wake.saturating_sub(now)).min(self.poll)
                        + Duration::from_millis(fastrand::u64(..=WAKE_SPREAD_MS))
                }
                Err(e) => failed(&mut outage, &e, "redis failed"),
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("scheduler stopped");
        Ok(())
    }
}

/// A definition ready to fire.
struct Loaded {
    schedule: Schedule,
    cadence: Cadence,
    paused: bool,
}

/// The loop's state: connections and the definitions as of `version`.
pub(crate) struct Firing {
    conn: RedisConnection,
    client: Client,
    version: Option<u64>,
    schedules: Vec<Loaded>,
}

impl Firing {
    pub(crate) async fn connect(redis: &RedisTarget) -> Result<Self> {
        Ok(Firing {
            conn: redis.connect().await?,
            client: Client::new(redis.clone()).await?,
            version: None,
            schedules: Vec::new(),
        })
    }

    /// Reloads the definitions and pause flags (when the version moved).
    async fn reload(&mut self) -> Result<HashMap<String, u64>> {
        let stored = broker::schedules::load_schedules(&mut self.conn).await?;
        let mut schedules = Vec::with_capacity(stored.defs.len());
        for (name, json) in &stored.defs {
            let parsed = serde_json::from_str::<Schedule>(json)
                .map_err(|e| e.to_string())
                .and_then(|s| s.validate().map(|c| (s, c)).map_err(|e| e.to_string()));
            match parsed {
                Ok((schedule, cadence)) => schedules.push(Loaded {
                    paused: stored.paused.contains(name),
                    schedule,
                    cadence,
                }),
                Err(error) => {
                    tracing::error!(schedule = %name, %error, "stored schedule is unusable; it does not fire")
                }
            }
        }
        tracing::debug!(
            schedules = schedules.len(),
            version = stored.version,
            "schedules loaded"
        );
        self.schedules = schedules;
        self.version = Some(stored.version);
        Ok(stored.fired)
    }

    /// One wake-up at `now`: fires what is due; returns when to wake up next (ms since the
    /// epoch: the earliest next fire time, or `u64::MAX` when nothing is scheduled).
    pub(crate) async fn tick(&mut self, now: u64) -> Result<u64> {
        let (version, mut fired) = broker::schedules::schedule_state(&mut self.conn).await?;
        if self.version != Some(version) {
            fired = self.reload().await?;
        }
        let mut wake = u64::MAX;
        for i in 0..self.schedules.len() {
            let loaded = &self.schedules[i];
            if loaded.paused {
                continue;
            }
            let name = loaded.schedule.name.clone();
            // No state: removed since the definitions were read.
            let Some(&last) = fired.get(&name) else { continue };
            let plan = cadence::plan(
                &loaded.cadence,
                last,
                now,
                loaded.schedule.misfire_grace_ms,
                loaded.schedule.missed,
            );
            if plan.skipped > 0 {
                tracing::warn!(
                    schedule = %name,
                    missed = plan.skipped,
                    policy = loaded.schedule.missed.as_str(),
                    "fire times missed (every scheduler was away); not run"
                );
            }
            for &fire in &plan.fire {
                let schedule = self.schedules[i].schedule.clone();
                self.fire(&schedule, fire, now).await?;
                broker::schedules::mark_fired(&mut self.conn, &name, fire).await?;
            }
            if plan.fire.is_empty()
                && let Some(skip_to) = plan.skip_to
            {
                broker::schedules::mark_fired(&mut self.conn, &name, skip_to).await?;
            }
            if let Some(next) = plan.next {
                wake = wake.min(next);
            }
        }
        Ok(wake)
    }

    /// Enqueues one fire time's task. A transient Redis error is returned (the fire time is
    /// tried again); an error no retry can fix (the schedule's priority is not in the queue's
    /// layout any more) is logged and the fire time counted as handled, so it does not block
    /// the schedule.
    async fn fire(&mut self, schedule: &Schedule, fire_ms: u64, now: u64) -> Result<()> {
        let queue = target_queue(&mut self.conn, &schedule.queue).await?;
        match self.client.submit(&queue, schedule.task(Some(fire_ms))).await {
            Ok(Enqueued::New(id)) => {
                tracing::info!(
                    schedule = %schedule.name,
                    queue = %schedule.queue,
                    task_id = %id,
                    fire_ms,
                    late_ms = now.saturating_sub(fire_ms),
                    "fired"
                );
                Ok(())
            }
            Ok(Enqueued::Duplicate(id)) => {
                tracing::debug!(schedule = %schedule.name, task_id = %id, fire_ms, "fired already by another scheduler");
                Ok(())
            }
            Err(e) if e.is_transient() || matches!(e, Error::Redis(_) | Error::LayoutMismatch { .. }) => Err(e),
            Err(error) => {
                tracing::error!(schedule = %schedule.name, fire_ms, %error, "cannot enqueue this schedule's task; fire time dropped");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::schedule::{Missed, Schedules};
    use crate::testing::RedisServer;

    /// Task ids in the queue's default shard, sorted.
    async fn ids(server: &RedisServer, queue: &str) -> Vec<String> {
        let mut conn = server.client().get_multiplexed_async_connection().await.unwrap();
        let q = crate::keys::Queue::new(queue).unwrap();
        let keys = q.shard("normal", 0);
        let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(&keys.stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        // Flat or compact: the id wherever the entry keeps it.
        let mut ids: Vec<String> = entries
            .into_iter()
            .map(|(_, f)| {
                let f: Vec<(bytes::Bytes, bytes::Bytes)> = f.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
                let id = crate::envelope::entry_field(&f, "id").expect("an id");
                String::from_utf8(id.to_vec()).unwrap()
            })
            .collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn racing_schedulers_on_a_manual_clock_enqueue_each_fire_time_once_and_restarts_repeat_nothing() {
        let server = RedisServer::start();
        let start = 1_700_000_000_000u64;
        let (clock, time) = Clock::manual(start);
        let mut schedules = Schedules::new(server.client()).await.unwrap();
        schedules.clock = clock.clone();
        schedules
            .add(&Schedule::every("tick", "sched-q", "noop", Duration::from_secs(1)))
            .await
            .unwrap();
        let mut a = Firing::connect(&server.client().into()).await.unwrap();
        let mut b = Firing::connect(&server.client().into()).await.unwrap();
        for s in 1..=5u64 {
            time.store(start + s * 1_000 + 3, Ordering::Relaxed);
            // In turn, in either order: the second finds each fire time done (the state).
            let now = clock.now_ms();
            if s % 2 == 0 {
                a.tick(now).await.unwrap();
                b.tick(now).await.unwrap();
            } else {
                b.tick(now).await.unwrap();
                a.tick(now).await.unwrap();
            }
        }
        let want: Vec<String> = (1..=5)
            .map(|s| super::super::fire_id("tick", start + s * 1_000))
            .collect();
        assert_eq!(ids(&server, "sched-q").await, want);
        // A restarted scheduler (new state) at the same time repeats nothing.
        let mut c = Firing::connect(&server.client().into()).await.unwrap();
        c.tick(clock.now_ms()).await.unwrap();
        assert_eq!(ids(&server, "sched-q").await.len(), 5);
        // A scheduler acting on an old state (it read it before the others moved it) still
        // enqueues nothing twice: the unique key answers. (Without the key, this fails.)
        let mut conn = server.client().get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("HSET")
            .arg(crate::keys::SCHEDULES_FIRED_KEY)
            .arg("tick")
            .arg(start + 2_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        c.tick(clock.now_ms()).await.unwrap();
        assert_eq!(ids(&server, "sched-q").await.len(), 5, "stale state, no duplicate");
    }

    #[tokio::test]
    async fn after_downtime_each_policy_does_what_it_says_on_a_manual_clock() {
        let server = RedisServer::start();
        let start = 1_700_000_000_000u64;
        let (clock, time) = Clock::manual(start);
        let mut schedules = Schedules::new(server.client()).await.unwrap();
        schedules.clock = clock.clone();
        for (name, missed) in [("skip", Missed::Skip), ("once", Missed::RunOnce)] {
            schedules
                .add(
                    &Schedule::every(name, &format!("q-{name}"), "noop", Duration::from_secs(1))
                        .missed(missed)
                        .misfire_grace(Duration::from_secs(1)),
                )
                .await
                .unwrap();
        }
        let mut s = Firing::connect(&server.client().into()).await.unwrap();
        time.store(start + 1_010, Ordering::Relaxed);
        s.tick(clock.now_ms()).await.unwrap();
        // Down from 1 s to 10.2 s: fire times 2..=9 s are older than the grace.
        time.store(start + 10_200, Ordering::Relaxed);
        s.tick(clock.now_ms()).await.unwrap();
        let at = |secs: &[u64], name: &str| -> Vec<String> {
            let mut v: Vec<String> = secs
                .iter()
                .map(|s| super::super::fire_id(name, start + s * 1_000))
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(&server, "q-skip").await, at(&[1, 10], "skip"));
        assert_eq!(ids(&server, "q-once").await, at(&[1, 9, 10], "once"));
        // Paused, the time passes; resumed, nothing of the pause is run.
        schedules.pause("once").await.unwrap();
        time.store(start + 20_200, Ordering::Relaxed);
        s.tick(clock.now_ms()).await.unwrap();
        schedules.resume("once").await.unwrap();
        s.tick(clock.now_ms()).await.unwrap();
        assert_eq!(ids(&server, "q-once").await, at(&[1, 9, 10], "once"));
        time.store(start + 21_010, Ordering::Relaxed);
        s.tick(clock.now_ms()).await.unwrap();
        assert_eq!(ids(&server, "q-once").await, at(&[1, 9, 10, 21], "once"));
    }

    #[tokio::test]
    async fn schedulers_whose_clocks_are_3s_apart_enqueue_every_fire_time_once_and_hand_over_without_gaps() {
        let server = RedisServer::start();
        let start = 1_700_000_000_000u64;
        let (clock, _) = Clock::manual(start);
        let mut schedules = Schedules::new(server.client()).await.unwrap();
        schedules.clock = clock;
        schedules
            .add(&Schedule::every("skew", "skew-q", "noop", Duration::from_secs(1)))
            .await
            .unwrap();
        // `ahead` reads 3 s more than `behind`; the true time steps by 250 ms for 30 s.
        let mut ahead = Firing::connect(&server.client().into()).await.unwrap();
        let mut behind = Firing::connect(&server.client().into()).await.unwrap();
        for step in 1..=120u64 {
            let t = start + step * 250;
            match step {
                // Both run.
                1..=40 => {
                    behind.tick(t).await.unwrap();
                    ahead.tick(t + 3_000).await.unwrap();
                }
                // The one ahead is gone: the one behind takes over.
                41..=80 => {
                    behind.tick(t).await.unwrap();
                }
                // The one ahead is back (and the one behind gone).
                _ => {
                    ahead.tick(t + 3_000).await.unwrap();
                }
            }
        }
        let got = ids(&server, "skew-q").await;
        let mut want: Vec<String> = (1..=33)
            .map(|s| super::super::fire_id("skew", start + s * 1_000))
            .collect();
        want.sort();
        assert_eq!(got, want, "every fire time up to the latest clock, once, none skipped");
    }

    #[tokio::test]
    async fn a_scheduler_on_a_manual_clock_fires_cron_schedules_across_both_dst_changes() {
        use chrono::{NaiveDate, TimeZone};
        let server = RedisServer::start();
        let ms = |tz: chrono_tz::Tz, y, mo, d, h, mi| -> u64 {
            let naive = NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_opt(h, mi, 0)
                .unwrap();
            tz.from_local_datetime(&naive).earliest().unwrap().timestamp_millis() as u64
        };
        let berlin = chrono_tz::Europe::Berlin;
        let new_york = chrono_tz::America::New_York;
        // Run through each change in steps of 5 minutes of the injected clock.
        let cases = [
            (
                "daily-berlin",
                "30 2 * * *",
                "Europe/Berlin",
                ms(berlin, 2026, 3, 28, 12, 0),
                ms(berlin, 2026, 3, 30, 4, 0),
            ),
            (
                "hourly-ny",
                "0 0 * * * *",
                "America/New_York",
                ms(new_york, 2026, 11, 1, 0, 30),
                ms(new_york, 2026, 11, 1, 3, 30),
            ),
        ];
        for (name, expr, tz, from, to) in cases {
            let (clock, time) = Clock::manual(from);
            let mut schedules = Schedules::new(server.client()).await.unwrap();
            schedules.clock = clock.clone();
            schedules
                .add(
                    &Schedule::cron(name, name, "noop", expr)
                        .timezone(tz)
                        .misfire_grace(Duration::from_secs(600)),
                )
                .await
                .unwrap();
            let mut firing = Firing::connect(&server.client().into()).await.unwrap();
            let mut t = from;
            while t <= to {
                time.store(t, Ordering::Relaxed);
                firing.tick(clock.now_ms()).await.unwrap();
                t += 300_000;
            }
        }
        let at = |name: &str, times: &[u64]| -> Vec<String> {
            let mut v: Vec<String> = times.iter().map(|&t| super::super::fire_id(name, t)).collect();
            v.sort();
            v
        };
        // Spring forward: the 02:30 of the gap day runs once, at 03:00 CEST; the next day as usual.
        assert_eq!(
            ids(&server, "daily-berlin").await,
            at(
                "daily-berlin",
                &[ms(berlin, 2026, 3, 29, 3, 0), ms(berlin, 2026, 3, 30, 2, 30)]
            )
        );
        // Fall back: 01:00 EDT and 01:00 EST are both hours, an hour apart; then 02:00 and 03:00.
        let one_edt = ms(new_york, 2026, 11, 1, 1, 0);
        assert_eq!(
            ids(&server, "hourly-ny").await,
            at(
                "hourly-ny",
                &[one_edt, one_edt + 3_600_000, one_edt + 7_200_000, one_edt + 10_800_000]
            )
        );
    }
}
