//! Schedules end to end: real `worker-cli scheduler` processes (and supervisors) racing on one
//! Redis, the `schedule ...` commands and a schedules file. Each test has its own
//! `redis-server`: schedules are not per queue, and `schedule sync` owns all of them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use nix::sys::signal::Signal;
use rivulet::testing::{RedisServer, TempDir, wait_until};
use serde_json::Value;

use crate::common::{Supervisor, cli, cli_fails, cli_json};

/// Every task of `queue`'s default shard: fire time (from the id `<schedule>@<ms>`) ->
/// (copies, enqueued_at of the first); manual runs aside. A schedule's tasks stay in the stream: no worker runs.
async fn fires(server: &RedisServer, queue: &str) -> BTreeMap<u64, (usize, u64)> {
    let mut conn = server.client().get_multiplexed_async_connection().await.unwrap();
    let stream = format!("rivulet:{{{queue}:normal:0}}:stream");
    let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for (_, fields) in entries {
        // Flat or compact (docs/wire-format.md): read as a worker reads it.
        let task =
            rivulet::envelope::Envelope::from_fields(fields.into_iter().map(|(k, v)| (k, bytes::Bytes::from(v))))
                .expect("a task entry");
        // A manual run (`run-now`) has an id of its own, not a fire time's.
        let Some((_, fire)) = task.id.as_str().rsplit_once('@') else {
            continue;
        };
        let fire: u64 = fire.parse().unwrap();
        let at = task.enqueued_at;
        out.entry(fire).or_insert((0, at)).0 += 1;
    }
    out
}

fn scheduler(server: &RedisServer) -> Supervisor {
    Supervisor::start(server, &["scheduler", "--poll", "200ms"])
}

async fn started(s: &Supervisor) {
    assert!(
        wait_until(Duration::from_secs(20), async || s.log().contains("scheduler started")).await,
        "no scheduler start:\n{}",
        s.log()
    );
}

fn now_ms() -> u64 {
    rivulet::envelope::now_ms()
}

#[tokio::test]
async fn three_schedulers_enqueue_each_of_20_fire_times_once_even_when_one_is_killed() {
    let server = RedisServer::start();
    cli_json(
        &server,
        &[
            "schedule", "add", "tick", "--queue", "ticks", "--kind", "noop", "--every", "1s", "--json",
        ],
    )
    .await;
    let all = vec![scheduler(&server), scheduler(&server), scheduler(&server)];
    for s in &all {
        started(s).await;
    }
    // The first fire time with all three running, and the 20 from it.
    let first = (now_ms() / 1000 + 2) * 1000;
    let last = first + 19_000;
    let by_tenth = first + 9_000;
    assert!(
        wait_until(Duration::from_secs(30), async || fires(&server, "ticks")
            .await
            .contains_key(&by_tenth))
        .await,
        "the tenth fire time was not enqueued: {:?}",
        fires(&server, "ticks").await
    );
    // Kill one mid-run, without a chance to clean up.
    all[1].signal(Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(30), async || fires(&server, "ticks")
            .await
            .contains_key(&last))
        .await,
        "the 20th fire time was not enqueued: {:?}\n{}",
        fires(&server, "ticks").await,
        all[0].log()
    );
    let got = fires(&server, "ticks").await;
    let duplicates: Vec<_> = got.iter().filter(|(_, (n, _))| *n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "fire times enqueued more than once: {duplicates:?}"
    );
    let window: Vec<u64> = got.keys().copied().filter(|t| (first..=last).contains(t)).collect();
    let want: Vec<u64> = (0..20).map(|i| first + i * 1000).collect();
    assert_eq!(window, want, "exactly one task per fire time, none missing");
    // Every scheduler took part: the work is shared, not led.
    let fired: Vec<usize> = all.iter().map(|s| s.log().matches(" fired ").count()).collect();
    assert!(fired.iter().sum::<usize>() >= 20, "{fired:?}");
}

#[tokio::test]
async fn stopping_every_scheduler_for_5s_skips_or_runs_once_as_each_policy_says() {
    let server = RedisServer::start();
    for (name, missed) in [("skipper", "skip"), ("catcher", "run-once")] {
        cli_json(
            &server,
            &[
                "schedule",
                "add",
                name,
                "--queue",
                name,
                "--kind",
                "noop",
                "--every",
                "1s",
                "--missed",
                missed,
                "--misfire-grace",
                "1s",
                "--json",
            ],
        )
        .await;
    }
    let count = async |q: &str| fires(&server, q).await.len();
    let two = [scheduler(&server), scheduler(&server)];
    assert!(
        wait_until(Duration::from_secs(30), async || count("skipper").await >= 3
            && count("catcher").await >= 3)
        .await,
        "no fires before the stop"
    );
    drop(two); // SIGKILLs both
    let stopped_at = now_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = (count("skipper").await, count("catcher").await);
    let back = [scheduler(&server), scheduler(&server)];
    assert!(
        wait_until(Duration::from_secs(30), async || {
            count("skipper").await >= before.0 + 3 && count("catcher").await >= before.1 + 3
        })
        .await,
        "no fires after the restart:\n{}",
        back[0].log()
    );
    // A task enqueued more than the grace after its fire time ran for missed fire times.
    let late = |f: &BTreeMap<u64, (usize, u64)>| -> Vec<u64> {
        f.iter()
            .filter(|(fire, (_, at))| at.saturating_sub(**fire) > 1_000)
            .map(|(fire, _)| *fire)
            .collect()
    };
    let widest_gap = |f: &BTreeMap<u64, (usize, u64)>| -> u64 {
        let t: Vec<u64> = f.keys().copied().collect();
        t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
    };
    let skipper = fires(&server, "skipper").await;
    let catcher = fires(&server, "catcher").await;
    for f in [&skipper, &catcher] {
        assert!(f.values().all(|(n, _)| *n == 1), "duplicates: {f:?}");
    }
    assert_eq!(late(&skipper), Vec::<u64>::new(), "skip runs nothing late: {skipper:?}");
    assert!(
        widest_gap(&skipper) >= 4_000,
        "skip leaves the missed fire times out (stopped at {stopped_at}): {skipper:?}"
    );
    let caught = late(&catcher);
    assert_eq!(caught.len(), 1, "run-once runs one task for the outage: {catcher:?}");
    assert!(
        caught[0] > stopped_at - 1_000,
        "{caught:?} is a fire time of the outage ({stopped_at})"
    );
    assert!(widest_gap(&catcher) >= 3_000, "and only one: {catcher:?}");
}

#[tokio::test]
async fn a_supervisor_runs_a_scheduler_unless_told_not_to() {
    let server = RedisServer::start();
    cli_json(
        &server,
        &[
            "schedule", "add", "beat", "--queue", "beats", "--kind", "noop", "--every", "1s", "--json",
        ],
    )
    .await;
    let quiet = Supervisor::start(&server, &["--queue", "other", "--no-scheduler"]);
    let inspector = rivulet::Inspector::new(&server.client()).await.unwrap();
    crate::common::wait_live_workers(&inspector, "other", 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(fires(&server, "beats").await.is_empty(), "{}", quiet.log());
    drop(quiet);
    // The default: the supervisor fires the schedule and its worker runs the tasks.
    let _sup = Supervisor::start(&server, &["--queue", "beats"]);
    assert!(
        wait_until(Duration::from_secs(30), async || crate::common::settled(
            &inspector, "beats"
        )
        .await
        .0 >= 3)
        .await,
        "the supervisor's scheduler and worker ran no schedule task: {:?}",
        crate::common::settled(&inspector, "beats").await
    );
}

#[tokio::test]
async fn schedule_commands_refuse_bad_input_with_the_text_and_why() {
    let server = RedisServer::start();
    let base = ["schedule", "add", "x", "--queue", "q", "--kind", "noop"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> { base.iter().chain(extra).copied().collect() };
    for (extra, says) in [
        (&["--cron", "61 * * * *"][..], "--cron \"61 * * * *\""),
        (&["--cron", "* * *"][..], "--cron \"* * *\""),
        (&["--cron", "0 0 30 2 *"][..], "never fire"),
        (
            &["--cron", "* * * * *", "--timezone", "Mars/Olympus"][..],
            "\"Mars/Olympus\": not an IANA time zone",
        ),
        (&["--every", "500ms"][..], "at least 1s"),
        (&["--every", "soon"][..], "soon"),
        (&["--every", "10s", "--jitter", "10s"][..], "shorter than the interval"),
        (&["--every", "10s", "--payload", "{oops"][..], "not valid JSON"),
        (&["--every", "10s", "--cron", "* * * * *"][..], "cannot be used with"),
        (&[][..], "--cron"),
    ] {
        let stderr = cli_fails(&server, &with(extra), 2).await;
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
    let stderr = cli_fails(
        &server,
        &[
            "schedule", "add", "bad name", "--queue", "q", "--kind", "k", "--every", "1m",
        ],
        2,
    )
    .await;
    assert!(stderr.contains("NAME \"bad name\""), "{stderr}");
    assert!(
        cli_json(&server, &["schedule", "list", "--json"])
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Two schedules with one name: refused, unless replaced explicitly.
    let added = cli_json(&server, &with(&["--every", "1h", "--json"])).await;
    assert_eq!(added["change"], "created");
    let stderr = cli_fails(&server, &with(&["--every", "2h"]), 1).await;
    assert!(
        stderr.contains("exists already") && stderr.contains("--replace"),
        "{stderr}"
    );
    let replaced = cli_json(&server, &with(&["--every", "2h", "--replace", "--json"])).await;
    assert_eq!(
        (replaced["change"].as_str(), replaced["every_ms"].as_u64()),
        (Some("updated"), Some(7_200_000))
    );

    // show: the next 5 fire times, in the schedule's zone.
    cli_json(
        &server,
        &[
            "schedule",
            "add",
            "berlin",
            "--queue",
            "q",
            "--kind",
            "noop",
            "--cron",
            "0 30 2 * * *",
            "--timezone",
            "Europe/Berlin",
            "--json",
        ],
    )
    .await;
    let shown = cli_json(&server, &["schedule", "show", "berlin", "--json"]).await;
    let next: Vec<&str> = shown["next_fires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(next.len(), 5, "{shown}");
    assert!(next.iter().all(|t| t.contains("T02:30:00+0")), "{next:?}");
    let table = String::from_utf8_lossy(&cli(&server, &["schedule", "show", "berlin"]).await.stdout).into_owned();
    assert_eq!(table.matches("T02:30:00").count(), 5, "{table}");

    // pause, resume, run-now, remove; unknown names are exit 1.
    let paused = cli_json(&server, &["schedule", "pause", "berlin", "--json"]).await;
    assert_eq!(paused["changed"], true);
    let shown = cli_json(&server, &["schedule", "show", "berlin", "--json"]).await;
    assert_eq!(
        (shown["paused"].as_bool(), shown["next_fires"].as_array().map(Vec::len)),
        (Some(true), Some(0))
    );
    cli_json(&server, &["schedule", "resume", "berlin", "--json"]).await;
    let run = cli_json(&server, &["schedule", "run-now", "berlin", "--json"]).await;
    let id = run["task_id"].as_str().unwrap().to_owned();
    let status = cli_json(&server, &["task", "show", &id, "--queue", "q", "--json"]).await;
    assert_eq!(status["state"], "queued", "{status}");
    cli_json(&server, &["schedule", "remove", "berlin", "--json"]).await;
    for verb in ["show", "remove", "pause", "resume", "run-now"] {
        let stderr = cli_fails(&server, &["schedule", verb, "berlin"], 1).await;
        assert!(stderr.contains("berlin"), "{verb}: {stderr}");
    }
}

#[tokio::test]
async fn a_schedules_file_creates_updates_and_removes_and_a_bad_one_changes_nothing() {
    let server = RedisServer::start();
    let dir = TempDir::new("schedules");
    let file = dir.path().join("schedules.toml");
    let path = file.to_str().unwrap();
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    let changes = |doc: &Value| -> Vec<(String, String)> {
        doc["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["change"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    };
    write(
        r#"
[[schedule]]
name = "nightly"
queue = "research"
kind = "refresh"
cron = "0 30 2 * * *"
timezone = "Europe/Berlin"
payload = { universe = "all" }
missed = "run-once"

[[schedule]]
name = "stats"
queue = "ops"
kind = "record_stats"
every = "60s"
"#,
    );
    let doc = cli_json(&server, &["schedule", "sync", path, "--json"]).await;
    assert_eq!(changes(&doc), pairs(&[("nightly", "created"), ("stats", "created")]));
    let shown = cli_json(&server, &["schedule", "show", "nightly", "--json"]).await;
    assert_eq!(shown["payload"], serde_json::json!({"universe": "all"}));
    assert_eq!(shown["missed"], "run-once");

    // Change one, drop one, add one: the dry run says so and changes nothing.
    write(
        r#"
[[schedule]]
name = "nightly"
queue = "research"
kind = "refresh"
cron = "0 45 2 * * *"
timezone = "Europe/Berlin"
payload = '{"universe": "all"}'
missed = "run-once"

[[schedule]]
name = "hourly"
queue = "ops"
kind = "rollup"
cron = "0 * * * *"
jitter = "30s"
"#,
    );
    let want = pairs(&[("hourly", "created"), ("nightly", "updated"), ("stats", "removed")]);
    let dry = cli_json(&server, &["schedule", "sync", path, "--dry-run", "--json"]).await;
    assert_eq!(changes(&dry), want);
    let names = async || -> Vec<String> {
        cli_json(&server, &["schedule", "list", "--json"])
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names().await, ["nightly", "stats"]);
    let out = cli(&server, &["schedule", "sync", path]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (name, change) in &want {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(change.as_str()) && l.ends_with(name.as_str())),
            "{stdout}"
        );
    }
    assert_eq!(names().await, ["hourly", "nightly"]);
    let again = cli_json(&server, &["schedule", "sync", path, "--json"]).await;
    assert_eq!(
        changes(&again),
        pairs(&[("hourly", "unchanged"), ("nightly", "unchanged")])
    );

    // Bad files: exit 2 naming the problem; nothing changes.
    for (text, says) in [
        (
            "[[schedule]]\nname = \"a\"\nqueue = \"q\"\nkind = \"k\"\ncron = \"61 * * * *\"\n",
            "cron \"61 * * * *\"",
        ),
        (
            "[[schedule]]\nname = \"a\"\nqueue = \"q\"\nkind = \"k\"\nevery = \"1s\"\ntimezone = \"Nowhere/City\"\n",
            "Nowhere/City",
        ),
        (
            "[[schedule]]\nname = \"a\"\nqueue = \"q\"\nkind = \"k\"\nevery = \"often\"\n",
            "every \"often\"",
        ),
        (
            "[[schedule]]\nname = \"a\"\nqueue = \"q\"\nkind = \"k\"\nevry = \"1s\"\n",
            "evry",
        ),
        (
            "[[schedule]]\nname = \"a\"\nqueue = \"q\"\nkind = \"k\"\nevery = \"1s\"\npayload = \"{nope\"\n",
            "not valid JSON",
        ),
        (
            "[[schedule]]\nname = \"a\"\nqueue = \"q\"\nkind = \"k\"\nevery = \"1s\"\nmissed = \"later\"\n",
            "later",
        ),
        (
            "[[schedule]]\nname = \"a\"\nqueue = \"q\"\nkind = \"k\"\nevery = \"1s\"\n[[schedule]]\nname = \"a\"\nqueue = \"q\"\nkind = \"k\"\nevery = \"2s\"\n",
            "listed twice",
        ),
        ("not toml at all", "schedules.toml"),
    ] {
        write(text);
        let stderr = cli_fails(&server, &["schedule", "sync", path], 2).await;
        assert!(stderr.contains(says), "{text}\n{stderr}");
        assert_eq!(names().await, ["hourly", "nightly"], "{text}");
    }
    // The scheduler refuses a bad file at start too.
    let stderr = cli_fails(&server, &["scheduler", "--schedules", path], 2).await;
    assert!(stderr.contains("schedules.toml"), "{stderr}");
}

#[tokio::test]
async fn schedules_their_state_and_pause_flags_survive_a_redis_crash_and_every_scheduler_restarting() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    cli_json(
        &server,
        &[
            "schedule", "add", "tick", "--queue", "ticks", "--kind", "noop", "--every", "1s", "--json",
        ],
    )
    .await;
    cli_json(
        &server,
        &[
            "schedule",
            "add",
            "held",
            "--queue",
            "held",
            "--kind",
            "noop",
            "--cron",
            "*/2 * * * * *",
            "--json",
        ],
    )
    .await;
    cli_json(&server, &["schedule", "pause", "held", "--json"]).await;
    let first = scheduler(&server);
    assert!(
        wait_until(Duration::from_secs(30), async || fires(&server, "ticks").await.len()
            >= 3)
        .await,
        "no fires:\n{}",
        first.log()
    );
    drop(first);
    // What is stored (the next fire times move with the clock).
    let stored = async |server: &RedisServer| -> Value {
        let mut all = cli_json(server, &["schedule", "list", "--json"]).await;
        for s in all.as_array_mut().unwrap() {
            let s = s.as_object_mut().unwrap();
            s.remove("next_fires");
            s.remove("next_fires_ms");
        }
        all
    };
    let before = stored(&server).await;
    server.kill();
    server.restart();
    let after = stored(&server).await;
    assert_eq!(
        before, after,
        "definitions, last fire times and pause flags all came back"
    );
    assert_eq!(after[0]["name"], "held");
    assert_eq!(after[0]["paused"], true);
    // A new scheduler carries on from the stored state: no fire time twice, the paused one
    // still quiet.
    let fired_before = fires(&server, "ticks").await.len();
    let second = scheduler(&server);
    assert!(
        wait_until(Duration::from_secs(30), async || fires(&server, "ticks").await.len()
            >= fired_before + 2)
        .await,
        "no fires after the restart:\n{}",
        second.log()
    );
    let got = fires(&server, "ticks").await;
    assert!(got.values().all(|(n, _)| *n == 1), "{got:?}");
    assert!(fires(&server, "held").await.is_empty());
}

#[tokio::test]
async fn the_documented_worker_acl_is_enough_to_manage_and_fire_schedules() {
    let server = RedisServer::start();
    let mut admin = server.client().get_multiplexed_async_connection().await.unwrap();
    let url = crate::acl::create_the_documented_user(&mut admin, server.port(), "rivulet").await;
    let add = [
        "schedule", "add", "tick", "--queue", "ticks", "--kind", "noop", "--every", "1s", "--json",
    ];
    crate::common::cli_json_at(&url, &add).await;
    for args in [
        &[
            "schedule",
            "add",
            "tick",
            "--queue",
            "ticks",
            "--kind",
            "noop",
            "--every",
            "2s",
            "--replace",
            "--json",
        ][..],
        &["schedule", "pause", "tick", "--json"],
        &["schedule", "resume", "tick", "--json"],
        &["schedule", "run-now", "tick", "--json"],
        &["schedule", "list", "--json"],
        &["schedule", "show", "tick", "--json"],
    ] {
        crate::common::cli_json_at(&url, args).await;
    }
    let fired = Supervisor::start_at(&url, &["scheduler", "--poll", "200ms"]);
    assert!(
        wait_until(Duration::from_secs(30), async || fires(&server, "ticks").await.len()
            >= 3)
        .await,
        "{}",
        fired.log()
    );
    assert!(!fired.log().contains("NOPERM"), "{}", fired.log());
    crate::common::cli_json_at(&url, &["schedule", "remove", "tick", "--json"]).await;
    crate::acl::nothing_was_denied(&mut admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_once_per_fire_time_on_a_redis_cluster() {
    let cluster = rivulet::testing::cluster::RedisCluster::start();
    let url = cluster.url();
    // A queue spread over the masters: each fire's task (and its unique key) goes to the
    // shard its id hashes to, wherever that lives; the schedules' keys are in `{sched}`.
    let out = crate::common::cli_env(Some(&url), &["queue", "create", "cticks", "--shards", "6"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let add = [
        "schedule", "add", "ctick", "--queue", "cticks", "--kind", "noop", "--every", "1s", "--json",
    ];
    crate::common::cli_json_at(&url, &add).await;
    let two = [
        Supervisor::start_at(&url, &["scheduler", "--poll", "200ms"]),
        Supervisor::start_at(&url, &["scheduler", "--poll", "200ms"]),
    ];
    let ids = async || -> Vec<String> {
        let listed = crate::common::cli_json_at(
            &url,
            &[
                "tasks", "--queue", "cticks", "--state", "queued", "--limit", "1000", "--json",
            ],
        )
        .await;
        let mut ids: Vec<String> = listed
            .as_array()
            .unwrap_or_else(|| panic!("tasks --json is an array: {listed}"))
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert!(
        wait_until(Duration::from_secs(60), async || ids().await.len() >= 4).await,
        "no fires on the cluster:\n{}",
        two[0].log()
    );
    let got = ids().await;
    let mut distinct = got.clone();
    distinct.dedup();
    assert_eq!(got, distinct, "a fire time enqueued twice");
    assert!(got.iter().all(|id| id.starts_with("ctick@")), "{got:?}");
    let shown = crate::common::cli_json_at(&url, &["schedule", "show", "ctick", "--json"]).await;
    assert!(shown["last_fired_ms"].as_u64().unwrap() > 0, "{shown}");
}
