//! The supervisor's rules as pure functions of their inputs (time included), so each can be
//! tested exhaustively and changed in one place.
//!
//! - [`restart_delay`]: the one backoff for restarting a crashed slot, capped by
//!   [`restart_cap`] so that the crash-loop guard can trip for one slot as well as for many.
//! - [`Exit::of`]: what a child's exit means: a recycle, an outage (the child could not reach
//!   Redis and said so with [`EXIT_OUTAGE`](crate::contract::EXIT_OUTAGE): restarted, never
//!   counted as a crash) or a crash.
//! - [`CrashGuard`]: the crash-loop guard: more than `limit` crashes within `window` means
//!   something restarting will not fix.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

use crate::contract::EXIT_OUTAGE;

/// First restart delay after a crash.
pub const RESTART_BASE: Duration = Duration::from_millis(250);
/// Longest restart delay.
pub const RESTART_CAP: Duration = Duration::from_secs(30);
/// A child that ran this long before crashing starts its slot's backoff over.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Default crash-loop guard: most crashes within [`DEFAULT_CRASH_WINDOW`].
pub const DEFAULT_CRASH_LIMIT: u32 = 10;
/// Default crash-loop guard window.
pub const DEFAULT_CRASH_WINDOW: Duration = Duration::from_secs(60);

/// The delay before restarting a slot after its `n`th crash in a row: [`RESTART_BASE`]
/// doubling per crash up to `cap` (see [`restart_cap`]), times a jitter factor in [0.5, 1]
/// from `unit` (so slots that crash together do not restart together).
pub fn restart_delay(n: u32, unit: f64, cap: Duration) -> Duration {
    ceiling(n, cap).mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

/// The un-jittered delay after the `n`th crash in a row.
fn ceiling(n: u32, cap: Duration) -> Duration {
    let exp = n.saturating_sub(1).min(16);
    RESTART_BASE.saturating_mul(1 << exp).min(cap)
}

/// The longest restart delay for a guard of `limit` crashes within `window`: [`RESTART_CAP`],
/// or less, so that one slot crashing at once on every start fits `limit + 1` crashes into
/// half the window (the other half is room for the children's own start-up and a loaded
/// machine). Without it the doubling delays of one slot add up to more than the default
/// window (the first ten to about 61 s against 60 s), and the guard could never trip with
/// `--workers 1`: the slot would be restarted forever.
pub fn restart_cap(limit: u32, window: Duration) -> Duration {
    let budget = window / 2;
    let total = |cap: Duration| -> Duration { (1..=limit).map(|n| ceiling(n, cap)).sum() };
    if total(RESTART_CAP) <= budget {
        return RESTART_CAP;
    }
    // `total` grows with the cap: find the largest cap within the budget by bisection (to
    // the millisecond).
    let (mut lo, mut hi) = (0u64, RESTART_CAP.as_millis() as u64);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if total(Duration::from_millis(mid)) <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Duration::from_millis(lo.max(1))
}

/// The delay before restarting a slot whose child could not reach Redis, after `n` such exits
/// in a row: the same doubling, capped at [`OUTAGE_CAP`] (the engine's own outage backoff
/// cap), so a worker is back within seconds of Redis.
pub fn outage_delay(n: u32, unit: f64) -> Duration {
    restart_delay(n, unit, OUTAGE_CAP)
}

/// Longest restart delay after an outage exit.
pub const OUTAGE_CAP: Duration = Duration::from_secs(5);

/// What a child's exit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited 0 on its own (it reached `--max-tasks`), or exited after it was asked to
    /// (recycled above the memory limit): replace it at once.
    Recycle,
    /// Exited [`EXIT_OUTAGE`]: it could not reach Redis. Restart it after
    /// [`outage_delay`], and do not count it as a crash: an outage is not a worker that
    /// cannot run.
    Outage,
    /// Anything else: restart after the slot's backoff, and count it for the crash-loop guard.
    Crash,
}

impl Exit {
    /// The meaning of `status` (`None`: the status could not be read) for a child the
    /// supervisor had (`asked`) or had not asked to stop.
    pub fn of(status: Option<ExitStatus>, asked: bool) -> Exit {
        match status {
            _ if asked => Exit::Recycle,
            Some(s) if s.success() => Exit::Recycle,
            Some(s) if s.code() == Some(EXIT_OUTAGE) => Exit::Outage,
            _ => Exit::Crash,
        }
    }
}

/// The crash-loop guard over all slots together.
#[derive(Debug, Clone)]
pub struct CrashGuard {
    limit: u32,
    window: Duration,
    crashes: VecDeque<Instant>,
}

impl CrashGuard {
    /// Trips at more than `limit` crashes within `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        CrashGuard {
            limit,
            window,
            crashes: VecDeque::new(),
        }
    }

    /// Records a crash at `now`; returns the crashes within the window if that trips the guard.
    pub fn record(&mut self, now: Instant) -> Option<usize> {
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.crashes.pop_front();
        }
        (self.crashes.len() > self.limit as usize).then_some(self.crashes.len())
    }

    /// The window, for messages.
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn restart_delay_doubles_up_to_the_cap() {
        let cap = RESTART_CAP;
        assert_eq!(restart_delay(1, 1.0, cap), RESTART_BASE);
        assert_eq!(restart_delay(1, 0.0, cap), RESTART_BASE / 2);
        assert_eq!(restart_delay(2, 1.0, cap), RESTART_BASE * 2);
        assert_eq!(restart_delay(3, 1.0, cap), RESTART_BASE * 4);
        assert_eq!(restart_delay(50, 1.0, cap), RESTART_CAP);
        assert_eq!(restart_delay(0, 1.0, cap), RESTART_BASE);
        assert!((1..100).all(|n| restart_delay(n, 1.0, cap) <= restart_delay(n + 1, 1.0, cap)));
        assert_eq!(outage_delay(50, 1.0), OUTAGE_CAP);
    }

    /// The guard's promise for one slot: `limit + 1` crashes at once on start, restarted
    /// with the longest delays (no jitter), fit in the window, for the default guard and
    /// for others. Without the cap the default guard's 10 delays add up to about 61 s.
    #[test]
    fn one_slot_fits_more_than_the_limit_of_crashes_into_the_window() {
        let cases = [
            (DEFAULT_CRASH_LIMIT, DEFAULT_CRASH_WINDOW),
            (1, Duration::from_secs(1)),
            (6, Duration::from_secs(6)),
            (10, Duration::from_secs(10)),
            (20, Duration::from_secs(60)),
            (100, Duration::from_secs(600)),
            (3, Duration::from_secs(3600)),
        ];
        for (limit, window) in cases {
            let cap = restart_cap(limit, window);
            let worst: Duration = (1..=limit).map(|n| restart_delay(n, 1.0, cap)).sum();
            assert!(
                worst <= window / 2,
                "limit {limit}, window {window:?}: cap {cap:?}, delays {worst:?}"
            );
            assert!(cap <= RESTART_CAP && cap > Duration::ZERO, "{cap:?}");
        }
        // A long window keeps the full backoff.
        assert_eq!(restart_cap(3, Duration::from_secs(3600)), RESTART_CAP);
        // The default guard: about 4.45 s at most between restarts of a crashing slot.
        let cap = restart_cap(DEFAULT_CRASH_LIMIT, DEFAULT_CRASH_WINDOW);
        assert!(cap > Duration::from_secs(4) && cap < Duration::from_secs(5), "{cap:?}");
        // Before the cap, the same slot never fit: the guard could not trip.
        let uncapped: Duration = (1..=DEFAULT_CRASH_LIMIT)
            .map(|n| restart_delay(n, 0.0, RESTART_CAP))
            .sum();
        assert!(uncapped > DEFAULT_CRASH_WINDOW, "{uncapped:?}");
    }

    #[test]
    fn clean_or_requested_exits_are_recycles_the_rest_crashes() {
        let exit = |code: i32| Some(ExitStatus::from_raw(code << 8));
        assert_eq!(Exit::of(exit(0), false), Exit::Recycle);
        assert_eq!(Exit::of(exit(1), false), Exit::Crash);
        assert_eq!(Exit::of(Some(ExitStatus::from_raw(9)), false), Exit::Crash);
        assert_eq!(Exit::of(None, false), Exit::Crash);
        assert_eq!(Exit::of(exit(1), true), Exit::Recycle);
        assert_eq!(Exit::of(exit(EXIT_OUTAGE), false), Exit::Outage);
        assert_eq!(Exit::of(exit(EXIT_OUTAGE), true), Exit::Recycle);
    }

    #[test]
    fn the_crash_guard_trips_past_the_limit_within_the_window() {
        let t0 = Instant::now();
        let mut g = CrashGuard::new(2, Duration::from_secs(60));
        assert_eq!(g.record(t0), None);
        assert_eq!(g.record(t0 + Duration::from_secs(1)), None);
        assert_eq!(g.record(t0 + Duration::from_secs(2)), Some(3));
        // Old crashes leave the window.
        let mut g = CrashGuard::new(2, Duration::from_secs(60));
        for s in [0, 50, 100, 150] {
            assert_eq!(g.record(t0 + Duration::from_secs(s)), None, "at {s}s");
        }
    }
}
