//! worker-cli end to end: the real binary, its real worker processes, a private `redis-server`
//! per test. Every spawned process is killed by a guard when a test ends, pass or fail; a
//! failing test prints the supervisor's log.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rivulet::Inspector;
use rivulet::testing::{RedisServer, wait_until};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_worker-cli");

/// The child's exit status once it has exited, or `None` after `timeout`.
async fn exit_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        let done = status.is_some();
        async move { done }
    })
    .await;
    status
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wcli-{tag}-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `worker-cli` supervisor. Dropping it SIGKILLs it and every child it has.
struct Supervisor {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
    seen_children: HashSet<u32>,
}

impl Supervisor {
    fn start(server: &RedisServer, args: &[&str]) -> Self {
        Self::start_at(&server.url(), args)
    }

    fn start_at(redis_url: &str, args: &[&str]) -> Self {
        let dir = TempDir::new("sup");
        let log = dir.path().join("supervisor.log");
        let file = File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(args)
            .env("REDIS_URL", redis_url)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("worker-cli starts");
        Supervisor {
            child,
            log,
            _dir: dir,
            seen_children: HashSet::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Live (non-zombie) children right now, remembered for the drop guard.
    fn children(&mut self) -> HashSet<u32> {
        let now = children_of(self.pid());
        self.seen_children.extend(&now);
        now
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).expect("the supervisor is alive");
    }

    /// Waits for the supervisor to exit, up to `timeout`.
    async fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        exit_within(&mut self.child, timeout).await
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let mut all = self.seen_children.clone();
        all.extend(children_of(self.pid()));
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in all {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if std::thread::panicking() {
            eprintln!("--- worker-cli log ---\n{}", self.log());
        }
    }
}

/// Pids whose parent is `parent` and that have not exited.
fn children_of(parent: u32) -> HashSet<u32> {
    let mut out = HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((state, ppid)) = proc_state(pid)
            && ppid == parent
            && state != 'Z'
        {
            out.insert(pid);
        }
    }
    out
}

/// A process's state letter and parent pid, from `/proc/<pid>/stat`.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last `)`.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

fn running(pid: u32) -> bool {
    proc_state(pid).is_some_and(|(state, _)| state != 'Z')
}

/// Runs a worker-cli command against `server` to completion (bounded).
async fn cli(server: &RedisServer, args: &[&str]) -> std::process::Output {
    cli_env(Some(&server.url()), args).await
}

async fn cli_env(redis_url: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    match redis_url {
        Some(url) => cmd.env("REDIS_URL", url),
        None => cmd.env_remove("REDIS_URL"),
    };
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("worker-cli {args:?} did not finish within 60 s"))
        .expect("worker-cli runs")
}

/// Runs a command that must succeed and print JSON; returns the JSON.
async fn cli_json(server: &RedisServer, args: &[&str]) -> Value {
    cli_json_at(&server.url(), args).await
}

async fn cli_json_at(redis_url: &str, args: &[&str]) -> Value {
    let out = cli_env(Some(redis_url), args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "worker-cli {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("worker-cli {args:?} printed no JSON ({e}):\n{stdout}"))
}

/// `worker-cli enqueue` of `count` built-in `sleep` tasks of `ms` each; returns its JSON.
async fn enqueue_sleeps(server: &RedisServer, queue: &str, ms: u64, count: u32) -> Value {
    let payload = format!(r#"{{"ms": {ms}}}"#);
    let count = count.to_string();
    let args = [
        "enqueue",
        "--queue",
        queue,
        "--kind",
        "sleep",
        "--payload",
        &payload,
        "--count",
        &count,
        "--json",
    ];
    cli_json(server, &args).await
}

async fn inspector(server: &RedisServer) -> Inspector {
    Inspector::new(&server.client()).await.expect("inspector connects")
}

/// done and dead counters of a queue (0, 0 while Redis does not know it).
async fn settled(inspector: &Inspector, queue: &str) -> (u64, u64) {
    match inspector.queue(queue).await {
        Ok(q) => {
            let s = inspector.stats(&q).await.expect("stats");
            (s.counters.done, s.counters.dead)
        }
        Err(_) => (0, 0),
    }
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        wait_until(timeout, check).await,
        "timed out after {timeout:?} waiting for: {what}"
    );
}

/// How many live workers serve `queue`, straight from the engine (cheap to poll).
async fn live_workers(inspector: &Inspector, queue: &str) -> usize {
    let all = inspector.workers().await.expect("workers");
    all.iter().filter(|w| w.queues.iter().any(|q| q == queue)).count()
}

/// Live workers registered for `queue`, from `workers --json`.
async fn workers_json(server: &RedisServer, queue: &str) -> Vec<Value> {
    let all = cli_json(server, &["workers", "--json"]).await;
    all.as_array()
        .expect("workers --json is an array")
        .iter()
        .filter(|w| w["queues"].as_array().is_some_and(|q| q.iter().any(|n| n == queue)))
        .cloned()
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn four_workers_run_as_children_and_list_themselves() {
    let server = RedisServer::start();
    let mut sup = Supervisor::start(&server, &["--workers", "4", "--concurrency", "2", "--queue", "four"]);
    let inspector = inspector(&server).await;
    wait_for("4 registered workers", Duration::from_secs(60), || {
        let inspector = &inspector;
        async move { live_workers(inspector, "four").await == 4 }
    })
    .await;
    let listed = workers_json(&server, "four").await;
    assert_eq!(listed.len(), 4, "4 live workers: {listed:#?}");
    let children = sup.children();
    let pids: HashSet<u32> = listed.iter().map(|w| w["pid"].as_u64().unwrap() as u32).collect();
    assert_eq!(
        pids, children,
        "the listed workers are exactly the supervisor's children"
    );
    for w in &listed {
        assert_eq!(w["host"], hostname(), "{w}");
        assert_eq!(w["queues"], serde_json::json!(["four"]), "{w}");
        assert_eq!(w["concurrency"], 2, "{w}");
    }

    sup.signal(Signal::SIGTERM);
    let status = sup.exit_within(Duration::from_secs(30)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "clean exit after SIGTERM");
    assert!(children.iter().all(|p| !running(*p)), "no child left after the drain");
    let after = workers_json(&server, "four").await;
    assert!(after.is_empty(), "workers deregistered: {after:#?}");
    assert!(sup.log().contains("supervisor stopped"), "{}", sup.log());
}

#[tokio::test]
async fn a_child_killed_with_sigkill_is_restarted_and_every_task_completes() {
    let server = RedisServer::start();
    let queue = "crashy";
    let first = enqueue_sleeps(&server, queue, 300, 20).await;
    assert_eq!(first["count"], 20);
    let mut sup = Supervisor::start(
        &server,
        &[
            "--workers",
            "2",
            "--concurrency",
            "4",
            "--lease",
            "1s",
            "--queue",
            queue,
        ],
    );
    let inspector = inspector(&server).await;
    let q = inspector.queue(queue).await.unwrap();

    // Kill a child while it holds tasks.
    wait_for("2 children with tasks in flight", Duration::from_secs(60), || {
        let (inspector, q) = (&inspector, &q);
        async move {
            let pending = inspector.pending(q, 100).await.unwrap();
            let holders: HashSet<&str> = pending.iter().map(|p| p.consumer.as_str()).collect();
            holders.len() == 2
        }
    })
    .await;
    let before = sup.children();
    assert_eq!(before.len(), 2, "{before:?}");
    let victim = *before.iter().next().unwrap();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();

    // More work arrives while the child is down.
    let during = enqueue_sleeps(&server, queue, 50, 20).await;
    assert_eq!(during["count"], 20);

    wait_for("a replacement child", Duration::from_secs(30), || {
        let now = sup.children();
        async move { now.len() == 2 && !now.contains(&victim) }
    })
    .await;
    wait_for("all 40 tasks done", Duration::from_secs(90), || {
        let inspector = &inspector;
        async move { settled(inspector, queue).await == (40, 0) }
    })
    .await;
    let stats = inspector.stats(&q).await.unwrap();
    assert!(
        stats.counters.reclaimed > 0,
        "the killed child's tasks were taken over: {stats:#?}"
    );
    assert!(
        sup.log().contains("worker process crashed; restarting"),
        "{}",
        sup.log()
    );
}

#[tokio::test]
async fn sigterm_drains_every_child_within_the_drain_timeout_and_exits_zero() {
    let server = RedisServer::start();
    let queue = "draining";
    enqueue_sleeps(&server, queue, 1500, 4).await;
    enqueue_sleeps(&server, queue, 60000, 2).await;
    let drain = Duration::from_secs(3);
    let mut sup = Supervisor::start(
        &server,
        &[
            "--workers",
            "2",
            "--concurrency",
            "3",
            "--drain-timeout",
            "3s",
            "--queue",
            queue,
        ],
    );
    let inspector = inspector(&server).await;
    let q = inspector.queue(queue).await.unwrap();
    wait_for("all 6 tasks in flight", Duration::from_secs(60), || {
        let (inspector, q) = (&inspector, &q);
        async move { inspector.pending(q, 100).await.unwrap().len() == 6 }
    })
    .await;
    let children = sup.children();
    assert_eq!(children.len(), 2);

    let t0 = Instant::now();
    sup.signal(Signal::SIGTERM);
    let status = sup.exit_within(drain + Duration::from_secs(20)).await;
    let took = t0.elapsed();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit 0 after a drain (took {took:?})"
    );
    assert!(
        took < drain + Duration::from_secs(5),
        "the drain took {took:?}, more than the drain timeout {drain:?} allows"
    );
    assert!(children.iter().all(|p| !running(*p)), "children stopped");

    // The short tasks finished; the long ones went back to the stream, ready to run at once.
    let s = inspector.stats(&q).await.unwrap();
    let waiting: u64 = s.priorities.iter().map(|p| p.waiting).sum();
    let pending: u64 = s.priorities.iter().map(|p| p.pending).sum();
    assert_eq!(
        (s.counters.done, s.counters.requeued, waiting, pending, s.counters.dead),
        (4, 2, 2, 0, 0),
        "{s:#?}"
    );
}

#[tokio::test]
async fn children_die_with_a_supervisor_killed_by_sigkill() {
    let server = RedisServer::start();
    let mut sup = Supervisor::start(&server, &["--workers", "3", "--concurrency", "1", "--queue", "orphans"]);
    // Registered workers have passed their start-up (the death signal is requested first).
    let inspector = inspector(&server).await;
    wait_for("3 registered workers", Duration::from_secs(60), || {
        let inspector = &inspector;
        async move { live_workers(inspector, "orphans").await == 3 }
    })
    .await;
    let children = sup.children();
    assert_eq!(children.len(), 3);

    sup.signal(Signal::SIGKILL);
    sup.exit_within(Duration::from_secs(10))
        .await
        .expect("the supervisor died");
    wait_for("every child gone", Duration::from_secs(10), || {
        let alive: Vec<u32> = children.iter().copied().filter(|p| running(*p)).collect();
        async move { alive.is_empty() }
    })
    .await;
}

#[tokio::test]
async fn exec_exit_codes_lead_to_done_retry_and_dead_letter() {
    let server = RedisServer::start();
    let dir = TempDir::new("exec");
    let script = dir.path().join("job.sh");
    let log = dir.path().join("calls.log");
    std::fs::write(
        &script,
        format!(
            r#"body=$(cat)
printf '%s|%s|%s|%s|%s|%s\n' "$RIVULET_TASK_ID" "$RIVULET_KIND" "$RIVULET_ATTEMPT" "$RIVULET_QUEUE" "$RIVULET_PRIORITY" "$body" >> {log}
case "$body" in
  *'"case": "ok"'*) echo "progress goes to the worker's log"; exit 0 ;;
  *'"case": "later"'*)
    if [ "$RIVULET_ATTEMPT" = 0 ]; then echo "busy right now" >&2; echo "retry-after=100ms" >&2; exit 75; fi
    exit 0 ;;
  *) echo "something broke on attempt $RIVULET_ATTEMPT" >&2; exit 1 ;;
esac
"#,
            log = log.display()
        ),
    )
    .unwrap();
    let exec = format!("job=sh {}", script.display());
    let _sup = Supervisor::start(
        &server,
        &[
            "--workers",
            "1",
            "--concurrency",
            "4",
            "--max-attempts",
            "2",
            "--retry-base",
            "100ms",
            "--queue",
            "ex",
            "--exec",
            &exec,
        ],
    );

    let payloads = [
        r#"{"case": "ok", "text": "héllo | wörld \"quoted\" $HOME"}"#,
        r#"{"case": "later"}"#,
        r#"{"case": "bad"}"#,
    ];
    let mut ids = Vec::new();
    for p in payloads {
        let out = cli_json(
            &server,
            &[
                "enqueue",
                "--queue",
                "ex",
                "--kind",
                "job",
                "--priority",
                "high",
                "--payload",
                p,
                "--json",
            ],
        )
        .await;
        ids.push(out["ids"][0].as_str().unwrap().to_owned());
    }
    let inspector = inspector(&server).await;
    wait_for("2 done and 1 dead", Duration::from_secs(60), || {
        let inspector = &inspector;
        async move { settled(inspector, "ex").await == (2, 1) }
    })
    .await;

    // Every call saw its payload and environment intact.
    let calls = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = calls.lines().collect();
    lines.sort();
    let mut expected = vec![
        format!("{}|job|0|ex|high|{}", ids[0], payloads[0]),
        format!("{}|job|0|ex|high|{}", ids[1], payloads[1]),
        format!("{}|job|1|ex|high|{}", ids[1], payloads[1]),
        format!("{}|job|0|ex|high|{}", ids[2], payloads[2]),
        format!("{}|job|1|ex|high|{}", ids[2], payloads[2]),
    ];
    expected.sort();
    assert_eq!(lines, expected);

    let q = inspector.queue("ex").await.unwrap();
    let s = inspector.stats(&q).await.unwrap();
    assert_eq!((s.counters.failed, s.counters.retried), (3, 2), "{s:#?}");

    let dead = cli_json(&server, &["dlq", "list", "--queue", "ex", "--json"]).await;
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["task_id"], ids[2].as_str());
    assert_eq!(dead[0]["reason"], "exhausted");
    assert_eq!(dead[0]["payload"], payloads[2]);
    let error = dead[0]["error"].as_str().unwrap();
    assert_eq!(error, "exit 1: something broke on attempt 1");
}

#[tokio::test]
async fn admin_json_matches_the_engine_state() {
    let server = RedisServer::start();
    let inspector = inspector(&server).await;

    // enqueue, then stats / queues / pending.
    let out = cli_json(
        &server,
        &["enqueue", "--queue", "adm", "--kind", "noop", "--count", "3", "--json"],
    )
    .await;
    assert_eq!(out["count"], 3);
    assert_eq!(out["ids"].as_array().unwrap().len(), 3);
    let delayed = cli_json(
        &server,
        &[
            "enqueue",
            "--queue",
            "adm",
            "--kind",
            "noop",
            "--priority",
            "high",
            "--delay",
            "1h",
            "--json",
        ],
    )
    .await;
    assert_eq!(delayed["priority"], "high");
    let q = inspector.queue("adm").await.unwrap();
    let engine = serde_json::to_value(inspector.stats(&q).await.unwrap()).unwrap();
    let stats = cli_json(&server, &["stats", "--queue", "adm", "--json"]).await;
    for field in ["queue", "paused", "counters"] {
        assert_eq!(stats[field], engine[field], "{field}");
    }
    assert_eq!(stats["counters"]["enqueued"], 4);
    let by_priority = |doc: &Value, p: &str, f: &str| {
        doc["priorities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["priority"] == p)
            .map(|x| x[f].clone())
            .unwrap()
    };
    assert_eq!(by_priority(&stats, "normal", "waiting"), 3);
    assert_eq!(by_priority(&stats, "high", "scheduled"), 1);
    assert_eq!(stats["autoscaler"], Value::Null);

    inspector
        .record_decision(&q, r#"{"desired": 3, "reason": "backlog"}"#)
        .await
        .unwrap();
    let stats = cli_json(&server, &["stats", "--queue", "adm", "--json"]).await;
    assert_eq!(stats["autoscaler"]["desired"], 3);
    let all = cli_json(&server, &["stats", "--json"]).await;
    assert_eq!(all.as_array().unwrap().len(), 1);

    let queues = cli_json(&server, &["queues", "--json"]).await;
    assert_eq!(queues[0]["queue"], "adm");
    assert_eq!(
        (queues[0]["waiting"].clone(), queues[0]["scheduled"].clone()),
        (3.into(), 1.into())
    );
    assert_eq!(queues[0]["priorities"], serde_json::json!(["high", "normal", "low"]));
    assert_eq!(
        cli_json(&server, &["pending", "--queue", "adm", "--json"]).await,
        serde_json::json!([])
    );

    // pause / resume.
    let paused = cli_json(&server, &["pause", "--queue", "adm", "--json"]).await;
    assert_eq!(paused["paused"], true);
    assert!(inspector.stats(&q).await.unwrap().paused);
    cli_json(&server, &["resume", "--queue", "adm", "--json"]).await;
    assert!(!inspector.stats(&q).await.unwrap().paused);

    // dlq list / show / purge / replay against a command that fails until a marker exists.
    let dir = TempDir::new("dlq");
    let marker = dir.path().join("ready");
    let exec = format!("flaky=test -f {}", marker.display());
    let _sup = Supervisor::start(
        &server,
        &[
            "--workers",
            "1",
            "--max-attempts",
            "1",
            "--queue",
            "dlq",
            "--exec",
            &exec,
        ],
    );
    let ids = cli_json(
        &server,
        &["enqueue", "--queue", "dlq", "--kind", "flaky", "--count", "2", "--json"],
    )
    .await;
    wait_for("2 dead letters", Duration::from_secs(60), || {
        let inspector = &inspector;
        async move { settled(inspector, "dlq").await == (0, 2) }
    })
    .await;
    let dq = inspector.queue("dlq").await.unwrap();
    let listed = cli_json(&server, &["dlq", "list", "--queue", "dlq", "--json"]).await;
    let engine_list = serde_json::to_value(inspector.dlq_list(&dq, None, 100).await.unwrap()).unwrap();
    assert_eq!(listed, engine_list);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let mut task_ids: Vec<&str> = listed.iter().map(|d| d["task_id"].as_str().unwrap()).collect();
    task_ids.sort();
    let mut enqueued: Vec<&str> = ids["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    enqueued.sort();
    assert_eq!(task_ids, enqueued);
    assert!(
        listed
            .iter()
            .all(|d| d["reason"] == "exhausted" && d["kind"] == "flaky")
    );
    let by_kind = cli_json(&server, &["dlq", "list", "--queue", "dlq", "--kind", "other", "--json"]).await;
    assert_eq!(by_kind, serde_json::json!([]));
    // For people: the note names the kind (there are dead letters, just none of it).
    let out = cli(&server, &["dlq", "list", "--queue", "dlq", "--kind", "other"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        stderr.contains("no dead letters of kind other in queue dlq"),
        "{stderr}"
    );

    let first = listed[0]["id"].as_str().unwrap().to_owned();
    let shown = cli_json(&server, &["dlq", "show", "--queue", "dlq", "--id", &first, "--json"]).await;
    assert_eq!(shown["task_id"], listed[0]["task_id"]);
    // Every stored field is in the JSON too, not only the ones the table shows.
    assert!(shown["fields"]["enqueued_at"].is_string(), "{shown}");
    assert_eq!(shown["codec"], "json");
    let purged = cli_json(&server, &["dlq", "purge", "--queue", "dlq", "--id", &first, "--json"]).await;
    assert_eq!(purged["purged"], 1);

    std::fs::write(&marker, b"").unwrap();
    let replayed = cli_json(&server, &["dlq", "replay", "--queue", "dlq", "--all", "--json"]).await;
    assert_eq!(replayed["replayed"], 1);
    wait_for("the replayed task done", Duration::from_secs(60), || {
        let inspector = &inspector;
        async move { settled(inspector, "dlq").await.0 == 1 }
    })
    .await;
    assert_eq!(
        cli_json(&server, &["dlq", "list", "--queue", "dlq", "--json"]).await,
        serde_json::json!([])
    );
    let workers = cli_json(&server, &["workers", "--json"]).await;
    let engine_workers = inspector.workers().await.unwrap();
    assert_eq!(workers.as_array().unwrap().len(), engine_workers.len());

    // Unknown queues and ids say so.
    let out = cli(&server, &["stats", "--queue", "nope"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"nope\"") && stderr.contains("known queues: adm, dlq"),
        "{stderr}"
    );
    let out = cli(&server, &["dlq", "show", "--queue", "dlq", "--id", "normal/0/1-0"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not found") && stderr.contains("normal/0/1-0"),
        "{stderr}"
    );
    // A well-formed id that the queue's layout cannot have is a bad flag, like a malformed one.
    for args in [
        &["dlq", "show", "--queue", "dlq", "--id", "urgent/0/1-0"][..],
        &["dlq", "show", "--queue", "dlq", "--id", "normal/7/1-0"],
        &["dlq", "replay", "--queue", "dlq", "--id", "urgent/0/1-0"],
        &["dlq", "purge", "--queue", "dlq", "--id", "normal/7/1-0"],
    ] {
        let out = cli(&server, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "worker-cli {args:?}: {stderr}");
        assert!(
            stderr.contains("--id") && stderr.contains("queue dlq has no") && stderr.contains("Usage:"),
            "worker-cli {args:?}: {stderr}"
        );
    }

    // Deleting a queue a worker serves is refused and says why; --force deletes it.
    let out = cli(&server, &["delete-queue", "--queue", "dlq"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use") && stderr.contains("1 live worker(s)") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(inspector.queue("dlq").await.is_ok(), "a refusal deletes nothing");
    let deleted = cli_json(&server, &["delete-queue", "--queue", "dlq", "--force", "--json"]).await;
    assert_eq!(deleted["deleted"]["queue"], "dlq");
    assert_eq!(deleted["deleted"]["workers"], 1);
    let queues = cli_json(&server, &["queues", "--json"]).await;
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"dlq"), "{queues}");
}

#[tokio::test]
async fn bad_flags_exit_2_and_an_unreachable_redis_exits_1_naming_the_url() {
    let server = RedisServer::start();
    // "Nothing here" notes go to stderr, data to stdout, for `stats` as for `queues`.
    for args in [&["stats"][..], &["queues"]] {
        let out = cli(&server, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "worker-cli {args:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "worker-cli {args:?} printed to stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.contains("no queues yet"), "worker-cli {args:?}: {stderr}");
    }

    for args in [
        &["--workers", "0"][..],
        &["--priority-mode", "fair"],
        &["--lease", "1ms"],
        &["--exec", "no-command"],
        &["--max-memory", "lots"],
        &["--queue", "a,a"],
        &["--workers", "2", "stats"],
        &["enqueue", "--queue", "q"],
        &["enqueue", "--queue", "q", "--kind", "k", "--payload", "{bad"],
        &["dlq", "replay", "--queue", "q"],
        &["dlq", "show", "--queue", "q", "--id", "garbage"],
        &["no-such-command"],
        // Bare: the help, not a supervisor on a queue nobody named.
        &[],
        &["--redis-url", "notaurl", "stats"],
        &["enqueue", "--queue", "q", "--kind", ""],
        &["enqueue", "--queue", "q", "--kind", " \t"],
        &[
            "enqueue",
            "--queue",
            "q",
            "--kind",
            "k",
            "--payload-file",
            "/nonexistent/payload.json",
        ],
        &["enqueue", "--queue", "q", "--kind", "k", "--delay", "-1s"],
        &["enqueue", "--queue", "q", "--kind", "k", "--count", "-3"],
        &["pending", "--queue", "q", "--limit", "-1"],
        &["pending", "--queue", "q", "--limit", "0"],
        &["dlq", "list", "--queue", "q", "--limit", "0"],
        &["--queue", "q", "--max-memory", "1.5"],
        &["--queue", "q", "--drain-timeout", "-5s"],
    ] {
        let out = cli(&server, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "worker-cli {args:?}: {stderr}");
        assert!(
            stderr.contains("Usage:"),
            "worker-cli {args:?} shows a usage line: {stderr}"
        );
        // A negative number is a value the parser explains, not an unknown flag.
        assert!(!stderr.contains("unexpected argument"), "worker-cli {args:?}: {stderr}");
    }
    // None of those enqueued anything (an empty kind in particular).
    assert!(inspector(&server).await.queues().await.unwrap().is_empty());
    // The messages name what is wrong.
    for (args, says) in [
        (
            &[][..],
            &["Commands:", "  work", "no command given", "--queue NAME"][..],
        ),
        (
            &["--redis-url", "notaurl", "stats"],
            &["--redis-url", "\"notaurl\"", "not a valid Redis URL"],
        ),
        (
            &["enqueue", "--queue", "q", "--kind", ""],
            &["--kind", "must not be empty"],
        ),
        (
            &[
                "enqueue",
                "--queue",
                "q",
                "--kind",
                "k",
                "--payload-file",
                "/nonexistent/payload.json",
            ],
            &["--payload-file /nonexistent/payload.json", "no such file"],
        ),
        (
            &["enqueue", "--queue", "q", "--kind", "k", "--delay", "-1s"],
            &["--delay", "negative"],
        ),
        (
            &["pending", "--queue", "q", "--limit", "-1"],
            &["--limit", "-1 is not in 1.."],
        ),
        (&["--queue", "q", "--max-memory", "1.5"], &["--max-memory", "1.5GiB"]),
    ] {
        let out = cli(&server, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        for s in says {
            assert!(stderr.contains(s), "worker-cli {args:?} should say {s:?}: {stderr}");
        }
    }
    for help in [
        &["--help"][..],
        &["stats", "--help"],
        &["dlq", "replay", "--help"],
        &["enqueue", "--help"],
        &["work", "--help"],
    ] {
        let out = cli(&server, help).await;
        assert_eq!(out.status.code(), Some(0), "{help:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("[default:"),
            "{help:?} shows defaults"
        );
    }
    // `work` (what the supervisor and the autoscaler run) is listed with the other commands.
    let out = cli(&server, &["--help"]).await;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.lines()
            .any(|l| l.starts_with("  work ") && l.contains("without a supervisor")),
        "{help}"
    );

    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    for args in [&["queues"][..], &["--workers", "1"], &["stats", "--queue", "x"]] {
        let out = cli_env(Some(&url), args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "worker-cli {args:?}: {stderr}");
        assert!(
            stderr.contains(&url) && stderr.contains("hint"),
            "worker-cli {args:?} names the URL: {stderr}"
        );
    }
    // Flags are checked before Redis is: a bad flag is still exit 2.
    for args in [
        &[
            "enqueue",
            "--queue",
            "q",
            "--kind",
            "k",
            "--payload-file",
            "/nonexistent/payload.json",
        ][..],
        &["dlq", "show", "--queue", "q", "--id", "garbage"],
    ] {
        let out = cli_env(Some(&url), args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "worker-cli {args:?}: {stderr}");
    }
}

#[tokio::test]
async fn max_tasks_and_max_memory_recycle_children() {
    let server = RedisServer::start();
    // Tasks long enough that the task count is checked between them.
    enqueue_sleeps(&server, "recycle", 100, 12).await;
    let mut sup = Supervisor::start(
        &server,
        &[
            "--workers",
            "1",
            "--concurrency",
            "1",
            "--max-tasks",
            "4",
            "--queue",
            "recycle",
        ],
    );
    let inspector = inspector(&server).await;
    let mut pids = HashSet::new();
    wait_for("12 tasks done by recycled children", Duration::from_secs(60), || {
        pids.extend(sup.children());
        let inspector = &inspector;
        async move { settled(inspector, "recycle").await == (12, 0) }
    })
    .await;
    assert!(sup.log().contains("worker process recycled"), "{}", sup.log());
    assert!(pids.len() >= 2, "children were replaced: {pids:?}");
    drop(sup);

    // Any worker process is above 1 KiB: it is drained and replaced again and again, and the
    // supervisor says (once) that the limit looks too low.
    let mut sup = Supervisor::start(
        &server,
        &["--workers", "1", "--max-memory", "1KiB", "--queue", "memory"],
    );
    wait_for(
        "two children replaced for their memory",
        Duration::from_secs(60),
        || {
            let log = sup.log();
            async move {
                log.matches("above --max-memory").count() >= 2 && log.matches("worker process recycled").count() >= 2
            }
        },
    )
    .await;
    let log = sup.log();
    assert_eq!(
        log.matches("--max-memory 1.0 KiB looks too low").count(),
        1,
        "warned once: {log}"
    );
    sup.signal(Signal::SIGTERM);
    let status = sup.exit_within(Duration::from_secs(30)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[tokio::test]
async fn demo_reports_throughput_and_latency_and_cleans_up() {
    let server = RedisServer::start();
    let out = cli(
        &server,
        &[
            "demo",
            "--tasks",
            "300",
            "--workers",
            "1",
            "--concurrency",
            "8",
            "--json",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let summary: Value = serde_json::from_str(&stdout).expect("demo --json prints JSON");
    assert_eq!(
        (summary["tasks"].clone(), summary["done"].clone()),
        (300.into(), 300.into())
    );
    assert_eq!(summary["private_redis"], false);
    let latency = &summary["start_latency_us"];
    assert_eq!(latency["samples"], 300);
    let (p50, p99, max) = (
        latency["p50"].as_u64().unwrap(),
        latency["p99"].as_u64().unwrap(),
        latency["max"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{latency}");
    assert!(summary["throughput_per_s"].as_f64().unwrap() > 0.0);

    // Nothing of the demo is left behind.
    let mut conn = server.client().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    assert!(keys.is_empty(), "left behind: {keys:?}");
    let queues = inspector(&server).await.queues().await.unwrap();
    assert!(queues.is_empty(), "{queues:?}");
}

#[tokio::test]
async fn the_documented_acl_is_enough_for_workers_and_admin() {
    let server = RedisServer::start();
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"))
        .expect("docs/operations.md exists");
    let rule = doc
        .lines()
        .find(|l| l.starts_with("ACL SETUSER "))
        .expect("docs/operations.md has an `ACL SETUSER` line");
    let args: Vec<String> = rule
        .split_whitespace()
        .skip(1)
        .map(|a| a.replace("CHANGE-ME", "s3cret"))
        .collect();
    let mut admin = server.client().get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ACL")
        .arg(&args)
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://rivulet:s3cret@127.0.0.1:{}", server.port());

    // Workers through every path: done, retried then dead, leases renewed and reclaimed, delayed.
    let mut sup = Supervisor::start_at(
        &url,
        &[
            "--workers",
            "1",
            "--concurrency",
            "4",
            "--lease",
            "300ms",
            "--max-attempts",
            "2",
            "--retry-base",
            "10ms",
            "--queue",
            "acl",
        ],
    );
    let enqueue = |extra: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let mut args = vec!["enqueue", "--queue", "acl", "--json"];
            args.extend_from_slice(extra);
            cli_json_at(&url, &args).await
        }
    };
    enqueue(&["--kind", "noop", "--count", "3"]).await;
    enqueue(&["--kind", "fail"]).await;
    enqueue(&["--kind", "sleep", "--payload", r#"{"ms": 800}"#]).await;
    enqueue(&["--kind", "noop", "--delay", "200ms"]).await;
    let inspector = inspector(&server).await;
    wait_for("5 done, 1 dead", Duration::from_secs(60), || {
        let inspector = &inspector;
        async move { settled(inspector, "acl").await == (5, 1) }
    })
    .await;

    for args in [
        &["stats", "--queue", "acl", "--json"][..],
        &["stats", "--json"],
        &["queues", "--json"],
        &["workers", "--json"],
        &["pending", "--queue", "acl", "--json"],
        &["dlq", "list", "--queue", "acl", "--json"],
        &["pause", "--queue", "acl", "--json"],
        &["resume", "--queue", "acl", "--json"],
        &["dlq", "replay", "--queue", "acl", "--kind", "fail", "--json"],
    ] {
        cli_json_at(&url, args).await;
    }
    wait_for("the replayed task dead again", Duration::from_secs(60), || {
        let inspector = &inspector;
        async move { settled(inspector, "acl").await == (5, 2) }
    })
    .await;
    let dead = cli_json_at(&url, &["dlq", "list", "--queue", "acl", "--json"]).await;
    let id = dead[0]["id"].as_str().unwrap().to_owned();
    cli_json_at(&url, &["dlq", "show", "--queue", "acl", "--id", &id, "--json"]).await;
    let purged = cli_json_at(&url, &["dlq", "purge", "--queue", "acl", "--all", "--json"]).await;
    assert_eq!(purged["purged"], 1);
    let demo = cli_json_at(
        &url,
        &[
            "demo",
            "--tasks",
            "50",
            "--workers",
            "1",
            "--no-private-redis",
            "--json",
        ],
    )
    .await;
    assert_eq!(demo["done"], 50);

    sup.signal(Signal::SIGTERM);
    assert_eq!(
        sup.exit_within(Duration::from_secs(30)).await.and_then(|s| s.code()),
        Some(0)
    );
    assert!(!sup.log().contains("NOPERM"), "{}", sup.log());
    // Redis logs every denied command; only the client library's optional CLIENT SETINFO may be.
    let denied: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("ACL").arg("LOG").query_async(&mut admin).await.unwrap();
    let objects: Vec<String> = denied
        .iter()
        .filter_map(|e| e.get("object"))
        .map(|v| format!("{v:?}"))
        .filter(|o| !o.contains("setinfo"))
        .collect();
    assert!(
        objects.is_empty(),
        "denied for the documented user: {objects:?}\n{denied:#?}"
    );
}

#[tokio::test]
async fn a_closed_stderr_does_not_stop_a_drain() {
    let server = RedisServer::start();
    // `worker-cli ... 2>&1 | head -1`: the reader of the logs goes away early.
    let mut child = Command::new(BIN)
        .args(["--workers", "1", "--queue", "quiet-logs"])
        .env("REDIS_URL", server.url())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker-cli starts");
    drop(child.stderr.take());
    let inspector = inspector(&server).await;
    let registered = wait_until(Duration::from_secs(60), || {
        let inspector = &inspector;
        async move { live_workers(inspector, "quiet-logs").await == 1 }
    })
    .await;
    let children = children_of(child.id());
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let status = exit_within(&mut child, Duration::from_secs(30)).await;
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        for pid in &children {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
    assert!(registered, "the worker registered");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "drained and exited 0 with stderr closed"
    );
}

/// A child process killed (with its output pipes closed) when the guard is dropped.
struct Proc(Child);

impl Proc {
    fn spawn(server: &RedisServer, args: &[&str]) -> Self {
        let child = Command::new(BIN)
            .args(args)
            .env("REDIS_URL", server.url())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker-cli starts");
        Proc(child)
    }

    /// Reads stdout's first line (bounded by the process writing it: `stats` prints at once).
    fn first_line(&mut self) -> (String, std::io::BufReader<std::process::ChildStdout>) {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(self.0.stdout.take().expect("stdout is piped"));
        let mut line = String::new();
        out.read_line(&mut line).expect("reading stdout");
        (line, out)
    }

    async fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        exit_within(&mut self.0, timeout).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn stats_watch_ends_when_its_reader_goes_away_or_on_sigterm() {
    let server = RedisServer::start();
    cli_json(&server, &["enqueue", "--queue", "watched", "--kind", "noop", "--json"]).await;

    // `stats --watch [--json] | head -1`: the reader closes the pipe after one line.
    for json in [true, false] {
        let mut args = vec!["stats", "--queue", "watched", "--watch", "--interval", "50ms"];
        if json {
            args.push("--json");
        }
        let mut p = Proc::spawn(&server, &args);
        let (line, out) = p.first_line();
        if json {
            let doc: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            assert_eq!(doc["queue"], "watched");
        } else {
            assert!(line.starts_with("every 50ms"), "{line:?}");
        }
        drop(out);
        let status = p.exit_within(Duration::from_secs(30)).await;
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{args:?} exits 0 once stdout is closed"
        );
    }

    // SIGTERM (as from systemd, kill, timeout) ends it like Ctrl-C: exit 0.
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut p = Proc::spawn(&server, &["stats", "--queue", "watched", "--watch", "--json"]);
        // The first line means the signal handlers are installed (before the first refresh).
        let (line, _out) = p.first_line();
        assert!(line.contains("watched"), "{line:?}");
        kill(Pid::from_raw(p.0.id() as i32), sig).expect("stats is running");
        let status = p.exit_within(Duration::from_secs(30)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(0), "exit 0 after {sig}");
    }
}

#[tokio::test]
async fn max_tasks_stops_fetching_at_the_limit_and_loses_nothing() {
    let server = RedisServer::start();
    let (total, max, concurrency) = (200u64, 20u64, 4u64);
    let count = total.to_string();
    cli_json(
        &server,
        &[
            "enqueue", "--queue", "capped", "--kind", "noop", "--count", &count, "--json",
        ],
    )
    .await;
    // A standalone worker (no supervisor): it exits 0 once it has reached the limit. No-op
    // tasks finish at once, so a limit checked now and then would let it run far past M.
    let out = cli(
        &server,
        &[
            "work",
            "--queue",
            "capped",
            "--concurrency",
            &concurrency.to_string(),
            "--max-tasks",
            &max.to_string(),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("reached --max-tasks"), "{stderr}");

    let inspector = inspector(&server).await;
    let q = inspector.queue("capped").await.unwrap();
    let s = inspector.stats(&q).await.unwrap();
    let waiting: u64 = s.priorities.iter().map(|p| p.waiting).sum();
    let pending: u64 = s.priorities.iter().map(|p| p.pending).sum();
    let done = s.counters.done;
    // It stops fetching at the Mth start; what it had already read (fewer than --concurrency
    // entries: one slot holds the Mth) still runs. The rest waits for the next worker.
    assert!(
        (max..max + concurrency).contains(&done),
        "started {done} tasks with --max-tasks {max} --concurrency {concurrency}: {s:#?}"
    );
    assert_eq!(
        (waiting, pending, s.counters.dead, s.counters.requeued),
        (total - done, 0, 0, 0),
        "nothing lost: {s:#?}"
    );
}

#[tokio::test]
async fn workers_and_admin_commands_run_over_mutual_tls_with_the_tls_flags() {
    let server = rivulet::testing::tls::TlsRedis::start_mutual();
    let url = server.url();
    let certs = server.certs();
    let (ca, (cert, key)) = (certs.ca(), certs.client());
    let (ca, cert, key) = (ca.to_str().unwrap(), cert.to_str().unwrap(), key.to_str().unwrap());
    let tls = ["--tls-ca-file", ca, "--tls-cert-file", cert, "--tls-key-file", key];
    let with_tls = |args: &[&'static str]| -> Vec<String> {
        args.iter().copied().chain(tls).map(str::to_owned).collect()
    };
    let mut sup = Supervisor::start_at(
        &url,
        &with_tls(&["--workers", "2", "--concurrency", "4", "--queue", "tls"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let run = |args: Vec<String>| {
        let url = url.clone();
        async move { cli_json_at(&url, &args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    run(with_tls(&["enqueue", "--queue", "tls", "--kind", "noop", "--count", "20", "--json"])).await;
    run(with_tls(&["enqueue", "--queue", "tls", "--kind", "fail", "--json"])).await;
    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_for("20 done, 1 dead over TLS", Duration::from_secs(60), || {
        let inspector = &inspector;
        async move { settled(inspector, "tls").await == (20, 1) }
    })
    .await;
    let stats = run(with_tls(&["stats", "--queue", "tls", "--json"])).await;
    assert!(stats.to_string().contains("\"done\":20"), "{stats}");
    let dead = run(with_tls(&["dlq", "list", "--queue", "tls", "--json"])).await;
    assert_eq!(dead.as_array().map(Vec::len), Some(1), "{dead}");
    sup.signal(Signal::SIGTERM);
    assert_eq!(
        sup.exit_within(Duration::from_secs(30)).await.and_then(|s| s.code()),
        Some(0),
        "{}",
        sup.log()
    );

    // The environment variables work as the flags do.
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["stats", "--queue", "tls", "--json"])
        .env("REDIS_URL", &url)
        .env("REDIS_TLS_CA_FILE", ca)
        .env("REDIS_TLS_CERT_FILE", cert)
        .env("REDIS_TLS_KEY_FILE", key)
        .stdin(Stdio::null());
    let out = cmd.output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn tls_mistakes_are_named_a_wrong_ca_exits_1_and_a_bad_combination_exits_2() {
    let server = rivulet::testing::tls::TlsRedis::start();
    let certs = server.certs();
    let url = server.url().replace("rediss://", "rediss://:s3cret@");
    let other = certs.other_ca();
    let out = cli_env(Some(&url), &["stats", "--json", "--tls-ca-file", other.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TLS handshake") && stderr.contains("--tls-ca-file"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");

    // TLS flags on a plain URL, a certificate without its key, a CA file that is not there.
    let plain = "redis://:s3cret@127.0.0.1:1";
    for (env_url, args, needle) in [
        (plain, vec!["stats", "--tls-insecure"], "rediss://"),
        (url.as_str(), vec!["stats", "--tls-cert-file", "/x.pem"], "key"),
        (url.as_str(), vec!["stats", "--tls-ca-file", "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
    ] {
        let out = cli_env(Some(env_url), &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }

    // Every place that offers rediss:// also says how to use it.
    let help = cli_env(None, &["--help"]).await;
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["rediss://", "--tls-ca-file", "--tls-cert-file", "--tls-key-file", "--tls-insecure"] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let out = cli_env(Some("rediss://h:notaport"), &["stats"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && stderr.contains("rediss://host:6380 (TLS)"), "{stderr}");

    // Verification off: it connects, and says loudly that it does not verify.
    let out = cli_env(Some(&server.url()), &["stats", "--json", "--tls-insecure"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("verification is off"), "{stderr}");
}

#[tokio::test]
async fn an_evicting_redis_is_refused_at_start_unless_allowed_and_durability_is_checked() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    // The supervisor checks once, before starting children (no crash loop), and so does `work`.
    for args in [&["--workers", "2", "--queue", "ev"][..], &["work", "--queue", "ev"]] {
        let mut sup = Supervisor::start(&server, args);
        let code = sup.exit_within(Duration::from_secs(30)).await.and_then(|s| s.code());
        let log = sup.log();
        assert_eq!(code, Some(1), "{args:?}: {log}");
        assert!(
            log.contains("maxmemory-policy is allkeys-lru") && log.contains("maxmemory-policy noeviction"),
            "{args:?}: {log}"
        );
        assert!(!log.contains("crash"), "{args:?}: {log}");
    }
    let mut sup = Supervisor::start(&server, &["--workers", "1", "--queue", "ev", "--allow-eviction"]);
    cli_json(&server, &["enqueue", "--queue", "ev", "--kind", "noop", "--count", "3", "--json"]).await;
    let inspector = inspector(&server).await;
    wait_for("3 done with eviction allowed", Duration::from_secs(30), || {
        let inspector = &inspector;
        async move { settled(inspector, "ev").await == (3, 0) }
    })
    .await;
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.exit_within(Duration::from_secs(30)).await.and_then(|s| s.code()), Some(0));
    assert!(sup.log().contains("eviction allowed"), "{}", sup.log());

    // Durability: a bad value is exit 2; a server that cannot honour it, or no replica to
    // confirm, exit 1 with the reason.
    let out = cli(&server, &["enqueue", "--queue", "ev", "--kind", "noop", "--durability", "sometimes"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    for (mode, needle) in [("fsync", "fsync"), ("replicated:1:100ms", "not confirmed as replicated:1:100ms")] {
        let out = cli(&server, &["enqueue", "--queue", "ev", "--kind", "noop", "--durability", mode]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mode}: {stderr}");
        assert!(stderr.contains(needle), "{mode}: {stderr}");
    }
    let out = cli(&server, &["work", "--queue", "ev", "--allow-eviction", "--durability", "fsync"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("durability fsync"), "{stderr}");
}
