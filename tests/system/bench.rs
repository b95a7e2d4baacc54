//! `rivulet-bench --check`: a missed target fails the run, so the benchmark can gate a change.

use std::process::Command;

use rivulet::testing::TempDir;

/// A drain with 4 handler slots cannot reach the 100,000 tasks/s target (each slot would need
/// a task every 40 µs, settle round trip included), so `--check` must exit 1 and name it; the
/// tables and the results file are still written first.
#[test]
fn bench_check_exits_1_when_a_target_is_missed() {
    let dir = TempDir::new("bench-check");
    let out = Command::new(env!("CARGO_BIN_EXE_rivulet-bench"))
        .args([
            "--check",
            "--quick",
            "--only",
            "drain",
            "--tasks",
            "2000",
            "--workers",
            "1",
        ])
        .args(["--concurrency", "4", "--no-plots", "--no-done-probe", "--out"])
        .arg(dir.path())
        .output()
        .expect("rivulet-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("--check:") && stderr.contains("drain, 1 worker process ≥ 100,000 tasks/s"),
        "stderr:\n{stderr}"
    );
    // The verdict comes after the report, not instead of it.
    assert!(stdout.contains("missed"), "stdout:\n{stdout}");
    let runs: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(runs.len(), 1, "one results directory");
}
