//! The `max_tasks` budget: how many more tasks this worker may take.
//!
//! A budget unit is reserved together with a handler slot, before a read (fetcher) or a
//! reclaim (reclaimer) asks Redis for entries, so those calls never ask for more entries than
//! there are units left; a unit is spent when an entry taken is dispatched, and units reserved
//! but not spent go back when the reservation drops. The spend that uses the last unit fires
//! `exhausted`, on which the worker quiets: no read can take a task past the budget, so a
//! worker with `max_tasks = N` dispatches exactly N tasks (fewer only if the queues run dry).
//!
//! A semaphore rather than a counter: a fetcher that finds no unit free while another holds
//! the last ones waits for them to come back (an unused reservation) instead of spinning.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// What is left of a worker's `max_tasks`.
#[derive(Debug)]
pub(super) struct Budget {
    max: u64,
    units: Arc<Semaphore>,
    spent: AtomicU64,
    exhausted: CancellationToken,
}

impl Budget {
    /// A budget of `max` tasks (`validate` keeps it within the semaphore's limit).
    pub(super) fn new(max: u64) -> Self {
        Budget {
            max,
            units: Arc::new(Semaphore::new(max as usize)),
            spent: AtomicU64::new(0),
            exhausted: CancellationToken::new(),
        }
    }

    /// Cancelled by the spend of the last unit.
    pub(super) fn exhausted(&self) -> &CancellationToken {
        &self.exhausted
    }

    /// Units free now (a hint: other loops take and return them concurrently).
    pub(super) fn available(&self) -> usize {
        self.units.available_permits()
    }

    /// Waits for at least one unit, then takes up to `want` of those free now.
    pub(super) async fn reserve(&self, want: usize) -> Units {
        // The semaphore is never closed.
        let Ok(mut got) = self.units.clone().acquire_owned().await else {
            return Units::none();
        };
        let more = self.units.available_permits().min(want.saturating_sub(1));
        if more > 0
            && let Ok(extra) = self.units.clone().try_acquire_many_owned(more as u32)
        {
            got.merge(extra);
        }
        Units(Some(got))
    }

    /// Takes up to `want` of the units free now, without waiting (possibly none).
    pub(super) fn try_reserve(&self, want: usize) -> Units {
        let n = self.units.available_permits().min(want);
        if n == 0 {
            return Units::none();
        }
        match self.units.clone().try_acquire_many_owned(n as u32) {
            Ok(p) => Units(Some(p)),
            // Another loop took them between the look and the take.
            Err(_) => Units::none(),
        }
    }

    fn spend_one(&self, permit: OwnedSemaphorePermit) {
        permit.forget();
        let spent = self.spent.fetch_add(1, Ordering::Relaxed) + 1;
        if spent == self.max {
            tracing::info!(
                max_tasks = self.max,
                "reached max_tasks: no more fetching; finishing what was taken"
            );
            self.exhausted.cancel();
        }
    }
}

/// Budget units reserved for entries about to be taken; unspent ones go back on drop.
#[derive(Debug)]
pub(super) struct Units(Option<OwnedSemaphorePermit>);

impl Units {
    fn none() -> Self {
        Units(None)
    }

    /// Units reserved.
    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Gives back all but `keep` units.
    pub(super) fn keep(&mut self, keep: usize) {
        if let Some(p) = &mut self.0
            && p.num_permits() > keep
        {
            drop(p.split(p.num_permits() - keep));
        }
    }

    /// Spends one unit on an entry being dispatched: a reserved one, else one free in
    /// `budget` now. False when none is left: the entry must not run here.
    pub(super) fn spend(&mut self, budget: &Budget) -> bool {
        let one = match &mut self.0 {
            Some(p) if p.num_permits() > 1 => p.split(1),
            Some(p) if p.num_permits() == 1 => self.0.take(),
            // None reserved (or none left): a unit free now, if any.
            _ => None,
        };
        let one = one.or_else(|| budget.try_reserve(1).0);
        match one {
            Some(p) => {
                budget.spend_one(p);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spends_exactly_max_and_then_reports_exhaustion() {
        let budget = Budget::new(5);
        let mut a = budget.reserve(3).await;
        assert_eq!(a.len(), 3);
        let mut b = budget.reserve(10).await;
        assert_eq!(b.len(), 2);
        assert_eq!(budget.try_reserve(1).len(), 0);
        assert!(a.spend(&budget) && a.spend(&budget));
        // One unreserved unit of `a` goes back when it drops.
        drop(a);
        assert!(!budget.exhausted().is_cancelled());
        assert!(b.spend(&budget) && b.spend(&budget));
        // `b` spent its own; the one `a` gave back is free to take.
        assert!(b.spend(&budget));
        assert!(budget.exhausted().is_cancelled());
        assert!(!b.spend(&budget), "no sixth task");
    }

    #[tokio::test]
    async fn keep_gives_back_the_rest() {
        let budget = Budget::new(4);
        let mut u = budget.reserve(4).await;
        u.keep(1);
        assert_eq!((u.len(), budget.try_reserve(9).len()), (1, 3));
    }
}
