//! The autoscaler's ACL that `docs/operations.md` documents is enough for it to observe a
//! queue (every shard's numbers, the worker registry) and store its decision: nothing denied.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rivulet::Task;
use rivulet::testing::{ChildGuard, Fixture, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_autoscaler_acl_is_enough_to_observe_and_decide() {
    let f = Fixture::with_queue(rivulet::Queue::new("acl-scaled").unwrap().shards(2).unwrap()).await;
    f.client
        .enqueue_many(&f.queue, (0..5).map(|_| Task::json("noop", &()).unwrap()))
        .await
        .unwrap();
    let mut admin = f.redis().await;
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"))
        .expect("docs/operations.md exists");
    let rule = doc
        .lines()
        .find(|l| l.starts_with("ACL SETUSER rivulet-autoscaler "))
        .expect("docs/operations.md has the autoscaler's `ACL SETUSER` line");
    let args: Vec<String> = rule
        .split_whitespace()
        .skip(1)
        .map(|a| a.replace("CHANGE-ME", "s3cret"))
        .collect();
    redis::cmd("ACL")
        .arg(&args)
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://rivulet-autoscaler:s3cret@127.0.0.1:{}", f.server.port());

    // --dry-run: it observes and decides on every tick without starting workers.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoscaler"));
    cmd.args(["--redis-url", &url, "--queue", "acl-scaled", "--sla", "normal=30s"])
        .args(["--interval", "100ms", "--dry-run"])
        .env("RUST_LOG", "info")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null());
    let mut autoscaler = ChildGuard::spawn("autoscaler", &mut cmd);
    let key = rivulet::keys::autoscaler_key(f.queue.name());
    let decided = wait_until(Duration::from_secs(30), async || {
        let stored: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut admin).await.unwrap();
        stored.is_some_and(|json| json.contains("\"dry_run\":true"))
    })
    .await;
    // A few more ticks, then stop it.
    let ticks = wait_until(Duration::from_secs(30), async || {
        autoscaler.log().matches("decision").count() >= 3
    })
    .await;
    autoscaler.kill();
    let log = autoscaler.log();
    assert!(decided && ticks, "no decision stored as the autoscaler's user:\n{log}");
    assert!(!log.contains("NoPerm") && !log.contains("NOPERM"), "{log}");
    let denied: Vec<HashMap<String, redis::Value>> =
        redis::cmd("ACL").arg("LOG").query_async(&mut admin).await.unwrap();
    let objects: Vec<String> = denied
        .iter()
        .filter_map(|e| e.get("object"))
        .map(|v| format!("{v:?}"))
        .filter(|o| !o.contains("setinfo"))
        .collect();
    assert!(
        objects.is_empty(),
        "denied for the autoscaler's user: {objects:?}\n{denied:#?}"
    );
}
