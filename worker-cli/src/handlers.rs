//! Task kinds served without writing Rust: the built-ins (`noop`, `sleep`, `fail`) and
//! `--exec KIND=COMMAND`, which runs a shell command per task.
//!
//! The exec contract: `sh -c COMMAND` gets the payload on stdin and the task in
//! `RIVULET_TASK_ID`, `RIVULET_KIND`, `RIVULET_ATTEMPT`, `RIVULET_QUEUE`, `RIVULET_PRIORITY`.
//! Exit 0 = done; exit 75 (`EX_TEMPFAIL`) = retry later, after the delay named by a last stderr
//! line `retry-after=DURATION` if there is one (this still uses up an attempt, like any
//! failure); exit 65 (`EX_DATAERR`) = fatal, straight to the dead-letter stream as `fatal` with
//! no retry (what `HandlerError::fatal` is for Rust handlers); any other exit = failed (retried
//! until attempts run out, then dead-lettered as `exhausted`). The last [`STDERR_TAIL`] bytes
//! of stderr become the task's error. Every line the command writes (stdout and stderr) is a log
//! event (`task output`, with `task_id`, `kind`, `stream` and `line`), so a JSON log stays one
//! JSON object per line. The command runs in its own process group, killed as a whole when the task
//! ends before it does (timeout, drain deadline, cancel).
//!
//! Results, progress, cancel: the command's stdout is the task's result (stored as codec
//! `bytes`, up to the worker's result cap; nothing printed = no result). It reports progress by
//! writing lines `PERCENT MESSAGE` (e.g. `40 resizing`) to the pipe whose file descriptor is
//! `RIVULET_PROGRESS_FD`; `RIVULET_PROGRESS_FILE` names the same pipe as a path
//! (`/proc/self/fd/N`) for shells whose redirections take single-digit descriptors only (dash:
//! `echo "40 resizing" > "$RIVULET_PROGRESS_FILE"`). The worker writes the latest report a few
//! times a second. When the task is cancelled the process group gets SIGTERM, and
//! SIGKILL [`CANCEL_GRACE`] later if it is still running; the task ends `cancelled`.
//!
//! A command dies with its worker, however the worker dies (SIGKILL, the OOM killer): it runs
//! under a small guard, this same binary started as `GUARD_ARG WORKER_PID COMMAND`
//! ([`guard_main`]), which leads the command's process group, asks the kernel for a signal
//! when the worker dies (`PR_SET_PDEATHSIG`, set in the guard itself, so no `unsafe`
//! `pre_exec` is needed) and then SIGKILLs the whole group. Without it an orphaned command
//! finished its task while the task was reclaimed and run again: after a SIGKILL, every long
//! task ran twice, concurrently. A process that leaves the group (`setsid`, its own
//! `setpgid`) escapes the guard, as it escapes the cancel.

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getppid};
use rivulet::{HandlerError, Router, TaskContext};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::values::ExecSpec;

/// Exit code meaning "temporary failure, retry later" (`EX_TEMPFAIL` from sysexits.h).
pub const EXIT_RETRY_LATER: i32 = 75;
/// Exit code meaning "fatal: do not retry", straight to the dead-letter stream (`EX_DATAERR`
/// from sysexits.h, "the input data was incorrect"). Why 65: it is the sysexits code for the
/// commonest reason a retry cannot help (a bad payload); it is not 1 or 2 (what scripts and
/// shells return for ordinary errors, which should keep their retries), not 126/127 (the shell
/// could not run the command: a deploy problem a retry may outlive) and not 128+N (killed by a
/// signal), and it is far from 75, so a typo cannot turn one into the other.
pub const EXIT_FATAL: i32 = 65;
/// Bytes of a command's stderr kept as the task's error.
pub const STDERR_TAIL: usize = 2048;
/// After the command exits, how long to keep reading stderr that a leftover background
/// process may still hold open.
const STDERR_LINGER: Duration = Duration::from_millis(200);
/// Time between SIGTERM and SIGKILL when a running command's task is cancelled (well within
/// the engine's own cancel grace, so the command is stopped, not abandoned).
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// The environment variable naming the progress file descriptor.
pub const PROGRESS_FD_ENV: &str = "RIVULET_PROGRESS_FD";
/// The environment variable naming the progress pipe as a path.
pub const PROGRESS_FILE_ENV: &str = "RIVULET_PROGRESS_FILE";
/// Most stdout kept as a result: more fails the task (the worker's result cap is usually far
/// lower and fails it with its own message first).
const STDOUT_LIMIT: usize = 64 * 1024 * 1024;

/// The built-in kinds, each added unless `router` already serves that kind (a user's compiled
/// handler wins).
pub fn with_builtins(router: Router) -> Router {
    let mut router = router;
    if !router.serves("noop") {
        router = router.route_bytes("noop", |_ctx: TaskContext, _payload: Bytes| async { Ok(()) });
    }
    if !router.serves("sleep") {
        router = router.route("sleep", |_ctx: TaskContext, p: SleepPayload| async move {
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
            Ok(())
        });
    }
    if !router.serves("fail") {
        router = router.route_bytes("fail", |ctx: TaskContext, _payload: Bytes| async move {
            Err(HandlerError::retry(format!(
                "the built-in `fail` kind always fails (attempt {})",
                ctx.attempt + 1
            )))
        });
    }
    router
}

/// Serves each `--exec` kind with its command (replacing a built-in or compiled handler of the
/// same kind: the flag is the more explicit choice).
pub fn with_exec(router: Router, specs: &[ExecSpec]) -> Router {
    let mut router = router;
    for spec in specs {
        if router.serves(&spec.kind) {
            tracing::info!(kind = %spec.kind, "--exec replaces the handler this binary has for the kind");
        }
        let command: Arc<str> = spec.command.as_str().into();
        // A json or msgpack payload that does not parse is malformed, as the wire format says:
        // checked before the command starts (one pass over the payload, next to a spawn).
        router = router.route_encoded(&spec.kind, move |ctx: TaskContext, payload: Bytes| {
            let command = command.clone();
            async move { run_command(&command, &ctx, payload).await }
        });
    }
    router
}

/// Payload of the built-in `sleep` kind.
#[derive(Debug, Deserialize)]
pub struct SleepPayload {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
}

/// Kills a command's whole process group if the task ends before the command does (the future
/// was dropped: timeout or drain deadline). `kill_on_drop` alone would reach only `sh`, not
/// what it started.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // ESRCH (the group is already gone) is the expected race; nothing else to do.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// The first argument that makes this binary an exec guard rather than the CLI (see the
/// module docs): `worker-cli __rivulet-exec-guard WORKER_PID COMMAND`.
pub const GUARD_ARG: &str = "__rivulet-exec-guard";
/// How often a guard checks that its worker is still its parent, besides the death signal.
const GUARD_CHECK: Duration = Duration::from_millis(250);
/// Whether commands run under the guard: always, except in this crate's unit tests, whose
/// binary (`/proc/self/exe` there) is the test harness, not the CLI. The CLI tests run the
/// guard end to end.
const GUARDED: bool = !cfg!(test);
/// Exit status of a guard that found its worker gone before the command started.
const GUARD_ORPHANED: u8 = 70;

/// The guard's side: `args` are `[program, GUARD_ARG, worker pid, command]`. Runs `sh -c
/// command` in this process's group (the worker made it a group of its own), with this
/// process's stdin, stdout, stderr and environment, and ends as the command ended: its exit
/// code, or the same signal. When the worker dies first, kills the group (itself included).
pub fn guard_main(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (Some(worker), Some(command)) = (
        args.get(2).and_then(|p| p.to_str()).and_then(|p| p.parse::<i32>().ok()),
        args.get(3),
    ) else {
        eprintln!("usage: {GUARD_ARG} WORKER_PID COMMAND (started by a worker for --exec, not by hand)");
        return ExitCode::from(2);
    };
    let worker = Pid::from_raw(worker);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("exec guard: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // The handler first: the death signal must not take its default action (which would end
        // the guard and leave the command running).
        let mut death = signal(SignalKind::hangup()).map_err(|e| format!("installing the SIGHUP handler: {e}"))?;
        nix::sys::prctl::set_pdeathsig(Signal::SIGHUP).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
        // The worker may have died before the request: then nobody waits for the result.
        if getppid() != worker {
            return Ok(None);
        }
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .spawn()
            .map_err(|e| format!("cannot start `sh -c {}`: {e}", command.to_string_lossy()))?;
        let mut check = tokio::time::interval(GUARD_CHECK);
        loop {
            tokio::select! {
                status = child.wait() => return status.map(Some).map_err(|e| format!("waiting for the command: {e}")),
                // The death signal also comes when the worker *thread* that started the guard
                // exits while the worker lives on: only a new parent means the worker is gone.
                _ = death.recv() => {}
                _ = check.tick() => {}
            }
            if getppid() != worker {
                // The whole group: the shell and whatever it started. This ends the guard too.
                let _ = killpg(nix::unistd::getpgrp(), Signal::SIGKILL);
            }
        }
    });
    match status {
        Ok(Some(status)) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
            (None, Some(sig)) => {
                // End as the command did, so the worker reads the same outcome. SIGHUP is
                // caught here: reported as the shell would, 128 + 1.
                if let Ok(sig) = Signal::try_from(sig)
                    && sig != Signal::SIGHUP
                {
                    let _ = nix::sys::signal::raise(sig);
                }
                ExitCode::from((128 + sig).clamp(0, 255) as u8)
            }
            (None, None) => ExitCode::FAILURE,
        },
        Ok(None) => ExitCode::from(GUARD_ORPHANED),
        Err(e) => {
            eprintln!("exec guard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `sh -c command` under the guard (see the module docs), in a process group of its own,
/// killed on drop, without the supervisor's contract variables: how `--exec` commands and
/// `--serve` handler processes start.
pub(crate) fn guarded_command(command: &str) -> tokio::process::Command {
    let mut cmd = if GUARDED {
        // This very binary, even if its file was replaced or deleted since it started.
        let mut cmd = tokio::process::Command::new("/proc/self/exe");
        cmd.arg(GUARD_ARG).arg(std::process::id().to_string()).arg(command);
        cmd
    } else {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(command);
        cmd
    };
    cmd.process_group(0).kill_on_drop(true);
    // Supervisor bookkeeping is not the command's business (and must not make a nested
    // worker-cli think it is supervised).
    for var in rivulet_fleet::contract::CONTRACT_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs one task through `sh -c command`, under the guard; its stdout is the result.
async fn run_command(command: &str, ctx: &TaskContext, payload: Bytes) -> Result<Option<Bytes>, HandlerError> {
    // The progress pipe: the write end is inherited by the command (not close-on-exec), the
    // read end is not. A command started by another task at the same moment may inherit the
    // write end too; that only delays an end-of-file this side never waits for.
    let (progress_rx, progress_tx) =
        nix::unistd::pipe().map_err(|e| HandlerError::retry(format!("cannot create the progress pipe: {e}")))?;
    nix::fcntl::fcntl(
        &progress_rx,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| HandlerError::retry(format!("cannot set up the progress pipe: {e}")))?;
    let mut cmd = guarded_command(command);
    cmd.env("RIVULET_TASK_ID", ctx.id.as_str())
        .env("RIVULET_KIND", &ctx.kind)
        .env("RIVULET_ATTEMPT", ctx.attempt.to_string())
        .env("RIVULET_QUEUE", ctx.queue.as_str())
        .env("RIVULET_PRIORITY", &*ctx.priority)
        .env(PROGRESS_FD_ENV, progress_tx.as_raw_fd().to_string())
        .env(PROGRESS_FILE_ENV, format!("/proc/self/fd/{}", progress_tx.as_raw_fd()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = cmd.spawn();
    drop(progress_tx);
    let mut child = spawned.map_err(|e| HandlerError::retry(format!("cannot start `sh -c {command}`: {e}")))?;
    let mut guard = GroupGuard(child.id().map(|id| Pid::from_raw(id as i32)));
    let stdin = child.stdin.take();
    let mut captured = Captured::new(ctx, child.stdout.take(), child.stderr.take());
    let mut progress = tokio::net::unix::pipe::Receiver::from_owned_fd(progress_rx).ok();
    let mut lines = Lines::default();

    // Feed stdin while reading stdout, stderr and progress and waiting, so no pipe can fill
    // up and stall the command. A command that never reads stdin makes the write fail
    // (EPIPE): that is fine.
    let write = async move {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&payload).await;
        }
    };
    tokio::pin!(write);
    let mut write_done = false;
    let mut cancelled = false;
    let kill_at = tokio::time::sleep(Duration::MAX);
    tokio::pin!(kill_at);
    let status = loop {
        tokio::select! {
            () = &mut write, if !write_done => write_done = true,
            () = captured.read_next(), if captured.open() => {}
            ready = readable(&progress), if progress.is_some() => {
                if ready.is_err() || !lines.drain(progress.as_ref(), ctx) {
                    progress = None;
                }
            }
            () = ctx.cancelled(), if !cancelled => {
                cancelled = true;
                tracing::info!(task_id = %ctx.id, "task cancelled: SIGTERM to the command");
                if let Some(pgid) = guard.0 {
                    let _ = killpg(pgid, Signal::SIGTERM);
                }
                kill_at.as_mut().reset(tokio::time::Instant::now() + CANCEL_GRACE);
            }
            () = &mut kill_at, if cancelled => {
                tracing::warn!(task_id = %ctx.id, grace = ?CANCEL_GRACE, "the command outlived SIGTERM: SIGKILL");
                if let Some(pgid) = guard.0 {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                kill_at.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
            status = child.wait() => break status,
        }
    };
    // The command is done: do not kill what it deliberately left running. Its last progress
    // lines are in the pipe already: read them without waiting (another command may hold the
    // write end, so no end-of-file is coming).
    guard.0 = None;
    lines.drain(progress.as_ref(), ctx);
    let _ = tokio::time::timeout(STDERR_LINGER, async {
        while captured.open() {
            captured.read_next().await;
        }
    })
    .await;
    let (out, tail) = captured.finish();
    let status = status.map_err(|e| HandlerError::retry(format!("waiting for `sh -c {command}`: {e}")))?;
    if cancelled {
        return Err(HandlerError::retry(format!("cancelled ({})", describe_exit(status))));
    }
    outcome(status, &tail.text())?;
    if out.overflow {
        return Err(HandlerError::fatal(format!(
            "the command printed more than {STDOUT_LIMIT} bytes on stdout (its result); nothing was stored"
        )));
    }
    Ok((!out.bytes.is_empty()).then(|| Bytes::from(out.bytes)))
}

/// Longest line logged as one event; a longer one is logged in pieces of this size.
const MAX_LINE: usize = 8 * 1024;

/// A command's output cut into lines, each logged as an event carrying the task (`task
/// output`), so a JSON log stays one object per line whatever the command prints. Stdout is
/// logged as well as kept as the result.
struct LogLines<'a> {
    ctx: &'a TaskContext,
    stream: &'static str,
    partial: Vec<u8>,
}

impl<'a> LogLines<'a> {
    fn new(ctx: &'a TaskContext, stream: &'static str) -> Self {
        LogLines {
            ctx,
            stream,
            partial: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                self.emit();
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
    }

    /// Logs what is left after the command closed its end (a last line without a newline).
    fn finish(&mut self) {
        if !self.partial.is_empty() {
            self.emit();
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.partial);
        let line = text.trim_end_matches('\r');
        tracing::info!(
            task_id = %self.ctx.id,
            kind = %self.ctx.kind,
            stream = self.stream,
            line,
            "task output"
        );
        self.partial.clear();
    }
}

/// A command's stdout, kept up to [`STDOUT_LIMIT`].
#[derive(Debug, Default)]
struct Output {
    bytes: Vec<u8>,
    overflow: bool,
}

impl Output {
    fn push(&mut self, data: &[u8]) {
        if self.bytes.len() + data.len() > STDOUT_LIMIT {
            self.overflow = true;
        } else {
            self.bytes.extend_from_slice(data);
        }
    }
}

/// A command's stdout (its result, logged too) and stderr (the tail is its error, logged),
/// read as they come: by the loop that waits for the command and, after it exited, for as long
/// as a leftover background process keeps a pipe open ([`STDERR_LINGER`]).
struct Captured<'a> {
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    out: Output,
    tail: Tail,
    out_log: LogLines<'a>,
    err_log: LogLines<'a>,
    obuf: [u8; 8192],
    ebuf: [u8; 4096],
}

impl<'a> Captured<'a> {
    fn new(
        ctx: &'a TaskContext,
        stdout: Option<tokio::process::ChildStdout>,
        stderr: Option<tokio::process::ChildStderr>,
    ) -> Self {
        Captured {
            stdout,
            stderr,
            out: Output::default(),
            tail: Tail::default(),
            out_log: LogLines::new(ctx, "stdout"),
            err_log: LogLines::new(ctx, "stderr"),
            obuf: [0; 8192],
            ebuf: [0; 4096],
        }
    }

    /// Whether either pipe is still open.
    fn open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// Waits for the next bytes on either pipe and keeps them; a pipe at end-of-file (or
    /// broken) is closed. Cancel-safe: a read dropped unfinished loses nothing.
    async fn read_next(&mut self) {
        tokio::select! {
            n = read_pipe(&mut self.stdout, &mut self.obuf), if self.stdout.is_some() => match n {
                Some(n) => {
                    self.out.push(&self.obuf[..n]);
                    self.out_log.push(&self.obuf[..n]);
                }
                None => self.stdout = None,
            },
            n = read_pipe(&mut self.stderr, &mut self.ebuf), if self.stderr.is_some() => match n {
                Some(n) => {
                    self.tail.push(&self.ebuf[..n]);
                    self.err_log.push(&self.ebuf[..n]);
                }
                None => self.stderr = None,
            },
            else => {}
        }
    }

    /// Logs the last partial lines; the result and the stderr tail.
    fn finish(mut self) -> (Output, Tail) {
        self.out_log.finish();
        self.err_log.finish();
        (self.out, self.tail)
    }
}

async fn read_pipe<R: tokio::io::AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    match pipe.as_mut()?.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

async fn readable(rx: &Option<tokio::net::unix::pipe::Receiver>) -> std::io::Result<()> {
    match rx {
        Some(rx) => rx.readable().await,
        None => std::future::pending().await,
    }
}

/// Progress bytes read so far, split into lines.
#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Reads what the pipe holds now (without waiting) and reports each complete line.
    /// Returns false once the pipe is closed or broken.
    fn drain(&mut self, rx: Option<&tokio::net::unix::pipe::Receiver>, ctx: &TaskContext) -> bool {
        let Some(rx) = rx else {
            return false;
        };
        let mut buf = [0u8; 4096];
        loop {
            match rx.try_read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = self.partial.drain(..=end).collect();
                        report_progress(ctx, String::from_utf8_lossy(&line).trim_end());
                    }
                    // A line longer than this is not a progress line: drop it.
                    if self.partial.len() > 64 * 1024 {
                        self.partial.clear();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// One progress line, `PERCENT [MESSAGE]`; anything else is ignored with a warning.
fn report_progress(ctx: &TaskContext, line: &str) {
    match parse_progress(line) {
        Some((percent, message)) => ctx.progress(percent, message),
        None => tracing::warn!(task_id = %ctx.id, line, "ignoring a progress line that is not `PERCENT MESSAGE`"),
    }
}

/// Parses a progress line (pure): `40 resizing` -> (40, "resizing"); a percent above 100 is
/// 100; `40.5` rounds down.
pub fn parse_progress(line: &str) -> Option<(u8, &str)> {
    let line = line.trim();
    let (pct, message) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let pct = pct.strip_suffix('%').unwrap_or(pct);
    let value: f64 = pct.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some((value.min(100.0) as u8, message.trim()))
}

pub(crate) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exited".to_owned(),
    }
}

/// What an exit status means for the task (pure).
pub fn outcome(status: ExitStatus, stderr_tail: &str) -> Result<(), HandlerError> {
    let detail = |what: String| {
        if stderr_tail.is_empty() {
            what
        } else {
            format!("{what}: {stderr_tail}")
        }
    };
    match status.code() {
        Some(0) => Ok(()),
        Some(EXIT_RETRY_LATER) => match retry_after(stderr_tail) {
            Some(delay) => Err(HandlerError::retry_after(
                delay,
                detail(format!("exit {EXIT_RETRY_LATER} (retry later)")),
            )),
            None => Err(HandlerError::retry(detail(format!(
                "exit {EXIT_RETRY_LATER} (retry later)"
            )))),
        },
        Some(EXIT_FATAL) => Err(HandlerError::fatal(detail(format!("exit {EXIT_FATAL} (not retried)")))),
        Some(code) => Err(HandlerError::retry(detail(format!("exit {code}")))),
        None => {
            let signal = status.signal().map_or_else(|| "?".to_owned(), |s| s.to_string());
            Err(HandlerError::retry(detail(format!("killed by signal {signal}"))))
        }
    }
}

/// The delay in a last stderr line `retry-after=30s` (or `retry-after: 30s`), if any.
pub fn retry_after(stderr_tail: &str) -> Option<Duration> {
    let last = stderr_tail.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    let rest = last
        .strip_prefix("retry-after=")
        .or_else(|| last.strip_prefix("retry-after:"))?;
    humantime::parse_duration(rest.trim()).ok()
}

/// The last [`STDERR_TAIL`] bytes written to a pipe.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    bytes: std::collections::VecDeque<u8>,
    dropped: bool,
}

impl Tail {
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.bytes.extend(data);
        if self.bytes.len() > STDERR_TAIL {
            let excess = self.bytes.len() - STDERR_TAIL;
            self.bytes.drain(..excess);
            self.dropped = true;
        }
    }

    pub(crate) fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        let text = String::from_utf8_lossy(&v);
        let text = text.trim();
        if self.dropped {
            format!("...{text}")
        } else {
            text.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn exit_codes_map_to_done_retry_and_failure() {
        assert!(outcome(exit(0), "noise").is_ok());
        match outcome(exit(75), "busy") {
            Err(HandlerError::Retry(m)) => assert_eq!(m, "exit 75 (retry later): busy"),
            other => panic!("{other:?}"),
        }
        match outcome(exit(75), "busy\nretry-after=250ms\n") {
            Err(HandlerError::RetryAfter(d, _)) => assert_eq!(d, Duration::from_millis(250)),
            other => panic!("{other:?}"),
        }
        match outcome(exit(1), "") {
            Err(HandlerError::Retry(m)) => assert_eq!(m, "exit 1"),
            other => panic!("{other:?}"),
        }
        match outcome(exit(65), "bad payload") {
            Err(HandlerError::Fatal(m)) => assert_eq!(m, "exit 65 (not retried): bad payload"),
            other => panic!("{other:?}"),
        }
        match outcome(ExitStatus::from_raw(9), "") {
            Err(HandlerError::Retry(m)) => assert_eq!(m, "killed by signal 9"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_reads_only_the_last_line() {
        assert_eq!(retry_after("retry-after: 2s"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after("retry-after=2s\nlater words"), None);
        assert_eq!(retry_after("retry-after=soon"), None);
    }

    #[test]
    fn progress_lines_parse_percent_and_message() {
        assert_eq!(
            parse_progress("40 resizing the image"),
            Some((40, "resizing the image"))
        );
        assert_eq!(parse_progress("  75%  "), Some((75, "")));
        assert_eq!(parse_progress("250 over"), Some((100, "over")));
        assert_eq!(parse_progress("12.9 x"), Some((12, "x")));
        assert_eq!(parse_progress("soon"), None);
        assert_eq!(parse_progress("-1 x"), None);
    }

    #[tokio::test]
    async fn exec_stdout_is_the_result_progress_reaches_the_context_and_cancel_sends_sigterm() {
        let ctx = TaskContext {
            id: rivulet::TaskId::from_string("t-2"),
            kind: "k".into(),
            queue: rivulet::QueueName::new("q").unwrap(),
            priority: "normal".into(),
            attempt: 0,
            enqueued_at: 0,
            last_error: None,
            codec: rivulet::Codec::Json,
            control: rivulet::TaskControl::new(),
        };
        let cmd = r#"echo "30 thinking" > "$RIVULET_PROGRESS_FILE"; echo "60 still" >&2; printf 'the answer'"#;
        let out = run_command(cmd, &ctx, Bytes::new()).await.unwrap();
        assert_eq!(out.as_deref(), Some(&b"the answer"[..]));
        let p = ctx.control.latest().expect("a progress report");
        assert_eq!((p.percent, p.message.as_str()), (30, "thinking"));
        // Nothing printed: no result.
        assert_eq!(run_command("true", &ctx, Bytes::new()).await.unwrap(), None);
        // A cancel: SIGTERM to the group, the command's own exit, a cancelled outcome.
        // (It says when its trap is set: a SIGTERM before that would kill the shell itself.)
        let cmd = r#"trap 'exit 7' TERM; echo "1 trapped" > "$RIVULET_PROGRESS_FILE"; while :; do sleep 0.05; done"#;
        let control = ctx.control.clone();
        let run = tokio::spawn({
            let ctx = ctx.clone();
            async move { run_command(cmd, &ctx, Bytes::new()).await }
        });
        let trapped = rivulet::testing::wait_until(Duration::from_secs(10), async || {
            control.latest().is_some_and(|p| p.message == "trapped")
        })
        .await;
        assert!(trapped, "the command never set its trap");
        control.cancel();
        match run.await.unwrap() {
            Err(HandlerError::Retry(m)) => assert_eq!(m, "cancelled (exit 7)"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        t.push(&vec![b'a'; STDERR_TAIL]);
        t.push(b"the end\n");
        let text = t.text();
        assert!(text.starts_with("...") && text.ends_with("the end"), "{text}");
        assert_eq!(text.len(), STDERR_TAIL - 1 + 3);
    }

    #[tokio::test]
    async fn exec_passes_payload_and_environment_and_kills_on_cancel() {
        let ctx = TaskContext {
            id: rivulet::TaskId::from_string("t-1"),
            kind: "k".into(),
            queue: rivulet::QueueName::new("q").unwrap(),
            priority: "high".into(),
            attempt: 2,
            enqueued_at: 0,
            last_error: None,
            codec: rivulet::Codec::Json,
            control: rivulet::TaskControl::new(),
        };
        let cmd = r#"read -r body; echo "$body|$RIVULET_TASK_ID|$RIVULET_KIND|$RIVULET_ATTEMPT|$RIVULET_QUEUE|$RIVULET_PRIORITY" >&2; exit 3"#;
        match run_command(cmd, &ctx, Bytes::from_static(b"{\"a\": 1}\n")).await {
            Err(HandlerError::Retry(m)) => assert_eq!(m, "exit 3: {\"a\": 1}|t-1|k|2|q|high"),
            other => panic!("{other:?}"),
        }
        // A cancelled task kills the command and what it started.
        let dir = std::env::temp_dir().join(format!("wcli-exec-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let cmd = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let run = run_command(&cmd, &ctx, Bytes::new());
        let r = tokio::time::timeout(Duration::from_secs(1), run).await;
        assert!(r.is_err(), "the command should still be running");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let gone = rivulet::testing::wait_until(Duration::from_secs(10), || async move {
            nix::sys::signal::kill(Pid::from_raw(pid), None).is_err() || is_zombie(pid)
        })
        .await;
        std::fs::remove_dir_all(&dir).ok();
        assert!(gone, "the command's child {pid} survived the cancel");
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
            .unwrap_or(true)
    }
}
