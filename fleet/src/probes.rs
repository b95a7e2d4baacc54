//! The one HTTP server of the binaries' metrics and probes (`--metrics-addr`): Prometheus text
//! at `/metrics`, `/healthz` (the process answers: liveness) and `/readyz` (it can do its job:
//! readiness), as Prometheus and Kubernetes probes expect. The autoscaler and `worker-cli` (a
//! worker process, or the supervisor for its whole box) serve through it, each with its own
//! [`Probe`]: what to bring up to date before a scrape, and what "ready" means.
//!
//! Loopback by default, as the dashboard: [`bind`] refuses an address beyond loopback unless a
//! token is set (`--metrics-token`, or `RIVULET_METRICS_TOKEN`). With a token, `/metrics`
//! answers only requests that carry `Authorization: Bearer <token>` (compared in constant
//! time; Prometheus sends it with `authorization: {credentials: ...}` in its scrape config).
//! The probes stay open: they say only "ok" or why the process is not ready (never a URL or a
//! secret), and a kubelet probes without credentials.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::UsageError;

/// The environment variable that holds the metrics token (for both binaries' `--metrics-token`).
pub const TOKEN_ENV: &str = "RIVULET_METRICS_TOKEN";

/// What one binary's endpoints mean.
pub trait Probe: Send + Sync + 'static {
    /// Brings the registry's numbers up to date before `/metrics` encodes it (a supervisor
    /// asks its worker processes); nothing by default.
    fn refresh(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Why the process is not ready now (`/readyz` answers 503 with it), or `None` (200).
    fn not_ready(&self) -> impl Future<Output = Option<String>> + Send;
}

/// A bound `--metrics-addr`, ready for [`serve`].
#[derive(Debug)]
pub struct Listener {
    listener: tokio::net::TcpListener,
    token: Option<String>,
}

impl Listener {
    /// The address bound (the port the system chose for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Why `addr` may not be served with `token` (pure): beyond loopback without a token, or an
/// empty token.
pub fn check(addr: SocketAddr, token: Option<&str>) -> Result<(), UsageError> {
    match token {
        Some("") => Err(UsageError::new(format!(
            "--metrics-token ({TOKEN_ENV}) is empty: give a token, or leave it unset on a loopback --metrics-addr"
        ))),
        None if !addr.ip().is_loopback() => Err(UsageError::new(format!(
            "--metrics-addr {addr} is beyond loopback, and anyone who can reach it could read the metrics: set \
             --metrics-token ({TOKEN_ENV}), which /metrics then requires as a bearer token, or serve on \
             127.0.0.1 (the default rule, as for the dashboard)"
        ))),
        _ => Ok(()),
    }
}

/// Binds `addr` for [`serve`] after [`check`]ing it; a busy or foreign address is a usage
/// error too (exit 2), named with the flag, at start rather than in the background.
pub async fn bind(addr: SocketAddr, token: Option<String>) -> Result<Listener, UsageError> {
    check(addr, token.as_deref())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| UsageError::new(format!("cannot listen on --metrics-addr {addr}: {e}")))?;
    Ok(Listener { listener, token })
}

/// Equal bytes, in time that depends on the length only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request's headers carry the token (always, without one).
fn authorized(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
}

/// Serves `/metrics` (the registry, after [`Probe::refresh`]), `/healthz` and `/readyz` until
/// `stop` is cancelled.
pub async fn serve<P: Probe>(
    listener: Listener,
    registry: Arc<Registry>,
    probe: Arc<P>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let Listener { listener, token } = listener;
    tracing::info!(
        addr = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        token = token.is_some(),
        "metrics at /metrics, probes at /healthz and /readyz"
    );
    let token: Option<Arc<str>> = token.map(Into::into);
    let ready = probe.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let probe = ready.clone();
                async move {
                    match probe.not_ready().await {
                        None => (StatusCode::OK, "ready\n".to_owned()),
                        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let (probe, registry, token) = (probe.clone(), registry.clone(), token.clone());
                async move { metrics(&headers, token.as_deref(), &*probe, &registry).await }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn metrics<P: Probe>(headers: &HeaderMap, token: Option<&str>, probe: &P, registry: &Registry) -> Response {
    if !authorized(headers, token) {
        return (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required (--metrics-token)\n",
        )
            .into_response();
    }
    probe.refresh().await;
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_needs_a_token() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(check(at("127.0.0.1:9100"), None).is_ok());
        assert!(check(at("[::1]:9100"), None).is_ok());
        let e = check(at("0.0.0.0:9100"), None).unwrap_err();
        assert!(
            e.0.contains("beyond loopback") && e.0.contains("--metrics-token"),
            "{e}"
        );
        assert!(check(at("0.0.0.0:9100"), Some("s3cret")).is_ok());
        assert!(check(at("127.0.0.1:9100"), Some("")).unwrap_err().0.contains("empty"));
    }

    #[test]
    fn the_token_is_a_bearer_header() {
        let mut h = HeaderMap::new();
        assert!(authorized(&h, None));
        assert!(!authorized(&h, Some("t0k")));
        h.insert(AUTHORIZATION, "Bearer t0k".parse().unwrap());
        assert!(authorized(&h, Some("t0k")));
        assert!(!authorized(&h, Some("t0kk")));
        h.insert(AUTHORIZATION, "Basic t0k".parse().unwrap());
        assert!(!authorized(&h, Some("t0k")));
    }
}
