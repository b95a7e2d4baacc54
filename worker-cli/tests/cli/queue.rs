//! `queue create` / `queue show`: a queue's layout from the command line, checked by the
//! library's rules, and what producers and workers then use.

use rivulet::testing::RedisServer;

use crate::common::{cli, cli_env, cli_fails, cli_json};

#[tokio::test]
async fn queue_create_records_a_layout_that_show_enqueue_and_the_engine_use() {
    let server = RedisServer::start();
    let created = cli_json(
        &server,
        &[
            "queue",
            "create",
            "reports",
            "--priorities",
            "urgent,bulk",
            "--shards",
            "4",
            "--json",
        ],
    )
    .await;
    assert_eq!(created["created"], true, "{created}");
    assert_eq!(created["priorities"], serde_json::json!(["urgent", "bulk"]));
    assert_eq!(created["shards"], 4);

    let shown = cli_json(&server, &["queue", "show", "reports", "--json"]).await;
    assert_eq!(shown["priorities"], created["priorities"]);
    assert_eq!(shown["shards"], 4);
    assert_eq!(shown["default_priority"], "bulk", "the middle one: no `normal`");
    assert_eq!(shown["paused"], false);
    let table = cli(&server, &["queue", "show", "reports"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("urgent, bulk") && table.contains("shards"), "{table}");

    // The engine reads the same layout.
    let inspector = rivulet::Inspector::new(&server.client()).await.unwrap();
    let q = inspector.queue("reports").await.unwrap();
    assert_eq!(
        (q.layout().priorities.clone(), q.layout().shards),
        (vec!["urgent".into(), "bulk".into()], 4)
    );
    // Producers use it: its priorities are the ones enqueue accepts.
    cli_json(
        &server,
        &[
            "enqueue",
            "--queue",
            "reports",
            "--kind",
            "noop",
            "--priority",
            "urgent",
            "--count",
            "8",
            "--json",
        ],
    )
    .await;
    let stderr = cli_fails(
        &server,
        &["enqueue", "--queue", "reports", "--kind", "noop", "--priority", "high"],
        2,
    )
    .await;
    assert!(stderr.contains("urgent, bulk"), "{stderr}");

    // The same layout again is a no-op (scripts run it on every deploy); another is refused.
    let again = cli_json(
        &server,
        &[
            "queue",
            "create",
            "reports",
            "--priorities",
            "urgent,bulk",
            "--shards",
            "4",
            "--json",
        ],
    )
    .await;
    assert_eq!(again["created"], false, "{again}");
    let stderr = cli_fails(&server, &["queue", "create", "reports", "--shards", "2"], 1).await;
    assert!(
        stderr.contains("already exists with another layout")
            && stderr.contains("\"shards\":4")
            && stderr.contains("\"shards\":2"),
        "{stderr}"
    );
    let stderr = cli_fails(&server, &["queue", "show", "nope"], 1).await;
    assert!(stderr.contains("nope"), "{stderr}");
}

#[tokio::test]
async fn queue_create_refuses_a_bad_layout_with_exit_2_before_reaching_redis() {
    // Nothing listens at this URL: each refusal comes from the flags alone.
    let cases: &[(&[&str], &str)] = &[
        (&["--shards", "0"], "--shards"),
        (&["--shards", "5000"], "--shards"),
        (&["--priorities", "high,high"], "listed twice"),
        (&["--priorities", "hi gh"], "--priorities"),
        (&["--priorities", ""], "--priorities"),
    ];
    for (flags, wanted) in cases {
        let mut args = vec!["queue", "create", "q"];
        args.extend_from_slice(flags);
        let out = cli_env(Some("redis://127.0.0.1:1"), &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(wanted), "{args:?}: no {wanted:?} in {stderr}");
    }
    let out = cli_env(Some("redis://127.0.0.1:1"), &["queue", "create", "bad{name"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
