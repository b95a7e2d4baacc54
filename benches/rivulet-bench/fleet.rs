//! The parent's side of the worker processes: spawns them (this binary, hidden `worker`
//! subcommand), tells them to stop by closing their stdin, and collects their reports.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::worker::WorkerOutput;

/// How each worker process of a fleet runs.
#[derive(Debug, Clone)]
pub struct Spec {
    pub redis_url: String,
    pub queue: String,
    pub concurrency: usize,
    /// What the workers' settles wait for (`fast`, `replicated:N`, `fsync`).
    pub durability: String,
    pub done_probe: bool,
    /// A worker stops by itself after this long.
    pub max_seconds: u64,
    /// The queue's record retention in ms (0 = lifecycle off; `None`: the default, on).
    pub retention_ms: Option<u64>,
    /// Limit flags for the workers (`--rate-limit=...`, `--max-running=...`).
    pub limits: Vec<String>,
    /// The CA to verify a `rediss://` server against.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Worker metrics on (`WorkerMetrics`, as `--metrics-addr` has them).
    pub metrics: bool,
}

/// Running worker processes; killed on drop if not stopped.
pub struct Fleet {
    children: Vec<Child>,
}

impl Fleet {
    pub fn spawn(spec: &Spec, processes: usize) -> Result<Fleet> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "worker".into(),
            "--redis-url".into(),
            spec.redis_url.clone().into(),
            "--queue".into(),
            spec.queue.clone().into(),
            "--concurrency".into(),
            spec.concurrency.to_string().into(),
            "--max-seconds".into(),
            spec.max_seconds.to_string().into(),
            "--durability".into(),
            spec.durability.clone().into(),
        ];
        if spec.done_probe {
            args.push("--done-probe".into());
        }
        if spec.metrics {
            args.push("--metrics".into());
        }
        if let Some(ms) = spec.retention_ms {
            args.extend(["--retention-ms".into(), ms.to_string().into()]);
        }
        args.extend(spec.limits.iter().map(Into::into));
        if let Some(ca) = &spec.tls_ca_file {
            args.extend(["--tls-ca-file".into(), ca.clone().into()]);
        }
        Fleet::start(&args, processes)
    }

    /// `processes` copies of this binary with `args` (a hidden subcommand and its flags),
    /// each reporting one [`WorkerOutput`] line on stdout when it stops.
    pub fn start(args: &[std::ffi::OsString], processes: usize) -> Result<Fleet> {
        let exe = std::env::current_exe().context("locating this binary to start worker processes")?;
        let mut children = Vec::with_capacity(processes);
        for _ in 0..processes {
            let child = Command::new(&exe)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker process")?;
            children.push(child);
        }
        Ok(Fleet { children })
    }

    /// CPU time (user + system) the worker processes have used so far, seconds (read from
    /// `/proc/<pid>/stat`, so a window's CPU is the difference of two reads).
    pub fn cpu_s(&self) -> f64 {
        self.children
            .iter()
            .filter_map(Child::id)
            .map(crate::worker::pid_cpu_s)
            .sum()
    }

    /// Closes every worker's stdin (they drain and stop), then reads their reports. A worker
    /// that has not exited within `timeout` is killed and the run fails.
    pub async fn stop(mut self, timeout: Duration) -> Result<Vec<WorkerOutput>> {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        let mut outputs = Vec::with_capacity(self.children.len());
        for child in &mut self.children {
            let mut stdout = child.stdout.take().context("worker stdout is piped")?;
            let collect = async {
                let mut text = String::new();
                stdout.read_to_string(&mut text).await?;
                let status = child.wait().await?;
                anyhow::Ok((status, text))
            };
            let (status, text) = match tokio::time::timeout(timeout, collect).await {
                Ok(r) => r?,
                Err(_) => {
                    let _ = child.start_kill();
                    bail!("a worker process did not stop within {timeout:?}");
                }
            };
            if !status.success() {
                bail!("a worker process failed ({status})");
            }
            let line = text.lines().last().unwrap_or_default();
            outputs.push(serde_json::from_str(line).with_context(|| format!("worker report {line:?}"))?);
        }
        Ok(outputs)
    }
}
