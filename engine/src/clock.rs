//! The clock the worker, the inspector and the producer read the time from, and pass into the
//! broker calls that need it (a dead letter's `dead_at`, a heartbeat's `last_beat`, a
//! promotion's "due by"), or compare with what the broker read (a waiting task's age, whether a
//! delayed task is already due): the broker itself never reads the time. What still reads the
//! system time directly is what stamps a new task (`TaskId::generate`, `Envelope::new`'s
//! `enqueued_at`, `Task::delay`), before any client or worker is involved.
//!
//! `System` is the only clock in production; a manual clock lets tests set the time.

#[cfg(test)]
use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};

/// Where "now" comes from.
#[derive(Debug, Clone, Default)]
pub(crate) enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// A time the test sets, shared by every clone.
    #[cfg(test)]
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// Milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        match self {
            Clock::System => crate::envelope::now_ms(),
            #[cfg(test)]
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// A clock stopped at `ms`, and the handle that moves it.
    #[cfg(test)]
    pub(crate) fn manual(ms: u64) -> (Self, Arc<AtomicU64>) {
        let t = Arc::new(AtomicU64::new(ms));
        (Clock::Manual(t.clone()), t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_reads_what_the_test_set_in_every_clone() {
        let (clock, handle) = Clock::manual(1_000);
        let copy = clock.clone();
        handle.store(61_000, Ordering::Relaxed);
        assert_eq!((clock.now_ms(), copy.now_ms()), (61_000, 61_000));
    }
}
