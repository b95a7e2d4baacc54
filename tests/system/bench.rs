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

/// worker-cli, next to this package's binaries (built when a narrower run did not).
fn worker_cli() -> std::path::PathBuf {
    rivulet::testing::workspace_binary(env!("CARGO_BIN_EXE_rivulet-bench"), "worker-cli", "worker-cli")
}

/// Processes whose command line names `needle` (the private server's URL: every worker process
/// the run started has it).
fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && !cmdline.contains("redis-server") {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// The scale scenarios (issue 18), tiny: idle worker-cli processes, a rate sweep with its
/// saturation point, many queues and many workers each run, report what they measured in the
/// tables and the JSON, and leave no worker process behind.
#[test]
fn bench_scale_scenarios_run_and_report() {
    let dir = TempDir::new("bench-scale");
    let out = Command::new(env!("CARGO_BIN_EXE_rivulet-bench"))
        .args([
            "--quick",
            "--only",
            "idle,rate-sweep,many-queues,many-workers",
            "--idle-queues",
            "1,3",
            "--idle-processes",
            "2",
            "--idle-seconds",
            "1",
            "--rate-sweep-rates",
            "20,500",
            "--rate-sweep-seconds",
            "1",
            "--tasks",
            "2000",
            "--many-queues",
            "20",
            "--many-workers",
            "1,3",
            "--many-tasks",
            "1200",
            "--worker-cli",
        ])
        .arg(worker_cli())
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("rivulet-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for title in ["## Idle:", "## Rate sweep:", "## Many queues:", "## Many workers:"] {
        assert!(stdout.contains(title), "no {title} table in:\n{stdout}");
    }
    assert!(
        stdout.contains("many workers: 3 processes drain ≥ 90 % of what 1 do"),
        "stdout:\n{stdout}"
    );
    // Every worker process is gone once the run has exited.
    let url = stderr
        .split_whitespace()
        .find(|w| w.starts_with("redis://127.0.0.1:"))
        .expect("the run names its private server");
    let left = processes_naming(url);
    assert!(left.is_empty(), "processes left behind: {left:?}");

    let runs: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1, "one results directory");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].path().join("results.json")).unwrap()).unwrap();
    let run = &json["runs"][0];

    let idle = run["idle"].as_array().unwrap();
    assert_eq!(idle.len(), 2, "{idle:?}");
    for (i, queues) in idle.iter().zip([1, 3]) {
        assert_eq!(i["queues"], queues);
        assert_eq!(i["processes"], 2);
        // An idle worker still polls: a window with no command at all measured nothing.
        assert!(i["commands_per_s_per_process"].as_f64().unwrap() > 0.0, "{i}");
    }

    let sweep = run["rate_sweep"].as_array().unwrap();
    let labels: Vec<&str> = sweep.iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["20", "500", "saturation"]);
    for p in sweep {
        assert!(p["tasks"].as_u64().unwrap() > 0, "{p}");
        assert!(p["commands_per_task"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["redis_cpu_us_per_task"].as_f64().unwrap() > 0.0, "{p}");
        // The commands by name add up to the total; records are on by default.
        let by_name: f64 = p["calls_per_task"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        let total = p["commands_per_task"].as_f64().unwrap();
        assert!((by_name - total).abs() < 1e-6 * total.max(1.0), "{p}");
        assert!(p["calls_per_task"]["xreadgroup"].as_f64().unwrap() > 0.0, "{p}");
        assert_eq!(p["records"], true, "{p}");
    }
    assert!(sweep[0]["p99_us"].as_u64().unwrap() > 0);

    let many_queues = run["many_queues"].as_array().unwrap();
    let counts: Vec<(u64, bool)> = many_queues
        .iter()
        .map(|d| (d["queues"].as_u64().unwrap(), d["spread"].as_bool().unwrap()))
        .collect();
    assert_eq!(counts, [(1, false), (1, true), (20, true)]);
    for d in many_queues {
        assert_eq!(u64s(&d["per_process_started"]).iter().sum::<u64>(), 1200, "{d}");
    }

    let many_workers = run["many_workers"].as_array().unwrap();
    for (d, workers) in many_workers.iter().zip([1, 3]) {
        let per = u64s(&d["per_process_started"]);
        assert_eq!(per.len(), workers, "{d}");
        assert_eq!(per.iter().sum::<u64>(), 1200, "{d}");
    }
    assert_eq!(many_workers.len(), 2);
    // Beside each, the bare fleet: as many bare-loop processes, every entry drained once.
    let bare = run["many_workers_bare"].as_array().unwrap();
    for (b, processes) in bare.iter().zip([1, 3]) {
        assert_eq!(b["processes"], processes, "{b}");
        let per = u64s(&b["per_process"]);
        assert_eq!((per.len(), per.iter().sum::<u64>()), (processes, 1200), "{b}");
        assert!(b["drain_per_s"].as_f64().unwrap() > 0.0, "{b}");
        assert!(b["client_cpu_us_per_entry"].as_f64().unwrap() > 0.0, "{b}");
        // Its Redis cost: at least the read, ack and delete of each batch.
        assert!(b["drain_redis"]["commands_per_task"].as_f64().unwrap() > 0.0, "{b}");
    }
    assert_eq!(bare.len(), 2);
    assert!(stdout.contains("bare fleet entries/s"), "stdout:\n{stdout}");
    let summary = &json["summary"];
    for key in [
        "idle.max_cmds_per_s",
        "sweep.max_cmds",
        "many_queues.ratio",
        "many_workers.ratio",
        "many_workers.bare_ratio",
        "many_workers.w3.vs_bare",
    ] {
        assert!(summary[key]["median"].as_f64().is_some(), "no {key} in the summary");
    }
}

/// A JSON array of counts.
fn u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect()
}

/// Flags no run can honour are bad usage: exit 2 before any server starts, naming the flag.
#[test]
fn bench_refuses_bad_scale_flags() {
    for (flag, value) in [
        ("--many-workers", "0"),
        ("--idle-queues", "0"),
        ("--rate-sweep-rates", "0"),
        ("--only", "nothing"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_rivulet-bench"))
            .args([flag, value])
            .output()
            .expect("rivulet-bench runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        let name = flag.trim_start_matches("--");
        assert!(
            stderr.contains(name) || stderr.contains("unknown scenario"),
            "{flag} {value}: {stderr}"
        );
    }
}
