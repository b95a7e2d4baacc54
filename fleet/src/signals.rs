//! Signal handling for both binaries and their worker processes: the first SIGTERM/SIGINT
//! drains, the second stops at once.

use std::io;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How a process is told to stop: `drain` for a graceful stop, `now` to stop at once (a second
/// Ctrl-C). `now` does not cancel `drain`: a caller that wants both checks both.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Stop gracefully.
    pub drain: CancellationToken,
    /// Stop at once.
    pub now: CancellationToken,
}

impl Stop {
    /// Tokens not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps SIGTERM/SIGINT onto the tokens until both are cancelled: the first signal drains,
    /// the second stops at once. Registers the handlers before returning, so no signal is
    /// missed (or left to its default action, which ends the process without a drain) once
    /// this has been called. The loop is owned by `tasks`.
    pub fn on_signals(&self, tasks: &mut JoinSet<()>) -> io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = self.clone();
        // A supervised worker's signal comes from its supervisor, which has logged the drain
        // already: one "draining" line per signal, not one more per worker process.
        let supervised = std::env::var_os(crate::contract::SUPERVISOR_PID_ENV).is_some();
        tasks.spawn(async move {
            for first in [true, false] {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                // Act first, log second: nothing may stand between a signal and its effect.
                if first {
                    stop.drain.cancel();
                    if supervised {
                        tracing::debug!(signal = name, "draining, as the supervisor asked");
                    } else {
                        tracing::info!(signal = name, "draining (send it again to stop at once)");
                    }
                } else {
                    stop.now.cancel();
                    tracing::warn!(signal = name, "second signal: stopping at once");
                }
            }
        });
        Ok(())
    }
}
