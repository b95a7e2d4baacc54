//! `--exec KIND=COMMAND`: a command as a handler, its exit code the task's outcome.

use std::path::Path;
use std::time::Duration;

use rivulet::testing::{Fixture, TempDir};

use crate::common::{Supervisor, cli_json, wait_settled};

/// A script that appends `id|kind|attempt|queue|priority|payload` to `log` and exits by the
/// payload's case: `ok` succeeds, `later` asks for a retry on its first attempt (exit 75 with
/// `retry-after`), `fatal` fails for good (exit 65), anything else fails with a message on
/// stderr.
fn write_job_script(script: &Path, log: &Path) {
    std::fs::write(
        script,
        format!(
            r#"body=$(cat)
printf '%s|%s|%s|%s|%s|%s\n' "$RIVULET_TASK_ID" "$RIVULET_KIND" "$RIVULET_ATTEMPT" "$RIVULET_QUEUE" "$RIVULET_PRIORITY" "$body" >> {log}
case "$body" in
  *'"case": "ok"'*) echo "progress goes to the worker's log"; exit 0 ;;
  *'"case": "later"'*)
    if [ "$RIVULET_ATTEMPT" = 0 ]; then echo "busy right now" >&2; echo "retry-after=100ms" >&2; exit 75; fi
    exit 0 ;;
  *'"case": "fatal"'*) echo "payload can never work" >&2; exit 65 ;;
  *) echo "something broke on attempt $RIVULET_ATTEMPT" >&2; exit 1 ;;
esac
"#,
            log = log.display()
        ),
    )
    .unwrap();
}

#[tokio::test]
async fn exec_exit_codes_lead_to_done_retry_and_dead_letter() {
    let f = Fixture::start().await;
    let dir = TempDir::new("exec");
    let (script, log) = (dir.join("job.sh"), dir.join("calls.log"));
    write_job_script(&script, &log);
    let exec = format!("job=sh {}", script.display());
    let _sup = Supervisor::start(
        &f.server,
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
        r#"{"case": "fatal"}"#,
    ];
    let mut ids = Vec::new();
    for p in payloads {
        let out = cli_json(
            &f.server,
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
    wait_settled(&f.inspector, "ex", (2, 2), Duration::from_secs(60)).await;

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
        // Exit 65 is fatal: one run, no retry, although --max-attempts allows two.
        format!("{}|job|0|ex|high|{}", ids[3], payloads[3]),
    ];
    expected.sort();
    assert_eq!(lines, expected);

    let q = f.inspector.queue("ex").await.unwrap();
    let s = f.inspector.stats(&q).await.unwrap();
    assert_eq!((s.counters.failed, s.counters.retried), (4, 2), "{s:#?}");

    let dead = cli_json(&f.server, &["dlq", "list", "--queue", "ex", "--json"]).await;
    let mut dead = dead.as_array().unwrap().clone();
    assert_eq!(dead.len(), 2, "{dead:#?}");
    let fatal = dead
        .iter()
        .position(|d| d["task_id"] == ids[3].as_str())
        .expect("the fatal task");
    let fatal = dead.remove(fatal);
    assert_eq!(fatal["reason"], "fatal", "{fatal:#?}");
    assert_eq!(fatal["attempt"], 1, "one failed run: {fatal:#?}");
    assert_eq!(fatal["error"], "fatal: exit 65 (not retried): payload can never work");
    assert_eq!(dead[0]["task_id"], ids[2].as_str());
    assert_eq!(dead[0]["reason"], "exhausted");
    assert_eq!(dead[0]["payload"], payloads[2]);
    let error = dead[0]["error"].as_str().unwrap();
    assert_eq!(error, "exit 1: something broke on attempt 1");
}
