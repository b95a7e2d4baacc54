//! The dashboard in a real headless Chromium, driven over W3C WebDriver by `chromedriver`
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them when missing): the
//! overview shows a queue's backlog change as tasks are enqueued, a dead letter is opened and
//! replayed with the token (asked for once, sent in a header) and its task runs; markup in a
//! task's kind, payload and error shows as text; the schedules page pauses and runs a
//! schedule; the limits page shows a held slot against its cap. Screenshots go to `docs/img/`, where
//! `docs/dashboard.md` shows them.
//!
//! WebDriver is JSON over HTTP: the handful of commands used here (new session, navigate,
//! find, click, type, execute, screenshot) go through the same small HTTP client as the API
//! tests, rather than a WebDriver crate and its HTTP stack.

mod support;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rivulet::testing::{ChildGuard, Fixture, TempDir, fast_config, wait_until};
use rivulet::{HandlerError, Queue, Router, Task, TaskContext, TaskId, TaskState};
use serde_json::{Value, json};

use support::{Dash, TOKEN, request};

const T: Duration = Duration::from_secs(30);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const XSS_KIND: &str = "<script>window.__xss = 1</script>";

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    _guard: ChildGuard,
    addr: SocketAddr,
    _profile: TempDir,
    chromium: PathBuf,
}

impl Driver {
    async fn start() -> Self {
        let driver = on_path(&["chromedriver"]).unwrap_or_else(|| {
            panic!("chromedriver is not on PATH: install Debian's chromium and chromium-driver (.ci/run does)")
        });
        let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| panic!("chromium is not on PATH: install Debian's chromium (.ci/run does)"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Its own process group, killed whole on drop: Chromium goes with chromedriver even
        // when the test fails before it closes the session.
        let guard = ChildGuard::spawn(
            "chromedriver",
            Command::new(driver)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdout(std::process::Stdio::null())
                .process_group(0),
        )
        .kill_group_on_drop();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            wait_until(T, async || {
                tokio::net::TcpStream::connect(addr).await.is_ok()
                    && request(addr, "GET", "/status", &[], b"").await.json()["value"]["ready"] == true
            })
            .await,
            "chromedriver did not become ready"
        );
        Driver {
            _guard: guard,
            addr,
            _profile: TempDir::new("chromium"),
            chromium,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        let r = request(self.addr, method, path, &[("Content-Type", "application/json")], &body).await;
        let v = r.json();
        assert_eq!(r.status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    async fn session(&self) -> Session<'_> {
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                         format!("--user-data-dir={}", self._profile.path().display())],
            },
        }}});
        let v = self.call("POST", "/session", Some(caps)).await;
        Session {
            driver: self,
            id: v["sessionId"].as_str().expect("a session id").to_owned(),
        }
    }
}

struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
            .await
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
            .await
    }

    /// The text of the first element matching `css`, or `None` when there is none.
    async fn text(&self, css: &str) -> Option<String> {
        let css = serde_json::to_string(css).unwrap();
        self.js(&format!(
            "const e = document.querySelector({css}); return e ? e.textContent : null;"
        ))
        .await
        .as_str()
        .map(str::to_owned)
    }

    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) {
        let mut last = None;
        let found = wait_until(T, async || {
            last = self.text(css).await;
            last.as_deref().is_some_and(&ok)
        })
        .await;
        assert!(found, "{what}: {css} reads {last:?}");
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        v[ELEMENT].as_str().expect("an element reference").to_owned()
    }

    /// Clicks the element; found again if the page's refresh replaced it in between.
    async fn click(&self, css: &str) {
        for _ in 0..3 {
            let e = self.element(css).await;
            let path = format!("/session/{}/element/{e}/click", self.id);
            let r = request(
                self.driver.addr,
                "POST",
                &path,
                &[("Content-Type", "application/json")],
                b"{}",
            )
            .await;
            if r.status == 200 {
                return;
            }
            assert!(r.text().contains("stale element"), "click on {css}: {}", r.text());
        }
        panic!("{css} went stale three times in a row");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })))
            .await;
    }

    /// A screenshot of the window into `docs/img/<name>.png`.
    async fn screenshot(&self, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", None).await;
        let png = base64_decode(b64.as_str().expect("base64 text"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/img");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn close(self) {
        self.cmd("DELETE", "", None).await;
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| u32::from(val(c))).collect();
        let n = v.iter().enumerate().fold(0u32, |acc, (i, x)| acc | (x << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser_shows_backlog_and_replays_a_dead_letter_with_the_token() {
    // On the heap: the whole visit is one large future (a debug build's overflowed the test
    // thread's stack).
    Box::pin(visit()).await;
}

async fn visit() {
    let f = Fixture::with_queue(Queue::new("browser").unwrap()).await;
    f.client.declare(&f.queue).await.unwrap();
    let dash = Dash::start(f.redis_client()).await;
    let driver = Driver::start().await;
    let s = driver.session().await;

    // The overview: the queue with an empty backlog, then with 7 waiting tasks.
    s.goto(&dash.url("/")).await;
    let backlog = r#"tr[data-queue="browser"] td.waiting"#;
    s.wait_text(backlog, "the empty queue", |t| t.starts_with("0 ")).await;
    let tasks = (0..7).map(|i| Task::json("later", &json!({ "n": i })).unwrap());
    f.client.enqueue_many(&f.queue, tasks).await.unwrap();
    s.wait_text(backlog, "the backlog after 7 enqueues", |t| t.starts_with("7 "))
        .await;
    s.screenshot("dashboard-overview").await;

    // A worker: `flaky` fails fatally on its first run only; the markup kind always fails.
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let router = Router::new()
        .route("later", |_ctx: TaskContext, _v: Value| async move { Ok(()) })
        .route("flaky", move |_ctx: TaskContext, _v: Value| {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(HandlerError::fatal("the first run fails"))
                } else {
                    Ok(())
                }
            }
        })
        .route(XSS_KIND, |_ctx: TaskContext, _v: Value| async move {
            Err(HandlerError::fatal("<img src=x onerror=\"window.__xss = 2\">"))
        });
    // Limits: `train` (a cap of 2) holds its slot until released, for the Limits page.
    let (release, held) = tokio::sync::watch::channel(false);
    let router = router.route("train", move |_ctx: TaskContext, _v: Value| {
        let mut held = held.clone();
        async move {
            let _ = held.wait_for(|go| *go).await;
            Ok(())
        }
    });
    let mut config = fast_config();
    config.limits.insert(
        "train".into(),
        rivulet::Limit {
            rate: None,
            max_running: Some(2),
        },
    );
    config.limits.insert(
        "exchange.call".into(),
        rivulet::Limit {
            rate: Some("10/s,burst=20".parse().unwrap()),
            max_running: None,
        },
    );
    let worker = f.start_worker(router, config);
    let flaky = f
        .client
        .enqueue(&f.queue, Task::json("flaky", &json!({"try": 1})).unwrap())
        .await
        .unwrap();
    f.client
        .enqueue(
            &f.queue,
            Task::json(XSS_KIND, &json!({"html": "<b onmouseover=alert(1)>x</b>"})).unwrap(),
        )
        .await
        .unwrap();
    f.wait_dead_letters(2, T).await;
    s.wait_text(backlog, "the drained backlog", |t| t.starts_with("0 "))
        .await;

    // The dead letters: markup shows as text and runs nothing.
    s.goto(&dash.url("/#/dlq/browser")).await;
    let flaky_row = "tr[data-dead-letter] a.open-dead-letter";
    s.wait_text("#dead-letters", "two dead letters listed", |t| {
        t.contains("flaky") && t.contains(XSS_KIND)
    })
    .await;
    let safe = s
        .js("return [typeof window.__xss, document.querySelectorAll('main script, main img, main b').length];")
        .await;
    assert_eq!(safe, json!(["undefined", 0]), "markup from a task became page elements");
    s.screenshot("dashboard-dead-letters").await;

    // Open the flaky task's dead letter and replay it: the page asks for the token once.
    let link = s
        .js(&format!(
            "return [...document.querySelectorAll('{flaky_row}')].findIndex(a => a.textContent === '{flaky}');"
        ))
        .await;
    let nth = link.as_i64().expect("an index") + 1;
    assert!(nth > 0, "the flaky task's row is listed");
    s.click(&format!(
        "tr[data-dead-letter]:nth-of-type({}) a.open-dead-letter",
        nth + 1
    ))
    .await;
    s.wait_text("#dead-letter", "the dead letter opens", |t| {
        t.contains("the first run fails")
    })
    .await;
    s.screenshot("dashboard-dead-letter").await;
    s.click("#dead-letter button.replay-one").await;
    s.wait_text("#confirm-text", "the confirmation", |t| {
        t.starts_with("Replay dead letter")
    })
    .await;
    s.click("#confirm-yes").await;
    // No token yet: the server says 401 and the page asks for it.
    assert!(
        wait_until(T, async || s
            .js("return document.getElementById('token-dialog').open;")
            .await
            == true)
        .await,
        "the page did not ask for the token"
    );
    s.type_into("#token-input", TOKEN).await;
    s.click("#token-save").await;
    let id = TaskId::from_string(flaky.to_string());
    assert!(
        wait_until(T, async || f.client.status(&f.queue, &id).await.unwrap().state
            == TaskState::Succeeded)
        .await,
        "the replayed task did not run"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let stored = s.js("return sessionStorage.getItem('rivulet-dashboard-token');").await;
    assert_eq!(stored, json!(TOKEN));
    assert_eq!(s.js("return document.cookie;").await, json!(""), "no cookie");

    // The task page shows it succeeded, with its events.
    s.goto(&dash.url(&format!("/#/task/browser/{flaky}"))).await;
    s.wait_text("#task-state", "the task page", |t| t.contains("succeeded"))
        .await;
    s.wait_text("#task-events", "the events timeline", |t| {
        t.contains("replayed") && t.contains("dead")
    })
    .await;
    s.screenshot("dashboard-task").await;

    // Workers.
    s.goto(&dash.url("/#/workers")).await;
    s.wait_text("#workers", "the worker", |t| t.contains("browser")).await;
    s.screenshot("dashboard-workers").await;

    // Schedules: listed with their next fire times; pause and run now from the page (the
    // token is kept from above). The markup in the payload never reaches the page.
    let schedules = rivulet::Schedules::new(f.redis_client()).await.unwrap();
    schedules
        .add(
            &rivulet::Schedule::cron("browser-nightly", "browser", "later", "30 2 * * *")
                .timezone("America/New_York")
                .payload(json!({"html": "<img src=x onerror=\"window.__xss = 3\">"})),
        )
        .await
        .unwrap();
    s.goto(&dash.url("/#/schedules")).await;
    let row = r#"tr[data-schedule="browser-nightly"]"#;
    s.wait_text(row, "the schedule listed", |t| {
        t.contains("cron 30 2 * * * (America/New_York)") && t.contains("running")
    })
    .await;
    let fires = s
        .js(r#"return document.querySelectorAll('tr[data-schedule="browser-nightly"] td.next-fires div').length;"#)
        .await;
    assert_eq!(fires, json!(5), "5 next fire times");
    s.screenshot("dashboard-schedules").await;
    s.click(&format!("{row} button.pause-schedule")).await;
    s.wait_text(&format!("{row} td.schedule-state"), "the schedule paused", |t| {
        t == "paused"
    })
    .await;
    assert!(schedules.get("browser-nightly").await.unwrap().unwrap().paused);
    let before = f.stats().await.counters.enqueued;
    s.click(&format!("{row} button.run-schedule")).await;
    s.wait_text("#confirm-text", "the run-now confirmation", |t| {
        t.contains("browser-nightly")
    })
    .await;
    s.click("#confirm-yes").await;
    assert!(
        wait_until(T, async || f.stats().await.counters.enqueued == before + 1).await,
        "run now enqueued no task"
    );
    s.click(&format!("{row} button.resume-schedule")).await;
    s.wait_text(&format!("{row} td.schedule-state"), "the schedule resumed", |t| {
        t == "running"
    })
    .await;
    assert_eq!(s.js("return typeof window.__xss;").await, json!("undefined"));

    // Limits: linked in the nav; 3 `train` tasks: 2 hold its 2 slots, 1 waits for one.
    let trains = f
        .client
        .enqueue_many(
            &f.queue,
            (0..3).map(|i| Task::json("train", &json!({"epochs": i})).unwrap()),
        )
        .await
        .unwrap();
    s.click("#nav-limits").await;
    let row = r#"tr[data-limit="train"]"#;
    s.wait_text(row, "the train limit with 2 of 2 slots held", |t| {
        t.contains("train") && t.contains("2/2")
    })
    .await;
    s.wait_text(
        &format!("{row} td.waiting-slot"),
        "a train task waiting for a slot",
        |t| t == "1",
    )
    .await;
    s.wait_text(
        r#"tr[data-limit="exchange.call"] td.rate-spec"#,
        "the rate limit's spec",
        |t| t == "10/s,burst=20",
    )
    .await;
    assert_eq!(
        s.text(&format!("{row} td.running")).await.as_deref(),
        Some("2/2"),
        "running/cap"
    );
    s.screenshot("dashboard-limits").await;
    release.send(true).unwrap();
    for train in trains {
        let train = TaskId::from_string(train.to_string());
        assert!(
            wait_until(T, async || f.client.status(&f.queue, &train).await.unwrap().state
                == TaskState::Succeeded)
            .await,
            "a train task did not finish"
        );
    }
    s.wait_text(&format!("{row} td.running"), "the slot given back", |t| t == "0/2")
        .await;
    s.close().await;
    worker.stop().await;
}
