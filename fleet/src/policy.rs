//! The supervisor's rules as pure functions of their inputs (time included), so each can be
//! tested exhaustively and changed in one place.
//!
//! - [`restart_delay`]: the one backoff for restarting a crashed slot.
//! - [`Exit::of`]: what a child's exit means (recycle or crash). A third meaning, such as "Redis
//!   is away" (an outage, not a crash: restart it without counting it), belongs here as a new
//!   variant, with the child's side telling it apart by its exit status.
//! - [`CrashGuard`]: the crash-loop guard: more than `limit` crashes within `window` means
//!   something restarting will not fix.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

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
/// doubling per crash up to [`RESTART_CAP`], times a jitter factor in [0.5, 1) from `unit`
/// (so slots that crash together do not restart together).
pub fn restart_delay(n: u32, unit: f64) -> Duration {
    let exp = n.saturating_sub(1).min(16);
    let ceiling = RESTART_BASE.saturating_mul(1 << exp).min(RESTART_CAP);
    ceiling.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

/// What a child's exit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited 0 on its own (it reached `--max-tasks`), or exited after it was asked to
    /// (recycled above the memory limit): replace it at once.
    Recycle,
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
        assert_eq!(restart_delay(1, 1.0), RESTART_BASE);
        assert_eq!(restart_delay(1, 0.0), RESTART_BASE / 2);
        assert_eq!(restart_delay(2, 1.0), RESTART_BASE * 2);
        assert_eq!(restart_delay(3, 1.0), RESTART_BASE * 4);
        assert_eq!(restart_delay(50, 1.0), RESTART_CAP);
        assert_eq!(restart_delay(0, 1.0), RESTART_BASE);
        assert!((1..100).all(|n| restart_delay(n, 1.0) <= restart_delay(n + 1, 1.0)));
    }

    #[test]
    fn clean_or_requested_exits_are_recycles_the_rest_crashes() {
        let exit = |code: i32| Some(ExitStatus::from_raw(code << 8));
        assert_eq!(Exit::of(exit(0), false), Exit::Recycle);
        assert_eq!(Exit::of(exit(1), false), Exit::Crash);
        assert_eq!(Exit::of(Some(ExitStatus::from_raw(9)), false), Exit::Crash);
        assert_eq!(Exit::of(None, false), Exit::Crash);
        assert_eq!(Exit::of(exit(1), true), Exit::Recycle);
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
