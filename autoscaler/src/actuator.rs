//! Act: make the number of worker processes match the decision.
//!
//! - [`ProcessActuator`] runs workers as child processes of the daemon (`sh -c "exec
//!   <worker-cmd>"`: the worker replaces the shell, so the child's pid is the worker's).
//!   - Each worker leads its **own process group**: a terminal's Ctrl-C, `timeout` or a signal
//!     to the autoscaler's group reaches only the autoscaler, which then drains its workers
//!     itself. (In the autoscaler's group, a worker would get the group's signal and then the
//!     autoscaler's SIGTERM as a second signal, which stops it at once.)
//!   - Workers **die with the autoscaler**, also when it is SIGKILLed: they get
//!     `RIVULET_SUPERVISOR_PID`, on which `worker-cli work` asks the kernel for SIGKILL when its
//!     parent dies (`PR_SET_PDEATHSIG`) and checks that its parent is the autoscaler. Not set
//!     with [`ProcessActuator::leave_running`], whose workers outlive the autoscaler.
//!   - Scale-down sends SIGTERM to idle workers first (a worker drains its in-flight tasks on
//!     SIGTERM), waits for them, and only sends SIGKILL after `hard_deadline`. Signals go to the
//!     worker's process group, which is the worker itself plus anything it started in its group.
//!   - Workers that crash after running a while are replaced at once. A worker that exits
//!     within [`FAST_EXIT`] of starting (a wrong command, a missing binary, a bad flag) is a
//!     *fast failure*: starts are held back for [`restart_delay`], doubling with each
//!     consecutive fast failure up to [`RESTART_CAP`], and each is logged as an error with the
//!     command and its exit status.
//! - [`CommandActuator`] runs a template with `{replicas}` (for an orchestrator's scale
//!   command) and reports its failures.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Default time a stopping worker gets before it is killed.
pub const DEFAULT_HARD_DEADLINE: Duration = Duration::from_secs(120);
/// A worker that exits on its own sooner than this after starting is a fast failure.
pub const FAST_EXIT: Duration = Duration::from_secs(10);
/// Hold-back after the first fast failure.
pub const RESTART_BASE: Duration = Duration::from_secs(1);
/// Longest hold-back between starts after consecutive fast failures.
pub const RESTART_CAP: Duration = Duration::from_secs(60);
/// Environment variable naming the autoscaler's pid for its workers (`worker-cli work` then
/// dies with it; see the module docs).
pub const SUPERVISOR_PID_ENV: &str = "RIVULET_SUPERVISOR_PID";

/// Time to hold back starts after `n` consecutive fast failures (none for `n == 0`):
/// [`RESTART_BASE`] doubled per failure after the first, at most [`RESTART_CAP`].
pub fn restart_delay(n: u32) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let exp = (n - 1).min(16);
    RESTART_BASE.saturating_mul(1 << exp).min(RESTART_CAP)
}

/// Whether a worker that ran for `ran` before exiting on its own is a fast failure.
pub fn is_fast_exit(ran: Duration) -> bool {
    ran < FAST_EXIT
}

/// An exit status in words, with what the shell's 126 and 127 mean.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(127), _) => "exit status 127: command not found (is it installed and on PATH?)".to_owned(),
        (Some(126), _) => "exit status 126: command found but not executable (permissions?)".to_owned(),
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {sig} ({s})"),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => status.to_string(),
    }
}

/// Signals a worker's process group (it leads one: `process_group(0)`), or only the worker
/// if that group is gone.
fn signal_worker(child: &Child, sig: Signal) -> nix::Result<()> {
    // `id` is None once the child has been reaped: its pid may then name another process.
    let Some(pid) = child.id() else {
        return Ok(());
    };
    let pid = Pid::from_raw(pid as i32);
    match killpg(pid, sig) {
        Err(Errno::ESRCH) => kill(pid, sig),
        r => r,
    }
}

#[derive(Debug)]
struct Worker {
    child: Child,
    pid: u32,
    started: Instant,
}

#[derive(Debug)]
struct Stopping {
    child: Child,
    pid: u32,
    since: Instant,
}

/// Runs worker processes as children.
#[derive(Debug)]
pub struct ProcessActuator {
    command: String,
    shown: String,
    env: Vec<(String, String)>,
    die_with_parent: bool,
    running: Vec<Worker>,
    stopping: Vec<Stopping>,
    hard_deadline: Duration,
    crashes: u64,
    started: u64,
    fast_failures: u32,
    hold_until: Option<Instant>,
    /// When the last fast failure was seen: only a worker started after it proves the
    /// command works again.
    last_fast_failure: Option<Instant>,
}

impl ProcessActuator {
    /// Workers are started as `sh -c "exec <command>"`, each in its own process group, and
    /// die with this process (see the module docs).
    ///
    /// Workers must be started from a thread that lives as long as the process (the daemon
    /// does: it runs on the main thread): the parent-death signal fires when the thread that
    /// forked the worker exits.
    pub fn new(command: String, hard_deadline: Duration) -> Self {
        ProcessActuator {
            shown: command.clone(),
            command,
            env: Vec::new(),
            die_with_parent: true,
            running: Vec::new(),
            stopping: Vec::new(),
            hard_deadline,
            crashes: 0,
            started: 0,
            fast_failures: 0,
            hold_until: None,
            last_fast_failure: None,
        }
    }

    /// Sets `key=value` in every worker's environment (such as `REDIS_URL`, which then stays
    /// off the command line).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The command as logs show it (e.g. with a password redacted).
    pub fn shown_as(mut self, shown: impl Into<String>) -> Self {
        self.shown = shown.into();
        self
    }

    /// Workers keep running when this process exits (`--leave-workers`): they are not told
    /// to die with it.
    pub fn leave_running(mut self) -> Self {
        self.die_with_parent = false;
        self
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

    /// Workers started so far.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Consecutive fast failures (0 once a worker has run for [`FAST_EXIT`]).
    pub fn fast_failures(&self) -> u32 {
        self.fast_failures
    }

    /// Time left before the next worker may start, after fast failures.
    pub fn backoff_remaining(&self) -> Option<Duration> {
        self.hold_until
            .map(|t| t.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Pids of running workers.
    pub fn pids(&self) -> Vec<u32> {
        self.running.iter().map(|w| w.pid).collect()
    }

    /// Counts one more fast failure and holds starts back accordingly; returns the delay.
    fn back_off(&mut self) -> Duration {
        self.fast_failures = self.fast_failures.saturating_add(1);
        let delay = restart_delay(self.fast_failures);
        self.hold_until = Some(Instant::now() + delay);
        delay
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            // exec: the worker replaces the shell, so the child's pid is the worker's.
            .arg(format!("exec {}", self.command))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // Its own process group: signals for the autoscaler's group (Ctrl-C, `timeout`)
            // do not reach it; the autoscaler drains it instead.
            .process_group(0)
            .kill_on_drop(true);
        if self.die_with_parent {
            cmd.env(SUPERVISOR_PID_ENV, std::process::id().to_string());
        } else {
            cmd.env_remove(SUPERVISOR_PID_ENV);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start worker command {:?}", self.shown))?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(pid, "worker started");
        self.started += 1;
        self.running.push(Worker {
            child,
            pid,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Reaps exited children: crashed running ones are forgotten (and counted: a fast
    /// failure holds the next start back), stopped ones forgotten; stopping ones past the
    /// hard deadline are killed.
    pub fn reap(&mut self) {
        let now = Instant::now();
        let mut exited = Vec::new();
        self.running.retain_mut(|w| match w.child.try_wait() {
            Ok(Some(status)) => {
                exited.push((w.pid, now.saturating_duration_since(w.started), status));
                false
            }
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(pid = w.pid, error = %e, "could not check on worker");
                true
            }
        });
        let mut fast = Vec::new();
        for (pid, ran, status) in exited {
            if status.success() {
                // A clean exit is a worker recycling itself (`--max-tasks`): replaced at once,
                // however short its life, and no sign that the command is broken.
                tracing::info!(pid, ran = ?ran, "worker exited cleanly; replacing it");
                continue;
            }
            self.crashes += 1;
            if is_fast_exit(ran) {
                fast.push((pid, ran, status));
            } else {
                tracing::warn!(
                    pid,
                    status = %describe_exit(status),
                    ran = ?ran,
                    "worker exited on its own; replacing it"
                );
                // It ran a while: the command works.
                self.fast_failures = 0;
                self.hold_until = None;
            }
        }
        // Workers that fail together (as all do when the command is wrong) count once.
        if let Some((pid, ran, status)) = fast.last().copied() {
            let delay = self.back_off();
            self.last_fast_failure = Some(now);
            tracing::error!(
                command = %self.shown,
                pid,
                status = %describe_exit(status),
                ran = ?ran,
                workers = fast.len(),
                fast_failures = self.fast_failures,
                next_start_in = ?delay,
                "worker command exited right after starting; holding back restarts"
            );
        }
        // Workers that were already running say nothing about the command as it is now (it
        // may have been replaced on disk): only one started after the last fast failure does.
        let proven = |w: &Worker| {
            self.last_fast_failure.is_none_or(|failed| w.started > failed)
                && now.saturating_duration_since(w.started) >= FAST_EXIT
        };
        if self.fast_failures > 0 && self.running.iter().any(proven) {
            tracing::info!("a worker has run for {FAST_EXIT:?}: the worker command works again");
            self.fast_failures = 0;
            self.hold_until = None;
        }
        let deadline = self.hard_deadline;
        self.stopping.retain_mut(|s| match s.child.try_wait() {
            Ok(Some(status)) => {
                tracing::info!(pid = s.pid, status = %describe_exit(status), "worker stopped");
                false
            }
            _ => {
                if s.since.elapsed() > deadline {
                    tracing::error!(pid = s.pid, ?deadline, "worker did not drain in time; killing it");
                    if let Err(e) = signal_worker(&s.child, Signal::SIGKILL) {
                        tracing::warn!(pid = s.pid, error = %e, "could not kill worker");
                    }
                }
                true
            }
        });
    }

    /// Moves towards `desired` running workers. `idle` lists pids known to hold no task:
    /// they are stopped first, then the youngest. Starts wait while fast failures hold them
    /// back; a start that fails counts as a fast failure.
    pub fn scale_to(&mut self, desired: u32, idle: &[u32]) {
        self.reap();
        while self.current() < desired {
            if let Some(left) = self.backoff_remaining() {
                tracing::debug!(
                    wanted = desired,
                    running = self.current(),
                    next_start_in = ?left,
                    "holding back worker starts after fast failures"
                );
                break;
            }
            if let Err(e) = self.spawn() {
                let delay = self.back_off();
                tracing::error!(
                    error = format!("{e:#}"),
                    fast_failures = self.fast_failures,
                    next_start_in = ?delay,
                    "could not start a worker"
                );
                break;
            }
        }
        while self.current() > desired {
            let pick = self
                .running
                .iter()
                .rposition(|w| idle.contains(&w.pid))
                .unwrap_or(self.running.len() - 1);
            let worker = self.running.remove(pick);
            self.terminate(worker);
        }
    }

    fn terminate(&mut self, worker: Worker) {
        tracing::info!(
            pid = worker.pid,
            "stopping worker (SIGTERM: it drains its in-flight tasks)"
        );
        if let Err(e) = signal_worker(&worker.child, Signal::SIGTERM) {
            tracing::warn!(pid = worker.pid, error = %e, "could not signal worker");
        }
        self.stopping.push(Stopping {
            child: worker.child,
            pid: worker.pid,
            since: Instant::now(),
        });
    }

    /// Stops every worker gracefully and waits up to the hard deadline, then kills the rest.
    /// When `force` resolves first (a second signal), kills them at once and returns false;
    /// true when every worker drained or the deadline passed.
    pub async fn shutdown(&mut self, force: impl Future<Output = ()>) -> bool {
        let all: Vec<Worker> = self.running.drain(..).collect();
        for worker in all {
            self.terminate(worker);
        }
        let deadline = Instant::now() + self.hard_deadline;
        tokio::pin!(force);
        let mut forced = false;
        for s in &mut self.stopping {
            if !forced {
                tokio::select! {
                    biased;
                    status = s.child.wait() => {
                        if let Ok(status) = status {
                            tracing::info!(pid = s.pid, status = %describe_exit(status), "worker stopped");
                        }
                        continue;
                    }
                    () = &mut force => {
                        forced = true;
                        tracing::warn!("second signal: killing the workers at once");
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        tracing::error!(pid = s.pid, "worker did not drain in time; killing it");
                    }
                }
            }
            if let Err(e) = signal_worker(&s.child, Signal::SIGKILL) {
                tracing::warn!(pid = s.pid, error = %e, "could not kill worker");
            }
            let _ = s.child.wait().await;
        }
        self.stopping.clear();
        !forced
    }

    /// Leaves the workers running (the daemon exits without stopping them).
    pub fn detach(&mut self) {
        let children = self.running.drain(..).map(|w| w.child);
        for c in children.chain(self.stopping.drain(..).map(|s| s.child)) {
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

#[cfg(test)]
mod tests {
    use rivulet::testing::wait_until;

    use super::*;

    /// Ticks `a` every 50 ms (about as close together as workers that fail together exit)
    /// until `done` holds, for at most 10 s; returns whether it did.
    async fn tick_until(
        a: &mut ProcessActuator,
        mut tick: impl FnMut(&mut ProcessActuator),
        done: impl Fn(&ProcessActuator) -> bool,
    ) -> bool {
        for _ in 0..200 {
            if done(a) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            tick(a);
        }
        done(a)
    }

    /// Whether `/proc/PID/comm` of `pid` becomes `name` (the shell has exec'd) within 5 s.
    async fn becomes(pid: u32, name: &str) -> bool {
        wait_until(Duration::from_secs(5), || {
            let ok = std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name);
            async move { ok }
        })
        .await
    }

    #[test]
    fn restart_delay_doubles_per_fast_failure_up_to_the_cap() {
        assert_eq!(restart_delay(0), Duration::ZERO);
        assert_eq!(restart_delay(1), RESTART_BASE);
        assert_eq!(restart_delay(2), RESTART_BASE * 2);
        assert_eq!(restart_delay(3), RESTART_BASE * 4);
        assert_eq!(restart_delay(6), RESTART_CAP.min(RESTART_BASE * 32));
        assert_eq!(restart_delay(7), RESTART_CAP);
        assert_eq!(restart_delay(u32::MAX), RESTART_CAP);
        assert!((1..100).all(|n| restart_delay(n) <= restart_delay(n + 1)));
    }

    #[test]
    fn only_quick_exits_are_fast_failures() {
        assert!(is_fast_exit(Duration::ZERO));
        assert!(is_fast_exit(FAST_EXIT - Duration::from_millis(1)));
        assert!(!is_fast_exit(FAST_EXIT));
        assert!(!is_fast_exit(Duration::from_secs(3600)));
    }

    #[test]
    fn exit_statuses_are_described_with_the_shell_conventions() {
        let exit = |code: i32| ExitStatus::from_raw(code << 8);
        assert!(describe_exit(exit(127)).contains("command not found"));
        assert!(describe_exit(exit(126)).contains("not executable"));
        assert_eq!(describe_exit(exit(3)), "exit status 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by signal 9 (SIGKILL)");
    }

    #[tokio::test]
    async fn a_command_that_fails_at_once_is_held_back_not_respawned_every_tick() {
        let mut a = ProcessActuator::new("rivulet-no-such-worker-command".into(), Duration::from_secs(5));
        a.scale_to(3, &[]);
        assert_eq!((a.current(), a.started()), (3, 3));
        // All three exit with 127 at once: one fast failure, starts held back.
        tick_until(&mut a, |a| a.scale_to(3, &[]), |a| a.current() == 0).await;
        assert_eq!((a.current(), a.crashes(), a.fast_failures()), (0, 3, 1));
        assert!(a.backoff_remaining().is_some());
        // Ticks during the hold-back start nothing.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.scale_to(3, &[]);
        }
        assert_eq!(a.started(), 3);
        // After it, the next attempt starts workers again; their failure doubles the delay.
        assert!(tick_until(&mut a, |_| {}, |a| a.backoff_remaining().is_none()).await);
        a.scale_to(3, &[]);
        assert_eq!(a.started(), 6);
        tick_until(&mut a, |a| a.scale_to(3, &[]), |a| a.fast_failures() >= 2).await;
        assert_eq!(a.fast_failures(), 2);
        assert!(a.backoff_remaining().unwrap() > RESTART_BASE);
    }

    #[tokio::test]
    async fn a_clean_exit_is_a_recycle_not_a_failure() {
        // `--max-tasks` workers exit 0, however soon: replaced at once, nothing held back.
        let mut a = ProcessActuator::new("true".into(), Duration::from_secs(5));
        a.scale_to(2, &[]);
        tick_until(&mut a, |a| a.scale_to(2, &[]), |a| a.started() >= 6).await;
        assert!(a.started() >= 6, "replaced at once: {} starts", a.started());
        assert_eq!((a.fast_failures(), a.crashes()), (0, 0));
        assert!(a.backoff_remaining().is_none());
    }

    #[tokio::test]
    async fn a_worker_older_than_the_failure_does_not_lift_the_hold_back() {
        // A long-running worker, then the command breaks (say, replaced on disk).
        let dir = std::env::temp_dir().join(format!("rivulet-actuator-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("ok");
        std::fs::write(&ok, b"").unwrap();
        let cmd = format!("sh -c 'test -e {} && exec sleep 30 || exit 3'", ok.display());
        let mut a = ProcessActuator::new(cmd, Duration::from_secs(5));
        a.scale_to(1, &[]);
        assert_eq!(a.current(), 1);
        // Past its check of the command: sleeping.
        assert!(becomes(a.pids()[0], "sleep").await);
        a.running[0].started -= FAST_EXIT * 2;
        std::fs::remove_file(&ok).unwrap();
        a.scale_to(2, &[]);
        tick_until(&mut a, ProcessActuator::reap, |a| a.fast_failures() > 0).await;
        assert_eq!(a.fast_failures(), 1);
        a.reap();
        assert!(a.backoff_remaining().is_some(), "the old worker lifted the hold-back");
        assert_eq!(a.current(), 1, "the old worker still runs");
        assert!(a.shutdown(std::future::pending()).await);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn workers_lead_their_own_process_group_and_are_stopped_through_it() {
        let mut a = ProcessActuator::new("sleep 30".into(), Duration::from_secs(5));
        a.scale_to(1, &[]);
        let pid = a.pids()[0];
        // exec: the child is the worker itself, leading its own group.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        let pgrp: u32 = fields[2].parse().unwrap();
        assert_eq!(pgrp, pid, "{stat}");
        assert_ne!(pgrp, nix::unistd::getpgrp().as_raw() as u32);
        // The shell becomes the worker (same pid) once it has exec'd.
        assert!(becomes(pid, "sleep").await);
        // The kernel renames the process before it lays out the new environment: until then
        // /proc/PID/environ reads empty, so wait for it to appear.
        let own = format!("{SUPERVISOR_PID_ENV}={}", std::process::id());
        let has_own = || {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            environ.split(|b| *b == 0).any(|v| v == own.as_bytes())
        };
        let appeared = wait_until(Duration::from_secs(5), || {
            let ok = has_own();
            async move { ok }
        })
        .await;
        assert!(appeared, "{SUPERVISOR_PID_ENV} missing from the worker's environment");
        assert!(a.shutdown(std::future::pending()).await);
        assert_eq!((a.current(), a.stopping()), (0, 0));
    }
}
