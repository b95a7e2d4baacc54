//! Act: make the number of worker processes match the decision.
//!
//! - [`ProcessActuator`] runs workers as child processes of the daemon (`sh -c <worker-cmd>`).
//!   Scale-down sends SIGTERM to idle workers first (a worker drains its in-flight tasks on
//!   SIGTERM), waits for them, and only sends SIGKILL after `hard_deadline`. Crashed children
//!   are reaped and replaced at once.
//! - [`CommandActuator`] runs a template with `{replicas}` (for an orchestrator's scale
//!   command) and reports its failures.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Default time a stopping worker gets before it is killed.
pub const DEFAULT_HARD_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct Stopping {
    child: Child,
    since: Instant,
}

/// Runs worker processes as children.
#[derive(Debug)]
pub struct ProcessActuator {
    command: String,
    running: Vec<Child>,
    stopping: Vec<Stopping>,
    hard_deadline: Duration,
    crashes: u64,
}

impl ProcessActuator {
    /// Workers are started as `sh -c <command>`.
    pub fn new(command: String, hard_deadline: Duration) -> Self {
        ProcessActuator {
            command,
            running: Vec::new(),
            stopping: Vec::new(),
            hard_deadline,
            crashes: 0,
        }
    }

    /// Workers running (not stopping).
    pub fn current(&self) -> u32 {
        self.running.len() as u32
    }

    /// Workers asked to stop that have not exited yet.
    pub fn stopping(&self) -> u32 {
        self.stopping.len() as u32
    }

    /// Children that exited on their own so far.
    pub fn crashes(&self) -> u64 {
        self.crashes
    }

    /// Pids of running workers.
    pub fn pids(&self) -> Vec<u32> {
        self.running.iter().filter_map(Child::id).collect()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("sh")
            .arg("-c")
            // exec: the worker replaces the shell, so signals reach it directly.
            .arg(format!("exec {}", self.command))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start worker command {:?}", self.command))?;
        tracing::info!(pid = child.id(), "worker started");
        self.running.push(child);
        Ok(())
    }

    /// Reaps exited children: crashed running ones are replaced, stopped ones forgotten;
    /// stopping ones past the hard deadline are killed.
    pub fn reap(&mut self) -> anyhow::Result<()> {
        let mut crashed = 0;
        self.running.retain_mut(|c| match c.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(pid = c.id(), %status, "worker exited on its own; replacing it");
                crashed += 1;
                false
            }
            _ => true,
        });
        self.crashes += crashed;
        for _ in 0..crashed {
            self.spawn()?;
        }
        let deadline = self.hard_deadline;
        self.stopping.retain_mut(|s| match s.child.try_wait() {
            Ok(Some(status)) => {
                tracing::info!(%status, "worker stopped");
                false
            }
            _ => {
                if s.since.elapsed() > deadline {
                    tracing::error!(
                        pid = s.child.id(),
                        ?deadline,
                        "worker did not drain in time; killing it"
                    );
                    let _ = s.child.start_kill();
                }
                true
            }
        });
        Ok(())
    }

    /// Moves towards `desired` running workers. `idle` lists pids known to hold no task:
    /// they are stopped first, then the youngest.
    pub fn scale_to(&mut self, desired: u32, idle: &[u32]) -> anyhow::Result<()> {
        self.reap()?;
        while self.current() < desired {
            self.spawn()?;
        }
        while self.current() > desired {
            let pick = self
                .running
                .iter()
                .rposition(|c| c.id().is_some_and(|p| idle.contains(&p)))
                .unwrap_or(self.running.len() - 1);
            let child = self.running.remove(pick);
            self.terminate(child);
        }
        Ok(())
    }

    fn terminate(&mut self, child: Child) {
        if let Some(pid) = child.id() {
            tracing::info!(pid, "stopping worker (SIGTERM: it drains its in-flight tasks)");
            if let Err(e) = kill(Pid::from_raw(pid as i32), Signal::SIGTERM) {
                tracing::warn!(pid, error = %e, "could not signal worker");
            }
        }
        self.stopping.push(Stopping {
            child,
            since: Instant::now(),
        });
    }

    /// Stops every worker gracefully and waits up to the hard deadline, then kills the rest.
    pub async fn shutdown(&mut self) {
        let all: Vec<Child> = self.running.drain(..).collect();
        for child in all {
            self.terminate(child);
        }
        let deadline = Instant::now() + self.hard_deadline;
        for s in &mut self.stopping {
            match tokio::time::timeout_at(deadline, s.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::error!(pid = s.child.id(), "worker did not drain in time; killing it");
                    let _ = s.child.kill().await;
                }
            }
        }
        self.stopping.clear();
    }

    /// Leaves the workers running (the daemon exits without stopping them).
    pub fn detach(&mut self) {
        for c in self.running.drain(..).chain(self.stopping.drain(..).map(|s| s.child)) {
            // Dropping a `kill_on_drop` handle would kill the worker; forgetting it leaves the
            // process running on its own.
            std::mem::forget(c);
        }
    }
}

/// Runs a scale command such as `kubectl scale deploy/workers --replicas={replicas}`.
#[derive(Debug)]
pub struct CommandActuator {
    template: String,
    applied: Option<u32>,
}

impl CommandActuator {
    /// `template` must contain `{replicas}`.
    pub fn new(template: String) -> anyhow::Result<Self> {
        if !template.contains("{replicas}") {
            bail!(
                "--scale-cmd must contain {{replicas}}, e.g. \"kubectl scale deploy/workers --replicas={{replicas}}\""
            );
        }
        Ok(CommandActuator {
            template,
            applied: None,
        })
    }

    /// The replica count last applied successfully.
    pub fn applied(&self) -> Option<u32> {
        self.applied
    }

    /// Runs the command for `replicas` unless that count is already applied.
    pub async fn scale_to(&mut self, replicas: u32) -> anyhow::Result<()> {
        if self.applied == Some(replicas) {
            return Ok(());
        }
        let cmd = self.template.replace("{replicas}", &replicas.to_string());
        let out = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("could not run scale command {cmd:?}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!("scale command {cmd:?} failed with {}: {}", out.status, stderr.trim());
        }
        tracing::info!(replicas, command = %cmd, "scale command applied");
        self.applied = Some(replicas);
        Ok(())
    }
}
