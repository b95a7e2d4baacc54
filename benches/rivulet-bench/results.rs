//! What a run leaves on disk: `results.json` (flags, plan, every run, the summary, the
//! targets, the machine), `report.txt` (the tables), named by a UTC timestamp.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::report::{Check, RunResult};
use crate::stats::Spread;
use crate::suite::{Plan, RunArgs};

/// The document written to `results.json`.
#[derive(Serialize)]
pub struct Output {
    pub schema: u32,
    pub started_at: String,
    pub seconds: f64,
    pub machine: Machine,
    pub args: RunArgs,
    pub plan: Plan,
    pub runs: Vec<RunResult>,
    pub summary: BTreeMap<String, Spread>,
    pub targets: Vec<Check>,
}

/// The machine a run measured.
#[derive(Serialize)]
pub struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    redis_version: String,
    rivulet_commit: String,
}

/// This machine, the Redis version and the commit measured.
pub fn machine(redis_version: &str) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        redis_version: redis_version.to_owned(),
        rivulet_commit: commit,
    }
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `YYYYMMDD-HHMMSS` in UTC, without a date library.
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes `results.json` and `report.txt` into `dir`; returns the JSON's path.
pub fn write(dir: &Path, output: &Output, text: &str) -> Result<PathBuf> {
    let path = dir.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(output)?).with_context(|| format!("writing {}", path.display()))?;
    let report = dir.join("report.txt");
    std::fs::write(&report, text).with_context(|| format!("writing {}", report.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101-000000");
        // 2024-02-29 12:34:56 UTC.
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "20240229-123456"
        );
    }
}
