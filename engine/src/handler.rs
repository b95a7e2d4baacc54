//! Handlers and the `Router` that maps a task's `kind` to one.
//!
//! A handler is an async function of a [`TaskContext`] and its decoded payload. It steers what
//! happens after a failure through [`HandlerError`]: `Retry` (the default for any error),
//! `RetryAfter(delay)`, or `Fatal` (straight to the dead-letter stream).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::backoff::RetryPolicy;
use crate::envelope::{Codec, Malformed, TaskId};
use crate::keys::QueueName;
use crate::lifecycle::{IntoTaskResult, TaskControl};

/// How a handler failed, and so what the worker does next.
///
/// Any `std::error::Error` converts into `Retry` through `?`, so handlers can propagate
/// ordinary errors and still get retries; say `Fatal` for failures that retrying cannot fix.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandlerError {
    /// Try again after the retry policy's backoff (until attempts run out).
    Retry(String),
    /// Try again after this delay (until attempts run out).
    RetryAfter(Duration, String),
    /// Do not retry: bury the task in the dead-letter stream with reason `fatal`.
    Fatal(String),
}

impl HandlerError {
    /// A retryable failure.
    pub fn retry(message: impl fmt::Display) -> Self {
        HandlerError::Retry(message.to_string())
    }

    /// A retryable failure with its own delay.
    pub fn retry_after(delay: Duration, message: impl fmt::Display) -> Self {
        HandlerError::RetryAfter(delay, message.to_string())
    }

    /// A failure that retrying cannot fix.
    pub fn fatal(message: impl fmt::Display) -> Self {
        HandlerError::Fatal(message.to_string())
    }

    /// The failure's message.
    pub fn message(&self) -> &str {
        match self {
            HandlerError::Retry(m) | HandlerError::RetryAfter(_, m) | HandlerError::Fatal(m) => m,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Retry(m) => write!(f, "{m}"),
            HandlerError::RetryAfter(d, m) => write!(f, "{m} (retry after {d:?})"),
            HandlerError::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        // Keep the whole cause chain: the message ends up in the task's `error` field.
        let mut msg = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        HandlerError::Retry(msg)
    }
}

/// What a handler knows about the task it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The task's id, stable across retries: use it as an idempotency key.
    pub id: TaskId,
    /// The handler name.
    pub kind: String,
    /// The queue the task came from.
    pub queue: QueueName,
    /// The task's priority.
    pub priority: Arc<str>,
    /// Failed attempts before this one (0 on the first run).
    pub attempt: u32,
    /// When the task was first enqueued, ms since the epoch.
    pub enqueued_at: u64,
    /// The previous attempt's error, if any.
    pub last_error: Option<String>,
    /// The payload's codec.
    pub codec: Codec,
    /// The cancel signal and progress reports (see [`cancelled`](Self::cancelled) and
    /// [`progress`](Self::progress)); `TaskControl::new()` for a context built by hand.
    pub control: TaskControl,
}

impl TaskContext {
    /// Reports progress (`percent` 0-100, clamped, and a message). Cheap to call in a tight
    /// loop: the worker writes only the latest report, a few times a second at most.
    pub fn progress(&self, percent: u8, message: impl Into<String>) {
        self.control.report(percent, message);
    }

    /// Resolves when the task is cancelled while it runs: select on it to stop early. A
    /// handler that does not stop is dropped after the worker's `cancel_grace`.
    pub async fn cancelled(&self) {
        self.control.cancelled().await;
    }

    /// Whether the task was cancelled while it runs.
    pub fn is_cancelled(&self) -> bool {
        self.control.is_cancelled()
    }

    /// When the worker times this run out (the task's, kind's, queue's or worker's timeout),
    /// if it has a timeout.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.control.deadline()
    }
}

/// A handler's successful output: its result's bytes and codec, if it returned one.
pub(crate) type TaskOutput = Option<(Bytes, Codec)>;

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<TaskOutput, HandlerError>> + Send>>;

/// What a handler without a result returns: `Result<(), HandlerError>` or nothing (`()`).
///
/// Only these two types implement it, so a closure whose every path returns `Err(...)`
/// infers `Result<(), HandlerError>` and needs no annotation.
pub trait HandlerReturn: sealed::Sealed {
    /// The outcome as the worker reads it.
    fn into_handler_result(self) -> Result<(), HandlerError>;
}

impl HandlerReturn for () {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl HandlerReturn for Result<(), HandlerError> {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        self
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl Sealed for Result<(), super::HandlerError> {}
}

/// Turns a handler's return value into its output; a result that cannot be encoded is fatal
/// (retrying would produce the same value).
async fn output<R: IntoTaskResult>(
    fut: impl Future<Output = Result<R, HandlerError>>,
    codec: Codec,
) -> Result<TaskOutput, HandlerError> {
    let value = fut.await?;
    value
        .into_task_result(codec)
        .map_err(|e| HandlerError::fatal(format!("the result does not encode: {e}")))
}

/// A type-erased handler: decodes the payload and starts the handler's future.
trait Erased: Send + Sync {
    fn start(&self, ctx: TaskContext, payload: Bytes) -> Result<HandlerFuture, Malformed>;
}

struct Typed<T, R, F> {
    f: F,
    _payload: std::marker::PhantomData<fn() -> (T, R)>,
}

impl<T, R, F, Fut> Erased for Typed<T, R, F>
where
    T: DeserializeOwned + Send + 'static,
    R: IntoTaskResult + Send + 'static,
    F: Fn(TaskContext, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    fn start(&self, ctx: TaskContext, payload: Bytes) -> Result<HandlerFuture, Malformed> {
        let value: T = ctx
            .codec
            .decode(&payload)
            .map_err(|e| Malformed(format!("payload does not decode: {e}")))?;
        let codec = ctx.codec;
        Ok(Box::pin(output((self.f)(ctx, value), codec)))
    }
}

struct Raw<R, F>(F, std::marker::PhantomData<fn() -> R>);

impl<R, F, Fut> Erased for Raw<R, F>
where
    R: IntoTaskResult + Send + 'static,
    F: Fn(TaskContext, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    fn start(&self, ctx: TaskContext, payload: Bytes) -> Result<HandlerFuture, Malformed> {
        let codec = ctx.codec;
        Ok(Box::pin(output((self.0)(ctx, payload), codec)))
    }
}

/// A raw handler whose payload must still be valid in its declared codec (see
/// [`Router::route_encoded`]).
struct Checked<R, F>(Raw<R, F>);

impl<R, F, Fut> Erased for Checked<R, F>
where
    R: IntoTaskResult + Send + 'static,
    F: Fn(TaskContext, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    fn start(&self, ctx: TaskContext, payload: Bytes) -> Result<HandlerFuture, Malformed> {
        // `bytes` is opaque; json and msgpack must parse as some value (decoded into
        // nothing: the cost is one pass over the payload, no allocation).
        if ctx.codec != Codec::Bytes {
            ctx.codec
                .decode::<serde::de::IgnoredAny>(&payload)
                .map_err(|e| Malformed(format!("payload does not decode: {e}")))?;
        }
        self.0.start(ctx, payload)
    }
}

/// Per-kind overrides of the worker's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RouteOptions {
    /// Attempts and backoff for this kind.
    pub retry: Option<RetryPolicy>,
    /// Handler timeout for this kind.
    pub timeout: Option<Duration>,
}

#[derive(Clone)]
pub(crate) struct Route {
    handler: Arc<dyn Erased>,
    pub(crate) options: RouteOptions,
    /// Dense, in the order kinds were first routed (a replaced handler keeps its kind's): the
    /// row of the kind in the worker's metrics, found without a second lookup.
    pub(crate) index: usize,
}

impl Route {
    pub(crate) fn start(&self, ctx: TaskContext, payload: Bytes) -> Result<HandlerFuture, Malformed> {
        self.handler.start(ctx, payload)
    }
}

/// Maps task kinds to handlers.
///
/// ```
/// use rivulet::{HandlerError, Router, TaskContext};
///
/// #[derive(serde::Deserialize)]
/// struct Resize { width: u32 }
///
/// let router = Router::new()
///     .route("resize", |_ctx: TaskContext, job: Resize| async move {
///         if job.width == 0 {
///             return Err(HandlerError::fatal("width must be positive"));
///         }
///         Ok(())
///     })
///     .route_bytes("echo", |_ctx, bytes| async move {
///         let _ = bytes;
///         Ok(())
///     })
///     // Only an error, or nothing at all: no type annotations needed.
///     .route("refuse", |_ctx: TaskContext, _job: Resize| async move {
///         Err(HandlerError::fatal("not today"))
///     })
///     .route_bytes("ping", |_ctx, _bytes| async move {})
///     // A result, kept in the task's record.
///     .route_returning("area", |_ctx: TaskContext, job: Resize| async move {
///         Ok(rivulet::Output(job.width * 2))
///     });
/// assert_eq!(router.kinds().count(), 5);
/// ```
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<String, Route>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("kinds", &self.kinds().collect::<Vec<_>>())
            .finish()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `kind` with a handler of a typed payload, decoded with the task's codec.
    /// A payload that does not decode goes to the dead-letter stream as `malformed`.
    ///
    /// The handler returns `Result<(), HandlerError>` or nothing at all; a handler that
    /// returns only `Err(...)` needs no type annotation. A handler with a result uses
    /// [`route_returning`](Self::route_returning).
    pub fn route<T, O, F, Fut>(self, kind: &str, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        O: HandlerReturn + Send + 'static,
        F: Fn(TaskContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
    {
        self.route_returning(kind, move |ctx: TaskContext, payload: T| {
            let fut = f(ctx, payload);
            async move { fut.await.into_handler_result() }
        })
    }

    /// Like [`route`](Self::route), for a handler with a result: it returns `Ok(())` (no
    /// result), `Ok(Output(value))` (a result encoded with the task's codec, kept in the
    /// task's record) or `Ok(bytes)` (raw bytes).
    pub fn route_returning<T, R, F, Fut>(self, kind: &str, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: IntoTaskResult + Send + 'static,
        F: Fn(TaskContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.insert(
            kind,
            Arc::new(Typed {
                f,
                _payload: std::marker::PhantomData,
            }),
        )
    }

    /// Serves `kind` with a handler of the raw payload bytes (returns as for
    /// [`route`](Self::route)).
    pub fn route_bytes<O, F, Fut>(self, kind: &str, f: F) -> Self
    where
        O: HandlerReturn + Send + 'static,
        F: Fn(TaskContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = O> + Send + 'static,
    {
        self.route_bytes_returning(kind, move |ctx: TaskContext, payload: Bytes| {
            let fut = f(ctx, payload);
            async move { fut.await.into_handler_result() }
        })
    }

    /// Serves `kind` with a handler of the raw payload bytes that has a result (as for
    /// [`route_returning`](Self::route_returning)).
    pub fn route_bytes_returning<R, F, Fut>(self, kind: &str, f: F) -> Self
    where
        R: IntoTaskResult + Send + 'static,
        F: Fn(TaskContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.insert(kind, Arc::new(Raw(f, std::marker::PhantomData)))
    }

    /// Serves `kind` with a handler of the raw payload bytes, like
    /// [`route_bytes`](Self::route_bytes), but only for a payload that is valid in the codec
    /// the task declares: a `json` or `msgpack` payload that does not parse goes to the
    /// dead-letter stream as `malformed` without the handler running (a `bytes` payload is
    /// never checked). For handlers that pass the payload on unread, such as a command.
    pub fn route_encoded<R, F, Fut>(self, kind: &str, f: F) -> Self
    where
        R: IntoTaskResult + Send + 'static,
        F: Fn(TaskContext, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.insert(kind, Arc::new(Checked(Raw(f, std::marker::PhantomData))))
    }

    /// Sets retry and timeout overrides for a kind already routed.
    pub fn options(mut self, kind: &str, options: RouteOptions) -> Self {
        if let Some(r) = self.routes.get_mut(kind) {
            r.options = options;
        }
        self
    }

    fn insert(mut self, kind: &str, handler: Arc<dyn Erased>) -> Self {
        let index = self.routes.get(kind).map_or(self.routes.len(), |r| r.index);
        self.routes.insert(
            kind.to_owned(),
            Route {
                handler,
                options: RouteOptions::default(),
                index,
            },
        );
        self
    }

    /// The kinds in the order of their routes' `index`.
    pub(crate) fn kinds_by_index(&self) -> Vec<String> {
        let mut kinds: Vec<(usize, &String)> = self.routes.iter().map(|(k, r)| (r.index, k)).collect();
        kinds.sort_unstable();
        kinds.into_iter().map(|(_, k)| k.clone()).collect()
    }

    /// The kinds this router serves.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// Whether `kind` is served.
    pub fn serves(&self, kind: &str) -> bool {
        self.routes.contains_key(kind)
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Route> {
        self.routes.get(kind)
    }
}
