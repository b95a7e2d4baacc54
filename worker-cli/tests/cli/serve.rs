//! `--serve KINDS=COMMAND`: a long-lived handler process on the line protocol of
//! docs/serve-protocol.md, here a tiny Python script that speaks it by hand (no package), so
//! the protocol as documented is what is tested.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rivulet::testing::{Fixture, TempDir, wait_until};
use serde_json::Value;

use crate::common::{Supervisor, cli, cli_json, wait_settled};

/// The handler: threads per task; behaviour by the payload's `case`. `dir` in the payload is
/// where it leaves `pid-<case>-<attempt>` files for the test.
const HANDLER: &str = r#"
import json, os, sys, threading, time
out_lock = threading.Lock()
def send(m):
    with out_lock:
        sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
hello = json.loads(sys.stdin.readline())
assert hello["type"] == "hello" and hello["protocol"] == 1, hello
# A banner before `ready` is skipped, not a protocol error.
sys.stdout.write("handler v1 starting\n"); sys.stdout.flush()
send({"type": "ready", "protocol": 1, "kinds": ["job"]})
cancels = {}
def mark(p, m):
    with open(os.path.join(p["dir"], "pid-%s-%d" % (p["case"], m["attempt"])), "w") as f:
        f.write(str(os.getpid()))
def run(m):
    p, tid = m["payload"], m["id"]
    case = p["case"]
    if case == "ok":
        send({"type": "progress", "id": tid, "percent": 50, "message": "half way"})
        send({"type": "result", "id": tid, "result": {"pid": os.getpid(), "echo": p, "attempt": m["attempt"]}})
    elif case == "fail":
        send({"type": "error", "id": tid, "message": "failed on attempt %d" % m["attempt"]})
    elif case == "fatal":
        send({"type": "error", "id": tid, "message": "never works", "fatal": True})
    elif case == "wait_cancel":
        mark(p, m)
        send({"type": "progress", "id": tid, "percent": 10, "message": "waiting"})
        cancels[tid].wait(60)
        send({"type": "error", "id": tid, "message": "stopped by cancel"})
    elif case == "sleep":
        mark(p, m)
        time.sleep(p["ms"] / 1000)
        send({"type": "result", "id": tid, "result": {"slept": p["ms"]}})
    elif case == "ignore_cancel":
        mark(p, m)
        time.sleep(60)
    elif case == "die_once":
        mark(p, m)
        if m["attempt"] == 0:
            time.sleep(60)
        send({"type": "result", "id": tid, "result": {"pid": os.getpid()}})
    elif case == "garbage":
        mark(p, m)
        if m["attempt"] == 0:
            with out_lock:
                sys.stdout.write("this is not a protocol message\n"); sys.stdout.flush()
            return
        send({"type": "result", "id": tid, "result": {"pid": os.getpid()}})
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] == "cancel":
        cancels[m["id"]].set()
    elif m["type"] == "task":
        cancels[m["id"]] = threading.Event()
        threading.Thread(target=run, args=(m,), daemon=True).start()
"#;

fn write_handler(dir: &Path) -> String {
    let script = dir.join("handler.py");
    std::fs::write(&script, HANDLER).unwrap();
    format!("job=python3 {}", script.display())
}

fn supervisor(f: &Fixture, queue: &str, serve: &str) -> Supervisor {
    Supervisor::start(
        &f.server,
        &[
            "--workers",
            "1",
            "--queue",
            queue,
            "--serve",
            serve,
            "--serve-concurrency",
            "4",
            "--max-attempts",
            "2",
            "--retry-base",
            "100ms",
        ],
    )
}

async fn enqueue(f: &Fixture, queue: &str, payload: &Value) -> String {
    let payload = payload.to_string();
    let out = cli_json(
        &f.server,
        &[
            "enqueue",
            "--queue",
            queue,
            "--kind",
            "job",
            "--payload",
            &payload,
            "--json",
        ],
    )
    .await;
    out["ids"][0].as_str().unwrap().to_owned()
}

async fn show(f: &Fixture, queue: &str, id: &str) -> Value {
    cli_json(&f.server, &["task", "show", id, "--queue", queue, "--json"]).await
}

async fn wait_state(f: &Fixture, queue: &str, id: &str, state: &str) -> Value {
    let reached = wait_until(Duration::from_secs(60), async || {
        show(f, queue, id).await["state"] == state
    })
    .await;
    let st = show(f, queue, id).await;
    assert!(reached, "task {id} never reached {state}: {st:#}");
    st
}

/// The pid a `mark` file holds, once it is there.
async fn marked(dir: &Path, name: &str) -> u32 {
    let path = dir.join(name);
    let found = wait_until(Duration::from_secs(60), async || {
        std::fs::read_to_string(&path).is_ok_and(|s| !s.is_empty())
    })
    .await;
    assert!(found, "the handler never wrote {name}");
    std::fs::read_to_string(&path).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn serve_runs_tasks_in_one_process_with_progress_results_retries_and_fatal_errors() {
    let f = Fixture::start().await;
    let dir = TempDir::new("serve");
    let sup = supervisor(&f, "sv", &write_handler(dir.path()));
    let d = dir.path().display().to_string();
    let mut ok = Vec::new();
    for i in 0..5 {
        let payload = serde_json::json!({"case": "ok", "i": i, "text": "héllo\n\"wörld\" ✓", "dir": d});
        ok.push((enqueue(&f, "sv", &payload).await, payload));
    }
    let failing = enqueue(&f, "sv", &serde_json::json!({"case": "fail", "dir": d})).await;
    let fatal = enqueue(&f, "sv", &serde_json::json!({"case": "fatal", "dir": d})).await;
    wait_settled(&f.inspector, "sv", (5, 2), Duration::from_secs(60)).await;

    let mut pids = std::collections::HashSet::new();
    for (id, payload) in &ok {
        let st = show(&f, "sv", id).await;
        assert_eq!(st["state"], "succeeded", "{st:#}");
        let result: Value = serde_json::from_str(st["result"].as_str().unwrap()).unwrap();
        assert_eq!(
            &result["echo"], payload,
            "unicode and newlines survive the trip: {st:#}"
        );
        pids.insert(result["pid"].as_u64().unwrap());
    }
    assert_eq!(pids.len(), 1, "every task ran in the same long-lived process: {pids:?}");

    let st = show(&f, "sv", &failing).await;
    assert_eq!(
        (st["state"].as_str(), st["reason"].as_str()),
        (Some("dead"), Some("exhausted")),
        "{st:#}"
    );
    assert_eq!(st["error"], "failed on attempt 1", "{st:#}");
    let st = show(&f, "sv", &fatal).await;
    assert_eq!(
        (st["state"].as_str(), st["reason"].as_str()),
        (Some("dead"), Some("fatal")),
        "{st:#}"
    );
    assert!(st["error"].as_str().unwrap().contains("never works"), "{st:#}");
    drop(sup);
}

#[tokio::test]
async fn a_killed_handler_process_has_its_task_run_again_in_a_new_one() {
    let f = Fixture::start().await;
    let dir = TempDir::new("serve-kill");
    let sup = supervisor(&f, "svk", &write_handler(dir.path()));
    let d = dir.path().display().to_string();
    let id = enqueue(&f, "svk", &serde_json::json!({"case": "die_once", "dir": d})).await;
    let first = marked(dir.path(), "pid-die_once-0").await;
    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let st = wait_state(&f, "svk", &id, "succeeded").await;
    let result: Value = serde_json::from_str(st["result"].as_str().unwrap()).unwrap();
    let second = result["pid"].as_u64().unwrap() as u32;
    assert_ne!(first, second, "a new handler process ran the retry");
    assert_eq!(st["attempt"], 1, "{st:#}");
    let log = sup.log();
    assert!(
        // The exit status (137) or, when the closed stdout is seen first, the guard's "Killed".
        log.contains("handler process crashed; restarting") && (log.contains("exit 137") || log.contains("Killed")),
        "{log}"
    );
}

#[tokio::test]
async fn garbage_on_stdout_is_a_protocol_error_whose_task_is_retried_in_a_restarted_process() {
    let f = Fixture::start().await;
    let dir = TempDir::new("serve-garbage");
    let sup = supervisor(&f, "svg", &write_handler(dir.path()));
    let d = dir.path().display().to_string();
    let id = enqueue(&f, "svg", &serde_json::json!({"case": "garbage", "dir": d})).await;
    let st = wait_state(&f, "svg", &id, "succeeded").await;
    let first = marked(dir.path(), "pid-garbage-0").await;
    let result: Value = serde_json::from_str(st["result"].as_str().unwrap()).unwrap();
    assert_ne!(
        result["pid"].as_u64().unwrap() as u32,
        first,
        "the process was restarted"
    );
    let log = sup.log();
    assert!(
        log.contains("broke the protocol") && log.contains("this is not a protocol message"),
        "{log}"
    );
    assert!(
        log.contains("before `ready`; skipped") && log.contains("handler v1 starting"),
        "{log}"
    );
}

#[tokio::test]
async fn cancel_reaches_a_task_running_in_a_handler_process() {
    let f = Fixture::start().await;
    let dir = TempDir::new("serve-cancel");
    let _sup = supervisor(&f, "svc", &write_handler(dir.path()));
    let d = dir.path().display().to_string();
    let id = enqueue(&f, "svc", &serde_json::json!({"case": "wait_cancel", "dir": d})).await;
    marked(dir.path(), "pid-wait_cancel-0").await;
    cli_json(&f.server, &["task", "cancel", &id, "--queue", "svc", "--json"]).await;
    let st = wait_state(&f, "svc", &id, "cancelled").await;
    assert_eq!(st["progress"]["percent"], 10, "{st:#}");
    assert_eq!(st["progress"]["message"], "waiting", "{st:#}");
    // It ran once: the cancel was not a failure to retry.
    assert!(!dir.path().join("pid-wait_cancel-1").exists());
}

#[tokio::test]
async fn a_handler_process_that_does_not_serve_its_kind_stops_the_worker_with_a_clear_error() {
    let f = Fixture::start().await;
    let dir = TempDir::new("serve-refused");
    let serve = write_handler(dir.path()).replacen("job=", "train=", 1);
    let out = cli(&f.server, &["work", "--queue", "svr", "--serve", &serve]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not serve kind \"train\" (it serves job)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn handler_processes_are_recycled_after_max_tasks_and_above_max_memory() {
    let f = Fixture::start().await;
    let dir = TempDir::new("serve-recycle");
    let serve = write_handler(dir.path());
    let d = dir.path().display().to_string();
    // After two tasks each: five tasks take at least three processes.
    let sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "1",
            "--queue",
            "svm",
            "--serve",
            &serve,
            "--serve-max-tasks",
            "2",
        ],
    );
    let mut pids = std::collections::HashSet::new();
    for i in 0..5 {
        let id = enqueue(&f, "svm", &serde_json::json!({"case": "ok", "i": i, "dir": d})).await;
        let st = wait_state(&f, "svm", &id, "succeeded").await;
        let result: Value = serde_json::from_str(st["result"].as_str().unwrap()).unwrap();
        assert_eq!(st["attempt"], 0, "a recycle fails no task: {st:#}");
        pids.insert(result["pid"].as_u64().unwrap());
    }
    assert_eq!(pids.len(), 3, "{pids:?}\n{}", sup.log());
    assert!(sup.log().contains("it took --serve-max-tasks 2"), "{}", sup.log());
    drop(sup);

    // Any Python is above 1 MiB: recycled at the first check after its task, and warned about.
    let sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "1",
            "--queue",
            "svm2",
            "--serve",
            &serve,
            "--serve-max-memory",
            "1MiB",
        ],
    );
    let id = enqueue(&f, "svm2", &serde_json::json!({"case": "ok", "dir": d})).await;
    wait_state(&f, "svm2", &id, "succeeded").await;
    let recycled = wait_until(Duration::from_secs(30), async || {
        sup.log().contains("above --serve-max-memory") && sup.log().matches("handler process ready").count() >= 2
    })
    .await;
    assert!(recycled, "{}", sup.log());
    assert!(sup.log().contains("the limit looks too low"), "{}", sup.log());
}

#[tokio::test]
async fn a_process_that_ignores_a_cancel_is_restarted_after_the_grace() {
    let f = Fixture::start().await;
    let dir = TempDir::new("serve-ignore");
    let sup = supervisor(&f, "svi", &write_handler(dir.path()));
    let d = dir.path().display().to_string();
    let id = enqueue(&f, "svi", &serde_json::json!({"case": "ignore_cancel", "dir": d})).await;
    let first = marked(dir.path(), "pid-ignore_cancel-0").await;
    cli_json(&f.server, &["task", "cancel", &id, "--queue", "svi", "--json"]).await;
    wait_state(&f, "svi", &id, "cancelled").await;
    let restarted = wait_until(Duration::from_secs(30), async || {
        sup.log().contains("ignored its cancel") && sup.log().matches("handler process ready").count() >= 2
    })
    .await;
    assert!(restarted, "{}", sup.log());
    let gone = wait_until(Duration::from_secs(10), async || !crate::common::running(first)).await;
    assert!(gone, "the process that ignored the cancel ({first}) still runs");
}

#[tokio::test]
async fn sigterm_lets_a_running_task_finish_then_the_handler_process_exits_with_its_worker() {
    let f = Fixture::start().await;
    let dir = TempDir::new("serve-drain");
    let mut sup = supervisor(&f, "svd", &write_handler(dir.path()));
    let d = dir.path().display().to_string();
    let id = enqueue(&f, "svd", &serde_json::json!({"case": "sleep", "ms": 1500, "dir": d})).await;
    let handler = marked(dir.path(), "pid-sleep-0").await;
    sup.signal(Signal::SIGTERM);
    let status = sup.exit_within(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", sup.log());
    let st = show(&f, "svd", &id).await;
    assert_eq!(
        st["state"], "succeeded",
        "the running task finished in the drain: {st:#}"
    );
    let gone = wait_until(Duration::from_secs(10), async || !crate::common::running(handler)).await;
    assert!(gone, "the handler process {handler} outlived its worker");
}

#[tokio::test]
async fn a_process_that_never_says_ready_is_restarted_after_the_start_timeout() {
    let f = Fixture::start().await;
    let sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "1",
            "--queue",
            "svt",
            "--serve",
            "job=sleep 30",
            "--serve-start-timeout",
            "300ms",
        ],
    );
    let restarted = wait_until(Duration::from_secs(30), async || {
        let log = sup.log();
        log.contains("did not say it was ready within 300ms (--serve-start-timeout)")
            && log.contains("handler process crashed; restarting")
    })
    .await;
    assert!(restarted, "{}", sup.log());
}
