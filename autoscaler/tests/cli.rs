//! The binary's contract with its caller: exit 2 and a message naming the flag for a bad flag
//! value, 1 for a failure while running; a closed log pipe does not stop the daemon; no colour
//! codes when stderr is not a terminal.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rivulet::testing::{ChildGuard, RedisServer};

/// Nothing listens there: a run that got past flag checking fails with 1, never reaches a
/// Redis that happens to run on this machine, and never hangs.
const NO_REDIS: &str = "redis://127.0.0.1:1";

fn autoscaler(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoscaler"));
    if !args.contains(&"--redis-url") {
        cmd.args(["--redis-url", NO_REDIS]);
    }
    if !args.contains(&"--queue") {
        cmd.args(["--queue", "q"]);
    }
    cmd.args(args)
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run the autoscaler")
}

fn assert_usage_error(args: &[&str], wanted: &[&str]) {
    let out = autoscaler(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}\n{stderr}", out.status);
    for w in wanted {
        assert!(stderr.contains(w), "{args:?}: no {w:?} in\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{args:?}:\n{stderr}");
}

#[test]
fn bad_flag_values_exit_2_naming_the_flag() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--sla", "high=abc"],
            &["--sla \"high=abc\"", "not a duration", "--sla high=500ms,normal=5s"],
        ),
        (&["--sla", "high"], &["--sla \"high\"", "PRIORITY=DURATION"]),
        (&["--sla", "high=0s"], &["--sla \"high=0s\"", "longer than zero"]),
        (&["--min", "5", "--max", "2"], &["--min 5 exceeds --max 2"]),
        (&["--max", "0"], &["--max must be at least 1"]),
        (&["--max-step-up", "0"], &["--max-step-up must be at least 1"]),
        (&["--interval", "0s"], &["--interval"]),
        (&["--headroom", "0.5"], &["--headroom 0.5 must be"]),
        (&["--down-fraction", "2"], &["--down-fraction 2 must be in [0, 1]"]),
        (&["--per-worker-rate", "0"], &["--per-worker-rate 0 must be"]),
        (&["--queue", "bad{"], &["--queue", "invalid queue name \"bad{\""]),
        (&["--actuator", "command"], &["--scale-cmd"]),
        (
            &["--actuator", "command", "--scale-cmd", "kubectl scale deploy/w"],
            &["--scale-cmd must contain {replicas}"],
        ),
        (&["--worker-cmd", ""], &["--worker-cmd"]),
        (
            &["--redis-url", "notaurl"],
            &["--redis-url \"notaurl\" does not parse as a Redis URL", "redis://"],
        ),
        // clap's own errors.
        (&["--min", "many"], &["--min"]),
        (&["--interval", "soon"], &["--interval"]),
    ];
    for (args, wanted) in cases {
        assert_usage_error(args, wanted);
    }
    // Internal names of the policy's fields do not show.
    let out = autoscaler(&["--down-fraction", "2"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("down_fraction"));
}

#[test]
fn a_url_from_the_environment_that_does_not_parse_is_named_as_such() {
    let out = Command::new(env!("CARGO_BIN_EXE_autoscaler"))
        .args(["--queue", "q"])
        .env("REDIS_URL", "localhost:6379")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("REDIS_URL \"localhost:6379\" does not parse"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_redis_exits_1_saying_why_once_without_the_password() {
    let out = autoscaler(&["--redis-url", "redis://:s3cret@127.0.0.1:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach Redis at redis://:***@127.0.0.1:1"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn a_priority_the_queue_lacks_is_a_usage_error() {
    let server = RedisServer::start();
    let out = autoscaler(&["--redis-url", &server.url(), "--sla", "urgent=1s", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--sla") && stderr.contains("\"urgent\""), "{stderr}");
}

#[test]
fn the_daemon_outlives_its_closed_log_pipe_and_writes_no_colour_codes_to_it() {
    let server = RedisServer::start();
    let child = Command::new(env!("CARGO_BIN_EXE_autoscaler"))
        .args([
            "--redis-url",
            &server.url(),
            "--queue",
            "q",
            "--dry-run",
            "--interval",
            "50ms",
        ])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard::adopt("autoscaler", child);
    // Read the first lines, then close the pipe, as `autoscaler ... 2>&1 | head` does.
    let mut stderr = child.child().stderr.take().unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&head).contains("decision") {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "stderr closed early: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    drop(stderr);
    assert!(
        !head.contains(&0x1b),
        "ANSI codes in {}",
        String::from_utf8_lossy(&head)
    );

    // Decisions (each one a log line) go on for a while into the closed pipe.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(
            child.child().try_wait().unwrap().is_none(),
            "the autoscaler stopped: {:?}",
            child.child().wait()
        );
        // A sleep, because what is checked is that nothing happens for a while.
        std::thread::sleep(Duration::from_millis(100));
    }
    child.signal(Signal::SIGTERM);
    let status = child.child().wait().unwrap();
    assert!(status.success(), "{status}");
}
