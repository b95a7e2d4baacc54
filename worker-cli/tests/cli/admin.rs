//! The admin commands against the engine's own view: enqueue, stats, queues, pending,
//! pause/resume, dead letters (list, show, purge, replay), workers, delete-queue, and
//! `stats --watch` as a long-running command.

use std::time::Duration;

use nix::sys::signal::Signal;
use rivulet::Queue;
use rivulet::testing::{Fixture, TempDir, wait_until};
use serde_json::Value;

use crate::common::{Supervisor, cli, cli_fails, cli_json, first_line, settled, spawn_reading_stdout, wait_settled};

#[tokio::test]
async fn admin_json_matches_the_engine_state() {
    let f = Fixture::start().await;
    let q = enqueue_stats_queues_and_pending_agree_with_the_engine(&f).await;
    pause_and_resume_reach_the_engine(&f, &q).await;
    // The worker of the dead-letter phase stays up: delete-queue must see it.
    let _sup = dead_letters_list_show_purge_and_replay(&f).await;
    unknown_queues_and_ids_say_so(&f).await;
    deleting_a_served_queue_is_refused_then_forced(&f).await;
}

/// Queue `adm`: three tasks now, one high in an hour; returns the queue.
async fn enqueue_stats_queues_and_pending_agree_with_the_engine(f: &Fixture) -> Queue {
    let out = cli_json(
        &f.server,
        &["enqueue", "--queue", "adm", "--kind", "noop", "--count", "3", "--json"],
    )
    .await;
    assert_eq!(out["count"], 3);
    assert_eq!(out["ids"].as_array().unwrap().len(), 3);
    let delayed = cli_json(
        &f.server,
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
    let q = f.inspector.queue("adm").await.unwrap();
    let engine = serde_json::to_value(f.inspector.stats(&q).await.unwrap()).unwrap();
    // One shape with or without --queue: an array of per-queue documents.
    let stats = cli_json(&f.server, &["stats", "--queue", "adm", "--json"]).await[0].clone();
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

    f.inspector
        .record_decision(&q, r#"{"desired": 3, "reason": "backlog"}"#)
        .await
        .unwrap();
    let stats = cli_json(&f.server, &["stats", "--queue", "adm", "--json"]).await[0].clone();
    assert_eq!(stats["autoscaler"]["desired"], 3);
    let all = cli_json(&f.server, &["stats", "--json"]).await;
    assert_eq!(all.as_array().unwrap().len(), 1);

    let queues = cli_json(&f.server, &["queues", "--json"]).await;
    assert_eq!(queues[0]["queue"], "adm");
    assert_eq!(
        (queues[0]["waiting"].clone(), queues[0]["scheduled"].clone()),
        (3.into(), 1.into())
    );
    assert_eq!(queues[0]["priorities"], serde_json::json!(["high", "normal", "low"]));
    assert_eq!(
        cli_json(&f.server, &["pending", "--queue", "adm", "--json"]).await,
        serde_json::json!([])
    );
    q
}

async fn pause_and_resume_reach_the_engine(f: &Fixture, q: &Queue) {
    let paused = cli_json(&f.server, &["pause", "--queue", "adm", "--json"]).await;
    assert_eq!(paused["paused"], true);
    assert!(f.inspector.stats(q).await.unwrap().paused);
    cli_json(&f.server, &["resume", "--queue", "adm", "--json"]).await;
    assert!(!f.inspector.stats(q).await.unwrap().paused);
}

/// Queue `dlq`, served by a command that fails until a marker file exists: two dead letters,
/// listed, filtered, shown, one purged, the other replayed once the marker is there. Returns
/// the supervisor, still serving `dlq`.
async fn dead_letters_list_show_purge_and_replay(f: &Fixture) -> Supervisor {
    let dir = TempDir::new("dlq");
    let marker = dir.join("ready");
    let exec = format!("flaky=test -f {}", marker.display());
    let sup = Supervisor::start(
        &f.server,
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
        &f.server,
        &["enqueue", "--queue", "dlq", "--kind", "flaky", "--count", "2", "--json"],
    )
    .await;
    wait_settled(&f.inspector, "dlq", (0, 2), Duration::from_secs(60)).await;
    let dq = f.inspector.queue("dlq").await.unwrap();
    let listed = cli_json(&f.server, &["dlq", "list", "--queue", "dlq", "--json"]).await;
    let engine_list = serde_json::to_value(f.inspector.dlq_list(&dq, None, 100).await.unwrap()).unwrap();
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
    a_kind_filter_with_no_match_says_so(f).await;

    let first = listed[0]["id"].as_str().unwrap().to_owned();
    let shown = cli_json(&f.server, &["dlq", "show", "--queue", "dlq", "--id", &first, "--json"]).await;
    assert_eq!(shown["task_id"], listed[0]["task_id"]);
    // Every stored field is in the JSON too, not only the ones the table shows.
    assert!(shown["fields"]["enqueued_at"].is_string(), "{shown}");
    assert_eq!(shown["codec"], "json");
    let purged = cli_json(&f.server, &["dlq", "purge", "--queue", "dlq", "--id", &first, "--json"]).await;
    assert_eq!(purged["purged"], 1);

    std::fs::write(&marker, b"").unwrap();
    let replayed = cli_json(&f.server, &["dlq", "replay", "--queue", "dlq", "--all", "--json"]).await;
    assert_eq!(replayed["replayed"], 1);
    let replayed_done = wait_until(Duration::from_secs(60), async || {
        settled(&f.inspector, "dlq").await.0 == 1
    })
    .await;
    assert!(
        replayed_done,
        "the replayed task is not done: {:?}",
        settled(&f.inspector, "dlq").await
    );
    assert_eq!(
        cli_json(&f.server, &["dlq", "list", "--queue", "dlq", "--json"]).await,
        serde_json::json!([])
    );
    let workers = cli_json(&f.server, &["workers", "--json"]).await;
    let engine_workers = f.inspector.workers().await.unwrap();
    assert_eq!(workers.as_array().unwrap().len(), engine_workers.len());
    sup
}

async fn a_kind_filter_with_no_match_says_so(f: &Fixture) {
    let by_kind = cli_json(
        &f.server,
        &["dlq", "list", "--queue", "dlq", "--kind", "other", "--json"],
    )
    .await;
    assert_eq!(by_kind, serde_json::json!([]));
    // For people: the note names the kind (there are dead letters, just none of it).
    let out = cli(&f.server, &["dlq", "list", "--queue", "dlq", "--kind", "other"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        stderr.contains("no dead letters of kind other in queue dlq"),
        "{stderr}"
    );
}

async fn unknown_queues_and_ids_say_so(f: &Fixture) {
    let stderr = cli_fails(&f.server, &["stats", "--queue", "nope"], 1).await;
    assert!(
        stderr.contains("\"nope\"") && stderr.contains("known queues: adm, dlq"),
        "{stderr}"
    );
    let stderr = cli_fails(&f.server, &["dlq", "show", "--queue", "dlq", "--id", "normal/0/1-0"], 1).await;
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
        let stderr = cli_fails(&f.server, args, 2).await;
        assert!(
            stderr.contains("--id") && stderr.contains("queue dlq has no") && stderr.contains("Usage:"),
            "worker-cli {args:?}: {stderr}"
        );
    }
}

/// Deleting a queue a worker serves is refused and says why; --force deletes it.
async fn deleting_a_served_queue_is_refused_then_forced(f: &Fixture) {
    let stderr = cli_fails(&f.server, &["delete-queue", "--queue", "dlq"], 1).await;
    assert!(
        stderr.contains("in use") && stderr.contains("1 live worker(s)") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(f.inspector.queue("dlq").await.is_ok(), "a refusal deletes nothing");
    let deleted = cli_json(&f.server, &["delete-queue", "--queue", "dlq", "--force", "--json"]).await;
    assert_eq!(deleted["deleted"]["queue"], "dlq");
    assert_eq!(deleted["deleted"]["workers"], 1);
    let queues = cli_json(&f.server, &["queues", "--json"]).await;
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"dlq"), "{queues}");
}

#[tokio::test]
async fn stats_watch_ends_when_its_reader_goes_away_or_on_sigterm() {
    let f = Fixture::start().await;
    cli_json(
        &f.server,
        &["enqueue", "--queue", "watched", "--kind", "noop", "--json"],
    )
    .await;

    // `stats --watch [--json] | head -1`: the reader closes the pipe after one line.
    for json in [true, false] {
        let mut args = vec!["stats", "--queue", "watched", "--watch", "--interval", "50ms"];
        if json {
            args.push("--json");
        }
        let mut p = spawn_reading_stdout(&f.server, &args);
        let (line, out) = first_line(&mut p);
        if json {
            let doc: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            assert_eq!(doc[0]["queue"], "watched");
            assert!(doc[0]["observed_at_ms"].as_u64().is_some(), "{line:?}");
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
        let mut p = spawn_reading_stdout(&f.server, &["stats", "--queue", "watched", "--watch", "--json"]);
        // The first line means the signal handlers are installed (before the first refresh).
        let (line, _out) = first_line(&mut p);
        assert!(line.contains("watched"), "{line:?}");
        p.signal(sig);
        let status = p.exit_within(Duration::from_secs(30)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(0), "exit 0 after {sig}");
    }
}
