//! Logs: tracing to stderr (stdout carries only a command's data), filtered by `RUST_LOG`,
//! as text or one JSON object per line.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset or
/// invalid (an invalid one is reported, not silently ignored).
pub fn init(format: LogFormat, default_filter: &str) {
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => match EnvFilter::try_new(&s) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new(default_filter),
                Some(format!("ignoring RUST_LOG={s:?}: {e}")),
            ),
        },
        _ => (EnvFilter::new(default_filter), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr must not turn every log line into a panic (the fallback report of a
        // failed write is an `eprintln!`, which panics then).
        .log_internal_errors(false)
        .with_target(false);
    // A second init (a user's binary that installed its own subscriber) keeps the first.
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some(bad) = bad
        && installed.is_ok()
    {
        tracing::warn!("{bad}");
    }
}
