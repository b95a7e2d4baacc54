//! The fleet supervisor with real child processes (`sh`, `sleep`): targets, idle-first
//! stops, recycling, crash backoff and the crash-loop guard, the stop deadline, and the
//! children's process groups and environment.

use std::ffi::OsString;
use std::time::Duration;

use rivulet::testing::wait_until;
use rivulet_fleet::{Fleet, FleetConfig, FleetError, FleetHandle, FleetReport, FleetStatus, SUPERVISOR_PID_ENV, Stop};
use tokio::task::JoinHandle;

fn shell(script: &str) -> FleetConfig {
    FleetConfig::new("sh", vec![OsString::from("-c"), OsString::from(script)])
}

fn start(config: FleetConfig, size: u32) -> (FleetHandle, Stop, JoinHandle<Result<FleetReport, FleetError>>) {
    let (fleet, handle) = Fleet::new(config, size);
    let stop = Stop::new();
    let run = tokio::spawn(fleet.run(stop.clone()));
    (handle, stop, run)
}

async fn wait(handle: &mut FleetHandle, what: &str, check: impl FnMut(&FleetStatus) -> bool) -> FleetStatus {
    tokio::time::timeout(Duration::from_secs(20), handle.wait_for(check))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}; fleet: {:?}", handle.status()))
}

async fn finish(run: JoinHandle<Result<FleetReport, FleetError>>) -> Result<FleetReport, FleetError> {
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the fleet stops within 20 s")
        .expect("the fleet task did not panic")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

#[tokio::test]
async fn the_target_moves_and_idle_workers_are_stopped_first() {
    let (mut handle, stop, run) = start(shell("exec sleep 30"), 3);
    let s = wait(&mut handle, "three running", |s| s.running == 3).await;
    let idle = s.pids[1];
    handle.scale_to(2, &[idle]);
    let s = wait(&mut handle, "two running, the idle one gone", |s| {
        s.running == 2 && s.stopping == 0
    })
    .await;
    assert!(!s.pids.contains(&idle), "{s:?}");
    assert!(!alive(idle), "the idle worker {idle} still runs");
    handle.set_target(4);
    wait(&mut handle, "four running", |s| s.running == 4).await;
    stop.drain.cancel();
    let report = finish(run).await.expect("a clean drain");
    assert_eq!((report.started, report.crashed), (5, 0), "{report:?}");
}

#[tokio::test]
async fn a_clean_exit_is_a_recycle_and_a_crash_is_restarted() {
    // Exit 0 at once: replaced at once, however soon, and no crash.
    let (mut handle, stop, run) = start(shell("exit 0"), 2);
    wait(&mut handle, "six starts", |s| s.report.started >= 6).await;
    stop.drain.cancel();
    let report = finish(run).await.unwrap();
    assert_eq!(report.crashed, 0, "{report:?}");
    assert!(report.recycled >= 4, "{report:?}");

    // Exit 1: restarted after a backoff, counted.
    let (mut handle, stop, run) = start(shell("exit 1"), 1);
    wait(&mut handle, "two crashes", |s| s.report.crashed >= 2).await;
    stop.drain.cancel();
    let report = finish(run).await.unwrap();
    assert!(report.started >= 2 && report.recycled == 0, "{report:?}");
}

#[tokio::test]
async fn a_crash_loop_stops_the_fleet_with_one_slot() {
    let config = FleetConfig {
        crash_limit: 2,
        ..shell("exit 3")
    };
    let (_handle, _stop, run) = start(config, 1);
    match finish(run).await {
        Err(FleetError::CrashLoop { crashes, status, .. }) => {
            assert_eq!(crashes, 3);
            assert_eq!(status, "exit status 3");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_killed_at_the_deadline() {
    let ready = std::env::temp_dir().join(format!("rivulet-fleet-trap-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let config = FleetConfig {
        stop_timeout: Duration::from_millis(300),
        ..shell(&format!(
            "trap '' TERM; touch {}; while :; do sleep 0.05; done",
            ready.display()
        ))
    };
    let (mut handle, stop, run) = start(config, 1);
    let s = wait(&mut handle, "one running", |s| s.running == 1).await;
    // Only once the trap is set does SIGTERM go unheard.
    let trapped = wait_until(Duration::from_secs(10), async || ready.exists()).await;
    assert!(trapped, "the child never set its trap");
    stop.drain.cancel();
    match finish(run).await {
        Err(FleetError::StopDeadline { killed, .. }) => assert_eq!(killed, 1),
        other => panic!("{other:?}"),
    }
    assert!(!alive(s.pids[0]));
    let _ = std::fs::remove_file(&ready);
}

#[tokio::test]
async fn children_lead_their_own_group_and_carry_the_contract() {
    let (mut handle, stop, run) = start(shell("exec sleep 30"), 1);
    let s = wait(&mut handle, "one running", |s| s.running == 1).await;
    let pid = s.pids[0];
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    assert_eq!(fields[2], pid.to_string(), "process group: {stat}");
    // `sh -c 'exec sleep'`: the environment is laid out once the shell has exec'd.
    let own = format!("{SUPERVISOR_PID_ENV}={}", std::process::id());
    let has_own = || {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| e.split(|b| *b == 0).any(|v| v == own.as_bytes()))
    };
    let seen = wait_until(Duration::from_secs(5), async || has_own()).await;
    assert!(seen, "{SUPERVISOR_PID_ENV} missing from the child's environment");
    stop.now.cancel();
    assert!(matches!(finish(run).await, Err(FleetError::StoppedAtOnce)));
    assert!(!alive(pid));
}

/// The guard means what it says for one slot: more than `crash_limit` crashes within the
/// window stop the fleet, even though the slot's restart delays double. Before the delays were
/// capped for the guard, one slot's delays (0.25, 0.5, 1, 2, 4, 8 s, jittered to half) alone
/// added up to more than 6 s, so 7 crashes never fit and the slot was restarted forever.
#[tokio::test]
async fn the_crash_loop_guard_trips_for_one_slot_with_doubling_delays() {
    let config = FleetConfig {
        crash_limit: 6,
        crash_window: Duration::from_secs(6),
        ..shell("exit 3")
    };
    let (_handle, _stop, run) = start(config, 1);
    match finish(run).await {
        Err(FleetError::CrashLoop { crashes, .. }) => assert_eq!(crashes, 7),
        other => panic!("{other:?}"),
    }
}

/// A child that exits with the outage status (it could not reach Redis) is restarted, however
/// often, and never trips the guard.
#[tokio::test]
async fn outage_exits_are_restarted_and_never_trip_the_guard() {
    let config = FleetConfig {
        crash_limit: 1,
        crash_window: Duration::from_secs(60),
        ..shell(&format!("exit {}", rivulet_fleet::contract::EXIT_OUTAGE))
    };
    let (mut handle, stop, run) = start(config, 2);
    wait(&mut handle, "six outage exits", |s| s.report.outages >= 6).await;
    stop.drain.cancel();
    let report = finish(run).await.expect("no crash loop");
    assert_eq!(report.crashed, 0, "{report:?}");
}
