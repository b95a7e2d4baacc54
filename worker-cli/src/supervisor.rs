//! The supervisor: keeps `workers` worker processes (`<this program> work ...`) running.
//!
//! - **Restart**: a child that crashes (non-zero exit, killed by a signal) is restarted after a
//!   backoff that doubles with each consecutive crash of its slot ([`RESTART_BASE`] up to
//!   [`RESTART_CAP`], jittered); a child that ran for [`STABLE_AFTER`] resets its slot's count.
//! - **Crash-loop guard**: more than `crash_limit` crashes within `crash_window` (all slots
//!   together) means something is wrong that restarting will not fix: the supervisor drains
//!   the rest and fails.
//! - **Recycling**: a child that exits 0 on its own reached `--max-tasks` and is replaced at
//!   once; a child whose resident memory exceeds `--max-memory` is sent SIGTERM (it drains) and
//!   replaced when it has exited. A child above the limit within [`FRESH_CHILD`] of starting
//!   gets a warning (once per supervisor) that the limit looks too low.
//! - **Stopping**: [`Stop::drain`] sends SIGTERM to every child and waits up to the drain
//!   timeout plus [`DRAIN_GRACE`], then SIGKILLs stragglers; [`Stop::now`] SIGKILLs every child.
//! - **No orphans**: each child asks the kernel for SIGKILL when its parent dies
//!   (`PR_SET_PDEATHSIG`, set by the child itself at start; see `work`) and also checks that its
//!   parent is still this supervisor.
//!
//! Children run in their own process group, so a terminal's Ctrl-C reaches only the supervisor,
//! which then decides (drain first, kill on a second signal).
//!
//! Run it on a current-thread runtime: `PR_SET_PDEATHSIG` fires when the *thread* that forked
//! the child exits, so children must be spawned from a thread that lives as long as the
//! supervisor (the runtime's only thread), never from a pool thread that may retire.

use std::collections::VecDeque;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::settings::{SupervisorSettings, format_size};
use crate::work::{SLOT_ENV, SUPERVISOR_PID_ENV};

/// First restart delay after a crash.
pub const RESTART_BASE: Duration = Duration::from_millis(250);
/// Longest restart delay.
pub const RESTART_CAP: Duration = Duration::from_secs(30);
/// A child that ran this long before crashing starts its slot's backoff over.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Time children get on top of their drain timeout to requeue, deregister and exit.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How often resident memory is checked when `--max-memory` is set.
pub const MEMORY_CHECK: Duration = Duration::from_secs(1);
/// A child above `--max-memory` this soon after it started probably needs more than the limit
/// before it does any work: the supervisor warns (once) that the limit looks too low, since
/// it would otherwise recycle every child about once a second, forever, without a word.
pub const FRESH_CHILD: Duration = Duration::from_secs(3);

/// How the supervisor is told to stop. Cancel `drain` for a graceful stop, `now` to kill every
/// child at once (a second Ctrl-C).
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Drain every child, then return.
    pub drain: CancellationToken,
    /// SIGKILL every child, then return.
    pub now: CancellationToken,
}

impl Stop {
    /// Tokens not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps SIGTERM/SIGINT onto the tokens until both are cancelled: the first signal drains,
    /// the second stops at once. Registers the handlers before returning, so no signal is
    /// missed (or left to its default action) once this has been called.
    pub fn on_signals(&self, tasks: &mut JoinSet<()>) -> io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = self.clone();
        tasks.spawn(async move {
            for first in [true, false] {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                // Act first, log second: nothing may stand between a signal and its effect.
                if first {
                    stop.drain.cancel();
                    tracing::info!(signal = name, "draining (send it again to stop at once)");
                } else {
                    stop.now.cancel();
                    tracing::warn!(signal = name, "second signal: stopping at once");
                }
            }
        });
        Ok(())
    }
}

/// What the supervisor did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SupervisorReport {
    /// Children started, first starts included.
    pub started: u64,
    /// Children that crashed.
    pub crashed: u64,
    /// Children replaced after `--max-tasks` or `--max-memory`.
    pub recycled: u64,
}

/// Keeps worker processes running; see the module docs.
#[derive(Debug)]
pub struct Supervisor {
    settings: SupervisorSettings,
}

/// One child process, as the supervisor sees it.
#[derive(Debug)]
struct Running {
    pid: u32,
    started: Instant,
    /// Signals for the task that owns (and reaps) the child: sending through it means a
    /// signal can never reach a reused pid.
    signals: mpsc::UnboundedSender<Signal>,
    /// Sent SIGTERM for using too much memory.
    recycling: bool,
}

#[derive(Debug, Default)]
struct Slot {
    running: Option<Running>,
    /// When to start the next child, while none runs.
    start_at: Option<Instant>,
    /// Crashes in a row (reset by a child that ran for `STABLE_AFTER`).
    crashes_in_a_row: u32,
}

impl Supervisor {
    /// A supervisor with resolved settings.
    pub fn new(settings: SupervisorSettings) -> Self {
        Supervisor { settings }
    }

    /// Runs until `stop` says otherwise or the crash-loop guard trips. Ok after a drain in
    /// which every child exited in time; an error otherwise (naming what happened).
    pub async fn run(self, stop: Stop) -> Result<SupervisorReport> {
        let s = &self.settings;
        let mut report = SupervisorReport::default();
        let mut slots: Vec<Slot> = (0..s.workers).map(|_| Slot::default()).collect();
        let mut children: JoinSet<(usize, io::Result<ExitStatus>)> = JoinSet::new();
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        let mut memory = tokio::time::interval(MEMORY_CHECK);
        memory.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Winding down: no more starts; the loop ends when the last child has exited.
        let mut ending = false;
        // Why the run fails, once it is known to (crash loop, drain deadline missed).
        let mut failure: Option<anyhow::Error> = None;
        let mut drain_deadline: Option<Instant> = None;
        let mut killed = false;
        // Whether the "--max-memory looks too low" warning has been given.
        let mut warned_low_memory = false;
        tracing::info!(workers = s.workers, program = %s.program.display(), "supervisor started");

        for (i, slot) in slots.iter_mut().enumerate() {
            self.start(i, slot, &mut children, &mut report);
        }

        loop {
            if ending && children.is_empty() {
                break;
            }
            let next_start = slots
                .iter()
                .filter(|s| s.running.is_none())
                .filter_map(|s| s.start_at)
                .min();
            tokio::select! {
                () = stop.now.cancelled(), if !killed => {
                    killed = true;
                    let n = signal_all(&slots, Signal::SIGKILL);
                    tracing::warn!(children = n, "killing every worker process");
                    ending = true;
                }
                () = stop.drain.cancelled(), if !ending => {
                    ending = true;
                    drain_deadline = Some(self.begin_drain(&slots));
                }
                () = sleep_until(drain_deadline), if drain_deadline.is_some() && !killed => {
                    killed = true;
                    let n = signal_all(&slots, Signal::SIGKILL);
                    let msg = anyhow!(
                        "{n} worker process(es) did not stop within the drain timeout ({}) plus {}; killed them \
                         (their unfinished tasks run again after the lease)",
                        humantime::format_duration(s.drain_timeout),
                        humantime::format_duration(DRAIN_GRACE),
                    );
                    tracing::error!("{msg}");
                    failure = Some(match failure.take() {
                        Some(e) => e.context(msg.to_string()),
                        None => msg,
                    });
                }
                Some(joined) = children.join_next() => {
                    let (i, status) = joined.map_err(|e| anyhow!("a child watcher failed: {e}"))?;
                    let slot = &mut slots[i];
                    let Some(ran) = slot.running.take() else { continue };
                    let lived = ran.started.elapsed();
                    let status_text = describe(&status);
                    if ending {
                        tracing::info!(slot = i, pid = ran.pid, status = %status_text, "worker process stopped");
                        continue;
                    }
                    let clean = matches!(&status, Ok(st) if st.success());
                    if clean || ran.recycling {
                        report.recycled += 1;
                        tracing::info!(slot = i, pid = ran.pid, status = %status_text, "worker process recycled; replacing it");
                        self.start(i, slot, &mut children, &mut report);
                        continue;
                    }
                    report.crashed += 1;
                    let now = Instant::now();
                    crashes.push_back(now);
                    while crashes.front().is_some_and(|t| now.duration_since(*t) > s.crash_window) {
                        crashes.pop_front();
                    }
                    if crashes.len() > s.crash_limit as usize {
                        let e = anyhow!(
                            "crash loop: worker processes crashed {} times within {} (last: slot {i}, pid {}, {status_text}); \
                             giving up. Their logs above say why; common causes are a handler that crashes the \
                             process or a Redis that rejects the worker",
                            crashes.len(),
                            humantime::format_duration(s.crash_window),
                            ran.pid,
                        );
                        tracing::error!("{e:#}");
                        failure = Some(e);
                        ending = true;
                        drain_deadline = Some(self.begin_drain(&slots));
                        continue;
                    }
                    slot.crashes_in_a_row = if lived >= STABLE_AFTER { 1 } else { slot.crashes_in_a_row + 1 };
                    let delay = restart_delay(slot.crashes_in_a_row, fastrand::f64());
                    slot.start_at = Some(now + delay);
                    tracing::warn!(
                        slot = i, pid = ran.pid, status = %status_text, lived = ?lived, restart_in = ?delay,
                        "worker process crashed; restarting"
                    );
                }
                () = sleep_until(next_start), if next_start.is_some() && !ending => {
                    let now = Instant::now();
                    for (i, slot) in slots.iter_mut().enumerate() {
                        if slot.running.is_none() && slot.start_at.is_some_and(|t| t <= now) {
                            self.start(i, slot, &mut children, &mut report);
                        }
                    }
                }
                _ = memory.tick(), if s.max_memory.is_some() && !ending => {
                    let limit = s.max_memory.unwrap_or(u64::MAX);
                    for (i, slot) in slots.iter_mut().enumerate() {
                        let Some(ran) = slot.running.as_mut() else { continue };
                        if ran.recycling {
                            continue;
                        }
                        if let Some(rss) = resident_bytes(ran.pid)
                            && rss > limit
                        {
                            tracing::info!(
                                slot = i, pid = ran.pid, rss = %format_size(rss), limit = %format_size(limit),
                                "worker process above --max-memory; draining it to replace it"
                            );
                            ran.recycling = true;
                            let _ = ran.signals.send(Signal::SIGTERM);
                            let lived = ran.started.elapsed();
                            if !warned_low_memory && lived < FRESH_CHILD {
                                warned_low_memory = true;
                                tracing::warn!(
                                    slot = i, pid = ran.pid, rss = %format_size(rss), limit = %format_size(limit), lived = ?lived,
                                    "{}", low_memory_warning(rss, limit, lived)
                                );
                            }
                        }
                    }
                }
            }
        }

        if let Some(e) = failure {
            return Err(e);
        }
        if stop.now.is_cancelled() {
            bail!("stopped at once: worker processes were killed (their unfinished tasks run again after the lease)");
        }
        tracing::info!(?report, "supervisor stopped");
        Ok(report)
    }

    /// Sends SIGTERM to every child; returns the time by which they must have exited.
    fn begin_drain(&self, slots: &[Slot]) -> Instant {
        let n = signal_all(slots, Signal::SIGTERM);
        let deadline = Instant::now() + self.settings.drain_timeout + DRAIN_GRACE;
        tracing::info!(children = n, drain_timeout = ?self.settings.drain_timeout, "draining worker processes");
        deadline
    }

    /// Starts a child in `slot`; a failure to start counts like a crash of the slot.
    fn start(
        &self,
        i: usize,
        slot: &mut Slot,
        children: &mut JoinSet<(usize, io::Result<ExitStatus>)>,
        report: &mut SupervisorReport,
    ) {
        let s = &self.settings;
        slot.start_at = None;
        let mut cmd = tokio::process::Command::new(&s.program);
        cmd.args(&s.args)
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .env(SUPERVISOR_PID_ENV, std::process::id().to_string())
            .env(SLOT_ENV, i.to_string())
            .stdin(Stdio::null())
            .process_group(0)
            // A child whose watcher is dropped (the supervisor is going away) must not linger.
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                let (tx, mut rx) = mpsc::unbounded_channel::<Signal>();
                children.spawn(async move {
                    loop {
                        tokio::select! {
                            status = child.wait() => return (i, status),
                            Some(sig) = rx.recv() => {
                                // The child is not reaped until `wait` returns in this task, so
                                // `pid` still names it (running or zombie).
                                if let Err(e) = kill(Pid::from_raw(pid as i32), sig) {
                                    tracing::debug!(pid, error = %e, "signal not delivered");
                                }
                            }
                        }
                    }
                });
                report.started += 1;
                tracing::info!(slot = i, pid, "worker process started");
                slot.running = Some(Running {
                    pid,
                    started: Instant::now(),
                    signals: tx,
                    recycling: false,
                });
            }
            Err(e) => {
                slot.crashes_in_a_row += 1;
                let delay = restart_delay(slot.crashes_in_a_row, fastrand::f64());
                tracing::error!(
                    slot = i, program = %s.program.display(), error = %e, retry_in = ?delay,
                    "cannot start a worker process"
                );
                slot.start_at = Some(Instant::now() + delay);
            }
        }
    }
}

fn signal_all(slots: &[Slot], sig: Signal) -> usize {
    slots
        .iter()
        .filter_map(|s| s.running.as_ref())
        .filter(|r| r.signals.send(sig).is_ok())
        .count()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn describe(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(st) => st.to_string(),
        Err(e) => format!("unknown exit ({e})"),
    }
}

/// The delay before restarting a slot after its `n`th crash in a row (pure): `RESTART_BASE`
/// doubling per crash up to `RESTART_CAP`, times a jitter factor in [0.5, 1) from `unit`.
pub fn restart_delay(n: u32, unit: f64) -> Duration {
    let exp = n.saturating_sub(1).min(16);
    let ceiling = RESTART_BASE.saturating_mul(1 << exp).min(RESTART_CAP);
    ceiling.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

/// The warning for a child above `--max-memory` right after it started (pure).
pub fn low_memory_warning(rss: u64, limit: u64, lived: Duration) -> String {
    format!(
        "--max-memory {} looks too low: a worker process used {} only {} after it started. If an idle \
         worker process needs that much, every worker process will be recycled about once a second, \
         forever; raise --max-memory well above it (this warning is not repeated)",
        format_size(limit),
        format_size(rss),
        crate::output::fmt_duration(lived),
    )
}

/// Resident memory of a process, from `/proc/<pid>/status` (`VmRSS`, in KiB there).
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delay_doubles_up_to_the_cap() {
        assert_eq!(restart_delay(1, 1.0), RESTART_BASE);
        assert_eq!(restart_delay(1, 0.0), RESTART_BASE / 2);
        assert_eq!(restart_delay(2, 1.0), RESTART_BASE * 2);
        assert_eq!(restart_delay(3, 1.0), RESTART_BASE * 4);
        assert_eq!(restart_delay(50, 1.0), RESTART_CAP);
        assert_eq!(restart_delay(0, 1.0), RESTART_BASE);
    }

    #[test]
    fn the_low_memory_warning_names_the_limit_and_the_size_seen() {
        let w = low_memory_warning(12 << 20, 1 << 20, Duration::from_millis(900));
        assert!(
            w.contains("--max-memory 1.0 MiB looks too low") && w.contains("12.0 MiB only 900ms after"),
            "{w}"
        );
    }

    #[test]
    fn resident_memory_comes_from_vm_rss() {
        let status = "Name:\tworker-cli\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        let own = resident_bytes(std::process::id()).expect("this process has a VmRSS");
        assert!(own > 100 * 1024, "{own}");
    }
}
