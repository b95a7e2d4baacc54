//! Logs: tracing to stderr (stdout carries only a command's data), filtered by `RUST_LOG`,
//! as text or one JSON object per line. One set-up for both binaries.

use std::io::IsTerminal;
use std::sync::OnceLock;

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

/// The environment variable that carries the log format from a supervisor to its worker
/// processes (`worker-cli` and the `autoscaler` read it as the default of `--log-format`).
pub const LOG_FORMAT_ENV: &str = "RIVULET_LOG_FORMAT";

/// The format [`init`] installed, for the children this process starts.
static INSTALLED: OnceLock<LogFormat> = OnceLock::new();

/// The log format this process logs in, once [`init`] has run.
pub fn installed_format() -> Option<LogFormat> {
    INSTALLED.get().copied()
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
    if installed.is_ok() {
        let _ = INSTALLED.set(format);
    }
    if let Some(bad) = bad
        && installed.is_ok()
    {
        tracing::warn!("{bad}");
    }
}

/// An error and its causes on one line, `outer: cause: root`, leaving out a cause whose text
/// the line already says (`redis: broken pipe` over an I/O error "Broken pipe (os error 32)"
/// reads once, not as `redis: broken pipe: broken pipe: Broken pipe (os error 32)`).
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    // Lower case, without the errno suffix std adds, for the "already said" comparison.
    fn gist(s: &str) -> String {
        let s = s.trim();
        let s = match s.rfind(" (os error ") {
            Some(i) if s.ends_with(')') => &s[..i],
            _ => s,
        };
        s.to_lowercase()
    }
    let mut out = String::new();
    let mut said = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let msg = c.to_string();
        let msg = msg.trim();
        let g = gist(msg);
        if !msg.is_empty() && !said.contains(&g) {
            if !out.is_empty() {
                out.push_str(": ");
                said.push_str(": ");
            }
            out.push_str(msg);
            said.push_str(&g);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{msg}")]
    struct Layer {
        msg: String,
        #[source]
        source: Option<Box<dyn std::error::Error + 'static>>,
    }

    fn layer(msg: &str, source: Option<Box<dyn std::error::Error + 'static>>) -> Box<dyn std::error::Error> {
        Box::new(Layer {
            msg: msg.into(),
            source,
        })
    }

    #[test]
    fn causes_already_said_are_left_out() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let io_text = io.to_string();
        let e = layer("redis: broken pipe", Some(layer("broken pipe", Some(Box::new(io)))));
        assert_eq!(describe_error(&*e), "redis: broken pipe", "io said {io_text:?}");
        let e = layer("starting worker 2", Some(layer("no such file", None)));
        assert_eq!(describe_error(&*e), "starting worker 2: no such file");
    }
}
