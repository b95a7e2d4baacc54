//! Safe Redis settings and durability through the binary: an evicting `maxmemory-policy` is
//! refused at start (by the supervisor once, not by crash-looping children) unless
//! `--allow-eviction`; `--durability` values the server cannot honour exit 1 with the reason.

use std::time::Duration;

use nix::sys::signal::Signal;
use rivulet::Inspector;
use rivulet::testing::RedisServer;

use crate::common::{Supervisor, cli, cli_json, wait_settled};

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
    cli_json(
        &server,
        &["enqueue", "--queue", "ev", "--kind", "noop", "--count", "3", "--json"],
    )
    .await;
    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_settled(&inspector, "ev", (3, 0), Duration::from_secs(30)).await;
    sup.signal(Signal::SIGTERM);
    assert_eq!(
        sup.exit_within(Duration::from_secs(30)).await.and_then(|s| s.code()),
        Some(0)
    );
    assert!(sup.log().contains("eviction allowed"), "{}", sup.log());

    // Durability: a bad value is exit 2; a server that cannot honour it, or no replica to
    // confirm, exit 1 with the reason.
    let out = cli(
        &server,
        &[
            "enqueue",
            "--queue",
            "ev",
            "--kind",
            "noop",
            "--durability",
            "sometimes",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    for (mode, needle) in [
        ("fsync", "fsync"),
        ("replicated:1:100ms", "not confirmed as replicated:1:100ms"),
    ] {
        let out = cli(
            &server,
            &["enqueue", "--queue", "ev", "--kind", "noop", "--durability", mode],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mode}: {stderr}");
        assert!(stderr.contains(needle), "{mode}: {stderr}");
    }
    let out = cli(
        &server,
        &["work", "--queue", "ev", "--allow-eviction", "--durability", "fsync"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("durability fsync"), "{stderr}");
}
