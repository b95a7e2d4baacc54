//! Retry policy: how many attempts a task gets and how long it waits between them.
//!
//! The delay is a pure function (exponential, capped, full jitter), so the schedule is unit
//! tested exactly and callers can print it. Full jitter (a uniform draw in `[0, ceiling]`)
//! spreads a burst of failures out instead of retrying them all at the same instant.

use std::time::Duration;

use crate::error::{Error, Result};

/// Default number of runs a task gets before it is buried as `exhausted`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default delay ceiling of the first retry.
pub const DEFAULT_BASE: Duration = Duration::from_secs(1);
/// Default growth of the ceiling per attempt.
pub const DEFAULT_FACTOR: f64 = 2.0;
/// Default largest delay.
pub const DEFAULT_CAP: Duration = Duration::from_secs(600);

/// Attempts and backoff. Overridable per queue and per kind in the worker, per task in the
/// envelope (`max_attempts`, `backoff_base_ms`, `backoff_factor`, `backoff_cap_ms`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Runs a task gets in all (1 = never retried).
    pub max_attempts: u32,
    /// Ceiling of the delay before the first retry.
    pub base: Duration,
    /// Multiplier of the ceiling per further attempt.
    pub factor: f64,
    /// Largest ceiling.
    pub cap: Duration,
    /// Draw the delay uniformly from `[0, ceiling]` (true) or use the ceiling itself.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base: DEFAULT_BASE,
            factor: DEFAULT_FACTOR,
            cap: DEFAULT_CAP,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Checks the values; never silently repairs them.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::config("retry.max_attempts", "must be at least 1"));
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(Error::config("retry.factor", "must be a finite number >= 1"));
        }
        if self.cap < self.base {
            return Err(Error::config("retry.cap", "must not be below retry.base"));
        }
        Ok(())
    }

    /// The delay ceiling after failed attempt number `attempt` (0 = the first run failed):
    /// `min(cap, base * factor^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = self.factor.powi(attempt.min(1024) as i32);
        let secs = self.base.as_secs_f64() * exp;
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay after failed attempt `attempt`, given a uniform draw `unit` in `[0, 1)`.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        if self.jitter {
            ceiling.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            ceiling
        }
    }

    /// The delay after failed attempt `attempt`, with a fresh random draw.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, fastrand::f64())
    }

    /// Whether a task that has just failed attempt `attempt` (0-based) may run again.
    pub fn may_retry(&self, attempt: u32) -> bool {
        attempt.saturating_add(1) < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_exponentially_up_to_the_cap() {
        let p = RetryPolicy::default();
        let secs: Vec<u64> = (0..12).map(|a| p.ceiling(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(p.ceiling(u32::MAX), p.cap);
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_with(3, 0.0), Duration::ZERO);
        assert_eq!(p.delay_with(3, 0.5), Duration::from_secs(4));
        assert_eq!(p.delay_with(3, 1.0), Duration::from_secs(8));
        for a in 0..20 {
            assert!(p.delay(a) <= p.ceiling(a));
        }
        let fixed = RetryPolicy { jitter: false, ..p };
        assert_eq!(fixed.delay_with(2, 0.1), Duration::from_secs(4));
    }

    #[test]
    fn attempts_are_counted_from_zero() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        assert!(p.may_retry(0));
        assert!(p.may_retry(1));
        assert!(!p.may_retry(2));
        let once = RetryPolicy { max_attempts: 1, ..p };
        assert!(!once.may_retry(0));
    }

    #[test]
    fn bad_policies_are_rejected() {
        let p = RetryPolicy::default();
        assert!(p.validate().is_ok());
        assert!(RetryPolicy { max_attempts: 0, ..p }.validate().is_err());
        assert!(RetryPolicy { factor: 0.5, ..p }.validate().is_err());
        assert!(RetryPolicy { factor: f64::NAN, ..p }.validate().is_err());
        assert!(
            RetryPolicy {
                cap: Duration::ZERO,
                ..p
            }
            .validate()
            .is_err()
        );
    }
}
