//! `worker-cli dashboard`: the flags become a `rivulet_dashboard::Config`, checked before
//! Redis is touched (a bind beyond loopback without a token is bad usage, exit 2); then the
//! server runs until SIGTERM or Ctrl-C.

use anyhow::{Context, Result};
use rivulet_fleet::{Stop, UsageError};

use crate::cli::{DashboardArgs, GlobalArgs};
use crate::store;

pub async fn run(global: &GlobalArgs, args: &DashboardArgs) -> Result<()> {
    let generated = args.token.is_none();
    let token = match &args.token {
        Some(t) => t.clone(),
        None if !args.addr.ip().is_loopback() => String::new(),
        None => rivulet_dashboard::generate_token().context("making a token")?,
    };
    let config = rivulet_dashboard::Config {
        refresh: args.refresh,
        redis_budget: args.redis_budget,
        ..rivulet_dashboard::Config::new(args.addr, token.clone())
    };
    config.validate().map_err(|e| UsageError::new(e.to_string()))?;
    let (client, _) = store::connect_checked(&global.redis_url, &global.tls()).await?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    let addr = listener.local_addr()?;
    // stderr: the token is for the person who started the server, not for a log collector
    // reading stdout.
    note!("dashboard: http://{addr}/");
    if generated {
        note!("dashboard token (for changes; pass --token or RIVULET_DASHBOARD_TOKEN to choose it): {token}");
    }
    let stop = Stop::new();
    let mut signals = tokio::task::JoinSet::new();
    stop.on_signals(&mut signals)?;
    let drain = stop.drain.clone();
    rivulet_dashboard::serve(listener, client, config, async move { drain.cancelled().await }).await?;
    Ok(())
}
