//! The JSON API under `/api/v1`, `/metrics` and the probes, each handler annotated for the
//! OpenAPI document (`utoipa`), which `/api/v1/openapi.json` serves.
//!
//! Errors are JSON (`{"error": "..."}`): 404 for an unknown queue, task, dead letter or
//! schedule, 400 for a malformed body, path or query, 413 for a body over [`MAX_BODY_BYTES`](crate::MAX_BODY_BYTES),
//! 401 without the token where it is needed, 503 when Redis does not answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use rivulet::{CancelOutcome, DeadLetterId, DlqSelect, Enqueued, Queue, Task, TaskId, TaskState};
use utoipa::OpenApi;

use crate::AppState;
use crate::auth::Access;
use crate::model::*;
use crate::sampler;

type S = State<Arc<AppState>>;

/// An error answer: a status and a message for people.
#[derive(Debug)]
pub struct ApiErr(pub StatusCode, pub String);

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let mut res = (self.0, Json(ApiError { error: self.1 })).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<rivulet::Error> for ApiErr {
    fn from(e: rivulet::Error) -> Self {
        use rivulet::Error as E;
        let status = match &e {
            E::NotFound(_) | E::UnknownTask { .. } | E::InvalidQueueName { .. } => StatusCode::NOT_FOUND,
            E::UnknownPriority { .. } | E::InvalidConfig { .. } | E::Codec { .. } => StatusCode::BAD_REQUEST,
            E::Redis(_) | E::OutOfMemory { .. } | E::NotDurable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            // Redis errors carry no URL, so no password can leak here.
            tracing::warn!(error = %e, "request failed");
        }
        ApiErr(status, e.to_string())
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> ApiErr {
    ApiErr(StatusCode::BAD_REQUEST, msg.into())
}

pub(crate) fn not_found(msg: impl Into<String>) -> ApiErr {
    ApiErr(StatusCode::NOT_FOUND, msg.into())
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiErr> {
    match body {
        Ok(Json(v)) => Ok(v),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiErr(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {} bytes", crate::MAX_BODY_BYTES),
        )),
        Err(e) => Err(bad(format!("malformed body: {}", e.body_text()))),
    }
}

pub(crate) fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiErr> {
    p.map(|Path(v)| v).map_err(|e| bad(e.body_text()))
}

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiErr> {
    q.map(|Query(v)| v)
        .map_err(|e| bad(format!("malformed query: {}", e.body_text())))
}

pub(crate) fn page_size(limit: Option<u32>) -> Result<usize, ApiErr> {
    match limit.unwrap_or(25) {
        n @ 1..=100 => Ok(n as usize),
        n => Err(bad(format!("limit {n} is out of range: 1 to 100"))),
    }
}

/// The token rule as a layer: the API and `/metrics` need it for mutations (any method but
/// GET and HEAD), and for reads beyond loopback. The page and the probes do not (the page
/// must load to ask for the token; a probe carries none).
pub async fn require_token(State(state): S, req: Request, next: Next) -> Response {
    let p = req.uri().path();
    if p.starts_with("/api/") || p == "/metrics" {
        let access = if matches!(*req.method(), Method::GET | Method::HEAD) {
            Access::Read
        } else {
            Access::Mutate
        };
        if !state.auth.allows(req.headers(), access) {
            let what = match access {
                Access::Read => "reading beyond loopback",
                Access::Mutate => "this change",
            };
            return ApiErr(
                StatusCode::UNAUTHORIZED,
                format!("{what} needs the dashboard token: send Authorization: Bearer <token>"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/queues", get(list_queues))
        .route("/api/v1/queues/{queue}", get(get_queue))
        .route("/api/v1/queues/{queue}/pause", post(pause))
        .route("/api/v1/queues/{queue}/resume", post(resume))
        .route("/api/v1/queues/{queue}/tasks", get(list_tasks).post(enqueue))
        .route("/api/v1/queues/{queue}/tasks/{id}", get(get_task))
        .route("/api/v1/queues/{queue}/tasks/{id}/cancel", post(cancel))
        .route("/api/v1/queues/{queue}/tasks/{id}/retry", post(retry))
        .route("/api/v1/queues/{queue}/dead-letters", get(list_dead_letters))
        .route("/api/v1/queues/{queue}/dead-letters/replay", post(replay))
        .route("/api/v1/queues/{queue}/dead-letters/purge", post(purge))
        .route("/api/v1/queues/{queue}/dead-letters/{id}", get(get_dead_letter))
        .route("/api/v1/queues/{queue}/autoscaler", get(autoscaler))
        .route("/api/v1/queues/{queue}/groups", get(groups))
        .route("/api/v1/queues/{queue}/events", get(events))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/schedules", get(list_schedules))
        .route("/api/v1/schedules/{name}", get(get_schedule))
        .route("/api/v1/schedules/{name}/pause", post(pause_schedule))
        .route("/api/v1/schedules/{name}/resume", post(resume_schedule))
        .route("/api/v1/schedules/{name}/run-now", post(run_schedule_now))
        .fallback(fallback)
}

async fn fallback(req: Request) -> ApiErr {
    not_found(format!("no such page or endpoint: {}", req.uri().path()))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rivulet dashboard API",
        description = "Queues, tasks, dead letters, workers, schedules, fleet-wide limits and autoscaler decisions of a Rivulet installation. Mutations (POST) need `Authorization: Bearer <token>`; reads need it too when the server listens beyond loopback.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        healthz, readyz, list_queues, get_queue, pause, resume, list_tasks, enqueue, get_task, cancel, retry,
        list_dead_letters, get_dead_letter, replay, purge, autoscaler, groups, events, workers, list_schedules,
        get_schedule, pause_schedule, resume_schedule, run_schedule_now
    ),
    modifiers(&BearerScheme),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi.components.get_or_insert_default().add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3 document of the API, as JSON. Reads (GET) need the token only beyond
/// loopback: `reads_need_token` says which document to describe (the served one says what
/// the running server does).
pub fn openapi_json(reads_need_token: bool) -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::limits::LimitsDoc::openapi());
    if !reads_need_token {
        for item in doc.paths.paths.values_mut() {
            if let Some(get) = item.get.as_mut()
                && get.security.is_none()
            {
                // `{}`: no requirement; the token may still be sent.
                get.security = Some(vec![
                    utoipa::openapi::security::SecurityRequirement::default(),
                    utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new()),
                ]);
            }
        }
    }
    doc.to_pretty_json()
        .expect("the document is plain data and always serializes")
}

async fn openapi(State(state): S) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_json(state.auth.reads_need_token()),
    )
        .into_response()
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "probes", security(()), responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Ready: Redis answers PING within 2 s.
#[utoipa::path(get, path = "/readyz", tag = "probes", security(()), responses(
    (status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(state): S) -> Response {
    let mut conn = state.probe.clone();
    match tokio::time::timeout(Duration::from_secs(2), rivulet::store::ping(&mut conn)).await {
        Ok(Ok(())) => Json(Health { status: "ok".into() }).into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: format!("redis: {e}"),
            }),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "redis: no answer to PING within 2s".into(),
            }),
        )
            .into_response(),
    }
}

async fn queue_of(state: &AppState, name: &str) -> Result<Queue, ApiErr> {
    state.sampler.queue(name).await.map_err(|e| match e {
        rivulet::Error::Redis(_) => ApiErr::from(e),
        e => not_found(e.to_string()),
    })
}

async fn view(state: &AppState, queue: &Queue) -> Result<QueueView, ApiErr> {
    let snap = state.sampler.snapshot(queue).await?;
    let history = state.sampler.history(queue.name().as_str());
    Ok(QueueView::new(
        &snap.stats,
        queue.layout().shards,
        &history,
        snap.read_at.elapsed().as_millis() as u64,
    ))
}

/// Queues with their backlog per priority, in flight, oldest waiting age, rates, dead
/// letters and paused state, by name; and the page's throughput over 15 minutes.
#[utoipa::path(get, path = "/api/v1/queues", tag = "queues", params(Page), responses(
    (status = 200, body = QueueList), (status = 400, body = ApiError)))]
async fn list_queues(State(state): S, q: Result<Query<Page>, QueryRejection>) -> Result<Json<QueueList>, ApiErr> {
    let page = query(q)?;
    let limit = page_size(page.limit)?;
    let offset = page.offset.unwrap_or(0) as usize;
    if offset > 10_000 {
        return Err(bad("offset is out of range: 0 to 10000"));
    }
    let all = state.sampler.queues().await?;
    let mut queues = Vec::new();
    let mut histories = Vec::new();
    for q in all.iter().skip(offset).take(limit) {
        queues.push(view(&state, q).await?);
        histories.push(state.sampler.history(q.name().as_str()));
    }
    let throughput = sampler::throughput(&histories, sampler::now_ms(), 30_000, 30)
        .into_iter()
        .map(|(at_ms, [done_per_s, failed_per_s, enqueued_per_s])| ThroughputPoint {
            at_ms,
            done_per_s,
            failed_per_s,
            enqueued_per_s,
        })
        .collect();
    Ok(Json(QueueList {
        queues,
        total: all.len(),
        offset,
        limit,
        throughput,
    }))
}

/// One queue's numbers.
#[utoipa::path(get, path = "/api/v1/queues/{queue}", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 404, body = ApiError)))]
async fn get_queue(State(state): S, p: Result<Path<String>, PathRejection>) -> Result<Json<QueueView>, ApiErr> {
    let queue = queue_of(&state, &path(p)?).await?;
    Ok(Json(view(&state, &queue).await?))
}

/// Tells workers to stop fetching from the queue (running tasks finish).
#[utoipa::path(post, path = "/api/v1/queues/{queue}/pause", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn pause(State(state): S, p: Result<Path<String>, PathRejection>) -> Result<Json<QueueView>, ApiErr> {
    set_paused(state, p, true).await
}

/// Lets workers fetch from a paused queue again.
#[utoipa::path(post, path = "/api/v1/queues/{queue}/resume", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = QueueView), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn resume(State(state): S, p: Result<Path<String>, PathRejection>) -> Result<Json<QueueView>, ApiErr> {
    set_paused(state, p, false).await
}

async fn set_paused(
    state: Arc<AppState>,
    p: Result<Path<String>, PathRejection>,
    paused: bool,
) -> Result<Json<QueueView>, ApiErr> {
    let queue = queue_of(&state, &path(p)?).await?;
    if paused {
        state.inspector.pause(&queue).await?;
    } else {
        state.inspector.resume(&queue).await?;
    }
    tracing::info!(queue = %queue.name(), paused, "pause flag set from the dashboard");
    state.sampler.invalidate(queue.name().as_str());
    Ok(Json(view(&state, &queue).await?))
}

fn shard_of(queue: &Queue, id: &str) -> u16 {
    rivulet::keys::shard_for(id, queue.layout().shards)
}

/// Tasks of the queue in one state, paginated (listed from the structures that hold each
/// state; never a key scan).
#[utoipa::path(get, path = "/api/v1/queues/{queue}/tasks", tag = "tasks",
    params(("queue" = String, Path, description = "Queue name"), TaskQuery),
    responses((status = 200, body = TaskList), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn list_tasks(
    State(state): S,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<TaskQuery>, QueryRejection>,
) -> Result<Json<TaskList>, ApiErr> {
    let queue = queue_of(&state, &path(p)?).await?;
    let q = query(q)?;
    let st = q.state.map_or(TaskState::Queued, StateName::state);
    let limit = page_size(q.limit)?;
    let offset = q.offset.unwrap_or(0) as usize;
    if offset > 1000 {
        return Err(bad("offset is out of range: 0 to 1000"));
    }
    // One more than the page, to tell whether another follows.
    let found = state.client.tasks_at_offset(&queue, st, offset, limit + 1).await?;
    let has_more = found.len() > limit;
    let tasks = found
        .into_iter()
        .take(limit)
        .map(|t| {
            let shard = shard_of(&queue, t.id.as_str());
            TaskView::new(t, shard)
        })
        .collect();
    Ok(Json(TaskList {
        state: st.as_str().to_owned(),
        tasks,
        offset,
        limit,
        has_more,
    }))
}

/// Enqueues a task.
#[utoipa::path(post, path = "/api/v1/queues/{queue}/tasks", tag = "tasks",
    params(("queue" = String, Path, description = "Queue name")),
    request_body = EnqueueRequest,
    responses((status = 201, body = EnqueueReply), (status = 200, body = EnqueueReply, description = "A duplicate of a unique task"),
        (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError), (status = 413, body = ApiError)))]
async fn enqueue(
    State(state): S,
    p: Result<Path<String>, PathRejection>,
    body: Result<Json<EnqueueRequest>, JsonRejection>,
) -> Result<Response, ApiErr> {
    let queue = queue_of(&state, &path(p)?).await?;
    let req = json_body(body)?;
    if req.kind.is_empty() || req.kind.len() > 200 {
        return Err(bad("kind must be 1 to 200 characters"));
    }
    let mut task = match req.codec.unwrap_or(CodecName::Json) {
        CodecName::Json => Task::json(&req.kind, &req.payload)?,
        CodecName::Msgpack => Task::msgpack(&req.kind, &req.payload)?,
    };
    if let Some(p) = req.priority {
        // The queue's priorities are part of the resource: one it does not have is not found.
        queue.rank(&p).map_err(|e| not_found(e.to_string()))?;
        task = task.priority(p);
    }
    if let Some(ms) = req.delay_ms {
        if ms > 366 * 24 * 3600 * 1000 {
            return Err(bad("delay_ms is over a year"));
        }
        task = task.delay(Duration::from_millis(ms));
    }
    if let Some(n) = req.max_attempts {
        if n == 0 {
            return Err(bad("max_attempts is at least 1"));
        }
        task = task.max_attempts(n);
    }
    if let Some(k) = req.unique_key {
        if k.is_empty() {
            return Err(bad("unique_key must not be empty"));
        }
        task = task.unique_key(k);
    }
    if let Some(g) = req.group {
        rivulet::envelope::check_group(&g).map_err(|m| bad(m.0))?;
        task = task.group(g);
    }
    let done = state.client.submit(&queue, task).await?;
    state.sampler.invalidate(queue.name().as_str());
    let (status, reply) = match done {
        Enqueued::New(id) => (
            StatusCode::CREATED,
            EnqueueReply {
                id: id.to_string(),
                duplicate: false,
            },
        ),
        Enqueued::Duplicate(id) => (
            StatusCode::OK,
            EnqueueReply {
                id: id.to_string(),
                duplicate: true,
            },
        ),
    };
    Ok((status, Json(reply)).into_response())
}

fn task_id(id: String) -> Result<TaskId, ApiErr> {
    if id.is_empty() || id.len() > 200 {
        return Err(not_found(format!("task {id:?}")));
    }
    Ok(TaskId::from_string(id))
}

/// One task: state, attempts, errors, result, progress, payload and its events.
#[utoipa::path(get, path = "/api/v1/queues/{queue}/tasks/{id}", tag = "tasks",
    params(("queue" = String, Path, description = "Queue name"), ("id" = String, Path, description = "Task id")),
    responses((status = 200, body = TaskView), (status = 404, body = ApiError)))]
async fn get_task(State(state): S, p: Result<Path<(String, String)>, PathRejection>) -> Result<Json<TaskView>, ApiErr> {
    let (name, id) = path(p)?;
    let queue = queue_of(&state, &name).await?;
    let id = task_id(id)?;
    let st = state.client.status(&queue, &id).await?;
    if st.state == TaskState::Unknown {
        return Err(not_found(format!(
            "task {id} in queue {name}: no record (never enqueued here, tracking off, or expired)"
        )));
    }
    let mut view = TaskView::new(st, shard_of(&queue, id.as_str()));
    view.payload = state
        .client
        .payload(&queue, &id)
        .await?
        .map(|(bytes, codec)| Decoded::new(&bytes, codec));
    view.events = Some(
        state
            .client
            .task_events(&queue, &id, 1000)
            .await?
            .into_iter()
            .map(EventView::from)
            .collect(),
    );
    Ok(Json(view))
}

/// Cancels a task: a waiting one never starts; a running one is stopped by its worker.
#[utoipa::path(post, path = "/api/v1/queues/{queue}/tasks/{id}/cancel", tag = "tasks",
    params(("queue" = String, Path, description = "Queue name"), ("id" = String, Path, description = "Task id")),
    responses((status = 200, body = CancelReply), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn cancel(
    State(state): S,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<CancelReply>, ApiErr> {
    let (name, id) = path(p)?;
    let queue = queue_of(&state, &name).await?;
    let id = task_id(id)?;
    let (outcome, st) = match state.client.cancel(&queue, &id).await? {
        CancelOutcome::Cancelled => ("cancelled", None),
        CancelOutcome::Cancelling => ("cancelling", None),
        CancelOutcome::AlreadyFinished(s) => ("finished", Some(s.as_str().to_owned())),
    };
    tracing::info!(queue = %name, task_id = %id, outcome, "cancel from the dashboard");
    state.sampler.invalidate(&name);
    Ok(Json(CancelReply {
        outcome: outcome.into(),
        state: st,
    }))
}

/// Retries a dead task: replays its dead letter (attempts reset).
#[utoipa::path(post, path = "/api/v1/queues/{queue}/tasks/{id}/retry", tag = "tasks",
    params(("queue" = String, Path, description = "Queue name"), ("id" = String, Path, description = "Task id")),
    responses((status = 200, body = CountReply), (status = 409, body = ApiError, description = "The task is not dead"),
        (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn retry(State(state): S, p: Result<Path<(String, String)>, PathRejection>) -> Result<Json<CountReply>, ApiErr> {
    let (name, id) = path(p)?;
    let queue = queue_of(&state, &name).await?;
    let id = task_id(id)?;
    let st = state.client.status(&queue, &id).await?;
    if st.state == TaskState::Unknown {
        return Err(not_found(format!("task {id} in queue {name}")));
    }
    let shard = shard_of(&queue, id.as_str());
    let Some(letter) = TaskView::new(st.clone(), shard).dead_letter else {
        return Err(ApiErr(
            StatusCode::CONFLICT,
            format!("task {id} is {}, not dead: only a dead task is retried", st.state),
        ));
    };
    let letter: DeadLetterId = letter.parse()?;
    let count = state.inspector.dlq_replay(&queue, &DlqSelect::Id(letter)).await?;
    tracing::info!(queue = %name, task_id = %id, "retry (replay) from the dashboard");
    state.sampler.invalidate(&name);
    Ok(Json(CountReply { count }))
}

/// Dead letters, oldest first, filtered by kind and reason, paginated with `after`.
#[utoipa::path(get, path = "/api/v1/queues/{queue}/dead-letters", tag = "dead letters",
    params(("queue" = String, Path, description = "Queue name"), DlqQuery),
    responses((status = 200, body = DeadLetterList), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn list_dead_letters(
    State(state): S,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiErr> {
    let queue = queue_of(&state, &path(p)?).await?;
    let q = query(q)?;
    let limit = page_size(q.limit)?;
    if let Some(a) = &q.after
        && !valid_entry_id(a)
    {
        return Err(bad(format!("after {a:?}: entry ids look like 1700000000000-0")));
    }
    // A filter reads up to 5 pages of 200 to fill the page (bounded), then says where it
    // stopped, so the next request goes on from there.
    const SCAN: usize = 200;
    let filtered = q.kind.is_some() || q.reason.is_some();
    let mut after = q.after.clone();
    let mut out = Vec::new();
    let mut next = None;
    for _ in 0..if filtered { 5 } else { 1 } {
        let want = if filtered { SCAN } else { limit + 1 };
        let page = state.inspector.dlq_list(&queue, after.as_deref(), want).await?;
        let full = page.len() == want;
        let mut last = None;
        for d in page {
            if out.len() == limit {
                next = last.clone();
                break;
            }
            last = Some(d.id.entry.clone());
            if q.kind.as_ref().is_some_and(|k| *k != d.kind)
                || q.reason.as_ref().is_some_and(|r| r != d.reason.as_str())
            {
                continue;
            }
            out.push(DeadLetterView::new(d));
        }
        if next.is_some() {
            break;
        }
        if !full {
            // The end: nothing follows.
            next = None;
            break;
        }
        // Scanned a whole page without filling ours: go on, or say where the scan stopped.
        after = last.clone();
        next = last;
    }
    Ok(Json(DeadLetterList {
        dead_letters: out,
        next,
    }))
}

/// A stream entry id `ms-seq` (both parts decimal u64).
fn valid_entry_id(s: &str) -> bool {
    s.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u64>().is_ok())
    })
}

fn letter_id(queue: &Queue, s: &str) -> Result<DeadLetterId, ApiErr> {
    let id: DeadLetterId = s.parse().map_err(|e: rivulet::Error| not_found(e.to_string()))?;
    if queue.rank(&id.priority).is_err() || id.shard >= queue.layout().shards || !valid_entry_id(&id.entry) {
        return Err(not_found(format!("dead letter {s:?} in queue {}", queue.name())));
    }
    Ok(id)
}

/// One dead letter, its whole payload decoded.
#[utoipa::path(get, path = "/api/v1/queues/{queue}/dead-letters/{id}", tag = "dead letters",
    params(("queue" = String, Path, description = "Queue name"),
        ("id" = String, Path, description = "Dead letter id, priority/shard/entry (URL-encoded)")),
    responses((status = 200, body = DeadLetterView), (status = 404, body = ApiError)))]
async fn get_dead_letter(
    State(state): S,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<DeadLetterView>, ApiErr> {
    let (name, id) = path(p)?;
    let queue = queue_of(&state, &name).await?;
    let id = letter_id(&queue, &id)?;
    Ok(Json(DeadLetterView::new(state.inspector.dlq_get(&queue, &id).await?)))
}

fn selection(queue: &Queue, sel: DlqSelection) -> Result<Vec<DlqSelect>, ApiErr> {
    match sel {
        DlqSelection::Ids(SelectIds { ids }) if !ids.is_empty() && ids.len() <= 1000 => {
            ids.iter().map(|s| letter_id(queue, s).map(DlqSelect::Id)).collect()
        }
        DlqSelection::Kind(SelectKind { kind }) if !kind.is_empty() => Ok(vec![DlqSelect::Kind(kind)]),
        DlqSelection::All(SelectAll { all: true }) => Ok(vec![DlqSelect::All]),
        DlqSelection::All(SelectAll { all: false }) => Ok(vec![]),
        _ => Err(bad(
            "select one of: ids (1 to 1000 dead letter ids), kind (a non-empty kind), all: true",
        )),
    }
}

/// Replays dead letters (back into their streams, attempts reset).
#[utoipa::path(post, path = "/api/v1/queues/{queue}/dead-letters/replay", tag = "dead letters",
    params(("queue" = String, Path, description = "Queue name")), request_body = DlqSelection,
    responses((status = 200, body = CountReply), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 404, body = ApiError), (status = 413, body = ApiError)))]
async fn replay(
    State(state): S,
    p: Result<Path<String>, PathRejection>,
    body: Result<Json<DlqSelection>, JsonRejection>,
) -> Result<Json<CountReply>, ApiErr> {
    dlq_apply(state, p, body, true).await
}

/// Deletes dead letters.
#[utoipa::path(post, path = "/api/v1/queues/{queue}/dead-letters/purge", tag = "dead letters",
    params(("queue" = String, Path, description = "Queue name")), request_body = DlqSelection,
    responses((status = 200, body = CountReply), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 404, body = ApiError), (status = 413, body = ApiError)))]
async fn purge(
    State(state): S,
    p: Result<Path<String>, PathRejection>,
    body: Result<Json<DlqSelection>, JsonRejection>,
) -> Result<Json<CountReply>, ApiErr> {
    dlq_apply(state, p, body, false).await
}

async fn dlq_apply(
    state: Arc<AppState>,
    p: Result<Path<String>, PathRejection>,
    body: Result<Json<DlqSelection>, JsonRejection>,
    replay: bool,
) -> Result<Json<CountReply>, ApiErr> {
    let queue = queue_of(&state, &path(p)?).await?;
    let selects = selection(&queue, json_body(body)?)?;
    let mut count = 0;
    for s in &selects {
        let done = if replay {
            state.inspector.dlq_replay(&queue, s).await
        } else {
            state.inspector.dlq_purge(&queue, s).await
        };
        match done {
            Ok(n) => count += n,
            // One of several ids already gone (replayed by someone else): the rest go on.
            Err(rivulet::Error::NotFound(_)) if selects.len() > 1 => {}
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(queue = %queue.name(), replay, count, "dead letters changed from the dashboard");
    state.sampler.invalidate(queue.name().as_str());
    Ok(Json(CountReply { count }))
}

/// The autoscaler's latest decision and those seen in the last 15 minutes.
#[utoipa::path(get, path = "/api/v1/queues/{queue}/autoscaler", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = AutoscalerView), (status = 404, body = ApiError)))]
async fn autoscaler(State(state): S, p: Result<Path<String>, PathRejection>) -> Result<Json<AutoscalerView>, ApiErr> {
    let queue = queue_of(&state, &path(p)?).await?;
    let snap = state.sampler.snapshot(&queue).await?;
    Ok(Json(AutoscalerView {
        queue: queue.name().to_string(),
        latest: snap.decision.as_deref().and_then(|j| serde_json::from_str(j).ok()),
        history: state
            .sampler
            .decisions(queue.name().as_str())
            .into_iter()
            .map(DecisionView::from)
            .collect(),
    }))
}

/// The queue's fair groups: each group with tasks waiting for its turn (count, weight, turns
/// away, running against a per-group cap) and each shard's virtual clock (docs/groups.md).
#[utoipa::path(get, path = "/api/v1/queues/{queue}/groups", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, body = GroupsView), (status = 404, body = ApiError)))]
async fn groups(State(state): S, p: Result<Path<String>, PathRejection>) -> Result<Json<GroupsView>, ApiErr> {
    let queue = queue_of(&state, &path(p)?).await?;
    Ok(Json(state.inspector.groups(&queue).await?.into()))
}

/// Live worker processes.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers",
    responses((status = 200, body = [WorkerView])))]
async fn workers(State(state): S) -> Result<Json<Vec<WorkerView>>, ApiErr> {
    Ok(Json(
        state.sampler.workers().await?.iter().map(WorkerView::from).collect(),
    ))
}

/// Server-sent events: the queue's lifecycle events from now on (`event: task`, data an
/// `EventView` as JSON), read every second; `task` keeps one task's.
#[utoipa::path(get, path = "/api/v1/queues/{queue}/events", tag = "tasks",
    params(("queue" = String, Path, description = "Queue name"), EventsQuery),
    responses((status = 200, content_type = "text/event-stream", body = String, description = "A stream of `task` events"),
        (status = 404, body = ApiError)))]
async fn events(
    State(state): S,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiErr> {
    let queue = queue_of(&state, &path(p)?).await?;
    let only = query(q)?.task;
    let cursor = state.client.events_now(&queue).await?;
    let client = state.client.clone();
    let every = state.refresh.min(Duration::from_secs(1));
    let stream = futures_util::stream::unfold(
        (client, queue, cursor, only, Vec::<SseEvent>::new()),
        move |(client, queue, mut cursor, only, mut ready)| async move {
            loop {
                if let Some(e) = ready.pop() {
                    return Some((Ok(e), (client, queue, cursor, only, ready)));
                }
                tokio::time::sleep(every).await;
                match client.events(&queue, &mut cursor, 200).await {
                    Ok(found) => {
                        ready = found
                            .into_iter()
                            .filter(|e| only.as_ref().is_none_or(|t| *t == e.task_id))
                            .filter_map(|e| SseEvent::default().event("task").json_data(EventView::from(e)).ok())
                            .collect();
                        ready.reverse();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading events for a stream failed");
                        let ev = SseEvent::default()
                            .event("error")
                            .data("reading events failed; retrying");
                        return Some((Ok(ev), (client, queue, cursor, only, ready)));
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn schedule_view(state: &AppState, name: &str) -> Result<ScheduleView, ApiErr> {
    match state.schedules.get(name).await? {
        Some(info) => Ok(ScheduleView::from(info)),
        None => Err(not_found(format!("schedule {name:?}"))),
    }
}

/// Every schedule, by name: its cadence, state, last and next fire times.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules",
    responses((status = 200, body = ScheduleList)))]
async fn list_schedules(State(state): S) -> Result<Json<ScheduleList>, ApiErr> {
    let schedules = state.schedules.list().await?;
    Ok(Json(ScheduleList {
        schedules: schedules.into_iter().map(ScheduleView::from).collect(),
    }))
}

/// One schedule, with its next 5 fire times.
#[utoipa::path(get, path = "/api/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = ScheduleView), (status = 404, body = ApiError)))]
async fn get_schedule(State(state): S, p: Result<Path<String>, PathRejection>) -> Result<Json<ScheduleView>, ApiErr> {
    Ok(Json(schedule_view(&state, &path(p)?).await?))
}

/// Pauses a schedule: it fires nothing until resumed.
#[utoipa::path(post, path = "/api/v1/schedules/{name}/pause", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = ScheduleView), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn pause_schedule(State(state): S, p: Result<Path<String>, PathRejection>) -> Result<Json<ScheduleView>, ApiErr> {
    set_schedule_paused(state, p, true).await
}

/// Resumes a paused schedule: it fires from now on (fire times in the pause are not run).
#[utoipa::path(post, path = "/api/v1/schedules/{name}/resume", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = ScheduleView), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn resume_schedule(
    State(state): S,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<ScheduleView>, ApiErr> {
    set_schedule_paused(state, p, false).await
}

async fn set_schedule_paused(
    state: Arc<AppState>,
    p: Result<Path<String>, PathRejection>,
    paused: bool,
) -> Result<Json<ScheduleView>, ApiErr> {
    let name = path(p)?;
    if paused {
        state.schedules.pause(&name).await?;
    } else {
        state.schedules.resume(&name).await?;
    }
    tracing::info!(schedule = %name, paused, "schedule pause flag set from the dashboard");
    Ok(Json(schedule_view(&state, &name).await?))
}

/// Enqueues one task of the schedule now, outside its fire times (its next fire is kept).
#[utoipa::path(post, path = "/api/v1/schedules/{name}/run-now", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 201, body = RunNowReply), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn run_schedule_now(State(state): S, p: Result<Path<String>, PathRejection>) -> Result<Response, ApiErr> {
    let name = path(p)?;
    let view = schedule_view(&state, &name).await?;
    let id = state.schedules.run_now(&name).await?;
    tracing::info!(schedule = %name, task_id = %id, "schedule run now from the dashboard");
    state.sampler.invalidate(&view.queue);
    let reply = RunNowReply {
        queue: view.queue,
        id: id.to_string(),
    };
    Ok((StatusCode::CREATED, Json(reply)).into_response())
}
