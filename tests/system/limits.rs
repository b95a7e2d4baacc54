//! Fleet-wide limits: a rate shared by worker processes, a concurrency cap held under a lease
//! (and given back when its worker is SIGKILLed), and waiting tasks that neither use attempts
//! nor hold up the other kinds of their queue.
//!
//! The handlers check the limits themselves: the test worker's `probe` kind logs each start
//! with the time and the number of probes running at that instant (an `INCR` before the log
//! line), and each end (see `tests/bin/test_worker.rs`).

use std::time::Duration;

use rivulet::testing::{ChildGuard, Fixture, Recorder, fast_config, wait_until};
use rivulet::{CancelOutcome, Limit, Queue, Rate, Router, Task, TaskState, WorkerConfig};

use crate::failures::spawn_test_worker;

/// One line of a probe log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Line {
    Start {
        at: u64,
        running: i64,
        pid: u32,
        task: String,
    },
    End {
        at: u64,
        pid: u32,
        task: String,
    },
}

pub(crate) async fn probe_log(f: &Fixture, key: &str) -> Vec<Line> {
    let mut conn = f.redis().await;
    let lines: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("test:log:{key}"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    lines
        .iter()
        .map(|l| {
            let p: Vec<&str> = l.split(' ').collect();
            match p.as_slice() {
                ["start", at, n, pid, task] => Line::Start {
                    at: at.parse().unwrap(),
                    running: n.parse().unwrap(),
                    pid: pid.parse().unwrap(),
                    task: (*task).to_owned(),
                },
                ["end", at, pid, task] => Line::End {
                    at: at.parse().unwrap(),
                    pid: pid.parse().unwrap(),
                    task: (*task).to_owned(),
                },
                _ => panic!("bad probe log line {l:?}"),
            }
        })
        .collect()
}

fn starts(log: &[Line]) -> Vec<u64> {
    let mut at: Vec<u64> = log
        .iter()
        .filter_map(|l| match l {
            Line::Start { at, .. } => Some(*at),
            Line::End { .. } => None,
        })
        .collect();
    at.sort_unstable();
    at
}

fn probes(n: usize, key: &str, ms: u64, limit: &str) -> impl Iterator<Item = Task> {
    let (key, limit) = (key.to_owned(), limit.to_owned());
    (0..n).map(move |_| {
        Task::json("probe", &serde_json::json!({"key": key, "ms": ms}))
            .unwrap()
            .limit_key(limit.clone())
    })
}

pub(crate) fn workers(
    f: &Fixture,
    n: usize,
    concurrency: usize,
    lease_ms: u64,
    limits: &[String],
) -> Vec<(ChildGuard, String)> {
    (0..n)
        .map(|_| spawn_test_worker(&f.server, f.queue.name().as_str(), concurrency, lease_ms, limits))
        .collect()
}

/// Most starts in any window of `width` ms (starts sorted).
fn densest(starts: &[u64], width: u64) -> usize {
    let (mut best, mut lo) = (0, 0);
    for hi in 0..starts.len() {
        while starts[hi] - starts[lo] >= width {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_shared_by_four_processes_within_five_percent_and_never_above_the_bucket() {
    // A server of its own: the per-second counts are the claim.
    let f = Fixture::with_queue(Queue::new("rate").unwrap()).await;
    let (rate, burst, seconds) = (50u64, 10u64, 20u64);
    let spec = vec![format!("rate:probe.rate={rate}/s,burst={burst}")];
    let _workers = workers(&f, 4, 8, 5000, &spec);
    let n = (rate * seconds) as usize;
    f.client
        .enqueue_many(&f.queue, probes(n, "rate", 0, "probe.rate"))
        .await
        .unwrap();
    f.wait_done(n as u64, Duration::from_secs(seconds * 3)).await;

    let at = starts(&probe_log(&f, "rate").await);
    assert_eq!(at.len(), n, "every task started once");
    // The token bucket's bound: in any window, at most the burst plus the window's refill.
    // Starts are stamped by the handlers, after their reserved time: a process this loaded
    // machine stalls for a few hundred ms starts the reservations of the stall together, so
    // one second may hold more than a second's grants. Two-second windows keep the bound
    // (a fleet sharing no bucket, or a bucket starting above its burst, is far above it)
    // without counting the scheduler's lateness as the limiter's.
    let window = 2;
    let densest_window = densest(&at, window * 1000);
    assert!(
        densest_window as u64 <= window * rate + burst,
        "{densest_window} starts within {window} s, over {rate}/s plus a burst of {burst}"
    );
    // Whole seconds after the first (the bucket starts full): within 5 % of the rate.
    let t0 = at[0];
    let per_second: Vec<usize> = (1..seconds - 1)
        .map(|k| {
            at.iter()
                .filter(|&&t| t >= t0 + k * 1000 && t < t0 + (k + 1) * 1000)
                .count()
        })
        .collect();
    // The rate over the whole seconds after the first is within 5 % of the limit (a single
    // second may be short when a stalled worker starts its reservations late; the window
    // bound above says it never catches up beyond the bucket).
    let mean = per_second.iter().sum::<usize>() as f64 / per_second.len() as f64;
    assert!(
        (mean - rate as f64).abs() <= rate as f64 * 0.05,
        "{mean:.1} starts per second on average, not within 5 % of {rate}: {per_second:?}"
    );
    // Waiting is no failure: no attempt used, nothing retried or dead.
    let c = f.stats().await.counters;
    assert_eq!((c.failed, c.retried, c.dead, c.done), (0, 0, 0, n as u64), "{c:?}");
    assert!(c.limited >= (n as u64 - burst) / 2, "{c:?}");
    let status = f.inspector.limits().await.unwrap();
    let l = status
        .iter()
        .find(|l| l.name == "probe.rate")
        .expect("the limit is listed");
    assert_eq!(l.granted, n as u64, "{l:?}");
    assert_eq!((l.waiting_for_rate, l.running), (0, 0), "{l:?}");
    assert_eq!(l.rate.map(|r| (r.count, r.burst)), Some((rate as u32, burst as u32)));
}

/// The most probes the handlers saw running at once, and whether every start stayed under
/// `cap` by the log's own sweep (starts and ends in time order).
pub(crate) fn most_running(log: &[Line]) -> (i64, i64) {
    let seen = log
        .iter()
        .filter_map(|l| match l {
            Line::Start { running, .. } => Some(*running),
            Line::End { .. } => None,
        })
        .max()
        .unwrap_or(0);
    let mut events: Vec<(u64, i64)> = log
        .iter()
        .map(|l| match l {
            Line::Start { at, .. } => (*at, 1),
            // An end at the same ms as a start sorts first: the slot was free by then.
            Line::End { at, .. } => (*at, -1),
        })
        .collect();
    events.sort();
    let (mut now, mut swept) = (0, 0);
    for (_, d) in events {
        now += d;
        swept = swept.max(now);
    }
    (seen, swept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_cap_of_two_holds_over_four_processes() {
    let f = Fixture::shared(Queue::new("cap").unwrap()).await;
    let key = format!("cap-{}", f.queue.name());
    let limit = format!("probe.{key}");
    let _workers = workers(&f, 4, 4, 2000, &[format!("running:{limit}=2")]);
    f.client
        .enqueue_many(&f.queue, probes(24, &key, 150, &limit))
        .await
        .unwrap();
    f.wait_done(24, Duration::from_secs(60)).await;
    let log = probe_log(&f, &key).await;
    let (seen, swept) = most_running(&log);
    assert_eq!(
        seen, 2,
        "the handlers saw {seen} running at most (the cap is 2, and it is reached)"
    );
    assert!(swept <= 2, "{swept} ran at once by the log");
    let c = f.stats().await.counters;
    assert_eq!((c.failed, c.retried, c.dead), (0, 0, 0), "{c:?}");
    assert!(c.limited > 0, "tasks waited for a slot: {c:?}");
    let status = f.inspector.limits().await.unwrap();
    let l = status.iter().find(|l| l.name == limit).expect("the limit is listed");
    assert_eq!((l.max_running, l.running, l.granted), (Some(2), 0, 24), "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_workers_running_slot_comes_back_after_its_lease() {
    let f = Fixture::shared(Queue::new("cap-kill").unwrap()).await;
    let key = format!("kill-{}", f.queue.name());
    let limit = format!("probe.{key}");
    let lease_ms = 1000;
    // One task per process at a time, so the two slots are held by two processes.
    let mut procs = workers(&f, 4, 1, lease_ms, &[format!("running:{limit}=2")]);
    // Tasks far longer than the test: a slot frees only when a lease runs out.
    f.client
        .enqueue_many(&f.queue, probes(6, &key, 120_000, &limit))
        .await
        .unwrap();
    let two = wait_until(Duration::from_secs(20), async || {
        starts(&probe_log(&f, &key).await).len() == 2
    })
    .await;
    assert!(two, "two probes start: {:?}", probe_log(&f, &key).await);
    let victim = match &probe_log(&f, &key).await[0] {
        Line::Start { pid, .. } => *pid,
        other => panic!("{other:?}"),
    };
    let i = procs
        .iter()
        .position(|(c, _)| c.id() == victim)
        .expect("a child of ours ran it");
    let (mut child, _) = procs.remove(i);
    child.child().kill().unwrap();
    child.child().wait().unwrap();
    // The killed probe never decrements the handlers' count: do it for it.
    let mut conn = f.redis().await;
    redis::cmd("DECR")
        .arg(format!("test:running:{key}"))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // The other probe still runs for minutes: only the dead slot's lease can let a third start.
    let third = wait_until(Duration::from_millis(lease_ms * 10), async || {
        starts(&probe_log(&f, &key).await).len() == 3
    })
    .await;
    let log = probe_log(&f, &key).await;
    assert!(third, "the dead worker's slot never came back: {log:?}");
    let (seen, _) = most_running(&log);
    assert!(seen <= 2, "{seen} ran at once: {log:?}");
    let status = f.inspector.limits().await.unwrap();
    let l = status.iter().find(|l| l.name == limit).expect("the limit is listed");
    assert_eq!(l.running, 2, "{l:?}");
    assert!(l.waiting_for_slot >= 1, "the other tasks wait for a slot: {l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_waiting_for_a_limit_do_not_hold_up_other_kinds_or_use_attempts() {
    let f = Fixture::shared(Queue::new("limit-mixed").unwrap()).await;
    let limit = format!("slow.{}", f.queue.name());
    let recorder = Recorder::new();
    let router: Router = recorder.router(&["slow", "fast"]);
    let mut config = WorkerConfig {
        concurrency: 4,
        ..fast_config()
    };
    config.limits.insert(
        limit.clone(),
        Limit {
            rate: Some(Rate::new(1, Duration::from_secs(60))),
            max_running: None,
        },
    );
    let w = f.start_worker(router, config);
    // The limited kind first, then the other: the other runs while 29 wait their turn.
    let slow = (0..30).map(|_| Task::json("slow", &()).unwrap().limit_key(limit.clone()));
    f.client.enqueue_many(&f.queue, slow).await.unwrap();
    let fast = (0..10).map(|_| Task::json("fast", &()).unwrap());
    f.client.enqueue_many(&f.queue, fast).await.unwrap();
    f.wait_done(11, Duration::from_secs(20)).await;
    let runs = recorder.runs();
    assert_eq!(
        runs.iter().filter(|r| r.kind == "fast").count(),
        10,
        "{}",
        recorder.summary(40)
    );
    assert_eq!(
        runs.iter().filter(|r| r.kind == "slow").count(),
        1,
        "{}",
        recorder.summary(40)
    );
    let waiting = wait_until(Duration::from_secs(10), async || {
        let l = f.inspector.limits().await.unwrap();
        l.iter().any(|l| l.name == limit && l.waiting_for_rate == 29)
    })
    .await;
    assert!(
        waiting,
        "29 wait for the rate: {:?}",
        f.inspector.limits().await.unwrap()
    );
    let stats = f.stats().await;
    let c = &stats.counters;
    assert_eq!((c.failed, c.retried, c.dead), (0, 0, 0), "{c:?}");
    assert_eq!(c.limited, 29, "{c:?}");
    // They wait in the retry set, at attempt 0; none came back early (a reservation each).
    let parked: u64 = stats.priorities.iter().map(|p| p.retry).sum();
    assert_eq!(parked, 29, "{stats:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_parked_by_a_limit_cancels_as_not_started_and_leaves_nothing_behind() {
    let f = Fixture::shared(Queue::new("limit-cancel").unwrap()).await;
    let limit = format!("slow.{}", f.queue.name());
    let recorder = Recorder::new();
    let router: Router = recorder.router(&["slow"]);
    let mut config = fast_config();
    config.limits.insert(
        limit.clone(),
        Limit {
            rate: Some(Rate::new(1, Duration::from_secs(60))),
            max_running: None,
        },
    );
    let w = f.start_worker(router, config);
    let first = f
        .client
        .enqueue(&f.queue, Task::json("slow", &()).unwrap().limit_key(limit.clone()))
        .await
        .unwrap();
    f.wait_done(1, Duration::from_secs(20)).await;
    let second = f
        .client
        .enqueue(&f.queue, Task::json("slow", &()).unwrap().limit_key(limit.clone()))
        .await
        .unwrap();
    // Parked: its record is scheduled for the limit's reservation, the entry in the retry set.
    let parked = wait_until(Duration::from_secs(10), async || {
        f.client.status(&f.queue, &second).await.unwrap().state == TaskState::Scheduled
    })
    .await;
    assert!(parked, "{:?}", f.client.status(&f.queue, &second).await.unwrap());
    assert_eq!(
        f.client.status(&f.queue, &first).await.unwrap().state,
        TaskState::Succeeded
    );
    assert_eq!(
        f.client.cancel(&f.queue, &second).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let status = f.client.status(&f.queue, &second).await.unwrap();
    assert_eq!(status.state, TaskState::Cancelled, "{status:?}");
    let stats = f.stats().await;
    let c = &stats.counters;
    assert_eq!((c.limited, c.failed, c.retried, c.dead), (1, 0, 0, 0), "{c:?}");
    let left: u64 = stats.priorities.iter().map(|p| p.retry).sum();
    assert_eq!(left, 0, "the parked entry went with the cancel: {stats:?}");
    assert_eq!(recorder.runs().len(), 1, "{}", recorder.summary(10));
    w.stop().await;
}
