//! Fair groups from the CLI: `enqueue --group`, `groups`, `stats`'s FAIR column, and the
//! worker flags `--group-weight`, `--fair-window`, `--max-running-per-group`; bad values exit
//! 2 naming the text and why.

use std::time::Duration;

use rivulet::testing::{RedisServer, wait_until};

use crate::common::{Supervisor, cli, cli_fails, cli_json, settled};

#[tokio::test]
async fn bad_group_flags_exit_2_naming_the_text_and_why() {
    let server = RedisServer::start();
    for (args, why) in [
        (
            vec!["work", "--group-weight", "a=0"],
            "not a whole number from 1 to 1000",
        ),
        (vec!["work", "--group-weight", "a=1001"], "from 1 to 1000"),
        (vec!["work", "--group-weight", "a b=2"], "' '"),
        (vec!["work", "--group-weight", "a"], "expected GROUP=WEIGHT"),
        (vec!["work", "--fair-window", "0"], "0"),
        (vec!["work", "--max-running-per-group", "0"], "0"),
        (vec!["enqueue", "-q", "g", "--kind", "k", "--group", "a{b}"], "'{'"),
        (vec!["enqueue", "-q", "g", "--kind", "k", "--group", ""], "empty"),
    ] {
        let stderr = cli_fails(&server, &args, 2).await;
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    let stderr = cli_fails(&server, &["work", "--group-weight", "t=1", "--group-weight", "t=2"], 2).await;
    assert!(stderr.contains("\"t\" is given twice"), "{stderr}");
    let stderr = cli_fails(&server, &["groups", "-q", "no{pe"], 2).await;
    assert!(stderr.contains("no{pe"), "{stderr}");
}

#[tokio::test]
async fn grouped_tasks_wait_their_turn_are_shown_and_run_under_a_supervisor() {
    let server = RedisServer::start();
    // No worker yet: the default window (100) goes to the stream, the rest waits its turn.
    let enq = |group: &'static str, count: &'static str| {
        let server = &server;
        async move {
            let args = [
                "enqueue",
                "-q",
                "fq",
                "--kind",
                "sleep",
                "--payload",
                r#"{"ms": 1}"#,
                "--count",
                count,
                "--group",
                group,
                "--json",
            ];
            cli_json(server, &args).await
        }
    };
    enq("tenant-a", "120").await;
    enq("tenant-b", "5").await;
    let g = cli_json(&server, &["groups", "-q", "fq", "--json"]).await;
    assert_eq!(g["waiting"], 25, "{g}");
    let rows = g["groups"].as_array().unwrap();
    assert_eq!(
        (rows[0]["group"].as_str(), rows[0]["waiting"].as_u64()),
        (Some("tenant-a"), Some(20)),
        "{g}"
    );
    assert_eq!(
        (rows[1]["group"].as_str(), rows[1]["waiting"].as_u64()),
        (Some("tenant-b"), Some(5)),
        "{g}"
    );
    let table = cli(&server, &["groups", "-q", "fq"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("GROUP") && table.contains("tenant-b") && table.contains("FLOOR"),
        "{table}"
    );
    let stats = cli(&server, &["stats", "-q", "fq"]).await;
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.contains("FAIR"), "{stats}");
    let json = cli_json(&server, &["stats", "-q", "fq", "--json"]).await;
    assert_eq!(json[0]["priorities"][1]["fair_waiting"], 25, "{json}");

    let mut sup = Supervisor::start(
        &server,
        &[
            "--workers",
            "2",
            "--queue",
            "fq",
            "--group-weight",
            "tenant-b=3",
            "--fair-window",
            "8",
            "--max-running-per-group",
            "2",
        ],
    );
    let inspector = rivulet::Inspector::new(&server.client()).await.unwrap();
    let done = wait_until(Duration::from_secs(60), async || {
        settled(&inspector, "fq").await == (125, 0)
    })
    .await;
    assert!(done, "125 done: {:?}\n{}", settled(&inspector, "fq").await, sup.log());
    let g = cli_json(&server, &["groups", "-q", "fq", "--json"]).await;
    assert_eq!(g["waiting"], 0, "{g}");
    let normal = g["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["priority"] == "normal")
        .unwrap()
        .clone();
    assert_eq!(normal["window"], 8, "the workers set their window: {g}");
    let _ = sup.children();
}
