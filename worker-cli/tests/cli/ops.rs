//! What operators see: flags checked at start against the queues (exit 2), one rule for task
//! kinds, a server that is not Redis named as such, the `--exec` concurrency default, JSON logs
//! that are JSON to the last line, one `stats --json` shape, and tables that show trouble.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use nix::sys::signal::Signal;
use redis::AsyncCommands;
use rivulet::testing::{Fixture, wait_until};
use serde_json::Value;

use crate::common::{Supervisor, cli, cli_env, cli_fails, cli_json, wait_live_workers, wait_settled, workers_json};

#[tokio::test]
async fn weights_that_do_not_match_the_queue_priorities_exit_2_naming_them() {
    let f = Fixture::start().await;
    for weights in ["weighted:6,3", "weighted:4,3,2,1"] {
        let stderr = cli_fails(&f.server, &["work", "--queue", "wq", "--priority-mode", weights], 2).await;
        assert!(
            stderr.contains("high, normal, low") && stderr.contains("one weight per priority"),
            "work {weights}: {stderr}"
        );
        // The supervisor refuses before it starts a child (which would exit 1 and crash-loop).
        let stderr = cli_fails(
            &f.server,
            &["--workers", "2", "--queue", "wq", "--priority-mode", weights],
            2,
        )
        .await;
        assert!(stderr.contains("high, normal, low"), "supervisor {weights}: {stderr}");
        assert!(!stderr.contains("worker process"), "a child was started: {stderr}");
    }
    // A queue's own layout counts: two priorities take two weights.
    f.client
        .declare(
            &rivulet::Queue::new("two")
                .unwrap()
                .priorities(&["urgent", "later"])
                .unwrap(),
        )
        .await
        .unwrap();
    let stderr = cli_fails(
        &f.server,
        &["work", "--queue", "two", "--priority-mode", "weighted:6,3,1"],
        2,
    )
    .await;
    assert!(stderr.contains("urgent, later"), "{stderr}");
    assert!(f.inspector.workers().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_kind_no_exec_could_serve_is_refused_by_enqueue_too() {
    let f = Fixture::start().await;
    let kind = "weird kind/with spaces";
    let enqueue = cli_fails(&f.server, &["enqueue", "--queue", "kq", "--kind", kind], 2).await;
    let exec = cli_fails(
        &f.server,
        &["work", "--queue", "kq", "--exec", &format!("{kind}=true")],
        2,
    )
    .await;
    for stderr in [&enqueue, &exec] {
        assert!(stderr.contains("must not contain spaces"), "{stderr}");
    }
    assert!(f.inspector.queues().await.unwrap().is_empty(), "something was enqueued");
    // A kind with a slash and no space is fine on both sides.
    let ok = cli_json(
        &f.server,
        &["enqueue", "--queue", "kq", "--kind", "images/resize", "--json"],
    )
    .await;
    assert_eq!(ok["ids"].as_array().map(Vec::len), Some(1), "{ok}");
}

#[tokio::test]
async fn a_server_that_is_not_redis_is_named_as_such() {
    // A minimal HTTP server on loopback: answers every request with a 400 and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let url = format!("redis://127.0.0.1:{port}");
    let out = cli_env(Some(&url), &["stats"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("something answers at") && stderr.contains("it is not Redis"),
        "{stderr}"
    );
    assert!(!stderr.contains("ACL") && !stderr.contains("password"), "{stderr}");
}

#[tokio::test]
async fn exec_workers_run_one_task_per_cpu_unless_told_otherwise() {
    let f = Fixture::start().await;
    let _w = Supervisor::start(&f.server, &["--workers", "1", "--queue", "cq", "--exec", "k=true"]);
    wait_live_workers(&f.inspector, "cq", 1, Duration::from_secs(30)).await;
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let workers = workers_json(&f.server, "cq").await;
    assert_eq!(workers[0]["concurrency"], cpus, "{workers:#?}");
    // --help says so next to --workers.
    let help = cli(&f.server, &["--help"]).await;
    // Words only: the help is wrapped to the terminal's width.
    let help = String::from_utf8_lossy(&help.stdout);
    let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let at = words.find("--workers <WORKERS>").expect("--workers in --help");
    assert!(words[at..at + 400].contains("number of CPUs"), "{help}");
}

#[tokio::test]
async fn json_logs_are_json_to_the_last_line_with_exec_output_as_task_events() {
    let f = Fixture::start().await;
    let exec = "shout=echo \"hello from $RIVULET_TASK_ID\"; echo 'not json {' >&2";
    let mut sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "2",
            "--queue",
            "jq",
            "--exec",
            exec,
            "--log-format",
            "json",
        ],
    );
    let out = cli_json(&f.server, &["enqueue", "--queue", "jq", "--kind", "shout", "--json"]).await;
    let id = out["ids"][0].as_str().unwrap().to_owned();
    wait_settled(&f.inspector, "jq", (1, 0), Duration::from_secs(60)).await;
    sup.signal(Signal::SIGTERM);
    let status = sup.exit_within(Duration::from_secs(60)).await;
    let log = sup.log();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");

    let mut events = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{log}"));
        events.push(event);
    }
    let output = |stream: &str| {
        events
            .iter()
            .find(|e| e["message"] == "task output" && e["stream"] == stream)
            .unwrap_or_else(|| panic!("no {stream} event:\n{log}"))
    };
    let stdout = output("stdout");
    assert_eq!(stdout["task_id"], id.as_str());
    assert_eq!(stdout["kind"], "shout");
    assert_eq!(stdout["line"], format!("hello from {id}"));
    assert_eq!(output("stderr")["line"], "not json {");
    // Fields are plain values, not Rust's debug form of a list or a struct.
    assert!(!log.contains("[\\\"") && !log.contains("Report {"), "{log}");
    let started = events
        .iter()
        .find(|e| e["message"] == "worker started")
        .expect("worker started");
    assert_eq!(started["queues"], "jq");
    // One signal, one "draining" line (not one more per worker process).
    let draining = events
        .iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.contains("draining")))
        .count();
    assert_eq!(draining, 1, "{log}");
}

#[tokio::test]
async fn stats_has_one_json_shape_and_its_tables_show_lost_and_reclaimed() {
    let f = Fixture::start().await;
    cli_json(&f.server, &["enqueue", "--queue", "sq", "--kind", "noop", "--json"]).await;
    for args in [&["stats", "--json"][..], &["stats", "--queue", "sq", "--json"]] {
        let doc = cli_json(&f.server, args).await;
        let docs = doc
            .as_array()
            .unwrap_or_else(|| panic!("{args:?} is not an array: {doc}"));
        assert_eq!(docs.len(), 1, "{doc}");
        assert_eq!(docs[0]["queue"], "sq");
        assert!(docs[0]["observed_at_ms"].as_u64().is_some_and(|t| t > 0), "{doc}");
        let normal = &docs[0]["priorities"][1];
        assert!(normal["oldest_waiting_age_ms"].as_f64().is_some(), "{normal}");
        for counter in ["lost", "reclaimed", "fenced"] {
            assert_eq!(docs[0]["counters"][counter], 0, "{counter}: {doc}");
        }
    }

    // No warning while nothing is lost.
    for args in [&["stats", "--queue", "sq"][..], &["queues"]] {
        let out = cli(&f.server, args).await;
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            table.contains("LOST") && table.contains("RECLAIMED"),
            "{args:?}:\n{table}"
        );
        assert!(!table.contains("warning"), "{args:?}:\n{table}");
    }
    // Something else deleted an in-flight entry: the counter a worker would bump.
    let stats_key = f.inspector.queue("sq").await.unwrap().shard("normal", 0).stats;
    let mut raw = f.redis().await;
    let _: u64 = raw.hincr(&stats_key, "lost", 2).await.unwrap();
    for args in [&["stats", "--queue", "sq"][..], &["queues"]] {
        let out = cli(&f.server, args).await;
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            table.contains("warning: queue sq: 2 task(s) lost"),
            "{args:?}:\n{table}"
        );
    }
}

#[tokio::test]
async fn pending_names_the_task_its_kind_and_attempt() {
    let f = Fixture::start().await;
    let out = cli_json(
        &f.server,
        &[
            "enqueue",
            "--queue",
            "pq",
            "--kind",
            "sleep",
            "--payload",
            r#"{"ms": 600000}"#,
            "--json",
        ],
    )
    .await;
    let id = out["ids"][0].as_str().unwrap().to_owned();
    let _w = Supervisor::start(&f.server, &["--workers", "1", "--queue", "pq", "--drain-timeout", "1s"]);
    let q = rivulet::Queue::new("pq").unwrap();
    let held = wait_until(Duration::from_secs(30), async || {
        f.inspector.pending(&q, 10).await.is_ok_and(|p| p.len() == 1)
    })
    .await;
    assert!(held, "the task was never taken");
    let json = cli_json(&f.server, &["pending", "--queue", "pq", "--json"]).await;
    assert_eq!(json[0]["task_id"], id.as_str(), "{json}");
    assert_eq!(json[0]["kind"], "sleep");
    assert_eq!(json[0]["attempt"], 0);
    let table = cli(&f.server, &["pending", "--queue", "pq"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    let row = table.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..3], [id.as_str(), "sleep", "1"], "{table}");
}

#[tokio::test]
async fn functions_install_loads_the_library_producers_call_and_source_prints_it() {
    let f = Fixture::start().await;
    let got = cli_json(&f.server, &["functions", "install", "--json"]).await;
    assert_eq!(got["library"], "rivulet_v1", "{got}");
    let revision = got["revision"].as_str().unwrap().to_owned();
    let mut conn = f.redis().await;
    let loaded: String = redis::cmd("FCALL")
        .arg("rivulet_v1_version")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(loaded, revision);
    // What `source` prints is what was loaded: the same revision, the engine's scripts inside.
    let out = cli(&f.server, &["functions", "source"]).await;
    assert!(out.status.success());
    let source = String::from_utf8(out.stdout).unwrap();
    assert!(source.starts_with("#!lua name=rivulet_v1\n"), "{source}");
    assert!(source.contains(&format!("return '{revision}'")));
    assert!(source.contains("-- enqueue.lua: enqueue one task"));
}
