//! The task lifecycle through the CLI and `--exec` handlers: real worker-cli processes, a
//! private `redis-server` per test. Every state is reached and read back with `task show`,
//! `task wait`, `task cancel`, `tasks --state` and `events`.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rivulet::testing::{RedisServer, TempDir, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_worker-cli");

/// A `worker-cli work` process, killed on drop (its log printed when the test fails).
struct Worker {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Worker {
    fn start(server: &RedisServer, args: &[&str]) -> Self {
        let dir = TempDir::new("worker");
        let log = dir.path().join("worker.log");
        let child = Command::new(BIN)
            .arg("work")
            .args(args)
            .env("REDIS_URL", server.url())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&log).unwrap()))
            .spawn()
            .expect("worker-cli starts");
        Worker { child, log, _dir: dir }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- worker log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

async fn cli(server: &RedisServer, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env("REDIS_URL", server.url())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("worker-cli {args:?} did not finish within 60 s"))
        .expect("worker-cli runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

async fn ok_json(server: &RedisServer, args: &[&str]) -> Value {
    let out = cli(server, args).await;
    assert!(
        out.status.success(),
        "worker-cli {args:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", text(&out.stdout)))
}

/// Enqueues one task with the CLI and returns its id.
async fn enqueue(server: &RedisServer, queue: &str, kind: &str, extra: &[&str]) -> String {
    let mut args = vec!["enqueue", "--queue", queue, "--kind", kind, "--json"];
    args.extend_from_slice(extra);
    let v = ok_json(server, &args).await;
    v["ids"][0].as_str().unwrap().to_owned()
}

async fn show(server: &RedisServer, queue: &str, id: &str) -> Value {
    ok_json(server, &["task", "show", id, "--queue", queue, "--json"]).await
}

async fn wait_state(server: &RedisServer, queue: &str, id: &str, state: &str) -> Value {
    rivulet::testing::wait_for_value(
        &format!("task {id} to read {state}"),
        Duration::from_secs(30),
        async || show(server, queue, id).await,
        |v| v["state"] == state,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_of_an_exec_task_is_seen_through_the_cli() {
    let server = RedisServer::start();
    let dir = TempDir::new("exec");
    let gate = dir.path().join("gate");
    let script = dir.path().join("job.sh");
    std::fs::write(
        &script,
        format!(
            r#"body=$(cat)
case "$body" in
  *fail*) echo "it broke" >&2; exit 1 ;;
  *slow*)
    trap 'echo "stopping" >&2; exit 0' TERM
    echo "10 starting" > "$RIVULET_PROGRESS_FILE"
    while :; do sleep 0.05; done ;;
  *)
    echo "40 halfway there" > "$RIVULET_PROGRESS_FILE"
    while [ ! -e {gate} ]; do sleep 0.05; done
    printf '{{"answer": 42}}' ;;
esac
"#,
            gate = gate.display()
        ),
    )
    .unwrap();
    let exec = format!("job=sh {}", script.display());

    // Scheduled and queued, before any worker runs.
    let later = enqueue(&server, "ex", "job", &["--payload", r#""ok""#, "--delay", "1h"]).await;
    assert_eq!(show(&server, "ex", &later).await["state"], "scheduled");
    let id = enqueue(&server, "ex", "job", &["--payload", r#""ok""#]).await;
    assert_eq!(show(&server, "ex", &id).await["state"], "queued");
    let listed = ok_json(&server, &["tasks", "--queue", "ex", "--state", "queued", "--json"]).await;
    assert!(
        listed.as_array().unwrap().iter().any(|t| t["id"] == id.as_str()),
        "{listed:#}"
    );
    let listed = ok_json(&server, &["tasks", "--queue", "ex", "--state", "scheduled", "--json"]).await;
    assert!(
        listed.as_array().unwrap().iter().any(|t| t["id"] == later.as_str()),
        "{listed:#}"
    );

    // Active with the progress the command wrote on its descriptor.
    let _w = Worker::start(
        &server,
        &[
            "--queue",
            "ex",
            "--max-attempts",
            "2",
            "--retry-base",
            "1s",
            "--exec",
            &exec,
        ],
    );
    let st = wait_state(&server, "ex", &id, "active").await;
    assert!(st["worker"].is_string());
    let ok = wait_until(Duration::from_secs(20), || async {
        show(&server, "ex", &id).await["progress"]["message"] == "halfway there"
    })
    .await;
    assert!(ok, "progress never showed: {:#}", show(&server, "ex", &id).await);
    let listed = ok_json(&server, &["tasks", "--queue", "ex", "--state", "active", "--json"]).await;
    assert!(
        listed.as_array().unwrap().iter().any(|t| t["id"] == id.as_str()),
        "{listed:#}"
    );

    // Succeeded: `task wait` prints the command's stdout and exits 0.
    std::fs::write(&gate, "").unwrap();
    let out = cli(&server, &["task", "wait", &id, "--queue", "ex", "--timeout", "20s"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"answer": 42}"#);
    let st = show(&server, "ex", &id).await;
    assert_eq!(
        (st["state"].as_str(), st["result_codec"].as_str()),
        (Some("succeeded"), Some("bytes"))
    );

    // Retrying, then dead: `task wait` exits 1 naming the state and the error.
    let failing = enqueue(&server, "ex", "job", &["--payload", r#""fail""#]).await;
    let st = wait_state(&server, "ex", &failing, "retrying").await;
    assert_eq!(st["attempt"], 1);
    assert!(st["error"].as_str().unwrap().contains("it broke"), "{st:#}");
    let out = cli(
        &server,
        &["task", "wait", &failing, "--queue", "ex", "--timeout", "20s"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("ended dead (exhausted)") && err.contains("it broke"),
        "{err}"
    );
    let listed = ok_json(&server, &["tasks", "--queue", "ex", "--state", "dead", "--json"]).await;
    assert!(
        listed.as_array().unwrap().iter().any(|t| t["id"] == failing.as_str()),
        "{listed:#}"
    );

    // Cancelled while running: SIGTERM reaches the command; the task ends cancelled.
    let slow = enqueue(&server, "ex", "job", &["--payload", r#""slow""#]).await;
    wait_state(&server, "ex", &slow, "active").await;
    let out = ok_json(&server, &["task", "cancel", &slow, "--queue", "ex", "--json"]).await;
    assert_eq!(out["state"], "cancelling");
    let out = cli(&server, &["task", "wait", &slow, "--queue", "ex", "--timeout", "20s"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("ended cancelled"), "{}", text(&out.stderr));
    let st = show(&server, "ex", &slow).await;
    assert_eq!(
        (st["state"].as_str(), st["started"].as_bool()),
        (Some("cancelled"), Some(true))
    );

    // Cancelled before it started; a second cancel answers with the final state.
    let out = ok_json(&server, &["task", "cancel", &later, "--queue", "ex", "--json"]).await;
    assert_eq!(out["state"], "cancelled");
    let out = ok_json(&server, &["task", "cancel", &later, "--queue", "ex", "--json"]).await;
    assert_eq!(out["outcome"]["already_finished"], "cancelled", "{out:#}");
    let listed = ok_json(&server, &["tasks", "--queue", "ex", "--state", "cancelled", "--json"]).await;
    let cancelled: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert!(
        cancelled.contains(&slow.as_str()) && cancelled.contains(&later.as_str()),
        "{listed:#}"
    );

    // Unknown ids: exit 1 naming the id and the queue.
    for args in [
        ["task", "show", "nope", "--queue", "ex"],
        ["task", "cancel", "nope", "--queue", "ex"],
        ["task", "wait", "nope", "--queue", "ex"],
    ] {
        let out = cli(&server, &args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("\"nope\"") && err.contains("\"ex\""), "{args:?}: {err}");
    }

    // Events, in order per task.
    let out = cli(&server, &["events", "--queue", "ex", "--json", "--limit", "1000"]).await;
    assert!(out.status.success());
    let names: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["task_id"] == id.as_str() && e["event"] != "progress")
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["enqueued", "started", "succeeded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_wait_prints_the_result_and_unique_keys_report_duplicates() {
    let server = RedisServer::start();
    let _w = Worker::start(&server, &["--queue", "uq", "--exec", "echo=cat"]);
    let out = cli(
        &server,
        &[
            "enqueue",
            "--queue",
            "uq",
            "--kind",
            "echo",
            "--payload",
            r#"{"hi": 1}"#,
            "--wait",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"hi": 1}"#);

    // Two enqueues with one unique key inside its window: the second is a duplicate.
    let args = [
        "enqueue",
        "--queue",
        "uq",
        "--kind",
        "echo",
        "--unique-key",
        "nightly",
        "--unique-for",
        "1h",
        "--json",
    ];
    let first = ok_json(&server, &args).await;
    let second = ok_json(&server, &args).await;
    assert_eq!(first["duplicates"].as_array().unwrap().len(), 0);
    assert_eq!(second["duplicates"][0], first["ids"][0], "{second:#}");
    let out = cli(&server, &args[..args.len() - 1]).await;
    assert!(text(&out.stderr).contains("duplicate"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_retention_and_result_cap_come_from_its_flags() {
    let server = RedisServer::start();
    let _w = Worker::start(
        &server,
        &[
            "--queue",
            "flags",
            "--retention",
            "2s",
            "--max-result-size",
            "8",
            "--exec",
            "small=printf ok",
            "--exec",
            "big=printf 0123456789",
        ],
    );
    let small = enqueue(&server, "flags", "small", &[]).await;
    let big = enqueue(&server, "flags", "big", &[]).await;
    let done = wait_state(&server, "flags", &small, "succeeded").await;
    assert_eq!(done["result"], "ok", "{done:#}");
    let dead = wait_state(&server, "flags", &big, "dead").await;
    let error = dead["error"].as_str().unwrap_or_default();
    assert!(error.contains("10 bytes, over the 8-byte cap"), "{dead:#}");
    // Kept for the worker's --retention (2s), not the default hour.
    wait_state(&server, "flags", &small, "unknown").await;

    // Out of range is bad usage.
    let out = cli(&server, &["work", "--queue", "flags", "--max-result-size", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--max-result-size"), "{}", text(&out.stderr));
}
