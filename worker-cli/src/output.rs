//! Writing a command's data to stdout: JSON for machines, aligned tables for people, and the
//! small formatters both use. A closed stdout (`worker-cli workers | head -1`) ends the
//! command quietly and successfully, like other Unix tools that get EPIPE: writing returns
//! [`StdoutClosed`], which `main_with` turns into exit 0, so `stats --watch | head -1` stops
//! instead of writing into the void forever.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

/// Writes a line for people to stderr (notes, progress, errors), like `eprintln!` but without
/// panicking when stderr is closed (`worker-cli demo 2>&1 | head`).
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::output::note_raw(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes text to stderr as is, ignoring a closed stderr.
pub fn note_raw(s: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(s.as_bytes()).and_then(|()| err.flush());
}

/// The reader of stdout went away (EPIPE): the command has nobody left to tell anything and
/// ends. Not a failure: `main_with` exits 0 without a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// Whether `e` (or anything in its chain) is a closed stdout.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<StdoutClosed>())
}

/// Writes text to stdout. A closed stdout is [`StdoutClosed`]: callers pass it up with `?`
/// and the command ends (exit 0).
pub fn text(s: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    write_to(&mut out, s)
}

fn write_to(out: &mut impl Write, s: &str) -> Result<()> {
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// Writes a value as pretty JSON and a newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    text(&(serde_json::to_string_pretty(value)? + "\n"))
}

/// Writes a value as one line of JSON (for `--watch` streams).
pub fn json_line<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    text(&(serde_json::to_string(value)? + "\n"))
}

/// A table with a header row and columns padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether only the header is there.
    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// The table as text, two spaces between columns, no trailing spaces.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if c + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Microseconds for people: `850µs`, `12.3ms`, `4.20s`.
pub fn fmt_micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2}s", us as f64 / 1_000_000.0)
    }
}

/// A duration for people, at most two units: `350ms`, `4.2s`, `3m 10s`, `2h 5m`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    let s = ms / 1000;
    if ms < 1_000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{}m {}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d {}h", s / 86_400, (s % 86_400) / 3600)
    }
}

/// How long ago a ms-since-epoch timestamp was: `3.0s ago`; `-` for 0 (unknown).
pub fn fmt_ago(ms: u64, now_ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    format!("{} ago", fmt_duration(Duration::from_millis(now_ms.saturating_sub(ms))))
}

/// At most `max` characters of one line, with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut t = Table::new(&["ID", "NAME"]);
        assert!(t.is_empty());
        t.row(vec!["1".into(), "alpha".into()]);
        t.row(vec!["200".into(), "b".into()]);
        assert_eq!(t.render(), "ID   NAME\n1    alpha\n200  b\n");
    }

    #[test]
    fn a_closed_stdout_ends_the_command_and_other_errors_fail_it() {
        struct Broken(io::ErrorKind);
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(self.0.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let closed = write_to(&mut Broken(io::ErrorKind::BrokenPipe), "x").unwrap_err();
        assert!(is_stdout_closed(&closed), "{closed:#}");
        assert!(is_stdout_closed(&closed.context("printing stats")));
        let full = write_to(&mut Broken(io::ErrorKind::StorageFull), "x").unwrap_err();
        assert!(!is_stdout_closed(&full), "{full:#}");
        let mut ok = Vec::new();
        write_to(&mut ok, "fine\n").unwrap();
        assert_eq!(ok, b"fine\n");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_micros(850), "850µs");
        assert_eq!(fmt_micros(12_345), "12.3ms");
        assert_eq!(fmt_micros(4_200_000), "4.20s");
        assert_eq!(fmt_duration(Duration::from_millis(350)), "350ms");
        assert_eq!(fmt_duration(Duration::from_millis(4_200)), "4.2s");
        assert_eq!(fmt_duration(Duration::from_secs(190)), "3m 10s");
        assert_eq!(fmt_duration(Duration::from_secs(7_500)), "2h 5m");
        assert_eq!(fmt_ago(0, 5), "-");
        assert_eq!(fmt_ago(1_000, 4_000), "3.0s ago");
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
