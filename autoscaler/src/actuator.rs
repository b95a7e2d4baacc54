//! Act: make the number of worker processes match the decision.
//!
//! - [`ProcessActuator`] runs workers as child processes of the daemon (`sh -c "exec
//!   <worker-cmd>"`: the worker replaces the shell, so the child's pid is the worker's) through
//!   the fleet supervisor `worker-cli --workers N` runs too (`rivulet_fleet::Fleet`), at a moving
//!   target. From there: each worker leads its own process group (a Ctrl-C to the autoscaler's
//!   group reaches only the autoscaler, which then drains its workers once); workers die with
//!   the autoscaler, also when it is SIGKILLed (the parent/child contract,
//!   `rivulet_fleet::contract`; not with [`ProcessActuator::leave_running`]); scale-down stops
//!   idle workers first with SIGTERM (they drain) and SIGKILLs after `hard_deadline`; crashed
//!   workers are restarted with the fleet's one backoff, and a crash loop stops the daemon
//!   with an error naming it; a worker that exits 0 (`--max-tasks`) is replaced at once. A
//!   Redis outage is no crash here either: `worker-cli work` started by the fleet waits for
//!   Redis, and a worker that exits 69 (`rivulet_fleet::contract::EXIT_OUTAGE`) is restarted
//!   without counting.
//! - [`CommandActuator`] runs a template with `{replicas}` (for an orchestrator's scale
//!   command) and reports its failures.
//! - [`Actuator`] is the one the daemon was configured with.

use std::ffi::OsString;
use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rivulet_fleet::{Fleet, FleetConfig, FleetError, FleetHandle, FleetReport, Stop};
use tokio::process::Command;
use tokio::task::JoinHandle;

/// Default time a stopping worker gets before it is killed.
pub const DEFAULT_HARD_DEADLINE: Duration = Duration::from_secs(120);

/// How the daemon changes the number of workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actuation {
    /// Child processes started with `sh -c "exec <command>"`, each in its own process group,
    /// with `REDIS_URL` set in their environment.
    Process {
        /// The worker command template: `{queue}` and `{redis_url}` are replaced (prefer the
        /// environment's `REDIS_URL` to `{redis_url}`: a URL on the command line shows its
        /// password in `ps`).
        command: String,
        /// On the daemon's own shutdown: drain the workers (true) or leave them running; left
        /// workers do not die with the daemon either.
        drain_on_exit: bool,
        /// How long a stopping worker gets before SIGKILL.
        hard_deadline: Duration,
    },
    /// A command template with `{replicas}`.
    Command {
        /// The template.
        template: String,
    },
}

/// The actuator the daemon acts through.
#[derive(Debug)]
pub enum Actuator {
    /// Local worker processes.
    Process(ProcessActuator),
    /// A scale command.
    Command(CommandActuator),
}

/// The `REDIS_TLS_*` variables that give a worker-cli process the same TLS options.
fn tls_env(tls: &rivulet::TlsOptions) -> Vec<(&'static str, String)> {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    [
        ("REDIS_TLS_CA_FILE", path(&tls.ca_file)),
        ("REDIS_TLS_CERT_FILE", path(&tls.client_cert)),
        ("REDIS_TLS_KEY_FILE", path(&tls.client_key)),
        ("REDIS_TLS_INSECURE", tls.insecure.then(|| "true".to_owned())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect()
}

impl Actuator {
    /// The actuator `actuation` describes, for `queue` on Redis at `redis_url` (`shown_url`:
    /// the same with its password redacted, for logs).
    /// Workers get `tls` as `REDIS_TLS_*` variables, so they connect as the autoscaler does.
    pub fn new(
        actuation: &Actuation,
        queue: &str,
        redis_url: &str,
        shown_url: &str,
        tls: &rivulet::TlsOptions,
    ) -> anyhow::Result<Self> {
        Ok(match actuation {
            Actuation::Process {
                command,
                drain_on_exit,
                hard_deadline,
            } => {
                let fill = |url: &str| command.replace("{redis_url}", url).replace("{queue}", queue);
                let mut p = ProcessActuator::new(fill(redis_url), *hard_deadline)
                    .shown_as(fill(shown_url))
                    // worker-cli reads it; the URL (and its password) stays off the command line.
                    .env("REDIS_URL", redis_url);
                for (key, value) in tls_env(tls) {
                    p = p.env(key, value);
                }
                if !drain_on_exit {
                    p = p.leave_running();
                }
                Actuator::Process(p)
            }
            Actuation::Command { template } => Actuator::Command(CommandActuator::new(template.clone())?),
        })
    }

    /// The workers the actuator keeps now, or `None` when it cannot tell (a scale command not
    /// applied yet: the daemon then counts the live workers).
    pub fn current(&self) -> Option<u32> {
        match self {
            Actuator::Process(p) => Some(p.current()),
            Actuator::Command(c) => c.applied(),
        }
    }

    /// Moves towards `desired` workers; `idle` lists pids known to hold no task (stopped first).
    /// An error from a scale command is logged (the next decision tries again); a fleet that
    /// gave up (crash loop) is an error.
    pub async fn scale_to(&mut self, desired: u32, idle: &[u32]) -> anyhow::Result<()> {
        match self {
            Actuator::Process(p) => p.scale_to(desired, idle).await,
            Actuator::Command(c) => {
                if let Err(e) = c.scale_to(desired).await {
                    tracing::error!(error = format!("{e:#}"), "scale command failed");
                }
                Ok(())
            }
        }
    }

    /// On the daemon's exit: drains (or leaves running) the process actuator's workers; see
    /// [`ProcessActuator::shutdown`]. Nothing to do for a scale command.
    pub async fn shutdown(&mut self, drain: bool, force: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Actuator::Process(p) = self else {
            return Ok(());
        };
        if !drain {
            tracing::info!(workers = p.current(), "leaving workers running");
            p.detach();
            return Ok(());
        }
        tracing::info!(
            workers = p.current(),
            "stopping the workers: each drains (signal again to kill them at once)"
        );
        if !p.shutdown(force).await {
            bail!(
                "stopped at once by a second signal: workers killed, their unfinished tasks run again after the lease"
            );
        }
        tracing::info!("workers drained");
        Ok(())
    }
}

/// Runs worker processes as children, through a [`Fleet`] whose target it moves.
#[derive(Debug)]
pub struct ProcessActuator {
    config: FleetConfig,
    target: u32,
    /// Started at the first [`scale_to`](Self::scale_to), on the runtime that calls it.
    running: Option<RunningFleet>,
}

/// The fleet's task and the two ways to reach it.
#[derive(Debug)]
struct RunningFleet {
    handle: FleetHandle,
    stop: Stop,
    task: JoinHandle<Result<FleetReport, FleetError>>,
}

impl ProcessActuator {
    /// Workers are started as `sh -c "exec <command>"`, each in its own process group, and
    /// die with this process (see the module docs).
    ///
    /// Workers must be started from a thread that lives as long as the process (the daemon
    /// does: it runs on the main thread's current-thread runtime): the parent-death signal
    /// fires when the thread that forked the worker exits.
    pub fn new(command: String, hard_deadline: Duration) -> Self {
        let mut config = FleetConfig::new(
            "sh",
            // exec: the worker replaces the shell, so the child's pid is the worker's.
            vec![OsString::from("-c"), OsString::from(format!("exec {command}"))],
        );
        config.shown = command;
        config.stop_timeout = hard_deadline;
        ProcessActuator {
            config,
            target: 0,
            running: None,
        }
    }

    /// Sets `key=value` in every worker's environment (such as `REDIS_URL`, which then stays
    /// off the command line).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.config.env.push((key.into(), value.into()));
        self
    }

    /// The command as logs show it (e.g. with a password redacted).
    pub fn shown_as(mut self, shown: impl Into<String>) -> Self {
        self.config.shown = shown.into();
        self
    }

    /// Workers keep running when this process exits (`--leave-workers`): they are not told
    /// to die with it.
    pub fn leave_running(mut self) -> Self {
        self.config.die_with_parent = false;
        self
    }

    /// The workers kept (the target: a worker being restarted after a crash counts).
    pub fn current(&self) -> u32 {
        self.target
    }

    /// The fleet's status, once it runs.
    pub fn status(&self) -> Option<rivulet_fleet::FleetStatus> {
        self.running.as_ref().map(|r| r.handle.status())
    }

    /// Moves the fleet towards `desired` workers, stopping the ones in `idle` first. Fails
    /// when the fleet has stopped on its own (the crash-loop guard tripped), with its reason.
    pub async fn scale_to(&mut self, desired: u32, idle: &[u32]) -> anyhow::Result<()> {
        self.target = desired;
        match self.running.take() {
            None => {
                let (fleet, handle) = Fleet::new(self.config.clone(), desired);
                let stop = Stop::new();
                let task = tokio::spawn(fleet.run(stop.clone()));
                self.running = Some(RunningFleet { handle, stop, task });
                Ok(())
            }
            // It never ends on its own but with an error; awaiting a finished task is instant.
            Some(RunningFleet { task, .. }) if task.is_finished() => match task.await {
                Ok(Err(e)) => Err(anyhow!(e)),
                Ok(Ok(_)) => Err(anyhow!("the worker processes stopped")),
                Err(e) => Err(anyhow!("the worker fleet task failed: {e}")),
            },
            Some(running) => {
                running.handle.scale_to(desired, idle);
                self.running = Some(running);
                Ok(())
            }
        }
    }

    /// Stops every worker gracefully and waits for them (each is killed at the hard
    /// deadline). When `force` resolves first (a second signal), kills them at once and
    /// returns false; true when every worker drained or was killed at the deadline.
    pub async fn shutdown(&mut self, force: impl Future<Output = ()>) -> bool {
        let Some(RunningFleet { stop, mut task, .. }) = self.running.take() else {
            return true;
        };
        stop.drain.cancel();
        tokio::pin!(force);
        let result = tokio::select! {
            r = &mut task => r,
            () = &mut force => {
                tracing::warn!("second signal: killing the workers at once");
                stop.now.cancel();
                task.await
            }
        };
        match result {
            Ok(Ok(_)) => true,
            Ok(Err(FleetError::StoppedAtOnce)) => false,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "draining the workers");
                !stop.now.is_cancelled()
            }
            Err(e) => {
                tracing::error!(error = %e, "the worker fleet task failed");
                false
            }
        }
    }

    /// Leaves the workers running (the daemon exits without stopping them).
    pub fn detach(&mut self) {
        if let Some(RunningFleet { task, .. }) = self.running.take() {
            // The workers were started without the parent's pid and without kill-on-drop:
            // ending the fleet's task leaves them running on their own.
            task.abort();
        }
    }
}

/// Runs a scale command such as `kubectl scale deploy/workers --replicas={replicas}`.
#[derive(Debug)]
pub struct CommandActuator {
    template: String,
    applied: Option<u32>,
}

/// The error for a `--scale-cmd` without `{replicas}`.
pub const SCALE_CMD_NEEDS_REPLICAS: &str =
    "--scale-cmd must contain {replicas}, e.g. \"kubectl scale deploy/workers --replicas={replicas}\"";

impl CommandActuator {
    /// `template` must contain `{replicas}`.
    pub fn new(template: String) -> anyhow::Result<Self> {
        if !template.contains("{replicas}") {
            bail!(SCALE_CMD_NEEDS_REPLICAS);
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
