//! The parent/child contract between a supervisor ([`Fleet`](crate::Fleet)) and the worker
//! processes it starts, in one place: what the child finds in its environment and what it does
//! with it.
//!
//! - [`SUPERVISOR_PID_ENV`]: the supervisor's pid. A child that finds it asks the kernel for
//!   SIGKILL when its parent dies (`PR_SET_PDEATHSIG`), checks that its parent is still that
//!   pid (the parent may have died before the request), and keeps checking
//!   ([`watch_parent`]). Not set for children meant to outlive the supervisor.
//! - [`SLOT_ENV`]: the child's slot number, for its logs.
//! - [`METRICS_SOCKET_ENV`]: set when the supervisor serves metrics for its box: a Unix socket
//!   the child connects to and answers with its metrics whenever asked (`worker-cli`'s
//!   `metrics` module holds both sides).
//! - A child runs in its own process group: a terminal's Ctrl-C reaches only the supervisor,
//!   which then drains its children itself (once; in the same group they would get the
//!   group's signal and then the supervisor's, a second signal that stops them at once).
//! - SIGTERM: drain (finish or requeue in-flight tasks) and exit; a second one: stop at once.
//!   Exit 0 on its own: "replace me" (a recycle); exit [`EXIT_OUTAGE`]: "Redis is away"
//!   (restarted, not counted as a crash); any other exit is a crash. A child that starts
//!   while Redis is away should wait for it rather than exit at all (`worker-cli work` does);
//!   [`EXIT_OUTAGE`] is for what it cannot wait through.
//!
//! Commands a child runs for its tasks must not inherit the contract
//! ([`CONTRACT_VARS`]): a nested worker would think it is supervised.

use std::time::Duration;

use nix::unistd::{Pid, getppid};

/// Set by a supervisor for its children: its pid.
pub const SUPERVISOR_PID_ENV: &str = "RIVULET_SUPERVISOR_PID";
/// Set by a supervisor for its children: the child's slot number (for logs).
pub const SLOT_ENV: &str = "RIVULET_WORKER_SLOT";
/// Set by a supervisor that serves metrics: the Unix socket its children report to.
pub const METRICS_SOCKET_ENV: &str = "RIVULET_METRICS_SOCKET";
/// Every variable of the contract (to remove from what a child's own commands inherit).
pub const CONTRACT_VARS: [&str; 3] = [SUPERVISOR_PID_ENV, SLOT_ENV, METRICS_SOCKET_ENV];
/// Exit status of a child that stopped because Redis could not be reached (`EX_UNAVAILABLE`
/// from sysexits.h): an outage, which the supervisor restarts without counting it as a crash.
pub const EXIT_OUTAGE: i32 = 69;
/// How often a child checks that its supervisor is still its parent.
pub const PARENT_CHECK: Duration = Duration::from_millis(500);

/// Why a child cannot take its part in the contract.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContractError {
    /// The variable does not hold a pid.
    #[error("{SUPERVISOR_PID_ENV}={value:?} is not a pid")]
    NotAPid {
        /// What the variable held.
        value: String,
    },
    /// The kernel refused the parent-death signal.
    #[error("asking to be killed with the supervisor (PR_SET_PDEATHSIG)")]
    DeathSignal(#[source] nix::Error),
    /// The supervisor died before the child could ask to die with it.
    #[error("the supervisor (pid {0}) is gone; not starting")]
    SupervisorGone(i32),
}

/// The child's side, at start: under a supervisor (the variable is set), asks for SIGKILL when
/// the parent dies, then checks the parent is still the supervisor. Returns the supervisor's
/// pid, or `None` when run by hand.
///
/// Call it from the thread that lives as long as the process: the death signal fires when the
/// parent *thread* that forked the child exits, which is the supervisor's concern (it forks from
/// its main thread), but the request itself is per process.
pub fn die_with_supervisor() -> Result<Option<Pid>, ContractError> {
    let Ok(raw) = std::env::var(SUPERVISOR_PID_ENV) else {
        return Ok(None);
    };
    let pid: i32 = raw.parse().map_err(|_| ContractError::NotAPid { value: raw.clone() })?;
    let pid = Pid::from_raw(pid);
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(ContractError::DeathSignal)?;
    if getppid() != pid {
        return Err(ContractError::SupervisorGone(pid.as_raw()));
    }
    Ok(Some(pid))
}

/// Returns once `supervisor` is no longer this process's parent (belt and braces: the death
/// signal normally arrives first). The caller then drains.
pub async fn watch_parent(supervisor: Pid) {
    loop {
        tokio::time::sleep(PARENT_CHECK).await;
        if getppid() != supervisor {
            tracing::warn!(supervisor = %supervisor, "supervisor is gone; stopping");
            return;
        }
    }
}
