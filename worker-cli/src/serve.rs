//! `--serve KINDS=COMMAND`: long-lived handler processes that take tasks over a line protocol
//! on their stdin and stdout (specified in `docs/serve-protocol.md`; the Python package's
//! `rivulet.handlers.serve()` speaks it).
//!
//! Each `--serve` flag is a [`Pool`] of one handler process per worker process, `sh -c
//! COMMAND` under the `--exec` guard (it dies with the worker, however the worker dies). The
//! worker keeps every Redis operation: the process only sees tasks and answers them.
//!
//! - **Start**: the worker writes `hello` (protocol version, kinds, concurrency); the process
//!   answers `ready` once it has loaded (within `--serve-start-timeout`); stdout lines before
//!   it that are not messages (an import-time print) are logged and skipped. A process that speaks
//!   another protocol version or does not serve a kind it was started for is refused: the
//!   worker stops with an error (a restart cannot fix a deploy).
//! - **Tasks**: a task takes one of the process's `--serve-concurrency` slots, is written as one
//!   `task` line, and ends with the process's `result` or `error` line (`progress` lines in
//!   between go to the task's record). A slot is given back when the process answers, not
//!   when the worker stops waiting, so a process never runs more tasks than its slots.
//! - **Cancel**: a cancelled task (or one that timed out, or that the drain deadline dropped)
//!   gets a `cancel` line; a process that has not answered it [`CANCEL_GRACE`] later is
//!   killed (SIGKILL to its process group) and restarted, as `--exec` kills its command: a
//!   process cannot give back a thread. Its other running tasks are retried.
//! - **Crash**: a process that exits, closes its stdout or writes a line that is not a protocol
//!   message is killed (its whole process group); every task it was running fails with a
//!   retryable error naming what happened and the tail of its stderr, so it runs again after
//!   its backoff (using an attempt, as any failure does); the process is restarted after the
//!   fleet's restart backoff (`rivulet_fleet::policy::restart_delay`), and the fleet's crash-loop
//!   guard (`policy::CrashGuard`, 10 crashes within 60 s) stops the worker with an error.
//! - **Recycle**: after `--serve-max-tasks` tasks, or above `--serve-max-memory` (the process
//!   tree's resident memory, checked every [`MEMORY_CHECK`]), the process gets no new task,
//!   finishes what it runs, has its stdin closed (its signal to exit) and is replaced.
//! - **Stop**: after the worker has drained, each process has its stdin closed and gets
//!   [`STOP_GRACE`] to exit, then SIGTERM, then SIGKILL.
//!
//! Every line a process writes on stderr is logged as a `handler output` event.

use std::borrow::Cow;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rivulet::{Codec, HandlerError, IntoTaskResult, Router, TaskContext, TaskControl};
use rivulet_fleet::memory::{format_size, tree_resident_bytes};
use rivulet_fleet::policy::{self, CrashGuard, STABLE_AFTER};
use rivulet_fleet::supervisor::{FRESH_CHILD, MEMORY_CHECK};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::handlers::{CANCEL_GRACE, Tail, describe_exit, guarded_command};
use crate::values::ServeSpec;

/// The protocol version this worker speaks (the `protocol` of `hello` and `ready`).
pub const PROTOCOL: u32 = 1;
/// Longest line a handler process may write (a result of 100 MiB in base64 fits); a longer one
/// is a protocol error.
pub const MAX_LINE: usize = 256 << 20;
/// Time a process gets to exit after its stdin is closed, before SIGTERM (and as long again
/// before SIGKILL).
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often a pool looks for tasks that ignored their cancel.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// How long stderr is still read after a process died, for the error's tail.
const STDERR_LINGER: Duration = Duration::from_millis(200);

/// What `--serve*` flags resolve to.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeSettings {
    /// One handler process per spec.
    pub specs: Vec<ServeSpec>,
    /// Tasks each process runs at once.
    pub concurrency: usize,
    /// Recycle a process after this many tasks.
    pub max_tasks: Option<u64>,
    /// Recycle a process tree above this resident memory, in bytes.
    pub max_memory: Option<u64>,
    /// Time from start to `ready`.
    pub start_timeout: Duration,
}

/// The handler processes of one worker process: started with the worker, stopped after it.
pub struct Pools {
    actors: JoinSet<()>,
    stop: CancellationToken,
    failed: CancellationToken,
    failure: Arc<Mutex<Option<String>>>,
}

impl Pools {
    /// Serves every `--serve` kind of `settings` in `router` (replacing a handler of the same
    /// kind) and starts their processes. Call from within the worker's runtime.
    pub fn start(router: Router, settings: &ServeSettings) -> (Router, Pools) {
        let mut router = router;
        let stop = CancellationToken::new();
        let failed = CancellationToken::new();
        let failure = Arc::new(Mutex::new(None));
        let mut actors = JoinSet::new();
        for spec in &settings.specs {
            let pool = Arc::new(Pool {
                spec: spec.clone(),
                name: spec.kinds.join(","),
                settings: settings.clone(),
                current: watch::channel(None).0,
                failed: failed.clone(),
                failure: failure.clone(),
            });
            for kind in &spec.kinds {
                if router.serves(kind) {
                    tracing::info!(kind = %kind, "--serve replaces the handler this binary has for the kind");
                }
                let pool = pool.clone();
                router = router.route_encoded(kind, move |ctx: TaskContext, payload: Bytes| {
                    let pool = pool.clone();
                    async move { pool.run(ctx, payload).await }
                });
            }
            actors.spawn(supervise(pool, stop.clone()));
        }
        (
            router,
            Pools {
                actors,
                stop,
                failed,
                failure,
            },
        )
    }

    /// A token cancelled when a pool gave up (a refused or crash-looping process): the worker
    /// should stop, and [`failure`](Self::failure) says why.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Why a pool gave up, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("never poisoned: a plain store").clone()
    }

    /// Stops every handler process (stdin closed, then signals) and waits for them.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.actors.join_next().await.is_some() {}
    }
}

/// One `--serve` spec: its current process and how to start the next.
struct Pool {
    spec: ServeSpec,
    /// The kinds, for logs and messages.
    name: String,
    settings: ServeSettings,
    /// The process taking tasks, if one does now.
    current: watch::Sender<Option<Arc<Proc>>>,
    failed: CancellationToken,
    failure: Arc<Mutex<Option<String>>>,
}

/// A handler's answer, stored as the task's result.
pub struct Reply(Option<(Bytes, Codec)>);

impl IntoTaskResult for Reply {
    fn into_task_result(self, _codec: Codec) -> rivulet::Result<Option<(Bytes, Codec)>> {
        Ok(self.0)
    }
}

type Outcome = Result<Reply, HandlerError>;

impl Pool {
    /// Runs one task in the pool's process.
    async fn run(&self, ctx: TaskContext, payload: Bytes) -> Outcome {
        let line = task_line(&ctx, &payload)?;
        let (proc, permit) = self.take_slot(&ctx).await?;
        let id = ctx.id.as_str().to_owned();
        let (tx, mut rx) = oneshot::channel();
        {
            let mut inflight = proc.inflight.lock().expect("never poisoned: no panics under it");
            if inflight.ended {
                return Err(HandlerError::retry(format!(
                    "handler process {} ended before it took the task",
                    proc.pid
                )));
            }
            if inflight.tasks.contains_key(&id) {
                return Err(HandlerError::retry(format!(
                    "task {id} is already running in handler process {}",
                    proc.pid
                )));
            }
            inflight.tasks.insert(
                id.clone(),
                Entry {
                    control: ctx.control.clone(),
                    codec: ctx.codec,
                    done: Some(tx),
                    _permit: permit,
                    cancel_sent: None,
                },
            );
        }
        // Dropped before the answer (timeout, drain deadline): the process is told to stop it.
        let mut abandon = Abandon {
            proc: &proc,
            id: &id,
            armed: true,
        };
        // A closed channel means the process is ending: its end fails the entry.
        proc.send(line);
        let cancelled = ctx.cancelled();
        tokio::pin!(cancelled);
        let mut told = false;
        let outcome = loop {
            tokio::select! {
                r = &mut rx => break r,
                () = &mut cancelled, if !told => {
                    told = true;
                    proc.cancel(&id, "cancelled");
                }
            }
        };
        abandon.armed = false;
        outcome.unwrap_or_else(|_| Err(HandlerError::retry("the handler process went away")))
    }

    /// Waits for a process with a free slot and budget; fails when the task is cancelled
    /// first or the pool gave up.
    async fn take_slot(&self, ctx: &TaskContext) -> Result<(Arc<Proc>, OwnedSemaphorePermit), HandlerError> {
        let cancelled = || HandlerError::retry("cancelled before a handler process took it");
        let mut current = self.current.subscribe();
        loop {
            let proc = current.borrow_and_update().clone();
            if let Some(proc) = proc.filter(|p| !p.retired.is_cancelled()) {
                let permit = tokio::select! {
                    p = proc.slots.clone().acquire_owned() => p.ok(),
                    () = proc.retired.cancelled() => None,
                    () = ctx.cancelled() => return Err(cancelled()),
                };
                if let Some(permit) = permit
                    && proc.take_budget()
                {
                    return Ok((proc, permit));
                }
                continue;
            }
            tokio::select! {
                changed = current.changed() => if changed.is_err() {
                    return Err(HandlerError::retry("the handler processes stopped"));
                },
                () = ctx.cancelled() => return Err(cancelled()),
                () = self.failed.cancelled() => {
                    let why = self.failure.lock().expect("never poisoned: a plain store").clone();
                    return Err(HandlerError::retry(why.unwrap_or_else(|| "the handler process gave up".into())));
                }
            }
        }
    }

    fn give_up(&self, why: String) {
        tracing::error!(kinds = %self.name, command = %self.spec.command, error = %why, "handler process: giving up");
        self.failure
            .lock()
            .expect("never poisoned: a plain store")
            .get_or_insert(why);
        self.failed.cancel();
    }
}

/// Cancels a task in its process if the future running it is dropped before the answer.
struct Abandon<'a> {
    proc: &'a Proc,
    id: &'a str,
    armed: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.proc.cancel(self.id, "stopped");
        }
    }
}

/// One running task, as its process's bookkeeping sees it.
struct Entry {
    control: TaskControl,
    codec: Codec,
    /// Where the answer goes (gone if the worker stopped waiting).
    done: Option<oneshot::Sender<Outcome>>,
    /// The slot, given back with the answer.
    _permit: OwnedSemaphorePermit,
    /// When the process was told to stop it.
    cancel_sent: Option<Instant>,
}

/// One handler process, shared by the tasks it runs.
struct Proc {
    pid: u32,
    slots: Arc<Semaphore>,
    taken: AtomicU64,
    max_tasks: Option<u64>,
    /// Takes no more tasks (recycling, ending).
    retired: CancellationToken,
    out: mpsc::UnboundedSender<Vec<u8>>,
    inflight: Mutex<Inflight>,
    /// Notified when the last running task ends.
    idle: Notify,
}

/// A process's running tasks; `ended` (set with the last [`Proc::fail_all`]) refuses new ones,
/// under the same lock, so no task can slip in after the process's tasks were failed.
#[derive(Default)]
struct Inflight {
    tasks: HashMap<String, Entry>,
    ended: bool,
}

impl Proc {
    /// One unit of `--serve-max-tasks`; the last one retires the process.
    fn take_budget(&self) -> bool {
        let Some(max) = self.max_tasks else { return true };
        let n = self.taken.fetch_add(1, Ordering::SeqCst);
        if n + 1 >= max {
            self.retired.cancel();
        }
        n < max
    }

    fn send(&self, line: Vec<u8>) -> bool {
        self.out.send(line).is_ok()
    }

    /// Tells the process to stop a task (once).
    fn cancel(&self, id: &str, reason: &str) {
        let mut inflight = self.inflight.lock().expect("never poisoned: no panics under it");
        if let Some(e) = inflight.tasks.get_mut(id)
            && e.cancel_sent.is_none()
        {
            e.cancel_sent = Some(Instant::now());
            let line = serde_json::to_vec(&Cancel {
                kind: "cancel",
                id,
                reason,
            })
            .expect("a struct of strings serialises");
            let mut line = line;
            line.push(b'\n');
            let _ = self.out.send(line);
        }
    }

    /// The process answered a task.
    fn finish(&self, id: &str, answer: impl FnOnce(Codec) -> Outcome) -> bool {
        let mut inflight = self.inflight.lock().expect("never poisoned: no panics under it");
        let Some(mut entry) = inflight.tasks.remove(id) else {
            return false;
        };
        if inflight.tasks.is_empty() {
            self.idle.notify_one();
        }
        drop(inflight);
        if let Some(done) = entry.done.take() {
            let _ = done.send(answer(entry.codec));
        }
        true
    }

    fn progress(&self, id: &str, percent: f64, message: String) -> bool {
        let inflight = self.inflight.lock().expect("never poisoned: no panics under it");
        let Some(e) = inflight.tasks.get(id) else { return false };
        let percent = if percent.is_finite() {
            percent.clamp(0.0, 100.0) as u8
        } else {
            0
        };
        e.control.report(percent, message);
        true
    }

    /// Fails every running task with `why` and refuses new ones (the process is gone).
    fn fail_all(&self, why: &str) -> usize {
        let entries: Vec<Entry> = {
            let mut inflight = self.inflight.lock().expect("never poisoned: no panics under it");
            inflight.ended = true;
            inflight.tasks.drain().map(|(_, e)| e).collect()
        };
        let n = entries.len();
        for mut e in entries {
            if let Some(done) = e.done.take() {
                let _ = done.send(Err(HandlerError::retry(why)));
            }
        }
        n
    }

    fn is_idle(&self) -> bool {
        self.inflight
            .lock()
            .expect("never poisoned: no panics under it")
            .tasks
            .is_empty()
    }

    /// A task told to stop more than [`CANCEL_GRACE`] ago, still running.
    fn overdue(&self) -> Option<String> {
        let inflight = self.inflight.lock().expect("never poisoned: no panics under it");
        inflight
            .tasks
            .iter()
            .find(|(_, e)| e.cancel_sent.is_some_and(|t| t.elapsed() >= CANCEL_GRACE))
            .map(|(id, _)| id.clone())
    }
}

#[derive(Serialize)]
struct Cancel<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
struct Hello<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    protocol: u32,
    kinds: &'a [String],
    concurrency: usize,
}

/// A task's line without its payload (appended by [`task_line`]).
#[derive(Serialize)]
struct TaskHead<'a> {
    #[serde(rename = "type")]
    kind_: &'static str,
    id: &'a str,
    kind: &'a str,
    attempt: u32,
    queue: &'a str,
    priority: &'a str,
    codec: &'static str,
    enqueued_at: u64,
    deadline_ms: Option<u64>,
    last_error: Option<&'a str>,
}

/// A message from a handler process: one flat shape for every `type` (a tagged enum cannot
/// borrow the result's raw JSON).
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    protocol: Option<u32>,
    #[serde(default)]
    kinds: Option<Vec<String>>,
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    result_base64: Option<String>,
    #[serde(default)]
    fatal: bool,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `task` line for a task (pure but for the clock): JSON payloads inline (a payload that
/// does not decode with its codec is fatal: it would fail every attempt), others in base64.
pub fn task_line(ctx: &TaskContext, payload: &[u8]) -> Result<Vec<u8>, HandlerError> {
    let malformed =
        |e: rivulet::Error| HandlerError::fatal(format!("malformed payload: it does not decode as {}: {e}", ctx.codec));
    if ctx.codec != Codec::Bytes {
        ctx.codec.decode::<serde::de::IgnoredAny>(payload).map_err(malformed)?;
    }
    let deadline_ms = ctx
        .deadline()
        .map(|d| now_ms() + d.saturating_duration_since(Instant::now()).as_millis() as u64);
    let head = TaskHead {
        kind_: "task",
        id: ctx.id.as_str(),
        kind: &ctx.kind,
        attempt: ctx.attempt,
        queue: ctx.queue.as_str(),
        priority: &ctx.priority,
        codec: ctx.codec.as_str(),
        enqueued_at: ctx.enqueued_at,
        deadline_ms,
        last_error: ctx.last_error.as_deref(),
    };
    let mut line = serde_json::to_vec(&head).expect("a struct of strings and numbers serialises");
    line.pop(); // the closing brace
    line.reserve(payload.len() * 4 / 3 + 32);
    if ctx.codec == Codec::Json {
        line.extend_from_slice(b",\"payload\":");
        // In valid JSON a raw line break can only be whitespace between tokens: blanking it
        // keeps the message on one line without re-encoding the payload.
        line.extend(payload.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
    } else {
        line.extend_from_slice(b",\"payload_base64\":\"");
        let start = line.len();
        line.resize(start + base64::encoded_len(payload.len(), true).unwrap_or(0), 0);
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(payload, &mut line[start..])
            .expect("sized by encoded_len");
        line.truncate(start + n);
        line.push(b'"');
    }
    line.extend_from_slice(b"}\n");
    Ok(line)
}

/// A task's answer as the worker stores it: a JSON result in the task's codec (msgpack tasks
/// get msgpack), a base64 result as bytes, an error as the handler's retry choice.
fn answer(msg: &Incoming<'_>, codec: Codec) -> Outcome {
    if msg.kind == "error" {
        let message = msg.message.clone().unwrap_or_else(|| "the handler failed".into());
        return Err(match (msg.fatal, msg.retry_after_ms) {
            (true, _) => HandlerError::fatal(message),
            (false, Some(ms)) => HandlerError::retry_after(Duration::from_millis(ms), message),
            (false, None) => HandlerError::retry(message),
        });
    }
    if let Some(b64) = &msg.result_base64 {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| HandlerError::fatal(format!("the handler's result_base64 is not base64: {e}")))?;
        return Ok(Reply(Some((Bytes::from(bytes), Codec::Bytes))));
    }
    match msg.result {
        None => Ok(Reply(None)),
        Some(raw) if codec == Codec::MsgPack => {
            let value: serde_json::Value =
                serde_json::from_str(raw.get()).map_err(|e| HandlerError::fatal(format!("the result: {e}")))?;
            let bytes = Codec::MsgPack
                .encode(&value)
                .map_err(|e| HandlerError::fatal(format!("the result does not encode as msgpack: {e}")))?;
            Ok(Reply(Some((bytes, Codec::MsgPack))))
        }
        Some(raw) => Ok(Reply(Some((Bytes::copy_from_slice(raw.get().as_bytes()), Codec::Json)))),
    }
}

/// Reads one line of at most `limit` bytes into `buf` (without the newline). `Ok(false)` at
/// end of file; an error for a longer line.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>, limit: usize) -> std::io::Result<bool> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (chunk, found) = match memchr(available) {
            Some(i) => (&available[..i], i + 1),
            None => (available, 0),
        };
        if buf.len() + chunk.len() > limit {
            return Err(std::io::Error::other(format!("a line longer than {limit} bytes")));
        }
        buf.extend_from_slice(chunk);
        if found > 0 {
            reader.consume(found);
            return Ok(true);
        }
        let n = chunk.len();
        reader.consume(n);
    }
}

/// Consumes input up to and including the next newline, keeping none of it.
async fn skip_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<()> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(());
        }
        let (n, done) = match memchr(available) {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        reader.consume(n);
        if done {
            return Ok(());
        }
    }
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// How one process's life ended.
enum End {
    /// The worker is stopping.
    Stopped,
    /// Drained and replaced (max tasks, memory).
    Recycled(String),
    /// Killed for a task that ignored its cancel; not counted as a crash.
    Killed(String),
    /// Exited, broke the protocol, or could not start: counted for the backoff and the guard.
    Crash(String),
    /// Refused at the handshake: restarting cannot help.
    Refused(String),
}

/// Keeps the pool's process running until `stop`; see the module docs.
async fn supervise(pool: Arc<Pool>, stop: CancellationToken) {
    let mut guard = CrashGuard::new(policy::DEFAULT_CRASH_LIMIT, policy::DEFAULT_CRASH_WINDOW);
    let cap = policy::restart_cap(policy::DEFAULT_CRASH_LIMIT, policy::DEFAULT_CRASH_WINDOW);
    let mut in_a_row = 0u32;
    let mut warned_memory = false;
    while !stop.is_cancelled() {
        let started = Instant::now();
        match run_process(&pool, &stop, &mut warned_memory).await {
            End::Stopped => break,
            End::Recycled(why) | End::Killed(why) => {
                tracing::info!(kinds = %pool.name, reason = %why, "handler process replaced");
            }
            End::Refused(why) => {
                pool.give_up(why);
                break;
            }
            End::Crash(why) => {
                if let Some(n) = guard.record(tokio::time::Instant::now()) {
                    pool.give_up(format!(
                        "the handler process for {} crashed {n} times within {}; last: {why}",
                        pool.name,
                        humantime::format_duration(guard.window())
                    ));
                    break;
                }
                in_a_row = if started.elapsed() >= STABLE_AFTER {
                    1
                } else {
                    in_a_row + 1
                };
                let delay = policy::restart_delay(in_a_row, fastrand::f64(), cap);
                tracing::warn!(kinds = %pool.name, error = %why, restart_in_ms = delay.as_millis() as u64, "handler process crashed; restarting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => break,
                }
            }
        }
    }
    pool.current.send_replace(None);
}

/// Starts one process, serves tasks with it until it ends, and cleans up after it.
async fn run_process(pool: &Pool, stop: &CancellationToken, warned_memory: &mut bool) -> End {
    let settings = &pool.settings;
    let mut cmd = guarded_command(&pool.spec.command);
    cmd.env("RIVULET_SERVE_PROTOCOL", PROTOCOL.to_string())
        .env("RIVULET_SERVE_KINDS", pool.spec.kinds.join(","))
        .env("RIVULET_SERVE_CONCURRENCY", settings.concurrency.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return End::Crash(format!("cannot start `sh -c {}`: {e}", pool.spec.command)),
    };
    let pid = child.id().unwrap_or(0);
    let started = Instant::now();
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let proc = Arc::new(Proc {
        pid,
        slots: Arc::new(Semaphore::new(settings.concurrency)),
        taken: AtomicU64::new(0),
        max_tasks: settings.max_tasks,
        retired: CancellationToken::new(),
        out: out_tx,
        inflight: Mutex::new(Inflight::default()),
        idle: Notify::new(),
    });
    let mut hello = serde_json::to_vec(&Hello {
        kind: "hello",
        protocol: PROTOCOL,
        kinds: &pool.spec.kinds,
        concurrency: settings.concurrency,
    })
    .expect("a struct of strings and numbers serialises");
    hello.push(b'\n');
    proc.send(hello);

    let mut io = JoinSet::new();
    let close = CancellationToken::new();
    if let Some(stdin) = child.stdin.take() {
        io.spawn(write_lines(stdin, out_rx, close.clone()));
    }
    let tail = Arc::new(Mutex::new(Tail::default()));
    if let Some(stderr) = child.stderr.take() {
        io.spawn(log_stderr(stderr, tail.clone(), pool.name.clone(), pid));
    }
    let (ready_tx, ready_rx) = oneshot::channel();
    let (end_tx, mut end_rx) = oneshot::channel::<String>();
    if let Some(stdout) = child.stdout.take() {
        io.spawn(read_messages(stdout, proc.clone(), ready_tx, end_tx));
    }
    let tail_text = |tail: &Mutex<Tail>| {
        let t = tail.lock().expect("never poisoned: a plain store").text();
        if t.is_empty() {
            String::new()
        } else {
            format!("; its stderr ended: {t}")
        }
    };
    let what = format!("handler process {pid} (`{}`)", pool.spec.command);

    // The handshake.
    let ready = tokio::select! {
        r = tokio::time::timeout(settings.start_timeout, ready_rx) => match r {
            Ok(Ok(Ok(ready))) => Ok(ready),
            Ok(Ok(Err(e))) => Err(End::Crash(format!("{what} did not start the protocol: {e}"))),
            Ok(Err(_)) => Err(End::Crash(format!("{what} closed its stdout before it was ready"))),
            Err(_) => Err(End::Crash(format!(
                "{what} did not say it was ready within {} (--serve-start-timeout)",
                humantime::format_duration(settings.start_timeout)
            ))),
        },
        status = child.wait() => Err(End::Crash(format!(
            "{what} exited before it was ready ({})",
            status.map_or_else(|e| e.to_string(), describe_exit)
        ))),
        () = stop.cancelled() => Err(End::Stopped),
    };
    let end = match ready {
        Err(end) => end,
        Ok(Ready { protocol, kinds }) => {
            if protocol != PROTOCOL {
                End::Refused(format!(
                    "{what} speaks protocol version {protocol}; this worker speaks {PROTOCOL}"
                ))
            } else if let Some(missing) = pool.spec.kinds.iter().find(|k| !kinds.contains(k)) {
                End::Refused(format!(
                    "{what} does not serve kind {missing:?} (it serves {}), which --serve {} gives it",
                    if kinds.is_empty() {
                        "none".to_owned()
                    } else {
                        kinds.join(", ")
                    },
                    pool.spec
                ))
            } else {
                tracing::info!(kinds = %pool.name, pid, ready_ms = started.elapsed().as_millis() as u64, "handler process ready");
                pool.current.send_replace(Some(proc.clone()));
                serve(pool, &proc, &mut child, &mut end_rx, stop, started, warned_memory).await
            }
        }
    };
    // The pool takes nothing more from this process.
    proc.retired.cancel();
    if matches!(pool.current.borrow().as_ref(), Some(p) if Arc::ptr_eq(p, &proc)) {
        pool.current.send_replace(None);
    }
    // Closing stdin is the process's signal to exit; it also ends the writer.
    close.cancel();
    match &end {
        End::Stopped | End::Recycled(_) => stop_gently(&mut child, pid).await,
        End::Killed(_) | End::Crash(_) | End::Refused(_) => {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
    // What the process said last on stderr explains most crashes.
    let _ = tokio::time::timeout(STDERR_LINGER, async { while io.join_next().await.is_some() {} }).await;
    io.abort_all();
    let end = match end {
        End::Crash(why) => End::Crash(format!("{why}{}", tail_text(&tail))),
        End::Refused(why) => End::Refused(format!("{why}{}", tail_text(&tail))),
        other => other,
    };
    let why = match &end {
        End::Crash(why) | End::Killed(why) | End::Refused(why) => why.clone(),
        End::Stopped => format!("{what} was stopped with the worker"),
        End::Recycled(why) => format!("{what} was recycled ({why})"),
    };
    let failed = proc.fail_all(&format!("{why} while it ran the task"));
    if failed > 0 {
        tracing::warn!(kinds = %pool.name, pid, tasks = failed, "tasks of a handler process that ended are retried");
    }
    end
}

/// A ready process's life: returns why it ended.
async fn serve(
    pool: &Pool,
    proc: &Arc<Proc>,
    child: &mut tokio::process::Child,
    end_rx: &mut oneshot::Receiver<String>,
    stop: &CancellationToken,
    started: Instant,
    warned_memory: &mut bool,
) -> End {
    let pid = proc.pid;
    let what = format!("handler process {pid} (`{}`)", pool.spec.command);
    let mut watch = tokio::time::interval(WATCH_EVERY);
    let mut memory = tokio::time::interval(MEMORY_CHECK);
    memory.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining: Option<String> = None;
    loop {
        if let Some(why) = &draining
            && proc.is_idle()
        {
            return End::Recycled(why.clone());
        }
        tokio::select! {
            status = child.wait() => {
                return End::Crash(format!("{what} exited ({})", status.map_or_else(|e| e.to_string(), describe_exit)));
            }
            why = &mut *end_rx => {
                return End::Crash(why.unwrap_or_else(|_| format!("{what} stopped answering")));
            }
            () = proc.retired.cancelled(), if draining.is_none() => {
                draining = Some(format!("it took --serve-max-tasks {}", pool.settings.max_tasks.unwrap_or(0)));
            }
            () = proc.idle.notified(), if draining.is_some() => {}
            _ = watch.tick() => {
                if let Some(id) = proc.overdue() {
                    tracing::warn!(kinds = %pool.name, pid, task_id = %id, grace = ?CANCEL_GRACE, "a task ignored its cancel: restarting its handler process");
                    return End::Killed(format!("{what} was restarted: task {id} ignored its cancel for {}", humantime::format_duration(CANCEL_GRACE)));
                }
            }
            _ = memory.tick(), if pool.settings.max_memory.is_some() && draining.is_none() => {
                let limit = pool.settings.max_memory.unwrap_or(u64::MAX);
                if let Some(rss) = tree_resident_bytes(pid).filter(|&rss| rss > limit) {
                    if started.elapsed() < FRESH_CHILD && !*warned_memory {
                        *warned_memory = true;
                        tracing::warn!(kinds = %pool.name, pid, resident = %format_size(rss), limit = %format_size(limit), "a fresh handler process is already above --serve-max-memory: the limit looks too low");
                    }
                    tracing::info!(kinds = %pool.name, pid, resident = %format_size(rss), limit = %format_size(limit), "handler process above --serve-max-memory: recycling it after its running tasks");
                    proc.retired.cancel();
                    draining = Some(format!("resident memory {} above --serve-max-memory {}", format_size(rss), format_size(limit)));
                }
            }
            () = stop.cancelled() => return End::Stopped,
        }
    }
}

/// Closes stdin (already asked), then SIGTERM, then SIGKILL, each after [`STOP_GRACE`].
async fn stop_gently(child: &mut tokio::process::Child, pid: u32) {
    let group = Pid::from_raw(pid as i32);
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
        return;
    }
    tracing::warn!(pid, "handler process did not exit when its stdin closed: SIGTERM");
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
        return;
    }
    tracing::warn!(pid, "handler process outlived SIGTERM: SIGKILL");
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait().await;
}

/// Writes queued lines to the process's stdin, flushing when the queue is empty (so a burst
/// is one write); closes stdin when `close` is cancelled.
async fn write_lines(
    stdin: tokio::process::ChildStdin,
    mut lines: mpsc::UnboundedReceiver<Vec<u8>>,
    close: CancellationToken,
) {
    let mut w = BufWriter::with_capacity(64 * 1024, stdin);
    loop {
        let line = tokio::select! {
            l = lines.recv() => l,
            () = close.cancelled() => None,
        };
        let Some(line) = line else { break };
        if w.write_all(&line).await.is_err() {
            return;
        }
        while let Ok(line) = lines.try_recv() {
            if w.write_all(&line).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Logs each stderr line as a `handler output` event and keeps the tail for error messages.
async fn log_stderr(stderr: tokio::process::ChildStderr, tail: Arc<Mutex<Tail>>, kinds: String, pid: u32) {
    let mut r = BufReader::new(stderr);
    let mut buf = Vec::new();
    // Long lines are cut (64 KiB), not fatal: stderr is for people.
    loop {
        match read_line(&mut r, &mut buf, 64 * 1024).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) if e.kind() == std::io::ErrorKind::Other => {
                tracing::warn!(kinds = %kinds, pid, "handler process wrote a stderr line over 64 KiB; skipped it");
                if skip_line(&mut r).await.is_err() {
                    return;
                }
                continue;
            }
            Err(_) => return,
        }
        {
            let mut t = tail.lock().expect("never poisoned: a plain store");
            t.push(&buf);
            t.push(b"\n");
        }
        let text = String::from_utf8_lossy(&buf);
        tracing::info!(kinds = %kinds, pid, line = %text.trim_end_matches('\r'), "handler output");
    }
}

/// The handshake's answer.
struct Ready {
    protocol: u32,
    kinds: Vec<String>,
}

/// Reads the process's messages: the first must be `ready`; then progress and answers. Ends
/// (through `end`) at end of file or at the first line that is not a protocol message.
async fn read_messages(
    stdout: tokio::process::ChildStdout,
    proc: Arc<Proc>,
    ready: oneshot::Sender<Result<Ready, String>>,
    end: oneshot::Sender<String>,
) {
    let what = format!("handler process {}", proc.pid);
    let mut r = BufReader::with_capacity(64 * 1024, stdout);
    let mut buf = Vec::new();
    let mut ready = Some(ready);
    let mut line_no = 0u64;
    let why = loop {
        line_no += 1;
        match read_line(&mut r, &mut buf, MAX_LINE).await {
            Ok(true) => {}
            Ok(false) => break format!("{what} closed its stdout"),
            Err(e) => break format!("{what} broke the protocol: stdout line {line_no}: {e}"),
        }
        let msg = match serde_json::from_slice::<Incoming<'_>>(&buf) {
            Ok(m) => m,
            // Before `ready`, a line that is not a message is an import-time print or a
            // banner: logged, not fatal (the process has not started the protocol yet).
            Err(_) if ready.is_some() => {
                tracing::warn!(pid = proc.pid, line = %String::from_utf8_lossy(&buf), "handler process wrote a line on stdout before `ready`; skipped (print to stderr)");
                continue;
            }
            Err(e) => {
                break format!(
                    "{what} broke the protocol: stdout line {line_no} is not a protocol message ({e}): {}; \
                     a handler process writes only protocol messages (one JSON object per line) on stdout, \
                     and its logs to stderr",
                    excerpt(&buf)
                );
            }
        };
        if let Some(tx) = ready.take() {
            if msg.kind != "ready" {
                let _ = tx.send(Err(format!(
                    "its first stdout line must be a `ready` message, not: {}",
                    excerpt(&buf)
                )));
                return;
            }
            let _ = tx.send(Ok(Ready {
                protocol: msg.protocol.unwrap_or(0),
                kinds: msg.kinds.unwrap_or_default(),
            }));
            continue;
        }
        let id = msg.id.as_deref().unwrap_or("");
        let known = match &*msg.kind {
            "progress" => proc.progress(id, msg.percent.unwrap_or(0.0), msg.message.clone().unwrap_or_default()),
            "result" | "error" => proc.finish(id, |codec| answer(&msg, codec)),
            other => {
                break format!(
                    "{what} broke the protocol: stdout line {line_no} has an unknown type {other:?}: {}",
                    excerpt(&buf)
                );
            }
        };
        if !known {
            // A late answer for a task the process was already failed for, or a bad id.
            tracing::warn!(pid = proc.pid, task_id = %id, kind = %msg.kind, "handler process answered a task it is not running; ignored");
        }
    };
    let _ = end.send(why);
}

/// The start of a line, for messages.
fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(200)]);
    let more = if line.len() > 200 { "..." } else { "" };
    format!("{:?}{more}", text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(codec: Codec) -> TaskContext {
        TaskContext {
            id: rivulet::TaskId::from_string("t-1"),
            kind: "k".into(),
            queue: rivulet::QueueName::new("q").unwrap(),
            priority: "normal".into(),
            attempt: 1,
            enqueued_at: 7,
            last_error: Some("boom".into()),
            codec,
            control: TaskControl::new(),
        }
    }

    #[test]
    fn task_lines_are_one_json_object_with_the_payload_inline_or_in_base64() {
        let line = task_line(&ctx(Codec::Json), b"{\"a\":\n [1,\r\n 2]}").unwrap();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "task");
        assert_eq!(v["payload"]["a"][1], 2);
        assert_eq!(
            (v["attempt"].as_u64(), v["last_error"].as_str()),
            (Some(1), Some("boom"))
        );
        assert!(v["deadline_ms"].is_null());
        let line = task_line(&ctx(Codec::Bytes), b"\x00\xffhi").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["payload_base64"], "AP9oaQ==");
        assert_eq!(v["codec"], "bytes");
        match task_line(&ctx(Codec::Json), b"{not json") {
            Err(HandlerError::Fatal(m)) => assert!(m.contains("malformed payload"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(task_line(&ctx(Codec::MsgPack), b"\xc1").is_err());
    }

    #[test]
    fn answers_map_to_results_and_retry_choices() {
        let parse = |s: &'static str| serde_json::from_str::<Incoming<'static>>(s).unwrap();
        let out = answer(
            &parse(r#"{"type":"result","id":"a","result":{"loss":0.1}}"#),
            Codec::Json,
        )
        .unwrap();
        assert_eq!(out.0, Some((Bytes::from_static(br#"{"loss":0.1}"#), Codec::Json)));
        let out = answer(
            &parse(r#"{"type":"result","id":"a","result_base64":"aGk="}"#),
            Codec::Json,
        )
        .unwrap();
        assert_eq!(out.0, Some((Bytes::from_static(b"hi"), Codec::Bytes)));
        let out = answer(&parse(r#"{"type":"result","id":"a","result":[1]}"#), Codec::MsgPack).unwrap();
        assert_eq!(out.0, Some((Bytes::from_static(b"\x91\x01"), Codec::MsgPack)));
        assert!(
            answer(&parse(r#"{"type":"result","id":"a"}"#), Codec::Json)
                .unwrap()
                .0
                .is_none()
        );
        let e = |s| answer(&parse(s), Codec::Json).err().unwrap();
        assert!(matches!(e(r#"{"type":"error","id":"a","message":"m"}"#), HandlerError::Retry(m) if m == "m"));
        assert!(matches!(
            e(r#"{"type":"error","id":"a","message":"m","fatal":true}"#),
            HandlerError::Fatal(_)
        ));
        assert!(matches!(
            e(r#"{"type":"error","id":"a","message":"m","retry_after_ms":1500}"#),
            HandlerError::RetryAfter(d, _) if d == Duration::from_millis(1500)
        ));
    }

    #[tokio::test]
    async fn lines_are_read_up_to_a_limit() {
        let data: &[u8] = b"one\ntwo\nthree-is-long\nlast";
        let mut r = BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        assert!(read_line(&mut r, &mut buf, 8).await.unwrap());
        assert_eq!(buf, b"one");
        assert!(read_line(&mut r, &mut buf, 8).await.unwrap());
        assert_eq!(buf, b"two");
        assert!(read_line(&mut r, &mut buf, 8).await.is_err());
        let mut r = BufReader::new(&b"x\nlast"[..]);
        assert!(read_line(&mut r, &mut buf, 8).await.unwrap());
        assert!(read_line(&mut r, &mut buf, 8).await.unwrap());
        assert_eq!(buf, b"last");
        assert!(!read_line(&mut r, &mut buf, 8).await.unwrap());
    }
}
