//! The OpenAPI document against the running server, by property-based tests: `schemathesis`
//! (PyPI; `.ci/run` installs it into `target/ci-venv` and puts it on PATH) generates requests
//! from the document served at `/api/v1/openapi.json` and checks every answer against it: no
//! server error, documented status codes, content types and response schemas, schema-invalid
//! input rejected and schema-valid input accepted.

mod support;

use std::path::PathBuf;
use std::process::Command;

use rivulet::testing::{Fixture, fast_config};
use rivulet::{HandlerError, Queue, Router, Task, TaskContext};
use serde_json::{Value, json};

use support::{Dash, TOKEN};

/// `st` (or `schemathesis`) on PATH, or the CI venv's; a clear failure when there is none.
fn schemathesis() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ci-venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([venv]) {
        for name in ["st", "schemathesis"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "schemathesis is not installed: this test runs it against the dashboard. Install it with \
         `python3 -m venv target/ci-venv && target/ci-venv/bin/pip install schemathesis` (what .ci/run does) \
         or put `st` on PATH"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_to_its_openapi_document() {
    let st = schemathesis();
    let f = Fixture::with_queue(Queue::new("schema").unwrap()).await;
    // Some of everything for the generated requests to find: waiting tasks, a dead letter, a
    // worker, an autoscaler decision, a schedule, a limit.
    let dead_router = Router::new().route("boom", |_ctx: TaskContext, _v: Value| async move {
        Err(HandlerError::fatal("boom"))
    });
    // Limits on `boom` (registered at the worker's start), for `/api/v1/limits`.
    let mut config = fast_config();
    config.limits.insert(
        "boom".into(),
        rivulet::Limit {
            rate: Some("100/s".parse().unwrap()),
            max_running: Some(4),
        },
    );
    let worker = f.start_worker(dead_router, config);
    f.client
        .enqueue(&f.queue, Task::json("boom", &json!(1)).unwrap())
        .await
        .unwrap();
    f.wait_dead_letters(1, std::time::Duration::from_secs(20)).await;
    f.inspector.pause(&f.queue).await.unwrap();
    for i in 0..3 {
        f.client
            .enqueue(&f.queue, Task::json("ok", &json!({ "i": i })).unwrap())
            .await
            .unwrap();
    }
    f.inspector
        .record_decision(
            &f.queue,
            r#"{"desired":2,"current":1,"reason":"backlog","detail":"d","at_ms":1}"#,
        )
        .await
        .unwrap();
    rivulet::Schedules::new(f.redis_client())
        .await
        .unwrap()
        .add(&rivulet::Schedule::cron("hourly", "schema", "ok", "0 * * * *"))
        .await
        .unwrap();
    let dash = Dash::start(f.redis_client()).await;
    let base = dash.url("");
    let schema = dash.url("/api/v1/openapi.json");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .args(["run", &schema, "--url", &base, "-H", &auth])
            // The events endpoint is a stream that never ends: the API test reads it.
            .args(["--exclude-path", "/api/v1/queues/{queue}/events"])
            .args([
                "--checks",
                "all",
                "--exclude-checks",
                "use_after_free,ensure_resource_availability",
            ])
            .args([
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "25",
                "--seed",
                "20261201",
            ])
            // One worker thread: CPython 3.11's `ast` module keeps one recursion-depth counter
            // per interpreter, and hypothesis parses schemathesis' sources to describe its
            // lambdas; two threads parsing at once now and then trip its "AST constructor
            // recursion depth mismatch" SystemError, a schemathesis `Runtime Error` that says
            // nothing of the API (1 run in 8 on main under load, CI run of stop 21).
            .args(["--workers", "1", "--no-color", "--request-timeout", "10"])
            // A check of the generator, not of the API: for the two free-text path parameters
            // of `dead-letters/{id}` it now and then filters out too many generated values (1
            // run in 6 failed so on main, with every answer checked passing).
            .args(["--suppress-health-check", "filter_too_much"])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            // Its example cache goes to a temp dir, not into the checkout.
            .current_dir(std::env::temp_dir())
            .output()
            .expect("schemathesis starts")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {:?}):\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Tested:"), "schemathesis ran no operation:\n{stdout}");
    worker.stop().await;
}
