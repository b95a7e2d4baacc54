//! The JSON API, `/metrics` and the probes against a real `redis-server` and a real worker:
//! every endpoint, the token rules, bad input (404 / 400 / 413 with a JSON error), escaping
//! and the Redis password kept out of every answer.

mod support;

use std::time::Duration;

use rivulet::testing::{Fixture, fast_config, wait_until};
use rivulet::{HandlerError, Output, Queue, Router, TaskContext};
use serde_json::{Value, json};

use support::{Dash, TOKEN, request, stream_for};

const T: Duration = Duration::from_secs(20);

/// `ok` returns its payload wrapped; `boom` always fails fatally, with markup in its error.
fn router() -> Router {
    Router::new()
        .route_returning("ok", |_ctx: TaskContext, v: Value| async move {
            Ok(Output(json!({ "got": v })))
        })
        .route("boom", |_ctx: TaskContext, _v: Value| async move {
            Err(HandlerError::fatal("<script>window.__xss = 1</script> went wrong"))
        })
}

async fn enqueue(dash: &Dash, queue: &str, kind: &str, payload: Value) -> String {
    let r = dash
        .post(
            &format!("/api/v1/queues/{queue}/tasks"),
            &json!({ "kind": kind, "payload": payload }),
        )
        .await;
    r.expect(201)["id"].as_str().expect("an id").to_owned()
}

async fn task_state(dash: &Dash, queue: &str, id: &str) -> String {
    dash.get(&format!("/api/v1/queues/{queue}/tasks/{id}")).await.json()["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn every_endpoint_answers_with_real_workers() {
    let f = Fixture::with_queue(Queue::new("api").unwrap()).await;
    f.client.declare(&f.queue).await.unwrap();
    let dash = Dash::start(f.redis_client()).await;
    let worker = f.start_worker(router(), fast_config());
    f.wait_worker_registered(T).await;

    // Probes and the document.
    assert_eq!(dash.get("/healthz").await.expect(200)["status"], "ok");
    assert_eq!(dash.get("/readyz").await.expect(200)["status"], "ok");
    let doc = dash.get("/api/v1/openapi.json").await.expect(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for p in [
        "/api/v1/queues",
        "/api/v1/queues/{queue}/tasks/{id}",
        "/api/v1/queues/{queue}/dead-letters/replay",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from the document");
    }

    // Enqueue through the API; the worker runs it; the task shows its result and events.
    let id = enqueue(&dash, "api", "ok", json!({"n": 1})).await;
    assert!(
        wait_until(T, async || task_state(&dash, "api", &id).await == "succeeded").await,
        "the task did not succeed: {}",
        dash.get(&format!("/api/v1/queues/api/tasks/{id}")).await.text()
    );
    let task = dash.get(&format!("/api/v1/queues/api/tasks/{id}")).await.expect(200);
    assert_eq!(task["kind"], "ok");
    assert!(task["result"]["text"].as_str().unwrap().contains("\"got\""), "{task}");
    let events: Vec<&str> = task["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"enqueued") && events.contains(&"succeeded"),
        "{events:?}"
    );
    let list = dash.get("/api/v1/queues/api/tasks?state=succeeded").await.expect(200);
    assert!(
        list["tasks"].as_array().unwrap().iter().any(|t| t["id"] == id.as_str()),
        "{list}"
    );

    // A payload is shown while the task waits: pause, enqueue, look, cancel.
    let paused = dash.post_empty("/api/v1/queues/api/pause").await.expect(200);
    assert_eq!(paused["paused"], true);
    // Workers read the flag within their promote interval; let a fetch in flight settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = enqueue(&dash, "api", "ok", json!({"keep": "me"})).await;
    let t = dash
        .get(&format!("/api/v1/queues/api/tasks/{waiting}"))
        .await
        .expect(200);
    assert_eq!(t["state"], "queued", "{t}");
    assert!(
        t["payload"]["text"].as_str().unwrap().contains("\"keep\": \"me\""),
        "{t}"
    );
    let queued = dash
        .get("/api/v1/queues/api/tasks?state=queued&limit=10")
        .await
        .expect(200);
    assert!(
        queued["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == waiting.as_str()),
        "{queued}"
    );
    let c = dash
        .post_empty(&format!("/api/v1/queues/api/tasks/{waiting}/cancel"))
        .await
        .expect(200);
    assert_eq!(c["outcome"], "cancelled", "{c}");
    assert_eq!(task_state(&dash, "api", &waiting).await, "cancelled");
    assert_eq!(
        dash.post_empty("/api/v1/queues/api/resume").await.expect(200)["paused"],
        false
    );

    // A task that dies: its dead letter is listed, shown, replayed (it dies again) and purged.
    let dead = enqueue(&dash, "api", "boom", json!("x")).await;
    assert!(
        wait_until(T, async || task_state(&dash, "api", &dead).await == "dead").await,
        "the task did not die"
    );
    let letters = dash.get("/api/v1/queues/api/dead-letters?kind=boom").await.expect(200);
    let letter = letters["dead_letters"][0].clone();
    assert_eq!(letter["task_id"], dead.as_str(), "{letters}");
    assert_eq!(letter["reason"], "fatal");
    let none = dash.get("/api/v1/queues/api/dead-letters?kind=other").await.expect(200);
    assert!(none["dead_letters"].as_array().unwrap().is_empty(), "{none}");
    let none = dash
        .get("/api/v1/queues/api/dead-letters?reason=poison")
        .await
        .expect(200);
    assert!(none["dead_letters"].as_array().unwrap().is_empty(), "{none}");
    let lid = letter["id"].as_str().unwrap().replace('/', "%2F");
    let one = dash
        .get(&format!("/api/v1/queues/api/dead-letters/{lid}"))
        .await
        .expect(200);
    assert_eq!(one["payload"]["text"], "\"x\"");
    let r = dash
        .post(
            "/api/v1/queues/api/dead-letters/replay",
            &json!({ "ids": [letter["id"]] }),
        )
        .await;
    assert_eq!(r.expect(200)["count"], 1);
    assert!(
        wait_until(T, async || {
            dash.get("/api/v1/queues/api/dead-letters").await.json()["dead_letters"]
                .as_array()
                .is_some_and(|a| a.len() == 1 && a[0]["id"] != letter["id"])
        })
        .await,
        "the replayed task did not run and die again"
    );
    // Retry from the task page is the same replay.
    let r = dash.post_empty(&format!("/api/v1/queues/api/tasks/{dead}/retry")).await;
    assert_eq!(r.expect(200)["count"], 1);
    assert!(
        wait_until(T, async || task_state(&dash, "api", &dead).await == "dead").await,
        "the retried task did not die again"
    );
    assert!(
        wait_until(T, async || {
            dash.get("/api/v1/queues/api/dead-letters").await.json()["dead_letters"]
                .as_array()
                .is_some_and(|a| a.len() == 1)
        })
        .await
    );
    let r = dash
        .post("/api/v1/queues/api/dead-letters/purge", &json!({ "all": true }))
        .await;
    assert_eq!(r.expect(200)["count"], 1);

    // Queues, one queue, workers, autoscaler.
    let ok_runs = 1;
    assert!(
        wait_until(T, async || {
            let q = dash.get("/api/v1/queues/api").await.json();
            q["counters"]["done"] == ok_runs && q["dead_letters"] == 0
        })
        .await,
        "{}",
        dash.get("/api/v1/queues/api").await.text()
    );
    let queues = dash.get("/api/v1/queues").await.expect(200);
    assert_eq!(queues["total"], 1);
    assert_eq!(queues["queues"][0]["name"], "api");
    assert_eq!(queues["queues"][0]["priorities"].as_array().unwrap().len(), 3);
    assert_eq!(queues["throughput"].as_array().unwrap().len(), 30);
    let workers = dash.get("/api/v1/workers").await.expect(200);
    assert_eq!(workers[0]["id"], worker.id.as_str(), "{workers}");
    assert_eq!(workers[0]["queues"], json!(["api"]));
    assert!(workers[0]["slots"].as_u64().unwrap() > 0);
    let none = dash.get("/api/v1/queues/api/autoscaler").await.expect(200);
    assert!(none["latest"].is_null(), "{none}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let decision = format!(r#"{{"desired":3,"current":1,"reason":"backlog","detail":"12 waiting","at_ms":{now_ms}}}"#);
    f.inspector.record_decision(&f.queue, &decision).await.unwrap();
    assert!(
        wait_until(T, async || {
            let a = dash.get("/api/v1/queues/api/autoscaler").await.json();
            a["latest"]["desired"] == 3 && a["history"][0]["reason"] == "backlog"
        })
        .await,
        "{}",
        dash.get("/api/v1/queues/api/autoscaler").await.text()
    );

    // /metrics: the queue's counters against what ran (one success, three deaths of `boom`).
    assert!(
        wait_until(T, async || {
            let m = dash.get("/metrics").await.text();
            m.contains(r#"rivulet_queue_tasks_total{queue="api",outcome="succeeded"} 1"#)
                && m.contains(r#"rivulet_queue_tasks_total{queue="api",outcome="dead"} 3"#)
                && m.contains(r#"rivulet_queue_dead_letters{queue="api",priority="normal"} 0"#)
                && m.contains("rivulet_workers_live 1")
        })
        .await,
        "{}",
        dash.get("/metrics").await.text()
    );

    // Server-sent events: an enqueue shows up on the stream.
    let addr = dash.addr;
    let reader = tokio::spawn(async move {
        stream_for(
            addr,
            "/api/v1/queues/api/events",
            Duration::from_secs(15),
            "\"succeeded\"",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let streamed = enqueue(&dash, "api", "ok", json!(2)).await;
    let got = reader.await.unwrap();
    assert!(got.contains("text/event-stream"), "{got}");
    assert!(got.contains("event: task") && got.contains(&streamed), "{got}");
    worker.stop().await;
}

#[tokio::test]
async fn the_token_guards_changes_and_beyond_loopback_every_read() {
    let f = Fixture::with_queue(Queue::new("guarded").unwrap()).await;
    f.client.declare(&f.queue).await.unwrap();
    let dash = Dash::start(f.redis_client()).await;
    let body = br#"{"kind":"ok"}"#;
    for (headers, want) in [
        (vec![], 401),
        (vec![("Authorization", "Bearer wrong-token-000000")], 401),
        (vec![("Authorization", "Basic dGVzdA==")], 401),
        (vec![("Authorization", "Bearer test-token-012345678")], 401),
    ] {
        let mut h = headers.clone();
        h.push(("Content-Type", "application/json"));
        let r = request(dash.addr, "POST", "/api/v1/queues/guarded/tasks", &h, body).await;
        assert_eq!(r.status, want, "{headers:?}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("token"));
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    for path in ["/pause", "/resume", "/dead-letters/purge", "/tasks/x/cancel"] {
        let r = request(dash.addr, "POST", &format!("/api/v1/queues/guarded{path}"), &[], b"{}").await;
        assert_eq!(r.status, 401, "{path}: {}", r.text());
    }
    // Nothing was enqueued by the refused requests.
    assert_eq!(f.stats().await.counters.enqueued, 0);
    // On loopback, reads need no token.
    dash.get("/api/v1/queues").await.expect(200);
    assert_eq!(dash.get("/metrics").await.status, 200);

    // Configured beyond loopback: every read needs it, the page and the probes do not.
    let wide = Dash::start_as(f.redis_client(), "192.0.2.10:8080".parse().unwrap()).await;
    for path in [
        "/api/v1/queues",
        "/api/v1/workers",
        "/metrics",
        "/api/v1/openapi.json",
        "/api/v1/queues/guarded",
        "/api/v1/limits",
    ] {
        assert_eq!(wide.get(path).await.status, 401, "{path} without a token");
        assert_eq!(wide.get_with_token(path).await.status, 200, "{path} with the token");
    }
    for path in ["/", "/app.js", "/app.css", "/healthz", "/readyz"] {
        assert_eq!(wide.get(path).await.status, 200, "{path}");
    }
    let r = wide
        .post("/api/v1/queues/guarded/tasks", &serde_json::json!({"kind": "ok"}))
        .await;
    r.expect(201);
}

#[tokio::test]
async fn bad_input_gets_a_json_error_with_the_right_status() {
    let f = Fixture::with_queue(Queue::new("bad").unwrap()).await;
    f.client.declare(&f.queue).await.unwrap();
    let dash = Dash::start(f.redis_client()).await;
    // Fair groups: a queue no worker serves holds a window of grouped tasks in its stream
    // and the rest waits its turn, shown per group and counted on the queue.
    let fair = f.other_queue("api-groups");
    let tasks = (0..105).map(|n| {
        rivulet::Task::json("k", &n)
            .unwrap()
            .group(if n % 3 == 0 { "b" } else { "a" })
    });
    f.client.enqueue_many(&fair, tasks).await.unwrap();
    let base = format!("/api/v1/queues/{}", fair.name());
    let r = dash
        .post(&format!("{base}/tasks"), &json!({ "kind": "k", "group": "tenant-c" }))
        .await;
    r.expect(201);
    let g = dash.get(&format!("{base}/groups")).await.expect(200);
    assert_eq!(g["waiting"], 6, "{g}");
    let names: Vec<&str> = g["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "tenant-c"], "{g}");
    assert!(
        wait_until(T, async || {
            let q = dash.get(&base).await.json();
            q["priorities"][1]["fair_waiting"] == 6
        })
        .await,
        "{}",
        dash.get(&base).await.text()
    );
    let r = dash
        .post(&format!("{base}/tasks"), &json!({ "kind": "k", "group": "a b" }))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());

    let json_error = |r: &support::Resp, status: u16| {
        assert_eq!(r.status, status, "{}", r.text());
        assert!(
            r.header("content-type").unwrap_or("").starts_with("application/json"),
            "{:?}",
            r.headers
        );
        assert!(!r.json()["error"].as_str().unwrap().is_empty());
    };
    for path in [
        "/api/v1/queues/nope",
        "/api/v1/queues/nope/tasks",
        "/api/v1/queues/nope/dead-letters",
        "/api/v1/queues/nope/autoscaler",
        "/api/v1/queues/nope/groups",
        "/api/v1/queues/nope/events",
        "/api/v1/queues/bad/tasks/no-such-task",
        "/api/v1/queues/bad/dead-letters/normal%2F0%2F1-0",
        "/api/v1/queues/bad/dead-letters/garbage",
        "/api/v1/queues/bad/dead-letters/nopriority%2F0%2F1-0",
        "/api/v1/nothing-here",
    ] {
        json_error(&dash.get(path).await, 404);
    }
    json_error(
        &dash.post_empty("/api/v1/queues/bad/tasks/no-such-task/cancel").await,
        404,
    );
    json_error(&dash.post_empty("/api/v1/queues/nope/pause").await, 404);
    json_error(
        &dash.post("/api/v1/queues/nope/tasks", &json!({"kind": "ok"})).await,
        404,
    );
    // Malformed bodies and queries: 400.
    let auth = format!("Bearer {TOKEN}");
    let h = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    for body in [
        &b"{not json"[..],
        b"[]",
        br#"{"payload": 1}"#,
        br#"{"kind": "ok", "surprise": 1}"#,
    ] {
        let r = request(dash.addr, "POST", "/api/v1/queues/bad/tasks", &h, body).await;
        json_error(&r, 400);
    }
    let r = request(
        dash.addr,
        "POST",
        "/api/v1/queues/bad/tasks",
        &h[..1],
        br#"{"kind":"ok"}"#,
    )
    .await;
    json_error(&r, 400);
    json_error(
        &dash
            .post("/api/v1/queues/bad/tasks", &json!({"kind": "ok", "codec": "xml"}))
            .await,
        400,
    );
    json_error(
        &dash
            .post("/api/v1/queues/bad/tasks", &json!({"kind": "ok", "priority": "urgent"}))
            .await,
        404,
    );
    json_error(&dash.post("/api/v1/queues/bad/tasks", &json!({"kind": ""})).await, 400);
    for sel in [
        json!({}),
        json!({"ids": []}),
        json!({"kind": ""}),
        json!({"all": "yes"}),
    ] {
        json_error(&dash.post("/api/v1/queues/bad/dead-letters/replay", &sel).await, 400);
    }
    for path in [
        "/api/v1/queues/bad/tasks?state=sleeping",
        "/api/v1/queues/bad/tasks?limit=0",
        "/api/v1/queues/bad/tasks?limit=many",
        "/api/v1/queues?limit=101",
        "/api/v1/queues/bad/dead-letters?after=yesterday",
    ] {
        json_error(&dash.get(path).await, 400);
    }
    // Oversized: 413, and nothing enqueued.
    let big = format!(
        r#"{{"kind":"ok","payload":"{}"}}"#,
        "x".repeat(rivulet_dashboard::MAX_BODY_BYTES + 1)
    );
    let r = request(dash.addr, "POST", "/api/v1/queues/bad/tasks", &h, big.as_bytes()).await;
    json_error(&r, 413);
    assert_eq!(f.stats().await.counters.enqueued, 0);
}

#[tokio::test]
async fn markup_in_tasks_is_data_in_the_api_and_the_page_runs_only_its_own_script() {
    let f = Fixture::with_queue(Queue::new("xss").unwrap()).await;
    f.client.declare(&f.queue).await.unwrap();
    let dash = Dash::start(f.redis_client()).await;
    let kind = "<script>alert(1)</script>";
    let id = enqueue(&dash, "xss", kind, json!({"html": "<img src=x onerror=alert(1)>"})).await;
    let r = dash.get(&format!("/api/v1/queues/xss/tasks/{id}")).await;
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.json()["kind"], kind, "the kind round-trips as data");
    let page = dash.get("/").await;
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    // The page's script never writes markup from data.
    let script = dash.get("/app.js").await.text();
    assert!(!script.contains("innerHTML") && !script.contains("outerHTML") && !script.contains("insertAdjacentHTML"));
    assert!(
        !script.contains("document.cookie"),
        "the token must not live in a cookie"
    );
}

#[tokio::test]
async fn the_redis_password_never_shows() {
    let f = Fixture::with_queue(Queue::new("secret").unwrap()).await;
    f.client.declare(&f.queue).await.unwrap();
    let password = "hunter2-very-secret-pw";
    let mut raw = f.redis().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("dash")
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut raw)
        .await
        .unwrap();
    let url = format!("redis://dash:{password}@127.0.0.1:{}", f.server.port());
    let dash = Dash::start(redis::Client::open(url.as_str()).unwrap()).await;
    enqueue(&dash, "secret", "ok", json!(1)).await;
    let mut seen = String::new();
    for path in [
        "/",
        "/app.js",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/openapi.json",
        "/api/v1/queues",
        "/api/v1/queues/secret",
        "/api/v1/queues/secret/tasks?state=queued",
        "/api/v1/queues/secret/dead-letters",
        "/api/v1/queues/secret/autoscaler",
        "/api/v1/workers",
        "/api/v1/limits",
        "/api/v1/queues/nope",
    ] {
        let r = dash.get(path).await;
        seen.push_str(&format!("{path} {} {:?} {}\n", r.status, r.headers, r.text()));
    }
    // Redis away: the answers say so, still without the password.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("dash")
        .arg("off")
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("dash")
        .query_async(&mut raw)
        .await
        .unwrap_or(());
    for path in [
        "/readyz",
        "/api/v1/queues/secret/tasks",
        "/api/v1/workers",
        "/api/v1/limits",
    ] {
        let r = dash.get(path).await;
        seen.push_str(&format!("{path} {} {}\n", r.status, r.text()));
    }
    assert!(seen.contains("/api/v1/queues/secret 200"), "{seen}");
    assert!(!seen.contains(password), "the password shows:\n{seen}");
    assert!(!seen.contains("hunter2"), "part of the password shows:\n{seen}");
}

#[tokio::test]
async fn task_lists_are_paginated() {
    let f = Fixture::with_queue(Queue::new("pages").unwrap()).await;
    f.client.declare(&f.queue).await.unwrap();
    let dash = Dash::start(f.redis_client()).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(enqueue(&dash, "pages", "ok", json!(i)).await);
    }
    let page = |offset: usize, limit: usize| {
        let dash = &dash;
        async move {
            dash.get(&format!(
                "/api/v1/queues/pages/tasks?state=queued&offset={offset}&limit={limit}"
            ))
            .await
            .expect(200)
        }
    };
    let ids_of = |v: &Value| -> Vec<String> {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = page(0, 100).await;
    assert_eq!(ids_of(&all), ids, "queued in enqueue order");
    assert_eq!(all["has_more"], false);
    let second = page(3, 3).await;
    assert_eq!(ids_of(&second), ids[3..6].to_vec());
    assert_eq!(second["has_more"], true);
    let last = page(6, 3).await;
    assert_eq!(ids_of(&last), ids[6..].to_vec());
    assert_eq!(last["has_more"], false);
    assert!(ids_of(&page(7, 3).await).is_empty());
}

#[tokio::test]
async fn schedules_are_listed_shown_paused_and_run_now() {
    let f = Fixture::with_queue(Queue::new("timed").unwrap()).await;
    f.client.declare(&f.queue).await.unwrap();
    let schedules = rivulet::Schedules::new(f.redis_client()).await.unwrap();
    schedules
        .add(
            &rivulet::Schedule::cron("nightly", "timed", "report", "0 3 * * *")
                .timezone("Europe/Paris")
                .priority("high")
                .payload(json!({"n": 1})),
        )
        .await
        .unwrap();
    schedules
        .add(&rivulet::Schedule::every(
            "tick",
            "timed",
            "ping",
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    let dash = Dash::start(f.redis_client()).await;
    let doc = dash.get("/api/v1/openapi.json").await.expect(200);
    for p in ["/api/v1/schedules", "/api/v1/schedules/{name}/run-now"] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from the document");
    }

    // The list: both, by name, with cadence, zone and next fire time.
    let list = dash.get("/api/v1/schedules").await.expect(200);
    let names: Vec<&str> = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nightly", "tick"], "{list}");
    let nightly = &list["schedules"][0];
    assert_eq!(nightly["queue"], "timed");
    assert_eq!(nightly["kind"], "report");
    assert_eq!(nightly["priority"], "high");
    assert_eq!(nightly["cron"], "0 3 * * *");
    assert_eq!(nightly["timezone"], "Europe/Paris");
    assert_eq!(nightly["paused"], false);
    assert!(nightly["last_fired_ms"].as_u64().is_some(), "{nightly}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(nightly["next_fire_ms"].as_u64().unwrap() > now, "{nightly}");
    assert_eq!(list["schedules"][1]["every_ms"], 60_000);

    // Show: the next 5 fire times, rising, a minute apart for the interval one.
    let tick = dash.get("/api/v1/schedules/tick").await.expect(200);
    let fires: Vec<u64> = tick["next_fires_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(fires.len(), 5, "{tick}");
    assert!(fires.windows(2).all(|w| w[1] - w[0] == 60_000), "{tick}");
    assert_eq!(tick["next_fires"].as_array().unwrap().len(), 5);
    let nightly = dash.get("/api/v1/schedules/nightly").await.expect(200);
    // 03:00 in Paris is 01:00 or 02:00 UTC: the local rendering says +01:00 or +02:00.
    let first = nightly["next_fires"][0].as_str().unwrap();
    assert!(first.contains("T03:00:00") && first.contains("+0"), "{first}");

    // Pause, then resume: the flag and the next fire times follow.
    let paused = dash.post_empty("/api/v1/schedules/tick/pause").await.expect(200);
    assert_eq!(paused["paused"], true, "{paused}");
    assert!(schedules.get("tick").await.unwrap().unwrap().paused);
    assert_eq!(dash.get("/api/v1/schedules/tick").await.expect(200)["paused"], true);
    let resumed = dash.post_empty("/api/v1/schedules/tick/resume").await.expect(200);
    assert_eq!(resumed["paused"], false, "{resumed}");
    assert_eq!(resumed["next_fires_ms"].as_array().unwrap().len(), 5);

    // Run now: one task of the schedule's kind, priority and payload in its queue.
    let run = dash.post_empty("/api/v1/schedules/nightly/run-now").await.expect(201);
    assert_eq!(run["queue"], "timed");
    let id = run["id"].as_str().unwrap();
    let task = dash.get(&format!("/api/v1/queues/timed/tasks/{id}")).await.expect(200);
    assert_eq!(task["state"], "queued", "{task}");
    assert_eq!(task["kind"], "report");
    assert_eq!(task["priority"], "high");
    assert!(task["payload"]["text"].as_str().unwrap().contains("\"n\""), "{task}");
    assert_eq!(f.stats().await.counters.enqueued, 1);

    // Unknown names: 404 with a JSON error, for reads and changes alike.
    for (method, path) in [
        ("GET", "/api/v1/schedules/nope"),
        ("POST", "/api/v1/schedules/nope/pause"),
        ("POST", "/api/v1/schedules/nope/resume"),
        ("POST", "/api/v1/schedules/nope/run-now"),
    ] {
        let auth = format!("Bearer {TOKEN}");
        let r = request(dash.addr, method, path, &[("Authorization", &auth)], b"").await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("nope"), "{}", r.text());
    }

    // Without the token every change is refused and changes nothing.
    for what in ["pause", "resume", "run-now"] {
        let r = request(
            dash.addr,
            "POST",
            &format!("/api/v1/schedules/nightly/{what}"),
            &[],
            b"",
        )
        .await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
    }
    assert!(!schedules.get("nightly").await.unwrap().unwrap().paused);
    assert_eq!(f.stats().await.counters.enqueued, 1);
}

// ---- limits ------------------------------------------------------------------------------

/// The limit `name` as `GET /api/v1/limits/{name}` answers it.
async fn limit(dash: &Dash, name: &str) -> Value {
    dash.get(&format!("/api/v1/limits/{name}")).await.expect(200)
}

#[tokio::test]
async fn limits_show_the_configured_settings_running_slots_and_waiting_tasks() {
    let f = Fixture::with_queue(Queue::new("limited").unwrap()).await;
    f.client.declare(&f.queue).await.unwrap();
    let dash = Dash::start(f.redis_client()).await;
    assert_eq!(
        dash.get("/api/v1/limits").await.expect(200),
        json!({"limits": [], "total": 0, "offset": 0, "limit": 25})
    );

    // `train` holds its slot until told; `exchange.call` returns at once.
    let (release, held) = tokio::sync::watch::channel(false);
    let router = Router::new()
        .route("train", move |_ctx: TaskContext, _v: Value| {
            let mut held = held.clone();
            async move {
                let _ = held.wait_for(|go| *go).await;
                Ok(())
            }
        })
        .route("exchange.call", |_ctx: TaskContext, _v: Value| async move { Ok(()) });
    let mut config = fast_config();
    config.limits.insert(
        "train".into(),
        rivulet::Limit {
            rate: None,
            max_running: Some(1),
        },
    );
    config.limits.insert(
        "exchange.call".into(),
        rivulet::Limit {
            rate: Some("1/min,burst=1".parse().unwrap()),
            max_running: None,
        },
    );
    let worker = f.start_worker(router, config);
    f.wait_worker_registered(T).await;

    // Before any task: the settings the worker was started with, read from Redis alone
    // (the empty list above is cached for the refresh interval).
    let mut list = Value::Null;
    assert!(
        wait_until(T, async || {
            list = dash.get("/api/v1/limits").await.expect(200);
            list["total"] == 2
        })
        .await,
        "the worker's limits are not listed: {list}"
    );
    let names: Vec<&str> = list["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["exchange.call", "train"], "{list}");
    let ex = &list["limits"][0];
    assert_eq!(ex["rate"], json!({"count": 1, "per": 60_000, "burst": 1}), "{ex}");
    assert_eq!(ex["rate_spec"], "1/min,burst=1");
    assert_eq!(ex["max_running"], Value::Null);
    assert_eq!(ex["granted"], 0);
    let train = &list["limits"][1];
    assert_eq!(train["rate"], Value::Null, "{train}");
    assert_eq!(train["max_running"], 1);
    assert_eq!(train["running"], 0);

    // Two `train` tasks (cap 1: one runs, one waits for the slot); three `exchange.call`
    // (1/min: one starts, two wait for their reserved start).
    let a = enqueue(&dash, "limited", "train", json!(1)).await;
    let b = enqueue(&dash, "limited", "train", json!(2)).await;
    for i in 0..3 {
        enqueue(&dash, "limited", "exchange.call", json!(i)).await;
    }
    let mut last = Value::Null;
    let settled = wait_until(T, async || {
        let (t, e) = (limit(&dash, "train").await, limit(&dash, "exchange.call").await);
        let ok = t["running"] == 1
            && t["waiting_for_slot"] == 1
            && t["granted"] == 1
            && t["waited"].as_u64().unwrap() >= 1
            && e["granted"] == 1
            && e["waiting_for_rate"] == 2
            && e["waited"] == 2;
        last = json!([t, e]);
        ok
    })
    .await;
    assert!(settled, "the limits did not show a held slot and waiting tasks: {last}");
    // Either may have taken the slot: one runs, the other waits as `scheduled` (or is
    // `queued` for the moment it is back to look).
    let mut states = [
        task_state(&dash, "limited", &a).await,
        task_state(&dash, "limited", &b).await,
    ];
    states.sort();
    assert_eq!(states[0], "active", "{states:?}");
    assert!(["scheduled", "queued"].contains(&states[1].as_str()), "{states:?}");

    // The same fields as `worker-cli limits --json` (`Inspector::limits`), plus the spec text
    // and the age. Past the cache's refresh (300 ms in tests), the API reads them again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let cli = serde_json::to_value(f.inspector.limits().await.unwrap()).unwrap();
    let api = dash.get("/api/v1/limits").await.expect(200);
    for (c, a) in cli.as_array().unwrap().iter().zip(api["limits"].as_array().unwrap()) {
        for (k, v) in c.as_object().unwrap() {
            // `waited` of the waiting `train` task grows each time it comes back to look.
            if k != "waited" && k != "current_rate" {
                assert_eq!(&a[k], v, "{k}: api {a} against cli {c}");
            }
        }
        let extra: Vec<&String> = a
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| c.get(k.as_str()).is_none())
            .collect();
        assert_eq!(extra, ["age_ms", "rate_spec"], "{a}");
    }

    // Pages, and bad input.
    let second = dash.get("/api/v1/limits?offset=1&limit=1").await.expect(200);
    assert_eq!(
        (second["total"].clone(), second["limits"][0]["name"].clone()),
        (json!(2), json!("train"))
    );
    assert_eq!(
        dash.get("/api/v1/limits?offset=2").await.expect(200)["limits"],
        json!([])
    );
    let r = dash.get("/api/v1/limits/nope").await.expect(404);
    assert!(r["error"].as_str().unwrap().contains("nope"), "{r}");
    dash.get("/api/v1/limits?limit=0").await.expect(400);
    dash.get("/api/v1/limits?offset=x").await.expect(400);
    let doc = dash.get("/api/v1/openapi.json").await.expect(200);
    for p in ["/api/v1/limits", "/api/v1/limits/{name}"] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from the document");
    }

    // The slot's holder ends: the waiting task takes the slot.
    release.send(true).unwrap();
    assert!(
        wait_until(T, async || {
            let t = limit(&dash, "train").await;
            t["granted"] == 2 && t["waiting_for_slot"] == 0
        })
        .await,
        "the waiting task did not take the freed slot: {}",
        limit(&dash, "train").await
    );
    worker.stop().await;
}
