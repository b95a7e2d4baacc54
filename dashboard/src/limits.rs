//! Fleet-wide rate and concurrency limits (docs/limits.md) in the API and the page:
//! `GET /api/v1/limits` (a page of them, by name) and `GET /api/v1/limits/{name}`, with the
//! fields of `worker-cli limits --json`, and their OpenAPI document (merged into the API's).
//!
//! Redis cost: the names are one `SMEMBERS`; a limit's numbers are one round trip of 4
//! commands in its own slot (`Inspector::limit`). Both are cached for `refresh` and shared by
//! every page and client, so a page view costs at most 1 + 4 x (limits on the page) commands,
//! and nothing when its numbers are fresher than `refresh`; open pages add no load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use rivulet::LimitStatus;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::AppState;
use crate::api::{ApiErr, bad, not_found, page_size, path, query};
use crate::model::{ApiError, Page};

/// A rate limit's setting.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateView {
    /// Starts allowed per `per`.
    pub count: u32,
    /// The interval, ms (1000 for `/s`, 60000 for `/min`, 3600000 for `/h`).
    pub per: u64,
    /// Starts that may happen at once after a quiet spell.
    pub burst: u32,
}

/// A limit as it is now: the fields of `worker-cli limits --json`, the rate as its spec text,
/// and the age of the numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitView {
    /// The limit's name (a kind, or the `limit_key` tasks carry).
    pub name: String,
    /// The rate limit, as the last worker to start or to use the limit was configured (none:
    /// no rate limit).
    pub rate: Option<RateView>,
    /// The same as a spec, `10/s,burst=20`.
    pub rate_spec: Option<String>,
    /// The concurrency cap, as the last worker to start or to use the limit was configured
    /// (none: no cap).
    #[schema(minimum = 1)]
    pub max_running: Option<u32>,
    /// Starts in the last whole second.
    pub current_rate: u64,
    /// Tasks holding a running slot now (leases not run out).
    pub running: u64,
    /// Tasks waiting for the start time they reserved (rate limit).
    pub waiting_for_rate: u64,
    /// Tasks sent to wait for a running slot (concurrency cap).
    pub waiting_for_slot: u64,
    /// Starts granted since the limit was first used.
    pub granted: u64,
    /// Times a task was sent to wait (rate or cap) since the limit was first used.
    pub waited: u64,
    /// How old these numbers are, ms (cached for the dashboard's refresh interval).
    pub age_ms: u64,
}

impl LimitView {
    fn new(l: &LimitStatus, age: Duration) -> Self {
        LimitView {
            name: l.name.clone(),
            rate: l.rate.map(|r| RateView {
                count: r.count,
                per: r.per.as_millis() as u64,
                burst: r.burst,
            }),
            rate_spec: l.rate.map(|r| r.to_string()),
            max_running: l.max_running,
            current_rate: l.current_rate,
            running: l.running,
            waiting_for_rate: l.waiting_for_rate,
            waiting_for_slot: l.waiting_for_slot,
            granted: l.granted,
            waited: l.waited,
            age_ms: age.as_millis() as u64,
        }
    }
}

/// A page of limits, by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitList {
    /// The limits on this page.
    pub limits: Vec<LimitView>,
    /// Limits in all.
    pub total: usize,
    /// Where this page starts.
    pub offset: usize,
    /// Page size.
    pub limit: usize,
}

/// The limits' cache: the registered names and each limit's last numbers, each kept for
/// `refresh`.
#[derive(Debug)]
pub struct Cache {
    refresh: Duration,
    names: Mutex<Option<(Instant, Arc<Vec<String>>)>>,
    statuses: Mutex<HashMap<String, (Instant, LimitStatus)>>,
    /// One read at a time: concurrent requests for the same numbers wait and share.
    reading: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain map updates only: never poisoned by a panic mid-update.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    pub fn new(refresh: Duration) -> Self {
        Cache {
            refresh,
            names: Mutex::default(),
            statuses: Mutex::default(),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh_names(&self) -> Option<Arc<Vec<String>>> {
        lock(&self.names)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.refresh)
            .map(|(_, n)| n.clone())
    }

    /// The registered names, sorted.
    async fn names(&self, inspector: &rivulet::Inspector) -> rivulet::Result<Arc<Vec<String>>> {
        if let Some(n) = self.fresh_names() {
            return Ok(n);
        }
        let _reading = self.reading.lock().await;
        if let Some(n) = self.fresh_names() {
            return Ok(n);
        }
        let names = Arc::new(inspector.limit_names().await?);
        lock(&self.statuses).retain(|k, _| names.binary_search(k).is_ok());
        *lock(&self.names) = Some((Instant::now(), names.clone()));
        Ok(names)
    }

    /// The numbers of `names` (registered ones), each read again when older than `refresh`.
    async fn statuses(&self, inspector: &rivulet::Inspector, names: &[String]) -> rivulet::Result<Vec<LimitView>> {
        let stale = |s: &HashMap<String, (Instant, LimitStatus)>| {
            names
                .iter()
                .filter(|n| s.get(*n).is_none_or(|(at, _)| at.elapsed() >= self.refresh))
                .cloned()
                .collect::<Vec<_>>()
        };
        if !stale(&lock(&self.statuses)).is_empty() {
            let _reading = self.reading.lock().await;
            let missing = stale(&lock(&self.statuses));
            for name in missing {
                let status = inspector.limit(&name).await?;
                lock(&self.statuses).insert(name, (Instant::now(), status));
            }
        }
        let s = lock(&self.statuses);
        Ok(names
            .iter()
            .filter_map(|n| s.get(n))
            .map(|(at, l)| LimitView::new(l, at.elapsed()))
            .collect())
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/limits", get(list_limits))
        .route("/api/v1/limits/{name}", get(get_limit))
}

#[derive(OpenApi)]
#[openapi(paths(list_limits, get_limit))]
pub struct LimitsDoc;

type S = State<Arc<AppState>>;

/// Fleet-wide rate and concurrency limits workers registered, by name, paginated: the rate
/// and cap, starts in the last second, running slots against the cap, tasks waiting for the
/// rate and for a slot, totals granted and waited.
#[utoipa::path(get, path = "/api/v1/limits", tag = "limits", params(Page), responses(
    (status = 200, body = LimitList), (status = 400, body = ApiError)))]
async fn list_limits(State(state): S, q: Result<Query<Page>, QueryRejection>) -> Result<Json<LimitList>, ApiErr> {
    let page = query(q)?;
    let limit = page_size(page.limit)?;
    let offset = page.offset.unwrap_or(0) as usize;
    if offset > 10_000 {
        return Err(bad("offset is out of range: 0 to 10000"));
    }
    let names = state.limits.names(&state.inspector).await?;
    let on_page: Vec<String> = names.iter().skip(offset).take(limit).cloned().collect();
    Ok(Json(LimitList {
        limits: state.limits.statuses(&state.inspector, &on_page).await?,
        total: names.len(),
        offset,
        limit,
    }))
}

/// One limit (404 when no worker registered it).
#[utoipa::path(get, path = "/api/v1/limits/{name}", tag = "limits",
    params(("name" = String, Path, description = "Limit name")),
    responses((status = 200, body = LimitView), (status = 404, body = ApiError)))]
async fn get_limit(State(state): S, p: Result<Path<String>, PathRejection>) -> Result<Json<LimitView>, ApiErr> {
    let name = path(p)?;
    let names = state.limits.names(&state.inspector).await?;
    if names.binary_search(&name).is_err() {
        return Err(not_found(format!(
            "limit {name:?}: no worker registered it (workers register theirs when they start with --rate-limit or --max-running)"
        )));
    }
    let mut found = state
        .limits
        .statuses(&state.inspector, std::slice::from_ref(&name))
        .await?;
    found
        .pop()
        .map(Json)
        .ok_or_else(|| not_found(format!("limit {name:?}")))
}
