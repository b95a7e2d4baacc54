//! The fleet supervisor: keeps a settable number of worker processes running.
//!
//! - **Target**: [`FleetHandle::set_target`] / [`FleetHandle::scale_to`] move the number of
//!   slots. A new slot starts its child at once. A slot too many is retired: one whose child
//!   is waiting to restart goes first, then one whose child is idle (the caller names idle
//!   pids), then the youngest; its child gets SIGTERM (it drains) and the slot goes when the
//!   child has exited.
//! - **Restart**: a child that crashes is restarted after [`policy::restart_delay`], doubling
//!   with each consecutive crash of its slot up to [`policy::restart_cap`] (so the guard below
//!   can trip with one slot); a child that ran for [`policy::STABLE_AFTER`] starts the count
//!   over. A child that exits [`EXIT_OUTAGE`](crate::contract::EXIT_OUTAGE) (Redis is away) is
//!   restarted after [`policy::outage_delay`] and is no crash.
//! - **Crash-loop guard**: more than `crash_limit` crashes within `crash_window` (all slots
//!   together) means something is wrong that restarting will not fix: the fleet drains the
//!   rest and fails with [`FleetError::CrashLoop`].
//! - **Recycling**: a child that exits 0 on its own (it reached `--max-tasks`) is replaced at
//!   once; a child above `max_memory` gets SIGTERM and is replaced when it has exited. A child
//!   above the limit within [`FRESH_CHILD`] of starting gets a warning (once) that the limit
//!   looks too low.
//! - **Deadline**: a child asked to stop gets `stop_timeout`, then SIGKILL.
//! - **Stopping**: [`Stop::drain`] sends SIGTERM to every child and waits for them (each to its
//!   deadline; one SIGKILLed there makes the run fail with [`FleetError::StopDeadline`]);
//!   [`Stop::now`] SIGKILLs every child at once.
//! - **Children**: each in its own process group, with the [`contract`](crate::contract)'s
//!   environment; signals go to the child's group, and a child killed by a signal has what
//!   is left of its group SIGKILLed when it is reaped.
//!
//! Run it on a current-thread runtime, from the thread that lives as long as the process:
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so children must
//! never be spawned from a pool thread that may retire.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::contract::{SLOT_ENV, SUPERVISOR_PID_ENV};
use crate::memory::{format_size, resident_bytes};
use crate::policy::{self, CrashGuard, Exit, STABLE_AFTER};
use crate::signals::Stop;

/// How often resident memory is checked when `max_memory` is set.
pub const MEMORY_CHECK: Duration = Duration::from_secs(1);
/// A child above `max_memory` this soon after it started probably needs more than the limit
/// before it does any work: the supervisor warns (once) that the limit looks too low, since it
/// would otherwise recycle every child about once a second, forever, without a word.
pub const FRESH_CHILD: Duration = Duration::from_secs(3);

/// What the fleet runs and how it treats its children. Every field is data; see
/// [`FleetConfig::new`] for the defaults.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The program each child runs.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Environment set for each child (a Redis URL travels here, not in argv, so a password
    /// in it does not show in `ps`).
    pub env: Vec<(OsString, OsString)>,
    /// How logs name the command (e.g. with a password redacted).
    pub shown: String,
    /// Time a child asked to stop gets before SIGKILL.
    pub stop_timeout: Duration,
    /// Crash-loop guard: most crashes within `crash_window`.
    pub crash_limit: u32,
    /// Crash-loop guard window.
    pub crash_window: Duration,
    /// Recycle a child above this resident memory, in bytes.
    pub max_memory: Option<u64>,
    /// Children die with this process (they get [`SUPERVISOR_PID_ENV`]) and are killed if the
    /// fleet is dropped. False: they outlive it (`autoscaler --leave-workers`).
    pub die_with_parent: bool,
}

impl FleetConfig {
    /// `program args...` with the default crash-loop guard, no memory limit, a 30 s stop
    /// timeout, and children that die with this process.
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>) -> Self {
        let program = program.into();
        FleetConfig {
            shown: program.display().to_string(),
            program,
            args,
            env: Vec::new(),
            stop_timeout: Duration::from_secs(30),
            crash_limit: policy::DEFAULT_CRASH_LIMIT,
            crash_window: policy::DEFAULT_CRASH_WINDOW,
            max_memory: None,
            die_with_parent: true,
        }
    }
}

/// Why a fleet stopped other than by a clean drain.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// Too many crashes within the window: restarting will not fix it.
    #[error(
        "crash loop: worker processes crashed {crashes} times within {window} (last: slot {slot}, pid {pid}, {status}); \
         giving up. Their logs above say why; common causes are a handler that crashes the process or a Redis that \
         rejects the worker",
        window = humantime::format_duration(*window)
    )]
    CrashLoop {
        /// Crashes within the window.
        crashes: usize,
        /// The window.
        window: Duration,
        /// The last crash's slot.
        slot: usize,
        /// The last crash's pid.
        pid: u32,
        /// The last crash's exit, in words.
        status: String,
    },
    /// Children that did not stop within the stop timeout of the drain were killed.
    #[error(
        "{killed} worker process(es) did not stop within {timeout}; killed them (their unfinished tasks run again \
         after the lease)",
        timeout = humantime::format_duration(*timeout)
    )]
    StopDeadline {
        /// Children killed.
        killed: usize,
        /// The stop timeout.
        timeout: Duration,
    },
    /// [`Stop::now`]: every child was killed.
    #[error("stopped at once: worker processes were killed (their unfinished tasks run again after the lease)")]
    StoppedAtOnce,
    /// A child's watcher task failed (a bug).
    #[error("a child watcher failed: {0}")]
    Watcher(String),
}

/// What the fleet did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetReport {
    /// Children started, first starts included.
    pub started: u64,
    /// Children that crashed.
    pub crashed: u64,
    /// Children replaced after a clean exit or above the memory limit.
    pub recycled: u64,
    /// Children restarted after they exited because Redis was away (not crashes).
    pub outages: u64,
}

/// The fleet as it is now, published after every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetStatus {
    /// The target size.
    pub target: u32,
    /// Slots whose child runs and is not being stopped.
    pub running: u32,
    /// Children asked to stop that have not exited yet.
    pub stopping: u32,
    /// Pids of the running children (not the stopping ones).
    pub pids: Vec<u32>,
    /// Counts so far.
    pub report: FleetReport,
}

#[derive(Debug, Clone, Default)]
struct Target {
    size: u32,
    idle: Vec<u32>,
}

/// Moves a running [`Fleet`]'s target and reads its status. Dropping it leaves the target
/// where it was.
#[derive(Debug)]
pub struct FleetHandle {
    target: watch::Sender<Target>,
    status: watch::Receiver<FleetStatus>,
}

impl FleetHandle {
    /// Keeps `size` children running.
    pub fn set_target(&self, size: u32) {
        self.scale_to(size, &[]);
    }

    /// Keeps `size` children running; when that stops some, the ones in `idle` (known to hold
    /// no task) go first.
    pub fn scale_to(&self, size: u32, idle: &[u32]) {
        self.target.send_replace(Target {
            size,
            idle: idle.to_vec(),
        });
    }

    /// The fleet now.
    pub fn status(&self) -> FleetStatus {
        self.status.borrow().clone()
    }

    /// Waits until `check` holds for the status (or the fleet is gone; then returns the last).
    pub async fn wait_for(&mut self, check: impl FnMut(&FleetStatus) -> bool) -> FleetStatus {
        let seen = self.status.wait_for(check).await.map(|s| s.clone());
        seen.unwrap_or_else(|_| self.status.borrow().clone())
    }
}

/// One child process, as the supervisor sees it.
#[derive(Debug)]
struct Running {
    pid: u32,
    started: Instant,
    /// Signals for the task that owns (and reaps) the child: sending through it means a
    /// signal can never reach a reused pid.
    signals: mpsc::UnboundedSender<Signal>,
    /// Asked to stop (SIGTERM): its exit is then no crash.
    asked: bool,
    /// SIGKILL at this time (set with `asked`, cleared once the kill is sent).
    kill_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Slot {
    running: Option<Running>,
    /// When to start the next child, while none runs.
    start_at: Option<Instant>,
    /// Crashes in a row (reset by a child that ran for `STABLE_AFTER`).
    crashes_in_a_row: u32,
    /// Outage exits in a row (reset by any other exit).
    outages_in_a_row: u32,
    /// Removed when its child has exited (scale-down), not restarted.
    retiring: bool,
}

type Children = JoinSet<(usize, io::Result<ExitStatus>)>;

/// Keeps worker processes running; see the module docs.
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    target: watch::Receiver<Target>,
    status: watch::Sender<FleetStatus>,
    slots: BTreeMap<usize, Slot>,
    children: Children,
    report: FleetReport,
    warned_low_memory: bool,
    /// The longest restart delay after a crash ([`policy::restart_cap`] of the guard).
    restart_cap: Duration,
}

impl Fleet {
    /// A fleet of `size` children (started by [`run`](Self::run)) and the handle that moves it.
    pub fn new(config: FleetConfig, size: u32) -> (Fleet, FleetHandle) {
        let (target_tx, target) = watch::channel(Target { size, idle: Vec::new() });
        let (status, status_rx) = watch::channel(FleetStatus {
            target: size,
            ..FleetStatus::default()
        });
        let (config_limit, config_window) = (config.crash_limit, config.crash_window);
        let fleet = Fleet {
            target,
            status,
            slots: BTreeMap::new(),
            children: JoinSet::new(),
            report: FleetReport::default(),
            warned_low_memory: false,
            restart_cap: policy::restart_cap(config_limit, config_window),
            config,
        };
        (
            fleet,
            FleetHandle {
                target: target_tx,
                status: status_rx,
            },
        )
    }

    /// Runs until `stop` says otherwise or the crash-loop guard trips. Ok after a drain in
    /// which every child exited in time; an error otherwise.
    pub async fn run(mut self, stop: Stop) -> Result<FleetReport, FleetError> {
        let mut guard = CrashGuard::new(self.config.crash_limit, self.config.crash_window);
        let mut memory = tokio::time::interval(MEMORY_CHECK);
        memory.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Winding down: no more starts; the loop ends when the last child has exited.
        let mut ending = false;
        let mut failure: Option<FleetError> = None;
        let mut killed_all = false;
        let mut target_open = true;
        tracing::info!(
            workers = self.target.borrow().size,
            program = %self.config.shown,
            "supervisor started"
        );
        self.reconcile();

        loop {
            self.publish();
            if ending && self.children.is_empty() {
                break;
            }
            let next_start = self
                .slots
                .values()
                .filter(|s| s.running.is_none() && !s.retiring)
                .filter_map(|s| s.start_at)
                .min();
            let next_kill = self.slots.values().filter_map(|s| s.running.as_ref()?.kill_at).min();
            tokio::select! {
                () = stop.now.cancelled(), if !killed_all => {
                    killed_all = true;
                    ending = true;
                    let n = self.signal_all(Signal::SIGKILL);
                    tracing::warn!(children = n, "killing every worker process");
                }
                () = stop.drain.cancelled(), if !ending => {
                    ending = true;
                    self.begin_drain();
                }
                changed = self.target.changed(), if target_open && !ending => {
                    match changed {
                        Ok(()) => self.reconcile(),
                        // The handle is gone: the target stays where it was.
                        Err(_) => target_open = false,
                    }
                }
                () = sleep_until(next_kill), if next_kill.is_some() && !killed_all => {
                    let killed = self.kill_overdue();
                    if ending && killed > 0 {
                        tracing::error!(killed, stop_timeout_ms = self.config.stop_timeout.as_millis() as u64, "worker processes did not stop in time");
                        match &mut failure {
                            Some(FleetError::StopDeadline { killed: k, .. }) => *k += killed,
                            // A crash loop that began the drain stays the reason.
                            Some(_) => {}
                            None => failure = Some(FleetError::StopDeadline { killed, timeout: self.config.stop_timeout }),
                        }
                    }
                }
                Some(joined) = self.children.join_next() => {
                    let (i, status) = joined.map_err(|e| FleetError::Watcher(e.to_string()))?;
                    if let Some(e) = self.exited(i, status, ending, &mut guard) {
                        failure = Some(e);
                        ending = true;
                        self.begin_drain();
                    }
                }
                () = sleep_until(next_start), if next_start.is_some() && !ending => {
                    let now = Instant::now();
                    let due: Vec<usize> = self
                        .slots
                        .iter()
                        .filter(|(_, s)| s.running.is_none() && !s.retiring && s.start_at.is_some_and(|t| t <= now))
                        .map(|(i, _)| *i)
                        .collect();
                    for i in due {
                        self.start(i);
                    }
                }
                _ = memory.tick(), if self.config.max_memory.is_some() && !ending => self.check_memory(),
            }
        }
        self.publish();

        if let Some(e) = failure {
            return Err(e);
        }
        if killed_all {
            return Err(FleetError::StoppedAtOnce);
        }
        tracing::info!(
            started = self.report.started,
            crashed = self.report.crashed,
            recycled = self.report.recycled,
            "supervisor stopped"
        );
        Ok(self.report)
    }

    /// Slots that count towards the target.
    fn active(&self) -> usize {
        self.slots.values().filter(|s| !s.retiring).count()
    }

    /// Adds or retires slots to meet the target.
    fn reconcile(&mut self) {
        let Target { size, idle } = self.target.borrow_and_update().clone();
        let size = size as usize;
        while self.active() < size {
            let i = (0..)
                .find(|i| !self.slots.contains_key(i))
                .expect("fewer slots than usize::MAX");
            self.slots.insert(i, Slot::default());
            self.start(i);
        }
        while self.active() > size {
            let active = || self.slots.iter().filter(|(_, s)| !s.retiring);
            // A slot waiting to restart holds no work; then an idle child; then the youngest.
            let pick = active()
                .find(|(_, s)| s.running.is_none())
                .or_else(|| active().find(|(_, s)| s.running.as_ref().is_some_and(|r| idle.contains(&r.pid))))
                .or_else(|| active().max_by_key(|(_, s)| s.running.as_ref().map(|r| r.started)))
                .map(|(i, _)| *i)
                .expect("more active slots than the target, so at least one");
            self.retire(pick);
        }
    }

    /// Stops a slot for good: its child drains, then the slot goes.
    fn retire(&mut self, i: usize) {
        let stop_timeout = self.config.stop_timeout;
        let Some(slot) = self.slots.get_mut(&i) else { return };
        match &mut slot.running {
            None => {
                self.slots.remove(&i);
            }
            Some(ran) => {
                slot.retiring = true;
                tracing::info!(
                    slot = i,
                    pid = ran.pid,
                    "stopping worker process (SIGTERM: it drains its in-flight tasks)"
                );
                ask_to_stop(ran, stop_timeout);
            }
        }
    }

    /// SIGTERM to every child, each with its deadline.
    fn begin_drain(&mut self) {
        let stop_timeout = self.config.stop_timeout;
        let mut n = 0;
        for slot in self.slots.values_mut() {
            if let Some(ran) = &mut slot.running
                && !ran.asked
            {
                ask_to_stop(ran, stop_timeout);
                n += 1;
            }
        }
        // "draining" itself was logged once, by whoever asked for the drain (the signal handler).
        tracing::info!(
            children = n,
            stop_timeout_ms = stop_timeout.as_millis() as u64,
            "asked the worker processes to stop"
        );
    }

    /// SIGKILLs children past their deadline; returns how many.
    fn kill_overdue(&mut self) -> usize {
        let now = Instant::now();
        let mut killed = 0;
        for (i, slot) in &mut self.slots {
            if let Some(ran) = &mut slot.running
                && ran.kill_at.is_some_and(|t| t <= now)
            {
                tracing::error!(
                    slot = i,
                    pid = ran.pid,
                    "worker process did not stop in time; killing it"
                );
                let _ = ran.signals.send(Signal::SIGKILL);
                // Killed once: the watcher reaps it.
                ran.kill_at = None;
                killed += 1;
            }
        }
        killed
    }

    fn signal_all(&self, sig: Signal) -> usize {
        self.slots
            .values()
            .filter_map(|s| s.running.as_ref())
            .filter(|r| r.signals.send(sig).is_ok())
            .count()
    }

    /// A child exited: forget, replace or restart it. Returns the error that ends the run
    /// when the crash-loop guard trips.
    fn exited(
        &mut self,
        i: usize,
        status: io::Result<ExitStatus>,
        ending: bool,
        guard: &mut CrashGuard,
    ) -> Option<FleetError> {
        let slot = self.slots.get_mut(&i)?;
        let ran = slot.running.take()?;
        let lived = ran.started.elapsed();
        let status_text = describe_exit(&status);
        if ending || slot.retiring {
            tracing::info!(slot = i, pid = ran.pid, status = %status_text, "worker process stopped");
            self.slots.remove(&i);
            return None;
        }
        let meaning = Exit::of(status.ok(), ran.asked);
        if meaning != Exit::Outage {
            slot.outages_in_a_row = 0;
        }
        match meaning {
            Exit::Outage => {
                self.report.outages += 1;
                slot.outages_in_a_row += 1;
                let delay = policy::outage_delay(slot.outages_in_a_row, fastrand::f64());
                slot.start_at = Some(Instant::now() + delay);
                tracing::warn!(
                    slot = i, pid = ran.pid, status = %status_text, restart_in = ?delay,
                    "worker process could not reach Redis (an outage, not a crash); restarting"
                );
                None
            }
            Exit::Recycle => {
                self.report.recycled += 1;
                tracing::info!(slot = i, pid = ran.pid, status = %status_text, "worker process recycled; replacing it");
                self.start(i);
                None
            }
            Exit::Crash => {
                self.report.crashed += 1;
                let now = Instant::now();
                if let Some(crashes) = guard.record(now) {
                    let e = FleetError::CrashLoop {
                        crashes,
                        window: guard.window(),
                        slot: i,
                        pid: ran.pid,
                        status: status_text,
                    };
                    tracing::error!("{e}");
                    return Some(e);
                }
                slot.crashes_in_a_row = if lived >= STABLE_AFTER {
                    1
                } else {
                    slot.crashes_in_a_row + 1
                };
                let delay = policy::restart_delay(slot.crashes_in_a_row, fastrand::f64(), self.restart_cap);
                slot.start_at = Some(now + delay);
                tracing::warn!(
                    slot = i, pid = ran.pid, status = %status_text, lived_ms = lived.as_millis() as u64,
                    restart_in_ms = delay.as_millis() as u64,
                    "worker process crashed; restarting"
                );
                None
            }
        }
    }

    /// Starts a child in slot `i`; a failure to start counts like a crash of the slot.
    fn start(&mut self, i: usize) {
        let c = &self.config;
        let Some(slot) = self.slots.get_mut(&i) else { return };
        slot.start_at = None;
        let mut cmd = tokio::process::Command::new(&c.program);
        // The log format this process logs in goes down to its children (and theirs: an
        // `--exec` command sees it too), so one JSON log stays one JSON log; the fleet's own
        // `env` comes after and wins.
        if let Some(format) = crate::logging::installed_format() {
            cmd.env(crate::logging::LOG_FORMAT_ENV, format.as_flag());
        }
        cmd.args(&c.args)
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .env(SLOT_ENV, i.to_string())
            .stdin(Stdio::null())
            // Its own process group: signals for the supervisor's group (Ctrl-C, `timeout`)
            // do not reach it; the supervisor drains it instead.
            .process_group(0)
            // A child whose watcher is dropped (the supervisor is going away) must not linger,
            // unless it is meant to outlive the supervisor.
            .kill_on_drop(c.die_with_parent);
        if c.die_with_parent {
            cmd.env(SUPERVISOR_PID_ENV, std::process::id().to_string());
        } else {
            cmd.env_remove(SUPERVISOR_PID_ENV);
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                let (tx, mut rx) = mpsc::unbounded_channel::<Signal>();
                self.children.spawn(async move {
                    loop {
                        tokio::select! {
                            status = child.wait() => {
                                // A child killed by a signal (SIGKILL, the OOM killer) left
                                // whatever it started in its group behind: take it down with it.
                                // Its `--exec` commands lead groups of their own and die through
                                // their guard. The group's number cannot name another group
                                // while any of its members lives.
                                if status.as_ref().is_ok_and(|s| s.signal().is_some()) {
                                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                                }
                                return (i, status);
                            }
                            Some(sig) = rx.recv() => {
                                // The child is not reaped until `wait` returns in this task, so
                                // `pid` still names it (running or zombie).
                                if let Err(e) = signal_group(pid, sig) {
                                    tracing::debug!(pid, error = %e, "signal not delivered");
                                }
                            }
                        }
                    }
                });
                self.report.started += 1;
                tracing::info!(slot = i, pid, "worker process started");
                slot.running = Some(Running {
                    pid,
                    started: Instant::now(),
                    signals: tx,
                    asked: false,
                    kill_at: None,
                });
            }
            Err(e) => {
                slot.crashes_in_a_row += 1;
                let delay = policy::restart_delay(slot.crashes_in_a_row, fastrand::f64(), self.restart_cap);
                tracing::error!(
                    slot = i, program = %c.shown, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "cannot start a worker process"
                );
                slot.start_at = Some(Instant::now() + delay);
            }
        }
    }

    fn check_memory(&mut self) {
        let Some(limit) = self.config.max_memory else { return };
        let stop_timeout = self.config.stop_timeout;
        for (i, slot) in &mut self.slots {
            let Some(ran) = slot.running.as_mut() else { continue };
            if ran.asked {
                continue;
            }
            if let Some(rss) = resident_bytes(ran.pid)
                && rss > limit
            {
                tracing::info!(
                    slot = i, pid = ran.pid, rss = %format_size(rss), limit = %format_size(limit),
                    "worker process above --max-memory; draining it to replace it"
                );
                ask_to_stop(ran, stop_timeout);
                let lived = ran.started.elapsed();
                if !self.warned_low_memory && lived < FRESH_CHILD {
                    self.warned_low_memory = true;
                    tracing::warn!(
                        slot = i, pid = ran.pid, rss = %format_size(rss), limit = %format_size(limit), lived_ms = lived.as_millis() as u64,
                        "{}", low_memory_warning(rss, limit, lived)
                    );
                }
            }
        }
    }

    fn publish(&self) {
        let target = self.target.borrow().size;
        let mut running = Vec::new();
        let mut stopping = 0;
        for slot in self.slots.values() {
            match &slot.running {
                Some(r) if !r.asked && !slot.retiring => running.push(r.pid),
                Some(_) => stopping += 1,
                None => {}
            }
        }
        self.status.send_replace(FleetStatus {
            target,
            running: running.len() as u32,
            stopping,
            pids: running,
            report: self.report,
        });
    }
}

/// SIGTERM now, SIGKILL at `now + timeout`.
fn ask_to_stop(ran: &mut Running, timeout: Duration) {
    let _ = ran.signals.send(Signal::SIGTERM);
    ran.asked = true;
    ran.kill_at = Some(Instant::now() + timeout);
}

/// Signals a child's process group (it leads one), or only the child if that group is gone.
fn signal_group(pid: u32, sig: Signal) -> nix::Result<()> {
    let pid = Pid::from_raw(pid as i32);
    match killpg(pid, sig) {
        Err(Errno::ESRCH) => kill(pid, sig),
        r => r,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// An exit status in words, with what the shell's 126 and 127 mean.
pub fn describe_exit(status: &io::Result<ExitStatus>) -> String {
    let status = match status {
        Ok(s) => *s,
        Err(e) => return format!("unknown exit ({e})"),
    };
    match (status.code(), status.signal()) {
        (Some(127), _) => "exit status 127: command not found (is it installed and on PATH?)".to_owned(),
        (Some(126), _) => "exit status 126: command found but not executable (permissions?)".to_owned(),
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {sig} ({s})"),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => status.to_string(),
    }
}

/// The warning for a child above `--max-memory` right after it started (pure).
pub fn low_memory_warning(rss: u64, limit: u64, lived: Duration) -> String {
    format!(
        "--max-memory {} looks too low: a worker process used {} only {}ms after it started. If an idle \
         worker process needs that much, every worker process will be recycled about once a second, \
         forever; raise --max-memory well above it (this warning is not repeated)",
        format_size(limit),
        format_size(rss),
        lived.as_millis(),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn the_low_memory_warning_names_the_limit_and_the_size_seen() {
        let w = low_memory_warning(12 << 20, 1 << 20, Duration::from_millis(900));
        assert!(
            w.contains("--max-memory 1.0 MiB looks too low") && w.contains("12.0 MiB only 900ms after"),
            "{w}"
        );
    }

    #[test]
    fn exit_statuses_are_described_with_the_shell_conventions() {
        let exit = |code: i32| Ok(ExitStatus::from_raw(code << 8));
        assert!(describe_exit(&exit(127)).contains("command not found"));
        assert!(describe_exit(&exit(126)).contains("not executable"));
        assert_eq!(describe_exit(&exit(3)), "exit status 3");
        assert_eq!(
            describe_exit(&Ok(ExitStatus::from_raw(9))),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
