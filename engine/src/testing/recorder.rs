//! A recording router: handlers that note every run (task id, kind, attempt, priority, last
//! error, payload, when) so a test asserts what ran, how often and in which order.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wait_until;
use crate::{HandlerError, Router, TaskContext};

/// One handler run, noted when the handler started.
#[derive(Debug, Clone)]
pub struct Run {
    /// The task id (stable across retries, reclaims and replays).
    pub id: String,
    /// The task kind.
    pub kind: String,
    /// The priority the task was read from.
    pub priority: String,
    /// Failed attempts before this run.
    pub attempt: u32,
    /// The previous attempt's error.
    pub last_error: Option<String>,
    /// The decoded payload, as JSON.
    pub payload: serde_json::Value,
    /// When the handler started.
    pub at: Instant,
}

impl Run {
    /// The payload decoded as `T`. Panics when it does not fit (a test's own mistake).
    pub fn payload<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.payload.clone()).unwrap_or_else(|e| {
            panic!(
                "payload {} of task {} is not the type asked for: {e}",
                self.payload, self.id
            )
        })
    }
}

/// Records handler runs; clones share one record. A mutex, not a channel: tests read the
/// whole record at any time, and handlers hold the lock only to push.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    runs: Arc<Mutex<Vec<Run>>>,
}

impl Recorder {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// A router whose handlers for `kinds` record each run and succeed. Payloads are decoded
    /// as JSON values (JSON or MessagePack).
    pub fn router(&self, kinds: &[&str]) -> Router {
        kinds.iter().fold(Router::new(), |router, kind| {
            self.route(router, kind, |_ctx, _payload: serde_json::Value| async { Ok(()) })
        })
    }

    /// Adds a route for `kind` to `router` that records each run, then runs `handler`.
    pub fn route<T, F, Fut>(&self, router: Router, kind: &str, handler: F) -> Router
    where
        T: DeserializeOwned + Serialize + Send + 'static,
        F: Fn(TaskContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let recorder = self.clone();
        router.route(kind, move |ctx: TaskContext, payload: T| {
            recorder.record(&ctx, serde_json::to_value(&payload).unwrap_or_default());
            handler(ctx, payload)
        })
    }

    /// Adds a route for `kind` that records each run (the payload as an array of bytes), then
    /// runs `handler` on the raw payload.
    pub fn route_bytes<F, Fut>(&self, router: Router, kind: &str, handler: F) -> Router
    where
        F: Fn(TaskContext, bytes::Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let recorder = self.clone();
        router.route_bytes(kind, move |ctx: TaskContext, payload: bytes::Bytes| {
            recorder.record(&ctx, serde_json::Value::from(payload.to_vec()));
            handler(ctx, payload)
        })
    }

    /// Notes a run by hand (for a handler built without [`route`](Self::route)).
    pub fn record(&self, ctx: &TaskContext, payload: serde_json::Value) {
        let run = Run {
            id: ctx.id.to_string(),
            kind: ctx.kind.clone(),
            priority: ctx.priority.to_string(),
            attempt: ctx.attempt,
            last_error: ctx.last_error.clone(),
            payload,
            at: Instant::now(),
        };
        self.lock().push(run);
    }

    /// Every run so far, in the order the handlers started.
    pub fn runs(&self) -> Vec<Run> {
        self.lock().clone()
    }

    /// The runs of task `id`, in order.
    pub fn runs_of(&self, id: &str) -> Vec<Run> {
        self.lock().iter().filter(|r| r.id == id).cloned().collect()
    }

    /// Every payload so far, decoded as `T`, in run order.
    pub fn payloads<T: DeserializeOwned>(&self) -> Vec<T> {
        self.runs().iter().map(Run::payload).collect()
    }

    /// How many runs so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing ran yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// How many times each task id ran.
    pub fn runs_per_task(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for r in self.lock().iter() {
            *counts.entry(r.id.clone()).or_default() += 1;
        }
        counts
    }

    /// The task ids that ran more than once, with their counts (empty when all ran once).
    pub fn repeated(&self) -> Vec<(String, usize)> {
        let mut twice: Vec<(String, usize)> = self.runs_per_task().into_iter().filter(|(_, n)| *n > 1).collect();
        twice.sort();
        twice
    }

    /// Waits until at least `n` runs are recorded; panics after `timeout` with what ran.
    pub async fn wait_for_runs(&self, n: usize, timeout: Duration) {
        let reached = wait_until(timeout, || {
            let len = self.len();
            async move { len >= n }
        })
        .await;
        if !reached {
            panic!(
                "timed out after {timeout:?} waiting for {n} handler runs; {}",
                self.summary(20)
            );
        }
    }

    /// `N runs: ...` with the first `limit` runs, for failure messages.
    pub fn summary(&self, limit: usize) -> String {
        let runs = self.lock();
        let mut out = format!("{} run(s)", runs.len());
        for r in runs.iter().take(limit) {
            let _ = write!(
                out,
                "\n  {} {} attempt {} ({}) {}",
                r.kind, r.id, r.attempt, r.priority, r.payload
            );
        }
        if runs.len() > limit {
            let _ = write!(out, "\n  ...");
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Run>> {
        // A handler that panicked while pushing cannot leave the Vec half-written: recover it.
        self.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
