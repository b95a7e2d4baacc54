//! Usage: bad flags exit 2 with a usage line and a message naming what is wrong, help shows
//! defaults, an unreachable Redis exits 1 naming the URL.

use rivulet::testing::{Fixture, RedisServer};

use crate::common::{cli, cli_env};

#[tokio::test]
async fn bad_flags_exit_2_and_an_unreachable_redis_exits_1_naming_the_url() {
    let f = Fixture::start().await;
    let server = &f.server;
    empty_results_are_notes_on_stderr(server).await;
    bad_flags_exit_2_with_a_usage_line(server).await;
    // None of those enqueued anything (an empty kind in particular).
    assert!(f.inspector.queues().await.unwrap().is_empty());
    bad_flags_name_what_is_wrong(server).await;
    help_shows_defaults_and_lists_work(server).await;
    an_unreachable_redis_exits_1_naming_the_url_after_the_flags_are_checked().await;
}

/// "Nothing here" notes go to stderr, data to stdout, for `stats` as for `queues`.
async fn empty_results_are_notes_on_stderr(server: &RedisServer) {
    for args in [&["stats"][..], &["queues"]] {
        let out = cli(server, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "worker-cli {args:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "worker-cli {args:?} printed to stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.contains("no queues yet"), "worker-cli {args:?}: {stderr}");
    }
}

async fn bad_flags_exit_2_with_a_usage_line(server: &RedisServer) {
    for args in [
        &["--workers", "0"][..],
        &["--priority-mode", "fair"],
        &["--lease", "1ms"],
        &["--exec", "no-command"],
        &["--max-memory", "lots"],
        &["--queue", "a,a"],
        &["--workers", "2", "stats"],
        &["enqueue", "--queue", "q"],
        &["enqueue", "--queue", "q", "--kind", "k", "--payload", "{bad"],
        &["dlq", "replay", "--queue", "q"],
        &["dlq", "show", "--queue", "q", "--id", "garbage"],
        &["no-such-command"],
        // Bare: the help, not a supervisor on a queue nobody named.
        &[],
        &["--redis-url", "notaurl", "stats"],
        &["enqueue", "--queue", "q", "--kind", ""],
        &["enqueue", "--queue", "q", "--kind", " \t"],
        &[
            "enqueue",
            "--queue",
            "q",
            "--kind",
            "k",
            "--payload-file",
            "/nonexistent/payload.json",
        ],
        &["enqueue", "--queue", "q", "--kind", "k", "--delay", "-1s"],
        &["enqueue", "--queue", "q", "--kind", "k", "--count", "-3"],
        &["pending", "--queue", "q", "--limit", "-1"],
        &["pending", "--queue", "q", "--limit", "0"],
        &["dlq", "list", "--queue", "q", "--limit", "0"],
        &["--queue", "q", "--max-memory", "1.5"],
        &["--queue", "q", "--drain-timeout", "-5s"],
    ] {
        let out = cli(server, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "worker-cli {args:?}: {stderr}");
        assert!(
            stderr.contains("Usage:"),
            "worker-cli {args:?} shows a usage line: {stderr}"
        );
        // A negative number is a value the parser explains, not an unknown flag.
        assert!(!stderr.contains("unexpected argument"), "worker-cli {args:?}: {stderr}");
    }
}

/// The messages name what is wrong.
async fn bad_flags_name_what_is_wrong(server: &RedisServer) {
    for (args, says) in [
        (
            &[][..],
            &["Commands:", "  work", "no command given", "--queue NAME"][..],
        ),
        (
            &["--redis-url", "notaurl", "stats"],
            &["--redis-url", "\"notaurl\"", "not a valid Redis URL"],
        ),
        (
            &["enqueue", "--queue", "q", "--kind", ""],
            &["--kind", "must not be empty"],
        ),
        (
            &[
                "enqueue",
                "--queue",
                "q",
                "--kind",
                "k",
                "--payload-file",
                "/nonexistent/payload.json",
            ],
            &["--payload-file /nonexistent/payload.json", "no such file"],
        ),
        (
            &["enqueue", "--queue", "q", "--kind", "k", "--delay", "-1s"],
            &["--delay", "negative"],
        ),
        (
            &["pending", "--queue", "q", "--limit", "-1"],
            &["--limit", "-1 is not in 1.."],
        ),
        (&["--queue", "q", "--max-memory", "1.5"], &["--max-memory", "1.5GiB"]),
    ] {
        let out = cli(server, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        for s in says {
            assert!(stderr.contains(s), "worker-cli {args:?} should say {s:?}: {stderr}");
        }
    }
}

async fn help_shows_defaults_and_lists_work(server: &RedisServer) {
    for help in [
        &["--help"][..],
        &["stats", "--help"],
        &["dlq", "replay", "--help"],
        &["enqueue", "--help"],
        &["work", "--help"],
    ] {
        let out = cli(server, help).await;
        assert_eq!(out.status.code(), Some(0), "{help:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("[default:"),
            "{help:?} shows defaults"
        );
    }
    // `work` (what the supervisor and the autoscaler run) is listed with the other commands.
    let out = cli(server, &["--help"]).await;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.lines()
            .any(|l| l.starts_with("  work ") && l.contains("without a supervisor")),
        "{help}"
    );
}

async fn an_unreachable_redis_exits_1_naming_the_url_after_the_flags_are_checked() {
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    for args in [&["queues"][..], &["--workers", "1"], &["stats", "--queue", "x"]] {
        let out = cli_env(Some(&url), args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "worker-cli {args:?}: {stderr}");
        assert!(
            stderr.contains(&url) && stderr.contains("hint"),
            "worker-cli {args:?} names the URL: {stderr}"
        );
    }
    // Flags are checked before Redis is: a bad flag is still exit 2.
    for args in [
        &[
            "enqueue",
            "--queue",
            "q",
            "--kind",
            "k",
            "--payload-file",
            "/nonexistent/payload.json",
        ][..],
        &["dlq", "show", "--queue", "q", "--id", "garbage"],
    ] {
        let out = cli_env(Some(&url), args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "worker-cli {args:?}: {stderr}");
    }
}
