//! The Redis ACL that `docs/operations.md` documents is enough for workers and every admin
//! command: nothing is denied.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use redis::aio::MultiplexedConnection;
use rivulet::Inspector;
use rivulet::testing::Fixture;

use crate::common::{Supervisor, cli_json_at, wait_settled};

#[tokio::test]
async fn the_documented_acl_is_enough_for_workers_and_admin() {
    let f = Fixture::start().await;
    let mut admin = f.redis().await;
    let url = create_the_documented_user(&mut admin, f.server.port(), "rivulet").await;

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
    for extra in [
        &["--kind", "noop", "--count", "3"][..],
        &["--kind", "fail"],
        &["--kind", "sleep", "--payload", r#"{"ms": 800}"#],
        &["--kind", "noop", "--delay", "200ms"],
    ] {
        let mut args = vec!["enqueue", "--queue", "acl", "--json"];
        args.extend_from_slice(extra);
        cli_json_at(&url, &args).await;
    }
    wait_settled(&f.inspector, "acl", (5, 1), Duration::from_secs(60)).await;
    every_admin_command_runs_as_the_user(&url, &f.inspector).await;

    sup.signal(Signal::SIGTERM);
    assert_eq!(
        sup.exit_within(Duration::from_secs(30)).await.and_then(|s| s.code()),
        Some(0)
    );
    assert!(!sup.log().contains("NOPERM"), "{}", sup.log());
    nothing_was_denied(&mut admin).await;
}

#[tokio::test]
async fn the_documented_producer_acl_is_enough_to_enqueue() {
    let f = Fixture::start().await;
    let mut admin = f.redis().await;
    let url = create_the_documented_user(&mut admin, f.server.port(), "rivulet-producer").await;
    // Ready, delayed and prioritised tasks into a new queue (declared by the producer), then
    // into the same queue again (its layout read back); a durability wait needs +info +wait.
    for extra in [
        &["--kind", "noop", "--count", "3"][..],
        &["--kind", "noop", "--delay", "1h"],
        &["--kind", "noop", "--priority", "high"],
        &["--kind", "noop", "--durability", "replicated:1:50ms"],
    ] {
        let mut args = vec!["enqueue", "--queue", "acl-producer", "--json"];
        args.extend_from_slice(extra);
        let out = crate::common::cli_env(Some(&url), &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if extra.contains(&"--durability") {
            // No replica here: refused as unconfirmed, which needs the wait to have run.
            assert!(stderr.contains("not confirmed as replicated:1:50ms"), "{stderr}");
        } else {
            assert!(out.status.success(), "{args:?}: {stderr}");
        }
    }
    let q = f.inspector.queue("acl-producer").await.unwrap();
    assert_eq!(f.inspector.stats(&q).await.unwrap().counters.enqueued, 6);
    nothing_was_denied(&mut admin).await;
}

/// Runs the `ACL SETUSER USER` line of docs/operations.md (password `s3cret`); returns the URL
/// that logs in as that user.
pub async fn create_the_documented_user(admin: &mut MultiplexedConnection, port: u16, user: &str) -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"))
        .expect("docs/operations.md exists");
    let prefix = format!("ACL SETUSER {user} ");
    let rule = doc
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("docs/operations.md has an `{prefix}` line"));
    let args: Vec<String> = rule
        .split_whitespace()
        .skip(1)
        .map(|a| a.replace("CHANGE-ME", "s3cret"))
        .collect();
    redis::cmd("ACL").arg(&args).query_async::<()>(admin).await.unwrap();
    format!("redis://{user}:s3cret@127.0.0.1:{port}")
}

async fn every_admin_command_runs_as_the_user(url: &str, inspector: &Inspector) {
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
        cli_json_at(url, args).await;
    }
    // The replayed task is dead again.
    wait_settled(inspector, "acl", (5, 2), Duration::from_secs(60)).await;
    let dead = cli_json_at(url, &["dlq", "list", "--queue", "acl", "--json"]).await;
    let id = dead[0]["id"].as_str().unwrap().to_owned();
    cli_json_at(url, &["dlq", "show", "--queue", "acl", "--id", &id, "--json"]).await;
    let purged = cli_json_at(url, &["dlq", "purge", "--queue", "acl", "--all", "--json"]).await;
    assert_eq!(purged["purged"], 1);
    let demo = cli_json_at(
        url,
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
}

/// Redis logs every denied command; only the client library's optional CLIENT SETINFO may be.
pub async fn nothing_was_denied(admin: &mut MultiplexedConnection) {
    let denied: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL").arg("LOG").query_async(admin).await.unwrap();
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
