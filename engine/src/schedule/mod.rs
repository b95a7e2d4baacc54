//! Periodic tasks: a [`Schedule`] names a queue, a kind, a payload and a priority, and when to
//! enqueue them (a cron expression in a time zone, or a fixed interval), with jitter and a
//! missed-fire policy. [`Schedules`] stores and manages them in Redis; any number of
//! [`Scheduler`]s fire them, exactly one task per fire time (`docs/schedules.md`).
//!
//! ```no_run
//! use std::time::Duration;
//! use rivulet::schedule::{Missed, Schedule, Schedules, Scheduler};
//!
//! # async fn demo() -> Result<(), rivulet::Error> {
//! let redis = redis::Client::open("redis://127.0.0.1:6379")?;
//! let schedules = Schedules::new(redis.clone()).await?;
//! schedules
//!     .add(
//!         &Schedule::cron("nightly-universe", "research", "refresh", "0 30 2 * * *")
//!             .timezone("Europe/Berlin")
//!             .payload(serde_json::json!({"universe": "all"}))
//!             .missed(Missed::RunOnce),
//!     )
//!     .await?;
//! schedules.add(&Schedule::every("queue-stats", "ops", "record_stats", Duration::from_secs(60))).await?;
//!
//! // In every process that should fire them (any number: each fire time enqueues one task).
//! Scheduler::new(redis).run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - this file: the definition ([`Schedule`], [`Missed`]), its checks, the task a fire
//!   enqueues, and the management API ([`Schedules`]);
//! - `cadence`: fire times as pure functions of a time (croner for cron, chrono-tz for zones)
//!   and the plan of one wake-up (what to enqueue, what to skip as missed);
//! - `scheduler`: the firing loop ([`Scheduler`]).

mod cadence;
mod scheduler;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use cadence::Cadence;
pub use scheduler::{DEFAULT_POLL, Scheduler};

use crate::broker::schedules::{PutReply, StoredSchedules};
use crate::broker::{self, RedisConnection, RedisTarget};
use crate::client::{Client, Task};
use crate::clock::Clock;
use crate::envelope::{Codec, TaskId, millis};
use crate::error::{Error, Result};
use crate::keys::{Queue, QueueName};

/// How long a fire time's unique key is held: a scheduler that stalls longer than this
/// between reading a schedule's state and enqueueing its fire could enqueue that fire time a
/// second time (the last fire time, kept beside the schedule, covers everything else).
pub const UNIQUE_WINDOW: Duration = Duration::from_secs(600);
/// How late a fire time may be found and still count as on time, by default.
pub const DEFAULT_MISFIRE_GRACE: Duration = Duration::from_secs(5);
/// The shortest interval (and the smallest misfire grace): cron's resolution, a second.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The largest jitter.
pub const MAX_JITTER: Duration = Duration::from_secs(24 * 3600);
/// How many fire times `show` lists.
pub const SHOWN_FIRES: usize = 5;

/// What a scheduler does with fire times it finds more than the misfire grace late (all
/// schedulers were down, or the schedule was unreachable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Missed {
    /// Skip them: the next task is the next on-time fire (cron's habit).
    #[default]
    Skip,
    /// Run once for all of them: one task, for the latest missed fire time, then on as usual
    /// (Celery beat's and anacron's habit for a nightly job).
    RunOnce,
}

impl Missed {
    /// The name in the CLI, the schedules file and the stored JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::RunOnce => "run-once",
        }
    }
}

fn utc() -> String {
    "UTC".to_owned()
}

fn json_codec() -> String {
    "json".to_owned()
}

fn default_grace_ms() -> u64 {
    millis(DEFAULT_MISFIRE_GRACE)
}

fn is_default_grace(ms: &u64) -> bool {
    *ms == default_grace_ms()
}

/// A schedule's definition: what to enqueue and when. Stored as this JSON in
/// `rivulet:{sched}:defs` (`docs/wire-format.md`); build one with [`Schedule::cron`] or
/// [`Schedule::every`] and the setters, or deserialize it (unknown fields are refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Unique name, `[A-Za-z0-9._-]{1,64}`.
    pub name: String,
    /// The queue its tasks go to (created with the default layout if it does not exist).
    pub queue: String,
    /// The tasks' kind.
    pub kind: String,
    /// The tasks' priority (the queue's default when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// The payload: any JSON value with codec `json`, a string (sent as its UTF-8 bytes) with
    /// codec `bytes`.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// `json` (default) or `bytes`.
    #[serde(default = "json_codec")]
    pub codec: String,
    /// A cron expression: 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds
    /// first). Exactly one of `cron` and `every_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA time zone the cron expression is read in (default `UTC`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// A fixed interval in ms (at least 1 s): fires at its multiples since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// Each task is due a random delay of up to this many ms after its fire time.
    #[serde(default)]
    pub jitter_ms: u64,
    /// What to do with fire times found more than `misfire_grace_ms` late.
    #[serde(default)]
    pub missed: Missed,
    /// How late a fire time may be found and still count as on time (default 5 s).
    #[serde(default = "default_grace_ms", skip_serializing_if = "is_default_grace")]
    pub misfire_grace_ms: u64,
}

impl Schedule {
    fn new(name: &str, queue: &str, kind: &str) -> Self {
        Schedule {
            name: name.to_owned(),
            queue: queue.to_owned(),
            kind: kind.to_owned(),
            priority: None,
            payload: serde_json::Value::Null,
            codec: json_codec(),
            cron: None,
            timezone: utc(),
            every_ms: None,
            jitter_ms: 0,
            missed: Missed::Skip,
            misfire_grace_ms: default_grace_ms(),
        }
    }

    /// Enqueues `kind` into `queue` at the times of the cron expression `expr` (in UTC unless
    /// [`timezone`](Self::timezone) says otherwise).
    pub fn cron(name: &str, queue: &str, kind: &str, expr: &str) -> Self {
        Schedule {
            cron: Some(expr.to_owned()),
            ..Self::new(name, queue, kind)
        }
    }

    /// Enqueues `kind` into `queue` every `interval`, at the multiples of `interval` since the
    /// Unix epoch.
    pub fn every(name: &str, queue: &str, kind: &str, interval: Duration) -> Self {
        Schedule {
            every_ms: Some(millis(interval)),
            ..Self::new(name, queue, kind)
        }
    }

    /// Reads the cron expression in this IANA time zone (`Europe/Berlin`).
    pub fn timezone(mut self, tz: &str) -> Self {
        self.timezone = tz.to_owned();
        self
    }

    /// The tasks' JSON payload.
    pub fn payload(mut self, payload: serde_json::Value) -> Self {
        self.payload = payload;
        self.codec = json_codec();
        self
    }

    /// The tasks' payload as opaque bytes (codec `bytes`) of this text.
    pub fn payload_text(mut self, text: &str) -> Self {
        self.payload = serde_json::Value::String(text.to_owned());
        self.codec = Codec::Bytes.as_str().to_owned();
        self
    }

    /// The tasks' priority.
    pub fn priority(mut self, priority: &str) -> Self {
        self.priority = Some(priority.to_owned());
        self
    }

    /// Makes each task due a random delay of up to `jitter` after its fire time.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter_ms = millis(jitter);
        self
    }

    /// The missed-fire policy.
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    /// How late a fire time may be found and still count as on time.
    pub fn misfire_grace(mut self, grace: Duration) -> Self {
        self.misfire_grace_ms = millis(grace);
        self
    }

    fn invalid(&self, field: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidSchedule {
            name: self.name.clone(),
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Checks every field and returns the fire times' rule. A bad name, queue, kind, cron
    /// expression, time zone, interval, jitter, grace or payload is
    /// [`Error::InvalidSchedule`], naming the field, the offending text and why.
    pub fn validate(&self) -> Result<Cadence> {
        crate::keys::check_name(&self.name).map_err(|r| self.invalid("name", &self.name, r))?;
        QueueName::new(&self.queue).map_err(|e| self.invalid("queue", &self.queue, e.to_string()))?;
        if self.kind.is_empty() {
            return Err(self.invalid("kind", "", "must not be empty"));
        }
        if let Some(p) = &self.priority {
            crate::keys::check_name(p).map_err(|r| self.invalid("priority", p, r))?;
        }
        match self.codec.as_str() {
            "json" => {}
            "bytes" if self.payload.is_string() => {}
            "bytes" => {
                return Err(self.invalid(
                    "payload",
                    self.payload.to_string(),
                    "codec bytes takes a string payload",
                ));
            }
            other => return Err(self.invalid("codec", other, "must be json or bytes")),
        }
        if self.misfire_grace_ms < millis(MIN_INTERVAL) {
            return Err(self.invalid(
                "misfire_grace",
                format!("{}ms", self.misfire_grace_ms),
                "must be at least 1s (a scheduler wakes up within a few ms of a fire time, but not always within one)",
            ));
        }
        if self.jitter_ms > millis(MAX_JITTER) {
            return Err(self.invalid("jitter", format!("{}ms", self.jitter_ms), "must be at most 24h"));
        }
        let tz = cadence::parse_timezone(&self.timezone).map_err(|r| self.invalid("timezone", &self.timezone, r))?;
        match (&self.cron, self.every_ms) {
            (Some(expr), None) => {
                let cron = cadence::parse_cron(expr).map_err(|r| self.invalid("cron", expr, r))?;
                let cadence = Cadence::Cron(Box::new(cron), tz);
                // A valid expression that matches no date from now on (30 February, a year
                // that has passed) would never fire.
                if cadence.next_after(crate::envelope::now_ms()).is_none() {
                    return Err(self.invalid("cron", expr, "matches no date from now on: it would never fire"));
                }
                Ok(cadence)
            }
            (None, Some(every)) => {
                if every < millis(MIN_INTERVAL) {
                    return Err(self.invalid("every", format!("{every}ms"), "must be at least 1s"));
                }
                if self.timezone != "UTC" {
                    return Err(self.invalid(
                        "timezone",
                        &self.timezone,
                        "applies to cron expressions only (an interval is the same in every zone)",
                    ));
                }
                if self.jitter_ms >= every {
                    return Err(self.invalid(
                        "jitter",
                        format!("{}ms", self.jitter_ms),
                        format!("must be shorter than the interval ({every}ms)"),
                    ));
                }
                Ok(Cadence::Every(every))
            }
            (Some(_), Some(_)) => Err(self.invalid("every", "", "give a cron expression or an interval, not both")),
            (None, None) => Err(self.invalid("cron", "", "give a cron expression or an interval")),
        }
    }

    /// The next `n` fire times after `after` (ms since the epoch).
    pub fn next_fires(&self, after_ms: u64, n: usize) -> Result<Vec<u64>> {
        Ok(self.validate()?.upcoming(after_ms, n))
    }

    /// `ms` as RFC 3339 in the schedule's time zone (UTC when the zone does not parse).
    pub fn local_time(&self, ms: u64) -> String {
        cadence::render(&cadence::parse_timezone(&self.timezone).unwrap_or(chrono_tz::UTC), ms)
    }

    /// When the schedule fires, for people: the cron expression and zone, or the interval.
    pub fn cadence_text(&self) -> String {
        match (&self.cron, self.every_ms) {
            (Some(expr), _) => format!("cron {expr} ({})", self.timezone),
            (None, Some(ms)) => format!("every {}", fmt_ms(ms)),
            (None, None) => "never".to_owned(),
        }
    }

    fn payload_bytes(&self) -> Bytes {
        match (&self.payload, self.codec.as_str()) {
            (serde_json::Value::String(s), "bytes") => Bytes::from(s.clone().into_bytes()),
            (v, _) => Bytes::from(v.to_string().into_bytes()),
        }
    }

    fn codec(&self) -> Codec {
        Codec::parse(self.codec.as_bytes()).unwrap_or_default()
    }

    /// The task one fire enqueues. A fire time's task has the id `<name>@<fire ms>` and the
    /// same unique key, held for [`UNIQUE_WINDOW`]: every scheduler builds the same task, and
    /// the queue's enqueue script takes it once (the key lives in the task's shard, so the
    /// check and the enqueue are one script on one slot). `None`: a manual run (`run-now`), a
    /// task of its own.
    fn task(&self, fire_ms: Option<u64>) -> Task {
        let mut task = Task::encoded(&self.kind, self.payload_bytes(), self.codec());
        if let Some(p) = &self.priority {
            task = task.priority(p.clone());
        }
        if let Some(fire) = fire_ms {
            let id = fire_id(&self.name, fire);
            task = task.id(id.clone()).unique_key(id).unique_for(UNIQUE_WINDOW);
            if self.jitter_ms > 0 {
                let due = fire + fastrand::u64(..=self.jitter_ms);
                task = task.run_at(SystemTime::UNIX_EPOCH + Duration::from_millis(due));
            }
        }
        task
    }
}

/// The id (and unique key) of a schedule's task for one fire time.
pub fn fire_id(name: &str, fire_ms: u64) -> String {
    format!("{name}@{fire_ms}")
}

fn fmt_ms(ms: u64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

/// A stored schedule and its state.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleInfo {
    /// The definition.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Whether it is paused.
    pub paused: bool,
    /// The last fire time handled (enqueued, or skipped as missed), ms since the epoch; at
    /// first, when it was created.
    pub last_fired_ms: Option<u64>,
    /// The next fire times (none while paused).
    pub next_fires_ms: Vec<u64>,
    /// The same as RFC 3339 times in the schedule's time zone.
    pub next_fires: Vec<String>,
    /// Why the stored definition cannot be used (written by hand or by a newer version);
    /// such a schedule does not fire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What storing or syncing did to one schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// It did not exist and was created.
    Created,
    /// Its definition changed (its last fire time and pause flag were kept).
    Updated,
    /// It was stored with this very definition already.
    Unchanged,
    /// It was removed.
    Removed,
}

impl Change {
    /// The word the CLI prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
            Change::Removed => "removed",
        }
    }
}

/// Stores and manages schedules in Redis. Cheap to clone.
#[derive(Clone)]
pub struct Schedules {
    conn: RedisConnection,
    client: Client,
    clock: Clock,
}

impl std::fmt::Debug for Schedules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedules").finish_non_exhaustive()
    }
}

impl Schedules {
    /// Connects to a parsed target (one node, a Cluster, Sentinel) or an existing
    /// `redis::Client`.
    pub async fn new(target: impl Into<RedisTarget>) -> Result<Self> {
        let target = target.into();
        Ok(Schedules {
            conn: target.connect().await?,
            client: Client::new(target).await?,
            clock: Clock::System,
        })
    }

    fn conn(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// Checks a definition, and its priority against the queue's layout when the queue
    /// exists.
    async fn check(&self, schedule: &Schedule) -> Result<()> {
        schedule.validate()?;
        if let Some(p) = &schedule.priority
            && let Some(queue) = broker::load_queue(&mut self.conn(), &schedule.queue).await?
        {
            queue
                .rank(p)
                .map_err(|e| schedule.invalid("priority", p, e.to_string()))?;
        }
        Ok(())
    }

    /// Adds a schedule; [`Error::ScheduleExists`] if one has its name (see
    /// [`put`](Self::put) to update). It fires from now on: its first fire time is the
    /// first one after now.
    pub async fn add(&self, schedule: &Schedule) -> Result<()> {
        self.check(schedule).await?;
        match self.store(schedule, true).await? {
            PutReply::Exists => Err(Error::ScheduleExists {
                name: schedule.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Creates a schedule or replaces its definition (keeping its last fire time and pause
    /// flag, so an update neither repeats nor loses a fire time).
    pub async fn put(&self, schedule: &Schedule) -> Result<Change> {
        self.check(schedule).await?;
        Ok(match self.store(schedule, false).await? {
            PutReply::Created => Change::Created,
            PutReply::Updated => Change::Updated,
            PutReply::Unchanged | PutReply::Exists => Change::Unchanged,
        })
    }

    async fn store(&self, schedule: &Schedule, add: bool) -> Result<PutReply> {
        let json = serde_json::to_string(schedule).expect("a Schedule of strings, numbers and JSON always serialises");
        broker::schedules::put_schedule(&mut self.conn(), &schedule.name, &json, add, self.clock.now_ms()).await
    }

    /// Every schedule, by name, with its state and next [`SHOWN_FIRES`] fire times.
    pub async fn list(&self) -> Result<Vec<ScheduleInfo>> {
        let stored = broker::schedules::load_schedules(&mut self.conn()).await?;
        let now = self.clock.now_ms();
        let sorted: BTreeMap<&String, &String> = stored.defs.iter().collect();
        Ok(sorted
            .into_iter()
            .map(|(name, json)| info(name, json, &stored, now))
            .collect())
    }

    /// One schedule, or `None`.
    pub async fn get(&self, name: &str) -> Result<Option<ScheduleInfo>> {
        Ok(self.list().await?.into_iter().find(|s| s.schedule.name == name))
    }

    fn missing(name: &str) -> Error {
        Error::NotFound(format!("schedule {name:?}"))
    }

    /// Removes a schedule (definition, state, pause flag); whether it existed. Tasks it
    /// enqueued stay.
    pub async fn remove(&self, name: &str) -> Result<bool> {
        broker::schedules::remove_schedule(&mut self.conn(), name).await
    }

    /// Pauses a schedule: it fires nothing until resumed. Whether it changed (false: it was
    /// paused already); [`Error::NotFound`] when there is no such schedule.
    pub async fn pause(&self, name: &str) -> Result<bool> {
        broker::schedules::pause_schedule(&mut self.conn(), name, true, self.clock.now_ms())
            .await?
            .ok_or_else(|| Self::missing(name))
    }

    /// Resumes a paused schedule. It fires from now on: fire times that fell in the pause are
    /// not run, whatever its missed-fire policy.
    pub async fn resume(&self, name: &str) -> Result<bool> {
        broker::schedules::pause_schedule(&mut self.conn(), name, false, self.clock.now_ms())
            .await?
            .ok_or_else(|| Self::missing(name))
    }

    /// Enqueues one task of the schedule now, outside its fire times (its state is not
    /// touched: the next fire happens as planned); the task's id.
    pub async fn run_now(&self, name: &str) -> Result<TaskId> {
        let info = self.get(name).await?.ok_or_else(|| Self::missing(name))?;
        if let Some(e) = info.error {
            return Err(Error::protocol(format!("schedule {name:?} is stored unusable: {e}")));
        }
        let queue = target_queue(&mut self.conn(), &info.schedule.queue).await?;
        self.client.enqueue(&queue, info.schedule.task(None)).await
    }

    /// Makes the stored schedules exactly `wanted` (a schedules file): each one listed is
    /// created or updated, each stored one not listed is removed. Every definition is checked
    /// first (and two with one name refused), so a bad one changes nothing. Returns what
    /// changed per name, sorted by name; with `dry_run` only says what would.
    pub async fn sync(&self, wanted: &[Schedule], dry_run: bool) -> Result<Vec<(String, Change)>> {
        let mut seen = BTreeMap::new();
        for s in wanted {
            self.check(s).await?;
            if seen.insert(s.name.clone(), s).is_some() {
                return Err(s.invalid("name", &s.name, "is listed twice"));
            }
        }
        let stored = broker::schedules::load_schedules(&mut self.conn()).await?;
        let mut out = Vec::new();
        for (name, s) in &seen {
            let change = if dry_run {
                match stored.defs.get(name) {
                    None => Change::Created,
                    Some(json) if serde_json::from_str::<Schedule>(json).ok().as_ref() == Some(*s) => Change::Unchanged,
                    Some(_) => Change::Updated,
                }
            } else {
                self.put(s).await?
            };
            out.push((name.clone(), change));
        }
        for name in stored.defs.keys().filter(|n| !seen.contains_key(*n)) {
            if !dry_run {
                self.remove(name).await?;
            }
            out.push((name.clone(), Change::Removed));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// One stored schedule's view.
fn info(name: &str, json: &str, stored: &StoredSchedules, now: u64) -> ScheduleInfo {
    let paused = stored.paused.contains(name);
    let last_fired_ms = stored.fired.get(name).copied();
    let parsed = serde_json::from_str::<Schedule>(json).map_err(|e| e.to_string());
    let checked = parsed
        .clone()
        .and_then(|s| s.validate().map(|c| (s, c)).map_err(|e| e.to_string()));
    match checked {
        Ok((schedule, cadence)) => {
            let next_fires_ms = if paused {
                Vec::new()
            } else {
                cadence.upcoming(now.max(last_fired_ms.unwrap_or(0)), SHOWN_FIRES)
            };
            ScheduleInfo {
                next_fires: next_fires_ms.iter().map(|&t| schedule.local_time(t)).collect(),
                next_fires_ms,
                schedule,
                paused,
                last_fired_ms,
                error: None,
            }
        }
        Err(error) => ScheduleInfo {
            schedule: parsed.unwrap_or_else(|_| Schedule::new(name, "", "")),
            paused,
            last_fired_ms,
            next_fires_ms: Vec::new(),
            next_fires: Vec::new(),
            error: Some(error),
        },
    }
}

/// The queue a schedule's tasks go to: its recorded layout, or the default for a new queue.
async fn target_queue(conn: &mut RedisConnection, name: &str) -> Result<Queue> {
    match broker::load_queue(conn, name).await? {
        Some(q) => Ok(q),
        None => Queue::new(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_definitions_are_refused_naming_the_field_the_text_and_why() {
        let cases = [
            (Schedule::cron("a", "q", "k", "61 * * * *"), "cron", "61 * * * *"),
            (Schedule::cron("a", "q", "k", "0 0 30 2 *"), "cron", "0 0 30 2 *"),
            (
                Schedule::cron("a", "q", "k", "0 0 0 1 1 * 2020"),
                "cron",
                "0 0 0 1 1 * 2020",
            ),
            (
                Schedule::cron("a", "q", "k", "* * * * *").timezone("Mars/Olympus"),
                "timezone",
                "Mars/Olympus",
            ),
            (
                Schedule::every("a", "q", "k", Duration::from_millis(500)),
                "every",
                "500ms",
            ),
            (
                Schedule::every("a", "q", "k", Duration::from_secs(60)).timezone("Europe/Berlin"),
                "timezone",
                "Europe/Berlin",
            ),
            (
                Schedule::every("a", "q", "k", Duration::from_secs(10)).jitter(Duration::from_secs(10)),
                "jitter",
                "10000ms",
            ),
            (Schedule::cron("bad name", "q", "k", "* * * * *"), "name", "bad name"),
            (Schedule::cron("a", "q{x}", "k", "* * * * *"), "queue", "q{x}"),
            (Schedule::cron("a", "q", "", "* * * * *"), "kind", ""),
            (
                Schedule::cron("a", "q", "k", "* * * * *").misfire_grace(Duration::ZERO),
                "misfire_grace",
                "0ms",
            ),
        ];
        for (schedule, field, value) in cases {
            match schedule.validate() {
                Err(Error::InvalidSchedule {
                    field: f,
                    value: v,
                    reason,
                    ..
                }) => {
                    assert_eq!((f, v.as_str()), (field, value), "{schedule:?}: {reason}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{schedule:?} gave {other:?}"),
            }
        }
        let mut bytes = Schedule::cron("a", "q", "k", "* * * * *");
        bytes.codec = "bytes".into();
        bytes.payload = serde_json::json!({"a": 1});
        assert!(matches!(
            bytes.validate(),
            Err(Error::InvalidSchedule { field: "payload", .. })
        ));
        let mut neither = Schedule::cron("a", "q", "k", "* * * * *");
        neither.cron = None;
        assert!(neither.validate().is_err());
    }

    #[test]
    fn a_definition_round_trips_through_its_stored_json_and_unknown_fields_are_refused() {
        let s = Schedule::cron("nightly", "research", "refresh", "0 30 2 * * *")
            .timezone("Europe/Berlin")
            .payload(serde_json::json!({"universe": "all"}))
            .priority("high")
            .jitter(Duration::from_secs(30))
            .missed(Missed::RunOnce);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
        assert!(json.contains(r#""missed":"run-once""#), "{json}");
        let typo = json.replace("\"jitter_ms\"", "\"jiter_ms\"");
        assert!(serde_json::from_str::<Schedule>(&typo).is_err());
    }

    #[test]
    fn a_fire_times_task_has_the_same_id_and_unique_key_in_every_scheduler() {
        let s = Schedule::every("stats", "ops", "record", Duration::from_secs(60));
        let a = s.task(Some(120_000));
        let b = s.task(Some(120_000));
        assert_eq!(a.task_id().as_str(), "stats@120000");
        assert_eq!(a.task_id(), b.task_id());
        assert_ne!(s.task(None).task_id(), a.task_id(), "a manual run is a task of its own");
    }
}
