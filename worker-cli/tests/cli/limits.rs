//! `--rate-limit`, `--max-running` and `worker-cli limits`: bad specs exit 2 naming the text
//! and why; the supervisor's worker processes enforce the limits and `limits` shows them.

use std::time::Duration;

use rivulet::testing::{RedisServer, wait_until};

use crate::common::{Supervisor, cli, cli_fails, cli_json, enqueue_sleeps, settled};

#[tokio::test]
async fn bad_limit_specs_exit_2_naming_the_text_and_why() {
    let server = RedisServer::start();
    for (flag, spec, why) in [
        ("--rate-limit", "x=0/s", "a rate of 0"),
        ("--rate-limit", "x=10/week", "unknown unit \"week\""),
        ("--rate-limit", "x=10/s,burst=0", "a burst of 0"),
        ("--rate-limit", "x=ten/s", "not a whole number"),
        ("--rate-limit", "x", "expected NAME=VALUE"),
        ("--rate-limit", "a{b}=1/s", "'{'"),
        ("--max-running", "train=0", "a limit of 0"),
        ("--max-running", "train=two", "not a whole number"),
        ("--max-running", "=2", "the name is empty"),
    ] {
        let stderr = cli_fails(&server, &["work", flag, spec], 2).await;
        assert!(stderr.contains(spec) && stderr.contains(why), "{flag} {spec}: {stderr}");
    }
    let stderr = cli_fails(&server, &["work", "--max-running", "t=1", "--max-running", "t=2"], 2).await;
    assert!(stderr.contains("\"t\" is given twice"), "{stderr}");
    let out = cli(&server, &["work", "--help"]).await;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--rate-limit <NAME=RATE>") && help.contains("--max-running <NAME=N>"),
        "{help}"
    );
}

#[tokio::test]
async fn supervised_workers_enforce_limits_and_limits_shows_them() {
    let server = RedisServer::start();
    let mut sup = Supervisor::start(
        &server,
        &[
            "--workers",
            "2",
            "--queue",
            "lim",
            "--rate-limit",
            "sleep=20/s,burst=2",
            "--max-running",
            "sleep=1",
        ],
    );
    enqueue_sleeps(&server, "lim", 20, 12).await;
    let inspector = rivulet::Inspector::new(&server.client()).await.unwrap();
    let done = wait_until(Duration::from_secs(30), async || {
        settled(&inspector, "lim").await == (12, 0)
    })
    .await;
    assert!(
        done,
        "12 sleeps done: {:?}\n{}",
        settled(&inspector, "lim").await,
        sup.log()
    );
    let limits = cli_json(&server, &["limits", "--json"]).await;
    let l = &limits[0];
    assert_eq!(l["name"], "sleep", "{limits}");
    assert_eq!(
        (l["granted"].as_u64(), l["max_running"].as_u64()),
        (Some(12), Some(1)),
        "{limits}"
    );
    assert_eq!(l["rate"]["count"], 20, "{limits}");
    assert_eq!(l["running"], 0, "{limits}");
    assert!(
        l["waited"].as_u64().unwrap() > 0,
        "a cap of 1 over 2 processes makes tasks wait: {limits}"
    );
    let table = cli(&server, &["limits"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("LIMIT") && table.contains("20/s,burst=2") && table.contains("0/1"),
        "{table}"
    );
    let _ = sup.children();
}
