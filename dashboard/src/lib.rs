//! rivulet-dashboard: one axum server with Rivulet's web dashboard, its JSON API under
//! `/api/v1` (OpenAPI 3 at `/api/v1/openapi.json`), Prometheus `/metrics` for the queues it
//! can see, and the `/healthz` / `/readyz` probes. `worker-cli dashboard` runs it.
//!
//! # Layout
//! - here: [`Config`] (address, token, refresh cadence, Redis budget) and its checks, [`serve`]
//!   (`serve(listener, redis, config, shutdown)`, so tests pass a oneshot and the binary
//!   passes ctrl-c), the router.
//! - `auth`: the bearer token, compared in constant time; which requests need it.
//! - `sampler`: the one place queue numbers are read from Redis: a cache shared by every page
//!   and API client, refreshed by one loop within a budget of Redis commands per second, and
//!   the in-memory history behind the throughput and autoscaler charts.
//! - `api`: the `/api/v1` handlers, their OpenAPI annotations and the error type.
//! - `model`: what the API answers (typed, with schemas), built from the engine's views;
//!   payload and result decoding (JSON pretty-printed, MessagePack decoded, bytes as hex).
//! - `limits`: `/api/v1/limits` (the fleet-wide limits, cached for `refresh`), its types and
//!   OpenAPI operations.
//! - `metrics`: `/metrics`, from the sampler's cache (no Redis command of its own).
//! - `assets`: the page, its script and style, embedded with `include_str!`.
//!
//! Every Redis command goes through the engine (`Client`, `Inspector`, `Schedules`,
//! `rivulet::store`).

#![forbid(unsafe_code)]

mod api;
mod assets;
mod auth;
mod limits;
mod metrics;
mod model;
mod sampler;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::openapi_json;

/// Default address: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// How often pages poll and how old the numbers of a queue someone looks at may get, when the
/// budget allows.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(2);
/// Redis commands per second the dashboard allows itself for queue numbers (commands inside
/// scripts counted), however many pages are open.
pub const DEFAULT_REDIS_BUDGET: f64 = 25.0;
/// Largest request body accepted (an enqueue's payload included); more is answered 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The server's settings.
#[derive(Clone)]
pub struct Config {
    /// Where to listen (used by [`Config::validate`]; [`serve`] takes a bound listener).
    pub addr: SocketAddr,
    /// The bearer token. Mutations always need it; reads too when `addr` is not loopback.
    pub token: String,
    /// See [`DEFAULT_REFRESH`].
    pub refresh: Duration,
    /// See [`DEFAULT_REDIS_BUDGET`].
    pub redis_budget: f64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("refresh", &self.refresh)
            .field("redis_budget", &self.redis_budget)
            .finish_non_exhaustive()
    }
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A bind beyond loopback without a token would let anyone who can reach the port read
    /// and change the queues.
    #[error(
        "refusing to listen on {addr} without a token: beyond loopback every request needs one; pass --token T (or RIVULET_DASHBOARD_TOKEN), or listen on 127.0.0.1"
    )]
    TokenRequired {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// A value out of range.
    #[error("invalid dashboard setting {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Config {
    /// A loopback configuration with `token`.
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Self {
        Config {
            addr,
            token: token.into(),
            refresh: DEFAULT_REFRESH,
            redis_budget: DEFAULT_REDIS_BUDGET,
        }
    }

    /// Whether reads need the token too (any address that is not loopback).
    pub fn reads_need_token(&self) -> bool {
        !self.addr.ip().is_loopback()
    }

    /// Checks the settings: a token is required beyond loopback, and tokens are at least 8
    /// characters of visible ASCII (they travel in a header).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token.is_empty() && self.reads_need_token() {
            return Err(ConfigError::TokenRequired { addr: self.addr });
        }
        if self.token.len() < 8 || !self.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid {
                field: "token",
                reason: "a token is at least 8 visible ASCII characters (no spaces)".into(),
            });
        }
        if self.refresh < Duration::from_millis(200) || self.refresh > Duration::from_secs(60) {
            return Err(ConfigError::Invalid {
                field: "refresh",
                reason: "between 200ms and 60s".into(),
            });
        }
        if !(self.redis_budget.is_finite() && self.redis_budget >= 5.0) {
            return Err(ConfigError::Invalid {
                field: "redis_budget",
                reason: "at least 5 commands per second".into(),
            });
        }
        Ok(())
    }
}

/// A random token of 32 hex digits from the kernel's CSPRNG, for a loopback server started
/// without one (the binary prints it once).
pub fn generate_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Connecting to Redis failed.
    #[error("connecting to Redis: {0}")]
    Redis(#[from] rivulet::Error),
    /// The listener failed.
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub client: rivulet::Client,
    pub inspector: rivulet::Inspector,
    pub schedules: rivulet::Schedules,
    pub sampler: sampler::Sampler,
    pub limits: limits::Cache,
    pub auth: auth::Auth,
    pub refresh: Duration,
    /// For `/readyz`: a connection of its own, so a probe never waits behind a slow query.
    pub probe: rivulet::RedisConnection,
}

/// Serves the dashboard on `listener` until `shutdown` resolves. Connects to Redis at
/// `target` (a single node, a cluster or a Sentinel-managed master; its URL, password
/// included, is never shown anywhere).
pub async fn serve(
    listener: TcpListener,
    target: impl Into<rivulet::RedisTarget>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    let target = target.into();
    let client = rivulet::Client::new(&target).await?;
    let inspector = rivulet::Inspector::new(&target).await?;
    let schedules = rivulet::Schedules::new(&target).await?;
    // The probe's `PING` is bounded by a timeout in the handler (2 s).
    let probe = target.connect().await?;
    let state = Arc::new(AppState {
        sampler: sampler::Sampler::new(inspector.clone(), config.refresh, config.redis_budget),
        limits: limits::Cache::new(config.refresh),
        client,
        inspector,
        schedules,
        auth: auth::Auth::new(config.token.clone(), config.reads_need_token()),
        refresh: config.refresh,
        probe,
    });
    let stop = CancellationToken::new();
    // The sampler is the server's one background task: it ends with the server (below).
    let mut tasks = tokio::task::JoinSet::new();
    {
        let state = state.clone();
        let stop = stop.clone();
        tasks.spawn(async move { state.sampler.run(stop).await });
    }
    tracing::info!(addr = %listener.local_addr()?, reads_need_token = config.reads_need_token(), "dashboard listening");
    let app = router(state);
    let server_stop = stop.clone();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => {}
                () = server_stop.cancelled() => {}
            }
        })
        .await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(result?)
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(assets::routes())
        .merge(api::routes())
        .merge(limits::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), api::require_token))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Headers on every answer: no sniffing of JSON as HTML, no framing, and a content security
/// policy that runs only the dashboard's own script (a second wall behind the escaping).
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(addr: &str, token: &str) -> Config {
        Config::new(addr.parse().unwrap(), token)
    }

    #[test]
    fn a_bind_beyond_loopback_needs_a_token() {
        let e = config("0.0.0.0:8080", "").validate().unwrap_err();
        assert!(matches!(e, ConfigError::TokenRequired { .. }), "{e}");
        assert!(e.to_string().contains("--token"), "{e}");
        assert!(config("0.0.0.0:8080", "0123456789abcdef").validate().is_ok());
        assert!(config("[::1]:8080", "0123456789abcdef").validate().is_ok());
        assert!(!config("127.0.0.2:1", "x").reads_need_token());
        assert!(config("10.0.0.1:1", "x").reads_need_token());
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert!(config("127.0.0.1:8080", "short").validate().is_err());
        assert!(config("127.0.0.1:8080", "has a space in it").validate().is_err());
    }

    #[test]
    fn generated_tokens_are_long_and_differ() {
        let (a, b) = (generate_token().unwrap(), generate_token().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
