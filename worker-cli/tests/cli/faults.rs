//! Faults around the supervisor (issue 16): a Redis outage with dead workers is no crash loop,
//! the crash-loop guard trips with one slot, the children's `--exec` commands die with them,
//! and a bulk enqueue cut off by a lost connection says what it wrote and resumes.

use std::collections::HashSet;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rivulet::Queue;
use rivulet::testing::{Fixture, RedisServer, TempDir, wait_until};

use crate::common::{BIN, Supervisor, cli, enqueue_sleeps, running, wait_settled};

fn sigkill(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Issue 16, defect 1. Before: each replacement exited 1 about 2 ms after it started (nothing
/// answered), the supervisor counted it as a crash, and with the two SIGKILLs the guard
/// (3 here) tripped within a second: the supervisor drained and exited 1.
#[tokio::test]
async fn a_redis_outage_with_dead_workers_is_not_a_crash_loop() {
    let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut f = Fixture::on_server(server, Queue::new("outage").unwrap()).await;
    let mut sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "2",
            "--crash-limit",
            "3",
            "--lease",
            "2s",
            "--queue",
            "outage",
        ],
    );
    enqueue_sleeps(&f.server, "outage", 1, 2).await;
    wait_settled(&f.inspector, "outage", (2, 0), Duration::from_secs(60)).await;
    let first = sup.children();
    assert_eq!(first.len(), 2, "{first:?}");

    f.server.owned_mut().kill();
    for pid in &first {
        sigkill(*pid);
    }
    // Both replacements start and wait for Redis, however long it is away.
    let waiting = wait_until(Duration::from_secs(30), async || {
        sup.log().matches("waiting for it (an outage, not a crash)").count() >= 4
            || sup.exit_within(Duration::ZERO).await.is_some()
    })
    .await;
    assert!(waiting, "the replacements never waited for Redis:\n{}", sup.log());
    assert!(
        sup.exit_within(Duration::ZERO).await.is_none(),
        "the supervisor stopped during the outage:\n{}",
        sup.log()
    );
    let replacements = sup.children();
    assert_eq!(replacements.len(), 2, "{replacements:?}");
    assert!(replacements.is_disjoint(&first), "{first:?} {replacements:?}");

    // Redis is back: the waiting workers start and run tasks; the supervisor never gave up.
    f.server.owned_mut().restart();
    enqueue_sleeps(&f.server, "outage", 1, 20).await;
    wait_settled(&f.inspector, "outage", (22, 0), Duration::from_secs(60)).await;
    assert!(sup.exit_within(Duration::ZERO).await.is_none(), "{}", sup.log());
    assert_eq!(sup.children(), replacements, "no further restarts:\n{}", sup.log());
    let log = sup.log();
    assert!(!log.contains("crash loop"), "{log}");
    assert!(log.contains("Redis answers again"), "{log}");
}

/// Issue 16, defect 6, with the default `--workers 1`. Before: one slot's doubling restart
/// delays (0.25, 0.5, 1, 2, 4, 8 s, jittered to half) added up to more than the 6 s window, so
/// 7 crashes never fitted in it and the slot was restarted forever; the loop below timed out.
#[tokio::test]
async fn the_crash_loop_guard_trips_with_one_worker() {
    let f = Fixture::start().await;
    let mut sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "1",
            "--crash-limit",
            "6",
            "--crash-window",
            "6s",
            "--queue",
            "guard",
        ],
    );
    // Every child is killed as soon as it is seen: a worker that cannot run.
    let mut killed = HashSet::new();
    let stopped = wait_until(Duration::from_secs(40), async || {
        for pid in sup.children() {
            if killed.insert(pid) {
                sigkill(pid);
            }
        }
        sup.exit_within(Duration::ZERO).await.is_some()
    })
    .await;
    assert!(
        stopped,
        "the guard never tripped after {} kills:\n{}",
        killed.len(),
        sup.log()
    );
    let status = sup.exit_within(Duration::ZERO).await.unwrap();
    assert_eq!(status.code(), Some(1), "{}", sup.log());
    assert!(sup.log().contains("crashed 7 times within 6s"), "{}", sup.log());
}

/// Issue 16, defect 8. Before: the orphaned `sleep` of a SIGKILLed worker's command ran on
/// for its 30 s (while the task would be reclaimed and run again), and the wait below timed
/// out.
#[tokio::test]
async fn a_sigkilled_workers_exec_commands_die_with_it() {
    let f = Fixture::start().await;
    let dir = TempDir::new("orphans");
    let pids = dir.join("pids");
    let exec = format!("long=sleep 30 & echo $! >> {}; wait", pids.display());
    let mut sup = Supervisor::start(
        &f.server,
        &[
            "--workers",
            "1",
            "--concurrency",
            "2",
            "--queue",
            "orphans",
            "--exec",
            &exec,
        ],
    );
    let out = cli(
        &f.server,
        &["enqueue", "--queue", "orphans", "--kind", "long", "--count", "2"],
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read_pids = || -> Vec<u32> {
        std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let started = wait_until(Duration::from_secs(60), async || read_pids().len() == 2).await;
    assert!(started, "the commands never started:\n{}", sup.log());
    let commands = read_pids();
    assert!(commands.iter().all(|p| running(*p)), "{commands:?}");
    let worker = sup.children();
    assert_eq!(worker.len(), 1, "{worker:?}");
    sigkill(*worker.iter().next().unwrap());

    let gone = wait_until(Duration::from_secs(10), async || commands.iter().all(|p| !running(*p))).await;
    let left: Vec<u32> = commands.iter().copied().filter(|p| running(*p)).collect();
    for pid in &left {
        sigkill(*pid);
    }
    assert!(gone, "the killed worker's commands still run: {left:?}\n{}", sup.log());
}

/// Issue 16, defect 7. Before: a bulk enqueue cut off by a dropped connection printed no id
/// at all (they were printed at the end), the counter could differ from the entries written
/// (the batch was not one transaction), and nothing let a retry resume.
#[tokio::test]
async fn a_bulk_enqueue_cut_off_reports_what_it_wrote_and_resumes_without_new_duplicates() {
    let f = Fixture::with_queue(Queue::new("cut").unwrap()).await;
    const N: u64 = 60_000;
    let count = N.to_string();
    let args = [
        "enqueue",
        "--queue",
        "cut",
        "--kind",
        "noop",
        "--count",
        &count,
        "--id-prefix",
        "run1",
    ];
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env("REDIS_URL", f.server.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let output = tokio::spawn(child.wait_with_output());
    // Once some tasks are in, drop every client connection until the enqueue gives up.
    let mut admin = f.redis().await;
    let mut kills = 0;
    let ended = wait_until(Duration::from_secs(60), async || {
        let enqueued = enqueued(&f).await;
        if enqueued >= 5_000 {
            let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .query_async(&mut admin)
                .await;
            kills += 1;
        }
        !running(pid)
    })
    .await;
    assert!(ended, "the enqueue never ended");
    let out = output.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "after {kills} kills\nstderr:\n{stderr}");

    // What was printed is exactly copies 0..k, and the error says to resume at k.
    let printed: Vec<&str> = stdout.lines().collect();
    let k = printed.len() as u64;
    assert!(
        (1000..N).contains(&k) && k.is_multiple_of(1000),
        "{k} ids printed\n{stderr}"
    );
    let expected: Vec<String> = (0..k).map(|i| format!("run1-{i}")).collect();
    assert_eq!(printed, expected);
    assert!(stderr.contains(&format!("--resume-from {k}")), "{stderr}");

    // The counter matches the stream exactly: whole batches only, the one in doubt included
    // or not.
    let written = stream_ids(&f).await;
    assert_eq!(enqueued_settled(&f).await, written.len() as u64, "{stderr}");
    assert!(
        written.len() as u64 == k || written.len() as u64 == k + 1000,
        "{} written, {k} printed",
        written.len()
    );

    // The retry resumes: every copy exactly once, but for the batch in doubt (same ids).
    let resume = k.to_string();
    let retry = cli(&f.server, &[&args[..], &["--resume-from", &resume]].concat()).await;
    assert!(retry.status.success(), "{}", String::from_utf8_lossy(&retry.stderr));
    assert_eq!(String::from_utf8_lossy(&retry.stdout).lines().count() as u64, N - k);
    let written = stream_ids(&f).await;
    let distinct: HashSet<&String> = written.iter().collect();
    assert_eq!(distinct.len() as u64, N);
    assert!((0..N).all(|i| distinct.contains(&format!("run1-{i}"))));
    let twice = written.len() as u64 - N;
    assert!(twice == 0 || twice == 1000, "{twice} written twice");
    assert_eq!(enqueued_settled(&f).await, written.len() as u64);
}

/// The queue's `enqueued` counter; 0 while Redis does not know the queue or the inspector's
/// connection is one the test just killed.
async fn enqueued(f: &Fixture) -> u64 {
    try_enqueued(f).await.unwrap_or(0)
}

async fn try_enqueued(f: &Fixture) -> Option<u64> {
    let q = f.inspector.queue("cut").await.ok()?;
    f.inspector.stats(&q).await.ok().map(|s| s.counters.enqueued)
}

/// The `enqueued` counter once the inspector answers again (its connection reconnects after
/// the kills).
async fn enqueued_settled(f: &Fixture) -> u64 {
    let mut seen = None;
    let answered = wait_until(Duration::from_secs(20), async || {
        seen = try_enqueued(f).await;
        seen.is_some()
    })
    .await;
    assert!(answered, "the inspector never answered again");
    seen.unwrap()
}

/// The task ids in the queue's stream, in order (read in pages: one reply of 60,000 entries
/// would outlast the connection's response timeout).
async fn stream_ids(f: &Fixture) -> Vec<String> {
    let stream = f.queue.shard("normal", 0).stream;
    let mut conn = f.redis().await;
    let mut ids = Vec::new();
    let mut start = "-".to_owned();
    loop {
        // A page again after a timeout: reading is harmless to repeat, and the drills in the
        // same binary can load the machine past the connection's response timeout.
        let mut tries = 0;
        let page: redis::streams::StreamRangeReply = loop {
            let read = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await;
            match read {
                Ok(page) => break page,
                Err(e) if tries < 20 && e.is_timeout() => tries += 1,
                Err(e) => panic!("XRANGE {stream}: {e}"),
            }
        };
        let Some(last) = page.ids.last() else { return ids };
        start = format!("({}", last.id);
        // Flat or compact (docs/wire-format.md): the id wherever the entry keeps it.
        ids.extend(page.ids.iter().map(|e| {
            let fields: Vec<(bytes::Bytes, bytes::Bytes)> = e
                .map
                .iter()
                .map(|(k, v)| {
                    let v: Vec<u8> = redis::FromRedisValue::from_redis_value(v.clone()).expect("a string");
                    (bytes::Bytes::copy_from_slice(k.as_bytes()), bytes::Bytes::from(v))
                })
                .collect();
            let id = rivulet::envelope::entry_field(&fields, "id").expect("an id field");
            String::from_utf8(id.to_vec()).expect("a UTF-8 id")
        }));
    }
}
