//! Runners: long-lived tokio tasks that run handlers one after another.
//!
//! A task's handler runs on a runner, not on a tokio task spawned for it: spawning one a task
//! cost an aligned allocation, two moves of its future, and a lock each to add it to tokio's
//! task list and to take it off again (about a tenth of a draining worker's CPU in a `perf`
//! profile; docs/benchmarks.md). A runner that finishes a task goes on a stack of idle runners;
//! the next task goes to the runner on top (the one most recently busy, its memory still warm),
//! and a new runner is spawned only when none is idle. There are never more runners than
//! handler slots (`concurrency`): a task is handed over only with its slot's permit.
//!
//! **Idle runners exit.** Every [`REAP_EVERY`], the runners that were idle since the last round
//! and still are are told to exit, so a burst's runners do not outlive it by more than two
//! rounds. An idle runner waits on its own `Notify` (no timer, no polling), so it costs memory
//! only.
//!
//! **Shutdown.** [`Runners::close`] tells the idle runners to exit and the busy ones to exit
//! after their task; [`Runners::wait`] returns once every runner has.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use super::executor::{self, Job};

/// How often idle runners are looked at: one idle through a whole round exits.
pub(super) const REAP_EVERY: Duration = Duration::from_secs(30);

/// The worker's runners (see the module docs).
pub(crate) struct Runners {
    idle: Mutex<Idle>,
    /// Tasks handed to a runner and not finished: handlers running, or waiting for their limit.
    busy: AtomicUsize,
    /// Owns every runner task.
    tasks: TaskTracker,
}

#[derive(Default)]
struct Idle {
    /// Idle runners, the most recently idle on top, each with the round it went idle in.
    stack: Vec<(Arc<Runner>, u64)>,
    /// Rounds of [`Runners::reap`] so far.
    round: u64,
}

#[derive(Default)]
struct Runner {
    /// The task handed over, until the runner takes it.
    job: Mutex<Option<Job>>,
    wake: Notify,
    /// Set with the runner off the idle stack: it exits when it wakes.
    exit: AtomicBool,
}

impl std::fmt::Debug for Runners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runners")
            .field("busy", &self.busy())
            .field("runners", &self.tasks.len())
            .finish()
    }
}

impl Runners {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Runners {
            idle: Mutex::default(),
            busy: AtomicUsize::new(0),
            tasks: TaskTracker::new(),
        })
    }

    /// Tasks handed to a runner and not finished yet.
    pub(crate) fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Runs `job` on an idle runner, or on a new one when none is idle.
    pub(super) fn start(&self, shared: &Arc<Shared>, job: Job) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        let idle = self.idle.lock().expect("never poisoned").stack.pop();
        match idle {
            Some((runner, _)) => {
                *runner.job.lock().expect("never poisoned") = Some(job);
                // Stored as a permit if the runner is not waiting yet: never lost.
                runner.wake.notify_one();
            }
            None => {
                let runner = Arc::new(Runner {
                    job: Mutex::new(Some(job)),
                    ..Runner::default()
                });
                self.tasks.spawn(run(shared.clone(), runner));
            }
        }
    }

    /// Tells every runner to exit: the idle ones now, the busy ones after their task.
    pub(super) fn close(&self) {
        // Under the idle lock, which `park` reads the closing under: a runner finishing its
        // task now either sees it or is on the stack drained here.
        let mut idle = self.idle.lock().expect("never poisoned");
        self.tasks.close();
        for (runner, _) in idle.stack.drain(..) {
            runner.exit.store(true, Ordering::Relaxed);
            runner.wake.notify_one();
        }
    }

    /// Returns once every runner has exited (after [`close`](Self::close)).
    pub(super) async fn wait(&self) {
        self.tasks.wait().await;
    }

    /// One round: the runners idle since before the last round exit. Returns how many did.
    fn reap(&self) -> usize {
        let mut idle = self.idle.lock().expect("never poisoned");
        let round = idle.round;
        // The stack's bottom went idle first: its old ones are a prefix.
        let old = idle.stack.iter().take_while(|(_, r)| *r < round).count();
        for (runner, _) in idle.stack.drain(..old) {
            runner.exit.store(true, Ordering::Relaxed);
            runner.wake.notify_one();
        }
        idle.round += 1;
        old
    }

    /// Puts a runner that finished its task on the idle stack; false once closed (it exits).
    fn park(&self, runner: &Arc<Runner>) -> bool {
        let mut idle = self.idle.lock().expect("never poisoned");
        if self.tasks.is_closed() {
            return false;
        }
        let round = idle.round;
        idle.stack.push((runner.clone(), round));
        true
    }
}

/// Counts a task finished even if its run unwinds.
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A runner: its first task, then each one handed to it while it was idle, until it is told
/// to exit.
async fn run(shared: Arc<Shared>, me: Arc<Runner>) {
    let runners = shared.runners.clone();
    loop {
        let job = me.job.lock().expect("never poisoned").take();
        match job {
            Some(Job {
                lane_idx,
                entry_id,
                run,
                permit,
            }) => {
                let finished = Finished(&runners.busy);
                executor::execute(&shared, lane_idx, entry_id, run).await;
                // Idle first, then the slot back: a task the slot lets in finds this runner.
                let parked = runners.park(&me);
                drop(permit);
                drop(finished);
                if !parked {
                    return;
                }
                // Tasks handed over back to back run in one poll of this runner: its coop
                // budget makes it yield now and then, as tasks of their own would.
                tokio::task::coop::consume_budget().await;
            }
            None if me.exit.load(Ordering::Relaxed) => return,
            // Idle: wait for a task or the word to exit. A wake with neither (the notify of a
            // task it already took) comes back here and waits again.
            None => me.wake.notified().await,
        }
    }
}

/// Every [`REAP_EVERY`], lets the runners idle for a whole round exit.
pub(super) async fn reap_idle(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REAP_EVERY) => {}
        }
        let gone = shared.runners.reap();
        if gone > 0 {
            tracing::debug!(runners = gone, "idle runners exited");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_runner(runners: &Runners) -> Arc<Runner> {
        let r = Arc::new(Runner::default());
        assert!(runners.park(&r));
        r
    }

    #[test]
    fn only_runners_idle_for_a_whole_round_are_reaped_oldest_first() {
        let runners = Runners::new();
        let a = idle_runner(&runners);
        // A round has not passed for anyone yet.
        assert_eq!(runners.reap(), 0);
        let b = idle_runner(&runners);
        // `a` was idle through the round just ended; `b` went idle during it.
        assert_eq!(runners.reap(), 1);
        assert!(a.exit.load(Ordering::Relaxed) && !b.exit.load(Ordering::Relaxed));
        // Taken for a task and idle again: its round starts over.
        let (again, _) = runners.idle.lock().unwrap().stack.pop().unwrap();
        assert!(Arc::ptr_eq(&again, &b));
        assert!(runners.park(&b));
        assert_eq!(runners.reap(), 0);
        assert_eq!(runners.reap(), 1);
        assert!(b.exit.load(Ordering::Relaxed));
        assert!(runners.idle.lock().unwrap().stack.is_empty());
    }

    #[test]
    fn a_closed_pool_takes_no_runner_back_and_wakes_the_idle_ones_to_exit() {
        let runners = Runners::new();
        let a = idle_runner(&runners);
        runners.close();
        assert!(a.exit.load(Ordering::Relaxed), "told to exit");
        let b = Arc::new(Runner::default());
        assert!(!runners.park(&b), "a runner finishing after the close exits");
    }
}
