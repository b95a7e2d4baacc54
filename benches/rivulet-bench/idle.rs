//! Idle: what worker processes cost Redis when there is nothing to do.
//!
//! For each queue count, P real `worker-cli work` processes (the binary people run, built-in
//! `--exec` handler, nothing enqueued) serve that many queues, each with the default layout
//! (priorities high, normal, low; one shard each). Once every process has registered and a
//! warm-up has passed (start-up declares queues and consumer groups: not idle cost), `INFO
//! commandstats` and `INFO cpu` are read before and after a window: every command Redis ran
//! in it (calls inside Lua scripts included; only the harness's two `INFO`s are left out, by
//! count), per second and per process, the largest shares by command, Redis CPU per second,
//! and the worker processes' own CPU (`/proc/<pid>/stat`). The processes are stopped with SIGTERM at the end
//! and killed if they outlive it (or if the harness unwinds first: kill on drop).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rivulet::Queue;
use rivulet::testing::TempDir;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::target::Target;

/// What one idle measurement runs.
#[derive(Debug, Clone)]
pub struct IdleSpec {
    pub queues: usize,
    pub processes: usize,
    /// Seconds after every process registered before the window opens.
    pub warmup: f64,
    /// The measured window, seconds.
    pub seconds: f64,
    pub worker_cli: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub queues: usize,
    /// Priorities of each queue (its lanes: queues x priorities x shards, one shard here).
    pub priorities: usize,
    pub processes: usize,
    pub seconds: f64,
    /// Every command Redis ran in the window, per second and per idle process.
    pub commands_per_s_per_process: f64,
    /// The same per command, per second and per process.
    pub per_command: BTreeMap<String, f64>,
    /// Redis CPU (user + system) over the window, µs per second (1,000,000 = one core).
    pub redis_cpu_us_per_s: f64,
    /// Each worker process's CPU over the window, µs per second.
    pub worker_cpu_us_per_s_per_process: f64,
}

/// Where `worker-cli` is: `--worker-cli`, else next to this binary (cargo builds both into the
/// same `target/<profile>/`).
pub fn locate_worker_cli(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("worker-cli"),
    };
    if !path.is_file() {
        bail!(
            "worker-cli not found at {} (the idle scenario runs real worker-cli processes): build it with `cargo build [--release] -p worker-cli` or pass --worker-cli PATH",
            path.display()
        );
    }
    Ok(path)
}

/// `worker-cli work` processes; SIGTERM on [`Procs::stop`], killed on drop.
struct Procs {
    children: Vec<Child>,
    logs: TempDir,
}

impl Procs {
    fn spawn(cli: &Path, url: &str, queues: &str, processes: usize) -> Result<Procs> {
        let logs = TempDir::new("rivulet-bench-idle");
        let mut children = Vec::with_capacity(processes);
        for i in 0..processes {
            let log = std::fs::File::create(logs.path().join(format!("worker-{i}.log")))?;
            let child = Command::new(cli)
                .args(["work", "--redis-url", url, "--queue", queues, "--exec", "noop=true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", cli.display()))?;
            children.push(child);
        }
        Ok(Procs { children, logs })
    }

    /// Fails, with the end of its log, if a process has exited.
    fn check_alive(&mut self) -> Result<()> {
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(self.logs.path().join(format!("worker-{i}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "an idle worker-cli process exited ({status}): {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                );
            }
        }
        Ok(())
    }

    fn cpu_s(&self) -> f64 {
        self.children
            .iter()
            .filter_map(Child::id)
            .map(crate::worker::pid_cpu_s)
            .sum()
    }

    /// SIGTERM to each (a worker drains and deregisters), then waits; one still up after
    /// `timeout` is killed and the stop fails.
    async fn stop(mut self, timeout: Duration) -> Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for child in &self.children {
            if let Some(id) = child.id() {
                let _ = kill(Pid::from_raw(id as i32), Signal::SIGTERM);
            }
        }
        let mut stuck = 0;
        for child in &mut self.children {
            if tokio::time::timeout(timeout, child.wait()).await.is_err() {
                let _ = child.start_kill();
                stuck += 1;
            }
        }
        if stuck > 0 {
            bail!("{stuck} idle worker-cli process(es) did not stop within {timeout:?} of SIGTERM (killed)");
        }
        Ok(())
    }
}

pub async fn run(target: &Target, s: &IdleSpec) -> Result<IdleResult> {
    let names: Vec<String> = (0..s.queues).map(|i| format!("idle-q{}-{i}", s.queues)).collect();
    let queues: Vec<Queue> = names.iter().map(|n| Queue::new(n)).collect::<rivulet::Result<_>>()?;
    target.drop_queues(&queues).await?;
    let live = target.live_workers().await?;
    let mut procs = Procs::spawn(&s.worker_cli, &target.url, &names.join(","), s.processes)?;
    let t = Instant::now();
    let limit = Duration::from_secs(30) + Duration::from_millis(200) * s.processes as u32;
    while target.live_workers().await? < live + s.processes as u64 {
        procs.check_alive()?;
        if t.elapsed() > limit {
            bail!(
                "{} idle worker-cli processes did not all register within {limit:?}",
                s.processes
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(s.warmup)).await;

    let before = target.snapshot().await?;
    let cpu_before = procs.cpu_s();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(s.seconds)).await;
    let after = target.snapshot().await?;
    let cpu_after = procs.cpu_s();
    let window = t0.elapsed().as_secs_f64();
    procs.check_alive()?;
    procs.stop(Duration::from_secs(20)).await?;
    target.drop_queues(&queues).await?;

    let (redis_cpu_s, calls) = before.delta(&after);
    let per = (window * s.processes as f64).max(1e-9);
    let per_command: BTreeMap<String, f64> = calls
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| (name, n as f64 / per))
        .collect();
    Ok(IdleResult {
        queues: s.queues,
        priorities: queues.first().map_or(0, |q| q.layout().priorities.len()),
        processes: s.processes,
        seconds: window,
        commands_per_s_per_process: per_command.values().sum(),
        per_command,
        redis_cpu_us_per_s: redis_cpu_s * 1e6 / window.max(1e-9),
        worker_cpu_us_per_s_per_process: (cpu_after - cpu_before) * 1e6 / per,
    })
}
