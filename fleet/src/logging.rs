//! Logs: tracing to stderr (stdout carries only a command's data), filtered by `RUST_LOG`,
//! as text or one JSON object per line. One set-up for both binaries.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The flag value that selects this format (what a supervisor passes to its children).
    pub fn as_flag(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset or
/// invalid (an invalid one is reported, not silently ignored). Colour only on a terminal and
/// without `NO_COLOR`. A second call (a program that installed its own subscriber) keeps the
/// first.
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
    let installed = match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).try_init()
        }
        LogFormat::Json => builder.with_ansi(false).json().flatten_event(true).try_init(),
    };
    if let Some(bad) = bad
        && installed.is_ok()
    {
        tracing::warn!("{bad}");
    }
}
